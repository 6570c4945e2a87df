/*
 * distcmd.h — the #!dist command: what it may ask of a distribution, and
 * its answer as text (internal; docs/protocol.md).
 */
#ifndef TALLY_DISTCMD_H
#define TALLY_DISTCMD_H

#include <stddef.h>

#include "cmd.h"
#include "tally.h"

#define DIST_HIST_EDGES_MAX CMD_DIST_EDGES_MAX

/* Runs the query of r and formats its answer, "stat\tvalue" rows and
 * "END n", into a malloc'ed *text of *len bytes. 0 or an error code (the
 * message set). */
int dist_reply(tally_db *db, const cmd_req *r, char **text, size_t *len);

/* The answer to r of the distribution d, as dist_reply's; r's one
 * statistic "pairs" gives the partial-distribution form instead
 * ("exp\tkind\tunits\tcount" rows, docs/protocol.md). partial (not NULL):
 * the nodes missing, named after "END n PARTIAL ". 0 or -ENOMEM. */
int dist_format(const tally_dist *d, const cmd_req *r, const char *partial, char **text,
		size_t *len);

#endif
