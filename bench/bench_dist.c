/*
 * bench_dist.c — what exact distributions cost and how fast V85 answers.
 *
 * The workload of docs/workload.md (cameras x days, one-decimal speeds, a
 * tenth of the cameras offline 3 hours a day and their backlog written
 * late) is ingested twice through the binary API, into a store without
 * and one with `traffic.speed:0.1` marked: the figures are the ingest
 * rate of each (wall time, one thread, one shard), the bytes per event of
 * their parts after a flush and merge, rollups included, and, on the
 * store with distributions, the in-process latency of V85 over a
 * camera-day (aligned: one 1d window from the parts) and over an unaligned
 * range (whole windows plus raw edges), p50 and p99 of --reps queries,
 * and of V85 per camera for all cameras of a day (--reps / 100 of them).
 * --keep DIR ingests into DIR (new or empty) and leaves it; --reuse DIR
 * then only runs the queries on it (bench/ab_dist).
 *
 * The one idea: the two stores get byte-identical input in the same
 * order, prepared before the clock starts, so the difference between the
 * two runs is the distributions' cost alone. Times are the thread's CPU
 * time, not wall time, so that a loaded machine's neighbours do not count.
 *
 *   bench_dist [--cameras N] [--days N] [--per-day N] [--reps N] [--dir D]
 *              [--keep DIR | --reuse DIR]
 */
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tally.h"
#include "workload.h"
#include "benchutil.h"

/* The thread's CPU time (user and system): on a shared, loaded machine
 * wall time measures the neighbours; one thread does all the work here. */
static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(p);
}

/* Bytes of the store's part files. */
static uint64_t parts_bytes(const char *dir)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/parts", dir);
	DIR *d = opendir(path);
	uint64_t total = 0;
	struct dirent *e;
	while (d && (e = readdir(d))) {
		struct stat st;
		char f[8192];
		snprintf(f, sizeof f, "%s/%s", path, e->d_name);
		if (strstr(e->d_name, ".part") && !stat(f, &st))
			total += (uint64_t)st.st_size;
	}
	if (d)
		closedir(d);
	return total;
}

typedef struct batch {
	char key[WL_ID_MAX];
	uint32_t n;
	int64_t *ts;
	double *v;
} batch;

/* The input, in write order: per camera-day, the on-time events, then
 * (after all cameras' days) the backlogs. */
static batch *make_input(const wl_params *p, size_t *nb, uint64_t *events)
{
	size_t cap = (size_t)p->cameras * p->days * 2, n = 0;
	batch *b = calloc(cap, sizeof *b);
	*events = 0;
	wl_day d;
	memset(&d, 0, sizeof d);
	d.ts = malloc(p->per_day * sizeof *d.ts);
	d.tenths = malloc(p->per_day * sizeof *d.tenths);
	for (int late = 0; late < 2; late++)
		for (unsigned day = 0; day < p->days; day++)
			for (unsigned cam = 0; cam < p->cameras; cam++) {
				wl_gen_day(p, cam, day, &d);
				uint32_t from = late ? d.b0 : 0, to = late ? d.b1 : p->per_day;
				batch *x = &b[n];
				wl_camera_id(cam, x->key);
				x->ts = malloc(p->per_day * sizeof *x->ts);
				x->v = malloc(p->per_day * sizeof *x->v);
				for (uint32_t i = 0; i < p->per_day; i++) {
					int in_backlog = i >= d.b0 && i < d.b1;
					if (i < from || i >= to || (!late && in_backlog))
						continue;
					x->ts[x->n] = d.ts[i];
					x->v[x->n++] = d.tenths[i] / 10.0;
				}
				*events += x->n;
				if (x->n)
					n++;
				else {
					free(x->ts);
					free(x->v);
				}
			}
	free(d.ts);
	free(d.tenths);
	*nb = n;
	return b;
}

/* Writes the input; the write calls' time, and *t_flush that of the
 * flush and merge after them (where a distribution's windows are built
 * from the rows). */
static double ingest(const char *dir, const char *dists, const batch *b, size_t nb, tally_db **out,
		     double *t_flush)
{
	tally_options o;
	tally_options_init(&o);
	o.shards = 1;
	o.no_background = 1;
	o.memory_limit = UINT64_C(16) << 30;
	o.distributions = dists;
	int rc = tally_db_open(dir, &o, out);
	if (rc)
		die_tally("open", rc);
	tally_writer *w;
	if ((rc = tally_writer_open(*out, 0, &w)))
		die_tally("writer", rc);
	double t0 = now_s();
	for (size_t i = 0; i < nb; i++) {
		tally_column col = {"speed", TALLY_T_F64, b[i].v, NULL};
		tally_batch bt = {.table = "traffic",
				  .key = b[i].key,
				  .key_tag = "camera",
				  .n_rows = b[i].n,
				  .ts = b[i].ts,
				  .n_columns = 1,
				  .columns = &col};
		if ((rc = tally_write_batch(w, &bt)))
			die_tally("write", rc);
	}
	double t = now_s() - t0;
	tally_writer_close(w);
	t0 = now_s();
	if ((rc = tally_db_flush(*out)) || (rc = tally_db_merge(*out)))
		die_tally("flush/merge", rc);
	*t_flush = now_s() - t0;
	return t;
}

static void v85_latency(tally_db *db, const wl_params *p, int aligned, unsigned reps)
{
	double *lat = malloc(reps * sizeof *lat);
	uint64_t seed = 12345, vals = 0;
	for (unsigned r = 0; r < reps; r++) {
		seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
		unsigned cam = (unsigned)(seed >> 33) % p->cameras;
		unsigned day = (unsigned)(seed >> 20) % p->days;
		char key[WL_ID_MAX];
		wl_camera_id(cam, key);
		int64_t from = p->start_ns + (int64_t)day * WL_NS_PER_DAY,
			to = from + WL_NS_PER_DAY;
		if (!aligned) { /* 2 h 17 min 3.5 s in, for 19 h 41 min */
			from += INT64_C(8223500) * 1000000;
			to = from + INT64_C(70860) * 1000000000;
		}
		double t0 = now_s(), v;
		tally_dist *d;
		int rc = tally_query_dist(db, "traffic", "speed", key, from, to, &d);
		if (rc)
			die_tally("query_dist", rc);
		if (tally_dist_count(d) && (rc = tally_dist_quantile(d, 0.85, &v)))
			die_tally("quantile", rc);
		vals += tally_dist_count(d);
		tally_dist_free(d);
		lat[r] = (now_s() - t0) * 1e6;
	}
	qsort(lat, reps, sizeof *lat, cmp_d);
	printf("  V85 %-28s p50 %6.1f us  p99 %6.1f us  (%u queries, %.0f values each)\n",
	       aligned ? "over a camera-day:" : "over an unaligned range:", lat[reps / 2],
	       lat[reps * 99 / 100], reps, (double)vals / reps);
	free(lat);
}

/* V85 per camera over one day for every camera, as a dashboard's table
 * or InfluxQL's PERCENTILE("speed", 85) ... GROUP BY "camera" asks it:
 * the day's keys (tally_query_keys), then each one's distribution. The
 * figure is the whole grouped answer's time, and that per camera. */
static void v85_grouped(tally_db *db, const wl_params *p, unsigned reps)
{
	double *lat = malloc(reps * sizeof *lat);
	uint64_t keys = 0;
	for (unsigned r = 0; r < reps; r++) {
		int64_t from = p->start_ns + (int64_t)(r % p->days) * WL_NS_PER_DAY,
			to = from + WL_NS_PER_DAY;
		double t0 = now_s(), v, sum = 0;
		tally_keys_iter *it;
		int rc = tally_query_keys(db, "traffic", "speed", from, to, &it);
		if (rc)
			die_tally("query_keys", rc);
		const char *key;
		tally_agg ag;
		while ((rc = tally_keys_next(it, &key, &ag)) == 1) {
			tally_dist *d;
			if ((rc = tally_query_dist(db, "traffic", "speed", key, from, to, &d)))
				die_tally("query_dist", rc);
			if ((rc = tally_dist_quantile(d, 0.85, &v)))
				die_tally("quantile", rc);
			sum += v;
			keys++;
			tally_dist_free(d);
		}
		tally_keys_close(it);
		if (rc < 0)
			die_tally("keys_next", rc);
		lat[r] = (now_s() - t0) * 1e6;
		if (sum < 0) /* keeps the answers computed */
			printf("?");
	}
	qsort(lat, reps, sizeof *lat, cmp_d);
	double per = (double)keys / reps;
	printf("  V85 per camera, all cameras, a day: p50 %8.1f us  p99 %8.1f us  (%u queries, "
	       "%.0f cameras each: %.1f us a camera)\n",
	       lat[reps / 2], lat[reps * 99 / 100], reps, per, lat[reps / 2] / per);
	free(lat);
}

/* The query figures alone, on a store a run with --keep left in dir
 * (--reuse dir): old and new builds answer the same store in turns,
 * without ingesting it again each time. */
static void query_figures(tally_db *db, const wl_params *p, unsigned reps)
{
	v85_latency(db, p, 1, reps);
	v85_latency(db, p, 0, reps);
	v85_grouped(db, p, reps / 100 ? reps / 100 : 1);
}

static tally_db *reopen(const char *dir)
{
	tally_options o;
	tally_options_init(&o);
	o.shards = 1;
	o.no_background = 1;
	o.distributions = "traffic.speed:0.1";
	tally_db *db;
	int rc = tally_db_open(dir, &o, &db);
	if (rc)
		die_tally("open", rc);
	return db;
}

int main(int argc, char **argv)
{
	wl_params p;
	wl_params_init(&p);
	p.cameras = 200;
	p.days = 7;
	p.per_day = 2000;
	unsigned reps = 2000;
	const char *parent = "/tmp", *keep = NULL, *reuse = NULL;
	static const struct option lo[] = {
		{"cameras", required_argument, NULL, 'c'}, {"days", required_argument, NULL, 'd'},
		{"per-day", required_argument, NULL, 'p'}, {"reps", required_argument, NULL, 'r'},
		{"dir", required_argument, NULL, 'D'},     {"keep", required_argument, NULL, 'K'},
		{"reuse", required_argument, NULL, 'U'},   {NULL, 0, NULL, 0}};
	int c;
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 'c': p.cameras = (unsigned)atoi(optarg); break;
		case 'd': p.days = (unsigned)atoi(optarg); break;
		case 'p': p.per_day = (unsigned)atoi(optarg); break;
		case 'r': reps = (unsigned)atoi(optarg); break;
		case 'D': parent = optarg; break;
		case 'K': keep = optarg; break;
		case 'U': reuse = optarg; break;
		default:
			fprintf(stderr, "usage: bench_dist [--cameras N] [--days N] [--per-day N] "
					"[--reps N] [--dir DIR] [--keep DIR | --reuse DIR]\n");
			return 2;
		}
	}
	char err[256];
	if (wl_params_check(&p, err, sizeof err) || !reps) {
		fprintf(stderr, "bench_dist: %s\n", reps ? err : "--reps must be positive");
		return 2;
	}
	char dir[4096];
	if (reuse) {
		snprintf(dir, sizeof dir, "%s/dist", reuse);
		printf("bench_dist: queries on %s (%u cameras x %u days; thread CPU time)\n", dir,
		       p.cameras, p.days);
		tally_db *db = reopen(dir);
		query_figures(db, &p, reps);
		tally_db_close(db);
		return 0;
	}
	snprintf(dir, sizeof dir, "%s/tally-bench-dist.XXXXXX", parent);
	if (keep)
		snprintf(dir, sizeof dir, "%s", keep);
	if (keep ? mkdir(dir, 0755) && errno != EEXIST : !mkdtemp(dir)) {
		fprintf(stderr, "bench_dist: cannot create %s: %s\n", dir, strerror(errno));
		return 1;
	}
	size_t nb;
	uint64_t events;
	batch *b = make_input(&p, &nb, &events);
	printf("bench_dist: %u cameras x %u days x %u events a day = %llu events "
	       "(binary API, 1 thread, 1 shard; thread CPU time)\n",
	       p.cameras, p.days, p.per_day, (unsigned long long)events);
	char d0[4200], d1[4200];
	snprintf(d0, sizeof d0, "%s/plain", dir);
	snprintf(d1, sizeof d1, "%s/dist", dir);
	tally_db *db0, *db1;
	double f0, f1;
	double t0 = ingest(d0, NULL, b, nb, &db0, &f0);
	double t1 = ingest(d1, "traffic.speed:0.1", b, nb, &db1, &f1);
	double bpe0 = (double)parts_bytes(d0) / (double)events;
	double bpe1 = (double)parts_bytes(d1) / (double)events;
	printf("  ingest, no distributions:      %10.0f events/s\n", (double)events / t0);
	printf("  ingest, speed distributions:   %10.0f events/s (%.0f%% of it)\n",
	       (double)events / t1, 100 * t0 / t1);
	printf("  ingest and flush+merge, no distributions:    %10.0f events/s\n",
	       (double)events / (t0 + f0));
	printf("  ingest and flush+merge, speed distributions: %10.0f events/s (%.0f%% of it)\n",
	       (double)events / (t1 + f1), 100 * (t0 + f0) / (t1 + f1));
	printf("  parts, no distributions:       %6.3f bytes/event\n", bpe0);
	printf("  parts, speed distributions:    %6.3f bytes/event (+%.3f)\n", bpe1, bpe1 - bpe0);
	tally_db_close(db0);
	query_figures(db1, &p, reps);
	tally_db_close(db1);
	for (size_t i = 0; i < nb; i++) {
		free(b[i].ts);
		free(b[i].v);
	}
	free(b);
	if (!keep)
		nftw(dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
	return 0;
}
