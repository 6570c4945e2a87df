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

#include <stdint.h>
#include <stdlib.h>

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

#endif
