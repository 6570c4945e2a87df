/*
 * tls.c — HTTPS: TLS between the loops and the protocol table.
 *
 * The one idea: OpenSSL never sees the socket. Each TLS connection has an
 * SSL with two memory BIOs; the loops (io_uring or epoll, unchanged) hand
 * received ciphertext to tls_recv, which writes it into the read BIO and
 * gives the protocol the plaintext SSL_read makes of it; what the protocol
 * queued in c->out is encrypted into the write BIO when the last span is
 * sent, and tls_tx gives the loops that ciphertext from a fixed per-
 * connection buffer (its address is stable while a send is in flight). So
 * the rings, provided buffers and backpressure stay as they are, and one
 * connection's memory is bounded: the SSL's record buffers (released while
 * idle), one received buffer's worth of ciphertext, and TLS_CBUF.
 *
 * The certificate is an SSL_CTX swapped under a mutex on SIGHUP; a new
 * connection takes a reference under the mutex, so a handshake in progress
 * keeps the context it began with and the old one is freed by OpenSSL when
 * its last connection goes.
 */
#include "tls.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#define TLS_CBUF      (32u << 10) /* ciphertext ready to send: two full records */
#define TLS_RECORD    16384       /* plaintext per SSL_write / SSL_read */
#define TLS_LOG_SECS  60
#define TLS_HANDSHAKE 0x16 /* a TLS record's first byte: ContentType handshake */

struct wtls {
	SSL *ssl;
	BIO *rbio, *wbio; /* ciphertext in, ciphertext out */
	int64_t started;  /* monotonic ns, for the handshake deadline */
	unsigned established : 1, first_seen : 1, closed : 1;
	size_t chead, ctail; /* cbuf[chead, ctail) is unsent */
	char cbuf[TLS_CBUF];
};

#define TLS_STAT(sh, f) atomic_fetch_add_explicit(&(sh)->st.f, 1, memory_order_relaxed)

/* ---------------------------------------------------------------- contexts */

/* The newest OpenSSL error, for a message; clears the queue. */
static void tls_errstr(char *buf, size_t cap)
{
	unsigned long e = ERR_peek_last_error();
	if (e)
		ERR_error_string_n(e, buf, cap);
	else
		snprintf(buf, cap, "unknown error");
	ERR_clear_error();
}

static SSL_CTX *tls_ctx_new(const srv_conf *cf, char *err, size_t cap)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	if (!ctx) {
		tls_errstr(err, cap);
		return NULL;
	}
	/* TLS 1.2 and 1.3 only; no renegotiation (a client could make the
	 * server redo handshakes at will); OpenSSL's default ciphers, which
	 * leave out the broken ones. Record buffers are released while a
	 * connection is idle: thousands of idle cameras cost little. */
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
					 SSL_OP_NO_COMPRESSION);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE);
	const char *what = cf->http_tls_cert;
	char e[200];
	if (SSL_CTX_use_certificate_chain_file(ctx, cf->http_tls_cert) != 1)
		goto fail;
	what = cf->http_tls_key;
	if (SSL_CTX_use_PrivateKey_file(ctx, cf->http_tls_key, SSL_FILETYPE_PEM) != 1)
		goto fail;
	if (SSL_CTX_check_private_key(ctx) != 1)
		goto fail;
	return ctx;
fail:
	tls_errstr(e, sizeof e);
	snprintf(err, cap, "%s: %s", what, e);
	SSL_CTX_free(ctx);
	return NULL;
}

int tls_srv_init(srv *s)
{
	s->tls_ctx = NULL;
	pthread_mutex_init(&s->tls_mu, NULL);
	if (!s->conf->http_tls_cert)
		return 0;
	char err[512];
	s->tls_ctx = tls_ctx_new(s->conf, err, sizeof err);
	if (!s->tls_ctx) {
		fprintf(stderr, "tallyd: https: %s\n", err);
		return -1;
	}
	return 0;
}

int tls_srv_reload(srv *s)
{
	if (!s->tls_ctx)
		return 0;
	char err[512];
	SSL_CTX *ctx = tls_ctx_new(s->conf, err, sizeof err);
	if (!ctx) {
		srv_log(s, TALLY_LOG_ERROR,
			"SIGHUP: https certificate not reloaded, the old one stays: %s", err);
		return -1;
	}
	pthread_mutex_lock(&s->tls_mu);
	SSL_CTX *old = s->tls_ctx;
	s->tls_ctx = ctx;
	pthread_mutex_unlock(&s->tls_mu);
	SSL_CTX_free(old); /* gone once its last connection is */
	atomic_fetch_add(&s->tls_reloads, 1);
	srv_log(s, TALLY_LOG_INFO, "SIGHUP: https certificate reloaded from %s",
		s->conf->http_tls_cert);
	return 0;
}

void tls_srv_fini(srv *s)
{
	SSL_CTX_free(s->tls_ctx);
	s->tls_ctx = NULL;
	pthread_mutex_destroy(&s->tls_mu);
}

/* ---------------------------------------------------------------- connections */

int tls_conn_start(wconn *c)
{
	srv *s = c->sh->srv;
	struct wtls *t = calloc(1, sizeof *t);
	if (!t)
		return -ENOMEM;
	pthread_mutex_lock(&s->tls_mu);
	t->ssl = SSL_new(s->tls_ctx); /* takes its own reference to the context */
	pthread_mutex_unlock(&s->tls_mu);
	t->rbio = BIO_new(BIO_s_mem());
	t->wbio = BIO_new(BIO_s_mem());
	if (!t->ssl || !t->rbio || !t->wbio) {
		BIO_free(t->rbio);
		BIO_free(t->wbio);
		SSL_free(t->ssl);
		free(t);
		ERR_clear_error();
		return -ENOMEM;
	}
	BIO_set_mem_eof_return(t->rbio, -1); /* empty: "retry", not EOF */
	SSL_set_bio(t->ssl, t->rbio, t->wbio);
	SSL_set_accept_state(t->ssl);
	t->started = srv_now();
	c->tls = t;
	return 0;
}

void tls_conn_free(wconn *c)
{
	struct wtls *t = c->tls;
	if (!t)
		return;
	SSL_free(t->ssl); /* and both BIOs */
	free(t);
	c->tls = NULL;
	ERR_clear_error();
}

/* A handshake that failed, or never came: counted, logged at most once a
 * minute (a scanner must not flood the log), closed at once. */
static void tls_refuse(wconn *c, const char *why)
{
	srv *s = c->sh->srv;
	c->eof = 1;
	c->state = CONN_DEAD;
	srv_conn_dirty(c);
	uint64_t more;
	if (conn_log_due(&s->tls_logged, &s->tls_unlogged, TLS_LOG_SECS, &more))
		srv_log(s, TALLY_LOG_WARN, "%s port %u: %s; closed%s",
			c->proto == &httpd_proto ? "https" : "line-protocol (TLS)",
			c->proto == &httpd_proto ? s->http_port : s->port, why,
			more ? " (more refused since the last such message)" : "");
}

/* The SSL failed (not a retry): the connection is over. */
static void tls_fail(wconn *c, const char *doing)
{
	char e[200], why[260];
	tls_errstr(e, sizeof e);
	snprintf(why, sizeof why, "TLS %s failed: %s", doing, e);
	if (!c->tls->established) {
		TLS_STAT(c->sh, tls_failures);
		tls_refuse(c, why);
	} else {
		c->eof = 1;
		c->state = CONN_DEAD;
		srv_conn_dirty(c);
	}
}

void tls_recv(wconn *c, const char *p, size_t n)
{
	struct wtls *t = c->tls;
	if (!t) {
		c->proto->on_data(c, p, n);
		return;
	}
	if (!t->first_seen) {
		t->first_seen = 1;
		if ((unsigned char)p[0] != TLS_HANDSHAKE) {
			TLS_STAT(c->sh, tls_plaintext);
			tls_refuse(c, "a client spoke without TLS (plaintext to a TLS port)");
			return;
		}
	}
	/* A memory BIO takes all of it: one receive buffer at most. */
	if (BIO_write(t->rbio, p, (int)n) != (int)n) {
		tls_fail(c, "receive");
		return;
	}
	if (!t->established) {
		int r = SSL_do_handshake(t->ssl);
		if (r != 1) {
			int e = SSL_get_error(t->ssl, r);
			if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
				tls_fail(c, "handshake");
			srv_conn_dirty(c); /* the handshake's answer is to be sent */
			return;
		}
		t->established = 1;
		TLS_STAT(c->sh, tls_handshakes);
	}
	static _Thread_local char plain[TLS_RECORD];
	while (c->state != CONN_DEAD) {
		int k = SSL_read(t->ssl, plain, sizeof plain);
		if (k > 0) {
			c->proto->on_data(c, plain, (size_t)k);
			continue;
		}
		int e = SSL_get_error(t->ssl, k);
		if (e == SSL_ERROR_ZERO_RETURN) /* close_notify: the client is done */
			conn_eof(c);
		else if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
			tls_fail(c, "read");
		break;
	}
	srv_conn_dirty(c);
}

size_t tls_tx(wconn *c, const char **p)
{
	struct wtls *t = c->tls;
	if (!t) {
		*p = c->out + c->out_head;
		return c->out_tail - c->out_head;
	}
	if (t->chead == t->ctail && c->state != CONN_DEAD) {
		t->chead = t->ctail = 0;
		if (!t->established) {
			/* Nothing the protocol says (a 408 for a head that never
			 * came) can reach a client that has no keys yet. */
			c->out_head = c->out_tail = 0;
		}
		/* Encrypt what is queued while the ciphertext fits cbuf; the
		 * rest waits for this span to be sent (backpressure). */
		while (t->established && c->state != CONN_DEAD && c->out_tail > c->out_head &&
		       BIO_ctrl_pending(t->wbio) + TLS_RECORD + 256 <= TLS_CBUF) {
			size_t n = c->out_tail - c->out_head;
			int k = SSL_write(t->ssl, c->out + c->out_head,
					  (int)(n < TLS_RECORD ? n : TLS_RECORD));
			if (k <= 0) {
				tls_fail(c, "write");
				break;
			}
			conn_sent(c, (size_t)k); /* the protocol may queue more */
		}
		if (t->established && c->state == CONN_LINGER && c->out_tail == c->out_head &&
		    !t->closed) {
			t->closed = 1;
			SSL_shutdown(t->ssl); /* close_notify: the answer is whole */
		}
		int k = BIO_read(t->wbio, t->cbuf, TLS_CBUF);
		if (k > 0)
			t->ctail = (size_t)k;
		ERR_clear_error();
	}
	*p = t->cbuf + t->chead;
	return t->ctail - t->chead;
}

void tls_sent(wconn *c, size_t n)
{
	if (!c->tls) {
		conn_sent(c, n);
		return;
	}
	c->tls->chead += n;
	c->last_active = srv_now();
}

size_t tls_pending(const wconn *c)
{
	const struct wtls *t = c->tls;
	return t ? t->ctail - t->chead + BIO_ctrl_pending(t->wbio) : 0;
}

void tls_tick(wconn *c, int64_t now)
{
	struct wtls *t = c->tls;
	if (t && !t->established && c->state != CONN_DEAD &&
	    now - t->started >= c->sh->srv->conf->tls_handshake_ns) {
		TLS_STAT(c->sh, tls_timeouts);
		tls_refuse(c, "a TLS handshake did not finish within tls-handshake-timeout");
	}
}

uint64_t tls_stat(srv *s, int which)
{
	if (which == TLS_ST_RELOADS)
		return atomic_load(&s->tls_reloads);
	uint64_t sum = 0;
	for (unsigned i = 0; i < s->n_shards; i++) {
		wstats *w = &s->shards[i].st;
		_Atomic uint64_t *f = which == TLS_ST_HANDSHAKES  ? &w->tls_handshakes
				      : which == TLS_ST_FAILURES  ? &w->tls_failures
				      : which == TLS_ST_PLAINTEXT ? &w->tls_plaintext
								  : &w->tls_timeouts;
		sum += atomic_load_explicit(f, memory_order_relaxed);
	}
	return sum;
}
