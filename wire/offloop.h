/*
 * offloop.h — `#!` commands that run on tallyd's admin worker thread
 * instead of the connection's loop (internal to wire/; offloop.c).
 */
#ifndef TALLY_OFFLOOP_H
#define TALLY_OFFLOOP_H

#include <stddef.h>
#include <stdint.h>

#include "cmd.h"
#include "server.h"

typedef struct offjob offjob;

/* 1 when commands of this kind run off the loop (offloop.c's table is
 * the one place that says so). */
int offloop_kind(enum cmd_kind kind);

/* Starts the worker thread; 0 or a negative errno. */
int offloop_init(srv *s);
/* Stops it: the job running finishes first (its answer still reaches a
 * connection that waits for it); queued jobs are answered "not run".
 * Safe to call twice, or without offloop_init. */
void offloop_fini(srv *s);

/*
 * Queues the command line[0, len), of this kind (offloop_kind), for
 * connection c; it is parsed again on the worker with the same now.
 * line_no is its line number, for the answer. 0 and *out (the
 * connection's producer until offloop_pump says the answer is put), or
 * -ENOMEM, or -ESHUTDOWN when the worker is not running.
 */
int offloop_start(wconn *c, enum cmd_kind kind, const char *line, size_t len, int64_t now,
		  uint64_t line_no, offjob **out);
/* Puts the job's answer on c once it is done: 1 when put, 0 while it
 * runs or waits its turn. */
int offloop_pump(wconn *c, offjob *j);
/* The connection lets go (answered, or closed meanwhile). */
void offloop_release(offjob *j);

#endif
