/*
 * bench_httpq.c — tallyd's HTTP query API beside its TCP protocol: round
 * trips of the same questions over one kept-open connection each, and
 * requests per second with many connections (wrk).
 *
 * It starts its own tallyd (free ports, a temporary data directory), writes
 * --cameras cameras x --days days with an event a minute per camera over
 * HTTP (not timed), then times, one request at a time on one keep-alive
 * connection that sleeps in recv as most clients do:
 *   - a day of 5-minute windows of one camera (288 rows) as JSON,
 *     GET /api/v1/series; the same over TCP (#!series) in the same run;
 *   - an exact aggregate over an unaligned range of a few hours,
 *     GET /api/v1/agg;
 *   - the cameras' route, GET /kvfv/{id}/avg-speed, a day at 5m;
 *   - InfluxQL as Grafana sends it, GET /query, SELECT mean("speed") ...
 *     GROUP BY time(5m) over a day of one camera (288 rows).
 * Each answer is checked (status 200, and the first of each kind its row
 * count). The round trip runs from the send of the request to the last
 * byte of its answer. Then wrk (Debian's) drives the series and the
 * cameras' route with --wrk-connections connections for --wrk-secs each.
 * The camera and day vary per request in the timed loops (seeded); wrk
 * repeats one URL.
 *
 *   ./build/bench/bench_httpq
 *   ./build/bench/bench_httpq --queries 50000 --wrk-secs 10
 */
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <sys/prctl.h>

#include "benchnet.h"

#define T0  INT64_C(1748822400000000000) /* 2025-06-02T00:00:00Z */
#define SEC INT64_C(1000000000)
#define DAY (86400 * SEC)

static unsigned cameras = 1000, days = 2;

static uint64_t rng_next(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

/* Writes the events: per camera, one a minute over the days, bodies of
 * about 1 MB through POST /write, each answered 204 once durable. */
static void load(unsigned http)
{
	size_t cap = 2 << 20, n = 0;
	char *b = malloc(cap), ans[4096];
	int fd = connect_to(http);
	size_t have = 0, hl, cl;
	uint64_t events = 0;
	for (unsigned d = 0; d < days; d++)
		for (unsigned c = 0; c < cameras; c++) {
			for (unsigned m = 0; m < 1440; m++) {
				int64_t t = T0 + (int64_t)d * DAY + (int64_t)m * 60 * SEC +
					    (int64_t)(c * 7919 % 60000) * 1000000;
				n += (size_t)sprintf(
					b + n, "traffic,camera=KV%05u speed=%u.%u %" PRId64 "\n", c,
					40 + (c * 31 + m * 17) % 110, m % 10, t);
				events++;
			}
			if (n < (1 << 20) && !(d == days - 1 && c == cameras - 1))
				continue;
			char head[200];
			int k = snprintf(head, sizeof head,
					 "POST /write?precision=ns HTTP/1.1\r\nHost: b\r\n"
					 "Content-Length: %zu\r\n\r\n",
					 n);
			send_all(fd, head, (size_t)k);
			send_all(fd, b, n);
			int st = http_answer(fd, ans, sizeof ans, &have, &hl, &cl);
			if (st != 204)
				die("a write was answered %d: %.*s", st, (int)cl, ans + hl);
			have = 0;
			n = 0;
		}
	close(fd);
	free(b);
	printf("  wrote %" PRIu64 " events: %u cameras x %u days, one a minute (not timed)\n",
	       events, cameras, days);
}

enum kind { K_SERIES, K_AGG, K_CAMERA, K_INFLUXQL, K_TCP, K_N };
static const char *const kind_names[K_N] = {
	"series 5m, one camera, one day, JSON (288 rows)",
	"exact agg, one camera, unaligned range, JSON",
	"cameras' route /kvfv/{id}/avg-speed, a day at 5m",
	"InfluxQL /query, GROUP BY time(5m), one day (288)",
	"series 5m, one camera, one day, TCP #!series",
};

static size_t make_request(char *q, enum kind k, uint64_t *seed)
{
	unsigned cam = (unsigned)(rng_next(seed) % cameras);
	int64_t day = T0 + (int64_t)(rng_next(seed) % days) * DAY;
	switch (k) {
	case K_SERIES:
		return (size_t)sprintf(
			q,
			"GET /api/v1/series?table=traffic&field=speed&key=KV%05u&step=5m"
			"&from=%" PRId64 "&to=%" PRId64 " HTTP/1.1\r\nHost: b\r\n\r\n",
			cam, day, day + DAY);
	case K_AGG: {
		int64_t from = day + (int64_t)(rng_next(seed) % (18 * 3600)) * SEC + 123456789;
		int64_t to = from + (int64_t)(1 + rng_next(seed) % (6 * 3600)) * SEC + 987654;
		return (size_t)sprintf(q,
				       "GET /api/v1/agg?table=traffic&field=speed&key=KV%05u"
				       "&from=%" PRId64 "&to=%" PRId64
				       " HTTP/1.1\r\nHost: b\r\n\r\n",
				       cam, from, to);
	}
	case K_CAMERA:
		return (size_t)sprintf(q,
				       "GET /kvfv/KV%05u/avg-speed?from=%" PRId64 "&to=%" PRId64
				       "&interval=5m HTTP/1.1\r\nHost: b\r\n\r\n",
				       cam, day, day + DAY);
	case K_INFLUXQL:
		return (size_t)sprintf(
			q,
			"GET /query?db=tally&epoch=ms&q=SELECT%%20mean(%%22speed%%22)%%20FROM%%20"
			"%%22traffic%%22%%20WHERE%%20%%22camera%%22%%20%%3D%%20'KV%05u'%%20AND%%20"
			"time%%20%%3E%%3D%%20%" PRId64 "%%20AND%%20time%%20%%3C%%20%" PRId64
			"%%20GROUP%%20BY%%20time(5m)%%20fill(null) HTTP/1.1\r\nHost: b\r\n\r\n",
			cam, day, day + DAY);
	default:
		return (size_t)sprintf(q, "#!series traffic speed KV%05u 5m %" PRId64 " 1d\n", cam,
				       day);
	}
}

/* Rows of an answer: JSON arrays "[" after the first, objects "{" of the
 * camera route after its first; TCP lines before END. */
static long count_rows(enum kind k, const char *p, size_t n)
{
	long rows = 0;
	const char *needle = k == K_CAMERA ? "{\"start\"" : k == K_TCP ? "\n" : "],[";
	size_t nl = strlen(needle);
	for (const char *e = p + n; (p = memmem(p, (size_t)(e - p), needle, nl)); p += nl)
		rows++;
	if ((k == K_SERIES || k == K_INFLUXQL) && rows)
		rows++; /* n rows, n-1 separators */
	if (k == K_TCP)
		rows -= 2; /* the header and END */
	return rows;
}

/* One request and its whole answer; the round trip in seconds. */
static double roundtrip(int fd, enum kind k, const char *q, size_t qn, char *buf, size_t cap,
			long *rows)
{
	size_t have = 0, hl = 0, cl = 0;
	double t = now_s();
	send_all(fd, q, qn);
	if (k == K_TCP) {
		for (;;) {
			ssize_t g = recv(fd, buf + have, cap - have, 0);
			if (g <= 0)
				die("the TCP connection closed during a query");
			have += (size_t)g;
			if (buf[have - 1] != '\n')
				continue;
			const char *l = buf + have - 1;
			while (l > buf && l[-1] != '\n')
				l--;
			if (!strncmp(l, "END ", 4))
				break;
			if (!strncmp(l, "ERR", 3))
				die("TCP: %.*s", (int)(buf + have - l), l);
		}
	} else {
		int st = http_answer(fd, buf, cap, &have, &hl, &cl);
		if (st != 200)
			die("%.*s answered %d: %.*s", (int)qn, q, st, (int)cl, buf + hl);
	}
	double s = now_s() - t;
	if (rows)
		*rows = k == K_TCP ? count_rows(k, buf, have) : count_rows(k, buf + hl, cl);
	return s;
}

/* wrk's requests/s for url, or -1 when wrk is missing or failed. */
static double wrk(const char *url, unsigned conns, unsigned secs)
{
	char cmd[1024];
	snprintf(cmd, sizeof cmd, "wrk -t2 -c%u -d%us '%s' 2>&1", conns, secs, url);
	FILE *f = popen(cmd, "r");
	if (!f)
		return -1;
	char line[512];
	double rps = -1;
	long non2xx = 0;
	while (fgets(line, sizeof line, f)) {
		sscanf(line, "Requests/sec: %lf", &rps);
		sscanf(line, "  Non-2xx or 3xx responses: %ld", &non2xx);
	}
	if (pclose(f) != 0 || non2xx)
		return -1;
	return rps;
}

int main(int argc, char **argv)
{
	const char *tallyd = NULL;
	unsigned queries = 20000, wrk_conns = 64, wrk_secs = 5;
	static const struct option opts[] = {{"tallyd", required_argument, 0, 't'},
					     {"cameras", required_argument, 0, 'c'},
					     {"days", required_argument, 0, 'd'},
					     {"queries", required_argument, 0, 'q'},
					     {"wrk-connections", required_argument, 0, 'w'},
					     {"wrk-secs", required_argument, 0, 's'},
					     {"help", no_argument, 0, 'h'},
					     {0, 0, 0, 0}};
	int ch;
	while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (ch) {
		case 't': tallyd = optarg; break;
		case 'c': cameras = (unsigned)atoi(optarg); break;
		case 'd': days = (unsigned)atoi(optarg); break;
		case 'q': queries = (unsigned)atoi(optarg); break;
		case 'w': wrk_conns = (unsigned)atoi(optarg); break;
		case 's': wrk_secs = (unsigned)atoi(optarg); break;
		default:
			printf("usage: bench_httpq [--tallyd PATH] [--cameras N] [--days N] "
			       "[--queries N] [--wrk-connections N] [--wrk-secs S]\n");
			return ch == 'h' ? 0 : 2;
		}
	}
	if (cameras < 1 || cameras > 99999 || days < 1 || queries < 100)
		die("--cameras 1..99999, --days >= 1, --queries >= 100");
	char self[4096], def[4200];
	if (!tallyd) {
		ssize_t k = readlink("/proc/self/exe", self, sizeof self - 1);
		if (k <= 0)
			die("readlink /proc/self/exe: %s", strerror(errno));
		self[k] = 0;
		*strrchr(self, '/') = 0;
		snprintf(def, sizeof def, "%s/../wire/tallyd", self);
		tallyd = def;
	}
	char dir[] = "/tmp/tally-bench-httpq-XXXXXX";
	if (!mkdtemp(dir))
		die("mkdtemp: %s", strerror(errno));
	char data[600], pf[600], hpf[600];
	snprintf(data, sizeof data, "%s/data", dir);
	snprintf(pf, sizeof pf, "%s/port", dir);
	snprintf(hpf, sizeof hpf, "%s/http-port", dir);
	pid_t pid = fork();
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		execl(tallyd, tallyd, "--data", data, "--port", "0", "--port-file", pf,
		      "--http-port", "0", "--http-port-file", hpf, "--log-level", "warn",
		      "--prefault", "off", (char *)NULL);
		_exit(127);
	}
	unsigned port = read_port(pf, pid), http = read_port(hpf, pid);
	printf("bench_httpq: tallyd %s, TCP 127.0.0.1:%u, HTTP 127.0.0.1:%u\n", tallyd, port, http);
	load(http);

	printf("\nRound trips, one connection each, one request at a time (%u per kind)\n",
	       queries);
	size_t cap = 1 << 20;
	char *buf = malloc(cap), q[512];
	double *lat = malloc(queries * sizeof *lat);
	uint64_t seed = 42;
	int hfd = connect_to(http), tfd = connect_to(port);
	for (enum kind k = 0; k < K_N; k++) {
		int fd = k == K_TCP ? tfd : hfd;
		long rows = 0;
		size_t qn = make_request(q, k, &seed);
		roundtrip(fd, k, q, qn, buf, cap, &rows);
		if ((k == K_SERIES || k == K_CAMERA || k == K_INFLUXQL || k == K_TCP) &&
		    rows != 288)
			die("%s: %ld rows, not 288", kind_names[k], rows);
		for (unsigned i = 0; i < 1000; i++) { /* warm up */
			qn = make_request(q, k, &seed);
			roundtrip(fd, k, q, qn, buf, cap, NULL);
		}
		for (unsigned i = 0; i < queries; i++) {
			qn = make_request(q, k, &seed);
			lat[i] = roundtrip(fd, k, q, qn, buf, cap, NULL);
		}
		qsort(lat, queries, sizeof *lat, cmp_d);
		printf("  %-52s p50 %6.1f us  p99 %6.1f us\n", kind_names[k],
		       lat[queries / 2] * 1e6, lat[queries * 99 / 100] * 1e6);
	}
	close(hfd);
	close(tfd);

	printf("\nRequests per second, wrk, %u connections, %u s each (one URL repeated)\n",
	       wrk_conns, wrk_secs);
	char url[512];
	snprintf(url, sizeof url,
		 "http://127.0.0.1:%u/api/v1/series?table=traffic&field=speed&key=KV00001&step=5m"
		 "&from=%" PRId64 "&to=%" PRId64,
		 http, T0, T0 + DAY);
	double rps = wrk(url, wrk_conns, wrk_secs);
	printf("  %-52s %s", kind_names[K_SERIES], rps < 0 ? "wrk missing or failed\n" : "");
	if (rps >= 0)
		printf("%.0f requests/s\n", rps);
	snprintf(url, sizeof url,
		 "http://127.0.0.1:%u/kvfv/KV00001/avg-speed?from=%" PRId64 "&to=%" PRId64
		 "&interval=5m",
		 http, T0, T0 + DAY);
	rps = wrk(url, wrk_conns, wrk_secs);
	printf("  %-52s %s", kind_names[K_CAMERA], rps < 0 ? "wrk missing or failed\n" : "");
	if (rps >= 0)
		printf("%.0f requests/s\n", rps);

	snprintf(url, sizeof url,
		 "http://127.0.0.1:%u/"
		 "query?db=tally&epoch=ms&q=SELECT%%20mean(%%22speed%%22)%%20FROM"
		 "%%20%%22traffic%%22%%20WHERE%%20%%22camera%%22%%20%%3D%%20%%27KV00001%%27%%20AND%"
		 "%20time"
		 "%%20%%3E%%3D%%20%" PRId64 "%%20AND%%20time%%20%%3C%%20%" PRId64
		 "%%20GROUP%%20BY%%20time(5m)%%20fill(null)",
		 http, T0, T0 + DAY);
	rps = wrk(url, wrk_conns, wrk_secs);
	printf("  %-52s %s", kind_names[K_INFLUXQL], rps < 0 ? "wrk missing or failed\n" : "");
	if (rps >= 0)
		printf("%.0f requests/s\n", rps);

	kill(pid, SIGTERM);
	int st;
	waitpid(pid, &st, 0);
	nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	free(buf);
	free(lat);
	return 0;
}
