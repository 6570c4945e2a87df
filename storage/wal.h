/*
 * wal.h — write-ahead log of one shard (internal).
 *
 * A WAL is a directory of segment files holding records: opaque payloads
 * (the engine's encoded batches), each LZ4-compressed when that helps,
 * xxhash-checksummed, and numbered by a sequence that grows by exactly one
 * per record across segments. Replay on open hands every record to a
 * callback once, in order; a torn tail (the last record of the last segment
 * cut short or never completed by a crash) is truncated and logged;
 * anything else that does not check out is TALLY_ECORRUPT with a message
 * naming the file and the byte offset of the bad record.
 *
 * Appends are buffered in user space and pushed to the kernel by
 * wal_write_out(); durability comes from wal_sync_to(), which many threads
 * may call at once: one fsync covers all of them (group commit).
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
	uint32_t buffer_bytes;  /* user-space append buffer; 0: 1 MiB */
	log_sink log;           /* where the torn-tail notice goes */
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
 * number in *seq (may be NULL). Buffered: visible to replay only after
 * wal_write_out. A record larger than the buffer is written at once. On an
 * error other than TALLY_EFAILED nothing was appended and no seq used;
 * TALLY_ELIMIT when len is over the limit. */
int wal_append(wal *w, const void *payload, size_t len, uint64_t *seq);

/* Writes buffered records to the kernel; *lsn (may be NULL) gets the
 * logical end of the log, the position wal_sync_to needs to cover. A write
 * error (-ENOSPC, ...) keeps what was not written buffered; a later call
 * carries on from there. */
int wal_write_out(wal *w, uint64_t *lsn);

/* Returns once every byte before lsn is durable (fsync). Concurrent callers
 * share fsyncs. An fsync failure fails the WAL for good: this and every
 * later call return TALLY_EFAILED (the page cache may have dropped the
 * data, so retrying fsync would lie). An lsn past what wal_write_out
 * reported is TALLY_EINVAL. */
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
uint64_t wal_disk_bytes(const wal *w); /* bytes of all segments on disk; any thread */
uint64_t wal_syncs(const wal *w);      /* segment fsyncs since open (syncs, rolls); any thread */

/* Writes out, syncs and closes. NULL is a no-op. Must not overlap any other
 * call on w, wal_sync_to included. */
void wal_close(wal *w);

#endif
