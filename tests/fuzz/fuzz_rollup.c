/*
 * fuzz_rollup.c — libFuzzer target for the rollup block payload decoders
 * of every aggregate kind (engine/aggkind.c: basic; engine/dist.c: dist
 * with its sketches, and the earlier dist payloads, dist-v2 and dist-v1).
 *
 * Input: byte 0 = the kind (mod the kinds known), bytes 1-2 = the window
 * count n (1..65536, little-endian, + 1), then the payload. decode must
 * return OK or an error, never crash or read out of bounds; a payload
 * that decoded must encode (as the kind it decodes as: dist-v1 and dist-v2
 * blocks are rewritten as dist) and decode again to the same windows (start, count,
 * min, max; dist: the same value or bucket lists, sketch flags and
 * bound), which is what merges and flushes rely on.
 *
 * Build: tests/fuzz/build fuzz_rollup build-fuzz/fuzz_rollup
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "aggkind.h"
#include "dist.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static codec_ctx *cx;
static codec_buf arena, arena2, out;

static void same_windows(const agg_kind *k, const uint8_t *a, const uint8_t *b, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++) {
		const uint8_t *x = a + i * k->bucket_size, *y = b + i * k->bucket_size;
		/* start, count, min and max bit for bit; the sum is stored as
		 * (sum + comp, residual), so only a normalised pair (which
		 * TwoSum always keeps) comes back in the same bits */
		const ragg *ax = (const ragg *)(const void *)(x + 8);
		const ragg *ay = (const ragg *)(const void *)(y + 8);
		if (memcmp(x, y, 8) || ax->count != ay->count || memcmp(&ax->min, &ay->min, 8) ||
		    memcmp(&ax->max, &ay->max, 8))
			abort();
		if (k == &agg_dist) {
			const dstate *dx = &((const dbucket *)(const void *)x)->d;
			const dstate *dy = &((const dbucket *)(const void *)y)->d;
			if (dx->exp != dy->exp || dx->n != dy->n || dx->sketch != dy->sketch ||
			    dx->max != dy->max ||
			    (dx->n &&
			     (memcmp(dx->v, dy->v, dx->n * 8) || memcmp(dx->c, dy->c, dx->n * 8))))
				abort();
		}
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 3)
		return 0;
	if (!cx)
		cx = codec_ctx_new();
	const agg_kind *k = agg_kind_of(1 + data[0] % 4u);
	const agg_kind *w = k->decodes_as ? k->decodes_as : k;
	uint32_t n = 1 + (uint32_t)(data[1] | data[2] << 8);
	data += 3, size -= 3;
	uint8_t *b1 = calloc(n, k->bucket_size), *b2 = calloc(n, k->bucket_size);
	if (k->decode(cx, data, size, n, b1, &arena) == 0) {
		out.len = 0;
		if (w->encode(cx, b1, n, &out))
			abort(); /* what decoded must encode */
		if (w->decode(cx, out.p, out.len, n, b2, &arena2))
			abort();
		same_windows(w, b1, b2, n);
	}
	free(b1);
	free(b2);
	return 0;
}
