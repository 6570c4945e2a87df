/*
 * test_partset.c — the one commit of the live part set (engine/partset.c):
 * a commit whose manifest save fails leaves the old manifest, the old
 * parts and every answer as they were, and never a manifest naming a
 * missing file; a change that names parts that are not live is refused
 * before anything is written; the files of parts that leave go only after
 * the commit.
 *
 * The save is made to fail before its rename by a directory squatting on
 * DIR/MANIFEST.tmp, so the failure is a real one from the file system.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <sys/stat.h>

#include "db.h"
#include "flush.h"
#include "manifest.h"
#include "partset.h"
#include "testutil.h"

#define T0      INT64_C(1700000000000000000)
#define KEYS    8
#define PER_KEY 500

/* KEYS x PER_KEY events over two days (two partitions), value 1 each. */
static void write_ones(tally_db *db, int64_t base)
{
	char *buf = malloc((size_t)KEYS * PER_KEY * 48), *p = buf;
	for (int i = 0; i < PER_KEY; i++)
		for (int k = 0; k < KEYS; k++)
			p += sprintf(p, "m,k=key%02d v=1i %lld\n", k,
				     (long long)(base + (int64_t)i * 300 * TALLY_NS_PER_SEC + k));
	cr_assert_eq(tu_write_synced(db, buf, (size_t)(p - buf)), KEYS * PER_KEY, "%s",
		     tally_errmsg());
	free(buf);
}

/* Every key counted exactly copies x PER_KEY times, by rollups and scans. */
static void check_counts(tally_db *db, int copies)
{
	for (int k = 0; k < KEYS; k++) {
		char key[16];
		sprintf(key, "key%02d", k);
		uint64_t agg, rows;
		cr_assert_eq(tu_count_key(db, "m", "v", key, &agg, &rows), 0, "%s", tally_errmsg());
		cr_assert(agg == (uint64_t)PER_KEY * copies && rows == agg,
			  "%s: %llu by rollups, %llu rows, want %llu", key, (unsigned long long)agg,
			  (unsigned long long)rows, (unsigned long long)PER_KEY * copies);
	}
}

static void read_manifest(const char *dir, char **data, size_t *len)
{
	char path[4200];
	snprintf(path, sizeof path, "%s/MANIFEST", dir);
	FILE *f = fopen(path, "rb");
	cr_assert(f, "no %s", path);
	fseek(f, 0, SEEK_END);
	*len = (size_t)ftell(f);
	fseek(f, 0, SEEK_SET);
	*data = malloc(*len ? *len : 1);
	cr_assert_eq(fread(*data, 1, *len, f), *len);
	fclose(f);
}

static void assert_manifest_is(const char *dir, const char *data, size_t len)
{
	char *now;
	size_t n;
	read_manifest(dir, &now, &n);
	cr_assert(n == len && !memcmp(now, data, len), "MANIFEST changed");
	free(now);
}

/* Every part the manifest on disk names has its file: no orphan named. */
static void assert_named_files_exist(const char *dir)
{
	manifest m;
	cr_assert_eq(manifest_load(dir, &m), 0);
	for (uint32_t i = 0; i < m.n_parts; i++) {
		char path[4200];
		snprintf(path, sizeof path, "%s/parts/%016llx.%s", dir,
			 (unsigned long long)m.parts[i].id,
			 m.parts[i].tier == MTIER_REMOTE ? "stub" : "part");
		cr_assert_eq(access(path, F_OK), 0, "the manifest names %s, which is missing",
			     path);
	}
	manifest_free(&m);
}

static int count_part_files(const char *dir)
{
	char path[4200];
	snprintf(path, sizeof path, "%s/parts", dir);
	DIR *d = opendir(path);
	cr_assert(d);
	int n = 0;
	struct dirent *e;
	while ((e = readdir(d)))
		n += strstr(e->d_name, ".part") != NULL;
	closedir(d);
	return n;
}

static int part_file_exists(const char *dir, uint64_t id)
{
	char path[4200];
	snprintf(path, sizeof path, "%s/parts/%016llx.part", dir, (unsigned long long)id);
	return access(path, F_OK) == 0;
}

/* Makes the next manifest save fail before its rename (or lets it work). */
static void block_saves(const char *dir, int on)
{
	char path[4200];
	snprintf(path, sizeof path, "%s/MANIFEST.tmp", dir);
	if (on)
		cr_assert_eq(mkdir(path, 0755), 0);
	else
		cr_assert_eq(rmdir(path), 0);
}

static uint64_t parts_now(tally_db *db)
{
	tally_stats st;
	cr_assert_eq(tally_db_stats(db, &st), 0);
	return st.parts;
}

/* Opens dir with n rounds of data, each flushed into parts. */
static tally_db *open_flushed(const char *dir, const tally_options *o, int n)
{
	tally_db *db;
	cr_assert_eq(tally_db_open(dir, o, &db), 0, "%s", tally_errmsg());
	for (int i = 0; i < n; i++) {
		write_ones(db, T0 + i);
		cr_assert_eq(tally_db_flush(db), 0, "%s", tally_errmsg());
	}
	return db;
}

/* Closed and reopened, db answers exactly copies rounds, and parts/
 * holds exactly the parts the manifest names: the files of a failed
 * commit, which no manifest names, are gone. */
static void reopen_exactly(tally_db *db, const char *dir, const tally_options *o, int copies)
{
	tally_db_close(db);
	cr_assert_eq(tally_db_open(dir, o, &db), 0, "%s", tally_errmsg());
	check_counts(db, copies);
	cr_assert_eq((uint64_t)count_part_files(dir), parts_now(db), "orphans survived open");
	tally_db_close(db);
}

Test(partset, flush_whose_save_fails_keeps_the_manifest_parts_and_answers)
{
	char *dir = tu_tmpdir();
	tally_options o = tu_quiet_opts();
	tally_db *db = open_flushed(dir, &o, 1);
	uint64_t parts = parts_now(db);
	cr_assert_geq(parts, 2);
	char *man;
	size_t man_len;
	read_manifest(dir, &man, &man_len);

	write_ones(db, T0 + 7);
	block_saves(dir, 1);
	int rc = tally_db_flush(db);
	cr_assert_neq(rc, 0, "the save should have failed");
	cr_assert(strstr(tally_errmsg(), "MANIFEST.tmp"), "error: %s", tally_errmsg());
	/* nothing changed: the manifest, the live parts, the answers (the
	 * frozen memtable still serves its events) */
	assert_manifest_is(dir, man, man_len);
	cr_assert_eq(parts_now(db), parts);
	check_counts(db, 2);
	assert_named_files_exist(dir);

	/* the same flush goes through once saves work again */
	block_saves(dir, 0);
	cr_assert_eq(tally_db_flush(db), 0, "%s", tally_errmsg());
	cr_assert_gt(parts_now(db), parts);
	check_counts(db, 2);
	assert_named_files_exist(dir);
	reopen_exactly(db, dir, &o, 2);
	free(man);
	tu_rmrf(dir);
	free(dir);
}

/* The same failure, then a crash (a close without the retry): the WAL
 * still holds the frozen memtable's events, and open finds them once. */
Test(partset, flush_whose_save_fails_then_reopen_counts_once)
{
	char *dir = tu_tmpdir();
	tally_options o = tu_quiet_opts();
	tally_db *db = open_flushed(dir, &o, 1);
	write_ones(db, T0 + 7);
	block_saves(dir, 1);
	cr_assert_neq(tally_db_flush(db), 0);
	block_saves(dir, 0);
	reopen_exactly(db, dir, &o, 2);
	tu_rmrf(dir);
	free(dir);
}

Test(partset, merge_whose_save_fails_keeps_its_inputs)
{
	char *dir = tu_tmpdir();
	tally_options o = tu_quiet_opts();
	tally_db *db = open_flushed(dir, &o, MERGE_FANIN);
	uint64_t parts = parts_now(db);
	cr_assert_geq(parts, 2 * MERGE_FANIN);
	/* the ids of the live parts, which a merge would replace */
	uint64_t ids[64];
	uint32_t n_ids = 0;
	shard *s = db->shards[0];
	for (uint32_t j = 0; j < s->n_parts && n_ids < 64; j++)
		ids[n_ids++] = s->parts[j]->id;
	char *man;
	size_t man_len;
	read_manifest(dir, &man, &man_len);

	block_saves(dir, 1);
	cr_assert_neq(tally_db_merge(db), 0, "the save should have failed");
	assert_manifest_is(dir, man, man_len);
	cr_assert_eq(parts_now(db), parts);
	for (uint32_t i = 0; i < n_ids; i++)
		cr_assert(part_file_exists(dir, ids[i]), "input %016llx deleted before a commit",
			  (unsigned long long)ids[i]);
	check_counts(db, MERGE_FANIN);
	assert_named_files_exist(dir);

	block_saves(dir, 0);
	cr_assert_eq(tally_db_merge(db), 0, "%s", tally_errmsg());
	cr_assert_lt(parts_now(db), parts, "no merge happened");
	/* after the commit, the inputs that left are deleted */
	uint32_t gone = 0;
	for (uint32_t i = 0; i < n_ids; i++)
		if (!partset_find(s, ids[i])) {
			gone++;
			cr_assert(!part_file_exists(dir, ids[i]), "input %016llx left behind",
				  (unsigned long long)ids[i]);
		}
	cr_assert_gt(gone, 0);
	check_counts(db, MERGE_FANIN);
	assert_named_files_exist(dir);
	reopen_exactly(db, dir, &o, MERGE_FANIN);
	free(man);
	tu_rmrf(dir);
	free(dir);
}

/* What a refused change must leave: the same manifest, list and files. */
static void assert_untouched(tally_db *db, const char *dir, uint64_t gen, uint32_t n0, uint32_t n1)
{
	cr_assert_eq(db->man.generation, gen);
	cr_assert_eq(db->shards[0]->n_parts, n0);
	cr_assert_eq(db->shards[1]->n_parts, n1);
	assert_named_files_exist(dir);
}

Test(partset, changes_naming_parts_that_are_not_live_are_refused)
{
	char *dir = tu_tmpdir();
	tally_options o = tu_quiet_opts();
	o.shards = 2;
	/* a writer per round, given the shards in turn: both get parts */
	tally_db *db = open_flushed(dir, &o, 2);
	shard *s0 = db->shards[0], *s1 = db->shards[1];
	cr_assert_gt(s0->n_parts, 0);
	cr_assert_gt(s1->n_parts, 0);
	uint32_t n0 = s0->n_parts, n1 = s1->n_parts;
	uint64_t gen = db->man.generation;
	shard_part *live0 = s0->parts[0], *live1 = s1->parts[0];

	pthread_mutex_lock(&db->man_mu);
	/* a second copy of a live part: same id, but not the live one */
	shard_part *twin;
	cr_assert_eq(shard_part_load(db, live0->id, &twin), 0, "%s", tally_errmsg());
	int rc = partset_commit(
		db, &(partset_change){.op = "test", .s = s0, .gone = &twin, .n_gone = 1});
	cr_assert_eq(rc, TALLY_EINVAL);
	cr_assert(strstr(tally_errmsg(), "not live"), "%s", tally_errmsg());
	assert_untouched(db, dir, gen, n0, n1);

	/* a live part of another shard */
	rc = partset_commit(db,
			    &(partset_change){.op = "test", .s = s0, .gone = &live1, .n_gone = 1});
	cr_assert_eq(rc, TALLY_EINVAL);
	assert_untouched(db, dir, gen, n0, n1);

	/* sealing a part that is not live */
	rc = partset_commit(db, &(partset_change){.op = "test", .s = s0, .seal = twin});
	cr_assert_eq(rc, TALLY_EINVAL);
	assert_untouched(db, dir, gen, n0, n1);

	/* the same part twice */
	shard_part *twice[2] = {live0, live0};
	rc = partset_commit(db,
			    &(partset_change){.op = "test", .s = s0, .gone = twice, .n_gone = 2});
	cr_assert_eq(rc, TALLY_EINVAL);
	assert_untouched(db, dir, gen, n0, n1);

	/* adding a part whose id the manifest already names, without
	 * removing it: refused, the copy freed, the live file kept */
	manifest_part rec = *manifest_find(&db->man, live0->id);
	rc = partset_commit(
		db, &(partset_change){
			    .op = "test", .s = s0, .added = &twin, .recs = &rec, .n_added = 1});
	cr_assert_eq(rc, TALLY_EINVAL);
	assert_untouched(db, dir, gen, n0, n1);
	cr_assert(part_file_exists(dir, live0->id));

	/* parts without a shard */
	rc = partset_commit(db, &(partset_change){.op = "test", .gone = &live0, .n_gone = 1});
	cr_assert_eq(rc, TALLY_EINVAL);
	assert_untouched(db, dir, gen, n0, n1);
	pthread_mutex_unlock(&db->man_mu);

	check_counts(db, 2);
	reopen_exactly(db, dir, &o, 2);
	tu_rmrf(dir);
	free(dir);
}

/* A manifest-only change (no shard) commits like any other: generation
 * up, the edit saved, no part touched. A failing edit saves nothing. */
static int set_flag_gc(manifest *nm, void *arg)
{
	return manifest_gc_add(nm, arg);
}

static int fail_edit(manifest *nm, void *arg)
{
	(void)nm;
	(void)arg;
	return TALLY_ELIMIT;
}

Test(partset, manifest_only_changes_and_failing_edits)
{
	char *dir = tu_tmpdir();
	tally_options o = tu_quiet_opts();
	tally_db *db = open_flushed(dir, &o, 1);
	uint32_t n = db->shards[0]->n_parts;
	pthread_mutex_lock(&db->man_mu);
	uint64_t gen = db->man.generation;
	cr_assert_eq(partset_commit(db, &(partset_change){.op = "test", .edit = fail_edit}),
		     TALLY_ELIMIT);
	cr_assert_eq(db->man.generation, gen);
	cr_assert_eq(partset_commit(db, &(partset_change){.op = "test",
							  .edit = set_flag_gc,
							  .arg = "some/object"}),
		     0, "%s", tally_errmsg());
	cr_assert_eq(db->man.generation, gen + 1);
	cr_assert_eq(db->man.n_gc, 1);
	pthread_mutex_unlock(&db->man_mu);
	cr_assert_eq(db->shards[0]->n_parts, n);
	manifest m;
	cr_assert_eq(manifest_load(dir, &m), 0);
	cr_assert_eq(m.generation, gen + 1);
	cr_assert_eq(m.n_gc, 1);
	cr_assert_str_eq(m.gc[0], "some/object");
	manifest_free(&m);
	tally_db_close(db);
	tu_rmrf(dir);
	free(dir);
}
