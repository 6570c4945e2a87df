/*
 * fandist.h — distributions across nodes: #!dist, /api/v1/dist and
 * InfluxQL's MEDIAN and PERCENTILE on a node with `peers` (internal to
 * wire/; docs/cluster.md, "Distributions across nodes").
 */
#ifndef TALLY_FANDIST_H
#define TALLY_FANDIST_H

#include <stddef.h>
#include <stdint.h>

#include "cmd.h"
#include "fanout.h"
#include "fanserv.h"
#include "tally.h"

/* The partial distributions of a merged "#!dist ... pairs" answer (rows
 * "exp\tkind\tunits\tcount", node after node) merged exactly into *out.
 * Rows whose first cell is a window's start come first in /api/v1/dist's
 * form: fandist_window reads those of one window. 0, or TALLY_EINVAL /
 * -ENOMEM with err (cap bytes) naming the row and what is wrong with it. */
int fandist_read(fan_reader *rd, tally_dist **out, char *err, size_t cap);

/* The answer to the #!dist r (its statistics) of nodes[0, n): every
 * node's pairs merged, then r's statistics of the whole, in one node's
 * format (END n [PARTIAL ...]), or one "ERR ..." line, into *out (*len
 * bytes, free it). 0, or -ENOMEM with *out NULL. tally query --nodes
 * uses it as tallyd's #!dist does. */
int fandist_answer(const fan_node *nodes, size_t n, const fan_opts *o, const cmd_req *r, char **out,
		   size_t *len);

/* #!dist on a connection of a node with peers: every node's pairs, merged,
 * then the statistics of r asked of the whole (line: r's line number). */
int fandist_start(wconn *c, const cmd_req *r, uint64_t line, fanjob **out);

/* /api/v1/dist with peers: r's table, field and key over each window of
 * step (0: one window, [from, to)), aligned like a series, each node
 * asked once for every window's pairs. The job's answer, read by
 * fandist_window (fandist_read without step): "START\texp\tkind\tunits\t
 * count" rows and "END n [PARTIAL ...]", or one "ERR ..." line. */
int fandist_http(wconn *c, const cmd_req *r, int64_t step, int partial, fanjob **out);
/* origin= for the windows of step that start at w0 (in [0, step)). */
int64_t fandist_origin(int64_t w0, int64_t step);
/* The distribution of the window starting at lo (its rows, maybe none). */
int fandist_window(fan_reader *rd, int64_t lo, tally_dist **out, char *err, size_t cap);

#endif
