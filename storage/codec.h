/*
 * codec.h — column block encodings (internal to storage).
 *
 * One call encodes up to CODEC_BLOCK_MAX values of one column into one
 * self-describing block: encoding id, value kind, flags, row count, the
 * presence of each row (omitted when every row has a value), then the
 * encoded values, zstd-compressed when that pays. The encoder picks the
 * encoding per block (codec_stats says which, and the sizes); the decoder
 * needs only the bytes, the kind it expects and the row count the caller's
 * index recorded, and checks every length against both the limits below and
 * the bytes left: damage is TALLY_ECORRUPT with a message naming what was
 * wrong ("codec block: bit width 71 > 64"), never a read out of bounds.
 *
 * Blocks carry no checksum: the part file checksums its blocks.
 * Byte layout: docs/formats.md, "Column encodings".
 *
 * Values, per kind, indexed by row (n slots; slots of absent rows are
 * ignored by the encoder and zeroed by the decoder):
 *   CODEC_TS    int64_t  nanoseconds; delta or delta-of-delta coded
 *   CODEC_I64   int64_t
 *   CODEC_U64   uint64_t
 *   CODEC_F64   double   every bit pattern round-trips, -0.0 and NaN too
 *   CODEC_BOOL  uint8_t  0 or 1 (the encoder reads any nonzero as 1)
 *   CODEC_STR   codec_str byte strings (not necessarily text)
 *   CODEC_KEY   codec_str like STR; sorted rows, so run-length coded
 * Presence: bit i of present[i / 64] (LSB first) set = row i has a value;
 * present == NULL means every row has one.
 *
 * Threading: a codec_ctx belongs to one thread at a time; different
 * contexts may be used concurrently. Nothing else is shared.
 */
#ifndef TALLY_CODEC_H
#define TALLY_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "tally_base.h"

#define CODEC_BLOCK_MAX     65536u      /* values (rows) per block */
#define CODEC_BODY_MAX      (64u << 20) /* encoded body bytes (strings) */
#define CODEC_ZSTD_DEFAULT  4           /* measured: bench/bench_codec.c */
#define CODEC_DEC_SCALE_MAX 15          /* decimal digits after the point */

enum codec_kind {
	CODEC_TS = 1,
	CODEC_I64 = 2,
	CODEC_U64 = 3,
	CODEC_F64 = 4,
	CODEC_BOOL = 5,
	CODEC_STR = 6,
	CODEC_KEY = 7,
};
#define CODEC_KIND_MAX 7

/* Encoding ids as stored in byte 0 of a block; never renumber. */
enum codec_enc {
	CODEC_AUTO = 0,       /* codec_opts.force: let the encoder choose */
	CODEC_ENC_RAW = 1,    /* fixed-width little-endian values (any kind) */
	CODEC_ENC_INT = 2,    /* TS/I64/U64: delta order, gcd, Rice/bit-packed frames */
	CODEC_ENC_DEC = 3,    /* F64: decimal scale + INT stream of the integers */
	CODEC_ENC_XOR = 4,    /* F64: Gorilla XOR coding */
	CODEC_ENC_BITMAP = 5, /* BOOL: one bit per value */
	CODEC_ENC_PLAIN = 6,  /* STR/KEY: lengths (INT stream) + bytes */
	CODEC_ENC_DICT = 7,   /* STR/KEY: dictionary + ids (INT stream) */
	CODEC_ENC_RLE = 8,    /* STR/KEY: runs of equal values */
	CODEC_ENC_BIN = 9,    /* F64: binary exponent + INT stream of the integers */
};
#define CODEC_ENC_MAX 9

/* The transform in front of the INT frames (DEC and BIN use it for their
 * integers). */
enum codec_order {
	CODEC_ORDER_AUTO = 0,  /* encoder measures each and keeps the smallest */
	CODEC_ORDER_VALUE = 1, /* v[i] - v[0] */
	CODEC_ORDER_DELTA = 2, /* v[i] - v[i-1] */
	CODEC_ORDER_DOD = 3,   /* delta of delta */
};

typedef struct codec_str {
	const char *p; /* may be NULL when n == 0 */
	uint32_t n;
} codec_str;

/* A growable byte buffer; zero-initialise, free with codec_buf_free. */
typedef struct codec_buf {
	uint8_t *p;
	size_t len, cap;
} codec_buf;

/* Makes room for extra more bytes past len; -ENOMEM leaves b unchanged. */
int codec_buf_reserve(codec_buf *b, size_t extra);
void codec_buf_free(codec_buf *b);

/* Zero-initialised options are the defaults. zstd runs on the body and is
 * kept only when it saves more than 1/64 of it; bodies that are already
 * bit-packed (int, dec, xor, bin, bitmap) are tried at level 1 whatever
 * zstd_level says: zstd rarely shrinks them, and level 1 still finds the
 * repeats when it does. */
typedef struct codec_opts {
	int zstd_level;         /* strings, raw: 0 CODEC_ZSTD_DEFAULT; < 0 never zstd */
	int zstd_always;        /* keep zstd even when it does not shrink (tests) */
	enum codec_enc force;   /* CODEC_AUTO, or the one encoding to use */
	enum codec_order order; /* INT/DEC/BIN transform; CODEC_ORDER_AUTO normally */
} codec_opts;

/* What one codec_encode did, for stats and `tally inspect`. */
typedef struct codec_stats {
	uint8_t enc;          /* enum codec_enc chosen */
	uint8_t zstd;         /* 1: body stored zstd-compressed */
	uint8_t order;        /* INT, DEC, BIN: enum codec_order used (0 when n/a) */
	uint8_t scale;        /* DEC: decimal digits */
	uint32_t n;           /* rows */
	uint32_t n_present;   /* rows with a value */
	uint32_t n_except;    /* DEC, BIN: values stored verbatim */
	uint64_t raw_bytes;   /* values in memory: 8 per number, 1 per bool, string bytes */
	uint64_t body_bytes;  /* encoded values before zstd */
	uint64_t block_bytes; /* the block as written */
} codec_stats;

/* What a block's header says, read without decoding it. */
typedef struct codec_block_info {
	uint8_t enc, kind, zstd;
	uint32_t n, n_present;
	size_t header_bytes; /* up to the body */
} codec_block_info;

/* Scratch memory and zstd contexts, reused across calls. */
typedef struct codec_ctx codec_ctx;

/* NULL on allocation failure. */
codec_ctx *codec_ctx_new(void);
/* NULL is a no-op. */
void codec_ctx_free(codec_ctx *cx);

/*
 * Appends one block holding vals[0..n) (n <= CODEC_BLOCK_MAX) to out.
 * cx may be NULL (a temporary context is used: slower), opt may be NULL
 * (defaults), st may be NULL. Every encoding a kind takes can represent
 * every value of it (DEC and BIN store what they cannot scale verbatim),
 * so a forced encoding only fails when it does not take the kind.
 * Errors: TALLY_EINVAL for a bad kind, n, a NULL string with a nonzero
 * length, or a forced encoding that does not take the kind; TALLY_ELIMIT
 * when the strings pass CODEC_BODY_MAX (split the block); -ENOMEM. On
 * error out->len is unchanged. With a reused cx, it allocates only to grow
 * cx and out.
 */
int codec_encode(codec_ctx *cx, enum codec_kind kind, const void *vals, const uint64_t *present,
		 uint32_t n, const codec_opts *opt, codec_buf *out, codec_stats *st);

/*
 * Decodes the block in p[0..len) (exactly one block, nothing after it)
 * into vals (n_expected slots of the kind's type) and, if present is not
 * NULL, its presence bitmap ((n_expected + 63) / 64 words). For STR and
 * KEY, arena is required: it is emptied and refilled, and the decoded
 * codec_str point into it until the arena is next used or freed (absent
 * rows get {"", 0}). cx may be NULL. Errors: TALLY_ECORRUPT (a kind or
 * row count other than expected included), TALLY_EINVAL for bad
 * arguments, -ENOMEM. On error vals and present hold garbage.
 */
int codec_decode(codec_ctx *cx, const uint8_t *p, size_t len, enum codec_kind kind,
		 uint32_t n_expected, void *vals, uint64_t *present, codec_buf *arena);

/*
 * Like codec_decode, but only the first rows: an exact aggregate's edge
 * needs the few rows of a stripe up to a time, and decoding can stop
 * there. Rows [0, want) come out exact; for a CODEC_TS block (times
 * ascending) decoding may also stop after the frame that reaches a time
 * >= stop (pass INT64_MIN for no such stop). *got = how many leading rows
 * are exact (at least min(want, n_expected) unless a time >= stop is
 * among them); the slots after them hold garbage, the presence bitmap is
 * whole. The numeric encodings stop early; the others decode everything.
 * A block decoded only in part has its trailing length checks skipped:
 * the part file's checksum still covers every byte.
 */
int codec_decode_head(codec_ctx *cx, const uint8_t *p, size_t len, enum codec_kind kind,
		      uint32_t n_expected, uint32_t want, int64_t stop, void *vals,
		      uint64_t *present, uint32_t *got);

/*
 * Asks the next codec_decode_head on cx for a CODEC_F64 block's values as
 * integers in units of 10^-scale (scale <= CODEC_DEC_SCALE_MAX): a
 * distribution counts values at a decimal resolution, and a DEC block
 * already holds them so (enc_float.c), so the round trip through doubles
 * can be skipped. The request holds for that one call. The block answers
 * it, and codec_units_got then says 1, when it is DEC-coded at a scale s
 * <= scale with no value stored verbatim and every integer m * 10^(scale
 * - s) under 2^50 in magnitude: then each row's int64_t equals the value
 * times 10^scale rounded to nearest (exactly: both roundings of the
 * double path are within a quarter of a unit there). Otherwise the rows
 * are doubles as always and codec_units_got says 0. A scale past
 * CODEC_DEC_SCALE_MAX withdraws a request (a caller whose read failed
 * before decoding leaves none behind for the next one).
 */
void codec_want_units(codec_ctx *cx, unsigned scale);
int codec_units_got(const codec_ctx *cx);

/* Reads a block's header; TALLY_ECORRUPT when it does not parse. */
int codec_block_info_get(const uint8_t *p, size_t len, codec_block_info *out);

/* "int", "dec", ...; "?" for an unknown id. Static storage. */
const char *codec_name(unsigned enc);
/* "ts", "f64", ...; "?" for an unknown kind. */
const char *codec_kind_name(unsigned kind);

#endif
