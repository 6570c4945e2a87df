/*
 * server.c — tallyd's threads: io_uring shard loops, the acceptor's
 * hand-off, the syncer, and the graceful stop.
 *
 * Each shard thread owns one io_uring ring, one tally_writer bound to its
 * engine shard, and its connections; nothing it touches on the hot path is
 * shared. Shard 0's ring also runs the multishot accept and hands each new
 * socket to the least loaded shard through that shard's mailbox (a locked
 * array plus an eventfd the ring polls). Data is received by multishot
 * recv into a provided buffer ring, so a shard needs buffers only for the
 * bytes in flight, not per connection.
 *
 * The one idea for durability without stalls: fsync runs on the syncer
 * thread, never on a shard thread. A "#!sync" takes a ticket (a counter
 * under the syncer's mutex) and pauses its connection; the syncer serves
 * every ticket taken before a sync starts with that one sync (group
 * commit) and then wakes the shards, which answer the waiting connections.
 * The same syncer commits on an interval, so writes become durable even
 * from clients that never ask.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "jsonev.h"
#include "kafka.h"
#include "server.h"
#include "fanserv.h"
#include "offloop.h"
#include "tls.h"

/* user_data of operations that belong to no connection. Connections'
 * operations carry the (16-byte aligned) pointer with the op in the low
 * bits. */
enum { UD_ACCEPT = 1, UD_EVENTFD = 2, UD_IGNORE = 3, UD_ACCEPT_HTTP = 4 };
enum { OP_RECV = 1, OP_SEND = 2 };
#define OP_MASK UINT64_C(7)
_Static_assert(_Alignof(wconn) >= 8, "a connection's address leaves the op bits free");

#define BGID         0
#define TICK_NS      (1000 * INT64_C(1000000))
#define TICK_FAST_NS (50 * INT64_C(1000000))
#define QUIET_NS     (200 * INT64_C(1000000))  /* a draining connection this quiet is done */
#define HARD_STOP_NS (5 * INT64_C(1000000000)) /* after the grace: close whatever is left */

int64_t srv_now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

int64_t srv_clock_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_REALTIME, &t);
	return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

void srv_log(srv *s, int level, const char *fmt, ...)
{
	if (s && s->conf && level > s->conf->log_level)
		return;
	static const char *names[3] = {"error", "warn", "info"};
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	time_t now = time(NULL);
	struct tm tm;
	gmtime_r(&now, &tm);
	char ts[32];
	strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
	fprintf(stderr, "%s tallyd %s: %s\n", ts,
		names[level < 0   ? 0
		      : level > 2 ? 2
				  : level],
		msg);
}

static void srv_engine_log(void *ctx, int level, const char *msg)
{
	srv_log(ctx, level, "engine: %s", msg);
}

/* ---------------------------------------------------------------- syncer */

uint64_t srv_sync_ticket(srv *s)
{
	pthread_mutex_lock(&s->smu);
	uint64_t t = ++s->sync_req;
	pthread_cond_signal(&s->scv);
	pthread_mutex_unlock(&s->smu);
	return t;
}

int srv_sync_result(srv *s, uint64_t ticket, char *msg, size_t cap)
{
	pthread_mutex_lock(&s->smu);
	int rc = ticket <= s->sync_ok ? 0 : s->sync_rc;
	snprintf(msg, cap, "%s", s->sync_msg);
	pthread_mutex_unlock(&s->smu);
	return rc;
}

void srv_sync_wait(srv *s, uint64_t ticket)
{
	pthread_mutex_lock(&s->smu);
	while (atomic_load(&s->sync_done) < ticket && !s->syncer_stop)
		pthread_cond_wait(&s->dcv, &s->smu);
	pthread_mutex_unlock(&s->smu);
}

void srv_wake_shard(wshard *sh)
{
	uint64_t one = 1;
	ssize_t r = write(sh->efd, &one, sizeof one);
	(void)r; /* EAGAIN: the counter is already non-zero, the shard wakes anyway */
}

static void *srv_syncer_main(void *arg)
{
	srv *s = arg;
	int64_t next = srv_now() + s->conf->sync_ns;
	pthread_mutex_lock(&s->smu);
	for (;;) {
		uint64_t done = atomic_load(&s->sync_done);
		int due = s->conf->sync_ns && srv_now() >= next;
		if (s->sync_req == done && !due) {
			if (s->syncer_stop)
				break;
			if (s->conf->sync_ns) {
				struct timespec ts;
				clock_gettime(CLOCK_MONOTONIC, &ts);
				int64_t wait = next - srv_now();
				if (wait < 0)
					wait = 0;
				int64_t ns = ts.tv_nsec + wait % 1000000000;
				ts.tv_sec += (time_t)(wait / 1000000000 + ns / 1000000000);
				ts.tv_nsec = (long)(ns % 1000000000);
				pthread_cond_timedwait(&s->scv, &s->smu, &ts);
			} else {
				pthread_cond_wait(&s->scv, &s->smu);
			}
			continue;
		}
		/* Every ticket handed out so far was taken after its writes
		 * returned, so the sync that starts now covers them all. */
		uint64_t target = s->sync_req;
		int dirty = atomic_exchange(&s->dirty, 0);
		if (due)
			next = srv_now() + s->conf->sync_ns;
		if (!dirty && target == done)
			continue;
		pthread_mutex_unlock(&s->smu);
		int64_t t0 = srv_now();
		int rc = tally_db_sync(s->db);
		metrics_hist_observe(&s->sync_seconds, srv_now() - t0);
		char msg[256];
		if (rc)
			snprintf(msg, sizeof msg, "%s",
				 *tally_errmsg() ? tally_errmsg() : tally_strerror(rc));
		pthread_mutex_lock(&s->smu);
		if (rc) {
			if (!s->sync_rc || strcmp(s->sync_msg, msg))
				srv_log(s, TALLY_LOG_ERROR, "sync failed: %s", msg);
			s->sync_rc = rc;
			snprintf(s->sync_msg, sizeof s->sync_msg, "%s", msg);
		} else {
			s->sync_rc = 0;
			if (target > s->sync_ok)
				s->sync_ok = target;
		}
		if (target > done) {
			atomic_store_explicit(&s->sync_done, target, memory_order_release);
			pthread_cond_broadcast(&s->dcv);
			for (unsigned i = 0; i < s->n_shards; i++)
				srv_wake_shard(&s->shards[i]);
		}
	}
	pthread_mutex_unlock(&s->smu);
	return NULL;
}

/* ---------------------------------------------------------------- ring helpers */

static struct io_uring_sqe *sh_sqe(wshard *sh)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&sh->ring);
	if (!sqe) {
		io_uring_submit(&sh->ring);
		sqe = io_uring_get_sqe(&sh->ring);
	}
	return sqe; /* NULL only if the kernel took none: the caller retries later */
}

static void sh_arm_accept(wshard *sh)
{
	if (sh->listen_fd >= 0 && !sh->accept_armed) {
		struct io_uring_sqe *sqe = sh_sqe(sh);
		if (!sqe)
			return;
		io_uring_prep_multishot_accept(sqe, sh->listen_fd, NULL, NULL,
					       SOCK_CLOEXEC | SOCK_NONBLOCK);
		io_uring_sqe_set_data64(sqe, UD_ACCEPT);
		sh->accept_armed = 1;
	}
	if (sh->http_listen_fd >= 0 && !sh->http_accept_armed) {
		struct io_uring_sqe *sqe = sh_sqe(sh);
		if (!sqe)
			return;
		io_uring_prep_multishot_accept(sqe, sh->http_listen_fd, NULL, NULL,
					       SOCK_CLOEXEC | SOCK_NONBLOCK);
		io_uring_sqe_set_data64(sqe, UD_ACCEPT_HTTP);
		sh->http_accept_armed = 1;
	}
}

static void sh_arm_eventfd(wshard *sh)
{
	struct io_uring_sqe *sqe = sh_sqe(sh);
	if (!sqe)
		return;
	io_uring_prep_poll_multishot(sqe, sh->efd, POLLIN);
	io_uring_sqe_set_data64(sqe, UD_EVENTFD);
	sh->eventfd_armed = 1;
}

static void sh_return_buf(wshard *sh, unsigned bid)
{
	io_uring_buf_ring_add(sh->br, sh->bufs + (size_t)bid * sh->buf_bytes, sh->buf_bytes,
			      (unsigned short)bid, io_uring_buf_ring_mask(sh->nbufs), 0);
	io_uring_buf_ring_advance(sh->br, 1);
}

/* ---------------------------------------------------------------- connections */

void srv_conn_dirty(wconn *c)
{
	if (c->dirty)
		return;
	c->dirty = 1;
	c->dirty_next = c->sh->dirty;
	c->sh->dirty = c;
}

static const wproto *const sh_protos[PROTO_N] = {&conn_lp_proto, &httpd_proto};

static void sh_adopt(wshard *sh, int fd, unsigned proto)
{
	/* Adopted even when this shard is stopping: the acceptor took it
	 * before it saw the stop, so it is drained like the others. */
	srv *s = sh->srv;
	/* Counted here, where the connection is adopted (and uncounted in
	 * sh_release), so the address is read once: a peer gone meanwhile
	 * has none, and is not counted at all. */
	peer_addr pa;
	int counted = s->peers.cap && peer_of(fd, &pa) == 0;
	if (counted && peers_take(&s->peers, &pa)) {
		atomic_fetch_sub(&s->n_conns, 1);
		atomic_store_explicit(&sh->load, sh->n_conns, memory_order_relaxed);
		atomic_fetch_add_explicit(&sh->st.conns_refused_peer, 1, memory_order_relaxed);
		char msg[160], host[64];
		peer_format(&pa, host, sizeof host);
		int k = proto == PROTO_HTTP
				? snprintf(msg, sizeof msg,
					   "HTTP/1.1 503 Service Unavailable\r\nRetry-After: "
					   "1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
				: snprintf(msg, sizeof msg,
					   "ERR too many connections from %s "
					   "(max-connections-per-address %u)\n",
					   host, s->conf->max_conns_peer);
		ssize_t r = send(fd, msg, (size_t)k, MSG_NOSIGNAL | MSG_DONTWAIT);
		(void)r;
		close(fd);
		return;
	}
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	wconn *c = conn_new(sh, fd, sh_protos[proto]);
	if (c && s->tls_ctx && (proto == PROTO_HTTP || s->conf->tls_lp) && tls_conn_start(c)) {
		conn_free(c);
		c = NULL;
	}
	if (!c) {
		srv_log(s, TALLY_LOG_WARN, "out of memory: refusing a connection");
		if (counted)
			peers_drop(&s->peers, &pa);
		close(fd);
		atomic_fetch_sub(&s->n_conns, 1);
		return;
	}
	c->peer_counted = (unsigned)counted;
	if (counted)
		c->peer = pa;
	c->next = sh->conns;
	if (sh->conns)
		sh->conns->prev = c;
	sh->conns = c;
	sh->n_conns++;
	atomic_store_explicit(&sh->load, sh->n_conns, memory_order_relaxed);
	atomic_fetch_add_explicit(&sh->st.conns_total, 1, memory_order_relaxed);
	srv_conn_dirty(c);
}

void sh_release(wshard *sh, wconn *c)
{
	if (c->prev)
		c->prev->next = c->next;
	else
		sh->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	if (c->peer_counted)
		peers_drop(&sh->srv->peers, &c->peer);
	close(c->fd);
	tls_conn_free(c);
	conn_free(c);
	sh->n_conns--;
	atomic_store_explicit(&sh->load, sh->n_conns, memory_order_relaxed);
	atomic_fetch_sub(&sh->srv->n_conns, 1);
}

/* Makes the ring's operations match what the connection wants. Returns 1
 * when the connection was freed. */
static int sh_reconcile(wshard *sh, wconn *c)
{
	if (sh->srv->use_epoll)
		return ep_reconcile(sh, c);
	/* First, as encrypting may let the protocol go on (and change what
	 * it wants); a span is asked for only with no send in flight. */
	const char *tx = NULL;
	size_t unsent = c->send_busy ? 1 : tls_tx(c, &tx);
	if (c->state == CONN_DEAD) {
		if (!c->killed) {
			c->killed = 1;
			/* Completes a pending recv (0) and send (error) at once. */
			shutdown(c->fd, SHUT_RDWR);
			if (c->recv_armed && !c->recv_cancelling) {
				struct io_uring_sqe *sqe = sh_sqe(sh);
				if (sqe) {
					io_uring_prep_cancel64(sqe,
							       (uint64_t)(uintptr_t)c | OP_RECV, 0);
					io_uring_sqe_set_data64(sqe, UD_IGNORE);
					c->recv_cancelling = 1;
				}
			}
		}
		if (c->inflight == 0) {
			sh_release(sh, c);
			return 1;
		}
		return 0;
	}
	int want = c->proto->wants_recv(c);
	if (want && !c->recv_armed) {
		struct io_uring_sqe *sqe = sh_sqe(sh);
		if (sqe) {
			io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
			sqe->flags |= IOSQE_BUFFER_SELECT;
			sqe->buf_group = BGID;
			io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)c | OP_RECV);
			c->recv_armed = 1;
			c->inflight++;
		}
	} else if (!want && c->recv_armed && !c->recv_cancelling) {
		struct io_uring_sqe *sqe = sh_sqe(sh);
		if (sqe) {
			io_uring_prep_cancel64(sqe, (uint64_t)(uintptr_t)c | OP_RECV, 0);
			io_uring_sqe_set_data64(sqe, UD_IGNORE);
			c->recv_cancelling = 1;
		}
	}
	if (!c->send_busy && unsent) {
		struct io_uring_sqe *sqe = sh_sqe(sh);
		if (sqe) {
			io_uring_prep_send(sqe, c->fd, tx, unsent, MSG_NOSIGNAL);
			io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)c | OP_SEND);
			c->send_busy = 1;
			c->send_len = unsent;
			c->inflight++;
		}
	}
	if (c->state == CONN_LINGER && !unsent && !c->send_busy && !c->wr_shut) {
		/* Replies are out: tell the client, then read (and drop) until
		 * it closes, so close() cannot reset unread replies away. */
		shutdown(c->fd, SHUT_WR);
		c->wr_shut = 1;
	}
	return 0;
}

void sh_flush_dirty(wshard *sh)
{
	while (sh->dirty) {
		wconn *c = sh->dirty;
		sh->dirty = c->dirty_next;
		/* Still marked while it is reconciled: the epoll loop's sends
		 * call back into conn.c, which must not queue it again (it may
		 * be freed here). */
		if (!sh_reconcile(sh, c))
			c->dirty = 0;
	}
}

/* ---------------------------------------------------------------- completions */

static void sh_on_recv(wshard *sh, wconn *c, struct io_uring_cqe *cqe)
{
	int more = (cqe->flags & IORING_CQE_F_MORE) != 0;
	if (!more) {
		c->inflight--;
		c->recv_armed = 0;
		c->recv_cancelling = 0;
	}
	if (cqe->res > 0) {
		unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
		if (c->state != CONN_DEAD)
			tls_recv(c, sh->bufs + (size_t)bid * sh->buf_bytes, (size_t)cqe->res);
		sh_return_buf(sh, bid);
	} else if (cqe->res == 0) {
		if (c->state != CONN_DEAD)
			conn_eof(c);
	} else if (cqe->res != -ENOBUFS && cqe->res != -ECANCELED) {
		/* Reset or other socket error: nothing more can be said. */
		c->eof = 1;
		c->state = CONN_DEAD;
	}
	srv_conn_dirty(c);
}

static void sh_on_send(wshard *sh, wconn *c, struct io_uring_cqe *cqe)
{
	c->inflight--;
	c->send_busy = 0;
	free(c->out_old); /* the buffer this send read, if out has grown since */
	c->out_old = NULL;
	if (cqe->res > 0 && c->state != CONN_DEAD) {
		tls_sent(c, (size_t)cqe->res);
	} else if (cqe->res < 0 && cqe->res != -EAGAIN && cqe->res != -EINTR) {
		c->eof = 1;
		c->state = CONN_DEAD;
	}
	srv_conn_dirty(c);
}

static void sh_on_accept(wshard *sh, struct io_uring_cqe *cqe, unsigned proto)
{
	if (!(cqe->flags & IORING_CQE_F_MORE)) {
		if (proto == PROTO_HTTP)
			sh->http_accept_armed = 0;
		else
			sh->accept_armed = 0;
	}
	if (cqe->res < 0) {
		if (cqe->res != -ECANCELED && !sh->stopping)
			srv_log(sh->srv, TALLY_LOG_WARN, "accept: %s", strerror(-cqe->res));
		return; /* re-armed by the next tick, so EMFILE does not spin */
	}
	sh_accepted(sh, cqe->res, proto);
}

void sh_accepted(wshard *sh, int fd, unsigned proto)
{
	srv *s = sh->srv;
	if (sh->stopping) {
		static const char msg[] = "ERR server shutting down\n";
		static const char hmsg[] = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: "
					   "0\r\nConnection: close\r\n\r\n";
		ssize_t r = proto == PROTO_HTTP
				    ? send(fd, hmsg, sizeof hmsg - 1, MSG_NOSIGNAL | MSG_DONTWAIT)
				    : send(fd, msg, sizeof msg - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
		(void)r;
		close(fd);
		return;
	}
	if (atomic_fetch_add(&s->n_conns, 1) >= s->conf->max_conns) {
		atomic_fetch_sub(&s->n_conns, 1);
		atomic_fetch_add_explicit(&sh->st.conns_refused, 1, memory_order_relaxed);
		static const char msg[] = "ERR too many connections; try again later\n";
		static const char hmsg[] = "HTTP/1.1 503 Service Unavailable\r\nRetry-After: "
					   "1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
		ssize_t r = proto == PROTO_HTTP
				    ? send(fd, hmsg, sizeof hmsg - 1, MSG_NOSIGNAL | MSG_DONTWAIT)
				    : send(fd, msg, sizeof msg - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
		(void)r;
		close(fd);
		return;
	}
	/* The least loaded shard; ties go round robin. */
	unsigned start = atomic_fetch_add(&s->next_shard, 1), best = start % s->n_shards;
	unsigned best_load = UINT32_MAX;
	for (unsigned k = 0; k < s->n_shards; k++) {
		unsigned i = (start + k) % s->n_shards;
		unsigned l = atomic_load_explicit(&s->shards[i].load, memory_order_relaxed);
		if (l < best_load) {
			best_load = l;
			best = i;
		}
	}
	wshard *to = &s->shards[best];
	if (to == sh) {
		sh_adopt(sh, fd, proto);
		return;
	}
	atomic_fetch_add_explicit(&to->load, 1, memory_order_relaxed); /* until it adopts */
	pthread_mutex_lock(&to->mu);
	if (to->n_mail == to->cap_mail) {
		size_t cap = to->cap_mail ? to->cap_mail * 2 : 64;
		int *m = realloc(to->mail, cap * sizeof *m);
		if (!m) {
			pthread_mutex_unlock(&to->mu);
			close(fd);
			atomic_fetch_sub(&s->n_conns, 1);
			return;
		}
		to->mail = m;
		to->cap_mail = cap;
	}
	to->mail[to->n_mail++] = fd * PROTO_N + (int)proto; /* the protocol rides along */
	pthread_mutex_unlock(&to->mu);
	srv_wake_shard(to);
}

static void sh_begin_stop(wshard *sh)
{
	sh->stopping = 1;
	sh->drain_until = srv_now() + sh->srv->conf->grace_ns;
	if (sh->srv->use_epoll) {
		ep_stop_accepting(sh);
		return;
	}
	if (sh->listen_fd >= 0 && sh->accept_armed) {
		struct io_uring_sqe *sqe = sh_sqe(sh);
		if (sqe) {
			io_uring_prep_cancel64(sqe, UD_ACCEPT, 0);
			io_uring_sqe_set_data64(sqe, UD_IGNORE);
		}
	}
	if (sh->http_listen_fd >= 0 && sh->http_accept_armed) {
		struct io_uring_sqe *sqe = sh_sqe(sh);
		if (sqe) {
			io_uring_prep_cancel64(sqe, UD_ACCEPT_HTTP, 0);
			io_uring_sqe_set_data64(sqe, UD_IGNORE);
		}
	}
}

static void sh_on_eventfd(wshard *sh, struct io_uring_cqe *cqe)
{
	if (!(cqe->flags & IORING_CQE_F_MORE))
		sh->eventfd_armed = 0;
	sh_mailbox(sh);
}

void sh_mailbox(wshard *sh)
{
	uint64_t v;
	ssize_t r = read(sh->efd, &v, sizeof v);
	(void)r;
	pthread_mutex_lock(&sh->mu);
	size_t n = sh->n_mail;
	int fds[256];
	if (n > 256)
		n = 256;
	if (n) {
		memcpy(fds, sh->mail, n * sizeof *fds);
		memmove(sh->mail, sh->mail + n, (sh->n_mail - n) * sizeof *fds);
		sh->n_mail -= n;
	}
	int more = sh->n_mail > 0;
	pthread_mutex_unlock(&sh->mu);
	if (more)
		srv_wake_shard(sh);
	for (size_t i = 0; i < n; i++) {
		atomic_fetch_sub_explicit(&sh->load, 1, memory_order_relaxed);
		sh_adopt(sh, fds[i] / PROTO_N, (unsigned)(fds[i] % PROTO_N));
	}
	int stop = atomic_load(&sh->srv->stopping);
	if (stop && !sh->stopping)
		sh_begin_stop(sh);
	if (stop > 1)
		sh->hurry = 1;
	if (sh->n_sync_wait)
		for (wconn *c = sh->conns; c; c = c->next)
			if (c->sync_ticket)
				c->proto->step(c);
	unsigned fan = atomic_exchange(&sh->fan_ready, 0), job = atomic_exchange(&sh->job_ready, 0);
	if (fan || job)
		for (wconn *c = sh->conns; c; c = c->next)
			if ((fan && c->prod == PROD_FANOUT) || (job && c->prod == PROD_JOB))
				c->proto->step(c);
}

void sh_tick(wshard *sh, int64_t now)
{
	for (wconn *c = sh->conns; c; c = c->next) {
		tls_tick(c, now);
		c->proto->tick(c, now);
		if (sh->stopping && c->state == CONN_OPEN) {
			/* Draining: a connection that went quiet, or any once the
			 * grace period is over, gets its last sync and goodbye. */
			if (sh->hurry || now >= sh->drain_until || now - c->last_active >= QUIET_NS)
				c->proto->begin_shutdown(c);
		}
		if (sh->stopping && c->state != CONN_DEAD &&
		    (sh->hurry || (now >= sh->drain_until + HARD_STOP_NS && !c->sync_ticket &&
				   c->prod != PROD_JOB))) {
			/* (a command off the loop is waited for: its answer,
			 * then the goodbye; a second signal hurries) */
			c->state = CONN_DEAD;
			srv_conn_dirty(c);
		}
	}
	if (!sh->srv->use_epoll && !sh->stopping)
		sh_arm_accept(sh);
}

/* ---------------------------------------------------------------- shard thread */

static int sh_ring_init(wshard *sh)
{
	srv *s = sh->srv;
	struct io_uring_params p;
	memset(&p, 0, sizeof p);
	p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQSIZE;
	p.cq_entries = 16384;
	int rc = io_uring_queue_init_params(2048, &sh->ring, &p);
	if (rc == -EINVAL) { /* an older kernel: plain flags */
		memset(&p, 0, sizeof p);
		p.flags = IORING_SETUP_CQSIZE;
		p.cq_entries = 16384;
		rc = io_uring_queue_init_params(2048, &sh->ring, &p);
	}
	if (rc) {
		srv_log(s, TALLY_LOG_ERROR, "shard %u: io_uring_queue_init: %s", sh->id,
			strerror(-rc));
		return rc;
	}
	sh->ring_ok = 1;
	sh->nbufs = s->conf->recv_bufs;
	sh->buf_bytes = s->conf->recv_buf_bytes;
	sh->br_bytes = (sh->nbufs * sizeof(struct io_uring_buf) + 4095) & ~(size_t)4095;
	void *m = mmap(NULL, sh->br_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1,
		       0);
	if (m == MAP_FAILED) {
		sh->br = NULL;
		return -errno;
	}
	sh->br = m;
	sh->bufs = malloc((size_t)sh->nbufs * sh->buf_bytes);
	if (!sh->bufs)
		return -ENOMEM;
	io_uring_buf_ring_init(sh->br);
	struct io_uring_buf_reg reg = {
		.ring_addr = (unsigned long)(uintptr_t)sh->br,
		.ring_entries = sh->nbufs,
		.bgid = BGID,
	};
	if ((rc = io_uring_register_buf_ring(&sh->ring, &reg, 0))) {
		srv_log(s, TALLY_LOG_ERROR, "shard %u: registering the buffer ring: %s", sh->id,
			strerror(-rc));
		return rc;
	}
	for (unsigned i = 0; i < sh->nbufs; i++)
		io_uring_buf_ring_add(sh->br, sh->bufs + (size_t)i * sh->buf_bytes, sh->buf_bytes,
				      (unsigned short)i, io_uring_buf_ring_mask(sh->nbufs), (int)i);
	io_uring_buf_ring_advance(sh->br, (int)sh->nbufs);
	return 0;
}

static void sh_dispatch(wshard *sh, struct io_uring_cqe *cqe)
{
	uint64_t ud = io_uring_cqe_get_data64(cqe);
	switch (ud) {
	case UD_ACCEPT: sh_on_accept(sh, cqe, PROTO_LP); return;
	case UD_ACCEPT_HTTP: sh_on_accept(sh, cqe, PROTO_HTTP); return;
	case UD_EVENTFD: sh_on_eventfd(sh, cqe); return;
	case UD_IGNORE: return;
	default: break;
	}
	wconn *c = (wconn *)(uintptr_t)(ud & ~OP_MASK);
	if ((ud & OP_MASK) == OP_RECV)
		sh_on_recv(sh, c, cqe);
	else
		sh_on_send(sh, c, cqe);
}

/*
 * Busy polling. Waking a sleeping thread costs this VM about 9 us per
 * round trip (a C echo server answers in 27.6 us blocking, 19.4 us
 * polling); a client that sends its next query as soon as it has an
 * answer finds the shard still polling. So for busy-poll after the last
 * completion the shard submits and reaps without sleeping (with
 * DEFER_TASKRUN the kernel posts completions only when the ring is
 * entered, so each turn is one non-blocking io_uring_enter), then sleeps
 * as before. An idle server polls once per burst, never continuously, and
 * every 16th turn (about 20 us) yields the CPU to any thread that has
 * work: on a busy machine polling must not take long from the clients or
 * the flusher (the scheduler's own preemption is milliseconds).
 * Returns 1 when completions are ready.
 */
static int sh_poll(wshard *sh, int64_t now)
{
	int64_t until = sh->active_at + sh->srv->conf->poll_ns;
	if (!sh->srv->conf->poll_ns || now >= until || sh->stopping)
		return 0;
	int64_t end = until < sh->next_tick ? until : sh->next_tick;
	for (unsigned turn = 1;; turn++) {
		io_uring_submit_and_get_events(&sh->ring);
		if (io_uring_cq_ready(&sh->ring))
			return 1;
		if (srv_now() >= end)
			return 0;
		/* sched_yield costs this VM 1.25 us, more than a turn: yielding
		 * every turn added about a microsecond to each round trip */
		if (turn % 16 == 0)
			sched_yield(); /* a thread with work (a client, the flusher) goes first */
	}
}

static void *sh_main(void *arg)
{
	wshard *sh = arg;
	srv *s = sh->srv;
	int rc = s->use_epoll ? ep_init(sh) : sh_ring_init(sh);
	pthread_mutex_lock(&s->init_mu);
	sh->init_rc = rc;
	sh->init_done = 1;
	pthread_cond_broadcast(&s->init_cv);
	pthread_mutex_unlock(&s->init_mu);
	if (rc) {
		atomic_fetch_add(&s->exited, 1);
		return NULL;
	}
	if (s->use_epoll) {
		ep_run(sh);
		goto done;
	}
	sh_arm_eventfd(sh);
	sh_arm_accept(sh);
	sh->next_tick = srv_now() + TICK_NS;
	for (;;) {
		sh_flush_dirty(sh);
		if (sh->stopping && sh->n_conns == 0 && !sh->accept_armed && !sh->http_accept_armed)
			break;
		if (!sh->eventfd_armed)
			sh_arm_eventfd(sh);
		int64_t now = srv_now();
		int64_t wait = sh->next_tick - now;
		if (wait < 0)
			wait = 0;
		struct __kernel_timespec ts = {.tv_sec = wait / 1000000000,
					       .tv_nsec = wait % 1000000000};
		struct io_uring_cqe *cqe;
		if (sh_poll(sh, now))
			rc = 0; /* completions arrived while polling */
		else
			rc = io_uring_submit_and_wait_timeout(&sh->ring, &cqe, 1, &ts, NULL);
		if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EBUSY && rc != -EAGAIN)
			srv_log(s, TALLY_LOG_ERROR, "shard %u: io_uring wait: %s", sh->id,
				strerror(-rc));
		unsigned head, seen = 0;
		io_uring_for_each_cqe(&sh->ring, head, cqe)
		{
			sh_dispatch(sh, cqe);
			seen++;
		}
		io_uring_cq_advance(&sh->ring, seen);
		now = srv_now();
		if (seen)
			sh->active_at = now;
		if (now >= sh->next_tick) {
			sh_tick(sh, now);
			int fast = sh->stopping;
			for (wconn *c = sh->conns; c && !fast; c = c->next)
				fast = c->retry_at != 0 || c->state == CONN_LINGER;
			sh->next_tick = now + (fast ? TICK_FAST_NS : TICK_NS);
		}
	}
done:
	if (sh->listen_fd >= 0) {
		close(sh->listen_fd);
		sh->listen_fd = -1;
	}
	if (sh->http_listen_fd >= 0) {
		close(sh->http_listen_fd);
		sh->http_listen_fd = -1;
	}
	atomic_fetch_add(&s->exited, 1);
	return NULL;
}

/* ---------------------------------------------------------------- lifecycle */

/* Listens on bind:port (0: any free port); *fd and *bound on success. */
static int srv_listen(srv *s, const char *bind_addr, unsigned port_no, int *fd_out, unsigned *bound)
{
	char port[16];
	snprintf(port, sizeof port, "%u", port_no);
	struct addrinfo hints = {.ai_family = AF_UNSPEC,
				 .ai_socktype = SOCK_STREAM,
				 .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
	struct addrinfo *res = NULL;
	int rc = getaddrinfo(bind_addr, port, &hints, &res);
	if (rc) {
		srv_log(s, TALLY_LOG_ERROR, "bind address '%s': %s", bind_addr, gai_strerror(rc));
		return -EINVAL;
	}
	int fd = -1, err = 0;
	for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
		/* Non-blocking: the epoll loop accepts until EAGAIN. */
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
			    ai->ai_protocol);
		if (fd < 0) {
			err = errno;
			continue;
		}
		int one = 1;
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
		if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 4096) == 0)
			break;
		err = errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0) {
		srv_log(s, TALLY_LOG_ERROR, "listen on %s:%u: %s", bind_addr, port_no,
			strerror(err));
		return -err;
	}
	struct sockaddr_storage ss;
	socklen_t sl = sizeof ss;
	getsockname(fd, (struct sockaddr *)&ss, &sl);
	*bound = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
						: ((struct sockaddr_in *)&ss)->sin_port);
	*fd_out = fd;
	return 0;
}

static int srv_write_port_file(srv *s, const char *path, unsigned port)
{
	if (!path)
		return 0;
	char tmp[4200];
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	FILE *f = fopen(tmp, "w");
	if (!f || fprintf(f, "%u\n", port) < 0 || fclose(f) != 0 || rename(tmp, path)) {
		srv_log(s, TALLY_LOG_ERROR, "port-file %s: %s", path, strerror(errno));
		return -errno;
	}
	return 0;
}

/* io_uring where the kernel lets us (a seccomp profile may not), else
 * epoll behind the same connection layer. */
static int srv_pick_io(srv *s)
{
	const char *io = s->conf->io ? s->conf->io : "auto";
	if (!strcmp(io, "epoll")) {
		s->use_epoll = 1;
		return 0;
	}
	struct io_uring r;
	int rc = io_uring_queue_init(8, &r, 0);
	if (rc == 0) {
		struct io_uring_probe *p = io_uring_get_probe_ring(&r);
		int ok = p && io_uring_opcode_supported(p, IORING_OP_RECV) &&
			 io_uring_opcode_supported(p, IORING_OP_ACCEPT) &&
			 io_uring_opcode_supported(p, IORING_OP_PROVIDE_BUFFERS);
		if (p)
			io_uring_free_probe(p);
		io_uring_queue_exit(&r);
		if (ok)
			return 0;
		rc = -ENOSYS;
	}
	if (!strcmp(io, "io_uring")) {
		srv_log(s, TALLY_LOG_ERROR, "io_uring unavailable: %s (try --io epoll)",
			strerror(-rc));
		return rc;
	}
	srv_log(s, TALLY_LOG_WARN, "io_uring unavailable (%s): using epoll", strerror(-rc));
	s->use_epoll = 1;
	return 0;
}

int srv_open(srv *s, srv_conf *conf)
{
	memset(s, 0, sizeof *s);
	s->conf = conf;
	s->listen_fd = -1;
	s->http_listen_fd = -1;
	s->started = srv_now();
	pthread_mutex_init(&s->smu, NULL);
	pthread_mutex_init(&s->init_mu, NULL);
	pthread_cond_init(&s->init_cv, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&s->scv, &ca);
	pthread_cond_init(&s->dcv, NULL);
	pthread_condattr_destroy(&ca);
	int rc;
	/* The per-address table before anything can fail: srv_close frees it. */
	if (peers_init(&s->peers, conf->max_conns, conf->max_conns_peer)) {
		srv_log(s, TALLY_LOG_ERROR, "out of memory for the per-address connection table");
		srv_close(s);
		return -ENOMEM;
	}
	/* Before the database opens: a bad certificate stops the start at once. */
	if (tls_srv_init(s)) {
		srv_close(s);
		return -EINVAL;
	}
	unsigned n = conf->shards;
	if (n == 0) {
		long cpus = sysconf(_SC_NPROCESSORS_ONLN);
		n = cpus > 0 ? (unsigned)cpus : 1;
	}
	if (n > 256)
		n = 256;

	/* Enough descriptors for the connections we promise. */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
	    conf->max_conns + 64 + 4 * (rlim_t)n > rl.rlim_cur) {
		unsigned m = rl.rlim_cur > 64 + 4 * (rlim_t)n + 1
				     ? (unsigned)(rl.rlim_cur - 64 - 4 * (rlim_t)n)
				     : 1;
		srv_log(s, TALLY_LOG_WARN,
			"max-connections %u exceeds the descriptor limit %llu; using %u",
			conf->max_conns, (unsigned long long)rl.rlim_cur, m);
		conf->max_conns = m;
	}

	/* JSON event mappings: each json-map was checked when it was set. */
	if ((rc = jsonev_maps_new(&s->json_maps)))
		goto fail;
	for (unsigned i = 0; i < conf->n_json_maps; i++) {
		char err[256];
		if ((rc = jsonev_maps_add(s->json_maps, conf->json_maps[i], err, sizeof err))) {
			srv_log(s, TALLY_LOG_ERROR, "%s", err);
			goto fail;
		}
	}

	tally_options o;
	tally_options_init(&o);
	o.shards = n;
	o.max_line_bytes = conf->max_line;
	if (conf->memory_limit)
		o.memory_limit = conf->memory_limit;
	if (conf->rollup_cache_bytes)
		o.cache_bytes = conf->rollup_cache_bytes;
	o.max_keys_per_table = conf->max_keys;
	o.prefault = (int)conf->prefault;
	o.wal_damage_read_only = (int)conf->wal_damage_ro;
	o.part_reads = conf->part_reads_mode;
	o.align_offset = conf->align_offset;
	o.table_keys = conf->table_keys;
	o.distributions = conf->distributions;
	if (conf->n_levels) {
		o.n_levels = conf->n_levels;
		memcpy(o.levels, conf->levels, sizeof o.levels);
	}
	o.flush_interval_ms = conf->flush_ms;
	/* NULL and 0 leave the engine's defaults (conf_env took the environment) */
	o.tier_bucket = conf->tier_bucket;
	o.tier_endpoint = conf->tier_endpoint;
	o.tier_region = conf->tier_region;
	o.tier_prefix = conf->tier_prefix;
	o.tier_access_key = conf->tier_access_key;
	o.tier_secret_key = conf->tier_secret_key;
	o.tier_session_token = conf->tier_session_token;
	o.tier_after = conf->tier_after;
	o.tier_cache_bytes = conf->tier_cache_bytes;
	o.tier_timeout_ms = conf->tier_timeout_ms;
	o.tier_retries = conf->tier_retries;
	o.tier_part_bytes = conf->tier_part_bytes;
	o.label_window = conf->label_window;
	o.label_expiry = conf->label_expiry;
	o.retention = conf->retention;
	o.log_fn = srv_engine_log;
	o.log_ctx = s;
	o.log_level = conf->log_level;
	rc = tally_db_open(conf->data, &o, &s->db);
	/* The engine copied the credentials (or failed): ours are not needed
	 * again, so they do not stay in memory for the server's life. */
	conf_wipe(&conf->tier_secret_key);
	conf_wipe(&conf->tier_session_token);
	if (rc) {
		srv_log(s, TALLY_LOG_ERROR, "opening %s: %s", conf->data,
			*tally_errmsg() ? tally_errmsg() : tally_strerror(rc));
		goto fail;
	}
	if ((rc = srv_pick_io(s)))
		goto fail;
	if ((rc = srv_listen(s, conf->bind, conf->port, &s->listen_fd, &s->port)))
		goto fail;
	if (conf->http_port >= 0 &&
	    (rc = srv_listen(s, conf->http_bind ? conf->http_bind : conf->bind,
			     (unsigned)conf->http_port, &s->http_listen_fd, &s->http_port)))
		goto fail;
	s->shards = calloc(n, sizeof *s->shards);
	if (!s->shards) {
		rc = -ENOMEM;
		goto fail;
	}
	s->n_shards = n;
	for (unsigned i = 0; i < n; i++) {
		wshard *sh = &s->shards[i];
		sh->srv = s;
		sh->id = i;
		sh->listen_fd = -1;
		sh->http_listen_fd = -1;
		sh->efd = -1;
		sh->epfd = -1;
		pthread_mutex_init(&sh->mu, NULL);
	}
	for (unsigned i = 0; i < n; i++) {
		wshard *sh = &s->shards[i];
		sh->scratch_cap = (size_t)conf->max_line + 1;
		if (!(sh->scratch = malloc(sh->scratch_cap))) {
			rc = -ENOMEM;
			goto fail;
		}
		if ((sh->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0) {
			rc = -errno;
			srv_log(s, TALLY_LOG_ERROR, "eventfd: %s", strerror(errno));
			goto fail;
		}
		/* The writer of engine shard i % shards: a directory written
		 * with more shards keeps them, and writes still spread. */
		if ((rc = tally_writer_open(s->db, (int)i, &sh->w))) {
			srv_log(s, TALLY_LOG_ERROR, "writer for shard %u: %s", i, tally_errmsg());
			goto fail;
		}
	}
	if ((rc = kafka_open(s)))
		goto fail;
	s->shards[0].listen_fd = s->listen_fd; /* shard 0 accepts for all */
	s->shards[0].http_listen_fd = s->http_listen_fd;
	s->listen_fd = s->http_listen_fd = -1;
	return 0;
fail:
	srv_close(s);
	return rc ? rc : -EINVAL;
}

int srv_start(srv *s)
{
	int rc = 0;
	if (pthread_create(&s->syncer, NULL, srv_syncer_main, s))
		return -EAGAIN;
	/* before any connection can ask it for something */
	if ((rc = offloop_init(s)))
		return rc;
	for (unsigned i = 0; i < s->n_shards; i++) {
		if (pthread_create(&s->shards[i].thr, NULL, sh_main, &s->shards[i])) {
			rc = -EAGAIN;
			break;
		}
		s->started_threads = i + 1;
	}
	pthread_mutex_lock(&s->init_mu);
	for (unsigned i = 0; i < s->started_threads; i++) {
		while (!s->shards[i].init_done)
			pthread_cond_wait(&s->init_cv, &s->init_mu);
		if (s->shards[i].init_rc && !rc)
			rc = s->shards[i].init_rc;
	}
	pthread_mutex_unlock(&s->init_mu);
	/* The HTTP port file first: a test that waits for the line
	 * protocol's finds both. */
	if (rc == 0 && s->http_port)
		rc = srv_write_port_file(s, s->conf->http_port_file, s->http_port);
	if (rc == 0 && (rc = srv_write_port_file(s, s->conf->port_file, s->port)) == 0) {
		srv_log(s, TALLY_LOG_INFO, "listening on %s:%u%s, data %s, %u shards, %s%s",
			s->conf->bind, s->port, s->conf->tls_lp ? " (TLS)" : "", s->conf->data,
			s->n_shards, s->use_epoll ? "epoll" : "io_uring",
			s->conf->token ? ", token required" : "");
		if (s->http_port)
			srv_log(s, TALLY_LOG_INFO, "%s on %s:%u", s->tls_ctx ? "HTTPS" : "HTTP",
				s->conf->http_bind ? s->conf->http_bind : s->conf->bind,
				s->http_port);
	}
	if (rc == 0)
		rc = fanserv_init(s);
	if (rc == 0)
		rc = mqtt_start(s);
	if (rc == 0)
		rc = kafka_start(s);
	if (rc)
		srv_stop(s);
	return rc;
}

void srv_stop(srv *s)
{
	int prev = atomic_fetch_add(&s->stopping, 1);
	if (prev == 0)
		srv_log(s, TALLY_LOG_INFO,
			"stopping: no new connections; draining, then a last sync");
	else if (prev == 1)
		srv_log(s, TALLY_LOG_INFO, "stopping now: closing connections");
	kafka_stop(s);
	for (unsigned i = 0; i < s->n_shards; i++)
		srv_wake_shard(&s->shards[i]);
	mqtt_stop(s);
}

int srv_wait(srv *s)
{
	/* the consumers first: they sync and commit while the syncer runs */
	kafka_join(s);
	for (unsigned i = 0; i < s->started_threads; i++)
		pthread_join(s->shards[i].thr, NULL);
	s->started_threads = 0;
	offloop_fini(s); /* the command running ends first: it uses the store */
	mqtt_join(s);    /* before the syncer stops: its last PUBACKs wait for a sync */
	pthread_mutex_lock(&s->smu);
	s->syncer_stop = 1;
	pthread_cond_signal(&s->scv);
	pthread_mutex_unlock(&s->smu);
	pthread_join(s->syncer, NULL);
	int rc = tally_db_sync(s->db);
	if (rc)
		srv_log(s, TALLY_LOG_ERROR, "last sync: %s", tally_errmsg());
	else
		srv_log(s, TALLY_LOG_INFO, "stopped; everything accepted is synced");
	return rc;
}

void srv_close(srv *s)
{
	mqtt_join(s);
	fanserv_fini(s);
	offloop_fini(s);
	kafka_close(s); /* its writers and its JSON mapping go before the rest */
	for (unsigned i = 0; i < s->n_shards; i++) {
		wshard *sh = &s->shards[i];
		while (sh->conns) {
			wconn *c = sh->conns;
			sh->conns = c->next;
			close(c->fd);
			tls_conn_free(c);
			conn_free(c);
		}
		for (size_t k = 0; k < sh->n_mail; k++)
			close(sh->mail[k]);
		free(sh->mail);
		if (sh->ring_ok)
			io_uring_queue_exit(&sh->ring);
		ep_fini(sh);
		if (sh->br)
			munmap(sh->br, sh->br_bytes);
		free(sh->bufs);
		if (sh->efd >= 0)
			close(sh->efd);
		if (sh->listen_fd >= 0)
			close(sh->listen_fd);
		if (sh->http_listen_fd >= 0)
			close(sh->http_listen_fd);
		tally_writer_close(sh->w);
		free(sh->scratch);
		free(sh->text_buf);
		pthread_mutex_destroy(&sh->mu);
	}
	free(s->shards);
	s->shards = NULL;
	jsonev_maps_free(s->json_maps);
	s->json_maps = NULL;
	s->n_shards = 0;
	if (s->listen_fd >= 0)
		close(s->listen_fd);
	if (s->http_listen_fd >= 0)
		close(s->http_listen_fd);
	s->listen_fd = s->http_listen_fd = -1;
	tally_db_close(s->db);
	s->db = NULL;
	peers_free(&s->peers);
	pthread_mutex_destroy(&s->smu);
	pthread_cond_destroy(&s->scv);
	pthread_cond_destroy(&s->dcv);
	pthread_mutex_destroy(&s->init_mu);
	pthread_cond_destroy(&s->init_cv);
	tls_srv_fini(s);
}
