/*
 * wal.h — write-ahead log of one shard (internal).
 *
 * A WAL is a directory of segment files holding records: opaque payloads
 * (the engine's encoded batches), each LZ4-compressed when that helps,
 * xxhash-checksummed, and numbered by a sequence that grows by exactly one
 * per record across segments. Replay on open hands every record to a
 * callback once, in order; a torn tail (the last record of the last segment
 * cut short or never completed by a crash, and never covered by an fsync)
 * is truncated and logged; anything else that does not check out is
 * TALLY_ECORRUPT with a message naming the file and the byte offset of the
 * bad record. The file SYNCED in the directory holds the highest seq an
 * fsync covered, so that damage to synced records, or synced records gone
 * missing, is refused instead of being taken for a torn tail.
 *
 * Appends are written through to the kernel at once (a failed write
 * refuses that append and nothing else); durability comes from
 * wal_sync_to(), which many threads may call at once: one fsync covers
 * all of them (group commit). A failed fsync fails the log for good, and
 * the bytes it did not cover are cut off, so they cannot come back.
 *
 * Threading: wal_append, wal_write_out, wal_trim and wal_close must be
 * serialised by the caller (the shard lock). wal_sync_to may run
 * concurrently with all of them. Byte format: docs/formats.md.
 */
#ifndef TALLY_WAL_H
#define TALLY_WAL_H

#include <stddef.h>
#include <stdint.h>

#include "log.h"
#include "tally_base.h"

#define WAL_RECORD_MAX (256u << 20) /* largest payload accepted, bytes */

typedef struct wal wal;

typedef struct wal_options {
	uint64_t segment_bytes; /* roll to a new segment past this; 0: 64 MiB */
	uint32_t buffer_bytes;  /* records up to this are encoded in place; 0: 1 MiB */
	log_sink log;           /* where the torn-tail notice goes */
	/* When the log does not check out (TALLY_ECORRUPT: damage, synced
	 * records missing): 0 fails wal_open; 1 opens it read-only instead,
	 * with the records up to the damage replayed, no file changed, and
	 * every change refused (TALLY_EFAILED, wal_failed() is 1). */
	int read_only_on_damage;
} wal_options;

/* Called once per record during open, in sequence order. payload is valid
 * only during the call. A nonzero return aborts wal_open with that code. */
typedef int wal_replay_fn(void *ctx, uint64_t seq, const void *payload, size_t len);

/*
 * Opens the WAL in dir (created, with parents' last component, if missing),
 * replays every record with seq > after_seq through replay (records at or
 * below after_seq are checked but not handed over: they are already in
 * parts), truncates a torn tail, and leaves the log ready to append.
 * On failure *out is NULL and the message names file and offset.
 */
int wal_open(const char *dir, const wal_options *opt, uint64_t after_seq, wal_replay_fn *replay,
	     void *ctx, wal **out);

/* Appends one record (len <= WAL_RECORD_MAX) and returns its sequence
 * number in *seq (may be NULL). The record is in the kernel when this
 * returns 0. On an error nothing was appended and no seq used: a failed
 * write (-ENOSPC, -EIO, ...) is taken back from the file and a later
 * append may succeed; TALLY_ELIMIT when len is over the limit;
 * TALLY_EFAILED once the log has failed (for good). */
int wal_append(wal *w, const void *payload, size_t len, uint64_t *seq);

/* *lsn (may be NULL) gets the logical end of the log, the position
 * wal_sync_to needs to cover; TALLY_EFAILED once the log has failed. */
int wal_write_out(wal *w, uint64_t *lsn);

/* Returns once every byte before lsn is durable (fsync), and notes the
 * seq reached in SYNCED. Concurrent callers share fsyncs. An fsync failure
 * fails the WAL for good: this and every later call return TALLY_EFAILED
 * (the page cache may have dropped the data, so retrying fsync would lie),
 * and the next serialised call (or wal_close) cuts the bytes written
 * since the last good fsync. An lsn past what wal_write_out reported is
 * TALLY_EINVAL. */
int wal_sync_to(wal *w, uint64_t lsn);

/* Starts a new segment now (when the current one holds records), so that
 * everything appended so far can later be trimmed whole. The engine calls
 * it when it freezes a memtable: the frozen memtable's records then end
 * exactly at a segment boundary. Serialised like wal_append. */
int wal_rotate(wal *w);

/* Deletes whole segments whose records all have seq <= upto_seq; never the
 * segment being appended to. */
int wal_trim(wal *w, uint64_t upto_seq);

/* The seq of the last record appended; before any append, the highest seq
 * the log or after_seq accounts for (the next append gets this + 1). 0 when
 * the log never held a record and after_seq was 0. Caller's lock. */
uint64_t wal_last_seq(const wal *w);
uint64_t wal_disk_bytes(const wal *w);   /* bytes of all segments on disk; any thread */
uint64_t wal_syncs(const wal *w);        /* segment fsyncs since open (syncs, rolls); any thread */
uint64_t wal_write_errors(const wal *w); /* appends refused by a failed write; any thread */
int wal_failed(const wal *w);            /* 1 once failed for good; any thread */
int wal_failed_error(const wal *w);      /* TALLY_EFAILED, message saying why; any thread */
/* *first = the lowest first seq of the segment files in dir, 0 when it
 * holds none (or does not exist). */
int wal_dir_first_seq(const char *dir, uint64_t *first);

/* Writes out, syncs and closes. NULL is a no-op. Must not overlap any other
 * call on w, wal_sync_to included. */
void wal_close(wal *w);

#endif
