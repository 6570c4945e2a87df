/*
 * test_edges.c — every query kind at the edges of the stored time range.
 *
 * Events are written at and near the first and last instants the engine
 * stores (TS_ENGINE_MIN, TS_ENGINE_MAX), on and beside window boundaries
 * of every level there, and near 0; writes just outside the range must be
 * refused per line. Then series (several steps), exact aggregates, scans
 * and all-keys aggregates over ranges whose ends are drawn from the same
 * extremes, INT64_MIN and INT64_MAX included, are compared with brute
 * force computed in 128-bit arithmetic: in memtables, in parts, after a
 * merge and after a reopen, with aligned and offset windows.
 *
 * TALLY_SEED=n replays a run.
 */
#include <criterion/criterion.h>

#include "bagg.h"
#include "rollup.h"
#include "testutil.h"

#define NKEYS 3
#define MAXEV 3000

/* 128-bit integers hold every window start and end exactly */
__extension__ typedef __int128 i128;

typedef struct eev {
	int key;
	int64_t ts;
	double v;
} eev;

typedef struct emodel {
	eev e[MAXEV];
	size_t n;
	tally_db *db;
	tally_writer *w[2];
	char *dir;
	tally_options opt;
	tu_rng rng;
} emodel;

/* Window start of ts in 128 bits: no overflow whatever ts is. */
static i128 wstart128(int64_t ts, int64_t w, int64_t off)
{
	i128 d = (i128)ts - off, q = d / w;
	if (d % w < 0)
		q--;
	return q * w + off;
}

/* Instants worth testing: the range's ends and beyond, window boundaries
 * of each level near both ends and near 0, and random times near both
 * ends. */
static int64_t edge_time(emodel *m)
{
	const int64_t lo = TS_ENGINE_MIN, hi = TS_ENGINE_MAX;
	int64_t w = m->opt.levels[tu_below(&m->rng, 3)], off = m->opt.align_offset;
	int64_t jitter = (int64_t)tu_below(&m->rng, 3) - 1; /* -1, 0, +1 */
	switch (tu_below(&m->rng, 12)) {
	case 0: return lo + (int64_t)tu_below(&m->rng, 3);
	case 1: return hi - (int64_t)tu_below(&m->rng, 3);
	case 2: /* a boundary at or after lo */
		return (int64_t)(wstart128(lo, w, off) + w * (i128)(1 + tu_below(&m->rng, 3))) +
		       jitter;
	case 3: /* a boundary at or before hi */
		return (int64_t)(wstart128(hi, w, off) - w * (i128)tu_below(&m->rng, 3)) + jitter;
	case 4: return lo + (int64_t)tu_below(&m->rng, (uint64_t)(10 * 365 * TALLY_1D));
	case 5: return hi - (int64_t)tu_below(&m->rng, (uint64_t)(10 * 365 * TALLY_1D));
	case 6: return lo + (int64_t)tu_below(&m->rng, (uint64_t)(3 * TALLY_1D));
	case 7: return hi - (int64_t)tu_below(&m->rng, (uint64_t)(3 * TALLY_1D));
	case 8: return (int64_t)wstart128(0, w, off) + jitter;
	default: return (int64_t)((uint64_t)lo + tu_below(&m->rng, (uint64_t)hi - (uint64_t)lo));
	}
}

/* Query ends: the event instants and beyond the range, to INT64_MIN/MAX. */
static int64_t query_time(emodel *m)
{
	switch (tu_below(&m->rng, 8)) {
	case 0: return INT64_MIN;
	case 1: return INT64_MAX;
	case 2: return tu_below(&m->rng, 2) ? TS_ENGINE_MIN - 1 : TS_ENGINE_MAX + 1;
	case 3: return tu_below(&m->rng, 2) ? INT64_MIN + 1 : INT64_MAX - 1;
	case 4:
		if (m->n)
			return m->e[tu_below(&m->rng, m->n)].ts + (int64_t)tu_below(&m->rng, 2);
		/* fall through */
	default: return edge_time(m);
	}
}

static void key_name(int k, char *buf)
{
	sprintf(buf, "k%d", k);
}

static void open_model(emodel *m)
{
	cr_assert_eq(tally_db_open(m->dir, &m->opt, &m->db), 0, "open: %s", tally_errmsg());
	for (int i = 0; i < 2; i++)
		cr_assert_eq(tally_writer_open(m->db, i, &m->w[i]), 0);
}

static void close_model(emodel *m)
{
	for (int i = 0; i < 2; i++)
		tally_writer_close(m->w[i]);
	tally_db_close(m->db);
}

/* Writes n events at edge times, with lines outside the range mixed in
 * (each must be refused alone, naming the range). */
static void write_events(emodel *m, size_t n)
{
	char *buf = malloc(n * 128 + 4096), *p = buf;
	uint64_t bad = 0;
	for (size_t i = 0; i < n && m->n < MAXEV; i++) {
		if (tu_below(&m->rng, 20) == 0) {
			static const int64_t out[] = {INT64_MIN,         INT64_MIN + 1,
						      TS_ENGINE_MIN - 1, TS_ENGINE_MAX + 1,
						      INT64_MAX - 1,     INT64_MAX};
			p += sprintf(p, "e,k=k0 v=1 %lld\n", (long long)out[tu_below(&m->rng, 6)]);
			bad++;
		}
		eev *e = &m->e[m->n++];
		e->key = (int)tu_below(&m->rng, NKEYS);
		e->ts = edge_time(m);
		e->v = (double)((int64_t)tu_below(&m->rng, 2001) - 1000);
		p += sprintf(p, "e,k=k%d v=%.0f %lld\n", e->key, e->v, (long long)e->ts);
	}
	tally_write_result res;
	int rc = tally_write_lp(m->w[tu_below(&m->rng, 2)], buf, (size_t)(p - buf), TALLY_PREC_NS,
				&res);
	cr_assert_eq(rc, 0, "write: %s", tally_errmsg());
	cr_assert_eq(res.rejected, bad, "rejected %llu, want %llu: %s",
		     (unsigned long long)res.rejected, (unsigned long long)bad,
		     res.n_errors ? res.errors[0].reason : "");
	if (res.n_errors)
		cr_assert(strstr(res.errors[0].reason, "range"), "%s", res.errors[0].reason);
	free(buf);
}

static bagg brute(const emodel *m, int key, int64_t a, int64_t b)
{
	bagg r = {0};
	for (size_t i = 0; i < m->n; i++)
		if ((key < 0 || m->e[i].key == key) && m->e[i].ts >= a && m->e[i].ts < b)
			bagg_add(&r, m->e[i].v);
	return r;
}

static int cmp_i128(const void *x, const void *y)
{
	i128 a = *(const i128 *)x, b = *(const i128 *)y;
	return (a > b) - (a < b);
}

static void check_series(emodel *m, int key, int64_t step, int64_t a, int64_t b)
{
	char k[16], what[200];
	key_name(key, k);
	static tally_bucket got[MAXEV + 1];
	size_t n;
	int rc = tally_query_series(m->db, "e", "v", k, step, a, b, got, MAXEV + 1, &n);
	cr_assert_eq(rc, 0, "series: %s", tally_errmsg());
	/* the windows with events, in order */
	int64_t off = m->opt.align_offset;
	i128 first = wstart128(a, step, off);
	static i128 starts[MAXEV];
	size_t nw = 0;
	for (size_t i = 0; i < m->n; i++) {
		i128 s = wstart128(m->e[i].ts, step, off);
		if (m->e[i].key == key && s >= first && s < b)
			starts[nw++] = s;
	}
	qsort(starts, nw, sizeof *starts, cmp_i128);
	size_t u = 0;
	for (size_t i = 0; i < nw; i++)
		if (!u || starts[u - 1] != starts[i])
			starts[u++] = starts[i];
	snprintf(what, sizeof what, "series %s step %lld [%lld, %lld)", k, (long long)step,
		 (long long)a, (long long)b);
	cr_assert_eq(n, u, "%s: %zu windows, want %zu (first %lld, want %lld)", what, n, u,
		     n ? (long long)got[0].start : 0LL, u ? (long long)starts[0] : 0LL);
	for (size_t j = 0; j < u; j++) {
		cr_assert_eq(got[j].start, (int64_t)starts[j], "%s: window %zu at %lld, want %lld",
			     what, j, (long long)got[j].start, (long long)starts[j]);
		i128 s = starts[j];
		int64_t ws = (int64_t)s;
		/* the window [s, s + step): its end may lie past INT64_MAX */
		int64_t we = s + step > INT64_MAX ? INT64_MAX : (int64_t)(s + step);
		bagg want = brute(m, key, ws, we);
		if (s + step > INT64_MAX)
			for (size_t i = 0; i < m->n; i++)
				if (m->e[i].key == key && m->e[i].ts == INT64_MAX)
					bagg_add(&want, m->e[i].v);
		check_agg(what, &want, &got[j].agg);
	}
}

static void check_scan(emodel *m, int key, int64_t a, int64_t b)
{
	char k[16];
	key_name(key, k);
	tally_scan *s;
	int rc = tally_scan_open(m->db, "e", k, a, b, &s);
	if (rc == TALLY_ENOTFOUND) {
		cr_assert_eq(brute(m, key, a, b).count, 0);
		return;
	}
	cr_assert_eq(rc, 0, "scan: %s", tally_errmsg());
	/* brute force: the times in order */
	static int64_t want[MAXEV];
	size_t nw = 0;
	for (size_t i = 0; i < m->n; i++)
		if (m->e[i].key == key && m->e[i].ts >= a && m->e[i].ts < b)
			want[nw++] = m->e[i].ts;
	for (size_t x = 1; x < nw; x++)
		for (size_t y = x; y > 0 && want[y - 1] > want[y]; y--) {
			int64_t t = want[y];
			want[y] = want[y - 1];
			want[y - 1] = t;
		}
	tally_row row;
	size_t n = 0;
	while ((rc = tally_scan_next(s, &row)) == 1) {
		cr_assert_lt(n, nw, "scan %s [%lld, %lld): more rows than %zu", k, (long long)a,
			     (long long)b, nw);
		cr_assert_eq(row.ts, want[n], "scan %s [%lld, %lld) row %zu: %lld, want %lld", k,
			     (long long)a, (long long)b, n, (long long)row.ts, (long long)want[n]);
		n++;
	}
	cr_assert_eq(rc, 0, "scan: %s", tally_errmsg());
	cr_assert_eq(n, nw, "scan %s [%lld, %lld): %zu rows, want %zu", k, (long long)a,
		     (long long)b, n, nw);
	tally_scan_close(s);
}

static void check_keys(emodel *m, int64_t a, int64_t b)
{
	tally_keys_iter *it;
	int rc = tally_query_keys(m->db, "e", "v", a, b, &it);
	cr_assert_eq(rc, 0, "keys: %s", tally_errmsg());
	const char *key;
	tally_agg got;
	int seen[NKEYS] = {0};
	char what[160];
	while ((rc = tally_keys_next(it, &key, &got)) == 1) {
		int k = atoi(key + 1);
		seen[k] = 1;
		snprintf(what, sizeof what, "keys %s [%lld, %lld)", key, (long long)a,
			 (long long)b);
		bagg want = brute(m, k, a, b);
		cr_assert_neq(want.count, 0, "%s: a key without events", what);
		check_agg(what, &want, &got);
	}
	cr_assert_eq(rc, 0);
	tally_keys_close(it);
	for (int k = 0; k < NKEYS; k++)
		cr_assert(seen[k] || brute(m, k, a, b).count == 0, "keys [%lld, %lld): k%d missing",
			  (long long)a, (long long)b, k);
}

static void check_all(emodel *m, int n_queries)
{
	const int64_t steps[] = {m->opt.levels[0],     m->opt.levels[1],
				 m->opt.levels[2],     3 * m->opt.levels[0],
				 7 * m->opt.levels[2], LEVEL_WIDTH_MAX / TALLY_5M * TALLY_5M};
	/* the whole range, every way */
	for (int k = 0; k < NKEYS; k++) {
		char name[16], what[64];
		key_name(k, name);
		tally_agg a;
		cr_assert_eq(tally_query_agg(m->db, "e", "v", name, INT64_MIN, INT64_MAX, &a), 0);
		snprintf(what, sizeof what, "agg %s over everything", name);
		bagg want = brute(m, k, INT64_MIN, INT64_MAX);
		check_agg(what, &want, &a);
		/* a series walks every window between the first and the last
		 * event: fine windows over the whole range (6e7 of 5m) for one
		 * key, wide ones for the rest */
		for (size_t s = k == 0 ? 0 : 2; s < sizeof steps / sizeof *steps; s++)
			check_series(m, k, steps[s], INT64_MIN, INT64_MAX);
		check_scan(m, k, INT64_MIN, INT64_MAX);
	}
	check_keys(m, INT64_MIN, INT64_MAX);
	for (int q = 0; q < n_queries; q++) {
		int64_t a = query_time(m), b = query_time(m);
		if (a > b) {
			int64_t x = a;
			a = b;
			b = x;
		}
		int k = (int)tu_below(&m->rng, NKEYS);
		char name[16], what[160];
		key_name(k, name);
		tally_agg got;
		cr_assert_eq(tally_query_agg(m->db, "e", "v", name, a, b, &got), 0, "agg: %s",
			     tally_errmsg());
		snprintf(what, sizeof what, "agg %s [%lld, %lld)", name, (long long)a,
			 (long long)b);
		bagg want = brute(m, k, a, b);
		check_agg(what, &want, &got);
		/* fine steps over short ranges only (see above) */
		size_t first = (uint64_t)b - (uint64_t)a < (uint64_t)(400 * TALLY_1D) ? 0 : 2;
		check_series(m, k,
			     steps[first + tu_below(&m->rng, sizeof steps / sizeof *steps - first)],
			     a, b);
		check_scan(m, k, a, b);
		if (q % 4 == 0)
			check_keys(m, a, b);
	}
}

static void run_edges(int64_t align_offset, const char *name)
{
	static emodel m;
	memset(&m, 0, sizeof m);
	m.rng.s = tu_seed(name);
	m.dir = tu_tmpdir();
	tally_options_init(&m.opt);
	m.opt.log_fn = tu_quiet_log;
	m.opt.shards = 2;
	m.opt.align_offset = align_offset;
	m.opt.n_levels = 3;
	m.opt.levels[0] = TALLY_5M;
	m.opt.levels[1] = TALLY_1H;
	m.opt.levels[2] = TALLY_1D;
	open_model(&m);
	for (int round = 0; round < 4; round++) {
		write_events(&m, 150);
		check_all(&m, 30); /* memtables (and parts from earlier rounds) */
		switch (round % 3) {
		case 0: cr_assert_eq(tally_db_flush(m.db), 0, "flush: %s", tally_errmsg()); break;
		case 1:
			cr_assert_eq(tally_db_flush(m.db), 0, "flush: %s", tally_errmsg());
			cr_assert_eq(tally_db_merge(m.db), 0, "merge: %s", tally_errmsg());
			break;
		default:
			cr_assert_eq(tally_db_sync(m.db), 0);
			close_model(&m);
			open_model(&m);
			break;
		}
		check_all(&m, 30);
	}
	close_model(&m);
	tu_rmrf(m.dir);
	free(m.dir);
}

Test(edges, every_query_kind_agrees_at_the_ends_of_the_range)
{
	run_edges(0, "edges_aligned");
}

Test(edges, every_query_kind_agrees_at_the_ends_with_offset_windows)
{
	run_edges(3 * TALLY_1H, "edges_offset");
}
