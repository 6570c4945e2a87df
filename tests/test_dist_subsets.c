/*
 * test_dist_subsets.c — exact distributions over subsets of a table's key
 * tags, against brute force.
 *
 * traffic is keyed by camera+lane, speed kept as a distribution at 0.1.
 * A query names one camera (every lane merged), one camera and lane (one
 * series), or one lane (every camera: the group of that lane); grouping by
 * lane is one query per lane value the group API lists. Rounds of random
 * events (late ones into flushed windows, two shards) go through flushes,
 * merges and a reopen; after each step quantiles, threshold counts and
 * histograms over aligned and unaligned ranges must equal the sorted raw
 * values exactly. The one idea: the model keeps every event, so each
 * subset's answer is a filter and a sort away, whatever tiling of windows
 * and raw edges the engine chose.
 */
#include <criterion/criterion.h>

#include <math.h>

#include "testutil.h"

#define T0     INT64_C(1700006400000000000) /* 2023-11-15T00:00:00Z */
#define SPAN   (3 * TALLY_1D)
#define CAMS   3
#define LANES  3
#define MAXEV  20000
#define CHECKS 40 /* random questions per step */

typedef struct ev {
	int cam, lane;
	int64_t ts;
	unsigned tenths;
} ev;

typedef struct model {
	tally_db *db;
	tally_options o;
	tu_rng rng;
	ev *e;
	size_t n;
	unsigned *v; /* scratch: the matching values, sorted */
} model;

/* A filter: camera (-1: any) and lane (0: any). */
typedef struct filt {
	int cam, lane;
	char text[32];
} filt;

static filt make_filt(int cam, int lane)
{
	filt f = {cam, lane, ""};
	if (cam >= 0 && lane)
		snprintf(f.text, sizeof f.text, "camera=C%d,lane=%d", cam, lane);
	else if (cam >= 0)
		snprintf(f.text, sizeof f.text, "camera=C%d", cam);
	else
		snprintf(f.text, sizeof f.text, "lane=%d", lane);
	return f;
}

static tally_options opts(void)
{
	tally_options o = tu_quiet_opts();
	o.shards = 2;
	o.distributions = "traffic.speed:0.1";
	o.table_keys = "traffic=camera+lane";
	return o;
}

/* n events through shard s: camera 2 drives lanes 1 and 2 only; speeds
 * 30.0 to 130.0 with repeats; times anywhere in the span, so later rounds
 * land in windows flushed before (late by up to three days). */
static void write_round(model *m, unsigned s, int n)
{
	tally_writer *w;
	cr_assert_eq(tally_writer_open(m->db, (int)s, &w), 0);
	char *buf = malloc((size_t)n * 80), *p = buf;
	for (int i = 0; i < n; i++) {
		cr_assert_lt(m->n, MAXEV);
		ev *e = &m->e[m->n++];
		e->cam = (int)tu_below(&m->rng, CAMS);
		e->lane = 1 + (int)tu_below(&m->rng, e->cam == 2 ? 2 : LANES);
		e->ts = T0 + (int64_t)tu_below(&m->rng, (uint64_t)SPAN);
		if (tu_below(&m->rng, 8) == 0) /* on a window's first instant */
			e->ts -= (e->ts - T0) % TALLY_5M;
		e->tenths = 300 + (unsigned)tu_below(&m->rng, 100) *
					  (1 + (unsigned)tu_below(&m->rng, 10));
		p += sprintf(p, "traffic,camera=C%d,lane=%d speed=%u.%u %lld\n", e->cam, e->lane,
			     e->tenths / 10, e->tenths % 10, (long long)e->ts);
	}
	tally_write_result res;
	cr_assert_eq(tally_write_lp(w, buf, (size_t)(p - buf), TALLY_PREC_NS, &res), 0, "%s",
		     tally_errmsg());
	cr_assert_eq(res.rejected, 0);
	cr_assert_eq(tally_db_sync(m->db), 0);
	tally_writer_close(w);
	free(buf);
}

static int cmp_u(const void *a, const void *b)
{
	unsigned x = *(const unsigned *)a, y = *(const unsigned *)b;
	return (x > y) - (x < y);
}

/* The model's sorted values of f in [from, to) into m->v; their number. */
static size_t brute(model *m, const filt *f, int64_t from, int64_t to)
{
	size_t n = 0;
	for (size_t i = 0; i < m->n; i++) {
		const ev *e = &m->e[i];
		if (e->ts >= from && e->ts < to && (f->cam < 0 || e->cam == f->cam) &&
		    (!f->lane || e->lane == f->lane))
			m->v[n++] = e->tenths;
	}
	qsort(m->v, n, sizeof *m->v, cmp_u);
	return n;
}

/* d against the model's values of f in [from, to): count, quantiles by
 * nearest rank, threshold counts (also at a value held) and a histogram
 * of random edges, every one exactly. */
static void check_dist(model *m, const tally_dist *d, const filt *f, int64_t from, int64_t to)
{
	size_t n = brute(m, f, from, to);
	const unsigned *v = m->v;
	cr_assert_eq(tally_dist_error(d), 0, "'%s': a sketch", f->text);
	cr_assert_eq(tally_dist_count(d), n, "'%s' [%lld, %lld): count %llu, brute force %zu",
		     f->text, (long long)from, (long long)to,
		     (unsigned long long)tally_dist_count(d), n);
	double qs[] = {0, 0.25, 0.5, 0.85, 1, (double)tu_below(&m->rng, 1001) / 1000};
	for (size_t i = 0; i < sizeof qs / sizeof *qs; i++) {
		double got;
		int rc = tally_dist_quantile(d, qs[i], &got);
		if (!n) {
			cr_assert_eq(rc, TALLY_ENOTFOUND, "'%s': a quantile of nothing", f->text);
			continue;
		}
		cr_assert_eq(rc, 0);
		double want = v[tu_exact_rank(qs[i], n) - 1] / 10.0;
		cr_assert_eq(got, want, "'%s' [%lld, %lld) q=%g: %.17g, brute force %.17g", f->text,
			     (long long)from, (long long)to, qs[i], got, want);
	}
	/* a limit between values and one on a value some event has */
	unsigned lims[2] = {300 + (unsigned)tu_below(&m->rng, 1000) * 10 + 5,
			    n ? v[tu_below(&m->rng, n)] : 900};
	for (int k = 0; k < 2; k++) {
		uint64_t above = 0, below = 0;
		for (size_t i = 0; i < n; i++) {
			above += v[i] > lims[k];
			below += v[i] < lims[k];
		}
		double x = lims[k] / 10.0;
		cr_assert_eq(tally_dist_count_above(d, x), above, "'%s': above %g", f->text, x);
		cr_assert_eq(tally_dist_count_below(d, x), below, "'%s': below %g", f->text, x);
	}
	/* 2 to 6 ascending edges, some on values events have */
	unsigned ne = 2 + (unsigned)tu_below(&m->rng, 5), et[8];
	double edges[8];
	for (unsigned i = 0; i < ne; i++)
		et[i] = 250 + (unsigned)tu_below(&m->rng, 1100);
	qsort(et, ne, sizeof *et, cmp_u);
	for (unsigned i = 0; i < ne; i++) {
		if (i && et[i] <= et[i - 1])
			et[i] = et[i - 1] + 5;
		edges[i] = et[i] / 10.0;
	}
	uint64_t h[8];
	cr_assert_eq(tally_dist_histogram(d, edges, ne, h), 0);
	for (unsigned b = 0; b + 1 < ne; b++) {
		uint64_t want = 0;
		for (size_t i = 0; i < n; i++)
			want += v[i] / 10.0 >= edges[b] && v[i] / 10.0 < edges[b + 1];
		cr_assert_eq(h[b], want, "'%s': bin [%g, %g): %llu, brute force %llu", f->text,
			     edges[b], edges[b + 1], (unsigned long long)h[b],
			     (unsigned long long)want);
	}
}

static void check_one(model *m, const filt *f, int64_t from, int64_t to)
{
	tally_dist *d;
	cr_assert_eq(tally_query_dist(m->db, "traffic", "speed", f->text, from, to, &d), 0,
		     "'%s': %s", f->text, tally_errmsg());
	check_dist(m, d, f, from, to);
	tally_dist_free(d);
}

/* A range: the whole span, a day, an hour (aligned), or cut anywhere. */
static void pick_range(model *m, int64_t *from, int64_t *to)
{
	switch (tu_below(&m->rng, 5)) {
	case 0:
		*from = INT64_MIN;
		*to = INT64_MAX;
		return;
	case 1:
		*from = T0 + (int64_t)tu_below(&m->rng, 3) * TALLY_1D;
		*to = *from + TALLY_1D;
		return;
	case 2:
		*from = T0 + (int64_t)tu_below(&m->rng, 72) * TALLY_1H;
		*to = *from + (1 + (int64_t)tu_below(&m->rng, 5)) * TALLY_1H;
		return;
	default:
		*from = T0 + (int64_t)tu_below(&m->rng, (uint64_t)SPAN);
		*to = *from + 1 + (int64_t)tu_below(&m->rng, (uint64_t)TALLY_1D);
	}
}

/* Grouped by lane, over all cameras or within one: the lanes the group
 * API lists, each asked as a subset, equal to the model; their counts
 * equal the group's; and merged (tally_dist_merge) they are the whole. */
static void check_by_lane(model *m, int cam, int64_t from, int64_t to)
{
	filt whole = cam >= 0 ? make_filt(cam, 0) : (filt){-1, 0, ""};
	tally_keys_iter *it;
	cr_assert_eq(tally_query_group(m->db, "traffic", "speed", cam >= 0 ? whole.text : NULL,
				       "lane", from, to, &it),
		     0, "%s", tally_errmsg());
	tally_dist *all = NULL;
	const char *key;
	tally_agg a;
	int lanes = 0;
	while (tally_keys_next(it, &key, &a) == 1) {
		int lane;
		cr_assert_eq(sscanf(key, "lane=%d", &lane), 1, "group key '%s'", key);
		filt f = cam >= 0 ? make_filt(cam, lane) : make_filt(-1, lane);
		tally_dist *d;
		cr_assert_eq(tally_query_dist(m->db, "traffic", "speed", f.text, from, to, &d), 0,
			     "'%s': %s", f.text, tally_errmsg());
		cr_assert_eq(tally_dist_count(d), a.count, "'%s': %llu values, group count %llu",
			     f.text, (unsigned long long)tally_dist_count(d),
			     (unsigned long long)a.count);
		check_dist(m, d, &f, from, to);
		if (!all)
			all = d;
		else {
			cr_assert_eq(tally_dist_merge(all, d), 0);
			tally_dist_free(d);
		}
		lanes++;
	}
	tally_keys_close(it);
	if (all) {
		check_dist(m, all, &whole, from, to);
		tally_dist_free(all);
	} else {
		cr_assert_eq(brute(m, &whole, from, to), 0, "no lane group, but values");
	}
	cr_assert_leq(lanes, LANES);
}

static void check_all(model *m)
{
	for (int i = 0; i < CHECKS; i++) {
		int64_t from, to;
		pick_range(m, &from, &to);
		int cam = (int)tu_below(&m->rng, CAMS);
		int lane = 1 + (int)tu_below(&m->rng, LANES); /* C2 lane 3: none */
		filt fs[3] = {make_filt(cam, 0), make_filt(cam, lane), make_filt(-1, lane)};
		for (int k = 0; k < 3; k++)
			check_one(m, &fs[k], from, to);
		if (i % 4 == 0)
			check_by_lane(m, i % 8 ? cam : -1, from, to);
	}
}

Test(dist_subsets, camera_lane_and_grouped_answers_equal_brute_force)
{
	model m = {0};
	m.rng.s = tu_seed("dist-subsets");
	m.e = calloc(MAXEV, sizeof *m.e);
	m.v = calloc(MAXEV, sizeof *m.v);
	m.o = opts();
	char *dir = tu_tmpdir();
	cr_assert_eq(tally_db_open(dir, &m.o, &m.db), 0, "%s", tally_errmsg());
	write_round(&m, 0, 1500);
	write_round(&m, 1, 1500);
	check_all(&m); /* memtables */
	cr_assert_eq(tally_db_flush(m.db), 0, "%s", tally_errmsg());
	check_all(&m); /* parts */
	for (unsigned r = 0; r < 3; r++) {
		write_round(&m, r % 2, 1200); /* late into flushed windows */
		cr_assert_eq(tally_db_flush(m.db), 0, "%s", tally_errmsg());
	}
	write_round(&m, 0, 600);
	check_all(&m); /* several parts per window, and a memtable */
	cr_assert_eq(tally_db_merge(m.db), 0, "%s", tally_errmsg());
	check_all(&m); /* merged */
	write_round(&m, 1, 800);
	tally_db_close(m.db);
	cr_assert_eq(tally_db_open(dir, &m.o, &m.db), 0, "%s", tally_errmsg());
	check_all(&m); /* reopened: the WAL replayed beside the parts */
	cr_assert_eq(tally_db_flush(m.db), 0, "%s", tally_errmsg());
	cr_assert_eq(tally_db_merge(m.db), 0, "%s", tally_errmsg());
	check_all(&m);
	tally_db_close(m.db);
	tu_rmrf(dir);
	free(dir);
	free(m.e);
	free(m.v);
}
