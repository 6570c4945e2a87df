/*
 * batch.h — the staging column batch and its WAL encoding (internal).
 *
 * A write call first stages its accepted rows here, column by column, per
 * table. The staged batch is then encoded into one WAL record and applied
 * to the shard's memtable and rollups. Recovery decodes WAL records back
 * into the same structure and applies them through the same function, so a
 * replayed event takes exactly the path a fresh one took.
 *
 * Values are 8-byte slots (double, int64, uint64, bool as 0/1, or a string
 * reference (offset << 16 | length) into the batch's arena), indexed by
 * row, with a presence bitmap per column.
 */
#ifndef TALLY_BATCH_H
#define TALLY_BATCH_H

#include <stddef.h>
#include <stdint.h>

#include "catalog.h"
#include "codec.h"
#include "strmap.h"

#define BATCH_STR_LEN_MAX 65535u

typedef union bval {
	double f64;
	int64_t i64;
	uint64_t u64;
	uint64_t ref; /* strings: arena offset << 16 | length */
} bval;

typedef struct bcol {
	col_def *def;
	uint64_t *present; /* bit per row */
	bval *vals;        /* per row; meaningful where present */
} bcol;

typedef struct tbatch {
	table_def *table;
	uint32_t n_rows, cap_rows;
	int64_t *ts;
	uint32_t *key; /* per row: index into keys */
	/* distinct keys of the batch, as arena references */
	uint64_t *keys;
	uint32_t n_keys, cap_keys;
	strmap key_map; /* key bytes -> index + 1 */
	uint32_t last_key;
	/* columns present in the batch */
	bcol *cols;
	uint32_t n_cols, cap_cols;
	int32_t *slot_of; /* col id -> index in cols, -1 absent */
	uint32_t cap_slot;
	char *arena;
	size_t arena_len, arena_cap;
	char *key_arena; /* keys live apart so the key map's pointers never move */
	size_t key_arena_len, key_arena_cap;
} tbatch;

/* A batch label (engine/idem.h): the sender's source id and sequence. */
#define BATCH_SOURCE_MAX 255u

/* Scratch for the coded payload (versions 3 and 4): codec contexts and
 * buffers reused from batch to batch. */
typedef struct batch_coder {
	codec_ctx *cx;
	codec_buf blk;   /* one block being encoded */
	codec_buf arena; /* strings of one decoded block */
	void *scratch;   /* one slice of values converted for the codec */
	size_t scratch_cap;
	uint64_t *bits; /* a decoded slice's presence */
	size_t bits_cap;
	char *keys; /* decoded keys' bytes, and their (offset, length) */
	size_t keys_len, keys_cap;
	uint32_t *key_at;
	size_t key_at_cap;
} batch_coder;

typedef struct stage_batch {
	batch_coder *coder; /* made on first encode or decode; kept by reset */
	/* labelled: 1 when the batch carries (source, seq) into its WAL record */
	int labelled;
	uint32_t source_len;
	uint64_t seq;
	char source[BATCH_SOURCE_MAX + 1];
	tbatch **tb; /* tables touched, in order of first touch */
	uint32_t n_tb, cap_tb;
	tbatch **by_table; /* table id -> tbatch, or NULL */
	uint32_t cap_by_table;
	uint64_t rows;
} stage_batch;

void stage_batch_init(stage_batch *b);
void stage_batch_free(stage_batch *b);
/* Empties the batch, keeping its memory for the next call. */
void stage_batch_reset(stage_batch *b);

/* The table's staging area, created on first use. */
int stage_batch_table(stage_batch *b, table_def *t, tbatch **out);

/* Row building: begin, set key and values, then commit or abort. A row is
 * invisible until committed, so a line rejected half way leaves no trace. */
int tbatch_row_begin(tbatch *tb, int64_t ts);
int tbatch_set(tbatch *tb, col_def *def, bval v);
int tbatch_set_str(tbatch *tb, col_def *def, const char *s, uint32_t len);
void tbatch_row_abort(tbatch *tb);
/* The key is looked up only here, so an aborted row never adds a key. */
int tbatch_row_commit(stage_batch *b, tbatch *tb, const char *key, uint32_t key_len);

/* Appends n rows of one key at once (the binary API): timestamps, and per
 * column its values (8-byte numbers, bool bytes, or NUL-terminated
 * strings) with an optional presence bitmap (bit r of byte r/8). On error
 * the rows are not committed, but the batch must be reset. */
int tbatch_append(stage_batch *b, tbatch *tb, const char *key, uint32_t key_len, uint32_t n,
		  const int64_t *ts, uint32_t n_cols, col_def *const *defs, const void *const *vals,
		  const uint8_t *const *present);

static inline int bcol_has(const bcol *c, uint32_t row)
{
	return (int)((c->present[row >> 6] >> (row & 63)) & 1);
}
static inline const char *tbatch_str(const tbatch *tb, uint64_t ref, uint32_t *len)
{
	*len = (uint32_t)(ref & 0xffff);
	return tb->arena + (ref >> 16);
}
static inline const char *tbatch_key(const tbatch *tb, uint32_t k, uint32_t *len)
{
	*len = (uint32_t)(tb->keys[k] & 0xffff);
	return tb->key_arena + (tb->keys[k] >> 16);
}

/* Encodes the batch as a WAL payload, version 3 (4 when labelled): columns
 * as codec blocks, not for the WAL's LZ4 (docs/formats.md, "WAL payload"),
 * into *buf (grown as needed). */
int stage_batch_encode(const stage_batch *b, char **buf, size_t *cap, size_t *len);
/* Decodes a WAL payload of any version (1 to 4), resolving names through the catalog (creating
 * tables and columns as the original write did). TALLY_ECORRUPT with a
 * message on malformed input. */
int stage_batch_decode(stage_batch *b, catalog *cat, const char *p, size_t len);

#endif
