/*
 * rollup.c — bucket arrays with a last-touched fast path.
 *
 * Events of one key mostly arrive in time order, so the next event usually
 * falls in the bucket the previous one touched: that test is one subtraction
 * and compare per level. A late event costs a binary search and, when its
 * window is new, a memmove of the buckets after it (few: only those newer
 * than the backlog).
 */
#include "rollup.h"

#include <errno.h>
#include <string.h>

#include "arena.h"
#include "mem.h"

void ragg_to_public(const ragg *a, tally_agg *out)
{
	out->count = a->count;
	/* A sum that passed the largest double is inf (its compensation NaN,
	 * inf - inf): report the inf, not inf + NaN; merged with a -inf it is
	 * NaN, which a non-empty aggregate's sum never is otherwise. */
	out->sum = !a->count ? 0 : isfinite(a->sum) ? a->sum + a->comp : a->sum;
	out->min = a->count ? a->min : NAN;
	out->max = a->count ? a->max : NAN;
	out->avg = a->count ? out->sum / (double)a->count : NAN;
}

uint32_t bucket_lower(const rbucket *b, uint32_t n, int64_t t)
{
	return starts_lower(b, sizeof *b, n, t);
}

uint32_t rollup_lower(const rlevel *lv, int64_t t)
{
	return bucket_lower(lv->b, lv->n, t);
}

/* Doubles lv's capacity from the pool; 0 or -1. */
static int level_grow(rlevel *lv, rpool *pl)
{
	uint32_t nc = lv->cap ? lv->cap * 2 : 4;
	unsigned cls = (unsigned)__builtin_ctz(nc);
	if (cls >= 32)
		return -1;
	rbucket *nb = pl->free[cls];
	if (nb) {
		memcpy(&pl->free[cls], nb, sizeof(void *));
	} else {
		if (!(nb = arena_alloc(pl->ar, (size_t)nc * sizeof *nb)))
			return -1;
		pl->bytes += (uint64_t)nc * sizeof *nb;
	}
	if (lv->n)
		memcpy(nb, lv->b, (size_t)lv->n * sizeof *nb);
	if (lv->b) {
		unsigned old = (unsigned)__builtin_ctz(lv->cap);
		memcpy(lv->b, &pl->free[old], sizeof(void *));
		pl->free[old] = lv->b;
	}
	lv->b = nb;
	lv->cap = nc;
	return 0;
}

/* Finds or inserts the bucket starting at start; returns its index or -1. */
static int64_t bucket_slot(rlevel *lv, int64_t start, rpool *pl)
{
	/* In-order data opens a window after the newest one (or steps to the
	 * next existing one): no search for either. */
	uint32_t i;
	if (lv->n == 0 || lv->b[lv->n - 1].start < start)
		i = lv->n;
	else if (lv->last + 1 < lv->n && lv->b[lv->last + 1].start == start)
		return lv->last + 1;
	else
		i = rollup_lower(lv, start);
	if (i < lv->n && lv->b[i].start == start)
		return i;
	if (lv->n == lv->cap && level_grow(lv, pl))
		return -1;
	memmove(&lv->b[i + 1], &lv->b[i], (size_t)(lv->n - i) * sizeof *lv->b);
	lv->b[i].start = start;
	ragg_init(&lv->b[i].a);
	lv->n++;
	if (lv->n > 1 && i <= lv->last)
		lv->last++; /* keep the fast path on the same bucket */
	return i;
}

/* Points every level's `last` at the bucket holding ts, creating buckets
 * as needed. Slots are reserved on all levels before any is used, so a
 * failed allocation leaves the aggregates unchanged. */
static int rollup_seek(rcol *rc, const levels *L, int64_t ts, rpool *pl)
{
	int64_t idx[TALLY_LEVELS_MAX];
	for (unsigned i = 0; i < L->n; i++) {
		idx[i] = bucket_slot(&rc->lv[i], window_start(ts, L->w[i], L->offset), pl);
		if (idx[i] < 0)
			return -ENOMEM;
	}
	for (unsigned i = 0; i < L->n; i++)
		rc->lv[i].last = (uint32_t)idx[i];
	return 0;
}

/* The finest level's `last` bucket holds ts: then every level's does,
 * because levels nest. */
static inline int rollup_hit(const rcol *rc, const levels *L, int64_t ts)
{
	const rlevel *l0 = &rc->lv[0];
	return l0->n && (uint64_t)ts - (uint64_t)l0->b[l0->last].start < (uint64_t)L->w[0];
}

int rollup_add_run(rcol *rc, const levels *L, const int64_t *ts, const double *v, uint32_t n,
		   rpool *pool)
{
	/* Values of one window add into a local aggregate (one TwoSum each)
	 * that merges into the levels once per window, not once per value. */
	uint32_t i = 0;
	while (i < n) {
		if (!rollup_hit(rc, L, ts[i])) {
			int r = rollup_seek(rc, L, ts[i], pool);
			if (r)
				return r;
		}
		int64_t start = rc->lv[0].b[rc->lv[0].last].start;
		uint64_t w0 = (uint64_t)L->w[0];
		ragg acc;
		ragg_init(&acc);
		uint32_t j = i;
		while (j < n && (uint64_t)ts[j] - (uint64_t)start < w0)
			ragg_add(&acc, v[j++]);
		for (unsigned l = 0; l < L->n; l++)
			ragg_merge(&rc->lv[l].b[rc->lv[l].last].a, &acc);
		i = j;
	}
	return 0;
}
