/*
 * decimal.h — what the number-formatting checks compare decimals by
 * (test_server.c's cmd tests and fuzz_cmd.c): significant digits, the
 * digits and exponent of the value, and printf's shortest %.Ng.
 */
#ifndef TALLY_TEST_DECIMAL_H
#define TALLY_TEST_DECIMAL_H

#include <stdio.h>
#include <stdlib.h>

/* 1 when b is a plain decimal without a redundant character: an optional
 * "-", the integer part without leading zeros ("0" alone for none), and
 * when there is a point, decimals that do not end in 0 ("84.5", not
 * "84.50", "84." or "084.5"). Exponent forms are not plain. */
static inline int dec_plain(const char *b)
{
	if (*b == '-')
		b++;
	const char *ip = b;
	while (*b >= '0' && *b <= '9')
		b++;
	if (b == ip || (*ip == '0' && b - ip > 1))
		return 0;
	if (!*b)
		return 1;
	if (*b++ != '.')
		return 0;
	const char *fr = b;
	while (*b >= '0' && *b <= '9')
		b++;
	return !*b && b > fr && b[-1] != '0';
}

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
