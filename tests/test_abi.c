/*
 * test_abi.c — the library's face as a program built against another
 * release's tally.h sees it, linked with libtally.so itself.
 *
 * tally_options and tally_stats start with their size as the program was
 * compiled (docs/api.md). An older program's struct is shorter, a newer
 * one's longer; both are made here by hand: a longer one is this header's
 * struct with more bytes after it, a shorter one a size that stops before
 * the end. Guard bytes around them catch a library that reads or writes
 * past what the program has.
 */
#include <criterion/criterion.h>
#include <stddef.h>

#include "testutil.h"

#define GUARD 0xA5

/* This header's struct, then what a newer header's would add. */
typedef struct newer_options {
	tally_options o;
	uint64_t added[4];
} newer_options;

typedef struct newer_stats {
	tally_stats st;
	uint64_t added[4];
	unsigned char guard[16];
} newer_stats;

static char *dir;

static void setup(void)
{
	dir = tu_tmpdir();
}

static void teardown(void)
{
	tu_rmrf(dir);
	free(dir);
}

TestSuite(abi, .init = setup, .fini = teardown);

Test(abi, options_init_fills_the_callers_size_and_zeroes_what_it_does_not_know)
{
	newer_options n;
	memset(&n, GUARD, sizeof n);
	tally_options_init_sized(&n.o, sizeof n.o + sizeof n.added);
	cr_assert_eq(n.o.size, sizeof n.o + sizeof n.added);
	cr_assert_eq(n.o.shards, 1);
	cr_assert_eq(n.o.n_levels, 3);
	cr_assert_eq(n.o.log_level, TALLY_LOG_WARN);
	for (int i = 0; i < 4; i++)
		cr_assert_eq(n.added[i], 0, "a newer option %d is left at 0, its default", i);

	tally_options o;
	tally_options_init(&o);
	cr_assert_eq(o.size, sizeof o);
}

Test(abi, open_refuses_options_that_were_never_initialised)
{
	tally_options o;
	tally_options_init(&o);
	o.size = 0;
	tally_db *db = (tally_db *)&o;
	cr_assert_eq(tally_db_open(dir, &o, &db), TALLY_EINVAL);
	cr_assert_null(db);
	cr_assert(strstr(tally_errmsg(), "tally_options_init"), "%s", tally_errmsg());
}

Test(abi, open_takes_a_newer_headers_options_when_the_new_ones_are_zero)
{
	newer_options n;
	memset(&n, GUARD, sizeof n);
	tally_options_init_sized(&n.o, sizeof n);
	n.o.shards = 3;
	n.o.log_fn = tu_quiet_log;
	tally_db *db;
	cr_assert_eq(tally_db_open(dir, &n.o, &db), 0, "%s", tally_errmsg());
	tally_stats st;
	cr_assert_eq(tally_db_stats(db, &st), 0);
	cr_assert_eq(st.shards, 3, "the options the library knows are read");
	tally_db_close(db);
}

Test(abi, open_refuses_a_newer_option_it_does_not_know)
{
	newer_options n;
	tally_options_init_sized(&n.o, sizeof n);
	n.o.log_fn = tu_quiet_log;
	n.added[1] = 7; /* set by a program that expects it to mean something */
	tally_db *db;
	cr_assert_eq(tally_db_open(dir, &n.o, &db), TALLY_EINVAL);
	char want[64];
	snprintf(want, sizeof want, "byte %zu of %zu", sizeof n.o + sizeof n.added[0], sizeof n);
	cr_assert(strstr(tally_errmsg(), want), "%s", tally_errmsg());
}

/* An older program's options end at its size: whatever lies after them in
 * its memory is not an option. */
Test(abi, open_reads_only_the_bytes_the_callers_size_covers)
{
	newer_options n;
	memset(&n, GUARD, sizeof n);
	tally_options_init_sized(&n.o, TALLY_OPTIONS_SIZE_0_1);
	n.o.log_fn = tu_quiet_log;
	/* past the older program's struct: its own unrelated bytes */
	memset((char *)&n + TALLY_OPTIONS_SIZE_0_1, GUARD, sizeof n - TALLY_OPTIONS_SIZE_0_1);
	tally_db *db;
	cr_assert_eq(tally_db_open(dir, &n.o, &db), 0, "%s", tally_errmsg());
	tally_db_close(db);
}

static tally_db *open_with_events(void)
{
	tally_options o;
	tally_options_init(&o);
	o.log_fn = tu_quiet_log;
	tally_db *db;
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	tally_writer *w;
	cr_assert_eq(tally_writer_open(db, -1, &w), 0);
	const char *lp = "t,k=a v=1 1700000000000000000\nt,k=b v=2 1700000000000000000\n";
	cr_assert_eq(tally_write_lp(w, lp, strlen(lp), TALLY_PREC_NS, NULL), 0);
	tally_writer_close(w);
	return db;
}

Test(abi, stats_fill_a_newer_headers_struct_and_zero_what_they_do_not_know)
{
	tally_db *db = open_with_events();
	newer_stats n;
	memset(&n, GUARD, sizeof n);
	cr_assert_eq(tally_db_stats_sized(db, &n.st, sizeof n.st + sizeof n.added), 0);
	cr_assert_eq(n.st.size, sizeof n.st, "the library filled what it knows");
	cr_assert_eq(n.st.events, 2);
	cr_assert(TALLY_STAT_FILLED(&n.st, events));
	for (int i = 0; i < 4; i++)
		cr_assert_eq(n.added[i], 0, "a stat this library does not know reads 0");
	for (size_t i = 0; i < sizeof n.guard; i++)
		cr_assert_eq(n.guard[i], GUARD, "nothing written past the caller's size");
	tally_db_close(db);
}

Test(abi, stats_fill_only_an_older_headers_part)
{
	tally_db *db = open_with_events();
	tally_stats st;
	memset(&st, GUARD, sizeof st);
	size_t older = offsetof(tally_stats, shards); /* a header that ended before shards */
	cr_assert_eq(tally_db_stats_sized(db, &st, older), 0);
	cr_assert_eq(st.size, older);
	cr_assert_eq(st.events, 2);
	cr_assert_eq(st.keys, 2);
	cr_assert(!TALLY_STAT_FILLED(&st, shards));
	const unsigned char *p = (const unsigned char *)&st;
	for (size_t i = older; i < sizeof st; i++)
		cr_assert_eq(p[i], GUARD, "byte %zu past the older struct was written", i);
	cr_assert_eq(tally_db_stats_sized(db, &st, sizeof st.size - 1), TALLY_EINVAL);
	tally_db_close(db);
}
