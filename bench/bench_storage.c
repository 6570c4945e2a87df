/*
 * bench_storage.c — parts on disk: bytes per event, flush and merge
 * throughput, write amplification of the late workload, and query latency
 * with the data in parts.
 *
 * The workload is the benchmark's (tools/workload.c): N cameras, D days, E
 * events per camera per day at millisecond precision, speeds with one
 * decimal (per-camera base, rush-hour dips, noise); a tenth of the cameras
 * are offline for 3 hours a day and send that backlog after the last day,
 * when its partition is already sealed. Data goes in through the binary
 * API, then everything is flushed and merged, and the directory is
 * measured.
 *
 *   bench_storage [--cameras N] [--days D] [--events E] [--dir DIR] [--out FILE]
 *
 * The store is a new directory made inside DIR (default /tmp) and removed
 * at exit; DIR itself is never touched, so `--dir /tmp` is safe.
 */
#include <dirent.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tally.h"
#include "workload.h"
#include "benchutil.h"

static uint64_t rng_state = 0x243f6a8885a308d3ULL;
static uint64_t rnd(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static uint64_t du(const char *path)
{
	struct stat sb;
	if (lstat(path, &sb))
		return 0;
	if (!S_ISDIR(sb.st_mode))
		return (uint64_t)sb.st_size;
	uint64_t n = 0;
	DIR *d = opendir(path);
	struct dirent *e;
	while (d && (e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		char sub[4096];
		snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
		n += du(sub);
	}
	if (d)
		closedir(d);
	return n;
}

static void report(FILE *out, const char *what, double *lat, int n)
{
	qsort(lat, (size_t)n, sizeof *lat, cmp_d);
	double sum = 0;
	for (int i = 0; i < n; i++)
		sum += lat[i];
	fprintf(out, "| %-40s | %8.1f | %8.1f | %8.1f |\n", what, lat[n / 2] * 1e6,
		lat[(int)(n * 0.99)] * 1e6, sum / n * 1e6);
}

#define DIE(...)                                           \
	do {                                               \
		fprintf(stderr, __VA_ARGS__);              \
		fprintf(stderr, ": %s\n", tally_errmsg()); \
		exit(1);                                   \
	} while (0)

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *f)
{
	(void)st, (void)flag, (void)f;
	remove(path);
	return 0;
}

int main(int argc, char **argv)
{
	int cams = 1000, days = 3, events = 6000;
	const char *parent = "/tmp", *outp = NULL;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--cameras") && i + 1 < argc)
			cams = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--days") && i + 1 < argc)
			days = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--events") && i + 1 < argc)
			events = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--dir") && i + 1 < argc)
			parent = argv[++i];
		else if (!strcmp(argv[i], "--out") && i + 1 < argc)
			outp = argv[++i];
		else {
			fprintf(stderr,
				"usage: bench_storage [--cameras N] [--days D] [--events E] "
				"[--dir DIR] [--out FILE]\n");
			return 2;
		}
	}
	static char dir[4096];
	snprintf(dir, sizeof dir, "%s/tally-bench-storage-XXXXXX", parent);
	if (!mkdtemp(dir)) {
		fprintf(stderr, "bench_storage: cannot make a directory in %s\n", parent);
		return 1;
	}
	tally_options o;
	tally_options_init(&o);
	o.no_background = 1;
	o.table_keys = "traffic=camera";
	o.log_level = TALLY_LOG_WARN;
	tally_db *db;
	if (tally_db_open(dir, &o, &db))
		DIE("open %s", dir);
	tally_writer *w;
	tally_writer_open(db, 0, &w);
	wl_params wp;
	wl_params_init(&wp);
	wp.cameras = (unsigned)cams;
	wp.days = (unsigned)days;
	wp.per_day = (unsigned)events;
	char werr[160];
	if (wl_params_check(&wp, werr, sizeof werr)) {
		fprintf(stderr, "bench_storage: %s\n", werr);
		return 2;
	}
	const int64_t day0 = wp.start_ns;
	size_t per = (size_t)events;
	int64_t *ts = malloc(per * sizeof *ts);
	int32_t *tenths = malloc(per * sizeof *tenths);
	double *sp = malloc(per * sizeof *sp);
	uint64_t total = 0, late_total = 0;
	double t_ingest = 0, t_flush = 0, t_merge = 0;
	char key[32];
	for (int d = 0; d < days; d++) {
		double t0 = now_s();
		for (int c = 0; c < cams; c++) {
			wl_camera_id((unsigned)c, key);
			wl_day wd = {.ts = ts, .tenths = tenths};
			wl_gen_day(&wp, (unsigned)c, (unsigned)d, &wd);
			for (size_t i = 0; i < per; i++)
				sp[i] = tenths[i] / 10.0;
			/* the offline hours [b0, b1) are sent after the last day, below */
			tally_column col = {"speed", TALLY_T_F64, sp, NULL};
			tally_batch b = {"traffic", key, "camera", wd.b0, ts, 1, &col};
			if (wd.b0 && tally_write_batch(w, &b))
				DIE("write");
			tally_column col2 = {"speed", TALLY_T_F64, sp + wd.b1, NULL};
			tally_batch b2 = {"traffic",  key, "camera", per - wd.b1,
					  ts + wd.b1, 1,   &col2};
			if (wd.b1 < per && tally_write_batch(w, &b2))
				DIE("write");
			total += per - (wd.b1 - wd.b0);
		}
		t_ingest += now_s() - t0;
		t0 = now_s();
		if (tally_db_flush(db))
			DIE("flush");
		t_flush += now_s() - t0;
		t0 = now_s();
		if (tally_db_merge(db))
			DIE("merge");
		t_merge += now_s() - t0;
	}
	/* the late backlog of every day, after the last day, when those
	 * partitions are sealed; regenerated (each camera-day is a pure
	 * function of its seed), the generating time left out of the rate */
	double t_late_gen = 0, t0 = now_s();
	for (int d = 0; d < days; d++) {
		for (int c = 0; c < cams; c++) {
			if (!wl_camera_offline(&wp, (unsigned)c))
				continue;
			double tg = now_s();
			wl_camera_id((unsigned)c, key);
			wl_day wd = {.ts = ts, .tenths = tenths};
			wl_gen_day(&wp, (unsigned)c, (unsigned)d, &wd);
			size_t ln = wd.b1 - wd.b0;
			for (size_t i = 0; i < ln; i++)
				sp[i] = tenths[wd.b0 + i] / 10.0;
			t_late_gen += now_s() - tg;
			tally_column lc = {"speed", TALLY_T_F64, sp, NULL};
			tally_batch lb = {"traffic", key, "camera", ln, ts + wd.b0, 1, &lc};
			if (ln && tally_write_batch(w, &lb))
				DIE("late write");
			late_total += ln;
		}
	}
	double t_late_ingest = now_s() - t0 - t_late_gen;
	t0 = now_s();
	if (tally_db_flush(db) || tally_db_merge(db))
		DIE("late flush/merge");
	double t_late_merge = now_s() - t0;
	tally_stats st;
	tally_db_stats(db, &st);
	uint64_t dir_bytes = du(dir);
	char parts_dir[4200];
	snprintf(parts_dir, sizeof parts_dir, "%s/parts", dir);
	uint64_t part_bytes = du(parts_dir);
	uint64_t events_all = total + late_total;

	/* queries with everything in parts */
	const int Q = 2000;
	double *lat = malloc(Q * sizeof *lat);
	tally_bucket *bk = malloc(4096 * sizeof *bk);
	FILE *out = stdout;
	char commit[64] = "unknown";
	FILE *g = popen("git rev-parse --short HEAD 2>/dev/null", "r");
	if (g) {
		if (fgets(commit, sizeof commit, g))
			commit[strcspn(commit, "\n")] = 0;
		pclose(g);
	}
	printf("\n## bench_storage — commit %s\n\n", commit);
	printf("workload: %d cameras x %d days x %d events/camera/day, 10%% of cameras send "
	       "3 h a day late (after sealing)\n\n",
	       cams, days, events);
	printf("| measure | value |\n|---|---|\n");
	printf("| events | %llu (%llu late) |\n", (unsigned long long)events_all,
	       (unsigned long long)late_total);
	printf("| binary ingest, 1 thread | %.2f M events/s |\n", (double)total / t_ingest / 1e6);
	printf("| flush | %.2f M events/s |\n", (double)total / t_flush / 1e6);
	printf("| merge/seal (per day) | %.2f s |\n", t_merge / days);
	printf("| late ingest | %.2f M events/s |\n", (double)late_total / t_late_ingest / 1e6);
	printf("| late flush + fold | %.2f s |\n", t_late_merge);
	printf("| parts | %llu (%llu sealed) |\n", (unsigned long long)st.parts,
	       (unsigned long long)st.sealed_parts);
	printf("| bytes/event, parts | %.3f |\n", (double)part_bytes / (double)events_all);
	printf("| bytes/event, whole directory | %.3f |\n", (double)dir_bytes / (double)events_all);
	printf("| write amplification | %.2f |\n", st.write_amplification);
	/* warm the decoded-rollup cache the way a dashboard would: every
	 * camera's day once (the cold figures are the first touch of each) */
	double tw = now_s();
	for (int d = 0; d < days; d++)
		for (int c = 0; c < cams; c++) {
			size_t n;
			wl_camera_id((unsigned)c, key);
			int64_t from = day0 + (int64_t)d * TALLY_1D;
			if (tally_query_series(db, "traffic", "speed", key, TALLY_5M, from,
					       from + TALLY_1D, bk, 4096, &n))
				DIE("warm");
		}
	printf("| cold 5m series (first touch, mean) | %.1f us |\n",
	       (now_s() - tw) / (days * cams) * 1e6);
	printf("\n| query (data in parts, cache warm) | p50 us | p99 us | mean us |\n"
	       "|---|---:|---:|---:|\n");
	for (int i = 0; i < Q; i++) {
		wl_camera_id((unsigned)(rnd() % (uint64_t)cams), key);
		int64_t from = day0 + (int64_t)(rnd() % (uint64_t)days) * TALLY_1D;
		size_t n;
		double a = now_s();
		if (tally_query_series(db, "traffic", "speed", key, TALLY_5M, from, from + TALLY_1D,
				       bk, 4096, &n))
			DIE("series");
		lat[i] = now_s() - a;
	}
	report(out, "5m series, one camera, one day (288)", lat, Q);
	for (int i = 0; i < Q; i++) {
		wl_camera_id((unsigned)(rnd() % (uint64_t)cams), key);
		size_t n;
		double a = now_s();
		if (tally_query_series(db, "traffic", "speed", key, TALLY_1H, day0,
				       day0 + days * TALLY_1D, bk, 4096, &n))
			DIE("series 1h");
		lat[i] = now_s() - a;
	}
	report(out, "1h series, one camera, all days", lat, Q);
	for (int i = 0; i < Q; i++) {
		wl_camera_id((unsigned)(rnd() % (uint64_t)cams), key);
		int64_t from = day0 + (int64_t)(rnd() % (uint64_t)(days * TALLY_1D - TALLY_1D));
		tally_agg ag;
		double a = now_s();
		if (tally_query_agg(db, "traffic", "speed", key, from,
				    from + (int64_t)(rnd() % (uint64_t)TALLY_1D), &ag))
			DIE("agg");
		lat[i] = now_s() - a;
	}
	report(out, "exact average, unaligned range", lat, Q);
	int QK = 50;
	for (int i = 0; i < QK; i++) {
		int64_t from = day0 + (int64_t)(rnd() % (uint64_t)(days * 24)) * TALLY_1H;
		tally_keys_iter *it;
		double a = now_s();
		if (tally_query_keys(db, "traffic", "speed", from, from + TALLY_1H, &it))
			DIE("keys");
		const char *k;
		tally_agg ag;
		while (tally_keys_next(it, &k, &ag) == 1)
			;
		tally_keys_close(it);
		lat[i] = now_s() - a;
	}
	report(out, "every camera, one hour", lat, QK);
	for (int i = 0; i < Q / 4; i++) {
		wl_camera_id((unsigned)(rnd() % (uint64_t)cams), key);
		int64_t from = day0 + (int64_t)(rnd() % (uint64_t)(days * 24)) * TALLY_1H;
		tally_scan *sc;
		double a = now_s();
		if (tally_scan_open(db, "traffic", key, from, from + TALLY_1H, &sc))
			DIE("scan");
		tally_row row;
		while (tally_scan_next(sc, &row) == 1)
			;
		tally_scan_close(sc);
		lat[i] = now_s() - a;
	}
	report(out, "raw scan, one camera, one hour", lat, Q / 4);
	if (outp) {
		/* one summary line per run, for keeping figures by commit */
		FILE *f = fopen(outp, "a");
		if (f) {
			fprintf(f,
				"bench_storage commit %s: %llu events, %.3f bytes/event parts, "
				"%.3f "
				"whole dir, WA %.2f\n",
				commit, (unsigned long long)events_all,
				(double)part_bytes / (double)events_all,
				(double)dir_bytes / (double)events_all, st.write_amplification);
			fclose(f);
		}
	}
	tally_writer_close(w);
	tally_db_close(db);
	nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS); /* the store made above */
	free(ts), free(tenths), free(sp), free(lat), free(bk);
	return 0;
}
