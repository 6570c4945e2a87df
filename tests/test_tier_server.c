/*
 * test_tier_server.c — tallyd tiering from its config file and flags, over
 * TCP, against real S3-compatible servers on free loopback ports (s3rver,
 * and moto with signatures checked: wrong credentials would be refused).
 *
 * tallyd runs with no TALLY_S3_* or AWS_* variables in its environment, so
 * whatever reaches the bucket got there through the settings under test.
 * Line protocol with old timestamps goes in over TCP; the partitions seal
 * and tier by the background threads alone; #!stats shows it, awscli
 * confirms the objects, and series, aggregates and raw scans over TCP are
 * checked against a brute-force model of what was sent (raw scans of
 * tiered days are ranged GETs from the store). Bad settings must fail with
 * the key and the line, and no secret may reach a log, an error or --help.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <math.h>

#include "cmd.h"
#include "conf.h"
#include "s3util.h"
#include "srvutil.h"
#include "tally.h"

#define T0   INT64_C(1699920000000000000) /* 2023-11-14T00:00:00Z, a UTC day boundary */
#define SEC  INT64_C(1000000000)
#define HOUR (3600 * SEC)
#define DAY  (24 * HOUR)
#define KEYS 4
#define STEP (60 * SEC) /* one event per key a minute */
/* Days 0 and 1 whole, day 2 up to 03:00: with tier-after 1h (and the
 * 1h seal grace) days 0 and 1 seal and are due, day 2 stays local. */
#define END    (T0 + 2 * DAY + 3 * HOUR)
#define TIERED 2

static s3srv srv_s3rver, srv_moto;

static s3srv *server(const char *kind)
{
	s3srv *s = !strcmp(kind, "moto") ? &srv_moto : &srv_s3rver;
	if (!s->up)
		s3srv_import(s, !strcmp(kind, "moto") ? "TALLY_TEST_MOTO" : "TALLY_TEST_S3RVER");
	if (!s->up)
		cr_skip_test("%s is not available here", kind);
	return s;
}

/* moto preferred: it checks signatures */
static s3srv *any_server(void)
{
	if (!srv_moto.up)
		s3srv_import(&srv_moto, "TALLY_TEST_MOTO");
	return srv_moto.up ? &srv_moto : server("s3rver");
}

/* ---------------------------------------------------------------- the data */

static double value_at(int64_t t, int k)
{
	return (double)((t / STEP * 7 + k * 13) % 400) / 4.0; /* quarters: sums are exact */
}

static int lane_at(int64_t t)
{
	return (int)(t / STEP % 3);
}

typedef struct magg {
	uint64_t n;
	double sum, min, max;
} magg;

/* The model: the aggregate of key k's events in [from, to). */
static magg model(int k, int64_t from, int64_t to)
{
	magg a = {0, 0, NAN, NAN};
	for (int64_t t = T0; t < END; t += STEP) {
		if (t < from || t >= to)
			continue;
		double v = value_at(t, k);
		if (!a.n || v < a.min)
			a.min = v;
		if (!a.n || v > a.max)
			a.max = v;
		a.n++;
		a.sum += v;
	}
	return a;
}

/* count sum min max avg from cell first on */
static void agg_row_eq(const char *row, int first, magg want, const char *what)
{
	cr_assert_eq(strtoull(tcell(row, first), NULL, 10), want.n, "%s: count in '%s'", what, row);
	cr_assert_eq(strtod(tcell(row, first + 1), NULL), want.sum, "%s: sum in '%s'", what, row);
	cr_assert_eq(strtod(tcell(row, first + 2), NULL), want.min, "%s: min in '%s'", what, row);
	cr_assert_eq(strtod(tcell(row, first + 3), NULL), want.max, "%s: max in '%s'", what, row);
}

/* Sends every event over one connection and syncs. */
static void send_events(unsigned port)
{
	tcli *c = tcli_open(port);
	size_t cap = 1 << 20, len = 0;
	char *buf = malloc(cap);
	uint64_t n = 0;
	for (int64_t t = T0; t < END; t += STEP)
		for (int k = 0; k < KEYS; k++) {
			if (cap - len < 256) {
				int rc = tcli_send(c, buf, len);
				cr_assert_eq(rc, 0, "send: %s", strerror(-rc));
				len = 0;
			}
			len += (size_t)snprintf(buf + len, cap - len,
						"traffic,camera=cam%03d,lane=%d speed=%.2f %lld\n",
						k, lane_at(t), value_at(t, k), (long long)t);
			n++;
		}
	int rc = tcli_send(c, buf, len);
	cr_assert_eq(rc, 0, "send: %s", strerror(-rc));
	free(buf);
	uint64_t acc, rej;
	tcli_sync(c, &acc, &rej);
	cr_assert_eq(acc, n, "%llu of %llu lines accepted", (unsigned long long)acc,
		     (unsigned long long)n);
	cr_assert_eq(rej, 0);
	tcli_close(c);
}

/* ---------------------------------------------------------------- checks over TCP */

/* Rollup series at three steps and exact aggregates, every key. */
static void check_rollups(tcli *c)
{
	static const int64_t steps[3] = {5 * 60 * SEC, HOUR, DAY};
	for (int k = 0; k < KEYS; k++)
		for (int s = 0; s < 3; s++) {
			/* 5m: three hours of tiered day 0; 1h: both tiered days;
			 * 1d: all three days */
			int64_t from = s == 0 ? T0 + 7 * HOUR : T0;
			int64_t to = s == 0   ? from + 3 * HOUR
				     : s == 1 ? T0 + 2 * DAY
					      : T0 + 3 * DAY;
			ttable t;
			tcli_query(c, &t, "#!series traffic speed cam%03d %lldns %lld %lld", k,
				   (long long)steps[s], (long long)from, (long long)to);
			cr_assert_null(t.err, "%s", t.err);
			cr_assert_str_eq(t.rows[0], "start\tcount\tsum\tmin\tmax\tavg");
			size_t row = 1;
			for (int64_t w = from; w < to; w += steps[s]) {
				magg m = model(k, w, w + steps[s]);
				if (!m.n)
					continue;
				cr_assert_lt(row, t.n, "series cam%03d step %d: too few rows", k,
					     s);
				int64_t start;
				cr_assert_eq(cmd_parse_time(tcell(t.rows[row], 0), 0, &start), 0);
				cr_assert_eq(start, w, "%s", t.rows[row]);
				agg_row_eq(t.rows[row], 1, m, "series");
				row++;
			}
			cr_assert_eq(row, t.n, "series cam%03d step %d: %zu rows, want %zu", k, s,
				     t.n - 1, row - 1);
			ttable_free(&t);
		}
	/* Exact aggregates: aligned (rollups only), then with raw edges
	 * inside the tiered days (ranged GETs). */
	int64_t ranges[2][2] = {{T0, T0 + 3 * DAY},
				{T0 + 3 * HOUR + 17 * SEC + 123, T0 + DAY + 5 * HOUR + 3 * SEC}};
	for (int k = 0; k < KEYS; k++)
		for (int r = 0; r < 2; r++) {
			ttable t;
			tcli_query(c, &t, "#!agg traffic speed cam%03d %lld %lld", k,
				   (long long)ranges[r][0], (long long)ranges[r][1]);
			cr_assert_null(t.err, "%s", t.err);
			cr_assert_eq(t.n, 2);
			agg_row_eq(t.rows[1], 0, model(k, ranges[r][0], ranges[r][1]), "agg");
			ttable_free(&t);
		}
	ttable t;
	tcli_query(c, &t, "#!keys traffic speed %lld %lld", (long long)T0, (long long)(T0 + DAY));
	cr_assert_null(t.err, "%s", t.err);
	cr_assert_eq(t.n, 1 + KEYS);
	for (int k = 0; k < KEYS; k++) {
		char name[16];
		snprintf(name, sizeof name, "cam%03d", k);
		cr_assert_str_eq(tcell(t.rows[1 + k], 0), name);
		agg_row_eq(t.rows[1 + k], 1, model(k, T0, T0 + DAY), "keys");
	}
	ttable_free(&t);
}

/* A raw scan of key k over [from, to): every event, in order, exact. */
static void check_scan(tcli *c, int k, int64_t from, int64_t to)
{
	ttable t;
	tcli_query(c, &t, "#!scan traffic cam%03d %lld %lld", k, (long long)from, (long long)to);
	cr_assert_null(t.err, "%s", t.err);
	cr_assert_str_eq(t.rows[0], "time\tlane\tspeed");
	size_t row = 1;
	for (int64_t ts = T0; ts < END; ts += STEP) {
		if (ts < from || ts >= to)
			continue;
		cr_assert_lt(row, t.n, "scan cam%03d: too few rows", k);
		int64_t got;
		cr_assert_eq(cmd_parse_time(tcell(t.rows[row], 0), 0, &got), 0);
		cr_assert_eq(got, ts, "scan row %zu: %s", row, t.rows[row]);
		cr_assert_eq(atoi(tcell(t.rows[row], 1)), lane_at(ts), "%s", t.rows[row]);
		cr_assert_eq(strtod(tcell(t.rows[row], 2), NULL), value_at(ts, k), "%s",
			     t.rows[row]);
		row++;
	}
	cr_assert_eq(row, t.n, "scan cam%03d: %zu rows, want %zu", k, t.n - 1, row - 1);
	ttable_free(&t);
}

static int count_stubs(const char *data)
{
	char p[300];
	snprintf(p, sizeof p, "%s/parts", data);
	DIR *d = opendir(p);
	cr_assert_not_null(d, "%s", p);
	int n = 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		size_t l = strlen(e->d_name);
		n += l > 5 && !strcmp(e->d_name + l - 5, ".stub");
	}
	closedir(d);
	return n;
}

/* Polls #!stats until name reaches at least want; returns the value. */
static uint64_t wait_stat(tcli *c, const char *name, uint64_t want, int seconds)
{
	int64_t deadline = su_mono_ms() + seconds * 1000;
	uint64_t v;
	while ((v = tstat(c, name)) < want && su_mono_ms() < deadline)
		usleep(100000); /* the tiering thread runs when it runs */
	return v;
}

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	cr_assert_not_null(f, "%s", path);
	fputs(text, f);
	fclose(f);
}

/* A prefix of this run alone (no '/': see test_s3.c on moto and %2F). */
static void make_prefix(char *buf, size_t cap)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	snprintf(buf, cap, "srv%d-%ld-", getpid(), (long)(ts.tv_nsec % 1000000));
}

/* ---------------------------------------------------------------- end to end */

/* tallyd from a config file (the secret inline, or in a file named by
 * tier-secret-key-file): writes over TCP seal and tier by themselves,
 * stats say so, the bucket holds the objects, and every query kind
 * answers exactly, before and after a restart. */
static void config_file_tiers(s3srv *st, int secret_in_file)
{
	tsrv s;
	tdir_make(&s);
	char prefix[64], cfg[256], secret[256], text[4096];
	make_prefix(prefix, sizeof prefix);
	snprintf(cfg, sizeof cfg, "%s/tallyd.conf", s.dir);
	snprintf(secret, sizeof secret, "%s/s3-secret", s.dir);
	char secret_line[400];
	if (secret_in_file) {
		snprintf(text, sizeof text, "%s\n", st->secret_key);
		write_file(secret, text);
		snprintf(secret_line, sizeof secret_line, "tier-secret-key-file = %s", secret);
	} else {
		snprintf(secret_line, sizeof secret_line, "tier-secret-key = \"%s\"",
			 st->secret_key);
	}
	snprintf(text, sizeof text,
		 "# tallyd tiering to %s\n"
		 "shards = 1\n"
		 "log-level = info\n"
		 "table-keys = traffic=camera\n"
		 "flush-interval = 200ms\n"
		 "\n"
		 "tier-bucket = %s\n"
		 "tier-endpoint = %s\n"
		 "tier-region = %s\n"
		 "tier_prefix = %s\n"
		 "tier-access-key = %s\n"
		 "%s\n"
		 "tier-after = 1h\n"
		 "tier-timeout = 5s\n"
		 "tier-retries = 2\n"
		 "tier-part-bytes = 5MiB\n"
		 "tier-cache-bytes = 8MiB\n",
		 st->kind, st->bucket, st->endpoint, st->region, prefix, st->access_key,
		 secret_line);
	write_file(cfg, text);
	const char *args[] = {"--config", cfg, NULL};
	tsrv_spawn(&s, args, 1);

	send_events(s.port);
	tcli *c = tcli_open(s.port);
	uint64_t tiered = wait_stat(c, "tiered_parts", TIERED, 90);
	cr_assert_eq(tiered, TIERED, "%llu parts tiered, want %d (tier_failures %llu; see %s)",
		     (unsigned long long)tiered, TIERED,
		     (unsigned long long)tstat(c, "tier_failures"), s.log);
	cr_assert_eq(tstat(c, "tier_state"), 1, "healthy");
	cr_assert_eq(tstat(c, "tier_due"), 0);
	cr_assert_eq(tstat(c, "tier_uploads"), TIERED);
	cr_assert_eq(tstat(c, "tier_failures"), 0);
	cr_assert_gt(tstat(c, "s3_requests"), 0);
	/* (s3_errors may count s3rver's NotImplemented for the listing of
	 * unfinished uploads: not a failure) */
	uint64_t remote = tstat(c, "remote_bytes");
	cr_assert_gt(remote, 0);
	cr_assert_eq(tstat(c, "tier_upload_bytes"), remote);
	cr_assert_eq(count_stubs(s.data), TIERED);

	/* awscli: the bucket holds the parts under the configured prefix,
	 * as many bytes as the stats say */
	char out[8192];
	cr_assert_eq(s3srv_aws(st, out, sizeof out,
			       "s3api list-objects-v2 --bucket %s --prefix %s --query "
			       "'Contents[].[Key,Size]' --output text",
			       st->bucket, prefix),
		     0);
	int objects = 0;
	uint64_t bytes = 0;
	for (char *save = NULL, *l = strtok_r(out, "\n", &save); l;
	     l = strtok_r(NULL, "\n", &save)) {
		char key[512];
		unsigned long long size;
		if (sscanf(l, "%511s %llu", key, &size) != 2)
			continue;
		cr_assert(!strncmp(key, prefix, strlen(prefix)) &&
				  !strncmp(key + strlen(prefix), "parts/", 6) &&
				  strstr(key, ".part"),
			  "object %s", key);
		objects++;
		bytes += size;
	}
	cr_assert_eq(objects, TIERED, "%d objects in the bucket", objects);
	cr_assert_eq(bytes, remote);

	/* rollups from the local stubs, raw reads from the store */
	uint64_t cold0 = tstat(c, "cold_reads");
	check_rollups(c);
	check_scan(c, 2, T0 + 6 * HOUR, T0 + 7 * HOUR); /* tiered day 0 */
	check_scan(c, 0, T0 + DAY, T0 + 2 * DAY);       /* all of tiered day 1 */
	check_scan(c, 3, T0 + 2 * DAY, END);            /* the local day */
	cr_assert_gt(tstat(c, "cold_reads"), cold0, "raw reads of tiered days went to the store");
	cr_assert_gt(tstat(c, "cold_read_bytes"), 0);
	tcli_close(c);
	cr_assert_eq(tsrv_wait(&s, SIGTERM), 0);

	/* A restart with the same config reads the tiered days again. */
	tsrv_spawn(&s, args, 1);
	c = tcli_open(s.port);
	cr_assert_eq(tstat(c, "tiered_parts"), TIERED);
	check_scan(c, 1, T0 + 20 * HOUR, T0 + DAY + 2 * HOUR);
	cr_assert_gt(tstat(c, "cold_reads"), 0);
	tcli_close(c);
	cr_assert_eq(tsrv_wait(&s, SIGTERM), 0);

	/* The settings reached the engine (its log names the store), and
	 * the secret went nowhere but into signatures. */
	char *log = tsrv_log(&s);
	char want[300];
	snprintf(want, sizeof want, "tiering to %s/%s, prefix '%s', after 3600 s", st->endpoint,
		 st->bucket, prefix);
	cr_assert(strstr(log, want), "no '%s' in the log:\n%s", want, log);
	cr_assert(strstr(log, "is now"), "no upload logged:\n%s", log);
	cr_assert_null(strstr(log, st->secret_key), "the secret key is in the log");
	free(log);
	tdir_remove(&s);
}

Test(tier_server, config_file_tiers_over_tcp_s3rver, .timeout = 240)
{
	config_file_tiers(server("s3rver"), 0);
}

Test(tier_server, config_file_tiers_over_tcp_moto_secret_from_file, .timeout = 240)
{
	config_file_tiers(server("moto"), 1);
}

/* ---------------------------------------------------------------- secrets */

/* Credentials as flags and a token file, a store that refuses them (moto
 * checks the signature; s3rver accepts): whatever tallyd logs at info,
 * neither the secret key nor the session token is in it. */
Test(tier_server, secrets_never_reach_the_log, .timeout = 240)
{
	s3srv *st = any_server();
	tsrv s;
	tdir_make(&s);
	char prefix[64], tokfile[256], wrong[64], token[64];
	make_prefix(prefix, sizeof prefix);
	snprintf(wrong, sizeof wrong, "NotTheSecret%ldKey", (long)getpid());
	snprintf(token, sizeof token, "SessionTok%ldEnd", (long)getpid());
	snprintf(tokfile, sizeof tokfile, "%s/token", s.dir);
	char line[128];
	snprintf(line, sizeof line, "%s\n", token);
	write_file(tokfile, line);
	const char *flags[][2] = {
		{"--shards", "1"},
		{"--log-level", "info"},
		{"--flush-interval", "200ms"},
		{"--tier-bucket", st->bucket},
		{"--tier-endpoint", st->endpoint},
		{"--tier-region", st->region},
		{"--tier-prefix", prefix},
		{"--tier-access-key", st->access_key},
		{"--tier-secret-key", wrong},
		{"--tier-session-token-file", tokfile},
		{"--tier-after", "1h"},
		{"--tier-retries", "1"},
		{"--tier-timeout", "3s"},
	};
	const char *args[2 * sizeof flags / sizeof flags[0] + 1];
	size_t n = 0;
	for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
		args[n++] = flags[i][0];
		args[n++] = flags[i][1];
	}
	args[n] = NULL;
	tsrv_spawn(&s, args, 1);
	send_events(s.port);
	tcli *c = tcli_open(s.port);
	int64_t deadline = su_mono_ms() + 90000;
	while (tstat(c, "tier_failures") == 0 && tstat(c, "tiered_parts") < TIERED &&
	       su_mono_ms() < deadline)
		usleep(100000);
	uint64_t failures = tstat(c, "tier_failures");
	if (!strcmp(st->kind, "moto")) {
		cr_assert_gt(failures, 0, "moto refuses a wrong signature");
		cr_assert_eq(tstat(c, "tier_state"), 2, "failing");
		cr_assert_eq(tstat(c, "tiered_parts"), 0);
		cr_assert_gt(tstat(c, "tier_due"), 0, "the due parts wait, locally");
		check_rollups(c);
		check_scan(c, 1, T0 + 5 * HOUR, T0 + 6 * HOUR); /* local: the store is not needed */
	}
	tcli_close(c);
	cr_assert_eq(tsrv_wait(&s, SIGTERM), 0);
	char *log = tsrv_log(&s);
	cr_assert(strstr(log, "tiering"), "the log says nothing of tiering:\n%s", log);
	if (failures)
		cr_assert(strstr(log, "tiering: "), "the failure is logged:\n%s", log);
	cr_assert_null(strstr(log, wrong), "the secret key is in the log:\n%s", log);
	cr_assert_null(strstr(log, token), "the session token is in the log:\n%s", log);
	free(log);
	tdir_remove(&s);
}

/* ---------------------------------------------------------------- bad settings */

/* tallyd with a config file of a good head and one more line: exits 2,
 * naming the file, the line and the key; never showing the secret. */
static void bad_config(const char *bad, const char *want_msg)
{
	tsrv s;
	tdir_make(&s);
	char cfg[256], text[1024];
	snprintf(cfg, sizeof cfg, "%s/tallyd.conf", s.dir);
	snprintf(text, sizeof text,
		 "# tiering\n"
		 "tier-bucket = tally-test\n"
		 "tier-secret-key = VerySecret/Key+1\n"
		 "%s\n",
		 bad);
	write_file(cfg, text);
	const char *args[] = {"--config", cfg, NULL};
	tsrv_spawn(&s, args, 0);
	int rc = tsrv_wait(&s, 0);
	char *log = tsrv_log(&s);
	cr_assert_eq(rc, 2, "'%s': exit %d:\n%s", bad, rc, log);
	char want[600];
	snprintf(want, sizeof want, "tallyd: %s:4: %s", cfg, want_msg);
	cr_assert(strstr(log, want), "'%s': no '%s' in:\n%s", bad, want, log);
	cr_assert_null(strstr(log, "VerySecret"), "the secret is shown:\n%s", log);
	free(log);
	tdir_remove(&s);
}

Test(tier_server, bad_settings_name_the_key_and_the_line, .timeout = 60)
{
	bad_config("tier-after = abc", "tier-after: 'abc' is not a duration");
	bad_config("tier_after = 5 parsecs", "tier-after: '5 parsecs' is not a duration");
	bad_config("tier-part-bytes = 1MiB",
		   "tier-part-bytes: '1MiB' is not 0 or a size from 5MiB (S3's smallest part) "
		   "to 512MiB");
	bad_config("tier-part-bytes = 1GiB", "tier-part-bytes: '1GiB' is not 0 or a size");
	bad_config("tier-cache-bytes = lots", "tier-cache-bytes: 'lots' is not a size");
	bad_config("tier-timeout = 500us", "tier-timeout: '500us' is not a duration from 1ms");
	bad_config("tier-timeout = 60d", "tier-timeout: '60d' is not a duration from 1ms");
	bad_config("tier-retries = many", "tier-retries: 'many' is not a valid number");
	bad_config("tier-secret-key =", "tier-secret-key: '' is empty");
	bad_config("tier-secret-key-file = /nonexistent/secret",
		   "tier-secret-key-file /nonexistent/secret: No such file or directory");
	bad_config("tier-session-token-file = /dev/null",
		   "tier-session-token-file /dev/null: empty");
	bad_config("tier-bucket", "expected 'name = value'");
	bad_config("tier-bukket = x", "unknown setting 'tier-bukket'");
}

/* A flag is checked like a file line; what only the engine can judge
 * (the prefix, the endpoint) fails the start with its message (exit 1). */
Test(tier_server, bad_flags_and_engine_refusals_are_clear, .timeout = 60)
{
	struct {
		const char *args[7];
		int rc;
		const char *msg;
	} cases[] = {
		{{"--tier-after=abc", NULL}, 2, "tallyd: tier-after: 'abc' is not a duration"},
		{{"--tier-part-bytes", "4MiB", NULL}, 2, "tier-part-bytes: '4MiB' is not 0"},
		{{"--port", "0", "--tier-bucket", "tally-test", "--tier-prefix", "/abs/", NULL},
		 1,
		 "tier_prefix '/abs/'"},
		{{"--port", "0", "--tier-bucket", "tally-test", "--tier-endpoint", "ftp://x", NULL},
		 1,
		 "endpoint 'ftp://x' is not http:// or https://"},
		{{"--port", "0", "--tier-bucket", "Bad_Bucket", NULL},
		 1,
		 "bad bucket name 'Bad_Bucket'"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		tsrv s;
		tdir_make(&s);
		tsrv_spawn(&s, cases[i].args, 0);
		int rc = tsrv_wait(&s, 0);
		char *log = tsrv_log(&s);
		cr_assert_eq(rc, cases[i].rc, "%s: exit %d:\n%s", cases[i].args[0], rc, log);
		cr_assert(strstr(log, cases[i].msg), "no '%s' in:\n%s", cases[i].msg, log);
		free(log);
		tdir_remove(&s);
	}
}

/* ---------------------------------------------------------------- conf.c itself */

/* Runs fn with stderr and stdout captured into out. */
static int captured(char *out, size_t cap, int (*fn)(void *), void *arg)
{
	fflush(stdout);
	fflush(stderr);
	FILE *tmp = tmpfile();
	cr_assert_not_null(tmp);
	int o1 = dup(1), o2 = dup(2);
	dup2(fileno(tmp), 1);
	dup2(fileno(tmp), 2);
	int rc = fn(arg);
	fflush(stdout);
	fflush(stderr);
	dup2(o1, 1);
	dup2(o2, 2);
	close(o1);
	close(o2);
	rewind(tmp);
	size_t n = fread(out, 1, cap - 1, tmp);
	out[n] = 0;
	fclose(tmp);
	return rc;
}

typedef struct set_args {
	srv_conf *c;
	const char *name, *value;
	int argc;
	char **argv;
} set_args;

static int do_set(void *p)
{
	set_args *a = p;
	return conf_set(a->c, a->name, a->value, "t.conf:9");
}

static int do_parse(void *p)
{
	set_args *a = p;
	return conf_parse_args(a->c, a->argc, a->argv);
}

static int set(srv_conf *c, const char *name, const char *value, char *msg, size_t cap)
{
	set_args a = {c, name, value, 0, NULL};
	return captured(msg, cap, do_set, &a);
}

Test(tier_server, settings_parse_to_the_engine_options)
{
	srv_conf c;
	conf_init(&c);
	char msg[4096];
	/* tier-after: a duration; 0 the engine's default (7 days); off,
	 * never or a negative duration: upload nothing more */
	cr_assert_eq(set(&c, "tier-after", "90m", msg, sizeof msg), 0, "%s", msg);
	cr_assert_eq(c.tier_after, 90 * 60 * SEC);
	cr_assert_eq(set(&c, "tier-after", "0", msg, sizeof msg), 0);
	cr_assert_eq(c.tier_after, 0);
	cr_assert_eq(set(&c, "tier_after", "off", msg, sizeof msg), 0);
	cr_assert_lt(c.tier_after, 0);
	cr_assert_eq(set(&c, "tier-after", "NEVER", msg, sizeof msg), 0);
	cr_assert_lt(c.tier_after, 0);
	cr_assert_eq(set(&c, "tier-after", "-1h", msg, sizeof msg), 0);
	cr_assert_eq(c.tier_after, -HOUR);
	cr_assert_eq(set(&c, "tier-after", "7x", msg, sizeof msg), -1);
	cr_assert(strstr(msg, "t.conf:9: tier-after: '7x' is not a duration"), "%s", msg);
	/* durations to ms */
	cr_assert_eq(set(&c, "tier-timeout", "2500ms", msg, sizeof msg), 0);
	cr_assert_eq(c.tier_timeout_ms, 2500);
	cr_assert_eq(set(&c, "tier-timeout", "1m", msg, sizeof msg), 0);
	cr_assert_eq(c.tier_timeout_ms, 60000);
	cr_assert_eq(set(&c, "tier-timeout", "0", msg, sizeof msg), 0);
	cr_assert_eq(c.tier_timeout_ms, 0);
	cr_assert_eq(set(&c, "tier-timeout", "999us", msg, sizeof msg), -1);
	cr_assert_eq(set(&c, "flush-interval", "150ms", msg, sizeof msg), 0);
	cr_assert_eq(c.flush_ms, 150);
	/* sizes */
	cr_assert_eq(set(&c, "tier-part-bytes", "5MiB", msg, sizeof msg), 0);
	cr_assert_eq(c.tier_part_bytes, UINT64_C(5) << 20);
	cr_assert_eq(set(&c, "tier-part-bytes", "512m", msg, sizeof msg), 0);
	cr_assert_eq(c.tier_part_bytes, UINT64_C(512) << 20);
	cr_assert_eq(set(&c, "tier-part-bytes", "0", msg, sizeof msg), 0);
	cr_assert_eq(c.tier_part_bytes, 0);
	cr_assert_eq(set(&c, "tier-part-bytes", "5242879", msg, sizeof msg), -1);
	cr_assert_eq(set(&c, "tier-part-bytes", "513MiB", msg, sizeof msg), -1);
	cr_assert_eq(set(&c, "tier-cache-bytes", "6GiB", msg, sizeof msg), 0);
	cr_assert_eq(c.tier_cache_bytes, UINT64_C(6) << 30);
	cr_assert_eq(set(&c, "memory-limit", "8GiB", msg, sizeof msg), 0);
	cr_assert_eq(c.memory_limit, UINT64_C(8) << 30);
	cr_assert_eq(set(&c, "tier-retries", "7", msg, sizeof msg), 0);
	cr_assert_eq(c.tier_retries, 7);
	/* busy polling: on by default, a duration, 0 off */
	srv_conf d;
	conf_init(&d);
	cr_assert_eq(d.poll_ns, 50000);
	/* reads of interleaved sources big enough for several rows a key */
	cr_assert_eq(d.recv_buf_bytes, 256u << 10);
	cr_assert_eq(set(&c, "busy-poll", "200us", msg, sizeof msg), 0);
	cr_assert_eq(c.poll_ns, 200000);
	cr_assert_eq(set(&c, "busy-poll", "0", msg, sizeof msg), 0);
	cr_assert_eq(c.poll_ns, 0);
	cr_assert_eq(set(&c, "busy-poll", "soon", msg, sizeof msg), -1);
	cr_assert(strstr(msg, "busy-poll: 'soon' is not a duration"), "%s", msg);
	/* prefault: on by default, on/off words */
	cr_assert_eq(d.prefault, 1);
	cr_assert_eq(set(&c, "prefault", "off", msg, sizeof msg), 0);
	cr_assert_eq(c.prefault, 0);
	cr_assert_eq(set(&c, "prefault", "YES", msg, sizeof msg), 0);
	cr_assert_eq(c.prefault, 1);
	cr_assert_eq(set(&c, "prefault", "false", msg, sizeof msg), 0);
	cr_assert_eq(c.prefault, 0);
	cr_assert_eq(set(&c, "prefault", "maybe", msg, sizeof msg), -1);
	cr_assert(strstr(msg, "t.conf:9: prefault: 'maybe' is not on or off"), "%s", msg);
	/* strings */
	cr_assert_eq(set(&c, "tier-bucket", "b1", msg, sizeof msg), 0);
	cr_assert_eq(set(&c, "tier-endpoint", "http://127.0.0.1:1", msg, sizeof msg), 0);
	cr_assert_eq(set(&c, "tier-region", "eu-west-3", msg, sizeof msg), 0);
	cr_assert_eq(set(&c, "tier-prefix", "site1/", msg, sizeof msg), 0);
	cr_assert_eq(set(&c, "tier-access-key", "AKIDEXAMPLE", msg, sizeof msg), 0);
	cr_assert_eq(set(&c, "tier-secret-key", "first", msg, sizeof msg), 0);
	cr_assert_eq(set(&c, "tier-secret-key", "wJalrXUtnFEMI", msg, sizeof msg), 0);
	cr_assert_eq(set(&c, "tier-session-token", "FwoGZXIvYXdz", msg, sizeof msg), 0);
	cr_assert_str_eq(c.tier_bucket, "b1");
	cr_assert_str_eq(c.tier_endpoint, "http://127.0.0.1:1");
	cr_assert_str_eq(c.tier_region, "eu-west-3");
	cr_assert_str_eq(c.tier_prefix, "site1/");
	cr_assert_str_eq(c.tier_access_key, "AKIDEXAMPLE");
	cr_assert_str_eq(c.tier_secret_key, "wJalrXUtnFEMI");
	cr_assert_str_eq(c.tier_session_token, "FwoGZXIvYXdz");
	conf_wipe(&c.tier_secret_key);
	cr_assert_null(c.tier_secret_key);
	conf_free(&c);
	cr_assert_null(c.tier_session_token);
	cr_assert_null(c.tier_bucket);
}

Test(tier_server, secret_files_flags_over_file_and_help_shows_no_secret)
{
	char *dir = strdup("/tmp/tally-test-conf-XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
	char sk[300], tok[300], cfg[300], text[1024];
	snprintf(sk, sizeof sk, "%s/sk", dir);
	snprintf(tok, sizeof tok, "%s/tok", dir);
	snprintf(cfg, sizeof cfg, "%s/tallyd.conf", dir);
	write_file(sk, "Secret-From-File\r\nsecond line ignored\n");
	/* a session token longer than the token file's old 1 KiB buffer */
	char longtok[3001];
	memset(longtok, 'T', 3000);
	longtok[3000] = 0;
	write_file(tok, longtok);
	snprintf(text, sizeof text,
		 "tier-bucket = tally-test\n"
		 "tier-secret-key = Inline-Secret-Overridden\n"
		 "tier-secret-key-file = %s\n"
		 "tier-session-token-file = %s\n"
		 "tier-after = 2h\n",
		 sk, tok);
	write_file(cfg, text);
	srv_conf c;
	conf_init(&c);
	char msg[8192];
	char *argv[] = {"tallyd", "--config", cfg, "--tier-after", "3h", NULL};
	set_args a = {&c, NULL, NULL, 5, argv};
	cr_assert_eq(captured(msg, sizeof msg, do_parse, &a), 0, "%s", msg);
	cr_assert_str_eq(c.tier_secret_key, "Secret-From-File");
	cr_assert_str_eq(c.tier_session_token, longtok);
	cr_assert_eq(c.tier_after, 3 * HOUR, "the flag wins over the file");
	conf_free(&c);

	/* --help with the secrets loaded prints none of them */
	conf_init(&c);
	char *help[] = {"tallyd", "--config", cfg, "--help", NULL};
	a = (set_args){&c, NULL, NULL, 4, help};
	cr_assert_eq(captured(msg, sizeof msg, do_parse, &a), 1);
	cr_assert(strstr(msg, "--tier-secret-key-file"), "%s", msg);
	cr_assert(strstr(msg, "--tier-after"), "%s", msg);
	cr_assert_null(strstr(msg, "Secret-From-File"));
	cr_assert_null(strstr(msg, "Inline-Secret"));
	cr_assert_null(strstr(msg, "TTTT"));
	conf_free(&c);

	/* a secret given without its "--" is refused without being echoed */
	conf_init(&c);
	char *stray[] = {"tallyd", "tier-secret-key=Stray-Secret-Value", NULL};
	a = (set_args){&c, NULL, NULL, 2, stray};
	cr_assert_eq(captured(msg, sizeof msg, do_parse, &a), -1);
	cr_assert(strstr(msg, "unexpected argument 'tier-secret-key'"), "%s", msg);
	cr_assert_null(strstr(msg, "Stray-Secret"), "%s", msg);
	conf_free(&c);

	/* a token file of one overlong line is refused, not cut */
	char *big = malloc(10001);
	memset(big, 'x', 10000);
	big[10000] = 0;
	write_file(tok, big);
	free(big);
	conf_init(&c);
	cr_assert_eq(set(&c, "tier-session-token-file", tok, msg, sizeof msg), -1);
	cr_assert(strstr(msg, "first line longer than"), "%s", msg);
	cr_assert_null(strstr(msg, "xxxx"));
	conf_free(&c);
	nftw(dir, su_rm_one, 16, FTW_DEPTH | FTW_PHYS);
	free(dir);
}

/* tallyd, not the library, reads $TALLY_S3_BUCKET, $AWS_* and the like:
 * a setting the file and the flags leave unset comes from the first set
 * variable of its list; one they set wins over the environment; a bad
 * value is named by its variable, a secret never echoed. */
Test(tier_server, environment_fills_the_settings_left_unset)
{
	static const char *const vars[] = {
		"TALLY_S3_BUCKET",  "TALLY_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3",
		"AWS_ENDPOINT_URL", "AWS_REGION",        "AWS_DEFAULT_REGION",
		"TALLY_S3_PREFIX",  "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
		"AWS_SESSION_TOKEN"};
	for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
		unsetenv(vars[i]);
	setenv("TALLY_S3_BUCKET", "env-bucket", 1);
	setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9", 1); /* the third of its list */
	setenv("AWS_DEFAULT_REGION", "eu-west-3", 1);
	setenv("AWS_ACCESS_KEY_ID", "env-access", 1);
	setenv("AWS_SECRET_ACCESS_KEY", "Env-Secret-Value", 1);
	setenv("AWS_SESSION_TOKEN", "", 1); /* empty counts as unset */
	srv_conf c;
	conf_init(&c);
	char msg[4096];
	char *argv[] = {"tallyd", "--tier-region", "us-west-2", NULL};
	set_args a = {&c, NULL, NULL, 3, argv};
	cr_assert_eq(captured(msg, sizeof msg, do_parse, &a), 0, "%s", msg);
	cr_assert_str_eq(c.tier_bucket, "env-bucket");
	cr_assert_str_eq(c.tier_endpoint, "http://127.0.0.1:9");
	cr_assert_str_eq(c.tier_region, "us-west-2", "the flag wins over the environment");
	cr_assert_str_eq(c.tier_access_key, "env-access");
	cr_assert_str_eq(c.tier_secret_key, "Env-Secret-Value");
	cr_assert_null(c.tier_session_token);
	cr_assert_null(c.tier_prefix);
	conf_free(&c);

	/* the first set variable of the list wins */
	setenv("TALLY_S3_ENDPOINT", "http://127.0.0.1:10", 1);
	conf_init(&c);
	char *none[] = {"tallyd", NULL};
	a = (set_args){&c, NULL, NULL, 1, none};
	cr_assert_eq(captured(msg, sizeof msg, do_parse, &a), 0, "%s", msg);
	cr_assert_str_eq(c.tier_endpoint, "http://127.0.0.1:10");
	cr_assert_str_eq(c.tier_region, "eu-west-3");
	conf_free(&c);

	for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
		unsetenv(vars[i]);
}

S3U_MAIN(int argc, char **argv)
{
	/* the settings tests run without a server; the others skip */
	return s3srv_main_ex(argc, argv, "test_tier_server", &srv_s3rver, &srv_moto, 0);
}
