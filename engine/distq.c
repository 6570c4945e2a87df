/*
 * distq.c — distribution queries: quantiles, threshold counts and
 * histograms of a marked field over any [from, to).
 *
 * The one idea is the exact aggregate's tiling (docs/architecture.md,
 * "Read path"): [from, to) is covered by the coarsest whole windows that
 * fit, then finer ones at the edges, and raw events below the finest
 * level; every window's distribution is a sorted list of (value, count)
 * pairs at the field's resolution, so the answer is their exact sum, and
 * a quantile is a walk over it. Memtables keep only the finest windows;
 * parts keep every level. A window kept as a sketch (engine/dist.h) turns
 * the sum into a sketch: the pairs gathered so far, and every later
 * value, count in their buckets, and the answer says it is within
 * DIST_SKETCH_ALPHA (tally_dist_error); with no sketch it is exact.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "db.h"
#include "dcount.h"
#include "dist.h"
#include "distpairs.h"
#include "err.h"
#include "flush.h"
#include "mem.h"
#include "partset.h"
#include "retention.h"
#include "shard.h"
#include "tagkey.h"

struct tally_dist {
	uint64_t count;
	int32_t exp;
	int sketch; /* 1: v holds sketch buckets (dist_sketch_key) */
	uint32_t n;
	int64_t *v; /* ascending, in units of the resolution */
	uint64_t *c;
	uint64_t *cum; /* cum[i]: counts of v[0..i] */
};

typedef struct dacc {
	int64_t *v;
	uint64_t *c;
	size_t n, cap;
	int32_t exp;
	int sketch; /* 1: v holds buckets, and every pair added goes in as one */
	/* exact values lying close together count straight into the
	 * counting array (dcount.h; no slots: pairs only) */
	dcount dc;
	int no_dense; /* the array went: pairs from then on */
	int rc;
	const char *what; /* for the message of a window without a distribution */
	part_scratch *ps;
	uint8_t *buf;
	size_t cap_buf;
	/* the block buf holds, decoded: a range's two edges read the same
	 * finest-level block, which is most of a query's decoding */
	const part *bp;
	const part_key *bk;
	uint32_t bnum, bn;
	unsigned blevel;
	const agg_kind *bkind;
} dacc;

static void acc_pair(dacc *a, int64_t v, uint64_t c)
{
	if (a->n == a->cap) {
		size_t nc = a->cap ? a->cap * 2 : 1024;
		int64_t *nv = mem_realloc(a->v, nc * sizeof *nv);
		if (nv)
			a->v = nv;
		uint64_t *ncnt = nv ? mem_realloc(a->c, nc * sizeof *ncnt) : NULL;
		if (!ncnt) {
			a->rc = err_set(-ENOMEM, "out of memory");
			return;
		}
		a->c = ncnt;
		a->cap = nc;
	}
	a->v[a->n] = v;
	a->c[a->n++] = c;
}

/* The most slots the counting array takes (512 KiB): speeds at 0.1 km/h
 * need a few thousand; a field whose values spread wider is summed as
 * pairs, sorted once at the end. */
#define DENSE_MAX (UINT64_C(1) << 16)

/* The counting array's values become pairs, and it goes: a sketch, or
 * values too far apart. */
static void dense_to_pairs(dacc *a)
{
	size_t w = a->dc.umin <= a->dc.umax ? (size_t)(a->dc.umax - a->dc.umin) + 1 : 0;
	int64_t *v = w ? mem_alloc(w * sizeof *v) : NULL;
	uint64_t *c = w ? mem_alloc(w * sizeof *c) : NULL;
	if (w && (!v || !c))
		a->rc = err_set(-ENOMEM, "out of memory");
	size_t k = a->rc ? 0 : dcount_take(&a->dc, SIZE_MAX, v, c);
	for (size_t i = 0; i < k && !a->rc; i++)
		acc_pair(a, v[i], c[i]);
	mem_free(v);
	mem_free(c);
	dcount_free(&a->dc);
	a->no_dense = 1;
}

/* Values too far apart for the array: pairs from now on. */
static int dense_give_up(dacc *a)
{
	if (a->dc.cnt)
		dense_to_pairs(a);
	a->no_dense = 1;
	return 0;
}

/* 1 when the counting array covers [x, y) (x < y), grown as needed
 * (dcount_cover); 0 when it cannot: the values are pairs from then on.
 * Merging many windows this way costs one add per pair and one pass
 * over the slots, not a sort of everything gathered. */
static int dense_cover(dacc *a, int64_t x, int64_t y)
{
	if (a->sketch || a->no_dense || a->rc)
		return 0;
	if (x < -DIST_IDX_MAX || y > DIST_IDX_MAX + 1)
		return dense_give_up(a);
	int rc = dcount_cover(&a->dc, x, y, DENSE_MAX);
	if (rc < 0)
		a->rc = rc;
	return rc > 0 ? 1 : rc ? 0 : dense_give_up(a);
}

/* The counting array as the answer's ascending pairs, in place of the
 * (then empty) pair lists; the array stays (a->dc.cnt) to say so. */
static int dense_take(dacc *a)
{
	size_t w = (size_t)(a->dc.umax - a->dc.umin) + 1;
	int64_t *v = mem_alloc(w * sizeof *v);
	uint64_t *c = mem_alloc(w * sizeof *c);
	if (!v || !c) {
		mem_free(v);
		mem_free(c);
		return err_set(-ENOMEM, "out of memory");
	}
	mem_free(a->v);
	mem_free(a->c);
	a->v = v;
	a->c = c;
	a->n = dcount_take(&a->dc, SIZE_MAX, v, c);
	return 0;
}

/* From now on, a sketch: what was gathered goes into buckets. */
static void acc_to_sketch(dacc *a)
{
	if (a->dc.cnt)
		dense_to_pairs(a);
	for (size_t i = 0; i < a->n; i++)
		a->v[i] = dist_sketch_key(a->v[i]);
	a->sketch = 1;
}

static void acc_state(dacc *a, const dstate *d, int64_t start)
{
	if (a->rc || !d->a.count)
		return;
	if (d->exp != a->exp) {
		a->rc = err_set(TALLY_EINVAL,
				"%s: the window starting at %lld ns has no distribution at the "
				"field's resolution (written before the field was marked, or "
				"at another resolution)",
				a->what, (long long)start);
		return;
	}
	if (d->sketch && !a->sketch)
		acc_to_sketch(a);
	if (d->n && !d->sketch && dense_cover(a, d->v[0], d->v[d->n - 1] + 1)) {
		uint64_t *cnt = a->dc.cnt - a->dc.lo;
		for (uint32_t i = 0; i < d->n; i++)
			cnt[d->v[i]] += d->c[i];
		return;
	}
	int map = a->sketch && !d->sketch;
	for (uint32_t i = 0; i < d->n && !a->rc; i++)
		acc_pair(a, map ? dist_sketch_key(d->v[i]) : d->v[i], d->c[i]);
}

/* A value of the raw events: at the resolution, in a bucket once the
 * sum is a sketch. */
static void acc_value(dacc *a, double v)
{
	int64_t x = dist_index(v, a->exp);
	if (a->sketch)
		acc_pair(a, dist_sketch_key(x), 1);
	else if (dense_cover(a, x, x + 1))
		dcount_add(&a->dc, x, 1);
	else
		acc_pair(a, x, 1);
}

/* n values idx at the resolution, the least lo and the greatest hi:
 * like acc_value each, but counted in one tight loop when the counting
 * array covers them. */
static void acc_counted(dacc *a, const int64_t *idx, uint32_t n, int64_t lo, int64_t hi)
{
	if (!a->sketch && dense_cover(a, lo, hi + 1)) {
		uint64_t *cnt = a->dc.cnt - a->dc.lo;
		for (uint32_t i = 0; i < n; i++)
			cnt[idx[i]]++;
		return;
	}
	for (uint32_t i = 0; i < n && !a->rc; i++)
		acc_pair(a, a->sketch ? dist_sketch_key(idx[i]) : idx[i], 1);
}

/* n raw values v (idx: room for n indexes), converted in one call. */
static void acc_values(dacc *a, const double *v, uint32_t n, int64_t *idx)
{
	if (!n || a->rc)
		return;
	int64_t lo, hi;
	dist_index_n(v, n, a->exp, idx, &lo, &hi);
	acc_counted(a, idx, n, lo, hi);
}

/* n raw values already at the resolution (a DEC column's integers). */
static void acc_units(dacc *a, const int64_t *idx, uint32_t n)
{
	if (!n || a->rc)
		return;
	int64_t lo = idx[0], hi = idx[0];
	for (uint32_t i = 1; i < n; i++) {
		lo = idx[i] < lo ? idx[i] : lo;
		hi = idx[i] > hi ? idx[i] : hi;
	}
	acc_counted(a, idx, n, lo, hi);
}

/* A memtable's values of the series in [x, y): memtables keep rows, not
 * distributions. */
static void acc_rows(dacc *a, const series *se, const col_def *c, int64_t x, int64_t y)
{
	for (uint32_t k = 0; k < se->n_chunks && !a->rc; k++) {
		const chunk *ch = se->chunks[k];
		if (ch->tmax < x || ch->tmin >= y || c->id >= ch->n_cols)
			continue;
		const chunk_col *cc = &ch->cols[c->id];
		for (uint32_t i = 0; i < ch->n && !a->rc; i++)
			if (ch->ts[i] >= x && ch->ts[i] < y && chunk_has(cc, i))
				acc_value(a, bval_num(c->type, cc->vals[i]));
	}
}

/* A part whose stripes of the key hold raw values of the edges: pinned
 * under its shard's lock and read after it (a tiered part's stripes may
 * come from object storage), like a scan's. */
typedef struct edge_part {
	shard_part *sp;
	uint32_t first, end; /* the key's stripes */
	int col;             /* the field's column in the part */
} edge_part;

/* A part of table t whose partition [pstart, pend) meets an edge (an
 * empty edge meets nothing: an aligned range reads no raw value). */
static int edge_part_overlaps(const shard_part *sp, const table_def *t, const int64_t e[4])
{
	return sp->table == t && ((e[0] < e[1] && sp->pend > e[0] && sp->pstart < e[1]) ||
				  (e[2] < e[3] && sp->pend > e[2] && sp->pstart < e[3]));
}

/* A stripe (times [tmin, tmax]) that meets an edge. */
static int stripe_overlaps(const part_stripe *st, const int64_t e[4])
{
	return (e[0] < e[1] && st->tmax >= e[0] && st->tmin < e[1]) ||
	       (e[2] < e[3] && st->tmax >= e[2] && st->tmin < e[3]);
}

/* r[j]: how many of the n ascending times ts are before e[j], for the
 * four edge bounds: a branchless binary search each (the halving step
 * a conditional move, never a mispredicted branch). */
static void rows_before(const int64_t *ts, uint32_t n, const int64_t e[4], uint32_t r[4])
{
	for (int j = 0; j < 4; j++) {
		const int64_t *b = ts;
		uint32_t len = n;
		while (len > 1) {
			uint32_t half = len / 2;
			b = b[half] < e[j] ? b + half : b;
			len -= half;
		}
		r[j] = n ? (uint32_t)(b - ts) + (*b < e[j]) : 0;
	}
}

/* 1 when rows [x, y) of the presence bits are all set. */
static int all_present(const uint64_t *pres, uint32_t x, uint32_t y)
{
	for (; x < y && (x & 63); x++)
		if (!((pres[x >> 6] >> (x & 63)) & 1))
			return 0;
	for (; x + 64 <= y; x += 64)
		if (pres[x >> 6] != UINT64_MAX)
			return 0;
	for (; x < y; x++)
		if (!((pres[x >> 6] >> (x & 63)) & 1))
			return 0;
	return 1;
}

/* The values of stripe st in the edges e. Its rows ascend in time, and
 * its tmin and tmax say which edge bounds fall inside it: a bound at or
 * before tmin has no row before it, one past tmax all of them. So the
 * times are decoded only up to the last bound inside the stripe (none:
 * a stripe wholly in an edge, no time at all; a day's first stripe under
 * a range that starts in it and ends past it, only up to the start), and
 * the values only up to the last row in an edge (part_read_col_head),
 * both in whole frames of the codec. */
static void acc_stripe(dacc *a, const part *p, const part_stripe *st, int col, const col_def *c,
		       part_scratch *ps, int64_t *ts, bval *vals, uint64_t *pres,
		       const int64_t e[4])
{
	if (!stripe_overlaps(st, e) || st->n_rows > PART_STRIPE_MAX)
		return;
	int late = e[2] < e[3] && st->tmax >= e[2];
	int nb = late ? 4 : 2; /* the bounds that matter: without a late edge, e[0..2) */
	int64_t stop = INT64_MIN;
	for (int j = 0; j < nb; j++)
		if (e[j] > st->tmin && e[j] <= st->tmax && e[j] > stop)
			stop = e[j];
	uint32_t got = 0, r[4], n = st->n_rows;
	int absent;
	if (stop != INT64_MIN &&
	    ((a->rc = part_read_col_head(p, st, -1, ps, ts, NULL, 0, stop, &got, &absent)) ||
	     absent))
		return;
	/* the decoded times reach stop (or hold every row), so a bound
	 * inside the stripe finds its row among them */
	rows_before(ts, got, e, r);
	for (int j = 0; j < nb; j++)
		r[j] = e[j] <= st->tmin ? 0 : e[j] > st->tmax ? n : r[j];
	if (!late)
		r[2] = r[3] = r[1];
	uint32_t want = r[3] > r[2] ? r[3] : r[1];
	if (r[0] == r[1] && r[2] == r[3])
		return;
	/* a float column coded as decimals comes out at the resolution
	 * already when its scale allows (codec_want_units): no round trip
	 * through doubles */
	int units = c->type == TALLY_T_F64 && a->exp <= 0;
	if (units)
		codec_want_units(ps->cx, (unsigned)-a->exp);
	a->rc = part_read_col_head(p, st, col, ps, vals, pres, want, INT64_MIN, &got, &absent);
	units = units && codec_units_got(ps->cx);
	codec_want_units(ps->cx, UINT_MAX); /* none left behind by a failed read */
	if (a->rc || absent)
		return;
	/* the edges' present values (as doubles unless units), then at the
	 * resolution into the times' slots (read already); a float column with
	 * every row of an edge present is counted where it lies, with no copy */
	uint32_t m = 0;
	for (int h = 0; h < 4; h += 2) {
		if (c->type == TALLY_T_F64 && all_present(pres, r[h], r[h + 1])) {
			if (units)
				acc_units(a, &vals[r[h]].i64, r[h + 1] - r[h]);
			else
				acc_values(a, &vals[r[h]].f64, r[h + 1] - r[h], ts);
			continue;
		}
		for (uint32_t i = r[h]; i < r[h + 1]; i++)
			if ((pres[i >> 6] >> (i & 63)) & 1) {
				if (units)
					vals[m++].i64 = vals[i].i64;
				else
					vals[m++].f64 = bval_num(c->type, vals[i]);
			}
	}
	if (units)
		acc_units(a, &vals->i64, m);
	else
		acc_values(a, &vals->f64, m, ts);
}

/* The raw values of part sp's key pk (column pc) in [x, y): the
 * distributions of a part's finest windows while it keeps its raw events
 * (dist_level_derived). acc_stripe's buffers lie in the query's scratch
 * rows, which no rollup block borrows. */
static void acc_part_raw(dacc *a, const shard_part *sp, const part_key *pk, int pc,
			 const col_def *c, int64_t x, int64_t y)
{
	if (codec_buf_reserve(&a->ps->rows, (size_t)PART_STRIPE_MAX * 16)) {
		a->rc = err_set(-ENOMEM, "out of memory");
		return;
	}
	int64_t *ts = (int64_t *)(void *)a->ps->rows.p;
	bval *vals = (bval *)(void *)(a->ps->rows.p + (size_t)PART_STRIPE_MAX * 8);
	uint64_t pres[PART_STRIPE_MAX / 64];
	const int64_t e[4] = {x, y, y, y};
	for (uint32_t k = 0; k < pk->n_stripes && !a->rc; k++)
		acc_stripe(a, sp->p, &sp->p->stripes[pk->first_stripe + k], pc, c, a->ps, ts, vals,
			   pres, e);
}

/* A part's windows of level li with start in [x, y): its dist block's,
 * or, for the finest level of a part that derives it from its raw
 * events (a basic block there: dist_level_derived), its raw values. */
static void acc_part(dacc *a, const shard_part *sp, const part_key *pk, int pc, const col_def *c,
		     unsigned li, int64_t x, int64_t y)
{
	uint32_t num = (uint32_t)sp->p->info.num_of[pc];
	if (a->rc)
		return;
	if (a->bp != sp->p || a->bk != pk || a->bnum != num || a->blevel != li) {
		a->bp = NULL;
		a->rc = agg_read_rollup_any(sp->p, pk, num, li, a->ps, &a->bkind, &a->buf,
					    &a->cap_buf, &a->bn);
		if (a->rc)
			return;
		a->bp = sp->p;
		a->bk = pk;
		a->bnum = num;
		a->blevel = li;
	}
	const agg_kind *k = a->bkind;
	uint32_t n = a->bn;
	if (!n)
		return;
	if (k != &agg_dist && li == 0 && !retention_raw_gone(sp)) {
		acc_part_raw(a, sp, pk, pc, c, x, y);
		return;
	}
	if (k != &agg_dist) {
		a->rc = err_set(TALLY_EINVAL,
				"%s: %s holds its windows without a distribution (written "
				"before the field was marked)",
				a->what, sp->p->path);
		return;
	}
	const dbucket *b = (const dbucket *)(void *)a->buf;
	for (uint32_t i = 0; i < n && !a->rc; i++)
		if (b[i].start >= x && b[i].start < y)
			acc_state(a, &b[i].d, b[i].start);
}

/* Whole windows tiling [x, y) from level li down; the parts below the
 * finest level are the caller's raw edges. */
static void tile_part(dacc *a, const shard_part *sp, const part_key *pk, int pc, const col_def *c,
		      const levels *L, int li, int64_t x, int64_t y)
{
	while (x < y && li >= 0 && !a->rc) {
		int64_t w = L->w[li];
		int64_t X = window_start(x, w, L->offset);
		if (X < x)
			X += w;
		int64_t Y = window_start(y, w, L->offset);
		if (X >= Y) {
			li--;
			continue;
		}
		acc_part(a, sp, pk, pc, c, (unsigned)li, X, Y);
		tile_part(a, sp, pk, pc, c, L, li - 1, x, X);
		x = Y;
		li--;
	}
}

/* The raw values of the edges [e0, e1) and [e2, e3) (e1 <= e2; each under
 * one finest window), straight from memtable rows and the parts' stripes
 * of the key that overlap them: two columns decoded per stripe, each
 * stripe once for both edges. */
static int acc_edges(dacc *a, tally_db *db, const table_def *t, const col_def *c, const tkkeys *ks,
		     const int64_t e[4])
{
	edge_part *ep = NULL;
	uint32_t n = 0, cap = 0;
	for (unsigned s = 0; s < db->n_shards && !a->rc; s++) {
		shard *sh = db->shards[s];
		pthread_rwlock_rdlock(&sh->lock);
		const memtable *mt[SHARD_FROZEN_MAX + 1];
		unsigned nm = shard_memtables(sh, mt);
		for (unsigned m = 0; m < nm * ks->n && !a->rc; m++) {
			const series *se = mem_series(mt[m % nm], t, ks->k[m / nm], ks->l[m / nm]);
			if (se) {
				acc_rows(a, se, c, e[0], e[1]);
				acc_rows(a, se, c, e[2], e[3]);
			}
		}
		for (uint64_t i = 0; i < (uint64_t)sh->n_parts * ks->n && !a->rc; i++) {
			shard_part *sp = sh->parts[i % sh->n_parts];
			if (!edge_part_overlaps(sp, t, e))
				continue;
			const part_key *pk = part_find_key(sp->p, ks->k[i / sh->n_parts],
							   ks->l[i / sh->n_parts]);
			int pc = pk && pk->n_stripes ? shard_part_col(sp, c) : -1;
			if (pc < 0)
				continue;
			if (mem_grow(&ep, &cap, n + 1, sizeof *ep, 16)) {
				a->rc = err_set(-ENOMEM, "out of memory");
				break;
			}
			atomic_fetch_add(&sp->pins, 1);
			ep[n++] = (edge_part){sp, pk->first_stripe,
					      pk->first_stripe + pk->n_stripes, pc};
		}
		pthread_rwlock_unlock(&sh->lock);
	}
	/* a stripe's times and values in the scratch's rows buffer, kept
	 * across queries */
	part_scratch *ps = n ? scratch_get(db) : NULL;
	int64_t *ts = NULL;
	bval *vals = NULL;
	uint64_t pres[PART_STRIPE_MAX / 64];
	if (n && !a->rc) {
		if (!ps || codec_buf_reserve(&ps->rows, (size_t)PART_STRIPE_MAX * 16))
			a->rc = err_set(-ENOMEM, "out of memory");
		else {
			ts = (int64_t *)(void *)ps->rows.p;
			vals = (bval *)(void *)(ps->rows.p + (size_t)PART_STRIPE_MAX * 8);
		}
	}
	for (uint32_t i = 0; i < n && !a->rc; i++)
		for (uint32_t k = ep[i].first; k < ep[i].end && !a->rc; k++)
			acc_stripe(a, ep[i].sp->p, &ep[i].sp->p->stripes[k], ep[i].col, c, ps, ts,
				   vals, pres, e);
	for (uint32_t i = 0; i < n; i++)
		shard_part_free(ep[i].sp);
	if (ps)
		scratch_put(db, ps);
	mem_free(ep);
	return a->rc;
}

/* [*A, *B): the whole windows of level l in [from, to) (*A >= *B: none). */
static void whole_windows(const levels *L, unsigned l, int64_t from, int64_t to, int64_t *A,
			  int64_t *B)
{
	*A = window_start(from, L->w[l], L->offset);
	if (*A < from)
		*A += L->w[l];
	*B = *A;
	if (from < to) {
		*B = window_start(to, L->w[l], L->offset);
		if (*B < *A)
			*B = *A;
	}
}

/* The raw edges around whole windows [A, B); without a whole window, all
 * of [from, to). */
static void edges_of(int64_t from, int64_t to, int64_t A, int64_t B, int64_t e[4])
{
	e[0] = from;
	e[1] = A < B ? A : to;
	e[2] = A < B ? B : to;
	e[3] = to;
}

/* How many of the parts' stripes of the key reading edges e decodes;
 * *stub: 1 when one of them is a stub's (fetched from object storage). */
static uint32_t edge_stripes(tally_db *db, const table_def *t, const col_def *c, const tkkeys *ks,
			     const int64_t e[4], int *stub)
{
	uint32_t n = 0;
	*stub = 0;
	for (unsigned s = 0; s < db->n_shards; s++) {
		shard *sh = db->shards[s];
		pthread_rwlock_rdlock(&sh->lock);
		for (uint64_t i = 0; i < (uint64_t)sh->n_parts * ks->n; i++) {
			const shard_part *sp = sh->parts[i % sh->n_parts];
			if (!edge_part_overlaps(sp, t, e))
				continue;
			const part_key *pk = part_find_key(sp->p, ks->k[i / sh->n_parts],
							   ks->l[i / sh->n_parts]);
			if (!pk || shard_part_col(sp, c) < 0)
				continue;
			for (uint32_t k = 0; k < pk->n_stripes; k++)
				if (stripe_overlaps(&sp->p->stripes[pk->first_stripe + k], e)) {
					n++;
					*stub |= (sp->p->flags & PART_F_STUB) != 0;
				}
		}
		pthread_rwlock_unlock(&sh->lock);
	}
	return n;
}

TALLY_API int tally_query_dist(tally_db *db, const char *table, const char *field, const char *key,
			       int64_t from, int64_t to, tally_dist **out)
{
	err_clear();
	*out = NULL;
	if (!table || !field || !key)
		return err_set(TALLY_EINVAL, "table, field and key are required");
	table_def *t = catalog_find_table(&db->cat, table, (uint32_t)strlen(table));
	if (!t)
		return err_set(TALLY_ENOTFOUND, "no table '%s'", table);
	col_def *c = catalog_find_column(&db->cat, t, field, (uint32_t)strlen(field));
	if (!c)
		return err_set(TALLY_ENOTFOUND, "table '%s' has no field '%s'", table, field);
	if (!c->dist)
		return err_set(TALLY_EINVAL,
			       "field '%s' of table '%s' is not a distribution (mark it with "
			       "distributions = %s.%s:RESOLUTION)",
			       field, table, table, field);
	from = from < TS_ENGINE_MIN   ? TS_ENGINE_MIN
	       : from > TS_ENGINE_MAX ? TS_ENGINE_MAX + 1
				      : from;
	to = to < TS_ENGINE_MIN ? TS_ENGINE_MIN : to > TS_ENGINE_MAX ? TS_ENGINE_MAX + 1 : to;
	/* like the exact aggregate: what retention dropped is refused by
	 * name, never answered from what is left (docs/operations.md) */
	int rrc = retention_check_agg(db, t, from, to);
	if (rrc)
		return rrc;
	/* a subset of the key's tags: every matching series' counts add up
	 * (engine/tagkey.h), and so do their raw edges */
	tkkeys ks;
	if ((rrc = tkkeys_resolve(t, key, &ks)))
		return rrc;
	const levels *L = &db->L;
	/* [A, B): the whole finest windows of [from, to); the rest is raw */
	int64_t A, B;
	whole_windows(L, 0, from, to, &A, &B);
	/* Reading an edge decodes whole stripes, so while the edges of the
	 * next coarser level's windows lie in the very stripes the finest
	 * edges need, raw values are cheaper than a block of finer windows:
	 * the bench's unaligned 19 h in one day reads two stripes, no 5m
	 * block. The next level's edges are taken whenever they lie in no
	 * stub: a part keeping its raw events derives its finest windows from
	 * the stripes they lie in (dist_level_derived), so raw edges up to
	 * those windows' ends decode each of those stripes once rather than
	 * twice, while a stub keeps its finest windows and would fetch its
	 * stripes. Never where raw events may have expired. */
	if (A < B && !retention_check_raw(db, t, from)) {
		int64_t e[4];
		int stub;
		edges_of(from, to, A, B, e);
		uint32_t base = edge_stripes(db, t, c, &ks, e, &stub);
		for (unsigned l = 1; l < L->n; l++) {
			int64_t Al, Bl;
			whole_windows(L, l, from, to, &Al, &Bl);
			edges_of(from, to, Al, Bl, e);
			uint32_t ns = edge_stripes(db, t, c, &ks, e, &stub);
			if (ns > base && (l > 1 || stub))
				break;
			base = ns;
			A = Al;
			B = Bl;
			if (A >= B)
				break; /* all of it raw */
		}
	}
	err_clear();
	dacc a = {.exp = c->dist_exp, .what = field, .dc = DCOUNT_INIT};
	if (A < B) {
		a.ps = scratch_get(db);
		for (unsigned s = 0; s < db->n_shards && !a.rc; s++) {
			shard *sh = db->shards[s];
			pthread_rwlock_rdlock(&sh->lock);
			const memtable *mt[SHARD_FROZEN_MAX + 1];
			unsigned nm = shard_memtables(sh, mt);
			for (unsigned m = 0; m < nm * ks.n && !a.rc; m++) {
				const series *se =
					mem_series(mt[m % nm], t, ks.k[m / nm], ks.l[m / nm]);
				if (se)
					acc_rows(&a, se, c, A, B);
			}
			for (uint64_t i = 0; i < (uint64_t)sh->n_parts * ks.n && !a.rc; i++) {
				const shard_part *sp = sh->parts[i % sh->n_parts];
				if (sp->table != t || sp->pend <= A || sp->pstart >= B)
					continue;
				const part_key *pk = part_find_key(sp->p, ks.k[i / sh->n_parts],
								   ks.l[i / sh->n_parts]);
				int pc = pk ? shard_part_col(sp, c) : -1;
				if (pc < 0 || sp->p->info.num_of[pc] < 0)
					continue;
				int64_t x = A < sp->pstart ? sp->pstart : A;
				int64_t y = B > sp->pend ? sp->pend : B;
				tile_part(&a, sp, pk, pc, c, L, (int)L->n - 1, x, y);
			}
			pthread_rwlock_unlock(&sh->lock);
			a.bp = NULL; /* its parts may go once unlocked */
		}
		scratch_put(db, a.ps);
	}
	mem_free(a.buf);
	int rc = a.rc;
	/* the edges; without a whole window between them, all of [from, to) */
	int64_t e[4];
	edges_of(from, to, A, B, e);
	if (!rc)
		rc = acc_edges(&a, db, t, c, &ks, e);
	tkkeys_free(&ks);
	tally_dist *d = rc ? NULL : mem_calloc(1, sizeof *d);
	if (!rc && !d)
		rc = err_set(-ENOMEM, "out of memory");
	size_t k = 0;
	if (!rc && a.dc.cnt && !a.n) {
		rc = dense_take(&a);
		k = a.n;
	} else if (!rc) {
		if (a.dc.cnt)
			dense_to_pairs(&a);
		rc = a.rc ? a.rc : dist_combine(a.v, a.c, a.n, &k);
	}
	if (!rc) {
		d->exp = a.exp;
		d->sketch = a.sketch;
		d->n = (uint32_t)k;
		d->v = a.v;
		d->c = a.c;
		a.v = NULL;
		a.c = NULL;
		d->cum = mem_alloc((k ? k : 1) * sizeof *d->cum);
		if (!d->cum)
			rc = err_set(-ENOMEM, "out of memory");
		for (size_t i = 0; d->cum && i < k; i++)
			d->cum[i] = (d->count += d->c[i]);
	}
	mem_free(a.v);
	mem_free(a.c);
	dcount_free(&a.dc);
	if (rc) {
		tally_dist_free(d);
		return rc;
	}
	*out = d;
	return 0;
}

/* Merges two ascending (value, count) lists into one, equal values
 * added up: a distribution over several keys (InfluxQL's windows over
 * every camera) is the exact sum of theirs, or a sketch when either was
 * one (dist_merge_pairs, as windows merge). */
TALLY_API int tally_dist_merge(tally_dist *dst, const tally_dist *src)
{
	if (!src->count)
		return 0;
	if (dst->count && dst->exp != src->exp)
		return err_set(TALLY_EINVAL,
			       "distributions at different resolutions (%g and %g) do not merge",
			       dist_value(1, dst->exp), dist_value(1, src->exp));
	size_t cap = (size_t)dst->n + src->n;
	int64_t *v = mem_alloc(cap * sizeof *v);
	uint64_t *c = mem_alloc(cap * sizeof *c), *cum = mem_alloc(cap * sizeof *cum);
	if (!v || !c || !cum) {
		mem_free(v);
		mem_free(c);
		mem_free(cum);
		return err_set(-ENOMEM, "out of memory");
	}
	uint32_t k = dist_merge_pairs(dst->v, dst->c, dst->n, dst->sketch, src->v, src->c, src->n,
				      src->sketch, v, c);
	uint64_t total = 0;
	for (uint32_t i = 0; i < k; i++)
		cum[i] = (total += c[i]);
	mem_free(dst->v);
	mem_free(dst->c);
	mem_free(dst->cum);
	dst->v = v;
	dst->c = c;
	dst->cum = cum;
	dst->n = k;
	dst->count = total;
	dst->exp = src->exp;
	dst->sketch = dst->sketch || src->sketch;
	return 0;
}

TALLY_API void tally_dist_free(tally_dist *d)
{
	if (!d)
		return;
	mem_free(d->v);
	mem_free(d->c);
	mem_free(d->cum);
	mem_free(d);
}

TALLY_API uint64_t tally_dist_count(const tally_dist *d)
{
	return d->count;
}

TALLY_API double tally_dist_resolution(const tally_dist *d)
{
	return dist_value(1, d->exp);
}

TALLY_API double tally_dist_error(const tally_dist *d)
{
	return d->sketch ? DIST_SKETCH_ALPHA : 0;
}

/* The value of pair i: exact, or the one its bucket answers with. */
static double value_at(const tally_dist *d, uint32_t i)
{
	return d->sketch ? dist_sketch_value(d->v[i], d->exp) : dist_value(d->v[i], d->exp);
}

/* The smallest rank r with r >= q * N, computed exactly for the double q:
 * the product's rounding error (fma) decides when q * N rounds to an
 * integer. */
static uint64_t rank_of(double q, uint64_t n)
{
	double x = q * (double)n, err = fma(q, (double)n, -x);
	double r = ceil(x);
	if (r == x && err > 0)
		r += 1;
	if (r < 1)
		r = 1;
	return r > (double)n ? n : (uint64_t)r;
}

TALLY_API int tally_dist_quantile(const tally_dist *d, double q, double *out)
{
	if (!(q >= 0 && q <= 1))
		return err_set(TALLY_EINVAL, "quantile %g is not in [0, 1]", q);
	if (!d->count)
		return err_set(TALLY_ENOTFOUND, "no values in the range");
	uint64_t r = rank_of(q, d->count);
	uint32_t lo = 0, hi = d->n - 1;
	while (lo < hi) { /* the first value whose cumulative count reaches r */
		uint32_t mid = lo + (hi - lo) / 2;
		if (d->cum[mid] < r)
			lo = mid + 1;
		else
			hi = mid;
	}
	*out = value_at(d, lo);
	return 0;
}

/* How many values are below x (strictly, or also equal when le). */
static uint64_t count_below(const tally_dist *d, double x, int le)
{
	uint32_t lo = 0, hi = d->n;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		double v = value_at(d, mid);
		if (v < x || (le && v == x))
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo ? d->cum[lo - 1] : 0;
}

TALLY_API uint64_t tally_dist_count_below(const tally_dist *d, double x)
{
	return count_below(d, x, 0);
}

TALLY_API uint64_t tally_dist_count_above(const tally_dist *d, double x)
{
	return d->count - count_below(d, x, 1);
}

TALLY_API int tally_dist_histogram(const tally_dist *d, const double *edges, size_t n_edges,
				   uint64_t *counts)
{
	if (n_edges < 2)
		return err_set(TALLY_EINVAL, "a histogram needs at least two edges");
	for (size_t i = 0; i < n_edges; i++)
		if (isnan(edges[i]) || (i && !(edges[i] > edges[i - 1])))
			return err_set(TALLY_EINVAL,
				       "histogram edge %zu (%g) is not above the one before", i,
				       edges[i]);
	uint64_t below = count_below(d, edges[0], 0);
	for (size_t i = 1; i < n_edges; i++) {
		uint64_t b = count_below(d, edges[i], 0);
		counts[i - 1] = b - below;
		below = b;
	}
	return 0;
}

/* ---------------------------------------------------------------- pairs (distpairs.h) */

void dist_pairs(const tally_dist *d, int32_t *exp, int *sketch, uint32_t *n, const int64_t **v,
		const uint64_t **c)
{
	*exp = d->exp;
	*sketch = d->sketch;
	*n = d->n;
	*v = d->v;
	*c = d->c;
}

int dist_from_pairs(int32_t exp, int sketch, const int64_t *v, const uint64_t *c, size_t n,
		    tally_dist **out)
{
	if (exp < DIST_EXP_MIN || exp > DIST_EXP_MAX)
		return err_set(TALLY_EINVAL, "resolution 1e%d is not from 1e%d to 1e%d", exp,
			       DIST_EXP_MIN, DIST_EXP_MAX);
	if (n > UINT32_MAX)
		return err_set(TALLY_EINVAL, "%zu pairs: more than a distribution holds", n);
	uint64_t total = 0;
	for (size_t i = 0; i < n; i++) {
		if (v[i] > DIST_IDX_MAX || v[i] < -DIST_IDX_MAX || !c[i] || total + c[i] < total)
			return err_set(
				TALLY_EINVAL,
				"pair %zu (%lld, %llu): the value is out of range, the count "
				"zero, or the total past 2^64",
				i, (long long)v[i], (unsigned long long)c[i]);
		total += c[i];
	}
	tally_dist *d = mem_calloc(1, sizeof *d);
	size_t m = n ? n : 1;
	if (d) {
		d->v = mem_alloc(m * sizeof *d->v);
		d->c = mem_alloc(m * sizeof *d->c);
		d->cum = mem_alloc(m * sizeof *d->cum);
	}
	if (!d || !d->v || !d->c || !d->cum) {
		tally_dist_free(d);
		return err_set(-ENOMEM, "out of memory");
	}
	if (n) {
		memcpy(d->v, v, n * sizeof *v);
		memcpy(d->c, c, n * sizeof *c);
	}
	size_t k = 0;
	if (dist_combine(d->v, d->c, n, &k)) {
		tally_dist_free(d);
		return err_set(-ENOMEM, "out of memory");
	}
	d->exp = exp;
	d->sketch = sketch != 0;
	d->n = (uint32_t)k;
	for (size_t i = 0; i < k; i++)
		d->cum[i] = (d->count += d->c[i]);
	*out = d;
	return 0;
}
