/*
 * bench_tags.c — what series keyed by several tags cost, and how fast
 * subset and grouped queries answer.
 *
 * The benchmark's camera workload with a lane tag: C cameras x L lanes,
 * E events per camera a day for D days, written twice into fresh stores:
 * keyed by camera alone (today's default; lanes merge into one series)
 * and by camera+lane (C x L series). For each it prints memory per
 * series (the table's key set and the shards' key states, tally_stats
 * key_bytes; the memtable's rollups), index bytes per series and part
 * bytes per event after a flush and merge; then, for camera+lane, the
 * latency of a full-key aggregate, a one-camera subset (L series
 * merged), an all-keys query, and all-keys queries grouped by lane and
 * by camera, over one day.
 *
 *   bench_tags [--cameras C] [--lanes L] [--per-day E] [--days D] [--reps R] [--dir DIR]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tally.h"
#include "benchutil.h"

#define T0 INT64_C(1748822400000000000) /* 2025-06-02 */

typedef struct cfg {
	long cams, lanes, per_day, days, reps;
	const char *dir;
} cfg;

static void write_all(tally_db *db, const cfg *c)
{
	tally_writer *w;
	int rc = tally_writer_open(db, -1, &w);
	if (rc)
		die_tally("writer", rc);
	size_t cap = 1 << 22, len = 0;
	char *buf = malloc(cap);
	uint64_t x = 88172645463325252ULL;
	int64_t gap = INT64_C(86400000000000) / c->per_day;
	for (long d = 0; d < c->days; d++)
		for (long i = 0; i < c->per_day; i++)
			for (long k = 0; k < c->cams; k++) {
				x ^= x << 13, x ^= x >> 7, x ^= x << 17;
				unsigned v = 300 + (unsigned)(x % 900);
				int64_t ts = T0 + d * INT64_C(86400000000000) + i * gap + k;
				len += (size_t)sprintf(
					buf + len,
					"traffic,camera=KV%05ld,lane=%ld speed=%u.%u "
					"%lld\n",
					k, 1 + (long)((x >> 20) % (uint64_t)c->lanes), v / 10,
					v % 10, (long long)ts);
				if (len > cap - 256) {
					if ((rc = tally_write_lp(w, buf, len, TALLY_PREC_NS, NULL)))
						die_tally("write", rc);
					len = 0;
				}
			}
	if (len && (rc = tally_write_lp(w, buf, len, TALLY_PREC_NS, NULL)))
		die_tally("write", rc);
	free(buf);
	tally_writer_close(w);
}

/* p50 of reps calls of fn, microseconds. */
typedef int (*query_fn)(tally_db *db, const cfg *c, long i);

static double p50_us(tally_db *db, const cfg *c, query_fn fn, long reps)
{
	double *t = calloc((size_t)reps, sizeof *t);
	for (long r = 0; r < reps; r++) {
		double t0 = now_s();
		int rc = fn(db, c, r);
		if (rc)
			die_tally("query", rc);
		t[r] = now_s() - t0;
	}
	qsort(t, (size_t)reps, sizeof *t, cmp_d);
	double m = t[reps / 2] * 1e6;
	free(t);
	return m;
}

static int q_full(tally_db *db, const cfg *c, long i)
{
	char key[64];
	tally_agg a;
	sprintf(key, "camera=KV%05ld,lane=%ld", i % c->cams, 1 + i % c->lanes);
	return tally_query_agg(db, "traffic", "speed", key, T0, T0 + INT64_C(86400000000000), &a);
}

static int q_subset(tally_db *db, const cfg *c, long i)
{
	char key[64];
	tally_agg a;
	sprintf(key, "camera=KV%05ld", i % c->cams);
	return tally_query_agg(db, "traffic", "speed", key, T0, T0 + INT64_C(86400000000000), &a);
}

static int q_group(tally_db *db, const char *by)
{
	tally_keys_iter *it;
	int rc = tally_query_group(db, "traffic", "speed", NULL, by, T0,
				   T0 + INT64_C(86400000000000), &it);
	if (rc)
		return rc;
	const char *k;
	tally_agg a;
	while ((rc = tally_keys_next(it, &k, &a)) == 1)
		;
	tally_keys_close(it);
	return rc;
}

static int q_keys(tally_db *db, const cfg *c, long i)
{
	(void)c, (void)i;
	return q_group(db, NULL);
}

static int q_by_lane(tally_db *db, const cfg *c, long i)
{
	(void)c, (void)i;
	return q_group(db, "lane");
}

static int q_by_camera(tally_db *db, const cfg *c, long i)
{
	(void)c, (void)i;
	return q_group(db, "camera");
}

static void run(const cfg *c, const char *keys, const char *sub, int queries)
{
	char dir[4096];
	snprintf(dir, sizeof dir, "%s/%s", c->dir, sub);
	tally_options o;
	tally_options_init(&o);
	o.log_fn = quiet_log;
	o.no_background = 1;
	o.table_keys = keys;
	tally_db *db;
	int rc = tally_db_open(dir, &o, &db);
	if (rc)
		die_tally("open", rc);
	write_all(db, c);
	tally_stats m;
	if ((rc = tally_db_stats(db, &m)))
		die_tally("stats", rc);
	if ((rc = tally_db_flush(db)) || (rc = tally_db_merge(db)))
		die_tally("flush", rc);
	tally_stats p;
	if ((rc = tally_db_stats(db, &p)))
		die_tally("stats", rc);
	double ev = (double)p.events, n = (double)p.keys;
	printf("keyed by %-22s %8llu series: key memory %6.1f B/series, rollups in memory "
	       "%8.1f B/series, index %6.1f B/series, parts %.3f B/event\n",
	       keys + 8, (unsigned long long)p.keys, (double)m.key_bytes / n,
	       (double)m.rollup_bytes / n, (double)p.index_bytes / n, (double)p.part_bytes / ev);
	if (queries) {
		printf("  agg over a day, full key (camera=..,lane=..):   p50 %8.1f us\n",
		       p50_us(db, c, q_full, c->reps));
		printf("  agg over a day, one camera (%ld lanes merged):    p50 %8.1f us\n",
		       c->lanes, p50_us(db, c, q_subset, c->reps));
		long r = c->reps / 20 > 5 ? c->reps / 20 : 5;
		printf("  all keys over a day (%llu series):            p50 %8.1f us\n",
		       (unsigned long long)p.keys, p50_us(db, c, q_keys, r));
		printf("  all keys grouped by lane (%ld groups):           p50 %8.1f us\n",
		       c->lanes, p50_us(db, c, q_by_lane, r));
		printf("  all keys grouped by camera (%ld groups):      p50 %8.1f us\n", c->cams,
		       p50_us(db, c, q_by_camera, r));
	}
	tally_db_close(db);
}

int main(int argc, char **argv)
{
	cfg c = {1000, 4, 2000, 1, 2000, NULL};
	for (int i = 1; i < argc; i++) {
		long *v = !strcmp(argv[i], "--cameras")   ? &c.cams
			  : !strcmp(argv[i], "--lanes")   ? &c.lanes
			  : !strcmp(argv[i], "--per-day") ? &c.per_day
			  : !strcmp(argv[i], "--days")    ? &c.days
			  : !strcmp(argv[i], "--reps")    ? &c.reps
							  : NULL;
		if (v && i + 1 < argc && (*v = atol(argv[++i])) > 0)
			continue;
		if (!strcmp(argv[i], "--dir") && i + 1 < argc) {
			c.dir = argv[++i];
			continue;
		}
		fprintf(stderr, "usage: bench_tags [--cameras C] [--lanes L] [--per-day E] "
				"[--days D] [--reps R] [--dir DIR]\n");
		return 2;
	}
	char tmp[] = "/tmp/bench-tags-XXXXXX";
	if (!c.dir && !(c.dir = mkdtemp(tmp))) {
		perror("mkdtemp");
		return 1;
	}
	printf("bench_tags: %ld cameras x %ld lanes, %ld events per camera a day, %ld days "
	       "(1 shard, 1 thread)\n",
	       c.cams, c.lanes, c.per_day, c.days);
	run(&c, "traffic=camera", "camera", 0);
	run(&c, "traffic=camera+lane", "camera-lane", 1);
	if (c.dir == tmp) {
		char cmd[128];
		snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
		if (system(cmd))
			fprintf(stderr, "bench_tags: could not remove %s\n", tmp);
	}
	return 0;
}
