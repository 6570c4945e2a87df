/*
 * tally_gen.c — tally-gen: writes the benchmark's speed-camera workload as
 * line protocol, TSV or CSV.
 *
 * Every output of one run carries the same events in the same order
 * (tools/workload.c makes them; this file only formats and writes), so a
 * line-protocol file for tally, InfluxDB and VictoriaMetrics and a TSV
 * file for ClickHouse written together hold identical data. Same flags,
 * same bytes.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "workload.h"

#define GEN_BUF     (1u << 20)
#define GEN_BATCH   4096
#define GEN_OUT_MAX 8

typedef struct gen_out {
	const char *path;
	FILE *f;
	enum wl_format fmt;
	int late_only;   /* this file takes the backlog only */
	int ontime_only; /* the backlog goes to another file */
	char *buf;
	size_t len;
	uint64_t lines, bytes;
} gen_out;

static void usage(FILE *f)
{
	fprintf(f, "Usage: tally-gen [OPTIONS]\n"
		   "\n"
		   "Writes a deterministic speed-camera workload (the benchmark's, described in\n"
		   "docs/workload.md): cameras x days x events per camera per day, a share of the\n"
		   "cameras offline some hours a day whose backlog is delivered late, after\n"
		   "the on-time events. Same flags, same bytes.\n"
		   "\n"
		   "Workload:\n"
		   "  --seed N             seed (default 1)\n"
		   "  --cameras N          cameras KV00001... (default 1000)\n"
		   "  --days N             days (default 5)\n"
		   "  --per-day N          events per camera per day (default 4000)\n"
		   "  --start YYYY-MM-DD   first day, UTC (default 2025-06-02)\n"
		   "  --offline-pct P      percent of cameras offline every day (default 10)\n"
		   "  --outage-hours H     length of each outage, 1 to 15 (default 3)\n"
		   "  --late-at end|day    backlog after all days (default) or after each day\n"
		   "  --noise F            relative spread of speeds (default 0.08)\n"
		   "  --rush F             depth of rush-hour slowdowns, 0 = flat (default 1)\n"
		   "  --lane               add a tag lane=1..4\n"
		   "  --plate              add a string field plate=\"A123BC77\"\n"
		   "\n"
		   "Output (one pass writes every file given; the events are identical):\n"
		   "  --format lp|tsv|csv  format of -o / stdout (default lp)\n"
		   "  -o, --out FILE       write there instead of stdout ('-' is stdout)\n"
		   "  --lp FILE, --tsv FILE, --csv FILE\n"
		   "                       also write that format to FILE\n"
		   "  --late-lp FILE, --late-tsv FILE, --late-csv FILE\n"
		   "                       the backlog of that format goes to FILE, not with\n"
		   "                       the on-time events\n"
		   "  --part all|ontime|late  which events to write (default all)\n"
		   "  --precision ns|us|ms|s  timestamp unit of every output (default ns)\n"
		   "  --header             a column header line in tsv/csv files\n"
		   "  --summary FILE       JSON: parameters, counts, time range, offline cameras\n"
		   "  -q, --quiet          no rate line on stderr\n"
		   "  -h, --help           this text\n"
		   "  --version            print the version and exit\n"
		   "\n"
		   "Formats:\n"
		   "  lp   traffic,camera=KV00001 speed=85.2 1748822400123000000\n"
		   "  tsv  KV00001<TAB>1748822400123000000<TAB>85.2   (then lane, plate)\n"
		   "\n"
		   "Example: tally-gen --cameras 100 --days 2 --lp ev.lp --tsv ev.tsv \\\n"
		   "           --late-lp late.lp --late-tsv late.tsv --precision ms\n");
}

static int parse_u64(const char *flag, const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s || *end || *s == '-' || v < lo || v > hi) {
		fprintf(stderr,
			"tally-gen: %s: '%s' is not a number in [%" PRIu64 ", %" PRIu64 "]\n", flag,
			s, lo, hi);
		return -1;
	}
	*out = v;
	return 0;
}

static int parse_f(const char *flag, const char *s, double lo, double hi, double *out)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || end == s || *end || !(v >= lo && v <= hi)) {
		fprintf(stderr, "tally-gen: %s: '%s' is not a number in [%g, %g]\n", flag, s, lo,
			hi);
		return -1;
	}
	*out = v;
	return 0;
}

static int parse_date(const char *s, int64_t *ns)
{
	int y, m, d;
	char tail;
	if (sscanf(s, "%4d-%2d-%2d%c", &y, &m, &d, &tail) != 3 || m < 1 || m > 12 || d < 1 ||
	    d > 31) {
		fprintf(stderr, "tally-gen: --start: '%s' is not a date YYYY-MM-DD\n", s);
		return -1;
	}
	struct tm tm = {.tm_year = y - 1900, .tm_mon = m - 1, .tm_mday = d};
	time_t t = timegm(&tm);
	if (t < 0 || tm.tm_mday != d) {
		fprintf(stderr, "tally-gen: --start: '%s' is not a date from 1970\n", s);
		return -1;
	}
	*ns = (int64_t)t * 1000000000;
	return 0;
}

static int parse_fmt(const char *s, enum wl_format *f)
{
	if (!strcmp(s, "lp"))
		*f = WL_FMT_LP;
	else if (!strcmp(s, "tsv"))
		*f = WL_FMT_TSV;
	else if (!strcmp(s, "csv"))
		*f = WL_FMT_CSV;
	else {
		fprintf(stderr, "tally-gen: --format: '%s' is not lp, tsv or csv\n", s);
		return -1;
	}
	return 0;
}

static int gen_flush(gen_out *o)
{
	if (o->len && fwrite(o->buf, 1, o->len, o->f) != o->len) {
		fprintf(stderr, "tally-gen: writing %s: %s\n", o->path, strerror(errno));
		return -1;
	}
	o->bytes += o->len;
	o->len = 0;
	return 0;
}

static void json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			fputc('\\', f);
		fputc(*s, f);
	}
	fputc('"', f);
}

static int write_summary(const char *path, const wl_params *p, const wl_summary *m,
			 const char *part, const char *prec)
{
	FILE *f = fopen(path, "w");
	if (!f) {
		fprintf(stderr, "tally-gen: %s: %s\n", path, strerror(errno));
		return -1;
	}
	fprintf(f, "{\n  \"generator\": \"tally-gen 1\",\n");
	fprintf(f, "  \"seed\": %" PRIu64 ", \"cameras\": %u, \"days\": %u, \"per_day\": %u,\n",
		p->seed, p->cameras, p->days, p->per_day);
	fprintf(f, "  \"offline_pct\": %u, \"outage_hours\": %u, \"late_at\": \"%s\",\n",
		p->offline_pct, p->outage_hours, p->late_at == WL_LATE_END ? "end" : "day");
	fprintf(f, "  \"noise\": %.6g, \"rush\": %.6g, \"lane\": %s, \"plate\": %s,\n", p->noise,
		p->rush, p->extras & WL_LANE ? "true" : "false",
		p->extras & WL_PLATE ? "true" : "false");
	fprintf(f, "  \"start_ns\": %" PRId64 ", \"end_ns\": %" PRId64 ",\n", p->start_ns,
		p->start_ns + (int64_t)p->days * WL_NS_PER_DAY);
	fprintf(f, "  \"part\": ");
	json_str(f, part);
	fprintf(f, ", \"precision\": ");
	json_str(f, prec);
	fprintf(f,
		",\n  \"events\": %" PRIu64 ", \"ontime\": %" PRIu64 ", \"late\": %" PRIu64
		", \"store_late_5m\": %" PRIu64 ",\n",
		m->events, m->ontime, m->late, m->store_late);
	fprintf(f, "  \"ts_min_ns\": %" PRId64 ", \"ts_max_ns\": %" PRId64 ",\n", m->ts_min,
		m->ts_max);
	/* The offline cameras and their first day's outage with its event
	 * count: enough to ask a store whether the backlog is visible. */
	fprintf(f, "  \"offline\": [");
	unsigned shown = 0;
	int64_t *ts = malloc((size_t)p->per_day * sizeof *ts);
	int32_t *tenths = malloc((size_t)p->per_day * sizeof *tenths);
	for (unsigned c = 0; c < p->cameras && ts && tenths; c++) {
		if (!wl_camera_offline(p, c))
			continue;
		char id[WL_ID_MAX];
		wl_camera_id(c, id);
		wl_day d = {.ts = ts, .tenths = tenths};
		wl_gen_day(p, c, 0, &d);
		if (shown++ >= 1000) {
			fprintf(f, ", \"...\"");
			break;
		}
		fprintf(f,
			"%s\n    {\"camera\": \"%s\", \"day0_outage_from_ns\": %" PRId64
			", \"day0_outage_to_ns\": %" PRId64 ", \"day0_backlog\": %u}",
			shown > 1 ? "," : "", id, d.out_from, d.out_to, d.b1 - d.b0);
	}
	free(ts);
	free(tenths);
	fprintf(f, "\n  ]\n}\n");
	if (fclose(f)) {
		fprintf(stderr, "tally-gen: %s: %s\n", path, strerror(errno));
		return -1;
	}
	return 0;
}

static double now_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
	enum {
		O_SEED = 1,
		O_CAMERAS,
		O_DAYS,
		O_PERDAY,
		O_START,
		O_OFFLINE,
		O_OUTAGE,
		O_LATEAT,
		O_NOISE,
		O_RUSH,
		O_LANE,
		O_PLATE,
		O_FORMAT,
		O_LP,
		O_TSV,
		O_CSV,
		O_LLP,
		O_LTSV,
		O_LCSV,
		O_PART,
		O_PREC,
		O_HEADER,
		O_SUMMARY,
		O_VERSION
	};
	static const struct option longopts[] = {
		{"seed", required_argument, NULL, O_SEED},
		{"cameras", required_argument, NULL, O_CAMERAS},
		{"days", required_argument, NULL, O_DAYS},
		{"per-day", required_argument, NULL, O_PERDAY},
		{"events-per-day", required_argument, NULL, O_PERDAY},
		{"start", required_argument, NULL, O_START},
		{"offline-pct", required_argument, NULL, O_OFFLINE},
		{"outage-hours", required_argument, NULL, O_OUTAGE},
		{"late-at", required_argument, NULL, O_LATEAT},
		{"noise", required_argument, NULL, O_NOISE},
		{"rush", required_argument, NULL, O_RUSH},
		{"lane", no_argument, NULL, O_LANE},
		{"plate", no_argument, NULL, O_PLATE},
		{"format", required_argument, NULL, O_FORMAT},
		{"out", required_argument, NULL, 'o'},
		{"lp", required_argument, NULL, O_LP},
		{"tsv", required_argument, NULL, O_TSV},
		{"csv", required_argument, NULL, O_CSV},
		{"late-lp", required_argument, NULL, O_LLP},
		{"late-tsv", required_argument, NULL, O_LTSV},
		{"late-csv", required_argument, NULL, O_LCSV},
		{"part", required_argument, NULL, O_PART},
		{"precision", required_argument, NULL, O_PREC},
		{"header", no_argument, NULL, O_HEADER},
		{"summary", required_argument, NULL, O_SUMMARY},
		{"quiet", no_argument, NULL, 'q'},
		{"help", no_argument, NULL, 'h'},
		{"version", no_argument, NULL, O_VERSION},
		{NULL, 0, NULL, 0},
	};
	wl_params p;
	wl_params_init(&p);
	enum wl_format main_fmt = WL_FMT_LP;
	enum wl_precision prec = WL_PREC_NS;
	enum wl_part part = WL_PART_ALL;
	const char *main_path = NULL, *summary = NULL, *part_s = "all", *prec_s = "ns";
	const char *paths[3] = {NULL, NULL, NULL}, *late_paths[3] = {NULL, NULL, NULL};
	int header = 0, quiet = 0, c;
	uint64_t v;
	double dv;
	while ((c = getopt_long(argc, argv, "o:qh", longopts, NULL)) != -1) {
		switch (c) {
		case 'h': usage(stdout); return 0;
		case O_VERSION: printf("tally-gen %s\n", TALLY_VERSION_STRING); return 0;
		case 'q': quiet = 1; break;
		case 'o': main_path = optarg; break;
		case O_SEED:
			if (parse_u64("--seed", optarg, 0, UINT64_MAX, &v))
				return 2;
			p.seed = v;
			break;
		case O_CAMERAS:
			if (parse_u64("--cameras", optarg, 1, WL_CAMERAS_MAX, &v))
				return 2;
			p.cameras = (unsigned)v;
			break;
		case O_DAYS:
			if (parse_u64("--days", optarg, 1, WL_DAYS_MAX, &v))
				return 2;
			p.days = (unsigned)v;
			break;
		case O_PERDAY:
			if (parse_u64("--per-day", optarg, 1, WL_PER_DAY_MAX, &v))
				return 2;
			p.per_day = (unsigned)v;
			break;
		case O_START:
			if (parse_date(optarg, &p.start_ns))
				return 2;
			break;
		case O_OFFLINE:
			if (parse_u64("--offline-pct", optarg, 0, 100, &v))
				return 2;
			p.offline_pct = (unsigned)v;
			break;
		case O_OUTAGE:
			if (parse_u64("--outage-hours", optarg, 1, 15, &v))
				return 2;
			p.outage_hours = (unsigned)v;
			break;
		case O_LATEAT:
			if (!strcmp(optarg, "end"))
				p.late_at = WL_LATE_END;
			else if (!strcmp(optarg, "day"))
				p.late_at = WL_LATE_DAY;
			else {
				fprintf(stderr, "tally-gen: --late-at: '%s' is not end or day\n",
					optarg);
				return 2;
			}
			break;
		case O_NOISE:
			if (parse_f("--noise", optarg, 0, 0.5, &dv))
				return 2;
			p.noise = dv;
			break;
		case O_RUSH:
			if (parse_f("--rush", optarg, 0, 1.5, &dv))
				return 2;
			p.rush = dv;
			break;
		case O_LANE: p.extras |= WL_LANE; break;
		case O_PLATE: p.extras |= WL_PLATE; break;
		case O_FORMAT:
			if (parse_fmt(optarg, &main_fmt))
				return 2;
			break;
		case O_LP: paths[WL_FMT_LP] = optarg; break;
		case O_TSV: paths[WL_FMT_TSV] = optarg; break;
		case O_CSV: paths[WL_FMT_CSV] = optarg; break;
		case O_LLP: late_paths[WL_FMT_LP] = optarg; break;
		case O_LTSV: late_paths[WL_FMT_TSV] = optarg; break;
		case O_LCSV: late_paths[WL_FMT_CSV] = optarg; break;
		case O_PART:
			part_s = optarg;
			if (!strcmp(optarg, "all"))
				part = WL_PART_ALL;
			else if (!strcmp(optarg, "ontime"))
				part = WL_PART_ONTIME;
			else if (!strcmp(optarg, "late"))
				part = WL_PART_LATE;
			else {
				fprintf(stderr,
					"tally-gen: --part: '%s' is not all, ontime or late\n",
					optarg);
				return 2;
			}
			break;
		case O_PREC: {
			static const char *const names[4] = {"ns", "us", "ms", "s"};
			int k = 0;
			while (k < 4 && strcmp(optarg, names[k]))
				k++;
			if (k == 4) {
				fprintf(stderr,
					"tally-gen: --precision: '%s' is not ns, us, ms or s\n",
					optarg);
				return 2;
			}
			prec = (enum wl_precision)k;
			prec_s = names[k];
			break;
		}
		case O_HEADER: header = 1; break;
		case O_SUMMARY: summary = optarg; break;
		default: fprintf(stderr, "See tally-gen --help.\n"); return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "tally-gen: unexpected argument '%s' (see --help)\n", argv[optind]);
		return 2;
	}
	char err[160];
	if (wl_params_check(&p, err, sizeof err)) {
		fprintf(stderr, "tally-gen: %s\n", err);
		return 2;
	}

	/* The outputs: stdout (or -o) in --format unless only named files
	 * were asked for, then each --FMT file, then each --late-FMT file. */
	gen_out outs[GEN_OUT_MAX];
	int n_out = 0;
	int any_named =
		paths[0] || paths[1] || paths[2] || late_paths[0] || late_paths[1] || late_paths[2];
	if (main_path || !any_named)
		outs[n_out++] = (gen_out){.path = main_path ? main_path : "-",
					  .fmt = main_fmt,
					  .ontime_only = late_paths[main_fmt] != NULL};
	for (int f = 0; f < 3; f++)
		if (paths[f])
			outs[n_out++] = (gen_out){.path = paths[f],
						  .fmt = (enum wl_format)f,
						  .ontime_only = late_paths[f] != NULL};
	for (int f = 0; f < 3; f++)
		if (late_paths[f])
			outs[n_out++] = (gen_out){
				.path = late_paths[f], .fmt = (enum wl_format)f, .late_only = 1};
	int rc = 1;
	for (int i = 0; i < n_out; i++) {
		gen_out *o = &outs[i];
		if (!strcmp(o->path, "-"))
			o->f = stdout;
		else if (!(o->f = fopen(o->path, "w"))) {
			fprintf(stderr, "tally-gen: %s: %s\n", o->path, strerror(errno));
			goto out;
		}
		if (!(o->buf = malloc(GEN_BUF))) {
			fprintf(stderr, "tally-gen: out of memory\n");
			goto out;
		}
		if (header)
			o->len = wl_format_header(&p, o->fmt, o->buf);
	}

	wl_stream *s = wl_stream_open(&p, part);
	wl_event *ev = malloc(GEN_BATCH * sizeof *ev);
	if (!s || !ev) {
		fprintf(stderr, "tally-gen: out of memory for one day of %u cameras x %u events\n",
			p.cameras, p.per_day);
		wl_stream_close(s);
		free(ev);
		goto out;
	}
	double t0 = now_s();
	size_t n;
	int werr = 0;
	while (!werr && (n = wl_stream_read(s, ev, GEN_BATCH)) > 0) {
		for (int i = 0; i < n_out && !werr; i++) {
			gen_out *o = &outs[i];
			for (size_t k = 0; k < n; k++) {
				if (ev[k].late ? o->ontime_only : o->late_only)
					continue;
				if (GEN_BUF - o->len < WL_LINE_MAX && (werr = gen_flush(o)))
					break;
				o->len += wl_format(&p, o->fmt, prec, &ev[k], o->buf + o->len);
				o->lines++;
			}
		}
	}
	wl_summary sum;
	wl_stream_summary(s, &sum);
	wl_stream_close(s);
	free(ev);
	for (int i = 0; i < n_out && !werr; i++)
		werr = gen_flush(&outs[i]);
	if (werr)
		goto out;
	double secs = now_s() - t0;
	uint64_t expect = part == WL_PART_ALL ? wl_total_events(&p) : 0;
	if (expect && sum.events != expect) {
		fprintf(stderr, "tally-gen: generated %" PRIu64 " events, expected %" PRIu64 "\n",
			sum.events, expect);
		goto out;
	}
	if (summary && write_summary(summary, &p, &sum, part_s, prec_s))
		goto out;
	if (!quiet) {
		uint64_t bytes = 0;
		for (int i = 0; i < n_out; i++)
			bytes += outs[i].bytes;
		fprintf(stderr,
			"tally-gen: %" PRIu64 " events (%" PRIu64 " on time, %" PRIu64
			" late) in %.2f s: %.1f M events/s, %.0f MB/s written\n",
			sum.events, sum.ontime, sum.late, secs,
			secs > 0 ? (double)sum.events / secs / 1e6 : 0,
			secs > 0 ? (double)bytes / secs / 1e6 : 0);
	}
	rc = 0;
out:
	for (int i = 0; i < n_out; i++) {
		gen_out *o = &outs[i];
		if (o->f && o->f != stdout && fclose(o->f) && !rc) {
			fprintf(stderr, "tally-gen: %s: %s\n", o->path, strerror(errno));
			rc = 1;
		}
		if (o->f == stdout && fflush(stdout) && !rc) {
			fprintf(stderr, "tally-gen: stdout: %s\n", strerror(errno));
			rc = 1;
		}
		free(o->buf);
	}
	return rc;
}
