/*
 * dist.h — exact distributions of marked fields (internal).
 *
 * A table may mark numeric fields as distributions (tally_options.
 * distributions, "traffic.speed:0.1"): per window, besides count, sum,
 * min and max, the count of every distinct value at the field's
 * resolution (a power of ten). Values are kept as integers in units of
 * the resolution (57.3 at 0.1 is 573), sorted, each with its count, so
 * two windows merge exactly by merging two sorted lists, and a value
 * comes back as the very double its decimal spelling parses to (573 / 10).
 *
 * Memtables keep the distribution of the finest level only (one sorted
 * insert per value); flushes build the coarser levels' by merging, and
 * parts store every level as rollup blocks of the dist aggregate kind,
 * whose payload begins with the basic kind's (engine/aggkind.c), so
 * count/sum/min/max queries read them unchanged.
 */
#ifndef TALLY_DIST_H
#define TALLY_DIST_H

#include <stdint.h>

#include "aggkind.h"

#define DIST_EXP_MIN (-9)
#define DIST_EXP_MAX 9
#define DIST_IDX_MAX (INT64_C(1) << 62) /* |value / resolution| counted at most here */
#define DIST_MIXED   INT32_MIN          /* exp of a window that merged two resolutions */

typedef struct dstate {
	ragg a;          /* count, sum, min, max of the same values */
	int32_t exp;     /* resolution 10^exp, or DIST_MIXED (no distribution) */
	uint32_t n;      /* distinct values */
	uint32_t cap;    /* 0: v and c are borrowed (a decoded block's scratch) */
	uint32_t pooled; /* 1: v and c lie in one block of a memtable's pool */
	int64_t *v;      /* ascending, in units of the resolution */
	uint64_t *c;     /* their counts, each > 0 */
} dstate;

typedef struct dbucket {
	int64_t start;
	dstate d;
} dbucket;

extern const agg_kind agg_dist;

/* A value in units of 10^exp (rounded to nearest; clamped to ±DIST_IDX_MAX)
 * and back. */
int64_t dist_index(double v, int32_t exp);
double dist_value(int64_t idx, int32_t exp);

/* Sorts n (value, count) pairs by value and adds up equal values, in
 * place; *k gets how many distinct values remain. 0 or -ENOMEM. */
int dist_combine(int64_t *v, uint64_t *c, size_t n, size_t *k);

/* dst += src, exactly; 0 or -ENOMEM (dst unchanged). */
int dstate_merge(dstate *dst, const dstate *src);
void dstate_release(dstate *d);

/* ---------------------------------------------------------------- memtable */

/* The finest level's windows of one (series, field), ascending by start. */
typedef struct dcol {
	dbucket *w;
	uint32_t n, cap, last;
	int32_t exp;
} dcol;

/* Adds n values (ts[i], v[i]), arrays from the memtable's pool (its
 * arena: fresh pages cost a fault each on first touch, and arena blocks
 * are recycled across flushes). 0 or -ENOMEM (values before the failing
 * one may be added: the caller fails the shard, as for rollups). */
int dcol_add_run(dcol *dc, const levels *L, const int64_t *ts, const double *v, uint32_t n,
		 rpool *pl);
/* Frees dc itself; its arrays go with the pool's arena. */
void dcol_free(dcol *dc);

/* The windows of level l with start in [a, b): the basic aggregates from
 * lv (that level's buckets, which have exactly these windows) and the
 * distributions merged from dc's finest windows. *out grows as needed
 * (*cap buckets); the states own their arrays: dist_release_buckets. */
int dcol_level(const dcol *dc, const rlevel *lv, const levels *L, unsigned l, int64_t a, int64_t b,
	       dbucket **out, uint32_t *n, uint32_t *cap);
void dist_release_buckets(dbucket *b, uint32_t n);

/* ---------------------------------------------------------------- config */

typedef struct dist_conf dist_conf;

/* Parses "table.field:resolution[,...]" (resolution a power of ten from
 * 1e-9 to 1e9, as 0.1, 1, 100 or 1e-3); NULL or "" gives NULL. */
int dist_conf_parse(const char *spec, dist_conf **out);
void dist_conf_free(dist_conf *c);
/* 1 and *exp when (table, field) is marked. */
int dist_conf_find(const dist_conf *c, const char *table, uint32_t tl, const char *field,
		   uint32_t fl, int32_t *exp);

#endif
