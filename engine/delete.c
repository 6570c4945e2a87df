/*
 * delete.c — corrections: dropping a table.
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
 */
#include <errno.h>
#include <string.h>

#include "db.h"
#include "err.h"
#include "flush.h"
#include "log.h"
#include "mem.h"
#include "partset.h"
#include "tier.h"

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
	/* twice: a shard whose frozen memtables were full froze nothing the
	 * first time, and has room once they are flushed */
	int rc = flush_run(db, 1);
	if (!rc)
		rc = flush_run(db, 1);
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
