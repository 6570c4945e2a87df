/*
 * retention.h — how long each table keeps its raw events and each rollup
 * level, the pass that lets expired data go, and the horizon queries
 * check (internal; docs/operations.md, "Retention").
 */
#ifndef TALLY_RETENTION_H
#define TALLY_RETENTION_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "catalog.h"
#include "tally.h"

struct shard_part;

/* What one table keeps: keep[0] raw events, keep[1 + l] rollup level l;
 * ns, 0 forever. Never shorter for a coarser class (checked). */
typedef struct ret_rule {
	char *table; /* NULL: the default rule, "*" */
	int64_t keep[1 + TALLY_LEVELS_MAX];
} ret_rule;

typedef struct ret_set {
	ret_rule *rules;
	uint32_t n;
	char *spec; /* as given, for stats and logs */
} ret_set;

typedef struct retention {
	pthread_mutex_t mu; /* rules and the figures */
	ret_set set;
	/* set.n, also readable without mu: a query on a database without
	 * rules (the default) takes no lock */
	_Atomic uint32_t n_rules;
	int64_t next_pass; /* the background's next pass, monotonic ns */
	/* since open */
	uint64_t passes;
	uint64_t parts_dropped;       /* whole parts gone (every class expired) */
	uint64_t parts_raw_gone;      /* parts cut to their rollups (raw expired) */
	uint64_t bytes_freed;         /* local part bytes those changes freed */
	uint64_t rows_dropped;        /* raw events no longer held */
	int64_t last_pass, last_drop; /* wall clock ns; 0: never */
} retention;

/* Parses spec (NULL or "": keep everything) against the levels of db and
 * installs it. TALLY_EINVAL naming the rule and item at fault; then the
 * rules in force stay. */
int retention_set(tally_db *db, const char *spec);
void retention_init(retention *r);
void retention_free(retention *r);

/* The earliest retained instant of table t's class (0 raw, 1 + l level
 * l) at wall clock now: every partition ending at or before it may be
 * gone. INT64_MIN when nothing of the class expires. */
int64_t retention_horizon(tally_db *db, const table_def *t, unsigned cls, int64_t now);

/* The queries' checks (engine/query.c): 0, or TALLY_EEXPIRED naming the
 * table, the class and the earliest retained instant. */
int retention_check_raw(tally_db *db, const table_def *t, int64_t from);
int retention_check_level(tally_db *db, const table_def *t, int li, int64_t from);
/* An exact aggregate over [from, to): raw edges must be retained, or the
 * range lie on windows of a retained level (docs/operations.md). */
int retention_check_agg(tally_db *db, const table_def *t, int64_t from, int64_t to);

/* A part whose raw columns were dropped by retention: a stub with no
 * object. Merges and tiering leave its partition alone. */
int retention_raw_gone(const struct shard_part *sp);
/* Makes raw reads of such a part fail with TALLY_EEXPIRED (partset.c,
 * at load). */
void retention_attach(struct shard_part *sp);

/* One pass over every shard at wall clock now (tally_db_retain, and the
 * background thread once a minute): parts of partitions past every class
 * leave, parts past their raw retention are cut to rollup-only stubs; per
 * shard one manifest change, then files and objects go. */
int retention_pass(tally_db *db, int64_t now);
/* The background's: a pass when one is due and rules exist. */
void retention_tick(tally_db *db);

void retention_stats(tally_db *db, tally_stats *out);

#endif
