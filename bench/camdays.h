/*
 * camdays.h — the store the backup and retention benchmarks share: about
 * `events` readings (one decimal, as cameras report speeds) of 500
 * cameras over `days` days from `t0` (a UTC midnight), written through the
 * binary API, one batch per camera-day, each day but (unless flush_last)
 * the last flushed into parts. Returns the readings written, or 0 with
 * tally_errmsg() saying why.
 */
#ifndef TALLY_BENCH_CAMDAYS_H
#define TALLY_BENCH_CAMDAYS_H

#include <stdio.h>
#include <stdlib.h>

#include "tally.h"

#define CAMDAYS_CAMS 500u
#define CAMDAYS_DAY  INT64_C(86400000000000)

static inline uint64_t camdays_fill(tally_db *db, uint64_t events, int days, int64_t t0,
				    int flush_last)
{
	uint64_t per = events / ((uint64_t)CAMDAYS_CAMS * (uint64_t)days);
	per = per ? per : 1;
	int64_t *ts = malloc(per * sizeof *ts);
	double *sp = malloc(per * sizeof *sp);
	tally_writer *w = NULL;
	uint64_t x = 88172645463325252u, n = 0;
	if (!ts || !sp || tally_writer_open(db, 0, &w))
		goto out;
	for (int d = 0; d < days; d++) {
		for (unsigned c = 0; c < CAMDAYS_CAMS; c++) {
			for (uint64_t i = 0; i < per; i++) {
				x ^= x << 13, x ^= x >> 7, x ^= x << 17;
				ts[i] = t0 + d * CAMDAYS_DAY +
					(int64_t)(i * (uint64_t)(CAMDAYS_DAY / (int64_t)per));
				sp[i] = (double)(400 + x % 900) / 10.0;
			}
			char key[32];
			snprintf(key, sizeof key, "KV%05u", c);
			tally_column col = {"speed", TALLY_T_F64, sp, NULL};
			tally_batch b = {"traffic", key, "camera", per, ts, 1, &col};
			if (tally_write_batch(w, &b)) {
				n = 0;
				goto out;
			}
			n += per;
		}
		if ((flush_last || d + 1 < days) && tally_db_flush(db)) {
			n = 0;
			goto out;
		}
	}
out:
	tally_writer_close(w);
	free(ts);
	free(sp);
	return n;
}

#endif
