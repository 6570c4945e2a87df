/*
 * batch.c — staging rows column by column, and the WAL payload codec.
 *
 * WAL payload, version 1 or 2 (all integers little-endian; the WAL record
 * around it adds sequence number, checksum and LZ4; byte layout in
 * docs/formats.md):
 *
 *   u8  version (1: unlabelled; 2: labelled, and then)
 *     u16 source length (1..255), source, u64 sequence
 *   u32 n_tables, then per table:
 *     u16 name length, name
 *     u16 key tag length (0xffff: table without key tag), key tag
 *     u32 n_rows, u32 n_keys, then per key: u16 length, bytes
 *     u32 key index per row (absent when n_keys == 1)
 *     i64 first timestamp, then n_rows-1 i64 deltas (small, so LZ4 shrinks them)
 *     u32 n_cols, then per column:
 *       u16 name length, name, u8 type (enum tally_type)
 *       u8 all_present; when 0, a bitmap of ceil(n_rows/8) bytes (bit i = row i)
 *       the present values in row order: 8 bytes (f64 bits, i64, u64),
 *       1 byte (bool), or u16 length + bytes (string, tag)
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

#define WALFMT_VERSION  1 /* a batch without label */
#define WALFMT_LABELLED 2 /* the same, preceded by (source, sequence) */

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

void stage_batch_free(stage_batch *b)
{
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
		stage_batch_free(b);
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

static void encode_table(obuf *o, const tbatch *tb)
{
	const table_def *t = tb->table;
	ob_str(o, t->name, t->len);
	if (t->key_tag)
		ob_str(o, t->key_tag, t->key_len);
	else
		ob_u16(o, 0xffff);
	uint32_t n = tb->n_rows;
	ob_u32(o, n);
	ob_u32(o, tb->n_keys);
	for (uint32_t k = 0; k < tb->n_keys; k++) {
		uint32_t kl;
		const char *ks = tbatch_key(tb, k, &kl);
		ob_str(o, ks, kl);
	}
	if (tb->n_keys > 1)
		for (uint32_t r = 0; r < n; r++)
			ob_u32(o, tb->key[r]);
	/* the fixed-width arrays are written straight into the buffer: one
	 * capacity check per column, not per value */
	ob_need(o, (size_t)n * 8);
	if (o->err)
		return;
	for (uint32_t r = 0; r < n; r++) {
		uint64_t d = htole64(r ? (uint64_t)tb->ts[r] - (uint64_t)tb->ts[r - 1]
				       : (uint64_t)tb->ts[0]);
		memcpy(o->p + o->len + (size_t)r * 8, &d, 8);
	}
	o->len += (size_t)n * 8;
	uint32_t live = 0;
	for (uint32_t i = 0; i < tb->n_cols; i++)
		live += col_count(&tb->cols[i], n) > 0;
	ob_u32(o, live);
	for (uint32_t i = 0; i < tb->n_cols; i++) {
		const bcol *c = &tb->cols[i];
		uint32_t cnt = col_count(c, n);
		if (!cnt)
			continue;
		ob_str(o, c->def->name, c->def->len);
		ob_u8(o, (uint8_t)c->def->type);
		ob_u8(o, cnt == n);
		if (cnt != n) {
			ob_need(o, (n + 7) / 8);
			for (uint32_t byte = 0; byte < (n + 7) / 8; byte++)
				ob_u8(o, (uint8_t)(c->present[byte / 8] >> ((byte % 8) * 8)));
		}
		if (cnt == n && !type_is_string(c->def->type) && c->def->type != TALLY_T_BOOL) {
			ob_need(o, (size_t)n * 8);
			if (o->err)
				return;
			for (uint32_t r = 0; r < n; r++) {
				uint64_t v = htole64(c->vals[r].u64);
				memcpy(o->p + o->len + (size_t)r * 8, &v, 8);
			}
			o->len += (size_t)n * 8;
			continue;
		}
		for (uint32_t r = 0; r < n; r++) {
			if (!bcol_has(c, r))
				continue;
			switch (c->def->type) {
			case TALLY_T_BOOL: ob_u8(o, (uint8_t)(c->vals[r].u64 != 0)); break;
			case TALLY_T_STR:
			case TALLY_T_TAG: {
				uint32_t sl;
				const char *s = tbatch_str(tb, c->vals[r].ref, &sl);
				ob_str(o, s, sl);
				break;
			}
			default: ob_u64(o, c->vals[r].u64); break;
			}
		}
	}
}

int stage_batch_encode(const stage_batch *b, char **buf, size_t *cap, size_t *len)
{
	obuf o = {*buf, 0, *cap, 0};
	if (b->labelled) {
		ob_u8(&o, WALFMT_LABELLED);
		ob_str(&o, b->source, b->source_len);
		ob_u64(&o, b->seq);
	} else {
		ob_u8(&o, WALFMT_VERSION);
	}
	uint32_t n = 0;
	for (uint32_t i = 0; i < b->n_tb; i++)
		n += b->tb[i]->n_rows > 0;
	ob_u32(&o, n);
	for (uint32_t i = 0; i < b->n_tb; i++)
		if (b->tb[i]->n_rows)
			encode_table(&o, b->tb[i]);
	*buf = o.p;
	*cap = o.cap;
	*len = o.len;
	return o.err ? err_set(o.err, "out of memory encoding a WAL record") : 0;
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

int stage_batch_decode(stage_batch *b, catalog *cat, const char *p, size_t len)
{
	ibuf in = {(const unsigned char *)p, (const unsigned char *)p + len,
		   (const unsigned char *)p, 0};
	int rc = 0;
	uint32_t *keyrefs = NULL;
	uint8_t version = ib_u8(&in);
	if (version != WALFMT_VERSION && version != WALFMT_LABELLED)
		DECODE_FAIL("unknown payload version");
	if (version == WALFMT_LABELLED) {
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
		if (n_rows == 0 || n_keys == 0 || n_keys > n_rows ||
		    (size_t)(in.end - in.p) / 8 < n_rows)
			DECODE_FAIL("row or key count out of range");
		table_def *t;
		if ((rc = catalog_table(cat, name, nl, strmap_hash(name, nl), ktag, kl, &t)))
			goto fail;
		if ((t->key_tag == NULL) != (ktag == NULL) ||
		    (ktag && (t->key_len != kl || memcmp(t->key_tag, ktag, kl))))
			DECODE_FAIL("key tag differs from the table's");
		tbatch *tb;
		if ((rc = stage_batch_table(b, t, &tb)))
			goto fail;
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
