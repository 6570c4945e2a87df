/*
 * rcache.c — the decoded-rollup cache: parts' rollup blocks decoded once,
 * then read in place by queries under the cache's lock.
 *
 * The one idea: entries are laid one after another in a ring of 2 MiB
 * blocks, faulted in when mapped, and evicted in the order they were laid,
 * so coming round to a block means evicting the oldest entries, the ones
 * in it; no entry is ever copied into fresh (slow to touch) memory.
 */
#include "rcache.h"

#include <errno.h>
#include <string.h>

#include "aggkind.h"
#include "db.h"
#include "err.h"
#include "mem.h"

void rc_init(rcache *c)
{
	memset(c, 0, sizeof *c);
	pthread_mutex_init(&c->mu, NULL);
	arena_pool_init(&c->pool, RC_READY);
}

void rc_free(rcache *c)
{
	mem_free(c->ring);
	for (uint32_t i = 0; i < c->nblk; i++)
		arena_block_free(c->blk[i]);
	mem_free(c->blk);
	mem_free(c->ents);
	mem_free(c->live);
	arena_pool_free(&c->pool);
	pthread_mutex_destroy(&c->mu);
}

void rc_forget(shard_part *sp)
{
	if (!sp->rc)
		return;
	rcache *c = &sp->db->rcache;
	pthread_mutex_lock(&c->mu);
	/* forget the ring's entries of this part (their bytes come back when
	 * the ring reuses their block); eviction skips them */
	for (uint32_t i = 0; i < c->len; i++) {
		struct rc_ent *e = &c->ring[(c->head + i) % c->cap];
		if (e->sp == sp) {
			c->bytes -= e->bytes;
			c->live[e->blk]--;
			e->sp = NULL;
		}
	}
	pthread_mutex_unlock(&c->mu);
	mem_free(sp->rc);
	sp->rc = NULL;
}

void rc_stats(rcache *c, struct tally_stats *out)
{
	pthread_mutex_lock(&c->mu);
	out->cache_bytes = c->bytes;
	out->cache_mapped_bytes =
		((uint64_t)c->nblk + arena_pool_count(&c->pool)) * (uint64_t)ARENA_BLOCK;
	out->cache_hits = c->hits;
	out->cache_misses = c->misses;
	pthread_mutex_unlock(&c->mu);
}

/*
 * The cache's memory. Entries are laid one after another in 2 MiB blocks,
 * each faulted in when mapped (arena_block_new): on this project's VM the
 * first touch of a fresh page costs about 13 us, and copying a 288-bucket
 * rollup (13.8 KiB) into malloc'ed memory, always fresh while the cache
 * grows, was 45 us of a 65 us cold series query; into a populated block
 * it is 0.6 us. Eviction is oldest first, the order entries are laid in,
 * so when every block is mapped and the filling one is full, the next
 * block in the ring holds the oldest entries: they are evicted and the
 * block is filled again. An entry dropped earlier (evicted for the
 * budget, or with its part) leaves a hole until then; but a block all of
 * whose entries were dropped (the parts a merge replaced) is filled again
 * before another block is mapped, so the ring grows only with what it
 * holds live, not with the parts merges retire. Memory: the budget
 * rounded down to whole blocks, at least one, and up to RC_READY blocks
 * made ready ahead (tally_stats.cache_mapped_bytes).
 *
 * Each block's entries are one run of the ring (a block is filled, from
 * its start, before another is), so the oldest block is the head
 * entry's, and its entries lead the ring.
 *
 * A block is made ready off the query path: mapping and faulting one in
 * took about 1.6 ms a block in bench_storage after its ingest (the kernel
 * compacting memory for the huge page), some 10 us a cold entry. So the
 * flusher thread keeps RC_READY blocks in its pool while the ring is still
 * growing (rc_prepare), and a query maps one itself only when the pool
 * is empty.
 */

/* The most blocks the ring maps: its budget in whole blocks, at least one. */
static uint32_t rc_blocks_most(const rcache *c)
{
	uint64_t most = c->limit / ARENA_BLOCK;
	return most < 1 ? 1 : most > UINT32_MAX ? UINT32_MAX : (uint32_t)most;
}

void rc_prepare(tally_db *db)
{
	rcache *c = &db->rcache;
	if (!c->limit)
		return;
	for (;;) {
		pthread_mutex_lock(&c->mu);
		/* blocks the ring may still map: until their budget is mapped */
		uint32_t left = c->blk ? c->nblk_max - c->nblk : rc_blocks_most(c);
		pthread_mutex_unlock(&c->mu);
		uint32_t ready = arena_pool_count(&c->pool);
		if (ready >= RC_READY || ready >= left || !arena_pool_prefill_one(&c->pool))
			return;
	}
}

/* Drops the oldest entry. Caller holds c->mu. */
static void rc_evict_one(rcache *c)
{
	struct rc_ent *e = &c->ring[c->head];
	if (e->sp) {
		e->sp->rc[e->idx] = NULL;
		c->bytes -= e->bytes;
		c->live[e->blk]--;
	}
	if (e->blk != RC_NOBLK)
		c->ents[e->blk]--;
	c->head = (c->head + 1) % c->cap;
	c->len--;
}

/* A block other than the filling one with no live entry, or UINT32_MAX.
 * Its dropped entries, if any are left in the ring, stop naming it. */
static uint32_t rc_dead_block(rcache *c)
{
	for (uint32_t b = 0; b < c->nblk; b++) {
		if (b == c->cur || c->live[b])
			continue;
		for (uint32_t i = 0; c->ents[b] && i < c->len; i++) {
			struct rc_ent *e = &c->ring[(c->head + i) % c->cap];
			if (e->blk == b) {
				e->blk = RC_NOBLK;
				c->ents[b]--;
			}
		}
		return b;
	}
	return UINT32_MAX;
}

/* Drops the oldest entries until the cache fits its budget. */
static void rc_evict(rcache *c)
{
	while (c->len && (c->bytes > c->limit || c->len == c->cap))
		rc_evict_one(c);
}

/* Room for n bytes (16-byte multiple, at most a block) in the filling
 * block, else in the next one: a new block while fewer than the most are
 * mapped, else the ring's next, emptied of its (oldest) entries. Sets
 * *blk; NULL when no block can be had. Caller holds c->mu. */
static void *rc_alloc(rcache *c, size_t n, uint32_t *blk)
{
	if (c->nblk && c->off + n <= ARENA_BLOCK) {
		*blk = c->cur;
		void *p = c->blk[c->cur] + c->off;
		c->off += n;
		return p;
	}
	if (!c->blk) {
		uint32_t most = rc_blocks_most(c);
		c->blk = mem_calloc(most, sizeof *c->blk);
		c->ents = mem_calloc(most, sizeof *c->ents);
		c->live = mem_calloc(most, sizeof *c->live);
		if (!c->blk || !c->ents || !c->live) {
			mem_free(c->blk);
			mem_free(c->ents);
			mem_free(c->live);
			c->blk = NULL;
			c->ents = c->live = NULL;
			return NULL;
		}
		c->nblk_max = most;
	}
	/* a block whose entries all left with their parts, before a new one */
	uint32_t next = c->nblk ? rc_dead_block(c) : UINT32_MAX;
	if (next != UINT32_MAX) {
		c->cur = next;
		c->off = n;
		*blk = next;
		return c->blk[next];
	}
	char *b = NULL;
	if (c->nblk < c->nblk_max) {
		if ((b = arena_pool_take(&c->pool)))
			c->refill = 1; /* the caller wakes the flusher to make another */
		else
			b = arena_block_new();
	}
	if (b) {
		next = c->nblk;
		c->blk[c->nblk++] = b;
	} else {
		if (!c->nblk)
			return NULL;
		/* All mapped (or out of memory for another: the ring stays this
		 * size): the oldest block, the head entry's, is emptied of its
		 * entries, which lead the ring. */
		c->nblk_max = c->nblk;
		while (c->len && c->ring[c->head].blk == RC_NOBLK)
			rc_evict_one(c);
		next = c->len ? c->ring[c->head].blk : (c->cur + 1) % c->nblk;
		while (c->len && (c->ring[c->head].blk == next || c->ring[c->head].blk == RC_NOBLK))
			rc_evict_one(c);
	}
	c->cur = next;
	c->off = n;
	*blk = next;
	return c->blk[next];
}

/* The rollup's index in the part, and its bucket count (0: none). */
static uint32_t rollup_idx(const shard_part *sp, const part_key *pk, uint32_t num, unsigned level,
			   uint32_t *nb)
{
	const part *p = sp->p;
	uint32_t idx = pk->first_rollup + num * p->info.n_levels + level;
	*nb = p->rollups[idx].n_buckets;
	return idx;
}

/* Calls use(cached buckets, arg) under the cache's lock and returns 1 when
 * the block is cached; counts the hit or the miss. */
static int cache_use(shard_part *sp, uint32_t idx, uint32_t nb,
		     void (*use)(const part_bucket *b, uint32_t n, void *arg), void *arg)
{
	rcache *c = &sp->db->rcache;
	pthread_mutex_lock(&c->mu);
	int hit = sp->rc && sp->rc[idx];
	if (hit) {
		use(sp->rc[idx], nb, arg);
		c->hits++;
	} else {
		c->misses++;
	}
	pthread_mutex_unlock(&c->mu);
	return hit;
}

static void copy_out(const part_bucket *b, uint32_t n, void *arg)
{
	memcpy(arg, b, (size_t)n * sizeof *b);
}

int shard_part_rollup(shard_part *sp, const part_key *pk, uint32_t num, unsigned level,
		      part_scratch *ps, part_bucket **out, uint32_t *n)
{
	tally_db *db = sp->db;
	rcache *c = &db->rcache;
	const part *p = sp->p;
	uint32_t nb, idx = rollup_idx(sp, pk, num, level, &nb);
	*out = NULL;
	*n = 0;
	if (!nb)
		return 0;
	size_t bytes = (size_t)nb * sizeof(part_bucket);
	part_bucket *b = mem_alloc(bytes);
	if (!b)
		return err_set(-ENOMEM, "out of memory");
	if (cache_use(sp, idx, nb, copy_out, b)) {
		*out = b;
		*n = nb;
		return 0;
	}
	uint32_t got;
	int rc = agg_read_rollup(p, pk, num, level, ps, &agg_basic, b, nb, &got);
	if (rc) {
		mem_free(b);
		return rc;
	}
	*out = b;
	*n = got;
	size_t room = (bytes + 15) & ~(size_t)15;
	if (!c->limit || room > c->limit / 4 || room > ARENA_BLOCK / 4)
		return 0;
	/* the cache is an optimisation: without memory, go on without it */
	pthread_mutex_lock(&c->mu);
	if (!sp->rc)
		sp->rc = mem_calloc(p->n_rollups ? p->n_rollups : 1, sizeof *sp->rc);
	if (!c->ring) {
		c->cap = 1u << 20;
		c->ring = mem_alloc(c->cap * sizeof *c->ring);
	}
	if (!sp->rc || !c->ring || sp->rc[idx]) {
		pthread_mutex_unlock(&c->mu);
		return 0;
	}
	if (c->len == c->cap)
		rc_evict_one(c);
	uint32_t blk;
	part_bucket *copy = rc_alloc(c, room, &blk);
	if (copy) {
		memcpy(copy, b, bytes);
		sp->rc[idx] = copy;
		c->bytes += room;
		c->ring[(c->head + c->len++) % c->cap] =
			(struct rc_ent){sp, idx, (uint32_t)room, blk};
		c->ents[blk]++;
		c->live[blk]++;
		rc_evict(c);
	}
	int refill = c->refill;
	c->refill = 0;
	pthread_mutex_unlock(&c->mu);
	if (refill)
		db_kick_flusher(db);
	return 0;
}

typedef struct fold_arg {
	int64_t from, to;
	ragg *acc;
} fold_arg;

static void fold(const part_bucket *pb, uint32_t n, void *arg)
{
	const fold_arg *f = arg;
	const rbucket *b = (const rbucket *)pb;
	for (uint32_t i = bucket_lower(b, n, f->from); i < n && b[i].start < f->to; i++)
		ragg_merge(f->acc, &b[i].a);
}

int shard_part_rollup_each(shard_part *sp, const part_key *pk, uint32_t num, unsigned level,
			   part_scratch *ps,
			   void (*use)(const part_bucket *b, uint32_t n, void *arg), void *arg)
{
	uint32_t nb, idx = rollup_idx(sp, pk, num, level, &nb);
	if (!nb || cache_use(sp, idx, nb, use, arg))
		return 0;
	part_bucket *b;
	uint32_t n;
	int rc = shard_part_rollup(sp, pk, num, level, ps, &b, &n);
	if (rc || !b)
		return rc;
	use(b, n, arg);
	mem_free(b);
	return 0;
}

int shard_part_rollup_fold(shard_part *sp, const part_key *pk, uint32_t num, unsigned level,
			   part_scratch *ps, int64_t from, int64_t to, ragg *acc)
{
	fold_arg f = {from, to, acc};
	return shard_part_rollup_each(sp, pk, num, level, ps, fold, &f);
}
