/*
 * test_engine.c — the embedded API: writes, queries, options, errors,
 * recovery and WAL damage seen through tally_db_open.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <math.h>
#include <dirent.h>
#include <errno.h>
#include <sys/stat.h>
#include <time.h>

#include "testutil.h"

#define T0 INT64_C(1700000000000000000) /* 2023-11-14T22:13:20Z */

static char *dir;
static tally_db *db;
static tally_writer *w;

static void open_db(const tally_options *o)
{
	tally_options def;
	if (!o) {
		tally_options_init(&def);
		def.log_fn = tu_quiet_log;
		o = &def;
	}
	int rc = tally_db_open(dir, o, &db);
	cr_assert_eq(rc, 0, "open: %s", tally_errmsg());
	cr_assert_eq(tally_writer_open(db, -1, &w), 0);
}

static void close_db(void)
{
	tally_writer_close(w);
	tally_db_close(db);
	w = NULL;
	db = NULL;
}

static void setup(void)
{
	dir = tu_tmpdir();
	open_db(NULL);
}

static void teardown(void)
{
	close_db();
	tu_rmrf(dir);
	free(dir);
}

static tally_write_result lp(const char *text)
{
	tally_write_result res;
	int rc = tally_write_lp(w, text, strlen(text), TALLY_PREC_NS, &res);
	cr_assert_eq(rc, 0, "write: %s", tally_errmsg());
	return res;
}

TestSuite(engine, .init = setup, .fini = teardown);

Test(engine, series_agg_keys_scan_on_known_data)
{
	char buf[1 << 16], *p = buf;
	/* camera A: speeds 80, 90, 100 in the first 5 minutes, 70 in the next */
	p += sprintf(p, "traffic,camera=A,lane=1 speed=80 %lld\n", (long long)(T0 + 1));
	p += sprintf(p, "traffic,camera=A,lane=2 speed=90,plate=\"X1\" %lld\n",
		     (long long)(T0 + 60 * TALLY_NS_PER_SEC));
	p += sprintf(p, "traffic,camera=A speed=100 %lld\n",
		     (long long)(T0 + 299 * TALLY_NS_PER_SEC));
	p += sprintf(p, "traffic,camera=A speed=70 %lld\n",
		     (long long)(T0 + 300 * TALLY_NS_PER_SEC));
	p += sprintf(p, "traffic,camera=B speed=50 %lld\n", (long long)(T0 + 10));
	tally_write_result r = lp(buf);
	cr_assert_eq(r.accepted, 5);
	cr_assert_eq(r.rejected, 0);

	int64_t w0 = T0 - T0 % TALLY_5M; /* T0 is on a 5m boundary minus 200 s */
	tally_bucket b[8];
	size_t n;
	cr_assert_eq(tally_query_series(db, "traffic", "speed", "A", TALLY_5M, T0 - TALLY_1H,
					T0 + TALLY_1H, b, 8, &n),
		     0);
	/* T0 % 5m == 200 s, so the events split 80,90 | 100,70 */
	cr_assert_eq(T0 % TALLY_5M, 200 * TALLY_NS_PER_SEC);
	cr_assert_eq(n, 2);
	cr_assert_eq(b[0].start, w0);
	cr_assert_eq(b[0].agg.count, 2);
	cr_assert_eq(b[0].agg.sum, 170);
	cr_assert_eq(b[0].agg.avg, 85);
	cr_assert_eq(b[1].start, w0 + TALLY_5M);
	cr_assert_eq(b[1].agg.count, 2);
	cr_assert_eq(b[1].agg.min, 70);
	cr_assert_eq(b[1].agg.max, 100);

	/* 15 minute steps merge three 5m windows */
	cr_assert_eq(tally_query_series(db, "traffic", "speed", "A", 3 * TALLY_5M, T0 - TALLY_1H,
					T0 + TALLY_1H, b, 8, &n),
		     0);
	int64_t agg_count = 0;
	for (size_t i = 0; i < n; i++)
		agg_count += (int64_t)b[i].agg.count;
	cr_assert_eq(agg_count, 4);

	tally_agg a;
	cr_assert_eq(tally_query_agg(db, "traffic", "speed", "A", T0 + 2,
				     T0 + 300 * TALLY_NS_PER_SEC + 1, &a),
		     0);
	cr_assert_eq(a.count, 3); /* 90, 100, 70: the 80 at T0+1 is outside */
	cr_assert_eq(a.sum, 260);

	tally_keys_iter *it;
	cr_assert_eq(tally_query_keys(db, "traffic", "speed", T0, T0 + TALLY_1H, &it), 0);
	const char *key;
	cr_assert_eq(tally_keys_next(it, &key, &a), 1);
	cr_assert_str_eq(key, "A");
	cr_assert_eq(a.count, 4);
	cr_assert_eq(tally_keys_next(it, &key, &a), 1);
	cr_assert_str_eq(key, "B");
	cr_assert_eq(a.avg, 50);
	cr_assert_eq(tally_keys_next(it, &key, &a), 0);
	tally_keys_close(it);

	tally_scan *sc;
	cr_assert_eq(tally_scan_open(db, "traffic", "A", T0, T0 + TALLY_1H, &sc), 0);
	cr_assert_eq(tally_scan_columns(sc), 3); /* lane, speed, plate */
	tally_row row;
	cr_assert_eq(tally_scan_next(sc, &row), 1);
	cr_assert_eq(row.ts, T0 + 1);
	cr_assert_eq(tally_scan_next(sc, &row), 1);
	int plate = -1;
	for (size_t i = 0; i < tally_scan_columns(sc); i++) {
		const char *nm;
		enum tally_type ty;
		tally_scan_column(sc, i, &nm, &ty);
		if (!strcmp(nm, "plate"))
			plate = (int)i;
	}
	cr_assert_geq(plate, 0);
	cr_assert_eq(row.values[plate].type, TALLY_T_STR);
	cr_assert_eq(row.values[plate].v.str.len, 2);
	cr_assert_eq(memcmp(row.values[plate].v.str.ptr, "X1", 2), 0);
	cr_assert_eq(tally_scan_next(sc, &row), 1);
	cr_assert_eq(tally_scan_next(sc, &row), 1);
	cr_assert_eq(tally_scan_next(sc, &row), 0);
	tally_scan_close(sc);
}

/* A batch is applied grouped by key (engine/shard.c), and each key's rows
 * must keep their written order: rows of one timestamp scan back in
 * arrival order, and lateness is judged against the rows written before.
 * Keys interleave here, as cameras do on one connection. */
Test(engine, each_keys_rows_keep_their_order_within_a_batch)
{
	char text[2048];
	size_t n = 0;
	const int64_t h = 3600 * TALLY_NS_PER_SEC;
	for (int i = 0; i < 6; i++) {
		/* a: six readings of one instant; b: one a second */
		n += (size_t)snprintf(text + n, sizeof text - n, "t,k=a v=%d %lld\n", i + 1,
				      (long long)(T0 + 2 * h));
		n += (size_t)snprintf(text + n, sizeof text - n, "t,k=b v=%d %lld\n", i,
				      (long long)(T0 + 2 * h + i * TALLY_NS_PER_SEC));
	}
	/* then one of a two hours before its others: late (past 5 minutes) */
	n += (size_t)snprintf(text + n, sizeof text - n, "t,k=a v=9 %lld\n", (long long)T0);
	cr_assert_eq(lp(text).accepted, 13);
	tally_stats st;
	cr_assert_eq(tally_db_stats(db, &st), 0);
	cr_assert_eq(st.late_events, 1);
	for (int pass = 0; pass < 2; pass++) {
		tally_scan *sc;
		cr_assert_eq(tally_scan_open(db, "t", "a", T0 + h, T0 + 3 * h, &sc), 0, "%s",
			     tally_errmsg());
		tally_row row;
		for (int i = 0; i < 6; i++) {
			cr_assert_eq(tally_scan_next(sc, &row), 1);
			cr_assert_eq(row.values[0].v.f64, i + 1, "pass %d: row %d is %g", pass, i,
				     row.values[0].v.f64);
		}
		cr_assert_eq(tally_scan_next(sc, &row), 0);
		tally_scan_close(sc);
		/* and the same from a part */
		cr_assert_eq(tally_db_flush(db), 0, "%s", tally_errmsg());
	}
}

Test(engine, type_conflict_rejects_only_that_line)
{
	tally_write_result r = lp("t,k=a v=1.5 1\n"
				  "t,k=a v=2i 2\n"
				  "t,k=a v=3 3\n");
	cr_assert_eq(r.accepted, 2);
	cr_assert_eq(r.rejected, 1);
	cr_assert_eq(r.errors[0].line, 2);
	cr_assert_eq(r.errors[0].code, TALLY_ETYPE);
	cr_assert(strstr(r.errors[0].reason, "'v'") && strstr(r.errors[0].reason, "integer") &&
			  strstr(r.errors[0].reason, "float"),
		  "reason: %s", r.errors[0].reason);
	/* the conflict holds across writers on other shards too */
	tally_writer *w2;
	cr_assert_eq(tally_writer_open(db, 0, &w2), 0);
	tally_write_result r2;
	cr_assert_eq(tally_write_lp(w2, "t,k=b v=true 5\n", 15, TALLY_PREC_NS, &r2), 0);
	cr_assert_eq(r2.rejected, 1);
	tally_writer_close(w2);
	tally_agg a;
	cr_assert_eq(tally_query_agg(db, "t", "v", "a", 0, 100, &a), 0);
	cr_assert_eq(a.count, 2);
	cr_assert_eq(a.sum, 4.5);
}

Test(engine, key_tag_rules)
{
	tally_write_result r = lp("cams,camera=A,lane=1 speed=1 1\n"
				  "cams,lane=1 speed=2 2\n"          /* no key tag */
				  "cams,lane=2,camera=B speed=3 3\n" /* key not first: fine */
				  "cams,camera=C camera=1 4\n");     /* field named like key */
	cr_assert_eq(r.accepted, 2);
	cr_assert_eq(r.rejected, 2);
	cr_assert_eq(r.errors[0].line, 2);
	cr_assert(strstr(r.errors[0].reason, "missing key tag 'camera'"), "%s", r.errors[0].reason);
	cr_assert_eq(r.errors[1].line, 4);
	tally_agg a;
	cr_assert_eq(tally_query_agg(db, "cams", "speed", "B", 0, 100, &a), 0);
	cr_assert_eq(a.count, 1);
	/* a table whose first line has no tag keys everything under "" */
	r = lp("solo v=1 1\nsolo,x=1 v=2 2\n");
	cr_assert_eq(r.accepted, 2);
	cr_assert_eq(tally_query_agg(db, "solo", "v", "", 0, 100, &a), 0);
	cr_assert_eq(a.count, 2);
}

Test(engine, configured_key_and_moscow_days)
{
	close_db();
	tally_options o;
	tally_options_init(&o);
	o.log_fn = tu_quiet_log;
	o.table_keys = "traffic=camera";
	o.align_offset = -3 * TALLY_1H; /* days start at 21:00 UTC = 00:00 MSK */
	open_db(&o);
	int64_t day = T0 - (T0 % TALLY_1D); /* 2023-11-14T00:00Z */
	char buf[512];
	/* 20:00Z and 22:00Z on the same UTC day: different Moscow days */
	snprintf(buf, sizeof buf,
		 "traffic,lane=1,camera=K speed=10 %lld\ntraffic,lane=1,camera=K speed=20 %lld\n",
		 (long long)(day + 20 * TALLY_1H), (long long)(day + 22 * TALLY_1H));
	cr_assert_eq(lp(buf).accepted, 2);
	tally_bucket b[4];
	size_t n;
	cr_assert_eq(tally_query_series(db, "traffic", "speed", "K", TALLY_1D, day - TALLY_1D,
					day + 2 * TALLY_1D, b, 4, &n),
		     0);
	cr_assert_eq(n, 2);
	cr_assert_eq(b[0].start, day - 3 * TALLY_1H);
	cr_assert_eq(b[0].agg.sum, 10);
	cr_assert_eq(b[1].start, day + 21 * TALLY_1H);
	cr_assert_eq(b[1].agg.sum, 20);
}

Test(engine, option_validation)
{
	tally_db *d2 = NULL;
	tally_options o;
	char *d = tu_tmpdir();
	tally_options_init(&o);
	o.n_levels = 2;
	o.levels[0] = TALLY_5M;
	o.levels[1] = 7 * TALLY_NS_PER_SEC * 60; /* 7m: not a multiple of 5m */
	cr_assert_eq(tally_db_open(d, &o, &d2), TALLY_EINVAL);
	cr_assert(strstr(tally_errmsg(), "not a multiple"), "%s", tally_errmsg());
	cr_assert_null(d2);
	tally_options_init(&o);
	o.align_offset = TALLY_1D;
	cr_assert_eq(tally_db_open(d, &o, &d2), TALLY_EINVAL);
	tally_options_init(&o);
	o.table_keys = "traffic";
	cr_assert_eq(tally_db_open(d, &o, &d2), TALLY_EINVAL);
	cr_assert(strstr(tally_errmsg(), "table_keys"), "%s", tally_errmsg());
	/* the directory is locked by another open handle */
	cr_assert_eq(tally_db_open(dir, NULL, &d2), TALLY_ELOCKED);
	tu_rmrf(d);
	free(d);
}

Test(engine, query_errors)
{
	lp("t,k=a v=1,s=\"x\" 1\n");
	tally_agg a;
	tally_bucket b[2];
	size_t n;
	cr_assert_eq(tally_query_agg(db, "nope", "v", "a", 0, 10, &a), TALLY_ENOTFOUND);
	cr_assert(strstr(tally_errmsg(), "nope"));
	cr_assert_eq(tally_query_agg(db, "t", "w", "a", 0, 10, &a), TALLY_ENOTFOUND);
	cr_assert_eq(tally_query_agg(db, "t", "s", "a", 0, 10, &a), TALLY_EINVAL);
	cr_assert_eq(tally_query_series(db, "t", "v", "a", TALLY_5M + 1, 0, 10, b, 2, &n),
		     TALLY_EINVAL);
	/* an unknown key is simply empty */
	cr_assert_eq(tally_query_agg(db, "t", "v", "zz", 0, 10, &a), 0);
	cr_assert_eq(a.count, 0);
	cr_assert(isnan(a.avg));
	/* a buffer too small says how many windows there are */
	char buf[4096], *p = buf;
	for (int i = 0; i < 5; i++)
		p += sprintf(p, "t,k=m v=%d %lld\n", i, (long long)(T0 + i * TALLY_5M));
	lp(buf);
	cr_assert_eq(tally_query_series(db, "t", "v", "m", TALLY_5M, T0 - TALLY_1H, T0 + TALLY_1H,
					b, 2, &n),
		     TALLY_ETRUNC);
	cr_assert_eq(n, 5);
	cr_assert_eq(b[1].agg.sum, 1);
	cr_assert_str_eq(tally_strerror(TALLY_ETRUNC), "result truncated to the buffer");
	cr_assert_str_eq(tally_strerror(-ENOENT), strerror(ENOENT));
}

Test(engine, precision_and_default_time)
{
	tally_write_result r;
	cr_assert_eq(tally_write_lp(w, "t,k=a v=1 1700000000000\n", 24, TALLY_PREC_MS, &r), 0);
	cr_assert_eq(r.accepted, 1);
	tally_agg a;
	cr_assert_eq(tally_query_agg(db, "t", "v", "a", T0, T0 + 1, &a), 0);
	cr_assert_eq(a.count, 1);
	/* no timestamp: the time of the write */
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	int64_t before = (int64_t)ts.tv_sec * TALLY_NS_PER_SEC + ts.tv_nsec;
	lp("t,k=now v=2\n");
	clock_gettime(CLOCK_REALTIME, &ts);
	int64_t after = (int64_t)ts.tv_sec * TALLY_NS_PER_SEC + ts.tv_nsec;
	cr_assert_eq(tally_query_agg(db, "t", "v", "now", before, after + 1, &a), 0);
	cr_assert_eq(a.count, 1);
}

Test(engine, binary_batch_checks)
{
	int64_t ts[3] = {T0, T0 + 1, T0 + 2};
	double v[3] = {1, NAN, 3};
	tally_column c = {"v", TALLY_T_F64, v, NULL};
	tally_batch b = {"bin", "cam1", "camera", 3, ts, 1, &c};
	cr_assert_eq(tally_write_batch(w, &b), TALLY_EINVAL);
	cr_assert(strstr(tally_errmsg(), "row 1"), "%s", tally_errmsg());
	uint8_t present = 0x5; /* rows 0 and 2 */
	c.present = &present;
	cr_assert_eq(tally_write_batch(w, &b), 0, "%s", tally_errmsg());
	tally_agg a;
	cr_assert_eq(tally_query_agg(db, "bin", "v", "cam1", T0, T0 + 10, &a), 0);
	cr_assert_eq(a.count, 2);
	cr_assert_eq(a.sum, 4);
	/* the table took the batch's key tag name: line protocol agrees */
	tally_write_result r = lp("bin,camera=cam1 v=5 1700000000000000005\n");
	cr_assert_eq(r.accepted, 1);
	cr_assert_eq(tally_query_agg(db, "bin", "v", "cam1", T0, T0 + 10, &a), 0);
	cr_assert_eq(a.count, 3);
	/* type conflict refuses the whole batch */
	int64_t iv[3] = {1, 2, 3};
	tally_column ci = {"v", TALLY_T_I64, iv, NULL};
	b.columns = &ci;
	cr_assert_eq(tally_write_batch(w, &b), TALLY_ETYPE);
	cr_assert_eq(tally_query_agg(db, "bin", "v", "cam1", T0, T0 + 10, &a), 0);
	cr_assert_eq(a.count, 3);
	/* bad names */
	tally_batch bad = {"../etc", "k", NULL, 3, ts, 1, &c};
	cr_assert_eq(tally_write_batch(w, &bad), TALLY_EINVAL);
	cr_assert_eq(tally_write_lp(w, "a/b,k=1 v=1 1\n", 14, TALLY_PREC_NS, &r), 0);
	cr_assert_eq(r.rejected, 1);
	cr_assert(strstr(r.errors[0].reason, "table name"), "%s", r.errors[0].reason);
}

Test(engine, late_events_counted_and_visible)
{
	char buf[256];
	snprintf(buf, sizeof buf, "t,k=a v=1 %lld\n", (long long)(T0 + 4 * TALLY_1H));
	lp(buf);
	snprintf(buf, sizeof buf, "t,k=a v=2 %lld\n", (long long)T0); /* 4 h late */
	lp(buf);
	tally_stats st;
	cr_assert_eq(tally_db_stats(db, &st), 0);
	cr_assert_eq(st.events, 2);
	cr_assert_eq(st.late_events, 1);
	tally_bucket b[4];
	size_t n;
	cr_assert_eq(tally_query_series(db, "t", "v", "a", TALLY_1H, T0 - TALLY_1D, T0 + TALLY_1D,
					b, 4, &n),
		     0);
	cr_assert_eq(n, 2);
	cr_assert_eq(b[0].agg.sum, 2);
}

Test(engine, memory_limit_backpressure)
{
	close_db();
	tally_options o;
	tally_options_init(&o);
	o.log_fn = tu_quiet_log;
	o.memory_limit = 256 * 1024;
	open_db(&o);
	char line[128];
	int rc = 0;
	for (int i = 0; i < 100000 && rc == 0; i++) {
		int n = snprintf(line, sizeof line, "t,k=k%d v=%d %lld\n", i, i,
				 (long long)(T0 + i));
		rc = tally_write_lp(w, line, (size_t)n, TALLY_PREC_NS, NULL);
	}
	cr_assert_eq(rc, TALLY_EFULL);
	cr_assert(strstr(tally_errmsg(), "memory limit"), "%s", tally_errmsg());
	tally_stats st;
	tally_db_stats(db, &st);
	cr_assert_lt(st.memtable_bytes + st.rollup_bytes, 2 * o.memory_limit);
}

Test(engine, reopen_replays_exactly_once)
{
	char buf[1 << 16], *p = buf;
	for (int i = 0; i < 1000; i++)
		p += sprintf(p, "t,k=k%d v=%d %lld\n", i % 10, i,
			     (long long)(T0 + i * TALLY_NS_PER_SEC));
	lp(buf);
	cr_assert_eq(tally_db_sync(db), 0);
	for (int round = 0; round < 3; round++) {
		close_db();
		open_db(NULL);
		tally_stats st;
		tally_db_stats(db, &st);
		cr_assert_eq(st.events, 1000 + (uint64_t)round);
		cr_assert_eq(st.keys, 10 + (round > 0));
		tally_agg a;
		cr_assert_eq(tally_query_agg(db, "t", "v", "k3", 0, INT64_MAX, &a), 0);
		cr_assert_eq(a.count, 100);
		cr_assert_eq(a.sum, 100 * 3 + 10 * (99 * 100 / 2));
		/* and each reopen can write more */
		lp("t,k=more v=1 1\n");
	}
}

Test(engine, sync_each_write_mode)
{
	close_db();
	tally_options o;
	tally_options_init(&o);
	o.log_fn = tu_quiet_log;
	o.sync_mode = TALLY_SYNC_EACH_WRITE;
	open_db(&o);
	lp("t,k=a v=1 1\n");
	lp("t,k=a v=2 2\n");
	tally_stats st;
	tally_db_stats(db, &st);
	cr_assert_geq(st.wal_syncs, 2);
}

/* ---------------------------------------------------------------- WAL damage */

static char *first_wal(void)
{
	static char path[4096];
	snprintf(path, sizeof path, "%s/wal/shard-000", dir);
	DIR *d = opendir(path);
	struct dirent *e;
	char *best = NULL;
	while ((e = readdir(d)))
		if (strstr(e->d_name, ".wal") && (!best || strcmp(e->d_name, best) < 0)) {
			free(best);
			best = strdup(e->d_name);
		}
	closedir(d);
	cr_assert_not_null(best);
	strcat(path, "/");
	strcat(path, best);
	free(best);
	return path;
}

static void write_records(int n)
{
	char buf[256];
	for (int i = 0; i < n; i++) {
		snprintf(buf, sizeof buf, "t,k=a v=%d %lld\n", i, (long long)(T0 + i));
		lp(buf); /* one WAL record per call */
	}
	cr_assert_eq(tally_db_sync(db), 0);
}

Test(engine, wal_flipped_byte_names_file_and_offset)
{
	write_records(20);
	close_db();
	char *path = first_wal();
	struct stat sb;
	stat(path, &sb);
	int fd = open(path, O_RDWR);
	off_t at = sb.st_size / 2;
	unsigned char ch;
	cr_assert_eq(pread(fd, &ch, 1, at), 1);
	ch ^= 0x40;
	cr_assert_eq(pwrite(fd, &ch, 1, at), 1);
	close(fd);
	tally_options o;
	tally_options_init(&o);
	o.log_fn = tu_quiet_log;
	int rc = tally_db_open(dir, &o, &db);
	cr_assert_eq(rc, TALLY_ECORRUPT, "rc %d: %s", rc, tally_errmsg());
	cr_assert(strstr(tally_errmsg(), ".wal") && strstr(tally_errmsg(), "offset"), "%s",
		  tally_errmsg());
	cr_assert_null(db);
	/* reopen for the fixture's teardown on an empty directory */
	tu_rmrf(dir);
	mkdir(dir, 0700);
	open_db(NULL);
}

Test(engine, wal_torn_tail_keeps_the_prefix)
{
	write_records(20);
	close_db();
	char *path = first_wal();
	struct stat sb;
	stat(path, &sb);
	cr_assert_eq(truncate(path, sb.st_size - 3), 0);
	/* a tail no fsync covered is torn only without SYNCED's word that it
	 * was synced (the close synced it): as a log of a build before SYNCED */
	char synced[4200];
	snprintf(synced, sizeof synced, "%s/wal/shard-000/SYNCED", dir);
	cr_assert_eq(unlink(synced), 0);
	open_db(NULL);
	tally_agg a;
	cr_assert_eq(tally_query_agg(db, "t", "v", "a", 0, INT64_MAX, &a), 0);
	cr_assert_eq(a.count, 19);
	cr_assert_eq(a.sum, 19 * 18 / 2);
	/* the log goes on after the cut */
	write_records(1);
	close_db();
	open_db(NULL);
	cr_assert_eq(tally_query_agg(db, "t", "v", "a", 0, INT64_MAX, &a), 0);
	cr_assert_eq(a.count, 20);
}

/* ---------------------------------------------------------------- threads */

#include <pthread.h>

#define THREADS    4
#define PER_THREAD 20000

static void *writer_thread(void *arg)
{
	int id = (int)(intptr_t)arg;
	tally_writer *tw;
	if (tally_writer_open(db, id % 2, &tw))
		return (void *)1;
	char buf[1 << 16];
	for (int i = 0; i < PER_THREAD;) {
		char *p = buf;
		for (int j = 0; j < 500; j++, i++)
			p += sprintf(p, "c,k=k%d v=%di %lld\n", i % 5, id, (long long)(T0 + i));
		tally_write_result r;
		if (tally_write_lp(tw, buf, (size_t)(p - buf), TALLY_PREC_NS, &r) || r.rejected)
			return (void *)2;
		if (i % 5000 == 0 && tally_db_sync(db))
			return (void *)3;
	}
	tally_writer_close(tw);
	return NULL;
}

static void *reader_thread(void *arg)
{
	(void)arg;
	uint64_t last = 0;
	for (int i = 0; i < 2000; i++) {
		tally_agg a;
		if (tally_query_agg(db, "c", "v", "k1", 0, INT64_MAX, &a))
			return (void *)2;
		/* counts only grow: every write that returned stays visible */
		if (a.count < last)
			return (void *)1;
		last = a.count;
		tally_bucket b[64];
		size_t n;
		tally_query_series(db, "c", "v", "k2", TALLY_5M, 0, INT64_MAX, b, 64, &n);
	}
	return NULL;
}

Test(engine, concurrent_writers_readers_and_syncs)
{
	close_db();
	tally_options o;
	tally_options_init(&o);
	o.log_fn = tu_quiet_log;
	o.shards = 2;
	open_db(&o);
	lp("c,k=k1 v=0i 1\n"); /* the table exists before readers start */
	pthread_t wt[THREADS], rt[2];
	for (int i = 0; i < THREADS; i++)
		pthread_create(&wt[i], NULL, writer_thread, (void *)(intptr_t)i);
	for (int i = 0; i < 2; i++)
		pthread_create(&rt[i], NULL, reader_thread, NULL);
	for (int i = 0; i < THREADS; i++) {
		void *r;
		pthread_join(wt[i], &r);
		cr_assert_null(r, "writer %d failed (%p)", i, r);
	}
	for (int i = 0; i < 2; i++) {
		void *r;
		pthread_join(rt[i], &r);
		cr_assert_null(r, "reader %d saw a count go down", i);
	}
	tally_agg a;
	cr_assert_eq(tally_query_agg(db, "c", "v", "k1", 0, INT64_MAX, &a), 0);
	cr_assert_eq(a.count, THREADS * PER_THREAD / 5 + 1);
	/* sum of thread ids over each thread's share of k1 */
	cr_assert_eq(a.sum, (double)(PER_THREAD / 5) * (0 + 1 + 2 + 3));
	tally_stats st;
	tally_db_stats(db, &st);
	cr_assert_eq(st.events, THREADS * PER_THREAD + 1);
	cr_assert_eq(st.keys, 5); /* keys written through both shards count once */
	close_db();
	open_db(&o);
	cr_assert_eq(tally_query_agg(db, "c", "v", "k1", 0, INT64_MAX, &a), 0);
	cr_assert_eq(a.count, THREADS * PER_THREAD / 5 + 1);
}

#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>

/* A write that fails partway (here the WAL cannot grow: RLIMIT_FSIZE)
 * reports exactly what it applied: res.lines lines, whose accepted ones
 * are in the store, and nothing after them. Runs in a child: the limit
 * and the failed shard stay there. */
Test(engine, failed_write_reports_what_it_applied)
{
	fflush(NULL);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		signal(SIGXFSZ, SIG_IGN);
		struct rlimit rl = {1u << 20, 1u << 20};
		if (setrlimit(RLIMIT_FSIZE, &rl))
			_exit(10);
		/* 400,000 lines, every 1000th bad; incompressible-ish values so
		 * the WAL outgrows 1 MiB within the call */
		size_t cap = (size_t)400000 * 64;
		char *buf = malloc(cap), *p = buf;
		uint64_t seed = 1;
		for (int i = 0; i < 400000; i++) {
			seed = seed * 6364136223846793005u + 1442695040888963407u;
			if (i % 1000 == 999)
				p += sprintf(p, "m,k=a v=oops %lld\n", (long long)(T0 + i));
			else
				p += sprintf(p, "m,k=a v=%llu %lld\n",
					     (unsigned long long)(seed >> 11), (long long)(T0 + i));
		}
		tally_write_result res;
		int rc = tally_write_lp(w, buf, (size_t)(p - buf), TALLY_PREC_NS, &res);
		if (rc >= 0)
			_exit(11); /* the limit did not bite: the test proves nothing */
		if (res.lines == 0 || res.lines >= 400000)
			_exit(12);
		/* the counts describe exactly the first res.lines lines */
		uint64_t bad = res.lines / 1000;
		if (res.rejected != bad || res.accepted != res.lines - bad)
			_exit(13);
		if (res.n_errors != (bad < TALLY_LINE_ERRORS_MAX ? bad : TALLY_LINE_ERRORS_MAX) ||
		    (res.n_errors && res.errors[0].line != 1000))
			_exit(14);
		/* and the store holds exactly the accepted ones */
		tally_agg a;
		if (tally_query_agg(db, "m", "v", "a", INT64_MIN, INT64_MAX, &a) ||
		    a.count != res.accepted)
			_exit(15);
		_exit(0);
	}
	int status;
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status), "child died: status %d", status);
	cr_assert_eq(WEXITSTATUS(status), 0, "child check %d failed", WEXITSTATUS(status));
}

/* A series is summed into per-window accumulators 4,096 windows at a
 * time, over the extent the sources have data in: a 52-day answer is
 * several chunks, a day slice one. Over the same data (in parts, in memtables, one key in both,
 * late events, a to that cuts into a window) the long answer and the
 * answers of its day-long slices, put end to end, are the same to the
 * last bit, truncation included. */
Test(engine, series_long_and_sliced_agree)
{
	uint64_t seed = 5;
	char line[128];
	const int64_t days = 20;
	for (int round = 0; round < 2; round++) {
		for (int i = 0; i < 6000; i++) {
			seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
			int64_t ts = T0 + (int64_t)((seed >> 1) % (uint64_t)(days * TALLY_1D));
			snprintf(line, sizeof line, "t,k=%c v=%.1f %lld\n", "ab"[(seed >> 8) & 1],
				 (double)((seed >> 33) % 2000) / 10, (long long)ts);
			cr_assert_eq(lp(line).accepted, 1, "%s", line);
		}
		if (!round)
			cr_assert_eq(tally_db_flush(db), 0, "%s", tally_errmsg());
	}
	/* 52 days: over 4,096 windows of either step */
	static const int64_t steps[] = {TALLY_5M, 3 * TALLY_5M};
	static tally_bucket whole[8192], part[8192];
	for (int si = 0; si < 2; si++) {
		int64_t day0 = T0 - T0 % TALLY_1D; /* slices on window boundaries */
		int64_t step = steps[si], from = day0 - 30 * TALLY_1D,
			to = day0 + 22 * TALLY_1D + 7;
		size_t nw, np = 0, n;
		cr_assert_eq(
			tally_query_series(db, "t", "v", "a", step, from, to, whole, 8192, &nw), 0,
			"%s", tally_errmsg());
		for (int64_t a = from; a < to; a += TALLY_1D) {
			int64_t b = a + TALLY_1D < to ? a + TALLY_1D : to;
			cr_assert_eq(tally_query_series(db, "t", "v", "a", step, a, b, part + np,
							8192 - np, &n),
				     0, "%s", tally_errmsg());
			/* a to just inside the last window counts it whole */
			static tally_bucket cut[400];
			size_t nc;
			cr_assert_eq(tally_query_series(db, "t", "v", "a", step, a, b - step + 1,
							cut, 400, &nc),
				     0, "%s", tally_errmsg());
			cr_assert_eq(nc, n);
			cr_assert_eq(memcmp(cut, part + np, n * sizeof *cut), 0);
			np += n;
		}
		cr_assert_eq(nw, np, "step %lld: %zu windows whole, %zu sliced", (long long)step,
			     nw, np);
		cr_assert_gt(nw, 100);
		for (size_t i = 0; i < nw; i++) {
			cr_assert_eq(whole[i].start, part[i].start);
			cr_assert_eq(whole[i].agg.count, part[i].agg.count);
			cr_assert_eq(memcmp(&whole[i].agg, &part[i].agg, sizeof whole[i].agg), 0,
				     "step %lld window %zu differs", (long long)step, i);
		}
		/* truncation: the first windows, and TALLY_ETRUNC, on either path */
		cr_assert_eq(tally_query_series(db, "t", "v", "a", step, from, to, part, 7, &n),
			     TALLY_ETRUNC);
		cr_assert_eq(n, nw);
		cr_assert_eq(memcmp(part, whole, 7 * sizeof *part), 0);
		size_t nd;
		cr_assert_eq(tally_query_series(db, "t", "v", "a", step, day0 + TALLY_1D,
						day0 + 2 * TALLY_1D, part, 8192, &nd),
			     0);
		cr_assert_eq(tally_query_series(db, "t", "v", "a", step, day0 + TALLY_1D,
						day0 + 2 * TALLY_1D, part + 8, 7, &n),
			     TALLY_ETRUNC);
		cr_assert_eq(n, nd);
		cr_assert_eq(memcmp(part, part + 8, 7 * sizeof *part), 0);
	}
}

/* The decoded-rollup cache is a ring of 2 MiB blocks: with a 5 MiB
 * budget (two blocks: the budget rounded down, so the byte count alone
 * never evicts what a reused block held) and 400 keys' day rollups (13.8
 * KiB each at 5 minutes, 1.2 KiB at an hour) it comes round and reuses its
 * blocks many times. Every answer, in three passes in different orders,
 * must still be the data's: an entry left behind in a reused block would
 * answer with another key's buckets. */
Test(engine, rollup_cache_ring_reuses_blocks_and_answers_stay_exact)
{
	close_db();
	tally_options o;
	tally_options_init(&o);
	o.log_fn = tu_quiet_log;
	o.cache_bytes = 5u << 20;
	open_db(&o);
	enum { KEYS = 400, WIN = 288 };
	const int64_t day0 = T0 - T0 % TALLY_1D;
	static char text[WIN * 64];
	for (int k = 0; k < KEYS; k++) {
		size_t n = 0;
		for (int wi = 0; wi < WIN; wi++)
			n += (size_t)snprintf(text + n, sizeof text - n,
					      "t,k=key%03d v=%d.%d %lld\n", k, (k * 7 + wi) % 100,
					      (k + wi) % 10, (long long)(day0 + wi * TALLY_5M + k));
		cr_assert_eq(lp(text).accepted, WIN);
	}
	cr_assert_eq(tally_db_flush(db), 0, "%s", tally_errmsg());
	static tally_bucket b[WIN];
	uint64_t seed = 11;
	for (int pass = 0; pass < 3; pass++) {
		for (int i = 0; i < KEYS; i++) {
			seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
			int k = (int)((seed >> 33) % KEYS), hourly = (seed >> 20) & 1;
			char key[16];
			snprintf(key, sizeof key, "key%03d", k);
			size_t n;
			int64_t step = hourly ? TALLY_1H : TALLY_5M;
			cr_assert_eq(tally_query_series(db, "t", "v", key, step, day0,
							day0 + TALLY_1D, b, WIN, &n),
				     0, "%s", tally_errmsg());
			cr_assert_eq(n, hourly ? 24u : (size_t)WIN, "%s: %zu windows", key, n);
			for (size_t j = 0; j < n; j++) {
				/* the readings of this window: 12 of them an hour */
				int per = hourly ? 12 : 1;
				double sum = 0;
				for (int r = 0; r < per; r++) {
					int wi = (int)j * per + r;
					sum += (k * 7 + wi) % 100 + (k + wi) % 10 / 10.0;
				}
				cr_assert_eq(b[j].agg.count, (uint64_t)per, "%s window %zu", key,
					     j);
				cr_assert_float_eq(b[j].agg.sum, sum, 1e-9,
						   "%s window %zu: %.17g, want %.17g", key, j,
						   b[j].agg.sum, sum);
			}
		}
	}
	tally_stats st;
	cr_assert_eq(tally_db_stats(db, &st), 0);
	cr_assert_leq(st.cache_bytes, o.cache_bytes);
	cr_assert_gt(st.cache_hits, 0);
	/* more misses than distinct blocks: the ring evicted and read again */
	cr_assert_gt(st.cache_misses, KEYS * 2, "%llu misses", (unsigned long long)st.cache_misses);
}

/* prefault: a background thread fills each shard's block pool with a
 * memtable's worth of faulted-in memory; stats count down to 0, writes
 * and queries meanwhile are unaffected, and a close in the middle stops
 * it (no hang, no leak under ASan). */
Test(engine, prefault_fills_the_pools_and_stops_on_close)
{
	close_db();
	tally_options o;
	tally_options_init(&o);
	o.log_fn = tu_quiet_log;
	o.shards = 2;
	o.memtable_bytes = 16u << 20; /* 8 blocks a shard */
	o.prefault = 1;
	open_db(&o);
	tally_stats st;
	cr_assert_eq(tally_db_stats(db, &st), 0);
	cr_assert_leq(st.prefault_pending, UINT64_C(32) << 20);
	char buf[128];
	snprintf(buf, sizeof buf, "t,k=a v=1.5 %lld\n", (long long)T0);
	lp(buf);
	for (int i = 0; i < 2000 && st.prefault_pending; i++) {
		struct timespec ts = {0, 5000000};
		nanosleep(&ts, NULL);
		cr_assert_eq(tally_db_stats(db, &st), 0);
	}
	cr_assert_eq(st.prefault_pending, 0, "%llu bytes still pending",
		     (unsigned long long)st.prefault_pending);
	tally_agg a;
	cr_assert_eq(tally_query_agg(db, "t", "v", "a", T0, T0 + 1, &a), 0);
	cr_assert_eq(a.count, 1);
	close_db();
	/* closed while it runs: a large target, stopped at once */
	o.memtable_bytes = UINT64_C(1) << 30;
	open_db(&o);
	cr_assert_eq(tally_db_stats(db, &st), 0);
	cr_assert_gt(st.prefault_pending, 0);
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	close_db();
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	cr_assert_lt(secs, 2.0, "close took %.1f s: the prefault did not stop", secs);
	open_db(NULL); /* for the teardown */
}
