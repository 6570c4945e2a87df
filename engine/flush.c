/*
 * flush.c — turning frozen memtables into parts; the scratch buffers
 * queries read parts with.
 *
 * A flush writes one part per (table, partition) the memtable touched: keys
 * in byte order, each key's rows sorted by time and cut into stripes, and
 * the key's rollup buckets of that partition, taken straight from the
 * memtable (windows never straddle partitions, so no bucket is split). The
 * parts are fsynced and renamed, the manifest is replaced naming them and
 * the shard's new flushed_seq, and only then, under the shard lock in one
 * step, do the parts replace the memtable for queries and the WAL is
 * trimmed: one partset_commit (engine/partset.c). A crash anywhere leaves either the old manifest
 * (the parts are orphans, deleted at open, and the WAL still holds every event) or the new one (the
 * WAL records up to flushed_seq are skipped): exactly once.
 */
#include "flush.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "aggkind.h"
#include "dist.h"
#include "db.h"
#include "err.h"
#include "log.h"
#include "manifest.h"
#include "mem.h"

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
	dbucket *dbk; /* a distribution field's windows of one level */
	uint32_t cap_dbk;
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
	sl->id = partset_new_id(f->db);
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

/* The series' buckets of one level in one partition, as a basic block. */
static int write_basic_level(flush_ctx *f, const rlevel *lv, uint32_t num, unsigned l, pw_slot *sl)
{
	int64_t pend = sl->pstart + f->info.partition_width;
	uint32_t n = 0;
	for (uint32_t j = rollup_lower(lv, sl->pstart); j < lv->n && lv->b[j].start < pend; j++) {
		if (!lv->b[j].a.count)
			continue;
		if (mem_grow(&f->bk, &f->cap_bk, n + 1, sizeof *f->bk, 1024))
			return err_set(-ENOMEM, "out of memory");
		const rbucket *x = &lv->b[j];
		f->bk[n++] = (part_bucket){x->start,  x->a.count, x->a.sum,
					   x->a.comp, x->a.min,   x->a.max};
	}
	return agg_write_rollup(sl->w, num, l, &agg_basic, f->bk, n);
}

/* A distribution field's windows of one partition, every level, as dist
 * blocks: the finest built from the partition's rows r[ra, rb) (sorted
 * by ts), the coarser added up from those. The finest level itself is
 * written as a basic block (dist_level_derived): while the part keeps
 * its raw events, queries count a finest window's values from them, and
 * storing them again as a distribution would cost about as many bytes
 * as the raw speeds (docs/architecture.md, "Distributions"). */
static int write_dist_rollups(flush_ctx *f, const series *se, const col_def *d, const rcol *rc,
			      uint32_t num, pw_slot *sl, const rowref *r, size_t ra, size_t rb)
{
	const levels *L = &f->db->L;
	int64_t pend = sl->pstart + f->info.partition_width;
	int64_t *ts = mem_alloc((rb - ra + 1) * sizeof *ts);
	double *v = mem_alloc((rb - ra + 1) * sizeof *v);
	dcol dc = {.exp = d->dist_exp, .max = d->dist_max};
	int e = ts && v ? 0 : err_set(-ENOMEM, "out of memory");
	size_t n = 0;
	for (size_t i = ra; i < rb && !e; i++) {
		const chunk *ch = se->chunks[r[i].chunk];
		const chunk_col *cc = d->id < ch->n_cols ? &ch->cols[d->id] : NULL;
		if (cc && chunk_has(cc, r[i].idx)) {
			ts[n] = r[i].ts;
			v[n++] = bval_num(d->type, cc->vals[r[i].idx]);
		}
	}
	if (!e)
		e = dcol_from_rows(&dc, L, ts, v, n);
	for (unsigned l = 0; l < L->n && !e; l++) {
		uint32_t nb;
		if (dist_level_derived(L, l)) {
			e = write_basic_level(f, &rc->lv[l], num, l, sl);
			continue;
		}
		e = dcol_level(&dc, &rc->lv[l], L, l, sl->pstart, pend, &f->dbk, &nb, &f->cap_dbk);
		if (!e) {
			e = agg_write_rollup(sl->w, num, l, &agg_dist, f->dbk, nb);
			dist_release_buckets(f->dbk, nb);
		}
	}
	dcol_clear(&dc);
	mem_free(ts);
	mem_free(v);
	return e;
}

/* The series' buckets of one partition (its rows r[ra, rb)), every
 * numeric column and level. */
static int write_rollups(flush_ctx *f, const series *se, pw_slot *sl, const rowref *r, size_t ra,
			 size_t rb)
{
	const levels *L = &f->db->L;
	for (uint32_t c = 0; c < f->n_cols; c++) {
		if (f->num_of[c] == UINT32_MAX)
			continue;
		const col_def *d = f->cols[c];
		const rcol *rc = d->id < se->n_rcols ? se->rcols[d->id] : NULL;
		if (!rc)
			continue;
		if (d->dist) {
			int e = write_dist_rollups(f, se, d, rc, f->num_of[c], sl, r, ra, rb);
			if (e)
				return e;
			continue;
		}
		for (unsigned l = 0; l < L->n; l++) {
			int e = write_basic_level(f, &rc->lv[l], f->num_of[c], l, sl);
			if (e)
				return e;
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
		    (rc = write_rows(f, se, sl, r, a, b)) ||
		    (rc = write_rollups(f, se, sl, r, a, b)))
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
	f->info.key_tag = t->key_spec;
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

/* What a flush changes besides its parts: the manifest's flushed_seq and
 * counters, and under the shard lock the memtable's leaving. */
typedef struct flush_commit {
	shard *s;
	memtable *m;
	unsigned n_shards;
	int trim_rc;
} flush_commit;

static int flush_edit(manifest *nm, void *arg)
{
	const flush_commit *fc = arg;
	if (nm->n_shards < fc->n_shards)
		nm->n_shards = fc->n_shards;
	nm->flushed_seq[fc->s->id] = fc->m->last_seq;
	nm->rows_accepted += fc->m->events;
	nm->rows_written += fc->m->events;
	return 0;
}

/* The parts replace the memtable in the same step; the WAL it came from
 * is trimmed under the same lock. */
static void flush_publish(shard *s, void *arg)
{
	flush_commit *fc = arg;
	memtable *m = fc->m;
	memmove(&s->frozen[0], &s->frozen[1], (s->n_frozen - 1) * sizeof *s->frozen);
	s->n_frozen--;
	s->flushed_events += m->events;
	s->mem_bytes -= m->mem_bytes;
	s->rollup_bytes -= m->rollup_bytes;
	fc->trim_rc = wal_trim(s->wal, m->last_seq);
}

/* Writes memtable m of shard s as parts and commits them. Caller holds
 * db->man_mu. */
static int flush_memtable(tally_db *db, shard *s, memtable *m)
{
	flush_ctx f = {.db = db, .s = s, .m = m};
	shard_part **loaded = NULL;
	manifest_part *recs = NULL; /* one per slot, in slot order */
	uint32_t n_loaded = 0, cap_recs = 0;
	uint32_t first_slot = 0;
	int rc = 0;
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
			if (mem_grow(&recs, &cap_recs, i + 1, sizeof *recs, 4)) {
				rc = err_set(-ENOMEM, "out of memory");
				break;
			}
			recs[i] = (manifest_part){.id = sl->id,
						  .shard = s->id,
						  .table = st->def->name,
						  .partition_start = sl->pstart,
						  .rows = sl->rows,
						  .bytes = sl->bytes,
						  .level = 0,
						  .tmin = sl->tmin,
						  .tmax = sl->tmax,
						  .rows_written = sl->rows};
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
	/* the labels of the records this commit lets the WAL trim go to
	 * DIR/LABELS first (a crash between the two leaves them in both) */
	if ((rc = db_labels_save(db)))
		goto fail;
	flush_commit fc = {.s = s, .m = m, .n_shards = db->n_shards};
	partset_change c = {.op = "flush",
			    .s = s,
			    .added = loaded,
			    .recs = recs,
			    .n_added = n_loaded,
			    .edit = flush_edit,
			    .publish = flush_publish,
			    .arg = &fc};
	/* from here the parts and their files are the commit's */
	rc = partset_commit(db, &c);
	n_loaded = 0;
	if (rc)
		goto out;
	db->flushes++;
	db_crash_point(db, "flush:after-trim");
	if (fc.trim_rc)
		log_emit(&db->log, TALLY_LOG_WARN, "shard %u: WAL trim failed: %s", s->id,
			 err_msg());
	log_emit(&db->log, TALLY_LOG_INFO, "shard %u: flushed %llu events into %u parts", s->id,
		 (unsigned long long)m->events, f.n_slots);
	/* An open scan may pin m (engine/scan.c): until the last holder frees
	 * it, its bytes stay under memory_limit, as a query's. */
	m->retired_bytes = m->mem_bytes + m->rollup_bytes;
	m->retired_at = &db->query_bytes;
	atomic_fetch_add(&db->query_bytes, m->retired_bytes);
	memtable_free(m, &db->L);
	goto out;
fail:
	for (uint32_t i = 0; i < n_loaded; i++)
		shard_part_free(loaded[i]);
	for (uint32_t i = 0; i < f.n_slots; i++) {
		char path[PATH_MAX], name[64];
		part_writer_free(f.slots[i].w); /* removes a .tmp */
		f.slots[i].w = NULL;
		manifest_part_name(f.slots[i].id, name, sizeof name);
		snprintf(path, sizeof path, "%s/%s", db->dir, name);
		unlink(path); /* a finished part the manifest will not name */
	}
out:
	mem_free(loaded);
	mem_free(recs);
	for (uint32_t i = 0; i < f.n_slots; i++)
		part_writer_free(f.slots[i].w);
	mem_free(f.slots);
	mem_free(f.ts);
	mem_free(f.bk);
	mem_free(f.dbk);
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
