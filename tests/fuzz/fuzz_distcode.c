/*
 * fuzz_distcode.c — libFuzzer target for the bit stream of kind 4
 * distribution blocks (engine/distcode.c), without the basic payload in
 * front that fuzz_rollup must get right first.
 *
 * Input: byte 0 = the bound (0, 1, 16 or 4096 by its value mod 4), byte
 * 1 = the window count n (1 + its value mod 64), then n bytes of window
 * counts (255: 2^63 + the window's index, else the byte), then the
 * stream (a varint of pairs, then the codes). distcode_decode must
 * return OK or TALLY_ECORRUPT, never crash or read out of bounds; what
 * decoded must keep every rule a merge relies on (values ascending within
 * range, counts positive and adding up to the window's count, a sketch
 * only past the bound), and encode and decode again to the same windows.
 *
 * Build: tests/fuzz/build fuzz_distcode build-fuzz/fuzz_distcode
 * Seeds: tests/fuzz/regress/fuzz_distcode/ (windows as flushes write
 * them: speeds, a dense day, a sketch, counts of 2^63).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "distcode.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAXW 64

static codec_buf arena, arena2, out;

static void keeps_the_rules(const dbucket *b, uint32_t n, uint32_t max)
{
	int64_t kmax = dist_sketch_key(DIST_IDX_MAX);
	for (uint32_t i = 0; i < n; i++) {
		const dstate *d = &b[i].d;
		int64_t lim = d->sketch ? kmax : DIST_IDX_MAX;
		uint64_t left = d->a.count;
		if (!d->n || d->max != max || (d->sketch && !(max && d->a.count > max)))
			abort();
		for (uint32_t j = 0; j < d->n; j++) {
			if (d->v[j] < -lim || d->v[j] > lim || (j && d->v[j] <= d->v[j - 1]) ||
			    !d->c[j] || d->c[j] > left)
				abort();
			left -= d->c[j];
		}
		if (left)
			abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const uint32_t bounds[4] = {0, 1, 16, 4096};
	if (size < 2)
		return 0;
	uint32_t max = bounds[data[0] % 4], n = 1 + data[1] % MAXW;
	if (size < 2 + (size_t)n)
		return 0;
	dbucket b1[MAXW], b2[MAXW];
	memset(b1, 0, sizeof b1);
	for (uint32_t i = 0; i < n; i++) {
		uint8_t c = data[2 + i];
		b1[i].start = i;
		b1[i].d.exp = -1;
		b1[i].d.a.count = c == 255 ? (UINT64_C(1) << 63) + i : c;
	}
	memcpy(b2, b1, sizeof b1);
	data += 2 + n, size -= 2 + n;
	int rc = distcode_decode(data, size, b1, n, max, &arena);
	if (rc && rc != TALLY_ECORRUPT)
		abort();
	if (rc) {
		for (uint32_t i = 0; i < n; i++)
			if (b1[i].d.v || b1[i].d.n)
				abort(); /* nothing borrowed looks decoded */
		return 0;
	}
	keeps_the_rules(b1, n, max);
	out.len = 0;
	if (distcode_encode(b1, n, max, &out))
		abort(); /* what decoded must encode */
	if (distcode_decode(out.p, out.len, b2, n, max, &arena2))
		abort();
	for (uint32_t i = 0; i < n; i++) {
		const dstate *x = &b1[i].d, *y = &b2[i].d;
		if (x->n != y->n || x->sketch != y->sketch || memcmp(x->v, y->v, x->n * 8) ||
		    memcmp(x->c, y->c, x->n * 8))
			abort();
	}
	return 0;
}
