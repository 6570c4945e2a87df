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

/* a[0..n) == b[0..n), inline for the short names and keys of the write
 * path: up to 16 bytes it is two loads a side, no call. */
static inline int strmap_eq(const char *a, const char *b, uint32_t n)
{
	uint64_t x, y, u, v;
	if (n >= 8 && n <= 16) {
		/* two 8-byte loads that overlap when n < 16 */
		__builtin_memcpy(&x, a, 8);
		__builtin_memcpy(&y, b, 8);
		__builtin_memcpy(&u, a + n - 8, 8);
		__builtin_memcpy(&v, b + n - 8, 8);
		return ((x ^ y) | (u ^ v)) == 0;
	}
	if (n >= 4 && n < 8) {
		uint32_t x4, y4, u4, v4;
		__builtin_memcpy(&x4, a, 4);
		__builtin_memcpy(&y4, b, 4);
		__builtin_memcpy(&u4, a + n - 4, 4);
		__builtin_memcpy(&v4, b + n - 4, 4);
		return ((x4 ^ y4) | (u4 ^ v4)) == 0;
	}
	if (n < 4) {
		for (uint32_t i = 0; i < n; i++)
			if (a[i] != b[i])
				return 0;
		return 1;
	}
	return __builtin_memcmp(a, b, n) == 0;
}

uint64_t strmap_hash(const char *key, size_t len);
void *strmap_get(const strmap *m, const char *key, uint32_t len, uint64_t hash);
/* Inserts (key must be absent). 0 or -ENOMEM. */
int strmap_put(strmap *m, const char *key, uint32_t len, uint64_t hash, void *value);
/* Bytes the map's table holds. */
size_t strmap_bytes(const strmap *m);
void strmap_free(strmap *m);

#endif
