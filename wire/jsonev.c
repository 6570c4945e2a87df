/*
 * jsonev.c — JSON events (an array, or one object a line) to InfluxDB line
 * protocol, per a table's mapping.
 *
 * One pass over the body, a byte at a time, steered by a class table, with
 * no tree and no copy: a member's value is validated where it lies (strict
 * RFC 8259 grammar, UTF-8, \u escapes and surrogate pairs) and remembered
 * as a span in its mapping slot; when the event's object closes, its line
 * is written from the slots in the mapping's order. The one idea that
 * makes it fast: a JSON string without escapes never needs line-protocol
 * escaping as a string field and, unless it holds ' ', ',' or '=', not as a
 * tag either, so the common event is a few memcpy's of spans the scan
 * already classified, and numbers are copied as their text (JSON's number
 * grammar is a subset of line protocol's, and the engine rounds the text
 * exactly as a conversion here would). Only escaped strings are decoded
 * (into scratch), only numbers that may overflow a double are examined.
 *
 * Errors: a problem with one event's content (a wrong type, an unmapped
 * member where the mapping rejects them, invalid UTF-8, a bad time) drops
 * that event and the scan goes on. Invalid JSON stops an array at its
 * offset, keeping the events before it; in NDJSON the scan resumes after
 * the next newline, so one broken line loses only its own event.
 *
 * Line-protocol escaping (engine/lp.h): a measurement escapes ',' and ' ',
 * tag keys, values and field keys escape ',', '=' and ' ' by a backslash
 * before them; any other backslash stands for itself. So every byte is
 * copied and a backslash is put before each byte of the escape set; only a
 * name ending in a backslash cannot be carried (it would escape the
 * separator after it), nor a newline or NUL in a name. String fields
 * escape '"' and '\', and a newline as backslash-newline.
 */
#include "jsonev.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "lp.h"
#include "tally.h"

#define DEF_MAX_BODY   ((size_t)64 << 20)
#define DEF_MAX_DEPTH  32
#define DEF_MAX_ERRORS 16

/* Roles of mapped members. */
enum { R_KEY, R_TIME, R_F64, R_I64, R_BOOL, R_TAG, R_STR };

/* JSON value types of a slot. */
enum { J_NONE, J_STR, J_NUM, J_TRUE, J_FALSE, J_NULL, J_OBJ, J_ARR };

/* Scan flags of a string or number. */
enum {
	F_ESC = 1,  /* string: JSON escapes */
	F_SPEC = 2, /* string: ' ', ',' or '=' (tags must escape them) */
	F_FRAC = 4, /* number: fraction */
	F_EXP = 8,  /* number: exponent */
};

/* Byte classes of the string scanner. */
enum { C_Q = 1, C_B = 2, C_CTL = 4, C_HI = 8, C_SP = 16 };

#define X4(v)  v, v, v, v
#define X16(v) X4(v), X4(v), X4(v), X4(v)
static const uint8_t scls[256] = {
	X16(C_CTL), X16(C_CTL), C_SP,      0,         C_Q,       0,
	0,          0,          0,         0,         0,         0,
	0,          0,          C_SP,      0,         0,         0, /* 0x20: ' ' '"' ',' */
	0,          0,          0,         0,         0,         0,
	0,          0,          0,         0,         0,         0,
	0,          C_SP,       0,         0, /* 0x30: '=' */
	X16(0),     0,          0,         0,         0,         0,
	0,          0,          0,         0,         0,         0,
	0,          C_B,        0,         0,         0, /* 0x50: '\\' */
	X16(0),     X16(0),     X16(C_HI), X16(C_HI), X16(C_HI), X16(C_HI),
	X16(C_HI),  X16(C_HI),  X16(C_HI), X16(C_HI),
};
#undef X16
#undef X4

typedef struct jm_member {
	char *json; /* member name in the JSON, unescaped */
	uint32_t json_n;
	uint8_t role;
	char *name; /* tag or field name in the line protocol */
	char *pre;  /* line-protocol text before the value: ",tag=" or "field=" */
	uint32_t pre_n;
} jm_member;

struct jsonev_map {
	char *table;
	char *head; /* "table,keytag=", escaped */
	uint32_t head_n;
	unsigned n;
	int key, time;  /* indexes into m; time -1 when the mapping has none */
	int time_scale; /* a number's time times 10^time_scale is ns; -1: no unit */
	int unknown_reject, missing_now;
	unsigned n_tags, n_fields;
	uint8_t tags[JSONEV_MEMBERS_MAX], fields[JSONEV_MEMBERS_MAX];
	jm_member m[JSONEV_MEMBERS_MAX];
};

struct jsonev_maps {
	jsonev_map **v;
	size_t n;
};

typedef struct jslot {
	const char *p; /* string: its content between the quotes; number: its text */
	uint32_t n;
	uint8_t type, flags;
	size_t off; /* offset of the value in the body */
} jslot;

struct jsonev_dec {
	jsonev_limits lim;
	/* the key of events that name none (jsonev_dec_default_key); NULL: none */
	const char *dkey;
	size_t dkey_n;
	char *out;
	size_t out_len, out_cap;
	uint64_t *rec_event, *rec_line;
	size_t recs, recs_cap;
	jsonev_error *errs;
	unsigned n_errs;
	char *scratch;
	size_t scratch_cap;

	/* One decode. */
	const jsonev_map *m;
	const char *body, *end;
	int nl_ok;     /* a newline is whitespace inside an event */
	uint64_t ev;   /* index of the current event */
	uint64_t phys; /* physical lines written */
	uint64_t rejected;
	uint64_t seen; /* slots set in this event, bit per member */
	int ev_bad;    /* this event is refused */
	size_t ev_off;
	char ev_reason[JSONEV_REASON_MAX];
	size_t syn_off; /* the last syntax error */
	char syn_reason[JSONEV_REASON_MAX];
	int syn_nl; /* it was an event running past its line (NDJSON) */
	jslot slots[JSONEV_MEMBERS_MAX];
};

/* ---------------------------------------------------------------- helpers */

/* After vsnprintf returned r into dst[cap]: a cut output ends at a UTF-8
 * character boundary (reasons quote UTF-8 input). */
static void cut_utf8(char *dst, size_t cap, int r)
{
	if (r >= 0 && (size_t)r >= cap && cap > 1) {
		size_t n = cap - 1;
		while (n > 0 && ((unsigned char)dst[n] & 0xC0) == 0x80)
			n--;
		dst[n] = 0;
	}
}

__attribute__((format(printf, 3, 4))) static void fmt(char *dst, size_t cap, const char *f, ...)
{
	va_list ap;
	va_start(ap, f);
	int r = vsnprintf(dst, cap, f, ap);
	va_end(ap);
	cut_utf8(dst, cap, r);
}

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
	if (need <= *cap)
		return 0;
	size_t c = *cap ? *cap : 256;
	while (c < need)
		c *= 2;
	void *q = realloc(*p, c * elem);
	if (!q)
		return -ENOMEM;
	*p = q;
	*cap = c;
	return 0;
}

static inline int is_digit(char c)
{
	return (unsigned char)(c - '0') < 10;
}

/* Writes v in decimal at o; returns the length. */
static size_t put_i64(char *o, int64_t v)
{
	char tmp[24];
	size_t n = 0, k = 0;
	uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
	do {
		tmp[n++] = (char)('0' + u % 10);
		u /= 10;
	} while (u);
	if (v < 0)
		o[k++] = '-';
	while (n)
		o[k++] = tmp[--n];
	return k;
}

/* ---------------------------------------------------------------- names */

/* Why [s, s+n) cannot be a line-protocol name (measurement when meas),
 * or NULL. */
static const char *name_problem(const char *s, size_t n, int meas)
{
	if (n == 0)
		return "is empty";
	if (n > JSONEV_NAME_MAX)
		return "is longer than 255 bytes";
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7F)
			return "holds a control character";
	for (size_t i = 0; i < n;) {
		size_t k = lp_utf8_one((const unsigned char *)s + i, n - i);
		if (!k)
			return "is not valid UTF-8";
		i += k;
	}
	if (s[n - 1] == '\\')
		return "ends with a backslash, which line protocol cannot carry";
	if (meas && s[0] == '#')
		return "starts with '#' (a line-protocol comment)";
	return NULL;
}

/* Copies s[0, n) to o with a backslash before each byte of the escape
 * set (',' ' ', plus '=' unless meas); returns the length written. */
static size_t put_name(char *o, const char *s, size_t n, int meas)
{
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (c == ',' || c == ' ' || (c == '=' && !meas))
			o[k++] = '\\';
		o[k++] = c;
	}
	return k;
}

/* ---------------------------------------------------------------- mappings */

static const char *const role_setting[] = {
	[R_KEY] = "key",    [R_TIME] = "time", [R_F64] = "fields",  [R_I64] = "ints",
	[R_BOOL] = "bools", [R_TAG] = "tags",  [R_STR] = "strings",
};

void jsonev_map_free(jsonev_map *m)
{
	if (!m)
		return;
	for (unsigned i = 0; i < m->n; i++) {
		free(m->m[i].json);
		free(m->m[i].name);
		free(m->m[i].pre);
	}
	free(m->table);
	free(m->head);
	free(m);
}

const char *jsonev_map_table(const jsonev_map *m)
{
	return m->table;
}

static char *dup_n(const char *s, size_t n)
{
	char *d = malloc(n + 1);
	if (d) {
		memcpy(d, s, n);
		d[n] = 0;
	}
	return d;
}

static int is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Trims [*s, *e). */
static void trim(const char **s, const char **e)
{
	while (*s < *e && is_space(**s))
		(*s)++;
	while (*e > *s && is_space((*e)[-1]))
		(*e)--;
}

/* Adds member item [s, e) ("json" or "json>name") in role r. */
static int map_add(jsonev_map *m, int r, const char *s, const char *e, char *err, size_t cap)
{
	char q[LP_QUOTE_BUF], q2[LP_QUOTE_BUF];
	const char *gt = memchr(s, '>', (size_t)(e - s));
	const char *js = s, *je = gt ? gt : e, *ns = gt ? gt + 1 : s, *ne = e;
	const char *tab = m->table, *set = role_setting[r];
	if (je == js) {
		fmt(err, cap, "json-map '%s': %s: '%s' has no member name before '>'", tab, set,
		    lp_quote(q, s, (size_t)(e - s)));
		return TALLY_EINVAL;
	}
	if (gt && (ne == ns || memchr(ns, '>', (size_t)(ne - ns)))) {
		fmt(err, cap, "json-map '%s': %s: '%s' needs one name after '>'", tab, set,
		    lp_quote(q, s, (size_t)(e - s)));
		return TALLY_EINVAL;
	}
	if ((size_t)(je - js) > JSONEV_NAME_MAX) {
		fmt(err, cap, "json-map '%s': %s: member '%s' is longer than 255 bytes", tab, set,
		    lp_quote(q, js, (size_t)(je - js)));
		return TALLY_EINVAL;
	}
	if (r == R_TIME && gt) {
		fmt(err, cap, "json-map '%s': time: '%s': the time is no column, it takes no '>'",
		    tab, lp_quote(q, s, (size_t)(e - s)));
		return TALLY_EINVAL;
	}
	const char *why = r == R_TIME ? NULL : name_problem(ns, (size_t)(ne - ns), 0);
	if (why) {
		fmt(err, cap, "json-map '%s': %s: name '%s' %s", tab, set,
		    lp_quote(q, ns, (size_t)(ne - ns)), why);
		return TALLY_EINVAL;
	}
	if (m->n == JSONEV_MEMBERS_MAX) {
		fmt(err, cap, "json-map '%s': more than %d members", tab, JSONEV_MEMBERS_MAX);
		return TALLY_EINVAL;
	}
	for (unsigned i = 0; i < m->n; i++) {
		jm_member *o = &m->m[i];
		if (o->json_n == (size_t)(je - js) && !memcmp(o->json, js, o->json_n)) {
			fmt(err, cap, "json-map '%s': member '%s' is mapped twice (%s and %s)", tab,
			    lp_quote(q, js, (size_t)(je - js)), role_setting[o->role], set);
			return TALLY_EINVAL;
		}
		if (r != R_TIME && o->name && strlen(o->name) == (size_t)(ne - ns) &&
		    !memcmp(o->name, ns, (size_t)(ne - ns))) {
			fmt(err, cap, "json-map '%s': name '%s' is given to '%s' and to '%s'", tab,
			    lp_quote(q, ns, (size_t)(ne - ns)), o->json,
			    lp_quote(q2, js, (size_t)(je - js)));
			return TALLY_EINVAL;
		}
	}
	jm_member *x = &m->m[m->n];
	memset(x, 0, sizeof *x);
	x->role = (uint8_t)r;
	x->json_n = (uint32_t)(je - js);
	if (!(x->json = dup_n(js, x->json_n)))
		return -ENOMEM;
	if (r != R_TIME) {
		size_t nn = (size_t)(ne - ns);
		x->name = dup_n(ns, nn);
		x->pre = malloc(2 * nn + 3);
		if (!x->name || !x->pre) {
			free(x->json);
			free(x->name);
			free(x->pre);
			return -ENOMEM;
		}
		size_t k = 0;
		if (r == R_TAG)
			x->pre[k++] = ',';
		k += put_name(x->pre + k, ns, nn, 0);
		x->pre[k++] = '=';
		x->pre_n = (uint32_t)k;
	}
	m->n++;
	return 0;
}

int jsonev_map_parse(const char *spec, jsonev_map **out, char *err, size_t cap)
{
	*out = NULL;
	char q[LP_QUOTE_BUF];
	const char *colon = strchr(spec, ':');
	if (!colon) {
		fmt(err, cap, "json-map '%s': expected 'TABLE: key=..., time=..., fields=...'",
		    lp_quote(q, spec, strlen(spec)));
		return TALLY_EINVAL;
	}
	const char *ts = spec, *te = colon;
	trim(&ts, &te);
	const char *why = name_problem(ts, (size_t)(te - ts), 1);
	if (why) {
		fmt(err, cap, "json-map: table name '%s' %s", lp_quote(q, ts, (size_t)(te - ts)),
		    why);
		return TALLY_EINVAL;
	}
	jsonev_map *m = calloc(1, sizeof *m);
	if (!m || !(m->table = dup_n(ts, (size_t)(te - ts)))) {
		free(m);
		return -ENOMEM;
	}
	m->key = m->time = -1;
	m->time_scale = -1;
	int rc = TALLY_EINVAL, got_unknown = 0, got_missing = 0;
	for (const char *p = colon + 1; *p;) {
		const char *e = strchr(p, ','), *ss = p, *se;
		if (!e)
			e = p + strlen(p);
		p = *e ? e + 1 : e;
		se = e;
		trim(&ss, &se);
		if (ss == se) /* an empty item between commas */
			continue;
		const char *eq = memchr(ss, '=', (size_t)(se - ss));
		if (!eq) {
			fmt(err, cap, "json-map '%s': '%s' is not name=value", m->table,
			    lp_quote(q, ss, (size_t)(se - ss)));
			goto fail;
		}
		const char *ns = ss, *ne = eq, *vs = eq + 1, *ve = se;
		trim(&ns, &ne);
		trim(&vs, &ve);
		size_t nl = (size_t)(ne - ns), vl = (size_t)(ve - vs);
		int role = -1;
		for (int r = R_KEY; r <= R_STR; r++)
			if (strlen(role_setting[r]) == nl && !memcmp(role_setting[r], ns, nl))
				role = r;
		if (role >= 0) {
			if (vl == 0) {
				fmt(err, cap, "json-map '%s': %s: no member given", m->table,
				    role_setting[role]);
				goto fail;
			}
			int one = role == R_KEY || role == R_TIME;
			int *slot = role == R_KEY ? &m->key : &m->time;
			if (one && *slot >= 0) {
				fmt(err, cap, "json-map '%s': %s given twice", m->table,
				    role_setting[role]);
				goto fail;
			}
			for (const char *a = vs; a < ve;) {
				while (a < ve && is_space(*a))
					a++;
				const char *b = a;
				while (b < ve && !is_space(*b))
					b++;
				if (a == b)
					break;
				if (one && *slot >= 0) {
					fmt(err, cap,
					    "json-map '%s': %s takes one member, not '%s'",
					    m->table, role_setting[role], lp_quote(q, vs, vl));
					goto fail;
				}
				if ((rc = map_add(m, role, a, b, err, cap)))
					goto fail;
				rc = TALLY_EINVAL;
				if (one)
					*slot = (int)m->n - 1;
				a = b;
			}
		} else if (nl == 9 && !memcmp(ns, "time-unit", 9)) {
			static const char *const units[] = {"ns", "us", "ms", "s"};
			static const int scale[] = {0, 3, 6, 9};
			m->time_scale = -2;
			for (int i = 0; i < 4; i++)
				if (strlen(units[i]) == vl && !memcmp(units[i], vs, vl))
					m->time_scale = scale[i];
			if (m->time_scale == -2) {
				fmt(err, cap,
				    "json-map '%s': time-unit '%s' is not s, ms, us or ns",
				    m->table, lp_quote(q, vs, vl));
				goto fail;
			}
		} else if (nl == 7 && !memcmp(ns, "unknown", 7)) {
			if (vl == 6 && !memcmp(vs, "ignore", 6))
				m->unknown_reject = 0;
			else if (vl == 6 && !memcmp(vs, "reject", 6))
				m->unknown_reject = 1;
			else {
				fmt(err, cap, "json-map '%s': unknown '%s' is not ignore or reject",
				    m->table, lp_quote(q, vs, vl));
				goto fail;
			}
			got_unknown++;
		} else if (nl == 12 && !memcmp(ns, "missing-time", 12)) {
			if (vl == 6 && !memcmp(vs, "reject", 6))
				m->missing_now = 0;
			else if (vl == 3 && !memcmp(vs, "now", 3))
				m->missing_now = 1;
			else {
				fmt(err, cap,
				    "json-map '%s': missing-time '%s' is not reject or now",
				    m->table, lp_quote(q, vs, vl));
				goto fail;
			}
			got_missing++;
		} else {
			fmt(err, cap,
			    "json-map '%s': unknown setting '%s' (key, time, time-unit, fields, "
			    "ints, bools, tags, strings, unknown, missing-time)",
			    m->table, lp_quote(q, ns, nl));
			goto fail;
		}
		if (got_unknown > 1 || got_missing > 1) {
			fmt(err, cap, "json-map '%s': %s given twice", m->table,
			    got_unknown > 1 ? "unknown" : "missing-time");
			goto fail;
		}
	}
	if (m->key < 0) {
		fmt(err, cap, "json-map '%s': no key (key=MEMBER>TAG names the series key)",
		    m->table);
		goto fail;
	}
	if (m->time < 0 && !m->missing_now) {
		fmt(err, cap,
		    "json-map '%s': no time member (time=MEMBER), and missing-time is not now",
		    m->table);
		goto fail;
	}
	for (unsigned i = 0; i < m->n; i++) {
		int r = m->m[i].role;
		if (r == R_TAG)
			m->tags[m->n_tags++] = (uint8_t)i;
		else if (r >= R_F64 && r != R_TAG)
			m->fields[m->n_fields++] = (uint8_t)i;
	}
	if (m->n_fields == 0) {
		fmt(err, cap,
		    "json-map '%s': no fields (fields=, ints=, bools= or strings= name at least "
		    "one; a line needs a field)",
		    m->table);
		goto fail;
	}
	{
		const jm_member *k = &m->m[m->key];
		size_t tl = strlen(m->table), kl = strlen(k->name);
		if (!(m->head = malloc(2 * (tl + kl) + 2))) {
			rc = -ENOMEM;
			goto fail;
		}
		size_t o = put_name(m->head, m->table, tl, 1);
		m->head[o++] = ',';
		o += put_name(m->head + o, k->name, kl, 0);
		m->head[o++] = '=';
		m->head_n = (uint32_t)o;
	}
	*out = m;
	return 0;
fail:
	jsonev_map_free(m);
	return rc;
}

int jsonev_maps_new(jsonev_maps **out)
{
	char err[JSONEV_REASON_MAX];
	jsonev_maps *s = calloc(1, sizeof *s);
	if (!s)
		return -ENOMEM;
	int rc = jsonev_maps_add(s, JSONEV_DEFAULT_MAP, err, sizeof err);
	if (rc) {
		jsonev_maps_free(s);
		return rc;
	}
	*out = s;
	return 0;
}

int jsonev_maps_add(jsonev_maps *set, const char *spec, char *err, size_t cap)
{
	jsonev_map *m;
	int rc = jsonev_map_parse(spec, &m, err, cap);
	if (rc)
		return rc;
	for (size_t i = 0; i < set->n; i++)
		if (!strcmp(set->v[i]->table, m->table)) {
			jsonev_map_free(set->v[i]);
			set->v[i] = m;
			return 0;
		}
	jsonev_map **v = realloc(set->v, (set->n + 1) * sizeof *v);
	if (!v) {
		jsonev_map_free(m);
		return -ENOMEM;
	}
	v[set->n++] = m;
	set->v = v;
	return 0;
}

const jsonev_map *jsonev_maps_find(const jsonev_maps *set, const char *table, size_t n)
{
	for (size_t i = 0; i < set->n; i++)
		if (strlen(set->v[i]->table) == n && !memcmp(set->v[i]->table, table, n))
			return set->v[i];
	return NULL;
}

void jsonev_maps_free(jsonev_maps *set)
{
	if (!set)
		return;
	for (size_t i = 0; i < set->n; i++)
		jsonev_map_free(set->v[i]);
	free(set->v);
	free(set);
}

/* ---------------------------------------------------------------- decoder state */

int jsonev_dec_new(const jsonev_limits *lim, jsonev_dec **out)
{
	jsonev_dec *d = calloc(1, sizeof *d);
	if (!d)
		return -ENOMEM;
	if (lim)
		d->lim = *lim;
	if (!d->lim.max_body)
		d->lim.max_body = DEF_MAX_BODY;
	if (!d->lim.max_depth)
		d->lim.max_depth = DEF_MAX_DEPTH;
	if (!d->lim.max_errors)
		d->lim.max_errors = DEF_MAX_ERRORS;
	if (!(d->errs = calloc(d->lim.max_errors, sizeof *d->errs))) {
		free(d);
		return -ENOMEM;
	}
	*out = d;
	return 0;
}

void jsonev_dec_free(jsonev_dec *d)
{
	if (!d)
		return;
	free(d->out);
	free(d->rec_event);
	free(d->rec_line);
	free(d->errs);
	free(d->scratch);
	free(d);
}

static size_t off_of(const jsonev_dec *d, const char *p)
{
	return (size_t)(p - d->body);
}

/* Refuses the current event (the first reason is kept). */
__attribute__((format(printf, 3, 4))) static void ev_fail(jsonev_dec *d, const char *at,
							  const char *f, ...)
{
	if (d->ev_bad)
		return;
	d->ev_bad = 1;
	d->ev_off = off_of(d, at);
	va_list ap;
	va_start(ap, f);
	int r = vsnprintf(d->ev_reason, sizeof d->ev_reason, f, ap);
	va_end(ap);
	cut_utf8(d->ev_reason, sizeof d->ev_reason, r);
}

/* Invalid JSON at p: returns NULL for the parser to pass up. */
__attribute__((format(printf, 3, 4))) static const char *syn(jsonev_dec *d, const char *p,
							     const char *f, ...)
{
	d->syn_off = off_of(d, p);
	d->syn_nl = 0;
	va_list ap;
	va_start(ap, f);
	int r = vsnprintf(d->syn_reason, sizeof d->syn_reason, f, ap);
	va_end(ap);
	cut_utf8(d->syn_reason, sizeof d->syn_reason, r);
	return NULL;
}

#define FOUND_BUF (LP_QUOTE_BUF + 2) /* an excerpt in '' */

/* What is at p, for "expected X, found Y". */
static const char *found(const jsonev_dec *d, const char *p, char buf[FOUND_BUF])
{
	if (p == d->end)
		return "the end of the body";
	if (*p == '\n')
		return "a newline";
	size_t k = lp_utf8_one((const unsigned char *)p, (size_t)(d->end - p));
	char q[LP_QUOTE_BUF];
	snprintf(buf, FOUND_BUF, "'%s'", lp_quote(q, p, k ? k : 1));
	return buf;
}

/* Syntax error "expected what" at p, with NDJSON's newline explained. */
static const char *expected(jsonev_dec *d, const char *p, const char *what)
{
	char b[FOUND_BUF];
	if (p < d->end && *p == '\n' && !d->nl_ok) {
		syn(d, p, "expected %s, found the end of the line (NDJSON: one event a line)",
		    what);
		d->syn_nl = 1;
		return NULL;
	}
	return syn(d, p, "expected %s, found %s", what, found(d, p, b));
}

static void add_error(jsonev_dec *d, uint64_t ev, size_t off, int syntax, const char *reason)
{
	d->rejected++;
	if (d->n_errs == d->lim.max_errors)
		return;
	jsonev_error *e = &d->errs[d->n_errs++];
	e->event = ev;
	e->offset = off;
	e->syntax = syntax;
	snprintf(e->reason, sizeof e->reason, "%s", reason);
}

static inline const char *ws(const jsonev_dec *d, const char *p)
{
	const char *e = d->end;
	while (p < e && (*p == ' ' || *p == '\t' || *p == '\r' || (*p == '\n' && d->nl_ok)))
		p++;
	return p;
}

/* ---------------------------------------------------------------- scanning */

static int hexval(char c)
{
	if (is_digit(c))
		return c - '0';
	c |= 0x20;
	return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

static int hex4(const char *p, const char *e)
{
	if (e - p < 4)
		return -1;
	int v = 0;
	for (int i = 0; i < 4; i++) {
		int h = hexval(p[i]);
		if (h < 0)
			return -1;
		v = v << 4 | h;
	}
	return v;
}

/* Scans the string whose opening quote is at p; returns the byte after
 * its closing quote, or NULL (syntax error). *fl gets F_ESC / F_SPEC.
 * Invalid UTF-8 and lone surrogates refuse the event, not the body. */
static const char *scan_string(jsonev_dec *d, const char *p, unsigned *fl)
{
	const char *e = d->end;
	unsigned acc = 0, f = 0;
	p++;
	for (;;) {
		unsigned k;
		while (p < e && !((k = scls[(unsigned char)*p]) & (C_Q | C_B | C_CTL | C_HI))) {
			acc |= k;
			p++;
		}
		if (p == e)
			return syn(d, p, "unterminated string");
		k = scls[(unsigned char)*p];
		if (k & C_Q)
			break;
		if (k & C_CTL) {
			if (*p == '\n' && !d->nl_ok) {
				syn(d, p, "unterminated string at the end of the line");
				d->syn_nl = 1;
				return NULL;
			}
			return syn(d, p, "control character 0x%02X in a string (escape it)",
				   (unsigned char)*p);
		}
		if (k & C_HI) {
			size_t n = lp_utf8_one((const unsigned char *)p, (size_t)(e - p));
			if (!n) {
				ev_fail(d, p, "invalid UTF-8 in a string (byte 0x%02X)",
					(unsigned char)*p);
				n = 1;
			}
			p += n;
			continue;
		}
		/* backslash */
		f |= F_ESC;
		if (p + 1 == e)
			return syn(d, p, "unterminated string");
		char c = p[1];
		if (c == '"' || c == '\\' || c == '/' || c == 'b' || c == 'f' || c == 'n' ||
		    c == 'r' || c == 't') {
			p += 2;
			continue;
		}
		if (c != 'u') {
			char b[LP_QUOTE_BUF];
			size_t w = lp_utf8_one((const unsigned char *)p + 1, (size_t)(e - p - 1));
			return syn(d, p, "invalid escape '\\%s' in a string",
				   lp_quote(b, p + 1, w ? w : 1));
		}
		int u = hex4(p + 2, e);
		if (u < 0)
			return syn(d, p, "\\u needs four hex digits");
		if (u >= 0xD800 && u <= 0xDBFF) {
			int lo = p + 8 <= e && p[6] == '\\' && p[7] == 'u' ? hex4(p + 8, e) : -1;
			if (lo >= 0xDC00 && lo <= 0xDFFF) {
				p += 12;
				continue;
			}
			ev_fail(d, p, "\\u%04X is a high surrogate without its low half", u);
		} else if (u >= 0xDC00 && u <= 0xDFFF) {
			ev_fail(d, p, "\\u%04X is a low surrogate without its high half", u);
		}
		p += 6;
	}
	*fl = f | (acc & C_SP ? F_SPEC : 0);
	return p + 1;
}

/* Scans the number at p; returns the byte after it or NULL. */
static const char *scan_number(jsonev_dec *d, const char *p, unsigned *fl)
{
	const char *e = d->end, *s = p;
	unsigned f = 0;
	if (*p == '-')
		p++;
	if (p == e || !is_digit(*p))
		return syn(d, s, "invalid number: no digit after '-'");
	if (*p == '0') {
		p++;
		if (p < e && is_digit(*p))
			return syn(d, s, "invalid number: leading zero");
	} else {
		while (p < e && is_digit(*p))
			p++;
	}
	if (p < e && *p == '.') {
		p++;
		if (p == e || !is_digit(*p))
			return syn(d, s, "invalid number: no digit after '.'");
		while (p < e && is_digit(*p))
			p++;
		f |= F_FRAC;
	}
	if (p < e && (*p == 'e' || *p == 'E')) {
		p++;
		if (p < e && (*p == '+' || *p == '-'))
			p++;
		if (p == e || !is_digit(*p))
			return syn(d, s, "invalid number: no digit in the exponent");
		while (p < e && is_digit(*p))
			p++;
		f |= F_EXP;
	}
	*fl = f;
	return p;
}

static const char *scan_value(jsonev_dec *d, const char *p, unsigned depth, jslot *v);

/* Skips the object or array at p (depth counts it). */
static const char *scan_nested(jsonev_dec *d, const char *p, unsigned depth)
{
	if (depth > d->lim.max_depth)
		return syn(d, p, "nested deeper than %u", d->lim.max_depth);
	int obj = *p == '{';
	char close = obj ? '}' : ']';
	p = ws(d, p + 1);
	if (p < d->end && *p == close)
		return p + 1;
	for (;;) {
		jslot v;
		unsigned fl;
		if (obj) {
			if (p == d->end || *p != '"')
				return expected(d, p, "a member name");
			if (!(p = scan_string(d, p, &fl)))
				return NULL;
			p = ws(d, p);
			if (p == d->end || *p != ':')
				return expected(d, p, "':'");
			p = ws(d, p + 1);
		}
		if (!(p = scan_value(d, p, depth, &v)))
			return NULL;
		p = ws(d, p);
		if (p < d->end && *p == ',') {
			p = ws(d, p + 1);
			continue;
		}
		if (p < d->end && *p == close)
			return p + 1;
		return expected(d, p, obj ? "',' or '}'" : "',' or ']'");
	}
}

static int lit(const char *p, const char *e, const char *w, size_t n)
{
	return (size_t)(e - p) >= n && !memcmp(p, w, n);
}

/* Scans any value at p into *v. */
static const char *scan_value(jsonev_dec *d, const char *p, unsigned depth, jslot *v)
{
	const char *e = d->end, *q;
	unsigned fl = 0;
	/* a literal, object or array has no span: emit() sizes its line from
	 * every slot's n, so none may be left unset */
	v->off = off_of(d, p);
	v->p = p;
	v->n = 0;
	v->flags = 0;
	if (p == e)
		return expected(d, p, "a value");
	switch (*p) {
	case '"':
		if (!(q = scan_string(d, p, &fl)))
			return NULL;
		v->type = J_STR;
		v->p = p + 1;
		v->n = (uint32_t)(q - p - 2);
		v->flags = (uint8_t)fl;
		return q;
	case '{':
	case '[': v->type = *p == '{' ? J_OBJ : J_ARR; return scan_nested(d, p, depth + 1);
	case 't':
		if (!lit(p, e, "true", 4))
			break;
		v->type = J_TRUE;
		return p + 4;
	case 'f':
		if (!lit(p, e, "false", 5))
			break;
		v->type = J_FALSE;
		return p + 5;
	case 'n':
		if (!lit(p, e, "null", 4))
			break;
		v->type = J_NULL;
		return p + 4;
	default:
		if (*p != '-' && !is_digit(*p))
			break;
		if (!(q = scan_number(d, p, &fl)))
			return NULL;
		v->type = J_NUM;
		v->p = p;
		v->n = (uint32_t)(q - p);
		v->flags = (uint8_t)fl;
		return q;
	}
	return expected(d, p, "a value");
}

/* ---------------------------------------------------------------- values */

enum { N_OK, N_FRAC, N_RANGE };

/* A JSON number (valid: checked by the scan) as decimal digits: the digit
 * string S is the integer digits then the fraction digits, the point after
 * nint of them, the whole times 10^x; [f, l) is S without its leading and
 * trailing zeros (f == ns: the number is zero). */
typedef struct jdigits {
	const char *is, *fs;
	size_t nint, ns, f, l;
	int64_t x;
	int neg;
} jdigits;

static char jd_at(const jdigits *j, size_t i)
{
	return i < j->nint ? j->is[i] : j->fs[i - j->nint];
}

static void jd_split(const char *p, size_t n, jdigits *j)
{
	const char *e = p + n;
	j->neg = *p == '-';
	p += j->neg;
	j->is = p;
	while (p < e && is_digit(*p))
		p++;
	j->nint = (size_t)(p - j->is);
	j->fs = p;
	size_t nfr = 0;
	if (p < e && *p == '.') {
		j->fs = ++p;
		while (p < e && is_digit(*p))
			p++;
		nfr = (size_t)(p - j->fs);
	}
	j->x = 0;
	if (p < e) { /* exponent; beyond 10^8 it only needs to stay huge */
		p++;
		int eneg = *p == '-';
		p += *p == '-' || *p == '+';
		for (; p < e; p++)
			if (j->x < 100000000)
				j->x = j->x * 10 + (*p - '0');
		if (eneg)
			j->x = -j->x;
	}
	j->ns = j->nint + nfr;
	j->f = 0;
	while (j->f < j->ns && jd_at(j, j->f) == '0')
		j->f++;
	j->l = j->ns;
	while (j->l > j->f && jd_at(j, j->l - 1) == '0')
		j->l--;
}

/* The JSON number [p, p+n) times 10^scale (scale >= 0), exactly, into
 * *out: N_FRAC when that is not an integer, N_RANGE when it is above
 * lim_pos or below -lim_neg. */
static int num_scaled(const char *p, size_t n, int scale, uint64_t lim_pos, uint64_t lim_neg,
		      int64_t *out)
{
	jdigits j;
	jd_split(p, n, &j);
	if (j.f == j.ns) {
		*out = 0;
		return N_OK;
	}
	/* value = digits [f, l) times 10^e10 */
	int64_t e10 = (int64_t)j.nint - (int64_t)j.l + j.x + scale;
	if (e10 < 0)
		return N_FRAC;
	if ((int64_t)(j.l - j.f) + e10 > 19)
		return N_RANGE;
	uint64_t v = 0;
	for (size_t i = j.f; i < j.l; i++)
		v = v * 10 + (uint64_t)(jd_at(&j, i) - '0');
	for (int64_t i = 0; i < e10; i++)
		if (__builtin_mul_overflow(v, 10, &v))
			return N_RANGE;
	if (v > (j.neg ? lim_neg : lim_pos))
		return N_RANGE;
	*out = j.neg ? (v == (UINT64_C(1) << 63) ? INT64_MIN : -(int64_t)v) : (int64_t)v;
	return N_OK;
}

/* 2^1024 - 2^970: the least decimal that rounds to infinity, digits only. */
static const char dbl_inf_digits[] =
	"17976931348623158079372897140530341507993413271003782693617377898044496829276475094"
	"66490179775872070963302864166928879109465555478519404026306574886715058206819089020"
	"00708383676273854845817711531764475730270069855571366959622842914819860834936475292"
	"719074168444365510704342711559699508093042880177904174497792";

/* 1 when the JSON number [p, p+n) is too big for a double. */
static int num_overflows(const char *p, size_t n)
{
	jdigits j;
	jd_split(p, n, &j);
	if (j.f == j.ns)
		return 0;
	int64_t mag = (int64_t)j.nint - 1 - (int64_t)j.f + j.x; /* 10^mag <= |v| < 10^(mag+1) */
	if (mag != 308)
		return mag > 308;
	size_t k = 0, nd = sizeof dbl_inf_digits - 1;
	for (size_t i = j.f; i < j.l; i++, k++) {
		char c = k < nd ? dbl_inf_digits[k] : '0';
		if (jd_at(&j, i) != c)
			return jd_at(&j, i) > c;
	}
	return k >= nd; /* equal so far: at least the threshold if all of it was matched */
}

/* Decodes the JSON string content [p, p+n) (valid, checked by the scan)
 * into dst; returns its length (at most n). */
static size_t unescape(const char *p, size_t n, char *dst)
{
	const char *e = p + n;
	size_t o = 0;
	while (p < e) {
		if (*p != '\\') {
			dst[o++] = *p++;
			continue;
		}
		char c = p[1];
		p += 2;
		switch (c) {
		case 'b': dst[o++] = '\b'; continue;
		case 'f': dst[o++] = '\f'; continue;
		case 'n': dst[o++] = '\n'; continue;
		case 'r': dst[o++] = '\r'; continue;
		case 't': dst[o++] = '\t'; continue;
		case 'u': break;
		default: dst[o++] = c; continue;
		}
		unsigned u = (unsigned)hex4(p, e);
		p += 4;
		if (u >= 0xD800 && u <= 0xDBFF && e - p >= 6 && p[0] == '\\' && p[1] == 'u') {
			int lo = hex4(p + 2, e);
			if (lo >= 0xDC00 && lo <= 0xDFFF) {
				u = 0x10000 + ((u - 0xD800) << 10) + ((unsigned)lo - 0xDC00);
				p += 6;
			}
		}
		/* a lone surrogate refused the event already; any bytes do */
		if (u < 0x80) {
			dst[o++] = (char)u;
		} else if (u < 0x800) {
			dst[o++] = (char)(0xC0 | u >> 6);
			dst[o++] = (char)(0x80 | (u & 0x3F));
		} else if (u < 0x10000) {
			dst[o++] = (char)(0xE0 | u >> 12);
			dst[o++] = (char)(0x80 | ((u >> 6) & 0x3F));
			dst[o++] = (char)(0x80 | (u & 0x3F));
		} else {
			dst[o++] = (char)(0xF0 | u >> 18);
			dst[o++] = (char)(0x80 | ((u >> 12) & 0x3F));
			dst[o++] = (char)(0x80 | ((u >> 6) & 0x3F));
			dst[o++] = (char)(0x80 | (u & 0x3F));
		}
	}
	return o;
}

/* The string of slot v, decoded: in the body when it has no escapes, else
 * in scratch (big enough: the caller reserved it). */
static const char *slot_text(jsonev_dec *d, const jslot *v, size_t *n)
{
	if (!(v->flags & F_ESC)) {
		*n = v->n;
		return v->p;
	}
	*n = unescape(v->p, v->n, d->scratch);
	return d->scratch;
}

static int d2(const char *s)
{
	return is_digit(s[0]) && is_digit(s[1]) ? (s[0] - '0') * 10 + (s[1] - '0') : -1;
}

/* RFC 3339 date-time [s, s+n) to ns; NULL or why not. */
static const char *rfc3339(const char *s, size_t n, int64_t *out)
{
	static const char *const shape = "not an RFC 3339 time like 2025-04-05T10:15:30Z";
	if (n < 19)
		return shape;
	int y1 = d2(s), y2 = d2(s + 2), mo = d2(s + 5), dd = d2(s + 8), h = d2(s + 11),
	    mi = d2(s + 14), se = d2(s + 17);
	if (y1 < 0 || y2 < 0 || mo < 0 || dd < 0 || h < 0 || mi < 0 || se < 0 || s[4] != '-' ||
	    s[7] != '-' || (s[10] != 'T' && s[10] != 't' && s[10] != ' ') || s[13] != ':' ||
	    s[16] != ':')
		return shape;
	int64_t y = y1 * 100 + y2;
	static const unsigned char mdays[12] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	if (mo < 1 || mo > 12 || dd < 1 || dd > mdays[mo - 1] ||
	    (mo == 2 && dd == 29 && !(y % 4 == 0 && (y % 100 != 0 || y % 400 == 0))))
		return "no such date";
	if (h > 23 || mi > 59)
		return "no such time of day";
	if (se == 60)
		return "a leap second (:60) has no place in Unix time";
	if (se > 59)
		return "no such time of day";
	const char *p = s + 19, *e = s + n;
	int64_t frac = 0;
	if (p < e && *p == '.') {
		p++;
		int k = 0;
		for (; p < e && is_digit(*p); p++, k++) {
			if (k < 9)
				frac = frac * 10 + (*p - '0');
			else if (*p != '0')
				return "a fraction finer than a nanosecond";
		}
		if (k == 0)
			return shape;
		for (; k < 9; k++)
			frac *= 10;
	}
	int64_t off = 0;
	if (p < e && (*p == 'Z' || *p == 'z')) {
		p++;
	} else if (p < e && (*p == '+' || *p == '-') && e - p >= 6) {
		int oh = d2(p + 1), om = d2(p + 4);
		if (oh < 0 || om < 0 || p[3] != ':')
			return shape;
		if (oh > 23 || om > 59)
			return "no such UTC offset";
		off = (oh * 3600 + om * 60) * (*p == '-' ? -1 : 1);
		p += 6;
	} else {
		return "no UTC offset (Z or +hh:mm)";
	}
	if (p != e)
		return shape;
	int64_t secs = cmd_days_from_civil(y, (unsigned)mo, (unsigned)dd) * 86400 + h * 3600 +
		       mi * 60 + se - off;
	int64_t ns;
	if (secs < 0 && frac > 0) { /* so that the product cannot overflow before the sum */
		secs++;
		frac -= 1000000000;
	}
	if (__builtin_mul_overflow(secs, 1000000000, &ns) ||
	    __builtin_add_overflow(ns, frac, &ns) || ns > LP_TS_MAX || ns < LP_TS_MIN)
		return "outside the years 1677 to 2262 that nanoseconds can hold";
	*out = ns;
	return NULL;
}

/* ---------------------------------------------------------------- events */

static int reserve_out(jsonev_dec *d, size_t more)
{
	return grow((void **)&d->out, &d->out_cap, d->out_len + more, 1);
}

/* Writes the tag value of slot v (a string) at o; returns the length or
 * -1 after refusing the event. */
static long put_tag(jsonev_dec *d, const jm_member *mm, const jslot *v, char *o)
{
	char q[LP_QUOTE_BUF];
	if (!(v->flags & (F_ESC | F_SPEC))) { /* common: as it is */
		if (v->n > LP_VALUE_MAX)
			goto too_long;
		memcpy(o, v->p, v->n);
		return v->n;
	}
	size_t n;
	const char *s = slot_text(d, v, &n);
	if (n > LP_VALUE_MAX)
		goto too_long;
	const char *bad = memchr(s, '\n', n) ? "a newline" : memchr(s, 0, n) ? "a NUL" : NULL;
	if (bad) {
		ev_fail(d, d->body + v->off, "%s '%s': %s cannot be in a tag value",
			mm->role == R_KEY ? "key" : "tag", lp_quote(q, mm->json, mm->json_n), bad);
		return -1;
	}
	if (n && s[n - 1] == '\\') {
		ev_fail(d, d->body + v->off,
			"%s '%s': a tag value ending with a backslash cannot be written in line "
			"protocol",
			mm->role == R_KEY ? "key" : "tag", lp_quote(q, mm->json, mm->json_n));
		return -1;
	}
	return (long)put_name(o, s, n, 0);
too_long:
	ev_fail(d, d->body + v->off, "%s '%s': longer than %d bytes",
		mm->role == R_KEY ? "key" : "tag", lp_quote(q, mm->json, mm->json_n), LP_VALUE_MAX);
	return -1;
}

/* Writes the string field of slot v at o ("..." included); *nl counts the
 * newlines it holds. Returns the length or -1. */
static long put_str(jsonev_dec *d, const jm_member *mm, const jslot *v, char *o, uint64_t *nl)
{
	size_t n;
	char q[LP_QUOTE_BUF];
	const char *s = slot_text(d, v, &n);
	if (n > LP_VALUE_MAX) {
		ev_fail(d, d->body + v->off, "field '%s': string longer than %d bytes",
			lp_quote(q, mm->json, mm->json_n), LP_VALUE_MAX);
		return -1;
	}
	size_t k = 0;
	o[k++] = '"';
	if (!(v->flags & F_ESC)) { /* no '"', '\\' nor newline: as it is */
		memcpy(o + k, s, n);
		k += n;
	} else {
		for (size_t i = 0; i < n; i++) {
			char c = s[i];
			if (c == '"' || c == '\\' || c == '\n')
				o[k++] = '\\';
			*nl += c == '\n';
			o[k++] = c;
		}
	}
	o[k++] = '"';
	return (long)k;
}

/* Writes the value of field slot v at o; returns the length or -1. */
static long put_field(jsonev_dec *d, const jm_member *mm, const jslot *v, char *o, uint64_t *nl)
{
	char q[LP_QUOTE_BUF], q2[LP_QUOTE_BUF];
	switch (mm->role) {
	case R_F64:
		if ((v->flags & F_EXP || v->n > 300) && num_overflows(v->p, v->n)) {
			ev_fail(d, d->body + v->off, "field '%s': %s is out of range for a double",
				lp_quote(q, mm->json, mm->json_n), lp_quote(q2, v->p, v->n));
			return -1;
		}
		memcpy(o, v->p, v->n);
		return v->n;
	case R_I64: {
		if (!(v->flags & (F_FRAC | F_EXP)) && v->n <= 18) {
			memcpy(o, v->p, v->n);
			o[v->n] = 'i';
			return v->n + 1;
		}
		int64_t x;
		int r = num_scaled(v->p, v->n, 0, (uint64_t)INT64_MAX, UINT64_C(1) << 63, &x);
		if (r != N_OK) {
			ev_fail(d, d->body + v->off, "field '%s': %s is %s",
				lp_quote(q, mm->json, mm->json_n), lp_quote(q2, v->p, v->n),
				r == N_FRAC ? "not an integer" : "out of range for int64");
			return -1;
		}
		size_t k = put_i64(o, x);
		o[k++] = 'i';
		return (long)k;
	}
	case R_BOOL:
		if (v->type == J_TRUE) {
			memcpy(o, "true", 4);
			return 4;
		}
		memcpy(o, "false", 5);
		return 5;
	default: return put_str(d, mm, v, o, nl);
	}
}

/* The event time from slot v into *ts; 0 or -1 after refusing. */
static int event_time(jsonev_dec *d, const jm_member *mm, const jslot *v, int64_t *ts)
{
	char q[LP_QUOTE_BUF], q2[LP_QUOTE_BUF];
	const jsonev_map *m = d->m;
	if (v->type == J_STR) {
		size_t n;
		const char *s = slot_text(d, v, &n);
		const char *why = rfc3339(s, n, ts);
		if (why)
			ev_fail(d, d->body + v->off, "time '%s': '%s' is %s",
				lp_quote(q, mm->json, mm->json_n), lp_quote(q2, s, n), why);
		return why ? -1 : 0;
	}
	if (m->time_scale < 0) {
		ev_fail(d, d->body + v->off,
			"time '%s': %s is a number, and the mapping gives no time-unit (s, ms, us "
			"or ns)",
			lp_quote(q, mm->json, mm->json_n), lp_quote(q2, v->p, v->n));
		return -1;
	}
	int r = num_scaled(v->p, v->n, m->time_scale, (uint64_t)LP_TS_MAX, (uint64_t)LP_TS_MAX, ts);
	if (r != N_OK)
		ev_fail(d, d->body + v->off, "time '%s': %s is %s",
			lp_quote(q, mm->json, mm->json_n), lp_quote(q2, v->p, v->n),
			r == N_FRAC ? "finer than a nanosecond"
				    : "outside the years 1677 to 2262 that nanoseconds can hold");
	return r == N_OK ? 0 : -1;
}

/* Writes the line of the event whose object ended (slots filled), or
 * refuses it. start: where the event began (for its errors). */
static int emit(jsonev_dec *d, const char *start, int64_t now_ns)
{
	const jsonev_map *m = d->m;
	char q[LP_QUOTE_BUF];
	uint64_t seen = d->seen;
	if (!(seen >> m->key & 1) && d->dkey) {
		/* The key from where the event came (an MQTT topic level): a
		 * string that may hold what a tag must escape. */
		d->slots[m->key] = (jslot){
			.p = d->dkey, .n = (uint32_t)d->dkey_n, .type = J_STR, .flags = F_SPEC};
		seen |= UINT64_C(1) << m->key;
	}
	if (!(seen >> m->key & 1)) {
		const jm_member *k = &m->m[m->key];
		ev_fail(d, start, "no key member '%s'", lp_quote(q, k->json, k->json_n));
		return 0;
	}
	/* Worst case: every value byte escaped, plus names and numbers. */
	size_t need = m->head_n + 2 * d->slots[m->key].n + 64, scratch = d->slots[m->key].n;
	unsigned nf = 0;
	for (unsigned i = 0; i < m->n; i++)
		if (seen >> i & 1) {
			need += m->m[i].pre_n + 2 * (size_t)d->slots[i].n + 32;
			if (d->slots[i].n > scratch)
				scratch = d->slots[i].n;
			nf += m->m[i].role >= R_F64 && m->m[i].role != R_TAG;
		}
	if (nf == 0) {
		ev_fail(d, start, "no field: none of the mapped fields is in the event");
		return 0;
	}
	if (reserve_out(d, need) || grow((void **)&d->scratch, &d->scratch_cap, scratch + 1, 1))
		return -ENOMEM;
	int64_t ts = now_ns;
	if (m->time >= 0 && (seen >> m->time & 1)) {
		if (event_time(d, &m->m[m->time], &d->slots[m->time], &ts))
			return 0;
	} else if (!m->missing_now) {
		const jm_member *t = &m->m[m->time];
		ev_fail(d, start,
			"no time member '%s': cameras must send the event time (this mapping "
			"does not let the server's time stand in)",
			lp_quote(q, t->json, t->json_n));
		return 0;
	}
	char *o0 = d->out + d->out_len, *o = o0;
	uint64_t nl = 0;
	memcpy(o, m->head, m->head_n);
	o += m->head_n;
	long k = put_tag(d, &m->m[m->key], &d->slots[m->key], o);
	if (k < 0)
		return 0;
	if (k == 0) {
		ev_fail(d, d->body + d->slots[m->key].off, "key '%s' is empty",
			lp_quote(q, m->m[m->key].json, m->m[m->key].json_n));
		return 0;
	}
	o += k;
	for (unsigned t = 0; t < m->n_tags; t++) {
		unsigned i = m->tags[t];
		if (!(seen >> i & 1) || d->slots[i].n == 0) /* an empty tag is no tag */
			continue;
		memcpy(o, m->m[i].pre, m->m[i].pre_n);
		if ((k = put_tag(d, &m->m[i], &d->slots[i], o + m->m[i].pre_n)) < 0)
			return 0;
		o += m->m[i].pre_n + (size_t)k;
	}
	char sep = ' ';
	for (unsigned f = 0; f < m->n_fields; f++) {
		unsigned i = m->fields[f];
		if (!(seen >> i & 1))
			continue;
		*o++ = sep;
		sep = ',';
		memcpy(o, m->m[i].pre, m->m[i].pre_n);
		o += m->m[i].pre_n;
		if ((k = put_field(d, &m->m[i], &d->slots[i], o, &nl)) < 0)
			return 0;
		o += k;
	}
	*o++ = ' ';
	o += put_i64(o, ts);
	*o++ = '\n';
	if (d->recs == d->recs_cap) { /* both arrays have recs_cap entries */
		size_t c = d->recs_cap ? 2 * d->recs_cap : 1024;
		uint64_t *re = realloc(d->rec_event, c * sizeof *re);
		if (!re)
			return -ENOMEM;
		d->rec_event = re;
		uint64_t *rl = realloc(d->rec_line, c * sizeof *rl);
		if (!rl)
			return -ENOMEM;
		d->rec_line = rl;
		d->recs_cap = c;
	}
	d->rec_event[d->recs] = d->ev;
	d->rec_line[d->recs] = d->phys + 1;
	d->recs++;
	d->phys += 1 + nl;
	d->out_len += (size_t)(o - o0);
	return 0;
}

/* Member value v of mapped member i: its type checked, remembered. */
static void take(jsonev_dec *d, unsigned i, const jslot *v)
{
	const jm_member *mm = &d->m->m[i];
	char q[LP_QUOTE_BUF];
	if (v->type == J_NULL)
		return; /* null: absent */
	if (d->seen >> i & 1) {
		ev_fail(d, d->body + v->off, "member '%s' appears twice",
			lp_quote(q, mm->json, mm->json_n));
		return;
	}
	static const char *const tname[] = {
		[J_STR] = "a string", [J_NUM] = "a number",  [J_TRUE] = "true",
		[J_FALSE] = "false",  [J_OBJ] = "an object", [J_ARR] = "an array",
	};
	const char *want = NULL;
	switch (mm->role) {
	case R_KEY:
	case R_TAG:
	case R_STR:
		if (v->type != J_STR)
			want = "a string";
		break;
	case R_TIME:
		if (v->type != J_STR && v->type != J_NUM)
			want = "an RFC 3339 string or a number";
		break;
	case R_F64:
	case R_I64:
		if (v->type != J_NUM)
			want = "a number";
		break;
	case R_BOOL:
		if (v->type != J_TRUE && v->type != J_FALSE)
			want = "true or false";
		break;
	}
	if (want) {
		ev_fail(d, d->body + v->off, "member '%s' must be %s, not %s",
			lp_quote(q, mm->json, mm->json_n), want, tname[v->type]);
		return;
	}
	d->slots[i] = *v;
	d->seen |= UINT64_C(1) << i;
}

/* The mapped member named by the string [p, p+n) (flags fl), or -1. */
static int find_member(jsonev_dec *d, const char *p, size_t n, unsigned fl, unsigned hint)
{
	const jsonev_map *m = d->m;
	if (fl & F_ESC) {
		if (grow((void **)&d->scratch, &d->scratch_cap, n + 1, 1))
			return -2;
		n = unescape(p, n, d->scratch);
		p = d->scratch;
	}
	for (unsigned k = 0, i = hint; k < m->n; k++, i = i + 1 == m->n ? 0 : i + 1)
		if (m->m[i].json_n == n && !memcmp(m->m[i].json, p, n))
			return (int)i;
	return -1;
}

/* One event at p (depth: of its container). Returns the byte after it, or
 * NULL on a syntax error (d->syn_*) or out of memory (d->syn_off = SIZE_MAX). */
static const char *event(jsonev_dec *d, const char *p, unsigned depth, int64_t now_ns)
{
	const char *start = p, *e = d->end;
	d->ev_bad = 0;
	d->seen = 0;
	if (p == e)
		return expected(d, p, "an event");
	if (*p != '{') {
		jslot v;
		if (!(p = scan_value(d, p, depth, &v)))
			return NULL;
		static const char *const tn[] = {
			[J_STR] = "a string", [J_NUM] = "a number", [J_TRUE] = "true",
			[J_FALSE] = "false",  [J_NULL] = "null",    [J_ARR] = "an array"};
		ev_fail(d, start, "an event must be an object, not %s", tn[v.type]);
		return p;
	}
	if (depth + 1 > d->lim.max_depth)
		return syn(d, p, "nested deeper than %u", d->lim.max_depth);
	p = ws(d, p + 1);
	if (p < e && *p == '}') {
		p++;
	} else {
		unsigned hint = 0;
		for (;;) {
			unsigned fl;
			if (p == e || *p != '"')
				return expected(d, p, "a member name");
			const char *ns = p;
			if (!(p = scan_string(d, p, &fl)))
				return NULL;
			size_t name_n = (size_t)(p - ns - 2);
			int i = find_member(d, ns + 1, name_n, fl, hint);
			if (i == -2)
				return d->syn_off = SIZE_MAX, NULL;
			p = ws(d, p);
			if (p == e || *p != ':')
				return expected(d, p, "':'");
			p = ws(d, p + 1);
			jslot v;
			if (!(p = scan_value(d, p, depth + 1, &v)))
				return NULL;
			if (i >= 0) {
				take(d, (unsigned)i, &v);
				hint = (unsigned)i + 1 == d->m->n ? 0 : (unsigned)i + 1;
			} else if (d->m->unknown_reject) {
				char q[LP_QUOTE_BUF];
				ev_fail(d, ns, "unknown member '%s' (the mapping rejects them)",
					lp_quote(q, ns + 1, name_n));
			}
			p = ws(d, p);
			if (p < e && *p == ',') {
				p = ws(d, p + 1);
				continue;
			}
			if (p < e && *p == '}') {
				p++;
				break;
			}
			return expected(d, p, "',' or '}'");
		}
	}
	if (!d->ev_bad && emit(d, start, now_ns))
		return d->syn_off = SIZE_MAX, NULL;
	return p;
}

/* The event ended: count it and keep its error. */
static void event_done(jsonev_dec *d)
{
	if (d->ev_bad)
		add_error(d, d->ev, d->ev_off, 0, d->ev_reason);
	d->ev++;
}

static void reset(jsonev_dec *d, const jsonev_map *m, const char *body, size_t len, int nl_ok)
{
	d->m = m;
	d->body = body;
	d->end = body + len;
	d->nl_ok = nl_ok;
	d->out_len = 0;
	d->recs = 0;
	d->n_errs = 0;
	d->ev = 0;
	d->phys = 0;
	d->rejected = 0;
}

static void fill(jsonev_dec *d, jsonev_result *res, int stopped, size_t stop_off)
{
	memset(res, 0, sizeof *res);
	res->lp = d->out ? d->out : "";
	res->lp_len = d->out_len;
	res->records = d->recs;
	res->lines = d->phys;
	res->record_event = d->rec_event;
	res->record_line = d->rec_line;
	res->events = d->ev;
	res->rejected = d->rejected;
	res->accepted = d->ev - d->rejected;
	res->stopped = stopped;
	res->stop_offset = stop_off;
	res->n_errors = d->n_errs;
	res->errors = d->errs;
}

void jsonev_dec_default_key(jsonev_dec *d, const char *key, size_t n)
{
	d->dkey = key;
	d->dkey_n = key ? n : 0;
}

int jsonev_decode(jsonev_dec *d, const jsonev_map *m, const char *body, size_t len, int64_t now_ns,
		  jsonev_result *res)
{
	reset(d, m, body, len, 1);
	if (len > d->lim.max_body) {
		char r[JSONEV_REASON_MAX];
		fmt(r, sizeof r, "body of %zu bytes is longer than the limit of %zu", len,
		    d->lim.max_body);
		add_error(d, 0, d->lim.max_body, 1, r);
		d->ev = 1;
		fill(d, res, 1, d->lim.max_body);
		return TALLY_ELIMIT;
	}
	const char *p = ws(d, body), *e = d->end;
	if (p < e && *p == '[') { /* an array of events */
		p = ws(d, p + 1);
		if (p < e && *p == ']') {
			p++;
			goto after;
		}
		for (;;) {
			const char *q = event(d, p, 1, now_ns);
			if (!q)
				goto stop;
			event_done(d);
			p = ws(d, q);
			if (p < e && *p == ',') {
				p = ws(d, p + 1);
				if (p == e || *p == ']') {
					expected(d, p, "an event after ','");
					goto stop_between;
				}
				continue;
			}
			if (p < e && *p == ']') {
				p++;
				break;
			}
			expected(d, p, "',' or ']'");
			goto stop_between;
		}
after:
		p = ws(d, p);
		if (p < e) {
			syn(d, p, "more after the array's closing ']'");
			goto stop_between;
		}
		fill(d, res, 0, 0);
		return 0;
stop:
		if (d->syn_off == SIZE_MAX)
			return -ENOMEM;
stop_between:
		add_error(d, d->ev, d->syn_off, 1, d->syn_reason);
		d->ev++;
		fill(d, res, 1, d->syn_off);
		return 0;
	}

	/* NDJSON: one event a line; a broken line loses only its event. A body
	 * whose first event spans lines is read again as whitespace-separated
	 * objects (a pretty-printed single event). */
	d->nl_ok = 0;
	for (p = body;;) {
		while (p < e && is_space(*p))
			p++;
		if (p == e)
			break;
		size_t out0 = d->out_len, recs0 = d->recs;
		uint64_t phys0 = d->phys;
		const char *q = event(d, p, 0, now_ns);
		if (q) {
			while (q < e && (*q == ' ' || *q == '\t' || *q == '\r'))
				q++;
			if (q < e && *q != '\n' && !d->nl_ok) {
				char b[FOUND_BUF];
				syn(d, q, "expected a newline after the event, found %s",
				    found(d, q, b));
				q = NULL;
				d->out_len = out0; /* its line was written: take it back */
				d->recs = recs0;
				d->phys = phys0;
			}
		}
		if (q) {
			event_done(d);
			p = q;
			continue;
		}
		if (d->syn_off == SIZE_MAX)
			return -ENOMEM;
		if (d->ev == 0 && d->syn_nl && !d->nl_ok) {
			reset(d, m, body, len, 1);
			p = body;
			continue;
		}
		add_error(d, d->ev, d->syn_off, 1, d->syn_reason);
		d->ev++;
		const char *nl = memchr(body + d->syn_off, '\n', (size_t)(e - body - d->syn_off));
		p = nl ? nl + 1 : e;
	}
	fill(d, res, 0, 0);
	return 0;
}

uint64_t jsonev_line_event(const jsonev_result *res, uint64_t line)
{
	size_t n = res->records;
	if (n == 0 || line == 0 || line > res->lines)
		return UINT64_MAX;
	if (line <= n && res->record_line[line - 1] == line) /* no multi-line record before */
		return res->record_event[line - 1];
	size_t lo = 0, hi = n; /* the last record starting at or before line */
	while (hi - lo > 1) {
		size_t mid = lo + (hi - lo) / 2;
		if (res->record_line[mid] <= line)
			lo = mid;
		else
			hi = mid;
	}
	return res->record_event[lo];
}
