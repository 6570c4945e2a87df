/*
 * fuzz_codec.c — libFuzzer target for the column encodings.
 *
 * Two modes, chosen by bit 0 of the first byte:
 *  - decode: the rest of the input is a block; it is decoded as the kind
 *    and row count its header names (so the fuzzer gets past those checks)
 *    and as the kind byte 0 names, and (numeric kinds) only its first
 *    rows with codec_decode_head, also asked for integers at a scale
 *    (codec_want_units). Each must return OK or TALLY_ECORRUPT,
 *    never crash, hang or read out of bounds.
 *  - round trip: the rest of the input becomes values of a kind (raw
 *    bytes, or synthesised decimals, binary fractions, small deltas or
 *    short strings so that every encoding gets real work), a presence bitmap and encoder options;
 *    they are encoded, decoded and compared bit for bit (abort on any
 *    difference), then one byte of the block is changed and the result
 *    decoded again, which reaches deep into the decoders with blocks that
 *    are almost valid.
 *
 * Input: byte 0 = bit 0 mode, bits 1-3 kind, bits 4-7 forced encoding
 * (0 auto; round trip); byte 1 = bits 0-1 order, bits 2-3 zstd (default,
 * off, always), bit 4 presence, bits 5-6 value synthesis, bit 7 mutate;
 * bytes 2-3 = where to mutate and how; then the data.
 *
 * Build: tests/fuzz/build fuzz_codec build-fuzz/fuzz_codec
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "err.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static codec_ctx *cx;
static codec_buf arena, out;
static uint8_t vals[CODEC_BLOCK_MAX * sizeof(codec_str)];
static uint8_t back[CODEC_BLOCK_MAX * sizeof(codec_str)];
static uint64_t pres[CODEC_BLOCK_MAX / 64], pres_back[CODEC_BLOCK_MAX / 64];
static char strbytes[CODEC_BLOCK_MAX * 16];

static size_t esize(enum codec_kind k)
{
	return k == CODEC_BOOL ? 1 : (k == CODEC_STR || k == CODEC_KEY) ? sizeof(codec_str) : 8;
}

static void check_rc(int rc)
{
	if (rc != 0 && rc != TALLY_ECORRUPT) {
		fprintf(stderr, "decode returned %d: %s\n", rc, err_msg());
		abort();
	}
}

static void fuzz_decode(const uint8_t *p, size_t n, enum codec_kind kind)
{
	codec_block_info info;
	if (codec_block_info_get(p, n, &info) == 0)
		check_rc(codec_decode(cx, p, n, (enum codec_kind)info.kind, info.n, back, pres_back,
				      &arena));
	uint32_t rows = n ? p[n - 1] : 0;
	check_rc(codec_decode(cx, p, n, kind, rows, back, NULL, &arena));
	/* the head decoders stop partway, past checks a whole decode makes */
	if (codec_block_info_get(p, n, &info) == 0 && info.kind != CODEC_STR &&
	    info.kind != CODEC_KEY) {
		uint32_t got, want = n > 1 ? p[n - 2] : 0;
		int64_t stop = (int64_t)want << 20;
		check_rc(codec_decode_head(cx, p, n, (enum codec_kind)info.kind, info.n, want,
					   INT64_MIN, back, pres_back, &got));
		check_rc(codec_decode_head(cx, p, n, (enum codec_kind)info.kind, info.n, 0, stop,
					   back, pres_back, &got));
		/* a distribution's request for integers at a scale (a DEC block's
		 * own path) */
		codec_want_units(cx, want & 15);
		check_rc(codec_decode_head(cx, p, n, (enum codec_kind)info.kind, info.n, want,
					   INT64_MIN, back, pres_back, &got));
	}
}

static uint64_t le(const uint8_t *p, size_t n)
{
	uint64_t v = 0;
	for (size_t i = 0; i < n; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

/* Values of kind from p[0..n): how many made. */
static uint32_t make_values(enum codec_kind kind, unsigned synth, const uint8_t *p, size_t n)
{
	uint32_t rows = 0;
	if (kind == CODEC_STR || kind == CODEC_KEY) {
		codec_str *s = (codec_str *)(void *)vals;
		size_t at = 0, used = 0;
		while (at < n && rows < CODEC_BLOCK_MAX) {
			size_t l = p[at++] % (synth ? 4 : 16);
			if (l > n - at)
				l = n - at;
			if (synth == 3 && rows) { /* repeat the previous string: runs */
				s[rows] = s[rows - 1];
				rows++;
				continue;
			}
			memcpy(strbytes + used, p + at, l);
			s[rows++] = (codec_str){strbytes + used, (uint32_t)l};
			used += l;
			at += l;
		}
		return rows;
	}
	if (kind == CODEC_BOOL) {
		rows = n < CODEC_BLOCK_MAX ? (uint32_t)n : CODEC_BLOCK_MAX;
		memcpy(vals, p, rows);
		return rows;
	}
	size_t step = synth == 0 ? 8 : synth == 3 ? 1 : 3;
	int64_t acc = 0;
	for (size_t at = 0; at + step <= n && rows < CODEC_BLOCK_MAX; at += step) {
		uint64_t x = le(p + at, step), bits;
		if (synth == 0) {
			bits = x;
		} else if (kind == CODEC_F64 && synth == 3) {
			/* binary fractions like sum residuals: k·2^-48 */
			double d = ldexp((double)(int8_t)x, -48);
			memcpy(&bits, &d, 8);
		} else if (kind == CODEC_F64) {
			/* decimals of 0-3 digits, and some specials */
			static const double p10[4] = {1, 10, 100, 1000};
			double d = (double)(int32_t)(x << 8) / 256.0;
			d = (double)(int64_t)d / p10[x & 3];
			if ((x & 0xff) == 0xff)
				d = -0.0;
			memcpy(&bits, &d, 8);
		} else {
			/* small deltas times a common factor */
			acc += (int64_t)(int8_t)x * (synth == 1 ? 1000000 : 1);
			bits = (uint64_t)acc;
		}
		memcpy(vals + rows * 8, &bits, 8);
		rows++;
	}
	return rows;
}

static int same(enum codec_kind kind, uint32_t i)
{
	size_t es = esize(kind);
	if (kind == CODEC_STR || kind == CODEC_KEY) {
		const codec_str *a = (const codec_str *)(const void *)vals + i;
		const codec_str *b = (const codec_str *)(const void *)back + i;
		return a->n == b->n && (a->n == 0 || memcmp(a->p, b->p, a->n) == 0);
	}
	if (kind == CODEC_BOOL)
		return (vals[i] != 0) == back[i];
	return memcmp(vals + i * es, back + i * es, es) == 0;
}

static void fuzz_roundtrip(const uint8_t *data, size_t size)
{
	if (size < 4)
		return;
	enum codec_kind kind = (enum codec_kind)(1 + (data[0] >> 1 & 7) % CODEC_KIND_MAX);
	uint8_t o1 = data[1];
	codec_opts o = {
		.force = (enum codec_enc)((data[0] >> 4) % (CODEC_ENC_MAX + 1)),
		.order = (enum codec_order)(o1 & 3),
		.zstd_level = (o1 >> 2 & 3) == 1   ? -1
			      : (o1 >> 2 & 3) == 2 ? 1
						   : 0,
		.zstd_always = (o1 >> 2 & 3) == 3,
	};
	uint32_t n = make_values(kind, o1 >> 5 & 3, data + 4, size - 4);
	const uint64_t *pr = NULL;
	if (o1 & 16) {
		/* presence from the data's bits, cycling */
		for (uint32_t i = 0; i < (n + 63) / 64; i++)
			pres[i] = 0;
		for (uint32_t i = 0; i < n; i++)
			if (data[4 + (i / 8) % (size - 4)] >> (i & 7) & 1)
				pres[i >> 6] |= (uint64_t)1 << (i & 63);
		pr = pres;
	}
	out.len = 0;
	codec_stats st;
	int rc = codec_encode(cx, kind, vals, pr, n, &o, &out, &st);
	if (rc == TALLY_EINVAL && o.force)
		return; /* that encoding does not take this kind */
	if (rc) {
		fprintf(stderr, "encode returned %d: %s\n", rc, err_msg());
		abort();
	}
	rc = codec_decode(cx, out.p, out.len, kind, n, back, pres_back, &arena);
	if (rc) {
		fprintf(stderr, "decode of a fresh block returned %d: %s\n", rc, err_msg());
		abort();
	}
	for (uint32_t i = 0; i < n; i++) {
		int p = !pr || (pr[i >> 6] >> (i & 63) & 1);
		if (((pres_back[i >> 6] >> (i & 63)) & 1) != (uint64_t)p) {
			fprintf(stderr, "row %u: presence differs\n", i);
			abort();
		}
		if (p && !same(kind, i)) {
			fprintf(stderr, "row %u of %u: %s/%s value differs\n", i, n,
				codec_kind_name(kind), codec_name(st.enc));
			abort();
		}
	}
	if ((o1 & 128) && out.len) {
		out.p[(data[2] | (size_t)data[3] << 8) % out.len] ^= (uint8_t)(data[3] | 1);
		check_rc(codec_decode(cx, out.p, out.len, kind, n, back, pres_back, &arena));
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!cx && !(cx = codec_ctx_new()))
		abort();
	if (size < 1)
		return 0;
	if (data[0] & 1)
		fuzz_roundtrip(data, size);
	else
		fuzz_decode(data + 1, size - 1,
			    (enum codec_kind)(1 + (data[0] >> 1 & 7) % CODEC_KIND_MAX));
	return 0;
}
