/*
 * strmap.h — open-addressing hash map from byte strings to pointers.
 *
 * Keys are not copied: each key must stay valid as long as the map holds it
 * (callers point it at the value's own copy of its name). Hashes are
 * computed once by the caller (strmap_hash) so a hot path can reuse them.
 */
#ifndef TALLY_STRMAP_H
#define TALLY_STRMAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct strmap_slot {
	uint64_t hash;
	const char *key; /* NULL: empty */
	uint32_t len;
	void *value;
} strmap_slot;

typedef struct strmap {
	strmap_slot *slots;
	uint32_t cap; /* power of two or 0 */
	uint32_t n;
} strmap;

uint64_t strmap_hash(const char *key, size_t len);
void *strmap_get(const strmap *m, const char *key, uint32_t len, uint64_t hash);
/* Inserts (key must be absent). 0 or -ENOMEM. */
int strmap_put(strmap *m, const char *key, uint32_t len, uint64_t hash, void *value);
/* Bytes the map's table holds. */
size_t strmap_bytes(const strmap *m);
void strmap_free(strmap *m);

#endif
