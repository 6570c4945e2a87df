/*
 * test_times.c — times as users type them in queries (wire/cmd.c):
 * integers since the epoch with and without a unit.
 *
 * What broke: `tally query ... 1735689600 ...` (Unix seconds) was read as
 * nanoseconds, 1970-01-01T00:00:01.7Z, and the query silently answered
 * nothing. A bare integer of that magnitude is now refused with the
 * reading it probably meant; a unit (s, ms, us, ns) says what it is.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "cmd.h"

#define SEC  INT64_C(1000000000)
#define T_S  INT64_C(1735689600) /* 2025-01-01T00:00:00Z in seconds */
#define T_NS (T_S * SEC)

static int parse(const char *line, cmd_req *r, char *err)
{
	static char scratch[512];
	return cmd_parse(line, strlen(line), scratch, sizeof scratch, 0, r, err, CMD_ERR_MAX);
}

Test(times, unix_seconds_read_as_ns_are_refused_with_a_hint)
{
	char err[CMD_ERR_MAX];
	cmd_req r;
	cr_assert_neq(parse("#!agg traffic speed KV00001 1735689600 1d", &r, err), 0);
	cr_assert(strstr(err, "from: 1735689600 read as nanoseconds is 1970-01-01T00:00:01"), "%s",
		  err);
	cr_assert(strstr(err, "write 1735689600s (2025-01-01T00:00:00Z)"), "%s", err);
	/* milliseconds and microseconds get their own hint; so does to */
	cr_assert_neq(parse("#!agg t f k 2025-01-01 1735776000000", &r, err), 0);
	cr_assert(strstr(err, "to: 1735776000000 read as nanoseconds"), "%s", err);
	cr_assert(strstr(err, "write 1735776000000ms (2025-01-02T00:00:00Z)"), "%s", err);
	cr_assert_neq(parse("#!keys t f 1735689600000000 1h", &r, err), 0);
	cr_assert(strstr(err, "write 1735689600000000us (2025-01-01T00:00:00Z)"), "%s", err);
	/* no unit gives a time int64 ns can hold: the hint names the units
	 * (found by fuzz_cmd: the us reading overflowed) */
	cr_assert_neq(parse("#!scan t k 14446444000004406 1h", &r, err), 0);
	cr_assert(strstr(err, "give its unit: 14446444000004406s, ms, us or ns"), "%s", err);
	int64_t t;
	cr_assert_neq(cmd_parse_time("1735689600", 0, &t), 0);
	cr_assert_neq(cmd_parse_time("-1735689600", 0, &t), 0);
}

Test(times, integers_with_a_unit_are_times_since_the_epoch)
{
	static const char *const forms[] = {"1735689600s", "1735689600000ms", "1735689600000000us",
					    "1735689600000000000ns", "1735689600000000000"};
	for (size_t i = 0; i < sizeof forms / sizeof forms[0]; i++) {
		int64_t t = 0;
		cr_assert_eq(cmd_parse_time(forms[i], 0, &t), 0, "%s", forms[i]);
		cr_assert_eq(t, T_NS, "%s", forms[i]);
	}
	int64_t t;
	cr_assert_neq(cmd_parse_time("1735689600m", 0, &t), 0); /* a length, not a time */
	cr_assert_neq(cmd_parse_time("1735689600sec", 0, &t), 0);
	cr_assert_neq(cmd_parse_time("99999999999999999999s", 0, &t), 0);
	cr_assert_neq(cmd_parse_time("9223372037s", 0, &t), 0); /* past int64 ns */
	cr_assert_neq(cmd_parse_time("s", 0, &t), 0);
}

Test(times, to_with_a_unit_of_years_is_a_time_and_short_ones_stay_lengths)
{
	char err[CMD_ERR_MAX];
	cmd_req r;
	cr_assert_eq(parse("#!agg t f k 1735689600s 1735776000s", &r, err), 0, "%s", err);
	cr_assert_eq(r.from, T_NS);
	cr_assert_eq(r.to, T_NS + 86400 * SEC);
	cr_assert_eq(parse("#!agg t f k 1735689600s 90s", &r, err), 0, "%s", err);
	cr_assert_eq(r.to, T_NS + 90 * SEC);
	cr_assert_eq(parse("#!agg t f k 0 +1735689600s", &r, err), 0, "%s", err);
	cr_assert_eq(r.to, T_NS);
	cr_assert_eq(parse("#!scan t k 1735689600s 1735689600001ms", &r, err), 0, "%s", err);
	cr_assert_eq(r.to, T_NS + 1000000);
}

Test(times, zero_small_and_real_ns_still_parse)
{
	int64_t t;
	cr_assert_eq(cmd_parse_time("0", 0, &t), 0);
	cr_assert_eq(t, 0);
	cr_assert_eq(cmd_parse_time("999999999", 0, &t), 0); /* under a second: not seconds */
	cr_assert_eq(t, 999999999);
	cr_assert_eq(cmd_parse_time("100000000000000000", 0, &t), 0); /* 1973-03-03 */
	cr_assert_eq(cmd_parse_time("1699920000000000000", 0, &t), 0);
	cr_assert_eq(t, INT64_C(1699920000000000000));
	char err[CMD_ERR_MAX];
	cmd_req r;
	cr_assert_eq(parse("#!scan t k 0 1000", &r, err), 0, "%s", err);
	cr_assert_eq(r.to, 1000);
}
