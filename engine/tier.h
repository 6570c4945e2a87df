/*
 * tier.h — tiering sealed partitions to S3-compatible object storage, and
 * reading them back (internal).
 *
 * A tiered part is an object (the whole part file, uploaded as is) plus a
 * local stub (parts/<id>.stub: header, rollup blocks, index, footer; see
 * storage/part.h). Rollup reads use the stub and never leave the machine;
 * raw reads fetch exactly the column blocks they decode with ranged GETs,
 * through a bounded in-memory cache. The tiering job runs on its own
 * thread, so a slow or unreachable object store never holds up flushes,
 * merges or queries of local data. Operations guide: docs/operations.md.
 *
 * Locking: the job takes db->man_mu only to pick what is due and to
 * commit (never across a network call), and a shard's lock for writing
 * only to swap a part for its stub. The cache has its own mutex.
 */
#ifndef TALLY_TIER_H
#define TALLY_TIER_H

#include "flush.h"
#include "manifest.h"
#include "part.h"

struct tally_db;
typedef struct tier tier;

/* Reads the tiering settings of db->opt and the environment; db->tier
 * stays NULL when tiering is off. Fails on a bad setting. */
int tier_open(struct tally_db *db);
/* Starts the tiering thread (unless no_background). */
int tier_start(struct tally_db *db);
/* Stops the thread and frees everything. NULL db->tier: no-op. */
void tier_close(struct tally_db *db);
/* Wakes the tiering thread (after a merge sealed something). */
void tier_kick(struct tally_db *db);

/* For a part the manifest says is remote: remembers its object and sets
 * the stub's fetch hook. Called by shard_part_load. */
int tier_attach(struct tally_db *db, shard_part *sp, const manifest_part *mp);
/* The local file of a part: parts/<id>.stub for a remote part, else
 * parts/<id>.part. */
void tier_local_path(const struct tally_db *db, uint64_t id, int remote, char *buf, size_t cap);

/* 1 when merges may read the remote parts among in[0..n): tiering is
 * configured and the object store is not known to be failing. */
int tier_can_merge(struct tally_db *db, shard_part *const *in, uint32_t n);
/* Merges read a remote part's column blocks from a whole local copy:
 * downloads the object once into parts/<id>.fetch, checks it against the
 * manifest's checksum and opens it. tier_release closes and deletes it. */
int tier_fetch_whole(struct tally_db *db, const shard_part *sp, part **whole);
void tier_release(struct tally_db *db, uint64_t id, part *whole);

/* Copies the object key (a tiered part's) into fd from offset 0, for a
 * backup; *bytes and *sum (xxh3) of what was written. */
int tier_get_object(struct tally_db *db, const char *key, int fd, uint64_t *bytes, uint64_t *sum);

/* The tiering S3 client, or NULL when tiering is off. */
struct s3_client *tier_client(struct tally_db *db);

/* Fills the tiering fields of *out. */
void tier_stats(struct tally_db *db, tally_stats *out);

#endif
