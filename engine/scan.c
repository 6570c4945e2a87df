/*
 * scan.c — raw scans of one key: a cursor over memtables and parts.
 *
 * A scan never holds its answer. At open it takes, under the shards' read
 * locks, a list of sources: each part holding the key (its stripes are in
 * time order) and each memtable chunk of the key's series (rows in arrival
 * order), each with a pin on its part or memtable so that a flush or a
 * merge that retires it meanwhile leaves it readable until the scan
 * closes. tally_scan_next then merges the sources in a heap keyed by
 * (time, collection order). The one idea: a source enters the heap keyed by
 * a lower bound of its rows (its next stripe's or its chunk's tmin) and is
 * decoded only when that bound reaches the top, one window at a time (a
 * stripe of a part, or the chunk's rows of the snapshot, sorted). So memory
 * is the windows of the sources that overlap the current time, whatever the
 * range, and a reader that stops early (LIMIT) decodes only what it read.
 *
 * A chunk's window is copied under its shard's read lock (the active
 * memtable's chunks grow meanwhile; only the rows there at open are the
 * scan's); a pinned part is immutable and is read without a lock.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "db.h"
#include "err.h"
#include "flush.h"
#include "mem.h"
#include "partset.h"
#include "tagkey.h"

typedef struct scan_src {
	int64_t key;   /* heap order: the current row's time, or a lower bound */
	uint32_t rank; /* collection order (shard, parts, then memtables) */
	int loaded;    /* the window holds the current rows */
	/* a part: its stripes [stripe, end) of the key are still to come */
	shard_part *sp;
	uint32_t stripe, end;
	/* a memtable chunk: se->chunks[chunk], its first n rows */
	shard *sh;
	memtable *mt;
	const series *se;
	uint32_t chunk, n;
	/* the window: rows [pos, n_rows), values n_cols per row, strings in
	 * arena */
	uint32_t n_rows, pos, cap_rows;
	int64_t *ts;
	tally_value *vals;
	char *arena;
	size_t arena_len, arena_cap;
} scan_src;

struct tally_scan {
	tally_db *db;
	col_def **cols;
	size_t n_cols;
	int64_t from, to;
	scan_src *src; /* every source, by rank */
	uint32_t n_src;
	scan_src **heap;
	uint32_t n_heap;
	scan_src *cur; /* the source of the row last returned */
	int failed;    /* sticky error code */
	uint64_t held; /* window bytes counted in db->query_bytes */
	/* decoding a stripe: timestamps, slots and presence */
	int64_t *pts;
	void *pvals;
	uint64_t *ppres;
	uint32_t *order; /* a chunk's rows in time order */
};

/* ---------------------------------------------------------------- heap */

static int src_before(const scan_src *a, const scan_src *b)
{
	return a->key != b->key ? a->key < b->key : a->rank < b->rank;
}

static void heap_down(tally_scan *s, uint32_t i)
{
	for (;;) {
		uint32_t l = 2 * i + 1, m = i;
		if (l < s->n_heap && src_before(s->heap[l], s->heap[m]))
			m = l;
		if (l + 1 < s->n_heap && src_before(s->heap[l + 1], s->heap[m]))
			m = l + 1;
		if (m == i)
			return;
		scan_src *t = s->heap[i];
		s->heap[i] = s->heap[m];
		s->heap[m] = t;
		i = m;
	}
}

/* Drops the top source: it has no more rows. */
static void heap_pop(tally_scan *s)
{
	s->heap[0] = s->heap[--s->n_heap];
	heap_down(s, 0);
}

/* ---------------------------------------------------------------- windows */

/* Room for n rows (and their values) in src's window; counted in
 * db->query_bytes while held. */
static int window_reserve(tally_scan *s, scan_src *src, uint32_t n)
{
	src->n_rows = src->pos = 0;
	src->arena_len = 0;
	if (n <= src->cap_rows)
		return 0;
	size_t per = sizeof *src->ts + s->n_cols * sizeof *src->vals;
	int64_t *ts = mem_realloc(src->ts, n * sizeof *ts);
	if (ts)
		src->ts = ts;
	tally_value *v =
		mem_realloc(src->vals, (size_t)n * (s->n_cols ? s->n_cols : 1) * sizeof *v);
	if (v)
		src->vals = v;
	if (!ts || !v)
		return err_set(-ENOMEM, "out of memory reading a scan's window");
	atomic_fetch_add(&s->db->query_bytes, (n - src->cap_rows) * per);
	s->held += (n - src->cap_rows) * per;
	src->cap_rows = n;
	return 0;
}

static void window_free(tally_scan *s, scan_src *src)
{
	size_t per = sizeof *src->ts + s->n_cols * sizeof *src->vals;
	uint64_t b = src->cap_rows * per + src->arena_cap;
	atomic_fetch_sub(&s->db->query_bytes, b);
	s->held -= b;
	mem_free(src->ts);
	mem_free(src->vals);
	mem_free(src->arena);
	src->ts = NULL;
	src->vals = NULL;
	src->arena = NULL;
	src->cap_rows = 0;
	src->arena_cap = src->arena_len = 0;
	src->n_rows = src->pos = 0;
}

/* Appends a row to the window: its value slots, all "no value". */
static tally_value *window_row(tally_scan *s, scan_src *src, int64_t ts)
{
	tally_value *v = src->vals + (size_t)src->n_rows * s->n_cols;
	src->ts[src->n_rows++] = ts;
	for (size_t i = 0; i < s->n_cols; i++)
		v[i].type = TALLY_T_NONE;
	return v;
}

/* Sets a value slot from an 8-byte slot or a string, copied into the
 * window's arena as an offset until the window is complete. */
static int window_set(tally_scan *s, scan_src *src, tally_value *v, enum tally_type type, bval b,
		      const char *str, size_t len)
{
	v->type = type;
	switch (type) {
	case TALLY_T_F64: v->v.f64 = b.f64; return 0;
	case TALLY_T_I64: v->v.i64 = b.i64; return 0;
	case TALLY_T_U64: v->v.u64 = b.u64; return 0;
	case TALLY_T_BOOL: v->v.b = b.u64 != 0; return 0;
	default: break;
	}
	if (src->arena_len + len > src->arena_cap) {
		size_t nc = src->arena_cap ? src->arena_cap * 2 : 4096;
		while (nc < src->arena_len + len)
			nc *= 2;
		char *na = mem_realloc(src->arena, nc);
		if (!na)
			return err_set(-ENOMEM, "out of memory reading a scan's window");
		atomic_fetch_add(&s->db->query_bytes, nc - src->arena_cap);
		s->held += nc - src->arena_cap;
		src->arena = na;
		src->arena_cap = nc;
	}
	if (len)
		memcpy(src->arena + src->arena_len, str, len);
	v->v.str.ptr = (const char *)(uintptr_t)src->arena_len;
	v->v.str.len = len;
	src->arena_len += len;
	return 0;
}

/* The window is complete: string offsets become pointers. */
static void window_done(tally_scan *s, scan_src *src)
{
	size_t n = (size_t)src->n_rows * s->n_cols;
	for (size_t i = 0; i < n; i++)
		if (type_is_string(src->vals[i].type))
			src->vals[i].v.str.ptr = src->arena + (uintptr_t)src->vals[i].v.str.ptr;
}

/* Fills the window with the rows of a part's next stripe in [from, to)
 * (none when the stripe has none there). */
static int load_stripe(tally_scan *s, scan_src *src)
{
	const part *p = src->sp->p;
	const part_stripe *st = &p->stripes[src->stripe++];
	int rc = 0, absent;
	part_scratch *ps = scratch_get(s->db);
	if (!ps)
		return err_set(-ENOMEM, "out of memory");
	/* a tiered part: the stripe's blocks in one ranged GET */
	part_prefetch_stripe(p, st);
	if ((rc = part_read_col(p, st, -1, ps, s->pts, NULL, &absent)))
		goto out;
	/* the stripe is in time order: the range is one run of it */
	uint32_t lo = 0, hi = st->n_rows;
	while (lo < hi && s->pts[lo] < s->from)
		lo++;
	while (hi > lo && s->pts[hi - 1] >= s->to)
		hi--;
	if ((rc = window_reserve(s, src, hi - lo)) || lo == hi)
		goto out;
	for (uint32_t r = lo; r < hi; r++)
		window_row(s, src, s->pts[r]);
	for (uint32_t pc = 0; pc < p->info.n_cols && !rc; pc++) {
		const col_def *d = src->sp->defs[pc];
		if (!d || d->id >= s->n_cols)
			continue;
		if ((rc = part_read_col(p, st, (int)pc, ps, s->pvals, s->ppres, &absent)) || absent)
			continue;
		const codec_str *strs = s->pvals;
		const bval *b = s->pvals;
		/* strings are copied at once: the next column's decode reuses
		 * the scratch arena */
		for (uint32_t r = lo; r < hi && !rc; r++) {
			if (!((s->ppres[r >> 6] >> (r & 63)) & 1))
				continue;
			tally_value *v = src->vals + (size_t)(r - lo) * s->n_cols + d->id;
			rc = type_is_string(d->type)
				     ? window_set(s, src, v, d->type, (bval){0}, strs[r].p,
						  strs[r].n)
				     : window_set(s, src, v, d->type, b[r], NULL, 0);
		}
	}
	if (!rc)
		window_done(s, src);
out:
	scratch_put(s->db, ps);
	return rc;
}

static int order_cmp(const void *x, const void *y, void *arg)
{
	const int64_t *ts = arg;
	uint32_t a = *(const uint32_t *)x, b = *(const uint32_t *)y;
	if (ts[a] != ts[b])
		return ts[a] < ts[b] ? -1 : 1;
	return (a > b) - (a < b); /* equal times in arrival order */
}

/* Fills the window with the chunk's rows of the snapshot in [from, to),
 * in time order. Under the shard's read lock: the active memtable's
 * chunk may be growing. */
static int load_chunk(tally_scan *s, scan_src *src)
{
	pthread_rwlock_rdlock(&src->sh->lock);
	const chunk *ch = src->se->chunks[src->chunk];
	uint32_t m = 0, sorted = 1;
	for (uint32_t i = 0; i < src->n; i++)
		if (ch->ts[i] >= s->from && ch->ts[i] < s->to) {
			sorted &= !m || ch->ts[s->order[m - 1]] <= ch->ts[i];
			s->order[m++] = i;
		}
	if (!sorted)
		qsort_r(s->order, m, sizeof *s->order, order_cmp, ch->ts);
	int rc = window_reserve(s, src, m);
	for (uint32_t j = 0; j < m && !rc; j++) {
		uint32_t i = s->order[j];
		tally_value *v = window_row(s, src, ch->ts[i]);
		for (size_t ci = 0; ci < s->n_cols && !rc; ci++) {
			const col_def *d = s->cols[ci];
			const chunk_col *cc = d->id < ch->n_cols ? &ch->cols[d->id] : NULL;
			if (!cc || !chunk_has(cc, i))
				continue;
			bval b = cc->vals[i];
			int str = type_is_string(d->type);
			rc = window_set(s, src, &v[ci], d->type, b,
					str ? ch->arena + (b.ref >> 16) : NULL,
					str ? b.ref & 0xffff : 0);
		}
	}
	pthread_rwlock_unlock(&src->sh->lock);
	if (!rc)
		window_done(s, src);
	src->n = 0; /* one window: the chunk is read */
	return rc;
}

/* Loads src's next window; 0 with src->n_rows == 0 when it has no more
 * rows in the range. */
static int load_next(tally_scan *s, scan_src *src)
{
	int rc = 0;
	src->n_rows = src->pos = 0;
	if (src->sp) {
		while (src->stripe < src->end && !src->n_rows && !rc) {
			const part_stripe *st = &src->sp->p->stripes[src->stripe];
			if (st->tmax < s->from || st->tmin >= s->to)
				src->stripe++;
			else
				rc = load_stripe(s, src);
		}
	} else if (src->n) {
		rc = load_chunk(s, src);
	}
	atomic_fetch_add_explicit(&s->db->scan_rows, src->n_rows, memory_order_relaxed);
	return rc;
}

/* The lower bound src enters the heap with before its next window is
 * loaded: a part's next stripe's tmin (stripes are in time order). */
static int64_t next_bound(const tally_scan *s, const scan_src *src)
{
	int64_t t = src->sp ? src->sp->p->stripes[src->stripe].tmin : src->key;
	return t < s->from ? s->from : t;
}

/* ---------------------------------------------------------------- open */

/* Adds the key's sources of one shard, pinned. Caller holds its lock. */
static int add_shard(tally_scan *s, shard *sh, const table_def *t, const char *key, uint32_t kl,
		     uint32_t *cap)
{
	for (uint32_t i = 0; i < sh->n_parts; i++) {
		shard_part *sp = sh->parts[i];
		if (sp->table != t || sp->pend <= s->from || sp->pstart >= s->to)
			continue;
		const part_key *pk = part_find_key(sp->p, key, kl);
		if (!pk || !pk->n_stripes)
			continue;
		if (mem_grow(&s->src, cap, s->n_src + 1, sizeof *s->src, 16))
			return err_set(-ENOMEM, "out of memory");
		atomic_fetch_add(&sp->pins, 1);
		scan_src *src = &s->src[s->n_src];
		*src = (scan_src){.rank = s->n_src,
				  .sp = sp,
				  .stripe = pk->first_stripe,
				  .end = pk->first_stripe + pk->n_stripes};
		s->n_src++;
		src->key = next_bound(s, src);
	}
	const memtable *mts[SHARD_FROZEN_MAX + 1];
	unsigned nm = shard_memtables(sh, mts);
	for (unsigned m = 0; m < nm; m++) {
		const series *se = mem_series(mts[m], t, key, kl);
		for (uint32_t k = 0; se && k < se->n_chunks; k++) {
			const chunk *ch = se->chunks[k];
			if (!ch->n || ch->tmax < s->from || ch->tmin >= s->to)
				continue;
			if (mem_grow(&s->src, cap, s->n_src + 1, sizeof *s->src, 16))
				return err_set(-ENOMEM, "out of memory");
			memtable *mt = (memtable *)mts[m];
			atomic_fetch_add(&mt->pins, 1); /* one pin per source */
			s->src[s->n_src] =
				(scan_src){.key = ch->tmin < s->from ? s->from : ch->tmin,
					   .rank = s->n_src,
					   .sh = sh,
					   .mt = mt,
					   .se = se,
					   .chunk = k,
					   .n = ch->n};
			s->n_src++;
		}
	}
	return 0;
}

static void scan_unpin(tally_scan *s, scan_src *src)
{
	if (src->sp)
		shard_part_free(src->sp); /* drops the pin; frees a retired part */
	else if (src->mt)
		memtable_free(src->mt, src->sh->L);
	src->sp = NULL;
	src->mt = NULL;
	window_free(s, src);
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
	/* raw events before the table's raw horizon are gone: refused, never a
	 * silently shorter scan (engine/retention.c) */
	int rrc = retention_check_raw(db, t, from);
	if (rrc)
		return rrc;
	tally_scan *s = mem_calloc(1, sizeof *s);
	if (!s)
		return err_set(-ENOMEM, "out of memory");
	s->db = db;
	/* ranges are half open: the last stored instant is inside [from, to)
	 * only when to may be one past it */
	s->from = from < TS_ENGINE_MIN   ? TS_ENGINE_MIN
		  : from > TS_ENGINE_MAX ? TS_ENGINE_MAX + 1
					 : from;
	s->to = to < TS_ENGINE_MIN ? TS_ENGINE_MIN : to > TS_ENGINE_MAX ? TS_ENGINE_MAX + 1 : to;
	int rc = 0;
	pthread_mutex_lock(&db->cat.mu);
	s->n_cols = t->n_cols;
	s->cols = mem_alloc((s->n_cols ? s->n_cols : 1) * sizeof *s->cols);
	if (s->cols)
		memcpy(s->cols, t->cols, s->n_cols * sizeof *s->cols);
	pthread_mutex_unlock(&db->cat.mu);
	s->pts = mem_alloc(PART_STRIPE_MAX * sizeof *s->pts);
	/* room for codec_str too: string columns decode here */
	s->pvals = mem_alloc(PART_STRIPE_MAX *
			     (sizeof(codec_str) > sizeof(bval) ? sizeof(codec_str) : sizeof(bval)));
	s->ppres = mem_alloc(PART_STRIPE_MAX / 8);
	s->order = mem_alloc(CHUNK_ROWS_MAX * sizeof *s->order);
	if (!s->cols || !s->pts || !s->pvals || !s->ppres || !s->order) {
		rc = err_set(-ENOMEM, "out of memory opening a scan");
		goto fail;
	}
	/* a subset of the key's tags scans every key holding them, merged
	 * in time order like one key's sources (engine/tagkey.h) */
	tkkeys ks;
	uint32_t cap = 0;
	if ((rc = tkkeys_resolve(t, key, &ks)))
		goto fail;
	/* one instant: every shard's sources are taken under all the locks */
	for (unsigned i = 0; i < db->n_shards; i++)
		pthread_rwlock_rdlock(&db->shards[i]->lock);
	for (unsigned i = 0; i < db->n_shards && !rc; i++)
		for (uint32_t k = 0; k < ks.n && !rc; k++)
			rc = add_shard(s, db->shards[i], t, ks.k[k], ks.l[k], &cap);
	for (unsigned i = 0; i < db->n_shards; i++)
		pthread_rwlock_unlock(&db->shards[i]->lock);
	tkkeys_free(&ks);
	if (rc)
		goto fail;
	s->heap = mem_alloc((s->n_src ? s->n_src : 1) * sizeof *s->heap);
	if (!s->heap) {
		rc = err_set(-ENOMEM, "out of memory opening a scan");
		goto fail;
	}
	for (uint32_t i = 0; i < s->n_src; i++)
		s->heap[s->n_heap++] = &s->src[i];
	for (uint32_t i = s->n_heap / 2; i-- > 0;)
		heap_down(s, i);
	*out = s;
	return 0;
fail:
	tally_scan_close(s);
	return rc;
}

TALLY_API size_t tally_scan_columns(tally_scan *s)
{
	return s->n_cols;
}

TALLY_API int tally_scan_column(tally_scan *s, size_t i, const char **name, enum tally_type *type)
{
	if (i >= s->n_cols)
		return err_set(TALLY_EINVAL, "column %zu of %zu", i, s->n_cols);
	*name = s->cols[i]->name;
	*type = s->cols[i]->type;
	return 0;
}

/* The top source is past its current row: to its next row, its next
 * window's bound, or out of the heap (unpinned at once: a retired part or
 * memtable goes as soon as the scan is past it). */
static void advance(tally_scan *s, scan_src *src)
{
	if (++src->pos < src->n_rows) {
		src->key = src->ts[src->pos];
		heap_down(s, 0);
		return;
	}
	src->loaded = 0;
	if (src->sp && src->stripe < src->end) {
		src->key = next_bound(s, src);
		heap_down(s, 0);
		return;
	}
	heap_pop(s);
	scan_unpin(s, src);
}

TALLY_API int tally_scan_next(tally_scan *s, tally_row *row)
{
	if (s->failed)
		return s->failed;
	if (s->cur) {
		advance(s, s->cur);
		s->cur = NULL;
	}
	while (s->n_heap) {
		scan_src *top = s->heap[0];
		if (top->loaded) {
			row->ts = top->ts[top->pos];
			row->n_values = s->n_cols;
			row->values = top->vals + (size_t)top->pos * s->n_cols;
			s->cur = top;
			return 1;
		}
		int rc = load_next(s, top);
		if (rc) {
			s->failed = rc;
			return rc;
		}
		if (!top->n_rows) {
			heap_pop(s);
			scan_unpin(s, top);
			continue;
		}
		/* the window's first row is at or past the bound it was keyed by */
		top->loaded = 1;
		top->key = top->ts[0];
		heap_down(s, 0);
	}
	return 0;
}

TALLY_API void tally_scan_close(tally_scan *s)
{
	if (!s)
		return;
	for (uint32_t i = 0; i < s->n_src; i++)
		scan_unpin(s, &s->src[i]);
	mem_free(s->src);
	mem_free(s->heap);
	mem_free(s->cols);
	mem_free(s->pts);
	mem_free(s->pvals);
	mem_free(s->ppres);
	mem_free(s->order);
	mem_free(s);
}
