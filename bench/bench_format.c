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
 *   row      whole series rows as tallyd writes them (cmd_put_bucket):
 *            window start, count, exact sum, min, max, avg; the sum of
 *            one-decimal readings is the double nearest their decimal sum,
 *            as the engine's exact sums make it
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
#include "benchutil.h"

static uint64_t rng(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
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

/* ns per item, best of rounds (the least disturbed by the VM), and the
 * bytes of a round in *bytes. FORMAT(i, p) writes item i at p and gives
 * its length: a macro rather than a function pointer, so that every kind
 * is timed calling its formatter directly, as tallyd does. */
#define TIME_KIND(n, rounds, bytes, FORMAT)                              \
	__extension__({                                                  \
		static char out_[64 * 1024];                             \
		double best_ = 1e9;                                      \
		for (unsigned r_ = 0; r_ < (rounds); r_++) {             \
			size_t pos_ = 0, total_ = 0;                     \
			double a_ = now_s();                             \
			for (size_t i_ = 0; i_ < (n); i_++) {            \
				if (pos_ > sizeof out_ - 256)            \
					pos_ = 0;                        \
				size_t k_ = FORMAT(i_, out_ + pos_);     \
				pos_ += k_;                              \
				total_ += k_;                            \
			}                                                \
			double ns_ = (now_s() - a_) * 1e9 / (double)(n); \
			best_ = ns_ < best_ ? ns_ : best_;               \
			*(bytes) = total_;                               \
		}                                                        \
		best_;                                                   \
	})

/* Series rows of consecutive 5-minute windows, as the engine answers. */
static tally_bucket *make_rows(size_t n, uint64_t *s)
{
	tally_bucket *b = malloc(n * sizeof *b);
	if (!b)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		unsigned c = 20 + (unsigned)(rng(s) % 61);
		uint64_t tenths = 0, lo = UINT64_MAX, hi = 0;
		for (unsigned j = 0; j < c; j++) {
			uint64_t x = 300 + rng(s) % 1000;
			tenths += x;
			lo = x < lo ? x : lo;
			hi = x > hi ? x : hi;
		}
		double sum = (double)tenths / 10.0;
		b[i] = (tally_bucket){
			.start = INT64_C(1699920000000000000) + (int64_t)i * INT64_C(300000000000),
			.agg = {c, sum, (double)lo / 10.0, (double)hi / 10.0, sum / c},
		};
	}
	return b;
}

/* Every numeric cell of every row reads back as its value. */
static void check_rows(const tally_bucket *b, size_t n)
{
	char out[256];
	for (size_t i = 0; i < n; i++) {
		char *e = cmd_put_bucket(out, &b[i]);
		*e = 0;
		const tally_agg *a = &b[i].agg;
		double want[4] = {a->sum, a->min, a->max, a->avg};
		char *p = strchr(out, '\t');
		int ok = p && strtoull(p + 1, &p, 10) == a->count && *p == '\t' && e[-1] == '\n';
		for (int k = 0; ok && k < 4; k++)
			ok = *p == '\t' && strtod(p + 1, &p) == want[k];
		if (!ok || p != e - 1) {
			fprintf(stderr, "bench_format: row %zu formatted as \"%s\"\n", i, out);
			exit(1);
		}
	}
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
		const double *v = sets[k];
#define FORMAT_DOUBLE(i, p) cmd_format_double(v[i], p)
		double ns = TIME_KIND(n, rounds, &bytes, FORMAT_DOUBLE);
		printf("  %-7s %6.1f ns/value  (%.1f characters)\n", kinds[k], ns,
		       (double)bytes / (double)n);
	}
	if (!only || !strcmp(only, "time")) {
		size_t bytes;
#define FORMAT_TIME(i, p) cmd_format_time(tm[i], p)
		printf("  %-7s %6.1f ns/value\n", "time",
		       TIME_KIND(n, rounds, &bytes, FORMAT_TIME));
	}
	if (!only || !strcmp(only, "row")) {
		tally_bucket *rows = make_rows(n, &s);
		if (!rows) {
			fprintf(stderr, "bench_format: out of memory\n");
			return 1;
		}
		check_rows(rows, n);
		size_t bytes;
#define FORMAT_ROW(i, p) (size_t)(cmd_put_bucket(p, &rows[i]) - (p))
		double ns = TIME_KIND(n, rounds, &bytes, FORMAT_ROW);
		printf("  %-7s %6.1f ns/row    (%.1f characters)\n", "row", ns,
		       (double)bytes / (double)n);
		free(rows);
	}
	free(sp);
	free(sum);
	free(avg);
	free(rnd);
	free(tm);
	return 0;
}
