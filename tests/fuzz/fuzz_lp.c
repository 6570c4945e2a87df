/*
 * fuzz_lp.c — libFuzzer target for the line protocol parser.
 *
 * The first input byte picks the precision and a line limit (small limits
 * drive the overlong-line path); the rest is parsed to LP_END. Checked at
 * every step: progress, line numbering, printable reasons, valid UTF-8 and
 * in-bounds strings in good lines; at the end, that the physical line count
 * matches the input's. A second parser that never remembers a line's
 * shape (lp_parser.head, .fkey) parses the same input beside it and must
 * give the same results, reasons and values line by line.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE \
 *     -Iengine -Istorage tests/fuzz/fuzz_lp.c engine/lp.c storage/err.c \
 *     storage/mem.c -lm -o /tmp/fuzz_lp && /tmp/fuzz_lp -max_total_time=30
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                 \
	do {                     \
		if (!(c))        \
			abort(); \
	} while (0)

static lp_line line, line2;

static int same(lp_str a, lp_str b)
{
	return a.n == b.n && (a.n == 0 || memcmp(a.p, b.p, a.n) == 0);
}

/* line and line2 hold the same parse. */
static int same_line(void)
{
	if (!same(line.measurement, line2.measurement) || line.n_tags != line2.n_tags ||
	    line.n_fields != line2.n_fields || line.has_ts != line2.has_ts ||
	    (line.has_ts && line.ts != line2.ts))
		return 0;
	for (uint32_t i = 0; i < line.n_tags; i++)
		if (!same(line.tags[i].key, line2.tags[i].key) ||
		    !same(line.tags[i].value, line2.tags[i].value))
			return 0;
	for (uint32_t i = 0; i < line.n_fields; i++) {
		const lp_field *a = &line.fields[i], *b = &line2.fields[i];
		if (!same(a->key, b->key) || a->type != b->type)
			return 0;
		if (a->type == TALLY_T_STR ? !same(a->v.str, b->v.str)
					   : memcmp(&a->v, &b->v, sizeof a->v) != 0)
			return 0;
	}
	return 1;
}

static int in(const lp_parser *ps, const char *buf, size_t n, lp_str s)
{
	if (s.n == 0)
		return 1;
	int in_buf = s.p >= buf && s.p + s.n <= buf + n;
	int in_scratch = s.p >= ps->scratch && s.p + s.n <= ps->scratch + ps->max_line;
	return (in_buf || in_scratch) && lp_utf8_valid(s.p, s.n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const uint32_t limits[8] = {3, 1, 2, 7, 16, 64, 300, 70000};
	if (size == 0)
		return 0;
	lp_parser ps, ps2;
	if (lp_parser_init(&ps, limits[data[0] & 7], (enum tally_precision)((data[0] >> 3) & 3)))
		return 0;
	if (lp_parser_init(&ps2, limits[data[0] & 7], (enum tally_precision)((data[0] >> 3) & 3))) {
		lp_parser_free(&ps);
		return 0;
	}
	/* A copy of exactly the input size, so ASan sees any overread. */
	size_t n = size - 1;
	char *buf = malloc(n ? n : 1);
	memcpy(buf, data + 1, n);
	const char *cur = buf, *end = buf + n, *cur2 = buf;
	char reason[160], reason2[160];
	int code, code2;
	enum lp_result r;
	uint64_t prev = 0;
	while ((r = lp_next(&ps, &cur, end, &line, &code, reason, sizeof reason)) != LP_END) {
		ps2.head_n = ps2.fkey_n = 0;
		enum lp_result r2 =
			lp_next(&ps2, &cur2, end, &line2, &code2, reason2, sizeof reason2);
		CHECK(r2 == r && cur2 == cur && ps2.line_no == ps.line_no);
		if (r == LP_ERROR)
			CHECK(code2 == code && strcmp(reason2, reason) == 0);
		if (r == LP_LINE)
			CHECK(same_line());
		CHECK(cur <= end);
		CHECK(ps.line_no == prev + 1 && ps.lines > prev);
		prev = ps.lines;
		if (r == LP_ERROR) {
			size_t k = strlen(reason);
			CHECK(k > 0 && k < sizeof reason && lp_utf8_valid(reason, k));
			for (size_t i = 0; i < k; i++)
				CHECK((unsigned char)reason[i] >= 0x20 && reason[i] != 0x7F);
			CHECK(code == TALLY_ESYNTAX || code == TALLY_ELIMIT);
		} else if (r == LP_LINE) {
			CHECK(line.measurement.n > 0 && line.measurement.n <= LP_NAME_MAX);
			CHECK(in(&ps, buf, n, line.measurement));
			CHECK(line.n_tags <= LP_TAGS_MAX);
			CHECK(line.n_fields > 0 && line.n_fields <= LP_FIELDS_MAX);
			for (uint32_t i = 0; i < line.n_tags; i++) {
				CHECK(line.tags[i].key.n > 0 && line.tags[i].value.n > 0);
				CHECK(in(&ps, buf, n, line.tags[i].key));
				CHECK(in(&ps, buf, n, line.tags[i].value));
			}
			for (uint32_t i = 0; i < line.n_fields; i++) {
				const lp_field *f = &line.fields[i];
				CHECK(f->key.n > 0 && in(&ps, buf, n, f->key));
				CHECK(f->type >= TALLY_T_F64 && f->type <= TALLY_T_STR);
				if (f->type == TALLY_T_STR)
					CHECK(in(&ps, buf, n, f->v.str));
				if (f->type == TALLY_T_F64)
					CHECK(f->v.f64 == f->v.f64 && f->v.f64 - f->v.f64 == 0);
			}
			if (line.has_ts)
				CHECK(line.ts >= LP_TS_MIN && line.ts <= LP_TS_MAX);
		}
	}
	CHECK(cur == end);
	uint64_t phys = 0;
	for (size_t i = 0; i < n; i++)
		phys += buf[i] == '\n';
	phys += n && buf[n - 1] != '\n';
	CHECK(ps.lines == phys && ps.line_no == phys);
	free(buf);
	lp_parser_free(&ps);
	lp_parser_free(&ps2);
	return 0;
}
