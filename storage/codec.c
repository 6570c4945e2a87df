/*
 * codec.c — column blocks: the frame around every encoding, the choice of
 * encoding, presence of values, and zstd.
 *
 * The idea: an encoding only ever sees a dense array of the values that
 * are present, and returns a body; this file owns everything else. Each
 * block says which encoding made it, so a reader never needs to know what
 * the writer chose, and a later writer may choose differently.
 *
 * Block layout (docs/formats.md, "Column encodings"):
 *   byte 0   encoding id (enum codec_enc)
 *   byte 1   kind (enum codec_kind)
 *   byte 2   flags: bit 0 body is one zstd frame, bit 1 presence follows;
 *            other bits zero
 *   varint   n, rows (<= CODEC_BLOCK_MAX)
 *   if presence:
 *     varint p, rows with a value (< n)
 *     byte   0: bitmap, ceil(n / 8) bytes, bit i % 8 of byte i / 8 = row i;
 *            1: runs, varint count then that many varints, run lengths
 *            alternately of absent and present rows, absent first (that
 *            first run may be 0), summing to n
 *   if zstd: varint raw, the body's size before zstd
 *   body     to the end of the block: the encoding's bytes for the present
 *            values, or one zstd frame that decompresses to exactly raw bytes
 */
#include "codec.h"

#include <errno.h>
#include <zstd.h>

#include "enc.h"
#include "mem.h"

#define FLAG_ZSTD     1u
#define FLAG_PRESENCE 2u
#define ZSTD_MIN_BODY 64   /* below this a zstd frame header eats the gain */
#define ZSTD_PROBE    4096 /* bytes of a bit-packed body tried first */

static const codec_ops *const ops_by_id[CODEC_ENC_MAX + 1] = {
	[CODEC_ENC_RAW] = &enc_raw_ops,       [CODEC_ENC_INT] = &enc_int_ops,
	[CODEC_ENC_DEC] = &enc_dec_ops,       [CODEC_ENC_XOR] = &enc_xor_ops,
	[CODEC_ENC_BITMAP] = &enc_bitmap_ops, [CODEC_ENC_PLAIN] = &enc_plain_ops,
	[CODEC_ENC_DICT] = &enc_dict_ops,     [CODEC_ENC_RLE] = &enc_rle_ops,
	[CODEC_ENC_BIN] = &enc_bin_ops,
};

static const char *const kind_names[CODEC_KIND_MAX + 1] = {
	[CODEC_TS] = "ts",     [CODEC_I64] = "i64", [CODEC_U64] = "u64", [CODEC_F64] = "f64",
	[CODEC_BOOL] = "bool", [CODEC_STR] = "str", [CODEC_KEY] = "key",
};

const char *codec_name(unsigned enc)
{
	return enc <= CODEC_ENC_MAX && ops_by_id[enc] ? ops_by_id[enc]->name : "?";
}

const char *codec_kind_name(unsigned kind)
{
	return kind <= CODEC_KIND_MAX && kind_names[kind] ? kind_names[kind] : "?";
}

static int is_str(enum codec_kind k)
{
	return k == CODEC_STR || k == CODEC_KEY;
}

static size_t elem_size(enum codec_kind k)
{
	return k == CODEC_BOOL ? 1 : is_str(k) ? sizeof(codec_str) : 8;
}

/* Largest body a block of p present values of kind k may claim. */
static size_t body_limit(enum codec_kind k, uint32_t p)
{
	if (is_str(k))
		return CODEC_BODY_MAX;
	return (size_t)p * 40 + 64;
}

/* ------------------------------------------------------------ context */

typedef struct ctx_bufs {
	codec_buf cand[3], z;
} ctx_bufs;

/* The buffers live after the struct so that enc.h need not know them. */
typedef struct ctx_full {
	codec_ctx cx;
	ctx_bufs b;
} ctx_full;

static ctx_bufs *bufs(codec_ctx *cx)
{
	return &((ctx_full *)cx)->b;
}

codec_ctx *codec_ctx_new(void)
{
	return mem_calloc(1, sizeof(ctx_full));
}

void codec_ctx_free(codec_ctx *cx)
{
	if (!cx)
		return;
	ZSTD_freeCCtx(cx->zc);
	ZSTD_freeDCtx(cx->zd);
	for (int i = 0; i < ENC_SCRATCH; i++)
		mem_free(cx->scratch[i]);
	ctx_bufs *b = bufs(cx);
	for (int i = 0; i < 3; i++)
		codec_buf_free(&b->cand[i]);
	codec_buf_free(&b->z);
	mem_free(cx);
}

/* ------------------------------------------------------------ presence */

static inline int bit_get(const uint64_t *b, uint32_t i)
{
	return (int)(b[i >> 6] >> (i & 63) & 1);
}

static uint32_t count_present(const uint64_t *present, uint32_t n)
{
	uint32_t c = 0;
	for (uint32_t w = 0; w < n / 64; w++)
		c += (uint32_t)__builtin_popcountll(present[w]);
	if (n & 63)
		c += (uint32_t)__builtin_popcountll(present[n / 64] &
						    (((uint64_t)1 << (n & 63)) - 1));
	return c;
}

static unsigned varint_len(uint64_t v)
{
	unsigned n = 1;
	while (v >= 0x80) {
		v >>= 7;
		n++;
	}
	return n;
}

/* Walks the runs of presence, absent first; writes their lengths as
 * varints to out (when not NULL), their size to *bytes; returns how many. */
static uint32_t runs_walk(const uint64_t *present, uint32_t n, size_t *bytes, uint8_t *out)
{
	uint32_t count = 0, i = 0;
	int want = 0;
	*bytes = 0;
	do {
		uint32_t j = i;
		while (j < n && bit_get(present, j) == want)
			j++;
		if (out)
			out += enc_varint_put(out, j - i);
		*bytes += varint_len(j - i);
		count++;
		i = j;
		want ^= 1;
	} while (i < n);
	return count;
}

/* Appends the presence section (after the caller's varint n). */
static int presence_put(codec_buf *out, const uint64_t *present, uint32_t n, uint32_t np)
{
	size_t run_bytes, bm_bytes = ((size_t)n + 7) / 8;
	uint32_t runs = runs_walk(present, n, &run_bytes, NULL);
	run_bytes += varint_len(runs);
	if (codec_buf_reserve(out, 11 + (run_bytes < bm_bytes ? run_bytes : bm_bytes)))
		return -ENOMEM;
	uint8_t *p = out->p + out->len;
	p += enc_varint_put(p, np);
	if (run_bytes < bm_bytes) {
		*p++ = 1;
		p += enc_varint_put(p, runs);
		size_t b;
		runs_walk(present, n, &b, p);
		p += b;
	} else {
		*p++ = 0;
		memset(p, 0, bm_bytes);
		for (uint32_t i = 0; i < n; i++)
			p[i >> 3] |= (uint8_t)(bit_get(present, i) << (i & 7));
		p += bm_bytes;
	}
	out->len = (size_t)(p - out->p);
	return 0;
}

/* Parses the presence section at *pos into bits (n bits, zeroed first). */
static int presence_get(const uint8_t *p, size_t len, size_t *pos, uint32_t n, uint32_t np,
			uint64_t *bits)
{
	memset(bits, 0, ((size_t)n + 63) / 64 * 8);
	if (*pos >= len)
		return ENC_CORRUPT("presence mode truncated");
	uint8_t mode = p[(*pos)++];
	if (mode == 0) {
		size_t bytes = ((size_t)n + 7) / 8;
		if (len - *pos < bytes)
			return ENC_CORRUPT("presence bitmap truncated");
		const uint8_t *b = p + *pos;
		if ((n & 7) && (b[bytes - 1] >> (n & 7)))
			return ENC_CORRUPT("presence bits set past row %u", n);
		for (uint32_t i = 0; i < n; i++)
			bits[i >> 6] |= (uint64_t)(b[i >> 3] >> (i & 7) & 1) << (i & 63);
		*pos += bytes;
	} else if (mode == 1) {
		uint64_t runs;
		int rc = enc_varint_get(p, len, pos, &runs, "presence runs");
		if (rc)
			return rc;
		if (runs > (uint64_t)n + 1)
			return ENC_CORRUPT("%llu presence runs for %u rows",
					   (unsigned long long)runs, n);
		uint32_t at = 0;
		for (uint64_t r = 0; r < runs; r++) {
			uint64_t l;
			if ((rc = enc_varint_get(p, len, pos, &l, "presence run")))
				return rc;
			if (l > n - at)
				return ENC_CORRUPT("presence run %llu of %llu rows past row %u",
						   (unsigned long long)r, (unsigned long long)l, n);
			if (r & 1)
				for (uint32_t i = at; i < at + l; i++)
					bits[i >> 6] |= (uint64_t)1 << (i & 63);
			at += (uint32_t)l;
		}
		if (at != n)
			return ENC_CORRUPT("presence runs cover %u of %u rows", at, n);
	} else {
		return ENC_CORRUPT("presence mode %u", mode);
	}
	uint32_t c = count_present(bits, n);
	if (c != np)
		return ENC_CORRUPT("presence has %u rows, header says %u", c, np);
	return 0;
}

/* ------------------------------------------------------------ header */

typedef struct block_hdr {
	uint8_t enc, kind, flags;
	uint32_t n, np;
	size_t pos; /* at the presence section, or past it once parsed */
} block_hdr;

static int header_get(const uint8_t *p, size_t len, block_hdr *h)
{
	if (len < 4)
		return ENC_CORRUPT("%zu bytes, shorter than any header", len);
	h->enc = p[0];
	h->kind = p[1];
	h->flags = p[2];
	if (h->enc > CODEC_ENC_MAX || !ops_by_id[h->enc])
		return ENC_CORRUPT("unknown encoding %u", h->enc);
	if (h->kind < 1 || h->kind > CODEC_KIND_MAX)
		return ENC_CORRUPT("unknown kind %u", h->kind);
	if (!(ops_by_id[h->enc]->kinds & 1u << h->kind))
		return ENC_CORRUPT("encoding %s does not take kind %s", codec_name(h->enc),
				   codec_kind_name(h->kind));
	if (h->flags & ~(FLAG_ZSTD | FLAG_PRESENCE))
		return ENC_CORRUPT("unknown flags 0x%02x", h->flags);
	size_t pos = 3;
	uint64_t n, np;
	int rc = enc_varint_get(p, len, &pos, &n, "row count");
	if (rc)
		return rc;
	if (n > CODEC_BLOCK_MAX)
		return ENC_CORRUPT("%llu rows > %u", (unsigned long long)n, CODEC_BLOCK_MAX);
	np = n;
	if (h->flags & FLAG_PRESENCE) {
		if ((rc = enc_varint_get(p, len, &pos, &np, "present rows")))
			return rc;
		if (np >= n)
			return ENC_CORRUPT("presence section with %llu of %llu rows present",
					   (unsigned long long)np, (unsigned long long)n);
	}
	h->n = (uint32_t)n;
	h->np = (uint32_t)np;
	h->pos = pos;
	return 0;
}

int codec_block_info_get(const uint8_t *p, size_t len, codec_block_info *out)
{
	block_hdr h;
	uint64_t bits[CODEC_BLOCK_MAX / 64];
	int rc = header_get(p, len, &h);
	if (!rc && (h.flags & FLAG_PRESENCE))
		rc = presence_get(p, len, &h.pos, h.n, h.np, bits);
	if (!rc && (h.flags & FLAG_ZSTD)) {
		uint64_t raw;
		rc = enc_varint_get(p, len, &h.pos, &raw, "body size");
	}
	if (rc)
		return err_prefix(rc, "codec block");
	out->enc = h.enc;
	out->kind = h.kind;
	out->zstd = h.flags & FLAG_ZSTD;
	out->n = h.n;
	out->n_present = h.np;
	out->header_bytes = h.pos;
	return 0;
}

/* ------------------------------------------------------------ encode */

/* Compresses body[0..len) into z at level. */
static int zstd_run(codec_ctx *cx, const uint8_t *body, size_t len, int level, codec_buf *z)
{
	if (!cx->zc && !(cx->zc = ZSTD_createCCtx()))
		return -ENOMEM;
	size_t cap = ZSTD_compressBound(len);
	z->len = 0;
	if (codec_buf_reserve(z, cap))
		return -ENOMEM;
	size_t r = ZSTD_compressCCtx(cx->zc, z->p, cap, body, len, level);
	if (ZSTD_isError(r))
		return err_set(TALLY_EINVAL, "codec: zstd: %s", ZSTD_getErrorName(r));
	z->len = r;
	return 0;
}

/* Whether zstd is worth keeping: it must save more than 1/64. */
static int zstd_pays(size_t zlen, size_t len)
{
	return zlen + varint_len(len) < len - len / 64;
}

/* Encodes in with op into b (emptied first); TALLY_EINVAL = not applicable. */
static int build(codec_ctx *cx, const codec_ops *op, const enc_vals *in, const codec_opts *o,
		 codec_buf *b, codec_stats *st)
{
	b->len = 0;
	codec_stats s = {0};
	int rc = op->encode(cx, in, o, b, &s);
	if (!rc && b->len > body_limit(in->kind, in->n))
		rc = err_set(TALLY_ELIMIT, "codec: %s body of %zu bytes over the limit", op->name,
			     b->len);
	if (!rc) {
		st->order = s.order;
		st->scale = s.scale;
		st->n_except = s.n_except;
	}
	return rc;
}

/* Chooses and builds the body; returns the index of the candidate buffer
 * holding it via *which, the encoding via *op. */
static int choose(codec_ctx *cx, const enc_vals *in, const codec_opts *o, const codec_ops **op,
		  int *which, codec_stats *st)
{
	ctx_bufs *b = bufs(cx);
	codec_stats s1 = *st, s2 = *st;
	int rc;
	*which = 0;
	if (o->force != CODEC_AUTO) {
		*op = o->force <= CODEC_ENC_MAX ? ops_by_id[o->force] : NULL;
		if (!*op || !((*op)->kinds & 1u << in->kind))
			return err_set(TALLY_EINVAL, "codec: encoding %s does not take kind %s",
				       codec_name(o->force), codec_kind_name(in->kind));
		rc = build(cx, *op, in, o, &b->cand[0], st);
		return rc;
	}
	size_t raw8 = (size_t)in->n * 8;
	switch (in->kind) {
	case CODEC_TS:
	case CODEC_I64:
	case CODEC_U64:
		*op = &enc_int_ops;
		if ((rc = build(cx, *op, in, o, &b->cand[0], st)))
			return rc;
		break;
	case CODEC_F64: {
		/* Decimals (DEC) are the common case and cheap to find. When
		 * DEC gives up or costs over 3 bytes a value, the smallest of
		 * DEC, XOR and BIN; BIN is also tried when DEC stored more than
		 * 1/8 of the values verbatim (sum residuals: mostly 0, which DEC
		 * takes, and binary fractions, which it cannot). */
		codec_stats s3 = *st;
		*op = &enc_dec_ops;
		rc = build(cx, *op, in, o, &b->cand[0], &s1);
		if (rc && rc != TALLY_EINVAL)
			return rc;
		int have_dec = !rc, try_xor = rc || b->cand[0].len > (size_t)in->n * 3;
		int try_bin = try_xor || (uint64_t)s1.n_except * 8 > in->n;
		if (try_xor) {
			if ((rc = build(cx, &enc_xor_ops, in, o, &b->cand[1], &s2)))
				return rc;
			if (!have_dec || b->cand[1].len < b->cand[0].len) {
				*op = &enc_xor_ops;
				*which = 1;
				s1 = s2;
			}
		}
		if (try_bin) {
			rc = build(cx, &enc_bin_ops, in, o, &b->cand[2], &s3);
			if (rc && rc != TALLY_EINVAL)
				return rc;
			if (!rc && b->cand[2].len < b->cand[*which].len) {
				*op = &enc_bin_ops;
				*which = 2;
				s1 = s3;
			}
		}
		st->order = s1.order;
		st->scale = s1.scale;
		st->n_except = s1.n_except;
		break;
	}
	case CODEC_BOOL: *op = &enc_bitmap_ops; return build(cx, *op, in, o, &b->cand[0], st);
	default: {
		/* strings: the smallest of RLE, DICT (when they apply) and PLAIN */
		static const codec_ops *const order[] = {&enc_rle_ops, &enc_dict_ops,
							 &enc_plain_ops};
		*op = NULL;
		for (int i = 0; i < 3; i++) {
			/* PLAIN holds every byte: it cannot beat a body smaller than that */
			if (order[i] == &enc_plain_ops && *op &&
			    b->cand[*which].len < st->raw_bytes)
				break;
			int slot = *op ? *which ^ 1 : 0;
			rc = build(cx, order[i], in, o, &b->cand[slot], &s1);
			if (rc == TALLY_EINVAL)
				continue;
			if (rc)
				return rc;
			if (!*op || b->cand[slot].len < b->cand[*which].len) {
				*op = order[i];
				*which = slot;
			}
		}
		return 0;
	}
	}
	if (b->cand[*which].len > raw8) {
		*op = &enc_raw_ops;
		*which = 0;
		st->order = st->scale = 0;
		st->n_except = 0;
		return build(cx, *op, in, o, &b->cand[0], st);
	}
	return 0;
}

static int encode(codec_ctx *cx, enum codec_kind kind, const void *vals, const uint64_t *present,
		  uint32_t n, const codec_opts *o, codec_buf *out, codec_stats *st)
{
	uint32_t np = present ? count_present(present, n) : n;
	if (np == n)
		present = NULL;
	size_t es = elem_size(kind);
	enc_vals in = {.kind = kind, .n = np, .v = vals};
	if (present || kind == CODEC_BOOL) {
		uint8_t *c = enc_scratch(cx, ENC_S_VALS, (size_t)np * es + 8);
		if (!c)
			return -ENOMEM;
		const uint8_t *src = vals;
		uint32_t j = 0;
		for (uint32_t i = 0; i < n; i++) {
			if (present && !bit_get(present, i))
				continue;
			if (kind == CODEC_BOOL)
				c[j] = src[i] != 0;
			else
				memcpy(c + (size_t)j * es, src + (size_t)i * es, es);
			j++;
		}
		in.v = c;
	}
	st->n = n;
	st->n_present = np;
	if (is_str(kind)) {
		const codec_str *s = in.v;
		for (uint32_t i = 0; i < np; i++) {
			if (s[i].n && !s[i].p)
				return err_set(TALLY_EINVAL, "codec: string %u is NULL", i);
			st->raw_bytes += s[i].n;
		}
		if (st->raw_bytes > CODEC_BODY_MAX)
			return err_set(TALLY_ELIMIT, "codec: %llu string bytes in one block",
				       (unsigned long long)st->raw_bytes);
	} else {
		st->raw_bytes = (uint64_t)np * (kind == CODEC_BOOL ? 1 : 8);
	}

	const codec_ops *op;
	int which, rc = choose(cx, &in, o, &op, &which, st);
	if (rc)
		return rc;
	codec_buf *body = &bufs(cx)->cand[which], *z = &bufs(cx)->z;
	int use_z = 0;
	int level = o->zstd_level ? o->zstd_level : CODEC_ZSTD_DEFAULT;
	int packed = op == &enc_int_ops || op == &enc_dec_ops || op == &enc_xor_ops ||
		     op == &enc_bin_ops || op == &enc_bitmap_ops;
	if (o->zstd_level >= 0 && (body->len >= ZSTD_MIN_BODY || o->zstd_always)) {
		int go = 1;
		if (packed) {
			/* Bit-packed bodies: level 1, and only when their first
			 * ZSTD_PROBE bytes show repeats (periodic data). */
			level = 1;
			if (body->len > 2 * ZSTD_PROBE && !o->zstd_always) {
				if ((rc = zstd_run(cx, body->p, ZSTD_PROBE, level, z)))
					return rc;
				go = zstd_pays(z->len, ZSTD_PROBE);
			}
		}
		if (go && (rc = zstd_run(cx, body->p, body->len, level, z)))
			return rc;
		use_z = go && (o->zstd_always || zstd_pays(z->len, body->len));
	}

	size_t start = out->len;
	size_t stored = use_z ? z->len : body->len;
	if (codec_buf_reserve(out, 3 + 10 + 10 + stored))
		return -ENOMEM;
	uint8_t *p = out->p + out->len;
	p[0] = op->id;
	p[1] = (uint8_t)kind;
	p[2] = (uint8_t)((use_z ? FLAG_ZSTD : 0) | (present ? FLAG_PRESENCE : 0));
	out->len += 3 + enc_varint_put(p + 3, n);
	if (present && (rc = presence_put(out, present, n, np))) {
		out->len = start;
		return rc;
	}
	if (use_z && (rc = enc_buf_varint(out, body->len))) {
		out->len = start;
		return rc;
	}
	if ((rc = enc_buf_put(out, use_z ? z->p : body->p, stored))) {
		out->len = start;
		return rc;
	}
	st->enc = op->id;
	st->zstd = (uint8_t)use_z;
	st->body_bytes = body->len;
	st->block_bytes = out->len - start;
	return 0;
}

int codec_encode(codec_ctx *cx, enum codec_kind kind, const void *vals, const uint64_t *present,
		 uint32_t n, const codec_opts *opt, codec_buf *out, codec_stats *st)
{
	codec_opts defaults = {0};
	codec_stats dummy;
	if (kind < 1 || kind > CODEC_KIND_MAX)
		return err_set(TALLY_EINVAL, "codec: unknown kind %d", (int)kind);
	if (n > CODEC_BLOCK_MAX)
		return err_set(TALLY_EINVAL, "codec: %u values in one block > %u", n,
			       CODEC_BLOCK_MAX);
	if ((n && !vals) || !out)
		return err_set(TALLY_EINVAL, "codec: no values or no output");
	if (!opt)
		opt = &defaults;
	if (!st)
		st = &dummy;
	memset(st, 0, sizeof *st);
	codec_ctx *tmp = NULL;
	if (!cx && !(cx = tmp = codec_ctx_new()))
		return -ENOMEM;
	int rc = encode(cx, kind, vals, present, n, opt, out, st);
	codec_ctx_free(tmp);
	return rc;
}

/* ------------------------------------------------------------ decode */

/* The row of dense value number j (rows with a value counted from 0); n
 * when there are not that many. */
static uint32_t row_of_dense(const uint64_t *pb, uint32_t n, uint32_t j)
{
	for (uint32_t w = 0; w < (n + 63) / 64; w++) {
		uint64_t b = pb[w];
		unsigned c = (unsigned)__builtin_popcountll(b);
		if (j < c) {
			while (j--)
				b &= b - 1;
			uint32_t r = w * 64 + (uint32_t)__builtin_ctzll(b);
			return r < n ? r : n;
		}
		j -= c;
	}
	return n;
}

/* Dense values in rows [0, rows). */
static uint32_t dense_below(const uint64_t *pb, uint32_t rows)
{
	uint32_t c = 0, w = 0;
	for (; w < rows / 64; w++)
		c += (uint32_t)__builtin_popcountll(pb[w]);
	if (rows % 64)
		c += (uint32_t)__builtin_popcountll(pb[w] & (((uint64_t)1 << (rows % 64)) - 1));
	return c;
}

/* want and stop as in codec_decode_head; *got as there. */
static int decode(codec_ctx *cx, const uint8_t *p, size_t len, enum codec_kind kind,
		  uint32_t n_expected, void *vals, uint64_t *present, codec_buf *arena,
		  uint64_t *bits, uint32_t want, int64_t stop, uint32_t *got)
{
	block_hdr h;
	cx->units_got = 0;
	int rc = header_get(p, len, &h);
	if (rc)
		return rc;
	if (h.kind != kind)
		return ENC_CORRUPT("kind %s, expected %s", codec_kind_name(h.kind),
				   codec_kind_name(kind));
	if (h.n != n_expected)
		return ENC_CORRUPT("%u rows, expected %u", h.n, n_expected);
	if ((h.flags & FLAG_PRESENCE) &&
	    (rc = presence_get(p, len, &h.pos, h.n, h.np, present ? present : bits)))
		return rc;
	if (present && !(h.flags & FLAG_PRESENCE)) {
		memset(present, 0xff, (size_t)h.n / 64 * 8);
		if (h.n % 64)
			present[h.n / 64] = ((uint64_t)1 << (h.n % 64)) - 1;
	}
	const uint8_t *body = p + h.pos;
	size_t blen = len - h.pos, limit = body_limit(kind, h.np);
	if (h.flags & FLAG_ZSTD) {
		uint64_t raw;
		if ((rc = enc_varint_get(p, len, &h.pos, &raw, "body size")))
			return rc;
		if (raw > limit)
			return ENC_CORRUPT("body of %llu bytes > %zu for %u values",
					   (unsigned long long)raw, limit, h.np);
		body = p + h.pos;
		blen = len - h.pos;
		if (ZSTD_getFrameContentSize(body, blen) != raw)
			return ENC_CORRUPT("zstd frame size is not the %llu bytes the header says",
					   (unsigned long long)raw);
		uint8_t *dst;
		if (is_str(kind)) {
			arena->len = 0;
			if (codec_buf_reserve(arena, raw + 1))
				return -ENOMEM;
			dst = arena->p;
		} else if (!(dst = enc_scratch(cx, ENC_S_BODY, raw + 1))) {
			return -ENOMEM;
		}
		if (!cx->zd && !(cx->zd = ZSTD_createDCtx()))
			return -ENOMEM;
		size_t r = ZSTD_decompressDCtx(cx->zd, dst, raw, body, blen);
		if (ZSTD_isError(r))
			return ENC_CORRUPT("zstd: %s", ZSTD_getErrorName(r));
		if (r != raw)
			return ENC_CORRUPT("zstd gave %zu bytes, header says %llu", r,
					   (unsigned long long)raw);
		body = dst;
		blen = raw;
		if (is_str(kind))
			arena->len = raw;
	} else if (is_str(kind)) {
		arena->len = 0;
		if ((rc = enc_buf_put(arena, body, blen)))
			return rc;
		body = arena->p;
	}
	if (blen > limit)
		return ENC_CORRUPT("body of %zu bytes > %zu for %u values", blen, limit, h.np);

	size_t es = elem_size(kind);
	void *dense = vals;
	if (h.np != h.n && !(dense = enc_scratch(cx, ENC_S_VALS, (size_t)h.np * es + 8)))
		return -ENOMEM;
	const uint64_t *pb = present ? present : bits;
	want = want < h.n ? want : h.n;
	if (h.np != h.n && stop != INT64_MIN)
		want = h.n; /* a stop applies to dense rows only: decode all */
	cx->want = h.np == h.n ? want : dense_below(pb, want);
	cx->stop = h.np == h.n ? stop : INT64_MIN;
	cx->got = h.np;
	if ((rc = ops_by_id[h.enc]->decode(cx, kind, body, blen, h.np, dense, arena)))
		return err_prefix(rc, "%s", ops_by_id[h.enc]->name);
	*got = h.np == h.n ? cx->got : row_of_dense(pb, h.n, cx->got);
	if (h.np == h.n)
		return 0;
	/* Spread the dense values over the rows, from the back so that the
	 * copy could even run in place. */
	const uint8_t *src = dense;
	uint8_t *dst = vals;
	uint32_t j = h.np;
	for (uint32_t i = h.n; i-- > 0;) {
		if (bit_get(pb, i)) {
			j--;
			memcpy(dst + (size_t)i * es, src + (size_t)j * es, es);
		} else if (is_str(kind)) {
			codec_str e = {"", 0};
			memcpy(dst + (size_t)i * es, &e, es);
		} else {
			memset(dst + (size_t)i * es, 0, es);
		}
	}
	return 0;
}

int codec_decode(codec_ctx *cx, const uint8_t *p, size_t len, enum codec_kind kind,
		 uint32_t n_expected, void *vals, uint64_t *present, codec_buf *arena)
{
	if (kind < 1 || kind > CODEC_KIND_MAX || !p || (n_expected && !vals) ||
	    (is_str(kind) && !arena))
		return err_set(TALLY_EINVAL, "codec: bad decode arguments");
	codec_ctx *tmp = NULL;
	if (!cx && !(cx = tmp = codec_ctx_new()))
		return -ENOMEM;
	uint64_t bits[CODEC_BLOCK_MAX / 64];
	uint32_t got;
	cx->units_want = 0; /* doubles: the request is codec_decode_head's */
	int rc = decode(cx, p, len, kind, n_expected, vals, present, arena, bits, n_expected,
			INT64_MIN, &got);
	codec_ctx_free(tmp);
	if (rc == TALLY_ECORRUPT)
		err_prefix(rc, "codec block (%s)", codec_kind_name(kind));
	return rc;
}

int codec_decode_head(codec_ctx *cx, const uint8_t *p, size_t len, enum codec_kind kind,
		      uint32_t n_expected, uint32_t want, int64_t stop, void *vals,
		      uint64_t *present, uint32_t *got)
{
	*got = 0;
	if (kind < 1 || kind > CODEC_KIND_MAX || is_str(kind) || !cx || !p || (n_expected && !vals))
		return err_set(TALLY_EINVAL, "codec: bad decode arguments");
	uint64_t bits[CODEC_BLOCK_MAX / 64];
	int rc = decode(cx, p, len, kind, n_expected, vals, present, NULL, bits, want,
			kind == CODEC_TS ? stop : INT64_MIN, got);
	cx->units_want = 0;
	if (rc == TALLY_ECORRUPT)
		err_prefix(rc, "codec block (%s)", codec_kind_name(kind));
	return rc;
}

void codec_want_units(codec_ctx *cx, unsigned scale)
{
	cx->units_want = scale <= CODEC_DEC_SCALE_MAX ? (uint8_t)(scale + 1) : 0;
}

int codec_units_got(const codec_ctx *cx)
{
	return cx->units_got;
}
