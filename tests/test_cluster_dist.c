/*
 * test_cluster_dist.c — distributions across nodes (docs/cluster.md,
 * "Distributions across nodes").
 *
 * Three tallyd on loopback keep traffic.speed as a distribution at 0.1,
 * cameras spread over them (camera i on node i % 3, one camera on all
 * three), and a fourth holds every event: the reference. #!dist (V85,
 * median, count above and below, a histogram) over aligned and unaligned
 * ranges asked of any node equals the reference's answer and brute force
 * (nearest rank, docs/api.md); so do /api/v1/dist, with and without a
 * step, and InfluxQL's PERCENTILE and MEDIAN. The catalog (#!tables,
 * #!keylist, /api/v1/tables, fields, keys, InfluxQL's SHOW statements,
 * SHOW TAG VALUES of a table keyed by camera+lane too) is the union of
 * the nodes', equal to the reference's. A SIGSTOPped node fails the
 * answer, or is named after END ... PARTIAL / in "partial" / InfluxQL's
 * "messages".
 */
#include <criterion/criterion.h>

#include "clusterutil.h"
#include "fandist.h"

#define NCAM  6
#define SPLIT 5 /* this camera's events are on every node */
#define NEV   2400
#define T0    CL_T0

static cl_ev evs[NEV];
static const cl_set set = {evs, NEV, NCAM, SPLIT};

/* few distinct values, so that ranks fall on ties too */
static void gen(void)
{
	cl_gen(&set, 23, 400, 300, 3);
}

static int cmp_int(const void *a, const void *b)
{
	int x = *(const int *)a, y = *(const int *)b;
	return x < y ? -1 : x > y;
}

/* Brute force of cam over [from, to): the values sorted, in tenths. */
static size_t values(int cam, int64_t from, int64_t to, int *v)
{
	size_t n = 0;
	for (int i = 0; i < NEV; i++)
		if (evs[i].cam == cam && evs[i].ts >= from && evs[i].ts < to)
			v[n++] = evs[i].tenths;
	qsort(v, n, sizeof *v, cmp_int);
	return n;
}

/* The value of stat in a #!dist answer. */
static const char *stat_of(const ttable *t, const char *name)
{
	for (size_t r = 1; r < t->n; r++)
		if (!strcmp(tcell(t->rows[r], 0), name))
			return strchr(t->rows[r], '\t') + 1;
	cr_assert_fail("no row %s", name);
	return NULL;
}

static void check_brute(const ttable *t, int cam, int64_t from, int64_t to)
{
	static int v[NEV];
	size_t n = values(cam, from, to, v);
	cr_assert_null(t->err, "%s", t->err);
	cr_assert_eq(strtoull(stat_of(t, "count"), NULL, 10), n);
	if (n) {
		/* nearest rank: the smallest value with ceil(q N) values <= it */
		size_t r85 = (85 * n + 99) / 100, r50 = (n + 1) / 2;
		cr_assert_eq(strtod(stat_of(t, "q=0.85"), NULL), v[r85 - 1] / 10.0, "cam%d V85",
			     cam);
		cr_assert_eq(strtod(stat_of(t, "q=0.5"), NULL), v[r50 - 1] / 10.0, "cam%d median",
			     cam);
	}
	uint64_t above = 0, below = 0, bins[3] = {0};
	for (size_t i = 0; i < n; i++) {
		above += v[i] > 900;
		below += v[i] < 500;
		for (int b = 0; b < 3; b++)
			bins[b] += v[i] >= 400 + 200 * b && v[i] < 600 + 200 * b;
	}
	cr_assert_eq(strtoull(stat_of(t, "above=90"), NULL, 10), above);
	cr_assert_eq(strtoull(stat_of(t, "below=50"), NULL, 10), below);
	cr_assert_eq(strtoull(stat_of(t, "[40,60)"), NULL, 10), bins[0]);
	cr_assert_eq(strtoull(stat_of(t, "[60,80)"), NULL, 10), bins[1]);
	cr_assert_eq(strtoull(stat_of(t, "[80,100)"), NULL, 10), bins[2]);
}

static void same_rows(const ttable *a, const ttable *b, const char *what)
{
	cr_assert_null(a->err, "%s: %s", what, a->err);
	cr_assert_null(b->err, "%s: reference: %s", what, b->err);
	cr_assert_eq(a->n, b->n, "%s: %zu rows, want %zu", what, a->n, b->n);
	for (size_t r = 0; r < a->n; r++)
		cr_assert_str_eq(a->rows[r], b->rows[r], "%s: row %zu", what, r);
}

/* GET path: status, head (kept in head[cap]) and body (malloc'ed). */
static int http_get(unsigned port, const char *path, char *head, size_t cap, char **body)
{
	cl_http h = cl_get(port, path);
	snprintf(head, cap, "%s", h.head);
	free(h.head);
	*body = h.body;
	return h.status;
}

/* The body of path on node port equals the reference's, byte for byte. */
static void same_http(unsigned port, unsigned ref, const char *path)
{
	char h1[2048], h2[2048], *b1, *b2;
	int s1 = http_get(port, path, h1, sizeof h1, &b1),
	    s2 = http_get(ref, path, h2, sizeof h2, &b2);
	cr_assert_eq(s1, 200, "%s: %d %s", path, s1, b1);
	cr_assert_eq(s2, 200, "%s: reference %d %s", path, s2, b2);
	cr_assert_str_eq(b1, b2, "%s", path);
	cr_assert_null(strstr(h1, "X-Tally-Partial"), "%s", h1);
	free(b1);
	free(b2);
}

/* InfluxQL statement q (spaces as +, quotes as %27) on both. */
static void same_iql(unsigned port, unsigned ref, const char *q)
{
	char path[2048];
	snprintf(path, sizeof path, "/query?db=tally&q=%s", q);
	char h[2048], *b;
	cr_assert_eq(http_get(port, path, h, sizeof h, &b), 200);
	cr_assert(strstr(b, "\"series\"") && !strstr(b, "\"error\""), "%s: %s", q, b);
	free(b);
	same_http(port, ref, path);
}

static const char *const node_args[] = {"--distributions", "traffic.speed:0.1", "--table-keys",
					"lanes=camera+lane", NULL};

/* Declares the three nodes n, ports, the reference ref and their clients
 * c and rc, and starts them holding the events (a test's opening). */
#define CLUSTER_UP()       \
	unsigned ports[3]; \
	tsrv n[3], ref;    \
	tcli *c[3], *rc;   \
	gen();             \
	cl_up(&set, n, &ref, ports, c, &rc, node_args)

#define DQ                                                  \
	"#!dist traffic speed cam%d %" PRId64 "ns %" PRId64 \
	"ns q=0.85 q=0.5 above=90 below=50 hist=40,60,80,100"

Test(cluster_dist, three_nodes_answer_like_one, .timeout = 280)
{
	CLUSTER_UP();

	/* #!dist over aligned (whole hours and the day) and unaligned ranges */
	srand(7);
	for (int round = 0; round < 30; round++) {
		int cam = round % NCAM, node = round % 3;
		int64_t from, to;
		if (round % 3 == 0) {
			from = T0 + (int64_t)(rand() % 12) * 3600000000000;
			to = round % 2 ? T0 + 86400000000000 : from + 3 * 3600000000000;
		} else {
			from = T0 + (int64_t)(rand() % 80000) * 1000000000 + rand() % 1000;
			to = from + (int64_t)(1 + rand() % 40000) * 1000000000 + rand() % 1000;
		}
		ttable a, b;
		tcli_query(c[node], &a, DQ, cam, from, to);
		tcli_query(rc, &b, DQ, cam, from, to);
		same_rows(&a, &b, "dist");
		check_brute(&a, cam, from, to);
		ttable_free(&a);
		ttable_free(&b);
	}

	/* from outside: tally query --nodes dist merges the nodes' pairs (it
	 * answered "not a query that fans out"), as the reference answers */
	const char *tally = getenv("TALLY");
	cr_assert_not_null(tally);
	char got[4096] = {0}, want[4096] = {0};
	for (int k = 0; k < 2; k++) {
		char cmd[1024], *o = k ? want : got;
		int w = k ? snprintf(cmd, sizeof cmd, "%s --port %u", tally, ref.port)
			  : snprintf(cmd, sizeof cmd,
				     "%s --nodes 127.0.0.1:%u,127.0.0.1:%u,127.0.0.1:%u", tally,
				     ports[0], ports[1], ports[2]);
		snprintf(cmd + w, sizeof cmd - (size_t)w,
			 " --csv query dist traffic speed cam%d 2025-01-01T01:02:03Z "
			 "2025-01-01T20:00:00.5Z q=0.85 q=0.5 above=90 hist=40,60,80,100 2>&1",
			 SPLIT);
		FILE *f = popen(cmd, "r");
		size_t got_n = fread(o, 1, 4095, f);
		cr_assert_eq(pclose(f), 0, "%s: %s", cmd, o);
		cr_assert_gt(got_n, 40, "%s: %s", cmd, o);
	}
	cr_assert_str_eq(got, want);

	/* a node's part as pairs (#!fanout off): only its own values */
	ttable t;
	tcli_sendf(c[1], "#!fanout off\n");
	free(tcli_expect(c[1], "OK fanout off"));
	tcli_query(c[1], &t, "#!dist traffic speed cam%d 2025-01-01 2025-01-02 pairs", SPLIT);
	cr_assert_null(t.err, "%s", t.err);
	cr_assert_str_eq(t.rows[0], "exp\tkind\tunits\tcount");
	uint64_t own = 0, mine = 0;
	for (size_t r = 1; r < t.n; r++) {
		cr_assert_str_eq(tcell(t.rows[r], 0), "-1");
		cr_assert_str_eq(tcell(t.rows[r], 1), "exact");
		own += strtoull(tcell(t.rows[r], 3), NULL, 10);
	}
	for (int i = 0; i < NEV; i++)
		mine += evs[i].cam == SPLIT && cl_node_of(&set, i) == 1;
	cr_assert_eq(own, mine);
	ttable_free(&t);
	tcli_sendf(c[1], "#!fanout fail\n");
	free(tcli_expect(c[1], "OK fanout fail"));

	/* a field no node holds: an error naming it, not a crash of the
	 * node asked (fan_run used to read the cleared error) */
	tcli_query(c[0], &t, "#!agg traffic nosuch cam1 2025-01-01 2025-01-02");
	cr_assert(t.err && strstr(t.err, "nosuch"), "%s", t.err ? t.err : "answered");
	ttable_free(&t);
	tcli_query(c[0], &t, "#!dist traffic nosuch cam1 2025-01-01 2025-01-02");
	cr_assert(t.err && strstr(t.err, "nosuch"), "%s", t.err ? t.err : "answered");
	ttable_free(&t);

	/* HTTP: /api/v1/dist with and without a step; InfluxQL */
	unsigned hp[3], href = tsrv_http_port(&ref);
	for (int i = 0; i < 3; i++)
		hp[i] = tsrv_http_port(&n[i]);
	for (int cam = 0; cam < NCAM; cam++) {
		char path[512];
		snprintf(
			path, sizeof path,
			"/api/v1/dist?table=traffic&field=speed&key=cam%d&from=2025-01-01T01:02:03Z"
			"&to=2025-01-01T20:00:00.5Z&q=0.85,0.5&above=90&edges=40,60,80,100%s",
			cam, cam % 2 ? "&step=1h" : "");
		same_http(hp[cam % 3], href, path);
		snprintf(path, sizeof path,
			 "SELECT+PERCENTILE(speed,85),MEDIAN(speed)+FROM+traffic+WHERE+camera=%%"
			 "27cam%d"
			 "%%27+AND+time+>=+%%272025-01-01T00:10:00Z%%27+AND+time+<+%%272025-01-01T"
			 "23:00:00Z%%27+GROUP+BY+time(2h)",
			 cam);
		same_iql(hp[(cam + 1) % 3], href, path);
	}

	/* The catalog: a table on node 1 only (with a tag besides its key
	 * tag), a field on node 2 only, a table keyed by camera+lane on every
	 * node with a camera and a tag on node 2 only; the union of every
	 * node's equals the reference's catalog */
	static const struct {
		int node;
		const char *line;
	} cat_lines[] = {
		{1, "site,id=s1,zone=north level=3i"}, {2, "traffic,camera=cam2 flow=4i"},
		{0, "lanes,camera=cam1,lane=1 n=1i"},  {1, "lanes,camera=cam1,lane=2 n=2i"},
		{1, "lanes,camera=cam3,lane=1 n=2i"},  {2, "lanes,camera=cam7,lane=4,dir=in n=3i"},
	};
	for (size_t k = 0; k < sizeof cat_lines / sizeof cat_lines[0]; k++) {
		tcli_sendf(c[cat_lines[k].node], "%s %" PRId64 "\n", cat_lines[k].line, T0 + 5);
		tcli_sync(c[cat_lines[k].node], NULL, NULL);
		tcli_sendf(rc, "%s %" PRId64 "\n", cat_lines[k].line, T0 + 5);
		tcli_sync(rc, NULL, NULL);
	}
	for (int i = 0; i < 3; i++) {
		ttable a, b;
		tcli_query(c[i], &a, "#!tables");
		tcli_query(rc, &b, "#!tables");
		same_rows(&a, &b, "tables");
		/* header; lanes' dir, n; site's level, zone; traffic's flow, speed */
		cr_assert_eq(a.n, 7, "%zu rows", a.n);
		ttable_free(&a);
		ttable_free(&b);
		tcli_query(c[i], &a, "#!keylist traffic");
		tcli_query(rc, &b, "#!keylist traffic");
		same_rows(&a, &b, "keylist");
		cr_assert_eq(a.n, NCAM + 1);
		ttable_free(&a);
		ttable_free(&b);
		static const char *const cat[] = {
			"/api/v1/tables",
			"/api/v1/tables?format=csv",
			"/api/v1/fields?table=traffic",
			"/api/v1/fields?table=site&format=csv",
			"/api/v1/keys?table=traffic",
			"/api/v1/keys?table=traffic&prefix=cam&limit=4",
			"/api/v1/keys?table=site&format=csv",
		};
		for (size_t k = 0; k < sizeof cat / sizeof cat[0]; k++)
			same_http(hp[i], href, cat[k]);
		same_iql(hp[i], href, "SHOW+MEASUREMENTS");
		same_iql(hp[i], href, "SHOW+FIELD+KEYS");
		same_iql(hp[i], href, "SHOW+FIELD+KEYS+FROM+traffic");
		/* the tags of every node: site's only on node 1, dir on node 2 */
		same_iql(hp[i], href, "SHOW+TAG+KEYS");
		same_iql(hp[i], href, "SHOW+TAG+KEYS+FROM+site");
		same_iql(hp[i], href, "SHOW+TAG+KEYS+FROM+lanes+LIMIT+3+OFFSET+1");
		same_iql(hp[i], href, "SHOW+TAG+VALUES+FROM+site+WITH+KEY+%3D+id");
		/* each key tag's distinct values: cam7 and lane 4 only on node 2 */
		same_iql(hp[i], href, "SHOW+TAG+VALUES+FROM+lanes+WITH+KEY+%3D+camera");
		same_iql(hp[i], href, "SHOW+TAG+VALUES+FROM+lanes+WITH+KEY+IN+(camera,lane)");
		same_iql(
			hp[i], href,
			"SHOW+TAG+VALUES+FROM+lanes+WITH+KEY+%3D+lane+WHERE+camera+%3D+%27cam1%27");
		same_iql(hp[i], href, "SHOW+TAG+VALUES+WITH+KEY+%3D~+/%5E(camera%7Clane)%24/");
	}
	{
		/* what the reference answers: every node's tags and values */
		char h[2048], *b;
		int st = http_get(href, "/query?db=tally&q=SHOW+TAG+KEYS+FROM+lanes", h, sizeof h,
				  &b);
		cr_assert(st == 200 && strstr(b, "[[\"camera\"],[\"dir\"],[\"lane\"]]"), "%d %s",
			  st, b);
		free(b);
		st = http_get(href,
			      "/query?db=tally&q=SHOW+TAG+VALUES+FROM+lanes+WITH+KEY+%3D+camera", h,
			      sizeof h, &b);
		cr_assert(st == 200 && strstr(b, "[[\"camera\",\"cam1\"],[\"camera\",\"cam3\"],"
						 "[\"camera\",\"cam7\"]]"),
			  "%d %s", st, b);
		free(b);
	}
	{
		char h[2048], *b;
		int st = http_get(hp[0], "/api/v1/fields?table=nosuch", h, sizeof h, &b);
		cr_assert(st == 404 && strstr(b, "nosuch"), "%d %s", st, b);
		free(b);
	}

	/* A table two nodes key by different tags (each keys it by the first
	 * tag of its first line): SHOW TAG KEYS lists both, SHOW TAG VALUES
	 * says the keys differ rather than mixing them */
	tcli_sendf(c[0], "mixed,a=1 v=1i %" PRId64 "\n", T0);
	tcli_sync(c[0], NULL, NULL);
	tcli_sendf(c[1], "mixed,b=2 v=1i %" PRId64 "\n", T0);
	tcli_sync(c[1], NULL, NULL);
	{
		char h[2048], *b;
		int st = http_get(hp[2], "/query?db=tally&q=SHOW+TAG+KEYS+FROM+mixed", h, sizeof h,
				  &b);
		cr_assert(st == 200 && strstr(b, "\"values\":[[\"a\"],[\"b\"]]"), "%d %s", st, b);
		free(b);
		st = http_get(hp[2], "/query?db=tally&q=SHOW+FIELD+KEYS+FROM+mixed", h, sizeof h,
			      &b);
		cr_assert(st == 200 && strstr(b, "\"values\":[[\"v\",\"integer\"]]"), "%d %s", st,
			  b);
		free(b);
		st = http_get(hp[2], "/query?db=tally&q=SHOW+TAG+VALUES+FROM+mixed+WITH+KEY+%3D+a",
			      h, sizeof h, &b);
		cr_assert(st == 200 && strstr(b, "\"error\"") &&
				  strstr(b, "keyed by \\\"a\\\" on some nodes and by \\\"b\\\""),
			  "%d %s", st, b);
		free(b);
	}

	/* A stopped node: the answer fails naming it, or is marked */
	char port2[16];
	snprintf(port2, sizeof port2, ":%u", ports[2]);
	kill(n[2].pid, SIGSTOP);
	tsrv_wait_stopped(n[2].pid);
	tcli_query(c[0], &t, DQ, SPLIT, T0, T0 + 86400000000000);
	cr_assert(t.err && strstr(t.err, "did not answer") && strstr(t.err, port2), "%s",
		  t.err ? t.err : "answered");
	ttable_free(&t);
	tcli_sendf(c[0], "#!fanout partial\n");
	free(tcli_expect(c[0], "OK fanout partial"));
	tcli_sendf(c[0], DQ "\n", SPLIT, T0, T0 + 86400000000000);
	char *l;
	int saw_end = 0;
	while ((l = tcli_line(c[0], 30000))) {
		cr_assert(strncmp(l, "ERR", 3), "%s", l);
		if (!strncmp(l, "END ", 4)) {
			cr_assert(strstr(l, " PARTIAL ") && strstr(l, port2), "%s", l);
			saw_end = 1;
		}
		free(l);
		if (saw_end)
			break;
	}
	cr_assert(saw_end);
	char h[2048], *b;
	char path[512];
	snprintf(path, sizeof path,
		 "/api/v1/dist?table=traffic&field=speed&key=cam%d&from=2025-01-01&to=2025-01-02",
		 SPLIT);
	int st = http_get(hp[0], path, h, sizeof h, &b);
	cr_assert(st == 503 && strstr(b, port2), "%d %s", st, b);
	free(b);
	strcat(path, "&partial=mark");
	st = http_get(hp[0], path, h, sizeof h, &b);
	cr_assert(st == 200 && strstr(b, "\"partial\"") && strstr(h, "X-Tally-Partial") &&
			  strstr(h, port2),
		  "%d %s %s", st, h, b);
	free(b);
	st = http_get(hp[0], "/api/v1/tables", h, sizeof h, &b);
	cr_assert(st == 503 && strstr(b, port2), "%d %s", st, b);
	free(b);
	st = http_get(hp[0], "/api/v1/keys?table=traffic&partial=mark", h, sizeof h, &b);
	cr_assert(st == 200 && strstr(b, "\"partial\"") && strstr(h, port2), "%d %s", st, b);
	free(b);
	/* InfluxQL's SHOW TAG KEYS and SHOW TAG VALUES: the statement's error
	 * names the node, or partial=mark's messages do beside the others' */
	static const struct {
		const char *q, *mine, *its; /* a row of a live node's, of node 2's */
	} iq_stopped[] = {
		{"SHOW+TAG+KEYS", "[\"zone\"]", "[\"dir\"]"},
		{"SHOW+TAG+VALUES+FROM+lanes+WITH+KEY+%3D+camera", "[\"camera\",\"cam3\"]",
		 "[\"camera\",\"cam7\"]"},
	};
	for (size_t k = 0; k < sizeof iq_stopped / sizeof iq_stopped[0]; k++) {
		snprintf(path, sizeof path, "/query?db=tally&q=%s", iq_stopped[k].q);
		st = http_get(hp[0], path, h, sizeof h, &b);
		cr_assert(st == 200 && strstr(b, "\"error\"") && strstr(b, port2), "%s: %d %s",
			  iq_stopped[k].q, st, b);
		free(b);
		strcat(path, "&partial=mark");
		st = http_get(hp[0], path, h, sizeof h, &b);
		cr_assert(st == 200 && !strstr(b, "\"error\"") && strstr(b, "\"messages\"") &&
				  strstr(b, "partial: 127.0.0.1") && strstr(b, port2) &&
				  strstr(b, iq_stopped[k].mine) && !strstr(b, iq_stopped[k].its),
			  "%s: %d %s", iq_stopped[k].q, st, b);
		free(b);
	}
	tcli_sendf(c[1], "#!tables\n");
	l = tcli_line(c[1], 30000);
	cr_assert(l && !strncmp(l, "ERR", 3) && strstr(l, port2), "%s", l ? l : "no answer");
	free(l);

	kill(n[2].pid, SIGCONT);
	cl_down(n, 3, &ref, c, rc);
}

/* The merge of the nodes' pairs (fandist_read), without servers: an exact
 * part and a sketch make a sketch that says so; parts at two resolutions
 * and a malformed row are errors naming what is wrong. */
static int merged(const char *text, tally_dist **d, char *err)
{
	fan_reader rd;
	fan_reader_open(&rd, text, strlen(text));
	return fandist_read(&rd, d, err, 300);
}

Test(cluster_dist, pairs_of_exact_and_sketch_parts_merge_into_a_sketch)
{
	char err[300];
	tally_dist *d;
	cr_assert_eq(merged("exp\tkind\tunits\tcount\n"
			    "-1\texact\t573\t2\n-1\texact\t600\t1\n"
			    "-1\texact\t573\t4\n"
			    "END 3\n",
			    &d, err),
		     0, "%s", err);
	double v;
	cr_assert_eq(tally_dist_count(d), 7);
	cr_assert_eq(tally_dist_error(d), 0);
	cr_assert_eq(tally_dist_quantile(d, 0.85, &v), 0); /* rank 6 of 7: 57.3 */
	cr_assert_eq(v, 57.3);
	cr_assert_eq(tally_dist_quantile(d, 0.9, &v), 0); /* rank 7 */
	cr_assert_eq(v, 60.0);
	cr_assert_eq(tally_dist_count_below(d, 60), 6);
	tally_dist_free(d);

	/* node 1 exact, node 2 a sketch (two of its logarithmic buckets) */
	cr_assert_eq(merged("exp\tkind\tunits\tcount\n"
			    "-1\texact\t573\t2\n"
			    "-1\tsketch\t413\t1\n-1\tsketch\t416\t3\n"
			    "END 3\n",
			    &d, err),
		     0, "%s", err);
	cr_assert_eq(tally_dist_count(d), 6);
	cr_assert_gt(tally_dist_error(d), 0, "a sketch part makes the whole a sketch");
	tally_dist_free(d);

	cr_assert_eq(merged("exp\tkind\tunits\tcount\n-1\texact\t573\t2\n0\texact\t57\t1\nEND 2\n",
			    &d, err),
		     TALLY_EINVAL);
	cr_assert(strstr(err, "do not merge"), "%s", err);
	cr_assert_eq(merged("exp\tkind\tunits\tcount\n-1\texact\t573\t2\n-1\tbogus\t1\t1\nEND 2\n",
			    &d, err),
		     TALLY_EINVAL);
	cr_assert(strstr(err, "row 2") && strstr(err, "bogus"), "%s", err);
	cr_assert_eq(merged("exp\tkind\tunits\tcount\n-1\texact\t573\t0\nEND 1\n", &d, err),
		     TALLY_EINVAL);
	/* no rows: an empty distribution */
	cr_assert_eq(merged("exp\tkind\tunits\tcount\nEND 0\n", &d, err), 0, "%s", err);
	cr_assert_eq(tally_dist_count(d), 0);
	cr_assert_eq(tally_dist_quantile(d, 0.5, &v), TALLY_ENOTFOUND);
	tally_dist_free(d);
}

/* How many events of cam node holds in [from, to) (node < 0: every
 * node's). */
static uint64_t held(int cam, int node, int64_t from, int64_t to)
{
	uint64_t n = 0;
	for (int i = 0; i < NEV; i++)
		n += evs[i].cam == cam && (node < 0 || cl_node_of(&set, i) == node) &&
		     evs[i].ts >= from && evs[i].ts < to;
	return n;
}

/* The query q on c is an error saying why. */
static void refused(tcli *c, const char *q, const char *why)
{
	ttable t;
	tcli_query(c, &t, "%s", q);
	cr_assert(t.err && strstr(t.err, why), "%s: %s", q, t.err ? t.err : "answered");
	ttable_free(&t);
}

/* The counts of the "pairs step=" answer to q on c, added up; with step,
 * every row's window starts at from or off past a multiple of step. */
static uint64_t pairs_total(tcli *c, const char *q, int64_t from, int64_t step, int64_t off)
{
	ttable t;
	tcli_query(c, &t, "%s", q);
	cr_assert_null(t.err, "%s: %s", q, t.err);
	cr_assert_str_eq(t.rows[0], "start\texp\tkind\tunits\tcount");
	uint64_t sum = 0;
	for (size_t r = 1; r < t.n; r++) {
		int64_t at;
		cr_assert_eq(cmd_parse_time(tcell(t.rows[r], 0), 0, &at), 0, "%s", t.rows[r]);
		cr_assert(!step || at == from || at % step == off, "%s", t.rows[r]);
		sum += strtoull(tcell(t.rows[r], 4), NULL, 10);
	}
	ttable_free(&t);
	return sum;
}

/* A stepped /api/v1/dist across nodes used to ask every node once per
 * window (24 round trips here); each node now answers every window's
 * pairs at once ("#!dist ... pairs step=1h"), so each node's `queries`
 * grows by one. Every window equals the reference's and brute force. */
Test(cluster_dist, stepped_dist_asks_each_node_once, .timeout = 280)
{
	CLUSTER_UP();
	const int64_t from = T0 + INT64_C(1200) * 1000000000,
		      to = T0 + INT64_C(83400) * 1000000000 + 500000000, H = INT64_C(3600000000000);
	static const char path[] = "/api/v1/dist?table=traffic&field=speed&key=cam5"
				   "&from=2025-01-01T00:20:00Z&to=2025-01-01T23:10:00.5Z&step=1h"
				   "&q=0.85,0.5&above=90&format=csv";
	for (int asked = 0; asked < 3; asked++) {
		uint64_t before[3];
		for (int i = 0; i < 3; i++)
			before[i] = tstat(c[i], "queries");
		cl_http a = cl_get(tsrv_http_port(&n[asked]), path);
		for (int i = 0; i < 3; i++) {
			uint64_t q = tstat(c[i], "queries") - before[i];
			cr_assert_eq(q, 1, "node %d answered %llu queries for 24 windows", i,
				     (unsigned long long)q);
		}
		cl_http b = cl_get(tsrv_http_port(&ref), path);
		cr_assert_eq(a.status, 200, "%s", a.body);
		cr_assert_eq(b.status, 200, "%s", b.body);
		cr_assert_str_eq(a.body, b.body);
		cr_assert_null(strstr(a.head, "X-Tally-Partial"), "%s", a.head);
		/* brute force, window by window: time,count,q=0.85,q=0.5,above=90,error */
		char *save, *line = strtok_r(a.body, "\r\n", &save);
		cr_assert(line && !strncmp(line, "time,count,q=0.85,q=0.5,above=90", 32), "%s",
			  line);
		size_t rows = 0;
		for (int64_t ws = T0; ws < to; ws += H) {
			int64_t lo = ws < from ? from : ws, hi = ws + H < to ? ws + H : to;
			static int v[NEV];
			size_t k = values(SPLIT, lo, hi, v);
			if (!k)
				continue;
			line = strtok_r(NULL, "\r\n", &save);
			cr_assert_not_null(line, "window %lld missing", (long long)ws);
			char t[48], want[200];
			cmd_format_time(ws, t);
			uint64_t above = 0;
			for (size_t i = 0; i < k; i++)
				above += v[i] > 900;
			snprintf(want, sizeof want, "%s,%zu,%g,%g,%llu,0", t, k,
				 v[(85 * k + 99) / 100 - 1] / 10.0, v[(k + 1) / 2 - 1] / 10.0,
				 (unsigned long long)above);
			cr_assert_str_eq(line, want);
			rows++;
		}
		cr_assert_null(strtok_r(NULL, "\r\n", &save));
		cr_assert_gt(rows, 20);
		cl_http_free(&a);
		cl_http_free(&b);
	}

	/* InfluxQL's PERCENTILE by time across nodes: every window of a key
	 * in one ask of every node, so 24 windows cost each node what 2 do */
	static const char *const iq[2] = {
		"SELECT+PERCENTILE(speed,85),MEDIAN(speed)+FROM+traffic+WHERE+camera=%27cam5%27+"
		"AND+time+>=+%272025-01-01T00:20:00Z%27+AND+time+<+%272025-01-01T23:10:00Z%27+"
		"GROUP+BY+time(1h)",
		"SELECT+PERCENTILE(speed,85),MEDIAN(speed)+FROM+traffic+WHERE+camera=%27cam5%27+"
		"AND+time+>=+%272025-01-01T00:20:00Z%27+AND+time+<+%272025-01-01T23:10:00Z%27+"
		"GROUP+BY+time(12h)",
	};
	uint64_t asked[2][3];
	for (int k = 0; k < 2; k++) {
		uint64_t before[3];
		for (int i = 0; i < 3; i++)
			before[i] = tstat(c[i], "queries");
		same_iql(tsrv_http_port(&n[k + 1]), tsrv_http_port(&ref), iq[k]);
		for (int i = 0; i < 3; i++)
			asked[k][i] = tstat(c[i], "queries") - before[i];
	}
	for (int i = 0; i < 3; i++)
		cr_assert_eq(asked[0][i], asked[1][i],
			     "node %d: %llu queries for 24 windows, %llu for 2", i,
			     (unsigned long long)asked[0][i], (unsigned long long)asked[1][i]);

	/* a node's part (#!fanout off): every window's own pairs after its
	 * start; step= only with pairs */
	ttable t;
	tcli_sendf(c[1], "#!fanout off\n");
	free(tcli_expect(c[1], "OK fanout off"));
	tcli_query(c[1], &t,
		   "#!dist traffic speed cam%d 2025-01-01T00:20:00Z 2025-01-01T23:10:00.5Z pairs "
		   "step=1h",
		   SPLIT);
	cr_assert_null(t.err, "%s", t.err);
	cr_assert_str_eq(t.rows[0], "start\texp\tkind\tunits\tcount");
	uint64_t per[24] = {0}, sum = 0;
	int64_t last = INT64_MIN;
	for (size_t r = 1; r < t.n; r++) {
		int64_t at;
		cr_assert_eq(cmd_parse_time(tcell(t.rows[r], 0), 0, &at), 0, "%s", t.rows[r]);
		cr_assert(at >= last && at >= from && at < to && (at == from || at % H == 0), "%s",
			  t.rows[r]);
		last = at;
		per[(at - T0) / H] += strtoull(tcell(t.rows[r], 4), NULL, 10);
	}
	for (int w = 0; w < 24; w++) {
		int64_t lo = T0 + w * H < from ? from : T0 + w * H;
		int64_t hi = T0 + (w + 1) * H < to ? T0 + (w + 1) * H : to;
		uint64_t mine = lo < hi ? held(SPLIT, 1, lo, hi) : 0;
		cr_assert_eq(per[w], mine, "window %d: %llu, want %llu", w,
			     (unsigned long long)per[w], (unsigned long long)mine);
		sum += per[w];
	}
	cr_assert_eq(sum, held(SPLIT, 1, from, to));
	ttable_free(&t);
	/* all of int64 in windows of 800 days: every event once, no
	 * overflow at the ends; wider windows, or minutes (too many
	 * windows), refused */
	cr_assert_eq(pairs_total(c[1],
				 "#!dist traffic speed cam5 -9223372036854775808 "
				 "9223372036854775807 pairs step=800d",
				 0, 0, 0),
		     held(SPLIT, 1, INT64_MIN, INT64_MAX));
	refused(c[1],
		"#!dist traffic speed cam1 -9223372036854775808 9223372036854775807 pairs step=1m",
		"more than 200000 windows");
	for (int k = 0; k < 2; k++) { /* the same bound over HTTP, peers or not */
		cl_http h = cl_get(tsrv_http_port(k ? &ref : &n[0]),
				   "/api/v1/dist?table=traffic&field=speed&key=cam1&from="
				   "-9223372036854775808&to=9223372036854775807&step=36500d");
		cr_assert(h.status == 400 && strstr(h.body, "834 days"), "%d %s", h.status, h.body);
		cl_http_free(&h);
	}
	refused(c[1], "#!dist traffic speed cam1 2025-01-01 1d pairs step=36500d",
		"step: wider than");
	refused(c[1],
		"#!dist traffic speed cam1 2025-01-01 1d pairs step=1h origin=1970-01-01T02:00:00Z",
		"origin= is asked with step=");
	/* windows from an origin: at half past the hour */
	cr_assert_eq(pairs_total(c[1],
				 "#!dist traffic speed cam5 2025-01-01T00:20:00Z "
				 "2025-01-01T23:10:00.5Z pairs step=1h origin=1970-01-01T00:30:00Z",
				 from, H, H / 2),
		     held(SPLIT, 1, from, to));
	refused(c[1], "#!dist traffic speed cam1 2025-01-01 1d q=0.5 step=1h",
		"step= is asked with pairs only");

	cl_down(n, 3, &ref, c, rc);
}

/* A SELECT took its schema (key tag, field types) from the asked node's
 * catalog alone: a field only another node held was left out (no series)
 * and a measurement only another node held was an error. It now reads
 * the union of every node's catalog, like SHOW. */
Test(cluster_dist, select_reads_the_schema_of_every_node, .timeout = 280)
{
	CLUSTER_UP();
	/* field flow on node 2 only, measurement site on node 1 only */
	static const struct {
		int node;
		const char *line;
	} lines[] = {
		{2, "traffic,camera=cam2 flow=4i"},
		{2, "traffic,camera=cam5 flow=7i"},
		{1, "site,id=s1,zone=north level=3i"},
		{1, "site,id=s2,zone=south level=5i"},
	};
	for (size_t k = 0; k < sizeof lines / sizeof lines[0]; k++) {
		tcli_sendf(c[lines[k].node], "%s %" PRId64 "\n", lines[k].line, T0 + 5 + (int)k);
		tcli_sync(c[lines[k].node], NULL, NULL);
		tcli_sendf(rc, "%s %" PRId64 "\n", lines[k].line, T0 + 5 + (int)k);
		tcli_sync(rc, NULL, NULL);
	}
	static const char *const qs[] = {
		"SELECT+count(flow),sum(flow)+FROM+traffic+WHERE+time+>=+%272025-01-01T00:00:00Z"
		"%27+AND+time+<+%272025-01-02T00:00:00Z%27+GROUP+BY+camera",
		"SELECT+max(flow),count(speed)+FROM+traffic+WHERE+camera=%27cam5%27+AND+time+>=+"
		"%272025-01-01T00:00:00Z%27+AND+time+<+%272025-01-02T00:00:00Z%27",
		"SELECT+sum(level)+FROM+site+WHERE+time+>=+%272025-01-01T00:00:00Z%27+AND+time+<+"
		"%272025-01-02T00:00:00Z%27+GROUP+BY+id",
		"SELECT+mean(level)+FROM+site+WHERE+id=%27s2%27+AND+time+>=+%272025-01-01T00:00:00Z"
		"%27+AND+time+<+%272025-01-01T01:00:00Z%27+GROUP+BY+time(30m)",
	};
	for (int i = 0; i < 3; i++)
		for (size_t k = 0; k < sizeof qs / sizeof qs[0]; k++)
			same_iql(tsrv_http_port(&n[i]), tsrv_http_port(&ref), qs[k]);
	/* and the numbers are the events' */
	char path[1024], h[2048], *b;
	snprintf(path, sizeof path, "/query?db=tally&q=%s", qs[0]);
	cr_assert_eq(http_get(tsrv_http_port(&n[0]), path, h, sizeof h, &b), 200);
	cr_assert(strstr(b, "[\"1970-01-01T00:00:00Z\",1,7]") || strstr(b, ",1,7]"), "%s", b);
	cr_assert(strstr(b, ",1,4]"), "%s", b);
	free(b);
	cl_down(n, 3, &ref, c, rc);
}
