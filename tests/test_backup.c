/*
 * test_backup.c — backups, restore and verify (engine/backup.c).
 *
 * Each writer thread writes its own keys in a known order, so the events
 * of any prefix of its writes are known: a restored store must hold, per
 * writer, exactly a prefix at least as long as what was acknowledged
 * before the backup began, and answer every query kind like brute force
 * over that prefix.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "backup.h"
#include "s3util.h"
#include "tally.h"
#include "testutil.h"

#define KEYS_PER_WRITER 4
#define T0              INT64_C(1700000000000000000)
#define STEP_NS         INT64_C(37000000000) /* 37 s between a writer's events */
#define BATCH           200

/* Writer w's event i: key "w<w>k<i % 4>", time T0 + i * 37 s, an integer
 * speed (exact sums). */
static int64_t ev_ts(uint64_t i)
{
	return T0 + (int64_t)i * STEP_NS;
}
static int64_t ev_val(unsigned w, uint64_t i)
{
	return (int64_t)((i * 7 + w * 13) % 101);
}

/* Writes events [from, to) of writer w through tw, one call per BATCH. */
static int write_events(tally_writer *tw, unsigned w, uint64_t from, uint64_t to)
{
	char *buf = malloc(BATCH * 96);
	cr_assert(buf);
	for (uint64_t i = from; i < to;) {
		size_t n = 0;
		uint64_t end = i + BATCH < to ? i + BATCH : to;
		for (; i < end; i++)
			n += (size_t)sprintf(
				buf + n, "speeds,cam=w%uk%" PRIu64 " v=%" PRId64 "i %" PRId64 "\n",
				w, i % KEYS_PER_WRITER, ev_val(w, i), ev_ts(i));
		tally_write_result r;
		int rc = tally_write_lp(tw, buf, n, TALLY_PREC_NS, &r);
		if (rc || r.rejected) {
			free(buf);
			return rc ? rc : -1;
		}
	}
	free(buf);
	return 0;
}

static void write_synced(tally_db *db, unsigned w, uint64_t from, uint64_t to)
{
	tally_writer *tw;
	cr_assert_eq(tally_writer_open(db, -1, &tw), 0);
	cr_assert_eq(write_events(tw, w, from, to), 0, "%s", tally_errmsg());
	tally_writer_close(tw);
	cr_assert_eq(tally_db_sync(db), 0);
}

/* Events of writer w in the store (all its keys), by the exact aggregate. */
static uint64_t writer_events(tally_db *db, unsigned w)
{
	uint64_t n = 0;
	for (unsigned k = 0; k < KEYS_PER_WRITER; k++) {
		char key[32];
		snprintf(key, sizeof key, "w%uk%u", w, k);
		tally_agg a;
		int rc = tally_query_agg(db, "speeds", "v", key, INT64_MIN, INT64_MAX, &a);
		if (rc == TALLY_ENOTFOUND)
			continue;
		cr_assert_eq(rc, 0, "%s", tally_errmsg());
		n += a.count;
	}
	return n;
}

/* Brute force over writer w's first n events, key k, [from, to). */
static tally_agg brute(unsigned w, uint64_t n, unsigned k, int64_t from, int64_t to)
{
	tally_agg a = TU_AGG_EMPTY;
	for (uint64_t i = k; i < n; i += KEYS_PER_WRITER)
		if (ev_ts(i) >= from && ev_ts(i) < to)
			tu_agg_add(&a, (double)ev_val(w, i));
	return a;
}

static void same_agg(const tally_agg *got, const tally_agg *want, const char *what)
{
	cr_assert_eq(got->count, want->count, "%s: count %" PRIu64 " want %" PRIu64, what,
		     got->count, want->count);
	if (!want->count)
		return;
	cr_assert_eq(got->sum, want->sum, "%s: sum %g want %g", what, got->sum, want->sum);
	cr_assert_eq(got->min, want->min, "%s: min", what);
	cr_assert_eq(got->max, want->max, "%s: max", what);
}

/* Every query kind on db against brute force over the first n[w] events
 * of each of n_writers writers. */
static void check_store(tally_db *db, unsigned n_writers, const uint64_t *n)
{
	int64_t end = ev_ts(n[0] > n[n_writers - 1] ? n[0] : n[n_writers - 1]) + STEP_NS;
	for (unsigned w = 0; w < n_writers; w++)
		for (unsigned k = 0; k < KEYS_PER_WRITER; k++) {
			char key[32], what[96];
			snprintf(key, sizeof key, "w%uk%u", w, k);
			/* exact aggregates over ranges with ragged edges */
			int64_t ranges[][2] = {
				{INT64_MIN, INT64_MAX},
				{T0 + 1234567890123, end - 987654321},
				{T0 + 3 * 3600 * INT64_C(1000000000) + 5, end / 2 + T0 / 2}};
			for (unsigned r = 0; r < 3; r++) {
				tally_agg a, b = brute(w, n[w], k, ranges[r][0], ranges[r][1]);
				int rc = tally_query_agg(db, "speeds", "v", key, ranges[r][0],
							 ranges[r][1], &a);
				if (rc == TALLY_ENOTFOUND && !b.count)
					continue;
				cr_assert_eq(rc, 0, "%s", tally_errmsg());
				snprintf(what, sizeof what, "agg %s range %u", key, r);
				same_agg(&a, &b, what);
			}
			/* hourly series */
			int64_t hour = 3600 * INT64_C(1000000000), from = T0 - T0 % hour;
			size_t cap = (size_t)((end - from) / hour) + 2, got;
			tally_bucket *bk = calloc(cap, sizeof *bk);
			int rc = tally_query_series(db, "speeds", "v", key, hour, from, end, bk,
						    cap, &got);
			cr_assert(rc == 0 || (rc == TALLY_ENOTFOUND && n[w] <= k), "%s",
				  tally_errmsg());
			for (size_t i = 0; !rc && i < got; i++) {
				tally_agg b = brute(w, n[w], k, bk[i].start, bk[i].start + hour);
				snprintf(what, sizeof what, "series %s window %zu", key, i);
				same_agg(&bk[i].agg, &b, what);
			}
			free(bk);
			/* raw scan: exactly the prefix's events, in time order */
			tally_scan *sc;
			rc = tally_scan_open(db, "speeds", key, INT64_MIN, INT64_MAX, &sc);
			if (rc == TALLY_ENOTFOUND && n[w] <= k)
				continue;
			cr_assert_eq(rc, 0, "%s", tally_errmsg());
			tally_row row;
			uint64_t i = k;
			while ((rc = tally_scan_next(sc, &row)) == 1) {
				cr_assert_lt(i, n[w], "scan %s: more rows than the prefix", key);
				cr_assert_eq(row.ts, ev_ts(i), "scan %s row %" PRIu64, key, i);
				i += KEYS_PER_WRITER;
			}
			cr_assert_eq(rc, 0);
			cr_assert_geq(i, n[w], "scan %s: fewer rows than the prefix", key);
			tally_scan_close(sc);
		}
	/* all keys at once */
	tally_keys_iter *it;
	cr_assert_eq(tally_query_keys(db, "speeds", "v", INT64_MIN, INT64_MAX, &it), 0);
	const char *key;
	tally_agg a;
	unsigned seen = 0;
	int rc;
	while ((rc = tally_keys_next(it, &key, &a)) == 1) {
		unsigned w, k;
		cr_assert_eq(sscanf(key, "w%uk%u", &w, &k), 2);
		cr_assert_lt(w, n_writers);
		tally_agg b = brute(w, n[w], k, INT64_MIN, INT64_MAX);
		same_agg(&a, &b, key);
		seen++;
	}
	cr_assert_eq(rc, 0);
	tally_keys_close(it);
	unsigned want = 0;
	for (unsigned w = 0; w < n_writers; w++)
		want += n[w] < KEYS_PER_WRITER ? (unsigned)n[w] : KEYS_PER_WRITER;
	cr_assert_eq(seen, want, "keys: %u keys, want %u", seen, want);
}

/* A fresh root with root/db and root/backup (not yet made). */
static char *fresh(char *dir, char *dest)
{
	char *root = tu_tmpdir();
	snprintf(dir, 512, "%s/db", root);
	snprintf(dest, 512, "%s/backup", root);
	return root;
}

/* The S3 settings of the test's destination (NULL: a directory). */
static const tally_s3 *cur_s3;

static tally_db *open_db(const char *dir, int background)
{
	tally_options o = tu_quiet_opts();
	o.no_background = !background;
	o.memtable_bytes = 256 << 10; /* many flushes and merges */
	o.shards = 2;
	tally_db *db;
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	return db;
}

/* Restores backup seq (0: the newest) of src into a fresh directory under
 * root, opens it and checks it holds, per writer, a prefix of at least
 * lo[w] events and at most hi[w]. */
static void restore_seq_and_check(const char *src, const char *root, uint64_t seq,
				  unsigned n_writers, const uint64_t *lo, const uint64_t *hi)
{
	char dir[512];
	snprintf(dir, sizeof dir, "%s/restored", root);
	tu_rmrf(dir);
	tally_backup_result r;
	cr_assert_eq(backup_restore(src, cur_s3, seq, dir, &r), 0, "%s", tally_errmsg());
	uint64_t problems = 0;
	cr_assert_eq(backup_verify(dir, cur_s3, stderr, &problems), 0, "restored dir: %s",
		     tally_errmsg());
	tally_db *db = open_db(dir, 0);
	uint64_t n[8];
	for (unsigned w = 0; w < n_writers; w++) {
		n[w] = writer_events(db, w);
		cr_assert_geq(n[w], lo[w],
			      "writer %u: %" PRIu64 " events restored, %" PRIu64
			      " were acknowledged before the backup",
			      w, n[w], lo[w]);
		cr_assert_leq(n[w], hi[w]);
	}
	check_store(db, n_writers, n);
	tally_db_close(db);
}

static void restore_and_check(const char *src, const char *root, unsigned n_writers,
			      const uint64_t *lo, const uint64_t *hi)
{
	restore_seq_and_check(src, root, 0, n_writers, lo, hi);
}

/* ---------------------------------------------------------------- under writes */

typedef struct wctx {
	tally_db *db;
	unsigned w;
	uint64_t total;
	_Atomic uint64_t acked;
	int rc;
} wctx;

static void *writer_main(void *arg)
{
	wctx *c = arg;
	tally_writer *tw;
	if ((c->rc = tally_writer_open(c->db, (int)c->w % 2, &tw)))
		return NULL;
	for (uint64_t i = 0; i < c->total && !c->rc; i += BATCH) {
		c->rc = write_events(tw, c->w, i, i + BATCH);
		atomic_store(&c->acked, i + BATCH);
	}
	tally_writer_close(tw);
	return NULL;
}

Test(backup, restore_answers_like_the_original_at_the_sync_point, .timeout = 240)
{
	char dir[512], dest[512], *root = fresh(dir, dest);
	tally_db *db = open_db(dir, 1);
	enum { W = 3 };
	wctx c[W];
	pthread_t th[W];
	for (unsigned w = 0; w < W; w++) {
		c[w] = (wctx){.db = db, .w = w, .total = 60000};
		cr_assert_eq(pthread_create(&th[w], NULL, writer_main, &c[w]), 0);
	}
	/* two backups while the writers run, flushes and merges under way */
	uint64_t lo[2][W], hi[W];
	for (int b = 0; b < 2; b++) {
		for (unsigned w = 0; w < W; w++)
			while (atomic_load(&c[w].acked) < (uint64_t)(b + 1) * 12000 &&
			       atomic_load(&c[w].acked) < c[w].total && !c[w].rc)
				usleep(1000);
		for (unsigned w = 0; w < W; w++)
			lo[b][w] = atomic_load(&c[w].acked);
		tally_backup_result r;
		cr_assert_eq(tally_db_backup(db, dest, cur_s3, &r), 0, "%s", tally_errmsg());
		cr_assert_eq(r.seq, (uint64_t)b + 1);
		cr_assert_gt(r.files, 1);
	}
	for (unsigned w = 0; w < W; w++) {
		pthread_join(th[w], NULL);
		cr_assert_eq(c[w].rc, 0, "writer %u: %s", w, tally_errmsg());
		hi[w] = c[w].total;
	}
	tally_db_close(db);
	cr_assert_eq(backup_verify(dest, cur_s3, stderr, NULL), 0, "%s", tally_errmsg());
	restore_and_check(dest, root, W, lo[1], hi);
	tu_rmrf(root);
	free(root);
}

/* ---------------------------------------------------------------- incremental */

static unsigned count_objects(const char *dest)
{
	char p[600];
	snprintf(p, sizeof p, "%s/objects", dest);
	DIR *d = opendir(p);
	cr_assert(d);
	unsigned n = 0;
	struct dirent *e;
	while ((e = readdir(d)))
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

Test(backup, second_backup_uploads_only_new_files)
{
	char dir[512], dest[512], *root = fresh(dir, dest);
	tally_db *db = open_db(dir, 0);
	write_synced(db, 0, 0, 5000);
	cr_assert_eq(tally_db_flush(db), 0);
	write_synced(db, 1, 0, 5000);
	cr_assert_eq(tally_db_flush(db), 0);
	tally_backup_result a, b, c;
	cr_assert_eq(tally_db_backup(db, dest, cur_s3, &a), 0, "%s", tally_errmsg());
	/* equal files (two shards' empty WAL segments) are one object */
	cr_assert_eq(count_objects(dest), a.files_uploaded);
	cr_assert_leq(a.files_uploaded, a.files);
	cr_assert_eq(a.bytes_uploaded + 64 > a.bytes, 1);
	/* nothing changed: nothing sent */
	cr_assert_eq(tally_db_backup(db, dest, cur_s3, &b), 0, "%s", tally_errmsg());
	cr_assert_eq(b.files, a.files);
	cr_assert_eq(b.files_uploaded, 0);
	cr_assert_eq(b.bytes_uploaded, 0);
	/* one more flushed part: it, the new manifest and the grown WAL */
	write_synced(db, 2, 0, 3000);
	cr_assert_eq(tally_db_flush(db), 0);
	write_synced(db, 2, 3000, 3100);
	cr_assert_eq(tally_db_backup(db, dest, cur_s3, &c), 0, "%s", tally_errmsg());
	cr_assert_eq(c.seq, 3);
	cr_assert_gt(c.files_uploaded, 1);
	cr_assert_lt(c.bytes_uploaded, c.bytes / 2, "uploaded %" PRIu64 " of %" PRIu64,
		     c.bytes_uploaded, c.bytes);
	cr_assert_eq(count_objects(dest), a.files_uploaded + c.files_uploaded);
	cr_assert_gt(c.wal_records, 0);
	tally_db_close(db);
	uint64_t want[3] = {5000, 5000, 3100};
	restore_and_check(dest, root, 3, want, want);
	tu_rmrf(root);
	free(root);
}

/* ---------------------------------------------------------------- verify */

/* The object of the first catalog line of this kind, from the newest
 * catalog; its file name in *name. */
static void object_of(const char *dest, const char *kind, unsigned nth, char *path, size_t cap,
		      char *name)
{
	char cat[600];
	snprintf(cat, sizeof cat, "%s/backup-%020d.catalog", dest, 1);
	FILE *f = fopen(cat, "r");
	cr_assert(f);
	char line[512], k[16];
	unsigned long long sum, bytes;
	unsigned seen = 0;
	while (fgets(line, sizeof line, f))
		if (sscanf(line, "file %15s %llx %llu %200s", k, &sum, &bytes, name) == 4 &&
		    !strcmp(k, kind) && seen++ == nth) {
			snprintf(path, cap, "%s/objects/%016llx-%llu", dest, sum, bytes);
			fclose(f);
			return;
		}
	fclose(f);
	cr_assert_fail("no %s number %u in %s", kind, nth, cat);
}

Test(backup, verify_names_the_file_and_block_of_damage_and_missing_parts)
{
	char dir[512], dest[512], *root = fresh(dir, dest);
	tally_db *db = open_db(dir, 0);
	for (unsigned w = 0; w < 3; w++) {
		write_synced(db, w, 0, 4000);
		cr_assert_eq(tally_db_flush(db), 0);
	}
	cr_assert_eq(tally_db_backup(db, dest, cur_s3, NULL), 0, "%s", tally_errmsg());
	tally_db_close(db);
	cr_assert_eq(backup_verify(dest, cur_s3, stderr, NULL), 0, "%s", tally_errmsg());

	/* a flipped byte inside block 0 of a backed-up part */
	char obj[700], name[256];
	object_of(dest, "part", 0, obj, sizeof obj, name);
	FILE *f = fopen(obj, "r+b");
	cr_assert(f);
	fseek(f, 40, SEEK_SET);
	int ch = fgetc(f);
	fseek(f, 40, SEEK_SET);
	fputc(ch ^ 0x10, f);
	fclose(f);
	char *out = NULL;
	size_t len = 0;
	FILE *m = open_memstream(&out, &len);
	uint64_t problems = 0;
	cr_assert_eq(backup_verify(dest, cur_s3, m, &problems), TALLY_ECORRUPT);
	fclose(m);
	cr_assert(strstr(out, name), "verify said: %s", out);
	cr_assert(strstr(out, "block 0 (offset 32): checksum mismatch"), "verify said: %s", out);
	cr_assert_geq(problems, 2); /* the object's xxh3 and its block */
	free(out);

	/* a part's object gone */
	char obj2[700], name2[256];
	object_of(dest, "part", 1, obj2, sizeof obj2, name2);
	cr_assert_eq(unlink(obj2), 0);
	m = open_memstream(&out, &len);
	cr_assert_eq(backup_verify(dest, cur_s3, m, &problems), TALLY_ECORRUPT);
	fclose(m);
	cr_assert(strstr(out, name2) && strstr(out, "missing"), "verify said: %s", out);
	free(out);

	/* a restore refuses the damage rather than building a bad store */
	char rdir[600];
	snprintf(rdir, sizeof rdir, "%s/restored", root);
	cr_assert_neq(backup_restore(dest, cur_s3, 0, rdir, NULL), 0);
	cr_assert(access(rdir, F_OK) != 0, "a failed restore left %s", rdir);
	char partial[700];
	snprintf(partial, sizeof partial, "%s.partial", rdir);
	cr_assert(access(partial, F_OK) != 0, "a failed restore left %s", partial);

	/* and the data directory itself: a flipped byte in a live part */
	char part[800];
	snprintf(part, sizeof part, "%s/%s", dir, name);
	f = fopen(part, "r+b");
	cr_assert(f);
	fseek(f, 40, SEEK_SET);
	ch = fgetc(f);
	fseek(f, 40, SEEK_SET);
	fputc(ch ^ 0x10, f);
	fclose(f);
	m = open_memstream(&out, &len);
	cr_assert_eq(backup_verify(dir, cur_s3, m, &problems), TALLY_ECORRUPT);
	fclose(m);
	cr_assert(strstr(out, name) && strstr(out, "block 0"), "verify said: %s", out);
	free(out);
	tu_rmrf(root);
	free(root);
}

/* ---------------------------------------------------------------- kill -9 */

Test(backup, kill9_during_a_backup_leaves_the_previous_one_restorable, .timeout = 240)
{
	static const char *const steps[] = {"backup:object", "backup:before-catalog"};
	for (unsigned s = 0; s < 2; s++) {
		char dir[512], dest[512], *root = fresh(dir, dest);
		tally_db *db = open_db(dir, 0);
		write_synced(db, 0, 0, 3000);
		cr_assert_eq(tally_db_flush(db), 0);
		write_synced(db, 0, 3000, 3500);
		cr_assert_eq(tally_db_backup(db, dest, cur_s3, NULL), 0, "%s", tally_errmsg());
		tally_db_close(db);
		pid_t pid = fork();
		cr_assert_geq(pid, 0);
		if (!pid) {
			setenv("TALLY_CRASH_AT", steps[s], 1);
			tally_db *cdb = open_db(dir, 0);
			tally_writer *tw;
			if (tally_writer_open(cdb, -1, &tw) || write_events(tw, 1, 0, 4000))
				_exit(2);
			tally_writer_close(tw);
			if (tally_db_flush(cdb))
				_exit(3);
			tally_db_backup(cdb, dest, cur_s3, NULL);
			_exit(4); /* the crash point should have killed us */
		}
		int st;
		cr_assert_eq(waitpid(pid, &st, 0), pid);
		cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "%s: child status %d",
			  steps[s], st);
		cr_assert_eq(backup_verify(dest, cur_s3, stderr, NULL), 0, "%s: %s", steps[s],
			     tally_errmsg());
		uint64_t want[2] = {3500, 0};
		restore_and_check(dest, root, 2, want, want);
		/* the next backup completes over what the killed one left */
		db = open_db(dir, 0);
		tally_backup_result r;
		cr_assert_eq(tally_db_backup(db, dest, cur_s3, &r), 0, "%s", tally_errmsg());
		cr_assert_eq(r.seq, 2);
		tally_db_close(db);
		uint64_t now[2] = {3500, 4000};
		restore_and_check(dest, root, 2, now, now);
		tu_rmrf(root);
		free(root);
	}
}

/* ---------------------------------------------------------------- prune */

#define PRUNE_EVENTS 1500

/* Backups from + 1 .. from + n of dir into dest: before backup b, writer
 * 0's events up to b * PRUNE_EVENTS went into parts and writer 1's up to
 * b * 100 into the WAL, so each backup has objects of its own (its
 * manifest, its WAL) and shares the older parts. */
static void make_backups(const char *dir, const char *dest, unsigned from, unsigned n)
{
	tally_db *db = open_db(dir, 0);
	for (unsigned b = from; b < from + n; b++) {
		write_synced(db, 0, (uint64_t)b * PRUNE_EVENTS, (uint64_t)(b + 1) * PRUNE_EVENTS);
		cr_assert_eq(tally_db_flush(db), 0, "%s", tally_errmsg());
		write_synced(db, 1, (uint64_t)b * 100, (uint64_t)(b + 1) * 100);
		tally_backup_result r;
		cr_assert_eq(tally_db_backup(db, dest, cur_s3, &r), 0, "%s", tally_errmsg());
		cr_assert_eq(r.seq, (uint64_t)b + 1);
	}
	tally_db_close(db);
}

/* Backup seq restores and answers like the store did when it was taken. */
static void check_backup(const char *dest, const char *root, uint64_t seq)
{
	uint64_t want[2] = {seq * PRUNE_EVENTS, seq * 100};
	restore_seq_and_check(dest, root, seq, 2, want, want);
}

static void verify_clean(const char *dest, const char *when)
{
	uint64_t problems = 0;
	cr_assert_eq(backup_verify(dest, cur_s3, stderr, &problems), 0, "%s: %s", when,
		     tally_errmsg());
}

/* Four backups, keep 2: the two oldest catalogs go, and the objects only
 * they named; the kept ones verify and restore; a second prune finds
 * nothing more; numbering goes on. local: dest is a directory, whose
 * objects the test counts itself. */
static void prune_keeps_the_newest(const char *dir, const char *dest, const char *root, int local)
{
	make_backups(dir, dest, 0, 4);
	unsigned before = local ? count_objects(dest) : 0;
	backup_prune_result r;
	cr_assert_eq(backup_prune(dest, cur_s3, 2, &r), 0, "%s", tally_errmsg());
	cr_assert_eq(r.catalogs_deleted, 2);
	cr_assert_eq(r.catalogs_kept, 2);
	cr_assert_eq(r.oldest_kept, 3);
	cr_assert_eq(r.newest_kept, 4);
	cr_assert_gt(r.objects_deleted, 0, "the old manifests and WAL objects stay");
	cr_assert_gt(r.bytes_deleted, 0);
	cr_assert_eq(r.held_by[0], 0, "held by %s", r.held_by);
	if (local) {
		cr_assert_eq(count_objects(dest), before - r.objects_deleted);
		cr_assert_eq(count_objects(dest), r.objects_kept);
	}
	verify_clean(dest, "after the prune");
	check_backup(dest, root, 3);
	check_backup(dest, root, 4);
	char rdir[600];
	snprintf(rdir, sizeof rdir, "%s/gone", root);
	cr_assert_eq(backup_restore(dest, cur_s3, 2, rdir, NULL), TALLY_ENOTFOUND,
		     "a pruned backup restores: %s", tally_errmsg());
	/* nothing more to do; keep 0 is refused */
	backup_prune_result again;
	cr_assert_eq(backup_prune(dest, cur_s3, 2, &again), 0, "%s", tally_errmsg());
	cr_assert_eq(again.catalogs_deleted, 0);
	cr_assert_eq(again.objects_deleted, 0);
	cr_assert_eq(again.objects_kept, r.objects_kept);
	cr_assert_eq(backup_prune(dest, cur_s3, 0, NULL), TALLY_EINVAL);
	make_backups(dir, dest, 4, 1);
	check_backup(dest, root, 5);
}

Test(backup, prune_keeps_the_newest_backups_and_only_their_objects, .timeout = 240)
{
	char dir[512], dest[512], *root = fresh(dir, dest);
	prune_keeps_the_newest(dir, dest, root, 1);
	tu_rmrf(root);
	free(root);
}

/* kill -9 of a prune at each of these steps, one after the other on the
 * same destination (each run goes on where the last stopped): the kept
 * backups verify and restore after every one, a backup right after is
 * not held up by the dead prune's lease, and a whole prune then ends. */
static void prune_kill9(const char *dir, const char *dest, const char *root,
			const char *const *steps, unsigned n_steps)
{
	make_backups(dir, dest, 0, 4);
	for (unsigned s = 0; s < n_steps; s++) {
		pid_t pid = fork();
		cr_assert_geq(pid, 0);
		if (!pid) {
			setenv("TALLY_CRASH_AT", steps[s], 1);
			backup_prune(dest, cur_s3, 2, NULL);
			_exit(4); /* the step was never reached: the prune ended */
		}
		int st;
		cr_assert_eq(waitpid(pid, &st, 0), pid);
		/* past the fourth step the prune may have run out of objects */
		cr_assert((WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) ||
				  (s >= 4 && WIFEXITED(st) && WEXITSTATUS(st) == 4),
			  "%s: child status %d", steps[s], st);
		char when[64];
		snprintf(when, sizeof when, "after a kill at %s", steps[s]);
		verify_clean(dest, when);
		check_backup(dest, root, 4);
		check_backup(dest, root, 3);
	}
	make_backups(dir, dest, 4, 1);
	backup_prune_result r;
	cr_assert_eq(backup_prune(dest, cur_s3, 2, &r), 0, "%s", tally_errmsg());
	cr_assert_geq(r.leases_deleted, 1, "the killed prunes' leases stay");
	cr_assert_eq(r.held_by[0], 0, "held by %s", r.held_by);
	verify_clean(dest, "after the last prune");
	check_backup(dest, root, 4);
	check_backup(dest, root, 5);
}

Test(backup, kill9_during_a_prune_leaves_the_kept_backups_whole, .timeout = 300)
{
	static const char *const steps[] = {"prune:catalog:1", "prune:catalog:2", "prune:object:1",
					    "prune:object:2", "prune:object:2"};
	char dir[512], dest[512], *root = fresh(dir, dest);
	prune_kill9(dir, dest, root, steps, 5);
	tu_rmrf(root);
	free(root);
}

static int64_t now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_REALTIME, &t);
	return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* A lease as backup.c writes one, by hand: its kind, time and process. */
static void put_lease(const char *dest, const char *kind, int64_t at, long pid, char *path,
		      size_t cap)
{
	char host[256] = "";
	gethostname(host, sizeof host - 1);
	snprintf(path, cap, "%s/lease-%s-%020" PRId64 "-%016" PRIx64, dest, kind, at,
		 (uint64_t)random() << 20 | 0xabcde);
	FILE *f = fopen(path, "w");
	cr_assert(f);
	fprintf(f, "tally-lease 1\nhost %s\npid %ld\n", host, pid);
	fclose(f);
}

static long gone_pid(void)
{
	pid_t p = fork();
	cr_assert_geq(p, 0);
	if (!p)
		_exit(0);
	waitpid(p, NULL, 0);
	return p;
}

Test(backup, prune_deletes_no_object_while_a_backup_holds_the_destination, .timeout = 240)
{
	char dir[512], dest[512], *root = fresh(dir, dest);
	make_backups(dir, dest, 0, 3);
	char held[700];
	put_lease(dest, "backup", now_ns(), (long)getpid(), held, sizeof held);
	backup_prune_result r;
	cr_assert_eq(backup_prune(dest, cur_s3, 1, &r), 0, "%s", tally_errmsg());
	cr_assert_eq(r.catalogs_deleted, 2);
	cr_assert_eq(r.objects_deleted, 0, "objects deleted under a running backup");
	cr_assert(r.held_by[0] && strstr(held, r.held_by), "held by '%s'", r.held_by);
	verify_clean(dest, "a prune beside a backup");
	check_backup(dest, root, 3);
	/* the lease of a process that is gone, and one past its hour, hold
	 * nothing and are cleared away */
	cr_assert_eq(unlink(held), 0);
	char dead[700], old[700];
	put_lease(dest, "backup", now_ns(), gone_pid(), dead, sizeof dead);
	put_lease(dest, "backup", now_ns() - 2 * 3600 * INT64_C(1000000000), (long)getpid(), old,
		  sizeof old);
	cr_assert_eq(backup_prune(dest, cur_s3, 1, &r), 0, "%s", tally_errmsg());
	cr_assert_gt(r.objects_deleted, 0);
	cr_assert_eq(r.leases_deleted, 2);
	cr_assert(access(dead, F_OK) && access(old, F_OK), "a dead lease was left");
	verify_clean(dest, "the second prune");
	check_backup(dest, root, 3);
	tu_rmrf(root);
	free(root);
}

typedef struct bjob {
	tally_db *db;
	const char *dest;
	int rc;
	uint64_t seq;
} bjob;

static void *backup_main(void *arg)
{
	bjob *j = arg;
	tally_backup_result r;
	j->rc = tally_db_backup(j->db, j->dest, cur_s3, &r);
	j->seq = r.seq;
	return NULL;
}

/* Names in dir starting with prefix. */
static unsigned count_named(const char *dir, const char *prefix)
{
	DIR *d = opendir(dir);
	cr_assert(d);
	unsigned n = 0;
	struct dirent *e;
	while ((e = readdir(d)))
		n += !strncmp(e->d_name, prefix, strlen(prefix)) && !strstr(e->d_name, ".tmp");
	closedir(d);
	return n;
}

Test(backup, a_backup_waits_while_a_prune_holds_the_destination, .timeout = 240)
{
	char dir[512], dest[512], *root = fresh(dir, dest);
	make_backups(dir, dest, 0, 1);
	char held[700], cat2[700];
	put_lease(dest, "prune", now_ns(), (long)getpid(), held, sizeof held);
	snprintf(cat2, sizeof cat2, "%s/backup-%020d.catalog", dest, 2);
	tally_db *db = open_db(dir, 0);
	write_synced(db, 0, PRUNE_EVENTS, 2 * PRUNE_EVENTS);
	cr_assert_eq(tally_db_flush(db), 0);
	write_synced(db, 1, 100, 200);
	bjob j = {db, dest, -1, 0};
	pthread_t t;
	cr_assert_eq(pthread_create(&t, NULL, backup_main, &j), 0);
	/* its lease says it began; then it waits for the prune's to go */
	for (int i = 0; count_named(dest, "lease-backup-") == 0; i++) {
		cr_assert_lt(i, 6000, "the backup never took its lease");
		usleep(10000);
	}
	for (int i = 0; i < 20; i++) {
		cr_assert(access(cat2, F_OK) != 0, "backup 2 was written while a prune held %s",
			  dest);
		usleep(50000);
	}
	cr_assert_eq(unlink(held), 0);
	pthread_join(t, NULL);
	cr_assert_eq(j.rc, 0, "%s", tally_errmsg());
	cr_assert_eq(j.seq, 2);
	cr_assert_eq(count_named(dest, "lease-"), 0, "a backup left its lease");
	tally_db_close(db);
	verify_clean(dest, "a backup after a prune");
	check_backup(dest, root, 2);
	tu_rmrf(root);
	free(root);
}

/* Backups and prunes of one destination at once, over and over: after
 * every prune the destination verifies clean, and the newest backup
 * restores like the store at its sync point. */
Test(backup, prunes_beside_running_backups_never_break_a_backup, .timeout = 300)
{
	char dir[512], dest[512], *root = fresh(dir, dest);
	make_backups(dir, dest, 0, 1);
	tally_db *db = open_db(dir, 0);
	enum { ROUNDS = 6 };
	for (unsigned b = 1; b <= ROUNDS; b++) {
		write_synced(db, 0, (uint64_t)b * PRUNE_EVENTS, (uint64_t)(b + 1) * PRUNE_EVENTS);
		cr_assert_eq(tally_db_flush(db), 0);
		write_synced(db, 1, (uint64_t)b * 100, (uint64_t)(b + 1) * 100);
		bjob j = {db, dest, -1, 0};
		pthread_t t;
		cr_assert_eq(pthread_create(&t, NULL, backup_main, &j), 0);
		/* prunes while it runs: each deletes objects or, seeing its
		 * lease, leaves them */
		for (unsigned p = 0; p < b % 3 + 1; p++) {
			backup_prune_result r;
			cr_assert_eq(backup_prune(dest, cur_s3, 1, &r), 0, "%s", tally_errmsg());
			verify_clean(dest, "a prune beside a backup");
		}
		pthread_join(t, NULL);
		cr_assert_eq(j.rc, 0, "round %u: %s", b, tally_errmsg());
		cr_assert_eq(j.seq, b + 1);
	}
	tally_db_close(db);
	backup_prune_result r;
	cr_assert_eq(backup_prune(dest, cur_s3, 1, &r), 0, "%s", tally_errmsg());
	verify_clean(dest, "the last prune");
	check_backup(dest, root, ROUNDS + 1);
	tu_rmrf(root);
	free(root);
}

/* ---------------------------------------------------------------- S3 */

static s3srv srv_s3rver, srv_moto;

/* A backup to the bucket, a second one that sends nothing, verify and a
 * restore that answers like the original. Small: these servers are slow. */
/* The tests' destinations are on s from here on (skipped without it);
 * its settings, which a test may change. */
static tally_s3 *use_s3(const char *kind, s3srv *s, const char *var)
{
	if (!s->up)
		s3srv_import(s, var);
	if (!s->up)
		cr_skip_test("%s is not available here", kind);
	static tally_s3 s3;
	s3 = (tally_s3){sizeof s3, s->endpoint, s->region, s->access_key, s->secret_key, NULL};
	cur_s3 = &s3;
	return &s3;
}

static void s3_round_trip(const char *kind, s3srv *s, const char *var, int checks_signatures)
{
	tally_s3 *s3 = use_s3(kind, s, var);
	char dir[512], dest[512], *root = fresh(dir, dest);
	/* no '/' in the prefix: moto checks a listing's signature on the
	 * decoded query (tests/test_s3.c) */
	snprintf(dest, sizeof dest, "s3://%s/bk%d-%ld-", s->bucket, getpid(),
		 (long)random() % 100000);
	tally_db *db = open_db(dir, 0);
	write_synced(db, 0, 0, 3000);
	cr_assert_eq(tally_db_flush(db), 0);
	write_synced(db, 1, 0, 700);
	tally_backup_result a, b;
	cr_assert_eq(tally_db_backup(db, dest, cur_s3, &a), 0, "%s", tally_errmsg());
	cr_assert_gt(a.files_uploaded, 1);
	cr_assert_eq(tally_db_backup(db, dest, cur_s3, &b), 0, "%s", tally_errmsg());
	cr_assert_eq(b.seq, 2);
	cr_assert_eq(b.files_uploaded, 0);
	tally_db_close(db);
	cr_assert_eq(backup_verify(dest, cur_s3, stderr, NULL), 0, "%s", tally_errmsg());
	uint64_t want[2] = {3000, 700};
	restore_and_check(dest, root, 2, want, want);
	/* the requests were signed, and checked: a wrong secret is refused */
	if (checks_signatures) {
		s3->secret_key = "not-the-secret";
		db = open_db(dir, 0);
		cr_assert_neq(tally_db_backup(db, dest, cur_s3, NULL), 0);
		cr_assert(strstr(tally_errmsg(), "403"), "%s", tally_errmsg());
		tally_db_close(db);
	}
	tu_rmrf(root);
	free(root);
}

Test(backup, to_moto_with_signature_checks, .timeout = 240)
{
	s3_round_trip("moto", &srv_moto, "TALLY_TEST_MOTO", 1);
}

Test(backup, to_s3rver, .timeout = 240)
{
	s3_round_trip("s3rver", &srv_s3rver, "TALLY_TEST_S3RVER", 0);
}

/* Pruning a bucket: the same checks, and kill -9 during a prune. */
static void s3_prune(const char *kind, s3srv *s, const char *var)
{
	use_s3(kind, s, var);
	static const char *const steps[] = {"prune:catalog:2", "prune:object:2"};
	for (int k = 0; k < 2; k++) {
		char dir[512], dest[512], *root = fresh(dir, dest);
		snprintf(dest, sizeof dest, "s3://%s/pr%d-%d-%ld-", s->bucket, k, getpid(),
			 (long)random() % 100000);
		if (k == 0)
			prune_keeps_the_newest(dir, dest, root, 0);
		else
			prune_kill9(dir, dest, root, steps, 2);
		tu_rmrf(root);
		free(root);
	}
}

Test(backup, prune_on_moto_with_signature_checks, .timeout = 600)
{
	s3_prune("moto", &srv_moto, "TALLY_TEST_MOTO");
}

Test(backup, prune_on_s3rver, .timeout = 600)
{
	s3_prune("s3rver", &srv_s3rver, "TALLY_TEST_S3RVER");
}

/* Tiered parts are copied whole into the backup and restored as local
 * parts: the restored store needs no bucket, and answers raw scans. */
Test(backup, tiered_parts_are_copied_and_restored_local, .timeout = 240)
{
	s3srv *s = &srv_moto;
	if (!s->up)
		s3srv_import(s, "TALLY_TEST_MOTO");
	if (!s->up)
		cr_skip_test("moto is not available here");
	char dir[512], dest[512], *root = fresh(dir, dest), prefix[64];
	snprintf(prefix, sizeof prefix, "tier%d-%ld-", getpid(), (long)random() % 100000);
	tally_options o = tu_quiet_opts();
	o.tier_bucket = s->bucket;
	o.tier_endpoint = s->endpoint;
	o.tier_region = s->region;
	o.tier_access_key = s->access_key;
	o.tier_secret_key = s->secret_key;
	o.tier_prefix = prefix;
	o.tier_after = 1;
	o.tier_retries = 1;
	tally_db *db;
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	write_synced(db, 0, 0, 9000); /* about 3.9 days */
	write_synced(db, 1, 0, 500);
	cr_assert_eq(tally_db_flush(db), 0, "%s", tally_errmsg());
	cr_assert_eq(tally_db_merge(db), 0, "%s", tally_errmsg());
	cr_assert_eq(tally_db_tier(db), 0, "%s", tally_errmsg());
	tally_stats st;
	cr_assert_eq(tally_db_stats(db, &st), 0);
	cr_assert_gt(st.tiered_parts, 0, "nothing was tiered");
	tally_backup_result r;
	cr_assert_eq(tally_db_backup(db, dest, cur_s3, &r), 0, "%s", tally_errmsg());
	/* no S3 settings given: the tiering endpoint and credentials serve */
	char s3dest[512];
	snprintf(s3dest, sizeof s3dest, "s3://%s/%sbk-", s->bucket, prefix);
	cr_assert_eq(tally_db_backup(db, s3dest, NULL, &r), 0, "%s", tally_errmsg());
	cr_assert_eq(r.seq, 1);
	tally_db_close(db);
	uint64_t want[2] = {9000, 500};
	restore_and_check(dest, root, 2, want, want);
	char rdir[600];
	snprintf(rdir, sizeof rdir, "%s/restored", root);
	tally_db *rdb = open_db(rdir, 0);
	cr_assert_eq(tally_db_stats(rdb, &st), 0);
	cr_assert_eq(st.tiered_parts, 0, "the restored store still points at the bucket");
	tally_db_close(rdb);
	tu_rmrf(root);
	free(root);
}

/* The servers start once, here, and reach the tests (each in a fresh
 * process) through the environment; without them the S3 tests skip and
 * the rest run. */
S3U_MAIN(int argc, char **argv)
{
	return s3srv_main_ex(argc, argv, "test_backup", &srv_s3rver, &srv_moto, 0);
}
