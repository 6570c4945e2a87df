/*
 * influxq_exec.c — runs parsed InfluxQL (influxql.c) against the engine and
 * writes InfluxDB 1.x's JSON answer (docs/http.md, "InfluxQL").
 *
 * The one idea: a GROUP BY time(w) window that lies whole inside the
 * statement's range is a rollup bucket, so every window but the two at the
 * range's ends comes from one tally_query_series call per key and field,
 * and the two cut windows from tally_query_agg, which reads raw events only
 * at unaligned edges: the answer is exact, late events included, and costs
 * the number of windows, not of events. Only a window tally's rollups
 * cannot tile (w not a multiple of the finest level, or windows that do
 * not start where tally's do) is asked window by window of
 * tally_query_agg, bounded by IQ_MAX_WINDOWS.
 *
 * median and percentile are asked of each window's exact distribution
 * (tally_query_dist: the same tiling, whole windows plus raw edges),
 * merged over the keys of a series, and answered in InfluxDB's
 * conventions to the bit (dist_cell), so the answer equals InfluxDB's
 * sort of the raw points.
 *
 * SHOW statements and a SELECT's schema read one view of the catalog
 * (show_cat): this node's, or with peers the union of every node's
 * #!tables rows, so that a table, field or tag any node holds is listed
 * and answered whichever node is asked.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db.h"
#include "http.h"
#include "influxql.h"
#include "numfmt.h"

/* ---------------------------------------------------------------- buffer */

static void iq_reserve(iq_buf *b, size_t n)
{
	if (b->oom || b->n + n <= b->cap)
		return;
	size_t cap = b->cap ? b->cap : 4096;
	while (cap < b->n + n)
		cap *= 2;
	char *p = realloc(b->p, cap);
	if (!p) {
		b->oom = 1;
		return;
	}
	b->p = p;
	b->cap = cap;
}

void iq_put(iq_buf *b, const char *s, size_t n)
{
	if (!n)
		return;
	iq_reserve(b, n);
	if (b->oom)
		return;
	memcpy(b->p + b->n, s, n);
	b->n += n;
}

void iq_puts(iq_buf *b, const char *s)
{
	iq_put(b, s, strlen(s));
}

void iq_put_json_str(iq_buf *b, const char *s, size_t n)
{
	iq_put(b, "\"", 1);
	size_t run = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c >= 32 && c != '"' && c != '\\')
			continue;
		iq_put(b, s + run, i - run);
		char e[8];
		int k = c == '"' || c == '\\' ? snprintf(e, sizeof e, "\\%c", c)
					      : snprintf(e, sizeof e, "\\u%04x", c);
		iq_put(b, e, (size_t)k);
		run = i + 1;
	}
	iq_put(b, s + run, n - run);
	iq_put(b, "\"", 1);
}

static void put_str(iq_buf *b, const char *s)
{
	iq_put_json_str(b, s, strlen(s));
}

static void put_i64(iq_buf *b, int64_t v)
{
	char t[24];
	iq_put(b, t, (size_t)snprintf(t, sizeof t, "%" PRId64, v));
}

/* A double as Go writes it: null for what JSON cannot say. */
static void put_f64(iq_buf *b, double v)
{
	if (!isfinite(v)) {
		iq_puts(b, "null");
		return;
	}
	char t[32];
	iq_put(b, t, cmd_format_double(v, t));
}

int64_t iq_epoch_unit(const char *s)
{
	static const struct {
		const char *u;
		int64_t ns;
	} units[] = {{"ns", 1},
		     {"n", 1},
		     {"u", 1000},
		     {"us", 1000},
		     {"\xc2\xb5", 1000},
		     {"ms", 1000000},
		     {"s", 1000000000},
		     {"m", INT64_C(60000000000)},
		     {"h", INT64_C(3600000000000)}};
	for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
		if (!strcmp(s, units[i].u))
			return units[i].ns;
	return -1;
}

/* RFC 3339 with the fraction's trailing zeros dropped (Go's RFC3339Nano),
 * or an integer in the epoch= unit. */
static void put_time(iq_buf *b, int64_t ns, int64_t unit)
{
	if (unit) {
		put_i64(b, ns / unit);
		return;
	}
	char t[48];
	size_t n = cmd_format_time(ns, t);
	if (n > 2 && memchr(t, '.', n)) {
		n--; /* the Z */
		while (t[n - 1] == '0')
			n--;
		if (t[n - 1] == '.')
			n--;
		t[n++] = 'Z';
	}
	iq_put(b, "\"", 1);
	iq_put(b, t, n);
	iq_put(b, "\"", 1);
}

/* ---------------------------------------------------------------- catalog */

/* A table's columns (fields with their types, and tags other than the key
 * tag as TALLY_T_TAG), names borrowed until the database closes. */
typedef struct cols {
	const char **name;
	enum tally_type *type;
	size_t n;
} cols;

static void cols_free(cols *c)
{
	free(c->name);
	free(c->type);
	memset(c, 0, sizeof *c);
}

/* 0, TALLY_ENOTFOUND when there is no such table, or another error. */
static int cols_get(tally_db *db, const char *table, cols *c)
{
	size_t cap = 64;
	for (;;) {
		c->name = malloc(cap * sizeof *c->name);
		c->type = malloc(cap * sizeof *c->type);
		if (!c->name || !c->type) {
			cols_free(c);
			return -ENOMEM;
		}
		int rc = tally_catalog_fields(db, table, c->name, c->type, cap, &c->n);
		if (rc != TALLY_ETRUNC) {
			if (rc)
				cols_free(c);
			return rc;
		}
		cap = c->n + 16; /* columns were added meanwhile: try again */
		cols_free(c);
	}
}

static enum tally_type cols_type(const cols *c, const char *field)
{
	for (size_t i = 0; i < c->n; i++)
		if (!strcmp(c->name[i], field))
			return c->type[i];
	return TALLY_T_NONE;
}

/* ---------------------------------------------------------------- SELECT */

/* "Any time" for SHOW TAG VALUES across nodes: the years 1678 to 2261,
 * which every node reads back from RFC 3339. */
#define IQ_ALL_TIME INT64_C(9200000000000000000)

typedef struct ex {
	tally_db *db;
	iq_src *src; /* NULL: this node's engine */
	const iq_params *prm;
	char *err; /* IQ_ERR_MAX */
	tally_bucket *bk;
	size_t bk_cap;
	double dist_error; /* this statement's largest sketch error (0: exact) */
} ex;

static int ex_fail(ex *x, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int ex_fail(ex *x, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(x->err, IQ_ERR_MAX, fmt, ap);
	va_end(ap);
	return -1;
}

static int ex_engine(ex *x, int rc)
{
	if (rc == IQ_EREMOTE)
		return -1; /* the source said why, in x->err */
	const char *m = tally_errmsg();
	return ex_fail(x, "%s", m && *m ? m : tally_strerror(rc));
}

static void agg_merge(tally_agg *a, const tally_agg *b)
{
	if (!b->count)
		return;
	if (!a->count) {
		*a = *b;
		return;
	}
	a->count += b->count;
	a->sum += b->sum;
	if (b->min < a->min)
		a->min = b->min;
	if (b->max > a->max)
		a->max = b->max;
}

/* The numbers, from this node's engine or from every node (iq_src). */
static int ex_agg(ex *x, const char *table, const char *field, const char *key, int64_t from,
		  int64_t to, tally_agg *a)
{
	if (x->src)
		return x->src->agg(x->src, table, field, key, from, to, a, x->err);
	return tally_query_agg(x->db, table, field, key, from, to, a);
}

static int ex_series(ex *x, const char *table, const char *field, const char *key, int64_t step,
		     int64_t from, int64_t to, size_t cap, size_t *n)
{
	if (x->src)
		return x->src->series(x->src, table, field, key, step, from, to, x->bk, cap, n,
				      x->err);
	return tally_query_series(x->db, table, field, key, step, from, to, x->bk, cap, n);
}

static int ex_dist(ex *x, const char *table, const char *field, const char *key, int64_t from,
		   int64_t to, tally_dist **out)
{
	if (x->src)
		return x->src->dist(x->src, table, field, key, from, to, out, x->err);
	return tally_query_dist(x->db, table, field, key, from, to, out);
}

static int ex_keys(ex *x, const char *table, const char *field, int64_t from, int64_t to,
		   int (*each)(void *arg, const char *key), void *arg)
{
	if (x->src)
		return x->src->keys(x->src, table, field, from, to, each, arg, x->err);
	tally_keys_iter *it = NULL;
	int rc = tally_query_keys(x->db, table, field, from, to, &it);
	if (rc)
		return rc;
	const char *key;
	tally_agg a;
	while ((rc = tally_keys_next(it, &key, &a)) == 1)
		if ((rc = each(arg, key)))
			break;
	tally_keys_close(it);
	return rc < 0 ? rc : 0;
}

/* Every key the statement's condition names outright (= and OR of =), in
 * *keys; 0 when the condition is anything else. */
static int explicit_keys(const iq_cond *c, char ***keys, size_t *n, size_t *cap)
{
	if (c->kind == IQ_C_OR)
		return explicit_keys(c->l, keys, n, cap) && explicit_keys(c->r, keys, n, cap);
	if (c->kind != IQ_C_EQ)
		return 0;
	if (*n == *cap) {
		size_t nc = *cap ? *cap * 2 : 8;
		char **k = realloc(*keys, nc * sizeof *k);
		if (!k)
			return 0;
		*keys = k;
		*cap = nc;
	}
	(*keys)[(*n)++] = c->val; /* borrowed from the statement */
	return 1;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A table keyed by several tags ("camera+lane") or all ("*"): its keys
 * are tag=value pairs (engine/tagkey.h) and any key tag may be filtered
 * and grouped on. */
static int key_multi(const char *key_tag)
{
	return !strcmp(key_tag, "*") || strchr(key_tag, '+');
}

static int is_key_tag(const char *key_tag, const char *tag)
{
	if (!key_multi(key_tag))
		return !strcmp(tag, key_tag);
	if (!strcmp(key_tag, "*"))
		return 1;
	size_t n = strlen(tag);
	for (const char *p = key_tag;;) {
		const char *e = strchr(p, '+');
		size_t l = e ? (size_t)(e - p) : strlen(p);
		if (l == n && !memcmp(p, tag, n))
			return 1;
		if (!e)
			return 0;
		p = e + 1;
	}
}

/* The value the condition tests in key: the key itself, or in a key of
 * several tags the named tag's ("" when the key lacks it, as InfluxDB). */
static int cond_match_key(const iq_cond *c, const char *key, int multi, tkbuf *tmp)
{
	if (!multi || !c)
		return iq_cond_match(c, key);
	if (c->kind == IQ_C_AND)
		return cond_match_key(c->l, key, multi, tmp) &&
		       cond_match_key(c->r, key, multi, tmp);
	if (c->kind == IQ_C_OR)
		return cond_match_key(c->l, key, multi, tmp) ||
		       cond_match_key(c->r, key, multi, tmp);
	if (tagkey_value(key, (uint32_t)strlen(key), c->tag, tmp) < 0)
		return 0;
	return iq_cond_match(c, tmp->p);
}

/* The tag named must be one of the table's key tags: tally's rollups are
 * per key, and other tags are columns of the raw events. */
static int check_tag(ex *x, const char *table, const char *key_tag, const char *tag)
{
	if (is_key_tag(key_tag, tag))
		return 0;
	return ex_fail(x,
		       "tally groups and filters \"%s\" only by its key tag \"%s\", not by \"%s\"",
		       table, key_tag, tag);
}

static int check_cond_tags(ex *x, const char *table, const char *key_tag, const iq_cond *c)
{
	if (!c)
		return 0;
	if (c->kind == IQ_C_AND || c->kind == IQ_C_OR)
		return check_cond_tags(x, table, key_tag, c->l) ||
		       check_cond_tags(x, table, key_tag, c->r);
	return check_tag(x, table, key_tag, c->tag);
}

typedef struct keyset {
	char **k; /* owned copies */
	size_t n, cap;
} keyset;

static void keyset_free(keyset *ks)
{
	for (size_t i = 0; i < ks->n; i++)
		free(ks->k[i]);
	free(ks->k);
}

static int keyset_add(keyset *ks, const char *key)
{
	if (ks->n == ks->cap) {
		size_t nc = ks->cap ? ks->cap * 2 : 16;
		char **k = realloc(ks->k, nc * sizeof *k);
		if (!k)
			return -ENOMEM;
		ks->k = k;
		ks->cap = nc;
	}
	if (!(ks->k[ks->n] = strdup(key)))
		return -ENOMEM;
	ks->n++;
	return 0;
}

static void keyset_sort(keyset *ks)
{
	if (ks->n < 2)
		return; /* (qsort of NULL is undefined even for 0 keys) */
	qsort(ks->k, ks->n, sizeof *ks->k, cmp_str);
	size_t o = 0;
	for (size_t i = 0; i < ks->n; i++) {
		if (o && !strcmp(ks->k[o - 1], ks->k[i])) {
			free(ks->k[i]);
			continue;
		}
		ks->k[o++] = ks->k[i];
	}
	ks->n = o;
}

/* ex_keys' callback: a key the condition (NULL: any) keeps goes into ks. */
typedef struct key_pick {
	keyset *ks;
	const iq_cond *where;
	int multi;  /* keys of several tags: the condition tests each tag */
	tkbuf *tmp; /* a tag's value, unescaped */
} key_pick;

static int key_pick_add(void *arg, const char *key)
{
	key_pick *kp = arg;
	if (kp->where && !cond_match_key(kp->where, key, kp->multi, kp->tmp))
		return 0;
	return keyset_add(kp->ks, key);
}

/* The keys the statement reads: those its condition names, else every key
 * with events of one of its fields in the range that the condition
 * matches. */
static int select_keys(ex *x, const iq_stmt *st, const enum tally_type *types, int64_t from,
		       int64_t to, int multi, keyset *ks)
{
	char **named = NULL;
	size_t n = 0, cap = 0;
	int rc = 0;
	tkbuf tmp = {0};
	if (!multi && st->where && explicit_keys(st->where, &named, &n, &cap)) {
		for (size_t i = 0; i < n && !rc; i++)
			rc = keyset_add(ks, named[i]);
		free(named);
		if (rc)
			return ex_fail(x, "out of memory");
		keyset_sort(ks);
		return 0;
	}
	free(named);
	key_pick kp = {ks, st->where, multi, &tmp};
	for (unsigned i = 0; i < st->n_aggs; i++) {
		unsigned j = 0;
		while (j < i && strcmp(st->aggs[j].field, st->aggs[i].field))
			j++;
		if (j < i || types[i] == TALLY_T_NONE)
			continue;
		rc = ex_keys(x, st->table, st->aggs[i].field, from, to, key_pick_add, &kp);
		if (rc == TALLY_ENOTFOUND)
			continue;
		if (rc) {
			tkbuf_free(&tmp);
			return ex_engine(x, rc);
		}
	}
	tkbuf_free(&tmp);
	keyset_sort(ks);
	return 0;
}

/* GROUP BY a tag: the keys in ks reordered by the tag's value, group g
 * being keys [beg[g], beg[g + 1]) with the value label[g] (of a one-tag
 * key, the key itself). */
typedef struct kgroups {
	size_t n, *beg;
	char **label;
} kgroups;

typedef struct kval {
	char *val, *key;
} kval;

static int kval_cmp(const void *a, const void *b)
{
	const kval *x = a, *y = b;
	int c = strcmp(x->val, y->val);
	return c ? c : strcmp(x->key, y->key);
}

static void kgroups_free(kgroups *g)
{
	for (size_t i = 0; i < g->n; i++)
		free(g->label[i]);
	free(g->label);
	free(g->beg);
	memset(g, 0, sizeof *g);
}

static int group_keys(ex *x, keyset *ks, const char *tag, int multi, kgroups *g)
{
	kval *v = calloc(ks->n ? ks->n : 1, sizeof *v);
	g->beg = calloc(ks->n + 1, sizeof *g->beg);
	g->label = calloc(ks->n ? ks->n : 1, sizeof *g->label);
	tkbuf tmp = {0};
	int rc = v && g->beg && g->label ? 0 : -1;
	for (size_t i = 0; i < ks->n && !rc; i++) {
		v[i].key = ks->k[i];
		if (multi && tagkey_value(ks->k[i], (uint32_t)strlen(ks->k[i]), tag, &tmp) < 0)
			rc = -1;
		else if (!(v[i].val = strdup(multi ? tmp.p : ks->k[i])))
			rc = -1;
	}
	if (!rc && ks->n > 1)
		qsort(v, ks->n, sizeof *v, kval_cmp);
	for (size_t i = 0; i < ks->n && !rc; i++) {
		ks->k[i] = v[i].key;
		if (g->n && !strcmp(v[i].val, g->label[g->n - 1])) {
			free(v[i].val);
			continue;
		}
		g->beg[g->n] = i;
		g->label[g->n++] = v[i].val;
		v[i].val = NULL;
	}
	if (rc && v)
		for (size_t i = 0; i < ks->n; i++)
			free(v[i].val);
	g->beg[g->n] = ks->n;
	free(v);
	tkbuf_free(&tmp);
	return rc ? ex_fail(x, "out of memory") : 0;
}

static int64_t floor_to(int64_t t, int64_t step)
{
	int64_t r = t % step;
	return r < 0 ? t - r - step : t - r;
}

/* The windows' grid: nwin windows of width step from w0 (one window, the
 * whole range, without GROUP BY time). */
typedef struct grid {
	int64_t from, to, w0, step;
	size_t nwin;
} grid;

/* Window i of g as a range, cut to the statement's. */
static void win_range(const grid *g, size_t i, int64_t *lo, int64_t *hi)
{
	if (!g->step) {
		*lo = g->from;
		*hi = g->to;
		return;
	}
	int64_t ws = g->w0 + (int64_t)i * g->step;
	*lo = ws < g->from ? g->from : ws;
	*hi = g->to - ws <= g->step ? g->to : ws + g->step;
}

/* Adds one key's field over every window of g into acc[0, g->nwin). */
static int fill_key(ex *x, const iq_stmt *st, const char *field, const char *key, const grid *g,
		    tally_agg *acc)
{
	tally_agg a;
	int rc;
	if (!st->step) {
		rc = ex_agg(x, st->table, field, key, g->from, g->to, &a);
		if (rc == TALLY_ENOTFOUND)
			return 0;
		if (rc)
			return ex_engine(x, rc);
		agg_merge(&acc[0], &a);
		return 0;
	}
	const levels *L = &x->db->L;
	int tiles = g->step % L->w[0] == 0 && L->offset % g->step == 0;
	/* Whole windows [i0, i1) from the rollups; the cut ones at either
	 * end (or all, when the rollups do not tile them) exactly. */
	size_t i0 = g->w0 >= g->from ? 0 : 1;
	size_t i1 = (size_t)(((uint64_t)g->to - (uint64_t)g->w0) / (uint64_t)g->step);
	if (i1 > g->nwin)
		i1 = g->nwin;
	if (!tiles || i0 >= i1)
		i0 = i1 = 0;
	if (i1 > i0) {
		size_t want = i1 - i0, n = 0;
		if (want > x->bk_cap) {
			tally_bucket *bk = realloc(x->bk, want * sizeof *bk);
			if (!bk)
				return ex_fail(x, "out of memory");
			x->bk = bk;
			x->bk_cap = want;
		}
		int64_t lo = g->w0 + (int64_t)i0 * g->step, hi = g->w0 + (int64_t)i1 * g->step;
		rc = ex_series(x, st->table, field, key, g->step, lo, hi, want, &n);
		if (rc == TALLY_ENOTFOUND)
			return 0;
		if (rc)
			return ex_engine(x, rc);
		for (size_t i = 0; i < n && i < want; i++) {
			int64_t w = x->bk[i].start;
			if (w < lo || w >= hi)
				continue;
			agg_merge(&acc[(size_t)((w - g->w0) / g->step)], &x->bk[i].agg);
		}
	}
	for (size_t i = 0; i < g->nwin; i++) {
		if (i >= i0 && i < i1)
			continue;
		int64_t lo, hi;
		win_range(g, i, &lo, &hi);
		rc = ex_agg(x, st->table, field, key, lo, hi, &a);
		if (rc == TALLY_ENOTFOUND)
			return 0;
		if (rc)
			return ex_engine(x, rc);
		agg_merge(&acc[i], &a);
	}
	return 0;
}

/* ---------------------------------------------------------------- distributions */

static int is_dist(enum iq_func fn)
{
	return fn == IQ_MEDIAN || fn == IQ_PERCENTILE;
}

/* The r-th smallest value of d (1-based, 1 <= r <= N): the nearest-rank
 * quantile at q = (r - 1/2) / N, whose ceil(q * N) is r (the quotient's
 * rounding moves q * N by about r * 2^-53, far less than the 1/2). */
static double dist_nth(const tally_dist *d, uint64_t r)
{
	double v = NAN;
	tally_dist_quantile(d, ((double)r - 0.5) / (double)tally_dist_count(d), &v);
	return v;
}

/* A median or percentile of one window's values, as InfluxDB 1.x computes
 * it from the sorted points (its query/call_iterator.go): PERCENTILE(f, p)
 * is the point at 1-based rank floor(N * p / 100 + 0.5), none when that
 * rank is below 1 or above N (so not the nearest rank of
 * tally_dist_quantile: 84% of 10 points is the 8th, not the 9th); MEDIAN
 * the middle point, for an even N lo + (hi - lo) / 2 of the two middle
 * ones. The same double operations in the same order give the same bits.
 * 1 and *out, or 0 when the window has no value. */
static int dist_cell(const iq_agg *ag, const tally_dist *d, double *out)
{
	uint64_t n = tally_dist_count(d);
	if (!n)
		return 0;
	if (ag->fn == IQ_MEDIAN) {
		if (n % 2) {
			*out = dist_nth(d, n / 2 + 1);
			return 1;
		}
		double lo = dist_nth(d, n / 2), hi = dist_nth(d, n / 2 + 1);
		*out = lo + (hi - lo) / 2;
		return 1;
	}
	double r = floor((double)n * ag->pct / 100.0 + 0.5);
	if (!(r >= 1 && r <= (double)n))
		return 0;
	*out = dist_nth(d, (uint64_t)r);
	return 1;
}

static int dist_fail(ex *x, const iq_agg *ag, int rc)
{
	char m[IQ_ERR_MAX]; /* across nodes the source said why, in x->err */
	snprintf(m, sizeof m, "%s", rc == IQ_EREMOTE ? x->err : tally_errmsg());
	return ex_fail(x, "%s(\"%s\"): %s", iq_func_names[ag->fn], ag->field,
		       *m ? m : tally_strerror(rc));
}

/* Whether agg j is the first median or percentile of its field (the one
 * whose distributions the field's others share). */
static int dist_first(const iq_stmt *st, unsigned j)
{
	for (unsigned i = 0; i < j; i++)
		if (is_dist(st->aggs[i].fn) && !strcmp(st->aggs[i].field, st->aggs[j].field))
			return 0;
	return is_dist(st->aggs[j].fn);
}

/* Every median and percentile field must be kept as a distribution: asked
 * once over an empty range, so that the answer does not depend on which
 * keys have events. *fields: how many distinct fields they read (each a
 * distribution query per window and key). */
static int dist_check(ex *x, const iq_stmt *st, const enum tally_type *types, int64_t to,
		      unsigned *fields)
{
	*fields = 0;
	for (unsigned j = 0; j < st->n_aggs; j++) {
		if (!dist_first(st, j) || types[j] == TALLY_T_NONE)
			continue;
		tally_dist *d;
		/* this node's catalog; every node asked for its pairs
		 * says so again (a field this node lacks: only they) */
		int rc = tally_query_dist(x->db, st->table, st->aggs[j].field, "", to, to, &d);
		if (rc == TALLY_ENOTFOUND && x->src) {
			(*fields)++; /* another node's field: its pairs say */
			continue;
		}
		if (rc)
			return dist_fail(x, &st->aggs[j], rc);
		tally_dist_free(d);
		(*fields)++;
	}
	return 0;
}

/* *d added into *w (the first becomes it; *d NULL after). */
static int dist_add(tally_dist **w, tally_dist **d)
{
	if (!*d)
		return 0;
	if (!*w) {
		*w = *d;
		*d = NULL;
		return 0;
	}
	return tally_dist_merge(*w, *d);
}

/* The medians and percentiles of the keys keys[0, nk) (one series), window
 * by window: per field, one distribution per key and window
 * (tally_query_dist: rollups plus raw edges), merged over the keys, then
 * asked for each of that field's aggregates. Across nodes with GROUP BY
 * time, every window of a key comes from one ask of every node (iq_src's
 * dists), not one per window. A cell with a value gets count 1 and the
 * value as sum. */
static int fill_dist(ex *x, const iq_stmt *st, const enum tally_type *types, char *const *keys,
		     size_t nk, const grid *g, tally_agg *const *acc)
{
	for (unsigned j = 0; j < st->n_aggs; j++) {
		if (!dist_first(st, j) || types[j] == TALLY_T_NONE)
			continue;
		const char *field = st->aggs[j].field;
		tally_dist **w = calloc(g->nwin, sizeof *w);
		int rc = w ? 0 : -ENOMEM, stepped = x->src && x->src->dists && g->step;
		if (!rc && stepped) {
			/* across nodes: every window of a key in one ask */
			tally_dist **d = calloc(g->nwin, sizeof *d);
			rc = d ? 0 : -ENOMEM;
			for (size_t k = 0; k < nk && !rc; k++) {
				rc = x->src->dists(x->src, st->table, field, keys[k], g->step,
						   g->w0, g->from, g->to, g->nwin, d, x->err);
				for (size_t i = 0; i < g->nwin && !rc; i++)
					rc = dist_add(&w[i], &d[i]);
				for (size_t i = 0; i < g->nwin; i++) {
					tally_dist_free(d[i]);
					d[i] = NULL;
				}
			}
			free(d);
		}
		for (size_t i = 0; i < g->nwin && !rc; i++) {
			int64_t lo, hi;
			win_range(g, i, &lo, &hi);
			for (size_t k = 0; k < nk && !rc && !stepped; k++) {
				tally_dist *d = NULL;
				rc = ex_dist(x, st->table, field, keys[k], lo, hi, &d);
				if (!rc)
					rc = dist_add(&w[i], &d);
				tally_dist_free(d);
			}
			if (rc)
				break;
			if (w[i] && tally_dist_error(w[i]) > x->dist_error)
				x->dist_error = tally_dist_error(w[i]);
			for (unsigned m = j; w[i] && m < st->n_aggs; m++) {
				double v;
				if (is_dist(st->aggs[m].fn) && !strcmp(st->aggs[m].field, field) &&
				    dist_cell(&st->aggs[m], w[i], &v))
					acc[m][i] = (tally_agg){.count = 1, .sum = v};
			}
		}
		for (size_t i = 0; w && i < g->nwin; i++)
			tally_dist_free(w[i]);
		free(w);
		if (rc == -ENOMEM)
			return ex_fail(x, "out of memory");
		if (rc)
			return dist_fail(x, &st->aggs[j], rc);
	}
	return 0;
}

/* One aggregate's cell; a median or percentile's value is a->sum (its
 * window's count is 1 when it has one, 0 when not). */
static void put_cell(iq_buf *b, const iq_stmt *st, const iq_agg *ag, enum tally_type type,
		     const tally_agg *a, double *prev, int *has_prev)
{
	if (!a->count) {
		if (st->fill == IQ_FILL_VALUE)
			put_f64(b, st->fill_value);
		else if (st->fill == IQ_FILL_PREVIOUS && *has_prev)
			put_f64(b, *prev);
		else
			iq_puts(b, ag->fn == IQ_COUNT ? "0" : "null"); /* as InfluxDB */
		return;
	}
	double v = 0;
	int integer = type == TALLY_T_I64 || type == TALLY_T_U64 || type == TALLY_T_BOOL;
	switch (ag->fn) {
	case IQ_COUNT:
		v = (double)a->count;
		integer = 1;
		break;
	case IQ_MEAN:
		v = a->sum / (double)a->count;
		integer = 0;
		break;
	case IQ_SUM: v = a->sum; break;
	case IQ_MIN: v = a->min; break;
	case IQ_MAX: v = a->max; break;
	case IQ_PERCENTILE: v = a->sum; break; /* a value of the field: its type */
	case IQ_MEDIAN:
		v = a->sum;
		integer = 0; /* InfluxDB: a float, also of an integer field */
		break;
	case IQ_FUNCS: break;
	}
	*prev = v;
	*has_prev = 1;
	if (integer && fabs(v) < 9.2e18)
		put_i64(b, (int64_t)v);
	else
		put_f64(b, v);
}

/* One series: its name, tags and rows, acc[agg][window]. Returns 0 when it
 * has no row (then nothing was written). */
static int put_series(ex *x, iq_buf *b, const iq_stmt *st, const char *key_tag, const char *key,
		      const grid *g, tally_agg *const *acc, const enum tally_type *types, int first)
{
	size_t rows = 0, skip = st->offset > 0 ? (size_t)st->offset : 0;
	double prev[IQ_FIELDS_MAX];
	int has_prev[IQ_FIELDS_MAX] = {0};
	for (size_t k = 0; k < g->nwin; k++) {
		size_t i = st->desc ? g->nwin - 1 - k : k;
		int any = 0;
		for (unsigned j = 0; j < st->n_aggs; j++)
			any |= acc[j][i].count != 0;
		/* A window without events is a row only between rows (fill)
		 * of a GROUP BY time; a plain aggregate with none is no row. */
		if (!any && (st->fill == IQ_FILL_NONE || !st->step))
			continue;
		if (skip) {
			skip--;
			continue;
		}
		if (st->limit > 0 && rows == (size_t)st->limit)
			break;
		if (rows == 0) {
			iq_puts(b, first ? "{\"name\":" : ",{\"name\":");
			put_str(b, st->table);
			if (key) {
				iq_puts(b, ",\"tags\":{");
				put_str(b, key_tag);
				iq_puts(b, ":");
				put_str(b, key);
				iq_puts(b, "}");
			}
			iq_puts(b, ",\"columns\":[\"time\"");
			for (unsigned j = 0; j < st->n_aggs; j++) {
				iq_puts(b, ",");
				put_str(b, st->aggs[j].column);
			}
			iq_puts(b, "],\"values\":[");
		}
		iq_puts(b, rows ? ",[" : "[");
		int64_t t = st->step ? g->w0 + (int64_t)i * g->step : st->has_from ? g->from : 0;
		put_time(b, t, x->prm->epoch);
		for (unsigned j = 0; j < st->n_aggs; j++) {
			iq_puts(b, ",");
			put_cell(b, st, &st->aggs[j], types[j], &acc[j][i], &prev[j], &has_prev[j]);
		}
		iq_puts(b, "]");
		rows++;
	}
	if (rows)
		iq_puts(b, "]}");
	return rows != 0;
}

/* A SELECT of the table whose key tag and columns are key_tag and cl. */
static int select_run(ex *x, const iq_stmt *st, iq_buf *b, const char *key_tag, const cols *cl)
{
	int rc;
	if (check_cond_tags(x, st->table, key_tag, st->where) ||
	    (st->group_tag && check_tag(x, st->table, key_tag, st->group_tag)))
		return -1;
	grid g = {.from = st->has_from ? st->from : INT64_MIN,
		  .to = st->has_to ? st->to : INT64_MAX,
		  .step = st->step};
	if (st->step) {
		if (!st->has_from)
			return ex_fail(x, "tally needs a lower bound on time with GROUP BY time(), "
					  "such as time >= now() - 1h");
		if (!st->has_to)
			g.to = x->prm->now; /* as InfluxDB: up to now() */
		if (g.from >= g.to)
			return 0;
		g.w0 = floor_to(g.from, st->step);
		uint64_t span = (uint64_t)g.to - (uint64_t)g.w0;
		uint64_t nwin = span / (uint64_t)st->step + (span % (uint64_t)st->step != 0);
		/* Windows x aggregates: what the statement holds in memory
		 * (a tally_agg each) and writes (a cell each). */
		if (nwin * st->n_aggs > IQ_MAX_WINDOWS) {
			char d[32];
			cmd_format_duration(st->step, d);
			return ex_fail(x,
				       "GROUP BY time(%s) over this range gives %" PRIu64
				       " windows x %u aggregates, more than tally's limit of %d "
				       "per statement (max-select-buckets): narrow the range or "
				       "widen the step",
				       d, nwin, st->n_aggs, IQ_MAX_WINDOWS);
		}
		g.nwin = (size_t)nwin;
	} else {
		if (g.from >= g.to)
			return 0;
		g.nwin = 1;
	}
	enum tally_type types[IQ_FIELDS_MAX];
	for (unsigned j = 0; j < st->n_aggs; j++)
		types[j] = cols_type(cl, st->aggs[j].field);
	keyset ks = {0};
	kgroups kg = {0};
	int multi = key_multi(key_tag);
	unsigned dist_fields = 0;
	rc = dist_check(x, st, types, g.to, &dist_fields);
	if (!rc)
		rc = select_keys(x, st, types, g.from, g.to, multi, &ks);
	if (!rc && st->group_tag)
		rc = group_keys(x, &ks, st->group_tag, multi, &kg);
	size_t groups = st->group_tag ? kg.n : 1;
	/* a distribution query per window, key and field: each reads its
	 * window's (value, count) lists, more than a rollup bucket */
	if (!rc && (uint64_t)g.nwin * ks.n * dist_fields > IQ_MAX_DIST_QUERIES)
		rc = ex_fail(x,
			     "median or percentile over %zu windows x %zu keys x %u fields asks "
			     "for more than tally's limit of %d distributions per statement: "
			     "narrow the range, widen the step or name fewer keys",
			     g.nwin, ks.n, dist_fields, IQ_MAX_DIST_QUERIES);
	if (!rc && st->step && groups * g.nwin * st->n_aggs > IQ_MAX_WINDOWS)
		rc = ex_fail(x,
			     "%zu series of %zu windows x %u aggregates are more than tally's "
			     "limit of %d per statement (max-select-buckets)",
			     groups, g.nwin, st->n_aggs, IQ_MAX_WINDOWS);
	tally_agg *acc[IQ_FIELDS_MAX] = {0};
	for (unsigned j = 0; j < st->n_aggs && !rc; j++) {
		if (!(acc[j] = malloc(g.nwin * sizeof **acc)))
			rc = ex_fail(x, "out of memory");
	}
	size_t nseries = 0, skip = st->soffset > 0 ? (size_t)st->soffset : 0;
	for (size_t gi = 0; gi < groups && !rc; gi++) {
		if (st->slimit > 0 && nseries == (size_t)st->slimit)
			break;
		size_t k0 = st->group_tag ? kg.beg[gi] : 0,
		       k1 = st->group_tag ? kg.beg[gi + 1] : ks.n;
		for (unsigned j = 0; j < st->n_aggs; j++)
			memset(acc[j], 0, g.nwin * sizeof **acc);
		for (unsigned j = 0; j < st->n_aggs && !rc; j++) {
			if (is_dist(st->aggs[j].fn))
				continue;
			unsigned same = 0;
			while (same < j && (is_dist(st->aggs[same].fn) ||
					    strcmp(st->aggs[same].field, st->aggs[j].field)))
				same++;
			if (same < j) {
				memcpy(acc[j], acc[same], g.nwin * sizeof **acc);
				continue;
			}
			if (types[j] == TALLY_T_NONE)
				continue;
			for (size_t k = k0; k < k1 && !rc; k++)
				rc = fill_key(x, st, st->aggs[j].field, ks.k[k], &g, acc[j]);
		}
		if (!rc && dist_fields && k1 > k0)
			rc = fill_dist(x, st, types, ks.k + k0, k1 - k0, &g, acc);
		if (rc)
			break;
		int any = 0;
		for (unsigned j = 0; j < st->n_aggs && !any; j++)
			for (size_t i = 0; i < g.nwin && !any; i++)
				any = acc[j][i].count != 0;
		if (!any)
			continue; /* a series without points in the range is none */
		if (skip) {
			skip--;
			continue;
		}
		if (nseries == 0)
			iq_puts(b, ",\"series\":[");
		nseries += (size_t)put_series(x, b, st, st->group_tag ? st->group_tag : key_tag,
					      st->group_tag ? kg.label[gi] : NULL, &g, acc, types,
					      nseries == 0);
	}
	if (!rc && nseries)
		iq_puts(b, "]");
	for (unsigned j = 0; j < st->n_aggs; j++)
		free(acc[j]);
	kgroups_free(&kg);
	keyset_free(&ks);
	return rc;
}

/* ---------------------------------------------------------------- SHOW */

/* A list of names: a statement's answer series, started at its first row
 * (a series without rows is none, as InfluxDB). */
typedef struct rows {
	iq_buf *b;
	const iq_stmt *st;
	const char *columns; /* JSON, e.g. "[\"name\"]" */
	size_t n, seen;      /* rows written; rows matched (OFFSET skips them) */
	int series;          /* series written by the statement */
} rows;

/* Starts a row unless LIMIT or OFFSET leaves it out; 1 when it was. */
static int row_begin(rows *r, const char *name)
{
	if (r->seen++ < (size_t)(r->st->offset > 0 ? r->st->offset : 0))
		return 0;
	if (r->st->limit > 0 && r->n == (size_t)r->st->limit)
		return 0;
	if (r->n == 0) {
		iq_puts(r->b, r->series ? ",{" : ",\"series\":[{");
		if (name) {
			iq_puts(r->b, "\"name\":");
			put_str(r->b, name);
			iq_puts(r->b, ",");
		}
		iq_puts(r->b, "\"columns\":");
		iq_puts(r->b, r->columns);
		iq_puts(r->b, ",\"values\":[[");
	} else {
		iq_puts(r->b, ",[");
	}
	r->n++;
	return 1;
}

/* Ends the current series (if it has rows) and starts counting the next. */
static void rows_end_series(rows *r)
{
	if (r->n) {
		iq_puts(r->b, "]}");
		r->series++;
	}
	r->n = r->seen = 0;
}

static void rows_end(rows *r)
{
	rows_end_series(r);
	if (r->series)
		iq_puts(r->b, "]");
}

/* The catalog a SHOW reads: one entry per table (or the one FROM names),
 * sorted by name, with its key tag and columns. This node's (strings
 * borrowed from the engine) or, with peers, the union of every node's
 * #!tables rows (owned copies, wire/fancat.c): each statement runs alike
 * on either. */
typedef struct show_table {
	const char *name;
	const char *key_tag;  /* NULL: none */
	const char *key_tag2; /* another key tag a node gives it (union only) */
	cols c;
} show_table;

typedef struct show_cat {
	show_table *t;
	size_t n, cap;
	int owned; /* the strings are copies (the union) */
} show_cat;

static void show_cat_free(show_cat *sc)
{
	for (size_t i = 0; i < sc->n; i++) {
		show_table *t = &sc->t[i];
		if (sc->owned) {
			free((char *)t->name);
			free((char *)t->key_tag);
			free((char *)t->key_tag2);
			for (size_t j = 0; j < t->c.n; j++)
				free((char *)t->c.name[j]);
		}
		cols_free(&t->c);
	}
	free(sc->t);
	memset(sc, 0, sizeof *sc);
}

static show_table *show_cat_add(show_cat *sc, const char *name, const char *key_tag)
{
	if (sc->n == sc->cap) {
		size_t nc = sc->cap ? sc->cap * 2 : 16;
		show_table *v = realloc(sc->t, nc * sizeof *v);
		if (!v)
			return NULL;
		sc->t = v;
		sc->cap = nc;
	}
	show_table *t = &sc->t[sc->n++];
	*t = (show_table){.name = name, .key_tag = key_tag};
	return t;
}

/* This node's tables (or the one FROM names) and, but for SHOW
 * MEASUREMENTS, their columns (a table dropped meanwhile is left out). */
static int show_cat_local(ex *x, const iq_stmt *st, show_cat *sc)
{
	const char **names = NULL, **key_tags = NULL;
	size_t n = 0, cap = 64;
	int rc;
	if (st->table) {
		const char *kt = NULL;
		rc = tally_catalog_key_tag(x->db, st->table, &kt);
		if (rc == TALLY_ENOTFOUND)
			return 0;
		if (!rc && !show_cat_add(sc, st->table, kt))
			rc = -ENOMEM;
	} else {
		for (;;) {
			names = malloc(cap * sizeof *names);
			key_tags = malloc(cap * sizeof *key_tags);
			if (!names || !key_tags) {
				rc = -ENOMEM;
				break;
			}
			rc = tally_catalog_tables(x->db, names, key_tags, cap, &n);
			if (rc != TALLY_ETRUNC)
				break;
			cap = n + 64;
			free(names);
			free(key_tags);
		}
		for (size_t i = 0; i < n && !rc; i++)
			if (!show_cat_add(sc, names[i], key_tags[i]))
				rc = -ENOMEM;
		free(names);
		free(key_tags);
	}
	for (size_t i = 0; i < sc->n && !rc && st->kind != IQ_SHOW_MEASUREMENTS;) {
		rc = cols_get(x->db, sc->t[i].name, &sc->t[i].c);
		if (rc == TALLY_ENOTFOUND) { /* dropped meanwhile */
			memmove(&sc->t[i], &sc->t[i + 1], (sc->n - i - 1) * sizeof *sc->t);
			sc->n--;
			rc = 0;
		} else {
			i++;
		}
	}
	return rc == -ENOMEM ? ex_fail(x, "out of memory") : rc ? ex_engine(x, rc) : 0;
}

/* A column type's name (as tally_type_name spells it) back to the type. */
static enum tally_type type_named(const char *name)
{
	for (int t = TALLY_T_F64; t <= TALLY_T_TAG; t++)
		if (!strcmp(tally_type_name((enum tally_type)t), name))
			return (enum tally_type)t;
	return TALLY_T_NONE;
}

typedef struct show_u {
	show_cat *sc;
	const iq_stmt *st;
	size_t cols_cap;      /* of the last table's columns */
	char bad[IQ_ERR_MAX]; /* a row no node should send; "" */
} show_u;

/* A column at the end of c; with seen, unless c has it (the rows of a
 * table's second key tag repeat the columns of its first). */
static int cols_add(cols *c, size_t *cap, const char *name, enum tally_type type, int seen)
{
	for (size_t j = 0; seen && j < c->n; j++)
		if (!strcmp(c->name[j], name))
			return 0;
	if (c->n == *cap) {
		size_t nc = *cap ? *cap * 2 : 16;
		const char **nn = realloc(c->name, nc * sizeof *nn);
		if (nn)
			c->name = nn;
		enum tally_type *nt = realloc(c->type, nc * sizeof *nt);
		if (nt)
			c->type = nt;
		if (!nn || !nt)
			return -ENOMEM;
		*cap = nc;
	}
	if (!(c->name[c->n] = strdup(name)))
		return -ENOMEM;
	c->type[c->n++] = type;
	return 0;
}

/* One row of the union (sorted by table, key tag, column): a new table,
 * another key tag of the last one, and a column of it. -ENOMEM ends it. */
static int show_u_row(void *arg, const char *table, const char *key_tag, const char *column,
		      const char *type)
{
	show_u *u = arg;
	show_cat *sc = u->sc;
	if (u->st->table && strcmp(u->st->table, table))
		return 0; /* another table than FROM's */
	show_table *t = sc->n ? &sc->t[sc->n - 1] : NULL;
	if (!t || strcmp(t->name, table)) {
		char *name = strdup(table), *k = *key_tag ? strdup(key_tag) : NULL;
		if (!name || (*key_tag && !k) || !(t = show_cat_add(sc, name, k))) {
			free(name);
			free(k);
			return -ENOMEM;
		}
		u->cols_cap = 0;
	} else if (strcmp(key_tag, t->key_tag ? t->key_tag : "") && !t->key_tag2 &&
		   !(t->key_tag2 = strdup(key_tag))) {
		return -ENOMEM;
	}
	if (u->st->kind == IQ_SHOW_MEASUREMENTS)
		return 0;
	enum tally_type ty = type_named(type);
	if (ty == TALLY_T_NONE) {
		if (!u->bad[0])
			snprintf(u->bad, sizeof u->bad,
				 "a node listed column \"%s\" of \"%s\" with the unknown type "
				 "\"%s\"",
				 column, table, type);
		return 0;
	}
	return cols_add(&t->c, &u->cols_cap, column, ty, t->key_tag2 != NULL);
}

typedef struct named_col {
	const char *name;
	enum tally_type type;
} named_col;

static int cmp_named_col(const void *a, const void *b)
{
	return strcmp(((const named_col *)a)->name, ((const named_col *)b)->name);
}

/* Every node's catalog, their union (iq_src's catalog). A table two
 * nodes key by different tags has both (key_tag2) and its columns once
 * each, sorted by name again (the first type met). */
static int show_cat_union(ex *x, const iq_stmt *st, show_cat *sc)
{
	show_u u = {.sc = sc, .st = st};
	sc->owned = 1;
	int rc = x->src->catalog(x->src, show_u_row, &u, x->err);
	if (rc == TALLY_ENOTFOUND)
		rc = 0; /* no node holds a table */
	for (size_t i = 0; i < sc->n && !rc; i++) {
		cols *c = &sc->t[i].c;
		if (!sc->t[i].key_tag2 || c->n < 2)
			continue;
		named_col *v = malloc(c->n * sizeof *v);
		if (!v) {
			rc = -ENOMEM;
			break;
		}
		for (size_t j = 0; j < c->n; j++)
			v[j] = (named_col){c->name[j], c->type[j]};
		qsort(v, c->n, sizeof *v, cmp_named_col);
		for (size_t j = 0; j < c->n; j++) {
			c->name[j] = v[j].name;
			c->type[j] = v[j].type;
		}
		free(v);
	}
	if (rc == -ENOMEM)
		return ex_fail(x, "out of memory");
	if (rc)
		return ex_engine(x, rc);
	return u.bad[0] ? ex_fail(x, "%s", u.bad) : 0;
}

/* A SELECT's schema is the catalog a SHOW reads, of its one table: this
 * node's, or with peers the union of every node's, so that a measurement
 * or a field only another node holds yet is answered, not left out. */
static int exec_select(ex *x, const iq_stmt *st, iq_buf *b)
{
	if (!st->db && !x->prm->db)
		return ex_fail(x, "database name required");
	show_cat sc = {0};
	int rc = x->src ? show_cat_union(x, st, &sc) : show_cat_local(x, st, &sc);
	if (!rc && sc.n && sc.t[0].key_tag2)
		rc = ex_fail(x,
			     "measurement \"%s\" is keyed by \"%s\" on some nodes and by \"%s\" "
			     "on others: give it a table-keys entry on every node",
			     st->table, sc.t[0].key_tag ? sc.t[0].key_tag : "", sc.t[0].key_tag2);
	/* no node holds the measurement: no series, as InfluxDB */
	if (!rc && sc.n)
		rc = select_run(x, st, b, sc.t[0].key_tag ? sc.t[0].key_tag : "", &sc.t[0].c);
	show_cat_free(&sc);
	return rc;
}

static int cmp_cstr(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Whether a name passes WITH MEASUREMENT|KEY = name, =~ /re/, IN (...),
 * != name or !~ /re/. */
static int with_match(const iq_stmt *st, const char *name)
{
	int m = !st->with || !strcmp(st->with, name);
	if (st->has_with_re)
		m = regexec(&st->with_re, name, 0, NULL, 0) == 0;
	else if (st->n_with_in)
		for (unsigned i = 0; i < st->n_with_in; i++)
			m = i ? m || !strcmp(st->with_in[i], name) : !strcmp(st->with_in[i], name);
	return st->with_not ? !m : m;
}

static void put_key_value(rows *r, const char *table, const char *key_tag, const char *key)
{
	if (!iq_cond_match(r->st->where, key) || !row_begin(r, table))
		return;
	put_str(r->b, key_tag);
	iq_puts(r->b, ",");
	put_str(r->b, key);
	iq_puts(r->b, "]");
}

/* Every key of the table in the catalog, page by page, through each (0,
 * or -ENOMEM which ends it). */
static int catalog_each_key(ex *x, const char *table, int (*each)(void *arg, const char *key),
			    void *arg)
{
	enum { PAGE = 1024 };
	const char **keys = malloc(PAGE * sizeof *keys);
	if (!keys)
		return ex_fail(x, "out of memory");
	const char *after = NULL;
	int rc, oom = 0;
	for (;;) {
		size_t n = 0;
		rc = tally_catalog_keys(x->db, table, NULL, after, keys, PAGE, &n);
		if (rc && rc != TALLY_ETRUNC)
			break;
		size_t got = n < PAGE ? n : PAGE;
		for (size_t i = 0; i < got && !oom; i++)
			oom = each(arg, keys[i]) != 0;
		if (oom || rc != TALLY_ETRUNC || !got) {
			rc = 0;
			break;
		}
		after = keys[got - 1];
	}
	free(keys);
	if (oom)
		return ex_fail(x, "out of memory");
	return rc == TALLY_ENOTFOUND ? 0 : rc ? ex_engine(x, rc) : 0;
}

typedef struct key_out {
	rows *r;
	const char *table, *key_tag;
} key_out;

static int key_out_put(void *arg, const char *key)
{
	key_out *o = arg;
	put_key_value(o->r, o->table, o->key_tag, key);
	return 0;
}

/* The values of the key tag: the table's keys that the condition keeps,
 * page by page. */
static int show_key_values(ex *x, rows *r, const char *table, const char *key_tag)
{
	key_out o = {r, table, key_tag};
	return catalog_each_key(x, table, key_out_put, &o);
}

/* Into kp, the keys with events in [from, to) of any of the table's
 * numeric fields (from the rollups). */
static int keys_in_range(ex *x, const cols *c, const char *table, int64_t from, int64_t to,
			 key_pick *kp)
{
	for (size_t j = 0; j < c->n; j++) {
		if (c->type[j] == TALLY_T_TAG || c->type[j] == TALLY_T_STR)
			continue;
		int rc = ex_keys(x, table, c->name[j], from, to, key_pick_add, kp);
		if (rc)
			return rc == TALLY_ENOTFOUND ? 0 : ex_engine(x, rc);
	}
	keyset_sort(kp->ks);
	return 0;
}

/* With a time condition, as InfluxDB 1.x: the keys with events in the
 * range [from, to). */
static int show_key_values_in(ex *x, rows *r, const cols *c, const char *table, const char *key_tag,
			      int64_t from, int64_t to)
{
	keyset ks = {0};
	key_pick kp = {&ks, NULL, 0, NULL};
	int rc = keys_in_range(x, c, table, from, to, &kp);
	for (size_t k = 0; k < ks.n && !rc; k++)
		put_key_value(r, table, key_tag, ks.k[k]);
	keyset_free(&ks);
	return rc;
}

/* A tag and one of its values, from a key of several tags. */
typedef struct tag_value {
	char *tag, *value;
} tag_value;

static int cmp_tag_value(const void *a, const void *b)
{
	const tag_value *x = a, *y = b;
	int c = strcmp(x->tag, y->tag);
	return c ? c : strcmp(x->value, y->value);
}

/* The next tag name of a key of several tags at *p ("name=value" pairs
 * joined by ',', '\' escaping; engine/tagkey.h), unescaped into out
 * (room for the key's length); 0 at the key's end. */
static int next_key_tag(const char **p, char *out)
{
	const char *s = *p;
	if (!*s)
		return 0;
	size_t o = 0;
	int in_name = 1;
	for (; *s && *s != ','; s++) {
		if (*s == '\\' && s[1])
			s++;
		else if (*s == '=')
			in_name = 0; /* an unescaped '=' ends the name */
		else if (!in_name)
			continue;
		if (in_name)
			out[o++] = *s;
	}
	out[o] = 0;
	*p = *s ? s + 1 : s;
	return 1;
}

/* Into tv, each (tag, value) of key whose tag WITH KEY selects. */
static int key_tag_values(const iq_stmt *st, const char *key, tag_value **tv, size_t *n,
			  size_t *cap, tkbuf *tmp)
{
	char *name = malloc(strlen(key) + 1);
	if (!name)
		return -ENOMEM;
	int rc = 0;
	for (const char *p = key; !rc && next_key_tag(&p, name);) {
		if (!with_match(st, name))
			continue;
		if (tagkey_value(key, (uint32_t)strlen(key), name, tmp) < 0) {
			rc = -ENOMEM;
			break;
		}
		if (*n == *cap) {
			size_t nc = *cap ? *cap * 2 : 64;
			tag_value *v = realloc(*tv, nc * sizeof *v);
			if (!v) {
				rc = -ENOMEM;
				break;
			}
			*tv = v;
			*cap = nc;
		}
		tag_value *e = &(*tv)[*n];
		if (!(e->tag = strdup(name)) || !(e->value = strdup(tmp->p))) {
			free(e->tag);
			rc = -ENOMEM;
			break;
		}
		(*n)++;
	}
	free(name);
	return rc;
}

/* A table keyed by several tags (or all): each key tag WITH KEY selects
 * and its distinct values in the keys the condition keeps (of events in
 * the range when one is given; across nodes, at any time), sorted by tag
 * then value, as InfluxDB lists them. */
static int show_multi_values(ex *x, rows *r, const cols *c, const char *table)
{
	const iq_stmt *st = r->st;
	keyset ks = {0};
	tkbuf tmp = {0};
	key_pick kp = {&ks, st->where, 1, &tmp};
	int rc;
	if (st->has_from || st->has_to)
		rc = keys_in_range(x, c, table, st->from, st->to, &kp);
	else if (x->src)
		rc = keys_in_range(x, c, table, -IQ_ALL_TIME, IQ_ALL_TIME, &kp);
	else
		rc = catalog_each_key(x, table, key_pick_add, &kp);
	tag_value *tv = NULL;
	size_t n = 0, cap = 0;
	for (size_t k = 0; k < ks.n && !rc; k++)
		if (key_tag_values(st, ks.k[k], &tv, &n, &cap, &tmp))
			rc = ex_fail(x, "out of memory");
	if (n > 1)
		qsort(tv, n, sizeof *tv, cmp_tag_value);
	for (size_t i = 0; i < n; i++) {
		if (!rc && (!i || cmp_tag_value(&tv[i - 1], &tv[i])) && row_begin(r, table)) {
			put_str(r->b, tv[i].tag);
			iq_puts(r->b, ",");
			put_str(r->b, tv[i].value);
			iq_puts(r->b, "]");
		}
	}
	for (size_t i = 0; i < n; i++) {
		free(tv[i].tag);
		free(tv[i].value);
	}
	free(tv);
	tkbuf_free(&tmp);
	keyset_free(&ks);
	return rc;
}

/* WITH KEY selecting a tag tally keeps only as a column of the raw events:
 * its values are not in the keys, and listing them would scan every event. */
static int refuse_other_tags(ex *x, const iq_stmt *st, const cols *c, const char *table,
			     const char *key_tag)
{
	for (size_t j = 0; j < c->n; j++)
		if (c->type[j] == TALLY_T_TAG && with_match(st, c->name[j]))
			return ex_fail(
				x,
				"tally lists the values of \"%s\"'s key tag \"%s\" only, not "
				"of \"%s\"",
				table, key_tag ? key_tag : "", c->name[j]);
	return 0;
}

/* Splits a key tag spec ("camera", "camera+lane"; none for "*", whose tags
 * live in its keys) into tags[*nt...], in buf (a copy of it). */
static void key_tag_names(const char *key_tag, char *buf, const char **tags, size_t *nt)
{
	if (!key_tag || !*key_tag || !strcmp(key_tag, "*"))
		return;
	strcpy(buf, key_tag);
	for (char *p = buf;;) {
		tags[(*nt)++] = p;
		if (!(p = strchr(p, '+')))
			break;
		*p++ = 0;
	}
}

/* SHOW TAG KEYS of one table: its key tags (each of them when keyed by
 * camera+lane; with peers, those of every node's key tag) and its other
 * tags, sorted, each once. */
static int show_tag_keys(ex *x, rows *r, const show_table *t)
{
	size_t l1 = t->key_tag ? strlen(t->key_tag) + 1 : 1,
	       l2 = t->key_tag2 ? strlen(t->key_tag2) + 1 : 1;
	char *buf = malloc(l1 + l2);
	const char **tags = malloc((t->c.n + l1 + l2) * sizeof *tags);
	size_t nt = 0;
	if (!buf || !tags) {
		free(buf);
		free(tags);
		return ex_fail(x, "out of memory");
	}
	key_tag_names(t->key_tag, buf, tags, &nt);
	key_tag_names(t->key_tag2, buf + l1, tags, &nt);
	for (size_t j = 0; j < t->c.n; j++)
		if (t->c.type[j] == TALLY_T_TAG)
			tags[nt++] = t->c.name[j];
	if (nt > 1)
		qsort(tags, nt, sizeof *tags, cmp_cstr);
	for (size_t j = 0; j < nt; j++)
		if ((!j || strcmp(tags[j - 1], tags[j])) && row_begin(r, t->name)) {
			put_str(r->b, tags[j]);
			iq_puts(r->b, "]");
		}
	free(buf);
	free(tags);
	return 0;
}

/* SHOW TAG VALUES of one table. */
static int show_tag_values(ex *x, rows *r, const show_table *t)
{
	const iq_stmt *st = r->st;
	const char *kt = t->key_tag;
	int rc = 0;
	if (t->key_tag2)
		return ex_fail(x, "\"%s\" is keyed by \"%s\" on some nodes and by \"%s\" on others",
			       t->name, kt ? kt : "", t->key_tag2);
	if (kt && key_multi(kt)) {
		rc = check_cond_tags(x, t->name, kt, st->where);
		if (!rc)
			rc = refuse_other_tags(x, st, &t->c, t->name, kt);
		if (!rc)
			rc = show_multi_values(x, r, &t->c, t->name);
	} else if (kt && with_match(st, kt)) {
		rc = check_cond_tags(x, t->name, kt, st->where);
		if (!rc && (st->has_from || st->has_to))
			rc = show_key_values_in(x, r, &t->c, t->name, kt, st->from, st->to);
		else if (!rc && x->src)
			/* The catalog says which keys a node had: across
			 * nodes, the keys with events at any time (1678 to
			 * 2261). */
			rc = show_key_values_in(x, r, &t->c, t->name, kt, -IQ_ALL_TIME,
						IQ_ALL_TIME);
		else if (!rc)
			rc = show_key_values(x, r, t->name, kt);
	} else {
		rc = refuse_other_tags(x, st, &t->c, t->name, kt);
	}
	return rc;
}

static int exec_show(ex *x, const iq_stmt *st, iq_buf *b)
{
	rows r = {.b = b, .st = st};
	if (st->kind == IQ_SHOW_DATABASES) {
		/* One namespace, answered under any name: see docs/http.md. */
		r.columns = "[\"name\"]";
		if (row_begin(&r, "databases"))
			iq_puts(b, "\"tally\"]");
		rows_end(&r);
		return 0;
	}
	if (!st->db && !x->prm->db)
		return ex_fail(x, "database name required");
	if (st->kind == IQ_SHOW_RETENTION_POLICIES) {
		r.columns = "[\"name\",\"duration\",\"shardGroupDuration\",\"replicaN\","
			    "\"default\"]";
		if (row_begin(&r, NULL))
			iq_puts(b, "\"autogen\",\"0s\",\"168h0m0s\",1,true]");
		rows_end(&r);
		return 0;
	}
	show_cat sc = {0};
	int rc = x->src ? show_cat_union(x, st, &sc) : show_cat_local(x, st, &sc);
	r.columns = st->kind == IQ_SHOW_MEASUREMENTS ? "[\"name\"]"
		    : st->kind == IQ_SHOW_TAG_KEYS   ? "[\"tagKey\"]"
		    : st->kind == IQ_SHOW_FIELD_KEYS ? "[\"fieldKey\",\"fieldType\"]"
						     : "[\"key\",\"value\"]";
	for (size_t i = 0; i < sc.n && !rc; i++) {
		const show_table *t = &sc.t[i];
		if (st->kind == IQ_SHOW_MEASUREMENTS) {
			if (with_match(st, t->name) && row_begin(&r, "measurements")) {
				put_str(b, t->name);
				iq_puts(b, "]");
			}
			continue;
		}
		if (st->kind == IQ_SHOW_TAG_KEYS) {
			rc = show_tag_keys(x, &r, t);
		} else if (st->kind == IQ_SHOW_FIELD_KEYS) {
			for (size_t j = 0; j < t->c.n; j++)
				if (t->c.type[j] != TALLY_T_TAG && row_begin(&r, t->name)) {
					put_str(b, t->c.name[j]);
					iq_puts(b, ",");
					put_str(b, tally_type_name(t->c.type[j]));
					iq_puts(b, "]");
				}
		} else {
			rc = show_tag_values(x, &r, t);
		}
		rows_end_series(&r);
	}
	show_cat_free(&sc);
	if (!rc)
		rows_end(&r);
	return rc;
}

/* ---------------------------------------------------------------- serve */

static int exec_stmt(ex *x, const iq_stmt *st, iq_buf *b)
{
	return st->kind == IQ_SELECT ? exec_select(x, st, b) : exec_show(x, st, b);
}

int iq_serve(tally_db *db, const char *q, size_t n, const iq_params *p, iq_buf *out)
{
	char err[IQ_ERR_MAX];
	iq_query qq;
	iq_buf b = {0};
	int status = 200;
	if (iq_parse(q, n, p->now, &qq, err)) {
		iq_puts(&b, "{\"error\":");
		put_str(&b, err);
		iq_puts(&b, "}");
		status = 400;
	} else {
		ex x = {.db = db, .src = p->src, .prm = p, .err = err};
		iq_puts(&b, "{\"results\":[");
		int failed = 0;
		for (unsigned i = 0; i < qq.n; i++) {
			iq_puts(&b, i ? ",{\"statement_id\":" : "{\"statement_id\":");
			put_i64(&b, i);
			size_t mark = b.n;
			if (failed) {
				iq_puts(&b, ",\"error\":\"not executed\"");
			} else if (exec_stmt(&x, &qq.st[i], &b)) {
				b.n = mark; /* drop a half-written answer */
				iq_puts(&b, ",\"error\":");
				put_str(&b, err);
				failed = 1;
			} else {
				/* never silent: a missing node (partial=mark,
				 * docs/cluster.md), a window kept as a sketch */
				char m[2][IQ_ERR_MAX + 32];
				int nm = 0;
				if (x.src && x.src->missing[0])
					snprintf(m[nm++], sizeof m[0], "partial: %s",
						 x.src->missing);
				if (x.dist_error > 0)
					snprintf(m[nm++], sizeof m[0],
						 "approximate: a window past its bound on distinct "
						 "values is a sketch, relative error %g",
						 x.dist_error);
				for (int k = 0; k < nm; k++) {
					iq_puts(&b, k ? ",{" : ",\"messages\":[{");
					iq_puts(&b, "\"level\":\"warning\",\"text\":");
					put_str(&b, m[k]);
					iq_puts(&b, k == nm - 1 ? "}]" : "}");
				}
			}
			if (x.src)
				x.src->missing[0] = 0;
			x.dist_error = 0;
			iq_puts(&b, "}");
		}
		iq_puts(&b, "]}");
		free(x.bk);
	}
	iq_query_free(&qq);
	if (p->pretty && !b.oom) {
		iq_pretty(b.p, b.n, out);
		free(b.p);
	} else {
		*out = b;
	}
	iq_put(out, "\n", 1);
	return out->oom ? 500 : status;
}

/* ---------------------------------------------------------------- pretty */

static void indent(iq_buf *out, unsigned depth)
{
	iq_put(out, "\n", 1);
	for (unsigned i = 0; i < depth; i++)
		iq_put(out, "    ", 4);
}

void iq_pretty(const char *s, size_t n, iq_buf *out)
{
	unsigned depth = 0;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (c == '"') {
			size_t j = i + 1;
			while (j < n && s[j] != '"')
				j += s[j] == '\\' ? 2 : 1;
			iq_put(out, s + i, j + 1 - i);
			i = j;
		} else if (c == '{' || c == '[') {
			iq_put(out, &c, 1);
			if (i + 1 < n && (s[i + 1] == '}' || s[i + 1] == ']')) {
				iq_put(out, s + ++i, 1);
				continue;
			}
			indent(out, ++depth);
		} else if (c == '}' || c == ']') {
			indent(out, --depth);
			iq_put(out, &c, 1);
		} else if (c == ',') {
			iq_put(out, ",", 1);
			indent(out, depth);
		} else if (c == ':') {
			iq_put(out, ": ", 2);
		} else {
			iq_put(out, &c, 1);
		}
	}
}

/* ---------------------------------------------------------------- HTTP */

/* A parameter from the form body, else the query string; -1: absent, -2:
 * malformed. */
static long param(const char *query, size_t qn, const char *body, size_t bn, const char *name,
		  char *out, size_t cap)
{
	long n = body ? http_query_get((http_str){body, bn}, name, out, cap) : -1;
	return n != -1 ? n : http_query_get((http_str){query, qn}, name, out, cap);
}

static int http_fail(const char *msg, char **out, size_t *len)
{
	iq_buf b = {0};
	iq_puts(&b, "{\"error\":");
	put_str(&b, msg);
	iq_puts(&b, "}\n");
	*out = b.p;
	*len = b.n;
	return b.oom ? 500 : 400;
}

int influxq_http(tally_db *db, const char *query, size_t query_n, const char *body, size_t body_n,
		 int64_t now, char **out, size_t *len)
{
	return influxq_http_src(db, NULL, query, query_n, body, body_n, now, out, len);
}

int influxq_http_src(tally_db *db, iq_src *src, const char *query, size_t query_n, const char *body,
		     size_t body_n, int64_t now, char **out, size_t *len)
{
	char db_name[256], epoch[8], pretty[8], partial[8];
	iq_params p = {.now = now, .src = src};
	/* A form body, or none: InfluxQL sent raw is not a form. */
	if (body_n == 0 || !memchr(body, '=', body_n))
		body = NULL;
	long n = param(query, query_n, body, body_n, "db", db_name, sizeof db_name);
	if (n == -2)
		return http_fail("db: malformed or longer than 255 bytes", out, len);
	p.db = n >= 0 ? db_name : NULL;
	n = param(query, query_n, body, body_n, "epoch", epoch, sizeof epoch);
	if (n >= 0 && (p.epoch = iq_epoch_unit(epoch)) < 0)
		return http_fail("epoch must be one of ns, u, \xc2\xb5, ms, s, m, h", out, len);
	if (n == -2)
		return http_fail("epoch: malformed", out, len);
	n = param(query, query_n, body, body_n, "pretty", pretty, sizeof pretty);
	p.pretty = n > 0 && !strcmp(pretty, "true");
	n = param(query, query_n, body, body_n, "partial", partial, sizeof partial);
	if (n == -2 || (n >= 0 && strcmp(partial, "fail") && strcmp(partial, "mark")))
		return http_fail("partial must be fail or mark", out, len);
	if (src)
		src->mark = n >= 0 && !strcmp(partial, "mark");
	size_t cap = query_n + body_n + 1;
	char *q = malloc(cap);
	if (!q)
		return http_fail("out of memory", out, len);
	n = param(query, query_n, body, body_n, "q", q, cap);
	int st;
	if (n == -2) {
		st = http_fail("q: malformed %-escape", out, len);
	} else if (n <= 0) {
		st = http_fail("missing required parameter \"q\"", out, len);
	} else {
		iq_buf b = {0};
		st = iq_serve(db, q, (size_t)n, &p, &b);
		*out = b.p;
		*len = b.n;
	}
	free(q);
	return st;
}
