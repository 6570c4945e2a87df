/*
 * fuzz_cmd.c — libFuzzer target: the "#!" command parser (wire/cmd.c).
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
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../wire/cmd.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                 \
	do {                     \
		if (!(c))        \
			abort(); \
	} while (0)

/* Significant digits of a decimal ("0.050" and "5e-2": 1). */
static int sig_digits(const char *c)
{
	int n = 0, seen = 0, z = 0;
	for (; *c && *c != 'e'; c++) {
		if (*c >= '1' && *c <= '9') {
			n += seen ? z + 1 : 1;
			seen = 1;
			z = 0;
		} else if (*c == '0') {
			z += seen;
		}
	}
	return n;
}

/* A decimal's significant digits into d; returns the power of ten of
 * the last ("-0.0520" and "5.2e-2": "52", -3). */
static int dec_norm(const char *s, char *d)
{
	int n = 0, frac = 0, point = 0;
	for (; *s && *s != 'e'; s++) {
		if (*s == '.')
			point = 1;
		else if (*s >= '0' && *s <= '9') {
			if (n || *s != '0')
				d[n++] = *s;
			frac += point;
		}
	}
	int e = (*s ? atoi(s + 1) : 0) - frac;
	while (n > 1 && d[n - 1] == '0') {
		n--;
		e++;
	}
	d[n] = 0;
	return e;
}

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
		CHECK(r.kind >= CMD_PING && r.kind <= CMD_HELP && r.name);
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
			int p = 1;
			while (p < 17 &&
			       (snprintf(ref, sizeof ref, "%.*g", p, v), strtod(ref, NULL) != v))
				p++;
			snprintf(ref, sizeof ref, "%.*g", p, v);
			/* no more significant digits; as many: the same decimal */
			int db = sig_digits(b), dr = sig_digits(ref);
			CHECK(db <= dr);
			if (db == dr && v != 0) {
				char d1[40], d2[40];
				CHECK(dec_norm(b, d1) == dec_norm(ref, d2) && !strcmp(d1, d2));
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
