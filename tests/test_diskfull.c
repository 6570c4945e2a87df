/*
 * test_diskfull.c — tallyd on a disk that fills up, then has room again
 * (issue 12, item 2), on a real 64 MiB tmpfs this test mounts.
 *
 * Once the WAL could not be written, every later #!sync failed until a
 * restart, also after space was freed, and lines of failed batches were
 * partly refused and partly applied without a word (ghosts a retrying
 * client doubles). Now: a line tallyd did not refuse is durable at the
 * next OK sync, a line it refused ("ERR lines A-B: not written") is gone,
 * and after space returns writes and syncs succeed by themselves.
 *
 * Each line's v is its line number on the connection, so the count and
 * the sum of v after a restart say exactly which lines were kept.
 *
 * Mounting needs root (the tests run as root); where mount is refused the
 * test is skipped (Criterion's skip).
 */
#include <criterion/criterion.h>
#include <sys/mount.h>
#include <sys/statvfs.h>
#include <sys/wait.h>

#include "srvutil.h"

#define LINES_PER_BATCH 2000
#define MAX_BATCHES     4000 /* bounds the fill: 8 M lines, far past 64 MiB */

static tsrv s;
static int mounted;

static void teardown(void)
{
	if (s.pid > 0)
		tsrv_wait(&s, SIGKILL);
	if (mounted)
		umount2(s.data, MNT_DETACH);
	tdir_remove(&s);
}

static uint64_t conn_lines; /* lines sent on the connection, #!sync included */

/* Sends lines first..first+n-1 and a sync; marks refused lines in
 * refused[] from "ERR lines A-B: not written" replies (A and B count the
 * connection's lines, commands included). Returns 1 when the sync
 * answered OK. */
/* splitmix64's finalizer: times with no pattern a codec could use */
static uint64_t scatter(uint64_t x)
{
	x += UINT64_C(0x9e3779b97f4a7c15);
	x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
	x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
	return x ^ (x >> 31);
}

static int batch(tcli *c, uint64_t first, uint64_t n, uint8_t *refused, uint64_t *n_refused)
{
	uint64_t base = conn_lines + 1; /* line number of id first */
	conn_lines += n + 1;
	char *buf = malloc(n * 48), *p = buf;
	/* Times scattered over the hour the check reads: the WAL codes
	 * batches with the part codecs (delta timestamps), and times that
	 * rise by one would take under a byte a line, too little to fill the
	 * disk in MAX_BATCHES. */
	for (uint64_t i = first; i < first + n; i++)
		p += sprintf(p, "t,k=a v=%" PRIu64 "i %" PRIu64 "\n", i,
			     scatter(i) % UINT64_C(3600000000000));
	p += sprintf(p, "#!sync\n");
	cr_assert_eq(tcli_send(c, buf, (size_t)(p - buf)), 0);
	free(buf);
	for (;;) {
		char *l = tcli_line(c, 60000);
		cr_assert_not_null(l, "no answer to a sync");
		uint64_t a, b;
		int ok = !strncmp(l, "OK sync", 7);
		if (ok || !strncmp(l, "ERR sync", 8)) {
			free(l);
			return ok;
		}
		cr_assert(sscanf(l, "ERR lines %" SCNu64 "-%" SCNu64 ": not written", &a, &b) == 2,
			  "unexpected reply: %s", l);
		cr_assert(strstr(l, "No space left on device"), "%s", l);
		cr_assert(a >= base && b < base + n && a <= b, "%s", l);
		for (uint64_t i = a - base + first; i <= b - base + first; i++) {
			*n_refused += !refused[i];
			refused[i] = 1;
		}
		free(l);
	}
}

/* Fills the tmpfs with a file until about `leave` bytes are free. */
static void ballast(const char *path, uint64_t leave)
{
	struct statvfs v;
	cr_assert_eq(statvfs(s.data, &v), 0);
	uint64_t avail = (uint64_t)v.f_bavail * v.f_frsize;
	cr_assert_gt(avail, leave);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	cr_assert_geq(fd, 0);
	static char zero[1 << 20];
	for (uint64_t left = avail - leave; left;) {
		size_t n = left < sizeof zero ? (size_t)left : sizeof zero;
		cr_assert_eq(write(fd, zero, n), (ssize_t)n);
		left -= n;
	}
	close(fd);
}

Test(diskfull, refused_lines_are_gone_and_syncs_recover, .fini = teardown, .timeout = 600)
{
	tdir_make(&s);
	cr_assert_eq(mkdir(s.data, 0755), 0);
	if (mount("tmpfs", s.data, "tmpfs", 0, "size=64m") != 0)
		cr_skip_test("mount of a tmpfs refused: %s", strerror(errno));
	mounted = 1;
	char ball[300];
	snprintf(ball, sizeof ball, "%s/ballast", s.data);
	ballast(ball, 6u << 20);

	const char *args[] = {"--flush-interval", "1h", NULL};
	tsrv_spawn(&s, args, 1);
	tcli *c = tcli_open(s.port);
	uint64_t max = (uint64_t)MAX_BATCHES * LINES_PER_BATCH + 1;
	uint8_t *refused = calloc(max + 16 * LINES_PER_BATCH, 1);
	uint64_t next = 1, n_refused = 0;
	int full_batches = 0;
	/* Fill until several whole batches were refused in a row. */
	while (full_batches < 3) {
		if (next >= max)
			cr_assert_fail("the disk never filled: wal_bytes %" PRIu64
				       " part_bytes %" PRIu64 " events %" PRIu64,
				       tstat(c, "wal_bytes"), tstat(c, "part_bytes"),
				       tstat(c, "events"));
		uint64_t before = n_refused;
		cr_assert(batch(c, next, LINES_PER_BATCH, refused, &n_refused),
			  "a sync failed although every line it covers was written");
		full_batches = n_refused - before == LINES_PER_BATCH ? full_batches + 1 : 0;
		next += LINES_PER_BATCH;
	}
	cr_assert_gt(tstat(c, "wal_write_errors"), 0);
	cr_assert_eq(tstat(c, "failed_shards"), 0);

	/* Room again: writes and syncs succeed by themselves. */
	cr_assert_eq(unlink(ball), 0);
	for (int i = 0; i < 10; i++) {
		uint64_t before = n_refused;
		cr_assert(batch(c, next, LINES_PER_BATCH, refused, &n_refused));
		cr_assert_eq(n_refused, before, "lines refused after space was freed");
		next += LINES_PER_BATCH;
	}
	uint64_t kept = 0;
	double sum = 0;
	for (uint64_t i = 1; i < next; i++)
		if (!refused[i]) {
			kept++;
			sum += (double)i;
		}
	tcli_close(c);
	cr_assert_eq(tsrv_wait(&s, SIGTERM), 0, "see %s", s.log);

	/* After a restart: exactly the lines not refused. */
	tsrv_spawn(&s, args, 1);
	c = tcli_open(s.port);
	conn_lines = 0;
	ttable t;
	tcli_query(c, &t, "#!agg t v a 0 1h");
	cr_assert_null(t.err, "%s", t.err);
	cr_assert_eq(t.n, 2);
	uint64_t got = strtoull(tcell(t.rows[1], 0), NULL, 10);
	double got_sum = strtod(tcell(t.rows[1], 1), NULL);
	cr_assert_eq(got, kept,
		     "%" PRIu64 " events after the restart, %" PRIu64 " were kept (%" PRIu64
		     " refused)",
		     got, kept, n_refused);
	cr_assert_eq(got_sum, sum, "sum %.0f, expected %.0f", got_sum, sum);
	ttable_free(&t);
	tcli_close(c);
	free(refused);
}
