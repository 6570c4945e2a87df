/*
 * httpq.c — the HTTP query API and the cameras' route (docs/http.md).
 *
 * Every answer is made by one producer that appends rows to a body buffer
 * until the buffer holds half of reply-buffer-bytes or the answer ends.
 * An answer that ends within that first turn leaves with Content-Length;
 * a longer one leaves as chunks, one per turn, and the next turn runs only
 * once the connection's unsent replies fall below half the bound again
 * (httpd.c calls httpq_pump from its step, after each send). So a series
 * of millions of windows, a scan of millions of events or every key of a
 * table costs one buffer of memory per connection, however long, and a
 * client that stops reading stops the producer, not the shard.
 *
 * Rows come from the engine in the order they are written: series windows
 * in time order (wire/series.c's slices), keys and all-keys aggregates in
 * key order, scans in time order. Only aggs sorted by something other than
 * the key keeps rows: the best `limit` in a bounded heap.
 *
 * With `peers` (docs/cluster.md), series, agg, aggs, scan, dist and the
 * cameras' route are asked of every node (fanserv_ask) and nothing is sent until
 * they answered: the rows then come from the merged answer, read back by
 * the same producers (q_next_bucket, q_next_key, q_scan_next), so an
 * answer across nodes has the format of one node's, plus "partial" when
 * partial=mark let nodes be missing.
 */
#include "httpq.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cmd.h"
#include "distcmd.h"
#include "fandist.h"
#include "fanserv.h"
#include "series.h"

#define Q_NAME_MAX   1024    /* a table, field or key parameter, bytes */
#define Q_KEYS_PAGE  1024    /* keys fetched per catalog call */
#define Q_AGGS_LIMIT 1000    /* default limit of a sorted aggs */
#define Q_AGGS_MAX   100000  /* most rows a sorted aggs keeps */
#define Q_SCAN_LIMIT 1000    /* default rows of a scan page */
#define Q_SCAN_MAX   1000000 /* most rows of a scan page */
#define Q_TABLES_MAX 65536
#define Q_COLS_MAX   4096
#define Q_ROW_SLACK  256 /* a row's bytes besides its strings */
#define Q_DIST_STATS 32  /* quantiles, and thresholds of each side, a dist may ask */

enum qkind {
	Q_NONE = 0,
	Q_TABLES,
	Q_FIELDS,
	Q_KEYS,
	Q_SERIES,
	Q_AGG,
	Q_AGGS,
	Q_SCAN,
	Q_CAMERA,
	Q_DIST
};
enum qsort { SORT_KEY = 0, SORT_MEAN, SORT_COUNT };

/* What a dist asks of each window's distribution, and where it is. */
typedef struct qdist {
	double qs[Q_DIST_STATS], above[Q_DIST_STATS], below[Q_DIST_STATS];
	double edges[CMD_DIST_EDGES_MAX];
	uint64_t counts[CMD_DIST_EDGES_MAX];
	int n_qs, n_above, n_below, n_edges;
	int64_t ws;   /* the next window's start; >= to: done */
	double error; /* the largest relative error of a row (0: all exact) */
} qdist;

typedef struct krow {
	char *key; /* a copy: the iterator's lives until its next call */
	tally_agg a;
} krow;

struct httpq {
	/* The request: path '\0' query '\0', copied by httpq_begin. */
	char *tgt;
	size_t tgt_cap;
	http_str path, query;
	unsigned minor;
	unsigned accept_csv : 1;

	/* The answer. */
	enum qkind kind;
	unsigned csv : 1, chunked : 1, first : 1, oom : 1, truncated : 1, keys_end : 1;
	int64_t epoch; /* 0: RFC 3339 times; else ns per unit of integer times */
	char *buf;     /* body bytes of this turn */
	size_t n, cap;
	char err[600];
	const char *err_param;

	/* Parameters. */
	char table[Q_NAME_MAX], field[Q_NAME_MAX], key[Q_NAME_MAX], prefix[Q_NAME_MAX];
	char by[Q_NAME_MAX]; /* aggs: the tags to group by */
	int64_t from, to, step;
	uint64_t limit, rows;

	/* Producers' state. */
	wseries *ser;
	tally_keys_iter *it;
	tally_scan *scan;
	const char **page; /* keys: a page from the catalog */
	size_t page_n, page_i;
	const char *after;
	enum qsort sort;
	int desc;
	krow *top; /* sorted aggs: a heap of the best limit rows */
	size_t top_n, top_i;
	int64_t last_ts;  /* scan: the last row's time, */
	uint64_t same_ts; /* and how many rows given so far had it */
	uint64_t skip;    /* rows at from still to skip (a cursor's) */
	size_t n_cols;

	/* Across nodes: the request fans out (fan), waits for the nodes
	 * (fan_wait, its job is c->prod_state), then reads their merged
	 * answer (rd over fan_text) where it would read the engine. */
	unsigned fan : 1, fan_wait : 1, fan_mark : 1, ranked : 1;
	int keep_alive, head_only, status;
	cmd_req ask; /* what every node is asked */
	char *fan_text;
	size_t fan_len;
	fan_reader rd;
	tally_bucket fan_b; /* the row read, as the engine gives one */
	char *fan_str;      /* a key or a row's strings, unescaped */
	size_t fan_str_cap;
	tally_value *fan_vals; /* a scan row's values */
	enum tally_type *fan_types;
	qdist *dist;
};

int httpq_new(httpq **out)
{
	*out = calloc(1, sizeof **out);
	return *out ? 0 : -ENOMEM;
}

static void q_end(httpq *q)
{
	free(q->ser);
	q->ser = NULL;
	tally_keys_close(q->it);
	q->it = NULL;
	tally_scan_close(q->scan);
	q->scan = NULL;
	free(q->page);
	q->page = NULL;
	free(q->dist);
	q->dist = NULL;
	for (size_t i = 0; q->top && i < q->top_n; i++)
		free(q->top[i].key);
	free(q->top);
	q->top = NULL;
	q->top_n = q->top_i = 0;
	q->kind = Q_NONE;
	free(q->fan_text);
	free(q->fan_vals);
	free(q->fan_types);
	q->fan_text = NULL;
	q->fan_vals = NULL;
	q->fan_types = NULL;
	q->fan = q->fan_wait = 0;
	/* a big answer's buffer goes back between requests */
	if (q->cap > (256u << 10)) {
		free(q->buf);
		q->buf = NULL;
		q->cap = 0;
	}
}

void httpq_free(httpq *q)
{
	if (!q)
		return;
	q_end(q);
	free(q->buf);
	free(q->tgt);
	free(q->fan_str);
	free(q);
}

/* ---------------------------------------------------------------- routing */

static int has_prefix(http_str s, const char *p, size_t n)
{
	return s.n >= n && !memcmp(s.p, p, n);
}

static const char *camera_route(const srv_conf *cf)
{
	return cf->camera_route ? cf->camera_route : HTTPQ_CAMERA_ROUTE;
}

/* The {id} of path when it matches the route: [*at, *at + *n). */
static int camera_match(const srv_conf *cf, http_str path, size_t *at, size_t *n)
{
	const char *route = camera_route(cf);
	if (!strcmp(route, "off"))
		return 0;
	const char *hole = strstr(route, "{id}");
	size_t pre = (size_t)(hole - route), post = strlen(hole + 4);
	if (path.n <= pre + post || memcmp(path.p, route, pre) ||
	    memcmp(path.p + path.n - post, hole + 4, post))
		return 0;
	if (memchr(path.p + pre, '/', path.n - pre - post))
		return 0;
	*at = pre;
	*n = path.n - pre - post;
	return 1;
}

int httpq_route(const srv_conf *cf, http_str path)
{
	size_t at, n;
	if (has_prefix(path, "/api/v1/", 8))
		return !(path.n == 14 && !memcmp(path.p, "/api/v1/events", 14));
	return camera_match(cf, path, &at, &n);
}

int httpq_begin(httpq *q, const http_req *r)
{
	size_t need = r->path.n + r->query.n + 2;
	if (need > q->tgt_cap) {
		char *p = realloc(q->tgt, need);
		if (!p)
			return -ENOMEM;
		q->tgt = p;
		q->tgt_cap = need;
	}
	memcpy(q->tgt, r->path.p, r->path.n);
	q->tgt[r->path.n] = 0;
	if (r->query.n)
		memcpy(q->tgt + r->path.n + 1, r->query.p, r->query.n);
	q->tgt[r->path.n + 1 + r->query.n] = 0;
	q->path = (http_str){q->tgt, r->path.n};
	q->query = (http_str){q->tgt + r->path.n + 1, r->query.n};
	q->minor = r->minor;
	http_str acc = http_header(r, "accept");
	q->accept_csv = 0;
	for (size_t i = 0; i + 8 <= acc.n; i++)
		if (!strncasecmp(acc.p + i, "text/csv", 8))
			q->accept_csv = 1;
	return 0;
}

/* ---------------------------------------------------------------- the body */

/* Room for k more bytes in buf; sets oom when there is none. */
static char *q_room(httpq *q, size_t k)
{
	if (q->n + k > q->cap) {
		size_t cap = q->cap ? q->cap : 16384;
		while (cap < q->n + k)
			cap *= 2;
		char *p = realloc(q->buf, cap);
		if (!p) {
			q->oom = 1;
			return NULL;
		}
		q->buf = p;
		q->cap = cap;
	}
	return q->buf + q->n;
}

static void q_raw(httpq *q, const char *s, size_t k)
{
	char *p = q_room(q, k);
	if (p) {
		memcpy(p, s, k);
		q->n += k;
	}
}

static void q_lit(httpq *q, const char *s)
{
	q_raw(q, s, strlen(s));
}

__attribute__((format(printf, 2, 3))) static void q_fmt(httpq *q, const char *fmt, ...)
{
	char b[512];
	va_list ap;
	va_start(ap, fmt);
	int k = vsnprintf(b, sizeof b, fmt, ap);
	va_end(ap);
	if (k > 0)
		q_raw(q, b, (size_t)k < sizeof b ? (size_t)k : sizeof b - 1);
}

/* A string cell: JSON, quoted and escaped; CSV, quoted when it must be. */
static void q_str(httpq *q, const char *s, size_t k)
{
	char *p = q_room(q, 6 * k + 2), *o = p;
	if (!p)
		return;
	if (q->csv) {
		int quote = 0;
		for (size_t i = 0; i < k && !quote; i++)
			quote = s[i] == ',' || s[i] == '"' || s[i] == '\n' || s[i] == '\r';
		if (quote)
			*o++ = '"';
		for (size_t i = 0; i < k; i++) {
			if (s[i] == '"')
				*o++ = '"';
			*o++ = s[i];
		}
		if (quote)
			*o++ = '"';
		q->n += (size_t)(o - p);
		return;
	}
	static const char hex[] = "0123456789abcdef";
	*o++ = '"';
	for (size_t i = 0; i < k; i++) {
		unsigned char ch = (unsigned char)s[i];
		if (ch == '"' || ch == '\\') {
			*o++ = '\\';
			*o++ = (char)ch;
		} else if (ch < 0x20 || ch == 0x7f) {
			memcpy(o, "\\u00", 4);
			o[4] = hex[ch >> 4];
			o[5] = hex[ch & 15];
			o += 6;
		} else {
			*o++ = (char)ch;
		}
	}
	*o++ = '"';
	q->n += (size_t)(o - p);
}

static void q_cstr(httpq *q, const char *s)
{
	q_str(q, s, strlen(s));
}

/* A time cell: RFC 3339 (quoted in JSON) or an integer per epoch=. */
static void q_time(httpq *q, int64_t ns)
{
	char b[48];
	if (q->epoch) {
		int64_t v = ns / q->epoch;
		if (ns % q->epoch < 0)
			v--; /* floor, so that a time before 1970 stays in its unit */
		q_fmt(q, "%" PRId64, v);
		return;
	}
	size_t k = cmd_format_time(ns, b);
	if (q->csv)
		q_raw(q, b, k);
	else
		q_str(q, b, k);
}

/* A number cell; NaN and infinities (an empty aggregate's mean, min and
 * max) are null in JSON, empty in CSV. */
static void q_f64(httpq *q, double v)
{
	char b[40];
	if (!isfinite(v)) {
		if (!q->csv)
			q_lit(q, "null");
		return;
	}
	q_raw(q, b, cmd_format_double(v, b));
}

static void q_u64(httpq *q, uint64_t v)
{
	char b[24];
	q_raw(q, b, cmd_format_u64(v, b));
}

static void q_sep(httpq *q)
{
	q_lit(q, ",");
}

/* A row's start: JSON "[" after a "," between rows; CSV nothing. */
static void q_row_open(httpq *q)
{
	if (!q->csv)
		q_lit(q, q->first ? "[" : ",[");
	q->first = 0;
}

static void q_row_close(httpq *q)
{
	q_lit(q, q->csv ? "\n" : "]");
	q->rows++;
}

/* count, mean, min, max, sum of an aggregate, as cells after a first. */
static void q_agg_cells(httpq *q, const tally_agg *a)
{
	q_sep(q);
	q_u64(q, a->count);
	q_sep(q);
	q_f64(q, a->count ? a->avg : NAN);
	q_sep(q);
	q_f64(q, a->count ? a->min : NAN);
	q_sep(q);
	q_f64(q, a->count ? a->max : NAN);
	q_sep(q);
	q_f64(q, a->sum);
}

/* The start of a table of rows: JSON "columns":[..],"values":[ ; CSV the
 * header line. */
static void q_columns(httpq *q, const char *const *cols, size_t n)
{
	if (q->csv) {
		for (size_t i = 0; i < n; i++) {
			if (i)
				q_lit(q, ",");
			q_cstr(q, cols[i]);
		}
		q_lit(q, "\n");
		return;
	}
	q_lit(q, "\"columns\":[");
	for (size_t i = 0; i < n; i++) {
		if (i)
			q_lit(q, ",");
		q_cstr(q, cols[i]);
	}
	q_lit(q, "],\"values\":[");
}

/* "name":"value", in JSON only. */
static void q_member(httpq *q, const char *name, const char *value)
{
	q_fmt(q, "\"%s\":", name);
	if (value)
		q_cstr(q, value);
	else
		q_lit(q, "null");
	q_lit(q, ",");
}

/* "from":..,"to":.. of the answer's range, in JSON only. */
static void q_span(httpq *q)
{
	q_lit(q, "\"from\":");
	q_time(q, q->from);
	q_lit(q, ",\"to\":");
	q_time(q, q->to);
}

/* ---------------------------------------------------------------- errors */

__attribute__((format(printf, 3, 4))) static int q_fail(httpq *q, const char *param,
							const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(q->err, sizeof q->err, fmt, ap);
	va_end(ap);
	q->err_param = param;
	return 400;
}

/* An engine error: 404 for what does not exist, 400 for what the request
 * got wrong (param names the likely parameter), 500 for the rest. */
static int q_engine(httpq *q, int rc, const char *param)
{
	const char *m = tally_errmsg();
	snprintf(q->err, sizeof q->err, "%s", m && *m ? m : tally_strerror(rc));
	if (rc == TALLY_ENOTFOUND) {
		q->err_param = strstr(q->err, "no table") ? "table" : "field";
		return 404;
	}
	if (rc == TALLY_EINVAL) {
		q->err_param = strstr(q->err, "field '") ? "field" : param;
		return 400;
	}
	q->err_param = NULL;
	return rc == TALLY_EFULL ? 503 : 500;
}

/* ---------------------------------------------------------------- parameters */

/* A parameter into out[0, cap): its length, -1 when absent, or -2 after
 * q_fail (malformed, too long or holding a NUL). */
static long q_param(httpq *q, const char *name, char *out, size_t cap)
{
	long k = http_query_get(q->query, name, out, cap);
	if (k == -2 || (k >= 0 && strlen(out) != (size_t)k)) {
		q_fail(q, name, "%s: malformed %%-encoding, a NUL byte, or longer than %zu bytes",
		       name, cap - 1);
		return -2;
	}
	return k;
}

/* A required name parameter (table=, field=, key=). */
static int q_name(httpq *q, const char *name, char *out)
{
	long k = q_param(q, name, out, Q_NAME_MAX);
	if (k == -2)
		return 400;
	if (k < 0)
		return q_fail(q, name, "%s= is required", name);
	return 0;
}

static int q_time_param(httpq *q, const char *name, int64_t now, int64_t dflt, int have_dflt,
			int64_t *out)
{
	char v[128];
	long k = q_param(q, name, v, sizeof v);
	if (k == -2)
		return 400;
	if (k < 0) {
		if (!have_dflt)
			return q_fail(q, name, "%s= is required", name);
		*out = dflt;
		return 0;
	}
	if (cmd_parse_time(v, now, out))
		return q_fail(q, name,
			      "%s: invalid time '%.60s' (RFC 3339 like 2025-06-02T00:00:00Z, "
			      "integer ns, 1748822400s, now or now-1h)",
			      name, v);
	return 0;
}

/* from= (required) and to= (default now); from < to. */
static int q_range(httpq *q, int64_t now)
{
	int st = q_time_param(q, "from", now, 0, 0, &q->from);
	if (!st)
		st = q_time_param(q, "to", now, now, 1, &q->to);
	if (!st && q->to <= q->from)
		st = q_fail(q, "to", "to must be after from");
	return st;
}

static int q_duration_param(httpq *q, const char *name, const char *dflt, int64_t *out)
{
	char v[64];
	long k = q_param(q, name, v, sizeof v);
	if (k == -2)
		return 400;
	if (cmd_parse_duration(k < 0 ? dflt : v, out))
		return q_fail(q, name, "%s: invalid duration '%.40s' (like 5m, 1h, 24h)", name, v);
	return 0;
}

/* limit=: 1..max, dflt when absent (0: no limit). */
static int q_limit(httpq *q, uint64_t dflt, uint64_t max)
{
	char v[32];
	long k = q_param(q, "limit", v, sizeof v);
	q->limit = dflt;
	if (k == -2)
		return 400;
	if (k < 0)
		return 0;
	char *end;
	errno = 0;
	unsigned long long n = strtoull(v, &end, 10);
	if (!k || *end || errno || v[0] == '-' || n == 0 || n > max)
		return q_fail(q, "limit", "limit: '%.30s' is not an integer from 1 to %" PRIu64, v,
			      max);
	q->limit = n;
	return 0;
}

/* format=, epoch= and Accept. */
static int q_format(httpq *q)
{
	char v[16];
	long k = q_param(q, "format", v, sizeof v);
	if (k == -2)
		return 400;
	q->csv = q->accept_csv;
	if (k >= 0) {
		if (!strcmp(v, "csv"))
			q->csv = 1;
		else if (!strcmp(v, "json"))
			q->csv = 0;
		else
			return q_fail(q, "format", "format must be json or csv");
	}
	k = q_param(q, "epoch", v, sizeof v);
	if (k == -2)
		return 400;
	q->epoch = 0;
	if (k >= 0) {
		static const struct {
			const char *n;
			int64_t ns;
		} units[] = {{"ns", 1}, {"us", 1000}, {"ms", 1000000}, {"s", 1000000000}};
		for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
			if (!strcmp(v, units[i].n))
				q->epoch = units[i].ns;
		if (!q->epoch)
			return q_fail(q, "epoch", "epoch must be ns, us, ms or s");
	}
	return 0;
}

/* The table must exist: 404 naming it. */
static int q_table(httpq *q, tally_db *db, const char **key_tag)
{
	int rc = tally_catalog_key_tag(db, q->table, key_tag);
	if (rc == TALLY_ENOTFOUND && q->fan) {
		*key_tag = NULL; /* the other nodes may hold it: they will say */
		return 0;
	}
	return rc ? q_engine(q, rc, "table") : 0;
}

/* partial=fail|mark: whether a node that does not answer fails the
 * answer (503) or is named in it. */
static int q_partial(httpq *q)
{
	char v[8];
	long k = q_param(q, "partial", v, sizeof v);
	if (k == -2)
		return 400;
	q->fan_mark = k >= 0 && !strcmp(v, "mark");
	if (k >= 0 && !q->fan_mark && strcmp(v, "fail"))
		return q_fail(q, "partial", "partial must be fail or mark");
	return 0;
}

/* The query every node is asked; its strings are q's. */
static void q_fan_req(httpq *q, enum cmd_kind kind, const char *name)
{
	q->ask = fan_req(kind, name, q->table, q->field, q->key, q->step, q->from, q->to);
}

/* Room for n bytes of unescaped strings. */
static char *q_fan_str(httpq *q, size_t n)
{
	if (n + 1 > q->fan_str_cap) {
		size_t cap = q->fan_str_cap ? q->fan_str_cap : 256;
		while (cap < n + 1)
			cap *= 2;
		char *p = realloc(q->fan_str, cap);
		if (!p) {
			q->oom = 1;
			return NULL;
		}
		q->fan_str = p;
		q->fan_str_cap = cap;
	}
	return q->fan_str;
}

/* The next series window: the engine's, or the merged answer's. */
static int q_next_bucket(httpq *q, tally_db *db, const tally_bucket **b)
{
	const char *r;
	size_t n;
	if (!q->fan)
		return series_next(db, q->ser, b);
	if (!fan_reader_next(&q->rd, &r, &n))
		return 0;
	q->fan_b.start = fan_cell_time(r, n, 0);
	q->fan_b.agg = fan_cell_agg(r, n, 1);
	*b = &q->fan_b;
	return 1;
}

/* The next key's aggregate, likewise. */
static int q_next_key(httpq *q, const char **key, tally_agg *a)
{
	const char *r, *k;
	size_t n, kn;
	if (!q->fan)
		return tally_keys_next(q->it, key, a);
	if (!fan_reader_next(&q->rd, &r, &n))
		return 0;
	k = fan_cell(r, n, 0, &kn);
	char *p = q_fan_str(q, kn);
	if (!p)
		return -ENOMEM;
	p[fan_unescape(k, kn, p)] = 0;
	*key = p;
	*a = fan_cell_agg(r, n, 1);
	return 1;
}

/* A scan cell of the merged answer as a value of the column's type (the
 * local catalog's; TALLY_T_NONE: unknown here, told by its look). */
static tally_value q_cell_value(httpq *q, enum tally_type t, const char *c, size_t cn, size_t *o)
{
	tally_value v = {.type = TALLY_T_NONE};
	char b[64], *end;
	if (!c || !cn)
		return v;
	int num = cn < sizeof b;
	if (num) {
		memcpy(b, c, cn);
		b[cn] = 0;
	}
	errno = 0;
	if ((t == TALLY_T_BOOL || t == TALLY_T_NONE) && num &&
	    (!strcmp(b, "true") || !strcmp(b, "false"))) {
		v.type = TALLY_T_BOOL;
		v.v.b = b[0] == 't';
		return v;
	}
	if ((t == TALLY_T_I64 || t == TALLY_T_NONE) && num) {
		v.v.i64 = strtoll(b, &end, 10);
		if (!*end && !errno && end != b) {
			v.type = TALLY_T_I64;
			return v;
		}
	}
	if (t == TALLY_T_U64 && num) {
		v.v.u64 = strtoull(b, &end, 10);
		if (!*end && !errno && end != b && b[0] != '-') {
			v.type = TALLY_T_U64;
			return v;
		}
	}
	if ((t == TALLY_T_F64 || t == TALLY_T_NONE) && num) {
		v.v.f64 = strtod(b, &end);
		if (!*end && end != b) {
			v.type = TALLY_T_F64;
			return v;
		}
	}
	/* a string, or what does not read as its column's type */
	v.type = TALLY_T_STR;
	v.v.str.ptr = q->fan_str + *o;
	v.v.str.len = fan_unescape(c, cn, q->fan_str + *o);
	*o += v.v.str.len;
	return v;
}

/* The next scan row, likewise. */
static int q_scan_next(httpq *q, tally_row *row)
{
	const char *r;
	size_t n;
	if (!q->fan)
		return tally_scan_next(q->scan, row);
	if (!fan_reader_next(&q->rd, &r, &n))
		return 0;
	if (!q_fan_str(q, n))
		return -ENOMEM;
	size_t o = 0;
	row->ts = fan_cell_time(r, n, 0);
	for (size_t i = 0; i < q->n_cols; i++) {
		size_t cn = 0;
		const char *c = fan_cell(r, n, (unsigned)i + 1, &cn);
		q->fan_vals[i] = q_cell_value(q, q->fan_types[i], c, cn, &o);
	}
	row->n_values = q->n_cols;
	row->values = q->fan_vals;
	return 1;
}

/* ---------------------------------------------------------------- catalog */

/* The fields of a table as "fields":[{name,type}], "tags":[..]. */
static int q_fields_json(httpq *q, tally_db *db, const char *table)
{
	size_t n = 0;
	const char **nm = malloc(Q_COLS_MAX * sizeof *nm);
	enum tally_type *ty = malloc(Q_COLS_MAX * sizeof *ty);
	int rc = nm && ty ? tally_catalog_fields(db, table, nm, ty, Q_COLS_MAX, &n) : -ENOMEM;
	if (rc && rc != TALLY_ETRUNC) {
		free(nm);
		free(ty);
		return q_engine(q, rc, "table");
	}
	if (n > Q_COLS_MAX)
		n = Q_COLS_MAX;
	if (q->csv) { /* every column, tags typed "tag" */
		for (size_t i = 0; i < n; i++) {
			q_cstr(q, nm[i]);
			q_lit(q, ",");
			q_lit(q, tally_type_name(ty[i]));
			q_lit(q, "\n");
		}
		free(nm);
		free(ty);
		return 0;
	}
	q_lit(q, "\"fields\":[");
	int first = 1;
	for (size_t i = 0; i < n; i++) {
		if (ty[i] == TALLY_T_TAG)
			continue;
		q_lit(q, first ? "{\"name\":" : ",{\"name\":");
		first = 0;
		q_cstr(q, nm[i]);
		q_lit(q, ",\"type\":");
		q_cstr(q, tally_type_name(ty[i]));
		q_lit(q, "}");
	}
	q_lit(q, "],\"tags\":[");
	first = 1;
	for (size_t i = 0; i < n; i++) {
		if (ty[i] != TALLY_T_TAG)
			continue;
		if (!first)
			q_lit(q, ",");
		first = 0;
		q_cstr(q, nm[i]);
	}
	q_lit(q, "]");
	free(nm);
	free(ty);
	return 0;
}

/* GET /api/v1/tables: every table with its key tag and fields. */
static int q_tables(httpq *q, tally_db *db)
{
	size_t n;
	const char **names = malloc(Q_TABLES_MAX * sizeof *names);
	const char **keys = malloc(Q_TABLES_MAX * sizeof *keys);
	int rc = names && keys ? tally_catalog_tables(db, names, keys, Q_TABLES_MAX, &n) : -ENOMEM;
	if (rc && rc != TALLY_ETRUNC) {
		free(names);
		free(keys);
		return q_engine(q, rc, NULL);
	}
	if (n > Q_TABLES_MAX)
		n = Q_TABLES_MAX;
	q_lit(q, q->csv ? "name,key\n" : "{\"tables\":[");
	for (size_t i = 0; i < n; i++) {
		if (q->csv) {
			q_cstr(q, names[i]);
			q_lit(q, ",");
			if (keys[i])
				q_cstr(q, keys[i]);
			q_lit(q, "\n");
			continue;
		}
		q_lit(q, i ? ",{" : "{");
		q_member(q, "name", names[i]);
		q_member(q, "key", keys[i]);
		q_fields_json(q, db, names[i]);
		q_lit(q, "}");
	}
	if (!q->csv)
		q_lit(q, "]}\n");
	free(names);
	free(keys);
	return 0;
}

/* GET /api/v1/fields?table=T */
static int q_fields(httpq *q, tally_db *db)
{
	const char *key_tag;
	int st = q_name(q, "table", q->table);
	if (!st)
		st = q_table(q, db, &key_tag);
	if (st)
		return st;
	if (q->csv) {
		q_lit(q, "name,type\n");
		return q_fields_json(q, db, q->table);
	}
	q_lit(q, "{");
	q_member(q, "table", q->table);
	q_member(q, "key", key_tag);
	st = q_fields_json(q, db, q->table);
	q_lit(q, "}\n");
	return st;
}

/* The catalog across nodes: the union of every node's #!tables rows
 * (table, key tag, column, type: wire/fancat.c), sorted, as one node's
 * /api/v1/tables (q->table empty) or /api/v1/fields answers. 1 when
 * answered, 404 when no node holds the table asked. */
typedef struct catrow {
	const char *c[4]; /* table, key tag, column, type */
} catrow;

/* One table's "fields":[..],"tags":[..] from its rows r[0, n). */
static void cat_fields_json(httpq *q, const catrow *r, size_t n)
{
	for (int tags = 0; tags < 2; tags++) {
		q_lit(q, tags ? "],\"tags\":[" : "\"fields\":[");
		int first = 1;
		for (size_t i = 0; i < n; i++) {
			if ((strcmp(r[i].c[3], "tag") == 0) != tags)
				continue;
			q_lit(q, first ? "" : ",");
			first = 0;
			if (tags) {
				q_cstr(q, r[i].c[2]);
				continue;
			}
			q_lit(q, "{\"name\":");
			q_cstr(q, r[i].c[2]);
			q_lit(q, ",\"type\":");
			q_cstr(q, r[i].c[3]);
			q_lit(q, "}");
		}
	}
	q_lit(q, "]");
}

static int p_cat_fan(httpq *q)
{
	const char *r;
	size_t n, nr = 0, bytes = 0;
	fan_reader rd = q->rd;
	while (fan_reader_next(&rd, &r, &n))
		nr++, bytes += n + 4;
	catrow *rows = malloc((nr ? nr : 1) * sizeof *rows);
	char *buf = q_fan_str(q, bytes);
	if (!rows || !buf) {
		free(rows);
		q->oom = 1;
		return 1;
	}
	size_t o = 0, k = 0;
	while (fan_reader_next(&q->rd, &r, &n)) {
		for (unsigned j = 0; j < 4; j++) {
			size_t cn = 0;
			const char *c = fan_cell(r, n, j, &cn);
			rows[k].c[j] = buf + o;
			o += fan_unescape(c ? c : "", c ? cn : 0, buf + o);
			buf[o++] = 0;
		}
		if (!q->table[0] || !strcmp(rows[k].c[0], q->table))
			k++;
	}
	if (q->table[0] && !k) {
		free(rows);
		snprintf(q->err, sizeof q->err, "no table '%.200s' on any node", q->table);
		q->err_param = "table";
		return 404;
	}
	if (q->table[0]) { /* fields */
		if (q->csv) {
			q_lit(q, "name,type\n");
			for (size_t i = 0; i < k; i++) {
				q_cstr(q, rows[i].c[2]);
				q_lit(q, ",");
				q_cstr(q, rows[i].c[3]);
				q_lit(q, "\n");
			}
		} else {
			q_lit(q, "{");
			q_member(q, "table", q->table);
			q_member(q, "key", *rows[0].c[1] ? rows[0].c[1] : NULL);
			cat_fields_json(q, rows, k);
			q_lit(q, "}\n");
		}
		free(rows);
		return 1;
	}
	q_lit(q, q->csv ? "name,key\n" : "{\"tables\":[");
	for (size_t i = 0, t = 0; i < k; t++) {
		size_t e = i;
		while (e < k && !strcmp(rows[e].c[0], rows[i].c[0]))
			e++;
		const char *key = *rows[i].c[1] ? rows[i].c[1] : NULL;
		if (q->csv) {
			q_cstr(q, rows[i].c[0]);
			q_lit(q, ",");
			if (key)
				q_cstr(q, key);
			q_lit(q, "\n");
		} else {
			q_lit(q, t ? ",{" : "{");
			q_member(q, "name", rows[i].c[0]);
			q_member(q, "key", key);
			cat_fields_json(q, rows + i, e - i);
			q_lit(q, "}");
		}
		i = e;
	}
	if (!q->csv)
		q_lit(q, "]}\n");
	free(rows);
	return 1;
}

/* ---------------------------------------------------------------- producers */

/* Each returns 1 when the answer is complete, 0 when q->buf holds a
 * turn's worth, or an HTTP status >= 400 with q->err (the answer is then
 * cut short). budget: the turn's bytes. */

static int p_keys(httpq *q, tally_db *db, size_t budget)
{
	while (q->n < budget && !q->oom) {
		if (q->fan && q->page_i == q->page_n) {
			/* across nodes: the merged answer's next key */
			const char *r, *c;
			size_t n, cn;
			if (!fan_reader_next(&q->rd, &r, &n))
				goto done;
			c = fan_cell(r, n, 1, &cn);
			char *p = c ? q_fan_str(q, cn) : NULL;
			if (!c)
				goto done;
			if (!p)
				return 0; /* q->oom: a 500 */
			p[fan_unescape(c, cn, p)] = 0;
			q->page[0] = p;
			q->page_n = 1;
			q->page_i = 0;
		}
		if (q->page_i == q->page_n) {
			if (q->keys_end)
				goto done;
			size_t total;
			int rc = tally_catalog_keys(db, q->table, q->prefix, q->after, q->page,
						    Q_KEYS_PAGE, &total);
			if (rc && rc != TALLY_ETRUNC)
				return q_engine(q, rc, "table");
			q->keys_end = rc == 0; /* this page holds the last of them */
			q->page_n = total < Q_KEYS_PAGE ? total : Q_KEYS_PAGE;
			q->page_i = 0;
			continue;
		}
		if (q->limit && q->rows >= q->limit) {
			q->truncated = 1;
			goto done;
		}
		const char *k = q->page[q->page_i++];
		q->after = k; /* borrowed until the database closes */
		if (q->fan)
			q->page_n = q->page_i = 0; /* q_fan_str's: the next row's */
		if (q->csv) {
			q_cstr(q, k);
			q_lit(q, "\n");
		} else {
			if (!q->first)
				q_lit(q, ",");
			q->first = 0;
			q_cstr(q, k);
		}
		q->rows++;
	}
	return 0;
done:
	if (!q->csv)
		q_fmt(q, "],\"truncated\":%s}\n", q->truncated ? "true" : "false");
	return 1;
}

static int p_series(httpq *q, tally_db *db, size_t budget)
{
	while (q->n < budget && !q->oom) {
		const tally_bucket *b;
		int rc = q_next_bucket(q, db, &b);
		if (rc < 0)
			return q_engine(q, rc, "step");
		if (rc == 0) {
			if (!q->csv)
				q_lit(q, "]}\n");
			return 1;
		}
		if (q->kind == Q_CAMERA) {
			/* start, avg, count, min, max */
			if (!q->csv) {
				q->rows++;
				q_lit(q, q->first ? "{\"start\":" : ",{\"start\":");
				q->first = 0;
				q_time(q, b->start);
				q_lit(q, ",\"avg\":");
				q_f64(q, b->agg.avg);
				q_lit(q, ",\"count\":");
				q_u64(q, b->agg.count);
				q_lit(q, ",\"min\":");
				q_f64(q, b->agg.min);
				q_lit(q, ",\"max\":");
				q_f64(q, b->agg.max);
				q_lit(q, "}");
				continue;
			}
			q_time(q, b->start);
			q_sep(q);
			q_f64(q, b->agg.avg);
			q_sep(q);
			q_u64(q, b->agg.count);
			q_sep(q);
			q_f64(q, b->agg.min);
			q_sep(q);
			q_f64(q, b->agg.max);
			q_row_close(q);
			continue;
		}
		q_row_open(q);
		q_time(q, b->start);
		q_agg_cells(q, &b->agg);
		q_row_close(q);
	}
	return 0;
}

/* The order of a sorted aggs: <0 when a goes before b. */
static int krow_cmp(const httpq *q, const krow *a, const krow *b)
{
	int c = 0;
	if (q->sort == SORT_MEAN)
		c = a->a.avg < b->a.avg ? -1 : a->a.avg > b->a.avg;
	else if (q->sort == SORT_COUNT)
		c = a->a.count < b->a.count ? -1 : a->a.count > b->a.count;
	if (q->desc)
		c = -c;
	return c ? c : strcmp(a->key, b->key); /* ties by key, always ascending */
}

/* top[0, n) as a heap whose root is the row that goes last. */
static void krow_down(const httpq *q, krow *h, size_t n, size_t i)
{
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, m = i;
		if (l < n && krow_cmp(q, &h[l], &h[m]) > 0)
			m = l;
		if (r < n && krow_cmp(q, &h[r], &h[m]) > 0)
			m = r;
		if (m == i)
			return;
		krow x = h[i];
		h[i] = h[m];
		h[m] = x;
		i = m;
	}
}

static void krow_up(const httpq *q, krow *h, size_t i)
{
	while (i > 0) {
		size_t p = (i - 1) / 2;
		if (krow_cmp(q, &h[p], &h[i]) >= 0)
			return;
		krow x = h[i];
		h[i] = h[p];
		h[p] = x;
		i = p;
	}
}

static void q_krow(httpq *q, const char *key, const tally_agg *a)
{
	q_row_open(q);
	q_cstr(q, key);
	q_agg_cells(q, a);
	q_row_close(q);
}

static int p_aggs_done(httpq *q)
{
	if (!q->csv)
		q_fmt(q, "],\"truncated\":%s}\n", q->truncated ? "true" : "false");
	return 1;
}

static int p_aggs(httpq *q, size_t budget)
{
	const char *key;
	tally_agg a;
	if (q->top) {
		/* sorted: the kept rows, emptied heap-wise into order first */
		while (q->top_i < q->top_n && q->n < budget && !q->oom) {
			const krow *r = &q->top[q->top_i++];
			q_krow(q, r->key, &r->a);
		}
		return q->top_i == q->top_n ? p_aggs_done(q) : 0;
	}
	while (q->n < budget && !q->oom) {
		int r = q_next_key(q, &key, &a);
		if (r < 0)
			return q_engine(q, r, "field");
		if (r == 0)
			return p_aggs_done(q);
		if (q->limit && q->rows >= q->limit) {
			q->truncated = 1;
			return p_aggs_done(q);
		}
		q_krow(q, key, &a);
	}
	return 0;
}

static int krow_sort_q_cmp(const void *a, const void *b, void *q)
{
	return krow_cmp(q, a, b);
}

/* A sorted aggs keeps the best limit rows of every key's, in one pass. */
static int aggs_select(httpq *q)
{
	const char *key;
	tally_agg a;
	q->top = malloc(q->limit * sizeof *q->top);
	if (!q->top) {
		snprintf(q->err, sizeof q->err, "out of memory keeping %" PRIu64 " rows", q->limit);
		return 500;
	}
	int r;
	while ((r = q_next_key(q, &key, &a)) == 1) {
		krow row = {(char *)key, a};
		if (q->top_n == q->limit && krow_cmp(q, &row, &q->top[0]) >= 0) {
			q->truncated = 1;
			continue;
		}
		if (!(row.key = strdup(key))) {
			snprintf(q->err, sizeof q->err, "out of memory keeping %" PRIu64 " rows",
				 q->limit);
			return 500;
		}
		if (q->top_n < q->limit) {
			q->top[q->top_n] = row;
			krow_up(q, q->top, q->top_n++);
		} else {
			free(q->top[0].key);
			q->top[0] = row;
			krow_down(q, q->top, q->top_n, 0);
			q->truncated = 1;
		}
	}
	if (r < 0)
		return q_engine(q, r, "field");
	qsort_r(q->top, q->top_n, sizeof *q->top, krow_sort_q_cmp, q);
	return 0;
}

/* A scan cursor: "<time ns>.<rows at that time already given>". */
static int cursor_parse(const char *s, int64_t *ts, uint64_t *skip)
{
	char *end;
	errno = 0;
	long long t = strtoll(s, &end, 10);
	if (errno || end == s || *end != '.')
		return -1;
	const char *k = end + 1;
	unsigned long long n = strtoull(k, &end, 10);
	if (errno || end == k || *end || *k == '-')
		return -1;
	*ts = t;
	*skip = n;
	return 0;
}

static void q_value(httpq *q, const tally_value *v)
{
	switch (v->type) {
	case TALLY_T_F64: q_f64(q, v->v.f64); break;
	case TALLY_T_I64: q_fmt(q, "%" PRId64, v->v.i64); break;
	case TALLY_T_U64: q_u64(q, v->v.u64); break;
	case TALLY_T_BOOL: q_lit(q, v->v.b ? "true" : "false"); break;
	case TALLY_T_STR:
	case TALLY_T_TAG: q_str(q, v->v.str.ptr, v->v.str.len); break;
	case TALLY_T_NONE:
		if (!q->csv)
			q_lit(q, "null");
		break;
	}
}

static int p_scan(httpq *q, size_t budget)
{
	tally_row row;
	while (q->n < budget && !q->oom) {
		int r = q_scan_next(q, &row);
		if (r < 0)
			return q_engine(q, r, "key");
		if (r == 1 && q->skip && row.ts == q->from) {
			q->skip--; /* given by an earlier page */
			continue;
		}
		q->skip = 0;
		if (r == 0 || q->rows >= q->limit) {
			/* a row past the limit: the next page starts at it */
			if (q->csv)
				return 1;
			if (r == 0)
				q_lit(q, "],\"cursor\":null}\n");
			else
				q_fmt(q, "],\"cursor\":\"%" PRId64 ".%" PRIu64 "\"}\n", q->last_ts,
				      q->same_ts);
			return 1;
		}
		if (row.ts == q->last_ts) {
			q->same_ts++;
		} else {
			q->last_ts = row.ts;
			q->same_ts = 1;
		}
		q_row_open(q);
		q_time(q, row.ts);
		for (size_t i = 0; i < row.n_values; i++) {
			q_sep(q);
			q_value(q, &row.values[i]);
		}
		q_row_close(q);
	}
	return 0;
}

/* An aggregate over [from, to): the whole answer. */
static void q_agg_put(httpq *q, const tally_agg *a)
{
	if (q->csv) {
		q_lit(q, "from,to,count,mean,min,max,sum\n");
		q_time(q, q->from);
		q_sep(q);
		q_time(q, q->to);
		q_agg_cells(q, a);
		q_lit(q, "\n");
		return;
	}
	q_lit(q, "{");
	q_member(q, "table", q->table);
	q_member(q, "field", q->field);
	q_member(q, "key", q->key);
	q_span(q);
	q_lit(q, ",\"count\":");
	q_u64(q, a->count);
	q_lit(q, ",\"mean\":");
	q_f64(q, a->count ? a->avg : NAN);
	q_lit(q, ",\"min\":");
	q_f64(q, a->count ? a->min : NAN);
	q_lit(q, ",\"max\":");
	q_f64(q, a->count ? a->max : NAN);
	q_lit(q, ",\"sum\":");
	q_f64(q, a->sum);
	q_lit(q, "}\n");
}

/* agg across nodes: the merged answer's one row. */
static int p_agg_fan(httpq *q)
{
	const char *r;
	size_t n;
	tally_agg a = {0};
	if (fan_reader_next(&q->rd, &r, &n))
		a = fan_cell_agg(r, n, 0);
	q_agg_put(q, &a);
	return 1;
}

/* One window's row of a dist: its time, count, then each statistic. */
static void dist_row(httpq *q, const tally_dist *t, int64_t at)
{
	qdist *d = q->dist;
	q_row_open(q);
	q_time(q, at);
	q_sep(q);
	q_u64(q, tally_dist_count(t));
	for (int i = 0; i < d->n_qs; i++) {
		double v;
		q_sep(q);
		q_f64(q, tally_dist_quantile(t, d->qs[i], &v) ? NAN : v); /* none: null */
	}
	for (int i = 0; i < d->n_above; i++) {
		q_sep(q);
		q_u64(q, tally_dist_count_above(t, d->above[i]));
	}
	for (int i = 0; i < d->n_below; i++) {
		q_sep(q);
		q_u64(q, tally_dist_count_below(t, d->below[i]));
	}
	if (d->n_edges)
		tally_dist_histogram(t, d->edges, (size_t)d->n_edges, d->counts);
	for (int i = 0; i + 1 < d->n_edges; i++) {
		q_sep(q);
		q_u64(q, d->counts[i]);
	}
	if (q->csv) { /* CSV has no room after its rows: each row says it (0: exact) */
		q_sep(q);
		q_f64(q, tally_dist_error(t));
	}
	q_row_close(q);
}

/* A dist's windows, one distribution query each (whole windows from the
 * rollups, raw events at the cut edges): a row per window with values;
 * without step, one row over [from, to), empty or not. */
static int p_dist(httpq *q, tally_db *db, size_t budget)
{
	qdist *d = q->dist;
	while (q->n < budget && !q->oom) {
		if (d->ws >= q->to) {
			const char *row;
			size_t n;
			if (q->fan && q->step && fan_reader_next(&q->rd, &row, &n)) {
				/* a node's windows start elsewhere: never dropped */
				snprintf(q->err, sizeof q->err,
					 "a node answered a window this step does not have "
					 "('%.40s'): give every node the same align-offset",
					 row);
				return 500;
			}
			if (q->csv)
				return 1;
			if (d->error > 0) { /* a window kept as a sketch: never silent */
				q_lit(q, "],\"error\":");
				q_f64(q, d->error);
				q_lit(q, "}\n");
			} else {
				q_lit(q, "]}\n");
			}
			return 1;
		}
		int64_t lo = d->ws < q->from ? q->from : d->ws;
		int64_t hi = !q->step || q->to - d->ws <= q->step ? q->to : d->ws + q->step;
		tally_dist *t = NULL;
		/* across nodes, the merged answer holds every window's pairs
		 * in time order (fandist_http): this window's are next */
		int rc = !q->fan   ? tally_query_dist(db, q->table, q->field, q->key, lo, hi, &t)
			 : q->step ? fandist_window(&q->rd, lo, &t, q->err, sizeof q->err)
				   : fandist_read(&q->rd, &t, q->err, sizeof q->err);
		if (rc && q->fan)
			return 500; /* q->err says which row of which window */
		if (rc)
			return q_engine(q, rc, "field");
		if (!q->step || tally_dist_count(t))
			dist_row(q, t, q->step ? d->ws : q->from);
		if (tally_dist_error(t) > d->error)
			d->error = tally_dist_error(t);
		tally_dist_free(t);
		d->ws = hi;
	}
	return 0;
}

/* One turn of the answer's producer. */
static int q_produce(httpq *q, tally_db *db, size_t budget)
{
	switch (q->kind) {
	case Q_TABLES:
	case Q_FIELDS: return p_cat_fan(q);
	case Q_KEYS: return p_keys(q, db, budget);
	case Q_SERIES:
	case Q_CAMERA: return p_series(q, db, budget);
	case Q_AGGS: return p_aggs(q, budget);
	case Q_SCAN: return p_scan(q, budget);
	case Q_AGG: return p_agg_fan(q);
	case Q_DIST: return p_dist(q, db, budget);
	default: return 1;
	}
}

/* ---------------------------------------------------------------- endpoints */

static const char *const series_cols[] = {"time", "count", "mean", "min", "max", "sum"};
static const char *const aggs_cols[] = {"key", "count", "mean", "min", "max", "sum"};
static const char *const camera_cols[] = {"start", "avg", "count", "min", "max"};

/* "table":..,"field":..,"key":.., the members every per-key answer opens with. */
static void q_ident(httpq *q, int with_key)
{
	q_member(q, "table", q->table);
	q_member(q, "field", q->field);
	if (with_key)
		q_member(q, "key", q->key);
}

static int q_series_start(httpq *q, tally_db *db, const srv_conf *cf, int64_t now,
			  const char *step_name, const char *step_dflt)
{
	int st = q_duration_param(q, step_name, step_dflt, &q->step);
	if (!st)
		st = q_range(q, now);
	if (st)
		return st;
	if (q->fan) {
		q_fan_req(q, CMD_SERIES, "series");
	} else {
		q->ser = malloc(sizeof *q->ser);
		if (!q->ser) {
			snprintf(q->err, sizeof q->err, "out of memory");
			return 500;
		}
		series_init(q->ser, q->table, q->field, q->key, q->step, q->from, q->to,
			    cf->align_offset);
		/* the first slice now, so that a bad table, field or step is a
		 * 4xx answer rather than a cut stream */
		int rc = series_next_slice(db, q->ser);
		if (rc)
			return q_engine(q, rc, step_name);
	}
	char d[32];
	cmd_format_duration(q->step, d);
	if (q->csv) {
		q_columns(q, q->kind == Q_CAMERA ? camera_cols : series_cols,
			  q->kind == Q_CAMERA ? 5 : 6);
		return 0;
	}
	q_lit(q, "{");
	if (q->kind == Q_CAMERA) {
		q_member(q, "id", q->key);
		q_ident(q, 0);
		q_member(q, "interval", d);
	} else {
		q_ident(q, 1);
		q_member(q, "step", d);
	}
	q_span(q);
	if (q->kind == Q_CAMERA) {
		q_lit(q, ",\"windows\":[");
		return 0;
	}
	q_lit(q, ",");
	q_columns(q, series_cols, 6);
	return 0;
}

static int q_agg(httpq *q, tally_db *db, int64_t now)
{
	int st = q_range(q, now);
	if (st)
		return st;
	tally_agg a;
	if (q->fan) {
		q_fan_req(q, CMD_AGG, "agg"); /* p_agg_fan answers */
		return 0;
	}
	int rc = tally_query_agg(db, q->table, q->field, q->key, q->from, q->to, &a);
	if (rc)
		return q_engine(q, rc, "field");
	q_agg_put(q, &a);
	return 0;
}

static int q_aggs_start(httpq *q, tally_db *db, int64_t now)
{
	char v[16];
	int st = q_range(q, now);
	if (st)
		return st;
	long k = q_param(q, "sort", v, sizeof v);
	if (k == -2)
		return 400;
	q->sort = SORT_KEY;
	if (k >= 0) {
		if (!strcmp(v, "mean"))
			q->sort = SORT_MEAN;
		else if (!strcmp(v, "count"))
			q->sort = SORT_COUNT;
		else if (strcmp(v, "key"))
			return q_fail(q, "sort", "sort must be key, mean or count");
	}
	k = q_param(q, "order", v, sizeof v);
	if (k == -2)
		return 400;
	q->desc = q->sort != SORT_KEY; /* the biggest first, unless asked */
	if (k >= 0) {
		if (strcmp(v, "asc") && strcmp(v, "desc"))
			return q_fail(q, "order", "order must be asc or desc");
		q->desc = !strcmp(v, "desc");
	}
	int ranked = q->sort != SORT_KEY || q->desc;
	q->ranked = (unsigned)ranked;
	if ((st = q_limit(q, ranked ? Q_AGGS_LIMIT : 0, ranked ? Q_AGGS_MAX : UINT64_MAX)))
		return st;
	/* key=: only the keys holding these tags; by=: one row per value of
	 * these tags (engine/tally.h, tally_query_group) */
	long kk = q_param(q, "key", q->key, Q_NAME_MAX), kb = q_param(q, "by", q->by, Q_NAME_MAX);
	if (kk == -2 || kb == -2)
		return 400;
	if (q->fan) {
		q_fan_req(q, CMD_KEYS, "keys"); /* ranked: selected in q_fan_ready */
		q->ask.key = kk >= 0 ? q->key : NULL;
		q->ask.group = kb >= 0 ? q->by : NULL;
	} else {
		int rc = tally_query_group(db, q->table, q->field, kk >= 0 ? q->key : NULL,
					   kb >= 0 ? q->by : NULL, q->from, q->to, &q->it);
		if (rc)
			return q_engine(q, rc, kk >= 0 || kb >= 0 ? "key" : "field");
		if (ranked && (st = aggs_select(q)))
			return st;
	}
	if (!q->csv) {
		q_lit(q, "{");
		q_ident(q, 0);
		q_span(q);
		q_lit(q, ",");
	}
	q_columns(q, aggs_cols, 6);
	return 0;
}

/* A scan's opening: its table, key and columns. */
static void q_scan_head(httpq *q, const char **cols, size_t n)
{
	if (!q->csv) {
		q_lit(q, "{");
		q_member(q, "table", q->table);
		q_member(q, "key", q->key);
	}
	q_columns(q, cols, n);
}

static int q_scan_start(httpq *q, tally_db *db, int64_t now)
{
	char cur[64];
	int st = q_range(q, now);
	if (!st)
		st = q_limit(q, Q_SCAN_LIMIT, Q_SCAN_MAX);
	if (st)
		return st;
	long k = q_param(q, "cursor", cur, sizeof cur);
	if (k == -2)
		return 400;
	q->last_ts = INT64_MIN;
	q->same_ts = q->skip = 0;
	if (k >= 0) {
		int64_t ts;
		if (cursor_parse(cur, &ts, &q->skip) || ts < q->from || ts >= q->to)
			return q_fail(q, "cursor",
				      "cursor: '%.40s' is not one this scan's answer gave", cur);
		q->from = q->last_ts = ts;
		q->same_ts = q->skip;
	}
	if (q->fan) {
		/* every node's first rows: those this page skips, gives, and
		 * one more that says whether a next page starts there */
		q_fan_req(q, CMD_SCAN, "scan");
		q->ask.limit = q->skip + q->limit + 1;
		return 0; /* the columns are the nodes': q_scan_fan_head */
	}
	int rc = tally_scan_open(db, q->table, q->key, q->from, q->to, &q->scan);
	if (rc)
		return q_engine(q, rc, "key");
	q->n_cols = tally_scan_columns(q->scan);
	const char **cols = malloc((q->n_cols + 1) * sizeof *cols);
	if (!cols) {
		snprintf(q->err, sizeof q->err, "out of memory");
		return 500;
	}
	cols[0] = "time";
	for (size_t i = 0; i < q->n_cols; i++) {
		enum tally_type type;
		if (tally_scan_column(q->scan, i, &cols[i + 1], &type))
			cols[i + 1] = "";
	}
	q_scan_head(q, cols, q->n_cols + 1);
	free(cols);
	return 0;
}

/* The merged scan's columns (its header's, every node's), typed by this
 * node's catalog. */
static int q_scan_fan_head(httpq *q, tally_db *db)
{
	size_t nh = 0, cn, nf = 0;
	while (fan_cell(q->rd.head, q->rd.head_n, (unsigned)nh, &cn))
		nh++;
	q->n_cols = nh ? nh - 1 : 0;
	const char **cols = calloc(nh + 1, sizeof *cols);
	const char **fnames = malloc(Q_COLS_MAX * sizeof *fnames);
	enum tally_type *ftypes = malloc(Q_COLS_MAX * sizeof *ftypes);
	q->fan_vals = calloc(q->n_cols + 1, sizeof *q->fan_vals);
	q->fan_types = calloc(q->n_cols + 1, sizeof *q->fan_types);
	char *names = malloc(q->rd.head_n + nh + 1);
	int st = 0;
	if (!cols || !fnames || !ftypes || !q->fan_vals || !q->fan_types || !names) {
		snprintf(q->err, sizeof q->err, "out of memory");
		st = 500;
		goto out;
	}
	int frc = tally_catalog_fields(db, q->table, fnames, ftypes, Q_COLS_MAX, &nf);
	if (frc && frc != TALLY_ETRUNC)
		nf = 0; /* not a table here: every column told by its look */
	if (nf > Q_COLS_MAX)
		nf = Q_COLS_MAX;
	for (size_t i = 0, o = 0; i < nh; i++) {
		const char *c = fan_cell(q->rd.head, q->rd.head_n, (unsigned)i, &cn);
		cols[i] = names + o;
		o += fan_unescape(c, cn, names + o);
		names[o++] = 0;
		for (size_t f = 0; i && f < nf; f++)
			if (!strcmp(fnames[f], cols[i]))
				q->fan_types[i - 1] = ftypes[f];
	}
	if (!nh)
		cols[nh++] = "time";
	q_scan_head(q, cols, nh);
out:
	free(cols);
	free(fnames);
	free(ftypes);
	free(names);
	return st;
}

/* A comma list of at most max numbers from lo to hi in parameter name,
 * into v: how many (0 when absent), or -1 after q_fail. */
static int q_numbers(httpq *q, const char *name, double *v, int max, double lo, double hi,
		     const char *what)
{
	char s[2048];
	long k = q_param(q, name, s, sizeof s);
	if (k == -2)
		return -1;
	int n = 0;
	for (char *p = s, *comma; k >= 0; p = comma + 1) {
		comma = strchr(p, ',');
		if (comma)
			*comma = 0;
		if (n == max || cmd_dist_num(p, &v[n]) || v[n] < lo || v[n] > hi) {
			q_fail(q, name, "%s: '%.40s' is not a list of at most %d %s", name, p, max,
			       what);
			return -1;
		}
		n++;
		if (!comma)
			break;
	}
	return n;
}

/* The dist's columns: time, count, q=Q..., above=X..., below=X...,
 * [E1,E2)..., and in CSV error (the JSON answer says it once, at its
 * end, which a CSV answer does not have). */
static void q_dist_columns(httpq *q)
{
	const qdist *d = q->dist;
	int n = 2 + d->n_qs + d->n_above + d->n_below + (d->n_edges ? d->n_edges - 1 : 0) + q->csv;
	char(*names)[80] = malloc((size_t)n * sizeof *names);
	const char **cols = malloc((size_t)n * sizeof *cols);
	if (!names || !cols) {
		q->oom = 1;
		free(names);
		free(cols);
		return;
	}
	int c = 0;
	char x[32], y[32];
	snprintf(names[c++], sizeof names[0], "time");
	snprintf(names[c++], sizeof names[0], "count");
	for (int i = 0; i < d->n_qs; i++, c++)
		snprintf(names[c], sizeof names[0], "q=%.*s", (int)cmd_format_double(d->qs[i], x),
			 x);
	for (int i = 0; i < d->n_above; i++, c++)
		snprintf(names[c], sizeof names[0], "above=%.*s",
			 (int)cmd_format_double(d->above[i], x), x);
	for (int i = 0; i < d->n_below; i++, c++)
		snprintf(names[c], sizeof names[0], "below=%.*s",
			 (int)cmd_format_double(d->below[i], x), x);
	for (int i = 0; i + 1 < d->n_edges; i++, c++)
		snprintf(names[c], sizeof names[0], "[%.*s,%.*s)",
			 (int)cmd_format_double(d->edges[i], x), x,
			 (int)cmd_format_double(d->edges[i + 1], y), y);
	if (q->csv)
		snprintf(names[c++], sizeof names[0], "error");
	for (int i = 0; i < n; i++)
		cols[i] = names[i];
	q_columns(q, cols, (size_t)n);
	free(names);
	free(cols);
}

/* GET /api/v1/dist: the exact distribution of a key's field over
 * [from, to), or per window of step, and what is asked of it. */
static int q_dist_start(httpq *q, tally_db *db, const srv_conf *cf, int64_t now)
{
	int st = q_range(q, now);
	if (st)
		return st;
	char v[64];
	long k = q_param(q, "step", v, sizeof v);
	if (k == -2)
		return 400;
	q->step = 0;
	if (k >= 0 &&
	    (cmd_parse_duration(v, &q->step) || q->step <= 0 || q->step > SERIES_STEP_MAX))
		return q_fail(q, "step",
			      "step: invalid duration '%.40s' (like 5m, 1h, 24h; at most 834 days)",
			      v);
	if (!(q->dist = calloc(1, sizeof *q->dist))) {
		snprintf(q->err, sizeof q->err, "out of memory");
		return 500;
	}
	qdist *d = q->dist;
	if ((d->n_qs = q_numbers(q, "q", d->qs, Q_DIST_STATS, 0, 1, "quantiles from 0 to 1")) < 0 ||
	    (d->n_above = q_numbers(q, "above", d->above, Q_DIST_STATS, -INFINITY, INFINITY,
				    "numbers")) < 0 ||
	    (d->n_below = q_numbers(q, "below", d->below, Q_DIST_STATS, -INFINITY, INFINITY,
				    "numbers")) < 0)
		return 400;
	char e[2048];
	k = q_param(q, "edges", e, sizeof e);
	if (k == -2)
		return 400;
	if (k >= 0 && (d->n_edges = cmd_dist_edges(e, d->edges)) < 0)
		return q_fail(q, "edges",
			      "edges: '%.40s' is not 2 to %d ascending numbers, comma separated", e,
			      CMD_DIST_EDGES_MAX);
	if (!d->n_qs && !d->n_above && !d->n_below && !d->n_edges) {
		d->qs[0] = 0.5; /* nothing named: the median and V85, as #!dist */
		d->qs[1] = 0.85;
		d->n_qs = 2;
	}
	d->ws = q->step ? series_window_start(q->from, q->step, cf->align_offset) : q->from;
	if (q->step &&
	    ((uint64_t)q->to - (uint64_t)d->ws - 1) / (uint64_t)q->step >= DIST_WINDOWS_MAX)
		return q_fail(q, "step",
			      "step: more than %d windows from from to to (each is a "
			      "distribution query): widen the step or narrow the range",
			      DIST_WINDOWS_MAX);
	/* the field's distribution over nothing: a 4xx now for a table,
	 * field or key that cannot answer, rather than a cut stream */
	tally_dist *t;
	int rc = tally_query_dist(db, q->table, q->field, q->key, q->to, q->to, &t);
	double res = NAN; /* across nodes, from a node without the table: null */
	if (q->fan)
		q_fan_req(q, CMD_DIST, "dist"); /* fandist_http asks every node */
	if (rc && !q->fan)
		return q_engine(q, rc, "field");
	if (!rc) {
		res = tally_dist_resolution(t);
		tally_dist_free(t);
	}
	if (!q->csv) {
		char dur[32];
		q_lit(q, "{");
		q_ident(q, 1);
		if (q->step) {
			cmd_format_duration(q->step, dur);
			q_member(q, "step", dur);
		} else {
			q_member(q, "step", NULL);
		}
		q_lit(q, "\"resolution\":");
		q_f64(q, res);
		q_lit(q, ",");
		q_span(q);
		q_lit(q, ",");
	}
	q_dist_columns(q);
	return 0;
}

static int hexval(char ch)
{
	return ch >= '0' && ch <= '9'   ? ch - '0'
	       : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
	       : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
					: -1;
}

/* Decodes the %-escapes of a path segment; -1 when malformed, too long
 * or holding a NUL. */
static int path_decode(const char *p, size_t n, char *out, size_t cap)
{
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		int ch = (unsigned char)p[i];
		if (ch == '%') {
			int a = i + 2 < n ? hexval(p[i + 1]) : -1,
			    b = i + 2 < n ? hexval(p[i + 2]) : -1;
			if (a < 0 || b < 0)
				return -1;
			ch = a * 16 + b;
			i += 2;
		}
		if (!ch || o + 1 >= cap)
			return -1;
		out[o++] = (char)ch;
	}
	out[o] = 0;
	return 0;
}

/* GET {camera-route}: the per-window average of the route's field. */
static int q_camera(httpq *q, tally_db *db, const srv_conf *cf, int64_t now)
{
	size_t at = 0, n = 0;
	camera_match(cf, q->path, &at, &n);
	if (path_decode(q->path.p + at, n, q->key, sizeof q->key))
		return q_fail(q, "id", "the id in the path is malformed or too long");
	snprintf(q->table, sizeof q->table, "%s",
		 cf->camera_table ? cf->camera_table : HTTPQ_CAMERA_TABLE);
	snprintf(q->field, sizeof q->field, "%s",
		 cf->camera_field ? cf->camera_field : HTTPQ_CAMERA_FIELD);
	const char *want = cf->camera_key ? cf->camera_key : HTTPQ_CAMERA_KEY, *key_tag;
	int st = q_table(q, db, &key_tag);
	if (st)
		return st;
	if (key_tag ? strcmp(key_tag, want) != 0 : !q->fan) {
		snprintf(q->err, sizeof q->err,
			 "table '%.200s' is keyed by '%.200s', not '%.100s' (camera-route-key-tag)",
			 q->table, key_tag ? key_tag : "(none)", want);
		q->err_param = NULL;
		return 404;
	}
	q->kind = Q_CAMERA;
	return q_series_start(q, db, cf, now, "interval", "5m");
}

/* Reads the request's parameters and opens its producer (or answers it
 * whole: the catalog, one aggregate). 0, or the error status. */
/* ---------------------------------------------------------------- delete */

int httpq_wants_post(http_str path)
{
	return path.n == 14 && !memcmp(path.p, "/api/v1/delete", 14);
}

/* POST /api/v1/delete?table=T&key=K&from=F&to=T (all=true instead of key=
 * for every key): deletes those events (tally_db_delete) and answers what
 * it cost. A range that reaches expired raw events is the request's fault
 * (400, from). */
static int q_delete(httpq *q, tally_db *db, int64_t now)
{
	char all[8] = "";
	int st = q_name(q, "table", q->table);
	long k = st ? 0 : q_param(q, "key", q->key, sizeof q->key);
	long a = (st || k == -2) ? 0 : q_param(q, "all", all, sizeof all);
	if (st || k == -2 || a == -2)
		return 400;
	if (a >= 0 && strcmp(all, "true"))
		return q_fail(q, "all", "all: '%.7s' is not true", all);
	if ((k >= 0) == (a >= 0))
		return q_fail(q, "key",
			      k >= 0 ? "key= and all=true: give one of them"
				     : "key= is required (or all=true for every key)");
	if ((st = q_time_param(q, "from", now, 0, 0, &q->from)) ||
	    (st = q_time_param(q, "to", now, 0, 0, &q->to)))
		return st;
	if (q->to <= q->from)
		return q_fail(q, "to", "to must be after from");
	tally_delete_result d = {.size = sizeof d};
	int rc = tally_db_delete(db, q->table, k >= 0 ? q->key : NULL, q->from, q->to, &d);
	if (rc == TALLY_EEXPIRED) {
		snprintf(q->err, sizeof q->err, "%s", tally_errmsg());
		q->err_param = "from";
		return 400;
	}
	if (rc)
		return q_engine(q, rc, "key");
	if (q->csv) {
		q_lit(q,
		      "rows,parts_rewritten,parts_removed,bytes_read,bytes_written,bytes_copied\n");
		q_fmt(q,
		      "%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64 "\n",
		      d.rows, d.parts_rewritten, d.parts_removed, d.bytes_read, d.bytes_written,
		      d.bytes_copied);
		return 0;
	}
	q_lit(q, "{");
	q_member(q, "table", q->table);
	q_member(q, "key", k >= 0 ? q->key : NULL);
	q_span(q);
	q_fmt(q,
	      ",\"rows\":%" PRIu64 ",\"parts_rewritten\":%" PRIu64 ",\"parts_removed\":%" PRIu64
	      ",\"bytes_read\":%" PRIu64 ",\"bytes_written\":%" PRIu64 ",\"bytes_copied\":%" PRIu64
	      "}\n",
	      d.rows, d.parts_rewritten, d.parts_removed, d.bytes_read, d.bytes_written,
	      d.bytes_copied);
	return 0;
}

static int q_start(httpq *q, srv *s)
{
	tally_db *db = s->db;
	const srv_conf *cf = s->conf;
	int64_t now = srv_clock_ns();
	int st = q_format(q);
	if (!st)
		st = q_partial(q);
	if (st)
		return st;
	q->first = 1;
	if (!has_prefix(q->path, "/api/v1/", 8)) {
		q->fan = s->n_fan_nodes != 0;
		return q_camera(q, db, cf, now);
	}
	const char *ep = q->path.p + 8;
	int tables = !strcmp(ep, "tables");
	if ((tables || !strcmp(ep, "fields")) && s->n_fan_nodes) {
		/* the union of every node's catalog (p_cat_fan) */
		q->table[0] = 0;
		if (!tables && (st = q_name(q, "table", q->table)))
			return st;
		q->kind = tables ? Q_TABLES : Q_FIELDS;
		q->fan = 1;
		q->ask = fan_req(CMD_TABLES, "tables", NULL, NULL, NULL, 0, 0, 0);
		return 0;
	}
	if (tables)
		return q_tables(q, db);
	if (!strcmp(ep, "fields"))
		return q_fields(q, db);
	if (!strcmp(ep, "delete"))
		return q_delete(q, db, now);
	static const char *const eps[] = {"keys", "series", "agg", "aggs", "scan", "dist"};
	static const enum qkind kinds[] = {Q_KEYS, Q_SERIES, Q_AGG, Q_AGGS, Q_SCAN, Q_DIST};
	for (size_t i = 0; i < sizeof eps / sizeof eps[0]; i++)
		if (!strcmp(ep, eps[i]))
			q->kind = kinds[i];
	if (q->kind == Q_NONE) {
		snprintf(q->err, sizeof q->err, "no such endpoint: %s", q->path.p);
		q->err_param = NULL;
		return 404;
	}
	/* keys: the union of every node's catalog (#!keylist) */
	q->fan = s->n_fan_nodes != 0;
	const char *key_tag;
	if ((st = q_name(q, "table", q->table)) || (st = q_table(q, db, &key_tag)))
		return st;
	if (q->kind == Q_KEYS) {
		q->prefix[0] = 0; /* absent: every key, whatever the last request asked */
		long k = q_param(q, "prefix", q->prefix, sizeof q->prefix);
		if (k == -2 || (st = q_limit(q, 0, UINT64_MAX)))
			return 400;
		q->after = NULL;
		q->page_n = q->page_i = 0;
		q->keys_end = 0;
		if (q->fan)
			q->ask = fan_req(CMD_KEYLIST, "keylist", q->table, NULL,
					 q->prefix[0] ? q->prefix : NULL, 0, 0, 0);
		q->page = malloc(Q_KEYS_PAGE * sizeof *q->page);
		if (!q->page) {
			snprintf(q->err, sizeof q->err, "out of memory");
			return 500;
		}
		if (!q->csv) {
			q_lit(q, "{");
			q_member(q, "table", q->table);
			q_lit(q, "\"keys\":[");
		} else {
			q_lit(q, "key\n");
		}
		return 0;
	}
	if (q->kind != Q_SCAN && (st = q_name(q, "field", q->field)))
		return st;
	if (q->kind != Q_AGGS && (st = q_name(q, "key", q->key)))
		return st;
	switch (q->kind) {
	case Q_SERIES: return q_series_start(q, db, cf, now, "step", "5m");
	case Q_AGG:
		st = q_agg(q, db, now);
		if (!q->fan)
			q->kind = Q_NONE; /* answered whole */
		return st;
	case Q_AGGS: return q_aggs_start(q, db, now);
	case Q_SCAN: return q_scan_start(q, db, now);
	case Q_DIST: return q_dist_start(q, db, cf, now);
	default: return 500;
	}
}

/* ---------------------------------------------------------------- the wire */

static const char *q_reason(int status)
{
	switch (status) {
	case 200: return "OK";
	case 400: return "Bad Request";
	case 404: return "Not Found";
	case 503: return "Service Unavailable";
	default: return "Internal Server Error";
	}
}

static void q_head(httpq *q, wconn *c, int status, int keep_alive, const char *type, size_t length,
		   int chunked)
{
	char h[1024];
	int k = snprintf(h, sizeof h, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n", status,
			 q_reason(status), type);
	if (chunked)
		k += snprintf(h + k, sizeof h - (size_t)k, "Transfer-Encoding: chunked\r\n");
	else if (length != SIZE_MAX)
		k += snprintf(h + k, sizeof h - (size_t)k, "Content-Length: %zu\r\n", length);
	if (q->fan && q->rd.partial && status < 400) {
		/* the nodes that did not answer, for CSV too (printable) */
		k += snprintf(h + k, sizeof h - (size_t)k, "X-Tally-Partial: ");
		for (size_t i = 0; i < q->rd.partial_n && (size_t)k + 40 < sizeof h; i++) {
			char ch = q->rd.partial[i];
			h[k++] = ch >= 0x20 && ch < 0x7f ? ch : ' ';
		}
		k += snprintf(h + k, sizeof h - (size_t)k, "\r\n");
	}
	k += snprintf(h + k, sizeof h - (size_t)k, "%s\r\n",
		      keep_alive ? "" : "Connection: close\r\n");
	conn_put(c, h, (size_t)k, 1);
}

/* Sends this turn's body bytes: as a chunk when chunked. */
static void q_send(httpq *q, wconn *c)
{
	if (!q->n)
		return;
	if (q->chunked) {
		char h[24];
		int k = snprintf(h, sizeof h, "%zx\r\n", q->n);
		conn_put(c, h, (size_t)k, 1);
	}
	conn_put(c, q->buf, q->n, 1);
	if (q->chunked)
		conn_put(c, "\r\n", 2, 1);
	q->n = 0;
}

static const char *q_type(const httpq *q)
{
	return q->csv ? "text/csv; charset=utf-8" : "application/json; charset=utf-8";
}

/* The nodes answered: their merged answer is where the producers read
 * from now. 0, or the error status (503 when nodes did not answer). */
static int q_fan_ready(httpq *q, tally_db *db)
{
	if (!q->fan_text) {
		snprintf(q->err, sizeof q->err, "out of memory while merging the nodes' answers");
		q->err_param = NULL;
		return 500;
	}
	fan_reader_open(&q->rd, q->fan_text, q->fan_len);
	if (q->rd.err) {
		snprintf(q->err, sizeof q->err, "%.*s", (int)q->rd.err_n, q->rd.err);
		q->err_param = NULL;
		if (fan_err_missing(&q->rd))
			return 503;
		if (fan_err_absent(q->rd.err, q->rd.err_n)) {
			q->err_param = strstr(q->err, "no table") ? "table" : "field";
			return 404;
		}
		return 400;
	}
	if (q->kind == Q_AGGS && q->ranked)
		return aggs_select(q);
	if (q->kind == Q_SCAN)
		return q_scan_fan_head(q, db);
	return 0;
}

/* partial=mark and nodes missing: "partial":"NODE (why); ..." opens the
 * JSON answer (its first turn, which starts with '{'). */
static void q_mark_partial(httpq *q)
{
	if (q->csv || !q->rd.partial || !q->n || q->buf[0] != '{')
		return;
	size_t at = q->n;
	q_lit(q, "\"partial\":");
	q_str(q, q->rd.partial, q->rd.partial_n);
	q_lit(q, ",");
	size_t k = q->n - at;
	char *m = q->oom ? NULL : malloc(k);
	if (!m) {
		q->oom = 1;
		return;
	}
	memcpy(m, q->buf + at, k);
	memmove(q->buf + 1 + k, q->buf + 1, at - 1);
	memcpy(q->buf + 1, m, k);
	free(m);
}

static int q_answer(httpq *q, wconn *c, int st, int *more);

int httpq_serve(httpq *q, wconn *c, int keep_alive, int head_only, int *more)
{
	srv *s = c->sh->srv;
	*more = 0;
	q->n = 0;
	q->oom = q->truncated = q->chunked = 0;
	q->rows = 0;
	q->kind = Q_NONE;
	q->err_param = NULL;
	q->keep_alive = keep_alive;
	q->head_only = head_only;
	q->fan = 0;
	memset(&q->rd, 0, sizeof q->rd);
	int st = q_start(q, s);
	if (!st && q->fan) {
		/* Every node answers its part; nothing goes out before. */
		fanjob *j;
		int rc = q->kind == Q_DIST
				 ? fandist_http(c, &q->ask, q->step, q->fan_mark, &j)
				 : fanserv_ask(c, &q->ask, q->fan_mark, "partial=mark", &j);
		if (!rc) {
			c->prod = PROD_FANOUT; /* the job's end steps c */
			c->prod_state = j;
			q->fan_wait = 1;
			*more = 1;
			return 0; /* counted when answered (httpq_status) */
		}
		snprintf(q->err, sizeof q->err, "%s",
			 rc == -E2BIG ? "the query is too long to send to the other nodes"
				      : "cannot start asking the other nodes");
		q->err_param = NULL;
		st = rc == -E2BIG ? 400 : 503;
	}
	return q_answer(q, c, st, more);
}

int httpq_status(httpq *q)
{
	int st = q->status;
	q->status = 0;
	return st;
}

/* Answers what q_start (and the nodes) gave: st 0, the first turn of the
 * rows; else the error's status. */
static int q_answer(httpq *q, wconn *c, int st, int *more)
{
	srv *s = c->sh->srv;
	size_t budget = s->conf->reply_bytes / 2;
	int keep_alive = q->keep_alive, head_only = q->head_only;
	*more = 0;
	if (!st) {
		int r = q_produce(q, s->db, budget);
		st = r == 1 ? 0 : r == 0 ? -1 : r;
		if (st <= 0 && q->fan)
			q_mark_partial(q);
	}
	if (q->oom) {
		st = 500;
		snprintf(q->err, sizeof q->err, "out of memory while answering");
	}
	if (st > 0) {
		q_end(q);
		q->n = 0;
		q->csv = 0;
		q_lit(q, "{\"error\":");
		q_cstr(q, q->err);
		if (q->err_param) {
			q_lit(q, ",\"param\":");
			q_cstr(q, q->err_param);
		}
		q_lit(q, "}\n");
		q_head(q, c, st, keep_alive, q_type(q), q->n, 0);
		if (!head_only)
			q_send(q, c);
		q->n = 0;
		return st;
	}
	if (st == 0) { /* complete in one turn */
		q_head(q, c, 200, keep_alive, q_type(q), q->n, 0);
		if (!head_only)
			q_send(q, c);
		q->n = 0;
		q_end(q);
		return 200;
	}
	/* Goes on: chunked (HTTP/1.0 has no chunks: the close ends it). */
	q->chunked = q->minor >= 1;
	q_head(q, c, 200, keep_alive && q->chunked, q_type(q), SIZE_MAX, q->chunked);
	if (head_only) {
		q_end(q);
		q->n = 0;
		return 200;
	}
	q_send(q, c);
	*more = 1;
	return 200;
}

int httpq_pump(httpq *q, wconn *c)
{
	srv *s = c->sh->srv;
	if (q->fan_wait) {
		int unused, more;
		if (c->prod != PROD_FANOUT ||
		    !fanserv_take(c->prod_state, &q->fan_text, &q->fan_len, &unused))
			return 0;
		fanserv_release(c->prod_state);
		c->prod = PROD_NONE;
		c->prod_state = NULL;
		q->fan_wait = 0;
		q->status = q_answer(q, c, q_fan_ready(q, s->db), &more);
		return !more;
	}
	int r = q_produce(q, s->db, s->conf->reply_bytes / 2);
	if (r > 1 || q->oom) {
		/* The head said 200: an error now can only cut the answer
		 * short, which the client sees as a chunked body without its
		 * end (and the close). */
		srv_log(s, TALLY_LOG_WARN, "http query %s cut short: %s", q->path.p,
			q->oom ? "out of memory" : q->err);
		q->n = 0;
		q_end(q);
		conn_close_with(c, NULL);
		return 1;
	}
	q_send(q, c);
	if (r == 1) {
		if (q->chunked)
			conn_put(c, "0\r\n\r\n", 5, 1);
		else
			conn_close_with(c, NULL);
		q_end(q);
	}
	return r == 1;
}
