/*
 * catinfo.c — the catalog's public face: tables, their columns and keys.
 *
 * Names are handed out as borrowed pointers into the catalog itself: table
 * and column definitions and the key sets' copies of keys are never freed
 * before the database closes, so a list costs no copies of its strings,
 * only the caller's array of pointers. Keys are many (millions) and live in
 * a hash set, so a sorted page of them is the cap smallest matches found in
 * one pass with a bounded max-heap, never a sort of the whole set.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "db.h"
#include "err.h"
#include "mem.h"

TALLY_API const char *tally_type_name(enum tally_type t)
{
	return type_name(t);
}

static int cmp_table(const void *a, const void *b)
{
	return strcmp((*(table_def *const *)a)->name, (*(table_def *const *)b)->name);
}

static int cmp_col(const void *a, const void *b)
{
	return strcmp((*(col_def *const *)a)->name, (*(col_def *const *)b)->name);
}

/* A copy of n pointers at src, sorted by cmp, taken under mu (the array
 * may be grown, thus moved, by a writer once mu is released); field is the
 * address of the array's pointer, read as bytes so that any pointer type
 * goes. NULL when out of memory. The definitions pointed at never change their names. */
static void *sorted_copy(pthread_mutex_t *mu, const void *field, const uint32_t *count, size_t *n,
			 int (*cmp)(const void *, const void *))
{
	pthread_mutex_lock(mu);
	*n = *count;
	void **v = mem_alloc((*n ? *n : 1) * sizeof *v);
	const void *src;
	memcpy(&src, field, sizeof src);
	if (v && *n)
		memcpy(v, src, *n * sizeof *v);
	pthread_mutex_unlock(mu);
	if (v)
		qsort(v, *n, sizeof *v, cmp);
	return v;
}

static int list_done(size_t total, size_t cap, size_t *n_out)
{
	*n_out = total;
	return total > cap ? TALLY_ETRUNC : 0;
}

TALLY_API int tally_catalog_tables(tally_db *db, const char **names, const char **key_tags,
				   size_t cap, size_t *n_out)
{
	err_clear();
	if (!db || !n_out || (cap && !names))
		return err_set(TALLY_EINVAL,
			       "tally_catalog_tables: db, names and n_out are required");
	size_t n;
	table_def **v = sorted_copy(&db->cat.mu, &db->cat.tables, &db->cat.n_tables, &n, cmp_table);
	if (!v)
		return err_set(-ENOMEM, "out of memory listing tables");
	for (size_t i = 0; i < n && i < cap; i++) {
		names[i] = v[i]->name;
		if (key_tags)
			key_tags[i] = v[i]->key_tag;
	}
	mem_free(v);
	return list_done(n, cap, n_out);
}

static int find_table(tally_db *db, const char *table, table_def **t)
{
	if (!db || !table)
		return err_set(TALLY_EINVAL, "a database and a table name are required");
	*t = catalog_find_table(&db->cat, table, (uint32_t)strlen(table));
	if (!*t)
		return err_set(TALLY_ENOTFOUND, "no table '%s'", table);
	return 0;
}

TALLY_API int tally_catalog_key_tag(tally_db *db, const char *table, const char **key_tag)
{
	err_clear();
	table_def *t;
	int rc = find_table(db, table, &t);
	if (rc)
		return rc;
	if (key_tag)
		*key_tag = t->key_tag;
	return 0;
}

TALLY_API int tally_catalog_fields(tally_db *db, const char *table, const char **names,
				   enum tally_type *types, size_t cap, size_t *n_out)
{
	err_clear();
	table_def *t;
	int rc = find_table(db, table, &t);
	if (rc)
		return rc;
	if (!n_out || (cap && !names))
		return err_set(TALLY_EINVAL, "tally_catalog_fields: names and n_out are required");
	size_t n;
	col_def **v = sorted_copy(&db->cat.mu, &t->cols, &t->n_cols, &n, cmp_col);
	if (!v)
		return err_set(-ENOMEM, "out of memory listing the columns of '%s'", table);
	for (size_t i = 0; i < n && i < cap; i++) {
		names[i] = v[i]->name;
		if (types)
			types[i] = v[i]->type;
	}
	mem_free(v);
	return list_done(n, cap, n_out);
}

/* keys[0..n) as a max-heap by strcmp: keys[0] is the largest kept. */
static void heap_down(const char **h, size_t n, size_t i)
{
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, m = i;
		if (l < n && strcmp(h[l], h[m]) > 0)
			m = l;
		if (r < n && strcmp(h[r], h[m]) > 0)
			m = r;
		if (m == i)
			return;
		const char *x = h[i];
		h[i] = h[m];
		h[m] = x;
		i = m;
	}
}

static void heap_up(const char **h, size_t i)
{
	while (i > 0) {
		size_t p = (i - 1) / 2;
		if (strcmp(h[p], h[i]) >= 0)
			return;
		const char *x = h[i];
		h[i] = h[p];
		h[p] = x;
		i = p;
	}
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

TALLY_API int tally_catalog_keys(tally_db *db, const char *table, const char *prefix,
				 const char *after, const char **keys, size_t cap, size_t *n_out)
{
	err_clear();
	table_def *t;
	int rc = find_table(db, table, &t);
	if (rc)
		return rc;
	if (!n_out || (cap && !keys))
		return err_set(TALLY_EINVAL, "tally_catalog_keys: keys and n_out are required");
	size_t plen = prefix ? strlen(prefix) : 0;
	size_t total = 0, kept = 0;
	pthread_mutex_lock(&t->keys_mu);
	for (uint32_t i = 0; i < t->keys.cap; i++) {
		const char *k = t->keys.slots[i].key;
		if (!k || (plen && strncmp(k, prefix, plen)) || (after && strcmp(k, after) <= 0))
			continue;
		total++;
		if (kept < cap) {
			keys[kept] = k;
			heap_up(keys, kept++);
		} else if (cap && strcmp(k, keys[0]) < 0) {
			keys[0] = k;
			heap_down(keys, kept, 0);
		}
	}
	pthread_mutex_unlock(&t->keys_mu);
	if (kept > 1)
		qsort(keys, kept, sizeof *keys, cmp_str);
	return list_done(total, cap, n_out);
}
