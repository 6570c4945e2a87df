/*
 * fuzz_httpq.c — libFuzzer target: the HTTP query API's request handling
 * (wire/httpq.c): routing, parameters (times, durations, limits, cursors,
 * a dist's quantiles, thresholds and edges, %-escapes of names and of the
 * cameras' route's id), every endpoint's producer, JSON and CSV, against
 * a small real database (speed kept as a distribution).
 *
 * The input is a request target ("/api/v1/scan?table=..."); its first
 * byte, when below 0x20, picks Accept: text/csv and a tiny budget per
 * turn. For any input: routing and parsing never crash; the answer is a
 * success or one of the documented statuses (400, 404, 500, 503) with a
 * printable message and a known parameter name; a turn never holds more
 * than its budget plus one row; and a complete JSON answer is well-formed
 * JSON (checked by a strict recursive parser below).
 *
 *   tests/fuzz/build fuzz_httpq build-fuzz/fuzz_httpq
 */
#include <ftw.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../wire/cmd.c"
#include "../../wire/fanout.c"
#include "../../wire/http.c"
#include "../../wire/httpq.c"
#include "../../wire/numfmt.c"
#include "../../wire/series.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                 \
	do {                     \
		if (!(c))        \
			abort(); \
	} while (0)

#define NOW INT64_C(1748908800000000000) /* 2025-06-03T00:00:00Z */

/* The server the answers would leave through: the target drives the
 * producers directly, so these are never reached with a connection. */
void conn_put(wconn *c, const char *s, size_t n, int force)
{
	(void)c;
	(void)s;
	(void)n;
	(void)force;
	abort();
}

void conn_close_with(wconn *c, const char *msg)
{
	(void)c;
	(void)msg;
	abort();
}

int64_t srv_clock_ns(void)
{
	return NOW;
}

/* Queries across nodes (fanserv.c): the server here has no peers. */
int fanserv_ask(wconn *c, const cmd_req *r, int partial, const char *hint, fanjob **out)
{
	(void)c;
	(void)r;
	(void)partial;
	(void)hint;
	(void)out;
	abort();
}

int fanserv_take(fanjob *j, char **out, size_t *len, int *status)
{
	(void)j;
	(void)out;
	(void)len;
	(void)status;
	abort();
}

void fanserv_release(fanjob *j)
{
	(void)j;
	abort();
}

/* Distributions across nodes (fandist.c): no peers either. */
int fandist_http(wconn *c, const cmd_req *r, int64_t step, int partial, fanjob **out)
{
	(void)c;
	(void)r;
	(void)step;
	(void)partial;
	(void)out;
	abort();
}

int fandist_window(fan_reader *rd, int64_t lo, tally_dist **out, char *err, size_t cap)
{
	(void)rd;
	(void)lo;
	(void)out;
	(void)err;
	(void)cap;
	abort();
}

int fandist_read(fan_reader *rd, tally_dist **out, char *err, size_t cap)
{
	(void)rd;
	(void)out;
	(void)err;
	(void)cap;
	abort();
}

void srv_log(srv *s, int level, const char *fmt, ...)
{
	(void)s;
	(void)level;
	(void)fmt;
}

static tally_db *db;
static srv_conf cf;
static srv server;
static httpq *q;

static void quiet(void *ctx, int level, const char *msg)
{
	(void)ctx;
	(void)level;
	(void)msg;
}

static char dir[] = "/tmp/fuzz-httpq-XXXXXX";

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(p);
}

/* At exit: the store closed (LeakSanitizer looks then) and removed. */
static void teardown(void)
{
	httpq_free(q);
	tally_db_close(db);
	nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* A store with two tables: traffic (key camera; float, string, a tag;
 * equal times) and bare (no key tag). */
static void setup(void)
{
	CHECK(mkdtemp(dir));
	tally_options o;
	tally_options_init(&o);
	o.no_background = 1;
	o.log_fn = quiet;
	o.distributions = "traffic.speed:0.1"; /* for /api/v1/dist */
	CHECK(tally_db_open(dir, &o, &db) == 0);
	tally_writer *w;
	CHECK(tally_writer_open(db, -1, &w) == 0);
	static char lp[1 << 16];
	size_t n = 0;
	for (int i = 0; i < 400; i++)
		n += (size_t)snprintf(
			lp + n, sizeof lp - n,
			"traffic,camera=KV%d,lane=%d speed=%d.5,plate=\"A%d,\\\"B\" %lld\n", i % 7,
			i % 3, 40 + i % 90, i,
			(long long)(NOW - 86400000000000LL + (i / 3) * 60000000000LL));
	n += (size_t)snprintf(lp + n, sizeof lp - n, "bare value=1u 1748822400000000000\n");
	tally_write_result res;
	CHECK(tally_write_lp(w, lp, n, TALLY_PREC_NS, &res) == 0 && res.rejected == 0);
	tally_writer_close(w);
	memset(&cf, 0, sizeof cf); /* the defaults that matter here are NULL and 0 */
	server.db = db;
	server.conf = &cf;
	CHECK(httpq_new(&q) == 0);
	atexit(teardown);
}

/* ---------------------------------------------------------------- JSON */

static const char *j_value(const char *p, const char *e, int depth);

static const char *j_ws(const char *p, const char *e)
{
	while (p < e && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
		p++;
	return p;
}

static const char *j_string(const char *p, const char *e)
{
	if (p >= e || *p != '"')
		return NULL;
	for (p++; p < e; p++) {
		unsigned char ch = (unsigned char)*p;
		if (ch == '"')
			return p + 1;
		if (ch < 0x20)
			return NULL;
		if (ch == '\\') {
			if (++p >= e)
				return NULL;
			if (*p == 'u') {
				for (int i = 0; i < 4; i++)
					if (++p >= e || !strchr("0123456789abcdefABCDEF", *p))
						return NULL;
			} else if (!strchr("\"\\/bfnrt", *p)) {
				return NULL;
			}
		}
	}
	return NULL;
}

static const char *j_number(const char *p, const char *e)
{
	const char *s = p;
	if (p < e && *p == '-')
		p++;
	if (p >= e || *p < '0' || *p > '9')
		return NULL;
	if (*p == '0')
		p++;
	else
		while (p < e && *p >= '0' && *p <= '9')
			p++;
	if (p < e && *p == '.') {
		if (++p >= e || *p < '0' || *p > '9')
			return NULL;
		while (p < e && *p >= '0' && *p <= '9')
			p++;
	}
	if (p < e && (*p == 'e' || *p == 'E')) {
		p++;
		if (p < e && (*p == '+' || *p == '-'))
			p++;
		if (p >= e || *p < '0' || *p > '9')
			return NULL;
		while (p < e && *p >= '0' && *p <= '9')
			p++;
	}
	return p > s ? p : NULL;
}

static const char *j_list(const char *p, const char *e, int depth, char close, int object)
{
	p = j_ws(p + 1, e);
	if (p < e && *p == close)
		return p + 1;
	for (;;) {
		if (object) {
			if (!(p = j_string(j_ws(p, e), e)))
				return NULL;
			p = j_ws(p, e);
			if (p >= e || *p != ':')
				return NULL;
			p++;
		}
		if (!(p = j_value(p, e, depth + 1)))
			return NULL;
		p = j_ws(p, e);
		if (p < e && *p == ',') {
			p++;
			continue;
		}
		return p < e && *p == close ? p + 1 : NULL;
	}
}

static const char *j_value(const char *p, const char *e, int depth)
{
	p = j_ws(p, e);
	if (p >= e || depth > 16)
		return NULL;
	switch (*p) {
	case '{': return j_list(p, e, depth, '}', 1);
	case '[': return j_list(p, e, depth, ']', 0);
	case '"': return j_string(p, e);
	case 't': return e - p >= 4 && !memcmp(p, "true", 4) ? p + 4 : NULL;
	case 'f': return e - p >= 5 && !memcmp(p, "false", 5) ? p + 5 : NULL;
	case 'n': return e - p >= 4 && !memcmp(p, "null", 4) ? p + 4 : NULL;
	default: return j_number(p, e);
	}
}

/* ---------------------------------------------------------------- the target */

static int known_param(const char *p)
{
	static const char *const names[] = {
		"table", "field",   "key",   "from",   "to",     "step",   "interval",
		"limit", "sort",    "order", "cursor", "prefix", "format", "epoch",
		"id",    "partial", "q",     "above",  "below",  "edges",  "all"};
	if (!p)
		return 1;
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
		if (!strcmp(p, names[i]))
			return 1;
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!db)
		setup();
	if (size > 4000)
		return 0;
	int csv = size && data[0] < 0x20;
	size_t budget = csv ? 64 : 4096;
	static char head[5000];
	int k = snprintf(head, sizeof head, "GET %.*s HTTP/1.1\r\nHost: x\r\n%s\r\n",
			 (int)(size - (size_t)csv), (const char *)data + csv,
			 csv ? "Accept: text/csv\r\n" : "");
	if (k <= 0 || (size_t)k >= sizeof head)
		return 0;
	http_req r;
	const char *why;
	if (http_parse_head(head, (size_t)k, &r, &why) || !httpq_route(&cf, r.path))
		return 0;
	CHECK(httpq_begin(q, &r) == 0);
	q->n = 0;
	q->oom = q->truncated = q->chunked = 0;
	q->rows = 0;
	q->kind = Q_NONE;
	q->err_param = NULL;
	q->err[0] = 0;
	static char body[1 << 20];
	size_t bn = 0;
	int st = q_start(q, &server), done = 0;
	for (int turn = 0; !st && turn < 4096; turn++) {
		int rr = q_produce(q, db, budget);
		CHECK(q->n <= budget + 64 * 1024);
		size_t take = q->n < sizeof body - bn ? q->n : sizeof body - bn;
		memcpy(body + bn, q->buf, take);
		bn += take;
		q->n = 0;
		if (rr > 1)
			st = rr;
		if (rr == 1)
			done = bn < sizeof body;
		if (rr)
			break;
	}
	CHECK(!q->oom);
	if (st) {
		CHECK(st == 400 || st == 404 || st == 500 || st == 503);
		CHECK(memchr(q->err, 0, sizeof q->err) && q->err[0]);
		CHECK(known_param(q->err_param));
	} else if (done && !q->csv) {
		const char *e = j_value(body, body + bn, 0);
		CHECK(e && j_ws(e, body + bn) == body + bn);
	}
	q_end(q);
	return 0;
}
