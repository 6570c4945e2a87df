/*
 * cmd.h — the text commands of the wire protocol (internal).
 *
 * A command is one line starting with "#!" (docs/protocol.md). cmd_parse
 * turns it into a cmd_req; times and durations are parsed here too, so the
 * server, the client and the fuzz target share one definition.
 */
#ifndef TALLY_CMD_H
#define TALLY_CMD_H

#include <stddef.h>
#include <stdint.h>

#include "numfmt.h"
#include "tally.h"

#define CMD_ARGS_MAX 12
#define CMD_ERR_MAX  200

enum cmd_kind {
	CMD_PING = 1,
	CMD_SYNC,
	CMD_AUTH,
	CMD_SERIES,
	CMD_AGG,
	CMD_KEYS,
	CMD_SCAN,
	CMD_STATS,
	CMD_PRECISION,
	CMD_HELP,
	CMD_BACKUP,
	CMD_FANOUT,
	CMD_RETENTION,         /* #!retention RULES: replace the retention rules */
	CMD_RETAIN,            /* #!retain: a retention pass now */
	CMD_RETAINED,          /* #!retained TABLE [STEP]: the earliest retained instant */
	CMD_DROP,              /* #!drop TABLE: every event of the table goes */
	CMD_DIST,              /* #!dist TABLE FIELD KEY FROM TO [STAT]...: a distribution */
	CMD_DELETE,            /* #!delete TABLE KEY|* FROM TO: those events go */
	CMD_TABLES,            /* #!tables: every table's key tag and columns */
	CMD_KEYLIST,           /* #!keylist TABLE [PREFIX]: a table's keys */
	CMD_LAST = CMD_KEYLIST /* a new kind goes above and moves this */
};

typedef struct cmd_req {
	enum cmd_kind kind;
	const char *name; /* the command word as typed, e.g. "series" */
	/* NUL-terminated, pointing into the caller's scratch buffer. */
	const char *table, *field, *key, *token;
	int64_t step;     /* series, dist pairs step=: window width, ns */
	int64_t from, to; /* [from, to), ns */
	uint64_t limit;   /* scan: most rows (0: no limit) */
	enum tally_precision prec;
	const char *dest;  /* backup: a directory or s3://bucket/prefix */
	const char *rules; /* retention: the rules (none: keep everything) */
	const char *group; /* keys: by=TAGS, the tags to group by (NULL: per key) */
	int fan;           /* fanout: 0 off, 1 fail (a missing node fails the answer), 2 partial */
	/* dist: the statistics asked for (q=0.85, above=60, ...), checked */
	const char *stats[CMD_ARGS_MAX];
	unsigned n_stats;
	/* dist pairs step= origin=: windows start at origin + k step, origin
	 * in [0, step) (has_origin 0: at the node's align-offset) */
	int64_t origin;
	int has_origin;
} cmd_req;

/*
 * Parses the command line line[0, len) (starting with "#!", without its
 * '\n'). Arguments are separated by spaces or tabs; an argument may be
 * double-quoted ("KV 001", with \" and \\ inside). now (ns) resolves "now".
 * scratch (at least len + 1 bytes) holds the unquoted arguments.
 * Returns 0, or -1 with a reason in err (NUL-ended, printable).
 */
int cmd_parse(const char *line, size_t len, char *scratch, size_t scratch_cap, int64_t now,
	      cmd_req *out, char *err, size_t err_cap);

/* A time: RFC 3339 ("2023-11-14T00:05:00Z", fractions and +hh:mm offsets
 * allowed, a date alone means its midnight UTC), an integer since the
 * epoch with a unit ("1735689600s"; ns, us, ms, s) or bare in nanoseconds,
 * or now, now-5m, now+1h. A bare integer that is Unix seconds, ms or us
 * read as ns (1 s to about 3 years from the epoch) is refused. Returns 0
 * or -1. */
int cmd_parse_time(const char *s, int64_t now, int64_t *out);

/* Days since 1970-01-01 of a proleptic Gregorian date, and back (H.
 * Hinnant's algorithms; also jsonev.c's event times). */
int64_t cmd_days_from_civil(int64_t y, unsigned m, unsigned d);

/* A duration: one or more <integer><unit>, units ns us ms s m h d w
 * ("5m", "1h30m"). Positive, at most ~292 years. Returns 0 or -1. */
int cmd_parse_duration(const char *s, int64_t *out);

/* #!dist's statistics (wire/distcmd.c answers them): q=Q (0 <= Q <= 1),
 * above=X, below=X, or hist=E1,E2,... (2 to CMD_DIST_EDGES_MAX ascending
 * edges); or pairs alone, the distribution's (value, count) pairs that a
 * query across nodes merges (wire/fandist.c), with step=STEP (cmd_req's
 * step) the pairs of each window of STEP, and origin=TIME where those
 * windows start. cmd_dist_stat_check: 0, or -1 with the reason in err
 * (it echoes arg as it is). cmd_dist_num: a finite number filling all of s, 0 or -1.
 * cmd_dist_edges: "E1,E2,..." into edges, how many, or -1. */
#define CMD_DIST_EDGES_MAX 64
int cmd_dist_stat_check(const char *arg, char *err, size_t cap);
int cmd_dist_num(const char *s, double *v);
int cmd_dist_edges(const char *s, double *edges);

/* Usage lines of the commands, for #!help: i < cmd_usage_count(). */
size_t cmd_usage_count(void);
const char *cmd_usage(size_t i);

#endif
