/*
 * manifest.h — the list of live parts and what the WAL no longer needs.
 *
 * One small file, DIR/MANIFEST, replaced atomically (write MANIFEST.tmp,
 * fsync, rename, fsync the directory), so a crash leaves either the old or
 * the new list, never a mix. It names every live part and, per shard, the
 * WAL sequence number up to which events are in parts (flushed_seq):
 * recovery opens the named parts and replays only WAL records above that,
 * which is what makes recovery exactly once. A part file the manifest does
 * not name is garbage from an interrupted flush or merge and is deleted at
 * open. Byte layout: docs/formats.md, "Manifest".
 */
#ifndef TALLY_MANIFEST_H
#define TALLY_MANIFEST_H

#include <stddef.h>
#include <stdint.h>

#define MANIFEST_SHARDS_MAX 256
#define MANIFEST_PARTS_MAX  (1u << 24)

enum manifest_part_flags {
	MPART_SEALED = 1, /* the one merged segment of a sealed partition */
};

/* Where a part's raw column blocks are (tiering, engine/tier.c). */
enum manifest_tier {
	MTIER_LOCAL = 0,  /* the whole part file is in parts/<id>.part */
	MTIER_REMOTE = 1, /* the whole part file is the object `object`, uploaded and
			     verified; locally parts/<id>.stub keeps its rollups and index */
};

typedef struct manifest_part {
	uint64_t id;    /* file parts/<id as %016llx>.part */
	uint32_t shard; /* the shard whose flushes and merges own it */
	char *table;
	int64_t partition_start;
	uint64_t rows;
	uint64_t bytes;
	uint32_t level; /* 0: written by a flush; n: by a merge of level < n parts */
	uint32_t flags;
	int64_t tmin, tmax;
	uint64_t rows_written; /* rows written to produce it, merges included */
	/* tiering (manifest version 2; version 1 parts are all local) */
	uint32_t tier;       /* enum manifest_tier */
	char *object;        /* MTIER_REMOTE: the object key; else NULL */
	uint64_t object_sum; /* xxh3 of the object (the whole part file) */
	int64_t tiered_at;   /* when it was uploaded, ns since the epoch */
} manifest_part;

typedef struct manifest {
	uint64_t generation; /* grows by one per save */
	uint64_t next_part_id;
	uint32_t n_shards;
	uint64_t flushed_seq[MANIFEST_SHARDS_MAX];
	uint32_t n_parts, cap_parts;
	manifest_part *parts;
	/* write amplification accounting, since creation */
	uint64_t rows_accepted; /* rows that entered parts by a flush */
	uint64_t rows_written;  /* rows written by flushes and merges */
	/* Objects to delete from object storage (version 2): objects of parts
	 * a merge replaced, and uploads under way (so a crash mid-upload leaves
	 * nothing behind). Deleted by the tiering job, then dropped. */
	uint32_t n_gc, cap_gc;
	char **gc;
} manifest;

/* Loads DIR/MANIFEST into *m (zeroed first). A missing file gives an empty
 * manifest and 0. TALLY_ECORRUPT / TALLY_EVERSION name the file. */
int manifest_load(const char *dir, manifest *m);
/* Writes m as DIR/MANIFEST atomically, generation incremented first. */
int manifest_save(const char *dir, manifest *m);
/* Appends a copy of p (the table name and object key are copied). */
int manifest_add(manifest *m, const manifest_part *p);
/* Removes the part with this id; 0 or TALLY_ENOTFOUND. */
int manifest_remove(manifest *m, uint64_t id);
const manifest_part *manifest_find(const manifest *m, uint64_t id);
/* A deep copy of src into dst. */
int manifest_copy(manifest *dst, const manifest *src);
void manifest_free(manifest *m);

/* Adds a copy of key to the objects to delete (once); removes it. */
int manifest_gc_add(manifest *m, const char *key);
void manifest_gc_remove(manifest *m, const char *key);

/* "parts/00000000000000a1.part" for id 0xa1. */
void manifest_part_name(uint64_t id, char *buf, size_t cap);

#endif
