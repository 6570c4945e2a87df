/*
 * err.c — the thread-local last-error message every layer reports through.
 *
 * The message lives in thread-local storage so that concurrent callers of
 * one tally_db never read each other's errors (tally.h's threading rules).
 */
#include "err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char err_buf[ERR_MSG_MAX];

/* Appends ": " and src at dst[at], cutting what does not fit. */
static void append_cause(size_t at, const char *src)
{
	static const char sep[] = ": ";
	if (at + sizeof sep >= sizeof err_buf)
		return;
	memcpy(err_buf + at, sep, 2);
	at += 2;
	size_t n = strlen(src);
	if (n > sizeof err_buf - 1 - at)
		n = sizeof err_buf - 1 - at;
	memmove(err_buf + at, src, n);
	err_buf[at + n] = 0;
}

int err_set(int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err_buf, sizeof err_buf, fmt, ap);
	va_end(ap);
	return code;
}

int err_sys(int errno_val, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(err_buf, sizeof err_buf, fmt, ap);
	va_end(ap);
	if (n >= 0)
		append_cause((size_t)n, strerror(errno_val));
	return -errno_val;
}

int err_prefix(int code, const char *fmt, ...)
{
	char tmp[ERR_MSG_MAX];
	memcpy(tmp, err_buf, sizeof tmp);
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(err_buf, sizeof err_buf, fmt, ap);
	va_end(ap);
	if (n >= 0)
		append_cause((size_t)n, tmp);
	return code;
}

void err_clear(void)
{
	err_buf[0] = 0;
}

const char *err_msg(void)
{
	return err_buf;
}
