/*
 * test_rcache.c — the decoded-rollup cache's memory: a ring whose entries
 * leave with the parts merges retire fills those blocks again rather than
 * mapping new ones, so what it maps follows what it holds live, not its
 * budget.
 */
#include <criterion/criterion.h>
#include <inttypes.h>

#include "testutil.h"

#define T0    INT64_C(1700000000000000000) /* 2023-11-14T22:13:20Z */
#define BLOCK (UINT64_C(2) << 20)

/* Rounds of four flushes of every key's day (one part each, of one size
 * tier) and a merge of the four, each flush followed by a series of every
 * key, so the cache takes each new part's rollups and loses the merged
 * parts'. Before blocks were reused, the ring mapped a new block each time
 * it filled one, up to its 64 MiB budget; now it stays near what it holds. */
Test(rcache, merged_away_entries_give_their_blocks_back, .timeout = 300)
{
	char *dir = tu_tmpdir();
	tally_options o = tu_quiet_opts();
	o.shards = 1;
	o.cache_bytes = 64u << 20;
	tally_db *db;
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	tally_writer *w;
	cr_assert_eq(tally_writer_open(db, 0, &w), 0);
	enum { KEYS = 300, WIN = 288, ROUNDS = 4 };
	const int64_t day0 = T0 - T0 % TALLY_1D;
	static char text[WIN * 64];
	static tally_bucket b[WIN];
	uint64_t live_peak = 0, mapped = 0, merges = 0;
	for (int round = 0; round < ROUNDS; round++) {
		for (int f = 0; f < 4; f++) {
			for (int k = 0; k < KEYS; k++) {
				size_t n = 0;
				for (int wi = 0; wi < WIN; wi++)
					n += (size_t)snprintf(text + n, sizeof text - n,
							      "t,k=key%03d v=%d %" PRId64 "\n", k,
							      wi, day0 + wi * TALLY_5M + f);
				tally_write_result r;
				cr_assert_eq(tally_write_lp(w, text, n, TALLY_PREC_NS, &r), 0);
				cr_assert_eq(r.accepted, WIN);
			}
			cr_assert_eq(tally_db_flush(db), 0, "%s", tally_errmsg());
			for (int k = 0; k < KEYS; k++) {
				char key[16];
				snprintf(key, sizeof key, "key%03d", k);
				size_t n;
				cr_assert_eq(tally_query_series(db, "t", "v", key, TALLY_5M, day0,
								day0 + TALLY_1D, b, WIN, &n),
					     0, "%s", tally_errmsg());
				cr_assert_eq(n, (size_t)WIN);
				/* every flush so far of this round and the merged ones */
				cr_assert_eq(b[WIN - 1].agg.count, (uint64_t)(round * 4 + f + 1),
					     "%s", key);
			}
			tally_stats st;
			cr_assert_eq(tally_db_stats(db, &st), 0);
			live_peak = st.cache_bytes > live_peak ? st.cache_bytes : live_peak;
			mapped = st.cache_mapped_bytes;
		}
		cr_assert_eq(tally_db_merge(db), 0, "%s", tally_errmsg());
		tally_stats st;
		cr_assert_eq(tally_db_stats(db, &st), 0);
		merges = st.merges;
	}
	cr_assert_geq(merges, ROUNDS, "the rounds' parts were merged (%" PRIu64 ")", merges);
	fprintf(stderr,
		"rcache: live peak %" PRIu64 " KiB, mapped %" PRIu64 " KiB, budget %" PRIu64
		" KiB\n",
		live_peak >> 10, mapped >> 10, o.cache_bytes >> 10);
	cr_assert_gt(mapped, 0);
	/* what it holds live, blocks that mix a merged part's entries with a
	 * live part's (kept until the ring comes round), and the four made
	 * ready ahead: 42 MiB for a 28 MiB peak here, 64 MiB without reuse */
	cr_assert_leq(mapped, live_peak * 3 / 2 + 4 * BLOCK,
		      "mapped %" PRIu64 " KiB for a live peak of %" PRIu64 " KiB", mapped >> 10,
		      live_peak >> 10);
	tally_writer_close(w);
	tally_db_close(db);
	tu_rmrf(dir);
	free(dir);
}
