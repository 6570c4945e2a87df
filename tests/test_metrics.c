/*
 * test_metrics.c — the Prometheus exposition (wire/metrics.c): a server
 * with made-up counters over a real embedded store, rendered and parsed
 * back line by line (syntax, naming conventions, no duplicates, cumulative
 * histograms, values equal to their sources); docs/metrics.md lists every
 * metric; promtool checks the output and the documented alert rules when
 * Debian's prometheus package is installed.
 */
#include <criterion/criterion.h>
#include <ctype.h>
#include <inttypes.h>
#include <math.h>
#include <sys/wait.h>

#include "metrics.h"
#include "server.h"
#include "testutil.h"

/* ---------------------------------------------------------------- parsing */

#define MAX_SERIES 512

typedef struct parsed {
	int n;
	char name[MAX_SERIES][128];
	char labels[MAX_SERIES][256]; /* as written between the braces */
	double value[MAX_SERIES];
	int nfam;
	char fam[MAX_SERIES][128];
	char type[MAX_SERIES][16];
} parsed;

static int name_ok(const char *s, size_t n)
{
	if (n == 0 || !(isalpha((unsigned char)s[0]) || s[0] == '_' || s[0] == ':'))
		return 0;
	for (size_t i = 1; i < n; i++)
		if (!(isalnum((unsigned char)s[i]) || s[i] == '_' || s[i] == ':'))
			return 0;
	return 1;
}

static int ends_with(const char *s, const char *suf)
{
	size_t a = strlen(s), b = strlen(suf);
	return a >= b && !strcmp(s + a - b, suf);
}

/* Label pairs name="value" with \\, \" and \n escapes only; returns 1 if
 * well formed. */
static int labels_ok(const char *p, const char *e)
{
	while (p < e) {
		const char *q = p;
		while (q < e && *q != '=')
			q++;
		if (q == e || !name_ok(p, (size_t)(q - p)) || q + 1 >= e || q[1] != '"')
			return 0;
		for (p = q + 2;; p++) {
			if (p >= e)
				return 0;
			if (*p == '\\') {
				if (p + 1 >= e || (p[1] != '\\' && p[1] != '"' && p[1] != 'n'))
					return 0;
				p++;
			} else if (*p == '"') {
				break;
			} else if (*p == '\n') {
				return 0;
			}
		}
		p++;
		if (p < e && *p++ != ',')
			return 0;
	}
	return 1;
}

/* Parses an exposition, asserting its syntax and conventions. */
static void parse(const char *text, parsed *out)
{
	memset(out, 0, sizeof *out);
	const char *cur_fam = NULL, *cur_type = NULL, *help_of = NULL;
	char help_name[128] = "";
	for (const char *p = text; *p;) {
		const char *nl = strchr(p, '\n');
		cr_assert(nl, "every line ends with a newline");
		char line[1024];
		size_t n = (size_t)(nl - p);
		cr_assert_lt(n, sizeof line);
		memcpy(line, p, n);
		line[n] = 0;
		p = nl + 1;
		if (!strncmp(line, "# HELP ", 7)) {
			char *sp = strchr(line + 7, ' ');
			cr_assert(sp, "%s", line);
			*sp = 0;
			cr_assert(name_ok(line + 7, strlen(line + 7)), "%s", line);
			for (int i = 0; i < out->nfam; i++)
				cr_assert_str_neq(out->fam[i], line + 7, "HELP twice: %s",
						  line + 7);
			snprintf(help_name, sizeof help_name, "%s", line + 7);
			help_of = help_name;
			cr_assert(strlen(sp + 1) > 0, "empty help for %s", line + 7);
			continue;
		}
		if (!strncmp(line, "# TYPE ", 7)) {
			char *sp = strchr(line + 7, ' ');
			cr_assert(sp, "%s", line);
			*sp = 0;
			cr_assert(help_of && !strcmp(help_of, line + 7), "TYPE %s without its HELP",
				  line + 7);
			help_of = NULL;
			const char *t = sp + 1;
			cr_assert(!strcmp(t, "counter") || !strcmp(t, "gauge") ||
					  !strcmp(t, "histogram"),
				  "type %s", t);
			for (int i = 0; i < out->nfam; i++)
				cr_assert_str_neq(out->fam[i], line + 7, "family twice: %s",
						  line + 7);
			cr_assert_lt(out->nfam, MAX_SERIES);
			strcpy(out->fam[out->nfam], line + 7);
			strcpy(out->type[out->nfam], t);
			cur_fam = out->fam[out->nfam];
			cur_type = out->type[out->nfam++];
			cr_assert(!strncmp(cur_fam, "tally_", 6), "%s: no tally_ prefix", cur_fam);
			cr_assert_eq(!strcmp(t, "counter"), ends_with(cur_fam, "_total"),
				     "%s: counters and only counters end in _total", cur_fam);
			/* units: a name with bytes or seconds ends with its unit */
			if (strstr(cur_fam, "bytes"))
				cr_assert(ends_with(cur_fam, "_bytes") ||
						  ends_with(cur_fam, "_bytes_total"),
					  "%s", cur_fam);
			if (strstr(cur_fam, "seconds"))
				cr_assert(ends_with(cur_fam, "_seconds") ||
						  ends_with(cur_fam, "_seconds_total"),
					  "%s", cur_fam);
			continue;
		}
		cr_assert(line[0] != '#', "unknown comment: %s", line);
		cr_assert(cur_fam, "sample before any TYPE: %s", line);
		char *sp = strrchr(line, ' ');
		cr_assert(sp, "%s", line);
		*sp = 0;
		const char *val = sp + 1;
		char *brace = strchr(line, '{');
		const char *labels = "";
		if (brace) {
			cr_assert_eq(line[strlen(line) - 1], '}', "%s", line);
			line[strlen(line) - 1] = 0;
			*brace = 0;
			labels = brace + 1;
			cr_assert(labels_ok(labels, labels + strlen(labels)), "labels of %s: %s",
				  line, labels);
		}
		cr_assert(name_ok(line, strlen(line)), "name %s", line);
		if (!strcmp(cur_type, "histogram")) {
			char b[160];
			int ok = 0;
			for (int k = 0; k < 3; k++) {
				snprintf(b, sizeof b, "%s%s", cur_fam,
					 (const char *[]){"_bucket", "_sum", "_count"}[k]);
				ok |= !strcmp(b, line);
			}
			cr_assert(ok, "%s is not of histogram %s", line, cur_fam);
		} else {
			cr_assert_str_eq(line, cur_fam, "sample of another family");
		}
		double v;
		if (!strcmp(val, "+Inf"))
			v = INFINITY;
		else if (!strcmp(val, "-Inf"))
			v = -INFINITY;
		else if (!strcmp(val, "NaN"))
			v = NAN;
		else {
			char *e;
			v = strtod(val, &e);
			cr_assert(e != val && *e == 0, "value '%s' of %s", val, line);
		}
		for (int i = 0; i < out->n; i++)
			cr_assert(strcmp(out->name[i], line) || strcmp(out->labels[i], labels),
				  "series twice: %s{%s}", line, labels);
		cr_assert_lt(out->n, MAX_SERIES);
		strcpy(out->name[out->n], line);
		strcpy(out->labels[out->n], labels);
		out->value[out->n++] = v;
	}
	cr_assert_null(help_of, "HELP without TYPE");
}

static double value_of(const parsed *ps, const char *name, const char *labels)
{
	for (int i = 0; i < ps->n; i++)
		if (!strcmp(ps->name[i], name) && !strcmp(ps->labels[i], labels))
			return ps->value[i];
	cr_assert_fail("no series %s{%s}", name, labels);
	return 0;
}

/* The buckets of histogram name (labels without le) are cumulative, their
 * bounds increasing up to +Inf, which equals _count. */
static void check_hist(const parsed *ps, const char *name)
{
	char b[160];
	snprintf(b, sizeof b, "%s_bucket", name);
	double prev_le = -1, prev = 0;
	int seen_inf = 0, nb = 0;
	for (int i = 0; i < ps->n; i++) {
		if (strcmp(ps->name[i], b))
			continue;
		const char *le = strstr(ps->labels[i], "le=\"");
		cr_assert(le, "%s without le", b);
		double bound = !strncmp(le + 4, "+Inf", 4) ? INFINITY : strtod(le + 4, NULL);
		cr_assert_gt(bound, prev_le, "%s: bounds not increasing", name);
		cr_assert_geq(ps->value[i], prev, "%s: buckets not cumulative", name);
		prev_le = bound;
		prev = ps->value[i];
		seen_inf |= isinf(bound);
		nb++;
	}
	cr_assert(seen_inf && nb == METRICS_HIST_BOUNDS + 1, "%s: %d buckets", name, nb);
	snprintf(b, sizeof b, "%s_count", name);
	cr_assert_eq(value_of(ps, b, ""), prev);
}

/* ---------------------------------------------------------------- fixture */

static char *dir;
static srv s;
static char *out;
static size_t len, cap;
static parsed ps;

static void setup(void)
{
	dir = tu_tmpdir();
	tally_options o;
	tally_options_init(&o);
	o.log_fn = tu_quiet_log;
	memset(&s, 0, sizeof s);
	cr_assert_eq(tally_db_open(dir, &o, &s.db), 0, "%s", tally_errmsg());
	tally_writer *w;
	cr_assert_eq(tally_writer_open(s.db, -1, &w), 0);
	/* three events, the last one late (an hour before its key's newest) */
	const char *lp = "traffic,camera=KV1 speed=80 1700000000000000000\n"
			 "traffic,camera=KV1 speed=90 1700007200000000000\n"
			 "traffic,camera=KV1 speed=70 1700003600000000000\n"
			 "traffic,camera=KV1 speed=bad 1700003600000000000\n";
	cr_assert_eq(tally_write_lp(w, lp, strlen(lp), TALLY_PREC_NS, NULL), 0);
	tally_writer_close(w);

	s.n_shards = 3;
	s.shards = calloc(3, sizeof *s.shards);
	for (unsigned i = 0; i < 3; i++) {
		wstats *st = &s.shards[i].st;
		atomic_store(&st->lines_accepted, 100 * (i + 1));
		atomic_store(&st->lines_rejected, i);
		atomic_store(&st->bytes_in, UINT64_C(1) << (40 + i));
		atomic_store(&st->conns_total, 10 + i);
		atomic_store(&st->full_waits, 5);
		atomic_store(&s.shards[i].load, i + 1);
	}
	atomic_store(&s.n_conns, 6);
	atomic_store(&s.sync_done, 77);
	s.started = srv_now() - 5 * INT64_C(1000000000);
	static const int64_t obs[] = {1000, 8000, 8001, 5000000, 10000000000, -5};
	for (size_t i = 0; i < sizeof obs / sizeof obs[0]; i++)
		metrics_hist_observe(&s.sync_seconds, obs[i]);

	out = NULL;
	len = cap = 0;
	cr_assert_eq(metrics_render(&s, &out, &len, &cap), 0);
	cr_assert_eq(strlen(out), len);
	parse(out, &ps);
}

static void teardown(void)
{
	free(out);
	free(s.shards);
	tally_db_close(s.db);
	tu_rmrf(dir);
	free(dir);
}

/* ---------------------------------------------------------------- tests */

Test(metrics, every_line_is_valid_exposition_with_conventional_names, .init = setup,
     .fini = teardown)
{
	cr_assert_gt(ps.nfam, 50);
	check_hist(&ps, "tally_wal_sync_duration_seconds");
}

Test(metrics, values_equal_their_sources, .init = setup, .fini = teardown)
{
	tally_stats es;
	cr_assert_eq(tally_db_stats(s.db, &es), 0);
	cr_assert_eq(value_of(&ps, "tally_events_total", ""), 3);
	cr_assert_eq(value_of(&ps, "tally_events_total", ""), (double)es.events);
	cr_assert_eq(value_of(&ps, "tally_late_events_total", ""), (double)es.late_events);
	cr_assert_eq(value_of(&ps, "tally_rejected_lines_total", ""), 1);
	cr_assert_eq(value_of(&ps, "tally_keys", ""), 1);
	cr_assert_eq(value_of(&ps, "tally_memory_limit_bytes", ""), (double)es.memory_limit);
	cr_assert_eq(value_of(&ps, "tally_memtable_bytes", ""), (double)es.memtable_bytes);
	cr_assert_eq(value_of(&ps, "tally_tier_state", "state=\"off\""), 1);
	cr_assert_eq(value_of(&ps, "tally_tier_state", "state=\"failing\""), 0);
	/* server counters: summed over the shards, and per shard */
	cr_assert_eq(value_of(&ps, "tally_lines_accepted_total", ""), 600);
	cr_assert_eq(value_of(&ps, "tally_lines_rejected_total", ""), 3);
	cr_assert_eq(value_of(&ps, "tally_received_bytes_total", ""),
		     (double)((UINT64_C(1) << 40) + (UINT64_C(1) << 41) + (UINT64_C(1) << 42)));
	cr_assert_eq(value_of(&ps, "tally_connections_accepted_total", ""), 33);
	cr_assert_eq(value_of(&ps, "tally_full_waits_total", ""), 15);
	cr_assert_eq(value_of(&ps, "tally_shard_lines_accepted_total", "shard=\"2\""), 300);
	cr_assert_eq(value_of(&ps, "tally_shard_connections", "shard=\"0\""), 1);
	cr_assert_eq(value_of(&ps, "tally_connections", ""), 6);
	cr_assert_eq(value_of(&ps, "tally_syncs_done_total", ""), 77);
	double up = value_of(&ps, "tally_uptime_seconds", "");
	cr_assert(up >= 5 && up < 5000, "uptime %g", up);
	/* the histogram: 1 us, 8 us and 0 (from -5) in the first bucket, 8.001
	 * us in the second, 5 ms in (4.096, 8.192] ms, 10 s above all */
	const char *h = "tally_wal_sync_duration_seconds_bucket";
	cr_assert_eq(value_of(&ps, h, "le=\"8e-06\""), 3);
	cr_assert_eq(value_of(&ps, h, "le=\"1.6e-05\""), 4);
	cr_assert_eq(value_of(&ps, h, "le=\"0.004096\""), 4);
	cr_assert_eq(value_of(&ps, h, "le=\"0.008192\""), 5);
	cr_assert_eq(value_of(&ps, h, "le=\"8.388608\""), 5);
	cr_assert_eq(value_of(&ps, h, "le=\"+Inf\""), 6);
	cr_assert_eq(value_of(&ps, "tally_wal_sync_duration_seconds_count", ""), 6);
	cr_assert_float_eq(value_of(&ps, "tally_wal_sync_duration_seconds_sum", ""),
			   (1000 + 8000 + 8001 + 5000000 + 10000000000.0) / 1e9, 1e-12);
}

Test(metrics, labels_and_help_are_escaped)
{
	char l[64];
	cr_assert_eq(metrics_label(l, sizeof l, "path", "a\"b\\c\nd"), 17);
	cr_assert_str_eq(l, "path=\"a\\\"b\\\\c\\nd\"");
	char *b = NULL;
	size_t n = 0, c = 0;
	cr_assert_eq(metrics_family(&b, &n, &c, "tally_x_total", "counter", "a\\b\nc"), 0);
	cr_assert_eq(metrics_sample(&b, &n, &c, "tally_x_total", l, 1.5), 0);
	cr_assert_str_eq(b, "# HELP tally_x_total a\\\\b\\nc\n# TYPE tally_x_total counter\n"
			    "tally_x_total{path=\"a\\\"b\\\\c\\nd\"} 1.5\n");
	char small[10];
	cr_assert_eq(metrics_label(small, sizeof small, "path", "too long a value"), 0);
	metrics_hist h = {0};
	metrics_hist_observe(&h, 1);
	cr_assert_eq(metrics_hist_put(&b, &n, &c, "tally_x_seconds", "path=\"/w\"", &h), 0);
	cr_assert(strstr(b, "tally_x_seconds_bucket{path=\"/w\",le=\"8e-06\"} 1\n"));
	cr_assert(strstr(b, "tally_x_seconds_sum{path=\"/w\"} 1e-09\n"));
	cr_assert(strstr(b, "tally_x_seconds_count{path=\"/w\"} 1\n"));
	free(b);
}

/* A histogram observed from several threads while it is rendered: every
 * render is cumulative and its +Inf equals its _count. */
static metrics_hist shared;

static void *observer(void *arg)
{
	(void)arg;
	for (int i = 0; i < 200000; i++)
		metrics_hist_observe(&shared, (int64_t)(i % 4000) * 997);
	return NULL;
}

Test(metrics, a_histogram_renders_consistently_while_observed)
{
	pthread_t t[2];
	for (int i = 0; i < 2; i++)
		cr_assert_eq(pthread_create(&t[i], NULL, observer, NULL), 0);
	for (int r = 0; r < 50; r++) {
		char *b = NULL;
		size_t n = 0, c = 0;
		cr_assert_eq(metrics_family(&b, &n, &c, "tally_t_seconds", "histogram", "t"), 0);
		cr_assert_eq(metrics_hist_put(&b, &n, &c, "tally_t_seconds", "", &shared), 0);
		static parsed p;
		parse(b, &p);
		check_hist(&p, "tally_t_seconds");
		free(b);
	}
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	uint64_t total = 0;
	for (int i = 0; i <= METRICS_HIST_BOUNDS; i++)
		total += atomic_load(&shared.bucket[i]);
	cr_assert_eq(total, 400000);
}

static char *read_file(const char *path)
{
	FILE *f = fopen(path, "r");
	cr_assert(f, "%s", path);
	static char text[1 << 16];
	size_t n = fread(text, 1, sizeof text - 1, f);
	fclose(f);
	text[n] = 0;
	return text;
}

Test(metrics, docs_list_every_metric, .init = setup, .fini = teardown)
{
	const char *doc = read_file(TALLY_SOURCE_DIR "/docs/metrics.md");
	for (int i = 0; i < ps.nfam; i++) {
		char q[160];
		snprintf(q, sizeof q, "`%s", ps.fam[i]);
		char q2[160];
		snprintf(q2, sizeof q2, ", `%s`", ps.fam[i]);
		cr_assert(strstr(doc, q) || strstr(doc, q2), "docs/metrics.md misses %s",
			  ps.fam[i]);
	}
}

/* Runs cmd; its exit status, output in buf. */
static int run_cmd(const char *cmd, char *buf, size_t bufcap)
{
	FILE *p = popen(cmd, "r");
	cr_assert(p);
	size_t n = fread(buf, 1, bufcap - 1, p);
	buf[n] = 0;
	int st = pclose(p);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Writes text into dir/file and runs "promtool check WHAT dir/file" (what
 * may end in '<' to feed the file on stdin); asserts it succeeds, its
 * output in res. Skips the test where promtool is not installed. */
static void promtool(const char *what, const char *file, const char *text, size_t n, char *res,
		     size_t rescap)
{
	if (system("command -v promtool >/dev/null 2>&1") != 0)
		cr_skip_test("promtool not installed (Debian package prometheus)");
	char path[256], cmd[512];
	snprintf(path, sizeof path, "%s/%s", dir, file);
	FILE *f = fopen(path, "w");
	cr_assert(f);
	fwrite(text, 1, n, f);
	fclose(f);
	snprintf(cmd, sizeof cmd, "promtool check %s %s 2>&1", what, path);
	int rc = run_cmd(cmd, res, rescap);
	cr_assert_eq(rc, 0, "%s: %d\n%s", cmd, rc, res);
}

Test(metrics, promtool_accepts_the_exposition, .init = setup, .fini = teardown)
{
	char res[4096];
	promtool("metrics <", "metrics.txt", out, len, res, sizeof res);
	cr_assert_eq(strlen(res), 0, "promtool lint: %s", res);
}

Test(metrics, promtool_accepts_the_documented_alert_rules, .init = setup, .fini = teardown)
{
	const char *doc = read_file(TALLY_SOURCE_DIR "/docs/metrics.md");
	const char *a = strstr(doc, "```yaml\n");
	cr_assert(a, "docs/metrics.md has no yaml block");
	a += 8;
	const char *e = strstr(a, "```");
	cr_assert(e);
	/* every metric a rule names is one tallyd writes */
	for (const char *p = a; (p = strstr(p, "tally_")) && p < e;) {
		size_t n = strspn(p, "abcdefghijklmnopqrstuvwxyz0123456789_");
		char name[128];
		snprintf(name, sizeof name, "%.*s", (int)n, p);
		int found = 0;
		for (int i = 0; i < ps.n; i++)
			found |= !strcmp(ps.name[i], name);
		cr_assert(found, "a rule names %s, which tallyd does not write", name);
		p += n;
	}
	char res[4096];
	promtool("rules", "rules.yml", a, (size_t)(e - a), res, sizeof res);
}
