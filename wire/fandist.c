/*
 * fandist.c — distributions across nodes (fandist.h, docs/cluster.md):
 * #!dist, /api/v1/dist and InfluxQL's MEDIAN and PERCENTILE on a node
 * with `peers`.
 *
 * The one idea: a quantile of parts is not the quantile of the whole, but
 * a distribution is a sorted list of (value, count) pairs at the field's
 * resolution, and those add up exactly. So every node is asked for its
 * part as pairs ("#!dist ... pairs", docs/protocol.md), the asking node
 * adds them up (tally_dist_merge: exact, or a sketch when any node's part
 * was one) and asks its statistics of the sum: V85 across three nodes is
 * the V85 one node holding everything answers. A stepped /api/v1/dist
 * asks each node once for every window's pairs ("pairs step=STEP"), not
 * once per window.
 */
#include "fandist.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "distcmd.h"
#include "distpairs.h"

/* ---------------------------------------------------------------- reading pairs */

/* Cell j of row as an integer filling it; 0 or -1. */
static int cell_int(const char *row, size_t n, unsigned j, long long *v)
{
	size_t cn;
	const char *p = fan_cell(row, n, j, &cn);
	char b[32], *end;
	if (!p || !cn || cn >= sizeof b)
		return -1;
	memcpy(b, p, cn);
	b[cn] = 0;
	errno = 0;
	*v = strtoll(b, &end, 10);
	return errno || *end ? -1 : 0;
}

/* Pairs v, c [0, n) of one resolution and kind (one node's part of a
 * window) added into *whole: the first part becomes it. */
static int merge_part(tally_dist **whole, int32_t exp, int sketch, const int64_t *v,
		      const uint64_t *c, size_t n, char *err, size_t cap)
{
	tally_dist *d;
	int rc = dist_from_pairs(exp, sketch, v, c, n, &d);
	if (!rc && !*whole) {
		*whole = d;
	} else if (!rc) {
		rc = tally_dist_merge(*whole, d); /* sketch-aware; one resolution */
		tally_dist_free(d);
	}
	if (rc)
		snprintf(err, cap, "the nodes' distributions do not merge: %s", tally_errmsg());
	return rc;
}

/* How many rows from rd's next one make the run read_rows merges: all
 * that are left (j0 0), or those whose first cell is the time lo (j0 1:
 * the window's, which fan_run put together). */
static size_t run_rows(const fan_reader *rd, unsigned j0, int64_t lo)
{
	fan_reader run = *rd;
	const char *row;
	size_t n, rows = 0;
	while (fan_reader_next(&run, &row, &n) && (!j0 || fan_cell_time(row, n, 0) == lo))
		rows++;
	return rows;
}

/* The rows of rd from its next one (j0 1: only those whose first cell is
 * the time lo) merged into *out. The run is counted first, so its pairs
 * take arrays of their size once; a change of resolution or kind (the
 * next node's part) merges what came before it. */
static int read_rows(fan_reader *rd, unsigned j0, int64_t lo, tally_dist **out, char *err,
		     size_t cap)
{
	size_t rows = run_rows(rd, j0, lo), k = 0, seg = 0;
	int64_t *v = malloc((rows ? rows : 1) * sizeof *v);
	uint64_t *c = malloc((rows ? rows : 1) * sizeof *c);
	tally_dist *whole = NULL;
	int32_t exp = 0;
	int sketch = 0, rc = 0;
	if (!v || !c) {
		snprintf(err, cap, "out of memory merging the distributions");
		rc = -ENOMEM;
	}
	for (size_t i = 0; i < rows && !rc; i++) {
		const char *row, *kind;
		size_t n, kn;
		long long e, u, ct;
		fan_reader_next(rd, &row, &n);
		kind = fan_cell(row, n, j0 + 1, &kn);
		int sk = kind && kn == 6 && !memcmp(kind, "sketch", 6);
		if (cell_int(row, n, j0, &e) || cell_int(row, n, j0 + 2, &u) ||
		    cell_int(row, n, j0 + 3, &ct) || ct <= 0 || e < -99 || e > 99 ||
		    !(sk || (kind && kn == 5 && !memcmp(kind, "exact", 5)))) {
			snprintf(err, cap,
				 "row %zu of the nodes' distributions is not "
				 "EXP\\tKIND\\tUNITS\\tCOUNT: '%.60s'",
				 i + 1, row);
			rc = TALLY_EINVAL;
			break;
		}
		if (k > seg && (exp != (int32_t)e || sketch != sk)) {
			rc = merge_part(&whole, exp, sketch, v + seg, c + seg, k - seg, err, cap);
			seg = k;
		}
		exp = (int32_t)e;
		sketch = sk;
		v[k] = (int64_t)u;
		c[k++] = (uint64_t)ct;
	}
	if (!rc && (k > seg || !whole)) /* no rows: an empty distribution */
		rc = merge_part(&whole, exp, sketch, v + seg, c + seg, k - seg, err, cap);
	free(v);
	free(c);
	if (rc) {
		tally_dist_free(whole);
		return rc;
	}
	*out = whole;
	return 0;
}

int fandist_read(fan_reader *rd, tally_dist **out, char *err, size_t cap)
{
	return read_rows(rd, 0, 0, out, err, cap);
}

int fandist_window(fan_reader *rd, int64_t lo, tally_dist **out, char *err, size_t cap)
{
	return read_rows(rd, 1, lo, out, err, cap);
}

/* ---------------------------------------------------------------- asking */

/* What a job asks: the query as a command line with absolute times (its
 * strings live here, not in the connection's scratch). */
typedef struct dist_job {
	char cmd[4096];
	int partial;
	int64_t step; /* /api/v1/dist's windows (0: one) */
} dist_job;

/* r as its command line into j; -E2BIG when it does not fit. */
static int job_cmd(dist_job *j, const cmd_req *r)
{
	return fan_build_cmd(r, j->cmd, sizeof j->cmd) ? 0 : -E2BIG;
}

/* The job's query parsed back (strings in scratch). */
static void job_req(const dist_job *j, char *scratch, size_t cap, cmd_req *r)
{
	char err[CMD_ERR_MAX];
	size_t n = strcspn(j->cmd, "\n");
	/* it parsed once already, on the connection: it parses again */
	if (cmd_parse(j->cmd, n, scratch, cap, 0, r, err, sizeof err))
		memset(r, 0, sizeof *r);
}

/* Asks every node in nodes[0, n) for its part of r's range as pairs: 0
 * with the merged answer in *text (free it) opened in rd. */
static int ask_pairs(const fan_node *nodes, size_t n, const fan_opts *o, const cmd_req *r,
		     char **text, size_t *len, fan_reader *rd)
{
	cmd_req p = *r;
	p.stats[0] = "pairs";
	p.n_stats = 1;
	int rc = fan_ask(nodes, n, o, &p, text, len);
	if (!rc)
		fan_reader_open(rd, *text, *len);
	return rc;
}

/* An answer of one line: "ERR " and the message. */
static int answer_err(char **out, size_t *len, const char *fmt, const char *m, size_t mn)
{
	char b[700];
	int k = snprintf(b, sizeof b, fmt, (int)mn, m);
	*out = strdup(b);
	*len = *out ? (size_t)k : 0;
	return 0;
}

int fandist_answer(const fan_node *nodes, size_t n, const fan_opts *o, const cmd_req *r, char **out,
		   size_t *len)
{
	char err[600];
	char *text = NULL;
	size_t tn;
	fan_reader rd;
	tally_dist *d = NULL;
	*out = NULL;
	int rc = ask_pairs(nodes, n, o, r, &text, &tn, &rd);
	if (rc) {
		answer_err(out, len, "ERR dist: %.*s\n", "out of memory asking the other nodes",
			   36);
	} else if (rd.err) {
		answer_err(out, len, "ERR %.*s\n", rd.err, rd.err_n);
	} else if (fandist_read(&rd, &d, err, sizeof err)) {
		answer_err(out, len, "ERR dist: %.*s\n", err, strlen(err));
	} else {
		char *partial = rd.partial ? strndup(rd.partial, rd.partial_n) : NULL;
		if ((rd.partial && !partial) || dist_format(d, r, partial, out, len))
			answer_err(out, len, "ERR dist: %.*s\n", "out of memory", 13);
		free(partial);
	}
	tally_dist_free(d);
	free(text);
	return *out ? 0 : -ENOMEM;
}

static int tcp_run(srv *s, void *arg, char **out, size_t *len)
{
	dist_job *j = arg;
	char scratch[4096];
	cmd_req r;
	job_req(j, scratch, sizeof scratch, &r);
	fan_opts o = fanserv_opts(s, j->partial, NULL);
	fandist_answer(s->fan_nodes, s->n_fan_nodes, &o, &r, out, len);
	return 0;
}

int fandist_start(wconn *c, const cmd_req *r, uint64_t line, fanjob **out)
{
	dist_job *j = calloc(1, sizeof *j);
	if (!j)
		return -ENOMEM;
	j->partial = c->fan_partial;
	if (job_cmd(j, r)) {
		free(j);
		return -E2BIG;
	}
	int rc = fanserv_call(c, tcp_run, j, free, out);
	if (!rc)
		fanserv_set_line(*out, line);
	return rc;
}

/* ---------------------------------------------------------------- /api/v1/dist */

/* One round trip to every node whatever the step: with step, each node
 * answers every window's pairs at once ("pairs step=STEP"), fan_run puts
 * the windows' rows in time order, and p_dist (httpq.c) merges window
 * after window with fandist_window. A missing node is missing from every
 * window alike, named once after END. */
int64_t fandist_origin(int64_t w0, int64_t step)
{
	int64_t m = w0 % step;
	return m < 0 ? m + step : m;
}

static int http_run(srv *s, void *arg, char **out, size_t *len)
{
	dist_job *j = arg;
	char scratch[4096];
	cmd_req r;
	job_req(j, scratch, sizeof scratch, &r);
	r.step = j->step;
	/* this node's windows, whatever the others' align-offset */
	r.origin = j->step ? fandist_origin(s->conf->align_offset, j->step) : 0;
	r.has_origin = j->step != 0;
	fan_opts o = fanserv_opts(s, j->partial, "partial=mark");
	fan_reader rd;
	if (ask_pairs(s->fan_nodes, s->n_fan_nodes, &o, &r, out, len, &rd))
		return answer_err(out, len, "ERR dist: %.*s\n", "out of memory asking the nodes",
				  30);
	return 0;
}

int fandist_http(wconn *c, const cmd_req *r, int64_t step, int partial, fanjob **out)
{
	dist_job *j = calloc(1, sizeof *j);
	if (!j)
		return -ENOMEM;
	j->partial = partial;
	j->step = step;
	cmd_req q = *r;
	q.step = 0; /* asked with pairs, by http_run */
	if (job_cmd(j, &q)) {
		free(j);
		return -E2BIG;
	}
	return fanserv_call(c, http_run, j, free, out);
}
