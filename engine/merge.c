/*
 * merge.c — merging the parts of a partition, sealing, and folding late
 * parts into sealed segments.
 *
 * Policy, per shard and (table, partition), checked after every flush:
 *  - an open partition merges its parts once MERGE_FANIN of them are of
 *    one size tier (rows in [F^t, F^(t+1)), F = MERGE_FANIN): parts per
 *    partition stay below F per tier, each row is rewritten once per tier
 *    it climbs, and a big part is never rewritten to absorb a small one;
 *  - a partition whose end lies seal_grace behind the table's newest event
 *    in the shard is sealed: its parts become one segment (a partition
 *    with one part is sealed by the manifest flag alone, no rewrite);
 *  - late parts of a sealed partition are merged among themselves
 *    (tiered), and folded into the segment only once they hold at least
 *    LATE_FOLD_RATIO of its rows, so folding rewrites at most (1 + 1 /
 *    ratio) rows per late row: that is the bound on write amplification.
 * A merge reads each input key's stripes, merges rows by time and rollup
 * buckets by window (count, sum, min and max merge exactly), writes one
 * part, and replaces the inputs with it in one partset_commit
 * (engine/partset.c): the manifest naming it instead of the inputs is
 * saved, the parts are swapped under the shard lock, and only then are
 * the input files deleted.
 *
 * A tiered segment (engine/tier.c) merges like any other: its column
 * blocks are read from a whole copy fetched from object storage once, its
 * object joins the manifest's list of objects to delete in the merge's own
 * commit (so it goes only after the manifest stops naming it; the part
 * set does that for any tiered part that leaves), and the new segment is
 * local until the tiering job uploads it under its new id.
 *
 * A merge with a cut (merge_rewrite) is how a correction rewrites a part
 * (engine/delete.c): one input, and the rows of one key (or of every key)
 * in [from, to) left out. The rollup blocks of a key that lost rows cannot
 * be merged from the input's (a min or a max cannot be taken back), so
 * they are computed again from the key's remaining rows, in the kind the
 * input's block had. Nothing else is decoded or encoded again: the other
 * keys' blocks (stripes, rollup and distribution blocks) are copied into
 * the new part byte for byte with their checksums (part_writer_copy_key,
 * storage/part.c), and so are the cut key's stripes that lie outside
 * [from, to); only its stripes the range cuts into are encoded again,
 * from the rows they keep. (An input whose columns or levels the new
 * part would not keep as they are, or a version 1 part, is written again
 * whole, as a merge writes.)
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "aggkind.h"
#include "db.h"
#include "dist.h"
#include "err.h"
#include "flush.h"
#include "log.h"
#include "mem.h"
#include "tier.h"

#define LATE_FOLD_RATIO 1.0

#define SLOT (sizeof(codec_str) > sizeof(bval) ? sizeof(codec_str) : sizeof(bval))

/* The rows of one key gathered from all inputs. */
typedef struct mrows {
	size_t n, cap;
	int64_t *ts;
	uint32_t *order;
	char *vals;        /* n_cols columns of cap slots */
	uint64_t *present; /* n_cols bitmaps of cap bits */
	codec_buf strs;    /* string bytes; slots hold offsets until written */
} mrows;

typedef struct merge_ctx {
	tally_db *db;
	shard_part **in;
	uint32_t n_in;
	const part **src; /* per input: where its column blocks are read */
	part **whole;     /* per input: a fetched copy of a tiered part, or NULL */
	col_def **cols;   /* output columns, by id order */
	uint32_t n_cols;
	int32_t **map; /* per input: part column -> output column */
	uint32_t n_num;
	uint32_t *num_of; /* output col -> numeric index or UINT32_MAX */
	part_scratch ps;
	mrows r;
	int64_t *sts;
	char *svals;
	uint64_t *spres;
	part_colvals *cv;
	uint8_t *bk, *tmp;      /* buckets of an aggregate kind, bucket_size bytes each */
	size_t cap_bk, cap_tmp; /* bytes */
	merge_cut *cut;         /* rows left out (merge_rewrite), or NULL */
	uint32_t *kept;         /* per stripe of a cut key: rows it keeps */
	uint32_t cap_kept;
	int materialise; /* 1: the finest distributions written (merge_materialise) */
} merge_ctx;

static int col_cmp(const void *x, const void *y)
{
	const col_def *a = *(col_def *const *)x, *b = *(col_def *const *)y;
	return (a->id > b->id) - (a->id < b->id);
}

static int mrows_grow(merge_ctx *m, size_t need)
{
	mrows *r = &m->r;
	if (need <= r->cap)
		return 0;
	size_t nc = r->cap ? r->cap : 4096;
	while (nc < need)
		nc *= 2;
	int64_t *nts = mem_realloc(r->ts, nc * sizeof *nts);
	if (nts)
		r->ts = nts;
	uint32_t *no = mem_realloc(r->order, nc * sizeof *no);
	if (no)
		r->order = no;
	char *nv = mem_alloc((m->n_cols ? m->n_cols : 1) * nc * SLOT);
	uint64_t *np = mem_calloc((m->n_cols ? m->n_cols : 1) * (nc / 64), 8);
	if (!nts || !no || !nv || !np) {
		mem_free(nv);
		mem_free(np);
		return err_set(-ENOMEM, "out of memory");
	}
	for (uint32_t c = 0; c < m->n_cols && r->cap; c++) {
		memcpy(nv + c * nc * SLOT, r->vals + c * r->cap * SLOT, r->n * SLOT);
		memcpy(np + c * (nc / 64), r->present + c * (r->cap / 64), r->cap / 8);
	}
	mem_free(r->vals);
	mem_free(r->present);
	r->vals = nv;
	r->present = np;
	r->cap = nc;
	return 0;
}

/* Appends the key's rows of input i. */
static int gather(merge_ctx *m, uint32_t i, const part_key *pk)
{
	const part *p = m->src[i]; /* same index as m->in[i]->p */
	int rc = 0;
	for (uint32_t k = 0; k < pk->n_stripes && !rc; k++) {
		const part_stripe *st = &p->stripes[pk->first_stripe + k];
		size_t base = m->r.n;
		if ((rc = mrows_grow(m, base + st->n_rows)))
			return rc;
		int absent;
		if ((rc = part_read_col(p, st, -1, &m->ps, m->r.ts + base, NULL, &absent)))
			return rc;
		for (uint32_t pc = 0; pc < p->info.n_cols; pc++) {
			int32_t oc = m->map[i][pc];
			if (oc < 0)
				continue;
			if ((rc = part_read_col(p, st, (int)pc, &m->ps, m->svals, m->spres,
						&absent)))
				return rc;
			if (absent)
				continue;
			char *dst = m->r.vals + (size_t)oc * m->r.cap * SLOT;
			uint64_t *pres = m->r.present + (size_t)oc * (m->r.cap / 64);
			int str = type_is_string(m->cols[oc]->type);
			for (uint32_t r = 0; r < st->n_rows; r++) {
				if (!((m->spres[r >> 6] >> (r & 63)) & 1))
					continue;
				size_t row = base + r;
				pres[row >> 6] |= UINT64_C(1) << (row & 63);
				if (str) {
					/* copy the bytes: the scratch arena is reused by
					 * the next decode; keep an offset until written */
					const codec_str *cs = (const codec_str *)m->svals + r;
					if ((rc = codec_buf_reserve(&m->r.strs, cs->n)))
						return err_set(rc, "out of memory");
					if (cs->n)
						memcpy(m->r.strs.p + m->r.strs.len, cs->p, cs->n);
					codec_str off = {(const char *)(uintptr_t)m->r.strs.len,
							 cs->n};
					m->r.strs.len += cs->n;
					memcpy(dst + row * SLOT, &off, sizeof off);
				} else {
					memcpy(dst + row * SLOT,
					       m->svals + (size_t)r * sizeof(bval), sizeof(bval));
				}
			}
		}
		m->r.n = base + st->n_rows;
	}
	return rc;
}

static const int64_t *sort_ts;
static int order_cmp(const void *x, const void *y)
{
	uint32_t a = *(const uint32_t *)x, b = *(const uint32_t *)y;
	if (sort_ts[a] != sort_ts[b])
		return sort_ts[a] < sort_ts[b] ? -1 : 1;
	return (a > b) - (a < b); /* stable: input order among equal times */
}

/* Puts the gathered rows' order in time order; 1 when it already was. */
static int sort_rows(merge_ctx *m)
{
	mrows *r = &m->r;
	int sorted = 1;
	for (size_t i = 0; i < r->n; i++) {
		r->order[i] = (uint32_t)i;
		if (i && r->ts[i] < r->ts[i - 1])
			sorted = 0;
	}
	if (!sorted) {
		sort_ts = r->ts; /* the merger is one thread: a static is fine */
		qsort(r->order, r->n, sizeof *r->order, order_cmp);
	}
	return sorted;
}

/* Writes the rows r->order[a, b) as stripes of the current key. */
static int write_rows(merge_ctx *m, part_writer *w, size_t a, size_t b)
{
	mrows *r = &m->r;
	while (a < b) {
		uint32_t n = (uint32_t)(b - a < PART_STRIPE_ROWS ? b - a : PART_STRIPE_ROWS);
		for (uint32_t c = 0; c < m->n_cols; c++) {
			m->cv[c].vals = NULL;
			m->cv[c].present = m->spres + (size_t)c * (PART_STRIPE_MAX / 64);
			memset((void *)m->cv[c].present, 0, PART_STRIPE_ROWS / 8);
		}
		for (uint32_t i = 0; i < n; i++) {
			uint32_t src = r->order[a + i];
			m->sts[i] = r->ts[src];
			for (uint32_t c = 0; c < m->n_cols; c++) {
				const uint64_t *pres = r->present + (size_t)c * (r->cap / 64);
				if (!((pres[src >> 6] >> (src & 63)) & 1))
					continue;
				char *slot = m->svals + (size_t)c * PART_STRIPE_MAX * SLOT;
				const char *from = r->vals + ((size_t)c * r->cap + src) * SLOT;
				if (type_is_string(m->cols[c]->type)) {
					codec_str cs;
					memcpy(&cs, from, sizeof cs);
					cs.p = (const char *)r->strs.p + (uintptr_t)cs.p;
					((codec_str *)slot)[i] = cs;
				} else {
					memcpy(slot + (size_t)i * sizeof(bval), from, sizeof(bval));
				}
				uint64_t *out = (uint64_t *)m->cv[c].present;
				out[i >> 6] |= UINT64_C(1) << (i & 63);
				m->cv[c].vals = slot;
			}
		}
		int rc = part_writer_stripe(w, n, m->sts, m->cv);
		if (rc)
			return rc;
		a += n;
	}
	return 0;
}

static int write_key_rows(merge_ctx *m, part_writer *w)
{
	sort_rows(m);
	return write_rows(m, w, 0, m->r.n);
}

static int64_t bucket_start(const uint8_t *b)
{
	int64_t t;
	memcpy(&t, b, 8);
	return t;
}

/* Grows *arr to room for need bytes; 0 or -ENOMEM. */
static int grow_buckets(uint8_t **arr, size_t *cap, size_t need)
{
	if (need <= *cap)
		return 0;
	size_t nc = *cap ? *cap : 64 << 10;
	while (nc < need)
		nc *= 2;
	uint8_t *na = mem_realloc(*arr, nc);
	if (!na)
		return err_set(-ENOMEM, "out of memory");
	*arr = na;
	*cap = nc;
	return 0;
}

/* Releases n buckets of kind k (NULL: none). */
static void release_buckets(const agg_kind *k, uint8_t *b, uint32_t n)
{
	for (uint32_t i = 0; k && k->release && i < n; i++)
		k->release(b + i * k->bucket_size + 8);
}

/* Turns n buckets of kind k, whose state begins with a basic one
 * (basic_prefix), into basic buckets in place. */
static void to_basic(const agg_kind *k, uint8_t *b, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++) {
		uint8_t *src = b + i * k->bucket_size;
		rbucket r;
		memcpy(&r.start, src, 8);
		memcpy(&r.a, src + 8, sizeof r.a);
		if (k->release)
			k->release(src + 8);
		memcpy(b + i * sizeof r, &r, sizeof r); /* never past src's own bytes */
	}
}

/*
 * Merges the key's buckets of output numeric column oc, level l: every
 * input's block decoded and merged window by window through its kind's
 * table (engine/aggkind.c), into one sorted array. Inputs of one kind give
 * that kind; inputs of several (a field marked as a distribution after
 * some of its parts were written) give the basic kind, which all of them
 * begin with: a distribution is kept only where it covers every value.
 */
static int write_key_rollup(merge_ctx *m, part_writer *w, const part_key **pks, uint32_t oc,
			    unsigned l)
{
	const agg_kind *k = NULL;
	uint32_t n = 0;
	int rc = 0;
	for (uint32_t i = 0; i < m->n_in && !rc; i++) {
		if (!pks[i])
			continue;
		const part *p = m->in[i]->p;
		int pc = shard_part_col(m->in[i], m->cols[oc]);
		if (pc < 0 || p->info.num_of[pc] < 0)
			continue;
		uint32_t num = (uint32_t)p->info.num_of[pc];
		const agg_kind *ik;
		uint32_t got;
		rc = agg_read_rollup_any(p, pks[i], num, l, &m->ps, &ik, &m->tmp, &m->cap_tmp,
					 &got);
		if (rc || !got)
			continue;
		if (k && ik != k) {
			if (k != &agg_basic) {
				to_basic(k, m->bk, n);
				k = &agg_basic;
			}
			if (ik != &agg_basic) {
				if (!ik->basic_prefix) {
					rc = err_set(TALLY_ECORRUPT,
						     "%s: rollups of kinds %s and %s cannot merge",
						     p->path, k->name, ik->name);
					break;
				}
				to_basic(ik, m->tmp, got);
				ik = &agg_basic;
			}
		}
		k = ik;
		const size_t bs = k->bucket_size;
		if ((rc = grow_buckets(&m->bk, &m->cap_bk, (size_t)(n + got) * bs)))
			break;
		/* merge the sorted buckets into m->bk[0..n) */
		for (uint32_t j = 0; j < got && !rc; j++) {
			const uint8_t *b = m->tmp + j * bs;
			uint32_t lo = starts_lower(m->bk, bs, n, bucket_start(b));
			uint8_t *at = m->bk + lo * bs;
			if (lo < n && bucket_start(at) == bucket_start(b)) {
				if (k->merge(at + 8, b + 8))
					rc = err_set(-ENOMEM, "out of memory");
				continue;
			}
			memmove(at + bs, at, (n - lo) * bs);
			memcpy(at, b, bs);
			n++;
			/* a decoded state may borrow the scratch the next read reuses */
			if (k->own && k->own(at + 8))
				rc = err_set(-ENOMEM, "out of memory");
		}
	}
	/* the merged part keeps its raw events: its finest distributions
	 * are derived from them (an input written before they were, or a
	 * tiered segment's, stored them) */
	if (!rc && k && k != &agg_basic && k->basic_prefix && dist_level_derived(&m->db->L, l)) {
		to_basic(k, m->bk, n);
		k = &agg_basic;
	}
	if (!rc && k)
		rc = agg_write_rollup(w, m->num_of[oc], l, k, m->bk, n);
	release_buckets(k, m->bk, n);
	return rc;
}

/* The rollup value of a numeric slot, as the write path takes it. */
static double slot_value(enum tally_type t, const char *slot)
{
	bval v;
	memcpy(&v, slot, sizeof v);
	switch (t) {
	case TALLY_T_I64: return (double)v.i64;
	case TALLY_T_U64: return (double)v.u64;
	case TALLY_T_BOOL: return v.u64 ? 1.0 : 0.0;
	default: return v.f64;
	}
}

/* Leaves out the gathered rows m->cut names (the key is the cut's);
 * returns how many. Bits past the new count are cleared by the next key's
 * gathering. */
static uint64_t cut_rows(merge_ctx *m)
{
	mrows *r = &m->r;
	size_t j = 0;
	for (size_t i = 0; i < r->n; i++) {
		if (r->ts[i] >= m->cut->from && r->ts[i] < m->cut->to)
			continue;
		if (j != i) {
			r->ts[j] = r->ts[i];
			for (uint32_t c = 0; c < m->n_cols; c++) {
				char *v = r->vals + (size_t)c * r->cap * SLOT;
				uint64_t *pres = r->present + (size_t)c * (r->cap / 64);
				uint64_t bit = (pres[i >> 6] >> (i & 63)) & 1;
				memcpy(v + j * SLOT, v + i * SLOT, SLOT);
				pres[j >> 6] = (pres[j >> 6] & ~(UINT64_C(1) << (j & 63))) |
					       (bit << (j & 63));
			}
		}
		j++;
	}
	uint64_t cut = r->n - j;
	r->n = j;
	return cut;
}

/* 1 when a stripe of the time range [tmin, tmax] may hold rows the cut
 * takes. */
static int cut_overlaps(const merge_cut *c, int64_t tmin, int64_t tmax)
{
	return tmin < c->to && tmax >= c->from;
}

/* Counts, per stripe of the gathered key sk of a rewrite's input, the
 * rows the cut leaves (m->kept), before cut_rows takes the rest: gather
 * read the stripes one after another, in time order. */
static int count_kept(merge_ctx *m, const part_key *sk)
{
	if (sk->n_stripes > m->cap_kept) {
		uint32_t *nk = mem_realloc(m->kept, sk->n_stripes * sizeof *nk);
		if (!nk)
			return err_set(-ENOMEM, "out of memory");
		m->kept = nk;
		m->cap_kept = sk->n_stripes;
	}
	size_t row = 0;
	for (uint32_t k = 0; k < sk->n_stripes; k++) {
		uint32_t n = m->src[0]->stripes[sk->first_stripe + k].n_rows, kept = 0;
		for (uint32_t i = 0; i < n; i++, row++)
			kept += m->r.ts[row] < m->cut->from || m->r.ts[row] >= m->cut->to;
		m->kept[k] = kept;
	}
	return 0;
}

/*
 * The stripes of cut key sk, its rows cut: a stripe the cut left whole
 * is copied, one it took whole is gone, and only the rows left of one it
 * cut into are encoded again. cut_rows kept the rows' order, so stripe
 * k's rows left are the next m->kept[k]. Rows out of time order (not in
 * a part that checks) are all written again.
 */
static int write_cut_stripes(merge_ctx *m, part_writer *w, const part_key *sk)
{
	if (!sort_rows(m))
		return write_rows(m, w, 0, m->r.n);
	const part *p = m->src[0];
	size_t at = 0;
	int rc = 0;
	for (uint32_t k = 0; k < sk->n_stripes && !rc; k++) {
		const part_stripe *st = &p->stripes[sk->first_stripe + k];
		if (m->kept[k] == st->n_rows)
			rc = part_writer_copy_stripe(w, p, st);
		else if (m->kept[k])
			rc = write_rows(m, w, at, at + m->kept[k]);
		at += m->kept[k];
	}
	return rc;
}

/*
 * The key's buckets of output numeric column oc, level l, computed again
 * from its rows (in time order: write_key_rows sorted them) in the kind of
 * the input's block of level kl (a distribution keeps its resolution and
 * bound): l itself for a rewrite (merge_rewrite), the next coarser level
 * when the finest distributions are written where the input derived them
 * (merge_materialise). The one input is a rewrite's.
 */
static int rebuild_key_rollup(merge_ctx *m, part_writer *w, const part_key *pk, uint32_t oc,
			      unsigned l, unsigned kl)
{
	const part *p = m->in[0]->p;
	const agg_kind *k = &agg_basic;
	int32_t exp = 0;
	uint32_t max = 0;
	int pc = shard_part_col(m->in[0], m->cols[oc]);
	if (pc >= 0 && p->info.num_of[pc] >= 0) {
		const agg_kind *ik;
		uint32_t got;
		int rc = agg_read_rollup_any(p, pk, (uint32_t)p->info.num_of[pc], kl, &m->ps, &ik,
					     &m->tmp, &m->cap_tmp, &got);
		if (rc)
			return rc;
		if (got && ik == &agg_dist && ((const dbucket *)m->tmp)->d.exp != DIST_MIXED) {
			k = ik;
			exp = ((const dbucket *)m->tmp)->d.exp;
			max = ((const dbucket *)m->tmp)->d.max;
		}
	}
	const size_t bs = k->bucket_size;
	const int64_t width = p->info.levels[l], off = p->info.align_offset;
	const mrows *r = &m->r;
	const char *vals = r->vals + (size_t)oc * r->cap * SLOT;
	const uint64_t *pres = r->present + (size_t)oc * (r->cap / 64);
	uint32_t n = 0;
	int rc = 0;
	for (size_t i = 0; i < r->n && !rc; i++) {
		uint32_t row = r->order[i];
		if (!((pres[row >> 6] >> (row & 63)) & 1))
			continue;
		int64_t ws = window_start(r->ts[row], width, off);
		if (!n || bucket_start(m->bk + (size_t)(n - 1) * bs) != ws) {
			if ((rc = grow_buckets(&m->bk, &m->cap_bk, (size_t)(n + 1) * bs)))
				break;
			uint8_t *nb = m->bk + (size_t)n++ * bs;
			memset(nb, 0, bs);
			memcpy(nb, &ws, 8);
			k->init(nb + 8);
			if (k == &agg_dist) {
				((dbucket *)nb)->d.exp = exp;
				((dbucket *)nb)->d.max = max;
			}
		}
		if (k->add(m->bk + (size_t)(n - 1) * bs + 8,
			   slot_value(m->cols[oc]->type, vals + (size_t)row * SLOT)))
			rc = err_set(-ENOMEM, "out of memory");
	}
	if (!rc)
		rc = agg_write_rollup(w, m->num_of[oc], l, k, m->bk, n);
	release_buckets(k, m->bk, n);
	return rc;
}

/* Closes and deletes the fetched copies of tiered inputs. */
static void release_whole(merge_ctx *m)
{
	for (uint32_t i = 0; m->whole && i < m->n_in; i++) {
		tier_release(m->db, m->in[i]->id, m->whole[i]);
		m->whole[i] = NULL;
	}
}

static void merge_ctx_free(merge_ctx *m)
{
	mem_free(m->src);
	mem_free(m->whole);
	for (uint32_t i = 0; i < m->n_in; i++)
		mem_free(m->map ? m->map[i] : NULL);
	mem_free(m->map);
	mem_free(m->cols);
	mem_free(m->num_of);
	part_scratch_free(&m->ps);
	mem_free(m->r.ts);
	mem_free(m->r.order);
	mem_free(m->r.vals);
	mem_free(m->r.present);
	codec_buf_free(&m->r.strs);
	mem_free(m->sts);
	mem_free(m->svals);
	mem_free(m->spres);
	mem_free(m->cv);
	mem_free(m->bk);
	mem_free(m->tmp);
	mem_free(m->kept);
}

static int add_rows_written(manifest *nm, void *arg)
{
	nm->rows_written += *(const uint64_t *)arg;
	return 0;
}

/* Writes in[0..n_in) (one shard, table and partition) merged into one
 * new part, without the rows cut names (NULL: none), and loads it: *outp
 * and *mp, or *outp NULL when a cut left no row. With materialise (one
 * input, no cut) the finest distributions the input derives from its raw
 * events are written, computed from its rows. Caller holds man_mu. */
static int merge_write(tally_db *db, shard *s, shard_part **in, uint32_t n_in, int seal,
		       merge_cut *cut, int materialise, shard_part **outp, manifest_part *mp,
		       uint64_t *bytes)
{
	merge_ctx m = {.db = db, .in = in, .n_in = n_in, .cut = cut, .materialise = materialise};
	*outp = NULL;
	int rc = 0;
	part_writer *w = NULL;
	shard_part *out = NULL;
	uint64_t id = partset_new_id(db);
	const part_key **pks = NULL;
	uint32_t *pos = NULL;
	char name[64], dir[PATH_MAX];
	manifest_part_name(id, name, sizeof name);
	snprintf(dir, sizeof dir, "%s/parts", db->dir);
	/* output columns: the union of the inputs', in column id order */
	uint32_t cap = 0;
	for (uint32_t i = 0; i < n_in; i++)
		cap += in[i]->p->info.n_cols;
	m.cols = mem_alloc((cap ? cap : 1) * sizeof *m.cols);
	m.map = mem_calloc(n_in, sizeof *m.map);
	pks = mem_calloc(n_in, sizeof *pks);
	pos = mem_calloc(n_in, sizeof *pos);
	m.src = mem_calloc(n_in, sizeof *m.src);
	m.whole = mem_calloc(n_in, sizeof *m.whole);
	if (!m.cols || !m.map || !pks || !pos || !m.src || !m.whole)
		goto nomem;
	for (uint32_t i = 0; i < n_in; i++) {
		m.src[i] = in[i]->p;
		if (in[i]->object) {
			if ((rc = tier_fetch_whole(db, in[i], &m.whole[i])))
				goto fail;
			m.src[i] = m.whole[i];
		}
	}
	for (uint32_t i = 0; i < n_in; i++)
		for (uint32_t c = 0; c < in[i]->p->info.n_cols; c++) {
			col_def *d = in[i]->defs[c];
			uint32_t k = 0;
			while (k < m.n_cols && m.cols[k] != d)
				k++;
			if (k == m.n_cols)
				m.cols[m.n_cols++] = d;
		}
	qsort(m.cols, m.n_cols, sizeof *m.cols, col_cmp);
	for (uint32_t i = 0; i < n_in; i++) {
		const part_info *pi = &in[i]->p->info;
		if (!(m.map[i] = mem_alloc((pi->n_cols ? pi->n_cols : 1) * sizeof *m.map[i])))
			goto nomem;
		for (uint32_t c = 0; c < pi->n_cols; c++) {
			m.map[i][c] = -1;
			for (uint32_t k = 0; k < m.n_cols; k++)
				if (m.cols[k] == in[i]->defs[c])
					m.map[i][c] = (int32_t)k;
		}
	}
	m.num_of = mem_alloc((m.n_cols ? m.n_cols : 1) * sizeof *m.num_of);
	part_col *pcols = mem_alloc((m.n_cols ? m.n_cols : 1) * sizeof *pcols);
	m.sts = mem_alloc(PART_STRIPE_ROWS * sizeof *m.sts);
	m.svals = mem_alloc(((size_t)m.n_cols + 1) * PART_STRIPE_MAX * SLOT);
	m.spres = mem_alloc(((size_t)m.n_cols + 1) * PART_STRIPE_MAX / 8);
	m.cv = mem_alloc(((size_t)m.n_cols + 1) * sizeof *m.cv);
	if (!m.num_of || !pcols || !m.sts || !m.svals || !m.spres || !m.cv) {
		mem_free(pcols);
		goto nomem;
	}
	for (uint32_t c = 0; c < m.n_cols; c++) {
		pcols[c] = (part_col){m.cols[c]->name, m.cols[c]->len, (uint8_t)m.cols[c]->type};
		m.num_of[c] = type_is_numeric(m.cols[c]->type) ? m.n_num++ : UINT32_MAX;
	}
	const part_info *i0 = &in[0]->p->info;
	part_info info = *i0;
	info.n_cols = m.n_cols;
	info.cols = pcols;
	rc = part_writer_open(dir, name + 6, &info, &w);
	mem_free(pcols);
	if (rc)
		goto fail;
	/* a rewrite copies what its cut leaves alone, where the new part keeps
	 * the input's columns and levels as they are */
	const int copy = cut && n_in == 1 && part_writer_can_copy(w, m.src[0]);
	/* keys: a k-way merge of the inputs' sorted key lists */
	uint64_t rows = 0, cut_total = 0;
	int64_t tmin = INT64_MAX, tmax = INT64_MIN;
	for (;;) {
		const part_key *best = NULL;
		for (uint32_t i = 0; i < n_in; i++) {
			if (pos[i] >= in[i]->p->n_keys)
				continue;
			const part_key *k = &in[i]->p->keys[pos[i]];
			if (!best) {
				best = k;
				continue;
			}
			uint32_t l = k->len < best->len ? k->len : best->len;
			int c = memcmp(k->key, best->key, l);
			if (c < 0 || (c == 0 && k->len < best->len))
				best = k;
		}
		if (!best)
			break;
		m.r.n = 0;
		m.r.strs.len = 0;
		if (m.r.cap)
			memset(m.r.present, 0, (size_t)m.n_cols * (m.r.cap / 8));
		for (uint32_t i = 0; i < n_in; i++) {
			pks[i] = NULL;
			if (pos[i] >= in[i]->p->n_keys)
				continue;
			const part_key *k = &in[i]->p->keys[pos[i]];
			if (k->len == best->len && !memcmp(k->key, best->key, k->len)) {
				pks[i] = k;
				pos[i]++;
			}
		}
		const char *key = best->key;
		uint32_t klen = best->len;
		int hit = cut && (!cut->key || (cut->klen == klen && !memcmp(cut->key, key, klen)));
		/* a rewrite's key, in the part its blocks are read from */
		const part_key *sk = copy ? &m.src[0]->keys[pks[0] - in[0]->p->keys] : NULL;
		if (copy && (!hit || !cut_overlaps(cut, sk->tmin, sk->tmax))) {
			if ((rc = part_writer_copy_key(w, m.src[0], sk)))
				goto fail;
			rows += sk->n_rows;
			tmin = sk->tmin < tmin ? sk->tmin : tmin;
			tmax = sk->tmax > tmax ? sk->tmax : tmax;
			continue;
		}
		for (uint32_t i = 0; i < n_in && !rc; i++)
			if (pks[i])
				rc = gather(&m, i, pks[i]);
		if (rc || (copy && (rc = count_kept(&m, sk))))
			goto fail;
		uint64_t cut_here = 0;
		if (hit) {
			cut_here = cut_rows(&m);
			cut->rows += cut_here;
			cut_total += cut_here;
			if (!m.r.n)
				continue; /* the key's every row went: so does the key */
		}
		if ((rc = part_writer_key(w, key, klen)) ||
		    (rc = copy ? write_cut_stripes(&m, w, sk) : write_key_rows(&m, w)))
			goto fail;
		for (uint32_t c = 0; c < m.n_cols && !rc; c++)
			for (unsigned l = 0; m.num_of[c] != UINT32_MAX && l < db->L.n && !rc; l++)
				rc = cut_here ? rebuild_key_rollup(&m, w, pks[0], c, l, l)
				     : copy ? part_writer_copy_rollup(w, m.src[0], sk, m.num_of[c],
								      l)
				     : materialise && dist_level_derived(&db->L, l)
					     ? rebuild_key_rollup(&m, w, pks[0], c, l, l + 1)
					     : write_key_rollup(&m, w, pks, c, l);
		if (rc)
			goto fail;
		rows += m.r.n;
		for (size_t r = 0; r < m.r.n; r++) {
			tmin = m.r.ts[r] < tmin ? m.r.ts[r] : tmin;
			tmax = m.r.ts[r] > tmax ? m.r.ts[r] : tmax;
		}
	}
	if (cut && (!cut_total || !rows))
		goto done; /* nothing cut (nothing to commit), or nothing left (the
			    * input just goes): no new part */
	db_crash_point(db, "merge:before-part-rename");
	if ((rc = part_writer_finish(w, bytes)))
		goto fail;
	if (cut)
		cut->copied += part_writer_copied(w);
	if ((rc = shard_part_load(db, id, &out)))
		goto fail;
	uint64_t written = rows;
	uint32_t level = 0;
	for (uint32_t i = 0; i < n_in; i++) {
		const manifest_part *ip = manifest_find(&db->man, in[i]->id);
		if (ip) {
			written += ip->rows_written;
			level = ip->level + 1 > level ? ip->level + 1 : level;
		}
	}
	*mp = (manifest_part){.id = id,
			      .shard = s->id,
			      .table = in[0]->table->name,
			      .partition_start = in[0]->pstart,
			      .rows = rows,
			      .bytes = *bytes,
			      .level = level,
			      .flags = seal ? MPART_SEALED : 0,
			      .tmin = tmin,
			      .tmax = tmax,
			      .rows_written = written};
	*outp = out;
	out = NULL;
	goto done;
nomem:
	rc = err_set(-ENOMEM, "out of memory");
fail:
	if (out) {
		char path[PATH_MAX + 64];
		snprintf(path, sizeof path, "%s/%s", db->dir, name);
		shard_part_free(out);
		unlink(path);
	}
done:
	/* the fetched copies of tiered inputs are read: gone before the
	 * commit frees the inputs they are named after */
	release_whole(&m);
	part_writer_free(w);
	mem_free(pks);
	mem_free(pos);
	merge_ctx_free(&m);
	return rc;
}

/* Merges in[0..n_in) (one shard, table and partition) into one new part
 * and commits it. Caller holds db->man_mu. */
static int merge_parts(tally_db *db, shard *s, shard_part **in, uint32_t n_in, int seal)
{
	shard_part *out;
	manifest_part mp;
	uint64_t bytes;
	int rc = merge_write(db, s, in, n_in, seal, NULL, 0, &out, &mp, &bytes);
	if (rc)
		return rc;
	uint64_t rows = mp.rows;
	partset_change c = {.op = "merge",
			    .s = s,
			    .gone = in,
			    .n_gone = n_in,
			    .added = &out,
			    .recs = &mp,
			    .n_added = 1,
			    .edit = add_rows_written,
			    .arg = &rows};
	/* the output is the commit's from here (freed and its file deleted
	 * on a failure); the inputs go with a success (a tiered input's
	 * object joins the objects to delete) */
	if ((rc = partset_commit(db, &c)))
		return rc;
	db->merges++;
	log_emit(&db->log, TALLY_LOG_INFO, "shard %u: merged %u parts (%llu rows)%s", s->id, n_in,
		 (unsigned long long)rows, seal ? ", partition sealed" : "");
	return 0;
}

/* Part in written again, one input, as merge_write writes it (a cut, or
 * the finest distributions materialised): the same part, so its place in
 * the merge policy and its history stay. */
static int rewrite_one(tally_db *db, shard *s, shard_part *in, merge_cut *cut, int materialise,
		       shard_part **out, manifest_part *rec, uint64_t *bytes)
{
	*bytes = 0;
	int rc = merge_write(db, s, &in, 1, (in->flags & MPART_SEALED) != 0, cut, materialise, out,
			     rec, bytes);
	if (rc || !*out)
		return rc;
	const manifest_part *ip = manifest_find(&db->man, in->id);
	rec->level = ip ? ip->level : 0;
	rec->rows_written = ip ? ip->rows_written : rec->rows;
	return 0;
}

int merge_rewrite(tally_db *db, shard *s, shard_part *in, merge_cut *cut, shard_part **out,
		  manifest_part *rec, uint64_t *bytes)
{
	return rewrite_one(db, s, in, cut, 0, out, rec, bytes);
}

int merge_needs_materialise(tally_db *db, shard_part *sp)
{
	const part *p = sp->p;
	if (!dist_level_derived(&db->L, 0) || p->info.n_levels < 2)
		return 0;
	part_scratch ps = {0};
	int need = 0;
	for (uint32_t c = 0; c < p->info.n_cols && !need; c++) {
		if (!sp->defs[c]->dist || p->info.num_of[c] < 0)
			continue;
		uint32_t num = (uint32_t)p->info.num_of[c];
		/* a key merged from parts written before the field was marked
		 * has basic blocks at every level: look on past it */
		for (uint32_t k = 0; k < p->n_keys && !need; k++) {
			const part_key *pk = &p->keys[k];
			if (!agg_rollup_windows(p, pk, num, 0))
				continue;
			part_rblock fine, coarse;
			int rc = part_read_rollup(p, pk, num, 0, &ps, &fine);
			unsigned fk = rc ? 0 : fine.kind;
			if (!rc)
				rc = part_read_rollup(p, pk, num, 1, &ps, &coarse);
			if (rc) {
				part_scratch_free(&ps);
				return rc;
			}
			need = fk == AGG_BASIC && coarse.n && coarse.kind != AGG_BASIC;
		}
	}
	part_scratch_free(&ps);
	return need;
}

int merge_materialise(tally_db *db, shard *s, shard_part *in, shard_part **out, manifest_part *rec,
		      uint64_t *bytes)
{
	return rewrite_one(db, s, in, NULL, 1, out, rec, bytes);
}

/* floor(log_MERGE_FANIN(rows)): parts of one tier are alike in size. */
static uint32_t size_tier(const shard_part *sp)
{
	uint64_t rows = sp->p->info.n_rows ? sp->p->info.n_rows : 1;
	uint32_t t = 0;
	while (rows >= MERGE_FANIN) {
		rows /= MERGE_FANIN;
		t++;
	}
	return t;
}

/* One pass of the policy over shard s; returns 1 if it merged something. */
static int merge_pass(tally_db *db, shard *s, int *merged)
{
	*merged = 0;
	/* the table's newest event in this shard decides what is sealable */
	for (uint32_t a = 0; a < s->n_parts; a++) {
		shard_part *pa = s->parts[a];
		int64_t newest = INT64_MIN;
		for (uint32_t j = 0; j < s->n_parts; j++)
			if (s->parts[j]->table == pa->table && s->parts[j]->p->info.tmax > newest)
				newest = s->parts[j]->p->info.tmax;
		int sealable = pa->pend + db->opt.seal_grace <= newest;
		/* the partition's parts */
		shard_part *grp[64];
		uint32_t n = 0, sealed = 0, late = 0;
		uint64_t seg_rows = 0, late_rows = 0;
		int gone = 0; /* a part's raw events expired: retention cuts the rest */
		for (uint32_t j = 0; j < s->n_parts && n < 64; j++) {
			shard_part *q = s->parts[j];
			if (q->table != pa->table || q->pstart != pa->pstart)
				continue;
			if (retention_raw_gone(q))
				gone = 1;
			grp[n++] = q;
			if (q->flags & MPART_SEALED) {
				sealed++;
				seg_rows += q->p->info.n_rows;
			} else {
				late++;
				late_rows += q->p->info.n_rows;
			}
		}
		if (grp[0] != pa || gone)
			continue; /* each partition once; raw expired: nothing to merge */
		int rc = 0;
		if (!sealed && sealable) {
			if (n == 1) {
				/* one part: sealing is a flag, not a rewrite */
				rc = partset_commit(
					db, &(partset_change){.op = "seal", .s = s, .seal = pa});
			} else {
				rc = merge_parts(db, s, grp, n, 1);
			}
			*merged = 1;
			return rc;
		}
		if (sealed && late && (double)late_rows >= LATE_FOLD_RATIO * (double)seg_rows &&
		    tier_can_merge(db, grp, n)) { /* a tiered segment waits for its store */
			*merged = 1;
			return merge_parts(db, s, grp, n, 1);
		}
		/* size-tiered: once MERGE_FANIN unsealed parts share a size tier
		 * (rows in [4^t, 4^(t+1)) for a fan-in of 4) they merge, the
		 * smallest tier first. Their merge lands in a higher tier, so a
		 * row is rewritten once per tier it climbs, and a big part is
		 * never rewritten to absorb a small one. */
		if (late >= MERGE_FANIN) {
			shard_part *un[64];
			uint32_t k = 0, best = UINT32_MAX;
			for (uint32_t j = 0; j < n; j++) {
				if (grp[j]->flags & MPART_SEALED)
					continue;
				uint32_t t = size_tier(grp[j]), same = 0;
				for (uint32_t i = 0; i < n; i++)
					same += !(grp[i]->flags & MPART_SEALED) &&
						size_tier(grp[i]) == t;
				if (same >= MERGE_FANIN && t < best)
					best = t;
			}
			for (uint32_t j = 0; j < n && best != UINT32_MAX; j++)
				if (!(grp[j]->flags & MPART_SEALED) && size_tier(grp[j]) == best)
					un[k++] = grp[j];
			if (k) {
				*merged = 1;
				return merge_parts(db, s, un, k, 0);
			}
		}
	}
	return 0;
}

int merge_run(tally_db *db)
{
	int rc = 0;
	pthread_mutex_lock(&db->man_mu);
	for (unsigned i = 0; i < db->n_shards && !rc; i++) {
		int merged = 1;
		/* the part set changes only under man_mu (engine/partset.c), so
		 * reading the shard's list without its lock is safe */
		for (int guard = 0; merged && !rc && guard < 1000; guard++)
			rc = merge_pass(db, db->shards[i], &merged);
	}
	pthread_mutex_unlock(&db->man_mu);
	return rc;
}
