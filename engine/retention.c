/*
 * retention.c — per-table retention of raw events and of each rollup
 * level: the rules, the pass that lets expired partitions go, and the
 * horizon every query checks.
 *
 * The one idea: expiry is decided by whole partitions against one
 * horizon per (table, class), computed from the wall clock, and queries
 * check that same horizon before reading anything. A class of a
 * partition is expired once the partition ends at or before
 * now - keep rounded down to a partition boundary; a query reaching
 * before the horizon is refused (TALLY_EEXPIRED) whether or not the pass
 * has run yet, so an answer never silently misses expired data, and
 * whatever the pass has or has not deleted so far cannot change an
 * answer that is given.
 *
 * The pass, per shard, in one partset_commit (engine/partset.c): a part
 * whose partition is past every class leaves whole (a tiered part's
 * object joins the objects to delete, which the tiering job deletes
 * after the save); a part past its raw retention only is replaced by a
 * rollup-only copy of itself under a new id — the stub tiering writes
 * (storage/part.c: header, rollup blocks, index), kept local with no
 * object. Rollup queries read it as they read any stub; a raw read of it
 * fails with TALLY_EEXPIRED. Its partition is never merged nor tiered
 * again; late events that land there afterwards keep their rollups (exact
 * while the levels are retained) and lose their raw columns at the next
 * pass.
 */
#include "retention.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "db.h"
#include "err.h"
#include "fileio.h"
#include "flush.h"
#include "log.h"
#include "mem.h"
#include "partset.h"
#include "tier.h"

#define PASS_EVERY_NS (60 * TALLY_NS_PER_SEC) /* the background's period */
#define STUB_MAX      (UINT64_C(1) << 32)     /* a stub copied whole */
#define YEAR_NS       (365 * TALLY_1D)

/* ns of clock c: the wall clock decides what expired, the monotonic one
 * when the background's next pass is due */
static int64_t clock_ns(clockid_t c)
{
	struct timespec t;
	clock_gettime(c, &t);
	return (int64_t)t.tv_sec * TALLY_NS_PER_SEC + t.tv_nsec;
}
#define wall_ns() clock_ns(CLOCK_REALTIME)

/* "90d", "2y", "36h", "forever" (0); [s, e) of the spec. -1: not one. */
static int64_t parse_keep(const char *s, const char *e)
{
	if (e - s == 7 && !memcmp(s, "forever", 7))
		return 0;
	static const struct {
		char u;
		int64_t ns;
	} units[] = {{'s', TALLY_NS_PER_SEC}, {'m', 60 * TALLY_NS_PER_SEC}, {'h', TALLY_1H},
		     {'d', TALLY_1D},         {'w', 7 * TALLY_1D},          {'y', YEAR_NS}};
	if (e - s < 2 || *s < '0' || *s > '9')
		return -1;
	int64_t n = 0;
	const char *p = s;
	for (; p < e - 1; p++) {
		if (*p < '0' || *p > '9' || n > INT64_MAX / 10 - 9)
			return -1;
		n = n * 10 + (*p - '0');
	}
	for (size_t i = 0; i < sizeof units / sizeof *units; i++)
		if (units[i].u == *p)
			return n && n <= INT64_MAX / 4 / units[i].ns ? n * units[i].ns : -1;
	return -1;
}

/* The class an item's name gives: 0 "raw", 1 + l for the level whose
 * width the name spells (5m, 1h, 300s...); -1 none. */
static int parse_class(const levels *L, const char *s, const char *e)
{
	if (e - s == 3 && !memcmp(s, "raw", 3))
		return 0;
	int64_t w = parse_keep(s, e);
	for (unsigned l = 0; w > 0 && l < L->n; l++)
		if (L->w[l] == w)
			return 1 + (int)l;
	return -1;
}

static void set_free(ret_set *st)
{
	for (uint32_t i = 0; i < st->n; i++)
		mem_free(st->rules[i].table);
	mem_free(st->rules);
	mem_free(st->spec);
	*st = (ret_set){0};
}

/* One rule, "TABLE:item,item" in [s, e), into *r. */
static int parse_rule(const levels *L, const char *s, const char *e, unsigned no, ret_rule *r)
{
	const char *colon = memchr(s, ':', (size_t)(e - s));
	if (!colon || colon == s)
		return err_set(TALLY_EINVAL,
			       "retention rule %u '%.*s': expected TABLE:CLASS=DURATION,... "
			       "(like traffic:raw=90d,5m=2y)",
			       no, (int)(e - s), s);
	if (!(colon - s == 1 && *s == '*') && !(r->table = mem_strndup(s, (size_t)(colon - s))))
		return err_set(-ENOMEM, "out of memory");
	for (const char *p = colon + 1; p < e;) {
		const char *ie = memchr(p, ',', (size_t)(e - p));
		ie = ie ? ie : e;
		const char *eq = memchr(p, '=', (size_t)(ie - p));
		int cls = eq ? parse_class(L, p, eq) : -1;
		int64_t keep = eq ? parse_keep(eq + 1, ie) : -1;
		if (cls < 0 || keep < 0)
			return err_set(TALLY_EINVAL,
				       "retention rule %u, item '%.*s': expected raw or a level "
				       "width (like 5m) = a duration (like 90d, 2y) or forever",
				       no, (int)(ie - p), p);
		r->keep[cls] = keep;
		p = ie + (ie < e);
	}
	/* a coarser class never expires before a finer one: a window that
	 * still exists can always be told apart from an expired one */
	int64_t prev = 0;
	int forever = 0;
	for (unsigned c = 0; c <= L->n; c++) {
		int64_t k = r->keep[c];
		if ((forever && k) || (k && k < prev))
			return err_set(
				TALLY_EINVAL,
				"retention rule %u '%.*s': %s keeps less than a finer class; "
				"coarser levels must keep at least as long",
				no, (int)(e - s), s, c ? "a level" : "raw");
		forever |= !k;
		prev = k ? k : prev;
	}
	return 0;
}

static int parse_set(const levels *L, const char *spec, ret_set *out)
{
	*out = (ret_set){0};
	if (!spec || !*spec)
		return 0;
	size_t len = strlen(spec);
	uint32_t n = 1;
	for (size_t i = 0; i < len; i++)
		n += spec[i] == ';';
	if (!(out->rules = mem_calloc(n, sizeof *out->rules)) ||
	    !(out->spec = mem_strndup(spec, len))) {
		set_free(out);
		return err_set(-ENOMEM, "out of memory");
	}
	for (const char *p = spec, *e = spec + len; p < e;) {
		const char *re = memchr(p, ';', (size_t)(e - p));
		re = re ? re : e;
		int rc = parse_rule(L, p, re, out->n + 1, &out->rules[out->n]);
		out->n++;
		if (rc) {
			set_free(out);
			return rc;
		}
		for (uint32_t i = 0; i + 1 < out->n; i++) {
			const char *a = out->rules[i].table, *b = out->rules[out->n - 1].table;
			if ((!a && !b) || (a && b && !strcmp(a, b))) {
				rc = err_set(TALLY_EINVAL, "retention rule %u: table '%s' twice",
					     out->n, b ? b : "*");
				set_free(out); /* b is in it */
				return rc;
			}
		}
		p = re + 1;
	}
	return 0;
}

void retention_init(retention *r)
{
	*r = (retention){0};
	pthread_mutex_init(&r->mu, NULL);
}

void retention_free(retention *r)
{
	set_free(&r->set);
	atomic_store(&r->n_rules, 0);
	pthread_mutex_destroy(&r->mu);
}

int retention_set(tally_db *db, const char *spec)
{
	ret_set st;
	int rc = parse_set(&db->L, spec, &st);
	if (rc)
		return rc;
	pthread_mutex_lock(&db->ret.mu);
	ret_set old = db->ret.set;
	db->ret.set = st;
	atomic_store(&db->ret.n_rules, st.n);
	db->ret.next_pass = 0; /* new rules: a pass soon */
	pthread_mutex_unlock(&db->ret.mu);
	set_free(&old);
	return 0;
}

/* The rule for table t, or NULL. Caller holds ret.mu. */
static const ret_rule *rule_of(const retention *r, const table_def *t)
{
	const ret_rule *dflt = NULL;
	for (uint32_t i = 0; i < r->set.n; i++) {
		const ret_rule *ru = &r->set.rules[i];
		if (!ru->table)
			dflt = ru;
		else if (strlen(ru->table) == t->len && !memcmp(ru->table, t->name, t->len))
			return ru;
	}
	return dflt;
}

static int64_t horizon_of(const tally_db *db, int64_t keep, int64_t now)
{
	if (!keep || now - INT64_MIN / 2 < keep)
		return INT64_MIN;
	return window_start_any(now - keep, db->partition_width, db->L.offset);
}

/* No rules (the default): nothing expires, and no lock or clock is
 * needed to say so. */
static int no_rules(tally_db *db)
{
	return !atomic_load_explicit(&db->ret.n_rules, memory_order_acquire);
}

int64_t retention_horizon(tally_db *db, const table_def *t, unsigned cls, int64_t now)
{
	if (no_rules(db))
		return INT64_MIN;
	pthread_mutex_lock(&db->ret.mu);
	const ret_rule *ru = rule_of(&db->ret, t);
	int64_t keep = ru && cls <= db->L.n ? ru->keep[cls] : 0;
	pthread_mutex_unlock(&db->ret.mu);
	return horizon_of(db, keep, now);
}

static void fmt_time(int64_t ns, char *buf, size_t cap)
{
	time_t s = (time_t)(ns / TALLY_NS_PER_SEC - (ns % TALLY_NS_PER_SEC < 0));
	struct tm tm;
	if (!gmtime_r(&s, &tm) || !strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm))
		snprintf(buf, cap, "?");
}

static int expired(const table_def *t, unsigned cls, const levels *L, int64_t hz)
{
	char when[48], what[32];
	fmt_time(hz, when, sizeof when);
	if (cls)
		snprintf(what, sizeof what, "its %llds rollups",
			 (long long)(L->w[cls - 1] / TALLY_NS_PER_SEC));
	else
		snprintf(what, sizeof what, "its raw events");
	return err_set(TALLY_EEXPIRED,
		       "table '%s': %s before %s (%lld ns) have expired (retention); ask from "
		       "there on, or over whole windows of a level still kept",
		       t->name, what, when, (long long)hz);
}

int retention_check_raw(tally_db *db, const table_def *t, int64_t from)
{
	if (no_rules(db))
		return 0;
	int64_t hz = retention_horizon(db, t, 0, wall_ns());
	return from < hz ? expired(t, 0, &db->L, hz) : 0;
}

int retention_check_level(tally_db *db, const table_def *t, int li, int64_t from)
{
	if (no_rules(db))
		return 0;
	int64_t hz = retention_horizon(db, t, 1 + (unsigned)li, wall_ns());
	return from < hz ? expired(t, 1 + (unsigned)li, &db->L, hz) : 0;
}

int retention_check_agg(tally_db *db, const table_def *t, int64_t from, int64_t to)
{
	if (no_rules(db))
		return 0;
	int64_t now = wall_ns();
	int64_t raw = retention_horizon(db, t, 0, now);
	if (from >= raw)
		return 0;
	/* Without raw events at from, the range must start on a window of a
	 * retained level l: the aggregate then reads levels l and coarser
	 * from there (kept at least as long), and finer ones only at the
	 * right edge, which must lie where raw events are kept. */
	const levels *L = &db->L;
	for (unsigned l = 0; l < L->n; l++) {
		int64_t w = L->w[l];
		if (retention_horizon(db, t, 1 + l, now) > from ||
		    window_start_any(from, w, L->offset) != from)
			continue;
		int64_t right = window_start_any(to, w, L->offset);
		if (right == to || right >= raw)
			return 0;
	}
	return expired(t, 0, L, raw);
}

int retention_raw_gone(const shard_part *sp)
{
	return (sp->p->flags & PART_F_STUB) && !sp->object;
}

static int expired_fetch(void *ctx, const part *p, uint64_t off, size_t len, void *dst)
{
	(void)ctx;
	(void)off;
	(void)len;
	(void)dst;
	return err_set(TALLY_EEXPIRED, "%s: its raw events have expired (retention)", p->path);
}

void retention_attach(shard_part *sp)
{
	sp->p->fetch = expired_fetch;
	sp->p->fetch_ctx = sp;
}

/* Writes sp's rollups, index and all, as the stub parts/<id>.part. A
 * part that derives its finest distributions from its raw events is
 * first written again with them (merge_materialise, a part no manifest
 * names, deleted once its stub is written): the stub keeps what the raw
 * events answered. Caller holds man_mu. */
static int write_rollup_copy(tally_db *db, shard *s, shard_part *sp, uint64_t id, uint64_t *bytes)
{
	char dir[PATH_MAX], name[64];
	manifest_part_name(id, name, sizeof name);
	snprintf(dir, sizeof dir, "%s/parts", db->dir);
	const char *base = strrchr(name, '/') + 1;
	if (!(sp->p->flags & PART_F_STUB)) {
		int need = merge_needs_materialise(db, sp);
		if (need <= 0)
			return need ? need : part_write_stub(sp->p, dir, base, bytes);
		shard_part *m = NULL;
		manifest_part rec;
		uint64_t mb;
		int rc = merge_materialise(db, s, sp, &m, &rec, &mb);
		if (rc || !m)
			return rc ? rc : err_set(TALLY_ECORRUPT, "%s: no rows", sp->p->path);
		rc = part_write_stub(m->p, dir, base, bytes);
		char path[PATH_MAX];
		snprintf(path, sizeof path, "%s", m->p->path);
		shard_part_free(m);
		unlink(path);
		return rc;
	}
	/* a tiered part's stub is that copy already */
	void *data;
	size_t len;
	int rc = fio_read_all(sp->p->path, STUB_MAX, &data, &len);
	if (rc)
		return rc;
	rc = fio_write_atomic(dir, base, data, len);
	mem_free(data);
	*bytes = len;
	return rc;
}

typedef struct pass_acc {
	uint64_t dropped, raw_gone, freed, rows;
} pass_acc;

/* One shard's changes as one commit. Caller holds man_mu. */
static int pass_shard(tally_db *db, shard *s, int64_t now, pass_acc *acc)
{
	uint32_t n = s->n_parts, ng = 0, na = 0;
	if (!n)
		return 0;
	shard_part **gone = mem_calloc(n, sizeof *gone);
	shard_part **added = mem_calloc(n, sizeof *added);
	manifest_part *recs = mem_calloc(n, sizeof *recs);
	pass_acc a = {0};
	int rc = 0;
	if (!gone || !added || !recs) {
		rc = err_set(-ENOMEM, "out of memory");
		goto out;
	}
	for (uint32_t i = 0; i < n && !rc; i++) {
		shard_part *sp = s->parts[i];
		int gone_raw = retention_raw_gone(sp);
		if (sp->pend <= retention_horizon(db, sp->table, db->L.n, now)) {
			gone[ng++] = sp;
			a.dropped++;
			a.freed += sp->p->file_bytes;
			a.rows += gone_raw ? 0 : sp->p->info.n_rows;
			continue;
		}
		if (gone_raw || sp->pend > retention_horizon(db, sp->table, 0, now))
			continue;
		const manifest_part *old = manifest_find(&db->man, sp->id);
		if (!old)
			continue; /* partset_commit would refuse it: not the manifest's */
		uint64_t id = partset_new_id(db), bytes = 0;
		if ((rc = write_rollup_copy(db, s, sp, id, &bytes)))
			break;
		db_crash_point(db, "retention:after-stub");
		shard_part *np;
		if ((rc = shard_part_load_as(db, id, NULL, &np))) {
			char path[PATH_MAX];
			snprintf(path, sizeof path, "%s/", db->dir);
			manifest_part_name(id, path + strlen(path), sizeof path - strlen(path));
			unlink(path);
			break;
		}
		manifest_part rec = *old;
		rec.id = id;
		rec.bytes = bytes;
		rec.tier = MTIER_LOCAL;
		rec.object = NULL;
		rec.object_sum = 0;
		rec.tiered_at = 0;
		np->level = sp->level;
		np->flags = sp->flags;
		gone[ng++] = sp;
		added[na] = np;
		recs[na++] = rec;
		a.raw_gone++;
		a.freed += sp->p->file_bytes > bytes && !sp->object ? sp->p->file_bytes - bytes : 0;
		a.rows += sp->p->info.n_rows;
	}
	if (rc) {
		/* nothing committed: the copies written so far go */
		for (uint32_t i = 0; i < na; i++) {
			unlink(added[i]->p->path);
			shard_part_free(added[i]);
		}
		goto out;
	}
	if (ng) {
		rc = partset_commit(db, &(partset_change){.op = "retention",
							  .s = s,
							  .gone = gone,
							  .n_gone = ng,
							  .added = added,
							  .recs = recs,
							  .n_added = na});
		if (!rc)
			*acc = (pass_acc){acc->dropped + a.dropped, acc->raw_gone + a.raw_gone,
					  acc->freed + a.freed, acc->rows + a.rows};
	}
out:
	mem_free(gone);
	mem_free(added);
	mem_free(recs);
	return rc;
}

int retention_pass(tally_db *db, int64_t now)
{
	pass_acc acc = {0};
	int rc = 0;
	pthread_mutex_lock(&db->man_mu);
	for (unsigned i = 0; i < db->n_shards && !rc; i++)
		rc = pass_shard(db, db->shards[i], now, &acc);
	pthread_mutex_unlock(&db->man_mu);
	pthread_mutex_lock(&db->ret.mu);
	retention *r = &db->ret;
	r->passes++;
	r->last_pass = now;
	r->parts_dropped += acc.dropped;
	r->parts_raw_gone += acc.raw_gone;
	r->bytes_freed += acc.freed;
	r->rows_dropped += acc.rows;
	if (acc.dropped || acc.raw_gone)
		r->last_drop = now;
	pthread_mutex_unlock(&db->ret.mu);
	if (acc.dropped || acc.raw_gone)
		log_emit(&db->log, TALLY_LOG_INFO,
			 "retention: %llu parts dropped, %llu cut to their rollups, %llu bytes "
			 "freed",
			 (unsigned long long)acc.dropped, (unsigned long long)acc.raw_gone,
			 (unsigned long long)acc.freed);
	if (acc.dropped)
		tier_kick(db); /* objects of dropped tiered parts wait in gc */
	return rc;
}

void retention_tick(tally_db *db)
{
	int64_t m = clock_ns(CLOCK_MONOTONIC);
	pthread_mutex_lock(&db->ret.mu);
	int due = db->ret.set.n && m >= db->ret.next_pass;
	if (due)
		db->ret.next_pass = m + PASS_EVERY_NS;
	pthread_mutex_unlock(&db->ret.mu);
	if (due && retention_pass(db, wall_ns()))
		log_emit(&db->log, TALLY_LOG_ERROR, "retention pass failed (will retry): %s",
			 err_msg());
}

void retention_stats(tally_db *db, tally_stats *out)
{
	pthread_mutex_lock(&db->ret.mu);
	out->retention_passes = db->ret.passes;
	out->retention_parts_dropped = db->ret.parts_dropped;
	out->retention_parts_raw_gone = db->ret.parts_raw_gone;
	out->retention_bytes_freed = db->ret.bytes_freed;
	out->retention_rows_dropped = db->ret.rows_dropped;
	out->retention_last_pass = db->ret.last_pass;
	out->retention_last_drop = db->ret.last_drop;
	pthread_mutex_unlock(&db->ret.mu);
}

TALLY_API int tally_db_set_retention(tally_db *db, const char *spec)
{
	err_clear();
	return retention_set(db, spec);
}

TALLY_API int tally_db_retain(tally_db *db)
{
	err_clear();
	if (db->read_only)
		return err_set(TALLY_EFAILED, "%s was opened read-only: nothing is dropped",
			       db->dir);
	return retention_pass(db, wall_ns());
}

TALLY_API int tally_db_retained_from(tally_db *db, const char *table, int64_t level, int64_t *from)
{
	err_clear();
	*from = INT64_MIN;
	if (!table)
		return err_set(TALLY_EINVAL, "table is required");
	table_def *t = catalog_find_table(&db->cat, table, (uint32_t)strlen(table));
	if (!t)
		return err_set(TALLY_ENOTFOUND, "no table '%s'", table);
	unsigned cls = 0;
	if (level) {
		while (cls < db->L.n && db->L.w[cls] != level)
			cls++;
		if (cls == db->L.n)
			return err_set(TALLY_ENOTFOUND, "no rollup level of %lld ns",
				       (long long)level);
		cls++;
	}
	*from = retention_horizon(db, t, cls, wall_ns());
	return 0;
}
