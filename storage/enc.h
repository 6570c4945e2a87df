/*
 * enc.h — what the column encodings share (internal to the codec).
 *
 * The table of encodings (struct codec_ops), the view of a block's values
 * an encoder gets, varints, and the LSB-first bit writer and reader every
 * bit-level encoding uses. The reader never touches a byte past its end:
 * past the end it shifts in zeros and counts them, and enc_br_overrun()
 * tells the decoder afterwards that the stream was too short.
 */
#ifndef TALLY_ENC_H
#define TALLY_ENC_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "codec.h"
#include "err.h"

/* ------------------------------------------------------------ context */

/* Scratch slots: each user owns one, so nested calls never share. */
enum {
	ENC_S_VALS, /* codec.c: present values compacted / decoded */
	ENC_S_TMP,  /* an encoding's own array: DEC integers, string lengths, ids */
	ENC_S_RES,  /* enc_ints_put: residuals */
	ENC_S_BODY, /* codec.c: body before zstd / after unzstd */
	ENC_S_HASH, /* enc_str.c: dictionary hash table */
	ENC_S_TMP2, /* an encoding's second array: exceptions, dictionary entries */
	ENC_S_TMP3, /* an encoding's third array: run lengths, dictionary lengths */
	ENC_SCRATCH
};

/* Per-frame choice of the INT frame coder (enc_int.c). */
typedef struct enc_frame_plan {
	uint8_t code; /* frame header code: mode and width/k */
	uint8_t pad[7];
	int64_t ref; /* frame reference value */
} enc_frame_plan;

#define ENC_FRAME_LOG2 7 /* encoder's frame: 128 values (stored per stream) */

struct codec_ctx {
	void *zc, *zd; /* ZSTD_CCtx, ZSTD_DCtx, made on first use */
	void *scratch[ENC_SCRATCH];
	size_t scratch_cap[ENC_SCRATCH];
	enc_frame_plan plans[CODEC_BLOCK_MAX >> ENC_FRAME_LOG2];
	/* codec_decode_head's request, read by the numeric decoders (INT, DEC,
	 * BIN, XOR; the others decode whole): the first `want` values must come
	 * out exact; an ascending integer stream may also stop after the frame
	 * that reaches a value >= stop. The decoder sets got (>= what it was
	 * asked, <= n). codec_decode resets want to "all". */
	uint32_t want, got;
	int64_t stop;
	/* codec_want_units' request for the next codec_decode_head (the
	 * scale + 1; 0: none), and whether the DEC decoder answered it */
	uint8_t units_want, units_got;
};

/* scratch slot i with at least bytes bytes (contents not kept); NULL on
 * allocation failure. */
void *enc_scratch(codec_ctx *cx, int slot, size_t bytes);

/* ------------------------------------------------------------ the table */

/* The present values of a block, compacted: one array, n entries. */
typedef struct enc_vals {
	enum codec_kind kind;
	uint32_t n;
	const void *v; /* int64_t (TS, I64, and U64 bits), double, uint8_t, codec_str */
} enc_vals;

typedef struct codec_ops {
	uint8_t id;
	const char *name;
	uint32_t kinds; /* bit (1 << kind) for each kind it takes */
	/* Appends the body for in to out. TALLY_EINVAL: not worth it for
	 * these values (only DEC and BIN, never when forced). st gets order,
	 * scale, n_except where they apply. */
	int (*encode)(codec_ctx *cx, const enc_vals *in, const codec_opts *opt, codec_buf *out,
		      codec_stats *st);
	/* Decodes n values from exactly body[0..len) into out (n slots of the
	 * kind's type); strings go into arena. TALLY_ECORRUPT on damage. */
	int (*decode)(codec_ctx *cx, enum codec_kind kind, const uint8_t *body, size_t len,
		      uint32_t n, void *out, codec_buf *arena);
} codec_ops;

extern const codec_ops enc_raw_ops, enc_int_ops, enc_dec_ops, enc_xor_ops, enc_bitmap_ops,
	enc_plain_ops, enc_dict_ops, enc_rle_ops, enc_bin_ops;

/* ------------------------------------------------------------ INT streams */

/*
 * The integer coder the other encodings reuse (enc_int.c): n int64 values
 * to a stream; order CODEC_ORDER_AUTO measures all three transforms.
 * Appends to out; *used (may be NULL) gets the order taken.
 */
int enc_ints_put(codec_ctx *cx, const int64_t *v, uint32_t n, enum codec_order order,
		 codec_buf *out, enum codec_order *used);
/* Decodes n values from exactly p[0..len). */
int enc_ints_get(codec_ctx *cx, const uint8_t *p, size_t len, uint32_t n, int64_t *v);
/* Decodes whole frames until the first want values are out, or (values
 * ascending) until one >= stop is out; *got = values decoded, exact. The
 * stream's length is checked only when it is decoded to the end. */
int enc_ints_get_head(const uint8_t *p, size_t len, uint32_t n, int64_t *v, uint32_t want,
		      int64_t stop, uint32_t *got);

/* ------------------------------------------------------------ bytes */

/* codec_decode prefixes "codec block: " (and the kind) to the message. */
#define ENC_CORRUPT(...) err_set(TALLY_ECORRUPT, __VA_ARGS__)

/* Little-endian on every host; one load or store where the host is. */
static inline void enc_put_le64(uint8_t *p, uint64_t v)
{
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
	v = __builtin_bswap64(v);
#endif
	memcpy(p, &v, 8);
}

static inline uint64_t enc_get_le64(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
	v = __builtin_bswap64(v);
#endif
	return v;
}

static inline uint64_t enc_zigzag(int64_t v)
{
	return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
}
static inline int64_t enc_unzigzag(uint64_t u)
{
	return (int64_t)((u >> 1) ^ (0 - (u & 1)));
}

/* Bits needed for v: 0 for 0, 64 for values with the top bit set. */
static inline unsigned enc_width(uint64_t v)
{
	return v ? 64u - (unsigned)__builtin_clzll(v) : 0;
}

/* LEB128 varint into p (room for 10 bytes); returns bytes written. */
static inline size_t enc_varint_put(uint8_t *p, uint64_t v)
{
	size_t i = 0;
	while (v >= 0x80) {
		p[i++] = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	p[i++] = (uint8_t)v;
	return i;
}

/* Appends a varint to b (caller reserved room, or use enc_buf_varint). */
int enc_buf_varint(codec_buf *b, uint64_t v);
int enc_buf_put(codec_buf *b, const void *p, size_t n);

/* Reads a varint at *pos of p[0..len), advancing *pos; TALLY_ECORRUPT with
 * what (a name for the message) if truncated or longer than 64 bits. */
int enc_varint_get(const uint8_t *p, size_t len, size_t *pos, uint64_t *v, const char *what);

/* ------------------------------------------------------------ bit writer */

/* Writes into memory the caller reserved (no bounds checks). */
typedef struct enc_bw {
	uint8_t *p;
	uint64_t acc;
	unsigned n; /* bits in acc, < 32 between calls */
} enc_bw;

static inline void enc_bw_init(enc_bw *w, uint8_t *p)
{
	w->p = p;
	w->acc = 0;
	w->n = 0;
}

/* nb <= 32; the bits of v above nb are ignored. */
static inline void enc_bw_put32(enc_bw *w, uint64_t v, unsigned nb)
{
	v &= ((uint64_t)1 << nb) - 1;
	w->acc |= v << w->n;
	w->n += nb;
	if (w->n >= 32) {
		uint32_t lo = (uint32_t)w->acc;
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
		lo = __builtin_bswap32(lo);
#endif
		memcpy(w->p, &lo, 4);
		w->p += 4;
		w->acc >>= 32;
		w->n -= 32;
	}
}

/* nb <= 64. */
static inline void enc_bw_put(enc_bw *w, uint64_t v, unsigned nb)
{
	if (nb > 32) {
		enc_bw_put32(w, v, 32);
		enc_bw_put32(w, v >> 32, nb - 32);
	} else {
		enc_bw_put32(w, v, nb);
	}
}

/* Flushes the partial byte; returns the end of what was written. */
static inline uint8_t *enc_bw_end(enc_bw *w)
{
	while (w->n > 0) {
		*w->p++ = (uint8_t)w->acc;
		w->acc >>= 8;
		w->n = w->n > 8 ? w->n - 8 : 0;
	}
	return w->p;
}

/* ------------------------------------------------------------ bit reader */

typedef struct enc_br {
	const uint8_t *p, *end;
	uint64_t acc;
	unsigned n;   /* valid bits in acc (zeros past the end count too) */
	size_t zeros; /* bytes of zeros shifted in past the end */
} enc_br;

static inline void enc_br_init(enc_br *r, const uint8_t *p, size_t len)
{
	r->p = p;
	r->end = p + len;
	r->acc = 0;
	r->n = 0;
	r->zeros = 0;
}

/* Fills acc to at least 56 bits. */
static inline void enc_br_refill(enc_br *r)
{
	if (r->end - r->p >= 8) {
		r->acc |= enc_get_le64(r->p) << r->n;
		r->p += (63 - r->n) >> 3;
		r->n |= 56;
		return;
	}
	while (r->n <= 56) {
		if (r->p < r->end)
			r->acc |= (uint64_t)*r->p++ << r->n;
		else
			r->zeros++;
		r->n += 8;
	}
}

/* nb <= 56. */
static inline uint64_t enc_br_get56(enc_br *r, unsigned nb)
{
	if (r->n < nb)
		enc_br_refill(r);
	uint64_t v = r->acc & (((uint64_t)1 << nb) - 1);
	r->acc >>= nb;
	r->n -= nb;
	return v;
}

/* nb <= 64. */
static inline uint64_t enc_br_get(enc_br *r, unsigned nb)
{
	if (nb > 32) {
		uint64_t lo = enc_br_get56(r, 32);
		return lo | enc_br_get56(r, nb - 32) << 32;
	}
	return enc_br_get56(r, nb);
}

/* Whether more bits were read than the stream holds. */
static inline int enc_br_overrun(const enc_br *r)
{
	return r->zeros * 8 > r->n;
}

/* Bytes of the stream consumed, counting a partly read byte as whole. */
static inline size_t enc_br_used(const enc_br *r, const uint8_t *start)
{
	size_t bits = ((size_t)(r->p - start) + r->zeros) * 8 - r->n;
	return (bits + 7) / 8;
}

/* "varbits": a 7-bit width w (<= 64) then w bits of v. */
static inline void enc_bw_varbits(enc_bw *w, uint64_t v)
{
	unsigned nb = enc_width(v);
	enc_bw_put32(w, nb, 7);
	enc_bw_put(w, v, nb);
}

/* Returns 0, or the width read when it is over 64 (corrupt). */
static inline unsigned enc_br_varbits(enc_br *r, uint64_t *v)
{
	unsigned nb = (unsigned)enc_br_get56(r, 7);
	if (nb > 64)
		return nb;
	*v = enc_br_get(r, nb);
	return 0;
}

#endif
