/*
 * test_dist_fixture.c — stores of kind 3 and kind 4 distribution blocks
 * with sketches (tests/data/dist-v3, dist-v4) still read, answering
 * exactly what the build that wrote each answered.
 *
 * The one idea: the fixture's events come from a seeded generator, so the
 * test can make them again and hold every pinned answer against brute
 * force as well as against the bytes of ANSWERS: counts always, and every
 * statistic exactly where the answer says it is exact (error 0); where a
 * window was kept as a sketch, the quantiles within the error the answer
 * reports. A later build that misreads a sketch window, or an exact one,
 * fails both ways.
 *
 * Make dist-v4 again (only with a build that writes kind 4 blocks;
 * docs/formats.md, "Part files"):
 *   TALLY_WRITE_FIXTURE_DIST=DIR build/tests/test_dist_fixture \
 *     --filter 'dist_fixture/kind_4*'
 */
#include <criterion/criterion.h>

#include <fcntl.h>
#include <math.h>

#include "dist.h"
#include "part.h"
#include "testutil.h"

#define T0     INT64_C(1700006400000000000) /* 2023-11-15T00:00:00Z */
#define SPAN   (2 * TALLY_1D)
#define ROUNDS 4
#define PER    700 /* events per round */
#define BURST  120 /* camera C1 lane 1 in one 5-minute window, per round */
#define MAXEV  (ROUNDS * (PER + BURST))
#define DISTS  "traffic.speed:0.1:16"
#define KEYS   "traffic=camera+lane"

typedef struct ev {
	int cam, lane;
	int64_t ts;
	unsigned tenths; /* speed in units of 0.1 */
} ev;

static tally_options fix_opts(void)
{
	tally_options o = tu_quiet_opts();
	o.distributions = DISTS;
	o.table_keys = KEYS;
	return o;
}

/* Round r's events: camera C0 takes 12 distinct speeds (under the bound
 * of 16, so its windows stay exact), C1 spreads over 0.1 to 250.0 km/h
 * (its hours and days, and the burst's 5-minute window, pass the bound
 * and are sketches once flushed); times anywhere in the two days, so
 * every round is late into windows of the rounds before. */
static size_t round_events(tu_rng *rng, int r, ev *out)
{
	size_t n = 0;
	for (int i = 0; i < PER + BURST; i++) {
		ev *e = &out[n++];
		int burst = i >= PER;
		e->cam = burst ? 1 : (int)tu_below(rng, 2);
		e->lane = burst ? 1 : 1 + (int)tu_below(rng, 2);
		e->ts = burst ? T0 + 30 * TALLY_5M + (int64_t)tu_below(rng, (uint64_t)TALLY_5M)
			      : T0 + (int64_t)tu_below(rng, (uint64_t)SPAN);
		e->tenths = e->cam == 0 ? 500 + 10 * (unsigned)tu_below(rng, 12)
					: 1 + (unsigned)tu_below(rng, 2500);
	}
	(void)r;
	return n;
}

/* Every event of the fixture, in the order written. */
static size_t all_events(ev *out)
{
	tu_rng rng = {19};
	size_t n = 0;
	for (int r = 0; r < ROUNDS; r++)
		n += round_events(&rng, r, out + n);
	return n;
}

static void write_round(tally_db *db, const ev *e, size_t n)
{
	tally_writer *w;
	cr_assert_eq(tally_writer_open(db, -1, &w), 0);
	char *buf = malloc(n * 80), *p = buf;
	for (size_t i = 0; i < n; i++)
		p += sprintf(p, "traffic,camera=C%d,lane=%d speed=%u.%u %lld\n", e[i].cam,
			     e[i].lane, e[i].tenths / 10, e[i].tenths % 10, (long long)e[i].ts);
	tally_write_result res;
	cr_assert_eq(tally_write_lp(w, buf, (size_t)(p - buf), TALLY_PREC_NS, &res), 0, "%s",
		     tally_errmsg());
	cr_assert_eq(res.rejected, 0);
	cr_assert_eq(tally_db_sync(db), 0);
	tally_writer_close(w);
	free(buf);
}

/* What ANSWERS pins: for each filter, the whole store, an unaligned range
 * and six hours around the burst. */
static const char *const filters[] = {"camera=C0",        "camera=C1", "camera=C1,lane=1",
				      "camera=C0,lane=2", "lane=2",    "lane=1"};
static const double qs[] = {0.5, 0.85, 1};
static const double edges[] = {0, 40, 60, 80, 200};
#define N_EDGES (sizeof edges / sizeof *edges)

typedef struct range {
	int64_t from, to;
} range;

static size_t ranges(range *out)
{
	size_t n = 0;
	out[n++] = (range){INT64_MIN, INT64_MAX};
	out[n++] = (range){T0 + INT64_C(4321) * TALLY_NS_PER_SEC + 17,
			   T0 + INT64_C(98765) * TALLY_NS_PER_SEC + 3};
	for (int h = 0; h < 6; h++)
		out[n++] = (range){T0 + h * TALLY_1H, T0 + (h + 1) * TALLY_1H};
	return n;
}

static int matches(const ev *e, const char *filter)
{
	char cam[8], lane[8];
	snprintf(cam, sizeof cam, "C%d", e->cam);
	snprintf(lane, sizeof lane, "%d", e->lane);
	for (const char *p = filter; *p;) {
		const char *eq = strchr(p, '='), *end = strchr(p, ',');
		size_t vl = end ? (size_t)(end - eq - 1) : strlen(eq + 1);
		const char *want = !strncmp(p, "camera", 6) ? cam : lane;
		if (strlen(want) != vl || strncmp(eq + 1, want, vl))
			return 0;
		p = end ? end + 1 : eq + 1 + vl;
	}
	return 1;
}

static int cmp_u(const void *a, const void *b)
{
	unsigned x = *(const unsigned *)a, y = *(const unsigned *)b;
	return (x > y) - (x < y);
}

/* One answer's line, and its check against the sorted speeds v[0, n). */
static void answer(tally_db *db, FILE *f, const char *filter, const range *r, const unsigned *v,
		   size_t n, unsigned *n_sketched)
{
	tally_dist *d;
	cr_assert_eq(tally_query_dist(db, "traffic", "speed", filter, r->from, r->to, &d), 0,
		     "%s: %s", filter, tally_errmsg());
	double err = tally_dist_error(d);
	cr_assert(err == 0 || err == DIST_SKETCH_ALPHA, "%s: error %g", filter, err);
	*n_sketched += err > 0;
	fprintf(f, "%s %lld %llu %a", filter, (long long)r->from,
		(unsigned long long)tally_dist_count(d), err);
	cr_assert_eq(tally_dist_count(d), n, "%s [%lld, %lld): count %llu, brute force %zu", filter,
		     (long long)r->from, (long long)r->to, (unsigned long long)tally_dist_count(d),
		     n);
	for (size_t i = 0; i < sizeof qs / sizeof *qs; i++) {
		double got;
		cr_assert_eq(tally_dist_quantile(d, qs[i], &got), 0);
		fprintf(f, " %a", got);
		double want = v[tu_exact_rank(qs[i], n) - 1] / 10.0;
		if (err == 0)
			cr_assert_eq(got, want, "%s q=%g: %.17g, brute force %.17g", filter, qs[i],
				     got, want);
		else
			cr_assert_leq(fabs(got - want), err * want + 1e-9,
				      "%s q=%g: %.17g, brute force %.17g past the bound %g", filter,
				      qs[i], got, want, err);
	}
	uint64_t above = tally_dist_count_above(d, 60), below = tally_dist_count_below(d, 40);
	uint64_t h[N_EDGES - 1];
	cr_assert_eq(tally_dist_histogram(d, edges, N_EDGES, h), 0);
	fprintf(f, " %llu %llu", (unsigned long long)above, (unsigned long long)below);
	for (size_t i = 0; i + 1 < N_EDGES; i++)
		fprintf(f, " %llu", (unsigned long long)h[i]);
	fputc('\n', f);
	if (err == 0) {
		uint64_t wa = 0, wb = 0, wh[N_EDGES - 1] = {0};
		for (size_t i = 0; i < n; i++) {
			wa += v[i] > 600;
			wb += v[i] < 400;
			for (size_t k = 0; k + 1 < N_EDGES; k++)
				wh[k] += v[i] >= edges[k] * 10 && v[i] < edges[k + 1] * 10;
		}
		cr_assert_eq(above, wa, "%s: above 60", filter);
		cr_assert_eq(below, wb, "%s: below 40", filter);
		for (size_t k = 0; k + 1 < N_EDGES; k++)
			cr_assert_eq(h[k], wh[k], "%s: bin %zu", filter, k);
	}
	tally_dist_free(d);
}

/* Every pinned answer as text, each checked against brute force; the
 * number that came from sketches in *n_sketched. */
static char *answers_text(tally_db *db, const ev *e, size_t n_ev, unsigned *n_sketched)
{
	char *s = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&s, &len);
	range rs[16];
	size_t n_r = ranges(rs);
	unsigned *v = malloc(n_ev * sizeof *v);
	*n_sketched = 0;
	for (size_t fi = 0; fi < sizeof filters / sizeof *filters; fi++)
		for (size_t ri = 0; ri < n_r; ri++) {
			size_t n = 0;
			for (size_t i = 0; i < n_ev; i++)
				if (e[i].ts >= rs[ri].from && e[i].ts < rs[ri].to &&
				    matches(&e[i], filters[fi]))
					v[n++] = e[i].tenths;
			qsort(v, n, sizeof *v, cmp_u);
			answer(db, f, filters[fi], &rs[ri], v, n, n_sketched);
		}
	free(v);
	fclose(f);
	return s;
}

/* The dist blocks of dir's parts by kind: kinds[k] counts kind k. */
static void count_block_kinds(const char *dir, unsigned kinds[256])
{
	char cmd[4200], path[4200];
	snprintf(cmd, sizeof cmd, "ls %s/parts/*.part", dir);
	FILE *ls = popen(cmd, "r");
	cr_assert(ls);
	while (fgets(path, sizeof path, ls)) {
		path[strcspn(path, "\n")] = 0;
		part *p;
		cr_assert_eq(part_open(path, &p), 0, "%s", tally_errmsg());
		int fd = open(path, O_RDONLY);
		for (uint32_t i = 0; i < p->n_rollups; i++) {
			uint8_t head[5];
			if (!p->rollups[i].ref.len)
				continue;
			cr_assert_eq(pread(fd, head, 5, (off_t)p->rollups[i].ref.off), 5);
			kinds[head[4]]++;
		}
		close(fd);
		part_close(p);
	}
	pclose(ls);
}

/* Holds db's answers to want, then closes db; how many came from
 * sketches. */
static unsigned answers_as_pinned(tally_db *db, const ev *e, size_t n_ev, const char *want)
{
	unsigned sk;
	char *got = answers_text(db, e, n_ev, &sk);
	cr_assert_str_eq(got, want);
	free(got);
	tally_db_close(db);
	return sk;
}

/* Opens a copy of fixture name, whose parts hold dist blocks of kind
 * (and none of the kind before it), and holds every answer to ANSWERS and
 * to brute force. */
static void check_fixture(const char *name, unsigned kind)
{
	ev *e = calloc(MAXEV, sizeof *e);
	size_t n_ev = all_events(e);
	tally_options o = fix_opts();
	tally_db *db;
	char *want = tu_fixture_answers(name);
	cr_assert(want, "tests/data/%s/ANSWERS", name);
	char *dir = tu_tmpdir();
	cr_assert_eq(tu_copy_fixture(name, dir), 0);
	unsigned kinds[256] = {0};
	count_block_kinds(dir, kinds);
	cr_assert_gt(kinds[kind], 0, "the fixture should hold kind %u dist blocks", kind);
	cr_assert_eq(kinds[kind - 1], 0, "and no kind %u ones", kind - 1);
	/* opened without table_keys: the files say how traffic is keyed */
	o.table_keys = NULL;
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	unsigned sk = answers_as_pinned(db, e, n_ev, want);
	cr_assert_gt(sk, 0, "answers should come from sketched windows");
	cr_assert_lt(sk, 8 * sizeof filters / sizeof *filters, "and some from exact ones only");
	tu_rmrf(dir);
	free(dir);
	free(want);
	free(e);
}

/*
 * tests/data/dist-v3 is a store written with traffic.speed:0.1:16 and
 * traffic keyed by camera+lane: three rounds flushed into parts (merged
 * after the third) and a fourth in the WAL. Its parts hold kind 3 dist
 * blocks with sketched windows; ANSWERS holds, in hexadecimal floats, the
 * count, error bound, quantiles 0.5, 0.85 and 1, values above 60, below
 * 40 and a histogram of each filter and range. This build writes kind 4:
 * it reads the fixture, it cannot make it again.
 */
Test(dist_fixture, kind_3_blocks_with_sketches_answer_as_written)
{
	check_fixture("dist-v3", 3);
}

/* tests/data/dist-v4: the same events and steps, written by the first
 * build of kind 4 blocks (engine/distcode.c); the bytes of its parts pin
 * that format, parameters and all. */
Test(dist_fixture, kind_4_blocks_with_sketches_answer_as_written)
{
	const char *out = getenv("TALLY_WRITE_FIXTURE_DIST");
	if (!out) {
		check_fixture("dist-v4", 4);
		return;
	}
	ev *e = calloc(MAXEV, sizeof *e);
	size_t n_ev = all_events(e);
	tally_options o = fix_opts();
	tally_db *db;
	unsigned sk;
	cr_assert_eq(tally_db_open(out, &o, &db), 0, "%s", tally_errmsg());
	size_t at = 0;
	for (int r = 0; r < ROUNDS; r++) {
		write_round(db, e + at, PER + BURST);
		at += PER + BURST;
		if (r < ROUNDS - 1)
			cr_assert_eq(tally_db_flush(db), 0, "%s", tally_errmsg());
		if (r == ROUNDS - 2)
			cr_assert_eq(tally_db_merge(db), 0, "%s", tally_errmsg());
	}
	char path[4096];
	snprintf(path, sizeof path, "%s/ANSWERS", out);
	FILE *f = fopen(path, "w");
	char *text = answers_text(db, e, n_ev, &sk);
	fputs(text, f);
	fclose(f);
	free(text);
	tally_db_close(db);
	free(e);
}

/* A merge of kind 3 blocks writes kind 4 ones, and the answers stay the
 * pinned ones: dist-v3's day 1 is sealed (its events lie two days before
 * the newest) into one part of kind 4 blocks, day 2 keeps its kind 3
 * parts beside the flushed WAL round's kind 4 part. */
Test(dist_fixture, kind_3_blocks_merge_into_kind_4_answering_the_same)
{
	ev *e = calloc(MAXEV, sizeof *e);
	size_t n_ev = all_events(e);
	tally_options o = fix_opts();
	o.table_keys = NULL;
	tally_db *db;
	unsigned before[256] = {0}, after[256] = {0};
	char *want = tu_fixture_answers("dist-v3");
	char *dir = tu_tmpdir();
	cr_assert_eq(tu_copy_fixture("dist-v3", dir), 0);
	count_block_kinds(dir, before);
	cr_assert_eq(before[4], 0);
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	cr_assert_eq(tally_db_flush(db), 0, "%s", tally_errmsg());
	cr_assert_eq(tally_db_merge(db), 0, "%s", tally_errmsg());
	count_block_kinds(dir, after);
	cr_assert_gt(after[4], 0, "merged and flushed blocks are kind 4");
	cr_assert_lt(after[3], before[3], "the sealed day's kind 3 blocks were merged");
	answers_as_pinned(db, e, n_ev, want);
	/* and again from the files alone */
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	answers_as_pinned(db, e, n_ev, want);
	tu_rmrf(dir);
	free(dir);
	free(want);
	free(e);
}
