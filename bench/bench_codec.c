/*
 * bench_codec.c — bytes per event and speed of the column encodings on the
 * speed-camera workload.
 *
 * Generates one day per camera the way tools/tally_demo.c does (traffic
 * volume and free-flow speed by hour of day, stratified event times with
 * millisecond precision, speeds with one decimal around a per-camera base
 * of 60-110 km/h, 8% noise), optionally with Poisson arrivals, a
 * nanosecond jitter on the times, a lane tag and a plate string. Each
 * camera's rows are sorted by time and cut into blocks of --block rows (a
 * block never spans two keys, as in a part), every column is encoded with
 * codec_encode, decoded back and compared, and the program prints bytes
 * per event per column, the encodings chosen, and encode/decode rates.
 * Then the same data under each zstd level, and under other block sizes.
 *
 *   bench_codec [--cameras N] [--events N] [--block N] [--zstd L]
 *               [--poisson] [--jitter] [--lanes] [--plates] [--seed S]
 *               [--quick]
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec.h"
#include "err.h"

#define NS_PER_MS INT64_C(1000000)
#define DAY0      INT64_C(1748822400000000000) /* 2025-06-02 00:00 UTC */

typedef struct bench_opts {
	unsigned cameras, events, block;
	int zstd, poisson, jitter, lanes, plates, quick;
	uint64_t seed;
} bench_opts;

/* ---------------------------------------------------------------- data */

static uint64_t rng_next(uint64_t *s)
{
	uint64_t z = (*s += UINT64_C(0x9e3779b97f4a7c15));
	z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
	z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
	return z ^ (z >> 31);
}

static double rng_unit(uint64_t *s)
{
	return (double)(rng_next(s) >> 11) * 0x1p-53;
}

static double rng_gauss(uint64_t *s)
{
	double u = rng_unit(s), v = rng_unit(s);
	return sqrt(-2.0 * log(u > 0 ? u : 0x1p-53)) * cos(2 * M_PI * v);
}

/* Same curves as tools/tally_demo.c. */
static const double hour_volume[24] = {
	0.25, 0.18, 0.15, 0.15, 0.20, 0.40, 0.80, 1.30, 1.40, 1.10, 0.90, 0.90,
	0.95, 0.95, 0.95, 1.00, 1.20, 1.45, 1.40, 1.00, 0.75, 0.60, 0.45, 0.35,
};
static const double hour_speed[24] = {
	1.06, 1.07, 1.08, 1.08, 1.06, 1.02, 0.90, 0.66, 0.62, 0.84, 0.97, 0.98,
	0.96, 0.97, 0.97, 0.95, 0.85, 0.64, 0.60, 0.82, 0.96, 1.00, 1.03, 1.05,
};

typedef struct camera {
	char id[16];
	uint32_t n;
	int64_t *ts;
	double *speed;
	codec_str *key, *lane, *plate;
	char *plate_bytes; /* 8 bytes per event */
} camera;

static const char *const lane_names[4] = {"1", "2", "3", "4"};

static void camera_generate(camera *cam, unsigned c, const bench_opts *o)
{
	uint64_t rs = o->seed * UINT64_C(0x2545f4914f6cdd1d) + c + 1;
	snprintf(cam->id, sizeof cam->id, "KV%05u", c + 1);
	double base = 60.0 + 50.0 * rng_unit(&rs);
	double cum[25] = {0};
	for (int h = 0; h < 24; h++)
		cum[h + 1] = cum[h] + hour_volume[h];
	int h = 0;
	double q = 0;
	for (uint32_t i = 0; i < cam->n; i++) {
		if (o->poisson) {
			q += -log(1.0 - rng_unit(&rs)) / cam->n * cum[24];
			if (q >= cum[24])
				q = cum[24] * (1 - 1e-12);
		} else {
			/* stratified quantiles: sorted without a sort */
			q = ((double)i + rng_unit(&rs)) / cam->n * cum[24];
		}
		while (h < 23 && q >= cum[h + 1])
			h++;
		double sec = (h + (q - cum[h]) / hour_volume[h]) * 3600.0;
		int64_t ms = (int64_t)(sec * 1000.0);
		if (ms >= 86400000)
			ms = 86399999;
		int64_t t = DAY0 + ms * NS_PER_MS;
		if (o->jitter)
			t += (int64_t)(rng_next(&rs) % (uint64_t)NS_PER_MS);
		if (i && t < cam->ts[i - 1])
			t = cam->ts[i - 1];
		double v = base * hour_speed[h] * (1.0 + 0.08 * rng_gauss(&rs));
		if (v < 5.0)
			v = 5.0;
		cam->ts[i] = t;
		cam->speed[i] = round(v * 10.0) / 10.0;
		cam->key[i] = (codec_str){cam->id, (uint32_t)strlen(cam->id)};
		/* lanes: busier at rush hour in the fast lanes */
		unsigned lane = (unsigned)(rng_next(&rs) % (h >= 7 && h <= 19 ? 4 : 2));
		cam->lane[i] = (codec_str){lane_names[lane], 1};
		/* plates: a regional pool of 5000 commuters (half the traffic) and
		 * random others */
		char *p = cam->plate_bytes + (size_t)i * 8;
		uint64_t r = rng_next(&rs);
		uint64_t who = (r & 1) ? (r >> 1) % 5000 : r >> 1;
		uint64_t wr = who * UINT64_C(0x9e3779b97f4a7c15) + 7;
		uint64_t x = rng_next(&wr);
		p[0] = (char)('A' + x % 26);
		p[1] = (char)('0' + (x >> 8) % 10);
		p[2] = (char)('0' + (x >> 16) % 10);
		p[3] = (char)('0' + (x >> 24) % 10);
		p[4] = (char)('A' + (x >> 32) % 26);
		p[5] = (char)('A' + (x >> 40) % 26);
		p[6] = (char)('0' + (x >> 48) % 10);
		p[7] = (char)('0' + (x >> 56) % 10);
		cam->plate[i] = (codec_str){p, 8};
	}
}

/* ---------------------------------------------------------------- columns */

enum { COL_KEY, COL_TS, COL_SPEED, COL_LANE, COL_PLATE, NCOL };
static const char *const col_names[NCOL] = {"key", "ts", "speed", "lane", "plate"};
static const enum codec_kind col_kind[NCOL] = {CODEC_KEY, CODEC_TS, CODEC_F64, CODEC_STR,
					       CODEC_STR};

typedef struct col_total {
	uint64_t bytes, raw, values, blocks;
	uint64_t by_enc[CODEC_ENC_MAX + 1], zstd_blocks;
	double enc_s, dec_s;
} col_total;

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static const void *col_vals(const camera *cam, int c, uint32_t at)
{
	switch (c) {
	case COL_KEY: return cam->key + at;
	case COL_TS: return cam->ts + at;
	case COL_SPEED: return cam->speed + at;
	case COL_LANE: return cam->lane + at;
	default: return cam->plate + at;
	}
}

static int same(int c, const void *a, const void *b, uint32_t n)
{
	if (col_kind[c] == CODEC_STR || col_kind[c] == CODEC_KEY) {
		const codec_str *x = a, *y = b;
		for (uint32_t i = 0; i < n; i++)
			if (x[i].n != y[i].n || memcmp(x[i].p, y[i].p, x[i].n))
				return 0;
		return 1;
	}
	return memcmp(a, b, (size_t)n * 8) == 0;
}

/* Encodes, decodes and checks one camera's columns; adds to tot. */
static int run_camera(codec_ctx *cx, const camera *cam, const bench_opts *o, const int *on,
		      col_total *tot, codec_buf *buf, void *back, codec_buf *arena)
{
	codec_opts co = {.zstd_level = o->zstd};
	for (uint32_t at = 0; at < cam->n; at += o->block) {
		uint32_t n = cam->n - at < o->block ? cam->n - at : o->block;
		for (int c = 0; c < NCOL; c++) {
			if (!on[c])
				continue;
			codec_stats st;
			buf->len = 0;
			double t0 = now();
			int rc = codec_encode(cx, col_kind[c], col_vals(cam, c, at), NULL, n, &co,
					      buf, &st);
			double t1 = now();
			if (!rc)
				rc = codec_decode(cx, buf->p, buf->len, col_kind[c], n, back, NULL,
						  arena);
			double t2 = now();
			if (rc) {
				fprintf(stderr, "%s: %s\n", col_names[c], err_msg());
				return 1;
			}
			if (!same(c, col_vals(cam, c, at), back, n)) {
				fprintf(stderr, "%s: decoded values differ\n", col_names[c]);
				return 1;
			}
			col_total *t = &tot[c];
			t->bytes += st.block_bytes;
			t->raw += st.raw_bytes;
			t->values += n;
			t->blocks++;
			t->by_enc[st.enc]++;
			t->zstd_blocks += st.zstd;
			t->enc_s += t1 - t0;
			t->dec_s += t2 - t1;
		}
	}
	return 0;
}

typedef struct workload {
	camera cam;
	codec_ctx *cx;
	codec_buf buf, arena;
	void *back;
} workload;

static int workload_init(workload *w, const bench_opts *o)
{
	camera *cam = &w->cam;
	memset(w, 0, sizeof *w);
	cam->n = o->events;
	cam->ts = malloc(sizeof *cam->ts * cam->n);
	cam->speed = malloc(sizeof *cam->speed * cam->n);
	cam->key = malloc(sizeof *cam->key * cam->n);
	cam->lane = malloc(sizeof *cam->lane * cam->n);
	cam->plate = malloc(sizeof *cam->plate * cam->n);
	cam->plate_bytes = malloc((size_t)cam->n * 8);
	w->back = malloc(sizeof(codec_str) * CODEC_BLOCK_MAX);
	w->cx = codec_ctx_new();
	return !cam->ts || !cam->speed || !cam->key || !cam->lane || !cam->plate ||
	       !cam->plate_bytes || !w->back || !w->cx;
}

static void workload_free(workload *w)
{
	free(w->cam.ts);
	free(w->cam.speed);
	free(w->cam.key);
	free(w->cam.lane);
	free(w->cam.plate);
	free(w->cam.plate_bytes);
	free(w->back);
	codec_buf_free(&w->buf);
	codec_buf_free(&w->arena);
	codec_ctx_free(w->cx);
}

/* Runs `cameras` cameras; fills tot[NCOL]. */
static int run(workload *w, const bench_opts *o, unsigned cameras, const int *on, col_total *tot)
{
	memset(tot, 0, sizeof(col_total) * NCOL);
	for (unsigned c = 0; c < cameras; c++) {
		camera_generate(&w->cam, c, o);
		if (run_camera(w->cx, &w->cam, o, on, tot, &w->buf, w->back, &w->arena))
			return 1;
	}
	return 0;
}

static void print_table(const col_total *tot, const int *on, uint64_t events)
{
	printf("  %-6s %9s %9s %7s %9s %9s %9s  %s\n", "column", "B/event", "ratio", "zstd%",
	       "enc MB/s", "dec MB/s", "dec Mv/s", "encodings");
	uint64_t all = 0, raw = 0;
	double es = 0, ds = 0;
	for (int c = 0; c < NCOL; c++) {
		if (!on[c])
			continue;
		const col_total *t = &tot[c];
		char encs[128] = "";
		size_t l = 0;
		for (int e = 1; e <= CODEC_ENC_MAX; e++)
			if (t->by_enc[e])
				l += (size_t)snprintf(encs + l, sizeof encs - l, "%s%s %.0f%%",
						      l ? ", " : "", codec_name((unsigned)e),
						      100.0 * (double)t->by_enc[e] /
							      (double)t->blocks);
		printf("  %-6s %9.3f %8.1fx %6.0f%% %9.0f %9.0f %9.1f  %s\n", col_names[c],
		       (double)t->bytes / (double)events, (double)t->raw / (double)t->bytes,
		       100.0 * (double)t->zstd_blocks / (double)t->blocks,
		       (double)t->raw / t->enc_s / 1e6, (double)t->raw / t->dec_s / 1e6,
		       (double)t->values / t->dec_s / 1e6, encs);
		all += t->bytes;
		raw += t->raw;
		es += t->enc_s;
		ds += t->dec_s;
	}
	printf("  %-6s %9.3f %8.1fx %7s %9.0f %9.0f\n", "total", (double)all / (double)events,
	       (double)raw / (double)all, "", (double)raw / es / 1e6, (double)raw / ds / 1e6);
}

static double bytes_per_event(const col_total *tot, const int *on, uint64_t events)
{
	uint64_t all = 0;
	for (int c = 0; c < NCOL; c++)
		if (on[c])
			all += tot[c].bytes;
	return (double)all / (double)events;
}

static void usage(void)
{
	fprintf(stderr, "usage: bench_codec [--cameras N] [--events N] [--block N] [--zstd L]\n"
			"                   [--poisson] [--jitter] [--lanes] [--plates] [--seed S]"
			" [--quick]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	bench_opts o = {.cameras = 1000, .events = 20000, .block = CODEC_BLOCK_MAX, .seed = 42};
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--cameras") && v)
			o.cameras = (unsigned)strtoul(argv[++i], NULL, 0);
		else if (!strcmp(a, "--events") && v)
			o.events = (unsigned)strtoul(argv[++i], NULL, 0);
		else if (!strcmp(a, "--block") && v)
			o.block = (unsigned)strtoul(argv[++i], NULL, 0);
		else if (!strcmp(a, "--zstd") && v)
			o.zstd = atoi(argv[++i]);
		else if (!strcmp(a, "--seed") && v)
			o.seed = strtoull(argv[++i], NULL, 0);
		else if (!strcmp(a, "--poisson"))
			o.poisson = 1;
		else if (!strcmp(a, "--jitter"))
			o.jitter = 1;
		else if (!strcmp(a, "--lanes"))
			o.lanes = 1;
		else if (!strcmp(a, "--plates"))
			o.plates = 1;
		else if (!strcmp(a, "--quick"))
			o.quick = 1;
		else
			usage();
	}
	if (!o.cameras || !o.events || !o.block || o.block > CODEC_BLOCK_MAX)
		usage();
	if (o.quick && o.cameras > 50)
		o.cameras = 50;

	workload w;
	if (workload_init(&w, &o)) {
		fprintf(stderr, "out of memory\n");
		return 1;
	}
	int on[NCOL] = {1, 1, 1, o.lanes, o.plates};
	col_total tot[NCOL];
	printf("bench_codec: %u events/camera-day, %s arrivals, ts %s, block %u rows, zstd %d\n",
	       o.events, o.poisson ? "Poisson" : "stratified",
	       o.jitter ? "ns with jitter" : "ms precision", o.block,
	       o.zstd ? o.zstd : CODEC_ZSTD_DEFAULT);

	/* one camera-day: best of 7 runs for the rates, the first one warms up
	 * the context (scratch, zstd) as a long-running writer's would be */
	col_total best[NCOL];
	for (int rep = 0; rep < 8; rep++) {
		if (run(&w, &o, 1, on, tot))
			return 1;
		for (int c = 0; c < NCOL && rep > 0; c++) {
			if (rep == 1 || tot[c].enc_s < best[c].enc_s)
				best[c].enc_s = tot[c].enc_s;
			if (rep == 1 || tot[c].dec_s < best[c].dec_s)
				best[c].dec_s = tot[c].dec_s;
		}
	}
	for (int c = 0; c < NCOL; c++) {
		tot[c].enc_s = best[c].enc_s;
		tot[c].dec_s = best[c].dec_s;
	}
	printf("\none camera-day (%u events; rates: best of 7):\n", o.events);
	print_table(tot, on, o.events);
	if (run(&w, &o, o.cameras, on, tot))
		return 1;
	uint64_t events = (uint64_t)o.cameras * o.events;
	printf("\n%u cameras (%llu events; rates: wall time of the whole run):\n", o.cameras,
	       (unsigned long long)events);
	print_table(tot, on, events);
	int ts_speed[NCOL] = {0, 1, 1, 0, 0};
	printf("  ts + speed: %.3f B/event (target <= 3.2 for raw columns)\n",
	       bytes_per_event(tot, ts_speed, events));

	/* zstd levels and block sizes on a sample of cameras */
	unsigned sample = o.cameras < 100 ? o.cameras : 100;
	uint64_t sev = (uint64_t)sample * o.events;
	printf("\nzstd level (%u cameras): B/event all columns, ts+speed; encode MB/s\n", sample);
	static const int levels[] = {-1, 1, 2, 3, 4, 5, 7, 9, 19};
	for (size_t i = 0; i < sizeof levels / sizeof levels[0]; i++) {
		bench_opts lo = o;
		lo.zstd = levels[i];
		if (run(&w, &lo, sample, on, tot))
			return 1;
		double raw = 0, s = 0;
		for (int c = 0; c < NCOL; c++) {
			raw += on[c] ? (double)tot[c].raw : 0;
			s += on[c] ? tot[c].enc_s : 0;
		}
		char name[16];
		snprintf(name, sizeof name, levels[i] < 0 ? "off" : "%d", levels[i]);
		printf("  %-5s %7.3f %7.3f %8.0f\n", name, bytes_per_event(tot, on, sev),
		       bytes_per_event(tot, ts_speed, sev), raw / s / 1e6);
	}
	printf("\nblock size (%u cameras): B/event ts, speed, ts+speed; decode Mvalues/s ts, "
	       "speed\n",
	       sample);
	static const unsigned blocks[] = {1024, 4096, 16384, 65536};
	for (size_t i = 0; i < sizeof blocks / sizeof blocks[0]; i++) {
		bench_opts bo = o;
		bo.block = blocks[i];
		if (run(&w, &bo, sample, on, tot))
			return 1;
		printf("  %6u %7.3f %7.3f %7.3f %8.1f %8.1f\n", blocks[i],
		       (double)tot[COL_TS].bytes / (double)sev,
		       (double)tot[COL_SPEED].bytes / (double)sev,
		       bytes_per_event(tot, ts_speed, sev),
		       (double)tot[COL_TS].values / tot[COL_TS].dec_s / 1e6,
		       (double)tot[COL_SPEED].values / tot[COL_SPEED].dec_s / 1e6);
	}
	workload_free(&w);
	return 0;
}
