/*
 * query.c — rollup series, exact range aggregates, all-keys and raw scans.
 *
 * Every answer is a merge of partial aggregates: of the shards, and within
 * a shard of whole rollup buckets plus raw rows at the unaligned edges. The
 * exact aggregate tiles [from, to) with the coarsest whole windows that fit
 * and recurses into finer levels only for what is left at the two ends, so
 * its cost is a few bucket reads per level plus under one finest window of
 * raw rows per side, whatever the range.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "db.h"
#include "err.h"
#include "mem.h"

static int resolve(tally_db *db, const char *table, const char *field, table_def **t,
		   col_def **c)
{
	if (!table || !field)
		return err_set(TALLY_EINVAL, "table and field are required");
	*t = catalog_find_table(&db->cat, table, (uint32_t)strlen(table));
	if (!*t)
		return err_set(TALLY_ENOTFOUND, "no table '%s'", table);
	*c = catalog_find_column(&db->cat, *t, field, (uint32_t)strlen(field));
	if (!*c)
		return err_set(TALLY_ENOTFOUND, "table '%s' has no field '%s'", table, field);
	if (!type_is_numeric((*c)->type))
		return err_set(TALLY_EINVAL, "field '%s' is %s: only numeric fields have rollups",
			       field, type_name((*c)->type));
	return 0;
}

static inline int64_t clamp_ts(int64_t t)
{
	return t < TS_ENGINE_MIN ? TS_ENGINE_MIN : t > TS_ENGINE_MAX ? TS_ENGINE_MAX : t;
}

static const rcol *series_rcol(const series *se, uint32_t id)
{
	return se && id < se->n_rcols ? se->rcols[id] : NULL;
}

static void rdlock_all(tally_db *db)
{
	for (unsigned i = 0; i < db->n_shards; i++)
		pthread_rwlock_rdlock(&db->shards[i]->lock);
}

static void unlock_all(tally_db *db)
{
	for (unsigned i = 0; i < db->n_shards; i++)
		pthread_rwlock_unlock(&db->shards[i]->lock);
}

/* ---------------------------------------------------------------- series */

TALLY_API int tally_query_series(tally_db *db, const char *table, const char *field,
				 const char *key, int64_t step, int64_t from, int64_t to,
				 tally_bucket *out, size_t cap, size_t *n_out)
{
	err_clear();
	*n_out = 0;
	table_def *t = NULL;
	col_def *c = NULL;
	int rc = resolve(db, table, field, &t, &c);
	if (rc)
		return rc;
	if (!key)
		return err_set(TALLY_EINVAL, "key is required");
	const levels *L = &db->L;
	if (step <= 0 || step % L->w[0])
		return err_set(TALLY_EINVAL, "step %lld ns is not a multiple of the finest level "
					     "(%lld ns)",
			       (long long)step, (long long)L->w[0]);
	if (step > LEVEL_WIDTH_MAX)
		return err_set(TALLY_EINVAL, "step %lld ns too large", (long long)step);
	int li = 0;
	for (unsigned i = 0; i < L->n; i++)
		if (step % L->w[i] == 0)
			li = (int)i;
	from = window_start(clamp_ts(from), step, L->offset);
	to = clamp_ts(to);
	uint32_t kl = (uint32_t)strlen(key);

	/* A k-way merge of the shards' bucket arrays, all read-locked so the
	 * answer is one consistent cut. */
	enum { MAXS = 256 };
	const rlevel *lv[MAXS];
	uint32_t pos[MAXS];
	rdlock_all(db);
	for (unsigned s = 0; s < db->n_shards; s++) {
		const rcol *r = series_rcol(shard_series(db->shards[s], t, key, kl), c->id);
		lv[s] = r ? &r->lv[li] : NULL;
		pos[s] = r ? rollup_lower(lv[s], from) : 0;
	}
	size_t n = 0;
	int have = 0;
	tally_bucket cur = {0};
	ragg acc;
	for (;;) {
		/* the smallest next window over all shards */
		int64_t best = INT64_MAX;
		for (unsigned s = 0; s < db->n_shards; s++) {
			if (!lv[s])
				continue;
			while (pos[s] < lv[s]->n && lv[s]->b[pos[s]].a.count == 0)
				pos[s]++;
			if (pos[s] < lv[s]->n) {
				int64_t ws = window_start(lv[s]->b[pos[s]].start, step, L->offset);
				if (ws < to && ws < best)
					best = ws;
			}
		}
		if (best == INT64_MAX)
			break;
		if (!have || best != cur.start) {
			if (have) {
				if (n < cap) {
					ragg_to_public(&acc, &cur.agg);
					out[n] = cur;
				}
				n++;
			}
			have = 1;
			cur.start = best;
			ragg_init(&acc);
		}
		for (unsigned s = 0; s < db->n_shards; s++) {
			if (!lv[s])
				continue;
			while (pos[s] < lv[s]->n &&
			       window_start(lv[s]->b[pos[s]].start, step, L->offset) == best) {
				ragg_merge(&acc, &lv[s]->b[pos[s]].a);
				pos[s]++;
			}
		}
	}
	unlock_all(db);
	if (have) {
		if (n < cap) {
			ragg_to_public(&acc, &cur.agg);
			out[n] = cur;
		}
		n++;
	}
	*n_out = n;
	if (n > cap)
		return err_set(TALLY_ETRUNC, "%zu windows, buffer holds %zu", n, cap);
	return 0;
}

/* ---------------------------------------------------------------- exact */

static inline double value_as_double(enum tally_type type, bval v)
{
	switch (type) {
	case TALLY_T_I64: return (double)v.i64;
	case TALLY_T_U64: return (double)v.u64;
	case TALLY_T_BOOL: return v.u64 ? 1.0 : 0.0;
	default: return v.f64;
	}
}

/* Raw rows of se in [a, b): the unaligned edges. */
static void raw_agg(const series *se, const col_def *c, int64_t a, int64_t b, ragg *acc)
{
	for (uint32_t k = 0; k < se->n_chunks; k++) {
		const chunk *ch = se->chunks[k];
		if (ch->tmax < a || ch->tmin >= b || c->id >= ch->n_cols)
			continue;
		const chunk_col *cc = &ch->cols[c->id];
		if (!cc->present)
			continue;
		for (uint32_t i = 0; i < ch->n; i++)
			if (ch->ts[i] >= a && ch->ts[i] < b && chunk_has(cc, i))
				ragg_add(acc, value_as_double(c->type, cc->vals[i]));
	}
}

/* Whole buckets of level li inside [a, b), a and b aligned to it. */
static void bucket_agg(const rlevel *lv, int64_t a, int64_t b, ragg *acc)
{
	for (uint32_t i = rollup_lower(lv, a); i < lv->n && lv->b[i].start < b; i++)
		ragg_merge(acc, &lv->b[i].a);
}

static void cover(const series *se, const col_def *c, const levels *L, int li, int64_t a,
		  int64_t b, ragg *acc)
{
	const rcol *rc = series_rcol(se, c->id);
	if (!rc)
		return; /* no value of this field for this key */
	while (a < b) {
		if (li < 0) {
			raw_agg(se, c, a, b, acc);
			return;
		}
		int64_t w = L->w[li];
		int64_t A = window_start(a, w, L->offset);
		if (A < a)
			A += w;
		int64_t B = window_start(b, w, L->offset);
		if (A >= B) {
			li--;
			continue;
		}
		bucket_agg(&rc->lv[li], A, B, acc);
		cover(se, c, L, li - 1, a, A, acc);
		a = B; /* the right edge, with the finer levels */
		li--;
	}
}

TALLY_API int tally_query_agg(tally_db *db, const char *table, const char *field,
			      const char *key, int64_t from, int64_t to, tally_agg *out)
{
	err_clear();
	table_def *t = NULL;
	col_def *c = NULL;
	int rc = resolve(db, table, field, &t, &c);
	if (rc)
		return rc;
	if (!key)
		return err_set(TALLY_EINVAL, "key is required");
	from = clamp_ts(from);
	to = clamp_ts(to);
	uint32_t kl = (uint32_t)strlen(key);
	ragg acc;
	ragg_init(&acc);
	for (unsigned s = 0; s < db->n_shards; s++) {
		shard *sh = db->shards[s];
		pthread_rwlock_rdlock(&sh->lock);
		const series *se = shard_series(sh, t, key, kl);
		if (se)
			cover(se, c, &db->L, (int)db->L.n - 1, from, to, &acc);
		pthread_rwlock_unlock(&sh->lock);
	}
	ragg_to_public(&acc, out);
	return 0;
}

/* ---------------------------------------------------------------- keys */

typedef struct key_agg {
	const char *key; /* into the iterator's arena */
	uint32_t len;
	ragg a;
} key_agg;

struct tally_keys_iter {
	key_agg *v;
	size_t n, pos;
	char *arena;
	char *cur; /* NUL-terminated copy of the current key */
	size_t cur_cap;
};

static int key_cmp(const void *x, const void *y)
{
	const key_agg *a = x, *b = y;
	uint32_t n = a->len < b->len ? a->len : b->len;
	int c = memcmp(a->key, b->key, n);
	return c ? c : (a->len > b->len) - (a->len < b->len);
}

TALLY_API int tally_query_keys(tally_db *db, const char *table, const char *field,
			       int64_t from, int64_t to, tally_keys_iter **out)
{
	err_clear();
	*out = NULL;
	table_def *t = NULL;
	col_def *c = NULL;
	int rc = resolve(db, table, field, &t, &c);
	if (rc)
		return rc;
	from = clamp_ts(from);
	to = clamp_ts(to);
	tally_keys_iter *it = mem_calloc(1, sizeof *it);
	if (!it)
		return err_set(-ENOMEM, "out of memory");
	size_t cap = 0, arena_len = 0, arena_cap = 0;
	rdlock_all(db);
	for (unsigned s = 0; s < db->n_shards && !rc; s++) {
		const stable *st = shard_table(db->shards[s], t);
		for (uint32_t k = 0; st && k < st->n; k++) {
			const series *se = st->list[k];
			ragg a;
			ragg_init(&a);
			cover(se, c, &db->L, (int)db->L.n - 1, from, to, &a);
			if (!a.count)
				continue;
			if (it->n == cap) {
				size_t ncap = cap ? cap * 2 : 64;
				key_agg *nv = mem_realloc(it->v, ncap * sizeof *nv);
				if (!nv) {
					rc = -ENOMEM;
					break;
				}
				it->v = nv;
				cap = ncap;
			}
			if (arena_len + se->key_len > arena_cap) {
				size_t ncap = arena_cap ? arena_cap * 2 : 4096;
				while (ncap < arena_len + se->key_len)
					ncap *= 2;
				char *na = mem_realloc(it->arena, ncap);
				if (!na) {
					rc = -ENOMEM;
					break;
				}
				it->arena = na;
				arena_cap = ncap;
			}
			memcpy(it->arena + arena_len, se->key, se->key_len);
			/* offsets now, pointers after the arena stops moving */
			it->v[it->n++] = (key_agg){(const char *)(uintptr_t)arena_len, se->key_len, a};
			arena_len += se->key_len;
		}
	}
	unlock_all(db);
	if (rc) {
		tally_keys_close(it);
		return err_set(rc, "out of memory");
	}
	for (size_t i = 0; i < it->n; i++)
		it->v[i].key = it->arena + (uintptr_t)it->v[i].key;
	if (it->n)
		qsort(it->v, it->n, sizeof *it->v, key_cmp);
	/* A key written through several shards appears once per shard: merge. */
	size_t w = 0;
	for (size_t i = 0; i < it->n; i++) {
		if (w && key_cmp(&it->v[w - 1], &it->v[i]) == 0)
			ragg_merge(&it->v[w - 1].a, &it->v[i].a);
		else
			it->v[w++] = it->v[i];
	}
	it->n = w;
	*out = it;
	return 0;
}

TALLY_API int tally_keys_next(tally_keys_iter *it, const char **key, tally_agg *agg)
{
	if (it->pos >= it->n)
		return 0;
	const key_agg *k = &it->v[it->pos++];
	if (k->len + 1 > it->cur_cap) {
		size_t ncap = k->len + 1 > 64 ? k->len + 1 : 64;
		char *nc = mem_realloc(it->cur, ncap);
		if (!nc)
			return err_set(-ENOMEM, "out of memory");
		it->cur = nc;
		it->cur_cap = ncap;
	}
	memcpy(it->cur, k->key, k->len);
	it->cur[k->len] = 0;
	*key = it->cur;
	ragg_to_public(&k->a, agg);
	return 1;
}

TALLY_API void tally_keys_close(tally_keys_iter *it)
{
	if (!it)
		return;
	mem_free(it->v);
	mem_free(it->arena);
	mem_free(it->cur);
	mem_free(it);
}

/* ---------------------------------------------------------------- scan */

typedef struct scan_row {
	int64_t ts;
	uint64_t seq; /* collection order: shard, then arrival */
	size_t vals;  /* index of the row's first value */
} scan_row;

struct tally_scan {
	col_def **cols;
	size_t n_cols;
	scan_row *rows;
	size_t n_rows, pos;
	tally_value *vals; /* n_rows * n_cols; strings point into arena */
	char *arena;
	tally_value *cur;
};

static int row_cmp(const void *x, const void *y)
{
	const scan_row *a = x, *b = y;
	if (a->ts != b->ts)
		return a->ts < b->ts ? -1 : 1;
	return (a->seq > b->seq) - (a->seq < b->seq);
}

TALLY_API int tally_scan_open(tally_db *db, const char *table, const char *key, int64_t from,
			      int64_t to, tally_scan **out)
{
	err_clear();
	*out = NULL;
	if (!table || !key)
		return err_set(TALLY_EINVAL, "table and key are required");
	table_def *t = catalog_find_table(&db->cat, table, (uint32_t)strlen(table));
	if (!t)
		return err_set(TALLY_ENOTFOUND, "no table '%s'", table);
	tally_scan *sc = mem_calloc(1, sizeof *sc);
	if (!sc)
		return err_set(-ENOMEM, "out of memory");
	int rc = 0;
	pthread_mutex_lock(&db->cat.mu);
	sc->n_cols = t->n_cols;
	sc->cols = mem_alloc((sc->n_cols ? sc->n_cols : 1) * sizeof *sc->cols);
	if (sc->cols)
		memcpy(sc->cols, t->cols, sc->n_cols * sizeof *sc->cols);
	pthread_mutex_unlock(&db->cat.mu);
	if (!sc->cols)
		goto nomem;
	sc->cur = mem_calloc(sc->n_cols ? sc->n_cols : 1, sizeof *sc->cur);
	if (!sc->cur)
		goto nomem;
	uint32_t kl = (uint32_t)strlen(key);
	size_t cap_rows = 0, cap_vals = 0, n_vals = 0, arena_len = 0, arena_cap = 0;
	uint64_t seq = 0;
	from = clamp_ts(from);
	to = clamp_ts(to);
	rdlock_all(db);
	for (unsigned s = 0; s < db->n_shards && !rc; s++) {
		const series *se = shard_series(db->shards[s], t, key, kl);
		for (uint32_t k = 0; se && k < se->n_chunks && !rc; k++) {
			const chunk *ch = se->chunks[k];
			if (ch->tmax < from || ch->tmin >= to)
				continue;
			for (uint32_t i = 0; i < ch->n && !rc; i++, seq++) {
				if (ch->ts[i] < from || ch->ts[i] >= to)
					continue;
				if (sc->n_rows == cap_rows) {
					cap_rows = cap_rows ? cap_rows * 2 : 256;
					scan_row *nr = mem_realloc(sc->rows, cap_rows * sizeof *nr);
					if (!nr) {
						rc = -ENOMEM;
						break;
					}
					sc->rows = nr;
				}
				if (n_vals + sc->n_cols > cap_vals) {
					cap_vals = cap_vals ? cap_vals * 2 : 256 * (sc->n_cols + 1);
					tally_value *nv = mem_realloc(sc->vals, cap_vals * sizeof *nv);
					if (!nv) {
						rc = -ENOMEM;
						break;
					}
					sc->vals = nv;
				}
				sc->rows[sc->n_rows++] = (scan_row){ch->ts[i], seq, n_vals};
				for (size_t ci = 0; ci < sc->n_cols; ci++) {
					const col_def *d = sc->cols[ci];
					tally_value *v = &sc->vals[n_vals + ci];
					const chunk_col *cc = d->id < ch->n_cols ? &ch->cols[d->id] : NULL;
					if (!cc || !chunk_has(cc, i)) {
						v->type = TALLY_T_NONE;
						continue;
					}
					v->type = d->type;
					bval b = cc->vals[i];
					switch (d->type) {
					case TALLY_T_F64: v->v.f64 = b.f64; break;
					case TALLY_T_I64: v->v.i64 = b.i64; break;
					case TALLY_T_U64: v->v.u64 = b.u64; break;
					case TALLY_T_BOOL: v->v.b = b.u64 != 0; break;
					default: {
						size_t len = b.ref & 0xffff;
						if (!sc->arena || arena_len + len > arena_cap) {
							size_t nc = arena_cap ? arena_cap * 2 : 4096;
							while (nc < arena_len + len)
								nc *= 2;
							char *na = mem_realloc(sc->arena, nc);
							if (!na) {
								rc = -ENOMEM;
								break;
							}
							sc->arena = na;
							arena_cap = nc;
						}
						memcpy(sc->arena + arena_len, ch->arena + (b.ref >> 16),
						       len);
						/* offset now; pointer once the arena is final */
						v->v.str.ptr = (const char *)(uintptr_t)arena_len;
						v->v.str.len = len;
						arena_len += len;
					}
					}
				}
				n_vals += sc->n_cols;
			}
		}
	}
	unlock_all(db);
	if (rc)
		goto nomem;
	for (size_t i = 0; i < n_vals; i++)
		if (type_is_string(sc->vals[i].type))
			sc->vals[i].v.str.ptr = sc->arena + (uintptr_t)sc->vals[i].v.str.ptr;
	if (sc->n_rows)
		qsort(sc->rows, sc->n_rows, sizeof *sc->rows, row_cmp);
	*out = sc;
	return 0;
nomem:
	tally_scan_close(sc);
	return err_set(-ENOMEM, "out of memory opening a scan");
}

TALLY_API size_t tally_scan_columns(tally_scan *s) { return s->n_cols; }

TALLY_API int tally_scan_column(tally_scan *s, size_t i, const char **name,
				enum tally_type *type)
{
	if (i >= s->n_cols)
		return err_set(TALLY_EINVAL, "column %zu of %zu", i, s->n_cols);
	*name = s->cols[i]->name;
	*type = s->cols[i]->type;
	return 0;
}

TALLY_API int tally_scan_next(tally_scan *s, tally_row *row)
{
	if (s->pos >= s->n_rows)
		return 0;
	const scan_row *r = &s->rows[s->pos++];
	row->ts = r->ts;
	row->n_values = s->n_cols;
	row->values = s->vals + r->vals;
	return 1;
}

TALLY_API void tally_scan_close(tally_scan *s)
{
	if (!s)
		return;
	mem_free(s->cols);
	mem_free(s->rows);
	mem_free(s->vals);
	mem_free(s->arena);
	mem_free(s->cur);
	mem_free(s);
}
