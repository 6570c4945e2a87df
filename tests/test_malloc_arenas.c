/*
 * test_malloc_arenas.c — tallyd bounds glibc's malloc arenas itself.
 *
 * glibc gives threads their own arenas (up to 8 per core) and keeps what
 * is freed in each; tallyd's flush, merge and query buffers made RSS climb
 * in steps for an hour that way, until tallyd set M_ARENA_MAX at startup
 * (--malloc-arenas, default 1). The test looks at what glibc did, not at
 * the setting: every arena but the main one lives in its own 64 MiB heap,
 * mapped at a 64 MiB boundary (read-write at the front, PROT_NONE after),
 * so /proc/PID/maps shows how many there are. A tallyd with four shards,
 * flushes every 100 ms and queries from several connections must show
 * none by default and some with --malloc-arenas 0 (glibc's default), which
 * shows the count can see them.
 */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "srvutil.h"

#define HEAP_BYTES (UINT64_C(64) << 20) /* glibc's HEAP_MAX_SIZE on 64-bit */
#define N_CONNS    4

/* glibc's non-main arena heaps in the process's mappings: anonymous, at a
 * 64 MiB boundary, 64 MiB in all (read-write, or read-write then ---p). */
static unsigned arena_heaps(pid_t pid)
{
	char path[64], line[512];
	snprintf(path, sizeof path, "/proc/%d/maps", (int)pid);
	FILE *f = fopen(path, "r");
	cr_assert_not_null(f, "cannot read %s", path);
	uint64_t start = 0, rw_end = 0; /* a read-write front waiting for its rest */
	unsigned n = 0;
	while (fgets(line, sizeof line, f)) {
		uint64_t a, b;
		char perms[8];
		int name_at = 0;
		if (sscanf(line, "%" SCNx64 "-%" SCNx64 " %7s %*s %*s %*s %n", &a, &b, perms,
			   &name_at) < 3)
			continue;
		int anon = name_at == 0 || line[name_at] == '\n' || line[name_at] == 0;
		if (rw_end && anon && a == rw_end && b == start + HEAP_BYTES &&
		    !strncmp(perms, "---", 3))
			n++;
		rw_end = 0;
		if (!anon || a % HEAP_BYTES || strncmp(perms, "rw", 2))
			continue;
		if (b - a == HEAP_BYTES)
			n++;
		else if (b - a < HEAP_BYTES) {
			start = a;
			rw_end = b;
		}
	}
	fclose(f);
	return n;
}

/* Four shards, flushes and merges every 100 ms, writes and queries from
 * N_CONNS connections: every kind of thread mallocs. */
static unsigned heaps_after_load(const char *arenas)
{
	tsrv s;
	tdir_make(&s);
	const char *args[] = {"--shards",
			      "4",
			      "--log-level",
			      "warn",
			      "--flush-interval",
			      "100ms",
			      "--http-port",
			      "off",
			      arenas ? "--malloc-arenas" : NULL,
			      arenas,
			      NULL};
	tsrv_spawn(&s, args, 1);
	tcli *c[N_CONNS];
	for (int i = 0; i < N_CONNS; i++)
		c[i] = tcli_open(s.port);
	char *buf = malloc(1 << 20);
	for (int round = 0; round < 20; round++) {
		for (int i = 0; i < N_CONNS; i++) {
			size_t n = 0;
			for (int k = 0; k < 2000; k++)
				n += (size_t)sprintf(buf + n, "m,k=c%d_%d v=%d %" PRId64 "\n", i,
						     k % 97, k,
						     INT64_C(1700000000000000000) +
							     (int64_t)(round * 2000 + k) * 1000000);
			cr_assert_eq(tcli_send(c[i], buf, n), 0);
		}
		for (int i = 0; i < N_CONNS; i++) {
			tcli_sync(c[i], NULL, NULL);
			ttable t;
			tcli_query(c[i], &t, "#!agg m v c%d_%d 0 2000000000000000000", i,
				   round % 97);
			cr_assert_null(t.err, "%s", t.err);
			ttable_free(&t);
		}
	}
	free(buf);
	unsigned n = arena_heaps(s.pid);
	for (int i = 0; i < N_CONNS; i++)
		tcli_close(c[i]);
	cr_assert_eq(tsrv_wait(&s, SIGTERM), 0);
	tdir_remove(&s);
	return n;
}

#ifdef __SANITIZE_ADDRESS__
#define SKIP_UNDER_ASAN() cr_skip_test("ASan's allocator replaces glibc's arenas")
#else
#define SKIP_UNDER_ASAN() (void)0
#endif

Test(malloc_arenas, tallyd_uses_one_arena_by_default, .timeout = 120)
{
	SKIP_UNDER_ASAN();
	unsigned n = heaps_after_load(NULL);
	cr_assert_eq(n, 0, "tallyd made %u malloc arenas besides the main one", n);
}

Test(malloc_arenas, zero_leaves_glibc_its_arenas, .timeout = 120)
{
	SKIP_UNDER_ASAN();
	unsigned n = heaps_after_load("0");
	cr_assert_gt(n, 0, "no arena heap seen: the count above cannot see arenas");
}
