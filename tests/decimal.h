/*
 * decimal.h — what the number-formatting checks compare decimals by
 * (test_server.c's cmd tests and fuzz_cmd.c): significant digits, the
 * digits and exponent of the value, and printf's shortest %.Ng.
 */
#ifndef TALLY_TEST_DECIMAL_H
#define TALLY_TEST_DECIMAL_H

#include <stdio.h>
#include <stdlib.h>

/* Significant digits of a decimal ("0.050" and "5e-2": 1; "0": 1). */
static inline int dec_sig_digits(const char *b)
{
	int n = 0, seen = 0, zeros = 0;
	for (; *b && *b != 'e'; b++) {
		if (*b < '0' || *b > '9')
			continue;
		if (*b == '0') {
			zeros += seen;
			continue;
		}
		n += seen ? zeros + 1 : 1;
		zeros = 0;
		seen = 1;
	}
	return n ? n : 1;
}

/* A decimal as its significant digits and the power of ten of the last:
 * "-0.0520" and "5.2e-2" are both "52" and -3. */
static inline void dec_norm(const char *s, char *digits, int *exp10)
{
	int n = 0, frac = 0, point = 0;
	for (; *s && *s != 'e' && *s != 'E'; s++) {
		if (*s == '.') {
			point = 1;
		} else if (*s >= '0' && *s <= '9') {
			if (n || *s != '0')
				digits[n++] = *s;
			frac += point;
		}
	}
	int e = (*s ? atoi(s + 1) : 0) - frac;
	while (n > 1 && digits[n - 1] == '0') {
		n--;
		e++;
	}
	if (!n) {
		digits[n++] = '0';
		e = 0;
	}
	digits[n] = 0;
	*exp10 = e;
}

/* The least precision of printf's %.Ng that reads back as v, with that
 * text in ref. */
static inline int dec_printf_shortest(double v, char *ref, size_t cap)
{
	int p = 1;
	for (; p < 17; p++) {
		snprintf(ref, cap, "%.*g", p, v);
		if (strtod(ref, NULL) == v)
			return p;
	}
	snprintf(ref, cap, "%.*g", p, v);
	return p;
}

#endif
