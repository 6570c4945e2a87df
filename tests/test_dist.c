/*
 * test_dist.c — exact distributions against brute force: quantiles,
 * threshold counts and histograms over aligned and unaligned ranges, with
 * late events, two shards, flushes, merges, sealing and reopen, compared
 * for exact equality with the sorted raw values; and, with a small bound
 * on a window's distinct values, the sketches past it: their reported
 * error bound held against brute force, and exactness wherever no sketch
 * was involved.
 */
#include <criterion/criterion.h>

#include "dcount.h"
#include "dist.h"
#include "distmodel.h"
#include "testutil.h"

/* docs/formats.md, "dist": the bytes after the basic payload */
#define DOC_EXACT  "ffffffff 00100000 02010000 2e500d00 00d04003"
#define DOC_SKETCH "ffffffff 01000000 02030000 54888d"

#define T0   INT64_C(1700006400000000000) /* a UTC midnight + 1 day */
#define CAMS 3
#define SPAN (3 * TALLY_1D)

static unsigned n_sketched; /* answers check_range saw with an error bound */

static tally_options opts(void)
{
	tally_options o;
	tally_options_init(&o);
	o.log_fn = tu_quiet_log;
	o.no_background = 1;
	o.shards = 2;
	o.distributions = "traffic.speed:0.1";
	return o;
}

/* Speeds in tenths for camera cam: plain_speed (tests/distmodel.h), or
 * the sketch test's (sketch_speed). */
static unsigned (*speed_of)(tu_rng *r, int cam) = plain_speed;

/* Whether every answer must be exact (no window past its bound), else
 * the camera whose answers must (-1: none). */
static int all_exact = 1, exact_cam = -1;

/* n events through shard s's writer: speeds with one decimal, a few
 * repeated values, every 5th event late by up to two days. */
static void write_in(tally_db *db, tu_rng *r, unsigned s, int n, int only_cam, int64_t t0,
		     int64_t span)
{
	write_events(db, r, s, n, CAMS, only_cam, t0, span, speed_of, 1);
}

static void write_some(tally_db *db, tu_rng *r, unsigned s, int n)
{
	write_in(db, r, s, n, -1, T0, SPAN);
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return (x > y) - (x < y);
}

static void check_range(tally_db *db, int cam, int64_t from, int64_t to, tu_rng *r)
{
	size_t n;
	double *v = values_of(cam, from, to, &n);
	char key[8];
	sprintf(key, "C%d", cam);
	tally_dist *d;
	cr_assert_eq(tally_query_dist(db, "traffic", "speed", key, from, to, &d), 0, "%s",
		     tally_errmsg());
	cr_assert_eq(tally_dist_count(d), n, "[%lld, %lld): %llu values, brute force %zu",
		     (long long)from, (long long)to, (unsigned long long)tally_dist_count(d), n);
	double e = tally_dist_error(d);
	cr_assert(e == 0 || (!all_exact && cam != exact_cam && e == DIST_SKETCH_ALPHA),
		  "camera %d over [%lld, %lld): error %g", cam, (long long)from, (long long)to, e);
	if (e > 0)
		n_sketched++;
	const double qs[] = {0, 0.5, 0.85, 0.15, 1, 0.999, 1e-9, (double)tu_below(r, 1001) / 1000};
	for (size_t i = 0; i < sizeof qs / sizeof *qs; i++) {
		double got;
		int rc = tally_dist_quantile(d, qs[i], &got);
		if (!n) {
			cr_assert_eq(rc, TALLY_ENOTFOUND);
			continue;
		}
		cr_assert_eq(rc, 0);
		double want = v[tu_exact_rank(qs[i], n) - 1];
		/* the bound as reported, and a last bit of slack for the
		 * rounding of the bucket's value */
		cr_assert(e ? fabs(got - want) <= e * fabs(want) * (1 + 1e-9) : got == want,
			  "q %.17g over [%lld, %lld): %.17g, brute force %.17g (error %g)", qs[i],
			  (long long)from, (long long)to, got, want, e);
	}
	const double lim[] = {50, 57.3, 80.1, 30, 1000, 0, 0.2, 250.1};
	for (size_t i = 0; i < sizeof lim / sizeof *lim; i++) {
		/* exact: the counts strictly above and below; a sketch: a value
		 * further than the bound from the limit counts on its side */
		double lo = e ? lim[i] / (1 + e * (1 + 1e-9)) : lim[i];
		double hi = e ? lim[i] / (1 - e * (1 + 1e-9)) : lim[i];
		uint64_t above_min = 0, above_max = 0, below_min = 0, below_max = 0;
		for (size_t j = 0; j < n; j++) {
			above_min += v[j] > hi;
			above_max += v[j] > lo;
			below_min += v[j] < lo;
			below_max += v[j] < hi;
		}
		uint64_t above = tally_dist_count_above(d, lim[i]);
		uint64_t below = tally_dist_count_below(d, lim[i]);
		cr_assert(above >= above_min && above <= above_max,
			  "above %g: %llu, brute force %llu..%llu (error %g)", lim[i],
			  (unsigned long long)above, (unsigned long long)above_min,
			  (unsigned long long)above_max, e);
		cr_assert(below >= below_min && below <= below_max,
			  "below %g: %llu, brute force %llu..%llu (error %g)", lim[i],
			  (unsigned long long)below, (unsigned long long)below_min,
			  (unsigned long long)below_max, e);
	}
	const double edges[] = {30, 40.5, 50, 60.1, 80, 120, 200};
	uint64_t h[6], hb[6] = {0};
	cr_assert_eq(tally_dist_histogram(d, edges, 7, h), 0);
	for (size_t j = 0; j < n; j++)
		for (int b = 0; b < 6; b++)
			hb[b] += v[j] >= edges[b] && v[j] < edges[b + 1];
	uint64_t sum = 0, in_min = 0, in_max = 0;
	double s = 1 + e * (1 + 1e-9), t = 1 - e * (1 + 1e-9);
	for (size_t j = 0; j < n; j++) {
		in_min += v[j] >= edges[0] / t && v[j] < edges[6] / s;
		in_max += v[j] >= edges[0] / s && v[j] < edges[6] / t;
	}
	for (int b = 0; b < 6; b++) {
		cr_assert(e || h[b] == hb[b], "bin %d: %llu, brute force %llu", b,
			  (unsigned long long)h[b], (unsigned long long)hb[b]);
		sum += h[b];
	}
	/* a sketch may move a value near an edge across it: the bins
	 * together hold every value further than the bound inside them */
	cr_assert(sum >= in_min && sum <= in_max, "bins %llu, brute force %llu..%llu",
		  (unsigned long long)sum, (unsigned long long)in_min, (unsigned long long)in_max);
	tally_dist_free(d);
	free(v);
}

static void check_all(tally_db *db, tu_rng *r)
{
	for (int cam = 0; cam < CAMS; cam++) {
		/* aligned: whole days, hours, a 5-minute window; and the lot */
		check_range(db, cam, T0, T0 + TALLY_1D, r);
		check_range(db, cam, T0 + TALLY_1D + 7 * TALLY_1H, T0 + TALLY_1D + 9 * TALLY_1H, r);
		check_range(db, cam, T0 + 36 * TALLY_5M, T0 + 37 * TALLY_5M, r);
		check_range(db, cam, INT64_MIN, INT64_MAX, r);
		/* across a window boundary with no whole window inside: both
		 * sides are raw (dist_edges_without_a_whole_window lost the right
		 * side) */
		check_range(db, cam, T0 + 100 * TALLY_5M - 250 * TALLY_NS_PER_SEC,
			    T0 + 100 * TALLY_5M + 290 * TALLY_NS_PER_SEC, r);
		for (int i = 0; i < 6; i++) {
			int64_t a = T0 - TALLY_1H + (int64_t)tu_below(r, (uint64_t)SPAN);
			int64_t b = a + (int64_t)tu_below(r, (uint64_t)(2 * TALLY_1D));
			check_range(db, cam, a, b, r);
		}
	}
}

Test(dist, quantiles_counts_and_histograms_equal_brute_force)
{
	uint64_t seed = tu_seed("dist");
	tu_rng r = {seed};
	n_evs = 0;
	char *dir = tu_tmpdir();
	tally_options o = opts();
	tally_db *db;
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	write_some(db, &r, 0, 3000);
	write_some(db, &r, 1, 2000);
	check_all(db, &r); /* memtables only */
	cr_assert_eq(tally_db_flush(db), 0, "%s", tally_errmsg());
	check_all(db, &r); /* parts */
	for (int round = 0; round < 4; round++) {
		write_some(db, &r, (unsigned)round % 2, 1500); /* late into flushed windows */
		cr_assert_eq(tally_db_flush(db), 0, "%s", tally_errmsg());
	}
	write_some(db, &r, 1, 700);
	check_all(db, &r); /* many parts and a memtable */
	cr_assert_eq(tally_db_merge(db), 0, "%s", tally_errmsg());
	tally_stats st;
	tally_db_stats(db, &st);
	cr_assert_geq(st.merges, 1);
	cr_assert_geq(st.sealed_parts, 1, "old partitions should be sealed");
	check_all(db, &r); /* merged and sealed, WAL tail */
	tally_db_close(db);
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	check_all(db, &r); /* reopened: parts and the replayed WAL */
	write_some(db, &r, 0, 1000);
	cr_assert_eq(tally_db_flush(db), 0, "%s", tally_errmsg());
	cr_assert_eq(tally_db_merge(db), 0, "%s", tally_errmsg()); /* late folds into segments */
	check_all(db, &r);
	/* count, sum, min and max of the marked field still equal brute force */
	for (int cam = 0; cam < CAMS; cam++) {
		char key[8];
		sprintf(key, "C%d", cam);
		tally_agg a;
		cr_assert_eq(tally_query_agg(db, "traffic", "speed", key, T0, T0 + TALLY_1D, &a),
			     0);
		uint64_t n = 0;
		double mn = INFINITY, mx = -INFINITY;
		for (size_t i = 0; i < n_evs; i++)
			if (evs[i].cam == cam && evs[i].ts >= T0 && evs[i].ts < T0 + TALLY_1D) {
				n++;
				mn = fmin(mn, evs[i].v);
				mx = fmax(mx, evs[i].v);
			}
		cr_assert_eq(a.count, n);
		cr_assert_eq(a.min, mn);
		cr_assert_eq(a.max, mx);
	}
	tally_db_close(db);
	tu_rmrf(dir);
	free(dir);
	forget_events();
}

Test(dist, unmarked_fields_and_bad_settings_are_refused_by_name)
{
	char *dir = tu_tmpdir();
	tally_options o = opts();
	tally_db *db;
	o.distributions = "traffic.speed:0.3";
	cr_assert_eq(tally_db_open(dir, &o, &db), TALLY_EINVAL);
	cr_assert(strstr(tally_errmsg(), "traffic.speed:0.3"), "%s", tally_errmsg());
	o.distributions = "speed:0.1";
	cr_assert_eq(tally_db_open(dir, &o, &db), TALLY_EINVAL);
	o = opts();
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	tally_writer *w;
	cr_assert_eq(tally_writer_open(db, 0, &w), 0);
	const char *lp = "traffic,camera=KV1 speed=85.2,n=3i 1700000000000000000\n";
	cr_assert_eq(tally_write_lp(w, lp, strlen(lp), TALLY_PREC_NS, NULL), 0);
	tally_writer_close(w);
	tally_dist *d;
	cr_assert_eq(tally_query_dist(db, "traffic", "n", "KV1", 0, INT64_MAX, &d), TALLY_EINVAL);
	cr_assert(strstr(tally_errmsg(), "'n'") && strstr(tally_errmsg(), "not a distribution"),
		  "%s", tally_errmsg());
	cr_assert_eq(tally_query_dist(db, "traffic", "speed", "KV1", 0, INT64_MAX, &d), 0);
	double q;
	cr_assert_eq(tally_dist_quantile(d, 1.5, &q), TALLY_EINVAL);
	cr_assert_eq(tally_dist_quantile(d, 0.85, &q), 0);
	cr_assert_eq(q, 85.2);
	cr_assert_eq(tally_dist_resolution(d), 0.1);
	tally_dist_free(d);
	tally_db_close(db);
	tu_rmrf(dir);
	free(dir);
}

/* Windows written before the field was marked have no distribution: a
 * query reaching them says so instead of answering from part of the
 * values, and merging them with marked windows keeps count/sum/min/max. */
Test(dist, windows_from_before_the_mark_are_refused_not_guessed)
{
	char *dir = tu_tmpdir();
	tally_options o = opts();
	o.distributions = NULL;
	tally_db *db;
	cr_assert_eq(tally_db_open(dir, &o, &db), 0);
	tally_writer *w;
	cr_assert_eq(tally_writer_open(db, 0, &w), 0);
	const char *lp = "traffic,camera=KV1 speed=85.2 1700000000000000000\n";
	cr_assert_eq(tally_write_lp(w, lp, strlen(lp), TALLY_PREC_NS, NULL), 0);
	tally_writer_close(w);
	cr_assert_eq(tally_db_flush(db), 0);
	tally_db_close(db);
	o = opts();
	cr_assert_eq(tally_db_open(dir, &o, &db), 0);
	cr_assert_eq(tally_writer_open(db, 0, &w), 0);
	lp = "traffic,camera=KV1 speed=90.5 1700000001000000000\n";
	cr_assert_eq(tally_write_lp(w, lp, strlen(lp), TALLY_PREC_NS, NULL), 0);
	tally_writer_close(w);
	cr_assert_eq(tally_db_flush(db), 0);
	tally_dist *d;
	int64_t day = INT64_C(1699920000000000000);
	cr_assert_eq(tally_query_dist(db, "traffic", "speed", "KV1", day, day + TALLY_1D, &d),
		     TALLY_EINVAL);
	cr_assert(strstr(tally_errmsg(), "without a distribution"), "%s", tally_errmsg());
	cr_assert_eq(tally_db_merge(db), 0, "%s", tally_errmsg());
	cr_assert_eq(tally_query_dist(db, "traffic", "speed", "KV1", day, day + TALLY_1D, &d),
		     TALLY_EINVAL);
	tally_agg a;
	cr_assert_eq(tally_query_agg(db, "traffic", "speed", "KV1", day, day + TALLY_1D, &a), 0);
	cr_assert_eq(a.count, 2);
	cr_assert_eq(a.min, 85.2);
	cr_assert_eq(a.max, 90.5);
	tally_db_close(db);
	tu_rmrf(dir);
	free(dir);
}

/* Values far apart (a span of units much wider than their number) are
 * combined by sorting rather than by a count per unit: the same answers. */
Test(dist, values_far_apart_combine_by_sorting)
{
	char *dir = tu_tmpdir();
	tally_options o = opts();
	tally_db *db;
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	tally_writer *w;
	cr_assert_eq(tally_writer_open(db, 0, &w), 0);
	const char *lp = "traffic,camera=KV1 speed=90000.5 1700000000000000000\n"
			 "traffic,camera=KV1 speed=-0.3 1700000001000000000\n"
			 "traffic,camera=KV1 speed=90000.5 1700000400000000000\n"
			 "traffic,camera=KV1 speed=7.1 1700000900000000000\n";
	cr_assert_eq(tally_write_lp(w, lp, strlen(lp), TALLY_PREC_NS, NULL), 0);
	tally_writer_close(w);
	for (int pass = 0; pass < 2; pass++) {
		tally_dist *d;
		cr_assert_eq(tally_query_dist(db, "traffic", "speed", "KV1", 0, INT64_MAX, &d), 0);
		double q;
		cr_assert_eq(tally_dist_count(d), 4);
		cr_assert_eq(tally_dist_quantile(d, 0.25, &q), 0);
		cr_assert_eq(q, -0.3);
		cr_assert_eq(tally_dist_quantile(d, 0.5, &q), 0);
		cr_assert_eq(q, 7.1);
		cr_assert_eq(tally_dist_quantile(d, 0.51, &q), 0);
		cr_assert_eq(q, 90000.5);
		cr_assert_eq(tally_dist_count_above(d, 7.1), 2);
		tally_dist_free(d);
		cr_assert_eq(tally_db_flush(db), 0);
	}
	tally_db_close(db);
	tu_rmrf(dir);
	free(dir);
}

/* Like the exact aggregate, a distribution query reaching raw events or
 * windows of a level retention dropped is refused (TALLY_EEXPIRED), not
 * answered from what is left; on whole windows of a kept level it
 * answers. */
Test(dist, ranges_retention_dropped_are_refused)
{
	char *dir = tu_tmpdir();
	tally_options o = opts();
	o.retention = "traffic:raw=1d,5m=1d,1h=1d"; /* days are kept */
	tally_db *db;
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	tally_writer *w;
	cr_assert_eq(tally_writer_open(db, 0, &w), 0);
	char lp[256];
	int n = snprintf(lp, sizeof lp,
			 "traffic,camera=KV1 speed=85.2 %lld\n"
			 "traffic,camera=KV1 speed=90.5 %lld\n",
			 (long long)(T0 + 60 * TALLY_NS_PER_SEC),
			 (long long)(T0 + 3 * TALLY_1D)); /* the newest: day 0 is old */
	cr_assert_eq(tally_write_lp(w, lp, (size_t)n, TALLY_PREC_NS, NULL), 0);
	tally_writer_close(w);
	cr_assert_eq(tally_db_flush(db), 0);
	cr_assert_eq(tally_db_merge(db), 0);
	cr_assert_eq(tally_db_retain(db), 0, "%s", tally_errmsg());
	tally_dist *d;
	cr_assert_eq(tally_query_dist(db, "traffic", "speed", "KV1", T0 + 1, T0 + TALLY_1D, &d),
		     TALLY_EEXPIRED, "%s", tally_errmsg());
	/* hour windows: their level expired, though the part still has them */
	cr_assert_eq(
		tally_query_dist(db, "traffic", "speed", "KV1", T0 + TALLY_1H, T0 + TALLY_1D, &d),
		TALLY_EEXPIRED, "%s", tally_errmsg());
	cr_assert_eq(tally_query_dist(db, "traffic", "speed", "KV1", T0, T0 + TALLY_1D, &d), 0,
		     "%s", tally_errmsg());
	cr_assert_eq(tally_dist_count(d), 1);
	tally_dist_free(d);
	tally_db_close(db);
	tu_rmrf(dir);
	free(dir);
}

/* The sketch test's speeds: camera 0 takes 12 distinct values, under the
 * bound of 16, so its windows and answers stay exact; camera 1 spreads
 * over 0.1 to 250.0 km/h, camera 2 like the others above. */
static unsigned sketch_speed(tu_rng *r, int cam)
{
	switch (cam) {
	case 0: return 500 + 10 * (unsigned)tu_below(r, 12);
	case 1: return 1 + (unsigned)tu_below(r, 2500);
	default: return plain_speed(r, cam);
	}
}

/* Windows past a bound of 16 distinct values fall back to sketches: at
 * flushes (bursts of camera 1 in one 5-minute window; hours and days
 * built from exact 5-minute windows), and in merges of parts (a window
 * whose parts are each under the bound but not together). Every answer that used one reports the
 * error bound and keeps it against brute force; camera 0 never passes the bound and its answers
 * stay exact. */
Test(dist, windows_past_the_bound_are_sketches_within_their_error)
{
	uint64_t seed = tu_seed("dist-sketch");
	tu_rng r = {seed};
	n_evs = 0;
	n_sketched = 0;
	speed_of = sketch_speed;
	all_exact = 0;
	exact_cam = 0;
	char *dir = tu_tmpdir();
	tally_options o = opts();
	o.distributions = "traffic.speed:0.1:16";
	tally_db *db;
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	write_some(db, &r, 0, 2500);
	/* bursts: many distinct values in one 5-minute window, and in the
	 * window 36 that check_all asks alone */
	write_in(db, &r, 1, 200, 1, T0 + TALLY_1D + 40 * TALLY_5M, TALLY_5M);
	write_in(db, &r, 0, 100, 1, T0 + 36 * TALLY_5M, TALLY_5M);
	write_in(db, &r, 0, 100, 0, T0 + 36 * TALLY_5M, TALLY_5M);
	check_all(db, &r); /* memtables keep rows: all exact */
	cr_assert_eq(n_sketched, 0, "memtable rows are exact");
	cr_assert_eq(tally_db_flush(db), 0, "%s", tally_errmsg());
	check_all(db, &r); /* parts: the bursts' windows, hours and days past the bound */
	cr_assert_gt(n_sketched, 0, "the bursts' windows should be sketches");
	for (int round = 0; round < 3; round++) {
		write_some(db, &r, (unsigned)round % 2, 1200); /* late into flushed windows */
		write_in(db, &r, 1, 50, 1, T0 + 2 * TALLY_1D + 7 * TALLY_5M, TALLY_5M);
		cr_assert_eq(tally_db_flush(db), 0, "%s", tally_errmsg());
	}
	write_some(db, &r, 1, 500);
	check_all(db, &r); /* parts of exact and sketched windows, and a memtable */
	cr_assert_eq(tally_db_merge(db), 0, "%s", tally_errmsg());
	check_all(db, &r); /* merged: exact and sketch windows of one start merged */
	tally_db_close(db);
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	check_all(db, &r); /* reopened */
	/* a day of camera 1 went past the bound: its answer says so */
	tally_dist *d;
	cr_assert_eq(tally_query_dist(db, "traffic", "speed", "C1", T0, T0 + TALLY_1D, &d), 0);
	cr_assert_eq(tally_dist_error(d), DIST_SKETCH_ALPHA);
	tally_dist_free(d);
	tally_db_close(db);
	tu_rmrf(dir);
	free(dir);
	forget_events();
	speed_of = plain_speed;
	all_exact = 1;
	exact_cam = -1;
}

/* The sketch's buckets: monotone in the value, and the value a bucket
 * answers with within DIST_SKETCH_ALPHA of every value in it, from 1 to
 * the largest value kept, negative ones mirrored. */
Test(dist, sketch_buckets_keep_their_relative_error)
{
	tu_rng r = {tu_seed("dist-buckets")};
	int64_t prev = dist_sketch_key(-3000);
	for (int64_t x = -3000; x <= 3000; x++) {
		int64_t k = dist_sketch_key(x);
		cr_assert_geq(k, prev, "bucket of %lld below that of %lld", (long long)x,
			      (long long)x - 1);
		prev = k;
		double got = dist_sketch_value(k, 0);
		cr_assert_leq(fabs(got - (double)x),
			      DIST_SKETCH_ALPHA * fabs((double)x) * (1 + 1e-9),
			      "%lld answers %.17g", (long long)x, got);
	}
	for (int i = 0; i < 100000; i++) {
		int64_t x = (int64_t)(tu_next(&r) >> (2 + tu_below(&r, 62)));
		if (x > DIST_IDX_MAX)
			x = DIST_IDX_MAX;
		double got = dist_sketch_value(dist_sketch_key(x), -1);
		cr_assert_leq(fabs(got - (double)x / 10),
			      DIST_SKETCH_ALPHA * (double)x / 10 * (1 + 1e-9),
			      "%lld tenths answer %.17g", (long long)x, got);
		cr_assert_eq(dist_sketch_key(-x), -dist_sketch_key(x));
	}
}

Test(dist, bad_bounds_are_refused_by_name)
{
	char *dir = tu_tmpdir();
	tally_options o = opts();
	tally_db *db;
	const char *bad[] = {"traffic.speed:0.1:0", "traffic.speed:0.1:", "traffic.speed:0.1:x",
			     "traffic.speed:0.1:16777217", "traffic.speed:0.1:16:3"};
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		o.distributions = bad[i];
		cr_assert_eq(tally_db_open(dir, &o, &db), TALLY_EINVAL, "%s", bad[i]);
		cr_assert(strstr(tally_errmsg(), bad[i]), "%s", tally_errmsg());
	}
	o.distributions = "traffic.speed:0.1:16777216,traffic.n:1";
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	tally_db_close(db);
	tu_rmrf(dir);
	free(dir);
}

/* The worked example of docs/formats.md ("dist", kind 4): one window of
 * 85.2 and 90.5 at 0.1 under the default bound, its bytes after the
 * basic payload as documented; and the same window as a sketch under a
 * bound of 1. Both decode back. */
Test(dist, the_documented_block_bytes)
{
	static const char *want[2] = {DOC_EXACT, DOC_SKETCH};
	codec_ctx *cx = codec_ctx_new();
	for (int sk = 0; sk < 2; sk++) {
		int64_t v[2] = {852, 905};
		uint64_t c[2] = {1, 1};
		dbucket b = {.start = INT64_C(1748822400000000000)};
		agg_dist.init(&b.d);
		ragg_add(&b.d.a, 85.2);
		ragg_add(&b.d.a, 90.5);
		b.d.exp = -1;
		/* a window is a sketch only past its bound */
		b.d.max = sk ? 1 : DIST_MAX_DEFAULT;
		b.d.n = 2;
		b.d.v = v;
		b.d.c = c;
		if (sk) {
			v[0] = dist_sketch_key(852);
			v[1] = dist_sketch_key(905);
			b.d.sketch = 1;
		}
		codec_buf out = {0};
		cr_assert_eq(agg_dist.encode(cx, &b, 1, &out), 0, "%s", tally_errmsg());
		size_t at = agg_basic_payload_len(out.p, out.len);
		cr_assert_gt(at, 0);
		char hex[512] = "", *h = hex;
		for (size_t i = at; i < out.len && h < hex + sizeof hex - 4; i++)
			h += sprintf(h, "%s%02x", i > at && (i - at) % 4 == 0 ? " " : "", out.p[i]);
		cr_assert_str_eq(hex, want[sk], "sketch %d: %s", sk, hex);
		dbucket back;
		codec_buf arena = {0};
		cr_assert_eq(agg_dist.decode(cx, out.p, out.len, 1, &back, &arena), 0, "%s",
			     tally_errmsg());
		cr_assert_eq(back.d.n, 2);
		cr_assert_eq(back.d.sketch, (uint32_t)sk);
		cr_assert_eq(back.d.v[0], v[0]);
		cr_assert_eq(back.d.v[1], v[1]);
		cr_assert_eq(back.d.max, b.d.max);
		cr_assert_eq(back.d.c[0], 1);
		cr_assert_eq(back.d.c[1], 1);
		codec_buf_free(&out);
		codec_buf_free(&arena);
	}
	codec_ctx_free(cx);
}

/* The pairs a level's window [s, s + w) must hold: the rows' values at
 * 0.1 counted, as sketch buckets when *sk or when more than max. *k pairs
 * into v and c; *sk says which. */
static void brute_window(const int64_t *ts, const double *x, size_t n, int64_t s, int64_t w,
			 uint32_t max, int *sk, int64_t *v, uint64_t *c, size_t *k)
{
	for (int pass = 0; pass < 2; pass++) {
		size_t m = 0;
		for (size_t i = 0; i < n; i++)
			if (ts[i] >= s && ts[i] < s + w) {
				int64_t idx = dist_index(x[i], -1);
				v[m] = *sk ? dist_sketch_key(idx) : idx;
				c[m++] = 1;
			}
		cr_assert_eq(dist_combine(v, c, m, k), 0);
		if (*sk || *k <= max)
			return;
		*sk = 1;
	}
}

/* A flush builds every level's windows in one scratch that dcol_level
 * hands out, and adds coarse windows up in one count array it reuses,
 * left zero after each window: every level's windows, in order, equal
 * brute force, with windows of a few values (insertion sort), a bell of
 * speeds (the count array), values far apart (a sort) and, under a bound
 * of 50, a 5-minute window past it and coarse windows past it (sketches;
 * under the default bound every window is exact). */
Test(dist, flush_levels_borrow_one_scratch_and_add_up_exactly)
{
	const levels L = {3, {TALLY_5M, TALLY_1H, TALLY_1D}, 0};
	const int64_t t0 = INT64_C(1700006400000000000), span = 2 * TALLY_1D;
	const int64_t t60 = t0 + 30 * TALLY_1H + 1000; /* the 60 values */
	size_t n = 0, cap = 2 * 86400 / 7 + 200;
	int64_t *ts = malloc(cap * sizeof *ts);
	double *x = malloc(cap * sizeof *x);
	tu_rng r = {tu_seed("flush_levels")};
	for (int64_t t = t0; t < t0 + span; t += 7 * TALLY_NS_PER_SEC) {
		int64_t h = (t - t0) / TALLY_1H;
		ts[n] = t;
		if (h == 5) /* an hour of values far apart */
			x[n] = (tu_below(&r, 2) ? 90000.0 : -40.0) + (double)tu_below(&r, 5) / 10;
		else
			x[n] = (double)(300 + tu_below(&r, 400) + tu_below(&r, 400)) / 10;
		n++;
	}
	for (int i = 0; i < 60; i++) {
		ts[n] = t60 + i;
		x[n++] = 1000 + i;
	}
	/* the rows in time order, as a flush has them */
	for (size_t i = 1; i < n; i++)
		for (size_t j = i; j && ts[j - 1] > ts[j]; j--) {
			int64_t a = ts[j];
			double b = x[j];
			ts[j] = ts[j - 1];
			x[j] = x[j - 1];
			ts[j - 1] = a;
			x[j - 1] = b;
		}
	int64_t *bv = malloc(n * sizeof *bv);
	uint64_t *bc = malloc(n * sizeof *bc);
	dbucket *out = NULL;
	uint32_t nout, cap_out = 0;
	const uint32_t maxes[] = {50, DIST_MAX_DEFAULT};
	for (unsigned mi = 0; mi < 2; mi++) {
		dcol dc = {.exp = -1, .max = maxes[mi]};
		cr_assert_eq(dcol_from_rows(&dc, &L, ts, x, n), 0);
		uint32_t sketches = 0, exact = 0;
		for (unsigned l = 0; l < L.n; l++) {
			/* the level's windows as the memtable has them */
			int64_t w = L.w[l];
			rlevel lv = {.n = (uint32_t)(span / w)};
			lv.b = calloc(lv.n, sizeof *lv.b);
			for (uint32_t i = 0; i < lv.n; i++) {
				lv.b[i].start = t0 + (int64_t)i * w;
				ragg_init(&lv.b[i].a);
			}
			for (size_t i = 0; i < n; i++)
				ragg_add(&lv.b[(ts[i] - t0) / w].a, x[i]);
			cr_assert_eq(
				dcol_level(&dc, &lv, &L, l, t0, t0 + span, &out, &nout, &cap_out),
				0);
			cr_assert_eq(nout, lv.n);
			for (uint32_t i = 0; i < nout; i++) {
				const dstate *d = &out[i].d;
				int64_t s = out[i].start;
				cr_assert_eq(s, lv.b[i].start);
				cr_assert_eq(d->a.count, lv.b[i].a.count);
				cr_assert_eq(d->cap, 0, "level %u window %u: its pairs are dc's", l,
					     i);
				/* a sketch where the 60 values are, or past the bound */
				int sk = mi == 0 && s <= t60 && t60 < s + w;
				size_t k;
				brute_window(ts, x, n, s, w, dc.max, &sk, bv, bc, &k);
				cr_assert_eq(d->sketch, (uint32_t)sk, "level %u window %u", l, i);
				sketches += d->sketch;
				exact += !d->sketch && l;
				cr_assert_eq(d->n, k, "level %u window %u: %u pairs, not %zu", l, i,
					     d->n, k);
				for (size_t j = 0; j < k; j++)
					cr_assert(d->v[j] == bv[j] && d->c[j] == bc[j],
						  "level %u window %u pair %zu", l, i, j);
			}
			dist_release_buckets(out, nout);
			free(lv.b);
		}
		/* both kinds of coarse windows were seen */
		cr_assert(mi == 0 ? sketches > 3 : !sketches && exact == 48 + 2);
		dcol_clear(&dc);
	}
	free(out);
	free(bv);
	free(bc);
	free(ts);
	free(x);
}

/* Speeds for the counting array's paths: camera 0 close together (one
 * array), camera 1 the same with one event in 40 thousands of km/h away
 * (a range holding one gives the array up midway and sorts pairs),
 * camera 2 spread over 0.1 to 6000.0 (the array grows, both ways, close
 * to its most). */
static unsigned spread_speed(tu_rng *r, int cam)
{
	switch (cam) {
	case 1: return tu_below(r, 40) ? plain_speed(r, cam) : 70000 + (unsigned)tu_below(r, 900);
	case 2: return 1 + (unsigned)tu_below(r, 60000);
	default: return plain_speed(r, cam);
	}
}

/* A distribution query counts exact values close together in an array
 * over their range and falls back to sorting pairs when they spread
 * too far: the same answers as brute force either way, over aligned
 * and unaligned ranges, with more than a stripe of rows a camera-day
 * (edges inside either stripe), late events, several parts, memtables
 * and merges. */
Test(dist, counted_and_sorted_values_equal_brute_force)
{
	uint64_t seed = tu_seed("dist-spread");
	tu_rng r = {seed};
	n_evs = 0;
	speed_of = spread_speed;
	char *dir = tu_tmpdir();
	tally_options o = opts();
	tally_db *db;
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	write_some(db, &r, 0, 7000);
	write_some(db, &r, 1, 6000);
	check_all(db, &r); /* memtables only */
	cr_assert_eq(tally_db_flush(db), 0, "%s", tally_errmsg());
	check_all(db, &r); /* parts */
	for (int round = 0; round < 3; round++) {
		write_some(db, &r, (unsigned)round % 2, 1500); /* late into flushed windows */
		cr_assert_eq(tally_db_flush(db), 0, "%s", tally_errmsg());
	}
	write_some(db, &r, 1, 700);
	check_all(db, &r); /* several parts and a memtable */
	cr_assert_eq(tally_db_merge(db), 0, "%s", tally_errmsg());
	check_all(db, &r); /* merged */
	tally_db_close(db);
	tu_rmrf(dir);
	free(dir);
	forget_events();
	speed_of = plain_speed;
}

/* A store in a new directory (*dir, which drop_db removes and frees). */
static tally_db *fresh_db(const tally_options *o, char **dir)
{
	*dir = tu_tmpdir();
	tally_db *db;
	cr_assert_eq(tally_db_open(*dir, o, &db), 0, "%s", tally_errmsg());
	return db;
}

static void drop_db(tally_db *db, char *dir)
{
	tally_db_close(db);
	tu_rmrf(dir);
	free(dir);
}

/* n lines of line protocol in buf[0..len) through shard 0's writer. */
static void write_lines(tally_db *db, const char *buf, size_t len, uint64_t n)
{
	tally_writer *w;
	cr_assert_eq(tally_writer_open(db, 0, &w), 0);
	tally_write_result res;
	cr_assert_eq(tally_write_lp(w, buf, len, TALLY_PREC_NS, &res), 0, "%s", tally_errmsg());
	cr_assert_eq(res.accepted, n);
	tally_writer_close(w);
}

/* Field `name` (resolution 10^exp) of camera C0 over [a, b) against
 * brute force over the n rows (ts[i], x[i * stride]); NaN: no value. */
static void check_field(tally_db *db, const char *name, int32_t exp, const int64_t *ts,
			const double *x, size_t stride, size_t n, int64_t a, int64_t b)
{
	int64_t *v = malloc((n + 1) * sizeof *v);
	size_t m = 0;
	for (size_t i = 0; i < n; i++)
		if (ts[i] >= a && ts[i] < b && !isnan(x[i * stride]))
			v[m++] = dist_index(x[i * stride], exp);
	qsort(v, m, sizeof *v, cmp_i64);
	tally_dist *d;
	cr_assert_eq(tally_query_dist(db, "traffic", name, "C0", a, b, &d), 0, "%s",
		     tally_errmsg());
	cr_assert_eq(tally_dist_count(d), m, "%s over [%lld, %lld): %llu, brute force %zu", name,
		     (long long)a, (long long)b, (unsigned long long)tally_dist_count(d), m);
	const double qs[] = {0, 0.5, 0.85, 1};
	for (int q = 0; q < 4 && m; q++) {
		double got;
		cr_assert_eq(tally_dist_quantile(d, qs[q], &got), 0);
		double want = dist_value(v[tu_exact_rank(qs[q], m) - 1], exp);
		cr_assert_eq(got, want, "%s q %g over [%lld, %lld): %.17g, brute force %.17g", name,
			     qs[q], (long long)a, (long long)b, got, want);
	}
	tally_dist_free(d);
	free(v);
}

/* An edge's rows are counted straight from the decoded stripe when the
 * field is a float present in every row of the edge, compacted first
 * when some row lacks it or the field is an integer, and come out of a
 * decimal column at the resolution already when its scale allows
 * (codec_want_units), else through doubles: with every third line
 * missing the speed, an integer field, a field of two decimals counted
 * at 0.1 (rounded) and one of one decimal counted at 0.001, each range's
 * raw edges equal brute force after a flush and a merge. */
Test(dist, edges_with_absent_values_equal_brute_force)
{
	tu_rng r = {tu_seed("dist-absent")};
	tally_options o = opts();
	o.distributions = "traffic.speed:0.1,traffic.n:1,traffic.p:0.1,traffic.q:0.001";
	static const char *const name[] = {"speed", "n", "p", "q"};
	static const int32_t exp[] = {-1, 0, -1, -3};
	char *dir;
	tally_db *db = fresh_db(&o, &dir);
	enum { N = 6000, F = 4 };
	int64_t *ts = malloc(N * sizeof *ts);
	double(*val)[F] = malloc(N * sizeof *val);
	char *buf = malloc((size_t)N * 120), *p = buf;
	for (int i = 0; i < N; i++) {
		ts[i] = T0 + (int64_t)tu_below(&r, (uint64_t)TALLY_1D);
		char sp[16], pv[16], qv[16];
		unsigned v = 300 + (unsigned)tu_below(&r, 600);
		sprintf(sp, "%u.%u", v / 10, v % 10);
		long long nv = (long long)tu_below(&r, 5000) - 2500;
		unsigned pp = (unsigned)tu_below(&r, 100000), qq = (unsigned)tu_below(&r, 3000);
		sprintf(pv, "%u.%02u", pp / 100, pp % 100);
		sprintf(qv, "-%u.%u", qq / 10, qq % 10);
		val[i][0] = i % 3 ? strtod(sp, NULL) : NAN; /* NaN: no speed on this line */
		val[i][1] = (double)nv;
		val[i][2] = strtod(pv, NULL);
		val[i][3] = strtod(qv, NULL);
		p += sprintf(p, "traffic,camera=C0 ");
		if (i % 3)
			p += sprintf(p, "speed=%s,", sp);
		p += sprintf(p, "n=%lldi,p=%s,q=%s %lld\n", nv, pv, qv, (long long)ts[i]);
	}
	write_lines(db, buf, (size_t)(p - buf), N);
	for (int round = 0; round < 2; round++) {
		cr_assert_eq(round ? tally_db_merge(db) : tally_db_flush(db), 0, "%s",
			     tally_errmsg());
		for (int k = 0; k < 40; k++) {
			int64_t a = T0 + (int64_t)tu_below(&r, (uint64_t)TALLY_1D);
			int64_t b = a + (int64_t)tu_below(&r, (uint64_t)(T0 + TALLY_1D - a) + 1);
			for (int f = 0; f < F; f++)
				check_field(db, name[f], exp[f], ts, &val[0][f], F, N, a, b);
		}
	}
	drop_db(db, dir);
	free(ts);
	free(val);
	free(buf);
}

/* A stripe lying wholly inside an edge is read without its times: with a
 * thousand events a minute a stripe spans about a minute, so both edges
 * of [2 min 30 s, 17 min 30 s) (around the whole 5-minute windows from
 * 5 to 15 minutes) hold whole stripes, and partly covered ones at either
 * end; every such range equals brute force. */
Test(dist, stripes_inside_an_edge_equal_brute_force)
{
	tu_rng r = {tu_seed("dist-inner")};
	tally_options o = opts();
	char *dir;
	tally_db *db = fresh_db(&o, &dir);
	enum { N = 20000 };
	int64_t *ts = malloc(N * sizeof *ts);
	double *x = malloc(N * sizeof *x);
	char *buf = malloc((size_t)N * 64), *p = buf;
	for (int i = 0; i < N; i++) {
		ts[i] = T0 + (int64_t)tu_below(&r, (uint64_t)(20 * 60 * TALLY_NS_PER_SEC));
		unsigned v = 300 + (unsigned)tu_below(&r, 900);
		char num[16];
		sprintf(num, "%u.%u", v / 10, v % 10);
		x[i] = strtod(num, NULL);
		p += sprintf(p, "traffic,camera=C0 speed=%s %lld\n", num, (long long)ts[i]);
	}
	write_lines(db, buf, (size_t)(p - buf), N);
	cr_assert_eq(tally_db_flush(db), 0, "%s", tally_errmsg());
	const int64_t s = TALLY_NS_PER_SEC;
	check_field(db, "speed", -1, ts, x, 1, N, T0 + 150 * s, T0 + 1050 * s);
	for (int k = 0; k < 30; k++) {
		int64_t a = T0 + (int64_t)tu_below(&r, 300 * (uint64_t)s);
		int64_t b = T0 + 900 * s + (int64_t)tu_below(&r, 300 * (uint64_t)s);
		check_field(db, "speed", -1, ts, x, 1, N, a, b);
	}
	/* bounds on a stripe's first and last times and beside them (rows
	 * go into stripes of 1,000 to 1,024 in time order): a bound at tmin
	 * has no row of the stripe before it, one just past tmax all */
	int64_t *sorted = malloc(N * sizeof *sorted);
	memcpy(sorted, ts, N * sizeof *sorted);
	qsort(sorted, N, sizeof *sorted, cmp_i64);
	for (int k = 1; k < N / 1024; k++)
		for (int d = -1; d <= 1; d++)
			for (int per = 1000; per <= 1024; per += 24) {
				int64_t t = sorted[k * per + d];
				for (int64_t u = t; u <= t + 1; u++) {
					check_field(db, "speed", -1, ts, x, 1, N, u, u + 420 * s);
					check_field(db, "speed", -1, ts, x, 1, N, u - 420 * s, u);
				}
			}
	free(sorted);
	drop_db(db, dir);
	free(ts);
	free(x);
	free(buf);
}

/* The counting array flushes and queries share (engine/dcount.h): runs of
 * values counted, each taken and checked against brute force, the array
 * reused (empty, so moved), grown upwards and downwards with counted
 * values kept, and refused past its bound with nothing changed. */
Test(dist, counting_array_equals_brute_force)
{
	tu_rng r = {tu_seed("dcount")};
	dcount d = DCOUNT_INIT;
	enum { W = 5000 };
	uint64_t *want = calloc(3 * W, sizeof *want);
	int64_t *v = malloc(3 * W * sizeof *v);
	uint64_t *c = malloc(3 * W * sizeof *c);
	for (int round = 0; round < 200; round++) {
		/* a few covers around a random base, values counted in each */
		int64_t base = (int64_t)tu_below(&r, 1u << 20) - (1 << 19), lo = INT64_MAX, hi = 0;
		memset(want, 0, 3 * W * sizeof *want);
		for (int k = 1 + (int)tu_below(&r, 4); k > 0; k--) {
			int64_t x = base + (int64_t)tu_below(&r, 2 * W);
			int64_t y = x + 1 + (int64_t)tu_below(&r, W);
			size_t max = tu_below(&r, 4) ? 3 * W : (size_t)tu_below(&r, W);
			size_t cap = d.cap;
			int64_t umin = d.umin, umax = d.umax;
			int rc = dcount_cover(&d, x, y, max);
			int64_t nlo = x < lo ? x : lo, nhi = y > hi ? y : hi;
			if (!rc) {
				/* refused only past the bound, and nothing changed */
				cr_assert_gt((uint64_t)(nhi - nlo), max);
				cr_assert(d.cap == cap && d.umin == umin && d.umax == umax);
				continue;
			}
			cr_assert_eq(rc, 1);
			cr_assert(d.cap == cap || d.cap <= max, "grew to %zu past %zu", d.cap, max);
			lo = nlo;
			hi = nhi;
			/* both ends counted (dcount_take's room), then any between */
			dcount_add(&d, x, 1);
			dcount_add(&d, y - 1, 2);
			want[x - base] += 1;
			want[y - 1 - base] += 2;
			for (int i = (int)tu_below(&r, 300); i > 0; i--) {
				int64_t u = x + (int64_t)tu_below(&r, (uint64_t)(y - x));
				uint64_t n = 1 + tu_below(&r, 1000);
				dcount_add(&d, u, n);
				want[u - base] += n;
			}
		}
		/* either walk: unknown, or a bound that may call it sparse */
		size_t most = round % 2 ? SIZE_MAX : (size_t)tu_below(&r, 3 * W), j = 0;
		size_t k = dcount_take(&d, most, v, c);
		for (int64_t u = 0; u < 3 * W; u++)
			if (want[u]) {
				cr_assert_lt(j, k, "round %d: %zu pairs, more expected", round, k);
				cr_assert(
					v[j] == base + u && c[j] == want[u],
					"round %d pair %zu: (%lld, %llu), brute force (%lld, %llu)",
					round, j, (long long)v[j], (unsigned long long)c[j],
					(long long)(base + u), (unsigned long long)want[u]);
				j++;
			}
		cr_assert_eq(j, k, "round %d: %zu pairs, brute force %zu", round, k, j);
		/* taken: empty, every slot zero again */
		cr_assert_gt(d.umin, d.umax);
		for (size_t i = 0; i < d.cap; i++)
			cr_assert_eq(d.cnt[i], 0, "round %d: slot %zu left %llu", round, i,
				     (unsigned long long)d.cnt[i]);
	}
	dcount_free(&d);
	cr_assert_null(d.cnt);
	free(want);
	free(v);
	free(c);
}
