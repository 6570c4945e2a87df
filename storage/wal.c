/*
 * wal.c — the write-ahead log: segment files of checksummed, LZ4'd records.
 *
 * The idea that makes recovery sound: every record carries its own sequence
 * number and two checksums (header, payload), so a reader trusts no length
 * it has not checked and can tell a torn tail from corruption. A record that
 * does not check out is the tail a crash tore iff it sits in the last
 * segment, no valid record starts anywhere after it, and no fsync covered
 * it (its seq is above the one in SYNCED); then it is cut off. Anything
 * else is TALLY_ECORRUPT naming file and offset, and the file is left as
 * it is.
 *
 * Each append is written to the kernel at once, so the engine applies a
 * batch only after the disk took its record, and a failed write refuses
 * that append alone.
 *
 * Durability is a logical byte position (LSN, bytes of records written in
 * this process). Writers advance written_lsn; wal_sync_to() fsyncs once for
 * every caller waiting at or below the LSN it observed (group commit). The
 * current segment's fd is only replaced under sync_mu, after the old one was
 * fsynced, so a sync never misses bytes that went to an older segment.
 *
 * Byte layout, all integers little-endian (docs/formats.md, "WAL", has the
 * tables and an annotated hex dump):
 *
 *   segment file "%020llu.wal", named by the first seq it holds:
 *     0   8  magic "TALLYWAL"
 *     8   4  format version, 1
 *    12   4  header size, 32
 *    16   8  first_seq
 *    24   8  XXH3_64bits of bytes 0..23
 *   then records back to back, each:
 *     0   4  magic 0x43455257 (bytes "WREC")
 *     4   4  stored payload length
 *     8   4  raw payload length
 *    12   4  flags: bit 0 = payload is one LZ4 block; others must be 0
 *    16   8  seq
 *    24   8  XXH3_64bits of the stored payload
 *    32   8  XXH3_64bits of bytes 0..31
 *    40   -  stored payload
 */
#include "wal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <lz4.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "err.h"
#include "fileio.h"
#include "mem.h"

#define SEG_MAGIC   "TALLYWAL"
#define SEG_VERSION 1u
#define SEG_HDR     32u
#define REC_MAGIC   0x43455257u /* "WREC" on disk */
#define REC_HDR     40u
#define REC_F_LZ4   1u

/* wal/<shard>/SYNCED: magic, the highest seq known durable, checksum. */
#define SYNCED_NAME  "SYNCED"
#define SYNCED_MAGIC "TALLYSYN"
#define SYNCED_LEN   24u

#define SEG_NAME_DIGITS 20
#define SEG_NAME_LEN    (SEG_NAME_DIGITS + 4) /* digits + ".wal" */
#define WAL_PATH_MAX    4096

#define DEFAULT_SEGMENT_BYTES (64ull << 20)
#define DEFAULT_BUFFER_BYTES  (1u << 20)
#define MIN_BUFFER_BYTES      4096u
#define READ_CHUNK            (1u << 20)
/* LZ4 cannot shrink shorter payloads enough to pay for trying. */
#define COMPRESS_MIN 64u
/* LZ4 acceleration (1 is LZ4_compress_default). Durable TCP ingest of
 * the camera workload (docs/formats.md): 8 is 5-10% faster end to end than
 * 1 for a WAL 13% larger (12.6 -> 14.1 bytes an event); the WAL lives
 * only until its memtable is flushed. */
#define LZ4_ACCEL 8
/* Scratch for records written directly is kept up to this size. */
#define BIG_KEEP (8u << 20)

typedef struct wal_seg {
	uint64_t first_seq;
	uint64_t bytes; /* file size; for the current segment, bytes written */
} wal_seg;

struct wal {
	char *dir; /* as given, trailing slashes dropped; for messages */
	int dir_fd;
	uint64_t segment_bytes;
	size_t buffer_bytes;
	log_sink log;

	/* Writer state: owned by the caller's lock (wal.h threading rules). */
	wal_seg *segs; /* oldest first; the last one is current */
	size_t n_segs, cap_segs;
	uint64_t seg_records; /* records in the current segment */
	uint64_t next_seq;
	uint8_t *buf; /* where a record is encoded before it is written */
	uint8_t *big; /* compression scratch for records written directly */
	size_t big_cap;
	uint64_t appended_lsn;

	/* Shared with wal_sync_to. fd and cur_seq change only under sync_mu;
	 * the counters are accessed with __atomic builtins. */
	pthread_mutex_t sync_mu;
	int fd;
	uint64_t cur_seq; /* first seq of the segment fd refers to */
	uint64_t written_lsn;
	uint64_t durable_lsn;
	uint64_t syncs;
	uint64_t disk_bytes;
	uint64_t written_seq;  /* seq of the last record in the kernel */
	uint64_t write_errors; /* appends refused because their write failed */
	/* The file offset in the current segment of LSN base_lsn: turns the
	 * durable LSN into the place to cut the in-doubt bytes at. */
	uint64_t base_lsn, base_off;
	int failed; /* set once, with fail_msg, under sync_mu */
	char fail_msg[ERR_MSG_MAX];
	/* After a failed fsync: cut the current segment at undo_off (the
	 * bytes no fsync covered) at the next serialised call. */
	int undo_pending;
	uint64_t undo_off;
	/* wal/<shard>/SYNCED: the highest seq known durable, for recovery. */
	int synced_fd;
	uint64_t synced_seq; /* last value written there; under sync_mu */
};

/* ------------------------------------------------------------ encoding */

static void put_u32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static void put_u64(uint8_t *p, uint64_t v)
{
	put_u32(p, (uint32_t)v);
	put_u32(p + 4, (uint32_t)(v >> 32));
}

static uint32_t get_u32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get_u64(const uint8_t *p)
{
	return get_u32(p) | (uint64_t)get_u32(p + 4) << 32;
}

static void seg_hdr_encode(uint8_t h[SEG_HDR], uint64_t first_seq)
{
	memcpy(h, SEG_MAGIC, 8);
	put_u32(h + 8, SEG_VERSION);
	put_u32(h + 12, SEG_HDR);
	put_u64(h + 16, first_seq);
	put_u64(h + 24, XXH3_64bits(h, 24));
}

/* NULL when h is a sound header; *version gets the format version found. */
static const char *seg_hdr_check(const uint8_t h[SEG_HDR], uint64_t *first_seq, uint32_t *version)
{
	*version = SEG_VERSION;
	if (memcmp(h, SEG_MAGIC, 8) != 0)
		return "bad segment magic";
	if (XXH3_64bits(h, 24) != get_u64(h + 24))
		return "segment header checksum mismatch";
	*version = get_u32(h + 8);
	if (*version == SEG_VERSION && get_u32(h + 12) != SEG_HDR)
		return "bad segment header size";
	*first_seq = get_u64(h + 16);
	if (*first_seq == 0)
		return "segment first seq is 0";
	return NULL;
}

typedef struct rec_hdr {
	uint32_t stored, raw, flags;
	uint64_t seq, sum;
	bool seq_known; /* the header checksum passed */
} rec_hdr;

/* NULL when the record header at h is sound and its payload fits in room
 * bytes; fills r as far as it got. */
static const char *rec_hdr_check(const uint8_t h[REC_HDR], uint64_t room, rec_hdr *r)
{
	r->seq_known = false;
	if (get_u32(h) != REC_MAGIC)
		return "bad record magic";
	if (XXH3_64bits(h, 32) != get_u64(h + 32))
		return "record header checksum mismatch";
	r->stored = get_u32(h + 4);
	r->raw = get_u32(h + 8);
	r->flags = get_u32(h + 12);
	r->seq = get_u64(h + 16);
	r->sum = get_u64(h + 24);
	r->seq_known = true;
	if (r->flags & ~REC_F_LZ4)
		return "unknown record flags";
	if (r->raw > WAL_RECORD_MAX)
		return "raw length over WAL_RECORD_MAX";
	if (r->flags & REC_F_LZ4) {
		if (r->stored == 0 || r->stored > (uint32_t)LZ4_compressBound((int)r->raw))
			return "compressed length out of range";
	} else if (r->stored != r->raw) {
		return "stored length differs from raw length";
	}
	if (r->stored > room)
		return "record length past end of file";
	return NULL;
}

/* Stores payload at dst (room for LZ4_compressBound(len)), compressed when
 * that makes it shorter; returns the stored length. */
static uint32_t rec_encode_payload(uint8_t *dst, const void *payload, size_t len, size_t bound,
				   uint32_t *flags)
{
	*flags = 0;
	if (len >= COMPRESS_MIN) {
		int c = LZ4_compress_fast(payload, (char *)dst, (int)len, (int)bound, LZ4_ACCEL);
		if (c > 0 && (size_t)c < len) {
			*flags = REC_F_LZ4;
			return (uint32_t)c;
		}
	}
	if (len)
		memcpy(dst, payload, len);
	return (uint32_t)len;
}

static void rec_hdr_encode(uint8_t h[REC_HDR], uint32_t stored, size_t raw, uint32_t flags,
			   uint64_t seq)
{
	put_u32(h, REC_MAGIC);
	put_u32(h + 4, stored);
	put_u32(h + 8, (uint32_t)raw);
	put_u32(h + 12, flags);
	put_u64(h + 16, seq);
	put_u64(h + 24, XXH3_64bits(h + REC_HDR, stored));
	put_u64(h + 32, XXH3_64bits(h, 32));
}

static void synced_encode(uint8_t b[SYNCED_LEN], uint64_t seq)
{
	memcpy(b, SYNCED_MAGIC, 8);
	put_u64(b + 8, seq);
	put_u64(b + 16, XXH3_64bits(b, 16));
}

/* ------------------------------------------------------------ helpers */

static void seg_name(char out[SEG_NAME_LEN + 1], uint64_t first_seq)
{
	snprintf(out, SEG_NAME_LEN + 1, "%020llu.wal", (unsigned long long)first_seq);
}

static void seg_path(const wal *w, uint64_t first_seq, char out[WAL_PATH_MAX])
{
	snprintf(out, WAL_PATH_MAX, "%s/%020llu.wal", w->dir, (unsigned long long)first_seq);
}

/* Deletes segment first_seq: 0, or -1 with errno. */
static int seg_unlink(const wal *w, uint64_t first_seq)
{
	char path[WAL_PATH_MAX];
	seg_path(w, first_seq, path);
	return fio_unlink(path);
}

/* The path of segment first_seq, for a message (one per thread at a time). */
static const char *seg_path_tmp(const wal *w, uint64_t first_seq)
{
	static _Thread_local char path[WAL_PATH_MAX];
	seg_path(w, first_seq, path);
	return path;
}

/* 1 and the seq when name is a segment file name, else 0. */
static int seg_name_parse(const char *name, uint64_t *seq)
{
	if (strlen(name) != SEG_NAME_LEN || strcmp(name + SEG_NAME_DIGITS, ".wal") != 0)
		return 0;
	uint64_t v = 0;
	for (int i = 0; i < SEG_NAME_DIGITS; i++) {
		if (name[i] < '0' || name[i] > '9')
			return 0;
		unsigned d = (unsigned)(name[i] - '0');
		if (v > (UINT64_MAX - d) / 10)
			return 0; /* 20 digits can exceed 2^64: not a name we write */
		v = v * 10 + d;
	}
	*seq = v;
	return 1;
}

/* fio_pwrite with errno set on failure, as the callers here report it. */
static int write_full(int fd, const void *p, size_t n, uint64_t off, size_t *done)
{
	int rc = fio_pwrite(fd, p, n, off, done);
	if (rc)
		errno = -rc;
	return rc ? -1 : 0;
}

/* fio_fdatasync with errno set on failure. */
static int datasync(int fd)
{
	int rc = fio_fdatasync(fd);
	if (rc)
		errno = -rc;
	return rc ? -1 : 0;
}

static uint64_t ld(const uint64_t *p)
{
	return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
static void st(uint64_t *p, uint64_t v)
{
	__atomic_store_n(p, v, __ATOMIC_RELEASE);
}
static void add(uint64_t *p, uint64_t v)
{
	__atomic_fetch_add(p, v, __ATOMIC_RELEASE);
}
static void sub(uint64_t *p, uint64_t v)
{
	__atomic_fetch_sub(p, v, __ATOMIC_RELEASE);
}

static int is_failed(const wal *w)
{
	return __atomic_load_n(&w->failed, __ATOMIC_ACQUIRE);
}

static int failed_err(const wal *w)
{
	return err_set(TALLY_EFAILED, "wal %s is failed (%s); reopen", w->dir, w->fail_msg);
}

/* Fails the WAL for good (caller holds sync_mu); the first failure's
 * message is the one kept. The bytes written after the last good fsync
 * are in doubt (the kernel may have dropped them, or may still write them
 * out): they are cut off at the next serialised call, so that what the
 * writers were told failed cannot come back at the next open. Returns
 * TALLY_EFAILED. */
static int fail_msg_locked(wal *w, const char *msg)
{
	if (!is_failed(w)) {
		snprintf(w->fail_msg, sizeof w->fail_msg, "%s", msg);
		uint64_t durable = ld(&w->durable_lsn);
		w->undo_off = w->base_off + (durable > w->base_lsn ? durable - w->base_lsn : 0);
		/* during wal_open nothing unsynced was written by us: no cut */
		w->undo_pending = w->base_off != UINT64_MAX;
		__atomic_store_n(&w->failed, 1, __ATOMIC_RELEASE);
		log_emit(&w->log, TALLY_LOG_ERROR, "wal %s failed: %s", w->dir, w->fail_msg);
	}
	return failed_err(w);
}

static int fail_locked(wal *w, int errno_val, const char *what, uint64_t seg)
{
	char msg[ERR_MSG_MAX];
	snprintf(msg, sizeof msg, "%s %.300s/%020llu.wal: %s", what, w->dir,
		 (unsigned long long)seg, strerror(errno_val));
	return fail_msg_locked(w, msg);
}

static int fail(wal *w, int errno_val, const char *what, uint64_t seg)
{
	pthread_mutex_lock(&w->sync_mu);
	int rc = fail_locked(w, errno_val, what, seg);
	pthread_mutex_unlock(&w->sync_mu);
	return rc;
}

static int fsync_dir(wal *w)
{
	int e = -fio_fsync(w->dir_fd);
	if (!e)
		return 0;
	char msg[ERR_MSG_MAX];
	snprintf(msg, sizeof msg, "fsync of directory %.300s: %s", w->dir, strerror(e));
	pthread_mutex_lock(&w->sync_mu);
	int rc = fail_msg_locked(w, msg);
	pthread_mutex_unlock(&w->sync_mu);
	return rc;
}

static int seg_push(wal *w, uint64_t first_seq, uint64_t bytes)
{
	if (w->n_segs == w->cap_segs) {
		size_t cap = w->cap_segs ? w->cap_segs * 2 : 16;
		wal_seg *s = mem_realloc(w->segs, cap * sizeof *s);
		if (!s)
			return err_set(-ENOMEM, "wal %s: out of memory", w->dir);
		w->segs = s;
		w->cap_segs = cap;
	}
	w->segs[w->n_segs++] = (wal_seg){first_seq, bytes};
	return 0;
}

/* Creates segment first_seq with a durable header and name; *fdp gets it
 * open for writing. */
static int seg_create(wal *w, uint64_t first_seq, int *fdp)
{
	char name[SEG_NAME_LEN + 1], path[WAL_PATH_MAX];
	uint8_t h[SEG_HDR];
	seg_name(name, first_seq);
	seg_path(w, first_seq, path);
	int fd = fio_open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
	if (fd < 0)
		return err_sys(errno, "%s: create", path);
	seg_hdr_encode(h, first_seq);
	if (write_full(fd, h, SEG_HDR, 0, NULL) != 0) {
		int rc = err_sys(errno, "%s: write", path);
		fio_close(fd);
		fio_unlink(path); /* an empty or short last segment is torn anyway */
		return rc;
	}
	if (datasync(fd) != 0) {
		int e = errno;
		fio_close(fd);
		return fail(w, e, "fdatasync of new segment", first_seq);
	}
	int rc = fsync_dir(w);
	if (rc) {
		fio_close(fd);
		return rc;
	}
	*fdp = fd;
	return 0;
}

/* ------------------------------------------------------------ recovery */

/* A window onto one segment file, so that records are parsed in place. */
typedef struct seg_reader {
	int fd;
	uint64_t size;
	uint8_t *buf;
	size_t cap;
	uint64_t at; /* file offset of buf[0] */
	size_t len;  /* valid bytes in buf */
} seg_reader;

typedef struct recover {
	wal *w;
	uint64_t after_seq;
	wal_replay_fn *replay;
	void *ctx;
	seg_reader rd;
	uint8_t *dbuf; /* decompressed payload */
	size_t dcap;
	uint64_t expected; /* next seq the log must hold */
	uint64_t synced;   /* SYNCED: records up to here were durable */
	char path[WAL_PATH_MAX];
} recover;

/* Points *p at file bytes [off, off+n); the caller checked off+n <= size.
 * *p stays valid until the next call. */
static int rd_get(recover *rc, uint64_t off, size_t n, const uint8_t **p)
{
	seg_reader *rd = &rc->rd;
	if (off >= rd->at && off - rd->at <= rd->len && n <= rd->len - (off - rd->at)) {
		*p = rd->buf + (off - rd->at);
		return 0;
	}
	size_t want = n > READ_CHUNK ? n : READ_CHUNK;
	if (want > rd->size - off)
		want = (size_t)(rd->size - off);
	if (want > rd->cap) {
		uint8_t *b = mem_realloc(rd->buf, want);
		if (!b)
			return err_set(-ENOMEM, "%s: out of memory reading %zu bytes", rc->path,
				       want);
		rd->buf = b;
		rd->cap = want;
	}
	rd->len = 0;
	while (rd->len < want) {
		ssize_t k =
			pread(rd->fd, rd->buf + rd->len, want - rd->len, (off_t)(off + rd->len));
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			return err_sys(errno, "%s offset %llu: read", rc->path,
				       (unsigned long long)(off + rd->len));
		if (k == 0)
			return err_set(-EIO, "%s: file shrank while being read", rc->path);
		rd->len += (size_t)k;
	}
	rd->at = off;
	*p = rd->buf;
	return 0;
}

typedef struct rec_view {
	rec_hdr h;
	const uint8_t *payload; /* raw payload when decoded, else NULL */
} rec_view;

/* Checks the record at off: *why is NULL when it is valid, else the reason.
 * When decode is set, a valid record is also decompressed into r->payload.
 * Returns nonzero only for I/O or memory errors. */
static int rec_check(recover *rc, uint64_t off, bool decode, rec_view *r, const char **why)
{
	static const uint8_t empty[1];
	const uint8_t *p;
	uint64_t size = rc->rd.size;
	r->h.seq_known = false;
	r->payload = NULL;
	if (size - off < REC_HDR) {
		*why = "short record header";
		return 0;
	}
	int e = rd_get(rc, off, REC_HDR, &p);
	if (e)
		return e;
	*why = rec_hdr_check(p, size - off - REC_HDR, &r->h);
	if (*why)
		return 0;
	e = rd_get(rc, off + REC_HDR, r->h.stored, &p);
	if (e)
		return e;
	if (XXH3_64bits(p, r->h.stored) != r->h.sum) {
		*why = "payload checksum mismatch";
		return 0;
	}
	if (!decode)
		return 0;
	if (!(r->h.flags & REC_F_LZ4)) {
		r->payload = r->h.stored ? p : empty;
		return 0;
	}
	if (r->h.raw > rc->dcap) {
		uint8_t *d = mem_realloc(rc->dbuf, r->h.raw);
		if (!d)
			return err_set(-ENOMEM, "%s: out of memory for a %u-byte record", rc->path,
				       r->h.raw);
		rc->dbuf = d;
		rc->dcap = r->h.raw;
	}
	int n = LZ4_decompress_safe((const char *)p, (char *)rc->dbuf, (int)r->h.stored,
				    (int)r->h.raw);
	if (n < 0 || (uint32_t)n != r->h.raw) {
		*why = "LZ4 payload does not decompress to its raw length";
		return 0;
	}
	r->payload = rc->dbuf;
	return 0;
}

/* *found = a valid record starts somewhere in [from, size). */
static int scan_for_record(recover *rc, uint64_t from, bool *found)
{
	uint64_t size = rc->rd.size;
	*found = false;
	for (uint64_t p = from; p < size && size - p >= REC_HDR; p++) {
		const uint8_t *m;
		int e = rd_get(rc, p, 4, &m);
		if (e)
			return e;
		if (get_u32(m) != REC_MAGIC)
			continue;
		rec_view r;
		const char *why;
		e = rec_check(rc, p, false, &r, &why);
		if (e)
			return e;
		if (!why) {
			*found = true;
			return 0;
		}
	}
	return 0;
}

static int corrupt(recover *rc, uint64_t off, const char *why, const rec_hdr *h)
{
	if (h && h->seq_known)
		return err_set(TALLY_ECORRUPT, "%s offset %llu: %s (record seq %llu)", rc->path,
			       (unsigned long long)off, why, (unsigned long long)h->seq);
	return err_set(TALLY_ECORRUPT, "%s offset %llu: %s", rc->path, (unsigned long long)off,
		       why);
}

/* A bad record (or header) at off where the log must hold seq: a torn
 * tail only if no fsync ever covered it. Synced bytes that do not check
 * out are damage: refuse, and leave the file as it is for the operator. */
static int synced_damage(recover *rc, uint64_t off, uint64_t seq, const char *why)
{
	return err_set(TALLY_ECORRUPT,
		       "%s offset %llu: %s where record seq %llu belongs, but records up to "
		       "seq %llu were synced (%s/" SYNCED_NAME
		       "): damage, not a torn tail; refusing to open, the segment is left as "
		       "it is",
		       rc->path, (unsigned long long)off, why, (unsigned long long)seq,
		       (unsigned long long)rc->synced, rc->w->dir);
}

/* Cuts the last segment at off (a torn tail) durably. */
static int seg_cut(recover *rc, int fd, uint64_t off, const char *why)
{
	uint64_t dropped = rc->rd.size - off;
	if (fio_ftruncate(fd, off) != 0)
		return err_sys(errno, "%s: truncating torn tail at offset %llu", rc->path,
			       (unsigned long long)off);
	if (datasync(fd) != 0)
		return err_sys(errno, "%s: fdatasync after truncating", rc->path);
	log_emit(&rc->w->log, TALLY_LOG_WARN, "%s offset %llu: torn tail (%s), dropped %llu bytes",
		 rc->path, (unsigned long long)off, why, (unsigned long long)dropped);
	rc->rd.size = off;
	rc->rd.len = 0;
	return 0;
}

/* The seq a segment starts at must continue the log; a gap is allowed only
 * over records the caller already holds (<= after_seq): wal_open leaves one
 * when the log ended below after_seq (see there). */
static int seq_follows(recover *rc, size_t i, uint64_t first)
{
	if (i == 0) {
		if (first > rc->after_seq + 1)
			return err_set(TALLY_ECORRUPT,
				       "%s offset 0: log starts at seq %llu but records after %llu "
				       "are needed (segments missing)",
				       rc->path, (unsigned long long)first,
				       (unsigned long long)rc->after_seq);
		return 0;
	}
	if (first < rc->expected)
		return err_set(TALLY_ECORRUPT,
			       "%s offset 0: first seq %llu overlaps the previous segment, "
			       "which ends at %llu",
			       rc->path, (unsigned long long)first,
			       (unsigned long long)(rc->expected - 1));
	if (first > rc->expected && first - 1 > rc->after_seq)
		return err_set(TALLY_ECORRUPT, "%s offset 0: records %llu..%llu missing before it",
			       rc->path, (unsigned long long)rc->expected,
			       (unsigned long long)(first - 1));
	return 0;
}

/* Checks and replays segment i. The last segment stays open in w->fd. */
static int seg_recover(recover *rc, size_t i)
{
	wal *w = rc->w;
	bool last = i + 1 == w->n_segs;
	uint64_t name_seq = w->segs[i].first_seq, first = 0, count = 0;
	char name[SEG_NAME_LEN + 1];
	const uint8_t *p;
	const char *why = NULL;
	uint32_t version;
	struct stat sb;
	int err = 0;

	seg_name(name, name_seq);
	seg_path(w, name_seq, rc->path);
	int fd = fio_open(rc->path, last ? O_RDWR : O_RDONLY, 0);
	if (fd < 0)
		return err_sys(errno, "%s: open", rc->path);
	if (fstat(fd, &sb) != 0) {
		err = err_sys(errno, "%s: stat", rc->path);
		goto fail;
	}
	rc->rd.fd = fd;
	rc->rd.size = (uint64_t)sb.st_size;
	rc->rd.at = 0;
	rc->rd.len = 0;

	if (rc->rd.size < SEG_HDR) {
		why = "short segment header";
	} else {
		if ((err = rd_get(rc, 0, SEG_HDR, &p)) != 0)
			goto fail;
		why = seg_hdr_check(p, &first, &version);
		if (version != SEG_VERSION) {
			err = err_set(TALLY_EVERSION, "%s: format version %u (this build reads %u)",
				      rc->path, version, SEG_VERSION);
			goto fail;
		}
		if (!why && first != name_seq) {
			err = err_set(
				TALLY_ECORRUPT,
				"%s offset 16: header first seq %llu differs from the file name",
				rc->path, (unsigned long long)first);
			goto fail;
		}
	}
	if (why) {
		/* A crash while the segment was created leaves its header short or
		 * unwritten; with nothing valid after it, that is a torn tail. */
		bool found = false;
		if (last && (err = scan_for_record(rc, 0, &found)) != 0)
			goto fail;
		if (!last || found) {
			err = corrupt(rc, 0, why, NULL);
			goto fail;
		}
		if (name_seq <= rc->synced) {
			err = synced_damage(rc, 0, name_seq, why);
			goto fail;
		}
		first = name_seq;
	}
	if ((err = seq_follows(rc, i, first)) != 0)
		goto fail;
	rc->expected = first;
	if (why) {
		uint8_t h[SEG_HDR];
		if ((err = seg_cut(rc, fd, 0, why)) != 0)
			goto fail;
		seg_hdr_encode(h, first);
		if (write_full(fd, h, SEG_HDR, 0, NULL) != 0 || datasync(fd) != 0) {
			err = err_sys(errno, "%s: rewriting the header", rc->path);
			goto fail;
		}
		rc->rd.size = SEG_HDR;
	}

	for (uint64_t off = SEG_HDR; off < rc->rd.size;) {
		rec_view r;
		bool found = false;
		if ((err = rec_check(rc, off, true, &r, &why)) != 0)
			goto fail;
		if (why) {
			if (last && (err = scan_for_record(rc, off + 1, &found)) != 0)
				goto fail;
			if (!last || found) {
				err = corrupt(rc, off, why, &r.h);
				goto fail;
			}
			if (rc->expected <= rc->synced) {
				err = synced_damage(rc, off, rc->expected, why);
				goto fail;
			}
			if ((err = seg_cut(rc, fd, off, why)) != 0)
				goto fail;
			break;
		}
		if (r.h.seq != rc->expected || r.h.seq == UINT64_MAX) {
			err = err_set(TALLY_ECORRUPT,
				      "%s offset %llu: record seq %llu, expected %llu", rc->path,
				      (unsigned long long)off, (unsigned long long)r.h.seq,
				      (unsigned long long)rc->expected);
			goto fail;
		}
		if (r.h.seq > rc->after_seq && rc->replay) {
			err = rc->replay(rc->ctx, r.h.seq, r.payload, r.h.raw);
			if (err)
				goto fail;
		}
		rc->expected++;
		count++;
		off += REC_HDR + r.h.stored;
	}

	w->segs[i].bytes = rc->rd.size;
	add(&w->disk_bytes, rc->rd.size);
	if (last) {
		w->fd = fd;
		w->seg_records = count;
	} else {
		fio_close(fd);
	}
	return 0;
fail:
	fio_close(fd);
	return err;
}

static int seg_cmp(const void *a, const void *b)
{
	uint64_t x = ((const wal_seg *)a)->first_seq, y = ((const wal_seg *)b)->first_seq;
	return x < y ? -1 : x > y;
}

static int seg_list(wal *w)
{
	int dfd = openat(w->dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return err_sys(errno, "%s: open", w->dir);
	DIR *d = fdopendir(dfd);
	if (!d) {
		int rc = err_sys(errno, "%s: opendir", w->dir);
		close(dfd);
		return rc;
	}
	int rc = 0;
	struct dirent *de;
	errno = 0;
	while ((de = readdir(d)) != NULL) {
		uint64_t seq;
		if (!seg_name_parse(de->d_name, &seq))
			continue;
		if (seq == 0) {
			rc = err_set(TALLY_ECORRUPT, "%s/%s: seq 0 in a segment name", w->dir,
				     de->d_name);
			goto out;
		}
		if ((rc = seg_push(w, seq, 0)) != 0)
			goto out;
		errno = 0;
	}
	if (errno)
		rc = err_sys(errno, "%s: readdir", w->dir);
out:
	closedir(d);
	if (!rc && w->n_segs > 1)
		qsort(w->segs, w->n_segs, sizeof *w->segs, seg_cmp);
	return rc;
}

static int dir_open(wal *w)
{
	int rc = fio_mkdir(w->dir);
	if (rc)
		return rc;
	w->dir_fd = fio_open(w->dir, O_RDONLY | O_DIRECTORY, 0);
	if (w->dir_fd < 0)
		return err_sys(errno, "%s: open", w->dir);
	return 0;
}

/* Leaves the log appendable at next_seq after recovery. */
static int open_tail(wal *w, uint64_t after_seq, uint64_t expected)
{
	uint64_t next = expected > after_seq ? expected : after_seq + 1;
	int rc, fd;
	if (w->n_segs && next == expected) {
		/* Records the previous process wrote but did not sync were
		 * replayed just now: make them durable before anyone builds on
		 * them. */
		if (datasync(w->fd) != 0)
			return fail(w, errno, "fdatasync", w->segs[w->n_segs - 1].first_seq);
		w->cur_seq = w->segs[w->n_segs - 1].first_seq;
		w->next_seq = next;
		return 0;
	}
	if (w->n_segs) {
		/* The log ends below after_seq (its unsynced tail was lost after
		 * the records reached parts). Numbering must go on above
		 * after_seq, or the next replay would skip the new records, so
		 * a new segment starts at after_seq + 1; the gap it leaves holds
		 * only records the caller has. An empty current segment goes. */
		wal_seg *cur = &w->segs[w->n_segs - 1];
		if (w->seg_records == 0) {
			fio_close(w->fd);
			w->fd = -1;
			if (seg_unlink(w, cur->first_seq) != 0)
				return err_sys(errno, "%s: unlink",
					       seg_path_tmp(w, cur->first_seq));
			sub(&w->disk_bytes, cur->bytes);
			w->n_segs--;
		} else {
			if (datasync(w->fd) != 0)
				return fail(w, errno, "fdatasync", cur->first_seq);
			fio_close(w->fd);
			w->fd = -1;
		}
	}
	if ((rc = seg_create(w, next, &fd)) != 0)
		return rc;
	w->fd = fd;
	if ((rc = seg_push(w, next, SEG_HDR)) != 0)
		return rc;
	add(&w->disk_bytes, SEG_HDR);
	w->cur_seq = next;
	w->seg_records = 0;
	w->next_seq = next;
	return 0;
}

/* Opens (creating) SYNCED and reads the highest seq known durable into
 * w->synced_seq: 0 for a new file (a log written before SYNCED existed)
 * or one that does not check out (a warning: recovery then checks less). */
static int synced_open(wal *w, bool *created)
{
	uint8_t b[SYNCED_LEN];
	*created = false;
	char path[WAL_PATH_MAX];
	snprintf(path, sizeof path, "%s/" SYNCED_NAME, w->dir);
	w->synced_fd = fio_open(path, O_RDWR, 0);
	if (w->synced_fd < 0 && errno == ENOENT) {
		*created = true;
		w->synced_fd = fio_open(path, O_RDWR | O_CREAT | O_EXCL, 0644);
	}
	if (w->synced_fd < 0)
		return err_sys(errno, "%s/" SYNCED_NAME ": open", w->dir);
	w->synced_seq = 0;
	if (*created)
		return 0;
	ssize_t k = pread(w->synced_fd, b, SYNCED_LEN, 0);
	if (k == (ssize_t)SYNCED_LEN && !memcmp(b, SYNCED_MAGIC, 8) &&
	    XXH3_64bits(b, 16) == get_u64(b + 16))
		w->synced_seq = get_u64(b + 8);
	else
		log_emit(&w->log, TALLY_LOG_WARN,
			 "%s/" SYNCED_NAME ": unreadable (%zd bytes, or bad magic or checksum); "
			 "recovery cannot tell synced records from a torn tail this time",
			 w->dir, k);
	return 0;
}

/* Writes seq to SYNCED durably (at open: a new file's name too). */
static int synced_store(wal *w, uint64_t seq, bool created)
{
	uint8_t b[SYNCED_LEN];
	synced_encode(b, seq);
	if (write_full(w->synced_fd, b, SYNCED_LEN, 0, NULL) != 0 || datasync(w->synced_fd) != 0)
		return err_sys(errno, "%s/" SYNCED_NAME ": write", w->dir);
	w->synced_seq = seq;
	if (created) {
		int e = -fio_fsync(w->dir_fd);
		if (e)
			return err_sys(e, "%s: fsync", w->dir);
	}
	return 0;
}

/* ------------------------------------------------------------ API */

int wal_open(const char *dir, const wal_options *opt, uint64_t after_seq, wal_replay_fn *replay,
	     void *ctx, wal **out)
{
	static const wal_options defaults;
	recover rc = {0};
	int r;
	if (!out)
		return err_set(TALLY_EINVAL, "wal_open: out is NULL");
	*out = NULL;
	if (!opt)
		opt = &defaults;
	size_t dlen = dir ? strlen(dir) : 0;
	while (dlen > 1 && dir[dlen - 1] == '/')
		dlen--;
	if (dlen == 0 || dlen + 1 + SEG_NAME_LEN >= WAL_PATH_MAX)
		return err_set(TALLY_EINVAL, "wal_open: directory name empty or too long");
	if (after_seq == UINT64_MAX)
		return err_set(TALLY_EINVAL, "wal_open: after_seq leaves no sequence numbers");

	wal *w = mem_calloc(1, sizeof *w);
	if (!w)
		return err_set(-ENOMEM, "wal %s: out of memory", dir);
	w->fd = -1;
	w->dir_fd = -1;
	w->synced_fd = -1;
	w->base_off = UINT64_MAX; /* set once the log is open */
	pthread_mutex_init(&w->sync_mu, NULL);
	w->segment_bytes = opt->segment_bytes ? opt->segment_bytes : DEFAULT_SEGMENT_BYTES;
	w->buffer_bytes = opt->buffer_bytes ? opt->buffer_bytes : DEFAULT_BUFFER_BYTES;
	if (w->buffer_bytes < MIN_BUFFER_BYTES)
		w->buffer_bytes = MIN_BUFFER_BYTES;
	w->log = opt->log;
	w->dir = mem_strndup(dir, dlen);
	w->buf = mem_alloc(w->buffer_bytes);
	if (!w->dir || !w->buf) {
		r = err_set(-ENOMEM, "wal %s: out of memory", dir);
		goto fail;
	}
	bool synced_new = false;
	if ((r = dir_open(w)) != 0 || (r = seg_list(w)) != 0 ||
	    (r = synced_open(w, &synced_new)) != 0)
		goto fail;

	rc.w = w;
	rc.after_seq = after_seq;
	rc.replay = replay;
	rc.ctx = ctx;
	rc.synced = w->synced_seq;
	for (size_t i = 0; i < w->n_segs && !r; i++)
		r = seg_recover(&rc, i);
	uint64_t have = w->n_segs ? rc.expected - 1 : 0;
	if (!r && have < rc.synced && rc.synced > after_seq)
		r = err_set(TALLY_ECORRUPT,
			    "%s: records %llu..%llu were synced (%s/" SYNCED_NAME
			    ") but are missing: the log %s; refusing to open",
			    w->dir,
			    (unsigned long long)(have > after_seq ? have + 1 : after_seq + 1),
			    (unsigned long long)rc.synced, w->dir,
			    w->n_segs ? "ends before them" : "has no segment");
	if (r == TALLY_ECORRUPT && opt->read_only_on_damage) {
		/* The operator's choice: what replayed up to the damage stays,
		 * no file is touched, and the log refuses every change. */
		char msg[ERR_MSG_MAX];
		snprintf(msg, sizeof msg, "opened read-only after damage: %s", err_msg());
		log_emit(&w->log, TALLY_LOG_ERROR, "wal %s: %s", w->dir, msg);
		snprintf(w->fail_msg, sizeof w->fail_msg, "%s", msg);
		__atomic_store_n(&w->failed, 1, __ATOMIC_RELEASE);
		w->next_seq = rc.expected > after_seq ? rc.expected : after_seq + 1;
		goto done;
	}
	if (r)
		goto fail;
	if ((r = open_tail(w, after_seq, rc.expected)) != 0)
		goto fail;
	/* Everything replayed is durable now (open_tail synced it). */
	w->base_off = w->segs[w->n_segs - 1].bytes;
	st(&w->written_seq, w->next_seq - 1);
	if ((r = synced_store(w, w->next_seq - 1, synced_new)) != 0)
		goto fail;
done:
	mem_free(rc.rd.buf);
	mem_free(rc.dbuf);
	err_clear();
	*out = w;
	return 0;
fail:
	mem_free(rc.rd.buf);
	mem_free(rc.dbuf);
	if (w->fd >= 0)
		fio_close(w->fd);
	w->fd = -1;
	wal_close(w);
	return r;
}

/* Records in SYNCED that every record up to seq is durable (caller holds
 * sync_mu, and the fsync that made them so has returned). One pwrite of
 * one sector, not synced itself: after a power cut it may hold an older
 * value, which only makes recovery check less, never wrongly. */
static void synced_note_locked(wal *w, uint64_t seq)
{
	if (w->synced_fd < 0 || seq <= w->synced_seq)
		return;
	uint8_t b[SYNCED_LEN];
	synced_encode(b, seq);
	if (write_full(w->synced_fd, b, SYNCED_LEN, 0, NULL) == 0)
		w->synced_seq = seq;
}

/* A serialised call on a failed WAL: first cuts the bytes no fsync
 * covered (see fail_msg_locked), then returns TALLY_EFAILED. */
static int failed_now(wal *w)
{
	pthread_mutex_lock(&w->sync_mu);
	if (w->undo_pending && w->n_segs) {
		wal_seg *cur = &w->segs[w->n_segs - 1];
		w->undo_pending = 0;
		if (w->undo_off < cur->bytes) {
			uint64_t cut = cur->bytes - w->undo_off;
			if (fio_ftruncate(w->fd, w->undo_off) != 0 || datasync(w->fd) != 0) {
				log_emit(&w->log, TALLY_LOG_ERROR,
					 "%s/%020llu.wal: could not cut the %llu bytes written "
					 "after the last good fsync: %s; records after seq %llu "
					 "may come back at the next open",
					 w->dir, (unsigned long long)cur->first_seq,
					 (unsigned long long)cut, strerror(errno),
					 (unsigned long long)w->synced_seq);
			} else {
				log_emit(&w->log, TALLY_LOG_WARN,
					 "%s/%020llu.wal offset %llu: cut %llu bytes written after "
					 "the last good fsync (their writes were told they failed)",
					 w->dir, (unsigned long long)cur->first_seq,
					 (unsigned long long)w->undo_off, (unsigned long long)cut);
				sub(&w->disk_bytes, cut);
				cur->bytes = w->undo_off;
			}
		}
	}
	pthread_mutex_unlock(&w->sync_mu);
	return failed_err(w);
}

/* One fsync of the current segment, under sync_mu: covers every byte
 * written before it. */
static int sync_locked(wal *w)
{
	if (is_failed(w))
		return failed_err(w);
	uint64_t target = ld(&w->written_lsn), seq = ld(&w->written_seq);
	if (datasync(w->fd) != 0)
		return fail_locked(w, errno, "fdatasync", w->cur_seq);
	add(&w->syncs, 1);
	st(&w->durable_lsn, target);
	synced_note_locked(w, seq);
	return 0;
}

/* Closes the current segment durably and starts the next at next_seq. The
 * old segment is synced before the new one exists, so that only the last
 * segment can ever have a torn tail. */
static int wal_roll(wal *w)
{
	int rc, fd;
	pthread_mutex_lock(&w->sync_mu);
	rc = sync_locked(w);
	pthread_mutex_unlock(&w->sync_mu);
	if (rc)
		return rc;
	/* On failure from here the old segment stays current: a later
	 * append tries the roll again. */
	if ((rc = seg_create(w, w->next_seq, &fd)) != 0)
		return rc;
	if ((rc = seg_push(w, w->next_seq, SEG_HDR)) != 0) {
		fio_close(fd);
		if (seg_unlink(w, w->next_seq) != 0)
			return fail(w, errno, "unlink of unused segment", w->next_seq);
		return rc;
	}
	add(&w->disk_bytes, SEG_HDR);
	pthread_mutex_lock(&w->sync_mu);
	fio_close(w->fd);
	w->fd = fd;
	w->cur_seq = w->next_seq;
	w->base_lsn = ld(&w->written_lsn);
	w->base_off = SEG_HDR;
	pthread_mutex_unlock(&w->sync_mu);
	w->seg_records = 0;
	return 0;
}

int wal_append(wal *w, const void *payload, size_t len, uint64_t *seq)
{
	int rc;
	if (is_failed(w))
		return failed_now(w);
	if (len > WAL_RECORD_MAX)
		return err_set(TALLY_ELIMIT,
			       "wal %s: record of %zu bytes exceeds the %u-byte limit", w->dir, len,
			       WAL_RECORD_MAX);
	if (len && !payload)
		return err_set(TALLY_EINVAL, "wal %s: NULL payload", w->dir);
	if (w->next_seq == UINT64_MAX)
		return err_set(TALLY_ELIMIT, "wal %s: sequence numbers exhausted", w->dir);

	wal_seg *cur = &w->segs[w->n_segs - 1];
	if (w->seg_records && cur->bytes >= w->segment_bytes)
		if ((rc = wal_roll(w)) != 0)
			return rc;
	cur = &w->segs[w->n_segs - 1];

	size_t bound = (size_t)LZ4_compressBound((int)len);
	size_t worst = REC_HDR + bound;
	uint8_t *dst = w->buf;
	if (worst > w->buffer_bytes) {
		/* Larger than the buffer: encode in the scratch for big ones. */
		if (worst > w->big_cap) {
			mem_free(w->big);
			w->big_cap = 0;
			if (!(w->big = mem_alloc(worst)))
				return err_set(-ENOMEM,
					       "wal %s: out of memory for a %zu-byte record",
					       w->dir, len);
			w->big_cap = worst;
		}
		dst = w->big;
	}
	uint32_t flags;
	uint32_t stored = rec_encode_payload(dst + REC_HDR, payload, len, bound, &flags);
	rec_hdr_encode(dst, stored, len, flags, w->next_seq);
	size_t n = REC_HDR + stored, done;
	/* Written through at once: the caller applies the record only once
	 * its bytes are in the kernel, so a full disk refuses this write
	 * (its writer hears so) instead of failing a later sync that covers
	 * writes already applied and visible. */
	if (write_full(w->fd, dst, n, cur->bytes, &done) != 0) {
		char path[WAL_PATH_MAX];
		int e = errno;
		add(&w->write_errors, 1);
		seg_path(w, cur->first_seq, path);
		/* Take back the part that made it, so the file ends at a
		 * record boundary and a retry writes after it. */
		if (done && fio_ftruncate(w->fd, cur->bytes) != 0)
			return fail(w, errno, "ftruncate after a failed write of", cur->first_seq);
		return err_sys(e, "%s offset %llu: write of record %llu", path,
			       (unsigned long long)cur->bytes, (unsigned long long)w->next_seq);
	}
	cur->bytes += n;
	add(&w->disk_bytes, n);
	st(&w->written_seq, w->next_seq);
	add(&w->written_lsn, n);
	if (w->big_cap > BIG_KEEP) {
		mem_free(w->big);
		w->big = NULL;
		w->big_cap = 0;
	}
	w->appended_lsn += n;
	w->seg_records++;
	if (seq)
		*seq = w->next_seq;
	w->next_seq++;
	return 0;
}

int wal_write_out(wal *w, uint64_t *lsn)
{
	if (is_failed(w))
		return failed_now(w);
	if (lsn)
		*lsn = w->appended_lsn;
	return 0;
}

int wal_sync_to(wal *w, uint64_t lsn)
{
	if (is_failed(w))
		return failed_err(w);
	if (ld(&w->durable_lsn) >= lsn)
		return 0;
	pthread_mutex_lock(&w->sync_mu);
	int rc = 0;
	/* Whoever held the mutex before may have covered us; if not, one
	 * fsync covers everything written so far, for all waiters. */
	if (lsn > ld(&w->written_lsn))
		rc = err_set(TALLY_EINVAL, "wal %s: sync to %llu, past the written end %llu",
			     w->dir, (unsigned long long)lsn,
			     (unsigned long long)ld(&w->written_lsn));
	else if (is_failed(w) || ld(&w->durable_lsn) < lsn)
		rc = sync_locked(w);
	pthread_mutex_unlock(&w->sync_mu);
	return rc;
}

int wal_rotate(wal *w)
{
	if (is_failed(w))
		return failed_now(w);
	return w->seg_records ? wal_roll(w) : 0;
}

int wal_trim(wal *w, uint64_t upto_seq)
{
	if (is_failed(w))
		return failed_now(w);
	size_t n = 0;
	int rc = 0;
	/* A segment ends where the next begins; the current one never goes. */
	while (n + 1 < w->n_segs && w->segs[n + 1].first_seq - 1 <= upto_seq) {
		if (seg_unlink(w, w->segs[n].first_seq) != 0) {
			rc = err_sys(errno, "%s: unlink", seg_path_tmp(w, w->segs[n].first_seq));
			break;
		}
		sub(&w->disk_bytes, w->segs[n].bytes);
		n++;
	}
	if (n) {
		memmove(w->segs, w->segs + n, (w->n_segs - n) * sizeof *w->segs);
		w->n_segs -= n;
		int r = fsync_dir(w);
		if (r)
			rc = r;
	}
	return rc;
}

uint64_t wal_last_seq(const wal *w)
{
	return w->next_seq - 1;
}

uint64_t wal_disk_bytes(const wal *w)
{
	return __atomic_load_n(&w->disk_bytes, __ATOMIC_RELAXED);
}

uint64_t wal_write_errors(const wal *w)
{
	return __atomic_load_n(&w->write_errors, __ATOMIC_RELAXED);
}

int wal_failed(const wal *w)
{
	return is_failed(w);
}

int wal_failed_error(const wal *w)
{
	return failed_err(w);
}

int wal_dir_first_seq(const char *dir, uint64_t *first)
{
	*first = 0;
	DIR *d = opendir(dir);
	if (!d)
		return errno == ENOENT ? 0 : err_sys(errno, "%s: opendir", dir);
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		uint64_t seq;
		if (seg_name_parse(de->d_name, &seq) && (!*first || seq < *first))
			*first = seq;
	}
	closedir(d);
	return 0;
}

uint64_t wal_syncs(const wal *w)
{
	return __atomic_load_n(&w->syncs, __ATOMIC_RELAXED);
}

void wal_close(wal *w)
{
	if (!w)
		return;
	if (w->fd >= 0 && !is_failed(w)) {
		uint64_t lsn = 0;
		int rc = wal_write_out(w, &lsn);
		if (!rc)
			rc = wal_sync_to(w, lsn);
		if (rc)
			log_emit(&w->log, TALLY_LOG_ERROR, "wal close: %s", err_msg());
	}
	if (w->fd >= 0 && is_failed(w))
		failed_now(w); /* the in-doubt bytes must not outlive us */
	if (w->fd >= 0)
		fio_close(w->fd);
	if (w->synced_fd >= 0)
		fio_close(w->synced_fd);
	if (w->dir_fd >= 0)
		fio_close(w->dir_fd);
	pthread_mutex_destroy(&w->sync_mu);
	mem_free(w->segs);
	mem_free(w->buf);
	mem_free(w->big);
	mem_free(w->dir);
	mem_free(w);
}
