/*
 * bench_retention.c — what deletes, retention and a table drop cost: the
 * time of deleting one camera-day (tally_db_delete) in a sealed day
 * segment and the bytes it reads and writes again (a delete rewrites the
 * parts holding the events: its write amplification), of them the bytes
 * copied as they were and those encoded again, a camera-hour (the key
 * stays, its stripes in the hour and its rollups are encoded again), a
 * delete with nothing left to delete and one of every camera's day (its
 * part leaves unread); then the time of a pass that cuts half the days of a store to
 * their rollups, of a pass with nothing to do, of one that drops those
 * days whole, and of a drop of the table; bytes before and after each.
 *
 * The store: --events camera readings (500 cameras, one decimal) over the
 * --days days before today (UTC), written through the binary API one
 * flush a day and merged, so each day is one sealed segment.
 *
 *   bench_retention [--events N] [--days D] [--dir BASE]
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "camdays.h"
#include "tally.h"
#include "benchutil.h"

#define NS_DAY INT64_C(86400000000000)
#define CAMS   CAMDAYS_CAMS

static double clock_s(clockid_t c)
{
	struct timespec t;
	clock_gettime(c, &t);
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* Runs fn and prints its time and what the store holds after. */
static void timed(tally_db *db, const char *label, int (*fn)(tally_db *, const char *),
		  const char *arg)
{
	tally_stats a, b;
	tally_db_stats(db, &a);
	double t0 = clock_s(CLOCK_MONOTONIC);
	if (fn(db, arg))
		die_tally(label, 0);
	double t = clock_s(CLOCK_MONOTONIC) - t0;
	tally_db_stats(db, &b);
	printf("%-34s %9.1f ms  parts %4" PRIu64 " -> %4" PRIu64 "  %8.1f -> %8.1f MB"
	       "  cut %" PRIu64 " dropped %" PRIu64 "\n",
	       label, t * 1e3, a.parts, b.parts, (double)a.part_bytes / 1e6,
	       (double)b.part_bytes / 1e6, b.retention_parts_raw_gone - a.retention_parts_raw_gone,
	       b.retention_parts_dropped - a.retention_parts_dropped);
}

/* Deletes camera cam's (-1: every camera's) events of [from, to) and
 * prints what it cost; returns the time in ms. */
static double deleted(tally_db *db, const char *label, int cam, int64_t from, int64_t to,
		      double bpe)
{
	char key[32];
	snprintf(key, sizeof key, "KV%05d", cam);
	tally_delete_result r = {.size = sizeof r};
	double t0 = clock_s(CLOCK_MONOTONIC);
	if (tally_db_delete(db, "traffic", cam < 0 ? NULL : key, from, to, &r))
		die_tally(label, 0);
	double ms = (clock_s(CLOCK_MONOTONIC) - t0) * 1e3;
	printf("%-40s %8.1f ms  rows %7" PRIu64 "  parts rewritten %" PRIu64 " removed %" PRIu64
	       "  read %6.2f MB  written %6.2f MB  copied %6.2f MB",
	       label, ms, r.rows, r.parts_rewritten, r.parts_removed, (double)r.bytes_read / 1e6,
	       (double)r.bytes_written / 1e6, (double)r.bytes_copied / 1e6);
	if (r.rows && r.bytes_written) { /* per byte of the events deleted */
		double del = (double)r.rows * bpe;
		printf("  (written %.0fx, encoded %.2fx)", (double)r.bytes_written / del,
		       (double)(r.bytes_written - r.bytes_copied) / del);
	}
	printf("\n");
	return ms;
}

/* One camera-day deleted in sealed segments, DEL_RUNS times (other
 * cameras and days), a camera-hour, an idle delete, then every camera's
 * newest day. */
#define DEL_RUNS 7
static void delete_steps(tally_db *db, int64_t first, int days)
{
	tally_stats st;
	tally_db_stats(db, &st);
	double bpe = st.part_rows ? (double)st.part_bytes / (double)st.part_rows : 1, ms[DEL_RUNS];
	for (int i = 0; i < DEL_RUNS; i++) {
		char label[64];
		snprintf(label, sizeof label, "delete: one camera-day (%d of %d)", i + 1, DEL_RUNS);
		int64_t day = first + (1 + i % (days - 2)) * NS_DAY;
		ms[i] = deleted(db, label, 17 + 61 * i, day, day + NS_DAY, bpe);
	}
	qsort(ms, DEL_RUNS, sizeof *ms, cmp_d);
	int64_t noon = first + NS_DAY + NS_DAY / 2;
	deleted(db, "delete: one camera-hour", 18, noon, noon + NS_DAY / 24, bpe);
	deleted(db, "delete: the same again (nothing left)", 17, first + NS_DAY, first + 2 * NS_DAY,
		bpe);
	deleted(db, "delete: every camera's newest day", -1, first + (days - 1) * NS_DAY,
		first + days * NS_DAY, bpe);
	tally_db_stats(db, &st);
	printf("delete of a camera-day: p50 %.1f ms, max %.1f ms over %d; stats: deletes %" PRIu64
	       " delete_rows %" PRIu64 " delete_bytes_written %" PRIu64 "\n",
	       ms[DEL_RUNS / 2], ms[DEL_RUNS - 1], DEL_RUNS, st.deletes, st.delete_rows,
	       st.delete_bytes_written);
}

static int set_and_retain(tally_db *db, const char *rules)
{
	return tally_db_set_retention(db, rules) || tally_db_retain(db);
}

int main(int argc, char **argv)
{
	uint64_t events = 3000000;
	int days = 30;
	const char *base = "/tmp";
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--events") && i + 1 < argc)
			events = strtoull(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--days") && i + 1 < argc)
			days = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--dir") && i + 1 < argc)
			base = argv[++i];
		else {
			fprintf(stderr,
				"usage: bench_retention [--events N] [--days D] [--dir BASE]\n");
			return 2;
		}
	}
	if (days < 3 || days > 3000 || events < (uint64_t)days * CAMS) {
		fprintf(stderr,
			"bench_retention: need 3 to 3000 days and a reading per camera-day\n");
		return 2;
	}
	char dir[4200];
	snprintf(dir, sizeof dir, "%s/bench-retention-%d", base, getpid());
	tally_options o;
	tally_options_init(&o);
	o.no_background = 1;
	tally_db *db;
	if (tally_db_open(dir, &o, &db))
		die_tally("open", 0);
	int64_t today = (int64_t)clock_s(CLOCK_REALTIME) / 86400 * NS_DAY;
	double t0 = clock_s(CLOCK_MONOTONIC);
	uint64_t n = camdays_fill(db, events, days, today - days * NS_DAY, 1);
	if (!n)
		die_tally("write", 0);
	if (tally_db_merge(db) || tally_db_sync(db))
		die_tally("merge", 0);
	printf("store: %" PRIu64 " events over %d days, written, flushed and merged in %.1f s\n", n,
	       days, clock_s(CLOCK_MONOTONIC) - t0);
	delete_steps(db, today - days * NS_DAY, days);
	char half[256], gone[256];
	snprintf(half, sizeof half, "traffic:raw=%dd", days / 2);
	snprintf(gone, sizeof gone, "traffic:raw=%dd,5m=%dd,1h=%dd,1d=%dd", days / 2, days / 2,
		 days / 2, days / 2);
	timed(db, "pass: raw of half the days expires", set_and_retain, half);
	timed(db, "pass: nothing to do", set_and_retain, half);
	timed(db, "pass: those days expire whole", set_and_retain, gone);
	timed(db, "drop the table", tally_db_drop_table, "traffic");
	tally_db_close(db);
	char cmd[4400];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	return system(cmd) ? 1 : 0;
}
