/*
 * test_auth_server.c — admission and authentication on both ports (issue
 * 12 item 6): one address's connections capped across the line-protocol
 * and HTTP listeners, HTTP authentication failures logged (rate limited)
 * and counted, and the auth counters in #!stats and /metrics.
 */
#include <criterion/criterion.h>

#include "srvutil.h"

#define TOKEN "s3cret-token-0123"

/* Sends an HTTP request on a new connection to the HTTP port; returns the
 * connection (its status line is next to read). */
static tcli *http_send(const tsrv *s, const char *req)
{
	tcli *c = tcli_open(tsrv_http_port(s));
	cr_assert_eq(tcli_send(c, req, strlen(req)), 0);
	return c;
}

/* The status code of an HTTP request on a new connection; 0 when the
 * server closed it without an answer. */
static int http_status(const tsrv *s, const char *req)
{
	tcli *c = http_send(s, req);
	char *l = tcli_line(c, 20000);
	int code = 0;
	if (l && sscanf(l, "HTTP/1.1 %d", &code) != 1)
		code = 0;
	free(l);
	tcli_close(c);
	return code;
}

/* The value of a /metrics sample (a line "name value"). */
/* /metrics requests answered 503 and asked again (each is a refusal the
 * server counts) */
static uint64_t metric_503s;

static uint64_t metric(const tsrv *s, const char *name, const char *auth)
{
	char req[256];
	snprintf(req, sizeof req, "GET /metrics HTTP/1.1\r\nHost: t\r\n%s%s\r\n", auth ? auth : "",
		 auth ? "\r\n" : "");
	/* a 503 while the server has yet to free a closed connection's slot
	 * (max-connections-per-address): asked again */
	int64_t deadline = su_mono_ms() + 20000;
	tcli *c = http_send(s, req);
	char *first;
	while ((first = tcli_line(c, 20000)) && !strncmp(first, "HTTP/1.1 503", 12)) {
		free(first);
		tcli_close(c);
		metric_503s++;
		cr_assert_lt(su_mono_ms(), deadline, "/metrics: 503 for 20 s");
		usleep(10000); /* the server frees the slot when it sees the close */
		c = http_send(s, req);
	}
	cr_assert_not_null(first, "/metrics: no answer");
	cr_assert(!strncmp(first, "HTTP/1.1 200", 12), "/metrics: %s", first);
	free(first);
	uint64_t v = UINT64_MAX;
	size_t nl = strlen(name);
	char *l;
	while ((l = tcli_line(c, 20000))) {
		if (!strncmp(l, name, nl) && l[nl] == ' ')
			v = strtoull(l + nl + 1, NULL, 10);
		int end = !strncmp(l, "tally_uptime_seconds ", 21);
		free(l);
		if (end || v != UINT64_MAX)
			break;
	}
	tcli_close(c);
	cr_assert_neq(v, UINT64_MAX, "no metric %s", name);
	return v;
}

#define PING "GET /ping HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"

Test(auth_server, connections_per_address_are_capped_across_both_ports, .timeout = 120)
{
	tsrv s;
	tdir_make(&s);
	const char *extra[] = {"--max-connections-per-address", "3", NULL};
	tsrv_start(&s, extra);
	tcli *c[3];
	for (int i = 0; i < 3; i++) {
		c[i] = tcli_open(s.port);
		tcli_sendf(c[i], "#!ping\n");
		free(tcli_expect(c[i], "OK pong"));
	}
	/* a fourth from 127.0.0.1, on either port, is refused at once */
	tcli *d = tcli_open(s.port);
	char *l = tcli_expect(d, "ERR too many connections from 127.0.0.1");
	cr_assert_str_eq(l, "ERR too many connections from 127.0.0.1 "
			    "(max-connections-per-address 3)");
	free(l);
	cr_assert_null(tcli_line(d, 20000), "the refused connection is closed");
	tcli_close(d);
	cr_assert_eq(http_status(&s, PING), 503);
	/* one closes: its slot comes back (once the server saw the close) */
	tcli_close(c[2]);
	int64_t deadline = su_mono_ms() + 20000;
	int code;
	while ((code = http_status(&s, PING)) == 503) {
		cr_assert_lt(su_mono_ms(), deadline,
			     "the closed connection's slot never came back");
		usleep(10000); /* the server frees the slot when it sees the close */
	}
	cr_assert_eq(code, 204);
	/* the refusals are counted, in #!stats and /metrics alike (room for
	 * the /metrics request: c[0], the last ping's if not yet freed, it) */
	uint64_t refused = tstat(c[0], "connections_refused_per_address");
	cr_assert_geq(refused, 2, "%" PRIu64, refused);
	tcli_close(c[1]);
	/* a /metrics asked before the server saw c[1] close is refused too */
	metric_503s = 0;
	uint64_t m = metric(&s, "tally_connections_refused_per_address_total", NULL);
	cr_assert_eq(m, refused + metric_503s, "%" PRIu64 " refused, %" PRIu64 " by /metrics", m,
		     metric_503s);
	tcli_close(c[0]);
	cr_assert_eq(tsrv_wait(&s, SIGTERM), 0);
	tdir_remove(&s);
}

Test(auth_server, http_auth_failures_are_logged_rate_limited_and_counted, .timeout = 120)
{
	tsrv s;
	tdir_make(&s);
	const char *extra[] = {"--token", TOKEN, "--auth-timeout", "1s", NULL};
	tsrv_start(&s, extra);
	const char *body = "t,k=a v=1 1\n";
	char req[512];
	/* no token, then a wrong one: both 401, one log line for both */
	snprintf(req, sizeof req,
		 "POST /write HTTP/1.1\r\nHost: t\r\nContent-Length: %zu\r\n\r\n%s", strlen(body),
		 body);
	cr_assert_eq(http_status(&s, req), 401);
	snprintf(req, sizeof req,
		 "POST /write HTTP/1.1\r\nHost: t\r\nAuthorization: Token wrong-token-0123456"
		 "\r\nContent-Length: %zu\r\n\r\n%s",
		 strlen(body), body);
	cr_assert_eq(http_status(&s, req), 401);
	/* a wrong #!auth on the line-protocol port counts with them */
	tcli *c = tcli_open(s.port);
	tcli_sendf(c, "#!auth not-the-token-0123\n");
	free(tcli_expect(c, "ERR authentication failed"));
	tcli_close(c);
	/* a silent connection is closed at the deadline, and counted */
	c = tcli_open(s.port);
	free(tcli_expect(c, "ERR authentication timeout"));
	tcli_close(c);
	c = tcli_open(s.port);
	tcli_sendf(c, "#!auth " TOKEN "\n");
	free(tcli_expect(c, "OK auth"));
	cr_assert_eq(tstat(c, "auth_failures"), 3);
	cr_assert_eq(tstat(c, "auth_closed"), 1);
	cr_assert_eq(metric(&s, "tally_auth_failures_total", "Authorization: Token " TOKEN), 3);
	cr_assert_eq(metric(&s, "tally_auth_closed_total", "Authorization: Token " TOKEN), 1);
	tcli_close(c);
	cr_assert_eq(tsrv_wait(&s, SIGTERM), 0);
	char *log = tsrv_log(&s);
	cr_assert(strstr(log, "authentication failed: no token over HTTP from 127.0.0.1 (0 more "
			      "failures since the last such line)"),
		  "%s", log);
	/* the next failures came within 10 s: counted, not logged */
	int lines = 0;
	for (const char *p = log; (p = strstr(p, "authentication failed")); p++)
		lines++;
	cr_assert_eq(lines, 1, "%d log lines:\n%s", lines, log);
	cr_assert_null(strstr(log, "wrong-token"), "a token is shown:\n%s", log);
	cr_assert_null(strstr(log, "not-the-token"), "a token is shown:\n%s", log);
	free(log);
	tdir_remove(&s);
}
