/*
 * test_aggkind.c — the aggregate descriptor: parts of every earlier format
 * version still read, and count, sum, min and max answer bit for bit what
 * the build that wrote them answered.
 *
 * tests/data/agg-v1/ is a database written by part format version 1
 * (regenerate: TALLY_WRITE_FIXTURE=DIR build/tests/test_aggkind, with a
 * build of that version). Its ANSWERS file holds, in hexadecimal floats,
 * the answers that build gave; every later build must give the same bytes,
 * from the old parts and from the same events written afresh.
 */
#include <criterion/criterion.h>

#include "testutil.h"

#ifndef TALLY_SOURCE_DIR
#define TALLY_SOURCE_DIR "."
#endif

#define T0    INT64_C(1700000000000000000)
#define CAMS  6
#define PER   2500
#define STEPM INT64_C(53) /* seconds between a camera's readings */

static tally_options quiet_opts(void)
{
	tally_options o;
	tally_options_init(&o);
	o.log_fn = tu_quiet_log;
	o.no_background = 1;
	return o;
}

/* Decimal speeds (one decimal), integer counts and a bool, over two days,
 * every 7th reading late by an hour, written in three flushes plus a WAL
 * tail: rollups of parts, merged parts and the memtable all answer. */
static void write_events(tally_db *db)
{
	tally_writer *w;
	cr_assert_eq(tally_writer_open(db, -1, &w), 0);
	tu_rng r = {42};
	char *buf = malloc((size_t)CAMS * PER * 96), *p = buf;
	for (int part = 0; part < 4; part++) {
		p = buf;
		for (int i = part * PER / 4; i < (part + 1) * PER / 4; i++)
			for (int c = 0; c < CAMS; c++) {
				int64_t ts = T0 + (int64_t)i * STEPM * TALLY_NS_PER_SEC + c;
				if (i % 7 == 3)
					ts -= INT64_C(3600) * TALLY_NS_PER_SEC;
				unsigned v = 300 + (unsigned)tu_below(&r, 900);
				p += sprintf(
					p, "traffic,camera=C%d speed=%u.%u,axles=%ui,ok=%s %lld\n",
					c, v / 10, v % 10, 2 + (unsigned)tu_below(&r, 4),
					tu_below(&r, 5) ? "true" : "false", (long long)ts);
			}
		tally_write_result res;
		cr_assert_eq(tally_write_lp(w, buf, (size_t)(p - buf), TALLY_PREC_NS, &res), 0,
			     "%s", tally_errmsg());
		cr_assert_eq(tally_db_sync(db), 0);
		if (part < 3)
			cr_assert_eq(tally_db_flush(db), 0, "%s", tally_errmsg());
		if (part == 2)
			cr_assert_eq(tally_db_merge(db), 0, "%s", tally_errmsg());
	}
	tally_writer_close(w);
	free(buf);
}

static void put_agg(FILE *f, const tally_agg *a)
{
	fprintf(f, " %llu %a %a %a %a\n", (unsigned long long)a->count, a->sum, a->min, a->max,
		a->avg);
}

/* Every answer the fixture pins: whole range, an unaligned range, and an
 * hourly series, per camera and field, then all keys. */
static void answers(tally_db *db, FILE *f)
{
	static const char *fields[] = {"speed", "axles", "ok"};
	const int64_t ua = T0 + INT64_C(4321) * TALLY_NS_PER_SEC + 17;
	const int64_t ub = T0 + INT64_C(98765) * TALLY_NS_PER_SEC + 3;
	for (int fi = 0; fi < 3; fi++) {
		for (int c = 0; c < CAMS; c++) {
			char key[8];
			sprintf(key, "C%d", c);
			tally_agg a;
			cr_assert_eq(tally_query_agg(db, "traffic", fields[fi], key, INT64_MIN,
						     INT64_MAX, &a),
				     0, "%s", tally_errmsg());
			fprintf(f, "all %s %s", fields[fi], key);
			put_agg(f, &a);
			cr_assert_eq(tally_query_agg(db, "traffic", fields[fi], key, ua, ub, &a),
				     0);
			fprintf(f, "range %s %s", fields[fi], key);
			put_agg(f, &a);
			tally_bucket b[64];
			size_t n;
			cr_assert_eq(tally_query_series(db, "traffic", fields[fi], key, TALLY_1H,
							T0, T0 + 40 * TALLY_1H, b, 64, &n),
				     0, "%s", tally_errmsg());
			for (size_t i = 0; i < n; i++) {
				fprintf(f, "hour %s %s %lld", fields[fi], key,
					(long long)b[i].start);
				put_agg(f, &b[i].agg);
			}
		}
		tally_keys_iter *it;
		cr_assert_eq(tally_query_keys(db, "traffic", fields[fi], ua, ub, &it), 0);
		const char *key;
		tally_agg a;
		while (tally_keys_next(it, &key, &a) == 1) {
			fprintf(f, "keys %s %s", fields[fi], key);
			put_agg(f, &a);
		}
		tally_keys_close(it);
	}
}

static char *answers_text(tally_db *db)
{
	char *s = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&s, &len);
	answers(db, f);
	fclose(f);
	return s;
}

static char *read_text(const char *path)
{
	FILE *f = fopen(path, "r");
	cr_assert(f, "%s", path);
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	char *s = malloc((size_t)n + 1);
	cr_assert_eq(fread(s, 1, (size_t)n, f), (size_t)n);
	s[n] = 0;
	fclose(f);
	return s;
}

/* The first line where two answer texts differ, for the message. */
static const char *first_diff(const char *a, const char *b)
{
	const char *line = a;
	for (; *a && *a == *b; a++, b++)
		if (*a == '\n')
			line = a + 1;
	return line;
}

Test(aggkind, part_v1_fixture_answers_bit_for_bit)
{
	tally_options o = quiet_opts();
	tally_db *db;
	const char *out = getenv("TALLY_WRITE_FIXTURE");
	if (out) {
		cr_assert_eq(tally_db_open(out, &o, &db), 0);
		write_events(db);
		char path[4096];
		snprintf(path, sizeof path, "%s/ANSWERS", out);
		FILE *f = fopen(path, "w");
		answers(db, f);
		fclose(f);
		tally_db_close(db);
		return;
	}
	char path[4096];
	snprintf(path, sizeof path, "%s/tests/data/agg-v1/ANSWERS", TALLY_SOURCE_DIR);
	char *want = read_text(path);
	char *dir = tu_tmpdir();
	char cmd[9000];
	snprintf(cmd, sizeof cmd, "cp -r %s/tests/data/agg-v1/. %s/ && rm %s/ANSWERS",
		 TALLY_SOURCE_DIR, dir, dir);
	cr_assert_eq(system(cmd), 0);
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	char *got = answers_text(db);
	cr_assert(!strcmp(got, want), "old parts answer differently at: %.120s",
		  first_diff(got, want));
	free(got);
	/* merged into a part of this build's format, still the same bytes */
	cr_assert_eq(tally_db_flush(db), 0, "%s", tally_errmsg());
	cr_assert_eq(tally_db_merge(db), 0, "%s", tally_errmsg());
	got = answers_text(db);
	cr_assert(!strcmp(got, want), "merged parts answer differently at: %.120s",
		  first_diff(got, want));
	free(got);
	tally_db_close(db);
	tu_rmrf(dir);
	/* the same events written afresh by this build */
	cr_assert_eq(tally_db_open(dir, &o, &db), 0);
	write_events(db);
	got = answers_text(db);
	cr_assert(!strcmp(got, want), "fresh writes answer differently at: %.120s",
		  first_diff(got, want));
	free(got);
	tally_db_close(db);
	tu_rmrf(dir);
	free(dir);
	free(want);
}

/* The distributions' answers tests/data/agg-v2 pins, per camera: whole
 * range and an unaligned one. */
static void dist_answers(tally_db *db, FILE *f)
{
	const int64_t ua = T0 + INT64_C(4321) * TALLY_NS_PER_SEC + 17;
	const int64_t ub = T0 + INT64_C(98765) * TALLY_NS_PER_SEC + 3;
	for (int c = 0; c < CAMS; c++) {
		char key[8];
		sprintf(key, "C%d", c);
		for (int r = 0; r < 2; r++) {
			tally_dist *d;
			cr_assert_eq(tally_query_dist(db, "traffic", "speed", key,
						      r ? ua : INT64_MIN, r ? ub : INT64_MAX, &d),
				     0, "%s", tally_errmsg());
			double q50, q85;
			cr_assert_eq(tally_dist_quantile(d, 0.5, &q50), 0);
			cr_assert_eq(tally_dist_quantile(d, 0.85, &q85), 0);
			fprintf(f, "dist %s %d %llu %a %a %llu\n", key, r,
				(unsigned long long)tally_dist_count(d), q50, q85,
				(unsigned long long)tally_dist_count_above(d, 60));
			tally_dist_free(d);
		}
	}
}

static char *all_answers_text(tally_db *db)
{
	char *s = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&s, &len);
	answers(db, f);
	dist_answers(db, f);
	fclose(f);
	return s;
}

/*
 * tests/data/agg-v2/ is the same events written by part format version 2
 * with traffic.speed:0.1 marked (dist rollup blocks; regenerate:
 * TALLY_WRITE_FIXTURE_V2=DIR build/tests/test_aggkind with a build of that
 * version). Its ANSWERS add the distributions' answers.
 */
Test(aggkind, part_v2_fixture_with_distributions_answers_bit_for_bit)
{
	tally_options o = quiet_opts();
	o.distributions = "traffic.speed:0.1";
	tally_db *db;
	const char *out = getenv("TALLY_WRITE_FIXTURE_V2");
	if (out) {
		cr_assert_eq(tally_db_open(out, &o, &db), 0);
		write_events(db);
		char path[4096];
		snprintf(path, sizeof path, "%s/ANSWERS", out);
		FILE *f = fopen(path, "w");
		answers(db, f);
		dist_answers(db, f);
		fclose(f);
		tally_db_close(db);
		return;
	}
	char path[4096];
	snprintf(path, sizeof path, "%s/tests/data/agg-v2/ANSWERS", TALLY_SOURCE_DIR);
	char *want = read_text(path);
	char *dir = tu_tmpdir();
	char cmd[9000];
	snprintf(cmd, sizeof cmd, "cp -r %s/tests/data/agg-v2/. %s/ && rm %s/ANSWERS",
		 TALLY_SOURCE_DIR, dir, dir);
	cr_assert_eq(system(cmd), 0);
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	char *got = all_answers_text(db);
	cr_assert(!strcmp(got, want), "v2 parts answer differently at: %.120s",
		  first_diff(got, want));
	free(got);
	cr_assert_eq(tally_db_flush(db), 0, "%s", tally_errmsg());
	cr_assert_eq(tally_db_merge(db), 0, "%s", tally_errmsg());
	got = all_answers_text(db);
	cr_assert(!strcmp(got, want), "merged parts answer differently at: %.120s",
		  first_diff(got, want));
	free(got);
	tally_db_close(db);
	tu_rmrf(dir);
	free(dir);
	free(want);
}

/* ---------------------------------------------------------------- kinds */

#include <fcntl.h>
#include <xxhash.h>

#include "part.h"

/* A rollup block whose kind this build does not know (a newer build's, or
 * a damaged byte under a good checksum) is refused with file and block
 * named, never read as another kind. */
Test(aggkind, rollup_block_of_unknown_kind_is_refused_by_name)
{
	char *dir = tu_tmpdir();
	tally_options o = quiet_opts();
	tally_db *db;
	cr_assert_eq(tally_db_open(dir, &o, &db), 0);
	tally_writer *w;
	cr_assert_eq(tally_writer_open(db, -1, &w), 0);
	const char *lp = "traffic,camera=KV1 speed=85.2 1700000000000000000\n"
			 "traffic,camera=KV1 speed=90.5 1700000001000000000\n";
	cr_assert_eq(tally_write_lp(w, lp, strlen(lp), TALLY_PREC_NS, NULL), 0);
	tally_writer_close(w);
	cr_assert_eq(tally_db_flush(db), 0);
	tally_db_close(db);

	char path[4096];
	char parts[4096];
	snprintf(parts, sizeof parts, "%s/parts", dir);
	cr_assert_eq(tu_find_files(parts, ".part", path, sizeof path), 1);
	part *p;
	cr_assert_eq(part_open(path, &p), 0, "%s", tally_errmsg());
	cr_assert_eq(p->version, 2);
	part_ref ref = p->rollups[0].ref;
	part_close(p);
	int fd = open(path, O_RDWR);
	uint8_t *blk = malloc(ref.len + 8);
	cr_assert_eq(pread(fd, blk, ref.len + 8, (off_t)ref.off), (ssize_t)ref.len + 8);
	cr_assert_eq(blk[4], 1, "a basic block");
	blk[4] = 200;
	uint64_t sum = XXH3_64bits(blk, ref.len);
	for (int i = 0; i < 8; i++)
		blk[ref.len + i] = (uint8_t)(sum >> (8 * i));
	cr_assert_eq(pwrite(fd, blk, ref.len + 8, (off_t)ref.off), (ssize_t)ref.len + 8);
	close(fd);
	free(blk);

	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	tally_bucket b[4];
	size_t n;
	cr_assert_eq(tally_query_series(db, "traffic", "speed", "KV1", TALLY_5M, 0,
					INT64_C(1800000000000000000), b, 4, &n),
		     TALLY_ECORRUPT);
	char want[64];
	snprintf(want, sizeof want, "block %u", ref.no);
	cr_assert(strstr(tally_errmsg(), want) && strstr(tally_errmsg(), ".part") &&
			  strstr(tally_errmsg(), "kind 200"),
		  "%s", tally_errmsg());
	tally_db_close(db);
	tu_rmrf(dir);
	free(dir);
}
