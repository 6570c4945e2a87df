/*
 * benchutil.h — what every benchmark needs besides the thing it measures:
 * a monotonic clock, dying with a message that names the program, sorting
 * samples and reading a percentile off them, and a log sink that drops
 * the engine's lines. Header-only (static inline functions) so that each
 * benchmark stays one file to build; benchnet.h adds the network part.
 *
 * die_tally() is defined only where engine/tally.h was included first, so
 * the benchmarks that never link libtally do not need it.
 */
#ifndef TALLY_BENCHUTIL_H
#define TALLY_BENCHUTIL_H

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Seconds on the monotonic clock: differences only. */
static inline double now_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* Nanoseconds on the monotonic clock, for intervals too short for a
 * double's rounding to be ignored. */
static inline uint64_t now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* "PROGRAM: message" on stderr, exit status 1. */
__attribute__((format(printf, 1, 2), noreturn)) static inline void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "%s: ", program_invocation_short_name);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

/* qsort order of doubles. */
static inline int cmp_d(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* The nearest-rank p-quantile (0 < p <= 1) of n samples; sorts v. */
static inline double pct(double *v, int n, double p)
{
	if (n <= 0)
		return 0;
	qsort(v, (size_t)n, sizeof *v, cmp_d);
	int i = (int)ceil(p * n) - 1;
	return v[i < 0 ? 0 : i >= n ? n - 1 : i];
}

/* A tally_log_fn that drops every line: the engine's info lines would
 * interleave with the figures. */
static inline void quiet_log(void *ctx, int level, const char *msg)
{
	(void)ctx;
	(void)level;
	(void)msg;
}

#ifdef TALLY_H
/* Dies after a failed call: the engine's message when it left one, else
 * the name of status rc, else errno's (rc 0 for a failed libc call). */
__attribute__((noreturn)) static inline void die_tally(const char *what, int rc)
{
	const char *msg = tally_errmsg();
	die("%s: %s", what, *msg ? msg : rc ? tally_strerror(rc) : strerror(errno));
}
#endif

#endif
