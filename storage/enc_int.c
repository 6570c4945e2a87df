/*
 * enc_int.c — the integer coder: timestamps, int64, uint64, and the
 * integers inside the decimal and string encodings.
 *
 * Three steps, each chosen by measuring rather than guessing:
 *  1. a transform: the values themselves (less the first), their deltas,
 *     or their deltas of deltas. Timestamps of sorted rows take deltas;
 *     readings that hover around a level (speeds) take the values;
 *     series with a steady rate take deltas of deltas.
 *  2. a common divisor of the residuals, found with exact modular-inverse
 *     division so it costs a multiply per value: nanosecond timestamps of
 *     millisecond data have deltas that are all multiples of 1e6, and
 *     dividing leaves nothing of the ns scale.
 *  3. frames of 128 residuals, each with its own reference value and
 *     either bit-packing (width of the frame's range) or Rice coding
 *     around the frame's minimum or its mean. Rice codes a geometric or
 *     bell-shaped residual within a few percent of its entropy, where
 *     bit-packing pays for the frame's largest value on every value; per
 *     frame means the coder follows the day (night gaps are long, rush hour
 *     gaps short; jams slow every car down).
 *
 * Stream layout (bits LSB first within bytes, values low bits first):
 *   byte     order (bits 0-1: 0 value, 1 delta, 2 delta of delta),
 *            frame size (bits 2-4: log2 - 4), bits 5-7 zero
 *   varint   g, the common divisor (>= 1)
 *   varint   zigzag(v[0]); and for delta of delta with n >= 2 zigzag(v[1] - v[0])
 *   bits     frames over the n - h residuals divided by g:
 *            8-bit code, varbits(zigzag(ref - previous frame's ref)), values
 *            code 0..64    bit-packed: code bits of (r - ref) each, ref = min
 *            code 65..127  Rice k = code - 65 of (r - ref), ref = min
 *            code 128..190 Rice k = code - 128 of zigzag(r - ref), ref ~ mean
 *            Rice: q = u >> k; q < 32: q one bits, a zero, k bits of u;
 *            else 32 one bits then varbits(u).
 * An empty stream (no bytes) holds n = 0 values. All arithmetic wraps
 * (two's complement), so any int64 sequence round-trips.
 */
#include <errno.h>
#include <math.h>

#include "enc.h"

#define RICE_LIMIT     32
#define CODE_RICE      65
#define CODE_MID       128
#define CODE_END       191
#define FRAME_LOG2_MIN 4
#define FRAME_LOG2_MAX 10

static inline int64_t wsub(int64_t a, int64_t b)
{
	return (int64_t)((uint64_t)a - (uint64_t)b);
}
static inline int64_t wadd(int64_t a, int64_t b)
{
	return (int64_t)((uint64_t)a + (uint64_t)b);
}

/* ------------------------------------------------------------ transform */

/* Residuals of order o (0, 1, 2) into r; returns how many (n - h), with
 * the h head values in head[]. */
static uint32_t transform(const int64_t *v, uint32_t n, int o, int64_t *r, int64_t head[2],
			  uint32_t *h)
{
	*h = 0;
	if (n == 0)
		return 0;
	head[0] = v[0];
	*h = 1;
	if (o == 0) {
		for (uint32_t i = 1; i < n; i++)
			r[i - 1] = wsub(v[i], v[0]);
		return n - 1;
	}
	if (o == 1) {
		for (uint32_t i = 1; i < n; i++)
			r[i - 1] = wsub(v[i], v[i - 1]);
		return n - 1;
	}
	if (n == 1)
		return 0;
	head[1] = wsub(v[1], v[0]);
	*h = 2;
	int64_t prev = head[1];
	for (uint32_t i = 2; i < n; i++) {
		int64_t d = wsub(v[i], v[i - 1]);
		r[i - 2] = wsub(d, prev);
		prev = d;
	}
	return n - 2;
}

/* ------------------------------------------------------------ divisor */

static uint64_t gcd64(uint64_t a, uint64_t b)
{
	if (!a)
		return b;
	if (!b)
		return a;
	int s = __builtin_ctzll(a | b);
	a >>= __builtin_ctzll(a);
	do {
		b >>= __builtin_ctzll(b);
		if (a > b) {
			uint64_t t = a;
			a = b;
			b = t;
		}
		b -= a;
	} while (b);
	return a << s;
}

/* g = 2^shift * odd; inv * odd == 1 (mod 2^64); x divisible by odd iff
 * x * inv <= lim. */
typedef struct divisor {
	uint64_t g, inv, lim;
	unsigned shift;
} divisor;

static void divisor_set(divisor *d, uint64_t g)
{
	d->g = g;
	d->shift = (unsigned)__builtin_ctzll(g);
	uint64_t odd = g >> d->shift, x = odd;
	for (int i = 0; i < 5; i++)
		x *= 2 - odd * x;
	d->inv = x;
	d->lim = UINT64_MAX / odd;
}

static inline uint64_t uabs64(int64_t x)
{
	return x < 0 ? 0 - (uint64_t)x : (uint64_t)x;
}

static inline int divides(const divisor *d, uint64_t u)
{
	if (u & (((uint64_t)1 << d->shift) - 1))
		return 0;
	return (u >> d->shift) * d->inv <= d->lim;
}

/* A running gcd: 0 until a nonzero value, and 1 means "no divisor". */
typedef struct gcd_acc {
	uint64_t g;
	divisor d;
} gcd_acc;

static inline void gcd_add(gcd_acc *a, int64_t x)
{
	uint64_t u = uabs64(x);
	if (a->g == 0) {
		a->g = u;
		if (u)
			divisor_set(&a->d, u);
	} else if (!divides(&a->d, u)) {
		a->g = gcd64(a->g, u);
		divisor_set(&a->d, a->g);
	}
}

static inline uint64_t gcd_result(const gcd_acc *a)
{
	return a->g > 1 ? a->g : 1;
}

/* Divides every r[i] by g, which divides them all exactly. */
static void divide_all(int64_t *r, uint32_t m, uint64_t g)
{
	if (g == 1)
		return;
	divisor d;
	divisor_set(&d, g);
	for (uint32_t i = 0; i < m; i++) {
		uint64_t q = (uabs64(r[i]) >> d.shift) * d.inv;
		r[i] = r[i] < 0 ? (int64_t)(0 - q) : (int64_t)q;
	}
}

/* The gcd of |r[i]|, 1 when none (or all zero); divides r in place. */
static uint64_t common_divisor(int64_t *r, uint32_t m)
{
	gcd_acc a = {0};
	for (uint32_t i = 0; i < m && a.g != 1; i++)
		gcd_add(&a, r[i]);
	divide_all(r, m, gcd_result(&a));
	return gcd_result(&a);
}

/* ------------------------------------------------------------ frame plans */

static inline unsigned varbits_cost(uint64_t v)
{
	return 7 + enc_width(v);
}

/* The Rice parameter near the optimum for values of this mean: 2^k about
 * mean·ln 2 for geometric values, mean / 2 for uniform ones; the planner
 * tries this k and the next. */
static inline unsigned rice_k0(double mean)
{
	double x = mean * 0.6931;
	if (x < 2)
		return 0;
	if (x >= 0x1p61)
		return 61;
	return enc_width((uint64_t)x) - 1;
}

static inline uint64_t rice_cost(uint64_t u, unsigned k)
{
	uint64_t q = u >> k;
	return q < RICE_LIMIT ? q + 1 + k : RICE_LIMIT + varbits_cost(u);
}

/* One frame's statistics: the first pass over it. */
typedef struct frame_stat {
	int64_t mn, ref; /* minimum; the reference for zigzag Rice */
	uint64_t range;
	double sum_u; /* sum of r - mn */
	double sum_z; /* sum of zigzag(r - ref), when mid is set */
	int mid;      /* zigzag Rice considered (range below 2^62) */
} frame_stat;

static void frame_scan(const int64_t *r, uint32_t cnt, frame_stat *fs)
{
	int64_t mn = r[0], mx = r[0];
	for (uint32_t i = 1; i < cnt; i++) {
		mn = r[i] < mn ? r[i] : mn;
		mx = r[i] > mx ? r[i] : mx;
	}
	fs->mn = mn;
	fs->range = (uint64_t)mx - (uint64_t)mn;
	fs->mid = enc_width(fs->range) < 63;
	fs->ref = mn;
	fs->sum_z = 0;
	/* Integer sums while they cannot overflow (frames are <= 1024), the
	 * slower uint64 -> double conversion otherwise. */
	int narrow = fs->range < ((uint64_t)1 << 52);
	if (narrow) {
		uint64_t sum = 0;
		for (uint32_t i = 0; i < cnt; i++)
			sum += (uint64_t)wsub(r[i], mn);
		fs->sum_u = (double)sum;
	} else {
		double sum = 0;
		for (uint32_t i = 0; i < cnt; i++)
			sum += (double)(uint64_t)wsub(r[i], mn);
		fs->sum_u = sum;
	}
	if (!fs->mid)
		return;
	double mean = fs->sum_u / cnt + 0.5;
	uint64_t off = mean >= (double)fs->range ? fs->range : (uint64_t)mean;
	fs->ref = wadd(mn, (int64_t)off);
	if (narrow) {
		uint64_t z = 0;
		for (uint32_t i = 0; i < cnt; i++)
			z += enc_zigzag(wsub(r[i], fs->ref));
		fs->sum_z = (double)z;
	} else {
		double z = 0;
		for (uint32_t i = 0; i < cnt; i++)
			z += (double)enc_zigzag(wsub(r[i], fs->ref));
		fs->sum_z = z;
	}
}

/* Estimated Rice bits from a sum alone (for choosing the transform). */
static double rice_estimate(double sum, uint32_t cnt)
{
	unsigned k = rice_k0(sum / cnt);
	double best = 1e300;
	for (unsigned j = k; j <= k + 1; j++) {
		double q = sum / (double)((uint64_t)1 << j) - 0.5 * cnt;
		double c = (double)cnt * (j + 1) + (q > 0 ? q : 0);
		best = c < best ? c : best;
	}
	return best;
}

/* Chooses the frame's mode exactly; returns its cost in bits. */
static uint64_t plan_frame(const int64_t *r, uint32_t cnt, int64_t prev_ref, enc_frame_plan *pl)
{
	frame_stat fs;
	frame_scan(r, cnt, &fs);
	unsigned w = enc_width(fs.range);
	uint64_t ref_min = varbits_cost(enc_zigzag(wsub(fs.mn, prev_ref)));
	uint64_t best = 8 + ref_min + (uint64_t)w * cnt;
	pl->code = (uint8_t)w;
	pl->ref = fs.mn;
	if (w <= 1)
		return best; /* nothing codes 0/1 values in fewer than one bit each */
	unsigned k1 = rice_k0(fs.sum_u / cnt), k2 = rice_k0(fs.sum_z / cnt);
	uint64_t c1[2] = {0, 0}, c2[2] = {0, 0};
	for (uint32_t i = 0; i < cnt; i++) {
		uint64_t u = (uint64_t)wsub(r[i], fs.mn);
		c1[0] += rice_cost(u, k1);
		c1[1] += rice_cost(u, k1 + 1);
		if (fs.mid) {
			uint64_t z = enc_zigzag(wsub(r[i], fs.ref));
			c2[0] += rice_cost(z, k2);
			c2[1] += rice_cost(z, k2 + 1);
		}
	}
	for (unsigned j = 0; j < 2; j++) {
		uint64_t c = 8 + ref_min + c1[j];
		if (c < best) {
			best = c;
			pl->code = (uint8_t)(CODE_RICE + k1 + j);
		}
	}
	if (fs.mid) {
		uint64_t ref_mid = varbits_cost(enc_zigzag(wsub(fs.ref, prev_ref)));
		for (unsigned j = 0; j < 2; j++) {
			uint64_t c = 8 + ref_mid + c2[j];
			if (c < best) {
				best = c;
				pl->code = (uint8_t)(CODE_MID + k2 + j);
				pl->ref = fs.ref;
			}
		}
	}
	return best;
}

static void plan_frames(const int64_t *r, uint32_t m, enc_frame_plan *pl)
{
	int64_t prev = 0;
	uint32_t f = 0;
	for (uint32_t i = 0; i < m; i += 1u << ENC_FRAME_LOG2, f++) {
		uint32_t cnt = m - i < (1u << ENC_FRAME_LOG2) ? m - i : 1u << ENC_FRAME_LOG2;
		plan_frame(r + i, cnt, prev, &pl[f]);
		prev = pl[f].ref;
	}
}

/* ------------------------------------------------------------ transform choice */

#define SAMPLE_FRAMES 32

/* One transform's statistics over one frame; the sums are taken relative
 * to the frame's first residual so that they stay precise. */
typedef struct est_acc {
	int64_t first, mn, mx;
	double s, ss;
} est_acc;

static inline void est_init(est_acc *a, int64_t r)
{
	a->first = a->mn = a->mx = r;
	a->s = a->ss = 0;
}

static inline void est_add(est_acc *a, int64_t r)
{
	a->mn = r < a->mn ? r : a->mn;
	a->mx = r > a->mx ? r : a->mx;
	double d = (double)wsub(r, a->first);
	a->s += d;
	a->ss += d * d;
}

/* Estimated bits of a frame of cnt residuals with these statistics, all
 * divided by g: bit-packing from the range, Rice around the minimum from
 * the mean, Rice around the mean from the standard deviation (the mean
 * |x| of a bell shape is about 0.8 of it, and zigzag doubles that). */
static double est_bits(const est_acc *a, uint32_t cnt, uint64_t g)
{
	uint64_t range = (uint64_t)a->mx - (uint64_t)a->mn;
	double best = (double)enc_width(range / g) * cnt;
	double mean = a->s / cnt, gd = (double)g;
	double mean_u = (mean - (double)wsub(a->mn, a->first)) / gd;
	double c = rice_estimate(mean_u * cnt, cnt);
	best = c < best ? c : best;
	if (enc_width(range) < 63) {
		double var = a->ss / cnt - mean * mean;
		double sd = var > 0 ? sqrt(var) / gd : 0;
		c = rice_estimate(1.6 * sd * cnt, cnt);
		best = c < best ? c : best;
	}
	return best + 24; /* code and a typical ref */
}

/*
 * Estimated bits of each transform, measured in one pass over up to
 * SAMPLE_FRAMES frames spread over the block. g divides the residuals of
 * all three alike (the gcd of the deltas is that of v[i] - v[0], and it
 * divides every delta of deltas), so it is found once, by the caller.
 */
static void estimate_orders(const int64_t *v, uint32_t n, uint64_t g, double bits[3])
{
	bits[0] = bits[1] = bits[2] = 0;
	if (n < 3)
		return;
	uint32_t m = n - 2, fsz = 1u << ENC_FRAME_LOG2;
	uint32_t frames = (m + fsz - 1) / fsz;
	uint32_t take = frames < SAMPLE_FRAMES ? frames : SAMPLE_FRAMES, seen = 0;
	for (uint32_t j = 0; j < take; j++) {
		uint32_t at = 2 + (uint32_t)((uint64_t)j * frames / take) * fsz;
		uint32_t end = n - at < fsz ? n : at + fsz;
		est_acc a[3];
		int64_t dprev = wsub(v[at - 1], v[at - 2]);
		est_init(&a[0], wsub(v[at], v[0]));
		est_init(&a[1], wsub(v[at], v[at - 1]));
		est_init(&a[2], wsub(wsub(v[at], v[at - 1]), dprev));
		for (uint32_t i = at; i < end; i++) {
			int64_t d = wsub(v[i], v[i - 1]);
			est_add(&a[0], wsub(v[i], v[0]));
			est_add(&a[1], d);
			est_add(&a[2], wsub(d, dprev));
			dprev = d;
		}
		for (int o = 0; o < 3; o++)
			bits[o] += est_bits(&a[o], end - at, g);
		seen += end - at;
	}
	for (int o = 0; o < 3; o++)
		bits[o] *= (double)m / seen;
}

/* ------------------------------------------------------------ encode */

static void write_frames(enc_bw *w, const int64_t *r, uint32_t m, const enc_frame_plan *pl)
{
	int64_t prev = 0;
	uint32_t f = 0;
	for (uint32_t i = 0; i < m; i += 1u << ENC_FRAME_LOG2, f++) {
		uint32_t cnt = m - i < (1u << ENC_FRAME_LOG2) ? m - i : 1u << ENC_FRAME_LOG2;
		const int64_t *x = r + i;
		unsigned code = pl[f].code;
		int64_t ref = pl[f].ref;
		enc_bw_put32(w, code, 8);
		enc_bw_varbits(w, enc_zigzag(wsub(ref, prev)));
		prev = ref;
		if (code < CODE_RICE) {
			for (uint32_t j = 0; j < cnt; j++)
				enc_bw_put(w, (uint64_t)wsub(x[j], ref), code);
			continue;
		}
		int zz = code >= CODE_MID;
		unsigned k = code - (zz ? CODE_MID : CODE_RICE);
		for (uint32_t j = 0; j < cnt; j++) {
			uint64_t u = zz ? enc_zigzag(wsub(x[j], ref)) : (uint64_t)wsub(x[j], ref);
			uint64_t q = u >> k;
			if (q + 1 + k <= 32) {
				/* q ones, a zero, k bits of u: one write */
				uint64_t lo = u & (((uint64_t)1 << k) - 1);
				enc_bw_put32(w, (((uint64_t)1 << q) - 1) | lo << (q + 1),
					     (unsigned)(q + 1 + k));
			} else if (q < RICE_LIMIT) {
				enc_bw_put32(w, ((uint64_t)1 << q) - 1, (unsigned)q + 1);
				enc_bw_put(w, u, k);
			} else {
				enc_bw_put32(w, 0xffffffffu, RICE_LIMIT);
				enc_bw_varbits(w, u);
			}
		}
	}
}

int enc_ints_put(codec_ctx *cx, const int64_t *v, uint32_t n, enum codec_order order,
		 codec_buf *out, enum codec_order *used)
{
	if (used)
		*used = order == CODEC_ORDER_AUTO ? CODEC_ORDER_VALUE : order;
	if (n == 0)
		return 0;
	if (n > CODEC_BLOCK_MAX)
		return err_set(TALLY_EINVAL, "codec: %u values in one integer stream", n);
	int64_t *r = enc_scratch(cx, ENC_S_RES, (size_t)n * 8);
	if (!r)
		return -ENOMEM;
	int o = order == CODEC_ORDER_AUTO ? 1 : (int)order - 1;
	/* the divisor of the deltas, which is that of orders 0 and 1 */
	gcd_acc ga = {0};
	for (uint32_t i = 1; i < n && ga.g != 1; i++)
		gcd_add(&ga, wsub(v[i], v[i - 1]));
	uint64_t g1 = gcd_result(&ga);
	if (order == CODEC_ORDER_AUTO && n > 2) {
		double bits[3];
		estimate_orders(v, n, g1, bits);
		o = bits[0] < bits[1] ? 0 : 1;
		o = bits[2] < bits[o] ? 2 : o;
	}
	int64_t head[2] = {0, 0};
	uint32_t h, m = transform(v, n, o, r, head, &h);
	uint64_t g = g1;
	if (o == 2)
		g = common_divisor(r, m); /* a multiple of g1, perhaps larger */
	else
		divide_all(r, m, g);
	plan_frames(r, m, cx->plans);
	/* Worst case per value: Rice escape, 32 + 7 + 64 bits; per frame 79. */
	size_t frames = ((size_t)m >> ENC_FRAME_LOG2) + 1;
	size_t bound = 1 + 10 + 20 + frames * 10 + (size_t)m * 13 + 8;
	if (codec_buf_reserve(out, bound))
		return -ENOMEM;
	uint8_t *p = out->p + out->len;
	*p++ = (uint8_t)(o | (ENC_FRAME_LOG2 - FRAME_LOG2_MIN) << 2);
	p += enc_varint_put(p, g);
	for (uint32_t i = 0; i < h; i++)
		p += enc_varint_put(p, enc_zigzag(head[i]));
	enc_bw w;
	enc_bw_init(&w, p);
	write_frames(&w, r, m, cx->plans);
	p = enc_bw_end(&w);
	out->len = (size_t)(p - out->p);
	if (used)
		*used = (enum codec_order)(o + 1);
	return 0;
}

/* ------------------------------------------------------------ decode */

/*
 * The common Rice frame, k <= 23 (every code then fits the 56 bits a
 * refill leaves): one loop per sign convention, so that neither the
 * convention nor the width test is decided again per value. It stops at
 * the first escape (32 ones), which the general loop below takes on;
 * how many values it decoded. (callgrind, 300 unaligned V85 queries of
 * bench_dist: see bench/results/dist-query-2026-12-07.md.)
 */
static inline __attribute__((always_inline)) uint32_t
rice_run(enc_br *brp, int64_t *x, uint32_t cnt, unsigned k, int64_t ref, int zz)
{
	uint64_t acc = brp->acc, kmask = ((uint64_t)1 << k) - 1;
	unsigned n = brp->n;
	uint32_t j = 0;
	for (; j < cnt; j++) {
		if (n < RICE_LIMIT + 1 + k) {
			brp->acc = acc;
			brp->n = n;
			enc_br_refill(brp);
			acc = brp->acc;
			n = brp->n;
		}
		unsigned q = (unsigned)__builtin_ctzll(~acc | (uint64_t)1 << RICE_LIMIT);
		if (q >= RICE_LIMIT)
			break;
		unsigned used = q + 1 + k;
		uint64_t u = (uint64_t)q << k | (acc >> (q + 1) & kmask);
		acc >>= used;
		n -= used;
		x[j] = zz ? wadd(ref, enc_unzigzag(u)) : wadd(ref, (int64_t)u);
	}
	brp->acc = acc;
	brp->n = n;
	return j;
}

/*
 * The reader works on a copy of *br in locals: through the pointer the
 * compiler must assume every store to r[] may change br->acc (both are
 * 64-bit integers), and reloads it per value. The common Rice code, q < 32
 * ones and k <= 23 low bits, is taken in one step after one refill check.
 * (callgrind, 2,000 exact aggregates: 442 -> 352 M instructions here.)
 */
static int read_frames(enc_br *brp, int64_t *r, uint32_t m, unsigned flog2, int64_t *prev_ref,
		       uint32_t frame0)
{
	enc_br br = *brp;
	int64_t prev = *prev_ref;
	uint32_t fsize = 1u << flog2, f0 = frame0 << flog2;
	for (uint32_t i = 0; i < m; i += fsize) {
		uint32_t cnt = m - i < fsize ? m - i : fsize;
		int64_t *x = r + i;
		unsigned code = (unsigned)enc_br_get56(&br, 8);
		uint64_t d;
		unsigned bad;
		if (code >= CODE_END)
			return ENC_CORRUPT("integer frame %u: bad code %u", (f0 + i) >> flog2,
					   code);
		if ((bad = enc_br_varbits(&br, &d)))
			return ENC_CORRUPT("integer frame %u: reference bit width %u > 64",
					   (f0 + i) >> flog2, bad);
		int64_t ref = wadd(prev, enc_unzigzag(d));
		prev = ref;
		if (code < CODE_RICE) {
			for (uint32_t j = 0; j < cnt; j++)
				x[j] = wadd(ref, (int64_t)enc_br_get(&br, code));
			goto frame_done;
		}
		int zz = code >= CODE_MID;
		unsigned k = code - (zz ? CODE_MID : CODE_RICE);
		uint64_t kmask = ((uint64_t)1 << k) - 1;
		uint32_t j = 0;
		if (k <= 56 - RICE_LIMIT - 1)
			j = zz ? rice_run(&br, x, cnt, k, ref, 1)
			       : rice_run(&br, x, cnt, k, ref, 0);
		for (; j < cnt; j++) {
			if (br.n < RICE_LIMIT + 1 + k)
				enc_br_refill(&br);
			uint64_t u;
			/* the ones run, capped at RICE_LIMIT (the escape) */
			unsigned q = (unsigned)__builtin_ctzll(~br.acc | (uint64_t)1 << RICE_LIMIT);
			if (q < RICE_LIMIT && k <= 56 - RICE_LIMIT - 1) {
				/* q ones, a zero and k bits, all in acc */
				u = (uint64_t)q << k | (br.acc >> (q + 1) & kmask);
				br.acc >>= q + 1 + k;
				br.n -= q + 1 + k;
			} else if (q < RICE_LIMIT) {
				br.acc >>= q + 1;
				br.n -= q + 1;
				u = (uint64_t)q << k | enc_br_get(&br, k);
			} else {
				br.acc >>= RICE_LIMIT;
				br.n -= RICE_LIMIT;
				if ((bad = enc_br_varbits(&br, &u)))
					return ENC_CORRUPT("integer frame %u value %u: bit "
							   "width %u > 64",
							   (f0 + i) >> flog2, j, bad);
			}
			x[j] = zz ? wadd(ref, enc_unzigzag(u)) : wadd(ref, (int64_t)u);
		}
frame_done:
		if (enc_br_overrun(&br))
			return ENC_CORRUPT("integer frame %u: truncated", (f0 + i) >> flog2);
	}
	*brp = br;
	*prev_ref = prev;
	return 0;
}

/* Undoes the divisor and the transform of v[from..to), v[0..from) done. */
static void finish(int64_t *v, uint32_t from, uint32_t to, unsigned o, uint64_t g,
		   const int64_t head[2], int64_t *dd)
{
	if (o == 1) { /* times: the divisor undone in the running sum's pass */
		for (uint32_t i = from; i < to; i++)
			v[i] = wadd(v[i - 1], (int64_t)((uint64_t)v[i] * g));
		return;
	}
	if (g != 1)
		for (uint32_t i = from; i < to; i++)
			v[i] = (int64_t)((uint64_t)v[i] * g);
	if (o == 0) {
		for (uint32_t i = from; i < to; i++)
			v[i] = wadd(v[i], head[0]);
	} else {
		int64_t d = *dd;
		for (uint32_t i = from; i < to; i++) {
			d = wadd(d, v[i]);
			v[i] = wadd(v[i - 1], d);
		}
		*dd = d;
	}
}

int enc_ints_get_head(const uint8_t *p, size_t len, uint32_t n, int64_t *v, uint32_t want,
		      int64_t stop, uint32_t *got)
{
	*got = 0;
	if (n == 0) {
		if (len)
			return ENC_CORRUPT("integer stream: %zu bytes for no values", len);
		return 0;
	}
	if (len < 1)
		return ENC_CORRUPT("integer stream: empty for %u values", n);
	unsigned o = p[0] & 3, flog2 = (p[0] >> 2 & 7) + FRAME_LOG2_MIN;
	if (o == 3 || (p[0] >> 5) || flog2 > FRAME_LOG2_MAX)
		return ENC_CORRUPT("integer stream: bad header byte 0x%02x", p[0]);
	size_t pos = 1;
	uint64_t g, z;
	int rc = enc_varint_get(p, len, &pos, &g, "integer stream divisor");
	if (rc)
		return rc;
	if (g == 0)
		return ENC_CORRUPT("integer stream: divisor 0");
	uint32_t h = (o == 2 && n >= 2) ? 2 : 1;
	int64_t head[2] = {0, 0};
	for (uint32_t i = 0; i < h; i++) {
		if ((rc = enc_varint_get(p, len, &pos, &z, "integer stream head")))
			return rc;
		head[i] = enc_unzigzag(z);
	}
	v[0] = head[0];
	int64_t dd = head[1];
	if (h == 2)
		v[1] = wadd(head[0], head[1]);
	uint32_t done = h;
	if (want > n)
		want = n;
	enc_br br;
	enc_br_init(&br, p + pos, len - pos);
	/* Residuals land in v[h..] a frame at a time, then become values in
	 * place; the frames' reference values chain, so frames go in order. */
	uint32_t fsize = 1u << flog2;
	int64_t prev_ref = 0;
	while (done < n && (done < want || v[done - 1] < stop)) {
		uint32_t cnt = n - done < fsize ? n - done : fsize;
		if ((rc = read_frames(&br, v + done, cnt, flog2, &prev_ref, (done - h) >> flog2)))
			return rc;
		finish(v, done, done + cnt, o, g, head, &dd);
		done += cnt;
	}
	*got = done;
	size_t used = enc_br_used(&br, p + pos);
	if (done == n && used != len - pos)
		return ENC_CORRUPT("integer stream: %zu bytes left over", len - pos - used);
	return 0;
}

int enc_ints_get(codec_ctx *cx, const uint8_t *p, size_t len, uint32_t n, int64_t *v)
{
	(void)cx;
	uint32_t got;
	return enc_ints_get_head(p, len, n, v, n, INT64_MIN, &got);
}

/* ------------------------------------------------------------ INT encoding */

/* body: the stream itself. */
static int int_encode(codec_ctx *cx, const enc_vals *in, const codec_opts *opt, codec_buf *out,
		      codec_stats *st)
{
	enum codec_order used;
	int rc = enc_ints_put(cx, in->v, in->n, opt->order, out, &used);
	if (!rc && st)
		st->order = (uint8_t)used;
	return rc;
}

static int int_decode(codec_ctx *cx, enum codec_kind kind, const uint8_t *body, size_t len,
		      uint32_t n, void *out, codec_buf *arena)
{
	(void)kind, (void)arena;
	return enc_ints_get_head(body, len, n, out, cx->want, cx->stop, &cx->got);
}

const codec_ops enc_int_ops = {
	.id = CODEC_ENC_INT,
	.name = "int",
	.kinds = 1u << CODEC_TS | 1u << CODEC_I64 | 1u << CODEC_U64,
	.encode = int_encode,
	.decode = int_decode,
};
