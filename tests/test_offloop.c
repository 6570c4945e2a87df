/*
 * test_offloop.c — long administrative commands run off the loop
 * (wire/offloop.c): a `#!backup` that cannot finish does not stall the
 * other connections of its shard thread, the asking connection's later
 * commands wait for its answer, a client gone mid-backup leaves nothing
 * behind, and a stop waits for the backup and answers it.
 *
 * The backup is made slow deterministically: tallyd's S3 endpoint is a
 * proxy (tests/s3util.h) in front of s3rver or moto that holds every new
 * connection unanswered (PX_HANG) until the test lets it pass; the held
 * request then fails and the S3 client's retry goes through. tallyd runs
 * one shard, so every connection shares the loop the backup was read on.
 */
#include <criterion/criterion.h>

#include "s3util.h"
#include "srvutil.h"

static s3srv srv_s3rver, srv_moto;

typedef struct rig {
	tsrv s;
	s3proxy px;
	s3srv *st;
	char endpoint[64];
	char dest[256];
} rig;

/* tallyd (one shard) whose tiering endpoint, which #!backup to s3://
 * uses, is a proxy to whichever S3 server runs here; some events in it. */
static void rig_start(rig *g, const char *grace)
{
	s3srv_import(&srv_moto, "TALLY_TEST_MOTO");
	s3srv_import(&srv_s3rver, "TALLY_TEST_S3RVER");
	g->st = srv_moto.up ? &srv_moto : srv_s3rver.up ? &srv_s3rver : NULL;
	if (!g->st)
		cr_skip_test("neither moto nor s3rver is available here");
	cr_assert_eq(s3proxy_start(&g->px, g->st->port), 0);
	snprintf(g->endpoint, sizeof g->endpoint, "http://127.0.0.1:%d", g->px.port);
	snprintf(g->dest, sizeof g->dest, "s3://%s/offloop%d-%ld-", g->st->bucket, getpid(),
		 (long)random() % 100000);
	tdir_make(&g->s);
	const char *args[] = {"--shards",
			      "1",
			      "--log-level",
			      "info",
			      "--tier-bucket",
			      g->st->bucket,
			      "--tier-endpoint",
			      g->endpoint,
			      "--tier-region",
			      g->st->region,
			      "--tier-access-key",
			      g->st->access_key,
			      "--tier-secret-key",
			      g->st->secret_key,
			      "--tier-after",
			      "off",
			      "--tier-timeout",
			      "120s",
			      "--shutdown-grace",
			      grace,
			      NULL};
	tsrv_start(&g->s, args);
	tcli *c = tcli_open(g->s.port);
	for (int i = 0; i < 100; i++)
		tcli_sendf(c, "traffic,camera=KV%d speed=%d 1700000%03d000000000\n", i % 4, 40 + i,
			   i);
	tcli_sync(c, NULL, NULL);
	tcli_close(c);
}

/* The clients close, tallyd stops cleanly (sig: SIGTERM, or 0 when it
 * was sent already), the proxy and the files go. */
static void rig_stop(rig *g, tcli *a, tcli *b, int sig)
{
	tcli_close(a);
	tcli_close(b);
	cr_assert_eq(tsrv_wait(&g->s, sig), 0, "tallyd's exit; see %s", g->s.log);
	atomic_store(&g->px.mode, PX_PASS);
	s3proxy_stop(&g->px);
	tdir_remove(&g->s);
}

/* Sends a backup on c with the proxy holding connections, and returns
 * once the backup's first request has reached the proxy: from then on it
 * cannot finish until the proxy lets it. */
static void start_held_backup(rig *g, tcli *c, const char *after)
{
	atomic_store(&g->px.mode, PX_HANG);
	uint64_t before = atomic_load(&g->px.conns);
	tcli_sendf(c, "#!backup %s\n%s", g->dest, after);
	int64_t deadline = su_mono_ms() + 60000;
	while (atomic_load(&g->px.conns) == before) {
		cr_assert_lt(su_mono_ms(), deadline, "the backup never reached the S3 endpoint");
		usleep(10000);
	}
}

static void expect_line(tcli *c, const char *prefix, int timeout_ms, const char *what)
{
	char *l = tcli_line(c, timeout_ms);
	cr_assert_not_null(l, "%s: no line starting with '%s'", what, prefix);
	cr_assert(!strncmp(l, prefix, strlen(prefix)), "%s: expected '%s...', got '%s'", what,
		  prefix, l);
	free(l);
}

/* Before the fix the backup ran on the loop: the second connection's
 * ping waited for the whole backup. */
Test(offloop, a_held_backup_leaves_the_loops_other_connections_served, .timeout = 400)
{
	rig g;
	rig_start(&g, "5s");
	tcli *a = tcli_open(g.s.port);
	start_held_backup(&g, a, "#!ping\n");

	tcli *b = tcli_open(g.s.port);
	tcli_sendf(b, "#!ping\n");
	expect_line(b, "OK pong", 30000, "the other connection's ping, while the backup is held");
	tcli_sendf(b, "#!agg traffic speed KV1 1699999000s 1700001000s\n");
	expect_line(b, "count\t", 30000, "a query while the backup is held");
	expect_line(b, "25\t", 5000, "the query's row");
	expect_line(b, "END 1", 5000, "the query's end");
	/* the asker hears nothing while its backup cannot finish: its ping,
	 * sent behind the backup, waits too (replies in input order) */
	char *l = tcli_line(a, 300);
	cr_assert_null(l, "the asking connection answered '%s' while its backup was held", l);

	atomic_store(&g.px.mode, PX_PASS);
	expect_line(a, "OK backup 1 files ", 240000, "the backup once the endpoint answers");
	expect_line(a, "OK pong", 5000, "the ping sent after the backup");
	rig_stop(&g, a, b, SIGTERM);
}

/* The job outlives its connection and frees itself (the ASan build
 * checks the leak and the use after free at exit). */
Test(offloop, a_client_gone_mid_backup_leaves_no_crash_nor_leak, .timeout = 400)
{
	rig g;
	rig_start(&g, "5s");
	tcli *a = tcli_open(g.s.port);
	start_held_backup(&g, a, "");
	tcli_close(a);
	a = NULL;
	tcli *b = tcli_open(g.s.port);
	tcli_sendf(b, "#!ping\n");
	expect_line(b, "OK pong", 30000, "a ping after the asker left");
	atomic_store(&g.px.mode, PX_PASS);
	/* jobs run one at a time: this one ends after the abandoned one */
	tcli_sendf(b, "#!backup %s\n#!ping\n", g.dest);
	expect_line(b, "OK backup ", 240000, "a backup after the abandoned one");
	expect_line(b, "OK pong", 5000, "the ping after it");
	rig_stop(&g, a, b, SIGTERM);
}

/* SIGTERM during a backup: past the grace and the hard stop the asker is
 * still waited for; it hears its backup's answer, then the goodbye. */
Test(offloop, a_stop_waits_for_the_backup_and_answers_it, .timeout = 400)
{
	rig g;
	rig_start(&g, "0");
	tcli *a = tcli_open(g.s.port);
	start_held_backup(&g, a, "");
	kill(g.s.pid, SIGTERM);
	int64_t deadline = su_mono_ms() + 30000;
	for (;;) {
		char *log = tsrv_log(&g.s);
		int seen = strstr(log, "stopping:") != NULL;
		free(log);
		if (seen)
			break;
		cr_assert_lt(su_mono_ms(), deadline, "tallyd never began to stop");
		usleep(20000);
	}
	/* past the grace (0) and the 5 s after it that close what is left */
	sleep(7);
	char *l = tcli_line(a, 0);
	cr_assert_null(l, "the asker heard '%s' before its backup could end", l);
	atomic_store(&g.px.mode, PX_PASS);
	expect_line(a, "OK backup 1 files ", 240000, "the backup during the stop");
	expect_line(a, "OK shutdown accepted=", 30000, "the goodbye after it");
	rig_stop(&g, a, NULL, 0);
}

S3U_MAIN(int argc, char **argv)
{
	return s3srv_main_ex(argc, argv, "test_offloop", &srv_s3rver, &srv_moto, 1);
}
