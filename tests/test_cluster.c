/*
 * test_cluster.c — three tallyd on loopback answer like one store.
 *
 * Cameras are spread over the nodes as Kafka partitions would spread them
 * (camera i on node i % 3), and one camera's events are split over all
 * three (a rebalance moved its partition). A fourth tallyd holds every
 * event and no peers: the reference. Every query kind (agg over unaligned
 * ranges, series at 5m and 1h, keys, scan with and without a limit) asked
 * of each node equals the reference's answer and brute force; so does
 * `tally query --nodes` asking the nodes from outside. A node that stops
 * answering (SIGSTOP, then killed) fails the answer by default, and is
 * named in the END line after "#!fanout partial".
 */
#include <criterion/criterion.h>
#include <math.h>

#include "srvutil.h"

#define NCAM  8
#define SPLIT 7 /* this camera's events are on every node */
#define NEV   3000

typedef struct ev {
	int cam;
	int64_t ts;
	int tenths;
} ev;

static ev evs[NEV];
static const int64_t T0 = INT64_C(1735689600) * 1000000000; /* 2025-01-01 */

static void gen(void)
{
	srand(11);
	for (int i = 0; i < NEV; i++) {
		evs[i].cam = rand() % NCAM;
		/* distinct times (the scan's order is then the same on every
		 * node), spread over a day, in no order (late events) */
		evs[i].ts = T0 + (int64_t)(rand() % 86000) * 1000000000 + i;
		evs[i].tenths = 300 + rand() % 1200;
	}
}

static int node_of(const ev *e, int i)
{
	return e->cam == SPLIT ? i % 3 : e->cam % 3;
}

static void load(tcli *c, int node)
{
	for (int i = 0; i < NEV; i++)
		if (node < 0 || node_of(&evs[i], i) == node)
			tcli_sendf(c, "traffic,camera=cam%d speed=%d.%d %" PRId64 "\n", evs[i].cam,
				   evs[i].tenths / 10, evs[i].tenths % 10, evs[i].ts);
	tcli_sync(c, NULL, NULL);
}

/* Both tables have the same rows; numbers equal (sums to 1e-12 relative:
 * partial sums added in another order may differ in the last bit). */
static void same_table(const ttable *got, const ttable *want, const char *what)
{
	cr_assert_null(got->err, "%s: %s", what, got->err);
	cr_assert_null(want->err, "%s: reference: %s", what, want->err);
	cr_assert_eq(got->n, want->n, "%s: %zu rows, want %zu", what, got->n, want->n);
	for (size_t r = 0; r < got->n; r++) {
		if (!strcmp(got->rows[r], want->rows[r]))
			continue;
		char ga[4096], wa[4096];
		snprintf(ga, sizeof ga, "%s", got->rows[r]);
		snprintf(wa, sizeof wa, "%s", want->rows[r]);
		char *gs, *ws, *g = strtok_r(ga, "\t", &gs), *w = strtok_r(wa, "\t", &ws);
		for (int j = 0; g || w; j++) {
			cr_assert(g && w, "%s: row %zu: '%s', want '%s'", what, r, got->rows[r],
				  want->rows[r]);
			if (strcmp(g, w)) {
				double x = strtod(g, NULL), y = strtod(w, NULL);
				cr_assert(fabs(x - y) <= 1e-12 * fabs(y),
					  "%s: row %zu cell %d: '%s', want '%s'", what, r, j, g, w);
			}
			g = strtok_r(NULL, "\t", &gs);
			w = strtok_r(NULL, "\t", &ws);
		}
	}
}

/* kill() returns before the signal is taken: a SIGSTOPped node could still
 * answer the next query. Waits until /proc says it is stopped. */
static void wait_stopped(pid_t pid)
{
	char path[64], st[512];
	snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
	int64_t end = su_mono_ms() + 10000;
	for (;;) {
		FILE *f = fopen(path, "r");
		cr_assert_not_null(f);
		size_t k = fread(st, 1, sizeof st - 1, f);
		fclose(f);
		st[k] = 0;
		const char *paren = strrchr(st, ')');
		if (paren && paren[1] == ' ' && paren[2] == 'T')
			return;
		cr_assert(su_mono_ms() < end, "node %d did not stop", (int)pid);
		usleep(1000);
	}
}

/* The query asked of a node of the cluster and of the reference. */
static void both(tcli *node_c, tcli *ref_c, int node, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void both(tcli *node_c, tcli *ref_c, int node, const char *fmt, ...)
{
	char q[512], what[600];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(q, sizeof q, fmt, ap);
	va_end(ap);
	ttable a, b;
	tcli_query(node_c, &a, "%s", q);
	tcli_query(ref_c, &b, "%s", q);
	snprintf(what, sizeof what, "node %d: %s", node, q);
	same_table(&a, &b, what);
	ttable_free(&a);
	ttable_free(&b);
}

static void start_node(tsrv *s, unsigned port, const char *peers, const char *timeout)
{
	char p[16];
	snprintf(p, sizeof p, "%u", port);
	const char *args[] = {"--port",      p,      "--peers", peers, "--peer-timeout", timeout,
			      "--log-level", "warn", NULL};
	tsrv_spawn(s, args, 1);
	cr_assert_eq(s->port, port);
}

Test(cluster, three_nodes_answer_like_one, .timeout = 240)
{
	gen();
	unsigned ports[3];
	for (int i = 0; i < 3; i++)
		ports[i] = su_free_port();
	tsrv n[3], ref;
	for (int i = 0; i < 3; i++) {
		char peers[64];
		snprintf(peers, sizeof peers, "127.0.0.1:%u,127.0.0.1:%u", ports[(i + 1) % 3],
			 ports[(i + 2) % 3]);
		tdir_make(&n[i]);
		start_node(&n[i], ports[i], peers, "2s");
	}
	tdir_make(&ref);
	tsrv_spawn(&ref, (const char *[]){"--log-level", "warn", NULL}, 1);
	tcli *c[3], *rc = tcli_open(ref.port);
	for (int i = 0; i < 3; i++) {
		c[i] = tcli_open(n[i].port);
		/* writes go to this node alone; queries fan out */
		load(c[i], i);
	}
	load(rc, -1);

	srand(5);
	for (int round = 0; round < 40; round++) {
		int cam = round % NCAM, node = round % 3;
		int64_t from = T0 + (int64_t)(rand() % 80000) * 1000000000 + rand() % 1000;
		int64_t to = from + (int64_t)(1 + rand() % 20000) * 1000000000 + rand() % 1000;
		const char *step = round % 2 ? "5m" : "1h";
		both(c[node], rc, node, "#!agg traffic speed cam%d %" PRId64 "ns %" PRId64 "ns",
		     cam, from, to);
		both(c[node], rc, node, "#!series traffic speed cam%d %s 2025-01-01T00:00:00Z 1d",
		     cam, step);
		both(c[node], rc, node, "#!keys traffic speed %" PRId64 "ns %" PRId64 "ns", from,
		     to);
		both(c[node], rc, node, "#!scan traffic cam%d %" PRId64 "ns %" PRId64 "ns%s", cam,
		     from, to, round % 4 == 1 ? " 7" : "");
	}

	/* Brute force for the split camera over the whole day. */
	uint64_t cnt = 0;
	int64_t sum = 0;
	for (int i = 0; i < NEV; i++)
		if (evs[i].cam == SPLIT) {
			cnt++;
			sum += evs[i].tenths;
		}
	ttable a;
	tcli_query(c[1], &a, "#!agg traffic speed cam%d 2025-01-01T00:00:00Z 1d", SPLIT);
	cr_assert_null(a.err);
	cr_assert_eq(strtoull(tcell(a.rows[1], 0), NULL, 10), cnt);
	cr_assert(fabs(strtod(tcell(a.rows[1], 1), NULL) - (double)sum / 10) < 1e-6);
	ttable_free(&a);

	/* From outside: tally query --nodes, against the reference's CSV. */
	const char *tally = getenv("TALLY");
	cr_assert_not_null(tally);
	char cmd[1024];
	snprintf(cmd, sizeof cmd,
		 "%s --nodes 127.0.0.1:%u,127.0.0.1:%u,127.0.0.1:%u --csv query keys traffic speed "
		 "2025-01-01T00:00:00Z 1d 2>&1",
		 tally, ports[0], ports[1], ports[2]);
	char ref_cmd[1024];
	snprintf(ref_cmd, sizeof ref_cmd,
		 "%s --port %u --csv query keys traffic speed 2025-01-01T00:00:00Z 1d 2>&1", tally,
		 ref.port);
	char got[8192] = {0}, want[8192] = {0};
	FILE *f = popen(cmd, "r");
	size_t gn = fread(got, 1, sizeof got - 1, f);
	cr_assert_eq(pclose(f), 0, "%s: %s", cmd, got);
	f = popen(ref_cmd, "r");
	size_t wn = fread(want, 1, sizeof want - 1, f);
	cr_assert_eq(pclose(f), 0, "%s", want);
	cr_assert(gn > 100 && wn > 100);
	/* the split camera's sum may differ in its last bit: compare lines
	 * up to it, and its count */
	cr_assert(!strncmp(got, want, (size_t)(strstr(want, "cam7") - want)), "%s\nvs\n%s", got,
		  want);

	/* A node that stops answering: the answer fails, naming it ... */
	kill(n[2].pid, SIGSTOP);
	wait_stopped(n[2].pid);
	ttable t;
	tcli_query(c[0], &t, "#!agg traffic speed cam1 2025-01-01T00:00:00Z 1d");
	cr_assert_not_null(t.err);
	char port2[16];
	snprintf(port2, sizeof port2, ":%u", ports[2]);
	cr_assert(strstr(t.err, port2) && strstr(t.err, "no answer within"), "%s", t.err);
	ttable_free(&t);
	/* ... or, when the caller chooses, comes marked partial. */
	tcli_sendf(c[0], "#!fanout partial\n");
	free(tcli_expect(c[0], "OK fanout partial"));
	tcli_sendf(c[0], "#!keys traffic speed 2025-01-01T00:00:00Z 1d\n");
	char *l, *end = NULL;
	size_t rows = 0;
	while ((l = tcli_line(c[0], 30000))) {
		if (!strncmp(l, "END ", 4)) {
			end = l;
			break;
		}
		rows++;
		free(l);
	}
	cr_assert_not_null(end);
	cr_assert(strstr(end, "PARTIAL") && strstr(end, port2), "%s", end);
	/* the header and every camera but node 2's own (cam2, cam5) */
	cr_assert_eq(rows, 1 + NCAM - 2);
	free(end);
	kill(n[2].pid, SIGCONT);
	cr_assert_eq(tsrv_wait(&n[2], SIGKILL), 128 + SIGKILL);
	tcli_query(c[1], &t, "#!series traffic speed cam0 1h 2025-01-01T00:00:00Z 1d");
	cr_assert(t.err && strstr(t.err, port2) && strstr(t.err, "#!fanout partial"), "%s",
		  t.err ? t.err : "no error");
	ttable_free(&t);

	for (int i = 0; i < 3; i++)
		tcli_close(c[i]);
	tcli_close(rc);
	for (int i = 0; i < 2; i++)
		cr_assert_eq(tsrv_wait(&n[i], SIGTERM), 0);
	cr_assert_eq(tsrv_wait(&ref, SIGTERM), 0);
	for (int i = 0; i < 3; i++)
		tdir_remove(&n[i]);
	tdir_remove(&ref);
}
