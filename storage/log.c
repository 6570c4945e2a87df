/*
 * log.c — formats a message and hands it to the user's sink or stderr.
 */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>

void log_emit(const log_sink *s, int level, const char *fmt, ...)
{
	if (s && level > s->level)
		return;
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	if (s && s->fn) {
		s->fn(s->ctx, level, buf);
		return;
	}
	static const char *const names[] = {"error", "warn", "info"};
	fprintf(stderr, "tally %s: %s\n", names[level < 0 ? 0 : level > 2 ? 2 : level], buf);
}
