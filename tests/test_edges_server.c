/*
 * test_edges_server.c — tallyd's queries at the edges of the stored range.
 *
 * The server streams a series in slices and clamps its times before the
 * engine does; both once lost events near the range's ends (before 1696
 * a series never started low enough) or repeated the last window (a slice
 * ending past the last stored instant, the next one starting in the same
 * window). Events at and near both ends are written over TCP, then every
 * query kind over the whole int64 range must count each event once, and
 * series windows must be distinct and ascending.
 */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rollup.h"
#include "srvutil.h"

static const int64_t edge_ts[] = {
	TS_ENGINE_MIN,
	TS_ENGINE_MIN + 1,
	TS_ENGINE_MIN + TALLY_5M,
	TS_ENGINE_MIN + 400 * TALLY_1D,  /* 1688 */
	TS_ENGINE_MIN + 3650 * TALLY_1D, /* 1696 */
	-8700000000000000000,            /* 1694 */
	0,
	TS_ENGINE_MAX - 3650 * TALLY_1D,
	TS_ENGINE_MAX - TALLY_1D,
	TS_ENGINE_MAX - 1,
	TS_ENGINE_MAX,
};
#define N_EDGE (sizeof edge_ts / sizeof *edge_ts)

static void start_with(tsrv *s, const char *flag, const char *value)
{
	tdir_make(s);
	const char *args[] = {"--shards", "2", "--log-level", "warn", flag, value, NULL};
	tsrv_spawn(s, args, 1);
}

static void start(tsrv *s)
{
	start_with(s, NULL, NULL);
}

/* Reads the next line, which must be want. */
static void expect_line(tcli *c, const char *want)
{
	char *l = tcli_line(c, 30000);
	cr_assert_not_null(l, "no line; wanted %s", want);
	cr_assert_str_eq(l, want);
	free(l);
}

/* Closes the client, stops the server with SIGTERM (it must exit 0) and
 * removes the test's directory. */
static void stop(tsrv *s, tcli *c)
{
	tcli_close(c);
	cr_assert_eq(tsrv_wait(s, SIGTERM), 0);
	tdir_remove(s);
}

static uint64_t sum_counts(const ttable *t, int col)
{
	uint64_t n = 0;
	for (size_t i = 1; i < t->n; i++)
		n += strtoull(tcell(t->rows[i], col), NULL, 10);
	return n;
}

Test(edges_server, every_query_counts_each_edge_event_once)
{
	tsrv s;
	start(&s);
	tcli *c = tcli_open(s.port);
	for (size_t i = 0; i < N_EDGE; i++)
		tcli_sendf(c, "e,k=a v=%zu %" PRId64 "\n", i + 1, edge_ts[i]);
	uint64_t acc = 0, rej = 0;
	tcli_sync(c, &acc, &rej);
	cr_assert_eq(acc, N_EDGE);
	cr_assert_eq(rej, 0);
	const char *lo = "-9223372036854775808", *hi = "9223372036854775807";
	static const char *steps[] = {"5m", "1h", "1d", "7d", "833d"};
	for (size_t k = 0; k < sizeof steps / sizeof *steps; k++) {
		ttable t;
		tcli_query(c, &t, "#!series e v a %s %s %s", steps[k], lo, hi);
		cr_assert_null(t.err, "series %s: %s", steps[k], t.err);
		cr_assert_eq(sum_counts(&t, 1), N_EDGE, "series %s: %" PRIu64 " events", steps[k],
			     sum_counts(&t, 1));
		for (size_t i = 2; i < t.n; i++) {
			char *prev = strdup(tcell(t.rows[i - 1], 0));
			cr_assert_lt(strcmp(prev, tcell(t.rows[i], 0)), 0,
				     "series %s: window %s after %s", steps[k], tcell(t.rows[i], 0),
				     prev);
			free(prev);
		}
		ttable_free(&t);
	}
	ttable t;
	tcli_query(c, &t, "#!agg e v a %s %s", lo, hi);
	cr_assert_null(t.err, "%s", t.err);
	cr_assert_eq(strtoull(tcell(t.rows[1], 0), NULL, 10), N_EDGE, "agg: %s", t.rows[1]);
	ttable_free(&t);
	tcli_query(c, &t, "#!keys e v %s %s", lo, hi);
	cr_assert_null(t.err, "%s", t.err);
	cr_assert_eq(strtoull(tcell(t.rows[1], 1), NULL, 10), N_EDGE, "keys: %s", t.rows[1]);
	ttable_free(&t);
	tcli_query(c, &t, "#!scan e a %s %s", lo, hi);
	cr_assert_null(t.err, "%s", t.err);
	cr_assert_eq(t.n - 1, N_EDGE, "scan: %zu rows", t.n - 1);
	ttable_free(&t);
	stop(&s, c);
}

/* ---------------------------------------------------------------- numbers */

#include "cmd.h"

static const char *agg_text(const tally_agg *a)
{
	static char buf[CMD_AGG_MAX + 1];
	*cmd_put_agg(buf, a) = 0;
	return buf;
}

/* An empty cell means "missing": a sum that overflowed must say so
 * (issue 12 item 10), while an empty aggregate keeps its empty cells. */
Test(cmd, overflowed_sums_print_inf_not_an_empty_cell)
{
	tally_agg a = {3, INFINITY, 1e308, 1e308, INFINITY};
	cr_assert_str_eq(agg_text(&a), "3\tinf\t1e+308\t1e+308\tinf\n");
	tally_agg b = {2, -INFINITY, -1e308, -1e308, -INFINITY};
	cr_assert_str_eq(agg_text(&b), "2\t-inf\t-1e+308\t-1e+308\t-inf\n");
	tally_agg c = {4, NAN, -1e308, 1e308, NAN}; /* overflowed both ways */
	cr_assert_str_eq(agg_text(&c), "4\tnan\t-1e+308\t1e+308\tnan\n");
	tally_agg none = {0, 0, NAN, NAN, NAN};
	cr_assert_str_eq(agg_text(&none), "0\t0\t\t\t\n");
}

/* Over TCP: 1e308 three times sums to inf, in #!agg, #!series and
 * #!keys; 1e-400 and 1e400 are refused per line, not stored as 0 or inf. */
Test(edges_server, overflowed_sums_and_out_of_range_floats)
{
	tsrv s;
	start(&s);
	tcli *c = tcli_open(s.port);
	tcli_sendf(c, "n,k=a v=1e308 1000\nn,k=a v=1e308 2000\nn,k=a v=1e308 3000\n"
		      "n,k=b v=-1e308 1000\nn,k=b v=-1e308 2000\n"
		      "n,k=a v=1e-400 4000\nn,k=a v=1e400 5000\n#!sync\n");
	expect_line(c, "ERR line 6: field 'v': number too small, would be stored as 0 '1e-400'");
	expect_line(c, "ERR line 7: field 'v': number out of range '1e400'");
	char *l = tcli_line(c, 30000);
	cr_assert(!strncmp(l, "OK sync accepted=5 rejected=2", 29), "%s", l);
	free(l);
	ttable t;
	tcli_query(c, &t, "#!agg n v a 0 1d");
	cr_assert_null(t.err, "%s", t.err);
	cr_assert_str_eq(t.rows[1], "3\tinf\t1e+308\t1e+308\tinf");
	ttable_free(&t);
	tcli_query(c, &t, "#!series n v b 5m 0 1d");
	cr_assert_null(t.err, "%s", t.err);
	cr_assert_str_eq(tcell(t.rows[1], 2), "-inf");
	ttable_free(&t);
	tcli_query(c, &t, "#!keys n v 0 1d");
	cr_assert_null(t.err, "%s", t.err);
	cr_assert_str_eq(t.rows[1], "a\t3\tinf\t1e+308\t1e+308\tinf");
	cr_assert_str_eq(t.rows[2], "b\t2\t-inf\t-1e+308\t-1e+308\t-inf");
	ttable_free(&t);
	stop(&s, c);
}

/* ---------------------------------------------------------------- keys */

/* --max-keys-per-table: a line with a key past it gets its own ERR line
 * naming the table and the limit; #!stats shows the per-key bytes. */
Test(edges_server, max_keys_per_table_refuses_lines_past_it)
{
	tsrv s;
	start_with(&s, "--max-keys-per-table", "2");
	tcli *c = tcli_open(s.port);
	tcli_sendf(c, "c,k=a v=1 1\nc,k=b v=1 1\nc,k=c v=1 1\nc,k=a v=2 2\nd,k=c v=1 1\n#!sync\n");
	expect_line(c, "ERR line 3: table 'c' already holds 2 keys, its cardinality limit; "
		       "key 'c' refused");
	char *l = tcli_line(c, 30000);
	cr_assert(!strncmp(l, "OK sync accepted=4 rejected=1", 29), "%s", l);
	free(l);
	cr_assert_eq(tstat(c, "keys"), 3);
	cr_assert_gt(tstat(c, "key_bytes"), 0);
	cr_assert_eq(tstat(c, "query_bytes"), 0);
	stop(&s, c);
}
