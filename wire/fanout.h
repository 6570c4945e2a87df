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

typedef struct fan_node {
	char host[256];
	char port[8];
} fan_node;

/* "host:port,host:port,[v6]:port" into a new array (free() it). 0, or -1
 * with err naming the bad entry. */
int fan_parse_nodes(const char *spec, fan_node **out, size_t *n, char *err, size_t cap);

typedef struct fan_opts {
	const char *token;  /* sent with #!auth first when not NULL */
	int partial;        /* 1: a node that fails to answer is named in the END line */
	int64_t timeout_ns; /* the whole fan-out, every node in parallel */
	size_t max_bytes;   /* the merged answer's bound; larger: an error naming it */
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

#endif
