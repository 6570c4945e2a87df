/*
 * part.c — writing and reading immutable columnar part files.
 *
 * Layout (docs/formats.md, "Part files"): a 32-byte header, the blocks back
 * to back (each followed by its xxh3), the zstd-compressed index, and a
 * 48-byte footer that locates and checksums the index. The index lists,
 * per key, its stripes (row count, time range, one block length per
 * column) and its rollup blocks; block offsets are not stored, because the
 * blocks lie in exactly the order the index lists them: the reader sums
 * lengths. That keeps the index small enough to hold in memory for every
 * part, so a query touches the disk only for the blocks it decodes.
 *
 * A stub (tiering) is a part with its column blocks cut out: header
 * (flagged), rollup blocks, the same index, footer. Its index still
 * describes the whole part, so column blocks keep the offsets they have
 * in the whole part — which is the object in object storage — and are
 * read through a fetch hook; rollup blocks are remapped to the stub's own
 * offsets as the index is read.
 */
#include "part.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>
#include <zstd.h>

#include "err.h"
#include "fileio.h"
#include "mem.h"

#define PART_MAGIC       "TALLYPRT"
#define PART_END_MAGIC   "TALLYEND"
#define PART_VERSION     2 /* written; 1 (rollup blocks without a kind) is read too */
#define PART_VERSION_MIN 1
#define PART_HEADER      32
#define PART_FOOTER      48
#define INDEX_ZSTD_LEVEL 3

/* ---------------------------------------------------------------- varints */

typedef struct wbuf {
	uint8_t *p;
	size_t len, cap;
	int err;
} wbuf;

static void wb_need(wbuf *b, size_t n)
{
	if (b->err || b->len + n <= b->cap)
		return;
	size_t nc = b->cap ? b->cap * 2 : 4096;
	while (nc < b->len + n)
		nc *= 2;
	uint8_t *np = mem_realloc(b->p, nc);
	if (!np) {
		b->err = -ENOMEM;
		return;
	}
	b->p = np;
	b->cap = nc;
}

static void wb_bytes(wbuf *b, const void *p, size_t n)
{
	wb_need(b, n);
	if (!b->err && n) {
		memcpy(b->p + b->len, p, n);
		b->len += n;
	}
}

static void wb_var(wbuf *b, uint64_t v)
{
	uint8_t tmp[10];
	size_t n = 0;
	do {
		tmp[n++] = (uint8_t)((v & 0x7f) | (v >= 0x80 ? 0x80 : 0));
		v >>= 7;
	} while (v);
	wb_bytes(b, tmp, n);
}

static void wb_svar(wbuf *b, int64_t v)
{
	wb_var(b, ((uint64_t)v << 1) ^ (uint64_t)(v >> 63));
}

static void wb_str(wbuf *b, const char *s, uint32_t n)
{
	wb_var(b, n);
	wb_bytes(b, s, n);
}

typedef struct rbuf {
	const uint8_t *p, *end;
	int bad;
} rbuf;

static uint64_t rb_var(rbuf *r)
{
	uint64_t v = 0;
	for (int shift = 0; shift < 64; shift += 7) {
		if (r->p >= r->end) {
			r->bad = 1;
			return 0;
		}
		uint8_t c = *r->p++;
		v |= (uint64_t)(c & 0x7f) << shift;
		if (!(c & 0x80))
			return v;
	}
	r->bad = 1;
	return 0;
}

static int64_t rb_svar(rbuf *r)
{
	uint64_t u = rb_var(r);
	return (int64_t)(u >> 1) ^ -(int64_t)(u & 1);
}

static const uint8_t *rb_bytes(rbuf *r, uint64_t n)
{
	if (r->bad || (uint64_t)(r->end - r->p) < n) {
		r->bad = 1;
		return NULL;
	}
	const uint8_t *q = r->p;
	r->p += n;
	return q;
}

/* ---------------------------------------------------------------- writer */

typedef struct pending_stripe {
	uint32_t n_rows;
	int64_t tmin, tmax;
	uint32_t first_len; /* into w->lens */
} pending_stripe;

struct part_writer {
	char dir[PATH_MAX], tmp[PATH_MAX], dst[PATH_MAX];
	int fd;
	uint64_t off;
	uint32_t blocks;
	part_info info;
	char *arena; /* copies of info's strings */
	codec_ctx *cx;
	codec_buf blk;
	wbuf index;
	/* the key being written */
	int in_key;
	wbuf key;
	uint64_t key_rows;
	int64_t key_tmin, key_tmax;
	pending_stripe *stripes;
	uint32_t n_stripes, cap_stripes;
	uint32_t *lens; /* block lengths of the key's stripes, then rollups */
	uint32_t n_lens, cap_lens;
	uint32_t *roll; /* per (num, level): len, n_buckets */
	uint32_t n_keys;
	uint64_t rows;
	int64_t tmin, tmax;
	codec_stats *col_stats; /* accumulated per column, + ts at n_cols */
	int failed;
	/* copying blocks of another part (part_writer_copy_*) */
	const part *copy_src; /* the last part checked to be copyable */
	part_scratch copy_s;  /* blocks read where src is not mapped */
	const uint8_t *run;   /* mapped blocks waiting to go in one write */
	uint64_t run_len;
	uint64_t copied;
};

static int pw_fail(part_writer *w, int rc)
{
	w->failed = 1;
	return rc;
}

static int push_len(part_writer *w, uint32_t len)
{
	if (w->n_lens == w->cap_lens) {
		uint32_t nc = w->cap_lens ? w->cap_lens * 2 : 64;
		uint32_t *nl = mem_realloc(w->lens, nc * sizeof *nl);
		if (!nl)
			return -ENOMEM;
		w->lens = nl;
		w->cap_lens = nc;
	}
	w->lens[w->n_lens++] = len;
	return 0;
}

/* Writes the block in w->blk with its checksum. */
static int put_block(part_writer *w)
{
	uint8_t sum[8];
	le_put64(sum, XXH3_64bits(w->blk.p, w->blk.len));
	int rc = fio_pwrite_full(w->fd, w->blk.p, w->blk.len, w->off);
	if (!rc)
		rc = fio_pwrite_full(w->fd, sum, 8, w->off + w->blk.len);
	if (rc)
		return err_sys(-rc, "write %s", w->tmp);
	w->off += w->blk.len + 8;
	w->blocks++;
	return 0;
}

int part_writer_open(const char *dir, const char *name, const part_info *info, part_writer **out)
{
	*out = NULL;
	if (info->n_cols > PART_COLS_MAX || info->n_levels == 0 ||
	    info->n_levels > TALLY_LEVELS_MAX)
		return err_set(TALLY_EINVAL, "part %s: bad column or level count", name);
	part_writer *w = mem_calloc(1, sizeof *w);
	if (!w)
		return err_set(-ENOMEM, "out of memory");
	w->fd = -1;
	int rc = 0;
	snprintf(w->dir, sizeof w->dir, "%s", dir);
	snprintf(w->tmp, sizeof w->tmp, "%s/%s.tmp", dir, name);
	snprintf(w->dst, sizeof w->dst, "%s/%s", dir, name);
	w->info = *info;
	/* copy names into one arena so the caller's may go */
	size_t need = strlen(info->table) + 1 + (info->key_tag ? strlen(info->key_tag) + 1 : 0);
	for (uint32_t c = 0; c < info->n_cols; c++)
		need += info->cols[c].len + 1;
	w->arena = mem_alloc(need);
	w->info.cols = mem_calloc(info->n_cols ? info->n_cols : 1, sizeof *w->info.cols);
	w->col_stats = mem_calloc(info->n_cols + 1, sizeof *w->col_stats);
	w->cx = codec_ctx_new();
	if (!w->arena || !w->info.cols || !w->col_stats || !w->cx) {
		rc = err_set(-ENOMEM, "out of memory");
		goto fail;
	}
	char *a = w->arena;
	size_t tl = strlen(info->table);
	memcpy(a, info->table, tl + 1);
	w->info.table = a;
	a += tl + 1;
	if (info->key_tag) {
		size_t kl = strlen(info->key_tag);
		memcpy(a, info->key_tag, kl + 1);
		w->info.key_tag = a;
		a += kl + 1;
	}
	for (uint32_t c = 0; c < info->n_cols; c++) {
		memcpy(a, info->cols[c].name, info->cols[c].len);
		a[info->cols[c].len] = 0;
		w->info.cols[c] = info->cols[c];
		w->info.cols[c].name = a;
		a += info->cols[c].len + 1;
	}
	w->info.n_num = 0;
	for (uint32_t c = 0; c < info->n_cols; c++) {
		uint8_t t = info->cols[c].type;
		w->info.n_num += t == TALLY_T_F64 || t == TALLY_T_I64 || t == TALLY_T_U64 ||
				 t == TALLY_T_BOOL;
	}
	w->roll = mem_calloc((size_t)w->info.n_num * info->n_levels * 2 + 1, sizeof *w->roll);
	if (!w->roll) {
		rc = err_set(-ENOMEM, "out of memory");
		goto fail;
	}
	w->tmin = INT64_MAX;
	w->tmax = INT64_MIN;
	w->fd = fio_open(w->tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (w->fd < 0) {
		rc = err_sys(errno, "create %s", w->tmp);
		goto fail;
	}
	uint8_t h[PART_HEADER] = {0};
	memcpy(h, PART_MAGIC, 8);
	le_put32(h + 8, PART_VERSION);
	le_put32(h + 12, PART_HEADER);
	le_put64(h + 24, XXH3_64bits(h, 24));
	if ((rc = fio_pwrite_full(w->fd, h, sizeof h, 0))) {
		rc = err_sys(-rc, "write %s", w->tmp);
		goto fail;
	}
	w->off = PART_HEADER;
	*out = w;
	return 0;
fail:
	part_writer_free(w);
	return rc;
}

static int is_num(uint8_t t)
{
	return t == TALLY_T_F64 || t == TALLY_T_I64 || t == TALLY_T_U64 || t == TALLY_T_BOOL;
}

/* Appends the finished key's index entry. */
static void end_key(part_writer *w)
{
	if (!w->in_key)
		return;
	wbuf *b = &w->index;
	wb_bytes(b, w->key.p, w->key.len); /* the key string, already framed */
	wb_var(b, w->key_rows);
	wb_svar(b, w->key_tmin);
	wb_var(b, (uint64_t)w->key_tmax - (uint64_t)w->key_tmin);
	wb_var(b, w->n_stripes);
	uint32_t per = w->info.n_cols + 1;
	for (uint32_t s = 0; s < w->n_stripes; s++) {
		const pending_stripe *ps = &w->stripes[s];
		wb_var(b, ps->n_rows);
		wb_svar(b, ps->tmin - w->key_tmin);
		wb_var(b, (uint64_t)ps->tmax - (uint64_t)ps->tmin);
		for (uint32_t i = 0; i < per; i++)
			wb_var(b, w->lens[ps->first_len + i]);
	}
	for (uint32_t r = 0; r < w->info.n_num * w->info.n_levels; r++) {
		wb_var(b, w->roll[2 * r]);
		wb_var(b, w->roll[2 * r + 1]);
	}
	w->in_key = 0;
}

int part_writer_key(part_writer *w, const char *key, uint32_t len)
{
	if (w->failed)
		return err_set(TALLY_EFAILED, "part writer %s failed earlier", w->tmp);
	if (w->in_key) {
		/* keys must ascend: the reader binary-searches them */
		uint64_t pl;
		rbuf r = {w->key.p, w->key.p + w->key.len, 0};
		pl = rb_var(&r);
		int c = memcmp(r.p, key, pl < len ? pl : len);
		if (c > 0 || (c == 0 && pl >= len))
			return pw_fail(w,
				       err_set(TALLY_EINVAL, "part %s: keys out of order", w->tmp));
		end_key(w);
	}
	w->key.len = 0;
	wb_str(&w->key, key, len);
	if (w->key.err || w->index.err)
		return pw_fail(w, err_set(-ENOMEM, "out of memory"));
	w->in_key = 1;
	w->key_rows = 0;
	w->key_tmin = INT64_MAX;
	w->key_tmax = INT64_MIN;
	w->n_stripes = 0;
	w->n_lens = 0;
	memset(w->roll, 0, (size_t)w->info.n_num * w->info.n_levels * 2 * sizeof *w->roll);
	w->n_keys++;
	return 0;
}

static void stats_add(codec_stats *acc, const codec_stats *st)
{
	acc->enc = st->enc; /* the last block's; inspect shows the common case */
	acc->n += st->n;
	acc->n_present += st->n_present;
	acc->raw_bytes += st->raw_bytes;
	acc->body_bytes += st->body_bytes;
	acc->block_bytes += st->block_bytes + 8;
	acc->zstd |= st->zstd;
	acc->scale = st->scale;
}

static enum codec_kind kind_of(uint8_t type)
{
	switch (type) {
	case TALLY_T_F64: return CODEC_F64;
	case TALLY_T_I64: return CODEC_I64;
	case TALLY_T_U64: return CODEC_U64;
	case TALLY_T_BOOL: return CODEC_BOOL;
	default: return CODEC_STR;
	}
}

/* A new stripe entry of the current key (its blocks' lengths follow in
 * w->lens), or NULL: out of memory. */
static pending_stripe *push_stripe(part_writer *w, uint32_t n, int64_t tmin, int64_t tmax)
{
	if (w->n_stripes == w->cap_stripes) {
		uint32_t nc = w->cap_stripes ? w->cap_stripes * 2 : 16;
		pending_stripe *ns = mem_realloc(w->stripes, nc * sizeof *ns);
		if (!ns)
			return NULL;
		w->stripes = ns;
		w->cap_stripes = nc;
	}
	pending_stripe *ps = &w->stripes[w->n_stripes++];
	*ps = (pending_stripe){n, tmin, tmax, w->n_lens};
	return ps;
}

/* Counts a written stripe into its key's and the part's rows and times. */
static void count_stripe(part_writer *w, const pending_stripe *ps)
{
	w->key_rows += ps->n_rows;
	w->rows += ps->n_rows;
	w->key_tmin = ps->tmin < w->key_tmin ? ps->tmin : w->key_tmin;
	w->key_tmax = ps->tmax > w->key_tmax ? ps->tmax : w->key_tmax;
	w->tmin = ps->tmin < w->tmin ? ps->tmin : w->tmin;
	w->tmax = ps->tmax > w->tmax ? ps->tmax : w->tmax;
}

int part_writer_stripe(part_writer *w, uint32_t n, const int64_t *ts, const part_colvals *cols)
{
	if (w->failed || !w->in_key)
		return err_set(TALLY_EINVAL, "part %s: stripe outside a key", w->tmp);
	if (n == 0 || n > PART_STRIPE_MAX)
		return pw_fail(w, err_set(TALLY_EINVAL, "part %s: stripe of %u rows", w->tmp, n));
	pending_stripe *ps = push_stripe(w, n, ts[0], ts[n - 1]);
	if (!ps)
		return pw_fail(w, err_set(-ENOMEM, "out of memory"));
	int rc;
	codec_stats st;
	w->blk.len = 0;
	if ((rc = codec_encode(w->cx, CODEC_TS, ts, NULL, n, NULL, &w->blk, &st)) ||
	    (rc = put_block(w)) || (rc = push_len(w, (uint32_t)w->blk.len)))
		return pw_fail(w, err_prefix(rc, "part %s timestamps", w->tmp));
	stats_add(&w->col_stats[w->info.n_cols], &st);
	for (uint32_t c = 0; c < w->info.n_cols; c++) {
		if (!cols[c].vals) {
			if ((rc = push_len(w, 0)))
				return pw_fail(w, err_set(rc, "out of memory"));
			continue;
		}
		w->blk.len = 0;
		const void *vals = cols[c].vals;
		uint8_t bools[PART_STRIPE_MAX];
		if (w->info.cols[c].type == TALLY_T_BOOL) {
			/* the codec takes bools as bytes, callers give 8-byte slots */
			for (uint32_t i = 0; i < n; i++)
				bools[i] = ((const uint64_t *)vals)[i] != 0;
			vals = bools;
		}
		if ((rc = codec_encode(w->cx, kind_of(w->info.cols[c].type), vals, cols[c].present,
				       n, NULL, &w->blk, &st)) ||
		    (rc = put_block(w)) || (rc = push_len(w, (uint32_t)w->blk.len)))
			return pw_fail(w, err_prefix(rc, "part %s column '%s'", w->tmp,
						     w->info.cols[c].name));
		stats_add(&w->col_stats[c], &st);
	}
	count_stripe(w, ps);
	return 0;
}

/*
 * A rollup block (version 2): u32 n, u8 kind, three zero bytes, then the
 * kind's payload, which the engine encodes (engine/aggkind.c) into the
 * buffer part_writer_payload hands out, behind room for this header.
 * Version 1 blocks had no kind (they were all count/sum/min/max): u32 n,
 * then that payload.
 */
#define ROLLUP_HDR 8

codec_buf *part_writer_payload(part_writer *w, codec_ctx **cx)
{
	*cx = w->cx;
	w->blk.len = 0;
	if (codec_buf_reserve(&w->blk, ROLLUP_HDR))
		return NULL;
	w->blk.len = ROLLUP_HDR;
	return &w->blk;
}

int part_writer_rollup(part_writer *w, uint32_t num, unsigned level, unsigned kind, uint32_t n)
{
	if (w->failed || !w->in_key || num >= w->info.n_num || level >= w->info.n_levels ||
	    kind == 0 || kind > 255 || w->blk.len < ROLLUP_HDR)
		return err_set(TALLY_EINVAL, "part %s: bad rollup call", w->tmp);
	if (n == 0)
		return 0;
	if (n > CODEC_BLOCK_MAX)
		return pw_fail(
			w, err_set(TALLY_ELIMIT, "part %s: %u buckets in one rollup", w->tmp, n));
	le_put32(w->blk.p, n);
	memset(w->blk.p + 4, 0, 4);
	w->blk.p[4] = (uint8_t)kind;
	int rc = put_block(w);
	if (rc)
		return pw_fail(w, err_prefix(rc, "part %s rollup", w->tmp));
	uint32_t r = num * w->info.n_levels + level;
	w->roll[2 * r] = (uint32_t)w->blk.len;
	w->roll[2 * r + 1] = n;
	return 0;
}

int part_writer_finish(part_writer *w, uint64_t *bytes)
{
	if (w->failed)
		return err_set(TALLY_EFAILED, "part writer %s failed earlier", w->tmp);
	end_key(w);
	/* the index header goes in front of the keys: build it apart */
	wbuf h = {0};
	const part_info *in = &w->info;
	wb_var(&h, PART_VERSION);
	wb_str(&h, in->table, (uint32_t)strlen(in->table));
	wb_var(&h, in->key_tag != NULL);
	if (in->key_tag)
		wb_str(&h, in->key_tag, (uint32_t)strlen(in->key_tag));
	wb_svar(&h, in->partition_start);
	wb_var(&h, (uint64_t)in->partition_width);
	wb_var(&h, in->n_levels);
	for (unsigned l = 0; l < in->n_levels; l++)
		wb_var(&h, (uint64_t)in->levels[l]);
	wb_svar(&h, in->align_offset);
	wb_var(&h, w->rows);
	wb_svar(&h, w->rows ? w->tmin : 0);
	wb_svar(&h, w->rows ? w->tmax : 0);
	wb_var(&h, in->n_cols);
	for (uint32_t c = 0; c < in->n_cols; c++) {
		wb_str(&h, in->cols[c].name, in->cols[c].len);
		wb_var(&h, in->cols[c].type);
	}
	wb_var(&h, w->n_keys);
	wb_bytes(&h, w->index.p, w->index.len);
	int rc = 0;
	uint8_t *z = NULL;
	if (h.err || w->index.err) {
		rc = err_set(-ENOMEM, "out of memory");
		goto out;
	}
	size_t zcap = ZSTD_compressBound(h.len);
	z = mem_alloc(zcap);
	if (!z) {
		rc = err_set(-ENOMEM, "out of memory");
		goto out;
	}
	size_t zl = ZSTD_compress(z, zcap, h.p, h.len, INDEX_ZSTD_LEVEL);
	if (ZSTD_isError(zl)) {
		rc = err_set(TALLY_EINVAL, "part %s: zstd: %s", w->tmp, ZSTD_getErrorName(zl));
		goto out;
	}
	uint8_t f[PART_FOOTER];
	le_put64(f, w->off);
	le_put64(f + 8, zl);
	le_put64(f + 16, h.len);
	le_put64(f + 24, XXH3_64bits(z, zl));
	memcpy(f + 32, PART_END_MAGIC, 8);
	le_put64(f + 40, XXH3_64bits(f, 40));
	if ((rc = fio_pwrite_full(w->fd, z, zl, w->off)) ||
	    (rc = fio_pwrite_full(w->fd, f, sizeof f, w->off + zl))) {
		rc = err_sys(-rc, "write %s", w->tmp);
		goto out;
	}
	if ((rc = fio_fsync(w->fd))) {
		rc = err_sys(-rc, "fsync %s", w->tmp);
		goto out;
	}
	if (fio_rename(w->tmp, w->dst)) {
		rc = err_sys(errno, "rename %s", w->tmp);
		goto out;
	}
	w->tmp[0] = 0; /* nothing left to clean up */
	if ((rc = fio_fsync_dir(w->dir)))
		goto out;
	if (bytes)
		*bytes = w->off + zl + PART_FOOTER;
out:
	mem_free(h.p);
	mem_free(z);
	if (rc)
		w->failed = 1;
	return rc;
}

const codec_stats *part_writer_col_stats(const part_writer *w)
{
	return w->col_stats;
}

void part_writer_free(part_writer *w)
{
	if (!w)
		return;
	if (w->fd >= 0)
		fio_close(w->fd);
	if (w->tmp[0])
		fio_unlink(w->tmp);
	mem_free(w->arena);
	mem_free(w->info.cols);
	mem_free(w->col_stats);
	codec_ctx_free(w->cx);
	codec_buf_free(&w->blk);
	mem_free(w->index.p);
	mem_free(w->key.p);
	mem_free(w->stripes);
	mem_free(w->lens);
	mem_free(w->roll);
	part_scratch_free(&w->copy_s);
	mem_free(w);
}

uint64_t part_writer_copied(const part_writer *w)
{
	return w->copied;
}

/* ---------------------------------------------------------------- reader */

void part_scratch_free(part_scratch *s)
{
	codec_ctx_free(s->cx);
	codec_buf_free(&s->raw);
	codec_buf_free(&s->arena);
	codec_buf_free(&s->arena2);
	codec_buf_free(&s->rows);
	codec_buf_free(&s->windows);
	memset(s, 0, sizeof *s);
}

void part_close(part *p)
{
	if (!p)
		return;
	if (p->map)
		munmap((void *)p->map, p->file_bytes);
	if (p->fd >= 0)
		close(p->fd);
	mem_free(p->path);
	mem_free(p->info.cols);
	mem_free(p->info.num_col);
	mem_free(p->info.num_of);
	mem_free(p->keys);
	mem_free(p->stripes);
	mem_free(p->refs);
	mem_free(p->rollups);
	mem_free(p->arena);
	mem_free(p);
}

#define BAD(why)                                                          \
	do {                                                              \
		rc = err_set(TALLY_ECORRUPT, "%s: index: %s", path, why); \
		goto fail;                                                \
	} while (0)

/* Grows an array to hold n + 1 elements. */
static int grow(void **arr, uint32_t *cap, uint32_t n, size_t elem)
{
	if (n < *cap)
		return 0;
	uint32_t nc = *cap ? *cap * 2 : 64;
	void *na = mem_realloc(*arr, (size_t)nc * elem);
	if (!na)
		return -ENOMEM;
	*arr = na;
	*cap = nc;
	return 0;
}

static int parse_index(part *p, const uint8_t *ix, size_t len)
{
	const char *path = p->path;
	int rc = 0;
	rbuf r = {ix, ix + len, 0};
	/* every string lands in one arena no larger than the index */
	p->arena = mem_alloc(len + 1);
	if (!p->arena)
		return err_set(-ENOMEM, "out of memory");
	char *a = p->arena;
#define STR(dst, dstlen)                              \
	do {                                          \
		uint64_t n_ = rb_var(&r);             \
		const uint8_t *s_ = rb_bytes(&r, n_); \
		if (!s_)                              \
			BAD("truncated string");      \
		memcpy(a, s_, n_);                    \
		a[n_] = 0;                            \
		(dst) = a;                            \
		(dstlen) = (uint32_t)n_;              \
		a += n_ + 1;                          \
	} while (0)
	uint32_t dummy;
	if (rb_var(&r) != p->version)
		BAD("index version differs from the header's");
	part_info *in = &p->info;
	STR(in->table, dummy);
	(void)dummy;
	if (rb_var(&r))
		STR(in->key_tag, dummy);
	in->partition_start = rb_svar(&r);
	in->partition_width = (int64_t)rb_var(&r);
	in->n_levels = (unsigned)rb_var(&r);
	if (r.bad || in->n_levels == 0 || in->n_levels > TALLY_LEVELS_MAX)
		BAD("bad level count");
	for (unsigned l = 0; l < in->n_levels; l++)
		in->levels[l] = (int64_t)rb_var(&r);
	in->align_offset = rb_svar(&r);
	in->n_rows = rb_var(&r);
	in->tmin = rb_svar(&r);
	in->tmax = rb_svar(&r);
	uint64_t nc = rb_var(&r);
	if (r.bad || nc > PART_COLS_MAX)
		BAD("bad column count");
	in->n_cols = (uint32_t)nc;
	in->cols = mem_calloc(nc ? nc : 1, sizeof *in->cols);
	in->num_col = mem_calloc(nc ? nc : 1, sizeof *in->num_col);
	in->num_of = mem_calloc(nc ? nc : 1, sizeof *in->num_of);
	if (!in->cols || !in->num_col || !in->num_of) {
		rc = err_set(-ENOMEM, "out of memory");
		goto fail;
	}
	for (uint32_t c = 0; c < in->n_cols; c++) {
		STR(in->cols[c].name, in->cols[c].len);
		uint64_t t = rb_var(&r);
		if (t < TALLY_T_F64 || t > TALLY_T_TAG)
			BAD("bad column type");
		in->cols[c].type = (uint8_t)t;
		in->num_of[c] = -1;
		if (is_num((uint8_t)t)) {
			in->num_of[c] = (int32_t)in->n_num;
			in->num_col[in->n_num++] = c;
		}
	}
	uint64_t nk = rb_var(&r);
	if (r.bad || nk > len)
		BAD("bad key count");
	p->n_keys = (uint32_t)nk;
	p->keys = mem_calloc(nk ? nk : 1, sizeof *p->keys);
	if (!p->keys) {
		rc = err_set(-ENOMEM, "out of memory");
		goto fail;
	}
	uint32_t cap_st = 0, cap_ref = 0, cap_ro = 0;
	uint64_t off = PART_HEADER;
	uint32_t no = 0;
	uint32_t per = in->n_cols + 1;
	uint64_t rows = 0;
	for (uint32_t k = 0; k < p->n_keys; k++) {
		part_key *pk = &p->keys[k];
		const char *ks;
		STR(ks, pk->len);
		pk->key = ks;
		if (k && (memcmp(p->keys[k - 1].key, ks,
				 p->keys[k - 1].len < pk->len ? p->keys[k - 1].len : pk->len) > 0))
			BAD("keys out of order");
		pk->n_rows = rb_var(&r);
		pk->tmin = rb_svar(&r);
		pk->tmax = (int64_t)((uint64_t)pk->tmin + rb_var(&r));
		uint64_t ns = rb_var(&r);
		if (r.bad || ns > len)
			BAD("bad stripe count");
		pk->first_stripe = p->n_stripes;
		pk->n_stripes = (uint32_t)ns;
		uint64_t key_rows = 0;
		for (uint32_t s = 0; s < ns; s++) {
			if (grow((void **)&p->stripes, &cap_st, p->n_stripes, sizeof *p->stripes)) {
				rc = err_set(-ENOMEM, "out of memory");
				goto fail;
			}
			part_stripe *st = &p->stripes[p->n_stripes++];
			uint64_t n = rb_var(&r);
			st->tmin = (int64_t)((uint64_t)pk->tmin + (uint64_t)rb_svar(&r));
			st->tmax = (int64_t)((uint64_t)st->tmin + rb_var(&r));
			if (r.bad || n == 0 || n > PART_STRIPE_MAX)
				BAD("bad stripe row count");
			st->n_rows = (uint32_t)n;
			key_rows += n;
			st->first_ref = p->n_refs;
			for (uint32_t i = 0; i < per; i++) {
				if (grow((void **)&p->refs, &cap_ref, p->n_refs, sizeof *p->refs)) {
					rc = err_set(-ENOMEM, "out of memory");
					goto fail;
				}
				uint64_t bl = rb_var(&r);
				if (r.bad || bl > UINT32_MAX || (i == 0 && bl == 0))
					BAD("bad block length");
				part_ref *ref = &p->refs[p->n_refs++];
				ref->off = off;
				ref->len = (uint32_t)bl;
				ref->no = bl ? no++ : 0;
				if (bl)
					off += bl + 8;
			}
		}
		if (key_rows != pk->n_rows)
			BAD("key row count disagrees with its stripes");
		rows += key_rows;
		pk->first_rollup = p->n_rollups;
		for (uint32_t i = 0; i < in->n_num * in->n_levels; i++) {
			if (grow((void **)&p->rollups, &cap_ro, p->n_rollups, sizeof *p->rollups)) {
				rc = err_set(-ENOMEM, "out of memory");
				goto fail;
			}
			part_rollup *ro = &p->rollups[p->n_rollups++];
			uint64_t bl = rb_var(&r), nb = rb_var(&r);
			if (r.bad || bl > UINT32_MAX || nb > CODEC_BLOCK_MAX || (!bl) != (!nb))
				BAD("bad rollup entry");
			ro->ref.off = off;
			ro->ref.len = (uint32_t)bl;
			ro->ref.no = bl ? no++ : 0;
			ro->n_buckets = (uint32_t)nb;
			if (bl)
				off += bl + 8;
		}
	}
	if (r.bad)
		BAD("truncated");
	if (r.p != r.end)
		BAD("trailing bytes");
	if (rows != in->n_rows)
		BAD("row count disagrees with the keys'");
	p->index_bytes = off; /* where the blocks end: the index must start there */
	p->mem_bytes = sizeof *p + len + 1 + (uint64_t)cap_st * sizeof *p->stripes +
		       (uint64_t)cap_ref * sizeof *p->refs + (uint64_t)cap_ro * sizeof *p->rollups +
		       (uint64_t)p->n_keys * sizeof *p->keys +
		       (uint64_t)in->n_cols * (sizeof *in->cols + 8);
	return 0;
fail:
	return rc;
#undef STR
}

int part_open(const char *path, part **out)
{
	return part_open_reads(path, PART_READS_MMAP, out);
}

int part_open_reads(const char *path, int reads, part **out)
{
	*out = NULL;
	part *p = mem_calloc(1, sizeof *p);
	if (!p)
		return err_set(-ENOMEM, "out of memory");
	int rc = 0;
	uint8_t *z = NULL, *ix = NULL;
	p->fd = open(path, O_RDONLY | O_CLOEXEC);
	p->path = mem_strndup(path, strlen(path));
	if (!p->path) {
		rc = err_set(-ENOMEM, "out of memory");
		goto fail;
	}
	if (p->fd < 0) {
		rc = err_sys(errno, "open %s", path);
		goto fail;
	}
	struct stat sb;
	if (fstat(p->fd, &sb)) {
		rc = err_sys(errno, "stat %s", path);
		goto fail;
	}
	p->file_bytes = (uint64_t)sb.st_size;
	if (p->file_bytes < PART_HEADER + PART_FOOTER) {
		rc = err_set(TALLY_ECORRUPT, "%s: %llu bytes, too short for a part", path,
			     (unsigned long long)p->file_bytes);
		goto fail;
	}
	uint8_t h[PART_HEADER], f[PART_FOOTER];
	if ((rc = fio_pread_full(p->fd, h, sizeof h, 0, path)) ||
	    (rc = fio_pread_full(p->fd, f, sizeof f, p->file_bytes - PART_FOOTER, path)))
		goto fail;
	if (memcmp(h, PART_MAGIC, 8) || le_get64(h + 24) != XXH3_64bits(h, 24)) {
		rc = err_set(TALLY_ECORRUPT, "%s: bad header", path);
		goto fail;
	}
	p->version = le_get32(h + 8);
	if (p->version < PART_VERSION_MIN || p->version > PART_VERSION) {
		rc = err_set(TALLY_EVERSION,
			     "%s: part format version %u, this build reads %d to %d", path,
			     p->version, PART_VERSION_MIN, PART_VERSION);
		goto fail;
	}
	uint64_t hflags = le_get64(h + 16);
	if (hflags & ~(uint64_t)PART_F_STUB) {
		rc = err_set(TALLY_EVERSION, "%s: unknown part flags %#llx", path,
			     (unsigned long long)hflags);
		goto fail;
	}
	p->flags = (uint32_t)hflags;
	if (memcmp(f + 32, PART_END_MAGIC, 8) || le_get64(f + 40) != XXH3_64bits(f, 40)) {
		rc = err_set(TALLY_ECORRUPT, "%s: bad footer", path);
		goto fail;
	}
	uint64_t ioff = le_get64(f), ilen = le_get64(f + 8), iraw = le_get64(f + 16);
	if (ioff < PART_HEADER || ilen > p->file_bytes ||
	    ioff + ilen != p->file_bytes - PART_FOOTER || iraw > PART_INDEX_MAX) {
		rc = err_set(TALLY_ECORRUPT, "%s: footer points outside the file", path);
		goto fail;
	}
	z = mem_alloc(ilen ? ilen : 1);
	ix = mem_alloc(iraw ? iraw : 1);
	if (!z || !ix) {
		rc = err_set(-ENOMEM, "out of memory");
		goto fail;
	}
	if ((rc = fio_pread_full(p->fd, z, ilen, ioff, path)))
		goto fail;
	if (XXH3_64bits(z, ilen) != le_get64(f + 24)) {
		rc = err_set(TALLY_ECORRUPT, "%s: index checksum mismatch", path);
		goto fail;
	}
	size_t got = ZSTD_decompress(ix, iraw, z, ilen);
	if (ZSTD_isError(got) || got != iraw) {
		rc = err_set(TALLY_ECORRUPT, "%s: index does not decompress", path);
		goto fail;
	}
	if ((rc = parse_index(p, ix, iraw)))
		goto fail;
	p->whole_bytes = p->index_bytes + ilen + PART_FOOTER;
	if (p->flags & PART_F_STUB) {
		/* rollup blocks lie back to back after the header, in index order */
		uint64_t local = PART_HEADER;
		for (uint32_t r = 0; r < p->n_rollups; r++)
			if (p->rollups[r].ref.len) {
				p->rollups[r].ref.off = local;
				local += p->rollups[r].ref.len + 8;
			}
		p->index_bytes = local;
	} else {
		p->whole_bytes = p->file_bytes;
	}
	if (p->index_bytes != ioff) {
		rc = err_set(TALLY_ECORRUPT, "%s: blocks end at %llu but the index starts at %llu",
			     path, (unsigned long long)p->index_bytes, (unsigned long long)ioff);
		goto fail;
	}
	mem_free(z);
	mem_free(ix);
	if (reads == PART_READS_MMAP) {
		void *m = mmap(NULL, p->file_bytes, PROT_READ, MAP_SHARED, p->fd, 0);
		p->map = m == MAP_FAILED ? NULL : m; /* without it, blocks are pread */
	}
	*out = p;
	return 0;
fail:
	mem_free(z);
	mem_free(ix);
	part_close(p);
	return rc;
}

const part_key *part_find_key(const part *p, const char *key, uint32_t len)
{
	uint32_t lo = 0, hi = p->n_keys;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		const part_key *k = &p->keys[mid];
		int c = memcmp(k->key, key, k->len < len ? k->len : len);
		if (c == 0)
			c = (k->len > len) - (k->len < len);
		if (c == 0)
			return k;
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

/* A block, its checksum checked: *data points into the part's map, or
 * into s->raw where it had to be read (no map) or fetched (a stub's column
 * block, through its fetch hook). */
static int read_block(const part *p, const part_ref *ref, part_scratch *s, int remote,
		      const uint8_t **data)
{
	const uint8_t *b;
	int rc;
	if (remote && !p->fetch)
		return err_set(TALLY_EREMOTE,
			       "%s block %u: in object storage, and tiering is not "
			       "configured",
			       p->path, ref->no);
	if (!remote && p->map) {
		b = p->map + ref->off;
	} else {
		/* the buffer is reused for every block: what the last read left
		 * in it is garbage now, and reserving past it would make the
		 * buffer twice the largest block */
		s->raw.len = 0;
		if ((rc = codec_buf_reserve(&s->raw, (size_t)ref->len + 8)))
			return err_set(rc, "out of memory");
		if (remote)
			rc = p->fetch(p->fetch_ctx, p, ref->off, (size_t)ref->len + 8, s->raw.p);
		else
			rc = fio_pread_full(p->fd, s->raw.p, (size_t)ref->len + 8, ref->off,
					    p->path);
		if (rc)
			return rc;
		s->raw.len = ref->len;
		b = s->raw.p;
	}
	if (XXH3_64bits(b, ref->len) != le_get64(b + ref->len))
		return err_set(TALLY_ECORRUPT, "%s block %u (offset %llu): checksum mismatch",
			       p->path, ref->no, (unsigned long long)ref->off);
	if (!s->cx && !(s->cx = codec_ctx_new()))
		return err_set(-ENOMEM, "out of memory");
	*data = b;
	return 0;
}

/* The checked block of a stripe's column (col -1: the timestamps); *b
 * NULL with *absent = 1 when the stripe has no value of it. */
static int col_block(const part *p, const part_stripe *st, int col, part_scratch *s,
		     const part_ref **ref, const uint8_t **b, int *absent)
{
	*absent = 0;
	*b = NULL;
	if (col < -1 || col >= (int)p->info.n_cols)
		return err_set(TALLY_EINVAL, "%s: no column %d", p->path, col);
	*ref = &p->refs[st->first_ref + (uint32_t)(col + 1)];
	if (!(*ref)->len) {
		*absent = 1;
		return 0;
	}
	return read_block(p, *ref, s, (p->flags & PART_F_STUB) != 0, b);
}

int part_read_col(const part *p, const part_stripe *st, int col, part_scratch *s, void *vals,
		  uint64_t *present, int *absent)
{
	const part_ref *ref = NULL;
	const uint8_t *b;
	int rc = col_block(p, st, col, s, &ref, &b, absent);
	if (rc || !b)
		return rc;
	enum codec_kind kind = col < 0 ? CODEC_TS : kind_of(p->info.cols[col].type);
	rc = codec_decode(s->cx, b, ref->len, kind, st->n_rows, vals, present, &s->arena);
	if (rc)
		return err_prefix(rc, "%s block %u", p->path, ref->no);
	if (kind == CODEC_BOOL) {
		/* bytes to 8-byte slots, from the end so nothing is overwritten
		 * before it is read */
		uint8_t *by = vals;
		uint64_t *u = vals;
		for (uint32_t i = st->n_rows; i-- > 0;)
			u[i] = by[i];
	}
	return 0;
}

int part_read_col_head(const part *p, const part_stripe *st, int col, part_scratch *s, void *vals,
		       uint64_t *present, uint32_t want, int64_t stop, uint32_t *got, int *absent)
{
	*got = 0;
	if (col < -1 || col >= (int)p->info.n_cols)
		return err_set(TALLY_EINVAL, "%s: no column %d", p->path, col);
	enum codec_kind kind = col < 0 ? CODEC_TS : kind_of(p->info.cols[col].type);
	if (kind == CODEC_BOOL || kind == CODEC_STR || kind == CODEC_KEY) {
		*got = st->n_rows;
		return part_read_col(p, st, col, s, vals, present, absent);
	}
	const part_ref *ref = NULL;
	const uint8_t *b;
	int rc = col_block(p, st, col, s, &ref, &b, absent);
	if (rc || !b)
		return rc;
	rc = codec_decode_head(s->cx, b, ref->len, kind, st->n_rows, want, stop, vals, present,
			       got);
	if (rc)
		return err_prefix(rc, "%s block %u", p->path, ref->no);
	return 0;
}

void part_prefetch_stripe(const part *p, const part_stripe *st)
{
	if (!(p->flags & PART_F_STUB) || !p->prefetch)
		return;
	const part_ref *refs[64];
	uint32_t n = 0;
	for (uint32_t c = 0; c <= p->info.n_cols && n < 64; c++)
		if (p->refs[st->first_ref + c].len)
			refs[n++] = &p->refs[st->first_ref + c];
	p->prefetch(p->fetch_ctx, p, refs, n);
}

int part_read_rollup(const part *p, const part_key *k, uint32_t num, unsigned level,
		     part_scratch *s, part_rblock *out)
{
	memset(out, 0, sizeof *out);
	if (num >= p->info.n_num || level >= p->info.n_levels)
		return err_set(TALLY_EINVAL, "%s: no rollup %u/%u", p->path, num, level);
	const part_rollup *ro = &p->rollups[k->first_rollup + num * p->info.n_levels + level];
	out->block = ro->ref.no;
	if (!ro->ref.len)
		return 0;
	const uint8_t *b;
	int rc = read_block(p, &ro->ref, s, 0, &b); /* rollups are always local */
	if (rc)
		return rc;
	size_t hdr = p->version == 1 ? 4 : ROLLUP_HDR;
	if (ro->ref.len < hdr || le_get32(b) != ro->n_buckets ||
	    (hdr == ROLLUP_HDR && (!b[4] || b[5] || b[6] || b[7])))
		return err_set(TALLY_ECORRUPT, "%s block %u (offset %llu): malformed rollup block",
			       p->path, ro->ref.no, (unsigned long long)ro->ref.off);
	out->kind = hdr == ROLLUP_HDR ? b[4] : PART_KIND_V1;
	out->n = ro->n_buckets;
	out->payload = b + hdr;
	out->len = ro->ref.len - hdr;
	return 0;
}

int part_write_stub(const part *p, const char *dir, const char *name, uint64_t *bytes)
{
	if (p->flags & PART_F_STUB)
		return err_set(TALLY_EINVAL, "%s is a stub already", p->path);
	char tmp[PATH_MAX], dst[PATH_MAX];
	snprintf(tmp, sizeof tmp, "%s/%s.tmp", dir, name);
	snprintf(dst, sizeof dst, "%s/%s", dir, name);
	uint8_t h[PART_HEADER], f[PART_FOOTER], *buf = NULL;
	int rc = 0, fd = -1;
	if ((rc = fio_pread_full(p->fd, h, sizeof h, 0, p->path)) ||
	    (rc = fio_pread_full(p->fd, f, sizeof f, p->file_bytes - PART_FOOTER, p->path)))
		return rc;
	uint64_t ilen = le_get64(f + 8);
	size_t cap = 1 << 16;
	if (!(buf = mem_alloc(cap)))
		return err_set(-ENOMEM, "out of memory");
	fd = fio_open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0) {
		rc = err_sys(errno, "create %s", tmp);
		goto out;
	}
	le_put64(h + 16, PART_F_STUB);
	le_put64(h + 24, XXH3_64bits(h, 24));
	uint64_t off = PART_HEADER;
	if ((rc = fio_pwrite_full(fd, h, sizeof h, 0)))
		goto werr;
	/* the rollup blocks with their checksums, then the index, as they are */
	for (uint32_t r = 0; r <= p->n_rollups; r++) {
		uint64_t from, len;
		if (r < p->n_rollups) {
			if (!p->rollups[r].ref.len)
				continue;
			from = p->rollups[r].ref.off;
			len = p->rollups[r].ref.len + 8;
		} else {
			from = p->index_bytes;
			len = ilen;
		}
		if (len > cap) {
			uint8_t *nb = mem_realloc(buf, len);
			if (!nb) {
				rc = err_set(-ENOMEM, "out of memory");
				goto out;
			}
			buf = nb;
			cap = len;
		}
		if ((rc = fio_pread_full(p->fd, buf, len, from, p->path)))
			goto out;
		if (r < p->n_rollups && XXH3_64bits(buf, len - 8) != le_get64(buf + len - 8)) {
			rc = err_set(TALLY_ECORRUPT,
				     "%s block %u: checksum mismatch (writing its stub)", p->path,
				     p->rollups[r].ref.no);
			goto out;
		}
		if ((rc = fio_pwrite_full(fd, buf, len, off)))
			goto werr;
		off += len;
	}
	le_put64(f, off - ilen); /* the index's new place; length and sum unchanged */
	le_put64(f + 40, XXH3_64bits(f, 40));
	if ((rc = fio_pwrite_full(fd, f, sizeof f, off)))
		goto werr;
	if ((rc = fio_fsync(fd))) {
		rc = err_sys(-rc, "fsync %s", tmp);
		goto out;
	}
	if (fio_rename(tmp, dst)) {
		rc = err_sys(errno, "rename %s", tmp);
		goto out;
	}
	tmp[0] = 0;
	if ((rc = fio_fsync_dir(dir)))
		goto out;
	if (bytes)
		*bytes = off + PART_FOOTER;
	goto out;
werr:
	rc = err_sys(-rc, "write %s", tmp);
out:
	if (fd >= 0)
		fio_close(fd);
	if (tmp[0])
		fio_unlink(tmp);
	mem_free(buf);
	return rc;
}

/* ---------------------------------------------------------------- copying */

/*
 * A copied block keeps its bytes and its xxh3, so only its place changes,
 * and the index records its length as for any block. Blocks that follow
 * each other in src's map (a key's stripes and rollups lie back to back)
 * go out in one write; a block read into the scratch (no map, or a stub's
 * fetched block) goes at once.
 */

int part_writer_can_copy(part_writer *w, const part *src)
{
	if (w->copy_src == src)
		return 1;
	const part_info *a = &w->info, *b = &src->info;
	if (src->version != PART_VERSION || a->n_cols != b->n_cols || a->n_levels != b->n_levels ||
	    a->align_offset != b->align_offset)
		return 0;
	for (unsigned l = 0; l < a->n_levels; l++)
		if (a->levels[l] != b->levels[l])
			return 0;
	for (uint32_t c = 0; c < a->n_cols; c++)
		if (a->cols[c].type != b->cols[c].type || a->cols[c].len != b->cols[c].len ||
		    memcmp(a->cols[c].name, b->cols[c].name, a->cols[c].len))
			return 0;
	w->copy_src = src;
	return 1;
}

static int copy_flush(part_writer *w)
{
	if (!w->run_len)
		return 0;
	int rc = fio_pwrite_full(w->fd, w->run, w->run_len, w->off);
	if (rc)
		return err_sys(-rc, "write %s", w->tmp);
	w->off += w->run_len;
	w->copied += w->run_len;
	w->run_len = 0;
	return 0;
}

/* Appends src's block ref (len > 0) with its checksum. */
static int copy_block(part_writer *w, const part *src, const part_ref *ref, int remote)
{
	const uint8_t *b = NULL;
	int rc = read_block(src, ref, &w->copy_s, remote, &b);
	if (rc)
		return err_prefix(rc, "part %s: copying", w->tmp);
	uint64_t n = (uint64_t)ref->len + 8;
	w->blocks++;
	if (b != w->copy_s.raw.p) {
		if (w->run_len && w->run + w->run_len == b) {
			w->run_len += n;
			return 0;
		}
		if ((rc = copy_flush(w)))
			return rc;
		w->run = b;
		w->run_len = n;
		return 0;
	}
	if ((rc = copy_flush(w)))
		return rc;
	if ((rc = fio_pwrite_full(w->fd, b, n, w->off)))
		return err_sys(-rc, "write %s", w->tmp);
	w->off += n;
	w->copied += n;
	return 0;
}

/* What a copy needs before it starts; failing it leaves the writer as
 * it was. */
static int copy_check(part_writer *w, const part *src, int in_key)
{
	if (w->failed)
		return err_set(TALLY_EFAILED, "part writer %s failed earlier", w->tmp);
	if (in_key && !w->in_key)
		return err_set(TALLY_EINVAL, "part %s: copy outside a key", w->tmp);
	if (!part_writer_can_copy(w, src))
		return err_set(TALLY_EINVAL,
			       "part %s: %s differs in columns, levels or version: its blocks "
			       "cannot be copied",
			       w->tmp, src->path);
	return 0;
}

/* The stripe's blocks, its index entry and its counts; no flush. */
static int copy_stripe(part_writer *w, const part *src, const part_stripe *st)
{
	int rc = 0, remote = (src->flags & PART_F_STUB) != 0;
	uint32_t first_len = w->n_lens;
	for (uint32_t c = 0; c <= src->info.n_cols; c++) {
		const part_ref *ref = &src->refs[st->first_ref + c];
		if (ref->len && (rc = copy_block(w, src, ref, remote)))
			return rc;
		if ((rc = push_len(w, ref->len)))
			return err_set(rc, "out of memory");
	}
	pending_stripe *ps = push_stripe(w, st->n_rows, st->tmin, st->tmax);
	if (!ps)
		return err_set(-ENOMEM, "out of memory");
	ps->first_len = first_len;
	count_stripe(w, ps);
	return 0;
}

/* The rollup block (num, level) of src's key k as the current key's; no
 * flush. Rollup blocks are local even in a stub. */
static int copy_rollup(part_writer *w, const part *src, const part_key *k, uint32_t num,
		       unsigned level)
{
	if (num >= w->info.n_num || level >= w->info.n_levels)
		return err_set(TALLY_EINVAL, "part %s: bad rollup copy", w->tmp);
	const part_rollup *ro = &src->rollups[k->first_rollup + num * src->info.n_levels + level];
	uint32_t r = num * w->info.n_levels + level;
	w->roll[2 * r] = ro->ref.len;
	w->roll[2 * r + 1] = ro->n_buckets;
	return ro->ref.len ? copy_block(w, src, &ro->ref, 0) : 0;
}

int part_writer_copy_stripe(part_writer *w, const part *src, const part_stripe *st)
{
	int rc = copy_check(w, src, 1);
	if (rc)
		return rc;
	if ((rc = copy_stripe(w, src, st)) || (rc = copy_flush(w)))
		return pw_fail(w, rc);
	return 0;
}

int part_writer_copy_rollup(part_writer *w, const part *src, const part_key *k, uint32_t num,
			    unsigned level)
{
	int rc = copy_check(w, src, 1);
	if (rc)
		return rc;
	if ((rc = copy_rollup(w, src, k, num, level)) || (rc = copy_flush(w)))
		return pw_fail(w, rc);
	return 0;
}

int part_writer_copy_key(part_writer *w, const part *src, const part_key *k)
{
	int rc = copy_check(w, src, 0);
	if (rc || (rc = part_writer_key(w, k->key, k->len)))
		return rc;
	for (uint32_t i = 0; i < k->n_stripes && !rc; i++)
		rc = copy_stripe(w, src, &src->stripes[k->first_stripe + i]);
	for (uint32_t num = 0; num < w->info.n_num && !rc; num++)
		for (unsigned l = 0; l < w->info.n_levels && !rc; l++)
			rc = copy_rollup(w, src, k, num, l);
	if (rc || (rc = copy_flush(w)))
		return pw_fail(w, rc);
	return 0;
}
