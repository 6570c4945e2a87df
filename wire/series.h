/*
 * series.h — a rollup series of any length, fetched in bounded slices
 * (internal to wire/). Shared by the line protocol's #!series and the HTTP
 * query API, which both stream series of millions of windows in constant
 * memory.
 */
#ifndef TALLY_SERIES_H
#define TALLY_SERIES_H

#include <stdint.h>

#include "tally.h"

#define SERIES_CAP      1024               /* buckets per slice */
#define SERIES_SPAN_MAX (INT64_C(1) << 62) /* widest slice, ns */
#define SERIES_STEP_MAX (INT64_C(1) << 56) /* widest window (about 834 days) */

typedef struct wseries {
	const char *table, *field, *key; /* borrowed from the caller for the series' life */
	int64_t step, cur, to, span;
	size_t n, i; /* b[i, n) are fetched, not yet taken */
	tally_bucket b[SERIES_CAP];
} wseries;

/* The start of the window of width w (aligned at off) that holds ts. */
int64_t series_window_start(int64_t ts, int64_t w, int64_t off);

/* Sets up the series of [from, to) in windows of step, aligned at off.
 * Clears only the fields ahead of b (the buckets are 49 KB). */
void series_init(wseries *ps, const char *table, const char *field, const char *key, int64_t step,
		 int64_t from, int64_t to, int64_t off);

/* Fetches the next slice into ps->b[0, ps->n): at most SERIES_CAP buckets.
 * Returns 0 or the query's error (tally_errmsg says what). The series is
 * complete when ps->i == ps->n and ps->cur >= ps->to. */
int series_next_slice(tally_db *db, wseries *ps);

/* The next bucket, fetching a slice when needed: 1 and *b (borrowed until
 * the next call), 0 at the end, or the query's error. */
int series_next(tally_db *db, wseries *ps, const tally_bucket **b);

#endif
