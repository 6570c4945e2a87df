/*
 * mqtt.h — tallyd as an MQTT subscriber (internal to wire/; docs/mqtt.md).
 *
 * One thread per server holds one session with the broker named by
 * mqtt-broker, subscribes to mqtt-topics with QoS 1, writes each message
 * through its own tally_writer, and acknowledges it once the group commit
 * has made it durable.
 */
#ifndef TALLY_MQTT_H
#define TALLY_MQTT_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef struct srv srv;

/* Counters of the subscriber, in #!stats and /metrics; all 0 when off. */
typedef struct mqtt_stats {
	_Atomic uint64_t connected; /* 1 while a session with the broker is up */
	_Atomic uint64_t connects;  /* sessions opened (CONNACK accepted) */
	_Atomic uint64_t connect_failures;
	_Atomic uint64_t messages;                /* PUBLISH packets received */
	_Atomic uint64_t events;                  /* events (lines) written from them */
	_Atomic uint64_t events_rejected;         /* events (lines) refused, logged */
	_Atomic uint64_t bad_messages;            /* messages with no event written */
	_Atomic uint64_t duplicates;              /* redeliveries recognised, not applied again */
	_Atomic uint64_t unlabelled_redeliveries; /* DUP without a label: applied again */
	_Atomic uint64_t acks;                    /* PUBACKs sent, each after its sync */
	_Atomic uint64_t full_waits;              /* messages that waited out a full store */
} mqtt_stats;

/* The counters by name, for #!stats (name) and /metrics (metric, type,
 * help): n entries. */
typedef struct mqtt_stat_def {
	const char *name, *metric, *type, *help;
	size_t off; /* of the counter in mqtt_stats */
} mqtt_stat_def;
extern const mqtt_stat_def mqtt_stat_defs[];
extern const size_t mqtt_n_stat_defs;
uint64_t mqtt_stat(const mqtt_stats *st, const mqtt_stat_def *d);

/* Starts the subscriber when mqtt-broker is set (0 when it is not): the
 * settings are checked here, so a bad one stops tallyd at start. */
int mqtt_start(srv *s);
/* Asks the subscriber to stop (a signal handler's thread may call it). */
void mqtt_stop(srv *s);
/* Waits for it to end: what it wrote is synced and acknowledged first. */
void mqtt_join(srv *s);

#endif
