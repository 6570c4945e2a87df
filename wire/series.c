/*
 * series.c — a rollup series of any length in slices of at most SERIES_CAP
 * buckets.
 *
 * The one idea: a slice ends on a window boundary, so no window is counted
 * by two slices, and its span adapts to the data: a full slice (the query
 * says TALLY_ETRUNC) goes on after its last window and halves the span, a
 * sparse one doubles it, so an empty century costs a few queries and a
 * dense day a few slices.
 */
#include "series.h"

int64_t series_window_start(int64_t ts, int64_t w, int64_t off)
{
	/* Outside the stored range (1686-11-09 to 2253-02-21, within 2^58 ns
	 * of either end of int64) nothing is there; clamp a little beyond it
	 * (steps are at most 2^56 ns) so the arithmetic cannot overflow. The
	 * old clamp, 2^59 in, cut off 1686-1696. */
	const int64_t lim = INT64_MAX - (INT64_C(1) << 57);
	ts = ts < -lim ? -lim : ts > lim ? lim : ts;
	int64_t d = ts - off, q = d / w;
	if (d % w < 0)
		q--;
	return q * w + off;
}

void series_init(wseries *ps, const char *table, const char *field, const char *key, int64_t step,
		 int64_t from, int64_t to, int64_t off)
{
	ps->table = table;
	ps->field = field;
	ps->key = key;
	ps->step = step;
	ps->cur = series_window_start(from, step, off);
	ps->to = to;
	/* slices end on window boundaries: one ending inside a window would
	 * count it whole, and the next slice again */
	ps->span = step > SERIES_SPAN_MAX / SERIES_CAP ? SERIES_SPAN_MAX / step * step
						       : step * SERIES_CAP;
	ps->n = ps->i = 0;
}

/* The end of the next slice: cur + span, at most to. */
static int64_t series_slice_to(const wseries *ps)
{
	int64_t t;
	if (__builtin_add_overflow(ps->cur, ps->span, &t) || t > ps->to)
		return ps->to;
	return t;
}

int series_next_slice(tally_db *db, wseries *ps)
{
	int64_t slice_to = series_slice_to(ps);
	int rc = tally_query_series(db, ps->table, ps->field, ps->key, ps->step, ps->cur, slice_to,
				    ps->b, SERIES_CAP, &ps->n);
	ps->i = 0;
	if (rc == TALLY_ETRUNC) {
		ps->n = SERIES_CAP;
		/* a truncated slice goes on after its last window */
		if (__builtin_add_overflow(ps->b[SERIES_CAP - 1].start, ps->step, &ps->cur))
			ps->cur = ps->to;
		if (ps->span / 2 / SERIES_CAP >= ps->step)
			ps->span /= 2;
		return 0;
	}
	if (rc)
		return rc;
	ps->cur = slice_to;
	if (ps->n < SERIES_CAP / 4 && ps->span <= SERIES_SPAN_MAX / 2)
		ps->span *= 2;
	return 0;
}

int series_next(tally_db *db, wseries *ps, const tally_bucket **b)
{
	while (ps->i == ps->n) {
		if (ps->cur >= ps->to)
			return 0;
		int rc = series_next_slice(db, ps);
		if (rc)
			return rc;
	}
	*b = &ps->b[ps->i++];
	return 1;
}
