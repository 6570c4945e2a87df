/*
 * kafka.h — tallyd's Kafka consumer (internal to wire/): topics consumed
 * exactly once, the offsets kept in the store as batch labels
 * (docs/cluster.md).
 */
#ifndef TALLY_KAFKA_H
#define TALLY_KAFKA_H

#include <stddef.h>
#include <stdint.h>

typedef struct srv srv;
typedef struct kafka kafka;

/* The label source of a topic's partition: "kafka:TOPIC/PARTITION". A
 * topic name is at most 249 bytes of [a-zA-Z0-9._-], so it fits the
 * 255-byte label; 0, or -1 when it does not fit cap. */
int kafka_source(char *dst, size_t cap, const char *topic, int32_t partition);

/* After the database opened (s->db): checks the settings and builds the
 * consumers, none running yet. Nothing to do (0) when kafka-brokers is
 * unset. A bad setting is logged and returns < 0. */
int kafka_open(srv *s);
/* Starts the consumer threads. */
int kafka_start(srv *s);
/* Asks the consumers to stop; returns at once. */
void kafka_stop(srv *s);
/* Waits for them: each writes what it holds, syncs, commits its offsets
 * and leaves the group (its partitions go to the other members). */
void kafka_join(srv *s);
void kafka_close(srv *s);

/* Every #!stats row of the consumer (zeros when it is off), through fn. */
typedef void kafka_row_fn(void *ctx, const char *name, uint64_t value);
void kafka_stats(srv *s, kafka_row_fn *fn, void *ctx);
/* The consumer's families of the /metrics exposition (metrics.c). */
int kafka_metrics(srv *s, char **buf, size_t *len, size_t *cap);

#endif
