/*
 * flush.h — flushing memtables into parts, merging parts, and the
 * per-query scratch for reading them (internal). The parts themselves and
 * how the live set changes: partset.h; their decoded-rollup cache:
 * rcache.h.
 */
#ifndef TALLY_FLUSH_H
#define TALLY_FLUSH_H

#include "catalog.h"
#include "part.h"
#include "partset.h"
#include "rcache.h"
#include "shard.h"

struct tally_db;

/* Freezes and writes out every shard whose memtable asks for it (or all,
 * when force), then commits the manifest and trims the WALs. Runs on the
 * flusher thread or in tally_db_flush. */
int flush_run(struct tally_db *db, int force);

/* Unsealed parts of one partition that trigger a merge (engine/merge.c). */
#define MERGE_FANIN 4

/* Runs the merge policy (engine/merge.c) until nothing is left to merge. */
int merge_run(struct tally_db *db);

/* Rows a rewrite leaves out: those of key (NULL: of every key) with ts in
 * [from, to). rows gets how many were left out. */
typedef struct merge_cut {
	const char *key;
	uint32_t klen;
	int64_t from, to;
	uint64_t rows;
	uint64_t copied; /* bytes of the new parts copied from the old ones */
} merge_cut;

/* Writes part in of shard s again without the rows cut names, rollups of
 * the keys that lost rows computed again from the rows that remain
 * (engine/delete.c); the blocks the cut leaves alone are copied as they
 * are (part_writer_copy_key), their bytes added to cut->copied. Commits
 * nothing: *out gets the new part, loaded, and *rec its manifest record
 * (same partition, level and flags as in), or *out NULL when no row remains or none was cut
 * (nothing is left on disk then). *bytes gets the new file's size. Caller holds man_mu. */
int merge_rewrite(struct tally_db *db, shard *s, shard_part *in, merge_cut *cut, shard_part **out,
		  manifest_part *rec, uint64_t *bytes);

/* 1 when part sp derives its finest distributions from its raw events
 * (dist_level_derived: a basic block where the next level's is a
 * distribution), 0 when not, or a negative code. */
int merge_needs_materialise(struct tally_db *db, shard_part *sp);

/* Writes part in of shard s again with its finest distributions written
 * (kind 3 blocks computed from its rows), everything else as it is: what
 * a part becomes before it loses its raw events (retention, tiering).
 * Commits nothing: *out and *rec as merge_rewrite's, *bytes the new
 * file's size. Caller holds man_mu. */
int merge_materialise(struct tally_db *db, shard *s, shard_part *in, shard_part **out,
		      manifest_part *rec, uint64_t *bytes);

/* Scratch buffers for reading parts, borrowed per query from the db. */
part_scratch *scratch_get(struct tally_db *db);
void scratch_put(struct tally_db *db, part_scratch *s);

#endif
