/*
 * ingest.h — what tallyd's subscribers to other systems' streams share
 * (internal to wire/): the Kafka consumer (kafka.c) and the MQTT
 * subscriber (mqtt.c) each take messages on threads of their own, turn
 * each payload into line protocol, write it through their own writer, and
 * let the message go (a Kafka offset commit, an MQTT PUBACK) only once the
 * group commit made it durable.
 *
 * One ingest per thread: it owns that thread's writer and JSON decoder,
 * the buffer of the key-tag pass, and the rate limit of its warnings. It
 * is not shared between threads.
 */
#ifndef TALLY_INGEST_H
#define TALLY_INGEST_H

#include <stddef.h>
#include <stdint.h>

#include "jsonev.h"

typedef struct srv srv;
typedef struct tally_writer tally_writer;

#define INGEST_WHY_MAX (JSONEV_REASON_MAX + 160)
#define INGEST_KEY_MAX 1024 /* longest message key taken as a tag value */
#define INGEST_WHO_MAX 16

typedef struct ingest_spec {
	const char *who;           /* "kafka", "mqtt": opens every log line */
	const char *format;        /* "lp" (or "line-protocol") or "json" */
	const char *table;         /* with json: the table whose json-map maps events */
	const char *table_setting; /* the setting naming it, for errors */
	/* The tag a message's key fills in every event that lacks it; an
	 * event that has it with another value is refused. NULL: the key is
	 * only the default key of JSON events (an MQTT topic level). */
	const char *key_tag;
	const char *key_setting;
	unsigned log_burst;    /* warnings logged per log_period_ns, at least 1 */
	int64_t log_period_ns; /* the rest are counted, and the next line says how many */
} ingest_spec;

typedef struct ingest {
	srv *s;
	char who[INGEST_WHO_MAX];
	int json; /* payloads are JSON events, else line protocol */
	const jsonev_map *map;
	const char *key_tag;
	size_t key_tag_n;
	unsigned log_burst;
	int64_t log_period_ns;

	tally_writer *w;
	jsonev_dec *dec;

	char *kt; /* the key-tag pass's output */
	size_t kt_cap;

	int64_t log_at; /* start of the current log period, monotonic ns */
	unsigned logged;
	uint64_t unlogged;
} ingest;

/* A payload made line protocol: borrowed from the ingest (and its JSON
 * decoder) until the next ingest_decode. */
typedef struct ingest_text {
	const char *lp;
	size_t len;
	uint64_t lines;           /* physical lines in lp */
	uint64_t events;          /* events the payload held (json); lines (lp) */
	uint64_t rejected;        /* events or lines refused before the store saw them */
	uint64_t conflicts;       /* of them: the key tag's value was not the message key */
	int whole;                /* the payload was refused whole (too long for the decoder) */
	char why[INGEST_WHY_MAX]; /* the first refusal, "" when none */
	jsonev_result jr;         /* json: where each record came from */
} ingest_text;

/* Checks spec (logging what is wrong, returning < 0) and opens the writer
 * and the decoder on s->db. ingest_close undoes it, also after a failed
 * open. */
int ingest_open(ingest *g, srv *s, const ingest_spec *spec);
void ingest_close(ingest *g);

/* Makes payload[0, n) line protocol in *t: JSON events decoded with the
 * json-map (key[0, key_n), when given, the key of events that name none),
 * then, with a key tag and a key, the key-tag pass: lines that lack the
 * tag get it (as their first tag, so a new table takes it as its key
 * tag), lines whose value differs are blanked (their line numbers stay)
 * and counted in t->conflicts. 0, or -ENOMEM. */
int ingest_decode(ingest *g, const char *payload, size_t n, const char *key, size_t key_n,
		  int64_t now_ns, ingest_text *t);

/* The event (json) or line (lp), 1-based, of physical line `line` of t. */
uint64_t ingest_event_of_line(const ingest *g, const ingest_text *t, uint64_t line);

/* Logs a warning "WHO: ...", at most log_burst per log period; the first
 * line of a later period says how many were not logged. */
void ingest_warn(ingest *g, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Asks the group commit to cover everything written so far: its ticket. */
uint64_t ingest_sync_ask(ingest *g);
/* Whether ticket is served: 1 not yet (only when !wait; with wait, it
 * waits), 0 durable, -1 not known durable (the sync failed: why says). */
int ingest_synced(ingest *g, uint64_t ticket, int wait, char *why, size_t cap);

#endif
