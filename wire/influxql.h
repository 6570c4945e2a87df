/*
 * influxql.h — the InfluxQL subset tallyd answers on /query (internal to
 * wire/; docs/http.md, "InfluxQL"): a parser (influxql.c, no engine
 * dependency, so a fuzz target links it alone) and an executor
 * (influxq_exec.c) that plans each SELECT onto the engine's rollup queries
 * and writes InfluxDB 1.x's JSON.
 */
#ifndef TALLY_INFLUXQL_H
#define TALLY_INFLUXQL_H

#include <regex.h>
#include <stddef.h>
#include <stdint.h>

#include "tally.h"

#define IQ_FIELDS_MAX 32  /* aggregates in one SELECT */
#define IQ_STMTS_MAX  64  /* statements in one query */
#define IQ_ERR_MAX    320 /* an error message, NUL included */
#define IQ_DEPTH_MAX  64  /* nesting of parentheses in WHERE */
/* Most windows x aggregates one SELECT may produce over all its series
 * (InfluxDB's max-select-buckets): a tally_agg each in memory (40 bytes)
 * and a cell each in the answer; past it the statement is refused,
 * naming it. */
#define IQ_MAX_WINDOWS 1000000
/* Most distributions (windows x keys x fields) the medians and
 * percentiles of one SELECT may ask the engine for: each is a query of
 * its own (tally_query_dist), so this bounds how long one statement
 * holds its shard's thread. */
#define IQ_MAX_DIST_QUERIES 200000

enum iq_kind {
	IQ_SELECT = 0,
	IQ_SHOW_DATABASES,
	IQ_SHOW_MEASUREMENTS,
	IQ_SHOW_TAG_KEYS,
	IQ_SHOW_TAG_VALUES,
	IQ_SHOW_FIELD_KEYS,
	IQ_SHOW_RETENTION_POLICIES,
};

/* median and percentile answer from a field's exact distribution
 * (tally_query_dist), in InfluxDB's conventions (influxq_exec.c). */
enum iq_func { IQ_MEAN = 0, IQ_COUNT, IQ_SUM, IQ_MIN, IQ_MAX, IQ_MEDIAN, IQ_PERCENTILE, IQ_FUNCS };
extern const char *const iq_func_names[];

enum iq_fill { IQ_FILL_NULL = 0, IQ_FILL_NONE, IQ_FILL_VALUE, IQ_FILL_PREVIOUS };

/* A condition of WHERE on tags: a leaf compares a tag with a string
 * (= !=) or a regex (=~ !~); inner nodes are AND and OR. */
enum iq_cond_kind { IQ_C_EQ = 0, IQ_C_NE, IQ_C_RE, IQ_C_NRE, IQ_C_AND, IQ_C_OR };

typedef struct iq_cond {
	enum iq_cond_kind kind;
	char *tag, *val; /* leaves */
	regex_t re;      /* IQ_C_RE, IQ_C_NRE */
	struct iq_cond *l, *r;
} iq_cond;

typedef struct iq_agg {
	enum iq_func fn;
	char *field;
	char *column; /* the answer's column name: the alias, else the function's */
	double pct;   /* IQ_PERCENTILE: its second argument, as written */
} iq_agg;

typedef struct iq_stmt {
	enum iq_kind kind;
	iq_agg aggs[IQ_FIELDS_MAX];
	unsigned n_aggs;
	char *db, *table; /* NULL when not named */
	/* Time bounds, [from, to); has_*: the statement named one. */
	int64_t from, to;
	int has_from, has_to;
	iq_cond *where; /* tag conditions, NULL: every key */
	int64_t step;   /* GROUP BY time(step); 0: none */
	char *group_tag;
	enum iq_fill fill;
	double fill_value;
	int desc;
	int64_t limit, offset, slimit, soffset; /* 0: none */
	/* SHOW MEASUREMENTS WITH MEASUREMENT =~ /re/ or = 'name';
	 * SHOW TAG VALUES WITH KEY = "tag", =~ /re/, IN ("a", "b"), and
	 * with_not set, != "tag" or !~ /re/ */
	char *with;
	regex_t with_re;
	int has_with_re, with_not;
	char **with_in;
	unsigned n_with_in;
} iq_stmt;

typedef struct iq_query {
	iq_stmt *st;
	unsigned n;
} iq_query;

/*
 * Parses q[0, n) (statements separated by ';'). now is the time now() means,
 * ns. Returns 0, or -1 with err an InfluxDB-shaped message ("error parsing
 * query: found X, expected Y at line 1, char 8"; the subset's limits are
 * named the same way: "... is not supported by tally at line 1, char 8").
 * iq_query_free frees what it allocated either way.
 */
int iq_parse(const char *q, size_t n, int64_t now, iq_query *out, char err[IQ_ERR_MAX]);
void iq_query_free(iq_query *q);

/* Whether a key matches a condition (tags other than the key tag were
 * refused before). */
int iq_cond_match(const iq_cond *c, const char *key);

/* ------------------------------------------------------------ executing */

/* A growing answer. */
typedef struct iq_buf {
	char *p;
	size_t n, cap;
	int oom;
} iq_buf;

void iq_put(iq_buf *b, const char *s, size_t n);
void iq_puts(iq_buf *b, const char *s);
void iq_put_json_str(iq_buf *b, const char *s, size_t n);

/*
 * Where SELECT and SHOW TAG VALUES read their numbers: this node's engine
 * (no iq_src), or every node of a cluster (wire/fanserv.c). Each call
 * returns 0, TALLY_ENOTFOUND (no such table or field on any node:
 * nothing), or IQ_EREMOTE with the reason in err (IQ_ERR_MAX bytes).
 * keys calls each(arg, key) for every key with events of field in
 * [from, to), in key order; each returns 0 or -ENOMEM, which ends it.
 */
#define IQ_EREMOTE (-121) /* -EREMOTEIO */
typedef struct iq_src iq_src;
struct iq_src {
	int (*agg)(iq_src *s, const char *table, const char *field, const char *key, int64_t from,
		   int64_t to, tally_agg *a, char *err);
	int (*series)(iq_src *s, const char *table, const char *field, const char *key,
		      int64_t step, int64_t from, int64_t to, tally_bucket *out, size_t cap,
		      size_t *n, char *err);
	int (*keys)(iq_src *s, const char *table, const char *field, int64_t from, int64_t to,
		    int (*each)(void *arg, const char *key), void *arg, char *err);
	/* the exact distribution of key's field over [from, to) (every node's
	 * merged: wire/fandist.c); free it with tally_dist_free */
	int (*dist)(iq_src *s, const char *table, const char *field, const char *key, int64_t from,
		    int64_t to, tally_dist **out, char *err);
	/* the same for each of nwin windows of step from w0 (each cut to
	 * [from, to)) into out[0, nwin), asked of every node once; NULL:
	 * dist window by window. On failure nothing is left in out */
	int (*dists)(iq_src *s, const char *table, const char *field, const char *key, int64_t step,
		     int64_t w0, int64_t from, int64_t to, size_t nwin, tally_dist **out,
		     char *err);
	/* every node's catalog, their union sorted (wire/fancat.c): each(arg,
	 * table, key tag or "", column, type) per column of every table */
	int (*catalog)(iq_src *s,
		       int (*each)(void *arg, const char *table, const char *key_tag,
				   const char *column, const char *type),
		       void *arg, char *err);
	int mark;                 /* partial=mark: a missing node is named, not an error */
	char missing[IQ_ERR_MAX]; /* the nodes this statement missed; "" */
};

/* What a /query request says besides q. */
typedef struct iq_params {
	const char *db; /* NULL: none */
	int64_t epoch;  /* times as integers in this unit, ns; 0: RFC 3339 */
	int pretty;
	int64_t now; /* ns */
	iq_src *src; /* NULL: this node's engine */
} iq_params;

/*
 * Answers the query q[0, n): 200 with InfluxDB's {"results":[...]} (a
 * statement that fails carries its error, the ones after it "not
 * executed"), or 400 with {"error":...} when q does not parse. The body
 * goes to *out; returns the HTTP status.
 */
int iq_serve(tally_db *db, const char *q, size_t n, const iq_params *p, iq_buf *out);

/*
 * A /query request: its parameters (q, db, epoch, pretty) from the query
 * string and a POST's form body (the body's win, as in InfluxDB), then
 * iq_serve. *out (malloc'ed, *len bytes) is the JSON body; returns the
 * HTTP status.
 */
int influxq_http(tally_db *db, const char *query, size_t query_n, const char *body, size_t body_n,
		 int64_t now, char **out, size_t *len);
/* The same reading its numbers from src (see iq_src); partial=fail|mark
 * says whether a node that does not answer fails the statement or is
 * named in its "messages" (docs/cluster.md). */
int influxq_http_src(tally_db *db, iq_src *src, const char *query, size_t query_n, const char *body,
		     size_t body_n, int64_t now, char **out, size_t *len);

/* The epoch= parameter: ns, u, µ, ms, s, m, h; the unit in ns, or -1. */
int64_t iq_epoch_unit(const char *s);

/* Reindents compact JSON as Go's json.MarshalIndent(v, "", "    ") does
 * (pretty=true). */
void iq_pretty(const char *json, size_t n, iq_buf *out);

#endif
