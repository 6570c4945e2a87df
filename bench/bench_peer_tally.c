/*
 * bench_peer_tally.c — tally embedded, driven by bench/run like every peer:
 * the same files in, the same query set, answers in the common format,
 * figures as JSON.
 *
 * Phases, each timed alone: ingest the on-time events (line protocol from
 * the file tally-gen wrote, or the same events as binary batches made by
 * tools/workload.c before the clock starts) and sync; flush and merge
 * (partitions past their grace are sealed); the late batch and sync, then
 * ask at once whether a backlog window is complete; flush and merge again
 * (the late fold: rows and bytes written); bytes on disk; the query set,
 * once for the answers and once timed.
 *
 * The one idea: the driver does what bench/run asks of every store and no
 * more, so its figures sit in the same table as the peers' without
 * footnotes; tally-specific detail (stats, write amplification by rows)
 * rides along in extra fields.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tally.h"
#include "workload.h"
#include "benchutil.h"

#define PT_TABLE       "traffic"
#define PT_FIELD       "speed"
#define PT_CHUNK       (1u << 20) /* line protocol goes in pieces of a socket read */
#define PT_BATCH       1000       /* rows per binary batch */
#define PT_THREADS_MAX 64
#define NS_PER_MS      INT64_C(1000000)

typedef struct pt_opts {
	const char *dir, *lp, *late_lp, *queries, *answers, *json;
	int binary;
	unsigned threads;
	wl_params wp;
	const char *check_camera;
	int64_t check_from_ms, check_to_ms;
	uint64_t check_count;
	double visible_timeout_s;
} pt_opts;

static void *pt_alloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (!p) {
		fprintf(stderr, "bench_peer_tally: out of memory (%zu bytes)\n", n);
		exit(1);
	}
	return p;
}

/* Bytes this process has caused to be written to storage so far. */
static uint64_t io_write_bytes(void)
{
	FILE *f = fopen("/proc/self/io", "r");
	char line[128];
	uint64_t v = 0;
	while (f && fgets(line, sizeof line, f))
		if (sscanf(line, "write_bytes: %" SCNu64, &v) == 1)
			break;
	if (f)
		fclose(f);
	return v;
}

static uint64_t du(const char *path)
{
	struct stat sb;
	if (lstat(path, &sb))
		return 0;
	if (!S_ISDIR(sb.st_mode))
		return (uint64_t)sb.st_blocks * 512;
	uint64_t n = 0;
	DIR *d = opendir(path);
	struct dirent *e;
	while (d && (e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		char sub[PATH_MAX];
		snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
		n += du(sub);
	}
	if (d)
		closedir(d);
	return n;
}

/* ---------------------------------------------------------------- ingest */

/* One thread's work: a line-aligned range of text, or a list of batches. */
typedef struct pt_batch {
	char id[WL_ID_MAX];
	size_t off, n; /* rows in the arena */
} pt_batch;

typedef struct pt_arena {
	int64_t *ts;
	double *val;
	size_t n, cap;
	pt_batch *b;
	size_t nb, cb;
} pt_arena;

typedef struct pt_worker {
	pthread_t th;
	tally_db *db;
	unsigned shard;
	const char *text;
	size_t len;
	const pt_arena *arena;
	uint64_t accepted;
	int rc;
	char err[400];
} pt_worker;

static void *pt_ingest_main(void *arg)
{
	pt_worker *w = arg;
	tally_writer *wr;
	int rc = tally_writer_open(w->db, (int)w->shard, &wr);
	if (rc) {
		w->rc = rc;
		snprintf(w->err, sizeof w->err, "tally_writer_open: %s", tally_errmsg());
		return NULL;
	}
	if (w->text) {
		for (size_t off = 0; off < w->len && !rc;) {
			size_t n = w->len - off;
			if (n > PT_CHUNK) {
				n = PT_CHUNK;
				while (n > 0 && w->text[off + n - 1] != '\n')
					n--;
			}
			tally_write_result res;
			rc = tally_write_lp(wr, w->text + off, n, TALLY_PREC_NS, &res);
			if (!rc && res.rejected) {
				snprintf(w->err, sizeof w->err, "line %" PRIu64 ": %s",
					 res.errors[0].line, res.errors[0].reason);
				w->rc = res.errors[0].code;
				break;
			}
			w->accepted += res.accepted;
			off += n;
		}
	} else {
		tally_column col = {.name = PT_FIELD, .type = TALLY_T_F64};
		tally_batch b = {
			.table = PT_TABLE, .key_tag = "camera", .n_columns = 1, .columns = &col};
		const pt_arena *a = w->arena;
		for (size_t i = 0; i < a->nb && !rc; i++) {
			b.key = a->b[i].id;
			b.n_rows = a->b[i].n;
			b.ts = a->ts + a->b[i].off;
			col.values = a->val + a->b[i].off;
			if (!(rc = tally_write_batch(wr, &b)))
				w->accepted += b.n_rows;
		}
	}
	if (rc && !w->rc) {
		w->rc = rc;
		snprintf(w->err, sizeof w->err, "%s",
			 *tally_errmsg() ? tally_errmsg() : tally_strerror(rc));
	}
	tally_writer_close(wr);
	return NULL;
}

typedef struct pt_ingest {
	uint64_t events, bytes;
	double seconds; /* writes and the sync that makes them durable */
	double sync_s;
} pt_ingest;

static pt_ingest pt_run(tally_db *db, pt_worker *w, unsigned n)
{
	double t0 = now_s();
	for (unsigned i = 0; i < n; i++) {
		w[i].db = db;
		w[i].shard = i;
		if (pthread_create(&w[i].th, NULL, pt_ingest_main, &w[i]))
			die_tally("pthread_create", 0);
	}
	pt_ingest r = {0};
	for (unsigned i = 0; i < n; i++) {
		pthread_join(w[i].th, NULL);
		if (w[i].rc) {
			fprintf(stderr, "bench_peer_tally: writer %u: %s\n", i, w[i].err);
			exit(1);
		}
		r.events += w[i].accepted;
		r.bytes += w[i].len;
	}
	double ts = now_s();
	int rc = tally_db_sync(db);
	if (rc)
		die_tally("tally_db_sync", rc);
	r.sync_s = now_s() - ts;
	r.seconds = now_s() - t0;
	return r;
}

/* A line protocol file mapped and cut into n line-aligned pieces. */
static pt_ingest pt_ingest_lp(tally_db *db, const char *path, unsigned n)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		fprintf(stderr, "bench_peer_tally: %s: %s\n", path, strerror(errno));
		exit(1);
	}
	struct stat st;
	fstat(fd, &st);
	size_t len = (size_t)st.st_size;
	const char *text = len ? mmap(NULL, len, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0) : "";
	close(fd);
	if (text == MAP_FAILED)
		die_tally("mmap", 0);
	pt_worker w[PT_THREADS_MAX];
	memset(w, 0, sizeof w);
	size_t start = 0;
	for (unsigned i = 0; i < n; i++) {
		size_t end = i + 1 == n ? len : len / n * (i + 1);
		while (end < len && end > start && text[end - 1] != '\n')
			end++;
		if (end < start)
			end = start;
		w[i].text = text + start;
		w[i].len = end - start;
		start = end;
	}
	pt_ingest r = pt_run(db, w, n);
	if (len)
		munmap((void *)text, len);
	return r;
}

static void pt_arena_push(pt_arena *a, const char *id, const int64_t *ts, const double *val,
			  size_t n)
{
	if (a->n + n > a->cap) {
		a->cap = (a->n + n) * 2;
		a->ts = realloc(a->ts, a->cap * sizeof *a->ts);
		a->val = realloc(a->val, a->cap * sizeof *a->val);
		if (!a->ts || !a->val)
			die_tally("out of memory", 0);
	}
	if (a->nb == a->cb) {
		a->cb = a->cb ? a->cb * 2 : 1024;
		a->b = realloc(a->b, a->cb * sizeof *a->b);
		if (!a->b)
			die_tally("out of memory", 0);
	}
	pt_batch *b = &a->b[a->nb++];
	snprintf(b->id, sizeof b->id, "%s", id);
	b->off = a->n;
	b->n = n;
	memcpy(a->ts + a->n, ts, n * sizeof *ts);
	memcpy(a->val + a->n, val, n * sizeof *val);
	a->n += n;
}

/* The events of part as a collector would batch them: each camera's
 * events gathered in delivery order, a batch written when it holds
 * PT_BATCH rows (and the rest at the end); camera c goes to thread
 * c % n. Made before the clock starts. */
static void pt_make_batches(const wl_params *wp, enum wl_part part, unsigned n, pt_arena *arenas)
{
	size_t per = PT_BATCH;
	int64_t *pts = pt_alloc((size_t)wp->cameras * per * sizeof *pts);
	double *pval = pt_alloc((size_t)wp->cameras * per * sizeof *pval);
	uint32_t *pn = calloc(wp->cameras, sizeof *pn);
	wl_stream *s = wl_stream_open(wp, part);
	wl_event *ev = pt_alloc(4096 * sizeof *ev);
	if (!pn || !s)
		die_tally("out of memory", 0);
	char id[WL_ID_MAX];
	size_t k;
	while ((k = wl_stream_read(s, ev, 4096)) > 0)
		for (size_t i = 0; i < k; i++) {
			uint32_t c = ev[i].cam;
			size_t o = (size_t)c * per;
			pts[o + pn[c]] = ev[i].ts;
			pval[o + pn[c]] = ev[i].tenths / 10.0;
			if (++pn[c] == per) {
				wl_camera_id(c, id);
				pt_arena_push(&arenas[c % n], id, pts + o, pval + o, per);
				pn[c] = 0;
			}
		}
	for (uint32_t c = 0; c < wp->cameras; c++)
		if (pn[c]) {
			wl_camera_id(c, id);
			pt_arena_push(&arenas[c % n], id, pts + (size_t)c * per,
				      pval + (size_t)c * per, pn[c]);
		}
	wl_stream_close(s);
	free(ev);
	free(pts);
	free(pval);
	free(pn);
}

static pt_ingest pt_ingest_binary(tally_db *db, const wl_params *wp, enum wl_part part, unsigned n)
{
	pt_arena arenas[PT_THREADS_MAX];
	memset(arenas, 0, sizeof arenas);
	pt_make_batches(wp, part, n, arenas);
	pt_worker w[PT_THREADS_MAX];
	memset(w, 0, sizeof w);
	for (unsigned i = 0; i < n; i++)
		w[i].arena = &arenas[i];
	pt_ingest r = pt_run(db, w, n);
	for (unsigned i = 0; i < n; i++) {
		free(arenas[i].ts);
		free(arenas[i].val);
		free(arenas[i].b);
	}
	return r;
}

/* ---------------------------------------------------------------- queries */

enum { K_S5M, K_S1H, K_S1D, K_AGG, K_KEYS, K_SCAN, K_V85, K_KINDS };
static const char *const kind_name[K_KINDS] = {"s5m", "s1h", "s1d", "agg", "keys", "scan", "v85"};

typedef struct pt_query {
	char qid[32];
	int kind;
	char camera[WL_ID_MAX];
	int64_t step_ms, from_ms, to_ms;
} pt_query;

static pt_query *pt_read_queries(const char *path, size_t *n_out)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		fprintf(stderr, "bench_peer_tally: %s: %s\n", path, strerror(errno));
		exit(1);
	}
	size_t n = 0, cap = 256;
	pt_query *q = pt_alloc(cap * sizeof *q);
	char line[512], kind[16];
	while (fgets(line, sizeof line, f)) {
		if (line[0] == '#' || line[0] == '\n')
			continue;
		if (n == cap) {
			cap *= 2;
			q = realloc(q, cap * sizeof *q);
			if (!q)
				die_tally("out of memory", 0);
		}
		pt_query *x = &q[n];
		if (sscanf(line, "%31s %15s %15s %" SCNd64 " %" SCNd64 " %" SCNd64, x->qid, kind,
			   x->camera, &x->step_ms, &x->from_ms, &x->to_ms) != 6) {
			fprintf(stderr, "bench_peer_tally: %s: bad line: %s", path, line);
			exit(1);
		}
		x->kind = -1;
		for (int k = 0; k < K_KINDS; k++)
			if (!strcmp(kind, kind_name[k]))
				x->kind = k;
		if (x->kind < 0) {
			fprintf(stderr, "bench_peer_tally: %s: unknown kind %s\n", path, kind);
			exit(1);
		}
		n++;
	}
	fclose(f);
	*n_out = n;
	return q;
}

static void pt_put_agg(FILE *out, const char *qid, const char *label, const tally_agg *a)
{
	if (out && a->count)
		fprintf(out, "%s\t%s\t%" PRIu64 "\t%.17g\t%.17g\t%.17g\n", qid, label, a->count,
			a->sum, a->min, a->max);
}

/* Runs one query; writes its answer rows to out when out is not NULL. */
static void pt_query_run(tally_db *db, const pt_query *q, tally_bucket *buf, size_t cap, FILE *out)
{
	int64_t from = q->from_ms * NS_PER_MS, to = q->to_ms * NS_PER_MS;
	char label[32];
	int rc;
	switch (q->kind) {
	case K_S5M:
	case K_S1H:
	case K_S1D: {
		size_t n;
		rc = tally_query_series(db, PT_TABLE, PT_FIELD, q->camera, q->step_ms * NS_PER_MS,
					from, to, buf, cap, &n);
		if (rc)
			die_tally("tally_query_series", rc);
		for (size_t i = 0; out && i < n; i++) {
			snprintf(label, sizeof label, "%" PRId64, buf[i].start / NS_PER_MS);
			pt_put_agg(out, q->qid, label, &buf[i].agg);
		}
		break;
	}
	case K_AGG: {
		tally_agg a;
		if ((rc = tally_query_agg(db, PT_TABLE, PT_FIELD, q->camera, from, to, &a)))
			die_tally("tally_query_agg", rc);
		pt_put_agg(out, q->qid, "all", &a);
		break;
	}
	case K_KEYS: {
		tally_keys_iter *it;
		if ((rc = tally_query_keys(db, PT_TABLE, PT_FIELD, from, to, &it)))
			die_tally("tally_query_keys", rc);
		const char *key;
		tally_agg a;
		while ((rc = tally_keys_next(it, &key, &a)) == 1)
			pt_put_agg(out, q->qid, key, &a);
		tally_keys_close(it);
		if (rc)
			die_tally("tally_keys_next", rc);
		break;
	}
	case K_V85: { /* bench/peers/common.py: nearest rank, q = 0.85 */
		tally_dist *d;
		if ((rc = tally_query_dist(db, PT_TABLE, PT_FIELD, q->camera, from, to, &d)))
			die_tally("tally_query_dist", rc);
		double v;
		if (tally_dist_count(d) && !tally_dist_quantile(d, 0.85, &v)) {
			tally_agg a = {.count = tally_dist_count(d), .sum = v, .min = v, .max = v};
			pt_put_agg(out, q->qid, "v85", &a);
		}
		tally_dist_free(d);
		break;
	}
	default: {
		tally_scan *s;
		if ((rc = tally_scan_open(db, PT_TABLE, q->camera, from, to, &s)))
			die_tally("tally_scan_open", rc);
		size_t col = SIZE_MAX;
		for (size_t i = 0; i < tally_scan_columns(s); i++) {
			const char *name;
			enum tally_type type;
			if (tally_scan_column(s, i, &name, &type) == 0 && !strcmp(name, PT_FIELD))
				col = i;
		}
		tally_row row;
		while ((rc = tally_scan_next(s, &row)) == 1) {
			if (!out || col >= row.n_values || row.values[col].type != TALLY_T_F64)
				continue;
			double v = row.values[col].v.f64;
			tally_agg a = {.count = 1, .sum = v, .min = v, .max = v, .avg = v};
			snprintf(label, sizeof label, "%" PRId64, row.ts / NS_PER_MS);
			pt_put_agg(out, q->qid, label, &a);
		}
		tally_scan_close(s);
		if (rc)
			die_tally("tally_scan_next", rc);
	}
	}
}

/* ---------------------------------------------------------------- main */

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: bench_peer_tally --dir DIR (--lp FILE | --binary WORKLOAD) [OPTIONS]\n"
		"\n"
		"tally embedded as one system of bench/run: ingest, late batch, disk, queries;\n"
		"figures as JSON on stdout (or --json FILE).\n"
		"\n"
		"  --dir DIR            the store (must not exist or be empty)\n"
		"  --threads N          writer threads and shards (default: cores)\n"
		"  --lp FILE            on-time events as line protocol (ns)\n"
		"  --late-lp FILE       the late batch as line protocol\n"
		"  --binary             the same events as binary batches instead, made by\n"
		"                       tools/workload.c from: --seed --cameras --days --per-day\n"
		"                       --offline-pct --outage-hours (tally-gen's meaning)\n"
		"  --queries FILE       the query set (qid kind camera step_ms from_ms to_ms)\n"
		"  --answers FILE       write the answers there\n"
		"  --check CAMERA,FROM_MS,TO_MS,COUNT\n"
		"                       after the late batch, poll the camera's 1h series over\n"
		"                       [FROM, TO) (at most 2 days) until its counts add up to\n"
		"                       COUNT (visibility)\n"
		"  --json FILE          figures there instead of stdout\n");
}

int main(int argc, char **argv)
{
	enum {
		O_DIR = 1,
		O_THREADS,
		O_LP,
		O_LATE,
		O_BINARY,
		O_SEED,
		O_CAMERAS,
		O_DAYS,
		O_PERDAY,
		O_OFFLINE,
		O_OUTAGE,
		O_QUERIES,
		O_ANSWERS,
		O_CHECK,
		O_JSON
	};
	static const struct option lo[] = {
		{"dir", required_argument, NULL, O_DIR},
		{"threads", required_argument, NULL, O_THREADS},
		{"lp", required_argument, NULL, O_LP},
		{"late-lp", required_argument, NULL, O_LATE},
		{"binary", no_argument, NULL, O_BINARY},
		{"seed", required_argument, NULL, O_SEED},
		{"cameras", required_argument, NULL, O_CAMERAS},
		{"days", required_argument, NULL, O_DAYS},
		{"per-day", required_argument, NULL, O_PERDAY},
		{"offline-pct", required_argument, NULL, O_OFFLINE},
		{"outage-hours", required_argument, NULL, O_OUTAGE},
		{"queries", required_argument, NULL, O_QUERIES},
		{"answers", required_argument, NULL, O_ANSWERS},
		{"check", required_argument, NULL, O_CHECK},
		{"json", required_argument, NULL, O_JSON},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	pt_opts o = {0};
	wl_params_init(&o.wp);
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	o.threads = ncpu > 0 ? (unsigned)(ncpu < 8 ? ncpu : 8) : 1;
	o.visible_timeout_s = 30;
	static char check_cam[WL_ID_MAX];
	int c;
	while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
		switch (c) {
		case 'h': usage(stdout); return 0;
		case O_DIR: o.dir = optarg; break;
		case O_THREADS: o.threads = (unsigned)atoi(optarg); break;
		case O_LP: o.lp = optarg; break;
		case O_LATE: o.late_lp = optarg; break;
		case O_BINARY: o.binary = 1; break;
		case O_SEED: o.wp.seed = strtoull(optarg, NULL, 10); break;
		case O_CAMERAS: o.wp.cameras = (unsigned)atoi(optarg); break;
		case O_DAYS: o.wp.days = (unsigned)atoi(optarg); break;
		case O_PERDAY: o.wp.per_day = (unsigned)atoi(optarg); break;
		case O_OFFLINE: o.wp.offline_pct = (unsigned)atoi(optarg); break;
		case O_OUTAGE: o.wp.outage_hours = (unsigned)atoi(optarg); break;
		case O_QUERIES: o.queries = optarg; break;
		case O_ANSWERS: o.answers = optarg; break;
		case O_CHECK: {
			unsigned long long cnt;
			if (sscanf(optarg, "%15[^,],%" SCNd64 ",%" SCNd64 ",%llu", check_cam,
				   &o.check_from_ms, &o.check_to_ms, &cnt) != 4) {
				fprintf(stderr,
					"bench_peer_tally: --check CAMERA,FROM_MS,TO_MS,COUNT\n");
				return 2;
			}
			o.check_camera = check_cam;
			o.check_count = cnt;
			break;
		}
		case O_JSON: o.json = optarg; break;
		default: usage(stderr); return 2;
		}
	}
	char err[160];
	if (!o.dir || (!o.lp && !o.binary) || o.threads < 1 || o.threads > PT_THREADS_MAX ||
	    (o.binary && wl_params_check(&o.wp, err, sizeof err))) {
		usage(stderr);
		return 2;
	}

	tally_options opt;
	tally_options_init(&opt);
	opt.shards = o.threads;
	opt.table_keys = PT_TABLE "=camera";
	opt.memory_limit = UINT64_C(16) << 30;
	/* speed has one decimal: exact at 0.1, for the V85 queries */
	opt.distributions = PT_TABLE "." PT_FIELD ":0.1";
	tally_db *db;
	int rc = tally_db_open(o.dir, &opt, &db);
	if (rc)
		die_tally("tally_db_open", rc);

	/* ---- on time */
	uint64_t io0 = io_write_bytes();
	pt_ingest on = o.binary ? pt_ingest_binary(db, &o.wp, WL_PART_ONTIME, o.threads)
				: pt_ingest_lp(db, o.lp, o.threads);
	double t = now_s();
	if ((rc = tally_db_flush(db)) || (rc = tally_db_merge(db)))
		die_tally("flush/merge", rc);
	double fm_s = now_s() - t;
	uint64_t io1 = io_write_bytes();
	tally_stats st0;
	if ((rc = tally_db_stats(db, &st0)))
		die_tally("tally_db_stats", rc);

	/* ---- the late batch */
	pt_ingest late = {0};
	double visible_s = -1, late_fm_s = 0;
	uint64_t polls = 0;
	int have_late = o.binary || o.late_lp;
	if (have_late) {
		late = o.binary ? pt_ingest_binary(db, &o.wp, WL_PART_LATE, o.threads)
				: pt_ingest_lp(db, o.late_lp, o.threads);
		if (o.check_camera) {
			double t0 = now_s();
			tally_bucket hb[48];
			for (;;) {
				size_t nb;
				uint64_t seen = 0;
				polls++;
				if ((rc = tally_query_series(db, PT_TABLE, PT_FIELD, o.check_camera,
							     TALLY_1H, o.check_from_ms * NS_PER_MS,
							     o.check_to_ms * NS_PER_MS, hb, 48,
							     &nb)))
					die_tally("tally_query_series", rc);
				for (size_t i = 0; i < nb; i++)
					seen += hb[i].agg.count;
				if (seen == o.check_count) {
					visible_s = now_s() - t0;
					break;
				}
				if (now_s() - t0 > o.visible_timeout_s)
					break;
				usleep(1000);
			}
		}
		t = now_s();
		if ((rc = tally_db_flush(db)) || (rc = tally_db_merge(db)))
			die_tally("flush/merge", rc);
		late_fm_s = now_s() - t;
	}
	uint64_t io2 = io_write_bytes();
	tally_stats st;
	if ((rc = tally_db_stats(db, &st)))
		die_tally("tally_db_stats", rc);
	char parts[PATH_MAX];
	snprintf(parts, sizeof parts, "%s/parts", o.dir);
	uint64_t disk = du(o.dir), disk_parts = du(parts);

	/* ---- queries */
	double *lat[K_KINDS] = {0};
	size_t nlat[K_KINDS] = {0}, nq = 0;
	if (o.queries) {
		pt_query *q = pt_read_queries(o.queries, &nq);
		FILE *ans = o.answers ? fopen(o.answers, "w") : NULL;
		if (o.answers && !ans)
			die_tally(o.answers, 0);
		size_t cap = (size_t)(o.wp.days > 366 ? o.wp.days : 366) * 288 * 4;
		tally_bucket *buf = pt_alloc(cap * sizeof *buf);
		for (int k = 0; k < K_KINDS; k++)
			lat[k] = pt_alloc((nq + 1) * sizeof *lat[k]);
		for (size_t i = 0; i < nq; i++) /* the answers, and a warm cache */
			pt_query_run(db, &q[i], buf, cap, ans);
		if (ans && fclose(ans))
			die_tally(o.answers, 0);
		for (size_t i = 0; i < nq; i++) {
			double a = now_s();
			pt_query_run(db, &q[i], buf, cap, NULL);
			lat[q[i].kind][nlat[q[i].kind]++] = now_s() - a;
		}
		free(buf);
		free(q);
	}

	FILE *out = o.json ? fopen(o.json, "w") : stdout;
	if (!out)
		die_tally(o.json, 0);
	fprintf(out,
		"{\n  \"system\": \"tally\", \"version\": \"%d.%d.%d\", \"mode\": \"%s\", "
		"\"threads\": %u,\n",
		TALLY_VERSION_MAJOR, TALLY_VERSION_MINOR, TALLY_VERSION_PATCH,
		o.binary ? "binary" : "lp", o.threads);
	fprintf(out,
		"  \"ingest\": {\"events\": %" PRIu64 ", \"bytes\": %" PRIu64
		", \"seconds\": %.6f, \"sync_s\": %.6f, \"flush_merge_s\": %.6f, "
		"\"io_write_bytes\": %" PRIu64 "},\n",
		on.events, on.bytes, on.seconds, on.sync_s, fm_s, io1 - io0);
	double late_rows_written = st.write_amplification * (double)st.part_rows -
				   st0.write_amplification * (double)st0.part_rows;
	fprintf(out,
		"  \"late\": {\"events\": %" PRIu64
		", \"seconds\": %.6f, \"visible_after_s\": %.6f, "
		"\"polls\": %" PRIu64 ", \"flush_merge_s\": %.6f, \"io_write_bytes\": %" PRIu64
		", \"rows_written\": %.0f, \"wa_rows\": %.4f, \"late_events_counted\": %" PRIu64
		"},\n",
		late.events, late.seconds, visible_s, polls, late_fm_s, io2 - io1,
		late_rows_written, late.events ? late_rows_written / (double)late.events : 0.0,
		st.late_events);
	fprintf(out,
		"  \"disk\": {\"bytes\": %" PRIu64 ", \"raw_bytes\": %" PRIu64
		", \"events\": %" PRIu64 ", \"parts\": %" PRIu64 ", \"sealed_parts\": %" PRIu64
		", \"write_amplification\": %.4f},\n",
		disk, disk_parts, st.events, st.parts, st.sealed_parts, st.write_amplification);
	fprintf(out, "  \"queries\": {");
	const char *sep = "";
	for (int k = 0; k < K_KINDS; k++) {
		size_t n = nlat[k];
		if (!n)
			continue;
		qsort(lat[k], n, sizeof *lat[k], cmp_d);
		double sum = 0;
		for (size_t i = 0; i < n; i++)
			sum += lat[k][i];
		size_t i99 = (size_t)ceil(0.99 * (double)n) - 1;
		fprintf(out,
			"%s\n    \"%s\": {\"n\": %zu, \"p50_us\": %.3f, \"p99_us\": %.3f, "
			"\"mean_us\": %.3f}",
			sep, kind_name[k], n, lat[k][(n - 1) / 2] * 1e6, lat[k][i99] * 1e6,
			sum / (double)n * 1e6);
		sep = ",";
	}
	fprintf(out, "\n  }\n}\n");
	if (out != stdout)
		fclose(out);
	for (int k = 0; k < K_KINDS; k++)
		free(lat[k]);
	tally_db_close(db);
	return 0;
}
