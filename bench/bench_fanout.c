/*
 * bench_fanout.c — a query across three tallyd nodes beside the same
 * query of one node holding everything, over TCP and over HTTP.
 *
 * It starts four tallyd on loopback (free ports, temporary data
 * directories): three naming each other in `peers`, camera c's events on
 * node c % 3 (as Kafka partitions by camera would put them), and a
 * fourth, alone, holding every event: the one-node figure. It writes
 * --cameras cameras x --days days, an event a minute per camera, over TCP
 * (not timed), then times round trips, one request at a time on kept-open
 * connections, interleaved so that both sides of each pair meet the same
 * machine (A, B, B, A, ...):
 *   - a day of 5-minute windows of one camera (288 rows), #!series over
 *     TCP: the single node, then a cluster node (which asks all three);
 *   - the same as JSON, GET /api/v1/series over HTTP, likewise.
 * Every answer is checked (288 rows; the fanned answer equals the single
 * node's on the first query of each kind). A fan-out costs a hand-off
 * to a worker thread, a round trip to each other node over a pooled
 * connection (the slowest sets it), the merge and a wake-up back: the
 * target is a fan-out p50 within 3x the single node's. --tallyd-b
 * starts four tallyd of a second build and times them in the same
 * rounds, each round starting at another kind: two builds compared at
 * the machine's same moments.
 *
 * --dist MINUTES keeps traffic.speed as a distribution (at 0.1) and times
 * distributions instead: over TCP #!dist of the camera's day (count,
 * median, V85), over HTTP GET /api/v1/dist of the day in windows of
 * MINUTES (V85 per window), whose fan-out asks each node once for every
 * window's pairs.
 *
 *   ./build/bench/bench_fanout
 *   ./build/bench/bench_fanout --queries 5000 --cameras 300 --days 2
 *   ./build/bench/bench_fanout --tallyd /tmp/tallyd-old --tallyd-b build/wire/tallyd
 */
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <sys/prctl.h>

#include "benchnet.h"

#define T0  INT64_C(1748822400000000000) /* 2025-06-02T00:00:00Z */
#define SEC INT64_C(1000000000)
#define DAY (86400 * SEC)

static unsigned cameras = 300, days = 2;
static unsigned dist_min; /* --dist: the windows' minutes; 0: series */

static uint64_t rng_next(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

/* Reads the TCP connection up to a line starting with what; dies on ERR. */
static void read_until(int fd, const char *what)
{
	static char buf[1 << 16];
	size_t n = 0, wl = strlen(what);
	for (;;) {
		ssize_t g = recv(fd, buf + n, sizeof buf - 1 - n, 0);
		if (g <= 0)
			die("a connection closed before '%s'", what);
		n += (size_t)g;
		buf[n] = 0;
		for (char *l = buf; l < buf + n;) {
			char *nl = strchr(l, '\n');
			if (!nl)
				break;
			if (!strncmp(l, "ERR", 3))
				die("%.*s", (int)(nl - l), l);
			if (!strncmp(l, what, wl))
				return;
			l = nl + 1;
		}
		char *last = memrchr(buf, '\n', n);
		if (last) { /* keep only the unfinished line */
			size_t k = n - (size_t)(last + 1 - buf);
			memmove(buf, last + 1, k);
			n = k;
		}
		if (n == sizeof buf - 1)
			n = 0;
	}
}

/* Writes the events of the cameras with c % 3 == node (node < 0: all)
 * over TCP, then syncs. */
static uint64_t load(unsigned port, int node)
{
	size_t cap = 1 << 20, n = 0;
	char *b = malloc(cap);
	int fd = connect_to(port);
	uint64_t events = 0;
	for (unsigned d = 0; d < days; d++)
		for (unsigned c = 0; c < cameras; c++) {
			if (node >= 0 && c % 3 != (unsigned)node)
				continue;
			for (unsigned m = 0; m < 1440; m++) {
				int64_t t = T0 + (int64_t)d * DAY + (int64_t)m * 60 * SEC +
					    (int64_t)(c * 7919 % 60000) * 1000000;
				n += (size_t)sprintf(
					b + n, "traffic,camera=KV%05u speed=%u.%u %" PRId64 "\n", c,
					40 + (c * 31 + m * 17) % 110, m % 10, t);
				events++;
				if (n > cap - 256) {
					send_all(fd, b, n);
					n = 0;
				}
			}
		}
	send_all(fd, b, n);
	send_all(fd, "#!sync\n", 7);
	read_until(fd, "OK sync");
	close(fd);
	free(b);
	return events;
}

typedef struct node {
	pid_t pid;
	unsigned port, http;
	char dir[64];
} node;

static void start(node *nd, const char *tallyd, unsigned port, const char *peers)
{
	snprintf(nd->dir, sizeof nd->dir, "/tmp/tally-bench-fanout-XXXXXX");
	if (!mkdtemp(nd->dir))
		die("mkdtemp: %s", strerror(errno));
	char data[128], pf[128], hpf[128], ps[16];
	snprintf(data, sizeof data, "%s/data", nd->dir);
	snprintf(pf, sizeof pf, "%s/port", nd->dir);
	snprintf(hpf, sizeof hpf, "%s/http-port", nd->dir);
	snprintf(ps, sizeof ps, "%u", port);
	pid_t pid = fork();
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		const char *argv[] = {tallyd, "--data",
				      data,   "--port",
				      ps,     "--port-file",
				      pf,     "--http-port",
				      "0",    "--http-port-file",
				      hpf,    "--log-level",
				      "warn", "--prefault",
				      "off",  NULL,
				      NULL,   NULL,
				      NULL,   NULL,
				      NULL};
		int k = 15;
		if (dist_min) {
			argv[k++] = "--distributions";
			argv[k++] = "traffic.speed:0.1";
		}
		if (peers) {
			argv[k++] = "--peers";
			argv[k++] = peers;
		}
		execv(tallyd, (char *const *)argv); /* argv[k] is NULL */
		_exit(127);
	}
	nd->pid = pid;
	nd->port = read_port(pf, pid);
	nd->http = read_port(hpf, pid);
}

static void stop(node *nd)
{
	kill(nd->pid, SIGTERM);
	int st;
	waitpid(nd->pid, &st, 0);
	nftw(nd->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* A port free a moment ago (the nodes must know each other's first). */
static unsigned free_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	if (bind(fd, (struct sockaddr *)&a, sizeof a))
		die("bind: %s", strerror(errno));
	socklen_t n = sizeof a;
	getsockname(fd, (struct sockaddr *)&a, &n);
	close(fd);
	return ntohs(a.sin_port);
}

/* One query and its whole answer over TCP (to END) or HTTP (by its
 * Content-Length): the round trip in seconds; *out, *len the answer's
 * body. */
static double roundtrip(int fd, int http, const char *q, size_t qn, char *buf, size_t cap,
			const char **out, size_t *len)
{
	size_t have = 0, hl = 0, cl = 0;
	double t = now_s();
	send_all(fd, q, qn);
	if (!http) {
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
			if (!strncmp(buf, "ERR", 3))
				die("TCP: %.*s", (int)have, buf);
		}
		*out = buf;
		*len = have;
	} else {
		int st = http_answer(fd, buf, cap, &have, &hl, &cl);
		if (st != 200)
			die("%.*s answered %d: %.*s", (int)qn, q, st, (int)cl, buf + hl);
		*out = buf + hl;
		*len = cl;
	}
	return now_s() - t;
}

static long rows_of(int http, const char *p, size_t n)
{
	const char *needle = http ? "],[" : "\n";
	long rows = 0;
	for (const char *e = p + n; (p = memmem(p, (size_t)(e - p), needle, 3 - 2 * !http));
	     p += 3 - 2 * !http)
		rows++;
	return http ? rows + 1 : rows - 2; /* separators; the header and END */
}

/* One tallyd build's four tallyd: three naming each other, and one alone. */
typedef struct side {
	node nodes[3], one;
} side;

static void side_start(side *sd, const char *tallyd)
{
	unsigned ports[3];
	for (int i = 0; i < 3; i++)
		ports[i] = free_port();
	for (int i = 0; i < 3; i++) {
		char peers[64];
		snprintf(peers, sizeof peers, "127.0.0.1:%u,127.0.0.1:%u", ports[(i + 1) % 3],
			 ports[(i + 2) % 3]);
		start(&sd->nodes[i], tallyd, ports[i], peers);
	}
	start(&sd->one, tallyd, 0, NULL);
}

int main(int argc, char **argv)
{
	const char *tallyd = NULL, *tallyd_b = NULL;
	unsigned queries = 3000;
	static const struct option opts[] = {
		{"tallyd", required_argument, 0, 't'},  {"tallyd-b", required_argument, 0, 'b'},
		{"cameras", required_argument, 0, 'c'}, {"days", required_argument, 0, 'd'},
		{"queries", required_argument, 0, 'q'}, {"dist", required_argument, 0, 's'},
		{"help", no_argument, 0, 'h'},          {0, 0, 0, 0}};
	int ch;
	while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (ch) {
		case 't': tallyd = optarg; break;
		case 'b': tallyd_b = optarg; break;
		case 'c': cameras = (unsigned)atoi(optarg); break;
		case 'd': days = (unsigned)atoi(optarg); break;
		case 'q': queries = (unsigned)atoi(optarg); break;
		case 's': dist_min = (unsigned)atoi(optarg); break;
		default:
			printf("usage: bench_fanout [--tallyd PATH] [--tallyd-b PATH] [--cameras "
			       "N] "
			       "[--days N] [--queries N] [--dist MINUTES]\n");
			return ch == 'h' ? 0 : 2;
		}
	}
	if (cameras < 3 || cameras > 99999 || days < 1 || queries < 100 ||
	    (dist_min && 1440 % dist_min))
		die("--cameras 3..99999, --days >= 1, --queries >= 100, --dist a divisor of 1440");
	char def[4200];
	if (!tallyd)
		tallyd = tallyd_beside(def, sizeof def);
	/* sides: the build under test, and with --tallyd-b another one, timed
	 * in the same rounds (A/B in one run) */
	int ns = tallyd_b ? 2 : 1;
	const char *bin[2] = {tallyd, tallyd_b};
	side sd[2];
	uint64_t ev = 0;
	for (int s = 0; s < ns; s++) {
		side_start(&sd[s], bin[s]);
		ev = load(sd[s].one.port, -1);
		for (int i = 0; i < 3; i++)
			load(sd[s].nodes[i].port, i);
	}
	printf("bench_fanout: tallyd %s%s%s\n  wrote %" PRIu64
	       " events to the single node and the same spread over three "
	       "(camera c on node c %% 3): %u cameras x %u days, one a minute (not timed)\n",
	       tallyd, tallyd_b ? ", B: " : "", tallyd_b ? tallyd_b : "", ev, cameras, days);

	/* kinds, per side: TCP one, TCP fan, HTTP one, HTTP fan */
	static const char *const series_names[4] = {
		"TCP  #!series, one node holding everything",
		"TCP  #!series, across three nodes",
		"HTTP /api/v1/series, one node holding everything",
		"HTTP /api/v1/series, across three nodes",
	};
	static const char *const dist_names[4] = {
		"TCP  #!dist of a day, one node holding everything",
		"TCP  #!dist of a day, across three nodes",
		"HTTP /api/v1/dist with step, one node holding everything",
		"HTTP /api/v1/dist with step, across three nodes",
	};
	const char *const *names = dist_min ? dist_names : series_names;
	/* rows of an answer: a series' 288 windows; a dist's count, median
	 * and V85, or a row per window */
	long want_rows[2] = {dist_min ? 3 : 288, dist_min ? 1440 / dist_min : 288};
	int nk = 4 * ns, fd[8];
	for (int s = 0; s < ns; s++) {
		fd[4 * s + 0] = connect_to(sd[s].one.port);
		fd[4 * s + 1] = connect_to(sd[s].nodes[0].port);
		fd[4 * s + 2] = connect_to(sd[s].one.http);
		fd[4 * s + 3] = connect_to(sd[s].nodes[1].http);
	}
	size_t cap = 1 << 20;
	char *buf = malloc(cap), *first = malloc(cap), q[512];
	double *lat[8];
	for (int k = 0; k < nk; k++)
		lat[k] = malloc(queries * sizeof **lat);
	uint64_t seed = 42;
	unsigned warm = queries / 10;
	for (unsigned i = 0; i < warm + queries; i++) {
		unsigned cam = (unsigned)(rng_next(&seed) % cameras);
		int64_t day = T0 + (int64_t)(rng_next(&seed) % days) * DAY;
		for (int pair = 0; pair < 2; pair++) {
			int http = pair == 1;
			size_t qn;
			if (dist_min && http)
				qn = (size_t)sprintf(q,
						     "GET /api/v1/dist?table=traffic&field=speed"
						     "&key=KV%05u&step=%um&q=0.85&from=%" PRId64
						     "&to=%" PRId64 " HTTP/1.1\r\nHost: b\r\n\r\n",
						     cam, dist_min, day, day + DAY);
			else if (dist_min)
				qn = (size_t)sprintf(q,
						     "#!dist traffic speed KV%05u %" PRId64 " 1d\n",
						     cam, day);
			else if (http)
				qn = (size_t)sprintf(q,
						     "GET /api/v1/series?table=traffic&field=speed"
						     "&key=KV%05u&step=5m&from=%" PRId64
						     "&to=%" PRId64 " HTTP/1.1\r\nHost: b\r\n\r\n",
						     cam, day, day + DAY);
			else
				qn = (size_t)sprintf(
					q, "#!series traffic speed KV%05u 5m %" PRId64 " 1d\n", cam,
					day);
			/* one node, then the cluster, of each side, starting at
			 * another one each round: none always goes first */
			int m = 2 * ns;
			for (int t = 0; t < m; t++) {
				int u = (int)((i + (unsigned)t) % (unsigned)m), s = u / 2,
				    one_or_fan = u % 2, k = 4 * s + 2 * pair + one_or_fan;
				const char *out;
				size_t len;
				double dt = roundtrip(fd[k], http, q, qn, buf, cap, &out, &len);
				if (i >= warm)
					lat[k][i - warm] = dt;
				if (i > 0)
					continue;
				long rows = rows_of(http, out, len);
				if (rows != want_rows[http])
					die("%s: %ld rows, not %ld", names[k % 4], rows,
					    want_rows[http]);
				if (t == 0) {
					memcpy(first, out, len);
					first[len] = 0;
				} else if (len != strlen(first) || memcmp(first, out, len)) {
					die("%s: the answer differs from one node's:\n%.*s\nvs\n%s",
					    names[k % 4], (int)len, out, first);
				}
			}
		}
	}
	printf("\nRound trips, one request at a time, interleaved (%u each, after %u "
	       "warm-up)\n",
	       queries, warm);
	double p50[8];
	for (int k = 0; k < nk; k++) {
		qsort(lat[k], queries, sizeof *lat[k], cmp_d);
		p50[k] = lat[k][queries / 2];
		printf("  %s%-50s p50 %7.1f us  p99 %7.1f us\n",
		       ns == 1 ? ""
		       : k < 4 ? "A "
			       : "B ",
		       names[k % 4], p50[k] * 1e6, lat[k][queries * 99 / 100] * 1e6);
	}
	for (int s = 0; s < ns; s++)
		printf("  %sfan-out p50 / one node's: TCP %.2fx, HTTP %.2fx (target: within 3x)\n",
		       ns == 1  ? ""
		       : s == 0 ? "A "
				: "B ",
		       p50[4 * s + 1] / p50[4 * s], p50[4 * s + 3] / p50[4 * s + 2]);
	for (int k = 0; k < nk; k++) {
		close(fd[k]);
		free(lat[k]);
	}
	for (int s = 0; s < ns; s++) {
		for (int i = 0; i < 3; i++)
			stop(&sd[s].nodes[i]);
		stop(&sd[s].one);
	}
	free(buf);
	free(first);
	return 0;
}
