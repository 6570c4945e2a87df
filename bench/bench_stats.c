/*
 * bench_stats.c — what tally_db_stats costs at high cardinality.
 *
 * A monitor polls stats; it must not cost more with more keys. This writes
 * one event for each of K keys over S shards, flushes half of them into
 * parts (so keys sit both in parts and in memtables), then times R calls
 * of tally_db_stats and prints the median and the worst.
 *
 *   bench_stats [--keys K] [--shards S] [--runs R] [--dir DIR]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tally.h"
#include "benchutil.h"

/* One event per key for keys [from, to), spread over the writers. */
static void write_keys(tally_writer **ws, unsigned n, long from, long to)
{
	char *buf = malloc(1 << 20);
	for (unsigned s = 0; s < n; s++) {
		size_t len = 0;
		for (long k = from + s; k < to; k += n) {
			len += (size_t)sprintf(buf + len, "cam,id=KV%08ld speed=%ld %lld\n", k,
					       k % 130, 1700000000000000000LL + k * 1000000LL);
			if (len > (1 << 20) - 128 || k + n >= to) {
				int rc = tally_write_lp(ws[s], buf, len, TALLY_PREC_NS, NULL);
				if (rc)
					die_tally("write", rc);
				len = 0;
			}
		}
	}
	free(buf);
}

int main(int argc, char **argv)
{
	long keys = 500000;
	unsigned shards = 4, runs = 9;
	const char *dir = NULL;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--keys") && i + 1 < argc)
			keys = atol(argv[++i]);
		else if (!strcmp(argv[i], "--shards") && i + 1 < argc)
			shards = (unsigned)atoi(argv[++i]);
		else if (!strcmp(argv[i], "--runs") && i + 1 < argc)
			runs = (unsigned)atoi(argv[++i]);
		else if (!strcmp(argv[i], "--dir") && i + 1 < argc)
			dir = argv[++i];
		else {
			fprintf(stderr, "usage: bench_stats [--keys K] [--shards S] [--runs R] "
					"[--dir DIR]\n");
			return 2;
		}
	}
	char tmp[] = "/tmp/bench-stats-XXXXXX";
	if (!dir && !(dir = mkdtemp(tmp))) {
		perror("mkdtemp");
		return 1;
	}
	tally_options o;
	tally_options_init(&o);
	o.shards = shards;
	o.log_fn = quiet_log;
	tally_db *db;
	int rc = tally_db_open(dir, &o, &db);
	if (rc)
		die_tally("open", rc);
	tally_writer **ws = calloc(shards, sizeof *ws);
	for (unsigned s = 0; s < shards; s++)
		if ((rc = tally_writer_open(db, (int)s, &ws[s])))
			die_tally("writer", rc);
	write_keys(ws, shards, 0, keys / 2);
	if ((rc = tally_db_flush(db)))
		die_tally("flush", rc);
	write_keys(ws, shards, keys / 2, keys);
	double *t = calloc(runs, sizeof *t);
	tally_stats st;
	for (unsigned r = 0; r < runs; r++) {
		double t0 = now_s();
		if ((rc = tally_db_stats(db, &st)))
			die_tally("stats", rc);
		t[r] = now_s() - t0;
	}
	qsort(t, runs, sizeof *t, cmp_d);
	printf("keys %llu (written %ld), shards %u, parts %llu: tally_db_stats median %.1f us, "
	       "worst %.1f us over %u runs\n",
	       (unsigned long long)st.keys, keys, shards, (unsigned long long)st.parts,
	       t[runs / 2] * 1e6, t[runs - 1] * 1e6, runs);
	for (unsigned s = 0; s < shards; s++)
		tally_writer_close(ws[s]);
	tally_db_close(db);
	free(ws);
	free(t);
	if (dir == tmp) {
		char cmd[64];
		snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
		if (system(cmd))
			return 1;
	}
	return 0;
}
