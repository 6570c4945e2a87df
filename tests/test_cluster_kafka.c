/*
 * test_cluster_kafka.c — the cluster as docs/cluster.md draws it: three
 * tallyd on loopback, one consumer group, a six-partition topic on
 * librdkafka's mock cluster, and queries to any node answered like one
 * store.
 *
 * kafkajs produces half of the messages, the first node consumes them
 * alone, the other two join (the group rebalances, so cameras whose
 * partitions moved have events on two nodes), and the second half
 * follows. Then every query kind asked of each node, over unaligned
 * ranges, equals the answer of a fourth tallyd that holds every event
 * (loaded over the text protocol, no Kafka) and brute force of what
 * kafkajs produced. Distributions do not merge across nodes (a quantile
 * of parts is not the quantile of the whole): asked of a node with peers
 * the answer fails, saying so; the additive statistics (count, above,
 * below, bins) of the nodes' own answers add up to the reference's. A
 * stopped node fails the answer, or, when the caller chooses, marks it
 * partial.
 */
#include <criterion/criterion.h>

#include "kafkautil.h"

#define NPART 6
#define NMSG  480
#define LINES 25
#define T0_S  INT64_C(1700000000) /* kafka_produce.mjs: event e at T0_S + e s */

/* The query of both; rows equal (the values are integers: sums merged in
 * any order are exact, and so is every printed figure). */
static void same(tcli *node, tcli *ref, int i, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void same(tcli *node, tcli *ref, int i, const char *fmt, ...)
{
	char q[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(q, sizeof q, fmt, ap);
	va_end(ap);
	ttable a, b;
	tcli_query(node, &a, "%s", q);
	tcli_query(ref, &b, "%s", q);
	cr_assert_null(a.err, "node %d: %s: %s", i, q, a.err);
	cr_assert_null(b.err, "reference: %s: %s", q, b.err);
	cr_assert_eq(a.n, b.n, "node %d: %s: %zu rows, want %zu", i, q, a.n, b.n);
	for (size_t r = 0; r < a.n; r++)
		cr_assert_str_eq(a.rows[r], b.rows[r], "node %d: %s: row %zu", i, q, r);
	ttable_free(&a);
	ttable_free(&b);
}

static void spawn_node(tsrv *s, const kmock *m, unsigned port, const char *peers)
{
	char p[16];
	snprintf(p, sizeof p, "%u", port);
	const char *args[] = {"--port",
			      p,
			      "--peers",
			      peers,
			      "--peer-timeout",
			      "2s",
			      "--kafka-brokers",
			      m->brokers,
			      "--kafka-topics",
			      TOPIC,
			      "--kafka-group",
			      "tally-cluster",
			      "--kafka-option",
			      "session.timeout.ms=3000",
			      "--kafka-option",
			      "heartbeat.interval.ms=300",
			      "--shards",
			      "1",
			      "--sync-interval",
			      "100ms",
			      "--distributions",
			      "k.v:1",
			      NULL};
	tsrv_spawn(s, args, 1);
	cr_assert_eq(s->port, port);
}

/* Every event kafkajs made, over the text protocol. */
static void load_reference(tcli *c)
{
	for (int i = 0; i < NMSG; i++)
		for (int j = 0; j < LINES; j++) {
			int64_t e = (int64_t)i * LINES + j;
			tcli_sendf(c, "k,cam=c%d v=%di %" PRId64 "000000000\n", i % NCAM,
				   (int)(e % 100), T0_S + e);
		}
	uint64_t acc = 0, rej = 0;
	tcli_sync(c, &acc, &rej);
	cr_assert_eq(rej, 0);
}

/* A statistic row "name\tvalue" of a #!dist answer, 0 when absent. */
static uint64_t dist_stat(const ttable *t, const char *name)
{
	for (size_t r = 1; r < t->n; r++)
		if (!strcmp(tcell(t->rows[r], 0), name))
			return strtoull(tcell(t->rows[r], 1), NULL, 10);
	return 0;
}

Test(cluster_kafka, three_consumers_answer_like_one_store, .timeout = 600)
{
	kmock m;
	kmock_start(&m, 3, NPART);
	unsigned ports[3];
	for (int i = 0; i < 3; i++)
		ports[i] = su_free_port();
	char peers[3][64];
	for (int i = 0; i < 3; i++)
		snprintf(peers[i], sizeof peers[i], "127.0.0.1:%u,127.0.0.1:%u", ports[(i + 1) % 3],
			 ports[(i + 2) % 3]);
	tsrv n[3], ref;
	tcli *c[3];
	for (int i = 0; i < 3; i++)
		tdir_make(&n[i]);

	/* The first half, consumed by node 0 alone; then the others join. */
	kproduce_wait(kproduce(&m, 0, NMSG / 2, LINES, 0, 0));
	spawn_node(&n[0], &m, ports[0], peers[0]);
	c[0] = tcli_open(n[0].port);
	kwait_stat(c[0], "kafka_messages", 1);
	for (int i = 1; i < 3; i++) {
		spawn_node(&n[i], &m, ports[i], peers[i]);
		c[i] = tcli_open(n[i].port);
	}
	for (int i = 0; i < 3; i++)
		kwait_stat(c[i], "kafka_partitions", 1);
	kproduce_wait(kproduce(&m, NMSG / 2, NMSG / 2, LINES, 0, 0));
	kwait_written(&m, c, 3);
	uint64_t owned = 0;
	for (int i = 0; i < 3; i++)
		owned += tstat(c[i], "kafka_partitions");
	cr_assert_eq(owned, NPART, "%" PRIu64 " partitions owned", owned);

	/* Brute force, asked of each node: every camera once, exactly. */
	kbrute want = kbrute_of(NMSG, LINES, 0);
	for (int i = 0; i < 3; i++)
		for (int k = 0; k < NCAM; k++) {
			ttable t;
			tcli_query(c[i], &t, "#!agg k v c%d " TO_ALL, k);
			cr_assert_null(t.err, "node %d: c%d: %s", i, k, t.err);
			cr_assert_eq(strtoull(tcell(t.rows[1], 0), NULL, 10), want.count[k],
				     "node %d: c%d: %s", i, k, t.rows[1]);
			cr_assert_eq((uint64_t)strtod(tcell(t.rows[1], 1), NULL), want.sum[k],
				     "node %d: c%d: %s", i, k, t.rows[1]);
			ttable_free(&t);
		}

	/* One store holding everything: every query kind agrees. */
	tdir_make(&ref);
	tsrv_spawn(&ref, (const char *[]){"--distributions", "k.v:1", NULL}, 1);
	tcli *rc = tcli_open(ref.port);
	load_reference(rc);
	const int64_t span = (int64_t)NMSG * LINES; /* seconds */
	srand(17);
	for (int round = 0; round < 24; round++) {
		int i = round % 3, cam = rand() % NCAM;
		int64_t from = (T0_S + rand() % span) * 1000000000 + rand() % 1000000000;
		int64_t to = from + (int64_t)(1 + rand() % (span / 2)) * 1000000000 + rand() % 1000;
		same(c[i], rc, i, "#!agg k v c%d %" PRId64 "ns %" PRId64 "ns", cam, from, to);
		same(c[i], rc, i, "#!series k v c%d %s %" PRId64 "ns %" PRId64 "ns", cam,
		     round % 2 ? "5m" : "1h", from, to);
		same(c[i], rc, i, "#!keys k v %" PRId64 "ns %" PRId64 "ns", from, to);
		same(c[i], rc, i, "#!scan k c%d %" PRId64 "ns %" PRId64 "ns%s", cam, from, to,
		     round % 4 == 1 ? " 9" : "");
	}

	/* Distributions: a node with peers answers for the whole (every
	 * node's pairs merged, wire/fandist.c); the nodes' own additive
	 * statistics add up. */
	const char *dq = "#!dist k v c%d " TO_ALL " q=0.5 above=49 below=20 hist=0,25,50,75,100";
	ttable t;
	for (int k = 0; k < NCAM; k++)
		same(c[k % 3], rc, k % 3, dq, k);
	for (int i = 0; i < 3; i++) {
		tcli_sendf(c[i], "#!fanout off\n");
		free(tcli_expect(c[i], "OK fanout off"));
	}
	static const char *const add[] = {"count",   "above=49", "below=20", "[0,25)",
					  "[25,50)", "[50,75)",  "[75,100)"};
	for (int k = 0; k < NCAM; k++) {
		uint64_t sum[7] = {0}, whole = 0;
		int holders = 0;
		for (int i = 0; i < 3; i++) {
			tcli_query(c[i], &t, dq, k);
			if (t.err) { /* this node holds no table k */
				ttable_free(&t);
				continue;
			}
			for (int s = 0; s < 7; s++)
				sum[s] += dist_stat(&t, add[s]);
			if (dist_stat(&t, "count")) {
				holders++;
				whole = (uint64_t)i;
			}
			ttable_free(&t);
		}
		ttable r;
		tcli_query(rc, &r, dq, k);
		cr_assert_null(r.err, "%s", r.err);
		for (int s = 0; s < 7; s++)
			cr_assert_eq(sum[s], dist_stat(&r, add[s]), "c%d: %s", k, add[s]);
		/* a camera on one node only: that node's answer is the whole */
		if (holders == 1)
			same(c[whole], rc, (int)whole, dq, k);
		ttable_free(&r);
	}
	for (int i = 0; i < 3; i++) {
		tcli_sendf(c[i], "#!fanout fail\n");
		free(tcli_expect(c[i], "OK fanout fail"));
	}

	/* A stopped node: the answer fails, naming it ... */
	tcli_close(c[2]);
	cr_assert_eq(tsrv_wait(&n[2], SIGTERM), 0);
	char port2[16];
	snprintf(port2, sizeof port2, ":%u", ports[2]);
	tcli_query(c[0], &t, "#!keys k v " TO_ALL);
	cr_assert(t.err && strstr(t.err, port2) && strstr(t.err, "#!fanout partial"), "%s",
		  t.err ? t.err : "answered");
	ttable_free(&t);
	/* ... or comes marked partial, when the caller chooses. */
	tcli_sendf(c[0], "#!fanout partial\n");
	free(tcli_expect(c[0], "OK fanout partial"));
	tcli_sendf(c[0], "#!agg k v c0 " TO_ALL "\n");
	char *l, *end = NULL;
	while ((l = tcli_line(c[0], 30000))) {
		if (!strncmp(l, "END ", 4)) {
			end = l;
			break;
		}
		free(l);
	}
	cr_assert(end && strstr(end, "PARTIAL") && strstr(end, port2), "%s", end ? end : "no END");
	free(end);

	for (int i = 0; i < 2; i++) {
		tcli_close(c[i]);
		cr_assert_eq(tsrv_wait(&n[i], SIGTERM), 0);
	}
	tcli_close(rc);
	cr_assert_eq(tsrv_wait(&ref, SIGTERM), 0);
	for (int i = 0; i < 3; i++)
		tdir_remove(&n[i]);
	tdir_remove(&ref);
	kmock_stop(&m);
}
