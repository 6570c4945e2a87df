/*
 * test_gen.c — the workload generator (tools/workload.c) and tally-gen.
 *
 * What the benchmark relies on: the same flags give the same bytes; every
 * camera-day has exactly its events, in time order, no two in the same
 * millisecond; the backlog of the offline cameras is delivered after the
 * on-time events and lies in their outages; the line protocol and the CSV
 * of one run carry the same events. The tally-gen binary is run as the
 * benchmark runs it (path in $TALLY_GEN).
 */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

static wl_params small_params(void)
{
	wl_params p;
	wl_params_init(&p);
	p.cameras = 37;
	p.days = 3;
	p.per_day = 500;
	p.offline_pct = 20;
	return p;
}

/* All events of a stream, in delivery order. */
static wl_event *read_all(const wl_params *p, enum wl_part part, size_t *n, wl_summary *sum)
{
	size_t cap = (size_t)wl_total_events(p) + 16;
	wl_event *ev = malloc(cap * sizeof *ev);
	cr_assert(ev);
	wl_stream *s = wl_stream_open(p, part);
	cr_assert(s);
	size_t got = 0, k;
	/* Odd read sizes, so batch edges fall everywhere. */
	while ((k = wl_stream_read(s, ev + got, 1 + got % 97)) > 0)
		got += k;
	cr_assert_leq(got, cap);
	if (sum)
		wl_stream_summary(s, sum);
	wl_stream_close(s);
	*n = got;
	return ev;
}

Test(gen, deterministic_and_seeded)
{
	wl_params p = small_params();
	size_t n1, n2, n3;
	wl_event *a = read_all(&p, WL_PART_ALL, &n1, NULL);
	wl_event *b = read_all(&p, WL_PART_ALL, &n2, NULL);
	cr_assert_eq(n1, n2);
	cr_assert(memcmp(a, b, n1 * sizeof *a) == 0, "same parameters, different events");
	p.seed = 2;
	wl_event *c = read_all(&p, WL_PART_ALL, &n3, NULL);
	cr_assert_eq(n1, n3);
	size_t same = 0;
	for (size_t i = 0; i < n1; i++)
		same += a[i].ts == c[i].ts && a[i].tenths == c[i].tenths;
	cr_assert_lt(same, n1 / 100, "another seed gave mostly the same events");
	free(a);
	free(b);
	free(c);
}

Test(gen, known_first_events)
{
	/* Pins the model: a change to the generator changes every published
	 * benchmark figure, so it must be deliberate (update these, say so in
	 * bench/README.md). */
	wl_params p;
	wl_params_init(&p);
	int64_t ts[4000];
	int32_t tenths[4000];
	wl_day d = {.ts = ts, .tenths = tenths};
	wl_gen_day(&p, 0, 0, &d);
	char line[WL_LINE_MAX + 1];
	wl_event e = {.ts = ts[0], .cam = 0, .tenths = tenths[0]};
	line[wl_format(&p, WL_FMT_LP, WL_PREC_NS, &e, line)] = 0;
	cr_assert_str_eq(line, "traffic,camera=KV00001 speed=87.6 1748822448516000000\n", "got %s",
			 line);
	cr_assert_eq(d.b0, d.b1, "camera 1 is online");
	wl_gen_day(&p, 9, 2, &d); /* KV00010 is offline */
	cr_assert_lt(d.b0, d.b1);
	cr_assert_eq(d.out_to - d.out_from, 3 * INT64_C(3600) * 1000000000);
}

Test(gen, counts_and_camera_days)
{
	wl_params p = small_params();
	size_t n;
	wl_summary sum;
	wl_event *ev = read_all(&p, WL_PART_ALL, &n, &sum);
	cr_assert_eq(n, wl_total_events(&p));
	cr_assert_eq(sum.events, n);
	cr_assert_eq(sum.ontime + sum.late, n);

	unsigned offline = 0;
	for (unsigned c = 0; c < p.cameras; c++)
		offline += (unsigned)wl_camera_offline(&p, c);
	cr_assert_eq(offline, (p.cameras * p.offline_pct + 50) / 100);

	/* Per camera-day: exactly per_day events; the late ones are the
	 * outage's, and only offline cameras have any. */
	size_t cells = (size_t)p.cameras * p.days;
	uint32_t *per = calloc(cells, sizeof *per), *late = calloc(cells, sizeof *late);
	for (size_t i = 0; i < n; i++) {
		int64_t rel = ev[i].ts - p.start_ns;
		cr_assert_geq(rel, 0);
		cr_assert_eq(rel % WL_NS_PER_MS, 0, "events are whole milliseconds");
		size_t day = (size_t)(rel / WL_NS_PER_DAY);
		cr_assert_lt(day, p.days);
		per[(size_t)ev[i].cam * p.days + day]++;
		late[(size_t)ev[i].cam * p.days + day] += ev[i].late;
		cr_assert_geq(ev[i].tenths, 50, "speeds are at least 5 km/h");
	}
	int64_t ts[500];
	int32_t tenths[500];
	uint64_t late_total = 0;
	for (unsigned c = 0; c < p.cameras; c++)
		for (unsigned day = 0; day < p.days; day++) {
			size_t k = (size_t)c * p.days + day;
			cr_assert_eq(per[k], p.per_day, "camera %u day %u: %u events", c, day,
				     per[k]);
			wl_day d = {.ts = ts, .tenths = tenths};
			wl_gen_day(&p, c, day, &d);
			cr_assert_eq(late[k], d.b1 - d.b0);
			if (!wl_camera_offline(&p, c))
				cr_assert_eq(late[k], 0);
			else
				cr_assert_gt(late[k], 0, "3 hours of 500 events a day");
			for (uint32_t i = 1; i < p.per_day; i++)
				cr_assert_gt(ts[i], ts[i - 1], "strictly increasing per camera");
			for (uint32_t i = d.b0; i < d.b1; i++)
				cr_assert(ts[i] >= d.out_from && ts[i] < d.out_to);
			late_total += late[k];
		}
	cr_assert_eq(late_total, sum.late);
	free(per);
	free(late);
	free(ev);
}

Test(gen, backlog_after_ontime_events)
{
	wl_params p = small_params();
	size_t n;
	wl_summary sum;
	wl_event *ev = read_all(&p, WL_PART_ALL, &n, &sum);
	/* WL_LATE_END: on time, merged by (time, camera); then the backlog,
	 * day by day, camera by camera, each in time order. */
	size_t i = 0;
	for (; i < n && !ev[i].late; i++)
		if (i)
			cr_assert(ev[i - 1].ts < ev[i].ts ||
					  (ev[i - 1].ts == ev[i].ts && ev[i - 1].cam < ev[i].cam),
				  "on-time events out of order at %zu", i);
	cr_assert_eq(i, sum.ontime);
	for (size_t j = i; j < n; j++) {
		cr_assert(ev[j].late, "an on-time event after the backlog started");
		if (j > i) {
			int64_t d0 = (ev[j - 1].ts - p.start_ns) / WL_NS_PER_DAY;
			int64_t d1 = (ev[j].ts - p.start_ns) / WL_NS_PER_DAY;
			cr_assert(d0 < d1 || (d0 == d1 && ev[j - 1].cam < ev[j].cam) ||
				  (d0 == d1 && ev[j - 1].cam == ev[j].cam &&
				   ev[j - 1].ts < ev[j].ts));
		}
	}
	/* Every backlog event is older than its camera's last event of that
	 * day, by more than 5 minutes when it ends hours before: so all of
	 * them are late to a store, as the summary says. */
	cr_assert_eq(sum.store_late, sum.late);
	free(ev);

	/* WL_LATE_DAY: each day's backlog right after that day's on-time
	 * events, before the next day. */
	p.late_at = WL_LATE_DAY;
	ev = read_all(&p, WL_PART_ALL, &n, &sum);
	cr_assert_eq(n, wl_total_events(&p));
	int64_t day_of_prev = 0;
	int seen_late_today = 0;
	for (i = 0; i < n; i++) {
		int64_t day = (ev[i].ts - p.start_ns) / WL_NS_PER_DAY;
		if (ev[i].late) {
			cr_assert_eq(day, day_of_prev, "backlog of another day at %zu", i);
			seen_late_today = 1;
		} else {
			cr_assert_geq(day, day_of_prev);
			if (day == day_of_prev)
				cr_assert(!seen_late_today,
					  "on-time event after the day's backlog");
			else
				seen_late_today = 0;
			day_of_prev = day;
		}
	}
	free(ev);
}

Test(gen, parts_split_the_stream)
{
	wl_params p = small_params();
	size_t n, no, nl;
	wl_summary s_all, s_late;
	wl_event *all = read_all(&p, WL_PART_ALL, &n, &s_all);
	wl_event *on = read_all(&p, WL_PART_ONTIME, &no, NULL);
	wl_event *lt = read_all(&p, WL_PART_LATE, &nl, &s_late);
	cr_assert_eq(no + nl, n);
	cr_assert(memcmp(all, on, no * sizeof *on) == 0);
	cr_assert(memcmp(all + no, lt, nl * sizeof *lt) == 0);
	cr_assert_eq(s_late.store_late, s_all.store_late,
		     "a late-only stream counts the on-time events as delivered");
	free(all);
	free(on);
	free(lt);
}

Test(gen, extras_change_nothing_else)
{
	wl_params p = small_params();
	size_t n1, n2;
	wl_event *a = read_all(&p, WL_PART_ALL, &n1, NULL);
	p.extras = WL_LANE | WL_PLATE;
	wl_event *b = read_all(&p, WL_PART_ALL, &n2, NULL);
	cr_assert_eq(n1, n2);
	for (size_t i = 0; i < n1; i++) {
		cr_assert(a[i].ts == b[i].ts && a[i].cam == b[i].cam &&
			  a[i].tenths == b[i].tenths && a[i].late == b[i].late);
		cr_assert(b[i].lane >= 1 && b[i].lane <= 4);
		cr_assert(b[i].plate[0] >= 'A' && b[i].plate[1] >= '0' && b[i].plate[1] <= '9');
	}
	free(a);
	free(b);
}

/* ---------------------------------------------------------------- tally-gen */

static const char *gen_path(void)
{
	const char *g = getenv("TALLY_GEN");
	cr_assert(g && *g, "TALLY_GEN names the tally-gen binary (meson sets it)");
	return g;
}

static void run_gen(const char *args)
{
	char cmd[4096];
	snprintf(cmd, sizeof cmd, "'%s' -q %s", gen_path(), args);
	int rc = system(cmd);
	cr_assert(rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 0, "failed: %s", cmd);
}

static char *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	cr_assert(f, "%s", path);
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	char *buf = malloc((size_t)n + 1);
	cr_assert(buf);
	cr_assert_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
	buf[n] = 0;
	fclose(f);
	*len = (size_t)n;
	return buf;
}

static char tmp_dir[] = "/tmp/test_gen.XXXXXX";

static void make_tmp(void)
{
	cr_assert(mkdtemp(tmp_dir));
}

static void rm_tmp(void)
{
	char cmd[256];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp_dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", tmp_dir);
}

#define WORKLOAD_ARGS "--cameras 50 --days 2 --per-day 300 --offline-pct 10 --lane --plate "

Test(tally_gen, same_flags_same_bytes, .init = make_tmp, .fini = rm_tmp)
{
	char args[1024];
	snprintf(args, sizeof args, WORKLOAD_ARGS "--lp %s/a.lp --tsv %s/a.tsv", tmp_dir, tmp_dir);
	run_gen(args);
	snprintf(args, sizeof args, WORKLOAD_ARGS "--format lp -o %s/b.lp", tmp_dir);
	run_gen(args);
	snprintf(args, sizeof args, WORKLOAD_ARGS "--format tsv > %s/b.tsv", tmp_dir);
	run_gen(args);
	const char *names[2][2] = {{"a.lp", "b.lp"}, {"a.tsv", "b.tsv"}};
	for (int k = 0; k < 2; k++) {
		char pa[512], pb[512];
		size_t la, lb;
		snprintf(pa, sizeof pa, "%s/%s", tmp_dir, names[k][0]);
		snprintf(pb, sizeof pb, "%s/%s", tmp_dir, names[k][1]);
		char *a = slurp(pa, &la), *b = slurp(pb, &lb);
		cr_assert(la == lb && memcmp(a, b, la) == 0, "%s and %s differ", pa, pb);
		size_t lines = 0;
		for (size_t i = 0; i < la; i++)
			lines += a[i] == '\n';
		cr_assert_eq(lines, 50 * 2 * 300);
		free(a);
		free(b);
	}
}

/* One event as both formats say it. */
typedef struct parsed {
	char cam[16];
	int64_t ts;
	char speed[16];
	int lane;
	char plate[16];
} parsed;

static int parse_lp(char *line, parsed *out)
{
	/* traffic,camera=KV00001,lane=2 speed=85.2,plate="A123BC77" 1748822400123 */
	return sscanf(line,
		      "traffic,camera=%15[^,],lane=%d speed=%15[^,],plate=\"%15[^\"]\" %" SCNd64,
		      out->cam, &out->lane, out->speed, out->plate, &out->ts) == 5
		       ? 0
		       : -1;
}

static int parse_csv(char *line, parsed *out)
{
	return sscanf(line, "%15[^,],%" SCNd64 ",%15[^,],%d,%15[^,\n]", out->cam, &out->ts,
		      out->speed, &out->lane, out->plate) == 5
		       ? 0
		       : -1;
}

Test(tally_gen, lp_and_csv_agree, .init = make_tmp, .fini = rm_tmp)
{
	char args[1024];
	snprintf(args, sizeof args,
		 WORKLOAD_ARGS "--precision ms --lp %s/e.lp --csv %s/e.csv --late-lp %s/l.lp "
			       "--late-csv %s/l.csv --header --summary %s/s.json",
		 tmp_dir, tmp_dir, tmp_dir, tmp_dir, tmp_dir);
	run_gen(args);
	size_t total = 0, late = 0;
	for (int k = 0; k < 2; k++) {
		char pl[512], pc[512];
		size_t ll, lc;
		snprintf(pl, sizeof pl, "%s/%s.lp", tmp_dir, k ? "l" : "e");
		snprintf(pc, sizeof pc, "%s/%s.csv", tmp_dir, k ? "l" : "e");
		char *lp = slurp(pl, &ll), *csv = slurp(pc, &lc);
		char *sl, *sc;
		char *a = strtok_r(lp, "\n", &sl);
		char *b = strtok_r(csv, "\n", &sc);
		cr_assert_str_eq(b, "camera,ts,speed,lane,plate");
		b = strtok_r(NULL, "\n", &sc);
		size_t lines = 0;
		while (a && b) {
			parsed x, y;
			cr_assert_eq(parse_lp(a, &x), 0, "bad line protocol: %s", a);
			cr_assert_eq(parse_csv(b, &y), 0, "bad csv: %s", b);
			cr_assert(!strcmp(x.cam, y.cam) && x.ts == y.ts &&
					  !strcmp(x.speed, y.speed) && x.lane == y.lane &&
					  !strcmp(x.plate, y.plate),
				  "line %zu: '%s' vs '%s'", lines + 1, a, b);
			lines++;
			a = strtok_r(NULL, "\n", &sl);
			b = strtok_r(NULL, "\n", &sc);
		}
		cr_assert(!a && !b, "%s and %s differ in length", pl, pc);
		total += lines;
		if (k)
			late = lines;
		free(lp);
		free(csv);
	}
	cr_assert_eq(total, 50 * 2 * 300);
	cr_assert_gt(late, 0);
	/* The summary agrees. */
	char ps[512];
	size_t ls;
	snprintf(ps, sizeof ps, "%s/s.json", tmp_dir);
	char *js = slurp(ps, &ls);
	char want[128];
	snprintf(want, sizeof want, "\"events\": %d", 50 * 2 * 300);
	cr_assert(strstr(js, want), "%s", js);
	snprintf(want, sizeof want, "\"late\": %zu,", late);
	cr_assert(strstr(js, want), "%s", js);
	free(js);
}

Test(tally_gen, bad_flags_refused)
{
	char cmd[1024];
	const char *bad[] = {
		"--cameras 0",       "--days x",           "--format parquet", "--precision m",
		"--outage-hours 16", "--start 2025-02-30", "--noise 2",        "stray"};
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		snprintf(cmd, sizeof cmd, "'%s' %s >/dev/null 2>&1", gen_path(), bad[i]);
		int rc = system(cmd);
		cr_assert(rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 2, "'%s' accepted",
			  bad[i]);
	}
}
