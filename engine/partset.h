/*
 * partset.h — a shard's live parts, and the one way they change (internal).
 *
 * Which parts are live is said twice: by the manifest on disk (what
 * recovery opens) and by each shard's list (what queries read). Every
 * change — a flush adding parts, a merge replacing its inputs, sealing a
 * partition by its flag, tiering swapping a part for its stub, and the
 * manifest-only changes of the tiering job — is one partset_commit, which
 * keeps the two in step in the order recovery relies on (docs/formats.md,
 * "Recovery and the order of writes"):
 *   1. the new parts' files are durable (the caller wrote and renamed them);
 *   2. the new manifest is saved atomically (storage/manifest.c);
 *   3. under the shard's write lock, in one step, the parts leave and join
 *      the shard's list (and the caller's publish step runs, e.g. a flush's
 *      memtable leaves);
 *   4. only then are the files of the parts that left deleted.
 * A crash before 2 leaves the old manifest, which names none of the new
 * files (orphans, deleted at open); after 2, the new one, whose files all
 * exist. Objects of tiered parts that leave join the manifest's list of
 * objects to delete in the same save, so an object goes only after no
 * manifest names it.
 *
 * Locking: s->parts changes only here, under db->man_mu and the shard's
 * lock held for writing. So either one is enough to read it: man_mu for
 * deciding what to change (flush, merge, tiering), the shard lock for
 * reading the parts (queries, stats). Parts are added without man_mu only
 * at open, before any other thread runs (shard_add_part).
 */
#ifndef TALLY_PARTSET_H
#define TALLY_PARTSET_H

#include "catalog.h"
#include "manifest.h"
#include "part.h"
#include "shard.h"

struct tally_db;

/* A live part as a shard holds it. Immutable but for level and flags
 * (changed under the shard lock); leaves its shard only under the shard
 * lock held for writing, so a reader holding it for reading may use it.
 * A scan pins the parts it reads (pins, taken under the shard lock), so a
 * part that leaves meanwhile (a merge, tiering) stays open, its file
 * unlinked but readable, until the last pin goes. */
typedef struct shard_part {
	part *p;
	uint64_t id;
	table_def *table;
	int64_t pstart, pend;  /* the partition [pstart, pend) */
	uint32_t level, flags; /* its manifest record's */
	col_def **defs;        /* per part column: the table's column */
	struct tally_db *db;
	/* decoded rollup blocks, by rollup index (engine/rcache.c); under the
	 * cache's lock */
	part_bucket **rc;
	/* tiered (engine/tier.c): the object holding the whole part, and its
	 * xxh3; p is then the local stub. NULL: the part is local. */
	char *object;
	uint64_t object_sum;
	/* holders besides the one that loaded it: shard_part_free drops one
	 * and frees at the last */
	_Atomic uint32_t pins;
} shard_part;

/* The part's column index holding def, or -1. */
int shard_part_col(const shard_part *sp, const col_def *def);

/* Opens parts/<id>.part (parts/<id>.stub when the committed manifest says
 * the part is tiered) and resolves its columns through the catalog. */
int shard_part_load(struct tally_db *db, uint64_t id, shard_part **out);
/* The same for a part as the record rec describes it (NULL: a new local
 * part), before any manifest names it so: tiering loads the stub it is
 * about to commit. */
int shard_part_load_as(struct tally_db *db, uint64_t id, const manifest_part *rec,
		       shard_part **out);
/* Drops one holder of sp (its shard's, or a scan's pin); the last frees
 * it. */
void shard_part_free(shard_part *sp);
/* Adds a part the manifest names to the shard's list at open, before any
 * other thread runs. */
int shard_add_part(shard *s, shard_part *sp);

/* One change of the live parts and the manifest. */
typedef struct partset_change {
	/* names the crash points "<op>:before-manifest" and
	 * "<op>:after-manifest" (TALLY_CRASH_AT, tests) */
	const char *op;
	/* the shard whose parts change; NULL when only the manifest does */
	shard *s;
	/* live parts of s that leave; their files are deleted after the commit
	 * and their objects (tiered parts) join the objects to delete */
	shard_part *const *gone;
	uint32_t n_gone;
	/* parts that join s, loaded from durable files, and their manifest
	 * records (recs[i].id == added[i]->id). A part with the id of a gone
	 * one replaces it in place, in the list and the manifest (a tiered
	 * part's stub replacing the whole part). An object a record names
	 * leaves the objects to delete (it was there as an upload's intent). */
	shard_part *const *added;
	const manifest_part *recs;
	uint32_t n_added;
	/* a live part of s that becomes its partition's sealed segment by its
	 * flag alone (no rewrite), or NULL */
	shard_part *seal;
	/* further changes to the new manifest before it is saved (flushed_seq,
	 * counters, objects to delete), or NULL */
	int (*edit)(manifest *nm, void *arg);
	/* runs under the shard's write lock in the same step as the swap (a
	 * flush's memtable leaves there), or NULL; must not fail */
	void (*publish)(shard *s, void *arg);
	void *arg;
} partset_change;

/*
 * Applies c: checks it, builds the new manifest from db->man, saves it,
 * swaps the shard's parts, then deletes the files of the parts that left
 * and frees them. Caller holds db->man_mu and not the shard lock.
 *
 * A change whose gone or seal parts are not live in c->s, or whose added
 * ids the manifest already names (but for a gone part's), is refused
 * (TALLY_EINVAL) before anything is written. The added parts (those not
 * live) are the commit's from the call on: live after a success, freed
 * after a failure. Their files are deleted on a failure before the save;
 * after a failed save they stay, since the rename may have happened (a
 * failed directory fsync), and open deletes whichever the surviving
 * manifest does not name. On any failure db->man and the shard's list are
 * unchanged.
 */
int partset_commit(struct tally_db *db, const partset_change *c);

/* A fresh part id for a part about to be written. Caller holds man_mu.
 * Ids are never handed out twice in one process; after a crash the
 * saved counter's ids are reused, their old files deleted at open. */
uint64_t partset_new_id(struct tally_db *db);

/* The live part of s with this id, or NULL. Caller holds man_mu or the
 * shard lock. */
shard_part *partset_find(const shard *s, uint64_t id);

/* Frees every part of s and its list (tally_db_close). */
void partset_close(shard *s);

#endif
