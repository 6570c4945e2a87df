/*
 * torture.c — kill -9 and SIGTERM trials against a real tallyd under load,
 * and a soak at a steady rate (bench/README.md, "torture and soak").
 *
 * Trials: tallyd runs in a temporary directory on a free 127.0.0.1 port.
 * Writer connections stream line protocol and send #!sync now and then; a
 * sync's OK means every line before it on that connection is durable
 * (docs/protocol.md), so each writer knows exactly which of its events are
 * acknowledged. The program kills tallyd with SIGKILL at a random moment
 * (short flush intervals put kills in flushes; some kills follow a
 * "flushed"/"merged" log line, which lands them in the merge that runs
 * after each flush; some trials kill it again while it recovers), starts
 * it again and checks over the protocol that every acknowledged event is
 * there exactly once and nothing is doubled. With --sigterm the stop is
 * graceful and the shutdown line's accepted count acknowledges too.
 *
 * The idea that makes the check exact and cheap: every event carries a
 * unique integer id (field `id`), and its key, time and value follow from
 * the id. Trial t writes only into day t of the table, so the current
 * trial is checked id by id with #!scan, and every earlier trial by its
 * day's row of a 1-day #!series (count and exact sum), compared with what
 * the earlier checks found there; #!agg over everything closes the books.
 * An unacknowledged event may be found at most once; once a check has seen
 * it (or not), later checks must see it the same way.
 *
 * --soak runs one tallyd for --minutes at --rate events/s with queries and
 * a late backlog, prints tallyd's RSS every --sample-seconds and the RSS
 * slope after the first flush (least squares, MB/hour), then checks the
 * counts with #!agg.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
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

#include "client.h"

#define T0       INT64_C(1699920000000000000) /* 2023-11-14T00:00:00Z */
#define NS_SEC   INT64_C(1000000000)
#define NS_HOUR  (3600 * NS_SEC)
#define NS_DAY   (24 * NS_HOUR)
#define NKEYS    8
#define MAX_W    16
#define MAX_ARGS 32
#define INJECT_N 10 /* events --inject loses or doubles */

/* ---------------------------------------------------------------- options */

typedef struct opts {
	enum { MODE_KILL9, MODE_SIGTERM, MODE_SOAK } mode;
	unsigned trials, writers, shards;
	unsigned fresh_every; /* a new store every N trials; 0: one store */
	double seconds;       /* longest load per trial */
	uint64_t seed;        /* 0: from the clock */
	uint64_t trial_ids;   /* ids one trial may write */
	uint64_t min_acked;   /* fewer over the run: exit 1 (the run tested nothing) */
	int timeout_scale;    /* --asan: every bounded wait times this */
	const char *io;       /* --io auto|io_uring|epoll */
	const char *tallyd;   /* the binary */
	const char *parent;   /* where the temporary directory goes */
	const char *extra[MAX_ARGS];
	unsigned n_extra;
	int keep, verbose;
	/* --inject: the checker's own test (exit 0 only if it finds exactly
	 * the fault injected) */
	enum { INJECT_NONE, INJECT_LOSE, INJECT_DOUBLE } inject;
	/* soak */
	double minutes, sample_s;
	uint64_t rate;
	unsigned late_pct;
} opts;

static opts O = {
	.mode = MODE_KILL9,
	.trials = 20,
	.writers = 3,
	.shards = 2,
	.seconds = 1.0,
	.trial_ids = 2000000,
	.min_acked = 1,
	.timeout_scale = 1,
	.io = "auto",
	.parent = "/tmp",
	.minutes = 60,
	.sample_s = 60,
	.rate = UINT64_MAX, /* unset: flat out in trials, 20000/s in the soak */
	.late_pct = 10,
};

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "torture: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	exit(2);
}

static int64_t mono_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static void sleep_ms(int64_t ms)
{
	if (ms <= 0)
		return;
	struct timespec t = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000};
	while (nanosleep(&t, &t) < 0 && errno == EINTR)
		;
}

/* splitmix64: one stream per thread, all derived from --seed. */
static uint64_t rnd(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static uint64_t below(uint64_t *s, uint64_t n)
{
	return n ? rnd(s) % n : 0;
}

/* ---------------------------------------------------------------- events */

/* An id's hash: splitmix64's output for the id as its state. */
static uint64_t mix(uint64_t x)
{
	return rnd(&x);
}

static unsigned key_of(uint64_t id)
{
	return (unsigned)(mix(id) % NKEYS);
}

static unsigned v_of(uint64_t id)
{
	return (unsigned)(id % 97);
}

/* Event i of trial t: noon of day t plus a microsecond per event, one in
 * eight 1-6 hours late (a backlog), the rest jittered by up to 10 minutes
 * so they arrive out of order across 5-minute windows. Always inside day t. */
static int64_t ts_of(unsigned trial, uint64_t i, uint64_t id)
{
	uint64_t h = mix(id ^ 0x5eed);
	int64_t back = h % 8 == 0 ? NS_HOUR + (int64_t)((h >> 8) % (5 * 3600)) * NS_SEC
				  : (int64_t)((h >> 8) % 600) * NS_SEC;
	return T0 + (int64_t)trial * NS_DAY + 12 * NS_HOUR + (int64_t)i * 1000 - back;
}

/* ---------------------------------------------------------------- a client */

/* One connection (tools/client.c), every wait bounded by poll. Lines are
 * returned in place (valid until the next read), at most 64 KiB: no reply
 * this program asks for is longer. */
typedef client_conn conn;

static int conn_open(conn *c, unsigned port)
{
	char p[16];
	snprintf(p, sizeof p, "%u", port);
	return client_connect(c, "127.0.0.1", p, 0, 65535, NULL) ? -1 : 0;
}

static void conn_close(conn *c)
{
	client_close(c);
}

/* 0 when all n bytes went out; -1 when the peer is gone or timeout_ms
 * passed without progress. */
static int conn_send(conn *c, const char *p, size_t n, int timeout_ms)
{
	return client_send(c, p, n, timeout_ms) ? -1 : 0;
}

/* The next reply line without its '\n': 1 and *line set; 0 when none came
 * within timeout_ms (0: only what is buffered or readable now); -1 at EOF
 * or on an error. */
static int conn_line(conn *c, int timeout_ms, char **line)
{
	int r = client_line(c, timeout_ms, line);
	return r < 0 ? -1 : r;
}

/* Cells of a row, split in place at tabs (no cell this program reads has
 * an escape). Returns the number of cells. */
static int split_cells(char *row, char **cell, int max)
{
	int n = 0;
	for (char *p = row; n < max;) {
		cell[n++] = p;
		p = strchr(p, '\t');
		if (!p)
			break;
		*p++ = 0;
	}
	return n;
}

typedef int (*row_fn)(void *ctx, char **cell, int n, char **head, int nh);

/* Sends a query and hands each row to fn with the header's cells. Returns
 * the number of rows, or -1 with why in err (an ERR answer, a timeout, a
 * closed connection, END n disagreeing with the rows, fn's refusal). */
static long conn_table(conn *c, const char *cmd, row_fn fn, void *ctx, char *err, size_t cap)
{
	char q[512];
	int qn = snprintf(q, sizeof q, "%s\n", cmd);
	if (conn_send(c, q, (size_t)qn, 60000 * O.timeout_scale) < 0) {
		snprintf(err, cap, "%s: send failed", cmd);
		return -1;
	}
	char head_buf[512], *head[16], *cell[16], *l;
	int nh = -1;
	long rows = 0;
	for (;;) {
		int r = conn_line(c, 120000 * O.timeout_scale, &l);
		if (r <= 0) {
			snprintf(err, cap, "%s: %s after %ld rows", cmd,
				 r ? "connection closed" : "no answer", rows);
			return -1;
		}
		if (!strchr(l, '\t')) {
			if (nh >= 0 && !strncmp(l, "END ", 4)) {
				if (strtol(l + 4, NULL, 10) != rows) {
					snprintf(err, cap, "%s: '%s' after %ld rows", cmd, l, rows);
					return -1;
				}
				return rows;
			}
			/* No table yet (nothing was ever written, or nothing
			 * survived): the same as no rows, which the checks judge. */
			if (nh < 0 && strstr(l, ": no table '"))
				return 0;
			snprintf(err, cap, "%s: %s", cmd, l);
			return -1;
		}
		if (nh < 0) {
			snprintf(head_buf, sizeof head_buf, "%s", l);
			nh = split_cells(head_buf, head, 16);
			continue;
		}
		int n = split_cells(l, cell, 16);
		rows++;
		if (fn && fn(ctx, cell, n, head, nh) < 0) {
			snprintf(err, cap, "%s: row %ld refused", cmd, rows);
			return -1;
		}
	}
}

static int find_col(char **head, int nh, const char *name)
{
	for (int i = 0; i < nh; i++)
		if (!strcmp(head[i], name))
			return i;
	return -1;
}

/* RFC 3339 UTC as tallyd writes it ("2023-11-14T12:00:00.000001Z") to ns. */
static int parse_time(const char *s, int64_t *ns)
{
	struct tm tm = {0};
	int n = 0;
	if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
		   &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &n) != 6)
		return -1;
	tm.tm_year -= 1900;
	tm.tm_mon -= 1;
	int64_t frac = 0;
	const char *p = s + n;
	if (*p == '.') {
		int digits = 0;
		for (p++; *p >= '0' && *p <= '9'; p++, digits++)
			frac = frac * 10 + (*p - '0');
		for (; digits < 9; digits++)
			frac *= 10;
	}
	if (strcmp(p, "Z"))
		return -1;
	*ns = (int64_t)timegm(&tm) * NS_SEC + frac;
	return 0;
}

typedef struct stat_ctx {
	const char *const *names;
	uint64_t *v;
	int n;
} stat_ctx;

static int stat_row(void *ctx, char **cell, int n, char **head, int nh)
{
	stat_ctx *x = ctx;
	(void)head;
	(void)nh;
	for (int i = 0; n >= 2 && i < x->n; i++)
		if (!strcmp(cell[0], x->names[i]))
			x->v[i] = strtoull(cell[1], NULL, 10);
	return 0;
}

/* Rows of one #!stats by name; UINT64_MAX for those not found. */
static void stats_of(conn *c, const char *const *names, uint64_t *v, int n)
{
	stat_ctx x = {names, v, n};
	char err[256];
	for (int i = 0; i < n; i++)
		v[i] = UINT64_MAX;
	conn_table(c, "#!stats", stat_row, &x, err, sizeof err);
}

/* ---------------------------------------------------------------- tallyd */

typedef struct server {
	pid_t pid;
	unsigned port;
	char dir[256], data[300], log[300], portfile[300];
	char flush[16], sync[16];
} server;

static void rm_tree(const char *dir);

/* A fresh temporary directory under --dir: data/, tallyd.log, port. */
static void server_dir(server *s, const char *what)
{
	if (strlen(O.parent) > 200)
		die("--dir: longer than 200 bytes");
	snprintf(s->dir, sizeof s->dir, "%s/tally-%s-XXXXXX", O.parent, what);
	if (!mkdtemp(s->dir))
		die("mkdtemp %s: %s", s->dir, strerror(errno));
	snprintf(s->data, sizeof s->data, "%s/data", s->dir);
	snprintf(s->log, sizeof s->log, "%s/tallyd.log", s->dir);
	snprintf(s->portfile, sizeof s->portfile, "%s/port", s->dir);
}

/* Starts tallyd on the directory's data; returns at once (the caller waits
 * for the port file with server_wait_listen, or kills before it). */
static void server_spawn(server *s, uint64_t *rng)
{
	/* Flush intervals from 100 ms, so flushes, manifest commits, WAL trims
	 * and the merges after them run all the time under the load. */
	static const char *const flushes[] = {"100ms", "250ms", "1s", "5s", "60s"};
	static const char *const syncs[] = {"50ms", "1s", "1s", "0"};
	snprintf(s->flush, sizeof s->flush, "%s", flushes[below(rng, 5)]);
	snprintf(s->sync, sizeof s->sync, "%s", syncs[below(rng, 4)]);
	unlink(s->portfile);
	char shards[16];
	snprintf(shards, sizeof shards, "%u", O.shards);
	const char *argv[2 * MAX_ARGS + 32] = {
		O.tallyd,    "--data",       s->data, "--port",           "0",    "--port-file",
		s->portfile, "--table-keys", "tt=k",  "--shards",         shards, "--io",
		O.io,        "--prefault",   "off",   "--shutdown-grace", "1s",   "--log-level",
		"info",      "--http-port",  "off"}; /* the trials speak the TCP protocol only */
	int n = 21;
	if (O.mode != MODE_SOAK) {
		argv[n++] = "--flush-interval";
		argv[n++] = s->flush;
		argv[n++] = "--sync-interval";
		argv[n++] = s->sync;
	}
	for (unsigned i = 0; i < O.n_extra; i++)
		argv[n++] = O.extra[i];
	argv[n] = NULL;
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0)
		die("fork: %s", strerror(errno));
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlives this program */
		int fd = open(s->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
		int nul = open("/dev/null", O_RDONLY);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		if (nul >= 0)
			dup2(nul, 0);
		execv(O.tallyd, (char *const *)argv);
		_exit(127);
	}
	s->pid = pid;
}

/* 1 once the port file names the port; 0 if tallyd exited first (status
 * in *st); -1 after timeout_ms. */
static int server_wait_listen(server *s, int timeout_ms, int *st)
{
	int64_t deadline = mono_ms() + timeout_ms;
	for (;;) {
		FILE *f = fopen(s->portfile, "r");
		if (f) {
			int ok = fscanf(f, "%u", &s->port) == 1;
			fclose(f);
			if (ok)
				return 1;
		}
		if (waitpid(s->pid, st, WNOHANG) == s->pid) {
			s->pid = 0;
			return 0;
		}
		if (mono_ms() > deadline)
			return -1;
		sleep_ms(2); /* polling the port file: the restart time's resolution */
	}
}

/* Sends sig (0: none) and waits up to timeout_ms for the exit; returns the
 * exit code or 128 + the signal, -1 if it did not exit (then SIGKILLed). */
static int server_stop(server *s, int sig, int timeout_ms)
{
	if (s->pid <= 0)
		return -1;
	if (sig)
		kill(s->pid, sig);
	int st = 0, late = 0;
	int64_t deadline = mono_ms() + timeout_ms;
	while (waitpid(s->pid, &st, WNOHANG) != s->pid) {
		if (!late && mono_ms() > deadline) {
			kill(s->pid, SIGKILL);
			late = 1;
		}
		sleep_ms(2);
	}
	s->pid = 0;
	if (late)
		return -1;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static long file_size(const char *path)
{
	struct stat sb;
	return stat(path, &sb) == 0 ? (long)sb.st_size : 0;
}

/* Whether the log holds "needle" past byte offset from. */
static int log_has(const char *path, long from, const char *needle)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return 0;
	fseek(f, from, SEEK_SET);
	char line[1024];
	int hit = 0;
	while (!hit && fgets(line, sizeof line, f))
		hit = strstr(line, needle) != NULL;
	fclose(f);
	return hit;
}

/* A "Name: N kB" line of /proc/PID/status in KiB (VmRSS, RssAnon,
 * RssFile), 0 if unreadable. */
static uint64_t proc_kib(pid_t pid, const char *name)
{
	char path[64], line[256];
	snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
	FILE *f = fopen(path, "r");
	uint64_t kib = 0;
	size_t n = strlen(name);
	if (!f)
		return 0;
	while (fgets(line, sizeof line, f))
		if (!strncmp(line, name, n) && line[n] == ':') {
			kib = strtoull(line + n + 1, NULL, 10);
			break;
		}
	fclose(f);
	return kib;
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(p);
}

static void rm_tree(const char *dir)
{
	nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---------------------------------------------------------------- writers */

/* An id's state, one byte per id ever written (the model). */
enum {
	ST_SENT = 1,  /* sent: may be there, at most once */
	ST_ACKED = 2, /* a sync (or the shutdown line) covered it: must be there once */
	ST_REJ = 4,   /* answered with an ERR line: not written */
	ST_KEPT = 8,  /* a check found it: every later check must too */
};

typedef struct trial_ctx {
	unsigned day; /* the trial writes into day T0 + day */
	uint64_t lo, cap;
	_Atomic uint64_t next; /* ids [lo, next) were handed out */
	_Atomic uint64_t acked;
	_Atomic int stop;
	uint8_t *st; /* indexed by id */
	unsigned port;
	unsigned nkeys;
	int64_t soak_t0; /* soak: CLOCK_REALTIME ns at start */
} trial_ctx;

typedef struct writer {
	trial_ctx *t;
	unsigned no;
	uint64_t rng;
	conn c;
	uint64_t lines, ev_lines; /* physical lines and event lines sent */
	/* events sent since the last acknowledgement, with their line numbers */
	uint64_t *pid, *pline;
	size_t pn, pcap;
	uint64_t sent, acked, rejected, sync_errors, syncs;
	int shutdown_seen;
	char err[256];                  /* a protocol failure: fails the run */
	uint64_t *key_acked, *key_vsum; /* soak: per key */
	char *buf;
	size_t buf_cap;
	pthread_t th;
} writer;

static void w_fail(writer *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void w_fail(writer *w, const char *fmt, ...)
{
	if (w->err[0])
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(w->err, sizeof w->err, fmt, ap);
	va_end(ap);
}

static void w_ack(writer *w, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		uint64_t id = w->pid[i];
		if (w->t->st) {
			if (w->t->st[id] & ST_REJ)
				continue;
			w->t->st[id] |= ST_ACKED;
		} else {
			w->key_acked[id % w->t->nkeys]++;
			w->key_vsum[id % w->t->nkeys] += v_of(id);
		}
		w->acked++;
		atomic_fetch_add(&w->t->acked, 1);
	}
}

/* Marks pending events on lines [a, b] rejected. */
static void w_reject(writer *w, uint64_t a, uint64_t b)
{
	for (size_t i = 0; i < w->pn; i++)
		if (w->pline[i] >= a && w->pline[i] <= b) {
			if (w->t->st)
				w->t->st[w->pid[i]] |= ST_REJ;
			w->rejected++;
		}
}

enum { R_OTHER, R_SYNC_OK, R_SYNC_ERR, R_SHUTDOWN };

/* One reply line from tallyd to a writer. */
static int w_reply(writer *w, const char *l)
{
	uint64_t a, b;
	if (sscanf(l, "OK sync accepted=%" SCNu64 " rejected=%" SCNu64, &a, &b) == 2) {
		/* The counts are the connection's totals: all our lines so far. */
		if (a + b != w->ev_lines)
			w_fail(w, "writer %u: '%s' after %" PRIu64 " event lines", w->no, l,
			       w->ev_lines);
		w_ack(w, w->pn);
		w->pn = 0;
		w->syncs++;
		return R_SYNC_OK;
	}
	if (sscanf(l, "OK shutdown accepted=%" SCNu64 " rejected=%" SCNu64, &a, &b) == 2) {
		/* Lines are run in order: the first a + b event lines were, and
		 * those not answered with an ERR are durable. */
		uint64_t first = w->ev_lines - w->pn; /* ordinal of pid[0] */
		if (a + b > w->ev_lines || a + b < first)
			w_fail(w,
			       "writer %u: '%s' after %" PRIu64 " event lines (%" PRIu64
			       " acknowledged before)",
			       w->no, l, w->ev_lines, first);
		else
			w_ack(w, (size_t)(a + b - first));
		w->pn = 0;
		w->shutdown_seen = 1;
		return R_SHUTDOWN;
	}
	if (!strncmp(l, "ERR sync", 8)) {
		/* Not durable, and never will be said to be: these stay
		 * unacknowledged (they may be found at most once). */
		w->sync_errors++;
		w->pn = 0;
		return R_SYNC_ERR;
	}
	if (sscanf(l, "ERR lines %" SCNu64 "-%" SCNu64 ":", &a, &b) == 2) {
		w_reject(w, a, b);
		return R_OTHER;
	}
	if (sscanf(l, "ERR line %" SCNu64 ":", &a) == 1) {
		w_reject(w, a, a);
		if (w->t->st)
			w_fail(w, "writer %u: %s", w->no, l); /* our lines are all good */
		return R_OTHER;
	}
	w_fail(w, "writer %u: unexpected reply '%s'", w->no, l);
	return R_OTHER;
}

static void w_pending(writer *w, uint64_t id)
{
	if (w->pn == w->pcap) {
		w->pcap = w->pcap ? 2 * w->pcap : 4096;
		w->pid = realloc(w->pid, w->pcap * sizeof *w->pid);
		w->pline = realloc(w->pline, w->pcap * sizeof *w->pline);
		if (!w->pid || !w->pline)
			die("out of memory");
	}
	w->pid[w->pn] = id;
	w->pline[w->pn++] = ++w->lines;
	w->ev_lines++;
}

static void w_reserve(writer *w, size_t n)
{
	if (n <= w->buf_cap)
		return;
	w->buf_cap = n;
	w->buf = realloc(w->buf, n);
	if (!w->buf)
		die("out of memory");
}

/* Handles whatever replies are readable now; -1 when the connection ended. */
static int w_drain(writer *w)
{
	char *l;
	int r;
	while ((r = conn_line(&w->c, 0, &l)) > 0)
		w_reply(w, l);
	return r < 0 ? -1 : 0;
}

/* #!sync, then replies until its answer: 0 answered, -1 the connection
 * ended or nothing came within the (generous) limit. */
static int w_sync(writer *w)
{
	w->lines++;
	if (conn_send(&w->c, "#!sync\n", 7, 60000 * O.timeout_scale) < 0)
		return -1;
	for (;;) {
		char *l;
		int r = conn_line(&w->c, 120000 * O.timeout_scale, &l);
		if (r == 0 && !atomic_load(&w->t->stop))
			w_fail(w, "writer %u: #!sync unanswered for %d s", w->no,
			       120 * O.timeout_scale);
		if (r <= 0)
			return -1;
		int k = w_reply(w, l);
		if (k == R_SYNC_OK || k == R_SYNC_ERR)
			return 0;
		if (k == R_SHUTDOWN)
			return -1;
	}
}

/* Trials: batches of 1-5,000 events (now and then 20,000-60,000), a sync
 * after one batch in three, flat out until tallyd goes away. */
static void *writer_main(void *arg)
{
	writer *w = arg;
	trial_ctx *t = w->t;
	if (conn_open(&w->c, t->port) < 0)
		return NULL; /* killed before we connected: nothing sent */
	int64_t t0 = mono_ms();
	while (!atomic_load(&t->stop)) {
		uint64_t n = 1 + below(&w->rng, 5000);
		if (below(&w->rng, 20) == 0)
			n = 20000 + below(&w->rng, 40000);
		uint64_t id0 = atomic_fetch_add(&t->next, n);
		if (id0 >= t->lo + t->cap) {
			w_sync(w); /* this trial's ids are used up */
			break;
		}
		if (id0 + n > t->lo + t->cap)
			n = t->lo + t->cap - id0; /* the other writers stop at the cap */
		w_reserve(w, n * 64);
		size_t len = 0;
		for (uint64_t id = id0; id < id0 + n; id++) {
			len += (size_t)sprintf(
				w->buf + len, "tt,k=k%02u id=%" PRIu64 "i,v=%u %" PRId64 "\n",
				key_of(id), id, v_of(id), ts_of(t->day, id - t->lo, id));
			t->st[id] = ST_SENT;
			w_pending(w, id);
		}
		w->sent += n;
		if (conn_send(&w->c, w->buf, len, 60000 * O.timeout_scale) < 0)
			break;
		if (w_drain(w) < 0 || w->shutdown_seen)
			break;
		if (below(&w->rng, 3) == 0 && w_sync(w) < 0)
			break;
		if (O.rate) /* --rate: this writer's share, on average */
			sleep_ms(t0 + (int64_t)(w->sent * 1000 * O.writers / O.rate) - mono_ms());
	}
	if (!atomic_load(&t->stop) && !w->shutdown_seen) {
		/* the ids ran out or the connection failed: read what is left
		 * (with SIGTERM the shutdown line says what was written) */
		char *l;
		while (conn_line(&w->c, 60000 * O.timeout_scale, &l) > 0)
			if (w_reply(w, l) == R_SHUTDOWN)
				break;
	}
	conn_close(&w->c);
	return NULL;
}

static void writers_start(writer *ws, trial_ctx *t, uint64_t *rng)
{
	for (unsigned i = 0; i < O.writers; i++) {
		writer *w = &ws[i];
		w->t = t;
		w->no = i;
		w->rng = rnd(rng);
		w->c.fd = -1;
		w->lines = w->ev_lines = 0;
		w->pn = 0;
		w->shutdown_seen = 0;
		w->sent = w->acked = w->rejected = w->sync_errors = w->syncs = 0;
		void *(*fn)(void *) = writer_main;
		if (pthread_create(&w->th, NULL, fn, w))
			die("pthread_create failed");
	}
}

/* ---------------------------------------------------------------- the run */

typedef struct run {
	server s;
	uint64_t rng;
	uint8_t *st;          /* per id */
	uint64_t st_cap, end; /* ids [0, end) were handed out */
	/* what the checks found, per trial (day) and key: count and sum of v */
	uint64_t (*cnt)[NKEYS], (*vsum)[NKEYS];
	unsigned days; /* trials on the current store: its days 0 .. days-1 */
	unsigned trials, stores;
	/* totals, over every store */
	uint64_t sent, acked, lost, doubled, wrong, kept, gone, rejected, sync_errors;
	unsigned killed, recovery_kills, after_flush, sigterms;
	int64_t *restart_ms;
	unsigned n_restart;
	uint64_t injected; /* events --inject lost or doubled on purpose */
	int failed;
	char why[512];
} run;

static void fail(run *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(run *r, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char msg[512];
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	fprintf(stderr, "torture: FAIL: %s\n", msg);
	if (!r->failed)
		snprintf(r->why, sizeof r->why, "%s", msg);
	r->failed = 1;
}

/* Starts tallyd and waits until it listens; its time goes into the
 * restart figures. A tallyd that exits or does not listen in time fails
 * the run (its log says why). */
static int run_start(run *r)
{
	int64_t t = mono_ms();
	server_spawn(&r->s, &r->rng);
	int st = 0, k = server_wait_listen(&r->s, 120000 * O.timeout_scale, &st);
	if (k <= 0) {
		if (k < 0)
			server_stop(&r->s, SIGKILL, 10000);
		fail(r, "tallyd %s (see %s)",
		     k ? "did not listen within 120 s" : "exited while starting", r->s.log);
		return -1;
	}
	r->restart_ms = realloc(r->restart_ms, (r->n_restart + 1) * sizeof *r->restart_ms);
	r->restart_ms[r->n_restart++] = mono_ms() - t;
	return 0;
}

/* SIGKILL; a tallyd that already died by itself fails the run. */
static void run_kill(run *r)
{
	int st;
	if (waitpid(r->s.pid, &st, WNOHANG) == r->s.pid) {
		r->s.pid = 0;
		fail(r, "tallyd died by itself (status %#x; see %s)", st, r->s.log);
		return;
	}
	server_stop(&r->s, SIGKILL, 30000 * O.timeout_scale);
	r->killed++;
}

/* ------------------------------------------------------------ the checks */

typedef struct scan_ctx {
	run *r;
	trial_ctx *t;
	unsigned key;
	uint8_t *seen; /* per id of the trial */
	int ci, cv;
	unsigned reported;
} scan_ctx;

static int scan_row(void *ctx, char **cell, int n, char **head, int nh)
{
	scan_ctx *x = ctx;
	if (x->ci < 0) {
		x->ci = find_col(head, nh, "id");
		x->cv = find_col(head, nh, "v");
		if (x->ci < 0 || x->cv < 0)
			return -1;
	}
	if (n <= x->ci || n <= x->cv)
		return -1;
	trial_ctx *t = x->t;
	uint64_t id = strtoull(cell[x->ci], NULL, 10);
	int64_t ts = 0;
	int ok = parse_time(cell[0], &ts) == 0 && id >= t->lo && id < atomic_load(&t->next) &&
		 key_of(id) == x->key && ts == ts_of(t->day, id - t->lo, id) &&
		 strtod(cell[x->cv], NULL) == v_of(id) && (x->r->st[id] & ST_SENT);
	if (!ok) {
		x->r->wrong++;
		if (x->reported++ < 5)
			fail(x->r,
			     "day %u key k%02u: row '%s' id %s v %s is no event written there",
			     t->day, x->key, cell[0], cell[x->ci], cell[x->cv]);
		return 0;
	}
	if (x->seen[id - t->lo] < 255)
		x->seen[id - t->lo]++;
	return 0;
}

typedef struct series_ctx {
	run *r;
	unsigned key, upto; /* days [0, upto) */
	uint8_t *had;       /* which days answered */
	unsigned reported;
} series_ctx;

static int series_row(void *ctx, char **cell, int n, char **head, int nh)
{
	series_ctx *x = ctx;
	(void)head;
	(void)nh;
	int64_t start;
	if (n < 3 || parse_time(cell[0], &start) < 0 || start < T0 || (start - T0) % NS_DAY)
		return -1;
	uint64_t day = (uint64_t)((start - T0) / NS_DAY);
	uint64_t c = strtoull(cell[1], NULL, 10);
	double sum = strtod(cell[2], NULL);
	run *r = x->r;
	if (day >= x->upto)
		return -1;
	x->had[day] = 1;
	uint64_t want = r->cnt[day][x->key];
	if (c != want || sum != (double)r->vsum[day][x->key]) {
		if (c < want)
			r->lost += want - c;
		else if (c > want)
			r->doubled += c - want;
		else
			r->wrong++;
		if (x->reported++ < 5)
			fail(r,
			     "day %" PRIu64 " key k%02u: series says %" PRIu64
			     " events (v sum %s), "
			     "earlier checks found %" PRIu64 " (%" PRIu64 ")",
			     day, x->key, c, cell[2], want, r->vsum[day][x->key]);
		/* report each difference once */
		r->cnt[day][x->key] = c;
		r->vsum[day][x->key] = (uint64_t)sum;
	}
	return 0;
}

typedef struct keys_ctx {
	run *r;
	unsigned days;
	unsigned seen_keys;
} keys_ctx;

/* #!agg and #!keys rows: count and sum over every day so far. */
static int total_row(void *ctx, char **cell, int n, char **head, int nh)
{
	keys_ctx *x = ctx;
	run *r = x->r;
	int ck = find_col(head, nh, "key"), cc = find_col(head, nh, "count"),
	    cs = find_col(head, nh, "sum");
	if (cc < 0 || cs < 0 || n <= cc || n <= cs)
		return -1;
	unsigned k = x->seen_keys; /* #!agg: the key asked for */
	if (ck >= 0 && (sscanf(cell[ck], "k%u", &k) != 1 || k >= NKEYS))
		return -1;
	x->seen_keys++;
	uint64_t want = 0, vsum = 0;
	for (unsigned d = 0; d < x->days; d++) {
		want += r->cnt[d][k];
		vsum += r->vsum[d][k];
	}
	if (strtoull(cell[cc], NULL, 10) != want || strtod(cell[cs], NULL) != (double)vsum) {
		r->wrong++;
		fail(r,
		     "key k%02u: %s says %s events (v sum %s), the days add up to %" PRIu64
		     " (%" PRIu64 ")",
		     k, ck >= 0 ? "#!keys" : "#!agg", cell[cc], cell[cs], want, vsum);
	}
	return 0;
}

/* After a restart: the trial's day id by id, the earlier days by count. */
static void check(run *r, trial_ctx *t)
{
	conn q = {.fd = -1};
	char cmd[256], err[512];
	if (conn_open(&q, r->s.port) < 0) {
		fail(r, "cannot connect to tallyd after the restart");
		return;
	}
	uint64_t n = atomic_load(&t->next) - t->lo;
	uint8_t *seen = calloc(n ? n : 1, 1);
	int64_t d0 = T0 + (int64_t)t->day * NS_DAY;
	for (unsigned k = 0; k < NKEYS; k++) {
		scan_ctx x = {.r = r, .t = t, .key = k, .seen = seen, .ci = -1, .cv = -1};
		snprintf(cmd, sizeof cmd, "#!scan tt k%02u %" PRId64 " %" PRId64, k, d0,
			 d0 + NS_DAY);
		if (conn_table(&q, cmd, scan_row, &x, err, sizeof err) < 0)
			fail(r, "%s", err);
	}
	unsigned reported = 0;
	for (uint64_t i = 0; i < n; i++) {
		uint64_t id = t->lo + i;
		uint8_t s = r->st[id];
		unsigned k = key_of(id);
		if (s & ST_ACKED) {
			if (!seen[i]) {
				r->lost++;
				if (reported++ < 5)
					fail(r,
					     "id %" PRIu64
					     " (day %u key k%02u) was acknowledged and is gone",
					     id, t->day, k);
			}
		} else if (seen[i] == 1) {
			r->kept++;
		} else if (!seen[i]) {
			r->gone++;
		}
		if (seen[i] > 1) {
			r->doubled += seen[i] - 1u;
			if (reported++ < 5)
				fail(r, "id %" PRIu64 " (day %u key k%02u) is there %u times", id,
				     t->day, k, seen[i]);
		}
		if (seen[i]) {
			r->st[id] |= ST_KEPT;
			r->cnt[t->day][k] += seen[i];
			r->vsum[t->day][k] += (uint64_t)seen[i] * v_of(id);
		}
	}
	free(seen);
	/* Earlier days: one 1-day window each, as earlier checks left them
	 * (an unacknowledged event they did not find must not come back). */
	if (t->day > 0) {
		uint8_t *had = calloc(t->day, 1);
		for (unsigned k = 0; k < NKEYS; k++) {
			memset(had, 0, t->day);
			series_ctx x = {.r = r, .key = k, .upto = t->day, .had = had};
			snprintf(cmd, sizeof cmd, "#!series tt v k%02u 1d %" PRId64 " %" PRId64, k,
				 T0, d0);
			if (conn_table(&q, cmd, series_row, &x, err, sizeof err) < 0)
				fail(r, "%s", err);
			for (unsigned d = 0; d < t->day; d++)
				if (!had[d] && r->cnt[d][k]) {
					r->lost += r->cnt[d][k];
					fail(r,
					     "day %u key k%02u: series has no row, earlier checks "
					     "found %" PRIu64 " events",
					     d, k, r->cnt[d][k]);
				}
		}
		free(had);
	}
	for (unsigned k = 0; k < NKEYS; k++) {
		keys_ctx x = {.r = r, .days = t->day + 1, .seen_keys = k};
		snprintf(cmd, sizeof cmd, "#!agg tt v k%02u %" PRId64 " %" PRId64, k, T0,
			 d0 + NS_DAY);
		if (conn_table(&q, cmd, total_row, &x, err, sizeof err) < 0)
			fail(r, "%s", err);
	}
	keys_ctx x = {.r = r, .days = t->day + 1};
	snprintf(cmd, sizeof cmd, "#!keys tt v %" PRId64 " %" PRId64, T0, d0 + NS_DAY);
	if (conn_table(&q, cmd, total_row, &x, err, sizeof err) < 0)
		fail(r, "%s", err);
	conn_close(&q);
}

/* ------------------------------------------------------------ the trials */

/* --fresh-every: the store so far was checked whole by the last trial's
 * check; it is killed and deleted and the next trials start on an empty
 * one, so a trial costs the same at trial 1,000 as at trial 1 (a store
 * that keeps every trial's day makes each restart and check slower). Ids
 * and days start again at 0 (the model is per store); the totals and
 * restart times carry over. The first start of a new store is no restart. */
static int fresh_store(run *r)
{
	if (r->s.pid > 0)
		server_stop(&r->s, SIGKILL, 30000 * O.timeout_scale);
	if (!O.keep)
		rm_tree(r->s.dir);
	server_dir(&r->s, "torture");
	r->end = 0;
	r->days = 0;
	r->stores++;
	if (run_start(r) < 0)
		return -1;
	r->n_restart--;
	return 0;
}

static void grow_model(run *r, trial_ctx *t)
{
	if (t->lo + t->cap + INJECT_N > r->st_cap) {
		r->st_cap = t->lo + t->cap + INJECT_N;
		r->st = realloc(r->st, r->st_cap);
		if (!r->st)
			die("out of memory for %" PRIu64 " ids", r->st_cap);
	}
	memset(r->st + t->lo, 0, t->cap + INJECT_N);
	r->cnt = realloc(r->cnt, (r->days + 1) * sizeof *r->cnt);
	r->vsum = realloc(r->vsum, (r->days + 1) * sizeof *r->vsum);
	if (!r->cnt || !r->vsum)
		die("out of memory");
	memset(r->cnt[r->days], 0, sizeof r->cnt[0]);
	memset(r->vsum[r->days], 0, sizeof r->vsum[0]);
	r->days++;
}

/* Waits until the kill moment: ms after the load started, or (after_flush)
 * a "flushed"/"merged" log line plus up to 20 ms (if none comes within
 * --seconds + 2 s, then).
 * The last trial of a run that has not yet seen min_acked acknowledgements
 * waits for them (bounded): a starved machine must not make a run that
 * tested nothing pass. */
static int wait_kill(run *r, trial_ctx *t, int64_t ms, int after_flush, int last, long log_off)
{
	int64_t start = mono_ms(), deadline = start + ms;
	int hit = 0;
	if (after_flush) /* flush intervals reach 1 s: give one the time to come */
		deadline = start + (int64_t)(O.seconds * 1000) + 2000;
	for (;;) {
		int64_t now = mono_ms();
		if (after_flush && !hit &&
		    (log_has(r->s.log, log_off, "flushed") ||
		     log_has(r->s.log, log_off, "merged"))) {
			hit = 1;
			deadline = now + (int64_t)below(&r->rng, 21);
		}
		uint64_t acked = atomic_load(&t->acked);
		int starving = ((last && r->acked + acked < O.min_acked) ||
				(O.inject == INJECT_DOUBLE && !r->injected && acked < INJECT_N)) &&
			       now - start < 120000 * O.timeout_scale;
		if (now >= deadline && !starving)
			return hit;
		sleep_ms(hit || !after_flush ? 1 : 5);
	}
}

/* --inject lose: the model says ten events past the trial's last were
 * acknowledged, though none was ever sent. --inject double: ten
 * acknowledged events are written once more (after the restart, as a
 * client retrying them would). Either way the check must report exactly
 * those ten. Once per run, in the first trial with ten acknowledged. */
static void inject(run *r, trial_ctx *t)
{
	uint64_t next = atomic_load(&t->next), ids[INJECT_N], n = 0;
	if (O.inject == INJECT_LOSE) {
		for (uint64_t id = next; id < next + INJECT_N; id++)
			r->st[id] = ST_SENT | ST_ACKED;
		atomic_store(&t->next, next + INJECT_N);
		r->acked += INJECT_N;
		r->injected = INJECT_N;
		return;
	}
	for (uint64_t id = t->lo; id < next && n < INJECT_N; id++)
		if (r->st[id] & ST_ACKED)
			ids[n++] = id;
	if (n < INJECT_N)
		return;
	conn c = {.fd = -1};
	char buf[INJECT_N * 64 + 16], *l;
	size_t len = 0;
	for (uint64_t i = 0; i < n; i++)
		len += (size_t)sprintf(buf + len, "tt,k=k%02u id=%" PRIu64 "i,v=%u %" PRId64 "\n",
				       key_of(ids[i]), ids[i], v_of(ids[i]),
				       ts_of(t->day, ids[i] - t->lo, ids[i]));
	len += (size_t)sprintf(buf + len, "#!sync\n");
	if (conn_open(&c, r->s.port) < 0 || conn_send(&c, buf, len, 60000) < 0 ||
	    conn_line(&c, 120000 * O.timeout_scale, &l) <= 0 || strncmp(l, "OK sync", 7))
		fail(r, "--inject double: the events were not written again");
	else
		r->injected = n;
	conn_close(&c);
}

static double pct(int64_t *v, unsigned n, double p)
{
	if (!n)
		return 0;
	unsigned i = (unsigned)(p * (n - 1) + 0.5);
	return (double)v[i];
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return (x > y) - (x < y);
}

static int run_trials(void)
{
	run r = {.rng = O.seed};
	server_dir(&r.s, "torture");
	const char *mode = O.mode == MODE_SIGTERM ? "sigterm" : "kill9";
	printf("torture %s: %u trials, %u writers, up to %.2f s of load each, seed %" PRIu64
	       ", io %s, dir %s\n",
	       mode, O.trials, O.writers, O.seconds, O.seed, O.io, r.s.dir);
	fflush(stdout);
	int64_t t_begin = mono_ms();
	writer ws[MAX_W];
	memset(ws, 0, sizeof ws);
	if (run_start(&r) < 0)
		goto out;
	r.n_restart = 0; /* the first start is no restart */
	r.stores = 1;
	for (unsigned no = 0; no < O.trials && !r.failed; no++) {
		if (O.fresh_every && no && no % O.fresh_every == 0 && fresh_store(&r) < 0)
			break;
		trial_ctx t = {.day = r.days, .lo = r.end, .cap = O.trial_ids, .nkeys = NKEYS};
		atomic_init(&t.next, t.lo);
		atomic_init(&t.acked, 0);
		atomic_init(&t.stop, 0);
		grow_model(&r, &t);
		t.st = r.st;
		t.port = r.s.port;
		long log_off = file_size(r.s.log);
		int last = no + 1 == O.trials;
		int after_flush = below(&r.rng, 4) == 0;
		int64_t ms = (int64_t)below(&r.rng, (uint64_t)(O.seconds * 1000) + 1);
		int64_t t_load = mono_ms();
		writers_start(ws, &t, &r.rng);
		int hit = wait_kill(&r, &t, ms, after_flush, last, log_off);
		int64_t t_stop = mono_ms();
		char flush[16], sync[16]; /* of the tallyd stopped, for --verbose */
		memcpy(flush, r.s.flush, sizeof flush);
		memcpy(sync, r.s.sync, sizeof sync);
		if (O.mode == MODE_SIGTERM) {
			/* graceful: tallyd must finish what it accepted, say so on each
			 * connection, and exit 0 */
			int code = server_stop(&r.s, SIGTERM, (5000 + 60000) * O.timeout_scale);
			r.sigterms++;
			if (code != 0)
				fail(&r, "tallyd exited with %d after SIGTERM (see %s)", code,
				     r.s.log);
		} else {
			run_kill(&r);
			r.after_flush += hit;
		}
		atomic_store(&t.stop, 1);
		for (unsigned i = 0; i < O.writers; i++)
			pthread_join(ws[i].th, NULL);
		if (atomic_load(&t.next) > t.lo + t.cap)
			atomic_store(&t.next, t.lo + t.cap);
		uint64_t sent = 0, acked = 0;
		for (unsigned i = 0; i < O.writers; i++) {
			sent += ws[i].sent;
			acked += ws[i].acked;
			r.rejected += ws[i].rejected;
			r.sync_errors += ws[i].sync_errors;
			if (ws[i].err[0])
				fail(&r, "trial %u (day %u): %s", no, t.day, ws[i].err);
		}
		r.trials++;
		r.sent += sent;
		r.acked += acked;
		r.end = atomic_load(&t.next);
		/* Kills while it recovers: within about its last restart time,
		 * so most land before it listens (replaying the WAL, cutting a
		 * torn tail, removing parts the manifest does not name). */
		int64_t last_restart = r.n_restart ? r.restart_ms[r.n_restart - 1] : 50;
		while (!r.failed && O.mode == MODE_KILL9 && below(&r.rng, 3) == 0) {
			server_spawn(&r.s, &r.rng);
			sleep_ms((int64_t)below(&r.rng, (uint64_t)(last_restart * 3 / 2) + 2));
			int st;
			if (server_wait_listen(&r.s, 0, &st) == 0) {
				fail(&r, "tallyd exited while recovering (status %#x; see %s)", st,
				     r.s.log);
				break;
			}
			if (access(r.s.portfile, F_OK) != 0)
				r.recovery_kills++;
			run_kill(&r);
		}
		if (r.failed || run_start(&r) < 0)
			break;
		if (O.inject && !r.injected)
			inject(&r, &t);
		check(&r, &t);
		if (O.verbose || r.failed)
			printf("trial %u: %s after %" PRId64 " ms%s (flush %s, sync %s): %" PRIu64
			       " sent, %" PRIu64 " acknowledged, restart %" PRId64 " ms\n",
			       no, O.mode == MODE_SIGTERM ? "SIGTERM" : "kill -9", t_stop - t_load,
			       hit ? " after a flush/merge line" : "", flush, sync, sent, acked,
			       r.restart_ms[r.n_restart - 1]);
		else if ((no + 1) % 25 == 0) /* progress of a long run */
			printf("after %u trials, %.0f s: %" PRIu64 " acknowledged, %" PRIu64
			       " lost, %" PRIu64 " doubled\n",
			       no + 1, (double)(mono_ms() - t_begin) / 1000, r.acked, r.lost,
			       r.doubled);
		fflush(stdout);
	}
out:
	if (r.s.pid > 0)
		server_stop(&r.s, SIGKILL, 30000);
	if (!r.failed && r.acked < O.min_acked)
		fail(&r,
		     "only %" PRIu64 " events acknowledged (at least %" PRIu64
		     " wanted): the run tested nothing",
		     r.acked, O.min_acked);
	qsort(r.restart_ms, r.n_restart, sizeof *r.restart_ms, cmp_i64);
	printf("torture %s: %u trials on %u store%s (%u killed, %u while recovering, %u after a "
	       "flush/merge "
	       "line, "
	       "%u SIGTERM) in %.1f s: %" PRIu64 " events sent, %" PRIu64 " acknowledged, %" PRIu64
	       " lost, %" PRIu64 " doubled, %" PRIu64 " wrong; unacknowledged: %" PRIu64
	       " kept, %" PRIu64 " gone; %" PRIu64 " rejected, %" PRIu64
	       " sync errors; restart p50 %.0f ms, p99 %.0f ms (%u restarts)\n",
	       mode, r.trials, r.stores, r.stores == 1 ? "" : "s", r.killed, r.recovery_kills,
	       r.after_flush, r.sigterms, (double)(mono_ms() - t_begin) / 1000, r.sent, r.acked,
	       r.lost, r.doubled, r.wrong, r.kept, r.gone, r.rejected, r.sync_errors,
	       pct(r.restart_ms, r.n_restart, 0.5), pct(r.restart_ms, r.n_restart, 0.99),
	       r.n_restart);
	int bad = r.failed || r.lost || r.doubled || r.wrong;
	if (O.inject) {
		uint64_t found = O.inject == INJECT_LOSE ? r.lost : r.doubled;
		uint64_t other = O.inject == INJECT_LOSE ? r.doubled : r.lost;
		bad = !r.injected || found != r.injected || other || r.wrong;
		printf("--inject %s: %" PRIu64 " events injected, the check found %" PRIu64
		       " (and %" PRIu64 " %s, %" PRIu64 " wrong): %s\n",
		       O.inject == INJECT_LOSE ? "lose" : "double", r.injected, found, other,
		       O.inject == INJECT_LOSE ? "doubled" : "lost", r.wrong,
		       bad ? "NOT DETECTED" : "detected");
		if (!bad && !O.keep)
			rm_tree(r.s.dir);
	} else if (bad)
		printf("FAILED: %s; kept for inspection: %s (seed %" PRIu64 ")\n", r.why, r.s.dir,
		       O.seed);
	else if (!O.keep)
		rm_tree(r.s.dir);
	for (unsigned i = 0; i < O.writers; i++) {
		free(ws[i].pid);
		free(ws[i].pline);
		free(ws[i].buf);
	}
	free(r.st);
	free(r.cnt);
	free(r.vsum);
	free(r.restart_ms);
	return bad ? 1 : 0;
}

/* ---------------------------------------------------------------- soak */

#define SOAK_KEYS 1000

/* Soak writers: rate / writers events per second in ten batches, each
 * followed by a sync; late_pct in a hundred are 1-6 hours old. */
static void *soak_writer_main(void *arg)
{
	writer *w = arg;
	trial_ctx *t = w->t;
	if (conn_open(&w->c, t->port) < 0) {
		w_fail(w, "writer %u: cannot connect", w->no);
		return NULL;
	}
	uint64_t per_tick = O.rate / O.writers / 10;
	if (!per_tick)
		per_tick = 1;
	int64_t next = mono_ms();
	while (!atomic_load(&t->stop)) {
		uint64_t id0 = atomic_fetch_add(&t->next, per_tick);
		w_reserve(w, per_tick * 64);
		struct timespec now;
		clock_gettime(CLOCK_REALTIME, &now);
		int64_t ns = (int64_t)now.tv_sec * NS_SEC + now.tv_nsec;
		size_t len = 0;
		for (uint64_t id = id0; id < id0 + per_tick; id++) {
			int64_t ts = ns;
			if (below(&w->rng, 100) < O.late_pct)
				ts -= NS_HOUR + (int64_t)below(&w->rng, 5 * 3600) * NS_SEC;
			len += (size_t)sprintf(w->buf + len,
					       "tt,k=c%04u id=%" PRIu64 "i,v=%u %" PRId64 "\n",
					       (unsigned)(id % t->nkeys), id, v_of(id), ts);
			w_pending(w, id);
		}
		w->sent += per_tick;
		if (conn_send(&w->c, w->buf, len, 60000 * O.timeout_scale) < 0 || w_sync(w) < 0) {
			w_fail(w, "writer %u: connection lost", w->no);
			break;
		}
		next += 100;
		sleep_ms(next - mono_ms());
	}
	conn_close(&w->c);
	return NULL;
}

typedef struct soak_q {
	trial_ctx *t;
	uint64_t rng;
	unsigned port;
	uint64_t queries, rows;
	int64_t max_ms;
	char err[512];
	pthread_t th;
} soak_q;

/* Queries a dashboard and an operator would ask, one at a time, ten a
 * second: a key's 5-minute series over 6 hours, its exact average over 7,
 * every key's last hour, a short raw scan. */
static void *soak_query_main(void *arg)
{
	soak_q *q = arg;
	conn c = {.fd = -1};
	if (conn_open(&c, q->port) < 0) {
		snprintf(q->err, sizeof q->err, "queries: cannot connect");
		return NULL;
	}
	char cmd[256];
	/* the table exists once the first sync answered */
	while (!atomic_load(&q->t->acked) && !atomic_load(&q->t->stop))
		sleep_ms(10);
	while (!atomic_load(&q->t->stop)) {
		unsigned k = (unsigned)below(&q->rng, q->t->nkeys);
		switch (q->queries % 4) {
		case 0: snprintf(cmd, sizeof cmd, "#!series tt v c%04u 5m now-6h now+1m", k); break;
		case 1: snprintf(cmd, sizeof cmd, "#!agg tt v c%04u now-7h now+1m", k); break;
		case 2: snprintf(cmd, sizeof cmd, "#!keys tt v now-1h now+1m"); break;
		default: snprintf(cmd, sizeof cmd, "#!scan tt c%04u now-10m now+1m 100", k); break;
		}
		int64_t t0 = mono_ms();
		long n = conn_table(&c, cmd, NULL, NULL, q->err, sizeof q->err);
		if (n < 0)
			break;
		q->err[0] = 0;
		int64_t ms = mono_ms() - t0;
		if (ms > q->max_ms)
			q->max_ms = ms;
		q->queries++;
		q->rows += (uint64_t)n;
		sleep_ms(100);
	}
	conn_close(&c);
	return NULL;
}

typedef struct soak_check {
	uint64_t *want, *vsum;
	uint64_t lost, doubled, wrong, keys;
} soak_check;

static int soak_key_row(void *ctx, char **cell, int n, char **head, int nh)
{
	soak_check *x = ctx;
	(void)head;
	(void)nh;
	unsigned k;
	if (n < 3 || sscanf(cell[0], "c%u", &k) != 1 || k >= SOAK_KEYS)
		return -1;
	uint64_t c = strtoull(cell[1], NULL, 10);
	x->keys++;
	if (c < x->want[k])
		x->lost += x->want[k] - c;
	else if (c > x->want[k])
		x->doubled += c - x->want[k];
	else if (strtod(cell[2], NULL) != (double)x->vsum[k])
		x->wrong++;
	x->want[k] = 0; /* seen */
	return 0;
}

/* Least-squares slope of y over x (n points); NAN below two points. */
static double ls_slope(const double *x, const double *y, size_t n)
{
	if (n < 2)
		return NAN;
	double mx = 0, my = 0, sxx = 0, sxy = 0;
	for (size_t i = 0; i < n; i++) {
		mx += x[i];
		my += y[i];
	}
	mx /= (double)n;
	my /= (double)n;
	for (size_t i = 0; i < n; i++) {
		sxx += (x[i] - mx) * (x[i] - mx);
		sxy += (x[i] - mx) * (y[i] - my);
	}
	return sxx > 0 ? sxy / sxx : NAN;
}

static int run_soak(void)
{
	run r = {.rng = O.seed};
	server_dir(&r.s, "soak");
	printf("soak: %.1f minutes at %" PRIu64 " events/s over %u connections, %u%% 1-6 h late, "
	       "%u keys, RSS every %.0f s, seed %" PRIu64 ", dir %s\n",
	       O.minutes, O.rate, O.writers, O.late_pct, SOAK_KEYS, O.sample_s, O.seed, r.s.dir);
	if (run_start(&r) < 0)
		return 1;
	trial_ctx t = {.nkeys = SOAK_KEYS};
	atomic_init(&t.next, 0);
	atomic_init(&t.acked, 0);
	atomic_init(&t.stop, 0);
	t.port = r.s.port;
	writer ws[MAX_W];
	memset(ws, 0, sizeof ws);
	for (unsigned i = 0; i < O.writers; i++) {
		ws[i].t = &t;
		ws[i].no = i;
		ws[i].rng = rnd(&r.rng);
		ws[i].c.fd = -1;
		ws[i].key_acked = calloc(SOAK_KEYS, sizeof(uint64_t));
		ws[i].key_vsum = calloc(SOAK_KEYS, sizeof(uint64_t));
		if (pthread_create(&ws[i].th, NULL, soak_writer_main, &ws[i]))
			die("pthread_create failed");
	}
	soak_q q = {.t = &t, .rng = rnd(&r.rng), .port = r.s.port};
	if (pthread_create(&q.th, NULL, soak_query_main, &q))
		die("pthread_create failed");
	conn c = {.fd = -1};
	if (conn_open(&c, r.s.port) < 0)
		die("cannot connect to tallyd");
	/* samples: hours since start, RSS in MB */
	size_t ns = 0, cap = 64;
	double *sx = malloc(cap * sizeof *sx), *sy = malloc(cap * sizeof *sy),
	       *sa = malloc(cap * sizeof *sa), *sf = malloc(cap * sizeof *sf);
	int64_t t0 = mono_ms(), end = t0 + (int64_t)(O.minutes * 60000);
	double first_flush = -1, rss_max = 0;
	/* the engine's own accounts beside the RSS, to tell where it grows */
	static const char *const names[] = {"parts", "memtable_bytes", "rollup_bytes",
					    "cache_bytes"};
	printf("%7s %12s %8s %8s %8s %6s %8s %10s %10s %10s %9s\n", "minutes", "acknowledged",
	       "RSS MB", "anon MB", "file MB", "parts", "queries", "memtable", "rollups", "cache",
	       "query max");
	for (int64_t next = t0;;) {
		next += (int64_t)(O.sample_s * 1000);
		sleep_ms((next < end ? next : end) - mono_ms());
		double h = (double)(mono_ms() - t0) / 3.6e6;
		double mb = (double)proc_kib(r.s.pid, "VmRSS") / 1024;
		/* anonymous memory versus mapped file pages (parts read by mmap) */
		double anon = (double)proc_kib(r.s.pid, "RssAnon") / 1024;
		double file = (double)proc_kib(r.s.pid, "RssFile") / 1024;
		uint64_t st[4];
		stats_of(&c, names, st, 4);
		uint64_t parts = st[0];
		if (first_flush < 0 && parts && parts != UINT64_MAX)
			first_flush = h;
		if (ns == cap) {
			cap *= 2;
			sx = realloc(sx, cap * sizeof *sx);
			sy = realloc(sy, cap * sizeof *sy);
			sa = realloc(sa, cap * sizeof *sa);
			sf = realloc(sf, cap * sizeof *sf);
		}
		sx[ns] = h;
		sa[ns] = anon;
		sf[ns] = file;
		sy[ns++] = mb;
		if (mb > rss_max)
			rss_max = mb;
		printf("%7.1f %12" PRIu64 " %8.1f %8.1f %8.1f %6" PRIu64 " %8" PRIu64 " %10" PRIu64
		       " %10" PRIu64 " %10" PRIu64 " %6" PRId64 " ms\n",
		       h * 60, atomic_load(&t.acked), mb, anon, file, parts, q.queries, st[1],
		       st[2], st[3], q.max_ms);
		fflush(stdout);
		int dead = 0;
		for (unsigned i = 0; i < O.writers; i++)
			dead |= ws[i].err[0] != 0;
		if (mono_ms() >= end || dead || q.err[0])
			break;
	}
	atomic_store(&t.stop, 1);
	for (unsigned i = 0; i < O.writers; i++)
		pthread_join(ws[i].th, NULL);
	pthread_join(q.th, NULL);
	for (unsigned i = 0; i < O.writers; i++)
		if (ws[i].err[0])
			fail(&r, "%s", ws[i].err);
	if (q.err[0])
		fail(&r, "%s", q.err);
	/* Every event was synced: #!keys over everything must count each
	 * once, key by key. */
	soak_check x = {.want = calloc(SOAK_KEYS, sizeof(uint64_t)),
			.vsum = calloc(SOAK_KEYS, sizeof(uint64_t))};
	uint64_t sent = 0, acked = 0;
	for (unsigned i = 0; i < O.writers; i++) {
		sent += ws[i].sent;
		acked += ws[i].acked;
		for (unsigned k = 0; k < SOAK_KEYS; k++) {
			x.want[k] += ws[i].key_acked[k];
			x.vsum[k] += ws[i].key_vsum[k];
		}
	}
	char err[512];
	if (conn_table(&c, "#!keys tt v now-30d now+1d", soak_key_row, &x, err, sizeof err) < 0)
		fail(&r, "%s", err);
	for (unsigned k = 0; k < SOAK_KEYS; k++)
		x.lost += x.want[k]; /* keys #!keys did not list */
	conn_close(&c);
	/* Slopes after the first flush. RSS counts the parts' mapped file
	 * pages, which grow with the data kept; anonymous memory is what
	 * the server allocates, and over the second half it shows whether
	 * that has levelled off once the caches reached their budgets. */
	size_t m = 0, from = ns;
	for (size_t i = 0; i < ns; i++)
		if (first_flush >= 0 && sx[i] >= first_flush) {
			from = from < i ? from : i;
			m++;
		}
	double slope = ls_slope(sx + from, sy + from, m);
	double aslope = ls_slope(sx + from, sa + from, m);
	double aslope2 = ls_slope(sx + from + m / 2, sa + from + m / 2, m - m / 2);
	double slope2 = ls_slope(sx + from + m / 2, sy + from + m / 2, m - m / 2);
	double fslope = ls_slope(sx + from, sf + from, m);
	int code = server_stop(&r.s, SIGTERM, 120000 * O.timeout_scale);
	if (code != 0)
		fail(&r, "tallyd exited with %d after SIGTERM (see %s)", code, r.s.log);
	double minutes = (double)(mono_ms() - t0) / 60000;
	char slope_s[384];
	if (first_flush < 0)
		snprintf(slope_s, sizeof slope_s, "no flush seen, so no RSS slope");
	else
		snprintf(slope_s, sizeof slope_s,
			 "first flush by %.1f min; slopes after it over %zu samples: RSS %.2f "
			 "MB/hour (file pages %.2f, anon %.2f); over the second half: RSS %.2f "
			 "MB/hour, anon %.2f MB/hour",
			 first_flush * 60, m, slope, fslope, aslope, slope2, aslope2);
	printf("soak: %.1f minutes, %" PRIu64 " events sent, %" PRIu64
	       " acknowledged (%.0f/s), %" PRIu64 " lost, %" PRIu64 " doubled, %" PRIu64
	       " wrong sums; %" PRIu64 " queries (max %" PRId64
	       " ms); RSS first %.1f MB, last %.1f MB, max %.1f MB; %s\n",
	       minutes, sent, acked, (double)acked / (minutes * 60), x.lost, x.doubled, x.wrong,
	       q.queries, q.max_ms, ns ? sy[0] : 0, ns ? sy[ns - 1] : 0, rss_max, slope_s);
	int bad = r.failed || x.lost || x.doubled || x.wrong;
	if (bad)
		printf("FAILED: %s; kept for inspection: %s\n", r.failed ? r.why : "counts differ",
		       r.s.dir);
	else if (!O.keep)
		rm_tree(r.s.dir);
	for (unsigned i = 0; i < O.writers; i++) {
		free(ws[i].pid);
		free(ws[i].pline);
		free(ws[i].buf);
		free(ws[i].key_acked);
		free(ws[i].key_vsum);
	}
	free(sa);
	free(sf);
	free(x.want);
	free(x.vsum);
	free(sx);
	free(sy);
	free(r.restart_ms);
	return bad ? 1 : 0;
}

/* ---------------------------------------------------------------- main */

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: torture [--trials N] [--seconds S] [--sigterm] [options]\n"
		"       torture --soak [--minutes M] [--rate R] [options]\n"
		"\n"
		"Kill -9 trials against a real tallyd under load: writers stream line protocol\n"
		"with unique event ids and #!sync now and then; tallyd is killed at random\n"
		"moments (in flushes, in merges, while recovering), restarted, and every\n"
		"acknowledged event must be there exactly once. Exits 1 on any loss or\n"
		"doubling. --soak runs one tallyd at a steady rate with queries and a late\n"
		"backlog and prints its RSS (bench/README.md).\n"
		"\n"
		"  --trials N          trials (default 20)\n"
		"  --seconds S         longest load before a trial's kill (default 1)\n"
		"  --sigterm           graceful stops (SIGTERM) instead of kill -9\n"
		"  --writers N         writer connections (default 3; at most %d)\n"
		"  --shards N          tallyd's shards (default 2)\n"
		"  --trial-ids N       events one trial may write (default 2000000)\n"
		"  --fresh-every N     a new, empty store every N trials, totals carried over\n"
		"                      (default 0: one store for the whole run)\n"
		"  --min-acked N       fewer acknowledged events over the run fail it (default 1)\n"
		"  --seed N            the random choices (default: from the clock; printed)\n"
		"  --io MODE           tallyd's --io: auto, io_uring or epoll\n"
		"  --asan              every bounded wait 5 times longer (sanitizer builds)\n"
		"  --tallyd PATH       the binary (default: ../wire/tallyd beside this program)\n"
		"  --dir DIR           where the temporary directory goes (default /tmp)\n"
		"  --tallyd-arg ARG    one more argument for tallyd (repeatable)\n"
		"  --keep              keep the temporary directory (kept anyway on failure)\n"
		"  --verbose           a line per trial\n"
		"  --inject lose|double  the checker's own test: pretend 10 acknowledged events\n"
		"                      were lost, or write 10 twice; exit 0 only if exactly\n"
		"                      those are reported\n"
		"  --soak              the soak instead of trials\n"
		"  --minutes M         soak length (default 60)\n"
		"  --rate R            events per second over all writers (trials: default\n"
		"                      0, flat out; soak: default 20000)\n"
		"  --late-pct P        soak events 1-6 hours old, per hundred (default 10)\n"
		"  --sample-seconds S  soak RSS sample interval (default 60)\n",
		MAX_W);
}

static uint64_t num_arg(const char *name, const char *v)
{
	char *end;
	errno = 0;
	unsigned long long n = strtoull(v ? v : "", &end, 10);
	if (!v || !*v || *end || errno)
		die("%s: '%s' is not a whole number", name, v ? v : "");
	return n;
}

static double real_arg(const char *name, const char *v)
{
	char *end;
	double d = strtod(v ? v : "", &end);
	if (!v || !*v || *end || !(d >= 0))
		die("%s: '%s' is not a number >= 0", name, v ? v : "");
	return d;
}

int main(int argc, char **argv)
{
	static char tallyd[4096];
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		int used = 1;
		if (!strcmp(a, "--trials"))
			O.trials = (unsigned)num_arg(a, v);
		else if (!strcmp(a, "--seconds"))
			O.seconds = real_arg(a, v);
		else if (!strcmp(a, "--writers"))
			O.writers = (unsigned)num_arg(a, v);
		else if (!strcmp(a, "--shards"))
			O.shards = (unsigned)num_arg(a, v);
		else if (!strcmp(a, "--trial-ids"))
			O.trial_ids = num_arg(a, v);
		else if (!strcmp(a, "--fresh-every"))
			O.fresh_every = (unsigned)num_arg(a, v);
		else if (!strcmp(a, "--min-acked"))
			O.min_acked = num_arg(a, v);
		else if (!strcmp(a, "--seed"))
			O.seed = num_arg(a, v);
		else if (!strcmp(a, "--io"))
			O.io = v;
		else if (!strcmp(a, "--tallyd"))
			O.tallyd = v;
		else if (!strcmp(a, "--dir"))
			O.parent = v;
		else if (!strcmp(a, "--tallyd-arg")) {
			if (!v || O.n_extra == MAX_ARGS)
				die("--tallyd-arg: missing, or more than %d", MAX_ARGS);
			O.extra[O.n_extra++] = v;
		} else if (!strcmp(a, "--minutes"))
			O.minutes = real_arg(a, v);
		else if (!strcmp(a, "--rate"))
			O.rate = num_arg(a, v);
		else if (!strcmp(a, "--late-pct"))
			O.late_pct = (unsigned)num_arg(a, v);
		else if (!strcmp(a, "--inject")) {
			if (v && !strcmp(v, "lose"))
				O.inject = INJECT_LOSE;
			else if (v && !strcmp(v, "double"))
				O.inject = INJECT_DOUBLE;
			else
				die("--inject: lose or double");
		} else if (!strcmp(a, "--sample-seconds"))
			O.sample_s = real_arg(a, v);
		else {
			used = 0;
			if (!strcmp(a, "--sigterm"))
				O.mode = MODE_SIGTERM;
			else if (!strcmp(a, "--soak"))
				O.mode = MODE_SOAK;
			else if (!strcmp(a, "--asan"))
				O.timeout_scale = 5;
			else if (!strcmp(a, "--keep"))
				O.keep = 1;
			else if (!strcmp(a, "--verbose"))
				O.verbose = 1;
			else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
				usage(stdout);
				return 0;
			} else {
				usage(stderr);
				die("unknown argument '%s'", a);
			}
		}
		if (used && !v)
			die("%s needs a value", a);
		i += used;
	}
	if (!O.writers || O.writers > MAX_W)
		die("--writers: 1 to %d", MAX_W);
	if (!O.io || (strcmp(O.io, "auto") && strcmp(O.io, "io_uring") && strcmp(O.io, "epoll")))
		die("--io: auto, io_uring or epoll");
	if (O.late_pct > 100 || O.sample_s < 0.1 || !O.trial_ids || !O.shards)
		die("--late-pct at most 100, --sample-seconds at least 0.1, --trial-ids and "
		    "--shards at least 1");
	if (O.rate == UINT64_MAX)
		O.rate = O.mode == MODE_SOAK ? 20000 : 0;
	if (O.mode == MODE_SOAK && !O.rate)
		die("--rate: the soak needs a rate above 0");
	if (!O.tallyd) {
		/* beside this program in the build tree: tools/../wire/tallyd */
		ssize_t n = readlink("/proc/self/exe", tallyd, sizeof tallyd - 32);
		if (n <= 0)
			die("cannot find tallyd: give --tallyd PATH");
		tallyd[n] = 0;
		char *slash = strrchr(tallyd, '/');
		snprintf(slash, sizeof tallyd - (size_t)(slash - tallyd), "/../wire/tallyd");
		O.tallyd = tallyd;
	}
	if (access(O.tallyd, X_OK) != 0)
		die("%s is not an executable: give --tallyd PATH", O.tallyd);
	if (!O.seed) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		O.seed = (uint64_t)ts.tv_sec * 1000003u ^ (uint64_t)ts.tv_nsec;
	}
	signal(SIGPIPE, SIG_IGN);
	return O.mode == MODE_SOAK ? run_soak() : run_trials();
}
