/*
 * testutil.h — helpers shared by the Criterion tests: temporary
 * directories, a seeded PRNG, and a quiet log sink.
 */
#ifndef TALLY_TESTUTIL_H
#define TALLY_TESTUTIL_H

#include <dirent.h>
#include <ftw.h>
#include <stdint.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tally.h"

static inline int tu_rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(p);
}

static inline void tu_rmrf(const char *dir)
{
	nftw(dir, tu_rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

/* A fresh directory under /tmp; the caller frees and removes it. */
static inline char *tu_tmpdir(void)
{
	char *d = strdup("/tmp/tally-test-XXXXXX");
	if (!mkdtemp(d)) {
		perror("mkdtemp");
		abort();
	}
	return d;
}

/* The files in dir whose names contain infix: how many; the path of the
 * last one seen goes to out. */
static inline int tu_find_files(const char *dir, const char *infix, char *out, size_t cap)
{
	DIR *d = opendir(dir);
	int n = 0;
	struct dirent *e;
	while (d && (e = readdir(d)))
		if (strstr(e->d_name, infix) &&
		    snprintf(out, cap, "%s/%s", dir, e->d_name) < (int)cap)
			n++; /* a path too long for out is not counted */
	if (d)
		closedir(d);
	return n;
}

/* xoshiro-like splitmix64: small, seedable, good enough for tests */
typedef struct tu_rng {
	uint64_t s;
} tu_rng;

static inline uint64_t tu_next(tu_rng *r)
{
	uint64_t z = (r->s += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static inline uint64_t tu_below(tu_rng *r, uint64_t n)
{
	return n ? tu_next(r) % n : 0;
}

/* Seed from TALLY_SEED, else from the clock; printed so a failure can be
 * replayed. */
static inline uint64_t tu_seed(const char *test)
{
	const char *e = getenv("TALLY_SEED");
	uint64_t s = e ? strtoull(e, NULL, 0) : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
	fprintf(stderr, "%s: TALLY_SEED=%llu\n", test, (unsigned long long)s);
	return s;
}

static inline void tu_quiet_log(void *ctx, int level, const char *msg)
{
	(void)ctx;
	(void)level;
	(void)msg;
}

/* Options for tests: no background threads (flushes and merges happen
 * when the test calls them) and no log output. */
static inline tally_options tu_quiet_opts(void)
{
	tally_options o;
	tally_options_init(&o);
	o.log_fn = tu_quiet_log;
	o.no_background = 1;
	return o;
}

/* Writes len bytes of line protocol (nanosecond times) through a writer
 * of its own and syncs. Returns the lines accepted, or -1 when a call
 * failed (tally_errmsg says why). */
static inline int64_t tu_write_synced(tally_db *db, const char *lp, size_t len)
{
	tally_writer *w;
	tally_write_result r = {0};
	if (tally_writer_open(db, -1, &w))
		return -1;
	int rc = tally_write_lp(w, lp, len, TALLY_PREC_NS, &r);
	tally_writer_close(w);
	if (rc || tally_db_sync(db))
		return -1;
	return (int64_t)r.accepted;
}

/* The events of one key in table.field over all time, counted twice: by
 * the exact aggregate (*agg, from rollups) and by a raw scan (*rows). */
static inline int tu_count_key(tally_db *db, const char *table, const char *field, const char *key,
			       uint64_t *agg, uint64_t *rows)
{
	tally_agg a;
	int rc = tally_query_agg(db, table, field, key, INT64_MIN, INT64_MAX, &a);
	if (rc)
		return rc;
	*agg = a.count;
	tally_scan *sc;
	if ((rc = tally_scan_open(db, table, key, INT64_MIN, INT64_MAX, &sc)))
		return rc;
	tally_row row;
	*rows = 0;
	while ((rc = tally_scan_next(sc, &row)) == 1)
		(*rows)++;
	tally_scan_close(sc);
	return rc < 0 ? rc : 0;
}

/* Adds value v to a brute-force aggregate (start from TU_AGG_EMPTY). */
#define TU_AGG_EMPTY ((tally_agg){0, 0, NAN, NAN, NAN})
static inline void tu_agg_add(tally_agg *a, double v)
{
	if (!a->count || v < a->min)
		a->min = v;
	if (!a->count || v > a->max)
		a->max = v;
	a->count++;
	a->sum += v;
	a->avg = a->sum / (double)a->count;
}

/* The nearest rank of quantile q of n values (tally_dist_quantile):
 * ceil(q * n) for the double q, exactly (q = m / 2^s), at least 1. */
static inline uint64_t tu_exact_rank(double q, uint64_t n)
{
	__extension__ typedef unsigned __int128 u128;
	int e;
	double f = frexp(q, &e); /* q = f * 2^e, f in [0.5, 1) */
	u128 m = (u128)ldexp(f, 53);
	int s = 53 - e;
	u128 prod = m * n;
	uint64_t r =
		s <= 0 ? (uint64_t)(prod << -s) : (uint64_t)((prod + (((u128)1 << s) - 1)) >> s);
	return q == 0 || r < 1 ? 1 : r;
}

#ifdef TALLY_SOURCE_DIR
/* A saved store tests/data/NAME: its ANSWERS file's text (malloc'ed), and
 * a copy of its files but ANSWERS into dir. */
static inline char *tu_fixture_answers(const char *name)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/tests/data/%s/ANSWERS", TALLY_SOURCE_DIR, name);
	FILE *f = fopen(path, "r");
	if (!f)
		return NULL;
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	char *s = n >= 0 ? malloc((size_t)n + 1) : NULL;
	if (s && fread(s, 1, (size_t)n, f) == (size_t)n)
		s[n] = 0;
	else if (s) {
		free(s);
		s = NULL;
	}
	fclose(f);
	return s;
}

static inline int tu_copy_fixture(const char *name, const char *dir)
{
	char cmd[9000];
	snprintf(cmd, sizeof cmd, "cp -r %s/tests/data/%s/. %s/ && rm -f %s/ANSWERS",
		 TALLY_SOURCE_DIR, name, dir, dir);
	return system(cmd);
}
#endif

#endif
