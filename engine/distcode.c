/*
 * distcode.c — the bit stream of kind 4 distribution blocks: every
 * window's (value, count) pairs as adaptive Rice codes, in one pass.
 *
 * The one idea: what a distribution block holds is three kinds of small
 * numbers — the steps between a window's ascending values, its counts
 * less one, and how far each window's first value lies from the one
 * before — each roughly geometric around a mean that drifts slowly
 * (steps are wide in the bell's tails, narrow at its middle; counts grow
 * with the window). A Rice code whose parameter follows a running mean
 * of the numbers already coded fits all three without measuring
 * anything ahead: the writer and the reader update the same mean, so no
 * parameter is stored, each number costs a few instructions both ways,
 * and a count of 1 or a step of 1 (a dense window: a bitmap, in effect)
 * costs one bit. The window's own count, known from the basic payload in
 * front, bounds its pairs, so their number costs log2(count) bits, and
 * tells how much the counts add beyond 1 each: a window of distinct
 * values (most finest windows) spends no bit on its counts at all.
 *
 * Layout (docs/formats.md, "dist", kind 4): varint total pairs, then per
 * window, LSB first: pairs - 1 in width(count - 1) bits; a sketch flag
 * (1 bit) only where max != 0 and count > max (a window is a sketch only
 * past its bound); the first value as zigzag(first - the previous
 * window's first); then per pair but the last its count - 1 (only while
 * the window's count is not yet used up: rest = count - pairs, less each
 * count - 1 coded, and once it is 0 every count left is 1) and the step
 * to the next value (next - value - 1). The last count is rest + 1.
 * Zero bits pad the last byte.
 * A Rice code of x with parameter k: q = x >> k zeros and a one, then
 * the k low bits of x; q >= DC_QMAX is written as DC_QMAX zeros, a one
 * and x as "varbits" (7-bit width w, then w bits).
 */
#include "distcode.h"

#include <errno.h>
#include <string.h>

#include "enc.h"
#include "err.h"

/* Unary part at most this long; past it, the escape. */
#define DC_QMAX 24
/* The running mean: m = m - m / 8 + x, so m is about 8 times the mean of
 * the recent numbers; x is capped at 2^31 so that m stays under 2^34 and
 * the parameter at most 31: a code without escape is at most 24 + 1 + 31
 * bits, one store of the writer below. */
#define DC_SHIFT 3
#define DC_XCAP  (UINT64_C(1) << 31)

/* The Rice parameter for running mean m: about log2 of half the mean,
 * near the optimum for geometric numbers of that mean; <= 31. */
static inline unsigned dc_k(uint64_t m)
{
	return enc_width(m >> (DC_SHIFT + 1));
}

static inline uint64_t dc_update(uint64_t m, uint64_t x)
{
	return m - (m >> DC_SHIFT) + (x < DC_XCAP ? x : DC_XCAP);
}

/* ---------------------------------------------------------------- write */

/* A bit writer for codes of up to 56 bits: each put stores 8 bytes and
 * keeps under 8 bits back, with no branch (the buffer has 8 bytes to
 * spare past what it holds). */
typedef struct dc_bw {
	uint8_t *p;
	uint64_t acc;
	unsigned n; /* < 8 */
} dc_bw;

/* v < 2^nb, nb <= 56. */
static inline void dc_put(dc_bw *w, uint64_t v, unsigned nb)
{
	w->acc |= v << w->n;
	w->n += nb;
	enc_put_le64(w->p, w->acc);
	w->p += w->n >> 3;
	w->acc >>= w->n & ~7u;
	w->n &= 7;
}

/* Any v of nb <= 64 bits. */
static inline void dc_put64(dc_bw *w, uint64_t v, unsigned nb)
{
	if (nb > 32) {
		dc_put(w, v & 0xffffffffu, 32);
		dc_put(w, v >> 32, nb - 32);
	} else {
		dc_put(w, v, nb);
	}
}

static inline void put_rice(dc_bw *w, uint64_t *m, uint64_t x)
{
	unsigned k = dc_k(*m);
	uint64_t q = x >> k;
	if (q < DC_QMAX) {
		uint64_t low = x & (((uint64_t)1 << k) - 1);
		dc_put(w, low << (q + 1) | (uint64_t)1 << q, (unsigned)q + 1 + k);
	} else {
		unsigned nb = enc_width(x);
		dc_put(w, (uint64_t)1 << DC_QMAX, DC_QMAX + 1);
		dc_put(w, nb, 7);
		dc_put64(w, x, nb);
	}
	*m = dc_update(*m, x);
}

/* The most bits one Rice code takes: the escape, 7 width bits and 64. */
#define DC_MAX_BITS (DC_QMAX + 1 + 7 + 64)

int distcode_encode(const dbucket *b, uint32_t n, uint32_t max, codec_buf *out)
{
	uint64_t total = 0;
	for (uint32_t i = 0; i < n; i++)
		total += b[i].d.n;
	/* per window: the pair count (<= 64 bits) and the flag; per pair:
	 * at most two codes */
	uint64_t bits = (uint64_t)n * 65 + total * 2 * DC_MAX_BITS;
	int rc = codec_buf_reserve(out, 10 + (size_t)(bits / 8) + 16);
	if (rc)
		return err_set(rc, "out of memory");
	size_t at = out->len + enc_varint_put(out->p + out->len, total);
	dc_bw w = {out->p + at, 0, 0};
	uint64_t mf = 0, mg = 0, mc = 0; /* running means: firsts, steps, counts */
	int64_t prev = 0;
	uint32_t i;
	/* windows are checked as they are written (out->len moves only at
	 * the end): a writer's bug must not make a block no reader takes */
	for (i = 0; i < n; i++) {
		const dstate *d = &b[i].d;
		uint64_t cnt = d->a.count;
		if (!d->n || d->n > cnt || (d->sketch && !(max && cnt > max)))
			break;
		dc_put64(&w, d->n - 1, enc_width(cnt - 1));
		if (max && cnt > max)
			dc_put(&w, d->sketch, 1);
		put_rice(&w, &mf, enc_zigzag((int64_t)((uint64_t)d->v[0] - (uint64_t)prev)));
		prev = d->v[0];
		/* rest: what the counts hold beyond 1 each, still to come */
		uint64_t rest = cnt - d->n;
		uint32_t j, last = d->n - 1;
		for (j = 0; j < last; j++) {
			uint64_t x = d->c[j] - 1; /* a count of 0 wraps: refused */
			if (x > rest || d->v[j + 1] <= d->v[j])
				break;
			if (rest)
				put_rice(&w, &mc, x);
			rest -= x;
			put_rice(&w, &mg, (uint64_t)d->v[j + 1] - (uint64_t)d->v[j] - 1);
		}
		if (j < last || d->c[last] != rest + 1)
			break;
	}
	if (i < n)
		return err_set(TALLY_EINVAL,
			       "distribution window at %lld: %u pairs (sketch %u) that do not "
			       "ascend, or whose counts do not add up to its %llu values, or a "
			       "sketch not past the bound %u",
			       (long long)b[i].start, b[i].d.n, (unsigned)b[i].d.sketch,
			       (unsigned long long)b[i].d.a.count, max);
	out->len = (size_t)(w.p - out->p) + (w.n > 0);
	return 0;
}

/* ---------------------------------------------------------------- read */

#define MALFORMED() err_set(TALLY_ECORRUPT, "malformed distribution block")

/* One Rice code into *x; 0, or -1 when no one ends the unary part or
 * the escape's width is over 64. */
static inline int get_rice(enc_br *r, uint64_t *m, uint64_t *x)
{
	if (r->n < DC_QMAX + 1)
		enc_br_refill(r);
	uint64_t low = r->acc & (((uint64_t)1 << (DC_QMAX + 1)) - 1);
	if (!low)
		return -1;
	unsigned q = (unsigned)__builtin_ctzll(low);
	r->acc >>= q + 1;
	r->n -= q + 1;
	if (q < DC_QMAX) {
		unsigned k = dc_k(*m);
		*x = (uint64_t)q << k | enc_br_get56(r, k);
	} else if (enc_br_varbits(r, x)) {
		return -1;
	}
	*m = dc_update(*m, *x);
	return 0;
}

int distcode_decode(const uint8_t *p, size_t len, dbucket *b, uint32_t n, uint32_t max,
		    codec_buf *arena)
{
	size_t pos = 0;
	uint64_t total;
	if (enc_varint_get(p, len, &pos, &total, "distribution pairs"))
		return MALFORMED();
	/* every pair takes at least two bits: more than that is damage, not
	 * a reason to reserve memory */
	if (total > (uint64_t)(len - pos) * 4)
		return MALFORMED();
	int rc = codec_buf_reserve(arena, (size_t)total * 16);
	if (rc)
		return err_set(rc, "out of memory");
	int64_t *v = (int64_t *)(void *)arena->p;
	uint64_t *c = (uint64_t *)(void *)(arena->p + total * 8);
	enc_br r;
	enc_br_init(&r, p + pos, len - pos);
	uint64_t mf = 0, mg = 0, mc = 0, k = 0, x;
	int64_t prev = 0, kmax = 0;
	uint32_t i;
	for (i = 0; i < n; i++) {
		dstate *d = &b[i].d;
		uint64_t cnt = d->a.count;
		if (!cnt)
			break;
		/* pairs - 1 < cnt, and within the pairs left */
		uint64_t np = enc_br_get(&r, enc_width(cnt - 1));
		if (np >= cnt || np >= total - k || np >= UINT32_MAX / 2)
			break;
		d->n = (uint32_t)++np;
		d->max = max;
		d->sketch = max && cnt > max ? (uint32_t)enc_br_get56(&r, 1) : 0;
		int64_t lim = DIST_IDX_MAX;
		if (d->sketch)
			lim = kmax ? kmax : (kmax = dist_sketch_key(DIST_IDX_MAX));
		d->v = v + k;
		d->c = c + k;
		if (get_rice(&r, &mf, &x))
			break;
		int64_t y = (int64_t)((uint64_t)prev + (uint64_t)enc_unzigzag(x));
		if (y < -lim || y > lim)
			break;
		d->v[0] = prev = y;
		/* the counts beyond 1 each, still to come: coded while some are
		 * left, the last count what remains */
		uint64_t rest = cnt - np;
		uint32_t j, last = d->n - 1;
		for (j = 0; j < last; j++) {
			x = 0;
			if (rest && (get_rice(&r, &mc, &x) || x > rest))
				break;
			d->c[j] = x + 1;
			rest -= x;
			if (get_rice(&r, &mg, &x) || x >= (uint64_t)lim - (uint64_t)y)
				break;
			y = (int64_t)((uint64_t)y + x + 1);
			d->v[j + 1] = y;
		}
		if (j < last)
			break;
		d->c[last] = rest + 1;
		k += np;
	}
	/* all pairs used, nothing read past the end, and only zero bits of
	 * padding after the last code */
	if (i < n || k != total || enc_br_overrun(&r) || enc_br_used(&r, p + pos) != len - pos ||
	    r.acc) {
		for (uint32_t a = 0; a < n; a++) {
			b[a].d.v = NULL;
			b[a].d.c = NULL;
			b[a].d.n = 0;
		}
		return MALFORMED();
	}
	return 0;
}
