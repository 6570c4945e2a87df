/*
 * dcount.h — a count per value over a run of consecutive integers (internal).
 *
 * Values at a distribution's resolution (speeds at 0.1 km/h are a few
 * thousand integers) add up fastest as counts in an array indexed by
 * value, walked once at the end: no sort, one add per (value, count)
 * pair. A flush adding up a level's windows (engine/dist.c) and a query
 * adding up windows and raw values (engine/distq.c) both count so.
 *
 * The slots hold zeros except where values were counted since the last
 * dcount_take, which zeroes what it reads: an array is reused across
 * windows without clearing it, and moved to another run of values for
 * free while empty.
 */
#ifndef TALLY_DCOUNT_H
#define TALLY_DCOUNT_H

#include <stddef.h>
#include <stdint.h>

typedef struct dcount {
	uint64_t *cnt; /* cap slots: value lo + i counts at cnt[i] */
	size_t cap;
	int64_t lo;
	int64_t umin, umax; /* the values counted lie in [umin, umax]; umin > umax: none */
} dcount;

/* An empty dcount with no slots. */
#define DCOUNT_INIT ((dcount){NULL, 0, 0, 1, 0})

/* Makes the slots cover [x, y) (x < y; y - x no more than max) and
 * notes that values there will be counted: 1. Grown at least to double
 * when it must grow, so that a sum of windows regrows a few times at
 * most (a quarter wider than needed when first made); an empty one
 * moves to x instead while it has the room. 0 when
 * covering would take more than max slots (nothing changed); -ENOMEM. */
int dcount_cover(dcount *d, int64_t x, int64_t y, size_t max);

/* Counts value v (covered) c more times. */
static inline void dcount_add(dcount *d, int64_t v, uint64_t c)
{
	d->cnt[v - d->lo] += c;
}

/* The values counted, ascending, with their counts, into v and c: room
 * for the distinct values counted, the least and the greatest of the
 * ranges covered being among them (every cover's x and y - 1 counted).
 * most is how many there may be (SIZE_MAX: unknown), which only chooses
 * the walk: a run of slots
 * much wider than that is walked skipping zeros, a denser one without a
 * branch per slot. Zeroes the slots; d is empty after. How many pairs. */
size_t dcount_take(dcount *d, size_t most, int64_t *v, uint64_t *c);

void dcount_free(dcount *d);

#endif
