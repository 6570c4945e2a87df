/*
 * query.c — rollup series, exact range aggregates and all-keys answers,
 * of one key, a subset of a table's keys or groups of them (tagkey.h;
 * raw scans: scan.c).
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

#include <stddef.h>

#include "db.h"
#include "err.h"
#include "flush.h"
#include "mem.h"
#include "tagkey.h"

static int resolve(tally_db *db, const char *table, const char *field, table_def **t, col_def **c)
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

/* A range end brought into [TS_ENGINE_MIN, TS_ENGINE_MAX + 1]: ranges are
 * half open, so the last stored instant is inside [from, to) only when to
 * may be one past it (clamping to TS_ENGINE_MAX lost an event there). */
static inline int64_t clamp_ts(int64_t t)
{
	return t < TS_ENGINE_MIN ? TS_ENGINE_MIN : t > TS_ENGINE_MAX ? TS_ENGINE_MAX + 1 : t;
}

/* resolve, and [from, to) brought into the stored range and checked
 * against retention: what an exact aggregate over a range starts with. */
static int resolve_range(tally_db *db, const char *table, const char *field, int64_t *from,
			 int64_t *to, table_def **t, col_def **c)
{
	int rc = resolve(db, table, field, t, c);
	if (rc)
		return rc;
	*from = clamp_ts(*from);
	*to = clamp_ts(*to);
	return retention_check_agg(db, *t, *from, *to);
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

/* ---------------------------------------------------------------- sources */

/* What a query borrows: a part scratch, taken on first use. */
typedef struct qsrc {
	tally_db *db;
	part_scratch *scratch;
} qsrc;

_Static_assert(sizeof(rbucket) == sizeof(part_bucket), "rbucket and part_bucket must match");
_Static_assert(offsetof(rbucket, a.count) == offsetof(part_bucket, count), "layout");
_Static_assert(offsetof(rbucket, a.sum) == offsetof(part_bucket, sum), "layout");
_Static_assert(offsetof(rbucket, a.comp) == offsetof(part_bucket, comp), "layout");
_Static_assert(offsetof(rbucket, a.min) == offsetof(part_bucket, min), "layout");
_Static_assert(offsetof(rbucket, a.max) == offsetof(part_bucket, max), "layout");

static void qsrc_init(qsrc *q, tally_db *db)
{
	memset(q, 0, sizeof *q);
	q->db = db;
}

static void qsrc_free(qsrc *q)
{
	if (q->scratch)
		scratch_put(q->db, q->scratch);
	memset(q, 0, sizeof *q);
}

static part_scratch *qsrc_scratch(qsrc *q)
{
	if (!q->scratch)
		q->scratch = scratch_get(q->db);
	return q->scratch;
}

/* Where a part keeps the rollups of key and column c: 0 when it has none. */
static int part_rollup_ref(const shard_part *sp, const char *key, uint32_t kl, const col_def *c,
			   const part_key **pk, uint32_t *num)
{
	int pc = shard_part_col(sp, c);
	if (pc < 0 || sp->p->info.num_of[pc] < 0)
		return 0;
	*pk = part_find_key(sp->p, key, kl);
	*num = (uint32_t)sp->p->info.num_of[pc];
	return *pk != NULL;
}

/* ---------------------------------------------------------------- series */

/* A series sums every source (each shard's memtables and parts) straight
 * into an accumulator per window, a part's cached rollup read in place
 * (copying whole rollups into a k-way merge was most of a series over
 * data in parts). Windows are summed this many at a time, so the
 * accumulators stay small for any range. */
#define SERIES_CHUNK 4096

typedef struct wfold {
	int64_t from, to, step; /* from and to on window boundaries */
	ragg *win;              /* (to - from) / step windows */
} wfold;

/* Start of window i. Unsigned: a chunk of wide windows may span more
 * than half of int64 (from - to does not fit), though every start in it
 * does. */
static inline int64_t wfold_start(const wfold *w, uint64_t i)
{
	return (int64_t)((uint64_t)w->from + i * (uint64_t)w->step);
}

/* Adds a source's buckets with start in [from, to) to their windows. */
static void wfold_add(const rbucket *b, uint32_t n, wfold *w)
{
	size_t wi = 0;
	int64_t wend = w->from + w->step;
	for (uint32_t i = bucket_lower(b, n, w->from); i < n && b[i].start < w->to; i++) {
		if (b[i].start >= wend) {
			if (b[i].start < wend + w->step) { /* the next window: no division */
				wi++;
				wend += w->step;
			} else {
				wi = (size_t)(((uint64_t)b[i].start - (uint64_t)w->from) /
					      (uint64_t)w->step);
				wend = wfold_start(w, wi + 1);
			}
		}
		ragg_merge(&w->win[wi], &b[i].a);
	}
}

static void wfold_part(const part_bucket *b, uint32_t n, void *arg)
{
	wfold_add((const rbucket *)b, n, arg);
}

/* What a series reads: the key's column at one rollup level. */
typedef struct series_q {
	const table_def *t;
	const col_def *c;
	const tkkeys *ks; /* summed together */
	int li;
} series_q;

/* The memtable's buckets of key k of the series, or NULL. */
static const rlevel *mem_level(const memtable *mt, const series_q *q, uint32_t k)
{
	const rcol *r = series_rcol(mem_series(mt, q->t, q->ks->k[k], q->ks->l[k]), q->c->id);
	return r ? &r->lv[q->li] : NULL;
}

/* Shrinks [*from, *to) to the windows the sources can have buckets in
 * (an open range over a few days of data need not walk empty windows). */
static void series_extent(tally_db *db, const series_q *q, int64_t step, int64_t *from, int64_t *to)
{
	int64_t lo = INT64_MAX, hi = INT64_MIN; /* first and last bucket start */
	for (unsigned s = 0; s < db->n_shards; s++) {
		const shard *sh = db->shards[s];
		const memtable *mt[SHARD_FROZEN_MAX + 1];
		unsigned nm = shard_memtables(sh, mt);
		for (unsigned m = 0; m < nm; m++)
			for (uint32_t k = 0; k < q->ks->n; k++) {
				const rlevel *lv = mem_level(mt[m], q, k);
				if (!lv || !lv->n)
					continue;
				lo = lv->b[0].start < lo ? lv->b[0].start : lo;
				hi = lv->b[lv->n - 1].start > hi ? lv->b[lv->n - 1].start : hi;
			}
		for (uint32_t i = 0; i < sh->n_parts; i++) {
			const shard_part *sp = sh->parts[i];
			if (sp->table != q->t)
				continue;
			lo = sp->pstart < lo ? sp->pstart : lo;
			hi = sp->pend - 1 > hi ? sp->pend - 1 : hi;
		}
	}
	if (lo > hi) {
		*to = *from;
		return;
	}
	/* from is on a window boundary; keep it on one (unsigned: the engine's
	 * range is wider than half of int64) */
	if (lo > *from)
		*from = (int64_t)((uint64_t)*from + ((uint64_t)lo - (uint64_t)*from) /
							    (uint64_t)step * (uint64_t)step);
	if (hi + 1 < *to)
		*to = hi + 1;
}

/* One chunk of at most SERIES_CHUNK windows from w->from: every source
 * folded in, then the windows with events appended to out (up to cap;
 * *n counts them all). */
static int series_chunk(tally_db *db, const series_q *q, part_scratch *ps, wfold *w, size_t nwin,
			tally_bucket *out, size_t cap, size_t *n)
{
	for (size_t i = 0; i < nwin; i++)
		ragg_init(&w->win[i]);
	for (unsigned s = 0; s < db->n_shards; s++) {
		const shard *sh = db->shards[s];
		const memtable *mt[SHARD_FROZEN_MAX + 1];
		unsigned nm = shard_memtables(sh, mt);
		for (unsigned m = 0; m < nm; m++)
			for (uint32_t k = 0; k < q->ks->n; k++) {
				const rlevel *lv = mem_level(mt[m], q, k);
				if (lv)
					wfold_add(lv->b, lv->n, w);
			}
		for (uint32_t i = 0; i < sh->n_parts; i++) {
			const shard_part *sp = sh->parts[i];
			if (sp->table != q->t || sp->pend <= w->from || sp->pstart >= w->to)
				continue;
			for (uint32_t k = 0; k < q->ks->n; k++) {
				const part_key *pk;
				uint32_t num;
				if (!part_rollup_ref(sp, q->ks->k[k], q->ks->l[k], q->c, &pk, &num))
					continue;
				/* the cache has its own mutex: the part itself is const */
				int rc = shard_part_rollup_each((shard_part *)sp, pk, num,
								(unsigned)q->li, ps, wfold_part, w);
				if (rc)
					return rc;
			}
		}
	}
	for (size_t i = 0; i < nwin; i++) {
		if (!w->win[i].count)
			continue;
		if (*n < cap) {
			out[*n].start = wfold_start(w, i);
			ragg_to_public(&w->win[i], &out[*n].agg);
		}
		(*n)++;
	}
	return 0;
}

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
	const levels *L = &db->L;
	if (step <= 0 || step % L->w[0])
		return err_set(TALLY_EINVAL,
			       "step %lld ns is not a multiple of the finest level "
			       "(%lld ns)",
			       (long long)step, (long long)L->w[0]);
	if (step > LEVEL_WIDTH_MAX)
		return err_set(TALLY_EINVAL, "step %lld ns too large", (long long)step);
	int li = 0;
	for (unsigned i = 0; i < L->n; i++)
		if (step % L->w[i] == 0)
			li = (int)i;
	/* Windows that start in [window_start(from), to): to is taken as it
	 * is (a to below the first stored instant may still be past the start
	 * of that instant's window), only lowered to one past the last; from's
	 * window is found without overflow, and one below the first stored
	 * instant's window holds nothing that one would not. */
	from = from < TS_ENGINE_MIN ? window_start(TS_ENGINE_MIN, step, L->offset)
				    : window_start_any(from, step, L->offset);
	to = to > TS_ENGINE_MAX ? TS_ENGINE_MAX + 1 : to;
	if ((rc = retention_check_level(db, t, li, from)))
		return rc;
	tkkeys ks;
	if ((rc = tkkeys_resolve(t, key, &ks)))
		return rc;
	series_q q = {t, c, &ks, li};
	part_scratch *ps = scratch_get(db);
	if (!ps || codec_buf_reserve(&ps->windows, SERIES_CHUNK * sizeof(ragg))) {
		if (ps)
			scratch_put(db, ps);
		tkkeys_free(&ks);
		return err_set(-ENOMEM, "out of memory");
	}
	/* All shards read-locked: the answer is one consistent cut. Every
	 * window that starts before to counts whole, the last one too. */
	size_t n = 0;
	rdlock_all(db);
	series_extent(db, &q, step, &from, &to);
	while (from < to && !rc) {
		uint64_t left = ((uint64_t)to - (uint64_t)from - 1) / (uint64_t)step + 1;
		size_t nwin = left < SERIES_CHUNK ? (size_t)left : SERIES_CHUNK;
		int64_t end = (int64_t)((uint64_t)from + (uint64_t)nwin * (uint64_t)step);
		wfold w = {from, end, step, (ragg *)(void *)ps->windows.p};
		rc = series_chunk(db, &q, ps, &w, nwin, out, cap, &n);
		from = w.to;
	}
	unlock_all(db);
	scratch_put(db, ps);
	tkkeys_free(&ks);
	if (rc)
		return rc;
	*n_out = n;
	if (n > cap)
		return err_set(TALLY_ETRUNC, "%zu windows, buffer holds %zu", n, cap);
	return 0;
}

/* ---------------------------------------------------------------- exact */

/*
 * What cover() reads from: a memtable series (buckets and chunks in
 * memory) or a part's key (whole windows summed from the decoded-rollup
 * cache, and stripes decoded only where an edge falls, only as far as it
 * needs).
 */
typedef struct cview {
	const series *se;
	const shard_part *sp;
	const part_key *pk;
	const col_def *c;
	int pc;       /* part column */
	uint32_t num; /* part numeric column */
	qsrc *q;      /* owns the scratch */
	int rc;
} cview;

/* The first of the n ascending times that is >= t (n when none is). */
static uint32_t ts_lower(const int64_t *ts, uint32_t n, int64_t t)
{
	uint32_t lo = 0, hi = n;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (ts[mid] < t)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* Raw rows of the view in [a, b): the unaligned edges. */
static void raw_agg(cview *v, int64_t a, int64_t b, ragg *acc)
{
	const col_def *c = v->c;
	if (v->se) {
		const series *se = v->se;
		for (uint32_t k = 0; k < se->n_chunks; k++) {
			const chunk *ch = se->chunks[k];
			if (ch->tmax < a || ch->tmin >= b || c->id >= ch->n_cols)
				continue;
			const chunk_col *cc = &ch->cols[c->id];
			if (!cc->present)
				continue;
			for (uint32_t i = 0; i < ch->n; i++)
				if (ch->ts[i] >= a && ch->ts[i] < b && chunk_has(cc, i))
					ragg_add(acc, bval_num(c->type, cc->vals[i]));
		}
		return;
	}
	const part *p = v->sp->p;
	for (uint32_t k = 0; k < v->pk->n_stripes && !v->rc; k++) {
		const part_stripe *st = &p->stripes[v->pk->first_stripe + k];
		if (st->tmax < a || st->tmin >= b)
			continue;
		/* the stripe's times, values and presence, in the borrowed scratch
		 * (8-byte times and values: see the assertion below raw_agg) */
		part_scratch *ps = qsrc_scratch(v->q);
		enum {
			TS_OFF = 0,
			VALS_OFF = PART_STRIPE_MAX * 8,
			PRES_OFF = PART_STRIPE_MAX * 16
		};
		if (!ps || codec_buf_reserve(&ps->rows, PRES_OFF + PART_STRIPE_MAX / 8)) {
			v->rc = err_set(-ENOMEM, "out of memory");
			return;
		}
		int64_t *ts = (int64_t *)(void *)(ps->rows.p + TS_OFF);
		bval *vals = (bval *)(void *)(ps->rows.p + VALS_OFF);
		uint64_t *present = (uint64_t *)(void *)(ps->rows.p + PRES_OFF);
		int absent;
		uint32_t got, i0, i1;
		/* An edge is under one finest bucket: decode the times only up to
		 * b, and the values only up to the last row in [a, b). */
		if ((v->rc = part_read_col_head(p, st, -1, ps, ts, NULL, 0, b, &got, &absent)))
			return;
		i1 = ts_lower(ts, got, b);
		i0 = ts_lower(ts, i1, a);
		if (i0 == i1)
			continue;
		if ((v->rc = part_read_col_head(p, st, v->pc, ps, vals, present, i1, INT64_MIN,
						&got, &absent)) ||
		    absent)
			continue;
		for (uint32_t i = i0; i < i1; i++)
			if ((present[i >> 6] >> (i & 63)) & 1)
				ragg_add(acc, bval_num(c->type, vals[i]));
	}
}

_Static_assert(sizeof(bval) == 8 && sizeof(int64_t) == 8, "raw_agg lays out 8-byte slots");

/* Whole buckets of level li inside [a, b), a and b aligned to it. */
static void bucket_agg(cview *v, int li, int64_t a, int64_t b, ragg *acc)
{
	const rbucket *bk;
	uint32_t n;
	if (v->se) {
		const rlevel *lv = &series_rcol(v->se, v->c->id)->lv[li];
		bk = lv->b;
		n = lv->n;
	} else {
		part_scratch *ps = qsrc_scratch(v->q);
		if (!ps) {
			v->rc = err_set(-ENOMEM, "out of memory");
			return;
		}
		/* the cache is guarded by its own mutex: the part itself is const */
		v->rc = shard_part_rollup_fold((shard_part *)v->sp, v->pk, v->num, (unsigned)li, ps,
					       a, b, acc);
		return;
	}
	for (uint32_t i = bucket_lower(bk, n, a); i < n && bk[i].start < b; i++)
		ragg_merge(acc, &bk[i].a);
}

static void cover(cview *v, const levels *L, int li, int64_t a, int64_t b, ragg *acc)
{
	while (a < b && !v->rc) {
		if (li < 0) {
			raw_agg(v, a, b, acc);
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
		bucket_agg(v, li, A, B, acc);
		cover(v, L, li - 1, a, A, acc);
		a = B; /* the right edge, with the finer levels */
		li--;
	}
}

/* The exact aggregate of a memtable series over [a, b). */
static void cover_series(const series *se, const col_def *c, const levels *L, int64_t a, int64_t b,
			 ragg *acc)
{
	if (!series_rcol(se, c->id))
		return; /* no value of this field for this key */
	cview v = {.se = se, .c = c};
	cover(&v, L, (int)L->n - 1, a, b, acc);
}

/* The exact aggregate of a part's key over [a, b), clipped to the part's
 * partition (it holds nothing outside). */
static int cover_part(qsrc *q, const shard_part *sp, const part_key *pk, const col_def *c,
		      const levels *L, int64_t a, int64_t b, ragg *acc)
{
	int pc = shard_part_col(sp, c);
	if (pc < 0 || sp->p->info.num_of[pc] < 0)
		return 0;
	a = a < sp->pstart ? sp->pstart : a;
	b = b > sp->pend ? sp->pend : b;
	if (a >= b || pk->tmax < a || pk->tmin >= b)
		return 0;
	cview v = {.sp = sp, .pk = pk, .c = c, .pc = pc, .q = q};
	v.num = (uint32_t)sp->p->info.num_of[pc];
	cover(&v, L, (int)L->n - 1, a, b, acc);
	return v.rc;
}

TALLY_API int tally_query_agg(tally_db *db, const char *table, const char *field, const char *key,
			      int64_t from, int64_t to, tally_agg *out)
{
	err_clear();
	table_def *t = NULL;
	col_def *c = NULL;
	int rc = resolve_range(db, table, field, &from, &to, &t, &c);
	if (rc)
		return rc;
	tkkeys ks;
	if ((rc = tkkeys_resolve(t, key, &ks)))
		return rc;
	ragg acc;
	ragg_init(&acc);
	qsrc q;
	qsrc_init(&q, db);
	for (unsigned s = 0; s < db->n_shards && !rc; s++) {
		shard *sh = db->shards[s];
		pthread_rwlock_rdlock(&sh->lock);
		const memtable *mt[SHARD_FROZEN_MAX + 1];
		unsigned nm = shard_memtables(sh, mt);
		for (unsigned m = 0; m < nm; m++)
			for (uint32_t k = 0; k < ks.n; k++) {
				const series *se = mem_series(mt[m], t, ks.k[k], ks.l[k]);
				if (se)
					cover_series(se, c, &db->L, from, to, &acc);
			}
		for (uint32_t i = 0; i < sh->n_parts && !rc; i++) {
			const shard_part *sp = sh->parts[i];
			if (sp->table != t || sp->pend <= from || sp->pstart >= to)
				continue;
			for (uint32_t k = 0; k < ks.n && !rc; k++) {
				const part_key *pk = part_find_key(sp->p, ks.k[k], ks.l[k]);
				if (pk)
					rc = cover_part(&q, sp, pk, c, &db->L, from, to, &acc);
			}
		}
		pthread_rwlock_unlock(&sh->lock);
	}
	qsrc_free(&q);
	tkkeys_free(&ks);
	if (rc)
		return rc;
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
	tally_db *db;
	uint64_t held; /* bytes counted in db->query_bytes */
};

/* Counts n more bytes of the answer under the memory limit, or refuses
 * them: an all-keys answer over a million keys is tens of MB. */
static int keys_hold(tally_keys_iter *it, uint64_t n)
{
	uint64_t mem = db_memory(it->db);
	if (mem + n > it->db->opt.memory_limit)
		return err_set(TALLY_EFULL,
			       "keys: the answer needs %llu more bytes, past the memory limit "
			       "(%llu of %llu bytes held)",
			       (unsigned long long)n, (unsigned long long)mem,
			       (unsigned long long)it->db->opt.memory_limit);
	atomic_fetch_add(&it->db->query_bytes, n);
	it->held += n;
	return 0;
}

static int key_cmp(const void *x, const void *y)
{
	const key_agg *a = x, *b = y;
	uint32_t n = a->len < b->len ? a->len : b->len;
	int c = memcmp(a->key, b->key, n);
	return c ? c : (a->len > b->len) - (a->len < b->len);
}

/* Collects (key, aggregate) pairs; keys are copied into the iterator's
 * arena as offsets, turned into pointers once the arena stops moving. */
typedef struct keys_acc {
	tally_keys_iter *it;
	size_t cap, arena_len, arena_cap;
	const table_def *t;
	const tkfilter *f; /* NULL: every key */
	const tkgroup *g;  /* NULL: per key */
	tkbuf gkey;
} keys_acc;

/* 1 when key is one the query asks for. */
static int keys_want(const keys_acc *ka, const char *key, uint32_t len)
{
	return !ka->f || tagkey_match(ka->t, key, len, ka->f);
}

static int keys_push(keys_acc *ka, const char *key, uint32_t len, const ragg *a)
{
	tally_keys_iter *it = ka->it;
	if (!a->count)
		return 0;
	if (ka->g) { /* the answer's key is the group's */
		int rc = tagkey_group_key(ka->t, key, len, ka->g, &ka->gkey);
		if (rc)
			return rc;
		key = ka->gkey.p;
		len = ka->gkey.n;
	}
	if (it->n == ka->cap) {
		size_t ncap = ka->cap ? ka->cap * 2 : 64;
		int rc = keys_hold(it, (ncap - ka->cap) * sizeof *it->v);
		if (rc)
			return rc;
		key_agg *nv = mem_realloc(it->v, ncap * sizeof *nv);
		if (!nv)
			return err_set(-ENOMEM, "out of memory");
		it->v = nv;
		ka->cap = ncap;
	}
	if (!it->arena || ka->arena_len + len > ka->arena_cap) {
		size_t ncap = ka->arena_cap ? ka->arena_cap * 2 : 4096;
		while (ncap < ka->arena_len + len)
			ncap *= 2;
		int rc = keys_hold(it, ncap - ka->arena_cap);
		if (rc)
			return rc;
		char *na = mem_realloc(it->arena, ncap);
		if (!na)
			return err_set(-ENOMEM, "out of memory");
		it->arena = na;
		ka->arena_cap = ncap;
	}
	memcpy(it->arena + ka->arena_len, key, len);
	it->v[it->n++] = (key_agg){(const char *)(uintptr_t)ka->arena_len, len, *a};
	ka->arena_len += len;
	return 0;
}

/* Every key of t the filter (NULL: all) asks for, aggregated over
 * [from, to) into it, per key or per group (g NULL: per key), sorted. */
static int keys_collect(tally_db *db, table_def *t, const col_def *c, int64_t from, int64_t to,
			const tkfilter *f, const tkgroup *g, tally_keys_iter *it)
{
	int rc = 0;
	keys_acc ka = {.it = it, .t = t, .f = f, .g = g};
	qsrc q;
	qsrc_init(&q, db);
	rdlock_all(db);
	for (unsigned s = 0; s < db->n_shards && !rc; s++) {
		const shard *sh = db->shards[s];
		const memtable *mt[SHARD_FROZEN_MAX + 1];
		unsigned nm = shard_memtables(sh, mt);
		for (unsigned m = 0; m < nm && !rc; m++) {
			const stable *st = mem_table(mt[m], t);
			for (uint32_t k = 0; st && k < st->n && !rc; k++) {
				const series *se = st->list[k];
				if (!keys_want(&ka, se->key, se->key_len))
					continue;
				ragg a;
				ragg_init(&a);
				cover_series(se, c, &db->L, from, to, &a);
				rc = keys_push(&ka, se->key, se->key_len, &a);
			}
		}
		for (uint32_t i = 0; i < sh->n_parts && !rc; i++) {
			const shard_part *sp = sh->parts[i];
			if (sp->table != t || sp->pend <= from || sp->pstart >= to)
				continue;
			for (uint32_t k = 0; k < sp->p->n_keys && !rc; k++) {
				const part_key *pk = &sp->p->keys[k];
				if (!keys_want(&ka, pk->key, pk->len))
					continue;
				ragg a;
				ragg_init(&a);
				if (!(rc = cover_part(&q, sp, pk, c, &db->L, from, to, &a)))
					rc = keys_push(&ka, pk->key, pk->len, &a);
			}
		}
	}
	unlock_all(db);
	qsrc_free(&q);
	tkbuf_free(&ka.gkey);
	if (rc)
		return rc;
	for (size_t i = 0; i < it->n; i++)
		it->v[i].key = it->arena + (uintptr_t)it->v[i].key;
	if (it->n)
		qsort(it->v, it->n, sizeof *it->v, key_cmp);
	/* A key written through several shards appears once per shard, and a
	 * group once per key in it: merge. */
	size_t w = 0;
	for (size_t i = 0; i < it->n; i++) {
		if (w && key_cmp(&it->v[w - 1], &it->v[i]) == 0)
			ragg_merge(&it->v[w - 1].a, &it->v[i].a);
		else
			it->v[w++] = it->v[i];
	}
	it->n = w;
	return 0;
}

TALLY_API int tally_query_group(tally_db *db, const char *table, const char *field, const char *key,
				const char *group, int64_t from, int64_t to, tally_keys_iter **out)
{
	err_clear();
	*out = NULL;
	table_def *t = NULL;
	col_def *c = NULL;
	int rc = resolve_range(db, table, field, &from, &to, &t, &c);
	if (rc)
		return rc;
	tkfilter f = {0};
	tkgroup g = {0};
	if ((key && (rc = tagkey_filter(t, key, &f))) ||
	    (group && (rc = tagkey_group(t, group, &g))))
		goto done;
	tally_keys_iter *it = mem_calloc(1, sizeof *it);
	if (!it) {
		rc = err_set(-ENOMEM, "out of memory");
		goto done;
	}
	it->db = db;
	if ((rc = keys_collect(db, t, c, from, to, key ? &f : NULL, group ? &g : NULL, it)))
		tally_keys_close(it);
	else
		*out = it;
done:
	tagkey_filter_free(&f);
	tagkey_group_free(&g);
	return rc;
}

TALLY_API int tally_query_keys(tally_db *db, const char *table, const char *field, int64_t from,
			       int64_t to, tally_keys_iter **out)
{
	return tally_query_group(db, table, field, NULL, NULL, from, to, out);
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
	if (it->held)
		atomic_fetch_sub(&it->db->query_bytes, it->held);
	mem_free(it->v);
	mem_free(it->arena);
	mem_free(it->cur);
	mem_free(it);
}
