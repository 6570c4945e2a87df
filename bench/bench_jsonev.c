/*
 * bench_jsonev.c — JSON events to line protocol (wire/jsonev.c): events a
 * second and ns per event on one core, for the camera event of the design
 * in a JSON array and as NDJSON, through the default mapping.
 *
 *   build/bench/bench_jsonev [--events N] [--rounds R]
 *
 * The body is built once (N events, distinct cameras, times and speeds);
 * each round decodes it whole with one reused decoder, as a shard does
 * with request bodies. The best and the median round are printed; the
 * output is checked (every event accepted, one line each) before timing.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "jsonev.h"
#include "benchutil.h"

/* N camera events, as an array (ndjson 0) or one a line. */
static char *make_body(size_t n, int ndjson, size_t *len)
{
	size_t cap = n * 140 + 16, o = 0;
	char *b = malloc(cap);
	if (!b)
		exit(1);
	if (!ndjson)
		b[o++] = '[';
	for (size_t i = 0; i < n; i++) {
		unsigned s = (unsigned)(i % 86400), tenths = 400 + (unsigned)(i * 7919 % 1200);
		o += (size_t)snprintf(
			b + o, cap - o,
			"%s{\"kvfv_id\":\"KV%05u\",\"timestamp\":\"2025-04-05T%02u:%02u:%02uZ\","
			"\"vehicle_speed\":%u.%u,\"plate_number\":\"A%03uBV68\"}%s",
			!ndjson && i ? "," : "", (unsigned)(i % 1000) + 1, s / 3600, s / 60 % 60,
			s % 60, tenths / 10, tenths % 10, (unsigned)(i % 1000), ndjson ? "\n" : "");
	}
	if (!ndjson)
		b[o++] = ']';
	*len = o;
	return b;
}

int main(int argc, char **argv)
{
	size_t n = 20000;
	int rounds = 100;
	for (int i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--events"))
			n = strtoull(argv[i + 1], NULL, 10);
		else if (!strcmp(argv[i], "--rounds"))
			rounds = atoi(argv[i + 1]);
	}
	if (n == 0 || rounds < 1) {
		fprintf(stderr, "usage: bench_jsonev [--events N] [--rounds R]\n");
		return 2;
	}
	jsonev_maps *maps;
	jsonev_dec *d;
	jsonev_limits lim = {.max_body = (size_t)1 << 30};
	if (jsonev_maps_new(&maps) || jsonev_dec_new(&lim, &d))
		return 1;
	const jsonev_map *m = jsonev_maps_find(maps, "traffic", 7);
	double *t = calloc((size_t)rounds, sizeof *t);
	for (int nd = 0; nd < 2; nd++) {
		size_t len;
		char *body = make_body(n, nd, &len);
		jsonev_result r;
		if (jsonev_decode(d, m, body, len, 0, &r) || r.accepted != n || r.records != n) {
			fprintf(stderr,
				"bench_jsonev: decode failed: %" PRIu64 " of %zu accepted%s%s\n",
				r.accepted, n, r.n_errors ? ": " : "",
				r.n_errors ? r.errors[0].reason : "");
			return 1;
		}
		size_t lp_len = r.lp_len;
		for (int k = 0; k < rounds; k++) {
			double t0 = now_s();
			jsonev_decode(d, m, body, len, 0, &r);
			t[k] = now_s() - t0;
		}
		qsort(t, (size_t)rounds, sizeof *t, cmp_d);
		printf("%-7s %zu events, %.1f bytes/event in, %.1f out: best %.2f M events/s "
		       "(%.1f ns/event, %.0f MB/s), median %.2f M events/s (%.1f ns/event)\n",
		       nd ? "ndjson" : "array", n, (double)len / (double)n,
		       (double)lp_len / (double)n, (double)n / t[0] / 1e6, t[0] * 1e9 / (double)n,
		       (double)len / t[0] / 1e6, (double)n / t[rounds / 2] / 1e6,
		       t[rounds / 2] * 1e9 / (double)n);
		free(body);
	}
	free(t);
	jsonev_dec_free(d);
	jsonev_maps_free(maps);
	return 0;
}
