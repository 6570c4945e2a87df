/*
 * abpairs.h — the cost of an option measured as interleaved A/B pairs in
 * one run (bench_tcp --ab, bench_http --ab): labelled batches against
 * unlabelled ones.
 *
 * On a shared 2-core VM the same run varies by tens of percent from one
 * minute to the next, more than the few percent being measured. So the
 * two variants run in pairs, each on a fresh tallyd, the order inside a
 * pair alternating (A B, B A, A B, ...) so that a drift over the run
 * weighs on both alike, and the figure is the overhead within each pair,
 * B / A - 1: its median, its quartiles and its extremes say how far the
 * machine let the pairs agree. Two measures per run: wall time (what a
 * client sees) and tallyd's CPU time (user + system from /proc/PID/stat,
 * what the work costs, steadier while neighbours take the cores).
 * Header-only (static functions), like benchnet.h.
 */
#ifndef TALLY_BENCH_ABPAIRS_H
#define TALLY_BENCH_ABPAIRS_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

/* CPU seconds (user + system) process pid has used so far; -1 if unknown. */
static inline double ab_proc_cpu_s(pid_t pid)
{
	char path[64], buf[1024];
	snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = 0;
	/* fields after the command name, which may hold spaces: the 12th and
	 * 13th after its ')' are utime and stime, in clock ticks */
	const char *p = strrchr(buf, ')');
	unsigned long long ut, st;
	if (!p ||
	    sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
		return -1;
	return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static inline int ab_cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* The q-quantile of sorted v[0, n), interpolated. */
static inline double ab_quantile(const double *v, size_t n, double q)
{
	double i = q * (double)(n - 1);
	size_t lo = (size_t)i;
	return lo + 1 < n ? v[lo] + (i - (double)lo) * (v[lo + 1] - v[lo]) : v[n - 1];
}

/* Prints "what: overhead median +x.x% (quartiles +a% to +b%, range +c% to
 * +d%, n pairs)" of b[i] / a[i] - 1, where a and b are costs (seconds),
 * and returns the median overhead. */
static inline double ab_report(const char *what, const double *a, const double *b, size_t n)
{
	double *o = malloc(n * sizeof *o);
	if (!o || !n) {
		free(o);
		return 0;
	}
	for (size_t i = 0; i < n; i++)
		o[i] = b[i] / a[i] - 1;
	qsort(o, n, sizeof *o, ab_cmp);
	double med = ab_quantile(o, n, 0.5);
	printf("  %-28s median %+6.1f%%  (quartiles %+.1f%% to %+.1f%%, range %+.1f%% to %+.1f%%, "
	       "%zu pairs)\n",
	       what, med * 100, ab_quantile(o, n, 0.25) * 100, ab_quantile(o, n, 0.75) * 100,
	       o[0] * 100, o[n - 1] * 100, n);
	free(o);
	return med;
}

#endif
