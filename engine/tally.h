/*
 * tally.h — the public API of libtally, the embedded face of tally.
 *
 * tally keeps events (table, key, time, fields) and exact per-key rollups
 * (count, sum, min, max) for fixed windows, and answers rollup series, exact
 * range aggregates, all-keys aggregates and raw scans.
 *
 * Conventions (read once, they hold for every function below):
 *
 *  - Errors: every function that can fail returns int: 0 (TALLY_OK) on
 *    success, a negative errno (-ENOMEM, -EIO, ...) for system errors, or a
 *    tally code (TALLY_E*, all <= TALLY_ERR_BASE, far below any errno).
 *    tally_strerror() names any code; tally_errmsg() gives the message of the
 *    last error on the calling thread, with context ("wal/shard-000/...wal
 *    offset 4096: checksum mismatch"). The message is thread-local, so
 *    concurrent callers never see each other's messages.
 *
 *  - Time: int64 nanoseconds since the Unix epoch, UTC. Ranges are half open,
 *    [from, to).
 *
 *  - Ownership: handles are created by *_open and destroyed by *_close;
 *    *_close(NULL) is a no-op. Pointers returned inside results are borrowed:
 *    each function says until when they stay valid.
 *
 *  - Threads: a tally_db may be used from many threads at once. A
 *    tally_writer belongs to one thread at a time (no two calls on the same
 *    writer may overlap); different writers may write concurrently, also when
 *    bound to the same shard. Queries, tally_db_sync and tally_db_stats may run
 *    concurrently with each other and with writes; a query sees every write
 *    that returned before it started (read-your-writes).
 *    A query iterator belongs to one thread at a time.
 *
 *  - Durability: a write that returned is visible to queries at once. It is
 *    durable (survives kill -9 and power loss) after a later tally_db_sync()
 *    returned 0, or, with sync_mode TALLY_SYNC_EACH_WRITE, when the write
 *    itself returned.
 *
 *  - Growth: tally_options and tally_stats gain fields at their end in
 *    later releases; each starts with its size as the program was compiled
 *    (set by tally_options_init and tally_db_stats), so a program keeps
 *    working with a newer libtally.so unrebuilt. docs/api.md has the rules.
 */
#ifndef TALLY_H
#define TALLY_H

#include <stddef.h>
#include <stdint.h>

#include "tally_base.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(TALLY_BUILDING) && defined(__GNUC__)
#define TALLY_API __attribute__((visibility("default")))
#else
#define TALLY_API
#endif

#define TALLY_VERSION_MAJOR 0
#define TALLY_VERSION_MINOR 1
#define TALLY_VERSION_PATCH 0

/* ---------------------------------------------------------------- errors */

/* The codes (TALLY_OK, TALLY_E*) are in tally_base.h, shared with storage/. */

/* Names any return code: 0, -errno or TALLY_E*. Never NULL; static storage. */
TALLY_API const char *tally_strerror(int err);

/* Message of the last error on this thread, with context. Valid until the
 * next tally call on this thread. "" when the last call succeeded. */
TALLY_API const char *tally_errmsg(void);

/* ---------------------------------------------------------------- options */

/* Rollup levels: window widths in ns; each must divide the next (at most
 * TALLY_LEVELS_MAX, tally_base.h). */
#define TALLY_NS_PER_SEC INT64_C(1000000000)
#define TALLY_5M         (300 * TALLY_NS_PER_SEC)
#define TALLY_1H         (3600 * TALLY_NS_PER_SEC)
#define TALLY_1D         (86400 * TALLY_NS_PER_SEC)

enum tally_sync_mode {
	TALLY_SYNC_ON_REQUEST = 0, /* durable at tally_db_sync (group commit) */
	TALLY_SYNC_EACH_WRITE = 1, /* every write call fsyncs before returning */
};

/* Options and stats grow at their end with new releases, without breaking
 * programs built against an older tally.h (docs/api.md): each struct starts
 * with its size as the program was compiled, so the library reads and
 * writes only the bytes the program has. */
typedef struct tally_options {
	/* sizeof(tally_options) as the program was compiled; set by
	 * tally_options_init. The library reads only the fields this covers
	 * and takes the defaults for the rest. */
	size_t size;
	/* Number of write shards; 0 means 1. Each has its own memtable,
	 * rollups and WAL. */
	unsigned shards;
	/* Rollup windows in ns, ascending, each dividing the next.
	 * n_levels 0 means the default: 5m, 1h, 1d. */
	unsigned n_levels;
	int64_t levels[TALLY_LEVELS_MAX];
	/* Windows (and day partitions) start at offset + k*width, so that
	 * +3h gives Moscow days. In ns, within (-1 day, 1 day). */
	int64_t align_offset;
	/* Per-table series key, "table=KEY,table=KEY": KEY is one tag
	 * (traffic=camera), several joined by '+' (traffic=camera+lane) or
	 * '*' (every tag of each line). Tables not named are keyed by the
	 * first tag of their first line. A table's key is fixed when it is
	 * created (docs/architecture.md, "Series keys"). NULL: none. Copied
	 * at open. */
	const char *table_keys;
	/* Memory bound for memtables and rollups, bytes; writes past it fail
	 * with TALLY_EFULL. 0: 4 GiB. */
	uint64_t memory_limit;
	/* Longest accepted line protocol line, bytes. 0: 1 MiB. */
	uint32_t max_line_bytes;
	enum tally_sync_mode sync_mode;
	/* WAL segment size before rolling to a new file. 0: 64 MiB. */
	uint64_t wal_segment_bytes;
	/* An event counts as late when it is older than its key's newest event
	 * by more than this, ns. 0: the finest level's width. */
	int64_t late_threshold;
	/* A shard's memtable is flushed into parts once it holds this many
	 * bytes, or is flush_interval_ms old. 0: 256 MiB and 60 s. Either
	 * way at most memory_limit / (2 x shards), so that every shard's
	 * memtable and the one it is flushing fit under the limit. */
	uint64_t memtable_bytes;
	uint32_t flush_interval_ms;
	/* Event-time partition of parts, ns; a multiple of the coarsest level.
	 * 0: one day, or the coarsest level when that is longer. Fixed at
	 * creation: reopening with another value fails. */
	int64_t partition_width;
	/* Decoded rollup blocks of parts kept in memory, bytes. 0: 256 MiB. */
	uint64_t cache_bytes;
	/* A partition is sealed (merged into one segment) once the table's
	 * newest event is this far past its end, ns. 0: 1 hour. */
	int64_t seal_grace;
	/* 1: no background thread; flushes and merges happen only in
	 * tally_db_flush and tally_db_merge (tests, tools). */
	int no_background;
	/* 1: after open, a background thread faults in each shard's first
	 * memtable's memory (memtable_bytes) ahead of the writers. Fresh
	 * memory costs a page fault and a zeroing on first touch, on the
	 * writer's thread (2 ms per MiB measured on one virtual machine;
	 * it varies with the host and its huge pages); the
	 * memory of flushed memtables is reused, so this only brings a new
	 * process to where a running one is. Ignored with no_background. */
	int prefault;
	/* Log sink; NULL logs to stderr. Called from any thread. */
	tally_log_fn *log_fn;
	void *log_ctx;
	int log_level; /* most verbose level logged; default TALLY_LOG_WARN */

	/* Tiering to S3-compatible object storage (docs/operations.md,
	 * "Tiering to object storage"). On when a bucket is given. A sealed partition whose end
	 * lies tier_after behind its table's newest event has its raw columns uploaded, verified,
	 * recorded in the manifest and removed locally; rollups and indexes
	 * stay local, so rollup queries never touch object storage. Strings
	 * are copied at open; credentials are never logged. The library reads
	 * no environment variable: a program that wants $AWS_ACCESS_KEY_ID
	 * and the like passes them here (tallyd does, wire/conf.c). */
	const char *tier_bucket;        /* NULL: tiering off */
	const char *tier_endpoint;      /* NULL: AWS S3 of the region */
	const char *tier_region;        /* NULL: us-east-1 */
	const char *tier_prefix;        /* object key prefix, e.g. "tally/site1/"; NULL: "" */
	const char *tier_access_key;    /* NULL: unsigned requests */
	const char *tier_secret_key;    /* NULL: none */
	const char *tier_session_token; /* NULL: none */
	/* ns; 0: 7 days; negative: upload nothing (tiered data stays readable) */
	int64_t tier_after;
	/* Cold raw blocks kept in memory, bytes. 0: 64 MiB. */
	uint64_t tier_cache_bytes;
	/* One request's time limit, ms (0: 30 s), and retries of a failed
	 * request with exponential backoff (0: 4; cold reads retry once). */
	uint32_t tier_timeout_ms;
	unsigned tier_retries;
	/* Uploads above this go multipart in parts of this size. 0: 16 MiB. */
	uint64_t tier_part_bytes;
	/* When a shard's WAL does not check out at open (records an fsync
	 * covered are damaged or missing): 0 refuses to open (TALLY_ECORRUPT,
	 * file and offset named); 1 opens the database read-only instead:
	 * every shard replays what it can, no file is changed, queries
	 * answer, writes, syncs, flushes and merges fail with TALLY_EFAILED,
	 * and no background thread runs. docs/operations.md, "At open". */
	uint64_t wal_damage_read_only;
	/* Most distinct keys a table may hold; a line (or binary batch) with
	 * a key past it is refused alone with TALLY_ELIMIT, naming the table
	 * and the limit. A key counts from the first line that names it. 0:
	 * no limit (every key's state then costs memory for good: see
	 * tally_stats.key_bytes). */
	uint64_t max_keys_per_table;

	/* Labelled batches (tally_write_lp_labelled; docs/operations.md,
	 * "Exactly once under retries"). Per source the database remembers
	 * which of the label_window sequences below its highest applied one
	 * were applied (0: 256; rounded up to a multiple of 64, at most
	 * 65536); a sequence further below is refused with TALLY_ESTALE. A
	 * source silent for label_expiry ns is forgotten at the next flush
	 * (0: 7 days; negative: never), after which a retry of one of its
	 * batches would be applied again. */
	uint64_t label_window;
	int64_t label_expiry;

	/* Retention (docs/operations.md, "Retention"): how long each table
	 * keeps its raw events and each rollup level, as rules
	 * "TABLE:CLASS=KEEP,...;..." where TABLE is a table name or * (every
	 * other table), CLASS is raw or a level's width (5m, 1h, 1d), and
	 * KEEP a duration (s, m, h, d, w, y = 365 d) or forever; e.g.
	 * "traffic:raw=90d,5m=2y". A coarser class keeps at least as long as
	 * a finer one. NULL or "": everything is kept forever. Copied at
	 * open; tally_db_set_retention changes it on a running database. */
	const char *retention;
	/* Fields kept as exact distributions besides their rollups,
	 * "table.field:resolution[:max],..." (traffic.speed:0.1): per window,
	 * the count of every distinct value at that resolution, a power of
	 * ten (tally_query_dist; docs/api.md). A window with more than max
	 * distinct values (default 4096, at most 16777216) is kept as a
	 * sketch within a relative 1/128 instead, and answers that use it
	 * say so (tally_dist_error). NULL: none. Copied at open. */
	const char *distributions;
	/* How part files are read (docs/operations.md, "Memory and latency
	 * of tallyd"): TALLY_PART_READS_MMAP maps each part whole and reads
	 * its blocks in place, so every page read counts in the process's
	 * RSS (as file pages) for as long as the kernel keeps it;
	 * TALLY_PART_READS_PREAD reads each block with pread into a reused
	 * per-reader buffer as big as the largest block, so the parts' pages
	 * stay in the page cache, outside RSS, which then stays flat as the
	 * data grows. 0: TALLY_PART_READS_DEFAULT. Answers are the same. */
	uint64_t part_reads;
} tally_options;

enum {
	TALLY_PART_READS_MMAP = 1,
	TALLY_PART_READS_PREAD = 2,
	TALLY_PART_READS_DEFAULT = TALLY_PART_READS_MMAP,
};

/* The size of the first released layout (0.1), ending at tier_part_bytes:
 * tally_db_open refuses a smaller opt->size. */
#define TALLY_OPTIONS_SIZE_0_1 (offsetof(tally_options, tier_part_bytes) + sizeof(uint64_t))

/* Fills the first size bytes at opt with the defaults (bytes past the
 * library's own tally_options with 0) and sets opt->size = size. Called
 * through tally_options_init. */
TALLY_API void tally_options_init_sized(tally_options *opt, size_t size);

/* Fills *opt with the defaults and opt->size with this header's size. */
static inline void tally_options_init(tally_options *opt)
{
	tally_options_init_sized(opt, sizeof *opt);
}

/* ---------------------------------------------------------------- database */

typedef struct tally_db tally_db;

/* Opens (creating if needed) the database in directory dir, replays the WAL
 * exactly once and returns the handle in *out. opt NULL means defaults;
 * else opt->size must be set (tally_options_init does), and options past
 * the library's own struct (from a newer tally.h) must be 0: otherwise
 * TALLY_EINVAL.
 * The directory is locked against other processes (TALLY_ELOCKED).
 * On failure *out is NULL and nothing needs cleaning up. */
TALLY_API int tally_db_open(const char *dir, const tally_options *opt, tally_db **out);

/* Syncs and closes. All writers and iterators must be closed before. */
TALLY_API void tally_db_close(tally_db *db);

/* Returns once every write that returned before the call is durable.
 * Many concurrent syncs and writes share one fsync per shard (group
 * commit). A failed fsync fails the shard for good (TALLY_EFAILED after;
 * the writes it covered are dropped, also from a later open); the other
 * shards are synced all the same. A write whose WAL write fails (a full
 * disk) is refused by the write call itself and never applied. */
TALLY_API int tally_db_sync(tally_db *db);

/* Flushes every shard's memtable into parts now and returns once the parts
 * are durable and named by the manifest (the WAL is then trimmed). The
 * background flusher does this by itself; this call is for tools, tests
 * and orderly shutdowns. */
TALLY_API int tally_db_flush(tally_db *db);

/* Runs the merge policy now (merging small parts, sealing partitions past
 * their grace, folding late parts into sealed segments) until nothing is
 * left to do. The background thread does this after each flush. */
TALLY_API int tally_db_merge(tally_db *db);

/* Runs the tiering policy now: deletes objects that merges retired, then
 * uploads every sealed partition due for object storage. Returns the first
 * failure (TALLY_EREMOTE with the object store's answer), after which what
 * was not uploaded stays local and is tried again later. TALLY_EINVAL when
 * tiering is not configured. The tiering thread does this by itself. */
TALLY_API int tally_db_tier(tally_db *db);

/* ---------------------------------------------------------------- writing */

typedef struct tally_writer tally_writer;

/* A writer is bound to one shard: shard < shards, or -1 for round robin
 * over the shards as writers are opened. */
TALLY_API int tally_writer_open(tally_db *db, int shard, tally_writer **out);
TALLY_API void tally_writer_close(tally_writer *w);

enum tally_precision {
	TALLY_PREC_NS = 0,
	TALLY_PREC_US = 1,
	TALLY_PREC_MS = 2,
	TALLY_PREC_S = 3,
};

#define TALLY_LINE_ERRORS_MAX 16
#define TALLY_REASON_MAX      160

typedef struct tally_line_error {
	uint64_t line;                 /* 1-based line number within the call's text */
	int code;                      /* TALLY_ESYNTAX, TALLY_ETYPE, TALLY_ELIMIT, ... */
	char reason[TALLY_REASON_MAX]; /* "field 'speed': invalid number '8x.2'" */
} tally_line_error;

typedef struct tally_write_result {
	uint64_t accepted; /* lines written */
	uint64_t rejected; /* lines refused; good lines around them are kept */
	uint64_t lines;    /* lines seen, blank lines and comments included */
	/* The first min(rejected, TALLY_LINE_ERRORS_MAX) rejected lines. */
	unsigned n_errors;
	tally_line_error errors[TALLY_LINE_ERRORS_MAX];
} tally_write_result;

/* Writes InfluxDB line protocol text (one or more lines; the last may lack
 * its newline). Lines without a timestamp get the current time.
 * Returns 0 when the call was processed, even if some lines were rejected
 * (see *res, which may be NULL). A negative code (TALLY_EFULL,
 * TALLY_EFAILED, out of memory, I/O errors) stops the call: then *res
 * covers only the first res->lines lines, which were applied (their
 * accepted lines are written, their rejected ones listed); the lines after
 * them were not written. The text is applied in batches of many
 * thousand lines, so res->lines is 0 unless the text was long. */
TALLY_API int tally_write_lp(tally_writer *w, const char *text, size_t len,
			     enum tally_precision prec, tally_write_result *res);

/* A column of a batch; its type is an enum tally_type (tally_base.h). */
typedef struct tally_column {
	const char *name;
	enum tally_type type;   /* F64, I64, U64, BOOL (uint8_t 0/1), STR or TAG */
	const void *values;     /* n_rows values; STR, TAG: const char ** */
	const uint8_t *present; /* optional bitmap, bit i = row i has a value */
} tally_column;

typedef struct tally_batch {
	const char *table;
	const char *key;     /* the key tag's value for every row; a table
				keyed by several tags takes its pairs,
				"camera=KV1,lane=2" in any order */
	const char *key_tag; /* key tag name if this batch creates the table
				and table_keys names none; NULL: "key" */
	size_t n_rows;
	const int64_t *ts; /* n_rows timestamps, ns */
	size_t n_columns;
	const tally_column *columns;
} tally_batch;

/* Writes typed rows of one key. The batch is checked whole before any row
 * is written: it is accepted or refused as a whole (TALLY_ETYPE for a type
 * conflict, TALLY_EINVAL for bad names, NaN/Inf or invalid UTF-8). */
TALLY_API int tally_write_batch(tally_writer *w, const tally_batch *b);

/*
 * Labelled writes: exactly once under retries. A sender that may resend a
 * batch whose acknowledgement it lost labels each batch with its source id
 * (1..255 bytes of UTF-8, no space or control byte: a camera, a gateway, a
 * producer) and a sequence number it increases with each new batch. The
 * batch is applied as one WAL record together with its label, atomically
 * with the check against what the source already applied: every batch of
 * a source goes to one shard (by a hash of the source, whatever the
 * writer's shard) and is checked and applied under its lock. *duplicate (may be
 * NULL) gets 1 when the label was applied before: the call then changes
 * nothing, returns 0 with *res all zero, and (TALLY_SYNC_EACH_WRITE) returns
 * only once the earlier batch is durable. A sequence more than
 * label_window below the source's highest applied one fails with
 * TALLY_ESTALE: whether it was applied is no longer known. The label is
 * recorded even when every line was rejected (a retry gets the duplicate
 * answer, without the per-line errors); a failed call (negative code)
 * records nothing, so its retry is applied. The whole text is one WAL
 * record, at most 256 MiB encoded.
 */
TALLY_API int tally_write_lp_labelled(tally_writer *w, const char *source, uint64_t seq,
				      const char *text, size_t len, enum tally_precision prec,
				      tally_write_result *res, int *duplicate);
/* The binary write, labelled likewise. A batch refused as a whole records
 * no label. */
TALLY_API int tally_write_batch_labelled(tally_writer *w, const char *source, uint64_t seq,
					 const tally_batch *b, int *duplicate);

/* The highest sequence applied for source into *seq: 0, or
 * TALLY_ENOTFOUND when the database holds no label of it (never labelled,
 * or forgotten by label_expiry). A consumer that labels each batch with
 * the position it read up to resumes from here after a restart (tallyd's
 * Kafka consumer: docs/cluster.md). Safe with concurrent writes; a batch
 * being applied meanwhile may or may not be seen. */
TALLY_API int tally_label_high(tally_db *db, const char *source, uint64_t *seq);

/* ---------------------------------------------------------------- queries */

typedef struct tally_agg {
	uint64_t count;
	double sum;
	double min; /* NaN when count == 0 */
	double max;
	double avg;
} tally_agg;

typedef struct tally_bucket {
	int64_t start; /* window start, ns */
	tally_agg agg;
} tally_bucket;

/* Rollup series of one key's numeric field: one bucket per window of width
 * step that holds events, in time order, for every window that starts in
 * [window_start(from), to); each bucket covers its whole window, also when
 * to cuts into the last one. step must be a multiple of the finest level
 * (e.g. 15m from 5m); windows align like the levels (align_offset).
 * Fills at most cap buckets; *n_out gets the number of non-empty windows;
 * TALLY_ETRUNC when that exceeds cap (the first cap are filled). */
TALLY_API int tally_query_series(tally_db *db, const char *table, const char *field,
				 const char *key, int64_t step, int64_t from, int64_t to,
				 tally_bucket *out, size_t cap, size_t *n_out);

/* Exact aggregate of one key's field over any [from, to): whole windows of
 * the coarsest levels that fit, raw events only at the unaligned edges. */
TALLY_API int tally_query_agg(tally_db *db, const char *table, const char *field, const char *key,
			      int64_t from, int64_t to, tally_agg *out);

/* All keys of a table at once: the exact aggregate of field over [from, to)
 * for every key with events there, sorted by key. */
typedef struct tally_keys_iter tally_keys_iter;
TALLY_API int tally_query_keys(tally_db *db, const char *table, const char *field, int64_t from,
			       int64_t to, tally_keys_iter **out);
/*
 * Keys and groups. A key argument of the queries above
 * (tally_query_series, tally_query_agg) names one series, or any subset
 * of a table's key tags as "tag=value,tag=value" (any order; '\', ','
 * and '=' escaped by '\'): the answer then merges exactly every series
 * holding those pairs. A table keyed by one tag also takes its bare
 * value ("KV00123", as ever). A table keyed by several tags stores each
 * key as its pairs sorted by name ("camera=KV1,lane=2").
 *
 * tally_query_group is tally_query_keys restricted to the keys matching
 * key (NULL: every key) and, with group a list of tag names ("lane" or
 * "camera,lane"), merged per distinct value of those tags: each answer's
 * key is then "lane=2" or "camera=KV1,lane=2" (the tags in group's
 * order; a tag a key lacks reads empty, "lane="). group NULL: one
 * answer per key; "": one answer for all. TALLY_EINVAL for a tag that is
 * not in the table's key.
 */
TALLY_API int tally_query_group(tally_db *db, const char *table, const char *field, const char *key,
				const char *group, int64_t from, int64_t to, tally_keys_iter **out);

/* 1 and fills *key and *agg, 0 at the end, <0 on error. *key is borrowed until
 * the next tally_keys_next or tally_keys_close: the iterator copies each key
 * into one buffer it reuses, so a caller that keeps keys copies them. */
TALLY_API int tally_keys_next(tally_keys_iter *it, const char **key, tally_agg *agg);
TALLY_API void tally_keys_close(tally_keys_iter *it);

/* Raw scan of one key's events in [from, to), in time order (events with
 * equal times in arrival order; key may name a subset of a table's key
 * tags, "Keys and groups" above: the matching keys' events merged, their
 * rows without the key tags): a cursor over what the store held at
 * open, decoded as tally_scan_next reaches it, so its memory does not grow
 * with the range and a reader may stop early. An open scan keeps the
 * memtables and parts it reads alive past their flush or merge; close
 * every scan before tally_db_close. One thread at a time per scan. */
typedef struct tally_scan tally_scan;

typedef struct tally_value {
	enum tally_type type; /* TALLY_T_NONE: no value in this row */
	union {
		double f64;
		int64_t i64;
		uint64_t u64;
		int b;
		struct {
			const char *ptr; /* not NUL-terminated */
			size_t len;
		} str;
	} v;
} tally_value;

typedef struct tally_row {
	int64_t ts;
	size_t n_values;           /* == tally_scan_columns() */
	const tally_value *values; /* values[i] is column i */
} tally_row;

TALLY_API int tally_scan_open(tally_db *db, const char *table, const char *key, int64_t from,
			      int64_t to, tally_scan **out);
/* Columns of the scan's rows (tags and fields, the key tag excluded);
 * name borrowed until tally_scan_close. */
TALLY_API size_t tally_scan_columns(tally_scan *s);
TALLY_API int tally_scan_column(tally_scan *s, size_t i, const char **name, enum tally_type *type);
/* 1 and fills *row (borrowed until the next call), 0 at the end, <0 error. */
TALLY_API int tally_scan_next(tally_scan *s, tally_row *row);
TALLY_API void tally_scan_close(tally_scan *s);

/* ---------------------------------------------------------------- distributions */

/*
 * The exact distribution of one key's field over any [from, to), for
 * fields marked in tally_options.distributions: whole windows' value
 * counts plus raw events at the unaligned edges, every value at the
 * field's resolution (a value off it counts at the nearest multiple).
 * TALLY_EINVAL for a field not marked, or a range reaching windows
 * written before it was marked. Free with tally_dist_free.
 *
 * Exact unless a window of the range passed its field's bound on
 * distinct values (tally_options.distributions) and was kept as a
 * sketch: then every value below is the range's true value (at the
 * resolution) within the relative error tally_dist_error gives, counts
 * stay exact, and a value within that error of a threshold or edge may
 * count on either side of it.
 */
typedef struct tally_dist tally_dist;
TALLY_API int tally_query_dist(tally_db *db, const char *table, const char *field, const char *key,
			       int64_t from, int64_t to, tally_dist **out);
TALLY_API void tally_dist_free(tally_dist *d);
/* Values in the distribution, and the resolution they are kept at. */
TALLY_API uint64_t tally_dist_count(const tally_dist *d);
TALLY_API double tally_dist_resolution(const tally_dist *d);
/* 0 when every answer of d is exact; else the relative error bound e
 * (1/128) of its values: a quantile q answers v with |v - x| <= e |x|,
 * x the exact q-quantile. */
TALLY_API double tally_dist_error(const tally_dist *d);
/* The q-quantile, q in [0, 1], by nearest rank: the smallest value v
 * with at least ceil(q * N) values <= v (rank at least 1), q * N taken
 * exactly for the double q. This is numpy's quantile(method=
 * "inverted_cdf") (Hyndman and Fan's definition 1). TALLY_ENOTFOUND when
 * the range holds no values. */
TALLY_API int tally_dist_quantile(const tally_dist *d, double q, double *out);
/* Values strictly below x, and strictly above x (violations of a limit). */
TALLY_API uint64_t tally_dist_count_below(const tally_dist *d, double x);
TALLY_API uint64_t tally_dist_count_above(const tally_dist *d, double x);
/* counts[i]: values in [edges[i], edges[i + 1]), for n_edges ascending
 * edges (n_edges - 1 bins); values outside them are not counted. */
TALLY_API int tally_dist_histogram(const tally_dist *d, const double *edges, size_t n_edges,
				   uint64_t *counts);
/* *dst += src, exactly: the distribution of both sets of values (of
 * several keys, say). TALLY_EINVAL when both hold values at different
 * resolutions; -ENOMEM leaves dst unchanged. src stays the caller's. */
TALLY_API int tally_dist_merge(tally_dist *dst, const tally_dist *src);

/* ---------------------------------------------------------------- catalog */

/*
 * What the database holds: its tables, each table's key tag, columns and
 * keys. Every name these calls give is borrowed until tally_db_close:
 * tables, columns and keys are never dropped while the database is open,
 * so the pointers stay valid across later writes. Each call is a snapshot
 * taken under the catalog's lock; writes may add names meanwhile. Lists are
 * sorted by name (bytewise, as memcmp), so that paging is stable. Each list
 * fills at most cap entries and sets *n_out to how many there are in all;
 * TALLY_ETRUNC when that exceeds cap (the first cap are filled, in order).
 * TALLY_ENOTFOUND names a table that does not exist.
 */

/* The name of a column type: "float", "integer", "unsigned", "boolean",
 * "string", "tag" ("none" for anything else). Static storage. */
TALLY_API const char *tally_type_name(enum tally_type t);

/* Every table, by name; key_tags[i] is table i's key tag, NULL when the
 * table has none (its rows all have the key ""), "camera+lane" when it
 * is keyed by several tags, "*" by all of them. key_tags may be NULL. */
TALLY_API int tally_catalog_tables(tally_db *db, const char **names, const char **key_tags,
				   size_t cap, size_t *n_out);

/* The key tag of one table (NULL when it has none). */
TALLY_API int tally_catalog_key_tag(tally_db *db, const char *table, const char **key_tag);

/* A table's columns by name: its fields with their types and its tags other
 * than the key tag (TALLY_T_TAG). types may be NULL. */
TALLY_API int tally_catalog_fields(tally_db *db, const char *table, const char **names,
				   enum tally_type *types, size_t cap, size_t *n_out);

/* A table's keys that start with prefix (NULL or "": every key) and sort
 * after after (NULL: from the first), in order: the cap smallest of them.
 * *n_out counts every match past after, so the next page is the call with
 * after = the last key given. Costs one pass over the table's key set
 * (O(keys x log cap)) under its lock, which only writes of new keys wait
 * for. */
TALLY_API int tally_catalog_keys(tally_db *db, const char *table, const char *prefix,
				 const char *after, const char **keys, size_t cap, size_t *n_out);

/* ---------------------------------------------------------------- retention */

/* Replaces the retention rules (tally_options.retention's syntax; NULL or
 * "": keep everything) on a running database. TALLY_EINVAL naming the
 * rule and item at fault leaves the rules in force. Data goes at the
 * next pass (the background runs one within a minute of a change and
 * every minute after; tally_db_retain runs one now). */
TALLY_API int tally_db_set_retention(tally_db *db, const char *spec);

/* Runs a retention pass now: per shard in one manifest change, parts of
 * partitions past every class's retention leave (their files, and their
 * objects when tiered, are deleted after it), and parts past their raw
 * retention keep only their rollups. */
TALLY_API int tally_db_retain(tally_db *db);

/* Queries never answer from a range some of whose data retention may
 * have dropped: a scan, series or aggregate reaching before the earliest
 * retained instant of what it reads fails with TALLY_EEXPIRED naming the
 * table and that instant (an aggregate may start before the raw horizon
 * on a window boundary of a level still kept). A caller that wants the
 * retained remainder asks for that instant here and queries from it:
 * *from gets the earliest instant of table whose raw events (level 0) or
 * rollups of the level of that width (ns) are all retained, INT64_MIN
 * when that class never expires. */
TALLY_API int tally_db_retained_from(tally_db *db, const char *table, int64_t level, int64_t *from);

/* ---------------------------------------------------------------- corrections */

/* Drops every event of table written before the call: a forced flush
 * moves them into parts, then each shard's parts of the table leave in
 * one manifest change (their files are deleted after it, the objects of
 * tiered ones at the next tiering pass). Events written while it runs may
 * stay. The table's name, column types and keys stay known: writing it
 * again starts it empty, with the same types. TALLY_ENOTFOUND when there
 * is no such table. docs/operations.md, "Corrections". */
TALLY_API int tally_db_drop_table(tally_db *db, const char *table);

/* What a delete did. Set size to sizeof (tally_delete_result) before the
 * call: the library fills what it knows of the first size bytes, zeroes
 * the rest and sets size to what it filled (fields are only ever added
 * at the end, docs/api.md). */
typedef struct tally_delete_result {
	size_t size;
	uint64_t rows;            /* events deleted */
	uint64_t parts_rewritten; /* parts written again without them */
	uint64_t parts_removed;   /* parts that held nothing else, gone whole */
	uint64_t bytes_read;      /* bytes of the parts rewritten or removed */
	uint64_t bytes_written;   /* bytes of their replacements: the write cost */
	uint64_t bytes_copied;    /* of bytes_written, blocks copied as they were
				   * (not decoded nor encoded again) */
} tally_delete_result;

/*
 * Deletes the events of table with key (NULL: of every key) and time in
 * [from, to) written before the call, and corrects every rollup level
 * with them: when it returns, every query (series, aggregates, all keys,
 * scans, distributions) answers as if they had never been written. A
 * forced flush moves them into parts first; then, per shard in one
 * manifest change, each part holding some of them is written again
 * without them (its other keys' blocks copied byte for byte, and the
 * key's stripes outside the range; its stripes in the range encoded
 * again from what they keep, its rollups computed again from its
 * remaining events) or, when it held nothing else, leaves. The cost is bounded by the bytes of the
 * parts of the partitions [from, to) touches that hold the key; out reports it (out may be NULL).
 * Events written while it runs may stay.
 *
 * TALLY_EEXPIRED, before anything changes, when retention has dropped the
 * raw events of a partition holding some of them (its rollups could not
 * be corrected); TALLY_ENOTFOUND when there is no such table; TALLY_EINVAL
 * for an empty range or key. A failure or a crash leaves each shard's
 * parts all rewritten or all as they were: running the delete again
 * finishes it. docs/operations.md, "Corrections".
 */
TALLY_API int tally_db_delete(tally_db *db, const char *table, const char *key, int64_t from,
			      int64_t to, tally_delete_result *out);

/* ---------------------------------------------------------------- stats */

typedef struct tally_stats {
	/* Bytes of this struct the library filled, set by tally_db_stats: a
	 * field at or past it (one a libtally older than this header does not
	 * know) was not filled and reads 0. TALLY_STAT_FILLED tells. */
	size_t size;
	uint64_t events;         /* accepted since creation (WAL included) */
	uint64_t late_events;    /* of which late (see late_threshold) */
	uint64_t rejected_lines; /* since open */
	uint64_t keys;           /* distinct (table, key) */
	uint64_t tables;
	uint64_t memtable_bytes; /* raw rows held in memory */
	uint64_t rollup_bytes;   /* rollup buckets held in memory */
	uint64_t index_bytes;    /* parts' indexes held in memory */
	uint64_t cache_bytes;    /* decoded rollup blocks cached */
	uint64_t cache_hits;     /* rollup blocks read from that cache, since open */
	uint64_t cache_misses;   /* and decoded from their part */
	uint64_t memory_limit;
	uint64_t prefault_pending; /* memtable memory still to fault in (prefault) */
	uint64_t wal_bytes;        /* bytes of WAL on disk */
	uint64_t wal_syncs;        /* fsyncs done since open */
	uint64_t shards;
	uint64_t parts;        /* live part files */
	uint64_t part_bytes;   /* their bytes on disk */
	uint64_t part_rows;    /* rows in parts */
	uint64_t flushes;      /* memtables flushed since open */
	uint64_t merges;       /* merges since open */
	uint64_t sealed_parts; /* parts that are sealed segments */
	uint64_t partitions;   /* (shard, table, partition) groups of parts */
	uint64_t max_parts_per_partition;
	uint64_t merge_backlog; /* partitions with MERGE_FANIN or more unsealed parts */
	/* rows written into parts by flushes and merges, per row accepted
	 * into parts: 1.0 means every row was written once */
	double write_amplification;
	/* Tiering (all 0 when it is off). */
	int tier_state;        /* 0 off, 1 healthy, 2 failing (retrying) */
	uint64_t tiered_parts; /* parts whose raw columns are in object storage */
	uint64_t remote_bytes; /* their objects' bytes */
	uint64_t tier_due;     /* sealed parts due for upload, not yet uploaded */
	uint64_t tier_uploads; /* parts uploaded and committed since open */
	uint64_t tier_upload_bytes;
	uint64_t tier_failures;   /* tiering passes that failed since open */
	uint64_t tier_deletes;    /* retired objects deleted since open */
	uint64_t tier_gc_pending; /* objects waiting to be deleted */
	uint64_t cold_reads;      /* range GETs of cold raw blocks since open */
	uint64_t cold_read_bytes;
	uint64_t cold_cache_hits, cold_cache_misses;
	uint64_t cold_cache_bytes; /* cold blocks held in memory */
	uint64_t s3_requests, s3_retries, s3_errors;
	/* Durability (docs/operations.md, "When the disk fails"). */
	uint64_t wal_write_errors; /* batches refused since open: their WAL write failed */
	uint64_t failed_shards;    /* shards failed for good (a failed fsync); reopen */
	/* Per-key structures that outlive memtables (each table's key set,
	 * each shard's key states), bytes; under memory_limit with memtables,
	 * rollups and query_bytes. */
	uint64_t key_bytes;
	/* All-keys answers (tally_query_keys) being built or held, and the
	 * windows of open raw scans, bytes. */
	uint64_t query_bytes;
	/* Labelled batches: sources remembered, the bytes they hold, batches
	 * answered as duplicates and refused as too old since open, and
	 * sources forgotten by label_expiry since open. */
	uint64_t label_sources;
	uint64_t label_bytes;
	uint64_t label_duplicates;
	uint64_t label_too_old;
	uint64_t label_expired;
	/* Rows raw scans decoded from parts and memtables since open: a scan
	 * decodes a window (a stripe, a chunk) only when the reader reaches
	 * it, so one that stops early (LIMIT) reads little. The windows held
	 * meanwhile count in query_bytes. */
	uint64_t scan_rows;
	/* Memory the decoded-rollup cache has mapped (its ring's blocks and
	 * those made ready ahead), bytes: cache_bytes is what it holds live,
	 * this what it costs; at most its budget rounded down to 2 MiB blocks
	 * plus 8 MiB. */
	uint64_t cache_mapped_bytes;

	/* Retention since open: passes run, parts dropped whole, parts cut to
	 * their rollups (raw expired), local part bytes freed, raw events no
	 * longer held, and the wall clock (ns) of the last pass and of the
	 * last pass that dropped something (0: none). */
	uint64_t retention_passes;
	uint64_t retention_parts_dropped;
	uint64_t retention_parts_raw_gone;
	uint64_t retention_bytes_freed;
	uint64_t retention_rows_dropped;
	int64_t retention_last_pass;
	int64_t retention_last_drop;

	/* Deletes of events since open (tally_db_delete): calls that deleted
	 * something, events deleted, and bytes of part files written again
	 * without them (the deletes' write cost). */
	uint64_t deletes;
	uint64_t delete_rows;
	uint64_t delete_bytes_written;
	/* Lines accepted since open that carried tags outside their table's
	 * key: they were merged into the key's series (rollups do not tell
	 * them apart). Each such table is also logged once (a warning). */
	uint64_t merged_lines;
} tally_stats;

/* Fills the first size bytes at out with the database's figures, 0 where
 * the library has none, and out->size with the bytes it knows. Called
 * through tally_db_stats. */
TALLY_API int tally_db_stats_sized(tally_db *db, tally_stats *out, size_t size);

/* Fills *out; every field of this header's tally_stats that the library
 * knows (TALLY_STAT_FILLED). */
static inline int tally_db_stats(tally_db *db, tally_stats *out)
{
	return tally_db_stats_sized(db, out, sizeof *out);
}

/* 1 when field of *st was filled by the library (see tally_stats.size). */
#define TALLY_STAT_FILLED(st, field) \
	(offsetof(tally_stats, field) + sizeof((st)->field) <= (st)->size)

/* ---------------------------------------------------------------- backup */

/* What a backup or restore did. */
typedef struct tally_backup_result {
	uint64_t seq;            /* the backup's number in its destination */
	uint64_t files;          /* files the backup holds (manifest, parts, WAL) */
	uint64_t bytes;          /* their bytes */
	uint64_t files_uploaded; /* of which new in this destination (incremental) */
	uint64_t bytes_uploaded;
	uint64_t wal_records; /* WAL records not yet in parts at the sync point */
} tally_backup_result;

/* Where and how to reach an S3-compatible store for backups; set size to
 * sizeof (tally_s3) (fields are only ever added at the end). NULL
 * strings: AWS S3 of us-east-1, unsigned requests. */
typedef struct tally_s3 {
	size_t size;
	const char *endpoint; /* "http://127.0.0.1:9000" */
	const char *region;
	const char *access_key, *secret_key, *session_token;
} tally_s3;

/*
 * Backs up a running database to dest: a directory (created if missing) or
 * "s3://bucket/prefix", reached with s3, or when s3 is NULL with the
 * store's tiering endpoint and credentials (tally_options tier_*).
 * Consistent at one sync point: every write that returned before the call
 * is in the backup, and the backup is what the database held at one
 * instant during the call. Writes, queries, flushes and merges go on
 * meanwhile. Incremental: a file already in dest is not copied again. The
 * backup exists once its catalog is written, last; a failure or a crash
 * before leaves dest's earlier backups intact. While it runs it holds a
 * lease in dest (lease-backup-...), and it waits while a prune of dest
 * (`tally backup-prune`) holds one: TALLY_ELOCKED after 30 minutes.
 * out may be NULL. docs/operations.md, "Backup and restore".
 */
TALLY_API int tally_db_backup(tally_db *db, const char *dest, const tally_s3 *s3,
			      tally_backup_result *out);

#ifdef __cplusplus
}
#endif
#endif /* TALLY_H */
