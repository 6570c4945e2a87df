/*
 * strmap.c — linear-probing hash map, load factor at most 1/2.
 *
 * The full 64-bit hash is kept per slot so a probe compares bytes only on a
 * hash match, and growth never rehashes a string.
 */
#include "strmap.h"

#include <errno.h>
#include <string.h>
#include <xxhash.h>

#include "mem.h"

uint64_t strmap_hash(const char *key, size_t len)
{
	return XXH3_64bits(key, len);
}

void *strmap_get(const strmap *m, const char *key, uint32_t len, uint64_t hash)
{
	if (m->cap == 0)
		return NULL;
	uint32_t mask = m->cap - 1;
	for (uint32_t i = (uint32_t)hash & mask;; i = (i + 1) & mask) {
		const strmap_slot *s = &m->slots[i];
		if (!s->key)
			return NULL;
		if (s->hash == hash && s->len == len && strmap_eq(s->key, key, len))
			return s->value;
	}
}

static void place(strmap_slot *slots, uint32_t cap, const strmap_slot *src)
{
	uint32_t mask = cap - 1;
	uint32_t i = (uint32_t)src->hash & mask;
	while (slots[i].key)
		i = (i + 1) & mask;
	slots[i] = *src;
}

int strmap_put(strmap *m, const char *key, uint32_t len, uint64_t hash, void *value)
{
	if ((m->n + 1) * 2 > m->cap) {
		uint32_t ncap = m->cap ? m->cap * 2 : 16;
		strmap_slot *ns = mem_calloc(ncap, sizeof *ns);
		if (!ns)
			return -ENOMEM;
		for (uint32_t i = 0; i < m->cap; i++)
			if (m->slots[i].key)
				place(ns, ncap, &m->slots[i]);
		mem_free(m->slots);
		m->slots = ns;
		m->cap = ncap;
	}
	strmap_slot s = {hash, key, len, value};
	place(m->slots, m->cap, &s);
	m->n++;
	return 0;
}

size_t strmap_bytes(const strmap *m)
{
	return (size_t)m->cap * sizeof(strmap_slot);
}

void strmap_free(strmap *m)
{
	mem_free(m->slots);
	m->slots = NULL;
	m->cap = m->n = 0;
}
