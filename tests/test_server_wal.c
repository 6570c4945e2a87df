/*
 * test_server_wal.c — tallyd and a damaged WAL (issue 12, item 7): it
 * refuses to start, naming the file and offset, and leaves the segment
 * as it was; with --wal-damage-read-only on it starts, answers queries
 * from what is intact and refuses writes.
 *
 * The server is killed (-9) after an OK sync, so the synced records are
 * still in the WAL (a graceful stop would flush them into parts).
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <sys/wait.h>

#include "srvutil.h"
#include "testutil.h"

static tsrv s;

static void teardown(void)
{
	if (s.pid > 0)
		tsrv_wait(&s, SIGKILL);
	tdir_remove(&s);
}

/* The one segment of shard 0 into out; its size. */
static uint64_t only_segment(char *out, size_t cap)
{
	char wd[256];
	snprintf(wd, sizeof wd, "%s/wal/shard-000", s.data);
	cr_assert_eq(tu_find_files(wd, ".wal", out, cap), 1);
	struct stat sb;
	cr_assert_eq(stat(out, &sb), 0);
	return (uint64_t)sb.st_size;
}

Test(server_wal, damaged_synced_record_refuses_start_or_opens_read_only, .fini = teardown,
     .timeout = 120)
{
	tdir_make(&s);
	const char *one[] = {"--shards", "1", NULL};
	tsrv_spawn(&s, one, 1);
	tcli *c = tcli_open(s.port);
	tcli_sendf(c, "t,k=a v=1i 1\nt,k=a v=2i 2\n");
	tcli_sync(c, NULL, NULL);
	tcli_sendf(c, "t,k=a v=3i 3\n");
	tcli_sync(c, NULL, NULL);
	tcli_close(c);
	tsrv_wait(&s, SIGKILL);

	char seg[300];
	uint64_t size = only_segment(seg, sizeof seg);
	int fd = open(seg, O_RDWR);
	uint8_t b;
	cr_assert_eq(pread(fd, &b, 1, (off_t)size - 3), 1);
	b ^= 0x40;
	cr_assert_eq(pwrite(fd, &b, 1, (off_t)size - 3), 1);
	close(fd);

	/* refused, named, kept */
	tsrv_spawn(&s, one, 0);
	cr_assert_neq(tsrv_wait(&s, 0), 0);
	char *log = tsrv_log(&s);
	cr_assert(strstr(log, seg) && strstr(log, " offset ") && strstr(log, "were synced"), "%s",
		  log);
	free(log);
	struct stat sb;
	cr_assert_eq(stat(seg, &sb), 0);
	cr_assert_eq((uint64_t)sb.st_size, size);

	/* the operator's choice: read-only */
	const char *ro[] = {"--shards", "1", "--wal-damage-read-only", "on", NULL};
	tsrv_spawn(&s, ro, 1);
	c = tcli_open(s.port);
	ttable t;
	tcli_query(c, &t, "#!agg t v a 0 1h");
	cr_assert_null(t.err, "%s", t.err);
	cr_assert_eq(t.n, 2);
	cr_assert_str_eq(tcell(t.rows[1], 0), "2"); /* the first batch; the damaged one is not */
	ttable_free(&t);
	cr_assert_eq(tstat(c, "failed_shards"), 1);
	tcli_sendf(c, "t,k=a v=4i 4\n"); /* line 3: two queries came first */
	char *l = tcli_expect(c, "ERR lines 3-3: not written: ");
	cr_assert(strstr(l, "read-only"), "%s", l);
	free(l);
	tcli_close(c);
	cr_assert_eq(tsrv_wait(&s, SIGKILL), 128 + SIGKILL);
	cr_assert_eq(stat(seg, &sb), 0);
	cr_assert_eq((uint64_t)sb.st_size, size, "read-only changed the segment");
}
