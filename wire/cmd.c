/*
 * cmd.c — parsing the "#!" command lines, times and durations.
 *
 * A command line is split into words (spaces and tabs; double quotes for a
 * word with blanks), the first word names the command and fixes how many
 * arguments follow and what each is: a name, a time, a duration or a
 * count. The one idea: every argument is checked here, with a reason that
 * names the argument, so the code that runs a command only ever sees valid
 * values and the user sees "from: invalid time '2023-13-01'" rather than an
 * answer for a range they did not mean.
 */
#include "cmd.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define NS_PER_SEC INT64_C(1000000000)

static int cmd_fail(char *err, size_t cap, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, cap, fmt, ap);
	va_end(ap);
	/* Arguments are echoed in reasons: keep the reason printable. */
	for (char *p = err; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7F)
			*p = '?';
	return -1;
}

/* ---------------------------------------------------------------- times */

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant). */
int64_t cmd_days_from_civil(int64_t y, unsigned m, unsigned d)
{
	y -= m <= 2;
	int64_t era = (y >= 0 ? y : y - 399) / 400;
	unsigned yoe = (unsigned)(y - era * 400);
	unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + (int64_t)doe - 719468;
}

void cmd_civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
	z += 719468;
	int64_t era = (z >= 0 ? z : z - 146096) / 146097;
	unsigned doe = (unsigned)(z - era * 146097);
	unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	unsigned mp = (5 * doy + 2) / 153;
	*d = doy - (153 * mp + 2) / 5 + 1;
	*m = mp < 10 ? mp + 3 : mp - 9;
	*y = (int64_t)yoe + era * 400 + (*m <= 2);
}

/* Reads exactly n digits at *p. */
static int cmd_digits(const char **p, int n, unsigned *out)
{
	unsigned v = 0;
	for (int i = 0; i < n; i++) {
		char c = (*p)[i];
		if (c < '0' || c > '9')
			return -1;
		v = v * 10 + (unsigned)(c - '0');
	}
	*p += n;
	*out = v;
	return 0;
}

static int cmd_days_in_month(int64_t y, unsigned m)
{
	static const int dm[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
	return dm[m - 1] + (m == 2 && leap);
}

static int cmd_rfc3339(const char *s, int64_t *out)
{
	const char *p = s;
	unsigned y, mo, d, h = 0, mi = 0, se = 0;
	if (cmd_digits(&p, 4, &y) || *p++ != '-' || cmd_digits(&p, 2, &mo) || *p++ != '-' ||
	    cmd_digits(&p, 2, &d))
		return -1;
	if (mo < 1 || mo > 12 || d < 1 || (int)d > cmd_days_in_month(y, mo))
		return -1;
	int64_t frac = 0, off = 0;
	if (*p == 'T' || *p == 't' || *p == ' ') {
		p++;
		if (cmd_digits(&p, 2, &h) || *p++ != ':' || cmd_digits(&p, 2, &mi))
			return -1;
		if (*p == ':') {
			p++;
			if (cmd_digits(&p, 2, &se))
				return -1;
			if (*p == '.') {
				p++;
				int n = 0;
				while (*p >= '0' && *p <= '9') {
					if (n < 9) {
						frac = frac * 10 + (*p - '0');
						n++;
					}
					p++;
				}
				if (n == 0)
					return -1;
				for (; n < 9; n++)
					frac *= 10;
			}
		}
		if (h > 23 || mi > 59 || se > 60) /* 60: a leap second, read as :59 + 1 s */
			return -1;
		if (*p == 'Z' || *p == 'z') {
			p++;
		} else if (*p == '+' || *p == '-') {
			int sign = *p++ == '-' ? -1 : 1;
			unsigned oh, om;
			if (cmd_digits(&p, 2, &oh) || *p++ != ':' || cmd_digits(&p, 2, &om) ||
			    oh > 23 || om > 59)
				return -1;
			off = sign * (int64_t)(oh * 3600 + om * 60);
		} else {
			return -1; /* a time of day needs its zone */
		}
	}
	if (*p)
		return -1;
	int64_t secs = cmd_days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se - off;
	/* int64 ns covers 1677-09-21T00:12:43.145224192Z .. 2262-04-11T23:47:16.854775807Z;
	 * every instant in that range parses, so any formatted time reads back. */
	int64_t ns;
	if (secs < 0 && frac > 0) { /* keep the product in range near the lower bound */
		secs++;
		frac -= NS_PER_SEC;
	}
	if (__builtin_mul_overflow(secs, NS_PER_SEC, &ns) || __builtin_add_overflow(ns, frac, &ns))
		return -1;
	*out = ns;
	return 0;
}

static int cmd_int64(const char *s, int64_t *out)
{
	const char *p = s;
	int neg = 0;
	if (*p == '-' || *p == '+')
		neg = *p++ == '-';
	if (!*p)
		return -1;
	uint64_t v = 0;
	for (; *p; p++) {
		if (*p < '0' || *p > '9')
			return -1;
		unsigned dgt = (unsigned)(*p - '0');
		if (v > (UINT64_C(9223372036854775808) - dgt) / 10)
			return -1;
		v = v * 10 + dgt;
	}
	if (!neg && v > (uint64_t)INT64_MAX)
		return -1;
	*out = neg ? (int64_t)(0 - v) : (int64_t)v;
	return 0;
}

int cmd_parse_duration(const char *s, int64_t *out)
{
	static const struct {
		const char *u;
		int64_t ns;
	} units[] = {
		{"ns", 1},
		{"us", 1000},
		{"ms", 1000000},
		{"s", NS_PER_SEC},
		{"m", 60 * NS_PER_SEC},
		{"h", 3600 * NS_PER_SEC},
		{"d", 86400 * NS_PER_SEC},
		{"w", 7 * 86400 * NS_PER_SEC},
	};
	const char *p = s;
	int64_t total = 0;
	if (!*p)
		return -1;
	while (*p) {
		if (*p < '0' || *p > '9')
			return -1;
		int64_t v = 0;
		for (; *p >= '0' && *p <= '9'; p++) {
			if (v > (INT64_MAX - 9) / 10)
				return -1;
			v = v * 10 + (*p - '0');
		}
		size_t ul = 0;
		while (p[ul] && (p[ul] < '0' || p[ul] > '9'))
			ul++;
		int64_t mult = 0;
		for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
			if (strlen(units[i].u) == ul && !strncmp(p, units[i].u, ul))
				mult = units[i].ns;
		if (!mult)
			return -1;
		if (v > INT64_MAX / mult || total > INT64_MAX - v * mult)
			return -1;
		total += v * mult;
		p += ul;
	}
	if (total <= 0)
		return -1;
	*out = total;
	return 0;
}

/*
 * Integers since the epoch. A bare integer is nanoseconds, the unit of
 * line protocol; one with a unit (1735689600s, 1735689600000ms) says its
 * own. A bare integer between 1 s and about 3 years after (or before) the
 * epoch is refused: that is where Unix seconds, milliseconds and
 * microseconds of any date since 1973 fall when read as nanoseconds, and
 * nobody means 1970-01-01T00:00:01.7Z by "1735689600". 0 and small values
 * stay valid (from the start of time, tests' own clocks).
 */
#define CMD_NS_IMPLAUSIBLE_LO INT64_C(1000000000)         /* 1 s */
#define CMD_NS_IMPLAUSIBLE_HI INT64_C(100000000000000000) /* 1e17 ns: 1973-03-03 */

static int cmd_ns_implausible(int64_t v)
{
	return (v >= CMD_NS_IMPLAUSIBLE_LO && v < CMD_NS_IMPLAUSIBLE_HI) ||
	       (v <= -CMD_NS_IMPLAUSIBLE_LO && v > -CMD_NS_IMPLAUSIBLE_HI);
}

/* [+-]digits[ns|us|ms|s] into ns; *unit is 0 for a bare integer. -1 when s
 * is not of that form or overflows. */
static int cmd_epoch(const char *s, int64_t *out, int *unit)
{
	static const struct {
		const char *u;
		int64_t ns;
	} units[] = {{"ns", 1}, {"us", 1000}, {"ms", 1000000}, {"s", NS_PER_SEC}};
	size_t sign = *s == '-' || *s == '+';
	size_t n = sign + strspn(s + sign, "0123456789");
	char num[24];
	int64_t v, mult = 1;
	if (n == sign || n >= sizeof num)
		return -1;
	memcpy(num, s, n);
	num[n] = 0;
	if (cmd_int64(num, &v))
		return -1;
	*unit = s[n] != 0;
	if (*unit) {
		mult = 0;
		for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
			if (!strcmp(s + n, units[i].u))
				mult = units[i].ns;
	}
	if (!mult || __builtin_mul_overflow(v, mult, out))
		return -1;
	return 0;
}

int cmd_parse_time(const char *s, int64_t now, int64_t *out)
{
	if (!strncasecmp(s, "now", 3)) {
		if (!s[3]) {
			*out = now;
			return 0;
		}
		int64_t d;
		if ((s[3] != '-' && s[3] != '+') || cmd_parse_duration(s + 4, &d))
			return -1;
		if (s[3] == '-' ? now < INT64_MIN + d : now > INT64_MAX - d)
			return -1;
		*out = s[3] == '-' ? now - d : now + d;
		return 0;
	}
	int64_t v;
	int unit;
	if (!cmd_epoch(s, &v, &unit)) {
		if (!unit && cmd_ns_implausible(v))
			return -1;
		*out = v;
		return 0;
	}
	return cmd_rfc3339(s, out);
}

static const char cmd_pairs[201] = "00010203040506070809101112131415161718192021222324"
				   "25262728293031323334353637383940414243444546474849"
				   "50515253545556575859606162636465666768697071727374"
				   "75767778798081828384858687888990919293949596979899";

/* v < 100 as two digits, from the table */
static inline void cmd_two(char *p, unsigned v)
{
	memcpy(p, cmd_pairs + 2 * v, 2);
}

/* Hand-rolled rather than snprintf: a 288-bucket series formats 288 of
 * these, and printf's generic machinery was most of the query's time. */
size_t cmd_format_time(int64_t ns, char *buf)
{
	int64_t secs = ns / NS_PER_SEC, frac = ns % NS_PER_SEC;
	if (frac < 0) {
		frac += NS_PER_SEC;
		secs--;
	}
	int64_t days = secs / 86400, rem = secs % 86400;
	if (rem < 0) {
		rem += 86400;
		days--;
	}
	/* A series writes hundreds of times of one day: the date part is
	 * kept per thread and made again only when the day changes. int64
	 * nanoseconds span the years 1677 to 2262: always YYYY-MM-DD. */
	static __thread int64_t date_days = INT64_MIN;
	static __thread char date[16];
	if (days != date_days) {
		int64_t y;
		unsigned m, d;
		cmd_civil_from_days(days, &y, &m, &d);
		cmd_two(date, (unsigned)(y / 100));
		cmd_two(date + 2, (unsigned)(y % 100));
		date[4] = '-';
		cmd_two(date + 5, m);
		date[7] = '-';
		cmd_two(date + 8, d);
		date_days = days;
	}
	char *p = buf;
	memcpy(p, date, 16); /* fixed size: a few moves, not a call */
	p[10] = 'T';
	cmd_two(p + 11, (unsigned)(rem / 3600));
	p[13] = ':';
	cmd_two(p + 14, (unsigned)(rem / 60 % 60));
	p[16] = ':';
	cmd_two(p + 17, (unsigned)(rem % 60));
	p += 19;
	if (frac) {
		int digits = frac % 1000000 == 0 ? 3 : frac % 1000 == 0 ? 6 : 9;
		int64_t f = digits == 3 ? frac / 1000000 : digits == 6 ? frac / 1000 : frac;
		*p++ = '.';
		for (int i = digits - 1; i >= 0; i--, f /= 10)
			p[i] = (char)('0' + f % 10);
		p += digits;
	}
	*p++ = 'Z';
	*p = 0;
	return (size_t)(p - buf);
}

size_t cmd_format_duration(int64_t ns, char *buf)
{
	static const struct {
		const char *u;
		int64_t ns;
	} units[] = {
		{"w", 7 * 86400 * NS_PER_SEC},
		{"d", 86400 * NS_PER_SEC},
		{"h", 3600 * NS_PER_SEC},
		{"m", 60 * NS_PER_SEC},
		{"s", NS_PER_SEC},
		{"ms", 1000000},
		{"us", 1000},
		{"ns", 1},
	};
	for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
		if (ns % units[i].ns == 0)
			return (size_t)snprintf(buf, 32, "%lld%s", (long long)(ns / units[i].ns),
						units[i].u);
	return (size_t)snprintf(buf, 32, "%lldns", (long long)ns);
}

__extension__ typedef unsigned __int128 cmd_u128;

/* Two digits from the table, as the low bytes of a word. */
static inline uint16_t cmd_pair(unsigned v)
{
	uint16_t t;
	memcpy(&t, cmd_pairs + 2 * v, 2);
	return t;
}

/* x < 10^8 as eight ASCII digits in one word, the first digit in the
 * lowest byte: two halves, then four pairs, then eight digits, each step
 * in the lanes of the word (the products stay inside their lanes). The
 * word is stored at once and its zeros counted in a register: reading
 * back bytes just stored in pieces would wait for the stores. */
static inline uint64_t cmd_swar8(uint32_t x)
{
	uint64_t v = (uint64_t)(x / 10000) | (uint64_t)(x % 10000) << 32;
	uint64_t h = ((v * 5243) >> 19) & 0x0000007F0000007FULL; /* / 100 below 43699 */
	v = h | (v - h * 100) << 16;
	uint64_t t = ((v * 103) >> 10) & 0x000F000F000F000FULL; /* / 10 below 179 */
	v = t | (v - t * 10) << 8;
	return v | 0x3030303030303030ULL;
}

static const uint64_t cmd_p10[20] = {1,
				     10,
				     100,
				     1000,
				     10000,
				     100000,
				     1000000,
				     10000000,
				     100000000,
				     1000000000,
				     10000000000ULL,
				     100000000000ULL,
				     1000000000000ULL,
				     10000000000000ULL,
				     100000000000000ULL,
				     1000000000000000ULL,
				     10000000000000000ULL,
				     100000000000000000ULL,
				     1000000000000000000ULL,
				     10000000000000000000ULL};

/* The number of decimal digits of q (at least 1). */
static int cmd_ndigits(uint64_t q)
{
	/* log10 from the bit length (1233 / 4096 ~ log10 2), then one compare */
	int b = 64 - __builtin_clzll(q | 1);
	int n = (b * 1233) >> 12;
	return n + ((q | 1) >= cmd_p10[n]); /* q | 1: 0 has one digit too */
}

/* Exactly n digits of v (v < 10^n, zero-padded) ending at end, written
 * backwards: eight at a time while n >= 8, then pairs. */
static inline void cmd_digits_n(char *end, uint64_t v, int n)
{
	for (; n >= 8; n -= 8, end -= 8, v /= 100000000) {
		uint64_t w = cmd_swar8((uint32_t)(v % 100000000));
		memcpy(end - 8, &w, 8);
	}
	for (; n >= 2; n -= 2, end -= 2, v /= 100)
		memcpy(end - 2, cmd_pairs + 2 * (v % 100), 2);
	if (n)
		end[-1] = (char)('0' + v);
}

size_t cmd_format_u64(uint64_t v, char *buf);

/* "-" q / 10^k, q < 10^17, k <= 22, q not a multiple of 10 when k > 0,
 * ip = floor(|v|) (from the exponent: no division). q / 10^k lies in
 * [ip, ip + 1): it is at least ip since v is, and were it ip + 1 or more,
 * the integer ip + 1 would lie between v and it, inside v's rounding
 * interval, yet below 2^53 it reads back as itself. The integer part, the
 * point and exactly k decimals are each stored in place. (Laying the
 * digits out in a scratch field and copying the answer out of it was
 * slower in tallyd than the figures of bench_format said: a load that
 * spans several just-made stores waits for them to retire.) The number
 * ends with a NUL. */
static size_t cmd_put_fixed(char *buf, int neg, uint64_t q, int k, uint64_t ip)
{
	char *p = buf;
	*p = '-';
	p += neg;
	/* k >= 20: |v| < 1e-3 and ip is 0 */
	uint64_t fr = k < 20 ? q - ip * cmd_p10[k] : q;
	p += cmd_format_u64(ip, p);
	if (k) {
		*p = '.';
		cmd_digits_n(p + 1 + k, fr, k);
		p += 1 + k;
		*p = 0;
	}
	return (size_t)(p - buf);
}

/* v < 10000: four digits in a word, the leading zeros shifted out, one
 * store: no branch on the length (counts and readings vary between 2 and
 * 3 digits row to row, and a mispredicted loop exit cost more than the
 * digits). Inline where the integer part of a decimal is written: a call
 * there made the caller save registers. */
static inline size_t cmd_u64_small(uint64_t v, char *buf)
{
	uint32_t x = (uint32_t)v, h = (x * 5243) >> 19; /* x / 100 below 43699 */
	uint32_t w = (uint32_t)cmd_pair(h) | (uint32_t)cmd_pair(x - h * 100) << 16;
	int nd = 1 + (x >= 10) + (x >= 100) + (x >= 1000);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	w >>= 8 * (4 - nd); /* the first digit is the lowest byte */
#else
	w <<= 8 * (4 - nd);
#endif
	memcpy(buf, &w, 4);
	buf[nd] = 0;
	return (size_t)nd;
}

size_t cmd_format_u64(uint64_t v, char *buf)
{
	if (v < 10000)
		return cmd_u64_small(v, buf);
	int nd = cmd_ndigits(v);
	cmd_digits_n(buf + nd, v, nd);
	buf[nd] = 0;
	return (size_t)nd;
}

/* "-" c / 100 with its zeros after the point dropped, written in place:
 * the few digits of a reading need no digit field. */
static size_t cmd_put_cents(char *buf, int neg, uint64_t c)
{
	char *p = buf;
	*p = '-';
	p += neg;
	uint64_t ip = c / 100;
	unsigned fr = (unsigned)(c % 100);
	p += cmd_format_u64(ip, p);
	if (fr) {
		p[0] = '.';
		memcpy(p + 1, cmd_pairs + 2 * fr, 2);
		p += 3 - (fr % 10 == 0); /* .5, not .50 */
		*p = 0;
	}
	return (size_t)(p - buf);
}

/* 5^k for k <= 22: v * 10^k is f * 5^k / 2^(s - k), a shift under 64. */
static const uint64_t cmd_p5[23] = {1ULL,
				    5ULL,
				    25ULL,
				    125ULL,
				    625ULL,
				    3125ULL,
				    15625ULL,
				    78125ULL,
				    390625ULL,
				    1953125ULL,
				    9765625ULL,
				    48828125ULL,
				    244140625ULL,
				    1220703125ULL,
				    6103515625ULL,
				    30517578125ULL,
				    152587890625ULL,
				    762939453125ULL,
				    3814697265625ULL,
				    19073486328125ULL,
				    95367431640625ULL,
				    476837158203125ULL,
				    2384185791015625ULL};

/* x >> n for n < 64, the result known to fit 64 bits: no test for
 * shifts of 64 and more, which the compiler must make for a 128-bit one. */
static inline uint64_t cmd_shr(cmd_u128 x, unsigned n)
{
	uint64_t lo = (uint64_t)x, hi = (uint64_t)(x >> 64);
	return (lo >> n) | (hi << 1 << (63 - n));
}

/* The digits of w (from cmd_swar8) up to its last that is not 0. */
static inline int cmd_swar_len(uint64_t w)
{
	w ^= 0x3030303030303030ULL; /* '0' bytes become 0; the last digit is the top byte */
	return w ? (71 - __builtin_clzll(w)) >> 3 : 0;
}

/* "-" q / 10^k, k <= 16, with its zeros after the point dropped (so a
 * shortest multiple of 10 and a nearest q alike print right): the integer
 * part ip, then the k decimals left-aligned in a field of 8 or 16 digits,
 * whose zeros past the last digit that is not 0 are cut off. Branches only
 * on k, which a run of similar values repeats. */
static size_t cmd_put_frac(char *buf, int neg, uint64_t q, int k, uint64_t ip)
{
	char *p = buf;
	*p = '-';
	p += neg;
	uint64_t fr = q - ip * cmd_p10[k];
	p += ip < 10000 ? cmd_u64_small(ip, p) : cmd_format_u64(ip, p);
	*p = '.';
	char *d = p + 1;
	int n;
	if (k <= 8) {
		uint64_t w = cmd_swar8((uint32_t)(fr * cmd_p10[8 - k]));
		memcpy(d, &w, 8);
		n = cmd_swar_len(w);
	} else {
		uint64_t x = fr * cmd_p10[16 - k];
		uint64_t w0 = cmd_swar8((uint32_t)(x / 100000000));
		uint64_t w1 = cmd_swar8((uint32_t)(x % 100000000));
		memcpy(d, &w0, 8);
		memcpy(d + 8, &w1, 8);
		int n1 = cmd_swar_len(w1);
		n = n1 ? 8 + n1 : cmd_swar_len(w0);
	}
	p = n ? d + n : p; /* no decimals: no point */
	*p = 0;
	return (size_t)(p - buf);
}

/*
 * The shortest decimal that reads back as v, and of those the nearest.
 *
 * v = f / 2^s. Every real within half an ulp of v reads back as v. Scaled
 * by 10^k, k the least with 10^k > 2^s, that interval is between 1 and 10
 * units wide, so it holds at least one integer and at most one multiple
 * of 10:
 *   - a multiple of 10 in it is the one shortest decimal (fewer
 *     significant digits means trailing zeros at this scale), written
 *     with its zeros dropped;
 *   - else the shortest have this many digits, and the nearest to v is v
 *     scaled and rounded, half an unit or less from v, so inside.
 * What general algorithms must mind cannot happen in this range: the
 * interval's ends, (2f +- 1) 10^k / 2^(s+1), are never integers (that
 * would take 2^(s+1) dividing 10^k, and k <= s), so whether a tie at an
 * end reads back as v does not matter; and a power of two, whose interval
 * is half as wide below, is here always a short exact decimal, the
 * multiple of 10 the wide interval finds too (the test walks every one).
 * All of it is exact integer arithmetic: v 10^k = f 5^k / 2^(s-k), f 5^k
 * fits 128 bits and s - k is under 64 while k <= 22, that is for 2^-21 <=
 * |v| < 2^53 (5e-7 to 9e15: everything a sensor or a sum of readings
 * gives). Other values (tiny, huge, subnormal, inf) take printf's %.Ng
 * with the least N that strtod reads back: exact, and some microseconds.
 * The digits are made in the lanes of a word, eight at a time
 * (cmd_swar8), and the zeros after the last decimal are counted there.
 * bench_format: sums 25.6 -> 21.5 ns, averages 25.2 -> 21.1 ns.
 */
static size_t cmd_format_general(double v, char *buf);

size_t cmd_format_double(double v, char *buf)
{
	/* Most values a rollup holds have a decimal or two (a reading, or a
	 * min or max of readings): for i the nearest integer to |v| * 100,
	 * i / 100 == |v| in one correctly rounded division proves i / 100
	 * reads back as v, and below 2^40 (an ulp under 0.0002) no other
	 * decimal with two places does, so it is the shortest. Cheaper than
	 * the exact path's dividing off of zeros. (|v| * 100 itself is often
	 * no integer: 32.3 * 100 is 3229.9999999999995.) */
	double a = fabs(v);
	if (a >= 0.005 && a < 0x1p40) {
		int64_t i = (int64_t)(a * 100 + 0.5);
		if ((double)i / 100 == a)
			return cmd_put_cents(buf, signbit(v) != 0, (uint64_t)i);
	}
	return cmd_format_general(v, buf);
}

/* What the exact path does not cover (tiny, huge, subnormal, inf, NaN):
 * reading back holds from some precision on (17 always does), the least
 * one by bisection, in four or five tries. Apart, so that the exact path
 * saves no registers for these calls. */
static __attribute__((noinline)) size_t cmd_format_rare(double v, char *buf)
{
	static const char *const fmt[18] = {"%.0g",  "%.1g",  "%.2g",  "%.3g",  "%.4g",  "%.5g",
					    "%.6g",  "%.7g",  "%.8g",  "%.9g",  "%.10g", "%.11g",
					    "%.12g", "%.13g", "%.14g", "%.15g", "%.16g", "%.17g"};
	if (v == 0) {
		memcpy(buf, "0", 2); /* and -0 */
		return 1;
	}
	if (v != v)
		return (size_t)snprintf(buf, 32, "NaN");
	int lo = 1, hi = 17;
	while (lo < hi) {
		int mid = (lo + hi) / 2;
		snprintf(buf, 32, fmt[mid], v);
		if (strtod(buf, NULL) == v)
			hi = mid;
		else
			lo = mid + 1;
	}
	return (size_t)snprintf(buf, 32, fmt[lo], v);
}

/* Everything but the two-decimal values, apart so that the quick path
 * above saves and restores no more registers than it uses (about 1 ns a
 * reading). */
static __attribute__((noinline)) size_t cmd_format_general(double v, char *buf)
{
	uint64_t bits;
	memcpy(&bits, &v, sizeof bits);
	int neg = (int)(bits >> 63);
	unsigned e = (unsigned)(bits >> 52) & 0x7ff;
	uint64_t f = (bits & ((UINT64_C(1) << 52) - 1)) | UINT64_C(1) << 52;
	unsigned s = 1075 - e; /* v = f / 2^s; wraps above for e > 1075 */
	if (s > 73)            /* also zero and subnormals (e = 0) */
		return cmd_format_rare(v, buf);
	int k = (int)((s * 78913) >> 18) + (s != 0);
	unsigned sh = s - (unsigned)k; /* 0 .. 51 */
	uint64_t w = cmd_p5[k];
	/* v 10^k = p / 2^sh = qf + r / 2^sh; its interval is that -+ w / 2^(sh+1),
	 * so its ends are qf plus (2r -+ w) / 2^(sh+1), numbers of 64 bits
	 * (r < 2^51, w < 2^52): the one 128-bit step is the split. */
	cmd_u128 p = (cmd_u128)f * w;
	uint64_t qf = cmd_shr(p, sh), r = (uint64_t)p & ((UINT64_C(1) << sh) - 1);
	uint64_t uq = qf + ((2 * r + w) >> (sh + 1));
	/* the lower end is never an integer (5^k (2f - 1) is odd): the least
	 * integer in the interval is one more than its floor, lq; an
	 * arithmetic shift floors the negative */
	uint64_t lq = qf + (uint64_t)((int64_t)(2 * r - w) >> (sh + 1));
	uint64_t q10 = uq / 10 * 10;
	uint64_t r2 = 2 * r, one = UINT64_C(1) << sh;
	uint64_t q = qf + ((r2 > one) | ((r2 == one) & qf)); /* nearest, a tie to even */
	/* Both answers are made and one is picked without a branch: which
	 * one it is varies value to value, and a mispredicted branch cost
	 * more than the few instructions of the other. */
	uint64_t pick = 0 - (uint64_t)(q10 > lq); /* a mask: compilers keep it a select */
	q = (q10 & pick) | (q & ~pick);
	uint64_t ip = s < 64 ? f >> s : 0; /* floor(|v|) */
	if (k <= 16)
		return cmd_put_frac(buf, neg, q, k, ip);
	/* |v| < 1/16: up to 22 decimals, most of them leading zeros */
	while (k && q % 10 == 0) {
		q /= 10;
		k--;
	}
	return cmd_put_fixed(buf, neg, q, k, ip);
}

/* ---------------------------------------------------------------- rows */

char *cmd_put_f64(char *p, double v)
{
	return v != v ? p : p + cmd_format_double(v, p);
}

char *cmd_put_agg(char *p, const tally_agg *a)
{
	p += cmd_format_u64(a->count, p);
	*p++ = '\t';
	p = cmd_put_f64(p, a->count ? a->sum : 0);
	*p++ = '\t';
	p = cmd_put_f64(p, a->count ? a->min : (double)NAN);
	*p++ = '\t';
	p = cmd_put_f64(p, a->count ? a->max : (double)NAN);
	*p++ = '\t';
	p = cmd_put_f64(p, a->count ? a->avg : (double)NAN);
	*p++ = '\n';
	return p;
}

char *cmd_put_bucket(char *p, const tally_bucket *b)
{
	p += cmd_format_time(b->start, p);
	*p++ = '\t';
	return cmd_put_agg(p, &b->agg);
}

/* ---------------------------------------------------------------- commands */

/* Splits line into words in scratch; returns the count or -1. */
static int cmd_split(const char *p, const char *end, char *scratch, size_t cap, char **argv,
		     char *err, size_t err_cap)
{
	int argc = 0;
	char *d = scratch, *dend = scratch + cap;
	for (;;) {
		while (p < end && (*p == ' ' || *p == '\t' || *p == '\r'))
			p++;
		if (p == end)
			return argc;
		if (argc == CMD_ARGS_MAX)
			return cmd_fail(err, err_cap, "more than %d arguments", CMD_ARGS_MAX - 1);
		argv[argc++] = d;
		if (*p == '"') {
			for (p++;; p++) {
				if (p == end)
					return cmd_fail(err, err_cap,
							"unterminated quote in argument %d",
							argc - 1);
				if (*p == '"') {
					p++;
					break;
				}
				if (*p == '\\' && p + 1 < end && (p[1] == '"' || p[1] == '\\'))
					p++;
				if (d + 1 >= dend)
					return cmd_fail(err, err_cap, "command too long");
				*d++ = *p;
			}
			if (p < end && *p != ' ' && *p != '\t' && *p != '\r')
				return cmd_fail(err, err_cap,
						"argument %d: text after closing quote", argc - 1);
		} else {
			while (p < end && *p != ' ' && *p != '\t' && *p != '\r') {
				if (d + 1 >= dend)
					return cmd_fail(err, err_cap, "command too long");
				*d++ = *p++;
			}
		}
		*d++ = 0;
	}
}

static int cmd_name_arg(const char *what, const char *s, char *err, size_t cap)
{
	size_t n = strlen(s);
	if (n == 0 || n > 65535)
		return cmd_fail(err, cap, "%s: empty or longer than 65535 bytes", what);
	return 0;
}

/* The reason a time argument is refused. A bare integer that looks like
 * Unix seconds, ms or us read as ns gets the first of those readings that
 * is a time tally can hold (int64 ns), which is the one it probably meant. */
static int cmd_time_fail(const char *what, const char *s, const char *also, char *err, size_t cap)
{
	static const struct {
		const char *u, *name;
		int64_t ns;
	} units[] = {{"s", "seconds", NS_PER_SEC}, {"ms", "ms", 1000000}, {"us", "us", 1000}};
	int64_t v, t;
	int unit;
	if (!cmd_epoch(s, &v, &unit) && !unit && cmd_ns_implausible(v)) {
		char as_ns[40], meant[40];
		cmd_format_time(v, as_ns);
		for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
			if (!__builtin_mul_overflow(v, units[i].ns, &t)) {
				cmd_format_time(t, meant);
				return cmd_fail(
					err, cap,
					"%s: %s read as nanoseconds is %s; for %s since the "
					"epoch write %s%s (%s); units ns, us, ms, s",
					what, s, as_ns, units[i].name, s, units[i].u, meant);
			}
		return cmd_fail(
			err, cap,
			"%s: %s read as nanoseconds is %s; give its unit: %ss, ms, us or ns", what,
			s, as_ns, s);
	}
	return cmd_fail(err, cap,
			"%s: invalid time%s '%.40s' (RFC 3339 like 2023-11-14T00:00:00Z, "
			"integer ns, 1700000000s, or now-1h%s)",
			what, also[0] ? " or duration" : "", s, also);
}

static int cmd_time_arg(const char *what, const char *s, int64_t now, int64_t *out, char *err,
			size_t cap)
{
	if (cmd_parse_time(s, now, out))
		return cmd_time_fail(what, s, "", err, cap);
	return 0;
}

/* to: a time, or a duration after from ("1h" or "+1h"). "1735689600s" is
 * both; a length in ns, us, ms or s of 1e17 ns (about 3 years) or more is
 * read as a time since the epoch ("+" keeps it a length). */
static int cmd_to_arg(const char *s, int64_t now, int64_t from, int64_t *out, char *err, size_t cap)
{
	int64_t d;
	int unit;
	const char *ds = *s == '+' ? s + 1 : s;
	if (*s != '+' && !cmd_epoch(s, &d, &unit) && unit &&
	    (d >= CMD_NS_IMPLAUSIBLE_HI || d <= -CMD_NS_IMPLAUSIBLE_HI)) {
		*out = d;
		return 0;
	}
	if (!cmd_parse_duration(ds, &d)) {
		if (from > INT64_MAX - d)
			return cmd_fail(err, cap, "to: from + %.40s overflows", ds);
		*out = from + d;
		return 0;
	}
	if (cmd_parse_time(s, now, out))
		return cmd_time_fail("to", s, ", or a length like 1h", err, cap);
	return 0;
}

static int cmd_range(char **argv, int i, int64_t now, cmd_req *out, char *err, size_t cap)
{
	if (cmd_time_arg("from", argv[i], now, &out->from, err, cap) ||
	    cmd_to_arg(argv[i + 1], now, out->from, &out->to, err, cap))
		return -1;
	if (out->to <= out->from)
		return cmd_fail(err, cap, "empty range: to is not after from");
	return 0;
}

static const struct {
	const char *name;
	enum cmd_kind kind;
	int min_args, max_args;
	const char *usage;
} cmd_table[] = {
	{"ping", CMD_PING, 0, 0, "#!ping"},
	{"sync", CMD_SYNC, 0, 0, "#!sync"},
	{"auth", CMD_AUTH, 1, 1, "#!auth TOKEN"},
	{"series", CMD_SERIES, 6, 6, "#!series TABLE FIELD KEY STEP FROM TO"},
	{"agg", CMD_AGG, 5, 5, "#!agg TABLE FIELD KEY FROM TO"},
	{"keys", CMD_KEYS, 4, 4, "#!keys TABLE FIELD FROM TO"},
	{"scan", CMD_SCAN, 4, 5, "#!scan TABLE KEY FROM TO [LIMIT]"},
	{"stats", CMD_STATS, 0, 0, "#!stats"},
	{"precision", CMD_PRECISION, 1, 1, "#!precision ns|us|ms|s"},
	{"help", CMD_HELP, 0, 0, "#!help"},
};

int cmd_parse(const char *line, size_t len, char *scratch, size_t scratch_cap, int64_t now,
	      cmd_req *out, char *err, size_t err_cap)
{
	memset(out, 0, sizeof *out);
	char *argv[CMD_ARGS_MAX];
	if (len < 2 || line[0] != '#' || line[1] != '!')
		return cmd_fail(err, err_cap, "not a command");
	int argc = cmd_split(line + 2, line + len, scratch, scratch_cap, argv, err, err_cap);
	if (argc < 0)
		return -1;
	if (argc == 0)
		return cmd_fail(err, err_cap, "empty command (try #!help)");
	size_t ci = 0, nc = sizeof cmd_table / sizeof cmd_table[0];
	while (ci < nc && strcasecmp(argv[0], cmd_table[ci].name))
		ci++;
	if (ci == nc)
		return cmd_fail(err, err_cap, "unknown command '#!%.40s' (try #!help)", argv[0]);
	out->kind = cmd_table[ci].kind;
	out->name = cmd_table[ci].name;
	int nargs = argc - 1;
	if (nargs < cmd_table[ci].min_args || nargs > cmd_table[ci].max_args)
		return cmd_fail(err, err_cap, "%s: %d argument%s given; usage: %s", out->name,
				nargs, nargs == 1 ? "" : "s", cmd_table[ci].usage);
	char **a = argv + 1;
	switch (out->kind) {
	case CMD_AUTH: out->token = a[0]; return 0;
	case CMD_SERIES:
		if (cmd_name_arg("table", a[0], err, err_cap) ||
		    cmd_name_arg("field", a[1], err, err_cap) ||
		    cmd_name_arg("key", a[2], err, err_cap))
			return -1;
		out->table = a[0];
		out->field = a[1];
		out->key = a[2];
		if (cmd_parse_duration(a[3], &out->step))
			return cmd_fail(err, err_cap,
					"step: invalid duration '%.40s' (like 5m, 1h, 1d)", a[3]);
		return cmd_range(a, 4, now, out, err, err_cap);
	case CMD_AGG:
		if (cmd_name_arg("table", a[0], err, err_cap) ||
		    cmd_name_arg("field", a[1], err, err_cap) ||
		    cmd_name_arg("key", a[2], err, err_cap))
			return -1;
		out->table = a[0];
		out->field = a[1];
		out->key = a[2];
		return cmd_range(a, 3, now, out, err, err_cap);
	case CMD_KEYS:
		if (cmd_name_arg("table", a[0], err, err_cap) ||
		    cmd_name_arg("field", a[1], err, err_cap))
			return -1;
		out->table = a[0];
		out->field = a[1];
		return cmd_range(a, 2, now, out, err, err_cap);
	case CMD_SCAN:
		if (cmd_name_arg("table", a[0], err, err_cap) ||
		    cmd_name_arg("key", a[1], err, err_cap))
			return -1;
		out->table = a[0];
		out->key = a[1];
		if (cmd_range(a, 2, now, out, err, err_cap))
			return -1;
		if (nargs == 5) {
			int64_t lim;
			if (cmd_int64(a[4], &lim) || lim <= 0)
				return cmd_fail(err, err_cap,
						"limit: '%.40s' is not a positive integer", a[4]);
			out->limit = (uint64_t)lim;
		}
		return 0;
	case CMD_PRECISION: {
		static const char *names[4] = {"ns", "us", "ms", "s"};
		for (int i = 0; i < 4; i++)
			if (!strcasecmp(a[0], names[i])) {
				out->prec = (enum tally_precision)i;
				return 0;
			}
		return cmd_fail(err, err_cap, "precision: '%.40s' is not one of ns, us, ms, s",
				a[0]);
	}
	default: return 0;
	}
}

size_t cmd_usage_count(void)
{
	return sizeof cmd_table / sizeof cmd_table[0];
}

const char *cmd_usage(size_t i)
{
	return i < cmd_usage_count() ? cmd_table[i].usage : NULL;
}
