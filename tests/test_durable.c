/*
 * test_durable.c — what the engine does when the disk refuses it, and what
 * an open does with a directory that lost part of its data (issue 12,
 * items 1, 2 and 7).
 *
 * This program is linked with storage/fileio.c built with -DTALLY_FAULTS
 * (tests/meson.build): its object takes the place of the library's, so
 * every pwrite, fsync and fdatasync of the WAL, parts and manifest can be
 * failed on demand with fio_fault_set(), exactly where the real code makes
 * the call. Nothing here is in libtally or tallyd.
 *
 * The rule every test checks: a write the engine accepted without an error
 * and that a later sync reported durable is there after a reopen; a write
 * that was refused, or whose sync failed, is not there after a reopen
 * (no ghost a retrying client would double).
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>

#include "fileio.h"
#include "testutil.h"

#define T0 INT64_C(1700000000000000000)

static char *dir;
static tally_db *db;
static tally_writer *w;
static char last_log[1024];
static char all_logs[16384]; /* since the last open, as much as fits */
static int n_logs;

static void keep_log(void *ctx, int level, const char *msg)
{
	(void)ctx;
	(void)level;
	snprintf(last_log, sizeof last_log, "%s", msg);
	size_t n = strlen(all_logs);
	snprintf(all_logs + n, sizeof all_logs - n, "%s\n", msg);
	n_logs++;
}

static int read_only_on_damage;

static int try_open(void)
{
	tally_options o;
	tally_options_init(&o);
	o.no_background = 1;
	o.wal_damage_read_only = read_only_on_damage;
	all_logs[0] = 0;
	o.log_fn = keep_log;
	o.log_level = TALLY_LOG_INFO;
	int rc = tally_db_open(dir, &o, &db);
	if (!rc)
		cr_assert_eq(tally_writer_open(db, 0, &w), 0);
	return rc;
}

static void open_db(void)
{
	int rc = try_open();
	cr_assert_eq(rc, 0, "open: %s", tally_errmsg());
}

static void close_db(void)
{
	tally_writer_close(w);
	tally_db_close(db);
	w = NULL;
	db = NULL;
}

static void setup(void)
{
	dir = tu_tmpdir();
	open_db();
}

static void teardown(void)
{
	fio_fault_set(0, 0, 0, 0);
	read_only_on_damage = 0;
	if (db)
		close_db();
	tu_rmrf(dir);
	free(dir);
}

TestSuite(durable, .init = setup, .fini = teardown, .timeout = 120);

/* Writes events first..first+n-1 (v = id) as one call; returns its rc. */
static int put(int first, int n, tally_write_result *res)
{
	char *buf = malloc((size_t)n * 64 + 1), *p = buf;
	for (int i = first; i < first + n; i++)
		p += sprintf(p, "t,k=a v=%di %lld\n", i, (long long)(T0 + i));
	int rc = tally_write_lp(w, buf, (size_t)(p - buf), TALLY_PREC_NS, res);
	free(buf);
	return rc;
}

static void put_ok(int first, int n)
{
	tally_write_result res;
	cr_assert_eq(put(first, n, &res), 0, "%s", tally_errmsg());
	cr_assert_eq(res.accepted, (uint64_t)n);
}

/* Count and sum of v over everything stored. */
static void totals(uint64_t *count, double *sum)
{
	tally_agg a;
	cr_assert_eq(tally_query_agg(db, "t", "v", "a", 0, INT64_MAX, &a), 0, "%s", tally_errmsg());
	*count = a.count;
	*sum = a.sum;
}

static double sum_of(int first, int n)
{
	return (double)n * (2.0 * first + n - 1) / 2;
}

static void expect_totals(uint64_t count, double sum)
{
	uint64_t c;
	double s;
	totals(&c, &s);
	cr_assert_eq(c, count, "count %llu, expected %llu", (unsigned long long)c,
		     (unsigned long long)count);
	cr_assert_eq(s, sum, "sum %g, expected %g", s, sum);
}

static void stats(tally_stats *st)
{
	cr_assert_eq(tally_db_stats(db, st), 0);
}

static void path_of(char *out, size_t cap, const char *rel)
{
	snprintf(out, cap, "%s/%s", dir, rel);
}

/* The one WAL segment of shard 0 (asserts there is exactly one). */
static void only_segment(char *out, size_t cap)
{
	char wd[512];
	path_of(wd, sizeof wd, "wal/shard-000");
	int n = tu_find_files(wd, ".wal", out, cap);
	cr_assert_eq(n, 1, "%d segments", n);
}

static uint64_t size_of(const char *path)
{
	struct stat sb;
	cr_assert_eq(stat(path, &sb), 0, "stat %s", path);
	return (uint64_t)sb.st_size;
}

/* ---------------------------------------------------------------- item 2 */

/* A full disk (or EIO) on the WAL write refused the batch only in some
 * replies while it was applied anyway, and every later sync failed. */
static void write_failure_refuses_only_that_batch(int err)
{
	put_ok(0, 100);
	cr_assert_eq(tally_db_sync(db), 0);
	fio_fault_set(FIO_FAULT_WRITE, err, 0, 1);
	tally_write_result res;
	int rc = put(100, 50, &res);
	cr_assert_eq(rc, -err, "rc %d: %s", rc, tally_errmsg());
	cr_assert_eq(res.accepted, 0);
	cr_assert_eq(res.lines, 0, "no line of the refused batch may count as written");
	cr_assert(strstr(tally_errmsg(), "wal/shard-000/"), "%s", tally_errmsg());
	cr_assert_eq(fio_fault_hits(), 1);
	/* not applied: not visible */
	expect_totals(100, sum_of(0, 100));
	tally_stats st;
	stats(&st);
	cr_assert_eq(st.wal_write_errors, 1);
	cr_assert_eq(st.failed_shards, 0);
	/* space is back: writes and syncs work again by themselves */
	put_ok(200, 10);
	cr_assert_eq(tally_db_sync(db), 0, "%s", tally_errmsg());
	expect_totals(110, sum_of(0, 100) + sum_of(200, 10));
	close_db();
	open_db();
	expect_totals(110, sum_of(0, 100) + sum_of(200, 10));
}

Test(durable, wal_write_enospc_refuses_only_that_batch)
{
	write_failure_refuses_only_that_batch(ENOSPC);
}

Test(durable, wal_write_eio_refuses_only_that_batch)
{
	write_failure_refuses_only_that_batch(EIO);
}

/* After a failed fsync the shard fails for good (no retried fsync may
 * report the writes durable), and the writes that sync covered do not
 * come back at the next open: their writers were told they failed. */
static void fsync_failure_fails_shard_and_drops_its_writes(int err)
{
	put_ok(0, 100);
	cr_assert_eq(tally_db_sync(db), 0);
	put_ok(100, 50);
	fio_fault_set(FIO_FAULT_SYNC, err, 0, 1);
	cr_assert_eq(tally_db_sync(db), TALLY_EFAILED);
	cr_assert(strstr(tally_errmsg(), strerror(err)), "%s", tally_errmsg());
	/* the fault is spent: a retry would succeed and lie, so it must not run */
	cr_assert_eq(tally_db_sync(db), TALLY_EFAILED);
	tally_write_result res;
	cr_assert_eq(put(300, 5, &res), TALLY_EFAILED);
	cr_assert_eq(res.accepted, 0);
	tally_stats st;
	stats(&st);
	cr_assert_eq(st.failed_shards, 1);
	close_db();
	open_db();
	expect_totals(100, sum_of(0, 100));
	/* reopened: a fresh start */
	put_ok(400, 3);
	cr_assert_eq(tally_db_sync(db), 0, "%s", tally_errmsg());
	stats(&st);
	cr_assert_eq(st.failed_shards, 0);
}

Test(durable, fsync_eio_fails_shard_and_drops_its_writes)
{
	fsync_failure_fails_shard_and_drops_its_writes(EIO);
}

Test(durable, fsync_enospc_fails_shard_and_drops_its_writes)
{
	fsync_failure_fails_shard_and_drops_its_writes(ENOSPC);
}

/* A failed fsync while a flush rolls the segment fails the shard the same
 * way; nothing half-flushed is left for the next open. */
Test(durable, fsync_failure_in_flush_fails_shard)
{
	put_ok(0, 100);
	cr_assert_eq(tally_db_sync(db), 0);
	put_ok(100, 20);
	fio_fault_set(FIO_FAULT_SYNC, EIO, 0, 1);
	cr_assert_neq(tally_db_flush(db), 0);
	tally_stats st;
	stats(&st);
	cr_assert_eq(st.failed_shards, 1);
	cr_assert_eq(tally_db_sync(db), TALLY_EFAILED);
	close_db();
	open_db();
	expect_totals(100, sum_of(0, 100));
}

/* ---------------------------------------------------------------- item 1 */

/* The reproduction: write, flush into a part, remove MANIFEST,
 * reopen: the part was deleted as an orphan. */
Test(durable, missing_manifest_refuses_open_and_keeps_parts)
{
	put_ok(0, 100);
	cr_assert_eq(tally_db_flush(db), 0);
	close_db();
	char man[512], parts[512];
	path_of(man, sizeof man, "MANIFEST");
	path_of(parts, sizeof parts, "parts/0000000000000001.part");
	uint64_t part_size = size_of(parts);
	cr_assert_eq(unlink(man), 0);
	cr_assert_eq(try_open(), TALLY_ECORRUPT);
	cr_assert(strstr(tally_errmsg(), "has no MANIFEST"), "%s", tally_errmsg());
	cr_assert(strstr(tally_errmsg(), dir), "%s", tally_errmsg());
	cr_assert(strstr(tally_errmsg(), "0000000000000001.part"), "%s", tally_errmsg());
	cr_assert_eq(size_of(parts), part_size);
	/* nor with the WAL gone as well (it once started empty) */
	char wal[512];
	path_of(wal, sizeof wal, "wal");
	tu_rmrf(wal);
	cr_assert_eq(try_open(), TALLY_ECORRUPT);
	cr_assert(strstr(tally_errmsg(), "it has no WAL"), "%s", tally_errmsg());
	cr_assert_eq(size_of(parts), part_size);
}

Test(durable, stray_file_in_parts_is_moved_aside)
{
	put_ok(0, 10);
	cr_assert_eq(tally_db_flush(db), 0);
	close_db();
	char stray[512], aside[512];
	path_of(stray, sizeof stray, "parts/notes.txt");
	path_of(aside, sizeof aside, "parts/.unknown/notes.txt");
	FILE *f = fopen(stray, "w");
	cr_assert_not_null(f);
	fputs("the operator's\n", f);
	fclose(f);
	n_logs = 0;
	open_db();
	cr_assert_eq(access(stray, F_OK), -1);
	cr_assert_eq(size_of(aside), 15);
	cr_assert(strstr(last_log, "not a file tally writes: moved to"), "%s", last_log);
	expect_totals(10, sum_of(0, 10));
}

Test(durable, missing_wal_dir_of_a_named_shard_refuses_open)
{
	put_ok(0, 10);
	cr_assert_eq(tally_db_flush(db), 0);
	close_db();
	char wal[512];
	path_of(wal, sizeof wal, "wal/shard-000");
	tu_rmrf(wal);
	cr_assert_eq(try_open(), TALLY_ECORRUPT);
	cr_assert(strstr(tally_errmsg(), "wal/shard-000 is missing"), "%s", tally_errmsg());
}

/* ---------------------------------------------------------------- item 7 */

/* Two synced writes, then a flipped byte in the payload of the second
 * (the last record); *seg names the segment, *size its size. */
static void damage_last_record(char *seg, size_t cap, uint64_t *size)
{
	put_ok(0, 500);
	put_ok(500, 300);
	cr_assert_eq(tally_db_sync(db), 0);
	close_db();
	only_segment(seg, cap);
	*size = size_of(seg);
	int fd = open(seg, O_RDWR);
	uint8_t b;
	cr_assert_eq(pread(fd, &b, 1, (off_t)*size - 5), 1);
	b ^= 0x20;
	cr_assert_eq(pwrite(fd, &b, 1, (off_t)*size - 5), 1);
	close(fd);
}

Test(durable, flipped_byte_in_last_synced_record_refuses_open)
{
	char seg[600];
	uint64_t size;
	damage_last_record(seg, sizeof seg, &size);
	cr_assert_eq(try_open(), TALLY_ECORRUPT);
	cr_assert(strstr(tally_errmsg(), seg), "%s", tally_errmsg());
	cr_assert(strstr(tally_errmsg(), " offset "), "%s", tally_errmsg());
	cr_assert(strstr(tally_errmsg(), "were synced"), "%s", tally_errmsg());
	cr_assert_eq(size_of(seg), size, "the segment must be kept as it was");
}

/* The operator's other choice: read-only, what is intact answers, and
 * nothing changes on disk. */
Test(durable, damaged_wal_opens_read_only_when_chosen)
{
	char seg[600];
	uint64_t size;
	damage_last_record(seg, sizeof seg, &size);
	read_only_on_damage = 1;
	open_db();
	cr_assert(strstr(all_logs, "opened read-only after damage: "), "%s", all_logs);
	expect_totals(500, sum_of(0, 500)); /* the first write; the damaged one is not */
	tally_write_result res;
	cr_assert_eq(put(1000, 5, &res), TALLY_EFAILED);
	cr_assert(strstr(tally_errmsg(), "read-only"), "%s", tally_errmsg());
	cr_assert_eq(tally_db_flush(db), TALLY_EFAILED);
	cr_assert_eq(tally_db_merge(db), TALLY_EFAILED);
	cr_assert_eq(tally_db_sync(db), TALLY_EFAILED);
	tally_stats st;
	stats(&st);
	cr_assert_eq(st.failed_shards, 1);
	close_db();
	cr_assert_eq(size_of(seg), size, "read-only changed the segment");
	read_only_on_damage = 0;
	cr_assert_eq(try_open(), TALLY_ECORRUPT, "the damage must still be refused");
}

Test(durable, deleted_only_segment_refuses_open)
{
	put_ok(0, 5000);
	cr_assert_eq(tally_db_sync(db), 0);
	close_db();
	char seg[600];
	only_segment(seg, sizeof seg);
	cr_assert_eq(unlink(seg), 0);
	cr_assert_eq(try_open(), TALLY_ECORRUPT);
	cr_assert(strstr(tally_errmsg(), "were synced"), "%s", tally_errmsg());
	cr_assert(strstr(tally_errmsg(), "but are missing"), "%s", tally_errmsg());
}

/* Directories written before SYNCED existed open as they did. */
Test(durable, version_1_fixture_still_opens)
{
	close_db();
	char cmd[1024];
	snprintf(cmd, sizeof cmd, "cp -a %s/tests/data/v1/. %s/", TALLY_SOURCE_DIR, dir);
	tu_rmrf(dir);
	cr_assert_eq(mkdir(dir, 0755), 0);
	cr_assert_eq(system(cmd), 0);
	open_db();
	tally_stats st;
	stats(&st);
	cr_assert_gt(st.events, 0);
	close_db();
	open_db(); /* and again, with the SYNCED the first open wrote */
}
