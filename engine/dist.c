/*
 * dist.c — exact distributions: the dist aggregate kind (and its sketches
 * past a bound), the windows a flush builds from rows, and the
 * configuration that marks fields.
 *
 * The one idea: a value at a fixed decimal resolution is an integer, so a
 * window's distribution is a sorted list of (integer, count) pairs, and
 * every combination — values into a window, windows into coarser ones,
 * shards, parts and merges — is an exact merge of sorted lists. Nothing
 * is ever rounded but the value itself, once, to its resolution. A sketch
 * is the same list over logarithmic buckets of the integer, a monotone
 * map, so it merges the same way, and an exact list joins it by mapping
 * its values.
 */
#include "dist.h"
#include "distcode.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dcount.h"
#include "err.h"
#include "fileio.h"
#include "mem.h"

static const double p10[] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9};

int64_t dist_index(double v, int32_t exp)
{
	double x = exp < 0 ? v * p10[-exp] : v / p10[exp];
	if (x >= (double)DIST_IDX_MAX)
		return DIST_IDX_MAX;
	if (x <= -(double)DIST_IDX_MAX)
		return -DIST_IDX_MAX;
	/* llround (half away from zero) without the library call: |x| <
	 * 2^62, and x minus its truncation is exact. Writes refuse NaN; a
	 * NaN here (never stored) is not cast */
	if (isnan(x))
		return 0;
	int64_t i = (int64_t)x;
	double f = x - (double)i;
	return i + (f >= 0.5) - (f <= -0.5);
}

void dist_index_n(const double *v, size_t n, int32_t exp, int64_t *out, int64_t *lo, int64_t *hi)
{
	if (!n)
		return;
	int64_t l = dist_index(v[0], exp), h = l;
	for (size_t i = 0; i < n; i++) {
		int64_t x = dist_index(v[i], exp);
		out[i] = x;
		l = x < l ? x : l;
		h = x > h ? x : h;
	}
	*lo = l;
	*hi = h;
}

double dist_value(int64_t idx, int32_t exp)
{
	/* one correctly rounded operation: 573 / 10 is the double "57.3"
	 * parses to */
	return exp < 0 ? (double)idx / p10[-exp] : (double)idx * p10[exp];
}

/* ---------------------------------------------------------------- states */

static int cmp_pair(const void *x, const void *y)
{
	const int64_t *a = x, *b = y;
	return (*a > *b) - (*a < *b);
}

/* A few pairs (a finest window's) are sorted where they lie. Values of a
 * coarser window or a range usually span a few thousand units of the
 * resolution (speeds at 0.1 km/h): then a count per unit, walked once,
 * adds them up in time linear in pairs plus span (the counting array a
 * query uses too, dcount.h); else a sort of (value, count) records. The
 * counts live in *buf (*cap of them, all zero; grown as needed and left
 * all zero), so that a flush adding up many windows allocates them once. */
static int combine(int64_t *v, uint64_t *c, size_t n, size_t *k, uint64_t **buf, size_t *cap)
{
	*k = 0;
	if (!n)
		return 0;
	if (n <= 32) {
		/* a finest window's few values: an insertion sort in place */
		for (size_t i = 1; i < n; i++) {
			int64_t x = v[i];
			uint64_t y = c[i];
			size_t j = i;
			for (; j && v[j - 1] > x; j--) {
				v[j] = v[j - 1];
				c[j] = c[j - 1];
			}
			v[j] = x;
			c[j] = y;
		}
		for (size_t i = 0; i < n; i++) {
			if (*k && v[*k - 1] == v[i]) {
				c[*k - 1] += c[i];
			} else {
				v[*k] = v[i];
				c[(*k)++] = c[i];
			}
		}
		return 0;
	}
	int64_t lo = v[0], hi = v[0];
	for (size_t i = 1; i < n; i++) {
		lo = v[i] < lo ? v[i] : lo;
		hi = v[i] > hi ? v[i] : hi;
	}
	uint64_t span = (uint64_t)hi - (uint64_t)lo + 1;
	if (span <= 4 * (uint64_t)n + 4096) {
		/* the shared counting array (dcount.h), empty between calls */
		dcount d = DCOUNT_INIT;
		d.cnt = *buf;
		d.cap = *cap;
		int rc = dcount_cover(&d, lo, hi + 1, (size_t)span);
		*buf = d.cnt;
		*cap = d.cap;
		if (rc < 0)
			return rc;
		uint64_t *cnt = d.cnt - d.lo;
		for (size_t i = 0; i < n; i++)
			cnt[v[i]] += c[i];
		*k = dcount_take(&d, n, v, c);
		return 0;
	}
	int64_t *rec = mem_alloc(n * 16);
	if (!rec)
		return err_set(-ENOMEM, "out of memory");
	for (size_t i = 0; i < n; i++) {
		rec[2 * i] = v[i];
		rec[2 * i + 1] = (int64_t)c[i];
	}
	qsort(rec, n, 16, cmp_pair);
	for (size_t i = 0; i < n; i++) {
		if (*k && v[*k - 1] == rec[2 * i]) {
			c[*k - 1] += (uint64_t)rec[2 * i + 1];
		} else {
			v[*k] = rec[2 * i];
			c[(*k)++] = (uint64_t)rec[2 * i + 1];
		}
	}
	mem_free(rec);
	return 0;
}

int dist_combine(int64_t *v, uint64_t *c, size_t n, size_t *k)
{
	uint64_t *buf = NULL;
	size_t cap = 0;
	int rc = combine(v, c, n, k, &buf, &cap);
	mem_free(buf);
	return rc;
}

void dstate_release(dstate *d)
{
	if (d->cap) {
		mem_free(d->v);
		mem_free(d->c);
	}
	d->v = NULL;
	d->c = NULL;
	d->n = d->cap = 0;
}

static void dist_drop(dstate *d)
{
	dstate_release(d);
	d->exp = DIST_MIXED;
	d->sketch = 0;
}

/* Room for cap pairs of one's own, the current ones kept. */
static int dstate_reserve(dstate *d, uint32_t cap)
{
	if (d->cap >= cap && d->cap)
		return 0;
	int64_t *v = mem_alloc((size_t)cap * sizeof *v);
	uint64_t *c = mem_alloc((size_t)cap * sizeof *c);
	if (!v || !c) {
		mem_free(v);
		mem_free(c);
		return -ENOMEM;
	}
	uint32_t n = d->n;
	if (n) {
		memcpy(v, d->v, (size_t)n * sizeof *v);
		memcpy(c, d->c, (size_t)n * sizeof *c);
	}
	dstate_release(d);
	d->n = n;
	d->v = v;
	d->c = c;
	d->cap = cap;
	return 0;
}

/* ---------------------------------------------------------------- sketches */

/* ln g, g = (1 + alpha) / (1 - alpha) */
#define SK_LN_G log((1 + DIST_SKETCH_ALPHA) / (1 - DIST_SKETCH_ALPHA))

int64_t dist_sketch_key(int64_t idx)
{
	if (!idx)
		return 0;
	uint64_t m = idx < 0 ? 0 - (uint64_t)idx : (uint64_t)idx;
	/* bucket k >= 1 holds (g^(k-2), g^(k-1)]: 1 is bucket 1 */
	int64_t k = (int64_t)ceil(log((double)m) / SK_LN_G) + 1;
	return idx < 0 ? -k : k;
}

double dist_sketch_value(int64_t key, int32_t e)
{
	if (!key)
		return 0;
	int64_t k = key < 0 ? -key : key;
	/* 2 g^(k-1) / (g + 1): within alpha of both ends of the bucket */
	double g = (1 + DIST_SKETCH_ALPHA) / (1 - DIST_SKETCH_ALPHA);
	double x = 2 * exp((double)(k - 1) * SK_LN_G) / (g + 1);
	x = e < 0 ? x / p10[-e] : x * p10[e];
	return key < 0 ? -x : x;
}

/* The bucket furthest from 0 a value in range can have (a decoder's
 * bound). */
static int64_t sketch_key_max(void)
{
	return dist_sketch_key(DIST_IDX_MAX);
}

/* Turns an owned exact state into a sketch in place: the buckets of
 * ascending values ascend, so the values of one bucket are neighbours. */
static void dstate_to_sketch(dstate *d)
{
	uint32_t k = 0;
	for (uint32_t i = 0; i < d->n; i++) {
		int64_t key = dist_sketch_key(d->v[i]);
		if (k && d->v[k - 1] == key) {
			d->c[k - 1] += d->c[i];
		} else {
			d->v[k] = key;
			d->c[k++] = d->c[i];
		}
	}
	d->n = k;
	d->sketch = 1;
}

/* Pair i of a list as a sketch's bucket when sk, else as it is. */
static inline int64_t key_at(const int64_t *v, int v_sketch, uint32_t i, int sk)
{
	return sk && !v_sketch ? dist_sketch_key(v[i]) : v[i];
}

uint32_t dist_merge_pairs(const int64_t *va, const uint64_t *ca, uint32_t na, int ska,
			  const int64_t *vb, const uint64_t *cb, uint32_t nb, int skb, int64_t *v,
			  uint64_t *c)
{
	/* a merge of sorted lists; an exact side merged into a sketch gives
	 * its buckets, several values of which may share one */
	int sk = ska || skb;
	uint32_t i = 0, j = 0, k = 0;
	int64_t x = 0, y = 0;
	if (na)
		x = key_at(va, ska, 0, sk);
	if (nb)
		y = key_at(vb, skb, 0, sk);
	while (i < na || j < nb) {
		int64_t z;
		uint64_t cnt;
		if (j == nb || (i < na && x <= y)) {
			z = x;
			cnt = ca[i++];
			if (i < na)
				x = key_at(va, ska, i, sk);
		} else {
			z = y;
			cnt = cb[j++];
			if (j < nb)
				y = key_at(vb, skb, j, sk);
		}
		if (k && v[k - 1] == z) {
			c[k - 1] += cnt;
		} else {
			v[k] = z;
			c[k++] = cnt;
		}
	}
	return k;
}

int dstate_merge(dstate *dst, const dstate *src)
{
	if (!src->a.count)
		return 0;
	if (!dst->a.count) {
		dst->exp = src->exp;
	} else if (dst->exp != src->exp) {
		ragg_merge(&dst->a, &src->a);
		dist_drop(dst);
		return 0;
	}
	if (dst->exp == DIST_MIXED) {
		ragg_merge(&dst->a, &src->a);
		return 0;
	}
	int sk = dst->sketch || src->sketch;
	uint32_t na = dst->n, nb = src->n;
	int64_t *v = mem_alloc(((size_t)na + nb) * sizeof *v);
	uint64_t *c = mem_alloc(((size_t)na + nb) * sizeof *c);
	if (!v || !c) {
		mem_free(v);
		mem_free(c);
		return -ENOMEM;
	}
	uint32_t k = dist_merge_pairs(dst->v, dst->c, na, (int)dst->sketch, src->v, src->c, nb,
				      (int)src->sketch, v, c);
	dstate_release(dst);
	dst->v = v;
	dst->c = c;
	dst->n = k;
	dst->cap = na + nb ? na + nb : 1;
	dst->sketch = (uint32_t)sk;
	if (src->max && (!dst->max || src->max < dst->max))
		dst->max = src->max;
	if (!sk && dst->max && k > dst->max)
		dstate_to_sketch(dst);
	ragg_merge(&dst->a, &src->a);
	return 0;
}

/* One value in; 0 or -ENOMEM, the state unchanged. */
static int dstate_add(dstate *d, double x)
{
	int64_t idx = dist_index(x, d->exp);
	if (d->sketch)
		idx = dist_sketch_key(idx);
	uint32_t lo = 0, hi = d->n;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (d->v[mid] < idx)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo < d->n && d->v[lo] == idx) {
		d->c[lo]++;
	} else {
		if (!d->sketch && d->max && d->n >= d->max) {
			/* one distinct value too many: this window goes on as a
			 * sketch (its arrays must be its own to be rewritten) */
			if (!d->cap && dstate_reserve(d, d->n))
				return -ENOMEM;
			dstate_to_sketch(d);
			return dstate_add(d, x);
		}
		if (d->n == d->cap && dstate_reserve(d, d->cap ? d->cap * 2 : 8))
			return -ENOMEM;
		memmove(&d->v[lo + 1], &d->v[lo], (size_t)(d->n - lo) * sizeof *d->v);
		memmove(&d->c[lo + 1], &d->c[lo], (size_t)(d->n - lo) * sizeof *d->c);
		d->v[lo] = idx;
		d->c[lo] = 1;
		d->n++;
	}
	ragg_add(&d->a, x);
	return 0;
}

/* ---------------------------------------------------------------- kind */

static void dist_init(void *st)
{
	dstate *d = st;
	memset(d, 0, sizeof *d);
	ragg_init(&d->a);
}

static int dist_add(void *st, double v)
{
	return dstate_add(st, v);
}

static int dist_merge_fn(void *st, const void *src)
{
	return dstate_merge(st, src);
}

static void dist_finalize(const void *st, void *answer)
{
	ragg_to_public(&((const dstate *)st)->a, answer);
}

static int dist_own(void *st)
{
	dstate *d = st;
	if (d->cap || !d->n)
		return 0;
	return dstate_reserve(d, d->n);
}

static void dist_release_fn(void *st)
{
	dstate_release(st);
}

/*
 * Payload of kind 4 (AGG_DIST_BITS): the basic payload of the same
 * windows (engine/aggkind.c), then
 *   i32 exp          resolution 10^exp; DIST_MIXED: no distributions
 *   u32 max          the bound on distinct values the windows were kept
 *                    under (0: none)
 *   varint pairs     the windows' pairs in all (0 when exp is DIST_MIXED)
 *   bit stream       every window's pairs (engine/distcode.c), to the end
 * Kind 3 kept the same numbers in four codec streams, whose general
 * integer encoder measured every block's options and cost a flush some
 * 120 instructions a value; the windows' own counts, in the basic
 * payload, also bound their pair counts, which kind 3 stored apart.
 */
static int dist_encode(codec_ctx *cx, const void *buckets, uint32_t n, codec_buf *out)
{
	const dbucket *b = buckets;
	int32_t exp = n ? b[0].d.exp : 0;
	uint32_t max = 0;
	for (uint32_t i = 0; i < n; i++) {
		if (b[i].d.exp != exp)
			exp = DIST_MIXED; /* flushes and merges never mix; be safe */
		if (b[i].d.max && (!max || b[i].d.max < max))
			max = b[i].d.max;
	}
	rbucket *rb = mem_alloc((size_t)n * sizeof *rb);
	if (!rb)
		return err_set(-ENOMEM, "out of memory");
	for (uint32_t i = 0; i < n; i++) {
		rb[i].start = b[i].start;
		rb[i].a = b[i].d.a;
	}
	int rc = agg_basic.encode(cx, rb, n, out);
	mem_free(rb);
	if (rc)
		return rc;
	if (codec_buf_reserve(out, 8))
		return err_set(-ENOMEM, "out of memory");
	le_put32(out->p + out->len, (uint32_t)exp);
	le_put32(out->p + out->len + 4, max);
	out->len += 8;
	return distcode_encode(b, exp == DIST_MIXED ? 0 : n, max, out);
}

#define MALFORMED() err_set(TALLY_ECORRUPT, "malformed distribution block")

/* Reads "u32 len, codec block of n values" at *pos. */
static int get_block(codec_ctx *cx, const uint8_t *p, size_t len, size_t *pos, enum codec_kind kind,
		     uint32_t n, void *vals)
{
	if (len - *pos < 4)
		return MALFORMED();
	uint32_t bl = le_get32(p + *pos);
	*pos += 4;
	if (bl > len - *pos)
		return MALFORMED();
	int rc = codec_decode(cx, p + *pos, bl, kind, n, vals, NULL, NULL);
	*pos += bl;
	return rc;
}

static int get_stream(codec_ctx *cx, const uint8_t *p, size_t len, size_t *pos,
		      enum codec_kind kind, uint64_t n, uint64_t *vals)
{
	int rc = 0;
	for (uint64_t k = 0; k < n && !rc; k += CODEC_BLOCK_MAX) {
		uint32_t m = n - k < CODEC_BLOCK_MAX ? (uint32_t)(n - k) : CODEC_BLOCK_MAX;
		rc = get_block(cx, p, len, pos, kind, m, vals + k);
	}
	return rc;
}

/* The head both payload versions share: the basic payload into b's
 * states (the rest zeroed) and exp. *pos: past them. */
static int decode_head(codec_ctx *cx, const uint8_t *p, size_t len, uint32_t n, dbucket *b,
		       size_t *pos, int32_t *exp)
{
	*pos = agg_basic_payload_len(p, len);
	if (!*pos || len - *pos < 4)
		return MALFORMED();
	rbucket *rb = mem_alloc((size_t)n * sizeof *rb);
	if (!rb)
		return err_set(-ENOMEM, "out of memory");
	int rc = agg_basic.decode(cx, p, *pos, n, rb, NULL);
	for (uint32_t i = 0; i < n && !rc; i++) {
		b[i].start = rb[i].start;
		memset(&b[i].d, 0, sizeof b[i].d);
		b[i].d.a = rb[i].a;
	}
	mem_free(rb);
	*exp = (int32_t)le_get32(p + *pos);
	*pos += 4;
	if (!rc && *exp != DIST_MIXED && (*exp < DIST_EXP_MIN || *exp > DIST_EXP_MAX))
		rc = MALFORMED();
	for (uint32_t i = 0; i < n && !rc; i++)
		b[i].d.exp = *exp;
	return rc;
}

/* Checks what a merge relies on: per window ascending values in range,
 * counts > 0 adding up to the window's count (with a distribution). */
static int check_windows(dbucket *b, uint32_t n, int32_t exp)
{
	int64_t kmax = sketch_key_max();
	for (uint32_t i = 0; i < n; i++) {
		const dstate *d = &b[i].d;
		int64_t lim = d->sketch ? kmax : DIST_IDX_MAX;
		uint64_t sum = 0;
		for (uint32_t j = 0; j < d->n; j++) {
			if (d->v[j] < -lim || d->v[j] > lim || (j && d->v[j] <= d->v[j - 1]) ||
			    !d->c[j] || d->c[j] > d->a.count - sum)
				return MALFORMED();
			sum += d->c[j];
		}
		if (exp != DIST_MIXED && sum != d->a.count)
			return MALFORMED();
	}
	return 0;
}

/* A stream of k values takes at least 4 bytes per chunk of 65,536: a
 * total of pairs the bytes left cannot hold is damage, not a reason to
 * reserve memory for it. */
static int pairs_fit(uint64_t total, size_t left)
{
	return (total + CODEC_BLOCK_MAX - 1) / CODEC_BLOCK_MAX * 4 <= left;
}

/* Per window pair counts from heads (sketch flags too when with_flag):
 * what a distribution needs, their total in *total. A window is a
 * sketch only past the block's bound max (the least of its windows'
 * bounds, each of which a sketch passed): kind 4 relies on it. */
static int take_heads(dbucket *b, uint32_t n, int32_t exp, const uint64_t *head, int with_flag,
		      uint32_t max, uint64_t *total)
{
	*total = 0;
	for (uint32_t i = 0; i < n; i++) {
		uint64_t h = head[i], k = with_flag ? h >> 1 : h;
		if (k > b[i].d.a.count || k > UINT32_MAX / 2 || (exp == DIST_MIXED && h) ||
		    (exp != DIST_MIXED && !k) ||
		    (with_flag && (h & 1) && !(max && b[i].d.a.count > max)))
			return MALFORMED();
		b[i].d.n = (uint32_t)k;
		b[i].d.sketch = with_flag ? (uint32_t)(h & 1) : 0;
		*total += k;
	}
	return 0;
}

/*
 * Payload of kind 3 (AGG_DIST_SK, read only): the basic payload, i32 exp
 * and u32 max as in kind 4, then four streams:
 *   heads            per window: 2 x its pairs, + 1 when a sketch
 *   firsts           per window with pairs: its first value (bucket), i64
 *   gaps             every later pair: its value minus the one before, - 1
 *   counts           every pair: its count - 1
 * A stream of k values is ceil(k / 65,536) chunks, each a u32 length and
 * a codec block (u64 unless said) of at most 65,536 values.
 */
static int dist_v2_decode(codec_ctx *cx, const uint8_t *p, size_t len, uint32_t n, void *out,
			  codec_buf *arena)
{
	dbucket *b = out;
	size_t pos;
	int32_t exp;
	uint64_t *head = NULL, total = 0;
	int rc = decode_head(cx, p, len, n, b, &pos, &exp);
	uint32_t max = 0;
	if (!rc && len - pos < 4)
		rc = MALFORMED();
	if (!rc) {
		max = le_get32(p + pos);
		pos += 4;
		if (max > DIST_MAX_LIMIT)
			rc = MALFORMED();
	}
	if (!rc && !(head = mem_alloc((size_t)n * sizeof *head)))
		rc = err_set(-ENOMEM, "out of memory");
	if (!rc && !(rc = get_stream(cx, p, len, &pos, CODEC_U64, n, head)))
		rc = take_heads(b, n, exp, head, 1, max, &total);
	if (!rc && !pairs_fit(total, len - pos))
		rc = MALFORMED();
	uint64_t m = exp == DIST_MIXED ? 0 : n;
	if (!rc && (rc = codec_buf_reserve(arena, (size_t)total * 16)))
		rc = err_set(rc, "out of memory");
	int64_t *v = rc ? NULL : (int64_t *)(void *)arena->p;
	uint64_t *c = rc ? NULL : (uint64_t *)(void *)(arena->p + total * 8);
	/* the firsts into head (one per window), the gaps into c for now */
	if (!rc)
		rc = get_stream(cx, p, len, &pos, CODEC_I64, m, head);
	if (!rc)
		rc = get_stream(cx, p, len, &pos, CODEC_U64, total - m, c);
	uint64_t k = 0, g = 0;
	for (uint32_t i = 0; i < n && !rc && m; i++) {
		dstate *d = &b[i].d;
		d->v = v + k;
		d->v[0] = (int64_t)head[i];
		for (uint32_t j = 1; j < d->n && !rc; j++) {
			uint64_t step = c[g++];
			if (step >= (uint64_t)2 * DIST_IDX_MAX ||
			    d->v[j - 1] > DIST_IDX_MAX - (int64_t)step - 1)
				rc = MALFORMED();
			else
				d->v[j] = d->v[j - 1] + (int64_t)step + 1;
		}
		k += d->n;
	}
	if (!rc)
		rc = get_stream(cx, p, len, &pos, CODEC_U64, total, c);
	k = 0;
	for (uint32_t i = 0; i < n && !rc && m; i++) {
		dstate *d = &b[i].d;
		d->c = c + k;
		d->max = max;
		for (uint32_t j = 0; j < d->n && !rc; j++)
			if (d->c[j]++ == UINT64_MAX)
				rc = MALFORMED();
		k += d->n;
	}
	if (!rc && pos != len)
		rc = MALFORMED();
	if (!rc)
		rc = check_windows(b, n, exp);
	mem_free(head);
	if (rc)
		for (uint32_t i = 0; i < n; i++)
			memset(&b[i].d, 0, sizeof b[i].d); /* nothing borrowed looks owned */
	return rc;
}

static int dist_decode(codec_ctx *cx, const uint8_t *p, size_t len, uint32_t n, void *out,
		       codec_buf *arena)
{
	dbucket *b = out;
	size_t pos;
	int32_t exp;
	int rc = decode_head(cx, p, len, n, b, &pos, &exp);
	if (rc)
		return rc;
	if (len - pos < 4)
		return MALFORMED();
	uint32_t max = le_get32(p + pos);
	pos += 4;
	if (max > DIST_MAX_LIMIT)
		return MALFORMED();
	return distcode_decode(p + pos, len - pos, b, exp == DIST_MIXED ? 0 : n, max, arena);
}

/*
 * Payload of kind 2 (AGG_DIST, written before sketches; read only): the
 * basic payload, i32 exp, a u32 length and a codec u64 block of n values
 * (each window's distinct values), then per chunk of at most 65,536
 * pairs (all windows' pairs, in order) a u32 length and a codec i64 block
 * of the values (each window's first as is, then the steps), and a u32
 * length and a codec u64 block of their counts.
 */
static int dist_v1_decode(codec_ctx *cx, const uint8_t *p, size_t len, uint32_t n, void *out,
			  codec_buf *arena)
{
	dbucket *b = out;
	size_t pos;
	int32_t exp;
	uint64_t *cnt = NULL, total = 0;
	int rc = decode_head(cx, p, len, n, b, &pos, &exp);
	if (!rc && !(cnt = mem_alloc((size_t)n * sizeof *cnt)))
		rc = err_set(-ENOMEM, "out of memory");
	if (!rc && !(rc = get_block(cx, p, len, &pos, CODEC_U64, n, cnt)))
		rc = take_heads(b, n, exp, cnt, 0, 0, &total);
	mem_free(cnt);
	if (!rc && !pairs_fit(total, len - pos))
		rc = MALFORMED();
	if (!rc && (rc = codec_buf_reserve(arena, (size_t)total * 16)))
		rc = err_set(rc, "out of memory");
	int64_t *v = rc ? NULL : (int64_t *)(void *)arena->p;
	uint64_t *c = rc ? NULL : (uint64_t *)(void *)(arena->p + total * 8);
	for (uint64_t k = 0; k < total && !rc; k += CODEC_BLOCK_MAX) {
		uint32_t m = total - k < CODEC_BLOCK_MAX ? (uint32_t)(total - k) : CODEC_BLOCK_MAX;
		if (!(rc = get_block(cx, p, len, &pos, CODEC_I64, m, v + k)))
			rc = get_block(cx, p, len, &pos, CODEC_U64, m, c + k);
	}
	if (!rc && pos != len)
		rc = MALFORMED();
	/* undo the deltas */
	uint64_t k = 0;
	for (uint32_t i = 0; i < n && !rc; i++) {
		dstate *d = &b[i].d;
		d->v = v + k;
		d->c = c + k;
		for (uint32_t j = 1; j < d->n && !rc; j++) {
			if (d->v[j] <= 0 || d->v[j] > DIST_IDX_MAX ||
			    d->v[j - 1] > DIST_IDX_MAX - d->v[j])
				rc = MALFORMED();
			else
				d->v[j] += d->v[j - 1];
		}
		k += d->n;
	}
	if (!rc)
		rc = check_windows(b, n, exp);
	if (rc)
		for (uint32_t i = 0; i < n; i++)
			memset(&b[i].d, 0, sizeof b[i].d);
	return rc;
}

const agg_kind agg_dist = {
	.id = AGG_DIST_BITS,
	.name = "dist",
	.bucket_size = sizeof(dbucket),
	.init = dist_init,
	.add = dist_add,
	.merge = dist_merge_fn,
	.encode = dist_encode,
	.decode = dist_decode,
	.finalize = dist_finalize,
	.own = dist_own,
	.release = dist_release_fn,
	.basic_prefix = 1,
};

/* Only decode: readers are handed agg_dist for what they decoded. */
const agg_kind agg_dist_v2 = {
	.id = AGG_DIST_SK,
	.name = "dist-v2",
	.bucket_size = sizeof(dbucket),
	.decode = dist_v2_decode,
	.basic_prefix = 1,
	.decodes_as = &agg_dist,
};

const agg_kind agg_dist_v1 = {
	.id = AGG_DIST,
	.name = "dist-v1",
	.bucket_size = sizeof(dbucket),
	.decode = dist_v1_decode,
	.basic_prefix = 1,
	.decodes_as = &agg_dist,
};

void dist_release_buckets(dbucket *b, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		dstate_release(&b[i].d);
}

/* ---------------------------------------------------------------- flushes */

int dcol_from_rows(dcol *dc, const levels *L, const int64_t *ts, const double *v, size_t n)
{
	dc->w = NULL;
	dc->n = 0;
	dc->cnt = NULL;
	dc->cnt_cap = 0;
	dc->v = mem_alloc((n ? n : 1) * sizeof *dc->v);
	dc->c = mem_alloc((n ? n : 1) * sizeof *dc->c);
	dc->lv_v = mem_alloc((n ? n : 1) * sizeof *dc->lv_v);
	dc->lv_c = mem_alloc((n ? n : 1) * sizeof *dc->lv_c);
	/* at most one window per value */
	dc->w = mem_alloc((n ? n : 1) * sizeof *dc->w);
	if (!dc->v || !dc->c || !dc->lv_v || !dc->lv_c || !dc->w)
		return err_set(-ENOMEM, "out of memory");
	size_t k = 0; /* pairs kept so far */
	for (size_t i = 0; i < n;) {
		int64_t start = window_start(ts[i], L->w[0], L->offset), end = start + L->w[0];
		size_t j = i, m;
		for (; j < n && ts[j] < end; j++) {
			dc->v[k + j - i] = dist_index(v[j], dc->exp);
			dc->c[k + j - i] = 1;
		}
		if (combine(dc->v + k, dc->c + k, j - i, &m, &dc->cnt, &dc->cnt_cap))
			return -ENOMEM;
		dbucket *o = &dc->w[dc->n++];
		o->start = start;
		dist_init(&o->d);
		o->d.exp = dc->exp;
		o->d.max = dc->max;
		o->d.a.count = j - i;
		o->d.v = dc->v + k; /* borrowed from dc: cap 0 */
		o->d.c = dc->c + k;
		o->d.n = (uint32_t)m;
		if (dc->max && m > dc->max)
			dstate_to_sketch(&o->d);
		k += o->d.n;
		i = j;
	}
	return 0;
}

void dcol_clear(dcol *dc)
{
	mem_free(dc->w);
	mem_free(dc->v);
	mem_free(dc->c);
	mem_free(dc->lv_v);
	mem_free(dc->lv_c);
	mem_free(dc->cnt);
	dc->w = NULL;
	dc->n = 0;
	dc->v = dc->lv_v = NULL;
	dc->c = dc->lv_c = dc->cnt = NULL;
	dc->cnt_cap = 0;
}

int dcol_level(dcol *dc, const rlevel *lv, const levels *L, unsigned l, int64_t a, int64_t b,
	       dbucket **out, uint32_t *n, uint32_t *cap)
{
	*n = 0;
	uint32_t j = starts_lower(dc->w, sizeof *dc->w, dc->n, a);
	size_t at = 0; /* pairs of dc->lv_v / lv_c handed out so far */
	for (uint32_t i = rollup_lower(lv, a); i < lv->n && lv->b[i].start < b; i++) {
		if (!lv->b[i].a.count)
			continue;
		if (*n == *cap) {
			uint32_t nc = *cap ? *cap * 2 : 256;
			dbucket *no = mem_realloc(*out, (size_t)nc * sizeof *no);
			if (!no)
				goto nomem;
			*out = no;
			*cap = nc;
		}
		dbucket *o = &(*out)[(*n)++];
		o->start = lv->b[i].start;
		dist_init(&o->d);
		o->d.exp = dc->exp;
		o->d.max = dc->max;
		/* the finest windows of this one: their pairs gathered into one
		 * list and added up once (merging them two at a time cost a
		 * day's window 288 copies of a growing list); if one of them is
		 * a sketch, the others' values go in as its buckets. The list
		 * lies in dc's level scratch: a finest window is in one window of
		 * the level, so the level's lists fit where the finest ones do */
		int64_t end = o->start + L->w[l];
		uint32_t j0;
		int sk = 0;
		while (j < dc->n && dc->w[j].start < o->start)
			j++;
		uint64_t total = 0;
		for (j0 = j; j < dc->n && dc->w[j].start < end; j++) {
			total += dc->w[j].d.n;
			sk |= dc->w[j].d.sketch;
		}
		if (total > UINT32_MAX / 2)
			goto nomem;
		o->d.v = dc->lv_v + at; /* borrowed: cap 0 */
		o->d.c = dc->lv_c + at;
		size_t k = 0;
		for (uint32_t x = j0; x < j; x++) {
			const dstate *w = &dc->w[x].d;
			for (uint32_t y = 0; y < w->n; y++) {
				o->d.v[k + y] = key_at(w->v, (int)w->sketch, y, sk);
				o->d.c[k + y] = w->c[y];
			}
			k += w->n;
		}
		if (j - j0 > 1 || sk ? combine(o->d.v, o->d.c, k, &k, &dc->cnt, &dc->cnt_cap) : 0)
			goto nomem;
		o->d.n = (uint32_t)k;
		o->d.sketch = (uint32_t)sk;
		if (!sk && dc->max && k > dc->max)
			dstate_to_sketch(&o->d);
		at += o->d.n;
		/* the level's own bucket is the basic aggregate, bit for bit as
		 * the basic kind would store it */
		o->d.a = lv->b[i].a;
	}
	return 0;
nomem:
	*n = 0;
	return err_set(-ENOMEM, "out of memory");
}

/* ---------------------------------------------------------------- config */

struct dist_conf {
	uint32_t n;
	struct dist_mark {
		char *table, *field;
		uint32_t tl, fl;
		int32_t exp;
		uint32_t max;
	} m[];
};

void dist_conf_free(dist_conf *c)
{
	if (!c)
		return;
	for (uint32_t i = 0; i < c->n; i++)
		mem_free(c->m[i].table);
	mem_free(c);
}

/* "0.1" -> -1, "100" -> 2, "1e-3" -> -3; 1 on success. */
static int parse_resolution(const char *s, size_t len, int32_t *exp)
{
	char buf[32];
	if (!len || len >= sizeof buf)
		return 0;
	memcpy(buf, s, len);
	buf[len] = 0;
	char *end;
	double r = strtod(buf, &end);
	if (*end || !(r > 0))
		return 0;
	for (int32_t e = DIST_EXP_MIN; e <= DIST_EXP_MAX; e++) {
		double p = e < 0 ? 1 / p10[-e] : p10[e];
		if (fabs(r - p) <= p * 1e-12) {
			*exp = e;
			return 1;
		}
	}
	return 0;
}

/* "4096" -> 4096, from 1 to DIST_MAX_LIMIT; 1 on success. */
static int parse_max(const char *s, size_t len, uint32_t *max)
{
	uint64_t x = 0;
	if (!len || len > 9)
		return 0;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return 0;
		x = x * 10 + (uint64_t)(s[i] - '0');
	}
	if (!x || x > DIST_MAX_LIMIT)
		return 0;
	*max = (uint32_t)x;
	return 1;
}

int dist_conf_parse(const char *spec, dist_conf **out)
{
	*out = NULL;
	if (!spec || !*spec)
		return 0;
	uint32_t n = 1;
	for (const char *p = spec; *p; p++)
		n += *p == ',';
	dist_conf *c = mem_calloc(1, sizeof *c + n * sizeof c->m[0]);
	if (!c)
		return err_set(-ENOMEM, "out of memory");
	const char *p = spec;
	while (*p) {
		const char *e = strchr(p, ',');
		size_t len = e ? (size_t)(e - p) : strlen(p);
		const char *colon = memchr(p, ':', len);
		const char *dot = colon ? memchr(p, '.', (size_t)(colon - p)) : NULL;
		const char *colon2 =
			colon ? memchr(colon + 1, ':', len - (size_t)(colon + 1 - p)) : NULL;
		const char *rend = colon2 ? colon2 : p + len;
		int32_t exp;
		uint32_t max = DIST_MAX_DEFAULT;
		if (!dot || dot == p || dot + 1 == colon ||
		    !parse_resolution(colon + 1, (size_t)(rend - colon - 1), &exp) ||
		    (colon2 && !parse_max(colon2 + 1, (size_t)(p + len - colon2 - 1), &max))) {
			dist_conf_free(c);
			return err_set(TALLY_EINVAL,
				       "distributions: expected table.field:resolution[:max] (a "
				       "power of ten from 1e-9 to 1e9, then the distinct values a "
				       "window keeps exactly, 1 to %u, default %u; e.g. "
				       "traffic.speed:0.1), got '%.*s'",
				       DIST_MAX_LIMIT, DIST_MAX_DEFAULT, (int)len, p);
		}
		struct dist_mark *m = &c->m[c->n];
		m->tl = (uint32_t)(dot - p);
		m->fl = (uint32_t)(colon - dot - 1);
		if (!(m->table = mem_alloc((size_t)m->tl + m->fl + 2))) {
			dist_conf_free(c);
			return err_set(-ENOMEM, "out of memory");
		}
		memcpy(m->table, p, m->tl);
		m->table[m->tl] = 0;
		m->field = m->table + m->tl + 1;
		memcpy(m->field, dot + 1, m->fl);
		m->field[m->fl] = 0;
		m->exp = exp;
		m->max = max;
		c->n++;
		p += len + (e != NULL);
	}
	*out = c;
	return 0;
}

int dist_conf_find(const dist_conf *c, const char *table, uint32_t tl, const char *field,
		   uint32_t fl, int32_t *exp, uint32_t *max)
{
	for (uint32_t i = 0; c && i < c->n; i++) {
		const struct dist_mark *m = &c->m[i];
		if (m->tl == tl && m->fl == fl && !memcmp(m->table, table, tl) &&
		    !memcmp(m->field, field, fl)) {
			*exp = m->exp;
			*max = m->max;
			return 1;
		}
	}
	return 0;
}
