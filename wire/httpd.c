/*
 * httpd.c — HTTP/1.1 as a protocol of tallyd's connections: InfluxDB v1
 * and v2 line-protocol writes, JSON events, /metrics, /ping, /health,
 * /ready (docs/http.md).
 *
 * It sits on the same seam as the line protocol (the wproto table of
 * server.h): the loops receive into the shard's buffers and send c->out;
 * this file only parses, writes through the shard's tally_writer, and
 * appends answers. Requests are served strictly one after another, so
 * pipelined answers leave in request order.
 *
 * The one idea: a request is answered only once its outcome is final. A
 * write takes a ticket from the syncer (the same group commit as #!sync)
 * and the connection waits by not reading past a bound; the 204 goes out
 * when the sync that covers it has returned. While a connection waits, or
 * its unsent answers pass reply-buffer-bytes (a client that pipelines and
 * never reads), nothing more is parsed, input is held up to
 * input-buffer-bytes / 2 and then not read: TCP pushes back and memory
 * stays bounded. The head has a deadline from its first byte (slowloris),
 * the body a size limit before and after gzip.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http.h"
#include "influxql.h"
#include "fanserv.h"
#include "httpq.h"
#include "jsonev.h"
#include "label.h"
#include "server.h"
#include "web.h"

#define STAT_ADD(sh, f, v) atomic_fetch_add_explicit(&(sh)->st.f, (v), memory_order_relaxed)
#define HTTP_ERRORS_KEPT   TALLY_LINE_ERRORS_MAX /* bad lines named in an answer */
#define HTTP_VERSION_HDR   "X-Influxdb-Version: 1.8.10-tally\r\nX-Influxdb-Build: tally\r\n"

const char *const http_ep_names[HEP_N] = {
	[HEP_WRITE_V1] = "/write",       [HEP_WRITE_V2] = "/api/v2/write",
	[HEP_EVENTS] = "/api/v1/events", [HEP_PING] = "/ping",
	[HEP_HEALTH] = "/health",        [HEP_READY] = "/ready",
	[HEP_METRICS] = "/metrics",      [HEP_SETTINGS] = "/settings",
	[HEP_QUERY] = "/api/v1/*",       [HEP_WEB] = "/",
	[HEP_INFLUXQL] = "/query",       [HEP_OTHER] = "other",
};

enum hstate {
	HS_HEAD = 0, /* reading a request's head */
	HS_BODY,     /* reading its body */
	HS_WRITE,    /* writing its lines (waits out a full store) */
	HS_SYNC,     /* waiting for the sync that makes them durable */
	HS_STREAM,   /* a query's answer goes on as the client reads (httpq.c) */
	HS_FAN,      /* InfluxQL across nodes: waits for its job (fanserv.c) */
};

typedef struct hconn {
	/* Received, not yet consumed: a head, or a body, then what follows;
	 * buf[0, cap) lies inside mem[0, mem_cap). A request is consumed by
	 * moving buf on, never by moving the bytes behind it: a long pipeline
	 * held in the buffer would be copied once per request. */
	char *buf, *mem;
	size_t len, cap, mem_cap;
	enum hstate st;
	int64_t head_since; /* monotonic ns of the head's first byte; 0: none yet */
	int64_t body_since; /* monotonic ns of the head's end: the body's deadline runs from it */
	int64_t t0;         /* the head was complete: the request's latency starts */

	/* The request being served. */
	enum http_ep ep;
	unsigned v2 : 1, keep_alive : 1, chunked : 1, gzip : 1, head_only : 1, closing : 1;
	/* Answers past reply-buffer-bytes are unsent: parse nothing more
	 * until they are below half of it (resuming at each small send
	 * would serve a few requests per send completion). */
	unsigned out_full : 1;
	enum tally_precision prec;
	int64_t clen;
	http_chunked ck;
	size_t body_n; /* decoded body bytes at buf[0, body_n) */
	size_t raw_at; /* raw (undecoded) bytes start here; after the body: its end */
	char *gz;      /* the body decompressed */
	size_t gz_n, gz_cap;

	/* The write: text[w_at, w_end) of the body is still to be written. */
	size_t w_at, w_end;
	uint64_t lines, accepted, rejected, unwritten;
	unsigned n_err;
	tally_line_error err[HTTP_ERRORS_KEPT];
	int fail_rc; /* a write that stopped (full store, I/O error) */
	char fail[TALLY_REASON_MAX];

	/* JSON events: table= of the request, and the body decoded into line
	 * protocol (jr.lp, what h_write writes), borrowed from this
	 * connection's decoder (made at its first events request) until the
	 * next decode, so a wait for a full store or the sync keeps it. */
	char table[JSONEV_NAME_MAX + 1];
	long table_n; /* -1: no table= */
	jsonev_dec *jd;
	jsonev_result jr;
	httpq *q; /* the query API's state, made at the first query */

	/* Idempotency-Key: SOURCE/SEQ on a write: the body is one labelled
	 * batch (tally_write_lp_labelled), applied at most once. */
	unsigned labelled : 1, duplicate : 1;
	uint64_t label_seq;
	char label[256];

	/* The dashboard's file asked for (wire/web.c), and WEB_* flags. */
	const web_asset *web;
	unsigned web_how;
	/* /query: the request's query string, kept past its head. */
	char *query;
	size_t query_n, query_cap;
} hconn;

static hconn *H(const wconn *c)
{
	return c->ps;
}

static const srv_conf *h_conf(const wconn *c)
{
	return c->sh->srv->conf;
}

static int h_init(wconn *c)
{
	hconn *h = calloc(1, sizeof *h);
	if (!h)
		return -ENOMEM;
	c->ps = h;
	STAT_ADD(c->sh, http_conns, 1);
	return 0;
}

static void h_fini(wconn *c)
{
	hconn *h = H(c);
	if (!h)
		return;
	free(h->mem);
	free(h->gz);
	free(h->query);
	jsonev_dec_free(h->jd);
	httpq_free(h->q);
	free(h);
	c->ps = NULL;
}

static void h_consume(hconn *h, size_t k)
{
	h->buf += k;
	h->len -= k;
	h->cap -= k;
	if (h->len == 0) {
		h->buf = h->mem;
		h->cap = h->mem_cap;
	}
}

/* Room for n more bytes at buf + len; -1 when out of memory. After a
 * compaction the free room is kept at least half the buffer, so the bytes
 * moved are paid for by as many received. */
static int h_room(hconn *h, size_t n)
{
	if (h->len + n <= h->cap)
		return 0;
	size_t want = h->len + n;
	if (h->buf != h->mem) {
		memmove(h->mem, h->buf, h->len);
		h->buf = h->mem;
		h->cap = h->mem_cap;
		if (want <= h->mem_cap / 2)
			return 0;
		want *= 2;
	}
	size_t cap = h->mem_cap ? h->mem_cap : 16384;
	while (cap < want)
		cap *= 2;
	char *q = realloc(h->mem, cap);
	if (!q)
		return -1;
	h->buf = h->mem = q;
	h->cap = h->mem_cap = cap;
	return 0;
}

static int h_paused(const wconn *c)
{
	return c->state != CONN_OPEN || c->sync_ticket || c->retry_at || H(c)->out_full;
}

static void h_check_out(wconn *c)
{
	size_t unsent = conn_unsent(c), limit = h_conf(c)->reply_bytes;
	if (unsent > limit)
		H(c)->out_full = 1;
	else if (unsent < limit / 2)
		H(c)->out_full = 0;
}

static int h_wants_recv(const wconn *c)
{
	if (c->eof)
		return 0;
	if (c->state == CONN_LINGER)
		return 1; /* read and discard, so close() does not reset the answer */
	if (c->state != CONN_OPEN)
		return 0;
	/* A request being received is bounded by its own limits (head,
	 * body); what arrives behind one being served is held up to half
	 * the input buffer, then TCP pushes back. */
	if (!h_paused(c) && (H(c)->st == HS_HEAD || H(c)->st == HS_BODY))
		return 1;
	return H(c)->len < h_conf(c)->input_bytes / 2;
}

/* ---------------------------------------------------------------- answers */

static const char *h_reason(int status)
{
	switch (status) {
	case 100: return "Continue";
	case 200: return "OK";
	case 204: return "No Content";
	case 304: return "Not Modified";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 408: return "Request Timeout";
	case 409: return "Conflict";
	case 411: return "Length Required";
	case 413: return "Content Too Large";
	case 414: return "URI Too Long";
	case 415: return "Unsupported Media Type";
	case 417: return "Expectation Failed";
	case 431: return "Request Header Fields Too Large";
	case 500: return "Internal Server Error";
	case 501: return "Not Implemented";
	case 503: return "Service Unavailable";
	case 505: return "HTTP Version Not Supported";
	default: return "Unknown";
	}
}

static void h_count(wconn *c, int status)
{
	hconn *h = H(c);
	whttp_ep_stats *e = &c->sh->st.http[h->ep];
	atomic_fetch_add_explicit(&e->requests, 1, memory_order_relaxed);
	if (status >= 400)
		atomic_fetch_add_explicit(&e->errors, 1, memory_order_relaxed);
	metrics_hist_observe(&e->lat, h->t0 ? srv_now() - h->t0 : 0);
}

/*
 * Queues one whole answer (never dropped: h_paused stops parsing while too
 * much is unsent). close: the connection ends after it (lingering, so the
 * client reads the answer before the close).
 */
static void h_respond_as(wconn *c, int status, const char *extra, const char *type,
			 const char *body, size_t n, int close)
{
	hconn *h = H(c);
	if (c->state != CONN_OPEN)
		return;
	close |= !h->keep_alive || h->closing;
	char head[1024];
	int k = snprintf(head, sizeof head,
			 "HTTP/1.1 %d %s\r\n" HTTP_VERSION_HDR
			 "%s%s%s%sContent-Length: %zu\r\n%s\r\n",
			 status, h_reason(status), extra ? extra : "", n ? "Content-Type: " : "",
			 n ? type : "", n ? "\r\n" : "", n, close ? "Connection: close\r\n" : "");
	h_count(c, status);
	conn_put(c, head, (size_t)k, 1);
	if (n && !h->head_only)
		conn_put(c, body, n, 1);
	if (close)
		conn_close_with(c, NULL);
}

static void h_respond(wconn *c, int status, const char *extra, const char *body, size_t n,
		      int close)
{
	h_respond_as(c, status, extra, "application/json; charset=utf-8", body, n, close);
}

/* Appends s as the inside of a JSON string. */
static size_t h_json_str(char *out, size_t cap, size_t o, const char *s)
{
	for (; *s && o + 7 < cap; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\') {
			out[o++] = '\\';
			out[o++] = (char)ch;
		} else if (ch < 32) {
			o += (size_t)snprintf(out + o, cap - o, "\\u%04x", ch);
		} else {
			out[o++] = (char)ch;
		}
	}
	return o;
}

/* An error answer in InfluxDB's shape: v2 {"code":..,"message":..}, v1
 * {"error":..}; extra_json (may be NULL) adds members. */
static void h_error(wconn *c, int status, const char *code, const char *msg, const char *extra_json,
		    int close)
{
	char body[4096];
	size_t o;
	if (H(c)->v2) {
		o = (size_t)snprintf(body, sizeof body, "{\"code\":\"%s\",\"message\":\"", code);
		o = h_json_str(body, sizeof body - 256, o, msg);
	} else {
		o = (size_t)snprintf(body, sizeof body, "{\"error\":\"");
		o = h_json_str(body, sizeof body - 256, o, msg);
	}
	o += (size_t)snprintf(body + o, sizeof body - o, "\"%s%s}\n", extra_json ? "," : "",
			      extra_json ? extra_json : "");
	h_respond(c, status,
		  status == 401 ? "WWW-Authenticate: Basic realm=\"tally\"\r\n"
		  : status == 405 && H(c)->ep == HEP_QUERY ? "Allow: GET, HEAD\r\n"
		  : status == 405                          ? "Allow: POST\r\n"
							   : NULL,
		  body, o, close);
}

static void h_finish_request(wconn *c);

/* An error found before the body was read: the body (if any) is not read,
 * so the connection cannot go on after it. Without a body the request is
 * over: it must not be served after its refusal (a 401 followed by the
 * answer it refused). */
static void h_refuse(wconn *c, int status, const char *code, const char *msg)
{
	hconn *h = H(c);
	int body = h->chunked || h->clen > 0;
	h_error(c, status, code, msg, NULL, body);
	if (!body)
		h_finish_request(c);
}

/* ---------------------------------------------------------------- routing */

static enum http_ep h_route(http_str path)
{
	static const struct {
		const char *path;
		enum http_ep ep;
	} routes[] = {
		{"/write", HEP_WRITE_V1},       {"/api/v2/write", HEP_WRITE_V2},
		{"/api/v1/events", HEP_EVENTS}, {"/ping", HEP_PING},
		{"/health", HEP_HEALTH},        {"/ready", HEP_READY},
		{"/metrics", HEP_METRICS},      {"/settings", HEP_SETTINGS},
		{"/query", HEP_INFLUXQL},
	};
	for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
		if (path.n == strlen(routes[i].path) && !memcmp(path.p, routes[i].path, path.n))
			return routes[i].ep;
	return web_find(path.p, path.n) ? HEP_WEB : HEP_OTHER;
}

static int h_is(http_str m, const char *lit)
{
	return m.n == strlen(lit) && !memcmp(m.p, lit, m.n);
}

/* The token from Authorization (Token X, Bearer X, Basic base64(user:X))
 * or v1's p= parameter; 1 when it matches. Every form is compared in
 * constant time. */
static int h_authorized(wconn *c, const http_req *r)
{
	const char *want = h_conf(c)->token;
	if (!want)
		return 1;
	http_str a = r->authorization;
	if (a.n > 6 && !strncasecmp(a.p, "Token ", 6))
		return conn_token_ok(want, a.p + 6, a.n - 6);
	if (a.n > 7 && !strncasecmp(a.p, "Bearer ", 7))
		return conn_token_ok(want, a.p + 7, a.n - 7);
	if (a.n > 6 && !strncasecmp(a.p, "Basic ", 6)) {
		char dec[1024];
		long n = http_base64_decode(a.p + 6, a.n - 6, dec, sizeof dec);
		const char *colon = n > 0 ? memchr(dec, ':', (size_t)n) : NULL;
		int ok = colon && conn_token_ok(want, colon + 1, (size_t)(dec + n - colon - 1));
		explicit_bzero(dec, sizeof dec);
		return ok;
	}
	char p[1024];
	long n = http_query_get(r->query, "p", p, sizeof p);
	int ok = n >= 0 && conn_token_ok(want, p, (size_t)n);
	explicit_bzero(p, sizeof p);
	return ok;
}

/* precision= of either API: n/ns, u/us, ms, s. */
static int h_precision(const http_req *r, enum tally_precision *prec)
{
	char v[16];
	long n = http_query_get(r->query, "precision", v, sizeof v);
	if (n == -1) {
		*prec = TALLY_PREC_NS;
		return 0;
	}
	static const struct {
		const char *name;
		enum tally_precision p;
	} names[] = {{"n", TALLY_PREC_NS},  {"ns", TALLY_PREC_NS}, {"u", TALLY_PREC_US},
		     {"us", TALLY_PREC_US}, {"ms", TALLY_PREC_MS}, {"s", TALLY_PREC_S}};
	for (size_t i = 0; n > 0 && i < sizeof names / sizeof names[0]; i++)
		if (!strcmp(v, names[i].name)) {
			*prec = names[i].p;
			return 0;
		}
	return -1;
}

/* ---------------------------------------------------------------- endpoints */

static int h_ready(const srv *s)
{
	char msg[8];
	return !atomic_load(&s->stopping) &&
	       srv_sync_result((srv *)s, atomic_load(&s->sync_done), msg, sizeof msg) == 0;
}

static void h_ping(wconn *c)
{
	h_respond(c, 204, NULL, NULL, 0, 0);
}

static void h_health(wconn *c)
{
	srv *s = c->sh->srv;
	char msg[256], body[700];
	/* The latest sync that completed: failed, and none succeeded since. */
	int rc = srv_sync_result(s, atomic_load(&s->sync_done), msg, sizeof msg);
	int stopping = atomic_load(&s->stopping) != 0;
	size_t o = (size_t)snprintf(body, sizeof body, "{\"name\":\"tally\",\"message\":\"");
	o = h_json_str(body, sizeof body - 128, o,
		       rc         ? msg
		       : stopping ? "shutting down"
				  : "ready for queries and writes");
	o += (size_t)snprintf(body + o, sizeof body - o,
			      "\",\"status\":\"%s\",\"checks\":[],\"version\":\"1.8.10-tally\","
			      "\"commit\":\"\"}\n",
			      rc || stopping ? "fail" : "pass");
	h_respond(c, rc || stopping ? 503 : 200, NULL, body, o, 0);
}

/* GET /metrics: the Prometheus text exposition (wire/metrics.c). */
static void h_metrics(wconn *c)
{
	char *buf = NULL;
	size_t len = 0, cap = 0;
	int rc = metrics_render(c->sh->srv, &buf, &len, &cap);
	if (rc)
		h_error(c, 500, "internal error", tally_strerror(rc), NULL, 0);
	else
		h_respond_as(c, 200, NULL, "text/plain; version=0.0.4; charset=utf-8", buf, len, 0);
	free(buf);
}

static void h_ready_ep(wconn *c)
{
	srv *s = c->sh->srv;
	char body[200];
	int64_t up = (srv_now() - s->started) / 1000000000;
	int ok = h_ready(s);
	int k = snprintf(body, sizeof body, "{\"status\":\"%s\",\"up\":\"%" PRId64 "s\"}\n",
			 ok ? "ready" : "unavailable", up);
	h_respond(c, ok ? 200 : 503, NULL, body, (size_t)k, 0);
}

/* The answer to a write, once its lines are durable (or the sync failed:
 * sync_rc, its message). */
static void h_events_done(wconn *c, int sync_rc, const char *sync_msg);

static void h_write_done(wconn *c, int sync_rc, const char *sync_msg)
{
	hconn *h = H(c);
	char msg[3000], extra[200];
	if (h->ep == HEP_EVENTS) {
		h_events_done(c, sync_rc, sync_msg);
		return;
	}
	if (sync_rc) {
		snprintf(msg, sizeof msg, "written but not made durable: %s", sync_msg);
		h_error(c, 500, "internal error", msg, NULL, 0);
		return;
	}
	if (!h->rejected && !h->unwritten) {
		/* A retried batch: 204 like the first time, so the client stops,
		 * marked so a curious one can tell. */
		h_respond(c, 204, h->duplicate ? "X-Tally-Duplicate: true\r\n" : NULL, NULL, 0, 0);
		return;
	}
	size_t o = 0;
	if (h->unwritten)
		o += (size_t)snprintf(msg + o, sizeof msg - o,
				      "%" PRIu64 " lines not written (lines %" PRIu64 "-%" PRIu64
				      "): %s; ",
				      h->unwritten, h->lines - h->unwritten + 1, h->lines, h->fail);
	if (h->rejected) {
		o += (size_t)snprintf(msg + o, sizeof msg - o,
				      "partial write: %" PRIu64 " of %" PRIu64
				      " lines rejected, %" PRIu64 " written",
				      h->rejected, h->accepted + h->rejected, h->accepted);
		for (unsigned i = 0; i < h->n_err && o < sizeof msg - 200; i++)
			o += (size_t)snprintf(msg + o, sizeof msg - o, "; line %" PRIu64 ": %s",
					      h->err[i].line, h->err[i].reason);
		if (h->rejected > h->n_err)
			snprintf(msg + o, sizeof msg - o, "; %" PRIu64 " more not itemized",
				 h->rejected - h->n_err);
	}
	snprintf(extra, sizeof extra,
		 "\"line\":%" PRIu64 ",\"accepted\":%" PRIu64 ",\"rejected\":%" PRIu64
		 ",\"unwritten\":%" PRIu64,
		 h->n_err ? h->err[0].line : h->lines - h->unwritten + 1, h->accepted, h->rejected,
		 h->unwritten);
	/* Bad lines are the client's (400); lines left unwritten by a full
	 * store are worth a retry (503); anything else is ours (500). */
	int status = h->unwritten ? (h->fail_rc == TALLY_EFULL ? 503 : 500) : 400;
	h_error(c, status,
		status == 400   ? "invalid"
		: status == 503 ? "unavailable"
				: "internal error",
		msg, extra, 0);
}

/* Where the first `lines` lines of p[0, n) end. */
static size_t h_skip_lines(const char *p, size_t n, uint64_t lines)
{
	size_t i = 0;
	while (lines-- && i < n) {
		const char *q = memchr(p + i, '\n', n - i);
		i = q ? (size_t)(q - p) + 1 : n;
	}
	return i;
}

/* The request's body, decompressed. */
static const char *h_body_text(const hconn *h)
{
	return h->gzip ? h->gz : h->buf;
}

/* The line protocol a write writes: the body, or the JSON events' lines. */
static const char *h_text(const hconn *h)
{
	return h->ep == HEP_EVENTS ? h->jr.lp : h_body_text(h);
}

/* Writes what is left of the body through the shard's writer, like a run
 * of lines on the TCP port. A full store is waited out (up to full-wait)
 * by retrying; then the lines are answered durable or not. */
static void h_write(wconn *c)
{
	hconn *h = H(c);
	wshard *sh = c->sh;
	const srv_conf *cf = h_conf(c);
	const char *text = h_text(h);
	while (h->w_at < h->w_end) {
		tally_write_result res;
		int dup = 0, rc;
		if (h->labelled) {
			rc = tally_write_lp_labelled(sh->w, h->label, h->label_seq, text + h->w_at,
						     h->w_end - h->w_at, h->prec, &res, &dup);
			h->duplicate = dup;
			if (rc == TALLY_ESTALE || rc == TALLY_EINVAL) {
				/* the label itself is refused: nothing was written */
				h_finish_request(c);
				h_error(c, rc == TALLY_ESTALE ? 409 : 400,
					rc == TALLY_ESTALE ? "conflict" : "invalid", tally_errmsg(),
					NULL, 0);
				return;
			}
		} else {
			rc = tally_write_lp(sh->w, text + h->w_at, h->w_end - h->w_at, h->prec,
					    &res);
		}
		/* res covers the first res.lines lines, applied whatever rc. */
		for (unsigned i = 0; i < res.n_errors && h->n_err < HTTP_ERRORS_KEPT; i++) {
			h->err[h->n_err] = res.errors[i];
			h->err[h->n_err++].line += h->lines;
		}
		h->accepted += res.accepted;
		h->rejected += res.rejected;
		h->lines += res.lines;
		STAT_ADD(sh, lines_accepted, res.accepted);
		STAT_ADD(sh, lines_rejected, res.rejected);
		STAT_ADD(sh, http_lines_accepted, res.accepted);
		STAT_ADD(sh, http_lines_rejected, res.rejected);
		if (res.accepted)
			atomic_store_explicit(&sh->srv->dirty, 1, memory_order_relaxed);
		size_t k = h_skip_lines(text + h->w_at, h->w_end - h->w_at, res.lines);
		h->w_at += k;
		if (rc == 0) {
			h->w_at = h->w_end;
			break;
		}
		if (conn_full_wait(c, rc))
			return; /* h_step retries when it is due */
		const char *m = tally_errmsg();
		snprintf(h->fail, sizeof h->fail, "%s", m && *m ? m : tally_strerror(rc));
		h->fail_rc = rc;
		h->unwritten = conn_count_lines(text + h->w_at, h->w_end - h->w_at);
		h->lines += h->unwritten;
		STAT_ADD(sh, lines_rejected, h->unwritten);
		STAT_ADD(sh, http_lines_rejected, h->unwritten);
		h->w_at = h->w_end;
	}
	c->full_since = 0;
	h_finish_request(c); /* the body's bytes are no longer needed */
	/* A duplicate waits too: the batch it repeats may be another
	 * connection's, not yet durable. */
	if ((h->accepted || h->duplicate) && cf->http_durable) {
		c->sync_ticket = srv_sync_ticket(sh->srv);
		sh->n_sync_wait++;
		STAT_ADD(sh, syncs, 1);
		h->st = HS_SYNC;
		return;
	}
	h_write_done(c, 0, NULL);
}

static void h_start_write(wconn *c, size_t n)
{
	hconn *h = H(c);
	h->w_at = 0;
	h->w_end = n;
	h->lines = h->accepted = h->rejected = h->unwritten = 0;
	h->n_err = 0;
	h->fail_rc = 0;
	h->st = HS_WRITE;
	h_write(c);
}

/* One refused event of the answer's "errors" list. */
static size_t h_event_error(char *out, size_t cap, size_t o, uint64_t event, int64_t offset,
			    const char *reason)
{
	o += (size_t)snprintf(out + o, cap - o, "%s{\"event\":%" PRIu64,
			      o && out[o - 1] == '}' ? "," : "", event);
	if (offset >= 0)
		o += (size_t)snprintf(out + o, cap - o, ",\"offset\":%" PRId64, offset);
	o += (size_t)snprintf(out + o, cap - o, ",\"reason\":\"");
	o = h_json_str(out, cap - 8, o, reason);
	o += (size_t)snprintf(out + o, cap - o, "\"}");
	return o;
}

/*
 * The answer to JSON events once their rows are durable: the counts, and
 * the refused events by index, byte offset and reason. Refused by the
 * decoder (bad JSON, wrong member types, no time) or by the engine (a
 * field that changed type: its line maps back to its event). All written:
 * 200 with the counts; some refused: 400; some not written (full store):
 * 503, worth a retry; the sync failed: 500.
 */
static void h_events_done(wconn *c, int sync_rc, const char *sync_msg)
{
	hconn *h = H(c);
	const jsonev_result *r = &h->jr;
	uint64_t rejected = r->rejected + h->rejected;
	char body[8192];
	size_t cap = sizeof body - 64, o = 0;
	int status = sync_rc        ? 500
		     : h->unwritten ? (h->fail_rc == TALLY_EFULL ? 503 : 500)
		     : rejected     ? 400
				    : 200;
	o += (size_t)snprintf(body, cap, "{");
	if (status != 200) {
		char msg[512];
		if (sync_rc)
			snprintf(msg, sizeof msg, "written but not made durable: %s", sync_msg);
		else if (h->unwritten)
			snprintf(msg, sizeof msg, "%" PRIu64 " events not written: %s",
				 h->unwritten, h->fail);
		else if (r->stopped)
			snprintf(msg, sizeof msg,
				 "%" PRIu64 " of %" PRIu64
				 " events refused; invalid JSON at byte %" PRIu64 " ended the body",
				 rejected, r->events, r->stop_offset);
		else
			snprintf(msg, sizeof msg, "%" PRIu64 " of %" PRIu64 " events refused",
				 rejected, r->events);
		o += (size_t)snprintf(body + o, cap - o, "\"code\":\"%s\",\"message\":\"",
				      status == 400   ? "invalid"
				      : status == 503 ? "unavailable"
						      : "internal error");
		o = h_json_str(body, cap, o, msg);
		o += (size_t)snprintf(body + o, cap - o, "\",");
	}
	o += (size_t)snprintf(body + o, cap - o,
			      "\"events\":%" PRIu64 ",\"accepted\":%" PRIu64
			      ",\"rejected\":%" PRIu64 ",\"unwritten\":%" PRIu64,
			      r->events, h->accepted, rejected, h->unwritten);
	if (r->stopped)
		o += (size_t)snprintf(body + o, cap - o, ",\"stopped_at\":%" PRIu64,
				      r->stop_offset);
	if (h->duplicate)
		o += (size_t)snprintf(body + o, cap - o, ",\"duplicate\":true");
	o += (size_t)snprintf(body + o, cap - o, ",\"errors\":[");
	/* The decoder's errors and the engine's, merged in event order. */
	unsigned i = 0, k = 0;
	while ((i < r->n_errors || k < h->n_err) && o < cap - 600) {
		uint64_t ek = k < h->n_err ? jsonev_line_event(r, h->err[k].line) : UINT64_MAX;
		if (i < r->n_errors && (k == h->n_err || r->errors[i].event <= ek)) {
			o = h_event_error(body, cap, o, r->errors[i].event,
					  (int64_t)r->errors[i].offset, r->errors[i].reason);
			i++;
		} else {
			o = h_event_error(body, cap, o, ek, -1, h->err[k].reason);
			k++;
		}
	}
	o += (size_t)snprintf(body + o, sizeof body - o, "]}\n");
	h_respond(c, status, NULL, body, o, 0);
}

/* POST /api/v1/events?table=T: the body decoded by T's mapping into line
 * protocol, then written like a /write body. */
static void h_events(wconn *c, size_t n)
{
	hconn *h = H(c);
	srv *s = c->sh->srv;
	char msg[JSONEV_NAME_MAX + 96];
	if (h->table_n < 0) {
		h_error(c, 400, "invalid",
			h->table_n == -1 ? "table= is required: the table the events go to"
					 : "table= is malformed or too long",
			NULL, 0);
		return;
	}
	const jsonev_map *m = jsonev_maps_find(s->json_maps, h->table, (size_t)h->table_n);
	if (!m) {
		snprintf(msg, sizeof msg, "no json-map for table '%s' (docs/json-events.md)",
			 h->table);
		h_error(c, 404, "not found", msg, NULL, 0);
		return;
	}
	int rc = h->jd ? 0
		       : jsonev_dec_new(&(jsonev_limits){.max_body = h_conf(c)->http_max_body},
					&h->jd);
	if (!rc)
		rc = jsonev_decode(h->jd, m, h_body_text(h), n, srv_clock_ns(), &h->jr);
	if (rc) {
		const char *why = rc == TALLY_ELIMIT && h->jr.n_errors ? h->jr.errors[0].reason
								       : tally_strerror(rc);
		h_error(c, rc == TALLY_ELIMIT ? 413 : 500,
			rc == TALLY_ELIMIT ? "request too large" : "internal error", why, NULL, 0);
		return;
	}
	h_start_write(c, h->jr.lp_len);
}

/* GET /api/v1/...: answered by httpq.c, whole or as a stream that
 * h_step goes on with while the client reads. */
static void h_query(wconn *c)
{
	hconn *h = H(c);
	int more;
	h_finish_request(c); /* httpq_begin copied what the answer needs */
	int st = httpq_serve(h->q, c, h->keep_alive && !h->closing, h->head_only, &more);
	if (st) /* 0: it waits for the other nodes, counted when answered */
		h_count(c, st);
	if (more)
		h->st = HS_STREAM;
	else if (!h->keep_alive || h->closing)
		conn_close_with(c, NULL);
}

/* The body is complete: serve the request. */
static void h_serve(wconn *c)
{
	hconn *h = H(c);
	size_t n = h->body_n;
	if (h->gzip) {
		const char *why = NULL;
		int st = http_gunzip(h->buf, n, h_conf(c)->http_max_body, &h->gz, &h->gz_n,
				     &h->gz_cap, &why);
		STAT_ADD(c->sh, http_gzip_bodies, 1);
		if (st) {
			h_finish_request(c);
			h_error(c, st, st == 413 ? "request too large" : "invalid", why, NULL, 0);
			return;
		}
		n = h->gz_n;
	}
	switch (h->ep) {
	case HEP_WRITE_V1:
	case HEP_WRITE_V2: h_start_write(c, n); return;
	case HEP_PING: h_ping(c); break;
	case HEP_HEALTH: h_health(c); break;
	case HEP_READY: h_ready_ep(c); break;
	case HEP_SETTINGS: {
		/* QuestDB's HTTP sender (protocol_version=auto, its default)
		 * reads this first: tally speaks ILP text, version 1. */
		static const char body[] = "{\"config\":{\"line.proto.support.versions\":[1]}}\n";
		h_respond(c, 200, NULL, body, sizeof body - 1, 0);
		break;
	}
	case HEP_METRICS: h_metrics(c); break;
	case HEP_EVENTS: h_events(c, n); return;
	case HEP_QUERY: h_query(c); return;
	case HEP_WEB: {
		char extra[512];
		const void *body;
		size_t len;
		int st = web_answer(h->web, h->web_how, extra, sizeof extra, &body, &len);
		h_respond_as(c, st, extra, h->web->type, body, len, 0);
		break;
	}
	case HEP_INFLUXQL: {
		char *body = NULL;
		size_t len = 0;
		if (c->sh->srv->n_fan_nodes) {
			/* across nodes (docs/cluster.md): answered by h_step */
			fanjob *j;
			if (!fanserv_influxql(c, h->query, h->query_n, h_body_text(h), n, &j)) {
				c->prod = PROD_FANOUT;
				c->prod_state = j;
				h_finish_request(c);
				h->st = HS_FAN;
				return;
			}
			h_error(c, 503, "unavailable", "cannot start asking the other nodes", NULL,
				0);
			break;
		}
		int st = influxq_http(c->sh->srv->db, h->query, h->query_n, h_body_text(h), n,
				      srv_clock_ns(), &body, &len);
		h_respond(c, st, NULL, body, len, 0);
		free(body);
		break;
	}
	case HEP_OTHER:
	case HEP_N: h_error(c, 404, "not found", "no such endpoint", NULL, 0); break;
	}
	h_finish_request(c);
}

/* Drops the served request's bytes; what follows it is the next one's. */
static void h_finish_request(wconn *c)
{
	hconn *h = H(c);
	if (h->st == HS_HEAD)
		return;
	h_consume(h, h->raw_at);
	h->body_n = h->raw_at = 0;
	h->st = HS_HEAD;
	/* A big body leaves a big buffer: give it back between requests. */
	if (h->mem_cap > (1u << 20) && h->len < (16u << 10)) {
		memmove(h->mem, h->buf, h->len);
		char *p = realloc(h->mem, 64u << 10);
		if (p)
			h->mem = p;
		h->buf = h->mem;
		h->cap = h->mem_cap = p ? 64u << 10 : h->mem_cap;
	}
	if (h->gz_cap > (1u << 20)) {
		free(h->gz);
		h->gz = NULL;
		h->gz_cap = 0;
	}
}

/* ---------------------------------------------------------------- reading */

/* Idempotency-Key: SOURCE/SEQ (label.h). 0 when absent or good, -1 when
 * malformed. */
static int h_idempotency_key(hconn *h, http_str v)
{
	h->labelled = h->duplicate = 0;
	if (v.n == 0)
		return 0;
	if (label_parse(v.p, v.n, h->label, sizeof h->label, &h->label_seq))
		return -1;
	h->labelled = 1;
	return 0;
}

/* Keeps a copy of the query string in h->query; -1 when out of memory. */
static int h_keep_query(hconn *h, http_str q)
{
	if (q.n + 1 > h->query_cap) {
		char *p = realloc(h->query, q.n + 1);
		if (!p)
			return -1;
		h->query = p;
		h->query_cap = q.n + 1;
	}
	if (q.n)
		memcpy(h->query, q.p, q.n);
	h->query[q.n] = 0;
	h->query_n = q.n;
	return 0;
}

/* Parses a complete head; 1 when the request goes on to its body. */
static int h_head(wconn *c)
{
	hconn *h = H(c);
	const srv_conf *cf = h_conf(c);
	/* Blank lines before a request are ignored (RFC 9112 2.2): some
	 * clients end a body with an extra CRLF. */
	size_t lead = 0;
	while (lead + 1 < h->len && h->buf[lead] == '\r' && h->buf[lead + 1] == '\n')
		lead += 2;
	h_consume(h, lead);
	if (h->len == 0)
		return 0;
	if (!h->head_since)
		h->head_since = srv_now();
	long hl = http_head_len(h->buf, h->len, cf->http_max_header);
	h->ep = HEP_OTHER;
	h->v2 = 0;
	h->keep_alive = 0; /* until the head says otherwise: errors close */
	h->head_only = 0;
	h->chunked = 0;
	h->clen = 0;
	h->t0 = srv_now();
	if (hl < 0) {
		h_error(c, (int)-hl, "invalid",
			hl == -414 ? "request line too long" : "request head too large", NULL, 1);
		return 0;
	}
	if (hl == 0)
		return 0;
	http_req r;
	const char *why = NULL;
	int st = http_parse_head(h->buf, (size_t)hl, &r, &why);
	if (st) {
		h_error(c, st, "invalid", why, NULL, 1);
		return 0;
	}
	h->head_since = 0;
	h->body_since = srv_now();
	h->ep = h_route(r.path);
	if (h->ep == HEP_OTHER && httpq_route(cf, r.path))
		h->ep = HEP_QUERY;
	h->v2 = h->ep == HEP_WRITE_V2 || (r.path.n >= 8 && !memcmp(r.path.p, "/api/v2/", 8));
	h->keep_alive = r.keep_alive;
	h->chunked = r.chunked;
	h->gzip = r.gzip;
	h->clen = r.content_length > 0 ? r.content_length : 0;
	h->head_only = h_is(r.method, "HEAD");
	memset(&h->ck, 0, sizeof h->ck);
	int is_write = h->ep == HEP_WRITE_V1 || h->ep == HEP_WRITE_V2 || h->ep == HEP_EVENTS;
	int get = h_is(r.method, "GET") || h->head_only;
	/* Consumed now: the strings of r are not used past this point. */
	int expect = r.expect_continue;
	h->web = h->ep == HEP_WEB ? web_find(r.path.p, r.path.n) : NULL;
	h->web_how = h->web ? web_negotiate(h->web, http_header(&r, "accept-encoding"),
					    http_header(&r, "if-none-match"))
			    : 0;
	enum tally_precision prec = TALLY_PREC_NS;
	int prec_bad = is_write && h->ep != HEP_EVENTS && h_precision(&r, &prec);
	h->table_n = h->ep == HEP_EVENTS
			     ? http_query_get(r.query, "table", h->table, sizeof h->table)
			     : -1;
	int key_bad = is_write && h_idempotency_key(h, http_header(&r, "idempotency-key"));
	/* What a load balancer or a client's probe asks needs no token, and
	 * says nothing about the data. */
	int authed = h->ep == HEP_PING || h->ep == HEP_HEALTH || h->ep == HEP_READY ||
		     h->ep == HEP_SETTINGS || h_authorized(c, &r);
	int method_ok = is_write ? h_is(r.method, "POST") : get || h->ep == HEP_OTHER;
	if (h->ep == HEP_QUERY && httpq_wants_post(r.path))
		method_ok = h_is(r.method, "POST"); /* it changes data */
	int q_fail = h->ep == HEP_QUERY && method_ok &&
		     ((!h->q && httpq_new(&h->q)) || httpq_begin(h->q, &r));
	if (h->ep == HEP_INFLUXQL) {
		/* InfluxQL reads its parameters from the query string and a
		 * POST's form body; the head's bytes are gone by then. */
		method_ok |= h_is(r.method, "POST");
		if (h_keep_query(h, r.query)) {
			h_consume(h, (size_t)hl);
			h->st = HS_BODY;
			h_refuse(c, 500, "internal error", "out of memory");
			return 0;
		}
	}
	if (h->ep == HEP_PING && h_is(r.method, "POST"))
		method_ok = 1; /* some clients ping with POST */
	h_consume(h, (size_t)hl);
	h->st = HS_BODY;
	h->prec = prec;
	if (!method_ok) {
		h_refuse(c, 405, "method not allowed", "method not allowed on this endpoint");
		return 0;
	}
	if (q_fail) {
		h_refuse(c, 500, "internal error", "out of memory");
		return 0;
	}
	if (!authed) {
		char p1[1]; /* is there a p= at all: -1 when absent */
		conn_auth_log(c,
			      r.authorization.n || http_query_get(r.query, "p", p1, sizeof p1) != -1
				      ? "a wrong token over HTTP"
				      : "no token over HTTP");
		h_refuse(c, 401, "unauthorized",
			 "unauthorized access: a token is required "
			 "(Authorization: Token ..., Bearer, Basic, or "
			 "p=)");
		return 0;
	}
	if (prec_bad) {
		h_refuse(c, 400, "invalid", "precision must be ns, n, us, u, ms or s");
		return 0;
	}
	if (key_bad) {
		h_refuse(c, 400, "invalid",
			 "Idempotency-Key must be SOURCE/SEQ: a source id of 1-255 bytes and a "
			 "decimal sequence number");
		return 0;
	}
	if ((uint64_t)h->clen > cf->http_max_body) {
		h_refuse(c, 413, "request too large", "body larger than http-max-body-bytes");
		return 0;
	}
	if (expect && (h->chunked || h->clen > 0) && h->len == 0)
		conn_put(c, "HTTP/1.1 100 Continue\r\n\r\n", 25, 1);
	return 1;
}

/* Reads the body as far as it has arrived; 1 when it is complete. */
static int h_body(wconn *c)
{
	hconn *h = H(c);
	size_t max = h_conf(c)->http_max_body;
	if (!h->chunked) {
		if (h->len < (uint64_t)h->clen)
			return 0;
		h->body_n = h->raw_at = (size_t)h->clen;
		return 1;
	}
	int done = 0;
	const char *why = NULL;
	long at = http_chunked_feed(&h->ck, h->buf, h->raw_at, h->len, &h->body_n, &done, &why);
	if (at < 0) {
		h_error(c, 400, "invalid", why, NULL, 1);
		return 0;
	}
	h->raw_at = (size_t)at;
	if (h->body_n > max) {
		h_error(c, 413, "request too large", "body larger than http-max-body-bytes", NULL,
			1);
		return 0;
	}
	if (!done && h->raw_at == h->len)
		h->len = h->raw_at = h->body_n; /* the raw bytes are decoded: reuse the room */
	return done;
}

static void h_step(wconn *c)
{
	hconn *h = H(c);
	srv *s = c->sh->srv;
	/* Each turn serves a request or ends a wait, else stops: paused, or
	 * short of bytes (the only way out with the connection open and
	 * unpaused, which the EOF check below relies on). A long pipeline is
	 * bounded by the pause at reply-buffer-bytes of answers. */
	while (c->state == CONN_OPEN) {
		if (c->sync_ticket) {
			if (atomic_load_explicit(&s->sync_done, memory_order_acquire) <
			    c->sync_ticket)
				break;
			char msg[256];
			int rc = srv_sync_result(s, c->sync_ticket, msg, sizeof msg);
			c->sync_ticket = 0;
			c->sh->n_sync_wait--;
			h->st = HS_HEAD;
			h_write_done(c, rc, msg);
			continue;
		}
		if (c->retry_at) {
			if (srv_now() < c->retry_at)
				break;
			c->retry_at = 0;
			h_write(c);
			continue;
		}
		if (h->st == HS_FAN) {
			char *body;
			size_t len;
			int st;
			if (c->prod != PROD_FANOUT ||
			    !fanserv_take(c->prod_state, &body, &len, &st))
				break;
			fanserv_release(c->prod_state);
			c->prod = PROD_NONE;
			c->prod_state = NULL;
			h->st = HS_HEAD;
			h_respond(c, body ? st : 500, NULL, body, len, 0);
			free(body);
			continue;
		}
		if (h->st == HS_STREAM) {
			if (conn_unsent(c) >= h_conf(c)->reply_bytes / 2 || !httpq_pump(h->q, c))
				break;
			int st = httpq_status(h->q);
			if (st)
				h_count(c, st);
			h->st = HS_HEAD;
			if (c->state == CONN_OPEN && (!h->keep_alive || h->closing))
				conn_close_with(c, NULL);
			continue;
		}
		h_check_out(c);
		if (h_paused(c))
			break;
		if (h->st == HS_HEAD && !h_head(c))
			break;
		if (h->st == HS_BODY) {
			if (!h_body(c))
				break;
			h_serve(c);
		}
	}
	h_check_out(c);
	if (c->state == CONN_OPEN && c->eof && !h_paused(c)) {
		/* The client is done sending: a request cut short is answered
		 * (it can still read), an idle connection just closes. */
		if (h->st == HS_HEAD && h->len == 0)
			conn_close_with(c, NULL);
		else if (h->st == HS_HEAD || h->st == HS_BODY)
			h_error(c, 400, "invalid", "the request ended before its end", NULL, 1);
	}
	conn_linger_step(c);
}

static void h_on_data(wconn *c, const char *p, size_t n)
{
	hconn *h = H(c);
	STAT_ADD(c->sh, bytes_in, n);
	c->last_active = srv_now();
	if (c->state != CONN_OPEN || n == 0)
		return; /* lingering: read only to be discarded */
	if (h_room(h, n)) {
		h_error(c, 500, "internal error", "out of memory", NULL, 1);
		conn_linger_step(c);
		return;
	}
	memcpy(h->buf + h->len, p, n);
	h->len += n;
	h_step(c);
}

static void h_tick(wconn *c, int64_t now)
{
	hconn *h = H(c);
	const srv_conf *cf = h_conf(c);
	if (conn_linger_tick(c, now))
		return;
	if (c->retry_at && now >= c->retry_at) {
		h_step(c);
		return;
	}
	if (h->st == HS_HEAD && h->head_since && now - h->head_since > cf->http_header_ns) {
		STAT_ADD(c->sh, http_header_timeouts, 1);
		h->ep = HEP_OTHER;
		h_error(c, 408, "invalid", "request head not received in time", NULL, 1);
		conn_linger_step(c);
		return;
	}
	/* A body that drips (a byte now and then) would hold the connection
	 * and its buffer for as long as the client likes: it has its own
	 * deadline, from the head's end. */
	if (h->st == HS_BODY && h->body_since && now - h->body_since > cf->http_body_ns) {
		STAT_ADD(c->sh, http_body_timeouts, 1);
		h_error(c, 408, "invalid", "request body not received in time (http-body-timeout)",
			NULL, 1);
		conn_linger_step(c);
		return;
	}
	if (cf->idle_ns && now - c->last_active > cf->idle_ns && !c->sync_ticket) {
		STAT_ADD(c->sh, idle_closed, 1);
		conn_close_with(c, NULL);
	}
}

/* SIGTERM: an idle connection closes now; one in a request finishes it and
 * says Connection: close. */
static void h_begin_shutdown(wconn *c)
{
	hconn *h = H(c);
	if (c->state != CONN_OPEN)
		return;
	h->closing = 1;
	if (h->st == HS_HEAD && h->len == 0 && !c->sync_ticket && !c->retry_at)
		conn_close_with(c, NULL);
	conn_linger_step(c);
}

const wproto httpd_proto = {
	.name = "HTTP",
	.init = h_init,
	.on_data = h_on_data,
	.step = h_step,
	.tick = h_tick,
	.wants_recv = h_wants_recv,
	.begin_shutdown = h_begin_shutdown,
	.fini = h_fini,
};
