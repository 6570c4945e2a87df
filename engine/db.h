/*
 * db.h — the database and writer handles behind tally.h (internal).
 */
#ifndef TALLY_DB_H
#define TALLY_DB_H

#include <stdatomic.h>

#include "batch.h"
#include "catalog.h"
#include "idem.h"
#include "log.h"
#include "lp.h"
#include "rollup.h"
#include "manifest.h"
#include "part.h"
#include "rcache.h"
#include "retention.h"
#include "shard.h"

#define DB_SCRATCH_MAX 16

struct tally_db {
	char *dir;
	int lock_fd;
	tally_options opt;
	levels L;
	log_sink log;
	catalog cat;
	struct dist_conf *dists; /* tally_options.distributions, parsed */
	shard **shards;
	unsigned n_shards;
	_Atomic unsigned next_shard;
	_Atomic uint64_t rejected_lines;
	int64_t partition_width;
	/* parts: the committed manifest, changed only by partset_commit
	 * (engine/partset.c), under man_mu */
	pthread_mutex_t man_mu;
	manifest man;
	uint64_t flushes;
	uint64_t merges;
	/* deletes of events since open (engine/delete.c), under man_mu */
	uint64_t deletes, delete_rows, delete_bytes;
	/* per-query scratch for reading parts, kept for reuse */
	pthread_mutex_t scratch_mu;
	part_scratch *scratch[DB_SCRATCH_MAX];
	unsigned n_scratch;
	/* the background flusher */
	pthread_t flusher;
	int flusher_started;
	/* opened read-only (opt.wal_damage_read_only and a damaged WAL):
	 * no flush, merge or tiering, every write and sync refused */
	int read_only;
	pthread_t prefaulter; /* opt.prefault: memtable memory ahead of writers */
	int prefaulter_started;
	_Atomic int prefault_stop;
	_Atomic uint64_t prefault_pending; /* bytes */
	pthread_mutex_t bg_mu;
	pthread_cond_t bg_cond;
	int bg_stop;
	int bg_kick;
	/* decoded rollup blocks of parts (engine/rcache.c) */
	rcache rcache;
	/* test builds: TALLY_CRASH_AT names a step where the process kills
	 * itself. The field is in every build, so that objects compiled with
	 * and without TALLY_TEST_HOOKS agree on this struct's layout. */
	char *crash_at;
	/* tiering to object storage (engine/tier.c); NULL when off */
	struct tier *tier;
	/* #!keys answers being built or read (engine/query.c) and open
	 * scans' windows (engine/scan.c), bytes */
	_Atomic uint64_t query_bytes;
	_Atomic uint64_t scan_rows; /* rows scans decoded since open */
	/* what each labelled source applied (engine/idem.c) */
	idem idem;
	/* retention rules and what they dropped (engine/retention.c) */
	retention ret;
};

#ifdef TALLY_TEST_HOOKS
/* Kills the process with SIGKILL if TALLY_CRASH_AT named this step: the
 * crash tests' way to stop a flush or merge between two of its writes.
 * Only the test build of the engine has it (engine/meson.build). */
void db_crash_point(const tally_db *db, const char *step);
#else
/* libtally and tallyd have no crash points and never read TALLY_CRASH_AT:
 * a macro, so that not even an empty function (which an -O0 build keeps)
 * is left in them. */
#define db_crash_point(db, step) ((void)(db), (void)(step))
#endif

#define STAGE_LAYOUT 32 /* tag and field positions remembered per table */

typedef struct stage_table {
	table_def *def;
	strmap cols; /* name -> col_def*, this writer's cache of the catalog */
	/* The previous line's columns by position: lines of one table mostly
	 * repeat their layout, so a name compare replaces a hash lookup. */
	col_def *tag_at[STAGE_LAYOUT];
	col_def *field_at[STAGE_LAYOUT];
} stage_table;

struct tally_writer {
	tally_db *db;
	shard *sh;
	lp_parser ps;
	lp_line *line;
	stage_batch batch;
	strmap tables;     /* name -> stage_table* */
	stage_table *last; /* the table of the previous line */
	stage_table **stage_tables;
	uint32_t n_stage_tables, cap_stage_tables;
	char *enc;
	size_t enc_cap;
	int duplicate; /* the last labelled commit found its label applied */
};

/* Total bytes the memory limit bounds: all shards' memtables and rollups,
 * the per-key structures that outlive them (table key sets, shards' key
 * states) and all-keys answers being held. */
uint64_t db_memory(tally_db *db);
/* Of those, the per-key structures that outlive memtables. */
uint64_t db_key_memory(tally_db *db);

/* Saves the labels table (engine/idem.c) once every label it holds is in
 * a durable WAL record. Caller holds man_mu (a flush, before its commit
 * lets the WAL go). */
int db_labels_save(tally_db *db);

/* Wakes the background flusher now (it also wakes every second). */
void db_kick_flusher(tally_db *db);

#endif
