/*
 * fanserv.h — queries across nodes on tallyd's connections (internal to
 * wire/; fanserv.c, docs/cluster.md).
 */
#ifndef TALLY_FANSERV_H
#define TALLY_FANSERV_H

#include "cmd.h"
#include "fanout.h"
#include "server.h"

typedef struct fanjob fanjob;

/* Reads `peers` (this node first) and draws the node id; 0 or -EINVAL
 * after logging the bad entry. */
int fanserv_init(srv *s);
void fanserv_fini(srv *s); /* waits for jobs still running */

/* The options of this node's fan-outs (peer-timeout, fanout-max-bytes,
 * the token); hint: how the caller asks for a marked answer. */
struct fan_opts fanserv_opts(const srv *s, int partial, const char *hint);

/* A job wakes c's shard when done, which steps the connections whose
 * c->prod is PROD_FANOUT: the one waiting sets that, with the job as
 * c->prod_state, so that a close releases it. */

/* Starts asking every node the query r (line: its line number, for an
 * error). 0 and *out, or a negative errno. */
int fanserv_start(wconn *c, const cmd_req *r, uint64_t line, fanjob **out);
/* The same for HTTP: partial and hint as in fan_opts. */
int fanserv_ask(wconn *c, const cmd_req *r, int partial, const char *hint, fanjob **out);
/* Runs fn(s, arg, &out, &len) on the job's thread (its result: a status
 * and out); arg_free(arg) once the job is gone, also when this fails. */
int fanserv_call(wconn *c, int (*fn)(srv *s, void *arg, char **out, size_t *len), void *arg,
		 void (*arg_free)(void *arg), fanjob **out);
/* The line number an ERR answer of a fanserv_call job names (TCP). */
void fanserv_set_line(fanjob *j, uint64_t line);
/* Puts the merged answer on c as far as its reply buffer allows: 1 when
 * all of it is put, 0 while the job runs or the client has not read. */
int fanserv_pump(wconn *c, fanjob *j);
/* 1 once the job is done: its answer (now the caller's to free) and
 * fanserv_call's status; 0 while it runs. */
int fanserv_take(fanjob *j, char **out, size_t *len, int *status);
/* The connection lets go (answered, or closed mid-way). */
void fanserv_release(fanjob *j);

/* InfluxQL on /query across every node: influxq_http with the numbers of
 * its statements asked of every node (docs/cluster.md); the request's
 * query string and body are copied. */
int fanserv_influxql(wconn *c, const char *query, size_t query_n, const char *body, size_t body_n,
		     fanjob **out);

#endif
