/*
 * bench_embedded.c — in-process ingest rates and query latencies of libtally.
 *
 * The workload is the one of docs/workload.md: keys (cameras) x days of
 * events, one float field with one decimal, and a tenth of the keys offline
 * for 3 hours a day whose backlog is written after the rest of that day, so
 * the late path is part of every ingest figure.
 *
 * The one idea: everything that is not the store is done before the clock
 * starts. The events, the order in which batches are written (the
 * "schedule"), the line protocol text and the random query parameters are
 * all prepared in memory first; the timed loops only call libtally.
 * Ingest is timed as wall time over all threads; each query individually
 * with CLOCK_MONOTONIC, to report p50, p99 and mean.
 */
#include <errno.h>
#include <ftw.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "tally.h"
#include "workload.h"
#include "benchutil.h"

#define TABLE       "traffic"
#define KEY_TAG     "camera"
#define FIELD       "speed"
#define LP_CHUNK    (1u << 20) /* text goes in pieces of a connection's read buffer */
#define MAX_THREADS 256

/* ---------------------------------------------------------------- options */

typedef struct bench_opts {
	unsigned keys, days, per_day; /* events per key per day */
	unsigned threads;
	unsigned batch;     /* rows per tally_write_batch */
	uint64_t lp_events; /* events sent as line protocol, per run */
	unsigned reps;      /* repetitions of the cheap queries */
	uint64_t seed;
	const char *dir;    /* parent of the temporary stores */
	const char *out;    /* markdown results file to append to */
	const char *commit; /* recorded as the commit measured, if set */
	int keep;
	int quick;
} bench_opts;

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: bench_embedded [OPTIONS]\n"
		"\n"
		"Measures libtally in-process: binary batch ingest (1 thread on 1 shard,\n"
		"and N threads on N shards), line protocol ingest, sync cost, and the\n"
		"p50/p99/mean latency of every query kind, on stores of 1 and N shards.\n"
		"\n"
		"Options:\n"
		"  --keys N           keys (cameras) (default 1000)\n"
		"  --days N           days of events (default 5)\n"
		"  --per-day N        events per key per day (default 4000; 20 M events in all)\n"
		"  --quick            2 days x 1000 events per key per day (2 M events)\n"
		"  --threads N        threads and shards of the parallel runs (default: cores)\n"
		"  --batch N          rows per binary batch call (default 1000)\n"
		"  --lp-events N      events per line protocol run (default 4000000,\n"
		"                     --quick 1000000; at most all of them)\n"
		"  --reps N           repetitions per query kind (default 20000; the\n"
		"                     all-keys query runs reps/40, the raw scan reps/4)\n"
		"  --seed N           seed of data and query parameters (default 1)\n"
		"  --dir DIR          where the temporary stores go (default .); they are\n"
		"                     removed at exit. Use a real disk: fsync costs count.\n"
		"  --keep             keep the temporary stores\n"
		"  --out FILE         append the results as a markdown section to FILE\n"
		"  --commit ID        commit to record (default: git rev-parse --short HEAD\n"
		"                     in the current directory, -dirty if files changed)\n"
		"  -h, --help         this text\n"
		"\n"
		"Example: ./build/bench/bench_embedded --out bench/results/embedded-$(date "
		"+%%F).md\n");
}

static int parse_u64(const char *flag, const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s || *end || *s == '-' || v < lo || v > hi) {
		fprintf(stderr,
			"bench_embedded: %s: '%s' is not a number in [%" PRIu64 ", %" PRIu64 "]\n",
			flag, s, lo, hi);
		return -1;
	}
	*out = v;
	return 0;
}

static int parse_args(int argc, char **argv, bench_opts *o)
{
	enum {
		O_KEYS = 1,
		O_DAYS,
		O_PERDAY,
		O_QUICK,
		O_THREADS,
		O_BATCH,
		O_LP,
		O_REPS,
		O_SEED,
		O_DIR,
		O_KEEP,
		O_OUT,
		O_COMMIT
	};
	static const struct option longopts[] = {
		{"keys", required_argument, NULL, O_KEYS},
		{"days", required_argument, NULL, O_DAYS},
		{"per-day", required_argument, NULL, O_PERDAY},
		{"quick", no_argument, NULL, O_QUICK},
		{"threads", required_argument, NULL, O_THREADS},
		{"batch", required_argument, NULL, O_BATCH},
		{"lp-events", required_argument, NULL, O_LP},
		{"reps", required_argument, NULL, O_REPS},
		{"seed", required_argument, NULL, O_SEED},
		{"dir", required_argument, NULL, O_DIR},
		{"keep", no_argument, NULL, O_KEEP},
		{"out", required_argument, NULL, O_OUT},
		{"commit", required_argument, NULL, O_COMMIT},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	*o = (bench_opts){.keys = 1000,
			  .days = 5,
			  .per_day = 4000,
			  .threads = ncpu > 0 ? (unsigned)(ncpu < MAX_THREADS ? ncpu : MAX_THREADS)
					      : 1,
			  .batch = 1000,
			  .lp_events = 0,
			  .reps = 20000,
			  .seed = 1,
			  .dir = "."};
	int c, days_set = 0, perday_set = 0;
	uint64_t v;
	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (c) {
		case 'h': usage(stdout); exit(0);
		case O_KEYS:
			if (parse_u64("--keys", optarg, 1, 99999, &v))
				return -1;
			o->keys = (unsigned)v;
			break;
		case O_DAYS:
			if (parse_u64("--days", optarg, 1, 365, &v))
				return -1;
			o->days = (unsigned)v;
			days_set = 1;
			break;
		case O_PERDAY:
			if (parse_u64("--per-day", optarg, 10, 1000000, &v))
				return -1;
			o->per_day = (unsigned)v;
			perday_set = 1;
			break;
		case O_QUICK: o->quick = 1; break;
		case O_THREADS:
			if (parse_u64("--threads", optarg, 1, MAX_THREADS, &v))
				return -1;
			o->threads = (unsigned)v;
			break;
		case O_BATCH:
			if (parse_u64("--batch", optarg, 1, 1000000, &v))
				return -1;
			o->batch = (unsigned)v;
			break;
		case O_LP:
			if (parse_u64("--lp-events", optarg, 1, UINT64_C(1) << 32, &v))
				return -1;
			o->lp_events = v;
			break;
		case O_REPS:
			if (parse_u64("--reps", optarg, 40, 10000000, &v))
				return -1;
			o->reps = (unsigned)v;
			break;
		case O_SEED:
			if (parse_u64("--seed", optarg, 0, UINT64_MAX, &v))
				return -1;
			o->seed = v;
			break;
		case O_DIR: o->dir = optarg; break;
		case O_KEEP: o->keep = 1; break;
		case O_OUT: o->out = optarg; break;
		case O_COMMIT: o->commit = optarg; break;
		default: fprintf(stderr, "See bench_embedded --help.\n"); return -1;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "bench_embedded: unexpected argument '%s'\n", argv[optind]);
		return -1;
	}
	if (o->quick) {
		o->days = days_set ? o->days : 2;
		o->per_day = perday_set ? o->per_day : 1000;
	}
	uint64_t total = (uint64_t)o->keys * o->days * o->per_day;
	if (total > UINT64_C(400000000)) {
		fprintf(stderr, "bench_embedded: %" PRIu64 " events is more than 400 M\n", total);
		return -1;
	}
	if (!o->lp_events)
		o->lp_events = o->quick ? 1000000 : 4000000;
	if (o->lp_events > total)
		o->lp_events = total;
	return 0;
}

/* ---------------------------------------------------------------- helpers */

static double thread_cpu_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static const char *commas(uint64_t v)
{
	static char bufs[8][32];
	static unsigned next;
	char *out = bufs[next++ % 8], tmp[32];
	int n = snprintf(tmp, sizeof tmp, "%" PRIu64, v), j = 0;
	for (int i = 0; i < n; i++) {
		if (i && (n - i) % 3 == 0)
			out[j++] = ',';
		out[j++] = tmp[i];
	}
	out[j] = 0;
	return out;
}

static void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (!p) {
		fprintf(stderr, "bench_embedded: out of memory (%zu bytes)\n", n);
		exit(1);
	}
	return p;
}

static void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);
	if (!p) {
		fprintf(stderr, "bench_embedded: out of memory\n");
		exit(1);
	}
	return p;
}

/* splitmix64, for the query parameters (the data comes from workload.c) */
static uint64_t rng_next(uint64_t *s)
{
	uint64_t z = (*s += UINT64_C(0x9e3779b97f4a7c15));
	z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
	z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
	return z ^ (z >> 31);
}

static uint64_t rng_below(uint64_t *s, uint64_t n)
{
	return rng_next(s) % n;
}

/* ---------------------------------------------------------------- data */

typedef struct key_data {
	char id[16];
	int64_t *ts; /* days * per_day events, in time order */
	double *val;
	uint32_t *b0, *b1; /* per day: events [b0, b1) are the outage's backlog */
} key_data;

typedef struct dataset {
	unsigned keys, days, per_day;
	int64_t t0; /* first day's start */
	key_data *k;
	int64_t *ts_all;
	double *val_all;
	uint32_t *b_all;
	uint64_t total, backlog, expect_late;
} dataset;

/* The benchmark's workload (tools/workload.c): 3 hours offline a day for a
 * tenth of the keys, ending by 20:00 so that the backlog is late. */
static void dataset_make(dataset *d, const bench_opts *o)
{
	wl_params wp;
	wl_params_init(&wp);
	wp.seed = o->seed;
	wp.cameras = o->keys;
	wp.days = o->days;
	wp.per_day = o->per_day;
	d->t0 = wp.start_ns;
	d->keys = o->keys;
	d->days = o->days;
	d->per_day = o->per_day;
	d->total = (uint64_t)o->keys * o->days * o->per_day;
	d->k = xcalloc(o->keys, sizeof *d->k);
	d->ts_all = xmalloc(d->total * sizeof *d->ts_all);
	d->val_all = xmalloc(d->total * sizeof *d->val_all);
	d->b_all = xmalloc((size_t)o->keys * o->days * 2 * sizeof *d->b_all);
	int32_t *tenths = xmalloc(o->per_day * sizeof *tenths);
	for (unsigned k = 0; k < o->keys; k++) {
		key_data *kd = &d->k[k];
		wl_camera_id(k, kd->id);
		size_t per_key = (size_t)o->days * o->per_day;
		kd->ts = d->ts_all + (size_t)k * per_key;
		kd->val = d->val_all + (size_t)k * per_key;
		kd->b0 = d->b_all + (size_t)k * o->days * 2;
		kd->b1 = kd->b0 + o->days;
		for (unsigned day = 0; day < o->days; day++) {
			size_t base_i = (size_t)day * o->per_day;
			wl_day wd = {.ts = kd->ts + base_i, .tenths = tenths};
			wl_gen_day(&wp, k, day, &wd);
			for (uint32_t i = 0; i < o->per_day; i++)
				kd->val[base_i + i] = tenths[i] / 10.0;
			uint32_t b0 = (uint32_t)base_i + wd.b0, b1 = (uint32_t)base_i + wd.b1;
			if (wd.b0 == wd.b1) /* online: an empty backlog at the day's start */
				b0 = b1 = (uint32_t)base_i;
			kd->b0[day] = b0;
			kd->b1[day] = b1;
			d->backlog += b1 - b0;
			/* The store counts a backlog event late when it is older than
			 * the key's newest event by more than 5 minutes. */
			int64_t hwm = INT64_MIN;
			uint32_t end = (uint32_t)(base_i + o->per_day);
			if (b1 < end)
				hwm = kd->ts[end - 1];
			else if (b0 > 0)
				hwm = kd->ts[b0 - 1];
			for (uint32_t i = b0; i < b1; i++) {
				if (hwm != INT64_MIN && kd->ts[i] < hwm - TALLY_5M)
					d->expect_late++;
				if (kd->ts[i] > hwm)
					hwm = kd->ts[i];
			}
		}
	}
	free(tenths);
}

/* ---------------------------------------------------------------- schedule */

/* One write: rows [lo, lo + n) of key k. */
typedef struct op {
	uint32_t k, lo, n;
} op;

typedef struct schedule {
	op *ops;
	size_t n, cap;
	uint64_t events;
} schedule;

static void sched_push(schedule *s, uint32_t k, uint32_t lo, uint32_t n)
{
	if (s->n == s->cap) {
		s->cap = s->cap ? s->cap * 2 : 1024;
		op *no = realloc(s->ops, s->cap * sizeof *no);
		if (!no) {
			fprintf(stderr, "bench_embedded: out of memory\n");
			exit(1);
		}
		s->ops = no;
	}
	s->ops[s->n++] = (op){k, lo, n};
	s->events += n;
}

/* The writes of thread t of nt, in order: day by day, round-robin over the
 * thread's keys (batch rows each), each key's outage rows held back until
 * the end of the day. */
static void sched_make(schedule *s, const dataset *d, unsigned batch, unsigned t, unsigned nt)
{
	memset(s, 0, sizeof *s);
	unsigned nk = 0;
	for (unsigned k = t; k < d->keys; k += nt)
		nk++;
	uint32_t *cur = xcalloc(nk, sizeof *cur);
	for (unsigned day = 0; day < d->days; day++) {
		uint32_t dlo = day * d->per_day, dhi = dlo + d->per_day;
		unsigned j = 0;
		for (unsigned k = t; k < d->keys; k += nt)
			cur[j++] = dlo;
		for (int more = 1; more;) {
			more = 0;
			j = 0;
			for (unsigned k = t; k < d->keys; k += nt, j++) {
				const key_data *kd = &d->k[k];
				uint32_t lo = cur[j];
				if (lo >= kd->b0[day] && lo < kd->b1[day])
					lo = kd->b1[day];
				if (lo >= dhi)
					continue;
				uint32_t hi = lo + batch < dhi ? lo + batch : dhi;
				if (lo < kd->b0[day] && hi > kd->b0[day])
					hi = kd->b0[day];
				sched_push(s, k, lo, hi - lo);
				cur[j] = hi;
				more = 1;
			}
		}
		for (unsigned k = t; k < d->keys; k += nt) {
			const key_data *kd = &d->k[k];
			for (uint32_t lo = kd->b0[day]; lo < kd->b1[day]; lo += batch) {
				uint32_t hi = lo + batch < kd->b1[day] ? lo + batch : kd->b1[day];
				sched_push(s, k, lo, hi - lo);
			}
		}
	}
	free(cur);
}

/* Line protocol text of the first max_events events of a schedule. */
static char *lp_text(const schedule *s, const dataset *d, uint64_t max_events, size_t *len,
		     uint64_t *events)
{
	size_t cap = (size_t)(max_events < s->events ? max_events : s->events) * 64 + 64;
	char *buf = xmalloc(cap), *p = buf;
	uint64_t n = 0;
	for (size_t i = 0; i < s->n && n < max_events; i++) {
		const op *o = &s->ops[i];
		const key_data *kd = &d->k[o->k];
		for (uint32_t r = o->lo; r < o->lo + o->n && n < max_events; r++, n++) {
			long tenths = lround(kd->val[r] * 10.0);
			p += sprintf(p, TABLE "," KEY_TAG "=%s " FIELD "=%ld.%ld %" PRId64 "\n",
				     kd->id, tenths / 10, tenths % 10, kd->ts[r]);
		}
	}
	*len = (size_t)(p - buf);
	*events = n;
	return buf;
}

/* ---------------------------------------------------------------- ingest */

typedef struct ingester {
	pthread_t th;
	tally_db *db;
	unsigned shard;
	const dataset *d;
	const schedule *s;
	const char *text; /* line protocol instead of the schedule, if set */
	size_t text_len;
	pthread_barrier_t *bar;
	double t_end;
	double cpu_s; /* this thread's CPU time while ingesting */
	uint64_t accepted;
	int rc;
	char err[512];
} ingester;

static void *ingest_main(void *arg)
{
	ingester *in = arg;
	tally_writer *w;
	int rc = tally_writer_open(in->db, (int)in->shard, &w);
	pthread_barrier_wait(in->bar);
	double cpu0 = thread_cpu_s();
	if (rc)
		goto out;
	if (in->text) {
		for (size_t off = 0; off < in->text_len && !rc;) {
			size_t n = in->text_len - off;
			if (n > LP_CHUNK) {
				n = LP_CHUNK;
				while (n > 0 && in->text[off + n - 1] != '\n')
					n--;
			}
			tally_write_result res;
			rc = tally_write_lp(w, in->text + off, n, TALLY_PREC_NS, &res);
			if (!rc && res.rejected) {
				snprintf(in->err, sizeof in->err, "line %" PRIu64 ": %s",
					 res.errors[0].line, res.errors[0].reason);
				in->rc = res.errors[0].code;
			}
			in->accepted += res.accepted;
			off += n;
		}
	} else {
		tally_column col = {.name = FIELD, .type = TALLY_T_F64};
		tally_batch b = {
			.table = TABLE, .key_tag = KEY_TAG, .n_columns = 1, .columns = &col};
		for (size_t i = 0; i < in->s->n && !rc; i++) {
			const op *o = &in->s->ops[i];
			const key_data *kd = &in->d->k[o->k];
			b.key = kd->id;
			b.n_rows = o->n;
			b.ts = kd->ts + o->lo;
			col.values = kd->val + o->lo;
			if (!(rc = tally_write_batch(w, &b)))
				in->accepted += o->n;
		}
	}
out:
	in->t_end = now_s();
	in->cpu_s = thread_cpu_s() - cpu0;
	if (rc && !in->rc) {
		in->rc = rc;
		snprintf(in->err, sizeof in->err, "%s",
			 *tally_errmsg() ? tally_errmsg() : tally_strerror(rc));
	}
	tally_writer_close(w);
	return NULL;
}

typedef struct ingest_result {
	uint64_t events;
	double seconds;
	double cpu_s;  /* CPU time of all ingest threads */
	double sync_s; /* the tally_db_sync that followed */
	uint64_t wal_bytes;
	uint64_t late;
} ingest_result;

/* Runs nt threads, thread i on shard i, on schedules s[i] or texts. */
static ingest_result ingest_run(tally_db *db, unsigned nt, const dataset *d, const schedule *s,
				char *const *texts, const size_t *text_len)
{
	ingester *in = xcalloc(nt, sizeof *in);
	pthread_barrier_t bar;
	pthread_barrier_init(&bar, NULL, nt + 1);
	for (unsigned i = 0; i < nt; i++) {
		in[i] = (ingester){
			.db = db, .shard = i, .d = d, .s = s ? &s[i] : NULL, .bar = &bar};
		if (texts) {
			in[i].text = texts[i];
			in[i].text_len = text_len[i];
		}
		int rc = pthread_create(&in[i].th, NULL, ingest_main, &in[i]);
		if (rc) {
			fprintf(stderr, "bench_embedded: pthread_create: %s\n", strerror(rc));
			exit(1);
		}
	}
	pthread_barrier_wait(&bar);
	double t0 = now_s(), t1 = t0;
	ingest_result r = {0};
	for (unsigned i = 0; i < nt; i++) {
		pthread_join(in[i].th, NULL);
		if (in[i].rc) {
			fprintf(stderr, "bench_embedded: ingest thread %u: %s\n", i, in[i].err);
			exit(1);
		}
		t1 = fmax(t1, in[i].t_end);
		r.cpu_s += in[i].cpu_s;
		r.events += in[i].accepted;
	}
	r.seconds = t1 - t0;
	double ts = now_s();
	int rc = tally_db_sync(db);
	if (rc)
		die_tally("tally_db_sync", rc);
	r.sync_s = now_s() - ts;
	tally_stats st;
	if ((rc = tally_db_stats(db, &st)))
		die_tally("tally_db_stats", rc);
	r.wal_bytes = st.wal_bytes;
	r.late = st.late_events;
	pthread_barrier_destroy(&bar);
	free(in);
	return r;
}

static tally_db *open_store(const char *parent, const char *name, unsigned shards)
{
	char path[PATH_MAX + 64];
	snprintf(path, sizeof path, "%s/%s", parent, name);
	tally_options opt;
	tally_options_init(&opt);
	opt.shards = shards;
	opt.memory_limit = UINT64_C(64) << 30; /* the benchmark sizes itself */
	tally_db *db;
	int rc = tally_db_open(path, &opt, &db);
	if (rc)
		die_tally("tally_db_open", rc);
	return db;
}

/* ---------------------------------------------------------------- sync */

typedef struct lat {
	double p50, p99, mean; /* microseconds */
	uint64_t n;
	double items; /* mean result size: buckets, keys, rows */
} lat;

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return (x > y) - (x < y);
}

static lat lat_of(uint64_t *ns, uint64_t n, double items)
{
	lat l = {0};
	if (!n)
		return l;
	qsort(ns, n, sizeof *ns, cmp_u64);
	double sum = 0;
	for (uint64_t i = 0; i < n; i++)
		sum += (double)ns[i];
	l.p50 = (double)ns[n / 2] / 1e3;
	l.p99 = (double)ns[n * 99 / 100] / 1e3;
	l.mean = sum / (double)n / 1e3;
	l.n = n;
	l.items = items;
	return l;
}

/* A small batch then a sync, reps times: what an acknowledged write costs. */
static lat sync_latency(tally_db *db, unsigned reps, unsigned rows, int64_t t0)
{
	tally_writer *w;
	int rc = tally_writer_open(db, 0, &w);
	if (rc)
		die_tally("tally_writer_open", rc);
	int64_t *ts = xmalloc(rows * sizeof *ts);
	double *v = xmalloc(rows * sizeof *v);
	uint64_t *ns = xmalloc(reps * sizeof *ns);
	tally_column col = {.name = FIELD, .type = TALLY_T_F64, .values = v};
	tally_batch b = {.table = TABLE,
			 .key = "SYNC",
			 .key_tag = KEY_TAG,
			 .n_rows = rows,
			 .ts = ts,
			 .n_columns = 1,
			 .columns = &col};
	for (unsigned r = 0; r < reps; r++) {
		for (unsigned i = 0; i < rows; i++) {
			ts[i] = t0 + ((int64_t)r * rows + i) * TALLY_NS_PER_SEC;
			v[i] = 80.0 + i % 10;
		}
		uint64_t a = now_ns();
		if ((rc = tally_write_batch(w, &b)))
			die_tally("tally_write_batch", rc);
		if ((rc = tally_db_sync(db)))
			die_tally("tally_db_sync", rc);
		ns[r] = now_ns() - a;
	}
	lat l = lat_of(ns, reps, rows);
	tally_writer_close(w);
	free(ts);
	free(v);
	free(ns);
	return l;
}

/* ---------------------------------------------------------------- queries */

enum { Q_SERIES_5M, Q_SERIES_1H, Q_EXACT, Q_KEYS, Q_SCAN, Q_KINDS };

static const char *const q_name[Q_KINDS] = {
	"series 5m, one key, one day",      "series 1h, one key, all days",
	"exact aggregate, unaligned range", "all keys, one hour",
	"raw scan, one key, one hour",
};
static const char *const q_unit[Q_KINDS] = {"buckets", "buckets", "events", "keys", "rows"};

typedef struct qparam {
	uint32_t k;
	int64_t from, to;
} qparam;

static unsigned q_reps(unsigned kind, unsigned reps)
{
	return kind == Q_KEYS ? reps / 40 : kind == Q_SCAN ? reps / 4 : reps;
}

static void q_params(qparam *p, unsigned n, unsigned kind, const dataset *d, uint64_t *rs)
{
	int64_t span = (int64_t)d->days * TALLY_1D;
	for (unsigned i = 0; i < n; i++) {
		p[i].k = (uint32_t)rng_below(rs, d->keys);
		switch (kind) {
		case Q_SERIES_5M:
			p[i].from = d->t0 + (int64_t)rng_below(rs, d->days) * TALLY_1D;
			p[i].to = p[i].from + TALLY_1D;
			break;
		case Q_SERIES_1H:
			p[i].from = d->t0;
			p[i].to = d->t0 + span;
			break;
		case Q_EXACT: {
			/* from 1 minute to 2 days, anywhere, at ns precision */
			int64_t len = 60 * TALLY_NS_PER_SEC +
				      (int64_t)rng_below(rs, (uint64_t)(2 * TALLY_1D));
			if (len > span)
				len = span;
			p[i].from = d->t0 + (int64_t)rng_below(rs, (uint64_t)(span - len + 1));
			p[i].to = p[i].from + len;
			break;
		}
		case Q_KEYS:
			p[i].from =
				d->t0 + (int64_t)rng_below(rs, (uint64_t)d->days * 24) * TALLY_1H;
			p[i].to = p[i].from + TALLY_1H;
			break;
		default:
			p[i].from = d->t0 + (int64_t)rng_below(rs, (uint64_t)(span - TALLY_1H));
			p[i].to = p[i].from + TALLY_1H;
			break;
		}
	}
}

/* Runs one query; returns the size of its answer. */
static uint64_t q_run(tally_db *db, unsigned kind, const qparam *p, const dataset *d,
		      tally_bucket *buf, size_t cap)
{
	const char *key = d->k[p->k].id;
	size_t n = 0;
	int rc;
	switch (kind) {
	case Q_SERIES_5M:
	case Q_SERIES_1H:
		rc = tally_query_series(db, TABLE, FIELD, key,
					kind == Q_SERIES_5M ? TALLY_5M : TALLY_1H, p->from, p->to,
					buf, cap, &n);
		if (rc)
			die_tally("tally_query_series", rc);
		return n;
	case Q_EXACT: {
		tally_agg a;
		if ((rc = tally_query_agg(db, TABLE, FIELD, key, p->from, p->to, &a)))
			die_tally("tally_query_agg", rc);
		return a.count;
	}
	case Q_KEYS: {
		tally_keys_iter *it;
		if ((rc = tally_query_keys(db, TABLE, FIELD, p->from, p->to, &it)))
			die_tally("tally_query_keys", rc);
		const char *k;
		tally_agg a;
		while ((rc = tally_keys_next(it, &k, &a)) == 1)
			n++;
		tally_keys_close(it);
		if (rc)
			die_tally("tally_keys_next", rc);
		return n;
	}
	default: {
		tally_scan *s;
		if ((rc = tally_scan_open(db, TABLE, key, p->from, p->to, &s)))
			die_tally("tally_scan_open", rc);
		tally_row row;
		while ((rc = tally_scan_next(s, &row)) == 1)
			n++;
		tally_scan_close(s);
		if (rc)
			die_tally("tally_scan_next", rc);
		return n;
	}
	}
}

static lat q_measure(tally_db *db, unsigned kind, const qparam *p, unsigned n, const dataset *d)
{
	size_t cap = (size_t)d->days * 288 + 1;
	tally_bucket *buf = xmalloc(cap * sizeof *buf);
	uint64_t *ns = xmalloc(n * sizeof *ns);
	unsigned warm = n / 20 + 1;
	for (unsigned i = 0; i < warm; i++)
		q_run(db, kind, &p[i % n], d, buf, cap);
	double items = 0;
	for (unsigned i = 0; i < n; i++) {
		uint64_t a = now_ns();
		uint64_t got = q_run(db, kind, &p[i], d, buf, cap);
		ns[i] = now_ns() - a;
		items += (double)got;
	}
	lat l = lat_of(ns, n, items / n);
	free(buf);
	free(ns);
	return l;
}

/* Every event counted once, late ones included: the sum over all keys of
 * the whole span equals the events written. */
static int check_store(tally_db *db, const dataset *d, uint64_t expect_events)
{
	tally_keys_iter *it;
	int rc =
		tally_query_keys(db, TABLE, FIELD, d->t0, d->t0 + (int64_t)d->days * TALLY_1D, &it);
	if (rc)
		die_tally("tally_query_keys", rc);
	const char *k;
	tally_agg a;
	uint64_t n = 0, keys = 0;
	while ((rc = tally_keys_next(it, &k, &a)) == 1) {
		n += a.count;
		keys++;
	}
	tally_keys_close(it);
	tally_stats st;
	if ((rc = tally_db_stats(db, &st)))
		die_tally("tally_db_stats", rc);
	return n == expect_events && keys == d->keys && st.events == expect_events &&
	       st.late_events == d->expect_late;
}

/* ---------------------------------------------------------------- machine */

typedef struct machine {
	char cpu[128];
	long ncpu;
	double mem_gib;
	char kernel[160];
	char fs[32];
	char commit[64];
	double load_start, load_end;
} machine;

static void read_first_line(const char *cmd, char *out, size_t n)
{
	out[0] = 0;
	FILE *f = popen(cmd, "r");
	if (!f)
		return;
	if (fgets(out, (int)n, f))
		out[strcspn(out, "\n")] = 0;
	pclose(f);
}

static double loadavg(void)
{
	double l = -1;
	FILE *f = fopen("/proc/loadavg", "r");
	if (f) {
		if (fscanf(f, "%lf", &l) != 1)
			l = -1;
		fclose(f);
	}
	return l;
}

static void machine_probe(machine *m, const char *dir)
{
	memset(m, 0, sizeof *m);
	snprintf(m->cpu, sizeof m->cpu, "unknown CPU");
	FILE *f = fopen("/proc/cpuinfo", "r");
	char line[512];
	while (f && fgets(line, sizeof line, f)) {
		if (strncmp(line, "model name", 10) == 0) {
			char *c = strchr(line, ':');
			if (c) {
				c += 1 + (c[1] == ' ');
				c[strcspn(c, "\n")] = 0;
				snprintf(m->cpu, sizeof m->cpu, "%s", c);
			}
			break;
		}
	}
	if (f)
		fclose(f);
	m->ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	m->mem_gib = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE) /
		     (1024.0 * 1024 * 1024);
	struct utsname u;
	if (uname(&u) == 0)
		snprintf(m->kernel, sizeof m->kernel, "%s %s", u.sysname, u.release);
	char cmd[PATH_MAX + 64];
	if (!strchr(dir, '\'')) {
		snprintf(cmd, sizeof cmd, "df --output=fstype '%s' 2>/dev/null | tail -1", dir);
		read_first_line(cmd, m->fs, sizeof m->fs);
	}
	char sha[48], dirty[8];
	read_first_line("git rev-parse --short HEAD 2>/dev/null", sha, sizeof sha);
	read_first_line("git status --porcelain --untracked-files=no 2>/dev/null | head -1", dirty,
			sizeof dirty);
	snprintf(m->commit, sizeof m->commit, "%s%s", *sha ? sha : "unknown",
		 *sha && *dirty ? "-dirty" : "");
	m->load_start = loadavg();
}

/* ---------------------------------------------------------------- main */

static char tmpdir[PATH_MAX];

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static void cleanup(void)
{
	if (*tmpdir)
		nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

int main(int argc, char **argv)
{
	bench_opts o;
	if (parse_args(argc, argv, &o))
		return 2;
	machine m;
	machine_probe(&m, o.dir);
	if (o.commit)
		snprintf(m.commit, sizeof m.commit, "%s", o.commit);
	snprintf(tmpdir, sizeof tmpdir, "%s/tally-bench.XXXXXX", o.dir);
	if (!mkdtemp(tmpdir)) {
		fprintf(stderr, "bench_embedded: mkdtemp %s: %s\n", tmpdir, strerror(errno));
		return 1;
	}
	if (!o.keep)
		atexit(cleanup);
	const unsigned nt = o.threads;

	fprintf(stderr, "generating %s events...\n", commas((uint64_t)o.keys * o.days * o.per_day));
	dataset d = {0};
	dataset_make(&d, &o);
	schedule s1, *sn = xcalloc(nt, sizeof *sn);
	sched_make(&s1, &d, o.batch, 0, 1);
	for (unsigned i = 0; i < nt; i++)
		sched_make(&sn[i], &d, o.batch, i, nt);

	/* ---- binary ingest */
	fprintf(stderr, "binary ingest, 1 thread...\n");
	tally_db *db1 = open_store(tmpdir, "bin-1", 1);
	ingest_result bin1 = ingest_run(db1, 1, &d, &s1, NULL, NULL);
	fprintf(stderr, "binary ingest, %u threads...\n", nt);
	tally_db *dbn = open_store(tmpdir, "bin-n", nt);
	ingest_result binn = ingest_run(dbn, nt, &d, sn, NULL, NULL);
	int ok1 = check_store(db1, &d, d.total), okn = check_store(dbn, &d, d.total);

	/* ---- line protocol ingest: text made first, from the same schedules */
	fprintf(stderr, "line protocol ingest...\n");
	size_t len1, *lenn = xcalloc(nt, sizeof *lenn);
	uint64_t ev1, evn = 0, bytesn = 0;
	char *text1 = lp_text(&s1, &d, o.lp_events, &len1, &ev1);
	char **textn = xcalloc(nt, sizeof *textn);
	for (unsigned i = 0; i < nt; i++) {
		uint64_t e;
		textn[i] = lp_text(&sn[i], &d, o.lp_events / nt, &lenn[i], &e);
		evn += e;
		bytesn += lenn[i];
	}
	tally_db *dbl = open_store(tmpdir, "lp-1", 1);
	ingest_result lp1 = ingest_run(dbl, 1, &d, NULL, &text1, &len1);
	tally_db_close(dbl);
	free(text1);
	dbl = open_store(tmpdir, "lp-n", nt);
	ingest_result lpn = ingest_run(dbl, nt, &d, NULL, textn, lenn);
	tally_db_close(dbl);
	for (unsigned i = 0; i < nt; i++)
		free(textn[i]);
	int oklp = lp1.events == ev1 && lpn.events == evn;

	/* ---- sync */
	fprintf(stderr, "sync latency...\n");
	tally_db *dbs = open_store(tmpdir, "sync", 1);
	unsigned sync_reps = o.quick ? 50 : 200;
	lat sync100 = sync_latency(dbs, sync_reps, 100, d.t0);
	tally_db_close(dbs);

	/* ---- queries */
	lat q[2][Q_KINDS];
	uint64_t rs = o.seed ^ UINT64_C(0x51ed2701f3a5c7b9);
	for (unsigned kind = 0; kind < Q_KINDS; kind++) {
		unsigned n = q_reps(kind, o.reps);
		qparam *p = xmalloc(n * sizeof *p);
		q_params(p, n, kind, &d, &rs);
		fprintf(stderr, "queries: %s...\n", q_name[kind]);
		q[0][kind] = q_measure(db1, kind, p, n, &d);
		q[1][kind] = q_measure(dbn, kind, p, n, &d);
		free(p);
	}
	tally_db_close(db1);
	tally_db_close(dbn);
	m.load_end = loadavg();

	/* ---- report */
	char when[32];
	time_t now = time(NULL);
	strftime(when, sizeof when, "%Y-%m-%d %H:%M UTC", gmtime(&now));
	char cmdline[1024] = "bench_embedded";
	for (int i = 1; i < argc; i++) {
		size_t l = strlen(cmdline);
		snprintf(cmdline + l, sizeof cmdline - l, " %s", argv[i]);
	}
	double mb1 = (double)len1 / 1e6, mbn = (double)bytesn / 1e6;
	printf("tally embedded benchmark, %s, commit %s\n", when, m.commit);
	printf("machine: %ld x %s, %.1f GiB, %s, stores on %s; load average %.2f at start, "
	       "%.2f at end\n",
	       m.ncpu, m.cpu, m.mem_gib, m.kernel, *m.fs ? m.fs : "?", m.load_start, m.load_end);
	printf("data: %s keys x %u days x %s events = %s events; 10%% of keys offline 3 h a day,\n"
	       "      backlog of %s events written after each day; binary batches of %s rows\n",
	       commas(o.keys), o.days, commas(o.per_day), commas(d.total), commas(d.backlog),
	       commas(o.batch));
	printf("checks: every event counted once, %s late events counted: %s\n",
	       commas(d.expect_late), ok1 && okn && oklp ? "ok" : "FAILED");
	printf("\n%-36s %11s %8s %11s %9s %7s %8s %7s\n", "ingest", "events", "seconds",
	       "M events/s", "per CPU-s", "MB/s", "sync ms", "WAL MB");
	char label[4][64];
	snprintf(label[0], 64, "binary, 1 thread, 1 shard");
	snprintf(label[1], 64, "binary, %u threads, %u shards", nt, nt);
	snprintf(label[2], 64, "line protocol, 1 thread, 1 shard");
	snprintf(label[3], 64, "line protocol, %u threads, %u shards", nt, nt);
	const ingest_result *ir[4] = {&bin1, &binn, &lp1, &lpn};
	double mbs[4] = {0, 0, mb1, mbn};
	for (int i = 0; i < 4; i++) {
		printf("  %-34s %11s %8.3f %11.2f %9.2f ", label[i], commas(ir[i]->events),
		       ir[i]->seconds, (double)ir[i]->events / ir[i]->seconds / 1e6,
		       (double)ir[i]->events / ir[i]->cpu_s / 1e6);
		if (mbs[i] > 0)
			printf("%7.1f", mbs[i] / ir[i]->seconds);
		else
			printf("%7s", "");
		printf(" %8.1f %7.1f\n", ir[i]->sync_s * 1e3, (double)ir[i]->wal_bytes / 1e6);
	}
	printf("  %-34s p50 %.0f us, p99 %.0f us, mean %.0f us (%s reps)\n",
	       "100-row batch + sync, 1 shard", sync100.p50, sync100.p99, sync100.mean,
	       commas(sync100.n));
	char shards_n[32];
	snprintf(shards_n, sizeof shards_n, "%u shards", nt);
	printf("\n%-34s %-27s  %-27s\n", "query latency, us", "   1 shard", shards_n);
	printf("%-34s %8s %8s %8s   %8s %8s %8s %8s  %s\n", "", "p50", "p99", "mean", "p50", "p99",
	       "mean", "reps", "answer (mean)");
	for (unsigned k = 0; k < Q_KINDS; k++) {
		const lat *a = &q[0][k], *b = &q[1][k];
		printf("  %-32s %8.1f %8.1f %8.1f   %8.1f %8.1f %8.1f %8s  %.0f %s\n", q_name[k],
		       a->p50, a->p99, a->mean, b->p50, b->p99, b->mean, commas(a->n), a->items,
		       q_unit[k]);
	}

	if (o.out) {
		FILE *f = fopen(o.out, "a");
		if (!f) {
			fprintf(stderr, "bench_embedded: %s: %s\n", o.out, strerror(errno));
			return 1;
		}
		fprintf(f, "\n## %s, commit %s\n\n", when, m.commit);
		fprintf(f, "- Command: `%s`\n", cmdline);
		fprintf(f,
			"- Machine: %ld x %s, %.1f GiB, %s; stores on %s; load average %.2f "
			"at start, %.2f at end\n",
			m.ncpu, m.cpu, m.mem_gib, m.kernel, *m.fs ? m.fs : "?", m.load_start,
			m.load_end);
		fprintf(f,
			"- Data: %s keys x %u days x %s events = %s events; 10%% of keys "
			"offline 3 h a day, their backlog (%s events) written after each day; "
			"binary batches of %s rows\n",
			commas(o.keys), o.days, commas(o.per_day), commas(d.total),
			commas(d.backlog), commas(o.batch));
		fprintf(f, "- Checks (every event counted once, %s late events): %s\n\n",
			commas(d.expect_late), ok1 && okn && oklp ? "ok" : "FAILED");
		fprintf(f, "| ingest | events | seconds | M events/s | M events per CPU-s | MB/s | "
			   "sync after, ms | WAL MB |\n|---|---:|---:|---:|---:|---:|---:|---:|\n");
		for (int i = 0; i < 4; i++) {
			fprintf(f, "| %s | %s | %.3f | %.2f | %.2f | ", label[i],
				commas(ir[i]->events), ir[i]->seconds,
				(double)ir[i]->events / ir[i]->seconds / 1e6,
				(double)ir[i]->events / ir[i]->cpu_s / 1e6);
			if (mbs[i] > 0)
				fprintf(f, "%.1f", mbs[i] / ir[i]->seconds);
			fprintf(f, " | %.1f | %.1f |\n", ir[i]->sync_s * 1e3,
				(double)ir[i]->wal_bytes / 1e6);
		}
		fprintf(f,
			"\nA 100-row batch then `tally_db_sync`, 1 shard: p50 %.0f us, p99 %.0f "
			"us, mean %.0f us (%s reps).\n\n",
			sync100.p50, sync100.p99, sync100.mean, commas(sync100.n));
		fprintf(f,
			"| query, us | 1 shard p50 | p99 | mean | %u shards p50 | p99 | mean | "
			"reps | answer (mean) |\n|---|---:|---:|---:|---:|---:|---:|---:|---|\n",
			nt);
		for (unsigned k = 0; k < Q_KINDS; k++) {
			const lat *a = &q[0][k], *b = &q[1][k];
			fprintf(f,
				"| %s | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %s | %.0f %s |\n",
				q_name[k], a->p50, a->p99, a->mean, b->p50, b->p99, b->mean,
				commas(a->n), a->items, q_unit[k]);
		}
		fclose(f);
		fprintf(stderr, "appended to %s\n", o.out);
	}
	free(d.k);
	free(d.ts_all);
	free(d.val_all);
	free(d.b_all);
	free(s1.ops);
	for (unsigned i = 0; i < nt; i++)
		free(sn[i].ops);
	free(sn);
	free(textn);
	free(lenn);
	return ok1 && okn && oklp ? 0 : 1;
}
