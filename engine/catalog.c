/*
 * catalog.c — schema on write: tables and typed columns created on first use.
 *
 * Lookups on the write path go through each writer's own cache first (see
 * db.c), so this mutex is taken only when a writer meets a name it has not
 * seen before.
 */
#include "catalog.h"

#include <errno.h>
#include <string.h>

#include "dist.h"
#include "err.h"
#include "mem.h"
#include "part.h"
#include "tagkey.h"

const char *type_name(enum tally_type t)
{
	switch (t) {
	case TALLY_T_F64: return "float";
	case TALLY_T_I64: return "integer";
	case TALLY_T_U64: return "unsigned";
	case TALLY_T_BOOL: return "boolean";
	case TALLY_T_STR: return "string";
	case TALLY_T_TAG: return "tag";
	default: return "none";
	}
}

int catalog_check_table_name(const char *name, size_t len)
{
	if (len == 0)
		return err_set(TALLY_EINVAL, "empty table name");
	if (len > 255)
		return err_set(TALLY_EINVAL, "table name longer than 255 bytes");
	if (name[0] == '.')
		return err_set(TALLY_EINVAL, "table name may not start with '.'");
	for (size_t i = 0; i < len; i++) {
		unsigned char ch = (unsigned char)name[i];
		if (ch == '/' || ch < 0x20 || ch == 0x7f)
			return err_set(TALLY_EINVAL,
				       "table name holds a forbidden byte 0x%02x at %zu", ch, i);
	}
	return 0;
}

int catalog_init(catalog *c, const char *conf)
{
	memset(c, 0, sizeof *c);
	pthread_mutex_init(&c->mu, NULL);
	if (!conf || !*conf)
		return 0;
	/* Parse "table=KEY,table=KEY" into a map from the names (in one copy)
	 * to each KEY's persisted spec (tagkey.h). */
	size_t n = strlen(conf);
	c->key_conf_text = mem_strndup(conf, n);
	if (!c->key_conf_text)
		return -ENOMEM;
	char *p = c->key_conf_text;
	while (*p) {
		char *comma = strchr(p, ',');
		if (comma)
			*comma = 0;
		char *eq = strchr(p, '=');
		if (!eq || eq == p || !eq[1])
			return err_set(TALLY_EINVAL, "table_keys: expected table=tag, got '%s'", p);
		*eq = 0;
		uint32_t tl = (uint32_t)(eq - p);
		uint64_t h = strmap_hash(p, tl);
		if (strmap_get(&c->key_conf, p, tl, h))
			return err_set(TALLY_EINVAL, "table_keys: table '%s' named twice", p);
		char *spec;
		int rc = tagkey_conf_spec(p, eq + 1, &spec);
		if (rc)
			return rc;
		if (strmap_put(&c->key_conf, p, tl, h, spec)) {
			mem_free(spec);
			return -ENOMEM;
		}
		if (!comma)
			break;
		p = comma + 1;
	}
	return 0;
}

static void table_free(table_def *t)
{
	for (uint32_t i = 0; i < t->keys.cap; i++)
		mem_free((char *)t->keys.slots[i].key);
	strmap_free(&t->keys);
	pthread_mutex_destroy(&t->keys_mu);
	for (uint32_t i = 0; i < t->n_cols; i++) {
		mem_free(t->cols[i]->name);
		mem_free(t->cols[i]);
	}
	mem_free(t->cols);
	strmap_free(&t->by_name);
	mem_free(t->name);
	tagkey_table_free(t);
	mem_free(t);
}

void catalog_free(catalog *c)
{
	for (uint32_t i = 0; i < c->n_tables; i++)
		table_free(c->tables[i]);
	mem_free(c->tables);
	strmap_free(&c->by_name);
	for (uint32_t i = 0; i < c->key_conf.cap; i++)
		mem_free(c->key_conf.slots[i].value);
	strmap_free(&c->key_conf);
	mem_free(c->key_conf_text);
	pthread_mutex_destroy(&c->mu);
}

table_def *catalog_find_table(catalog *c, const char *name, uint32_t len)
{
	pthread_mutex_lock(&c->mu);
	table_def *t = strmap_get(&c->by_name, name, len, strmap_hash(name, len));
	pthread_mutex_unlock(&c->mu);
	return t;
}

col_def *catalog_find_column(catalog *c, table_def *t, const char *name, uint32_t len)
{
	pthread_mutex_lock(&c->mu);
	col_def *d = strmap_get(&t->by_name, name, len, strmap_hash(name, len));
	pthread_mutex_unlock(&c->mu);
	return d;
}

int catalog_table(catalog *c, const char *name, uint32_t len, uint64_t hash, const char *first_tag,
		  uint32_t first_tag_len, table_def **out)
{
	int rc = 0;
	pthread_mutex_lock(&c->mu);
	table_def *t = strmap_get(&c->by_name, name, len, hash);
	if (t)
		goto done;
	if ((rc = catalog_check_table_name(name, len)))
		goto done;
	if (c->n_tables >= CAT_TABLES_MAX) {
		rc = err_set(TALLY_ELIMIT, "too many tables (max %d)", CAT_TABLES_MAX);
		goto done;
	}
	if (mem_grow(&c->tables, &c->cap_tables, c->n_tables + 1, sizeof *c->tables, 8))
		goto nomem;
	t = mem_calloc(1, sizeof *t);
	if (!t)
		goto nomem;
	pthread_mutex_init(&t->keys_mu, NULL);
	t->all_key_bytes = &c->key_bytes;
	t->name = mem_strndup(name, len);
	const char *key = strmap_get(&c->key_conf, name, len, hash);
	uint32_t key_len = key ? (uint32_t)strlen(key) : first_tag_len;
	if (!key)
		key = first_tag;
	if (!t->name || (rc = tagkey_table_init(t, key, key_len))) {
		table_free(t);
		t = NULL;
		if (rc)
			goto done;
		goto nomem;
	}
	t->len = len;
	t->hash = hash;
	t->id = c->n_tables;
	if (strmap_put(&c->by_name, t->name, len, hash, t)) {
		table_free(t);
		t = NULL;
		goto nomem;
	}
	c->tables[c->n_tables++] = t;
done:
	pthread_mutex_unlock(&c->mu);
	*out = rc ? NULL : t;
	return rc;
nomem:
	pthread_mutex_unlock(&c->mu);
	*out = NULL;
	return err_set(-ENOMEM, "out of memory creating table");
}

int catalog_column(catalog *c, table_def *t, const char *name, uint32_t len, uint64_t hash,
		   enum tally_type type, col_def **out)
{
	int rc = 0;
	pthread_mutex_lock(&c->mu);
	col_def *d = strmap_get(&t->by_name, name, len, hash);
	if (d) {
		if (d->type != type)
			rc = err_set(TALLY_ETYPE, "%s '%.*s' is %s here but %s in table '%s'",
				     type == TALLY_T_TAG ? "tag" : "field", (int)len, name,
				     type_name(type), type_name(d->type), t->name);
		goto done;
	}
	if (t->n_cols >= CAT_COLS_MAX) {
		rc = err_set(TALLY_ELIMIT, "table '%s' has too many columns (max %d)", t->name,
			     CAT_COLS_MAX);
		goto done;
	}
	if (mem_grow(&t->cols, &t->cap_cols, t->n_cols + 1, sizeof *t->cols, 8))
		goto nomem;
	d = mem_calloc(1, sizeof *d);
	if (!d || !(d->name = mem_strndup(name, len))) {
		mem_free(d);
		d = NULL;
		goto nomem;
	}
	d->len = len;
	d->id = t->n_cols;
	d->type = type;
	d->hash = hash;
	d->dist = type_is_numeric(type) && dist_conf_find(c->dists, t->name, t->len, d->name, len,
							  &d->dist_exp, &d->dist_max);
	if (strmap_put(&t->by_name, d->name, len, hash, d)) {
		mem_free(d->name);
		mem_free(d);
		d = NULL;
		goto nomem;
	}
	t->cols[t->n_cols++] = d;
done:
	pthread_mutex_unlock(&c->mu);
	*out = rc ? NULL : d;
	return rc;
nomem:
	pthread_mutex_unlock(&c->mu);
	*out = NULL;
	return err_set(-ENOMEM, "out of memory creating column");
}

int catalog_part_keys(table_def *t, const part *p)
{
	int rc = 0;
	const char *copy;
	for (uint32_t k = 0; k < p->n_keys && !rc; k++)
		rc = catalog_key(t, p->keys[k].key, p->keys[k].len,
				 strmap_hash(p->keys[k].key, p->keys[k].len), 0, &copy);
	return rc;
}

uint64_t catalog_keys(catalog *c, uint64_t *bytes)
{
	uint64_t n = 0;
	pthread_mutex_lock(&c->mu);
	for (uint32_t i = 0; i < c->n_tables; i++)
		n += atomic_load(&c->tables[i]->n_keys);
	pthread_mutex_unlock(&c->mu);
	if (bytes)
		*bytes = atomic_load(&c->key_bytes);
	return n;
}

int catalog_key(table_def *t, const char *key, uint32_t len, uint64_t hash, uint64_t limit,
		const char **out)
{
	int rc = 0;
	pthread_mutex_lock(&t->keys_mu);
	char *k = strmap_get(&t->keys, key, len, hash);
	if (k)
		goto done;
	if (limit && t->keys.n >= limit) {
		rc = err_set(
			TALLY_ELIMIT,
			"table '%s' already holds %llu keys, its cardinality limit; key '%.*s' "
			"refused",
			t->name, (unsigned long long)limit, (int)(len > 64 ? 64 : len), key);
		goto done;
	}
	size_t before = strmap_bytes(&t->keys);
	/* the value is the key itself: the set maps a key to its one copy */
	if (!(k = mem_strndup(key, len)) || strmap_put(&t->keys, k, len, hash, k)) {
		mem_free(k);
		k = NULL;
		rc = err_set(-ENOMEM, "out of memory adding a key to table '%s'", t->name);
		goto done;
	}
	atomic_store(&t->n_keys, t->keys.n);
	uint64_t grew = strmap_bytes(&t->keys) - before + alloc_cost(len + 1);
	atomic_fetch_add(&t->key_bytes, grew);
	atomic_fetch_add(t->all_key_bytes, grew);
done:
	pthread_mutex_unlock(&t->keys_mu);
	*out = k;
	return rc;
}

int catalog_key_check(const table_def *t, const char *spec, uint32_t len, const char *where)
{
	if ((t->key_spec == NULL) == (spec == NULL) &&
	    (!spec || (len == t->key_spec_len && !memcmp(spec, t->key_spec, len))))
		return 0;
	/* name the spec as the config spells it */
	table_def other = {.name = t->name};
	int rc = tagkey_table_init(&other, spec, len);
	rc = rc ? rc
		: err_set(TALLY_EINVAL,
			  "%s: table '%s' was written keyed by '%s' but is opened keyed by '%s' "
			  "(table_keys): a table's key is fixed when it is created",
			  where, t->name, other.key_tag ? other.key_tag : "(no key tag)",
			  t->key_tag ? t->key_tag : "(no key tag)");
	tagkey_table_free(&other);
	return rc;
}

uint64_t catalog_merged(catalog *c)
{
	uint64_t n = 0;
	pthread_mutex_lock(&c->mu);
	for (uint32_t i = 0; i < c->n_tables; i++)
		n += atomic_load(&c->tables[i]->merged);
	pthread_mutex_unlock(&c->mu);
	return n;
}
