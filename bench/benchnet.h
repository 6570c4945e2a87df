/*
 * benchnet.h — what the benchmarks that talk to a tallyd share besides
 * benchutil.h (clock, die, percentiles): loopback connections, whole
 * sends, one HTTP answer read by its Content-Length, a started tallyd's
 * port file, #!stats figures and cleaning up a data directory.
 * Header-only (static functions) so each bench stays one file to build.
 */
#ifndef TALLY_BENCHNET_H
#define TALLY_BENCHNET_H

#include <errno.h>
#include <ftw.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "benchutil.h"

static inline int connect_to(unsigned port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = {.sin_family = AF_INET,
				.sin_port = htons((uint16_t)port),
				.sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a))
		die("connect to 127.0.0.1:%u: %s", port, strerror(errno));
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	return fd;
}

static inline void send_all(int fd, const char *p, size_t n)
{
	while (n) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			die("send: %s", strerror(errno));
		p += w;
		n -= (size_t)w;
	}
}

/* Receives one HTTP answer into buf[0, *have) (bytes after it may follow,
 * from pipelining): its head is buf[0, *head), its body the *body bytes
 * after, by Content-Length. Returns its status. */
static inline int http_answer(int fd, char *buf, size_t cap, size_t *have, size_t *head,
			      size_t *body)
{
	for (;;) {
		char *e = *have ? memmem(buf, *have, "\r\n\r\n", 4) : NULL;
		if (e) {
			size_t hl = (size_t)(e - buf) + 4, cl = 0;
			int status = 0;
			sscanf(buf, "HTTP/1.1 %d", &status);
			char *h = memmem(buf, hl, "Content-Length: ", 16);
			if (h)
				cl = strtoul(h + 16, NULL, 10);
			if (hl + cl > cap)
				die("an answer of %zu bytes, over %zu", hl + cl, cap);
			while (*have < hl + cl) {
				ssize_t g = recv(fd, buf + *have, cap - *have, 0);
				if (g <= 0)
					die("connection closed in an answer");
				*have += (size_t)g;
			}
			*head = hl;
			*body = cl;
			return status;
		}
		if (*have == cap)
			die("an answer's head over %zu bytes", cap);
		ssize_t g = recv(fd, buf + *have, cap - *have, 0);
		if (g <= 0)
			die("connection closed before an answer");
		*have += (size_t)g;
	}
}

static inline int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(p);
}

/* The port a starting tallyd writes to path (--port-file). */
static inline unsigned read_port(const char *path, pid_t pid)
{
	double deadline = now_s() + 30;
	for (;;) {
		FILE *f = fopen(path, "r");
		unsigned p = 0;
		if (f) {
			int ok = fscanf(f, "%u", &p) == 1;
			fclose(f);
			if (ok)
				return p;
		}
		int st;
		if (waitpid(pid, &st, WNOHANG) == pid)
			die("tallyd exited at start");
		if (now_s() > deadline)
			die("tallyd did not start");
		usleep(5000);
	}
}

/* The tallyd built beside this bench (build/wire/tallyd for
 * build/bench/X), in buf. */
static inline const char *tallyd_beside(char *buf, size_t cap)
{
	char self[4096];
	ssize_t k = readlink("/proc/self/exe", self, sizeof self - 1);
	if (k <= 0)
		die("readlink /proc/self/exe: %s", strerror(errno));
	self[k] = 0;
	*strrchr(self, '/') = 0;
	snprintf(buf, cap, "%s/../wire/tallyd", self);
	return buf;
}

/* #!stats' value of name, from the line-protocol port. */
static inline uint64_t stat_of(unsigned port, const char *name)
{
	int fd = connect_to(port);
	send_all(fd, "#!stats\n", 8);
	static char buf[1 << 16];
	size_t n = 0;
	while (n < sizeof buf - 1) {
		ssize_t g = recv(fd, buf + n, sizeof buf - 1 - n, 0);
		if (g <= 0)
			break;
		n += (size_t)g;
		buf[n] = 0;
		if (strstr(buf, "\nEND "))
			break;
	}
	close(fd);
	char key[80];
	snprintf(key, sizeof key, "\n%s\t", name);
	char *p = strstr(buf, key);
	return p ? strtoull(p + strlen(key), NULL, 10) : 0;
}

#endif
