/*
 * aggkind.c — the aggregate kinds' tables, and rollup blocks read and
 * written through them.
 *
 * The one idea: a rollup block names its kind, and everything that moves
 * buckets between memtables, parts and the rollup cache goes through the
 * kind's table, so a new aggregate is one new table (and its state), not
 * a change to flushes, merges, the cache or the part format. The basic
 * kind's functions are the inline ragg_* of rollup.h, the very ones the
 * ingest and query loops call directly, so a table adds no cost where it
 * would be felt and gives the same bits wherever it is used.
 */
#include "aggkind.h"

#include <errno.h>
#include <string.h>

#include "err.h"
#include "fileio.h"
#include "mem.h"

/* ---------------------------------------------------------------- basic */

static void basic_init(void *st)
{
	ragg_init(st);
}

static int basic_add(void *st, double v)
{
	ragg_add(st, v);
	return 0;
}

static int basic_merge(void *st, const void *src)
{
	ragg_merge(st, src);
	return 0;
}

static void basic_finalize(const void *st, void *answer)
{
	ragg_to_public(st, answer);
}

/*
 * Payload: six u32 lengths, then six codec blocks of n values each: window
 * starts (ts), counts (u64), sums, sum residuals, mins, maxes (f64). The
 * sum is stored rounded (sum + comp) with the exact residual beside it.
 * The residual is tiny (a few bits at the sum's last place: one-decimal
 * values are not exact in binary), so the codec's BIN encoding stores it
 * as small integers times one power of two, under a byte per bucket.
 */
#define BASIC_COLS 6
static const enum codec_kind basic_codec[BASIC_COLS] = {CODEC_TS,  CODEC_U64, CODEC_F64,
							CODEC_F64, CODEC_F64, CODEC_F64};

static int basic_encode(codec_ctx *cx, const void *buckets, uint32_t n, codec_buf *out)
{
	const rbucket *b = buckets;
	uint64_t *col = mem_alloc((size_t)n * 8 * BASIC_COLS);
	if (!col)
		return err_set(-ENOMEM, "out of memory");
	for (uint32_t i = 0; i < n; i++) {
		double s = b[i].a.sum + b[i].a.comp, res = (b[i].a.sum - s) + b[i].a.comp;
		col[i] = (uint64_t)b[i].start;
		col[n + i] = b[i].a.count;
		memcpy(&col[2 * (size_t)n + i], &s, 8);
		memcpy(&col[3 * (size_t)n + i], &res, 8);
		memcpy(&col[4 * (size_t)n + i], &b[i].a.min, 8);
		memcpy(&col[5 * (size_t)n + i], &b[i].a.max, 8);
	}
	size_t lens = out->len;
	int rc = codec_buf_reserve(out, 4 * BASIC_COLS);
	if (rc) {
		mem_free(col);
		return err_set(rc, "out of memory");
	}
	out->len += 4 * BASIC_COLS;
	for (int c = 0; c < BASIC_COLS && !rc; c++) {
		size_t before = out->len;
		rc = codec_encode(cx, basic_codec[c], &col[(size_t)c * n], NULL, n, NULL, out,
				  NULL);
		if (!rc)
			le_put32(out->p + lens + 4 * c, (uint32_t)(out->len - before));
	}
	mem_free(col);
	return rc;
}

size_t agg_basic_payload_len(const uint8_t *p, size_t len)
{
	if (len < 4 * BASIC_COLS)
		return 0;
	uint64_t total = 4 * BASIC_COLS;
	for (int c = 0; c < BASIC_COLS; c++)
		total += le_get32(p + 4 * c);
	return total <= len ? (size_t)total : 0;
}

static int basic_decode(codec_ctx *cx, const uint8_t *p, size_t len, uint32_t n, void *out,
			codec_buf *arena)
{
	(void)arena;
	rbucket *b = out;
	if (len < 4 * BASIC_COLS)
		return err_set(TALLY_ECORRUPT, "malformed rollup block");
	size_t pos = 4 * BASIC_COLS;
	uint64_t *tmp = mem_alloc((size_t)n * 8);
	if (!tmp)
		return err_set(-ENOMEM, "out of memory");
	int rc = 0;
	for (int c = 0; c < BASIC_COLS && !rc; c++) {
		uint32_t bl = le_get32(p + 4 * c);
		if (bl > len - pos) {
			rc = err_set(TALLY_ECORRUPT, "malformed rollup block");
			break;
		}
		if ((rc = codec_decode(cx, p + pos, bl, basic_codec[c], n, tmp, NULL, NULL)))
			break;
		for (uint32_t j = 0; j < n; j++) {
			switch (c) {
			case 0: b[j].start = (int64_t)tmp[j]; break;
			case 1: b[j].a.count = tmp[j]; break;
			case 2: memcpy(&b[j].a.sum, &tmp[j], 8); break;
			case 3: memcpy(&b[j].a.comp, &tmp[j], 8); break;
			case 4: memcpy(&b[j].a.min, &tmp[j], 8); break;
			default: memcpy(&b[j].a.max, &tmp[j], 8); break;
			}
		}
		pos += bl;
	}
	mem_free(tmp);
	if (!rc && pos != len)
		rc = err_set(TALLY_ECORRUPT, "malformed rollup block");
	return rc;
}

const agg_kind agg_basic = {
	.id = AGG_BASIC,
	.name = "basic",
	.bucket_size = sizeof(rbucket),
	.init = basic_init,
	.add = basic_add,
	.merge = basic_merge,
	.encode = basic_encode,
	.decode = basic_decode,
	.finalize = basic_finalize,
};

extern const agg_kind agg_dist, agg_dist_v2, agg_dist_v1; /* engine/dist.c */

/* ---------------------------------------------------------------- kinds */

static const agg_kind *const kinds[] = {&agg_basic, &agg_dist_v1, &agg_dist_v2, &agg_dist};

const agg_kind *agg_kind_of(unsigned id)
{
	for (size_t i = 0; i < sizeof kinds / sizeof *kinds; i++)
		if (kinds[i]->id == id)
			return kinds[i];
	return NULL;
}

int agg_write_rollup(part_writer *w, uint32_t num, unsigned level, const agg_kind *k,
		     const void *buckets, uint32_t n)
{
	if (!n)
		return 0;
	codec_ctx *cx;
	codec_buf *out = part_writer_payload(w, &cx);
	if (!out)
		return err_set(-ENOMEM, "out of memory");
	int rc = k->encode(cx, buckets, n, out);
	return rc ? rc : part_writer_rollup(w, num, level, k->id, n);
}

int agg_read_rollup(const part *p, const part_key *pk, uint32_t num, unsigned level,
		    part_scratch *ps, const agg_kind *k, void *out, uint32_t cap, uint32_t *n)
{
	*n = 0;
	part_rblock rb;
	int rc = part_read_rollup(p, pk, num, level, ps, &rb);
	if (rc || !rb.n)
		return rc;
	const agg_kind *bk = agg_kind_of(rb.kind);
	size_t len = rb.len;
	if (bk && bk != k && k == &agg_basic && bk->basic_prefix)
		len = agg_basic_payload_len(rb.payload, rb.len); /* 0: malformed, below */
	else if (bk && bk->decodes_as == k)
		k = bk; /* an earlier version of k's payload */
	else if (bk != k)
		return err_set(TALLY_ECORRUPT,
			       "%s block %u: rollup block of aggregate kind %u where %u (%s) "
			       "was expected",
			       p->path, rb.block, rb.kind, k->id, k->name);
	if (rb.n > cap)
		return err_set(TALLY_EINVAL, "%s: rollup of %u buckets, room for %u", p->path, rb.n,
			       cap);
	if ((rc = k->decode(ps->cx, rb.payload, len, rb.n, out, &ps->arena2)))
		return err_prefix(rc, "%s block %u", p->path, rb.block);
	*n = rb.n;
	return 0;
}

int agg_read_rollup_any(const part *p, const part_key *pk, uint32_t num, unsigned level,
			part_scratch *ps, const agg_kind **kind, uint8_t **out, size_t *cap,
			uint32_t *n)
{
	*n = 0;
	*kind = NULL;
	part_rblock rb;
	int rc = part_read_rollup(p, pk, num, level, ps, &rb);
	if (rc || !rb.n)
		return rc;
	const agg_kind *k = agg_kind_of(rb.kind);
	if (!k)
		return err_set(TALLY_ECORRUPT,
			       "%s block %u: rollup block of aggregate kind %u, which this build "
			       "does not know",
			       p->path, rb.block, rb.kind);
	size_t need = (size_t)rb.n * k->bucket_size;
	if (need > *cap) {
		uint8_t *nb = mem_realloc(*out, need);
		if (!nb)
			return err_set(-ENOMEM, "out of memory");
		*out = nb;
		*cap = need;
	}
	if ((rc = k->decode(ps->cx, rb.payload, rb.len, rb.n, *out, &ps->arena2)))
		return err_prefix(rc, "%s block %u", p->path, rb.block);
	*kind = k->decodes_as ? k->decodes_as : k;
	*n = rb.n;
	return 0;
}
