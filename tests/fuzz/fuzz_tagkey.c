/*
 * fuzz_tagkey.c — libFuzzer target for series keys of several tags
 * (engine/tagkey.c): key specs as the WAL and parts record them, filters
 * and groups as queries name them, and keys as the write path builds them.
 *
 * The input is split at its first two 0 bytes into a spec, a query text
 * and a line's tags. Whatever the bytes: no read out of bounds, every
 * call returns 0 or a code with a message; a key built from tags parses
 * back into the same pairs (every pair of the line matches it), and a
 * filter naming a built key's own pairs matches it.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "catalog.h"
#include "mem.h"
#include "tagkey.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The pieces of s[0, n) split at 0 bytes: at most max of them. */
static size_t split(const char *s, size_t n, const char **p, size_t *l, size_t max)
{
	size_t k = 0, start = 0;
	for (size_t i = 0; i <= n && k < max; i++)
		if (i == n || s[i] == 0) {
			p[k] = s + start;
			l[k++] = i - start;
			start = i + 1;
		}
	return k;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s = malloc(size + 1);
	if (!s)
		return 0;
	memcpy(s, data, size);
	s[size] = 0;
	const char *p[3] = {"", "", ""};
	size_t l[3] = {0, 0, 0};
	split(s, size, p, l, 3);
	table_def t;
	memset(&t, 0, sizeof t);
	t.name = "t";
	pthread_mutex_init(&t.keys_mu, NULL);
	if (tagkey_table_init(&t, l[0] ? p[0] : NULL, (uint32_t)l[0]) == 0) {
		/* the query text, NUL-terminated at its end */
		char *q = mem_strndup(p[1], l[1]);
		tkfilter f = {0};
		if (q && tagkey_filter(&t, q, &f) == 0) {
			tagkey_match(&t, "camera=KV1,lane=2", 17, &f);
			tagkey_match(&t, q, (uint32_t)l[1], &f);
		}
		tagkey_filter_free(&f);
		tkgroup g = {0};
		tkbuf out = {0};
		if (q && tagkey_group(&t, q, &g) == 0)
			tagkey_group_key(&t, "camera=K\\=1,lane=2", 18, &g, &out);
		tagkey_group_free(&g);
		/* tags: name=value pairs of the third piece, split at ',' */
		lp_tag tags[8];
		uint32_t nt = 0;
		const char *c = p[2], *end = p[2] + l[2];
		while (c < end && nt < 8) {
			const char *comma = memchr(c, ',', (size_t)(end - c));
			const char *e = comma ? comma : end;
			const char *eq = memchr(c, '=', (size_t)(e - c));
			if (!eq || eq == c || eq + 1 == e)
				break;
			int dup = 0;
			for (uint32_t i = 0; i < nt; i++)
				dup |= tags[i].key.n == (uint32_t)(eq - c) &&
				       !memcmp(tags[i].key.p, c, (size_t)(eq - c));
			if (dup)
				break;
			tags[nt].key = (lp_str){c, (uint32_t)(eq - c)};
			tags[nt++].value = (lp_str){eq + 1, (uint32_t)(e - eq - 1)};
			c = e + 1;
		}
		uint8_t in_key[8] = {0}; /* tagkey_build sets only what it took */
		if (t.key_mode >= KEY_LIST && tagkey_build(&t, tags, nt, in_key, &out) == 0) {
			/* every pair the key took reads back from it */
			tkbuf v = {0};
			for (uint32_t i = 0; i < nt; i++) {
				if (!in_key[i])
					continue;
				char *name = mem_strndup(tags[i].key.p, tags[i].key.n);
				if (!name || tagkey_value(out.p, out.n, name, &v) != 1 ||
				    v.n != tags[i].value.n || memcmp(v.p, tags[i].value.p, v.n))
					abort();
				mem_free(name);
			}
			/* the key is a filter matching itself */
			char *k = mem_strndup(out.p, out.n);
			tkfilter self = {0};
			if (k && tagkey_filter(&t, k, &self) == 0 &&
			    !tagkey_match(&t, out.p, out.n, &self))
				abort();
			tagkey_filter_free(&self);
			mem_free(k);
			tkbuf_free(&v);
		}
		tkbuf_free(&out);
		mem_free(q);
	}
	tagkey_table_free(&t);
	pthread_mutex_destroy(&t.keys_mu);
	free(s);
	return 0;
}
