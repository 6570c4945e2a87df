/*
 * bench_kafka.c — tallyd consuming Kafka: events per second consumed
 * durably, and the end-to-end lag from produce to queryable.
 *
 * The brokers are librdkafka's mock cluster in this process (real Kafka
 * protocol on 127.0.0.1; no Kafka installation needed), so the figures
 * include the broker's work on the same cores. Two phases, each with its
 * own tallyd and data directory:
 *
 *  1. Backlog: --messages messages of --lines events each (line protocol,
 *     or with --json the cameras' JSON events) are produced before tallyd
 *     starts; the clock runs from the moment the group has assigned every
 *     partition until every event is written and a #!sync has returned
 *     (durable). Figure: events/s.
 *  2. Lag: messages are produced at --rate events/s for --seconds while
 *     #!stats is read every millisecond; a message's lag is the time from its
 *     send to the first #!stats whose kafka_offset row for its partition
 *     has passed it (written and queryable; durable follows within
 *     sync-interval). Not back to back: a #!stats answer costs tallyd
 *     CPU the consumers need. Figures: p50, p99, max.
 *
 *   ./build/bench/bench_kafka --messages 300 --lines 1000
 *   ./build/bench/bench_kafka --json --messages 300
 *   ./build/bench/bench_kafka --phases backlog   (one phase: for perf)
 */
#include <errno.h>
#include <ftw.h>
#include <getopt.h>
#include <inttypes.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <netinet/in.h>
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

#define TOPIC "events"

static int json, partitions = 6;
static const char *phases = "backlog,lag"; /* --phases */
static unsigned lines = 1000;

static _Noreturn void fail(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "bench_kafka: ");
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(1);
}

static double now_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* ---------------------------------------------------------------- messages */

/* Message i: lines events of camera i % 1000, one second apart. */
static size_t make_message(char *buf, size_t cap, uint64_t i)
{
	size_t n = 0;
	unsigned cam = (unsigned)(i % 1000);
	for (unsigned j = 0; j < lines && n + 160 < cap; j++) {
		uint64_t e = i * lines + j, ts = 1700000000 + e;
		if (json) {
			time_t t = (time_t)ts;
			struct tm tm;
			gmtime_r(&t, &tm);
			char iso[32];
			strftime(iso, sizeof iso, "%Y-%m-%dT%H:%M:%SZ", &tm);
			n += (size_t)snprintf(buf + n, cap - n,
					      "{\"kvfv_id\":\"KV%05u\",\"timestamp\":\"%s\","
					      "\"vehicle_speed\":%u.%u}\n",
					      cam, iso, (unsigned)(e % 140), (unsigned)(e % 10));
		} else {
			n += (size_t)snprintf(buf + n, cap - n,
					      "traffic,camera=KV%05u speed=%u.%u %" PRIu64
					      "000000000\n",
					      cam, (unsigned)(e % 140), (unsigned)(e % 10), ts);
		}
	}
	return n;
}

typedef struct sent {
	double at;
	int32_t partition;
	int64_t offset;
} sent;

static sent *sents;
static size_t n_sents;

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
	(void)rk;
	(void)opaque;
	if (m->err)
		fail("produce: %s", rd_kafka_err2str(m->err));
	if (sents && m->_private) {
		sent *s = m->_private;
		s->partition = m->partition;
		s->offset = m->offset;
	}
}

static rd_kafka_t *producer(const char *brokers)
{
	char err[256];
	rd_kafka_conf_t *c = rd_kafka_conf_new();
	const char *kv[][2] = {{"bootstrap.servers", brokers},
			       {"linger.ms", "5"},
			       {"batch.size", "4000000"},
			       {"message.max.bytes", "8000000"},
			       {"queue.buffering.max.kbytes", "1048576"}};
	for (size_t i = 0; i < sizeof kv / sizeof kv[0]; i++)
		if (rd_kafka_conf_set(c, kv[i][0], kv[i][1], err, sizeof err))
			fail("%s: %s", kv[i][0], err);
	rd_kafka_conf_set_dr_msg_cb(c, on_delivery);
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, sizeof err);
	if (!rk)
		fail("producer: %s", err);
	return rk;
}

static void produce(rd_kafka_t *p, const char *buf, size_t n, uint64_t i, void *opaque)
{
	char key[16];
	snprintf(key, sizeof key, "KV%05u", (unsigned)(i % 1000));
	for (;;) {
		rd_kafka_resp_err_t e = rd_kafka_producev(
			p, RD_KAFKA_V_TOPIC(TOPIC), RD_KAFKA_V_VALUE((void *)buf, n),
			RD_KAFKA_V_KEY(key, strlen(key)), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
			RD_KAFKA_V_OPAQUE(opaque), RD_KAFKA_V_END);
		if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
			if (e)
				fail("produce: %s", rd_kafka_err2str(e));
			return;
		}
		rd_kafka_poll(p, 10);
	}
}

/* ---------------------------------------------------------------- tallyd */

typedef struct node {
	pid_t pid;
	int fd; /* a line-protocol connection kept open for #!stats */
	char dir[64];
	char *in;
	size_t in_cap;
} node;

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb, (void)flag, (void)ftw;
	return remove(p);
}

static void node_start(node *nd, const char *tallyd, const char *brokers)
{
	snprintf(nd->dir, sizeof nd->dir, "/tmp/bench-kafka-XXXXXX");
	if (!mkdtemp(nd->dir))
		fail("mkdtemp: %s", strerror(errno));
	char data[96], pf[96];
	snprintf(data, sizeof data, "%s/data", nd->dir);
	snprintf(pf, sizeof pf, "%s/port", nd->dir);
	if ((nd->pid = fork()) == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		execl(tallyd, tallyd, "--data", data, "--port", "0", "--port-file", pf,
		      "--http-port", "off", "--log-level", "warn", "--kafka-brokers", brokers,
		      "--kafka-topics", TOPIC, "--kafka-format", json ? "json" : "lp",
		      "--kafka-handover-wait", "0", "--kafka-option", "fetch.max.bytes=67108864",
		      "--kafka-option", "max.partition.fetch.bytes=16777216", "--kafka-option",
		      "fetch.wait.max.ms=10", (char *)NULL);
		_exit(127);
	}
	unsigned port = 0;
	for (double until = now_s() + 30; !port; usleep(5000)) {
		FILE *f = fopen(pf, "r");
		if (f) {
			if (fscanf(f, "%u", &port) != 1)
				port = 0;
			fclose(f);
		}
		if (now_s() > until || waitpid(nd->pid, NULL, WNOHANG) == nd->pid)
			fail("tallyd did not start");
	}
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	nd->fd = socket(AF_INET, SOCK_STREAM, 0);
	if (connect(nd->fd, (struct sockaddr *)&a, sizeof a))
		fail("connect: %s", strerror(errno));
	nd->in_cap = 1 << 16;
	nd->in = malloc(nd->in_cap);
}

/* Sends cmd and reads its answer up to a line starting with end. */
static const char *node_ask(node *nd, const char *cmd, const char *end)
{
	size_t n = strlen(cmd), k = 0;
	if (send(nd->fd, cmd, n, MSG_NOSIGNAL) != (ssize_t)n)
		fail("send: %s", strerror(errno));
	for (;;) {
		if (k + 1 == nd->in_cap)
			nd->in = realloc(nd->in, nd->in_cap *= 2);
		ssize_t g = recv(nd->fd, nd->in + k, nd->in_cap - 1 - k, 0);
		if (g <= 0)
			fail("tallyd closed the connection");
		k += (size_t)g;
		nd->in[k] = 0;
		const char *e = k >= 2 ? strstr(nd->in, end) : NULL;
		if (e && (e == nd->in || e[-1] == '\n') && strchr(e, '\n'))
			return nd->in;
	}
}

static uint64_t row(const char *stats, const char *name)
{
	char key[96];
	snprintf(key, sizeof key, "\n%s\t", name);
	const char *p = strstr(stats, key);
	return p ? strtoull(p + strlen(key), NULL, 10) : 0;
}

static void node_stop(node *nd)
{
	close(nd->fd);
	kill(nd->pid, SIGTERM);
	waitpid(nd->pid, NULL, 0);
	nftw(nd->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	free(nd->in);
}

/* ---------------------------------------------------------------- phases */

static void backlog(const char *tallyd, const char *brokers, uint64_t messages)
{
	rd_kafka_t *p = producer(brokers);
	char *buf = malloc((size_t)lines * 160 + 1);
	size_t bytes = 0;
	for (uint64_t i = 0; i < messages; i++) {
		size_t n = make_message(buf, (size_t)lines * 160 + 1, i);
		bytes += n;
		produce(p, buf, n, i, NULL);
		rd_kafka_poll(p, 0);
	}
	rd_kafka_flush(p, 600000);
	rd_kafka_destroy(p);
	free(buf);
	uint64_t events = messages * lines;
	node nd;
	node_start(&nd, tallyd, brokers);
	double t0 = 0, give_up = now_s() + 600;
	for (;;) {
		const char *st = node_ask(&nd, "#!stats\n", "END ");
		if (!t0 && row(st, "kafka_partitions") == (uint64_t)partitions)
			t0 = now_s();
		if (row(st, "kafka_events") >= events)
			break;
		if (now_s() > give_up)
			fail("after 600 s tallyd wrote %" PRIu64 " of %" PRIu64 " events",
			     row(st, "kafka_events"), events);
		usleep(2000);
	}
	double t1 = now_s();
	node_ask(&nd, "#!sync\n", "OK sync");
	double t2 = now_s();
	printf("backlog %s: %" PRIu64 " messages of %u %s (%.1f MiB): %.2f M events/s durable "
	       "(%.2f s from assignment to synced; written at %.2f M events/s)\n",
	       json ? "json" : "lp", messages, lines, json ? "JSON events" : "line-protocol lines",
	       (double)bytes / 1048576, (double)events / (t2 - t0) / 1e6, t2 - t0,
	       (double)events / (t1 - t0) / 1e6);
	fflush(stdout);
	node_stop(&nd);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static void lag(const char *tallyd, const char *brokers, double rate, double seconds)
{
	node nd;
	node_start(&nd, tallyd, brokers);
	for (double give_up = now_s() + 600;;) { /* phase 1's backlog is read first */
		const char *st = node_ask(&nd, "#!stats\n", "END ");
		if (row(st, "kafka_partitions") == (uint64_t)partitions &&
		    row(st, "kafka_lag") == 0)
			break;
		if (now_s() > give_up)
			fail("after 600 s tallyd still lags by %" PRIu64 " messages",
			     row(st, "kafka_lag"));
		usleep(20000);
	}
	rd_kafka_t *p = producer(brokers);
	double per_msg = (double)lines / rate;
	size_t cap = (size_t)(seconds / per_msg) + 1;
	sents = calloc(cap, sizeof *sents);
	double *seen = malloc(cap * sizeof *seen);
	char *buf = malloc((size_t)lines * 160 + 1);
	int64_t written[64];
	double t0 = now_s();
	size_t next_check = 0;
	while (n_sents < cap || next_check < n_sents) {
		double now = now_s();
		if (n_sents < cap && now >= t0 + (double)n_sents * per_msg) {
			sent *s = &sents[n_sents];
			s->offset = -1;
			s->at = now;
			size_t n = make_message(buf, (size_t)lines * 160 + 1, n_sents);
			produce(p, buf, n, n_sents++, s);
		}
		rd_kafka_poll(p, 0);
		const char *st = node_ask(&nd, "#!stats\n", "END ");
		double at = now_s();
		for (int q = 0; q < partitions && q < 64; q++) {
			char name[64];
			snprintf(name, sizeof name, "kafka_offset:" TOPIC "/%d", q);
			written[q] = (int64_t)row(st, name);
		}
		while (next_check < n_sents && sents[next_check].offset >= 0 &&
		       written[sents[next_check].partition] > sents[next_check].offset) {
			seen[next_check] = at - sents[next_check].at;
			next_check++;
		}
		/* later messages may be seen first (other partitions): the
		 * lag is taken in order, an upper bound for them */
		if (at - t0 > seconds + 60)
			fail("lag phase did not finish");
		/* #!stats costs tallyd a shard's CPU (every counter, every
		 * table's keys): asked back to back it took a core of the two
		 * from the consumers whose lag it measures. 1 ms apart, the
		 * lag is still read to the millisecond. */
		usleep(1000);
	}
	qsort(seen, n_sents, sizeof *seen, cmp_double);
	printf("lag %s at %.2f M events/s for %.0f s (%zu messages): produce to queryable p50 "
	       "%.1f ms, p99 %.1f ms, max %.1f ms\n",
	       json ? "json" : "lp", rate / 1e6, seconds, n_sents, seen[n_sents / 2] * 1e3,
	       seen[n_sents * 99 / 100] * 1e3, seen[n_sents - 1] * 1e3);
	rd_kafka_flush(p, 60000);
	rd_kafka_destroy(p);
	node_stop(&nd);
	free(sents);
	sents = NULL;
	free(seen);
	free(buf);
}

int main(int argc, char **argv)
{
	const char *tallyd = "./build/wire/tallyd";
	uint64_t messages = 300;
	double rate = 1e6, seconds = 10;
	static const struct option opts[] = {
		{"tallyd", required_argument, 0, 't'}, {"messages", required_argument, 0, 'm'},
		{"lines", required_argument, 0, 'l'},  {"partitions", required_argument, 0, 'p'},
		{"rate", required_argument, 0, 'r'},   {"seconds", required_argument, 0, 's'},
		{"json", no_argument, 0, 'j'},         {"phases", required_argument, 0, 'P'},
		{"help", no_argument, 0, 'h'},         {0, 0, 0, 0}};
	int ch;
	while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (ch) {
		case 't': tallyd = optarg; break;
		case 'm': messages = strtoull(optarg, NULL, 10); break;
		case 'l': lines = (unsigned)atoi(optarg); break;
		case 'p': partitions = atoi(optarg); break;
		case 'r': rate = atof(optarg); break;
		case 's': seconds = atof(optarg); break;
		case 'j': json = 1; break;
		case 'P': phases = optarg; break;
		default:
			printf("usage: bench_kafka [--tallyd PATH] [--messages N] [--lines N] "
			       "[--partitions N] [--rate EVENTS/S] [--seconds S] [--json] "
			       "[--phases backlog,lag]\n");
			return ch == 'h' ? 0 : 2;
		}
	}
	if (lines == 0 || partitions < 1 || partitions > 64 || rate <= 0)
		fail("bad arguments");
	char err[256];
	rd_kafka_conf_t *c = rd_kafka_conf_new();
	rd_kafka_conf_set(c, "log_level", "2", NULL, 0);
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, sizeof err);
	rd_kafka_mock_cluster_t *mc = rk ? rd_kafka_mock_cluster_new(rk, 1) : NULL;
	if (!mc)
		fail("mock cluster: %s", err);
	if (rd_kafka_mock_topic_create(mc, TOPIC, partitions, 1))
		fail("topic");
	char brokers[128];
	snprintf(brokers, sizeof brokers, "%s", rd_kafka_mock_cluster_bootstraps(mc));
	printf("tallyd consuming Kafka (librdkafka's mock broker in this process, %d partitions; "
	       "the machine is shared)\n",
	       partitions);
	if (strstr(phases, "backlog"))
		backlog(tallyd, brokers, messages);
	if (strstr(phases, "lag"))
		lag(tallyd, brokers, rate, seconds);
	rd_kafka_mock_cluster_destroy(mc);
	rd_kafka_destroy(rk);
	return 0;
}
