/*
 * bench_backup.c — backup and restore rates, to a local directory and to
 * an S3-compatible server (moto or s3rver, started via tests/s3/server).
 *
 * A store of --events camera readings (one decimal, as cameras report
 * speeds) over --days days is written through the binary API, flushed and
 * merged, with a tail left in the WAL; then, for each destination: a full
 * backup, an incremental one with nothing new, a restore into a fresh
 * directory and a verify of the backup. Rates are the backup's bytes (the
 * files the store needs: manifest, parts, WAL) per second of wall time.
 * Then four more rounds of late events (flushed and merged, so parts are
 * replaced) each with a backup, and a prune keeping the newest backup:
 * its time, and the catalogs and objects it deleted.
 *
 *   bench_backup [--events N] [--days D] [--dir BASE] [--s3 moto|s3rver|none]
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "backup.h"
#include "camdays.h"
#include "s3util.h"
#include "tally.h"
#include "benchutil.h"

#define NS_DAY INT64_C(86400000000000)

static void rmrf(const char *p)
{
	char cmd[4300];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", p);
	if (system(cmd)) {
	}
}

/* Four rounds of 20,000 late events into the first day (a flush and a
 * merge: the day's parts are rewritten), each followed by a backup; then
 * backup-prune keeping 1. */
static void prune_run(tally_db *db, const char *label, const char *dest, const tally_s3 *s3)
{
	enum { ROUNDS = 4, LATE = 20000 };
	tally_writer *w;
	char *lp = malloc((size_t)LATE * 80);
	if (!lp || tally_writer_open(db, -1, &w))
		die_tally("writer", 0);
	int64_t day0 = INT64_C(1700000000000000000) / NS_DAY * NS_DAY;
	for (int k = 0; k < ROUNDS; k++) {
		size_t n = 0;
		for (int i = 0; i < LATE; i++)
			n += (size_t)sprintf(lp + n,
					     "traffic,camera=KV%05d speed=%d.%d %" PRId64 "\n",
					     i % 1000, 40 + i % 90, i % 10,
					     day0 + (int64_t)(k * LATE + i) * 1000000000 + 7);
		tally_write_result wr;
		if (tally_write_lp(w, lp, n, TALLY_PREC_NS, &wr) || tally_db_flush(db) ||
		    tally_db_merge(db) || tally_db_backup(db, dest, s3, NULL))
			die_tally("late round", 0);
	}
	tally_writer_close(w);
	free(lp);
	backup_prune_result r;
	double t0 = now_s();
	if (backup_prune(dest, s3, 1, &r))
		die_tally("prune", 0);
	double t1 = now_s();
	printf("%-6s prune   %3" PRIu64 " catalogs %4" PRIu64 " objects %8.1f MB deleted, %4" PRIu64
	       " kept  %7.3f s\n",
	       label, r.catalogs_deleted, r.objects_deleted, (double)r.bytes_deleted / 1e6,
	       r.objects_kept, t1 - t0);
}

/* Backs up, backs up again, restores and verifies against dest. */
static void run(tally_db *db, const char *label, const char *dest, const tally_s3 *s3,
		const char *restore_dir)
{
	tally_backup_result a, b, r;
	double t0 = now_s();
	if (tally_db_backup(db, dest, s3, &a))
		die_tally("backup", 0);
	double t1 = now_s();
	if (tally_db_backup(db, dest, s3, &b))
		die_tally("second backup", 0);
	double t2 = now_s();
	if (backup_restore(dest, s3, 0, restore_dir, &r))
		die_tally("restore", 0);
	double t3 = now_s();
	uint64_t problems;
	if (backup_verify(dest, s3, stderr, &problems))
		die_tally("verify", 0);
	double t4 = now_s();
	double mb = (double)a.bytes / 1e6;
	printf("%-6s backup  %8.1f MB %4" PRIu64 " files  %7.2f s  %8.1f MB/s\n", label, mb,
	       a.files, t1 - t0, mb / (t1 - t0));
	printf("%-6s again   %8.1f MB sent (%" PRIu64 " files)  %5.3f s\n", label,
	       (double)b.bytes_uploaded / 1e6, b.files_uploaded, t2 - t1);
	printf("%-6s restore %8.1f MB  %7.2f s  %8.1f MB/s\n", label, (double)r.bytes / 1e6,
	       t3 - t2, (double)r.bytes / 1e6 / (t3 - t2));
	printf("%-6s verify  %7.2f s  %8.1f MB/s\n", label, t4 - t3, mb / (t4 - t3));
	rmrf(restore_dir);
	prune_run(db, label, dest, s3);
}

int main(int argc, char **argv)
{
	uint64_t events = 3000000;
	int days = 6;
	const char *base = "/tmp", *s3kind = "moto";
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--events") && i + 1 < argc)
			events = strtoull(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--days") && i + 1 < argc)
			days = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--dir") && i + 1 < argc)
			base = argv[++i];
		else if (!strcmp(argv[i], "--s3") && i + 1 < argc)
			s3kind = argv[++i];
		else {
			fprintf(stderr, "usage: bench_backup [--events N] [--days D] [--dir BASE] "
					"[--s3 moto|s3rver|none]\n");
			return 2;
		}
	}
	if (days < 1 || events < (uint64_t)days) {
		fprintf(stderr, "bench_backup: need at least one event per day\n");
		return 2;
	}
	char root[4096], dir[4200], dest[4200], rdir[4200];
	snprintf(root, sizeof root, "%s/bench-backup-%d", base, getpid());
	snprintf(dir, sizeof dir, "%s/db", root);
	snprintf(dest, sizeof dest, "%s/backup", root);
	snprintf(rdir, sizeof rdir, "%s/restored", root);
	if (mkdir(root, 0755)) {
		perror(root);
		return 1;
	}
	tally_options o;
	tally_options_init(&o);
	o.no_background = 1;
	tally_db *db;
	if (tally_db_open(dir, &o, &db))
		die_tally("open", 0);
	uint64_t n =
		camdays_fill(db, events, days, INT64_C(1700000000000000000) / NS_DAY * NS_DAY, 0);
	if (!n)
		die_tally("write", 0);
	if (tally_db_merge(db) || tally_db_sync(db))
		die_tally("merge", 0);
	tally_stats st;
	tally_db_stats(db, &st);
	printf("store: %" PRIu64 " events, %" PRIu64 " parts, %.1f MB in parts, %.1f MB WAL\n", n,
	       st.parts, (double)st.part_bytes / 1e6, (double)st.wal_bytes / 1e6);
	run(db, "local", dest, NULL, rdir);
	if (strcmp(s3kind, "none")) {
		s3srv srv;
		int rc = s3srv_start(&srv, s3kind);
		if (rc) {
			fprintf(stderr, "bench_backup: %s did not start (%d); no S3 figures\n",
				s3kind, rc);
		} else {
			tally_s3 s3 = {sizeof s3,      srv.endpoint,   srv.region,
				       srv.access_key, srv.secret_key, NULL};
			char s3dest[256];
			snprintf(s3dest, sizeof s3dest, "s3://%s/bench%d-", srv.bucket, getpid());
			run(db, s3kind, s3dest, &s3, rdir);
			s3srv_destroy(&srv);
		}
	}
	tally_db_close(db);
	rmrf(root);
	return 0;
}
