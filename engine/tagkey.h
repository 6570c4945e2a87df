/*
 * tagkey.h — a table's key: one tag, several tags or all tags (internal).
 *
 * A row's key is one byte string, whatever the mode, so that shards,
 * memtables, parts, the WAL and the key set keep one key per series
 * exactly as they did for one key tag:
 *
 *   KEY_NONE  the table has no key tag: every key is ""
 *   KEY_ONE   the key tag's value, as written ("KV00123")
 *   KEY_LIST  the listed tags, KEY_ALL every tag of the line, as
 *             "name=value" pairs sorted by name (bytewise) and joined by
 *             ',', with '\', ',' and '=' escaped by a '\' in names and
 *             values ("camera=KV00123,lane=2")
 *
 * Queries name a key as a filter, "tag=value,tag=value" in any order,
 * escaped the same way; a key matches when it holds every pair. A filter
 * naming every tag of a KEY_ONE or KEY_LIST table is one key; anything
 * else is answered by merging the matching keys' partial rollups.
 */
#ifndef TALLY_TAGKEY_H
#define TALLY_TAGKEY_H

#include <stdint.h>

#include "catalog.h"
#include "lp.h"

enum key_mode { KEY_NONE = 0, KEY_ONE, KEY_LIST, KEY_ALL };

/* Persisted specs of several tags start with this byte, which no name
 * holds (names are valid UTF-8): "\xff" "camera" "\xff" "lane" lists
 * tags, "\xff*" is every tag. One tag is its plain name, as before. */
#define KEY_SPEC_MARK '\xff'

#define TAGKEY_MAX_BYTES 65535 /* longest key */

/* A growable byte buffer. */
typedef struct tkbuf {
	char *p;
	uint32_t n, cap;
} tkbuf;
void tkbuf_free(tkbuf *b);

/* The persisted spec of a configured key ("camera", "camera+lane", "*")
 * into *spec (allocated). TALLY_EINVAL naming the table. */
int tagkey_conf_spec(const char *table, const char *conf, char **spec);

/* Sets t's key from its persisted spec (NULL: none); frees it again. */
int tagkey_table_init(table_def *t, const char *spec, uint32_t len);
void tagkey_table_free(table_def *t);

/* The key of a line of a KEY_LIST or KEY_ALL table into out; in_key[i]
 * set to 1 for each tag the key took. TALLY_EINVAL naming a missing key
 * tag (KEY_LIST) or a key past TAGKEY_MAX_BYTES. */
int tagkey_build(const table_def *t, const lp_tag *tags, uint32_t n, uint8_t *in_key, tkbuf *out);

/* The stored key of a key text naming every key tag of a KEY_LIST or
 * KEY_ALL table, pairs in any order (the binary write's key).
 * TALLY_EINVAL naming what is missing. */
int tagkey_canon(const table_def *t, const char *text, tkbuf *out);

/* A parsed filter: pairs unescaped into buf. */
typedef struct tkpair {
	const char *name, *value;
	uint32_t nl, vl;
} tkpair;
typedef struct tkfilter {
	tkpair *kv;
	uint32_t n;
	char *buf;
	/* set when the filter names one whole key of a KEY_ONE or KEY_LIST
	 * table (or the table has none): exact points at that key */
	int exact;
	tkbuf key;
} tkfilter;

/* Parses text as a filter on t's keys. TALLY_EINVAL for bad syntax, a
 * tag named twice or one outside a KEY_ONE or KEY_LIST key. */
int tagkey_filter(const table_def *t, const char *text, tkfilter *f);
void tagkey_filter_free(tkfilter *f);

/* 1 when key[0, len) of t holds every pair of f. */
int tagkey_match(const table_def *t, const char *key, uint32_t len, const tkfilter *f);

/* The value of tag name in key[0, len) of a table keyed by several
 * tags, unescaped into out: 1, or 0 (out "") when the key lacks it. */
int tagkey_value(const char *key, uint32_t len, const char *name, tkbuf *out);

/* The stored keys a query's key text names: the one key it names whole,
 * or every key of t holding its pairs, from t's key set (those copies
 * live until the catalog is freed). */
typedef struct tkkeys {
	tkfilter f;
	const char **k;
	uint32_t *l;
	uint32_t n;
	const char *one[1];
	uint32_t one_len[1];
} tkkeys;
int tkkeys_resolve(table_def *t, const char *text, tkkeys *q);
void tkkeys_free(tkkeys *q);

/* Tag names to group by: "lane" or "camera,lane" (escaped like
 * filters). TALLY_EINVAL naming a tag outside a KEY_ONE or KEY_LIST key. */
typedef struct tkgroup {
	tkpair *by; /* values unused */
	uint32_t n;
	char *buf;
} tkgroup;
int tagkey_group(const table_def *t, const char *text, tkgroup *g);
void tagkey_group_free(tkgroup *g);

/* The group key of key[0, len): "name=value" of each group tag in g's
 * order, joined by ',', escaped; a tag the key lacks has an empty value. */
int tagkey_group_key(const table_def *t, const char *key, uint32_t len, const tkgroup *g,
		     tkbuf *out);

#endif
