/*
 * test_lp.c — line protocol parser: every escaping rule, value type and
 * spelling, limit and malformed form, each checked with good lines around
 * it; then a randomised test against a model (random valid lines with known
 * values mixed with bad lines, comments and blanks) and random bytes.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <locale.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lp.h"
#include "mem.h"
#include "strmap.h"

static lp_parser ps;
static lp_line ln;
static int code;
static char reason[TALLY_REASON_MAX];

static void setup(void)
{
	cr_assert_eq(lp_parser_init(&ps, 0, TALLY_PREC_NS), 0);
}
static void teardown(void)
{
	lp_parser_free(&ps);
}

TestSuite(lp, .init = setup, .fini = teardown);

/* ---------------------------------------------------------------- helpers */

static int str_is(lp_str s, const char *c, size_t n)
{
	return s.n == n && (n == 0 || !memcmp(s.p, c, n));
}

#define STR_EQ(s, c) \
	cr_assert(str_is((s), (c), strlen(c)), "got '%.*s' want '%s'", (int)(s).n, (s).p, (c))

/* Reason text must be printable ASCII or valid UTF-8. */
static int reason_ok(const char *r)
{
	size_t n = strlen(r);
	if (!lp_utf8_valid(r, n))
		return 0;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)r[i] < 0x20 || r[i] == 0x7F)
			return 0;
	return 1;
}

static enum lp_result next(const char **cur, const char *end)
{
	const char *before = *cur; /* code and reason keep the last error */
	uint64_t lines = ps.lines;
	enum lp_result r = lp_next(&ps, cur, end, &ln, &code, reason, sizeof reason);
	if (r == LP_END) {
		cr_assert_eq(*cur, before);
		return r;
	}
	cr_assert(*cur > before && *cur <= end, "no progress");
	cr_assert_eq(ps.line_no, lines + 1);
	if (r == LP_ERROR) {
		cr_assert(code == TALLY_ESYNTAX || code == TALLY_ELIMIT, "code %d", code);
		cr_assert(reason[0] && reason_ok(reason), "bad reason '%s'", reason);
	}
	return r;
}

/* Parses text that must hold exactly one good line. */
static const lp_line *one(const char *text, size_t n)
{
	const char *cur = text, *end = text + n;
	enum lp_result r = next(&cur, end);
	cr_assert_eq(r, LP_LINE, "'%.*s': result %d: %s", (int)n, text, r, reason);
	cr_assert_eq(next(&cur, end), LP_END);
	return &ln;
}
#define ONE(s) one((s), strlen(s))

/* Parses text that must hold exactly one bad line with this reason. */
static void err(const char *text, size_t n, const char *want, int want_code)
{
	const char *cur = text, *end = text + n;
	enum lp_result r = next(&cur, end);
	cr_assert_eq(r, LP_ERROR, "'%.*s': result %d", (int)n, text, r);
	if (want)
		cr_assert_str_eq(reason, want, "'%.*s'", (int)n, text);
	cr_assert_eq(code, want_code, "'%.*s': code %d", (int)n, text, code);
	cr_assert_eq(next(&cur, end), LP_END, "'%.*s': more after the error", (int)n, text);
}

static const lp_field *field(const char *key)
{
	for (uint32_t i = 0; i < ln.n_fields; i++)
		if (str_is(ln.fields[i].key, key, strlen(key)))
			return &ln.fields[i];
	cr_assert_fail("no field '%s'", key);
	return NULL;
}

static uint64_t count_lines(const char *s, size_t n)
{
	uint64_t k = 0;
	for (size_t i = 0; i < n; i++)
		k += s[i] == '\n';
	return k + (n && s[n - 1] != '\n');
}

static void check_good(int which, uint64_t line)
{
	static const int64_t mult[4] = {1, 1000, 1000000, 1000000000};
	cr_assert_eq(ps.line_no, line);
	STR_EQ(ln.measurement, which == 1 ? "good1" : "good2");
	cr_assert_eq(ln.n_tags, 1);
	STR_EQ(ln.tags[0].key, "t");
	STR_EQ(ln.tags[0].value, which == 1 ? "a" : "b");
	cr_assert_eq(ln.n_fields, 1);
	cr_assert_eq(ln.fields[0].type, TALLY_T_I64);
	cr_assert_eq(ln.fields[0].v.i64, which);
	cr_assert(ln.has_ts);
	cr_assert_eq(ln.ts, which * 100 * mult[ps.prec]);
}

/*
 * The bad text [bad, bad+n) must fail with this reason on the line where it
 * starts, and the good lines before and after it in the same buffer must
 * parse, the one after with the right line number. Tried with "\n" and
 * "\r\n" endings, and with the bad text last without a newline.
 */
static void bad_n(const char *bad, size_t n, const char *want, int want_code)
{
	static const char *eols[] = {"\n", "\r\n"};
	enum tally_precision prec = ps.prec;
	err(bad, n, want, want_code);
	for (int k = 0; k < 2; k++) {
		const char *eol = eols[k];
		char *buf = malloc(n + 64);
		size_t o = 0;
		o += (size_t)sprintf(buf, "good1,t=a v=1i 100%s", eol);
		memcpy(buf + o, bad, n);
		o += n;
		size_t tail = o;
		o += (size_t)sprintf(buf + o, "%sgood2,t=b v=2i 200%s", eol, eol);
		uint64_t bad_lines = count_lines(bad, n);

		lp_parser_reset(&ps, prec);
		const char *cur = buf, *end = buf + o;
		cr_assert_eq(next(&cur, end), LP_LINE);
		check_good(1, 1);
		cr_assert_eq(next(&cur, end), LP_ERROR, "'%.*s' not refused", (int)n, bad);
		cr_assert_eq(ps.line_no, 2);
		if (want)
			cr_assert_str_eq(reason, want);
		cr_assert_eq(code, want_code);
		cr_assert_eq(next(&cur, end), LP_LINE, "'%.*s' ate the next line: %s", (int)n, bad,
			     reason);
		check_good(2, 2 + bad_lines);
		cr_assert_eq(next(&cur, end), LP_END);
		cr_assert_eq(ps.line_no, 2 + bad_lines);
		cr_assert_eq(ps.lines, count_lines(buf, o));

		/* Bad text last, unterminated. */
		lp_parser_reset(&ps, prec);
		cur = buf;
		end = buf + tail;
		cr_assert_eq(next(&cur, end), LP_LINE);
		cr_assert_eq(next(&cur, end), LP_ERROR);
		if (want)
			cr_assert_str_eq(reason, want);
		cr_assert_eq(next(&cur, end), LP_END);
		cr_assert_eq(ps.lines, 1 + bad_lines);
		free(buf);
	}
	lp_parser_reset(&ps, prec);
}
#define BAD(s, want)       bad_n((s), strlen(s), (want), TALLY_ESYNTAX)
#define BAD_LIMIT(s, want) bad_n((s), strlen(s), (want), TALLY_ELIMIT)

/* n copies of c, in one of a few static buffers (n < 1024). */
static const char *rep(char c, size_t n)
{
	static char ring[4][1024];
	static unsigned k;
	char *s = ring[k++ % 4];
	cr_assert(n < sizeof ring[0]);
	memset(s, c, n);
	s[n] = 0;
	return s;
}

static char *repeat(char c, size_t n)
{
	char *s = malloc(n + 1);
	memset(s, c, n);
	s[n] = 0;
	return s;
}

/* ---------------------------------------------------------------- basics */

Test(lp, example_line_in_place)
{
	const char *s =
		"traffic,camera=KV00123,lane=2 speed=85.2,plate=\"AB123C\" 1700000000000000000";
	ONE(s);
	STR_EQ(ln.measurement, "traffic");
	cr_assert_eq(ln.measurement.p, s, "unescaped names point into the input");
	cr_assert_eq(ln.n_tags, 2);
	STR_EQ(ln.tags[0].key, "camera");
	STR_EQ(ln.tags[0].value, "KV00123");
	STR_EQ(ln.tags[1].key, "lane");
	STR_EQ(ln.tags[1].value, "2");
	cr_assert_eq(ln.n_fields, 2);
	STR_EQ(ln.fields[0].key, "speed");
	cr_assert_eq(ln.fields[0].type, TALLY_T_F64);
	cr_assert(ln.fields[0].v.f64 == 85.2);
	STR_EQ(ln.fields[1].key, "plate");
	cr_assert_eq(ln.fields[1].type, TALLY_T_STR);
	STR_EQ(ln.fields[1].v.str, "AB123C");
	cr_assert(ln.fields[1].v.str.p > s && ln.fields[1].v.str.p < s + strlen(s));
	cr_assert(ln.has_ts);
	cr_assert_eq(ln.ts, INT64_C(1700000000000000000));
	cr_assert_eq(ps.line_no, 1);
}

Test(lp, no_tags_no_timestamp)
{
	ONE("m f=1");
	STR_EQ(ln.measurement, "m");
	cr_assert_eq(ln.n_tags, 0);
	cr_assert_eq(ln.n_fields, 1);
	cr_assert(!ln.has_ts);
}

Test(lp, empty_input_is_end)
{
	const char *s = "";
	const char *cur = s;
	cr_assert_eq(lp_next(&ps, &cur, s, &ln, &code, reason, sizeof reason), LP_END);
	cr_assert_eq(ps.line_no, 0);
	cr_assert_eq(ps.lines, 0);
}

Test(lp, blank_comment_whitespace_crlf)
{
	const char *s = "\n"
			"# a comment, with = and \"quotes\\\n"
			"   # indented comment\n"
			"  \t \n"
			"\r\n"
			"  m,t=x f=1 5\r\n"
			"\tm f=2\n"
			"m#x f=3\n"
			"   ";
	const char *cur = s, *end = s + strlen(s);
	for (int i = 1; i <= 5; i++) {
		cr_assert_eq(next(&cur, end), LP_SKIP, "line %d", i);
		cr_assert_eq(ps.line_no, (uint64_t)i);
	}
	cr_assert_eq(next(&cur, end), LP_LINE);
	cr_assert_eq(ps.line_no, 6);
	STR_EQ(ln.measurement, "m");
	STR_EQ(ln.tags[0].value, "x");
	cr_assert_eq(ln.ts, 5);
	cr_assert_eq(next(&cur, end), LP_LINE);
	cr_assert_eq(ps.line_no, 7);
	cr_assert(ln.fields[0].v.f64 == 2.0);
	cr_assert_eq(next(&cur, end), LP_LINE);
	STR_EQ(ln.measurement, "m#x");
	cr_assert_eq(next(&cur, end), LP_SKIP);
	cr_assert_eq(ps.line_no, 9);
	cr_assert_eq(next(&cur, end), LP_END);
	cr_assert_eq(ps.line_no, 9, "after LP_END line_no is the line count");
	cr_assert_eq(ps.lines, 9);
}

Test(lp, separators_and_trailing_whitespace)
{
	ONE("m,t=1   f=1,g=2 \t 7 \t ");
	cr_assert_eq(ln.n_fields, 2);
	cr_assert_eq(ln.ts, 7);
	ONE("m f=1\t7");
	cr_assert_eq(ln.ts, 7);
	ONE("m f=\"s\"\t7\r");
	cr_assert_eq(ln.ts, 7);
	ONE("m f=1  ");
	cr_assert(!ln.has_ts);
	ONE("m f=1 \r\n");
	cr_assert(!ln.has_ts);
}

Test(lp, reset_restarts_numbering)
{
	const char *s = "m f=1\nm f=2\n";
	const char *cur = s, *end = s + strlen(s);
	next(&cur, end);
	next(&cur, end);
	cr_assert_eq(ps.line_no, 2);
	lp_parser_reset(&ps, TALLY_PREC_S);
	cur = s;
	cr_assert_eq(next(&cur, end), LP_LINE);
	cr_assert_eq(ps.line_no, 1);
	ONE("m f=1 3");
	cr_assert_eq(ln.ts, 3 * INT64_C(1000000000));
}

/* ---------------------------------------------------------------- escapes */

Test(lp, measurement_escapes)
{
	const char *s = "m\\,x\\ y=z f=1";
	ONE(s);
	STR_EQ(ln.measurement, "m,x y=z");
	cr_assert(ln.measurement.p < s || ln.measurement.p >= s + strlen(s),
		  "escaped names are unescaped into scratch");
	ONE("a=b f=1");
	STR_EQ(ln.measurement, "a=b");
	ONE("m\\=x f=1"); /* '=' is not escaped in a measurement */
	STR_EQ(ln.measurement, "m\\=x");
	ONE("m\\x\\\"y f=1");
	STR_EQ(ln.measurement, "m\\x\\\"y");
	/* A backslash before a backslash stands for itself; the second one
	 * then escapes the comma. */
	ONE("m\\\\,t=v f=1");
	STR_EQ(ln.measurement, "m\\,t=v");
	cr_assert_eq(ln.n_tags, 0);
	ONE("m\\\\x f=1");
	STR_EQ(ln.measurement, "m\\\\x");
	ONE("\\ lead f=1");
	STR_EQ(ln.measurement, " lead");
	ONE("\\#x f=1");
	STR_EQ(ln.measurement, "\\#x");
	ONE("caf\xC3\xA9\\ \xE6\x97\xA5 f=1");
	STR_EQ(ln.measurement, "caf\xC3\xA9 \xE6\x97\xA5");
}

Test(lp, tag_escapes)
{
	ONE("m,a\\,b\\=c\\ d=e\\,f\\=g\\ h f=1");
	cr_assert_eq(ln.n_tags, 1);
	STR_EQ(ln.tags[0].key, "a,b=c d");
	STR_EQ(ln.tags[0].value, "e,f=g h");
	ONE("m,k\\x=v\\y,k2=\\\"q\\\" f=1");
	STR_EQ(ln.tags[0].key, "k\\x");
	STR_EQ(ln.tags[0].value, "v\\y");
	STR_EQ(ln.tags[1].value, "\\\"q\\\"");
	ONE("m,k=a\\\\,b f=1"); /* "\\" literal, then "\," escaped */
	cr_assert_eq(ln.n_tags, 1);
	STR_EQ(ln.tags[0].value, "a\\,b");
	ONE("m,k=\"quoted\" f=1");
	STR_EQ(ln.tags[0].value, "\"quoted\"");
}

Test(lp, field_key_escapes)
{
	ONE("m a\\,b\\=c\\ d=1,x\\y=2,\"q\"=3");
	STR_EQ(ln.fields[0].key, "a,b=c d");
	STR_EQ(ln.fields[1].key, "x\\y");
	STR_EQ(ln.fields[2].key, "\"q\"");
}

Test(lp, string_escapes)
{
	ONE("m s=\"a\\\"b\\\\c\\d\\n\\t,x y=z\"");
	STR_EQ(ln.fields[0].v.str, "a\"b\\c\\d\\n\\t,x y=z");
	ONE("m s=\"\"");
	cr_assert_eq(ln.fields[0].v.str.n, 0);
	ONE("m s=\"\\\\\",t=1");
	STR_EQ(field("s")->v.str, "\\");
	cr_assert(field("t")->v.f64 == 1.0);
	ONE("m s=\"\xF0\x9F\x98\x80 \xC3\xA9\"");
	STR_EQ(ln.fields[0].v.str, "\xF0\x9F\x98\x80 \xC3\xA9");
	ONE("m s=\"a\\\"\" 5"); /* escaped quote just before the closing one */
	STR_EQ(ln.fields[0].v.str, "a\"");
	cr_assert_eq(ln.ts, 5);
}

Test(lp, string_escaped_newline)
{
	const char *s = "m s=\"one\\\ntwo\\\r\nthree\",n=1i 9\n"
			"m2 f=1\n";
	const char *cur = s, *end = s + strlen(s);
	cr_assert_eq(next(&cur, end), LP_LINE);
	cr_assert_eq(ps.line_no, 1);
	STR_EQ(ln.fields[0].v.str, "one\ntwo\nthree");
	cr_assert_eq(ln.fields[1].v.i64, 1);
	cr_assert_eq(ln.ts, 9);
	cr_assert_eq(next(&cur, end), LP_LINE);
	STR_EQ(ln.measurement, "m2");
	cr_assert_eq(ps.line_no, 4, "continuation lines count");
	cr_assert_eq(next(&cur, end), LP_END);
	cr_assert_eq(ps.lines, 4);
}

/* Found by fuzz_lp: an escaped newline as the very last byte of the input
 * was counted as one line too many. */
Test(lp, line_count_when_input_ends_in_escaped_newline)
{
	const char *s = "m f=1\nm s=\"a\\\n";
	const char *cur = s, *end = s + strlen(s);
	cr_assert_eq(next(&cur, end), LP_LINE);
	cr_assert_eq(next(&cur, end), LP_ERROR);
	cr_assert_str_eq(reason, "field 's': unterminated string");
	cr_assert_eq(ps.line_no, 2);
	cr_assert_eq(next(&cur, end), LP_END);
	cr_assert_eq(ps.lines, 2);
	cr_assert_eq(ps.line_no, 2);
}

Test(lp, bad_escape_at_end_of_line)
{
	BAD("m\\", "bad escape at end of line");
	BAD("m,t=a\\", "bad escape at end of line");
	BAD("m,t\\", "bad escape at end of line");
	BAD("m f\\", "bad escape at end of line");
	/* "\\\r" ends the line only when no "\r\n" follows */
	err("m\\\r", 3, "bad escape at end of line", TALLY_ESYNTAX);
}

/* ---------------------------------------------------------------- values */

Test(lp, bools)
{
	static const char *yes[] = {"t", "T", "true", "True", "TRUE"};
	static const char *no[] = {"f", "F", "false", "False", "FALSE"};
	char buf[64];
	for (int i = 0; i < 5; i++) {
		snprintf(buf, sizeof buf, "m b=%s,c=%s", yes[i], no[i]);
		ONE(buf);
		cr_assert_eq(field("b")->type, TALLY_T_BOOL);
		cr_assert_eq(field("b")->v.b, 1, "%s", yes[i]);
		cr_assert_eq(field("c")->type, TALLY_T_BOOL);
		cr_assert_eq(field("c")->v.b, 0, "%s", no[i]);
	}
	static const char *bad[] = {"tRUE", "tRue", "truE", "fALSE", "FAlse", "tru",  "fals",
				    "yes",  "no",   "on",   "t1",    "trues", "TRUe", "falsE"};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		char want[80];
		snprintf(buf, sizeof buf, "m b=%s", bad[i]);
		snprintf(want, sizeof want, "field 'b': invalid value '%s'", bad[i]);
		BAD(buf, want);
	}
}

Test(lp, integers)
{
	ONE("m a=0i,b=-0i,c=12i,d=-12i,e=007i,f=9223372036854775807i,g=-9223372036854775808i");
	cr_assert_eq(field("a")->type, TALLY_T_I64);
	cr_assert_eq(field("a")->v.i64, 0);
	cr_assert_eq(field("b")->v.i64, 0);
	cr_assert_eq(field("c")->v.i64, 12);
	cr_assert_eq(field("d")->v.i64, -12);
	cr_assert_eq(field("e")->v.i64, 7);
	cr_assert_eq(field("f")->v.i64, INT64_MAX);
	cr_assert_eq(field("g")->v.i64, INT64_MIN);
	ONE("m "
	    "a=0u,b=12u,c=18446744073709551615u,d=000000000000000000000000018446744073709551615u");
	cr_assert_eq(field("a")->type, TALLY_T_U64);
	cr_assert_eq(field("a")->v.u64, 0);
	cr_assert_eq(field("b")->v.u64, 12);
	cr_assert_eq(field("c")->v.u64, UINT64_MAX);
	cr_assert_eq(field("d")->v.u64, UINT64_MAX);
	ONE("m a=9223372036854775808u,b=10000000000000000000u");
	cr_assert_eq(field("a")->v.u64, UINT64_C(9223372036854775808));
	cr_assert_eq(field("b")->v.u64, UINT64_C(10000000000000000000));

	BAD("m a=9223372036854775808i", "field 'a': number out of range '9223372036854775808i'");
	BAD("m a=-9223372036854775809i", "field 'a': number out of range '-9223372036854775809i'");
	BAD("m a=18446744073709551616u", "field 'a': number out of range '18446744073709551616u'");
	BAD("m a=99999999999999999999999i",
	    "field 'a': number out of range '99999999999999999999999i'");
	BAD("m a=-1u", "field 'a': invalid number '-1u'");
	BAD("m a=-0u", "field 'a': invalid number '-0u'");
	BAD("m a=+1i", "field 'a': invalid number '+1i'");
	BAD("m a=1.0i", "field 'a': invalid number '1.0i'");
	BAD("m a=1e3i", "field 'a': invalid number '1e3i'");
	BAD("m a=i", "field 'a': invalid value 'i'");
	BAD("m a=u", "field 'a': invalid value 'u'");
	BAD("m a=-i", "field 'a': invalid number '-i'");
	BAD("m a=1ii", "field 'a': invalid number '1ii'");
	BAD("m a=1i2", "field 'a': invalid number '1i2'");
	BAD("m a=1iu", "field 'a': invalid number '1iu'");
	BAD("m a=1I", "field 'a': invalid number '1I'");
	BAD("m a=0x1fi", "field 'a': invalid number '0x1fi'");
}

static void float_ok(const char *text, double want)
{
	char buf[512];
	snprintf(buf, sizeof buf, "m x=%s", text);
	ONE(buf);
	cr_assert_eq(ln.fields[0].type, TALLY_T_F64, "%s", text);
	double got = ln.fields[0].v.f64;
	cr_assert(memcmp(&got, &want, sizeof got) == 0, "%s: got %a want %a", text, got, want);
	/* and the C library agrees, bit for bit */
	double ref = strtod(text, NULL);
	cr_assert(memcmp(&got, &ref, sizeof got) == 0, "%s: got %a strtod %a", text, got, ref);
}

Test(lp, floats_exact)
{
	float_ok("85.2", 85.2);
	float_ok("0.1", 0.1);
	float_ok("-1.5", -1.5);
	float_ok("1", 1.0);
	float_ok("0", 0.0);
	float_ok("-0.0", -0.0);
	float_ok("-0", -0.0);
	float_ok("1.", 1.0);
	float_ok(".5", 0.5);
	float_ok("-.5", -0.5);
	float_ok("1e5", 1e5);
	float_ok("1E-5", 1e-5);
	float_ok("1e+5", 1e5);
	float_ok("1.e2", 100.0);
	float_ok("1e308", 1e308);
	float_ok("1.7976931348623157e308", 1.7976931348623157e308);
	float_ok("4.9e-324", 0x1p-1074);
	float_ok("2.4703282292062328e-324", 0x1p-1074);
	float_ok("2.2250738585072014e-308", 2.2250738585072014e-308);
	float_ok("0e999999999999", 0.0);
	float_ok("-0e5", -0.0);
	float_ok("1e22", 1e22);
	float_ok("1e23", 1e23);
	float_ok("9007199254740992", 9007199254740992.0);
	float_ok("9007199254740993", 9007199254740992.0); /* ties to even */
	float_ok("9007199254740995", 9007199254740996.0);
	float_ok("0.30000000000000004", 0.30000000000000004);
	float_ok("123456789012345678901234567890", 123456789012345678901234567890.0);
	float_ok("3.14159265358979323846264338327950288", 3.14159265358979323846264338327950288);
	float_ok("000001.5", 1.5);
	float_ok("0.000000000000000000000000000001", 1e-30);
	float_ok("1.5e0000000000000000010", 1.5e10);
	float_ok("17976931348623157e292", 1.7976931348623157e308);
	float_ok("8.98846567431158e307", 8.98846567431158e307);
	float_ok("1234567.1234567e-20", 1234567.1234567e-20);
	float_ok("4.35679e-10", 4.35679e-10);
}

Test(lp, floats_locale_independent)
{
	/* A decimal-comma locale must not change parsing (strtod_l in "C"). */
	const char *loc = setlocale(LC_NUMERIC, "de_DE.UTF-8");
	if (!loc)
		loc = setlocale(LC_NUMERIC, "fr_FR.UTF-8");
	ONE("m x=123456789012345678901234.5");
	cr_assert(ln.fields[0].v.f64 == 123456789012345678901234.5);
	ONE("m x=1.5e300");
	cr_assert(ln.fields[0].v.f64 == 1.5e300);
	setlocale(LC_NUMERIC, "C");
}

Test(lp, floats_bad)
{
	static const struct {
		const char *v, *why;
	} bad[] = {
		{"1e309", "number out of range"},
		{"-1e309", "number out of range"},
		{"1e99999999999999", "number out of range"},
		/* nonzero but nearer 0 than the least subnormal: not a silent 0 */
		{"1e-400", "number too small, would be stored as 0"},
		{"-1e-400", "number too small, would be stored as 0"},
		{"2.4e-324", "number too small, would be stored as 0"},
		{"0.1e-99999999999999999999", "number too small, would be stored as 0"},
		{"0.00000000000000000001e-310", "number too small, would be stored as 0"},
		{"8x.2", "invalid number"},
		{"+1", "invalid number"},
		{"+1.5", "invalid number"},
		{".", "invalid number"},
		{"-", "invalid number"},
		{"-.", "invalid number"},
		{".e5", "invalid number"},
		{"1e", "invalid number"},
		{"1e+", "invalid number"},
		{"1e-", "invalid number"},
		{"1.2.3", "invalid number"},
		{"0x10", "invalid number"},
		{"1_000", "invalid number"},
		{"--1", "invalid number"},
		{"1e5.5", "invalid number"},
		{"1d", "invalid number"},
		{"-inf", "invalid number"},
		{"-nan", "invalid number"},
		{"1.5f", "invalid number"},
		{"NaN", "invalid value"},
		{"nan", "invalid value"},
		{"inf", "invalid value"},
		{"Inf", "invalid value"},
		{"Infinity", "invalid value"},
		{"e5", "invalid value"},
		{"abc", "invalid value"},
		{"1.0\"", "invalid number"},
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		char buf[128], want[160];
		snprintf(buf, sizeof buf, "m speed=%s", bad[i].v);
		snprintf(want, sizeof want, "field 'speed': %s '%s'", bad[i].why, bad[i].v);
		BAD(buf, want);
		snprintf(buf, sizeof buf, "m speed=%s,other=1 5", bad[i].v);
		BAD(buf, want);
	}
}

Test(lp, field_value_types_mixed)
{
	ONE("m f=1.5,i=2i,u=3u,b=t,s=\"x\"");
	cr_assert_eq(field("f")->type, TALLY_T_F64);
	cr_assert_eq(field("i")->type, TALLY_T_I64);
	cr_assert_eq(field("u")->type, TALLY_T_U64);
	cr_assert_eq(field("b")->type, TALLY_T_BOOL);
	cr_assert_eq(field("s")->type, TALLY_T_STR);
}

/* ---------------------------------------------------------------- timestamps */

Test(lp, timestamps_and_precision)
{
	static const struct {
		enum tally_precision prec;
		int64_t mult;
	} p[] = {{TALLY_PREC_NS, 1},
		 {TALLY_PREC_US, 1000},
		 {TALLY_PREC_MS, 1000000},
		 {TALLY_PREC_S, 1000000000}};
	char buf[128];
	for (int i = 0; i < 4; i++) {
		lp_parser_reset(&ps, p[i].prec);
		ONE("m f=1 17");
		cr_assert_eq(ln.ts, 17 * p[i].mult);
		ONE("m f=1 -17");
		cr_assert_eq(ln.ts, -17 * p[i].mult);
		ONE("m f=1 0");
		cr_assert_eq(ln.ts, 0);
		ONE("m f=1");
		cr_assert(!ln.has_ts);
		int64_t hi = LP_TS_MAX / p[i].mult, lo = LP_TS_MIN / p[i].mult;
		snprintf(buf, sizeof buf, "m f=1 %" PRId64, hi);
		ONE(buf);
		cr_assert_eq(ln.ts, hi * p[i].mult);
		snprintf(buf, sizeof buf, "m f=1 %" PRId64, lo);
		ONE(buf);
		cr_assert_eq(ln.ts, lo * p[i].mult);
		snprintf(buf, sizeof buf, "m f=1 %" PRId64, hi + 1);
		BAD(buf, "timestamp out of range");
		lp_parser_reset(&ps, p[i].prec);
		snprintf(buf, sizeof buf, "m f=1 %" PRId64, lo - 1);
		BAD(buf, "timestamp out of range");
		lp_parser_reset(&ps, p[i].prec);
		BAD("m f=1 99999999999999999999", "timestamp out of range");
		lp_parser_reset(&ps, p[i].prec);
		BAD("m f=1 -99999999999999999999", "timestamp out of range");
	}
	lp_parser_reset(&ps, TALLY_PREC_NS);
	ONE("m f=1 9223372036854775806");
	cr_assert_eq(ln.ts, LP_TS_MAX);
	ONE("m f=1 -9223372036854775806");
	cr_assert_eq(ln.ts, LP_TS_MIN);
	ONE("m f=1 0001");
	cr_assert_eq(ln.ts, 1);
	BAD("m f=1 9223372036854775807", "timestamp out of range");
	BAD("m f=1 -9223372036854775807", "timestamp out of range");
	BAD("m f=1 -9223372036854775808", "timestamp out of range");
	BAD("m f=1 9223372036854775808", "timestamp out of range");
	BAD("m f=1 18446744073709551616", "timestamp out of range");
}

/* Timestamps of every length from 1 to 20 digits, some with a stray byte
 * at every position: the parser reads 8 digits at a time where it can, so
 * the word boundaries and the bytes around them must behave exactly like
 * a digit-by-digit reading (the reference here). */
Test(lp, timestamps_every_length_and_stray_byte)
{
	static const char strays[] = "a/:.e+, \t\r=\\\x80";
	char ts[32], line[64];
	srand(7);
	for (int iter = 0; iter < 20000; iter++) {
		int nd = 1 + rand() % 20, neg = rand() % 4 == 0;
		for (int i = 0; i < nd; i++)
			ts[i] = (char)('0' + rand() % 10);
		ts[nd] = 0;
		int stray = rand() % 3 == 0 ? rand() % nd : -1;
		if (stray >= 0)
			ts[stray] = strays[rand() % (sizeof strays - 1)];
		int n = snprintf(line, sizeof line, "m f=1 %s%s", neg ? "-" : "", ts);
		/* the reference: digit by digit, with the parser's own range; a
		 * blank at the end is trailing whitespace, not part of it */
		const char *v = ts;
		int nv = nd;
		if (stray == 0 && !neg && (ts[0] == ' ' || ts[0] == '\t'))
			v++, nv--; /* one more separator */
		else if (stray == nd - 1 && strchr(" \t\r", ts[stray]))
			nv--;
		int digits_only = strspn(v, "0123456789") == (size_t)nv;
		uint64_t m = 0;
		int ovf = 0;
		for (int i = 0; digits_only && i < nv; i++)
			ovf |= __builtin_mul_overflow(m, 10, &m) |
			       __builtin_add_overflow(m, (uint64_t)(v[i] - '0'), &m);
		const char *cur = line, *end = line + n;
		enum lp_result r = lp_next(&ps, &cur, end, &ln, &code, reason, sizeof reason);
		if (!digits_only) {
			cr_assert_eq(r, LP_ERROR, "'%s' accepted", line);
			continue;
		}
		if (nv == 0 && !neg) {
			cr_assert_eq(r, LP_LINE, "'%s': %s", line, reason);
			cr_assert(!ln.has_ts);
			continue;
		}
		if (nv == 0) {
			cr_assert_eq(r, LP_ERROR, "'%s' accepted", line);
			continue;
		}
		if (ovf || m > (uint64_t)LP_TS_MAX) {
			cr_assert_eq(r, LP_ERROR, "'%s' accepted", line);
			cr_assert_str_eq(reason, "timestamp out of range");
			continue;
		}
		cr_assert_eq(r, LP_LINE, "'%s': %s", line, reason);
		cr_assert(ln.has_ts);
		cr_assert_eq(ln.ts, neg ? -(int64_t)m : (int64_t)m, "'%s'", line);
	}
}

/* Names of every length up to 40 bytes with a special byte at every
 * position: the 16-byte scanner stops where the byte-wise one would. */
Test(lp, names_every_length_and_special_byte)
{
	static const char specials[] = ", =\\\t\x80\xC3\xA9";
	char name[48], line[128];
	srand(11);
	for (int iter = 0; iter < 20000; iter++) {
		int n = 1 + rand() % 40;
		for (int i = 0; i < n; i++)
			name[i] = (char)('a' + rand() % 26);
		int at = rand() % n;
		char sp = specials[rand() % (sizeof specials - 1)];
		name[at] = sp;
		name[n] = 0;
		/* as a tag value: ',' '=' ' ' end it; "\" escapes the next byte */
		int k = snprintf(line, sizeof line, "m,t=%s f=1 5", name);
		const char *cur = line, *end = line + k;
		enum lp_result r = lp_next(&ps, &cur, end, &ln, &code, reason, sizeof reason);
		if (sp == ',' || sp == '=' || sp == ' ' || (sp == '\\' && at == n - 1)) {
			/* the value ends early or is malformed; either way it is not
			 * the whole name */
			cr_assert(r == LP_ERROR || ln.n_tags != 1 ||
					  ln.tags[0].value.n != (uint32_t)n,
				  "'%s'", line);
			continue;
		}
		if ((unsigned char)sp >= 0x80 && !lp_utf8_valid(name, (size_t)n)) {
			cr_assert_eq(r, LP_ERROR, "'%s' accepted", line);
			cr_assert(strstr(reason, "invalid UTF-8"), "%s", reason);
			continue;
		}
		cr_assert_eq(r, LP_LINE, "'%s': %s", line, reason);
		cr_assert_eq(ln.n_tags, 1);
		/* a backslash before an ordinary letter stands for itself */
		STR_EQ(ln.tags[0].value, name);
		cr_assert_eq(ln.ts, 5);
	}
}

Test(lp, timestamps_bad)
{
	BAD("m f=1 abc", "invalid timestamp 'abc'");
	BAD("m f=1 12a", "invalid timestamp '12a'");
	BAD("m f=1 +5", "invalid timestamp '+5'");
	BAD("m f=1 -", "invalid timestamp '-'");
	BAD("m f=1 1.5", "invalid timestamp '1.5'");
	BAD("m f=1 1e9", "invalid timestamp '1e9'");
	BAD("m f=1 --5", "invalid timestamp '--5'");
	BAD("m f=1 5,6", "invalid timestamp '5,6'");
	BAD("m f=1 5\r6", "invalid timestamp '5\\x0D6'");
	BAD("m f=1 123 456", "unexpected text after timestamp '456'");
	BAD("m f=1 123 x y", "unexpected text after timestamp 'x y'");
	BAD("m f=1 123\t#", "unexpected text after timestamp '#'");
}

/* ---------------------------------------------------------------- malformed */

Test(lp, missing_parts)
{
	BAD("m", "missing fields");
	BAD("m ", "missing fields");
	BAD("m  \t ", "missing fields");
	BAD("m,t=1", "missing fields");
	BAD("m,t=1 ", "missing fields");
	BAD("m f=", "field 'f': missing value");
	BAD("m f= 5", "field 'f': missing value");
	BAD("m f=,g=1", "field 'f': missing value");
	BAD("m f=1,g=", "field 'g': missing value");
	BAD("m f", "field 'f': missing '='");
	BAD("m f 5", "field 'f': missing '='");
	BAD("m f=1,g", "field 'g': missing '='");
	BAD("m f=1,g,h=2", "field 'g': missing '='");
	BAD("m =1", "empty field key");
	BAD("m f=1,", "empty field key");
	BAD("m f=1,,g=2", "empty field key");
	BAD("m f=1, 5", "empty field key");
	BAD("m ,f=1", "empty field key");
	BAD(",t=1 f=1", "empty measurement");
	BAD(", f=1", "empty measurement");
	BAD("m,=v f=1", "empty tag key");
	BAD("m, f=1", "empty tag key");
	BAD("m,t=1, f=1", "empty tag key");
	BAD("m,t=1,,u=2 f=1", "empty tag key");
	BAD("m,t= f=1", "tag 't': empty value");
	BAD("m,lane=,x=1 f=1", "tag 'lane': empty value");
	BAD("m,t f=1", "tag 't': missing '='");
	BAD("m,t,u=1 f=1", "tag 't': missing '='");
	BAD("m,t", "tag 't': missing '='");
	BAD("m,t=a=b f=1", "tag 't': unescaped '=' in value");
}

Test(lp, unterminated_and_bad_strings)
{
	BAD("m plate=\"abc", "field 'plate': unterminated string");
	BAD("m plate=\"abc 123", "field 'plate': unterminated string");
	BAD("m plate=\"abc\\\"", "field 'plate': unterminated string");
	BAD("m plate=\"", "field 'plate': unterminated string");
	err("m plate=\"ab\\\r", 13, "field 'plate': unterminated string", TALLY_ESYNTAX);
	BAD("m plate=\"a\"b", "field 'plate': unexpected text after string 'b'");
	BAD("m plate=\"a\"\"b\"", "field 'plate': unexpected text after string '\"b\"'");
	BAD("m plate=\"a\"b 5", "field 'plate': unexpected text after string 'b'");
	/* An unterminated string may span escaped newlines; the raw one ends it. */
	BAD("m s=\"abc\\\ndef", "field 's': unterminated string");
	BAD("m s=\"a\\\n\\\nb\\\r\nc", "field 's': unterminated string");
}

Test(lp, error_line_with_escaped_newline_later)
{
	/* The bad number comes first, but the string after it still spans two
	 * physical lines: the good line is the third. */
	const char *s = "m f=8x.2,s=\"a\\\nb\"\nm f=1\n";
	const char *cur = s, *end = s + strlen(s);
	cr_assert_eq(next(&cur, end), LP_ERROR);
	cr_assert_str_eq(reason, "field 'f': invalid number '8x.2'");
	cr_assert_eq(ps.line_no, 1);
	cr_assert_eq(next(&cur, end), LP_LINE);
	cr_assert_eq(ps.line_no, 3);
	cr_assert_eq(next(&cur, end), LP_END);
	BAD("m,t= s=\"a\\\nb\"", "tag 't': empty value");
	BAD("m f=1,f=2,s=\"a\\\nb\"", "duplicate field 'f'");
	/* After the fields nothing is quoted: the raw newline ends the line. */
	s = "m f=1 1 x\"a\\\nm f=2";
	cur = s;
	end = s + strlen(s);
	cr_assert_eq(next(&cur, end), LP_ERROR);
	cr_assert_str_eq(reason, "unexpected text after timestamp 'x\"a\\'");
	cr_assert_eq(next(&cur, end), LP_LINE);
	cr_assert_eq(ps.line_no, 2);
}

Test(lp, duplicates)
{
	BAD("m speed=1,speed=2", "duplicate field 'speed'");
	BAD("m speed=1,a=2,b=\"x\",speed=t", "duplicate field 'speed'");
	BAD("m a\\ b=1,a\\ b=2", "duplicate field 'a b'");
	BAD("m,lane=1,lane=2 f=1", "duplicate tag 'lane'");
	BAD("m,lane=1,x=1,lane=1 f=1", "duplicate tag 'lane'");
	BAD("m,a\\,b=1,a\\,b=2 f=1", "duplicate tag 'a,b'");
	ONE("m,a=1,A=2 a=1,A=2,aa=3");
	cr_assert_eq(ln.n_tags, 2);
	cr_assert_eq(ln.n_fields, 3);
	ONE("m,x=1 x=1"); /* a tag and a field may share a name here */
}

static char *many(const char *fmt_first, const char *fmt, int n, int dup_at)
{
	size_t cap = 64 + (size_t)n * 24;
	char *s = malloc(cap);
	size_t o = (size_t)sprintf(s, "%s", fmt_first);
	for (int i = 0; i < n; i++)
		o += (size_t)sprintf(s + o, fmt, i == 0 ? "" : ",", i == dup_at ? 3 : i);
	return s;
}

Test(lp, counts_and_big_duplicates)
{
	char *s, *t;
	/* 256 tags fine, 257 too many */
	s = many("m,", "%st%d=v", LP_TAGS_MAX, -1);
	t = malloc(strlen(s) + 16);
	sprintf(t, "%s f=1", s);
	ONE(t);
	cr_assert_eq(ln.n_tags, LP_TAGS_MAX);
	STR_EQ(ln.tags[255].key, "t255");
	free(s);
	free(t);
	s = many("m,", "%st%d=v", LP_TAGS_MAX + 1, -1);
	t = malloc(strlen(s) + 16);
	sprintf(t, "%s f=1", s);
	BAD_LIMIT(t, "too many tags (max 256)");
	free(s);
	free(t);
	s = many("m,", "%st%d=v", 200, 150);
	t = malloc(strlen(s) + 16);
	sprintf(t, "%s f=1", s);
	BAD(t, "duplicate tag 't3'");
	free(s);
	free(t);

	s = many("m ", "%sf%d=1i", LP_FIELDS_MAX, -1);
	ONE(s);
	cr_assert_eq(ln.n_fields, LP_FIELDS_MAX);
	STR_EQ(ln.fields[1023].key, "f1023");
	cr_assert_eq(ln.fields[1023].v.i64, 1);
	free(s);
	s = many("m ", "%sf%d=1i", LP_FIELDS_MAX + 1, -1);
	BAD_LIMIT(s, "too many fields (max 1024)");
	free(s);
	s = many("m ", "%sf%d=1i", LP_FIELDS_MAX, LP_FIELDS_MAX - 1);
	BAD(s, "duplicate field 'f3'");
	free(s);
	s = many("m ", "%sf%d=1i", 9, 8);
	BAD(s, "duplicate field 'f3'");
	free(s);
	s = many("m ", "%sf%d=1i", 9, 4);
	BAD(s, "duplicate field 'f3'");
	free(s);
}

/* ---------------------------------------------------------------- lengths */

Test(lp, name_lengths)
{
	char *n255 = repeat('n', LP_NAME_MAX), *n256 = repeat('n', LP_NAME_MAX + 1);
	char buf[2048];
	snprintf(buf, sizeof buf, "%s f=1", n255);
	ONE(buf);
	cr_assert_eq(ln.measurement.n, 255);
	snprintf(buf, sizeof buf, "%s f=1", n256);
	BAD_LIMIT(buf, "measurement longer than 255 bytes");
	snprintf(buf, sizeof buf, "m,%s=v f=1", n255);
	ONE(buf);
	snprintf(buf, sizeof buf, "m,%s=v f=1", n256);
	BAD_LIMIT(buf, "tag key longer than 255 bytes");
	snprintf(buf, sizeof buf, "m %s=1", n255);
	ONE(buf);
	snprintf(buf, sizeof buf, "m %s=1", n256);
	BAD_LIMIT(buf, "field key longer than 255 bytes");
	/* Lengths count unescaped bytes: 255 escaped commas are fine. */
	size_t o = 0;
	for (int i = 0; i < LP_NAME_MAX; i++)
		o += (size_t)sprintf(buf + o, "\\,");
	sprintf(buf + o, " f=1");
	ONE(buf);
	cr_assert_eq(ln.measurement.n, 255);
	/* 254 plus a 2-byte character is 256 bytes */
	snprintf(buf, sizeof buf, "m %.*s\xC3\xA9=1", LP_NAME_MAX - 1, n255);
	BAD_LIMIT(buf, "field key longer than 255 bytes");
	free(n255);
	free(n256);
}

Test(lp, value_lengths)
{
	char *v = repeat('v', LP_VALUE_MAX + 1);
	char *buf = malloc(LP_VALUE_MAX + 64);
	sprintf(buf, "m,t=%.*s f=1", LP_VALUE_MAX, v);
	ONE(buf);
	cr_assert_eq(ln.tags[0].value.n, LP_VALUE_MAX);
	sprintf(buf, "m,t=%s f=1", v);
	BAD_LIMIT(buf, "tag 't': value longer than 65535 bytes");
	sprintf(buf, "m s=\"%.*s\"", LP_VALUE_MAX, v);
	ONE(buf);
	cr_assert_eq(ln.fields[0].v.str.n, LP_VALUE_MAX);
	sprintf(buf, "m s=\"%s\"", v);
	BAD_LIMIT(buf, "field 's': string longer than 65535 bytes");
	/* escapes shrink: 65535 escaped quotes are 65535 bytes */
	free(buf);
	buf = malloc(2 * LP_VALUE_MAX + 64);
	size_t o = (size_t)sprintf(buf, "m s=\"");
	for (int i = 0; i < LP_VALUE_MAX; i++) {
		buf[o++] = '\\';
		buf[o++] = '"';
	}
	sprintf(buf + o, "\"");
	ONE(buf);
	cr_assert_eq(ln.fields[0].v.str.n, LP_VALUE_MAX);
	cr_assert_eq(ln.fields[0].v.str.p[0], '"');
	free(buf);
	free(v);
}

static void init_max(uint32_t max_line)
{
	lp_parser_free(&ps);
	cr_assert_eq(lp_parser_init(&ps, max_line, TALLY_PREC_NS), 0);
	cr_assert_eq(ps.max_line, max_line);
}

/* A line of exactly n bytes: "m f=1,s=\"xxx...\"" */
static char *line_of(size_t n)
{
	char *s = malloc(n + 1);
	size_t o = (size_t)sprintf(s, "m f=1,s=\"");
	while (o < n - 1)
		s[o++] = 'x';
	s[o++] = '"';
	s[o] = 0;
	return s;
}

Test(lp, overlong_lines)
{
	init_max(64);
	char *ok = line_of(64), *over = line_of(65), buf[1024];
	ONE(ok);
	snprintf(buf, sizeof buf, "%s\r\n", ok);
	ONE(buf);
	BAD_LIMIT(over, "line longer than 64 bytes");
	/* Overlong whatever else is wrong with it. */
	snprintf(buf, sizeof buf, "m f=8x,%s", over);
	BAD_LIMIT(buf, "line longer than 64 bytes");
	snprintf(buf, sizeof buf, "%s", rep('m', 200));
	BAD_LIMIT(buf, "line longer than 64 bytes");
	snprintf(buf, sizeof buf, "%s m", rep(' ', 100));
	BAD_LIMIT(buf, "line longer than 64 bytes");
	snprintf(buf, sizeof buf, "m f=1 %s", rep('1', 100));
	BAD_LIMIT(buf, "line longer than 64 bytes");
	snprintf(buf, sizeof buf, "m f=1,g=%s", rep('1', 100));
	BAD_LIMIT(buf, "line longer than 64 bytes");
	snprintf(buf, sizeof buf, "m f=1,g=%s5", rep(' ', 100));
	BAD_LIMIT(buf, "line longer than 64 bytes");
	/* The bound cuts a token off: the rest must not pass for a good line. */
	snprintf(buf, sizeof buf, "m,t=v f=1,g=\"%s\" 5", rep('z', 49)); /* 65: ts cut */
	BAD_LIMIT(buf, "line longer than 64 bytes");
	snprintf(buf, sizeof buf, "m,t=v f=1,g=\"%s\" 5", rep('z', 48)); /* 64 */
	ONE(buf);
	cr_assert_eq(ln.ts, 5);
	snprintf(buf, sizeof buf, "m,t=v f=1,g=\"%s\"", rep('z', 51)); /* string cut */
	BAD_LIMIT(buf, "line longer than 64 bytes");
	snprintf(buf, sizeof buf, "m,t=v f=1,g=%s", rep('7', 53)); /* 65: number cut */
	BAD_LIMIT(buf, "line longer than 64 bytes");
	snprintf(buf, sizeof buf, "m,t=v f=1,g=%s12i", rep('0', 50)); /* 65: "i" cut */
	BAD_LIMIT(buf, "line longer than 64 bytes");
	snprintf(buf, sizeof buf, "m,t=v f=1,g=%s12i", rep('0', 49)); /* 64 */
	ONE(buf);
	cr_assert_eq(ln.fields[1].v.i64, 12);
	snprintf(buf, sizeof buf, "m,t=v f=1,g=%strue", rep(' ', 48)); /* 64: no value */
	BAD(buf, "field 'g': missing value");
	snprintf(buf, sizeof buf, "m,%s=\\,x f=1", rep('k', 60)); /* escape cut */
	BAD_LIMIT(buf, "line longer than 64 bytes");
	snprintf(buf, sizeof buf, "m,t=v f=1 5%s\r\n", rep(' ', 53)); /* 64 + CRLF */
	ONE(buf);
	snprintf(buf, sizeof buf, "m,t=v f=1 5%s\rx", rep(' ', 52)); /* 64: CR then x */
	BAD_LIMIT(buf, "line longer than 64 bytes");
	snprintf(buf, sizeof buf, "m,t=v f=1,%s=\"z\\\nz\\\nz\" 5", rep('k', 50));
	BAD_LIMIT(buf, "line longer than 64 bytes");
	snprintf(buf, sizeof buf, "m f=1,s=\"%s\\\n%s\\\n%s\",g=2", rep('z', 40), rep('z', 40),
		 rep('z', 40));
	BAD_LIMIT(buf, "line longer than 64 bytes");
	snprintf(buf, sizeof buf, "m f=8x,s=\"%s\\\n%s\\\n%s\",g=2", rep('z', 40), rep('z', 40),
		 rep('z', 40));
	BAD_LIMIT(buf, "line longer than 64 bytes");
	snprintf(buf, sizeof buf, "m,t=v f=1 %s", rep('5', 54)); /* 64: ts out of range */
	BAD(buf, "timestamp out of range");
	snprintf(buf, sizeof buf, "m,t=v f=1,g=-%s", rep('5', 51)); /* 64 bytes */
	ONE(buf);
	snprintf(buf, sizeof buf, "m,t=v f=1,g=%se5", rep('5', 50)); /* 64 bytes */
	ONE(buf);
	snprintf(buf, sizeof buf, "m,t=v f=1,g=%se5", rep('5', 51)); /* 65 bytes */
	BAD_LIMIT(buf, "line longer than 64 bytes");
	/* Whitespace-only lines and comments are skipped whatever their size. */
	snprintf(buf, sizeof buf, "#%s\n%s\nm f=1", rep('c', 300), rep(' ', 300));
	const char *cur = buf, *end = buf + strlen(buf);
	cr_assert_eq(next(&cur, end), LP_SKIP);
	cr_assert_eq(next(&cur, end), LP_SKIP);
	cr_assert_eq(next(&cur, end), LP_LINE);
	cr_assert_eq(ps.line_no, 3);
	free(ok);
	free(over);
}

Test(lp, overlong_lines_default_limit)
{
	/* A 3 MiB line, then a good one. */
	size_t n = 3u << 20;
	char *buf = malloc(n + 64);
	size_t o = (size_t)sprintf(buf, "m f=1,s=\"");
	memset(buf + o, 'x', n);
	o += n;
	o += (size_t)sprintf(buf + o, "\"\nm f=2\n");
	const char *cur = buf, *end = buf + o;
	cr_assert_eq(next(&cur, end), LP_ERROR);
	cr_assert_str_eq(reason, "line longer than 1048576 bytes");
	cr_assert_eq(code, TALLY_ELIMIT);
	cr_assert_eq(next(&cur, end), LP_LINE);
	cr_assert_eq(ps.line_no, 2);
	free(buf);
}

Test(lp, limit_exact_with_escapes_fills_scratch)
{
	/* Lines exactly at the limit, all escapes, and a long strtod float:
	 * everything copied must fit in scratch (ASan checks). */
	init_max(100);
	char buf[256];
	size_t o = 0;
	for (int i = 0; i < 48; i++)
		o += (size_t)sprintf(buf + o, "\\ ");
	o += (size_t)sprintf(buf + o, " f=1");
	cr_assert_eq(o, 100);
	ONE(buf);
	cr_assert_eq(ln.measurement.n, 48);
	o = (size_t)sprintf(buf, "m\\  s=\"");
	while (o < 98) {
		buf[o++] = '\\';
		buf[o++] = '\\';
	}
	buf[o++] = '"';
	buf[o] = 0;
	cr_assert_eq(o, 100);
	ONE(buf);
	cr_assert_eq(ln.fields[0].v.str.n, 46);
	o = 0;
	for (int i = 0; i < 20; i++)
		o += (size_t)sprintf(buf + o, "\\,");
	o += (size_t)sprintf(buf + o, " f=");
	while (o < 99)
		buf[o++] = '1';
	buf[o++] = '5';
	buf[o] = 0;
	ONE(buf); /* a 57-digit float: strtod copy after 20 scratch bytes */
	cr_assert_eq(ln.fields[0].type, TALLY_T_F64);
	cr_assert(ln.fields[0].v.f64 == strtod(buf + 43, NULL));
}

/* ---------------------------------------------------------------- UTF-8 */

Test(lp, utf8_validator)
{
	static const char *good[] = {"",
				     "abc",
				     "\xC2\xA0",
				     "\xDF\xBF",
				     "\xE0\xA0\x80",
				     "\xED\x9F\xBF",
				     "\xEE\x80\x80",
				     "\xEF\xBF\xBF",
				     "\xF0\x90\x80\x80",
				     "\xF4\x8F\xBF\xBF",
				     "0123456789abcdef\xC3\xA9xyz0123456789"};
	static const char *bad[] = {
		"\x80",
		"\xBF",
		"\xC0\x80",
		"\xC1\xBF",
		"\xC2",
		"\xC2\x41",
		"\xE0\x80\x80",
		"\xE0\x9F\xBF",
		"\xED\xA0\x80",
		"\xED\xBF\xBF",
		"\xE2\x82",
		"\xF0\x80\x80\x80",
		"\xF0\x8F\xBF\xBF",
		"\xF4\x90\x80\x80",
		"\xF5\x80\x80\x80",
		"\xF8\x88\x80\x80\x80",
		"\xFE",
		"\xFF",
		"\xF0\x9F\x98",
		"0123456789abcdef\xFF",
	};
	for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
		cr_assert(lp_utf8_valid(good[i], strlen(good[i])), "good %zu", i);
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		cr_assert(!lp_utf8_valid(bad[i], strlen(bad[i])), "bad %zu", i);
}

Test(lp, utf8_in_lines)
{
	static const struct {
		const char *seq, *shown;
	} bad[] = {
		{"\xC0\x80", "\\xC0\\x80"},
		{"\xE0\x80\x80", "\\xE0\\x80\\x80"},
		{"\xF0\x80\x80\x80", "\\xF0\\x80\\x80\\x80"},
		{"\xED\xA0\x80", "\\xED\\xA0\\x80"},
		{"\xF4\x90\x80\x80", "\\xF4\\x90\\x80\\x80"},
		{"\xE2\x82", "\\xE2\\x82"},
		{"\x80", "\\x80"},
		{"\xFF", "\\xFF"},
	};
	char buf[128], want[160];
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		const char *b = bad[i].seq, *w = bad[i].shown;
		snprintf(buf, sizeof buf, "m%s f=1", b);
		BAD(buf, "measurement: invalid UTF-8");
		snprintf(buf, sizeof buf, "m,k%s=v f=1", b);
		snprintf(want, sizeof want, "tag key 'k%s': invalid UTF-8", w);
		BAD(buf, want);
		snprintf(buf, sizeof buf, "m,lane=v%s f=1", b);
		BAD(buf, "tag 'lane': invalid UTF-8");
		snprintf(buf, sizeof buf, "m,lane=\\,%s\\= f=1", b);
		BAD(buf, "tag 'lane': invalid UTF-8");
		snprintf(buf, sizeof buf, "m g=1,k%s=1", b);
		snprintf(want, sizeof want, "field key 'k%s': invalid UTF-8", w);
		BAD(buf, want);
		snprintf(buf, sizeof buf, "m plate=\"a%sb\"", b);
		BAD(buf, "field 'plate': invalid UTF-8");
		snprintf(buf, sizeof buf, "m plate=\"a\\\"%s\\\"\"", b);
		BAD(buf, "field 'plate': invalid UTF-8");
	}
	ONE("\xE2\x82\xAC,\xC3\xA9=\xF0\x9F\x98\x80 \xE6\x97\xA5=\"\xF4\x8F\xBF\xBF\"");
	STR_EQ(ln.measurement, "\xE2\x82\xAC");
	/* Tag keys in reasons keep valid UTF-8 as is. */
	BAD("m,\xC3\xA9t\xC3\xA9= f=1", "tag '\xC3\xA9t\xC3\xA9': empty value");
}

Test(lp, nul_bytes)
{
	bad_n("m\0x f=1", 7, "measurement: NUL byte", TALLY_ESYNTAX);
	bad_n("m,k\0=v f=1", 10, "tag key 'k\\x00': NUL byte", TALLY_ESYNTAX);
	bad_n("m,lane=\0 f=1", 12, "tag 'lane': NUL byte in value", TALLY_ESYNTAX);
	bad_n("m k\0=1", 6, "field key 'k\\x00': NUL byte", TALLY_ESYNTAX);
	bad_n("m k=1\0", 6, "field 'k': invalid number '1\\x00'", TALLY_ESYNTAX);
	/* string fields may hold NUL bytes: they carry a length */
	one("m s=\"a\0b\"", 9);
	cr_assert_eq(ln.fields[0].v.str.n, 3);
	cr_assert_eq(ln.fields[0].v.str.p[1], 0);
}

Test(lp, reasons_sanitised_and_truncated)
{
	BAD("m f=1\x01x", "field 'f': invalid number '1\\x01x'");
	BAD("m f=\x7F", "field 'f': invalid value '\\x7F'");
	BAD("m f=\xC2\x85", "field 'f': invalid value '\\xC2\\x85'"); /* C1 control */
	BAD("m f=\xC3\xA9", "field 'f': invalid value '\xC3\xA9'");
	BAD("m f=1\t\x01", "invalid timestamp '\\x01'");
	const char *longv = rep('9', 200);
	char buf[512], want[160];
	snprintf(buf, sizeof buf, "m f=x%s", longv);
	snprintf(want, sizeof want, "field 'f': invalid value 'x%.39s...'", longv);
	BAD(buf, want);
	snprintf(buf, sizeof buf, "m f=%s", rep('\x01', 50));
	BAD(buf, "field 'f': invalid value '\\x01\\x01\\x01\\x01\\x01\\x01\\x01\\x01"
		 "\\x01\\x01...'");
	/* Long names and values, both quoted, still fit TALLY_REASON_MAX. */
	snprintf(buf, sizeof buf, "m %s=\xFF%s", rep('\xFF', 100), rep('\xFF', 100));
	err(buf, strlen(buf), NULL, TALLY_ESYNTAX);
	snprintf(buf, sizeof buf, "m %s=%s", rep('k', 300), longv);
	err(buf, strlen(buf), "field key longer than 255 bytes", TALLY_ELIMIT);
	snprintf(buf, sizeof buf, "m %s\xC3\xA9%s=\xE6%s", rep('k', 19), rep('k', 200),
		 rep('\xC3', 60));
	err(buf, strlen(buf), NULL, TALLY_ESYNTAX);
	cr_assert(strstr(reason, "k\xC3\xA9k"), "%s", reason);
	snprintf(buf, sizeof buf, "m %s=x", rep('\xE6', 1));
	err(buf, strlen(buf), "field key '\\xE6': invalid UTF-8", TALLY_ESYNTAX);

	/* A small reason buffer is cut at a character boundary. */
	for (size_t cap = 1; cap < 40; cap++) {
		char small[40];
		const char *s = "m,\xE6\x97\xA5\xE6\x97\xA5\xE6\x97\xA5\xE6\x97\xA5= f=1";
		const char *cur = s;
		memset(small, 'Z', sizeof small);
		cr_assert_eq(lp_next(&ps, &cur, s + strlen(s), &ln, &code, small, cap), LP_ERROR);
		cr_assert(strlen(small) < cap);
		cr_assert(lp_utf8_valid(small, strlen(small)), "cap %zu: '%s'", cap, small);
		cr_assert_eq(small[cap], 'Z');
	}
	/* NULL reason and code are allowed. */
	const char *s = "m f=x", *cur = s;
	cr_assert_eq(lp_next(&ps, &cur, s + 5, &ln, NULL, NULL, 0), LP_ERROR);
}

/* ---------------------------------------------------------------- lifecycle */

Test(lp_life, init_free_errors)
{
	lp_parser p;
	cr_assert_eq(lp_parser_init(&p, 0, TALLY_PREC_NS), 0);
	cr_assert_eq(p.max_line, 1u << 20);
	cr_assert_eq(p.line_no, 0);
	lp_parser_free(&p);
	lp_parser_free(&p);
	lp_parser_free(NULL);
	mem_fail_after(1);
	cr_assert_eq(lp_parser_init(&p, 0, TALLY_PREC_NS), -ENOMEM);
	lp_parser_free(&p);
	mem_fail_after(0);
	cr_assert_eq(lp_parser_init(&p, 0, (enum tally_precision)7), TALLY_EINVAL);
	lp_parser_free(&p);
}

/* ---------------------------------------------------------------- random */

static uint64_t rng_state;

static uint64_t rnd(void)
{
	uint64_t x = rng_state;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return rng_state = x;
}
static unsigned rn(unsigned n)
{
	return (unsigned)(rnd() % n);
}

static void seed(uint64_t dflt)
{
	const char *s = getenv("LP_SEED");
	rng_state = s ? strtoull(s, NULL, 0) : dflt;
	if (!rng_state)
		rng_state = 1;
	cr_log_info("seed %" PRIu64 " (set LP_SEED to repeat)", rng_state);
}

typedef struct sbuf {
	char *p;
	size_t n, cap;
} sbuf;

static void sb_put(sbuf *b, const void *s, size_t n)
{
	if (b->n + n + 1 > b->cap) {
		b->cap = (b->n + n + 1) * 2;
		b->p = realloc(b->p, b->cap);
	}
	memcpy(b->p + b->n, s, n);
	b->n += n;
	b->p[b->n] = 0;
}
static void sb_puts(sbuf *b, const char *s)
{
	sb_put(b, s, strlen(s));
}
static void sb_putc(sbuf *b, char c)
{
	sb_put(b, &c, 1);
}

/* Name characters, all of which must round-trip through escaping. */
static const char *name_chars[] = {"a",
				   "b",
				   "Z",
				   "0",
				   "9",
				   "_",
				   "-",
				   "'",
				   ",",
				   " ",
				   "=",
				   "\\",
				   "\"",
				   "#",
				   "\t",
				   "\r",
				   "\xC3\xA9",
				   "\xE6\x97\xA5",
				   "\xF0\x9F\x98\x80",
				   "\xEF\xBF\xBF"};
#define N_NAME_CHARS (sizeof name_chars / sizeof name_chars[0])

enum { K_MEAS, K_KEY };

/* A random name of 1..12 characters into raw (unescaped). */
static void rand_name(sbuf *raw, int kind)
{
	unsigned n = 1 + rn(12);
	for (unsigned i = 0; i < n; i++) {
		const char *c;
		do {
			c = name_chars[rn(N_NAME_CHARS)];
			/* No trailing backslash (it would escape the delimiter).
			 * No leading tab: separators are runs of spaces and tabs,
			 * and only a space can be escaped. No leading '#' or CR
			 * for a measurement (comment, leading whitespace). */
		} while ((i == n - 1 && *c == '\\') || (i == 0 && *c == '\t') ||
			 (kind == K_MEAS && i == 0 && (*c == '#' || *c == '\r')));
		sb_puts(raw, c);
	}
}

static void escape_name(sbuf *out, const char *s, size_t n, int kind)
{
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (c == ',' || c == ' ' || (c == '=' && kind == K_KEY))
			sb_putc(out, '\\');
		sb_putc(out, c);
	}
}

static void escape_string(sbuf *out, const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (c == '"' || c == '\n') {
			sb_putc(out, '\\');
		} else if (c == '\\') {
			/* A backslash before an ordinary character may stay single. */
			char d = i + 1 < n ? s[i + 1] : '"';
			if (d == '"' || d == '\\' || d == '\n' || d == '\r' || rn(2))
				sb_putc(out, '\\');
		}
		sb_putc(out, c);
	}
}

typedef struct xfield {
	sbuf key;
	enum tally_type type;
	double f64;
	int64_t i64;
	uint64_t u64;
	int b;
	sbuf str;
} xfield;

typedef struct xline {
	int kind; /* LP_LINE, LP_SKIP, LP_ERROR */
	uint64_t line;
	sbuf meas;
	unsigned n_tags, n_fields;
	sbuf tk[6], tv[6];
	xfield f[8];
	int has_ts;
	int64_t ts;
} xline;

static int sb_eq(const sbuf *a, const sbuf *b)
{
	return a->n == b->n && !memcmp(a->p, b->p, a->n);
}

static void sb_clear(sbuf *b)
{
	b->n = 0;
	if (b->p)
		b->p[0] = 0;
}

/* Whether a float literal's digits (before any exponent) are not all 0. */
static int lit_nonzero(const char *num)
{
	for (; *num && *num != 'e' && *num != 'E'; num++)
		if (*num >= '1' && *num <= '9')
			return 1;
	return 0;
}

static void rand_float_text(char *buf, size_t cap)
{
	double d;
	switch (rn(6)) {
	case 0: {
		uint64_t bits;
		do {
			bits = rnd();
			memcpy(&d, &bits, sizeof d);
		} while (!isfinite(d));
		snprintf(buf, cap, "%.17g", d);
		break;
	}
	case 1:
		snprintf(buf, cap, "%.*g", 1 + rn(17),
			 (double)(int64_t)rnd() / (double)(1 + rn(100000)));
		break;
	case 2:
		snprintf(buf, cap, "%.*E", rn(20), ldexp((double)rn(1000000), (int)rn(200) - 100));
		break;
	case 3: { /* random decimal digits, maybe long */
		size_t o = 0;
		if (rn(2))
			buf[o++] = '-';
		unsigned a = rn(25), b = rn(25);
		if (a + b == 0)
			a = 1;
		for (unsigned i = 0; i < a; i++)
			buf[o++] = (char)('0' + rn(10));
		if (b || rn(2))
			buf[o++] = '.';
		for (unsigned i = 0; i < b; i++)
			buf[o++] = (char)('0' + rn(10));
		if (rn(3) == 0)
			o += (size_t)sprintf(buf + o, "%c%s%u", rn(2) ? 'e' : 'E',
					     rn(3) == 0 ? "-"
					     : rn(2)    ? "+"
							: "",
					     rn(330));
		buf[o] = 0;
		break;
	}
	case 4:
		snprintf(buf, cap, "%s%u.%0*u", rn(2) ? "-" : "", rn(100000), (int)(1 + rn(6)),
			 rn(100000));
		break;
	default: snprintf(buf, cap, "%s.%u", rn(2) ? "-" : "", rn(1000)); break;
	}
}

static const char *bool_spell[2][5] = {{"f", "F", "false", "False", "FALSE"},
				       {"t", "T", "true", "True", "TRUE"}};

/* Bad lines with their reasons; none ends in a backslash. */
static const struct {
	const char *text, *reason;
} bad_lines[] = {
	{"m f=8x.2", "field 'f': invalid number '8x.2'"},
	{"m", "missing fields"},
	{"m,t= f=1", "tag 't': empty value"},
	{"m f=", "field 'f': missing value"},
	{"m s=\"abc", "field 's': unterminated string"},
	{"m s=\"a\\\nb", "field 's': unterminated string"},
	{"m f=1,s=\"ab\\\ncd\\\nef\",f=2", "duplicate field 'f'"},
	{"m f=tRUE", "field 'f': invalid value 'tRUE'"},
	{"m f=1 abc", "invalid timestamp 'abc'"},
	{"m f=1 1 2", "unexpected text after timestamp '2'"},
	{"m f=1 9223372036854775807", "timestamp out of range"},
	{"m f=1e309", "field 'f': number out of range '1e309'"},
	{"m f=1e-400", "field 'f': number too small, would be stored as 0 '1e-400'"},
	{",t=1 f=1", "empty measurement"},
	{"m\xC0\x80 f=1", "measurement: invalid UTF-8"},
	{"m,t=\xED\xA0\x80 f=1", "tag 't': invalid UTF-8"},
	{"m f=1,f=2", "duplicate field 'f'"},
	{"m,t=1,t=2 f=1", "duplicate tag 't'"},
	{"m,t=a\\", "bad escape at end of line"},
	{"m f=-1u", "field 'f': invalid number '-1u'"},
	{"m f=\"x\"y", "field 'f': unexpected text after string 'y'"},
	{"m f=8x,s=\"q\\\nq\"", "field 'f': invalid number '8x'"},
	{"m f=\"b\\\nc\"x", "field 'f': unexpected text after string 'x'"},
};
#define N_BAD (sizeof bad_lines / sizeof bad_lines[0])

/* Appends a random good line to text and its expected values to x. */
static void gen_good(sbuf *text, xline *x, enum tally_precision prec)
{
	static const int64_t mult[4] = {1, 1000, 1000000, 1000000000};
	char num[128];
	x->kind = LP_LINE;
	for (unsigned i = rn(3); i--;)
		sb_putc(text, rn(2) ? ' ' : '\t');
	sb_clear(&x->meas);
	rand_name(&x->meas, K_MEAS);
	escape_name(text, x->meas.p, x->meas.n, K_MEAS);
	x->n_tags = rn(6);
	for (unsigned i = 0; i < x->n_tags; i++) {
		int dup;
		do {
			sb_clear(&x->tk[i]);
			rand_name(&x->tk[i], K_KEY);
			dup = 0;
			for (unsigned j = 0; j < i; j++)
				dup |= sb_eq(&x->tk[i], &x->tk[j]);
		} while (dup);
		sb_clear(&x->tv[i]);
		rand_name(&x->tv[i], K_KEY);
		sb_putc(text, ',');
		escape_name(text, x->tk[i].p, x->tk[i].n, K_KEY);
		sb_putc(text, '=');
		escape_name(text, x->tv[i].p, x->tv[i].n, K_KEY);
	}
	sb_putc(text, ' ');
	for (unsigned i = rn(3); i--;)
		sb_putc(text, rn(2) ? ' ' : '\t');
	x->n_fields = 1 + rn(8);
	for (unsigned i = 0; i < x->n_fields; i++) {
		xfield *f = &x->f[i];
		int dup;
		do {
			sb_clear(&f->key);
			rand_name(&f->key, K_KEY);
			dup = 0;
			for (unsigned j = 0; j < i; j++)
				dup |= sb_eq(&f->key, &x->f[j].key);
		} while (dup);
		if (i)
			sb_putc(text, ',');
		escape_name(text, f->key.p, f->key.n, K_KEY);
		sb_putc(text, '=');
		switch (rn(5)) {
		case 0:
			f->type = TALLY_T_F64;
			do { /* finite and not underflowing: both are errors */
				rand_float_text(num, sizeof num);
				f->f64 = strtod(num, NULL);
			} while (!isfinite(f->f64) || (f->f64 == 0 && lit_nonzero(num)));
			sb_puts(text, num);
			break;
		case 1:
			f->type = TALLY_T_I64;
			f->i64 = rn(4) == 0 ? (rn(2) ? INT64_MAX : INT64_MIN)
					    : (int64_t)(rnd() >> rn(64));
			if (rn(2) && f->i64 != INT64_MIN)
				f->i64 = -f->i64;
			snprintf(num, sizeof num, "%" PRId64 "i", f->i64);
			sb_puts(text, num);
			break;
		case 2:
			f->type = TALLY_T_U64;
			f->u64 = rn(4) == 0 ? UINT64_MAX : rnd() >> rn(64);
			snprintf(num, sizeof num, "%" PRIu64 "u", f->u64);
			sb_puts(text, num);
			break;
		case 3:
			f->type = TALLY_T_BOOL;
			f->b = (int)rn(2);
			sb_puts(text, bool_spell[f->b][rn(5)]);
			break;
		default: {
			f->type = TALLY_T_STR;
			sb_clear(&f->str);
			unsigned n = rn(12);
			static const char *sc[] = {"a",
						   " ",
						   ",",
						   "=",
						   "\"",
						   "\\",
						   "\n",
						   "\r",
						   "\r\n",
						   "\xC3\xA9",
						   "\xF0\x9F\x98\x80",
						   "x",
						   "\t"};
			for (unsigned k = 0; k < n; k++)
				sb_puts(&f->str, sc[rn(sizeof sc / sizeof sc[0])]);
			sb_putc(text, '"');
			escape_string(text, f->str.p, f->str.n);
			sb_putc(text, '"');
			break;
		}
		}
	}
	x->has_ts = (int)rn(2);
	if (x->has_ts) {
		int64_t m = mult[prec];
		int64_t raw = (int64_t)(rnd() >> 1) / m;
		if (raw > LP_TS_MAX / m)
			raw = LP_TS_MAX / m;
		if (rn(2))
			raw = -raw;
		if (rn(8) == 0)
			raw = rn(2) ? LP_TS_MAX / m : LP_TS_MIN / m;
		x->ts = raw * m;
		snprintf(num, sizeof num, "%" PRId64, raw);
		sb_putc(text, rn(2) ? ' ' : '\t');
		sb_puts(text, num);
	}
	for (unsigned i = rn(3); i--;)
		sb_putc(text, rn(2) ? ' ' : '\t');
}

static void check_line(const xline *x)
{
	cr_assert(sb_eq(&x->meas, &(sbuf){(char *)ln.measurement.p, ln.measurement.n, 0}),
		  "line %" PRIu64 ": measurement '%.*s' want '%s'", x->line, (int)ln.measurement.n,
		  ln.measurement.p, x->meas.p);
	cr_assert_eq(ln.n_tags, x->n_tags, "line %" PRIu64, x->line);
	for (unsigned i = 0; i < x->n_tags; i++) {
		cr_assert(str_is(ln.tags[i].key, x->tk[i].p, x->tk[i].n), "line %" PRIu64, x->line);
		cr_assert(str_is(ln.tags[i].value, x->tv[i].p, x->tv[i].n), "line %" PRIu64,
			  x->line);
	}
	cr_assert_eq(ln.n_fields, x->n_fields, "line %" PRIu64, x->line);
	for (unsigned i = 0; i < x->n_fields; i++) {
		const lp_field *g = &ln.fields[i];
		const xfield *f = &x->f[i];
		cr_assert(str_is(g->key, f->key.p, f->key.n),
			  "line %" PRIu64 ": key '%.*s' want '%s'", x->line, (int)g->key.n,
			  g->key.p, f->key.p);
		cr_assert_eq(g->type, f->type, "line %" PRIu64 " field %u", x->line, i);
		switch (f->type) {
		case TALLY_T_F64:
			cr_assert(memcmp(&g->v.f64, &f->f64, 8) == 0,
				  "line %" PRIu64 ": %a want %a", x->line, g->v.f64, f->f64);
			break;
		case TALLY_T_I64: cr_assert_eq(g->v.i64, f->i64); break;
		case TALLY_T_U64: cr_assert_eq(g->v.u64, f->u64); break;
		case TALLY_T_BOOL: cr_assert_eq(g->v.b, f->b); break;
		default:
			cr_assert(str_is(g->v.str, f->str.p, f->str.n),
				  "line %" PRIu64 ": string '%.*s' want '%s'", x->line,
				  (int)g->v.str.n, g->v.str.p, f->str.p);
		}
	}
	cr_assert_eq(ln.has_ts, x->has_ts, "line %" PRIu64, x->line);
	if (x->has_ts)
		cr_assert_eq(ln.ts, x->ts, "line %" PRIu64, x->line);
}

Test(lp_random, model)
{
	seed(0x9E3779B97F4A7C15ull);
	enum { ROUNDS = 300, RECORDS = 60 };
	static xline xs[RECORDS];
	static const char *bad_reason[RECORDS];
	lp_parser p;
	cr_assert_eq(lp_parser_init(&p, 4096, TALLY_PREC_NS), 0);
	sbuf text = {0};
	for (int round = 0; round < ROUNDS; round++) {
		enum tally_precision prec = (enum tally_precision)rn(4);
		lp_parser_reset(&p, prec);
		sb_clear(&text);
		uint64_t line = 1;
		for (int r = 0; r < RECORDS; r++) {
			xline *x = &xs[r];
			size_t at = text.n;
			unsigned what = rn(10);
			bad_reason[r] = NULL;
			if (what < 6) {
				gen_good(&text, x, prec);
			} else if (what == 6 && rn(4) == 0) {
				/* overlong, with escaped newlines and quotes inside a
				 * string that the skip must follow */
				static const char *oc[] = {"x",    "y,",   " ",    "=",
							   "\\\n", "\\\"", "\\\\", "\\\r\n"};
				x->kind = LP_ERROR;
				bad_reason[r] = "line longer than 4096 bytes";
				sb_puts(&text, rn(2) ? "m,t=v f=1,s=\"" : "m f=8x,s=\"");
				for (size_t k = 4000 + rn(3000); k; k--)
					sb_puts(&text, oc[rn(sizeof oc / sizeof oc[0])]);
				sb_puts(&text, "\",g=1 5");
			} else if (what < 8) {
				unsigned b = rn(N_BAD);
				x->kind = LP_ERROR;
				bad_reason[r] = bad_lines[b].reason;
				sb_puts(&text, bad_lines[b].text);
			} else if (what < 9) {
				x->kind = LP_SKIP;
				sb_puts(&text, rn(2) ? "# comment \\" : "");
			} else {
				x->kind = LP_SKIP;
				sb_puts(&text, rn(2) ? " \t " : "\t#x=1 \"");
			}
			x->line = line;
			for (size_t i = at; i < text.n; i++)
				line += text.p[i] == '\n';
			if (r < RECORDS - 1 || rn(2)) {
				sb_puts(&text, rn(3) ? "\n" : "\r\n");
				line++;
			} else if (text.n == at) {
				x->kind = -1; /* empty last line: nothing to parse */
			}
		}
		const char *cur = text.p, *end = text.p + text.n;
		int code_ = 0;
		char why[TALLY_REASON_MAX];
		for (int r = 0; r < RECORDS; r++) {
			const xline *x = &xs[r];
			if (x->kind < 0)
				break;
			enum lp_result res = lp_next(&p, &cur, end, &ln, &code_, why, sizeof why);
			cr_assert_eq((int)res, x->kind,
				     "round %d record %d (line %" PRIu64 "): got %d (%s)", round, r,
				     x->line, res, res == LP_ERROR ? why : "");
			cr_assert_eq(p.line_no, x->line, "round %d record %d", round, r);
			if (res == LP_LINE)
				check_line(x);
			if (res == LP_ERROR && bad_reason[r])
				cr_assert_str_eq(why, bad_reason[r], "line %" PRIu64, x->line);
		}
		cr_assert_eq(lp_next(&p, &cur, end, &ln, &code_, why, sizeof why), LP_END,
			     "round %d: more records than written", round);
		cr_assert_eq(p.lines, count_lines(text.p, text.n));
	}
	free(text.p);
	for (int r = 0; r < RECORDS; r++) {
		free(xs[r].meas.p);
		for (int i = 0; i < 6; i++) {
			free(xs[r].tk[i].p);
			free(xs[r].tv[i].p);
		}
		for (int i = 0; i < 8; i++) {
			free(xs[r].f[i].key.p);
			free(xs[r].f[i].str.p);
		}
	}
	lp_parser_free(&p);
}

/* Random bytes (from an alphabet rich in syntax): never a crash, always
 * progress, line counts right, reasons printable, strings valid. */
Test(lp_random, bytes)
{
	seed(12345);
	static const char alpha[] = "m,= \"\\\n\r\t#.-+eEiutfTF0123456789\xC3\xA9\xFF\x80\xED\xA0";
	char *buf = malloc(4096);
	for (int it = 0; it < 20000; it++) {
		size_t n = rn(4096);
		for (size_t i = 0; i < n; i++)
			buf[i] = rn(4) ? alpha[rn(sizeof alpha - 1)] : (char)rnd();
		lp_parser p;
		uint32_t max_line = rn(8) == 0 ? 0 : rn(2) ? 8192 : 1 + rn(300);
		cr_assert_eq(lp_parser_init(&p, max_line, (enum tally_precision)rn(4)), 0);
		const char *cur = buf, *end = buf + n;
		char why[TALLY_REASON_MAX];
		int c;
		enum lp_result r;
		uint64_t prev = 0;
		while ((r = lp_next(&p, &cur, end, &ln, &c, why, sizeof why)) != LP_END) {
			cr_assert(cur <= end);
			cr_assert_eq(p.line_no, prev + 1);
			cr_assert(p.lines > prev);
			prev = p.lines;
			if (r == LP_ERROR) {
				cr_assert(reason_ok(why), "'%s'", why);
				cr_assert(c == TALLY_ESYNTAX || c == TALLY_ELIMIT);
			} else if (r == LP_LINE) {
				cr_assert(ln.measurement.n > 0 && ln.n_fields > 0);
				cr_assert(lp_utf8_valid(ln.measurement.p, ln.measurement.n));
				for (uint32_t i = 0; i < ln.n_tags; i++)
					cr_assert(lp_utf8_valid(ln.tags[i].value.p,
								ln.tags[i].value.n));
				for (uint32_t i = 0; i < ln.n_fields; i++)
					if (ln.fields[i].type == TALLY_T_STR)
						cr_assert(lp_utf8_valid(ln.fields[i].v.str.p,
									ln.fields[i].v.str.n));
			}
		}
		cr_assert_eq(cur, end);
		cr_assert_eq(p.lines, count_lines(buf, n), "iteration %d", it);
		lp_parser_free(&p);
	}
	free(buf);
}

/* The write path's inline compare of names and keys (strmap_eq) agrees
 * with memcmp for every length up to 40 and a difference at every byte,
 * including the bytes its overlapping loads read twice. */
Test(lp, strmap_eq_agrees_with_memcmp)
{
	char a[48], b[48];
	for (uint32_t n = 0; n <= 40; n++) {
		for (uint32_t i = 0; i < n; i++)
			a[i] = b[i] = (char)('a' + (i * 7) % 26);
		cr_assert(strmap_eq(a, b, n), "length %u: equal strings differ", n);
		for (uint32_t at = 0; at < n; at++) {
			for (int bit = 0; bit < 8; bit++) {
				b[at] = (char)(a[at] ^ (1 << bit));
				cr_assert_eq(strmap_eq(a, b, n), memcmp(a, b, n) == 0,
					     "length %u, byte %u, bit %d", n, at, bit);
				b[at] = a[at];
			}
		}
	}
}

/* A line compared with the last good line's shape (head and first field
 * key) must parse exactly as it would with no shape remembered: the same
 * result, error and reason, names, values and timestamp. Lines are a
 * template with random edits near the remembered parts: escapes, a '='
 * or ',' or space moved, a name one byte longer or shorter, empty parts,
 * other measurements, and bytes cut at every point. */
static int same_line(const lp_line *a, const lp_line *b)
{
	if (!str_is(a->measurement, b->measurement.p, b->measurement.n) || a->n_tags != b->n_tags ||
	    a->n_fields != b->n_fields || a->has_ts != b->has_ts || (a->has_ts && a->ts != b->ts))
		return 0;
	for (uint32_t i = 0; i < a->n_tags; i++)
		if (!str_is(a->tags[i].key, b->tags[i].key.p, b->tags[i].key.n) ||
		    !str_is(a->tags[i].value, b->tags[i].value.p, b->tags[i].value.n))
			return 0;
	for (uint32_t i = 0; i < a->n_fields; i++) {
		const lp_field *x = &a->fields[i], *y = &b->fields[i];
		if (!str_is(x->key, y->key.p, y->key.n) || x->type != y->type)
			return 0;
		if (x->type == TALLY_T_STR ? !str_is(x->v.str, y->v.str.p, y->v.str.n)
					   : memcmp(&x->v, &y->v, sizeof x->v) != 0)
			return 0;
	}
	return 1;
}

Test(lp, remembered_shape_parses_like_a_fresh_parser)
{
	static const char *tmpl[] = {
		"traffic,camera=KV00042 speed=85.2 1699920000123000000",
		"traffic,camera=KV00043,lane=2 speed=85.2,ok=t 1699920000123000001",
		"traffic,camera=KV00044 speed=85.2",
		"traffic,camera=KV00045  speed=1i 17",
		"traf\\ fic,camera=KV1 speed=1",
		"traffic,cam\\=era=KV1 speed=1",
		"traffic,camera=KV1 sp\\ eed=2",
		"traffic speed=3 5",
		"traffic,camera= speed=1",
		"traffic,camera=KV1 speed=",
		"traffic,camera==KV1 speed=1",
		"traffic,camera=KV1 speed==1",
		"traffic,camera=KV1,camera=KV2 speed=1",
		"traffic,camera=KV1 speed=1,speed=2",
		"trafficc,camera=KV1 speed=1",
		"traffic,camer=KV1 speed=1",
		"traffic,camera=KV1 speeds=1",
		"traffic,camera=KV1 speed=\"s\\\"x\"",
		"other,camera=KV1 speed=1",
		"traffic,camera=KV\xc3\xa9 speed=1",
		"traffic,camera=KV1 speed=1 x",
	};
	lp_parser a, b;
	cr_assert_eq(lp_parser_init(&a, 200, TALLY_PREC_NS), 0);
	cr_assert_eq(lp_parser_init(&b, 200, TALLY_PREC_NS), 0);
	static lp_line la, lb;
	char ra[TALLY_REASON_MAX], rb[TALLY_REASON_MAX], line[256];
	srand(99);
	for (int it = 0; it < 200000; it++) {
		const char *t = tmpl[rand() % (sizeof tmpl / sizeof *tmpl)];
		size_t n = strlen(t);
		memcpy(line, t, n);
		int edits = rand() % 3;
		for (int k = 0; k < edits && n; k++) {
			size_t at = (size_t)rand() % n;
			static const char bytes[] = ",= \\\"\t\nx0.-#";
			switch (rand() % 4) {
			case 0: line[at] = bytes[rand() % (sizeof bytes - 1)]; break;
			case 1: /* delete */
				memmove(line + at, line + at + 1, n - at - 1);
				n--;
				break;
			case 2: /* insert */
				memmove(line + at + 1, line + at, n - at);
				line[at] = bytes[rand() % (sizeof bytes - 1)];
				n++;
				break;
			default: n = at; /* cut */
			}
		}
		const char *ca = line, *cb = line, *end = line + n;
		int codea = 0, codeb = 0;
		b.head_n = b.fkey_n = 0; /* b never remembers */
		enum lp_result x = lp_next(&a, &ca, end, &la, &codea, ra, sizeof ra);
		enum lp_result y = lp_next(&b, &cb, end, &lb, &codeb, rb, sizeof rb);
		cr_assert_eq(x, y, "'%.*s': %d vs %d", (int)n, line, x, y);
		cr_assert_eq(ca, cb, "'%.*s': ends differ", (int)n, line);
		cr_assert_eq(a.line_no, b.line_no);
		if (x == LP_ERROR) {
			cr_assert_eq(codea, codeb);
			cr_assert_str_eq(ra, rb, "'%.*s'", (int)n, line);
		} else if (x == LP_LINE) {
			cr_assert(same_line(&la, &lb), "'%.*s' parses differently", (int)n, line);
		}
	}
	lp_parser_free(&a);
	lp_parser_free(&b);
}
