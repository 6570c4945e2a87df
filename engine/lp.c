/*
 * lp.c — InfluxDB line protocol parser.
 *
 * One pass per line, a byte at a time, steered by a 256-entry class table: a
 * name is scanned up to a byte of its stop class, numbers are converted while
 * they are scanned, and only a token that held an escape is copied
 * (unescaped) into the scratch buffer. A common line costs no copy, no
 * allocation and no strlen/strtod: floats take Clinger's fast path (a
 * mantissa <= 2^53 times or divided by an exact power of ten <= 1e22 is one
 * correctly rounded IEEE operation); only the rare rest goes to strtod_l in
 * the "C" locale.
 *
 * The idea that keeps a bad line from eating good ones: where a line ends is
 * decided by the same structural rules whether it parses or not. The parser
 * remembers the last safe point it passed (the line start, the start of the
 * current field key, or the timestamp); on any error resync() rescans from
 * there with only the structural rules and no length bound, so an escaped
 * newline inside a quoted string later on a bad line still does not end it,
 * and an overlong line is skipped by scanning, never buffered.
 *
 * Length bound: tokens are never read past start + max_line. Whatever it
 * found, a line whose bytes (up to its '\n', a "\r" before it excluded) run
 * longer than max_line is reported as "line longer than N bytes", so a token
 * cut by the bound never yields a misleading reason. Because unescaping
 * only shrinks text, everything copied into scratch for one line fits in
 * max_line bytes (+1 for the NUL of a strtod copy).
 *
 * Line numbers: ps->lines counts physical lines ('\n'-terminated, plus a
 * final unterminated one), blank lines, comments and the continuation
 * lines of a string with an escaped newline included; after LP_END it equals
 * the number of lines in the text. ps->line_no is the number of the first
 * physical line of the record just returned, i.e. where the user sees it
 * start in their file.
 */
#include "lp.h"

#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <locale.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mem.h"
#include "strmap.h"

#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define LP_DEFAULT_MAX_LINE (UINT32_C(1) << 20)

/* Byte classes. */
enum {
	C_SP = 1,
	C_COMMA = 2,
	C_EQ = 4,
	C_NL = 8,
	C_CR = 16,
	C_BSL = 32,
	C_QUOTE = 64,
	C_TAB = 128,
	C_NUL = 256,
};

static const uint16_t cls[256] = {
	[' '] = C_SP,   [','] = C_COMMA, ['='] = C_EQ,   ['\n'] = C_NL, ['\r'] = C_CR,
	['\\'] = C_BSL, ['"'] = C_QUOTE, ['\t'] = C_TAB, [0] = C_NUL,
};

/* Stop and escape sets of names: the measurement ends at ',' or ' ' and
 * escapes those; keys and tag values also stop at and escape '='. */
#define MEAS_SET (C_SP | C_COMMA)
#define KEY_SET  (C_SP | C_COMMA | C_EQ)

/* Safe points resync() can restart from. */
enum { RS_SEC1, RS_FIELDS, RS_TAIL };

static const double pow10_tab[23] = {
	1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
	1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
};

static const int64_t prec_mult[4] = {1, 1000, 1000000, 1000000000};

/* ---------------------------------------------------------------- locale */

/* newlocale() once per process; never freed (it stays reachable). */
static _Atomic(locale_t) c_locale;

static locale_t get_c_locale(void)
{
	locale_t l = atomic_load_explicit(&c_locale, memory_order_acquire);
	if (l)
		return l;
	locale_t n = newlocale(LC_ALL_MASK, "C", (locale_t)0);
	if (!n)
		return (locale_t)0;
	locale_t expected = (locale_t)0;
	if (!atomic_compare_exchange_strong(&c_locale, &expected, n)) {
		freelocale(n);
		return expected;
	}
	return n;
}

/* ---------------------------------------------------------------- UTF-8 */

size_t lp_utf8_one(const unsigned char *s, size_t n)
{
	unsigned c = s[0];
	if (c < 0x80)
		return 1;
	if (c < 0xC2) /* continuation byte, or overlong 2-byte lead */
		return 0;
	if (c < 0xE0)
		return n >= 2 && (s[1] & 0xC0) == 0x80 ? 2 : 0;
	if (c < 0xF0) {
		if (n < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80)
			return 0;
		if (c == 0xE0 && s[1] < 0xA0) /* overlong */
			return 0;
		if (c == 0xED && s[1] >= 0xA0) /* surrogates U+D800..U+DFFF */
			return 0;
		return 3;
	}
	if (c < 0xF5) {
		if (n < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 ||
		    (s[3] & 0xC0) != 0x80)
			return 0;
		if (c == 0xF0 && s[1] < 0x90) /* overlong */
			return 0;
		if (c == 0xF4 && s[1] >= 0x90) /* above U+10FFFF */
			return 0;
		return 4;
	}
	return 0;
}

int lp_utf8_valid(const char *p, size_t n)
{
	const unsigned char *s = (const unsigned char *)p, *t = s + n;
	while (s < t) {
		while (t - s >= 8) {
			uint64_t x;
			memcpy(&x, s, 8);
			if (x & UINT64_C(0x8080808080808080))
				break;
			s += 8;
		}
		if (s == t)
			break;
		if (*s < 0x80) {
			s++;
			continue;
		}
		size_t k = lp_utf8_one(s, (size_t)(t - s));
		if (!k)
			return 0;
		s += k;
	}
	return 1;
}

/* ---------------------------------------------------------------- reasons */

#define QBUF LP_QUOTE_BUF

const char *lp_quote(char *dst, const char *src, size_t n)
{
	const unsigned char *s = (const unsigned char *)src, *t = s + n;
	size_t o = 0;
	while (s < t) {
		size_t k = 1, w;
		if (*s >= 0x20 && *s < 0x7F) {
			w = 1;
		} else if (*s >= 0x80 && (k = lp_utf8_one(s, (size_t)(t - s))) != 0 &&
			   !(s[0] == 0xC2 && s[1] < 0xA0)) { /* C1 controls */
			w = k;
		} else {
			k = 1;
			w = 4;
		}
		if (o + w > LP_QUOTE_MAX) {
			memcpy(dst + o, "...", 3);
			o += 3;
			break;
		}
		if (w == 4 && k == 1)
			snprintf(dst + o, 5, "\\x%02X", *s);
		else
			memcpy(dst + o, s, k);
		o += w;
		s += k;
	}
	dst[o] = 0;
	return dst;
}

static const char *qstr(char *dst, lp_str s)
{
	return lp_quote(dst, s.p, s.n);
}

/* Formats into reason[cap], cutting only at a UTF-8 character boundary. */
__attribute__((format(printf, 3, 4))) static void errf(char *reason, size_t cap, const char *fmt,
						       ...)
{
	char tmp[256];
	va_list ap;
	va_start(ap, fmt);
	int r = vsnprintf(tmp, sizeof tmp, fmt, ap);
	va_end(ap);
	if (!reason || cap == 0)
		return;
	size_t n = r < 0 ? 0 : (size_t)r;
	if (n >= sizeof tmp)
		n = sizeof tmp - 1;
	if (n >= cap) {
		n = cap - 1;
		while (n > 0 && ((unsigned char)tmp[n] & 0xC0) == 0x80)
			n--;
	}
	memcpy(reason, tmp, n);
	reason[n] = 0;
}

/* ---------------------------------------------------------------- scanning */

/* 1 when p is at the end of the line's content: a '\n', a "\r" ending the
 * line, or the bound e. */
static inline int at_eol(const char *p, const char *e)
{
	return p == e || *p == '\n' || (*p == '\r' && (p + 1 == e || p[1] == '\n'));
}

/* 1 when p ends an unquoted field value. */
static inline int at_vdelim(const char *p, const char *e)
{
	return p == e || (cls[(unsigned char)*p] & (C_COMMA | C_SP | C_TAB | C_NL)) ||
	       (*p == '\r' && (p + 1 == e || p[1] == '\n'));
}

/* End of the unquoted value token at p (for error messages). */
static const char *vtoken_end(const char *p, const char *e)
{
	while (!at_vdelim(p, e))
		p++;
	return p;
}

typedef struct tokinfo {
	unsigned hi; /* OR of the bytes: bit 7 set when non-ASCII */
	int esc;     /* held an escape */
	int bad;     /* a backslash ended the line */
	int nul;     /* held a NUL byte */
} tokinfo;

/* Scans a name or tag value from p up to an unescaped byte of class stop,
 * the end of the line or e. A backslash before a byte of class escs is an
 * escape; before anything else it stands for itself. */
static inline const char *scan_name(const char *p, const char *e, unsigned stop, unsigned escs,
				    tokinfo *ti)
{
	unsigned hi = 0;
	int esc = 0;
	ti->bad = 0;
	ti->nul = 0;
#ifdef __SSE2__
	/* 16 bytes at a time up to the first byte that may end or escape a
	 * name; the loop below decides what that byte means. */
	while (e - p >= 16) {
		__m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);
		__m128i m = _mm_or_si128(
			_mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8(' ')),
						  _mm_cmpeq_epi8(v, _mm_set1_epi8(','))),
				     _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('=')),
						  _mm_cmpeq_epi8(v, _mm_set1_epi8('\\')))),
			_mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('\n')),
						  _mm_cmpeq_epi8(v, _mm_set1_epi8('\r'))),
				     _mm_cmpeq_epi8(v, _mm_setzero_si128())));
		unsigned stops = (unsigned)_mm_movemask_epi8(m);
		unsigned high = (unsigned)_mm_movemask_epi8(v); /* non-ASCII bytes */
		if (!stops) {
			hi |= high ? 0x80 : 0;
			p += 16;
			continue;
		}
		unsigned n = (unsigned)__builtin_ctz(stops);
		hi |= high & ((1u << n) - 1) ? 0x80 : 0;
		p += n;
		break;
	}
#endif
	while (p < e) {
		unsigned char c = (unsigned char)*p;
		unsigned k = cls[c];
		if (__builtin_expect(!(k & (stop | C_NL | C_CR | C_BSL | C_NUL)), 1)) {
			hi |= c;
			p++;
			continue;
		}
		if (k & C_BSL) {
			if (at_eol(p + 1, e)) {
				ti->bad = 1;
				break;
			}
			if (cls[(unsigned char)p[1]] & escs) {
				esc = 1;
				p += 2;
			} else {
				p++;
			}
			continue;
		}
		if (k & (C_CR | C_NUL)) {
			if ((k & C_CR) && (p + 1 == e || p[1] == '\n'))
				break;
			ti->nul |= c == 0;
			p++;
			continue;
		}
		break; /* stop byte or newline */
	}
	ti->hi = hi;
	ti->esc = esc;
	return p;
}

/* Makes the string of the name [s, t): in place, or unescaped into scratch. */
static lp_str name_str(char *scratch, size_t *spos, const char *s, const char *t, int esc,
		       unsigned escs)
{
	if (!esc)
		return (lp_str){s, (uint32_t)(t - s)};
	char *d0 = scratch + *spos, *d = d0;
	while (s < t) {
		if (*s == '\\' && s + 1 < t && (cls[(unsigned char)s[1]] & escs)) {
			*d++ = s[1];
			s += 2;
		} else {
			*d++ = *s++;
		}
	}
	*spos += (size_t)(d - d0);
	return (lp_str){d0, (uint32_t)(d - d0)};
}

/* Unescapes the body [s, t) of a quoted string into scratch. Mirrors the
 * escapes recognised by the string scanner in lp_next. */
static lp_str string_str(char *scratch, size_t *spos, const char *s, const char *t)
{
	char *d0 = scratch + *spos, *d = d0;
	while (s < t) {
		if (*s == '\\' && s + 1 < t) {
			char n1 = s[1];
			if (n1 == '"' || n1 == '\\' || n1 == '\n') {
				*d++ = n1;
				s += 2;
				continue;
			}
			if (n1 == '\r' && s + 2 < t && s[2] == '\n') {
				*d++ = '\n';
				s += 3;
				continue;
			}
		}
		*d++ = *s++;
	}
	*spos += (size_t)(d - d0);
	return (lp_str){d0, (uint32_t)(d - d0)};
}

/*
 * Finds the end of a bad line with the structural rules alone, starting
 * from a safe point of kind st at p. Returns the line's '\n' or end.
 * Must agree with lp_next on where tokens end: the measurement/tag section
 * ends at an unescaped ' ', a field key at '=', ',' or ' ', a quoted string
 * at an unescaped '"' (an escaped newline inside does not end the line),
 * an unquoted value at ',', ' ' or '\t'.
 */
static const char *resync(int st, const char *p, const char *end)
{
	if (st == RS_SEC1) {
		for (;;) {
			if (p == end)
				return end;
			char c = *p;
			if (c == '\n')
				return p;
			if (c == ' ')
				break;
			p += (c == '\\' && p + 1 < end && p[1] == ' ') ? 2 : 1;
		}
		while (p < end && (*p == ' ' || *p == '\t'))
			p++;
		st = RS_FIELDS;
	}
	if (st == RS_FIELDS) {
		for (;;) { /* at a field key */
			for (;;) {
				if (p == end)
					return end;
				char c = *p;
				if (c == '\n')
					return p;
				if (c == '=' || c == ',' || c == ' ')
					break;
				p += (c == '\\' && p + 1 < end &&
				      (cls[(unsigned char)p[1]] & KEY_SET))
					     ? 2
					     : 1;
			}
			if (*p == ',') {
				p++;
				continue;
			}
			if (*p == ' ')
				break;
			p++; /* '=' */
			if (p < end && *p == '"') {
				for (p++;;) {
					if (p == end)
						return end;
					char c = *p;
					if (c == '\n')
						return p;
					if (c == '"') {
						p++;
						break;
					}
					if (c == '\\' && p + 1 < end) {
						if (p[1] == '"' || p[1] == '\\' || p[1] == '\n') {
							p += 2;
							continue;
						}
						if (p[1] == '\r' && p + 2 < end && p[2] == '\n') {
							p += 3;
							continue;
						}
					}
					p++;
				}
			}
			for (;;) { /* rest of the value */
				if (p == end)
					return end;
				char c = *p;
				if (c == '\n')
					return p;
				if (c == ',' || c == ' ' || c == '\t')
					break;
				p++;
			}
			if (*p != ',')
				break;
			p++;
		}
	}
	const char *nl = memchr(p, '\n', (size_t)(end - p));
	return nl ? nl : end;
}

static uint64_t count_nl(const char *p, const char *t)
{
	uint64_t n = 0;
	while (p < t && (p = memchr(p, '\n', (size_t)(t - p))) != NULL) {
		n++;
		p++;
	}
	return n;
}

/* ---------------------------------------------------------------- values */

/* NUM_TINY: a nonzero literal closer to 0 than the least subnormal
 * (4.9e-324), which would be stored as 0 without a word. */
enum { NUM_OK, NUM_BAD, NUM_RANGE, NUM_TINY };

static inline unsigned digit(const char *p)
{
	return (unsigned)((unsigned char)*p - '0');
}

/* 1 when the 8 bytes of w (read little-endian from memory) are all ASCII
 * digits: each byte's high nibble is 3, and adding 6 keeps it 3. */
static inline int swar_8digits(uint64_t w)
{
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
	w = __builtin_bswap64(w);
#endif
	return (w & UINT64_C(0xF0F0F0F0F0F0F0F0)) == UINT64_C(0x3030303030303030) &&
	       ((w + UINT64_C(0x0606060606060606)) & UINT64_C(0xF0F0F0F0F0F0F0F0)) ==
		       UINT64_C(0x3030303030303030);
}

/* The value of 8 ASCII digits (first byte most significant) in three
 * multiplications: pairs, then quads, then the whole. */
static inline uint64_t swar_8value(uint64_t w)
{
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
	w = __builtin_bswap64(w);
#endif
	w -= UINT64_C(0x3030303030303030);
	w = (w * 10 + (w >> 8)) & UINT64_C(0x00FF00FF00FF00FF);
	w = (w * 100 + (w >> 16)) & UINT64_C(0x0000FFFF0000FFFF);
	return (w * 10000 + (w >> 32)) & UINT64_C(0xFFFFFFFF);
}

/*
 * Parses a number at p: float, or integer with an 'i' or 'u' suffix, that
 * must be followed by a value delimiter; sets *endp past it.
 * scratch (with room for the token and a NUL) takes the strtod copy.
 */
static int parse_number(const char *p, const char *e, char *scratch, lp_field *f, const char **endp)
{
	const char *q = p;
	int neg = 0;
	if (*q == '-') {
		neg = 1;
		q++;
	}
	const char *ds = q;
	uint64_t w = 0;    /* significant digits, at most 19 */
	int nsig = 0;      /* digits in w from the first non-zero one */
	int trunc = 0;     /* more than 19 significant digits */
	int64_t exp10 = 0; /* value = w * 10^exp10, unless trunc */
	while (q < e && digit(q) < 10) {
		if (nsig < 19) {
			w = w * 10 + digit(q);
			nsig += w != 0;
		} else {
			exp10++;
			trunc = 1;
		}
		q++;
	}
	size_t nint = (size_t)(q - ds);
	if (q < e && (*q == 'i' || *q == 'u')) {
		if (nint == 0)
			return NUM_BAD;
		uint64_t m = w;
		if (trunc) { /* 20+ significant digits: only u64 may still fit */
			m = 0;
			for (const char *s = ds; s < q; s++)
				if (__builtin_mul_overflow(m, 10, &m) ||
				    __builtin_add_overflow(m, digit(s), &m))
					return NUM_RANGE;
		}
		if (*q == 'i') {
			if (m > (neg ? (UINT64_C(1) << 63) : (uint64_t)INT64_MAX))
				return NUM_RANGE;
			f->type = TALLY_T_I64;
			f->v.i64 = !neg                       ? (int64_t)m
				   : m == (UINT64_C(1) << 63) ? INT64_MIN
							      : -(int64_t)m;
		} else {
			if (neg)
				return NUM_BAD;
			f->type = TALLY_T_U64;
			f->v.u64 = m;
		}
		*endp = ++q;
		return at_vdelim(q, e) ? NUM_OK : NUM_BAD;
	}
	size_t nfrac = 0;
	if (q < e && *q == '.') {
		const char *fs = ++q;
		while (q < e && digit(q) < 10) {
			if (nsig < 19) {
				w = w * 10 + digit(q);
				nsig += w != 0;
				exp10--;
			} else {
				trunc = 1;
			}
			q++;
		}
		nfrac = (size_t)(q - fs);
	}
	if (nint + nfrac == 0)
		return NUM_BAD;
	if (q < e && (*q == 'e' || *q == 'E')) {
		q++;
		int eneg = 0;
		if (q < e && (*q == '+' || *q == '-'))
			eneg = *q++ == '-';
		const char *es = q;
		int64_t ev = 0;
		while (q < e && digit(q) < 10) {
			if (ev < 1000000)
				ev = ev * 10 + digit(q);
			q++;
		}
		if (q == es)
			return NUM_BAD;
		exp10 += eneg ? -ev : ev;
	}
	*endp = q;
	if (!at_vdelim(q, e))
		return NUM_BAD; /* caller reports the whole token */
	double v;
#if FLT_EVAL_METHOD == 0
	if (w == 0) { /* trunc implies w != 0 */
		v = neg ? -0.0 : 0.0;
	} else if (!trunc && w <= (UINT64_C(1) << 53) && exp10 >= -22 && exp10 <= 22) {
		v = (double)w;
		v = exp10 < 0 ? v / pow10_tab[-exp10] : v * pow10_tab[exp10];
		if (neg)
			v = -v;
	} else
#endif
	{
		size_t n = (size_t)(q - p);
		memcpy(scratch, p, n);
		scratch[n] = 0;
		v = strtod_l(scratch, NULL, c_locale);
		if (v > DBL_MAX || v < -DBL_MAX)
			return NUM_RANGE;
		if (v == 0 && w != 0) /* w: the literal's leading digits */
			return NUM_TINY;
	}
	f->type = TALLY_T_F64;
	f->v.f64 = v;
	return NUM_OK;
}

/* Parses a boolean token [p, t). */
static int parse_bool(const char *p, size_t n, int *b)
{
	switch (n) {
	case 1:
		if (*p == 't' || *p == 'T')
			return *b = 1, 1;
		if (*p == 'f' || *p == 'F')
			return *b = 0, 1;
		return 0;
	case 4:
		if (!memcmp(p, "true", 4) || !memcmp(p, "True", 4) || !memcmp(p, "TRUE", 4))
			return *b = 1, 1;
		return 0;
	case 5:
		if (!memcmp(p, "false", 5) || !memcmp(p, "False", 5) || !memcmp(p, "FALSE", 5))
			return *b = 0, 1;
		return 0;
	default: return 0;
	}
}

/* ---------------------------------------------------------------- duplicates */

static inline int same(const lp_str *a, const lp_str *b)
{
	return a->n == b->n && memcmp(a->p, b->p, a->n) == 0;
}

/*
 * Index of the first key (in order) that repeats an earlier one, or -1.
 * Keys are the lp_str at offset 0 of each stride-sized element (lp_tag and
 * lp_field both start with their key). Pairwise for the usual handful of
 * keys, a hash table on the stack for big lines.
 */
static int find_dup(const void *base, size_t stride, uint32_t n)
{
	const char *b = base;
#define KEY(i) ((const lp_str *)(const void *)(b + (size_t)(i)*stride))
	if (n <= 8) {
		for (uint32_t j = 1; j < n; j++)
			for (uint32_t i = 0; i < j; i++)
				if (same(KEY(i), KEY(j)))
					return (int)j;
		return -1;
	}
	uint16_t slot[2 * LP_FIELDS_MAX];
	uint32_t cap = 16;
	while (cap < 2 * n)
		cap *= 2;
	memset(slot, 0, cap * sizeof slot[0]);
	for (uint32_t j = 0; j < n; j++) {
		const lp_str *k = KEY(j);
		uint32_t h = 2166136261u;
		for (uint32_t i = 0; i < k->n; i++)
			h = (h ^ (unsigned char)k->p[i]) * 16777619u;
		for (h &= cap - 1; slot[h]; h = (h + 1) & (cap - 1))
			if (same(KEY(slot[h] - 1), k))
				return (int)j;
		slot[h] = (uint16_t)(j + 1);
	}
	return -1;
#undef KEY
}

/* ---------------------------------------------------------------- API */

int lp_parser_init(lp_parser *ps, uint32_t max_line, enum tally_precision prec)
{
	memset(ps, 0, sizeof *ps);
	if ((unsigned)prec > TALLY_PREC_S)
		return TALLY_EINVAL;
	if (!get_c_locale())
		return -ENOMEM;
	ps->prec = prec;
	ps->max_line = max_line ? max_line : LP_DEFAULT_MAX_LINE;
	ps->scratch = mem_alloc((size_t)ps->max_line + 1);
	if (!ps->scratch)
		return -ENOMEM;
	return 0;
}

void lp_parser_free(lp_parser *ps)
{
	if (!ps)
		return;
	mem_free(ps->scratch);
	ps->scratch = NULL;
}

void lp_parser_reset(lp_parser *ps, enum tally_precision prec)
{
	ps->prec = prec;
	ps->line_no = 0;
	ps->lines = 0;
}

/* Keeps the good line's head and first field key for the next line
 * (lp_parser.head, .fkey) when they are plain bytes of the input: names
 * that held an escape live in the scratch buffer and are not kept. */
static void remember_shape(lp_parser *ps, const lp_line *l, const char *head, const char *end,
			   int keep_head, int keep_fkey)
{
	if (!keep_head)
		ps->head_n = 0;
	if (!keep_fkey)
		ps->fkey_n = 0;
	if (!keep_head && l->n_tags && l->measurement.p == head) {
		const lp_str *k = &l->tags[0].key;
		const char *stop = k->p + k->n + 1; /* after its '=' */
		if (k->p == head + l->measurement.n + 1 && stop - head <= LP_SHAPE_MAX &&
		    stop <= end) {
			memcpy(ps->head, head, (size_t)(stop - head));
			ps->head_n = (uint8_t)(stop - head);
			ps->head_meas = (uint8_t)l->measurement.n;
		}
	}
	const lp_str *fk = &l->fields[0].key;
	if (!keep_fkey && l->n_fields && fk->n < LP_SHAPE_MAX && fk->p > head &&
	    fk->p + fk->n < end && fk->p[fk->n] == '=') {
		memcpy(ps->fkey, fk->p, fk->n + 1);
		ps->fkey_n = (uint8_t)(fk->n + 1);
	}
}

#define FAIL(c, ...)                                   \
	do {                                           \
		ecode = (c);                           \
		errf(reason, reason_cap, __VA_ARGS__); \
		goto fail;                             \
	} while (0)

enum lp_result lp_next(lp_parser *ps, const char **cur, const char *end, lp_line *out, int *code,
		       char *reason, size_t reason_cap)
{
	const char *start = *cur, *p = start, *t;
	if (start >= end) {
		ps->line_no = ps->lines;
		return LP_END;
	}
	ps->line_no = ps->lines + 1;

	while (p < end && (*p == ' ' || *p == '\t' || *p == '\r'))
		p++;
	if (p == end || *p == '\n' || *p == '#') {
		const char *nl = p < end ? memchr(p, '\n', (size_t)(end - p)) : NULL;
		*cur = nl ? nl + 1 : end;
		ps->lines++;
		return LP_SKIP;
	}

	/* Never read past e; a line that reaches it is reported as overlong. */
	const char *e = (size_t)(end - start) > ps->max_line ? start + ps->max_line : end;
	int rs = RS_SEC1, ecode = TALLY_ESYNTAX;
	const char *rs_pos = p;
	uint64_t nls = 0; /* escaped newlines in strings */
	size_t spos = 0;  /* scratch bytes used */
	char qa[QBUF], qb[QBUF];
	tokinfo ti;

	if (p >= e)
		FAIL(TALLY_ELIMIT, "line too long");

	const char *head = p;
	/* The same head as the last good line: the same measurement and first
	 * tag key, already checked; the first tag's value is next. */
	int same_head =
		ps->head_n && (size_t)(e - p) > ps->head_n && strmap_eq(p, ps->head, ps->head_n);
	int same_fkey = 0;
	if (same_head) {
		out->measurement = (lp_str){p, ps->head_meas};
		out->tags[0].key =
			(lp_str){p + ps->head_meas + 1, (uint32_t)(ps->head_n - ps->head_meas - 2)};
		p += ps->head_n;
	} else {
		/* Measurement. */
		t = scan_name(p, e, MEAS_SET, MEAS_SET, &ti);
		if (ti.bad)
			FAIL(TALLY_ESYNTAX, "bad escape at end of line");
		if (t == p)
			FAIL(TALLY_ESYNTAX, "empty measurement");
		out->measurement = name_str(ps->scratch, &spos, p, t, ti.esc, MEAS_SET);
		if (out->measurement.n > LP_NAME_MAX)
			FAIL(TALLY_ELIMIT, "measurement longer than %d bytes", LP_NAME_MAX);
		if ((ti.hi & 0x80) && !lp_utf8_valid(out->measurement.p, out->measurement.n))
			FAIL(TALLY_ESYNTAX, "measurement: invalid UTF-8");
		if (ti.nul)
			FAIL(TALLY_ESYNTAX, "measurement: NUL byte");
		p = t;
	}

	/* Tags. With the same head, the first tag's key is known and its
	 * value comes next. */
	uint32_t nt = 0;
	for (int key_known = same_head; key_known || (p < e && *p == ','); key_known = 0) {
		lp_tag *tg = &out->tags[nt];
		if (!key_known) {
			p++;
			if (nt == LP_TAGS_MAX)
				FAIL(TALLY_ELIMIT, "too many tags (max %d)", LP_TAGS_MAX);
			t = scan_name(p, e, KEY_SET, KEY_SET, &ti);
			if (ti.bad)
				FAIL(TALLY_ESYNTAX, "bad escape at end of line");
			if (t == p)
				FAIL(TALLY_ESYNTAX, "empty tag key");
			tg->key = name_str(ps->scratch, &spos, p, t, ti.esc, KEY_SET);
			if (tg->key.n > LP_NAME_MAX)
				FAIL(TALLY_ELIMIT, "tag key longer than %d bytes", LP_NAME_MAX);
			if ((ti.hi & 0x80) && !lp_utf8_valid(tg->key.p, tg->key.n))
				FAIL(TALLY_ESYNTAX, "tag key '%s': invalid UTF-8",
				     qstr(qa, tg->key));
			if (ti.nul)
				FAIL(TALLY_ESYNTAX, "tag key '%s': NUL byte", qstr(qa, tg->key));
			if (t == e || *t != '=')
				FAIL(TALLY_ESYNTAX, "tag '%s': missing '='", qstr(qa, tg->key));
			p = t + 1;
		}
		t = scan_name(p, e, KEY_SET, KEY_SET, &ti);
		if (ti.bad)
			FAIL(TALLY_ESYNTAX, "bad escape at end of line");
		if (t < e && *t == '=')
			FAIL(TALLY_ESYNTAX, "tag '%s': unescaped '=' in value", qstr(qa, tg->key));
		if (t == p)
			FAIL(TALLY_ESYNTAX, "tag '%s': empty value", qstr(qa, tg->key));
		tg->value = name_str(ps->scratch, &spos, p, t, ti.esc, KEY_SET);
		if (tg->value.n > LP_VALUE_MAX)
			FAIL(TALLY_ELIMIT, "tag '%s': value longer than %d bytes",
			     qstr(qa, tg->key), LP_VALUE_MAX);
		if ((ti.hi & 0x80) && !lp_utf8_valid(tg->value.p, tg->value.n))
			FAIL(TALLY_ESYNTAX, "tag '%s': invalid UTF-8", qstr(qa, tg->key));
		if (ti.nul)
			FAIL(TALLY_ESYNTAX, "tag '%s': NUL byte in value", qstr(qa, tg->key));
		nt++;
		p = t;
	}
	out->n_tags = nt;

	/* p is at ' ' or the end of the line. */
	while (p < e && (*p == ' ' || *p == '\t'))
		p++;
	if (at_eol(p, e))
		FAIL(TALLY_ESYNTAX, "missing fields");

	/* Fields. */
	uint32_t nf = 0;
	for (;;) {
		rs = RS_FIELDS;
		rs_pos = p;
		if (nf == LP_FIELDS_MAX)
			FAIL(TALLY_ELIMIT, "too many fields (max %d)", LP_FIELDS_MAX);
		lp_field *f = &out->fields[nf];
		if (nf == 0 && ps->fkey_n && (size_t)(e - p) > ps->fkey_n &&
		    strmap_eq(p, ps->fkey, ps->fkey_n)) {
			/* the last good line's first field key, already checked */
			f->key = (lp_str){p, (uint32_t)ps->fkey_n - 1};
			p += ps->fkey_n;
			same_fkey = 1;
		} else {
			t = scan_name(p, e, KEY_SET, KEY_SET, &ti);
			if (ti.bad)
				FAIL(TALLY_ESYNTAX, "bad escape at end of line");
			if (t == p)
				FAIL(TALLY_ESYNTAX, "empty field key");
			f->key = name_str(ps->scratch, &spos, p, t, ti.esc, KEY_SET);
			if (f->key.n > LP_NAME_MAX)
				FAIL(TALLY_ELIMIT, "field key longer than %d bytes", LP_NAME_MAX);
			if ((ti.hi & 0x80) && !lp_utf8_valid(f->key.p, f->key.n))
				FAIL(TALLY_ESYNTAX, "field key '%s': invalid UTF-8",
				     qstr(qa, f->key));
			if (ti.nul)
				FAIL(TALLY_ESYNTAX, "field key '%s': NUL byte", qstr(qa, f->key));
			if (t == e || *t != '=')
				FAIL(TALLY_ESYNTAX, "field '%s': missing '='", qstr(qa, f->key));
			p = t + 1;
		}
		if (at_vdelim(p, e))
			FAIL(TALLY_ESYNTAX, "field '%s': missing value", qstr(qa, f->key));
		unsigned char c = (unsigned char)*p;
		if (c == '"') {
			const char *s = p + 1, *q = s;
			unsigned hi = 0;
			int esc = 0;
			for (;;) {
				if (q == e)
					FAIL(TALLY_ESYNTAX, "field '%s': unterminated string",
					     qstr(qa, f->key));
				unsigned char ch = (unsigned char)*q;
				if (__builtin_expect(!(cls[ch] & (C_QUOTE | C_BSL | C_NL)), 1)) {
					hi |= ch;
					q++;
					continue;
				}
				if (ch == '"')
					break;
				if (ch == '\n')
					FAIL(TALLY_ESYNTAX, "field '%s': unterminated string",
					     qstr(qa, f->key));
				if (q + 1 < e) { /* backslash */
					char n1 = q[1];
					if (n1 == '"' || n1 == '\\') {
						esc = 1;
						q += 2;
						continue;
					}
					if (n1 == '\n') {
						esc = 1;
						nls++;
						q += 2;
						continue;
					}
					if (n1 == '\r' && q + 2 < e && q[2] == '\n') {
						esc = 1;
						nls++;
						q += 3;
						continue;
					}
				}
				q++;
			}
			f->type = TALLY_T_STR;
			f->v.str = esc ? string_str(ps->scratch, &spos, s, q)
				       : (lp_str){s, (uint32_t)(q - s)};
			if (f->v.str.n > LP_VALUE_MAX)
				FAIL(TALLY_ELIMIT, "field '%s': string longer than %d bytes",
				     qstr(qa, f->key), LP_VALUE_MAX);
			if ((hi & 0x80) && !lp_utf8_valid(f->v.str.p, f->v.str.n))
				FAIL(TALLY_ESYNTAX, "field '%s': invalid UTF-8", qstr(qa, f->key));
			p = q + 1;
			if (!at_vdelim(p, e))
				FAIL(TALLY_ESYNTAX, "field '%s': unexpected text after string '%s'",
				     qstr(qa, f->key),
				     lp_quote(qb, p, (size_t)(vtoken_end(p, e) - p)));
		} else if (digit(p) < 10 || c == '-' || c == '.' || c == '+') {
			const char *q = p;
			int r = c == '+' ? NUM_BAD : parse_number(p, e, ps->scratch + spos, f, &q);
			if (r != NUM_OK) {
				t = vtoken_end(p, e);
				FAIL(TALLY_ESYNTAX, "field '%s': %s '%s'", qstr(qa, f->key),
				     r == NUM_RANGE  ? "number out of range"
				     : r == NUM_TINY ? "number too small, would be stored as 0"
						     : "invalid number",
				     lp_quote(qb, p, (size_t)(t - p)));
			}
			p = q;
		} else {
			t = vtoken_end(p, e);
			if (!parse_bool(p, (size_t)(t - p), &f->v.b))
				FAIL(TALLY_ESYNTAX, "field '%s': invalid value '%s'",
				     qstr(qa, f->key), lp_quote(qb, p, (size_t)(t - p)));
			f->type = TALLY_T_BOOL;
			p = t;
		}
		nf++;
		if (p < e && *p == ',') {
			p++;
			continue;
		}
		break;
	}
	out->n_fields = nf;

	/* Timestamp. */
	while (p < e && (*p == ' ' || *p == '\t'))
		p++;
	rs = RS_TAIL;
	rs_pos = p;
	out->has_ts = 0;
	if (!at_eol(p, e)) {
		const char *ts0 = p;
		int neg = *p == '-';
		p += neg;
		const char *d0 = p;
		uint64_t m = 0;
		int ovf = 0;
		/* Nanosecond timestamps are 19 digits: two words of 8 digits
		 * each, then the rest one at a time. 16 digits cannot overflow. */
		for (int k = 0; k < 2 && e - p >= 8; k++) {
			uint64_t w;
			memcpy(&w, p, 8);
			if (!swar_8digits(w))
				break;
			m = m * 100000000 + swar_8value(w);
			p += 8;
		}
		while (p < e && digit(p) < 10) {
			ovf |= __builtin_mul_overflow(m, 10, &m);
			ovf |= __builtin_add_overflow(m, digit(p), &m);
			p++;
		}
		if (p == d0 || !(at_eol(p, e) || *p == ' ' || *p == '\t')) {
			t = ts0;
			while (!at_eol(t, e) && *t != ' ' && *t != '\t')
				t++;
			FAIL(TALLY_ESYNTAX, "invalid timestamp '%s'",
			     lp_quote(qa, ts0, (size_t)(t - ts0)));
		}
		int64_t ts;
		if (ovf || m > (neg ? (UINT64_C(1) << 63) : (uint64_t)INT64_MAX))
			FAIL(TALLY_ESYNTAX, "timestamp out of range");
		ts = !neg ? (int64_t)m : m == (UINT64_C(1) << 63) ? INT64_MIN : -(int64_t)m;
		if (__builtin_mul_overflow(ts, prec_mult[(unsigned)ps->prec & 3], &ts) ||
		    ts < LP_TS_MIN || ts > LP_TS_MAX)
			FAIL(TALLY_ESYNTAX, "timestamp out of range");
		out->has_ts = 1;
		out->ts = ts;
		while (p < e && (*p == ' ' || *p == '\t'))
			p++;
		if (!at_eol(p, e)) {
			t = p;
			while (!at_eol(t, e))
				t++;
			FAIL(TALLY_ESYNTAX, "unexpected text after timestamp '%s'",
			     lp_quote(qa, p, (size_t)(t - p)));
		}
	}

	/* The line must really end here, not merely at the bound e. */
	if (!(p == end || *p == '\n' || (*p == '\r' && (p + 1 == end || p[1] == '\n'))))
		FAIL(TALLY_ELIMIT, "line too long");

	int d;
	if (nt > 1 && (d = find_dup(out->tags, sizeof out->tags[0], nt)) >= 0)
		FAIL(TALLY_ESYNTAX, "duplicate tag '%s'", qstr(qa, out->tags[d].key));
	if (nf > 1 && (d = find_dup(out->fields, sizeof out->fields[0], nf)) >= 0)
		FAIL(TALLY_ESYNTAX, "duplicate field '%s'", qstr(qa, out->fields[d].key));

	*cur = p == end ? end : *p == '\n' ? p + 1 : p + 1 == end ? end : p + 2;
	ps->lines += 1 + nls;
	if (!same_head || !same_fkey)
		remember_shape(ps, out, head, end, same_head, same_fkey);
	return LP_LINE;

fail:;
	const char *nl = resync(rs, rs_pos, end);
	size_t len = (size_t)(nl - start);
	if (len > 0 && nl[-1] == '\r')
		len--;
	if (len > ps->max_line) {
		ecode = TALLY_ELIMIT;
		errf(reason, reason_cap, "line longer than %" PRIu32 " bytes", ps->max_line);
	}
	if (code)
		*code = ecode;
	/* Its newlines, plus its last line unless an escaped newline ended the
	 * input (the editor shows no line after a final newline). */
	ps->lines += count_nl(start, nl) + (nl < end || nl[-1] != '\n');
	*cur = nl == end ? end : nl + 1;
	return LP_ERROR;
}
