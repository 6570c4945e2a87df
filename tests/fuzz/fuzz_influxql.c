/*
 * fuzz_influxql.c — libFuzzer target: the InfluxQL parser of /query
 * (wire/influxql.c).
 *
 * For any input: iq_parse returns 0 with between 1 and IQ_STMTS_MAX
 * statements, each well formed (a SELECT has 1..IQ_FIELDS_MAX aggregates,
 * each with a field and a column name, a known function, a positive step
 * or none, a non-negative LIMIT), or -1 with an InfluxDB-shaped message
 * whose line and char lie inside the input; parsing twice gives the same
 * answer; conditions can be evaluated on any key; iq_query_free frees
 * everything (ASan's leak check).
 *
 *   tests/fuzz/build fuzz_influxql build-fuzz/fuzz_influxql
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../wire/cmd.c"
#include "../../wire/influxql.c"
#include "../../wire/numfmt.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                 \
	do {                     \
		if (!(c))        \
			abort(); \
	} while (0)

/* The line and char the message names lie inside the input (its end
 * included: EOF is found there). */
static void check_position(const char *err, const char *q, size_t n)
{
	/* the last " at line ": a token quoted in the message may hold one */
	const char *at = NULL;
	for (const char *p = strstr(err, " at line "); p; p = strstr(p + 1, " at line "))
		at = p;
	CHECK(!strncmp(err, "error parsing query: ", 21) && at);
	unsigned line = 0, ch = 0;
	CHECK(sscanf(at, " at line %u, char %u", &line, &ch) == 2);
	unsigned lines = 1, last = 1;
	for (size_t i = 0; i < n; i++)
		if (q[i] == '\n') {
			lines++;
			last = 1;
		} else {
			last++;
		}
	CHECK(line >= 1 && line <= lines && ch >= 1 && ch <= n + 1);
	if (line == lines)
		CHECK(ch <= last);
}

static void check_stmt(const iq_stmt *st)
{
	CHECK(st->kind <= IQ_SHOW_RETENTION_POLICIES);
	CHECK(st->limit >= 0 && st->offset >= 0 && st->slimit >= 0 && st->soffset >= 0);
	CHECK(st->step >= 0);
	CHECK(!st->has_from || st->from != INT64_MIN || st->kind == IQ_SELECT);
	if (st->kind != IQ_SELECT)
		return;
	CHECK(st->n_aggs >= 1 && st->n_aggs <= IQ_FIELDS_MAX && st->table);
	for (unsigned i = 0; i < st->n_aggs; i++) {
		CHECK(st->aggs[i].fn < IQ_FUNCS && st->aggs[i].field && st->aggs[i].column);
		for (unsigned j = 0; j < i; j++)
			CHECK(strcmp(st->aggs[i].column, st->aggs[j].column) ||
			      st->aggs[i].column != st->aggs[j].column);
	}
	/* any key, matched or not */
	(void)iq_cond_match(st->where, "");
	(void)iq_cond_match(st->where, "KV1");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *q = (const char *)data;
	char err[IQ_ERR_MAX], err2[IQ_ERR_MAX];
	iq_query a, b;
	int rc = iq_parse(q, size, 1700000000000000000, &a, err);
	int rc2 = iq_parse(q, size, 1700000000000000000, &b, err2);
	CHECK(rc == rc2 && a.n == b.n);
	if (rc) {
		CHECK(rc == -1 && strlen(err) < IQ_ERR_MAX && !strcmp(err, err2));
		check_position(err, q, size);
	} else {
		CHECK(a.n >= 1 && a.n <= IQ_STMTS_MAX);
		for (unsigned i = 0; i < a.n; i++) {
			check_stmt(&a.st[i]);
			CHECK(a.st[i].from == b.st[i].from && a.st[i].to == b.st[i].to);
			CHECK(a.st[i].step == b.st[i].step && a.st[i].n_aggs == b.st[i].n_aggs);
		}
	}
	iq_query_free(&a);
	iq_query_free(&b);
	return 0;
}
