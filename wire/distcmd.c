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
 * pairs, and the asking node formats the merged one here (dist_format).
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
 * across nodes, which the asking node merges exactly (wire/fandist.c). */
static void put_pairs(out *o, const tally_dist *d)
{
	int32_t exp;
	int sketch;
	uint32_t n;
	const int64_t *v;
	const uint64_t *c;
	dist_pairs(d, &exp, &sketch, &n, &v, &c);
	put(o, "exp\tkind\tunits\tcount\n");
	for (uint32_t i = 0; i < n; i++, o->rows++)
		put(o, "%d\t%s\t%lld\t%llu\n", (int)exp, sketch ? "sketch" : "exact",
		    (long long)v[i], (unsigned long long)c[i]);
}

int dist_format(const tally_dist *d, const cmd_req *r, const char *partial, char **text,
		size_t *len)
{
	int rc = 0;
	out o = {0};
	if (r->n_stats == 1 && !strcmp(r->stats[0], "pairs"))
		put_pairs(&o, d);
	else
		rc = put_stats(&o, d, r);
	if (partial)
		put(&o, "END %zu PARTIAL %s\n", o.rows, partial);
	else
		put(&o, "END %zu\n", o.rows);
	if (!rc && o.oom)
		rc = -ENOMEM;
	if (rc) {
		free(o.p);
		return rc;
	}
	*text = o.p;
	*len = o.n;
	return 0;
}

int dist_reply(tally_db *db, const cmd_req *r, char **text, size_t *len)
{
	tally_dist *d;
	int rc = tally_query_dist(db, r->table, r->field, r->key, r->from, r->to, &d);
	if (rc)
		return rc;
	rc = dist_format(d, r, NULL, text, len);
	tally_dist_free(d);
	return rc;
}
