/*
 * offloop.c — long administrative commands off the loop: `#!backup`,
 * `#!retain`, `#!drop` and `#!delete` (any kind in offloop_kinds below) run
 * on one admin worker thread of tallyd, while the shard thread that read
 * the command goes on serving its other connections.
 *
 * The one idea: the asking connection waits like a streamed answer, the
 * job being its producer (PROD_JOB). So it processes nothing after the
 * command until the answer is put (replies stay in input order, and a
 * `#!ping` sent behind a backup is answered after it), and backpressure,
 * lingering, closing and shutdown need nothing new. The job and the
 * connection each hold it; whichever lets go last frees it (states:
 * queued, running, done, abandoned), so a client that disconnects
 * mid-backup leaves a job that frees itself when it ends.
 *
 * Jobs run one at a time, in the order they were asked: they are heavy
 * on the disk or the network, a second one at once would only slow the
 * first, and two backups to one destination must not race for a number.
 * Shutdown waits for the job running (offloop_fini); queued ones are
 * answered "not run".
 */
#include "offloop.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { OJ_QUEUED = 0, OJ_RUNNING, OJ_DONE, OJ_ABANDONED };

#define OJ_REPLY_MAX 1024

/* Runs r on the worker thread and writes its one-line answer (without
 * '\n') into out. */
typedef void offloop_run(tally_db *db, const cmd_req *r, uint64_t line, char *out, size_t cap);

static offloop_run run_backup, run_retain, run_drop, run_delete;

/* The commands that run off the loop: the one place a kind is declared
 * so. A new one (a delete, a compaction) adds a line here and its run
 * function; conn.c needs nothing more. */
static const struct {
	enum cmd_kind kind;
	offloop_run *run;
} offloop_kinds[] = {
	{CMD_BACKUP, run_backup},
	{CMD_RETAIN, run_retain},
	{CMD_DROP, run_drop},
	{CMD_DELETE, run_delete},
};

struct offjob {
	offjob *next; /* the queue */
	wshard *sh;   /* woken when the answer is ready */
	offloop_run *run;
	uint64_t line_no;
	int64_t now;
	_Atomic int state;
	size_t reply_len;
	char reply[OJ_REPLY_MAX];
	size_t len;
	char text[]; /* the command line (len bytes and a NUL), then cmd_parse's scratch */
};

struct offloop {
	pthread_t thr;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	offjob *head, *tail;
	char running[64]; /* the command word and line of the job running, for the log; "" */
	int stop;
};

static offloop_run *offloop_find(enum cmd_kind kind)
{
	for (size_t i = 0; i < sizeof offloop_kinds / sizeof offloop_kinds[0]; i++)
		if (offloop_kinds[i].kind == kind)
			return offloop_kinds[i].run;
	return NULL;
}

int offloop_kind(enum cmd_kind kind)
{
	return offloop_find(kind) != NULL;
}

__attribute__((format(printf, 3, 4))) static void oj_say(char *out, size_t cap, const char *fmt,
							 ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(out, cap, fmt, ap);
	va_end(ap);
}

/* ---------------------------------------------------------------- the commands */

static void run_backup(tally_db *db, const cmd_req *r, uint64_t line, char *out, size_t cap)
{
	tally_backup_result b;
	int rc = tally_db_backup(db, r->dest, NULL, &b); /* S3: the tiering settings */
	if (rc)
		oj_say(out, cap, "ERR line %" PRIu64 ": backup: %s", line, conn_errmsg(rc));
	else
		oj_say(out, cap,
		       "OK backup %" PRIu64 " files %" PRIu64 " bytes %" PRIu64
		       " new_files %" PRIu64 " new_bytes %" PRIu64,
		       b.seq, b.files, b.bytes, b.files_uploaded, b.bytes_uploaded);
}

static void run_retain(tally_db *db, const cmd_req *r, uint64_t line, char *out, size_t cap)
{
	(void)r;
	tally_stats a, b;
	tally_db_stats(db, &a);
	int rc = tally_db_retain(db);
	if (rc) {
		oj_say(out, cap, "ERR line %" PRIu64 ": retain: %s", line, conn_errmsg(rc));
		return;
	}
	tally_db_stats(db, &b);
	oj_say(out, cap,
	       "OK retain parts_dropped %" PRIu64 " parts_raw_gone %" PRIu64 " bytes_freed %" PRIu64
	       " rows_dropped %" PRIu64,
	       b.retention_parts_dropped - a.retention_parts_dropped,
	       b.retention_parts_raw_gone - a.retention_parts_raw_gone,
	       b.retention_bytes_freed - a.retention_bytes_freed,
	       b.retention_rows_dropped - a.retention_rows_dropped);
}

static void run_drop(tally_db *db, const cmd_req *r, uint64_t line, char *out, size_t cap)
{
	int rc = tally_db_drop_table(db, r->table); /* a flush first */
	if (rc)
		oj_say(out, cap, "ERR line %" PRIu64 ": drop: %s", line, conn_errmsg(rc));
	else
		oj_say(out, cap, "OK drop %s", r->table);
}

static void run_delete(tally_db *db, const cmd_req *r, uint64_t line, char *out, size_t cap)
{
	tally_delete_result d = {.size = sizeof d}; /* a flush, then rewrites */
	int rc = tally_db_delete(db, r->table, r->key, r->from, r->to, &d);
	if (rc)
		oj_say(out, cap, "ERR line %" PRIu64 ": delete: %s", line, conn_errmsg(rc));
	else
		oj_say(out, cap,
		       "OK delete rows %" PRIu64 " parts_rewritten %" PRIu64
		       " parts_removed %" PRIu64 " bytes_read %" PRIu64 " bytes_written %" PRIu64
		       " bytes_copied %" PRIu64,
		       d.rows, d.parts_rewritten, d.parts_removed, d.bytes_read, d.bytes_written,
		       d.bytes_copied);
}

/* ---------------------------------------------------------------- the worker */

/* The answer is in j->reply: the connection may take it (or the job goes,
 * when the connection went first). */
static void oj_done(offjob *j, int from)
{
	size_t n = strnlen(j->reply, sizeof j->reply - 1);
	j->reply[n++] = '\n';
	j->reply_len = n;
	wshard *sh = j->sh;
	if (atomic_compare_exchange_strong(&j->state, &from, OJ_DONE)) {
		atomic_fetch_add(&sh->job_ready, 1);
		srv_wake_shard(sh);
	} else { /* abandoned meanwhile */
		free(j);
	}
}

static void oj_run(srv *s, offjob *j)
{
	int queued = OJ_QUEUED;
	if (!atomic_compare_exchange_strong(&j->state, &queued, OJ_RUNNING)) {
		free(j); /* its connection went before it ran */
		return;
	}
	cmd_req r;
	char err[CMD_ERR_MAX];
	if (cmd_parse(j->text, j->len, j->text + j->len + 1, j->len + 1, j->now, &r, err,
		      sizeof err))
		oj_say(j->reply, sizeof j->reply, "ERR line %" PRIu64 ": %s", j->line_no, err);
	else
		j->run(s->db, &r, j->line_no, j->reply, sizeof j->reply);
	oj_done(j, OJ_RUNNING);
}

static void *offloop_main(void *arg)
{
	srv *s = arg;
	struct offloop *o = s->offloop;
	pthread_mutex_lock(&o->mu);
	for (;;) {
		while (!o->head && !o->stop)
			pthread_cond_wait(&o->cv, &o->mu);
		offjob *j = o->head;
		if (!j)
			break; /* stopping, and nothing queued */
		o->head = j->next;
		if (!o->head)
			o->tail = NULL;
		if (o->stop) {
			/* Its connection is gone or closing: say so, never run it. */
			oj_say(j->reply, sizeof j->reply,
			       "ERR line %" PRIu64 ": not run: the server is stopping", j->line_no);
			oj_done(j, OJ_QUEUED);
			continue;
		}
		/* a copy: the job may be freed while it runs (abandoned) */
		snprintf(o->running, sizeof o->running, "%.*s (line %" PRIu64 ")",
			 (int)strcspn(j->text, " \t"), j->text, j->line_no);
		pthread_mutex_unlock(&o->mu);
		oj_run(s, j);
		pthread_mutex_lock(&o->mu);
		o->running[0] = 0;
	}
	pthread_mutex_unlock(&o->mu);
	return NULL;
}

int offloop_init(srv *s)
{
	struct offloop *o = calloc(1, sizeof *o);
	if (!o)
		return -ENOMEM;
	pthread_mutex_init(&o->mu, NULL);
	pthread_cond_init(&o->cv, NULL);
	s->offloop = o;
	if (pthread_create(&o->thr, NULL, offloop_main, s)) {
		pthread_mutex_destroy(&o->mu);
		pthread_cond_destroy(&o->cv);
		free(o);
		s->offloop = NULL;
		return -EAGAIN;
	}
	return 0;
}

void offloop_fini(srv *s)
{
	struct offloop *o = s->offloop;
	if (!o)
		return;
	pthread_mutex_lock(&o->mu);
	o->stop = 1;
	if (o->running[0])
		srv_log(s, TALLY_LOG_INFO, "stopping: waiting for %s to finish", o->running);
	pthread_cond_broadcast(&o->cv);
	pthread_mutex_unlock(&o->mu);
	pthread_join(o->thr, NULL);
	pthread_mutex_destroy(&o->mu);
	pthread_cond_destroy(&o->cv);
	free(o);
	s->offloop = NULL;
}

/* ---------------------------------------------------------------- the connection's side */

int offloop_start(wconn *c, enum cmd_kind kind, const char *line, size_t len, int64_t now,
		  uint64_t line_no, offjob **out)
{
	struct offloop *o = c->sh->srv->offloop;
	offloop_run *run = offloop_find(kind);
	if (!run)
		return -EINVAL;
	if (!o)
		return -ESHUTDOWN;
	/* the line, parsed again on the worker: the caller's parse lives in
	 * the shard's scratch, which the next command reuses */
	offjob *j = malloc(sizeof *j + 2 * (len + 1));
	if (!j)
		return -ENOMEM;
	memset(j, 0, sizeof *j);
	memcpy(j->text, line, len);
	j->text[len] = 0;
	j->len = len;
	j->sh = c->sh;
	j->run = run;
	j->line_no = line_no;
	j->now = now;
	atomic_init(&j->state, OJ_QUEUED);
	pthread_mutex_lock(&o->mu);
	if (o->tail)
		o->tail->next = j;
	else
		o->head = j;
	o->tail = j;
	pthread_cond_signal(&o->cv);
	pthread_mutex_unlock(&o->mu);
	*out = j;
	return 0;
}

int offloop_pump(wconn *c, offjob *j)
{
	if (atomic_load(&j->state) != OJ_DONE)
		return 0;
	conn_put(c, j->reply, j->reply_len, 1);
	return 1;
}

void offloop_release(offjob *j)
{
	if (!j)
		return;
	int st = atomic_load(&j->state);
	for (;;) {
		if (st == OJ_DONE) {
			free(j);
			return;
		}
		/* queued or running: the worker frees it when it gets there */
		if (atomic_compare_exchange_weak(&j->state, &st, OJ_ABANDONED))
			return;
	}
}
