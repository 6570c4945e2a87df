/*
 * err.h — the one error space and the thread-local last-error message.
 *
 * Codes are those of tally_base.h (0, -errno, TALLY_E*). Every failing path sets a
 * message with context through err_set() and returns its code, so a caller
 * writes `return err_set(TALLY_ECORRUPT, "%s offset %llu: bad magic", ...)`.
 */
#ifndef TALLY_ERR_H
#define TALLY_ERR_H

#include "tally_base.h"

#define ERR_MSG_MAX 512

/* Formats the thread's last-error message and returns code. */
int err_set(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Like err_set, with ": strerror(errno_val)" appended; returns -errno_val. */
int err_sys(int errno_val, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prepends "prefix: " to the current message; returns code unchanged. */
int err_prefix(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Clears the message (successful calls leave "" behind). */
void err_clear(void);
/* The current message (same as tally_errmsg()). */
const char *err_msg(void);

#endif
