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

static void start(tsrv *s)
{
	tdir_make(s);
	const char *args[] = {"--shards", "2", "--log-level", "warn", NULL};
	tsrv_spawn(s, args, 1);
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
	tcli_close(c);
	cr_assert_eq(tsrv_wait(&s, SIGTERM), 0);
	tdir_remove(&s);
}
