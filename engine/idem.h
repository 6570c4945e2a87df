/*
 * idem.h — what each labelled source has applied: exactly once under
 * retries (internal).
 *
 * A writer may label a batch with (source, sequence). Per source the table
 * keeps the highest applied sequence and a window of the W sequences below
 * it as a bitmap, so a batch is new, a duplicate (applied before: changes
 * nothing), or too old (below the window: whether it was applied is no
 * longer known, so it is refused rather than risked). The label travels in
 * the batch's WAL record (engine/batch.c), so replay rebuilds the table
 * from the records it replays; at each flush the whole table is saved to
 * DIR/LABELS before the manifest lets the WAL go, so what the trimmed
 * records said survives them. Layout: docs/formats.md, "Labels file".
 *
 * Noting is order-free (the final state is "applied sequences within W of
 * the highest"), which is why the WAL records of different shards may
 * replay in any order.
 *
 * Locking: mu guards the table. Check-and-apply is atomic per source by
 * the caller's means: engine/db.c sends every batch of a source to one
 * shard (by the source's hash) and checks, appends and notes it under
 * that shard's lock.
 */
#ifndef TALLY_IDEM_H
#define TALLY_IDEM_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "strmap.h"

#define IDEM_WINDOW_DEFAULT 256u
#define IDEM_WINDOW_MAX     65536u
#define IDEM_EXPIRY_DEFAULT (7 * INT64_C(86400) * INT64_C(1000000000))
#define IDEM_FILE           "LABELS"

enum idem_state {
	IDEM_NEW = 0, /* not applied: apply it */
	IDEM_DUP = 1, /* applied before */
	IDEM_OLD = 2, /* below the window: unknown, refused */
};

typedef struct idem_source {
	uint64_t high;   /* highest applied sequence */
	int64_t last_ns; /* wall clock of its last applied batch (or of open) */
	uint32_t len;
	char *name;      /* len bytes + NUL, in the same allocation */
	uint64_t bits[]; /* bit i of the window: sequence high - i applied */
} idem_source;

typedef struct idem {
	pthread_mutex_t mu;
	strmap map;        /* source name -> idem_source* */
	uint32_t words;    /* window of 64 x words sequences */
	int64_t expiry_ns; /* < 0: never */
	uint64_t expired;  /* sources dropped by expiry since open */
	_Atomic uint64_t duplicates, too_old;
} idem;

/* An empty table with the default window and expiry. */
void idem_init(idem *id);
/* Before any source is noted. window: sequences remembered below the
 * highest (0: the default; rounded up to a multiple of 64, at most
 * IDEM_WINDOW_MAX); expiry_ns 0: the default, < 0: never. */
void idem_configure(idem *id, uint64_t window, int64_t expiry_ns);
void idem_free(idem *id);

/* What (source, seq) is. Caller holds mu. *high gets the source's highest
 * applied sequence (0 when unknown). */
enum idem_state idem_check(const idem *id, const char *src, uint32_t len, uint64_t seq,
			   uint64_t *high);
/* The source's highest applied sequence into *high: 1, or 0 when the
 * table holds none of it. Caller holds mu. */
int idem_high(const idem *id, const char *src, uint32_t len, uint64_t *high);
/* Records (source, seq) as applied at now_ns. Caller holds mu (or is the
 * only thread, at open). 0 or -ENOMEM. */
int idem_note(idem *id, const char *src, uint32_t len, uint64_t seq, int64_t now_ns);
/* Bytes the table holds (stats and docs: per source). */
uint64_t idem_bytes(const idem *id);

/* Loads DIR/LABELS (absent: nothing) before the WAL replays. */
int idem_load(idem *id, const char *dir);
/* Drops sources silent for expiry_ns and encodes the table as the
 * contents of DIR/LABELS into *out (mem_free it). Caller holds mu. */
int idem_encode(idem *id, int64_t now_ns, char **out, size_t *out_len);

#endif
