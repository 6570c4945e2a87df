/*
 * rcache.h — the decoded-rollup cache: parts' rollup blocks decoded once
 * and read in place by queries (internal).
 *
 * One cache per database, bounded by cache_bytes. Entries lie one after
 * another in a ring of 2 MiB blocks and are evicted oldest first; each
 * part keeps pointers to its cached blocks (shard_part.rc), all under the
 * cache's mutex. Why the ring, and the figures: engine/rcache.c.
 */
#ifndef TALLY_RCACHE_H
#define TALLY_RCACHE_H

#include <pthread.h>
#include <stdint.h>

#include "arena.h"
#include "part.h"
#include "partset.h"
#include "rollup.h"

struct tally_db;
struct tally_stats;

/* Blocks the decoded-rollup cache keeps ready while it grows. */
#define RC_READY 4
/* An entry's block after the block was filled again (the entry was
 * dropped with its part before). */
#define RC_NOBLK UINT32_MAX

/* A cached rollup block: rollup idx of part sp, lying in block blk. */
struct rc_ent {
	struct shard_part *sp; /* NULL: dropped with its part */
	uint32_t idx, bytes;
	uint32_t blk;
};

typedef struct rcache {
	pthread_mutex_t mu;
	uint64_t bytes, limit; /* held, budget (0: no cache) */
	struct rc_ent *ring;   /* entries, oldest at head */
	uint32_t head, len, cap;
	uint64_t hits, misses;
	arena_pool pool;              /* blocks made ready off the query path (rc_prepare) */
	char **blk;                   /* nblk_max slots */
	uint32_t *ents, *live;        /* per block: its ring entries, of which live */
	uint32_t nblk, nblk_max, cur; /* mapped, most, filling */
	size_t off;                   /* bytes used in the filling block */
	int refill;                   /* a ready block was taken */
} rcache;

/* An empty cache; set limit before use. rc_free(an initialised cache) is
 * always safe. */
void rc_init(rcache *c);
void rc_free(rcache *c);

/* Fills the cache's pool of ready blocks (up to RC_READY, and no more
 * than the ring may still map). Runs on the flusher and prefault threads. */
void rc_prepare(struct tally_db *db);

/* Forgets the entries of a part being freed (their bytes come back when
 * the ring reuses their block). */
void rc_forget(shard_part *sp);

/* The cache's bytes, mapped bytes, hits and misses into *out. */
void rc_stats(rcache *c, struct tally_stats *out);

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

#endif
