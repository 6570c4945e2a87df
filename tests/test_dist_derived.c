/*
 * test_dist_derived.c — the finest distributions a part derives from its
 * raw events (engine/dist.h, dist_level_derived), against brute force:
 * 5-minute windows and ranges tiled with them, exact, where parts keep
 * their raw events, after merges and deletes, and after retention has
 * dropped the raw events (the stub keeps the finest distributions
 * written from them, merge_materialise), across reopen, backup and
 * restore.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <string.h>
#include <time.h>

#include "aggkind.h"
#include "backup.h"
#include "distmodel.h"
#include "testutil.h"

#define CAMS 3
#define DAYS 6

static int64_t today(void)
{
	struct timespec t;
	clock_gettime(CLOCK_REALTIME, &t);
	int64_t now = (int64_t)t.tv_sec * TALLY_NS_PER_SEC;
	return now - now % TALLY_1D;
}

static tally_options opts(void)
{
	tally_options o;
	tally_options_init(&o);
	o.log_fn = tu_quiet_log;
	o.no_background = 1;
	o.shards = 2;
	o.distributions = "traffic.speed:0.1";
	o.retention = "traffic:raw=3d"; /* every level kept */
	return o;
}

/* n events in [t0, t0 + span) through shard s, of camera only_cam
 * (-1: random cameras). */
static void write_in(tally_db *db, tu_rng *r, unsigned s, int n, int only_cam, int64_t t0,
		     int64_t span)
{
	write_events(db, r, s, n, CAMS, only_cam, t0, span, plain_speed, 0);
}

/* The distribution of camera cam over [from, to) equals the sorted
 * events: count, quantiles, counts above and below. */
static void check_range(tally_db *db, int cam, int64_t from, int64_t to)
{
	size_t n;
	double *v = values_of(cam, from, to, &n);
	char key[8];
	sprintf(key, "C%d", cam);
	tally_dist *d;
	cr_assert_eq(tally_query_dist(db, "traffic", "speed", key, from, to, &d), 0,
		     "[%lld, %lld): %s", (long long)from, (long long)to, tally_errmsg());
	cr_assert_eq(tally_dist_count(d), n, "[%lld, %lld): %llu values, brute force %zu",
		     (long long)from, (long long)to, (unsigned long long)tally_dist_count(d), n);
	cr_assert_eq(tally_dist_error(d), 0);
	const double qs[] = {0, 0.5, 0.85, 0.15, 1, 0.999};
	for (size_t i = 0; i < sizeof qs / sizeof *qs && n; i++) {
		double got;
		cr_assert_eq(tally_dist_quantile(d, qs[i], &got), 0);
		double want = v[tu_exact_rank(qs[i], n) - 1];
		cr_assert_eq(got, want, "q %g over [%lld, %lld): %.17g, brute force %.17g", qs[i],
			     (long long)from, (long long)to, got, want);
	}
	const double lim[] = {50, 57.3, 80.1, 100};
	for (size_t i = 0; i < sizeof lim / sizeof *lim; i++) {
		uint64_t above = 0, below = 0;
		for (size_t j = 0; j < n; j++) {
			above += v[j] > lim[i];
			below += v[j] < lim[i];
		}
		cr_assert_eq(tally_dist_count_above(d, lim[i]), above, "above %g", lim[i]);
		cr_assert_eq(tally_dist_count_below(d, lim[i]), below, "below %g", lim[i]);
	}
	tally_dist_free(d);
	free(v);
}

/* Windows and ranges on both sides of the raw horizon (day d0 + 3):
 * single 5-minute windows, hours and days, and ranges that start on a
 * 5-minute window where raw events are gone and end unaligned where they
 * are kept, so that the tiling takes 5-minute windows of both kinds of
 * part. */
static void check_all(tally_db *db, int64_t d0, tu_rng *r)
{
	for (int cam = 0; cam < CAMS; cam++) {
		for (int i = 0; i < 12; i++) {
			int64_t w = d0 + (int64_t)tu_below(r, DAYS * 288) * TALLY_5M;
			check_range(db, cam, w, w + TALLY_5M);
		}
		for (int day = 0; day < DAYS; day++)
			check_range(db, cam, d0 + day * TALLY_1D, d0 + (day + 1) * TALLY_1D);
		check_range(db, cam, d0 + 7 * TALLY_1H, d0 + 9 * TALLY_1H);
		for (int i = 0; i < 6; i++) {
			int64_t a = d0 + (int64_t)tu_below(r, DAYS * 288) * TALLY_5M;
			int64_t b = d0 + 4 * TALLY_1D +
				    (int64_t)tu_below(r, (uint64_t)(2 * TALLY_1D - TALLY_1H));
			if (a > b)
				a = d0 + TALLY_1D + 7 * TALLY_5M;
			check_range(db, cam, a, b);
		}
		/* all kept raw: unaligned both ends */
		int64_t a = d0 + 4 * TALLY_1D + (int64_t)tu_below(r, (uint64_t)TALLY_1D);
		check_range(db, cam, a, a + (int64_t)tu_below(r, (uint64_t)TALLY_1D));
	}
}

/* A retention pass: the parts that lost their raw events so far. */
static uint64_t retain(tally_db *db)
{
	cr_assert_eq(tally_db_retain(db), 0, "%s", tally_errmsg());
	tally_stats st;
	tally_db_stats(db, &st);
	return st.retention_parts_raw_gone;
}

/* Deletes camera cam's events in [from, to), in the store and the model. */
static void delete_range(tally_db *db, int cam, int64_t from, int64_t to)
{
	char key[8];
	sprintf(key, "C%d", cam);
	tally_delete_result res = {.size = sizeof res};
	cr_assert_eq(tally_db_delete(db, "traffic", key, from, to, &res), 0, "%s", tally_errmsg());
	size_t k = 0;
	for (size_t i = 0; i < n_evs; i++)
		if (evs[i].cam != cam || evs[i].ts < from || evs[i].ts >= to)
			evs[k++] = evs[i];
	cr_assert_eq(res.rows, n_evs - k);
	cr_assert_gt(res.rows, 0);
	n_evs = k;
}

/* Counts, over the part files in dir/parts, the 5-minute and 1-hour
 * blocks of key C0's speed by kind: fine[kind], coarse[kind] (kinds 1 to
 * AGG_KIND_SLOTS - 1), stubs among them in *stubs. */
static void block_kinds(const char *dir, unsigned fine[AGG_KIND_SLOTS],
			unsigned coarse[AGG_KIND_SLOTS], unsigned *stubs)
{
	memset(fine, 0, AGG_KIND_SLOTS * sizeof *fine);
	memset(coarse, 0, AGG_KIND_SLOTS * sizeof *coarse);
	*stubs = 0;
	char path[4096];
	snprintf(path, sizeof path, "%s/parts", dir);
	DIR *dd = opendir(path);
	cr_assert(dd);
	struct dirent *de;
	part_scratch ps = {0};
	while ((de = readdir(dd))) {
		size_t l = strlen(de->d_name);
		if (l < 6 ||
		    (strcmp(de->d_name + l - 5, ".part") && strcmp(de->d_name + l - 5, ".stub")))
			continue;
		snprintf(path, sizeof path, "%s/parts/%s", dir, de->d_name);
		part *p;
		cr_assert_eq(part_open(path, &p), 0, "%s", tally_errmsg());
		const part_key *pk = part_find_key(p, "C0", 2);
		int num = -1;
		for (uint32_t c = 0; c < p->info.n_cols; c++)
			if (p->info.cols[c].len == 5 && !memcmp(p->info.cols[c].name, "speed", 5))
				num = p->info.num_of[c];
		if (pk && num >= 0) {
			part_rblock f, k;
			cr_assert_eq(part_read_rollup(p, pk, (uint32_t)num, 0, &ps, &f), 0);
			cr_assert_eq(part_read_rollup(p, pk, (uint32_t)num, 1, &ps, &k), 0);
			if (f.n && f.kind < AGG_KIND_SLOTS)
				fine[f.kind]++;
			if (k.n && k.kind < AGG_KIND_SLOTS)
				coarse[k.kind]++;
			*stubs += (p->flags & PART_F_STUB) != 0;
		}
		part_close(p);
	}
	closedir(dd);
	part_scratch_free(&ps);
}

Test(dist_derived, finest_windows_equal_brute_force_before_and_after_raw_retention)
{
	uint64_t seed = tu_seed("dist_derived");
	tu_rng r = {seed};
	n_evs = 0;
	char *dir = tu_tmpdir();
	tally_options o = opts();
	tally_db *db;
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	int64_t d0 = today() - (DAYS - 1) * TALLY_1D;
	write_in(db, &r, 0, 3000, -1, d0, DAYS * TALLY_1D);
	write_in(db, &r, 1, 2000, -1, d0, DAYS * TALLY_1D);
	cr_assert_eq(tally_db_flush(db), 0, "%s", tally_errmsg());
	for (int round = 0; round < 4; round++) {
		write_in(db, &r, (unsigned)round % 2, 800, -1, d0, DAYS * TALLY_1D);
		cr_assert_eq(tally_db_flush(db), 0, "%s", tally_errmsg());
	}
	cr_assert_eq(tally_db_merge(db), 0, "%s", tally_errmsg());
	/* before the pass: every part derives its finest windows (a basic
	 * block under the coarser kind 3 ones) */
	unsigned fine[AGG_KIND_SLOTS], coarse[AGG_KIND_SLOTS], stubs;
	block_kinds(dir, fine, coarse, &stubs);
	cr_assert(fine[AGG_BASIC] >= 2 && !fine[AGG_DIST_BITS] && !stubs);
	cr_assert(coarse[AGG_DIST_BITS] == fine[AGG_BASIC] && !coarse[AGG_BASIC]);
	check_all(db, d0, &r);
	/* deletes rewrite parts (the finest blocks copied, or computed again
	 * for the key that lost rows, basic either way): one in a day that
	 * keeps its raw events, one in a day about to lose them */
	delete_range(db, 1, d0 + 4 * TALLY_1D + 3 * TALLY_1H, d0 + 4 * TALLY_1D + 5 * TALLY_1H + 7);
	delete_range(db, 2, d0 + TALLY_1D + 2 * TALLY_1H,
		     d0 + TALLY_1D + 2 * TALLY_1H + 13 * 60 * TALLY_NS_PER_SEC);
	check_all(db, d0, &r);
	cr_assert_geq(retain(db), 2, "the old days should lose raw events");
	/* the stubs hold the finest distributions, written from the rows */
	block_kinds(dir, fine, coarse, &stubs);
	cr_assert_geq(stubs, 2);
	cr_assert_eq(fine[AGG_DIST_BITS], stubs);
	cr_assert_eq(fine[AGG_BASIC] + stubs, coarse[AGG_DIST_BITS]);
	check_all(db, d0, &r);
	/* late events into a partition whose raw events are gone: a new part
	 * that derives, until the next pass writes its stub */
	write_in(db, &r, 0, 500, -1, d0, TALLY_1D);
	cr_assert_eq(tally_db_flush(db), 0, "%s", tally_errmsg());
	check_all(db, d0, &r);
	cr_assert_eq(tally_db_retain(db), 0, "%s", tally_errmsg());
	check_all(db, d0, &r);
	tally_db_close(db);
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	check_all(db, d0, &r);
	/* backed up and restored: parts and stubs answer the same */
	char bk[4200], rdir[4200];
	snprintf(bk, sizeof bk, "%s/backup", dir);
	snprintf(rdir, sizeof rdir, "%s/restored", dir);
	cr_assert_eq(tally_db_backup(db, bk, NULL, NULL), 0, "%s", tally_errmsg());
	tally_db_close(db);
	cr_assert_eq(backup_restore(bk, NULL, 0, rdir, NULL), 0, "%s", tally_errmsg());
	cr_assert_eq(tally_db_open(rdir, &o, &db), 0, "%s", tally_errmsg());
	check_all(db, d0, &r);
	tally_db_close(db);
	tu_rmrf(dir);
	free(dir);
	forget_events();
}

Test(dist_derived, stubs_keep_finest_windows_past_a_key_marked_late)
{
	/* camera C0 is written before the field is marked, C0 and C1 after;
	 * merged, C0's windows are basic at every level (no distribution
	 * covers all of them), and C1's 5-minute windows must still reach
	 * the stub: C0, first in the part, must not decide for it */
	tu_rng r = {tu_seed("dist_derived_late_mark")};
	n_evs = 0;
	char *dir = tu_tmpdir();
	tally_options o = opts();
	o.shards = 1;
	o.distributions = NULL;
	tally_db *db;
	int64_t d0 = today() - (DAYS - 1) * TALLY_1D;
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	write_in(db, &r, 0, 400, 0, d0, TALLY_1D);
	cr_assert_eq(tally_db_flush(db), 0, "%s", tally_errmsg());
	tally_db_close(db);
	o.distributions = "traffic.speed:0.1";
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	write_in(db, &r, 0, 400, 0, d0, TALLY_1D);
	write_in(db, &r, 0, 800, 1, d0, TALLY_1D);
	write_in(db, &r, 0, 1, 1, today(), 1); /* the newest: day d0 seals */
	cr_assert_eq(tally_db_flush(db), 0, "%s", tally_errmsg());
	cr_assert_eq(tally_db_merge(db), 0, "%s", tally_errmsg());
	unsigned fine[AGG_KIND_SLOTS], coarse[AGG_KIND_SLOTS], stubs;
	cr_assert_eq(retain(db), 1, "one merged part of day d0");
	block_kinds(dir, fine, coarse, &stubs);
	cr_assert_eq(stubs, 1);
	for (int i = 0; i < 20; i++) {
		int64_t a = d0 + (int64_t)tu_below(&r, 288) * TALLY_5M;
		check_range(db, 1, a, a + TALLY_5M);
	}
	check_range(db, 1, d0, d0 + TALLY_1D);
	tally_db_close(db);
	tu_rmrf(dir);
	free(dir);
	forget_events();
}
