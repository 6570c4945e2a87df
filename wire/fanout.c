/*
 * fanout.c — one query asked of several tallyd nodes, answers merged
 * exactly (fanout.h, docs/cluster.md).
 *
 * The one idea: every node answers the same text protocol a client reads
 * (docs/protocol.md), restricted to what it holds ("#!fanout off"), and
 * the answers are partial rollups that merge without loss: counts and
 * sums add, min and max take the extreme, the average is recomputed from
 * the merged sum and count. A series merges window by window, all keys
 * key by key, a scan by time. So a fan-out needs no protocol of its own,
 * and a node of any version that speaks the text protocol takes part.
 *
 * All nodes are asked at once over non-blocking sockets under one
 * deadline; the slowest node sets the latency, not their sum. The
 * connections stay open between fan-outs (a pool per node, each with its
 * receive buffer), so a query costs each node one round trip; a pooled
 * connection that fails before its answer began is asked again once.
 */
#include "fanout.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "cmd.h"
#include "numfmt.h"

/* What the error of a fan-out that missed nodes says (fan_err_missing
 * looks for it). */
#define FAN_MISSING "did not answer"

static int64_t fan_now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

int fan_parse_nodes(const char *spec, fan_node **out, size_t *n, char *err, size_t cap)
{
	*out = NULL;
	*n = 0;
	fan_node *v = NULL;
	size_t k = 0;
	const char *p = spec;
	while (*p) {
		size_t len = strcspn(p, ",");
		const char *e = p + len, *hs = p, *he;
		while (hs < e && *hs == ' ')
			hs++;
		const char *colon = NULL;
		for (const char *q = hs; q < e; q++)
			if (*q == ':')
				colon = q;
		he = colon;
		if (he && hs < he && *hs == '[' && he[-1] == ']') {
			hs++;
			he--;
		}
		const char *ps = colon ? colon + 1 : e;
		size_t pn = (size_t)(e - ps);
		while (pn && ps[pn - 1] == ' ')
			pn--;
		unsigned long port = 0;
		int ok = colon && he > hs && (size_t)(he - hs) < sizeof v->host && pn > 0 && pn < 6;
		for (size_t i = 0; ok && i < pn; i++) {
			ok = ps[i] >= '0' && ps[i] <= '9';
			port = port * 10 + (unsigned long)(ps[i] - '0');
		}
		if (!ok || port == 0 || port > 65535) {
			snprintf(err, cap, "'%.*s' (node %zu) is not HOST:PORT", (int)len, p,
				 k + 1);
			free(v);
			return -1;
		}
		fan_node *nv = realloc(v, (k + 1) * sizeof *v);
		if (!nv) {
			free(v);
			snprintf(err, cap, "out of memory");
			return -1;
		}
		v = nv;
		memcpy(v[k].host, hs, (size_t)(he - hs));
		v[k].host[he - hs] = 0;
		snprintf(v[k].port, sizeof v[k].port, "%lu", port);
		k++;
		p = *e ? e + 1 : e;
	}
	if (!k) {
		snprintf(err, cap, "no node given");
		return -1;
	}
	*out = v;
	*n = k;
	return 0;
}

/* ---------------------------------------------------------------- the command */

/* " \"PREFIXs\"", quoted; nothing for a NULL s. */
static size_t put_prefixed(char *b, size_t o, size_t cap, const char *prefix, const char *s)
{
	if (!s)
		return o;
	if (o + 2 * strlen(s) + strlen(prefix) + 4 > cap)
		return cap;
	b[o++] = ' ';
	b[o++] = '"';
	for (; *prefix; prefix++)
		b[o++] = *prefix;
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			b[o++] = '\\';
		b[o++] = *s;
	}
	b[o++] = '"';
	return o;
}

static size_t put_arg(char *b, size_t o, size_t cap, const char *s)
{
	return put_prefixed(b, o, cap, "", s);
}

static size_t put_time(char *b, size_t o, size_t cap, int64_t ns)
{
	char t[48];
	t[0] = ' ';
	size_t n = 1 + cmd_format_time(ns, t + 1);
	if (o + n > cap)
		return cap;
	memcpy(b + o, t, n);
	return o + n;
}

size_t fan_build_cmd(const cmd_req *r, char *buf, size_t cap)
{
	int k = snprintf(buf, cap, "#!%s", r->name);
	size_t o = k > 0 && (size_t)k < cap ? (size_t)k : cap;
	o = put_arg(buf, o, cap, r->table);
	if (r->kind == CMD_TABLES || r->kind == CMD_KEYLIST) { /* the catalog: fancat.c */
		o = put_arg(buf, o, cap, r->key);
		goto end;
	}
	if (r->kind != CMD_SCAN)
		o = put_arg(buf, o, cap, r->field);
	if (r->kind != CMD_KEYS)
		o = put_arg(buf, o, cap, r->key);
	if (r->kind == CMD_SERIES && o < cap) {
		k = snprintf(buf + o, cap - o, " %" PRId64 "ns", r->step);
		o = k > 0 && (size_t)k < cap - o ? o + (size_t)k : cap;
	}
	o = put_time(buf, o, cap, r->from);
	o = put_time(buf, o, cap, r->to);
	if (r->kind == CMD_KEYS) { /* subset and grouping: each node's part merges by key */
		o = put_prefixed(buf, o, cap, "key=", r->key);
		o = put_prefixed(buf, o, cap, "by=", r->group);
	}
	for (unsigned i = 0; r->kind == CMD_DIST && i < r->n_stats; i++)
		o = put_arg(buf, o, cap, r->stats[i]);   /* "pairs": fandist.c merges them */
	if (r->kind == CMD_DIST && r->step && o < cap) { /* pairs of every window */
		k = snprintf(buf + o, cap - o, " step=%" PRId64 "ns", r->step);
		o = k > 0 && (size_t)k < cap - o ? o + (size_t)k : cap;
		if (r->has_origin) { /* where the windows start */
			char t[48];
			cmd_format_time(r->origin, t);
			o = put_prefixed(buf, o, cap, "origin=", t);
		}
	}
	if (r->kind == CMD_SCAN && r->limit && o < cap) {
		k = snprintf(buf + o, cap - o, " %" PRIu64, r->limit);
		o = k > 0 && (size_t)k < cap - o ? o + (size_t)k : cap;
	}
end:
	if (o + 1 >= cap)
		return 0;
	buf[o++] = '\n';
	buf[o] = 0;
	return o;
}

/* ---------------------------------------------------------------- asking */

typedef struct fan_peer {
	const fan_node *node;
	int fd;
	int done;      /* 1: its answer is whole (or it failed: why set) */
	char why[160]; /* a failure: connection refused, timeout, ... */
	char *req;     /* what to send, and how much is sent */
	size_t req_len, sent;
	char *in; /* received */
	size_t in_len, in_cap;
	size_t skip;    /* answer lines of the preamble (#!auth, #!fanout off) still due */
	size_t scanned; /* bytes of in already looked at for the answer's end */
	size_t ans;     /* where the answer starts in in, after the preamble's lines */
	int in_answer;  /* past the preamble and the answer's first line */
	uint64_t id;    /* the node's id from "OK fanout off node=ID" (0: none) */
	int pooled;     /* fd came from the pool: past its preamble, maybe stale */
} fan_peer;

static void peer_fail(fan_peer *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void peer_fail(fan_peer *p, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(p->why, sizeof p->why, fmt, ap);
	va_end(ap);
	p->done = 1;
	if (p->fd >= 0)
		close(p->fd);
	p->fd = -1;
}

static void peer_connect(fan_peer *p)
{
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai = NULL;
	int rc = getaddrinfo(p->node->host, p->node->port, &hints, &ai);
	if (rc) {
		peer_fail(p, "%s", gai_strerror(rc));
		return;
	}
	p->fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (p->fd < 0) {
		freeaddrinfo(ai);
		peer_fail(p, "%s", strerror(errno));
		return;
	}
	int one = 1;
	setsockopt(p->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	if (connect(p->fd, ai->ai_addr, ai->ai_addrlen) && errno != EINPROGRESS)
		peer_fail(p, "%s", strerror(errno));
	freeaddrinfo(ai);
}

/* Looks through what arrived for the end of the answer: the preamble's
 * lines, then the first line (an ERR line ends it there), then rows up
 * to "END n" or an "ERR" line. */
static void peer_scan(fan_peer *p)
{
	while (!p->done) {
		char *s = p->in + p->scanned;
		char *nl = memchr(s, '\n', p->in_len - p->scanned);
		if (!nl)
			return;
		size_t n = (size_t)(nl - s);
		p->scanned += n + 1;
		if (p->skip) {
			if (n >= 3 && !memcmp(s, "ERR", 3)) {
				peer_fail(p, "%.*s", (int)(n > 150 ? 150 : n), s);
				return;
			}
			const char *id = memmem(s, n, "node=", 5);
			if (id)
				p->id = strtoull(id + 5, NULL, 16);
			if (--p->skip == 0)
				p->ans = p->scanned; /* the answer starts here */
			continue;
		}
		int tab = memchr(s, '\t', n) != NULL;
		if (!p->in_answer) {
			p->in_answer = 1;
			if (!tab)
				p->done = 1; /* an ERR answer, whole */
			continue;
		}
		if (!tab && ((n >= 4 && !memcmp(s, "END ", 4)) || (n >= 3 && !memcmp(s, "ERR", 3))))
			p->done = 1;
	}
}

static void peer_io(fan_peer *p, short rev, size_t max_bytes)
{
	if (p->sent < p->req_len && (rev & POLLOUT)) {
		ssize_t k = send(p->fd, p->req + p->sent, p->req_len - p->sent, MSG_NOSIGNAL);
		if (k < 0 && errno != EAGAIN && errno != EINTR) {
			int e = errno;
			int soerr = 0;
			socklen_t sl = sizeof soerr;
			getsockopt(p->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
			peer_fail(p, "%s", strerror(soerr ? soerr : e));
			return;
		}
		if (k > 0)
			p->sent += (size_t)k;
	}
	if (!(rev & (POLLIN | POLLHUP | POLLERR)))
		return;
	for (;;) {
		if (p->in_cap - p->in_len < 65536) {
			if (p->in_cap > max_bytes) {
				peer_fail(
					p,
					"its answer is longer than the fan-out bound of %zu bytes",
					max_bytes);
				return;
			}
			size_t c = p->in_cap ? p->in_cap * 2 : 65536 * 2;
			char *b = realloc(p->in, c);
			if (!b) {
				peer_fail(p, "out of memory");
				return;
			}
			p->in = b;
			p->in_cap = c;
		}
		ssize_t k = recv(p->fd, p->in + p->in_len, p->in_cap - p->in_len - 1, 0);
		if (k > 0) {
			p->in_len += (size_t)k;
			continue;
		}
		if (k < 0 && (errno == EAGAIN || errno == EINTR))
			break;
		int soerr = 0;
		socklen_t sl = sizeof soerr;
		getsockopt(p->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
		peer_scan(p);
		if (!p->done)
			peer_fail(p, "%s",
				  soerr ? strerror(soerr) : "closed the connection mid-answer");
		return;
	}
	peer_scan(p);
}

/* ---------------------------------------------------------------- the pool */

#define FAN_POOL_PER_NODE 8 /* idle connections kept per node */
/* A receive buffer up to this size stays with its idle connection: a
 * buffer allocated per fan-out cost page faults on every query (glibc
 * gives pages of a freed large block back to the kernel), a tenth of a
 * fan-out's time here. */
#define FAN_KEEP_BUF (1u << 20)

typedef struct fan_idle {
	int fd;
	uint64_t id;
	char *buf; /* its receive buffer (buf_cap bytes), or NULL */
	size_t buf_cap;
} fan_idle;

struct fan_pool {
	pthread_mutex_t mu;
	fan_node *nodes;
	size_t n;
	fan_idle (*idle)[FAN_POOL_PER_NODE];
	size_t *n_idle;
};

fan_pool *fan_pool_new(const fan_node *nodes, size_t n)
{
	fan_pool *p = calloc(1, sizeof *p);
	if (!p)
		return NULL;
	p->nodes = malloc(n * sizeof *p->nodes);
	p->idle = calloc(n, sizeof *p->idle);
	p->n_idle = calloc(n, sizeof *p->n_idle);
	if (!p->nodes || !p->idle || !p->n_idle) {
		fan_pool_free(p);
		return NULL;
	}
	memcpy(p->nodes, nodes, n * sizeof *nodes);
	p->n = n;
	pthread_mutex_init(&p->mu, NULL);
	return p;
}

void fan_pool_free(fan_pool *p)
{
	if (!p)
		return;
	for (size_t i = 0; p->n_idle && i < p->n; i++)
		for (size_t k = 0; k < p->n_idle[i]; k++) {
			close(p->idle[i][k].fd);
			free(p->idle[i][k].buf);
		}
	if (p->n)
		pthread_mutex_destroy(&p->mu);
	free(p->nodes);
	free(p->idle);
	free(p->n_idle);
	free(p);
}

/* The pool's index of node (by address: callers pass copies), or -1. */
static long pool_slot(const fan_pool *p, const fan_node *node)
{
	for (size_t i = 0; i < p->n; i++)
		if (!strcmp(p->nodes[i].host, node->host) && !strcmp(p->nodes[i].port, node->port))
			return (long)i;
	return -1;
}

/* An idle connection to node (its fd, *id the node's id), or -1; the
 * receive buffer kept with it, even when the connection turned out
 * stale, goes to the peer p unless it has one. */
static int pool_take(fan_pool *pool, const fan_node *node, fan_peer *p)
{
	long i = pool ? pool_slot(pool, node) : -1;
	if (i < 0)
		return -1;
	for (;;) {
		fan_idle e = {.fd = -1};
		pthread_mutex_lock(&pool->mu);
		if (pool->n_idle[i])
			e = pool->idle[i][--pool->n_idle[i]];
		pthread_mutex_unlock(&pool->mu);
		if (e.buf && !p->in) {
			p->in = e.buf;
			p->in_cap = e.buf_cap;
		} else {
			free(e.buf);
		}
		/* An idle connection has nothing to read: anything there (a
		 * node's goodbye, its close) makes it stale. */
		struct pollfd pf = {.fd = e.fd, .events = POLLIN};
		if (e.fd < 0 || poll(&pf, 1, 0) == 0) {
			p->id = e.id;
			return e.fd;
		}
		close(e.fd);
	}
}

/* Keeps a connection that answered whole for the next fan-out, with p's
 * receive buffer (taken from p) when it is not large; closes it when the
 * node has enough idle ones. */
static void pool_put(fan_pool *pool, fan_peer *p)
{
	long i = pool ? pool_slot(pool, p->node) : -1;
	fan_idle e = {.fd = p->fd, .id = p->id};
	if (p->in_cap <= FAN_KEEP_BUF) {
		e.buf = p->in;
		e.buf_cap = p->in_cap;
	}
	if (i >= 0) {
		pthread_mutex_lock(&pool->mu);
		if (pool->n_idle[i] < FAN_POOL_PER_NODE) {
			pool->idle[i][pool->n_idle[i]++] = e;
			e.fd = -1;
			if (e.buf)
				p->in = NULL;
		}
		pthread_mutex_unlock(&pool->mu);
	}
	p->fd = -1;
	if (e.fd >= 0)
		close(e.fd);
}

/* Sets p up to ask cmd[0, cn): over an idle connection of the pool, or a
 * new one that first authenticates (token) and says "#!fanout off".
 * -ENOMEM. */
static int peer_start(fan_peer *p, const fan_opts *o, const char *cmd, size_t cn)
{
	size_t tl = o->token ? strlen(o->token) : 0;
	free(p->req);
	p->req = malloc(tl + cn + 40);
	if (!p->req)
		return -ENOMEM;
	p->req_len = p->sent = p->in_len = p->scanned = p->ans = 0;
	p->done = p->in_answer = 0;
	p->why[0] = 0;
	p->fd = pool_take(o->pool, p->node, p);
	p->pooled = p->fd >= 0;
	p->skip = 0;
	if (!p->pooled) {
		if (o->token)
			p->req_len = (size_t)sprintf(p->req, "#!auth %s\n", o->token);
		p->req_len += (size_t)sprintf(p->req + p->req_len, "#!fanout off\n");
		p->skip = o->token ? 2 : 1;
	}
	p->req_len += (size_t)sprintf(p->req + p->req_len, "%.*s\n", (int)cn, cmd);
	if (!p->pooled)
		peer_connect(p);
	return 0;
}

/* peer_io, then the retry rule: a pooled connection that failed before
 * any byte of its answer came (the node closed it meanwhile: its
 * idle-timeout, a restart) asks once more, on a new connection; what
 * the first one did is dropped, so the node counts once. 0 or -ENOMEM. */
static int peer_step(fan_peer *p, short rev, size_t max_bytes, const fan_opts *o, const char *cmd,
		     size_t cn)
{
	peer_io(p, rev, max_bytes);
	if (p->done && p->why[0] && p->pooled && !p->in_len)
		return peer_start(p, &(fan_opts){.token = o->token}, cmd, cn);
	return 0;
}

/* ---------------------------------------------------------------- merging */

typedef struct frow {
	const char *p; /* the row's text, without '\n' */
	size_t n;
	unsigned node, idx;
	int64_t ts;
} frow;

typedef struct fbuf {
	char *p;
	size_t n, cap, max;
	int over, oom;
} fbuf;

static char *fb_room(fbuf *b, size_t n)
{
	if (b->n + n > b->max) {
		b->over = 1;
		return NULL;
	}
	if (b->n + n + 1 > b->cap) {
		size_t c = b->cap ? b->cap * 2 : 4096;
		while (c < b->n + n + 1)
			c *= 2;
		char *q = realloc(b->p, c);
		if (!q) {
			b->oom = 1;
			return NULL;
		}
		b->p = q;
		b->cap = c;
	}
	return b->p + b->n;
}

static void fb_put(fbuf *b, const void *s, size_t n)
{
	char *q = fb_room(b, n);
	if (q) {
		memcpy(q, s, n);
		b->n += n;
	}
}

static void fb_agg(fbuf *b, const char *prefix, size_t pn, const tally_agg *a)
{
	char *q = fb_room(b, pn + 1 + CMD_AGG_MAX);
	if (!q)
		return;
	memcpy(q, prefix, pn);
	if (pn)
		q[pn++] = '\t';
	b->n += (size_t)(cmd_put_agg(q + pn, a) - q);
}

const char *fan_cell(const char *row, size_t n, unsigned j, size_t *cn)
{
	const char *p = row, *e = row + n;
	for (unsigned k = 0; k < j; k++) {
		p = memchr(p, '\t', (size_t)(e - p));
		if (!p)
			return NULL;
		p++;
	}
	const char *t = memchr(p, '\t', (size_t)(e - p));
	*cn = t ? (size_t)(t - p) : (size_t)(e - p);
	return p;
}

/* Cell j of row r (pointer and length), or NULL. */
static const char *cell(const frow *r, unsigned j, size_t *n)
{
	return fan_cell(r->p, r->n, j, n);
}

/* The decimal at p (n bytes), read as strtod would but, for what the
 * nodes write (cmd_format_double's shortest decimals, cmd_format_u64's
 * counts), without strtod's arbitrary precision: a mantissa of at most
 * 2^53 times or divided by an exact power of ten up to 1e22 is one
 * correctly rounded operation (Clinger's fast path), so the result is
 * the same double. The rest ("inf", "nan", 17 digits, 1e-300) goes
 * through strtod. NaN for an empty cell. */
static const double fan_p10[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
				   1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
				   1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

static double fan_f64(const char *p, size_t n)
{
	const char *s = p, *e = p + n;
	int neg = s < e && *s == '-', digits = 0, exp10 = 0;
	uint64_t m = 0;
	s += neg;
	for (; s < e && (unsigned)(*s - '0') < 10 && digits < 19; s++, digits++)
		m = m * 10 + (unsigned)(*s - '0');
	if (s < e && *s == '.')
		for (s++; s < e && (unsigned)(*s - '0') < 10 && digits < 19; s++, digits++, exp10--)
			m = m * 10 + (unsigned)(*s - '0');
	if (s < e && (*s == 'e' || *s == 'E') && digits) {
		int eneg = 0, x = 0, xd = 0;
		if (++s < e && (*s == '+' || *s == '-'))
			eneg = *s++ == '-';
		for (; s < e && (unsigned)(*s - '0') < 10 && x < 1000; s++, xd++)
			x = x * 10 + (*s - '0');
		exp10 = xd ? exp10 + (eneg ? -x : x) : 9999;
	}
	/* (one rounding only where doubles are computed as doubles: not x87) */
	if (FLT_EVAL_METHOD == 0 && s == e && digits && m <= UINT64_C(1) << 53 && exp10 >= -22 &&
	    exp10 <= 22) {
		double d = exp10 < 0 ? (double)m / fan_p10[-exp10] : (double)m * fan_p10[exp10];
		return neg ? -d : d;
	}
	char b[64];
	if (n == 0 || n >= sizeof b)
		return NAN;
	memcpy(b, p, n);
	b[n] = 0;
	return strtod(b, NULL);
}

/* The cell after the one at p (its length *n), or NULL past the last. */
static const char *next_cell(const char *row, size_t rn, const char *p, size_t *n)
{
	const char *e = row + rn, *c = p + *n;
	if (!p || c >= e)
		return NULL;
	c++;
	const char *t = memchr(c, '\t', (size_t)(e - c));
	*n = t ? (size_t)(t - c) : (size_t)(e - c);
	return c;
}

/* The aggregate in cells j.. (count sum min max avg), as the nodes wrote
 * it: shortest decimals that read back as the same doubles, so nothing
 * is lost on the way. The row is walked once, cell to cell. */
static tally_agg row_agg(const frow *r, unsigned j)
{
	tally_agg a = {0};
	double v[4];
	size_t n = 0;
	const char *c = cell(r, j, &n);
	for (int k = 0; k < 4; k++) {
		v[k] = c ? fan_f64(c, n) : NAN;
		c = c ? next_cell(r->p, r->n, c, &n) : NULL;
	}
	a.count = (uint64_t)v[0];
	a.sum = v[1];
	a.min = v[2];
	a.max = v[3];
	return a;
}

static void agg_add(tally_agg *a, const tally_agg *b)
{
	if (!b->count)
		return;
	if (!a->count) {
		*a = *b;
		return;
	}
	a->count += b->count;
	a->sum += b->sum;
	if (b->min < a->min)
		a->min = b->min;
	if (b->max > a->max)
		a->max = b->max;
}

static void agg_done(tally_agg *a)
{
	if (a->count)
		a->avg = a->sum / (double)a->count;
	else
		a->sum = 0, a->min = a->max = a->avg = NAN;
}

static int by_ts(const void *x, const void *y)
{
	const frow *a = x, *b = y;
	if (a->ts != b->ts)
		return a->ts < b->ts ? -1 : 1;
	if (a->node != b->node)
		return a->node < b->node ? -1 : 1;
	return a->idx < b->idx ? -1 : a->idx > b->idx;
}

static int by_key(const void *x, const void *y)
{
	const frow *a = x, *b = y;
	size_t an, bn;
	const char *ak = cell(a, 0, &an), *bk = cell(b, 0, &bn);
	int c = memcmp(ak, bk, an < bn ? an : bn);
	if (c)
		return c;
	if (an != bn)
		return an < bn ? -1 : 1;
	return by_ts(x, y);
}

/* Whole rows, bytewise. */
static int by_text(const void *x, const void *y)
{
	const frow *a = x, *b = y;
	int c = memcmp(a->p, b->p, a->n < b->n ? a->n : b->n);
	return c ? c : (a->n > b->n) - (a->n < b->n);
}

/* n digits at p as a number; -1 when one is not a digit. */
static int64_t fan_num(const char *p, int n)
{
	int64_t v = 0;
	for (int i = 0; i < n; i++) {
		unsigned d = (unsigned)(p[i] - '0');
		if (d > 9)
			return -1;
		v = v * 10 + d;
	}
	return v;
}

/* A time exactly as cmd_format_time writes it (YYYY-MM-DDTHH:MM:SS, then
 * .fff, .ffffff or .fffffffff, then Z), at a fixed place per field, with
 * the date's day number kept per thread (a series' rows share a day):
 * 0, or -1 to leave it to cmd_parse_time (another form, or out of the
 * range of int64 ns, or a date that is not one). */
static int fan_time_fast(const char *p, size_t n, int64_t *out)
{
	static __thread char date[10];
	static __thread int64_t date_days = INT64_MIN;
	if ((n != 20 && n != 24 && n != 27 && n != 30) || p[n - 1] != 'Z' || p[10] != 'T' ||
	    p[13] != ':' || p[16] != ':' || (n > 20 && p[19] != '.'))
		return -1;
	if (date_days == INT64_MIN || memcmp(date, p, 10)) {
		int64_t y = fan_num(p, 4), mo = fan_num(p + 5, 2), d = fan_num(p + 8, 2), cy;
		unsigned cm, cd;
		if (p[4] != '-' || p[7] != '-' || y < 1678 || y > 2261 || mo < 1 || mo > 12 ||
		    d < 1 || d > 31)
			return -1;
		int64_t days = cmd_days_from_civil(y, (unsigned)mo, (unsigned)d);
		cmd_civil_from_days(days, &cy, &cm, &cd); /* 2-30 is not a day */
		if (cy != y || cm != mo || cd != d)
			return -1;
		memcpy(date, p, 10);
		date_days = days;
	}
	int64_t h = fan_num(p + 11, 2), mi = fan_num(p + 14, 2), s = fan_num(p + 17, 2);
	int64_t frac = n > 20 ? fan_num(p + 20, (int)n - 21) : 0;
	if (h < 0 || h > 23 || mi < 0 || mi > 59 || s < 0 || s > 59 || frac < 0)
		return -1;
	for (size_t k = n; k < 30; k += 3)
		frac *= 1000;
	*out = ((date_days * 86400 + h * 3600 + mi * 60 + s) * INT64_C(1000000000)) + frac;
	return 0;
}

int64_t fan_cell_time(const char *row, size_t rn, unsigned j)
{
	size_t n;
	const char *p = fan_cell(row, rn, j, &n);
	char b[64];
	int64_t t = INT64_MIN;
	if (p && !fan_time_fast(p, n, &t))
		return t;
	if (p && n < sizeof b) {
		memcpy(b, p, n);
		b[n] = 0;
		if (cmd_parse_time(b, 0, &t))
			t = INT64_MIN;
	}
	return t;
}

static int64_t row_time(const frow *r)
{
	return fan_cell_time(r->p, r->n, 0);
}

/* A node's answer: its header and rows (pointers into its buffer). */
typedef struct fans {
	const char *head;
	size_t head_n;
	frow *rows;
	size_t n;
	const char *err; /* its ERR line, or NULL */
	size_t err_n;
} fans;

static int split_answer(fan_peer *p, unsigned node, fans *a)
{
	memset(a, 0, sizeof *a);
	char *s = p->in + p->ans, *e = p->in + p->in_len;
	char *nl = memchr(s, '\n', (size_t)(e - s));
	if (!nl)
		return 0;
	if (!memchr(s, '\t', (size_t)(nl - s))) {
		a->err = s;
		a->err_n = (size_t)(nl - s);
		return 0;
	}
	a->head = s;
	a->head_n = (size_t)(nl - s);
	size_t cap = 0;
	for (s = nl + 1; s < e; s = nl + 1) {
		nl = memchr(s, '\n', (size_t)(e - s));
		if (!nl)
			break;
		size_t n = (size_t)(nl - s);
		if (!memchr(s, '\t', n)) {
			if (n >= 3 && !memcmp(s, "ERR", 3)) {
				a->err = s;
				a->err_n = n;
			}
			break; /* END n */
		}
		if (a->n == cap) {
			cap = cap ? cap * 2 : 64;
			frow *r = realloc(a->rows, cap * sizeof *r);
			if (!r)
				return -ENOMEM;
			a->rows = r;
		}
		a->rows[a->n] = (frow){.p = s, .n = n, .node = node, .idx = (unsigned)a->n};
		a->n++;
	}
	return 0;
}

/* A node that does not hold the table (or field) yet answers for nothing:
 * its error is not the answer's. */
int fan_err_absent(const char *err, size_t n)
{
	static const char *const absent[] = {"no table '", "has no field '"};
	for (size_t i = 0; i < sizeof absent / sizeof absent[0]; i++)
		if (memmem(err, n, absent[i], strlen(absent[i])))
			return 1;
	return 0;
}

static int err_is_absent(const fans *a)
{
	return fan_err_absent(a->err, a->err_n);
}

/* Strips "ERR line N: " so the caller can put its own line number. */
static void put_err(fbuf *b, const char *e, size_t n, const char *node)
{
	const char *p = e + 3, *end = e + n;
	while (p < end && *p == ' ')
		p++;
	if (end - p > 5 && !memcmp(p, "line ", 5)) {
		const char *c = memchr(p, ':', (size_t)(end - p));
		if (c) {
			p = c + 1;
			while (p < end && *p == ' ')
				p++;
		}
	}
	char m[512];
	int k = snprintf(m, sizeof m, "ERR %.*s (node %s)\n", (int)(end - p), p, node);
	fb_put(b, m, (size_t)k);
}

static void merge_scan(fbuf *b, fans *a, size_t na, frow *all, size_t nall, uint64_t limit)
{
	/* The columns: "time", then the union of every node's, in the order
	 * they first appear. */
	const char *cols[256];
	size_t coln[256], nc = 0;
	unsigned map[64][256];
	for (size_t i = 0; i < na && i < 64; i++) {
		if (!a[i].head)
			continue;
		frow h = {.p = a[i].head, .n = a[i].head_n};
		for (unsigned j = 1;; j++) {
			size_t n;
			const char *c = cell(&h, j, &n);
			if (!c || j >= 256)
				break;
			size_t k = 0;
			while (k < nc && !(coln[k] == n && !memcmp(cols[k], c, n)))
				k++;
			if (k == nc && nc < 255) {
				cols[nc] = c;
				coln[nc++] = n;
			}
			map[i][j] = (unsigned)k;
		}
	}
	fb_put(b, "time", 4);
	for (size_t k = 0; k < nc; k++) {
		fb_put(b, "\t", 1);
		fb_put(b, cols[k], coln[k]);
	}
	fb_put(b, "\n", 1);
	for (size_t r = 0; r < nall; r++)
		all[r].ts = row_time(&all[r]);
	qsort(all, nall, sizeof *all, by_ts);
	size_t rows = 0;
	for (size_t r = 0; r < nall && (!limit || rows < limit); r++, rows++) {
		const frow *row = &all[r];
		size_t tn;
		const char *t = cell(row, 0, &tn);
		fb_put(b, t, tn);
		const char *vals[256] = {0};
		size_t vn[256] = {0};
		for (unsigned j = 1; j < 256; j++) {
			size_t n;
			const char *c = cell(row, j, &n);
			if (!c)
				break;
			unsigned k = row->node < 64 ? map[row->node][j] : 0;
			vals[k] = c;
			vn[k] = n;
		}
		for (size_t k = 0; k < nc; k++) {
			fb_put(b, "\t", 1);
			if (vals[k])
				fb_put(b, vals[k], vn[k]);
		}
		fb_put(b, "\n", 1);
	}
	char end[48];
	int k = snprintf(end, sizeof end, "END %zu", rows);
	fb_put(b, end, (size_t)k);
}

int fan_run(const fan_node *nodes, size_t n, const fan_opts *o, const char *cmd, char **out,
	    size_t *out_len)
{
	*out = NULL;
	*out_len = 0;
	char scratch[2048], err[CMD_ERR_MAX];
	cmd_req req;
	size_t cn = strcspn(cmd, "\n");
	fbuf b = {.max = o->max_bytes ? o->max_bytes : SIZE_MAX / 2};
	if (cn >= sizeof scratch ||
	    cmd_parse(cmd, cn, scratch, sizeof scratch, 0, &req, err, sizeof err)) {
		char m[300];
		int k = snprintf(m, sizeof m, "ERR %s\n",
				 cn >= sizeof scratch ? "command too long" : err);
		fb_put(&b, m, (size_t)k);
		goto done;
	}
	fan_peer *ps = calloc(n, sizeof *ps);
	if (!ps)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		ps[i].node = &nodes[i];
		ps[i].fd = -1;
	}
	int64_t deadline = fan_now() + (o->timeout_ns > 0 ? o->timeout_ns : INT64_C(5000000000));
	/* nodes[0] answered here: the others' queries leave first, so that
	 * they answer while this one works out its part. */
	int rc = 0;
	for (size_t i = o->local ? 1 : 0; i < n && !rc; i++) {
		rc = peer_start(&ps[i], o, cmd, cn);
		if (!rc && ps[i].pooled)
			rc = peer_step(&ps[i], POLLOUT, b.max, o, cmd, cn);
	}
	if (!rc && o->local && n) {
		rc = o->local(o->local_arg, &req, &ps[0].in, &ps[0].in_len);
		if (rc == 0) {
			ps[0].in_cap = ps[0].in_len;
			ps[0].scanned = ps[0].in_len;
			ps[0].done = 1;
			ps[0].id = o->local_id;
		} else if (rc == 1) {
			rc = peer_start(&ps[0], o, cmd, cn);
		}
	}
	if (rc) {
		for (size_t j = 0; j < n; j++) {
			free(ps[j].req);
			free(ps[j].in);
			if (ps[j].fd >= 0)
				close(ps[j].fd);
		}
		free(ps);
		return -ENOMEM;
	}
	struct pollfd *pf = calloc(n, sizeof *pf);
	for (;;) {
		size_t live = 0;
		for (size_t i = 0; i < n; i++) {
			pf[i] = (struct pollfd){
				.fd = ps[i].done ? -1 : ps[i].fd,
				.events = (short)(POLLIN |
						  (ps[i].sent < ps[i].req_len ? POLLOUT : 0))};
			live += !ps[i].done;
		}
		if (!live)
			break;
		int64_t left = deadline - fan_now();
		if (left <= 0) {
			for (size_t i = 0; i < n; i++)
				if (!ps[i].done)
					peer_fail(&ps[i], "no answer within %" PRId64 " ms",
						  (o->timeout_ns > 0 ? o->timeout_ns
								     : INT64_C(5000000000)) /
							  1000000);
			break;
		}
		if (poll(pf, n, (int)(left / 1000000) + 1) < 0 && errno != EINTR)
			break;
		for (size_t i = 0; i < n; i++) {
			fan_peer *p = &ps[i];
			if (p->done || !pf[i].revents)
				continue;
			if (peer_step(p, pf[i].revents, b.max, o, cmd, cn))
				peer_fail(p, "out of memory");
		}
	}
	free(pf);

	/* The answers. */
	fans *a = calloc(n, sizeof *a);
	size_t nall = 0, missing = 0, answered = 0;
	rc = 0;
	const fans *first_err = NULL, *absent_err = NULL;
	const char *absent_msg = NULL;
	size_t absent_n = 0;
	for (size_t i = 0; i < n && !rc; i++) {
		if (ps[i].why[0]) {
			missing++;
			continue;
		}
		/* The same node listed twice (by two addresses): once. */
		size_t j = 0;
		while (j < i && !(ps[i].id && ps[j].id == ps[i].id && !ps[j].why[0]))
			j++;
		if (j < i)
			continue;
		rc = split_answer(&ps[i], (unsigned)i, &a[i]);
		if (a[i].err && err_is_absent(&a[i])) {
			absent_err = &a[i];
			absent_msg = a[i].err; /* kept: the answer's error if no node holds it */
			absent_n = a[i].err_n;
			a[i].err = NULL;
			a[i].head = NULL;
			a[i].n = 0;
			continue;
		}
		if (a[i].err && !first_err)
			first_err = &a[i];
		answered++;
		nall += a[i].n;
	}
	if (rc)
		goto free_all;
	char names[1024];
	size_t nl = 0;
	names[0] = 0;
	for (size_t i = 0; i < n; i++)
		if (ps[i].why[0] && nl < sizeof names - 1) {
			int k = snprintf(names + nl, sizeof names - nl, "%s%s:%s (%s)",
					 nl ? "; " : "", nodes[i].host, nodes[i].port, ps[i].why);
			nl += k > 0 ? (size_t)k : 0;
			if (nl >= sizeof names)
				nl = sizeof names - 1;
		}
	if (first_err) {
		size_t i = (size_t)(first_err - a);
		char nm[300];
		snprintf(nm, sizeof nm, "%s:%s", nodes[i].host, nodes[i].port);
		put_err(&b, first_err->err, first_err->err_n, nm);
		goto free_all;
	}
	if (missing && (!o->partial || !answered)) {
		char m[1300];
		int k = snprintf(m, sizeof m, "ERR %s: %zu of %zu nodes %s: %s%s%s%s\n", req.name,
				 missing, n, FAN_MISSING, names, o->partial ? "" : " (",
				 o->partial ? "" : (o->hint ? o->hint : "#!fanout partial"),
				 o->partial ? "" : " answers with the others, marked)");
		fb_put(&b, m, (size_t)k);
		goto free_all;
	}
	if (!answered && absent_err) {
		put_err(&b, absent_msg, absent_n, "every node");
		goto free_all;
	}
	frow *all = malloc((nall ? nall : 1) * sizeof *all);
	if (!all) {
		rc = -ENOMEM;
		goto free_all;
	}
	nall = 0;
	for (size_t i = 0; i < n; i++)
		for (size_t r = 0; r < a[i].n; r++)
			all[nall++] = a[i].rows[r];
	size_t rows = 0;
	switch (req.kind) {
	case CMD_AGG: {
		tally_agg t = {0};
		for (size_t r = 0; r < nall; r++) {
			tally_agg x = row_agg(&all[r], 0);
			agg_add(&t, &x);
		}
		agg_done(&t);
		fb_put(&b, CMD_HEAD_AGG, CMD_HEAD_LEN(CMD_HEAD_AGG));
		fb_agg(&b, "", 0, &t);
		rows = 1;
		break;
	}
	case CMD_SERIES:
	case CMD_KEYS: {
		int series = req.kind == CMD_SERIES;
		if (series)
			fb_put(&b, CMD_HEAD_SERIES, CMD_HEAD_LEN(CMD_HEAD_SERIES));
		else
			fb_put(&b, CMD_HEAD_KEYS, CMD_HEAD_LEN(CMD_HEAD_KEYS));
		/* A series from one node alone is in time order already (the
		 * usual case: a camera's events live on one node). */
		size_t from_nodes = 0;
		for (size_t i = 0; i < n; i++)
			from_nodes += a[i].n > 0;
		int alone = series && from_nodes <= 1; /* a row a window */
		if (!alone) {
			for (size_t r = 0; r < nall; r++)
				all[r].ts = series ? row_time(&all[r]) : 0;
			qsort(all, nall, sizeof *all, series ? by_ts : by_key);
		}
		for (size_t r = 0; r < nall;) {
			size_t q = r + 1;
			size_t kn, qn;
			const char *k0 = cell(&all[r], 0, &kn);
			while (!alone && q < nall) {
				const char *kq = cell(&all[q], 0, &qn);
				if (series ? all[q].ts != all[r].ts
					   : (qn != kn || memcmp(kq, k0, kn)))
					break;
				q++;
			}
			rows++;
			if (q == r + 1) {
				/* one node's row: its text is the answer (reading
				 * and writing it again gives the same bytes) */
				fb_put(&b, all[r].p, all[r].n);
				fb_put(&b, "\n", 1);
				r = q;
				continue;
			}
			tally_agg t = row_agg(&all[r], 1);
			for (size_t x = r + 1; x < q; x++) {
				tally_agg y = row_agg(&all[x], 1);
				agg_add(&t, &y);
			}
			agg_done(&t);
			fb_agg(&b, k0, kn, &t);
			r = q;
		}
		break;
	}
	case CMD_SCAN:
		merge_scan(&b, a, n, all, nall, req.limit);
		rows = SIZE_MAX; /* merge_scan wrote its END */
		break;
	case CMD_TABLES:
	case CMD_KEYLIST: /* the union of the catalogs: rows sorted, each once */
		fb_put(&b, req.kind == CMD_TABLES ? "table\tkey\tcolumn\ttype\n" : "table\tkey\n",
		       req.kind == CMD_TABLES ? 22 : 10);
		qsort(all, nall, sizeof *all, by_text);
		for (size_t r = 0; r < nall; r++) {
			if (r && all[r].n == all[r - 1].n &&
			    !memcmp(all[r].p, all[r - 1].p, all[r].n))
				continue;
			fb_put(&b, all[r].p, all[r].n);
			fb_put(&b, "\n", 1);
			rows++;
		}
		break;
	case CMD_DIST:
		if (req.n_stats == 1 && !strcmp(req.stats[0], "pairs")) {
			/* each node's pairs as they came: the caller merges them
			 * exactly (wire/fandist.c); a finished quantile would not.
			 * Per window (step=), the windows' rows in time order,
			 * node after node within one, so that a window's rows
			 * are together (fandist_window) */
			if (req.step) {
				fb_put(&b, "start\texp\tkind\tunits\tcount\n", 27);
				for (size_t r = 0; r < nall; r++)
					all[r].ts = row_time(&all[r]);
				qsort(all, nall, sizeof *all, by_ts);
			} else {
				fb_put(&b, "exp\tkind\tunits\tcount\n", 21);
			}
			for (size_t r = 0; r < nall; r++) {
				fb_put(&b, all[r].p, all[r].n);
				fb_put(&b, "\n", 1);
			}
			rows = nall;
			break;
		}
		__attribute__((fallthrough));
	default: {
		char m[200];
		int k = snprintf(m, sizeof m, "ERR %s: not a query that fans out\n", req.name);
		fb_put(&b, m, (size_t)k);
		rows = SIZE_MAX - 1;
	}
	}
	free(all);
	if (rows != SIZE_MAX - 1) {
		if (rows != SIZE_MAX) {
			char end[48];
			int k = snprintf(end, sizeof end, "END %zu", rows);
			fb_put(&b, end, (size_t)k);
		}
		if (missing) {
			fb_put(&b, " PARTIAL ", 9);
			fb_put(&b, names, nl);
		}
		fb_put(&b, "\n", 1);
	}
free_all:
	for (size_t i = 0; i < n; i++) {
		fan_peer *p = &ps[i];
		free(a[i].rows);
		free(p->req);
		/* whole answers, nothing after them: the connection is clean */
		if (p->fd >= 0 && p->done && !p->why[0] && p->scanned == p->in_len)
			pool_put(o->pool, p);
		else if (p->fd >= 0)
			close(p->fd);
		free(p->in);
	}
	free(a);
	free(ps);
	if (rc) {
		free(b.p);
		return rc;
	}
done:
	if (b.oom) {
		free(b.p);
		return -ENOMEM;
	}
	if (b.over) {
		b.n = 0;
		b.over = 0;
		char m[200];
		int k = snprintf(
			m, sizeof m,
			"ERR %s: the merged answer is longer than the fan-out bound of %zu "
			"bytes (fanout-max-bytes); ask for a narrower range\n",
			req.name ? req.name : "query", b.max);
		b.max = SIZE_MAX / 2;
		fb_put(&b, m, (size_t)k);
	}
	*out = b.p;
	*out_len = b.n;
	return 0;
}

cmd_req fan_req(enum cmd_kind kind, const char *name, const char *table, const char *field,
		const char *key, int64_t step, int64_t from, int64_t to)
{
	return (cmd_req){.kind = kind,
			 .name = name,
			 .table = table,
			 .field = field,
			 .key = key,
			 .step = step,
			 .from = from,
			 .to = to};
}

int fan_ask(const fan_node *nodes, size_t n, const fan_opts *o, const cmd_req *r, char **out,
	    size_t *out_len)
{
	char cmd[4096];
	if (!fan_build_cmd(r, cmd, sizeof cmd))
		return -E2BIG;
	return fan_run(nodes, n, o, cmd, out, out_len);
}

/* ---------------------------------------------------------------- reading back */

void fan_reader_open(fan_reader *rd, const char *text, size_t len)
{
	memset(rd, 0, sizeof *rd);
	const char *e = text + len, *nl = memchr(text, '\n', len);
	const char *first_end = nl ? nl : e;
	if (len >= 4 && !memcmp(text, "ERR ", 4)) {
		rd->err = text + 4;
		rd->err_n = (size_t)(first_end - text) - 4;
		return;
	}
	rd->head = text;
	rd->head_n = (size_t)(first_end - text);
	rd->p = nl ? nl + 1 : e;
	/* The last line is END (fan_run ends every answer so). */
	const char *last = e;
	if (last > rd->p && last[-1] == '\n')
		last--;
	const char *ls = last;
	while (ls > rd->p && ls[-1] != '\n')
		ls--;
	rd->end = ls;
	const char *mark = memmem(ls, (size_t)(last - ls), " PARTIAL ", 9);
	if (!memchr(ls, '\t', (size_t)(last - ls)) && mark) {
		rd->partial = mark + 9;
		rd->partial_n = (size_t)(last - rd->partial);
	}
}

int fan_reader_next(fan_reader *rd, const char **row, size_t *n)
{
	if (!rd->p || rd->p >= rd->end)
		return 0;
	const char *nl = memchr(rd->p, '\n', (size_t)(rd->end - rd->p));
	const char *e = nl ? nl : rd->end;
	*row = rd->p;
	*n = (size_t)(e - rd->p);
	rd->p = nl ? nl + 1 : rd->end;
	return 1;
}

int fan_err_missing(const fan_reader *rd)
{
	return rd->err && memmem(rd->err, rd->err_n, FAN_MISSING, strlen(FAN_MISSING));
}

tally_agg fan_cell_agg(const char *row, size_t n, unsigned j)
{
	frow r = {.p = row, .n = n};
	tally_agg a = row_agg(&r, j);
	agg_done(&a);
	return a;
}

size_t fan_unescape(const char *s, size_t n, char *out)
{
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		char ch = s[i];
		if (ch == '\\' && i + 1 < n) {
			char e = s[++i];
			ch = e == 't' ? '\t' : e == 'n' ? '\n' : e == 'r' ? '\r' : e;
		}
		out[o++] = ch;
	}
	return o;
}
