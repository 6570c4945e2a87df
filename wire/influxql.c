/*
 * influxql.c — the lexer and parser of the InfluxQL subset tallyd answers
 * on /query (docs/http.md, "InfluxQL"): SELECT of mean, count, sum, min,
 * max, median and percentile over a table's key tag and time, GROUP BY time and the key tag, fill,
 * ORDER BY time, LIMIT and OFFSET, and the SHOW statements a client asks
 * for its menus.
 *
 * The one idea: parse the whole of InfluxQL's surface that these clients
 * send, and turn everything else into an error at the token where it
 * starts, in InfluxDB's words ("found X, expected Y at line 1, char 8"), so
 * a person sees what tally cannot do and where, never a wrong answer. Time
 * conditions are folded into one half-open range [from, to) while parsing,
 * so the executor sees what the engine asks for.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cmd.h"
#include "influxql.h"

const char *const iq_func_names[] = {"mean", "count", "sum", "min", "max", "median", "percentile"};

enum tk {
	T_EOF = 0,
	T_IDENT,
	T_STRING,
	T_NUMBER,
	T_DURATION,
	T_REGEX,
	T_EQ,
	T_NEQ,
	T_LT,
	T_LTE,
	T_GT,
	T_GTE,
	T_EQREGEX,
	T_NEQREGEX,
	T_LPAREN,
	T_RPAREN,
	T_COMMA,
	T_SEMI,
	T_DOT,
	T_PLUS,
	T_MINUS,
	T_MUL,
	T_DIV,
	T_ILLEGAL,
};

typedef struct tok {
	enum tk k;
	size_t at, n; /* the token's bytes in the query */
	int quoted;   /* T_IDENT in double quotes: never a keyword */
	int64_t dur;  /* T_DURATION, ns */
	int dur_ok;   /* T_DURATION fits in int64 */
} tok;

typedef struct parser {
	const char *q;
	size_t n, pos;
	int64_t now;
	tok cur;  /* the token at pos, lexed by peek */
	int have; /* cur is lexed */
	char *err;
	int failed;
	unsigned depth;
} parser;

/* ---------------------------------------------------------------- errors */

/* InfluxDB counts lines and characters from 1. */
static void where_at(const parser *p, size_t at, unsigned *line, unsigned *ch)
{
	*line = 1;
	*ch = 1;
	for (size_t i = 0; i < at && i < p->n; i++) {
		if (p->q[i] == '\n') {
			(*line)++;
			*ch = 1;
		} else if (((unsigned char)p->q[i] & 0xC0) != 0x80) {
			(*ch)++;
		}
	}
}

static __attribute__((format(printf, 3, 4))) int fail_at(parser *p, size_t at, const char *fmt, ...)
{
	if (p->failed)
		return -1;
	p->failed = 1;
	char msg[IQ_ERR_MAX - 64];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	unsigned line, ch;
	where_at(p, at, &line, &ch);
	snprintf(p->err, IQ_ERR_MAX, "error parsing query: %s at line %u, char %u", msg, line, ch);
	return -1;
}

/* How a token reads in a message: its text, at most 40 bytes. */
static const char *tok_text(const parser *p, const tok *t, char buf[48])
{
	if (t->k == T_EOF)
		return "EOF";
	size_t n = t->n > 40 ? 40 : t->n;
	memcpy(buf, p->q + t->at, n);
	buf[n] = 0;
	return buf;
}

static int expected(parser *p, const tok *t, const char *what)
{
	char b[48];
	return fail_at(p, t->at, "found %s, expected %s", tok_text(p, t, b), what);
}

static int unsupported(parser *p, size_t at, const char *what)
{
	return fail_at(p, at, "%s is not supported by tally", what);
}

/* ---------------------------------------------------------------- lexing */

static int is_ident_start(unsigned char c)
{
	return isalpha(c) || c == '_' || c >= 0x80;
}

static int is_ident_char(unsigned char c)
{
	return isalnum(c) || c == '_' || c >= 0x80;
}

/* A duration's unit at s: its length and width in ns, 0 when none. */
static size_t dur_unit(const char *s, size_t left, int64_t *ns)
{
	static const struct {
		const char *u;
		int64_t ns;
	} units[] = {{"ns", 1},
		     {"ms", 1000000},
		     {"\xc2\xb5s", 1000},
		     {"us", 1000},
		     {"\xc2\xb5", 1000},
		     {"u", 1000},
		     {"s", 1000000000},
		     {"m", INT64_C(60000000000)},
		     {"h", INT64_C(3600000000000)},
		     {"d", INT64_C(86400000000000)},
		     {"w", INT64_C(604800000000000)}};
	for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
		size_t l = strlen(units[i].u);
		if (l <= left && !memcmp(s, units[i].u, l) &&
		    (l == left || !is_ident_char((unsigned char)s[l]) ||
		     isdigit((unsigned char)s[l]))) {
			*ns = units[i].ns;
			return l;
		}
	}
	return 0;
}

static void lex_number(parser *p, tok *t)
{
	const char *q = p->q;
	size_t i = t->at;
	while (i < p->n && isdigit((unsigned char)q[i]))
		i++;
	int64_t unit;
	if (i < p->n && dur_unit(q + i, p->n - i, &unit)) {
		/* A duration: 1h30m is two parts. */
		t->k = T_DURATION;
		t->dur = 0;
		t->dur_ok = 1;
		size_t j = t->at;
		while (j < p->n && isdigit((unsigned char)q[j])) {
			int64_t v = 0;
			while (j < p->n && isdigit((unsigned char)q[j])) {
				int d = q[j++] - '0';
				if (v > (INT64_MAX - d) / 10)
					t->dur_ok = 0;
				else
					v = v * 10 + d;
			}
			size_t ul = j < p->n ? dur_unit(q + j, p->n - j, &unit) : 0;
			if (!ul) {
				t->k = T_ILLEGAL;
				break;
			}
			j += ul;
			if (v > INT64_MAX / unit || t->dur > INT64_MAX - v * unit)
				t->dur_ok = 0;
			else
				t->dur += v * unit;
		}
		t->n = j - t->at;
		return;
	}
	if (i < p->n && q[i] == '.') {
		i++;
		while (i < p->n && isdigit((unsigned char)q[i]))
			i++;
	}
	if (i < p->n && (q[i] == 'e' || q[i] == 'E')) {
		size_t j = i + 1;
		if (j < p->n && (q[j] == '+' || q[j] == '-'))
			j++;
		if (j < p->n && isdigit((unsigned char)q[j])) {
			while (j < p->n && isdigit((unsigned char)q[j]))
				j++;
			i = j;
		}
	}
	t->k = T_NUMBER;
	t->n = i - t->at;
}

/* A quoted string or identifier, closing quote included; escapes \x. */
static void lex_quoted(parser *p, tok *t, char quote, enum tk k)
{
	size_t i = t->at + 1;
	while (i < p->n && p->q[i] != quote) {
		if (p->q[i] == '\\' && i + 1 < p->n)
			i++;
		if (p->q[i] == '\n')
			break;
		i++;
	}
	if (i >= p->n || p->q[i] != quote) {
		t->k = T_ILLEGAL;
		t->n = i - t->at;
		return;
	}
	t->k = k;
	t->quoted = 1;
	t->n = i + 1 - t->at;
}

static void skip_space(parser *p)
{
	for (;;) {
		while (p->pos < p->n && isspace((unsigned char)p->q[p->pos]))
			p->pos++;
		if (p->pos + 1 < p->n && p->q[p->pos] == '-' && p->q[p->pos + 1] == '-') {
			while (p->pos < p->n && p->q[p->pos] != '\n')
				p->pos++;
			continue;
		}
		if (p->pos + 1 < p->n && p->q[p->pos] == '/' && p->q[p->pos + 1] == '*') {
			const char *end = NULL;
			for (size_t i = p->pos + 2; i + 1 < p->n; i++)
				if (p->q[i] == '*' && p->q[i + 1] == '/') {
					end = p->q + i + 2;
					break;
				}
			p->pos = end ? (size_t)(end - p->q) : p->n;
			continue;
		}
		return;
	}
}

static tok *peek(parser *p)
{
	if (p->have)
		return &p->cur;
	skip_space(p);
	tok *t = &p->cur;
	memset(t, 0, sizeof *t);
	t->at = p->pos;
	t->n = 1;
	p->have = 1;
	if (p->pos >= p->n) {
		t->k = T_EOF;
		t->n = 0;
		return t;
	}
	unsigned char c = (unsigned char)p->q[p->pos];
	char c2 = p->pos + 1 < p->n ? p->q[p->pos + 1] : 0;
	if (isdigit(c) || (c == '.' && isdigit((unsigned char)c2))) {
		lex_number(p, t);
	} else if (is_ident_start(c)) {
		size_t i = p->pos;
		while (i < p->n && is_ident_char((unsigned char)p->q[i]))
			i++;
		t->k = T_IDENT;
		t->n = i - p->pos;
	} else if (c == '"') {
		lex_quoted(p, t, '"', T_IDENT);
	} else if (c == '\'') {
		lex_quoted(p, t, '\'', T_STRING);
	} else {
		t->k = T_ILLEGAL;
		switch (c) {
		case '=':
			t->k = c2 == '~' ? T_EQREGEX : T_EQ;
			t->n = c2 == '~' ? 2 : 1;
			break;
		case '!':
			if (c2 == '=' || c2 == '~') {
				t->k = c2 == '=' ? T_NEQ : T_NEQREGEX;
				t->n = 2;
			}
			break;
		case '<':
			t->k = c2 == '=' ? T_LTE : c2 == '>' ? T_NEQ : T_LT;
			t->n = c2 == '=' || c2 == '>' ? 2 : 1;
			break;
		case '>':
			t->k = c2 == '=' ? T_GTE : T_GT;
			t->n = c2 == '=' ? 2 : 1;
			break;
		case '(': t->k = T_LPAREN; break;
		case ')': t->k = T_RPAREN; break;
		case ',': t->k = T_COMMA; break;
		case ';': t->k = T_SEMI; break;
		case '.': t->k = T_DOT; break;
		case '+': t->k = T_PLUS; break;
		case '-': t->k = T_MINUS; break;
		case '*': t->k = T_MUL; break;
		case '/': t->k = T_DIV; break;
		default: break;
		}
	}
	return t;
}

static tok next(parser *p)
{
	tok t = *peek(p);
	p->pos = t.at + t.n;
	p->have = 0;
	return t;
}

/* A regex literal /.../ at the next token (after =~ or !~), \/ escaping a
 * slash. */
static int lex_regex(parser *p, tok *t)
{
	p->have = 0;
	skip_space(p);
	memset(t, 0, sizeof *t);
	t->at = p->pos;
	if (p->pos >= p->n || p->q[p->pos] != '/') {
		tok f = *peek(p);
		return expected(p, &f, "regex");
	}
	size_t i = p->pos + 1;
	while (i < p->n && p->q[i] != '/') {
		if (p->q[i] == '\\' && i + 1 < p->n)
			i++;
		i++;
	}
	if (i >= p->n)
		return fail_at(p, t->at, "unterminated regex");
	t->k = T_REGEX;
	t->n = i + 1 - t->at;
	p->pos = i + 1;
	return 0;
}

static int is_kw(const parser *p, const tok *t, const char *kw)
{
	return t->k == T_IDENT && !t->quoted && t->n == strlen(kw) &&
	       !strncasecmp(p->q + t->at, kw, t->n);
}

static int accept_kw(parser *p, const char *kw)
{
	if (!is_kw(p, peek(p), kw))
		return 0;
	next(p);
	return 1;
}

static int expect_kw(parser *p, const char *kw)
{
	if (accept_kw(p, kw))
		return 0;
	char up[32];
	size_t i = 0;
	for (; kw[i] && i + 1 < sizeof up; i++)
		up[i] = (char)toupper((unsigned char)kw[i]);
	up[i] = 0;
	return expected(p, peek(p), up);
}

static int expect_tok(parser *p, enum tk k, const char *what)
{
	if (peek(p)->k == k) {
		next(p);
		return 0;
	}
	return expected(p, peek(p), what);
}

/* The text of an identifier or string token, unquoted and unescaped
 * (malloc'ed; NULL when out of memory, which is reported). */
static char *tok_str(parser *p, const tok *t)
{
	size_t a = t->at, n = t->n;
	if (t->quoted) {
		a++;
		n -= 2;
	}
	char *s = malloc(n + 1);
	if (!s) {
		fail_at(p, t->at, "out of memory");
		return NULL;
	}
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		char c = p->q[a + i];
		if (t->quoted && c == '\\' && i + 1 < n) {
			char e = p->q[a + ++i];
			c = e == 'n' ? '\n' : e;
		}
		s[o++] = c;
	}
	s[o] = 0;
	return s;
}

/* An identifier (bare or quoted) into *out. */
static int parse_ident(parser *p, char **out, const char *what)
{
	tok *t = peek(p);
	if (t->k != T_IDENT)
		return expected(p, t, what);
	tok u = next(p);
	*out = tok_str(p, &u);
	return *out ? 0 : -1;
}

static int parse_int(parser *p, int64_t *out)
{
	tok *t = peek(p);
	if (t->k != T_NUMBER)
		return expected(p, t, "integer");
	tok u = next(p);
	int64_t v = 0;
	for (size_t i = 0; i < u.n; i++) {
		char c = p->q[u.at + i];
		if (!isdigit((unsigned char)c))
			return expected(p, &u, "integer");
		if (v > (INT64_MAX - (c - '0')) / 10)
			return fail_at(p, u.at, "integer out of range");
		v = v * 10 + (c - '0');
	}
	*out = v;
	return 0;
}

/* Consumes the number token at hand into buf (NUL-terminated); too long
 * for cap: the error why, at the token. */
static int next_number(parser *p, tok *u, char *buf, size_t cap, const char *why)
{
	*u = next(p);
	if (u->n >= cap)
		return fail_at(p, u->at, "%s", why);
	memcpy(buf, p->q + u->at, u->n);
	buf[u->n] = 0;
	return 0;
}

/* ---------------------------------------------------------------- times */

static int digits(const char *s, size_t n, size_t at, size_t k, int *v)
{
	if (at + k > n)
		return -1;
	*v = 0;
	for (size_t i = 0; i < k; i++) {
		if (!isdigit((unsigned char)s[at + i]))
			return -1;
		*v = *v * 10 + (s[at + i] - '0');
	}
	return 0;
}

/* RFC 3339 ("2023-11-14T00:00:00.5Z", "+03:00"), or InfluxDB's
 * "2023-11-14 00:00:00" and "2023-11-14" (UTC). */
static int parse_time_str(const char *s, size_t n, int64_t *out)
{
	int y, mo, d, h = 0, mi = 0, se = 0;
	if (digits(s, n, 0, 4, &y) || n < 10 || s[4] != '-' || digits(s, n, 5, 2, &mo) ||
	    s[7] != '-' || digits(s, n, 8, 2, &d) || mo < 1 || mo > 12 || d < 1 || d > 31)
		return -1;
	size_t i = 10;
	int64_t frac = 0, off = 0;
	if (i < n) {
		if ((s[i] != 'T' && s[i] != ' ') || digits(s, n, i + 1, 2, &h) || i + 3 >= n ||
		    s[i + 3] != ':' || digits(s, n, i + 4, 2, &mi) || i + 6 >= n ||
		    s[i + 6] != ':' || digits(s, n, i + 7, 2, &se) || h > 23 || mi > 59 || se > 60)
			return -1;
		i += 9;
		if (i < n && s[i] == '.') {
			int64_t scale = 100000000;
			size_t k = 0;
			for (i++; i < n && isdigit((unsigned char)s[i]); i++, k++) {
				frac += (s[i] - '0') * scale;
				scale /= 10;
			}
			if (k == 0 || k > 9)
				return -1;
		}
		if (i < n && (s[i] == 'Z' || s[i] == 'z')) {
			i++;
		} else if (i < n && (s[i] == '+' || s[i] == '-')) {
			int oh, om;
			if (digits(s, n, i + 1, 2, &oh) || i + 3 >= n || s[i + 3] != ':' ||
			    digits(s, n, i + 4, 2, &om))
				return -1;
			off = ((int64_t)oh * 3600 + om * 60) * (s[i] == '-' ? -1 : 1);
			i += 6;
		} else if (s[10] == 'T') {
			return -1; /* RFC 3339 wants its zone */
		}
		if (i != n)
			return -1;
	}
	int64_t secs = cmd_days_from_civil(y, (unsigned)mo, (unsigned)d) * 86400 + h * 3600 +
		       mi * 60 + se - off;
	if (secs > INT64_MAX / 1000000000 - 1 || secs < INT64_MIN / 1000000000 + 1)
		return -1;
	*out = secs * 1000000000 + frac;
	return 0;
}

static int add_checked(parser *p, size_t at, int64_t a, int64_t b, int64_t *out)
{
	if (__builtin_add_overflow(a, b, out))
		return fail_at(p, at, "time out of range");
	return 0;
}

/* One operand of a time expression: now(), a string, an integer (ns) or a
 * duration (since the epoch, when it comes first). */
static int parse_time_atom(parser *p, int64_t *out)
{
	tok *t = peek(p);
	if (is_kw(p, t, "now")) {
		tok u = next(p);
		if (peek(p)->k != T_LPAREN)
			return expected(p, peek(p), "(");
		next(p);
		if (expect_tok(p, T_RPAREN, ")"))
			return -1;
		(void)u;
		*out = p->now;
		return 0;
	}
	if (t->k == T_STRING) {
		tok u = next(p);
		if (parse_time_str(p->q + u.at + 1, u.n - 2, out)) {
			char b[48];
			return fail_at(p, u.at, "unable to parse time %s (RFC 3339 expected)",
				       tok_text(p, &u, b));
		}
		return 0;
	}
	if (t->k == T_DURATION) {
		tok u = next(p);
		if (!u.dur_ok)
			return fail_at(p, u.at, "duration out of range");
		*out = u.dur;
		return 0;
	}
	if (t->k == T_NUMBER) {
		tok u;
		char buf[32];
		if (next_number(p, &u, buf, sizeof buf, "time out of range"))
			return -1;
		if (strpbrk(buf, ".eE")) {
			/* InfluxDB reads a float as ns too, rounded down. */
			double v = strtod(buf, NULL);
			if (!(v > -9.2e18 && v < 9.2e18))
				return fail_at(p, u.at, "time out of range");
			*out = (int64_t)v;
			return 0;
		}
		errno = 0;
		long long v = strtoll(buf, NULL, 10);
		if (errno)
			return fail_at(p, u.at, "time out of range");
		*out = v;
		return 0;
	}
	return expected(p, t, "now(), a time string, a number or a duration");
}

static int parse_time_expr(parser *p, int64_t *out)
{
	if (parse_time_atom(p, out))
		return -1;
	while (peek(p)->k == T_PLUS || peek(p)->k == T_MINUS) {
		tok op = next(p);
		int64_t v;
		if (peek(p)->k != T_DURATION && peek(p)->k != T_NUMBER)
			return expected(p, peek(p), "duration");
		if (parse_time_atom(p, &v))
			return -1;
		if (op.k == T_MINUS && v == INT64_MIN)
			return fail_at(p, op.at, "time out of range");
		if (add_checked(p, op.at, *out, op.k == T_MINUS ? -v : v, out))
			return -1;
	}
	return 0;
}

/* ---------------------------------------------------------------- WHERE */

static void cond_free(iq_cond *c)
{
	if (!c)
		return;
	cond_free(c->l);
	cond_free(c->r);
	if (c->kind == IQ_C_RE || c->kind == IQ_C_NRE)
		regfree(&c->re);
	free(c->tag);
	free(c->val);
	free(c);
}

/* Compiles the regex literal t (slashes included) as a POSIX extended
 * regex: \/ is a slash. */
static int compile_regex(parser *p, const tok *t, regex_t *re)
{
	char *s = malloc(t->n);
	if (!s)
		return fail_at(p, t->at, "out of memory");
	size_t o = 0;
	for (size_t i = t->at + 1; i + 1 < t->at + t->n; i++) {
		if (p->q[i] == '\\' && p->q[i + 1] == '/' && i + 2 < t->at + t->n)
			i++;
		s[o++] = p->q[i];
	}
	s[o] = 0;
	int rc = regcomp(re, s, REG_EXTENDED | REG_NOSUB);
	free(s);
	if (rc) {
		char why[128];
		regerror(rc, re, why, sizeof why);
		return fail_at(p, t->at, "invalid regex: %s", why);
	}
	return 0;
}

static int time_bound(parser *p, iq_stmt *st, const tok *lhs, int in_or)
{
	tok op = next(p);
	if (op.k != T_EQ && op.k != T_LT && op.k != T_LTE && op.k != T_GT && op.k != T_GTE)
		return expected(p, &op, "=, <, <=, > or >= after time");
	if (in_or)
		return unsupported(p, lhs->at, "a time condition inside OR");
	int64_t v;
	if (parse_time_expr(p, &v))
		return -1;
	int64_t lo = INT64_MIN, hi = INT64_MAX;
	switch (op.k) {
	case T_EQ:
		lo = v;
		hi = v == INT64_MAX ? v : v + 1;
		break;
	case T_GT: lo = v == INT64_MAX ? v : v + 1; break;
	case T_GTE: lo = v; break;
	case T_LT: hi = v; break;
	default: hi = v == INT64_MAX ? v : v + 1; break;
	}
	if (lo != INT64_MIN && (!st->has_from || lo > st->from)) {
		st->from = lo;
		st->has_from = 1;
	}
	if (hi != INT64_MAX && (!st->has_to || hi < st->to)) {
		st->to = hi;
		st->has_to = 1;
	}
	return 0;
}

static int parse_or(parser *p, iq_stmt *st, int in_or, iq_cond **out);

/* A comparison or a parenthesized condition; *out NULL for a time
 * condition (folded into the statement's range). */
static int parse_unary(parser *p, iq_stmt *st, int in_or, iq_cond **out)
{
	*out = NULL;
	tok *t = peek(p);
	if (t->k == T_LPAREN) {
		if (++p->depth > IQ_DEPTH_MAX)
			return fail_at(p, t->at, "conditions nested too deep");
		next(p);
		if (parse_or(p, st, in_or, out))
			return -1;
		p->depth--;
		return expect_tok(p, T_RPAREN, ")");
	}
	if (t->k != T_IDENT)
		return expected(p, t, "identifier");
	tok lhs = next(p);
	if (is_kw(p, &lhs, "time") ||
	    (lhs.quoted && lhs.n == 6 && !memcmp(p->q + lhs.at, "\"time\"", 6)))
		return time_bound(p, st, &lhs, in_or);
	tok op = next(p);
	iq_cond *c = calloc(1, sizeof *c);
	if (!c)
		return fail_at(p, lhs.at, "out of memory");
	*out = c;
	c->tag = tok_str(p, &lhs);
	if (!c->tag)
		return -1;
	if (op.k == T_EQREGEX || op.k == T_NEQREGEX) {
		tok re;
		if (lex_regex(p, &re))
			return -1;
		if (compile_regex(p, &re, &c->re))
			return -1;
		c->kind = op.k == T_EQREGEX ? IQ_C_RE : IQ_C_NRE;
		return 0;
	}
	if (op.k != T_EQ && op.k != T_NEQ) {
		if (op.k == T_LT || op.k == T_LTE || op.k == T_GT || op.k == T_GTE)
			return unsupported(p, lhs.at, "a condition on a field");
		return expected(p, &op, "=, !=, <>, =~ or !~");
	}
	c->kind = op.k == T_EQ ? IQ_C_EQ : IQ_C_NE;
	if (peek(p)->k != T_STRING) {
		if (peek(p)->k == T_NUMBER || peek(p)->k == T_IDENT)
			return unsupported(p, lhs.at,
					   "a condition on a field (tags compare with 'strings')");
		return expected(p, peek(p), "string");
	}
	tok v = next(p);
	c->val = tok_str(p, &v);
	return c->val ? 0 : -1;
}

/* Joins two conditions; either may be NULL (a time condition). */
static int join(parser *p, size_t at, enum iq_cond_kind k, iq_cond *l, iq_cond *r, iq_cond **out)
{
	if (!l || !r) {
		*out = l ? l : r;
		return 0;
	}
	iq_cond *c = calloc(1, sizeof *c);
	if (!c) {
		cond_free(l);
		cond_free(r);
		*out = NULL;
		return fail_at(p, at, "out of memory");
	}
	c->kind = k;
	c->l = l;
	c->r = r;
	*out = c;
	return 0;
}

static int parse_and(parser *p, iq_stmt *st, int in_or, iq_cond **out)
{
	if (parse_unary(p, st, in_or, out))
		return -1;
	while (is_kw(p, peek(p), "and")) {
		tok a = next(p);
		iq_cond *r = NULL;
		int rc = parse_unary(p, st, in_or, &r);
		if (join(p, a.at, IQ_C_AND, *out, r, out) || rc)
			return -1;
	}
	return 0;
}

static int parse_or(parser *p, iq_stmt *st, int in_or, iq_cond **out)
{
	/* A time condition inside an OR cannot be a range: look ahead for
	 * an OR at this level before parsing the first operand. */
	size_t save = p->pos;
	int have = p->have;
	tok cur = p->cur;
	int depth = 0, has_or = in_or;
	for (tok *t = peek(p); !has_or && t->k != T_EOF && t->k != T_SEMI; t = peek(p)) {
		if (t->k == T_LPAREN)
			depth++;
		else if (t->k == T_RPAREN && --depth < 0)
			break;
		else if (depth == 0 && is_kw(p, t, "or"))
			has_or = 1;
		else if (depth == 0 && (is_kw(p, t, "group") || is_kw(p, t, "order") ||
					is_kw(p, t, "limit") || is_kw(p, t, "fill")))
			break;
		if (t->k == T_EQREGEX || t->k == T_NEQREGEX) {
			tok re;
			next(p);
			if (lex_regex(p, &re))
				break;
			continue;
		}
		if (t->k == T_ILLEGAL)
			break;
		next(p);
	}
	p->pos = save;
	p->have = have;
	p->cur = cur;
	p->failed = 0; /* the look-ahead's errors are found again below */
	p->err[0] = 0;
	if (parse_and(p, st, has_or, out))
		return -1;
	while (is_kw(p, peek(p), "or")) {
		tok o = next(p);
		iq_cond *r = NULL;
		int rc = parse_and(p, st, 1, &r);
		if (join(p, o.at, IQ_C_OR, *out, r, out) || rc)
			return -1;
	}
	return 0;
}

int iq_cond_match(const iq_cond *c, const char *key)
{
	if (!c)
		return 1;
	switch (c->kind) {
	case IQ_C_EQ: return !strcmp(key, c->val);
	case IQ_C_NE: return strcmp(key, c->val) != 0;
	case IQ_C_RE: return regexec(&c->re, key, 0, NULL, 0) == 0;
	case IQ_C_NRE: return regexec(&c->re, key, 0, NULL, 0) != 0;
	case IQ_C_AND: return iq_cond_match(c->l, key) && iq_cond_match(c->r, key);
	case IQ_C_OR: return iq_cond_match(c->l, key) || iq_cond_match(c->r, key);
	}
	return 0;
}

/* ---------------------------------------------------------------- SELECT */

#define IQ_FUNCS_LIST "mean, count, sum, min, max, median or percentile"

/* PERCENTILE's second argument: a number literal, as InfluxDB takes it
 * (an integer or a float, read as float64). */
static int parse_pct(parser *p, iq_agg *a)
{
	tok *t = peek(p);
	if (t->k == T_RPAREN)
		return fail_at(p, t->at, "percentile() needs two arguments: a field and a number");
	if (expect_tok(p, T_COMMA, ","))
		return -1;
	t = peek(p);
	if (t->k != T_NUMBER)
		return expected(p, t, "a number (the percentile)");
	tok u;
	char buf[64];
	if (next_number(p, &u, buf, sizeof buf, "number too long"))
		return -1;
	a->pct = strtod(buf, NULL);
	return 0;
}

static int parse_agg(parser *p, iq_stmt *st)
{
	tok *t = peek(p);
	if (t->k == T_MUL)
		return unsupported(p, t->at, "SELECT * (raw points)");
	if (t->k != T_IDENT)
		return expected(p, t, "an aggregate: " IQ_FUNCS_LIST);
	tok fn = next(p);
	if (peek(p)->k != T_LPAREN)
		return unsupported(p, fn.at, "selecting raw fields (use " IQ_FUNCS_LIST ")");
	int f = -1;
	for (int i = 0; i < IQ_FUNCS; i++)
		if (!fn.quoted && is_kw(p, &fn, iq_func_names[i]))
			f = i;
	if (f < 0) {
		char b[48], what[160];
		snprintf(what, sizeof what, "the function %s() (only " IQ_FUNCS_LIST ")",
			 tok_text(p, &fn, b));
		return unsupported(p, fn.at, what);
	}
	if (st->n_aggs == IQ_FIELDS_MAX)
		return unsupported(p, fn.at, "more than 32 aggregates in one SELECT");
	next(p);
	iq_agg *a = &st->aggs[st->n_aggs++];
	a->fn = (enum iq_func)f;
	t = peek(p);
	if (is_kw(p, t, "distinct") || t->k == T_MUL || t->k == T_DIV)
		return unsupported(p, t->at, "an aggregate of anything but one named field");
	if (parse_ident(p, &a->field, "field name"))
		return -1;
	if (a->fn == IQ_PERCENTILE && parse_pct(p, a))
		return -1;
	if (peek(p)->k != T_RPAREN) {
		if (peek(p)->k == T_COMMA)
			return unsupported(p, peek(p)->at, "a second argument to an aggregate");
		return expected(p, peek(p), ")");
	}
	next(p);
	t = peek(p);
	if (t->k == T_PLUS || t->k == T_MINUS || t->k == T_MUL || t->k == T_DIV)
		return unsupported(p, t->at, "arithmetic on aggregates");
	if (accept_kw(p, "as"))
		return parse_ident(p, &a->column, "alias");
	return 0;
}

/* Names the columns as InfluxDB does: the alias, else the function, a
 * repeated name getting _1, _2, ... */
static int name_columns(parser *p, iq_stmt *st)
{
	for (unsigned i = 0; i < st->n_aggs; i++) {
		iq_agg *a = &st->aggs[i];
		if (a->column)
			continue;
		const char *base = iq_func_names[a->fn];
		unsigned seen = 0;
		for (unsigned j = 0; j < i; j++)
			if (!strcmp(st->aggs[j].column, base) ||
			    (!strncmp(st->aggs[j].column, base, strlen(base)) &&
			     st->aggs[j].column[strlen(base)] == '_'))
				seen++;
		size_t n = strlen(base) + 16;
		a->column = malloc(n);
		if (!a->column)
			return fail_at(p, 0, "out of memory");
		if (seen)
			snprintf(a->column, n, "%s_%u", base, seen);
		else
			snprintf(a->column, n, "%s", base);
	}
	return 0;
}

/* FROM m, rp.m, db.rp.m or db..m. */
static int parse_source(parser *p, iq_stmt *st)
{
	tok *t = peek(p);
	if (t->k == T_DIV)
		return unsupported(p, t->at, "a regex in FROM");
	if (t->k == T_LPAREN)
		return unsupported(p, t->at, "a subquery");
	char *parts[3] = {NULL, NULL, NULL};
	unsigned n = 0;
	int rc = 0;
	for (;;) {
		if (n == 3) {
			rc = expected(p, peek(p), "at most db.rp.measurement");
			break;
		}
		if (peek(p)->k == T_DOT && n > 0) {
			n++; /* db..m: the rp left out */
		} else if ((rc = parse_ident(p, &parts[n++], "measurement")))
			break;
		if (peek(p)->k != T_DOT)
			break;
		next(p);
	}
	if (!rc && (n == 0 || !parts[n - 1]))
		rc = expected(p, peek(p), "measurement");
	if (!rc) {
		st->table = parts[n - 1];
		parts[n - 1] = NULL;
		if (n == 3) {
			st->db = parts[0];
			parts[0] = NULL;
		}
	}
	for (unsigned i = 0; i < 3; i++)
		free(parts[i]);
	if (!rc && peek(p)->k == T_COMMA)
		return unsupported(p, peek(p)->at, "more than one measurement in FROM");
	return rc;
}

static int parse_group_by(parser *p, iq_stmt *st)
{
	do {
		tok *t = peek(p);
		if (is_kw(p, t, "time") && !t->quoted) {
			tok tt = next(p);
			if (expect_tok(p, T_LPAREN, "("))
				return -1;
			tok d = *peek(p);
			if (d.k != T_DURATION)
				return expected(p, &d, "duration");
			next(p);
			if (!d.dur_ok || d.dur <= 0)
				return fail_at(p, d.at,
					       "GROUP BY time() needs a positive duration");
			if (st->step)
				return fail_at(p, tt.at, "multiple GROUP BY time() dimensions");
			st->step = d.dur;
			if (peek(p)->k == T_COMMA)
				return unsupported(p, peek(p)->at, "an offset in GROUP BY time()");
			if (expect_tok(p, T_RPAREN, ")"))
				return -1;
		} else if (t->k == T_MUL || t->k == T_DIV) {
			return unsupported(p, t->at,
					   t->k == T_MUL ? "GROUP BY *" : "GROUP BY a regex");
		} else if (t->k == T_IDENT) {
			if (st->group_tag)
				return unsupported(p, t->at, "GROUP BY more than one tag");
			if (parse_ident(p, &st->group_tag, "tag"))
				return -1;
		} else {
			return expected(p, t, "time() or a tag");
		}
	} while (peek(p)->k == T_COMMA && (next(p), 1));
	return 0;
}

static int parse_fill(parser *p, iq_stmt *st)
{
	if (expect_tok(p, T_LPAREN, "("))
		return -1;
	tok *t = peek(p);
	int neg = 0;
	if (t->k == T_MINUS) {
		next(p);
		neg = 1;
		t = peek(p);
	}
	if (t->k == T_NUMBER) {
		tok u;
		char buf[64];
		if (next_number(p, &u, buf, sizeof buf, "number too long"))
			return -1;
		st->fill = IQ_FILL_VALUE;
		st->fill_value = strtod(buf, NULL) * (neg ? -1 : 1);
	} else if (!neg && accept_kw(p, "null")) {
		st->fill = IQ_FILL_NULL;
	} else if (!neg && accept_kw(p, "none")) {
		st->fill = IQ_FILL_NONE;
	} else if (!neg && accept_kw(p, "previous")) {
		st->fill = IQ_FILL_PREVIOUS;
	} else if (!neg && is_kw(p, t, "linear")) {
		return unsupported(p, t->at, "fill(linear)");
	} else {
		return expected(p, t, "null, none, previous or a number");
	}
	return expect_tok(p, T_RPAREN, ")");
}

static int parse_limits(parser *p, iq_stmt *st)
{
	static const char *const kws[] = {"limit", "offset", "slimit", "soffset"};
	int64_t *dst[] = {&st->limit, &st->offset, &st->slimit, &st->soffset};
	for (unsigned i = 0; i < 4; i++)
		if (accept_kw(p, kws[i]) && parse_int(p, dst[i]))
			return -1;
	return 0;
}

static int parse_select(parser *p, iq_stmt *st)
{
	st->kind = IQ_SELECT;
	do {
		if (parse_agg(p, st))
			return -1;
	} while (peek(p)->k == T_COMMA && (next(p), 1));
	if (is_kw(p, peek(p), "into"))
		return unsupported(p, peek(p)->at, "SELECT INTO");
	if (expect_kw(p, "from") || parse_source(p, st) || name_columns(p, st))
		return -1;
	if (accept_kw(p, "where") && parse_or(p, st, 0, &st->where))
		return -1;
	if (accept_kw(p, "group")) {
		if (expect_kw(p, "by") || parse_group_by(p, st))
			return -1;
	}
	if (accept_kw(p, "fill") && parse_fill(p, st))
		return -1;
	if (accept_kw(p, "order")) {
		if (expect_kw(p, "by"))
			return -1;
		tok *t = peek(p);
		if (!is_kw(p, t, "time"))
			return unsupported(p, t->at, "ORDER BY anything but time");
		next(p);
		if (accept_kw(p, "desc"))
			st->desc = 1;
		else
			accept_kw(p, "asc");
	}
	if (parse_limits(p, st))
		return -1;
	if (is_kw(p, peek(p), "tz"))
		return unsupported(p, peek(p)->at, "tz()");
	return 0;
}

/* ---------------------------------------------------------------- SHOW */

static int parse_on_from(parser *p, iq_stmt *st)
{
	if (accept_kw(p, "on") && parse_ident(p, &st->db, "database"))
		return -1;
	if (accept_kw(p, "from"))
		return parse_source(p, st);
	return 0;
}

/* A name of WITH KEY: an identifier or a string. */
static char *parse_with_name(parser *p)
{
	tok *t = peek(p);
	if (t->k != T_IDENT && t->k != T_STRING) {
		expected(p, t, "identifier");
		return NULL;
	}
	tok u = next(p);
	return tok_str(p, &u);
}

/* WITH KEY IN (name, ...): the names into st->with_in. */
static int parse_with_in(parser *p, iq_stmt *st)
{
	if (expect_tok(p, T_LPAREN, "("))
		return -1;
	for (;;) {
		char **v = realloc(st->with_in, (st->n_with_in + 1) * sizeof *v);
		if (!v)
			return fail_at(p, peek(p)->at, "out of memory");
		st->with_in = v;
		if (!(v[st->n_with_in] = parse_with_name(p)))
			return -1;
		st->n_with_in++;
		if (peek(p)->k != T_COMMA)
			return expect_tok(p, T_RPAREN, ", or )");
		next(p);
	}
}

/* WITH MEASUREMENT = name or =~ /regex/; WITH KEY also !=, !~ and
 * IN (name, ...), as InfluxDB's SHOW TAG VALUES. */
static int parse_with(parser *p, iq_stmt *st, const char *what)
{
	if (expect_kw(p, "with") || expect_kw(p, what))
		return -1;
	int key = !strcmp(what, "key");
	tok op = next(p);
	if (key && (op.k == T_NEQ || op.k == T_NEQREGEX))
		st->with_not = 1;
	if (op.k == T_EQREGEX || (key && op.k == T_NEQREGEX)) {
		tok re;
		if (lex_regex(p, &re) || compile_regex(p, &re, &st->with_re))
			return -1;
		st->has_with_re = 1;
		return 0;
	}
	if (key && is_kw(p, &op, "in"))
		return parse_with_in(p, st);
	if (op.k != T_EQ && !(key && op.k == T_NEQ)) {
		if (is_kw(p, &op, "in") || op.k == T_NEQ || op.k == T_NEQREGEX)
			return unsupported(p, op.at, "WITH MEASUREMENT IN, != or !~");
		return expected(p, &op, key ? "=, !=, =~, !~ or IN" : "= or =~");
	}
	st->with = parse_with_name(p);
	return st->with ? 0 : -1;
}

static int parse_show(parser *p, iq_stmt *st)
{
	tok *t = peek(p);
	if (accept_kw(p, "databases")) {
		st->kind = IQ_SHOW_DATABASES;
		return 0;
	}
	if (accept_kw(p, "measurements")) {
		st->kind = IQ_SHOW_MEASUREMENTS;
		if (accept_kw(p, "on") && parse_ident(p, &st->db, "database"))
			return -1;
		if (is_kw(p, peek(p), "with") && parse_with(p, st, "measurement"))
			return -1;
		if (is_kw(p, peek(p), "where"))
			return unsupported(p, peek(p)->at, "SHOW MEASUREMENTS WHERE");
		return parse_limits(p, st);
	}
	if (accept_kw(p, "retention")) {
		st->kind = IQ_SHOW_RETENTION_POLICIES;
		if (expect_kw(p, "policies"))
			return -1;
		return accept_kw(p, "on") ? parse_ident(p, &st->db, "database") : 0;
	}
	if (accept_kw(p, "field")) {
		st->kind = IQ_SHOW_FIELD_KEYS;
		if (expect_kw(p, "keys") || parse_on_from(p, st))
			return -1;
		return parse_limits(p, st);
	}
	if (accept_kw(p, "tag")) {
		if (accept_kw(p, "keys")) {
			st->kind = IQ_SHOW_TAG_KEYS;
			if (parse_on_from(p, st))
				return -1;
			if (is_kw(p, peek(p), "where"))
				return unsupported(p, peek(p)->at, "SHOW TAG KEYS WHERE");
			return parse_limits(p, st);
		}
		if (expect_kw(p, "values"))
			return -1;
		st->kind = IQ_SHOW_TAG_VALUES;
		if (parse_on_from(p, st) || parse_with(p, st, "key"))
			return -1;
		if (accept_kw(p, "where") && parse_or(p, st, 0, &st->where))
			return -1;
		return parse_limits(p, st);
	}
	char b[48], what[96];
	snprintf(what, sizeof what, "SHOW %s", tok_text(p, t, b));
	return unsupported(p, t->at, what);
}

/* ---------------------------------------------------------------- query */

static void stmt_free(iq_stmt *st)
{
	for (unsigned i = 0; i < st->n_aggs; i++) {
		free(st->aggs[i].field);
		free(st->aggs[i].column);
	}
	free(st->db);
	free(st->table);
	free(st->group_tag);
	free(st->with);
	for (unsigned i = 0; i < st->n_with_in; i++)
		free(st->with_in[i]);
	free(st->with_in);
	if (st->has_with_re)
		regfree(&st->with_re);
	cond_free(st->where);
}

void iq_query_free(iq_query *q)
{
	for (unsigned i = 0; i < q->n; i++)
		stmt_free(&q->st[i]);
	free(q->st);
	q->st = NULL;
	q->n = 0;
}

static int parse_stmt(parser *p, iq_stmt *st)
{
	tok *t = peek(p);
	if (accept_kw(p, "select"))
		return parse_select(p, st);
	if (accept_kw(p, "show"))
		return parse_show(p, st);
	if (t->k == T_IDENT && !t->quoted) {
		char b[48], what[96];
		snprintf(what, sizeof what, "the statement %s", tok_text(p, t, b));
		return unsupported(p, t->at, what);
	}
	return expected(p, t, "SELECT or SHOW");
}

int iq_parse(const char *q, size_t n, int64_t now, iq_query *out, char err[IQ_ERR_MAX])
{
	parser p = {.q = q, .n = n, .now = now, .err = err};
	err[0] = 0;
	out->st = NULL;
	out->n = 0;
	for (;;) {
		while (peek(&p)->k == T_SEMI)
			next(&p);
		if (peek(&p)->k == T_EOF)
			break;
		if (out->n == IQ_STMTS_MAX)
			return unsupported(&p, peek(&p)->at,
					   "more than 64 statements in one query");
		iq_stmt *grown = realloc(out->st, (out->n + 1) * sizeof *grown);
		if (!grown)
			return fail_at(&p, p.pos, "out of memory");
		out->st = grown;
		iq_stmt *st = &out->st[out->n++];
		memset(st, 0, sizeof *st);
		st->from = INT64_MIN;
		st->to = INT64_MAX;
		if (parse_stmt(&p, st))
			return -1;
		tok *t = peek(&p);
		if (t->k != T_SEMI && t->k != T_EOF) {
			if (t->k == T_IDENT && !t->quoted && st->kind == IQ_SELECT)
				return expected(&p, t,
						"GROUP BY, fill, ORDER BY, LIMIT, OFFSET or ;");
			return expected(&p, t, ";");
		}
	}
	if (out->n == 0) {
		tok *t = peek(&p);
		return expected(&p, t, "SELECT or SHOW");
	}
	return 0;
}
