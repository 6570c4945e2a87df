/*
 * test_dist_merge.c — tally_dist_merge against brute force: the
 * distributions of several keys (from memtables and parts, with values in
 * common and not) merged into one must give every rank, threshold count
 * and histogram of the keys' sorted values together; an empty side
 * changes nothing; two resolutions refuse to merge and leave dst as it
 * was. InfluxQL's median() and percentile() over several keys rest on it
 * (tests/server/influxql_test.py compares those with a real InfluxDB).
 */
#include <criterion/criterion.h>

#include "testutil.h"

#define T0   INT64_C(1700006400000000000)
#define KEYS 4

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static tally_db *open_db(const char *dir)
{
	tally_options o = tu_quiet_opts();
	o.shards = 2;
	o.distributions = "traffic.speed:0.1,roads.gap:1";
	tally_db *db;
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	return db;
}

/* The value at 1-based rank r of the merged distribution: the
 * nearest-rank quantile whose ceil(q * N) is r. */
static double nth(const tally_dist *d, uint64_t r)
{
	double v;
	cr_assert_eq(tally_dist_quantile(d, ((double)r - 0.5) / (double)tally_dist_count(d), &v),
		     0);
	return v;
}

Test(dist_merge, several_keys_equal_their_sorted_values)
{
	char *dir = tu_tmpdir();
	tally_db *db = open_db(dir);
	tu_rng r = {tu_seed("dist_merge")};
	enum { N = 3000 };
	double *all = malloc(N * sizeof *all);
	char *lp = malloc(N * 64), *p = lp;
	for (int i = 0; i < N; i++) {
		/* keys 0-2 share a range of values, key 3 sits above them */
		int k = (int)tu_below(&r, KEYS);
		unsigned v = (k == 3 ? 1500 : 300) + (unsigned)tu_below(&r, 400);
		p += sprintf(p, "traffic,camera=K%d speed=%u.%u %lld\n", k, v / 10, v % 10,
			     (long long)(T0 + (int64_t)tu_below(&r, (uint64_t)TALLY_1D)));
		char num[16];
		sprintf(num, "%u.%u", v / 10, v % 10);
		all[i] = strtod(num, NULL);
		if (i == N / 2) { /* half in parts, half in memtables */
			cr_assert_eq(tu_write_synced(db, lp, (size_t)(p - lp)), i + 1);
			cr_assert_eq(tally_db_flush(db), 0);
			p = lp;
		}
	}
	cr_assert_eq(tu_write_synced(db, lp, (size_t)(p - lp)), N - N / 2 - 1);
	qsort(all, N, sizeof *all, cmp_double);

	tally_dist *m = NULL;
	for (int k = 0; k < KEYS; k++) {
		char key[8];
		sprintf(key, "K%d", k);
		tally_dist *d;
		cr_assert_eq(tally_query_dist(db, "traffic", "speed", key, T0, T0 + TALLY_1D, &d),
			     0);
		if (!m) {
			m = d;
			continue;
		}
		cr_assert_eq(tally_dist_merge(m, d), 0, "%s", tally_errmsg());
		tally_dist_free(d);
	}
	/* a key without values, merged either way round, changes nothing */
	tally_dist *none;
	cr_assert_eq(tally_query_dist(db, "traffic", "speed", "NOPE", T0, T0 + TALLY_1D, &none), 0);
	cr_assert_eq(tally_dist_merge(m, none), 0);
	cr_assert_eq(tally_dist_count(m), N);
	for (uint64_t i = 0; i < N; i++)
		cr_assert_eq(nth(m, i + 1), all[i], "rank %llu: %g, want %g",
			     (unsigned long long)i + 1, nth(m, i + 1), all[i]);
	uint64_t above = 0, below = 0;
	for (int i = 0; i < N; i++) {
		above += all[i] > 60.0;
		below += all[i] < 45.5;
	}
	cr_assert_eq(tally_dist_count_above(m, 60.0), above);
	cr_assert_eq(tally_dist_count_below(m, 45.5), below);
	const double edges[] = {30, 50, 150, 200};
	uint64_t counts[3], want[3] = {0};
	cr_assert_eq(tally_dist_histogram(m, edges, 4, counts), 0);
	for (int i = 0; i < N; i++)
		for (int b = 0; b < 3; b++)
			want[b] += all[i] >= edges[b] && all[i] < edges[b + 1];
	for (int b = 0; b < 3; b++)
		cr_assert_eq(counts[b], want[b], "bin %d", b);
	cr_assert_eq(tally_dist_merge(none, m), 0);
	cr_assert_eq(tally_dist_count(none), N);
	cr_assert_eq(nth(none, N), all[N - 1]);

	/* another resolution: refused, dst as it was */
	const char *road = "roads,road=M1 gap=7 1700006400000000000\n";
	cr_assert_eq(tu_write_synced(db, road, strlen(road)), 1);
	tally_dist *g;
	cr_assert_eq(tally_query_dist(db, "roads", "gap", "M1", T0, T0 + TALLY_1D, &g), 0);
	cr_assert_eq(tally_dist_merge(m, g), TALLY_EINVAL);
	cr_assert(strstr(tally_errmsg(), "different resolutions (0.1 and 1)"), "%s",
		  tally_errmsg());
	cr_assert_eq(tally_dist_count(m), N);
	cr_assert_eq(nth(m, 1), all[0]);
	tally_dist_free(g);
	tally_dist_free(none);
	tally_dist_free(m);
	free(lp);
	free(all);
	tally_db_close(db);
	tu_rmrf(dir);
	free(dir);
}

/* An exact distribution merged with a sketch (a window past its bound on
 * distinct values) is a sketch: the exact side's values go into the
 * sketch's buckets, and the answer says so with its error bound. Merged
 * as plain lists, value indices and bucket keys mixed, and the answer
 * claimed to be exact. */
Test(dist_merge, an_exact_side_merged_with_a_sketch_is_a_sketch)
{
	char *dir = tu_tmpdir();
	tally_options o = tu_quiet_opts();
	o.distributions = "wide.x:0.1:16";
	tally_db *db;
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	enum { NS = 200, NE = 5 };
	double all[NS + NE];
	char *lp = malloc((NS + NE) * 64), *p = lp;
	for (int i = 0; i < NS + NE; i++) {
		/* S: 200 distinct values, past the bound of 16; E: five */
		int s = i < NS;
		unsigned v = s ? 100 + 7 * (unsigned)i : 555 + (unsigned)i;
		p += sprintf(p, "wide,k=%s x=%u.%u %lld\n", s ? "S" : "E", v / 10, v % 10,
			     (long long)(T0 + i * (int64_t)1000000000));
		char num[16];
		sprintf(num, "%u.%u", v / 10, v % 10);
		all[i] = strtod(num, NULL);
	}
	cr_assert_eq(tu_write_synced(db, lp, (size_t)(p - lp)), NS + NE);
	cr_assert_eq(tally_db_flush(db), 0, "%s", tally_errmsg());
	qsort(all, NS + NE, sizeof *all, cmp_double);
	tally_dist *e, *s;
	cr_assert_eq(tally_query_dist(db, "wide", "x", "E", T0, T0 + TALLY_1D, &e), 0);
	cr_assert_eq(tally_query_dist(db, "wide", "x", "S", T0, T0 + TALLY_1D, &s), 0);
	cr_assert_eq(tally_dist_error(e), 0);
	cr_assert_gt(tally_dist_error(s), 0, "200 distinct values past a bound of 16");
	cr_assert_eq(tally_dist_merge(e, s), 0, "%s", tally_errmsg());
	double err = tally_dist_error(e);
	cr_assert_eq(err, tally_dist_error(s), "the merge is a sketch: error %g", err);
	cr_assert_eq(tally_dist_count(e), NS + NE);
	for (uint64_t i = 0; i < NS + NE; i++) {
		double got = nth(e, i + 1);
		cr_assert_leq(fabs(got - all[i]), err * all[i] + 1e-9,
			      "rank %llu: %g, want %g +- %g", (unsigned long long)i + 1, got,
			      all[i], err * all[i]);
	}
	tally_dist_free(s);
	tally_dist_free(e);
	free(lp);
	tally_db_close(db);
	tu_rmrf(dir);
	free(dir);
}
