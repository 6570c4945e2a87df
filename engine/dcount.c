/*
 * dcount.c — counting values in an array indexed by value (dcount.h).
 *
 * The one idea: the array is all zero outside the values counted since
 * the last take, and take zeroes what it reads, so reusing it costs
 * nothing and only growing it copies (the counted run, not the array).
 */
#include "dcount.h"

#include <errno.h>
#include <string.h>

#include "err.h"
#include "mem.h"

int dcount_cover(dcount *d, int64_t x, int64_t y, size_t max)
{
	int empty = d->umin > d->umax;
	if (empty && (uint64_t)(y - x) <= d->cap) {
		/* all zero: any run of cap values will do, the room around */
		d->lo = x - (int64_t)((d->cap - (uint64_t)(y - x)) / 2);
		d->umin = x;
		d->umax = y - 1;
		return 1;
	}
	if (!empty && x >= d->lo && y <= d->lo + (int64_t)d->cap) {
		d->umin = x < d->umin ? x : d->umin;
		d->umax = y - 1 > d->umax ? y - 1 : d->umax;
		return 1;
	}
	/* the new run: what is counted and [x, y), a quarter more split
	 * around it (the next stripe's speeds fall within that of the
	 * first's; a camera-day's one window needs none, and every slot
	 * costs a clear), or the array doubled when it grows */
	int64_t lo = empty ? x : d->umin < x ? d->umin : x;
	int64_t hi = empty ? y : d->umax + 1 > y ? d->umax + 1 : y;
	uint64_t span = (uint64_t)(hi - lo), want = span + span / 4;
	if (span > max)
		return 0;
	if (!empty && want < d->cap * 2)
		want = d->cap * 2;
	if (want > max)
		want = max;
	lo -= (int64_t)((want - span) / 2);
	uint64_t *cnt = mem_calloc((size_t)want, sizeof *cnt);
	if (!cnt)
		return err_set(-ENOMEM, "out of memory");
	if (!empty)
		memcpy(cnt + (d->umin - lo), d->cnt + (d->umin - d->lo),
		       (size_t)(d->umax - d->umin + 1) * sizeof *cnt);
	mem_free(d->cnt);
	d->cnt = cnt;
	d->cap = (size_t)want;
	d->lo = lo;
	d->umin = empty ? x : d->umin < x ? d->umin : x;
	d->umax = empty ? y - 1 : d->umax > y - 1 ? d->umax : y - 1;
	return 1;
}

size_t dcount_take(dcount *d, size_t most, int64_t *v, uint64_t *c)
{
	if (d->umin > d->umax)
		return 0;
	size_t w = (size_t)(d->umax - d->umin) + 1, k = 0;
	uint64_t *cnt = d->cnt + (d->umin - d->lo);
	if (most < w / 4) {
		/* sparse (a flush's hour of a few dozen speeds over hundreds of
		 * slots): the zero runs predict well, and only counts are written */
		for (size_t i = 0; i < w; i++)
			if (cnt[i]) {
				v[k] = d->umin + (int64_t)i;
				c[k++] = cnt[i];
				cnt[i] = 0;
			}
		d->umin = 1;
		d->umax = 0;
		return k;
	}
	/* branchless: a zero slot's pair is written and then overwritten;
	 * the greatest value is counted, so no write passes the room */
	for (size_t i = 0; i < w; i++) {
		v[k] = d->umin + (int64_t)i;
		c[k] = cnt[i];
		k += cnt[i] != 0;
		cnt[i] = 0;
	}
	d->umin = 1;
	d->umax = 0;
	return k;
}

void dcount_free(dcount *d)
{
	mem_free(d->cnt);
	*d = DCOUNT_INIT;
}
