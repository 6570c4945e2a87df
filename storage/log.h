/*
 * log.h — the log sink shared by the layers (internal).
 *
 * Library code never prints on its own: it formats into the sink the user
 * gave in tally_options (stderr by default). Messages never hold secrets.
 */
#ifndef TALLY_LOG_H
#define TALLY_LOG_H

#include "tally_base.h"

typedef struct log_sink {
	tally_log_fn *fn; /* NULL: stderr */
	void *ctx;
	int level; /* most verbose level emitted */
} log_sink;

void log_emit(const log_sink *s, int level, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#endif
