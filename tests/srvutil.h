/*
 * srvutil.h — tallyd as a child process and a line-oriented TCP client,
 * for Criterion tests that talk to the server (test_server.c,
 * test_tier_server.c).
 *
 * A server is started on a free port of 127.0.0.1 (--port 0 --port-file)
 * in its own temporary directory, its stdout and stderr in tallyd.log
 * there, and is stopped only by its PID. Nothing waits a fixed time for
 * something it could wait on: the port file is polled, replies are read
 * with a deadline, exits are waited for.
 */
#ifndef TALLY_SRVUTIL_H
#define TALLY_SRVUTIL_H

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static inline int64_t su_mono_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* A port of 127.0.0.1 free a moment ago, for a program that must be told
 * its port (a broker, a node named in another's peers). */
static inline unsigned su_free_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	cr_assert(bind(fd, (struct sockaddr *)&a, sizeof a) == 0);
	socklen_t n = sizeof a;
	getsockname(fd, (struct sockaddr *)&a, &n);
	close(fd);
	return ntohs(a.sin_port);
}

/* ---------------------------------------------------------------- the server */

typedef struct tsrv {
	pid_t pid;
	unsigned port;
	char dir[128];  /* temporary directory of this test */
	char data[160]; /* its data directory */
	char log[160];  /* tallyd's stdout and stderr */
	char http_portfile[200];
} tsrv;

static inline int su_rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(p);
}

static inline void tdir_make(tsrv *s)
{
	memset(s, 0, sizeof *s);
	snprintf(s->dir, sizeof s->dir, "/tmp/tally-test-srv-XXXXXX");
	cr_assert_not_null(mkdtemp(s->dir));
	snprintf(s->data, sizeof s->data, "%s/data", s->dir);
	snprintf(s->log, sizeof s->log, "%s/tallyd.log", s->dir);
	snprintf(s->http_portfile, sizeof s->http_portfile, "%s/http-port", s->dir);
}

static inline void tdir_remove(tsrv *s)
{
	nftw(s->dir, su_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* Runs tallyd (the binary named by $TALLYD) with --data s->data and the
 * given arguments (NULL-terminated) and no TALLY_S3_* or AWS_* variables
 * in its environment, so every setting comes from its config and flags.
 * With a port file (listen 1) waits until it listens; otherwise returns
 * at once. */
static inline void tsrv_spawn(tsrv *s, const char *const *args, int listen)
{
	const char *bin = getenv("TALLYD");
	cr_assert_not_null(bin, "TALLYD must name the tallyd binary");
	char portfile[200];
	snprintf(portfile, sizeof portfile, "%s/port", s->dir);
	unlink(portfile);
	/* --prefault off: tests start dozens of servers, and each would
	 * fault in 512 MiB (a second of CPU on a VM) it never fills; the
	 * mechanism has its own test (engine::prefault_...). A test's own
	 * arguments come later and win. */
	const char *argv[64] = {bin, "--data", s->data, "--prefault", "off"};
	int n = 5;
	if (listen) {
		/* Any free HTTP port too (8429 may be taken, and tests run side
		 * by side); its port file is s->dir/http-port. */
		const char *more[] = {"--port",      "0", "--port-file",      portfile,
				      "--http-port", "0", "--http-port-file", s->http_portfile};
		for (int i = 0; i < 8; i++)
			argv[n++] = more[i];
	}
	for (int i = 0; args && args[i] && n < 63; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	pid_t pid = fork();
	cr_assert(pid >= 0);
	if (pid == 0) {
		/* Dies with the test, and holds none of the runner's pipes. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		static const char *const env[] = {"TALLY_S3_BUCKET",       "TALLY_S3_ENDPOINT",
						  "TALLY_S3_PREFIX",       "AWS_ENDPOINT_URL_S3",
						  "AWS_ENDPOINT_URL",      "AWS_REGION",
						  "AWS_DEFAULT_REGION",    "AWS_ACCESS_KEY_ID",
						  "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"};
		for (size_t i = 0; i < sizeof env / sizeof env[0]; i++)
			unsetenv(env[i]);
		int fd = open(s->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
		int nul = open("/dev/null", O_RDONLY);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
			close(fd);
		}
		if (nul >= 0) {
			dup2(nul, 0);
			close(nul);
		}
		execv(bin, (char *const *)argv);
		_exit(127);
	}
	s->pid = pid;
	if (!listen)
		return;
	int64_t deadline = su_mono_ms() + 20000;
	for (;;) {
		FILE *f = fopen(portfile, "r");
		if (f) {
			int ok = fscanf(f, "%u", &s->port) == 1;
			fclose(f);
			if (ok)
				return;
		}
		int st;
		if (waitpid(pid, &st, WNOHANG) == pid)
			cr_assert_fail("tallyd exited at start (status %d); see %s", st, s->log);
		cr_assert(su_mono_ms() < deadline, "tallyd did not start in 20 s");
		usleep(5000); /* polling the port file */
	}
}

/* Starts tallyd on s->data with two shards, warnings only (TALLYD_LOG=info
 * shows more when debugging a test), the extra flags (NULL-terminated),
 * then those in $TALLYD_EXTRA ("--io epoll": the whole suite on the other
 * loop); returns once it listens. */
static inline void tsrv_start(tsrv *s, const char *const *extra)
{
	const char *args[64] = {"--shards", "2", "--log-level",
				getenv("TALLYD_LOG") ? getenv("TALLYD_LOG") : "warn"};
	int n = 4;
	for (int i = 0; extra && extra[i] && n < 63; i++)
		args[n++] = extra[i];
	char env_extra[256];
	const char *ex = getenv("TALLYD_EXTRA");
	if (ex) {
		snprintf(env_extra, sizeof env_extra, "%s", ex);
		for (char *save = NULL, *t = strtok_r(env_extra, " ", &save); t && n < 63;
		     t = strtok_r(NULL, " ", &save))
			args[n++] = t;
	}
	args[n] = NULL;
	tsrv_spawn(s, args, 1);
}

/* The HTTP port of a server started with a port file (tallyd writes it
 * before the line protocol's). */
static inline unsigned tsrv_http_port(const tsrv *s)
{
	unsigned p = 0;
	FILE *f = fopen(s->http_portfile, "r");
	cr_assert_not_null(f, "no HTTP port file %s", s->http_portfile);
	cr_assert_eq(fscanf(f, "%u", &p), 1);
	fclose(f);
	return p;
}

/* Waits for the server to exit (after a signal when sig != 0); returns
 * its exit code, or 128 + the signal that ended it. */
static inline int tsrv_wait(tsrv *s, int sig)
{
	if (s->pid <= 0)
		return -1;
	if (sig)
		kill(s->pid, sig);
	int st = 0;
	int64_t deadline = su_mono_ms() + 30000;
	for (;;) {
		pid_t r = waitpid(s->pid, &st, WNOHANG);
		if (r == s->pid)
			break;
		if (su_mono_ms() > deadline) {
			kill(s->pid, SIGKILL);
			waitpid(s->pid, &st, 0);
			cr_assert_fail("tallyd did not exit within 30 s (signal %d)", sig);
		}
		usleep(2000);
	}
	s->pid = 0;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* A "Name: N kB" line of the server's /proc/PID/status in KiB (VmRSS,
 * RssAnon), 0 if unreadable. */
static inline uint64_t tsrv_status_kib(const tsrv *s, const char *name)
{
	char path[64], line[256];
	snprintf(path, sizeof path, "/proc/%d/status", (int)s->pid);
	FILE *f = fopen(path, "r");
	uint64_t kib = 0;
	size_t n = strlen(name);
	while (f && fgets(line, sizeof line, f))
		if (!strncmp(line, name, n) && line[n] == ':') {
			kib = strtoull(line + n + 1, NULL, 10);
			break;
		}
	if (f)
		fclose(f);
	return kib;
}

/* The whole log (malloc'd, NUL-terminated). */
static inline char *tsrv_log(const tsrv *s)
{
	FILE *f = fopen(s->log, "r");
	cr_assert_not_null(f, "no log %s", s->log);
	size_t cap = 1 << 16, n = 0, k;
	char *buf = malloc(cap);
	while ((k = fread(buf + n, 1, cap - n - 1, f)) > 0) {
		n += k;
		if (cap - n - 1 == 0)
			buf = realloc(buf, cap *= 2);
	}
	fclose(f);
	buf[n] = 0;
	return buf;
}

/* ---------------------------------------------------------------- a client */

typedef struct tcli {
	int fd;
	char buf[1 << 16];
	size_t len;
	int eof;
} tcli;

static inline tcli *tcli_open(unsigned port)
{
	tcli *c = calloc(1, sizeof *c);
	cr_assert_not_null(c);
	c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert(c->fd >= 0);
	struct sockaddr_in a = {.sin_family = AF_INET,
				.sin_port = htons((uint16_t)port),
				.sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	cr_assert(connect(c->fd, (struct sockaddr *)&a, sizeof a) == 0, "connect: %s",
		  strerror(errno));
	int one = 1;
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	return c;
}

static inline void tcli_close(tcli *c)
{
	if (!c)
		return;
	close(c->fd);
	free(c);
}

/* Sends all n bytes; 0, or -errno when the connection failed (a peer
 * that closed or reset it: EPIPE, ECONNRESET). Asserts nothing, so that
 * threads and tests of closing servers can use it; callers that expect
 * the send to work assert the 0. */
static inline int tcli_send(tcli *c, const char *p, size_t n)
{
	while (n) {
		ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static inline void tcli_sendf(tcli *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static inline void tcli_sendf(tcli *c, const char *fmt, ...)
{
	char buf[4096];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	cr_assert(n > 0 && (size_t)n < sizeof buf);
	int rc = tcli_send(c, buf, (size_t)n);
	cr_assert_eq(rc, 0, "send: %s", strerror(-rc));
}

/* The next reply line (malloc'd, '\n' removed), NULL at EOF or after
 * timeout_ms. */
static inline char *tcli_line(tcli *c, int timeout_ms)
{
	int64_t deadline = su_mono_ms() + timeout_ms;
	for (;;) {
		char *nl = memchr(c->buf, '\n', c->len);
		if (nl) {
			size_t n = (size_t)(nl - c->buf);
			char *l = malloc(n + 1);
			memcpy(l, c->buf, n);
			l[n] = 0;
			memmove(c->buf, nl + 1, c->len - n - 1);
			c->len -= n + 1;
			return l;
		}
		if (c->eof || c->len == sizeof c->buf)
			return NULL;
		int left = (int)(deadline - su_mono_ms());
		struct pollfd pf = {.fd = c->fd, .events = POLLIN};
		if (poll(&pf, 1, left > 0 ? left : 0) <= 0) {
			if (left <= 0)
				return NULL;
			continue;
		}
		ssize_t r = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
		if (r <= 0)
			c->eof = 1;
		else
			c->len += (size_t)r;
	}
}

/* Reads the next line and asserts it starts with prefix; returns it
 * (malloc'd). */
static inline char *tcli_expect(tcli *c, const char *prefix)
{
	char *l = tcli_line(c, 20000);
	cr_assert_not_null(l, "expected a line starting with '%s', got none", prefix);
	cr_assert(strncmp(l, prefix, strlen(prefix)) == 0, "expected '%s...', got '%s'", prefix, l);
	return l;
}

/* Sends #!sync, skips other replies (none may be an ERR), returns the
 * connection's accepted and rejected counts (either pointer may be NULL). */
static inline void tcli_sync(tcli *c, uint64_t *acc, uint64_t *rej)
{
	tcli_sendf(c, "#!sync\n");
	for (;;) {
		char *l = tcli_line(c, 20000);
		cr_assert_not_null(l, "no sync answer");
		uint64_t a, r;
		if (sscanf(l, "OK sync accepted=%" SCNu64 " rejected=%" SCNu64, &a, &r) == 2) {
			free(l);
			if (acc)
				*acc = a;
			if (rej)
				*rej = r;
			return;
		}
		cr_assert(strncmp(l, "ERR", 3), "%s", l);
		free(l);
	}
}

typedef struct ttable {
	char **rows; /* rows[0] is the header */
	size_t n;
	char *err;
} ttable;

static inline void ttable_free(ttable *t)
{
	for (size_t i = 0; i < t->n; i++)
		free(t->rows[i]);
	free(t->rows);
	free(t->err);
	memset(t, 0, sizeof *t);
}

/* Sends a command, reads its table (header, rows, END n) or its ERR. */
static inline void tcli_query(tcli *c, ttable *t, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static inline void tcli_query(tcli *c, ttable *t, const char *fmt, ...)
{
	char cmd[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof cmd, fmt, ap);
	va_end(ap);
	memset(t, 0, sizeof *t);
	tcli_sendf(c, "%s\n", cmd);
	size_t cap = 0;
	for (;;) {
		char *l = tcli_line(c, 30000);
		cr_assert_not_null(l, "no answer to %s", cmd);
		if (t->n == 0 && !strchr(l, '\t')) {
			cr_assert(strncmp(l, "ERR", 3) == 0, "unexpected '%s' for %s", l, cmd);
			t->err = l;
			return;
		}
		if (!strncmp(l, "END ", 4)) {
			cr_assert_eq(strtoull(l + 4, NULL, 10), t->n - 1, "%s: %s", cmd, l);
			free(l);
			return;
		}
		cr_assert(strncmp(l, "ERR", 3), "%s: %s", cmd, l);
		if (t->n == cap) {
			cap = cap ? cap * 2 : 16;
			t->rows = realloc(t->rows, cap * sizeof *t->rows);
		}
		t->rows[t->n++] = l;
	}
}

/* Cell j of a row (a copy valid until the next call). */
static inline const char *tcell(const char *row, int j)
{
	static char buf[4096];
	const char *p = row;
	for (int k = 0; k < j; k++) {
		p = strchr(p, '\t');
		cr_assert_not_null(p, "row '%s' has no cell %d", row, j);
		p++;
	}
	size_t n = strcspn(p, "\t");
	cr_assert_lt(n, sizeof buf);
	memcpy(buf, p, n);
	buf[n] = 0;
	return buf;
}

/* kill() returns before the signal is taken: a SIGSTOPped node could still
 * answer the next query. Waits until /proc says it is stopped. */
static inline void tsrv_wait_stopped(pid_t pid)
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

/* One row of #!stats by name. */
static inline uint64_t tstat(tcli *c, const char *name)
{
	ttable t;
	tcli_query(c, &t, "#!stats");
	cr_assert_null(t.err, "%s", t.err);
	for (size_t i = 1; i < t.n; i++)
		if (!strcmp(tcell(t.rows[i], 0), name)) {
			uint64_t v = strtoull(tcell(t.rows[i], 1), NULL, 10);
			ttable_free(&t);
			return v;
		}
	cr_assert_fail("no stat %s", name);
	return 0;
}

#endif
