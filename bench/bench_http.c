/*
 * bench_http.c — tallyd over HTTP: durable line-protocol ingest through
 * InfluxDB v2's /api/v2/write, plain and gzip; with --json, the same
 * events as the cameras' JSON (NDJSON bodies, the default mapping)
 * through /api/v1/events?table=traffic.
 *
 * Several keep-alive connections each send their share of the events as
 * bodies of about --body-bytes (cut at line ends), one request at a time,
 * each answered 204 only once durable (the group commit). The text, and
 * its gzip form, is made before the clock starts, so the rate is the
 * server's. Figures: events/s over the whole run, and p50/p99 of the
 * requests' round trips (send of the head to the last byte of the
 * answer). Each run starts its own tallyd on free ports and a fresh data
 * directory, waits for its memtables to be faulted in (as bench_tcp
 * does), and checks through #!stats that every event was accepted.
 *
 * --ab PAIRS measures what an Idempotency-Key costs (issue 15: at most
 * 5%): the same bodies without and with a key (bench-K/SEQ, a source per
 * connection), in pairs of runs with the order alternating, and prints
 * the overhead per pair in wall time and in tallyd's CPU time with its
 * spread (abpairs.h).
 *
 *   ./build/bench/bench_http --events 8000000 --connections 4
 *   ./build/bench/bench_http --events 4000000 --json
 *   ./build/bench/bench_http --events 4000000 --ab 8
 */
#include <errno.h>
#include <ftw.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
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
#include <zlib.h>

#include "abpairs.h"
#include "benchnet.h"

#define CAMERAS 1000
#define T0      INT64_C(1699920000000000000) /* 2023-11-14T00:00:00Z */
#define GAP     INT64_C(60000000000)         /* a camera's events are a minute apart */

typedef struct body {
	char *p;
	size_t n;
	uint64_t events;
} body;

typedef struct hconn_run {
	unsigned port, k;
	int labelled; /* each body with Idempotency-Key: bench-K/SEQ */
	body *bodies;
	size_t n_bodies;
	int gzip;
	double *lat; /* per request, seconds */
	uint64_t events;
} hconn_run;

static int json_mode; /* --json: camera events to /api/v1/events */

/* One event as a line of the body: line protocol, or (json_mode) the
 * camera's JSON event with its time in RFC 3339 to the nanosecond. */
static int put_event(char *p, unsigned cam, unsigned speed, int64_t ts)
{
	if (!json_mode)
		return sprintf(p, "traffic,camera=KV%05u speed=%u.%u %" PRId64 "\n", cam,
			       speed / 10, speed % 10, ts);
	time_t secs = (time_t)(ts / 1000000000);
	struct tm tm;
	gmtime_r(&secs, &tm);
	return sprintf(
		p,
		"{\"kvfv_id\":\"KV%05u\",\"timestamp\":\"%04d-%02d-%02dT%02d:%02d:%02d.%09" PRId64
		"Z\",\"vehicle_speed\":%u.%u}\n",
		cam, tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
		ts % 1000000000, speed / 10, speed % 10);
}

/* Connection k's events: cameras k, k + conns, ... in time order, cut into
 * bodies of about body_bytes. */
static body *make_bodies(unsigned k, unsigned conns, uint64_t events, size_t body_bytes,
			 size_t *n_out)
{
	unsigned ncam = 0;
	for (unsigned c = k; c < CAMERAS; c += conns)
		ncam++;
	uint64_t per_cam = events / CAMERAS, left = per_cam * ncam;
	size_t cap = 16, n = 0;
	body *b = calloc(cap, sizeof *b);
	uint64_t i = 0, seed = k * 7919u + 1;
	while (left) {
		if (n == cap)
			b = realloc(b, (cap *= 2) * sizeof *b);
		body *x = &b[n++];
		x->p = malloc(body_bytes + 128);
		x->n = 0;
		x->events = 0;
		while (left && x->n < body_bytes) {
			unsigned c = k + (unsigned)(i % ncam) * conns;
			int64_t ts = T0 + (int64_t)(i / ncam) * GAP + (int64_t)(i % ncam);
			seed = seed * 6364136223846793005u + 1442695040888963407u;
			unsigned speed = 300 + (unsigned)((seed >> 33) % 1000);
			x->n += (size_t)put_event(x->p + x->n, c, speed, ts);
			x->events++;
			i++;
			left--;
		}
	}
	*n_out = n;
	return b;
}

static void gzip_body(body *b)
{
	uLongf cap = compressBound(b->n) + 64;
	char *out = malloc(cap);
	z_stream z;
	memset(&z, 0, sizeof z);
	if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 16 + MAX_WBITS, 8,
			 Z_DEFAULT_STRATEGY) != Z_OK)
		die("deflateInit2");
	z.next_in = (Bytef *)b->p;
	z.avail_in = (uInt)b->n;
	z.next_out = (Bytef *)out;
	z.avail_out = (uInt)cap;
	if (deflate(&z, Z_FINISH) != Z_STREAM_END)
		die("deflate");
	free(b->p);
	b->p = out;
	b->n = cap - z.avail_out;
	deflateEnd(&z);
}

/* Reads one answer and drops it from buf; its status. */
static int read_answer(int fd, char *buf, size_t cap, size_t *have)
{
	size_t hl, cl;
	int status = http_answer(fd, buf, cap, have, &hl, &cl);
	if (status != (json_mode ? 200 : 204))
		fprintf(stderr, "bench_http: answer %d: %.*s\n", status, (int)cl, buf + hl);
	memmove(buf, buf + hl + cl, *have - hl - cl);
	*have -= hl + cl;
	return status;
}

static void *conn_main(void *arg)
{
	hconn_run *r = arg;
	int fd = connect_to(r->port);
	static __thread char buf[1 << 16];
	size_t have = 0;
	for (size_t i = 0; i < r->n_bodies; i++) {
		char head[320], label[64] = "";
		if (r->labelled)
			snprintf(label, sizeof label, "Idempotency-Key: bench-%u/%zu\r\n", r->k,
				 i + 1);
		int k = snprintf(head, sizeof head,
				 "POST %s HTTP/1.1\r\n"
				 "Host: 127.0.0.1\r\nContent-Length: %zu\r\n%s%s\r\n",
				 json_mode ? "/api/v1/events?table=traffic"
					   : "/api/v2/write?org=o&bucket=b&precision=ns",
				 r->bodies[i].n, r->gzip ? "Content-Encoding: gzip\r\n" : "",
				 label);
		double t = now_s();
		send_all(fd, head, (size_t)k);
		send_all(fd, r->bodies[i].p, r->bodies[i].n);
		if (read_answer(fd, buf, sizeof buf, &have) != (json_mode ? 200 : 204))
			die("a write was not answered %d", json_mode ? 200 : 204);
		r->lat[i] = now_s() - t;
		r->events += r->bodies[i].events;
	}
	close(fd);
	return NULL;
}

static int durable = 1;

/* The bodies of every connection, made (and gzipped) before any clock. */
typedef struct workload {
	unsigned conns;
	int gz;
	body *bodies[64];
	size_t nb[64], requests, text, wire; /* bytes before and after gzip */
	uint64_t sent;
} workload;

static void workload_make(workload *w, unsigned conns, uint64_t events, size_t body_bytes, int gz)
{
	memset(w, 0, sizeof *w);
	w->conns = conns;
	w->gz = gz;
	for (unsigned k = 0; k < conns; k++) {
		w->bodies[k] = make_bodies(k, conns, events, body_bytes, &w->nb[k]);
		w->requests += w->nb[k];
		for (size_t i = 0; i < w->nb[k]; i++) {
			w->sent += w->bodies[k][i].events;
			w->text += w->bodies[k][i].n;
			if (gz)
				gzip_body(&w->bodies[k][i]);
			w->wire += w->bodies[k][i].n;
		}
	}
}

static void workload_free(workload *w)
{
	for (unsigned k = 0; k < w->conns; k++) {
		for (size_t i = 0; i < w->nb[k]; i++)
			free(w->bodies[k][i].p);
		free(w->bodies[k]);
	}
}

/* One run: a fresh tallyd and data directory, every connection's bodies
 * sent at once, every event checked accepted. *secs: wall time of the
 * sends; *cpu: tallyd's CPU seconds meanwhile; lat[requests]: each
 * request's round trip, sorted. */
static void serve(const char *tallyd, const char *dir, const workload *w, unsigned shards,
		  int labelled, double *secs, double *cpu, double *lat)
{
	char data[600], pf[600], hpf[600], sh[16];
	snprintf(data, sizeof data, "%s/data-%s", dir, w->gz ? "gzip" : "plain");
	snprintf(pf, sizeof pf, "%s/port", dir);
	snprintf(hpf, sizeof hpf, "%s/http-port", dir);
	snprintf(sh, sizeof sh, "%u", shards);
	unlink(pf);
	unlink(hpf);
	pid_t pid = fork();
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		const char *argv[] = {tallyd,
				      "--data",
				      data,
				      "--port",
				      "0",
				      "--port-file",
				      pf,
				      "--http-port",
				      "0",
				      "--http-port-file",
				      hpf,
				      "--log-level",
				      "warn",
				      "--http-durable",
				      durable ? "on" : "off",
				      "--shards",
				      sh,
				      NULL};
		if (!shards)
			argv[15] = NULL;
		execv(tallyd, (char *const *)argv);
		_exit(127);
	}
	unsigned port = read_port(pf, pid), hport = read_port(hpf, pid);
	/* As bench_tcp: the memtables' memory is faulted in before the
	 * clock starts (tallyd does it in the background at start). */
	for (double until = now_s() + 60; stat_of(port, "prefault_pending") && now_s() < until;)
		usleep(20000);
	hconn_run runs[64];
	pthread_t thr[64];
	for (unsigned k = 0; k < w->conns; k++)
		runs[k] = (hconn_run){.port = hport,
				      .k = k,
				      .labelled = labelled,
				      .bodies = w->bodies[k],
				      .n_bodies = w->nb[k],
				      .gzip = w->gz,
				      .lat = calloc(w->nb[k], sizeof(double))};
	double c0 = ab_proc_cpu_s(pid), t0 = now_s();
	for (unsigned k = 0; k < w->conns; k++)
		pthread_create(&thr[k], NULL, conn_main, &runs[k]);
	for (unsigned k = 0; k < w->conns; k++)
		pthread_join(thr[k], NULL);
	*secs = now_s() - t0;
	*cpu = ab_proc_cpu_s(pid) - c0;
	size_t m = 0;
	for (unsigned k = 0; k < w->conns; k++) {
		memcpy(lat + m, runs[k].lat, w->nb[k] * sizeof *lat);
		m += w->nb[k];
		free(runs[k].lat);
	}
	qsort(lat, m, sizeof *lat, cmp_d);
	uint64_t accepted = stat_of(port, "http_lines_accepted");
	if (accepted != w->sent)
		die("the server accepted %" PRIu64 " of %" PRIu64 " events", accepted, w->sent);
	kill(pid, SIGTERM);
	int st;
	waitpid(pid, &st, 0);
	nftw(data, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static void run(const char *tallyd, const char *dir, unsigned conns, uint64_t events,
		size_t body_bytes, int gz, unsigned shards)
{
	workload w;
	workload_make(&w, conns, events, body_bytes, gz);
	double secs, cpu, *lat = malloc(w.requests * sizeof *lat);
	serve(tallyd, dir, &w, shards, 0, &secs, &cpu, lat);
	size_t m = w.requests;
	printf("%s%-5s %u conns, %zu requests of %.0f KiB (%.0f KiB on the wire): %.2f M events/s "
	       "%s (%.2f s), request p50 %.2f ms, p99 %.2f ms\n",
	       json_mode ? "json " : "", gz ? "gzip" : "plain", conns, m,
	       (double)w.text / (double)m / 1024, (double)w.wire / (double)m / 1024,
	       (double)w.sent / secs / 1e6, durable ? "durable" : "acknowledged before the fsync",
	       secs, lat[m / 2] * 1e3, lat[(m * 99) / 100 < m ? (m * 99) / 100 : m - 1] * 1e3);
	fflush(stdout);
	free(lat);
	workload_free(&w);
}

/* --ab PAIRS: the same bodies without (A) and with (B) an Idempotency-Key,
 * in pairs of runs, the order alternating (abpairs.h). */
static void run_ab(const char *tallyd, const char *dir, unsigned conns, uint64_t events,
		   size_t body_bytes, int gz, unsigned shards, unsigned pairs)
{
	workload w;
	workload_make(&w, conns, events, body_bytes, gz);
	double *lat = malloc(w.requests * sizeof *lat);
	double *wall = calloc(2 * pairs, sizeof *wall), *cpu = calloc(2 * pairs, sizeof *cpu);
	printf("A/B, %s%s: %u pairs of runs, %u conns, %zu requests of %.0f KiB; A without, B with "
	       "Idempotency-Key: bench-K/SEQ; a fresh tallyd a run\n",
	       json_mode ? "json " : "", gz ? "gzip" : "plain", pairs, conns, w.requests,
	       (double)w.text / (double)w.requests / 1024);
	for (unsigned i = 0; i < 2 * pairs; i++) {
		int l = (int)((i & 1) ^ ((i >> 1) & 1)); /* A B, B A, A B, ... */
		double secs, c;
		serve(tallyd, dir, &w, shards, l, &secs, &c, lat);
		wall[l * pairs + i / 2] = secs;
		cpu[l * pairs + i / 2] = c;
		size_t m = w.requests;
		printf("  pair %2u %c %-8s %.2f M events/s (%.2f s), request p50 %.2f ms, p99 %.2f "
		       "ms, tallyd %.2f CPU-s, %.0f ns CPU an event\n",
		       i / 2 + 1, "AB"[l], l ? "key" : "no key", (double)w.sent / secs / 1e6, secs,
		       lat[m / 2] * 1e3, lat[(m * 99) / 100 < m ? (m * 99) / 100 : m - 1] * 1e3, c,
		       c / (double)w.sent * 1e9);
		fflush(stdout);
	}
	printf("Overhead of Idempotency-Key, B / A - 1 per pair:\n");
	ab_report("wall time", wall, wall + pairs, pairs);
	ab_report("tallyd CPU time", cpu, cpu + pairs, pairs);
	free(wall);
	free(cpu);
	free(lat);
	workload_free(&w);
}

int main(int argc, char **argv)
{
	const char *tallyd = "./build/wire/tallyd";
	uint64_t events = 8000000;
	unsigned conns = 4, shards = 0, pairs = 0;
	size_t body_bytes = 256 << 10;
	int only = -1;
	static const struct option opts[] = {{"tallyd", required_argument, 0, 't'},
					     {"events", required_argument, 0, 'e'},
					     {"connections", required_argument, 0, 'c'},
					     {"body-bytes", required_argument, 0, 'b'},
					     {"shards", required_argument, 0, 's'},
					     {"plain", no_argument, 0, 'p'},
					     {"gzip", no_argument, 0, 'g'},
					     {"no-durable", no_argument, 0, 'n'},
					     {"json", no_argument, 0, 'j'},
					     {"ab", required_argument, 0, 'a'},
					     {"help", no_argument, 0, 'h'},
					     {0, 0, 0, 0}};
	int ch;
	while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (ch) {
		case 't': tallyd = optarg; break;
		case 'e': events = strtoull(optarg, NULL, 10); break;
		case 'c': conns = (unsigned)atoi(optarg); break;
		case 'b': body_bytes = strtoull(optarg, NULL, 10); break;
		case 's': shards = (unsigned)atoi(optarg); break;
		case 'p': only = 0; break;
		case 'g': only = 1; break;
		case 'n': durable = 0; break;
		case 'j': json_mode = 1; break;
		case 'a': pairs = (unsigned)atoi(optarg); break;
		default:
			printf("usage: bench_http [--tallyd PATH] [--events N] [--connections N] "
			       "[--body-bytes N] [--shards N] [--plain | --gzip] [--no-durable] "
			       "[--json] [--ab PAIRS]\n");
			return ch == 'h' ? 0 : 2;
		}
	}
	if (conns < 1 || conns > 64 || events < CAMERAS || body_bytes < 1024)
		die("--connections 1..64, --events >= %d, --body-bytes >= 1024", CAMERAS);
	char dir[] = "/tmp/tally-bench-http-XXXXXX";
	if (!mkdtemp(dir))
		die("mkdtemp: %s", strerror(errno));
	for (int gz = 0; gz < 2; gz++) {
		if (pairs && (only < 0 ? gz == 0 : only == gz))
			run_ab(tallyd, dir, conns, events, body_bytes, gz, shards, pairs);
		else if (!pairs && (only < 0 || only == gz))
			run(tallyd, dir, conns, events, body_bytes, gz, shards);
	}
	nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	return 0;
}
