/*
 * distcmd.h — the #!dist command: what it may ask of a distribution, and
 * its answer as text (internal; docs/protocol.md).
 */
#ifndef TALLY_DISTCMD_H
#define TALLY_DISTCMD_H

#include <stddef.h>

#include "cmd.h"
#include "tally.h"

#define DIST_HIST_EDGES_MAX 64

/* Checks one statistic argument: q=Q (0 <= Q <= 1), above=X, below=X, or
 * hist=E1,E2,... (2 to 64 ascending edges). 0, or -1 with the reason in
 * err. */
int dist_stat_check(const char *arg, char *err, size_t cap);

/* Runs the query of r and formats its answer, "stat\tvalue" rows and
 * "END n", into a malloc'ed *text of *len bytes. 0 or an error code (the
 * message set). */
int dist_reply(tally_db *db, const cmd_req *r, char **text, size_t *len);

#endif
