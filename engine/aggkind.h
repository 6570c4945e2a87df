/*
 * aggkind.h — the aggregate descriptor: what a rollup keeps per window
 * (internal).
 *
 * Every kind of rollup aggregate is one const table: the size of a window's
 * bucket (an int64 window start, then the kind's state), and how a state
 * is initialised, takes a value, merges another, is encoded into and
 * decoded from a part's rollup block, and becomes an answer. A rollup block
 * records its kind (docs/formats.md, "Part files"), so a reader knows
 * which table decodes it, and flushes, merges and the rollup cache move
 * buckets of any kind through the table alone. Adding a kind:
 * docs/architecture.md, "Aggregate kinds".
 */
#ifndef TALLY_AGGKIND_H
#define TALLY_AGGKIND_H

#include <stddef.h>
#include <stdint.h>

#include "codec.h"
#include "part.h"
#include "rollup.h"

/* Kind ids as rollup blocks record them; never reuse one. */
enum agg_kind_id {
	AGG_BASIC = 1,     /* count, sum, min, max (and avg): what version 1 parts hold */
	AGG_DIST = 2,      /* basic, and the count of each distinct value (engine/dist.c) */
	AGG_DIST_SK = 3,   /* dist, denser, and windows past a bound kept as sketches */
	AGG_DIST_BITS = 4, /* dist-sk's windows in one bit stream (engine/distcode.c) */
	AGG_KIND_SLOTS     /* one past the highest id: arrays indexed by kind */
};
_Static_assert(AGG_BASIC == PART_KIND_V1, "version 1 rollup blocks are basic");

typedef struct agg_kind {
	unsigned id;
	const char *name;
	size_t bucket_size; /* bytes of one window: int64 start, then the state */
	void (*init)(void *state);
	/* 0, or -ENOMEM (state unchanged) for kinds that allocate */
	int (*add)(void *state, double v);
	/* state += src; exact: merging in any order gives the same state;
	 * 0, or -ENOMEM (state unchanged) */
	int (*merge)(void *state, const void *src);
	/* n buckets, ascending by start, appended to out as a block payload */
	int (*encode)(codec_ctx *cx, const void *buckets, uint32_t n, codec_buf *out);
	/* a payload of n buckets into out: 0, or TALLY_ECORRUPT / -ENOMEM
	 * with the message set (the caller prefixes file and block). States
	 * may borrow memory from arena until it is reused: own() them to keep
	 * them longer */
	int (*decode)(codec_ctx *cx, const uint8_t *p, size_t len, uint32_t n, void *out,
		      codec_buf *arena);
	/* the public answer a state gives (basic: tally_agg) */
	void (*finalize)(const void *state, void *answer);
	/* states holding memory of their own (NULL: plain bytes): make a
	 * decoded state own what it borrows (0 or -ENOMEM), and free it */
	int (*own)(void *state);
	void (*release)(void *state);
	/* 1: the payload begins with a basic payload of the same windows, so
	 * a count/sum/min/max reader decodes just that, and the state begins
	 * with a ragg (which a merge with basic windows keeps) */
	int basic_prefix;
	/* an earlier payload version of another kind: its blocks decode into
	 * that kind's states, and readers see that kind (NULL: none); such a
	 * table only decodes (its other functions NULL) */
	const struct agg_kind *decodes_as;
} agg_kind;

extern const agg_kind agg_basic;

/* The table of kind id, or NULL for an id this build does not know. */
const agg_kind *agg_kind_of(unsigned id);

/* Encodes n buckets of kind k and writes them as the current key's rollup
 * block of numeric column num and level (n == 0: no block). */
int agg_write_rollup(part_writer *w, uint32_t num, unsigned level, const agg_kind *k,
		     const void *buckets, uint32_t n);

/* Decodes the rollup block of (key pk, numeric column num, level) of part
 * p, which must be of kind k, into out (room for cap buckets); *n gets its
 * window count, 0 when the part has no such block. A block of another
 * kind or malformed is TALLY_ECORRUPT naming file and block. */
int agg_read_rollup(const part *p, const part_key *pk, uint32_t num, unsigned level,
		    part_scratch *ps, const agg_kind *k, void *out, uint32_t cap, uint32_t *n);

/* Any kind: the block's kind (0: no block) in *kind, its windows decoded
 * into *out, grown to *cap bytes as needed (states
 * borrow from ps->arena2; own() them to keep them past the next read). */
int agg_read_rollup_any(const part *p, const part_key *pk, uint32_t num, unsigned level,
			part_scratch *ps, const agg_kind **kind, uint8_t **out, size_t *cap,
			uint32_t *n);

/* Bytes of the basic payload at the head of p (which a basic_prefix kind's
 * payload begins with), or 0 when malformed. */
size_t agg_basic_payload_len(const uint8_t *p, size_t len);

/* The window count of that block without reading it. */
static inline uint32_t agg_rollup_windows(const part *p, const part_key *pk, uint32_t num,
					  unsigned level)
{
	return p->rollups[pk->first_rollup + num * p->info.n_levels + level].n_buckets;
}

#endif
