/*
 * fanout.h — one query asked of several tallyd nodes, their answers
 * merged exactly (internal to wire/ and the tally client; docs/cluster.md).
 *
 * A node answers only for what it holds (its connection said
 * "#!fanout off"); count, sum, min and max merge exactly across nodes, a
 * series window by window, all keys key by key, a scan by time.
 */
#ifndef TALLY_FANOUT_H
#define TALLY_FANOUT_H

#include <stddef.h>
#include <stdint.h>

#include "cmd.h"
#include "tally.h"

typedef struct fan_node {
	char host[256];
	char port[8];
} fan_node;

/* "host:port,host:port,[v6]:port" into a new array (free() it). 0, or -1
 * with err naming the bad entry. */
int fan_parse_nodes(const char *spec, fan_node **out, size_t *n, char *err, size_t cap);

/* Idle connections to the nodes, kept between fan-outs past their
 * preamble (#!auth, #!fanout off), so that a query costs each node one
 * round trip rather than a connect, an accept and the preamble too.
 * Threads share it (a mutex). fan_pool_new copies nodes; NULL: out of
 * memory. */
typedef struct fan_pool fan_pool;
fan_pool *fan_pool_new(const fan_node *nodes, size_t n);
void fan_pool_free(fan_pool *p); /* closes the idle connections */

typedef struct fan_opts {
	fan_pool *pool;     /* NULL: a new connection per node and fan-out */
	const char *token;  /* sent with #!auth first when not NULL */
	int partial;        /* 1: a node that fails to answer is named in the END line */
	int64_t timeout_ns; /* the whole fan-out, every node in parallel */
	size_t max_bytes;   /* the merged answer's bound; larger: an error naming it */
	const char *hint;   /* how the caller asks for a marked answer, named by the
			     * error of a missing node; NULL: "#!fanout partial" */
	/* Answers for nodes[0] in this process rather than over its port
	 * (a node's own part, without a round trip through its own loop):
	 * into *out (malloc'd, *len bytes) the text nodes[0] would send
	 * after "#!fanout off" (the header, rows and "END n\n", or an "ERR"
	 * line), and 0; 1: ask nodes[0] over its port after all (a kind it
	 * does not answer so); -ENOMEM. NULL: every node over the network. */
	int (*local)(void *arg, const struct cmd_req *r, char **out, size_t *len);
	void *local_arg;
	uint64_t local_id; /* nodes[0]'s id, as its "#!fanout off" names it */
} fan_opts;

/* The query r as one command line with absolute times (RFC 3339) and
 * the step in ns, so every node reads the same range whatever its clock
 * ("now-1h" is resolved once, by the caller). Returns its length (with
 * the '\n'), or 0 when it does not fit cap. */
struct cmd_req;
size_t fan_build_cmd(const struct cmd_req *r, char *buf, size_t cap);

/*
 * Asks every node the query cmd (one "#!series|agg|keys|scan ..." line,
 * with its '\n') and merges their answers into *out (malloc'd, *out_len
 * bytes): the header, the rows, "END n", or one "ERR ..." line (without
 * "line N: ", which the caller prefixes). With o->partial, nodes that did
 * not answer are named after END: "END n PARTIAL host:port (reason); ...".
 * A node that does not hold the table answers for nothing. Returns 0 (the
 * answer may be an ERR) or -ENOMEM.
 */
int fan_run(const fan_node *nodes, size_t n, const fan_opts *o, const char *cmd, char **out,
	    size_t *out_len);

/* A query to ask every node (its strings borrowed). */
cmd_req fan_req(enum cmd_kind kind, const char *name, const char *table, const char *field,
		const char *key, int64_t step, int64_t from, int64_t to);

/* fan_build_cmd, then fan_run: 0, -E2BIG (the query does not fit a
 * command line) or -ENOMEM. */
int fan_ask(const fan_node *nodes, size_t n, const fan_opts *o, const struct cmd_req *r, char **out,
	    size_t *out_len);

/*
 * A merged answer read back row by row (HTTP and InfluxQL turn it into
 * their own formats). fan_reader_open finds its parts: the header, or
 * the error (err, without "ERR "), and what the END line names after
 * PARTIAL (partial, NULL when every node answered).
 */
typedef struct fan_reader {
	const char *p, *end; /* rows still to read */
	const char *head;    /* the header line (without '\n'), or NULL */
	size_t head_n;
	const char *err; /* the error, or NULL */
	size_t err_n;
	const char *partial; /* the missing nodes, or NULL */
	size_t partial_n;
} fan_reader;

void fan_reader_open(fan_reader *rd, const char *text, size_t len);
/* The next row (without '\n'): 1, or 0 after the last. */
int fan_reader_next(fan_reader *rd, const char **row, size_t *n);
/* 1 when the error says that some node did not answer (not an error of
 * the query itself); fan_err_absent: that no node holds the table or
 * field. */
int fan_err_missing(const fan_reader *rd);
int fan_err_absent(const char *err, size_t n);

/* Cell j of a row, *n its length; NULL past the last. */
const char *fan_cell(const char *row, size_t n, unsigned j, size_t *cn);
/* Cells j.. as count, sum, min, max; the average made from them. Each
 * the double strtod would read (most without it: Clinger's fast path). */
tally_agg fan_cell_agg(const char *row, size_t n, unsigned j);
/* Cell j as a time (RFC 3339), as cmd_parse_time reads it (the
 * formatter's layout without it); INT64_MIN when it is not one. */
int64_t fan_cell_time(const char *row, size_t n, unsigned j);
/* A cell's text with the protocol's escapes (\\ \t \n \r) undone into
 * out (at least n bytes); its length. */
size_t fan_unescape(const char *s, size_t n, char *out);

#endif
