/*
 * workload.h — the synthetic speed-camera workload, shared by tally-gen,
 * the demo, the benchmarks and their tests.
 *
 * One generator, so that every program that talks about "the benchmark's
 * workload" means the same events. Events are a pure function of the
 * parameters: camera c's day d comes from its own seeded generator, so any
 * camera-day can be made alone, in any order, on any thread, and is the
 * same bytes every time (no libm calls on the data path; the file is built
 * with -ffp-contract=off).
 *
 * The model (docs/workload.md):
 *  - cameras KV00001..; each has a free-flow speed (60-110 km/h), a jam
 *    depth (0.6-1.4) and, per day, its own traffic volume per hour (quiet
 *    nights, rush hours 7-9 and 17-19);
 *  - per camera per day exactly per_day events at millisecond precision,
 *    strictly increasing in time per camera (no two events of a camera
 *    share a millisecond, so stores that overwrite on equal timestamps keep
 *    every event); speed = free-flow x hour factor x (1 + noise), with one
 *    decimal (kept as integer tenths: 85.2 is 852);
 *  - offline_pct percent of the cameras, evenly spread, are offline
 *    outage_hours every day (starting between 05:00 and 20:00 - outage,
 *    UTC); the events of the outage are the camera's backlog, sent late;
 *  - optional extra fields per event: lane (1-4) and plate ("A123BC77"),
 *    drawn from a separate generator so that turning them on changes no
 *    time or speed.
 *
 * The stream (wl_stream) puts the events in the order a collector would
 * receive them: on-time events of all cameras merged by time (ties by
 * camera), then the backlog (late_at WL_LATE_END: after every day, day by
 * day, camera by camera, each in time order; WL_LATE_DAY: after each day's
 * on-time events).
 */
#ifndef TALLY_WORKLOAD_H
#define TALLY_WORKLOAD_H

#include <stddef.h>
#include <stdint.h>

#define WL_NS_PER_MS  INT64_C(1000000)
#define WL_NS_PER_DAY (INT64_C(86400) * 1000000000)

#define WL_CAMERAS_MAX 1000000u
#define WL_DAYS_MAX    3660u
#define WL_PER_DAY_MAX 1000000u
#define WL_ID_MAX      16 /* "KV00001" and its NUL, with room to spare */
#define WL_PLATE_LEN   8  /* "A123BC77", not NUL-terminated */

enum wl_late_at { WL_LATE_END = 0, WL_LATE_DAY = 1 };

enum wl_extras { WL_LANE = 1u << 0, WL_PLATE = 1u << 1 };

typedef struct wl_params {
	uint64_t seed;
	unsigned cameras;
	unsigned days;
	unsigned per_day;      /* events per camera per day */
	unsigned offline_pct;  /* 0..100 */
	unsigned outage_hours; /* 1..15 */
	int64_t start_ns;      /* first day's 00:00 UTC, ns since the epoch */
	double noise;          /* relative standard deviation of speeds */
	double rush;           /* depth of the rush-hour dips: 0 flat, 1 normal */
	enum wl_late_at late_at;
	unsigned extras; /* WL_LANE | WL_PLATE */
} wl_params;

/* Defaults: seed 1, 1,000 cameras x 5 days x 4,000 events (20 M), 10%
 * offline 3 h a day, from 2025-06-02, noise 0.08, rush 1, backlog at the
 * end, no extras. */
void wl_params_init(wl_params *p);

/* 0, or -1 with the reason in err. */
int wl_params_check(const wl_params *p, char *err, size_t cap);

uint64_t wl_total_events(const wl_params *p);

/* "KV00001" for camera 0. */
void wl_camera_id(unsigned cam, char out[WL_ID_MAX]);

/* 1 when camera cam goes offline every day: round(cameras * pct / 100)
 * cameras, evenly spread. */
int wl_camera_offline(const wl_params *p, unsigned cam);

/* ---------------------------------------------------------------- camera-days */

/* One camera's day, in time order. The caller provides per_day slots in
 * ts and tenths; lane and plate may be NULL (not filled). */
typedef struct wl_day {
	int64_t *ts;     /* ns since the epoch, whole milliseconds */
	int32_t *tenths; /* speed x 10 */
	uint8_t *lane;
	char (*plate)[WL_PLATE_LEN];
	/* Events [b0, b1) fall in the outage: the backlog. b0 == b1 for a
	 * camera that stayed online. */
	uint32_t b0, b1;
	int64_t out_from, out_to; /* the outage, ns since the epoch (0 if none) */
} wl_day;

void wl_gen_day(const wl_params *p, unsigned cam, unsigned day, wl_day *d);

/* ---------------------------------------------------------------- stream */

typedef struct wl_event {
	int64_t ts;
	uint32_t cam;
	int32_t tenths;
	uint8_t lane; /* 0 when WL_LANE is off */
	uint8_t late; /* 1 for backlog events */
	char plate[WL_PLATE_LEN];
} wl_event;

enum wl_part { WL_PART_ALL = 0, WL_PART_ONTIME = 1, WL_PART_LATE = 2 };

typedef struct wl_stream wl_stream;

/* A stream of the events of part, in delivery order. Holds one day of all
 * cameras in memory (plus the backlog with WL_LATE_END). NULL when out of
 * memory or p is invalid. */
wl_stream *wl_stream_open(const wl_params *p, enum wl_part part);
/* Fills up to cap events; returns how many, 0 at the end. */
size_t wl_stream_read(wl_stream *s, wl_event *out, size_t cap);
void wl_stream_close(wl_stream *s);

/* What a stream emitted so far (all of it once read returned 0). */
typedef struct wl_summary {
	uint64_t events, ontime, late;
	int64_t ts_min, ts_max; /* of the events emitted */
	/* Events a store would count late (older than the camera's newest
	 * event delivered before it, by more than late_threshold ns) when it
	 * is fed this stream in order, also when part is WL_PART_LATE (the
	 * on-time events count as delivered before it). */
	uint64_t store_late;
} wl_summary;

/* Late threshold for summary.store_late; default 5 minutes. Call before
 * the first read. */
void wl_stream_set_late_threshold(wl_stream *s, int64_t ns);
void wl_stream_summary(const wl_stream *s, wl_summary *out);

/* ---------------------------------------------------------------- text */

enum wl_format { WL_FMT_LP = 0, WL_FMT_TSV = 1, WL_FMT_CSV = 2 };
enum wl_precision { WL_PREC_NS = 0, WL_PREC_US = 1, WL_PREC_MS = 2, WL_PREC_S = 3 };

#define WL_LINE_MAX 160 /* longest line any format writes */

/* Writes one event as a line ending in '\n' into out (WL_LINE_MAX bytes);
 * returns its length.
 *   lp:  traffic,camera=KV00001[,lane=2] speed=85.2[,plate="A123BC77"] 1748822400123000000
 *   tsv: KV00001\t1748822400123000000\t85.2[\t2][\tA123BC77]
 *   csv: the same with commas.
 * Timestamps in prec units (events are whole milliseconds, so ms and
 * finer are exact; s truncates). The extras of p are written. */
size_t wl_format(const wl_params *p, enum wl_format fmt, enum wl_precision prec, const wl_event *e,
		 char *out);

/* Header line of the tsv/csv columns ("camera\tts\tspeed[\tlane][\tplate]\n");
 * 0 for lp. */
size_t wl_format_header(const wl_params *p, enum wl_format fmt, char *out);

#endif /* TALLY_WORKLOAD_H */
