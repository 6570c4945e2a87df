/*
 * distcmd.h — the #!dist command: what it may ask of a distribution, and
 * its answer as text (internal; docs/protocol.md).
 */
#ifndef TALLY_DISTCMD_H
#define TALLY_DISTCMD_H

#include <stddef.h>
#include <stdint.h>

#include "cmd.h"
#include "tally.h"

#define DIST_HIST_EDGES_MAX CMD_DIST_EDGES_MAX

/* What bounds a #!dist answer built in memory: the windows of
 * "pairs step=STEP" align like a series' (align_offset); one longer
 * than max_bytes (0: no bound) is answered with an ERR line naming line
 * instead, as a step of more than DIST_WINDOWS_MAX windows is. */
#define DIST_WINDOWS_MAX 200000
typedef struct dist_limits {
	int64_t align_offset;
	size_t max_bytes;
	uint64_t line;
} dist_limits;

/* Runs the query of r and formats its answer, "stat\tvalue" rows and
 * "END n" (or with "pairs" the pairs, per window with step), into a
 * malloc'ed *text of *len bytes. 0 or an error code (the message set). */
int dist_reply(tally_db *db, const cmd_req *r, const dist_limits *lim, char **text, size_t *len);

/* The answer to r of the distribution d, as dist_reply's; r's one
 * statistic "pairs" gives the partial-distribution form instead
 * ("exp\tkind\tunits\tcount" rows, docs/protocol.md). partial (not NULL):
 * the nodes missing, named after "END n PARTIAL ". 0 or -ENOMEM. */
int dist_format(const tally_dist *d, const cmd_req *r, const char *partial, char **text,
		size_t *len);

#endif
