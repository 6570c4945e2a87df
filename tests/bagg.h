/*
 * bagg.h — the brute-force aggregate the model tests compare answers with:
 * count, sum, min and max of the matching events, added one by one, and
 * the exact comparison with a tally_agg (values are chosen so that every
 * sum is exact in any order).
 */
#ifndef TALLY_BAGG_H
#define TALLY_BAGG_H

#include <criterion/criterion.h>
#include <stdint.h>

#include "tally.h"

typedef struct bagg {
	uint64_t count;
	double sum, min, max;
} bagg;

static inline void bagg_add(bagg *a, double v)
{
	if (!a->count)
		a->min = a->max = v;
	a->count++;
	a->sum += v;
	a->min = v < a->min ? v : a->min;
	a->max = v > a->max ? v : a->max;
}

static inline void check_agg(const char *what, const bagg *want, const tally_agg *got)
{
	cr_assert_eq(got->count, want->count, "%s: count %llu, want %llu", what,
		     (unsigned long long)got->count, (unsigned long long)want->count);
	if (!want->count)
		return;
	cr_assert_eq(got->sum, want->sum, "%s: sum %.17g, want %.17g", what, got->sum, want->sum);
	cr_assert_eq(got->min, want->min, "%s: min", what);
	cr_assert_eq(got->max, want->max, "%s: max", what);
	cr_assert_eq(got->avg, want->sum / (double)want->count, "%s: avg", what);
}

#endif
