/*
 * bench_format.c — nanoseconds per number of tallyd's answer formatting.
 *
 * A 288-row series answer is 288 times and 1,440 numbers; over TCP the
 * formatting is about half of the server's share of the round trip, so
 * it is measured apart, on the kinds of values a series row holds:
 *
 *   speed    one-decimal speeds (min, max: 30.4, 127.6)
 *   sum      float sums of 20-80 such speeds (3529.1, or 3529.0999999999995)
 *   avg      those sums over their counts (84.02619047619048)
 *   random   doubles from random bit patterns (every exponent)
 *   time     5-minute window starts as RFC 3339 (one day after another)
 *
 * Every value is formatted once before the clock starts and checked to
 * read back exactly (strtod), so a fast wrong formatter cannot report.
 *
 *   bench_format [--values N] [--rounds R] [--seed S] [--only KIND]
 */
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cmd.h"

static uint64_t rng(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double speed(uint64_t *s)
{
	return (double)(300 + rng(s) % 1000) / 10.0;
}

static void check(const double *v, size_t n, const char *kind)
{
	char b[64];
	for (size_t i = 0; i < n; i++) {
		size_t k = cmd_format_double(v[i], b);
		b[k] = 0;
		if (strtod(b, NULL) != v[i] || strlen(b) != k) {
			fprintf(stderr, "bench_format: %s: %.17g formatted as \"%s\"\n", kind, v[i],
				b);
			exit(1);
		}
	}
}

/* ns per value, best of rounds (the least disturbed by the VM). */
static double time_doubles(const double *v, size_t n, unsigned rounds, size_t *bytes)
{
	static char out[64 * 1024];
	double best = 1e9;
	for (unsigned r = 0; r < rounds; r++) {
		size_t pos = 0, total = 0;
		double a = now_s();
		for (size_t i = 0; i < n; i++) {
			if (pos > sizeof out - 64)
				pos = 0;
			size_t k = cmd_format_double(v[i], out + pos);
			pos += k;
			total += k;
		}
		double ns = (now_s() - a) * 1e9 / (double)n;
		if (ns < best)
			best = ns;
		*bytes = total;
	}
	return best;
}

static double time_times(const int64_t *t, size_t n, unsigned rounds)
{
	static char out[64 * 1024];
	double best = 1e9;
	for (unsigned r = 0; r < rounds; r++) {
		size_t pos = 0;
		double a = now_s();
		for (size_t i = 0; i < n; i++) {
			if (pos > sizeof out - 64)
				pos = 0;
			pos += cmd_format_time(t[i], out + pos);
		}
		double ns = (now_s() - a) * 1e9 / (double)n;
		if (ns < best)
			best = ns;
	}
	return best;
}

int main(int argc, char **argv)
{
	size_t n = 1000000;
	unsigned rounds = 5;
	uint64_t seed = 1;
	const char *only = NULL;
	static const struct option lo[] = {
		{"values", 1, 0, 'n'}, {"rounds", 1, 0, 'r'}, {"seed", 1, 0, 's'},
		{"only", 1, 0, 'o'},   {"help", 0, 0, 'h'},   {0, 0, 0, 0},
	};
	int ch;
	while ((ch = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
		switch (ch) {
		case 'n': n = strtoull(optarg, NULL, 10); break;
		case 'r': rounds = (unsigned)atoi(optarg); break;
		case 's': seed = strtoull(optarg, NULL, 10); break;
		case 'o': only = optarg; break;
		case 'h':
			printf("Usage: bench_format [--values N] [--rounds R] [--seed S]\n\n"
			       "Nanoseconds per number and per time of tallyd's answer formatting\n"
			       "(cmd_format_double, cmd_format_time), best of R rounds of N "
			       "values.\n");
			return 0;
		default: return 2;
		}
	}
	if (n < 1 || rounds < 1) {
		fprintf(stderr, "bench_format: --values and --rounds at least 1\n");
		return 2;
	}
	double *sp = malloc(n * sizeof *sp), *sum = malloc(n * sizeof *sum),
	       *avg = malloc(n * sizeof *avg), *rnd = malloc(n * sizeof *rnd);
	int64_t *tm = malloc(n * sizeof *tm);
	if (!sp || !sum || !avg || !rnd || !tm) {
		fprintf(stderr, "bench_format: out of memory\n");
		return 1;
	}
	uint64_t s = seed;
	for (size_t i = 0; i < n; i++) {
		sp[i] = speed(&s);
		unsigned c = 20 + (unsigned)(rng(&s) % 61);
		double t = 0;
		for (unsigned j = 0; j < c; j++)
			t += speed(&s);
		sum[i] = t;
		avg[i] = t / c;
		double r;
		do {
			uint64_t b = rng(&s);
			memcpy(&r, &b, sizeof r);
		} while (!isfinite(r));
		rnd[i] = r;
		tm[i] = INT64_C(1699920000000000000) + (int64_t)i * INT64_C(300000000000);
	}
	static const char *kinds[4] = {"speed", "sum", "avg", "random"};
	double *sets[4] = {sp, sum, avg, rnd};
	printf("bench_format: %zu values per kind, best of %u rounds\n", n, rounds);
	for (int k = 0; k < 4; k++) {
		if (only && strcmp(only, kinds[k]))
			continue;
		check(sets[k], n, kinds[k]);
		size_t bytes;
		double ns = time_doubles(sets[k], n, rounds, &bytes);
		printf("  %-7s %6.1f ns/value  (%.1f characters)\n", kinds[k], ns,
		       (double)bytes / (double)n);
	}
	if (!only || !strcmp(only, "time"))
		printf("  %-7s %6.1f ns/value\n", "time", time_times(tm, n, rounds));
	free(sp);
	free(sum);
	free(avg);
	free(rnd);
	free(tm);
	return 0;
}
