/*
 * test_retention.c — retention per table and per rollup level
 * (engine/retention.c).
 *
 * The model: events at random times over the last 120 days, written in
 * rounds interleaved with late writes, flushes, merges (so sealing) and
 * retention passes, with rules raw 30d, 5m 60d, 1h and 1d 90d. After every
 * step every query the horizons allow equals brute force over the events
 * written (which all lie past the horizon the query checked), and every
 * query reaching before them is refused with TALLY_EEXPIRED: never a
 * smaller answer. The passes must have dropped parts and cut others to
 * their rollups, and the directory must shrink. Then a kill -9 at each
 * step of a pass, and reopening.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "testutil.h"

#define KEYS   6
#define SPAN_D 120
#define RULES  "m:raw=30d,5m=60d,1h=90d,1d=90d;other:raw=1d"
#define MAXEV  40000

static const int64_t keep[4] = {30 * TALLY_1D, 60 * TALLY_1D, 90 * TALLY_1D, 90 * TALLY_1D};

typedef struct ev {
	int k;
	int64_t ts;
	double v;
} ev;

typedef struct model {
	ev e[MAXEV];
	int n;
	tu_rng r;
	int64_t now;
} model;

static int64_t wall(void)
{
	struct timespec t;
	clock_gettime(CLOCK_REALTIME, &t);
	return (int64_t)t.tv_sec * TALLY_NS_PER_SEC + t.tv_nsec;
}

static int64_t floor_day(int64_t t)
{
	return t / TALLY_1D * TALLY_1D - (t % TALLY_1D < 0 ? TALLY_1D : 0);
}

/* class 0 raw, 1 + l level l; as the engine must compute it */
static int64_t horizon(int cls)
{
	return floor_day(wall() - keep[cls]);
}

static tally_options opts(void)
{
	tally_options o = tu_quiet_opts();
	o.retention = RULES;
	return o;
}

/* n events of random keys at random times in [lo, hi), synced. */
static void write_events(tally_db *db, model *m, int n, int64_t lo, int64_t hi)
{
	char *buf = malloc((size_t)n * 64), *p = buf;
	for (int i = 0; i < n && m->n < MAXEV; i++) {
		ev *e = &m->e[m->n++];
		e->k = (int)tu_below(&m->r, KEYS);
		e->ts = lo + (int64_t)tu_below(&m->r, (uint64_t)(hi - lo));
		e->v = (double)tu_below(&m->r, 1000);
		p += sprintf(p, "m,k=key%d v=%.0f %lld\n", e->k, e->v, (long long)e->ts);
	}
	cr_assert_geq(tu_write_synced(db, buf, (size_t)(p - buf)), 0, "%s", tally_errmsg());
	free(buf);
}

static tally_agg brute(const model *m, int k, int64_t from, int64_t to)
{
	tally_agg a = TU_AGG_EMPTY;
	for (int i = 0; i < m->n; i++)
		if (m->e[i].k == k && m->e[i].ts >= from && m->e[i].ts < to)
			tu_agg_add(&a, m->e[i].v);
	return a;
}

static void same_agg(const tally_agg *got, const tally_agg *want, const char *what, int k)
{
	cr_assert(got->count == want->count && got->sum == want->sum &&
			  (!want->count || (got->min == want->min && got->max == want->max)),
		  "%s key%d: count %llu sum %g min %g max %g, brute force %llu %g %g %g", what, k,
		  (unsigned long long)got->count, got->sum, got->min, got->max,
		  (unsigned long long)want->count, want->sum, want->min, want->max);
}

static void check_agg(tally_db *db, const model *m, int k, int64_t from, int64_t to,
		      const char *what)
{
	char key[16];
	sprintf(key, "key%d", k);
	tally_agg a;
	cr_assert_eq(tally_query_agg(db, "m", "v", key, from, to, &a), 0, "%s: %s", what,
		     tally_errmsg());
	tally_agg want = brute(m, k, from, to);
	same_agg(&a, &want, what, k);
}

static void check_refused_agg(tally_db *db, int k, int64_t from, int64_t to, const char *what)
{
	char key[16];
	sprintf(key, "key%d", k);
	tally_agg a;
	int rc = tally_query_agg(db, "m", "v", key, from, to, &a);
	cr_assert_eq(rc, TALLY_EEXPIRED, "%s: rc %d (%s), want TALLY_EEXPIRED", what, rc,
		     tally_errmsg());
	cr_assert(strstr(tally_errmsg(), "table 'm'") && strstr(tally_errmsg(), "expired"), "%s",
		  tally_errmsg());
}

static void check_scan(tally_db *db, const model *m, int k, int64_t from)
{
	char key[16];
	sprintf(key, "key%d", k);
	tally_scan *sc;
	int rc = tally_scan_open(db, "m", key, from, INT64_MAX, &sc);
	cr_assert_eq(rc, 0, "scan from %lld: %s", (long long)from, tally_errmsg());
	tally_row row;
	tally_agg got = TU_AGG_EMPTY;
	while ((rc = tally_scan_next(sc, &row)) == 1)
		tu_agg_add(&got, row.values[0].v.f64);
	cr_assert_eq(rc, 0, "%s", tally_errmsg());
	tally_scan_close(sc);
	tally_agg want = brute(m, k, from, INT64_MAX);
	same_agg(&got, &want, "scan", k);
}

static void check_series(tally_db *db, const model *m, int k, int64_t step, int64_t from)
{
	char key[16];
	sprintf(key, "key%d", k);
	size_t cap = (size_t)((wall() - from) / step + 4), n;
	tally_bucket *b = calloc(cap, sizeof *b);
	cr_assert_eq(tally_query_series(db, "m", "v", key, step, from, INT64_MAX, b, cap, &n), 0,
		     "series from %lld: %s", (long long)from, tally_errmsg());
	uint64_t total = 0;
	for (size_t i = 0; i < n; i++) {
		tally_agg want = brute(m, k, b[i].start, b[i].start + step);
		same_agg(&b[i].agg, &want, "series bucket", k);
		total += b[i].agg.count;
	}
	cr_assert_eq(total, brute(m, k, from, INT64_MAX).count, "series key%d: missing buckets", k);
	free(b);
}

/* Everything a caller may ask equals brute force; everything reaching
 * past a horizon is refused. */
static void check_all(tally_db *db, model *m)
{
	int64_t raw = horizon(0), h5 = horizon(1), h1 = horizon(2);
	int64_t r;
	cr_assert_eq(tally_db_retained_from(db, "m", 0, &r), 0);
	cr_assert_eq(r, raw, "retained_from raw %lld, want %lld", (long long)r, (long long)raw);
	cr_assert_eq(tally_db_retained_from(db, "m", TALLY_5M, &r), 0);
	cr_assert_eq(r, h5);
	for (int k = 0; k < KEYS; k++) {
		check_agg(db, m, k, raw, INT64_MAX, "agg from the raw horizon");
		check_agg(db, m, k, raw + (int64_t)tu_below(&m->r, 20 * TALLY_1D),
			  wall() - (int64_t)tu_below(&m->r, 5 * TALLY_1D), "agg past raw");
		/* rollups only: whole days, whole 5m windows of the 5m-kept
		 * range, ending anywhere past the raw horizon */
		check_agg(db, m, k, h1, raw, "whole days without raw");
		int64_t f5 = h5 + (int64_t)tu_below(&m->r, 29 * 288) * TALLY_5M;
		check_agg(db, m, k, f5, raw + (int64_t)tu_below(&m->r, TALLY_1D), "5m, no raw");
		check_scan(db, m, k, raw);
		check_series(db, m, k, TALLY_1D, h1);
		check_series(db, m, k, 3 * TALLY_5M, h5);
		/* refused, never smaller */
		check_refused_agg(db, k, INT64_MIN, INT64_MAX, "all time");
		check_refused_agg(db, k, raw - 1, INT64_MAX, "one ns before raw");
		check_refused_agg(db, k, h5 + 1, raw + 1, "unaligned before raw");
		check_refused_agg(db, k, h1 - TALLY_1D, raw, "a day before 1d");
		char key[16];
		sprintf(key, "key%d", k);
		tally_scan *sc;
		cr_assert_eq(tally_scan_open(db, "m", key, raw - 1, INT64_MAX, &sc),
			     TALLY_EEXPIRED);
		tally_bucket b[4];
		size_t n;
		cr_assert_eq(tally_query_series(db, "m", "v", key, TALLY_5M, h5 - TALLY_5M,
						INT64_MAX, b, 4, &n),
			     TALLY_EEXPIRED);
	}
	/* all keys at once */
	tally_keys_iter *it;
	cr_assert_eq(tally_query_keys(db, "m", "v", raw, INT64_MAX, &it), 0, "%s", tally_errmsg());
	const char *key;
	tally_agg a;
	int seen = 0;
	while (tally_keys_next(it, &key, &a) == 1) {
		int k = key[3] - '0';
		tally_agg want = brute(m, k, raw, INT64_MAX);
		same_agg(&a, &want, "keys", k);
		seen++;
	}
	tally_keys_close(it);
	cr_assert_eq(seen, KEYS);
	cr_assert_eq(tally_query_keys(db, "m", "v", INT64_MIN, INT64_MAX, &it), TALLY_EEXPIRED);
}

static uint64_t dir_bytes(const char *dir)
{
	char path[4200];
	snprintf(path, sizeof path, "%s/parts", dir);
	DIR *d = opendir(path);
	uint64_t sum = 0;
	struct dirent *e;
	while (d && (e = readdir(d))) {
		struct stat st;
		char p[8400];
		snprintf(p, sizeof p, "%s/%s", path, e->d_name);
		if (!stat(p, &st) && S_ISREG(st.st_mode))
			sum += (uint64_t)st.st_size;
	}
	if (d)
		closedir(d);
	return sum;
}

/* A fresh directory and database with options o, and an empty model
 * seeded for test name. */
static tally_db *start(const char *name, tally_options *o, char **dir, model *m)
{
	*dir = tu_tmpdir();
	m->n = 0;
	m->r.s = tu_seed(name);
	tally_db *db;
	cr_assert_eq(tally_db_open(*dir, o, &db), 0, "%s", tally_errmsg());
	return db;
}

Test(retention, model_interleaved, .timeout = 240)
{
	char *dir;
	static model m;
	tally_options o = opts();
	tally_db *db = start("retention_model", &o, &dir, &m);
	int64_t now = wall(), lo = now - SPAN_D * TALLY_1D, hi = now - 60 * TALLY_NS_PER_SEC;
	uint64_t before = 0, after = 0;
	for (int round = 0; round < 6; round++) {
		write_events(db, &m, 3000, lo, hi);
		/* late ones: into the expired and raw-expired past too */
		write_events(db, &m, 300, lo, lo + 70 * TALLY_1D);
		check_all(db, &m);
		cr_assert_eq(tally_db_flush(db), 0, "%s", tally_errmsg());
		check_all(db, &m);
		cr_assert_eq(tally_db_merge(db), 0, "%s", tally_errmsg());
		if (round == 2)
			before = dir_bytes(dir);
		if (round >= 2) {
			cr_assert_eq(tally_db_retain(db), 0, "%s", tally_errmsg());
			check_all(db, &m);
		}
		if (round == 2)
			after = dir_bytes(dir);
	}
	cr_assert_eq(tally_db_flush(db), 0);
	cr_assert_eq(tally_db_merge(db), 0, "%s", tally_errmsg());
	cr_assert_eq(tally_db_retain(db), 0, "%s", tally_errmsg());
	check_all(db, &m);
	tally_stats st;
	cr_assert_eq(tally_db_stats(db, &st), 0);
	cr_assert(st.retention_passes >= 5 && st.retention_parts_dropped > 0 &&
			  st.retention_parts_raw_gone > 0 && st.retention_bytes_freed > 0 &&
			  st.retention_rows_dropped > 0,
		  "passes %llu dropped %llu raw gone %llu freed %llu rows %llu",
		  (unsigned long long)st.retention_passes,
		  (unsigned long long)st.retention_parts_dropped,
		  (unsigned long long)st.retention_parts_raw_gone,
		  (unsigned long long)st.retention_bytes_freed,
		  (unsigned long long)st.retention_rows_dropped);
	cr_assert(st.retention_last_drop > now - 600 * TALLY_NS_PER_SEC &&
		  st.retention_last_pass >= st.retention_last_drop);
	tally_db_close(db);
	/* reopen: cut parts open as rollup-only, answers unchanged */
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	check_all(db, &m);
	/* a pass with nothing left to do changes nothing */
	uint64_t mid = dir_bytes(dir);
	cr_assert_eq(tally_db_retain(db), 0, "%s", tally_errmsg());
	cr_assert_eq(dir_bytes(dir), mid);
	check_all(db, &m);
	tally_db_close(db);
	cr_assert(after < before, "parts hold %llu bytes after the first pass, %llu before",
		  (unsigned long long)after, (unsigned long long)before);
	tu_rmrf(dir);
	free(dir);
}

/* The merger meets a partition whose sealed segment has lost its raw
 * events, then as many late rows as the segment holds: it must leave the
 * partition alone (it cannot rewrite rollup-only parts), and the next
 * pass cuts the late parts too. */
Test(retention, late_rows_into_raw_expired_partition)
{
	char *dir;
	static model m;
	tally_options o = opts();
	tally_db *db = start("retention_late", &o, &dir, &m);
	int64_t day = floor_day(wall() - 40 * TALLY_1D);
	write_events(db, &m, 2000, day, day + TALLY_1D);
	write_events(db, &m, 10, wall() - 3600 * TALLY_NS_PER_SEC, wall() - TALLY_NS_PER_SEC);
	cr_assert_eq(tally_db_flush(db), 0);
	cr_assert_eq(tally_db_merge(db), 0);
	cr_assert_eq(tally_db_retain(db), 0, "%s", tally_errmsg());
	for (int i = 0; i < 5; i++) {
		write_events(db, &m, 1000, day, day + TALLY_1D);
		cr_assert_eq(tally_db_flush(db), 0);
		cr_assert_eq(tally_db_merge(db), 0, "merge %d: %s", i, tally_errmsg());
	}
	for (int k = 0; k < KEYS; k++)
		check_agg(db, &m, k, day, day + TALLY_1D, "the raw-expired day");
	tally_stats st;
	cr_assert_eq(tally_db_stats(db, &st), 0);
	uint64_t cut = st.retention_parts_raw_gone;
	cr_assert_eq(tally_db_retain(db), 0, "%s", tally_errmsg());
	cr_assert_eq(tally_db_stats(db, &st), 0);
	cr_assert_gt(st.retention_parts_raw_gone, cut);
	for (int k = 0; k < KEYS; k++)
		check_agg(db, &m, k, day, day + TALLY_1D, "the raw-expired day, all cut");
	tally_db_close(db);
	tu_rmrf(dir);
	free(dir);
}

Test(retention, rules_checked_and_changed_at_run_time)
{
	char *dir = tu_tmpdir();
	tally_options o = tu_quiet_opts();
	o.retention = "m:raw=30d,5m=10d";
	tally_db *db;
	cr_assert_eq(tally_db_open(dir, &o, &db), TALLY_EINVAL);
	cr_assert(strstr(tally_errmsg(), "rule 1") && strstr(tally_errmsg(), "coarser"), "%s",
		  tally_errmsg());
	o.retention = NULL;
	tu_rmrf(dir);
	free(dir);
	static model m;
	db = start("retention_rules", &o, &dir, &m);
	int64_t now = wall();
	write_events(db, &m, 500, now - 100 * TALLY_1D, now - TALLY_1D);
	cr_assert_eq(tally_db_flush(db), 0);
	/* no rules: all of time answers */
	check_agg(db, &m, 0, INT64_MIN, INT64_MAX, "no rules");
	const char *bad[] = {"m",
			     "m:raw",
			     "m:raw=9x",
			     "m:7m=1d",
			     "m:raw=1d;m:raw=2d",
			     "m:raw=forever,5m=1d",
			     ":raw=1d",
			     "m:raw=0d"};
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		cr_assert_eq(tally_db_set_retention(db, bad[i]), TALLY_EINVAL, "%s", bad[i]);
		cr_assert(strstr(tally_errmsg(), "retention rule"), "%s: %s", bad[i],
			  tally_errmsg());
	}
	check_agg(db, &m, 0, INT64_MIN, INT64_MAX, "bad rules change nothing");
	/* the default rule, and a table's own beating it */
	cr_assert_eq(tally_db_set_retention(db, "*:raw=30d,5m=60d,1h=90d,1d=90d;x:raw=1d"), 0, "%s",
		     tally_errmsg());
	check_all(db, &m);
	cr_assert_eq(tally_db_retain(db), 0);
	check_all(db, &m);
	cr_assert_eq(tally_db_set_retention(db, NULL), 0);
	int64_t r;
	cr_assert_eq(tally_db_retained_from(db, "m", 0, &r), 0);
	cr_assert_eq(r, INT64_MIN);
	cr_assert_eq(tally_db_retained_from(db, "m", 7, &r), TALLY_ENOTFOUND);
	cr_assert_eq(tally_db_retained_from(db, "nope", 0, &r), TALLY_ENOTFOUND);
	tally_db_close(db);
	tu_rmrf(dir);
	free(dir);
}

/* kill -9 at each step of a pass (TALLY_CRASH_AT): the reopened database
 * answers exactly, holds no stray file, and the next pass completes. */
Test(retention, kill9_during_pass, .timeout = 240)
{
	const char *steps[] = {"retention:after-stub", "retention:before-manifest",
			       "retention:after-manifest"};
	for (size_t s = 0; s < sizeof steps / sizeof *steps; s++) {
		char *dir;
		static model m;
		tally_options o = tu_quiet_opts();
		tally_db *db = start("retention_kill9", &o, &dir, &m);
		int64_t now = wall();
		write_events(db, &m, 4000, now - SPAN_D * TALLY_1D, now - 60 * TALLY_NS_PER_SEC);
		cr_assert_eq(tally_db_flush(db), 0);
		cr_assert_eq(tally_db_merge(db), 0);
		tally_db_close(db);
		pid_t pid = fork();
		cr_assert_geq(pid, 0);
		if (pid == 0) {
			setenv("TALLY_CRASH_AT", steps[s], 1);
			tally_options oc = opts();
			if (tally_db_open(dir, &oc, &db))
				_exit(3);
			tally_db_retain(db);
			_exit(4);
		}
		int status;
		waitpid(pid, &status, 0);
		cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "%s: status %d",
			  steps[s], status);
		o = opts();
		cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s: %s", steps[s], tally_errmsg());
		char path[4200], found[4300];
		snprintf(path, sizeof path, "%s/parts", dir);
		cr_assert_eq(tu_find_files(path, ".tmp", found, sizeof found), 0, "%s: %s",
			     steps[s], found);
		check_all(db, &m);
		cr_assert_eq(tally_db_retain(db), 0, "%s", tally_errmsg());
		check_all(db, &m);
		tally_db_close(db);
		tu_rmrf(dir);
		free(dir);
	}
}
