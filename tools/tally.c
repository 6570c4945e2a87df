/*
 * tally.c — the command-line client of tallyd: write, query, stats, ping.
 *
 * It speaks the text protocol of docs/protocol.md over one TCP
 * connection. `tally write` streams files as they are (line protocol
 * needs no translation) while it reads the replies on the same socket, so
 * an error report never waits for the end of a large file and the server
 * never has to drop replies. The one idea that makes its error messages
 * useful: the server numbers lines per connection, and the client knows
 * at which connection line each file started, so "ERR line 1234567" is
 * shown as "speeds-2.lp:17". (`tally inspect DIR` is local: it runs
 * tools/inspect.c on the directory and needs no server.)
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "backup.h"
#include "cmd.h"
#include "fandist.h"
#include "fanout.h"
#include "client.h"
#include "inspect.h"

#define CLI_DEFAULT_PORT "8427"
#define CLI_CHUNK        (1u << 20)
#define CLI_ERRORS_SHOWN 20
#define CLI_REPLY_MAX    (4u << 20) /* longest reply line accepted */

typedef struct cli_opts {
	const char *host, *port, *token, *precision;
	int csv, json, quiet;
	const char *nodes; /* --nodes: ask these tallyd and merge (docs/cluster.md) */
	int partial;       /* --partial: a node that does not answer is named, not fatal */
	double wait;       /* seconds to retry a refused connection (a server starting) */
} cli_opts;

static double cli_now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

__attribute__((format(printf, 1, 2), noreturn)) static void cli_die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "tally: ");
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

/* ---------------------------------------------------------------- connection */

typedef client_conn cli_conn;

static void cli_connect(cli_conn *c, const cli_opts *o)
{
	const char *why = NULL;
	/* --wait: a server just started may not listen yet */
	int rc = client_connect(c, o->host, o->port, o->wait, CLI_REPLY_MAX, &why);
	if (rc == -EHOSTUNREACH && why)
		cli_die("%s:%s: %s", o->host, o->port, why);
	if (rc)
		cli_die("cannot connect to tallyd at %s:%s: %s (is it running? see --host, "
			"--port)",
			o->host, o->port, strerror(-rc));
}

static void cli_send_all(cli_conn *c, const char *p, size_t n)
{
	int rc = client_send(c, p, n, -1);
	if (rc)
		cli_die("sending to the server: %s", strerror(-rc));
}

/* Reads what is available (blocking when block); 0 at EOF. */
static int cli_fill(cli_conn *c, int block)
{
	int r = client_fill(c, block ? -1 : 0);
	if (r == -1)
		return 0;
	if (r == -E2BIG)
		cli_die("a reply line is longer than %u bytes", CLI_REPLY_MAX);
	if (r < 0)
		cli_die("reading from the server: %s", strerror(-r));
	return 1;
}

/* The next complete reply line (NUL-terminated, '\n' removed), which the
 * caller frees; NULL when none is buffered. */
static char *cli_take_line(cli_conn *c)
{
	char *l = client_take(c);
	if (!l)
		return NULL;
	char *line = strdup(l);
	if (!line)
		cli_die("out of memory");
	return line;
}

static char *cli_read_line(cli_conn *c)
{
	for (;;) {
		char *l = cli_take_line(c);
		if (l)
			return l;
		if (!cli_fill(c, 1))
			return NULL;
	}
}

static void cli_auth(cli_conn *c, const cli_opts *o)
{
	if (!o->token)
		return;
	char line[1100];
	if (strlen(o->token) > 1024 || strpbrk(o->token, "\n\r\"\\ \t"))
		cli_die("--token: at most 1024 bytes, no blanks, quotes or backslashes");
	int n = snprintf(line, sizeof line, "#!auth %s\n", o->token);
	cli_send_all(c, line, (size_t)n);
	memset(line, 0, sizeof line);
	char *r = cli_read_line(c);
	if (!r)
		cli_die("the server closed the connection during authentication");
	if (strncmp(r, "OK", 2))
		cli_die("%s", r);
	free(r);
}

/* ---------------------------------------------------------------- cells */

/* Undoes the protocol's cell escapes (\\ \t \n \r) in place. */
static void cli_unescape(char *s)
{
	char *d = s;
	for (; *s; s++) {
		if (*s == '\\' && s[1]) {
			s++;
			*d++ = *s == 't' ? '\t' : *s == 'n' ? '\n' : *s == 'r' ? '\r' : *s;
		} else {
			*d++ = *s;
		}
	}
	*d = 0;
}

static size_t cli_split(char *line, char ***cells)
{
	size_t n = 1;
	for (char *p = line; *p; p++)
		n += *p == '\t';
	char **v = malloc(n * sizeof *v);
	if (!v)
		cli_die("out of memory");
	size_t i = 0;
	v[i++] = line;
	for (char *p = line; *p; p++)
		if (*p == '\t') {
			*p = 0;
			v[i++] = p + 1;
		}
	for (i = 0; i < n; i++)
		cli_unescape(v[i]);
	*cells = v;
	return n;
}

static int cli_is_number(const char *s)
{
	if (!*s)
		return 0;
	char *e;
	strtod(s, &e);
	return *e == 0 && strcmp(s, "NaN") != 0;
}

/* A column shown as numbers: every value a number, and not one of the
 * columns that name things (a key "00123" stays a string). */
static int cli_numeric_column(const char *name, char ***rows, size_t nr, size_t j)
{
	if (!strcmp(name, "key") || !strcmp(name, "time") || !strcmp(name, "start") ||
	    !strcmp(name, "name") || nr == 0)
		return 0;
	for (size_t i = 0; i < nr; i++)
		if (*rows[i][j] && !cli_is_number(rows[i][j]))
			return 0;
	return 1;
}

/* Display width of a UTF-8 string: code points (good enough for names). */
static size_t cli_width(const char *s)
{
	size_t w = 0;
	for (; *s; s++)
		w += ((unsigned char)*s & 0xC0) != 0x80;
	return w;
}

static void cli_csv_cell(const char *s)
{
	if (!strpbrk(s, ",\"\n\r")) {
		fputs(s, stdout);
		return;
	}
	putchar('"');
	for (; *s; s++) {
		if (*s == '"')
			putchar('"');
		putchar(*s);
	}
	putchar('"');
}

static void cli_json_str(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\')
			printf("\\%c", ch);
		else if (ch == '\n')
			fputs("\\n", stdout);
		else if (ch == '\t')
			fputs("\\t", stdout);
		else if (ch < 0x20)
			printf("\\u%04x", ch);
		else
			putchar(ch);
	}
	putchar('"');
}

/* Reads one tabular answer (header, rows, END n) and prints it. Returns 0,
 * or 1 after printing the server's error. */
static int cli_print_table(cli_conn *c, const cli_opts *o)
{
	char *first = cli_read_line(c);
	if (!first)
		cli_die("the server closed the connection without answering");
	if (!strchr(first, '\t')) {
		fprintf(stderr, "tally: %s\n", first);
		free(first);
		return 1;
	}
	char **head;
	size_t nc = cli_split(first, &head);
	char ***rows = NULL;
	char **lines = NULL;
	size_t nr = 0, cap = 0;
	const char *tail_err = NULL;
	char *last = NULL;
	for (;;) {
		char *l = cli_read_line(c);
		if (!l)
			cli_die("the connection closed in the middle of an answer");
		if (!strncmp(l, "END ", 4)) {
			last = l;
			break;
		}
		if (!strchr(l, '\t') && !strncmp(l, "ERR", 3)) {
			tail_err = l;
			last = l;
			break;
		}
		if (nr == cap) {
			cap = cap ? cap * 2 : 64;
			rows = realloc(rows, cap * sizeof *rows);
			lines = realloc(lines, cap * sizeof *lines);
			if (!rows || !lines)
				cli_die("out of memory");
		}
		lines[nr] = l;
		char **cells;
		size_t k = cli_split(l, &cells);
		if (k != nc)
			cli_die("row %zu has %zu cells, the header %zu", nr + 1, k, nc);
		rows[nr++] = cells;
	}
	if (o->csv) {
		for (size_t j = 0; j < nc; j++) {
			if (j)
				putchar(',');
			cli_csv_cell(head[j]);
		}
		putchar('\n');
		for (size_t i = 0; i < nr; i++) {
			for (size_t j = 0; j < nc; j++) {
				if (j)
					putchar(',');
				cli_csv_cell(rows[i][j]);
			}
			putchar('\n');
		}
	} else if (o->json) {
		int *num = calloc(nc, sizeof *num);
		if (!num)
			cli_die("out of memory");
		for (size_t j = 0; j < nc; j++)
			num[j] = cli_numeric_column(head[j], rows, nr, j);
		printf("[");
		for (size_t i = 0; i < nr; i++) {
			printf(i ? ",\n {" : "\n {");
			for (size_t j = 0; j < nc; j++) {
				if (j)
					printf(", ");
				cli_json_str(head[j]);
				putchar(':');
				const char *v = rows[i][j];
				if (!*v)
					printf("null");
				else if (num[j])
					fputs(v, stdout);
				else if (!strcmp(v, "true") || !strcmp(v, "false"))
					fputs(v, stdout);
				else
					cli_json_str(v);
			}
			putchar('}');
		}
		printf(nr ? "\n]\n" : "]\n");
		free(num);
	} else {
		size_t *w = calloc(nc, sizeof *w);
		int *num = calloc(nc, sizeof *num);
		if (!w || !num)
			cli_die("out of memory");
		for (size_t j = 0; j < nc; j++) {
			w[j] = cli_width(head[j]);
			num[j] = cli_numeric_column(head[j], rows, nr, j);
		}
		for (size_t i = 0; i < nr; i++)
			for (size_t j = 0; j < nc; j++) {
				size_t k = cli_width(rows[i][j]);
				if (k > w[j])
					w[j] = k;
			}
		for (size_t j = 0; j < nc; j++) {
			int pad = (int)(w[j] - cli_width(head[j]));
			if (num[j])
				printf("%s%*s%s", j ? "  " : "", pad, "", head[j]);
			else
				printf("%s%s%*s", j ? "  " : "", head[j], j + 1 < nc ? pad : 0, "");
		}
		putchar('\n');
		for (size_t i = 0; i < nr; i++) {
			for (size_t j = 0; j < nc; j++) {
				const char *v = *rows[i][j] ? rows[i][j] : "-";
				int pad = (int)(w[j] - cli_width(v));
				if (j)
					printf("  ");
				if (num[j])
					printf("%*s%s", pad, "", v);
				else
					printf("%s%*s", v, j + 1 < nc ? pad : 0, "");
			}
			putchar('\n');
		}
		if (!o->quiet)
			fprintf(stderr, "(%zu row%s)\n", nr, nr == 1 ? "" : "s");
		free(w);
		free(num);
	}
	int rc = 0;
	if (tail_err) {
		fprintf(stderr, "tally: %s\n", tail_err);
		rc = 1;
	}
	const char *part = last && !tail_err ? strstr(last, " PARTIAL ") : NULL;
	if (part) {
		/* some nodes did not answer (--partial): say which, exit 3 */
		fprintf(stderr, "tally: partial answer, missing: %s\n", part + 9);
		rc = 3;
	}
	for (size_t i = 0; i < nr; i++) {
		free(rows[i]);
		free(lines[i]);
	}
	free(rows);
	free(lines);
	free(head);
	free(first);
	free(last);
	return rc;
}

/* ---------------------------------------------------------------- write */

typedef struct cli_file {
	const char *name;
	uint64_t first_line; /* connection line number of its line 1 */
} cli_file;

typedef struct cli_write {
	const char *clr; /* "\r\033[K" over a progress bar, else "" */
	cli_file *files;
	size_t n_files;
	uint64_t errors, shown;
	int synced, sync_failed;
	uint64_t accepted, rejected;
} cli_write;

/* "file:line" of connection line n. */
static void cli_where(const cli_write *w, uint64_t n, char *buf, size_t cap)
{
	for (size_t i = w->n_files; i-- > 0;)
		if (n >= w->files[i].first_line) {
			snprintf(buf, cap, "%s:%" PRIu64, w->files[i].name,
				 n - w->files[i].first_line + 1);
			return;
		}
	snprintf(buf, cap, "line %" PRIu64, n);
}

static void cli_write_reply(cli_write *w, char *l)
{
	uint64_t a, b;
	int off = 0;
	char where[600], where2[600];
	if (sscanf(l, "ERR line %" SCNu64 ": %n", &a, &off) == 1 && off > 0) {
		w->errors++;
		if (w->shown++ < CLI_ERRORS_SHOWN) {
			cli_where(w, a, where, sizeof where);
			fprintf(stderr, "%s%s: %s\n", w->clr, where, l + off);
		}
	} else if (sscanf(l, "ERR lines %" SCNu64 "-%" SCNu64 ": %n", &a, &b, &off) == 2 &&
		   off > 0) {
		w->errors++;
		if (w->shown++ < CLI_ERRORS_SHOWN) {
			cli_where(w, a, where, sizeof where);
			cli_where(w, b, where2, sizeof where2);
			fprintf(stderr, "%s%s to %s: %s\n", w->clr, where, where2, l + off);
		}
	} else if (sscanf(l, "OK sync accepted=%" SCNu64 " rejected=%" SCNu64, &a, &b) == 2) {
		w->accepted = a;
		w->rejected = b;
		w->synced = 1;
	} else if (!strncmp(l, "ERR", 3)) {
		fprintf(stderr, "%stally: server: %s\n", w->clr, l);
		if (strstr(l, "sync")) {
			w->synced = 1;
			w->sync_failed = 1;
		}
	}
}

static void cli_progress(uint64_t sent, uint64_t total, double t0, int done)
{
	double el = cli_now() - t0;
	double rate = el > 0 ? (double)sent / el / 1e6 : 0;
	if (total) {
		int pct = (int)(sent * 100 / total), bar = pct * 30 / 100;
		fprintf(stderr, "\r\033[K[%.*s%*s] %3d%%  %.1f MB  %.1f MB/s", bar,
			"==============================", 30 - bar, "", pct, (double)sent / 1e6,
			rate);
	} else {
		fprintf(stderr, "\r\033[K%.1f MB  %.1f MB/s", (double)sent / 1e6, rate);
	}
	if (done)
		fputc('\n', stderr);
}

static uint64_t cli_count_nl(const char *p, size_t n)
{
	uint64_t k = 0;
	for (const char *q = p, *e = p + n; q < e && (q = memchr(q, '\n', (size_t)(e - q))); q++)
		k++;
	return k;
}

static void cli_drain(cli_conn *c, cli_write *w, int block)
{
	while (cli_fill(c, block)) {
		char *l;
		while ((l = cli_take_line(c))) {
			cli_write_reply(w, l);
			free(l);
		}
		if (block || c->eof)
			break;
	}
}

/* Sends p[0, n) while reading replies, so neither side waits on the other. */
static void cli_send_reading(cli_conn *c, cli_write *w, const char *p, size_t n)
{
	while (n) {
		struct pollfd pf = {.fd = c->fd, .events = POLLIN | POLLOUT};
		if (poll(&pf, 1, -1) < 0) {
			if (errno == EINTR)
				continue;
			cli_die("poll: %s", strerror(errno));
		}
		if (pf.revents & (POLLIN | POLLHUP | POLLERR)) {
			cli_drain(c, w, 0);
			if (c->eof)
				cli_die("the server closed the connection");
		}
		if (pf.revents & POLLOUT) {
			ssize_t s = send(c->fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
			if (s < 0) {
				if (errno == EAGAIN || errno == EINTR)
					continue;
				cli_die("sending to the server: %s", strerror(errno));
			}
			p += s;
			n -= (size_t)s;
		}
	}
}

static int cli_cmd_write(const cli_opts *o, int argc, char **argv)
{
	static const char *stdin_name[] = {"-"};
	const char **names = argc ? (const char **)argv : stdin_name;
	size_t nf = argc ? (size_t)argc : 1;
	cli_write w = {0};
	w.files = calloc(nf, sizeof *w.files);
	char *buf = malloc(CLI_CHUNK + 1);
	if (!w.files || !buf)
		cli_die("out of memory");
	uint64_t total = 0;
	for (size_t i = 0; i < nf; i++) {
		struct stat st;
		if (strcmp(names[i], "-") && stat(names[i], &st))
			cli_die("%s: %s", names[i], strerror(errno));
		if (strcmp(names[i], "-") && S_ISREG(st.st_mode))
			total += (uint64_t)st.st_size;
	}
	cli_conn c;
	cli_connect(&c, o);
	uint64_t line = 0; /* connection lines sent so far */
	cli_auth(&c, o);
	if (o->token)
		line++;
	if (o->precision) {
		char cmd[64];
		int n = snprintf(cmd, sizeof cmd, "#!precision %s\n", o->precision);
		cli_send_all(&c, cmd, (size_t)n);
		char *r = cli_read_line(&c);
		if (!r || strncmp(r, "OK", 2))
			cli_die("--precision %s: %s", o->precision, r ? r : "connection closed");
		free(r);
		line++;
	}
	int tty = isatty(2) && !o->quiet;
	w.clr = tty ? "\r\033[K" : "";
	double t0 = cli_now(), last_draw = 0;
	uint64_t sent = 0;
	for (size_t i = 0; i < nf; i++) {
		int fd = strcmp(names[i], "-") ? open(names[i], O_RDONLY | O_CLOEXEC) : 0;
		if (fd < 0)
			cli_die("%s: %s", names[i], strerror(errno));
		w.files[i].name = fd ? names[i] : "stdin";
		w.files[i].first_line = line + 1;
		w.n_files = i + 1;
		char lastc = '\n';
		for (;;) {
			ssize_t r = read(fd, buf, CLI_CHUNK);
			if (r < 0) {
				if (errno == EINTR)
					continue;
				cli_die("%s: %s", w.files[i].name, strerror(errno));
			}
			if (r == 0)
				break;
			line += cli_count_nl(buf, (size_t)r);
			lastc = buf[r - 1];
			cli_send_reading(&c, &w, buf, (size_t)r);
			sent += (uint64_t)r;
			if (tty && cli_now() - last_draw > 0.1) {
				cli_progress(sent, total, t0, 0);
				last_draw = cli_now();
			}
		}
		if (lastc != '\n') { /* keep the next file's first line its own */
			cli_send_reading(&c, &w, "\n", 1);
			line++;
		}
		if (fd)
			close(fd);
	}
	cli_send_reading(&c, &w, "#!sync\n", 7);
	while (!w.synced) {
		cli_drain(&c, &w, 1);
		if (c.eof && !w.synced)
			cli_die("the server closed the connection before the sync answered");
	}
	double el = cli_now() - t0;
	if (tty)
		cli_progress(sent, total, t0, 1);
	if (w.shown > CLI_ERRORS_SHOWN)
		fprintf(stderr, "... %" PRIu64 " more errors not shown\n",
			w.shown - CLI_ERRORS_SHOWN);
	if (!w.sync_failed)
		fprintf(stderr,
			"%" PRIu64 " lines accepted, %" PRIu64 " rejected, synced; %.2f s, %.0f "
			"lines/s, %.1f MB/s\n",
			w.accepted, w.rejected, el,
			el > 0 ? (double)(w.accepted + w.rejected) / el : 0,
			el > 0 ? (double)sent / el / 1e6 : 0);
	client_close(&c);
	free(buf);
	free(w.files);
	return w.sync_failed ? 1 : w.rejected ? 3 : 0;
}

/* ---------------------------------------------------------------- query */

/* Appends arg to the command, double-quoted when it needs to be. */
static void cli_append_arg(char *cmd, size_t cap, const char *arg)
{
	size_t n = strlen(cmd);
	int quote = !*arg || strpbrk(arg, " \t\"\\") != NULL;
	if (strpbrk(arg, "\n\r"))
		cli_die("argument '%s' holds a line break", arg);
	if (n + 2 * strlen(arg) + 4 >= cap)
		cli_die("command too long");
	cmd[n++] = ' ';
	if (quote)
		cmd[n++] = '"';
	for (const char *p = arg; *p; p++) {
		if (quote && (*p == '"' || *p == '\\'))
			cmd[n++] = '\\';
		cmd[n++] = *p;
	}
	if (quote)
		cmd[n++] = '"';
	cmd[n] = 0;
}

/* --nodes: asks every node itself and merges (fanout.c); the merged
 * answer is read back like a server's, from memory. */
static void cli_fan(cli_conn *c, const cli_opts *o, const char *cmd)
{
	fan_node *nodes;
	size_t n;
	char err[300];
	if (fan_parse_nodes(o->nodes, &nodes, &n, err, sizeof err))
		cli_die("--nodes: %s", err);
	char scratch[4096], perr[CMD_ERR_MAX], canon[4096];
	cmd_req r;
	size_t len = strcspn(cmd, "\n");
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	if (len >= sizeof scratch ||
	    cmd_parse(cmd, len, scratch, sizeof scratch,
		      (int64_t)now.tv_sec * 1000000000 + now.tv_nsec, &r, perr, sizeof perr))
		cli_die("%s", len >= sizeof scratch ? "command too long" : perr);
	if (!fan_build_cmd(&r, canon, sizeof canon))
		cli_die("command too long");
	fan_opts fo = {.token = o->token,
		       .partial = o->partial,
		       .timeout_ns = INT64_C(5000000000) + (int64_t)(o->wait * 1e9)};
	char *out;
	size_t out_len;
	/* a distribution: every node's pairs, merged, then its statistics
	 * (a quantile of parts is not one of the whole) */
	if (r.kind == CMD_DIST ? fandist_answer(nodes, n, &fo, &r, &out, &out_len)
			       : fan_run(nodes, n, &fo, canon, &out, &out_len))
		cli_die("out of memory");
	free(nodes);
	int fd = memfd_create("tally-answer", MFD_CLOEXEC);
	if (fd < 0 || write(fd, out, out_len) != (ssize_t)out_len || lseek(fd, 0, SEEK_SET))
		cli_die("memfd: %s", strerror(errno));
	free(out);
	memset(c, 0, sizeof *c);
	c->fd = fd;
	c->file = 1;
	c->max_line = CLI_REPLY_MAX;
}

static int cli_run_table(const cli_opts *o, const char *word, int argc, char **argv)
{
	size_t cap = 16;
	for (int i = 0; i < argc; i++)
		cap += 2 * strlen(argv[i]) + 4;
	char *cmd = malloc(cap + strlen(word) + 4);
	if (!cmd)
		cli_die("out of memory");
	snprintf(cmd, cap, "#!%s", word);
	for (int i = 0; i < argc; i++)
		cli_append_arg(cmd, cap + strlen(word) + 4, argv[i]);
	strcat(cmd, "\n");
	cli_conn c;
	if (o->nodes) {
		cli_fan(&c, o, cmd);
	} else {
		cli_connect(&c, o);
		cli_auth(&c, o);
		if (o->partial)
			cli_send_all(&c, "#!fanout partial\n", 17);
		cli_send_all(&c, cmd, strlen(cmd));
		if (o->partial) {
			char *r = cli_read_line(&c);
			if (!r || strncmp(r, "OK", 2))
				cli_die("%s", r ? r : "the server closed the connection");
			free(r);
		}
	}
	int rc = cli_print_table(&c, o);
	client_close(&c);
	free(cmd);
	return rc;
}

static int cli_cmd_query(const cli_opts *o, int argc, char **argv)
{
	static const struct {
		const char *kind;
		int min, max;
		const char *usage;
	} kinds[] = {
		{"series", 6, 6, "series TABLE FIELD KEY STEP FROM TO"},
		{"agg", 5, 5, "agg TABLE FIELD KEY FROM TO"},
		{"keys", 4, 6, "keys TABLE FIELD FROM TO [key=TAG=V,...] [by=TAG,...]"},
		{"scan", 4, 5, "scan TABLE KEY FROM TO [LIMIT]"},
		{"dist", 5, 11,
		 "dist TABLE FIELD KEY FROM TO [q=Q|above=X|below=X|hist=E,E,...]..."},
	};
	if (argc < 1) {
		fprintf(stderr, "tally query: which query? One of:\n");
		for (size_t i = 0; i < sizeof kinds / sizeof *kinds; i++)
			fprintf(stderr, "  tally query %s\n", kinds[i].usage);
		return 2;
	}
	for (size_t i = 0; i < sizeof kinds / sizeof *kinds; i++) {
		if (strcmp(argv[0], kinds[i].kind))
			continue;
		if (argc - 1 < kinds[i].min || argc - 1 > kinds[i].max) {
			fprintf(stderr, "usage: tally query %s\n", kinds[i].usage);
			return 2;
		}
		return cli_run_table(o, kinds[i].kind, argc - 1, argv + 1);
	}
	fprintf(stderr, "tally query: unknown query '%s' (series, agg, keys, scan, dist)\n",
		argv[0]);
	return 2;
}

static int cli_cmd_ping(const cli_opts *o)
{
	cli_conn c;
	double t0 = cli_now();
	cli_connect(&c, o);
	cli_auth(&c, o);
	double t1 = cli_now();
	cli_send_all(&c, "#!ping\n", 7);
	char *r = cli_read_line(&c);
	double t2 = cli_now();
	if (!r)
		cli_die("the server closed the connection");
	int ok = !strcmp(r, "OK pong");
	printf("%s from %s:%s: round trip %.0f us (connect %.0f us)\n", r, o->host, o->port,
	       (t2 - t1) * 1e6, (t1 - t0) * 1e6);
	free(r);
	client_close(&c);
	return ok ? 0 : 1;
}

/* ---------------------------------------------------------------- admin */

/* Commands the server answers in one line: tally backup [--server
 * HOST:PORT] DEST (the server backs itself up; DEST is a path on the
 * server's machine or s3://bucket/prefix), tally retention RULES|none,
 * tally retain, tally retained TABLE [raw|LEVEL]. */
static const struct cli_admin {
	const char *word;
	int min_args, max_args;
	const char *usage;
} cli_admins[] = {
	{"backup", 1, 1, "backup [--server HOST:PORT] DEST"},
	{"retention", 1, 1, "retention RULES|none"},
	{"retain", 0, 0, "retain"},
	{"retained", 1, 2, "retained TABLE [raw|LEVEL]"},
	{"drop", 1, 1, "drop-table TABLE [--yes]"},
	{"delete", 4, 4, "delete TABLE KEY|'*' FROM TO [--yes]"},
};

/* tally drop-table TABLE, tally delete TABLE ...: without --yes, the
 * table's name typed again on a terminal is the confirmation; anything
 * else refuses. what says what goes. */
static int cli_confirm(const cli_opts *o, const char *cmd, const char *what, const char *table,
		       int yes)
{
	if (yes)
		return 1;
	if (!isatty(STDIN_FILENO)) {
		fprintf(stderr,
			"tally %s: not a terminal to confirm on; add --yes to delete %s for "
			"good\n",
			cmd, what);
		return 0;
	}
	fprintf(stderr,
		"This deletes %s on %s:%s for good.\n"
		"Type the table's name to confirm: ",
		what, o->host, o->port);
	char line[512];
	if (!fgets(line, sizeof line, stdin))
		return 0;
	line[strcspn(line, "\n")] = 0;
	if (strcmp(line, table)) {
		fprintf(stderr, "tally %s: '%s' is not '%s'; nothing deleted\n", cmd, line, table);
		return 0;
	}
	return 1;
}

static int cli_cmd_admin(cli_opts *o, const struct cli_admin *ad, const char *server, int argc,
			 char **argv)
{
	if (argc < ad->min_args || argc > ad->max_args) {
		fprintf(stderr, "usage: tally %s\n", ad->usage);
		return 2;
	}
	char host[256];
	if (server) {
		const char *colon = strrchr(server, ':');
		if (!colon || colon == server || (size_t)(colon - server) >= sizeof host)
			cli_die("--server %s: want HOST:PORT", server);
		memcpy(host, server, (size_t)(colon - server));
		host[colon - server] = 0;
		o->host = host;
		o->port = colon + 1;
	}
	char cmd[8192];
	snprintf(cmd, sizeof cmd, "#!%s", ad->word);
	for (int i = 0; i < argc; i++)
		cli_append_arg(cmd, sizeof cmd - 2, argv[i]);
	strcat(cmd, "\n");
	cli_conn c;
	cli_connect(&c, o);
	cli_auth(&c, o);
	cli_send_all(&c, cmd, strlen(cmd));
	char *r = cli_read_line(&c);
	if (!r)
		cli_die("the server closed the connection");
	int ok = !strncmp(r, "OK ", 3);
	fprintf(ok ? stdout : stderr, "%s\n", r);
	free(r);
	client_close(&c);
	return ok ? 0 : 1;
}

static const char *cli_env(const char *const *names)
{
	for (; *names; names++) {
		const char *v = getenv(*names);
		if (v && *v)
			return v;
	}
	return NULL;
}

/* An s3:// backup's endpoint and credentials: the variables tallyd reads
 * for tiering (docs/operations.md). */
static tally_s3 cli_s3_env(void)
{
	return (tally_s3){
		.size = sizeof(tally_s3),
		.endpoint = cli_env((const char *const[]){
			"TALLY_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", NULL}),
		.region = cli_env((const char *const[]){"AWS_REGION", "AWS_DEFAULT_REGION", NULL}),
		.access_key = cli_env((const char *const[]){"AWS_ACCESS_KEY_ID", NULL}),
		.secret_key = cli_env((const char *const[]){"AWS_SECRET_ACCESS_KEY", NULL}),
		.session_token = cli_env((const char *const[]){"AWS_SESSION_TOKEN", NULL}),
	};
}

/* tally restore BACKUP DIR [--seq N]: local, no server. */
static int cli_cmd_restore(int argc, char **argv, const char *seq)
{
	if (argc != 2) {
		fprintf(stderr, "usage: tally restore BACKUP DIR [--seq N]\n");
		return 2;
	}
	char *end = NULL;
	unsigned long long n = seq ? strtoull(seq, &end, 10) : 0;
	if (seq && (!*seq || *end)) {
		fprintf(stderr, "tally restore: --seq %s is not a backup number\n", seq);
		return 2;
	}
	tally_backup_result r;
	double t0 = cli_now();
	tally_s3 s3 = cli_s3_env();
	int rc = backup_restore(argv[0], &s3, n, argv[1], &r);
	if (rc) {
		fprintf(stderr, "tally restore: %s\n", tally_errmsg());
		return 1;
	}
	printf("restored backup %" PRIu64 " of %s into %s: %" PRIu64 " files, %" PRIu64
	       " bytes in %.2f s\n",
	       r.seq, argv[0], argv[1], r.files, r.bytes, cli_now() - t0);
	return 0;
}

/* tally verify DIR|BACKUP: local; every problem on stdout, exit 1 if any. */
static int cli_cmd_verify(int argc, char **argv)
{
	if (argc != 1) {
		fprintf(stderr, "usage: tally verify DIR|BACKUP\n");
		return 2;
	}
	uint64_t problems = 0;
	tally_s3 s3 = cli_s3_env();
	int rc = backup_verify(argv[0], &s3, stdout, &problems);
	if (!rc) {
		printf("%s: ok\n", argv[0]);
		return 0;
	}
	fflush(stdout); /* the problems, then the summary */
	fprintf(stderr, "tally verify: %s\n", tally_errmsg());
	return 1;
}

/* tally backup-prune DEST --keep N: local, no server. */
static int cli_cmd_prune(int argc, char **argv, const char *keep)
{
	char *end = NULL;
	unsigned long long n = keep ? strtoull(keep, &end, 10) : 0;
	if (argc != 1 || !keep || !*keep || *end || n == 0) {
		fprintf(stderr, "usage: tally backup-prune DEST --keep N   (N >= 1: the newest "
				"N backups stay)\n");
		return 2;
	}
	backup_prune_result r;
	double t0 = cli_now();
	tally_s3 s3 = cli_s3_env();
	if (backup_prune(argv[0], &s3, n, &r)) {
		fprintf(stderr, "tally backup-prune: %s\n", tally_errmsg());
		return 1;
	}
	printf("%s: kept backups %" PRIu64 " to %" PRIu64 " (%" PRIu64 "), deleted %" PRIu64
	       " catalogs and %" PRIu64 " objects (%" PRIu64 " bytes) in %.2f s; %" PRIu64
	       " objects kept\n",
	       argv[0], r.oldest_kept, r.newest_kept, r.catalogs_kept, r.catalogs_deleted,
	       r.objects_deleted, r.bytes_deleted, cli_now() - t0, r.objects_kept);
	if (r.held_by[0])
		printf("a backup is running (%s): the objects only deleted backups named are "
		       "left for the next prune\n",
		       r.held_by);
	return 0;
}

/* ---------------------------------------------------------------- main */

static void cli_usage(FILE *f)
{
	fprintf(f,
		"Usage: tally [OPTIONS] COMMAND [ARGS]\n"
		"\n"
		"The tally client: talks to tallyd over TCP (docs/protocol.md).\n"
		"\n"
		"Commands:\n"
		"  write [FILE...]       stream line-protocol files (or stdin, '-') to the\n"
		"                        server, sync, print accepted/rejected counts and rate\n"
		"  query series TABLE FIELD KEY STEP FROM TO\n"
		"  query agg TABLE FIELD KEY FROM TO\n"
		"  query keys TABLE FIELD FROM TO [key=TAG=V,...] [by=TAG,...]\n"
		"  query scan TABLE KEY FROM TO [LIMIT]\n"
		"                        FROM/TO: RFC 3339 (2023-11-14T00:00:00Z), an integer\n"
		"                        since the epoch with its unit (1699920000s, ms, us,\n"
		"                        ns; bare: ns), now, now-1h; TO may be a length (1d);\n"
		"                        STEP like 5m\n"
		"  stats                 server and store statistics\n"
		"  ping                  round trip to the server\n"
		"  inspect DIR           what a data directory holds (local; no server)\n"
		"  backup [--server HOST:PORT] DEST\n"
		"                        the server backs itself up to DEST, a directory on\n"
		"                        its machine or s3://bucket/prefix (incremental)\n"
		"  retention RULES|none  replace the server's retention rules, e.g.\n"
		"                        'traffic:raw=90d,5m=2y;*:raw=30d' (docs/operations.md)\n"
		"  retain                run a retention pass now; prints what it dropped\n"
		"  retained TABLE [raw|LEVEL]\n"
		"                        the earliest instant whose data is all kept\n"
		"  drop-table TABLE [--yes]\n"
		"                        drop every event of TABLE on the server; asks to\n"
		"                        type the name again unless --yes\n"
		"  delete TABLE KEY|'*' FROM TO [--yes]\n"
		"                        delete KEY's events (every key's: '*') in [FROM, TO)\n"
		"                        and correct every rollup; asks to type TABLE unless\n"
		"                        --yes; prints the events deleted and bytes rewritten\n"
		"  restore BACKUP DIR [--seq N]\n"
		"                        rebuild a data directory (local; no server)\n"
		"  verify DIR|BACKUP     check every block, object and reference (local)\n"
		"  backup-prune DEST --keep N\n"
		"                        delete all but the newest N backups of DEST and the\n"
		"                        objects only they held (local; safe beside a backup)\n"
		"\n"
		"Options:\n"
		"  --host HOST           server address (default 127.0.0.1)\n"
		"  --port PORT           server port (default " CLI_DEFAULT_PORT ")\n"
		"  --token TOKEN         shared token, if the server wants one (or set\n"
		"                        TALLY_TOKEN, which keeps it out of ps)\n"
		"  --precision P         timestamps of written lines: ns (default), us, ms, s\n"
		"  --wait SECONDS        retry a refused connection this long (a server that\n"
		"                        is starting; default 0)\n"
		"  --csv, --json         query output as CSV or JSON instead of a table\n"
		"  --nodes H:P,H:P,...   query: ask every node and merge their answers exactly\n"
		"  --partial             query: a node that does not answer is named (exit 3),\n"
		"                        not fatal (with --nodes, or a tallyd with peers)\n"
		"  -q, --quiet           no progress bar or row counts\n"
		"  --yes                 drop-table and delete without asking\n"
		"  --version             print the version and exit\n"
		"\n"
		"Exit status: 0 ok, 1 error, 2 usage, 3 write finished with rejected lines.\n"
		"Example: tally write speeds.lp && tally query series traffic speed KV00123 1h "
		"now-1d now\n");
}

int main(int argc, char **argv)
{
	cli_opts o = {
		.host = "127.0.0.1", .port = CLI_DEFAULT_PORT, .token = getenv("TALLY_TOKEN")};
	char *args[256];
	const char *server = NULL, *seq = NULL, *keep = NULL;
	int n = 0, yes = 0, confirmed = 0;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *wait = NULL;
		const char **val = !strcmp(a, "--server")      ? &server
				   : !strcmp(a, "--seq")       ? &seq
				   : !strcmp(a, "--keep")      ? &keep
				   : !strcmp(a, "--host")      ? &o.host
				   : !strcmp(a, "--port")      ? &o.port
				   : !strcmp(a, "--token")     ? &o.token
				   : !strcmp(a, "--precision") ? &o.precision
				   : !strcmp(a, "--wait")      ? &wait
				   : !strcmp(a, "--nodes")     ? &o.nodes
							       : NULL;
		if (val) {
			if (i + 1 >= argc) {
				fprintf(stderr, "tally: %s needs a value\n", a);
				return 2;
			}
			*val = argv[++i];
			if (wait) {
				char *end;
				o.wait = strtod(wait, &end);
				if (end == wait || *end || !(o.wait >= 0 && o.wait <= 86400)) {
					fprintf(stderr,
						"tally: --wait: '%s' is not a number of seconds "
						"from 0 to 86400\n",
						wait);
					return 2;
				}
			}
		} else if (!strcmp(a, "--yes")) {
			yes = 1;
		} else if (!strcmp(a, "--partial")) {
			o.partial = 1;
		} else if (!strcmp(a, "--csv")) {
			o.csv = 1;
		} else if (!strcmp(a, "--json")) {
			o.json = 1;
		} else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) {
			o.quiet = 1;
		} else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			cli_usage(stdout);
			return 0;
		} else if (!strcmp(a, "--version")) {
			printf("tally %s\n", TALLY_VERSION_STRING);
			return 0;
		} else if (!strcmp(a, "--")) {
			while (++i < argc && n < 255)
				args[n++] = argv[i];
		} else if (a[0] == '-' && a[1] == '-') {
			fprintf(stderr, "tally: unknown option %s (see tally --help)\n", a);
			return 2;
		} else if (n < 255) {
			args[n++] = argv[i];
		}
	}
	if (o.token && !*o.token)
		o.token = NULL;
	if (n == 0) {
		cli_usage(stderr);
		return 2;
	}
	const char *cmd = args[0];
	if (!strcmp(cmd, "write"))
		return cli_cmd_write(&o, n - 1, args + 1);
	if (!strcmp(cmd, "query"))
		return cli_cmd_query(&o, n - 1, args + 1);
	if (!strcmp(cmd, "stats")) {
		if (n != 1) {
			fprintf(stderr, "usage: tally stats\n");
			return 2;
		}
		return cli_run_table(&o, "stats", 0, NULL);
	}
	if (!strcmp(cmd, "ping"))
		return cli_cmd_ping(&o);
	if (!strcmp(cmd, "drop-table")) {
		if (n != 2) {
			fprintf(stderr, "usage: tally drop-table TABLE [--yes]\n");
			return 2;
		}
		char what[600];
		snprintf(what, sizeof what, "every event of table '%.500s'", args[1]);
		if (!cli_confirm(&o, cmd, what, args[1], yes))
			return 1;
		cmd = "drop";
		confirmed = 1;
	}
	if (!strcmp(cmd, "delete") && n == 5) {
		char what[1600];
		snprintf(what, sizeof what,
			 "the events of table '%.500s'%s%.500s%s in [%.200s, %.200s)", args[1],
			 strcmp(args[2], "*") ? " key '" : " (every key)",
			 strcmp(args[2], "*") ? args[2] : "", strcmp(args[2], "*") ? "'" : "",
			 args[3], args[4]);
		if (!cli_confirm(&o, cmd, what, args[1], yes))
			return 1;
		confirmed = 1;
	}
	for (size_t i = 0; i < sizeof cli_admins / sizeof *cli_admins; i++)
		if (!strcmp(cmd, cli_admins[i].word) &&
		    ((strcmp(cmd, "drop") && strcmp(cmd, "delete")) || confirmed ||
		     (!strcmp(cmd, "delete") && n != 5)))
			return cli_cmd_admin(&o, &cli_admins[i], server, n - 1, args + 1);
	if (!strcmp(cmd, "restore"))
		return cli_cmd_restore(n - 1, args + 1, seq);
	if (!strcmp(cmd, "verify"))
		return cli_cmd_verify(n - 1, args + 1);
	if (!strcmp(cmd, "backup-prune"))
		return cli_cmd_prune(n - 1, args + 1, keep);
	if (!strcmp(cmd, "inspect")) /* local: reads the directory, no server */
		return inspect_main(n, args);
	fprintf(stderr, "tally: unknown command '%s' (see tally --help)\n", cmd);
	return 2;
}
