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
 * Memtables keep no distributions: their rows are the values. A flush
 * builds each partition's finest windows from the sorted rows it writes
 * (one pass, a few values per window) and the coarser levels' by adding
 * those up, and parts store every level as rollup blocks of the dist
 * aggregate kind, whose payload begins with the basic kind's
 * (engine/aggkind.c), so
 * count/sum/min/max queries read them unchanged.
 *
 * A window whose distinct values would pass its field's bound (the
 * mark's third part, "traffic.speed:0.1:4096"; DIST_MAX_DEFAULT) falls
 * back to a sketch: the same sorted (key, count) lists, but a key is a
 * logarithmic bucket of the value (dist_sketch_key), so any value is
 * known within a relative DIST_SKETCH_ALPHA and a window holds at most
 * a few thousand keys whatever its values. Counts stay exact, so a
 * sketch's quantile is the bucket of the exact rank; merging a sketch
 * with an exact window maps the exact one's values to their buckets and
 * gives a sketch. Every answer that touched one says so (tally_dist_error).
 */
#ifndef TALLY_DIST_H
#define TALLY_DIST_H

#include <stddef.h>
#include <stdint.h>

#include "aggkind.h"

#define DIST_EXP_MIN (-9)
#define DIST_EXP_MAX 9
#define DIST_IDX_MAX (INT64_C(1) << 62) /* |value / resolution| counted at most here */
#define DIST_MIXED   INT32_MIN          /* exp of a window that merged two resolutions */
/* Distinct values a window keeps exactly unless its mark says otherwise,
 * and the most a mark may set: a day of speeds at 0.1 km/h has under
 * 3,000 distinct values, so traffic stays exact, while a field marked at
 * too fine a resolution costs a window at most this many pairs. */
#define DIST_MAX_DEFAULT 4096u
#define DIST_MAX_LIMIT   (1u << 24)
/* A sketch's relative error bound, alpha = 1/128: its buckets are
 * (g^(k-2), g^(k-1)] in units of the resolution, g = (1 + alpha) / (1 -
 * alpha) = 129/127, each answered by the value within alpha of all of
 * it. The format records which windows are sketches, not alpha: a new
 * alpha needs a new aggregate kind. */
#define DIST_SKETCH_ALPHA (1.0 / 128)

typedef struct dstate {
	ragg a;              /* count, sum, min, max of the same values */
	int32_t exp;         /* resolution 10^exp, or DIST_MIXED (no distribution) */
	uint32_t n;          /* distinct values (sketch: buckets) */
	uint32_t cap;        /* 0: v and c are borrowed (a decoded block's scratch) */
	uint32_t max : 31;   /* more distinct values than this: a sketch (0: no bound) */
	uint32_t sketch : 1; /* 1: v holds dist_sketch_key buckets */
	int64_t *v;          /* ascending, in units of the resolution (or buckets) */
	uint64_t *c;         /* their counts, each > 0 */
} dstate;

typedef struct dbucket {
	int64_t start;
	dstate d;
} dbucket;

extern const agg_kind agg_dist;    /* AGG_DIST_BITS: exact or sketch windows */
extern const agg_kind agg_dist_v2; /* AGG_DIST_SK: the same, read only */
extern const agg_kind agg_dist_v1; /* AGG_DIST: exact windows, read only */

/* A value in units of 10^exp (rounded to nearest; clamped to ±DIST_IDX_MAX)
 * and back. */
int64_t dist_index(double v, int32_t exp);
double dist_value(int64_t idx, int32_t exp);
/* out[i] = dist_index(v[i], exp) for n values (a query's raw values,
 * converted in one call rather than one call each), and the least and
 * greatest of them in *lo and *hi (n > 0; none set for n = 0). */
void dist_index_n(const double *v, size_t n, int32_t exp, int64_t *out, int64_t *lo, int64_t *hi);
/* The sketch bucket of a value in units of the resolution (monotone: 0
 * for 0, positive buckets for positive values, negative for negative),
 * and the value a bucket answers with, in units of 10^exp. */
int64_t dist_sketch_key(int64_t idx);
double dist_sketch_value(int64_t key, int32_t exp);

/* Sorts n (value, count) pairs by value and adds up equal values, in
 * place; *k gets how many distinct values remain. 0 or -ENOMEM. */
int dist_combine(int64_t *v, uint64_t *c, size_t n, size_t *k);

/* dst += src, exactly (a sketch if either is one or the result passes
 * dst's bound); 0 or -ENOMEM (dst unchanged). */
int dstate_merge(dstate *dst, const dstate *src);
/* Merges the ascending (value, count) lists a and b into v and c (room
 * for na + nb pairs), equal keys added up: how many pairs. When either
 * side is a sketch (ska, skb) the result is one, the exact side's values
 * put into its buckets. */
uint32_t dist_merge_pairs(const int64_t *va, const uint64_t *ca, uint32_t na, int ska,
			  const int64_t *vb, const uint64_t *cb, uint32_t nb, int skb, int64_t *v,
			  uint64_t *c);
void dstate_release(dstate *d);

/* ---------------------------------------------------------------- flushes */

/* The finest level's windows of one (series, field, partition) in a
 * flush, ascending by start; their pairs lie in v and c. */
typedef struct dcol {
	dbucket *w;
	uint32_t n;
	int32_t exp;
	uint32_t max; /* the field's bound on a window's distinct values */
	int64_t *v;
	uint64_t *c;
	/* dcol_level's scratch, kept across levels: the pairs of one level's
	 * windows (never more than the finest windows hold, as each of those
	 * lies in one window of any level), and a count per unit of the
	 * resolution for adding them up, all zero between uses */
	int64_t *lv_v;
	uint64_t *lv_c;
	uint64_t *cnt;
	size_t cnt_cap;
} dcol;

/* Builds the windows of dc (exp and max set, nothing else) from n values
 * (ts[i], v[i]), ts ascending: per window its values at the resolution,
 * counted, a sketch past max. 0 or -ENOMEM; dcol_clear either way. */
int dcol_from_rows(dcol *dc, const levels *L, const int64_t *ts, const double *v, size_t n);
void dcol_clear(dcol *dc);

/* The windows of level l with start in [a, b): the basic aggregates from
 * lv (the memtable's buckets of that level, which have exactly these
 * windows) and the distributions added up from dc's finest windows. *out
 * grows as needed (*cap buckets); the states borrow their arrays from dc,
 * valid until its next dcol_level or dcol_clear (dist_release_buckets
 * leaves them be). */
int dcol_level(dcol *dc, const rlevel *lv, const levels *L, unsigned l, int64_t a, int64_t b,
	       dbucket **out, uint32_t *n, uint32_t *cap);
void dist_release_buckets(dbucket *b, uint32_t n);

/* 1 when parts that keep their raw events write level l of a
 * distribution column as a basic block (kind 1), its distributions
 * derived from the raw columns at query time: the finest level, when
 * there is a coarser one (whose distribution block says the column is a
 * distribution). Such a part's finest distributions are written when
 * its raw events go: retention, tiering (merge_materialise). */
static inline int dist_level_derived(const levels *L, unsigned l)
{
	return l == 0 && L->n > 1;
}

/* ---------------------------------------------------------------- config */

typedef struct dist_conf dist_conf;

/* Parses "table.field:resolution[:max][,...]" (resolution a power of
 * ten from 1e-9 to 1e9, as 0.1, 1, 100 or 1e-3; max the distinct values
 * a window keeps exactly, 1 to DIST_MAX_LIMIT, default
 * DIST_MAX_DEFAULT); NULL or "" gives NULL. */
int dist_conf_parse(const char *spec, dist_conf **out);
void dist_conf_free(dist_conf *c);
/* 1, *exp and *max when (table, field) is marked. */
int dist_conf_find(const dist_conf *c, const char *table, uint32_t tl, const char *field,
		   uint32_t fl, int32_t *exp, uint32_t *max);

#endif
