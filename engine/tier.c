/*
 * tier.c — the tiering job and the cold block fetcher.
 *
 * The one idea: a tiered part is its own unchanged part file stored as an
 * object, and a local stub that keeps the rollup blocks and the index
 * (storage/part.c). Nothing about the data changes shape, so the index
 * that is already in memory says exactly which byte range of the object
 * holds any column block, every block still carries its xxh3, and a raw
 * read fetches just the blocks it decodes.
 *
 * Uploading a due part (sealed, its partition tier_after behind the
 * table's newest event) is a sequence in which a crash or a failing
 * object store at any point loses nothing and leaks nothing:
 *   1. manifest: the object key joins the list of objects to delete (gc),
 *      as an intent — if we die mid-upload, recovery deletes the remains;
 *   2. upload (multipart when large), then verify size and ETag/checksum;
 *   3. write and fsync parts/<id>.stub;
 *   4. manifest: the part is remote (key, checksum) and the key leaves gc;
 *   5. swap the part for its stub under the shard lock; delete the .part.
 * Each manifest change is a partset_commit (engine/partset.c); steps 4
 * and 5 are one, which loads the stub before it saves anything.
 * Before step 4 the manifest says "local" and the whole part is still on
 * disk; after it, the stub is already durable. A merge that replaces a
 * remote part adds its object to gc in its own commit, and the next pass
 * deletes it: objects are deleted only after the manifest stopped naming
 * them.
 *
 * Failures: any error stops the pass; the thread retries with exponential
 * backoff (1 s doubling to 5 min), logs when the store starts and stops
 * failing, and counts in stats. Cold reads meanwhile fail fast for a
 * second after a failed fetch instead of each waiting out its timeouts.
 */
#include "tier.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "db.h"
#include "err.h"
#include "fileio.h"
#include "flush.h"
#include "log.h"
#include "mem.h"
#include "s3.h"

#define DEFAULT_TIER_AFTER (7 * TALLY_1D)
#define DEFAULT_CACHE      (UINT64_C(64) << 20)
#define IDLE_CHECK_MS      10000  /* a healthy thread looks for due parts this often */
#define BACKOFF_MAX_MS     300000 /* a failing one waits at most this long */
#define READ_DOWN_NS       (INT64_C(1000000000)) /* cold reads fail fast this long */
#define CACHE_BUCKETS      65536u
#define PREFIX_MAX         512

typedef struct centry {
	uint64_t id, off;
	uint32_t len;
	struct centry *hnext, *prev, *next;
	uint8_t data[];
} centry;

struct tier {
	tally_db *db;
	s3_client *bg; /* uploads and deletes: the configured retries */
	s3_client *rd; /* cold reads: one retry, a query is waiting */
	char *prefix;
	int64_t after;
	/* the thread */
	pthread_t th;
	int started;
	pthread_mutex_t mu;
	pthread_cond_t cond;
	int stop, kick;
	pthread_mutex_t pass_mu; /* one pass at a time (thread or tally_db_tier) */
	int swept;               /* unfinished multipart uploads aborted once */
	/* health */
	_Atomic int failing;
	_Atomic int64_t down_until; /* monotonic ns */
	unsigned streak;
	pthread_mutex_t err_mu;
	char last_err[ERR_MSG_MAX];
	/* counters */
	_Atomic uint64_t uploads, upload_bytes, failures, deletes;
	_Atomic uint64_t fetches, fetch_bytes, hits, misses;
	/* cold block cache: hash of (id, offset), LRU list, byte budget */
	pthread_mutex_t cmu;
	centry **buckets;
	centry *head, *tail; /* head: most recently used */
	uint64_t cache_bytes, cache_limit;
};

static int64_t mono_now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * TALLY_NS_PER_SEC + t.tv_nsec;
}

static int64_t wall_now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_REALTIME, &t);
	return (int64_t)t.tv_sec * TALLY_NS_PER_SEC + t.tv_nsec;
}

static void object_key(const tier *t, uint64_t id, char *buf, size_t cap)
{
	snprintf(buf, cap, "%sparts/%016llx.part", t->prefix, (unsigned long long)id);
}

void tier_local_path(const tally_db *db, uint64_t id, int remote, char *buf, size_t cap)
{
	snprintf(buf, cap, "%s/parts/%016llx.%s", db->dir, (unsigned long long)id,
		 remote ? "stub" : "part");
}

/* ---------------------------------------------------------------- cache */

static uint32_t chash(uint64_t id, uint64_t off)
{
	return (uint32_t)((id * UINT64_C(0x9E3779B97F4A7C15) ^
			   off * UINT64_C(0xC2B2AE3D27D4EB4F)) >>
			  48) %
	       CACHE_BUCKETS;
}

static void lru_unlink(tier *t, centry *e)
{
	if (e->prev)
		e->prev->next = e->next;
	else
		t->head = e->next;
	if (e->next)
		e->next->prev = e->prev;
	else
		t->tail = e->prev;
	e->prev = e->next = NULL;
}

static void lru_push(tier *t, centry *e)
{
	e->prev = NULL;
	e->next = t->head;
	if (t->head)
		t->head->prev = e;
	t->head = e;
	if (!t->tail)
		t->tail = e;
}

static int cache_get(tier *t, uint64_t id, uint64_t off, size_t len, void *dst)
{
	pthread_mutex_lock(&t->cmu);
	for (centry *e = t->buckets[chash(id, off)]; e; e = e->hnext)
		if (e->id == id && e->off == off && e->len == len) {
			memcpy(dst, e->data, len);
			lru_unlink(t, e);
			lru_push(t, e);
			pthread_mutex_unlock(&t->cmu);
			return 1;
		}
	pthread_mutex_unlock(&t->cmu);
	return 0;
}

static void cache_drop(tier *t, centry *e)
{
	centry **pp = &t->buckets[chash(e->id, e->off)];
	while (*pp != e)
		pp = &(*pp)->hnext;
	*pp = e->hnext;
	lru_unlink(t, e);
	t->cache_bytes -= sizeof *e + e->len;
	mem_free(e);
}

static void cache_put(tier *t, uint64_t id, uint64_t off, size_t len, const void *src)
{
	if (sizeof(centry) + len > t->cache_limit / 4)
		return; /* one block never takes over the cache */
	centry *e = mem_alloc(sizeof *e + len);
	if (!e)
		return; /* the cache is an optimisation */
	e->id = id;
	e->off = off;
	e->len = (uint32_t)len;
	memcpy(e->data, src, len);
	pthread_mutex_lock(&t->cmu);
	uint32_t h = chash(id, off);
	for (centry *x = t->buckets[h]; x; x = x->hnext)
		if (x->id == id && x->off == off) {
			pthread_mutex_unlock(&t->cmu);
			mem_free(e);
			return;
		}
	e->hnext = t->buckets[h];
	t->buckets[h] = e;
	lru_push(t, e);
	t->cache_bytes += sizeof *e + len;
	while (t->cache_bytes > t->cache_limit && t->tail)
		cache_drop(t, t->tail);
	pthread_mutex_unlock(&t->cmu);
}

/* ---------------------------------------------------------------- health */

static void set_last_err(tier *t, const char *msg)
{
	pthread_mutex_lock(&t->err_mu);
	snprintf(t->last_err, sizeof t->last_err, "%s", msg);
	pthread_mutex_unlock(&t->err_mu);
}

/* Records the outcome of a pass; logs when the store starts or stops
 * failing (not at every retry). */
static void note_pass(tally_db *db, int rc)
{
	tier *t = db->tier;
	if (rc) {
		atomic_fetch_add(&t->failures, 1);
		set_last_err(t, err_msg());
		if (!atomic_exchange(&t->failing, 1))
			log_emit(&db->log, TALLY_LOG_WARN,
				 "tiering: %s; the data stays local and tiering retries with "
				 "backoff",
				 err_msg());
		else
			log_emit(&db->log, TALLY_LOG_INFO, "tiering: still failing: %s", err_msg());
		t->streak++;
	} else {
		if (atomic_exchange(&t->failing, 0))
			log_emit(&db->log, TALLY_LOG_WARN,
				 "tiering: object storage at %s answers again", s3_where(t->bg));
		t->streak = 0;
	}
}

/* ---------------------------------------------------------------- reads */

/* part_fetch_fn of a remote part's stub: the cache, else one ranged GET. */
static int tier_fetch(void *ctx, const part *p, uint64_t off, size_t len, void *dst)
{
	shard_part *sp = ctx;
	tier *t = sp->db->tier;
	if (cache_get(t, sp->id, off, len, dst)) {
		atomic_fetch_add(&t->hits, 1);
		return 0;
	}
	atomic_fetch_add(&t->misses, 1);
	int64_t now = mono_now();
	if (now < atomic_load(&t->down_until)) {
		char last[ERR_MSG_MAX];
		pthread_mutex_lock(&t->err_mu);
		snprintf(last, sizeof last, "%s", t->last_err);
		pthread_mutex_unlock(&t->err_mu);
		return err_set(TALLY_EREMOTE,
			       "%s: block at offset %llu is in object storage, which failed a "
			       "moment ago (%s); try again shortly",
			       p->path, (unsigned long long)off, last);
	}
	int rc = s3_get_range(t->rd, sp->object, off, len, dst);
	if (rc) {
		if (rc == TALLY_EREMOTE) {
			atomic_store(&t->down_until, now + READ_DOWN_NS);
			set_last_err(t, err_msg());
		}
		return err_prefix(rc, "%s: reading a cold block", p->path);
	}
	atomic_fetch_add(&t->fetches, 1);
	atomic_fetch_add(&t->fetch_bytes, len);
	if (len < 8 || XXH3_64bits(dst, len - 8) != le_get64((const uint8_t *)dst + len - 8))
		return err_set(TALLY_ECORRUPT, "object %s bytes %llu-%llu: block checksum mismatch",
			       sp->object, (unsigned long long)off,
			       (unsigned long long)(off + len - 1));
	cache_put(t, sp->id, off, len, dst);
	return 0;
}

static int cache_has(tier *t, uint64_t id, uint64_t off)
{
	pthread_mutex_lock(&t->cmu);
	centry *e = t->buckets[chash(id, off)];
	while (e && (e->id != id || e->off != off))
		e = e->hnext;
	pthread_mutex_unlock(&t->cmu);
	return e != NULL;
}

/* part_prefetch_fn: a stripe's uncached blocks (adjacent in the object)
 * in one ranged GET, each checked and cached. Best effort: on failure the
 * block reads that follow fetch and report. */
static int tier_prefetch(void *ctx, const part *p, const part_ref *const *refs, uint32_t n)
{
	shard_part *sp = ctx;
	tier *t = sp->db->tier;
	uint32_t i = 0, j = n;
	while (i < n && cache_has(t, sp->id, refs[i]->off))
		i++;
	while (j > i && cache_has(t, sp->id, refs[j - 1]->off))
		j--;
	if (j - i < 2 || mono_now() < atomic_load(&t->down_until))
		return 0; /* nothing to gain over a single block read */
	uint64_t base = refs[i]->off, span = refs[j - 1]->off + refs[j - 1]->len + 8 - base;
	if (span > t->cache_limit / 4)
		return 0;
	uint8_t *buf = mem_alloc(span);
	if (!buf)
		return 0;
	if (s3_get_range(t->rd, sp->object, base, span, buf)) {
		mem_free(buf);
		err_clear();
		return 0;
	}
	atomic_fetch_add(&t->fetches, 1);
	atomic_fetch_add(&t->fetch_bytes, span);
	for (uint32_t k = i; k < j; k++) {
		const uint8_t *b = buf + (refs[k]->off - base);
		size_t len = (size_t)refs[k]->len + 8;
		if (refs[k]->off + len - base > span ||
		    XXH3_64bits(b, len - 8) != le_get64(b + len - 8))
			break; /* the block read will fetch it again and judge */
		cache_put(t, sp->id, refs[k]->off, len, b);
	}
	mem_free(buf);
	(void)p;
	return 0;
}

int tier_attach(tally_db *db, shard_part *sp, const manifest_part *mp)
{
	sp->object = mem_strndup(mp->object, strlen(mp->object));
	if (!sp->object)
		return err_set(-ENOMEM, "out of memory");
	sp->object_sum = mp->object_sum;
	if (db->tier && (sp->p->flags & PART_F_STUB)) {
		sp->p->fetch = tier_fetch;
		sp->p->prefetch = tier_prefetch;
		sp->p->fetch_ctx = sp;
	}
	return 0;
}

int tier_can_merge(tally_db *db, shard_part *const *in, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		if (in[i]->object && (!db->tier || atomic_load(&db->tier->failing)))
			return 0;
	return 1;
}

int tier_fetch_whole(tally_db *db, const shard_part *sp, part **whole)
{
	*whole = NULL;
	tier *t = db->tier;
	if (!t)
		return err_set(TALLY_EREMOTE,
			       "part %016llx is in object storage and tiering is "
			       "not configured",
			       (unsigned long long)sp->id);
	char path[PATH_MAX];
	snprintf(path, sizeof path, "%s/parts/%016llx.fetch", db->dir, (unsigned long long)sp->id);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return err_sys(errno, "create %s", path);
	uint64_t bytes = 0, sum = 0;
	int rc = s3_get_file(t->bg, sp->object, fd, &bytes, &sum);
	close(fd);
	if (!rc && sum != sp->object_sum)
		rc = err_set(TALLY_ECORRUPT,
			     "object %s: checksum %016llx, the manifest says %016llx", sp->object,
			     (unsigned long long)sum, (unsigned long long)sp->object_sum);
	if (!rc)
		rc = part_open_reads(path, (int)db->opt.part_reads, whole);
	if (rc) {
		unlink(path);
		return err_prefix(rc, "fetching part %016llx for a merge",
				  (unsigned long long)sp->id);
	}
	return 0;
}

int tier_get_object(tally_db *db, const char *key, int fd, uint64_t *bytes, uint64_t *sum)
{
	if (!db->tier)
		return err_set(TALLY_EREMOTE, "object %s: tiering is not configured", key);
	return s3_get_file(db->tier->bg, key, fd, bytes, sum);
}

s3_client *tier_client(tally_db *db)
{
	return db->tier ? db->tier->bg : NULL;
}

void tier_release(tally_db *db, uint64_t id, part *whole)
{
	if (!whole)
		return;
	part_close(whole);
	char path[PATH_MAX];
	snprintf(path, sizeof path, "%s/parts/%016llx.fetch", db->dir, (unsigned long long)id);
	unlink(path);
}

/* ---------------------------------------------------------------- uploads */

typedef struct gc_done {
	char **keys;
	uint32_t n;
} gc_done;

static int drop_deleted(manifest *m, void *arg)
{
	const gc_done *gd = arg;
	for (uint32_t i = 0; i < gd->n; i++)
		manifest_gc_remove(m, gd->keys[i]);
	return 0;
}

/* Deletes the objects of the manifest's gc list; commits what went. */
static int gc_pass(tally_db *db)
{
	tier *t = db->tier;
	char **keys = NULL;
	uint32_t n = 0;
	pthread_mutex_lock(&db->man_mu);
	if (db->man.n_gc && (keys = mem_calloc(db->man.n_gc, sizeof *keys)))
		for (; n < db->man.n_gc; n++)
			if (!(keys[n] = mem_strndup(db->man.gc[n], strlen(db->man.gc[n]))))
				break;
	uint32_t want = db->man.n_gc;
	pthread_mutex_unlock(&db->man_mu);
	if (n < want) {
		for (uint32_t i = 0; i < n; i++)
			mem_free(keys[i]);
		mem_free(keys);
		return err_set(-ENOMEM, "out of memory");
	}
	int rc = 0;
	uint32_t done = 0;
	for (; done < n && !rc; done++) {
		/* never delete what a live part still names */
		int live = 0;
		pthread_mutex_lock(&db->man_mu);
		for (uint32_t i = 0; i < db->man.n_parts; i++)
			live |= db->man.parts[i].object &&
				!strcmp(db->man.parts[i].object, keys[done]);
		pthread_mutex_unlock(&db->man_mu);
		if (!live && (rc = s3_delete(t->bg, keys[done])))
			break;
		if (!live)
			atomic_fetch_add(&t->deletes, 1);
	}
	if (done) {
		gc_done gd = {keys, done};
		pthread_mutex_lock(&db->man_mu);
		int src = partset_commit(
			db, &(partset_change){.op = "tier-gc", .edit = drop_deleted, .arg = &gd});
		pthread_mutex_unlock(&db->man_mu);
		rc = rc ? rc : src;
	}
	for (uint32_t i = 0; i < n; i++)
		mem_free(keys[i]);
	mem_free(keys);
	return rc;
}

static int add_intent(manifest *m, void *key)
{
	return manifest_gc_add(m, key);
}

/* Uploads part id of shard s and swaps it for its stub. */
static int tier_one(tally_db *db, shard *s, uint64_t id)
{
	tier *t = db->tier;
	char key[PREFIX_MAX + 64], path[PATH_MAX], dir[PATH_MAX], name[64];
	object_key(t, id, key, sizeof key);
	tier_local_path(db, id, 0, path, sizeof path);
	snprintf(dir, sizeof dir, "%s/parts", db->dir);
	snprintf(name, sizeof name, "%016llx.stub", (unsigned long long)id);
	part *w = NULL;
	int rc;
	/* 1. the intent, and our own reader of the whole part (the file may be
	 * merged away while we upload; an open descriptor keeps it readable) */
	pthread_mutex_lock(&db->man_mu);
	const manifest_part *mp = manifest_find(&db->man, id);
	if (!mp || mp->tier != MTIER_LOCAL) {
		pthread_mutex_unlock(&db->man_mu);
		return 0;
	}
	rc = partset_commit(db,
			    &(partset_change){.op = "tier-intent", .edit = add_intent, .arg = key});
	/* a part deriving its finest distributions from its raw events is
	 * uploaded as a copy with them written (merge_materialise; a file no
	 * manifest names, deleted once its stub is written), so its stub
	 * answers them without fetching the raw columns */
	char mat[PATH_MAX] = "";
	shard_part *sp = rc ? NULL : partset_find(s, id);
	int need = sp ? merge_needs_materialise(db, sp) : 0;
	if (need < 0)
		rc = need;
	if (!rc && need > 0) {
		shard_part *m = NULL;
		manifest_part mrec;
		uint64_t mb;
		if (!(rc = merge_materialise(db, s, sp, &m, &mrec, &mb)) && m) {
			snprintf(mat, sizeof mat, "%s", m->p->path);
			shard_part_free(m);
		}
	}
	if (!rc)
		rc = part_open_reads(mat[0] ? mat : path, (int)db->opt.part_reads, &w);
	pthread_mutex_unlock(&db->man_mu);
	if (rc) {
		if (mat[0])
			unlink(mat);
		return rc;
	}
	db_crash_point(db, "tier:after-intent");
	/* 2. upload and verify */
	s3_put_info pi;
	rc = s3_put_file(t->bg, key, w->fd, w->file_bytes, &pi);
	if (!rc)
		rc = s3_verify(t->bg, key, &pi);
	if (rc) {
		part_close(w);
		if (mat[0])
			unlink(mat);
		return err_prefix(rc, "tiering part %016llx", (unsigned long long)id);
	}
	db_crash_point(db, "tier:after-upload");
	/* 3. the stub */
	uint64_t stub_bytes = 0, size = w->file_bytes;
	rc = part_write_stub(w, dir, name, &stub_bytes);
	part_close(w);
	if (mat[0])
		unlink(mat);
	if (rc)
		return rc;
	db_crash_point(db, "tier:after-stub");
	/* 4. commit, 5. swap */
	char stub[PATH_MAX];
	tier_local_path(db, id, 1, stub, sizeof stub);
	pthread_mutex_lock(&db->man_mu);
	mp = manifest_find(&db->man, id);
	shard_part *old = partset_find(s, id), *ns = NULL;
	if (!mp || mp->tier != MTIER_LOCAL || !old) {
		/* merged away meanwhile: the object is in gc, the stub is ours */
		pthread_mutex_unlock(&db->man_mu);
		unlink(stub);
		return 0;
	}
	/* the record says remote; the key leaves gc with it (the commit) */
	manifest_part rec = *mp;
	rec.bytes = size; /* the object's: a materialised copy may differ */
	rec.tier = MTIER_REMOTE;
	rec.object = key;
	rec.object_sum = pi.xxh3;
	rec.tiered_at = wall_now();
	if ((rc = shard_part_load_as(db, id, &rec, &ns))) {
		pthread_mutex_unlock(&db->man_mu);
		unlink(stub);
		return rc;
	}
	/* the stub replaces the whole part in its place; the .part goes
	 * after the commit */
	rc = partset_commit(db, &(partset_change){.op = "tier",
						  .s = s,
						  .gone = &old,
						  .n_gone = 1,
						  .added = &ns,
						  .recs = &rec,
						  .n_added = 1});
	pthread_mutex_unlock(&db->man_mu);
	if (rc)
		return rc;
	atomic_fetch_add(&t->uploads, 1);
	atomic_fetch_add(&t->upload_bytes, size);
	log_emit(&db->log, TALLY_LOG_INFO,
		 "tiering: part %016llx (%llu bytes) is now %s/%s; %llu bytes stay local",
		 (unsigned long long)id, (unsigned long long)size, s3_where(t->bg), key,
		 (unsigned long long)stub_bytes);
	return 0;
}

/* Sealed, local parts whose partition is tier_after behind the newest
 * event of their table in their shard. Caller holds man_mu. */
static uint32_t due_parts(tally_db *db, uint64_t *ids, uint32_t *shards, uint32_t cap)
{
	tier *t = db->tier;
	uint32_t n = 0;
	if (!t || t->after < 0)
		return 0;
	for (unsigned si = 0; si < db->n_shards; si++) {
		shard *s = db->shards[si];
		for (uint32_t a = 0; a < s->n_parts; a++) {
			shard_part *sp = s->parts[a];
			if (!(sp->flags & MPART_SEALED) || sp->object || retention_raw_gone(sp))
				continue;
			int64_t newest = INT64_MIN;
			for (uint32_t j = 0; j < s->n_parts; j++)
				if (s->parts[j]->table == sp->table &&
				    s->parts[j]->p->info.tmax > newest)
					newest = s->parts[j]->p->info.tmax;
			if (sp->pend > INT64_MAX - t->after || sp->pend + t->after > newest)
				continue;
			if (ids && n < cap) {
				ids[n] = sp->id;
				shards[n] = si;
			}
			n++;
		}
	}
	return n;
}

static int tier_pass_locked(tally_db *db);

/* Two passes at once could upload the same part twice and the loser
 * would delete the winner's stub: passes are serialised. */
static int tier_pass(tally_db *db)
{
	pthread_mutex_lock(&db->tier->pass_mu);
	int rc = tier_pass_locked(db);
	pthread_mutex_unlock(&db->tier->pass_mu);
	return rc;
}

static int tier_pass_locked(tally_db *db)
{
	tier *t = db->tier;
	unsigned aborted = 0;
	/* once per open: leftovers of multipart uploads cut by a crash, which
	 * S3 keeps (and bills) until aborted; best effort, not every server
	 * lists them */
	if (!t->swept && s3_abort_uploads(t->bg, t->prefix, &aborted) == 0) {
		t->swept = 1;
		if (aborted)
			log_emit(&db->log, TALLY_LOG_INFO, "tiering: aborted %u unfinished uploads",
				 aborted);
	} else if (!t->swept && strstr(err_msg(), "NotImplemented")) {
		t->swept = 1;
	}
	err_clear();
	int rc = gc_pass(db);
	if (rc)
		return rc;
	for (;;) {
		uint64_t ids[64];
		uint32_t shards[64];
		pthread_mutex_lock(&db->man_mu);
		uint32_t n = due_parts(db, ids, shards, 64);
		pthread_mutex_unlock(&db->man_mu);
		if (!n)
			return 0;
		for (uint32_t i = 0; i < n && i < 64; i++) {
			pthread_mutex_lock(&db->tier->mu);
			int stop = db->tier->stop;
			pthread_mutex_unlock(&db->tier->mu);
			if (stop)
				return 0;
			if ((rc = tier_one(db, db->shards[shards[i]], ids[i])))
				return rc;
		}
		if (n <= 64)
			return 0;
	}
}

TALLY_API int tally_db_tier(tally_db *db)
{
	err_clear();
	if (!db->tier)
		return err_set(TALLY_EINVAL, "tiering is not configured (no bucket)");
	int rc = tier_pass(db);
	char msg[ERR_MSG_MAX];
	snprintf(msg, sizeof msg, "%s", err_msg());
	note_pass(db, rc);
	if (rc)
		err_set(rc, "%s", msg);
	return rc;
}

/* ---------------------------------------------------------------- thread */

static void *tier_main(void *arg)
{
	tally_db *db = arg;
	tier *t = db->tier;
	pthread_mutex_lock(&t->mu);
	while (!t->stop) {
		uint64_t ms = IDLE_CHECK_MS;
		if (atomic_load(&t->failing)) {
			ms = UINT64_C(1000) << (t->streak < 9 ? t->streak : 9);
			ms = ms > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : ms;
		}
		if (!t->kick || atomic_load(&t->failing)) {
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			uint64_t ns = (uint64_t)ts.tv_nsec + (ms % 1000) * 1000000;
			ts.tv_sec += (time_t)(ms / 1000 + ns / 1000000000);
			ts.tv_nsec = (long)(ns % 1000000000);
			pthread_cond_timedwait(&t->cond, &t->mu, &ts);
		}
		if (t->stop)
			break;
		t->kick = 0;
		pthread_mutex_unlock(&t->mu);
		note_pass(db, tier_pass(db));
		pthread_mutex_lock(&t->mu);
	}
	pthread_mutex_unlock(&t->mu);
	return NULL;
}

void tier_kick(tally_db *db)
{
	tier *t = db->tier;
	if (!t || !t->started)
		return;
	pthread_mutex_lock(&t->mu);
	t->kick = 1;
	pthread_cond_signal(&t->cond);
	pthread_mutex_unlock(&t->mu);
}

/* ---------------------------------------------------------------- setup */

int tier_open(tally_db *db)
{
	const tally_options *o = &db->opt;
	/* Only the options: the library reads no environment (tallyd resolves
	 * $TALLY_S3_BUCKET, $AWS_* and the like in wire/conf.c). */
	const char *bucket = o->tier_bucket;
	if (!bucket || !*bucket)
		return 0;
	const char *prefix = o->tier_prefix ? o->tier_prefix : "";
	if (strlen(prefix) > PREFIX_MAX || prefix[0] == '/' ||
	    strspn(prefix, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-") !=
		    strlen(prefix))
		return err_set(TALLY_EINVAL,
			       "tier_prefix '%.80s': up to %d of A-Z a-z 0-9 / . _ -, "
			       "not starting with /",
			       prefix, PREFIX_MAX);
	if (o->tier_part_bytes && o->tier_part_bytes < S3_PART_MIN)
		return err_set(TALLY_EINVAL, "tier_part_bytes: %llu is under S3's 5 MiB",
			       (unsigned long long)o->tier_part_bytes);
	s3_config c = {
		.endpoint = o->tier_endpoint,
		.bucket = bucket,
		.region = o->tier_region,
		.access_key = o->tier_access_key,
		.secret_key = o->tier_secret_key,
		.session_token = o->tier_session_token,
		.timeout_ms = o->tier_timeout_ms,
		.retries = o->tier_retries ? o->tier_retries : 4,
		.part_bytes = o->tier_part_bytes,
	};
	tier *t = mem_calloc(1, sizeof *t);
	if (!t)
		return err_set(-ENOMEM, "out of memory");
	t->db = db;
	pthread_mutex_init(&t->mu, NULL);
	pthread_cond_init(&t->cond, NULL);
	pthread_mutex_init(&t->err_mu, NULL);
	pthread_mutex_init(&t->cmu, NULL);
	pthread_mutex_init(&t->pass_mu, NULL);
	db->tier = t;
	int rc = s3_open(&c, &t->bg);
	c.retries = 1;
	if (!rc)
		rc = s3_open(&c, &t->rd);
	if (rc)
		return err_prefix(rc, "tiering");
	t->prefix = mem_strndup(prefix, strlen(prefix));
	t->buckets = mem_calloc(CACHE_BUCKETS, sizeof *t->buckets);
	if (!t->prefix || !t->buckets)
		return err_set(-ENOMEM, "out of memory");
	t->after = o->tier_after ? o->tier_after : DEFAULT_TIER_AFTER;
	t->cache_limit = o->tier_cache_bytes ? o->tier_cache_bytes : DEFAULT_CACHE;
	log_emit(&db->log, TALLY_LOG_INFO, "tiering to %s, prefix '%s', after %lld s",
		 s3_where(t->bg), t->prefix, (long long)(t->after / TALLY_NS_PER_SEC));
	return 0;
}

int tier_start(tally_db *db)
{
	tier *t = db->tier;
	if (!t || db->opt.no_background)
		return 0;
	int rc = pthread_create(&t->th, NULL, tier_main, db);
	if (rc)
		return err_sys(rc, "starting the tiering thread");
	t->started = 1;
	return 0;
}

void tier_close(tally_db *db)
{
	tier *t = db->tier;
	if (!t)
		return;
	if (t->started) {
		pthread_mutex_lock(&t->mu);
		t->stop = 1;
		pthread_cond_signal(&t->cond);
		pthread_mutex_unlock(&t->mu);
		pthread_join(t->th, NULL);
	}
	while (t->head)
		cache_drop(t, t->head);
	mem_free(t->buckets);
	s3_close(t->bg);
	s3_close(t->rd);
	mem_free(t->prefix);
	pthread_mutex_destroy(&t->mu);
	pthread_cond_destroy(&t->cond);
	pthread_mutex_destroy(&t->err_mu);
	pthread_mutex_destroy(&t->cmu);
	pthread_mutex_destroy(&t->pass_mu);
	mem_free(t);
	db->tier = NULL;
}

void tier_stats(tally_db *db, tally_stats *out)
{
	pthread_mutex_lock(&db->man_mu);
	for (uint32_t i = 0; i < db->man.n_parts; i++)
		if (db->man.parts[i].tier == MTIER_REMOTE) {
			out->tiered_parts++;
			out->remote_bytes += db->man.parts[i].bytes;
		}
	out->tier_gc_pending = db->man.n_gc;
	out->tier_due = due_parts(db, NULL, NULL, 0);
	pthread_mutex_unlock(&db->man_mu);
	tier *t = db->tier;
	if (!t)
		return;
	out->tier_state = atomic_load(&t->failing) ? 2 : 1;
	out->tier_uploads = atomic_load(&t->uploads);
	out->tier_upload_bytes = atomic_load(&t->upload_bytes);
	out->tier_failures = atomic_load(&t->failures);
	out->tier_deletes = atomic_load(&t->deletes);
	out->cold_reads = atomic_load(&t->fetches);
	out->cold_read_bytes = atomic_load(&t->fetch_bytes);
	out->cold_cache_hits = atomic_load(&t->hits);
	out->cold_cache_misses = atomic_load(&t->misses);
	pthread_mutex_lock(&t->cmu);
	out->cold_cache_bytes = t->cache_bytes;
	pthread_mutex_unlock(&t->cmu);
	s3_client *cl[2] = {t->bg, t->rd};
	for (int i = 0; i < 2; i++) {
		s3_stats *st = s3_client_stats(cl[i]);
		out->s3_requests += atomic_load(&st->requests);
		out->s3_retries += atomic_load(&st->retries);
		out->s3_errors += atomic_load(&st->failures);
	}
}
