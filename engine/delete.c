/*
 * delete.c — corrections: dropping a table, deleting a key's events.
 *
 * The one idea: make the table's events all live in parts first, then let
 * the parts go in one manifest change per shard. A forced flush moves
 * every event written before the call from the memtables (and so the WAL,
 * which the flush trims) into parts; the drop is then a partset_commit
 * per shard that removes the table's parts, after which their files go
 * and the objects of tiered ones join the objects to delete. Nothing is
 * rewritten, and a crash leaves each shard's parts of the table either
 * all there or all gone.
 *
 * Events written while the drop runs (after its flush froze the
 * memtables) are ordered after it and stay. The catalog keeps the table,
 * its column types and its keys: a table written again takes the same
 * types, and stats count its keys (docs/operations.md, "Corrections").
 *
 * Deleting the events of one key (or of every key) in [from, to) works
 * the same way, with rewrites instead of removals: after the forced
 * flush every event to delete lies in a part, and each part holding some
 * is written again without them (merge_rewrite, engine/merge.c: the
 * key's rollup blocks computed again from its remaining rows, its
 * stripes that lose rows encoded again, every other block copied byte
 * for byte), all of a shard's in one partset_commit. Rewriting rather
 * than recording tombstones (or a "deleted key" mask over an old part)
 * keeps every reader as it is (a tombstone would have to be subtracted
 * from rollups, and a min or a max cannot be; a mask would still need
 * the key's rollups written again somewhere), at the cost of writing the
 * affected parts' bytes again, which the answer and stats report; what
 * is encoded again is bounded by the key's stripes in the range and its
 * rollup blocks (bytes_copied tells the rest).
 * A part whose raw events retention dropped cannot be corrected: the
 * delete is refused before anything changes.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "db.h"
#include "err.h"
#include "flush.h"
#include "log.h"
#include "mem.h"
#include "partset.h"
#include "retention.h"
#include "tier.h"

/* Moves every event written before the call into parts. Twice: a shard
 * whose frozen memtables were full froze nothing the first time, and has
 * room once they are flushed. */
static int flush_everything(tally_db *db)
{
	int rc = flush_run(db, 1);
	return rc ? rc : flush_run(db, 1);
}

/* The parts of table t in shard s leave, in one commit. Caller holds
 * man_mu. */
static int drop_shard(tally_db *db, shard *s, const table_def *t, uint64_t *parts, uint64_t *bytes)
{
	uint32_t n = 0;
	shard_part **gone = mem_calloc(s->n_parts ? s->n_parts : 1, sizeof *gone);
	if (!gone)
		return err_set(-ENOMEM, "out of memory");
	uint64_t b = 0;
	for (uint32_t i = 0; i < s->n_parts; i++)
		if (s->parts[i]->table == t) {
			gone[n++] = s->parts[i];
			b += s->parts[i]->p->file_bytes;
		}
	int rc = 0;
	if (n &&
	    !(rc = partset_commit(
		      db, &(partset_change){.op = "drop", .s = s, .gone = gone, .n_gone = n}))) {
		*parts += n;
		*bytes += b;
	}
	mem_free(gone);
	return rc;
}

TALLY_API int tally_db_drop_table(tally_db *db, const char *table)
{
	err_clear();
	if (!table || !*table)
		return err_set(TALLY_EINVAL, "drop: a table name is required");
	if (db->read_only)
		return err_set(TALLY_EFAILED, "%s was opened read-only: nothing is dropped",
			       db->dir);
	table_def *t = catalog_find_table(&db->cat, table, (uint32_t)strlen(table));
	if (!t)
		return err_set(TALLY_ENOTFOUND, "no table '%s'", table);
	int rc = flush_everything(db);
	if (rc)
		return err_prefix(rc, "drop of table '%s': flushing its events first", table);
	uint64_t parts = 0, bytes = 0;
	pthread_mutex_lock(&db->man_mu);
	for (unsigned i = 0; i < db->n_shards && !rc; i++)
		rc = drop_shard(db, db->shards[i], t, &parts, &bytes);
	pthread_mutex_unlock(&db->man_mu);
	if (parts)
		tier_kick(db); /* objects of tiered parts wait in gc */
	log_emit(&db->log, rc ? TALLY_LOG_ERROR : TALLY_LOG_INFO,
		 "drop of table '%s': %llu parts, %llu bytes gone%s", table,
		 (unsigned long long)parts, (unsigned long long)bytes,
		 rc ? " before a failure (the rest stays; drop it again)" : "");
	return rc;
}

/* ---------------------------------------------------------------- delete */

typedef struct del_req {
	const table_def *t;
	merge_cut cut; /* key, range and the rows cut so far */
	tally_delete_result r;
} del_req;

/* 1 when sp may hold events d deletes (its index says so; a rewrite
 * finds out for sure). */
static int del_touches(const del_req *d, const shard_part *sp)
{
	const merge_cut *c = &d->cut;
	if (sp->table != d->t || sp->pstart >= c->to || sp->pend <= c->from)
		return 0;
	if (!c->key)
		return sp->p->info.tmin < c->to && sp->p->info.tmax >= c->from;
	const part_key *pk = part_find_key(sp->p, c->key, c->klen);
	if (!pk || pk->tmin >= c->to || pk->tmax < c->from)
		return 0;
	for (uint32_t k = 0; k < pk->n_stripes; k++) {
		const part_stripe *st = &sp->p->stripes[pk->first_stripe + k];
		if (st->tmin < c->to && st->tmax >= c->from)
			return 1;
	}
	return 0;
}

/* 1 when every event of sp is deleted: it leaves unread. */
static int del_covers(const del_req *d, const shard_part *sp)
{
	const merge_cut *c = &d->cut;
	const part_info *pi = &sp->p->info;
	if (pi->tmin < c->from || pi->tmax >= c->to)
		return 0;
	return !c->key || (sp->p->n_keys == 1 && sp->p->keys[0].len == c->klen &&
			   !memcmp(sp->p->keys[0].key, c->key, c->klen));
}

static const char *del_key_name(const del_req *d)
{
	return d->cut.key ? d->cut.key : "*";
}

/* Refuses, before anything changes, a delete that needs raw events
 * retention dropped. Caller holds man_mu. */
static int del_check_expired(tally_db *db, const del_req *d)
{
	for (unsigned i = 0; i < db->n_shards; i++) {
		const shard *s = db->shards[i];
		for (uint32_t j = 0; j < s->n_parts; j++) {
			const shard_part *sp = s->parts[j];
			if (!del_touches(d, sp) || del_covers(d, sp) || !retention_raw_gone(sp))
				continue;
			return err_set(TALLY_EEXPIRED,
				       "delete from table '%s' key '%s' [%lld, %lld): the raw "
				       "events of partition %lld (shard %u) have expired "
				       "(retention), so its rollups cannot be corrected; "
				       "nothing deleted",
				       d->t->name, del_key_name(d), (long long)d->cut.from,
				       (long long)d->cut.to, (long long)sp->pstart, s->id);
		}
	}
	return 0;
}

/* Deletes the cut's events from shard s in one commit. Caller holds
 * man_mu. */
static int del_shard(tally_db *db, shard *s, del_req *d)
{
	uint32_t n = 0, n_new = 0;
	shard_part **gone = mem_calloc(s->n_parts ? s->n_parts : 1, sizeof *gone);
	shard_part **added = mem_calloc(s->n_parts ? s->n_parts : 1, sizeof *added);
	manifest_part *recs = mem_calloc(s->n_parts ? s->n_parts : 1, sizeof *recs);
	uint64_t rows = 0, read = 0, written = 0, removed = 0, copied = 0;
	int rc = 0;
	if (!gone || !added || !recs) {
		rc = err_set(-ENOMEM, "out of memory");
		goto done;
	}
	for (uint32_t j = 0; j < s->n_parts && !rc; j++) {
		shard_part *sp = s->parts[j];
		if (!del_touches(d, sp))
			continue;
		if (del_covers(d, sp)) {
			gone[n++] = sp;
			rows += sp->p->info.n_rows;
			read += sp->p->file_bytes;
			removed++;
			continue;
		}
		uint64_t before = d->cut.rows, copied_before = d->cut.copied, bytes;
		shard_part *out;
		rc = merge_rewrite(db, s, sp, &d->cut, &out, &recs[n_new], &bytes);
		if (rc || d->cut.rows == before)
			continue; /* nothing of it deleted after all */
		gone[n++] = sp;
		rows += d->cut.rows - before;
		read += sp->p->file_bytes;
		if (out) {
			added[n_new++] = out;
			written += bytes;
			copied += d->cut.copied - copied_before;
		} else {
			removed++;
		}
	}
	if (rc) {
		/* not committed: the new files go */
		for (uint32_t j = 0; j < n_new; j++) {
			char name[64], path[PATH_MAX + 64];
			manifest_part_name(added[j]->id, name, sizeof name);
			snprintf(path, sizeof path, "%s/%s", db->dir, name);
			shard_part_free(added[j]);
			unlink(path);
		}
		goto done;
	}
	if (n && (rc = partset_commit(db, &(partset_change){.op = "delete",
							    .s = s,
							    .gone = gone,
							    .n_gone = n,
							    .added = added,
							    .recs = recs,
							    .n_added = n_new})))
		goto done;
	d->r.rows += rows;
	d->r.parts_rewritten += n - removed;
	d->r.parts_removed += removed;
	d->r.bytes_read += read;
	d->r.bytes_written += written;
	d->r.bytes_copied += copied;
done:
	d->cut.rows = d->r.rows; /* what counts is what was committed */
	d->cut.copied = d->r.bytes_copied;
	mem_free(gone);
	mem_free(added);
	mem_free(recs);
	return rc;
}

TALLY_API int tally_db_delete(tally_db *db, const char *table, const char *key, int64_t from,
			      int64_t to, tally_delete_result *out)
{
	err_clear();
	if (out && out->size < sizeof out->size)
		return err_set(TALLY_EINVAL, "delete: out->size %zu holds no tally_delete_result",
			       out->size);
	if (!table || !*table)
		return err_set(TALLY_EINVAL, "delete: a table name is required");
	if (key && !*key)
		return err_set(TALLY_EINVAL, "delete: an empty key (NULL means every key)");
	if (to <= from)
		return err_set(TALLY_EINVAL,
			       "delete: empty range [%lld, %lld): to is not after from",
			       (long long)from, (long long)to);
	if (db->read_only)
		return err_set(TALLY_EFAILED, "%s was opened read-only: nothing is deleted",
			       db->dir);
	del_req d = {.t = catalog_find_table(&db->cat, table, (uint32_t)strlen(table)),
		     .cut = {.key = key,
			     .klen = key ? (uint32_t)strlen(key) : 0,
			     .from = from,
			     .to = to}};
	if (!d.t)
		return err_set(TALLY_ENOTFOUND, "no table '%s'", table);
	int rc = flush_everything(db);
	if (rc)
		return err_prefix(rc, "delete from table '%s': flushing its events first", table);
	pthread_mutex_lock(&db->man_mu);
	rc = del_check_expired(db, &d);
	for (unsigned i = 0; i < db->n_shards && !rc; i++)
		rc = del_shard(db, db->shards[i], &d);
	if (d.r.rows) {
		db->deletes++;
		db->delete_rows += d.r.rows;
		db->delete_bytes += d.r.bytes_written;
	}
	pthread_mutex_unlock(&db->man_mu);
	if (d.r.parts_rewritten + d.r.parts_removed)
		tier_kick(db); /* objects of tiered parts wait in gc; rewrites wait for upload */
	if (d.r.rows || rc)
		log_emit(&db->log, rc ? TALLY_LOG_ERROR : TALLY_LOG_INFO,
			 "delete from table '%s' key '%s' [%lld, %lld): %llu events, %llu parts "
			 "rewritten (%llu bytes written, %llu of them copied), %llu removed%s",
			 table, del_key_name(&d), (long long)from, (long long)to,
			 (unsigned long long)d.r.rows, (unsigned long long)d.r.parts_rewritten,
			 (unsigned long long)d.r.bytes_written,
			 (unsigned long long)d.r.bytes_copied,
			 (unsigned long long)d.r.parts_removed,
			 rc ? " before a failure (the rest stays; delete it again)" : "");
	if (out) {
		size_t n = out->size < sizeof d.r ? out->size : sizeof d.r;
		d.r.size = n;
		memcpy(out, &d.r, n);
		memset((char *)out + n, 0, out->size - n);
	}
	return rc;
}
