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

/* Arguments are echoed in reasons: keep the reason printable. */
static int cmd_printable(char *err)
{
	for (char *p = err; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7F)
			*p = '?';
	return -1;
}

static int cmd_fail(char *err, size_t cap, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, cap, fmt, ap);
	va_end(ap);
	return cmd_printable(err);
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

/* ---------------------------------------------------------------- #!dist's statistics */

/* Parses "E1,E2,..." into edges; returns how many, or -1. */
int cmd_dist_edges(const char *s, double *edges)
{
	int n = 0;
	while (*s) {
		char *end;
		double v = strtod(s, &end);
		if (end == s || !isfinite(v) || n == CMD_DIST_EDGES_MAX ||
		    (n && !(v > edges[n - 1])))
			return -1;
		edges[n++] = v;
		if (*end == ',')
			end++;
		else if (*end)
			return -1;
		s = end;
	}
	return n >= 2 ? n : -1;
}

/* A finite number filling all of s. */
int cmd_dist_num(const char *s, double *v)
{
	char *end;
	*v = strtod(s, &end);
	return end != s && !*end && isfinite(*v) ? 0 : -1;
}

int cmd_dist_stat_check(const char *arg, char *err, size_t cap)
{
	double v, edges[CMD_DIST_EDGES_MAX];
	if (!strncmp(arg, "q=", 2) && !cmd_dist_num(arg + 2, &v) && v >= 0 && v <= 1)
		return 0;
	if ((!strncmp(arg, "above=", 6) && !cmd_dist_num(arg + 6, &v)) ||
	    (!strncmp(arg, "below=", 6) && !cmd_dist_num(arg + 6, &v)))
		return 0;
	if (!strncmp(arg, "hist=", 5) && cmd_dist_edges(arg + 5, edges) > 0)
		return 0;
	if (!strcmp(arg, "pairs")) /* a node's part of a query across nodes */
		return 0;
	snprintf(err, cap,
		 "'%.40s' is not q=Q (0..1), above=X, below=X, hist=E1,E2,... (2 to %d "
		 "ascending edges) or pairs",
		 arg, CMD_DIST_EDGES_MAX);
	return -1;
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
	{"keys", CMD_KEYS, 4, 6, "#!keys TABLE FIELD FROM TO [key=TAG=V,...] [by=TAG,...]"},
	{"scan", CMD_SCAN, 4, 5, "#!scan TABLE KEY FROM TO [LIMIT]"},
	{"stats", CMD_STATS, 0, 0, "#!stats"},
	{"precision", CMD_PRECISION, 1, 1, "#!precision ns|us|ms|s"},
	{"help", CMD_HELP, 0, 0, "#!help"},
	{"backup", CMD_BACKUP, 1, 1, "#!backup DEST"},
	{"retention", CMD_RETENTION, 1, 1, "#!retention RULES|none"},
	{"retain", CMD_RETAIN, 0, 0, "#!retain"},
	{"retained", CMD_RETAINED, 1, 2, "#!retained TABLE [raw|LEVEL]"},
	{"drop", CMD_DROP, 1, 1, "#!drop TABLE"},
	{"fanout", CMD_FANOUT, 1, 1, "#!fanout off|fail|partial"},
	{"dist", CMD_DIST, 5, CMD_ARGS_MAX - 1,
	 "#!dist TABLE FIELD KEY FROM TO [q=Q|above=X|below=X|hist=E1,E2,...]...|pairs "
	 "[step=STEP [origin=TIME]]"},
	{"delete", CMD_DELETE, 4, 4, "#!delete TABLE KEY|* FROM TO"},
	{"tables", CMD_TABLES, 0, 0, "#!tables"},
	{"keylist", CMD_KEYLIST, 1, 2, "#!keylist TABLE [PREFIX]"},
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
	case CMD_BACKUP: out->dest = a[0]; return 0;
	case CMD_RETENTION: out->rules = strcasecmp(a[0], "none") ? a[0] : ""; return 0;
	case CMD_DROP:
	case CMD_RETAINED:
		if (cmd_name_arg("table", a[0], err, err_cap))
			return -1;
		out->table = a[0];
		if (nargs == 2 && strcasecmp(a[1], "raw") && cmd_parse_duration(a[1], &out->step))
			return cmd_fail(err, err_cap,
					"retained: '%.40s' is not raw nor a level (like 5m, 1h)",
					a[1]);
		return 0;
	case CMD_FANOUT: {
		static const char *const modes[] = {"off", "fail", "partial"};
		for (int i = 0; i < 3; i++)
			if (!strcasecmp(a[0], modes[i])) {
				out->fan = i;
				return 0;
			}
		return cmd_fail(err, err_cap, "fanout: '%.40s' is not off, fail or partial", a[0]);
	}
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
	case CMD_DIST: {
		int pairs = 0;
		for (int i = 5; i < nargs; i++) {
			/* pairs per window of a step: a node's part of a stepped
			 * dist across nodes, one round trip for every window */
			if (!strncmp(a[i], "step=", 5) && !out->step) {
				if (cmd_parse_duration(a[i] + 5, &out->step))
					return cmd_fail(err, err_cap,
							"dist: step: invalid duration '%.40s' "
							"(like 5m, 1h)",
							a[i] + 5);
				continue;
			}
			if (!strncmp(a[i], "origin=", 7) && !out->has_origin) {
				if (cmd_parse_time(a[i] + 7, now, &out->origin))
					return cmd_fail(err, err_cap,
							"dist: origin: invalid time '%.40s'",
							a[i] + 7);
				out->has_origin = 1;
				continue;
			}
			if (cmd_dist_stat_check(a[i], err, err_cap))
				return cmd_printable(err); /* it echoes the argument */
			out->stats[out->n_stats++] = a[i];
			pairs |= !strcmp(a[i], "pairs");
		}
		if (pairs && out->n_stats != 1)
			return cmd_fail(err, err_cap,
					"dist: pairs is asked alone (no other statistic)");
		if (out->step && !pairs)
			return cmd_fail(err, err_cap, "dist: step= is asked with pairs only");
		if (out->has_origin && (out->origin < 0 || out->origin >= out->step))
			return cmd_fail(err, err_cap,
					"dist: origin= is asked with step=, from 0 to the step "
					"after 1970-01-01T00:00:00Z");
	}
		__attribute__((fallthrough)); /* the rest is #!agg's */
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
		/* key=: only the keys holding these tags; by=: merged per value
		 * of these tags (engine/tagkey.h) */
		for (int i = 4; i < nargs; i++) {
			if (!strncmp(a[i], "key=", 4) && !out->key)
				out->key = a[i] + 4;
			else if (!strncmp(a[i], "by=", 3) && !out->group)
				out->group = a[i] + 3;
			else
				return cmd_fail(err, err_cap,
						"keys: '%.40s' is not key=TAG=VALUE,... or "
						"by=TAG,... (each at most once)",
						a[i]);
		}
		return cmd_range(a, 2, now, out, err, err_cap);
	case CMD_KEYLIST: /* the prefix may be empty: every key */
		if (cmd_name_arg("table", a[0], err, err_cap))
			return -1;
		out->table = a[0];
		out->key = nargs == 2 ? a[1] : NULL;
		return 0;
	case CMD_DELETE:
		/* "*": every key (a key spelled * alone is deleted with the rest) */
		if (cmd_name_arg("table", a[0], err, err_cap) ||
		    cmd_name_arg("key", a[1], err, err_cap))
			return -1;
		out->table = a[0];
		out->key = strcmp(a[1], "*") ? a[1] : NULL;
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
