/*
 * bench_tcp.c — tallyd over TCP: durable ingest rate, query latency and
 * queries per second.
 *
 * The workload is docs/workload.md's: 1,000 speed cameras over three days, a
 * tenth of them offline for three hours and sending their backlog last.
 * All line-protocol text is generated in memory before the clock starts,
 * one buffer per connection (cameras split across connections, each
 * connection's events in time order), so the rate measured is the
 * server's, not the generator's. Ingest is durable: the clock stops when
 * every connection's "#!sync" has answered. Then one connection measures
 * query latency (p50/p99 of round trips) and several measure throughput.
 * Each CPU's speed is probed before and after (cpuprobe.h): this VM has
 * phases in which one vCPU is 1.3-1.5x slower than the other.
 *
 * It starts its own tallyd on a free port and a temporary data directory
 * (--tallyd PATH), or uses a running one (--port).
 *
 * --ab PAIRS measures what labelled batches cost (issue 15: at most 5%):
 * the same batches unlabelled and labelled, in pairs of runs on fresh
 * servers with the order alternating, and prints the overhead per pair in
 * wall time and in tallyd's CPU time with its spread (abpairs.h).
 *
 *   ./build/bench/bench_tcp --events 20000000 --connections 4
 *   ./build/bench/bench_tcp --events 2000000 --batch 5000 --ab 6
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "abpairs.h"
#include "cpuprobe.h"
#include "benchutil.h"

#define CAMERAS    1000
#define DAYS       3
#define T0         INT64_C(1699920000000000000) /* 2023-11-14T00:00:00Z */
#define SEC        INT64_C(1000000000)
#define SEND_CHUNK (1u << 20)

typedef struct bopts {
	uint64_t events;
	unsigned conns, query_conns, shards;
	double query_secs;
	unsigned latency_queries;
	int in_parts;  /* flush everything into parts before the queries */
	int no_ingest; /* query a running server's data only */
	const char *tallyd, *port, *dir;
	uint64_t seed;
	/* --batch N: lines go in batches of N, each answered after
	 * durability: "#!sync" after each (unlabelled), or, with --labelled,
	 * each framed "#!batch bench-K SEQ" ... "#!end". The A/B of the two
	 * is the cost of the label alone. */
	unsigned batch;
	int labelled;
	unsigned ab; /* --ab PAIRS: unlabelled and labelled runs interleaved */
} bopts;

static uint64_t rng_next(uint64_t *s)
{
	/* splitmix64: fast, and good enough for a workload */
	uint64_t z = (*s += UINT64_C(0x9E3779B97F4A7C15));
	z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
	z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
	return z ^ (z >> 31);
}

/* ---------------------------------------------------------------- workload */

typedef struct gbuf {
	char *p;
	size_t n, cap;
	uint64_t events;
	uint64_t answers; /* OK answers before the final sync's (--batch) */
} gbuf;

static void gbuf_reserve(gbuf *b, size_t more)
{
	if (b->n + more <= b->cap)
		return;
	size_t cap = b->cap ? b->cap : 1 << 20;
	while (cap < b->n + more)
		cap *= 2;
	if (!(b->p = realloc(b->p, cap)))
		die("out of memory generating the workload");
	b->cap = cap;
}

/* Writes "traffic,camera=KV00123 speed=85.2 1699920000123456789\n". */
static void gen_line(gbuf *b, unsigned cam, unsigned speed10, int64_t ts)
{
	gbuf_reserve(b, 64);
	char *p = b->p + b->n;
	memcpy(p, "traffic,camera=KV", 17);
	p += 17;
	for (int d = 4, v = (int)cam; d >= 0; d--, v /= 10)
		p[d] = (char)('0' + v % 10);
	p += 5;
	memcpy(p, " speed=", 7);
	p += 7;
	p += sprintf(p, "%u.%u %" PRId64 "\n", speed10 / 10, speed10 % 10, ts);
	b->n = (size_t)(p - b->p);
	b->events++;
}

/* Connection k gets cameras k, k+conns, ...; their events interleaved in
 * time order, the backlog of the offline ones at the end. */
static void gen_workload(const bopts *o, gbuf *bufs)
{
	uint64_t per_cam = o->events / CAMERAS;
	int64_t span = (int64_t)DAYS * 86400 * SEC;
	int64_t gap = span / (int64_t)(per_cam ? per_cam : 1);
	for (unsigned k = 0; k < o->conns; k++) {
		gbuf *b = &bufs[k], late = {0};
		uint64_t seed = o->seed * 7919 + k;
		unsigned ncam = 0, cams[CAMERAS];
		for (unsigned c = k; c < CAMERAS; c += o->conns)
			cams[ncam++] = c;
		gbuf_reserve(b, (size_t)(per_cam * ncam * 56));
		for (uint64_t i = 0; i < per_cam; i++)
			for (unsigned j = 0; j < ncam; j++) {
				unsigned c = cams[j];
				int64_t ts = T0 + (int64_t)i * gap +
					     (int64_t)(rng_next(&seed) % (uint64_t)gap);
				unsigned speed = 300 + (unsigned)(rng_next(&seed) % 1000);
				/* a tenth of the cameras: offline 3 h on day 2, flushed last */
				int offline =
					c % 10 == 3 &&
					ts >= T0 + 86400 * SEC + (int64_t)(c % 12) * 3600 * SEC &&
					ts < T0 + 86400 * SEC + (int64_t)(c % 12 + 3) * 3600 * SEC;
				gen_line(offline ? &late : b, c, speed, ts);
			}
		gbuf_reserve(b, late.n);
		if (late.n) /* a small run may have no late events: late.p is NULL */
			memcpy(b->p + b->n, late.p, late.n);
		b->n += late.n;
		b->events += late.events;
		free(late.p);
	}
}

/* Cuts connection k's text into batches of o->batch lines (see bopts). */
static void frame_batches(const bopts *o, gbuf *b, unsigned k)
{
	gbuf f = {.events = b->events};
	gbuf_reserve(&f, b->n + b->n / 8 + 64);
	const char *p = b->p, *end = b->p + b->n;
	uint64_t seq = 0;
	while (p < end) {
		const char *q = p;
		for (unsigned i = 0; i < o->batch && q < end; i++)
			q = (const char *)memchr(q, '\n', (size_t)(end - q)) + 1;
		gbuf_reserve(&f, (size_t)(q - p) + 64);
		if (o->labelled)
			f.n += (size_t)sprintf(f.p + f.n, "#!batch bench-%u %" PRIu64 "\n", k,
					       ++seq);
		memcpy(f.p + f.n, p, (size_t)(q - p));
		f.n += (size_t)(q - p);
		f.n += (size_t)sprintf(f.p + f.n, o->labelled ? "#!end\n" : "#!sync\n");
		f.answers++;
		p = q;
	}
	free(b->p);
	*b = f;
}

/* ---------------------------------------------------------------- connections */

static int tcp_connect(const char *port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = {.sin_family = AF_INET,
				.sin_port = htons((uint16_t)atoi(port)),
				.sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a))
		die("connect to 127.0.0.1:%s: %s", port, strerror(errno));
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	return fd;
}

typedef struct rd {
	int fd;
	char buf[1 << 16];
	size_t head, len; /* buf[head, len) is unread */
} rd;

/* The next reply line, in place: its start and length (without the
 * newline); -1 at EOF. A latency figure must time the server, not the
 * client: lines are found in the receive buffer and not copied. */
static int rd_next(rd *r, const char **line, size_t *len)
{
	for (;;) {
		char *nl =
			r->len > r->head ? memchr(r->buf + r->head, '\n', r->len - r->head) : NULL;
		if (nl) {
			*line = r->buf + r->head;
			*len = (size_t)(nl - *line);
			r->head += *len + 1;
			return 0;
		}
		if (r->head) {
			memmove(r->buf, r->buf + r->head, r->len - r->head);
			r->len -= r->head;
			r->head = 0;
		}
		if (r->len == sizeof r->buf)
			r->len = 0; /* a line longer than we care about */
		ssize_t g = recv(r->fd, r->buf + r->len, sizeof r->buf - r->len, 0);
		if (g <= 0)
			return -1;
		r->len += (size_t)g;
	}
}

/* The next reply line copied into out (cap bytes), blocking; -1 at EOF. */
static int rd_line(rd *r, char *out, size_t cap)
{
	const char *l;
	size_t n;
	if (rd_next(r, &l, &n))
		return -1;
	size_t k = n < cap - 1 ? n : cap - 1;
	memcpy(out, l, k);
	out[k] = 0;
	return 0;
}

static void send_all(int fd, const char *p, size_t n)
{
	while (n) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			die("send: %s", strerror(errno));
		}
		p += w;
		n -= (size_t)w;
	}
}

/* ---------------------------------------------------------------- ingest */

typedef struct ingest {
	const char *port;
	gbuf *b;
	uint64_t accepted, rejected;
	double done_at;
} ingest;

static void *ingest_main(void *arg)
{
	ingest *in = arg;
	int fd = tcp_connect(in->port);
	rd r = {.fd = fd};
	/* Replies are only errors (none expected) and the sync answer: send
	 * it all, then read. */
	for (size_t pos = 0; pos < in->b->n;) {
		size_t n = in->b->n - pos < SEND_CHUNK ? in->b->n - pos : SEND_CHUNK;
		send_all(fd, in->b->p + pos, n);
		pos += n;
	}
	send_all(fd, "#!sync\n", 7);
	char line[512];
	uint64_t answers = 0;
	for (;;) {
		if (rd_line(&r, line, sizeof line))
			die("connection closed before the sync answered");
		if (!strncmp(line, "OK batch ", 9) && strstr(line, " applied ")) {
			answers++;
			continue;
		}
		if (sscanf(line, "OK sync accepted=%" SCNu64 " rejected=%" SCNu64, &in->accepted,
			   &in->rejected) == 2 &&
		    answers++ == in->b->answers)
			break;
		if (!strncmp(line, "OK ", 3))
			continue;
		fprintf(stderr, "bench_tcp: server: %s\n", line);
	}
	in->done_at = now_s();
	close(fd);
	return NULL;
}

/* All connections at once; returns the seconds until the last sync
 * answered, the lines accepted and rejected into *acc and *rej. */
static double ingest_all(const bopts *o, gbuf *bufs, uint64_t *acc, uint64_t *rej)
{
	ingest *in = calloc(o->conns, sizeof *in);
	pthread_t *th = calloc(o->conns, sizeof *th);
	if (!in || !th)
		die("out of memory");
	double t0 = now_s();
	for (unsigned k = 0; k < o->conns; k++) {
		in[k].port = o->port;
		in[k].b = &bufs[k];
		pthread_create(&th[k], NULL, ingest_main, &in[k]);
	}
	*acc = *rej = 0;
	double last = t0;
	for (unsigned k = 0; k < o->conns; k++) {
		pthread_join(th[k], NULL);
		*acc += in[k].accepted;
		*rej += in[k].rejected;
		if (in[k].done_at > last)
			last = in[k].done_at;
	}
	free(in);
	free(th);
	return last - t0;
}

/* ---------------------------------------------------------------- queries */

/* One value of #!stats from a new connection. */
static uint64_t stat_value(const char *port, const char *name)
{
	int fd = tcp_connect(port);
	rd *r = calloc(1, sizeof *r);
	if (!r)
		die("out of memory");
	r->fd = fd;
	send_all(fd, "#!stats\n", 8);
	uint64_t v = UINT64_MAX;
	size_t nl = strlen(name);
	for (;;) {
		const char *line;
		size_t n;
		if (rd_next(r, &line, &n))
			die("connection closed during #!stats");
		if (n >= 4 && !memcmp(line, "END ", 4))
			break;
		if (n > nl && !memcmp(line, name, nl) && line[nl] == '\t')
			v = strtoull(line + nl + 1, NULL, 10);
	}
	close(fd);
	free(r);
	return v;
}

/* The last line of buf[0, n), which ends with a newline: its start. */
static const char *last_line(const char *buf, size_t n)
{
	const char *p = buf + n - 1;
	while (p > buf && p[-1] != '\n')
		p--;
	return p;
}

/* One query: send it, then receive until the reply is complete, which its
 * last line tells (a reply ends with "END n" or an "ERR" line, and neither
 * holds a tab, as every row does). The reply lands whole in r->buf. *secs
 * is the round trip, taken when the last byte arrived: the rows are split
 * and counted after it, so that the figure times the server and the wire,
 * not this client's parsing (splitting 288 rows into lines took it about
 * 2.4 us). With spin the client polls the socket (recv with MSG_DONTWAIT)
 * instead of sleeping in recv. Returns the rows, checked against END's
 * count. */
static long run_query(int fd, rd *r, const char *q, size_t qn, double *secs, int spin)
{
	double t0 = now_s();
	send_all(fd, q, qn);
	r->head = r->len = 0;
	const char *end;
	for (;;) {
		if (r->len == sizeof r->buf)
			die("query %.*s: a reply over %zu bytes", (int)qn - 1, q, sizeof r->buf);
		ssize_t g = recv(r->fd, r->buf + r->len, sizeof r->buf - r->len,
				 spin ? MSG_DONTWAIT : 0);
		if (g < 0 && spin && (errno == EAGAIN || errno == EWOULDBLOCK))
			continue;
		if (g <= 0)
			die("connection closed during a query");
		r->len += (size_t)g;
		if (r->buf[r->len - 1] != '\n')
			continue;
		end = last_line(r->buf, r->len);
		if (!memchr(end, '\t', (size_t)(r->buf + r->len - end)) &&
		    (!strncmp(end, "END ", 4) || !strncmp(end, "ERR", 3)))
			break;
	}
	if (secs)
		*secs = now_s() - t0;
	if (!strncmp(end, "ERR", 3))
		die("query %.*s: %.*s", (int)qn - 1, q, (int)(r->buf + r->len - end - 1), end);
	long lines = 0;
	for (const char *p = r->buf; (p = memchr(p, '\n', (size_t)(end - p))); p++)
		lines++;
	long rows = lines - 1; /* the header */
	if (strtol(end + 4, NULL, 10) != rows)
		die("query %.*s: %ld rows before %.*s", (int)qn - 1, q, rows,
		    (int)(r->buf + r->len - end - 1), end);
	r->len = 0;
	return rows;
}

static size_t make_query(char *q, int kind, uint64_t *seed)
{
	unsigned cam = (unsigned)(rng_next(seed) % CAMERAS);
	int64_t day = T0 + (int64_t)(rng_next(seed) % DAYS) * 86400 * SEC;
	if (kind == 0) /* a day of 5-minute buckets: 288 rows */
		return (size_t)sprintf(q, "#!series traffic speed KV%05u 5m %" PRId64 " 1d\n", cam,
				       day);
	/* an exact average over an unaligned range of a few hours */
	int64_t from = day + (int64_t)(rng_next(seed) % (18 * 3600)) * SEC + 123456789;
	int64_t to = from + (int64_t)(1 + rng_next(seed) % (6 * 3600)) * SEC + 987654;
	return (size_t)sprintf(q, "#!agg traffic speed KV%05u %" PRId64 " %" PRId64 "\n", cam, from,
			       to);
}

typedef struct qthr {
	const char *port;
	double secs;
	uint64_t done;
	int kind;
} qthr;

static void *qps_main(void *arg)
{
	qthr *t = arg;
	int fd = tcp_connect(t->port);
	rd r = {.fd = fd};
	uint64_t seed = (uint64_t)(uintptr_t)t;
	char q[256];
	double end = now_s() + t->secs;
	while (now_s() < end) {
		size_t n = make_query(q, t->kind, &seed);
		run_query(fd, &r, q, n, NULL, 0);
		t->done++;
	}
	close(fd);
	return NULL;
}

/* ---------------------------------------------------------------- server */

static pid_t spawn_tallyd(const bopts *o, char *port, size_t cap)
{
	char portfile[600], data[600], shards[16];
	snprintf(portfile, sizeof portfile, "%s/port", o->dir);
	snprintf(data, sizeof data, "%s/data", o->dir);
	snprintf(shards, sizeof shards, "%u", o->shards);
	unlink(portfile); /* a run before this one's */
	pid_t pid = fork();
	if (pid < 0)
		die("fork: %s", strerror(errno));
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		const char *argv[20] = {o->tallyd, "--data",          data,     "--port",
					"0",       "--port-file",     portfile, "--log-level",
					"warn",    "--sync-interval", "1s",     "--http-port",
					"off"};
		int n = 13;
		if (o->in_parts) {
			argv[n++] = "--flush-interval";
			argv[n++] = "1s";
		}
		if (o->shards) {
			argv[n++] = "--shards";
			argv[n++] = shards;
		}
		argv[n] = NULL;
		execv(o->tallyd, (char *const *)argv);
		_exit(127);
	}
	double deadline = now_s() + 30;
	for (;;) {
		FILE *f = fopen(portfile, "r");
		if (f) {
			int ok = fgets(port, (int)cap, f) != NULL;
			fclose(f);
			if (ok) {
				port[strcspn(port, "\n")] = 0;
				return pid;
			}
		}
		int st;
		if (waitpid(pid, &st, WNOHANG) == pid)
			die("%s exited at start", o->tallyd);
		if (now_s() > deadline)
			die("%s did not start", o->tallyd);
		usleep(5000);
	}
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(p);
}

/* A running server writes into memory its flushed memtables had touched;
 * a new one faults its first memtable in the background (prefault, on by
 * default). Ingest starts from that steady state; returns the wait. */
static double wait_prefault(const char *port)
{
	double p0 = now_s();
	uint64_t pend;
	while ((pend = stat_value(port, "prefault_pending")) != 0 && pend != UINT64_MAX) {
		if (now_s() - p0 > 60)
			die("tallyd still faulting in memtable memory after 60 s");
		usleep(50000);
	}
	return now_s() - p0;
}

/* ---------------------------------------------------------------- A/B */

/* --ab PAIRS: the same batches unlabelled (A: "#!sync" after each) and
 * labelled (B: "#!batch bench-K SEQ" ... "#!end"), in pairs of runs, each
 * run on a fresh tallyd and data directory, the order alternating
 * (abpairs.h). Prints every run and the overhead of B per pair. */
static void run_ab(bopts *o, gbuf *raw, uint64_t total)
{
	gbuf *v[2];
	for (int l = 0; l < 2; l++) {
		bopts f = *o;
		f.labelled = l;
		v[l] = calloc(o->conns, sizeof *v[l]);
		for (unsigned k = 0; k < o->conns; k++) {
			gbuf_reserve(&v[l][k], raw[k].n);
			memcpy(v[l][k].p, raw[k].p, raw[k].n);
			v[l][k].n = raw[k].n;
			v[l][k].events = raw[k].events;
			frame_batches(&f, &v[l][k], k);
		}
	}
	double *wall = calloc(2 * o->ab, sizeof *wall), *cpu = calloc(2 * o->ab, sizeof *cpu);
	char data[600], port[32];
	snprintf(data, sizeof data, "%s/data", o->dir);
	printf("\nA/B: %u pairs of runs, batches of %u lines; A unlabelled (#!sync after each), "
	       "B labelled (#!batch bench-K SEQ ... #!end); a fresh tallyd a run\n",
	       o->ab, o->batch);
	cpuprobe_print("before the pairs");
	for (unsigned i = 0; i < 2 * o->ab; i++) {
		int l = (int)((i & 1) ^ ((i >> 1) & 1)); /* A B, B A, A B, ... */
		pid_t pid = spawn_tallyd(o, port, sizeof port);
		o->port = port;
		wait_prefault(port);
		double c0 = ab_proc_cpu_s(pid);
		uint64_t acc, rej;
		double el = ingest_all(o, v[l], &acc, &rej);
		double c = ab_proc_cpu_s(pid) - c0;
		if (acc != total || rej)
			die("run %u: accepted %" PRIu64 " of %" PRIu64 " events, %" PRIu64
			    " rejected",
			    i, acc, total, rej);
		wall[l * o->ab + i / 2] = el;
		cpu[l * o->ab + i / 2] = c;
		printf("  pair %2u %c %-10s %.2f M events/s (%.2f s), tallyd %.2f CPU-s, "
		       "%.0f ns CPU an event\n",
		       i / 2 + 1, "AB"[l], l ? "labelled" : "unlabelled", (double)total / el / 1e6,
		       el, c, c / (double)total * 1e9);
		fflush(stdout);
		kill(pid, SIGTERM);
		int st;
		waitpid(pid, &st, 0);
		nftw(data, rm_one, 16, FTW_DEPTH | FTW_PHYS);
		o->port = NULL;
	}
	cpuprobe_print("after the pairs");
	printf("\nOverhead of labelled batches, B / A - 1 per pair:\n");
	ab_report("wall time", wall, wall + o->ab, o->ab);
	ab_report("tallyd CPU time", cpu, cpu + o->ab, o->ab);
	for (int l = 0; l < 2; l++) {
		for (unsigned k = 0; k < o->conns; k++)
			free(v[l][k].p);
		free(v[l]);
	}
	free(wall);
	free(cpu);
}

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: bench_tcp [OPTIONS]\n"
		"\n"
		"Durable line-protocol ingest over TCP, then query latency and throughput.\n"
		"\n"
		"  --events N          events to ingest (default 20000000)\n"
		"  --connections N     ingest connections (default 4)\n"
		"  --shards N          server shards (default: its default, one per core)\n"
		"  --latency-queries N sequential queries per kind for p50/p99 (default 20000)\n"
		"  --query-connections N  connections for queries per second (default 4)\n"
		"  --query-seconds S   seconds per kind for queries per second (default 3)\n"
		"  --tallyd PATH       server binary to start (default: next to this one,\n"
		"                      ../wire/tallyd)\n"
		"  --port PORT         use a running server instead (127.0.0.1)\n"
		"  --in-parts          start tallyd with a 1 s flush interval and query only\n"
		"                      once every event is in parts (memtables empty)\n"
		"  --seed N            workload seed (default 1)\n"
		"  --batch N           send batches of N lines, each answered after\n"
		"                      durability (#!sync after each)\n"
		"  --labelled          with --batch: each batch labelled, #!batch ... #!end\n"
		"  --ab PAIRS          with --batch: PAIRS pairs of ingest runs, unlabelled and\n"
		"                      labelled, order alternating, a fresh tallyd a run; prints\n"
		"                      the labels' overhead (wall and tallyd CPU) and its spread\n"
		"  --no-ingest         with --port: only query what the server holds (for\n"
		"                      profiling the server over many runs)\n");
}

int main(int argc, char **argv)
{
	bopts o = {.events = 20000000,
		   .conns = 4,
		   .query_conns = 4,
		   .query_secs = 3,
		   .latency_queries = 20000,
		   .seed = 1};
	static const struct option lo[] = {
		{"events", 1, 0, 'e'},
		{"connections", 1, 0, 'c'},
		{"shards", 1, 0, 's'},
		{"latency-queries", 1, 0, 'l'},
		{"query-connections", 1, 0, 'q'},
		{"query-seconds", 1, 0, 'Q'},
		{"tallyd", 1, 0, 't'},
		{"port", 1, 0, 'p'},
		{"seed", 1, 0, 'S'},
		{"in-parts", 0, 0, 'P'},
		{"no-ingest", 0, 0, 'N'},
		{"batch", 1, 0, 'b'},
		{"labelled", 0, 0, 'L'},
		{"ab", 1, 0, 'A'},
		{"help", 0, 0, 'h'},
		{0, 0, 0, 0},
	};
	int ch;
	while ((ch = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
		switch (ch) {
		case 'e': o.events = strtoull(optarg, NULL, 10); break;
		case 'c': o.conns = (unsigned)atoi(optarg); break;
		case 's': o.shards = (unsigned)atoi(optarg); break;
		case 'l': o.latency_queries = (unsigned)atoi(optarg); break;
		case 'q': o.query_conns = (unsigned)atoi(optarg); break;
		case 'Q': o.query_secs = atof(optarg); break;
		case 't': o.tallyd = optarg; break;
		case 'p': o.port = optarg; break;
		case 'S': o.seed = strtoull(optarg, NULL, 10); break;
		case 'P': o.in_parts = 1; break;
		case 'N': o.no_ingest = 1; break;
		case 'b': o.batch = (unsigned)atoi(optarg); break;
		case 'L': o.labelled = 1; break;
		case 'A': o.ab = (unsigned)atoi(optarg); break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (o.events < CAMERAS || o.conns < 1 || o.conns > 256 || o.query_conns < 1 ||
	    o.query_conns > 256)
		die("--events at least 1000; --connections and --query-connections 1 to 256");
	if ((o.labelled || o.ab) && !o.batch)
		die("--labelled and --ab need --batch N");
	if (o.ab && (o.port || o.labelled))
		die("--ab starts its own tallyd for each run and labels B itself: no --port, "
		    "no --labelled");
	if (o.no_ingest && !o.port)
		die("--no-ingest needs --port: a server that already holds the workload");
	char self[4096], tallyd[4200], port[32], dir[] = "/tmp/tally-bench-tcp-XXXXXX";
	pid_t pid = 0;
	if (!o.port) {
		if (!o.tallyd) {
			ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
			if (n < 0)
				die("readlink: %s", strerror(errno));
			self[n] = 0;
			*strrchr(self, '/') = 0;
			snprintf(tallyd, sizeof tallyd, "%s/../wire/tallyd", self);
			o.tallyd = tallyd;
		}
		if (!mkdtemp(dir))
			die("mkdtemp: %s", strerror(errno));
		o.dir = dir;
	}

	if (o.no_ingest)
		goto queries;
	printf("bench_tcp: %" PRIu64 " events, %d cameras over %d days (a tenth offline 3 h, "
	       "sent late), %u connections\n",
	       o.events, CAMERAS, DAYS, o.conns);
	double g0 = now_s();
	gbuf *bufs = calloc(o.conns, sizeof *bufs);
	gen_workload(&o, bufs);
	for (unsigned k = 0; o.batch && !o.ab && k < o.conns; k++)
		frame_batches(&o, &bufs[k], k);
	uint64_t total = 0, bytes = 0;
	for (unsigned k = 0; k < o.conns; k++) {
		total += bufs[k].events;
		bytes += bufs[k].n;
	}
	printf("  generated %" PRIu64 " events, %.1f MB of line protocol in %.1f s (not timed)\n",
	       total, (double)bytes / 1e6, now_s() - g0);
	if (o.ab) {
		run_ab(&o, bufs, total);
		for (unsigned k = 0; k < o.conns; k++)
			free(bufs[k].p);
		free(bufs);
		nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
		return 0;
	}
	if (!o.port) {
		pid = spawn_tallyd(&o, port, sizeof port);
		o.port = port;
		printf("  tallyd %s on 127.0.0.1:%s, data in %s\n", o.tallyd, port, dir);
	}
	printf("  tallyd's memtable memory faulted in %.1f s after it started (not timed)\n",
	       wait_prefault(o.port));
	cpuprobe_print("before the ingest");

	/* Ingest: all connections at once; the clock stops at the last sync. */
	uint64_t acc, rej;
	double el = ingest_all(&o, bufs, &acc, &rej);
	printf("\nIngest (durable: ends when every connection's #!sync answered)\n");
	printf("  %" PRIu64 " accepted, %" PRIu64 " rejected in %.2f s: %.2f M events/s, "
	       "%.0f MB/s\n",
	       acc, rej, el, (double)acc / el / 1e6, (double)bytes / el / 1e6);
	for (unsigned k = 0; k < o.conns; k++)
		free(bufs[k].p);
	free(bufs);
	if (acc != total)
		die("accepted %" PRIu64 " of %" PRIu64 " events", acc, total);

	if (o.in_parts) {
		/* The queries then read parts only: wait for the flushes, and
		 * for the merges after them (the part count holds for 2 s). */
		double w0 = now_s(), still = 0;
		uint64_t parts = UINT64_MAX;
		while (stat_value(o.port, "memtable_bytes") != 0 || now_s() - still < 2) {
			if (now_s() - w0 > 120)
				die("memtables still not flushed after 120 s");
			uint64_t p = stat_value(o.port, "parts");
			if (p != parts) {
				parts = p;
				still = now_s();
			}
			usleep(200000);
		}
		printf("  every event in parts, merges done, %.1f s after the ingest (%" PRIu64
		       " parts)\n",
		       now_s() - w0, stat_value(o.port, "parts"));
	}

queries:;
	/* Latency: one connection, one query at a time. */
	static const char *kinds[2] = {"series 5m, one camera, one day (288 buckets)",
				       "exact agg, one camera, unaligned range"};
	printf("\nQueries over TCP (round trip, one connection, one at a time)\n");
	cpuprobe_print("before the queries");
	int fd = tcp_connect(o.port);
	rd *r = calloc(1, sizeof *r);
	r->fd = fd;
	double *lat = malloc(o.latency_queries * sizeof *lat);
	uint64_t seed = 42;
	char q[256];
	/* Twice: a client that sleeps in recv, as most do, and one that polls
	 * its socket. On this VM waking the sleeping client costs 7-15 us of
	 * the round trip, and how much varies with the host's load from
	 * minute to minute; the polling client's figure is the server's
	 * share and the wire's. */
	static const char *clients[2] = {"client sleeping in recv",
					 "client polling its socket (MSG_DONTWAIT)"};
	for (int spin = 0; spin < 2; spin++) {
		printf("  %s:\n", clients[spin]);
		for (int kind = 0; kind < 2; kind++) {
			long rows = 0;
			for (unsigned i = 0; i < 1000; i++) { /* warm up */
				size_t n = make_query(q, kind, &seed);
				run_query(fd, r, q, n, NULL, spin);
			}
			for (unsigned i = 0; i < o.latency_queries; i++) {
				size_t n = make_query(q, kind, &seed);
				rows += run_query(fd, r, q, n, &lat[i], spin);
			}
			qsort(lat, o.latency_queries, sizeof *lat, cmp_d);
			printf("    %-46s p50 %6.1f us  p99 %6.1f us  (avg %.0f rows)\n",
			       kinds[kind], lat[o.latency_queries / 2] * 1e6,
			       lat[o.latency_queries * 99 / 100] * 1e6,
			       (double)rows / o.latency_queries);
		}
	}
	close(fd);
	free(r);
	free(lat);

	/* Throughput: several connections, each one query at a time. */
	printf("\nQueries per second (%u connections, %.0f s each kind)\n", o.query_conns,
	       o.query_secs);
	for (int kind = 0; kind < 2; kind++) {
		qthr *qt = calloc(o.query_conns, sizeof *qt);
		pthread_t *qth = calloc(o.query_conns, sizeof *qth);
		double a = now_s();
		for (unsigned k = 0; k < o.query_conns; k++) {
			qt[k] = (qthr){.port = o.port, .secs = o.query_secs, .kind = kind};
			pthread_create(&qth[k], NULL, qps_main, &qt[k]);
		}
		uint64_t done = 0;
		for (unsigned k = 0; k < o.query_conns; k++) {
			pthread_join(qth[k], NULL);
			done += qt[k].done;
		}
		printf("  %-46s %.0f queries/s\n", kinds[kind], (double)done / (now_s() - a));
		free(qt);
		free(qth);
	}
	cpuprobe_print("after the queries");
	if (pid) {
		kill(pid, SIGTERM);
		int st;
		waitpid(pid, &st, 0);
		nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	}
	return 0;
}
