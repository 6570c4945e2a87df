/*
 * enc_float.c — float64 encodings: DEC (decimal-aware) and XOR (Gorilla).
 *
 * DEC rests on one exact fact: for |m| < 2^53 and s <= 22, m and 10^s are
 * doubles and IEEE division is correctly rounded, so (double)m / 10^s is
 * the double nearest to the decimal m·10^-s — exactly what strtod gives
 * for "85.2". A value v is decimal at scale s when that expression, with
 * m = round(v·10^s), gives back v's exact bits; the encoder checks every
 * value with the very expression the decoder uses, so a value either
 * round-trips bit for bit or is stored verbatim as an exception (-0.0,
 * NaN, infinities, and any value with more digits than the block's scale).
 * The integers m then go through the integer coder: a speed such as 85.2
 * costs what the integer 852 costs, about one byte.
 *
 * DEC body:
 *   byte    scale s (0..CODEC_DEC_SCALE_MAX)
 *   varint  e, the number of exceptions
 *   e times varint gap (index - previous exception index - 1; the first:
 *           its index), 8 bytes LE of the double's bits
 *   rest    integer stream (enc_int.c) of the n integers m; an exception's
 *           slot holds the previous value's m so that deltas stay small
 *
 * XOR body (Pelkonen et al., "Gorilla", VLDB 2015, with a 6-bit leading
 * zero count): bits LSB first; the first value's 64 bits; then per value
 * x = bits ^ previous bits:
 *   x == 0                  1 bit: 0
 *   x fits the last window  2 bits: 1, 0; then the window's bits of x
 *   otherwise               2 bits: 1, 1; 6 bits leading zeros l, 6 bits
 *                           length - 1; then length bits of x >> trailing
 * The window starts as all 64 bits.
 */
#include <errno.h>
#include <math.h>

#include "enc.h"

#define DEC_SAMPLE 256 /* values whose digits choose the scale */

static const double pow10_tab[CODEC_DEC_SCALE_MAX + 1] = {
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
};

static inline uint64_t f64_bits(double d)
{
	uint64_t u;
	memcpy(&u, &d, 8);
	return u;
}

static inline double bits_f64(uint64_t u)
{
	double d;
	memcpy(&d, &u, 8);
	return d;
}

/* The decoder's expression; the encoder checks with this same function. */
static inline double dec_value(int64_t m, unsigned s)
{
	return (double)m / pow10_tab[s];
}

/* m for v at scale s, or 0 with *ok = 0 when v is not exactly m·10^-s. */
static inline int64_t dec_fit(double v, unsigned s, int *ok)
{
	double x = v * pow10_tab[s];
	*ok = 0;
	if (!(fabs(x) < 0x1p53))
		return 0;
	/* any rounding will do: the check below is exact */
	int64_t m = (int64_t)(x < 0 ? x - 0.5 : x + 0.5);
	*ok = f64_bits(dec_value(m, s)) == f64_bits(v);
	return m;
}

/* Smallest scale v fits, CODEC_DEC_SCALE_MAX + 1 for none. */
static unsigned dec_scale_of(double v)
{
	for (unsigned s = 0; s <= CODEC_DEC_SCALE_MAX; s++) {
		if (!(fabs(v * pow10_tab[s]) < 0x1p53))
			break;
		int ok;
		dec_fit(v, s, &ok);
		if (ok)
			return s;
	}
	return CODEC_DEC_SCALE_MAX + 1;
}

/* Picks the scale: each digit costs about log2(10) bits on every value,
 * each exception about 72 bits on its own. */
static unsigned dec_choose(const uint32_t *hist, uint32_t n)
{
	uint32_t fit = 0;
	double best = INFINITY;
	unsigned s_best = 0;
	for (unsigned s = 0; s <= CODEC_DEC_SCALE_MAX; s++) {
		fit += hist[s];
		double cost = 3.33 * s * fit + 72.0 * (n - fit);
		if (cost < best) {
			best = cost;
			s_best = s;
		}
	}
	return s_best;
}

static int dec_encode(codec_ctx *cx, const enc_vals *in, const codec_opts *opt, codec_buf *out,
                      codec_stats *st)
{
	const double *v = in->v;
	uint32_t n = in->n, hist[CODEC_DEC_SCALE_MAX + 2] = {0};
	int forced = opt->force == CODEC_ENC_DEC;
	/* The scale from a sample spread over the block: the pass below checks
	 * every value at that scale anyway, and what does not fit becomes an
	 * exception. Float data that is not decimal gives up here. */
	uint32_t sample = n < DEC_SAMPLE ? n : DEC_SAMPLE, none = 0;
	for (uint32_t j = 0; j < sample; j++) {
		unsigned sc = dec_scale_of(v[(uint64_t)j * n / sample]);
		hist[sc]++;
		none += sc > CODEC_DEC_SCALE_MAX;
	}
	if (!forced && none * 2 > sample)
		return err_set(TALLY_EINVAL, "codec: values are not decimals");
	unsigned s = dec_choose(hist, sample);
	int64_t *m = enc_scratch(cx, ENC_S_TMP, (size_t)n * 8 + 8);
	uint32_t *exc = enc_scratch(cx, ENC_S_TMP2, (size_t)n * 4 + 4);
	if (!m || !exc)
		return -ENOMEM;
	uint32_t ne = 0;
	int64_t prev = 0;
	for (uint32_t i = 0; i < n; i++) {
		int ok;
		int64_t x = dec_fit(v[i], s, &ok);
		if (!ok) {
			exc[ne++] = i;
			x = prev;
		}
		m[i] = prev = x;
	}
	if (!forced && ne * 2 > n)
		return err_set(TALLY_EINVAL, "codec: values are not decimals");
	if (codec_buf_reserve(out, 11 + (size_t)ne * 18))
		return -ENOMEM;
	uint8_t *p = out->p + out->len;
	*p++ = (uint8_t)s;
	p += enc_varint_put(p, ne);
	for (uint32_t j = 0; j < ne; j++) {
		p += enc_varint_put(p, exc[j] - (j ? exc[j - 1] + 1 : 0));
		enc_put_le64(p, f64_bits(v[exc[j]]));
		p += 8;
	}
	out->len = (size_t)(p - out->p);
	enum codec_order used;
	int rc = enc_ints_put(cx, m, n, opt->order, out, &used);
	if (rc)
		return rc;
	if (st) {
		st->scale = (uint8_t)s;
		st->n_except = ne;
		st->order = (uint8_t)used;
	}
	return 0;
}

static int dec_decode(codec_ctx *cx, enum codec_kind kind, const uint8_t *body, size_t len,
                      uint32_t n, void *out, codec_buf *arena)
{
	(void)kind, (void)arena;
	double *d = out;
	if (len < 1)
		return ENC_CORRUPT("decimal: empty body");
	unsigned s = body[0];
	if (s > CODEC_DEC_SCALE_MAX)
		return ENC_CORRUPT("decimal: scale %u > %u", s, CODEC_DEC_SCALE_MAX);
	size_t pos = 1;
	uint64_t ne;
	int rc = enc_varint_get(body, len, &pos, &ne, "decimal exceptions");
	if (rc)
		return rc;
	if (ne > n)
		return ENC_CORRUPT("decimal: %llu exceptions for %u values", (unsigned long long)ne,
		                   n);
	size_t exc_at = pos;
	/* Skip the exceptions to find the integers; check them on the way. */
	uint64_t idx = 0;
	for (uint64_t j = 0; j < ne; j++) {
		uint64_t gap;
		if ((rc = enc_varint_get(body, len, &pos, &gap, "decimal exception index")))
			return rc;
		if (gap >= n - idx)
			return ENC_CORRUPT("decimal: exception %llu past value %u",
			                   (unsigned long long)j, n);
		idx += gap + 1;
		if (len - pos < 8)
			return ENC_CORRUPT("decimal: exception %llu truncated",
			                   (unsigned long long)j);
		pos += 8;
	}
	int64_t *m = enc_scratch(cx, ENC_S_TMP, (size_t)n * 8 + 8);
	if (!m)
		return -ENOMEM;
	if ((rc = enc_ints_get(cx, body + pos, len - pos, n, m)))
		return rc;
	for (uint32_t i = 0; i < n; i++)
		d[i] = dec_value(m[i], s);
	pos = exc_at;
	idx = 0;
	for (uint64_t j = 0; j < ne; j++) {
		uint64_t gap;
		enc_varint_get(body, len, &pos, &gap, "");
		idx += gap;
		d[idx++] = bits_f64(enc_get_le64(body + pos));
		pos += 8;
	}
	return 0;
}

const codec_ops enc_dec_ops = {
        .id = CODEC_ENC_DEC,
        .name = "dec",
        .kinds = 1u << CODEC_F64,
        .encode = dec_encode,
        .decode = dec_decode,
};

/* ------------------------------------------------------------ XOR */

static int xor_encode(codec_ctx *cx, const enc_vals *in, const codec_opts *opt, codec_buf *out,
                      codec_stats *st)
{
	(void)cx, (void)opt, (void)st;
	uint32_t n = in->n;
	const double *v = in->v;
	if (n == 0)
		return 0;
	/* worst case 2 + 12 + 64 bits a value */
	if (codec_buf_reserve(out, (size_t)n * 10 + 16))
		return -ENOMEM;
	enc_bw w;
	enc_bw_init(&w, out->p + out->len);
	uint64_t prev = f64_bits(v[0]);
	enc_bw_put(&w, prev, 64);
	unsigned lead = 0, len = 64; /* the window: bits [64 - lead - len, 64 - lead) */
	for (uint32_t i = 1; i < n; i++) {
		uint64_t cur = f64_bits(v[i]), x = cur ^ prev;
		prev = cur;
		if (!x) {
			enc_bw_put32(&w, 0, 1);
			continue;
		}
		unsigned l = (unsigned)__builtin_clzll(x), t = (unsigned)__builtin_ctzll(x);
		/* Keep the window while it fits and wastes less than a new
		 * window's 12 header bits. */
		unsigned trail = 64 - lead - len;
		if (l >= lead && t >= trail && (l - lead) + (t - trail) < 12) {
			enc_bw_put32(&w, 1, 2);
			enc_bw_put(&w, x >> trail, len);
			continue;
		}
		lead = l;
		len = 64 - l - t;
		enc_bw_put32(&w, 3, 2);
		enc_bw_put32(&w, lead, 6);
		enc_bw_put32(&w, len - 1, 6);
		enc_bw_put(&w, x >> t, len);
	}
	out->len = (size_t)(enc_bw_end(&w) - out->p);
	return 0;
}

static int xor_decode(codec_ctx *cx, enum codec_kind kind, const uint8_t *body, size_t len,
                      uint32_t n, void *out, codec_buf *arena)
{
	(void)cx, (void)kind, (void)arena;
	double *dv = out;
	if (n == 0) {
		if (len)
			return ENC_CORRUPT("xor: %zu bytes for no values", len);
		return 0;
	}
	enc_br r;
	enc_br_init(&r, body, len);
	uint64_t prev = enc_br_get(&r, 64);
	dv[0] = bits_f64(prev);
	unsigned lead = 0, wlen = 64;
	for (uint32_t i = 1; i < n; i++) {
		unsigned c = (unsigned)enc_br_get56(&r, 1);
		if (c) {
			if (enc_br_get56(&r, 1)) {
				lead = (unsigned)enc_br_get56(&r, 6);
				wlen = (unsigned)enc_br_get56(&r, 6) + 1;
				if (lead + wlen > 64)
					return ENC_CORRUPT(
					        "xor value %u: %u leading zeros + %u bits > 64", i,
					        lead, wlen);
			}
			prev ^= enc_br_get(&r, wlen) << (64 - lead - wlen);
		}
		dv[i] = bits_f64(prev);
		if ((i & 1023) == 0 && enc_br_overrun(&r))
			break;
	}
	if (enc_br_overrun(&r))
		return ENC_CORRUPT("xor: truncated");
	if (enc_br_used(&r, body) != len)
		return ENC_CORRUPT("xor: %zu bytes left over", len - enc_br_used(&r, body));
	return 0;
}

const codec_ops enc_xor_ops = {
        .id = CODEC_ENC_XOR,
        .name = "xor",
        .kinds = 1u << CODEC_F64,
        .encode = xor_encode,
        .decode = xor_decode,
};
