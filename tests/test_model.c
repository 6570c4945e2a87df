/*
 * test_model.c — randomised tests against a brute-force reference model.
 *
 * Random tables, keys, fields and timestamps (in order, shuffled, or with
 * some keys' events hours late) are written through random writers on
 * random shards, as line protocol and as binary batches, with bad lines
 * mixed in and reopens (WAL replay) in between. After each round, random
 * queries of every kind are answered by tally and by a plain loop over the
 * accepted events; the answers must be equal. Values are multiples of 1/4
 * with small magnitudes, so every sum is exact in any order and equality is
 * exact, not approximate.
 *
 * TALLY_SEED=n replays a run; TALLY_MODEL_ROUNDS scales it.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <time.h>

#include "bagg.h"
#include "testutil.h"

#define MAXEV   20000
#define NKEYS   7
#define NFIELDS 4 /* f float, i int, u uint, b bool (+ s string, tag) */

static const char *field_names[NFIELDS] = {"f", "i", "u", "b"};

typedef struct ev {
	int table;
	int key;
	int64_t ts;
	int has[NFIELDS];
	double v[NFIELDS]; /* as the rollup sees it */
	int has_s;
	char s[16];
	char tag[8];
} ev;

typedef struct model {
	ev *e;
	size_t n;
	tally_db *db;
	char *dir;
	tally_options opt;
	tu_rng rng;
	int64_t t0;
} model;

static void key_name(int k, char *buf)
{
	sprintf(buf, "k%d%s", k, k == 3 ? " sp,c=" : "");
}
static void table_name(int t, char *buf)
{
	sprintf(buf, "t%d", t);
}

/* line protocol escaping for tag values */
static void esc_tag(const char *in, char *out)
{
	while (*in) {
		if (*in == ' ' || *in == ',' || *in == '=')
			*out++ = '\\';
		*out++ = *in++;
	}
	*out = 0;
}

static void reopen(model *m)
{
	tally_db_close(m->db);
	m->db = NULL;
	int rc = tally_db_open(m->dir, &m->opt, &m->db);
	cr_assert_eq(rc, 0, "reopen: %s", tally_errmsg());
}

static ev random_event(model *m, int mode, int64_t *clock_per_key)
{
	ev e;
	memset(&e, 0, sizeof e);
	e.table = (int)tu_below(&m->rng, 2);
	e.key = (int)tu_below(&m->rng, NKEYS);
	int64_t span = 2 * TALLY_1D;
	switch (mode) {
	case 0: /* in order per key */
		clock_per_key[e.key] += (int64_t)tu_below(&m->rng, 60) * TALLY_NS_PER_SEC +
					(int64_t)tu_below(&m->rng, 1000);
		e.ts = m->t0 + clock_per_key[e.key];
		break;
	case 1: /* shuffled over two days */
		e.ts = m->t0 + (int64_t)tu_below(&m->rng, (uint64_t)span);
		break;
	default: /* mostly in order; a fifth of events hours late */
		clock_per_key[e.key] += (int64_t)tu_below(&m->rng, 60) * TALLY_NS_PER_SEC;
		e.ts = m->t0 + clock_per_key[e.key];
		if (tu_below(&m->rng, 5) == 0)
			e.ts -= (int64_t)(1 + tu_below(&m->rng, 6)) * TALLY_1H;
		break;
	}
	/* some events exactly on window boundaries */
	if (tu_below(&m->rng, 10) == 0)
		e.ts -= e.ts % TALLY_5M;
	do {
		for (int f = 0; f < NFIELDS; f++)
			e.has[f] = tu_below(&m->rng, 4) != 0;
	} while (!e.has[0] && !e.has[1] && !e.has[2] && !e.has[3]);
	e.v[0] = ((double)(int64_t)tu_below(&m->rng, 8001) - 4000) / 4.0;
	e.v[1] = (double)((int64_t)tu_below(&m->rng, 2000001) - 1000000);
	e.v[2] = (double)tu_below(&m->rng, 1000000);
	e.v[3] = (double)tu_below(&m->rng, 2);
	e.has_s = tu_below(&m->rng, 3) == 0;
	sprintf(e.s, "s%u \"q\\", (unsigned)tu_below(&m->rng, 100));
	sprintf(e.tag, "l%u", (unsigned)tu_below(&m->rng, 4));
	return e;
}

static size_t ev_to_lp(const ev *e, char *out)
{
	char t[16], k[32], ke[64];
	table_name(e->table, t);
	key_name(e->key, k);
	esc_tag(k, ke);
	char *p = out;
	p += sprintf(p, "%s,cam=%s,lane=%s ", t, ke, e->tag);
	const char *sep = "";
	if (e->has[0])
		p += sprintf(p, "%sf=%.17g", sep, e->v[0]), sep = ",";
	if (e->has[1])
		p += sprintf(p, "%si=%lldi", sep, (long long)e->v[1]), sep = ",";
	if (e->has[2])
		p += sprintf(p, "%su=%lluu", sep, (unsigned long long)e->v[2]), sep = ",";
	if (e->has[3])
		p += sprintf(p, "%sb=%s", sep, e->v[3] ? "true" : "F"), sep = ",";
	if (e->has_s) {
		p += sprintf(p, "%ss=\"", sep);
		for (const char *c = e->s; *c; c++) {
			if (*c == '"' || *c == '\\')
				*p++ = '\\';
			*p++ = *c;
		}
		*p++ = '"';
	}
	p += sprintf(p, " %lld\n", (long long)e->ts);
	return (size_t)(p - out);
}

/* Writes events [a, b) through line protocol, with bad lines mixed in. */
static void write_lp(model *m, tally_writer *w, const ev *evs, size_t a, size_t b)
{
	size_t cap = (b - a) * 256 + 4096;
	char *buf = malloc(cap), *p = buf;
	uint64_t expect_bad = 0;
	for (size_t i = a; i < b; i++) {
		if (tu_below(&m->rng, 50) == 0) {
			static const char *bad[] = {
				"t0,cam=k1 f=1.5.5 1\n", "t0,cam=k1 f=\"unterminated 1\n",
				"t0,cam=k1 i=1.5i\n",    "t1,cam= f=1\n",
				"t0,lane=x f=1 1000\n",  /* no key tag */
				"t0,cam=k1 f=1i 1000\n", /* f is float: type conflict */
			};
			p += sprintf(p, "%s", bad[tu_below(&m->rng, 6)]);
			expect_bad++;
		}
		if (tu_below(&m->rng, 30) == 0)
			p += sprintf(p, "# comment\n\n");
		p += ev_to_lp(&evs[i], p);
	}
	tally_write_result res;
	int rc = tally_write_lp(w, buf, (size_t)(p - buf), TALLY_PREC_NS, &res);
	cr_assert_eq(rc, 0, "write_lp: %s", tally_errmsg());
	cr_assert_eq(res.accepted, b - a, "accepted %llu of %zu; first error line %llu: %s",
		     (unsigned long long)res.accepted, b - a,
		     res.n_errors ? (unsigned long long)res.errors[0].line : 0ULL,
		     res.n_errors ? res.errors[0].reason : "");
	cr_assert_eq(res.rejected, expect_bad);
	free(buf);
}

/* Writes events [a, b) as binary batches, one per run of equal keys. */
static void write_bin(tally_writer *w, const ev *evs, size_t a, size_t b)
{
	while (a < b) {
		size_t e = a;
		while (e < b && evs[e].key == evs[a].key && evs[e].table == evs[a].table)
			e++;
		size_t n = e - a;
		int64_t *ts = calloc(n, 8);
		double *f = calloc(n, 8);
		int64_t *iv = calloc(n, 8);
		uint64_t *uv = calloc(n, 8);
		uint8_t *bv = calloc(n, 1);
		const char **sv = calloc(n, sizeof *sv);
		const char **tv = calloc(n, sizeof *tv);
		uint8_t *pres[6];
		for (int c = 0; c < 6; c++)
			pres[c] = calloc((n + 7) / 8, 1);
		for (size_t r = 0; r < n; r++) {
			const ev *x = &evs[a + r];
			ts[r] = x->ts;
			f[r] = x->v[0];
			iv[r] = (int64_t)x->v[1];
			uv[r] = (uint64_t)x->v[2];
			bv[r] = (uint8_t)x->v[3];
			sv[r] = x->s;
			tv[r] = x->tag;
			for (int c = 0; c < NFIELDS; c++)
				if (x->has[c])
					pres[c][r / 8] |= (uint8_t)(1u << (r % 8));
			if (x->has_s)
				pres[4][r / 8] |= (uint8_t)(1u << (r % 8));
		}
		pres[5][0] = 0;
		tally_column cols[6] = {
			{"f", TALLY_T_F64, f, pres[0]},  {"i", TALLY_T_I64, iv, pres[1]},
			{"u", TALLY_T_U64, uv, pres[2]}, {"b", TALLY_T_BOOL, bv, pres[3]},
			{"s", TALLY_T_STR, sv, pres[4]}, {"lane", TALLY_T_TAG, tv, NULL},
		};
		char t[16], k[32];
		table_name(evs[a].table, t);
		key_name(evs[a].key, k);
		tally_batch bt = {t, k, "cam", n, ts, 6, cols};
		int rc = tally_write_batch(w, &bt);
		cr_assert_eq(rc, 0, "write_batch: %s", tally_errmsg());
		free(ts), free(f), free(iv), free(uv), free(bv), free(sv), free(tv);
		for (int c = 0; c < 6; c++)
			free(pres[c]);
		a = e;
	}
}

static int64_t wstart(int64_t ts, int64_t w, int64_t off)
{
	int64_t d = ts - off, q = d / w;
	if (d % w < 0)
		q--;
	return q * w + off;
}

static bagg brute(const model *m, int table, int key, int field, int64_t a, int64_t b)
{
	bagg r = {0};
	for (size_t i = 0; i < m->n; i++) {
		const ev *e = &m->e[i];
		if (e->table == table && e->key == key && e->has[field] && e->ts >= a && e->ts < b)
			bagg_add(&r, e->v[field]);
	}
	return r;
}

static int64_t random_time(model *m)
{
	int64_t span = 3 * TALLY_1D;
	int64_t t = m->t0 - TALLY_1D / 2 + (int64_t)tu_below(&m->rng, (uint64_t)span);
	switch (tu_below(&m->rng, 4)) {
	case 0: return wstart(t, m->opt.levels[0], m->opt.align_offset);
	case 1: return wstart(t, m->opt.levels[m->opt.n_levels - 1], m->opt.align_offset);
	default: return t;
	}
}

static void check_queries(model *m, int n_queries)
{
	char t[16], k[32];
	for (int q = 0; q < n_queries; q++) {
		int table = (int)tu_below(&m->rng, 2), key = (int)tu_below(&m->rng, NKEYS);
		int field = (int)tu_below(&m->rng, NFIELDS);
		table_name(table, t);
		key_name(key, k);
		int64_t a = random_time(m), b = random_time(m);
		if (a > b) {
			int64_t x = a;
			a = b;
			b = x;
		}
		char what[160];
		/* exact aggregate */
		tally_agg got;
		int rc = tally_query_agg(m->db, t, field_names[field], k, a, b, &got);
		cr_assert_eq(rc, 0, "agg: %s", tally_errmsg());
		bagg want = brute(m, table, key, field, a, b);
		snprintf(what, sizeof what, "agg %s/%s/%s [%lld,%lld)", t, k, field_names[field],
			 (long long)a, (long long)b);
		check_agg(what, &want, &got);

		/* series with a random step */
		int64_t steps[4] = {m->opt.levels[0], m->opt.levels[1], m->opt.levels[2],
				    3 * m->opt.levels[0]};
		int64_t step = steps[tu_below(&m->rng, 4)];
		static tally_bucket buf[20000];
		size_t n;
		rc = tally_query_series(m->db, t, field_names[field], k, step, a, b, buf, 20000,
					&n);
		cr_assert_eq(rc, 0, "series: %s", tally_errmsg());
		int64_t off = m->opt.align_offset;
		int64_t first = wstart(a, step, off);
		/* brute force: bucket the matching events by window, then sort */
		size_t nw = 0;
		static struct {
			int64_t start;
			bagg a;
		} win[MAXEV];
		for (size_t i = 0; i < m->n; i++) {
			const ev *e = &m->e[i];
			if (e->table != table || e->key != key || !e->has[field] || e->ts < first)
				continue;
			int64_t s = wstart(e->ts, step, off);
			if (s >= b)
				continue;
			size_t x = 0;
			while (x < nw && win[x].start != s)
				x++;
			if (x == nw) {
				win[nw].start = s;
				memset(&win[nw].a, 0, sizeof win[nw].a);
				nw++;
			}
			bagg_add(&win[x].a, e->v[field]);
		}
		for (size_t x = 1; x < nw; x++)
			for (size_t y = x; y > 0 && win[y - 1].start > win[y].start; y--) {
				__typeof__(win[0]) tmp = win[y];
				win[y] = win[y - 1];
				win[y - 1] = tmp;
			}
		size_t j = 0;
		for (; j < nw; j++) {
			snprintf(what, sizeof what, "series %s/%s/%s step %lld window %lld", t, k,
				 field_names[field], (long long)step, (long long)win[j].start);
			cr_assert_lt(j, n, "%s: missing", what);
			cr_assert_eq(buf[j].start, win[j].start, "%s: got window %lld", what,
				     (long long)buf[j].start);
			check_agg(what, &win[j].a, &buf[j].agg);
		}
		cr_assert_eq(j, n, "series: %zu windows, want %zu", n, j);

		/* every key at once */
		if (tu_below(&m->rng, 4) == 0) {
			tally_keys_iter *it;
			rc = tally_query_keys(m->db, t, field_names[field], a, b, &it);
			cr_assert_eq(rc, 0, "keys: %s", tally_errmsg());
			const char *kk;
			tally_agg ka;
			int seen[NKEYS] = {0};
			char prev[64] = "";
			while ((rc = tally_keys_next(it, &kk, &ka)) == 1) {
				int kid = -1;
				for (int x = 0; x < NKEYS; x++) {
					char nm[32];
					key_name(x, nm);
					if (!strcmp(nm, kk))
						kid = x;
				}
				cr_assert_geq(kid, 0, "unknown key %s", kk);
				cr_assert_lt(strcmp(prev, kk), 0, "keys out of order");
				snprintf(prev, sizeof prev, "%s", kk);
				seen[kid] = 1;
				bagg kw = brute(m, table, kid, field, a, b);
				snprintf(what, sizeof what, "keys %s/%s", t, kk);
				check_agg(what, &kw, &ka);
			}
			cr_assert_eq(rc, 0);
			tally_keys_close(it);
			for (int x = 0; x < NKEYS; x++)
				if (!seen[x])
					cr_assert_eq(brute(m, table, x, field, a, b).count, 0,
						     "keys: key %d missing", x);
		}

		/* raw scan */
		if (tu_below(&m->rng, 4) == 0) {
			tally_scan *sc;
			rc = tally_scan_open(m->db, t, k, a, b, &sc);
			cr_assert_eq(rc, 0, "scan: %s", tally_errmsg());
			size_t ncol = tally_scan_columns(sc);
			int fcol[NFIELDS] = {-1, -1, -1, -1}, scol = -1, lcol = -1;
			for (size_t c = 0; c < ncol; c++) {
				const char *nm;
				enum tally_type ty;
				tally_scan_column(sc, c, &nm, &ty);
				for (int f = 0; f < NFIELDS; f++)
					if (!strcmp(nm, field_names[f]))
						fcol[f] = (int)c;
				if (!strcmp(nm, "s"))
					scol = (int)c;
				if (!strcmp(nm, "lane"))
					lcol = (int)c;
			}
			/* expected rows: the model's events of this key in range, in
			 * time order (ties: any order, compared as multisets) */
			size_t want_n = 0;
			for (size_t i = 0; i < m->n; i++)
				want_n += m->e[i].table == table && m->e[i].key == key &&
					  m->e[i].ts >= a && m->e[i].ts < b;
			tally_row row;
			size_t got_n = 0;
			int64_t last = INT64_MIN;
			while ((rc = tally_scan_next(sc, &row)) == 1) {
				cr_assert_geq(row.ts, last, "scan out of order");
				last = row.ts;
				got_n++;
				/* find a matching model event */
				int found = 0;
				for (size_t i = 0; i < m->n && !found; i++) {
					const ev *e = &m->e[i];
					if (e->table != table || e->key != key || e->ts != row.ts)
						continue;
					int ok = 1;
					for (int f = 0; f < NFIELDS && ok; f++) {
						const tally_value *v =
							fcol[f] >= 0 ? &row.values[fcol[f]] : NULL;
						int has = v && v->type != TALLY_T_NONE;
						if (has != e->has[f])
							ok = 0;
						else if (has) {
							double x = v->type == TALLY_T_F64 ? v->v.f64
								   : v->type == TALLY_T_I64
									   ? (double)v->v.i64
								   : v->type == TALLY_T_U64
									   ? (double)v->v.u64
									   : v->v.b;
							ok = x == e->v[f];
						}
					}
					if (ok && scol >= 0) {
						const tally_value *v = &row.values[scol];
						int has = v->type != TALLY_T_NONE;
						ok = has == e->has_s &&
						     (!has ||
						      (v->v.str.len == strlen(e->s) &&
						       !memcmp(v->v.str.ptr, e->s, v->v.str.len)));
					}
					if (ok && lcol >= 0) {
						const tally_value *v = &row.values[lcol];
						ok = v->type == TALLY_T_TAG &&
						     v->v.str.len == strlen(e->tag) &&
						     !memcmp(v->v.str.ptr, e->tag, v->v.str.len);
					}
					found = ok;
				}
				cr_assert(found, "scan row at %lld matches no event",
					  (long long)row.ts);
			}
			cr_assert_eq(rc, 0);
			cr_assert_eq(got_n, want_n, "scan: %zu rows, want %zu", got_n, want_n);
			tally_scan_close(sc);
		}
	}
}

static void run_model(int mode, int shards, int custom_levels, const char *name)
{
	model m;
	memset(&m, 0, sizeof m);
	m.rng.s = tu_seed(name);
	m.dir = tu_tmpdir();
	tally_options_init(&m.opt);
	m.opt.shards = (unsigned)shards;
	m.opt.log_fn = tu_quiet_log;
	m.opt.table_keys = "t0=cam,t1=cam";
	/* small memtables: the background flusher turns them into parts
	 * while writes and queries go on */
	m.opt.memtable_bytes = 64 * 1024 << tu_below(&m.rng, 4);
	if (custom_levels) {
		/* small windows so ranges cross many of them */
		m.opt.n_levels = 3;
		m.opt.levels[0] = 10 * TALLY_NS_PER_SEC;
		m.opt.levels[1] = 120 * TALLY_NS_PER_SEC;
		m.opt.levels[2] = 3600 * TALLY_NS_PER_SEC;
		m.opt.align_offset = 7 * TALLY_NS_PER_SEC;
	} else if (tu_below(&m.rng, 2)) {
		m.opt.align_offset = 3 * TALLY_1H; /* Moscow days */
	}
	m.e = calloc(MAXEV, sizeof *m.e);
	m.t0 = INT64_C(1700000000000000000);
	int rc = tally_db_open(m.dir, &m.opt, &m.db);
	cr_assert_eq(rc, 0, "open: %s", tally_errmsg());
	/* Fix every column's type first, so that the bad lines mixed in
	 * later (an int where the float f goes) are conflicts, not creators. */
	for (int t = 0; t < 2; t++) {
		ev *e = &m.e[m.n++];
		memset(e, 0, sizeof *e);
		e->table = t;
		e->ts = m.t0;
		for (int f = 0; f < NFIELDS; f++)
			e->has[f] = 1;
		e->v[0] = 1.25;
		e->has_s = 1;
		strcpy(e->s, "seed");
		strcpy(e->tag, "l0");
	}
	{
		tally_writer *w;
		cr_assert_eq(tally_writer_open(m.db, 0, &w), 0);
		char lp[1024];
		size_t l0 = ev_to_lp(&m.e[0], lp);
		size_t l1 = ev_to_lp(&m.e[1], lp + l0);
		tally_write_result res;
		cr_assert_eq(tally_write_lp(w, lp, l0 + l1, TALLY_PREC_NS, &res), 0);
		cr_assert_eq(res.accepted, 2, "seed: %s", res.n_errors ? res.errors[0].reason : "");
		tally_writer_close(w);
	}
	int64_t clock_per_key[NKEYS] = {0};
	const char *rounds_env = getenv("TALLY_MODEL_ROUNDS");
	int rounds = rounds_env ? atoi(rounds_env) : 4;
	for (int round = 0; round < rounds && m.n < MAXEV - 2000; round++) {
		size_t n = 200 + tu_below(&m.rng, 1500);
		size_t base = m.n;
		for (size_t i = 0; i < n; i++)
			m.e[base + i] = random_event(&m, mode, clock_per_key);
		/* write in slices, each through a random writer and path */
		size_t a = base;
		while (a < base + n) {
			size_t b = a + 1 + tu_below(&m.rng, 300);
			if (b > base + n)
				b = base + n;
			tally_writer *w;
			rc = tally_writer_open(m.db,
					       (int)tu_below(&m.rng, (uint64_t)shards + 1) - 1, &w);
			cr_assert_eq(rc, 0);
			if (tu_below(&m.rng, 2))
				write_lp(&m, w, m.e, a, b);
			else
				write_bin(w, m.e, a, b);
			tally_writer_close(w);
			m.n = b;
			a = b;
		}
		check_queries(&m, 40);
		if (tu_below(&m.rng, 3) == 0) {
			/* into parts: answers must not change */
			rc = tally_db_flush(m.db);
			cr_assert_eq(rc, 0, "flush: %s", tally_errmsg());
			check_queries(&m, 20);
			/* merges, sealing and late folds: answers must not change */
			rc = tally_db_merge(m.db);
			cr_assert_eq(rc, 0, "merge: %s", tally_errmsg());
			check_queries(&m, 20);
		}
		if (tu_below(&m.rng, 2)) {
			cr_assert_eq(tally_db_sync(m.db), 0);
			reopen(&m);
			check_queries(&m, 20);
		}
	}
	tally_stats st;
	cr_assert_eq(tally_db_stats(m.db, &st), 0);
	cr_assert_eq(st.events, m.n, "stats: %llu events, want %zu", (unsigned long long)st.events,
		     m.n);
	tally_db_close(m.db);
	tu_rmrf(m.dir);
	free(m.dir);
	free(m.e);
}

Test(model, in_order_one_shard)
{
	run_model(0, 1, 0, "in_order_one_shard");
}
Test(model, shuffled_three_shards)
{
	run_model(1, 3, 0, "shuffled_three_shards");
}
Test(model, late_two_shards)
{
	run_model(2, 2, 0, "late_two_shards");
}
Test(model, late_small_levels)
{
	run_model(2, 1, 1, "late_small_levels");
}
Test(model, shuffled_small_levels_shards)
{
	run_model(1, 2, 1, "shuffled_small_levels_shards");
}
