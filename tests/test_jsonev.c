/*
 * test_jsonev.c — JSON events to line protocol (wire/jsonev.c): random
 * events against a brute-force model, read back through the engine's
 * public API; every error class with its offset; mappings accepted and
 * refused; the record-to-event map after engine rejections.
 */
#include <criterion/criterion.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>

#include "cmd.h"
#include "conf.h"
#include "jsonev.h"
#include "testutil.h"

#define DAY_NS  (86400 * INT64_C(1000000000))
#define TS_LO   INT64_C(1704067200000000000) /* 2024-01-01T00:00:00Z */
#define TS_SPAN (731 * DAY_NS)

/* ---------------------------------------------------------------- text */

typedef struct buf {
	char *p;
	size_t n, cap;
} buf;

static void put(buf *b, const void *s, size_t n)
{
	if (b->n + n + 1 > b->cap) {
		b->cap = (b->n + n + 1) * 2;
		b->p = realloc(b->p, b->cap);
		cr_assert(b->p);
	}
	memcpy(b->p + b->n, s, n);
	b->n += n;
	b->p[b->n] = 0;
}

__attribute__((format(printf, 2, 3))) static void putf(buf *b, const char *f, ...)
{
	char t[512];
	va_list ap;
	va_start(ap, f);
	int k = vsnprintf(t, sizeof t, f, ap);
	va_end(ap);
	put(b, t, (size_t)k);
}

static size_t utf8_put(char *o, unsigned u)
{
	if (u < 0x80) {
		o[0] = (char)u;
		return 1;
	}
	if (u < 0x800) {
		o[0] = (char)(0xC0 | u >> 6);
		o[1] = (char)(0x80 | (u & 0x3F));
		return 2;
	}
	if (u < 0x10000) {
		o[0] = (char)(0xE0 | u >> 12);
		o[1] = (char)(0x80 | ((u >> 6) & 0x3F));
		o[2] = (char)(0x80 | (u & 0x3F));
		return 3;
	}
	o[0] = (char)(0xF0 | u >> 18);
	o[1] = (char)(0x80 | ((u >> 12) & 0x3F));
	o[2] = (char)(0x80 | ((u >> 6) & 0x3F));
	o[3] = (char)(0x80 | (u & 0x3F));
	return 4;
}

/* A random string of code points (newlines only when nl), its UTF-8 in
 * s, its JSON encoding (quotes included, escapes chosen at random) in j. */
static void rand_str(tu_rng *r, int nl, size_t maxlen, buf *s, buf *j)
{
	static const unsigned cps[] = {'a',  'B',  '7', ' ',  ',',    '=',     '"',      '\\', '#',
				       '\t', '\r', 1,   0xE9, 0x20AC, 0x1F600, 0x10FFFF, '\n'};
	size_t n = tu_below(r, maxlen + 1), ncp = sizeof cps / sizeof cps[0] - (nl ? 0 : 1);
	s->n = j->n = 0;
	put(s, "", 0);
	put(j, "\"", 1);
	for (size_t i = 0; i < n; i++) {
		unsigned u = tu_below(r, 3) ? cps[tu_below(r, 5)] : cps[tu_below(r, ncp)];
		char o[4];
		put(s, o, utf8_put(o, u));
		int esc = u < 0x20 || u == '"' || u == '\\' || tu_below(r, 4) == 0;
		if (!esc) {
			put(j, o, utf8_put(o, u));
		} else if (u == '"' || u == '\\') {
			putf(j, "\\%c", (char)u);
		} else if (u == '\n' && tu_below(r, 2)) {
			put(j, "\\n", 2);
		} else if (u < 0x10000) {
			putf(j, tu_below(r, 2) ? "\\u%04x" : "\\u%04X", u);
		} else {
			unsigned v = u - 0x10000;
			putf(j, "\\u%04X\\u%04x", 0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF));
		}
	}
	put(j, "\"", 1);
}

/* ts as an RFC 3339 string with a random offset and fraction, or as epoch
 * milliseconds with a fraction (the mapping's time-unit is ms). */
static void put_time(tu_rng *r, buf *j, int64_t ts)
{
	if (tu_below(r, 2)) {
		int64_t ms = ts / 1000000, sub = ts % 1000000;
		if (sub)
			putf(j, "%" PRId64 ".%06" PRId64, ms, sub);
		else
			putf(j, "%" PRId64, ms);
		return;
	}
	int off = (int)tu_below(r, 3) == 0 ? 0 : (int)tu_below(r, 28 * 4) * 15 - 14 * 60;
	int64_t local = ts / 1000000000 + off * 60, frac = ts % 1000000000;
	int64_t y;
	unsigned mo, d;
	cmd_civil_from_days(local / 86400, &y, &mo, &d);
	int64_t s = local % 86400;
	putf(j, "\"%04d-%02u-%02u%c%02d:%02d:%02d", (int)y, mo, d, "Tt "[tu_below(r, 3)],
	     (int)(s / 3600), (int)(s / 60 % 60), (int)(s % 60));
	if (frac)
		putf(j, ".%09" PRId64, frac);
	else if (tu_below(r, 2))
		put(j, ".000", 4);
	if (off == 0 && tu_below(r, 2))
		put(j, tu_below(r, 2) ? "Z\"" : "z\"", 2);
	else
		putf(j, "%c%02d:%02d\"", off < 0 ? '-' : '+', abs(off) / 60, abs(off) % 60);
}

/* ---------------------------------------------------------------- model */

typedef struct mev {
	int ok;
	int key;
	int64_t ts;
	double val;
	int has_w, has_n, has_b, has_lane, has_note;
	double w;
	int64_t n;
	int b;
	char *lane, *note;
	size_t lane_n, note_n;
} mev;

#define NKEYS 12

static const char *MAP = "rnd: key=id>cam, time=t, time-unit=ms, fields=val w, ints=n, "
			 "bools=b, tags=tg>lane, strings=s>note";

static double rand_w(tu_rng *r)
{
	switch (tu_below(r, 6)) {
	case 0: return 1.7976931348623157e308;
	case 1: return -4.9406564584124654e-324;
	case 2: return tu_below(r, 2) ? 0.0 : -0.0;
	case 3: return (double)(int64_t)tu_next(r);
	default:
		for (;;) {
			uint64_t bits = tu_next(r);
			double x;
			memcpy(&x, &bits, 8);
			if (isfinite(x))
				return x;
		}
	}
}

static int64_t rand_n(tu_rng *r)
{
	switch (tu_below(r, 5)) {
	case 0: return INT64_MIN;
	case 1: return INT64_MAX;
	case 2: return (int64_t)tu_below(r, 2000) - 1000;
	default: return (int64_t)tu_next(r);
	}
}

/* An integer as JSON, sometimes as 5.0, 5e0 or 50e-1. */
static void put_int(tu_rng *r, buf *j, int64_t n)
{
	if (n > -1000000 && n < 1000000) {
		switch (tu_below(r, 4)) {
		case 0: putf(j, "%" PRId64 ".000", n); return;
		case 1: putf(j, "%" PRId64 "e0", n); return;
		case 2:
			if (n) { /* 00e-1 would have a leading zero */
				putf(j, "%" PRId64 "0e-1", n);
				return;
			}
			break;
		default: break;
		}
	}
	putf(j, "%" PRId64, n);
}

/* One random event into j; model in *e. bad: which defect (0: none). */
static void gen_event(tu_rng *r, buf *j, mev *e, char keys_j[NKEYS][256], int bad)
{
	memset(e, 0, sizeof *e);
	e->ok = !bad;
	e->key = (int)tu_below(r, NKEYS);
	e->ts = TS_LO + (int64_t)(tu_next(r) % (uint64_t)TS_SPAN);
	switch (tu_below(r, 4)) {
	case 0: e->ts -= e->ts % 1000000000; break;
	case 1: e->ts -= e->ts % 1000000; break;
	case 2: e->ts -= e->ts % 1000; break;
	default: break;
	}
	e->val = (double)((int64_t)tu_below(r, 4001) - 2000) * 0.5;
	if (bad >= 12) { /* not an object */
		static const char *const not_obj[] = {"[1,{\"id\":\"x\"}]", "\"event\"", "42",
						      "null"};
		/* (an NDJSON body starting with '[' is an array: no arrays there) */
		const char *x = not_obj[tu_below(r, 3) + (bad == 13)];
		put(j, x, strlen(x));
		return;
	}
	/* members in a random order */
	buf m[10] = {0};
	int nm = 0;
	buf s = {0}, sj = {0};
	if (bad != 1) {
		if (bad == 2)
			putf(&m[nm++], "\"id\":%d", e->key);
		else if (bad == 8)
			putf(&m[nm++], "\"id\":\"K\\ud800\"");
		else if (bad == 10)
			putf(&m[nm++], "\"id\":\"K\\\\\"");
		else
			putf(&m[nm++], "\"id\":%s", keys_j[e->key]);
	}
	if (bad == 11)
		putf(&m[nm++], "\"val\":1");
	if (bad != 7) {
		put(&m[nm], "\"t\":", 4);
		if (bad == 6)
			put(&m[nm], "\"2025-13-01T00:00:00Z\"", 22);
		else
			put_time(r, &m[nm], e->ts);
		nm++;
	}
	if (bad == 3)
		putf(&m[nm++], "\"val\":\"%g\"", e->val);
	else
		putf(&m[nm++], "\"val\":%.1f", e->val);
	if (bad == 4 || tu_below(r, 10) < 7) {
		e->has_w = 1;
		e->w = rand_w(r);
		if (bad == 4)
			putf(&m[nm++], "\"w\":-1e%d", 309 + (int)tu_below(r, 1000));
		else
			putf(&m[nm++], "\"w\":%.17g", e->w);
	}
	if (bad == 5) {
		putf(&m[nm++], tu_below(r, 2) ? "\"n\":1.5" : "\"n\":9223372036854775808");
	} else if (tu_below(r, 10) < 6) {
		e->has_n = 1;
		e->n = rand_n(r);
		put(&m[nm], "\"n\":", 4);
		put_int(r, &m[nm++], e->n);
	} else if (tu_below(r, 4) == 0) {
		putf(&m[nm++], "\"n\":null");
	}
	if (tu_below(r, 2)) {
		e->has_b = 1;
		e->b = (int)tu_below(r, 2);
		putf(&m[nm++], "\"b\":%s", e->b ? "true" : "false");
	}
	if (tu_below(r, 10) < 6) {
		do
			rand_str(r, 0, 10, &s, &sj);
		while (s.n && s.p[s.n - 1] == '\\');
		e->has_lane = s.n > 0; /* an empty tag is no tag */
		e->lane = strdup(s.p);
		e->lane_n = s.n;
		putf(&m[nm], "\"tg\":");
		put(&m[nm++], sj.p, sj.n);
	}
	if (bad == 9) {
		put(&m[nm++], "\"s\":\"bad \xFF byte\"", 16);
	} else if (tu_below(r, 2)) {
		rand_str(r, 1, 16, &s, &sj);
		e->has_note = 1;
		e->note = malloc(s.n + 1);
		memcpy(e->note, s.p, s.n + 1);
		e->note_n = s.n;
		putf(&m[nm], "\"s\":");
		put(&m[nm++], sj.p, sj.n);
	}
	if (tu_below(r, 10) < 3) {
		rand_str(r, 1, 8, &s, &sj);
		putf(&m[nm], "\"extra %d\":{\"a\":[1,-2.5e-3,true,null,", (int)tu_below(r, 9));
		put(&m[nm], sj.p, sj.n);
		put(&m[nm++], "],\"b\":{}}", 9);
	}
	for (int i = nm - 1; i > 0; i--) {
		int k = (int)tu_below(r, (uint64_t)i + 1);
		buf t = m[i];
		m[i] = m[k];
		m[k] = t;
	}
	put(j, "{", 1);
	for (int i = 0; i < nm; i++) {
		if (i) {
			const char *sep = tu_below(r, 4) ? "," : " ,\t";
			put(j, sep, strlen(sep));
		}
		put(j, m[i].p, m[i].n);
		free(m[i].p);
	}
	put(j, "}", 1);
	free(s.p);
	free(sj.p);
}

static int cmp_ev(const void *a, const void *b)
{
	const mev *x = *(const mev *const *)a, *y = *(const mev *const *)b;
	return (x->ts > y->ts) - (x->ts < y->ts);
}

static int col_of(tally_scan *sc, const char *name)
{
	for (size_t i = 0; i < tally_scan_columns(sc); i++) {
		const char *nm;
		enum tally_type ty;
		cr_assert_eq(tally_scan_column(sc, i, &nm, &ty), 0);
		if (!strcmp(nm, name))
			return (int)i;
	}
	return -1;
}

/* An embedded store in a fresh directory, and one writer. */
static void db_open(char **dir, tally_db **db, tally_writer **w)
{
	*dir = tu_tmpdir();
	tally_options o;
	tally_options_init(&o);
	o.log_fn = tu_quiet_log;
	cr_assert_eq(tally_db_open(*dir, &o, db), 0, "%s", tally_errmsg());
	cr_assert_eq(tally_writer_open(*db, -1, w), 0);
}

static void db_close(char *dir, tally_db *db, tally_writer *w)
{
	tally_writer_close(w);
	tally_db_close(db);
	tu_rmrf(dir);
	free(dir);
}

/* Column col of row holds the text s[0, n) of type ty, or nothing. */
static void check_text(const tally_row *row, int col, int has, enum tally_type ty, const char *s,
		       size_t n)
{
	if (!has) {
		cr_assert(col < 0 || row->values[col].type == TALLY_T_NONE);
		return;
	}
	cr_assert_eq(row->values[col].type, ty);
	cr_assert_eq(row->values[col].v.str.len, n);
	cr_assert(!memcmp(row->values[col].v.str.ptr, s, n));
}

Test(jsonev, random_events_match_a_brute_force_model_through_the_engine)
{
	tu_rng r = {tu_seed("jsonev random")};
	char *dir;
	tally_db *db;
	tally_writer *w;
	db_open(&dir, &db, &w);
	jsonev_map *map;
	char err[200];
	cr_assert_eq(jsonev_map_parse(MAP, &map, err, sizeof err), 0, "%s", err);
	jsonev_dec *d;
	jsonev_limits lim = {.max_errors = 100000}; /* all of them, to compare */
	cr_assert_eq(jsonev_dec_new(&lim, &d), 0);

	/* distinct keys, none empty or ending with a backslash */
	char keys[NKEYS][256], keys_j[NKEYS][256];
	buf s = {0}, sj = {0};
	for (int k = 0; k < NKEYS; k++) {
again:
		rand_str(&r, 0, 12, &s, &sj);
		if (s.n == 0 || s.p[s.n - 1] == '\\' || s.n > 200 || sj.n > 250)
			goto again;
		for (int i = 0; i < k; i++)
			if (!strcmp(keys[i], s.p))
				goto again;
		memcpy(keys[k], s.p, s.n + 1);
		memcpy(keys_j[k], sj.p, sj.n + 1);
	}

	size_t cap = 6000, n = 0;
	mev *ev = calloc(cap, sizeof *ev);
	for (int round = 0; round < 6; round++) {
		int ndjson = round % 2;
		size_t per = 200 + tu_below(&r, 800), first = n;
		buf body = {0};
		put(&body, ndjson ? "" : " [", ndjson ? 0 : 2);
		for (size_t i = 0; i < per; i++) {
			int bad = tu_below(&r, 100) < 15 ? 1 + (int)tu_below(&r, 12) : 0;
			bad += bad == 12 && ndjson; /* 13: not an object, nor an array */
			if (!ndjson && i)
				put(&body, ",\n", tu_below(&r, 2) + 1);
			gen_event(&r, &body, &ev[n++], keys_j, bad);
			if (ndjson) {
				const char *sep = tu_below(&r, 4) ? "\n" : " \r\n\n";
				put(&body, sep, strlen(sep));
			}
		}
		put(&body, ndjson ? "" : "]\n", ndjson ? 0 : 2);

		jsonev_result res;
		int64_t now = 42;
		cr_assert_eq(jsonev_decode(d, map, body.p, body.n, now, &res), 0);
		uint64_t want_rej = 0, seen_err = 0;
		for (size_t i = first; i < n; i++) {
			if (ev[i].ok)
				continue;
			if (seen_err < res.n_errors) {
				const jsonev_error *e = &res.errors[seen_err];
				cr_assert_eq(e->event, i - first,
					     "round %d: error %" PRIu64 " is of event %" PRIu64
					     ", want %zu (%s)",
					     round, seen_err, e->event, i - first, e->reason);
				cr_assert_eq(e->syntax, 0, "%s", e->reason);
				cr_assert(e->offset < body.n);
				seen_err++;
			}
			want_rej++;
		}
		for (unsigned k = 0; k < res.n_errors; k++)
			cr_assert(!ev[first + res.errors[k].event].ok,
				  "event %" PRIu64 " refused: %s", res.errors[k].event,
				  res.errors[k].reason);
		cr_assert_eq(res.stopped, 0);
		cr_assert_eq(res.events, per);
		cr_assert_eq(res.rejected, want_rej, "rejected %" PRIu64 " want %" PRIu64,
			     res.rejected, want_rej);
		cr_assert_eq(res.accepted, per - want_rej);
		cr_assert_eq(res.records, res.accepted);
		for (size_t k = 0, i = first; k < res.records; k++, i++) {
			while (!ev[i].ok)
				i++;
			cr_assert_eq(res.record_event[k], i - first);
			cr_assert_eq(jsonev_line_event(&res, res.record_line[k]), i - first);
		}
		tally_write_result wr;
		cr_assert_eq(tally_write_lp(w, res.lp, res.lp_len, TALLY_PREC_NS, &wr), 0);
		cr_assert_eq(wr.rejected, 0, "line %" PRIu64 ": %s\n%.*s",
			     wr.n_errors ? wr.errors[0].line : 0,
			     wr.n_errors ? wr.errors[0].reason : "", (int)res.lp_len, res.lp);
		cr_assert_eq(wr.accepted, res.accepted);
		free(body.p);
	}

	/* Every key: exact aggregate, daily series and the raw rows. */
	mev **by = calloc(n, sizeof *by);
	for (int k = 0; k < NKEYS; k++) {
		size_t m = 0;
		uint64_t cnt = 0;
		double sum = 0;
		for (size_t i = 0; i < n; i++)
			if (ev[i].ok && ev[i].key == k) {
				by[m++] = &ev[i];
				cnt++;
				sum += ev[i].val;
			}
		/* stable: equal times stay in arrival order */
		for (size_t i = 1; i < m; i++)
			for (size_t j = i; j > 0 && cmp_ev(&by[j - 1], &by[j]) > 0; j--) {
				mev *t = by[j];
				by[j] = by[j - 1];
				by[j - 1] = t;
			}
		tally_agg a;
		int rc = tally_query_agg(db, "rnd", "val", keys[k], TS_LO, TS_LO + TS_SPAN, &a);
		if (cnt == 0) {
			cr_assert(rc == 0 ? a.count == 0 : rc == TALLY_ENOTFOUND);
			continue;
		}
		cr_assert_eq(rc, 0, "%s", tally_errmsg());
		cr_assert_eq(a.count, cnt);
		cr_assert_eq(a.sum, sum, "key %d: sum %g want %g", k, a.sum, sum);

		static tally_bucket bk[800];
		size_t nb;
		cr_assert_eq(tally_query_series(db, "rnd", "val", keys[k], TALLY_1D, TS_LO,
						TS_LO + TS_SPAN, bk, 800, &nb),
			     0);
		size_t bi = 0;
		for (size_t i = 0; i < m;) {
			int64_t day = by[i]->ts - by[i]->ts % DAY_NS;
			uint64_t c = 0;
			double su = 0;
			for (; i < m && by[i]->ts - by[i]->ts % DAY_NS == day; i++)
				c++, su += by[i]->val;
			cr_assert(bi < nb);
			cr_assert_eq(bk[bi].start, day);
			cr_assert_eq(bk[bi].agg.count, c);
			cr_assert_eq(bk[bi].agg.sum, su);
			bi++;
		}
		cr_assert_eq(bi, nb);

		tally_scan *sc;
		cr_assert_eq(tally_scan_open(db, "rnd", keys[k], TS_LO, TS_LO + TS_SPAN, &sc), 0);
		int cw = col_of(sc, "w"), cn = col_of(sc, "n"), cb = col_of(sc, "b"),
		    cl = col_of(sc, "lane"), cs = col_of(sc, "note"), cv = col_of(sc, "val");
		cr_assert(cv >= 0);
		tally_row row;
		for (size_t i = 0; i < m; i++) {
			const mev *e = by[i];
			cr_assert_eq(tally_scan_next(sc, &row), 1);
			cr_assert_eq(row.ts, e->ts);
			cr_assert_eq(row.values[cv].v.f64, e->val);
			if (e->has_w) {
				cr_assert_eq(row.values[cw].type, TALLY_T_F64);
				cr_assert(memcmp(&row.values[cw].v.f64, &e->w, 8) == 0,
					  "w %.17g want %.17g", row.values[cw].v.f64, e->w);
			} else {
				cr_assert(cw < 0 || row.values[cw].type == TALLY_T_NONE);
			}
			if (e->has_n)
				cr_assert_eq(row.values[cn].v.i64, e->n);
			else
				cr_assert(cn < 0 || row.values[cn].type == TALLY_T_NONE);
			if (e->has_b)
				cr_assert_eq(row.values[cb].v.b, e->b);
			else
				cr_assert(cb < 0 || row.values[cb].type == TALLY_T_NONE);
			check_text(&row, cl, e->has_lane, TALLY_T_TAG, e->lane, e->lane_n);
			check_text(&row, cs, e->has_note, TALLY_T_STR, e->note, e->note_n);
		}
		cr_assert_eq(tally_scan_next(sc, &row), 0);
		tally_scan_close(sc);
	}
	for (size_t i = 0; i < n; i++) {
		free(ev[i].lane);
		free(ev[i].note);
	}
	free(by);
	free(ev);
	free(s.p);
	free(sj.p);
	jsonev_dec_free(d);
	jsonev_map_free(map);
	db_close(dir, db, w);
}

/* ---------------------------------------------------------------- errors */

static jsonev_dec *dec;
static jsonev_maps *maps;

static void setup(void)
{
	cr_assert_eq(jsonev_maps_new(&maps), 0);
	cr_assert_eq(jsonev_dec_new(NULL, &dec), 0);
}

static void teardown(void)
{
	jsonev_dec_free(dec);
	jsonev_maps_free(maps);
}

static jsonev_result run(const char *body, size_t len)
{
	jsonev_result res;
	const jsonev_map *m = jsonev_maps_find(maps, "traffic", 7);
	cr_assert(m);
	/* a copy of exactly the body, so that ASan sees a read past its end */
	static char *copy;
	free(copy);
	copy = malloc(len ? len : 1);
	memcpy(copy, body, len);
	cr_assert_eq(jsonev_decode(dec, m, copy, len, 0, &res), 0);
	cr_assert_eq(res.events, res.accepted + res.rejected);
	return res;
}

#define CAM(rest) \
	"{\"kvfv_id\":\"KV1\",\"timestamp\":\"2025-04-05T10:15:30Z\",\"vehicle_speed\":" rest "}"

Test(jsonev, the_camera_event_becomes_the_demo_line, .init = setup, .fini = teardown)
{
	const char *b = "{\"kvfv_id\":\"KV12345\",\"timestamp\":\"2025-04-05T10:15:30Z\","
			"\"vehicle_speed\":85.2,\"plate_number\":\"A123BV68\"}";
	jsonev_result res = run(b, strlen(b));
	cr_assert_eq(res.accepted, 1);
	cr_assert_eq(res.lp_len, strlen("traffic,camera=KV12345 speed=85.2,plate=\"A123BV68\" "
					"1743848130000000000\n"));
	cr_assert(!memcmp(res.lp,
			  "traffic,camera=KV12345 speed=85.2,plate=\"A123BV68\" "
			  "1743848130000000000\n",
			  res.lp_len));
}

static const struct errcase {
	const char *name, *body;
	uint64_t accepted, event, offset;
	int syntax, stopped;
	const char *reason;
} errcases[] = {
	/* regression: an array cut after '[' was read one byte past its end */
	{"open bracket at the end", " [", 0, 0, 2, 1, 1, "an event, found the end of the body"},
	{"bad literal", "[" CAM("85") ",tru]", 1, 1, 73, 1, 1, "expected a value"},
	{"missing comma", "[" CAM("85") " " CAM("86") "]", 1, 1, 73, 1, 1, "expected ',' or ']'"},
	{"trailing comma", "[" CAM("85") ",]", 1, 1, 73, 1, 1, "an event after ','"},
	{"unterminated array", "[" CAM("85"), 1, 1, 72, 1, 1, "found the end of the body"},
	{"after the array", "[" CAM("85") "] x", 1, 1, 74, 1, 1, "more after"},
	{"leading zero", "[" CAM("085") "]", 0, 0, 69, 1, 1, "leading zero"},
	{"bad escape", "[{\"kvfv_id\":\"a\\x\"}]", 0, 0, 14, 1, 1, "invalid escape"},
	{"short \\u", "[{\"kvfv_id\":\"a\\u12\"}]", 0, 0, 14, 1, 1, "four hex digits"},
	{"raw control", "[{\"kvfv_id\":\"a\x01\"}]", 0, 0, 14, 1, 1, "control character 0x01"},
	{"too deep",
	 "[{\"x\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}]", 0, 0,
	 36, 1, 1, "nested deeper than 32"},
	{"lone high surrogate", "[" CAM("1,\"plate_number\":\"\\ud83d\"") "]", 0, 0, 87, 0, 0,
	 "high surrogate"},
	{"lone low surrogate", "[" CAM("1,\"plate_number\":\"x\\ude00\"") "]", 0, 0, 88, 0, 0,
	 "low surrogate"},
	{"invalid UTF-8", "[" CAM("1,\"plate_number\":\"\xC0\xAF\"") "]", 0, 0, 87, 0, 0,
	 "invalid UTF-8"},
	{"out of range", "[" CAM("1e309") "]", 0, 0, 69, 0, 0, "out of range"},
	{"wrong type", "[" CAM("\"85\"") "]", 0, 0, 69, 0, 0, "must be a number, not a string"},
	{"key type", "[{\"kvfv_id\":5}]", 0, 0, 12, 0, 0, "must be a string, not a number"},
	{"no key", "[{\"timestamp\":\"2025-04-05T10:15:30Z\",\"vehicle_speed\":1}]", 0, 0, 1, 0, 0,
	 "no key member 'kvfv_id'"},
	{"no time", "[{\"kvfv_id\":\"a\",\"vehicle_speed\":1}]", 0, 0, 1, 0, 0,
	 "cameras must send the event time"},
	{"bad date",
	 "[{\"kvfv_id\":\"a\",\"timestamp\":\"2025-02-30T00:00:00Z\",\"vehicle_speed\":1}]", 0, 0,
	 28, 0, 0, "no such date"},
	{"no offset",
	 "[{\"kvfv_id\":\"a\",\"timestamp\":\"2025-02-03T00:00:00\",\"vehicle_speed\":1}]", 0, 0,
	 28, 0, 0, "no UTC offset"},
	{"number time without unit", "[{\"kvfv_id\":\"a\",\"timestamp\":1,\"vehicle_speed\":1}]", 0,
	 0, 28, 0, 0, "no time-unit"},
	{"duplicate", "[" CAM("1,\"vehicle_speed\":2") "]", 0, 0, 87, 0, 0, "appears twice"},
	{"not an object", "[" CAM("1") ",[1]]", 1, 1, 72, 0, 0, "must be an object, not an array"},
	{"no field", "[{\"kvfv_id\":\"a\",\"timestamp\":\"2025-02-03T00:00:00Z\"}]", 0, 0, 1, 0, 0,
	 "no field"},
	{"empty key",
	 "[{\"kvfv_id\":\"\",\"timestamp\":\"2025-02-03T00:00:00Z\",\"vehicle_speed\":1}]", 0, 0,
	 12, 0, 0, "is empty"},
	{"newline in key",
	 "["
	 "{\"kvfv_id\":\"a\\nb\",\"timestamp\":\"2025-02-03T00:00:00Z\","
	 "\"vehicle_speed\":1}]",
	 0, 0, 12, 0, 0, "a newline cannot be in a tag value"},
	{"ndjson line", CAM("1") "\n{\"kvfv_id\":\n" CAM("2") "\n", 2, 1, 82, 1, 0,
	 "end of the line"},
	{"ndjson trailing garbage", CAM("1") " x\n" CAM("2"), 1, 0, 71, 1, 0,
	 "expected a newline after the event"},
};

Test(jsonev, every_error_class_names_its_event_and_offset, .init = setup, .fini = teardown)
{
	for (size_t i = 0; i < sizeof errcases / sizeof errcases[0]; i++) {
		const struct errcase *c = &errcases[i];
		jsonev_result res = run(c->body, strlen(c->body));
		cr_assert_eq(res.accepted, c->accepted, "%s: accepted %" PRIu64, c->name,
			     res.accepted);
		cr_assert_geq(res.n_errors, 1, "%s", c->name);
		const jsonev_error *e = &res.errors[0];
		cr_assert_eq(e->event, c->event, "%s: event %" PRIu64, c->name, e->event);
		cr_assert_eq(e->offset, c->offset, "%s: offset %" PRIu64 " (%s)", c->name,
			     e->offset, e->reason);
		cr_assert_eq(e->syntax, c->syntax, "%s", c->name);
		cr_assert_eq(res.stopped, c->stopped, "%s", c->name);
		cr_assert(strstr(e->reason, c->reason), "%s: reason '%s'", c->name, e->reason);
	}
}

Test(jsonev, ndjson_keeps_the_events_around_a_broken_line, .init = setup, .fini = teardown)
{
	const char *b = CAM("1") "\n{\"kvfv_id\":\"x\",\n\n" CAM("2") "\r\n\n" CAM("3");
	jsonev_result res = run(b, strlen(b));
	cr_assert_eq(res.accepted, 3);
	cr_assert_eq(res.rejected, 1);
	cr_assert_eq(res.errors[0].event, 1);
	cr_assert_eq(res.record_event[2], 3);
}

Test(jsonev, an_array_stops_at_its_syntax_error_keeping_the_events_before, .init = setup,
     .fini = teardown)
{
	const char *b = "[" CAM("1") "," CAM("2") ",{\"kvfv_id\" \"x\"}," CAM("3") "]";
	jsonev_result res = run(b, strlen(b));
	cr_assert_eq(res.accepted, 2);
	cr_assert_eq(res.stopped, 1);
	cr_assert_eq(res.stop_offset, res.errors[0].offset);
	cr_assert_eq(res.errors[0].event, 2);
	cr_assert_eq(b[res.stop_offset], '"');
}

Test(jsonev, a_pretty_printed_single_event_is_read_whole, .init = setup, .fini = teardown)
{
	const char *b = "{\n  \"kvfv_id\": \"KV1\",\n  \"timestamp\": \"2025-04-05T10:15:30Z\",\n"
			"  \"vehicle_speed\": 85.2\n}\n";
	jsonev_result res = run(b, strlen(b));
	cr_assert_eq(res.accepted, 1);
	cr_assert_eq(res.rejected, 0);
}

Test(jsonev, errors_are_all_counted_and_the_first_kept, .init = setup, .fini = teardown)
{
	buf b = {0};
	for (int i = 0; i < 100; i++)
		put(&b, i % 2 ? CAM("1") "\n" : "{\"kvfv_id\":1}\n",
		    i % 2 ? strlen(CAM("1")) + 1 : 14);
	jsonev_result res = run(b.p, b.n);
	cr_assert_eq(res.rejected, 50);
	cr_assert_eq(res.accepted, 50);
	cr_assert_eq(res.n_errors, 16);
	for (unsigned i = 0; i < 16; i++)
		cr_assert_eq(res.errors[i].event, 2 * i);
	free(b.p);
}

Test(jsonev, a_body_over_the_limit_is_refused_whole)
{
	jsonev_maps *ms;
	jsonev_dec *d;
	jsonev_limits lim = {.max_body = 100};
	cr_assert_eq(jsonev_maps_new(&ms), 0);
	cr_assert_eq(jsonev_dec_new(&lim, &d), 0);
	const char *b = "[" CAM("1") "," CAM("2") "]";
	jsonev_result res;
	cr_assert_eq(jsonev_decode(d, jsonev_maps_find(ms, "traffic", 7), b, strlen(b), 0, &res),
		     TALLY_ELIMIT);
	cr_assert_eq(res.accepted, 0);
	cr_assert(strstr(res.errors[0].reason, "longer than the limit of 100"));
	jsonev_dec_free(d);
	jsonev_maps_free(ms);
}

/* DBL_MAX's neighbourhood: what rounds to DBL_MAX is kept, what rounds
 * to infinity is out of range. */
Test(jsonev, doubles_overflow_exactly_where_they_round_to_infinity, .init = setup, .fini = teardown)
{
	static const struct {
		const char *num;
		int ok;
	} c[] = {
		{"1.7976931348623157e308", 1},
		{"1.7976931348623158e308", 1},
		{"179769313486231580793728971405303415079934132710037826936173778980444968292764750"
		 "946649017977587207096330286416692887910946555547851940402630657488671505820681908"
		 "90"
		 "200070838367627385484581771153176447573027006985557136695962284291481986083493647"
		 "52"
		 "927190741684443655107043427115596995080930428801779041744977919999e-4",
		 1},
		{"179769313486231580793728971405303415079934132710037826936173778980444968292764750"
		 "946649017977587207096330286416692887910946555547851940402630657488671505820681908"
		 "90"
		 "200070838367627385484581771153176447573027006985557136695962284291481986083493647"
		 "52"
		 "92719074168444365510704342711559699508093042880177904174497792",
		 0},
		{"1.7976931348623159e308", 0},
		{"-1e309", 0},
		{"0.001e312", 0},
		{"0.0001e312", 1},
		{"1e-400", 1},
		{"0e99999999999", 1},
	};
	for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
		buf b = {0};
		putf(&b, "{\"kvfv_id\":\"a\",\"timestamp\":\"2025-02-03T00:00:00Z\",\"vehicle_"
			 "speed\":");
		put(&b, c[i].num, strlen(c[i].num));
		put(&b, "}", 1);
		jsonev_result res = run(b.p, b.n);
		cr_assert_eq(res.accepted, (uint64_t)c[i].ok, "%s", c[i].num);
		cr_assert_eq(strtod(c[i].num, NULL) <= DBL_MAX &&
				     strtod(c[i].num, NULL) >= -DBL_MAX,
			     c[i].ok, "%s: strtod disagrees", c[i].num);
		free(b.p);
	}
}

Test(jsonev, missing_time_takes_the_servers_only_when_the_mapping_says_so)
{
	jsonev_map *m;
	jsonev_dec *d;
	char err[200];
	cr_assert_eq(jsonev_map_parse("t: key=k, time=ts, fields=v, missing-time=now", &m, err,
				      sizeof err),
		     0, "%s", err);
	cr_assert_eq(jsonev_dec_new(NULL, &d), 0);
	const char *b =
		"{\"k\":\"a\",\"v\":1}\n{\"k\":\"b\",\"v\":2,\"ts\":\"2025-01-01T00:00:00+03:00\"}";
	jsonev_result res;
	cr_assert_eq(jsonev_decode(d, m, b, strlen(b), 777, &res), 0);
	cr_assert_eq(res.accepted, 2);
	const char *want = "t,k=a v=1 777\nt,k=b v=2 1735678800000000000\n";
	cr_assert_eq(res.lp_len, strlen(want));
	cr_assert(!memcmp(res.lp, want, res.lp_len), "%.*s", (int)res.lp_len, res.lp);
	jsonev_dec_free(d);
	jsonev_map_free(m);
}

Test(jsonev, numbers_times_and_names_are_written_exactly)
{
	jsonev_map *m;
	jsonev_dec *d;
	char err[200];
	cr_assert_eq(jsonev_map_parse("m e a,s: key=k>c=k, time=ts, time-unit=us, "
				      "fields=f>f=x, ints=i, bools=b, tags=t>t\\g, strings=s",
				      &m, err, sizeof err),
		     0, "%s", err);
	cr_assert_eq(jsonev_dec_new(NULL, &d), 0);
	const char *b = "[{\"k\":\"a b,c=d\\\\e\",\"ts\":-1.5,\"f\":-0,\"i\":-12e2,\"b\":false,"
			"\"t\":\"x\\\\\\\\=\",\"s\":\"q\\\"\\\\\\n\\u00e9\"},"
			"{\"k\":\"z\",\"ts\":1e-3,\"f\":1.5E+2,\"i\":9223372036854775807}]";
	jsonev_result res;
	cr_assert_eq(jsonev_decode(d, m, b, strlen(b), 0, &res), 0);
	cr_assert_eq(res.accepted, 2, "%s", res.n_errors ? res.errors[0].reason : "");
	const char *want = "m\\ e\\ a\\,s,c\\=k=a\\ b\\,c\\=d\\e,t\\g=x\\\\\\= f\\=x=-0,i=-1200i,"
			   "b=false,s=\"q\\\"\\\\\\\n\xC3\xA9\" -1500\n"
			   "m\\ e\\ a\\,s,c\\=k=z f\\=x=1.5E+2,i=9223372036854775807i 1\n";
	cr_assert_eq(res.lp_len, strlen(want), "%.*s", (int)res.lp_len, res.lp);
	cr_assert(!memcmp(res.lp, want, res.lp_len), "%.*s", (int)res.lp_len, res.lp);
	cr_assert_eq(res.lines, 3); /* the string's newline continues its record */
	cr_assert_eq(jsonev_line_event(&res, 1), 0);
	cr_assert_eq(jsonev_line_event(&res, 2), 0);
	cr_assert_eq(jsonev_line_event(&res, 3), 1);
	cr_assert_eq(jsonev_line_event(&res, 4), UINT64_MAX);
	jsonev_dec_free(d);
	jsonev_map_free(m);
}

/* Engine rejections come back as physical line numbers: they must name the
 * right events also after a record that spans two lines. */
Test(jsonev, engine_line_errors_map_back_to_event_indexes)
{
	char *dir;
	tally_db *db;
	tally_writer *w;
	db_open(&dir, &db, &w);
	const char *seed = "t,k=a v=1 1\n";
	cr_assert_eq(tally_write_lp(w, seed, strlen(seed), TALLY_PREC_NS, NULL), 0);
	jsonev_map *m;
	jsonev_dec *d;
	char err[200];
	/* v is a float in table t; as ints= its lines are refused by the engine */
	cr_assert_eq(jsonev_map_parse("t: key=k, time=ts, time-unit=ns, ints=v, strings=s", &m, err,
				      sizeof err),
		     0);
	cr_assert_eq(jsonev_dec_new(NULL, &d), 0);
	const char *b = "{\"k\":\"a\",\"ts\":2,\"s\":\"two\\nlines\"}\n"
			"{\"k\":\"a\",\"ts\":3,\"v\":5}\n"
			"{\"k\":\"a\",\"ts\":4,\"s\":\"ok\"}\n"
			"{\"k\":\"a\",\"ts\":5,\"v\":6,\"s\":\"x\\ny\\nz\"}\n"
			"{\"k\":\"a\",\"ts\":6,\"v\":7}\n";
	jsonev_result res;
	cr_assert_eq(jsonev_decode(d, m, b, strlen(b), 0, &res), 0);
	cr_assert_eq(res.accepted, 5);
	tally_write_result wr;
	cr_assert_eq(tally_write_lp(w, res.lp, res.lp_len, TALLY_PREC_NS, &wr), 0);
	cr_assert_eq(wr.rejected, 3);
	static const uint64_t want[3] = {1, 3, 4};
	for (int i = 0; i < 3; i++)
		cr_assert_eq(jsonev_line_event(&res, wr.errors[i].line), want[i],
			     "line %" PRIu64 " (%s)", wr.errors[i].line, wr.errors[i].reason);
	jsonev_dec_free(d);
	jsonev_map_free(m);
	db_close(dir, db, w);
}

/* ---------------------------------------------------------------- mappings */

Test(jsonev, mappings_parse_and_bad_ones_say_why)
{
	static const char *const good[] = {
		JSONEV_DEFAULT_MAP,
		"cams: key=id, time=t, time-unit=ms, fields=a b>c, ints=n, bools=ok, tags=x>y z, "
		"strings=s, unknown=reject, missing-time=now",
		"t:key=k,fields=v,missing-time=now",
		"t: key=k, time=ts, fields=v, fields=w, ,",
	};
	for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
		jsonev_map *m;
		char err[200] = "";
		cr_assert_eq(jsonev_map_parse(good[i], &m, err, sizeof err), 0, "%s: %s", good[i],
			     err);
		jsonev_map_free(m);
	}
	static const struct {
		const char *spec, *why;
	} bad[] = {
		{"traffic key=a", "expected 'TABLE: key=..."},
		{": key=a, time=t, fields=f", "table name '' is empty"},
		{"#t: key=a, time=t, fields=f", "starts with '#'"},
		{"t\\: key=a, time=t, fields=f", "ends with a backslash"},
		{"t: time=t, fields=f", "no key"},
		{"t: key=a, fields=f", "no time member"},
		{"t: key=a, time=t", "no fields"},
		{"t: key=a, key=b, time=t, fields=f", "key given twice"},
		{"t: key=a b, time=t, fields=f", "key takes one member"},
		{"t: key=a, time=t>x, fields=f", "takes no '>'"},
		{"t: key=a, time=t, fields=f>", "needs one name after '>'"},
		{"t: key=a, time=t, fields=>f", "no member name before '>'"},
		{"t: key=a, time=t, fields=f, tags=f", "mapped twice"},
		{"t: key=a>x, time=t, fields=f>x", "is given to"},
		{"t: key=a, time=t, fields=f, time-unit=h", "not s, ms, us or ns"},
		{"t: key=a, time=t, fields=f, unknown=drop", "not ignore or reject"},
		{"t: key=a, time=t, fields=f, missing-time=later", "not reject or now"},
		{"t: key=a, time=t, fields=f, colour=red", "unknown setting 'colour'"},
		{"t: key=a, time=t, fields", "is not name=value"},
		{"t: key=a, time=t, fields=", "fields: no member given"},
		{"t: key=a, time=t, fields=f, unknown=ignore, unknown=reject",
		 "unknown given twice"},
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		jsonev_map *m = (jsonev_map *)1;
		char err[200] = "";
		cr_assert_eq(jsonev_map_parse(bad[i].spec, &m, err, sizeof err), TALLY_EINVAL, "%s",
			     bad[i].spec);
		cr_assert_null(m);
		cr_assert(strstr(err, bad[i].why), "%s: '%s'", bad[i].spec, err);
	}
}

Test(jsonev, a_json_map_for_traffic_replaces_the_default)
{
	jsonev_maps *ms;
	char err[200];
	cr_assert_eq(jsonev_maps_new(&ms), 0);
	cr_assert_null(jsonev_maps_find(ms, "cams", 4));
	cr_assert_eq(jsonev_maps_add(ms, "cams: key=id, time=t, fields=v", err, sizeof err), 0);
	cr_assert_eq(jsonev_maps_add(ms, "traffic: key=cam, time=t, fields=v", err, sizeof err), 0);
	cr_assert_eq(jsonev_maps_add(ms, "broken: key=cam", err, sizeof err), TALLY_EINVAL);
	cr_assert_null(jsonev_maps_find(ms, "broken", 6));
	const jsonev_map *t = jsonev_maps_find(ms, "traffic", 7);
	cr_assert_str_eq(jsonev_map_table(t), "traffic");
	jsonev_dec *d;
	cr_assert_eq(jsonev_dec_new(NULL, &d), 0);
	const char *b = "{\"cam\":\"a\",\"t\":\"2025-01-01T00:00:00Z\",\"v\":1}";
	jsonev_result res;
	cr_assert_eq(jsonev_decode(d, t, b, strlen(b), 0, &res), 0);
	cr_assert_eq(res.accepted, 1);
	cr_assert(!memcmp(res.lp, "traffic,cam=a v=1 ", 18));
	jsonev_dec_free(d);
	jsonev_maps_free(ms);
}

/* tallyd's json-map setting: repeatable, each checked when it is set, from
 * flags and from a config file (whose line a bad one names). */
Test(jsonev, json_map_settings_add_up_and_bad_ones_stop_the_start)
{
	srv_conf c;
	conf_init(&c);
	cr_assert_eq(conf_set(&c, "json-map", "cams: key=id, time=t, fields=v", NULL), 0);
	cr_assert_eq(conf_set(&c, "json_map", "bikes: key=id, time=t, ints=n", NULL), 0);
	cr_assert_eq(conf_set(&c, "json-map", "bad: key=id, time=t", NULL), -1);
	cr_assert_eq(c.n_json_maps, 2);
	cr_assert_str_eq(c.json_maps[1], "bikes: key=id, time=t, ints=n");
	char path[] = "/tmp/tally-jsonev-conf-XXXXXX";
	int fd = mkstemp(path);
	cr_assert(fd >= 0);
	const char *text = "# maps\njson-map = \"vans: key=id, time=t, fields=v\"\n"
			   "json-map = vans: key=id, time=t, fields=v>\n";
	cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
	cr_assert_eq(conf_load_file(&c, path), -1); /* line 3 */
	cr_assert_eq(c.n_json_maps, 3);
	cr_assert_str_eq(c.json_maps[2], "vans: key=id, time=t, fields=v");
	unlink(path);
	jsonev_maps *ms;
	char err[200];
	cr_assert_eq(jsonev_maps_new(&ms), 0);
	for (unsigned i = 0; i < c.n_json_maps; i++)
		cr_assert_eq(jsonev_maps_add(ms, c.json_maps[i], err, sizeof err), 0);
	cr_assert(jsonev_maps_find(ms, "vans", 4) && jsonev_maps_find(ms, "traffic", 7));
	jsonev_maps_free(ms);
	conf_free(&c);
	cr_assert_eq(c.n_json_maps, 0);
}
