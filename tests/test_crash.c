/*
 * test_crash.c — kill -9 under load, then recovery (promises 1
 * and 2 of docs/architecture.md: nothing acknowledged is lost; recovery never counts an event twice
 * nor drops one).
 *
 * Each cycle forks a child that opens the database, writes events from a
 * few threads (each with its own writer; two of them share a shard), syncs
 * at random moments and tells the parent through a pipe which ids it is
 * about to write (BEGIN) and which are durable (DURABLE). The parent
 * SIGKILLs it at a random moment, sometimes while it is still replaying
 * the WAL, reopens the database itself and checks every event, then starts
 * the next cycle on the same directory with ids above all used before.
 *
 * The idea that makes the check cheap: an event's id determines everything
 * else about it (time, v), and its key comes with BEGIN, so the parent
 * keeps a few bytes per id and checks each scanned row against them. Ids
 * move through states: written (maybe there), durable (must be there),
 * then after a recovery either kept (seen once: must stay exactly once in
 * every later recovery) or gone (unseen: must never come back).
 *
 * Rollups are checked against the scanned raw rows: exact aggregates over
 * everything and over random ranges, the all-keys aggregate and a series.
 *
 * Cycles vary how soon memtables are flushed into parts, so kills also land
 * in flushes, manifest commits, WAL trims and merges, and recovery has to
 * take each event from a part or from the WAL, never from both.
 *
 * TALLY_SEED replays a run's random choices (not where the kills land,
 * which depends on the machine's speed); TALLY_CRASH_CYCLES overrides the
 * cycle counts; TALLY_CRASH_VERBOSE prints a line per cycle.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include <time.h>

#include "testutil.h"

#define T0               INT64_C(1700000000000000000) /* 2023-11-14T22:13:20Z */
#define TS_LO            (T0 - TALLY_1D)              /* before every event */
#define TS_HI            (T0 + 30 * TALLY_1D)         /* after every event */
#define NKEYS            8
#define KEY_MIXED        UINT32_MAX /* BEGIN of a line protocol batch: key_of(id) */
#define CHILD_FAILED     3          /* child exit code: it printed why on stderr */
#define READY_TIMEOUT_MS 60000
#define MAX_FAILS        8 /* offending ids listed per kind of failure */
#define N_RANGES         4 /* random ranges checked per cycle */

static const char *const key_names[NKEYS] = {"s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7"};

/* ---------------------------------------------------------------- events */

static uint64_t mix(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	return x ^ (x >> 33);
}

/* Key of an id written by line protocol, where one batch mixes keys. */
static unsigned key_of(uint64_t id)
{
	return (unsigned)(mix(id) % NKEYS);
}

/* 1 ms apart, jittered by up to 10 minutes so that events arrive late and
 * out of order across 5-minute windows. */
static int64_t ts_of(uint64_t id)
{
	return T0 + (int64_t)id * 1000000 + (int64_t)(mix(id ^ 0xabcdef) % 600) * TALLY_NS_PER_SEC;
}

static int64_t v_of(uint64_t id)
{
	return (int64_t)(id % 97);
}

/* ---------------------------------------------------------------- config */

typedef struct crash_cfg {
	const char *name;
	int binary; /* tally_write_batch instead of tally_write_lp */
	enum tally_sync_mode sync_mode;
	unsigned shards, threads; /* thread t writes to shard t % shards */
	unsigned max_batch;       /* events per write call: 1..max_batch */
	int huge;                 /* and now and then 50000..70000 */
	uint64_t segment_bytes;
	/* Memtable flushes into parts: 0 in half the cycles, else now and then;
	 * 1: in every cycle, often (memtables of a few hundred KiB). */
	int flush_often;
	/* Levels 5m and 1h and partitions of an hour, instead of days: the
	 * events span a few partitions, so flushes write several parts and
	 * partitions get sealed while late events still arrive. */
	int hour_partitions;
	unsigned cycles;
	unsigned kill_min_ms, kill_max_ms; /* after the child's db is open */
	uint64_t cycle_ids;                /* the child writes at most this many */
	/* Ids per second over all threads, at most. The parent's check costs
	 * about a microsecond per id ever written, and every cycle checks them
	 * all: this keeps the binary API from outrunning the time budget.
	 * 0: no limit. */
	uint64_t rate;
} crash_cfg;

/* What a cycle varies: how soon memtables are flushed into parts. */
typedef struct cycle_opts {
	uint64_t memtable_bytes; /* 0: the default, 64 MiB */
	uint32_t flush_interval_ms;
} cycle_opts;

static void crash_options(const crash_cfg *cfg, const cycle_opts *co, tally_options *o)
{
	tally_options_init(o);
	o->shards = cfg->shards;
	o->sync_mode = cfg->sync_mode;
	o->wal_segment_bytes = cfg->segment_bytes;
	o->memtable_bytes = co->memtable_bytes;
	o->flush_interval_ms = co->flush_interval_ms;
	if (cfg->hour_partitions) {
		o->n_levels = 2;
		o->levels[0] = TALLY_5M;
		o->levels[1] = TALLY_1H;
		o->partition_width = TALLY_1H;
	}
	o->log_fn = tu_quiet_log;
}

/* Pipe message; 24 bytes, so each write() is atomic (< PIPE_BUF). */
enum { MSG_READY = 1, MSG_BEGIN = 2, MSG_DURABLE = 3 };
typedef struct msg {
	uint32_t kind;
	uint32_t key; /* BEGIN: key index, or KEY_MIXED */
	uint64_t lo, hi;
} msg;

/* ---------------------------------------------------------------- child */

typedef struct child {
	const crash_cfg *cfg;
	tally_db *db;
	int fd;
	uint64_t end; /* ids stop here */
	_Atomic uint64_t next_id;
	uint64_t seed;
} child;

typedef struct child_thread {
	child *cx;
	unsigned idx;
	pthread_t tid;
} child_thread;

/* The child must not use Criterion: it says why on stderr and exits. */
static _Noreturn void child_die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "crash child %d: ", (int)getpid());
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	_exit(CHILD_FAILED);
}

static void child_send(child *cx, uint32_t kind, uint32_t key, uint64_t lo, uint64_t hi)
{
	msg m = {kind, key, lo, hi};
	ssize_t k;
	while ((k = write(cx->fd, &m, sizeof m)) < 0 && errno == EINTR)
		;
	if (k != (ssize_t)sizeof m)
		child_die("pipe write: %s", k < 0 ? strerror(errno) : "short");
}

/* Mostly small batches, now and then large ones (records that span
 * buffer flushes), and with cfg->huge once in a while a huge one: over
 * the WAL's 1 MiB append buffer, so it is written directly, and sometimes
 * over the 65536 rows at which one write call commits twice. */
#define HUGE_MIN 50000
#define HUGE_MAX 70000

static unsigned batch_size(tu_rng *r, const crash_cfg *cfg)
{
	if (cfg->huge && tu_below(r, 100) == 0)
		return HUGE_MIN + (unsigned)tu_below(r, HUGE_MAX - HUGE_MIN + 1);
	unsigned max = cfg->max_batch;
	unsigned cap = tu_below(r, 4) ? (max < 64 ? max : 64) : max;
	return 1 + (unsigned)tu_below(r, cap);
}

static int child_write_lp(tally_writer *w, char *text, size_t cap, uint64_t lo, uint64_t hi)
{
	size_t len = 0;
	for (uint64_t id = lo; id < hi; id++) {
		int k = snprintf(text + len, cap - len, "crash,src=%s id=%llui,v=%lldi %lld\n",
				 key_names[key_of(id)], (unsigned long long)id, (long long)v_of(id),
				 (long long)ts_of(id));
		if (k < 0 || (size_t)k >= cap - len)
			child_die("line protocol buffer too small");
		len += (size_t)k;
	}
	tally_write_result res;
	int rc = tally_write_lp(w, text, len, TALLY_PREC_NS, &res);
	if (rc == 0 && (res.accepted != hi - lo || res.rejected != 0))
		child_die("write_lp: %llu accepted, %llu rejected of %llu: %s",
			  (unsigned long long)res.accepted, (unsigned long long)res.rejected,
			  (unsigned long long)(hi - lo), res.n_errors ? res.errors[0].reason : "");
	return rc;
}

static int child_write_batch(tally_writer *w, unsigned key, int64_t *ts, int64_t *ids, int64_t *vs,
			     uint64_t lo, uint64_t hi)
{
	size_t n = (size_t)(hi - lo);
	for (size_t i = 0; i < n; i++) {
		ts[i] = ts_of(lo + i);
		ids[i] = (int64_t)(lo + i);
		vs[i] = v_of(lo + i);
	}
	tally_column cols[2] = {
		{.name = "id", .type = TALLY_T_I64, .values = ids},
		{.name = "v", .type = TALLY_T_I64, .values = vs},
	};
	tally_batch b = {.table = "crash",
			 .key = key_names[key],
			 .key_tag = "src",
			 .n_rows = n,
			 .ts = ts,
			 .n_columns = 2,
			 .columns = cols};
	return tally_write_batch(w, &b);
}

#define PENDING_MAX 8

static int64_t now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * TALLY_NS_PER_SEC + t.tv_nsec;
}

static void *child_thread_main(void *arg)
{
	child_thread *ct = arg;
	child *cx = ct->cx;
	const crash_cfg *cfg = cx->cfg;
	tu_rng r = {mix(cx->seed + ct->idx)};
	tally_writer *w;
	if (tally_writer_open(cx->db, (int)(ct->idx % cfg->shards), &w))
		child_die("writer_open: %s", tally_errmsg());
	size_t max = cfg->huge ? HUGE_MAX : cfg->max_batch;
	char *text = malloc(max * 96); /* a line is under 96 bytes */
	int64_t *cols = malloc(3 * max * sizeof *cols);
	if (!text || !cols)
		child_die("out of memory");
	msg pending[PENDING_MAX];
	unsigned n_pending = 0;
	uint64_t done = 0, rate = cfg->rate / cfg->threads;
	int64_t t0 = now_ns();
	for (;;) {
		int64_t ahead =
			rate ? (int64_t)(done * TALLY_NS_PER_SEC / rate) - (now_ns() - t0) : 0;
		if (ahead > 0)
			nanosleep(&(struct timespec){ahead / TALLY_NS_PER_SEC,
						     ahead % TALLY_NS_PER_SEC},
				  NULL);
		uint64_t n = batch_size(&r, cfg);
		done += n;
		uint64_t lo = atomic_fetch_add(&cx->next_id, n), hi = lo + n;
		if (hi > cx->end)
			break;
		uint32_t key = cfg->binary ? (uint32_t)tu_below(&r, NKEYS) : KEY_MIXED;
		/* Announced before the write starts: the pipe keeps it even if
		 * the kill comes in the middle of the write. */
		child_send(cx, MSG_BEGIN, key, lo, hi);
		int rc = cfg->binary ? child_write_batch(w, key, cols, cols + max, cols + 2 * max,
							 lo, hi)
				     : child_write_lp(w, text, max * 96, lo, hi);
		if (rc)
			child_die("write of ids [%llu, %llu): %s: %s", (unsigned long long)lo,
				  (unsigned long long)hi, tally_strerror(rc), tally_errmsg());
		if (cfg->sync_mode == TALLY_SYNC_EACH_WRITE) {
			/* durable as the write returned */
			child_send(cx, MSG_DURABLE, key, lo, hi);
			if (tu_below(&r, 8))
				continue;
		} else {
			pending[n_pending++] = (msg){MSG_DURABLE, key, lo, hi};
			if (n_pending < PENDING_MAX && tu_below(&r, 3))
				continue;
		}
		if ((rc = tally_db_sync(cx->db)) != 0)
			child_die("sync: %s: %s", tally_strerror(rc), tally_errmsg());
		for (unsigned i = 0; i < n_pending; i++)
			child_send(cx, MSG_DURABLE, pending[i].key, pending[i].lo, pending[i].hi);
		n_pending = 0;
	}
	free(text);
	free(cols);
	tally_writer_close(w);
	return NULL;
}

static _Noreturn void child_main(const crash_cfg *cfg, const cycle_opts *co, const char *dir,
				 int fd, uint64_t start, uint64_t seed)
{
	child cx = {.cfg = cfg, .fd = fd, .end = start + cfg->cycle_ids, .seed = seed};
	atomic_init(&cx.next_id, start);
	tally_options o;
	crash_options(cfg, co, &o);
	int rc = tally_db_open(dir, &o, &cx.db);
	if (rc)
		child_die("open: %s: %s", tally_strerror(rc), tally_errmsg());
	child_send(&cx, MSG_READY, 0, 0, 0);
	child_thread th[8];
	unsigned n = cfg->threads < 8 ? cfg->threads : 8;
	for (unsigned i = 0; i < n; i++) {
		th[i] = (child_thread){.cx = &cx, .idx = i};
		if (pthread_create(&th[i].tid, NULL, child_thread_main, &th[i]))
			child_die("pthread_create failed");
	}
	for (unsigned i = 0; i < n; i++)
		pthread_join(th[i].tid, NULL);
	/* Ran out of ids before the kill: a clean close is a valid ending. */
	tally_db_close(cx.db);
	_exit(0);
}

/* ---------------------------------------------------------------- parent */

enum {
	ST_WRITTEN = 1, /* BEGIN seen: may be in the database */
	ST_DURABLE = 2, /* acknowledged durable: must be there */
	ST_KEPT = 4,    /* seen after a recovery: must stay, exactly once */
	ST_GONE = 8,    /* written, absent after a recovery: must never return */
};

typedef struct model {
	uint64_t cap;         /* ids [0, cap) have slots */
	uint64_t end;         /* ids announced so far are below this */
	uint8_t *st;          /* ST_* per id */
	uint8_t *key;         /* key index per written id */
	uint8_t *seen;        /* rows found per id in this check (saturates) */
	uint64_t durable;     /* ids acknowledged, all cycles */
	uint64_t killed;      /* cycles that ended in SIGKILL */
	uint64_t early;       /* of which before the child's open finished */
	uint64_t maybe;       /* written, unacknowledged ids found present */
	uint64_t dropped;     /* written, unacknowledged ids found absent */
	uint64_t parts;       /* most part files a check found */
	uint64_t part_checks; /* checks that found parts */
} model;

static void model_grow(model *m, uint64_t cap)
{
	if (cap <= m->cap)
		return;
	m->st = realloc(m->st, cap);
	m->key = realloc(m->key, cap);
	m->seen = realloc(m->seen, cap);
	cr_assert(m->st && m->key && m->seen, "out of memory for %llu ids",
		  (unsigned long long)cap);
	memset(m->st + m->cap, 0, cap - m->cap);
	memset(m->key + m->cap, 0, cap - m->cap);
	memset(m->seen + m->cap, 0, cap - m->cap);
	m->cap = cap;
}

static int64_t now_ms(void)
{
	return now_ns() / 1000000;
}

typedef struct cycle {
	model *m;
	uint64_t start, limit; /* ids the child may use */
	char buf[4096];
	size_t len;
	int ready;
	char err[256]; /* first protocol violation */
} cycle;

static void cycle_msg(cycle *c, const msg *g)
{
	model *m = c->m;
	if (c->err[0])
		return;
	if (g->kind == MSG_READY) {
		c->ready = 1;
		return;
	}
	if ((g->kind != MSG_BEGIN && g->kind != MSG_DURABLE) || g->lo >= g->hi ||
	    g->lo < c->start || g->hi > c->limit || (g->key >= NKEYS && g->key != KEY_MIXED)) {
		snprintf(c->err, sizeof c->err, "bad message kind %u key %u [%llu, %llu)", g->kind,
			 g->key, (unsigned long long)g->lo, (unsigned long long)g->hi);
		return;
	}
	if (g->hi > m->end)
		m->end = g->hi;
	for (uint64_t id = g->lo; id < g->hi; id++) {
		if (g->kind == MSG_BEGIN) {
			if (m->st[id]) {
				snprintf(c->err, sizeof c->err, "id %llu announced twice",
					 (unsigned long long)id);
				return;
			}
			m->st[id] = ST_WRITTEN;
			m->key[id] = (uint8_t)(g->key == KEY_MIXED ? key_of(id) : g->key);
		} else {
			if (m->st[id] != ST_WRITTEN) {
				snprintf(c->err, sizeof c->err, "id %llu durable before written",
					 (unsigned long long)id);
				return;
			}
			m->st[id] |= ST_DURABLE;
			m->durable++;
		}
	}
}

/* Reads what the pipe holds, waiting up to timeout_ms (-1: until EOF).
 * Returns 0 at EOF, 1 otherwise. */
static int cycle_read(cycle *c, int fd, int timeout_ms)
{
	struct pollfd p = {.fd = fd, .events = POLLIN};
	int r = poll(&p, 1, timeout_ms);
	if (r < 0 && errno == EINTR)
		return 1;
	cr_assert_geq(r, 0, "poll: %s", strerror(errno));
	if (r == 0)
		return 1;
	ssize_t k = read(fd, c->buf + c->len, sizeof c->buf - c->len);
	if (k < 0 && errno == EINTR)
		return 1;
	cr_assert_geq(k, 0, "read: %s", strerror(errno));
	if (k == 0)
		return 0;
	c->len += (size_t)k;
	size_t used = 0;
	for (; c->len - used >= sizeof(msg); used += sizeof(msg)) {
		msg g;
		memcpy(&g, c->buf + used, sizeof g);
		cycle_msg(c, &g);
	}
	memmove(c->buf, c->buf + used, c->len - used);
	c->len -= used;
	return 1;
}

/* Per key and per checked range: the answer brute force gives. */
typedef struct expect {
	uint64_t count;
	double v_sum, id_sum, id_min, id_max;
} expect;

static void expect_add(expect *e, uint64_t id)
{
	e->count++;
	e->v_sum += (double)v_of(id);
	e->id_sum += (double)id;
	if (e->count == 1 || (double)id < e->id_min)
		e->id_min = (double)id;
	if (e->count == 1 || (double)id > e->id_max)
		e->id_max = (double)id;
}

typedef struct checker {
	const crash_cfg *cfg;
	model *m;
	const char *dir;
	uint64_t seed;
	unsigned cycle;
	char where[512];
} checker;

/* Fails the test, keeping the directory for a post-mortem. */
#define CHECK(ck, cond, ...)                                                                 \
	do {                                                                                 \
		if (!(cond)) {                                                               \
			char msg_[512];                                                      \
			snprintf(msg_, sizeof msg_, __VA_ARGS__);                            \
			cr_assert_fail("%s: cycle %u, TALLY_SEED=%llu, data kept in %s: %s", \
				       (ck)->cfg->name, (ck)->cycle,                         \
				       (unsigned long long)(ck)->seed, (ck)->dir, msg_);     \
		}                                                                            \
	} while (0)

static void check_agg(checker *ck, tally_db *db, const char *field, unsigned k, int64_t from,
		      int64_t to, const expect *e)
{
	tally_agg a;
	int rc = tally_query_agg(db, "crash", field, key_names[k], from, to, &a);
	CHECK(ck, rc == 0, "agg %s %s: %s", field, key_names[k], tally_errmsg());
	int is_v = !strcmp(field, "v");
	CHECK(ck, a.count == e->count && a.sum == (is_v ? e->v_sum : e->id_sum),
	      "agg %s key %s [%lld, %lld): count %llu sum %.0f, raw rows give %llu and %.0f", field,
	      key_names[k], (long long)from, (long long)to, (unsigned long long)a.count, a.sum,
	      (unsigned long long)e->count, is_v ? e->v_sum : e->id_sum);
	if (!is_v && e->count)
		CHECK(ck, a.min == e->id_min && a.max == e->id_max,
		      "agg id key %s [%lld, %lld): min %.0f max %.0f, raw rows give %.0f %.0f",
		      key_names[k], (long long)from, (long long)to, a.min, a.max, e->id_min,
		      e->id_max);
}

/* Opens the database after the kill and checks every id and the rollups. */
static void check_db(checker *ck, const cycle_opts *co, tu_rng *r)
{
	const crash_cfg *cfg = ck->cfg;
	model *m = ck->m;
	tally_options o;
	crash_options(cfg, co, &o);
	tally_db *db;
	int rc = tally_db_open(ck->dir, &o, &db);
	CHECK(ck, rc == 0, "reopen: %s: %s", tally_strerror(rc), tally_errmsg());

	memset(m->seen, 0, m->end);
	uint64_t bad_rows = 0;
	expect total[NKEYS] = {{0}};
	for (unsigned k = 0; k < NKEYS; k++) {
		tally_scan *sc;
		rc = tally_scan_open(db, "crash", key_names[k], TS_LO, TS_HI, &sc);
		if (rc == TALLY_ENOTFOUND)
			continue; /* nothing written yet */
		CHECK(ck, rc == 0, "scan %s: %s", key_names[k], tally_errmsg());
		size_t ci = SIZE_MAX, cv = SIZE_MAX;
		for (size_t i = 0; i < tally_scan_columns(sc); i++) {
			const char *nm;
			enum tally_type ty;
			tally_scan_column(sc, i, &nm, &ty);
			if (!strcmp(nm, "id"))
				ci = i;
			else if (!strcmp(nm, "v"))
				cv = i;
		}
		tally_row row;
		while ((rc = tally_scan_next(sc, &row)) == 1) {
			const tally_value *vi = ci < row.n_values ? &row.values[ci] : NULL;
			const tally_value *vv = cv < row.n_values ? &row.values[cv] : NULL;
			uint64_t id =
				vi && vi->type == TALLY_T_I64 ? (uint64_t)vi->v.i64 : UINT64_MAX;
			if (id >= m->end || !(m->st[id] & ST_WRITTEN)) {
				CHECK(ck, 0,
				      "key %s: row ts %lld has id %lld, which was never written",
				      key_names[k], (long long)row.ts,
				      vi ? (long long)vi->v.i64 : -1LL);
			}
			if (m->key[id] != k || row.ts != ts_of(id) || !vv ||
			    vv->type != TALLY_T_I64 || vv->v.i64 != v_of(id)) {
				if (bad_rows++ < MAX_FAILS)
					fprintf(stderr,
						"id %llu: key %s ts %lld v %lld, expected %s %lld "
						"%lld\n",
						(unsigned long long)id, key_names[k],
						(long long)row.ts, vv ? (long long)vv->v.i64 : -1LL,
						key_names[m->key[id]], (long long)ts_of(id),
						(long long)v_of(id));
				continue;
			}
			if (m->seen[id] < 255)
				m->seen[id]++;
			expect_add(&total[k], id);
		}
		CHECK(ck, rc == 0, "scan %s next: %s", key_names[k], tally_errmsg());
		tally_scan_close(sc);
	}
	CHECK(ck, bad_rows == 0, "%llu rows with a wrong key, time or value (listed above)",
	      (unsigned long long)bad_rows);

	/* Every id against its state. */
	uint64_t present = 0, lost = 0, dup = 0, vanished = 0, back = 0;
	for (uint64_t id = 0; id < m->end; id++) {
		uint8_t s = m->st[id], n = m->seen[id];
		present += n != 0;
		if (n > 1 && dup++ < MAX_FAILS)
			fprintf(stderr, "%s: id %llu present %u times\n", cfg->name,
				(unsigned long long)id, n);
		if ((s & ST_DURABLE) && !n && !(s & ST_GONE) && lost++ < MAX_FAILS)
			fprintf(stderr, "%s: id %llu acknowledged durable but missing\n", cfg->name,
				(unsigned long long)id);
		if ((s & ST_KEPT) && !n && vanished++ < MAX_FAILS)
			fprintf(stderr, "%s: id %llu seen after an earlier recovery, now missing\n",
				cfg->name, (unsigned long long)id);
		if ((s & ST_GONE) && n && back++ < MAX_FAILS)
			fprintf(stderr, "%s: id %llu missing after an earlier recovery, now back\n",
				cfg->name, (unsigned long long)id);
	}
	CHECK(ck, dup == 0, "%llu ids present more than once", (unsigned long long)dup);
	CHECK(ck, lost == 0, "%llu acknowledged ids lost", (unsigned long long)lost);
	CHECK(ck, vanished == 0, "%llu ids recovered before are missing now",
	      (unsigned long long)vanished);
	CHECK(ck, back == 0, "%llu ids dropped by a recovery came back", (unsigned long long)back);

	tally_stats st;
	CHECK(ck, tally_db_stats(db, &st) == 0, "stats: %s", tally_errmsg());
	CHECK(ck, st.events == present, "stats.events %llu, distinct ids present %llu",
	      (unsigned long long)st.events, (unsigned long long)present);
	unsigned keys = 0;
	for (unsigned k = 0; k < NKEYS; k++)
		keys += total[k].count != 0;
	CHECK(ck, st.keys == keys, "stats.keys %llu, keys with rows %u",
	      (unsigned long long)st.keys, keys);
	if (getenv("TALLY_CRASH_VERBOSE"))
		fprintf(stderr,
			"%s: cycle %u: memtable limit %llu, %llu events, %llu parts of %llu rows, "
			"wal %llu bytes\n",
			cfg->name, ck->cycle, (unsigned long long)co->memtable_bytes,
			(unsigned long long)st.events, (unsigned long long)st.parts,
			(unsigned long long)st.part_rows, (unsigned long long)st.wal_bytes);
	if (st.parts > m->parts)
		m->parts = st.parts;
	m->part_checks += st.parts != 0;

	if (present) {
		/* Rollups against raw rows: everything, then random ranges (edges
		 * cut through windows, so both rollups and raw edges answer). */
		int64_t lo = ts_of(0), hi = ts_of(m->end) + 600 * TALLY_NS_PER_SEC;
		int64_t from[N_RANGES], to[N_RANGES];
		expect part[N_RANGES][NKEYS];
		memset(part, 0, sizeof part);
		for (unsigned i = 0; i < N_RANGES; i++) {
			int64_t a = lo + (int64_t)tu_below(r, (uint64_t)(hi - lo));
			int64_t b = lo + (int64_t)tu_below(r, (uint64_t)(hi - lo));
			from[i] = a < b ? a : b;
			to[i] = (a < b ? b : a) + 1;
		}
		for (uint64_t id = 0; id < m->end; id++) {
			if (!m->seen[id])
				continue;
			int64_t t = ts_of(id);
			for (unsigned i = 0; i < N_RANGES; i++)
				if (t >= from[i] && t < to[i])
					expect_add(&part[i][m->key[id]], id);
		}
		for (unsigned k = 0; k < NKEYS; k++) {
			if (!total[k].count)
				continue;
			check_agg(ck, db, "v", k, TS_LO, TS_HI, &total[k]);
			check_agg(ck, db, "id", k, TS_LO, TS_HI, &total[k]);
			for (unsigned i = 0; i < N_RANGES; i++)
				check_agg(ck, db, "v", k, from[i], to[i], &part[i][k]);
		}
		/* All keys at once over one of the ranges. */
		tally_keys_iter *it;
		rc = tally_query_keys(db, "crash", "id", from[0], to[0], &it);
		CHECK(ck, rc == 0, "query_keys: %s", tally_errmsg());
		const char *key;
		tally_agg a;
		unsigned got = 0;
		while ((rc = tally_keys_next(it, &key, &a)) == 1) {
			unsigned k = (unsigned)(key[1] - '0');
			CHECK(ck, key[0] == 's' && k < NKEYS && !key[2], "query_keys: key '%s'",
			      key);
			CHECK(ck, a.count == part[0][k].count && a.sum == part[0][k].id_sum,
			      "query_keys %s: count %llu sum %.0f, raw rows give %llu %.0f", key,
			      (unsigned long long)a.count, a.sum,
			      (unsigned long long)part[0][k].count, part[0][k].id_sum);
			got++;
		}
		CHECK(ck, rc == 0, "keys_next: %s", tally_errmsg());
		tally_keys_close(it);
		unsigned want = 0;
		for (unsigned k = 0; k < NKEYS; k++)
			want += part[0][k].count != 0;
		CHECK(ck, got == want, "query_keys gave %u keys, raw rows have %u", got, want);
		/* A 15-minute series adds up to the whole. */
		unsigned k = (unsigned)tu_below(r, NKEYS);
		if (total[k].count) {
			tally_bucket b[256];
			size_t n;
			rc = tally_query_series(db, "crash", "v", key_names[k], 3 * TALLY_5M, TS_LO,
						TS_HI, b, 256, &n);
			CHECK(ck, rc == 0, "series %s: %s", key_names[k], tally_errmsg());
			uint64_t count = 0;
			double sum = 0;
			for (size_t i = 0; i < n; i++) {
				count += b[i].agg.count;
				sum += b[i].agg.sum;
			}
			CHECK(ck, count == total[k].count && sum == total[k].v_sum,
			      "series %s: count %llu sum %.0f, raw rows give %llu %.0f",
			      key_names[k], (unsigned long long)count, sum,
			      (unsigned long long)total[k].count, total[k].v_sum);
		}
	}
	tally_db_close(db);

	/* What this recovery showed is settled for every later one. */
	for (uint64_t id = 0; id < m->end; id++) {
		uint8_t s = m->st[id];
		if (!(s & ST_WRITTEN) || (s & (ST_KEPT | ST_GONE)))
			continue;
		if (m->seen[id]) {
			m->st[id] |= ST_KEPT;
			m->maybe += !(s & ST_DURABLE);
		} else {
			m->st[id] |= ST_GONE;
			m->dropped++;
		}
	}
}

static unsigned env_cycles(unsigned def)
{
	const char *e = getenv("TALLY_CRASH_CYCLES");
	if (!e || !*e)
		return def;
	unsigned long n = strtoul(e, NULL, 10);
	return n ? (unsigned)n : def;
}

static void run_crash(const crash_cfg *cfg)
{
	uint64_t seed = tu_seed(cfg->name);
	tu_rng r = {seed};
	model m = {0};
	char *dir = tu_tmpdir();
	unsigned cycles = env_cycles(cfg->cycles);
	checker ck = {.cfg = cfg, .m = &m, .dir = dir, .seed = seed};
	int64_t t_begin = now_ms(), open_ms = 5;

	for (unsigned no = 0; no < cycles; no++) {
		ck.cycle = no;
		uint64_t start = m.end;
		model_grow(&m, start + cfg->cycle_ids);
		cycle_opts co = {0};
		if (cfg->flush_often) {
			co.memtable_bytes = (256u << 10) + tu_below(&r, 2u << 20);
			co.flush_interval_ms = 20 + (uint32_t)tu_below(&r, 200);
		} else if (tu_below(&r, 2)) {
			co.memtable_bytes = (1u << 20) + tu_below(&r, 7u << 20);
			co.flush_interval_ms = 100 + (uint32_t)tu_below(&r, 1000);
		}
		int fds[2];
		cr_assert_eq(pipe(fds), 0, "pipe: %s", strerror(errno));
		fflush(NULL); /* the child must not repeat buffered output */
		int64_t t_fork = now_ms();
		pid_t pid = fork();
		cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
		if (pid == 0) {
			close(fds[0]);
			child_main(cfg, &co, dir, fds[1], start, tu_next(&r));
		}
		(void)tu_next(&r); /* the parent's stream stays in step */
		close(fds[1]);

		cycle c = {.m = &m, .start = start, .limit = start + cfg->cycle_ids};
		/* One cycle in four kills while the child is still opening
		 * (replaying the WAL, cutting a torn tail); the others kill
		 * after it started writing. The last cycle always writes: it
		 * is the one that waits for an acknowledgement if none came. */
		int early = tu_below(&r, 4) == 0 && no + 1 < cycles;
		int64_t delay = early ? (int64_t)tu_below(&r, (uint64_t)open_ms + 1)
				      : cfg->kill_min_ms +
						(int64_t)tu_below(&r, cfg->kill_max_ms -
									      cfg->kill_min_ms + 1);
		int open = 1;
		int64_t deadline = early ? t_fork + delay : 0;
		while (open) {
			int64_t now = now_ms();
			if (!early && !c.ready && now - t_fork > READY_TIMEOUT_MS)
				break; /* child stuck in open: kill, and complain below */
			/* a loaded machine can make every cycle's kill land
			 * before the first sync: the last cycle waits for one
			 * acknowledgement (bounded), or the test tests nothing */
			int starving = no + 1 == cycles && m.durable == 0 && c.ready &&
				       now - t_fork < READY_TIMEOUT_MS;
			if (deadline && now >= deadline && !starving)
				break;
			int wait = deadline && now < deadline ? (int)(deadline - now) : 100;
			int was_ready = c.ready;
			open = cycle_read(&c, fds[0], wait);
			if (!was_ready && c.ready) {
				open_ms = now_ms() - t_fork;
				if (!early)
					deadline = now_ms() + delay;
			}
		}
		kill(pid, SIGKILL);
		int status;
		while (waitpid(pid, &status, 0) < 0)
			cr_assert_eq(errno, EINTR, "waitpid: %s", strerror(errno));
		while (cycle_read(&c, fds[0], -1))
			;
		close(fds[0]);
		CHECK(&ck, !c.err[0], "child protocol: %s", c.err);
		CHECK(&ck,
		      (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) ||
			      (WIFEXITED(status) && WEXITSTATUS(status) == 0),
		      "child ended with status %#x (its stderr says why)", status);
		CHECK(&ck, early || c.ready, "child did not open the database in %d ms",
		      READY_TIMEOUT_MS);
		if (WIFSIGNALED(status)) {
			m.killed++;
			m.early += !c.ready;
		}
		int64_t t_check = now_ms();
		check_db(&ck, &co, &r);
		if (getenv("TALLY_CRASH_VERBOSE"))
			fprintf(stderr,
				"%s: cycle %u: %s after %lld ms (open took %lld), check %lld ms, "
				"ids < %llu\n",
				cfg->name, no, c.ready ? "killed writing" : "killed opening",
				(long long)(t_check - t_fork), (long long)open_ms,
				(long long)(now_ms() - t_check), (unsigned long long)m.end);
	}
	uint64_t written = 0;
	for (uint64_t id = 0; id < m.end; id++)
		written += (m.st[id] & ST_WRITTEN) != 0;
	fprintf(stderr,
		"%s: %u cycles (%llu killed, %llu while opening) in %lld ms: %llu ids written, "
		"%llu acknowledged, %llu unacknowledged recovered, %llu unacknowledged lost; "
		"%llu checks found parts, up to %llu\n",
		cfg->name, cycles, (unsigned long long)m.killed, (unsigned long long)m.early,
		(long long)(now_ms() - t_begin), (unsigned long long)written,
		(unsigned long long)m.durable, (unsigned long long)m.maybe,
		(unsigned long long)m.dropped, (unsigned long long)m.part_checks,
		(unsigned long long)m.parts);
	cr_expect_gt(m.durable, 0, "no write was ever acknowledged: the test tested nothing");
	free(m.st);
	free(m.key);
	free(m.seen);
	tu_rmrf(dir);
	free(dir);
}

/* ---------------------------------------------------------------- tests */

Test(crash, kill9_during_lp_writes, .timeout = 120)
{
	static const crash_cfg cfg = {
		.name = "crash.kill9_during_lp_writes",
		.shards = 2,
		.threads = 3,
		.max_batch = 5000,
		.huge = 1,
		.segment_bytes = 256 << 10,
		.cycles = 12,
		.kill_min_ms = 5,
		.kill_max_ms = 300,
		.cycle_ids = 400000,
		.rate = 400000,
	};
	run_crash(&cfg);
}

Test(crash, kill9_during_binary_writes, .timeout = 120)
{
	static const crash_cfg cfg = {
		.name = "crash.kill9_during_binary_writes",
		.binary = 1,
		.shards = 2,
		.threads = 3,
		.max_batch = 5000,
		.huge = 1,
		.segment_bytes = 256 << 10,
		.cycles = 12,
		.kill_min_ms = 5,
		.kill_max_ms = 300,
		.cycle_ids = 400000,
		.rate = 400000,
	};
	run_crash(&cfg);
}

Test(crash, kill9_sync_each_write, .timeout = 120)
{
	static const crash_cfg cfg = {
		.name = "crash.kill9_sync_each_write",
		.sync_mode = TALLY_SYNC_EACH_WRITE,
		.shards = 2,
		.threads = 3,
		.max_batch = 2000,
		.huge = 1,
		.segment_bytes = 256 << 10,
		.cycles = 12,
		.kill_min_ms = 5,
		.kill_max_ms = 300,
		.cycle_ids = 400000,
		.rate = 400000,
	};
	run_crash(&cfg);
}

/* Segments of 16 KiB: nearly every record rolls the log, so kills land
 * between syncing a segment, creating the next and writing into it. */
Test(crash, kill9_during_segment_rolls, .timeout = 120)
{
	static const crash_cfg cfg = {
		.name = "crash.kill9_during_segment_rolls",
		.shards = 2,
		.threads = 2,
		.max_batch = 300,
		.segment_bytes = 16 << 10,
		.cycles = 12,
		.kill_min_ms = 5,
		.kill_max_ms = 150,
		.cycle_ids = 200000,
		.rate = 400000,
	};
	run_crash(&cfg);
}

/* Memtables of a few hundred KiB and partitions of an hour: the background
 * flusher writes parts, replaces the manifest and trims the WAL all the
 * time, and merges and seals partitions, so kills land in every step of
 * that, and recovery must take each event from a part or from the WAL,
 * never from both. */
Test(crash, kill9_during_flushes, .timeout = 120)
{
	static const crash_cfg cfg = {
		.name = "crash.kill9_during_flushes",
		.binary = 1,
		.shards = 2,
		.threads = 3,
		.max_batch = 3000,
		.segment_bytes = 64 << 10,
		.flush_often = 1,
		.hour_partitions = 1,
		.cycles = 12,
		.kill_min_ms = 5,
		.kill_max_ms = 400,
		.cycle_ids = 400000,
		.rate = 300000,
	};
	run_crash(&cfg);
}
