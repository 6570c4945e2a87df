/*
 * shard.h — one write shard: memtable, rollups and WAL (internal).
 *
 * The memtable keeps each key's rows in its own chain of column chunks
 * (a "series"), so a raw read of one key touches only that key's chunks and
 * skips those whose [tmin, tmax] misses the range. Rollups hang off the same
 * series, one rcol per numeric column.
 *
 * Locking: shard->lock (a writer-preferring rwlock) is held for writing
 * while a batch goes into the WAL and the memtable, and for reading by
 * queries. Nothing here is shared between shards, so writers on different
 * shards never meet.
 */
#ifndef TALLY_SHARD_H
#define TALLY_SHARD_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "batch.h"
#include "catalog.h"
#include "rollup.h"
#include "strmap.h"
#include "wal.h"

#define CHUNK_ROWS_MIN 16
#define CHUNK_ROWS_MAX 4096

typedef struct chunk_col {
	uint64_t *present; /* NULL: no value in this chunk */
	bval *vals;
} chunk_col;

typedef struct chunk {
	int64_t tmin, tmax;
	uint32_t n, cap;
	uint32_t n_cols; /* slots in cols */
	int64_t *ts;
	chunk_col *cols; /* by column id */
	char *arena;     /* string values */
	size_t arena_len, arena_cap;
} chunk;

typedef struct series {
	char *key;
	uint32_t key_len;
	chunk **chunks;
	uint32_t n_chunks, cap_chunks;
	rcol **rcols; /* by column id; NULL for non-numeric or unseen */
	uint32_t n_rcols;
	int64_t hwm; /* newest event time */
	uint64_t rows;
} series;

typedef struct stable {
	table_def *def;
	strmap by_key;
	series **list;
	uint32_t n, cap;
} stable;

typedef struct shard {
	pthread_rwlock_t lock;
	unsigned id;
	wal *wal;
	const levels *L;
	int64_t late_threshold;
	stable **tables; /* by table id */
	uint32_t cap_tables;
	_Atomic uint64_t mem_bytes;    /* memtable rows */
	_Atomic uint64_t rollup_bytes; /* buckets and index structures */
	uint64_t events, late_events;
	int failed; /* sticky: set when WAL and memtable may disagree */
	series **key_scratch;
	uint32_t cap_key_scratch;
} shard;

int shard_create(unsigned id, const levels *L, int64_t late_threshold, shard **out);
void shard_destroy(shard *s);

/* Applies a staged batch to memtable and rollups. Caller holds the lock
 * for writing. A failure fails the shard (its WAL already holds the batch). */
int shard_apply(shard *s, const wbatch *b);

/* The series of (table, key), or NULL. Caller holds the lock. */
series *shard_series(const shard *s, const table_def *t, const char *key, uint32_t len);
/* The shard's view of a table, or NULL. Caller holds the lock. */
stable *shard_table(const shard *s, const table_def *t);

static inline int chunk_has(const chunk_col *c, uint32_t i)
{
	return c->present && ((c->present[i >> 6] >> (i & 63)) & 1);
}

#endif
