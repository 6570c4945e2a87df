/*
 * conf.c — tallyd's settings from defaults, a config file and flags.
 *
 * One table lists every setting once: its name (the flag is --name, the
 * config file key is name, '-' and '_' alike), its kind, where it lives in
 * srv_conf and its help line. The file, the flags and --help all read that
 * table, so they can never disagree about what a setting is called or
 * means. Flags are applied after the file, so they win.
 *
 * Secrets (K_SECRET: the token, the tiering credentials) are never echoed:
 * no error message, help text or log line carries their value; each has a
 * -file variant so it need not sit in argv, and they are wiped when freed.
 */
#include "conf.h"

#include <ctype.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "cmd.h"
#include "jsonev.h"

enum conf_kind {
	K_STR,
	K_SECRET,      /* a string never printed, wiped when freed; not empty */
	K_SECRET_FILE, /* the first line of a file into the K_SECRET at off */
	K_UINT,
	K_U32,
	K_SIZE,      /* size_t */
	K_SIZE64,    /* uint64_t */
	K_PART_SIZE, /* uint64_t: 0 or in [CONF_PART_MIN, CONF_PART_MAX] */
	K_DUR,
	K_DUR0,
	K_DUR_OFF, /* int64_t ns: a duration, 0, or off/never/-<duration> (< 0) */
	K_MS,      /* uint32_t ms: 0 or a duration from 1ms */
	K_LOG,
	K_LEVELS,
	K_OFFSET,
	K_BOOL,      /* unsigned 0 or 1: on/off, yes/no, true/false, 1/0 */
	K_PORT_OFF,  /* int: a TCP port, 0 (any free port), or off (-1) */
	K_JSON_MAP,  /* appended to json_maps: repeatable, checked when set */
	K_KAFKA_OPT, /* "key=value" appended to kafka_options: repeatable, never printed */
};

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
	{"http-port", K_PORT_OFF, offsetof(srv_conf, http_port),
	 "HTTP port (InfluxDB-compatible writes, /ping, /health, /ready); off: no HTTP; "
	 "0: any free port (default 8429)"},
	{"http-bind", K_STR, offsetof(srv_conf, http_bind),
	 "address the HTTP port listens on (default: bind)"},
	{"http-port-file", K_STR, offsetof(srv_conf, http_port_file),
	 "write the bound HTTP port to this file once listening"},
	{"http-max-body-bytes", K_SIZE, offsetof(srv_conf, http_max_body),
	 "largest HTTP request body, also once decompressed; larger: 413 (default 64MiB)"},
	{"http-max-header-bytes", K_SIZE, offsetof(srv_conf, http_max_header),
	 "largest HTTP request head (request line and headers); larger: 431 (default "
	 "16KiB)"},
	{"http-header-timeout", K_DUR, offsetof(srv_conf, http_header_ns),
	 "time to receive a request's head once it has begun; slower: 408 and close "
	 "(default 10s)"},
	{"http-body-timeout", K_DUR, offsetof(srv_conf, http_body_ns),
	 "time to receive a request's whole body once its head has arrived; slower: 408 and "
	 "close (default 60s: a 64MiB body needs 1.1MB/s; raise it for slow links)"},
	{"http-durable", K_BOOL, offsetof(srv_conf, http_durable),
	 "on: an HTTP write is answered 204 once fsync'ed (group commit); off: once "
	 "written, before the fsync, like InfluxDB (weaker: a crash may lose it) "
	 "(default on)"},
	{"http-tls-cert", K_STR, offsetof(srv_conf, http_tls_cert),
	 "PEM certificate chain file; when set (with http-tls-key) the HTTP port speaks "
	 "HTTPS only (TLS 1.2+); reread on SIGHUP"},
	{"http-tls-key", K_STR, offsetof(srv_conf, http_tls_key),
	 "PEM private key file of http-tls-cert; reread on SIGHUP"},
	{"tls-line-protocol", K_BOOL, offsetof(srv_conf, tls_lp),
	 "on: the line-protocol port speaks TLS too, with http-tls-cert's certificate "
	 "(default off)"},
	{"tls-handshake-timeout", K_DUR, offsetof(srv_conf, tls_handshake_ns),
	 "time a TLS client has to finish its handshake; slower: closed (default 10s)"},
	{"shards", K_UINT, offsetof(srv_conf, shards), "shard threads (default: one per core)"},
	{"malloc-arenas", K_UINT, offsetof(srv_conf, malloc_arenas),
	 "malloc arenas at most, shared by all threads (default 1; 0: glibc's default, "
	 "8 per core, which keep freed memory per thread)"},
	{"token", K_SECRET, offsetof(srv_conf, token),
	 "shared token clients must present: #!auth on the line-protocol port, "
	 "Authorization (Token, Bearer, Basic) or p= on HTTP (prefer token-file)"},
	{"token-file", K_SECRET_FILE, offsetof(srv_conf, token),
	 "read the token from this file (first line)"},
	{"max-line-bytes", K_U32, offsetof(srv_conf, max_line),
	 "longest line accepted (default 1MiB)"},
	{"max-connections", K_UINT, offsetof(srv_conf, max_conns),
	 "open connections at once (default 4096)"},
	{"max-connections-per-address", K_UINT, offsetof(srv_conf, max_conns_peer),
	 "open connections from one client address at once, line protocol and HTTP "
	 "together; more are refused; 0: no cap (default 0)"},
	{"reply-buffer-bytes", K_SIZE, offsetof(srv_conf, reply_bytes),
	 "unsent replies kept per connection; more are dropped and counted (default 1MiB)"},
	{"input-buffer-bytes", K_SIZE, offsetof(srv_conf, input_bytes),
	 "input held per connection while it waits for a sync or query (default 4MiB)"},
	{"idle-timeout", K_DUR0, offsetof(srv_conf, idle_ns),
	 "close connections that complete no line (and read no reply) this long; 0: "
	 "never (default 10m)"},
	{"auth-timeout", K_DUR0, offsetof(srv_conf, auth_ns),
	 "with a token, close a line-protocol connection that has not authenticated "
	 "this long after it opened; 0: never (default 10s)"},
	{"max-unauthenticated", K_UINT, offsetof(srv_conf, max_unauth),
	 "with a token, line-protocol connections not yet authenticated at once; more "
	 "are closed with an error (default 256)"},
	{"sync-interval", K_DUR0, offsetof(srv_conf, sync_ns),
	 "background group commit interval; 0: only on #!sync (default 1s)"},
	{"full-wait", K_DUR0, offsetof(srv_conf, full_wait_ns),
	 "how long writes wait for memory when the store is full before being rejected "
	 "(default 10s)"},
	{"shutdown-grace", K_DUR0, offsetof(srv_conf, grace_ns),
	 "on SIGTERM, how long connections may go on sending (default 5s)"},
	{"busy-poll", K_DUR0, offsetof(srv_conf, poll_ns),
	 "after traffic, a shard polls for more this long before it sleeps: a query "
	 "that follows its answer skips the wake-up (about 9us here); 0: never "
	 "(default 50us)"},
	{"recv-buffers", K_UINT, offsetof(srv_conf, recv_bufs),
	 "receive buffers per shard (default 32)"},
	{"recv-buffer-bytes", K_UINT, offsetof(srv_conf, recv_buf_bytes),
	 "size of each receive buffer (default 256KiB)"},
	{"log-level", K_LOG, offsetof(srv_conf, log_level), "error, warn or info (default info)"},
	{"io", K_STR, offsetof(srv_conf, io),
	 "auto (io_uring, else epoll), io_uring or epoll (default auto)"},
	{"camera-route", K_STR, offsetof(srv_conf, camera_route),
	 "HTTP path of the per-window average of one key, {id} where the key goes; off: "
	 "none (default /kvfv/{id}/avg-speed)"},
	{"camera-route-table", K_STR, offsetof(srv_conf, camera_table),
	 "the table camera-route reads (default traffic)"},
	{"camera-route-field", K_STR, offsetof(srv_conf, camera_field),
	 "the numeric field camera-route averages (default speed)"},
	{"camera-route-key-tag", K_STR, offsetof(srv_conf, camera_key),
	 "the key tag camera-route's table must have; {id} is its value (default camera)"},
	{"memory-limit", K_SIZE64, offsetof(srv_conf, memory_limit),
	 "bound for memtables, rollups, per-key state, #!keys answers and open scans' windows "
	 "(default 4GiB)"},
	{"rollup-cache-bytes", K_SIZE64, offsetof(srv_conf, rollup_cache_bytes),
	 "decoded rollup blocks of parts kept in memory, apart from memory-limit; it maps "
	 "at most this plus 8MiB (default 256MiB)"},
	{"part-reads", K_STR, offsetof(srv_conf, part_reads),
	 "how part files are read: mmap (mapped whole; the pages read count in RSS) or pread "
	 "(each block read into a reused buffer; RSS stays flat as data grows) (default mmap)"},
	{"max-keys-per-table", K_UINT, offsetof(srv_conf, max_keys),
	 "most distinct keys a table may hold; lines with a key past it are refused "
	 "(default 0: no limit)"},
	{"align-offset", K_OFFSET, offsetof(srv_conf, align_offset),
	 "day windows start at this UTC offset, e.g. +3h (default 0)"},
	{"table-keys", K_STR, offsetof(srv_conf, table_keys),
	 "series key per table: a tag, tags joined by +, or * (every tag), "
	 "\"traffic=camera+lane,cpu=*\""},
	{"distributions", K_STR, offsetof(srv_conf, distributions),
	 "fields kept as exact distributions, \"traffic.speed:0.1[:max]\" (resolution a "
	 "power of ten; past max distinct values a window, default 4096, a sketch)"},
	{"levels", K_LEVELS, 0, "rollup windows, e.g. 5m,1h,1d (the default)"},
	{"flush-interval", K_MS, offsetof(srv_conf, flush_ms),
	 "flush a shard's memtable into parts once it is this old (default 60s)"},
	{"prefault", K_BOOL, offsetof(srv_conf, prefault),
	 "on start, fault in each shard's first memtable of memory in the background, "
	 "so that writers do not (on or off; default on)"},
	{"wal-damage-read-only", K_BOOL, offsetof(srv_conf, wal_damage_ro),
	 "when WAL records that were synced are damaged or missing, start read-only "
	 "(queries answer, writes are refused, no file changes) instead of refusing to "
	 "start (on or off; default off)"},
	/* Tiering (docs/operations.md). Unset: the environment variables of
	 * conf_envs, named in the help too, else the engine's default. */
	{"tier-bucket", K_STR, offsetof(srv_conf, tier_bucket),
	 "S3 bucket for old raw data; tiering is on when set (default $TALLY_S3_BUCKET, "
	 "else off)"},
	{"tier-endpoint", K_STR, offsetof(srv_conf, tier_endpoint),
	 "http:// or https:// S3 endpoint, path-style (default $TALLY_S3_ENDPOINT, "
	 "$AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL, else AWS S3 of the region)"},
	{"tier-region", K_STR, offsetof(srv_conf, tier_region),
	 "signing region (default $AWS_REGION, $AWS_DEFAULT_REGION, else us-east-1)"},
	{"tier-prefix", K_STR, offsetof(srv_conf, tier_prefix),
	 "object key prefix, e.g. tally/site1/ (default $TALLY_S3_PREFIX, else none)"},
	{"tier-access-key", K_STR, offsetof(srv_conf, tier_access_key),
	 "access key id (default $AWS_ACCESS_KEY_ID; none: unsigned requests)"},
	{"tier-secret-key", K_SECRET, offsetof(srv_conf, tier_secret_key),
	 "secret access key (default $AWS_SECRET_ACCESS_KEY; prefer tier-secret-key-file)"},
	{"tier-secret-key-file", K_SECRET_FILE, offsetof(srv_conf, tier_secret_key),
	 "read the secret access key from this file (first line)"},
	{"tier-session-token", K_SECRET, offsetof(srv_conf, tier_session_token),
	 "session token of temporary credentials (default $AWS_SESSION_TOKEN)"},
	{"tier-session-token-file", K_SECRET_FILE, offsetof(srv_conf, tier_session_token),
	 "read the session token from this file (first line)"},
	{"tier-after", K_DUR_OFF, offsetof(srv_conf, tier_after),
	 "upload a sealed partition once its end is this far behind its table's newest "
	 "event; 0: the default 7d; off: upload nothing more, tiered data stays readable"},
	{"tier-cache-bytes", K_SIZE64, offsetof(srv_conf, tier_cache_bytes),
	 "cold raw blocks kept in memory (default 64MiB)"},
	{"tier-timeout", K_MS, offsetof(srv_conf, tier_timeout_ms),
	 "time limit of one S3 request (default 30s)"},
	{"tier-retries", K_UINT, offsetof(srv_conf, tier_retries),
	 "retries of a failed S3 request, with backoff (0: the default 4)"},
	{"tier-part-bytes", K_PART_SIZE, offsetof(srv_conf, tier_part_bytes),
	 "uploads above this go multipart in parts of this size, 5MiB to 512MiB "
	 "(default 16MiB)"},
	{"json-map", K_JSON_MAP, 0,
	 "how JSON events become rows of a table, repeatable: 'TABLE: key=MEMBER>TAG, "
	 "time=MEMBER, fields=MEMBER>FIELD ...' (docs/json-events.md); the default takes the "
	 "camera "
	 "event into traffic: '" JSONEV_DEFAULT_MAP "'"},
	/* Labelled batches (docs/operations.md, "Exactly once under retries"). */
	{"label-window", K_SIZE64, offsetof(srv_conf, label_window),
	 "per source, the sequences below its newest batch still told apart as applied or "
	 "not; older ones are refused (default 256)"},
	{"label-expiry", K_DUR_OFF, offsetof(srv_conf, label_expiry),
	 "forget a labelled source silent this long; 0: the default 7d; never: keep all"},
	/* Retention (docs/operations.md, "Retention"). */
	{"retention", K_STR, offsetof(srv_conf, retention),
	 "how long tables keep raw events and rollup levels: 'TABLE:CLASS=KEEP,...;...', "
	 "TABLE a name or *, CLASS raw or a level (5m), KEEP like 90d, 2y or forever "
	 "(default: keep everything; #!retention changes it while running)"},
	/* Queries across nodes (docs/cluster.md) */
	{"peers", K_STR, offsetof(srv_conf, peers),
	 "the other nodes of a cluster, HOST:PORT,...: each query asks every node and merges "
	 "their answers exactly (unset: this node alone)"},
	{"peer-timeout", K_DUR, offsetof(srv_conf, peer_timeout_ns),
	 "a query across nodes fails (or, after #!fanout partial, is marked partial) when a "
	 "node has not answered within this (default 5s)"},
	{"fanout-max-bytes", K_SIZE, offsetof(srv_conf, fanout_max_bytes),
	 "largest answer a query across nodes may merge; larger: an error naming it "
	 "(default 256MiB)"},
	/* MQTT (docs/mqtt.md) */
	{"mqtt-broker", K_STR, offsetof(srv_conf, mqtt_broker),
	 "HOST:PORT of an MQTT broker to subscribe to (MQTT 5, QoS 1, a persistent session); "
	 "unset: no MQTT"},
	{"mqtt-topics", K_STR, offsetof(srv_conf, mqtt_topics),
	 "topic filters, comma-separated (default cameras/+/events)"},
	{"mqtt-client-id", K_STR, offsetof(srv_conf, mqtt_client_id),
	 "client id of the session; the broker keeps the session by it (default tallyd)"},
	{"mqtt-format", K_STR, offsetof(srv_conf, mqtt_format),
	 "payloads are json (JSON events, as POST /api/v1/events) or lp (line protocol, ns) "
	 "(default json)"},
	{"mqtt-table", K_STR, offsetof(srv_conf, mqtt_table),
	 "JSON payloads: the table whose json-map reads them (default traffic)"},
	{"mqtt-key-level", K_UINT, offsetof(srv_conf, mqtt_key_level),
	 "JSON payloads: the topic level (1-based) that is the key of events naming none, "
	 "e.g. 2 for cameras/+/events; 0: none (default 0)"},
	{"mqtt-username", K_STR, offsetof(srv_conf, mqtt_username), "user name for the broker"},
	{"mqtt-password", K_SECRET, offsetof(srv_conf, mqtt_password),
	 "password for the broker (prefer mqtt-password-file)"},
	{"mqtt-password-file", K_SECRET_FILE, offsetof(srv_conf, mqtt_password),
	 "read the broker password from this file (first line)"},
	{"mqtt-keepalive", K_DUR, offsetof(srv_conf, mqtt_keepalive_ns),
	 "MQTT keep alive: a PINGREQ every half of it, the session dropped when the broker "
	 "is silent longer (default 30s)"},
	{"mqtt-session-expiry", K_DUR, offsetof(srv_conf, mqtt_session_expiry_ns),
	 "how long the broker keeps the session (and its messages) while tallyd is away "
	 "(default 7d)"},
	{"mqtt-max-message-bytes", K_SIZE, offsetof(srv_conf, mqtt_max_message),
	 "largest message taken; the broker is told, and drops larger ones (default 16MiB)"},
	/* Kafka (docs/cluster.md): consumed exactly once, offsets kept as labels. */
	{"kafka-brokers", K_STR, offsetof(srv_conf, kafka_brokers),
	 "Kafka bootstrap brokers, host:port,...; the consumer is on when set"},
	{"kafka-topics", K_STR, offsetof(srv_conf, kafka_topics),
	 "Kafka topics to consume, comma-separated"},
	{"kafka-group", K_STR, offsetof(srv_conf, kafka_group),
	 "Kafka consumer group; the nodes of one cluster share it (default tally)"},
	{"kafka-client-id", K_STR, offsetof(srv_conf, kafka_client_id),
	 "Kafka client id, shown by the brokers' tools (default tallyd)"},
	{"kafka-format", K_STR, offsetof(srv_conf, kafka_format),
	 "what a Kafka message holds: lp (line protocol, default) or json (JSON events, "
	 "mapped by the json-map of kafka-json-table)"},
	{"kafka-json-table", K_STR, offsetof(srv_conf, kafka_json_table),
	 "with kafka-format json: the table whose json-map maps the events (default "
	 "traffic)"},
	{"kafka-dead-letter-topic", K_STR, offsetof(srv_conf, kafka_dead_letter),
	 "produce each Kafka message with refused lines or events here, as it was, with "
	 "its origin in headers (default: none, only counted and logged)"},
	{"kafka-key-tag", K_STR, offsetof(srv_conf, kafka_key_tag),
	 "the tag a Kafka message's key fills in each of its events that lacks it (e.g. "
	 "camera); an event with another value is refused (default: the key is not used)"},
	{"kafka-consumers", K_UINT, offsetof(srv_conf, kafka_consumers),
	 "Kafka consumer threads, each a member of the group (default: one per shard)"},
	{"kafka-batch-bytes", K_SIZE, offsetof(srv_conf, kafka_batch_bytes),
	 "consumed messages of one partition are written as one labelled batch up to "
	 "this size (default 4MiB)"},
	{"kafka-handover-wait", K_DUR0, offsetof(srv_conf, kafka_handover_ns),
	 "a partition that may come from another node waits this long after a rebalance "
	 "for the previous owner's hand-over commit; 0: no wait (default 3s)"},
	{"kafka-option", K_KAFKA_OPT, 0,
	 "a librdkafka setting as key=value, repeatable, e.g. security.protocol=SASL_SSL, "
	 "sasl.mechanism=SCRAM-SHA-512, sasl.username=..., sasl.password=...; values are "
	 "never printed"},
};

#define CONF_N         (sizeof conf_items / sizeof conf_items[0])
#define CONF_TOKEN_MIN 16 /* bytes: 128 bits of a random printable token */

void conf_init(srv_conf *c)
{
	memset(c, 0, sizeof *c);
	c->port = CONF_DEFAULT_PORT;
	c->http_port = CONF_DEFAULT_HTTP_PORT;
	c->http_max_body = 64u << 20;
	c->http_max_header = 16u << 10;
	c->http_header_ns = 10 * INT64_C(1000000000);
	c->http_body_ns = 60 * INT64_C(1000000000);
	c->http_durable = 1;
	c->tls_handshake_ns = 10 * INT64_C(1000000000);
	c->max_line = 1u << 20;
	c->max_conns = 4096;
	c->reply_bytes = 1u << 20;
	c->input_bytes = 4u << 20;
	c->idle_ns = 600 * INT64_C(1000000000);
	c->auth_ns = 10 * INT64_C(1000000000);
	c->max_unauth = 256;
	c->poll_ns = 50 * INT64_C(1000);
	c->sync_ns = INT64_C(1000000000);
	c->full_wait_ns = 10 * INT64_C(1000000000);
	c->grace_ns = 5 * INT64_C(1000000000);
	c->recv_bufs = 32;
	/* A read is one write batch: at 256 KiB (about 4,800 lines) the
	 * cameras of an interleaved file come several rows a key per batch
	 * (docs/operations.md, "Receive buffers"). */
	c->recv_buf_bytes = 256u << 10;
	c->malloc_arenas = 1; /* docs/operations.md, "Memory and latency" */
	c->log_level = TALLY_LOG_INFO;
	c->prefault = 1;
	c->mqtt_keepalive_ns = 30 * INT64_C(1000000000);
	c->peer_timeout_ns = 5 * INT64_C(1000000000);
	c->fanout_max_bytes = 256u << 20;
	c->mqtt_session_expiry_ns = 7 * 86400 * INT64_C(1000000000);
	c->mqtt_max_message = 16u << 20;
	c->kafka_batch_bytes = 4u << 20;
	c->kafka_handover_ns = 3 * INT64_C(1000000000);
}

void conf_wipe(char **s)
{
	if (*s) {
		explicit_bzero(*s, strlen(*s)); /* a plain memset before free may be elided */
		free(*s);
		*s = NULL;
	}
}

void conf_free(srv_conf *c)
{
	for (size_t i = 0; i < CONF_N; i++) {
		char **p = (char **)((char *)c + conf_items[i].off);
		if (conf_items[i].kind == K_SECRET)
			conf_wipe(p);
		else if (conf_items[i].kind == K_STR) {
			free(*p);
			*p = NULL;
		}
	}
	for (unsigned i = 0; i < c->n_kafka_options; i++)
		conf_wipe(&c->kafka_options[i]);
	free(c->kafka_options);
	c->kafka_options = NULL;
	c->n_kafka_options = 0;
	for (unsigned i = 0; i < c->n_json_maps; i++)
		free(c->json_maps[i]);
	free(c->json_maps);
	c->json_maps = NULL;
	c->n_json_maps = 0;
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

/* A K_SECRET_FILE: the secret is the file's first line (a session token
 * is up to a few KiB); errors name the file, never its content. */
static int conf_read_secret_file(const struct conf_item *it, char **dst, const char *path,
				 const char *where)
{
	const char *w = where ? where : "", *sep = where ? ": " : "";
	FILE *f = fopen(path, "r");
	if (!f) {
		fprintf(stderr, "tallyd: %s%s%s %s: %s\n", w, sep, it->name, path, strerror(errno));
		return -1;
	}
	struct stat st;
	if (fstat(fileno(f), &st) == 0 && (st.st_mode & S_IROTH))
		fprintf(stderr,
			"tallyd: warning: %s%s%s %s is readable by every user of this machine; "
			"chmod o-r it\n",
			w, sep, it->name, path);
	char buf[8192];
	size_t n = fgets(buf, sizeof buf, f) ? strlen(buf) : 0;
	int whole = n < sizeof buf - 1 || buf[n - 1] == '\n' || fgetc(f) == EOF;
	fclose(f);
	while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
		buf[--n] = 0;
	int rc = -1;
	if (!whole)
		fprintf(stderr, "tallyd: %s%s%s %s: first line longer than %zu bytes\n", w, sep,
			it->name, path, sizeof buf - 2);
	else if (n == 0)
		fprintf(stderr, "tallyd: %s%s%s %s: empty\n", w, sep, it->name, path);
	else {
		conf_wipe(dst);
		rc = (*dst = strdup(buf)) ? 0 : -1;
	}
	explicit_bzero(buf, sizeof buf); /* do not leave the secret on the stack */
	return rc;
}

/* A copy of value appended to a repeatable setting's list. */
static int conf_list_add(char ***list, unsigned *n, const char *value)
{
	char **v = realloc(*list, (*n + 1) * sizeof *v);
	if (!v)
		return -1;
	*list = v;
	if (!(v[*n] = strdup(value)))
		return -1;
	(*n)++;
	return 0;
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
	case K_SECRET_FILE: return conf_read_secret_file(it, (char **)dst, value, where);
	case K_SECRET:
		if (!*value) /* the value is never printed: empty is all it may say */
			return conf_err(where, it->name, "", "is empty");
		conf_wipe((char **)dst);
		*(char **)dst = strdup(value);
		return *(char **)dst ? 0 : -1;
	case K_STR:
		free(*(char **)dst);
		*(char **)dst = strdup(value);
		return *(char **)dst ? 0 : -1;
	case K_BOOL: {
		static const char *const yes[] = {"on", "yes", "true", "1"}, *const no[] = {
										     "off", "no",
										     "false", "0"};
		for (int i = 0; i < 4; i++) {
			if (!strcasecmp(value, yes[i]) || !strcasecmp(value, no[i])) {
				*(unsigned *)dst = !strcasecmp(value, yes[i]);
				return 0;
			}
		}
		return conf_err(where, it->name, value, "is not on or off");
	}
	case K_PORT_OFF:
		if (!strcasecmp(value, "off")) {
			*(int *)dst = -1;
			return 0;
		}
		if (conf_size(value, &u) || u > 65535)
			return conf_err(where, it->name, value, "is not a TCP port or off");
		*(int *)dst = (int)u;
		return 0;
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
	case K_SIZE64:
		if (conf_size(value, &u))
			return conf_err(where, it->name, value, "is not a size (like 64KiB, 4GiB)");
		if (it->kind == K_SIZE64)
			*(uint64_t *)dst = u;
		else
			*(size_t *)dst = (size_t)u;
		return 0;
	case K_PART_SIZE:
		if (conf_size(value, &u) || (u && (u < CONF_PART_MIN || u > CONF_PART_MAX)))
			return conf_err(
				where, it->name, value,
				"is not 0 or a size from 5MiB (S3's smallest part) to 512MiB");
		*(uint64_t *)dst = u;
		return 0;
	case K_DUR:
	case K_DUR0:
		if (!strcmp(value, "0")) {
			*(int64_t *)dst = 0;
			return 0;
		}
		if (cmd_parse_duration(value, &d))
			return conf_err(where, it->name, value,
					"is not a duration (like 500ms, 10s, 5m)");
		*(int64_t *)dst = d;
		return 0;
	case K_DUR_OFF:
		if (!strcmp(value, "0")) {
			*(int64_t *)dst = 0;
			return 0;
		}
		if (!strcasecmp(value, "off") || !strcasecmp(value, "never")) {
			*(int64_t *)dst = -1;
			return 0;
		}
		if (cmd_parse_duration(*value == '-' ? value + 1 : value, &d))
			return conf_err(where, it->name, value,
					"is not a duration (like 1h, 7d), 0 or off");
		*(int64_t *)dst = *value == '-' ? -d : d;
		return 0;
	case K_MS:
		if (!strcmp(value, "0")) {
			*(uint32_t *)dst = 0;
			return 0;
		}
		if (cmd_parse_duration(value, &d) || d < 1000000 || d / 1000000 > UINT32_MAX)
			return conf_err(where, it->name, value,
					"is not a duration from 1ms to 49d (like 500ms, 30s)");
		*(uint32_t *)dst = (uint32_t)(d / 1000000);
		return 0;
	case K_OFFSET: {
		int neg = *value == '-';
		const char *v = (*value == '-' || *value == '+') ? value + 1 : value;
		if (!strcmp(v, "0")) {
			c->align_offset = 0;
			return 0;
		}
		if (cmd_parse_duration(v, &d) || d >= 86400 * INT64_C(1000000000))
			return conf_err(where, it->name, value,
					"is not an offset under a day (like +3h)");
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
	case K_JSON_MAP: {
		char err[JSONEV_REASON_MAX];
		jsonev_map *m;
		int rc = jsonev_map_parse(value, &m, err, sizeof err);
		jsonev_map_free(m);
		if (rc) {
			fprintf(stderr, "tallyd: %s%s%s\n", where ? where : "", where ? ": " : "",
				err);
			return -1;
		}
		return conf_list_add(&c->json_maps, &c->n_json_maps, value);
	}
	case K_KAFKA_OPT: {
		/* the key may be shown; the value may be a password */
		const char *eq = strchr(value, '=');
		if (!eq || eq == value || !eq[1]) {
			fprintf(stderr, "tallyd: %s%s%s: '%.*s' is not key=value\n",
				where ? where : "", where ? ": " : "", it->name,
				eq ? (int)(eq - value) : 0, value);
			return -1;
		}
		return conf_list_add(&c->kafka_options, &c->n_kafka_options, value);
	}
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
				return conf_err(where, it->name, value,
						"is not a list like 5m,1h,1d");
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
	explicit_bzero(line, sizeof line); /* it may have held a secret */
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
		printf("  --%-23s %s\n", conf_items[i].name, conf_items[i].help);
	printf("  --%-23s %s\n", "config", "read settings from this file first");
	printf("\nSIGTERM or SIGINT: stop accepting, finish buffered input, sync, exit.\n"
	       "Example: tallyd --data /var/lib/tally --sync-interval 200ms\n");
}

/* The settings the environment gives when the file and the flags do not:
 * the first set variable of the list wins. The engine reads no
 * environment; these are the names AWS tools and tally users expect. */
static const struct conf_env {
	const char *setting; /* a K_STR or K_SECRET of conf_items */
	const char *vars;    /* space-separated */
} conf_envs[] = {
	{"tier-bucket", "TALLY_S3_BUCKET"},
	{"tier-endpoint", "TALLY_S3_ENDPOINT AWS_ENDPOINT_URL_S3 AWS_ENDPOINT_URL"},
	{"tier-region", "AWS_REGION AWS_DEFAULT_REGION"},
	{"tier-prefix", "TALLY_S3_PREFIX"},
	{"tier-access-key", "AWS_ACCESS_KEY_ID"},
	{"tier-secret-key", "AWS_SECRET_ACCESS_KEY"},
	{"tier-session-token", "AWS_SESSION_TOKEN"},
};

/* Fills the settings of conf_envs still unset from the environment; each
 * value is checked like a flag's, and an error names its variable. */
static int conf_env(srv_conf *c)
{
	for (size_t i = 0; i < sizeof conf_envs / sizeof conf_envs[0]; i++) {
		const struct conf_item *it = NULL;
		for (size_t k = 0; k < CONF_N && !it; k++)
			if (!strcmp(conf_items[k].name, conf_envs[i].setting))
				it = &conf_items[k];
		if (!it || *(char **)((char *)c + it->off))
			continue;
		for (const char *n = conf_envs[i].vars; *n;) {
			size_t len = strcspn(n, " ");
			char name[64], where[96];
			snprintf(name, sizeof name, "%.*s", (int)len, n);
			n += len + (n[len] == ' ');
			const char *v = getenv(name);
			if (!v || !*v)
				continue;
			snprintf(where, sizeof where, "environment variable %s", name);
			if (conf_set(c, it->name, v, where))
				return -1;
			break;
		}
	}
	return 0;
}

/* camera-route: off, or a path with one {id} as a whole segment, clear of
 * the query API's /api/v1/. */
static int conf_check_route(const char *r)
{
	if (!r || !strcmp(r, "off"))
		return 0;
	const char *hole = strstr(r, "{id}");
	if (r[0] != '/' || !hole || strstr(hole + 4, "{id}") || hole[-1] != '/' ||
	    (hole[4] && hole[4] != '/') || !strncmp(r, "/api/v1/", 8) || strpbrk(r, "?# ")) {
		fprintf(stderr,
			"tallyd: camera-route '%s' must be off or a path holding {id} once as a "
			"whole segment, outside /api/v1/ (like /kvfv/{id}/avg-speed)\n",
			r);
		return -1;
	}
	return 0;
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
		/* up to '=' only: what follows may be a secret */
		int shown = (int)strcspn(a, "=");
		if (strncmp(a, "--", 2) || !a[2]) {
			fprintf(stderr, "tallyd: unexpected argument '%.*s' (see tallyd --help)\n",
				shown, a);
			return -1;
		}
		char name[64];
		const char *eq = strchr(a, '='), *value;
		size_t nl = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
		if (nl >= sizeof name) {
			fprintf(stderr, "tallyd: unknown flag '%.*s'\n", shown, a);
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
	if (conf_env(c))
		return -1;
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
	if (conf_check_route(c->camera_route))
		return -1;
	if (c->reply_bytes < 4096 || c->input_bytes < 4096) {
		fprintf(stderr,
			"tallyd: reply-buffer-bytes and input-buffer-bytes must be at least "
			"4KiB\n");
		return -1;
	}
	if (c->io && strcmp(c->io, "auto") && strcmp(c->io, "io_uring") && strcmp(c->io, "epoll")) {
		fprintf(stderr, "tallyd: io '%s' is not auto, io_uring or epoll\n", c->io);
		return -1;
	}
	if (!c->part_reads || !strcmp(c->part_reads, "mmap")) {
		c->part_reads_mode = TALLY_PART_READS_MMAP;
	} else if (!strcmp(c->part_reads, "pread")) {
		c->part_reads_mode = TALLY_PART_READS_PREAD;
	} else {
		fprintf(stderr, "tallyd: part-reads '%s' is not mmap or pread\n", c->part_reads);
		return -1;
	}
	if (c->http_max_header < 256 || c->http_max_header > (1u << 20) ||
	    c->http_max_body < 4096 || c->http_header_ns < 1000000 || c->http_body_ns < 1000000) {
		fprintf(stderr, "tallyd: http-max-header-bytes must be in [256, 1MiB], "
				"http-max-body-bytes at least 4KiB and http-header-timeout at "
				"least 1ms, http-body-timeout too\n");
		return -1;
	}
	if (!c->http_tls_cert != !c->http_tls_key) {
		fprintf(stderr, "tallyd: http-tls-cert and http-tls-key go together: set both "
				"for HTTPS, or neither\n");
		return -1;
	}
	if (c->tls_lp && !c->http_tls_cert) {
		fprintf(stderr, "tallyd: tls-line-protocol needs http-tls-cert and http-tls-key\n");
		return -1;
	}
	if (c->tls_handshake_ns < 1000000) {
		fprintf(stderr, "tallyd: tls-handshake-timeout must be at least 1ms\n");
		return -1;
	}
	if (c->token && strlen(c->token) < CONF_TOKEN_MIN) {
		/* the length only: a secret is never shown */
		fprintf(stderr,
			"tallyd: token: %zu bytes, shorter than %d: a short token can be "
			"guessed; use a random one, e.g. from 'head -c 24 /dev/urandom | "
			"base64'\n",
			strlen(c->token), CONF_TOKEN_MIN);
		return -1;
	}
	if (c->kafka_format && strcmp(c->kafka_format, "lp") && strcmp(c->kafka_format, "json")) {
		fprintf(stderr, "tallyd: kafka-format '%s' is not lp or json\n", c->kafka_format);
		return -1;
	}
	if (c->kafka_brokers && (!c->kafka_topics || !*c->kafka_topics)) {
		fprintf(stderr, "tallyd: kafka-brokers needs kafka-topics\n");
		return -1;
	}
	if (c->kafka_batch_bytes && c->kafka_batch_bytes < 4096) {
		fprintf(stderr, "tallyd: kafka-batch-bytes must be at least 4KiB\n");
		return -1;
	}
	if (c->max_conns == 0) {
		fprintf(stderr, "tallyd: max-connections must be at least 1\n");
		return -1;
	}
	return 0;
}
