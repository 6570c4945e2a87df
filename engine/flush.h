/*
 * flush.h — parts owned by shards: flushing memtables into them, loading
 * them at open, and the per-query scratch for reading them (internal).
 */
#ifndef TALLY_FLUSH_H
#define TALLY_FLUSH_H

#include "catalog.h"
#include "part.h"
#include "shard.h"

struct tally_db;

/* A live part as a shard holds it. Immutable; freed only under the shard
 * lock held for writing, so a reader holding it for reading may use it. */
typedef struct shard_part {
	part *p;
	uint64_t id;
	table_def *table;
	int64_t pstart, pend; /* the partition [pstart, pend) */
	uint32_t level, flags;
	col_def **defs; /* per part column: the table's column */
	struct tally_db *db;
	/* decoded rollup blocks, by rollup index; under db->rc_mu */
	part_bucket **rc;
	/* tiered (engine/tier.c): the object holding the whole part, and its
	 * xxh3; p is then the local stub. NULL: the part is local. */
	char *object;
	uint64_t object_sum;
} shard_part;

/* The part's column index holding def, or -1. */
int shard_part_col(const shard_part *sp, const col_def *def);

/* Opens parts/<id>.part (parts/<id>.stub when the manifest says the part
 * is tiered) and resolves its columns through the catalog. */
int shard_part_load(struct tally_db *db, uint64_t id, shard_part **out);
void shard_part_free(shard_part *sp);
/* Adds a part to the shard's list. Caller holds the lock for writing. */
int shard_add_part(shard *s, shard_part *sp);

/* Freezes and writes out every shard whose memtable asks for it (or all,
 * when force), then commits the manifest and trims the WALs. Runs on the
 * flusher thread or in tally_db_flush. */
int flush_run(struct tally_db *db, int force);

/* Decodes the rollup of (key, numeric column num, level) of a part into a
 * new buffer (*out, mem_free it; NULL when empty), through the decoded
 * rollup cache: a cached block costs one copy. */
int shard_part_rollup(shard_part *sp, const part_key *pk, uint32_t num, unsigned level,
		      part_scratch *ps, part_bucket **out, uint32_t *n);

/* Calls use(buckets, n, arg) with that rollup's buckets: a cached block
 * in place, under the cache's lock (use must be quick and must not call
 * back into the cache), else decoded (and cached) first. */
int shard_part_rollup_each(shard_part *sp, const part_key *pk, uint32_t num, unsigned level,
			   part_scratch *ps,
			   void (*use)(const part_bucket *b, uint32_t n, void *arg), void *arg);

/* Merges the buckets of that rollup with start in [from, to) into acc,
 * reading a cached block in place (under the cache's lock) rather than
 * copying it: the exact aggregate needs a sum, not the buckets. */
int shard_part_rollup_fold(shard_part *sp, const part_key *pk, uint32_t num, unsigned level,
			   part_scratch *ps, int64_t from, int64_t to, ragg *acc);

/* Blocks the decoded-rollup cache keeps ready while it grows. */
#define RC_READY 4

/* Fills the cache's pool of ready blocks (up to RC_READY, and no more
 * than the ring may still map). Runs on the flusher and prefault threads. */
void rc_prepare(struct tally_db *db);

/* Unsealed parts of one partition that trigger a merge (engine/merge.c). */
#define MERGE_FANIN 4

/* Runs the merge policy (engine/merge.c) until nothing is left to merge. */
int merge_run(struct tally_db *db);

/* Scratch buffers for reading parts, borrowed per query from the db. */
part_scratch *scratch_get(struct tally_db *db);
void scratch_put(struct tally_db *db, part_scratch *s);

#endif
