/*
 * test_distcode.c — kind 4 distribution blocks (engine/distcode.c)
 * against a brute-force model, and damaged ones refused.
 *
 * The one idea: every window's pairs are built by brute force from
 * random (value, count) draws — exact windows of a few values, dense
 * ones, one value, values at ±2^62 and steps across the whole range,
 * counts up to 2^63, sketch buckets past the bound — and a block of them
 * must decode to exactly those pairs; a block cut short anywhere, or
 * with a bit flipped, decodes to TALLY_ECORRUPT or to windows that still
 * keep every rule a merge relies on, never out of bounds (the ASan build
 * runs this too); streams written bit by bit that overflow a value, a
 * count or the pair total are refused by name.
 */
#include <criterion/criterion.h>

#include "dist.h"
#include "distcode.h"
#include "enc.h"
#include "testutil.h"

#define MAXW 40  /* windows in a block */
#define MAXP 300 /* pairs in a window */

typedef struct model {
	uint32_t n;
	dbucket b[MAXW];
	int64_t v[MAXW][MAXP];
	uint64_t c[MAXW][MAXP];
} model;

/* Adds count c of value x to window w's pairs, kept ascending by a walk
 * (the brute force: no merge, no search). */
static void model_add(model *m, uint32_t w, int64_t x, uint64_t c)
{
	dstate *d = &m->b[w].d;
	uint32_t i = 0;
	while (i < d->n && m->v[w][i] < x)
		i++;
	if (i < d->n && m->v[w][i] == x) {
		m->c[w][i] += c;
	} else {
		for (uint32_t j = d->n; j > i; j--) {
			m->v[w][j] = m->v[w][j - 1];
			m->c[w][j] = m->c[w][j - 1];
		}
		m->v[w][i] = x;
		m->c[w][i] = c;
		d->n++;
	}
	d->a.count += c;
}

/* One random value of the window's kind. */
static int64_t draw(tu_rng *r, int shape, int64_t lim)
{
	switch (shape) {
	case 0: return 500 + (int64_t)tu_below(r, 400); /* speeds at 0.1 */
	case 1: return 700 + (int64_t)tu_below(r, 12);  /* dense */
	case 2:                                         /* the range's ends and anywhere */
		switch (tu_below(r, 4)) {
		case 0: return lim - (int64_t)tu_below(r, 3);
		case 1: return -lim + (int64_t)tu_below(r, 3);
		default: return (int64_t)(tu_next(r) % (2 * (uint64_t)lim + 1)) - lim;
		}
	default: return (int64_t)tu_below(r, 2 * (uint64_t)lim + 1) - lim; /* sketch keys */
	}
}

/* A random block of up to MAXW windows into m (exp -1, bound max). */
static void model_block(tu_rng *r, model *m, uint32_t max)
{
	memset(m, 0, sizeof *m);
	m->n = (uint32_t)tu_below(r, MAXW + 1);
	int64_t kmax = dist_sketch_key(DIST_IDX_MAX);
	for (uint32_t w = 0; w < m->n; w++) {
		dbucket *b = &m->b[w];
		b->start = (int64_t)w * TALLY_5M;
		ragg_init(&b->d.a);
		b->d.exp = -1;
		b->d.max = max;
		int shape = (int)tu_below(r, 4);
		uint32_t draws = tu_below(r, 4) ? 1 + (uint32_t)tu_below(r, 12)
						: 1 + (uint32_t)tu_below(r, MAXP - 1);
		int big = !tu_below(r, 6); /* counts up to 2^63 */
		for (uint32_t i = 0; i < draws && b->d.n < MAXP - 1; i++) {
			uint64_t c = big ? 1 + tu_below(r, UINT64_C(1) << 63) / (MAXP * 2)
					 : 1 + (tu_below(r, 3) ? 0 : tu_below(r, 5));
			if (big && !i)
				c = UINT64_C(1) << (draws == 1 ? 63 : 62);
			model_add(m, w, draw(r, shape, shape == 3 ? kmax : DIST_IDX_MAX), c);
		}
		/* a sketch only past the bound (max 0: none); its buckets lie
		 * within the exact values' range, so either way is good */
		b->d.sketch = shape == 3 && max && b->d.a.count > max;
		b->d.v = m->v[w];
		b->d.c = m->c[w];
		b->d.a.min = dist_value(m->v[w][0], -1);
		b->d.a.max = dist_value(m->v[w][b->d.n - 1], -1);
	}
}

static void same_as_model(const model *m, const dbucket *got)
{
	for (uint32_t w = 0; w < m->n; w++) {
		const dstate *x = &m->b[w].d, *y = &got[w].d;
		cr_assert_eq(got[w].start, m->b[w].start);
		cr_assert_eq(y->a.count, x->a.count, "window %u", w);
		cr_assert_eq(y->n, x->n, "window %u: %u pairs, model %u", w, y->n, x->n);
		cr_assert_eq(y->sketch, x->sketch, "window %u", w);
		cr_assert_eq(y->exp, -1);
		cr_assert_eq(y->max, x->max);
		cr_assert_eq(y->cap, 0, "decoded states borrow");
		for (uint32_t i = 0; i < x->n; i++) {
			cr_assert_eq(y->v[i], x->v[i], "window %u pair %u", w, i);
			cr_assert_eq(y->c[i], x->c[i], "window %u pair %u", w, i);
		}
	}
}

/* What a decoded block must keep whatever bytes it came from. */
static void keeps_the_rules(const dbucket *b, uint32_t n)
{
	int64_t kmax = dist_sketch_key(DIST_IDX_MAX);
	for (uint32_t w = 0; w < n; w++) {
		const dstate *d = &b[w].d;
		if (d->exp == DIST_MIXED) {
			cr_assert_eq(d->n, 0);
			continue;
		}
		int64_t lim = d->sketch ? kmax : DIST_IDX_MAX;
		uint64_t sum = 0;
		cr_assert_geq(d->n, 1);
		cr_assert(!d->sketch || (d->max && d->a.count > d->max));
		for (uint32_t i = 0; i < d->n; i++) {
			cr_assert(d->v[i] >= -lim && d->v[i] <= lim);
			cr_assert(!i || d->v[i] > d->v[i - 1]);
			cr_assert(d->c[i] > 0 && d->c[i] <= d->a.count - sum);
			sum += d->c[i];
		}
		cr_assert_eq(sum, d->a.count);
	}
}

static codec_ctx *cx;
static codec_buf out, arena;
static dbucket back[MAXW];

static int decode(const uint8_t *p, size_t len, uint32_t n)
{
	memset(back, 0, sizeof back);
	return agg_dist.decode(cx, p, len, n, back, &arena);
}

static void setup(void)
{
	cx = codec_ctx_new();
}

static void teardown(void)
{
	codec_ctx_free(cx);
	codec_buf_free(&out);
	codec_buf_free(&arena);
	memset(&out, 0, sizeof out);
	memset(&arena, 0, sizeof arena);
}

TestSuite(distcode, .init = setup, .fini = teardown);

Test(distcode, blocks_round_trip_equal_to_brute_force)
{
	tu_rng r = {tu_seed("distcode")};
	static model m;
	static const uint32_t bounds[] = {0, 1, 16, 4096};
	for (int t = 0; t < 400; t++) {
		uint32_t max = bounds[t % 4];
		model_block(&r, &m, max);
		out.len = 0;
		cr_assert_eq(agg_dist.encode(cx, m.b, m.n, &out), 0, "%s", tally_errmsg());
		if (!m.n)
			continue; /* no block is written for no windows */
		cr_assert_eq(decode(out.p, out.len, m.n), 0, "block %d: %s", t, tally_errmsg());
		same_as_model(&m, back);
		keeps_the_rules(back, m.n);
	}
}

Test(distcode, one_value_no_windows_and_mixed_resolutions)
{
	/* one window of one value: 1 bit of pairs (none: count 1), the
	 * first's code, no count */
	static model m;
	memset(&m, 0, sizeof m);
	m.n = 1;
	m.b[0].d.exp = -1;
	m.b[0].d.max = DIST_MAX_DEFAULT;
	model_add(&m, 0, 573, 1);
	m.b[0].d.v = m.v[0];
	m.b[0].d.c = m.c[0];
	cr_assert_eq(agg_dist.encode(cx, m.b, 1, &out), 0, "%s", tally_errmsg());
	cr_assert_eq(decode(out.p, out.len, 1), 0, "%s", tally_errmsg());
	same_as_model(&m, back);
	/* no windows: the stream is the pair total, 0, alone */
	codec_buf s = {0};
	cr_assert_eq(distcode_encode(m.b, 0, 0, &s), 0);
	cr_assert_eq(s.len, 1);
	cr_assert_eq(s.p[0], 0);
	cr_assert_eq(distcode_decode(s.p, s.len, back, 0, 0, &arena), 0);
	codec_buf_free(&s);
	/* two resolutions: no distribution, no stream past the total */
	model_add(&m, 0, 574, 1);
	m.b[1] = m.b[0];
	m.b[1].d.exp = -2;
	m.n = 2;
	out.len = 0;
	cr_assert_eq(agg_dist.encode(cx, m.b, 2, &out), 0, "%s", tally_errmsg());
	cr_assert_eq(out.p[out.len - 1], 0);
	cr_assert_eq(decode(out.p, out.len, 2), 0, "%s", tally_errmsg());
	for (int w = 0; w < 2; w++) {
		cr_assert_eq(back[w].d.exp, DIST_MIXED);
		cr_assert_eq(back[w].d.n, 0);
		cr_assert_eq(back[w].d.a.count, 2);
	}
}

/* Windows the format cannot hold are refused by the writer, by name. */
Test(distcode, windows_it_cannot_hold_are_refused_when_written)
{
	int64_t v[2] = {1, 2};
	uint64_t c[2] = {1, 1};
	dbucket b = {.start = 42};
	b.d.exp = -1;
	b.d.n = 2;
	b.d.v = v;
	b.d.c = c;
	b.d.a.count = 3; /* counts add up to 2 */
	cr_assert_eq(distcode_encode(&b, 1, 0, &out), TALLY_EINVAL);
	cr_assert(strstr(tally_errmsg(), "window at 42"), "%s", tally_errmsg());
	b.d.a.count = 2;
	b.d.sketch = 1; /* not past its bound */
	cr_assert_eq(distcode_encode(&b, 1, 2, &out), TALLY_EINVAL);
	cr_assert(strstr(tally_errmsg(), "sketch"), "%s", tally_errmsg());
	b.d.sketch = 0;
	v[0] = 3; /* values that do not ascend */
	cr_assert_eq(distcode_encode(&b, 1, 0, &out), TALLY_EINVAL);
	v[0] = 1;
	c[0] = 0; /* a count of 0 */
	c[1] = 2;
	cr_assert_eq(distcode_encode(&b, 1, 0, &out), TALLY_EINVAL);
	cr_assert_eq(out.len, 0, "nothing written");
	c[0] = 1;
	c[1] = 1;
	cr_assert_eq(distcode_encode(&b, 1, 0, &out), 0, "%s", tally_errmsg());
}

Test(distcode, cut_short_or_flipped_blocks_are_refused_or_keep_the_rules)
{
	tu_rng r = {tu_seed("distcode-damage")};
	static model m;
	for (int t = 0; t < 40; t++) {
		do
			model_block(&r, &m, t % 2 ? 16 : 0);
		while (!m.n);
		out.len = 0;
		cr_assert_eq(agg_dist.encode(cx, m.b, m.n, &out), 0, "%s", tally_errmsg());
		uint8_t *p = malloc(out.len);
		for (size_t len = 0; len < out.len; len++) {
			memcpy(p, out.p, len); /* a copy of its own: ASan sees past it */
			cr_assert_eq(decode(p, len, m.n), TALLY_ECORRUPT, "cut at %zu of %zu", len,
				     out.len);
		}
		for (int f = 0; f < 200; f++) {
			memcpy(p, out.p, out.len);
			size_t at = tu_below(&r, out.len);
			p[at] ^= (uint8_t)(1u << tu_below(&r, 8));
			int rc = decode(p, out.len, m.n);
			cr_assert(rc == 0 || rc == TALLY_ECORRUPT, "flip at %zu: %d", at, rc);
			if (!rc)
				keeps_the_rules(back, m.n);
			else
				for (uint32_t w = 0; w < m.n; w++)
					cr_assert(!back[w].d.v && !back[w].d.n, "nothing borrowed");
		}
		free(p);
	}
}

/* A stream written bit by bit (codes as distcode.c writes them with a
 * running mean of 0: parameter 0). */
typedef struct craft {
	uint8_t buf[256];
	enc_bw w;
} craft;

static void rice0(craft *c, uint64_t x)
{
	if (x < 24) {
		enc_bw_put(&c->w, UINT64_C(1) << x, (unsigned)x + 1);
	} else {
		enc_bw_put(&c->w, UINT64_C(1) << 24, 25);
		enc_bw_varbits(&c->w, x);
	}
}

/* The stream after the pair total; its windows' counts in cnt. */
static int craft_decode(uint64_t total, craft *c, const uint64_t *cnt, uint32_t n, uint32_t max)
{
	uint8_t s[300];
	size_t at = enc_varint_put(s, total);
	size_t len = (size_t)(enc_bw_end(&c->w) - c->buf);
	memcpy(s + at, c->buf, len);
	memset(back, 0, sizeof back);
	for (uint32_t i = 0; i < n; i++)
		back[i].d.a.count = cnt[i];
	return distcode_decode(s, at + len, back, n, max, &arena);
}

static craft *craft_new(void)
{
	static craft c;
	memset(&c, 0, sizeof c);
	enc_bw_init(&c.w, c.buf);
	return &c;
}

Test(distcode, overflows_are_refused)
{
	uint64_t two[1] = {2}, big[1] = {UINT64_MAX};
	craft *c = craft_new();
	/* the good stream: pairs 2 (1 bit), first 852, step 52 */
	enc_bw_put(&c->w, 1, 1);
	rice0(c, enc_zigzag(852));
	rice0(c, 52);
	cr_assert_eq(craft_decode(2, c, two, 1, 0), 0, "%s", tally_errmsg());
	cr_assert_eq(back[0].d.v[1], 905);
	/* a first value past 2^62 */
	c = craft_new();
	enc_bw_put(&c->w, 0, 1);
	rice0(c, enc_zigzag(DIST_IDX_MAX + 1));
	cr_assert_eq(craft_decode(1, c, two, 1, 0), TALLY_ECORRUPT);
	cr_assert(strstr(tally_errmsg(), "distribution"), "%s", tally_errmsg());
	/* a step past 2^62 (and one that wraps 2^64) */
	for (int wrap = 0; wrap < 2; wrap++) {
		c = craft_new();
		enc_bw_put(&c->w, 1, 1);
		rice0(c, enc_zigzag(DIST_IDX_MAX - 5));
		rice0(c, wrap ? UINT64_MAX - 3 : 5);
		cr_assert_eq(craft_decode(2, c, two, 1, 0), TALLY_ECORRUPT, "wrap %d", wrap);
	}
	/* more pairs than values, than the total says, than 2^31 */
	c = craft_new();
	enc_bw_put(&c->w, UINT64_MAX - 1, 64); /* 2^64 - 1 pairs of 2^64 - 1 values */
	cr_assert_eq(craft_decode(2, c, big, 1, 0), TALLY_ECORRUPT);
	c = craft_new();
	enc_bw_put(&c->w, 1, 1);
	rice0(c, 2);
	rice0(c, 0);
	cr_assert_eq(craft_decode(1, c, two, 1, 0), TALLY_ECORRUPT);
	/* a count past what the window's count leaves: 3 values, 2 pairs,
	 * the first count 3 */
	uint64_t three[1] = {3};
	c = craft_new();
	enc_bw_put(&c->w, 1, 2);
	rice0(c, 2);
	rice0(c, 2); /* count - 1 = 2 > rest 1 */
	rice0(c, 0);
	cr_assert_eq(craft_decode(2, c, three, 1, 0), TALLY_ECORRUPT);
	/* an escape's width past 64 */
	c = craft_new();
	enc_bw_put(&c->w, 0, 1);
	enc_bw_put(&c->w, UINT64_C(1) << 24, 25);
	enc_bw_put(&c->w, 65, 7);
	cr_assert_eq(craft_decode(1, c, two, 1, 0), TALLY_ECORRUPT);
	/* a pair total the bytes cannot hold: refused before any memory */
	c = craft_new();
	enc_bw_put(&c->w, 1, 1);
	cr_assert_eq(craft_decode(UINT64_C(1) << 40, c, two, 1, 0), TALLY_ECORRUPT);
	/* one bits in the padding */
	c = craft_new();
	enc_bw_put(&c->w, 1, 1);
	rice0(c, enc_zigzag(852));
	rice0(c, 52);
	enc_bw_put(&c->w, 1, 1);
	cr_assert_eq(craft_decode(2, c, two, 1, 0), TALLY_ECORRUPT);
	/* a window of no values */
	uint64_t zero[1] = {0};
	c = craft_new();
	cr_assert_eq(craft_decode(0, c, zero, 1, 0), TALLY_ECORRUPT);
}

/* Kind 3 (dist-v2) blocks still read: the bytes docs/formats.md gives for
 * them decode to the documented window. */
Test(distcode, kind_3_documented_bytes_still_read)
{
	static const uint8_t v3[] = {
		0xff, 0xff, 0xff, 0xff, 0x00, 0x10, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00, 0x02, 0x03,
		0x00, 0x01, 0x0d, 0x01, 0x08, 0x08, 0x00, 0x00, 0x00, 0x02, 0x02, 0x00, 0x01, 0x0d,
		0x01, 0xa8, 0x0d, 0x07, 0x00, 0x00, 0x00, 0x02, 0x03, 0x00, 0x01, 0x0c, 0x01, 0x68,
		0x09, 0x00, 0x00, 0x00, 0x02, 0x03, 0x00, 0x02, 0x0c, 0x01, 0x00, 0x00, 0x00};
	rbucket rb = {.start = INT64_C(1748822400000000000)};
	ragg_init(&rb.a);
	ragg_add(&rb.a, 85.2);
	ragg_add(&rb.a, 90.5);
	cr_assert_eq(agg_basic.encode(cx, &rb, 1, &out), 0);
	cr_assert_eq(codec_buf_reserve(&out, sizeof v3), 0);
	memcpy(out.p + out.len, v3, sizeof v3);
	out.len += sizeof v3;
	const agg_kind *k = agg_kind_of(AGG_DIST_SK);
	cr_assert(k && k->decodes_as == &agg_dist && !k->encode);
	memset(back, 0, sizeof back);
	cr_assert_eq(k->decode(cx, out.p, out.len, 1, back, &arena), 0, "%s", tally_errmsg());
	cr_assert_eq(back[0].d.n, 2);
	cr_assert_eq(back[0].d.v[0], 852);
	cr_assert_eq(back[0].d.v[1], 905);
	cr_assert_eq(back[0].d.c[0] + back[0].d.c[1], 2);
	cr_assert_eq(back[0].d.max, DIST_MAX_DEFAULT);
	/* kind 4 writes it again, as a merge does */
	codec_buf again = {0};
	cr_assert_eq(agg_dist.encode(cx, back, 1, &again), 0, "%s", tally_errmsg());
	cr_assert_eq(agg_kind_of(AGG_DIST_BITS), &agg_dist);
	codec_buf_free(&again);
}
