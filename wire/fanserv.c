/*
 * fanserv.c — tallyd's side of queries across nodes (docs/cluster.md): a
 * query on a connection of a node with `peers` runs on a thread of its
 * own, asking every node (this one included, over its own port) through
 * fanout.c, while the connection's shard goes on serving others.
 *
 * The one idea: the connection waits like a streamed answer (its
 * producer is the job), so backpressure, lingering and shutdown need
 * nothing new. The job and the connection each hold it; whichever lets go
 * last frees it (state: running, done, abandoned).
 */
#include "fanserv.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "fanout.h"

enum { FJ_RUNNING = 0, FJ_DONE, FJ_ABANDONED };

struct fanjob {
	srv *s;
	wshard *sh;
	char cmd[4096];
	int partial;
	uint64_t line;
	char *out;
	size_t len, off;
	_Atomic int state;
};

int fanserv_init(srv *s)
{
	s->n_fan_nodes = 0;
	if (getrandom(&s->node_id, sizeof s->node_id, 0) != sizeof s->node_id)
		s->node_id = (uint64_t)srv_clock_ns() ^ (uint64_t)getpid() << 32;
	if (!s->conf->peers)
		return 0;
	fan_node *others;
	size_t n;
	char err[300];
	if (fan_parse_nodes(s->conf->peers, &others, &n, err, sizeof err)) {
		srv_log(s, TALLY_LOG_ERROR, "peers: %s", err);
		return -EINVAL;
	}
	/* This node first, over its own port: its part is asked like any
	 * other's (a node listed again by another address answers once: the
	 * node id tells). */
	fan_node *all = calloc(n + 1, sizeof *all);
	if (!all) {
		free(others);
		return -ENOMEM;
	}
	const char *b = s->conf->bind;
	int any = !b || !strcmp(b, "0.0.0.0") || !strcmp(b, "::") || !strcmp(b, "");
	snprintf(all[0].host, sizeof all[0].host, "%s", any ? "127.0.0.1" : b);
	snprintf(all[0].port, sizeof all[0].port, "%u", s->port);
	memcpy(all + 1, others, n * sizeof *others);
	free(others);
	s->fan_nodes = all;
	s->n_fan_nodes = n + 1;
	srv_log(s, TALLY_LOG_INFO,
		"queries fan out to %zu nodes (this one and %s); node id %016" PRIx64, n + 1,
		s->conf->peers, s->node_id);
	return 0;
}

void fanserv_fini(srv *s)
{
	/* Jobs still asking wake their shard when done: wait for them (each
	 * ends within peer-timeout). */
	for (int i = 0; atomic_load(&s->fan_jobs) && i < 6000; i++)
		usleep(10000);
	free(s->fan_nodes);
	s->fan_nodes = NULL;
	s->n_fan_nodes = 0;
}

static void *fj_main(void *arg)
{
	fanjob *j = arg;
	srv *s = j->s;
	wshard *sh = j->sh;
	fan_opts o = {.token = s->conf->token,
		      .partial = j->partial,
		      .timeout_ns = s->conf->peer_timeout_ns,
		      .max_bytes = s->conf->fanout_max_bytes};
	if (fan_run(s->fan_nodes, s->n_fan_nodes, &o, j->cmd, &j->out, &j->len)) {
		free(j->out);
		j->out = strdup("ERR out of memory while merging the nodes' answers\n");
		j->len = j->out ? strlen(j->out) : 0;
	}
	int running = FJ_RUNNING;
	if (atomic_compare_exchange_strong(&j->state, &running, FJ_DONE)) {
		atomic_fetch_add(&sh->fan_ready, 1);
		srv_wake_shard(sh);
	} else { /* the connection went away meanwhile */
		free(j->out);
		free(j);
	}
	atomic_fetch_sub(&s->fan_jobs, 1);
	return NULL;
}

int fanserv_start(wconn *c, const cmd_req *r, uint64_t line, fanjob **out)
{
	srv *s = c->sh->srv;
	fanjob *j = calloc(1, sizeof *j);
	if (!j)
		return -ENOMEM;
	j->s = s;
	j->sh = c->sh;
	j->partial = c->fan_partial;
	j->line = line;
	if (!fan_build_cmd(r, j->cmd, sizeof j->cmd)) {
		free(j);
		return -E2BIG;
	}
	pthread_attr_t at;
	pthread_attr_init(&at);
	pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
	atomic_fetch_add(&s->fan_jobs, 1);
	pthread_t t;
	int rc = pthread_create(&t, &at, fj_main, j);
	pthread_attr_destroy(&at);
	if (rc) {
		atomic_fetch_sub(&s->fan_jobs, 1);
		free(j);
		return -EAGAIN;
	}
	*out = j;
	return 0;
}

int fanserv_pump(wconn *c, fanjob *j)
{
	if (atomic_load(&j->state) != FJ_DONE)
		return 0;
	size_t room = c->sh->srv->conf->reply_bytes / 2;
	if (j->off == 0 && j->len >= 4 && !memcmp(j->out, "ERR ", 4)) {
		/* an error of the whole answer: this connection's line number */
		char m[64];
		int k = snprintf(m, sizeof m, "ERR line %" PRIu64 ": ", j->line);
		conn_put(c, m, (size_t)k, 1);
		j->off = 4;
	}
	while (j->off < j->len && conn_unsent(c) < room) {
		size_t n = j->len - j->off < 65536 ? j->len - j->off : 65536;
		conn_put(c, j->out + j->off, n, 1);
		j->off += n;
	}
	return j->off == j->len;
}

void fanserv_release(fanjob *j)
{
	if (!j)
		return;
	int running = FJ_RUNNING;
	if (atomic_compare_exchange_strong(&j->state, &running, FJ_ABANDONED))
		return; /* the job frees itself when it ends */
	free(j->out);
	free(j);
}
