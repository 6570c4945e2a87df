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

#include "arena.h"
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
	const char *key; /* the catalog's copy */
	uint32_t key_len;
	chunk **chunks;
	uint32_t n_chunks, cap_chunks;
	rcol **rcols; /* by column id; NULL for non-numeric or unseen */
	uint32_t n_rcols;
	struct keystate *ks; /* the key's state across memtables */
	uint64_t rows;
} series;

typedef struct stable {
	table_def *def;
	strmap by_key;
	series **list;
	uint32_t n, cap;
} stable;

/*
 * A memtable: the rows and rollups of the events applied since it was
 * started. The shard writes into its active memtable; a flush freezes it
 * (no more writes) and turns it into parts, while queries go on reading
 * it until the parts replace it in one step under the shard lock. So every
 * event is, at any moment, in exactly one memtable or one part.
 */
typedef struct memtable {
	arena ar;        /* chunks' rows: freed all at once with the memtable */
	rpool rp;        /* rollup bucket arrays, from ar */
	stable **tables; /* by table id */
	uint32_t cap_tables;
	uint64_t mem_bytes;    /* rows */
	uint64_t rollup_bytes; /* buckets and index structures */
	uint64_t events;
	uint64_t last_seq; /* highest WAL seq applied (frozen memtables) */
	int64_t started_ns;
	int64_t tmin, tmax; /* event time range */
	/* holders besides the shard (0: the shard alone). A scan pins the
	 * memtables it reads (engine/scan.c); memtable_free drops one holder
	 * and frees at the last. */
	_Atomic uint32_t pins;
	/* set when its shard let it go (a flush) while a scan may still pin
	 * it: its bytes count there (db->query_bytes, under memory_limit)
	 * until the last holder frees it */
	_Atomic uint64_t *retired_at;
	uint64_t retired_bytes;
} memtable;

/* What a shard remembers of a key across memtables: its newest event time,
 * for counting late events. */
typedef struct keystate keystate;
struct keystate {
	const char *key; /* the catalog's copy */
	uint32_t len;
	int64_t hwm;
};

struct shard_part; /* a part owned by the shard: engine/partset.h */

#define SHARD_FROZEN_MAX 4

typedef struct shard {
	pthread_rwlock_t lock;
	unsigned id;
	wal *wal;
	const levels *L;
	int64_t late_threshold;
	memtable *active;
	memtable *frozen[SHARD_FROZEN_MAX]; /* oldest first */
	unsigned n_frozen;
	/* live parts; changed only by partset_commit (engine/partset.c) under
	 * db->man_mu and this lock held for writing, so either lock reads it */
	struct shard_part **parts;
	uint32_t n_parts, cap_parts;
	strmap *keystates; /* by table id */
	uint32_t cap_keystates;
	_Atomic uint64_t mem_bytes;    /* all memtables' rows */
	_Atomic uint64_t rollup_bytes; /* all memtables' rollups */
	_Atomic uint64_t key_bytes;    /* key states: per key, for good */
	uint64_t flushed_events;       /* events now in parts */
	uint64_t late_events;
	int failed; /* sticky: set when WAL and memtable may disagree */
	series **key_scratch;
	uint32_t cap_key_scratch;
	/* apply_table's row order (rows grouped by key) and key counts */
	uint32_t *row_order, *key_count;
	uint32_t cap_row_order, cap_key_count;
	arena_pool pool; /* blocks of dead memtables, for the next ones */
} shard;

int shard_create(unsigned id, const levels *L, int64_t late_threshold, uint64_t memtable_bytes,
		 shard **out);
void shard_destroy(shard *s);

/* Applies a staged batch to memtable and rollups. Caller holds the lock
 * for writing. A failure fails the shard (its WAL already holds the batch). */
int shard_apply(shard *s, const stage_batch *b);

/* The series of (table, key) in memtable m, or NULL. Caller holds the
 * shard lock. */
series *mem_series(const memtable *m, const table_def *t, const char *key, uint32_t len);
/* Memtable m's view of a table, or NULL. */
stable *mem_table(const memtable *m, const table_def *t);

/* The shard's memtables for reading, newest last: frozen ones, then the
 * active one. Returns the count (at most SHARD_FROZEN_MAX + 1). */
unsigned shard_memtables(const shard *s, const memtable **out);

memtable *memtable_new(shard *s);
/* Drops one holder of m (the shard's, or a scan's pin); the last frees
 * it. Frozen memtables are immutable, so a pinned one that left its shard
 * is read without the shard lock. */
void memtable_free(memtable *m, const levels *L);

/* Freezes the active memtable and starts a new one. Caller holds the lock
 * for writing. TALLY_ELIMIT when SHARD_FROZEN_MAX are already frozen. */
int shard_freeze(shard *s);
uint64_t shard_events(const shard *s); /* parts + memtables */

static inline int chunk_has(const chunk_col *c, uint32_t i)
{
	return c->present && ((c->present[i >> 6] >> (i & 63)) & 1);
}

/* A numeric column's value as the rollups (and distributions) take it. */
static inline double bval_num(enum tally_type t, bval v)
{
	switch (t) {
	case TALLY_T_I64: return (double)v.i64;
	case TALLY_T_U64: return (double)v.u64;
	case TALLY_T_BOOL: return v.u64 ? 1.0 : 0.0;
	default: return v.f64;
	}
}

#endif
