/*
 * fanserv.h — queries across nodes on tallyd's connections (internal to
 * wire/; fanserv.c, docs/cluster.md).
 */
#ifndef TALLY_FANSERV_H
#define TALLY_FANSERV_H

#include "cmd.h"
#include "server.h"

typedef struct fanjob fanjob;

/* Reads `peers` (this node first) and draws the node id; 0 or -EINVAL
 * after logging the bad entry. */
int fanserv_init(srv *s);
void fanserv_fini(srv *s); /* waits for jobs still running */

/* Starts asking every node the query r (line: its line number, for an
 * error). 0 and *out, or a negative errno. */
int fanserv_start(wconn *c, const cmd_req *r, uint64_t line, fanjob **out);
/* Puts the merged answer on c as far as its reply buffer allows: 1 when
 * all of it is put, 0 while the job runs or the client has not read. */
int fanserv_pump(wconn *c, fanjob *j);
/* The connection lets go (answered, or closed mid-way). */
void fanserv_release(fanjob *j);

#endif
