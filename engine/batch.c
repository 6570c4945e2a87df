/*
 * batch.c — staging rows column by column, and the WAL payload codec.
 *
 * The idea of the payload: a batch is already in columns, so it is
 * written with the part files' column encodings (storage/codec.c: delta
 * timestamps, decimal floats, bit-packed integers) rather than as 8-byte
 * slots for the WAL's LZ4, which left ~12 bytes an event of the
 * benchmark's workload where the encodings leave ~4, for less CPU.
 *
 * WAL payload, version 3 or 4 (all integers little-endian; the WAL record
 * around it adds sequence number and checksums; byte layout in
 * docs/formats.md):
 *
 *   u8  version (3: unlabelled; 4: labelled, and then)
 *     u16 source length (1..255), source, u64 sequence
 *   u32 n_tables, then per table:
 *     u16 name length, name
 *     u16 key tag length (0xffff: table without key tag), key tag
 *     u32 n_rows, u32 n_keys
 *     keys: STR blocks of the n_keys keys
 *     key index: U64 blocks, one index per row (absent when n_keys == 1)
 *     timestamps: TS blocks
 *     u32 n_cols, then per column:
 *       u16 name length, name, u8 type (enum tally_type)
 *       blocks of the column's kind, presence inside
 *   where "blocks" of n values are ceil(n / 65536) codec blocks of up to
 *   65,536 values each, every one as u32 length + the block.
 *
 * Versions 1 and 2 (8-byte slots, before the codecs) are still decoded:
 * a WAL written by an older release replays.
 *
 * The codec is the only place that knows this layout; decode checks every
 * length against the bytes left before reading.
 */
#include "batch.h"

#include <endian.h>
#include <errno.h>
#include <string.h>

#include "err.h"
#include "mem.h"

#define WALFMT_VERSION  1 /* a batch without label, 8-byte slots */
#define WALFMT_LABELLED 2 /* the same, preceded by (source, sequence) */
#define WALFMT_CODED    3 /* a batch without label, codec blocks */
#define WALFMT_CODED_L  4 /* the same, preceded by (source, sequence) */

void stage_batch_init(stage_batch *b)
{
	memset(b, 0, sizeof *b);
}

static void tbatch_free(tbatch *tb)
{
	for (uint32_t i = 0; i < tb->cap_cols; i++) {
		mem_free(tb->cols[i].present);
		mem_free(tb->cols[i].vals);
	}
	mem_free(tb->cols);
	mem_free(tb->slot_of);
	mem_free(tb->ts);
	mem_free(tb->key);
	mem_free(tb->keys);
	strmap_free(&tb->key_map);
	mem_free(tb->arena);
	mem_free(tb->key_arena);
	mem_free(tb);
}

static void coder_free(batch_coder *c)
{
	if (!c)
		return;
	codec_ctx_free(c->cx);
	codec_buf_free(&c->blk);
	codec_buf_free(&c->arena);
	mem_free(c->scratch);
	mem_free(c->bits);
	mem_free(c->keys);
	mem_free(c->key_at);
	mem_free(c);
}

void stage_batch_free(stage_batch *b)
{
	coder_free(b->coder);
	for (uint32_t i = 0; i < b->n_tb; i++)
		tbatch_free(b->tb[i]);
	mem_free(b->tb);
	mem_free(b->by_table);
	memset(b, 0, sizeof *b);
}

void stage_batch_reset(stage_batch *b)
{
	/* Keep each table's buffers; forget rows, keys and columns. Tables
	 * not touched for a while still hold memory; freeing them when a
	 * batch has many is cheap insurance against a one-off wide write. */
	if (b->n_tb > 8) {
		batch_coder *c = b->coder;
		b->coder = NULL;
		stage_batch_free(b);
		b->coder = c;
		return;
	}
	for (uint32_t i = 0; i < b->n_tb; i++) {
		tbatch *tb = b->tb[i];
		for (uint32_t c = 0; c < tb->n_cols; c++) {
			tb->slot_of[tb->cols[c].def->id] = -1;
			memset(tb->cols[c].present, 0, ((tb->cap_rows + 63) / 64) * 8);
		}
		tb->n_cols = 0;
		tb->n_rows = 0;
		tb->n_keys = 0;
		strmap_free(&tb->key_map);
		tb->arena_len = 0;
		tb->key_arena_len = 0;
		tb->last_key = 0;
	}
	b->rows = 0;
	b->labelled = 0;
}

int stage_batch_table(stage_batch *b, table_def *t, tbatch **out)
{
	if (t->id < b->cap_by_table && b->by_table[t->id]) {
		*out = b->by_table[t->id];
		return 0;
	}
	if (t->id >= b->cap_by_table) {
		uint32_t ncap = b->cap_by_table ? b->cap_by_table : 8;
		while (ncap <= t->id)
			ncap *= 2;
		tbatch **nb = mem_realloc(b->by_table, ncap * sizeof *nb);
		if (!nb)
			return -ENOMEM;
		memset(nb + b->cap_by_table, 0, (ncap - b->cap_by_table) * sizeof *nb);
		b->by_table = nb;
		b->cap_by_table = ncap;
	}
	if (mem_grow(&b->tb, &b->cap_tb, b->n_tb + 1, sizeof *b->tb, 4))
		return -ENOMEM;
	tbatch *tb = mem_calloc(1, sizeof *tb);
	if (!tb)
		return -ENOMEM;
	tb->table = t;
	b->tb[b->n_tb++] = tb;
	b->by_table[t->id] = tb;
	*out = tb;
	return 0;
}

static int grow_rows(tbatch *tb)
{
	uint32_t ncap = tb->cap_rows ? tb->cap_rows * 2 : 64;
	if (ncap > (1u << 30))
		return err_set(TALLY_ELIMIT, "batch larger than 2^30 rows");
	int64_t *nts = mem_realloc(tb->ts, ncap * sizeof *nts);
	if (!nts)
		return -ENOMEM;
	tb->ts = nts;
	uint32_t *nk = mem_realloc(tb->key, ncap * sizeof *nk);
	if (!nk)
		return -ENOMEM;
	tb->key = nk;
	size_t ow = (tb->cap_rows + 63) / 64, nw = (ncap + 63) / 64;
	/* Slots past n_cols keep buffers from earlier batches for reuse:
	 * they must grow too. */
	for (uint32_t i = 0; i < tb->cap_cols; i++) {
		bcol *c = &tb->cols[i];
		if (!c->present)
			continue;
		uint64_t *np = mem_realloc(c->present, nw * 8);
		if (!np)
			return -ENOMEM;
		memset(np + ow, 0, (nw - ow) * 8);
		c->present = np;
		bval *nv = mem_realloc(c->vals, ncap * sizeof *nv);
		if (!nv)
			return -ENOMEM;
		c->vals = nv;
	}
	tb->cap_rows = ncap;
	return 0;
}

int tbatch_row_begin(tbatch *tb, int64_t ts)
{
	if (tb->n_rows == tb->cap_rows) {
		int rc = grow_rows(tb);
		if (rc)
			return rc;
	}
	tb->ts[tb->n_rows] = ts;
	return 0;
}

static bcol *col_slot(tbatch *tb, col_def *def)
{
	if (def->id < tb->cap_slot && tb->slot_of[def->id] >= 0)
		return &tb->cols[tb->slot_of[def->id]];
	if (def->id >= tb->cap_slot) {
		uint32_t ncap = tb->cap_slot ? tb->cap_slot : 16;
		while (ncap <= def->id)
			ncap *= 2;
		int32_t *ns = mem_realloc(tb->slot_of, ncap * sizeof *ns);
		if (!ns)
			return NULL;
		for (uint32_t i = tb->cap_slot; i < ncap; i++)
			ns[i] = -1;
		tb->slot_of = ns;
		tb->cap_slot = ncap;
	}
	if (tb->n_cols == tb->cap_cols) {
		uint32_t ncap = tb->cap_cols ? tb->cap_cols * 2 : 8;
		bcol *nc = mem_realloc(tb->cols, ncap * sizeof *nc);
		if (!nc)
			return NULL;
		memset(nc + tb->cap_cols, 0, (ncap - tb->cap_cols) * sizeof *nc);
		tb->cols = nc;
		tb->cap_cols = ncap;
	}
	bcol *c = &tb->cols[tb->n_cols];
	/* A slot reused after stage_batch_reset keeps its buffers (sized for
	 * cap_rows, bitmap already zeroed); a new one gets fresh ones. */
	if (!c->present) {
		c->present = mem_calloc((tb->cap_rows + 63) / 64, 8);
		c->vals = mem_alloc(tb->cap_rows * sizeof(bval));
		if (!c->present || !c->vals) {
			mem_free(c->present);
			mem_free(c->vals);
			c->present = NULL;
			c->vals = NULL;
			return NULL;
		}
	}
	c->def = def;
	tb->slot_of[def->id] = (int32_t)tb->n_cols++;
	return c;
}

int tbatch_set(tbatch *tb, col_def *def, bval v)
{
	bcol *c = col_slot(tb, def);
	if (!c)
		return -ENOMEM;
	uint32_t r = tb->n_rows;
	c->present[r >> 6] |= UINT64_C(1) << (r & 63);
	c->vals[r] = v;
	return 0;
}

static int arena_put(char **arena, size_t *len, size_t *cap, const char *s, uint32_t n,
		     uint64_t *ref)
{
	if (n > BATCH_STR_LEN_MAX)
		return err_set(TALLY_ELIMIT, "string longer than %u bytes", BATCH_STR_LEN_MAX);
	if (!*arena || *len + n > *cap) { /* never NULL, even for "" */
		size_t ncap = *cap ? *cap : 4096;
		while (ncap < *len + n)
			ncap *= 2;
		if (ncap > (UINT64_C(1) << 47))
			return err_set(TALLY_ELIMIT, "batch strings exceed 2^47 bytes");
		char *na = mem_realloc(*arena, ncap);
		if (!na)
			return -ENOMEM;
		*arena = na;
		*cap = ncap;
	}
	memcpy(*arena + *len, s, n);
	*ref = ((uint64_t)*len << 16) | n;
	*len += n;
	return 0;
}

int tbatch_set_str(tbatch *tb, col_def *def, const char *s, uint32_t len)
{
	bval v = {0};
	int rc = arena_put(&tb->arena, &tb->arena_len, &tb->arena_cap, s, len, &v.ref);
	return rc ? rc : tbatch_set(tb, def, v);
}

void tbatch_row_abort(tbatch *tb)
{
	uint32_t r = tb->n_rows;
	for (uint32_t i = 0; i < tb->n_cols; i++)
		tb->cols[i].present[r >> 6] &= ~(UINT64_C(1) << (r & 63));
}

/* Index of key in the batch's dictionary, added if new. The common case,
 * the same key as the previous row, costs one compare. */
static int key_index(tbatch *tb, const char *key, uint32_t len, uint32_t *out)
{
	if (tb->n_keys) {
		uint32_t kl;
		const char *k = tbatch_key(tb, tb->last_key, &kl);
		if (kl == len && strmap_eq(k, key, len)) {
			*out = tb->last_key;
			return 0;
		}
	}
	uint64_t h = strmap_hash(key, len);
	uintptr_t idx = (uintptr_t)strmap_get(&tb->key_map, key, len, h);
	if (idx) {
		*out = tb->last_key = (uint32_t)(idx - 1);
		return 0;
	}
	if (mem_grow(&tb->keys, &tb->cap_keys, tb->n_keys + 1, sizeof *tb->keys, 16))
		return -ENOMEM;
	/* The map points into key_arena, so key_arena must not move while the
	 * map is live: rebuild the map when it does. */
	char *old = tb->key_arena;
	uint64_t ref;
	int rc = arena_put(&tb->key_arena, &tb->key_arena_len, &tb->key_arena_cap, key, len, &ref);
	if (rc)
		return rc;
	tb->keys[tb->n_keys] = ref;
	if (old != tb->key_arena) {
		strmap_free(&tb->key_map);
		for (uint32_t i = 0; i < tb->n_keys; i++) {
			uint32_t kl;
			const char *k = tbatch_key(tb, i, &kl);
			if (strmap_put(&tb->key_map, k, kl, strmap_hash(k, kl),
				       (void *)(uintptr_t)(i + 1)))
				return -ENOMEM;
		}
	}
	if (strmap_put(&tb->key_map, tb->key_arena + (ref >> 16), len, h,
		       (void *)(uintptr_t)(tb->n_keys + 1)))
		return -ENOMEM;
	*out = tb->last_key = tb->n_keys++;
	return 0;
}

int tbatch_row_commit(stage_batch *b, tbatch *tb, const char *key, uint32_t len)
{
	uint32_t k;
	int rc = key_index(tb, key, len, &k);
	if (rc) {
		tbatch_row_abort(tb);
		return rc;
	}
	tb->key[tb->n_rows++] = k;
	b->rows++;
	return 0;
}

int tbatch_append(stage_batch *b, tbatch *tb, const char *key, uint32_t key_len, uint32_t n,
		  const int64_t *ts, uint32_t n_cols, col_def *const *defs, const void *const *vals,
		  const uint8_t *const *present)
{
	uint32_t k;
	int rc;
	if (n == 0)
		return 0;
	if (tb->n_rows + n > (1u << 30))
		return err_set(TALLY_ELIMIT, "batch larger than 2^30 rows");
	while (tb->n_rows + n > tb->cap_rows)
		if ((rc = grow_rows(tb)))
			return rc;
	if ((rc = key_index(tb, key, key_len, &k)))
		return rc;
	uint32_t base = tb->n_rows;
	memcpy(tb->ts + base, ts, (size_t)n * sizeof *ts);
	for (uint32_t r = 0; r < n; r++)
		tb->key[base + r] = k;
	for (uint32_t c = 0; c < n_cols; c++) {
		bcol *bc = col_slot(tb, defs[c]);
		if (!bc)
			return -ENOMEM;
		enum tally_type t = defs[c]->type;
		const uint8_t *pres = present[c];
		for (uint32_t r = 0; r < n; r++) {
			if (pres && !((pres[r / 8] >> (r % 8)) & 1))
				continue;
			bval v;
			if (type_is_string(t)) {
				const char *str = ((const char *const *)vals[c])[r];
				if ((rc = arena_put(&tb->arena, &tb->arena_len, &tb->arena_cap, str,
						    (uint32_t)strlen(str), &v.ref)))
					return rc;
			} else if (t == TALLY_T_BOOL) {
				v.u64 = ((const uint8_t *)vals[c])[r] != 0;
			} else {
				memcpy(&v, (const char *)vals[c] + (size_t)r * 8, 8);
			}
			uint32_t row = base + r;
			bc->present[row >> 6] |= UINT64_C(1) << (row & 63);
			bc->vals[row] = v;
		}
	}
	tb->n_rows += n;
	b->rows += n;
	return 0;
}

/* ---------------------------------------------------------------- encode */

typedef struct obuf {
	char *p;
	size_t len, cap;
	int err;
} obuf;

static void ob_need(obuf *o, size_t n)
{
	if (o->err || o->len + n <= o->cap)
		return;
	size_t ncap = o->cap ? o->cap : 65536;
	while (ncap < o->len + n)
		ncap *= 2;
	char *np = mem_realloc(o->p, ncap);
	if (!np) {
		o->err = -ENOMEM;
		return;
	}
	o->p = np;
	o->cap = ncap;
}

static void ob_put(obuf *o, const void *src, size_t n)
{
	ob_need(o, n);
	if (!o->err) {
		memcpy(o->p + o->len, src, n);
		o->len += n;
	}
}

static void ob_u8(obuf *o, uint8_t v)
{
	ob_put(o, &v, 1);
}
static void ob_u16(obuf *o, uint16_t v)
{
	v = htole16(v);
	ob_put(o, &v, 2);
}
static void ob_u32(obuf *o, uint32_t v)
{
	v = htole32(v);
	ob_put(o, &v, 4);
}
static void ob_u64(obuf *o, uint64_t v)
{
	v = htole64(v);
	ob_put(o, &v, 8);
}
static void ob_str(obuf *o, const char *s, uint32_t n)
{
	ob_u16(o, (uint16_t)n);
	ob_put(o, s, n);
}

static uint32_t col_count(const bcol *c, uint32_t n_rows)
{
	uint32_t n = 0;
	for (uint32_t w = 0; w < (n_rows + 63) / 64; w++)
		n += (uint32_t)__builtin_popcountll(c->present[w]);
	return n;
}

static batch_coder *coder_get(const stage_batch *b)
{
	stage_batch *m = (stage_batch *)b; /* the coder is scratch, not content */
	if (!m->coder && (m->coder = mem_calloc(1, sizeof *m->coder)) &&
	    !(m->coder->cx = codec_ctx_new())) {
		mem_free(m->coder);
		m->coder = NULL;
	}
	return m->coder;
}

/* Room for n elements of size sz in one of the coder's arrays. */
static void *coder_room(void **p, size_t *cap, size_t n, size_t sz)
{
	if (n * sz > *cap) {
		void *np = mem_realloc(*p, n * sz);
		if (!np)
			return NULL;
		*p = np;
		*cap = n * sz;
	}
	return *p;
}

static enum codec_kind type_kind(enum tally_type t)
{
	switch (t) {
	case TALLY_T_F64: return CODEC_F64;
	case TALLY_T_I64: return CODEC_I64;
	case TALLY_T_U64: return CODEC_U64;
	case TALLY_T_BOOL: return CODEC_BOOL;
	default: return CODEC_STR;
	}
}

/* Numbers are bit-packed already (zstd rarely pays on them and costs
 * more than the rest of the encoding); strings and keys repeat bytes. */
static const codec_opts OPT_NUM = {.zstd_level = -1};
static const codec_opts OPT_STR = {.zstd_level = 1};
/* Times come nearly in order and key indexes as the keys take turns:
 * the transform is known, and the writer skips measuring the three. */
static const codec_opts OPT_TS = {.zstd_level = -1, .order = CODEC_ORDER_DELTA};
static const codec_opts OPT_KEY_INDEX = {.zstd_level = -1, .order = CODEC_ORDER_VALUE};

/* One slice's block as u32 length + bytes. */
static void put_block(obuf *o, batch_coder *c, enum codec_kind kind, const codec_opts *opt,
		      const void *vals, const uint64_t *present, uint32_t n)
{
	if (o->err)
		return;
	c->blk.len = 0;
	int rc = codec_encode(c->cx, kind, vals, present, n, opt, &c->blk, NULL);
	if (rc) {
		o->err = rc;
		return;
	}
	ob_u32(o, (uint32_t)c->blk.len);
	ob_put(o, c->blk.p, c->blk.len);
}

/* Values of row [s, s + m) of the table's column (or keys, when col is
 * NULL and kind STR; key indexes when col is NULL and kind U64) in the
 * array the codec takes. */
static const void *slice_vals(batch_coder *c, const tbatch *tb, const bcol *col,
			      enum codec_kind kind, uint32_t s, uint32_t m)
{
	if (!col && kind == CODEC_U64) {
		uint64_t *v = coder_room(&c->scratch, &c->scratch_cap, m, 8);
		for (uint32_t i = 0; v && i < m; i++)
			v[i] = tb->key[s + i];
		return v;
	}
	if (!col) {
		codec_str *v = coder_room(&c->scratch, &c->scratch_cap, m, sizeof *v);
		for (uint32_t i = 0; v && i < m; i++)
			v[i].p = tbatch_key(tb, s + i, &v[i].n);
		return v;
	}
	if (kind == CODEC_BOOL) {
		uint8_t *v = coder_room(&c->scratch, &c->scratch_cap, m, 1);
		for (uint32_t i = 0; v && i < m; i++)
			v[i] = bcol_has(col, s + i) && col->vals[s + i].u64 != 0;
		return v;
	}
	if (kind == CODEC_STR) {
		codec_str *v = coder_room(&c->scratch, &c->scratch_cap, m, sizeof *v);
		for (uint32_t i = 0; v && i < m; i++) {
			v[i] = (codec_str){"", 0};
			if (bcol_has(col, s + i))
				v[i].p = tbatch_str(tb, col->vals[s + i].ref, &v[i].n);
		}
		return v;
	}
	return col->vals + s; /* 8-byte slots: f64, i64, u64 as they are */
}

/* n values in slices of CODEC_BLOCK_MAX (a slice starts on a bitmap
 * word, so its presence is the batch's from there). */
static void put_blocks(obuf *o, batch_coder *c, const tbatch *tb, const bcol *col,
		       enum codec_kind kind, uint32_t n, int all_present)
{
	const codec_opts *opt = kind == CODEC_STR  ? &OPT_STR
				: col              ? &OPT_NUM
				: kind == CODEC_TS ? &OPT_TS
						   : &OPT_KEY_INDEX;
	for (uint32_t s = 0; s < n && !o->err; s += CODEC_BLOCK_MAX) {
		uint32_t m = n - s < CODEC_BLOCK_MAX ? n - s : CODEC_BLOCK_MAX;
		const void *v = kind == CODEC_TS ? (const void *)(tb->ts + s)
						 : slice_vals(c, tb, col, kind, s, m);
		if (!v) {
			o->err = -ENOMEM;
			return;
		}
		put_block(o, c, kind, opt, v, col && !all_present ? col->present + s / 64 : NULL,
			  m);
	}
}

static void encode_table(obuf *o, batch_coder *c, const tbatch *tb)
{
	const table_def *t = tb->table;
	ob_str(o, t->name, t->len);
	if (t->key_spec) /* the key as persisted: a tag, or a tagkey.h spec */
		ob_str(o, t->key_spec, t->key_spec_len);
	else
		ob_u16(o, 0xffff);
	uint32_t n = tb->n_rows;
	ob_u32(o, n);
	ob_u32(o, tb->n_keys);
	put_blocks(o, c, tb, NULL, CODEC_STR, tb->n_keys, 1);
	if (tb->n_keys > 1)
		put_blocks(o, c, tb, NULL, CODEC_U64, n, 1);
	put_blocks(o, c, tb, NULL, CODEC_TS, n, 1);
	uint32_t live = 0;
	for (uint32_t i = 0; i < tb->n_cols; i++)
		live += col_count(&tb->cols[i], n) > 0;
	ob_u32(o, live);
	for (uint32_t i = 0; i < tb->n_cols; i++) {
		const bcol *col = &tb->cols[i];
		uint32_t cnt = col_count(col, n);
		if (!cnt)
			continue;
		ob_str(o, col->def->name, col->def->len);
		ob_u8(o, (uint8_t)col->def->type);
		put_blocks(o, c, tb, col, type_kind(col->def->type), n, cnt == n);
	}
}

int stage_batch_encode(const stage_batch *b, char **buf, size_t *cap, size_t *len)
{
	obuf o = {*buf, 0, *cap, 0};
	batch_coder *c = coder_get(b);
	if (!c)
		return err_set(-ENOMEM, "out of memory encoding a WAL record");
	ob_u8(&o, b->labelled ? WALFMT_CODED_L : WALFMT_CODED);
	if (b->labelled) {
		ob_str(&o, b->source, b->source_len);
		ob_u64(&o, b->seq);
	}
	uint32_t n = 0;
	for (uint32_t i = 0; i < b->n_tb; i++)
		n += b->tb[i]->n_rows > 0;
	ob_u32(&o, n);
	for (uint32_t i = 0; i < b->n_tb; i++)
		if (b->tb[i]->n_rows)
			encode_table(&o, c, b->tb[i]);
	*buf = o.p;
	*cap = o.cap;
	*len = o.len;
	if (o.err == -ENOMEM)
		return err_set(o.err, "out of memory encoding a WAL record");
	return o.err; /* a codec error has its message set */
}

/* ---------------------------------------------------------------- decode */

typedef struct ibuf {
	const unsigned char *p, *end, *start;
	int bad;
} ibuf;

static const unsigned char *ib_take(ibuf *in, size_t n)
{
	if (in->bad || (size_t)(in->end - in->p) < n) {
		in->bad = 1;
		return NULL;
	}
	const unsigned char *r = in->p;
	in->p += n;
	return r;
}
static uint8_t ib_u8(ibuf *in)
{
	const unsigned char *q = ib_take(in, 1);
	return q ? q[0] : 0;
}
static uint16_t ib_u16(ibuf *in)
{
	uint16_t v = 0;
	const unsigned char *q = ib_take(in, 2);
	if (q)
		memcpy(&v, q, 2);
	return le16toh(v);
}
static uint32_t ib_u32(ibuf *in)
{
	uint32_t v = 0;
	const unsigned char *q = ib_take(in, 4);
	if (q)
		memcpy(&v, q, 4);
	return le32toh(v);
}
static uint64_t ib_u64(ibuf *in)
{
	uint64_t v = 0;
	const unsigned char *q = ib_take(in, 8);
	if (q)
		memcpy(&v, q, 8);
	return le64toh(v);
}
static const char *ib_str(ibuf *in, uint32_t *n)
{
	*n = ib_u16(in);
	return (const char *)ib_take(in, *n);
}

#define DECODE_FAIL(what)                                                \
	do {                                                             \
		rc = err_set(TALLY_ECORRUPT, "WAL payload byte %zu: %s", \
			     (size_t)(in.p - in.start), what);           \
		goto fail;                                               \
	} while (0)

/* The next block of a coded table: u32 length, then the block, decoded
 * as m values of kind into vals (and presence into bits when not NULL). */
static int take_block(ibuf *in, batch_coder *c, enum codec_kind kind, uint32_t m, void *vals,
		      uint64_t *bits, const char *what)
{
	size_t at = (size_t)(in->p - in->start);
	uint32_t bl = ib_u32(in);
	const unsigned char *blk = ib_take(in, bl);
	if (!blk)
		return err_set(TALLY_ECORRUPT, "WAL payload byte %zu: truncated %s block", at,
			       what);
	int rc = codec_decode(c->cx, blk, bl, kind, m, vals, bits, &c->arena);
	if (rc == TALLY_ECORRUPT)
		return err_prefix(rc, "WAL payload byte %zu: %s block", at, what);
	return rc;
}

#define SLICES(s, m, n)                                                                  \
	for (uint32_t s = 0, m = (n) < CODEC_BLOCK_MAX ? (n) : CODEC_BLOCK_MAX; s < (n); \
	     s += CODEC_BLOCK_MAX, m = (n)-s < CODEC_BLOCK_MAX ? (n)-s : CODEC_BLOCK_MAX)

/* Keys of a coded table into c->keys, c->key_at[2k] and [2k + 1] their
 * offset and length; then the rows' key indexes at c->key_at + 2 n_keys. */
static int decode_keys(ibuf *in, batch_coder *c, uint32_t n_rows, uint32_t n_keys)
{
	int rc;
	c->keys_len = 0;
	if (!coder_room((void **)&c->key_at, &c->key_at_cap, 2 * (size_t)n_keys + n_rows, 4))
		return -ENOMEM;
	SLICES(s, m, n_keys)
	{
		codec_str *v = coder_room(&c->scratch, &c->scratch_cap, m, sizeof *v);
		if (!v)
			return -ENOMEM;
		if ((rc = take_block(in, c, CODEC_STR, m, v, NULL, "key")))
			return rc;
		for (uint32_t i = 0; i < m; i++) {
			if (v[i].n > BATCH_STR_LEN_MAX)
				return err_set(TALLY_ECORRUPT, "WAL payload byte %zu: key too long",
					       (size_t)(in->p - in->start));
			if (!coder_room((void **)&c->keys, &c->keys_cap, c->keys_len + v[i].n + 1,
					1))
				return -ENOMEM;
			memcpy(c->keys + c->keys_len, v[i].p, v[i].n);
			c->key_at[2 * (s + i)] = (uint32_t)c->keys_len;
			c->key_at[2 * (s + i) + 1] = v[i].n;
			c->keys_len += v[i].n;
		}
	}
	uint32_t *idx = c->key_at + 2 * (size_t)n_keys;
	if (n_keys == 1) {
		memset(idx, 0, (size_t)n_rows * 4);
		return 0;
	}
	SLICES(s, m, n_rows)
	{
		uint64_t *v = coder_room(&c->scratch, &c->scratch_cap, m, 8);
		if (!v)
			return -ENOMEM;
		if ((rc = take_block(in, c, CODEC_U64, m, v, NULL, "key index")))
			return rc;
		for (uint32_t i = 0; i < m; i++) {
			if (v[i] >= n_keys)
				return err_set(TALLY_ECORRUPT,
					       "WAL payload byte %zu: key index out of range",
					       (size_t)(in->p - in->start));
			idx[s + i] = (uint32_t)v[i];
		}
	}
	return 0;
}

/* One column's blocks of a coded table into its slots from row base. */
static int decode_col(ibuf *in, batch_coder *c, tbatch *tb, bcol *col, uint32_t base,
		      uint32_t n_rows)
{
	enum tally_type type = col->def->type;
	enum codec_kind kind = type_kind(type);
	size_t esz = kind == CODEC_BOOL ? 1 : kind == CODEC_STR ? sizeof(codec_str) : 8;
	SLICES(s, m, n_rows)
	{
		void *v = coder_room(&c->scratch, &c->scratch_cap, m, esz);
		uint64_t *bits = coder_room((void **)&c->bits, &c->bits_cap, (m + 63) / 64, 8);
		if (!v || !bits)
			return -ENOMEM;
		int rc = take_block(in, c, kind, m, v, bits, col->def->name);
		if (rc)
			return rc;
		for (uint32_t i = 0; i < m; i++) {
			if (!((bits[i >> 6] >> (i & 63)) & 1))
				continue;
			uint32_t row = base + s + i;
			bval bv;
			if (kind == CODEC_BOOL) {
				bv.u64 = ((const uint8_t *)v)[i] != 0;
			} else if (kind == CODEC_STR) {
				const codec_str *cs = (const codec_str *)v + i;
				if (cs->n > BATCH_STR_LEN_MAX)
					return err_set(TALLY_ECORRUPT,
						       "WAL payload byte %zu: string too long",
						       (size_t)(in->p - in->start));
				if ((rc = arena_put(&tb->arena, &tb->arena_len, &tb->arena_cap,
						    cs->p, cs->n, &bv.ref)))
					return rc;
			} else {
				memcpy(&bv, (const uint64_t *)v + i, 8);
			}
			col->present[row >> 6] |= UINT64_C(1) << (row & 63);
			col->vals[row] = bv;
		}
	}
	return 0;
}

/* The body of a coded table (version 3 and 4) after n_rows and n_keys:
 * timestamps and columns fill the rows' slots, then the rows commit with
 * their keys, as in version 1. */
static int decode_coded(ibuf *in, stage_batch *b, catalog *cat, tbatch *tb, uint32_t n_rows,
			uint32_t n_keys)
{
	batch_coder *c = coder_get(b);
	if (!c)
		return -ENOMEM;
	int rc = decode_keys(in, c, n_rows, n_keys);
	if (rc)
		return rc;
	uint32_t base = tb->n_rows;
	while (base + n_rows > tb->cap_rows)
		if ((rc = grow_rows(tb)))
			return rc;
	SLICES(s, m, n_rows)
	{
		if ((rc = take_block(in, c, CODEC_TS, m, tb->ts + base + s, NULL, "timestamp")))
			return rc;
	}
	uint32_t n_cols = ib_u32(in);
	if (in->bad || n_cols > CAT_COLS_MAX)
		return err_set(TALLY_ECORRUPT, "WAL payload byte %zu: column count out of range",
			       (size_t)(in->p - in->start));
	for (uint32_t ci = 0; ci < n_cols; ci++) {
		uint32_t cl;
		const char *cname = ib_str(in, &cl);
		uint8_t type = ib_u8(in);
		if (in->bad || type < TALLY_T_F64 || type > TALLY_T_TAG)
			return err_set(TALLY_ECORRUPT, "WAL payload byte %zu: bad column header",
				       (size_t)(in->p - in->start));
		col_def *def;
		if ((rc = catalog_column(cat, tb->table, cname, cl, strmap_hash(cname, cl),
					 (enum tally_type)type, &def)))
			return rc;
		bcol *col = col_slot(tb, def);
		if (!col)
			return -ENOMEM;
		if ((rc = decode_col(in, c, tb, col, base, n_rows)))
			return rc;
	}
	const uint32_t *idx = c->key_at + 2 * (size_t)n_keys;
	for (uint32_t r = 0; r < n_rows; r++) {
		const uint32_t *k = c->key_at + 2 * (size_t)idx[r];
		if ((rc = tbatch_row_commit(b, tb, c->keys + k[0], k[1])))
			return rc;
	}
	return 0;
}

int stage_batch_decode(stage_batch *b, catalog *cat, const char *p, size_t len)
{
	ibuf in = {(const unsigned char *)p, (const unsigned char *)p + len,
		   (const unsigned char *)p, 0};
	int rc = 0;
	uint32_t *keyrefs = NULL;
	uint8_t version = ib_u8(&in);
	if (version < WALFMT_VERSION || version > WALFMT_CODED_L)
		DECODE_FAIL("unknown payload version");
	int coded = version >= WALFMT_CODED;
	if (version == WALFMT_LABELLED || version == WALFMT_CODED_L) {
		uint32_t sl;
		const char *src = ib_str(&in, &sl);
		b->seq = ib_u64(&in);
		if (in.bad || sl == 0 || sl > BATCH_SOURCE_MAX)
			DECODE_FAIL("bad batch label");
		memcpy(b->source, src, sl);
		b->source[sl] = 0;
		b->source_len = sl;
		b->labelled = 1;
	}
	uint32_t n_tables = ib_u32(&in);
	for (uint32_t ti = 0; ti < n_tables && !in.bad; ti++) {
		uint32_t nl, kl;
		const char *name = ib_str(&in, &nl);
		uint16_t klraw = ib_u16(&in);
		const char *ktag = NULL;
		kl = 0;
		if (klraw != 0xffff) {
			kl = klraw;
			ktag = (const char *)ib_take(&in, kl);
		}
		uint32_t n_rows = ib_u32(&in), n_keys = ib_u32(&in);
		if (in.bad)
			DECODE_FAIL("truncated table header");
		/* Counts are checked against the bytes left before anything is
		 * sized by them: a plain row takes at least 8 bytes, and every
		 * CODEC_BLOCK_MAX coded rows take at least one block of the
		 * timestamps, whose length alone is 4 bytes (fuzz_batch found a
		 * 58-byte payload asking for 10 GB). */
		if (n_rows == 0 || n_keys == 0 || n_keys > n_rows ||
		    (!coded && (size_t)(in.end - in.p) / 8 < n_rows) ||
		    (coded && (size_t)(in.end - in.p) / 4 <
				      ((size_t)n_rows + CODEC_BLOCK_MAX - 1) / CODEC_BLOCK_MAX))
			DECODE_FAIL("row or key count out of range");
		table_def *t;
		if ((rc = catalog_table(cat, name, nl, strmap_hash(name, nl), ktag, kl, &t)))
			goto fail;
		if ((rc = catalog_key_check(t, ktag, kl, "WAL record")))
			goto fail;
		tbatch *tb;
		if ((rc = stage_batch_table(b, t, &tb)))
			goto fail;
		if (coded) {
			if ((rc = decode_coded(&in, b, cat, tb, n_rows, n_keys)))
				goto fail;
			continue;
		}
		uint32_t base_row = tb->n_rows;
		/* Keys: remember each one's bytes; rows commit with them below. */
		keyrefs = mem_alloc((size_t)n_keys * 2 * sizeof *keyrefs);
		if (!keyrefs) {
			rc = -ENOMEM;
			goto fail;
		}
		for (uint32_t k = 0; k < n_keys; k++) {
			uint32_t l;
			const char *ks = ib_str(&in, &l);
			if (!ks)
				DECODE_FAIL("truncated key");
			keyrefs[2 * k] = (uint32_t)((const unsigned char *)ks - in.start);
			keyrefs[2 * k + 1] = l;
		}
		const unsigned char *key_idx = NULL;
		if (n_keys > 1 && !(key_idx = ib_take(&in, (size_t)n_rows * 4)))
			DECODE_FAIL("truncated key indexes");
		const unsigned char *tsp = ib_take(&in, (size_t)n_rows * 8);
		if (!tsp)
			DECODE_FAIL("truncated timestamps");
		uint32_t n_cols = ib_u32(&in);
		if (in.bad || n_cols > CAT_COLS_MAX)
			DECODE_FAIL("column count out of range");
		/* Rows first (timestamps), then columns fill their values, then
		 * keys commit the rows. */
		uint64_t ts = 0;
		for (uint32_t r = 0; r < n_rows; r++) {
			uint64_t d;
			memcpy(&d, tsp + (size_t)r * 8, 8);
			ts = r ? ts + le64toh(d) : le64toh(d);
			if (tb->n_rows + r >= tb->cap_rows && (rc = grow_rows(tb)))
				goto fail;
			tb->ts[base_row + r] = (int64_t)ts;
		}
		for (uint32_t ci = 0; ci < n_cols; ci++) {
			uint32_t cl;
			const char *cname = ib_str(&in, &cl);
			uint8_t type = ib_u8(&in), all = ib_u8(&in);
			if (in.bad || type < TALLY_T_F64 || type > TALLY_T_TAG || all > 1)
				DECODE_FAIL("bad column header");
			const unsigned char *bits = NULL;
			if (!all && !(bits = ib_take(&in, ((size_t)n_rows + 7) / 8)))
				DECODE_FAIL("truncated presence bitmap");
			col_def *def;
			if ((rc = catalog_column(cat, t, cname, cl, strmap_hash(cname, cl),
						 (enum tally_type)type, &def)))
				goto fail;
			bcol *c = col_slot(tb, def);
			if (!c) {
				rc = -ENOMEM;
				goto fail;
			}
			for (uint32_t r = 0; r < n_rows; r++) {
				if (bits && !((bits[r / 8] >> (r % 8)) & 1))
					continue;
				uint32_t row = base_row + r;
				bval v;
				if (type == TALLY_T_BOOL) {
					v.u64 = ib_u8(&in);
					if (v.u64 > 1)
						DECODE_FAIL("bad boolean");
				} else if (type_is_string((enum tally_type)type)) {
					uint32_t sl;
					const char *s = ib_str(&in, &sl);
					if (!s)
						DECODE_FAIL("truncated string");
					if ((rc = arena_put(&tb->arena, &tb->arena_len,
							    &tb->arena_cap, s, sl, &v.ref)))
						goto fail;
				} else {
					v.u64 = ib_u64(&in);
				}
				if (in.bad)
					DECODE_FAIL("truncated values");
				c->present[row >> 6] |= UINT64_C(1) << (row & 63);
				c->vals[row] = v;
			}
		}
		for (uint32_t r = 0; r < n_rows; r++) {
			uint32_t k = 0;
			if (key_idx) {
				memcpy(&k, key_idx + (size_t)r * 4, 4);
				k = le32toh(k);
				if (k >= n_keys)
					DECODE_FAIL("key index out of range");
			}
			if ((rc = tbatch_row_commit(b, tb, (const char *)in.start + keyrefs[2 * k],
						    keyrefs[2 * k + 1])))
				goto fail;
		}
		mem_free(keyrefs);
		keyrefs = NULL;
	}
	if (in.bad)
		DECODE_FAIL("truncated payload");
	if (in.p != in.end)
		DECODE_FAIL("trailing bytes");
	return 0;
fail:
	mem_free(keyrefs);
	return rc;
}
