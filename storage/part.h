/*
 * part.h — immutable columnar part files (internal).
 *
 * A part holds the rows of one table in one partition (an event-time range,
 * a day by default), sorted by (key, ts), plus the rollup buckets of those
 * rows for every numeric column and level. Rows of a key are cut into
 * stripes of at most PART_STRIPE_ROWS; a stripe stores one codec block per
 * column (timestamps first). Rollups are stored per (key, column, level).
 * Every block is followed by its xxh3; the index (what is where, per key)
 * is zstd-compressed behind the blocks and checksummed by the footer. So a
 * raw read of one key decodes only that key's stripes overlapping the
 * range, and a rollup read decodes one small block.
 *
 * Writing: part_writer_open, then keys in ascending byte order (each:
 * part_writer_key, its stripes in time order, its rollups), then
 * part_writer_finish, which writes "NAME.tmp", fsyncs, renames to NAME and
 * fsyncs the directory. Reading: part_open loads and checks the index;
 * blocks are read and checked on demand. Byte layout: docs/formats.md.
 *
 * Threading: a part_writer belongs to one thread. A part (reader) is
 * immutable once open: any number of threads may read it at once, each
 * with its own part_scratch.
 */
#ifndef TALLY_PART_H
#define TALLY_PART_H

#include <stddef.h>
#include <stdint.h>

#include "codec.h"
#include "tally_base.h"

#define PART_STRIPE_ROWS 1024u      /* rows of one key per stripe, as written */
#define PART_STRIPE_MAX  4096u      /* the most a reader accepts (v1 wrote 4096) */
#define PART_COLS_MAX    4096u      /* columns per part */
#define PART_INDEX_MAX   (1u << 30) /* decompressed index bytes */

typedef struct part_col {
	const char *name; /* NUL-terminated, in the part's arena */
	uint32_t len;
	uint8_t type; /* enum tally_type */
} part_col;

typedef struct part_ref {
	uint64_t off; /* block start in the file */
	uint32_t len; /* block bytes, the trailing xxh3 not included; 0: absent */
	uint32_t no;  /* block number in the file, for messages */
} part_ref;

typedef struct part_stripe {
	uint32_t n_rows;
	int64_t tmin, tmax;
	uint32_t first_ref; /* refs[first_ref] = ts, then one per column */
} part_stripe;

typedef struct part_rollup {
	part_ref ref;
	uint32_t n_buckets;
} part_rollup;

typedef struct part_key {
	const char *key; /* not NUL-terminated */
	uint32_t len;
	uint64_t n_rows;
	int64_t tmin, tmax;
	uint32_t first_stripe, n_stripes;
	/* rollups[first_rollup + c * n_levels + l] for numeric column c (in
	 * the order of numeric columns) and level l */
	uint32_t first_rollup;
} part_key;

/* What a part holds, as the index says. */
typedef struct part_info {
	const char *table, *key_tag; /* key_tag NULL: none */
	int64_t partition_start, partition_width;
	unsigned n_levels;
	int64_t levels[TALLY_LEVELS_MAX];
	int64_t align_offset;
	uint64_t n_rows;
	int64_t tmin, tmax;
	uint32_t n_cols;
	part_col *cols;
	uint32_t n_num;    /* numeric columns (they have rollups) */
	uint32_t *num_col; /* their column indexes */
	int32_t *num_of;   /* column index -> numeric index or -1 */
} part_info;

/* ---------------------------------------------------------------- writer */

typedef struct part_writer part_writer;
struct part;
typedef struct part part;

/* Column values for one stripe: vals[i] are 8-byte slots (double, int64,
 * uint64, bool 0/1) or codec_str for string and tag columns. */
typedef struct part_colvals {
	const void *vals;        /* NULL: the column has no value in the stripe */
	const uint64_t *present; /* NULL: every row has one */
} part_colvals;

/* info's strings and arrays are copied. levels/partition as the engine
 * uses them. */
int part_writer_open(const char *dir, const char *name, const part_info *info, part_writer **out);
int part_writer_key(part_writer *w, const char *key, uint32_t len);
/* n <= PART_STRIPE_MAX rows of the current key, ts ascending; cols has
 * info->n_cols entries. */
int part_writer_stripe(part_writer *w, uint32_t n, const int64_t *ts, const part_colvals *cols);
/* A rollup block is written in two steps: the caller encodes its payload
 * (what an aggregate kind keeps per window, engine/aggkind.c) into the
 * buffer this returns, with the writer's codec context in *cx (NULL: out
 * of memory), then part_writer_rollup writes it as the current key's
 * block for numeric column num (0..n_num) and level: n windows (0: no
 * block) of aggregate kind (1..255). */
codec_buf *part_writer_payload(part_writer *w, codec_ctx **cx);
int part_writer_rollup(part_writer *w, uint32_t num, unsigned level, unsigned kind, uint32_t n);
/*
 * Copying blocks of an open part src into the writer, byte for byte with
 * their xxh3 (each checked on the way, so a damaged block is refused,
 * not carried on): nothing is decoded or encoded again. The writer's
 * columns (names, types, order), levels and alignment must be src's, and
 * src a version 2 part (a version 1 rollup block has no kind header):
 * part_writer_can_copy says whether they are; the copy calls refuse
 * (TALLY_EINVAL) otherwise. A stub's column blocks come through its fetch
 * hook. This is how a correction rewrites a part (engine/delete.c): the
 * keys it does not touch are copied whole, the touched key's stripes
 * outside the deleted range copied, and only the rest encoded again.
 */
int part_writer_can_copy(part_writer *w, const part *src);
/* Key k of src whole: its entry, stripes and rollup blocks. Keys still
 * ascend across part_writer_key and this. */
int part_writer_copy_key(part_writer *w, const part *src, const part_key *k);
/* One stripe of src into the current key, in its time order among the
 * key's stripes. */
int part_writer_copy_stripe(part_writer *w, const part *src, const part_stripe *st);
/* The rollup block of src's key k, numeric column num and level as the
 * current key's (absent stays absent). */
int part_writer_copy_rollup(part_writer *w, const part *src, const part_key *k, uint32_t num,
			    unsigned level);
/* Bytes copied so far (blocks and their checksums): of the file's size,
 * what was not encoded again. */
uint64_t part_writer_copied(const part_writer *w);
/* Index, footer, fsync, rename, directory fsync. *bytes gets the file size. */
int part_writer_finish(part_writer *w, uint64_t *bytes);
/* Removes the temporary file. NULL is a no-op. Also after finish. */
void part_writer_free(part_writer *w);
/* Column encoding statistics so far (for inspect; blocks encoded, not
 * those copied); n_cols entries. */
const codec_stats *part_writer_col_stats(const part_writer *w);

/* ---------------------------------------------------------------- reader */

struct part;

/*
 * Where the column blocks of a stub part come from (tiering): fills dst
 * with len bytes of the whole part file (the object) from offset off — a
 * block and its 8-byte xxh3. Called concurrently by readers; 0 or an error
 * code with the message set.
 */
typedef int part_fetch_fn(void *ctx, const struct part *p, uint64_t off, size_t len, void *dst);

/* Optional: fetches the blocks refs[0..n) (ascending, adjacent in the
 * file) in one request, for the part_read_col calls that follow. */
typedef int part_prefetch_fn(void *ctx, const struct part *p, const struct part_ref *const *refs,
			     uint32_t n);

/* Header flags (the header's u64 at offset 16, reserved 0 in plain parts). */
#define PART_F_STUB                                             \
	1u /* a stub: header, rollup blocks, index, footer; the \
	      column blocks live in the whole part, elsewhere */

typedef struct part {
	char *path;
	int fd;
	uint64_t file_bytes;
	/* The whole file mapped read-only, or NULL (then blocks are pread).
	 * Parts never change after they are written, and every block the
	 * index names was checked at open to lie inside the file, so a read
	 * from the map costs no system call and no copy. But every page read
	 * through the map counts in the process's RSS (RssFile) for as long
	 * as the kernel keeps it, so RSS grows with the data a workload
	 * reads; PART_READS_PREAD leaves it NULL: the page cache still holds
	 * the file, outside the process, and a block costs a pread into the
	 * reader's scratch, which is reused and as big as the largest block
	 * it read. */
	const uint8_t *map;
	uint32_t flags;       /* PART_F_* */
	unsigned version;     /* format version of the file (docs/formats.md) */
	uint64_t whole_bytes; /* the whole part's size (a stub's object) */
	part_fetch_fn *fetch; /* stubs: set before the part is shared */
	part_prefetch_fn *prefetch;
	void *fetch_ctx;
	part_info info;
	uint32_t n_keys;
	part_key *keys; /* ascending by key bytes */
	part_stripe *stripes;
	uint32_t n_stripes;
	part_ref *refs;
	uint32_t n_refs;
	part_rollup *rollups;
	uint32_t n_rollups;
	char *arena;          /* names and keys */
	uint64_t index_bytes; /* where the blocks end (the index's offset) */
	uint64_t mem_bytes;   /* memory this open part holds */
} part;

/* Per-thread buffers for decoding. Zero-initialise; part_scratch_free. */
typedef struct part_scratch {
	codec_ctx *cx;
	codec_buf raw;   /* a block as read */
	codec_buf arena; /* decoded strings */
	codec_buf arena2;
	codec_buf rows;    /* a reader's own decoded stripe (engine/query.c: the exact
			    * aggregate's edges), kept with the scratch across queries */
	codec_buf windows; /* engine/query.c: a series' window accumulators */
} part_scratch;
void part_scratch_free(part_scratch *s);

/* How an open part's blocks are read (tally_options.part_reads). */
enum part_reads {
	PART_READS_MMAP = 1,  /* the file mapped whole; a block is read in place */
	PART_READS_PREAD = 2, /* each block pread into the reader's scratch (s->raw) */
};

/* Opens and checks the footer and index. TALLY_ECORRUPT / TALLY_EVERSION
 * with a message naming the file. A stub opens the same way; its column
 * blocks are read through p->fetch (TALLY_EREMOTE while unset). Blocks
 * are read as `reads` says (enum part_reads); part_open maps. */
int part_open_reads(const char *path, int reads, part **out);
int part_open(const char *path, part **out);

/* Writes the stub of whole part p as dir/name: p's header (flagged a
 * stub), its rollup blocks and its index, byte for byte as in p, so the
 * index stays valid and the column blocks keep the offsets they have in
 * the whole part. Temp file, fsync, rename, directory fsync. */
int part_write_stub(const part *p, const char *dir, const char *name, uint64_t *bytes);
void part_close(part *p);

/* The key's entry, or NULL. */
const part_key *part_find_key(const part *p, const char *key, uint32_t len);

/* Decodes one block of a stripe: col -1 is the timestamps (vals: int64),
 * else column col (vals: 8-byte slots or codec_str into s->arena; present:
 * bitmap of (n+63)/64 words). An absent column gives *absent = 1.
 * TALLY_ECORRUPT names file and block. */
int part_read_col(const part *p, const part_stripe *st, int col, part_scratch *s, void *vals,
		  uint64_t *present, int *absent);
/* Only the first rows of a numeric or timestamp block (codec_decode_head):
 * rows [0, want) exact, and for col -1 decoding may stop past a time >=
 * stop; *got = exact leading rows. */
int part_read_col_head(const part *p, const part_stripe *st, int col, part_scratch *s, void *vals,
		       uint64_t *present, uint32_t want, int64_t stop, uint32_t *got, int *absent);

/* A stub's stripe about to be read whole (a raw scan): its column blocks
 * in one ranged read through p->prefetch. Best effort; no-op for a local
 * part. */
void part_prefetch_stripe(const part *p, const part_stripe *st);

/* A rollup block as read: its aggregate kind (version 1 parts: always
 * PART_KIND_V1), window count (0: no block) and payload, which stays valid
 * until the next read with the same scratch; block: its number, for
 * messages. */
#define PART_KIND_V1 1u
typedef struct part_rblock {
	unsigned kind;
	uint32_t n;
	const uint8_t *payload;
	size_t len;
	uint32_t block;
} part_rblock;

/* Reads and checks the rollup block of key k, numeric column num, level. */
int part_read_rollup(const part *p, const part_key *k, uint32_t num, unsigned level,
		     part_scratch *s, part_rblock *out);

#endif
