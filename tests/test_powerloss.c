/*
 * test_powerloss.c — a power cut at every fsync and rename boundary
 * (issue 12's harness; DESIGN invariants 1 and 2 for power loss: nothing
 * acknowledged is lost, nothing is counted twice).
 *
 * kill -9 cannot show power loss: the page cache survives it. This program
 * is linked with storage/fileio.c built with -DTALLY_FAULTS, whose
 * simulation (fio_powerloss_arm) turns the n-th fsync, fdatasync or rename
 * of a process into a power cut: bytes not fsynced are dropped, and
 * creates, renames and unlinks in directories not fsynced are undone.
 *
 * Trial n forks a child that arms the cut at boundary n, opens a fresh
 * store and runs a fixed single-threaded workload: batches of events,
 * each followed by a sync whose success it reports through a pipe, with
 * flushes and merges in between and small WAL segments (so rolls, part
 * renames, manifest replacements and WAL trims are all boundaries). The
 * parent reopens the store after the cut and checks every event: each
 * reported durable is there once, none is there twice, none that was
 * never written appears. Before that check, a second child reopens the
 * store with a cut inside the recovery itself (at boundary 1 to 5 of the
 * open, varied per trial). Trials run until the workload ends before its
 * n-th boundary: every boundary was cut at once. TALLY_POWERLOSS_STEPS
 * (default 12 batches) makes the workload, and so the run, longer.
 */
#include <criterion/criterion.h>
#include <sys/wait.h>

#include "fileio.h"
#include "testutil.h"

#define T0          INT64_C(1700000000000000000)
#define PER_STEP    40
#define N_IDS       (steps * PER_STEP)
#define MAX_TRIALS  100000
#define CHILD_ERROR 3

static uint32_t steps = 12;

static tally_options opts(void)
{
	tally_options o;
	tally_options_init(&o);
	o.no_background = 1;
	o.wal_segment_bytes = 4096; /* a roll every few batches */
	o.log_fn = tu_quiet_log;
	return o;
}

/* The workload: never returns. Reports on fd the end of the ids a
 * successful sync covered, as a uint32. */
static _Noreturn void child(const char *dir, uint64_t cut_at, int fd)
{
	fio_powerloss_arm(cut_at);
	tally_options o = opts();
	tally_db *db;
	tally_writer *w;
	if (tally_db_open(dir, &o, &db) || tally_writer_open(db, 0, &w)) {
		fprintf(stderr, "child open: %s\n", tally_errmsg());
		_exit(CHILD_ERROR);
	}
	char buf[PER_STEP * 64];
	for (uint32_t step = 0; step < steps; step++) {
		char *p = buf;
		for (uint32_t i = step * PER_STEP; i < (step + 1) * PER_STEP; i++)
			p += sprintf(p, "t,k=a v=%ui %lld\n", i, (long long)(T0 + i));
		tally_write_result res;
		if (tally_write_lp(w, buf, (size_t)(p - buf), TALLY_PREC_NS, &res) ||
		    tally_db_sync(db)) {
			fprintf(stderr, "child step %u: %s\n", step, tally_errmsg());
			_exit(CHILD_ERROR);
		}
		uint32_t end = (step + 1) * PER_STEP;
		if (write(fd, &end, sizeof end) != sizeof end)
			_exit(CHILD_ERROR);
		if ((step % 3 == 2 && tally_db_flush(db)) ||
		    (step % 4 == 3 && tally_db_merge(db))) {
			fprintf(stderr, "child step %u: %s\n", step, tally_errmsg());
			_exit(CHILD_ERROR);
		}
	}
	tally_writer_close(w);
	tally_db_close(db);
	_exit(0);
}

/* Recovery cut short too: a child reopens dir with a cut at its n-th
 * boundary (the open's own fsyncs and renames: a torn tail cut, a new
 * segment, SYNCED). Returns 1 when the cut came, 0 when the open ended
 * before it. */
static int cut_recovery(const char *dir, uint64_t n)
{
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		fio_powerloss_arm(n);
		tally_options o = opts();
		tally_db *db;
		if (tally_db_open(dir, &o, &db)) {
			fprintf(stderr, "recovery: %s\n", tally_errmsg());
			_exit(CHILD_ERROR);
		}
		tally_db_close(db);
		_exit(0);
	}
	int st;
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert(WIFEXITED(st) && (WEXITSTATUS(st) == 0 || WEXITSTATUS(st) == FIO_POWERLOSS_EXIT),
		  "recovery after cut %llu failed", (unsigned long long)n);
	return WEXITSTATUS(st) == FIO_POWERLOSS_EXIT;
}

/* Reopens dir and checks it against durable (ids below it were
 * acknowledged). */
static void check(const char *dir, uint64_t trial, uint32_t durable)
{
	tally_options o = opts();
	tally_db *db;
	int rc = tally_db_open(dir, &o, &db);
	cr_assert_eq(rc, 0, "trial %llu: reopen after the cut: %s", (unsigned long long)trial,
		     tally_errmsg());
	uint8_t *seen = calloc(N_IDS, 1);
	tally_scan *sc;
	rc = tally_scan_open(db, "t", "a", 0, INT64_MAX, &sc);
	if (rc == TALLY_ENOTFOUND) { /* the table never reached the disk */
		cr_assert_eq(durable, 0, "trial %llu: %s", (unsigned long long)trial,
			     tally_errmsg());
		tally_db_close(db);
		return;
	}
	cr_assert_eq(rc, 0, "%s", tally_errmsg());
	size_t cv = SIZE_MAX;
	for (size_t i = 0; i < tally_scan_columns(sc); i++) {
		const char *nm;
		enum tally_type ty;
		tally_scan_column(sc, i, &nm, &ty);
		if (!strcmp(nm, "v"))
			cv = i;
	}
	tally_row row;
	while ((rc = tally_scan_next(sc, &row)) == 1) {
		cr_assert_lt(cv, row.n_values);
		int64_t id = row.values[cv].v.i64;
		cr_assert(id >= 0 && id < N_IDS && row.ts == T0 + id,
			  "trial %llu: a row that was never written (v %lld, ts %lld)",
			  (unsigned long long)trial, (long long)id, (long long)row.ts);
		cr_assert(seen[id]++ == 0, "trial %llu: event %lld twice",
			  (unsigned long long)trial, (long long)id);
	}
	cr_assert_eq(rc, 0, "%s", tally_errmsg());
	tally_scan_close(sc);
	for (uint32_t id = 0; id < durable; id++)
		cr_assert(seen[id], "trial %llu: acknowledged event %u lost (durable up to %u)",
			  (unsigned long long)trial, id, durable);
	free(seen);
	tally_db_close(db);
}

Test(powerloss, cut_at_every_fsync_and_rename_loses_nothing_acknowledged, .timeout = 900)
{
	uint64_t trial, recovery_cuts = 0;
	int done = 0;
	const char *e = getenv("TALLY_POWERLOSS_STEPS");
	if (e && atoi(e) > 0)
		steps = (uint32_t)atoi(e);
	for (trial = 1; trial <= MAX_TRIALS && !done; trial++) {
		char *dir = tu_tmpdir();
		int fds[2];
		cr_assert_eq(pipe(fds), 0);
		pid_t pid = fork();
		cr_assert_geq(pid, 0);
		if (pid == 0) {
			close(fds[0]);
			child(dir, trial, fds[1]);
		}
		close(fds[1]);
		uint32_t durable = 0, end;
		while (read(fds[0], &end, sizeof end) == sizeof end)
			durable = end;
		close(fds[0]);
		int st;
		cr_assert_eq(waitpid(pid, &st, 0), pid);
		cr_assert(WIFEXITED(st), "trial %llu: child died by signal %d",
			  (unsigned long long)trial, WIFSIGNALED(st) ? WTERMSIG(st) : 0);
		int code = WEXITSTATUS(st);
		cr_assert(code == 0 || code == FIO_POWERLOSS_EXIT, "trial %llu: child failed (%d)",
			  (unsigned long long)trial, code);
		done = code == 0; /* the workload ended before boundary `trial` */
		if (done)
			cr_assert_eq(durable, N_IDS);
		/* and a second cut in the recovery, at a boundary varied per trial */
		recovery_cuts += !done && cut_recovery(dir, 1 + trial % 5);
		check(dir, trial, durable);
		tu_rmrf(dir);
		free(dir);
	}
	cr_assert(done, "the workload has more than %d boundaries", MAX_TRIALS);
	cr_assert_gt(recovery_cuts, 0);
	fprintf(stderr,
		"powerloss: %llu trials, a power cut at each of %llu boundaries, %llu of them "
		"cut again during recovery\n",
		(unsigned long long)(trial - 1), (unsigned long long)(trial - 2),
		(unsigned long long)recovery_cuts);
}
