/*
 * test_scan.c — raw scans as cursors: a reader that stops early decodes
 * little, the memory an open scan holds does not grow with its range, a
 * scan keeps its snapshot while flushes and merges retire what it reads,
 * and every answer equals brute force over the written events.
 */
#include <criterion/criterion.h>
#include <inttypes.h>

#include "testutil.h"

#define T0  INT64_C(1700000000000000000) /* 2023-11-14T22:13:20Z */
#define SEC INT64_C(1000000000)

static char *dir;
static tally_db *db;

static void setup(void)
{
	dir = tu_tmpdir();
	tally_options o = tu_quiet_opts();
	o.shards = 3;
	int rc = tally_db_open(dir, &o, &db);
	cr_assert_eq(rc, 0, "open: %s", tally_errmsg());
}

static void teardown(void)
{
	tally_db_close(db);
	tu_rmrf(dir);
	free(dir);
}

TestSuite(scan, .init = setup, .fini = teardown);

/* Writes events (t, id) of key k through shard sh's writer: field v = id,
 * and a string field s = "e<id>". */
static void put(int sh, const char *k, const int64_t *t, const int64_t *id, size_t n)
{
	tally_writer *w;
	cr_assert_eq(tally_writer_open(db, sh, &w), 0);
	size_t cap = n * 80 + 1, len = 0;
	char *buf = malloc(cap);
	for (size_t i = 0; i < n; i++)
		len += (size_t)snprintf(buf + len, cap - len,
					"m,k=%s v=%" PRId64 "i,s=\"e%" PRId64 "\" %" PRId64 "\n", k,
					id[i], id[i], t[i]);
	tally_write_result r;
	cr_assert_eq(tally_write_lp(w, buf, len, TALLY_PREC_NS, &r), 0, "%s", tally_errmsg());
	cr_assert_eq(r.accepted, n);
	tally_writer_close(w);
	free(buf);
}

static tally_stats stats(void)
{
	tally_stats st;
	cr_assert_eq(tally_db_stats(db, &st), 0);
	return st;
}

/* The column index of name in s. */
static size_t column(tally_scan *s, const char *name)
{
	for (size_t i = 0; i < tally_scan_columns(s); i++) {
		const char *nm;
		enum tally_type ty;
		cr_assert_eq(tally_scan_column(s, i, &nm, &ty), 0);
		if (!strcmp(nm, name))
			return i;
	}
	cr_assert_fail("no column %s", name);
	return 0;
}

/* Checks one row against event (t, id). */
static void check_row(tally_scan *s, const tally_row *row, int64_t t, int64_t id, size_t i)
{
	size_t cv = column(s, "v"), cs = column(s, "s");
	cr_assert_eq(row->ts, t, "row %zu: time %" PRId64 ", want %" PRId64, i, row->ts, t);
	cr_assert_eq(row->values[cv].type, TALLY_T_I64);
	cr_assert_eq(row->values[cv].v.i64, id, "row %zu: v %" PRId64 ", want %" PRId64, i,
		     row->values[cv].v.i64, id);
	char want[32];
	int wl = snprintf(want, sizeof want, "e%" PRId64, id);
	cr_assert_eq(row->values[cs].v.str.len, (size_t)wl, "row %zu: string length", i);
	cr_assert(!memcmp(row->values[cs].v.str.ptr, want, (size_t)wl), "row %zu: string", i);
}

/* 300k rows of one key in parts and 3k in the memtable: reading 10 decodes
 * about a stripe, and the windows held stay small; reading on gives every
 * row; closing gives the memory back. */
Test(scan, reads_only_the_windows_its_reader_reaches)
{
	enum { N = 300000, M = 3000 };
	int64_t *t = malloc(N * sizeof *t), *id = malloc(N * sizeof *id);
	for (int64_t i = 0; i < N; i++)
		t[i] = T0 + i * SEC, id[i] = i;
	put(0, "a", t, id, N);
	cr_assert_eq(tally_db_flush(db), 0, "%s", tally_errmsg());
	int64_t mt[M], mid[M];
	for (int64_t i = 0; i < M; i++)
		mt[i] = T0 + (N + i) * SEC, mid[i] = N + i;
	put(0, "a", mt, mid, M);
	uint64_t rows0 = stats().scan_rows;
	tally_scan *s;
	cr_assert_eq(tally_scan_open(db, "m", "a", INT64_MIN, INT64_MAX, &s), 0);
	tally_row row;
	for (int i = 0; i < 10; i++) {
		cr_assert_eq(tally_scan_next(s, &row), 1, "%s", tally_errmsg());
		check_row(s, &row, t[i], i, (size_t)i);
	}
	tally_stats st = stats();
	cr_assert_leq(st.scan_rows - rows0, 4096, "10 rows read, %" PRIu64 " decoded",
		      st.scan_rows - rows0);
	cr_assert_gt(st.query_bytes, 0, "the window is counted");
	cr_assert_lt(st.query_bytes, 1 << 20, "%" PRIu64 " bytes held", st.query_bytes);
	uint64_t peak = 0;
	size_t n = 10;
	int rc;
	while ((rc = tally_scan_next(s, &row)) == 1) {
		int64_t want_t = n < N ? t[n] : mt[n - N], want_id = (int64_t)n;
		check_row(s, &row, want_t, want_id, n);
		n++;
		if (n % 10007 == 0) {
			uint64_t q = stats().query_bytes;
			peak = q > peak ? q : peak;
		}
	}
	cr_assert_eq(rc, 0, "%s", tally_errmsg());
	cr_assert_eq(n, (size_t)N + M);
	cr_assert_lt(peak, 1 << 20, "the windows held peaked at %" PRIu64 " bytes", peak);
	cr_assert_eq(stats().scan_rows - rows0, (uint64_t)N + M);
	tally_scan_close(s);
	cr_assert_eq(stats().query_bytes, 0);
	free(t);
	free(id);
}

typedef struct ev {
	int64_t t, id;
} ev;

static int ev_cmp(const void *x, const void *y)
{
	const ev *a = x, *b = y;
	if (a->t != b->t)
		return a->t < b->t ? -1 : 1;
	return (a->id > b->id) - (a->id < b->id);
}

/* Events of one key through three shards, late and with equal times,
 * across several flushes and merges and the memtables: every range's scan
 * equals brute force (rows at equal times compared as a set: their order
 * across shards is the collection order). */
Test(scan, equals_brute_force_with_late_rows_and_ties)
{
	enum { N = 60000, ROUNDS = 6 };
	tu_rng r = {tu_seed("scan equals brute force")};
	ev *all = malloc(N * sizeof *all);
	int64_t t[N / ROUNDS], id[N / ROUNDS];
	size_t n = 0;
	for (int round = 0; round < ROUNDS; round++) {
		for (int sh = 0; sh < 3; sh++) {
			size_t m = 0;
			for (; m < N / ROUNDS / 3; m++, n++) {
				/* a 3-hour spread with repeats: late rows and ties */
				t[m] = T0 + (int64_t)tu_below(&r, 3 * 3600) * SEC;
				id[m] = (int64_t)n;
				all[n] = (ev){t[m], id[m]};
			}
			put(sh, "k", t, id, m);
		}
		if (round % 2 == 0)
			cr_assert_eq(tally_db_flush(db), 0, "%s", tally_errmsg());
		if (round == 4)
			cr_assert_eq(tally_db_merge(db), 0, "%s", tally_errmsg());
	}
	qsort(all, n, sizeof *all, ev_cmp);
	ev *got = malloc(n * sizeof *got);
	for (int q = 0; q < 20; q++) {
		int64_t a = T0 + (int64_t)tu_below(&r, 3 * 3600) * SEC - SEC;
		int64_t b = a + (int64_t)tu_below(&r, 2 * 3600) * SEC;
		if (q == 0)
			a = INT64_MIN, b = INT64_MAX;
		tally_scan *s;
		cr_assert_eq(tally_scan_open(db, "m", "k", a, b, &s), 0);
		size_t cv = column(s, "v"), k = 0;
		tally_row row;
		int rc;
		while ((rc = tally_scan_next(s, &row)) == 1) {
			cr_assert_lt(k, n);
			cr_assert(k == 0 || got[k - 1].t <= row.ts, "row %zu out of time order", k);
			got[k++] = (ev){row.ts, row.values[cv].v.i64};
		}
		cr_assert_eq(rc, 0, "%s", tally_errmsg());
		tally_scan_close(s);
		qsort(got, k, sizeof *got, ev_cmp);
		size_t w = 0;
		for (size_t i = 0; i < n; i++)
			if (all[i].t >= a && all[i].t < b) {
				cr_assert_lt(w, k, "[%" PRId64 ", %" PRId64 "): too few rows", a,
					     b);
				cr_assert_eq(got[w].t, all[i].t, "row %zu time", w);
				cr_assert_eq(got[w].id, all[i].id, "row %zu id", w);
				w++;
			}
		cr_assert_eq(w, k, "[%" PRId64 ", %" PRId64 "): %zu rows, want %zu", a, b, k, w);
	}
	free(got);
	free(all);
}

/* A scan opened over parts and a memtable goes on reading them after a
 * flush freed the memtable and a merge retired the parts (they are pinned
 * until the scan is past them), and it answers what was there at open:
 * rows written later are not in it. ASan would see a freed memtable or
 * part read here. */
Test(scan, keeps_its_snapshot_across_flushes_and_merges)
{
	enum { N = 20000, PARTS = 4 };
	int64_t t[N], id[N];
	for (int p = 0; p < PARTS; p++) {
		for (int i = 0; i < N; i++)
			t[i] = T0 + (int64_t)(i * PARTS + p) * SEC, id[i] = i * PARTS + p;
		put(0, "a", t, id, N);
		if (p < PARTS - 1)
			cr_assert_eq(tally_db_flush(db), 0, "%s", tally_errmsg());
	}
	uint64_t parts0 = stats().parts;
	cr_assert_geq(parts0, PARTS - 1);
	tally_scan *s;
	cr_assert_eq(tally_scan_open(db, "m", "a", INT64_MIN, INT64_MAX, &s), 0);
	tally_row row;
	size_t n = 0;
	for (; n < 100; n++) {
		cr_assert_eq(tally_scan_next(s, &row), 1);
		check_row(s, &row, T0 + (int64_t)n * SEC, (int64_t)n, n);
	}
	/* later rows, then the memtable flushed and the parts merged away */
	for (int i = 0; i < N; i++)
		t[i] = T0 + (int64_t)(PARTS * N + i) * SEC, id[i] = PARTS * N + i;
	put(0, "a", t, id, N);
	cr_assert_eq(tally_db_flush(db), 0, "%s", tally_errmsg());
	cr_assert_eq(tally_db_merge(db), 0, "%s", tally_errmsg());
	cr_assert_lt(stats().parts, parts0 + 1, "the merge retired parts the scan reads");
	int rc;
	while ((rc = tally_scan_next(s, &row)) == 1) {
		check_row(s, &row, T0 + (int64_t)n * SEC, (int64_t)n, n);
		n++;
	}
	cr_assert_eq(rc, 0, "%s", tally_errmsg());
	cr_assert_eq(n, (size_t)PARTS * N, "the rows at open, no more");
	tally_scan_close(s);
	uint64_t agg, rows;
	cr_assert_eq(tu_count_key(db, "m", "v", "a", &agg, &rows), 0);
	cr_assert_eq(rows, (uint64_t)(PARTS + 1) * N);
}

/* A flushed memtable that an open scan still pins counts under the memory
 * limit (in query_bytes) until the scan lets it go: scans opened between
 * flushes cannot hold memtables past the limit unseen. */
Test(scan, a_pinned_flushed_memtable_counts_under_the_limit)
{
	enum { N = 50000 };
	int64_t *t = malloc(N * sizeof *t), *id = malloc(N * sizeof *id);
	for (int64_t i = 0; i < N; i++)
		t[i] = T0 + i * SEC, id[i] = i;
	put(0, "a", t, id, N);
	uint64_t held = stats().memtable_bytes;
	cr_assert_gt(held, 1 << 20);
	tally_scan *s;
	cr_assert_eq(tally_scan_open(db, "m", "a", INT64_MIN, INT64_MAX, &s), 0);
	cr_assert_eq(tally_db_flush(db), 0, "%s", tally_errmsg());
	tally_stats st = stats();
	cr_assert_eq(st.memtable_bytes, 0);
	cr_assert_geq(st.query_bytes, held, "%" PRIu64 " bytes counted, the memtable held %" PRIu64,
		      st.query_bytes, held);
	tally_row row;
	size_t n = 0;
	int rc;
	while ((rc = tally_scan_next(s, &row)) == 1) {
		check_row(s, &row, t[n], id[n], n);
		n++;
	}
	cr_assert_eq(rc, 0);
	cr_assert_eq(n, (size_t)N);
	tally_scan_close(s);
	cr_assert_eq(stats().query_bytes, 0, "the memtable's bytes go with it");
	free(t);
	free(id);
}
