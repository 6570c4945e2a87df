/*
 * test_part_reads_server.c — tallyd --part-reads: with pread no part
 * file is ever mapped into tallyd, so reading parts cannot grow its RSS;
 * a value other than mmap or pread is refused at start, by name.
 *
 * The check is on the mappings (/proc/PID/maps), not on a size that
 * drifts: tallyd flushes every 100 ms while connections write and query
 * every kind over everything written, so parts are opened, read and
 * merged; with the default (mmap) the same load shows part mappings,
 * which shows the check can see them.
 */
#include <criterion/criterion.h>

#include "srvutil.h"

/* The part files mapped into process pid. */
static unsigned part_maps(pid_t pid)
{
	char path[64], line[1024];
	snprintf(path, sizeof path, "/proc/%d/maps", (int)pid);
	FILE *f = fopen(path, "r");
	cr_assert_not_null(f, "cannot read %s", path);
	unsigned n = 0;
	while (fgets(line, sizeof line, f)) {
		size_t len = strlen(line);
		n += len > 6 && !strcmp(line + len - 6, ".part\n");
	}
	fclose(f);
	return n;
}

/* Writes, waits for parts, queries every kind; the part mappings seen
 * after. */
static unsigned maps_after_reads(const char *reads)
{
	tsrv s;
	tdir_make(&s);
	const char *extra[] = {"--flush-interval", "100ms", reads ? "--part-reads" : NULL, reads,
			       NULL};
	tsrv_start(&s, extra);
	tcli *c = tcli_open(s.port);
	char *buf = malloc(1 << 20);
	for (int round = 0; round < 10; round++) {
		size_t n = 0;
		for (int k = 0; k < 3000; k++)
			n += (size_t)sprintf(buf + n, "m,k=c%d v=%d.25,s=\"x%d\" %" PRId64 "\n",
					     k % 50, k, k % 7,
					     INT64_C(1700000000000000000) +
						     (int64_t)(round * 3000 + k) * 1000000000);
		cr_assert_eq(tcli_send(c, buf, n), 0);
		tcli_sync(c, NULL, NULL);
	}
	free(buf);
	/* the 100 ms flusher turns the memtables into parts; bounded wait */
	int64_t deadline = su_mono_ms() + 60000;
	while (tstat(c, "parts") == 0) {
		cr_assert(su_mono_ms() < deadline, "no part after 60 s");
		usleep(20000); /* polling #!stats */
	}
	for (int k = 0; k < 50; k++) {
		ttable t[3];
		tcli_query(c, &t[0], "#!series m v c%d 1h 0 2000000000000000000", k);
		tcli_query(c, &t[1], "#!agg m v c%d 1700000000000000013 1700000100000000000", k);
		tcli_query(c, &t[2], "#!scan m c%d 0 2000000000000000000", k);
		for (int q = 0; q < 3; q++) {
			cr_assert_null(t[q].err, "key c%d: %s", k, t[q].err);
			cr_assert_gt(t[q].n, 1, "key c%d: query %d answered no row", k, q);
			ttable_free(&t[q]);
		}
	}
	ttable t;
	tcli_query(c, &t, "#!keys m v 0 2000000000000000000");
	cr_assert_null(t.err, "%s", t.err);
	cr_assert_eq(t.n, 51, "#!keys: %zu rows and the header, want 50", t.n - 1);
	ttable_free(&t);
	unsigned n = part_maps(s.pid);
	tcli_close(c);
	cr_assert_eq(tsrv_wait(&s, SIGTERM), 0);
	tdir_remove(&s);
	return n;
}

Test(part_reads_server, pread_maps_no_part, .timeout = 180)
{
	unsigned n = maps_after_reads("pread");
	cr_assert_eq(n, 0, "--part-reads pread: %u part files mapped", n);
}

Test(part_reads_server, mmap_maps_the_parts_read, .timeout = 180)
{
	unsigned n = maps_after_reads(NULL); /* the default */
	cr_assert_gt(n, 0, "the default (mmap) mapped no part: the check sees nothing");
}

Test(part_reads_server, unknown_mode_refused_by_name, .timeout = 60)
{
	tsrv s;
	tdir_make(&s);
	const char *args[] = {"--part-reads", "mmapp", "--http-port", "off", NULL};
	tsrv_spawn(&s, args, 0);
	int code = tsrv_wait(&s, 0);
	cr_assert_neq(code, 0, "tallyd started with --part-reads mmapp");
	char *log = tsrv_log(&s);
	cr_assert_not_null(strstr(log, "part-reads 'mmapp' is not mmap or pread"), "%s", log);
	free(log);
	tdir_remove(&s);
}
