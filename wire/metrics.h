/*
 * metrics.h — Prometheus text exposition of tallyd's figures (internal to
 * wire/): everything #!stats reports, plus a reusable latency histogram.
 *
 * Format: Prometheus text format 0.0.4 (Content-Type:
 * text/plain; version=0.0.4; charset=utf-8). docs/metrics.md lists every
 * metric and the alert rules worth having.
 */
#ifndef TALLY_METRICS_H
#define TALLY_METRICS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef struct srv srv;

/* ---------------------------------------------------------------- histogram */

/* Fixed exponential buckets: upper bounds 2^(i+3) microseconds for
 * i = 0 .. METRICS_HIST_BOUNDS-1, i.e. 8 us, 16 us, ... 8.39 s, then +Inf.
 * Observing is two relaxed atomic adds: any thread may observe into a
 * histogram while any other renders it (a render may see a count and a sum
 * a few observations apart, as Prometheus allows). Zero-initialised memory
 * is an empty histogram. */
#define METRICS_HIST_BOUNDS 21

typedef struct metrics_hist {
	_Atomic uint64_t bucket[METRICS_HIST_BOUNDS + 1]; /* not cumulative; last: above all */
	_Atomic uint64_t sum_ns;
} metrics_hist;

/* Records one duration in ns (negative counts as 0). */
void metrics_hist_observe(metrics_hist *h, int64_t ns);
/* The upper bound of bucket i (< METRICS_HIST_BOUNDS), seconds. */
double metrics_hist_bound(unsigned i);

/* ---------------------------------------------------------------- writing */

/* Each appends to *buf (len used of cap; grown with realloc) and returns 0
 * or -ENOMEM; after -ENOMEM, *buf still holds what was appended before. */

/* "# HELP name help" and "# TYPE name type" (type: counter, gauge,
 * histogram). Once per metric name, before its samples. */
int metrics_family(char **buf, size_t *len, size_t *cap, const char *name, const char *type,
		   const char *help);
/* One sample "name{labels} value". labels: "" or pairs already written
 * with metrics_label ("shard=\"0\""). */
int metrics_sample(char **buf, size_t *len, size_t *cap, const char *name, const char *labels,
		   double value);
/* A histogram's samples: name_bucket{labels,le="..."} cumulative, then
 * name_sum{labels} (seconds) and name_count{labels}. */
int metrics_hist_put(char **buf, size_t *len, size_t *cap, const char *name, const char *labels,
		     const metrics_hist *h);
/* Writes name="value" into dst (cap bytes, NUL-ended), value escaped (\\,
 * \", \n); returns the length, or 0 when it does not fit. */
size_t metrics_label(char *dst, size_t cap, const char *name, const char *value);

/* ---------------------------------------------------------------- tallyd */

/* Appends the exposition of s: the engine's tally_db_stats, the server's
 * counters (per shard where the balance matters), and s->sync_seconds.
 * Safe from any thread while the server runs. Returns 0, -ENOMEM, or the
 * error of tally_db_stats (nothing appended then). */
int metrics_render(srv *s, char **buf, size_t *len, size_t *cap);

#endif
