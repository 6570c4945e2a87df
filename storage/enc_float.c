/*
 * enc_float.c — float64 encodings: DEC (decimal-aware), XOR (Gorilla) and
 * BIN (binary fractions).
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
 *
 * BIN is DEC with powers of two: a value v = m·2^e (|m| < 2^53, one e per
 * block) is stored as the integer m, and (double)m · 2^e is exact, so the
 * only question is whether such an m exists: it does when v's lowest 1 bit
 * is at or above 2^e and its highest at most 52 bits above. That fits
 * values with few significant bits, such as the residual of an exact sum
 * of doubles (k·2^-48, small k), which XOR codes at about 2 bytes and BIN
 * at well under one. The exponent comes from the values' lowest and
 * highest bits (bin_choose); the encoder checks each value with the
 * decoder's own expression, and the rest (-0.0, NaN, infinities, values
 * whose bits do not fit) are exceptions, stored as DEC stores them.
 *
 * BIN body:
 *   varint  zigzag(e), the exponent (-1074..1023); 0 when no value fits
 *   varint  x, the number of exceptions
 *   x times varint gap (index - previous exception index - 1; the first:
 *           its index), 8 bytes LE of the double's bits
 *   rest    integer stream (enc_int.c) of the n integers m, each |m| < 2^53;
 *           an exception's slot holds the previous value's m (0 for none)
 * Example: 0, 3·2^-48, -2^-48, 2^-43 give e = -48 (zigzag 95), no
 * exceptions, and the integers 0, 3, -1, 32: 5f 00, then their stream.
 */
#include <errno.h>
#include <float.h>
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

/* ---------------------------------------------------------- exceptions
 * DEC and BIN share the exception list: varint count, then per exception
 * a varint gap (index - previous index - 1) and the value's 8 bytes LE. */

/* Writes the list at p (room for 10 + 18 * ne bytes); returns its end. */
static uint8_t *exc_put(uint8_t *p, const double *v, const uint32_t *exc, uint32_t ne)
{
	p += enc_varint_put(p, ne);
	for (uint32_t j = 0; j < ne; j++) {
		p += enc_varint_put(p, exc[j] - (j ? exc[j - 1] + 1 : 0));
		enc_put_le64(p, f64_bits(v[exc[j]]));
		p += 8;
	}
	return p;
}

/* What an encoding's exception list is called in corruption messages. */
typedef struct exc_names {
	const char *what, *count, *index;
} exc_names;

static const exc_names dec_names = {"decimal", "decimal exceptions", "decimal exception index"};
static const exc_names bin_names = {"binary", "binary exceptions", "binary exception index"};

/* Reads the count at *pos and checks every entry against n values and the
 * bytes left, leaving *pos after the list. */
static int exc_check(const uint8_t *body, size_t len, size_t *pos, uint32_t n, uint64_t *ne,
		     const exc_names *nm)
{
	int rc = enc_varint_get(body, len, pos, ne, nm->count);
	if (rc)
		return rc;
	if (*ne > n)
		return ENC_CORRUPT("%s: %llu exceptions for %u values", nm->what,
				   (unsigned long long)*ne, n);
	uint64_t idx = 0;
	for (uint64_t j = 0; j < *ne; j++) {
		uint64_t gap;
		if ((rc = enc_varint_get(body, len, pos, &gap, nm->index)))
			return rc;
		if (gap >= n - idx)
			return ENC_CORRUPT("%s: exception %llu past value %u", nm->what,
					   (unsigned long long)j, n);
		idx += gap + 1;
		if (len - *pos < 8)
			return ENC_CORRUPT("%s: exception %llu truncated", nm->what,
					   (unsigned long long)j);
		*pos += 8;
	}
	return 0;
}

/* Puts the exceptions of the list at pos, which exc_check() passed, into d. */
static void exc_apply(const uint8_t *body, size_t len, size_t pos, double *d)
{
	uint64_t ne, idx = 0;
	enc_varint_get(body, len, &pos, &ne, "");
	for (uint64_t j = 0; j < ne; j++) {
		uint64_t gap;
		enc_varint_get(body, len, &pos, &gap, "");
		idx += gap;
		d[idx++] = bits_f64(enc_get_le64(body + pos));
		pos += 8;
	}
}

/* DEC and BIN bodies end alike: after their header (written at p, in
 * out's reserved room), the exception list, then the integers m as an INT
 * stream. Sets st's exception count and order. */
static int tail_put(codec_ctx *cx, codec_buf *out, uint8_t *p, const double *v, const uint32_t *exc,
		    uint32_t ne, const int64_t *m, uint32_t n, const codec_opts *opt,
		    codec_stats *st)
{
	p = exc_put(p, v, exc, ne);
	out->len = (size_t)(p - out->p);
	enum codec_order used;
	int rc = enc_ints_put(cx, m, n, opt->order, out, &used);
	if (!rc && st) {
		st->n_except = ne;
		st->order = (uint8_t)used;
	}
	return rc;
}

/* Reads that tail from *pos: checks the exception list (leaving *exc_at
 * at it for exc_apply) and decodes the integers the request needs
 * (cx->want) into *m: into (n slots) or else scratch; *got of them are
 * exact. */
static int tail_get(codec_ctx *cx, const uint8_t *body, size_t len, size_t pos, uint32_t n,
		    const exc_names *nm, size_t *exc_at, int64_t *into, int64_t **m, uint32_t *got)
{
	uint64_t ne;
	*exc_at = pos;
	int rc = exc_check(body, len, &pos, n, &ne, nm);
	if (rc)
		return rc;
	if (!(*m = into ? into : enc_scratch(cx, ENC_S_TMP, (size_t)n * 8 + 8)))
		return -ENOMEM;
	return enc_ints_get_head(body + pos, len - pos, n, *m, cx->want, INT64_MIN, got);
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
	if (st)
		st->scale = (uint8_t)s;
	return tail_put(cx, out, p, v, exc, ne, m, n, opt, st);
}

/* codec_want_units' answer: 1 with the got integers m at scale s (in
 * out, as decoded) times 10^(scale - s) in place, when the block stores
 * no value verbatim and all of them fit (codec.h says why they are then
 * exact); 0 and out unchanged otherwise. */
static int dec_units(codec_ctx *cx, const uint8_t *body, size_t len, size_t exc_at, unsigned s,
		     int64_t *m, uint32_t got)
{
	unsigned scale = cx->units_want - 1u;
	uint64_t ne;
	if (s > scale || enc_varint_get(body, len, &exc_at, &ne, "") || ne)
		return 0;
	int64_t mul = 1;
	for (unsigned i = s; i < scale; i++)
		mul *= 10;
	/* |m| < lim, so |m * mul| < 2^50 */
	uint64_t lim = (UINT64_C(1) << 50) / (uint64_t)mul, far = 0;
	for (uint32_t i = 0; i < got; i++)
		far |= (uint64_t)m[i] + lim - 1 > 2 * lim - 2;
	if (far)
		return 0;
	if (mul != 1)
		for (uint32_t i = 0; i < got; i++)
			m[i] *= mul;
	cx->units_got = 1;
	cx->got = got;
	return 1;
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
	size_t exc_at;
	int64_t *m;
	uint32_t got;
	/* the integers straight into out, then made values in place: no
	 * copy from a scratch array */
	int rc = tail_get(cx, body, len, 1, n, &dec_names, &exc_at, out, &m, &got);
	if (rc)
		return rc;
	if (cx->units_want && dec_units(cx, body, len, exc_at, s, m, got))
		return 0;
	uint8_t *slot = out;
	for (uint32_t i = 0; i < got; i++) {
		/* one slot read as an integer and written as a double: memcpy
		 * is the aliasing-safe spelling of that */
		int64_t x;
		memcpy(&x, slot + (size_t)i * 8, 8);
		double v = dec_value(x, s);
		memcpy(slot + (size_t)i * 8, &v, 8);
	}
	exc_apply(body, len, exc_at, d); /* any index below n: d has n slots */
	cx->got = got;
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
	(void)kind, (void)arena;
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
	uint32_t lim = cx->want > 1 && cx->want < n ? cx->want : n;
	for (uint32_t i = 1; i < lim; i++) {
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
	cx->got = lim;
	if (lim == n && enc_br_used(&r, body) != len)
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

/* ------------------------------------------------------------ BIN */

#define BIN_SAMPLE   256     /* values whose bits choose the exponent */
#define BIN_E_MIN    (-1074) /* 2^-1074, the least subnormal */
#define BIN_E_MAX    1023    /* 2^1023, the greatest power of two */
#define BIN_EXC_BITS 72      /* an exception: 8 bytes and its gap */

/* Exactly 2^e, for BIN_E_MIN <= e <= BIN_E_MAX (subnormal below -1022). */
static inline double bin_pow2(int e)
{
	return bits_f64(e >= -1022 ? (uint64_t)(e + 1023) << 52 : (uint64_t)1 << (e + 1074));
}

/* The decoder's expression; the encoder checks with this same function.
 * For |m| < 2^53 both factors are exact and so is the product, unless it
 * overflows: it can only be v itself or infinity. */
static inline double bin_value(int64_t m, double pow2e)
{
	return (double)m * pow2e;
}

/* v's bits as ±sig·2^x: returns 0 for -0.0, NaN and infinities (always
 * exceptions), 1 for +0.0 (fits every exponent), 2 otherwise with the
 * exponents of v's lowest and highest 1 bits in *lo and *hi. */
static inline int bin_span(uint64_t u, uint64_t *sig, int *x, int *lo, int *hi)
{
	unsigned bexp = (unsigned)(u >> 52 & 0x7ff);
	if (bexp == 0x7ff || u == (uint64_t)1 << 63)
		return 0;
	if (u == 0)
		return 1;
	*sig = u & (((uint64_t)1 << 52) - 1);
	*x = -1074;
	if (bexp) {
		*sig |= (uint64_t)1 << 52;
		*x = (int)bexp - 1075;
	}
	*lo = *x + __builtin_ctzll(*sig);
	*hi = *x + 63 - __builtin_clzll(*sig);
	return 2;
}

/* m with v = m·2^e, |m| < 2^53, or 0 with *ok = 0 when there is none. */
static inline int64_t bin_fit(double v, int e, double pow2e, int *ok)
{
	uint64_t u = f64_bits(v), sig;
	int x, lo, hi;
	*ok = 0;
	int c = bin_span(u, &sig, &x, &lo, &hi);
	if (c != 2) {
		*ok = c;
		return 0;
	}
	if (lo < e || hi - e > 52)
		return 0;
	/* lo >= e: the bits below 2^e are zero; hi - e <= 52: m < 2^53 */
	uint64_t mag = e <= x ? sig << (x - e) : sig >> (e - x);
	int64_t m = u >> 63 ? -(int64_t)mag : (int64_t)mag;
	*ok = f64_bits(bin_value(m, pow2e)) == u;
	return m;
}

/* Sorts k keys ascending by their bits [sh, sh + 12): two passes of a
 * 6-bit radix, a fraction of what qsort's calls cost on 256 values. */
static void bin_sort(uint32_t *a, uint32_t *tmp, uint32_t k, unsigned sh)
{
	for (unsigned pass = 0; pass < 2; pass++, sh += 6) {
		uint32_t at[65] = {0};
		for (uint32_t i = 0; i < k; i++)
			at[(a[i] >> sh & 63) + 1]++;
		for (unsigned j = 0; j < 64; j++)
			at[j + 1] += at[j];
		for (uint32_t i = 0; i < k; i++)
			tmp[at[a[i] >> sh & 63]++] = a[i];
		memcpy(a, tmp, (size_t)k * 4);
	}
}

/*
 * Picks the exponent from a sample spread over the block: a value fits
 * every e in [hi - 52, lo], and costs about hi - e + 2 bits there (its
 * width and a sign), so lowering e costs a bit on every value that fits;
 * a value that does not fit costs BIN_EXC_BITS. The best e is therefore
 * one of the values' lo: a sweep from the highest lo down keeps the set
 * of values that fit (in at lo, out below hi - 52). Returns the estimated
 * bits per sampled value; *e_out gets 0 when nothing but zeros and
 * exceptions was sampled.
 */
static double bin_choose(const double *v, uint32_t n, int *e_out)
{
	/* biased by -BIN_E_MIN to 0..2097, 12 bits: (lo << 12 | hi), and hi */
	uint32_t ent[BIN_SAMPLE], top[BIN_SAMPLE], tmp[BIN_SAMPLE];
	uint32_t sample = n < BIN_SAMPLE ? n : BIN_SAMPLE, k = 0, zeros = 0, special = 0;
	for (uint32_t j = 0; j < sample; j++) {
		uint64_t sig;
		int x, lo, hi;
		int c = bin_span(f64_bits(v[(uint64_t)j * n / sample]), &sig, &x, &lo, &hi);
		if (c == 2) {
			top[k] = (uint32_t)(hi - BIN_E_MIN);
			ent[k] = (uint32_t)(lo - BIN_E_MIN) << 12 | top[k];
			k++;
		} else {
			zeros += c == 1;
			special += c == 0;
		}
	}
	*e_out = 0;
	double fixed = (double)zeros + (double)BIN_EXC_BITS * special;
	if (k == 0)
		return sample ? fixed / sample : 0;
	bin_sort(ent, tmp, k, 12);
	bin_sort(top, tmp, k, 0);
	double best = INFINITY;
	int64_t sum_hi = 0;
	uint32_t fit = 0, in = k, out = k;
	for (uint32_t i = k; i-- > 0;) {
		int c = (int)(ent[i] >> 12) + BIN_E_MIN;
		if (i + 1 < k && ent[i] >> 12 == ent[i + 1] >> 12)
			continue;
		for (; in > 0 && (int)(ent[in - 1] >> 12) + BIN_E_MIN >= c; in--) {
			fit++;
			sum_hi += (int)(ent[in - 1] & 0xfff) + BIN_E_MIN;
		}
		/* a value leaves once hi - 52 > c; it entered before (lo >= hi - 52) */
		for (; out > 0 && (int)top[out - 1] + BIN_E_MIN - 52 > c; out--) {
			fit--;
			sum_hi -= (int)top[out - 1] + BIN_E_MIN;
		}
		double cost = (double)sum_hi + (2.0 - c) * fit + (double)BIN_EXC_BITS * (k - fit);
		if (cost < best) {
			best = cost;
			*e_out = c;
		}
	}
	return (best + fixed) / sample;
}

static int bin_encode(codec_ctx *cx, const enc_vals *in, const codec_opts *opt, codec_buf *out,
		      codec_stats *st)
{
	const double *v = in->v;
	uint32_t n = in->n;
	int e;
	/* Worse than 64 bits a value: raw would do better, and XOR will. */
	if (bin_choose(v, n, &e) > 64 && opt->force != CODEC_ENC_BIN)
		return err_set(TALLY_EINVAL, "codec: values are not binary fractions");
	int64_t *m = enc_scratch(cx, ENC_S_TMP, (size_t)n * 8 + 8);
	uint32_t *exc = enc_scratch(cx, ENC_S_TMP2, (size_t)n * 4 + 4);
	if (!m || !exc)
		return -ENOMEM;
	double pow2e = bin_pow2(e);
	uint32_t ne = 0;
	int64_t prev = 0;
	for (uint32_t i = 0; i < n; i++) {
		int ok;
		int64_t x = bin_fit(v[i], e, pow2e, &ok);
		if (!ok) {
			exc[ne++] = i;
			x = prev;
		}
		m[i] = prev = x;
	}
	/* over 36 bits a value in exceptions alone: XOR does better */
	if (opt->force != CODEC_ENC_BIN && ne * 2 > n)
		return err_set(TALLY_EINVAL, "codec: values are not binary fractions");
	if (codec_buf_reserve(out, 2 * 10 + (size_t)ne * 18))
		return -ENOMEM;
	uint8_t *p = out->p + out->len;
	p += enc_varint_put(p, enc_zigzag(e));
	return tail_put(cx, out, p, v, exc, ne, m, n, opt, st);
}

static int bin_decode(codec_ctx *cx, enum codec_kind kind, const uint8_t *body, size_t len,
		      uint32_t n, void *out, codec_buf *arena)
{
	(void)kind, (void)arena;
	double *d = out;
	size_t pos = 0;
	uint64_t z;
	int rc = enc_varint_get(body, len, &pos, &z, "binary exponent");
	if (rc)
		return rc;
	int64_t e = enc_unzigzag(z);
	if (e < BIN_E_MIN || e > BIN_E_MAX)
		return ENC_CORRUPT("binary: exponent %lld outside %d..%d", (long long)e, BIN_E_MIN,
				   BIN_E_MAX);
	size_t exc_at;
	int64_t *m;
	uint32_t got;
	if ((rc = tail_get(cx, body, len, pos, n, &bin_names, &exc_at, NULL, &m, &got)))
		return rc;
	cx->got = got;
	double pow2e = bin_pow2((int)e);
	for (uint32_t i = 0; i < got; i++) {
		uint64_t mag = m[i] < 0 ? 0 - (uint64_t)m[i] : (uint64_t)m[i];
		if (mag >= (uint64_t)1 << 53)
			return ENC_CORRUPT("binary: value %u: integer %lld has more than 53 bits",
					   i, (long long)m[i]);
		d[i] = bin_value(m[i], pow2e);
		if (!(fabs(d[i]) <= DBL_MAX))
			return ENC_CORRUPT("binary: value %u: %lld*2^%d overflows", i,
					   (long long)m[i], (int)e);
	}
	exc_apply(body, len, exc_at, d);
	return 0;
}

const codec_ops enc_bin_ops = {
	.id = CODEC_ENC_BIN,
	.name = "bin",
	.kinds = 1u << CODEC_F64,
	.encode = bin_encode,
	.decode = bin_decode,
};
