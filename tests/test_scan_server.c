/*
 * test_scan_server.c — #!scan over TCP streams from a cursor (issue 12
 * item 3): eight clients that never read a scan of a million events keep
 * tallyd's memory bounded, LIMIT decodes only what it returns, and a full
 * scan equals the events written.
 */
#include <criterion/criterion.h>

#include "srvutil.h"

#define N_EVENTS 1000000
#define UNREAD   8
#define T0_S     INT64_C(1699920000) /* 2023-11-14T00:00:00Z */

/* Event i of key a: one a second from T0_S, v = i, txt = "row-i-" and
 * padding, so a materialised answer would be large. */
static size_t event(char *p, size_t cap, int64_t i)
{
	return (size_t)snprintf(p, cap,
				"s,k=a v=%" PRId64 "i,txt=\"row-%" PRId64
				"-padding-padding-padding\" %" PRId64 "\n",
				i, i, (T0_S + i) * INT64_C(1000000000));
}

/* Checks row (a scan's line) against event i. */
static void check_row(const char *row, int64_t i)
{
	char want[160], ts[32];
	time_t t = (time_t)(T0_S + i);
	struct tm tm;
	gmtime_r(&t, &tm);
	strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
	snprintf(want, sizeof want, "%s\t%" PRId64 "\trow-%" PRId64 "-padding-padding-padding", ts,
		 i, i);
	cr_assert_str_eq(row, want, "event %" PRId64, i);
}

Test(scan_server, unread_scans_hold_bounded_memory_and_limit_reads_little, .timeout = 600)
{
	tsrv s;
	tdir_make(&s);
	const char *extra[] = {"--flush-interval", "1s", NULL};
	tsrv_start(&s, extra);
	tcli *w = tcli_open(s.port);
	enum { BATCH = 20000 };
	char *buf = malloc(BATCH * 96);
	for (int64_t i = 0; i < N_EVENTS;) {
		size_t n = 0;
		for (int k = 0; k < BATCH && i < N_EVENTS; k++, i++)
			n += event(buf + n, 96, i);
		cr_assert_eq(tcli_send(w, buf, n), 0);
	}
	free(buf);
	uint64_t acc;
	tcli_sync(w, &acc, NULL);
	cr_assert_eq(acc, N_EVENTS);
	/* most of it in parts: the flush runs within a second or two */
	int64_t deadline = su_mono_ms() + 60000;
	while (tstat(w, "parts") == 0) {
		cr_assert_lt(su_mono_ms(), deadline, "no flush in 60 s");
		usleep(20000); /* polling the server's counter */
	}
	/* LIMIT: ten rows read, about one stripe decoded */
	ttable t;
	uint64_t before = tstat(w, "scan_rows");
	tcli_query(w, &t, "#!scan s a 2023-11-14 60d 10");
	cr_assert_null(t.err, "%s", t.err);
	cr_assert_eq(t.n, 11);
	for (int64_t i = 0; i < 10; i++)
		check_row(t.rows[i + 1], i);
	ttable_free(&t);
	uint64_t limited = tstat(w, "scan_rows") - before;
	cr_assert_leq(limited, 2 * 4096, "LIMIT 10 decoded %" PRIu64 " rows", limited);

	/* the whole answer, streamed, equals the events */
	tcli_sendf(w, "#!scan s a 2023-11-14 60d\n");
	free(tcli_expect(w, "time\tv\ttxt"));
	for (int64_t i = 0; i < N_EVENTS; i++) {
		char *l = tcli_line(w, 30000);
		cr_assert_not_null(l, "row %" PRId64 " missing", i);
		check_row(l, i);
		free(l);
	}
	char *end = tcli_expect(w, "END ");
	cr_assert_str_eq(end, "END 1000000");
	free(end);

	uint64_t rss0 = tsrv_status_kib(&s, "VmRSS");

	/* clients that ask for everything and read only the header */
	tcli *unread[UNREAD];
	for (int u = 0; u < UNREAD; u++) {
		unread[u] = tcli_open(s.port);
		int small = 4096;
		setsockopt(unread[u]->fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
		tcli_sendf(unread[u], "#!scan s a 2023-11-01 60d\n");
		free(tcli_expect(unread[u], "time\tv\ttxt"));
	}
	/* every one of them produced as much as its reply buffer takes */
	uint64_t rss1 = tsrv_status_kib(&s, "VmRSS");
	fprintf(stderr,
		"RSS %" PRIu64 " KiB before, %" PRIu64 " KiB with %d unread scans of %d events\n",
		rss0, rss1, UNREAD, N_EVENTS);
	/* materialised, each answer was over 100 MB here; as cursors, each
	 * holds a window or two and its reply buffer */
	cr_assert_lt(rss1, rss0 + 96 * 1024, "RSS grew from %" PRIu64 " to %" PRIu64 " KiB", rss0,
		     rss1);
	cr_assert_gt(tstat(w, "scan_rows"), 0);

	for (int u = 0; u < UNREAD; u++)
		tcli_close(unread[u]);
	tcli_close(w);
	cr_assert_eq(tsrv_wait(&s, SIGTERM), 0);
	tdir_remove(&s);
}
