/*
 * distmodel.h — the brute-force side of the distribution tests: every
 * event written, kept as written (camera, time, the double its text
 * parses to), and the sorted values of one camera over [from, to), which
 * an exact distribution must answer from to the bit.
 *
 * One model per test program (the tests run one at a time in it), so it
 * is plain statics, emptied by forget_events between tests.
 */
#ifndef TALLY_TESTS_DISTMODEL_H
#define TALLY_TESTS_DISTMODEL_H

#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "tally.h"
#include "testutil.h"

typedef struct ev {
	int cam;
	int64_t ts;
	double v;
} ev;

static ev *evs;
static size_t n_evs, cap_evs;

static void remember_event(int cam, int64_t ts, double v)
{
	if (n_evs == cap_evs) {
		cap_evs = cap_evs ? cap_evs * 2 : 4096;
		evs = realloc(evs, cap_evs * sizeof *evs);
	}
	evs[n_evs++] = (ev){cam, ts, v};
}

static void forget_events(void)
{
	free(evs);
	evs = NULL;
	n_evs = cap_evs = 0;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* Camera cam's values in [from, to), ascending, in a buffer the caller
 * frees (room for one more); their number in *n. */
static double *values_of(int cam, int64_t from, int64_t to, size_t *n)
{
	double *v = malloc((n_evs + 1) * sizeof *v);
	size_t k = 0;
	for (size_t i = 0; i < n_evs; i++)
		if (evs[i].cam == cam && evs[i].ts >= from && evs[i].ts < to)
			v[k++] = evs[i].v;
	qsort(v, k, sizeof *v, cmp_double);
	*n = k;
	return v;
}

/* Speeds in tenths: a few hundred distinct values over 30.0 to 118.5,
 * some repeated. */
static unsigned plain_speed(tu_rng *r, int cam)
{
	(void)cam;
	return 300 + (unsigned)tu_below(r, 60) * (1 + (unsigned)tu_below(r, 15));
}

/* n events in [t0, t0 + span) through shard s's writer, of camera
 * only_cam (-1: any of cams), speeds in tenths from speed, each line with
 * an integer field n beside the speed when with_n; remembered as the
 * double their text parses to. */
static void write_events(tally_db *db, tu_rng *r, unsigned s, int n, int cams, int only_cam,
			 int64_t t0, int64_t span, unsigned (*speed)(tu_rng *r, int cam),
			 int with_n)
{
	tally_writer *w;
	cr_assert_eq(tally_writer_open(db, (int)s, &w), 0);
	char *buf = malloc((size_t)n * 80), *p = buf;
	for (int i = 0; i < n; i++) {
		int cam = only_cam >= 0 ? only_cam : (int)tu_below(r, (uint64_t)cams);
		int64_t ts = t0 + (int64_t)tu_below(r, (uint64_t)span);
		unsigned v = speed(r, cam);
		p += sprintf(p, "traffic,camera=C%d speed=%u.%u", cam, v / 10, v % 10);
		if (with_n)
			p += sprintf(p, ",n=%ui", v % 7);
		p += sprintf(p, " %lld\n", (long long)ts);
		char num[16];
		sprintf(num, "%u.%u", v / 10, v % 10);
		remember_event(cam, ts, strtod(num, NULL));
	}
	tally_write_result res;
	cr_assert_eq(tally_write_lp(w, buf, (size_t)(p - buf), TALLY_PREC_NS, &res), 0, "%s",
		     tally_errmsg());
	cr_assert_eq(res.rejected, 0);
	cr_assert_eq(res.accepted, (uint64_t)n);
	tally_writer_close(w);
	free(buf);
}

#endif
