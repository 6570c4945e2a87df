/*
 * tally_demo.c — one synthetic day of speed-camera traffic through libtally.
 *
 * A thousand cameras report a day of vehicle speeds; a tenth of them are
 * offline for a few hours and flush their backlog after everyone else's day
 * is in. The day goes in through the binary batch API, one writer thread per
 * shard; the backlog goes in as line protocol text. The demo then asks the
 * questions tally exists for and shows that the late events landed in the
 * windows they belong to, exactly.
 *
 * The one idea: all data is generated before the clock starts (by
 * tools/workload.c, the benchmark's generator: each camera-day from its
 * own seed, so the data does not depend on the number of threads), so the
 * rates printed are the store's, not the generator's.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
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
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tally.h"
#include "workload.h"

#define TABLE            "traffic"
#define KEY_TAG          "camera"
#define FIELD            "speed"
#define NS_PER_MS        INT64_C(1000000)
#define LP_CHUNK         (256u << 10) /* line protocol is sent in pieces of about this size */
#define TOTAL_EVENTS_MAX UINT64_C(200000000)

/* ---------------------------------------------------------------- options */

typedef struct demo_opts {
	const char *dir;
	unsigned cameras;
	unsigned events; /* per camera */
	unsigned shards;
	unsigned offline_pct;
	unsigned outage_hours;
	uint64_t seed;
} demo_opts;

static void usage(FILE *f)
{
	fprintf(f, "Usage: tally-demo [OPTIONS]\n"
		   "\n"
		   "Ingests one synthetic day of speed-camera traffic into a local tally\n"
		   "store through the embedded API, then queries it: rollups per day, hour\n"
		   "and 5 minutes, an exact average over an unaligned range, and the\n"
		   "fastest cameras of an hour. A share of the cameras is offline for a\n"
		   "few hours and sends its backlog last, as line protocol: the output\n"
		   "shows those late events landing in the windows they belong to.\n"
		   "\n"
		   "Options:\n"
		   "  --dir DIR                data directory (default ./data/demo). Emptied\n"
		   "                           first if it holds a previous tally store; any\n"
		   "                           other non-empty directory is refused.\n"
		   "  --cameras N              number of cameras (default 1000)\n"
		   "  --events-per-camera N    events per camera over the day (default 10000)\n"
		   "  --shards N               shards, one writer thread each (default: cores)\n"
		   "  --offline-pct P          percentage of cameras that go offline (default 10)\n"
		   "  --outage-hours H         length of each outage, 1 to 12 (default 3)\n"
		   "  --seed N                 seed of the generated data (default 1)\n"
		   "  -h, --help               this text\n"
		   "\n"
		   "Example: ./build/tools/tally-demo --events-per-camera 2000\n");
}

static int parse_uint(const char *flag, const char *s, unsigned long long lo, unsigned long long hi,
		      unsigned long long *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s || *end || *s == '-' || v < lo || v > hi) {
		fprintf(stderr, "tally-demo: %s: '%s' is not a number in [%llu, %llu]\n", flag, s,
			lo, hi);
		return -1;
	}
	*out = v;
	return 0;
}

static int parse_args(int argc, char **argv, demo_opts *o)
{
	enum { O_DIR = 1, O_CAMERAS, O_EVENTS, O_SHARDS, O_OFFLINE, O_OUTAGE, O_SEED };
	static const struct option longopts[] = {
		{"dir", required_argument, NULL, O_DIR},
		{"cameras", required_argument, NULL, O_CAMERAS},
		{"events-per-camera", required_argument, NULL, O_EVENTS},
		{"shards", required_argument, NULL, O_SHARDS},
		{"offline-pct", required_argument, NULL, O_OFFLINE},
		{"outage-hours", required_argument, NULL, O_OUTAGE},
		{"seed", required_argument, NULL, O_SEED},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	*o = (demo_opts){.dir = "./data/demo",
			 .cameras = 1000,
			 .events = 10000,
			 .shards = ncpu > 0 ? (unsigned)(ncpu < 256 ? ncpu : 256) : 1,
			 .offline_pct = 10,
			 .outage_hours = 3,
			 .seed = 1};
	int c;
	unsigned long long v;
	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (c) {
		case 'h': usage(stdout); exit(0);
		case O_DIR: o->dir = optarg; break;
		case O_CAMERAS:
			if (parse_uint("--cameras", optarg, 1, 99999, &v))
				return -1;
			o->cameras = (unsigned)v;
			break;
		case O_EVENTS:
			if (parse_uint("--events-per-camera", optarg, 1, 10000000, &v))
				return -1;
			o->events = (unsigned)v;
			break;
		case O_SHARDS:
			if (parse_uint("--shards", optarg, 1, 256, &v))
				return -1;
			o->shards = (unsigned)v;
			break;
		case O_OFFLINE:
			if (parse_uint("--offline-pct", optarg, 0, 100, &v))
				return -1;
			o->offline_pct = (unsigned)v;
			break;
		case O_OUTAGE:
			if (parse_uint("--outage-hours", optarg, 1, 12, &v))
				return -1;
			o->outage_hours = (unsigned)v;
			break;
		case O_SEED:
			if (parse_uint("--seed", optarg, 0, UINT64_MAX, &v))
				return -1;
			o->seed = v;
			break;
		default: fprintf(stderr, "See tally-demo --help.\n"); return -1;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "tally-demo: unexpected argument '%s' (see --help)\n",
			argv[optind]);
		return -1;
	}
	if ((uint64_t)o->cameras * o->events > TOTAL_EVENTS_MAX) {
		fprintf(stderr,
			"tally-demo: %u cameras x %u events is more than %" PRIu64 " events\n",
			o->cameras, o->events, TOTAL_EVENTS_MAX);
		return -1;
	}
	return 0;
}

/* ---------------------------------------------------------------- data dir */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	if (ftw->level == 0)
		return 0; /* keep the directory itself */
	if (remove(path) != 0) {
		fprintf(stderr, "tally-demo: cannot remove %s: %s\n", path, strerror(errno));
		return -1;
	}
	return 0;
}

static int is_empty_dir(const char *dir)
{
	DIR *d = opendir(dir);
	if (!d)
		return 0;
	int empty = 1;
	struct dirent *e;
	while (empty && (e = readdir(d)))
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
			empty = 0;
	closedir(d);
	return empty;
}

/* Makes dir an empty directory: creates it (and its parents), or empties
 * it when it holds a tally store that no process has open. Anything else
 * there is left alone and refused. */
static int prepare_dir(const char *dir)
{
	char path[PATH_MAX];
	if (strlen(dir) + 8 >= sizeof path) {
		fprintf(stderr, "tally-demo: --dir: path too long\n");
		return -1;
	}
	/* mkdir -p */
	snprintf(path, sizeof path, "%s", dir);
	for (char *p = path + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		if (mkdir(path, 0755) != 0 && errno != EEXIST) {
			fprintf(stderr, "tally-demo: mkdir %s: %s\n", path, strerror(errno));
			return -1;
		}
		*p = '/';
	}
	if (mkdir(dir, 0755) == 0)
		return 0;
	if (errno != EEXIST) {
		fprintf(stderr, "tally-demo: mkdir %s: %s\n", dir, strerror(errno));
		return -1;
	}
	struct stat st;
	if (lstat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
		fprintf(stderr, "tally-demo: %s exists and is not a directory\n", dir);
		return -1;
	}
	snprintf(path, sizeof path, "%s/wal", dir);
	int has_wal = lstat(path, &st) == 0 && S_ISDIR(st.st_mode);
	snprintf(path, sizeof path, "%s/LOCK", dir);
	int has_lock = lstat(path, &st) == 0 && S_ISREG(st.st_mode);
	if (!has_wal || !has_lock) {
		if (is_empty_dir(dir))
			return 0;
		fprintf(stderr,
			"tally-demo: %s is not empty and does not look like a tally store "
			"(no LOCK and wal/); refusing to touch it. Pick another --dir.\n",
			dir);
		return -1;
	}
	/* A store some process has open must not vanish under it. */
	int fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0 || flock(fd, LOCK_EX | LOCK_NB) != 0) {
		fprintf(stderr, "tally-demo: %s is in use by another process\n", dir);
		if (fd >= 0)
			close(fd);
		return -1;
	}
	int rc = nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	close(fd);
	return rc == 0 ? 0 : -1;
}

/* ---------------------------------------------------------------- numbers */

static double now_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* 1234567 -> "1,234,567" in one of a few rotating static buffers. */
static const char *commas(uint64_t v)
{
	static _Thread_local char bufs[8][32];
	static _Thread_local unsigned next;
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

static const char *mb(uint64_t bytes)
{
	static _Thread_local char bufs[4][32];
	static _Thread_local unsigned next;
	char *out = bufs[next++ % 4];
	snprintf(out, 32, "%.1f MB", (double)bytes / 1e6);
	return out;
}

/* "HH:MM" or "HH:MM:SS" of a time of day, ns since the day's start. */
static const char *hhmm(int64_t ns, int with_seconds)
{
	static _Thread_local char bufs[8][40];
	static _Thread_local unsigned next;
	char *out = bufs[next++ % 8];
	int64_t s = ns / TALLY_NS_PER_SEC;
	if (with_seconds)
		snprintf(out, 40, "%02d:%02d:%02d", (int)(s / 3600), (int)(s / 60 % 60),
			 (int)(s % 60));
	else
		snprintf(out, 40, "%02d:%02d", (int)(s / 3600), (int)(s / 60 % 60));
	return out;
}

/* ---------------------------------------------------------------- data */

typedef struct camera {
	char id[WL_ID_MAX]; /* "KV00001" */
	int offline;
	int64_t out_from, out_to; /* outage, ns since the day's start */
	int64_t *ts;              /* all the day's events, in time order */
	double *speed;
	uint32_t n;
	uint32_t b0, b1; /* events [b0, b1) fall in the outage: the backlog */
	uint32_t cur;    /* next event to send */
} camera;

/* The day's workload: tools/workload.c, the benchmark's generator, on one
 * day from the demo's day. */
static void demo_workload(wl_params *wp, const demo_opts *o, int64_t day)
{
	wl_params_init(wp);
	wp->seed = o->seed;
	wp->cameras = o->cameras;
	wp->days = 1;
	wp->per_day = o->events;
	wp->offline_pct = o->offline_pct;
	wp->outage_hours = o->outage_hours;
	wp->start_ns = day;
}

/* Camera c's day; tenths is scratch for per_day speeds. */
static void camera_generate(camera *cam, unsigned c, const wl_params *wp, int32_t *tenths)
{
	wl_camera_id(c, cam->id);
	cam->offline = wl_camera_offline(wp, c);
	wl_day d = {.ts = cam->ts, .tenths = tenths};
	wl_gen_day(wp, c, 0, &d);
	for (uint32_t i = 0; i < cam->n; i++)
		cam->speed[i] = tenths[i] / 10.0; /* one decimal, like 85.2 */
	cam->b0 = d.b0;
	cam->b1 = d.b1;
	cam->out_from = cam->offline ? d.out_from - wp->start_ns : 0;
	cam->out_to = cam->offline ? d.out_to - wp->start_ns : 0;
}

/* The late events the store should count for this camera: backlog events
 * older than the newest event it had sent by more than the threshold. */
static uint64_t camera_expected_late(const camera *cam, int64_t threshold)
{
	int64_t hwm = INT64_MIN;
	if (cam->b1 < cam->n)
		hwm = cam->ts[cam->n - 1];
	else if (cam->b0 > 0)
		hwm = cam->ts[cam->b0 - 1];
	uint64_t late = 0;
	for (uint32_t i = cam->b0; i < cam->b1; i++) {
		if (hwm != INT64_MIN && cam->ts[i] < hwm - threshold)
			late++;
		if (cam->ts[i] > hwm)
			hwm = cam->ts[i];
	}
	return late;
}

/* ---------------------------------------------------------------- writers */

typedef struct worker {
	pthread_t th;
	unsigned id; /* also the shard */
	const demo_opts *o;
	camera *cams;
	int64_t day;
	tally_writer *w;
	pthread_barrier_t *bar;
	char *lp;
	size_t lp_len, lp_cap;
	uint64_t bin_events, lp_lines, lp_accepted;
	double t0, t1, t2, t3; /* binary start/end, line protocol start/end */
	int rc;
	char err[512];
} worker;

static void worker_fail(worker *wk, int rc, const char *what)
{
	if (wk->rc)
		return;
	wk->rc = rc;
	snprintf(wk->err, sizeof wk->err, "%s: %s", what,
		 *tally_errmsg() ? tally_errmsg() : tally_strerror(rc));
}

static int lp_append(worker *wk, const camera *cam, uint32_t i)
{
	if (wk->lp_cap - wk->lp_len < 128) {
		size_t ncap = wk->lp_cap ? wk->lp_cap * 2 : (1u << 20);
		char *n = realloc(wk->lp, ncap);
		if (!n)
			return -ENOMEM;
		wk->lp = n;
		wk->lp_cap = ncap;
	}
	int n = snprintf(wk->lp + wk->lp_len, wk->lp_cap - wk->lp_len,
			 TABLE "," KEY_TAG "=%s " FIELD "=%.1f %" PRId64 "\n", cam->id,
			 cam->speed[i], cam->ts[i] / NS_PER_MS);
	wk->lp_len += (size_t)n;
	wk->lp_lines++;
	return 0;
}

static int send_rows(worker *wk, const camera *cam, uint32_t lo, uint32_t hi)
{
	if (lo >= hi)
		return 0;
	tally_column col = {.name = FIELD, .type = TALLY_T_F64, .values = cam->speed + lo};
	tally_batch b = {.table = TABLE,
			 .key = cam->id,
			 .key_tag = KEY_TAG,
			 .n_rows = hi - lo,
			 .ts = cam->ts + lo,
			 .n_columns = 1,
			 .columns = &col};
	int rc = tally_write_batch(wk->w, &b);
	if (rc)
		worker_fail(wk, rc, "tally_write_batch");
	wk->bin_events += hi - lo;
	return rc;
}

static void *worker_main(void *arg)
{
	worker *wk = arg;
	const demo_opts *o = wk->o;
	wl_params wp;
	demo_workload(&wp, o, wk->day);
	int32_t *tenths = malloc(o->events * sizeof *tenths);
	if (!tenths)
		worker_fail(wk, -ENOMEM, "generating the day");
	/* Generate this worker's cameras: not timed. */
	for (unsigned c = wk->id; c < o->cameras && !wk->rc; c += o->shards) {
		camera *cam = &wk->cams[c];
		camera_generate(cam, c, &wp, tenths);
		for (uint32_t i = cam->b0; i < cam->b1 && !wk->rc; i++)
			if (lp_append(wk, cam, i))
				worker_fail(wk, -ENOMEM, "generating line protocol");
	}
	free(tenths);
	pthread_barrier_wait(wk->bar);
	/* The day, hour by hour: every online camera uploads its last hour. */
	wk->t0 = now_s();
	for (int h = 0; h < 24 && !wk->rc; h++) {
		int64_t end = wk->day + (int64_t)(h + 1) * TALLY_1H;
		for (unsigned c = wk->id; c < o->cameras && !wk->rc; c += o->shards) {
			camera *cam = &wk->cams[c];
			uint32_t lo = cam->cur, hi = lo;
			while (hi < cam->n && cam->ts[hi] < end)
				hi++;
			cam->cur = hi;
			if (send_rows(wk, cam, lo, hi < cam->b0 ? hi : cam->b0) == 0)
				send_rows(wk, cam, lo > cam->b1 ? lo : cam->b1, hi);
		}
	}
	wk->t1 = now_s();
	pthread_barrier_wait(wk->bar); /* the day is in; main looks before the backlog */
	pthread_barrier_wait(wk->bar);
	/* The backlogs, as line protocol text in network-sized pieces. */
	wk->t2 = now_s();
	for (size_t off = 0; off < wk->lp_len && !wk->rc;) {
		size_t n = wk->lp_len - off;
		if (n > LP_CHUNK) {
			n = LP_CHUNK;
			while (n > 0 && wk->lp[off + n - 1] != '\n')
				n--;
		}
		tally_write_result res;
		int rc = tally_write_lp(wk->w, wk->lp + off, n, TALLY_PREC_MS, &res);
		if (rc)
			worker_fail(wk, rc, "tally_write_lp");
		else if (res.rejected) {
			snprintf(wk->err, sizeof wk->err, "tally_write_lp: line %" PRIu64 ": %s",
				 res.errors[0].line, res.errors[0].reason);
			wk->rc = res.errors[0].code;
		}
		wk->lp_accepted += res.accepted;
		off += n;
	}
	wk->t3 = now_s();
	return NULL;
}

/* ---------------------------------------------------------------- queries */

static int fail_with(const char *what, int rc)
{
	const char *msg = tally_errmsg();
	fprintf(stderr, "tally-demo: %s: %s\n", what, *msg ? msg : tally_strerror(rc));
	return 1;
}

/* One key's buckets of width step over [from, to), indexed by window:
 * out[k] is the window starting at from + k*step (count 0 when empty). */
static int series_grid(tally_db *db, const char *key, int64_t step, int64_t from, int64_t to,
		       tally_agg *out, size_t n_windows, double *took_us)
{
	tally_bucket b[288];
	size_t n;
	double t = now_s();
	int rc = tally_query_series(db, TABLE, FIELD, key, step, from, to, b, 288, &n);
	if (took_us)
		*took_us = (now_s() - t) * 1e6;
	if (rc)
		return rc;
	memset(out, 0, n_windows * sizeof *out);
	for (size_t i = 0; i < n; i++) {
		int64_t k = (b[i].start - from) / step;
		if (k >= 0 && (size_t)k < n_windows)
			out[k] = b[i].agg;
	}
	return 0;
}

/* "  85.2 (1,234)" padded to a column, or a dash for no data. */
#define CELL_W 18
static const char *cell(const tally_agg *a)
{
	static _Thread_local char bufs[4][48];
	static _Thread_local unsigned next;
	char *out = bufs[next++ % 4], tmp[48];
	if (a->count == 0)
		snprintf(tmp, sizeof tmp, "%6s", "-");
	else
		snprintf(tmp, sizeof tmp, "%6.1f (%s)", a->avg, commas(a->count));
	snprintf(out, 48, "%-*s", CELL_W, tmp);
	return out;
}

/* printf that trims the spaces the column padding leaves at line ends. */
static char say_buf[4096];
static size_t say_len;

__attribute__((format(printf, 1, 2))) static void say(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(say_buf + say_len, sizeof say_buf - say_len, fmt, ap);
	va_end(ap);
	if (n > 0)
		say_len += (size_t)n < sizeof say_buf - say_len ? (size_t)n
								: sizeof say_buf - say_len - 1;
	char *nl;
	while ((nl = memchr(say_buf, '\n', say_len))) {
		char *e = nl;
		while (e > say_buf && e[-1] == ' ')
			e--;
		fwrite(say_buf, 1, (size_t)(e - say_buf), stdout);
		fputc('\n', stdout);
		say_len -= (size_t)(nl + 1 - say_buf);
		memmove(say_buf, nl + 1, say_len);
	}
}

/* What the demo asks about one camera. */
typedef struct cam_view {
	tally_agg day;
	tally_agg hours[24]; /* the hours shown, from h_lo */
	tally_agg m5[4];
	tally_agg exact;
	double us_day, us_hours, us_m5, us_exact;
} cam_view;

typedef struct view_ranges {
	int64_t day;
	int64_t h_from, h_to; /* hours shown */
	int n_hours;
	int64_t m_from;       /* four 5-minute windows from here */
	int64_t e_from, e_to; /* the unaligned range */
} view_ranges;

/* Each query runs a few times and keeps its best time: one cold run on a
 * busy machine says little about the query. */
#define VIEW_RUNS 5

static int view_query(tally_db *db, const char *key, const view_ranges *r, cam_view *v)
{
	int rc;
	double us;
	v->us_day = v->us_hours = v->us_m5 = v->us_exact = INFINITY;
	for (int run = 0; run < VIEW_RUNS; run++) {
		if ((rc = series_grid(db, key, TALLY_1D, r->day, r->day + TALLY_1D, &v->day, 1,
				      &us)))
			return fail_with("tally_query_series", rc);
		v->us_day = fmin(v->us_day, us);
		if ((rc = series_grid(db, key, TALLY_1H, r->h_from, r->h_to, v->hours,
				      (size_t)r->n_hours, &us)))
			return fail_with("tally_query_series", rc);
		v->us_hours = fmin(v->us_hours, us);
		if ((rc = series_grid(db, key, TALLY_5M, r->m_from, r->m_from + 4 * TALLY_5M, v->m5,
				      4, &us)))
			return fail_with("tally_query_series", rc);
		v->us_m5 = fmin(v->us_m5, us);
		double t = now_s();
		if ((rc = tally_query_agg(db, TABLE, FIELD, key, r->e_from, r->e_to, &v->exact)))
			return fail_with("tally_query_agg", rc);
		v->us_exact = fmin(v->us_exact, (now_s() - t) * 1e6);
	}
	return 0;
}

typedef struct top_entry {
	char key[16];
	tally_agg a;
} top_entry;

static int top_fastest(tally_db *db, int64_t from, int64_t to, top_entry *top, int k, int *n,
		       uint64_t *keys_seen, double *took_us)
{
	tally_keys_iter *it;
	double t = now_s();
	int rc = tally_query_keys(db, TABLE, FIELD, from, to, &it);
	if (rc)
		return rc;
	const char *key;
	tally_agg a;
	*n = 0;
	*keys_seen = 0;
	while ((rc = tally_keys_next(it, &key, &a)) == 1) {
		(*keys_seen)++;
		int pos = *n;
		while (pos > 0 && top[pos - 1].a.avg < a.avg)
			pos--;
		if (pos >= k)
			continue;
		int last = *n < k ? *n : k - 1;
		memmove(&top[pos + 1], &top[pos], (size_t)(last - pos) * sizeof *top);
		snprintf(top[pos].key, sizeof top[pos].key, "%s", key);
		top[pos].a = a;
		if (*n < k)
			(*n)++;
	}
	tally_keys_close(it);
	*took_us = (now_s() - t) * 1e6;
	return rc;
}

/* Count and sum of a raw scan, to check the exact aggregate against. */
static int scan_sum(tally_db *db, const char *key, int64_t from, int64_t to, uint64_t *count,
		    double *sum)
{
	tally_scan *s;
	int rc = tally_scan_open(db, TABLE, key, from, to, &s);
	if (rc)
		return rc;
	size_t col = SIZE_MAX;
	for (size_t i = 0; i < tally_scan_columns(s); i++) {
		const char *name;
		enum tally_type type;
		if (tally_scan_column(s, i, &name, &type) == 0 && strcmp(name, FIELD) == 0)
			col = i;
	}
	tally_row row;
	*count = 0;
	*sum = 0;
	while ((rc = tally_scan_next(s, &row)) == 1)
		if (col < row.n_values && row.values[col].type == TALLY_T_F64) {
			(*count)++;
			*sum += row.values[col].v.f64;
		}
	tally_scan_close(s);
	return rc;
}

/* ---------------------------------------------------------------- main */

int main(int argc, char **argv)
{
	demo_opts o;
	if (parse_args(argc, argv, &o))
		return 2;
	if (prepare_dir(o.dir))
		return 1;

	/* A fixed Monday, so every run shows the same day. */
	struct tm tmday = {.tm_year = 2025 - 1900, .tm_mon = 5, .tm_mday = 2};
	const int64_t day = (int64_t)timegm(&tmday) * TALLY_NS_PER_SEC;

	tally_options opt;
	tally_options_init(&opt);
	opt.shards = o.shards;
	tally_db *db;
	int rc = tally_db_open(o.dir, &opt, &db);
	if (rc)
		return fail_with("tally_db_open", rc);

	size_t total = (size_t)o.cameras * o.events;
	camera *cams = calloc(o.cameras, sizeof *cams);
	int64_t *ts = malloc(total * sizeof *ts);
	double *speed = malloc(total * sizeof *speed);
	worker *wks = calloc(o.shards, sizeof *wks);
	if (!cams || !ts || !speed || !wks) {
		fprintf(stderr, "tally-demo: out of memory for %s events\n", commas(total));
		return 1;
	}
	for (unsigned c = 0; c < o.cameras; c++) {
		cams[c].ts = ts + (size_t)c * o.events;
		cams[c].speed = speed + (size_t)c * o.events;
		cams[c].n = o.events;
	}
	pthread_barrier_t bar;
	pthread_barrier_init(&bar, NULL, o.shards + 1);
	for (unsigned i = 0; i < o.shards; i++) {
		worker *wk = &wks[i];
		*wk = (worker){.id = i, .o = &o, .cams = cams, .day = day, .bar = &bar};
		if ((rc = tally_writer_open(db, (int)i, &wk->w)))
			return fail_with("tally_writer_open", rc);
		if ((rc = pthread_create(&wk->th, NULL, worker_main, wk))) {
			fprintf(stderr, "tally-demo: pthread_create: %s\n", strerror(rc));
			return 1;
		}
	}
	pthread_barrier_wait(&bar); /* data generated */

	/* The cameras to look at: the first that went offline, the first
	 * that did not. */
	int ca = -1, cb = -1;
	for (unsigned c = 0; c < o.cameras; c++) {
		if (cams[c].offline && ca < 0)
			ca = (int)c;
		if (!cams[c].offline && cb < 0)
			cb = (int)c;
	}
	const camera *A = ca >= 0 ? &cams[ca] : NULL, *B = cb >= 0 ? &cams[cb] : NULL;
	/* Hours around A's outage; 5-minute windows across its start; an
	 * unaligned range inside it. Without an offline camera: the morning. */
	int64_t of = A ? A->out_from : 7 * TALLY_1H + 40 * 60 * TALLY_NS_PER_SEC;
	int64_t ot = A ? A->out_to : of + 3 * TALLY_1H;
	int h_lo = (int)(of / TALLY_1H) - 1, h_hi = (int)((ot - 1) / TALLY_1H) + 1;
	h_lo = h_lo < 0 ? 0 : h_lo;
	h_hi = h_hi > 23 ? 23 : h_hi;
	int64_t e_start = (of / TALLY_1H + 1) * TALLY_1H + (3 * 60 + 17) * TALLY_NS_PER_SEC;
	view_ranges vr = {
		.day = day,
		.h_from = day + h_lo * TALLY_1H,
		.h_to = day + (h_hi + 1) * TALLY_1H,
		.n_hours = h_hi - h_lo + 1,
		.m_from = day + of / TALLY_5M * TALLY_5M - 2 * TALLY_5M,
		.e_from = day + e_start,
		.e_to = day + e_start + TALLY_1H + (55 * 60 + 24) * TALLY_NS_PER_SEC,
	};
	cam_view va_before = {0}, va = {0}, vb = {0};

	pthread_barrier_wait(&bar); /* the day is in, the backlogs are not */
	if (A && view_query(db, A->id, &vr, &va_before))
		return 1;
	pthread_barrier_wait(&bar); /* backlogs go */
	for (unsigned i = 0; i < o.shards; i++)
		pthread_join(wks[i].th, NULL);
	uint64_t bin_events = 0, lp_lines = 0, lp_events = 0, lp_bytes = 0;
	double b0 = INFINITY, b1 = 0, l0 = INFINITY, l1 = 0;
	for (unsigned i = 0; i < o.shards; i++) {
		worker *wk = &wks[i];
		if (wk->rc) {
			fprintf(stderr, "tally-demo: writer %u: %s\n", i, wk->err);
			return 1;
		}
		bin_events += wk->bin_events;
		lp_lines += wk->lp_lines;
		lp_events += wk->lp_accepted;
		lp_bytes += wk->lp_len;
		b0 = fmin(b0, wk->t0);
		b1 = fmax(b1, wk->t1);
		l0 = fmin(l0, wk->t2);
		l1 = fmax(l1, wk->t3);
		tally_writer_close(wk->w);
		free(wk->lp);
	}
	double ts0 = now_s();
	if ((rc = tally_db_sync(db)))
		return fail_with("tally_db_sync", rc);
	double sync_s = now_s() - ts0;

	uint64_t offline = 0, backlog = 0, expect_late = 0;
	for (unsigned c = 0; c < o.cameras; c++) {
		offline += cams[c].offline != 0;
		backlog += cams[c].b1 - cams[c].b0;
		/* The default late threshold is the finest level, 5 minutes. */
		expect_late += camera_expected_late(&cams[c], TALLY_5M);
	}

	/* ---- what went in */
	say("tally demo: one day of speed-camera traffic, 2025-06-02 UTC\n");
	say("  store    %s  (%u shards, a writer thread each)\n", o.dir, o.shards);
	say("  cameras  %s x %s events; %s of them offline for %u h, backlog sent last\n",
	    commas(o.cameras), commas(o.events), commas(offline), o.outage_hours);
	double bs = b1 - b0, ls = l1 - l0;
	say("\nIngest                       events    seconds    events/s\n");
	say("  binary batches (day)   %11s  %9.3f  %8.2f M\n", commas(bin_events), bs,
	    bs > 0 ? (double)bin_events / bs / 1e6 : 0);
	say("  line protocol (late)   %11s  %9.3f  %8.2f M  (%s of text, %.0f MB/s)\n",
	    commas(lp_events), ls, ls > 0 ? (double)lp_events / ls / 1e6 : 0, mb(lp_bytes),
	    ls > 0 ? (double)lp_bytes / ls / 1e6 : 0);
	say("  sync (fsync the WALs)               %9.3f\n", sync_s);

	tally_stats st;
	if ((rc = tally_db_stats(db, &st)))
		return fail_with("tally_db_stats", rc);
	say("\nStats\n");
	say("  events %s   late %s   keys %s   tables %s\n", commas(st.events),
	    commas(st.late_events), commas(st.keys), commas(st.tables));
	say("  memory %s (memtables %s, rollups %s)   WAL on disk %s\n",
	    mb(st.memtable_bytes + st.rollup_bytes), mb(st.memtable_bytes), mb(st.rollup_bytes),
	    mb(st.wal_bytes));
	int ok = st.late_events == expect_late && st.events == bin_events + lp_events &&
		 lp_events == lp_lines && lp_lines == backlog;
	if (expect_late == backlog)
		say("  late events %s = backlog events sent %s: %s\n", commas(st.late_events),
		    commas(backlog), ok ? "OK, each counted once" : "MISMATCH");
	else
		say("  late events %s, expected %s of the %s backlog events: %s\n",
		    commas(st.late_events), commas(expect_late), commas(backlog),
		    ok ? "OK" : "MISMATCH");

	/* ---- one offline camera next to one that stayed online */
	if (A && view_query(db, A->id, &vr, &va))
		return 1;
	if (B && view_query(db, B->id, &vr, &vb))
		return 1;
	const cam_view *q = A ? &va : &vb;
	say("\nAverage speed, km/h (events)\n");
#define LABEL_W 27
	say("%-*s", LABEL_W, "");
	if (A) {
		char h[64];
		snprintf(h, sizeof h, "%s, offline %s-%s", A->id, hhmm(A->out_from, 0),
			 hhmm(A->out_to, 0));
		say("%-*s", 2 * CELL_W, h);
	}
	if (B)
		say("%s", B->id);
	say("\n%-*s", LABEL_W, "");
	if (A)
		say("%-*s%-*s", CELL_W, "before backlog", CELL_W, "after backlog");
	if (B)
		say("online");
	say("\n");
#define ROW(kind, label, field)                                               \
	do {                                                                  \
		say("  %-7s%-*s", kind, LABEL_W - 9, label);                  \
		if (A)                                                        \
			say("%s%s", cell(&va_before.field), cell(&va.field)); \
		if (B)                                                        \
			say("%s", cell(&vb.field));                           \
		say("\n");                                                    \
	} while (0)
	ROW("1d", "whole day", day);
	for (int h = 0; h < vr.n_hours; h++) {
		char label[32];
		snprintf(label, sizeof label, "%s-%s", hhmm((h_lo + h) * TALLY_1H, 0),
			 hhmm((h_lo + h + 1) * TALLY_1H, 0));
		ROW("1h", label, hours[h]);
	}
	for (int k = 0; k < 4; k++) {
		char label[32];
		snprintf(label, sizeof label, "%s-%s", hhmm(vr.m_from - day + k * TALLY_5M, 0),
			 hhmm(vr.m_from - day + (k + 1) * TALLY_5M, 0));
		ROW("5m", label, m5[k]);
	}
	{
		char label[32];
		snprintf(label, sizeof label, "%s-%s", hhmm(vr.e_from - day, 1),
			 hhmm(vr.e_to - day, 1));
		ROW("exact", label, exact);
	}
#undef ROW
	if (A)
		say("  The late events landed in the windows they belong to: the gaps (-)\n"
		    "  filled in and the day's average was corrected as they arrived.\n");
	/* The exact average must equal one computed from the raw events. */
	int exact_ok = 1;
	for (int i = 0; i < 2; i++) {
		const camera *cam = i ? B : A;
		const cam_view *v = i ? &vb : &va;
		uint64_t n;
		double sum;
		if (!cam)
			continue;
		if ((rc = scan_sum(db, cam->id, vr.e_from, vr.e_to, &n, &sum)))
			return fail_with("tally_scan", rc);
		exact_ok &= n == v->exact.count && fabs(sum - v->exact.sum) <= 1e-9 * fabs(sum);
	}
	say("  query times (best of %d): day %.1f us, hours %.1f us, 5 min %.1f us, exact %.1f "
	    "us\n",
	    VIEW_RUNS, q->us_day, q->us_hours, q->us_m5, q->us_exact);
	say("  the exact range average equals a raw scan's: %s\n", exact_ok ? "yes" : "NO");

	/* Every camera at once. */
	top_entry top[5];
	int n_top;
	uint64_t seen;
	double took;
	int64_t t_from = day + 12 * TALLY_1H, t_to = t_from + TALLY_1H;
	if ((rc = top_fastest(db, t_from, t_to, top, 5, &n_top, &seen, &took)))
		return fail_with("tally_query_keys", rc);
	say("\nFastest cameras %s-%s (all %s cameras aggregated in %.0f us)\n",
	    hhmm(t_from - day, 0), hhmm(t_to - day, 0), commas(seen), took);
	for (int i = 0; i < n_top; i++)
		say("  %d. %s  %s\n", i + 1, top[i].key, cell(&top[i].a));

	say("\nThe store stays in %s; the next run starts it afresh.\n", o.dir);
	tally_db_close(db);
	pthread_barrier_destroy(&bar);
	free(wks);
	free(cams);
	free(ts);
	free(speed);
	return ok && exact_ok ? 0 : 1;
}
