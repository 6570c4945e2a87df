/*
 * bench_kafka.c — tallyd consuming Kafka: events per second consumed
 * durably, and the end-to-end lag from produce to queryable.
 *
 * The brokers are librdkafka's mock cluster in this process (real Kafka
 * protocol on 127.0.0.1; no Kafka installation needed), so the figures
 * include the broker's work on the same cores. The one idea: every
 * figure is taken beside the ones it is compared with. A backlog is
 * produced once; then, round after round, tallyd (--tallyd, and
 * --tallyd-b when given: an A/B pair of binaries) and a plain librdkafka
 * consumer that throws what it reads away (the ceiling: broker, fetch
 * and nothing else) each read all of it, in an order that rotates, every
 * reader in a consumer group of its own.
 *
 *  1. Backlog: --messages messages of --lines events each (line protocol,
 *     or with --json the cameras' JSON events), produced before any reader
 *     starts. tallyd's clock runs from the moment its group has assigned
 *     it a partition until every event is written and a #!sync has
 *     returned (durable); "steady" is the rate after tallyd's start-up
 *     prefault (memtable memory faulted in by a thread of its own) is done.
 *     The mock broker keeps about 5 MiB a partition and drops older
 *     message sets, so the backlog is checked to be whole before reading.
 *  2. Lag: messages are produced at --rate events/s for --seconds, into a
 *     topic of their own per run, while #!stats is read every millisecond;
 *     a message's lag is the time from its send to the first #!stats whose
 *     kafka_offset row for its partition has passed it (written and
 *     queryable; durable follows within sync-interval). Not back to back:
 *     a #!stats answer costs tallyd CPU the consumers need. Lags are taken
 *     in send order, so one stalled message holds back the figure of every
 *     message sent during its stall: at 200 messages/s for 4 s the p99 is
 *     the worst stall less about 40 ms, one event per run. Figures: p50,
 *     p99, max; the p99 of each message's lag by itself (from its send to
 *     the first #!stats past it, however long earlier ones took: one stall
 *     then moves it only when it holds 1% of the messages) and when the
 *     message of the longest one was sent (where in the run the worst
 *     stall fell: always the first 20 ms, the producer's and consumer's
 *     start), and the p99 of the own lags of the messages sent after the
 *     first second (steady state); messages per batch (kafka_messages /
 *     kafka_batches: how many messages shared a WAL record and label).
 *
 *   ./build/bench/bench_kafka --messages 300 --lines 1000
 *   ./build/bench/bench_kafka --json --messages 300
 *   ./build/bench/bench_kafka --tallyd OLD --tallyd-b NEW --runs 5 \
 *       --partitions 48 --messages 3600 --phases backlog,ceiling,lag
 *   ./build/bench/bench_kafka --phases backlog   (one phase: for perf)
 *   ./build/bench/bench_kafka --compression-b lz4 --runs 5 --phases backlog
 *       (one tallyd, A reading the backlog as it is, B the same messages
 *       in lz4 message sets, as producers send them)
 */
#include <errno.h>
#include <ftw.h>
#include <getopt.h>
#include <inttypes.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
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
#include "benchutil.h"

#define TOPIC   "events"
#define TOPIC_B "events-b" /* reader B's backlog, with --compression-b */

static int json, partitions = 6;
static const char *phases = "backlog,lag"; /* --phases: backlog, ceiling, lag */
static unsigned lines = 1000;
static rd_kafka_mock_cluster_t *mock;
static const char *batch_bytes; /* --batch-bytes: tallyd's kafka-batch-bytes */
/* --compression, --compression-b: the producer's codec of the backlog,
 * and of a second backlog, the same messages, that reader B reads */
static const char *codec_a = "none", *codec_b;

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
		die("produce: %s", rd_kafka_err2str(m->err));
	if (sents && m->_private) {
		sent *s = m->_private;
		s->partition = m->partition;
		s->offset = m->offset;
	}
}

/* codec: compression.codec of the producer's message sets (none, lz4,
 * zstd...): the broker keeps and serves them as they came, so a consumer
 * fetches fewer bytes and decompresses them. */
static rd_kafka_t *producer(const char *brokers, const char *codec)
{
	char err[256];
	rd_kafka_conf_t *c = rd_kafka_conf_new();
	const char *kv[][2] = {
		{"bootstrap.servers", brokers},   {"linger.ms", "5"},
		{"batch.size", "1000000"}, /* the mock drops whole sets */
		{"message.max.bytes", "8000000"}, {"queue.buffering.max.kbytes", "1048576"},
		{"compression.codec", codec}};
	for (size_t i = 0; i < sizeof kv / sizeof kv[0]; i++)
		if (rd_kafka_conf_set(c, kv[i][0], kv[i][1], err, sizeof err))
			die("%s: %s", kv[i][0], err);
	rd_kafka_conf_set_dr_msg_cb(c, on_delivery);
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, sizeof err);
	if (!rk)
		die("producer: %s", err);
	return rk;
}

static void produce(rd_kafka_t *p, const char *topic, const char *buf, size_t n, uint64_t i,
		    void *opaque)
{
	char key[16];
	snprintf(key, sizeof key, "KV%05u", (unsigned)(i % 1000));
	for (;;) {
		rd_kafka_resp_err_t e = rd_kafka_producev(
			p, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_VALUE((void *)buf, n),
			RD_KAFKA_V_KEY(key, strlen(key)), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
			RD_KAFKA_V_OPAQUE(opaque), RD_KAFKA_V_END);
		if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
			if (e)
				die("produce: %s", rd_kafka_err2str(e));
			return;
		}
		rd_kafka_poll(p, 10);
	}
}

/* The 1-minute load average, for every figure printed. */
static double load(void)
{
	double l[1];
	return getloadavg(l, 1) == 1 ? l[0] : -1;
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

static void node_start(node *nd, const char *tallyd, const char *brokers, const char *topic,
		       const char *group)
{
	snprintf(nd->dir, sizeof nd->dir, "/tmp/bench-kafka-XXXXXX");
	if (!mkdtemp(nd->dir))
		die("mkdtemp: %s", strerror(errno));
	char data[96], pf[96];
	snprintf(data, sizeof data, "%s/data", nd->dir);
	snprintf(pf, sizeof pf, "%s/port", nd->dir);
	if ((nd->pid = fork()) == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		/* execl stops at the first NULL: --batch-bytes is the last pair */
		execl(tallyd, tallyd, "--data", data, "--port", "0", "--port-file", pf,
		      "--http-port", "off", "--log-level", "warn", "--kafka-brokers", brokers,
		      "--kafka-topics", topic, "--kafka-group", group, "--kafka-format",
		      json ? "json" : "lp", "--kafka-handover-wait", "0", "--kafka-option",
		      "fetch.max.bytes=67108864", "--kafka-option",
		      "max.partition.fetch.bytes=16777216", "--kafka-option",
		      "fetch.wait.max.ms=10", batch_bytes ? "--kafka-batch-bytes" : NULL,
		      batch_bytes, (char *)NULL);
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
			die("%s did not start", tallyd);
	}
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	nd->fd = socket(AF_INET, SOCK_STREAM, 0);
	if (connect(nd->fd, (struct sockaddr *)&a, sizeof a))
		die("connect: %s", strerror(errno));
	nd->in_cap = 1 << 16;
	nd->in = malloc(nd->in_cap);
}

static const char *node_ask(node *nd, const char *cmd, const char *end)
{
	size_t n = strlen(cmd), k = 0;
	if (send(nd->fd, cmd, n, MSG_NOSIGNAL) != (ssize_t)n)
		die("send: %s", strerror(errno));
	for (;;) {
		if (k + 1 == nd->in_cap)
			nd->in = realloc(nd->in, nd->in_cap *= 2);
		ssize_t g = recv(nd->fd, nd->in + k, nd->in_cap - 1 - k, 0);
		if (g <= 0)
			die("tallyd closed the connection");
		k += (size_t)g;
		nd->in[k] = 0;
		const char *e = k >= 2 ? strstr(nd->in, end) : NULL;
		if (e && (e == nd->in || e[-1] == '\n') && strchr(e, '\n'))
			return nd->in;
	}
}

static uint64_t row(const char *stats, const char *name)
{
	char key[160];
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

/* ---------------------------------------------------------------- backlog */

/* Produces the backlog (once for every reader); its size in bytes. Fails
 * when the mock broker dropped any of it. */
static size_t produce_backlog(const char *brokers, const char *topic, const char *codec,
			      uint64_t messages)
{
	rd_kafka_t *p = producer(brokers, codec);
	char *buf = malloc((size_t)lines * 160 + 1);
	size_t bytes = 0;
	for (uint64_t i = 0; i < messages; i++) {
		size_t n = make_message(buf, (size_t)lines * 160 + 1, i);
		bytes += n;
		produce(p, topic, buf, n, i, NULL);
		rd_kafka_poll(p, 0);
	}
	rd_kafka_flush(p, 600000);
	int64_t held = 0;
	for (int q = 0; q < partitions; q++) {
		int64_t lo = 0, hi = 0;
		rd_kafka_resp_err_t e =
			rd_kafka_query_watermark_offsets(p, topic, q, &lo, &hi, 10000);
		if (e)
			die("watermarks of partition %d: %s", q, rd_kafka_err2str(e));
		if (lo)
			die("the mock broker dropped the first %" PRId64 " messages of partition "
			    "%d (it keeps about 5 MiB a partition): give more --partitions or "
			    "fewer --messages",
			    lo, q);
		held += hi;
	}
	if (held != (int64_t)messages)
		die("the topic holds %" PRId64 " messages, not %" PRIu64, held, messages);
	rd_kafka_destroy(p);
	free(buf);
	return bytes;
}

/* tallyd reads the backlog in consumer group `group`: events/s durable
 * from its first assignment to synced; *steady: the rate from the end of tallyd's
 * start-up prefault to synced (0 when the prefault outlasted the read);
 * *cpu: tallyd's CPU seconds (user + system, every thread, the prefault's
 * too) from assignment to synced, per million events: steadier than the
 * rate while neighbours take the cores. */
static double tallyd_backlog(const char *tallyd, const char *brokers, const char *topic,
			     const char *group, uint64_t messages, double *steady, double *cpu,
			     int *rejoined)
{
	double cpu0 = 0;
	uint64_t events = messages * lines, at_prefaulted = 0;
	node nd;
	node_start(&nd, tallyd, brokers, topic, group);
	double t0 = 0, tp = 0, give_up = now_s() + 600;
	for (;;) {
		const char *st = node_ask(&nd, "#!stats\n", "END ");
		double now = now_s();
		uint64_t got = row(st, "kafka_events");
		/* from its first assignment: a second consumer joining later
		 * moves partitions after the first has read some of them */
		if (!t0 && row(st, "kafka_partitions") > 0) {
			t0 = now;
			cpu0 = ab_proc_cpu_s(nd.pid);
		}
		if (t0 && !tp && row(st, "prefault_pending") == 0) {
			tp = now;
			at_prefaulted = got;
		}
		if (got >= events)
			break;
		if (now > give_up)
			die("after 600 s tallyd wrote %" PRIu64 " of %" PRIu64 " events", got,
			    events);
		/* each #!stats answer costs the shard thread a walk of every
		 * counter and key (perf: the shard thread answering them took
		 * 199 of tallyd's ~900 samples when asked every 2 ms); 10 ms
		 * apart is still 0.5% of a 2 s read */
		usleep(10000);
	}
	node_ask(&nd, "#!sync\n", "OK sync");
	double t2 = now_s();
	/* one assignment per consumer is a clean join; more means a member
	 * joined again (the mock coordinator's refused SyncGroup,
	 * docs/cluster.md "Group joins") and the round holds that wait */
	const char *st = node_ask(&nd, "#!stats\n", "END ");
	*rejoined = row(st, "kafka_rebalances") > row(st, "shards");
	*cpu = (ab_proc_cpu_s(nd.pid) - cpu0) / ((double)events / 1e6);
	node_stop(&nd);
	*steady = tp && at_prefaulted < events ? (double)(events - at_prefaulted) / (t2 - tp) : 0;
	return (double)events / (t2 - t0);
}

/* The ceiling: librdkafka consumers with tallyd's fetch settings, one per
 * core as tallyd has, reading the backlog and throwing it away. Each is
 * given its share of the partitions (partition % n) by rd_kafka_assign,
 * not by a group. The clock starts once every consumer is connected (a
 * metadata request answered) and they are assigned, as tallyd's starts at
 * its assignment: no start-up, join or rebalance in it. (Not at the
 * first message: librdkafka hands out none before its first fetch
 * answer, which may hold the whole backlog.) */
typedef struct ceil_thr {
	pthread_t thr;
	const char *brokers;
	int i, n;
	uint64_t want;
	_Atomic uint64_t *got;
	pthread_barrier_t *ready; /* every consumer connected */
} ceil_thr;

static void *ceil_main(void *arg)
{
	ceil_thr *t = arg;
	char err[256];
	rd_kafka_conf_t *c = rd_kafka_conf_new();
	const char *kv[][2] = {
		{"bootstrap.servers", t->brokers},         {"group.id", "ceiling"},
		{"enable.auto.commit", "false"},           {"fetch.max.bytes", "67108864"},
		{"max.partition.fetch.bytes", "16777216"}, {"fetch.wait.max.ms", "10"}};
	for (size_t i = 0; i < sizeof kv / sizeof kv[0]; i++)
		if (rd_kafka_conf_set(c, kv[i][0], kv[i][1], err, sizeof err))
			die("%s: %s", kv[i][0], err);
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, c, err, sizeof err);
	if (!rk)
		die("consumer: %s", err);
	rd_kafka_poll_set_consumer(rk);
	const struct rd_kafka_metadata *md = NULL;
	if (rd_kafka_metadata(rk, 0, NULL, &md, 10000))
		die("the ceiling's consumer did not connect");
	rd_kafka_metadata_destroy(md);
	pthread_barrier_wait(t->ready);
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(partitions);
	for (int q = t->i; q < partitions; q += t->n)
		rd_kafka_topic_partition_list_add(l, TOPIC, q)->offset = RD_KAFKA_OFFSET_BEGINNING;
	if (rd_kafka_assign(rk, l))
		die("assign");
	rd_kafka_topic_partition_list_destroy(l);
	for (double give_up = now_s() + 600; atomic_load(t->got) < t->want;) {
		rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
		if (m) {
			if (!m->err)
				atomic_fetch_add(t->got, 1);
			rd_kafka_message_destroy(m);
		}
		if (now_s() > give_up)
			die("the ceiling's consumers read %" PRIu64 " of %" PRIu64 " messages",
			    atomic_load(t->got), t->want);
	}
	rd_kafka_destroy(rk);
	return NULL;
}

static double ceiling(const char *brokers, uint64_t messages)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	if (n < 1 || n > 16)
		n = n < 1 ? 1 : 16;
	ceil_thr t[16];
	_Atomic uint64_t got = 0;
	pthread_barrier_t ready;
	pthread_barrier_init(&ready, NULL, (unsigned)n + 1);
	for (long i = 0; i < n; i++) {
		t[i] = (ceil_thr){.brokers = brokers,
				  .i = (int)i,
				  .n = (int)n,
				  .want = messages,
				  .got = &got,
				  .ready = &ready};
		if (pthread_create(&t[i].thr, NULL, ceil_main, &t[i]))
			die("pthread_create");
	}
	pthread_barrier_wait(&ready);
	double t0 = now_s();
	while (atomic_load(&got) < messages)
		usleep(1000);
	double t1 = now_s();
	for (long i = 0; i < n; i++)
		pthread_join(t[i].thr, NULL);
	pthread_barrier_destroy(&ready);
	return (double)(messages * lines) / (t1 - t0);
}

/* ---------------------------------------------------------------- lag */

/* tallyd reads a new topic that gets rate events/s for `seconds`: the
 * lag's p50, p99 and max in ms, the messages per batch tallyd wrote (how
 * many WAL records and labels the messages took), the p99 in ms of each
 * message's own lag, when (s after the first send) the message of the
 * longest own lag was sent, then the p99 in ms of the own lags of the
 * messages sent after the first second (steady: the longest lags are
 * the first messages', the producer's and consumer's start), into
 * out[7]. */
static void lag(const char *tallyd, const char *brokers, const char *topic, double rate,
		double seconds, double out[7])
{
	if (rd_kafka_mock_topic_create(mock, topic, partitions, 1))
		die("topic %s", topic);
	node nd;
	node_start(&nd, tallyd, brokers, topic, topic);
	for (double give_up = now_s() + 600;;) {
		const char *st = node_ask(&nd, "#!stats\n", "END ");
		if (row(st, "kafka_partitions") == (uint64_t)partitions &&
		    row(st, "prefault_pending") == 0)
			break;
		if (now_s() > give_up)
			die("after 600 s tallyd has not every partition");
		usleep(20000);
	}
	rd_kafka_t *p = producer(brokers, "none");
	double per_msg = (double)lines / rate;
	size_t cap = (size_t)(seconds / per_msg) + 1;
	n_sents = 0;
	sents = calloc(cap, sizeof *sents);
	double *seen = malloc(cap * sizeof *seen);
	/* own[i]: message i's lag by itself, not held back by earlier ones
	 * (< 0 until seen); all before own_from are seen */
	double *own = malloc(cap * sizeof *own);
	size_t own_from = 0;
	char *buf = malloc((size_t)lines * 160 + 1);
	int64_t written[64];
	uint64_t msgs = 0, batches = 0;
	double t0 = now_s();
	size_t next_check = 0;
	while (n_sents < cap || next_check < n_sents) {
		double now = now_s();
		if (n_sents < cap && now >= t0 + (double)n_sents * per_msg) {
			sent *s = &sents[n_sents];
			s->offset = -1;
			s->at = now;
			own[n_sents] = -1;
			size_t n = make_message(buf, (size_t)lines * 160 + 1, n_sents);
			produce(p, topic, buf, n, n_sents++, s);
		}
		rd_kafka_poll(p, 0);
		const char *st = node_ask(&nd, "#!stats\n", "END ");
		double at = now_s();
		msgs = row(st, "kafka_messages");
		batches = row(st, "kafka_batches");
		for (int q = 0; q < partitions && q < 64; q++) {
			char name[128];
			snprintf(name, sizeof name, "kafka_offset:%s/%d", topic, q);
			written[q] = (int64_t)row(st, name);
		}
		for (size_t i = own_from; i < n_sents; i++)
			if (own[i] < 0 && sents[i].offset >= 0 &&
			    written[sents[i].partition] > sents[i].offset)
				own[i] = at - sents[i].at;
		while (own_from < n_sents && own[own_from] >= 0)
			own_from++;
		while (next_check < n_sents && sents[next_check].offset >= 0 &&
		       written[sents[next_check].partition] > sents[next_check].offset) {
			seen[next_check] = at - sents[next_check].at;
			next_check++;
		}
		/* later messages may be seen first (other partitions): the
		 * lag is taken in order, an upper bound for them */
		if (at - t0 > seconds + 60)
			die("lag phase did not finish");
		/* #!stats costs tallyd a shard's CPU (every counter, every
		 * table's keys): asked back to back it took a core of the two
		 * from the consumers whose lag it measures. 1 ms apart, the
		 * lag is still read to the millisecond. */
		usleep(1000);
	}
	qsort(seen, n_sents, sizeof *seen, cmp_d);
	out[0] = seen[n_sents / 2] * 1e3;
	out[1] = seen[n_sents * 99 / 100] * 1e3;
	out[2] = seen[n_sents - 1] * 1e3;
	out[3] = batches ? (double)msgs / (double)batches : 0;
	size_t worst = 0;
	for (size_t i = 1; i < n_sents; i++)
		if (own[i] > own[worst])
			worst = i;
	out[5] = sents[worst].at - t0;
	size_t n_steady = 0;
	for (size_t i = 0; i < n_sents; i++)
		if (sents[i].at - t0 >= 1)
			seen[n_steady++] = own[i]; /* seen is sorted and read */
	qsort(seen, n_steady, sizeof *seen, cmp_d);
	out[6] = n_steady ? seen[n_steady * 99 / 100] * 1e3 : 0;
	qsort(own, n_sents, sizeof *own, cmp_d);
	out[4] = own[n_sents * 99 / 100] * 1e3;
	rd_kafka_flush(p, 60000);
	rd_kafka_destroy(p);
	node_stop(&nd);
	free(sents);
	sents = NULL;
	free(seen);
	free(own);
	free(buf);
}

/* ---------------------------------------------------------------- main */

#define RUNS_MAX 32

static double median(const double *v, int n)
{
	double s[RUNS_MAX];
	memcpy(s, v, (size_t)n * sizeof *s);
	qsort(s, (size_t)n, sizeof *s, cmp_d);
	return n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

int main(int argc, char **argv)
{
	const char *tallyd[2] = {"./build/wire/tallyd", NULL};
	uint64_t messages = 300;
	double rate = 1e6, seconds = 10;
	int runs = 1;
	static const struct option opts[] = {{"tallyd", required_argument, 0, 't'},
					     {"tallyd-b", required_argument, 0, 'b'},
					     {"runs", required_argument, 0, 'R'},
					     {"batch-bytes", required_argument, 0, 'B'},
					     {"messages", required_argument, 0, 'm'},
					     {"lines", required_argument, 0, 'l'},
					     {"partitions", required_argument, 0, 'p'},
					     {"rate", required_argument, 0, 'r'},
					     {"seconds", required_argument, 0, 's'},
					     {"json", no_argument, 0, 'j'},
					     {"phases", required_argument, 0, 'P'},
					     {"compression", required_argument, 0, 'c'},
					     {"compression-b", required_argument, 0, 'C'},
					     {"help", no_argument, 0, 'h'},
					     {0, 0, 0, 0}};
	int ch;
	while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (ch) {
		case 't': tallyd[0] = optarg; break;
		case 'b': tallyd[1] = optarg; break;
		case 'R': runs = atoi(optarg); break;
		case 'B': batch_bytes = optarg; break;
		case 'm': messages = strtoull(optarg, NULL, 10); break;
		case 'l': lines = (unsigned)atoi(optarg); break;
		case 'p': partitions = atoi(optarg); break;
		case 'r': rate = atof(optarg); break;
		case 's': seconds = atof(optarg); break;
		case 'j': json = 1; break;
		case 'P': phases = optarg; break;
		case 'c': codec_a = optarg; break;
		case 'C': codec_b = optarg; break;
		default:
			printf("usage: bench_kafka [--tallyd PATH] [--tallyd-b PATH] [--runs N] "
			       "[--messages N] [--lines N] [--partitions N] [--batch-bytes SIZE] "
			       "[--rate EVENTS/S] [--seconds S] [--json] "
			       "[--compression CODEC] [--compression-b CODEC] "
			       "[--phases backlog,ceiling,lag]\n");
			return ch == 'h' ? 0 : 2;
		}
	}
	if (lines == 0 || partitions < 1 || partitions > 64 || rate <= 0 || runs < 1 ||
	    runs > RUNS_MAX || !messages)
		die("bad arguments");
	char err[256];
	rd_kafka_conf_t *c = rd_kafka_conf_new();
	rd_kafka_conf_set(c, "log_level", "2", NULL, 0);
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, sizeof err);
	mock = rk ? rd_kafka_mock_cluster_new(rk, 1) : NULL;
	if (!mock)
		die("mock cluster: %s", err);
	if (rd_kafka_mock_topic_create(mock, TOPIC, partitions, 1) ||
	    (codec_b && rd_kafka_mock_topic_create(mock, TOPIC_B, partitions, 1)))
		die("topic");
	if (codec_b && !tallyd[1])
		tallyd[1] = tallyd[0]; /* the same tallyd, two backlogs */
	char brokers[128];
	snprintf(brokers, sizeof brokers, "%s", rd_kafka_mock_cluster_bootstraps(mock));
	int nb = tallyd[1] ? 2 : 1, do_backlog = !!strstr(phases, "backlog"),
	    do_ceiling = !!strstr(phases, "ceiling"), do_lag = !!strstr(phases, "lag");
	const char *fmt = json ? "json" : "lp";
	printf("tallyd consuming Kafka (librdkafka's mock broker in this process, %d partitions; "
	       "the machine is shared); %s: %s%s%s\n",
	       partitions, nb == 2 ? "A/B" : "tallyd", tallyd[0], nb == 2 ? " vs " : "",
	       nb == 2 ? tallyd[1] : "");
	for (int b = 0; (do_backlog || do_ceiling) && b < 1 + !!codec_b; b++) {
		const char *cd = b ? codec_b : codec_a;
		size_t bytes = produce_backlog(brokers, b ? TOPIC_B : TOPIC, cd, messages);
		printf("backlog %s%s: %" PRIu64 " messages of %u %s (%.1f MiB), compression %s\n",
		       fmt, b ? " for B" : "", messages, lines,
		       json ? "JSON events" : "line-protocol lines", (double)bytes / 1048576, cd);
	}
	/* reader k of a round: tallyd A, tallyd B, the ceiling; the order
	 * rotates from round to round */
	double bl[2][RUNS_MAX], st[2][RUNS_MAX], cpu[2][RUNS_MAX], ce[RUNS_MAX], lg[2][7][RUNS_MAX];
	/* the rounds in which no consumer joined again (clean[k][i]: a round's
	 * events/s, then its CPU) */
	double clean[2][2][RUNS_MAX];
	int nr = do_backlog ? nb : 0, nst[2] = {0, 0}, ncl[2] = {0, 0};
	int readers = nr + do_ceiling;
	for (int r = 0; r < runs; r++) {
		for (int j = 0; j < readers; j++) {
			int k = (j + r) % readers;
			char group[64];
			snprintf(group, sizeof group, "bench-%d-%d", r, k);
			double l0 = load();
			if (k < nr) {
				double s = 0;
				int rejoined = 0;
				bl[k][r] = tallyd_backlog(tallyd[k], brokers,
							  k && codec_b ? TOPIC_B : TOPIC, group,
							  messages, &s, &cpu[k][r], &rejoined);
				if (s > 0)
					st[k][nst[k]++] = s;
				if (!rejoined) {
					clean[k][0][ncl[k]] = bl[k][r];
					clean[k][1][ncl[k]++] = cpu[k][r];
				}
				printf("round %d %c backlog %s: %.2f M events/s durable (steady: "
				       "%.2f), tallyd CPU %.3f s per M events; load %.1f%s\n",
				       r + 1, 'A' + k, fmt, bl[k][r] / 1e6, s / 1e6, cpu[k][r], l0,
				       rejoined ? " (a consumer joined again: includes a "
						  "rebalance)"
						: "");
			} else {
				ce[r] = ceiling(brokers, messages);
				printf("round %d ceiling %s: %.2f M events/s read by librdkafka "
				       "alone; load %.1f\n",
				       r + 1, fmt, ce[r] / 1e6, l0);
			}
			fflush(stdout);
		}
	}
	/* The lag rounds after every backlog round, so a lag run's tallyd
	 * leaving its group is never in a backlog figure. */
	for (int r = 0; r < runs; r++) {
		for (int j = 0; do_lag && j < nb; j++) {
			int k = (j + r) % nb;
			char topic[64];
			snprintf(topic, sizeof topic, "lag-%d-%d", r, k);
			double l0 = load(), o[7];
			lag(tallyd[k], brokers, topic, rate, seconds, o);
			for (int i = 0; i < 7; i++)
				lg[k][i][r] = o[i];
			printf("round %d %c lag %s at %.2f M events/s for %.0f s: produce to "
			       "queryable p50 %.1f ms, p99 %.1f ms, max %.1f ms; each by "
			       "itself p99 %.1f ms, the longest sent at %.2f s, p99 after the "
			       "first second %.1f ms; %.2f messages a batch; load %.1f\n",
			       r + 1, 'A' + k, fmt, rate / 1e6, seconds, o[0], o[1], o[2], o[4],
			       o[5], o[6], o[3], l0);
			fflush(stdout);
		}
	}
	for (int k = 0; k < nb; k++) {
		if (nr)
			printf("median %c backlog %s: %.2f M events/s durable, steady %.2f, "
			       "tallyd CPU %.3f s per M events (%d runs)\n",
			       'A' + k, fmt, median(bl[k], runs) / 1e6,
			       nst[k] ? median(st[k], nst[k]) / 1e6 : 0, median(cpu[k], runs),
			       runs);
		if (nr && ncl[k] && ncl[k] < runs)
			printf("median %c backlog %s of the %d rounds without a rejoin: %.2f M "
			       "events/s durable, tallyd CPU %.3f s per M events\n",
			       'A' + k, fmt, ncl[k], median(clean[k][0], ncl[k]) / 1e6,
			       median(clean[k][1], ncl[k]));
		if (do_lag)
			printf("median %c lag %s: p50 %.1f ms, p99 %.1f ms, max %.1f ms, each by "
			       "itself p99 %.1f ms, after the first second %.1f ms; %.2f messages "
			       "a batch\n",
			       'A' + k, fmt, median(lg[k][0], runs), median(lg[k][1], runs),
			       median(lg[k][2], runs), median(lg[k][4], runs),
			       median(lg[k][6], runs), median(lg[k][3], runs));
	}
	if (do_ceiling)
		printf("median ceiling %s: %.2f M events/s\n", fmt, median(ce, runs) / 1e6);
	rd_kafka_mock_cluster_destroy(mock);
	rd_kafka_destroy(rk);
	return 0;
}
