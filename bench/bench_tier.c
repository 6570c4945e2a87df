/*
 * bench_tier.c — tiering to object storage: upload throughput, and cold
 * raw scan latency with the bytes fetched against the bytes the scan's
 * blocks hold.
 *
 * It starts an S3-compatible server on a free loopback port
 * (tests/s3/server: s3rver by default, --server moto for moto_server with
 * signatures checked), or, with --external, the store named by
 * TALLY_S3_ENDPOINT, TALLY_S3_BUCKET, AWS_REGION, AWS_ACCESS_KEY_ID and
 * AWS_SECRET_ACCESS_KEY (read here: the library reads no environment).
 * Workload: C cameras x D days x E events per camera-day, millisecond
 * times with random gaps, speeds with one decimal. Everything but the last
 * day is sealed and tiered; then the store is reopened cold and S random
 * one-hour raw scans of tiered days are timed twice (cold: ranged GETs;
 * warm: from the block cache), plus rollup series of tiered days.
 *
 *   bench_tier [--cameras C] [--days D] [--events E] [--scans S]
 *              [--server s3rver|moto] [--external] [--dir DIR]
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "manifest.h"
#include "part.h"
#include "s3util.h"
#include "tally.h"
#include "benchutil.h"

static uint64_t rng = 0x243f6a8885a308d3ULL;
static uint64_t rnd(void)
{
	uint64_t z = (rng += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

#define T0 INT64_C(1699920000000000000)

/* Bytes of the column blocks a scan of key over [from, to) decodes. */
static uint64_t needed(const char *dir, const char *key, int64_t from, int64_t to)
{
	manifest man;
	if (manifest_load(dir, &man))
		return 0;
	uint64_t need = 0;
	for (uint32_t i = 0; i < man.n_parts; i++) {
		if (man.parts[i].tier != MTIER_REMOTE)
			continue;
		char path[4300];
		snprintf(path, sizeof path, "%s/parts/%016llx.stub", dir,
			 (unsigned long long)man.parts[i].id);
		part *p;
		if (part_open(path, &p))
			continue;
		const part_key *pk = part_find_key(p, key, (uint32_t)strlen(key));
		for (uint32_t s = 0; pk && s < pk->n_stripes; s++) {
			const part_stripe *st = &p->stripes[pk->first_stripe + s];
			if (st->tmax < from || st->tmin >= to)
				continue;
			for (uint32_t c = 0; c <= p->info.n_cols; c++)
				if (p->refs[st->first_ref + c].len)
					need += p->refs[st->first_ref + c].len + 8;
		}
		part_close(p);
	}
	manifest_free(&man);
	return need;
}

int main(int argc, char **argv)
{
	int cameras = 200, days = 4, events = 20000, scans = 200, external = 0;
	const char *kind = "s3rver", *base = ".";
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--cameras") && i + 1 < argc)
			cameras = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--days") && i + 1 < argc)
			days = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--events") && i + 1 < argc)
			events = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--scans") && i + 1 < argc)
			scans = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--server") && i + 1 < argc)
			kind = argv[++i];
		else if (!strcmp(argv[i], "--dir") && i + 1 < argc)
			base = argv[++i];
		else if (!strcmp(argv[i], "--external"))
			external = 1;
		else {
			fprintf(stderr,
				"usage: %s [--cameras C] [--days D] [--events E] [--scans S] "
				"[--server s3rver|moto] [--external] [--dir DIR]\n",
				argv[0]);
			return 2;
		}
	}
	if (days < 2 || cameras < 1 || events < 1 || scans < 1) {
		fprintf(stderr, "bench_tier: need at least 2 days, 1 camera, 1 event, 1 scan\n");
		return 2;
	}
	s3srv srv = {0};
	tally_options o;
	tally_options_init(&o);
	o.no_background = 1;
	o.tier_after = 1;
	char prefix[64];
	snprintf(prefix, sizeof prefix, "bench%d-", getpid());
	o.tier_prefix = prefix;
	if (!external) {
		int rc = s3srv_start(&srv, kind);
		if (rc) {
			fprintf(stderr, "bench_tier: %s did not start (%d)\n", kind, rc);
			return rc == 77 ? 77 : 1;
		}
		o.tier_bucket = srv.bucket;
		o.tier_endpoint = srv.endpoint;
		o.tier_region = srv.region;
		o.tier_access_key = srv.access_key;
		o.tier_secret_key = srv.secret_key;
	} else {
		o.tier_endpoint = getenv("TALLY_S3_ENDPOINT");
		o.tier_bucket = getenv("TALLY_S3_BUCKET");
		o.tier_region = getenv("AWS_REGION");
		o.tier_access_key = getenv("AWS_ACCESS_KEY_ID");
		o.tier_secret_key = getenv("AWS_SECRET_ACCESS_KEY");
		if (!o.tier_bucket) {
			fprintf(stderr, "bench_tier: --external needs TALLY_S3_BUCKET\n");
			return 2;
		}
	}
	char dir[4200];
	snprintf(dir, sizeof dir, "%s/bench-tier-%d", base, getpid());
	tally_db *db;
	if (tally_db_open(dir, &o, &db)) {
		fprintf(stderr, "bench_tier: open: %s\n", tally_errmsg());
		s3srv_destroy(&srv);
		return 1;
	}
	/* ingest through the binary API, one camera-day per batch */
	int64_t *ts = malloc((size_t)events * sizeof *ts);
	double *sp = malloc((size_t)events * sizeof *sp);
	tally_writer *w;
	tally_writer_open(db, 0, &w);
	double t_ing = now_s();
	for (int d = 0; d < days; d++)
		for (int c = 0; c < cameras; c++) {
			char key[16];
			snprintf(key, sizeof key, "KV%05d", c);
			int64_t t = T0 + d * TALLY_1D;
			double gap = (double)TALLY_1D / events / 1e6; /* mean gap, ms */
			for (int e = 0; e < events; e++) {
				double u = (double)((rnd() >> 11) + 1) / 9007199254740993.0;
				t += (int64_t)(-log(u) * gap) * 1000000 + 1000000;
				if (t >= T0 + (d + 1) * TALLY_1D)
					t = T0 + (d + 1) * TALLY_1D - 1;
				ts[e] = t;
				sp[e] = (double)(600 + (int64_t)(rnd() % 600)) / 10.0;
			}
			tally_column col = {"speed", TALLY_T_F64, sp, NULL};
			tally_batch b = {"traffic", key, "camera", (size_t)events, ts, 1, &col};
			if (tally_write_batch(w, &b)) {
				fprintf(stderr, "bench_tier: write: %s\n", tally_errmsg());
				return 1;
			}
		}
	tally_writer_close(w);
	t_ing = now_s() - t_ing;
	double t_fm = now_s();
	if (tally_db_flush(db) || tally_db_merge(db)) {
		fprintf(stderr, "bench_tier: flush/merge: %s\n", tally_errmsg());
		return 1;
	}
	t_fm = now_s() - t_fm;
	double t_up = now_s();
	if (tally_db_tier(db)) {
		fprintf(stderr, "bench_tier: tier: %s\n", tally_errmsg());
		return 1;
	}
	t_up = now_s() - t_up;
	tally_stats st;
	tally_db_stats(db, &st);
	uint64_t total = (uint64_t)cameras * days * events;
	printf("bench_tier: %d cameras x %d days x %d events = %llu events; server %s\n", cameras,
	       days, events, (unsigned long long)total, external ? "external" : kind);
	printf("  ingest %.2f s, flush+merge %.2f s\n", t_ing, t_fm);
	printf("  upload: %llu parts, %.1f MB in %.2f s = %.1f MB/s (%.0f events/s), %llu S3 "
	       "requests\n",
	       (unsigned long long)st.tier_uploads, (double)st.tier_upload_bytes / 1e6, t_up,
	       (double)st.tier_upload_bytes / 1e6 / t_up,
	       (double)st.tier_upload_bytes / ((double)st.part_bytes + st.remote_bytes) * total /
		       t_up,
	       (unsigned long long)st.s3_requests);
	printf("  on disk after tiering: %.1f MB local (stubs + open day), %.1f MB remote\n",
	       (double)st.part_bytes / 1e6, (double)st.remote_bytes / 1e6);
	tally_db_close(db);
	/* cold scans: a fresh open, then the same scans warm */
	if (tally_db_open(dir, &o, &db)) {
		fprintf(stderr, "bench_tier: reopen: %s\n", tally_errmsg());
		return 1;
	}
	double *cold = malloc((size_t)scans * sizeof *cold),
	       *warm = malloc((size_t)scans * sizeof *warm);
	int *cam = malloc((size_t)scans * sizeof *cam);
	int64_t *from = malloc((size_t)scans * sizeof *from);
	uint64_t need = 0, rows = 0;
	for (int i = 0; i < scans; i++) {
		cam[i] = (int)(rnd() % (uint64_t)cameras);
		from[i] = T0 + (int64_t)(rnd() % (uint64_t)(days - 1)) * TALLY_1D +
			  (int64_t)(rnd() % 23) * TALLY_1H;
	}
	tally_stats a, b;
	tally_db_stats(db, &a);
	for (int pass = 0; pass < 2; pass++)
		for (int i = 0; i < scans; i++) {
			char key[16];
			snprintf(key, sizeof key, "KV%05d", cam[i]);
			double t = now_s();
			tally_scan *sc;
			if (tally_scan_open(db, "traffic", key, from[i], from[i] + TALLY_1H, &sc)) {
				fprintf(stderr, "bench_tier: scan: %s\n", tally_errmsg());
				return 1;
			}
			tally_row row;
			while (tally_scan_next(sc, &row) == 1)
				rows += !pass;
			tally_scan_close(sc);
			(pass ? warm : cold)[i] = (now_s() - t) * 1e6;
			if (!pass)
				need += needed(dir, key, from[i], from[i] + TALLY_1H);
			if (!pass && i == scans - 1)
				tally_db_stats(db, &b);
		}
	printf("  cold 1-hour raw scans (%d, %llu rows): p50 %.0f us, p99 %.0f us; %llu GETs, "
	       "%.1f KB fetched, %.1f KB needed (ratio %.3f)\n",
	       scans, (unsigned long long)rows, pct(cold, scans, 0.5), pct(cold, scans, 0.99),
	       (unsigned long long)(b.cold_reads - a.cold_reads),
	       (double)(b.cold_read_bytes - a.cold_read_bytes) / 1e3, (double)need / 1e3,
	       need ? (double)(b.cold_read_bytes - a.cold_read_bytes) / (double)need : 0.0);
	printf("  warm (cached) repeats: p50 %.0f us, p99 %.0f us; cache %.1f MB\n",
	       pct(warm, scans, 0.5), pct(warm, scans, 0.99), (double)(b.cold_cache_bytes) / 1e6);
	/* rollups of tiered days never touch the store */
	double *ser = malloc((size_t)scans * sizeof *ser);
	tally_stats c;
	tally_db_stats(db, &c);
	for (int i = 0; i < scans; i++) {
		char key[16];
		snprintf(key, sizeof key, "KV%05d", cam[i]);
		tally_bucket bk[288];
		size_t n;
		int64_t day = T0 + (from[i] - T0) / TALLY_1D * TALLY_1D;
		double t = now_s();
		tally_query_series(db, "traffic", "speed", key, TALLY_5M, day, day + TALLY_1D, bk,
				   288, &n);
		ser[i] = (now_s() - t) * 1e6;
	}
	tally_stats d;
	tally_db_stats(db, &d);
	printf("  5m series of a tiered day: p50 %.1f us, p99 %.1f us; S3 requests during them: "
	       "%llu\n",
	       pct(ser, scans, 0.5), pct(ser, scans, 0.99),
	       (unsigned long long)(d.s3_requests - c.s3_requests));
	tally_db_close(db);
	char cmd[4300];
	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	if (system(cmd)) {
	}
	s3srv_destroy(&srv);
	free(ts);
	free(sp);
	free(cold);
	free(warm);
	free(cam);
	free(from);
	free(ser);
	return 0;
}
