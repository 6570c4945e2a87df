/*
 * distcmd.c — the #!dist command: a distribution of one key's field over
 * [from, to) and the statistics asked of it, as a two-column table.
 *
 * The one idea: every statistic is a question to one tally_dist the
 * query built once, so asking for V85, the median, a violation count and
 * a histogram costs one query; with no statistic named the answer is the
 * count, the median and V85. An answer that used a window kept as a
 * sketch says so in an "error" row after the count: the relative error
 * bound of its values (absent: exact). Across nodes (wire/fandist.c) a
 * node answers "pairs" instead, its distribution as (value, count)
 * pairs, and the asking node formats the merged one here (dist_format);
 * "pairs step=STEP" gives every window's pairs in one answer, so that a
 * stepped dist across nodes costs each node one round trip.
 */
#include "distcmd.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "distpairs.h"
#include "numfmt.h"
#include "series.h"

typedef struct out {
	char *p;
	size_t n, cap;
	size_t rows;
	int oom;
} out;

__attribute__((format(printf, 2, 3))) static void put(out *o, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int k = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (o->oom || k < 0)
		return;
	if (o->n + (size_t)k + 1 > o->cap) {
		size_t nc = (o->cap ? o->cap * 2 : 256) + (size_t)k;
		char *np = realloc(o->p, nc);
		if (!np) {
			o->oom = 1;
			return;
		}
		o->p = np;
		o->cap = nc;
	}
	va_start(ap, fmt);
	vsnprintf(o->p + o->n, o->cap - o->n, fmt, ap);
	va_end(ap);
	o->n += (size_t)k;
}

static void row_u64(out *o, const char *name, uint64_t v)
{
	put(o, "%s\t%llu\n", name, (unsigned long long)v);
	o->rows++;
}

static int row_quantile(out *o, const tally_dist *d, const char *name, double q)
{
	double v;
	char num[32];
	int rc = tally_dist_quantile(d, q, &v);
	if (rc == TALLY_ENOTFOUND) {
		put(o, "%s\t\n", name); /* no values: an empty cell, like an empty min */
	} else if (rc) {
		return rc;
	} else {
		cmd_format_double(v, num);
		put(o, "%s\t%s\n", name, num);
	}
	o->rows++;
	return 0;
}

/* The statistics of r, each a row. */
static int put_stats(out *o, const tally_dist *d, const cmd_req *r)
{
	int rc = 0;
	put(o, "stat\tvalue\n");
	row_u64(o, "count", tally_dist_count(d));
	if (tally_dist_error(d) > 0) {
		char num[32];
		cmd_format_double(tally_dist_error(d), num);
		put(o, "error\t%s\n", num);
		o->rows++;
	}
	if (!r->n_stats) {
		if (!(rc = row_quantile(o, d, "q=0.5", 0.5)))
			rc = row_quantile(o, d, "q=0.85", 0.85);
	}
	for (unsigned i = 0; i < r->n_stats && !rc; i++) {
		const char *a = r->stats[i];
		double v, edges[DIST_HIST_EDGES_MAX];
		if (!strncmp(a, "q=", 2)) {
			cmd_dist_num(a + 2, &v);
			rc = row_quantile(o, d, a, v);
		} else if (!strncmp(a, "above=", 6)) {
			cmd_dist_num(a + 6, &v);
			row_u64(o, a, tally_dist_count_above(d, v));
		} else if (!strncmp(a, "below=", 6)) {
			cmd_dist_num(a + 6, &v);
			row_u64(o, a, tally_dist_count_below(d, v));
		} else {
			int n = cmd_dist_edges(a + 5, edges);
			uint64_t counts[DIST_HIST_EDGES_MAX];
			rc = tally_dist_histogram(d, edges, (size_t)n, counts);
			for (int b = 0; b + 1 < n && !rc; b++) {
				char x[32], y[32];
				cmd_format_double(edges[b], x);
				cmd_format_double(edges[b + 1], y);
				put(o, "[%s,%s)\t%llu\n", x, y, (unsigned long long)counts[b]);
				o->rows++;
			}
		}
	}
	return rc;
}

/* The partial-distribution form ("pairs"): a node's part of a query
 * across nodes, which the asking node merges exactly (wire/fandist.c);
 * each row after the cell start when there is one (a window's). */
static void put_pairs(out *o, const char *start, const tally_dist *d)
{
	int32_t exp;
	int sketch;
	uint32_t n;
	const int64_t *v;
	const uint64_t *c;
	dist_pairs(d, &exp, &sketch, &n, &v, &c);
	for (uint32_t i = 0; i < n; i++, o->rows++)
		put(o, "%s%s%d\t%s\t%lld\t%llu\n", start ? start : "", start ? "\t" : "", (int)exp,
		    sketch ? "sketch" : "exact", (long long)v[i], (unsigned long long)c[i]);
}

static int is_pairs(const cmd_req *r)
{
	return r->n_stats == 1 && !strcmp(r->stats[0], "pairs");
}

static void put_end(out *o, const char *partial)
{
	if (partial)
		put(o, "END %zu PARTIAL %s\n", o->rows, partial);
	else
		put(o, "END %zu\n", o->rows);
}

/* o's text as the answer, or its failure (rc, or out of memory). */
static int take(out *o, int rc, char **text, size_t *len)
{
	if (!rc && o->oom)
		rc = -ENOMEM;
	if (rc) {
		free(o->p);
		return rc;
	}
	*text = o->p;
	*len = o->n;
	return 0;
}

int dist_format(const tally_dist *d, const cmd_req *r, const char *partial, char **text,
		size_t *len)
{
	int rc = 0;
	out o = {0};
	if (is_pairs(r)) {
		put(&o, "exp\tkind\tunits\tcount\n");
		put_pairs(&o, NULL, d);
	} else {
		rc = put_stats(&o, d, r);
	}
	put_end(&o, partial);
	return take(&o, rc, text, len);
}

/* "pairs step=STEP": every window's pairs after its start, one query a
 * window (whole windows from the rollups, raw events at the cut edges),
 * as /api/v1/dist's windows. */
static int reply_windows(tally_db *db, const cmd_req *r, const dist_limits *lim, char **text,
			 size_t *len)
{
	out o = {0};
	if (r->step > SERIES_STEP_MAX) { /* series_window_start's bound */
		put(&o, "ERR line %llu: dist: step: wider than %lld ns (about 834 days)\n",
		    (unsigned long long)lim->line, (long long)SERIES_STEP_MAX);
		return take(&o, 0, text, len);
	}
	int64_t ws = series_window_start(r->from, r->step,
					 r->has_origin ? r->origin : lim->align_offset);
	if (((uint64_t)r->to - (uint64_t)ws - 1) / (uint64_t)r->step >= DIST_WINDOWS_MAX) {
		put(&o,
		    "ERR line %llu: dist: more than %d windows of step from from to to "
		    "(each is a distribution query): widen the step or narrow the range\n",
		    (unsigned long long)lim->line, DIST_WINDOWS_MAX);
		return take(&o, 0, text, len);
	}
	put(&o, "start\texp\tkind\tunits\tcount\n");
	int rc = 0;
	while (ws < r->to && !rc && !o.oom) {
		int64_t lo = ws < r->from ? r->from : ws;
		int64_t hi =
			(uint64_t)r->to - (uint64_t)ws <= (uint64_t)r->step ? r->to : ws + r->step;
		tally_dist *d;
		if ((rc = tally_query_dist(db, r->table, r->field, r->key, lo, hi, &d)))
			break;
		char t[48];
		cmd_format_time(lo, t);
		put_pairs(&o, t, d);
		tally_dist_free(d);
		if (lim->max_bytes && o.n > lim->max_bytes) {
			o.n = 0;
			put(&o,
			    "ERR line %llu: dist: this node's part is longer than the fan-out "
			    "bound of %zu bytes (fanout-max-bytes); ask for a narrower range\n",
			    (unsigned long long)lim->line, lim->max_bytes);
			return take(&o, 0, text, len);
		}
		ws = hi;
	}
	put_end(&o, NULL);
	return take(&o, rc, text, len);
}

int dist_reply(tally_db *db, const cmd_req *r, const dist_limits *lim, char **text, size_t *len)
{
	if (r->step)
		return reply_windows(db, r, lim, text, len);
	tally_dist *d;
	int rc = tally_query_dist(db, r->table, r->field, r->key, r->from, r->to, &d);
	if (rc)
		return rc;
	rc = dist_format(d, r, NULL, text, len);
	tally_dist_free(d);
	return rc;
}
