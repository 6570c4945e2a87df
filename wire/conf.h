/*
 * conf.h — tallyd's settings: defaults, config file, command-line flags
 * (internal).
 */
#ifndef TALLY_CONF_H
#define TALLY_CONF_H

#include <stddef.h>
#include <stdint.h>

#include "tally.h"

#define CONF_DEFAULT_PORT 8427
/* Clear of InfluxDB (8086), ClickHouse (8123, 9000, 9009) and
 * VictoriaMetrics (8428), so tally can run beside each of them. */
#define CONF_DEFAULT_HTTP_PORT 8429

typedef struct srv_conf {
	char *bind;               /* address to listen on; default 127.0.0.1 */
	unsigned port;            /* default 8427; 0 picks a free port */
	char *data;               /* data directory; default ./data */
	char *port_file;          /* if set, the bound port is written there */
	int http_port;            /* default 8429; 0: any free port; -1: no HTTP */
	char *http_bind;          /* NULL: bind */
	char *http_port_file;     /* if set, the bound HTTP port is written there */
	size_t http_max_body;     /* request body, also decompressed */
	size_t http_max_header;   /* request line and headers */
	int64_t http_header_ns;   /* a request's head must arrive within this */
	int64_t http_body_ns;     /* and its body within this of the head's end */
	unsigned http_durable;    /* 1: 204 after the fsync; 0: after the write */
	char *http_tls_cert;      /* PEM certificate chain: the HTTP port speaks HTTPS */
	char *http_tls_key;       /* PEM private key of http_tls_cert */
	int64_t tls_handshake_ns; /* a TLS handshake must end within this */
	unsigned tls_lp;          /* 1: the line-protocol port speaks TLS too */
	unsigned shards;          /* 0: one per core */
	unsigned malloc_arenas;   /* glibc malloc arenas at most; 0: glibc's default */
	char *token;              /* shared secret clients present with #!auth; NULL: none */
	uint32_t max_line;        /* longest line, bytes */
	unsigned max_conns;       /* open connections at once */
	unsigned max_conns_peer;  /* of them from one address, both ports (0: no cap) */
	size_t reply_bytes;       /* unsent replies kept per connection */
	size_t input_bytes;       /* unprocessed input kept per connection */
	int64_t idle_ns;          /* close connections silent this long; 0: never */
	int64_t auth_ns;          /* with a token: #!auth must come within this; 0: never */
	unsigned max_unauth;      /* with a token: connections not yet authenticated */
	int64_t sync_ns;          /* background group commit interval; 0: only on #!sync */
	int64_t full_wait_ns;     /* how long a write waits out a full store */
	int64_t grace_ns;         /* on SIGTERM: how long to drain connections */
	int64_t poll_ns;          /* after activity, poll this long before sleeping; 0: never */
	unsigned recv_bufs;       /* receive buffers per shard */
	unsigned recv_buf_bytes;
	int log_level; /* TALLY_LOG_* */
	char *io;      /* "auto" (default), "io_uring" or "epoll" */
	/* engine options */
	uint64_t memory_limit;
	uint64_t rollup_cache_bytes; /* tally_options.cache_bytes; 0: its default */
	unsigned max_keys;           /* tally_options.max_keys_per_table */
	unsigned prefault;           /* 1: tally_options.prefault */
	unsigned wal_damage_ro;      /* 1: tally_options.wal_damage_read_only */
	char *part_reads;            /* "mmap" or "pread"; NULL: the engine's default */
	unsigned part_reads_mode;    /* tally_options.part_reads, from part_reads */
	int64_t align_offset;
	char *table_keys;
	char *distributions; /* tally_options.distributions */
	unsigned n_levels;
	int64_t levels[TALLY_LEVELS_MAX];
	uint32_t flush_ms; /* memtable age before a flush; 0: the engine's 60 s */
	/* Tiering (tally_options tier_*). NULL or 0: the engine's default or
	 * its environment variable ($TALLY_S3_*, $AWS_*). */
	char *tier_bucket;
	char *tier_endpoint;
	char *tier_region;
	char *tier_prefix;
	char *tier_access_key;
	char *tier_secret_key;    /* a secret: never printed, wiped when freed */
	char *tier_session_token; /* a secret too */
	int64_t tier_after;       /* ns; 0: 7 days; negative ("off"): upload nothing */
	uint64_t tier_cache_bytes;
	uint32_t tier_timeout_ms;
	unsigned tier_retries;
	uint64_t tier_part_bytes; /* 0 or in [CONF_PART_MIN, CONF_PART_MAX] */
	/* JSON event mappings (json-map, repeatable; wire/jsonev.h), each
	 * checked when set; the default mapping is not among them. */
	char **json_maps;
	unsigned n_json_maps;
	uint64_t label_window; /* labelled batches: 0: the engine's 256 */
	int64_t label_expiry;  /* ns; 0: 7 days; negative ("never"): never */
	char *retention;       /* tally_options.retention; NULL: keep everything */
	/* Queries across nodes (fanserv.c, docs/cluster.md) */
	char *peers;             /* the other nodes, HOST:PORT,...; NULL: none */
	int64_t peer_timeout_ns; /* a fan-out's deadline */
	size_t fanout_max_bytes; /* a merged answer's bound */
	/* MQTT subscriber (mqtt.c, docs/mqtt.md); off unless mqtt_broker */
	char *mqtt_broker;       /* HOST:PORT */
	char *mqtt_topics;       /* topic filters, comma-separated; NULL: cameras/+/events */
	char *mqtt_client_id;    /* the session's id; default "tallyd" */
	char *mqtt_format;       /* "json" (default) or "lp" */
	char *mqtt_table;        /* JSON events: the json-map of this table; default traffic */
	unsigned mqtt_key_level; /* 1-based topic level that is the key; 0: none */
	char *mqtt_username;
	char *mqtt_password; /* a secret */
	int64_t mqtt_keepalive_ns;
	int64_t mqtt_session_expiry_ns;
	size_t mqtt_max_message; /* largest PUBLISH taken */
	/* The cameras' route (wire/httpq.c): its path ("{id}" the key; "off"),
	 * table, field and the table's key tag. NULL: /kvfv/{id}/avg-speed,
	 * traffic, speed, camera. */
	char *camera_route;
	char *camera_table;
	char *camera_field;
	char *camera_key;
	/* Kafka consumer (wire/kafka.c, docs/cluster.md); on when brokers is set. */
	char *kafka_brokers;       /* bootstrap.servers */
	char *kafka_topics;        /* comma-separated */
	char *kafka_group;         /* NULL: "tally" */
	char *kafka_client_id;     /* NULL: "tallyd" */
	char *kafka_format;        /* "lp" (NULL) or "json" */
	char *kafka_json_table;    /* the json-map table of JSON messages; NULL: traffic */
	char *kafka_dead_letter;   /* topic for messages with refused lines; NULL: none */
	char *kafka_key_tag;       /* the tag a message's key fills; NULL: none */
	unsigned kafka_consumers;  /* consumer threads; 0: one per shard */
	size_t kafka_batch_bytes;  /* a batch (one WAL record) is cut past this */
	int64_t kafka_handover_ns; /* a partition from another owner waits this long */
	/* kafka-option: "key=value" pairs passed to librdkafka as they are
	 * (SASL, TLS, timeouts); values may be secrets: never printed, wiped */
	char **kafka_options;
	unsigned n_kafka_options;
} srv_conf;

/* S3 refuses multipart parts under 5 MiB; the S3 client buffers at most
 * 512 MiB per part (storage/s3.h S3_PART_MIN, S3_PART_MAX). */
#define CONF_PART_MIN (UINT64_C(5) << 20)
#define CONF_PART_MAX (UINT64_C(512) << 20)

void conf_init(srv_conf *c);
/* Frees every string; secrets are overwritten first. */
void conf_free(srv_conf *c);

/* Overwrites and frees *s, then sets it NULL: for a secret that is no
 * longer needed (the engine copies the tiering credentials at open). */
void conf_wipe(char **s);

/* Reads argv (and the file named by --config, whose settings the flags
 * override), then the environment variables of the settings still unset
 * (the S3 ones: $TALLY_S3_BUCKET, $AWS_ACCESS_KEY_ID, ...). Returns 0, 1 when --help or --version
 * was printed (exit 0), or -1 after printing the error to stderr (exit 2). */
int conf_parse_args(srv_conf *c, int argc, char **argv);

/* Sets one setting by its name ("port", "max-line-bytes" or
 * "max_line_bytes"); where names the source in errors ("tallyd.conf:12").
 * Returns 0 or -1 after printing the error. */
int conf_set(srv_conf *c, const char *name, const char *value, const char *where);

/* Reads a config file: "name = value" lines, '#' comments. */
int conf_load_file(srv_conf *c, const char *path);

void conf_usage(void);

#endif
