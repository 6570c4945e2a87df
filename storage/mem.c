/*
 * mem.c — allocation wrappers with failure injection for tests.
 *
 * The injection counter is a relaxed atomic so the common case (no
 * injection armed) costs one load.
 */
#include "mem.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static _Atomic uint64_t fail_countdown;

static int should_fail(void)
{
	uint64_t n = atomic_load_explicit(&fail_countdown, memory_order_relaxed);
	if (n == 0)
		return 0;
	return atomic_fetch_sub(&fail_countdown, 1) == 1;
}

void mem_fail_after(uint64_t n)
{
	atomic_store(&fail_countdown, n);
}

void *mem_alloc(size_t n)
{
	return should_fail() ? NULL : malloc(n ? n : 1);
}

void *mem_calloc(size_t count, size_t n)
{
	return should_fail() ? NULL : calloc(count ? count : 1, n ? n : 1);
}

void *mem_realloc(void *p, size_t n)
{
	return should_fail() ? NULL : realloc(p, n ? n : 1);
}

void mem_free(void *p)
{
	free(p);
}

int mem_grow(void *arr, uint32_t *cap, uint32_t need, size_t elem, uint32_t first)
{
	if (need <= *cap)
		return 0;
	uint64_t nc = *cap ? *cap : first;
	while (nc < need)
		nc *= 2;
	if (nc > UINT32_MAX)
		return -ENOMEM;
	void **slot = arr; /* arr is really a pointer to the caller's array pointer */
	void *np = mem_realloc(*slot, (size_t)nc * elem);
	if (!np)
		return -ENOMEM;
	*slot = np;
	*cap = (uint32_t)nc;
	return 0;
}

char *mem_strndup(const char *s, size_t n)
{
	char *d = mem_alloc(n + 1);
	if (d) {
		memcpy(d, s, n);
		d[n] = 0;
	}
	return d;
}
