/*
 * shard.c — applying staged batches to the memtable and rollups.
 *
 * The per-row work is: pick the row's series (resolved once per key per
 * batch), append the timestamp and each present value to the series' tail
 * chunk, and add numeric values to the series' rollups, whose fast path is
 * one compare when the event lands in the window of the previous one.
 * Allocation happens per chunk (up to 4096 rows), never per row.
 */
#include "shard.h"

#include <errno.h>
#include <string.h>
#include <time.h>

#include "err.h"
#include "mem.h"

memtable *memtable_new(shard *s)
{
	memtable *m = mem_calloc(1, sizeof *m);
	if (!m)
		return NULL;
	arena_init(&m->ar, &s->pool);
	m->rp.ar = &m->ar;
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	m->started_ns = (int64_t)t.tv_sec * TALLY_NS_PER_SEC + t.tv_nsec;
	m->tmin = INT64_MAX;
	m->tmax = INT64_MIN;
	return m;
}

int shard_create(unsigned id, const levels *L, int64_t late_threshold, uint64_t memtable_bytes,
		 shard **out)
{
	shard *s = mem_calloc(1, sizeof *s);
	if (!s)
		return -ENOMEM;
	/* keep enough blocks for the next memtable and one being flushed */
	arena_pool_init(&s->pool, (uint32_t)(2 * memtable_bytes / ARENA_BLOCK + 4));
	if (!(s->active = memtable_new(s))) {
		arena_pool_free(&s->pool);
		mem_free(s);
		return -ENOMEM;
	}
	pthread_rwlockattr_t a;
	pthread_rwlockattr_init(&a);
	/* Queries must not starve writers. */
	pthread_rwlockattr_setkind_np(&a, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&s->lock, &a);
	pthread_rwlockattr_destroy(&a);
	s->id = id;
	s->L = L;
	s->late_threshold = late_threshold;
	*out = s;
	return 0;
}

/* The chunk's rows live in the memtable's arena; only what grows by
 * realloc is its own. */
static void chunk_free(chunk *c)
{
	mem_free(c->cols);
	mem_free(c->arena);
}

static void series_free(series *se, const levels *L)
{
	for (uint32_t i = 0; i < se->n_chunks; i++)
		chunk_free(se->chunks[i]);
	mem_free(se->chunks);
	(void)L;
	for (uint32_t i = 0; i < se->n_rcols; i++)
		mem_free(se->rcols[i]); /* its bucket arrays are in the arena */
	mem_free(se->rcols);
	mem_free(se); /* its key is the catalog's */
}

void memtable_free(memtable *m, const levels *L)
{
	if (!m || atomic_fetch_sub(&m->pins, 1) != 0)
		return; /* a scan still reads it */
	if (m->retired_at)
		atomic_fetch_sub(m->retired_at, m->retired_bytes);
	for (uint32_t t = 0; t < m->cap_tables; t++) {
		stable *st = m->tables[t];
		if (!st)
			continue;
		for (uint32_t i = 0; i < st->n; i++)
			series_free(st->list[i], L);
		mem_free(st->list);
		strmap_free(&st->by_key);
		mem_free(st);
	}
	mem_free(m->tables);
	arena_release(&m->ar);
	mem_free(m);
}

void shard_destroy(shard *s)
{
	if (!s)
		return;
	memtable_free(s->active, s->L);
	for (unsigned i = 0; i < s->n_frozen; i++)
		memtable_free(s->frozen[i], s->L);
	for (uint32_t t = 0; t < s->cap_keystates; t++) {
		strmap *km = &s->keystates[t];
		for (uint32_t i = 0; i < km->cap; i++)
			if (km->slots[i].key)
				mem_free(km->slots[i].value); /* its key is the catalog's */
		strmap_free(km);
	}
	mem_free(s->keystates);
	mem_free(s->key_scratch);
	mem_free(s->row_order);
	mem_free(s->key_count);
	arena_pool_free(&s->pool);
	pthread_rwlock_destroy(&s->lock);
	mem_free(s);
}

stable *mem_table(const memtable *m, const table_def *t)
{
	return t->id < m->cap_tables ? m->tables[t->id] : NULL;
}

series *mem_series(const memtable *m, const table_def *t, const char *key, uint32_t len)
{
	stable *st = mem_table(m, t);
	return st ? strmap_get(&st->by_key, key, len, strmap_hash(key, len)) : NULL;
}

unsigned shard_memtables(const shard *s, const memtable **out)
{
	unsigned n = 0;
	for (unsigned i = 0; i < s->n_frozen; i++)
		out[n++] = s->frozen[i];
	out[n++] = s->active;
	return n;
}

uint64_t shard_events(const shard *s)
{
	uint64_t n = s->flushed_events + s->active->events;
	for (unsigned i = 0; i < s->n_frozen; i++)
		n += s->frozen[i]->events;
	return n;
}

int shard_freeze(shard *s)
{
	if (s->n_frozen == SHARD_FROZEN_MAX)
		return err_set(TALLY_ELIMIT, "shard %u: %d memtables already wait for a flush",
			       s->id, SHARD_FROZEN_MAX);
	/* the frozen records end at a segment boundary, so the trim after
	 * the flush deletes them whole */
	int rc = wal_rotate(s->wal);
	if (rc)
		return rc;
	memtable *n = memtable_new(s);
	if (!n)
		return err_set(-ENOMEM, "out of memory");
	s->active->last_seq = wal_last_seq(s->wal);
	s->frozen[s->n_frozen++] = s->active;
	s->active = n;
	return 0;
}

static stable *table_get(shard *s, memtable *m, table_def *t)
{
	if (t->id >= m->cap_tables) {
		uint32_t ncap = m->cap_tables ? m->cap_tables : 8;
		while (ncap <= t->id)
			ncap *= 2;
		stable **nt = mem_realloc(m->tables, ncap * sizeof *nt);
		if (!nt)
			return NULL;
		memset(nt + m->cap_tables, 0, (ncap - m->cap_tables) * sizeof *nt);
		m->tables = nt;
		m->cap_tables = ncap;
	}
	if (!m->tables[t->id]) {
		stable *st = mem_calloc(1, sizeof *st);
		if (!st)
			return NULL;
		st->def = t;
		m->tables[t->id] = st;
	}
	(void)s;
	return m->tables[t->id];
}

/* The key's state, created on first sight; lives as long as the shard.
 * A key new to the shard goes into the table's key set too (the one copy
 * of its bytes that key states and series point at), which keeps the
 * table's key count current as keys arrive. */
static keystate *keystate_get(shard *s, table_def *t, const char *key, uint32_t len, uint64_t h)
{
	if (t->id >= s->cap_keystates) {
		uint32_t ncap = s->cap_keystates ? s->cap_keystates : 8;
		while (ncap <= t->id)
			ncap *= 2;
		strmap *nk = mem_realloc(s->keystates, ncap * sizeof *nk);
		if (!nk)
			return NULL;
		memset(nk + s->cap_keystates, 0, (ncap - s->cap_keystates) * sizeof *nk);
		s->keystates = nk;
		s->cap_keystates = ncap;
	}
	strmap *km = &s->keystates[t->id];
	keystate *ks = strmap_get(km, key, len, h);
	if (ks)
		return ks;
	const char *copy;
	/* no limit here: the writer checked it before the WAL took the key */
	if (catalog_key(t, key, len, h, 0, &copy))
		return NULL;
	ks = mem_calloc(1, sizeof *ks);
	if (!ks)
		return NULL;
	ks->key = copy;
	ks->len = len;
	ks->hwm = INT64_MIN;
	size_t before = strmap_bytes(km);
	if (strmap_put(km, ks->key, len, h, ks)) {
		mem_free(ks);
		return NULL;
	}
	atomic_fetch_add_explicit(&s->key_bytes, alloc_cost(sizeof *ks) + strmap_bytes(km) - before,
				  memory_order_relaxed);
	return ks;
}

static series *series_get(shard *s, memtable *m, stable *st, const char *key, uint32_t len)
{
	uint64_t h = strmap_hash(key, len);
	series *se = strmap_get(&st->by_key, key, len, h);
	if (se)
		return se;
	uint32_t was = st->cap;
	if (mem_grow(&st->list, &st->cap, st->n + 1, sizeof *st->list, 16))
		return NULL;
	m->rollup_bytes += (st->cap - was) * sizeof *st->list;
	se = mem_calloc(1, sizeof *se);
	if (!se)
		return NULL;
	se->key_len = len;
	se->ks = keystate_get(s, st->def, key, len, h);
	size_t before = strmap_bytes(&st->by_key);
	if (!se->ks || strmap_put(&st->by_key, se->ks->key, len, h, se)) {
		mem_free(se);
		return NULL;
	}
	se->key = se->ks->key;
	m->rollup_bytes += alloc_cost(sizeof *se) + strmap_bytes(&st->by_key) - before;
	st->list[st->n++] = se;
	return se;
}

/* The chunk to append to: the tail, or a new one twice its size. */
static chunk *tail_chunk(memtable *s, series *se)
{
	chunk *c = se->n_chunks ? se->chunks[se->n_chunks - 1] : NULL;
	if (c && c->n < c->cap)
		return c;
	uint32_t cap = c ? c->cap * 2 : CHUNK_ROWS_MIN;
	if (cap > CHUNK_ROWS_MAX)
		cap = CHUNK_ROWS_MAX;
	uint32_t was = se->cap_chunks;
	if (mem_grow(&se->chunks, &se->cap_chunks, se->n_chunks + 1, sizeof *se->chunks, 4))
		return NULL;
	s->mem_bytes += (se->cap_chunks - was) * sizeof *se->chunks;
	chunk *n = arena_alloc(&s->ar, sizeof *n);
	if (!n)
		return NULL;
	memset(n, 0, sizeof *n);
	if (!(n->ts = arena_alloc(&s->ar, cap * sizeof *n->ts)))
		return NULL;
	n->cap = cap;
	n->tmin = INT64_MAX;
	n->tmax = INT64_MIN;
	s->mem_bytes += sizeof *n + cap * sizeof *n->ts;
	se->chunks[se->n_chunks++] = n;
	return n;
}

static chunk_col *chunk_col_get(memtable *s, chunk *c, uint32_t id, int is_str)
{
	if (id >= c->n_cols) {
		uint32_t ncap = c->n_cols ? c->n_cols : 4;
		while (ncap <= id)
			ncap *= 2;
		chunk_col *nc = mem_realloc(c->cols, ncap * sizeof *nc);
		if (!nc)
			return NULL;
		memset(nc + c->n_cols, 0, (ncap - c->n_cols) * sizeof *nc);
		s->mem_bytes += (ncap - c->n_cols) * sizeof *nc;
		c->cols = nc;
		c->n_cols = ncap;
	}
	chunk_col *cc = &c->cols[id];
	if (!cc->present) {
		size_t pb = (c->cap + 63) / 64 * 8;
		cc->present = arena_alloc(&s->ar, pb);
		cc->vals = arena_alloc(&s->ar, c->cap * sizeof *cc->vals);
		if (!cc->present || !cc->vals) {
			cc->present = NULL;
			return NULL;
		}
		memset(cc->present, 0, pb);
		s->mem_bytes += pb + c->cap * sizeof *cc->vals;
	}
	(void)is_str;
	return cc;
}

static int chunk_put_str(memtable *s, chunk *c, const char *p, uint32_t n, uint64_t *ref)
{
	if (!c->arena || c->arena_len + n > c->arena_cap) { /* never NULL, even for "" */
		size_t ncap = c->arena_cap ? c->arena_cap : 256;
		while (ncap < c->arena_len + n)
			ncap *= 2;
		char *na = mem_realloc(c->arena, ncap);
		if (!na)
			return -ENOMEM;
		s->mem_bytes += ncap - c->arena_cap;
		c->arena = na;
		c->arena_cap = ncap;
	}
	memcpy(c->arena + c->arena_len, p, n);
	*ref = ((uint64_t)c->arena_len << 16) | n;
	c->arena_len += n;
	return 0;
}

static rcol *rcol_get(memtable *s, series *se, uint32_t id)
{
	if (id >= se->n_rcols) {
		uint32_t ncap = se->n_rcols ? se->n_rcols : 4;
		while (ncap <= id)
			ncap *= 2;
		rcol **nr = mem_realloc(se->rcols, ncap * sizeof *nr);
		if (!nr)
			return NULL;
		memset(nr + se->n_rcols, 0, (ncap - se->n_rcols) * sizeof *nr);
		s->rollup_bytes += (ncap - se->n_rcols) * sizeof *nr;
		se->rcols = nr;
		se->n_rcols = ncap;
	}
	if (!se->rcols[id]) {
		se->rcols[id] = mem_calloc(1, sizeof(rcol));
		if (!se->rcols[id])
			return NULL;
		s->rollup_bytes += alloc_cost(sizeof(rcol));
	}
	return se->rcols[id];
}

/* Prefetch distances, in keys: the rows of a batch go key by key in key
 * order, and with interleaved sources most keys have a row or a few, so
 * each key's run misses the cache on its tail chunk, the chunk's
 * timestamp slot and column slots. Far ahead the chunk pointer is
 * fetched; nearer, what it points at. */
#define PF_FAR  8
#define PF_NEAR 4

static inline void prefetch_far(const series *se)
{
	if (se->n_chunks)
		__builtin_prefetch(&se->chunks[se->n_chunks - 1]);
	if (se->n_rcols)
		__builtin_prefetch(se->rcols);
}

static inline void prefetch_near(const series *se)
{
	if (!se->n_chunks)
		return;
	const chunk *c = se->chunks[se->n_chunks - 1];
	__builtin_prefetch(c, 1);
	if (c->n < c->cap) {
		__builtin_prefetch(&c->ts[c->n], 1);
		for (uint32_t i = 0; i < c->n_cols && i < 4; i++)
			if (c->cols[i].present) {
				__builtin_prefetch(&c->cols[i].present[c->n >> 6], 1);
				__builtin_prefetch(&c->cols[i].vals[c->n], 1);
			}
	}
}

static int apply_table(shard *s, const tbatch *tb)
{
	memtable *m = s->active;
	stable *st = table_get(s, m, tb->table);
	if (!st)
		return -ENOMEM;
	if (tb->n_keys > s->cap_key_scratch) {
		series **nk = mem_realloc(s->key_scratch, tb->n_keys * sizeof *nk);
		if (!nk)
			return -ENOMEM;
		s->key_scratch = nk;
		s->cap_key_scratch = tb->n_keys;
	}
	series **ks = s->key_scratch;
	for (uint32_t k = 0; k < tb->n_keys; k++) {
		uint32_t len;
		const char *key = tbatch_key(tb, k, &len);
		if (!(ks[k] = series_get(s, m, st, key, len)))
			return -ENOMEM;
	}
	/* The rows grouped by key, each key's in batch order (a counting
	 * sort). Sources interleave (the cameras of a connection take turns
	 * in time order), so in batch order most runs below would be one row
	 * long; grouped, a key's rows of the batch (about five for the
	 * benchmark's 64 KiB reads) make one run and reach the rollups as one
	 * window's aggregate rather than one merge per row per level. */
	if (mem_grow(&s->row_order, &s->cap_row_order, tb->n_rows, sizeof *s->row_order, 1024) ||
	    mem_grow(&s->key_count, &s->cap_key_count, tb->n_keys + 1, sizeof *s->key_count, 256))
		return -ENOMEM;
	uint32_t *ord = s->row_order, *pos = s->key_count;
	if (tb->n_keys == 1) { /* one source's batch (the binary API's): already grouped */
		for (uint32_t r = 0; r < tb->n_rows; r++)
			ord[r] = r;
	} else {
		memset(pos, 0, (tb->n_keys + 1) * sizeof *pos);
		for (uint32_t r = 0; r < tb->n_rows; r++)
			pos[tb->key[r] + 1]++;
		for (uint32_t k = 1; k <= tb->n_keys; k++)
			pos[k] += pos[k - 1];
		for (uint32_t r = 0; r < tb->n_rows; r++)
			ord[pos[tb->key[r]]++] = r;
	}
	uint64_t rbytes0 = m->rp.bytes;
	/* Rows go in runs: rows of one key (consecutive in ord) that fit the
	 * key's tail chunk. A run copies its timestamps and values column by
	 * column, and its numeric values reach the rollups one window at a
	 * time (rollup_add_run). */
	int64_t rts[CHUNK_ROWS_MAX];
	double rv[CHUNK_ROWS_MAX];
	uint32_t pf_key = UINT32_MAX;
	for (uint32_t j = 0; j < tb->n_rows;) {
		uint32_t key = tb->key[ord[j]];
		series *se = ks[key];
		if (key != pf_key) { /* a new key's rows: fetch ahead */
			pf_key = key;
			if (key + PF_FAR < tb->n_keys)
				prefetch_far(ks[key + PF_FAR]);
			if (key + PF_NEAR < tb->n_keys)
				prefetch_near(ks[key + PF_NEAR]);
		}
		chunk *c = tail_chunk(m, se);
		if (!c)
			return -ENOMEM;
		uint32_t room = c->cap - c->n, e = j + 1;
		while (e < tb->n_rows && e - j < room && tb->key[ord[e]] == key)
			e++;
		uint32_t cnt = e - j, base = c->n;
		const uint32_t *run = ord + j;
		for (uint32_t i = 0; i < cnt; i++)
			c->ts[base + i] = tb->ts[run[i]];
		for (uint32_t ci = 0; ci < tb->n_cols; ci++) {
			const bcol *bc = &tb->cols[ci];
			enum tally_type type = bc->def->type;
			chunk_col *cc = NULL;
			uint32_t nv = 0;
			for (uint32_t i = 0; i < cnt; i++) {
				if (!bcol_has(bc, run[i]))
					continue;
				if (!cc &&
				    !(cc = chunk_col_get(m, c, bc->def->id, type_is_string(type))))
					return -ENOMEM;
				bval v = bc->vals[run[i]];
				if (type_is_string(type)) {
					uint32_t len;
					const char *str = tbatch_str(tb, v.ref, &len);
					if (chunk_put_str(m, c, str, len, &v.ref))
						return -ENOMEM;
				} else {
					rts[nv] = tb->ts[run[i]];
					rv[nv++] = bval_num(type, v);
				}
				uint32_t at = base + i;
				cc->present[at >> 6] |= UINT64_C(1) << (at & 63);
				cc->vals[at] = v;
			}
			if (nv) {
				rcol *rc = rcol_get(m, se, bc->def->id);
				if (!rc || rollup_add_run(rc, s->L, rts, rv, nv, &m->rp))
					return -ENOMEM;
			}
		}
		keystate *kst = se->ks;
		for (uint32_t i = 0; i < cnt; i++) {
			int64_t ts = c->ts[base + i];
			c->tmin = ts < c->tmin ? ts : c->tmin;
			c->tmax = ts > c->tmax ? ts : c->tmax;
			if (kst->hwm != INT64_MIN && ts < kst->hwm - s->late_threshold)
				s->late_events++;
			if (ts > kst->hwm)
				kst->hwm = ts;
		}
		m->tmin = c->tmin < m->tmin ? c->tmin : m->tmin;
		m->tmax = c->tmax > m->tmax ? c->tmax : m->tmax;
		c->n = base + cnt;
		se->rows += cnt;
		m->events += cnt;
		j = e;
	}
	m->rollup_bytes += m->rp.bytes - rbytes0;
	return 0;
}

int shard_apply(shard *s, const stage_batch *b)
{
	memtable *m = s->active;
	uint64_t mem0 = m->mem_bytes, roll0 = m->rollup_bytes;
	for (uint32_t i = 0; i < b->n_tb; i++) {
		int rc = apply_table(s, b->tb[i]);
		s->mem_bytes += m->mem_bytes - mem0;
		s->rollup_bytes += m->rollup_bytes - roll0;
		mem0 = m->mem_bytes;
		roll0 = m->rollup_bytes;
		if (rc) {
			s->failed = 1;
			return err_set(rc,
				       "shard %u: out of memory applying a batch; the shard is "
				       "failed and the database must be reopened",
				       s->id);
		}
	}
	return 0;
}
