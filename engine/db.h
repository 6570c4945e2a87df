/*
 * db.h — the database and writer handles behind tally.h (internal).
 */
#ifndef TALLY_DB_H
#define TALLY_DB_H

#include <stdatomic.h>

#include "batch.h"
#include "catalog.h"
#include "log.h"
#include "lp.h"
#include "rollup.h"
#include "manifest.h"
#include "part.h"
#include "shard.h"

#define DB_SCRATCH_MAX 16

struct tally_db {
	char *dir;
	int lock_fd;
	tally_options opt;
	levels L;
	log_sink log;
	catalog cat;
	shard **shards;
	unsigned n_shards;
	_Atomic unsigned next_shard;
	_Atomic uint64_t rejected_lines;
	int64_t partition_width;
	/* parts: the committed manifest, changed by one flush or merge at a
	 * time under man_mu */
	pthread_mutex_t man_mu;
	manifest man;
	uint64_t flushes;
	uint64_t merges;
	/* per-query scratch for reading parts, kept for reuse */
	pthread_mutex_t scratch_mu;
	part_scratch *scratch[DB_SCRATCH_MAX];
	unsigned n_scratch;
	/* the background flusher */
	pthread_t flusher;
	int flusher_started;
	pthread_t prefaulter; /* opt.prefault: memtable memory ahead of writers */
	int prefaulter_started;
	_Atomic int prefault_stop;
	_Atomic uint64_t prefault_pending; /* bytes */
	pthread_mutex_t bg_mu;
	pthread_cond_t bg_cond;
	int bg_stop;
	int bg_kick;
	/* decoded rollup blocks of parts (flush.c): entries laid one after
	 * another in a ring of populated 2 MiB blocks, evicted oldest first
	 * (past the byte budget, or a whole block when the ring comes round
	 * to it) */
	pthread_mutex_t rc_mu;
	uint64_t rc_bytes, rc_limit;
	struct rc_ent {
		struct shard_part *sp; /* NULL: dropped with its part */
		uint32_t idx, bytes;
		uint32_t blk; /* the block it lies in */
	} * rc_ring;
	uint32_t rc_head, rc_len, rc_cap;
	uint64_t rc_hits, rc_misses;
	arena_pool rc_pool; /* blocks made ready off the query path (rc_prepare) */
	char **rc_blk;      /* rc_nblk_max slots */
	uint32_t rc_nblk, rc_nblk_max, rc_cur; /* mapped, most, filling */
	size_t rc_off;                         /* bytes used in the filling block */
	int rc_refill;                         /* a ready block was taken */
	/* tests: TALLY_CRASH_AT names a step where the process kills itself */
	char *crash_at;
	/* tiering to object storage (engine/tier.c); NULL when off */
	struct tier *tier;
	/* #!keys answers being built or read (engine/query.c), bytes */
	_Atomic uint64_t query_bytes;
};

/* Kills the process with SIGKILL if TALLY_CRASH_AT named this step: the
 * crash tests' way to stop a flush or merge between two of its writes. */
void db_crash_point(const tally_db *db, const char *step);

#define WT_LAYOUT 32 /* tag and field positions remembered per table */

typedef struct wtable {
	table_def *def;
	strmap cols; /* name -> col_def*, this writer's cache of the catalog */
	/* The previous line's columns by position: lines of one table mostly
	 * repeat their layout, so a name compare replaces a hash lookup. */
	col_def *tag_at[WT_LAYOUT];
	col_def *field_at[WT_LAYOUT];
} wtable;

struct tally_writer {
	tally_db *db;
	shard *sh;
	lp_parser ps;
	lp_line *line;
	wbatch batch;
	strmap tables; /* name -> wtable* */
	wtable *last;  /* the table of the previous line */
	wtable **wtables;
	uint32_t n_wtables, cap_wtables;
	char *enc;
	size_t enc_cap;
};

/* Total bytes the memory limit bounds: all shards' memtables and rollups,
 * the per-key structures that outlive them (table key sets, shards' key
 * states) and all-keys answers being held. */
uint64_t db_memory(tally_db *db);
/* Of those, the per-key structures that outlive memtables. */
uint64_t db_key_memory(tally_db *db);

/* Wakes the background flusher now (it also wakes every second). */
void db_kick_flusher(tally_db *db);

#endif
