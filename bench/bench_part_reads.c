/*
 * bench_part_reads.c — query latency with parts mapped against parts
 * read by pread (tally_options.part_reads), interleaved in one run.
 *
 * On a store `bench_dist --keep DIR` left (DIR/dist: the cameras x days
 * workload of docs/workload.md, speeds kept as distributions), each round
 * opens the store once per mode, in alternating order, reads a warm-up
 * pass, then times the same queries: a 5-minute series over a camera-day,
 * the exact aggregate over an unaligned range, a raw scan of a camera's
 * hour read to its end, and V85 over an unaligned range. A mode's figure
 * per query kind is the median of its rounds' p50s, beside the range of
 * those p50s, so that a neighbour's burst on a shared machine shows as
 * spread instead of as a difference. --cache-bytes sets the decoded-rollup
 * cache: small, every rollup query reads its blocks from the part.
 *
 * The one idea: both modes answer from the same files in the same page
 * cache, in alternating turns, so what differs is how the blocks reach
 * the decoder (in place through the map, or pread into a buffer).
 *
 *   bench_part_reads --reuse DIR [--rounds N] [--reps N] [--cache-bytes N]
 *                    [--cameras N] [--days N] (as bench_dist was given)
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tally.h"
#include "workload.h"
#include "benchutil.h"

enum { Q_SERIES, Q_AGG, Q_SCAN, Q_V85, NQ };
static const char *const qname[NQ] = {"series 5m, camera-day", "agg, unaligned range",
				      "scan, camera-hour", "V85, unaligned range"};

typedef struct bench {
	wl_params p;
	const char *dir;
	unsigned reps;
	uint64_t cache_bytes;
} bench;

static tally_db *open_as(const bench *b, uint64_t reads)
{
	tally_options o;
	tally_options_init(&o);
	o.shards = 1;
	o.no_background = 1;
	o.distributions = "traffic.speed:0.1";
	o.part_reads = reads;
	o.cache_bytes = b->cache_bytes;
	o.log_fn = quiet_log;
	tally_db *db;
	int rc = tally_db_open(b->dir, &o, &db);
	if (rc)
		die_tally("open", rc);
	return db;
}

/* One query of kind q, chosen by r (the same r gives the same query in
 * either mode); returns a value that depends on the answer. */
static double one(tally_db *db, const bench *b, int q, unsigned r)
{
	uint64_t s = (uint64_t)r * 6364136223846793005ULL + 1442695040888963407ULL;
	unsigned cam = (unsigned)(s >> 33) % b->p.cameras, day = (unsigned)(s >> 20) % b->p.days;
	char key[WL_ID_MAX];
	wl_camera_id(cam, key);
	int64_t from = b->p.start_ns + (int64_t)day * WL_NS_PER_DAY, to = from + WL_NS_PER_DAY;
	/* unaligned: 2 h 17 min 3.5 s in, for 19 h 41 min */
	int64_t ufrom = from + INT64_C(8223500) * 1000000,
		uto = ufrom + INT64_C(70860) * 1000000000;
	int rc;
	double v = 0;
	switch (q) {
	case Q_SERIES: {
		tally_bucket out[288];
		size_t n;
		if ((rc = tally_query_series(db, "traffic", "speed", key, INT64_C(300000000000),
					     from, to, out, 288, &n)))
			die_tally("series", rc);
		v = n ? out[n - 1].agg.sum : 0;
		break;
	}
	case Q_AGG: {
		tally_agg a;
		if ((rc = tally_query_agg(db, "traffic", "speed", key, ufrom, uto, &a)))
			die_tally("agg", rc);
		v = a.sum;
		break;
	}
	case Q_SCAN: {
		tally_scan *sc;
		int64_t h = from + (int64_t)((s >> 8) % 24) * 3600 * INT64_C(1000000000);
		if ((rc = tally_scan_open(db, "traffic", key, h, h + 3600 * INT64_C(1000000000),
					  &sc)))
			die_tally("scan", rc);
		tally_row row;
		while ((rc = tally_scan_next(sc, &row)) == 1)
			v += row.values[0].v.f64;
		if (rc < 0)
			die_tally("scan_next", rc);
		tally_scan_close(sc);
		break;
	}
	default: {
		tally_dist *d;
		if ((rc = tally_query_dist(db, "traffic", "speed", key, ufrom, uto, &d)))
			die_tally("dist", rc);
		if (tally_dist_count(d) && (rc = tally_dist_quantile(d, 0.85, &v)))
			die_tally("quantile", rc);
		tally_dist_free(d);
	}
	}
	return v;
}

/* p50 of each kind over reps queries, after a warm-up pass over them */
static void round_of(const bench *b, uint64_t reads, double p50[NQ], double *sink)
{
	tally_db *db = open_as(b, reads);
	double *lat = malloc(b->reps * sizeof *lat);
	for (int q = 0; q < NQ; q++) {
		for (unsigned r = 0; r < b->reps; r++)
			*sink += one(db, b, q, r);
		for (unsigned r = 0; r < b->reps; r++) {
			uint64_t t0 = now_ns();
			*sink += one(db, b, q, r);
			lat[r] = (double)(now_ns() - t0) / 1e3;
		}
		p50[q] = pct(lat, (int)b->reps, 0.5);
	}
	free(lat);
	tally_db_close(db);
}

static double load1(void)
{
	double l = 0;
	FILE *f = fopen("/proc/loadavg", "r");
	if (f) {
		if (fscanf(f, "%lf", &l) != 1)
			l = 0;
		fclose(f);
	}
	return l;
}

int main(int argc, char **argv)
{
	bench b = {.reps = 400};
	wl_params_init(&b.p);
	b.p.cameras = 200; /* bench_dist's defaults */
	b.p.days = 7;
	b.p.per_day = 2000;
	unsigned rounds = 6;
	const char *reuse = NULL;
	static const struct option lo[] = {{"reuse", required_argument, NULL, 'U'},
					   {"rounds", required_argument, NULL, 'R'},
					   {"reps", required_argument, NULL, 'r'},
					   {"cache-bytes", required_argument, NULL, 'C'},
					   {"cameras", required_argument, NULL, 'c'},
					   {"days", required_argument, NULL, 'd'},
					   {NULL, 0, NULL, 0}};
	int c;
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 'U': reuse = optarg; break;
		case 'R': rounds = (unsigned)atoi(optarg); break;
		case 'r': b.reps = (unsigned)atoi(optarg); break;
		case 'C': b.cache_bytes = strtoull(optarg, NULL, 10); break;
		case 'c': b.p.cameras = (unsigned)atoi(optarg); break;
		case 'd': b.p.days = (unsigned)atoi(optarg); break;
		default: reuse = NULL; rounds = 0;
		}
	}
	char err[256];
	if (!reuse || !rounds || b.reps < 2 || wl_params_check(&b.p, err, sizeof err)) {
		fprintf(stderr, "usage: bench_part_reads --reuse DIR [--rounds N] [--reps N] "
				"[--cache-bytes N] [--cameras N] [--days N]\n"
				"(DIR as left by bench_dist --keep DIR)\n");
		return 2;
	}
	char dir[4096];
	snprintf(dir, sizeof dir, "%s/dist", reuse);
	b.dir = dir;
	static const uint64_t mode[2] = {TALLY_PART_READS_MMAP, TALLY_PART_READS_PREAD};
	static const char *const mname[2] = {"mmap", "pread"};
	double *p50[2][NQ], sink = 0, lmin = 1e9, lmax = 0;
	for (int m = 0; m < 2; m++)
		for (int q = 0; q < NQ; q++)
			p50[m][q] = malloc(rounds * sizeof(double));
	printf("bench_part_reads: %s, %u rounds x %u queries a kind, rollup cache %s\n", dir,
	       rounds, b.reps, b.cache_bytes ? "as given" : "default");
	for (unsigned r = 0; r < rounds; r++)
		for (int k = 0; k < 2; k++) {
			int m = (int)((r + (unsigned)k) % 2); /* mmap first, then pread first */
			double got[NQ], l = load1();
			lmin = l < lmin ? l : lmin;
			lmax = l > lmax ? l : lmax;
			round_of(&b, mode[m], got, &sink);
			printf("  round %u %-5s", r + 1, mname[m]);
			for (int q = 0; q < NQ; q++) {
				p50[m][q][r] = got[q];
				printf(" %8.1f", got[q]);
			}
			printf(" us (load %.1f)\n", l);
			fflush(stdout);
		}
	printf("\n| p50 per round, us | mmap median | mmap range | pread median | pread range | "
	       "pread/mmap |\n|---|---:|---:|---:|---:|---:|\n");
	for (int q = 0; q < NQ; q++) {
		double med[2];
		for (int m = 0; m < 2; m++)
			med[m] = pct(p50[m][q], (int)rounds, 0.5);
		printf("| %s | %.1f | %.1f-%.1f | %.1f | %.1f-%.1f | %.2f |\n", qname[q], med[0],
		       p50[0][q][0], p50[0][q][rounds - 1], med[1], p50[1][q][0],
		       p50[1][q][rounds - 1], med[1] / med[0]);
	}
	printf("\nload average (1 min) %.1f-%.1f during the rounds%s\n", lmin, lmax,
	       sink == 12345.678 ? " " : "");
	for (int m = 0; m < 2; m++)
		for (int q = 0; q < NQ; q++)
			free(p50[m][q]);
	return 0;
}
