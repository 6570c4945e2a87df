/*
 * mem.h — the one allocation entry point.
 *
 * All of tally allocates through these so that tests can inject allocation
 * failures (mem_fail_after) and stats can report what is held.
 */
#ifndef TALLY_MEM_H
#define TALLY_MEM_H

#include <stddef.h>
#include <stdint.h>

void *mem_alloc(size_t n);
void *mem_calloc(size_t count, size_t n);
void *mem_realloc(void *p, size_t n);
void mem_free(void *p);
char *mem_strndup(const char *s, size_t n);

/* Makes room for at least need elements of elem bytes in *arr, doubling
 * *cap (from first when 0). 0, or -ENOMEM with *arr and *cap unchanged. */
int mem_grow(void *arr, uint32_t *cap, uint32_t need, size_t elem, uint32_t first);

/* Tests: the n-th allocation from now fails (0: none fail). */
void mem_fail_after(uint64_t n);

#endif
