/*
 * client.c — a connection to tallyd's line-protocol port (client.h).
 *
 * Lines are cut in place: the buffer is compacted only when more must be
 * received, so reading a long answer costs one memchr per line and no
 * copy. Waits go through poll with the caller's deadline, so a program
 * with many connections (torture) never blocks on one.
 */
#include "client.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int64_t client_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

int client_connect(client_conn *c, const char *host, const char *port, double wait_s,
		   size_t max_line, const char **why)
{
	memset(c, 0, sizeof *c);
	c->fd = -1;
	c->max_line = max_line;
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
	struct addrinfo *res;
	int rc = getaddrinfo(host, port, &hints, &res);
	if (rc) {
		if (why)
			*why = gai_strerror(rc);
		return -EHOSTUNREACH;
	}
	int fd = -1, err = 0;
	int64_t deadline = client_ms() + (int64_t)(wait_s * 1000);
	for (;;) {
		for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
			fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
			if (fd < 0) {
				err = errno;
				continue;
			}
			if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
				break;
			err = errno;
			close(fd);
			fd = -1;
		}
		/* only a refusal is worth retrying: the server may not listen yet */
		if (fd >= 0 || err != ECONNREFUSED || client_ms() >= deadline)
			break;
		struct timespec nap = {0, 50 * 1000 * 1000};
		nanosleep(&nap, NULL);
	}
	freeaddrinfo(res);
	if (fd < 0) {
		if (why)
			*why = strerror(err);
		return -err;
	}
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	c->fd = fd;
	return 0;
}

void client_close(client_conn *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	free(c->buf);
	c->buf = NULL;
	c->off = c->len = c->cap = 0;
}

int client_send(client_conn *c, const char *p, size_t n, int timeout_ms)
{
	while (n) {
		ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (w > 0) {
			p += w;
			n -= (size_t)w;
			continue;
		}
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
			return -errno;
		struct pollfd pf = {.fd = c->fd, .events = POLLOUT};
		int r = poll(&pf, 1, timeout_ms);
		if (r < 0 && errno != EINTR)
			return -errno;
		if (r == 0)
			return -ETIMEDOUT;
	}
	return 0;
}

int client_fill(client_conn *c, int timeout_ms)
{
	if (c->eof)
		return -1;
	if (c->off) {
		memmove(c->buf, c->buf + c->off, c->len - c->off);
		c->len -= c->off;
		c->off = 0;
	}
	if (c->len >= c->max_line + 1)
		return -E2BIG; /* no '\n' in more than the longest line */
	if (c->cap - c->len < 65536) {
		size_t cap = c->cap ? c->cap * 2 : 131072;
		if (cap > c->max_line + 131072)
			cap = c->max_line + 131072;
		if (cap > c->cap) {
			char *nb = realloc(c->buf, cap);
			if (!nb)
				return -ENOMEM;
			c->buf = nb;
			c->cap = cap;
		}
	}
	for (;;) {
		struct pollfd pf = {.fd = c->fd, .events = POLLIN};
		int r = poll(&pf, 1, timeout_ms);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			return 0;
		ssize_t k = c->file ? read(c->fd, c->buf + c->len, c->cap - c->len)
				    : recv(c->fd, c->buf + c->len, c->cap - c->len, MSG_DONTWAIT);
		if (k < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK))
			return 0;
		if (k < 0)
			return -errno;
		if (k == 0) {
			c->eof = 1;
			return -1;
		}
		c->len += (size_t)k;
		return 1;
	}
}

char *client_take(client_conn *c)
{
	if (!c->buf || c->len == c->off)
		return NULL;
	char *p = c->buf + c->off, *nl = memchr(p, '\n', c->len - c->off);
	if (!nl)
		return NULL;
	c->off = (size_t)(nl + 1 - c->buf);
	*nl = 0;
	return p;
}

int client_line(client_conn *c, int timeout_ms, char **line)
{
	int64_t deadline = client_ms() + timeout_ms;
	for (;;) {
		if ((*line = client_take(c)))
			return 1;
		int left = timeout_ms < 0 ? -1 : (int)(deadline - client_ms());
		int r = client_fill(c, timeout_ms < 0 ? -1 : left > 0 ? left : 0);
		if (r < 0)
			return r;
		if (r == 0 && timeout_ms >= 0 && client_ms() >= deadline)
			return 0;
	}
}
