/*
 * db.c — opening a database, writers, the write path, sync and stats.
 *
 * A write stages its accepted rows in the writer's column batch without any
 * shared lock (names resolve through the writer's own cache of the
 * catalog), then takes its shard's lock once to put the batch into the WAL
 * and apply it to the memtable. Recovery feeds WAL records through the same
 * apply, so a replayed event takes exactly the path a fresh one took.
 */
#include "db.h"
#include "dist.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "err.h"
#include "fileio.h"
#include "flush.h"
#include "mem.h"
#include "tier.h"

#define DEFAULT_MEMORY_LIMIT (UINT64_C(4) << 30)
#define DEFAULT_MAX_LINE     (1u << 20)
#define COMMIT_ROWS          65536       /* a staged batch commits at this many rows */
#define COMMIT_ARENA         (16u << 20) /* or at this many string bytes */
/* binary batches are sliced at COMMIT_ROWS: whole bytes of their bitmaps */
_Static_assert(COMMIT_ROWS % 8 == 0, "slices must start on a bitmap byte");

TALLY_API void tally_options_init_sized(tally_options *opt, size_t size)
{
	if (size < sizeof opt->size)
		return;
	tally_options d = {.size = sizeof d};
	d.shards = 1;
	d.n_levels = 3;
	d.levels[0] = TALLY_5M;
	d.levels[1] = TALLY_1H;
	d.levels[2] = TALLY_1D;
	d.memory_limit = DEFAULT_MEMORY_LIMIT;
	d.max_line_bytes = DEFAULT_MAX_LINE;
	d.sync_mode = TALLY_SYNC_ON_REQUEST;
	d.log_level = TALLY_LOG_WARN;
	/* past our struct: options of a newer header, whose 0 is their default */
	memset(opt, 0, size);
	memcpy(opt, &d, size < sizeof d ? size : sizeof d);
	opt->size = size;
}

/* The caller's options into *dst: the first opt->size bytes over the
 * defaults. A caller built against a newer tally.h may pass a bigger
 * struct; its options we do not know must be 0 (their default), or it
 * would believe in a setting we ignore. */
static int options_take(tally_options *dst, const tally_options *opt)
{
	tally_options_init(dst);
	if (!opt)
		return 0;
	if (opt->size < TALLY_OPTIONS_SIZE_0_1)
		return err_set(TALLY_EINVAL,
			       "tally_options.size is %zu, less than any tally.h's (%zu): "
			       "fill the options with tally_options_init first",
			       opt->size, (size_t)TALLY_OPTIONS_SIZE_0_1);
	for (size_t i = sizeof *dst; i < opt->size; i++)
		if (((const unsigned char *)opt)[i])
			return err_set(TALLY_EINVAL,
				       "tally_options: byte %zu of %zu is set, past the %zu this "
				       "libtally %d.%d knows: an option of a newer tally.h",
				       i, opt->size, sizeof *dst, TALLY_VERSION_MAJOR,
				       TALLY_VERSION_MINOR);
	memcpy(dst, opt, opt->size < sizeof *dst ? opt->size : sizeof *dst);
	dst->size = sizeof *dst;
	return 0;
}

/* storage/ cannot include tally.h: its own names for the same values */
_Static_assert((int)TALLY_PART_READS_MMAP == (int)PART_READS_MMAP &&
		       (int)TALLY_PART_READS_PREAD == (int)PART_READS_PREAD,
	       "tally_options.part_reads passes straight to part_open_reads");

static int check_options(tally_options *o, levels *L)
{
	if (o->shards == 0)
		o->shards = 1;
	if (o->shards > 256)
		return err_set(TALLY_EINVAL, "shards: %u is more than 256", o->shards);
	if (o->n_levels == 0) {
		o->n_levels = 3;
		o->levels[0] = TALLY_5M;
		o->levels[1] = TALLY_1H;
		o->levels[2] = TALLY_1D;
	}
	if (o->n_levels > TALLY_LEVELS_MAX)
		return err_set(TALLY_EINVAL, "n_levels: %u is more than %d", o->n_levels,
			       TALLY_LEVELS_MAX);
	for (unsigned i = 0; i < o->n_levels; i++) {
		int64_t w = o->levels[i];
		if (w <= 0 || w > LEVEL_WIDTH_MAX)
			return err_set(TALLY_EINVAL, "level %u: width %lld ns out of range", i,
				       (long long)w);
		if (i && (w <= o->levels[i - 1] || w % o->levels[i - 1]))
			return err_set(TALLY_EINVAL,
				       "level %u: width %lld ns is not a multiple of level %u's "
				       "%lld ns",
				       i, (long long)w, i - 1, (long long)o->levels[i - 1]);
		L->w[i] = w;
	}
	L->n = o->n_levels;
	if (o->align_offset <= -TALLY_1D || o->align_offset >= TALLY_1D)
		return err_set(TALLY_EINVAL, "align_offset: %lld ns is a day or more",
			       (long long)o->align_offset);
	L->offset = o->align_offset;
	if (o->memory_limit == 0)
		o->memory_limit = DEFAULT_MEMORY_LIMIT;
	if (o->max_line_bytes == 0)
		o->max_line_bytes = DEFAULT_MAX_LINE;
	if (o->max_line_bytes < 64)
		return err_set(TALLY_EINVAL, "max_line_bytes: %u is under 64",
			       (unsigned)o->max_line_bytes);
	if (o->sync_mode != TALLY_SYNC_ON_REQUEST && o->sync_mode != TALLY_SYNC_EACH_WRITE)
		return err_set(TALLY_EINVAL, "sync_mode: unknown value %d", (int)o->sync_mode);
	if (o->late_threshold < 0)
		return err_set(TALLY_EINVAL, "late_threshold: negative");
	if (o->late_threshold == 0)
		o->late_threshold = L->w[0];
	if (o->cache_bytes == 0)
		o->cache_bytes = UINT64_C(256) << 20;
	if (o->part_reads == 0)
		o->part_reads = TALLY_PART_READS_DEFAULT;
	if (o->part_reads != TALLY_PART_READS_MMAP && o->part_reads != TALLY_PART_READS_PREAD)
		return err_set(TALLY_EINVAL, "part_reads: unknown value %llu (1: mmap, 2: pread)",
			       (unsigned long long)o->part_reads);
	if (o->seal_grace == 0)
		o->seal_grace = TALLY_1H;
	if (o->seal_grace < 0)
		return err_set(TALLY_EINVAL, "seal_grace: negative");
	/* Bigger memtables mean fewer, bigger parts and one merge tier less
	 * for every row (measured: durable TCP ingest 5.9 -> 6.3-7.0 M/s with
	 * 64 -> 256 MiB; bench/results/tcp-2026-11-23.md). */
	if (o->memtable_bytes == 0)
		o->memtable_bytes = UINT64_C(256) << 20;
	if (o->memtable_bytes > o->memory_limit / (2 * (uint64_t)o->shards))
		o->memtable_bytes = o->memory_limit / (2 * (uint64_t)o->shards);
	if (o->flush_interval_ms == 0)
		o->flush_interval_ms = 60000;
	int64_t top = L->w[L->n - 1];
	if (o->partition_width == 0)
		o->partition_width = top > TALLY_1D ? top : TALLY_1D;
	if (o->partition_width < top || o->partition_width % top ||
	    o->partition_width > LEVEL_WIDTH_MAX)
		return err_set(TALLY_EINVAL,
			       "partition_width: %lld ns is not a multiple of the coarsest level "
			       "(%lld ns)",
			       (long long)o->partition_width, (long long)top);
	return 0;
}

uint64_t db_key_memory(tally_db *db)
{
	uint64_t n = atomic_load_explicit(&db->cat.key_bytes, memory_order_relaxed);
	for (unsigned i = 0; i < db->n_shards; i++)
		n += atomic_load_explicit(&db->shards[i]->key_bytes, memory_order_relaxed);
	return n;
}

uint64_t db_memory(tally_db *db)
{
	uint64_t n =
		db_key_memory(db) + atomic_load_explicit(&db->query_bytes, memory_order_relaxed);
	for (unsigned i = 0; i < db->n_shards; i++)
		n += atomic_load_explicit(&db->shards[i]->mem_bytes, memory_order_relaxed) +
		     atomic_load_explicit(&db->shards[i]->rollup_bytes, memory_order_relaxed);
	return n;
}

/* ---------------------------------------------------------------- open */

/* Shards a previous open wrote WALs for: reopening with fewer would orphan
 * their logs, so the database keeps at least that many. */
static unsigned existing_shards(const char *waldir)
{
	DIR *d = opendir(waldir);
	if (!d)
		return 0;
	unsigned n = 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		unsigned id;
		char tail;
		if (sscanf(e->d_name, "shard-%u%c", &id, &tail) == 1 && id < 256 && id + 1 > n)
			n = id + 1;
	}
	closedir(d);
	return n;
}

static int64_t now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_REALTIME, &t);
	return (int64_t)t.tv_sec * TALLY_NS_PER_SEC + t.tv_nsec;
}

typedef struct replay_ctx {
	tally_db *db;
	shard *sh;
	stage_batch batch;
} replay_ctx;

static int replay_record(void *ctx, uint64_t seq, const void *payload, size_t len)
{
	replay_ctx *rc = ctx;
	stage_batch_reset(&rc->batch);
	int r = stage_batch_decode(&rc->batch, &rc->db->cat, payload, len);
	if (r)
		return err_prefix(r, "shard %u WAL record %llu", rc->sh->id,
				  (unsigned long long)seq);
	if ((r = shard_apply(rc->sh, &rc->batch)))
		return r;
	return rc->batch.labelled ? idem_note(&rc->db->idem, rc->batch.source, rc->batch.source_len,
					      rc->batch.seq, now_ns())
				  : 0;
}

#ifdef TALLY_TEST_HOOKS
void db_crash_point(const tally_db *db, const char *step)
{
	if (db->crash_at && !strcmp(db->crash_at, step))
		kill(getpid(), SIGKILL);
}
#endif

/* 1 when name is one the engine writes in parts/: "<16 hex>.part" or
 * ".stub", maybe with ".tmp" after, or ".fetch" (a merge's copy of a
 * tiered part's object); *id and *stub say which, *tmp that the file is
 * never named by a manifest. */
static int engine_part_name(const char *name, uint64_t *id, int *stub, int *tmp)
{
	size_t n = strlen(name);
	uint64_t v = 0;
	if (n < 17)
		return 0;
	for (int i = 0; i < 16; i++) {
		char c = name[i];
		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
			return 0;
		v = v << 4 | (uint64_t)(c <= '9' ? c - '0' : c - 'a' + 10);
	}
	const char *ext = name + 16;
	*id = v;
	*stub = !strncmp(ext, ".stub", 5);
	*tmp = strcmp(ext, ".part") && strcmp(ext, ".stub");
	return !strcmp(ext, ".part") || !strcmp(ext, ".stub") || !strcmp(ext, ".part.tmp") ||
	       !strcmp(ext, ".stub.tmp") || !strcmp(ext, ".fetch");
}

/* Counts the finished part files in parts/ (*first gets one's name). */
static unsigned count_parts(const char *parts_dir, char *first, size_t cap)
{
	DIR *d = opendir(parts_dir);
	unsigned n = 0;
	struct dirent *e;
	while (d && (e = readdir(d))) {
		uint64_t id;
		int stub, tmp;
		if (engine_part_name(e->d_name, &id, &stub, &tmp) && !tmp && !n++)
			snprintf(first, cap, "%.63s", e->d_name);
	}
	if (d)
		closedir(d);
	return n;
}

/* With no MANIFEST, part files are harmless only as the leftovers of a
 * first flush that never committed: then nothing was ever trimmed from
 * the WAL, whose every shard still starts at seq 1. Otherwise the
 * manifest that names them is lost, and deleting them as orphans (as
 * this once did) would lose the data: refuse, and change nothing. */
static int check_lost_manifest(tally_db *db, const char *parts_dir)
{
	char first[256] = "", path[PATH_MAX];
	unsigned n = count_parts(parts_dir, first, sizeof first);
	if (!n)
		return 0;
	unsigned at_one = 0, other = 0;
	uint64_t low = 0;
	for (unsigned i = 0; i < MANIFEST_SHARDS_MAX; i++) {
		uint64_t f;
		snprintf(path, sizeof path, "%s/wal/shard-%03u", db->dir, i);
		int rc = wal_dir_first_seq(path, &f);
		if (rc)
			return rc;
		at_one += f == 1;
		other += f > 1;
		low = f > 1 && (!low || f < low) ? f : low;
	}
	if (at_one && !other)
		return 0;
	char what[96];
	if (other)
		snprintf(what, sizeof what, "its WAL starts at seq %llu", (unsigned long long)low);
	else
		snprintf(what, sizeof what, "it has no WAL");
	return err_set(TALLY_ECORRUPT,
		       "%s has no MANIFEST, but %s holds %u part files (%s, ...) and %s: the "
		       "manifest that names them is lost. Refusing to open; nothing was changed. "
		       "Restore %s/MANIFEST, or move parts/ and wal/ aside to start empty",
		       db->dir, parts_dir, n, first, what, db->dir);
}

/* Part files the manifest does not name are leftovers of a flush or merge
 * that did not commit: delete them, and only names the engine writes.
 * Anything else (an operator's file, say) is moved to parts/.unknown/. */
static void remove_orphans(tally_db *db, const char *parts_dir)
{
	DIR *d = opendir(parts_dir);
	if (!d)
		return;
	struct dirent *e;
	while ((e = readdir(d))) {
		char path[2 * PATH_MAX];
		snprintf(path, sizeof path, "%s/%s", parts_dir, e->d_name);
		if (e->d_name[0] == '.')
			continue;
		uint64_t id;
		int stub, tmp;
		if (!engine_part_name(e->d_name, &id, &stub, &tmp)) {
			char aside[3 * PATH_MAX];
			snprintf(aside, sizeof aside, "%s/.unknown", parts_dir);
			int rc = fio_mkdir(aside);
			snprintf(aside, sizeof aside, "%s/.unknown/%s", parts_dir, e->d_name);
			if (!rc && fio_rename(path, aside) == 0)
				log_emit(&db->log, TALLY_LOG_WARN,
					 "%s is not a file tally writes: moved to %s", path, aside);
			else
				log_emit(&db->log, TALLY_LOG_WARN,
					 "%s is not a file tally writes, and could not be moved "
					 "aside (%s): left as it is",
					 path, rc ? err_msg() : strerror(errno));
			continue;
		}
		const manifest_part *mp = tmp ? NULL : manifest_find(&db->man, id);
		if (mp && mp->tier == MTIER_REMOTE && !stub) {
			/* tiered: the stub replaces the whole part, once it exists */
			char stubp[PATH_MAX];
			tier_local_path(db, id, 1, stubp, sizeof stubp);
			if (!access(stubp, F_OK))
				mp = NULL;
		} else if (mp && mp->tier != MTIER_REMOTE && stub) {
			mp = NULL; /* a stub whose upload never committed */
		}
		if (!mp && fio_unlink(path) == 0)
			log_emit(&db->log, TALLY_LOG_INFO, "removed %s: no manifest names it",
				 path);
	}
	closedir(d);
}

/* The background flusher: wakes on a kick (a memtable passed its size) or
 * every second to check ages, and flushes what asks for it. */
/* opt.prefault: block by block, the shards in turn (each has memory
 * early), every shard's first memtable worth of blocks into its pool. */
static void *prefault_main(void *arg)
{
	tally_db *db = arg;
	uint64_t per_shard = db->opt.memtable_bytes / ARENA_BLOCK;
	for (uint64_t b = 0; b < per_shard; b++) {
		for (unsigned i = 0; i < db->n_shards; i++) {
			if (atomic_load(&db->prefault_stop))
				return NULL;
			arena_pool_prefill_one(&db->shards[i]->pool); /* full: taken already */
			atomic_fetch_sub(&db->prefault_pending, (uint64_t)ARENA_BLOCK);
		}
	}
	if (!atomic_load(&db->prefault_stop))
		rc_prepare(db);
	return NULL;
}

static void *flusher_main(void *arg)
{
	tally_db *db = arg;
	pthread_mutex_lock(&db->bg_mu);
	while (!db->bg_stop) {
		if (!db->bg_kick) {
			struct timespec t;
			clock_gettime(CLOCK_REALTIME, &t);
			t.tv_sec += 1;
			pthread_cond_timedwait(&db->bg_cond, &db->bg_mu, &t);
		}
		if (db->bg_stop)
			break;
		db->bg_kick = 0;
		pthread_mutex_unlock(&db->bg_mu);
		if (flush_run(db, 0))
			log_emit(&db->log, TALLY_LOG_ERROR, "flush failed (will retry): %s",
				 err_msg());
		else if (merge_run(db))
			log_emit(&db->log, TALLY_LOG_ERROR, "merge failed (will retry): %s",
				 err_msg());
		else
			tier_kick(db); /* a merge may have sealed something due */
		if (!db->read_only)
			retention_tick(db);
		rc_prepare(db);
		pthread_mutex_lock(&db->bg_mu);
	}
	pthread_mutex_unlock(&db->bg_mu);
	return NULL;
}

void db_kick_flusher(tally_db *db)
{
	pthread_mutex_lock(&db->bg_mu);
	db->bg_kick = 1;
	pthread_cond_signal(&db->bg_cond);
	pthread_mutex_unlock(&db->bg_mu);
}

TALLY_API int tally_db_open(const char *dir, const tally_options *opt, tally_db **out)
{
	*out = NULL;
	err_clear();
	if (!dir || !*dir)
		return err_set(TALLY_EINVAL, "tally_db_open: empty directory name");
	tally_db *db = mem_calloc(1, sizeof *db);
	if (!db)
		return err_set(-ENOMEM, "out of memory");
	db->lock_fd = -1;
#ifdef TALLY_TEST_HOOKS
	const char *crash = getenv("TALLY_CRASH_AT");
	if (crash && *crash)
		db->crash_at = mem_strndup(crash, strlen(crash));
#endif
	pthread_mutex_init(&db->man_mu, NULL);
	idem_init(&db->idem);
	retention_init(&db->ret);
	rc_init(&db->rcache);
	pthread_mutex_init(&db->scratch_mu, NULL);
	pthread_mutex_init(&db->bg_mu, NULL);
	pthread_cond_init(&db->bg_cond, NULL);
	int rc;
	char path[PATH_MAX];
	if ((rc = options_take(&db->opt, opt)))
		goto fail;
	const char *table_keys = db->opt.table_keys;
	db->opt.table_keys = NULL; /* copied into the catalog below */
	if ((rc = check_options(&db->opt, &db->L)))
		goto fail;
	idem_configure(&db->idem, db->opt.label_window, db->opt.label_expiry);
	rc = retention_set(db, db->opt.retention);
	db->opt.retention = NULL; /* copied: the caller's string may go */
	if (rc)
		goto fail;
	db->log = (log_sink){db->opt.log_fn, db->opt.log_ctx, db->opt.log_level};
	if (!(db->dir = mem_strndup(dir, strlen(dir)))) {
		rc = err_set(-ENOMEM, "out of memory");
		goto fail;
	}
	if ((rc = catalog_init(&db->cat, table_keys)))
		goto fail;
	if ((rc = dist_conf_parse(db->opt.distributions, &db->dists)))
		goto fail;
	db->opt.distributions = NULL; /* parsed: the caller's string is not kept */
	db->cat.dists = db->dists;
	if ((rc = fio_mkdir(dir)))
		goto fail;
	snprintf(path, sizeof path, "%s/LOCK", dir);
	db->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (db->lock_fd < 0) {
		rc = err_sys(errno, "open %s", path);
		goto fail;
	}
	if (flock(db->lock_fd, LOCK_EX | LOCK_NB)) {
		rc = errno == EWOULDBLOCK
			     ? err_set(TALLY_ELOCKED, "%s is in use by another process", dir)
			     : err_sys(errno, "flock %s", path);
		goto fail;
	}
	snprintf(path, sizeof path, "%s/wal", dir);
	if ((rc = fio_mkdir(path)))
		goto fail;
	char parts_dir[PATH_MAX];
	snprintf(parts_dir, sizeof parts_dir, "%s/parts", dir);
	if ((rc = fio_mkdir(parts_dir)))
		goto fail;
	snprintf(path, sizeof path, "%s/MANIFEST", dir);
	int have_manifest = access(path, F_OK) == 0;
	if (!have_manifest && (rc = check_lost_manifest(db, parts_dir)))
		goto fail;
	if ((rc = manifest_load(dir, &db->man)))
		goto fail;
	snprintf(path, sizeof path, "%s/wal", dir);
	unsigned n = existing_shards(path);
	if (db->man.n_shards > n)
		n = db->man.n_shards;
	if (n > db->opt.shards) {
		log_emit(&db->log, TALLY_LOG_INFO,
			 "%s has data of %u shards; opening with %u shards instead of %u", dir, n,
			 n, db->opt.shards);
		db->opt.shards = n;
	}
	db->partition_width = db->opt.partition_width;
	db->rcache.limit = db->opt.cache_bytes;
	/* before the parts: tiered ones need the object store to read */
	rc = tier_open(db);
	/* copied by tier_open (the S3 client): forget the caller's strings */
	db->opt.tier_access_key = db->opt.tier_secret_key = db->opt.tier_session_token = NULL;
	db->opt.tier_bucket = db->opt.tier_endpoint = db->opt.tier_region = NULL;
	db->opt.tier_prefix = NULL;
	if (rc)
		goto fail;
	db->shards = mem_calloc(db->opt.shards, sizeof *db->shards);
	if (!db->shards) {
		rc = err_set(-ENOMEM, "out of memory");
		goto fail;
	}
	for (unsigned i = 0; i < db->opt.shards; i++) {
		if ((rc = shard_create(i, &db->L, db->opt.late_threshold, db->opt.memtable_bytes,
				       &db->shards[i]))) {
			err_set(rc, "out of memory");
			goto fail;
		}
		db->n_shards = i + 1;
	}
	/* parts first: the WAL replays only what they do not hold */
	for (uint32_t i = 0; i < db->man.n_parts; i++) {
		const manifest_part *mp = &db->man.parts[i];
		shard_part *sp;
		if ((rc = shard_part_load(db, mp->id, &sp)))
			goto fail;
		sp->level = mp->level;
		sp->flags = mp->flags;
		if (sp->p->info.partition_width != db->partition_width) {
			shard_part_free(sp);
			rc = err_set(TALLY_EINVAL, "%s: partitions of %lld ns, opened with %lld ns",
				     dir, (long long)sp->p->info.partition_width,
				     (long long)db->partition_width);
			goto fail;
		}
		if ((rc = shard_add_part(db->shards[mp->shard], sp))) {
			shard_part_free(sp);
			goto fail;
		}
		db->shards[mp->shard]->flushed_events += mp->rows;
		if ((rc = catalog_part_keys(sp->table, sp->p)))
			goto fail;
	}
	remove_orphans(db, parts_dir);
	/* the labels of trimmed WAL records; the WAL adds its own */
	if ((rc = idem_load(&db->idem, dir)))
		goto fail;
	for (unsigned i = 0; i < db->n_shards; i++) {
		snprintf(path, sizeof path, "%s/wal/shard-%03u", dir, i);
		if (i < db->man.n_shards && access(path, F_OK)) {
			/* created at the first open, before any flush named the shard */
			rc = err_set(TALLY_ECORRUPT,
				     "%s is missing, but %s/MANIFEST names shard %u: its "
				     "unflushed writes would be lost. Refusing to open",
				     path, dir, i);
			goto fail;
		}
		wal_options wo = {.segment_bytes = db->opt.wal_segment_bytes,
				  .log = db->log,
				  .read_only_on_damage = db->opt.wal_damage_read_only};
		replay_ctx ctx = {.db = db, .sh = db->shards[i]};
		stage_batch_init(&ctx.batch);
		rc = wal_open(path, &wo, i < db->man.n_shards ? db->man.flushed_seq[i] : 0,
			      replay_record, &ctx, &db->shards[i]->wal);
		stage_batch_free(&ctx.batch);
		if (rc)
			goto fail;
		if (wal_failed(db->shards[i]->wal))
			db->read_only = 1; /* damaged, and the caller chose read-only */
	}
	if (db->read_only) {
		for (unsigned i = 0; i < db->n_shards; i++)
			db->shards[i]->failed = 1;
		db->opt.no_background = 1;
		log_emit(&db->log, TALLY_LOG_ERROR,
			 "%s: opened read-only: a WAL is damaged (see above); writes are refused "
			 "and no file changes until it is repaired and the database reopened",
			 dir);
	}
	if (!db->opt.no_background) {
		if ((rc = pthread_create(&db->flusher, NULL, flusher_main, db))) {
			rc = err_sys(rc, "starting the flusher thread");
			goto fail;
		}
		db->flusher_started = 1;
		if (db->opt.prefault) {
			atomic_store(&db->prefault_pending, db->opt.memtable_bytes / ARENA_BLOCK *
								    ARENA_BLOCK * db->n_shards);
			if ((rc = pthread_create(&db->prefaulter, NULL, prefault_main, db))) {
				rc = err_sys(rc, "starting the prefault thread");
				goto fail;
			}
			db->prefaulter_started = 1;
		}
	}
	if ((rc = tier_start(db)))
		goto fail;
	uint64_t events = 0;
	for (unsigned i = 0; i < db->n_shards; i++)
		events += db->shards[i]->active->events;
	if (events)
		log_emit(&db->log, TALLY_LOG_INFO, "%s: recovered %llu events from the WAL", dir,
			 (unsigned long long)events);
	err_clear();
	*out = db;
	return 0;
fail:
	tally_db_close(db);
	return rc;
}

TALLY_API void tally_db_close(tally_db *db)
{
	if (!db)
		return;
	if (db->prefaulter_started) {
		atomic_store(&db->prefault_stop, 1);
		pthread_join(db->prefaulter, NULL);
	}
	if (db->flusher_started) {
		pthread_mutex_lock(&db->bg_mu);
		db->bg_stop = 1;
		pthread_cond_signal(&db->bg_cond);
		pthread_mutex_unlock(&db->bg_mu);
		pthread_join(db->flusher, NULL);
	}
	/* the tiering thread stops before the parts it swaps go */
	tier_close(db);
	for (unsigned i = 0; i < db->n_shards; i++) {
		shard *s = db->shards[i];
		wal_close(s->wal);
		partset_close(s);
		shard_destroy(s);
	}
	mem_free(db->shards);
	for (unsigned i = 0; i < db->n_scratch; i++) {
		part_scratch_free(db->scratch[i]);
		mem_free(db->scratch[i]);
	}
	manifest_free(&db->man);
	catalog_free(&db->cat);
	dist_conf_free(db->dists);
	if (db->lock_fd >= 0)
		close(db->lock_fd);
	rc_free(&db->rcache);
	pthread_mutex_destroy(&db->man_mu);
	idem_free(&db->idem);
	retention_free(&db->ret);
	pthread_mutex_destroy(&db->scratch_mu);
	pthread_mutex_destroy(&db->bg_mu);
	pthread_cond_destroy(&db->bg_cond);
	mem_free(db->crash_at);
	mem_free(db->dir);
	mem_free(db);
}

static int refuse_read_only(const tally_db *db)
{
	return err_set(TALLY_EFAILED, "%s was opened read-only (a damaged WAL): nothing changes",
		       db->dir);
}

TALLY_API int tally_db_flush(tally_db *db)
{
	err_clear();
	return db->read_only ? refuse_read_only(db) : flush_run(db, 1);
}

TALLY_API int tally_db_merge(tally_db *db)
{
	err_clear();
	return db->read_only ? refuse_read_only(db) : merge_run(db);
}

/* ---------------------------------------------------------------- sync */

/* TALLY_EFAILED for a failed shard, saying why: a failed WAL (a failed
 * fsync, or opened read-only after damage) tells its own story. */
static int shard_refuse(const shard *s)
{
	if (wal_failed(s->wal))
		return err_prefix(wal_failed_error(s->wal), "shard %u", s->id);
	return err_set(TALLY_EFAILED, "shard %u failed earlier; reopen the database", s->id);
}

/* A failed fsync fails the shard for good: its writes since the last good
 * sync may be gone from the page cache, and retrying the fsync would
 * report them durable. The WAL cuts them (wal.h), so what writers were
 * told failed does not come back at the next open. */
static int shard_sync(shard *s)
{
	uint64_t lsn = 0;
	pthread_rwlock_wrlock(&s->lock);
	int rc = s->failed ? shard_refuse(s) : wal_write_out(s->wal, &lsn);
	pthread_rwlock_unlock(&s->lock);
	if (!rc)
		rc = wal_sync_to(s->wal, lsn);
	if (rc == TALLY_EFAILED) {
		pthread_rwlock_wrlock(&s->lock);
		s->failed = 1;
		wal_write_out(s->wal, NULL); /* cuts the bytes no fsync covered now */
		pthread_rwlock_unlock(&s->lock);
		err_prefix(rc, "shard %u", s->id);
	}
	return rc;
}

TALLY_API int tally_db_sync(tally_db *db)
{
	err_clear();
	/* every shard, even after one failed: the others' writes are theirs */
	int first = 0;
	char msg[ERR_MSG_MAX];
	for (unsigned i = 0; i < db->n_shards; i++) {
		int rc = shard_sync(db->shards[i]);
		if (rc && !first) {
			first = rc;
			snprintf(msg, sizeof msg, "%s", err_msg());
		}
	}
	if (first)
		return err_set(first, "%s", msg);
	return 0;
}

/* ---------------------------------------------------------------- writers */

TALLY_API int tally_writer_open(tally_db *db, int shard_id, tally_writer **out)
{
	*out = NULL;
	err_clear();
	if (shard_id >= (int)db->n_shards || shard_id < -1)
		return err_set(TALLY_EINVAL, "shard %d: the database has %u shards", shard_id,
			       db->n_shards);
	tally_writer *w = mem_calloc(1, sizeof *w);
	if (!w)
		return err_set(-ENOMEM, "out of memory");
	w->db = db;
	unsigned id = shard_id >= 0 ? (unsigned)shard_id
				    : atomic_fetch_add(&db->next_shard, 1) % db->n_shards;
	w->sh = db->shards[id];
	stage_batch_init(&w->batch);
	w->line = mem_alloc(sizeof *w->line);
	if (!w->line || lp_parser_init(&w->ps, db->opt.max_line_bytes, TALLY_PREC_NS)) {
		mem_free(w->line);
		mem_free(w);
		return err_set(-ENOMEM, "out of memory");
	}
	*out = w;
	return 0;
}

TALLY_API void tally_writer_close(tally_writer *w)
{
	if (!w)
		return;
	for (uint32_t i = 0; i < w->n_stage_tables; i++) {
		strmap_free(&w->stage_tables[i]->cols);
		mem_free(w->stage_tables[i]);
	}
	mem_free(w->stage_tables);
	strmap_free(&w->tables);
	stage_batch_free(&w->batch);
	lp_parser_free(&w->ps);
	mem_free(w->line);
	mem_free(w->enc);
	tkbuf_free(&w->key);
	mem_free(w);
}

static int writer_table(tally_writer *w, const char *name, uint32_t len, const char *first_tag,
			uint32_t first_tag_len, stage_table **out)
{
	if (w->last && w->last->def->len == len && strmap_eq(w->last->def->name, name, len)) {
		*out = w->last;
		return 0;
	}
	uint64_t h = strmap_hash(name, len);
	stage_table *wt = strmap_get(&w->tables, name, len, h);
	if (wt) {
		*out = w->last = wt;
		return 0;
	}
	table_def *t;
	int rc = catalog_table(&w->db->cat, name, len, h, first_tag, first_tag_len, &t);
	if (rc)
		return rc;
	if (w->n_stage_tables == w->cap_stage_tables) {
		uint32_t ncap = w->cap_stage_tables ? w->cap_stage_tables * 2 : 4;
		stage_table **nw = mem_realloc(w->stage_tables, ncap * sizeof *nw);
		if (!nw)
			return -ENOMEM;
		w->stage_tables = nw;
		w->cap_stage_tables = ncap;
	}
	wt = mem_calloc(1, sizeof *wt);
	if (!wt)
		return -ENOMEM;
	wt->def = t;
	if (strmap_put(&w->tables, t->name, t->len, t->hash, wt)) {
		mem_free(wt);
		return -ENOMEM;
	}
	w->stage_tables[w->n_stage_tables++] = wt;
	*out = w->last = wt;
	return 0;
}

static int writer_col(tally_writer *w, stage_table *wt, const char *name, uint32_t len,
		      enum tally_type type, col_def **out)
{
	uint64_t h = strmap_hash(name, len);
	col_def *d = strmap_get(&wt->cols, name, len, h);
	if (d) {
		if (d->type != type)
			return err_set(TALLY_ETYPE, "%s '%.*s' is %s here but %s in table '%s'",
				       type == TALLY_T_TAG ? "tag" : "field", (int)len, name,
				       type_name(type), type_name(d->type), wt->def->name);
		*out = d;
		return 0;
	}
	int rc = catalog_column(&w->db->cat, wt->def, name, len, h, type, &d);
	if (rc)
		return rc;
	if (strmap_put(&wt->cols, d->name, d->len, d->hash, d))
		return -ENOMEM;
	*out = d;
	return 0;
}

/* writer_col through the table's layout memory: slot is the line's
 * previous column at this position (NULL past STAGE_LAYOUT). */
static int writer_col_at(tally_writer *w, stage_table *wt, col_def **slot, const char *name,
			 uint32_t len, enum tally_type type, col_def **out)
{
	col_def *d = slot ? *slot : NULL;
	if (d && d->len == len && d->type == type && strmap_eq(d->name, name, len)) {
		*out = d;
		return 0;
	}
	int rc = writer_col(w, wt, name, len, type, out);
	if (!rc && slot)
		*slot = *out;
	return rc;
}

/* The shard a labelled batch goes to, whatever the writer's: all batches
 * of one source meet under one shard lock, which makes check-and-apply
 * atomic for the source while other sources' batches go on in parallel on
 * the other shards. */
static shard *label_shard(const tally_db *db, const stage_batch *b)
{
	return db->shards[strmap_hash(b->source, b->source_len) % db->n_shards];
}

/* A labelled batch's check; caller holds its shard's lock. 0: new, go on
 * applying it; 1: a duplicate; or TALLY_ESTALE. */
static int label_check(tally_writer *w)
{
	idem *id = &w->db->idem;
	const stage_batch *b = &w->batch;
	uint64_t high;
	pthread_mutex_lock(&id->mu);
	enum idem_state st = idem_check(id, b->source, b->source_len, b->seq, &high);
	pthread_mutex_unlock(&id->mu);
	if (st == IDEM_NEW)
		return 0;
	if (st == IDEM_DUP) {
		atomic_fetch_add(&id->duplicates, 1);
		return 1;
	}
	atomic_fetch_add(&id->too_old, 1);
	return err_set(TALLY_ESTALE,
		       "source '%s' sequence %llu: more than %u below its highest applied "
		       "sequence %llu, too old to tell whether it was applied",
		       b->source, (unsigned long long)b->seq, id->words * 64,
		       (unsigned long long)high);
}

/* A labelled batch whose record is appended: noted as applied (replay
 * would apply it). Caller holds its shard's lock. */
static int label_note(tally_writer *w)
{
	idem *id = &w->db->idem;
	pthread_mutex_lock(&id->mu);
	int rc = idem_note(id, w->batch.source, w->batch.source_len, w->batch.seq, now_ns());
	pthread_mutex_unlock(&id->mu);
	return rc;
}

/* Puts the staged batch into the WAL and the memtable. A labelled batch is
 * checked against its source's applied labels, appended and noted in one
 * step under its shard's lock (label_shard). A duplicate's answer waits,
 * like the original's, for durability: the original may be another
 * writer's batch not yet synced. */
static int writer_commit(tally_writer *w)
{
	int labelled = w->batch.labelled;
	if (w->batch.rows == 0 && !labelled)
		return 0;
	shard *s = labelled ? label_shard(w->db, &w->batch) : w->sh;
	size_t len;
	int rc = stage_batch_encode(&w->batch, &w->enc, &w->enc_cap, &len);
	if (rc)
		goto out;
	uint64_t lsn = 0;
	pthread_rwlock_wrlock(&s->lock);
	/* The batch is applied only once its WAL record is in the kernel: a
	 * write the disk refuses (ENOSPC, EIO) leaves no trace, and this
	 * writer hears of it, never a later sync of other writes. */
	if (s->failed)
		rc = shard_refuse(s);
	else if (labelled && (rc = label_check(w)))
		w->duplicate = rc == 1;
	else if (!(rc = wal_append(s->wal, w->enc, len, NULL))) {
		if (labelled)
			rc = label_note(w);
		if (!rc)
			rc = shard_apply(s, &w->batch);
		if (!rc && w->db->opt.sync_mode == TALLY_SYNC_EACH_WRITE)
			rc = wal_write_out(s->wal, &lsn);
	}
	if (rc == TALLY_EFAILED)
		s->failed = 1;
	int big = s->active->mem_bytes + s->active->rollup_bytes >= w->db->opt.memtable_bytes;
	pthread_rwlock_unlock(&s->lock);
	if (big && w->db->flusher_started)
		db_kick_flusher(w->db);
	if (rc == 1)
		rc = w->db->opt.sync_mode == TALLY_SYNC_EACH_WRITE ? shard_sync(s) : 0;
	else if (!rc && lsn && (rc = wal_sync_to(s->wal, lsn)) == TALLY_EFAILED) {
		pthread_rwlock_wrlock(&s->lock);
		s->failed = 1;
		pthread_rwlock_unlock(&s->lock);
	}
out:
	stage_batch_reset(&w->batch);
	return rc;
}

static int writer_ready(tally_writer *w)
{
	if (w->sh->failed)
		return shard_refuse(w->sh);
	uint64_t mem = db_memory(w->db);
	if (mem >= w->db->opt.memory_limit)
		return err_set(TALLY_EFULL, "memory limit reached: %llu of %llu bytes held",
			       (unsigned long long)mem,
			       (unsigned long long)w->db->opt.memory_limit);
	return 0;
}

/* With a cardinality limit, a key takes its place in the table's key set
 * when a line first names it, before the WAL: past the limit the line is
 * refused alone. (Without one the shard adds keys as they are applied.) */
static int writer_key_room(tally_writer *w, table_def *t, const char *key, uint32_t len)
{
	uint64_t limit = w->db->opt.max_keys_per_table;
	if (!limit)
		return 0;
	const char *copy;
	return catalog_key(t, key, len, strmap_hash(key, len), limit, &copy);
}

/* A line with tags outside its table's key was merged into the key's
 * series: counted (tally_stats.merged_lines), and said once per table. */
static void note_merged(tally_db *db, table_def *t, const lp_line *ln)
{
	atomic_fetch_add_explicit(&t->merged, 1, memory_order_relaxed);
	if (atomic_load_explicit(&t->merge_warned, memory_order_relaxed) ||
	    atomic_exchange(&t->merge_warned, 1))
		return;
	const lp_str *other = NULL;
	for (uint32_t i = 0; i < ln->n_tags && !other; i++) {
		other = &ln->tags[i].key;
		for (uint32_t k = 0; k < t->n_ktags && other; k++)
			if (other->n == t->ktag_len[k] && !memcmp(other->p, t->ktags[k], other->n))
				other = NULL;
	}
	if (!other)
		return;
	int n = (int)(other->n > 64 ? 64 : other->n);
	char more[160]; /* the key that would keep them apart */
	if (t->key_tag)
		snprintf(more, sizeof more, "%s+%.*s", t->key_tag, n, other->p);
	else
		snprintf(more, sizeof more, "%.*s", n, other->p);
	log_emit(&db->log, TALLY_LOG_WARN,
		 "table '%s' is keyed by %s: lines differing only in tag '%.*s' share one "
		 "series and its rollups (counted in merged_lines); to keep them apart, key "
		 "the table by more tags (table_keys %s=%s, or %s=*) in a new store",
		 t->name, t->key_tag ? t->key_tag : "no tag", n, other->p, t->name, more, t->name);
}

static int stage_line(tally_writer *w, const lp_line *ln, int64_t now)
{
	const char *first_tag = ln->n_tags ? ln->tags[0].key.p : NULL;
	uint32_t first_len = ln->n_tags ? ln->tags[0].key.n : 0;
	stage_table *wt;
	int rc = writer_table(w, ln->measurement.p, ln->measurement.n, first_tag, first_len, &wt);
	if (rc)
		return rc;
	table_def *t = wt->def;
	int64_t ts = ln->has_ts ? ln->ts : now;
	if (ts < TS_ENGINE_MIN || ts > TS_ENGINE_MAX)
		return err_set(TALLY_ELIMIT,
			       "timestamp %lld out of the stored range " TS_ENGINE_RANGE_TEXT,
			       (long long)ts);
	const char *key = "";
	uint32_t key_len = 0;
	int key_seen = t->key_mode != KEY_ONE, merged = 0;
	uint8_t in_key[LP_TAGS_MAX];
	if (t->key_mode >= KEY_LIST) {
		memset(in_key, 0, ln->n_tags);
		if ((rc = tagkey_build(t, ln->tags, ln->n_tags, in_key, &w->key)))
			return rc;
		key = w->key.p;
		key_len = w->key.n;
	}
	tbatch *tb;
	if ((rc = stage_batch_table(&w->batch, t, &tb)) || (rc = tbatch_row_begin(tb, ts)))
		return rc;
	for (uint32_t i = 0; i < ln->n_tags; i++) {
		const lp_tag *tg = &ln->tags[i];
		if (t->key_mode == KEY_ONE && tg->key.n == t->key_len &&
		    memcmp(tg->key.p, t->key_tag, t->key_len) == 0) {
			key = tg->value.p;
			key_len = tg->value.n;
			key_seen = 1;
			continue;
		}
		if (t->key_mode >= KEY_LIST && in_key[i])
			continue;
		merged = 1; /* a tag the series' identity leaves out */
		col_def *d;
		if ((rc = writer_col_at(w, wt, i < STAGE_LAYOUT ? &wt->tag_at[i] : NULL, tg->key.p,
					tg->key.n, TALLY_T_TAG, &d)) ||
		    (rc = tbatch_set_str(tb, d, tg->value.p, tg->value.n)))
			goto fail;
	}
	if (!key_seen) {
		rc = err_set(TALLY_EINVAL, "missing key tag '%s' of table '%s'", t->key_tag,
			     t->name);
		goto fail;
	}
	for (uint32_t i = 0; i < ln->n_fields; i++) {
		const lp_field *f = &ln->fields[i];
		for (uint32_t k = 0; k < t->n_ktags; k++)
			if (f->key.n == t->ktag_len[k] &&
			    memcmp(f->key.p, t->ktags[k], t->ktag_len[k]) == 0) {
				rc = err_set(TALLY_ETYPE, "field '%s' has the name of a key tag",
					     t->ktags[k]);
				goto fail;
			}
		col_def *d = NULL; /* set by writer_col_at; gcc cannot tell past the loop */
		if ((rc = writer_col_at(w, wt, i < STAGE_LAYOUT ? &wt->field_at[i] : NULL, f->key.p,
					f->key.n, f->type, &d)))
			goto fail;
		bval v = {0};
		switch (f->type) {
		case TALLY_T_STR: rc = tbatch_set_str(tb, d, f->v.str.p, f->v.str.n); break;
		case TALLY_T_F64:
			v.f64 = f->v.f64;
			rc = tbatch_set(tb, d, v);
			break;
		case TALLY_T_I64:
			v.i64 = f->v.i64;
			rc = tbatch_set(tb, d, v);
			break;
		case TALLY_T_U64:
			v.u64 = f->v.u64;
			rc = tbatch_set(tb, d, v);
			break;
		default:
			v.u64 = f->v.b != 0;
			rc = tbatch_set(tb, d, v);
			break;
		}
		if (rc)
			goto fail;
	}
	if ((rc = writer_key_room(w, t, key, key_len)))
		goto fail;
	if ((rc = tbatch_row_commit(&w->batch, tb, key, key_len)))
		return rc;
	if (merged)
		note_merged(w->db, t, ln);
	return 0;
fail:
	tbatch_row_abort(tb);
	return rc;
}

static void note_error(tally_write_result *res, uint64_t line, int code, const char *reason)
{
	if (!res)
		return;
	res->rejected++;
	if (res->n_errors < TALLY_LINE_ERRORS_MAX) {
		tally_line_error *e = &res->errors[res->n_errors++];
		e->line = line;
		e->code = code;
		snprintf(e->reason, sizeof e->reason, "%s", reason);
	}
}

TALLY_API int tally_write_lp(tally_writer *w, const char *text, size_t len,
			     enum tally_precision prec, tally_write_result *res)
{
	tally_write_result dummy;
	if (!res)
		res = &dummy;
	memset(res, 0, sizeof *res);
	err_clear();
	if ((unsigned)prec > TALLY_PREC_S)
		return err_set(TALLY_EINVAL, "unknown precision %d", (int)prec);
	int rc = writer_ready(w);
	if (rc)
		return rc;
	int64_t now = now_ns();
	lp_parser_reset(&w->ps, prec);
	const char *cur = text, *end = text + len;
	char reason[TALLY_REASON_MAX];
	/* *res as of the last commit: what a failure leaves applied */
	tally_write_result done = {0};
	for (;;) {
		int code = 0;
		enum lp_result r =
			lp_next(&w->ps, &cur, end, w->line, &code, reason, sizeof reason);
		if (r == LP_END)
			break;
		if (r == LP_SKIP)
			continue;
		if (r == LP_ERROR) {
			note_error(res, w->ps.line_no, code, reason);
			continue;
		}
		rc = stage_line(w, w->line, now);
		if (rc == -ENOMEM)
			goto fail;
		if (rc) {
			note_error(res, w->ps.line_no, rc, err_msg());
			continue;
		}
		res->accepted++;
		if (w->batch.rows >= COMMIT_ROWS && !w->batch.labelled) {
			if ((rc = writer_commit(w)))
				goto fail;
			/* the batch ended with this line: all before it is applied */
			res->lines = w->ps.lines;
			done = *res;
		}
	}
	res->lines = w->ps.lines;
	if ((rc = writer_commit(w)))
		goto fail;
	atomic_fetch_add(&w->db->rejected_lines, res->rejected);
	err_clear();
	return 0;
fail:
	stage_batch_reset(&w->batch);
	*res = done;
	atomic_fetch_add(&w->db->rejected_lines, res->rejected);
	return rc;
}

/* ---------------------------------------------------------------- binary */

static int check_name(const char *what, const char *s, size_t max)
{
	if (!s)
		return err_set(TALLY_EINVAL, "%s: NULL", what);
	size_t n = strlen(s);
	if ((n == 0 && max != LP_VALUE_MAX) || n > max)
		return err_set(TALLY_EINVAL, "%s '%.40s': length %zu not in [1, %zu]", what, s, n,
			       max);
	if (!lp_utf8_valid(s, n))
		return err_set(TALLY_EINVAL, "%s: invalid UTF-8", what);
	return 0;
}

TALLY_API int tally_write_batch(tally_writer *w, const tally_batch *b)
{
	err_clear();
	int rc = writer_ready(w);
	if (rc)
		return rc;
	if ((rc = check_name("table", b->table, LP_NAME_MAX)) ||
	    (rc = check_name("key", b->key, LP_VALUE_MAX)))
		return rc;
	if (b->n_rows && !b->ts)
		return err_set(TALLY_EINVAL, "batch: ts is NULL");
	for (size_t r = 0; r < b->n_rows; r++)
		if (b->ts[r] < TS_ENGINE_MIN || b->ts[r] > TS_ENGINE_MAX)
			return err_set(TALLY_ELIMIT,
				       "row %zu: timestamp %lld out of the stored "
				       "range " TS_ENGINE_RANGE_TEXT,
				       r, (long long)b->ts[r]);
	uint32_t tl = (uint32_t)strlen(b->table);
	stage_table *wt;
	if ((rc = writer_table(w, b->table, tl, b->key_tag ? b->key_tag : "key",
			       (uint32_t)strlen(b->key_tag ? b->key_tag : "key"), &wt)))
		return rc;
	table_def *t = wt->def;
	if (!t->key_tag && *b->key)
		return err_set(TALLY_EINVAL, "table '%s' has no key tag; key must be \"\"",
			       t->name);
	const char *key = b->key;
	if (t->key_mode >= KEY_LIST) { /* "camera=KV1,lane=2" in any order */
		if ((rc = tagkey_canon(t, b->key, &w->key)))
			return rc;
		key = w->key.p;
	}
	uint32_t kl = (uint32_t)strlen(key);
	if (b->n_rows && (rc = writer_key_room(w, t, key, kl)))
		return rc;
	col_def *defs[CAT_COLS_MAX];
	if (b->n_columns > CAT_COLS_MAX)
		return err_set(TALLY_ELIMIT, "batch: more than %d columns", CAT_COLS_MAX);
	for (size_t c = 0; c < b->n_columns; c++) {
		const tally_column *col = &b->columns[c];
		if ((rc = check_name("column", col->name, LP_NAME_MAX)))
			return rc;
		if (col->type < TALLY_T_F64 || col->type > TALLY_T_TAG)
			return err_set(TALLY_EINVAL, "column '%s': type %d not writable", col->name,
				       (int)col->type);
		if (b->n_rows && !col->values)
			return err_set(TALLY_EINVAL, "column '%s': values is NULL", col->name);
		uint32_t cl = (uint32_t)strlen(col->name);
		for (uint32_t k = 0; k < t->n_ktags; k++)
			if (cl == t->ktag_len[k] && !memcmp(col->name, t->ktags[k], cl))
				return err_set(TALLY_EINVAL,
					       "column '%s' has the name of a key tag", col->name);
		for (size_t d = 0; d < c; d++)
			if (!strcmp(b->columns[d].name, col->name))
				return err_set(TALLY_EINVAL, "column '%s' given twice", col->name);
		if (type_is_string(col->type))
			for (size_t r = 0; r < b->n_rows; r++) {
				if (col->present && !((col->present[r / 8] >> (r % 8)) & 1))
					continue;
				const char *s = ((const char *const *)col->values)[r];
				if ((rc = check_name("string value", s, LP_VALUE_MAX)))
					return err_prefix(rc, "column '%s' row %zu", col->name, r);
			}
		if (col->type == TALLY_T_F64)
			for (size_t r = 0; r < b->n_rows; r++) {
				double v = ((const double *)col->values)[r];
				if ((!col->present || ((col->present[r / 8] >> (r % 8)) & 1)) &&
				    !isfinite(v))
					return err_set(TALLY_EINVAL,
						       "column '%s' row %zu: NaN or infinity",
						       col->name, r);
			}
		if ((rc = writer_col(w, wt, col->name, cl, col->type, &defs[c])))
			return rc;
	}
	const void *vals[CAT_COLS_MAX];
	const uint8_t *pres[CAT_COLS_MAX];
	/* in slices of COMMIT_ROWS, so staging memory stays bounded; a
	 * labelled batch is one slice, one WAL record with its label */
	size_t step = COMMIT_ROWS;
	if (w->batch.labelled) {
		if (b->n_rows > UINT32_MAX)
			return err_set(TALLY_ELIMIT, "labelled batch: %zu rows, more than %u",
				       b->n_rows, UINT32_MAX);
		step = b->n_rows ? b->n_rows : 1;
		if (!b->n_rows && (rc = writer_commit(w)))
			goto fail;
	}
	for (size_t r = 0; r < b->n_rows; r += step) {
		uint32_t n = (uint32_t)(b->n_rows - r < step ? b->n_rows - r : step);
		for (size_t c = 0; c < b->n_columns; c++) {
			const tally_column *col = &b->columns[c];
			size_t width = type_is_string(col->type)   ? sizeof(char *)
				       : col->type == TALLY_T_BOOL ? 1
								   : 8;
			vals[c] = (const char *)col->values + r * width;
			pres[c] = col->present ? col->present + r / 8 : NULL;
		}
		tbatch *tb;
		if ((rc = stage_batch_table(&w->batch, t, &tb)) == 0)
			rc = tbatch_append(&w->batch, tb, key, kl, n, b->ts + r,
					   (uint32_t)b->n_columns, defs, vals, pres);
		if (rc || (rc = writer_commit(w)))
			goto fail;
	}
	return 0;
fail:
	stage_batch_reset(&w->batch);
	return rc;
}

/* ---------------------------------------------------------------- labels */

/* The label into the writer's batch, checked: 1..255 bytes of UTF-8
 * without space or control bytes, so that it fits every protocol's
 * framing (docs/protocol.md). */
static int label_set(tally_writer *w, const char *source, uint64_t seq)
{
	if (!source)
		return err_set(TALLY_EINVAL, "batch label: source is NULL");
	size_t n = strlen(source);
	if (n == 0 || n > BATCH_SOURCE_MAX)
		return err_set(TALLY_EINVAL, "batch label: source length %zu not in [1, %u]", n,
			       BATCH_SOURCE_MAX);
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)source[i] <= ' ' || source[i] == 0x7f)
			return err_set(TALLY_EINVAL,
				       "batch label: source byte %zu is a space or control byte",
				       i);
	if (!lp_utf8_valid(source, n))
		return err_set(TALLY_EINVAL, "batch label: source is not valid UTF-8");
	stage_batch_reset(&w->batch);
	w->batch.labelled = 1;
	w->batch.source_len = (uint32_t)n;
	memcpy(w->batch.source, source, n + 1);
	w->batch.seq = seq;
	w->duplicate = 0;
	return 0;
}

/* After a labelled call: the writer's next batch is unlabelled again. */
static int label_done(tally_writer *w, int rc, int *duplicate)
{
	w->batch.labelled = 0;
	if (duplicate)
		*duplicate = !rc && w->duplicate;
	w->duplicate = 0;
	return rc;
}

TALLY_API int tally_write_lp_labelled(tally_writer *w, const char *source, uint64_t seq,
				      const char *text, size_t len, enum tally_precision prec,
				      tally_write_result *res, int *duplicate)
{
	err_clear();
	if (duplicate)
		*duplicate = 0;
	int rc = label_set(w, source, seq);
	if (rc)
		return rc;
	rc = tally_write_lp(w, text, len, prec, res);
	if (!rc && w->duplicate && res)
		memset(res, 0, sizeof *res);
	return label_done(w, rc, duplicate);
}

TALLY_API int tally_write_batch_labelled(tally_writer *w, const char *source, uint64_t seq,
					 const tally_batch *b, int *duplicate)
{
	err_clear();
	if (duplicate)
		*duplicate = 0;
	int rc = label_set(w, source, seq);
	if (rc)
		return rc;
	return label_done(w, tally_write_batch(w, b), duplicate);
}

TALLY_API int tally_label_high(tally_db *db, const char *source, uint64_t *seq)
{
	err_clear();
	if (!db || !source || !seq)
		return err_set(TALLY_EINVAL, "tally_label_high: NULL argument");
	size_t n = strlen(source);
	if (n == 0 || n > BATCH_SOURCE_MAX)
		return err_set(TALLY_EINVAL, "batch label: source length %zu not in [1, %u]", n,
			       BATCH_SOURCE_MAX);
	pthread_mutex_lock(&db->idem.mu);
	int found = idem_high(&db->idem, source, (uint32_t)n, seq);
	pthread_mutex_unlock(&db->idem.mu);
	if (!found)
		return err_set(TALLY_ENOTFOUND, "no label of source '%s'", source);
	return 0;
}

static int labels_file_exists(const tally_db *db)
{
	char path[PATH_MAX];
	snprintf(path, sizeof path, "%s/" IDEM_FILE, db->dir);
	return access(path, F_OK) == 0;
}

int db_labels_save(tally_db *db)
{
	idem *id = &db->idem;
	pthread_mutex_lock(&id->mu);
	int none = id->map.n == 0;
	pthread_mutex_unlock(&id->mu);
	if (none && !labels_file_exists(db))
		return 0;
	/* With every shard locked no labelled batch is between its append and
	 * its note: the table holds exactly the labels of appended records,
	 * which are durable once each WAL is synced to where it was written
	 * out here. So the file never names a batch a crash could lose. */
	uint64_t lsn[MANIFEST_SHARDS_MAX] = {0};
	int rc = 0;
	char *buf = NULL;
	size_t len = 0;
	for (unsigned i = 0; i < db->n_shards; i++)
		pthread_rwlock_wrlock(&db->shards[i]->lock);
	for (unsigned i = 0; i < db->n_shards && !rc; i++)
		rc = db->shards[i]->failed
			     ? err_set(TALLY_EFAILED, "shard %u failed earlier", db->shards[i]->id)
			     : wal_write_out(db->shards[i]->wal, &lsn[i]);
	if (!rc) {
		pthread_mutex_lock(&id->mu);
		rc = idem_encode(id, now_ns(), &buf, &len);
		pthread_mutex_unlock(&id->mu);
	}
	for (unsigned i = db->n_shards; i-- > 0;)
		pthread_rwlock_unlock(&db->shards[i]->lock);
	for (unsigned i = 0; i < db->n_shards && !rc; i++)
		rc = wal_sync_to(db->shards[i]->wal, lsn[i]);
	if (!rc)
		rc = fio_write_atomic(db->dir, IDEM_FILE, buf, len);
	mem_free(buf);
	return rc;
}

/* ---------------------------------------------------------------- stats */

static int stats_collect(tally_db *db, tally_stats *out)
{
	err_clear();
	memset(out, 0, sizeof *out);
	pthread_mutex_lock(&db->cat.mu);
	out->tables = db->cat.n_tables;
	pthread_mutex_unlock(&db->cat.mu);
	/* a running count: nothing a monitor polls walks the keys */
	out->keys = catalog_keys(&db->cat, NULL);
	out->merged_lines = catalog_merged(&db->cat);
	for (unsigned i = 0; i < db->n_shards; i++) {
		shard *s = db->shards[i];
		pthread_rwlock_rdlock(&s->lock);
		out->events += shard_events(s);
		out->late_events += s->late_events;
		out->parts += s->n_parts;
		/* partitions: group the shard's parts by (table, partition) */
		for (uint32_t p = 0; p < s->n_parts; p++) {
			const shard_part *a = s->parts[p];
			uint64_t same = 0, open = 0;
			int first = 1;
			for (uint32_t q = 0; q < s->n_parts; q++) {
				const shard_part *b = s->parts[q];
				if (b->table != a->table || b->pstart != a->pstart)
					continue;
				if (q < p)
					first = 0;
				same++;
				open += !(b->flags & MPART_SEALED);
			}
			if (!first)
				continue;
			out->partitions++;
			if (same > out->max_parts_per_partition)
				out->max_parts_per_partition = same;
			out->merge_backlog += open >= MERGE_FANIN;
		}
		for (uint32_t p = 0; p < s->n_parts; p++) {
			out->part_bytes += s->parts[p]->p->file_bytes;
			out->index_bytes += s->parts[p]->p->mem_bytes;
			out->part_rows += s->parts[p]->p->info.n_rows;
		}
		out->memtable_bytes += s->mem_bytes;
		out->rollup_bytes += s->rollup_bytes;
		out->wal_bytes += wal_disk_bytes(s->wal);
		out->wal_syncs += wal_syncs(s->wal);
		out->wal_write_errors += wal_write_errors(s->wal);
		out->failed_shards += s->failed || wal_failed(s->wal);
		pthread_rwlock_unlock(&s->lock);
	}
	pthread_mutex_lock(&db->man_mu);
	out->flushes = db->flushes;
	out->merges = db->merges;
	out->deletes = db->deletes;
	out->delete_rows = db->delete_rows;
	out->delete_bytes_written = db->delete_bytes;
	for (uint32_t i = 0; i < db->man.n_parts; i++)
		out->sealed_parts += (db->man.parts[i].flags & MPART_SEALED) != 0;
	out->write_amplification =
		db->man.rows_accepted ? (double)db->man.rows_written / (double)db->man.rows_accepted
				      : 1.0;
	pthread_mutex_unlock(&db->man_mu);
	rc_stats(&db->rcache, out);
	tier_stats(db, out);
	retention_stats(db, out);
	out->memory_limit = db->opt.memory_limit;
	out->key_bytes = db_key_memory(db);
	out->query_bytes = atomic_load(&db->query_bytes);
	out->prefault_pending = atomic_load(&db->prefault_pending);
	out->rejected_lines = atomic_load(&db->rejected_lines);
	out->shards = db->n_shards;
	pthread_mutex_lock(&db->idem.mu);
	out->label_sources = db->idem.map.n;
	out->label_bytes = idem_bytes(&db->idem);
	out->label_expired = db->idem.expired;
	pthread_mutex_unlock(&db->idem.mu);
	out->label_duplicates = atomic_load(&db->idem.duplicates);
	out->label_too_old = atomic_load(&db->idem.too_old);
	out->scan_rows = atomic_load(&db->scan_rows);
	return 0;
}

TALLY_API int tally_db_stats_sized(tally_db *db, tally_stats *out, size_t size)
{
	if (size < sizeof out->size)
		return err_set(TALLY_EINVAL, "tally_db_stats: size %zu holds no tally_stats", size);
	tally_stats all;
	int rc = stats_collect(db, &all);
	/* an older header's struct gets its part; a newer one's tail is 0 */
	size_t n = size < sizeof all ? size : sizeof all;
	memcpy(out, &all, n);
	memset((char *)out + n, 0, size - n);
	out->size = n;
	return rc;
}
