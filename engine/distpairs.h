/*
 * distpairs.h — a distribution as its (value, count) pairs, and back
 * (internal: the wire's partial-distribution reply, docs/protocol.md).
 *
 * A query across nodes asks each node for its distribution of a range as
 * pairs and merges them exactly (tally_dist_merge); these two calls are
 * how the pairs leave one tally_dist and become another.
 */
#ifndef TALLY_DISTPAIRS_H
#define TALLY_DISTPAIRS_H

#include <stddef.h>
#include <stdint.h>

#include "tally.h"

/* d's pairs, borrowed from d: resolution 10^*exp, *sketch 1 when v holds
 * sketch buckets (engine/dist.h), else values in units of the
 * resolution; v ascending, each count > 0. */
void dist_pairs(const tally_dist *d, int32_t *exp, int *sketch, uint32_t *n, const int64_t **v,
		const uint64_t **c);

/* A distribution of n pairs in any order (equal values added up): 0 and
 * *out, TALLY_EINVAL with the message naming pair i that is out of range
 * (exp, a value, a zero count, a total past 2^64), or -ENOMEM. */
int dist_from_pairs(int32_t exp, int sketch, const int64_t *v, const uint64_t *c, size_t n,
		    tally_dist **out);

#endif
