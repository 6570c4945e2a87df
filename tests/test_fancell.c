/*
 * test_fancell.c — a merged answer's cells read back exactly.
 *
 * The fan-out reads the numbers and times the nodes wrote (fan_cell_agg,
 * fan_cell_time) on a fast path of its own rather than through strtod
 * and cmd_parse_time. Whatever the path, a cell must read back as the
 * very double or instant that was written: random doubles of every
 * magnitude written by cmd_format_double, and random instants over the
 * whole range of int64 nanoseconds written by cmd_format_time, read back
 * bit for bit, and equal what strtod and cmd_parse_time make of the same
 * text; so do the forms the fast path leaves to them.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "cmd.h"
#include "fanout.h"
#include "numfmt.h"
#include "testutil.h"

/* A double of some kind: small integers, cents, short decimals, any bits. */
static double some_double(tu_rng *s)
{
	uint64_t r = tu_next(s);
	double v;
	switch (r % 5) {
	case 0: v = (double)(int64_t)(tu_next(s) % 2000001) - 1000000; break;
	case 1: v = (double)(int64_t)(tu_next(s) % 2000001 - 1000000) / 100; break;
	case 2:
		v = (double)(tu_next(s) % 100000) * pow(10, (double)(int)(tu_next(s) % 60) - 30);
		break;
	case 3: v = (double)(tu_next(s) >> 11) / 9007199254740992.0; break;
	default: {
		uint64_t bits = tu_next(s);
		memcpy(&v, &bits, sizeof v);
		if (!isfinite(v))
			v = 0.5;
	}
	}
	return (r >> 8) & 1 ? -v : v;
}

static void expect_same(double got, double want, const char *text)
{
	cr_assert(memcmp(&got, &want, sizeof got) == 0 || (isnan(got) && isnan(want)),
		  "'%s' read back as %.17g, not %.17g", text, got, want);
}

/* count, sum, min, max cells as a node writes them, read back exactly. */
Test(fancell, agg_cells_read_back_bit_for_bit)
{
	tu_rng seed = {17};
	char row[512];
	for (int i = 0; i < 200000; i++) {
		tally_agg a = {.count = tu_next(&seed) % 100000 + 1};
		a.sum = some_double(&seed);
		a.min = some_double(&seed);
		a.max = some_double(&seed);
		a.avg = a.sum / (double)a.count;
		char *e = cmd_put_agg(row, &a);
		e[-1] = 0; /* the '\n' */
		tally_agg b = fan_cell_agg(row, (size_t)(e - 1 - row), 0);
		cr_assert_eq(b.count, a.count, "%s", row);
		expect_same(b.sum, a.sum, row);
		expect_same(b.min, a.min, row);
		expect_same(b.max, a.max, row);
		expect_same(b.avg, a.avg, row);
	}
}

/* Forms no node writes but a cell may hold: the same double as strtod. */
Test(fancell, other_forms_read_as_strtod_does)
{
	static const char *const cells[] = {
		"0",
		"-0",
		"1e22",
		"1e23",
		"9007199254740993",
		"1.5e-22",
		"1.5e-23",
		"123456789012345678901",
		"0.1",
		"-2.5E+3",
		"1e",
		"1e+",
		".5",
		"5.",
		"inf",
		"-inf",
		"nan",
		"0x10",
		"+7",
		" 7",
		"1e-400",
		"1e400",
		"00000000000000000000001",
		"4.9e-324",
		"1e0009",
	};
	for (size_t i = 0; i < sizeof cells / sizeof *cells; i++) {
		char row[128];
		int n = snprintf(row, sizeof row, "1\t%s\t%s\t%s", cells[i], cells[i], cells[i]);
		tally_agg b = fan_cell_agg(row, (size_t)n, 0);
		expect_same(b.sum, strtod(cells[i], NULL), cells[i]);
		expect_same(b.max, strtod(cells[i], NULL), cells[i]);
	}
	/* empty cells and missing ones: NaN */
	tally_agg e = fan_cell_agg("0\t0\t\t", 5, 0);
	cr_assert_eq(e.count, 0);
	cr_assert(isnan(e.min) && isnan(e.max));
	e = fan_cell_agg("3\t6", 3, 0);
	cr_assert_eq(e.count, 3);
	cr_assert(e.sum == 6 && isnan(e.min) && isnan(e.max));
}

/* Instants over all of int64 ns (1677..2262), each precision, read back. */
Test(fancell, times_read_back_exactly)
{
	tu_rng seed = {5};
	char row[128], cellb[64];
	for (int i = 0; i < 200000; i++) {
		int64_t t = (int64_t)tu_next(&seed);
		switch (i % 4) {
		case 0: t -= t % 1000000000; break;
		case 1: t -= t % 1000000; break;
		case 2: t -= t % 1000; break;
		default: break;
		}
		if (i % 8 == 7) /* rows of one day, as a series writes them */
			t = INT64_C(1748822400000000000) +
			    (int64_t)(tu_next(&seed) % 288) * 300000000000;
		cmd_format_time(t, cellb);
		int n = snprintf(row, sizeof row, "x\t%s\t1", cellb);
		cr_assert_eq(fan_cell_time(row, (size_t)n, 1), t, "%s", cellb);
	}
}

/* Times the fast path leaves to cmd_parse_time, or that are no time:
 * what cmd_parse_time makes of them (INT64_MIN: not a time). */
Test(fancell, other_times_read_as_cmd_parse_time_does)
{
	static const char *const cells[] = {
		"2024-02-29T12:00:00Z",
		"2023-02-29T12:00:00Z",
		"2024-02-30T00:00:00Z",
		"2024-04-31T00:00:00Z",
		"2024-12-31T23:59:60Z",
		"2024-13-01T00:00:00Z",
		"2024-00-01T00:00:00Z",
		"2024-01-00T00:00:00Z",
		"2024-01-01T24:00:00Z",
		"2024-01-01T00:60:00Z",
		"2024-01-01t00:00:00z",
		"2024-01-01T00:00:00+02:00",
		"2024-01-01T00:00:00.5Z",
		"2024-01-01T00:00:00.12Z",
		"2024-01-01T00:00:00.1234Z",
		"2024-01-01T0a:00:00Z",
		"2024-01-01T00:00:00.12aZ",
		"1677-09-21T00:12:43.145224192Z",
		"1677-09-21T00:12:43.145224191Z",
		"2262-04-11T23:47:16.854775807Z",
		"2262-04-11T23:47:16.854775808Z",
		"1600-01-01T00:00:00Z",
		"9999-12-31T00:00:00Z",
		"1700000000s",
		"2024-01-01",
		"2024-01-01T00:00Z",
		"now",
		"",
		"2024-01-01X00:00:00Z",
	};
	for (size_t i = 0; i < sizeof cells / sizeof *cells; i++) {
		int64_t want;
		if (cmd_parse_time(cells[i], 0, &want))
			want = INT64_MIN;
		char row[128];
		int n = snprintf(row, sizeof row, "%s\t1", cells[i]);
		/* twice: the second read meets the day kept from the first */
		cr_assert_eq(fan_cell_time(row, (size_t)n, 0), want, "%s", cells[i]);
		cr_assert_eq(fan_cell_time(row, (size_t)n, 0), want, "%s", cells[i]);
	}
}
