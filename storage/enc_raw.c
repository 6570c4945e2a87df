/*
 * enc_raw.c — the plain encodings: RAW (fixed-width little-endian values,
 * for any kind) and BITMAP (booleans, one bit each).
 *
 * RAW is the floor every other encoding must beat and the one a forced
 * choice can always fall back to; zstd after it does the rest for data
 * nothing smarter fits.
 *
 * RAW body: TS, I64, U64, F64: 8 bytes LE per value (F64: the IEEE bits);
 * BOOL: one byte, 0 or 1; STR, KEY: varint length then the bytes.
 * BITMAP body: ceil(n / 8) bytes, value i in bit i % 8 of byte i / 8; the
 * unused high bits of the last byte are zero.
 */
#include <errno.h>

#include "enc.h"

static int raw_encode(codec_ctx *cx, const enc_vals *in, const codec_opts *opt, codec_buf *out,
		      codec_stats *st)
{
	(void)cx, (void)opt, (void)st;
	uint32_t n = in->n;
	if (in->kind == CODEC_BOOL) {
		if (codec_buf_reserve(out, n))
			return -ENOMEM;
		memcpy(out->p + out->len, in->v, n);
		out->len += n;
		return 0;
	}
	if (in->kind == CODEC_STR || in->kind == CODEC_KEY) {
		const codec_str *s = in->v;
		for (uint32_t i = 0; i < n; i++) {
			int rc = enc_buf_varint(out, s[i].n);
			if (!rc)
				rc = enc_buf_put(out, s[i].p, s[i].n);
			if (rc)
				return rc;
		}
		return 0;
	}
	if (codec_buf_reserve(out, (size_t)n * 8))
		return -ENOMEM;
	const uint64_t *v = in->v;
	for (uint32_t i = 0; i < n; i++)
		enc_put_le64(out->p + out->len + 8 * (size_t)i, v[i]);
	out->len += (size_t)n * 8;
	return 0;
}

static int raw_decode(codec_ctx *cx, enum codec_kind kind, const uint8_t *body, size_t len,
		      uint32_t n, void *out, codec_buf *arena)
{
	(void)cx, (void)arena;
	if (kind == CODEC_BOOL) {
		if (len != n)
			return ENC_CORRUPT("raw: %zu bytes for %u bools", len, n);
		uint8_t *b = out;
		for (uint32_t i = 0; i < n; i++) {
			if (body[i] > 1)
				return ENC_CORRUPT("raw: bool %u is %u", i, body[i]);
			b[i] = body[i];
		}
		return 0;
	}
	if (kind == CODEC_STR || kind == CODEC_KEY) {
		codec_str *s = out;
		size_t pos = 0;
		for (uint32_t i = 0; i < n; i++) {
			uint64_t l;
			int rc = enc_varint_get(body, len, &pos, &l, "raw string length");
			if (rc)
				return rc;
			if (l > len - pos)
				return ENC_CORRUPT("raw: string %u of %llu bytes, %zu left", i,
						   (unsigned long long)l, len - pos);
			s[i].p = (const char *)body + pos;
			s[i].n = (uint32_t)l;
			pos += l;
		}
		if (pos != len)
			return ENC_CORRUPT("raw: %zu bytes left over", len - pos);
		return 0;
	}
	if (len != (size_t)n * 8)
		return ENC_CORRUPT("raw: %zu bytes for %u values of 8", len, n);
	uint64_t *v = out;
	for (uint32_t i = 0; i < n; i++)
		v[i] = enc_get_le64(body + 8 * (size_t)i);
	return 0;
}

const codec_ops enc_raw_ops = {
	.id = CODEC_ENC_RAW,
	.name = "raw",
	.kinds = 1u << CODEC_TS | 1u << CODEC_I64 | 1u << CODEC_U64 | 1u << CODEC_F64 |
		 1u << CODEC_BOOL | 1u << CODEC_STR | 1u << CODEC_KEY,
	.encode = raw_encode,
	.decode = raw_decode,
};

static int bitmap_encode(codec_ctx *cx, const enc_vals *in, const codec_opts *opt, codec_buf *out,
			 codec_stats *st)
{
	(void)cx, (void)opt, (void)st;
	size_t bytes = ((size_t)in->n + 7) / 8;
	if (codec_buf_reserve(out, bytes))
		return -ENOMEM;
	uint8_t *p = out->p + out->len;
	const uint8_t *b = in->v;
	memset(p, 0, bytes);
	for (uint32_t i = 0; i < in->n; i++)
		p[i >> 3] |= (uint8_t)((b[i] & 1) << (i & 7));
	out->len += bytes;
	return 0;
}

static int bitmap_decode(codec_ctx *cx, enum codec_kind kind, const uint8_t *body, size_t len,
			 uint32_t n, void *out, codec_buf *arena)
{
	(void)cx, (void)kind, (void)arena;
	if (len != ((size_t)n + 7) / 8)
		return ENC_CORRUPT("bitmap: %zu bytes for %u bools", len, n);
	if ((n & 7) && (body[len - 1] >> (n & 7)))
		return ENC_CORRUPT("bitmap: bits set past value %u", n);
	uint8_t *b = out;
	for (uint32_t i = 0; i < n; i++)
		b[i] = (uint8_t)(body[i >> 3] >> (i & 7) & 1);
	return 0;
}

const codec_ops enc_bitmap_ops = {
	.id = CODEC_ENC_BITMAP,
	.name = "bitmap",
	.kinds = 1u << CODEC_BOOL,
	.encode = bitmap_encode,
	.decode = bitmap_decode,
};
