/*
 * kafkautil.h — Kafka for the tests of tallyd's consumer (test_kafka.c,
 * test_cluster_kafka.c): librdkafka's mock cluster in the test process,
 * producers (kafkajs, tests/server/kafka_produce.mjs, and single messages
 * from librdkafka), the brute force of what kafkajs produced, and waits
 * on tallyd's #!stats. Every wait is bounded and generous.
 */
#ifndef TALLY_KAFKAUTIL_H
#define TALLY_KAFKAUTIL_H

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "srvutil.h"

#define TOPIC  "events"
#define NCAM   8 /* kafka_produce.mjs's cameras, c0 .. c7 */
#define TO_ALL "0 1800000000000000000"

typedef struct kmock {
	rd_kafka_t *rk, *q; /* q: a client of the cluster, for watermarks */
	rd_kafka_mock_cluster_t *mc;
	char brokers[256];
	int npart; /* partitions of TOPIC */
} kmock;

/* A mock cluster of `brokers` brokers on 127.0.0.1 with TOPIC in npart
 * partitions. */
static inline void kmock_start(kmock *m, int brokers, int npart)
{
	char err[256];
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	rd_kafka_conf_set(conf, "log_level", "2", NULL, 0);
	m->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
	cr_assert_not_null(m->rk, "%s", err);
	m->mc = rd_kafka_mock_cluster_new(m->rk, brokers);
	cr_assert_not_null(m->mc);
	snprintf(m->brokers, sizeof m->brokers, "%s", rd_kafka_mock_cluster_bootstraps(m->mc));
	m->npart = npart;
	cr_assert_eq(rd_kafka_mock_topic_create(m->mc, TOPIC, npart, brokers < 3 ? brokers : 3), 0);
	conf = rd_kafka_conf_new();
	rd_kafka_conf_set(conf, "bootstrap.servers", m->brokers, NULL, 0);
	rd_kafka_conf_set(conf, "log_level", "2", NULL, 0);
	m->q = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
	cr_assert_not_null(m->q, "%s", err);
}

/* The partition's high watermark: the offset after its last message. */
static inline int64_t kmock_high(kmock *m, int32_t p)
{
	int64_t lo, hi;
	rd_kafka_resp_err_t e;
	int64_t deadline = su_mono_ms() + 60000;
	while ((e = rd_kafka_query_watermark_offsets(m->q, TOPIC, p, &lo, &hi, 5000))) {
		cr_assert(su_mono_ms() < deadline, "watermarks: %s", rd_kafka_err2str(e));
		usleep(100000);
	}
	return hi;
}

static inline void kmock_stop(kmock *m)
{
	rd_kafka_destroy(m->q);
	rd_kafka_mock_cluster_destroy(m->mc);
	rd_kafka_destroy(m->rk);
}

/* ---------------------------------------------------------------- producers */

static inline const char *node_script(void)
{
	static char path[512];
	snprintf(path, sizeof path, "%s/tests/server/kafka_produce.mjs", TALLY_SOURCE_DIR);
	char mod[512];
	snprintf(mod, sizeof mod, "%s/tests/server/node_modules/kafkajs", TALLY_SOURCE_DIR);
	struct stat st;
	if (stat(mod, &st) != 0 || system("command -v node >/dev/null 2>&1") != 0)
		cr_skip_test("node or kafkajs missing (tools/setup installs them)");
	return path;
}

/* Runs the producer for messages [from, from + count); returns its pid. */
static const char *kformat = "lp"; /* kafka_produce.mjs's FORMAT */

static inline pid_t kproduce(const kmock *m, int from, int count, int lines, int poison,
			     int pause_ms)
{
	const char *script = node_script();
	char a[4][24], p[2][24];
	snprintf(a[0], sizeof a[0], "%d", from);
	snprintf(a[1], sizeof a[1], "%d", count);
	snprintf(a[2], sizeof a[2], "%d", lines);
	snprintf(p[0], sizeof p[0], "%d", poison);
	snprintf(p[1], sizeof p[1], "%d", pause_ms);
	pid_t pid = fork();
	cr_assert(pid >= 0);
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		int nul = open("/dev/null", O_WRONLY);
		dup2(nul, 1);
		execlp("node", "node", script, m->brokers, TOPIC, a[0], a[1], a[2], kformat, p[0],
		       p[1], (char *)NULL);
		_exit(127);
	}
	return pid;
}

static inline void kproduce_wait(pid_t pid)
{
	int st;
	int64_t deadline = su_mono_ms() + 120000;
	while (waitpid(pid, &st, WNOHANG) != pid) {
		cr_assert(su_mono_ms() < deadline, "the producer did not finish in 120 s");
		usleep(20000);
	}
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the producer failed (status %d)", st);
}

/* Produces one message with key[0, strlen) (NULL: none) from this process
 * (librdkafka): the key-tag tests need exact keys and payloads. */
static inline void kproduce_one(const kmock *m, const char *key, const char *payload)
{
	rd_kafka_resp_err_t e = rd_kafka_producev(
		m->q, RD_KAFKA_V_TOPIC(TOPIC), RD_KAFKA_V_KEY(key, key ? strlen(key) : 0),
		RD_KAFKA_V_VALUE((void *)payload, strlen(payload)),
		RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
	cr_assert_eq(e, 0, "%s", rd_kafka_err2str(e));
	cr_assert_eq(rd_kafka_flush(m->q, 60000), 0, "the message was not delivered in 60 s");
}

/* ---------------------------------------------------------------- brute force */

typedef struct kbrute {
	uint64_t count[NCAM], sum[NCAM], total;
} kbrute;

/* What messages [0, n) of LINES lines each hold, as kafka_produce.mjs
 * makes them; a poison message's first line is refused. */
static inline kbrute kbrute_of(int n, int lines, int poison)
{
	kbrute b = {0};
	for (int i = 0; i < n; i++)
		for (int j = 0; j < lines; j++) {
			if (poison > 0 && i % poison == poison - 1 && j == 0)
				continue;
			uint64_t e = (uint64_t)i * (uint64_t)lines + (uint64_t)j;
			b.count[i % NCAM]++;
			b.sum[i % NCAM] += e % 100;
			b.total++;
		}
	return b;
}

/* ---------------------------------------------------------------- tallyd */

/* The furthest offset the nodes wrote of partition p (their
 * kafka_offset:events/P rows), -1 when none owns it. */
static inline int64_t kwritten(tcli **cs, int n, int32_t p)
{
	char name[64];
	snprintf(name, sizeof name, "kafka_offset:" TOPIC "/%d", p);
	int64_t best = -1;
	for (int i = 0; i < n; i++) {
		ttable t;
		tcli_query(cs[i], &t, "#!stats");
		cr_assert_null(t.err, "%s", t.err);
		for (size_t r = 1; r < t.n; r++)
			if (!strcmp(tcell(t.rows[r], 0), name)) {
				int64_t v = (int64_t)strtoull(tcell(t.rows[r], 1), NULL, 10);
				best = v > best ? v : best;
			}
		ttable_free(&t);
	}
	return best;
}

/* Waits (bounded) until the nodes wrote every partition up to its high
 * watermark. */
static inline void kwait_written(kmock *m, tcli **cs, int n)
{
	int64_t deadline = su_mono_ms() + 150000;
	for (int32_t p = 0; p < m->npart; p++) {
		int64_t hi = kmock_high(m, p), w;
		while ((w = kwritten(cs, n, p)) < hi && !(hi == 0 && w < 0)) {
			cr_assert(su_mono_ms() < deadline,
				  "after 150 s partition %d is written up to %" PRId64
				  " of %" PRId64,
				  p, w, hi);
			usleep(200000);
		}
	}
}

static inline uint64_t kwait_stat(tcli *c, const char *name, uint64_t at_least)
{
	int64_t deadline = su_mono_ms() + 120000;
	for (;;) {
		uint64_t v = tstat(c, name);
		if (v >= at_least)
			return v;
		cr_assert(su_mono_ms() < deadline, "%s stayed at %" PRIu64 " (want %" PRIu64 ")",
			  name, v, at_least);
		usleep(50000);
	}
}

#endif
