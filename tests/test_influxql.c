/*
 * test_influxql.c — wire/influxql.c, the InfluxQL parser, unit by unit:
 * time conditions folded into one half-open range (every operator, now()
 * arithmetic, RFC 3339 with offsets, InfluxDB's space form, epoch
 * durations), GROUP BY, fill, limits, sources, tag conditions, column
 * names, and errors at their line and char; then iq_pretty against Go's
 * indentation. The server around it is tested with real clients and a
 * real InfluxDB by tests/server/influxql_test.py; tests/fuzz/fuzz_influxql.c
 * fuzzes the same code.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "influxql.h"

#define NOW INT64_C(1700000000000000000)
#define S   INT64_C(1000000000)

static iq_query parse_ok(const char *q)
{
	iq_query out;
	char err[IQ_ERR_MAX];
	int rc = iq_parse(q, strlen(q), NOW, &out, err);
	cr_assert_eq(rc, 0, "%s: %s", q, err);
	return out;
}

static void parse_err(const char *q, const char *want)
{
	iq_query out;
	char err[IQ_ERR_MAX];
	int rc = iq_parse(q, strlen(q), NOW, &out, err);
	iq_query_free(&out);
	cr_assert_eq(rc, -1, "%s parsed", q);
	cr_assert(strstr(err, want), "%s: %s, want %s", q, err, want);
}

/* The range one WHERE folds into. */
static void range_is(const char *where, int64_t from, int64_t to)
{
	char q[512];
	snprintf(q, sizeof q, "SELECT count(x) FROM t WHERE %s", where);
	iq_query p = parse_ok(q);
	cr_assert_eq(p.st[0].from, from, "%s: from %lld", where, (long long)p.st[0].from);
	cr_assert_eq(p.st[0].to, to, "%s: to %lld", where, (long long)p.st[0].to);
	iq_query_free(&p);
}

Test(influxql, time_conditions_fold_into_a_half_open_range)
{
	range_is("time >= 100 AND time < 200", 100, 200);
	range_is("time > 100 AND time <= 200", 101, 201);
	range_is("time = 150", 150, 151);
	range_is("time >= 100 AND time >= 120 AND time < 300 AND time < 250", 120, 250);
	range_is("time >= now() - 6h and time <= now()", NOW - 6 * 3600 * S, NOW + 1);
	range_is("time > now() - 1h30m + 10s", NOW - 5400 * S + 10 * S + 1, INT64_MAX);
	range_is("time >= 1700000000000ms and time <= 1700003600000ms", NOW, NOW + 3600 * S + 1);
	range_is("time >= 1700000000s AND time < 1700000001000000u", NOW, NOW + S);
	range_is("time >= '2023-11-14T22:13:20Z'", NOW, INT64_MAX);
	range_is("time >= '2023-11-15T01:13:20.5+03:00'", NOW + S / 2, INT64_MAX);
	range_is("time >= '2023-11-14 22:13:20'", NOW, INT64_MAX);
	range_is("time >= '2023-11-14'", NOW - (22 * 3600 + 13 * 60 + 20) * S, INT64_MAX);
	range_is("\"time\" < '2023-11-14T22:13:20.000000001Z'", INT64_MIN, NOW + 1);
}

Test(influxql, selects_parse_into_their_parts)
{
	iq_query p =
		parse_ok("select MEAN(\"speed\"), count(\"speed\") AS \"n\", mean(speed), "
			 "max(lanes) FROM \"db\"..\"traffic\" WHERE (\"camera\" =~ /^(KV1|KV2)$/ "
			 "OR camera = 'KV\\'3') AND time >= 0 GROUP BY time(5m), \"camera\" "
			 "fill(-2.5) ORDER BY time DESC LIMIT 10 OFFSET 2 SLIMIT 3 SOFFSET 1;");
	cr_assert_eq(p.n, 1);
	iq_stmt *st = &p.st[0];
	cr_assert_eq(st->kind, IQ_SELECT);
	cr_assert_eq(st->n_aggs, 4);
	cr_assert_str_eq(st->aggs[0].column, "mean");
	cr_assert_str_eq(st->aggs[1].column, "n");
	cr_assert_str_eq(st->aggs[2].column, "mean_1");
	cr_assert_str_eq(st->aggs[3].column, "max");
	cr_assert_str_eq(st->aggs[3].field, "lanes");
	cr_assert_str_eq(st->db, "db");
	cr_assert_str_eq(st->table, "traffic");
	cr_assert_eq(st->step, 300 * S);
	cr_assert_str_eq(st->group_tag, "camera");
	cr_assert_eq(st->fill, IQ_FILL_VALUE);
	cr_assert_eq(st->fill_value, -2.5);
	cr_assert(st->desc);
	cr_assert_eq(st->limit, 10);
	cr_assert_eq(st->offset, 2);
	cr_assert_eq(st->slimit, 3);
	cr_assert_eq(st->soffset, 1);
	cr_assert(iq_cond_match(st->where, "KV1"));
	cr_assert(iq_cond_match(st->where, "KV'3"));
	cr_assert(!iq_cond_match(st->where, "KV12"));
	cr_assert(!iq_cond_match(st->where, "KV3"));
	iq_query_free(&p);
}

Test(influxql, several_statements_and_shows)
{
	iq_query p =
		parse_ok("SHOW DATABASES; SHOW MEASUREMENTS ON \"tally\" WITH MEASUREMENT =~ "
			 "/tr/ LIMIT 1; SHOW TAG KEYS FROM traffic; SHOW TAG VALUES FROM "
			 "traffic WITH KEY = \"camera\" WHERE camera != 'x' AND time > now() - 1h; "
			 "SHOW FIELD KEYS; "
			 "SHOW RETENTION POLICIES ON tally");
	cr_assert_eq(p.n, 6);
	cr_assert_eq(p.st[0].kind, IQ_SHOW_DATABASES);
	cr_assert_eq(p.st[1].kind, IQ_SHOW_MEASUREMENTS);
	cr_assert(p.st[1].has_with_re);
	cr_assert_eq(p.st[1].limit, 1);
	cr_assert_eq(p.st[2].kind, IQ_SHOW_TAG_KEYS);
	cr_assert_str_eq(p.st[2].table, "traffic");
	cr_assert_eq(p.st[3].kind, IQ_SHOW_TAG_VALUES);
	cr_assert_str_eq(p.st[3].with, "camera");
	cr_assert(!iq_cond_match(p.st[3].where, "x"));
	cr_assert_eq(p.st[4].kind, IQ_SHOW_FIELD_KEYS);
	cr_assert_eq(p.st[5].kind, IQ_SHOW_RETENTION_POLICIES);
	cr_assert_str_eq(p.st[5].db, "tally");
	iq_query_free(&p);
}

/* SHOW TAG VALUES' WITH KEY takes every form InfluxDB 1.x does: a name,
 * IN a list, a regex, and their negations; WITH MEASUREMENT only = and =~. */
Test(influxql, with_key_in_a_list_regex_and_negations)
{
	iq_query p = parse_ok("SHOW TAG VALUES FROM road WITH KEY IN (\"camera\", lane); "
			      "SHOW TAG VALUES WITH KEY != \"dc\"; "
			      "SHOW TAG VALUES WITH KEY !~ /^d/ WHERE host = 'h1' LIMIT 2");
	cr_assert_eq(p.n, 3);
	cr_assert_eq(p.st[0].n_with_in, 2);
	cr_assert_str_eq(p.st[0].with_in[0], "camera");
	cr_assert_str_eq(p.st[0].with_in[1], "lane");
	cr_assert(!p.st[0].with && !p.st[0].with_not && !p.st[0].has_with_re);
	cr_assert_str_eq(p.st[1].with, "dc");
	cr_assert(p.st[1].with_not);
	cr_assert(p.st[2].has_with_re && p.st[2].with_not);
	cr_assert_eq(p.st[2].limit, 2);
	cr_assert(iq_cond_match(p.st[2].where, "h1"));
	iq_query_free(&p);
	parse_err("SHOW TAG VALUES WITH KEY IN (\"a\" \"b\")",
		  "found \"b\", expected , or ) at line 1, char 34");
	parse_err("SHOW TAG VALUES WITH KEY IN ()",
		  "found ), expected identifier at line 1, char 30");
	parse_err("SHOW TAG VALUES WITH KEY IN \"a\"",
		  "found \"a\", expected ( at line 1, char 29");
	parse_err("SHOW TAG VALUES WITH KEY < \"a\"",
		  "found <, expected =, !=, =~, !~ or IN at line 1, char 26");
	parse_err("SHOW MEASUREMENTS WITH MEASUREMENT IN (a)",
		  "WITH MEASUREMENT IN, != or !~ is not supported by tally at line 1, char 36");
}

Test(influxql, median_and_percentile_parse_with_their_argument)
{
	iq_query p = parse_ok("SELECT PERCENTILE(\"speed\", 85), percentile(speed, 99.5) AS v995, "
			      "median(speed), MEDIAN(\"speed\"), percentile(speed, 5e1), "
			      "count(speed) FROM traffic GROUP BY time(1h), camera");
	iq_stmt *st = &p.st[0];
	cr_assert_eq(st->n_aggs, 6);
	cr_assert_eq(st->aggs[0].fn, IQ_PERCENTILE);
	cr_assert_eq(st->aggs[0].pct, 85);
	cr_assert_str_eq(st->aggs[0].field, "speed");
	cr_assert_str_eq(st->aggs[0].column, "percentile");
	cr_assert_eq(st->aggs[1].pct, 99.5);
	cr_assert_str_eq(st->aggs[1].column, "v995");
	cr_assert_eq(st->aggs[2].fn, IQ_MEDIAN);
	cr_assert_str_eq(st->aggs[2].column, "median");
	cr_assert_str_eq(st->aggs[3].column, "median_1");
	cr_assert_eq(st->aggs[4].pct, 50);
	cr_assert_str_eq(st->aggs[4].column, "percentile_1");
	cr_assert_eq(st->aggs[5].fn, IQ_COUNT);
	iq_query_free(&p);
}

Test(influxql, errors_name_what_and_where)
{
	parse_err("", "found EOF, expected SELECT or SHOW at line 1, char 1");
	parse_err("SELECT mean(x) FROM t\nWHERE time >= now() -",
		  "expected duration at line 2, char 22");
	parse_err("SELECT mean(x) FROM t WHERE camera = 'A",
		  "found 'A, expected string at line 1, char 38");
	parse_err("SELECT first(x) FROM t",
		  "first() (only mean, count, sum, min, max, median or "
		  "percentile) is not supported by tally at line 1, char 8");
	parse_err("SELECT percentile(x) FROM t",
		  "percentile() needs two arguments: a field and a number at line 1, char 20");
	parse_err("SELECT percentile(x, now()) FROM t",
		  "found now, expected a number (the percentile) at line 1, char 22");
	parse_err("SELECT percentile(x 85) FROM t", "found 85, expected , at line 1, char 21");
	parse_err("SELECT percentile(x, 85, 3) FROM t",
		  "a second argument to an aggregate is not supported by tally at line 1, char 24");
	parse_err("SELECT median(x, 50) FROM t",
		  "a second argument to an aggregate is not supported by tally at line 1, char 16");
	parse_err("SELECT mean(x) * 2 FROM t",
		  "arithmetic on aggregates is not supported by tally at line 1, char 16");
	parse_err("SELECT mean(x) FROM /t.*/",
		  "a regex in FROM is not supported by tally at line 1, char 21");
	parse_err("SELECT mean(x) FROM t, u",
		  "more than one measurement in FROM is not supported by tally at line 1, char 22");
	parse_err("SELECT mean(x) FROM t GROUP BY *",
		  "GROUP BY * is not supported by tally at line 1, char 32");
	parse_err("SELECT mean(x) FROM t GROUP BY a, b",
		  "GROUP BY more than one tag is not supported by tally at line 1, char 35");
	parse_err("SELECT mean(x) FROM t GROUP BY time(0s)",
		  "positive duration at line 1, char 37");
	parse_err("SELECT mean(x) FROM t ORDER BY camera",
		  "ORDER BY anything but time is not supported by tally at line 1, char 32");
	parse_err("SELECT mean(x) FROM t LIMIT 5 tz('Europe/Moscow')",
		  "tz() is not supported by tally at line 1, char 31");
	parse_err("SELECT mean(x) FROM t WHERE time >= '2023-13-01T00:00:00Z'",
		  "unable to parse time '2023-13-01T00:00:00Z' (RFC 3339 expected) at line 1, char "
		  "37");
	parse_err("SELECT mean(x) FROM t WHERE time > 99999999999999999999",
		  "time out of range at line 1, char 36");
	parse_err("SELECT mean(x) FROM t WHERE (camera = 'a' OR (time > 0))",
		  "a time condition inside OR is not supported by tally at line 1, char 47");
	parse_err("SHOW SERIES", "SHOW SERIES is not supported by tally at line 1, char 6");
	parse_err("SELECT mean(x) FROM t extra", "found extra, expected GROUP BY, fill, ORDER BY, "
						 "LIMIT, OFFSET or ; at line 1, char 23");
	parse_err("SELECT mean(x) FROM \"t", "found \"t, expected measurement at line 1, char 21");
}

Test(influxql, parentheses_nest_only_so_deep)
{
	char q[600] = "SELECT mean(x) FROM t WHERE ";
	for (int i = 0; i < 100; i++)
		strcat(q, "(");
	strcat(q, "a = 'b'");
	parse_err(q, "conditions nested too deep");
}

Test(influxql, pretty_is_go_s_indentation)
{
	const char *in = "{\"results\":[{\"statement_id\":0,\"series\":[{\"name\":\"a,b\","
			 "\"columns\":[\"time\"],\"values\":[[1,\"x]\"]]}]},{\"statement_id\":1}],"
			 "\"e\":[]}";
	iq_buf out = {0};
	iq_pretty(in, strlen(in), &out);
	iq_put(&out, "", 1);
	cr_assert_str_eq(out.p, "{\n"
				"    \"results\": [\n"
				"        {\n"
				"            \"statement_id\": 0,\n"
				"            \"series\": [\n"
				"                {\n"
				"                    \"name\": \"a,b\",\n"
				"                    \"columns\": [\n"
				"                        \"time\"\n"
				"                    ],\n"
				"                    \"values\": [\n"
				"                        [\n"
				"                            1,\n"
				"                            \"x]\"\n"
				"                        ]\n"
				"                    ]\n"
				"                }\n"
				"            ]\n"
				"        },\n"
				"        {\n"
				"            \"statement_id\": 1\n"
				"        }\n"
				"    ],\n"
				"    \"e\": []\n"
				"}");
	free(out.p);
}

Test(influxql, epoch_units)
{
	cr_assert_eq(iq_epoch_unit("ns"), 1);
	cr_assert_eq(iq_epoch_unit("u"), 1000);
	cr_assert_eq(iq_epoch_unit("\xc2\xb5"), 1000);
	cr_assert_eq(iq_epoch_unit("ms"), 1000000);
	cr_assert_eq(iq_epoch_unit("s"), S);
	cr_assert_eq(iq_epoch_unit("m"), 60 * S);
	cr_assert_eq(iq_epoch_unit("h"), 3600 * S);
	cr_assert_eq(iq_epoch_unit("d"), -1);
}
