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
#include "shard.h"

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
};

typedef struct wtable {
	table_def *def;
	strmap cols; /* name -> col_def*, this writer's cache of the catalog */
} wtable;

struct tally_writer {
	tally_db *db;
	shard *sh;
	lp_parser ps;
	lp_line *line;
	wbatch batch;
	strmap tables; /* name -> wtable* */
	wtable **wtables;
	uint32_t n_wtables, cap_wtables;
	char *enc;
	size_t enc_cap;
};

/* Total bytes held by all shards' memtables and rollups. */
uint64_t db_memory(const tally_db *db);

#endif
