/*
 * conn.c — one connection's protocol: framing, writes, commands, replies.
 *
 * Bytes arrive in the shard's receive buffers. The runs of whole records in
 * a buffer go straight from it to tally_write_lp on the shard's writer, one
 * call per run, with no copy; only a record cut by the packet boundary is
 * copied (into c->in) and completed by the next packet. Command records
 * ("#!...") split a run: the lines before are written, the command runs,
 * the lines after are written next, so every reply comes in input order.
 *
 * The one idea that keeps a connection from hurting its shard: a
 * connection only ever waits by *not reading*. A sync, a streamed query
 * answer or a full store pauses it (c->in keeps what was already
 * received; the loop stops receiving; TCP pushes back on the client) while
 * the shard thread goes on serving everyone else. Small replies to a
 * client that does not read are dropped and counted, never queued without
 * bound; big answers are produced row by row only as fast as they are
 * read.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cmd.h"
#include "distcmd.h"
#include "fancat.h"
#include "fandist.h"
#include "frame.h"
#include "series.h"
#include "kafka.h"
#include "server.h"
#include "fanserv.h"
#include "offloop.h"
#include "tls.h"

#define CONN_RETRY_NS      (50 * INT64_C(1000000)) /* re-try a write into a full store */
#define CONN_LINGER_NS     (2 * INT64_C(1000000000))
#define CONN_AUTH_DELAY_NS (INT64_C(1000000000)) /* before "authentication failed" */
#define CONN_ROW_MAX       512                   /* a formatted row without strings, bytes */
_Static_assert(CONN_ROW_MAX >= 40 + CMD_AGG_MAX, "a series row fits CONN_ROW_MAX");
#define STAT_ADD(sh, f, v) atomic_fetch_add_explicit(&(sh)->st.f, (v), memory_order_relaxed)

typedef struct prod_series {
	char *table, *field, *key; /* what s borrows */
	uint64_t line, rows;
	wseries s;
} prod_series;

typedef struct prod_keys {
	tally_keys_iter *it;
	uint64_t line, rows;
} prod_keys;

typedef struct prod_scan {
	tally_scan *s;
	uint64_t line, rows, limit;
} prod_scan;

static const srv_conf *conn_conf(const wconn *c)
{
	return c->sh->srv->conf;
}

/* Replies not yet on the wire: out's, and with TLS those already
 * encrypted (not in out any more, but not sent either). */
size_t conn_unsent(const wconn *c)
{
	return c->out_tail - c->out_head + tls_pending(c);
}

static int lp_wants_recv(const wconn *c)
{
	if (c->eof)
		return 0;
	if (c->state == CONN_LINGER)
		return 1; /* read and discard, so close() does not reset the last replies */
	if (c->state != CONN_OPEN || c->final_sync)
		return 0;
	/* Keep reading while there is room, even when paused: what arrives is
	 * kept in c->in up to input-buffer-bytes, then TCP pushes back. */
	if (c->sync_ticket || c->retry_at || c->auth_fail_at || c->prod != PROD_NONE)
		return c->in_len - c->in_head < conn_conf(c)->input_bytes / 2;
	return 1;
}

static int conn_paused(const wconn *c)
{
	return c->state != CONN_OPEN || c->sync_ticket || c->retry_at || c->auth_fail_at ||
	       c->prod != PROD_NONE;
}

wconn *conn_new(wshard *sh, int fd, const wproto *proto)
{
	wconn *c = calloc(1, sizeof *c);
	if (!c)
		return NULL;
	c->sh = sh;
	c->proto = proto;
	c->fd = fd;
	c->prec = TALLY_PREC_NS;
	c->authed = sh->srv->conf->token == NULL;
	c->born = c->last_active = srv_now();
	if (proto->init && proto->init(c)) {
		free(c);
		return NULL;
	}
	return c;
}

static void conn_prod_free(wconn *c)
{
	switch (c->prod) {
	case PROD_SERIES: {
		prod_series *ps = c->prod_state;
		free(ps->table);
		free(ps->field);
		free(ps->key);
		break;
	}
	case PROD_KEYS: tally_keys_close(((prod_keys *)c->prod_state)->it); break;
	case PROD_SCAN: tally_scan_close(((prod_scan *)c->prod_state)->s); break;
	case PROD_FANOUT:
		fanserv_release(c->prod_state);
		c->prod_state = NULL;
		break;
	case PROD_JOB:
		offloop_release(c->prod_state);
		c->prod_state = NULL;
		break;
	case PROD_NONE: break;
	}
	free(c->prod_state);
	c->prod_state = NULL;
	c->prod = PROD_NONE;
}

static void lbatch_free(wconn *c);

/* A line-protocol connection that must authenticate is counted until it
 * does (or closes): past max-unauthenticated it is closed at the next tick,
 * so silent connections cannot hold every slot. */
static int lp_init(wconn *c)
{
	if (!c->authed) {
		c->unauth_counted = 1;
		unsigned n = atomic_fetch_add(&c->sh->srv->n_unauth, 1) + 1;
		c->unauth_over = n > conn_conf(c)->max_unauth;
	}
	return 0;
}

static void conn_unauth_done(wconn *c)
{
	if (c->unauth_counted)
		atomic_fetch_sub(&c->sh->srv->n_unauth, 1);
	c->unauth_counted = 0;
}

static void lp_fini(wconn *c)
{
	lbatch_free(c);
	conn_unauth_done(c);
	conn_prod_free(c);
}

void conn_free(wconn *c)
{
	if (!c)
		return;
	if (c->proto->fini)
		c->proto->fini(c);
	conn_prod_free(c); /* an HTTP query across nodes waits as PROD_FANOUT too */
	free(c->in);
	free(c->out);
	free(c->out_old);
	free(c);
}

/* ---------------------------------------------------------------- replies */

/* Room for n more bytes at out_tail; only force may pass the limit. */
static int conn_out_room(wconn *c, size_t n, int force)
{
	size_t limit = conn_conf(c)->reply_bytes;
	if (!force && conn_unsent(c) + n > limit)
		return -1;
	if (!c->send_busy && c->out_head) { /* the kernel holds no pointer into out */
		memmove(c->out, c->out + c->out_head, c->out_tail - c->out_head);
		c->out_tail -= c->out_head;
		c->out_head = 0;
	}
	if (c->out_tail + n <= c->out_cap)
		return 0;
	size_t cap = c->out_cap ? c->out_cap : 4096;
	while (cap < c->out_tail + n)
		cap *= 2;
	char *o;
	if (c->send_busy) {
		/* A send in flight reads out when the socket has room again:
		 * realloc could free it under the kernel. Copy, and keep the
		 * buffer the send reads until its completion (an intermediate
		 * one nobody reads goes now). */
		if (!(o = malloc(cap)))
			return -1;
		memcpy(o, c->out, c->out_tail);
		if (c->out_old)
			free(c->out);
		else
			c->out_old = c->out;
	} else if (!(o = realloc(c->out, cap))) {
		return -1;
	}
	c->out = o;
	c->out_cap = cap;
	return 0;
}

/* Tells the client how many replies it missed, where they would have been,
 * as soon as the reply buffer has room for the note: from conn_put, and
 * from conn_sent, so a client that only reads (and sends nothing more)
 * hears the exact count too. While a count is pending every later small
 * reply is dropped and counted with it, so replies stay in input order and
 * notes plus replies account for every command. force: the connection is
 * closing; one note may pass the limit. */
static void conn_note_drops(wconn *c, size_t then, int force)
{
	if (!c->dropped_unreported)
		return;
	char note[128];
	int k = snprintf(note, sizeof note,
			 "ERR replies dropped: %" PRIu64 " (the client did not read them)\n",
			 c->dropped_unreported);
	if (conn_out_room(c, (size_t)k + then, force))
		return;
	memcpy(c->out + c->out_tail, note, (size_t)k);
	c->out_tail += (size_t)k;
	c->dropped_unreported = 0;
	srv_conn_dirty(c);
}

/* Appends one whole reply, or drops it whole when the client is not
 * reading (more than reply-buffer-bytes unsent). force: never drop (the
 * rows of a streamed answer, whose producer waits for room itself). */
void conn_put(wconn *c, const char *s, size_t n, int force)
{
	if (c->state == CONN_DEAD)
		return;
	if (!force)
		conn_note_drops(c, n, 0);
	if ((c->dropped_unreported && !force) || conn_out_room(c, n, force)) {
		c->dropped_unreported++;
		STAT_ADD(c->sh, replies_dropped, 1);
		return;
	}
	memcpy(c->out + c->out_tail, s, n);
	c->out_tail += n;
	srv_conn_dirty(c);
}

__attribute__((format(printf, 3, 4))) static void conn_putf(wconn *c, int force, const char *fmt,
							    ...)
{
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof buf - 2)
		n = sizeof buf - 2;
	buf[n++] = '\n';
	conn_put(c, buf, (size_t)n, force);
}

const char *conn_errmsg(int rc)
{
	const char *m = tally_errmsg();
	return m && *m ? m : tally_strerror(rc);
}

/* Appends s[0, n) escaped for a tab-separated cell: \\ \t \n \r. */
typedef struct conn_text {
	char *p;
	size_t n, cap;
	int oom;
} conn_text;

static void text_grow(conn_text *t, size_t more)
{
	if (t->oom || t->n + more <= t->cap)
		return;
	size_t cap = t->cap ? t->cap : 1024;
	while (cap < t->n + more)
		cap *= 2;
	char *p = realloc(t->p, cap);
	if (!p) {
		t->oom = 1;
		return;
	}
	t->p = p;
	t->cap = cap;
}

/* The shard's formatting buffer: reused, so answering allocates nothing
 * once it has grown to the largest answer piece. */
static conn_text text_take(wshard *sh)
{
	return (conn_text){.p = sh->text_buf, .n = 0, .cap = sh->text_cap};
}

static void text_give(wshard *sh, conn_text *t)
{
	sh->text_buf = t->p;
	sh->text_cap = t->cap;
}

static void text_raw(conn_text *t, const char *s, size_t n)
{
	text_grow(t, n);
	if (t->oom)
		return;
	memcpy(t->p + t->n, s, n);
	t->n += n;
}

static void text_cell(conn_text *t, const char *s, size_t n)
{
	text_grow(t, 2 * n);
	if (t->oom)
		return;
	for (size_t i = 0; i < n; i++) {
		char ch = s[i], e = ch == '\\'   ? '\\'
				    : ch == '\t' ? 't'
				    : ch == '\n' ? 'n'
				    : ch == '\r' ? 'r'
						 : 0;
		if (e) {
			t->p[t->n++] = '\\';
			t->p[t->n++] = e;
		} else {
			t->p[t->n++] = ch;
		}
	}
}

/* Room for one row of fixed-width pieces; NULL when out of memory. They
 * are formatted straight into the buffer after this one capacity check:
 * a 288-row series is over a thousand numbers, and a copy per piece was a
 * tenth of the query. */
static char *text_row(conn_text *t)
{
	text_grow(t, CONN_ROW_MAX);
	return t->oom ? NULL : t->p + t->n;
}

static void text_row_done(conn_text *t, char *end)
{
	t->n = (size_t)(end - t->p);
}

static void text_f64(conn_text *t, double v)
{
	char *p = text_row(t);
	if (p)
		text_row_done(t, cmd_put_f64(p, v));
}

static void text_time(conn_text *t, int64_t ns)
{
	char *p = text_row(t);
	if (p)
		text_row_done(t, p + cmd_format_time(ns, p));
}

static void text_agg(conn_text *t, const tally_agg *a)
{
	char *p = text_row(t);
	if (p)
		text_row_done(t, cmd_put_agg(p, a));
}

/* ---------------------------------------------------------------- producers */

/* Writes the next rows of the streamed answer while there is room; 1 when
 * the answer is complete. */
static int conn_pump_series(wconn *c, prod_series *ps, conn_text *t)
{
	tally_db *db = c->sh->srv->db;
	while (t->n < conn_conf(c)->reply_bytes / 2 && !t->oom) {
		const tally_bucket *b;
		int rc = series_next(db, &ps->s, &b);
		if (rc == 0)
			return 1;
		if (rc < 0) {
			char m[300];
			int k = snprintf(m, sizeof m, "ERR line %" PRIu64 ": series: %s\n",
					 ps->line, conn_errmsg(rc));
			text_raw(t, m, (size_t)k);
			return -1;
		}
		char *p = text_row(t);
		if (!p) {
			ps->s.i--; /* not written: taken again at the next pump */
			break;
		}
		text_row_done(t, cmd_put_bucket(p, b));
		ps->rows++;
	}
	return 0;
}

static int conn_pump_keys(wconn *c, prod_keys *pk, conn_text *t)
{
	while (t->n < conn_conf(c)->reply_bytes / 2 && !t->oom) {
		const char *key;
		tally_agg a;
		int r = tally_keys_next(pk->it, &key, &a);
		if (r == 0)
			return 1;
		if (r < 0) {
			char m[300];
			int k = snprintf(m, sizeof m, "ERR line %" PRIu64 ": keys: %s\n", pk->line,
					 conn_errmsg(r));
			text_raw(t, m, (size_t)k);
			return -1;
		}
		text_cell(t, key, strlen(key));
		text_raw(t, "\t", 1);
		text_agg(t, &a);
		pk->rows++;
	}
	return 0;
}

static int conn_pump_scan(wconn *c, prod_scan *sc, conn_text *t)
{
	while (t->n < conn_conf(c)->reply_bytes / 2 && !t->oom) {
		if (sc->limit && sc->rows >= sc->limit)
			return 1;
		tally_row row;
		int r = tally_scan_next(sc->s, &row);
		if (r == 0)
			return 1;
		if (r < 0) {
			char m[300];
			int k = snprintf(m, sizeof m, "ERR line %" PRIu64 ": scan: %s\n", sc->line,
					 conn_errmsg(r));
			text_raw(t, m, (size_t)k);
			return -1;
		}
		text_time(t, row.ts);
		for (size_t i = 0; i < row.n_values; i++) {
			const tally_value *v = &row.values[i];
			char b[32];
			int k = 0;
			text_raw(t, "\t", 1);
			switch (v->type) {
			case TALLY_T_F64: text_f64(t, v->v.f64); break;
			case TALLY_T_I64: k = snprintf(b, sizeof b, "%" PRId64, v->v.i64); break;
			case TALLY_T_U64: k = snprintf(b, sizeof b, "%" PRIu64, v->v.u64); break;
			case TALLY_T_BOOL:
				k = snprintf(b, sizeof b, "%s", v->v.b ? "true" : "false");
				break;
			case TALLY_T_STR:
			case TALLY_T_TAG: text_cell(t, v->v.str.ptr, v->v.str.len); break;
			case TALLY_T_NONE: break;
			}
			if (k > 0)
				text_raw(t, b, (size_t)k);
		}
		text_raw(t, "\n", 1);
		sc->rows++;
	}
	return 0;
}

/* Produces more of the streamed answer when the unsent replies are below
 * half the reply buffer. */
static void conn_pump(wconn *c)
{
	if (c->prod == PROD_NONE || c->state != CONN_OPEN)
		return;
	if (conn_unsent(c) >= conn_conf(c)->reply_bytes / 2)
		return;
	conn_text t = text_take(c->sh);
	int done = 0;
	uint64_t rows = 0;
	switch (c->prod) {
	case PROD_SERIES:
		done = conn_pump_series(c, c->prod_state, &t);
		rows = ((prod_series *)c->prod_state)->rows;
		break;
	case PROD_KEYS:
		done = conn_pump_keys(c, c->prod_state, &t);
		rows = ((prod_keys *)c->prod_state)->rows;
		break;
	case PROD_SCAN:
		done = conn_pump_scan(c, c->prod_state, &t);
		rows = ((prod_scan *)c->prod_state)->rows;
		break;
	case PROD_FANOUT:
		/* the merged answer carries its own END line: 2 adds none */
		done = fanserv_pump(c, c->prod_state) ? 2 : 0;
		break;
	case PROD_JOB: done = offloop_pump(c, c->prod_state) ? 2 : 0; break;
	case PROD_NONE: break;
	}
	if (t.oom) {
		text_give(c->sh, &t);
		conn_close_with(c, "ERR out of memory while answering; closing");
		return;
	}
	if (done == 1) {
		char e[40];
		int k = snprintf(e, sizeof e, "END %" PRIu64 "\n", rows);
		text_raw(&t, e, (size_t)k);
	}
	if (t.n)
		conn_put(c, t.p, t.n, 1);
	text_give(c->sh, &t);
	if (done)
		conn_prod_free(c);
}

/* ---------------------------------------------------------------- commands */

int conn_log_due(_Atomic int64_t *at, _Atomic uint64_t *unlogged, int secs, uint64_t *more)
{
	int64_t now = srv_now(), last = atomic_load(at);
	if ((last == 0 || now - last >= secs * INT64_C(1000000000)) &&
	    atomic_compare_exchange_strong(at, &last, now)) {
		*more = atomic_exchange(unlogged, 0);
		return 1;
	}
	atomic_fetch_add(unlogged, 1);
	return 0;
}

void conn_auth_log(wconn *c, const char *what)
{
	srv *s = c->sh->srv;
	uint64_t more;
	atomic_fetch_add_explicit(&c->sh->st.auth_failures, 1, memory_order_relaxed);
	if (!conn_log_due(&s->auth_fail_logged, &s->auth_fail_unlogged, 10, &more))
		return;
	char host[64] = "?";
	peer_addr pa;
	if (peer_of(c->fd, &pa) == 0)
		peer_format(&pa, host, sizeof host);
	srv_log(s, TALLY_LOG_WARN,
		"authentication failed: %s from %s (%" PRIu64
		" more failures since the last such line)",
		what, host, more);
}

/* The answer to a wrong token comes a second later (at the tick after
 * CONN_AUTH_DELAY_NS), the connection paused meanwhile: with
 * max-unauthenticated connections at once, guessing is bounded to about
 * that many tries a second. */
static void conn_auth_failed(wconn *c)
{
	conn_auth_log(c, "a wrong token");
	c->auth_fail_at = srv_now() + CONN_AUTH_DELAY_NS;
}

int conn_token_ok(const char *want, const char *got, size_t gl)
{
	/* Constant time in the presented token: every byte of want is
	 * compared whatever got holds, and the lengths enter the result. */
	size_t wl = strlen(want);
	unsigned char diff = (unsigned char)(wl != gl);
	for (size_t i = 0; i < wl; i++)
		diff |= (unsigned char)want[i] ^ (unsigned char)(i < gl ? got[i] : 0);
	return diff == 0;
}

/* One "name\tvalue" row of #!stats into the answer, counted. */
typedef struct conn_stats_out {
	conn_text *t;
	size_t n;
} conn_stats_out;

static void conn_stats_row(void *ctx, const char *name, uint64_t v)
{
	conn_stats_out *o = ctx;
	char b[320];
	int k = snprintf(b, sizeof b, "%s\t%" PRIu64 "\n", name, v);
	if (k > 0 && (size_t)k < sizeof b) {
		text_raw(o->t, b, (size_t)k);
		o->n++;
	}
}

static void conn_stats(wconn *c)
{
	srv *s = c->sh->srv;
	tally_stats es;
	conn_text t = text_take(c->sh);
	int rc = tally_db_stats(s->db, &es);
	if (rc) {
		conn_putf(c, 0, "ERR line %" PRIu64 ": stats: %s", c->lines + 1, conn_errmsg(rc));
		return;
	}
	uint64_t sum[22] = {0}, http_req = 0, http_err = 0;
	for (unsigned i = 0; i < s->n_shards; i++) {
		wstats *w = &s->shards[i].st;
		_Atomic uint64_t *f[22] = {&w->conns_total,
					   &w->conns_refused,
					   &w->bytes_in,
					   &w->bytes_out,
					   &w->lines_accepted,
					   &w->lines_rejected,
					   &w->commands,
					   &w->queries,
					   &w->syncs,
					   &w->replies_dropped,
					   &w->idle_closed,
					   &w->full_waits,
					   &w->http_conns,
					   &w->http_lines_accepted,
					   &w->http_lines_rejected,
					   &w->http_gzip_bodies,
					   &w->http_header_timeouts,
					   &w->http_on_lp_port,
					   &w->auth_failures,
					   &w->auth_closed,
					   &w->conns_refused_peer,
					   &w->http_body_timeouts};
		for (int k = 0; k < 22; k++)
			sum[k] += atomic_load_explicit(f[k], memory_order_relaxed);
		for (int e = 0; e < HEP_N; e++) {
			http_req +=
				atomic_load_explicit(&w->http[e].requests, memory_order_relaxed);
			http_err += atomic_load_explicit(&w->http[e].errors, memory_order_relaxed);
		}
	}
	struct {
		const char *name;
		uint64_t v;
	} rows[] = {
		{"events", es.events},
		{"late_events", es.late_events},
		{"rejected_lines", es.rejected_lines},
		{"keys", es.keys},
		{"tables", es.tables},
		{"memtable_bytes", es.memtable_bytes},
		{"rollup_bytes", es.rollup_bytes},
		{"cache_bytes", es.cache_bytes},
		{"cache_mapped_bytes", es.cache_mapped_bytes},
		{"cache_hits", es.cache_hits},
		{"cache_misses", es.cache_misses},
		{"memory_limit", es.memory_limit},
		{"key_bytes", es.key_bytes},
		{"query_bytes", es.query_bytes},
		{"prefault_pending", es.prefault_pending},
		{"wal_bytes", es.wal_bytes},
		{"wal_syncs", es.wal_syncs},
		{"wal_write_errors", es.wal_write_errors},
		{"failed_shards", es.failed_shards},
		{"shards", es.shards},
		{"parts", es.parts},
		{"part_bytes", es.part_bytes},
		{"sealed_parts", es.sealed_parts},
		/* rows in parts, and rows flushes and merges wrote into parts
		 * (write_amplification is their ratio to the rows accepted) */
		{"part_rows", es.part_rows},
		{"rows_written", (uint64_t)llround(es.write_amplification * (double)es.part_rows)},
		/* tiering (docs/operations.md, "Watching it"); all 0 when off */
		{"tier_state", (uint64_t)es.tier_state},
		{"tiered_parts", es.tiered_parts},
		{"remote_bytes", es.remote_bytes},
		{"tier_due", es.tier_due},
		{"tier_uploads", es.tier_uploads},
		{"tier_upload_bytes", es.tier_upload_bytes},
		{"tier_failures", es.tier_failures},
		{"tier_deletes", es.tier_deletes},
		{"tier_gc_pending", es.tier_gc_pending},
		{"cold_reads", es.cold_reads},
		{"cold_read_bytes", es.cold_read_bytes},
		{"cold_cache_hits", es.cold_cache_hits},
		{"cold_cache_misses", es.cold_cache_misses},
		{"cold_cache_bytes", es.cold_cache_bytes},
		{"s3_requests", es.s3_requests},
		{"s3_retries", es.s3_retries},
		{"s3_errors", es.s3_errors},
		{"connections", atomic_load(&s->n_conns)},
		{"connections_total", sum[0]},
		{"connections_refused", sum[1]},
		{"bytes_received", sum[2]},
		{"bytes_sent", sum[3]},
		{"lines_accepted", sum[4]},
		{"lines_rejected", sum[5]},
		{"commands", sum[6]},
		{"queries", sum[7]},
		{"syncs", sum[8]},
		{"syncs_done", atomic_load(&s->sync_done)},
		{"replies_dropped", sum[9]},
		{"idle_closed", sum[10]},
		{"full_waits", sum[11]},
		/* authentication and admission (docs/operations.md) */
		{"auth_failures", sum[18]},
		{"auth_closed", sum[19]},
		{"connections_refused_per_address", sum[20]},
		/* HTTP (docs/http.md); per endpoint, with latencies, in the
		 * shard stats (wstats.http) */
		{"http_connections_total", sum[12]},
		{"http_requests", http_req},
		{"http_errors", http_err},
		{"http_lines_accepted", sum[13]},
		{"http_lines_rejected", sum[14]},
		{"http_gzip_bodies", sum[15]},
		{"http_header_timeouts", sum[16]},
		{"http_body_timeouts", sum[21]},
		{"http_on_line_protocol_port", sum[17]},
		/* labelled batches (docs/protocol.md, "Labelled batches") */
		{"label_sources", es.label_sources},
		{"label_bytes", es.label_bytes},
		{"label_duplicates", es.label_duplicates},
		{"label_too_old", es.label_too_old},
		{"label_expired", es.label_expired},
		{"merged_lines", es.merged_lines},
		{"scan_rows", es.scan_rows},
		/* retention (docs/operations.md, "Retention") */
		{"retention_passes", es.retention_passes},
		{"retention_parts_dropped", es.retention_parts_dropped},
		{"retention_parts_raw_gone", es.retention_parts_raw_gone},
		{"retention_bytes_freed", es.retention_bytes_freed},
		{"retention_rows_dropped", es.retention_rows_dropped},
		{"retention_last_pass_ns", (uint64_t)es.retention_last_pass},
		{"retention_last_drop_ns", (uint64_t)es.retention_last_drop},
		/* corrections (docs/operations.md, "Corrections") */
		{"deletes", es.deletes},
		{"delete_rows", es.delete_rows},
		{"delete_bytes_written", es.delete_bytes_written},
		/* HTTPS (docs/http.md) */
		{"tls_handshakes", tls_stat(s, TLS_ST_HANDSHAKES)},
		{"tls_handshake_failures", tls_stat(s, TLS_ST_FAILURES)},
		{"tls_plaintext_refused", tls_stat(s, TLS_ST_PLAINTEXT)},
		{"tls_handshake_timeouts", tls_stat(s, TLS_ST_TIMEOUTS)},
		{"tls_reloads", tls_stat(s, TLS_ST_RELOADS)},
		{"uptime_seconds", (uint64_t)((srv_now() - s->started) / 1000000000)},
	};
	text_raw(&t, "name\tvalue\n", 11);
	conn_stats_out o = {&t, 0};
	for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++)
		conn_stats_row(&o, rows[i].name, rows[i].v);
	/* the MQTT subscriber's (docs/mqtt.md) */
	for (size_t i = 0; i < mqtt_n_stat_defs; i++)
		conn_stats_row(&o, mqtt_stat_defs[i].name,
			       mqtt_stat(&s->mqtt_st, &mqtt_stat_defs[i]));
	/* the Kafka consumer's (docs/cluster.md), per partition too */
	kafka_stats(s, conn_stats_row, &o);
	char b[32];
	int k = snprintf(b, sizeof b, "END %zu\n", o.n);
	text_raw(&t, b, (size_t)k);
	if (!t.oom)
		conn_put(c, t.p, t.n, 0);
	text_give(c->sh, &t);
}

/* #!retention, #!retained (docs/protocol.md); a pass, #!retain, runs off
 * the loop (offloop.c). */
static void conn_retention(wconn *c, const cmd_req *r, uint64_t line)
{
	tally_db *db = c->sh->srv->db;
	int rc;
	if (r->kind == CMD_RETENTION) {
		if ((rc = tally_db_set_retention(db, r->rules)))
			conn_putf(c, 0, "ERR line %" PRIu64 ": retention: %s", line,
				  conn_errmsg(rc));
		else
			conn_putf(c, 0, "OK retention %s", *r->rules ? r->rules : "none");
		return;
	}
	int64_t from; /* #!retained */
	if ((rc = tally_db_retained_from(db, r->table, r->step, &from)))
		conn_putf(c, 0, "ERR line %" PRIu64 ": retained: %s", line, conn_errmsg(rc));
	else if (from == INT64_MIN)
		conn_putf(c, 0, "OK retained %s all", r->table);
	else
		conn_putf(c, 0, "OK retained %s from %" PRId64, r->table, from);
}

static void conn_query(wconn *c, const cmd_req *r, uint64_t line)
{
	srv *s = c->sh->srv;
	STAT_ADD(c->sh, queries, 1);
	int rc = 0, held = 1;
	if (s->n_fan_nodes && !c->fan_off) {
		/* Every node answers its part (docs/cluster.md). */
		fanjob *j;
		/* a distribution: every node's pairs, merged (fandist.c) */
		rc = r->kind == CMD_DIST ? fandist_start(c, r, line, &j)
					 : fanserv_start(c, r, line, &j);
		if (rc == 0) {
			c->prod = PROD_FANOUT;
			c->prod_state = j;
			return;
		}
		conn_putf(c, 0, "ERR line %" PRIu64 ": %s: %s", line, r->name,
			  rc == -E2BIG ? "the query is too long to send to the other nodes"
				       : conn_errmsg(rc));
		return;
	}
	conn_text t = text_take(c->sh);
	switch (r->kind) {
	case CMD_AGG: {
		tally_agg a;
		rc = tally_query_agg(s->db, r->table, r->field, r->key, r->from, r->to, &a);
		if (rc)
			break;
		text_raw(&t, CMD_HEAD_AGG, CMD_HEAD_LEN(CMD_HEAD_AGG));
		text_agg(&t, &a);
		text_raw(&t, "END 1\n", 6);
		if (!t.oom)
			conn_put(c, t.p, t.n, 0);
		break;
	}
	case CMD_TABLES:
	case CMD_KEYLIST:
	case CMD_DIST: {
		char *txt;
		size_t n;
		dist_limits lim = {s->conf->align_offset, s->conf->fanout_max_bytes, line};
		rc = r->kind == CMD_DIST ? dist_reply(s->db, r, &lim, &txt, &n)
					 : cat_reply(s->db, r, &txt, &n);
		if (!rc) {
			conn_put(c, txt, n, 0);
			free(txt);
		}
		break;
	}
	case CMD_SERIES: {
		/* 49 KB, but only the fields ahead of s.b need clearing:
		 * calloc spent about 2.5 us zeroing buckets the query then
		 * overwrites */
		prod_series *ps = malloc(sizeof *ps);
		if (ps)
			memset(ps, 0, offsetof(prod_series, s));
		if (!ps || !(ps->table = strdup(r->table)) || !(ps->field = strdup(r->field)) ||
		    !(ps->key = strdup(r->key))) {
			if (ps) {
				free(ps->table);
				free(ps->field);
			}
			free(ps);
			rc = -ENOMEM;
			break;
		}
		series_init(&ps->s, ps->table, ps->field, ps->key, r->step, r->from, r->to,
			    s->conf->align_offset);
		ps->line = line;
		/* The first slice now, so that a bad table or step is one ERR line. */
		rc = series_next_slice(s->db, &ps->s);
		c->prod = PROD_SERIES;
		c->prod_state = ps;
		if (rc) {
			conn_prod_free(c);
			break;
		}
		conn_put(c, CMD_HEAD_SERIES, CMD_HEAD_LEN(CMD_HEAD_SERIES), 1);
		text_give(c->sh, &t);
		held = 0;
		conn_pump(c);
		break;
	}
	case CMD_KEYS: {
		prod_keys *pk = calloc(1, sizeof *pk);
		if (!pk) {
			rc = -ENOMEM;
			break;
		}
		rc = tally_query_group(s->db, r->table, r->field, r->key, r->group, r->from, r->to,
				       &pk->it);
		if (rc) {
			free(pk);
			break;
		}
		pk->line = line;
		c->prod = PROD_KEYS;
		c->prod_state = pk;
		conn_put(c, CMD_HEAD_KEYS, CMD_HEAD_LEN(CMD_HEAD_KEYS), 1);
		text_give(c->sh, &t);
		held = 0;
		conn_pump(c);
		break;
	}
	case CMD_SCAN: {
		prod_scan *sc = calloc(1, sizeof *sc);
		if (!sc) {
			rc = -ENOMEM;
			break;
		}
		rc = tally_scan_open(s->db, r->table, r->key, r->from, r->to, &sc->s);
		if (rc) {
			free(sc);
			break;
		}
		sc->line = line;
		sc->limit = r->limit;
		c->prod = PROD_SCAN;
		c->prod_state = sc;
		text_raw(&t, "time", 4);
		size_t n = tally_scan_columns(sc->s);
		for (size_t i = 0; i < n; i++) {
			const char *name;
			enum tally_type type;
			if (tally_scan_column(sc->s, i, &name, &type))
				continue;
			text_raw(&t, "\t", 1);
			text_cell(&t, name, strlen(name));
		}
		text_raw(&t, "\n", 1);
		if (!t.oom)
			conn_put(c, t.p, t.n, 1);
		/* conn_pump formats in the same shard buffer: hand it back. */
		text_give(c->sh, &t);
		held = 0;
		conn_pump(c);
		break;
	}
	default: break;
	}
	if (held)
		text_give(c->sh, &t);
	if (rc)
		conn_putf(c, 0, "ERR line %" PRIu64 ": %s: %s", line, r->name, conn_errmsg(rc));
	else if (t.oom)
		conn_putf(c, 0, "ERR line %" PRIu64 ": %s: out of memory", line, r->name);
}

/* Runs the command on line[0, len) (its '\n' excluded): line number
 * c->lines + 1. Returns -1 when the connection was closed. */
static int conn_command(wconn *c, const char *line, size_t len)
{
	wshard *sh = c->sh;
	srv *s = sh->srv;
	uint64_t no = c->lines + 1;
	cmd_req r;
	char err[CMD_ERR_MAX];
	STAT_ADD(sh, commands, 1);
	if (len && line[len - 1] == '\r')
		len--;
	int64_t now = srv_clock_ns();
	int prc = cmd_parse(line, len, sh->scratch, sh->scratch_cap, now, &r, err, sizeof err);
	if (!c->authed && (prc || r.kind != CMD_AUTH)) {
		conn_close_with(c, "ERR authentication required: send #!auth TOKEN first");
		return -1;
	}
	if (prc) {
		conn_putf(c, 0, "ERR line %" PRIu64 ": %s", no, err);
		return 0;
	}
	if (offloop_kind(r.kind)) {
		/* a long command: on the admin worker, this connection waiting
		 * for its answer while the loop serves the others */
		offjob *j;
		int rc = offloop_start(c, r.kind, line, len, now, no, &j);
		if (rc)
			conn_putf(c, 0, "ERR line %" PRIu64 ": %s: %s", no, r.name,
				  rc == -ENOMEM ? "out of memory" : "the server is stopping");
		else {
			c->prod = PROD_JOB;
			c->prod_state = j;
		}
		return 0;
	}
	switch (r.kind) {
	case CMD_AUTH:
		if (!s->conf->token) {
			conn_putf(c, 0, "OK auth (this server requires no token)");
		} else if (conn_token_ok(s->conf->token, r.token, strlen(r.token))) {
			c->authed = 1;
			conn_unauth_done(c);
			conn_putf(c, 0, "OK auth");
		} else {
			conn_auth_failed(c);
			return -1;
		}
		break;
	case CMD_PING: conn_putf(c, 0, "OK pong"); break;
	case CMD_SYNC:
		c->sync_ticket = srv_sync_ticket(s);
		sh->n_sync_wait++;
		STAT_ADD(sh, syncs, 1);
		break;
	case CMD_PRECISION: {
		static const char *names[4] = {"ns", "us", "ms", "s"};
		c->prec = r.prec;
		conn_putf(c, 0, "OK precision %s", names[r.prec]);
		break;
	}
	case CMD_STATS: conn_stats(c); break;
	case CMD_FANOUT: {
		static const char *const modes[] = {"off", "fail", "partial"};
		c->fan_off = r.fan == 0;
		c->fan_partial = r.fan == 2;
		conn_putf(c, 0, "OK fanout %s node=%016" PRIx64, modes[r.fan], s->node_id);
		break;
	}
	case CMD_RETENTION:
	case CMD_RETAINED: conn_retention(c, &r, no); break;
	case CMD_BACKUP:
	case CMD_RETAIN:
	case CMD_DROP:
	case CMD_DELETE: break; /* off the loop, above */
	case CMD_HELP: {
		conn_text t = text_take(c->sh);
		text_raw(&t, "command\tusage\n", 14);
		size_t n = cmd_usage_count();
		for (size_t i = 0; i < n; i++) {
			const char *u = cmd_usage(i);
			const char *sp = strchr(u, ' ');
			size_t wl = sp ? (size_t)(sp - u) : strlen(u);
			text_raw(&t, u + 2, wl - 2);
			text_raw(&t, "\t", 1);
			text_raw(&t, u, strlen(u));
			text_raw(&t, "\n", 1);
		}
		char b[32];
		int k = snprintf(b, sizeof b, "END %zu\n", n);
		text_raw(&t, b, (size_t)k);
		if (!t.oom)
			conn_put(c, t.p, t.n, 0);
		text_give(c->sh, &t);
		break;
	}
	case CMD_SERIES:
	case CMD_AGG:
	case CMD_DIST:
	case CMD_KEYS:
	case CMD_TABLES:
	case CMD_KEYLIST:
	case CMD_SCAN: conn_query(c, &r, no); break;
	}
	return 0;
}

/* ---------------------------------------------------------------- writes */

static uint64_t conn_count_nl(const char *p, size_t n)
{
	uint64_t k = 0;
	for (const char *q = p, *e = p + n; q < e && (q = memchr(q, '\n', (size_t)(e - q))); q++)
		k++;
	return k;
}

/* Physical lines: every '\n' and a last line without one. */
uint64_t conn_count_lines(const char *p, size_t n)
{
	return conn_count_nl(p, n) + (n && p[n - 1] != '\n');
}

/* ---------------------------------------------------------------- labelled batches */

/*
 * "#!batch SOURCE SEQ", lines, "#!end": the lines are gathered (they are
 * one WAL record with their label, so nothing is written before the end),
 * written by tally_write_lp_labelled at "#!end", and answered after the
 * next sync: "OK batch SOURCE SEQ applied accepted=A rejected=R" or
 * "OK batch SOURCE SEQ duplicate", after the usual per-line errors. A
 * connection that ends inside a batch writes nothing of it.
 */
typedef struct conn_lbatch {
	char source[256];
	uint64_t seq;
	char *p; /* the batch's lines, gathered */
	size_t n, cap;
	uint64_t first_line; /* c->lines at "#!batch" */
	int ended;           /* "#!end" seen: p is being written */
	int answer;          /* 1 applied, 2 duplicate: said after the sync */
	uint64_t accepted, rejected;
} conn_lbatch;

static void lbatch_free(wconn *c)
{
	if (c->lb)
		free(c->lb->p);
	free(c->lb);
	c->lb = NULL;
}

/* "#!batch SOURCE SEQ" opens a batch. 1: the line was one (answered or
 * opened), 0: another command. */
static int lbatch_begin(wconn *c, const char *line, size_t len)
{
	if (len < 8 || memcmp(line, "#!batch ", 8))
		return 0;
	/* SOURCE: 1..255 bytes up to one space; SEQ: decimal, no sign */
	const char *src = line + 8, *end = line + len;
	const char *sp = memchr(src, ' ', (size_t)(end - src));
	size_t sl = sp ? (size_t)(sp - src) : 0;
	uint64_t seq = 0;
	int ok = sp && sl >= 1 && sl <= 255 && sp + 1 < end;
	for (const char *q = sp ? sp + 1 : end; ok && q < end; q++) {
		unsigned d = (unsigned)(*q - '0');
		ok = d <= 9 && seq <= (UINT64_MAX - d) / 10;
		seq = seq * 10 + d;
	}
	if (c->lb)
		conn_putf(c, 0,
			  "ERR line %" PRIu64 ": #!batch inside batch %s %" PRIu64
			  "; that batch is dropped, nothing of it written",
			  c->lines + 1, c->lb->source, c->lb->seq);
	lbatch_free(c);
	if (!ok) {
		conn_putf(c, 0, "ERR line %" PRIu64 ": usage: #!batch SOURCE SEQ (SEQ 0..2^64-1)",
			  c->lines + 1);
		return 1;
	}
	if (!(c->lb = calloc(1, sizeof *c->lb))) {
		conn_close_with(c, "ERR out of memory; closing");
		return 1;
	}
	memcpy(c->lb->source, src, sl);
	c->lb->seq = seq;
	c->lb->first_line = c->lines + 1;
	return 1;
}

static int lbatch_gather(wconn *c, const char *p, size_t n)
{
	conn_lbatch *b = c->lb;
	size_t limit = conn_conf(c)->input_bytes;
	if (b->n + n > limit) {
		char m[400];
		snprintf(m, sizeof m, "ERR batch %s %" PRIu64 ": more than %zu bytes; closing",
			 b->source, b->seq, limit);
		conn_close_with(c, m);
		return -1;
	}
	if (b->n + n > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap < b->n + n)
			cap *= 2;
		char *q = realloc(b->p, cap);
		if (!q) {
			conn_close_with(c, "ERR out of memory; closing");
			return -1;
		}
		b->p = q;
		b->cap = cap;
	}
	memcpy(b->p + b->n, p, n);
	b->n += n;
	return 0;
}

/* The sync after a labelled batch is done: its answer. */
static void lbatch_answer(wconn *c, int sync_rc, const char *msg)
{
	conn_lbatch *b = c->lb;
	if (sync_rc)
		conn_putf(c, 0, "ERR batch %s %" PRIu64 ": sync: %s", b->source, b->seq, msg);
	else if (b->answer == 2)
		conn_putf(c, 0, "OK batch %s %" PRIu64 " duplicate", b->source, b->seq);
	else
		conn_putf(c, 0,
			  "OK batch %s %" PRIu64 " applied accepted=%" PRIu64 " rejected=%" PRIu64,
			  b->source, b->seq, b->accepted, b->rejected);
	lbatch_free(c);
}

static int conn_write(wconn *c, const char *p, size_t n);

/* "#!end": writes the gathered lines as one labelled batch. 0 when it
 * must be retried later (the store is full). */
static int lbatch_end(wconn *c)
{
	conn_lbatch *b = c->lb;
	b->ended = 1;
	uint64_t lines = c->lines, acc = c->accepted, rej = c->rejected;
	/* per-line errors count from the batch's first line */
	c->lines = b->first_line;
	if (!conn_write(c, b->p, b->n)) {
		c->lines = lines;
		return 0;
	}
	b->accepted = c->accepted - acc;
	b->rejected = c->rejected - rej;
	c->lines = lines;
	if (b->answer) {
		c->sync_ticket = srv_sync_ticket(c->sh->srv);
		c->sh->n_sync_wait++;
		STAT_ADD(c->sh, syncs, 1);
	} else {
		lbatch_free(c);
	}
	return 1;
}

/* Writes a run of whole records. Returns 1 when done with it, 0 when it
 * must be retried later (the store is full: the connection waits). */
int conn_full_wait(wconn *c, int rc)
{
	if (rc == TALLY_EFULL) {
		int64_t now = srv_now();
		if (!c->full_since) {
			c->full_since = now;
			STAT_ADD(c->sh, full_waits, 1);
		}
		if (now - c->full_since < conn_conf(c)->full_wait_ns) {
			c->retry_at = now + CONN_RETRY_NS;
			return 1;
		}
	}
	c->full_since = 0;
	return 0;
}

static int conn_write(wconn *c, const char *p, size_t n)
{
	wshard *sh = c->sh;
	tally_write_result res;
	conn_lbatch *lb = c->lb && c->lb->ended ? c->lb : NULL;
	int dup = 0;
	int rc = lb ? tally_write_lp_labelled(sh->w, lb->source, lb->seq, p, n, c->prec, &res, &dup)
		    : tally_write_lp(sh->w, p, n, c->prec, &res);
	if (lb && rc >= 0)
		lb->answer = dup ? 2 : 1;
	if (lb && (rc == TALLY_ESTALE || rc == TALLY_EINVAL)) {
		/* the label itself was refused: nothing written, nothing to sync */
		conn_putf(c, 0, "ERR batch %s %" PRIu64 ": %s", lb->source, lb->seq,
			  tally_errmsg());
		c->rejected += conn_count_lines(p, n);
		return 1;
	}
	if (conn_full_wait(c, rc))
		return 0;
	/* On an error the engine applied the run's first res.lines lines
	 * (reported below as usual) and none after them. */
	uint64_t unwritten = 0;
	const char *why = NULL;
	if (rc < 0) {
		uint64_t k = conn_count_lines(p, n);
		unwritten = k > res.lines ? k - res.lines : 0;
		why = conn_errmsg(rc);
	}
	for (unsigned i = 0; i < res.n_errors; i++)
		conn_putf(c, 0, "ERR line %" PRIu64 ": %s", c->lines + res.errors[i].line,
			  res.errors[i].reason);
	if (res.rejected > res.n_errors) {
		uint64_t first = c->lines + res.errors[res.n_errors - 1].line + 1;
		conn_putf(c, 0,
			  "ERR lines %" PRIu64 "-%" PRIu64 ": %" PRIu64
			  " more lines rejected, not itemized",
			  first, c->lines + res.lines, res.rejected - res.n_errors);
	}
	c->accepted += res.accepted;
	c->rejected += res.rejected;
	c->lines += res.lines;
	STAT_ADD(sh, lines_accepted, res.accepted);
	STAT_ADD(sh, lines_rejected, res.rejected);
	if (res.accepted)
		atomic_store_explicit(&sh->srv->dirty, 1, memory_order_relaxed);
	if (unwritten) {
		conn_putf(c, 0, "ERR lines %" PRIu64 "-%" PRIu64 ": not written: %s", c->lines + 1,
			  c->lines + unwritten, why);
		c->rejected += unwritten;
		c->lines += unwritten;
		STAT_ADD(sh, lines_rejected, unwritten);
	}
	return 1;
}

/* Whether the record buf[0, n) is an HTTP request line ("POST /write?db=x
 * HTTP/1.1"): an HTTP client pointed at this port by mistake. */
static int conn_is_http(const char *buf, size_t n)
{
	static const char *const methods[] = {"GET ",     "POST ",  "PUT ",     "HEAD ", "DELETE ",
					      "OPTIONS ", "PATCH ", "CONNECT ", "TRACE "};
	const char *nl = memchr(buf, '\n', n);
	size_t e = nl ? (size_t)(nl - buf) : n;
	if (e && buf[e - 1] == '\r')
		e--;
	if (e < 16 || memcmp(buf + e - 9, " HTTP/1.", 8) || buf[e - 1] < '0' || buf[e - 1] > '9')
		return 0;
	for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
		if (!strncmp(buf, methods[i], strlen(methods[i])))
			return 1;
	return 0;
}

/* Answers an HTTP client on the line-protocol port with an HTTP 400 that
 * names the HTTP port, stores nothing it sent, and closes. Logged at most
 * once a minute for the whole server, with the count since. */
static void conn_refuse_http(wconn *c)
{
	srv *s = c->sh->srv;
	char body[200], msg[400];
	int b = s->http_port ? snprintf(body, sizeof body,
					"This is tally's line-protocol port, not HTTP: send "
					"HTTP requests to port %u.\n",
					s->http_port)
			     : snprintf(body, sizeof body,
					"This is tally's line-protocol port, not HTTP; this "
					"server's HTTP port is off (http-port).\n");
	int k = snprintf(msg, sizeof msg,
			 "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; "
			 "charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
			 b, body);
	conn_put(c, msg, (size_t)k, 1);
	conn_close_with(c, NULL);
	STAT_ADD(c->sh, http_on_lp_port, 1);
	uint64_t more;
	if (conn_log_due(&s->lp_http_logged, &s->lp_http_unlogged, 60, &more))
		srv_log(s, TALLY_LOG_WARN,
			"an HTTP request arrived on the line-protocol port %u and was refused "
			"(HTTP is %s)%s",
			s->port, s->http_port ? "on its own port" : "off",
			more ? "; more since the last such message" : "");
}

/* Processes the whole records at the start of buf[0, len) (all of it when
 * final: the stream ended). Returns the bytes consumed; stops early when
 * the connection pauses or closes. */
static size_t conn_run(wconn *c, const char *buf, size_t len, int final)
{
	size_t cut = final ? len : frame_cut(buf, len);
	size_t pos = 0;
	if (!c->first_seen && cut) {
		c->first_seen = 1;
		if (conn_is_http(buf, cut)) {
			conn_refuse_http(c);
			return 0;
		}
	}
	while (pos < cut && !conn_paused(c)) {
		size_t k = frame_find_cmd(buf + pos, cut - pos);
		if (k > 0) {
			if (!c->authed) {
				conn_close_with(c, "ERR authentication required: send #!auth TOKEN "
						   "first");
				return pos;
			}
			if (c->lb) {
				/* inside a batch: gathered, written at "#!end" */
				if (lbatch_gather(c, buf + pos, k))
					return pos;
				c->lines += conn_count_lines(buf + pos, k);
			} else if (!conn_write(c, buf + pos, k)) {
				return pos;
			}
			pos += k;
			continue;
		}
		const char *nl = memchr(buf + pos, '\n', cut - pos);
		size_t e = nl ? (size_t)(nl - (buf + pos)) : cut - pos;
		size_t el = e && buf[pos + e - 1] == '\r' ? e - 1 : e;
		if (c->authed && c->lb && el == 5 && !memcmp(buf + pos, "#!end", 5)) {
			if (!lbatch_end(c))
				return pos;
		} else if (c->authed && lbatch_begin(c, buf + pos, el)) {
			if (c->state != CONN_OPEN)
				return pos;
		} else if (c->lb) {
			conn_putf(c, 0,
				  "ERR line %" PRIu64 ": only #!end ends batch %s %" PRIu64
				  "; that batch is dropped, nothing of it written",
				  c->lines + 1, c->lb->source, c->lb->seq);
			lbatch_free(c);
		} else if (conn_command(c, buf + pos, e) < 0) {
			return pos;
		}
		c->lines++;
		pos += nl ? e + 1 : e;
	}
	return pos;
}

/* ---------------------------------------------------------------- input */

/* Skips the rest of an overlong record: up to a '\n' that surely ends it. */
static size_t conn_skip(wconn *c, const char *p, size_t n, char prev)
{
	size_t i = 0;
	while (i < n) {
		const char *q = memchr(p + i, '\n', n - i);
		if (!q)
			break;
		size_t k = (size_t)(q - p);
		c->lines++;
		i = k + 1;
		if (frame_nl_certain(p, k, prev)) {
			c->discard = 0;
			return i;
		}
	}
	return n;
}

static int conn_in_append(wconn *c, const char *p, size_t n)
{
	const srv_conf *cf = conn_conf(c);
	size_t held = c->in_len - c->in_head;
	/* Reading stops at half of input-buffer-bytes (lp_wants_recv), but
	 * io_uring's multishot receive may have filled every buffer of the
	 * shard's ring before its cancel lands: that read-ahead is ours, not
	 * a client over its limit, so it is allowed for on top. */
	size_t ahead = (size_t)cf->recv_bufs * cf->recv_buf_bytes;
	if (held + n > (size_t)cf->max_line + 2 + cf->input_bytes + ahead) {
		conn_close_with(c, "ERR input buffer limit exceeded; closing");
		return -1;
	}
	if (c->in_head && (c->in_len + n > c->in_cap || c->in_head > held)) {
		memmove(c->in, c->in + c->in_head, held);
		c->in_len = held;
		c->in_head = 0;
	}
	if (c->in_len + n > c->in_cap) {
		size_t cap = c->in_cap ? c->in_cap : 4096;
		while (cap < c->in_len + n)
			cap *= 2;
		char *q = realloc(c->in, cap);
		if (!q) {
			conn_close_with(c, "ERR out of memory; closing");
			return -1;
		}
		c->in = q;
		c->in_cap = cap;
	}
	memcpy(c->in + c->in_len, p, n);
	c->in_len += n;
	return 0;
}

/* c->in now holds only the start of one record: past the line limit it is
 * rejected at once and the rest of it skipped as it arrives. */
static void conn_check_partial(wconn *c)
{
	size_t held = c->in_len - c->in_head;
	if (conn_paused(c) || held <= (size_t)conn_conf(c)->max_line + 1)
		return;
	conn_putf(c, 0, "ERR line %" PRIu64 ": line longer than %u bytes", c->lines + 1,
		  conn_conf(c)->max_line);
	c->rejected++;
	STAT_ADD(c->sh, lines_rejected, 1);
	c->lines += conn_count_nl(c->in + c->in_head, held);
	c->in_head = c->in_len = 0;
	c->discard = 1;
}

/* Processes what c->in holds, as far as the connection is not paused. */
static void conn_feed(wconn *c)
{
	if (conn_paused(c) || c->in_len == c->in_head || c->discard)
		return;
	size_t used = conn_run(c, c->in + c->in_head, c->in_len - c->in_head, c->eof);
	if (c->state == CONN_OPEN) {
		c->in_head += used;
		if (c->in_head == c->in_len)
			c->in_head = c->in_len = 0;
		conn_check_partial(c);
	}
}

static void lp_step(wconn *c);

static void lp_on_data(wconn *c, const char *p, size_t n)
{
	STAT_ADD(c->sh, bytes_in, n);
	/* Idle means no complete line: a trickle of bytes with no end of line
	 * (slowloris) does not keep a connection open. memchr stops at the
	 * first newline, near the start of a batch of lines. */
	if (memchr(p, '\n', n))
		c->last_active = srv_now();
	if (c->state != CONN_OPEN || n == 0)
		return; /* lingering: input is read only to be discarded */
	char prev = c->in_last;
	c->in_last = p[n - 1];
	if (c->discard) {
		size_t k = conn_skip(c, p, n, prev);
		p += k;
		n -= k;
		if (c->discard || n == 0)
			goto out;
		prev = p[-1];
	}
	if (c->in_len > c->in_head && !conn_paused(c)) {
		/* Complete the record cut by the last packet: append only up
		 * to its end, then go on from the packet itself. */
		const char *q = memchr(p, '\n', n);
		if (q && frame_nl_certain(p, (size_t)(q - p), prev)) {
			size_t k = (size_t)(q - p) + 1;
			if (conn_in_append(c, p, k))
				goto out;
			conn_feed(c);
			p += k;
			n -= k;
		} else {
			if (conn_in_append(c, p, n))
				goto out;
			conn_feed(c);
			goto out;
		}
	}
	if (c->in_len == c->in_head && !conn_paused(c)) {
		size_t used = conn_run(c, p, n, 0);
		p += used;
		n -= used;
	}
	if (n && c->state == CONN_OPEN && conn_in_append(c, p, n) == 0)
		conn_check_partial(c);
out:
	lp_step(c);
}

void conn_eof(wconn *c)
{
	c->eof = 1;
	c->last_active = srv_now();
	c->proto->step(c);
}

void conn_sent(wconn *c, size_t n)
{
	STAT_ADD(c->sh, bytes_out, n);
	c->out_head += n;
	if (c->out_head == c->out_tail)
		c->out_head = c->out_tail = 0;
	c->last_active = srv_now();
	if (c->state == CONN_OPEN)
		conn_note_drops(c, 0, 0);
	c->proto->step(c);
}

void conn_close_with(wconn *c, const char *msg)
{
	if (c->state != CONN_OPEN)
		return;
	conn_prod_free(c);
	conn_note_drops(c, 0, 1); /* the last thing the client hears is exact */
	if (msg) {
		size_t n = strlen(msg);
		if (conn_out_room(c, n + 1, 1) == 0) {
			memcpy(c->out + c->out_tail, msg, n);
			c->out[c->out_tail + n] = '\n';
			c->out_tail += n + 1;
		}
	}
	if (c->sync_ticket) {
		c->sync_ticket = 0;
		c->sh->n_sync_wait--;
	}
	c->retry_at = 0;
	c->state = CONN_LINGER;
	c->linger_until = srv_now() + CONN_LINGER_NS;
	srv_conn_dirty(c);
}

/* At shutdown, past the grace period: read no more; what is complete is
 * processed, a last sync covers it, and the client hears what was kept. */
static void lp_begin_shutdown(wconn *c)
{
	if (c->state != CONN_OPEN || c->final_sync)
		return;
	c->final_sync = 1;
	lp_step(c);
}

static void lp_step(wconn *c)
{
	if (c->state == CONN_DEAD)
		return;
	srv *s = c->sh->srv;
	for (int guard = 0; guard < 64 && c->state == CONN_OPEN; guard++) {
		int progress = 0;
		if (c->sync_ticket &&
		    atomic_load_explicit(&s->sync_done, memory_order_acquire) >= c->sync_ticket) {
			char msg[256];
			int rc = srv_sync_result(s, c->sync_ticket, msg, sizeof msg);
			c->sync_ticket = 0;
			c->sh->n_sync_wait--;
			if (c->final_sync == 2) {
				char m[200];
				snprintf(m, sizeof m,
					 rc ? "ERR shutdown: sync failed"
					    : "OK shutdown accepted=%" PRIu64 " rejected=%" PRIu64,
					 c->accepted, c->rejected);
				conn_close_with(c, m);
				break;
			}
			if (c->lb && c->lb->answer)
				lbatch_answer(c, rc, msg);
			else if (rc)
				conn_putf(c, 0, "ERR sync: %s", msg);
			else
				conn_putf(c, 0, "OK sync accepted=%" PRIu64 " rejected=%" PRIu64,
					  c->accepted, c->rejected);
			progress = 1;
		}
		if (c->retry_at && srv_now() >= c->retry_at) {
			c->retry_at = 0;
			progress = 1;
		}
		if (c->prod != PROD_NONE) {
			conn_pump(c);
			progress |= c->prod == PROD_NONE;
		}
		if (!conn_paused(c) && c->in_len > c->in_head) {
			size_t before = c->in_len - c->in_head;
			conn_feed(c);
			progress |= c->in_len - c->in_head != before;
		}
		if (!progress)
			break;
	}
	if (c->state == CONN_OPEN && !conn_paused(c)) {
		if (c->final_sync == 1) {
			/* Shutdown: the partial record left is never completed. */
			c->final_sync = 2;
			c->sync_ticket = srv_sync_ticket(s);
			c->sh->n_sync_wait++;
		} else if (c->eof) {
			/* The client is done sending: once everything it sent
			 * is answered (conn_feed ran the last record, '\n' or
			 * not), the connection closes. */
			conn_feed(c);
			if (c->state == CONN_OPEN && !conn_paused(c))
				conn_close_with(c, NULL);
		}
	}
	conn_linger_step(c);
}

void conn_linger_step(wconn *c)
{
	if (c->state == CONN_LINGER && conn_unsent(c) == 0 && c->eof)
		c->state = CONN_DEAD;
	srv_conn_dirty(c);
}

int conn_linger_tick(wconn *c, int64_t now)
{
	if (c->state == CONN_LINGER && now >= c->linger_until) {
		c->state = CONN_DEAD;
		srv_conn_dirty(c);
	}
	return c->state != CONN_OPEN;
}

static void lp_tick(wconn *c, int64_t now)
{
	const srv_conf *cf = conn_conf(c);
	if (conn_linger_tick(c, now))
		return;
	if (c->retry_at && now >= c->retry_at) {
		lp_step(c);
		return;
	}
	char m[160];
	char d[32];
	if (c->auth_fail_at) {
		if (now >= c->auth_fail_at)
			conn_close_with(c, "ERR authentication failed");
		return;
	}
	if (!c->authed && c->unauth_over) {
		atomic_fetch_add_explicit(&c->sh->st.auth_closed, 1, memory_order_relaxed);
		snprintf(m, sizeof m,
			 "ERR too many connections waiting to authenticate (max-unauthenticated "
			 "%u); closing",
			 cf->max_unauth);
		conn_close_with(c, m);
		return;
	}
	if (!c->authed && cf->auth_ns && now - c->born > cf->auth_ns) {
		atomic_fetch_add_explicit(&c->sh->st.auth_closed, 1, memory_order_relaxed);
		cmd_format_duration(cf->auth_ns, d);
		snprintf(m, sizeof m, "ERR authentication timeout: no #!auth within %s; closing",
			 d);
		conn_close_with(c, m);
		return;
	}
	if (cf->idle_ns && now - c->last_active > cf->idle_ns && !c->sync_ticket &&
	    c->prod != PROD_JOB) { /* a backup may take longer than idle-timeout */
		cmd_format_duration(cf->idle_ns, d);
		snprintf(m, sizeof m,
			 "ERR idle timeout: no complete line sent or reply read for %s; closing",
			 d);
		STAT_ADD(c->sh, idle_closed, 1);
		conn_close_with(c, m);
	}
}

const wproto conn_lp_proto = {
	.name = "line protocol",
	.init = lp_init,
	.on_data = lp_on_data,
	.step = lp_step,
	.tick = lp_tick,
	.wants_recv = lp_wants_recv,
	.begin_shutdown = lp_begin_shutdown,
	.fini = lp_fini,
};
