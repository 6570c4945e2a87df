/*
 * test_codec.c — column encodings: every kind through every encoding that
 * takes it, on edge cases and random data, compared bit for bit; the
 * choices the encoder makes on typical data (decimals for speeds, deltas
 * with a common divisor for ms timestamps, runs for keys); the exact bytes
 * of a block (the worked example of docs/formats.md); and damage:
 * truncation at every byte, flipped bytes, wrong kinds and row counts,
 * allocation failures. ASan+UBSan runs make "never reads out of bounds"
 * part of every test.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec.h"
#include "err.h"
#include "mem.h"
#include "testutil.h"

/* ---------------------------------------------------------------- columns */

typedef struct col {
	enum codec_kind kind;
	uint32_t n;
	void *v;           /* n slots of the kind's type */
	uint64_t *present; /* NULL: every row */
	char *bytes;       /* strings' storage */
} col;

static size_t esize(enum codec_kind k)
{
	return k == CODEC_BOOL ? 1 : (k == CODEC_STR || k == CODEC_KEY) ? sizeof(codec_str) : 8;
}

static int is_str(enum codec_kind k)
{
	return k == CODEC_STR || k == CODEC_KEY;
}

static col col_new(enum codec_kind kind, uint32_t n)
{
	col c = {.kind = kind, .n = n};
	c.v = calloc((size_t)n + 1, esize(kind));
	cr_assert_not_null(c.v);
	return c;
}

static void col_free(col *c)
{
	free(c->v);
	free(c->present);
	free(c->bytes);
	memset(c, 0, sizeof *c);
}

static int64_t *I(col *c)
{
	return c->v;
}
static double *F(col *c)
{
	return c->v;
}
static uint8_t *B(col *c)
{
	return c->v;
}
static codec_str *S(col *c)
{
	return c->v;
}

static int has(const uint64_t *pr, uint32_t i)
{
	return !pr || (pr[i >> 6] >> (i & 63) & 1);
}

static void set_presence(col *c, tu_rng *r, unsigned permille)
{
	free(c->present);
	c->present = calloc(((size_t)c->n + 63) / 64 + 1, 8);
	cr_assert_not_null(c->present);
	for (uint32_t i = 0; i < c->n; i++)
		if (tu_below(r, 1000) < permille)
			c->present[i >> 6] |= (uint64_t)1 << (i & 63);
}

/* Strings from a generator: string i is gen(i) of at most 40 bytes. */
static col str_col(enum codec_kind kind, uint32_t n,
		   void (*gen)(uint32_t, tu_rng *, char *, uint32_t *), tu_rng *r)
{
	col c = col_new(kind, n);
	c.bytes = malloc((size_t)n * 40 + 1);
	cr_assert_not_null(c.bytes);
	for (uint32_t i = 0; i < n; i++) {
		uint32_t l;
		gen(i, r, c.bytes + (size_t)i * 40, &l);
		S(&c)[i] = (codec_str){c.bytes + (size_t)i * 40, l};
	}
	return c;
}

/* ---------------------------------------------------------------- round trip */

static codec_ctx *cx;

static void setup(void)
{
	cx = codec_ctx_new();
	cr_assert_not_null(cx);
}

static void teardown(void)
{
	codec_ctx_free(cx);
}

TestSuite(codec, .init = setup, .fini = teardown);

static int same_value(enum codec_kind k, const void *a, const void *b)
{
	if (is_str(k)) {
		const codec_str *x = a, *y = b;
		return x->n == y->n && (x->n == 0 || memcmp(x->p, y->p, x->n) == 0);
	}
	if (k == CODEC_BOOL)
		return (*(const uint8_t *)a != 0) == *(const uint8_t *)b;
	return memcmp(a, b, 8) == 0; /* bits: -0.0 and NaN payloads included */
}

/*
 * Encodes c with opt (may be NULL), checks the block's header, decodes it
 * and compares every value and the presence bit for bit. Returns the
 * block's size; *st (may be NULL) gets the stats.
 */
/* codec_decode_head against the whole decode (back): for a few wants,
 * and for timestamps a few stops, the rows it reports exact are, and it
 * reports at least what was asked. */
static void check_head(const col *c, const uint8_t *blk, size_t len, const uint8_t *back,
		       enum codec_enc enc)
{
	if (is_str(c->kind) || c->n == 0)
		return;
	size_t es = esize(c->kind);
	uint8_t *head = malloc((size_t)c->n * es + 8);
	uint64_t *pr = malloc(((size_t)c->n + 63) / 64 * 8 + 8);
	cr_assert(head && pr);
	const int64_t *ts = c->v;
	int ascending = c->kind == CODEC_TS;
	for (uint32_t i = 1; ascending && i < c->n; i++)
		ascending = ts[i] >= ts[i - 1];
	uint32_t wants[] = {0, 1, c->n / 3, c->n - 1, c->n, c->n + 5};
	for (unsigned w = 0; w < 2 * sizeof wants / sizeof *wants; w++) {
		uint32_t want = wants[w / 2];
		/* odd rounds: stop at the time of row want (timestamps only) */
		int64_t stop = INT64_MIN;
		if ((w & 1) && c->kind == CODEC_TS)
			stop = ts[want < c->n ? want : c->n - 1];
		else if (w & 1)
			continue;
		uint32_t got = 0;
		int rc = codec_decode_head(cx, blk, len, c->kind, c->n, (w & 1) ? 0 : want, stop,
					   head, pr, &got);
		cr_assert_eq(rc, 0, "head %s/%s: %s", codec_kind_name(c->kind), codec_name(enc),
			     err_msg());
		cr_assert_leq(got, c->n);
		if (!(w & 1))
			cr_assert_geq(got, want < c->n ? want : c->n, "%s/%s: want %u, got %u",
				      codec_kind_name(c->kind), codec_name(enc), want, got);
		else if (ascending)
			for (uint32_t i = got; i < c->n; i++)
				cr_assert_geq(ts[i], stop, "row %u below the stop left out", i);
		if (got < c->n && (w & 1))
			cr_assert_geq(((const int64_t *)(const void *)head)[got - 1], stop);
		for (uint32_t i = 0; i < got; i++)
			if (has(c->present, i))
				cr_assert(same_value(c->kind, back + (size_t)i * es,
						     head + (size_t)i * es),
					  "%s/%s: head row %u of %u differs",
					  codec_kind_name(c->kind), codec_name(enc), i, got);
	}
	free(head);
	free(pr);
}

static size_t roundtrip(const col *c, const codec_opts *opt, codec_stats *st_out)
{
	codec_buf out = {0};
	/* a prefix: encode appends */
	cr_assert_eq(codec_buf_reserve(&out, 3), 0);
	memcpy(out.p, "abc", 3);
	out.len = 3;
	codec_stats st;
	int rc = codec_encode(cx, c->kind, c->v, c->present, c->n, opt, &out, &st);
	cr_assert_eq(rc, 0, "encode %s: %s", codec_kind_name(c->kind), err_msg());
	cr_assert_eq(memcmp(out.p, "abc", 3), 0);
	const uint8_t *blk = out.p + 3;
	size_t len = out.len - 3;
	cr_assert_eq(st.block_bytes, len);
	cr_assert_eq(st.n, c->n);
	if (opt && opt->force)
		cr_assert_eq(st.enc, opt->force);

	codec_block_info info;
	cr_assert_eq(codec_block_info_get(blk, len, &info), 0, "%s", err_msg());
	cr_assert_eq(info.enc, st.enc);
	cr_assert_eq(info.kind, c->kind);
	cr_assert_eq(info.n, c->n);
	cr_assert_eq(info.n_present, st.n_present);
	cr_assert_eq(info.zstd, st.zstd);

	size_t es = esize(c->kind);
	uint8_t *back = malloc(((size_t)c->n + 1) * es);
	uint64_t *pr = malloc((((size_t)c->n + 63) / 64 + 1) * 8);
	cr_assert(back && pr);
	memset(back, 0xa5, ((size_t)c->n + 1) * es); /* absent slots must be cleared */
	codec_buf arena = {0};
	/* every other call without a context: both paths must agree */
	static unsigned flip;
	rc = codec_decode(flip++ & 1 ? NULL : cx, blk, len, c->kind, c->n, back, pr, &arena);
	cr_assert_eq(rc, 0, "decode %s/%s: %s", codec_kind_name(c->kind), codec_name(st.enc),
		     err_msg());
	uint32_t np = 0;
	for (uint32_t i = 0; i < c->n; i++) {
		int p = has(c->present, i);
		np += (uint32_t)p;
		cr_assert_eq(has(pr, i), p, "row %u presence", i);
		const uint8_t *got = back + (size_t)i * es;
		if (p) {
			cr_assert(same_value(c->kind, (const uint8_t *)c->v + (size_t)i * es, got),
				  "%s/%s: row %u differs", codec_kind_name(c->kind),
				  codec_name(st.enc), i);
		} else if (is_str(c->kind)) {
			const codec_str *s = (const codec_str *)(const void *)got;
			cr_assert(s->n == 0 && s->p, "absent row %u not empty", i);
		} else {
			for (size_t j = 0; j < es; j++)
				cr_assert_eq(got[j], 0, "absent row %u not zero", i);
		}
	}
	cr_assert_eq(np, st.n_present);
	check_head(c, blk, len, back, st.enc);
	free(back);
	free(pr);
	codec_buf_free(&arena);
	codec_buf_free(&out);
	if (st_out)
		*st_out = st;
	return len;
}

/* Every applicable encoding forced, every order for the integer ones,
 * zstd off, default and always; plus the encoder's own choice. */
static void roundtrip_all(const col *c)
{
	static const enum codec_enc encs[] = {
		CODEC_AUTO,       CODEC_ENC_RAW,   CODEC_ENC_INT,  CODEC_ENC_DEC, CODEC_ENC_XOR,
		CODEC_ENC_BITMAP, CODEC_ENC_PLAIN, CODEC_ENC_DICT, CODEC_ENC_RLE, CODEC_ENC_BIN};
	_Static_assert(sizeof encs / sizeof encs[0] == CODEC_ENC_MAX + 1, "every encoding");
	static const struct {
		enum codec_kind kind;
		unsigned mask;
	} takes[] = {
		{CODEC_TS, 1u << CODEC_ENC_RAW | 1u << CODEC_ENC_INT},
		{CODEC_I64, 1u << CODEC_ENC_RAW | 1u << CODEC_ENC_INT},
		{CODEC_U64, 1u << CODEC_ENC_RAW | 1u << CODEC_ENC_INT},
		{CODEC_F64, 1u << CODEC_ENC_RAW | 1u << CODEC_ENC_DEC | 1u << CODEC_ENC_XOR |
				    1u << CODEC_ENC_BIN},
		{CODEC_BOOL, 1u << CODEC_ENC_RAW | 1u << CODEC_ENC_BITMAP},
		{CODEC_STR, 1u << CODEC_ENC_RAW | 1u << CODEC_ENC_PLAIN | 1u << CODEC_ENC_DICT |
				    1u << CODEC_ENC_RLE},
		{CODEC_KEY, 1u << CODEC_ENC_RAW | 1u << CODEC_ENC_PLAIN | 1u << CODEC_ENC_DICT |
				    1u << CODEC_ENC_RLE},
	};
	unsigned mask = 0;
	for (size_t i = 0; i < sizeof takes / sizeof takes[0]; i++)
		if (takes[i].kind == c->kind)
			mask = takes[i].mask;
	for (size_t e = 0; e < sizeof encs / sizeof encs[0]; e++) {
		enum codec_enc enc = encs[e];
		codec_opts o = {.force = enc};
		if (enc != CODEC_AUTO && !(mask & 1u << enc)) {
			codec_buf out = {0};
			int rc = codec_encode(cx, c->kind, c->v, c->present, c->n, &o, &out, NULL);
			cr_assert_eq(rc, TALLY_EINVAL, "%s took %s", codec_name(enc),
				     codec_kind_name(c->kind));
			cr_assert_eq(out.len, 0);
			codec_buf_free(&out);
			continue;
		}
		int orders = enc == CODEC_ENC_INT || enc == CODEC_ENC_DEC || enc == CODEC_ENC_BIN
				     ? 4
				     : 1;
		for (int ord = 0; ord < orders; ord++) {
			o.order = (enum codec_order)ord;
			o.zstd_level = 0;
			o.zstd_always = 0;
			roundtrip(c, &o, NULL);
			o.zstd_level = -1;
			roundtrip(c, &o, NULL);
			o.zstd_level = 1;
			o.zstd_always = 1;
			codec_stats st;
			roundtrip(c, &o, &st);
			cr_assert_eq(st.zstd, 1);
		}
	}
}

/* The column as is, then with sparse, dense and no presence. */
static void roundtrip_presence(col *c, tu_rng *r)
{
	roundtrip_all(c);
	static const unsigned permille[] = {0, 10, 500, 990};
	for (size_t i = 0; i < sizeof permille / sizeof permille[0]; i++) {
		set_presence(c, r, permille[i]);
		roundtrip_all(c);
	}
	free(c->present);
	c->present = NULL;
}

/* ---------------------------------------------------------------- data */

static const uint32_t sizes[] = {0, 1, 2, 3, 7, 127, 128, 129, 300, 1000, 4097};

static void fill_ints(col *c, int pattern, tu_rng *r)
{
	int64_t *v = I(c);
	for (uint32_t i = 0; i < c->n; i++) {
		switch (pattern) {
		case 0: v[i] = 42; break;                            /* all equal */
		case 1: v[i] = (int64_t)tu_next(r); break;           /* all distinct */
		case 2: v[i] = i & 1 ? INT64_MAX : INT64_MIN; break; /* alternating */
		case 3: v[i] = (int64_t)tu_below(r, 5) - 2; break;   /* small */
		case 4:
			v[i] = i ? v[i - 1] + (int64_t)tu_below(r, 1000) - 500 : 0;
			break; /* walk */
		case 5: {      /* extremes */
			static const int64_t x[] = {INT64_MIN,     INT64_MAX,    0, -1, 1,
						    INT64_MIN + 1, INT64_MAX - 1};
			v[i] = x[tu_below(r, 7)];
			break;
		}
		case 6: v[i] = (int64_t)(UINT64_MAX - tu_below(r, 3)); break; /* u64 max */
		case 7: v[i] = (int64_t)1700000000 * 1000000000 + (int64_t)i * 1000000000; break;
		case 8: /* ms precision */
			v[i] = i ? v[i - 1] + (int64_t)tu_below(r, 10000) * 1000000
				 : INT64_C(1700000000123000000);
			break;
		case 9:
			v[i] = (int64_t)tu_below(r, 1u << 20) * 1000000 + 1700000000000000000;
			break;                               /* unsorted */
		case 10: v[i] = (int64_t)(i * i) * 7; break; /* steady acceleration */
		default:
			v[i] = (int64_t)(tu_next(r) >> tu_below(r, 64)) * (tu_below(r, 2) ? 1 : -1);
			break;
		}
	}
}

Test(codec, ints_every_size_pattern_kind_encoding)
{
	tu_rng r = {tu_seed("ints")};
	static const enum codec_kind kinds[] = {CODEC_TS, CODEC_I64, CODEC_U64};
	for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
		for (int pat = 0; pat <= 11; pat++)
			for (size_t k = 0; k < 3; k++) {
				if (sizes[s] > 300 && k > 0)
					continue; /* the big sizes once is enough */
				col c = col_new(kinds[k], sizes[s]);
				fill_ints(&c, pat, &r);
				if (sizes[s] <= 300 || pat < 3)
					roundtrip_presence(&c, &r);
				else
					roundtrip_all(&c);
				col_free(&c);
			}
}

/*
 * The residual part_writer_rollup stores beside a bucket's rounded sum:
 * n one-decimal speeds summed with TwoSum as engine/rollup.h does, then
 * exact - rounded. A few units of the addends' last bit, 2^-47..2^-40 for
 * speeds of 30.0..129.9: a binary fraction, never a decimal.
 */
static double sum_residual(tu_rng *r, uint32_t n)
{
	double sum = 0, comp = 0;
	for (uint32_t i = 0; i < n; i++) {
		double v = (double)(300 + tu_below(r, 1000)) / 10.0;
		double t = sum + v, bp = t - sum;
		comp += (sum - (t - bp)) + (v - bp);
		sum = t;
	}
	double s = sum + comp;
	return (sum - s) + comp;
}

static double pick_double(tu_rng *r, int pattern, uint32_t i)
{
	static const double odd[] = {-0.0,
				     0.0,
				     5e-324,
				     -5e-324,
				     2.2250738585072009e-308,
				     1e308,
				     -1e308,
				     1.7976931348623157e308,
				     INFINITY,
				     -INFINITY,
				     0.1,
				     85.2,
				     123.456,
				     1e-10,
				     9007199254740993.0,
				     1e15,
				     1e16,
				     0.30000000000000004,
				     3.14159265358979};
	switch (pattern) {
	case 0: return 85.2;
	case 1: return (double)(600 + tu_below(r, 500)) / 10.0; /* speeds */
	case 2: {                                               /* mixed scales */
		static const double p[] = {1, 10, 100, 1000};
		return (double)((int64_t)tu_below(r, 200000) - 100000) / p[tu_below(r, 4)];
	}
	case 3: return odd[tu_below(r, sizeof odd / sizeof odd[0])];
	case 4: { /* any bits, NaNs included */
		uint64_t b = tu_next(r);
		double d;
		memcpy(&d, &b, 8);
		return d;
	}
	case 5: return i & 1 ? 0.1 : -0.0;
	case 6: return sin(i * 0.01) * 1000; /* smooth, not decimal */
	case 7: return (double)((int64_t)tu_below(r, 1000000)) / 1e6 + 1e9; /* near 2^53 digits */
	case 9: /* binary fractions: 20-bit integers times 2^-30..2^-27 */
		return ldexp((double)((int64_t)tu_below(r, 1u << 20) - (1 << 19)),
			     -30 + (int)tu_below(r, 4));
	case 10: return sum_residual(r, 1 + (uint32_t)tu_below(r, 40));
	default: {
		uint64_t nan = 0x7ff8000000000000ULL | tu_below(r, 1000);
		double d;
		memcpy(&d, &nan, 8);
		return tu_below(r, 4) ? (double)tu_below(r, 100) / 4 : d;
	}
	}
}

Test(codec, floats_every_size_pattern_encoding)
{
	tu_rng r = {tu_seed("floats")};
	for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
		for (int pat = 0; pat <= 10; pat++) {
			col c = col_new(CODEC_F64, sizes[s]);
			for (uint32_t i = 0; i < c.n; i++)
				F(&c)[i] = pick_double(&r, pat, i);
			if (sizes[s] <= 300)
				roundtrip_presence(&c, &r);
			else
				roundtrip_all(&c);
			col_free(&c);
		}
}

Test(codec, bools)
{
	tu_rng r = {tu_seed("bools")};
	for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
		for (int pat = 0; pat < 4; pat++) {
			col c = col_new(CODEC_BOOL, sizes[s]);
			uint8_t *b = B(&c);
			for (uint32_t i = 0; i < c.n; i++) {
				if (pat < 2)
					b[i] = (uint8_t)pat; /* all false, all true */
				else if (pat == 2)
					b[i] = (uint8_t)(i & 1);
				else
					b[i] = (uint8_t)tu_below(&r, 2);
			}
			roundtrip_presence(&c, &r);
			col_free(&c);
		}
	/* any nonzero byte is true */
	col c = col_new(CODEC_BOOL, 3);
	B(&c)[0] = 0;
	B(&c)[1] = 7;
	B(&c)[2] = 255;
	roundtrip_all(&c);
	col_free(&c);
}

static void gen_few(uint32_t i, tu_rng *r, char *p, uint32_t *l)
{
	(void)i;
	*l = (uint32_t)snprintf(p, 40, "lane-%u", (unsigned)tu_below(r, 4));
}
static void gen_runs(uint32_t i, tu_rng *r, char *p, uint32_t *l)
{
	(void)r;
	*l = (uint32_t)snprintf(p, 40, "KV%05u", i / 100);
}
static void gen_distinct(uint32_t i, tu_rng *r, char *p, uint32_t *l)
{
	*l = (uint32_t)snprintf(p, 40, "%u-%llx", i, (unsigned long long)tu_next(r));
}
static void gen_binary(uint32_t i, tu_rng *r, char *p, uint32_t *l)
{
	(void)i;
	*l = (uint32_t)tu_below(r, 40);
	for (uint32_t j = 0; j < *l; j++)
		p[j] = (char)tu_below(r, 3); /* NULs included */
}
static void gen_empty(uint32_t i, tu_rng *r, char *p, uint32_t *l)
{
	(void)i, (void)r, (void)p;
	*l = 0;
}
static void gen_one(uint32_t i, tu_rng *r, char *p, uint32_t *l)
{
	(void)i, (void)r;
	memcpy(p, "KV00001", 7);
	*l = 7;
}

Test(codec, strings_and_keys)
{
	tu_rng r = {tu_seed("strings")};
	void (*gens[])(uint32_t, tu_rng *, char *, uint32_t *) = {
		gen_few, gen_runs, gen_distinct, gen_binary, gen_empty, gen_one};
	for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
		for (size_t g = 0; g < sizeof gens / sizeof gens[0]; g++)
			for (int k = 0; k < 2; k++) {
				col c = str_col(k ? CODEC_KEY : CODEC_STR, sizes[s], gens[g], &r);
				if (sizes[s] <= 300)
					roundtrip_presence(&c, &r);
				else
					roundtrip_all(&c);
				col_free(&c);
			}
}

Test(codec, long_strings)
{
	tu_rng r = {tu_seed("long")};
	col c = col_new(CODEC_STR, 5);
	size_t big = 300000;
	c.bytes = malloc(big);
	for (size_t i = 0; i < big; i++)
		c.bytes[i] = (char)('a' + tu_below(&r, 3));
	S(&c)[0] = (codec_str){c.bytes, 100000};
	S(&c)[1] = (codec_str){NULL, 0};
	S(&c)[2] = (codec_str){c.bytes, 100000};
	S(&c)[3] = (codec_str){c.bytes + 100000, 200000};
	S(&c)[4] = (codec_str){"x", 1};
	roundtrip_all(&c);
	col_free(&c);
}

/* ---------------------------------------------------------------- choices */

Test(codec, decimal_path_for_speeds)
{
	tu_rng r = {tu_seed("speeds")};
	col c = col_new(CODEC_F64, 20000);
	for (uint32_t i = 0; i < c.n; i++) {
		double v = 85.0 + 7.0 * ((double)tu_below(&r, 1000) / 1000.0 - 0.5) * 2;
		F(&c)[i] = round(v * 10.0) / 10.0; /* like 85.2 */
	}
	codec_stats st;
	size_t bytes = roundtrip(&c, NULL, &st);
	cr_assert_eq(st.enc, CODEC_ENC_DEC, "chose %s", codec_name(st.enc));
	cr_assert_eq(st.scale, 1);
	cr_assert_eq(st.n_except, 0);
	cr_assert_lt((double)bytes / c.n, 1.25, "%.3f bytes a speed", (double)bytes / c.n);

	/* a stray -0.0, NaN and a value with more digits: exceptions, not XOR */
	F(&c)[10] = -0.0;
	F(&c)[20] = NAN;
	F(&c)[30] = 85.25;
	roundtrip(&c, NULL, &st);
	cr_assert_eq(st.enc, CODEC_ENC_DEC);
	cr_assert_eq(st.scale, 1);
	cr_assert_eq(st.n_except, 3);

	/* two decimals throughout: scale 2 */
	for (uint32_t i = 0; i < c.n; i++)
		F(&c)[i] = (double)(int)tu_below(&r, 100000) / 100.0;
	roundtrip(&c, NULL, &st);
	cr_assert_eq(st.enc, CODEC_ENC_DEC);
	cr_assert_leq(st.scale, 2);
	col_free(&c);
}

/* Non-decimals get the smaller of XOR and BIN: XOR for values spread
 * over many binades, BIN for a smooth series within a few (the integers'
 * deltas of deltas are small where XOR still sees changing low bits). */
Test(codec, xor_or_bin_for_non_decimals)
{
	col c = col_new(CODEC_F64, 2000);
	for (uint32_t i = 0; i < c.n; i++)
		F(&c)[i] = exp(i * 0.01); /* 29 binades */
	codec_stats st;
	roundtrip(&c, NULL, &st);
	cr_assert_eq(st.enc, CODEC_ENC_XOR, "chose %s", codec_name(st.enc));

	for (uint32_t i = 0; i < c.n; i++)
		F(&c)[i] = sin(i * 0.001) * M_PI;
	size_t bytes = roundtrip(&c, NULL, &st);
	codec_opts o = {.force = CODEC_ENC_XOR};
	size_t xor_bytes = roundtrip(&c, &o, NULL);
	o.force = CODEC_ENC_BIN;
	size_t bin_bytes = roundtrip(&c, &o, NULL);
	cr_assert_eq(st.enc, CODEC_ENC_BIN, "chose %s (xor %zu bytes, bin %zu)", codec_name(st.enc),
		     xor_bytes, bin_bytes);
	cr_assert_eq(bytes, bin_bytes);
	cr_assert_lt(bin_bytes, xor_bytes);
	fprintf(stderr, "smooth series: xor %zu bytes, bin %zu\n", xor_bytes, bin_bytes);
	col_free(&c);
}

/* ms data stored as ns costs what the ms integers cost. */
Test(codec, common_divisor_makes_ns_free)
{
	tu_rng r = {tu_seed("gcd")};
	col ns = col_new(CODEC_TS, 20000), ms = col_new(CODEC_TS, 20000);
	int64_t t = INT64_C(1748822400000) + 123;
	for (uint32_t i = 0; i < ns.n; i++) {
		t += (int64_t)tu_below(&r, 8000);
		I(&ms)[i] = t;
		I(&ns)[i] = t * 1000000;
	}
	codec_stats a, b;
	size_t bn = roundtrip(&ns, NULL, &a), bm = roundtrip(&ms, NULL, &b);
	cr_assert_eq(a.enc, CODEC_ENC_INT);
	/* the divisor and the larger first value: a few bytes */
	cr_assert_leq(bn, bm + 8, "ns %zu bytes, ms %zu bytes", bn, bm);
	cr_assert_lt((double)bn / ns.n, 1.8);

	/* a regular series at whole seconds: next to nothing */
	for (uint32_t i = 0; i < ns.n; i++)
		I(&ns)[i] = INT64_C(1748822400000000000) + (int64_t)i * 1000000000;
	bn = roundtrip(&ns, NULL, &a);
	cr_assert_lt(bn, 200, "%zu bytes for a regular series", bn);
	col_free(&ns);
	col_free(&ms);
}

Test(codec, keys_run_length)
{
	tu_rng r = {tu_seed("keys")};
	col c = str_col(CODEC_KEY, 65536, gen_one, &r);
	codec_stats st;
	size_t bytes = roundtrip(&c, NULL, &st);
	cr_assert_eq(st.enc, CODEC_ENC_RLE);
	cr_assert_lt(bytes, 32, "%zu bytes", bytes);
	col_free(&c);
	c = str_col(CODEC_STR, 10000, gen_few, &r);
	roundtrip(&c, NULL, &st);
	cr_assert_eq(st.enc, CODEC_ENC_DICT, "chose %s", codec_name(st.enc));
	cr_assert_lt(st.block_bytes, 10000 / 4 + 256); /* 2 bits an id */
	col_free(&c);
}

/* zstd after the bit-packing pays on periodic data, and only there. */
Test(codec, zstd_finds_periodic_patterns)
{
	tu_rng r = {tu_seed("periodic")};
	col c = col_new(CODEC_I64, 20000);
	int64_t period[61];
	for (int i = 0; i < 61; i++)
		period[i] = (int64_t)tu_below(&r, 1u << 20);
	for (uint32_t i = 0; i < c.n; i++)
		I(&c)[i] = period[i % 61];
	codec_stats st;
	size_t bytes = roundtrip(&c, NULL, &st);
	cr_assert_eq(st.enc, CODEC_ENC_INT);
	cr_assert_eq(st.zstd, 1);
	cr_assert_lt(bytes, st.body_bytes / 4, "%zu bytes, body %llu", bytes,
		     (unsigned long long)st.body_bytes);
	fill_ints(&c, 4, &r); /* a random walk: nothing for zstd */
	roundtrip(&c, NULL, &st);
	cr_assert_eq(st.zstd, 0);
	col_free(&c);
}

Test(codec, presence_runs_and_bitmap)
{
	tu_rng r = {tu_seed("presence")};
	col c = col_new(CODEC_I64, 10000);
	fill_ints(&c, 4, &r);
	/* one long gap: runs; random: bitmap. Both must round-trip. */
	c.present = calloc(10000 / 64 + 1, 8);
	for (uint32_t i = 0; i < 10000; i++)
		if (i < 3000 || i > 7000)
			c.present[i >> 6] |= (uint64_t)1 << (i & 63);
	codec_stats st;
	size_t a = roundtrip(&c, NULL, &st);
	cr_assert_eq(st.n_present, 3000 + 2999);
	set_presence(&c, &r, 500);
	size_t b = roundtrip(&c, NULL, &st);
	cr_assert_gt(b, a);
	/* nothing present */
	memset(c.present, 0, (10000 / 64 + 1) * 8);
	roundtrip_all(&c);
	col_free(&c);
}

/* ---------------------------------------------------------------- random */

Test(codec, random_against_model)
{
	uint64_t seed = tu_seed("random");
	tu_rng r = {seed};
	time_t end = time(NULL) + 5;
	unsigned iters = 0;
	while (iters < 50 || (time(NULL) < end && iters < 3000)) {
		iters++;
		enum codec_kind k = (enum codec_kind)(1 + tu_below(&r, CODEC_KIND_MAX));
		uint32_t n = (uint32_t)(tu_below(&r, 4) ? tu_below(&r, 600) : tu_below(&r, 70000));
		if (n > CODEC_BLOCK_MAX)
			n = CODEC_BLOCK_MAX;
		col c;
		if (is_str(k)) {
			void (*gens[])(uint32_t, tu_rng *, char *, uint32_t *) = {
				gen_few, gen_runs, gen_distinct, gen_binary, gen_empty, gen_one};
			c = str_col(k, n, gens[tu_below(&r, 6)], &r);
		} else {
			c = col_new(k, n);
			if (k == CODEC_F64)
				for (uint32_t i = 0; i < n; i++)
					F(&c)[i] = pick_double(&r, (int)tu_below(&r, 11), i);
			else if (k == CODEC_BOOL)
				for (uint32_t i = 0; i < n; i++)
					B(&c)[i] = (uint8_t)tu_below(&r, 2);
			else
				fill_ints(&c, (int)tu_below(&r, 12), &r);
		}
		if (tu_below(&r, 2))
			set_presence(&c, &r, (unsigned)tu_below(&r, 1001));
		codec_opts o = {.zstd_level = (int)tu_below(&r, 5) - 1,
				.zstd_always = tu_below(&r, 8) == 0,
				.order = (enum codec_order)tu_below(&r, 4)};
		roundtrip(&c, &o, NULL);
		col_free(&c);
	}
	fprintf(stderr, "random: %u blocks\n", iters);
}

/* ---------------------------------------------------------------- bytes */

static size_t encode_once(const col *c, const codec_opts *o, uint8_t **blk)
{
	codec_buf out = {0};
	cr_assert_eq(codec_encode(cx, c->kind, c->v, c->present, c->n, o, &out, NULL), 0, "%s",
		     err_msg());
	*blk = out.p;
	return out.len;
}

/* The worked example of docs/formats.md: a change here is a format change. */
Test(codec, golden_bytes)
{
	col c = col_new(CODEC_TS, 5);
	static const int64_t ts[5] = {INT64_C(1700000000000000000), INT64_C(1700000001000000000),
				      INT64_C(1700000002000000000), INT64_C(1700000003500000000),
				      INT64_C(1700000004000000000)};
	memcpy(c.v, ts, sizeof ts);
	uint8_t *blk;
	codec_opts o = {.order = CODEC_ORDER_DELTA};
	size_t len = encode_once(&c, &o, &blk);
	static const uint8_t want[] = {
		0x02, 0x01, 0x00, 0x05,                               /* int, ts, flags, n = 5 */
		0x0d,                                                 /* delta, frames of 128 */
		0x80, 0xca, 0xb5, 0xee, 0x01,                         /* g = 500000000 */
		0x80, 0x80, 0xd0, 0xe2, 0xc6, 0xbf, 0xce, 0x97, 0x2f, /* zigzag(ts[0]) */
		0x02, 0x02, 0x4b, 0x00,                               /* one frame */
	};
	char hex[256] = "";
	for (size_t i = 0; i < len && i < 80; i++)
		snprintf(hex + 3 * i, 4, "%02x ", blk[i]);
	cr_assert_eq(len, sizeof want, "got %s", hex);
	cr_assert_eq(memcmp(blk, want, len), 0, "got %s", hex);
	free(blk);
	col_free(&c);

	/* speeds with row 2 absent: decimals at scale 1, values transform */
	c = col_new(CODEC_F64, 5);
	static const double sp[5] = {85.2, 90.5, 0, 85.2, 88.0};
	memcpy(c.v, sp, sizeof sp);
	c.present = calloc(1, 8);
	c.present[0] = 0x1b;
	o.order = CODEC_ORDER_VALUE;
	len = encode_once(&c, &o, &blk);
	static const uint8_t want2[] = {
		0x03, 0x04, 0x02, 0x05,       /* dec, f64, presence, n = 5 */
		0x04, 0x00, 0x1b,             /* 4 present, bitmap 11011 */
		0x01, 0x00,                   /* scale 1, no exceptions */
		0x0c, 0x01, 0xa8, 0x0d,       /* values, g = 1, zigzag(852) */
		0x06, 0x80, 0x1a, 0xe0, 0x00, /* one frame: width 6, ref 0; 53, 0, 28 */
	};
	hex[0] = 0;
	for (size_t i = 0; i < len && i < 80; i++)
		snprintf(hex + 3 * i, 4, "%02x ", blk[i]);
	cr_assert_eq(len, sizeof want2, "got %s", hex);
	cr_assert_eq(memcmp(blk, want2, len), 0, "got %s", hex);
	roundtrip(&c, &o, NULL);
	free(blk);
	col_free(&c);
}

/* ---------------------------------------------------------------- damage */

static int decode_bytes(const uint8_t *p, size_t len, enum codec_kind k, uint32_t n, void *back,
			codec_buf *arena)
{
	uint64_t pr[CODEC_BLOCK_MAX / 64];
	return codec_decode(cx, p, len, k, n, back, pr, arena);
}

/* A set of blocks that covers every encoding, zstd and presence. */
#define DAMAGE_COLS 12
static col damage_col(int which, tu_rng *r, codec_opts *o)
{
	col c;
	memset(o, 0, sizeof *o);
	switch (which) {
	case 0:
		c = col_new(CODEC_TS, 500);
		fill_ints(&c, 8, r);
		break;
	case 1:
		c = col_new(CODEC_I64, 300);
		fill_ints(&c, 11, r);
		o->force = CODEC_ENC_RAW;
		break;
	case 2:
		c = col_new(CODEC_F64, 400);
		for (uint32_t i = 0; i < c.n; i++)
			F(&c)[i] = pick_double(r, i % 50 ? 1 : 3, i);
		break;
	case 3:
		c = col_new(CODEC_F64, 300);
		for (uint32_t i = 0; i < c.n; i++)
			F(&c)[i] = pick_double(r, 6, i);
		o->force = CODEC_ENC_XOR;
		break;
	case 4:
		c = col_new(CODEC_BOOL, 333);
		for (uint32_t i = 0; i < c.n; i++)
			B(&c)[i] = (uint8_t)tu_below(r, 2);
		break;
	case 5:
		c = str_col(CODEC_STR, 300, gen_few, r);
		o->force = CODEC_ENC_DICT;
		break;
	case 6:
		c = str_col(CODEC_KEY, 300, gen_runs, r);
		o->force = CODEC_ENC_RLE;
		break;
	case 7:
		c = str_col(CODEC_STR, 200, gen_distinct, r);
		o->force = CODEC_ENC_PLAIN;
		break;
	case 8:
		c = str_col(CODEC_STR, 200, gen_binary, r);
		o->force = CODEC_ENC_RAW;
		break;
	case 9:
		c = col_new(CODEC_U64, 600);
		fill_ints(&c, 4, r);
		o->zstd_always = 1;
		break;
	case 11: /* sum residuals with exceptions among them */
		c = col_new(CODEC_F64, 400);
		for (uint32_t i = 0; i < c.n; i++)
			F(&c)[i] = i % 37 ? pick_double(r, 10, i) : pick_double(r, 3, i);
		o->force = CODEC_ENC_BIN;
		break;
	case 12: /* the encoder's own choice for residuals, zstd on */
		c = col_new(CODEC_F64, 300);
		for (uint32_t i = 0; i < c.n; i++)
			F(&c)[i] = pick_double(r, 10, i);
		o->zstd_always = 1;
		break;
	default:
		c = col_new(CODEC_F64, 400);
		for (uint32_t i = 0; i < c.n; i++)
			F(&c)[i] = pick_double(r, 1, i);
		o->force = CODEC_ENC_DEC;
		break;
	}
	if (which % 3 == 1)
		set_presence(&c, r, which == 4 ? 995 : 700);
	return c;
}

Test(codec, truncation_at_every_byte)
{
	tu_rng r = {tu_seed("truncate")};
	codec_buf arena = {0};
	for (int w = 0; w <= DAMAGE_COLS; w++) {
		codec_opts o;
		col c = damage_col(w, &r, &o);
		uint8_t *blk;
		size_t len = encode_once(&c, &o, &blk);
		void *back = malloc(((size_t)c.n + 1) * esize(c.kind));
		cr_assert_eq(decode_bytes(blk, len, c.kind, c.n, back, &arena), 0, "%s", err_msg());
		for (size_t cut = 0; cut < len; cut++) {
			/* a copy of exactly cut bytes, so ASan sees any read past it */
			uint8_t *p = malloc(cut ? cut : 1);
			memcpy(p, blk, cut);
			int rc = decode_bytes(p, cut, c.kind, c.n, back, &arena);
			cr_assert_eq(rc, TALLY_ECORRUPT, "block %d cut at %zu of %zu: rc %d", w,
				     cut, len, rc);
			cr_assert(strstr(err_msg(), "codec block"), "message: %s", err_msg());
			free(p);
		}
		free(back);
		free(blk);
		col_free(&c);
	}
	codec_buf_free(&arena);
}

Test(codec, flipped_bytes_never_crash)
{
	tu_rng r = {tu_seed("flip")};
	codec_buf arena = {0};
	unsigned corrupt = 0, ok = 0;
	for (int w = 0; w <= DAMAGE_COLS; w++) {
		codec_opts o;
		col c = damage_col(w, &r, &o);
		uint8_t *blk;
		size_t len = encode_once(&c, &o, &blk);
		void *back = malloc(((size_t)c.n + 1) * esize(c.kind));
		uint8_t *p = malloc(len);
		for (int t = 0; t < 400; t++) {
			memcpy(p, blk, len);
			int flips = 1 + (int)tu_below(&r, 3);
			for (int f = 0; f < flips; f++)
				p[tu_below(&r, len)] ^= (uint8_t)(1 + tu_below(&r, 255));
			int rc = decode_bytes(p, len, c.kind, c.n, back, &arena);
			cr_assert(rc == 0 || rc == TALLY_ECORRUPT, "rc %d: %s", rc, err_msg());
			rc ? corrupt++ : ok++;
		}
		free(p);
		free(back);
		free(blk);
		col_free(&c);
	}
	/* blocks carry no checksum: some flips decode to other values */
	fprintf(stderr, "flips: %u refused, %u decoded\n", corrupt, ok);
	codec_buf_free(&arena);
}

Test(codec, random_bytes_never_crash)
{
	tu_rng r = {tu_seed("noise")};
	codec_buf arena = {0};
	codec_str *back = malloc(sizeof(codec_str) * CODEC_BLOCK_MAX);
	uint8_t p[512];
	for (int t = 0; t < 20000; t++) {
		size_t len = tu_below(&r, sizeof p);
		for (size_t i = 0; i < len; i++)
			p[i] = (uint8_t)tu_next(&r);
		/* plausible headers, so the fuzzing gets past them */
		enum codec_kind k = (enum codec_kind)(1 + tu_below(&r, CODEC_KIND_MAX));
		if (len >= 4 && tu_below(&r, 4)) {
			p[0] = (uint8_t)(1 + tu_below(&r, CODEC_ENC_MAX));
			p[1] = (uint8_t)k;
			p[2] = (uint8_t)tu_below(&r, 4);
			p[3] = (uint8_t)tu_below(&r, 128);
		}
		uint32_t n = len >= 4 ? p[3] : 0;
		int rc = decode_bytes(p, len, k, n, back, &arena);
		cr_assert(rc == 0 || rc == TALLY_ECORRUPT, "rc %d: %s", rc, err_msg());
	}
	free(back);
	codec_buf_free(&arena);
}

Test(codec, wrong_kind_rows_and_messages)
{
	tu_rng r = {tu_seed("wrong")};
	col c = col_new(CODEC_TS, 100);
	fill_ints(&c, 8, &r);
	uint8_t *blk;
	codec_opts o = {.order = CODEC_ORDER_DELTA, .force = CODEC_ENC_INT};
	size_t len = encode_once(&c, &o, &blk);
	int64_t back[101];
	cr_assert_eq(decode_bytes(blk, len, CODEC_I64, 100, back, NULL), TALLY_ECORRUPT);
	cr_assert(strstr(err_msg(), "kind ts, expected i64"), "%s", err_msg());
	cr_assert_eq(decode_bytes(blk, len, CODEC_TS, 99, back, NULL), TALLY_ECORRUPT);
	cr_assert(strstr(err_msg(), "100 rows, expected 99"), "%s", err_msg());
	/* trailing bytes are damage too */
	uint8_t *more = malloc(len + 1);
	memcpy(more, blk, len);
	more[len] = 0;
	cr_assert_eq(decode_bytes(more, len + 1, CODEC_TS, 100, back, NULL), TALLY_ECORRUPT);
	cr_assert(strstr(err_msg(), "left over"), "%s", err_msg());
	/* a frame code past the table: byte 0 of the bit stream */
	codec_block_info info;
	cr_assert_eq(codec_block_info_get(blk, len, &info), 0);
	/* body: order byte, varint g, varint head, then the first frame code */
	size_t at = info.header_bytes + 1;
	while (blk[at] & 0x80)
		at++;
	at++;
	while (blk[at] & 0x80)
		at++;
	at++;
	memcpy(more, blk, len);
	more[at] = 200;
	cr_assert_eq(decode_bytes(more, len, CODEC_TS, 100, back, NULL), TALLY_ECORRUPT);
	cr_assert(strstr(err_msg(), "bad code 200"), "%s", err_msg());
	/* a varbits width over 64: the 7 bits after the code */
	memcpy(more, blk, len);
	more[at + 1] = (uint8_t)((more[at + 1] & 0x80) | 71);
	cr_assert_eq(decode_bytes(more, len, CODEC_TS, 100, back, NULL), TALLY_ECORRUPT);
	cr_assert(strstr(err_msg(),
			 "codec block (ts): int: integer frame 0: reference bit width 71 > 64"),
		  "%s", err_msg());
	/* unknown encoding, kind, flags */
	memcpy(more, blk, len);
	more[0] = 99;
	cr_assert_eq(decode_bytes(more, len, CODEC_TS, 100, back, NULL), TALLY_ECORRUPT);
	cr_assert(strstr(err_msg(), "unknown encoding 99"), "%s", err_msg());
	memcpy(more, blk, len);
	more[2] = 0x80;
	cr_assert_eq(decode_bytes(more, len, CODEC_TS, 100, back, NULL), TALLY_ECORRUPT);
	memcpy(more, blk, len);
	more[0] = CODEC_ENC_DICT;
	cr_assert_eq(decode_bytes(more, len, CODEC_TS, 100, back, NULL), TALLY_ECORRUPT);
	cr_assert(strstr(err_msg(), "does not take kind ts"), "%s", err_msg());
	/* bad arguments */
	cr_assert_eq(codec_decode(cx, blk, len, (enum codec_kind)0, 100, back, NULL, NULL),
		     TALLY_EINVAL);
	cr_assert_eq(codec_decode(cx, blk, len, CODEC_STR, 100, back, NULL, NULL), TALLY_EINVAL);
	codec_buf out = {0};
	cr_assert_eq(codec_encode(cx, CODEC_TS, back, NULL, CODEC_BLOCK_MAX + 1, NULL, &out, NULL),
		     TALLY_EINVAL);
	cr_assert_eq(codec_encode(cx, (enum codec_kind)9, back, NULL, 1, NULL, &out, NULL),
		     TALLY_EINVAL);
	cr_assert_eq(out.len, 0);
	free(more);
	free(blk);
	col_free(&c);
}

Test(codec, allocation_failures)
{
	tu_rng r = {tu_seed("oom")};
	codec_buf arena = {0};
	for (int w = 0; w <= DAMAGE_COLS; w++) {
		codec_opts o;
		col c = damage_col(w, &r, &o);
		uint8_t *blk;
		size_t len = encode_once(&c, &o, &blk);
		void *back = malloc(((size_t)c.n + 1) * esize(c.kind));
		for (uint64_t k = 1; k < 40; k++) {
			/* fresh contexts, so that the scratch must be allocated */
			codec_ctx *fresh = codec_ctx_new();
			cr_assert_not_null(fresh);
			codec_buf out = {0};
			mem_fail_after(k);
			int rc = codec_encode(fresh, c.kind, c.v, c.present, c.n, &o, &out, NULL);
			mem_fail_after(0);
			cr_assert(rc == 0 || rc == -ENOMEM, "rc %d", rc);
			if (rc)
				cr_assert_eq(out.len, 0);
			codec_buf_free(&out);
			codec_ctx_free(fresh);
			fresh = codec_ctx_new();
			codec_buf_free(&arena);
			mem_fail_after(k);
			uint64_t pr[CODEC_BLOCK_MAX / 64];
			rc = codec_decode(fresh, blk, len, c.kind, c.n, back, pr, &arena);
			mem_fail_after(0);
			cr_assert(rc == 0 || rc == -ENOMEM, "rc %d", rc);
			codec_ctx_free(fresh);
		}
		free(back);
		free(blk);
		col_free(&c);
	}
	codec_buf_free(&arena);
}

Test(codec, names)
{
	cr_assert_str_eq(codec_name(CODEC_ENC_INT), "int");
	cr_assert_str_eq(codec_name(CODEC_ENC_DEC), "dec");
	cr_assert_str_eq(codec_name(CODEC_ENC_RLE), "rle");
	cr_assert_str_eq(codec_name(0), "?");
	cr_assert_str_eq(codec_name(200), "?");
	cr_assert_str_eq(codec_kind_name(CODEC_KEY), "key");
	cr_assert_str_eq(codec_kind_name(0), "?");
}

/* ---------------------------------------------------------------- binary fractions */

/* BIN's exponent, read from a block written without zstd. */
static int bin_exponent(const uint8_t *blk, size_t len)
{
	codec_block_info info;
	cr_assert_eq(codec_block_info_get(blk, len, &info), 0, "%s", err_msg());
	cr_assert_eq(info.enc, CODEC_ENC_BIN);
	cr_assert_eq(info.zstd, 0);
	uint64_t z = 0;
	size_t at = info.header_bytes;
	for (unsigned sh = 0; at < len; sh += 7) {
		z |= (uint64_t)(blk[at] & 0x7f) << sh;
		if (!(blk[at++] & 0x80))
			break;
	}
	return (int)(int64_t)((z >> 1) ^ (0 - (z & 1)));
}

/* The model of BIN's fit, apart from the codec's: v is m·2^e for an
 * integer |m| < 2^53, and is not -0.0. */
static int bin_fits(double v, int e)
{
	if (!isfinite(v) || (v == 0 && signbit(v)))
		return 0;
	double m = ldexp(v, -e), back = ldexp(m, e);
	return m == trunc(m) && fabs(m) < 0x1p53 && memcmp(&back, &v, 8) == 0;
}

/* Forced BIN round-trips, and stores verbatim exactly what the model says
 * does not fit its exponent. */
static void bin_check(const col *c, enum codec_order ord, codec_stats *st_out)
{
	codec_opts o = {.force = CODEC_ENC_BIN, .zstd_level = -1, .order = ord};
	codec_stats st;
	roundtrip(c, &o, NULL);
	codec_buf out = {0};
	cr_assert_eq(codec_encode(cx, c->kind, c->v, c->present, c->n, &o, &out, &st), 0, "%s",
		     err_msg());
	int e = bin_exponent(out.p, out.len);
	cr_assert(e >= -1074 && e <= 1023, "exponent %d", e);
	uint32_t want = 0;
	for (uint32_t i = 0; i < c->n; i++)
		if (has(c->present, i) && !bin_fits(((const double *)c->v)[i], e))
			want++;
	cr_assert_eq(st.n_except, want, "exponent %d: %u exceptions, the model says %u", e,
		     st.n_except, want);
	codec_buf_free(&out);
	if (st_out)
		*st_out = st;
}

Test(codec, bin_round_trips_dyadics_residuals_and_specials)
{
	tu_rng r = {tu_seed("bin")};
	static const double odd[] = {NAN,
				     -NAN,
				     INFINITY,
				     -INFINITY,
				     -0.0,
				     0.0,
				     5e-324,
				     -5e-324,
				     2.2250738585072009e-308,
				     2.2250738585072014e-308,
				     1.7976931348623157e308,
				     -1e300,
				     1e-300,
				     0x1p1023,
				     -0x1p-1074,
				     0x1.fffffffffffffp-40,
				     0.1,
				     85.2};
	for (int t = 0; t < 72; t++) {
		uint32_t n = (uint32_t)(t < 24 ? 1 + tu_below(&r, 300) : tu_below(&r, 5000));
		col c = col_new(CODEC_F64, n);
		int mode = t % 6;
		/* dyadics anywhere in the range, subnormals included: up to
		 * 53-bit integers times 2^e0..2^(e0+3) */
		int e0 = -1074 + (int)tu_below(&r, 1023 + 1074 - 60);
		unsigned bits = 1 + (unsigned)tu_below(&r, 50); /* m·2^3 < 2^53 */
		uint32_t specials = 0;
		for (uint32_t i = 0; i < n; i++) {
			double v;
			if (mode % 2 == 0) {
				int64_t m = (int64_t)(tu_next(&r) >> (64 - bits));
				v = ldexp((double)(tu_below(&r, 2) ? m : -m),
					  e0 + (int)tu_below(&r, 4));
			} else {
				v = sum_residual(&r, 1 + (uint32_t)tu_below(&r, 60));
			}
			if (mode >= 2 && tu_below(&r, 10) == 0) {
				specials++;
				if (mode < 4) {
					v = odd[tu_below(&r, sizeof odd / sizeof odd[0])];
				} else { /* any bits */
					uint64_t b = tu_next(&r);
					memcpy(&v, &b, 8);
				}
			}
			F(&c)[i] = v;
		}
		codec_stats st;
		bin_check(&c, (enum codec_order)(t / 6 % 4), &st);
		/* a sample chooses the exponent, so a value the sample missed
		 * may not fit it; but nearly all do */
		cr_assert_leq(st.n_except, specials + 1 + n / 50, "mode %d: %u exceptions of %u",
			      mode, st.n_except, n);
		if (t < 12)
			roundtrip_presence(&c, &r);
		else
			roundtrip(&c, NULL, NULL);
		col_free(&c);
	}
}

Test(codec, bin_forced_on_any_doubles)
{
	tu_rng r = {tu_seed("bin-any")};
	for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
		for (int pat = 0; pat <= 10; pat++) {
			col c = col_new(CODEC_F64, sizes[s]);
			for (uint32_t i = 0; i < c.n; i++)
				F(&c)[i] = pick_double(&r, pat, i);
			bin_check(&c, (enum codec_order)tu_below(&r, 4), NULL);
			set_presence(&c, &r, 700);
			bin_check(&c, CODEC_ORDER_AUTO, NULL);
			col_free(&c);
		}
}

Test(codec, bin_chosen_for_sum_residuals)
{
	tu_rng r = {tu_seed("residuals")};
	col c = col_new(CODEC_F64, 20000);
	for (uint32_t i = 0; i < c.n; i++)
		F(&c)[i] = sum_residual(&r, 1 + (uint32_t)tu_below(&r, 40));
	codec_stats st;
	size_t bytes = roundtrip(&c, NULL, &st);
	cr_assert_eq(st.enc, CODEC_ENC_BIN, "chose %s", codec_name(st.enc));
	cr_assert_lt((double)bytes / c.n, 1.0, "%.3f bytes a residual", (double)bytes / c.n);
	codec_opts o = {.force = CODEC_ENC_XOR};
	size_t xor_bytes = roundtrip(&c, &o, NULL);
	cr_assert_lt(bytes * 2, xor_bytes, "bin %zu bytes, xor %zu", bytes, xor_bytes);

	/* mostly 0 (buckets of one event): DEC takes the zeros and stores the
	 * rest verbatim; BIN takes them all */
	for (uint32_t i = 0; i < c.n; i++)
		F(&c)[i] = tu_below(&r, 5) ? 0.0 : sum_residual(&r, 2 + (uint32_t)tu_below(&r, 40));
	bytes = roundtrip(&c, NULL, &st);
	cr_assert_eq(st.enc, CODEC_ENC_BIN, "chose %s", codec_name(st.enc));
	cr_assert_lt((double)bytes / c.n, 0.5, "%.3f bytes a value", (double)bytes / c.n);

	/* speeds with a few exceptions stay DEC */
	for (uint32_t i = 0; i < c.n; i++)
		F(&c)[i] = (double)(600 + tu_below(&r, 500)) / 10.0;
	F(&c)[5] = NAN;
	F(&c)[6] = sum_residual(&r, 9);
	roundtrip(&c, NULL, &st);
	cr_assert_eq(st.enc, CODEC_ENC_DEC, "chose %s", codec_name(st.enc));
	col_free(&c);
}

/* A day of 5-minute buckets as part_writer_rollup stores them: the residual
 * column used to cost XOR's 2 bytes a bucket. */
Test(codec, rollup_residuals_of_one_decimal_sums_cost_under_a_byte)
{
	tu_rng r = {tu_seed("rollup")};
	col c = col_new(CODEC_F64, 288);
	for (uint32_t b = 0; b < c.n; b++) {
		double sum = 0, comp = 0;
		uint32_t events = 1 + (uint32_t)tu_below(&r, 28); /* 4000 a day: 14 a bucket */
		for (uint32_t i = 0; i < events; i++) {
			double v =
				(double)(850 + (int)tu_below(&r, 141) - 70) / 10.0; /* 78.0..92.0 */
			double t = sum + v, bp = t - sum;
			comp += (sum - (t - bp)) + (v - bp);
			sum = t;
		}
		double s = sum + comp; /* as part_writer_rollup */
		F(&c)[b] = (sum - s) + comp;
	}
	codec_stats st;
	size_t bytes = roundtrip(&c, NULL, &st);
	codec_opts o = {.force = CODEC_ENC_XOR};
	size_t xor_bytes = roundtrip(&c, &o, NULL);
	cr_assert_eq(st.enc, CODEC_ENC_BIN, "chose %s", codec_name(st.enc));
	cr_assert_lt((double)bytes / c.n, 1.0, "%zu bytes for %u residuals (xor: %zu)", bytes, c.n,
		     xor_bytes);
	col_free(&c);
}

/* A BIN block of rows values (< 128) from parts: the exponent (ze, its
 * zigzag), then extra[0..n_extra) (exception count and exceptions), then
 * the integer stream of m[0..n) as the INT encoder writes it, then
 * tail[0..n_tail). */
static size_t bin_block(uint8_t *blk, uint32_t rows, uint64_t ze, const uint8_t *extra,
			size_t n_extra, const int64_t *m, uint32_t n, const uint8_t *tail,
			size_t n_tail)
{
	codec_buf ints = {0};
	codec_opts o = {.force = CODEC_ENC_INT, .zstd_level = -1, .order = CODEC_ORDER_VALUE};
	cr_assert_eq(codec_encode(cx, CODEC_I64, m, NULL, n, &o, &ints, NULL), 0);
	codec_block_info info;
	cr_assert_eq(codec_block_info_get(ints.p, ints.len, &info), 0);
	size_t len = 0;
	blk[len++] = CODEC_ENC_BIN;
	blk[len++] = CODEC_F64;
	blk[len++] = 0;
	blk[len++] = (uint8_t)rows;
	do {
		blk[len++] = (uint8_t)((ze & 0x7f) | (ze >= 0x80 ? 0x80 : 0));
		ze >>= 7;
	} while (ze);
	memcpy(blk + len, extra, n_extra);
	len += n_extra;
	memcpy(blk + len, ints.p + info.header_bytes, ints.len - info.header_bytes);
	len += ints.len - info.header_bytes;
	if (n_tail)
		memcpy(blk + len, tail, n_tail);
	len += n_tail;
	codec_buf_free(&ints);
	return len;
}

static void bin_refused(const uint8_t *blk, size_t len, uint32_t n, const char *msg)
{
	double back[8];
	uint8_t *p = malloc(len ? len : 1); /* exactly len bytes, for ASan */
	memcpy(p, blk, len);
	cr_assert_eq(decode_bytes(p, len, CODEC_F64, n, back, NULL), TALLY_ECORRUPT,
		     "decoded; wanted '%s'", msg);
	cr_assert(strstr(err_msg(), msg), "message '%s', wanted '%s'", err_msg(), msg);
	cr_assert(strstr(err_msg(), "codec block (f64): bin: "), "%s", err_msg());
	free(p);
}

/* The worked example of docs/formats.md, and every check of the decoder. */
Test(codec, bin_bytes_and_damage)
{
	static const int64_t m[4] = {0, 3, -1, 32};
	const double want[4] = {0.0, 0x3p-48, -0x1p-48, 0x1p-43};
	uint8_t blk[256], ref[256];
	double back[8];
	static const uint8_t none[] = {0x00};
	/* zigzag(-48) = 95, no exceptions */
	size_t len = bin_block(ref, 4, 95, none, 1, m, 4, NULL, 0);
	cr_assert_eq(decode_bytes(ref, len, CODEC_F64, 4, back, NULL), 0, "%s", err_msg());
	cr_assert_eq(memcmp(back, want, sizeof want), 0);
	/* the encoder writes these very bytes */
	col c = col_new(CODEC_F64, 4);
	memcpy(c.v, want, sizeof want);
	codec_opts o = {.zstd_level = -1, .order = CODEC_ORDER_VALUE};
	uint8_t *enc;
	size_t elen = encode_once(&c, &o, &enc);
	char hex[256] = "";
	for (size_t i = 0; i < elen && i < 80; i++)
		snprintf(hex + 3 * i, 4, "%02x ", enc[i]);
	static const uint8_t golden[] = {
		0x09, 0x04, 0x00, 0x04, /* bin, f64, flags, n = 4 */
		0x5f, 0x00,             /* e = -48, no exceptions */
		0x0c, 0x01, 0x00,       /* values, g = 1, zigzag(m[0]) = 0 */
					/* then m[i] - m[0] for i >= 1: 3, -1, 32 */
		0x44, 0x81, 0x08, 0x2f, /* one frame: Rice k = 3, ref -1: 4, 0, 33 */
	};
	cr_assert_eq(elen, sizeof golden, "got %s", hex);
	cr_assert_eq(memcmp(enc, golden, elen), 0, "got %s", hex);
	cr_assert_eq(elen, len, "got %s", hex);
	cr_assert_eq(memcmp(enc, ref, len), 0, "got %s", hex);
	free(enc);
	col_free(&c);

	/* every truncation */
	for (size_t cut = 0; cut < 4; cut++)
		cr_assert_eq(decode_bytes(ref, cut, CODEC_F64, 4, back, NULL), TALLY_ECORRUPT);
	for (size_t cut = 4; cut < len; cut++)
		bin_refused(ref, cut, 4,
			    cut == 4   ? "binary exponent: truncated"
			    : cut == 5 ? "binary exceptions: truncated"
				       : "");
	/* exponents out of range: -1075, 1024, -2^63; the ends are fine */
	bin_refused(blk, bin_block(blk, 4, 2149, none, 1, m, 4, NULL, 0), 4,
		    "binary: exponent -1075 outside -1074..1023");
	bin_refused(blk, bin_block(blk, 4, 2048, none, 1, m, 4, NULL, 0), 4,
		    "binary: exponent 1024 outside -1074..1023");
	bin_refused(blk, bin_block(blk, 4, UINT64_MAX, none, 1, m, 4, NULL, 0), 4,
		    "binary: exponent -9223372036854775808 outside");
	len = bin_block(blk, 4, 2147, none, 1, m, 4, NULL, 0);
	cr_assert_eq(decode_bytes(blk, len, CODEC_F64, 4, back, NULL), 0, "%s", err_msg());
	cr_assert(back[1] == 0x3p-1074 && back[2] == -0x1p-1074, "%a %a", back[1], back[2]);
	static const int64_t one[2] = {0, 1};
	len = bin_block(blk, 2, 2046, none, 1, one, 2, NULL, 0);
	cr_assert_eq(decode_bytes(blk, len, CODEC_F64, 2, back, NULL), 0, "%s", err_msg());
	cr_assert(back[1] == 0x1p1023);
	/* 3·2^1023 is no double: the encoder never writes it */
	static const int64_t three[1] = {3};
	bin_refused(blk, bin_block(blk, 1, 2046, none, 1, three, 1, NULL, 0), 1,
		    "binary: value 0: 3*2^1023 overflows");
	/* more exceptions than values */
	static const uint8_t five[] = {0x05};
	bin_refused(blk, bin_block(blk, 4, 95, five, 1, m, 4, NULL, 0), 4,
		    "binary: 5 exceptions for 4 values");
	/* an exception past the last value: gaps 1 (index 1), then 2 (index 4) */
	static const uint8_t past[] = {0x02, 0x01, 0, 0, 0, 0, 0, 0,    0xf0, 0x7f,
				       0x02, 0,    0, 0, 0, 0, 0, 0xf0, 0x7f};
	bin_refused(blk, bin_block(blk, 4, 95, past, sizeof past, m, 4, NULL, 0), 4,
		    "binary: exception 1 past value 4");
	/* an exception's bits cut short */
	static const uint8_t cut_exc[] = {0x01, 0x00, 0, 0, 0, 0};
	bin_refused(blk, bin_block(blk, 4, 95, cut_exc, sizeof cut_exc, NULL, 0, NULL, 0), 4,
		    "binary: exception 0 truncated");
	/* a good exception: -0.0 at index 2 */
	static const uint8_t neg0[] = {0x01, 0x02, 0, 0, 0, 0, 0, 0, 0, 0x80};
	len = bin_block(blk, 4, 95, neg0, sizeof neg0, m, 4, NULL, 0);
	cr_assert_eq(decode_bytes(blk, len, CODEC_F64, 4, back, NULL), 0, "%s", err_msg());
	cr_assert(back[1] == 0x3p-48 && back[2] == 0 && signbit(back[2]) && back[3] == 0x1p-43);
	/* integers of 53 bits and more */
	static const int64_t big[2] = {INT64_C(1) << 53, -(INT64_C(1) << 53)};
	bin_refused(blk, bin_block(blk, 1, 95, none, 1, big, 1, NULL, 0), 1,
		    "binary: value 0: integer 9007199254740992 has more than 53 bits");
	bin_refused(blk, bin_block(blk, 1, 95, none, 1, big + 1, 1, NULL, 0), 1,
		    "binary: value 0: integer -9007199254740992 has more than 53 bits");
	static const int64_t top[2] = {(INT64_C(1) << 53) - 1, -(INT64_C(1) << 53) + 1};
	len = bin_block(blk, 2, 0, none, 1, top, 2, NULL, 0);
	cr_assert_eq(decode_bytes(blk, len, CODEC_F64, 2, back, NULL), 0, "%s", err_msg());
	cr_assert(back[0] == 0x1.fffffffffffffp52 && back[1] == -0x1.fffffffffffffp52);
	/* too few integers, bytes left over */
	bin_refused(blk, bin_block(blk, 4, 95, none, 1, m, 3, NULL, 0), 4, "integer");
	static const uint8_t junk[] = {0x00};
	bin_refused(blk, bin_block(blk, 4, 95, none, 1, m, 4, junk, 1), 4, "left over");
}

/* The integer the double path gives a value at scale S: what an exact
 * distribution counts (engine/dist.c's dist_index, half away from zero). */
static int64_t units_of(double v, unsigned scale)
{
	double p = 1;
	for (unsigned i = 0; i < scale; i++)
		p *= 10;
	return llround(v * p);
}

/* c encoded as enc, asked for units at scale 1 (then withdrawn when
 * withdraw): answered in doubles, every one as it was. */
static void units_refused(codec_ctx *ux, col *c, enum codec_enc enc, int withdraw, codec_buf *out,
			  double *dbl, uint64_t *pres)
{
	codec_opts o = {.force = enc};
	out->len = 0;
	cr_assert_eq(codec_encode(ux, CODEC_F64, c->v, NULL, c->n, &o, out, NULL), 0);
	uint32_t n;
	codec_want_units(ux, 1);
	if (withdraw)
		codec_want_units(ux, 99);
	cr_assert_eq(codec_decode_head(ux, out->p, out->len, CODEC_F64, c->n, c->n, INT64_MIN, dbl,
				       pres, &n),
		     0);
	cr_assert_eq(codec_units_got(ux), 0, "%s", codec_name(enc));
	for (uint32_t i = 0; i < c->n; i++)
		cr_assert_eq(dbl[i], F(c)[i], "%s row %u", codec_name(enc), i);
}

/* codec_want_units: a DEC block at a scale at or below the one asked
 * answers with integers equal to the doubles' rounding (a head too); a
 * finer block, one with verbatim values, one of huge values, a non-DEC
 * block and the call after (the request holds once) answer doubles. */
Test(codec, units_of_decimal_blocks_equal_the_doubles_rounding)
{
	tu_rng r = {tu_seed("units")};
	codec_ctx *ux = codec_ctx_new();
	codec_buf out = {0};
	col c = col_new(CODEC_F64, 3000);
	int64_t *got = malloc(c.n * sizeof *got);
	double *dbl = malloc(c.n * sizeof *dbl);
	uint64_t pres[3000 / 64 + 1];
	/* digits of the values, the scale asked, whether it answers in units */
	const struct {
		unsigned digits, scale;
		int units;
	} cases[] = {{1, 1, 1}, {0, 1, 1}, {1, 3, 1}, {2, 2, 1}, {2, 1, 0}, {3, 1, 0}, {0, 0, 1}};
	for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
		double p = 1;
		for (unsigned i = 0; i < cases[k].digits; i++)
			p *= 10;
		for (uint32_t i = 0; i < c.n; i++) {
			char s[32];
			snprintf(s, sizeof s, "%.*f", (int)cases[k].digits,
				 ((double)tu_below(&r, 2000000) - 1000000) / p);
			F(&c)[i] = strtod(s, NULL);
		}
		codec_opts o = {.force = CODEC_ENC_DEC};
		out.len = 0;
		codec_stats st;
		cr_assert_eq(codec_encode(ux, CODEC_F64, c.v, NULL, c.n, &o, &out, &st), 0);
		cr_assert_eq(st.n_except, 0);
		for (int whole = 0; whole < 2; whole++) {
			uint32_t want = whole ? c.n : 700, n;
			codec_want_units(ux, cases[k].scale);
			cr_assert_eq(codec_decode_head(ux, out.p, out.len, CODEC_F64, c.n, want,
						       INT64_MIN, got, pres, &n),
				     0);
			cr_assert_eq(codec_units_got(ux), cases[k].units, "case %zu", k);
			cr_assert_geq(n, want);
			memcpy(dbl, got, n * sizeof *dbl);
			for (uint32_t i = 0; i < n; i++)
				if (cases[k].units)
					cr_assert_eq(got[i], units_of(F(&c)[i], cases[k].scale),
						     "case %zu row %u: %lld for %.17g", k, i,
						     (long long)got[i], F(&c)[i]);
				else
					cr_assert_eq(dbl[i], F(&c)[i], "case %zu row %u", k, i);
			/* the request held for that call alone */
			cr_assert_eq(codec_decode_head(ux, out.p, out.len, CODEC_F64, c.n, want,
						       INT64_MIN, dbl, pres, &n),
				     0);
			cr_assert_eq(codec_units_got(ux), 0);
			cr_assert_eq(dbl[0], F(&c)[0]);
		}
	}
	/* a value stored verbatim, a value too large for exact units, XOR,
	 * and a request withdrawn */
	for (int v = 0; v < 2; v++) {
		for (uint32_t i = 0; i < c.n; i++)
			F(&c)[i] = (double)(i % 900) / 10;
		F(&c)[17] = v ? 4e14 : 85.25;
		units_refused(ux, &c, CODEC_ENC_DEC, 0, &out, dbl, pres);
	}
	units_refused(ux, &c, CODEC_ENC_XOR, 0, &out, dbl, pres);
	F(&c)[17] = 1.5;
	units_refused(ux, &c, CODEC_ENC_DEC, 1, &out, dbl, pres);
	free(got);
	free(dbl);
	codec_buf_free(&out);
	col_free(&c);
	codec_ctx_free(ux);
}
