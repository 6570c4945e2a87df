/*
 * rollup.h — exact partial aggregates per window (internal).
 *
 * For one (key, field), each level keeps a sorted array of buckets: window
 * start, count, sum, min, max. Sums are compensated (TwoSum): the pair
 * (sum, comp) carries the rounding error, so an integer-valued field sums
 * exactly up to 2^106 and float sums do not depend on arrival order beyond
 * the last bit. Partial buckets merge (count+count, sum+sum, min of mins),
 * which is how shards, and later parts and nodes, combine.
 */
#ifndef TALLY_ROLLUP_H
#define TALLY_ROLLUP_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "tally.h"

/* Engine time range: wide enough for any real data, narrow enough that
 * window starts and ends of every level never overflow int64. */
#define TS_ENGINE_MIN (INT64_MIN + (INT64_C(1) << 58))
#define TS_ENGINE_MAX (INT64_MAX - (INT64_C(1) << 58))
/* The same range for messages (docs/architecture.md, "Timestamps"). */
#define TS_ENGINE_RANGE_TEXT                                                              \
	"[-8935141660703064064, 8935141660703064063] ns (1686-11-09T00:12:19.296935936Z " \
	"to 2253-02-21T23:47:40.703064063Z)"
_Static_assert(TS_ENGINE_MIN == -INT64_C(8935141660703064064) &&
		       TS_ENGINE_MAX == INT64_C(8935141660703064063),
	       "TS_ENGINE_RANGE_TEXT names the range");
#define LEVEL_WIDTH_MAX (INT64_C(1) << 56)

typedef struct levels {
	unsigned n;
	int64_t w[TALLY_LEVELS_MAX]; /* ascending, each dividing the next */
	int64_t offset;              /* windows start at offset + k*w */
} levels;

typedef struct ragg {
	uint64_t count;
	double sum, comp; /* value = sum + comp */
	double min, max;
} ragg;

typedef struct rbucket {
	int64_t start;
	ragg a;
} rbucket;

/* A bucket as flushes, merges and the rollup cache hand them to the
 * basic aggregate kind (engine/aggkind.c): rbucket's bytes, field by field. */
typedef struct part_bucket {
	int64_t start;
	uint64_t count;
	double sum, comp; /* exact value = sum + comp */
	double min, max;
} part_bucket;

typedef struct rlevel {
	rbucket *b;
	uint32_t n, cap;
	uint32_t last; /* index of the bucket touched last: the fast path */
} rlevel;

typedef struct rcol {
	rlevel lv[TALLY_LEVELS_MAX];
} rcol;

/* Start of the window of width w holding ts. */
static inline int64_t window_start(int64_t ts, int64_t width, int64_t offset)
{
	int64_t d = ts - offset; /* no overflow within the engine's range */
	int64_t q = d / width, r = d % width;
	if (r < 0)
		q--;
	return q * width + offset;
}

/* window_start for any ts, also where ts - offset overflows: the start
 * is ts minus ts's place in its window, both remainders taken apart. A
 * start below INT64_MIN (ts within a window of it) saturates there. */
static inline int64_t window_start_any(int64_t ts, int64_t width, int64_t offset)
{
	int64_t rt = ts % width, ro = offset % width;
	int64_t m = (rt - ro) % width; /* ts - offset, mod width, in (-width, width) */
	if (m < 0)
		m += width;
	return ts < INT64_MIN + m ? INT64_MIN : ts - m;
}

static inline void ragg_init(ragg *a)
{
	a->count = 0;
	a->sum = a->comp = 0;
	a->min = INFINITY;
	a->max = -INFINITY;
}

/* Adds one value; TwoSum keeps the rounding error in comp. */
static inline void ragg_add(ragg *a, double v)
{
	double t = a->sum + v;
	double bp = t - a->sum;
	a->comp += (a->sum - (t - bp)) + (v - bp);
	a->sum = t;
	a->count++;
	a->min = v < a->min ? v : a->min;
	a->max = v > a->max ? v : a->max;
}

static inline void ragg_merge(ragg *a, const ragg *b)
{
	if (!b->count)
		return;
	double t = a->sum + b->sum;
	double bp = t - a->sum;
	a->comp += (a->sum - (t - bp)) + (b->sum - bp) + b->comp;
	a->sum = t;
	/* Past the largest double the sum is inf (NaN once it overflowed both
	 * ways) and the compensation inf - inf: keep it 0, so that sum + comp,
	 * which parts store, stays that inf. Windows merge here once, so the
	 * test costs nothing per value. */
	if (!isfinite(t))
		a->comp = 0;
	a->count += b->count;
	a->min = b->min < a->min ? b->min : a->min;
	a->max = b->max > a->max ? b->max : a->max;
}

void ragg_to_public(const ragg *a, tally_agg *out);

/*
 * Where a memtable's bucket arrays live: its arena (huge pages, freed with
 * the memtable), not malloc. On this kind of virtual machine the first
 * touch of a fresh 4 KiB page costs about 20 us, and a growing array that
 * realloc moves touches new pages every time: moved this way, the rollups
 * were most of the page faults of a TCP ingest (perf). An array a level
 * outgrew (caps are powers of two) is kept on a free list of its size for
 * the next level that grows to it. bytes: arena bytes taken.
 */
typedef struct rpool {
	struct arena *ar;
	void *free[32]; /* by log2 of the capacity in buckets */
	uint64_t bytes;
} rpool;

/* Adds n values (ts[i], v[i]) to every level; 0 or -ENOMEM. A failure may
 * leave the values before the failing window added. */
int rollup_add_run(rcol *rc, const levels *L, const int64_t *ts, const double *v, uint32_t n,
		   rpool *pool);

/* Index of the first of n buckets, stride bytes apart from b, each
 * beginning with its int64 start (ascending), whose start is >= t: what
 * every kind's buckets (engine/aggkind.h) are searched with. */
static inline uint32_t starts_lower(const void *b, size_t stride, uint32_t n, int64_t t)
{
	uint32_t lo = 0, hi = n;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		int64_t s;
		memcpy(&s, (const char *)b + (size_t)mid * stride, sizeof s);
		if (s < t)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* Index of the first of the n sorted buckets b with start >= t. */
uint32_t bucket_lower(const rbucket *b, uint32_t n, int64_t t);

/* Index of the first bucket of lv with start >= t. */
uint32_t rollup_lower(const rlevel *lv, int64_t t);

#endif
