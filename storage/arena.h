/*
 * arena.h — bump allocation in huge-page blocks, freed all at once.
 *
 * A memtable allocates thousands of chunks and never frees one alone: they
 * all die with the memtable after its flush. So its memory comes from an
 * arena of 2 MiB blocks (transparent huge pages where the kernel allows),
 * and a dead arena's blocks go back to a pool for the next memtable. Fresh
 * anonymous memory costs a page fault per 4 KiB on first touch (tens of
 * microseconds on a virtual machine); a recycled, already-touched block
 * costs nothing, and a huge page costs one fault per 2 MiB.
 *
 * Threading: an arena belongs to one thread at a time (the shard lock);
 * a pool may be shared, it has its own mutex.
 */
#ifndef TALLY_ARENA_H
#define TALLY_ARENA_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define ARENA_BLOCK (2u << 20)

typedef struct arena_pool {
	pthread_mutex_t mu;
	void **blocks; /* free ARENA_BLOCK blocks */
	uint32_t n, cap;
	uint32_t max; /* blocks kept; the rest are unmapped */
} arena_pool;

typedef struct arena {
	arena_pool *pool;
	void **blocks; /* blocks in use (ARENA_BLOCK each) */
	uint32_t n_blocks, cap_blocks;
	void **big; /* allocations larger than a block, mapped alone */
	size_t *big_len;
	uint32_t n_big, cap_big;
	char *cur, *end;
	uint64_t bytes; /* mapped */
} arena;

void arena_pool_init(arena_pool *p, uint32_t max_blocks);
void arena_pool_free(arena_pool *p);

/* Maps one block, faults every page of it in (zeroed by the kernel now
 * rather than on a writer's first touch) and adds it to the pool. 1 when
 * added; 0 when the pool is full or memory is out. */
int arena_pool_prefill_one(arena_pool *p);
/* A block from the pool (faulted in), or NULL when it is empty. */
void *arena_pool_take(arena_pool *p);
uint32_t arena_pool_count(arena_pool *p);

/* One 2 MiB-aligned block (a huge page where the kernel allows), every
 * page faulted in now; NULL when memory is out. arena_block_free unmaps
 * it. (The decoded-rollup cache of engine/flush.c is a ring of these.) */
void *arena_block_new(void);
void arena_block_free(void *b);

void arena_init(arena *a, arena_pool *pool);
/* 16-byte aligned, uninitialised; NULL when out of memory. */
void *arena_alloc(arena *a, size_t n);
/* Returns every block to the pool (or the system); the arena is empty and
 * reusable after. */
void arena_release(arena *a);

#endif
