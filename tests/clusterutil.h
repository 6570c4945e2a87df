/*
 * clusterutil.h — what the tests of queries across nodes share
 * (tests/test_cluster.c, tests/test_cluster_dist.c): events that are a
 * pure function of a seed, spread over three nodes as Kafka partitions
 * would spread them (camera i on node i % 3, one camera on all three), the
 * three nodes naming each other in peers beside a reference holding every
 * event, and a GET over HTTP/1.0.
 */
#ifndef TALLY_CLUSTERUTIL_H
#define TALLY_CLUSTERUTIL_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include "srvutil.h"

#define CL_T0 (INT64_C(1735689600) * 1000000000) /* 2025-01-01 */

typedef struct cl_ev {
	int cam;
	int64_t ts;
	int tenths; /* the speed in tenths (the resolution of 0.1) */
} cl_ev;

/* What the events look like: n of them over ncam cameras, camera split's
 * on every node, speeds base + (rand() % span) * mul tenths. */
typedef struct cl_set {
	cl_ev *ev;
	int n, ncam, split;
} cl_set;

/* Draws s's events from seed: distinct times (a scan's order is then the
 * same on every node), spread over a day, in no order (late events). */
static inline void cl_gen(const cl_set *s, unsigned seed, int base, int span, int mul)
{
	srand(seed);
	for (int i = 0; i < s->n; i++) {
		s->ev[i].cam = rand() % s->ncam;
		s->ev[i].ts = CL_T0 + (int64_t)(rand() % 86000) * 1000000000 + i;
		s->ev[i].tenths = base + (rand() % span) * mul;
	}
}

/* The node event i lives on. */
static inline int cl_node_of(const cl_set *s, int i)
{
	return s->ev[i].cam == s->split ? i % 3 : s->ev[i].cam % 3;
}

/* Writes node's events (node < 0: all of them) as traffic,camera=camN
 * speed=X.Y, synced. */
static inline void cl_load(const cl_set *s, tcli *c, int node)
{
	for (int i = 0; i < s->n; i++)
		if (node < 0 || cl_node_of(s, i) == node)
			tcli_sendf(c, "traffic,camera=cam%d speed=%d.%d %" PRId64 "\n",
				   s->ev[i].cam, s->ev[i].tenths / 10, s->ev[i].tenths % 10,
				   s->ev[i].ts);
	tcli_sync(c, NULL, NULL);
}

/* Node i of three on port, its peers the other two of ports, with
 * --peer-timeout timeout and the arguments of extra (NULL-ended, or
 * NULL). */
static inline void cl_start_node(tsrv *s, const unsigned ports[3], int i, const char *timeout,
				 const char *const *extra)
{
	char p[16], peers[64];
	snprintf(p, sizeof p, "%u", ports[i]);
	snprintf(peers, sizeof peers, "127.0.0.1:%u,127.0.0.1:%u", ports[(i + 1) % 3],
		 ports[(i + 2) % 3]);
	const char *args[32] = {"--port",         p,       "--peers",     peers,
				"--peer-timeout", timeout, "--log-level", "warn"};
	size_t k = 8;
	for (; extra && *extra && k < 31; extra++)
		args[k++] = *extra;
	args[k] = NULL;
	tsrv_spawn(s, args, 1);
	cr_assert_eq(s->port, ports[i]);
}

/* Three nodes naming each other in peers, each with its share of s's
 * events, and the reference ref holding them all (extra: both's
 * arguments); c[i] and *rc connected to them. */
static inline void cl_up(const cl_set *s, tsrv n[3], tsrv *ref, unsigned ports[3], tcli *c[3],
			 tcli **rc, const char *const *extra)
{
	for (int i = 0; i < 3; i++)
		ports[i] = su_free_port();
	for (int i = 0; i < 3; i++) {
		tdir_make(&n[i]);
		cl_start_node(&n[i], ports, i, "2s", extra);
	}
	const char *args[32] = {"--log-level", "warn"};
	size_t k = 2;
	for (; extra && *extra && k < 31; extra++)
		args[k++] = *extra;
	args[k] = NULL;
	tdir_make(ref);
	tsrv_spawn(ref, args, 1);
	*rc = tcli_open(ref->port);
	for (int i = 0; i < 3; i++) {
		c[i] = tcli_open(n[i].port);
		/* writes go to this node alone; queries fan out */
		cl_load(s, c[i], i);
	}
	cl_load(s, *rc, -1);
}

/* Closes the clients, stops nodes [0, live) and the reference (each
 * must exit 0), removes every directory. */
static inline void cl_down(tsrv n[3], int live, tsrv *ref, tcli *c[3], tcli *rc)
{
	for (int i = 0; i < 3; i++)
		tcli_close(c[i]);
	tcli_close(rc);
	for (int i = 0; i < live; i++)
		cr_assert_eq(tsrv_wait(&n[i], SIGTERM), 0);
	cr_assert_eq(tsrv_wait(ref, SIGTERM), 0);
	for (int i = 0; i < 3; i++)
		tdir_remove(&n[i]);
	tdir_remove(ref);
}

typedef struct cl_http {
	int status;
	char *head, *body; /* malloc'd; head without the blank line */
} cl_http;

static inline void cl_http_free(cl_http *a)
{
	free(a->head);
	free(a->body);
}

/* GET path over HTTP/1.0, so the close ends the answer (no chunks);
 * waits at most a minute. */
static inline cl_http cl_get(unsigned port, const char *path)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = {.sin_family = AF_INET,
				.sin_port = htons((uint16_t)port),
				.sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	cr_assert(fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0, "connect :%u",
		  port);
	char req[4096];
	int k = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path);
	cr_assert(k > 0 && (size_t)k < sizeof req);
	cr_assert_eq(send(fd, req, (size_t)k, MSG_NOSIGNAL), k);
	size_t n = 0, cap = 1 << 16;
	char *buf = malloc(cap);
	int64_t end = su_mono_ms() + 60000;
	for (;;) {
		struct pollfd p = {.fd = fd, .events = POLLIN};
		int64_t left = end - su_mono_ms();
		cr_assert(left > 0, "GET %s: no whole answer within 60 s", path);
		if (poll(&p, 1, (int)left) <= 0)
			continue;
		if (n + 4096 > cap)
			buf = realloc(buf, cap *= 2);
		ssize_t r = recv(fd, buf + n, cap - n - 1, 0);
		cr_assert(r >= 0, "GET %s: %s", path, strerror(errno));
		if (r == 0)
			break;
		n += (size_t)r;
	}
	close(fd);
	buf[n] = 0;
	char *sep = strstr(buf, "\r\n\r\n");
	cr_assert_not_null(sep, "GET %s: no head in '%s'", path, buf);
	cl_http h = {0};
	cr_assert_eq(sscanf(buf, "HTTP/1.%*d %d", &h.status), 1);
	*sep = 0;
	h.head = strdup(buf);
	h.body = strdup(sep + 4);
	free(buf);
	return h;
}

#endif
