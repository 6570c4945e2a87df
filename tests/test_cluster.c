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
 *
 * Over HTTP the same: every query kind of the JSON API (series, agg,
 * aggs sorted both ways, scan pages with their cursor, the cameras'
 * route, CSV) and InfluxQL statements (GROUP BY time and key, SHOW TAG
 * VALUES) asked of a node equal the reference's answer and brute force,
 * and a stopped node gives 503 naming it, or with partial=mark the
 * answer marked ("partial", X-Tally-Partial, InfluxQL's "messages").
 */
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>

#include "clusterutil.h"
#include "fanout.h"

#define NCAM  8
#define SPLIT 7 /* this camera's events are on every node */
#define NEV   3000
#define T0    CL_T0

static cl_ev evs[NEV];
static const cl_set set = {evs, NEV, NCAM, SPLIT};

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

/* Three nodes naming each other in peers, each holding its share of the
 * events, and the reference holding them all; c[i] and *rc connected. */
static void cluster_up(tsrv n[3], tsrv *ref, unsigned ports[3], tcli *c[3], tcli **rc)
{
	cl_gen(&set, 11, 300, 1200, 1);
	cl_up(&set, n, ref, ports, c, rc, NULL);
}

/* Closes the clients, stops the nodes still running (node 2 was killed)
 * and the reference, removes their directories. */
static void cluster_down(tsrv n[3], tsrv *ref, tcli *c[3], tcli *rc)
{
	cl_down(n, 2, ref, c, rc);
}

/* Stops node 2 and waits until it is stopped; port2 becomes ":PORT". */
static void stop_node2(tsrv n[3], const unsigned ports[3], char port2[16])
{
	kill(n[2].pid, SIGSTOP);
	tsrv_wait_stopped(n[2].pid);
	snprintf(port2, 16, ":%u", ports[2]);
}

Test(cluster, three_nodes_answer_like_one, .timeout = 240)
{
	unsigned ports[3];
	tsrv n[3], ref;
	tcli *c[3], *rc;
	cluster_up(n, &ref, ports, c, &rc);

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
	char port2[16];
	stop_node2(n, ports, port2);
	ttable t;
	tcli_query(c[0], &t, "#!agg traffic speed cam1 2025-01-01T00:00:00Z 1d");
	cr_assert_not_null(t.err);
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
	cluster_down(n, &ref, c, rc);
}

/* ---------------------------------------------------------------- HTTP */

/* %-encodes s for a query string. */
static void url_enc(const char *s, char *out, size_t cap)
{
	size_t o = 0;
	for (; *s && o + 4 < cap; s++) {
		unsigned char ch = (unsigned char)*s;
		if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
		    (ch >= '0' && ch <= '9') || ch == '-' || ch == '_' || ch == '.')
			out[o++] = (char)ch;
		else
			o += (size_t)snprintf(out + o, cap - o, "%%%02X", ch);
	}
	out[o] = 0;
}

static int num_char(char ch)
{
	return (ch >= '0' && ch <= '9') || ch == '.' || ch == '-' || ch == '+' || ch == 'e' ||
	       ch == 'E';
}

/* The same bytes, except numbers that differ by at most 1e-12 relative
 * (a sum of partial sums added in another order). */
static void same_text(const char *got, const char *want, const char *what)
{
	const char *g = got, *w = want;
	while (*g || *w) {
		if (*g == *w) {
			g++;
			w++;
			continue;
		}
		const char *gs = g, *ws = w;
		while (gs > got && num_char(gs[-1]))
			gs--;
		while (ws > want && num_char(ws[-1]))
			ws--;
		char *ge, *we;
		double x = strtod(gs, &ge), y = strtod(ws, &we);
		cr_assert(ge > gs && we > ws && (ge > g || we > w) &&
				  fabs(x - y) <= 1e-12 * fabs(y),
			  "%s: differs at byte %td:\n got ...%.80s\nwant ...%.80s\n(got %s)", what,
			  g - got, gs, ws, got);
		g = ge;
		w = we;
	}
}

/* GET path of node port and of the reference: the same status and body. */
static void both_http(unsigned port, unsigned ref_port, const char *path)
{
	cl_http a = cl_get(port, path), b = cl_get(ref_port, path);
	cr_assert_eq(a.status, b.status, "%s: status %d (%s), the reference's %d", path, a.status,
		     a.body, b.status);
	cr_assert(!strstr(a.body, "\"partial\"") && !strstr(a.head, "X-Tally-Partial"), "%s: %s",
		  path, a.body);
	same_text(a.body, b.body, path);
	cl_http_free(&a);
	cl_http_free(&b);
}

/* InfluxQL statement q on /query of both. */
static void both_iql(unsigned port, unsigned ref_port, const char *q)
{
	char enc[2048], path[2200];
	url_enc(q, enc, sizeof enc);
	snprintf(path, sizeof path, "/query?db=tally&q=%s", enc);
	cl_http a = cl_get(port, path), b = cl_get(ref_port, path);
	cr_assert_eq(a.status, 200, "%s: %d %s", q, a.status, a.body);
	cr_assert(!strstr(a.body, "\"error\"") && !strstr(a.body, "messages"), "%s: %s", q, a.body);
	cr_assert(strstr(a.body, "\"series\""), "%s: no series in %s", q, a.body);
	same_text(a.body, b.body, q);
	cl_http_free(&a);
	cl_http_free(&b);
}

/* The row of key in an aggs answer: count, min, max, sum. */
static void aggs_row(const char *body, const char *key, uint64_t *count, double *min, double *max,
		     double *sum)
{
	char pat[64];
	snprintf(pat, sizeof pat, "[\"%s\",", key);
	const char *p = strstr(body, pat);
	cr_assert_not_null(p, "no %s in %s", key, body);
	double mean;
	unsigned long long c;
	cr_assert_eq(sscanf(p + strlen(pat), "%llu,%lf,%lf,%lf,%lf", &c, &mean, min, max, sum), 5,
		     "%s", p);
	*count = c;
}

Test(cluster, http_and_influxql_answer_like_one, .timeout = 280)
{
	unsigned ports[3];
	tsrv n[3], ref;
	tcli *c[3], *rc;
	cluster_up(n, &ref, ports, c, &rc);
	unsigned hp[3], href = tsrv_http_port(&ref);
	for (int i = 0; i < 3; i++)
		hp[i] = tsrv_http_port(&n[i]);

	char path[1024];
	srand(7);
	for (int round = 0; round < 12; round++) {
		int cam = round % NCAM;
		unsigned port = hp[round % 3];
		int64_t from = T0 + (int64_t)(rand() % 80000) * 1000000000 + rand() % 1000;
		int64_t to = from + (int64_t)(1 + rand() % 20000) * 1000000000 + rand() % 1000;
		snprintf(path, sizeof path,
			 "/api/v1/series?table=traffic&field=speed&key=cam%d&step=%s"
			 "&from=2025-01-01T00:00:00Z&to=2025-01-02T00:00:00Z%s",
			 cam, round % 2 ? "5m" : "1h", round % 4 == 3 ? "&format=csv" : "");
		both_http(port, href, path);
		snprintf(path, sizeof path,
			 "/api/v1/agg?table=traffic&field=speed&key=cam%d&from=%" PRId64
			 "&to=%" PRId64,
			 cam, from, to);
		both_http(port, href, path);
		snprintf(path, sizeof path,
			 "/api/v1/aggs?table=traffic&field=speed&from=%" PRId64 "&to=%" PRId64 "%s",
			 from, to, round % 2 ? "&sort=mean&limit=3" : "");
		both_http(port, href, path);
		snprintf(path, sizeof path,
			 "/kvfv/cam%d/avg-speed?interval=5m&from=%" PRId64 "&to=%" PRId64, cam,
			 from, to);
		both_http(port, href, path);
		/* a scan page, then the next from its cursor */
		snprintf(path, sizeof path,
			 "/api/v1/scan?table=traffic&key=cam%d&from=%" PRId64 "&to=%" PRId64
			 "&limit=5",
			 cam, from, to);
		both_http(port, href, path);
		cl_http h = cl_get(port, path);
		const char *cur = strstr(h.body, "\"cursor\":\"");
		if (cur) {
			char cv[64];
			cr_assert_eq(sscanf(cur + 10, "%63[^\"]", cv), 1);
			snprintf(path + strlen(path), sizeof path - strlen(path), "&cursor=%s", cv);
			both_http(port, href, path);
		}
		cl_http_free(&h);
	}

	/* Brute force: every camera's day from the aggs of a node. */
	cl_http h = cl_get(hp[1], "/api/v1/aggs?table=traffic&field=speed"
				  "&from=2025-01-01T00:00:00Z&to=2025-01-02T00:00:00Z");
	cr_assert_eq(h.status, 200, "%s", h.body);
	for (int cam = 0; cam < NCAM; cam++) {
		uint64_t cnt = 0, got_cnt;
		int64_t sum = 0;
		int lo = INT32_MAX, hi = 0;
		for (int i = 0; i < NEV; i++)
			if (evs[i].cam == cam) {
				cnt++;
				sum += evs[i].tenths;
				lo = evs[i].tenths < lo ? evs[i].tenths : lo;
				hi = evs[i].tenths > hi ? evs[i].tenths : hi;
			}
		char key[16];
		snprintf(key, sizeof key, "cam%d", cam);
		double mn, mx, sm;
		aggs_row(h.body, key, &got_cnt, &mn, &mx, &sm);
		cr_assert_eq(got_cnt, cnt, "%s", key);
		cr_assert(fabs(sm - (double)sum / 10) < 1e-6, "%s: sum %f", key, sm);
		cr_assert(fabs(mn - lo / 10.0) < 1e-9 && fabs(mx - hi / 10.0) < 1e-9, "%s", key);
	}
	cl_http_free(&h);

	/* InfluxQL: windows (tiled by rollups, cut at both ends) per camera,
	 * one camera's aggregate, the keys. */
	both_iql(hp[0], href,
		 "SELECT mean(speed), count(speed), max(speed), min(speed) FROM traffic WHERE "
		 "time >= '2025-01-01T01:07:13.5Z' AND time < '2025-01-01T19:00:00Z' "
		 "GROUP BY time(1h), camera");
	both_iql(hp[1], href,
		 "SELECT sum(speed), count(speed) FROM traffic WHERE camera = 'cam7' AND "
		 "time >= '2025-01-01T00:00:00Z' AND time < '2025-01-02T00:00:00Z' "
		 "GROUP BY time(5m) fill(none)");
	both_iql(hp[2], href,
		 "SELECT count(speed) FROM traffic WHERE camera = 'cam7' AND "
		 "time >= '2025-01-01T00:00:00Z' AND time < '2025-01-02T00:00:00Z'");
	both_iql(hp[0], href, "SHOW TAG VALUES FROM traffic WITH KEY = camera");
	both_iql(hp[1], href,
		 "SHOW TAG VALUES FROM traffic WITH KEY = camera WHERE time >= "
		 "'2025-01-01T05:00:00Z' AND time < '2025-01-01T05:10:00Z'");
	/* the split camera's count against brute force */
	uint64_t split = 0;
	for (int i = 0; i < NEV; i++)
		split += evs[i].cam == SPLIT;
	char q[1200], enc[1024], want[64];
	url_enc("SELECT count(speed) FROM traffic WHERE camera = 'cam7' AND "
		"time >= '2025-01-01T00:00:00Z' AND time < '2025-01-02T00:00:00Z'",
		enc, sizeof enc);
	snprintf(q, sizeof q, "/query?db=tally&q=%s", enc);
	h = cl_get(hp[2], q);
	snprintf(want, sizeof want, ",%" PRIu64 "]", split);
	cr_assert(strstr(h.body, want), "want %s in %s", want, h.body);
	cl_http_free(&h);

	/* A stopped node: 503 naming it, within peer-timeout (2 s) ... */
	char port2[16];
	stop_node2(n, ports, port2);
	const char *agg = "/api/v1/agg?table=traffic&field=speed&key=cam1"
			  "&from=2025-01-01T00:00:00Z&to=2025-01-02T00:00:00Z";
	h = cl_get(hp[0], agg);
	cr_assert_eq(h.status, 503, "%d %s", h.status, h.body);
	cr_assert(strstr(h.body, port2) && strstr(h.body, "no answer within") &&
			  strstr(h.body, "partial=mark"),
		  "%s", h.body);
	cl_http_free(&h);
	/* ... or, with partial=mark, the others' answer, marked */
	snprintf(path, sizeof path, "%s&partial=mark", agg);
	h = cl_get(hp[0], path);
	cr_assert_eq(h.status, 200, "%d %s", h.status, h.body);
	cr_assert(!strncmp(h.body, "{\"partial\":\"127.0.0.1", 21) && strstr(h.body, port2), "%s",
		  h.body);
	cr_assert(strstr(h.head, "X-Tally-Partial: 127.0.0.1") && strstr(h.head, port2), "%s",
		  h.head);
	cl_http_free(&h);
	h = cl_get(hp[1], "/api/v1/aggs?table=traffic&field=speed&format=csv&partial=mark"
			  "&from=2025-01-01T00:00:00Z&to=2025-01-02T00:00:00Z");
	cr_assert_eq(h.status, 200, "%d %s", h.status, h.body);
	cr_assert(strstr(h.head, "X-Tally-Partial") && strstr(h.head, port2), "%s", h.head);
	cr_assert(!strstr(h.body, "cam2,") && strstr(h.body, "cam1,"), "%s", h.body);
	cl_http_free(&h);
	/* InfluxQL: the statement's error names it, or partial=mark's messages */
	url_enc("SELECT count(speed) FROM traffic WHERE time >= '2025-01-01T00:00:00Z' AND "
		"time < '2025-01-02T00:00:00Z' GROUP BY camera",
		enc, sizeof enc);
	snprintf(q, sizeof q, "/query?db=tally&q=%s", enc);
	h = cl_get(hp[0], q);
	cr_assert_eq(h.status, 200, "%d %s", h.status, h.body);
	cr_assert(strstr(h.body, "\"error\"") && strstr(h.body, port2), "%s", h.body);
	cl_http_free(&h);
	snprintf(q + strlen(q), sizeof q - strlen(q), "&partial=mark");
	h = cl_get(hp[0], q);
	cr_assert_eq(h.status, 200, "%d %s", h.status, h.body);
	cr_assert(!strstr(h.body, "\"error\"") && strstr(h.body, "\"messages\"") &&
			  strstr(h.body, "partial: 127.0.0.1") && strstr(h.body, port2) &&
			  strstr(h.body, "\"cam1\"") && !strstr(h.body, "\"cam2\""),
		  "%s", h.body);
	cl_http_free(&h);

	kill(n[2].pid, SIGCONT);
	cr_assert_eq(tsrv_wait(&n[2], SIGKILL), 128 + SIGKILL);
	cluster_down(n, &ref, c, rc);
}

/* ---------------------------------------------------------------- the pool */

/* Many queries in a row from one client: each node keeps answering over
 * the connection its peers pooled (connections_total does not grow with
 * the queries), and every answer equals the reference's. Then node 1
 * restarts between two queries: node 0's pool holds a connection the old
 * process closed, and the next answer is still exact (neither missing
 * node 1 nor counting it twice). A table that only node 1 holds is
 * answered by it alone. */
Test(cluster, pooled_connections_reused_and_renewed, .timeout = 240)
{
	unsigned ports[3];
	tsrv n[3], ref;
	tcli *c[3], *rc;
	cluster_up(n, &ref, ports, c, &rc);

	both(c[0], rc, 0, "#!agg traffic speed cam%d 2025-01-01T00:00:00Z 1d", SPLIT);
	uint64_t before[3];
	for (int i = 1; i < 3; i++)
		before[i] = tstat(c[i], "connections_total");
	for (int round = 0; round < 150; round++) {
		int cam = round % NCAM;
		both(c[0], rc, 0, "#!series traffic speed cam%d %s 2025-01-01T00:00:00Z 1d", cam,
		     round % 2 ? "5m" : "1h");
		both(c[0], rc, 0, "#!agg traffic speed cam%d 2025-01-01T%02d:00:00Z 3h", cam,
		     round % 20);
	}
	for (int i = 1; i < 3; i++) {
		uint64_t now = tstat(c[i], "connections_total");
		/* 300 fan-outs, one at a time: one pooled connection serves
		 * them all (a margin for a connection the node closed) */
		cr_assert_leq(now - before[i], 2, "node %d accepted %" PRIu64 " connections", i,
			      now - before[i]);
	}

	/* A table on node 1 alone: node 0 (its own part worked out
	 * in-process) and node 2 answer for nothing, not with an error. */
	for (int k = 0; k < 5; k++) {
		tcli_sendf(c[1], "lone,camera=cam1 speed=%d %" PRId64 "\n", 40 + k,
			   T0 + (int64_t)k * 600 * 1000000000);
		tcli_sendf(rc, "lone,camera=cam1 speed=%d %" PRId64 "\n", 40 + k,
			   T0 + (int64_t)k * 600 * 1000000000);
	}
	tcli_sync(c[1], NULL, NULL);
	tcli_sync(rc, NULL, NULL);
	both(c[0], rc, 0, "#!series lone speed cam1 5m 2025-01-01T00:00:00Z 1d");
	both(c[0], rc, 0, "#!agg lone speed cam1 2025-01-01T00:00:00Z 1d");

	/* node 1 restarts: same port, same data */
	tcli_close(c[1]);
	cr_assert_eq(tsrv_wait(&n[1], SIGTERM), 0);
	cl_start_node(&n[1], ports, 1, "2s", NULL);
	c[1] = tcli_open(n[1].port);
	for (int cam = 0; cam < NCAM; cam++) {
		both(c[0], rc, 0, "#!agg traffic speed cam%d 2025-01-01T00:00:00Z 1d", cam);
		both(c[0], rc, 0, "#!series traffic speed cam%d 1h 2025-01-01T00:00:00Z 1d", cam);
	}
	both(c[0], rc, 0, "#!keys traffic speed 2025-01-01T00:00:00Z 1d");

	cr_assert_eq(tsrv_wait(&n[2], SIGTERM), 0);
	cluster_down(n, &ref, c, rc);
}

/* A node of our own making, to close a pooled connection at the worst
 * moment: after it has read the query, before any answer (a restart
 * that the idle check could not see yet). Each connection answers the
 * preamble and queries; with drop_second, the first connection reads
 * its second query and closes unanswered. */
typedef struct fake_node {
	int lfd;
	unsigned port;
	_Atomic unsigned accepted, answered;
	int drop_second;
	pthread_t t;
} fake_node;

static void *fake_main(void *arg)
{
	fake_node *f = arg;
	for (;;) {
		int fd = accept(f->lfd, NULL, NULL);
		if (fd < 0)
			return NULL;
		int first = atomic_fetch_add(&f->accepted, 1) == 0;
		char buf[4096];
		size_t have = 0;
		unsigned queries = 0;
		for (;;) {
			ssize_t k = recv(fd, buf + have, sizeof buf - 1 - have, 0);
			if (k <= 0)
				break;
			have += (size_t)k;
			char *nl;
			int drop = 0;
			while ((nl = memchr(buf, '\n', have))) {
				size_t ln = (size_t)(nl - buf) + 1;
				const char *reply =
					"count\tsum\tmin\tmax\tavg\n5\t10\t1\t3\t2\nEND 1\n";
				char ok[64];
				if (!strncmp(buf, "#!fanout off", 12)) {
					snprintf(ok, sizeof ok, "OK fanout off node=%x\n", f->port);
					reply = ok;
				} else if (++queries == 2 && f->drop_second && first) {
					drop = 1;
					break;
				} else {
					atomic_fetch_add(&f->answered, 1);
				}
				cr_assert_eq(send(fd, reply, strlen(reply), MSG_NOSIGNAL),
					     (ssize_t)strlen(reply));
				memmove(buf, buf + ln, have - ln);
				have -= ln;
			}
			if (drop)
				break;
		}
		close(fd);
	}
}

static void fake_start(fake_node *f, int drop_second)
{
	f->drop_second = drop_second;
	f->lfd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	cr_assert_eq(bind(f->lfd, (struct sockaddr *)&a, sizeof a), 0);
	cr_assert_eq(listen(f->lfd, 16), 0);
	socklen_t n = sizeof a;
	getsockname(f->lfd, (struct sockaddr *)&a, &n);
	f->port = ntohs(a.sin_port);
	cr_assert_eq(pthread_create(&f->t, NULL, fake_main, f), 0);
}

static void fake_stop(fake_node *f)
{
	shutdown(f->lfd, SHUT_RDWR);
	pthread_join(f->t, NULL);
	close(f->lfd);
}

/* One agg asked through pool: its count (the answer must be whole). */
static uint64_t pooled_count(const fan_node *nodes, size_t n, fan_pool *pool)
{
	fan_opts o = {.pool = pool, .timeout_ns = 20 * INT64_C(1000000000)};
	const char *q = "#!agg traffic speed cam1 2025-01-01T00:00:00Z 1d\n";
	char *out;
	size_t len;
	cr_assert_eq(fan_run(nodes, n, &o, q, &out, &len), 0);
	fan_reader rd;
	fan_reader_open(&rd, out, len);
	cr_assert_null(rd.err, "%.*s", (int)rd.err_n, rd.err);
	cr_assert_null(rd.partial);
	const char *row;
	size_t rn;
	cr_assert(fan_reader_next(&rd, &row, &rn));
	tally_agg a = fan_cell_agg(row, rn, 0);
	free(out);
	return a.count;
}

/* A pooled connection closed by its node after the query reached it:
 * asked again once, on a new connection, and counted once. Two nodes
 * (5 events each): always 10, never an error, 5 or 15; and one
 * connection to a node serves query after query. */
Test(cluster, stale_pooled_connection_retried_once)
{
	fake_node f[2] = {0};
	fake_start(&f[0], 1);
	fake_start(&f[1], 0);
	fan_node nodes[2];
	for (int i = 0; i < 2; i++) {
		snprintf(nodes[i].host, sizeof nodes[i].host, "127.0.0.1");
		snprintf(nodes[i].port, sizeof nodes[i].port, "%u", f[i].port);
	}
	fan_pool *pool = fan_pool_new(nodes, 2);
	cr_assert_not_null(pool);
	cr_assert_eq(pooled_count(nodes, 2, pool), 10); /* connects */
	cr_assert_eq(pooled_count(nodes, 2, pool), 10); /* node 0 drops, asked again */
	cr_assert_eq(atomic_load(&f[0].accepted), 2, "%u", atomic_load(&f[0].accepted));
	for (int k = 0; k < 20; k++)
		cr_assert_eq(pooled_count(nodes, 2, pool), 10); /* the new one, pooled */
	cr_assert_eq(atomic_load(&f[0].accepted), 2, "%u", atomic_load(&f[0].accepted));
	cr_assert_eq(atomic_load(&f[0].answered), 22);
	cr_assert_eq(atomic_load(&f[1].accepted), 1, "%u connections for 22 queries",
		     atomic_load(&f[1].accepted));
	cr_assert_eq(atomic_load(&f[1].answered), 22);
	fan_pool_free(pool);
	for (int i = 0; i < 2; i++)
		fake_stop(&f[i]);
}
