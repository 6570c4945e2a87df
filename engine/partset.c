/*
 * partset.c — a shard's live parts, and the one function that changes
 * them together with the manifest.
 *
 * The one idea: the manifest on disk and the shards' lists say the same
 * thing at every moment a reader or recovery can look, because every
 * change goes through partset_commit in one order: new files durable,
 * manifest saved, lists swapped under the shard lock, old files deleted
 * (partset.h says why each step comes where it does). Callers describe a
 * change (parts that leave, parts that join with their records, further
 * manifest fields); they never edit the manifest or a shard's list
 * themselves.
 */
#include "partset.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "db.h"
#include "err.h"
#include "log.h"
#include "mem.h"
#include "rcache.h"
#include "tier.h"

/* ---------------------------------------------------------------- parts */

int shard_part_col(const shard_part *sp, const col_def *def)
{
	for (uint32_t i = 0; i < sp->p->info.n_cols; i++)
		if (sp->defs[i] == def)
			return (int)i;
	return -1;
}

void shard_part_free(shard_part *sp)
{
	if (!sp || atomic_fetch_sub(&sp->pins, 1) != 0)
		return; /* a scan still reads it */
	rc_forget(sp);
	part_close(sp->p);
	mem_free(sp->defs);
	mem_free(sp->object);
	mem_free(sp);
}

int shard_part_load(tally_db *db, uint64_t id, shard_part **out)
{
	return shard_part_load_as(db, id, manifest_find(&db->man, id), out);
}

int shard_part_load_as(tally_db *db, uint64_t id, const manifest_part *mp, shard_part **out)
{
	*out = NULL;
	char path[PATH_MAX], name[64];
	manifest_part_name(id, name, sizeof name);
	snprintf(path, sizeof path, "%s/%s", db->dir, name);
	/* a tiered part opens from its stub, which is durable before the
	 * manifest says "remote"; a whole part still on disk is the fallback */
	int remote = mp && mp->tier == MTIER_REMOTE;
	if (remote) {
		tier_local_path(db, id, 1, path, sizeof path);
		if (access(path, F_OK))
			snprintf(path, sizeof path, "%s/%s", db->dir, name);
	}
	shard_part *sp = mem_calloc(1, sizeof *sp);
	if (!sp)
		return err_set(-ENOMEM, "out of memory");
	int rc = part_open_reads(path, (int)db->opt.part_reads, &sp->p);
	if (rc)
		goto fail;
	if (remote && (rc = tier_attach(db, sp, mp)))
		goto fail;
	if (!remote && (sp->p->flags & PART_F_STUB))
		retention_attach(sp); /* its raw events expired (engine/retention.c) */
	const part_info *in = &sp->p->info;
	sp->id = id;
	sp->db = db;
	sp->pstart = in->partition_start;
	sp->pend = in->partition_start + in->partition_width;
	if (in->n_levels != db->L.n || in->align_offset != db->L.offset ||
	    memcmp(in->levels, db->L.w, db->L.n * sizeof *db->L.w)) {
		rc = err_set(TALLY_EINVAL,
			     "%s: written with other rollup levels or alignment than the database "
			     "is opened with",
			     path);
		goto fail;
	}
	uint32_t kl = in->key_tag ? (uint32_t)strlen(in->key_tag) : 0;
	rc = catalog_table(&db->cat, in->table, (uint32_t)strlen(in->table),
			   strmap_hash(in->table, strlen(in->table)), in->key_tag, kl, &sp->table);
	if (!rc)
		rc = catalog_key_check(sp->table, in->key_tag, kl, path);
	if (rc)
		goto fail;
	sp->defs = mem_calloc(in->n_cols ? in->n_cols : 1, sizeof *sp->defs);
	if (!sp->defs) {
		rc = err_set(-ENOMEM, "out of memory");
		goto fail;
	}
	for (uint32_t c = 0; c < in->n_cols; c++) {
		const part_col *pc = &in->cols[c];
		rc = catalog_column(&db->cat, sp->table, pc->name, pc->len,
				    strmap_hash(pc->name, pc->len), (enum tally_type)pc->type,
				    &sp->defs[c]);
		if (rc) {
			err_prefix(rc, "%s", path);
			goto fail;
		}
	}
	*out = sp;
	return 0;
fail:
	shard_part_free(sp);
	return rc;
}

int shard_add_part(shard *s, shard_part *sp)
{
	if (mem_grow(&s->parts, &s->cap_parts, s->n_parts + 1, sizeof *s->parts, 16))
		return err_set(-ENOMEM, "out of memory");
	s->parts[s->n_parts++] = sp;
	return 0;
}

shard_part *partset_find(const shard *s, uint64_t id)
{
	for (uint32_t j = 0; j < s->n_parts; j++)
		if (s->parts[j]->id == id)
			return s->parts[j];
	return NULL;
}

uint64_t partset_new_id(tally_db *db)
{
	/* handed out from the committed manifest's counter: the next save
	 * writes it, and until then a crash only makes the ids free again */
	return db->man.next_part_id++;
}

void partset_close(shard *s)
{
	for (uint32_t p = 0; p < s->n_parts; p++)
		shard_part_free(s->parts[p]);
	mem_free(s->parts);
	s->parts = NULL;
	s->n_parts = s->cap_parts = 0;
}

/* ---------------------------------------------------------------- commit */

static int live_in(const shard *s, const shard_part *sp)
{
	for (uint32_t j = 0; j < s->n_parts; j++)
		if (s->parts[j] == sp)
			return 1;
	return 0;
}

/* The added part with this id (it replaces a gone one), or -1. */
static int added_with_id(const partset_change *c, uint64_t id)
{
	for (uint32_t k = 0; k < c->n_added; k++)
		if (c->added[k]->id == id)
			return (int)k;
	return -1;
}

static int gone_with_id(const partset_change *c, uint64_t id)
{
	for (uint32_t i = 0; i < c->n_gone; i++)
		if (c->gone[i]->id == id)
			return 1;
	return 0;
}

/* Refuses a change that does not fit the live set: every part that
 * leaves or is sealed is live in the shard and named by the manifest as
 * its own; every part that joins is new, or replaces a leaving one. */
static int check(const tally_db *db, const partset_change *c)
{
	const shard *s = c->s;
	if (!s && (c->n_gone || c->n_added || c->seal))
		return err_set(TALLY_EINVAL, "part set: a change of parts names no shard");
	for (uint32_t i = 0; i < c->n_gone + (c->seal != NULL); i++) {
		const shard_part *g = i < c->n_gone ? c->gone[i] : c->seal;
		const manifest_part *mp = manifest_find(&db->man, g->id);
		if (!live_in(s, g) || !mp || mp->shard != s->id)
			return err_set(TALLY_EINVAL,
				       "part set of shard %u: part %016llx to %s is not live there",
				       s->id, (unsigned long long)g->id,
				       i < c->n_gone ? "remove" : "seal");
		for (uint32_t j = 0; j < i; j++)
			if ((j < c->n_gone ? c->gone[j] : c->seal) == g)
				return err_set(TALLY_EINVAL,
					       "part set of shard %u: part %016llx named twice",
					       s->id, (unsigned long long)g->id);
	}
	for (uint32_t k = 0; k < c->n_added; k++) {
		const shard_part *a = c->added[k];
		const manifest_part *r = &c->recs[k];
		if (r->id != a->id || r->shard != s->id || added_with_id(c, a->id) != (int)k ||
		    live_in(s, a) || (manifest_find(&db->man, a->id) && !gone_with_id(c, a->id)))
			return err_set(TALLY_EINVAL,
				       "part set of shard %u: part %016llx to add is not new "
				       "(or its record is another's)",
				       s->id, (unsigned long long)a->id);
	}
	return 0;
}

/* The manifest record of part id at index at: rec instead of the old one. */
static int replace_rec(manifest *nm, uint32_t at, const manifest_part *rec)
{
	int rc = manifest_remove(nm, rec->id);
	if (!rc)
		rc = manifest_add(nm, rec);
	if (rc)
		return rc;
	/* manifest_add appended it: back to the old place, order kept */
	manifest_part last = nm->parts[nm->n_parts - 1];
	memmove(&nm->parts[at + 1], &nm->parts[at], (nm->n_parts - 1 - at) * sizeof *nm->parts);
	nm->parts[at] = last;
	return 0;
}

/* nm (a copy of the committed manifest) with the change applied. */
static int build(manifest *nm, const partset_change *c)
{
	int rc = 0;
	for (uint32_t i = 0; i < c->n_gone && !rc; i++) {
		const manifest_part *mp = manifest_find(nm, c->gone[i]->id);
		int k = added_with_id(c, mp->id);
		/* an object no new record names goes once this save is durable */
		if (mp->object &&
		    !(k >= 0 && c->recs[k].object && !strcmp(c->recs[k].object, mp->object)))
			rc = manifest_gc_add(nm, mp->object);
		if (!rc && k < 0)
			rc = manifest_remove(nm, mp->id);
	}
	for (uint32_t k = 0; k < c->n_added && !rc; k++) {
		const manifest_part *r = &c->recs[k];
		const manifest_part *old = manifest_find(nm, r->id);
		rc = old ? replace_rec(nm, (uint32_t)(old - nm->parts), r) : manifest_add(nm, r);
		if (!rc && r->object)
			manifest_gc_remove(nm, r->object); /* no longer an intent */
		if (nm->next_part_id <= r->id)
			nm->next_part_id = r->id + 1;
	}
	if (!rc && c->seal)
		for (uint32_t j = 0; j < nm->n_parts; j++)
			if (nm->parts[j].id == c->seal->id)
				nm->parts[j].flags |= MPART_SEALED;
	return rc;
}

static int in_gone(const partset_change *c, const shard_part *sp)
{
	for (uint32_t i = 0; i < c->n_gone; i++)
		if (c->gone[i] == sp)
			return 1;
	return 0;
}

/* The shard's list after the committed change: gone parts leave (one
 * replaced by a part of its id gives it its place), the others keep their
 * order, new ones go last. Caller holds the shard's write lock; room for
 * the added parts was reserved, so nothing here can fail. */
static void swap(shard *s, const partset_change *c)
{
	uint32_t n = 0;
	for (uint32_t j = 0; j < s->n_parts; j++) {
		shard_part *sp = s->parts[j];
		if (in_gone(c, sp)) {
			int k = added_with_id(c, sp->id);
			if (k < 0)
				continue;
			sp = c->added[k];
		}
		s->parts[n++] = sp;
	}
	for (uint32_t k = 0; k < c->n_added; k++)
		if (!gone_with_id(c, c->added[k]->id))
			s->parts[n++] = c->added[k];
	s->n_parts = n;
	if (c->seal)
		c->seal->flags |= MPART_SEALED;
}

/* Room in s->parts for n more, grown under the write lock (readers hold
 * the array under the read lock). */
static int reserve(shard *s, uint32_t n)
{
	pthread_rwlock_wrlock(&s->lock);
	int rc = mem_grow(&s->parts, &s->cap_parts, s->n_parts + n, sizeof *s->parts, 16);
	pthread_rwlock_unlock(&s->lock);
	return rc ? err_set(-ENOMEM, "out of memory") : 0;
}

/* Whether the committed manifest names part id with this local file. */
static int named(const tally_db *db, uint64_t id, int remote)
{
	const manifest_part *mp = manifest_find(&db->man, id);
	return mp && (mp->tier == MTIER_REMOTE) == remote;
}

/* After a failed commit: frees the added parts that are not live, and
 * deletes their files when nothing can name them (unlink_files: the save
 * was not attempted). */
static void drop_added(tally_db *db, const partset_change *c, int unlink_files)
{
	for (uint32_t k = 0; k < c->n_added; k++) {
		shard_part *a = c->added[k];
		int twice = 0;
		for (uint32_t j = 0; j < k; j++)
			twice |= c->added[j] == a;
		if (twice || (c->s && live_in(c->s, a)))
			continue; /* refused: never a live part, nor one freed already */
		char path[PATH_MAX];
		int remote = a->object != NULL;
		tier_local_path(db, a->id, remote, path, sizeof path);
		uint64_t id = a->id;
		shard_part_free(a);
		if (unlink_files && !named(db, id, remote))
			unlink(path);
	}
}

/* After the commit: the files of the parts that left (a part replaced by
 * one of its id keeps a file the new form still uses). */
static void drop_gone(tally_db *db, const partset_change *c)
{
	for (uint32_t i = 0; i < c->n_gone; i++) {
		shard_part *g = c->gone[i];
		char path[PATH_MAX];
		int remote = g->object != NULL;
		tier_local_path(db, g->id, remote, path, sizeof path);
		int keep = named(db, g->id, remote);
		shard_part_free(g);
		if (!keep && unlink(path))
			log_emit(&db->log, TALLY_LOG_WARN, "could not delete %s", path);
	}
}

static void crash_point(const tally_db *db, const char *op, const char *when)
{
	char step[96];
	snprintf(step, sizeof step, "%s:%s-manifest", op, when);
	db_crash_point(db, step);
}

int partset_commit(tally_db *db, const partset_change *c)
{
	manifest nm = {0};
	int saved = 0;
	int rc = check(db, c);
	if (!rc)
		rc = manifest_copy(&nm, &db->man);
	if (!rc)
		rc = build(&nm, c);
	if (!rc && c->edit)
		rc = c->edit(&nm, c->arg);
	if (!rc && c->n_added)
		rc = reserve(c->s, c->n_added);
	if (rc)
		goto fail;
	crash_point(db, c->op, "before");
	saved = 1;
	if ((rc = manifest_save(db->dir, &nm)))
		goto fail;
	crash_point(db, c->op, "after");
	/* Committed. Publish: one step under the shard lock, so no query sees
	 * both a part and what replaced it, or neither. */
	manifest_free(&db->man);
	db->man = nm;
	if (c->s) {
		for (uint32_t k = 0; k < c->n_added; k++) {
			c->added[k]->level = c->recs[k].level;
			c->added[k]->flags = c->recs[k].flags;
		}
		pthread_rwlock_wrlock(&c->s->lock);
		swap(c->s, c);
		if (c->publish)
			c->publish(c->s, c->arg);
		pthread_rwlock_unlock(&c->s->lock);
	}
	drop_gone(db, c);
	return 0;
fail:
	manifest_free(&nm);
	drop_added(db, c, !saved);
	return rc;
}
