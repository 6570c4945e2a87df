/*
 * test_tags.c — series keyed by several tags or all tags (engine/tagkey.h).
 *
 * A randomised model test writes two tables, "traffic" keyed by
 * camera+lane (with a tag outside the key) and "cpu" keyed by every tag
 * (lines carry two or three tags), through writers on three shards, with
 * late events, flushes, merges, sealing and reopens in between; after
 * each round subset queries (aggregates, series, scans) and grouped
 * all-keys queries are compared with a plain loop over the events.
 * Values are multiples of 1/4, so every sum is exact in any order and
 * equality is exact; traffic's v is also kept as an exact distribution,
 * whose quantiles and threshold counts over subsets are checked against
 * the sorted values. Then: a store written before (tests/data/agg-v2)
 * keeps its keys and answers, the warning and stat for lines merged into
 * one series, the cardinality limit, and bad configurations and keys.
 *
 * TALLY_SEED=n replays a run.
 */
#include <criterion/criterion.h>

#include "bagg.h"
#include "testutil.h"

#define MAXEV  12000
#define ROUNDS 6
#define SHARDS 3

/* camera values; the last needs escaping in line protocol and in keys */
static const char *cams[] = {"C0", "C1", "C2", "K=1,2"};
#define NCAM  4
#define NLANE 3
static const char *hosts[] = {"h0", "h1", "h2"};
static const char *cpus[] = {"c0", "c1"};

typedef struct ev {
	int table; /* 0 traffic, 1 cpu */
	int a, b;  /* traffic: camera, lane; cpu: host, cpu */
	int dc;    /* cpu: 1 when the line has dc=d1 */
	int64_t ts;
	double v;
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

/* '\', ',' and '=' escaped by '\' (keys and filters), into out */
static char *esc_key(const char *in, char *out)
{
	char *o = out;
	for (; *in; in++) {
		if (*in == '\\' || *in == ',' || *in == '=')
			*o++ = '\\';
		*o++ = *in;
	}
	*o = 0;
	return out;
}

/* line protocol escaping of a tag value */
static char *esc_lp(const char *in, char *out)
{
	char *o = out;
	for (; *in; in++) {
		if (*in == ' ' || *in == ',' || *in == '=')
			*o++ = '\\';
		*o++ = *in;
	}
	*o = 0;
	return out;
}

/* The value of tag name in e, NULL when e has no such tag. */
static const char *ev_tag(const ev *e, const char *name, char *buf)
{
	if (e->table == 0) {
		if (!strcmp(name, "camera"))
			return cams[e->a];
		if (!strcmp(name, "lane"))
			return sprintf(buf, "%d", e->b + 1), buf;
		return NULL;
	}
	if (!strcmp(name, "host"))
		return hosts[e->a];
	if (!strcmp(name, "cpu"))
		return cpus[e->b];
	if (!strcmp(name, "dc"))
		return e->dc ? "d1" : NULL;
	return NULL;
}

static void reopen(model *m)
{
	tally_db_close(m->db);
	m->db = NULL;
	cr_assert_eq(tally_db_open(m->dir, &m->opt, &m->db), 0, "reopen: %s", tally_errmsg());
}

static size_t ev_lp(const ev *e, char *out)
{
	char c[32];
	if (e->table == 0)
		return (size_t)sprintf(out, "traffic,camera=%s,lane=%d,dir=%s v=%.17g %lld\n",
				       esc_lp(cams[e->a], c), e->b + 1, e->b ? "N" : "S", e->v,
				       (long long)e->ts);
	/* tags in an order of their own: the key sorts them */
	return (size_t)sprintf(out, "cpu,%scpu=%s,host=%s v=%.17g %lld\n", e->dc ? "dc=d1," : "",
			       cpus[e->b], hosts[e->a], e->v, (long long)e->ts);
}

static void write_round(model *m, int late)
{
	tally_writer *w[SHARDS];
	for (int s = 0; s < SHARDS; s++)
		cr_assert_eq(tally_writer_open(m->db, s, &w[s]), 0);
	char *buf = malloc(200 * 256), *p = buf;
	int inbuf = 0;
	size_t want = m->n + 1500;
	while (m->n < want && m->n < MAXEV) {
		ev e = {0};
		e.table = (int)tu_below(&m->rng, 2);
		e.a = (int)tu_below(&m->rng, e.table ? 3 : NCAM);
		e.b = (int)tu_below(&m->rng, e.table ? 2 : NLANE);
		e.dc = e.table && tu_below(&m->rng, 3) == 0;
		e.ts = m->t0 + (int64_t)tu_below(&m->rng, 3 * (uint64_t)TALLY_1D);
		if (late && tu_below(&m->rng, 4) == 0)
			e.ts -= (int64_t)(1 + tu_below(&m->rng, 30)) * TALLY_1H;
		if (tu_below(&m->rng, 10) == 0)
			e.ts -= e.ts % TALLY_5M;
		e.v = ((double)(int64_t)tu_below(&m->rng, 4001) - 2000) / 4.0;
		if (e.table == 0 && tu_below(&m->rng, 8) == 0) {
			/* the binary write takes the pairs in any order */
			char key[64], c[32];
			sprintf(key, "lane=%d,camera=%s", e.b + 1, esc_key(cams[e.a], c));
			tally_column col = {"v", TALLY_T_F64, &e.v, NULL};
			tally_batch b = {"traffic", key, NULL, 1, &e.ts, 1, &col};
			cr_assert_eq(tally_write_batch(w[tu_below(&m->rng, SHARDS)], &b), 0, "%s",
				     tally_errmsg());
		} else {
			p += ev_lp(&e, p);
			if (++inbuf == 200) {
				tally_write_result r;
				cr_assert_eq(tally_write_lp(w[tu_below(&m->rng, SHARDS)], buf,
							    (size_t)(p - buf), TALLY_PREC_NS, &r),
					     0, "%s", tally_errmsg());
				cr_assert_eq(r.rejected, 0, "%s", r.errors[0].reason);
				p = buf;
				inbuf = 0;
			}
		}
		m->e[m->n++] = e;
	}
	tally_write_result r;
	cr_assert_eq(tally_write_lp(w[0], buf, (size_t)(p - buf), TALLY_PREC_NS, &r), 0);
	cr_assert_eq(r.rejected, 0, "%s", r.errors[0].reason);
	free(buf);
	for (int s = 0; s < SHARDS; s++)
		tally_writer_close(w[s]);
	cr_assert_eq(tally_db_sync(m->db), 0);
}

/* ---------------------------------------------------------------- filters */

typedef struct filt {
	int table;
	const char *text;    /* as a query names it */
	const char *name[3]; /* the pairs it asks for */
	const char *value[3];
} filt;

static const filt filters[] = {
	{0, "", {0}, {0}},
	{0, "camera=C1", {"camera"}, {"C1"}},
	{0, "lane=2", {"lane"}, {"2"}},
	{0, "camera=C1,lane=2", {"camera", "lane"}, {"C1", "2"}},
	{0, "lane=3,camera=C0", {"lane", "camera"}, {"3", "C0"}},
	{0, "camera=K\\=1\\,2", {"camera"}, {"K=1,2"}},
	{0, "lane=1,camera=K\\=1\\,2", {"lane", "camera"}, {"1", "K=1,2"}},
	{1, "host=h1", {"host"}, {"h1"}},
	{1, "cpu=c0,host=h2", {"cpu", "host"}, {"c0", "h2"}},
	{1, "dc=d1", {"dc"}, {"d1"}},
	{1, "host=h0,dc=d1,cpu=c1", {"host", "dc", "cpu"}, {"h0", "d1", "c1"}},
	{1, "cpu=c1", {"cpu"}, {"c1"}},
};
#define NFILT (sizeof filters / sizeof *filters)

static int ev_match(const ev *e, const filt *f)
{
	if (e->table != f->table)
		return 0;
	char buf[16];
	for (int i = 0; i < 3 && f->name[i]; i++) {
		const char *v = ev_tag(e, f->name[i], buf);
		if (!v || strcmp(v, f->value[i]))
			return 0;
	}
	return 1;
}

static const char *tname(int t)
{
	return t ? "cpu" : "traffic";
}

static int64_t floor_div(int64_t a, int64_t b)
{
	int64_t q = a / b;
	return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

static void check_agg_q(model *m, const filt *f, int64_t from, int64_t to)
{
	bagg want = {0};
	for (size_t i = 0; i < m->n; i++)
		if (ev_match(&m->e[i], f) && m->e[i].ts >= from && m->e[i].ts < to)
			bagg_add(&want, m->e[i].v);
	tally_agg got;
	cr_assert_eq(tally_query_agg(m->db, tname(f->table), "v", f->text, from, to, &got), 0,
		     "agg '%s': %s", f->text, tally_errmsg());
	char what[128];
	snprintf(what, sizeof what, "agg %s '%s' [%lld, %lld)", tname(f->table), f->text,
		 (long long)from, (long long)to);
	check_agg(what, &want, &got);
}

#define MAXWIN 2000

static void check_series_q(model *m, const filt *f, int64_t step, int64_t from, int64_t to)
{
	static bagg want[MAXWIN];
	static tally_bucket got[MAXWIN];
	int64_t first = floor_div(from, step) * step;
	size_t nwin = (size_t)((to - first + step - 1) / step);
	cr_assert(nwin <= MAXWIN);
	memset(want, 0, nwin * sizeof *want);
	for (size_t i = 0; i < m->n; i++) {
		int64_t ws = floor_div(m->e[i].ts, step) * step;
		if (ev_match(&m->e[i], f) && ws >= first && ws < to)
			bagg_add(&want[(ws - first) / step], m->e[i].v);
	}
	size_t n;
	cr_assert_eq(tally_query_series(m->db, tname(f->table), "v", f->text, step, from, to, got,
					MAXWIN, &n),
		     0, "series '%s': %s", f->text, tally_errmsg());
	size_t k = 0;
	for (size_t w = 0; w < nwin; w++) {
		if (!want[w].count)
			continue;
		cr_assert(k < n, "series '%s': window %zu missing", f->text, w);
		cr_assert_eq(got[k].start, first + (int64_t)w * step, "series '%s': window start",
			     f->text);
		char what[128];
		snprintf(what, sizeof what, "series %s '%s' window %zu", tname(f->table), f->text,
			 w);
		check_agg(what, &want[w], &got[k].agg);
		k++;
	}
	cr_assert_eq(k, n, "series '%s': %zu windows, want %zu", f->text, n, k);
}

static void check_scan_q(model *m, const filt *f, int64_t from, int64_t to)
{
	uint64_t want = 0;
	for (size_t i = 0; i < m->n; i++)
		want += ev_match(&m->e[i], f) && m->e[i].ts >= from && m->e[i].ts < to;
	tally_scan *s;
	cr_assert_eq(tally_scan_open(m->db, tname(f->table), f->text, from, to, &s), 0, "%s",
		     tally_errmsg());
	tally_row row;
	uint64_t got = 0;
	int64_t last = INT64_MIN;
	int rc;
	while ((rc = tally_scan_next(s, &row)) == 1) {
		cr_assert(row.ts >= last, "scan '%s' out of time order", f->text);
		last = row.ts;
		got++;
	}
	cr_assert_eq(rc, 0);
	tally_scan_close(s);
	cr_assert_eq(got, want, "scan '%s': %llu rows, want %llu", f->text, (unsigned long long)got,
		     (unsigned long long)want);
}

/* ---------------------------------------------------------------- groups */

typedef struct grp {
	char key[96];
	bagg a;
} grp;

static int grp_cmp(const void *x, const void *y)
{
	const grp *a = x, *b = y;
	size_t la = strlen(a->key), lb = strlen(b->key);
	int c = memcmp(a->key, b->key, la < lb ? la : lb);
	return c ? c : (la > lb) - (la < lb);
}

/* "name=value,..." of the tags in by (comma-separated), as the engine
 * spells a group's key */
static void ev_group(const ev *e, const char *by, char *out)
{
	char names[64], buf[16], esc[64];
	snprintf(names, sizeof names, "%s", by);
	*out = 0;
	for (char *save, *n = strtok_r(names, ",", &save); n; n = strtok_r(NULL, ",", &save)) {
		const char *v = ev_tag(e, n, buf);
		sprintf(out + strlen(out), "%s%s=%s", *out ? "," : "", n, v ? esc_key(v, esc) : "");
	}
}

static void check_group_q(model *m, int table, const filt *f, const char *by, int64_t from,
			  int64_t to)
{
	static grp want[4096];
	size_t nw = 0;
	for (size_t i = 0; i < m->n; i++) {
		const ev *e = &m->e[i];
		if (e->table != table || (f && !ev_match(e, f)) || e->ts < from || e->ts >= to)
			continue;
		char k[96];
		ev_group(e, by, k);
		size_t j = 0;
		while (j < nw && strcmp(want[j].key, k))
			j++;
		if (j == nw) {
			cr_assert(nw < 4096);
			memset(&want[nw], 0, sizeof want[nw]);
			strcpy(want[nw++].key, k);
		}
		bagg_add(&want[j].a, e->v);
	}
	qsort(want, nw, sizeof *want, grp_cmp);
	tally_keys_iter *it;
	cr_assert_eq(
		tally_query_group(m->db, tname(table), "v", f ? f->text : NULL, by, from, to, &it),
		0, "group by '%s': %s", by, tally_errmsg());
	const char *key;
	tally_agg a;
	size_t k = 0;
	int rc;
	while ((rc = tally_keys_next(it, &key, &a)) == 1) {
		cr_assert(k < nw, "group by '%s': extra group '%s'", by, key);
		cr_assert_str_eq(key, want[k].key, "group by '%s' filter '%s'", by,
				 f ? f->text : "-");
		char what[160];
		snprintf(what, sizeof what, "group %s by '%s' '%s'", tname(table), by, key);
		check_agg(what, &want[k].a, &a);
		k++;
	}
	cr_assert_eq(rc, 0);
	tally_keys_close(it);
	cr_assert_eq(k, nw, "group by '%s': %zu groups, want %zu", by, k, nw);
}

static int dbl_cmp(const void *x, const void *y)
{
	double a = *(const double *)x, b = *(const double *)y;
	return (a > b) - (a < b);
}

/* The exact distribution over a subset of traffic's key tags: count,
 * quantiles by nearest rank (rank ceil(q n), q dyadic so the rank is
 * exact), counts above and below, against the sorted values. */
static void check_dist_q(model *m, const filt *f, int64_t from, int64_t to)
{
	double *v = malloc((m->n + 1) * sizeof *v);
	size_t n = 0;
	for (size_t i = 0; i < m->n; i++)
		if (ev_match(&m->e[i], f) && m->e[i].ts >= from && m->e[i].ts < to)
			v[n++] = m->e[i].v;
	qsort(v, n, sizeof *v, dbl_cmp);
	tally_dist *d;
	cr_assert_eq(tally_query_dist(m->db, "traffic", "v", f->text, from, to, &d), 0,
		     "dist '%s': %s", f->text, tally_errmsg());
	cr_assert_eq(tally_dist_error(d), 0, "dist '%s': a sketch", f->text);
	cr_assert_eq(tally_dist_count(d), n, "dist '%s' [%lld, %lld): count %llu, want %zu",
		     f->text, (long long)from, (long long)to,
		     (unsigned long long)tally_dist_count(d), n);
	static const double qs[] = {0.25, 0.5, 0.75, 1};
	for (size_t i = 0; i < 4 && n; i++) {
		size_t rank = (size_t)ceil(qs[i] * (double)n);
		double got;
		cr_assert_eq(tally_dist_quantile(d, qs[i], &got), 0);
		cr_assert_eq(got, v[(rank ? rank : 1) - 1], "dist '%s': q=%g %.17g, want %.17g",
			     f->text, qs[i], got, v[(rank ? rank : 1) - 1]);
	}
	uint64_t above = 0, below = 0;
	for (size_t i = 0; i < n; i++) {
		above += v[i] > 100;
		below += v[i] < -100;
	}
	cr_assert_eq(tally_dist_count_above(d, 100), above, "dist '%s': above 100", f->text);
	cr_assert_eq(tally_dist_count_below(d, -100), below, "dist '%s': below -100", f->text);
	tally_dist_free(d);
	free(v);
}

static void check_all(model *m)
{
	int64_t lo = m->t0 - 2 * TALLY_1D, hi = m->t0 + 4 * TALLY_1D;
	for (size_t i = 0; i < NFILT; i++) {
		const filt *f = &filters[i];
		check_agg_q(m, f, INT64_MIN, INT64_MAX);
		for (int r = 0; r < 3; r++) {
			int64_t a = lo + (int64_t)tu_below(&m->rng, (uint64_t)(hi - lo));
			int64_t b = a + (int64_t)tu_below(&m->rng, (uint64_t)(2 * TALLY_1D));
			check_agg_q(m, f, a, b);
		}
		int64_t a = m->t0 - TALLY_1D + (int64_t)tu_below(&m->rng, (uint64_t)TALLY_1D);
		check_series_q(m, f, TALLY_1H, a, a + 3 * TALLY_1D);
		a = m->t0 + (int64_t)tu_below(&m->rng, (uint64_t)(2 * TALLY_1D));
		check_series_q(m, f, TALLY_5M, a, a + TALLY_1D / 2);
		check_scan_q(m, f, a, a + TALLY_1D / 3);
		if (f->table == 0) {
			check_dist_q(m, f, INT64_MIN, INT64_MAX);
			a = lo + (int64_t)tu_below(&m->rng, (uint64_t)(hi - lo));
			check_dist_q(m, f, a, a + (int64_t)tu_below(&m->rng, (uint64_t)TALLY_1D));
		}
	}
	static const char *tby[] = {"lane", "camera", "camera,lane", "lane,camera", ""};
	static const char *cby[] = {"host", "dc", "cpu,dc", "dc,host,cpu", ""};
	for (int i = 0; i < 5; i++) {
		int64_t a = lo + (int64_t)tu_below(&m->rng, (uint64_t)(hi - lo));
		check_group_q(m, 0, NULL, tby[i], INT64_MIN, INT64_MAX);
		check_group_q(m, 0, &filters[1 + tu_below(&m->rng, 6)], tby[i], a, a + TALLY_1D);
		check_group_q(m, 1, NULL, cby[i], INT64_MIN, INT64_MAX);
		check_group_q(m, 1, &filters[7 + tu_below(&m->rng, 5)], cby[i], a, a + TALLY_1D);
	}
}

Test(tags, model_subset_and_grouped_queries_match_brute_force, .timeout = 600)
{
	model m = {0};
	m.rng.s = tu_seed("tags model");
	m.e = calloc(MAXEV, sizeof *m.e);
	m.dir = tu_tmpdir();
	m.opt = tu_quiet_opts();
	m.opt.shards = SHARDS;
	m.opt.table_keys = "traffic=lane+camera,cpu=*";
	m.opt.distributions = "traffic.v:0.01"; /* values are multiples of 1/4 */
	m.opt.seal_grace = TALLY_1H;
	m.t0 = INT64_C(1748822400000000000); /* 2025-06-02 */
	cr_assert_eq(tally_db_open(m.dir, &m.opt, &m.db), 0, "%s", tally_errmsg());
	for (int round = 0; round < ROUNDS; round++) {
		write_round(&m, round > 0);
		switch (tu_below(&m.rng, 4)) {
		case 0: cr_assert_eq(tally_db_flush(m.db), 0, "%s", tally_errmsg()); break;
		case 1:
			cr_assert_eq(tally_db_flush(m.db), 0, "%s", tally_errmsg());
			cr_assert_eq(tally_db_merge(m.db), 0, "%s", tally_errmsg());
			break;
		case 2: reopen(&m); break;
		default: break; /* answered from the memtables */
		}
		check_all(&m);
	}
	const char *kt;
	cr_assert_eq(tally_catalog_key_tag(m.db, "traffic", &kt), 0);
	cr_assert_str_eq(kt, "camera+lane");
	cr_assert_eq(tally_catalog_key_tag(m.db, "cpu", &kt), 0);
	cr_assert_str_eq(kt, "*");
	/* reopened: the keys and answers hold after WAL replay and parts */
	reopen(&m);
	check_all(&m);
	cr_assert_eq(tally_db_flush(m.db), 0);
	cr_assert_eq(tally_db_merge(m.db), 0);
	check_all(&m);
	tally_stats st;
	cr_assert_eq(tally_db_stats(m.db, &st), 0);
	cr_assert_eq(st.keys, (uint64_t)(NCAM * NLANE + 3 * 2 * 2), "keys %llu",
		     (unsigned long long)st.keys);
	tally_db_close(m.db);
	tu_rmrf(m.dir);
	free(m.dir);
	free(m.e);
}

/* ---------------------------------------------------------------- old stores */

static int copy_fixture(const char *name, const char *dir)
{
	char cmd[9000];
	snprintf(cmd, sizeof cmd, "cp -r %s/tests/data/%s/. %s/ && rm -f %s/ANSWERS",
		 TALLY_SOURCE_DIR, name, dir, dir);
	return system(cmd);
}

/*
 * tests/data/agg-v2 was written keyed by one tag (camera) before keys of
 * several tags existed: it opens keyed as it was, its bare keys answer as
 * they did (test aggkind compares every answer bit for bit), and the new
 * spellings ("camera=C0", grouping by camera) give the same figures.
 */
Test(tags, store_written_before_keeps_its_keys_and_answers)
{
	char *dir = tu_tmpdir();
	cr_assert_eq(copy_fixture("agg-v2", dir), 0);
	tally_options o = tu_quiet_opts();
	o.distributions = "traffic.speed:0.1"; /* as it was written */
	tally_db *db;
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	const char *kt;
	cr_assert_eq(tally_catalog_key_tag(db, "traffic", &kt), 0);
	cr_assert_str_eq(kt, "camera");
	const char *keys[16];
	size_t nk;
	cr_assert_eq(tally_catalog_keys(db, "traffic", NULL, NULL, keys, 16, &nk), 0);
	cr_assert_str_eq(keys[0], "C0"); /* the bare value, as stored */
	tally_keys_iter *all, *grouped;
	cr_assert_eq(tally_query_keys(db, "traffic", "speed", INT64_MIN, INT64_MAX, &all), 0);
	cr_assert_eq(tally_query_group(db, "traffic", "speed", NULL, "camera", INT64_MIN, INT64_MAX,
				       &grouped),
		     0, "%s", tally_errmsg());
	const char *k1, *k2;
	tally_agg a1, a2;
	size_t n = 0;
	while (tally_keys_next(all, &k1, &a1) == 1) {
		char want[64];
		snprintf(want, sizeof want, "camera=%s", k1);
		cr_assert_eq(tally_keys_next(grouped, &k2, &a2), 1);
		cr_assert_str_eq(k2, want);
		cr_assert(!memcmp(&a1, &a2, sizeof a1), "group camera=%s differs", k1);
		tally_agg b1, b2;
		cr_assert_eq(tally_query_agg(db, "traffic", "speed", k1, INT64_MIN, INT64_MAX, &b1),
			     0);
		cr_assert_eq(
			tally_query_agg(db, "traffic", "speed", want, INT64_MIN, INT64_MAX, &b2), 0,
			"%s", tally_errmsg());
		/* the same reads, the same answer to the bit; the all-keys answer
		 * sums its sources in another order, so only its count and
		 * extremes are compared bit for bit */
		cr_assert(!memcmp(&b1, &b2, sizeof b1), "camera=%s differs from %s", k1, k1);
		cr_assert(a1.count == b1.count && a1.min == b1.min && a1.max == b1.max);
		n++;
	}
	cr_assert_eq(tally_keys_next(grouped, &k2, &a2), 0);
	cr_assert_eq(n, nk);
	tally_keys_close(all);
	tally_keys_close(grouped);
	/* a tag outside the key is refused, naming the key */
	tally_agg a;
	cr_assert_eq(tally_query_agg(db, "traffic", "speed", "lane=2", INT64_MIN, INT64_MAX, &a),
		     TALLY_EINVAL);
	cr_assert(strstr(tally_errmsg(), "not in table 'traffic''s key (camera)"), "%s",
		  tally_errmsg());
	tally_db_close(db);
	/* a table's key is fixed when it is created: another one is refused */
	o.table_keys = "traffic=camera+lane";
	cr_assert_eq(tally_db_open(dir, &o, &db), TALLY_EINVAL);
	cr_assert(strstr(tally_errmsg(), "table 'traffic' was written keyed by 'camera' but is "
					 "opened keyed by 'camera+lane'"),
		  "%s", tally_errmsg());
	tu_rmrf(dir);
	free(dir);
}

/* ---------------------------------------------------------------- merged lines */

typedef struct logcap {
	int warnings;
	char last[512];
} logcap;

static void cap_log(void *ctx, int level, const char *msg)
{
	logcap *c = ctx;
	if (level == TALLY_LOG_WARN && strstr(msg, "share one series")) {
		c->warnings++;
		snprintf(c->last, sizeof c->last, "%s", msg);
	}
}

Test(tags, lines_merged_into_one_series_are_warned_once_and_counted)
{
	char *dir = tu_tmpdir();
	tally_options o = tu_quiet_opts();
	logcap lc = {0};
	o.log_fn = cap_log;
	o.log_ctx = &lc;
	tally_db *db;
	cr_assert_eq(tally_db_open(dir, &o, &db), 0);
	/* keyed by its first tag (the default): host is outside the key */
	const char *lp = "cpu,cpu=total,host=h1 usage=10 1748822400000000000\n"
			 "cpu,cpu=total,host=h2 usage=30 1748822400000000000\n"
			 "cpu,cpu=total usage=50 1748822400000000000\n"
			 "cpu,cpu=total,host=h3 usage=20 1748822401000000000\n";
	cr_assert_eq(tu_write_synced(db, lp, strlen(lp)), 4);
	tally_stats st;
	cr_assert_eq(tally_db_stats(db, &st), 0);
	cr_assert_eq(st.merged_lines, 3);
	cr_assert_eq(lc.warnings, 1);
	cr_assert(strstr(lc.last, "table 'cpu' is keyed by cpu: lines differing only in tag "
				  "'host' share one series"),
		  "%s", lc.last);
	cr_assert(strstr(lc.last, "cpu=cpu+host, or cpu=*"), "%s", lc.last);
	/* a table keyed by all its tags merges nothing */
	tally_db_close(db);
	tu_rmrf(dir);
	o.table_keys = "cpu=*";
	cr_assert_eq(tally_db_open(dir, &o, &db), 0);
	cr_assert_eq(tu_write_synced(db, lp, strlen(lp)), 4);
	cr_assert_eq(tally_db_stats(db, &st), 0);
	cr_assert_eq(st.merged_lines, 0);
	cr_assert_eq(lc.warnings, 1);
	tally_agg a;
	cr_assert_eq(tally_query_agg(db, "cpu", "usage", "cpu=total", INT64_MIN, INT64_MAX, &a), 0);
	cr_assert_eq(a.count, 4);
	cr_assert_eq(tally_query_agg(db, "cpu", "usage", "host=h2", INT64_MIN, INT64_MAX, &a), 0);
	cr_assert_eq(a.count, 1);
	cr_assert_eq(a.sum, 30);
	const char *keys[8];
	size_t n;
	cr_assert_eq(tally_catalog_keys(db, "cpu", NULL, NULL, keys, 8, &n), 0);
	cr_assert_eq(n, 4);
	cr_assert_str_eq(keys[0], "cpu=total");
	cr_assert_str_eq(keys[1], "cpu=total,host=h1");
	tally_db_close(db);
	tu_rmrf(dir);
	free(dir);
}

/* ---------------------------------------------------------------- limits, errors */

Test(tags, cardinality_limit_counts_tag_combinations_and_names_table_and_limit)
{
	char *dir = tu_tmpdir();
	tally_options o = tu_quiet_opts();
	o.table_keys = "traffic=camera+lane";
	o.max_keys_per_table = 3;
	tally_db *db;
	cr_assert_eq(tally_db_open(dir, &o, &db), 0);
	const char *lp = "traffic,camera=A,lane=1 v=1 1748822400000000000\n"
			 "traffic,camera=A,lane=2 v=1 1748822400000000000\n"
			 "traffic,camera=B,lane=1 v=1 1748822400000000000\n"
			 "traffic,camera=B,lane=2 v=1 1748822400000000000\n"
			 "traffic,lane=1,camera=A v=1 1748822400000000000\n";
	tally_writer *w;
	cr_assert_eq(tally_writer_open(db, -1, &w), 0);
	tally_write_result r;
	cr_assert_eq(tally_write_lp(w, lp, strlen(lp), TALLY_PREC_NS, &r), 0);
	cr_assert_eq(r.accepted, 4);
	cr_assert_eq(r.rejected, 1);
	cr_assert_eq(r.errors[0].line, 4);
	cr_assert_eq(r.errors[0].code, TALLY_ELIMIT);
	cr_assert(strstr(r.errors[0].reason, "table 'traffic' already holds 3 keys"), "%s",
		  r.errors[0].reason);
	cr_assert(strstr(r.errors[0].reason, "camera=B,lane=2"), "%s", r.errors[0].reason);
	/* a line missing a key tag is refused alone, naming it */
	const char *bad = "traffic,camera=A v=1 1748822400000000000\n";
	cr_assert_eq(tally_write_lp(w, bad, strlen(bad), TALLY_PREC_NS, &r), 0);
	cr_assert_eq(r.rejected, 1);
	cr_assert(strstr(r.errors[0].reason, "missing key tag 'lane' of table 'traffic'"), "%s",
		  r.errors[0].reason);
	/* a field named like a key tag is refused */
	bad = "traffic,camera=A lane=1 1748822400000000000\n";
	cr_assert_eq(tally_write_lp(w, bad, strlen(bad), TALLY_PREC_NS, &r), 0);
	cr_assert_eq(r.rejected, 1);
	/* the binary write must name every key tag */
	int64_t ts = INT64_C(1748822400000000000);
	double v = 1;
	tally_column col = {"v", TALLY_T_F64, &v, NULL};
	tally_batch b = {"traffic", "camera=A", NULL, 1, &ts, 1, &col};
	cr_assert_eq(tally_write_batch(w, &b), TALLY_EINVAL);
	cr_assert(strstr(tally_errmsg(), "must name every key tag (camera+lane)"), "%s",
		  tally_errmsg());
	b.key = "lane=2,camera=A";
	cr_assert_eq(tally_write_batch(w, &b), 0, "%s", tally_errmsg());
	tally_writer_close(w);
	tally_agg a;
	cr_assert_eq(
		tally_query_agg(db, "traffic", "v", "camera=A,lane=2", INT64_MIN, INT64_MAX, &a),
		0);
	cr_assert_eq(a.count, 2);
	cr_assert_eq(tally_query_agg(db, "traffic", "v", "camera=A", INT64_MIN, INT64_MAX, &a), 0);
	cr_assert_eq(a.count, 4);
	/* bad keys and groups name what is wrong */
	cr_assert_eq(tally_query_agg(db, "traffic", "v", "camera", INT64_MIN, INT64_MAX, &a),
		     TALLY_EINVAL);
	cr_assert(strstr(tally_errmsg(), "item 1 is not tag=value"), "%s", tally_errmsg());
	cr_assert_eq(
		tally_query_agg(db, "traffic", "v", "camera=A,camera=B", INT64_MIN, INT64_MAX, &a),
		TALLY_EINVAL);
	cr_assert(strstr(tally_errmsg(), "tag 'camera' named twice"), "%s", tally_errmsg());
	tally_keys_iter *it;
	cr_assert_eq(tally_query_group(db, "traffic", "v", NULL, "dir", INT64_MIN, INT64_MAX, &it),
		     TALLY_EINVAL);
	cr_assert(strstr(tally_errmsg(), "tag 'dir' is not in table 'traffic''s key "
					 "(camera+lane)"),
		  "%s", tally_errmsg());
	tally_db_close(db);
	tu_rmrf(dir);
	free(dir);
}

Test(tags, bad_table_keys_are_refused_naming_the_table)
{
	static const struct {
		const char *conf, *msg;
	} bad[] = {
		{"traffic=camera++lane", "table 'traffic': 'camera++lane' is not a tag"},
		{"traffic=camera+", "table 'traffic': 'camera+' is not a tag"},
		{"traffic=lane+camera+lane", "table 'traffic': tag 'lane' named twice"},
		{"traffic=camera+*", "is not a tag, tags joined by '+' or '*'"},
		{"traffic", "expected table=tag"},
	};
	char *dir = tu_tmpdir();
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		tally_options o = tu_quiet_opts();
		o.table_keys = bad[i].conf;
		tally_db *db;
		cr_assert_eq(tally_db_open(dir, &o, &db), TALLY_EINVAL, "%s", bad[i].conf);
		cr_assert(strstr(tally_errmsg(), bad[i].msg), "%s: %s", bad[i].conf,
			  tally_errmsg());
	}
	tu_rmrf(dir);
	free(dir);
}

/* ---------------------------------------------------------------- fixture */

/* The answers tests/data/tags-v1 pins: every traffic key, subsets and
 * groups of both tables, as text. */
static char *fixture_answers(tally_db *db)
{
	char *s = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&s, &len);
	static const struct {
		const char *table, *key, *by;
	} q[] = {
		{"traffic", NULL, NULL},
		{"traffic", NULL, "lane"},
		{"traffic", "camera=K\\=1\\,2", NULL},
		{"cpu", NULL, NULL},
		{"cpu", NULL, "dc"},
		{"cpu", "host=h1", "cpu"},
	};
	for (size_t i = 0; i < sizeof q / sizeof *q; i++) {
		tally_keys_iter *it;
		cr_assert_eq(tally_query_group(db, q[i].table, "v", q[i].key, q[i].by, INT64_MIN,
					       INT64_MAX, &it),
			     0, "%s", tally_errmsg());
		const char *k;
		tally_agg a;
		while (tally_keys_next(it, &k, &a) == 1)
			fprintf(f, "%s %s %llu %a %a %a\n", q[i].table, k,
				(unsigned long long)a.count, a.sum, a.min, a.max);
		tally_keys_close(it);
	}
	tally_agg a;
	cr_assert_eq(tally_query_agg(db, "traffic", "v", "lane=2", INT64_MIN, INT64_MAX, &a), 0);
	fprintf(f, "agg lane=2 %llu %a\n", (unsigned long long)a.count, a.sum);
	fclose(f);
	return s;
}

/*
 * tests/data/tags-v1 is a store written by this version with
 * traffic=camera+lane,cpu=* (three flushes into parts, merged, plus a WAL
 * tail; regenerate: TALLY_WRITE_FIXTURE_TAGS=DIR build/tests/test_tags
 * --filter 'tags/fixture*'). Its files record the keys, so it opens keyed
 * as written also without table_keys, and answers as its ANSWERS say.
 */
Test(tags, fixture_of_keys_of_several_tags_opens_and_answers_the_same)
{
	tally_options o = tu_quiet_opts();
	o.table_keys = "traffic=camera+lane,cpu=*";
	o.shards = SHARDS;
	tally_db *db;
	const char *out = getenv("TALLY_WRITE_FIXTURE_TAGS");
	if (out) {
		model m = {0};
		m.rng.s = 7;
		m.e = calloc(MAXEV, sizeof *m.e);
		m.opt = o;
		m.t0 = INT64_C(1748822400000000000);
		cr_assert_eq(tally_db_open(out, &o, &m.db), 0);
		for (int r = 0; r < 3; r++) {
			write_round(&m, 1);
			cr_assert_eq(tally_db_flush(m.db), 0);
		}
		cr_assert_eq(tally_db_merge(m.db), 0);
		write_round(&m, 1);
		char path[4096];
		snprintf(path, sizeof path, "%s/ANSWERS", out);
		FILE *f = fopen(path, "w");
		char *ans = fixture_answers(m.db);
		fputs(ans, f);
		fclose(f);
		free(ans);
		tally_db_close(m.db);
		free(m.e);
		return;
	}
	char path[4096];
	snprintf(path, sizeof path, "%s/tests/data/tags-v1/ANSWERS", TALLY_SOURCE_DIR);
	FILE *f = fopen(path, "r");
	cr_assert(f, "%s", path);
	static char want[1 << 16];
	size_t n = fread(want, 1, sizeof want - 1, f);
	want[n] = 0;
	fclose(f);
	for (int conf = 0; conf < 2; conf++) {
		char *dir = tu_tmpdir();
		cr_assert_eq(copy_fixture("tags-v1", dir), 0);
		tally_options oo = tu_quiet_opts();
		oo.shards = SHARDS;
		if (conf)
			oo.table_keys = o.table_keys;
		cr_assert_eq(tally_db_open(dir, &oo, &db), 0, "%s", tally_errmsg());
		const char *kt;
		cr_assert_eq(tally_catalog_key_tag(db, "traffic", &kt), 0);
		cr_assert_str_eq(kt, "camera+lane");
		char *got = fixture_answers(db);
		cr_assert_str_eq(got, want);
		free(got);
		tally_db_close(db);
		tu_rmrf(dir);
		free(dir);
	}
}
