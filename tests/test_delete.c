/*
 * test_delete.c — corrections (engine/delete.c): dropping a table.
 *
 * Two tables, events in parts (merged and sealed) and in the memtable and
 * WAL; dropping one leaves no event of it in any query, at once and after
 * reopening (the WAL must not bring it back), while the other answers
 * exactly as before; the dropped table written again starts empty. A
 * kill -9 before and after the drop's manifest change leaves the table
 * either whole or gone, the other table exact.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <sys/wait.h>

#include "testutil.h"

#define T0   INT64_C(1699920000000000000)
#define KEYS 4
#define N    3000

/* N events per table over three days, value (i % 100), key i % KEYS;
 * the last third stays in the memtable and WAL. */
static void fill(tally_db *db)
{
	char *buf = malloc((size_t)N * 64), *p = buf;
	for (int round = 0; round < 3; round++) {
		p = buf;
		for (int i = round * N / 3; i < (round + 1) * N / 3; i++)
			for (int t = 0; t < 2; t++)
				p += sprintf(p, "%s,k=key%d v=%d %lld\n", t ? "keep" : "gone",
					     i % KEYS, i % 100,
					     (long long)(T0 + (int64_t)i * 86 * TALLY_NS_PER_SEC));
		cr_assert_eq(tu_write_synced(db, buf, (size_t)(p - buf)), 2 * (N / 3), "%s",
			     tally_errmsg());
		if (round < 2) {
			cr_assert_eq(tally_db_flush(db), 0);
			cr_assert_eq(tally_db_merge(db), 0);
		}
	}
	free(buf);
}

/* Every key of table: count by the exact aggregate, a scan and a daily
 * series. A dropped table is unknown after a reopen (nothing names it):
 * that counts 0. */
static uint64_t count_table(tally_db *db, const char *table)
{
	uint64_t total = 0;
	tally_agg any;
	if (tally_query_agg(db, table, "v", "key0", INT64_MIN, INT64_MAX, &any) ==
		    TALLY_ENOTFOUND &&
	    !strcmp(table, "gone"))
		return 0;
	for (int k = 0; k < KEYS; k++) {
		char key[16];
		sprintf(key, "key%d", k);
		uint64_t agg = 0, rows = 0;
		cr_assert_eq(tu_count_key(db, table, "v", key, &agg, &rows), 0, "%s %s: %s", table,
			     key, tally_errmsg());
		cr_assert_eq(agg, rows, "%s %s: %llu by rollups, %llu rows", table, key,
			     (unsigned long long)agg, (unsigned long long)rows);
		tally_bucket b[8];
		size_t n;
		cr_assert_eq(tally_query_series(db, table, "v", key, TALLY_1D, INT64_MIN, INT64_MAX,
						b, 8, &n),
			     0);
		uint64_t series = 0;
		for (size_t i = 0; i < n; i++)
			series += b[i].agg.count;
		cr_assert_eq(series, agg, "%s %s: series %llu, agg %llu", table, key,
			     (unsigned long long)series, (unsigned long long)agg);
		total += agg;
	}
	return total;
}

Test(delete, drop_table_leaves_nothing_and_the_other_table_whole)
{
	char *dir = tu_tmpdir();
	tally_options o = tu_quiet_opts();
	tally_db *db;
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	fill(db);
	cr_assert_eq(count_table(db, "gone"), N);
	cr_assert_eq(tally_db_drop_table(db, "nope"), TALLY_ENOTFOUND);
	cr_assert_eq(tally_db_drop_table(db, "gone"), 0, "%s", tally_errmsg());
	cr_assert_eq(count_table(db, "gone"), 0);
	cr_assert_eq(count_table(db, "keep"), N);
	tally_db_close(db);
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	cr_assert_eq(count_table(db, "gone"), 0, "the WAL brought the dropped table back");
	cr_assert_eq(count_table(db, "keep"), N);
	/* written again, it starts empty */
	char line[128];
	int len = sprintf(line, "gone,k=key1 v=7 %lld\n", (long long)T0);
	cr_assert_eq(tu_write_synced(db, line, (size_t)len), 1);
	cr_assert_eq(count_table(db, "gone"), 1);
	/* a drop of what only the memtable holds */
	cr_assert_eq(tally_db_drop_table(db, "gone"), 0, "%s", tally_errmsg());
	cr_assert_eq(count_table(db, "gone"), 0);
	cr_assert_eq(count_table(db, "keep"), N);
	tally_db_close(db);
	tu_rmrf(dir);
	free(dir);
}

Test(delete, kill9_during_drop, .timeout = 120)
{
	const char *steps[] = {"drop:before-manifest", "drop:after-manifest"};
	for (int s = 0; s < 2; s++) {
		char *dir = tu_tmpdir();
		tally_options o = tu_quiet_opts();
		tally_db *db;
		cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
		fill(db);
		tally_db_close(db);
		pid_t pid = fork();
		cr_assert_geq(pid, 0);
		if (pid == 0) {
			setenv("TALLY_CRASH_AT", steps[s], 1);
			if (tally_db_open(dir, &o, &db))
				_exit(3);
			tally_db_drop_table(db, "gone");
			_exit(4);
		}
		int status;
		waitpid(pid, &status, 0);
		cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "%s: status %d",
			  steps[s], status);
		cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
		uint64_t left = count_table(db, "gone");
		/* one shard, one commit: all or nothing */
		cr_assert(s == 0 ? left == N : left == 0, "%s: %llu events of the dropped table",
			  steps[s], (unsigned long long)left);
		cr_assert_eq(count_table(db, "keep"), N);
		/* after the manifest change nothing names the table any more */
		cr_assert_eq(tally_db_drop_table(db, "gone"), s == 0 ? 0 : TALLY_ENOTFOUND, "%s",
			     tally_errmsg());
		cr_assert_eq(count_table(db, "gone"), 0);
		tally_db_close(db);
		tu_rmrf(dir);
		free(dir);
	}
}
