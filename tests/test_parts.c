/*
 * test_parts.c — parts and the manifest: exactly-once across crashes at
 * every step of a flush, corruption found and named (file and block),
 * never a wrong answer, and saved databases of this format version.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "testutil.h"

#define T0      INT64_C(1700000000000000000)
#define KEYS    20
#define PER_KEY 3000

static tally_options quiet_opts(void)
{
	tally_options o;
	tally_options_init(&o);
	o.log_fn = tu_quiet_log;
	o.no_background = 1;
	return o;
}

/* Writes KEYS x PER_KEY events (value = row number within the key) spread
 * over two days, in two calls, and syncs. */
static void write_data(tally_db *db, int64_t base)
{
	tally_writer *w;
	cr_assert_eq(tally_writer_open(db, -1, &w), 0);
	size_t cap = (size_t)KEYS * PER_KEY * 64;
	char *buf = malloc(cap), *p = buf;
	for (int i = 0; i < PER_KEY; i++)
		for (int k = 0; k < KEYS; k++)
			p += sprintf(p, "m,k=key%02d v=%di,f=%d.5,s=\"x%d\" %lld\n", k, i, i % 7,
				     i % 3,
				     (long long)(base + (int64_t)i * 57 * TALLY_NS_PER_SEC + k));
	tally_write_result r;
	cr_assert_eq(tally_write_lp(w, buf, (size_t)(p - buf), TALLY_PREC_NS, &r), 0);
	cr_assert_eq(r.accepted, (uint64_t)KEYS * PER_KEY);
	cr_assert_eq(tally_db_sync(db), 0);
	tally_writer_close(w);
	free(buf);
}

/* Every key holds exactly rows 0..PER_KEY-1 once, per scan and rollups. */
static void check_data(tally_db *db, int copies)
{
	for (int k = 0; k < KEYS; k++) {
		char key[16];
		sprintf(key, "key%02d", k);
		tally_agg a;
		cr_assert_eq(tally_query_agg(db, "m", "v", key, INT64_MIN, INT64_MAX, &a), 0, "%s",
			     tally_errmsg());
		cr_assert_eq(a.count, (uint64_t)PER_KEY * copies, "%s: count %llu", key,
			     (unsigned long long)a.count);
		cr_assert_eq(a.sum, (double)copies * PER_KEY * (PER_KEY - 1) / 2);
		tally_scan *sc;
		cr_assert_eq(tally_scan_open(db, "m", key, INT64_MIN, INT64_MAX, &sc), 0);
		tally_row row;
		uint64_t n = 0;
		while (tally_scan_next(sc, &row) == 1)
			n++;
		tally_scan_close(sc);
		cr_assert_eq(n, (uint64_t)PER_KEY * copies);
	}
	tally_stats st;
	cr_assert_eq(tally_db_stats(db, &st), 0);
	cr_assert_eq(st.events, (uint64_t)KEYS * PER_KEY * copies);
	cr_assert_eq(st.keys, KEYS);
}

static int count_files(const char *dir, const char *suffix)
{
	DIR *d = opendir(dir);
	int n = 0;
	struct dirent *e;
	while (d && (e = readdir(d)))
		if (strstr(e->d_name, suffix))
			n++;
	if (d)
		closedir(d);
	return n;
}

static void crash_during_flush(const char *step)
{
	char *dir = tu_tmpdir();
	tally_options o = quiet_opts();
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		tally_db *db;
		if (tally_db_open(dir, &o, &db))
			_exit(2);
		write_data(db, T0);
		setenv("TALLY_CRASH_AT", step, 1);
		/* the crash point is read at open: reopen to arm it */
		tally_db_close(db);
		if (tally_db_open(dir, &o, &db))
			_exit(3);
		tally_db_flush(db);
		_exit(4); /* the crash point should have killed us */
	}
	int status;
	waitpid(pid, &status, 0);
	cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "%s: child status %d", step,
		  status);
	tally_db *db;
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s: %s", step, tally_errmsg());
	check_data(db, 1);
	/* no leftovers: every part file is named by the manifest */
	char parts[4200];
	snprintf(parts, sizeof parts, "%s/parts", dir);
	tally_stats st;
	tally_db_stats(db, &st);
	cr_assert_eq(count_files(parts, ".tmp"), 0, "%s: a .tmp survived", step);
	cr_assert_eq((uint64_t)count_files(parts, ".part"), st.parts, "%s: orphan parts", step);
	/* and the store goes on: flush, more data, reopen */
	cr_assert_eq(tally_db_flush(db), 0, "%s", tally_errmsg());
	write_data(db, T0 + 3 * TALLY_1D);
	check_data(db, 2);
	tally_db_close(db);
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	check_data(db, 2);
	tally_db_close(db);
	tu_rmrf(dir);
	free(dir);
}

Test(parts, crash_before_part_rename)
{
	crash_during_flush("flush:before-part-rename");
}
Test(parts, crash_between_part_and_manifest)
{
	crash_during_flush("flush:before-manifest");
}
Test(parts, crash_after_manifest_before_trim)
{
	crash_during_flush("flush:after-manifest");
}
Test(parts, crash_after_trim)
{
	crash_during_flush("flush:after-trim");
}

Test(parts, flush_keeps_answers_and_reopen_reads_parts)
{
	char *dir = tu_tmpdir();
	tally_options o = quiet_opts();
	tally_db *db;
	cr_assert_eq(tally_db_open(dir, &o, &db), 0);
	write_data(db, T0);
	check_data(db, 1);
	cr_assert_eq(tally_db_flush(db), 0, "%s", tally_errmsg());
	tally_stats st;
	tally_db_stats(db, &st);
	cr_assert_geq(st.parts, 1);
	cr_assert_eq(st.part_rows, (uint64_t)KEYS * PER_KEY);
	cr_assert_eq(st.memtable_bytes, 0);
	check_data(db, 1);
	tally_db_close(db);
	cr_assert_eq(tally_db_open(dir, &o, &db), 0);
	check_data(db, 1);
	/* the WAL's flushed records are not replayed again */
	tally_db_stats(db, &st);
	cr_assert_eq(st.memtable_bytes, 0, "%llu bytes replayed into the memtable",
		     (unsigned long long)st.memtable_bytes);
	tally_db_close(db);
	tu_rmrf(dir);
	free(dir);
}

/* ---------------------------------------------------------------- damage */

static char *first_part(const char *dir)
{
	static char path[8600];
	char parts[4200];
	snprintf(parts, sizeof parts, "%s/parts", dir);
	DIR *d = opendir(parts);
	struct dirent *e;
	path[0] = 0;
	while ((e = readdir(d)))
		if (strstr(e->d_name, ".part")) {
			snprintf(path, sizeof path, "%s/%s", parts, e->d_name);
			break;
		}
	closedir(d);
	cr_assert(path[0]);
	return path;
}

static void flip(const char *path, off_t at)
{
	int fd = open(path, O_RDWR);
	unsigned char c;
	cr_assert_eq(pread(fd, &c, 1, at), 1);
	c ^= 0x10;
	cr_assert_eq(pwrite(fd, &c, 1, at), 1);
	close(fd);
}

static char *flushed_db(void)
{
	char *dir = tu_tmpdir();
	tally_options o = quiet_opts();
	tally_db *db;
	cr_assert_eq(tally_db_open(dir, &o, &db), 0);
	write_data(db, T0);
	cr_assert_eq(tally_db_flush(db), 0);
	tally_db_close(db);
	return dir;
}

Test(parts, flipped_block_byte_is_named_never_wrong)
{
	char *dir = flushed_db();
	char *path = first_part(dir);
	struct stat sb;
	stat(path, &sb);
	/* a byte in the block area (after the 32-byte header, well before the
	 * index at the end) */
	flip(path, 40 + (sb.st_size / 3));
	tally_options o = quiet_opts();
	tally_db *db;
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	/* every query either answers exactly or names the file and block */
	int errors = 0;
	for (int k = 0; k < KEYS; k++) {
		char key[16];
		sprintf(key, "key%02d", k);
		tally_scan *sc;
		int rc = tally_scan_open(db, "m", key, INT64_MIN, INT64_MAX, &sc);
		if (rc) {
			cr_assert_eq(rc, TALLY_ECORRUPT, "rc %d: %s", rc, tally_errmsg());
			cr_assert(strstr(tally_errmsg(), ".part block"), "%s", tally_errmsg());
			errors++;
		} else {
			tally_row row;
			int64_t n = 0, sum = 0;
			while (tally_scan_next(sc, &row) == 1) {
				n++;
				for (size_t c = 0; c < row.n_values; c++)
					if (row.values[c].type == TALLY_T_I64)
						sum += row.values[c].v.i64;
			}
			tally_scan_close(sc);
			cr_assert_eq(n, PER_KEY);
			cr_assert_eq(sum, (int64_t)PER_KEY * (PER_KEY - 1) / 2);
		}
		static const char *fields[] = {"v", "f"};
		static const int64_t steps[] = {TALLY_5M, TALLY_1H, TALLY_1D};
		for (int f = 0; f < 2; f++) {
			for (int l = 0; l < 3; l++) {
				tally_bucket b[2048];
				size_t nb;
				rc = tally_query_series(db, "m", fields[f], key, steps[l],
							INT64_MIN / 2, INT64_MAX / 2, b, 2048, &nb);
				if (rc) {
					cr_assert_eq(rc, TALLY_ECORRUPT, "%s", tally_errmsg());
					cr_assert(strstr(tally_errmsg(), ".part block"), "%s",
						  tally_errmsg());
					errors++;
					continue;
				}
				uint64_t cnt = 0;
				for (size_t i = 0; i < nb; i++)
					cnt += b[i].agg.count;
				cr_assert_eq(cnt, PER_KEY);
			}
			tally_agg a;
			/* an unaligned range: rollups and raw edges */
			rc = tally_query_agg(db, "m", fields[f], key, T0 + 7777, INT64_MAX / 2, &a);
			if (rc) {
				cr_assert_eq(rc, TALLY_ECORRUPT, "%s", tally_errmsg());
				errors++;
			} else {
				cr_assert_eq(a.count, PER_KEY - 1); /* row 0 is before the range */
			}
		}
	}
	cr_assert_geq(errors, 1, "the flipped byte went unnoticed");
	tally_db_close(db);
	tu_rmrf(dir);
	free(dir);
}

Test(parts, damaged_index_or_manifest_fails_open_with_the_file_named)
{
	char *dir = flushed_db();
	char *path = first_part(dir);
	struct stat sb;
	stat(path, &sb);
	flip(path, sb.st_size - 60); /* in the index */
	tally_options o = quiet_opts();
	tally_db *db = NULL;
	int rc = tally_db_open(dir, &o, &db);
	cr_assert_eq(rc, TALLY_ECORRUPT, "%d %s", rc, tally_errmsg());
	cr_assert(strstr(tally_errmsg(), ".part"), "%s", tally_errmsg());
	flip(path, sb.st_size - 60); /* undo */
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	tally_db_close(db);
	/* a truncated part */
	cr_assert_eq(truncate(path, sb.st_size - 1), 0);
	cr_assert_eq(tally_db_open(dir, &o, &db), TALLY_ECORRUPT);
	cr_assert(strstr(tally_errmsg(), ".part"), "%s", tally_errmsg());
	/* the manifest */
	char man[4200];
	snprintf(man, sizeof man, "%s/MANIFEST", dir);
	flip(man, 20);
	cr_assert_eq(tally_db_open(dir, &o, &db), TALLY_ECORRUPT);
	cr_assert(strstr(tally_errmsg(), "MANIFEST"), "%s", tally_errmsg());
	tu_rmrf(dir);
	free(dir);
}

/* ---------------------------------------------------------------- formats */

/*
 * tests/data/v1/ holds a database written by this format version (parts,
 * manifest and WAL; regenerate with TALLY_WRITE_FIXTURE=DIR). Every later
 * version must still read it and give these answers.
 */
#ifndef TALLY_SOURCE_DIR
#define TALLY_SOURCE_DIR "."
#endif

Test(parts, saved_v1_database_still_reads)
{
	const char *out = getenv("TALLY_WRITE_FIXTURE");
	tally_options o = quiet_opts();
	tally_db *db;
	if (out) {
		cr_assert_eq(tally_db_open(out, &o, &db), 0);
		write_data(db, T0);
		cr_assert_eq(tally_db_flush(db), 0);
		/* and a tail left in the WAL */
		tally_writer *w;
		tally_writer_open(db, 0, &w);
		tally_write_lp(w, "m,k=wal v=7i 1700000000000000000\n", 33, TALLY_PREC_NS, NULL);
		tally_db_sync(db);
		tally_writer_close(w);
		tally_db_close(db);
		return;
	}
	char *dir = tu_tmpdir();
	char cmd[9000];
	snprintf(cmd, sizeof cmd, "cp -r %s/tests/data/v1/. %s/", TALLY_SOURCE_DIR, dir);
	cr_assert_eq(system(cmd), 0);
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	tally_agg a;
	cr_assert_eq(tally_query_agg(db, "m", "v", "wal", INT64_MIN, INT64_MAX, &a), 0);
	cr_assert_eq(a.count, 1);
	cr_assert_eq(a.sum, 7);
	for (int k = 0; k < KEYS; k++) {
		char key[16];
		sprintf(key, "key%02d", k);
		cr_assert_eq(tally_query_agg(db, "m", "v", key, INT64_MIN, INT64_MAX, &a), 0);
		cr_assert_eq(a.count, PER_KEY);
		cr_assert_eq(a.sum, (double)PER_KEY * (PER_KEY - 1) / 2);
		cr_assert_eq(tally_query_agg(db, "m", "f", key, INT64_MIN, INT64_MAX, &a), 0);
		cr_assert_eq(a.count, PER_KEY);
	}
	tally_bucket b[64];
	size_t n;
	cr_assert_eq(tally_query_series(db, "m", "v", "key03", TALLY_1D, INT64_MIN / 2,
					INT64_MAX / 2, b, 64, &n),
		     0);
	uint64_t total = 0;
	for (size_t i = 0; i < n; i++)
		total += b[i].agg.count;
	cr_assert_eq(total, PER_KEY);
	cr_assert_eq(n, 3, "the events span three days");
	tally_db_close(db);
	tu_rmrf(dir);
	free(dir);
}

/* ---------------------------------------------------------------- merges */

Test(parts, merges_seal_and_fold_late_data_exactly)
{
	char *dir = tu_tmpdir();
	tally_options o = quiet_opts();
	tally_db *db;
	cr_assert_eq(tally_db_open(dir, &o, &db), 0);
	/* the same two-day data in several flushes: many parts per partition */
	for (int i = 0; i < 5; i++) {
		write_data(db, T0 + i); /* distinct times, same partitions */
		cr_assert_eq(tally_db_flush(db), 0, "%s", tally_errmsg());
	}
	tally_stats st;
	tally_db_stats(db, &st);
	uint64_t parts_before = st.parts;
	cr_assert_geq(parts_before, 10);
	cr_assert_eq(tally_db_merge(db), 0, "%s", tally_errmsg());
	tally_db_stats(db, &st);
	cr_assert_lt(st.parts, parts_before, "no merge happened");
	cr_assert_geq(st.merges, 1);
	cr_assert_geq(st.sealed_parts, 1, "the older partitions should be sealed");
	check_data(db, 5);
	/* late data into the sealed partitions: a late part, then a fold once
	 * the late rows reach the segment's */
	write_data(db, T0 + 100);
	cr_assert_eq(tally_db_flush(db), 0);
	cr_assert_eq(tally_db_merge(db), 0, "%s", tally_errmsg());
	check_data(db, 6);
	for (int i = 0; i < 5; i++) {
		write_data(db, T0 + 200 + i);
		cr_assert_eq(tally_db_flush(db), 0);
		cr_assert_eq(tally_db_merge(db), 0, "%s", tally_errmsg());
	}
	check_data(db, 11);
	tally_db_stats(db, &st);
	cr_assert_leq(st.write_amplification, 3.0, "write amplification %.2f",
		      st.write_amplification);
	fprintf(stderr, "merges: %llu parts, %llu sealed, %llu merges, write amplification %.2f\n",
		(unsigned long long)st.parts, (unsigned long long)st.sealed_parts,
		(unsigned long long)st.merges, st.write_amplification);
	tally_db_close(db);
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	check_data(db, 11);
	tally_db_close(db);
	tu_rmrf(dir);
	free(dir);
}

/* Writes n rows per key at base + i * step_ns, values 1 each. */
static void write_ones(tally_db *db, int64_t base, int n, int64_t step_ns)
{
	tally_writer *w;
	cr_assert_eq(tally_writer_open(db, -1, &w), 0);
	char *buf = malloc((size_t)KEYS * (size_t)n * 48 + 1), *p = buf;
	for (int i = 0; i < n; i++)
		for (int k = 0; k < KEYS; k++)
			p += sprintf(p, "m,k=key%02d v=1i %lld\n", k,
				     (long long)(base + i * step_ns + k));
	tally_write_result r;
	cr_assert_eq(tally_write_lp(w, buf, (size_t)(p - buf), TALLY_PREC_NS, &r), 0);
	cr_assert_eq(r.accepted, (uint64_t)KEYS * (uint64_t)n);
	tally_writer_close(w);
	free(buf);
}

/* The newest partition never seals (nothing newer arrives), so its late
 * trickle merges as open parts: the small parts must merge among
 * themselves by level, not pull the big part into every merge. Found by
 * bench/run, where a 2-shard server rewrote 26 bytes per late byte. */
Test(parts, open_partition_merges_by_level_not_rewriting_the_big_part)
{
	char *dir = tu_tmpdir();
	tally_options o = quiet_opts();
	tally_db *db;
	cr_assert_eq(tally_db_open(dir, &o, &db), 0);
	const int64_t day = 86400 * TALLY_NS_PER_SEC, d0 = T0 / day * day;
	/* one partition: a big part from four flushes merged into one */
	for (int i = 0; i < 4; i++) {
		write_ones(db, d0 + i, 2000, 10 * TALLY_NS_PER_SEC);
		cr_assert_eq(tally_db_flush(db), 0);
	}
	cr_assert_eq(tally_db_merge(db), 0, "%s", tally_errmsg());
	tally_stats st;
	tally_db_stats(db, &st);
	cr_assert_eq(st.parts, 1);
	const double big_rows = 4.0 * 2000 * KEYS;
	/* then 64 small late flushes into the same partition */
	for (int i = 0; i < 64; i++) {
		write_ones(db, d0 + 100 + i, 5, 60 * TALLY_NS_PER_SEC);
		cr_assert_eq(tally_db_flush(db), 0);
		cr_assert_eq(tally_db_merge(db), 0, "%s", tally_errmsg());
		tally_db_stats(db, &st);
		cr_assert_leq(st.parts, 1 + 3 * 4, "flush %d: %llu parts", i,
			      (unsigned long long)st.parts);
	}
	tally_db_stats(db, &st);
	const double small_rows = 64.0 * 5 * KEYS, accepted = big_rows + small_rows;
	/* written: every row once at its flush, the big rows once more at
	 * their merge, each small row at most once per level (3 here); the
	 * old policy rewrote the big part at every fourth flush (~16 times) */
	double bound = (2 * big_rows + 4 * small_rows) / accepted;
	cr_assert_leq(st.write_amplification, bound, "write amplification %.2f > %.2f",
		      st.write_amplification, bound);
	tally_agg a;
	cr_assert_eq(tally_query_agg(db, "m", "v", "key07", INT64_MIN, INT64_MAX, &a), 0);
	cr_assert_eq(a.count, 4 * 2000 + 64 * 5);
	tally_db_close(db);
	tu_rmrf(dir);
	free(dir);
}

static void crash_during_merge(const char *step)
{
	char *dir = tu_tmpdir();
	tally_options o = quiet_opts();
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		tally_db *db;
		if (tally_db_open(dir, &o, &db))
			_exit(2);
		for (int i = 0; i < 4; i++) {
			write_data(db, T0 + i);
			if (tally_db_flush(db))
				_exit(3);
		}
		tally_db_close(db);
		setenv("TALLY_CRASH_AT", step, 1);
		if (tally_db_open(dir, &o, &db))
			_exit(4);
		tally_db_merge(db);
		_exit(5);
	}
	int status;
	waitpid(pid, &status, 0);
	cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "%s: child status %d", step,
		  status);
	tally_db *db;
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s: %s", step, tally_errmsg());
	check_data(db, 4);
	char parts[4200];
	snprintf(parts, sizeof parts, "%s/parts", dir);
	tally_stats st;
	tally_db_stats(db, &st);
	cr_assert_eq((uint64_t)count_files(parts, ".part"), st.parts, "%s: orphan parts", step);
	cr_assert_eq(tally_db_merge(db), 0, "%s", tally_errmsg());
	check_data(db, 4);
	tally_db_close(db);
	tu_rmrf(dir);
	free(dir);
}

Test(parts, crash_merge_before_part_rename)
{
	crash_during_merge("merge:before-part-rename");
}
Test(parts, crash_merge_before_manifest)
{
	crash_during_merge("merge:before-manifest");
}
Test(parts, crash_merge_after_manifest)
{
	crash_during_merge("merge:after-manifest");
}

Test(parts, memory_stays_bounded_as_history_grows)
{
	char *dir = tu_tmpdir();
	tally_options o = quiet_opts();
	o.memtable_bytes = 1 << 20;
	tally_db *db;
	cr_assert_eq(tally_db_open(dir, &o, &db), 0);
	tally_writer *w;
	tally_writer_open(db, 0, &w);
	int64_t ts[1440];
	double v[1440];
	uint64_t peak = 0, first = 0;
	for (int day = 0; day < 30; day++) {
		for (int k = 0; k < 50; k++) {
			char key[16];
			sprintf(key, "c%d", k);
			for (int i = 0; i < 1440; i++) {
				ts[i] = T0 + (int64_t)day * TALLY_1D +
					(int64_t)i * 60 * TALLY_NS_PER_SEC;
				v[i] = i % 100;
			}
			tally_column c = {"v", TALLY_T_F64, v, NULL};
			tally_batch b = {"m", key, "k", 1440, ts, 1, &c};
			cr_assert_eq(tally_write_batch(w, &b), 0, "%s", tally_errmsg());
		}
		cr_assert_eq(tally_db_flush(db), 0);
		cr_assert_eq(tally_db_merge(db), 0);
		tally_stats st;
		tally_db_stats(db, &st);
		/* memtables and their rollups are empty after a flush; what stays
		 * is the parts' indexes: one sealed segment a day, under a KiB per key */
		uint64_t mem = st.memtable_bytes + st.rollup_bytes;
		cr_assert_eq(mem, 0, "day %d: %llu bytes left in memtables", day,
			     (unsigned long long)mem);
		if (day == 0)
			first = st.index_bytes;
		peak = st.index_bytes;
		cr_assert_lt(st.index_bytes, (uint64_t)(day + 1) * 65536,
			     "index memory over 64 KiB a day (50 keys): %llu",
			     (unsigned long long)st.index_bytes);
		cr_assert_eq(st.events, (uint64_t)(day + 1) * 50 * 1440);
	}
	/* rollups of flushed days live in parts, not in RAM: only the small
	 * indexes grow, linearly with days */
	cr_assert_gt(first, 0);
	cr_assert_leq(peak, first * 40, "index memory: %llu then %llu", (unsigned long long)first,
		      (unsigned long long)peak);
	tally_agg a;
	cr_assert_eq(tally_query_agg(db, "m", "v", "c7", INT64_MIN, INT64_MAX, &a), 0);
	cr_assert_eq(a.count, 30 * 1440);
	tally_writer_close(w);
	tally_db_close(db);
	tu_rmrf(dir);
	free(dir);
}
