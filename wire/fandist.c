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
 * the V85 one node holding everything answers.
 */
#include "fandist.h"

#include <errno.h>
#include <inttypes.h>
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

/* The pairs of one node's part, gathered until its kind or resolution
 * changes (the next node's), then merged into the whole. */
typedef struct pacc {
	int64_t *v;
	uint64_t *c;
	size_t n, cap;
	int32_t exp;
	int sketch;
	tally_dist *whole;
	char *err;
	size_t err_cap;
} pacc;

static int pacc_flush(pacc *a)
{
	if (!a->n && a->whole)
		return 0;
	tally_dist *d;
	int rc = dist_from_pairs(a->exp, a->sketch, a->v, a->c, a->n, &d);
	if (!rc && !a->whole) {
		a->whole = d;
	} else if (!rc) {
		rc = tally_dist_merge(a->whole, d); /* sketch-aware; one resolution */
		tally_dist_free(d);
	}
	if (rc)
		snprintf(a->err, a->err_cap, "the nodes' distributions do not merge: %s",
			 tally_errmsg());
	a->n = 0;
	return rc;
}

static int pacc_add(pacc *a, const char *row, size_t n, unsigned j0, uint64_t at)
{
	long long exp, v, c;
	size_t kn;
	const char *kind = fan_cell(row, n, j0 + 1, &kn);
	int sketch = kind && kn == 6 && !memcmp(kind, "sketch", 6);
	if (cell_int(row, n, j0, &exp) || cell_int(row, n, j0 + 2, &v) ||
	    cell_int(row, n, j0 + 3, &c) || c <= 0 || exp < -99 || exp > 99 ||
	    !(sketch || (kind && kn == 5 && !memcmp(kind, "exact", 5)))) {
		snprintf(a->err, a->err_cap,
			 "row %" PRIu64 " of the nodes' distributions is not "
			 "EXP\\tKIND\\tUNITS\\tCOUNT: '%.60s'",
			 at, row);
		return TALLY_EINVAL;
	}
	if (a->n && (a->exp != (int32_t)exp || a->sketch != sketch)) {
		int rc = pacc_flush(a);
		if (rc)
			return rc;
	}
	a->exp = (int32_t)exp;
	a->sketch = sketch;
	if (a->n == a->cap) {
		size_t nc = a->cap ? a->cap * 2 : 1024;
		int64_t *nv = realloc(a->v, nc * sizeof *nv);
		if (nv)
			a->v = nv;
		uint64_t *ncn = nv ? realloc(a->c, nc * sizeof *ncn) : NULL;
		if (!ncn) {
			snprintf(a->err, a->err_cap, "out of memory merging the distributions");
			return -ENOMEM;
		}
		a->c = ncn;
		a->cap = nc;
	}
	a->v[a->n] = (int64_t)v;
	a->c[a->n++] = (uint64_t)c;
	return 0;
}

/* The rows of rd from its next one (j0 1: only those whose first cell is
 * the time lo) merged into *out. */
static int read_rows(fan_reader *rd, unsigned j0, int64_t lo, tally_dist **out, char *err,
		     size_t cap)
{
	pacc a = {.err = err, .err_cap = cap};
	const char *row;
	size_t n;
	uint64_t at = 0;
	int rc = 0;
	for (;;) {
		const char *before = rd->p;
		if (!fan_reader_next(rd, &row, &n))
			break;
		if (j0 && fan_cell_time(row, n, 0) != lo) {
			rd->p = before; /* the next window's */
			break;
		}
		if ((rc = pacc_add(&a, row, n, j0, ++at)))
			break;
	}
	if (!rc)
		rc = pacc_flush(&a);
	free(a.v);
	free(a.c);
	if (rc) {
		tally_dist_free(a.whole);
		return rc;
	}
	*out = a.whole;
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
	int64_t step, ws; /* /api/v1/dist's windows */
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
		     char **text, fan_reader *rd)
{
	cmd_req p = *r;
	p.stats[0] = "pairs";
	p.n_stats = 1;
	size_t len;
	int rc = fan_ask(nodes, n, o, &p, text, &len);
	if (!rc)
		fan_reader_open(rd, *text, len);
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

static int tcp_run(srv *s, void *arg, char **out, size_t *len)
{
	dist_job *j = arg;
	char scratch[4096], err[600];
	cmd_req r;
	job_req(j, scratch, sizeof scratch, &r);
	fan_opts o = fanserv_opts(s, j->partial, NULL);
	char *text = NULL;
	fan_reader rd;
	tally_dist *d = NULL;
	int rc = ask_pairs(s->fan_nodes, s->n_fan_nodes, &o, &r, &text, &rd);
	if (rc) {
		answer_err(out, len, "ERR dist: %.*s\n", "out of memory asking the other nodes",
			   36);
	} else if (rd.err) {
		answer_err(out, len, "ERR %.*s\n", rd.err, rd.err_n);
	} else if (fandist_read(&rd, &d, err, sizeof err)) {
		answer_err(out, len, "ERR dist: %.*s\n", err, strlen(err));
	} else {
		char *partial = rd.partial ? strndup(rd.partial, rd.partial_n) : NULL;
		if ((rd.partial && !partial) || dist_format(d, &r, partial, out, len))
			answer_err(out, len, "ERR dist: %.*s\n", "out of memory", 13);
		free(partial);
	}
	tally_dist_free(d);
	free(text);
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

/* Drops from alive[0, *n) the nodes a marked answer named as missing
 * ("HOST:PORT (why); ..."): a window each would wait out peer-timeout. */
static void drop_missing(fan_node *alive, size_t *n, const char *names, size_t nn)
{
	size_t k = 0;
	for (size_t i = 0; i < *n; i++) {
		char nm[300];
		snprintf(nm, sizeof nm, "%s:%s (", alive[i].host, alive[i].port);
		if (!memmem(names, nn, nm, strlen(nm)))
			alive[k++] = alive[i];
	}
	*n = k;
}

static int http_run(srv *s, void *arg, char **out, size_t *len)
{
	dist_job *j = arg;
	char scratch[4096], err[600];
	cmd_req r;
	job_req(j, scratch, sizeof scratch, &r);
	fan_opts o = fanserv_opts(s, j->partial, "partial=mark");
	fan_node *alive = malloc(s->n_fan_nodes * sizeof *alive);
	size_t n_alive = s->n_fan_nodes, rows = 0;
	char *buf = NULL, *missing = NULL;
	size_t blen = 0, mlen = 0;
	FILE *f = open_memstream(&buf, &blen);
	FILE *mf = open_memstream(&missing, &mlen);
	if (!alive || !f || !mf) {
		if (f)
			fclose(f);
		if (mf)
			fclose(mf);
		free(buf);
		free(missing);
		free(alive);
		return answer_err(out, len, "ERR dist: %.*s\n", "out of memory", 13);
	}
	memcpy(alive, s->fan_nodes, s->n_fan_nodes * sizeof *alive);
	/* the header line first: fan_reader_open takes the first line as it */
	fputs("start\texp\tkind\tunits\tcount\n", f);
	int failed = 0;
	int64_t from = r.from, to = r.to;
	for (int64_t ws = j->ws; ws < to && !failed;) {
		int64_t lo = ws < from ? from : ws;
		int64_t hi = !j->step || to - ws <= j->step ? to : ws + j->step;
		r.from = lo;
		r.to = hi;
		char *text = NULL;
		fan_reader rd;
		tally_dist *d = NULL;
		if (ask_pairs(alive, n_alive, &o, &r, &text, &rd)) {
			answer_err(out, len, "ERR dist: %.*s\n", "out of memory asking the nodes",
				   30);
			failed = 1;
		} else if (rd.err) {
			answer_err(out, len, "ERR %.*s\n", rd.err, rd.err_n);
			failed = 1;
		} else if (fandist_read(&rd, &d, err, sizeof err)) {
			answer_err(out, len, "ERR dist: %.*s\n", err, strlen(err));
			failed = 1;
		} else {
			if (rd.partial) {
				fprintf(mf, "%s%.*s", mlen || ftell(mf) ? "; " : "",
					(int)rd.partial_n, rd.partial);
				drop_missing(alive, &n_alive, rd.partial, rd.partial_n);
			}
			int32_t exp;
			int sketch;
			uint32_t np;
			const int64_t *v;
			const uint64_t *c;
			dist_pairs(d, &exp, &sketch, &np, &v, &c);
			char t[48];
			cmd_format_time(lo, t);
			for (uint32_t i = 0; i < np; i++, rows++)
				fprintf(f, "%s\t%d\t%s\t%lld\t%llu\n", t, (int)exp,
					sketch ? "sketch" : "exact", (long long)v[i],
					(unsigned long long)c[i]);
		}
		tally_dist_free(d);
		free(text);
		ws = hi;
	}
	fclose(mf);
	if (!failed) {
		/* after the header and the rows, END */
		fprintf(f, "END %zu%s%s\n", rows, mlen ? " PARTIAL " : "", mlen ? missing : "");
	}
	fclose(f);
	free(missing);
	free(alive);
	if (failed) {
		free(buf);
		return 0;
	}
	*out = buf;
	*len = blen;
	return 0;
}

int fandist_http(wconn *c, const cmd_req *r, int64_t step, int64_t ws, int partial, fanjob **out)
{
	dist_job *j = calloc(1, sizeof *j);
	if (!j)
		return -ENOMEM;
	j->partial = partial;
	j->step = step;
	j->ws = ws;
	if (job_cmd(j, r)) {
		free(j);
		return -E2BIG;
	}
	return fanserv_call(c, http_run, j, free, out);
}
