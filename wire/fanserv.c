/*
 * fanserv.c — tallyd's side of queries across nodes (docs/cluster.md): a
 * query on a connection of a node with `peers` runs on a fan-out worker
 * thread, asking every node (this one included, over its own port)
 * through fanout.c, while the connection's shard goes on serving others.
 *
 * The one idea: the connection waits like a streamed answer (its
 * producer is the job), so backpressure, lingering and shutdown need
 * nothing new. The job and the connection each hold it; whichever lets go
 * last frees it (state: running, done, abandoned).
 *
 * Workers are kept between jobs: a thread created per query cost about
 * 120 us here, plus the page faults of a fresh malloc arena. A job goes
 * to an idle worker, or to a new one when none is idle, so that it never
 * queues behind a job waiting out peer-timeout on a stopped node.
 */
#include "fanserv.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "fandist.h"
#include "fanout.h"
#include "influxql.h"
#include "numfmt.h"
#include "series.h"

enum { FJ_RUNNING = 0, FJ_DONE, FJ_ABANDONED };

struct fanjob {
	srv *s;
	wshard *sh;
	/* The work: one command asked of every node (cmd), or a function
	 * (InfluxQL, which asks as many as its statements need). */
	char cmd[4096];
	int partial;
	const char *hint;
	int (*fn)(srv *s, void *arg, char **out, size_t *len);
	void *arg;
	void (*arg_free)(void *arg);
	uint64_t line;
	int status; /* fn's */
	char *out;
	size_t len, off;
	_Atomic int state;
	fanjob *next; /* in the workers' queue */
};

/* ---------------------------------------------------------------- workers */

/* Workers beyond FW_KEEP leave after FW_IDLE_S seconds without a job;
 * FW_MAX bounds them (past it a job waits for the first worker free). */
#define FW_KEEP   2
#define FW_IDLE_S 10
#define FW_MAX    512

/* One set of workers for the process: a job carries its server. */
static struct {
	pthread_mutex_t mu;
	pthread_cond_t cv;   /* a job queued, or retire set */
	pthread_cond_t gone; /* a worker left */
	fanjob *head, *tail;
	unsigned queued, n, idle;
	int retire; /* idle workers leave (fanserv_fini) */
} fw = {.mu = PTHREAD_MUTEX_INITIALIZER,
	.cv = PTHREAD_COND_INITIALIZER,
	.gone = PTHREAD_COND_INITIALIZER};

static void fj_run(fanjob *j);

static void *fw_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&fw.mu);
	for (;;) {
		while (!fw.head && !fw.retire) {
			struct timespec until;
			clock_gettime(CLOCK_REALTIME, &until);
			until.tv_sec += FW_IDLE_S;
			fw.idle++;
			int rc = pthread_cond_timedwait(&fw.cv, &fw.mu, &until);
			fw.idle--;
			if (rc == ETIMEDOUT && !fw.head && fw.n > FW_KEEP)
				break;
		}
		fanjob *j = fw.head;
		if (!j)
			break;
		fw.head = j->next;
		if (!fw.head)
			fw.tail = NULL;
		fw.queued--;
		pthread_mutex_unlock(&fw.mu);
		fj_run(j);
		pthread_mutex_lock(&fw.mu);
	}
	fw.n--;
	pthread_cond_broadcast(&fw.gone);
	pthread_mutex_unlock(&fw.mu);
	return NULL;
}

/* Queues j for a worker, starting one when none is idle for it. 0, or
 * -EAGAIN when no worker runs and none can start (j not queued). */
static int fw_queue(fanjob *j)
{
	int rc = 0;
	pthread_mutex_lock(&fw.mu);
	fw.retire = 0;
	if (fw.idle <= fw.queued && fw.n < FW_MAX) {
		pthread_attr_t at;
		pthread_attr_init(&at);
		pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
		pthread_t t;
		if (pthread_create(&t, &at, fw_main, NULL) == 0)
			fw.n++;
		else if (!fw.n)
			rc = -EAGAIN;
		pthread_attr_destroy(&at);
	}
	if (!rc) {
		j->next = NULL;
		if (fw.tail)
			fw.tail->next = j;
		else
			fw.head = j;
		fw.tail = j;
		fw.queued++;
		pthread_cond_signal(&fw.cv);
	}
	pthread_mutex_unlock(&fw.mu);
	return rc;
}

/* Lets the idle workers go (and those that finish, while no job comes):
 * waits a bounded time for them. */
static void fw_retire(void)
{
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 5;
	pthread_mutex_lock(&fw.mu);
	fw.retire = 1;
	pthread_cond_broadcast(&fw.cv);
	while (fw.idle && fw.retire &&
	       pthread_cond_timedwait(&fw.gone, &fw.mu, &until) != ETIMEDOUT)
		;
	pthread_mutex_unlock(&fw.mu);
}

static void fj_free(fanjob *j)
{
	if (j->arg_free)
		j->arg_free(j->arg);
	free(j->out);
	free(j);
}

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
	s->fan_pool = fan_pool_new(all, n + 1); /* NULL: a connection per query */
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
	fw_retire();
	fan_pool_free(s->fan_pool);
	s->fan_pool = NULL;
	free(s->fan_nodes);
	s->fan_nodes = NULL;
	s->n_fan_nodes = 0;
}

static void fj_run(fanjob *j)
{
	srv *s = j->s;
	wshard *sh = j->sh;
	fan_opts o = fanserv_opts(s, j->partial, j->hint);
	if (j->fn) {
		j->status = j->fn(s, j->arg, &j->out, &j->len);
	} else if (fan_run(s->fan_nodes, s->n_fan_nodes, &o, j->cmd, &j->out, &j->len)) {
		free(j->out);
		j->out = strdup("ERR out of memory while merging the nodes' answers\n");
		j->len = j->out ? strlen(j->out) : 0;
	}
	int running = FJ_RUNNING;
	if (atomic_compare_exchange_strong(&j->state, &running, FJ_DONE)) {
		atomic_fetch_add(&sh->fan_ready, 1);
		srv_wake_shard(sh);
	} else { /* the connection went away meanwhile */
		fj_free(j);
	}
	atomic_fetch_sub(&s->fan_jobs, 1);
}

/*
 * This node's own part of a series or an agg, worked out on the worker
 * (fan_opts.local): the text its port answers a "#!fanout off"
 * connection (conn.c), without the round trip through its own shard,
 * which on a busy host costs a wake-up. Other kinds go over the port.
 */
static int fs_local(void *arg, const cmd_req *r, char **out, size_t *len)
{
	srv *s = arg;
	if (r->kind != CMD_SERIES && r->kind != CMD_AGG)
		return 1;
	char *buf = NULL, row[64 + CMD_AGG_MAX];
	size_t n = 0;
	FILE *f = open_memstream(&buf, &n);
	if (!f)
		return -ENOMEM;
	int rc, over = 0;
	if (r->kind == CMD_AGG) {
		tally_agg a;
		rc = tally_query_agg(s->db, r->table, r->field, r->key, r->from, r->to, &a);
		if (!rc) {
			fputs(CMD_HEAD_AGG, f);
			fwrite(row, 1, (size_t)(cmd_put_agg(row, &a) - row), f);
			fputs("END 1\n", f);
		}
	} else {
		wseries *ws = malloc(sizeof *ws);
		if (!ws) {
			fclose(f);
			free(buf);
			return -ENOMEM;
		}
		series_init(ws, r->table, r->field, r->key, r->step, r->from, r->to,
			    s->conf->align_offset);
		/* the first slice first, so that a bad table is the whole answer */
		rc = series_next_slice(s->db, ws);
		if (!rc) {
			fputs(CMD_HEAD_SERIES, f);
			const tally_bucket *b;
			size_t rows = 0, bytes = 0, max = s->conf->fanout_max_bytes;
			while (!over && (rc = series_next(s->db, ws, &b)) > 0) {
				size_t k = (size_t)(cmd_put_bucket(row, b) - row);
				fwrite(row, 1, k, f);
				rows++;
				bytes += k;
				over = max && bytes > max;
			}
			if (over)
				fprintf(f,
					"ERR line 1: %s: this node's part is longer than the "
					"fan-out bound of %zu bytes (fanout-max-bytes); ask for a "
					"narrower range\n",
					r->name, max);
			else if (!rc)
				fprintf(f, "END %zu\n", rows);
		}
		free(ws);
	}
	if (rc < 0 && !over)
		fprintf(f, "ERR line 1: %s: %s\n", r->name, conn_errmsg(rc));
	if (fclose(f)) {
		free(buf);
		return -ENOMEM;
	}
	*out = buf;
	*len = n;
	return 0;
}

fan_opts fanserv_opts(const srv *s, int partial, const char *hint)
{
	/* s->fan_nodes[0] is this node (fanserv_init), answered in-process */
	return (fan_opts){.local = fs_local,
			  .local_arg = (void *)s,
			  .local_id = s->node_id,
			  .pool = s->fan_pool,
			  .token = s->conf->token,
			  .partial = partial,
			  .timeout_ns = s->conf->peer_timeout_ns,
			  .max_bytes = s->conf->fanout_max_bytes,
			  .hint = hint};
}

/* Runs j on a worker; on failure frees it. */
static int fj_spawn(srv *s, fanjob *j, fanjob **out)
{
	atomic_fetch_add(&s->fan_jobs, 1);
	if (fw_queue(j)) {
		atomic_fetch_sub(&s->fan_jobs, 1);
		fj_free(j);
		return -EAGAIN;
	}
	*out = j;
	return 0;
}

static fanjob *fj_new(wconn *c)
{
	fanjob *j = calloc(1, sizeof *j);
	if (j) {
		j->s = c->sh->srv;
		j->sh = c->sh;
	}
	return j;
}

int fanserv_ask(wconn *c, const cmd_req *r, int partial, const char *hint, fanjob **out)
{
	fanjob *j = fj_new(c);
	if (!j)
		return -ENOMEM;
	j->partial = partial;
	j->hint = hint;
	if (!fan_build_cmd(r, j->cmd, sizeof j->cmd)) {
		free(j);
		return -E2BIG;
	}
	return fj_spawn(j->s, j, out);
}

int fanserv_start(wconn *c, const cmd_req *r, uint64_t line, fanjob **out)
{
	int rc = fanserv_ask(c, r, c->fan_partial, NULL, out);
	if (!rc)
		(*out)->line = line;
	return rc;
}

int fanserv_call(wconn *c, int (*fn)(srv *s, void *arg, char **out, size_t *len), void *arg,
		 void (*arg_free)(void *arg), fanjob **out)
{
	fanjob *j = fj_new(c);
	if (!j) {
		arg_free(arg);
		return -ENOMEM;
	}
	j->fn = fn;
	j->arg = arg;
	j->arg_free = arg_free;
	return fj_spawn(j->s, j, out);
}

void fanserv_set_line(fanjob *j, uint64_t line)
{
	j->line = line; /* read by fanserv_pump, on the same shard thread */
}

int fanserv_take(fanjob *j, char **out, size_t *len, int *status)
{
	if (atomic_load(&j->state) != FJ_DONE)
		return 0;
	*out = j->out;
	*len = j->len;
	*status = j->status;
	j->out = NULL;
	j->len = 0;
	return 1;
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
	fj_free(j);
}

/* ---------------------------------------------------------------- InfluxQL */

/* influxq_exec.c's numbers asked of every node: each call is one fan-out
 * (fan_ask), its merged rows read back (fan_reader). */
typedef struct fan_src {
	iq_src base; /* first: the executor hands back &base */
	srv *s;
	/* partial=mark: a node that missed one call is not asked again by
	 * this query (a statement makes a few calls per key, each would wait
	 * out peer-timeout), and every later call's statement names it. */
	fan_node *alive;
	size_t n_alive;
	char dead[IQ_ERR_MAX];
} fan_src;

/* Appends names ("; "-separated) to list (cap bytes) unless it holds them. */
static void fs_note(char *list, size_t cap, const char *names, size_t n)
{
	size_t have = strlen(list);
	char m[IQ_ERR_MAX];
	snprintf(m, sizeof m, "%.*s", (int)n, names);
	if (n && !strstr(list, m))
		snprintf(list + have, cap - have, "%s%s", have ? "; " : "", m);
}

/* A call's merged answer: read row by row (row, n) with fs_row. */
typedef struct fs_answer {
	fan_reader rd;
	char *text;
	const char *row;
	size_t n;
} fs_answer;

/* Asks r of every node; 0 with the merged answer in *a (fs_done frees
 * it), TALLY_ENOTFOUND, or IQ_EREMOTE with err. */
static int fs_ask(iq_src *is, fs_answer *a, cmd_req r, char *err)
{
	fan_src *f = (fan_src *)is;
	fan_opts o = fanserv_opts(f->s, is->mark, "partial=mark");
	fan_reader *rd = &a->rd;
	size_t len;
	a->text = NULL;
	int rc = fan_ask(f->alive, f->n_alive, &o, &r, &a->text, &len);
	if (rc) {
		snprintf(err, IQ_ERR_MAX, "%s",
			 rc == -E2BIG ? "the query is too long to send to the other nodes"
				      : "out of memory asking the other nodes");
		return IQ_EREMOTE;
	}
	fan_reader_open(rd, a->text, len);
	if (rd->err) {
		rc = fan_err_absent(rd->err, rd->err_n) ? TALLY_ENOTFOUND : IQ_EREMOTE;
		snprintf(err, IQ_ERR_MAX, "%.*s", (int)rd->err_n, rd->err);
		free(a->text);
		a->text = NULL;
		return rc;
	}
	if (rd->partial) {
		fs_note(f->dead, sizeof f->dead, rd->partial, rd->partial_n);
		/* "HOST:PORT (why)": those named are asked no more */
		size_t k = 0;
		for (size_t i = 0; i < f->n_alive; i++) {
			char nm[300];
			snprintf(nm, sizeof nm, "%s:%s (", f->alive[i].host, f->alive[i].port);
			if (!memmem(rd->partial, rd->partial_n, nm, strlen(nm)))
				f->alive[k++] = f->alive[i];
		}
		f->n_alive = k;
	}
	/* each missing node once per statement, however many calls missed it */
	fs_note(is->missing, sizeof is->missing, f->dead, strlen(f->dead));
	return 0;
}

static int fs_row(fs_answer *a)
{
	return fan_reader_next(&a->rd, &a->row, &a->n);
}

static int fs_done(fs_answer *a, int rc)
{
	free(a->text);
	return rc;
}

static int fs_agg(iq_src *is, const char *table, const char *field, const char *key, int64_t from,
		  int64_t to, tally_agg *agg, char *err)
{
	fs_answer a;
	int rc = fs_ask(is, &a, fan_req(CMD_AGG, "agg", table, field, key, 0, from, to), err);
	if (rc)
		return rc;
	memset(agg, 0, sizeof *agg);
	if (fs_row(&a))
		*agg = fan_cell_agg(a.row, a.n, 0);
	return fs_done(&a, 0);
}

static int fs_series(iq_src *is, const char *table, const char *field, const char *key,
		     int64_t step, int64_t from, int64_t to, tally_bucket *out, size_t cap,
		     size_t *n_out, char *err)
{
	fs_answer a;
	cmd_req r = fan_req(CMD_SERIES, "series", table, field, key, step, from, to);
	int rc = fs_ask(is, &a, r, err);
	if (rc)
		return rc;
	size_t k = 0;
	for (; k < cap && fs_row(&a); k++) {
		out[k].start = fan_cell_time(a.row, a.n, 0);
		out[k].agg = fan_cell_agg(a.row, a.n, 1);
	}
	*n_out = k;
	return fs_done(&a, 0);
}

static int fs_keys(iq_src *is, const char *table, const char *field, int64_t from, int64_t to,
		   int (*each)(void *arg, const char *key), void *arg, char *err)
{
	fs_answer a;
	int rc = fs_ask(is, &a, fan_req(CMD_KEYS, "keys", table, field, NULL, 0, from, to), err);
	while (!rc && fs_row(&a)) {
		size_t kn;
		const char *k = fan_cell(a.row, a.n, 0, &kn);
		char *key = malloc(kn + 1);
		if (!key)
			return fs_done(&a, -ENOMEM);
		key[fan_unescape(k, kn, key)] = 0;
		rc = each(arg, key);
		free(key);
	}
	return fs_done(&a, rc);
}

/* Every node's part as pairs, merged exactly (wire/fandist.c). */
static int fs_dist(iq_src *is, const char *table, const char *field, const char *key, int64_t from,
		   int64_t to, tally_dist **out, char *err)
{
	fs_answer a;
	cmd_req r = fan_req(CMD_DIST, "dist", table, field, key, 0, from, to);
	r.stats[0] = "pairs";
	r.n_stats = 1;
	int rc = fs_ask(is, &a, r, err);
	if (rc)
		return rc;
	if (fandist_read(&a.rd, out, err, IQ_ERR_MAX))
		rc = IQ_EREMOTE;
	return fs_done(&a, rc);
}

/* Every window's pairs of every node in one ask ("pairs step= origin="),
 * merged window by window (wire/fandist.c). */
static int fs_dists(iq_src *is, const char *table, const char *field, const char *key, int64_t step,
		    int64_t w0, int64_t from, int64_t to, size_t nwin, tally_dist **out, char *err)
{
	fs_answer a;
	cmd_req r = fan_req(CMD_DIST, "dist", table, field, key, step, from, to);
	r.stats[0] = "pairs";
	r.n_stats = 1;
	r.origin = fandist_origin(w0, step);
	r.has_origin = 1;
	int rc = fs_ask(is, &a, r, err);
	if (rc)
		return rc;
	size_t i = 0;
	for (; i < nwin && !rc; i++) {
		int64_t ws = w0 + (int64_t)i * step;
		if (fandist_window(&a.rd, ws < from ? from : ws, &out[i], err, IQ_ERR_MAX))
			rc = IQ_EREMOTE;
	}
	if (!rc && fs_row(&a)) { /* never dropped */
		snprintf(err, IQ_ERR_MAX,
			 "a node answered a window this step does not have ('%.40s')", a.row);
		rc = IQ_EREMOTE;
	}
	for (size_t k = 0; rc && k < i; k++) {
		tally_dist_free(out[k]);
		out[k] = NULL;
	}
	return fs_done(&a, rc);
}

/* Every node's catalog (#!tables), their union: each row's cells. */
static int fs_catalog(iq_src *is,
		      int (*each)(void *arg, const char *table, const char *key_tag,
				  const char *column, const char *type),
		      void *arg, char *err)
{
	fs_answer a;
	int rc = fs_ask(is, &a, fan_req(CMD_TABLES, "tables", NULL, NULL, NULL, 0, 0, 0), err);
	while (!rc && fs_row(&a)) {
		char *buf = malloc(a.n + 4), *cell[4];
		if (!buf)
			return fs_done(&a, -ENOMEM);
		for (unsigned j = 0, o = 0; j < 4; j++) {
			size_t cn = 0;
			const char *c = fan_cell(a.row, a.n, j, &cn);
			cell[j] = buf + o;
			o += (unsigned)fan_unescape(c ? c : "", c ? cn : 0, buf + o);
			buf[o++] = 0;
		}
		rc = each(arg, cell[0], cell[1], cell[2], cell[3]);
		free(buf);
	}
	return fs_done(&a, rc);
}

typedef struct iq_job {
	char *query, *body;
	size_t query_n, body_n;
	int64_t now;
} iq_job;

static void iq_job_free(void *arg)
{
	iq_job *q = arg;
	if (!q)
		return;
	free(q->query);
	free(q->body);
	free(q);
}

static int iq_job_run(srv *s, void *arg, char **out, size_t *len)
{
	iq_job *q = arg;
	fan_src f = {.base = {.agg = fs_agg,
			      .series = fs_series,
			      .keys = fs_keys,
			      .dist = fs_dist,
			      .dists = fs_dists,
			      .catalog = fs_catalog},
		     .s = s,
		     .alive = malloc(s->n_fan_nodes * sizeof *f.alive),
		     .n_alive = s->n_fan_nodes};
	if (!f.alive)
		return 500; /* *out NULL: h_step answers 500 */
	memcpy(f.alive, s->fan_nodes, s->n_fan_nodes * sizeof *f.alive);
	int st = influxq_http_src(s->db, &f.base, q->query, q->query_n, q->body, q->body_n, q->now,
				  out, len);
	free(f.alive);
	return st;
}

int fanserv_influxql(wconn *c, const char *query, size_t query_n, const char *body, size_t body_n,
		     fanjob **out)
{
	iq_job *q = calloc(1, sizeof *q);
	if (!q)
		return -ENOMEM;
	q->query = malloc(query_n + 1);
	q->body = malloc(body_n + 1);
	if (!q->query || !q->body) {
		iq_job_free(q);
		return -ENOMEM;
	}
	if (query_n) /* (memcpy from NULL is undefined even for 0 bytes) */
		memcpy(q->query, query, query_n);
	if (body_n)
		memcpy(q->body, body, body_n);
	q->query_n = query_n;
	q->body_n = body_n;
	q->now = srv_clock_ns();
	return fanserv_call(c, iq_job_run, q, iq_job_free, out);
}
