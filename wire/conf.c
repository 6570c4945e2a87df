/*
 * conf.c — tallyd's settings from defaults, a config file and flags.
 *
 * One table lists every setting once: its name (the flag is --name, the
 * config file key is name, '-' and '_' alike), its kind, where it lives in
 * srv_conf and its help line. The file, the flags and --help all read that
 * table, so they can never disagree about what a setting is called or
 * means. Flags are applied after the file, so they win.
 */
#include "conf.h"

#include <ctype.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cmd.h"

enum conf_kind { K_STR, K_UINT, K_SIZE, K_DUR, K_DUR0, K_LOG, K_LEVELS, K_OFFSET, K_U32, K_TOKEN_FILE };

static const struct conf_item {
	const char *name;
	enum conf_kind kind;
	size_t off;
	const char *help;
} conf_items[] = {
	{"bind", K_STR, offsetof(srv_conf, bind),
	 "address to listen on (default 127.0.0.1; other addresses only when set)"},
	{"port", K_UINT, offsetof(srv_conf, port), "TCP port (default 8427; 0: any free port)"},
	{"data", K_STR, offsetof(srv_conf, data), "data directory (default ./data)"},
	{"port-file", K_STR, offsetof(srv_conf, port_file),
	 "write the bound port to this file once listening"},
	{"shards", K_UINT, offsetof(srv_conf, shards), "shard threads (default: one per core)"},
	{"token", K_STR, offsetof(srv_conf, token),
	 "shared token clients must present with #!auth (prefer token-file)"},
	{"token-file", K_TOKEN_FILE, 0, "read the token from this file (first line)"},
	{"max-line-bytes", K_U32, offsetof(srv_conf, max_line),
	 "longest line accepted (default 1MiB)"},
	{"max-connections", K_UINT, offsetof(srv_conf, max_conns),
	 "open connections at once (default 4096)"},
	{"reply-buffer-bytes", K_SIZE, offsetof(srv_conf, reply_bytes),
	 "unsent replies kept per connection; more are dropped and counted (default 1MiB)"},
	{"input-buffer-bytes", K_SIZE, offsetof(srv_conf, input_bytes),
	 "input held per connection while it waits for a sync or query (default 4MiB)"},
	{"idle-timeout", K_DUR0, offsetof(srv_conf, idle_ns),
	 "close connections idle this long; 0: never (default 10m)"},
	{"sync-interval", K_DUR0, offsetof(srv_conf, sync_ns),
	 "background group commit interval; 0: only on #!sync (default 1s)"},
	{"full-wait", K_DUR0, offsetof(srv_conf, full_wait_ns),
	 "how long writes wait for memory when the store is full before being rejected "
	 "(default 10s)"},
	{"shutdown-grace", K_DUR0, offsetof(srv_conf, grace_ns),
	 "on SIGTERM, how long connections may go on sending (default 5s)"},
	{"recv-buffers", K_UINT, offsetof(srv_conf, recv_bufs),
	 "receive buffers per shard (default 32)"},
	{"recv-buffer-bytes", K_UINT, offsetof(srv_conf, recv_buf_bytes),
	 "size of each receive buffer (default 64KiB)"},
	{"log-level", K_LOG, offsetof(srv_conf, log_level), "error, warn or info (default info)"},
	{"io", K_STR, offsetof(srv_conf, io),
	 "auto (io_uring, else epoll), io_uring or epoll (default auto)"},
	{"memory-limit", K_SIZE, offsetof(srv_conf, memory_limit),
	 "bound for memtables and rollups (default 4GiB)"},
	{"align-offset", K_OFFSET, offsetof(srv_conf, align_offset),
	 "day windows start at this UTC offset, e.g. +3h (default 0)"},
	{"table-keys", K_STR, offsetof(srv_conf, table_keys),
	 "key tag per table, \"traffic=camera,shop=store\""},
	{"levels", K_LEVELS, 0, "rollup windows, e.g. 5m,1h,1d (the default)"},
};

#define CONF_N (sizeof conf_items / sizeof conf_items[0])

void conf_init(srv_conf *c)
{
	memset(c, 0, sizeof *c);
	c->port = CONF_DEFAULT_PORT;
	c->max_line = 1u << 20;
	c->max_conns = 4096;
	c->reply_bytes = 1u << 20;
	c->input_bytes = 4u << 20;
	c->idle_ns = 600 * INT64_C(1000000000);
	c->sync_ns = INT64_C(1000000000);
	c->full_wait_ns = 10 * INT64_C(1000000000);
	c->grace_ns = 5 * INT64_C(1000000000);
	c->recv_bufs = 32;
	c->recv_buf_bytes = 64u << 10;
	c->log_level = TALLY_LOG_INFO;
}

void conf_free(srv_conf *c)
{
	for (size_t i = 0; i < CONF_N; i++)
		if (conf_items[i].kind == K_STR) {
			char **p = (char **)((char *)c + conf_items[i].off);
			if (*p && conf_items[i].off == offsetof(srv_conf, token))
				memset(*p, 0, strlen(*p)); /* do not leave the secret in freed memory */
			free(*p);
			*p = NULL;
		}
}

/* "name" matches a table name with '-' and '_' alike. */
static int conf_name_eq(const char *a, const char *b)
{
	for (; *a && *b; a++, b++) {
		char x = *a == '_' ? '-' : *a, y = *b == '_' ? '-' : *b;
		if (x != y)
			return 0;
	}
	return *a == *b;
}

/* 123, 64k, 64KiB, 1m, 1MiB, 4g, 4GiB (binary units). */
static int conf_size(const char *s, uint64_t *out)
{
	char *e;
	errno = 0;
	unsigned long long v = strtoull(s, &e, 10);
	if (e == s || errno || *s == '-')
		return -1;
	unsigned shift = 0;
	if (*e) {
		char u = (char)tolower((unsigned char)*e++);
		shift = u == 'k' ? 10 : u == 'm' ? 20 : u == 'g' ? 30 : u == 't' ? 40 : 99;
		if (shift == 99)
			return -1;
		if (!strcasecmp(e, "ib") || !strcasecmp(e, "b"))
			e += strlen(e);
		if (*e)
			return -1;
	}
	if (shift && v > (UINT64_MAX >> shift))
		return -1;
	*out = (uint64_t)v << shift;
	return 0;
}

static int conf_err(const char *where, const char *name, const char *value, const char *what)
{
	fprintf(stderr, "tallyd: %s%s%s: '%s' %s\n", where ? where : "", where ? ": " : "", name,
		value, what);
	return -1;
}

static int conf_read_token_file(srv_conf *c, const char *path, const char *where)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		fprintf(stderr, "tallyd: %s%stoken-file %s: %s\n", where ? where : "",
			where ? ": " : "", path, strerror(errno));
		return -1;
	}
	char buf[1024];
	size_t n = fgets(buf, sizeof buf, f) ? strlen(buf) : 0;
	fclose(f);
	while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
		buf[--n] = 0;
	if (n == 0) {
		fprintf(stderr, "tallyd: token-file %s: empty\n", path);
		return -1;
	}
	free(c->token);
	c->token = strdup(buf);
	memset(buf, 0, sizeof buf);
	return c->token ? 0 : -1;
}

int conf_set(srv_conf *c, const char *name, const char *value, const char *where)
{
	const struct conf_item *it = NULL;
	for (size_t i = 0; i < CONF_N; i++)
		if (conf_name_eq(name, conf_items[i].name))
			it = &conf_items[i];
	if (!it) {
		fprintf(stderr, "tallyd: %s%sunknown setting '%s' (see tallyd --help)\n",
			where ? where : "", where ? ": " : "", name);
		return -1;
	}
	void *dst = (char *)c + it->off;
	uint64_t u;
	int64_t d;
	switch (it->kind) {
	case K_TOKEN_FILE:
		return conf_read_token_file(c, value, where);
	case K_STR:
		if (!strcmp(it->name, "token") && !*value)
			return conf_err(where, it->name, "", "is empty");
		free(*(char **)dst);
		*(char **)dst = strdup(value);
		return *(char **)dst ? 0 : -1;
	case K_UINT:
	case K_U32:
		if (conf_size(value, &u) || u > (it->kind == K_U32 ? UINT32_MAX : 1000000000u))
			return conf_err(where, it->name, value, "is not a valid number");
		if (it->kind == K_U32)
			*(uint32_t *)dst = (uint32_t)u;
		else
			*(unsigned *)dst = (unsigned)u;
		return 0;
	case K_SIZE:
		if (conf_size(value, &u))
			return conf_err(where, it->name, value, "is not a size (like 64KiB, 4GiB)");
		if (it->off == offsetof(srv_conf, memory_limit))
			*(uint64_t *)dst = u;
		else
			*(size_t *)dst = (size_t)u;
		return 0;
	case K_DUR:
	case K_DUR0:
		if (!strcmp(value, "0")) {
			*(int64_t *)dst = 0;
			return 0;
		}
		if (cmd_parse_duration(value, &d))
			return conf_err(where, it->name, value, "is not a duration (like 500ms, 10s, 5m)");
		*(int64_t *)dst = d;
		return 0;
	case K_OFFSET: {
		int neg = *value == '-';
		const char *v = (*value == '-' || *value == '+') ? value + 1 : value;
		if (!strcmp(v, "0")) {
			c->align_offset = 0;
			return 0;
		}
		if (cmd_parse_duration(v, &d) || d >= 86400 * INT64_C(1000000000))
			return conf_err(where, it->name, value, "is not an offset under a day (like +3h)");
		c->align_offset = neg ? -d : d;
		return 0;
	}
	case K_LOG:
		if (!strcasecmp(value, "error"))
			c->log_level = TALLY_LOG_ERROR;
		else if (!strcasecmp(value, "warn"))
			c->log_level = TALLY_LOG_WARN;
		else if (!strcasecmp(value, "info"))
			c->log_level = TALLY_LOG_INFO;
		else
			return conf_err(where, it->name, value, "is not error, warn or info");
		return 0;
	case K_LEVELS: {
		char buf[256];
		if (strlen(value) >= sizeof buf)
			return conf_err(where, it->name, value, "is too long");
		strcpy(buf, value);
		unsigned n = 0;
		for (char *save = NULL, *t = strtok_r(buf, ",", &save); t;
		     t = strtok_r(NULL, ",", &save)) {
			if (n == TALLY_LEVELS_MAX)
				return conf_err(where, it->name, value, "has more than 8 levels");
			if (cmd_parse_duration(t, &c->levels[n++]))
				return conf_err(where, it->name, value, "is not a list like 5m,1h,1d");
		}
		c->n_levels = n;
		return 0;
	}
	}
	return -1;
}

int conf_load_file(srv_conf *c, const char *path)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		fprintf(stderr, "tallyd: config %s: %s\n", path, strerror(errno));
		return -1;
	}
	char line[4096], where[4200];
	int rc = 0;
	for (unsigned no = 1; fgets(line, sizeof line, f); no++) {
		snprintf(where, sizeof where, "%s:%u", path, no);
		size_t n = strlen(line);
		if (n == sizeof line - 1 && line[n - 1] != '\n') {
			fprintf(stderr, "tallyd: %s: line longer than %zu bytes\n", where,
				sizeof line - 2);
			rc = -1;
			break;
		}
		while (n && isspace((unsigned char)line[n - 1]))
			line[--n] = 0;
		char *p = line;
		while (isspace((unsigned char)*p))
			p++;
		if (!*p || *p == '#')
			continue;
		char *eq = strchr(p, '=');
		if (!eq) {
			fprintf(stderr, "tallyd: %s: expected 'name = value'\n", where);
			rc = -1;
			break;
		}
		char *ne = eq;
		while (ne > p && isspace((unsigned char)ne[-1]))
			ne--;
		*ne = 0;
		char *v = eq + 1;
		while (isspace((unsigned char)*v))
			v++;
		size_t vl = strlen(v);
		if (vl >= 2 && v[0] == '"' && v[vl - 1] == '"') {
			v[vl - 1] = 0;
			v++;
		}
		if ((rc = conf_set(c, p, v, where)))
			break;
	}
	memset(line, 0, sizeof line); /* it may have held the token */
	fclose(f);
	return rc;
}

void conf_usage(void)
{
	printf("Usage: tallyd [--config FILE] [--NAME VALUE]...\n"
	       "\n"
	       "The tally server: InfluxDB line protocol over TCP, with #! commands for\n"
	       "sync, queries and stats (docs/protocol.md). With no settings it serves\n"
	       "127.0.0.1:%d from ./data.\n"
	       "\n"
	       "Settings (flags as --name VALUE or --name=VALUE; in a config file as\n"
	       "'name = value' lines, '#' comments; flags win over the file):\n",
	       CONF_DEFAULT_PORT);
	for (size_t i = 0; i < CONF_N; i++)
		printf("  --%-20s %s\n", conf_items[i].name, conf_items[i].help);
	printf("  --%-20s %s\n", "config", "read settings from this file first");
	printf("\nSIGTERM or SIGINT: stop accepting, finish buffered input, sync, exit.\n"
	       "Example: tallyd --data /var/lib/tally --sync-interval 200ms\n");
}

int conf_parse_args(srv_conf *c, int argc, char **argv)
{
	/* The config file first, wherever --config stands. */
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--config") || !strcmp(a, "-c")) {
			if (i + 1 >= argc) {
				fprintf(stderr, "tallyd: %s needs a file name\n", a);
				return -1;
			}
			if (conf_load_file(c, argv[i + 1]))
				return -1;
			i++;
		} else if (!strncmp(a, "--config=", 9)) {
			if (conf_load_file(c, a + 9))
				return -1;
		}
	}
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			conf_usage();
			return 1;
		}
		if (!strcmp(a, "--version")) {
			printf("tallyd %d.%d.%d\n", TALLY_VERSION_MAJOR, TALLY_VERSION_MINOR,
			       TALLY_VERSION_PATCH);
			return 1;
		}
		if (!strcmp(a, "--config") || !strcmp(a, "-c")) {
			i++;
			continue;
		}
		if (!strncmp(a, "--config=", 9))
			continue;
		if (strncmp(a, "--", 2) || !a[2]) {
			fprintf(stderr, "tallyd: unexpected argument '%s' (see tallyd --help)\n", a);
			return -1;
		}
		char name[64];
		const char *eq = strchr(a, '='), *value;
		size_t nl = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
		if (nl >= sizeof name) {
			fprintf(stderr, "tallyd: unknown flag '%s'\n", a);
			return -1;
		}
		memcpy(name, a + 2, nl);
		name[nl] = 0;
		if (eq) {
			value = eq + 1;
		} else {
			if (i + 1 >= argc) {
				fprintf(stderr, "tallyd: --%s needs a value\n", name);
				return -1;
			}
			value = argv[++i];
		}
		if (conf_set(c, name, value, NULL))
			return -1;
	}
	if (!c->bind && !(c->bind = strdup("127.0.0.1")))
		return -1;
	if (!c->data && !(c->data = strdup("./data")))
		return -1;
	if (c->port > 65535) {
		fprintf(stderr, "tallyd: port %u is not a TCP port\n", c->port);
		return -1;
	}
	if (c->max_line < 64 || c->max_line > (256u << 20)) {
		fprintf(stderr, "tallyd: max-line-bytes %u not in [64, 256MiB]\n", c->max_line);
		return -1;
	}
	if (c->recv_buf_bytes < 4096 || c->recv_buf_bytes > (16u << 20) || c->recv_bufs < 8 ||
	    c->recv_bufs > 32768 || (c->recv_bufs & (c->recv_bufs - 1))) {
		fprintf(stderr, "tallyd: recv-buffers must be a power of two in [8, 32768] and "
				"recv-buffer-bytes in [4KiB, 16MiB]\n");
		return -1;
	}
	if (c->reply_bytes < 4096 || c->input_bytes < 4096) {
		fprintf(stderr, "tallyd: reply-buffer-bytes and input-buffer-bytes must be at least "
				"4KiB\n");
		return -1;
	}
	if (c->io && strcmp(c->io, "auto") && strcmp(c->io, "io_uring") && strcmp(c->io, "epoll")) {
		fprintf(stderr, "tallyd: io '%s' is not auto, io_uring or epoll\n", c->io);
		return -1;
	}
		if (c->max_conns == 0) {
		fprintf(stderr, "tallyd: max-connections must be at least 1\n");
		return -1;
	}
	return 0;
}
