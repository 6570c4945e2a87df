/*
 * epoll.c — the fallback loop, for kernels or sandboxes without io_uring.
 *
 * Same shards, same connections, same protocols (the wproto table of
 * server.h): a protocol does not know which loop feeds it. The one idea: the io_uring loop's
 * "operations in flight" become plain readiness here — a readable socket is read (a few times, then
 * the next one gets its turn) into the shard's one receive buffer and handed to the protocol's
 * on_data; replies are sent at once and only a socket that would block asks for EPOLLOUT. Nothing
 * is ever in flight in the kernel, so a dead connection is closed and freed on the spot.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server.h"
#include "tls.h"

enum { EP_EVENTFD = 1, EP_LISTEN = 2, EP_LISTEN_HTTP = 3 };
#define EP_READS_PER_WAKE 4 /* then the next connection gets its turn */
#define EP_TICK_NS        (1000 * INT64_C(1000000))
#define EP_TICK_FAST_NS   (50 * INT64_C(1000000))

int ep_init(wshard *sh)
{
	srv *s = sh->srv;
	sh->buf_bytes = s->conf->recv_buf_bytes;
	sh->epfd = epoll_create1(EPOLL_CLOEXEC);
	sh->ep_buf = malloc(s->conf->recv_buf_bytes);
	if (sh->epfd < 0 || !sh->ep_buf) {
		srv_log(s, TALLY_LOG_ERROR, "shard %u: epoll: %s", sh->id,
			sh->epfd < 0 ? strerror(errno) : "out of memory");
		return -ENOMEM;
	}
	struct epoll_event ev = {.events = EPOLLIN, .data.u64 = EP_EVENTFD};
	if (epoll_ctl(sh->epfd, EPOLL_CTL_ADD, sh->efd, &ev))
		return -errno;
	if (sh->listen_fd >= 0) {
		ev = (struct epoll_event){.events = EPOLLIN, .data.u64 = EP_LISTEN};
		if (epoll_ctl(sh->epfd, EPOLL_CTL_ADD, sh->listen_fd, &ev))
			return -errno;
	}
	if (sh->http_listen_fd >= 0) {
		ev = (struct epoll_event){.events = EPOLLIN, .data.u64 = EP_LISTEN_HTTP};
		if (epoll_ctl(sh->epfd, EPOLL_CTL_ADD, sh->http_listen_fd, &ev))
			return -errno;
	}
	return 0;
}

void ep_fini(wshard *sh)
{
	if (sh->epfd >= 0)
		close(sh->epfd);
	sh->epfd = -1;
	free(sh->ep_buf);
	sh->ep_buf = NULL;
}

static void ep_unlisten(wshard *sh, int *fd)
{
	if (*fd < 0)
		return;
	epoll_ctl(sh->epfd, EPOLL_CTL_DEL, *fd, NULL);
	close(*fd);
	*fd = -1;
}

void ep_stop_accepting(wshard *sh)
{
	ep_unlisten(sh, &sh->listen_fd);
	ep_unlisten(sh, &sh->http_listen_fd);
}

/* Accepts a few of what the listener has queued. */
static void ep_accept(wshard *sh, const int *fd, unsigned proto)
{
	for (int k = 0; k < 64 && *fd >= 0; k++) {
		int c = accept4(*fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
		if (c < 0) {
			if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
				srv_log(sh->srv, TALLY_LOG_WARN, "accept: %s", strerror(errno));
			break;
		}
		sh_accepted(sh, c, proto);
	}
}

static void ep_dead(wconn *c)
{
	c->eof = 1;
	c->state = CONN_DEAD;
}

/* Sends what is unsent until done or the socket would block. */
static void ep_write(wconn *c)
{
	const char *p;
	size_t len;
	while (c->state != CONN_DEAD && (len = tls_tx(c, &p)) > 0) {
		ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n > 0) {
			c->send_blocked = 0;
			tls_sent(c, (size_t)n);
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			c->send_blocked = 1;
		else
			ep_dead(c);
		return;
	}
}

static void ep_read(wshard *sh, wconn *c)
{
	for (int i = 0; i < EP_READS_PER_WAKE && c->state != CONN_DEAD && c->proto->wants_recv(c);
	     i++) {
		ssize_t n = recv(c->fd, sh->ep_buf, sh->buf_bytes, MSG_DONTWAIT);
		if (n > 0) {
			tls_recv(c, sh->ep_buf, (size_t)n);
			continue;
		}
		if (n == 0) {
			conn_eof(c);
			return;
		}
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			ep_dead(c);
		return;
	}
}

int ep_reconcile(wshard *sh, wconn *c)
{
	if (c->state != CONN_DEAD && !c->send_blocked)
		ep_write(c);
	if (c->state == CONN_DEAD) {
		if (c->recv_armed)
			epoll_ctl(sh->epfd, EPOLL_CTL_DEL, c->fd, NULL);
		sh_release(sh, c);
		return 1;
	}
	if (c->state == CONN_LINGER && conn_unsent(c) == 0 && !c->wr_shut) {
		shutdown(c->fd, SHUT_WR);
		c->wr_shut = 1;
	}
	/* Registered only while it wants something: a registered socket
	 * reports a hang-up even with no events asked, and a paused
	 * connection must not spin the loop on it. */
	unsigned want = (c->proto->wants_recv(c) ? EPOLLIN : 0) | (c->send_blocked ? EPOLLOUT : 0);
	struct epoll_event ev = {.events = want, .data.ptr = c};
	if (!want) {
		if (c->recv_armed)
			epoll_ctl(sh->epfd, EPOLL_CTL_DEL, c->fd, NULL);
		c->recv_armed = 0;
	} else if (!c->recv_armed) {
		if (epoll_ctl(sh->epfd, EPOLL_CTL_ADD, c->fd, &ev) == 0) {
			c->recv_armed = 1; /* here: registered with epoll */
			c->ep_events = want;
		} else {
			srv_log(sh->srv, TALLY_LOG_WARN, "epoll_ctl: %s", strerror(errno));
			ep_dead(c);
			srv_conn_dirty(c);
		}
	} else if (want != c->ep_events) {
		epoll_ctl(sh->epfd, EPOLL_CTL_MOD, c->fd, &ev);
		c->ep_events = want;
	}
	return 0;
}

void ep_run(wshard *sh)
{
	struct epoll_event evs[256];
	sh->next_tick = srv_now() + EP_TICK_NS;
	for (;;) {
		sh_flush_dirty(sh);
		if (sh->stopping && sh->n_conns == 0)
			break;
		int64_t wait = sh->next_tick - srv_now();
		int ms = wait <= 0 ? 0 : (int)(wait / 1000000) + 1;
		int n = epoll_wait(sh->epfd, evs, 256, ms);
		if (n < 0 && errno != EINTR)
			srv_log(sh->srv, TALLY_LOG_ERROR, "shard %u: epoll_wait: %s", sh->id,
				strerror(errno));
		for (int i = 0; i < n; i++) {
			uint64_t tag = evs[i].data.u64;
			if (tag == EP_EVENTFD) {
				sh_mailbox(sh);
			} else if (tag == EP_LISTEN) {
				ep_accept(sh, &sh->listen_fd, PROTO_LP);
			} else if (tag == EP_LISTEN_HTTP) {
				ep_accept(sh, &sh->http_listen_fd, PROTO_HTTP);
			} else {
				wconn *c = evs[i].data.ptr;
				if (c->state == CONN_DEAD)
					continue;
				if (evs[i].events & EPOLLOUT)
					c->send_blocked = 0;
				if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
					ep_read(sh, c);
				srv_conn_dirty(c);
			}
		}
		int64_t now = srv_now();
		if (now >= sh->next_tick) {
			sh_tick(sh, now);
			int fast = sh->stopping;
			for (wconn *c = sh->conns; c && !fast; c = c->next)
				fast = c->retry_at != 0 || c->state == CONN_LINGER;
			sh->next_tick = now + (fast ? EP_TICK_FAST_NS : EP_TICK_NS);
		}
	}
}
