/*
 * catalog.h — tables and their columns, shared by all shards (internal).
 *
 * The catalog is the one place where a column's type is decided: the first
 * write of a column fixes it for good, so a later write with another type is
 * rejected no matter which shard it reaches. Definitions are allocated one
 * by one and never move or die before the database closes, so writers may
 * cache pointers to them and read their immutable parts (name, id, type)
 * without the lock. The mutable parts (the lists) are read under cat->mu.
 */
#ifndef TALLY_CATALOG_H
#define TALLY_CATALOG_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "strmap.h"
#include "tally.h"

#define CAT_COLS_MAX   4096 /* columns per table */
#define CAT_TABLES_MAX 65536

typedef struct col_def {
	char *name;
	uint32_t len;
	uint32_t id; /* dense within its table, from 0 */
	enum tally_type type;
	uint64_t hash;
	int dist; /* 1: a distribution field (engine/dist.h) at resolution 10^dist_exp */
	int32_t dist_exp;
	uint32_t dist_max; /* distinct values a window keeps before it is a sketch */
} col_def;

/* What an allocation of n bytes costs the process: glibc's chunk, n plus
 * its 8-byte header rounded up to 16, at least 32. Per-key structures are
 * small and many, so their accounting counts this, not n. */
static inline uint64_t alloc_cost(size_t n)
{
	uint64_t c = ((uint64_t)n + 8 + 15) & ~UINT64_C(15);
	return c < 32 ? 32 : c;
}

typedef struct table_def {
	char *name;
	uint32_t len;
	uint32_t id; /* dense, from 0 */
	uint64_t hash;
	/* The table's key (engine/tagkey.h): one tag (key_tag is its name,
	 * a row's key is the tag's value, as ever), several tags or all of
	 * them (key_tag reads "camera+lane" or "*"; a row's key is its key
	 * tags as "name=value" pairs sorted by name). key_spec is how the
	 * WAL and parts record it, equal to key_tag for one tag. */
	char *key_tag; /* NULL: the table has no key tag; every row has key "" */
	uint32_t key_len;
	int key_mode; /* enum key_mode */
	char *key_spec;
	uint32_t key_spec_len;
	uint32_t n_ktags; /* KEY_ONE: 1; KEY_LIST: 2 or more, sorted by name */
	char **ktags;     /* the key tags' names (KEY_ONE: key_tag) */
	uint32_t *ktag_len;
	_Atomic uint64_t merged; /* lines with tags outside the key, since open */
	_Atomic int merge_warned;
	/* under catalog.mu: */
	col_def **cols;
	uint32_t n_cols, cap_cols;
	strmap by_name;
	/* Every key the table holds, in any shard's memtable or part, under
	 * keys_mu. Keys are never dropped (merges keep them all), so the set
	 * only grows: its size is the table's cardinality, which stats reads
	 * without walking anything and the cardinality limit checks. Each
	 * key is stored once here; shards' key states point at this copy. */
	pthread_mutex_t keys_mu;
	strmap keys;
	_Atomic uint64_t n_keys;
	_Atomic uint64_t key_bytes;      /* the set's table and key bytes */
	_Atomic uint64_t *all_key_bytes; /* the catalog's total of them */
} table_def;

typedef struct catalog {
	pthread_mutex_t mu;
	table_def **tables;
	uint32_t n_tables, cap_tables;
	strmap by_name;
	strmap key_conf; /* table name -> configured key spec (char *, tagkey.h) */
	char *key_conf_text;
	const struct dist_conf *dists; /* fields marked as distributions; set before use */
	_Atomic uint64_t key_bytes;    /* every table's key set, read without mu */
} catalog;

/* conf: "table=KEY,table=KEY" or NULL, KEY a tag, tags joined by '+'
 * ("camera+lane") or '*' (every tag). TALLY_EINVAL with a message when
 * conf is malformed. */
int catalog_init(catalog *c, const char *conf);
void catalog_free(catalog *c);

/* 0 when name may be a table name; else TALLY_EINVAL and a message. Table
 * names become file names, so '/', control characters and a leading '.'
 * are refused. */
int catalog_check_table_name(const char *name, size_t len);

/* Finds or creates a table. first_tag (may be NULL) is the first tag key of
 * the line creating it, or the key spec a part or WAL record holds, used
 * as the key unless the config names one. */
int catalog_table(catalog *c, const char *name, uint32_t len, uint64_t hash, const char *first_tag,
		  uint32_t first_tag_len, table_def **out);

/* Finds or creates a column. TALLY_ETYPE (message names both types) if it
 * exists with another type. */
int catalog_column(catalog *c, table_def *t, const char *name, uint32_t len, uint64_t hash,
		   enum tally_type type, col_def **out);

/* 0 when spec[0, len) (a part's or WAL record's key spec, NULL: no key)
 * is the table's key; else TALLY_EINVAL naming both. */
int catalog_key_check(const table_def *t, const char *spec, uint32_t len, const char *where);

/* Lines accepted into t whose tags outside the key were merged into
 * their series, summed over tables. */
uint64_t catalog_merged(catalog *c);

/* Looks up without creating; NULL when absent. */
table_def *catalog_find_table(catalog *c, const char *name, uint32_t len);
col_def *catalog_find_column(catalog *c, table_def *t, const char *name, uint32_t len);

/* Adds key to the table's key set unless there. *out: the set's copy of
 * the key (NUL-terminated, lives until catalog_free). limit > 0: a key
 * that would make the table hold more than limit keys is refused with
 * TALLY_ELIMIT and a message naming the table and the limit. */
int catalog_key(table_def *t, const char *key, uint32_t len, uint64_t hash, uint64_t limit,
		const char **out);

/* Adds every key of a part found at open to its table's key set. */
struct part;
int catalog_part_keys(table_def *t, const struct part *p);

/* Distinct (table, key) pairs over all tables, and the bytes the key sets
 * hold: running counts, read without walking any key. */
uint64_t catalog_keys(catalog *c, uint64_t *bytes);

const char *type_name(enum tally_type t);
static inline int type_is_numeric(enum tally_type t)
{
	return t == TALLY_T_F64 || t == TALLY_T_I64 || t == TALLY_T_U64 || t == TALLY_T_BOOL;
}
static inline int type_is_string(enum tally_type t)
{
	return t == TALLY_T_STR || t == TALLY_T_TAG;
}

#endif
