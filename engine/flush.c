/*
 * flush.c — turning frozen memtables into parts, and parts into queryable
 * shard state.
 *
 * A flush writes one part per (table, partition) the memtable touched: keys
 * in byte order, each key's rows sorted by time and cut into stripes, and
 * the key's rollup buckets of that partition, taken straight from the
 * memtable (windows never straddle partitions, so no bucket is split). The
 * parts are fsynced and renamed, the manifest is replaced naming them and
 * the shard's new flushed_seq, and only then, under the shard lock in one
 * step, do the parts replace the memtable for queries and the WAL is
 * trimmed. A crash anywhere leaves either the old manifest (the parts are
 * orphans, deleted at open, and the WAL still holds every event) or the new
 * one (the WAL records up to flushed_seq are skipped): exactly once.
 */
#include "flush.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "arena.h"
#include "db.h"
#include "err.h"
#include "log.h"
#include "manifest.h"
#include "mem.h"
#include "tier.h"

/* ---------------------------------------------------------------- parts */

int shard_part_col(const shard_part *sp, const col_def *def)
{
	for (uint32_t i = 0; i < sp->p->info.n_cols; i++)
		if (sp->defs[i] == def)
			return (int)i;
	return -1;
}

void shard_part_free(shard_part *sp)
{
	if (!sp)
		return;
	if (sp->rc) {
		tally_db *db = sp->db;
		pthread_mutex_lock(&db->rc_mu);
		/* forget the ring's entries of this part (their bytes come back
		 * when the ring reuses their block); eviction skips them */
		for (uint32_t i = 0; i < db->rc_len; i++) {
			struct rc_ent *e = &db->rc_ring[(db->rc_head + i) % db->rc_cap];
			if (e->sp == sp) {
				db->rc_bytes -= e->bytes;
				e->sp = NULL;
			}
		}
		pthread_mutex_unlock(&db->rc_mu);
		mem_free(sp->rc);
	}
	part_close(sp->p);
	mem_free(sp->defs);
	mem_free(sp->object);
	mem_free(sp);
}

int shard_part_load(tally_db *db, uint64_t id, shard_part **out)
{
	*out = NULL;
	char path[PATH_MAX], name[64];
	manifest_part_name(id, name, sizeof name);
	snprintf(path, sizeof path, "%s/%s", db->dir, name);
	/* a tiered part opens from its stub, which is durable before the
	 * manifest says "remote"; a whole part still on disk is the fallback */
	const manifest_part *mp = manifest_find(&db->man, id);
	int remote = mp && mp->tier == MTIER_REMOTE;
	if (remote) {
		tier_local_path(db, id, 1, path, sizeof path);
		if (access(path, F_OK))
			snprintf(path, sizeof path, "%s/%s", db->dir, name);
	}
	shard_part *sp = mem_calloc(1, sizeof *sp);
	if (!sp)
		return err_set(-ENOMEM, "out of memory");
	int rc = part_open(path, &sp->p);
	if (rc)
		goto fail;
	if (remote && (rc = tier_attach(db, sp, mp)))
		goto fail;
	const part_info *in = &sp->p->info;
	sp->id = id;
	sp->db = db;
	sp->pstart = in->partition_start;
	sp->pend = in->partition_start + in->partition_width;
	if (in->n_levels != db->L.n || in->align_offset != db->L.offset ||
	    memcmp(in->levels, db->L.w, db->L.n * sizeof *db->L.w)) {
		rc = err_set(TALLY_EINVAL,
			     "%s: written with other rollup levels or alignment than the database "
			     "is opened with",
			     path);
		goto fail;
	}
	uint32_t kl = in->key_tag ? (uint32_t)strlen(in->key_tag) : 0;
	rc = catalog_table(&db->cat, in->table, (uint32_t)strlen(in->table),
			   strmap_hash(in->table, strlen(in->table)), in->key_tag, kl, &sp->table);
	if (rc)
		goto fail;
	sp->defs = mem_calloc(in->n_cols ? in->n_cols : 1, sizeof *sp->defs);
	if (!sp->defs) {
		rc = err_set(-ENOMEM, "out of memory");
		goto fail;
	}
	for (uint32_t c = 0; c < in->n_cols; c++) {
		const part_col *pc = &in->cols[c];
		rc = catalog_column(&db->cat, sp->table, pc->name, pc->len,
				    strmap_hash(pc->name, pc->len), (enum tally_type)pc->type,
				    &sp->defs[c]);
		if (rc) {
			err_prefix(rc, "%s", path);
			goto fail;
		}
	}
	*out = sp;
	return 0;
fail:
	shard_part_free(sp);
	return rc;
}

int shard_add_part(shard *s, shard_part *sp)
{
	if (s->n_parts == s->cap_parts) {
		uint32_t nc = s->cap_parts ? s->cap_parts * 2 : 16;
		shard_part **np = mem_realloc(s->parts, nc * sizeof *np);
		if (!np)
			return err_set(-ENOMEM, "out of memory");
		s->parts = np;
		s->cap_parts = nc;
	}
	s->parts[s->n_parts++] = sp;
	return 0;
}

/* ---------------------------------------------------------------- cache */

/*
 * The cache's memory. Entries are laid one after another in 2 MiB blocks,
 * each faulted in when mapped (arena_block_new): on this project's VM the
 * first touch of a fresh page costs about 13 us, and copying a 288-bucket
 * rollup (13.8 KiB) into malloc'ed memory, always fresh while the cache
 * grows, was 45 us of a 65 us cold series query; into a populated block
 * it is 0.6 us. Eviction is oldest first, the order entries are laid in,
 * so when every block is mapped and the filling one is full, the next
 * block in the ring holds the oldest entries: they are evicted and the
 * block is filled again. An entry dropped earlier (evicted for the
 * budget, or with its part) leaves a hole until then. Memory: the budget
 * rounded down to whole blocks, at least one, and up to RC_READY blocks
 * made ready ahead.
 *
 * A block is made ready off the query path: mapping and faulting one in
 * took about 1.6 ms a block in bench_storage after its ingest (the kernel
 * compacting memory for the huge page), some 10 us a cold entry. So the
 * flusher thread keeps RC_READY blocks in rc_pool while the ring is still
 * growing (rc_prepare), and a query maps one itself only when the pool
 * is empty.
 */

/* The most blocks the ring maps: its budget in whole blocks, at least one. */
static uint32_t rc_blocks_most(const tally_db *db)
{
	uint64_t most = db->rc_limit / ARENA_BLOCK;
	return most < 1 ? 1 : most > UINT32_MAX ? UINT32_MAX : (uint32_t)most;
}

void rc_prepare(tally_db *db)
{
	if (!db->rc_limit)
		return;
	for (;;) {
		pthread_mutex_lock(&db->rc_mu);
		/* blocks the ring may still map: until their budget is mapped */
		uint32_t left = db->rc_blk ? db->rc_nblk_max - db->rc_nblk : rc_blocks_most(db);
		pthread_mutex_unlock(&db->rc_mu);
		uint32_t ready = arena_pool_count(&db->rc_pool);
		if (ready >= RC_READY || ready >= left || !arena_pool_prefill_one(&db->rc_pool))
			return;
	}
}

/* Drops the oldest entry. Caller holds rc_mu. */
static void rc_evict_one(tally_db *db)
{
	struct rc_ent *e = &db->rc_ring[db->rc_head];
	if (e->sp) {
		e->sp->rc[e->idx] = NULL;
		db->rc_bytes -= e->bytes;
	}
	db->rc_head = (db->rc_head + 1) % db->rc_cap;
	db->rc_len--;
}

/* Drops the oldest entries until the cache fits its budget. */
static void rc_evict(tally_db *db)
{
	while (db->rc_len && (db->rc_bytes > db->rc_limit || db->rc_len == db->rc_cap))
		rc_evict_one(db);
}

/* Room for n bytes (16-byte multiple, at most a block) in the filling
 * block, else in the next one: a new block while fewer than the most are
 * mapped, else the ring's next, emptied of its (oldest) entries. Sets
 * *blk; NULL when no block can be had. Caller holds rc_mu. */
static void *rc_alloc(tally_db *db, size_t n, uint32_t *blk)
{
	if (db->rc_nblk && db->rc_off + n <= ARENA_BLOCK) {
		*blk = db->rc_cur;
		void *p = db->rc_blk[db->rc_cur] + db->rc_off;
		db->rc_off += n;
		return p;
	}
	if (!db->rc_blk) {
		db->rc_nblk_max = rc_blocks_most(db);
		if (!(db->rc_blk = mem_calloc(db->rc_nblk_max, sizeof *db->rc_blk)))
			return NULL;
	}
	char *b = NULL;
	if (db->rc_nblk < db->rc_nblk_max) {
		if ((b = arena_pool_take(&db->rc_pool)))
			db->rc_refill = 1; /* the caller wakes the flusher to make another */
		else
			b = arena_block_new();
	}
	uint32_t next;
	if (b) {
		next = db->rc_nblk;
		db->rc_blk[db->rc_nblk++] = b;
	} else {
		if (!db->rc_nblk)
			return NULL;
		/* Out of memory for another: the ring stays this size, so that
		 * blocks keep being filled in ring order (a block added after a
		 * reuse would break "the next block holds the oldest"). */
		db->rc_nblk_max = db->rc_nblk;
		next = (db->rc_cur + 1) % db->rc_nblk;
		while (db->rc_len && db->rc_ring[db->rc_head].blk == next)
			rc_evict_one(db);
	}
	db->rc_cur = next;
	db->rc_off = n;
	*blk = next;
	return db->rc_blk[next];
}

/* The rollup's index in the part, and its bucket count (0: none). */
static uint32_t rollup_idx(const shard_part *sp, const part_key *pk, uint32_t num, unsigned level,
			   uint32_t *nb)
{
	const part *p = sp->p;
	uint32_t idx = pk->first_rollup + num * p->info.n_levels + level;
	*nb = p->rollups[idx].n_buckets;
	return idx;
}

/* Calls use(cached buckets, arg) under the cache's lock and returns 1 when
 * the block is cached; counts the hit or the miss. */
static int cache_use(shard_part *sp, uint32_t idx, uint32_t nb,
		     void (*use)(const part_bucket *b, uint32_t n, void *arg), void *arg)
{
	tally_db *db = sp->db;
	pthread_mutex_lock(&db->rc_mu);
	int hit = sp->rc && sp->rc[idx];
	if (hit) {
		use(sp->rc[idx], nb, arg);
		db->rc_hits++;
	} else {
		db->rc_misses++;
	}
	pthread_mutex_unlock(&db->rc_mu);
	return hit;
}

static void copy_out(const part_bucket *b, uint32_t n, void *arg)
{
	memcpy(arg, b, (size_t)n * sizeof *b);
}

int shard_part_rollup(shard_part *sp, const part_key *pk, uint32_t num, unsigned level,
		      part_scratch *ps, part_bucket **out, uint32_t *n)
{
	tally_db *db = sp->db;
	const part *p = sp->p;
	uint32_t nb, idx = rollup_idx(sp, pk, num, level, &nb);
	*out = NULL;
	*n = 0;
	if (!nb)
		return 0;
	size_t bytes = (size_t)nb * sizeof(part_bucket);
	part_bucket *b = mem_alloc(bytes);
	if (!b)
		return err_set(-ENOMEM, "out of memory");
	if (cache_use(sp, idx, nb, copy_out, b)) {
		*out = b;
		*n = nb;
		return 0;
	}
	uint32_t got;
	int rc = part_read_rollup(p, pk, num, level, ps, b, nb, &got);
	if (rc) {
		mem_free(b);
		return rc;
	}
	*out = b;
	*n = got;
	size_t room = (bytes + 15) & ~(size_t)15;
	if (!db->rc_limit || room > db->rc_limit / 4 || room > ARENA_BLOCK / 4)
		return 0;
	/* the cache is an optimisation: without memory, go on without it */
	pthread_mutex_lock(&db->rc_mu);
	if (!sp->rc)
		sp->rc = mem_calloc(p->n_rollups ? p->n_rollups : 1, sizeof *sp->rc);
	if (!db->rc_ring) {
		db->rc_cap = 1u << 20;
		db->rc_ring = mem_alloc(db->rc_cap * sizeof *db->rc_ring);
	}
	if (!sp->rc || !db->rc_ring || sp->rc[idx]) {
		pthread_mutex_unlock(&db->rc_mu);
		return 0;
	}
	if (db->rc_len == db->rc_cap)
		rc_evict_one(db);
	uint32_t blk;
	part_bucket *copy = rc_alloc(db, room, &blk);
	if (copy) {
		memcpy(copy, b, bytes);
		sp->rc[idx] = copy;
		db->rc_bytes += room;
		db->rc_ring[(db->rc_head + db->rc_len++) % db->rc_cap] =
			(struct rc_ent){sp, idx, (uint32_t)room, blk};
		rc_evict(db);
	}
	int refill = db->rc_refill;
	db->rc_refill = 0;
	pthread_mutex_unlock(&db->rc_mu);
	if (refill)
		db_kick_flusher(db);
	return 0;
}

typedef struct fold_arg {
	int64_t from, to;
	ragg *acc;
} fold_arg;

static void fold(const part_bucket *pb, uint32_t n, void *arg)
{
	const fold_arg *f = arg;
	const rbucket *b = (const rbucket *)pb;
	for (uint32_t i = bucket_lower(b, n, f->from); i < n && b[i].start < f->to; i++)
		ragg_merge(f->acc, &b[i].a);
}

int shard_part_rollup_each(shard_part *sp, const part_key *pk, uint32_t num, unsigned level,
			   part_scratch *ps,
			   void (*use)(const part_bucket *b, uint32_t n, void *arg), void *arg)
{
	uint32_t nb, idx = rollup_idx(sp, pk, num, level, &nb);
	if (!nb || cache_use(sp, idx, nb, use, arg))
		return 0;
	part_bucket *b;
	uint32_t n;
	int rc = shard_part_rollup(sp, pk, num, level, ps, &b, &n);
	if (rc || !b)
		return rc;
	use(b, n, arg);
	mem_free(b);
	return 0;
}

int shard_part_rollup_fold(shard_part *sp, const part_key *pk, uint32_t num, unsigned level,
			   part_scratch *ps, int64_t from, int64_t to, ragg *acc)
{
	fold_arg f = {from, to, acc};
	return shard_part_rollup_each(sp, pk, num, level, ps, fold, &f);
}

/* ---------------------------------------------------------------- scratch */

part_scratch *scratch_get(tally_db *db)
{
	pthread_mutex_lock(&db->scratch_mu);
	part_scratch *s = db->n_scratch ? db->scratch[--db->n_scratch] : NULL;
	pthread_mutex_unlock(&db->scratch_mu);
	return s ? s : mem_calloc(1, sizeof *s);
}

void scratch_put(tally_db *db, part_scratch *s)
{
	pthread_mutex_lock(&db->scratch_mu);
	if (db->n_scratch < DB_SCRATCH_MAX) {
		db->scratch[db->n_scratch++] = s;
		s = NULL;
	}
	pthread_mutex_unlock(&db->scratch_mu);
	if (s) {
		part_scratch_free(s);
		mem_free(s);
	}
}

/* ---------------------------------------------------------------- flush */

/* A row of a series: where it lives in the memtable. */
typedef struct rowref {
	int64_t ts;
	uint32_t chunk, idx;
} rowref;

static int rowref_cmp(const void *x, const void *y)
{
	const rowref *a = x, *b = y;
	if (a->ts != b->ts)
		return a->ts < b->ts ? -1 : 1;
	if (a->chunk != b->chunk)
		return a->chunk < b->chunk ? -1 : 1;
	return (a->idx > b->idx) - (a->idx < b->idx);
}

static int series_cmp(const void *x, const void *y)
{
	const series *a = *(series *const *)x, *b = *(series *const *)y;
	uint32_t n = a->key_len < b->key_len ? a->key_len : b->key_len;
	int c = memcmp(a->key, b->key, n);
	return c ? c : (a->key_len > b->key_len) - (a->key_len < b->key_len);
}

/* A stripe value slot: a bval for numbers, a codec_str for strings. */
#define SLOT (sizeof(codec_str) > sizeof(bval) ? sizeof(codec_str) : sizeof(bval))

/* One part being written by a flush. */
typedef struct pw_slot {
	int64_t pstart;
	uint64_t id;
	part_writer *w;
	uint64_t rows, bytes;
	int64_t tmin, tmax;
	int has_key; /* the current key was opened in this writer */
} pw_slot;

typedef struct flush_ctx {
	tally_db *db;
	shard *s;
	const memtable *m;
	manifest *man; /* the new manifest being built */
	pw_slot *slots;
	uint32_t n_slots, cap_slots;
	/* the table being flushed */
	table_def *t;
	col_def **cols;
	uint32_t n_cols;
	uint32_t *num_of; /* col -> numeric index or UINT32_MAX */
	part_info info;
	part_col *pcols;
	/* buffers for one stripe */
	int64_t *ts;
	char *vals;        /* n_cols x PART_STRIPE_ROWS slots of SLOT bytes */
	uint64_t *present; /* n_cols x PART_STRIPE_ROWS/64 */
	part_colvals *cv;
	part_bucket *bk;
	uint32_t cap_bk;
} flush_ctx;

static int slot_for(flush_ctx *f, int64_t pstart, pw_slot **out)
{
	for (uint32_t i = 0; i < f->n_slots; i++)
		if (f->slots[i].pstart == pstart) {
			*out = &f->slots[i];
			return 0;
		}
	if (f->n_slots == f->cap_slots) {
		uint32_t nc = f->cap_slots ? f->cap_slots * 2 : 4;
		pw_slot *ns = mem_realloc(f->slots, nc * sizeof *ns);
		if (!ns)
			return err_set(-ENOMEM, "out of memory");
		f->slots = ns;
		f->cap_slots = nc;
	}
	pw_slot *sl = &f->slots[f->n_slots];
	memset(sl, 0, sizeof *sl);
	sl->pstart = pstart;
	sl->id = f->man->next_part_id++;
	sl->tmin = INT64_MAX;
	sl->tmax = INT64_MIN;
	char name[64], dir[PATH_MAX];
	manifest_part_name(sl->id, name, sizeof name);
	snprintf(dir, sizeof dir, "%s/parts", f->db->dir);
	f->info.partition_start = pstart;
	int rc = part_writer_open(dir, name + 6 /* past "parts/" */, &f->info, &sl->w);
	if (rc)
		return rc;
	f->n_slots++;
	*out = sl;
	return 0;
}

/* Writes rows [a, b) of the sorted refs (one partition) as stripes. */
static int write_rows(flush_ctx *f, const series *se, pw_slot *sl, const rowref *r, size_t a,
		      size_t b)
{
	while (a < b) {
		uint32_t n = (uint32_t)(b - a < PART_STRIPE_ROWS ? b - a : PART_STRIPE_ROWS);
		for (uint32_t c = 0; c < f->n_cols; c++) {
			f->cv[c].vals = NULL;
			f->cv[c].present = f->present + (size_t)c * (PART_STRIPE_ROWS / 64);
			memset((void *)f->cv[c].present, 0, PART_STRIPE_ROWS / 8);
		}
		for (uint32_t i = 0; i < n; i++) {
			const rowref *x = &r[a + i];
			const chunk *ch = se->chunks[x->chunk];
			f->ts[i] = x->ts;
			for (uint32_t c = 0; c < f->n_cols; c++) {
				const col_def *d = f->cols[c];
				const chunk_col *cc = d->id < ch->n_cols ? &ch->cols[d->id] : NULL;
				if (!cc || !chunk_has(cc, x->idx))
					continue;
				char *slot = f->vals + (size_t)c * PART_STRIPE_ROWS * SLOT;
				uint64_t *pres = f->present + (size_t)c * (PART_STRIPE_ROWS / 64);
				bval v = cc->vals[x->idx];
				if (type_is_string(d->type)) {
					codec_str *cs = (codec_str *)slot;
					cs[i].p = ch->arena + (v.ref >> 16);
					cs[i].n = (uint32_t)(v.ref & 0xffff);
				} else {
					((bval *)slot)[i] = v;
				}
				pres[i >> 6] |= UINT64_C(1) << (i & 63);
				f->cv[c].vals = slot;
			}
		}
		int rc = part_writer_stripe(sl->w, n, f->ts, f->cv);
		if (rc)
			return rc;
		sl->rows += n;
		sl->tmin = f->ts[0] < sl->tmin ? f->ts[0] : sl->tmin;
		sl->tmax = f->ts[n - 1] > sl->tmax ? f->ts[n - 1] : sl->tmax;
		a += n;
	}
	return 0;
}

/* The series' buckets of one partition, every numeric column and level. */
static int write_rollups(flush_ctx *f, const series *se, pw_slot *sl)
{
	const levels *L = &f->db->L;
	int64_t pend = sl->pstart + f->info.partition_width;
	for (uint32_t c = 0; c < f->n_cols; c++) {
		if (f->num_of[c] == UINT32_MAX)
			continue;
		const col_def *d = f->cols[c];
		const rcol *rc = d->id < se->n_rcols ? se->rcols[d->id] : NULL;
		if (!rc)
			continue;
		for (unsigned l = 0; l < L->n; l++) {
			const rlevel *lv = &rc->lv[l];
			uint32_t i = rollup_lower(lv, sl->pstart), n = 0;
			for (uint32_t j = i; j < lv->n && lv->b[j].start < pend; j++) {
				if (!lv->b[j].a.count)
					continue;
				if (n == f->cap_bk) {
					uint32_t nc = f->cap_bk ? f->cap_bk * 2 : 1024;
					part_bucket *nb = mem_realloc(f->bk, nc * sizeof *nb);
					if (!nb)
						return err_set(-ENOMEM, "out of memory");
					f->bk = nb;
					f->cap_bk = nc;
				}
				const rbucket *x = &lv->b[j];
				f->bk[n++] = (part_bucket){x->start,  x->a.count, x->a.sum,
							   x->a.comp, x->a.min,   x->a.max};
			}
			int r = part_writer_rollup(sl->w, f->num_of[c], l, f->bk, n);
			if (r)
				return r;
		}
	}
	return 0;
}

static int flush_series(flush_ctx *f, const series *se)
{
	rowref *r = mem_alloc((se->rows ? se->rows : 1) * sizeof *r);
	if (!r)
		return err_set(-ENOMEM, "out of memory");
	size_t n = 0;
	int sorted = 1;
	for (uint32_t k = 0; k < se->n_chunks; k++) {
		const chunk *ch = se->chunks[k];
		for (uint32_t i = 0; i < ch->n; i++) {
			r[n] = (rowref){ch->ts[i], k, i};
			if (n && r[n].ts < r[n - 1].ts)
				sorted = 0;
			n++;
		}
	}
	if (!sorted)
		qsort(r, n, sizeof *r, rowref_cmp);
	int rc = 0;
	const levels *L = &f->db->L;
	for (size_t a = 0; a < n && !rc;) {
		int64_t pstart = window_start(r[a].ts, f->info.partition_width, L->offset);
		size_t b = a;
		while (b < n && r[b].ts < pstart + f->info.partition_width)
			b++;
		pw_slot *sl = NULL;
		if ((rc = slot_for(f, pstart, &sl)) ||
		    (rc = part_writer_key(sl->w, se->key, se->key_len)) ||
		    (rc = write_rows(f, se, sl, r, a, b)) || (rc = write_rollups(f, se, sl)))
			break;
		a = b;
	}
	mem_free(r);
	return rc;
}

static void flush_ctx_table_free(flush_ctx *f)
{
	mem_free(f->cols);
	mem_free(f->num_of);
	mem_free(f->pcols);
	mem_free(f->vals);
	mem_free(f->present);
	mem_free(f->cv);
	f->cols = NULL;
	f->num_of = NULL;
	f->pcols = NULL;
	f->vals = NULL;
	f->present = NULL;
	f->cv = NULL;
}

static int flush_table(flush_ctx *f, const stable *st)
{
	table_def *t = st->def;
	catalog *cat = &f->db->cat;
	int rc = 0;
	series **order = NULL;
	pthread_mutex_lock(&cat->mu);
	f->n_cols = t->n_cols;
	f->cols = mem_alloc((f->n_cols ? f->n_cols : 1) * sizeof *f->cols);
	if (f->cols)
		memcpy(f->cols, t->cols, f->n_cols * sizeof *f->cols);
	pthread_mutex_unlock(&cat->mu);
	f->num_of = mem_alloc((f->n_cols ? f->n_cols : 1) * sizeof *f->num_of);
	f->pcols = mem_alloc((f->n_cols ? f->n_cols : 1) * sizeof *f->pcols);
	f->vals = mem_alloc(((size_t)f->n_cols + 1) * PART_STRIPE_ROWS * SLOT);
	f->present = mem_alloc(((size_t)f->n_cols + 1) * PART_STRIPE_ROWS / 8);
	f->cv = mem_alloc(((size_t)f->n_cols + 1) * sizeof *f->cv);
	order = mem_alloc((st->n ? st->n : 1) * sizeof *order);
	if (!f->cols || !f->num_of || !f->pcols || !f->vals || !f->present || !f->cv || !order) {
		rc = err_set(-ENOMEM, "out of memory");
		goto out;
	}
	uint32_t nn = 0;
	for (uint32_t c = 0; c < f->n_cols; c++) {
		f->pcols[c] =
			(part_col){f->cols[c]->name, f->cols[c]->len, (uint8_t)f->cols[c]->type};
		f->num_of[c] = type_is_numeric(f->cols[c]->type) ? nn++ : UINT32_MAX;
	}
	const levels *L = &f->db->L;
	f->t = t;
	f->info = (part_info){0};
	f->info.table = t->name;
	f->info.key_tag = t->key_tag;
	f->info.partition_width = f->db->partition_width;
	f->info.n_levels = L->n;
	memcpy(f->info.levels, L->w, sizeof L->w);
	f->info.align_offset = L->offset;
	f->info.n_cols = f->n_cols;
	f->info.cols = f->pcols;
	memcpy(order, st->list, st->n * sizeof *order);
	qsort(order, st->n, sizeof *order, series_cmp);
	for (uint32_t k = 0; k < st->n && !rc; k++)
		if (order[k]->rows)
			rc = flush_series(f, order[k]);
out:
	mem_free(order);
	flush_ctx_table_free(f);
	return rc;
}

/* Writes memtable m of shard s as parts and commits them. Caller holds
 * db->man_mu. */
static int flush_memtable(tally_db *db, shard *s, memtable *m)
{
	manifest nm;
	int rc = manifest_copy(&nm, &db->man);
	if (rc)
		return rc;
	flush_ctx f = {.db = db, .s = s, .m = m, .man = &nm};
	shard_part **loaded = NULL;
	uint32_t n_loaded = 0;
	uint32_t first_slot = 0;
	f.ts = mem_alloc(PART_STRIPE_ROWS * sizeof *f.ts);
	if (!f.ts) {
		rc = err_set(-ENOMEM, "out of memory");
		goto fail;
	}
	for (uint32_t t = 0; t < m->cap_tables && !rc; t++) {
		const stable *st = m->tables[t];
		if (!st || !st->n)
			continue;
		first_slot = f.n_slots;
		rc = flush_table(&f, st);
		/* finish this table's parts: each slot is one (table, partition) */
		for (uint32_t i = first_slot; i < f.n_slots && !rc; i++) {
			pw_slot *sl = &f.slots[i];
			db_crash_point(db, "flush:before-part-rename");
			if ((rc = part_writer_finish(sl->w, &sl->bytes)))
				break;
			manifest_part mp = {.id = sl->id,
					    .shard = s->id,
					    .table = st->def->name,
					    .partition_start = sl->pstart,
					    .rows = sl->rows,
					    .bytes = sl->bytes,
					    .level = 0,
					    .tmin = sl->tmin,
					    .tmax = sl->tmax,
					    .rows_written = sl->rows};
			rc = manifest_add(&nm, &mp);
		}
		/* slots of the next table start afresh: forget this table's */
		for (uint32_t i = first_slot; i < f.n_slots; i++)
			f.slots[i].pstart = INT64_MIN; /* never matched again */
	}
	if (rc)
		goto fail;
	loaded = mem_calloc(f.n_slots ? f.n_slots : 1, sizeof *loaded);
	if (!loaded) {
		rc = err_set(-ENOMEM, "out of memory");
		goto fail;
	}
	for (uint32_t i = 0; i < f.n_slots; i++, n_loaded++)
		if ((rc = shard_part_load(db, f.slots[i].id, &loaded[i])))
			goto fail;
	if (nm.n_shards < db->n_shards)
		nm.n_shards = db->n_shards;
	nm.flushed_seq[s->id] = m->last_seq;
	nm.rows_accepted += m->events;
	nm.rows_written += m->events;
	db_crash_point(db, "flush:before-manifest");
	if ((rc = manifest_save(db->dir, &nm)))
		goto fail;
	db_crash_point(db, "flush:after-manifest");
	/* Committed. Publish: the parts replace the memtable in one step. */
	manifest_free(&db->man);
	db->man = nm;
	db->flushes++;
	pthread_rwlock_wrlock(&s->lock);
	for (uint32_t i = 0; i < n_loaded; i++)
		if (shard_add_part(s, loaded[i])) {
			/* cannot happen after the reserve below... but never lose
			 * a committed part: fail the shard so a reopen loads it */
			s->failed = 1;
			shard_part_free(loaded[i]);
		}
	memmove(&s->frozen[0], &s->frozen[1], (s->n_frozen - 1) * sizeof *s->frozen);
	s->n_frozen--;
	s->flushed_events += m->events;
	s->mem_bytes -= m->mem_bytes;
	s->rollup_bytes -= m->rollup_bytes;
	int trc = wal_trim(s->wal, m->last_seq);
	pthread_rwlock_unlock(&s->lock);
	db_crash_point(db, "flush:after-trim");
	if (trc)
		log_emit(&db->log, TALLY_LOG_WARN, "shard %u: WAL trim failed: %s", s->id,
			 err_msg());
	log_emit(&db->log, TALLY_LOG_INFO, "shard %u: flushed %llu events into %u parts", s->id,
		 (unsigned long long)m->events, f.n_slots);
	memtable_free(m, &db->L);
	mem_free(loaded);
	for (uint32_t i = 0; i < f.n_slots; i++)
		part_writer_free(f.slots[i].w);
	mem_free(f.slots);
	mem_free(f.ts);
	mem_free(f.bk);
	return 0;
fail:
	for (uint32_t i = 0; i < n_loaded; i++)
		shard_part_free(loaded[i]);
	mem_free(loaded);
	for (uint32_t i = 0; i < f.n_slots; i++) {
		char path[PATH_MAX], name[64];
		part_writer_free(f.slots[i].w); /* removes a .tmp */
		manifest_part_name(f.slots[i].id, name, sizeof name);
		snprintf(path, sizeof path, "%s/%s", db->dir, name);
		unlink(path); /* a finished part the manifest will not name */
	}
	mem_free(f.slots);
	mem_free(f.ts);
	mem_free(f.bk);
	manifest_free(&nm);
	return rc;
}

static int64_t mono_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * TALLY_NS_PER_SEC + t.tv_nsec;
}

int flush_run(tally_db *db, int force)
{
	int rc = 0;
	pthread_mutex_lock(&db->man_mu);
	for (unsigned i = 0; i < db->n_shards && !rc; i++) {
		shard *s = db->shards[i];
		pthread_rwlock_wrlock(&s->lock);
		memtable *a = s->active;
		int want =
			a->events > 0 &&
			(force || a->mem_bytes + a->rollup_bytes >= db->opt.memtable_bytes ||
			 mono_ns() - a->started_ns >= (int64_t)db->opt.flush_interval_ms * 1000000);
		if (want && !s->failed)
			rc = shard_freeze(s);
		pthread_rwlock_unlock(&s->lock);
		if (rc == TALLY_ELIMIT)
			rc = 0; /* enough is frozen already; flush those */
		/* frozen memtables are only ever removed here, under man_mu */
		while (!rc && s->n_frozen)
			rc = flush_memtable(db, s, s->frozen[0]);
	}
	pthread_mutex_unlock(&db->man_mu);
	return rc;
}
