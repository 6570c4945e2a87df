/*
 * enc_str.c — string encodings: PLAIN, DICT and RLE, for STR and KEY.
 *
 * Strings are lengths plus bytes; the lengths, dictionary ids and run
 * lengths are integers and go through the integer coder (enc_int.c), so
 * the ideas that make numbers small make these small too: a column of
 * plates with a few hundred distinct values becomes ids of 8 or 9 bits,
 * and a key column, sorted, becomes one run per key. zstd (codec.c) then
 * takes what repeats inside the bytes.
 *
 * An "ints" below is varint L, then an integer stream of L bytes.
 * PLAIN body: ints (n lengths), then the bytes of all strings back to back
 *             (exactly the sum of the lengths).
 * DICT body:  varint d (entries, first-appearance order; 0 iff n = 0),
 *             ints (d lengths), the d entries' bytes back to back,
 *             then to the end an integer stream of n ids (< d).
 * RLE body:   varint r (runs; 0 iff n = 0), ints (r run lengths, each >= 1,
 *             summing to n), then a PLAIN body of the r run values.
 */
#include <errno.h>
#include <xxhash.h>

#include "enc.h"

static const char empty[1] = "";

/* Appends varint L + an integer stream of L bytes. */
static int put_ints(codec_ctx *cx, const int64_t *v, uint32_t n, codec_buf *out)
{
	if (codec_buf_reserve(out, 10))
		return -ENOMEM;
	size_t at = out->len;
	out->len += 10;
	int rc = enc_ints_put(cx, v, n, CODEC_ORDER_AUTO, out, NULL);
	if (rc) {
		out->len = at;
		return rc;
	}
	size_t l = out->len - at - 10;
	size_t k = enc_varint_put(out->p + at, l);
	memmove(out->p + at + k, out->p + at + 10, l);
	out->len = at + k + l;
	return 0;
}

static int get_ints(codec_ctx *cx, const uint8_t *p, size_t len, size_t *pos, uint32_t n,
		    int64_t *v, const char *what)
{
	uint64_t l;
	int rc = enc_varint_get(p, len, pos, &l, what);
	if (rc)
		return rc;
	if (l > len - *pos)
		return ENC_CORRUPT("%s: %llu bytes, %zu left", what, (unsigned long long)l,
				   len - *pos);
	if ((rc = enc_ints_get(cx, p + *pos, l, n, v)))
		return err_prefix(rc, "%s", what);
	*pos += l;
	return 0;
}

static int plain_put(codec_ctx *cx, const codec_str *s, uint32_t n, codec_buf *out)
{
	int64_t *len = enc_scratch(cx, ENC_S_TMP, (size_t)n * 8 + 8);
	if (!len)
		return -ENOMEM;
	size_t total = 0;
	for (uint32_t i = 0; i < n; i++) {
		len[i] = s[i].n;
		total += s[i].n;
	}
	int rc = put_ints(cx, len, n, out);
	if (rc || (rc = codec_buf_reserve(out, total)))
		return rc;
	for (uint32_t i = 0; i < n; i++) {
		if (s[i].n)
			memcpy(out->p + out->len, s[i].p, s[i].n);
		out->len += s[i].n;
	}
	return 0;
}

/* Decodes n strings from exactly p[0..len) into s (pointing into p). */
static int plain_get(codec_ctx *cx, const uint8_t *p, size_t len, uint32_t n, codec_str *s)
{
	int64_t *l = enc_scratch(cx, ENC_S_TMP, (size_t)n * 8 + 8);
	if (!l)
		return -ENOMEM;
	size_t pos = 0;
	int rc = get_ints(cx, p, len, &pos, n, l, "plain lengths");
	if (rc)
		return rc;
	for (uint32_t i = 0; i < n; i++) {
		if (l[i] < 0 || (uint64_t)l[i] > len - pos)
			return ENC_CORRUPT("plain: string %u of %lld bytes, %zu left", i,
					   (long long)l[i], len - pos);
		s[i].p = l[i] ? (const char *)p + pos : empty;
		s[i].n = (uint32_t)l[i];
		pos += (size_t)l[i];
	}
	if (pos != len)
		return ENC_CORRUPT("plain: %zu bytes left over", len - pos);
	return 0;
}

static int plain_encode(codec_ctx *cx, const enc_vals *in, const codec_opts *opt, codec_buf *out,
			codec_stats *st)
{
	(void)opt, (void)st;
	return plain_put(cx, in->v, in->n, out);
}

static int plain_decode(codec_ctx *cx, enum codec_kind kind, const uint8_t *body, size_t len,
			uint32_t n, void *out, codec_buf *arena)
{
	(void)kind, (void)arena;
	return plain_get(cx, body, len, n, out);
}

const codec_ops enc_plain_ops = {
	.id = CODEC_ENC_PLAIN,
	.name = "plain",
	.kinds = 1u << CODEC_STR | 1u << CODEC_KEY,
	.encode = plain_encode,
	.decode = plain_decode,
};

/* ------------------------------------------------------------ DICT */

static inline int str_eq(const codec_str *a, const codec_str *b)
{
	return a->n == b->n && (a->n == 0 || memcmp(a->p, b->p, a->n) == 0);
}

static int dict_encode(codec_ctx *cx, const enc_vals *in, const codec_opts *opt, codec_buf *out,
		       codec_stats *st)
{
	(void)st;
	const codec_str *s = in->v;
	uint32_t n = in->n, cap = 16;
	while (cap < 2 * (uint64_t)n)
		cap *= 2;
	uint32_t *slot = enc_scratch(cx, ENC_S_HASH, (size_t)cap * 4);
	int64_t *ids = enc_scratch(cx, ENC_S_TMP3, (size_t)n * 8 + 8);
	codec_str *ent = enc_scratch(cx, ENC_S_TMP2, (size_t)n * sizeof *ent + 8);
	if (!slot || !ids || !ent)
		return -ENOMEM;
	memset(slot, 0, (size_t)cap * 4);
	uint32_t d = 0, limit = opt->force == CODEC_ENC_DICT ? n : n / 2;
	for (uint32_t i = 0; i < n; i++) {
		if (i && str_eq(&s[i], &s[i - 1])) { /* runs cost no hashing */
			ids[i] = ids[i - 1];
			continue;
		}
		uint32_t h = (uint32_t)XXH3_64bits(s[i].n ? s[i].p : empty, s[i].n) & (cap - 1);
		while (slot[h] && !str_eq(&ent[slot[h] - 1], &s[i]))
			h = (h + 1) & (cap - 1);
		if (!slot[h]) {
			if (d >= limit)
				return err_set(TALLY_EINVAL,
					       "codec: over %u distinct strings of %u", limit, n);
			ent[d] = s[i];
			slot[h] = ++d;
		}
		ids[i] = slot[h] - 1;
	}
	int rc = enc_buf_varint(out, d);
	if (!rc)
		rc = plain_put(cx, ent, d, out);
	if (!rc)
		rc = enc_ints_put(cx, ids, n, CODEC_ORDER_AUTO, out, NULL);
	return rc;
}

static int dict_decode(codec_ctx *cx, enum codec_kind kind, const uint8_t *body, size_t len,
		       uint32_t n, void *out, codec_buf *arena)
{
	(void)kind, (void)arena;
	codec_str *s = out;
	size_t pos = 0;
	uint64_t d;
	int rc = enc_varint_get(body, len, &pos, &d, "dict entries");
	if (rc)
		return rc;
	if (d > n || (d == 0) != (n == 0))
		return ENC_CORRUPT("dict: %llu entries for %u values", (unsigned long long)d, n);
	int64_t *l = enc_scratch(cx, ENC_S_TMP3, (size_t)d * 8 + 8);
	codec_str *ent = enc_scratch(cx, ENC_S_TMP2, (size_t)d * sizeof *ent + 8);
	if (!l || !ent)
		return -ENOMEM;
	if ((rc = get_ints(cx, body, len, &pos, (uint32_t)d, l, "dict lengths")))
		return rc;
	for (uint32_t i = 0; i < d; i++) {
		if (l[i] < 0 || (uint64_t)l[i] > len - pos)
			return ENC_CORRUPT("dict: entry %u of %lld bytes, %zu left", i,
					   (long long)l[i], len - pos);
		ent[i].p = l[i] ? (const char *)body + pos : empty;
		ent[i].n = (uint32_t)l[i];
		pos += (size_t)l[i];
	}
	int64_t *ids = enc_scratch(cx, ENC_S_TMP3, (size_t)n * 8 + 8);
	if (!ids)
		return -ENOMEM;
	if ((rc = enc_ints_get(cx, body + pos, len - pos, n, ids)))
		return err_prefix(rc, "dict ids");
	for (uint32_t i = 0; i < n; i++) {
		if ((uint64_t)ids[i] >= d)
			return ENC_CORRUPT("dict: value %u has id %llu of %llu", i,
					   (unsigned long long)ids[i], (unsigned long long)d);
		s[i] = ent[ids[i]];
	}
	return 0;
}

const codec_ops enc_dict_ops = {
	.id = CODEC_ENC_DICT,
	.name = "dict",
	.kinds = 1u << CODEC_STR | 1u << CODEC_KEY,
	.encode = dict_encode,
	.decode = dict_decode,
};

/* ------------------------------------------------------------ RLE */

static int rle_encode(codec_ctx *cx, const enc_vals *in, const codec_opts *opt, codec_buf *out,
		      codec_stats *st)
{
	(void)st;
	const codec_str *s = in->v;
	uint32_t n = in->n, r = 0, limit = opt->force == CODEC_ENC_RLE ? n : n / 2;
	int64_t *run = enc_scratch(cx, ENC_S_TMP3, (size_t)n * 8 + 8);
	codec_str *val = enc_scratch(cx, ENC_S_TMP2, (size_t)n * sizeof *val + 8);
	if (!run || !val)
		return -ENOMEM;
	for (uint32_t i = 0; i < n; i++) {
		if (r && str_eq(&val[r - 1], &s[i])) {
			run[r - 1]++;
			continue;
		}
		if (r >= limit)
			return err_set(TALLY_EINVAL, "codec: over %u runs in %u strings", limit, n);
		val[r] = s[i];
		run[r++] = 1;
	}
	int rc = enc_buf_varint(out, r);
	if (!rc)
		rc = put_ints(cx, run, r, out);
	if (!rc)
		rc = plain_put(cx, val, r, out);
	return rc;
}

static int rle_decode(codec_ctx *cx, enum codec_kind kind, const uint8_t *body, size_t len,
		      uint32_t n, void *out, codec_buf *arena)
{
	(void)kind, (void)arena;
	codec_str *s = out;
	size_t pos = 0;
	uint64_t r;
	int rc = enc_varint_get(body, len, &pos, &r, "rle runs");
	if (rc)
		return rc;
	if (r > n || (r == 0) != (n == 0))
		return ENC_CORRUPT("rle: %llu runs for %u values", (unsigned long long)r, n);
	int64_t *run = enc_scratch(cx, ENC_S_TMP3, (size_t)r * 8 + 8);
	codec_str *val = enc_scratch(cx, ENC_S_TMP2, (size_t)r * sizeof *val + 8);
	if (!run || !val)
		return -ENOMEM;
	if ((rc = get_ints(cx, body, len, &pos, (uint32_t)r, run, "rle run lengths")))
		return rc;
	if ((rc = plain_get(cx, body + pos, len - pos, (uint32_t)r, val)))
		return err_prefix(rc, "rle values");
	uint32_t at = 0;
	for (uint32_t j = 0; j < r; j++) {
		if (run[j] < 1 || (uint64_t)run[j] > n - at)
			return ENC_CORRUPT("rle: run %u of %lld values, %u left", j,
					   (long long)run[j], n - at);
		for (int64_t k = 0; k < run[j]; k++)
			s[at++] = val[j];
	}
	if (at != n)
		return ENC_CORRUPT("rle: runs cover %u of %u values", at, n);
	return 0;
}

const codec_ops enc_rle_ops = {
	.id = CODEC_ENC_RLE,
	.name = "rle",
	.kinds = 1u << CODEC_STR | 1u << CODEC_KEY,
	.encode = rle_encode,
	.decode = rle_decode,
};
