/*
 * fuzz_cmd.c — libFuzzer target: the "#!" command parser (wire/cmd.c)
 * and the number formatter (wire/numfmt.c).
 *
 * Any bytes after "#!" either parse into a command whose arguments are
 * valid (names non-empty, from < to, positive step) or fail with a
 * printable reason; times that parse format back to the same instant.
 * The first 8 bytes, as a double, format to the decimal printf's %.17g
 * rounds to at the least precision that reads back (the nearest of the
 * shortest), within 32 bytes; and an integer formats as printf's %llu.
 *
 *   tests/fuzz/build fuzz_cmd build-fuzz/fuzz_cmd
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../wire/cmd.c"
#include "../../wire/numfmt.c"
#include "../decimal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                 \
	do {                     \
		if (!(c))        \
			abort(); \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > 4096)
		return 0;
	char *line = malloc(size + 2);
	line[0] = '#';
	line[1] = '!';
	memcpy(line + 2, data, size);
	char *scratch = malloc(size + 3);
	char err[CMD_ERR_MAX];
	cmd_req r;
	const int64_t now = INT64_C(1699920000000000000);
	if (cmd_parse(line, size + 2, scratch, size + 3, now, &r, err, sizeof err) == 0) {
		CHECK(r.kind >= CMD_PING && r.kind <= CMD_LAST && r.name);
		switch (r.kind) {
		case CMD_SERIES:
			CHECK(r.step > 0);
			/* fall through */
		case CMD_AGG:
		case CMD_KEYS:
		case CMD_SCAN: CHECK(r.table && *r.table && r.from < r.to); break;
		case CMD_AUTH: CHECK(r.token != NULL); break;
		default: break;
		}
	} else {
		size_t n = strlen(err);
		CHECK(n > 0 && n < sizeof err);
		for (size_t i = 0; i < n; i++)
			CHECK((unsigned char)err[i] >= 0x20 && err[i] != 0x7F);
	}
	/* The input as one time argument: a parsed time formats back to itself. */
	char *s = malloc(size + 1);
	memcpy(s, data, size);
	s[size] = 0;
	int64_t t, t2, d;
	if (cmd_parse_time(s, now, &t) == 0) {
		char b[40];
		cmd_format_time(t, b);
		CHECK(cmd_parse_time(b, 0, &t2) == 0 && t2 == t);
	}
	if (cmd_parse_duration(s, &d) == 0) {
		char b[32];
		cmd_format_duration(d, b);
		int64_t d2;
		CHECK(cmd_parse_duration(b, &d2) == 0 && d2 == d && d > 0);
	}
	free(s);
	if (size >= 8) {
		double v;
		uint64_t u;
		memcpy(&v, data, 8);
		memcpy(&u, data, 8);
		char b[40], ref[40];
		memset(b, 'x', sizeof b);
		size_t n = cmd_format_double(v, b);
		CHECK(n < 32 && strlen(b) == n);
		if (v == v) {
			CHECK(strtod(b, NULL) == v);
			dec_printf_shortest(v, ref, sizeof ref);
			/* no more significant digits; as many: the same decimal */
			int db = dec_sig_digits(b), dr = dec_sig_digits(ref);
			CHECK(db <= dr);
			/* the exact range is written plainly, nothing redundant */
			if (fabs(v) >= 0x1p-21 && fabs(v) < 0x1p53)
				CHECK(dec_plain(b));
			if (db == dr && v != 0) {
				char d1[40], d2[40];
				int x1, x2;
				dec_norm(b, d1, &x1);
				dec_norm(ref, d2, &x2);
				CHECK(x1 == x2 && !strcmp(d1, d2));
			}
		}
		snprintf(ref, sizeof ref, "%llu", (unsigned long long)u);
		n = cmd_format_u64(u, b);
		CHECK(n == strlen(ref) && !strcmp(b, ref));
	}
	free(line);
	free(scratch);
	return 0;
}
