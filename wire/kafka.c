/*
 * kafka.c — tallyd's Kafka consumer: topics consumed exactly once.
 *
 * Each consumer thread is a member of the consumer group (librdkafka's
 * high-level consumer) with its own writer, so partitions spread over
 * threads and nodes by the group's assignment, and a partition's batches
 * go to the engine shard of its label, never through the shard threads
 * that serve connections. Messages of one partition are gathered into a
 * batch (up to kafka-batch-bytes) and written by tally_write_lp_labelled;
 * a long message of line protocol is a batch of its own, parsed where
 * librdkafka holds it (copying it cost more than its parse: the profile
 * in bench/results/kafka-2026-12-07.md).
 *
 * The one idea: the offset is stored with the data. A batch's label is
 * (source "kafka:TOPIC/PARTITION", sequence = the offset after its last
 * message), in the same WAL record as its events, so a batch is in the
 * store with its offset or not at all. When a partition is assigned, the
 * consumer starts from the highest label the store holds for it (or the
 * group's committed offset when that is further: another node wrote up to
 * there and handed over), not from what it last told Kafka. Offsets are
 * committed to Kafka only after the group commit made them durable, for
 * monitoring tools and for the next owner of the partition; on a revoke
 * the consumer writes what it holds, syncs and commits synchronously
 * before it lets the partition go (docs/cluster.md says what each failure
 * does).
 *
 * Never dropped, never stalled: a write that fails (a full store, a failed
 * shard) pauses the consumer's partitions (rd_kafka_pause_partitions) and
 * is retried with what was consumed held in memory, while the consumer
 * keeps polling so it stays in the group. A line or event the store
 * refuses is counted, logged with topic, partition and offset, and its
 * message produced to the dead-letter topic when one is set; the lines
 * around it are written and the partition goes on.
 */
#include "kafka.h"

#include <errno.h>
#include <inttypes.h>
#include <librdkafka/rdkafka.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ingest.h"
#include "server.h"

#define KAFKA_TOPIC_MAX    249 /* Kafka's own limit on a topic name */
#define KAFKA_RETRY_NS     (200 * INT64_C(1000000))
#define KAFKA_WATERMARK_NS INT64_C(1000000000)
#define KAFKA_LOG_EVERY_NS (10 * INT64_C(1000000000))
#define KAFKA_POISON_LOGS  20      /* poison messages logged per second per consumer */
#define KAFKA_SESSION_MS   "10000" /* session.timeout.ms unless a kafka-option sets it */
/* A message of plain line protocol at least this long is written as a
 * batch of its own straight from librdkafka's buffer: copying it into a
 * batch costs more than the WAL record and label of its own
 * (bench/results/kafka-2026-12-07.md, "Messages written where they lie") */
#define KAFKA_DIRECT_BYTES (16 * 1024)

/* A partition this node has been assigned, for stats (guarded by k->mu). */
typedef struct kpart {
	char topic[KAFKA_TOPIC_MAX + 1];
	int32_t partition;
	int owner;         /* consumer thread, -1: not assigned here now */
	int64_t next;      /* next offset to write (the label), -1: not known yet */
	int64_t low, high; /* watermarks, -1: not known yet */
} kpart;

/* A message in the batch being built. */
typedef struct kmsg {
	int64_t offset;
	size_t at, len; /* its bytes in the batch (line protocol) */
	int poison;     /* counted (and dead-lettered) as poison already */
} kmsg;

typedef struct kcons {
	kafka *k;
	unsigned id;
	pthread_t thr;
	int started;
	rd_kafka_t *rk;
	ingest in; /* the writer, the JSON decoder, the key-tag pass, warnings */

	/* The batch: messages of one partition, copied into buf, or one
	 * message written where librdkafka holds it (direct: its payload is
	 * the batch's text, and it is destroyed once written). */
	int has;
	char topic[KAFKA_TOPIC_MAX + 1];
	int32_t partition;
	char *buf;
	size_t len, cap;
	const rd_kafka_message_t *direct;
	kmsg *msgs;
	size_t n_msgs, cap_msgs;

	/* Messages polled while the batch could not be written. */
	rd_kafka_message_t **held;
	size_t held_head, n_held, cap_held;
	int paused;
	int64_t retry_at, fail_logged;

	/* Offsets written: wait (their sync ticket), next (not yet asked);
	 * owned: every partition of the assignment and the offset the store
	 * has up to, committed synchronously when it is revoked. */
	rd_kafka_topic_partition_list_t *commit_wait, *commit_next, *owned;
	/* handover: offsets of revoked partitions whose commit the group
	 * refused while it rebalanced, committed once it settles (until
	 * handover_until); settling: partitions just assigned, paused until
	 * settle_until, when the group's committed offset is read again (a
	 * previous owner's late hand-over commit moves the start forward) */
	rd_kafka_topic_partition_list_t *handover, *settling;
	int64_t handover_at, handover_until, settle_until;
	uint64_t commit_ticket;
	int64_t watermarks_at;
} kcons;

struct kafka {
	srv *srv;
	unsigned n;
	kcons *cons;
	size_t batch_bytes;
	int64_t handover_ns;
	rd_kafka_t *dlq; /* the dead-letter producer, NULL: none */
	const char *dlq_topic;
	rd_kafka_topic_partition_list_t *topics;
	_Atomic int stop;
	/* the consumers commit before any leaves: committed of started
	 * threads have (under mu, signalled on leave_cv) */
	pthread_cond_t leave_cv;
	unsigned started, committed;
	_Atomic int64_t error_logged;

	pthread_mutex_t mu;
	kpart *parts;
	size_t n_parts, cap_parts;

	_Atomic uint64_t messages, events, lines_rejected, key_conflicts, poison, dead_letters,
		dead_letter_failures, batches, duplicates, write_failures, pauses, rebalances,
		commits, commit_failures, errors;
};

int kafka_source(char *dst, size_t cap, const char *topic, int32_t partition)
{
	int n = snprintf(dst, cap, "kafka:%s/%" PRId32, topic, partition);
	return n > 0 && (size_t)n < cap ? 0 : -1;
}

/* ---------------------------------------------------------------- partitions */

/* The entry of (topic, partition), made if absent; caller holds k->mu.
 * NULL when out of memory (the partition then has no stats row). */
static kpart *kpart_get(kafka *k, const char *topic, int32_t partition)
{
	for (size_t i = 0; i < k->n_parts; i++)
		if (k->parts[i].partition == partition && !strcmp(k->parts[i].topic, topic))
			return &k->parts[i];
	if (k->n_parts == k->cap_parts) {
		size_t cap = k->cap_parts ? 2 * k->cap_parts : 16;
		kpart *p = realloc(k->parts, cap * sizeof *p);
		if (!p)
			return NULL;
		k->parts = p;
		k->cap_parts = cap;
	}
	kpart *p = &k->parts[k->n_parts++];
	memset(p, 0, sizeof *p);
	snprintf(p->topic, sizeof p->topic, "%s", topic);
	p->partition = partition;
	p->owner = -1;
	p->next = p->low = p->high = -1;
	return p;
}

static void kpart_set(kafka *k, const char *topic, int32_t partition, int owner, int64_t next)
{
	pthread_mutex_lock(&k->mu);
	kpart *p = kpart_get(k, topic, partition);
	if (p) {
		p->owner = owner;
		if (next >= 0 || owner < 0)
			p->next = owner < 0 ? p->next : next;
	}
	pthread_mutex_unlock(&k->mu);
}

/* The partition's lag: messages in Kafka not yet written here. */
static int64_t kpart_lag(const kpart *p)
{
	if (p->high < 0)
		return 0;
	int64_t from = p->next >= 0 ? p->next : p->low >= 0 ? p->low : p->high;
	return p->high > from ? p->high - from : 0;
}

/* ---------------------------------------------------------------- logging */

static void k_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
	kcons *c = rd_kafka_opaque(rk);
	srv_log(c ? c->k->srv : NULL,
		level <= 3   ? TALLY_LOG_ERROR
		: level == 4 ? TALLY_LOG_WARN
			     : TALLY_LOG_INFO,
		"kafka %s: %s", fac, buf);
}

static void k_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
	(void)rk;
	kcons *c = opaque;
	if (!c)
		return;
	kafka *k = c->k;
	atomic_fetch_add_explicit(&k->errors, 1, memory_order_relaxed);
	/* brokers that are down are reported again and again: every 10 s */
	int64_t now = srv_now(), last = atomic_load(&k->error_logged);
	if (now - last >= KAFKA_LOG_EVERY_NS &&
	    atomic_compare_exchange_strong(&k->error_logged, &last, now))
		srv_log(k->srv, TALLY_LOG_WARN, "kafka: %s: %s (consumption resumes by itself)",
			rd_kafka_err2name((rd_kafka_resp_err_t)err), reason);
}

static void k_commit_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
			rd_kafka_topic_partition_list_t *offsets, void *opaque)
{
	(void)rk;
	(void)offsets;
	kcons *c = opaque;
	if (err && err != RD_KAFKA_RESP_ERR__NO_OFFSET)
		atomic_fetch_add_explicit(&c->k->commit_failures, 1, memory_order_relaxed);
}

static void k_dlq_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
	(void)rk;
	kafka *k = opaque;
	if (m->err) {
		atomic_fetch_add_explicit(&k->dead_letter_failures, 1, memory_order_relaxed);
		srv_log(k->srv, TALLY_LOG_ERROR, "kafka: dead-letter topic %s: %s", k->dlq_topic,
			rd_kafka_err2str(m->err));
	}
}

/* ---------------------------------------------------------------- poison */

/* A message with refused lines or events: logged (at most
 * KAFKA_POISON_LOGS a second, the rest counted in the next line) and, the
 * first time (not `again`), counted and produced to the dead-letter topic
 * as it was. */
static void kc_poison(kcons *c, const char *topic, int32_t partition, int64_t offset,
		      const char *payload, size_t len, const char *why, int again)
{
	kafka *k = c->k;
	ingest_warn(&c->in, "%s/%" PRId32 " offset %" PRId64 ": %s%s", topic, partition, offset,
		    why, k->dlq && !again ? "; sent to the dead-letter topic" : "");
	if (again)
		return;
	atomic_fetch_add_explicit(&k->poison, 1, memory_order_relaxed);
	if (!k->dlq)
		return;
	char pb[16], ob[24];
	snprintf(pb, sizeof pb, "%" PRId32, partition);
	snprintf(ob, sizeof ob, "%" PRId64, offset);
	rd_kafka_resp_err_t e = rd_kafka_producev(
		k->dlq, RD_KAFKA_V_TOPIC(k->dlq_topic), RD_KAFKA_V_VALUE((void *)payload, len),
		RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
		RD_KAFKA_V_HEADER("tally-topic", topic, -1),
		RD_KAFKA_V_HEADER("tally-partition", pb, -1),
		RD_KAFKA_V_HEADER("tally-offset", ob, -1),
		RD_KAFKA_V_HEADER("tally-error", why, -1), RD_KAFKA_V_END);
	if (e) {
		atomic_fetch_add_explicit(&k->dead_letter_failures, 1, memory_order_relaxed);
		srv_log(k->srv, TALLY_LOG_ERROR, "kafka: dead-letter topic %s: %s", k->dlq_topic,
			rd_kafka_err2str(e));
	} else {
		atomic_fetch_add_explicit(&k->dead_letters, 1, memory_order_relaxed);
	}
}

/* The batch's text: its copy, or the one message written where it lies. */
static const char *kc_text(const kcons *c)
{
	return c->direct ? c->direct->payload : c->buf;
}

/* The message of the batch that holds physical line `line` (1-based) of
 * it, in *m, and that message's first line, in *first: the lines of the
 * messages are counted from *m on (a line before *first starts again at
 * the first message; the engine names refused lines in order). Counted
 * only for a batch with refused lines, so a batch of good messages costs
 * no pass over its bytes besides the parser's. */
static void kc_msg_of_line(const kcons *c, uint64_t line, size_t *m, uint64_t *first)
{
	if (line < *first) {
		*m = 0;
		*first = 1;
	}
	for (;;) {
		const kmsg *km = &c->msgs[*m];
		uint64_t n = conn_count_lines(kc_text(c) + km->at, km->len);
		if (line < *first + n || *m + 1 == c->n_msgs)
			return;
		*first += n;
		(*m)++;
	}
}

/* ---------------------------------------------------------------- batches */

static void kc_batch_reset(kcons *c)
{
	c->has = 0;
	c->direct = NULL;
	c->len = 0;
	c->n_msgs = 0;
}

static int kc_reserve(kcons *c, size_t more)
{
	if (c->len + more > c->cap) {
		size_t cap = c->cap ? c->cap : 1 << 16;
		while (cap < c->len + more)
			cap *= 2;
		char *b = realloc(c->buf, cap);
		if (!b)
			return -ENOMEM;
		c->buf = b;
		c->cap = cap;
	}
	if (c->n_msgs == c->cap_msgs) {
		size_t cap = c->cap_msgs ? 2 * c->cap_msgs : 256;
		kmsg *m = realloc(c->msgs, cap * sizeof *m);
		if (!m)
			return -ENOMEM;
		c->msgs = m;
		c->cap_msgs = cap;
	}
	return 0;
}

/* Sets the partition's offset in list l (adding it). */
static void k_list_set(rd_kafka_topic_partition_list_t *l, const char *topic, int32_t partition,
		       int64_t offset)
{
	rd_kafka_topic_partition_t *p = rd_kafka_topic_partition_list_find(l, topic, partition);
	if (!p)
		p = rd_kafka_topic_partition_list_add(l, topic, partition);
	p->offset = offset;
}

static void kc_pause(kcons *c, int pause)
{
	rd_kafka_topic_partition_list_t *l = NULL;
	if (rd_kafka_assignment(c->rk, &l) == RD_KAFKA_RESP_ERR_NO_ERROR && l) {
		if (pause)
			rd_kafka_pause_partitions(c->rk, l);
		else
			rd_kafka_resume_partitions(c->rk, l);
		rd_kafka_topic_partition_list_destroy(l);
	}
	if (!pause && c->settling->cnt) /* still waiting for a hand-over */
		rd_kafka_pause_partitions(c->rk, c->settling);
	if (pause && !c->paused)
		atomic_fetch_add_explicit(&c->k->pauses, 1, memory_order_relaxed);
	c->paused = pause;
}

/* Writes the batch with its label. 0, or < 0 when the store refused it
 * (full, failed): then the partitions are paused and it is tried again
 * at c->retry_at. */
static int kc_flush(kcons *c)
{
	if (!c->has)
		return 0;
	kafka *k = c->k;
	srv *s = k->srv;
	char src[300];
	kafka_source(src, sizeof src, c->topic, c->partition);
	int64_t next = c->msgs[c->n_msgs - 1].offset + 1;
	tally_write_result res;
	int dup = 0;
	int rc = tally_write_lp_labelled(c->in.w, src, (uint64_t)next, kc_text(c), c->len,
					 TALLY_PREC_NS, &res, &dup);
	if (rc == TALLY_ESTALE) {
		/* far below what the store applied for this partition: it was
		 * written before (a topic recreated with the same name is the
		 * other way this happens: docs/cluster.md) */
		srv_log(s, TALLY_LOG_ERROR,
			"kafka: %s/%" PRId32 " offsets up to %" PRId64 ": %s; skipped", c->topic,
			c->partition, next - 1, tally_errmsg());
		dup = 1;
		rc = 0;
		memset(&res, 0, sizeof res);
	}
	if (rc < 0) {
		atomic_fetch_add_explicit(&k->write_failures, 1, memory_order_relaxed);
		int64_t now = srv_now();
		if (!c->paused || now - c->fail_logged >= KAFKA_LOG_EVERY_NS) {
			c->fail_logged = now;
			srv_log(s, TALLY_LOG_WARN,
				"kafka: %s/%" PRId32 ": writing offsets %" PRId64 "..%" PRId64
				": %s; partitions paused, retrying",
				c->topic, c->partition, c->msgs[0].offset, next - 1,
				*tally_errmsg() ? tally_errmsg() : tally_strerror(rc));
		}
		if (!c->paused)
			kc_pause(c, 1);
		c->retry_at = now + KAFKA_RETRY_NS;
		return rc;
	}
	if (c->paused) {
		srv_log(s, TALLY_LOG_INFO, "kafka: %s/%" PRId32 ": written again; resuming",
			c->topic, c->partition);
		kc_pause(c, 0);
	}
	atomic_store_explicit(&s->dirty, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&k->batches, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&k->messages, c->n_msgs, memory_order_relaxed);
	atomic_fetch_add_explicit(&k->events, res.accepted, memory_order_relaxed);
	atomic_fetch_add_explicit(&k->lines_rejected, res.rejected, memory_order_relaxed);
	if (dup)
		atomic_fetch_add_explicit(&k->duplicates, 1, memory_order_relaxed);
	/* Each message with a refused line (of the first
	 * TALLY_LINE_ERRORS_MAX, which name their lines) is poison once. A
	 * JSON message's lines were made by the decoder; its own refusals
	 * were handled when it was decoded. */
	size_t last = SIZE_MAX, m = 0;
	uint64_t first = 1;
	for (unsigned i = 0; i < res.n_errors; i++) {
		kc_msg_of_line(c, res.errors[i].line, &m, &first);
		if (m == last)
			continue;
		last = m;
		char why[TALLY_REASON_MAX + 48];
		snprintf(why, sizeof why, "line %" PRIu64 " of the message: %s",
			 res.errors[i].line - first + 1, res.errors[i].reason);
		kc_poison(c, c->topic, c->partition, c->msgs[m].offset, kc_text(c) + c->msgs[m].at,
			  c->msgs[m].len, why, c->msgs[m].poison);
	}
	k_list_set(c->commit_next, c->topic, c->partition, next);
	k_list_set(c->owned, c->topic, c->partition, next);
	kpart_set(k, c->topic, c->partition, (int)c->id, next);
	kc_batch_reset(c);
	return 0;
}

/* Adds message m to the batch (writing the batch first when m belongs to
 * another partition or would make it too large). 0: m is taken (and
 * destroyed); < 0: the batch could not be written, m is not taken. */
static int kc_take(kcons *c, rd_kafka_message_t *m)
{
	kafka *k = c->k;
	const char *topic = rd_kafka_topic_name(m->rkt);
	if (c->has && (m->partition != c->partition || strcmp(topic, c->topic) ||
		       c->len + m->len + 1 > k->batch_bytes)) {
		int rc = kc_flush(c);
		if (rc)
			return rc;
	}
	const char *p = m->payload ? m->payload : "";
	size_t n = m->payload ? m->len : 0;
	/* the key stands for the key tag only when kafka-key-tag says so */
	size_t kn = c->in.key_tag && m->key ? m->key_len : 0;
	const char *lp = p;
	size_t lp_len = n;
	uint64_t rejected = 0;
	/* Line protocol with no key tag is written as it came: no decode, and
	 * no count of its lines (what the profile showed costing most of the
	 * consumer's own time; kc_msg_of_line counts when a line is refused). */
	if (c->in.json || kn) {
		ingest_text t;
		int rc = ingest_decode(&c->in, p, n, kn ? m->key : NULL, kn, srv_clock_ns(), &t);
		if (rc)
			return rc;
		if (t.rejected) {
			atomic_fetch_add_explicit(&k->lines_rejected, t.rejected,
						  memory_order_relaxed);
			atomic_fetch_add_explicit(&k->key_conflicts, t.conflicts,
						  memory_order_relaxed);
			kc_poison(c, topic, m->partition, m->offset, p, n, t.why, 0);
		}
		lp = t.lp;
		lp_len = t.len;
		rejected = t.rejected;
	}
	/* A long message of whole lines as it came is written where it
	 * lies, no copy: alone, as the batch is empty now */
	int direct = lp == p && !c->has && n >= KAFKA_DIRECT_BYTES && p[n - 1] == '\n';
	int rc = kc_reserve(c, direct ? 0 : lp_len + 1);
	if (rc)
		return rc;
	if (!c->has) {
		c->has = 1;
		snprintf(c->topic, sizeof c->topic, "%s", topic);
		c->partition = m->partition;
	}
	kmsg *km = &c->msgs[c->n_msgs++];
	km->offset = m->offset;
	km->at = c->len;
	km->len = lp_len;
	km->poison = rejected > 0;
	if (direct) {
		c->direct = m;
		c->len = n;
		if ((rc = kc_flush(c))) {
			/* not taken: m is held and taken again, whole */
			kc_batch_reset(c);
			return rc;
		}
	} else {
		memcpy(c->buf + c->len, lp, lp_len);
		c->len += lp_len;
		if (lp_len && lp[lp_len - 1] != '\n')
			c->buf[c->len++] = '\n';
	}
	rd_kafka_message_destroy(m);
	return 0;
}

static int kc_hold(kcons *c, rd_kafka_message_t *m)
{
	if (c->held_head + c->n_held == c->cap_held) {
		if (c->held_head) {
			memmove(c->held, c->held + c->held_head, c->n_held * sizeof *c->held);
			c->held_head = 0;
		} else {
			size_t cap = c->cap_held ? 2 * c->cap_held : 64;
			rd_kafka_message_t **h = realloc(c->held, cap * sizeof *h);
			if (!h)
				return -ENOMEM;
			c->held = h;
			c->cap_held = cap;
		}
	}
	c->held[c->held_head + c->n_held++] = m;
	return 0;
}

/* Writes the batch, then the held messages in order. 0 when everything
 * consumed is written. */
static int kc_drain(kcons *c)
{
	int rc = kc_flush(c);
	while (!rc && c->n_held) {
		if ((rc = kc_take(c, c->held[c->held_head])) == 0) {
			c->held_head++;
			c->n_held--;
		}
	}
	if (!c->n_held)
		c->held_head = 0;
	return rc ? rc : kc_flush(c);
}

/* ---------------------------------------------------------------- offsets */

/* Commits to Kafka what the group commit made durable: the offsets in
 * commit_wait once their ticket is served, then asks a ticket for the
 * ones written since. */
static void kc_commit(kcons *c)
{
	char msg[256];
	int r = c->commit_wait->cnt ? ingest_synced(&c->in, c->commit_ticket, 0, msg, sizeof msg)
				    : 1;
	if (r < 0) {
		/* not known durable: not told to Kafka; ask again */
		c->commit_ticket = ingest_sync_ask(&c->in);
		return;
	}
	if (r == 0) {
		if (rd_kafka_commit(c->rk, c->commit_wait, 1))
			atomic_fetch_add_explicit(&c->k->commit_failures, 1, memory_order_relaxed);
		else
			atomic_fetch_add_explicit(&c->k->commits, 1, memory_order_relaxed);
		rd_kafka_topic_partition_list_destroy(c->commit_wait);
		c->commit_wait = rd_kafka_topic_partition_list_new(4);
	}
	if (!c->commit_wait->cnt && c->commit_next->cnt) {
		rd_kafka_topic_partition_list_t *t = c->commit_wait;
		c->commit_wait = c->commit_next;
		c->commit_next = t;
		c->commit_ticket = ingest_sync_ask(&c->in);
	}
}

/* Waits (at most 10 s) until every consumer thread has committed. */
static void kc_wait_others(kcons *c)
{
	kafka *k = c->k;
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 10;
	pthread_mutex_lock(&k->mu);
	k->committed++;
	pthread_cond_broadcast(&k->leave_cv);
	while (k->committed < k->started &&
	       pthread_cond_timedwait(&k->leave_cv, &k->mu, &until) == 0)
		;
	pthread_mutex_unlock(&k->mu);
}

/* Syncs and commits synchronously what the store holds of every partition
 * this consumer owns. */
static void kc_commit_owned(kcons *c)
{
	kafka *k = c->k;
	if (!c->owned->cnt)
		return;
	int rc = tally_db_sync(k->srv->db);
	rd_kafka_resp_err_t e =
		rc ? RD_KAFKA_RESP_ERR_NO_ERROR : rd_kafka_commit(c->rk, c->owned, 0);
	if (rc || e) {
		atomic_fetch_add_explicit(&k->commit_failures, 1, memory_order_relaxed);
		srv_log(k->srv, TALLY_LOG_WARN, "kafka: stopping: offsets not committed: %s",
			rc ? tally_errmsg() : rd_kafka_err2str(e));
	} else {
		atomic_fetch_add_explicit(&k->commits, 1, memory_order_relaxed);
	}
}

/* The watermarks librdkafka learnt from its fetches, for the lag. */
static void kc_watermarks(kcons *c, int64_t now)
{
	if (now < c->watermarks_at)
		return;
	c->watermarks_at = now + KAFKA_WATERMARK_NS;
	kafka *k = c->k;
	rd_kafka_topic_partition_list_t *l = NULL;
	if (rd_kafka_assignment(c->rk, &l) || !l)
		return;
	for (int i = 0; i < l->cnt; i++) {
		int64_t lo = -1, hi = -1;
		if (rd_kafka_get_watermark_offsets(c->rk, l->elems[i].topic, l->elems[i].partition,
						   &lo, &hi))
			continue;
		pthread_mutex_lock(&k->mu);
		kpart *p = kpart_get(k, l->elems[i].topic, l->elems[i].partition);
		if (p) {
			p->low = lo;
			p->high = hi;
		}
		pthread_mutex_unlock(&k->mu);
	}
	rd_kafka_topic_partition_list_destroy(l);
}

/* ---------------------------------------------------------------- rebalance */

static int k_cooperative(rd_kafka_t *rk)
{
	return !strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE");
}

/* Partitions given to this consumer: each starts from the offset the
 * store's label says, or the group's committed one when that is further
 * (another node wrote up to there and handed over), else from
 * auto.offset.reset (earliest unless set). */
static void kc_assign(kcons *c, rd_kafka_topic_partition_list_t *parts)
{
	kafka *k = c->k;
	srv *s = k->srv;
	rd_kafka_resp_err_t e = rd_kafka_committed(c->rk, parts, 10000);
	if (e)
		srv_log(s, TALLY_LOG_WARN,
			"kafka: reading the group's committed offsets: %s; the store's labels "
			"decide",
			rd_kafka_err2str(e));
	for (int i = 0; i < parts->cnt; i++) {
		rd_kafka_topic_partition_t *p = &parts->elems[i];
		if (e || p->err)
			p->offset = RD_KAFKA_OFFSET_INVALID;
		char src[300];
		uint64_t hi = 0;
		const char *from = p->offset >= 0 ? "the group's committed offset" : NULL;
		int sure = 0; /* this node wrote it last, and committed all of it */
		if (kafka_source(src, sizeof src, p->topic, p->partition) == 0 &&
		    tally_label_high(s->db, src, &hi) == 0 && (int64_t)hi >= p->offset) {
			sure = (int64_t)hi == p->offset;
			p->offset = (int64_t)hi;
			from = "the store's label";
		}
		if (!sure && k->handover_ns > 0)
			k_list_set(c->settling, p->topic, p->partition, p->offset);
		if (from)
			srv_log(s, TALLY_LOG_INFO,
				"kafka: consuming %s/%" PRId32 " from offset %" PRId64 " (%s)",
				p->topic, p->partition, p->offset, from);
		else
			srv_log(s, TALLY_LOG_INFO,
				"kafka: consuming %s/%" PRId32 " from auto.offset.reset (no label, "
				"nothing committed)",
				p->topic, p->partition);
		kpart_set(k, p->topic, p->partition, (int)c->id, p->offset);
		/* committed at the revoke even if nothing is written meanwhile:
		 * the group's offset catches up with the label */
		if (p->offset >= 0)
			k_list_set(c->owned, p->topic, p->partition, p->offset);
	}
	rd_kafka_error_t *err = NULL;
	if (k_cooperative(c->rk))
		err = rd_kafka_incremental_assign(c->rk, parts);
	else
		e = rd_kafka_assign(c->rk, parts);
	if (err) {
		srv_log(s, TALLY_LOG_ERROR, "kafka: assign: %s", rd_kafka_error_string(err));
		rd_kafka_error_destroy(err);
	} else if (e && !k_cooperative(c->rk)) {
		srv_log(s, TALLY_LOG_ERROR, "kafka: assign: %s", rd_kafka_err2str(e));
	}
	/* a pause is kept by a partition across its revoke: one paused while
	 * settling and revoked before it resumed would stay paused for good */
	rd_kafka_resume_partitions(c->rk, parts);
	if (c->paused)
		rd_kafka_pause_partitions(c->rk, parts);
	if (c->settling->cnt) {
		rd_kafka_pause_partitions(c->rk, c->settling);
		c->settle_until = srv_now() + k->handover_ns;
	}
}

/* The hand-over commit of partitions revoked during a rebalance, once the
 * group takes commits again; an offset the group already has (or passed)
 * is left alone. */
static void kc_handover(kcons *c, int64_t now)
{
	kafka *k = c->k;
	if (!c->handover->cnt || now < c->handover_at)
		return;
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_copy(c->handover);
	rd_kafka_resp_err_t e = rd_kafka_committed(c->rk, l, 5000);
	rd_kafka_topic_partition_list_t *todo = rd_kafka_topic_partition_list_new(l->cnt);
	for (int i = 0; !e && i < l->cnt; i++) {
		const rd_kafka_topic_partition_t *want = rd_kafka_topic_partition_list_find(
			c->handover, l->elems[i].topic, l->elems[i].partition);
		if (want && l->elems[i].offset < want->offset)
			k_list_set(todo, want->topic, want->partition, want->offset);
	}
	if (!e && todo->cnt)
		e = rd_kafka_commit(c->rk, todo, 0);
	if (!e) {
		if (todo->cnt) {
			atomic_fetch_add_explicit(&k->commits, 1, memory_order_relaxed);
			srv_log(k->srv, TALLY_LOG_INFO,
				"kafka: hand-over offsets of %d partitions committed", todo->cnt);
		}
		rd_kafka_topic_partition_list_destroy(c->handover);
		c->handover = rd_kafka_topic_partition_list_new(4);
	} else if (now > c->handover_until) {
		atomic_fetch_add_explicit(&k->commit_failures, 1, memory_order_relaxed);
		srv_log(k->srv, TALLY_LOG_WARN,
			"kafka: hand-over offsets not committed (%s); the partitions' new owners "
			"read again what this node wrote since its last commit (docs/cluster.md)",
			rd_kafka_err2str(e));
		rd_kafka_topic_partition_list_destroy(c->handover);
		c->handover = rd_kafka_topic_partition_list_new(4);
	} else {
		c->handover_at = now + KAFKA_RETRY_NS;
	}
	rd_kafka_topic_partition_list_destroy(l);
	rd_kafka_topic_partition_list_destroy(todo);
}

/* Partitions just assigned start once the previous owner had time to
 * commit its hand-over: from the group's committed offset when that moved
 * past where they were to start. */
static void kc_settle(kcons *c, int64_t now)
{
	kafka *k = c->k;
	if (!c->settling->cnt || now < c->settle_until)
		return;
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_copy(c->settling);
	rd_kafka_topic_partition_list_t *seek = rd_kafka_topic_partition_list_new(l->cnt);
	if (rd_kafka_committed(c->rk, l, 5000) == RD_KAFKA_RESP_ERR_NO_ERROR)
		for (int i = 0; i < l->cnt; i++) {
			const rd_kafka_topic_partition_t *from = &c->settling->elems[i];
			int64_t got = l->elems[i].offset;
			if (l->elems[i].err || got < 0 || got <= from->offset)
				continue;
			k_list_set(seek, from->topic, from->partition, got);
			srv_log(k->srv, TALLY_LOG_INFO,
				"kafka: consuming %s/%" PRId32 " from offset %" PRId64
				" (committed by its previous owner at the hand-over)",
				from->topic, from->partition, got);
			kpart_set(k, from->topic, from->partition, (int)c->id, got);
			k_list_set(c->owned, from->topic, from->partition, got);
		}
	if (seek->cnt) {
		rd_kafka_error_t *err = rd_kafka_seek_partitions(c->rk, seek, 5000);
		if (err) {
			srv_log(k->srv, TALLY_LOG_ERROR, "kafka: seek: %s",
				rd_kafka_error_string(err));
			rd_kafka_error_destroy(err);
		}
	}
	rd_kafka_topic_partition_list_t *go = c->settling;
	c->settling = rd_kafka_topic_partition_list_new(4);
	if (!c->paused)
		rd_kafka_resume_partitions(c->rk, go);
	rd_kafka_topic_partition_list_destroy(go);
	rd_kafka_topic_partition_list_destroy(seek);
	rd_kafka_topic_partition_list_destroy(l);
}

/* Partitions taken away: what is consumed of them is written, synced and
 * committed before they go, so the next owner starts after it. What
 * cannot be written now (a full store) is let go unwritten: the next
 * owner reads it again. */
static void kc_revoke(kcons *c, rd_kafka_topic_partition_list_t *parts)
{
	kafka *k = c->k;
	srv *s = k->srv;
	if (kc_drain(c)) {
		srv_log(s, TALLY_LOG_WARN,
			"kafka: rebalance: %zu consumed messages not written; the partition's "
			"next owner reads them again",
			c->n_msgs + c->n_held);
		kc_batch_reset(c);
	}
	/* held messages are only those a failed write kept back */
	while (c->n_held) {
		rd_kafka_message_destroy(c->held[c->held_head++]);
		c->n_held--;
	}
	c->held_head = 0;
	if (c->paused)
		kc_pause(c, 0);
	/* what the store holds of each revoked partition, committed
	 * synchronously (an asynchronous commit may have been refused
	 * while the group was rebalancing) */
	rd_kafka_topic_partition_list_t *all = rd_kafka_topic_partition_list_new(parts->cnt);
	for (int i = 0; i < parts->cnt; i++) {
		rd_kafka_topic_partition_t *o = rd_kafka_topic_partition_list_find(
			c->owned, parts->elems[i].topic, parts->elems[i].partition);
		if (o && o->offset >= 0)
			k_list_set(all, o->topic, o->partition, o->offset);
		if (o)
			rd_kafka_topic_partition_list_del(c->owned, o->topic, o->partition);
	}
	if (all->cnt) {
		int rc = tally_db_sync(s->db);
		rd_kafka_resp_err_t e =
			rc ? RD_KAFKA_RESP_ERR_NO_ERROR : rd_kafka_commit(c->rk, all, 0);
		if (rc) {
			atomic_fetch_add_explicit(&k->commit_failures, 1, memory_order_relaxed);
			srv_log(s, TALLY_LOG_WARN,
				"kafka: rebalance: sync failed (%s): offsets not committed; the "
				"next owner reads again what this node wrote since its last "
				"commit (docs/cluster.md)",
				tally_errmsg());
		} else if (e) {
			/* a group that is rebalancing may refuse commits: the
			 * hand-over commit goes out as soon as it settles */
			srv_log(s, TALLY_LOG_INFO,
				"kafka: rebalance: commit refused (%s); committing once the group "
				"settles",
				rd_kafka_err2str(e));
			for (int i = 0; i < all->cnt; i++)
				k_list_set(c->handover, all->elems[i].topic,
					   all->elems[i].partition, all->elems[i].offset);
			c->handover_at = srv_now();
			c->handover_until =
				c->handover_at + 6 * k->handover_ns + KAFKA_LOG_EVERY_NS;
		} else {
			atomic_fetch_add_explicit(&k->commits, 1, memory_order_relaxed);
		}
	}
	rd_kafka_topic_partition_list_destroy(all);
	rd_kafka_topic_partition_list_destroy(c->commit_wait);
	rd_kafka_topic_partition_list_destroy(c->commit_next);
	c->commit_wait = rd_kafka_topic_partition_list_new(4);
	c->commit_next = rd_kafka_topic_partition_list_new(4);
	for (int i = 0; i < parts->cnt; i++) {
		kpart_set(k, parts->elems[i].topic, parts->elems[i].partition, -1, -1);
		rd_kafka_topic_partition_list_del(c->settling, parts->elems[i].topic,
						  parts->elems[i].partition);
	}
	if (k_cooperative(c->rk)) {
		rd_kafka_error_t *err = rd_kafka_incremental_unassign(c->rk, parts);
		if (err)
			rd_kafka_error_destroy(err);
	} else {
		rd_kafka_assign(c->rk, NULL);
	}
}

static void k_rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
			   rd_kafka_topic_partition_list_t *parts, void *opaque)
{
	(void)rk;
	kcons *c = opaque;
	atomic_fetch_add_explicit(&c->k->rebalances, 1, memory_order_relaxed);
	if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS)
		kc_assign(c, parts);
	else
		kc_revoke(c, parts);
}

/* ---------------------------------------------------------------- threads */

static void *kc_main(void *arg)
{
	kcons *c = arg;
	kafka *k = c->k;
	while (!atomic_load(&k->stop)) {
		int64_t now = srv_now();
		kc_commit(c);
		kc_handover(c, now);
		kc_settle(c, now);
		kc_watermarks(c, now);
		if (c->id == 0 && k->dlq)
			rd_kafka_poll(k->dlq, 0);
		if ((c->paused && now >= c->retry_at) || (!c->paused && c->n_held))
			kc_drain(c);
		int waiting = c->paused || c->n_held;
		rd_kafka_message_t *m = rd_kafka_consumer_poll(c->rk, c->has && !waiting ? 0 : 100);
		if (!m) {
			if (c->has && !waiting)
				kc_flush(c);
			continue;
		}
		if (m->err) {
			if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
				k_error_cb(c->rk, m->err, rd_kafka_message_errstr(m), c);
			rd_kafka_message_destroy(m);
			continue;
		}
		if ((waiting || kc_take(c, m)) && kc_hold(c, m)) {
			/* out of memory for even a pointer: let it be read again */
			srv_log(k->srv, TALLY_LOG_ERROR, "kafka: out of memory; message dropped");
			rd_kafka_message_destroy(m);
		}
	}
	/* Stopping: write what is held (one try), make it durable and commit
	 * it while the group is still settled (a rebalancing group may refuse
	 * commits, and the first member to leave starts one): every thread
	 * commits before any leaves. Then leave; the next owners start after
	 * what this node wrote. */
	kc_drain(c);
	kc_commit_owned(c);
	kc_wait_others(c);
	rd_kafka_consumer_close(c->rk);
	return NULL;
}

/* ---------------------------------------------------------------- setup */

static int k_conf_set(srv *s, rd_kafka_conf_t *conf, const char *key, const char *value, int secret)
{
	char err[512];
	if (rd_kafka_conf_set(conf, key, value, err, sizeof err) == RD_KAFKA_CONF_OK)
		return 0;
	/* a kafka-option's value may be a password: only the key is shown */
	srv_log(s, TALLY_LOG_ERROR, "kafka: %s%s: %s", secret ? "kafka-option " : "", key, err);
	return -1;
}

/* librdkafka's settings: ours, then every kafka-option (which may
 * override them, except the two exactly-once needs). */
static rd_kafka_conf_t *k_conf(srv *s, int producer)
{
	srv_conf *sc = s->conf;
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	int bad = k_conf_set(s, conf, "bootstrap.servers", sc->kafka_brokers, 0) ||
		  k_conf_set(s, conf, "client.id",
			     sc->kafka_client_id ? sc->kafka_client_id : "tallyd", 0);
	if (!producer)
		bad = bad ||
		      k_conf_set(s, conf, "group.id", sc->kafka_group ? sc->kafka_group : "tally",
				 0) ||
		      k_conf_set(s, conf, "auto.offset.reset", "earliest", 0) ||
		      /* how long a member that is gone (killed, hung, or its
		       * SyncGroup refused: docs/cluster.md, "Group joins")
		       * holds its partitions; librdkafka's 45 s is a long
		       * stop for a store that consumes in real time */
		      k_conf_set(s, conf, "session.timeout.ms", KAFKA_SESSION_MS, 0);
	for (unsigned i = 0; !bad && i < sc->n_kafka_options; i++) {
		char kv[1024];
		snprintf(kv, sizeof kv, "%s", sc->kafka_options[i]);
		char *eq = strchr(kv, '=');
		*eq = 0;
		/* consumer-only settings are left out of the producer */
		if (producer &&
		    (!strncmp(kv, "group.", 6) || !strncmp(kv, "session.", 8) ||
		     !strncmp(kv, "heartbeat.", 10) || !strncmp(kv, "auto.", 5) ||
		     !strncmp(kv, "partition.assignment", 20) || !strncmp(kv, "max.poll", 8) ||
		     !strncmp(kv, "fetch.", 6) || !strncmp(kv, "enable.", 7)))
			continue;
		bad = k_conf_set(s, conf, kv, eq + 1, 1);
		explicit_bzero(kv, sizeof kv);
	}
	if (!producer)
		bad = bad || k_conf_set(s, conf, "enable.auto.commit", "false", 0) ||
		      k_conf_set(s, conf, "enable.auto.offset.store", "false", 0);
	if (bad) {
		rd_kafka_conf_destroy(conf);
		return NULL;
	}
	rd_kafka_conf_set_log_cb(conf, k_log_cb);
	rd_kafka_conf_set_error_cb(conf, k_error_cb);
	return conf;
}

int kafka_open(srv *s)
{
	srv_conf *sc = s->conf;
	if (!sc->kafka_brokers)
		return 0;
	kafka *k = calloc(1, sizeof *k);
	if (!k)
		return -ENOMEM;
	s->kafka = k;
	k->srv = s;
	pthread_mutex_init(&k->mu, NULL);
	pthread_cond_init(&k->leave_cv, NULL);
	k->batch_bytes = sc->kafka_batch_bytes;
	k->handover_ns = sc->kafka_handover_ns;
	k->topics = rd_kafka_topic_partition_list_new(4);
	char *list = strdup(sc->kafka_topics);
	if (!list)
		return -ENOMEM;
	for (char *save = NULL, *t = strtok_r(list, ", ", &save); t;
	     t = strtok_r(NULL, ", ", &save)) {
		size_t n = strlen(t);
		if (n > KAFKA_TOPIC_MAX || strspn(t, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ"
						     "RSTUVWXYZ0123456789._-") != n) {
			srv_log(s, TALLY_LOG_ERROR,
				"kafka-topics: '%s' is not a Kafka topic name (at most 249 of "
				"a-z A-Z 0-9 . _ -)",
				t);
			free(list);
			return -EINVAL;
		}
		rd_kafka_topic_partition_list_add(k->topics, t, RD_KAFKA_PARTITION_UA);
	}
	free(list);
	if (!k->topics->cnt) {
		srv_log(s, TALLY_LOG_ERROR, "kafka-topics: no topic");
		return -EINVAL;
	}
	char err[512];
	if (sc->kafka_dead_letter) {
		k->dlq_topic = sc->kafka_dead_letter;
		rd_kafka_conf_t *conf = k_conf(s, 1);
		if (!conf)
			return -EINVAL;
		rd_kafka_conf_set_opaque(conf, k);
		rd_kafka_conf_set_dr_msg_cb(conf, k_dlq_cb);
		if (!(k->dlq = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err))) {
			srv_log(s, TALLY_LOG_ERROR, "kafka: dead-letter producer: %s", err);
			return -EINVAL;
		}
	}
	k->n = sc->kafka_consumers ? sc->kafka_consumers : s->n_shards;
	if (!(k->cons = calloc(k->n, sizeof *k->cons)))
		return -ENOMEM;
	for (unsigned i = 0; i < k->n; i++) {
		kcons *c = &k->cons[i];
		c->k = k;
		c->id = i;
		c->commit_wait = rd_kafka_topic_partition_list_new(4);
		c->commit_next = rd_kafka_topic_partition_list_new(4);
		c->owned = rd_kafka_topic_partition_list_new(4);
		c->handover = rd_kafka_topic_partition_list_new(4);
		c->settling = rd_kafka_topic_partition_list_new(4);
		const ingest_spec spec = {
			.who = "kafka",
			.format = sc->kafka_format,
			.table = sc->kafka_json_table,
			.table_setting = "kafka-json-table",
			.key_tag = sc->kafka_key_tag,
			.key_setting = "kafka-key-tag",
			.log_burst = KAFKA_POISON_LOGS,
			.log_period_ns = INT64_C(1000000000),
		};
		int rc = ingest_open(&c->in, s, &spec);
		if (rc)
			return rc;
		rd_kafka_conf_t *conf = k_conf(s, 0);
		if (!conf)
			return -EINVAL;
		rd_kafka_conf_set_opaque(conf, c);
		rd_kafka_conf_set_rebalance_cb(conf, k_rebalance_cb);
		rd_kafka_conf_set_offset_commit_cb(conf, k_commit_cb);
		if (!(c->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err))) {
			srv_log(s, TALLY_LOG_ERROR, "kafka: consumer: %s", err);
			return -EINVAL;
		}
		rd_kafka_poll_set_consumer(c->rk);
	}
	return 0;
}

int kafka_start(srv *s)
{
	kafka *k = s->kafka;
	if (!k)
		return 0;
	for (unsigned i = 0; i < k->n; i++) {
		kcons *c = &k->cons[i];
		rd_kafka_resp_err_t e = rd_kafka_subscribe(c->rk, k->topics);
		if (e) {
			srv_log(s, TALLY_LOG_ERROR, "kafka: subscribe: %s", rd_kafka_err2str(e));
			return -EINVAL;
		}
		if (pthread_create(&c->thr, NULL, kc_main, c))
			return -EAGAIN;
		c->started = 1;
		pthread_mutex_lock(&k->mu);
		k->started++;
		pthread_mutex_unlock(&k->mu);
	}
	srv_log(s, TALLY_LOG_INFO, "kafka: %u consumers in group %s on %s", k->n,
		s->conf->kafka_group ? s->conf->kafka_group : "tally", s->conf->kafka_brokers);
	return 0;
}

void kafka_stop(srv *s)
{
	if (s->kafka)
		atomic_store(&s->kafka->stop, 1);
}

void kafka_join(srv *s)
{
	kafka *k = s->kafka;
	if (!k)
		return;
	atomic_store(&k->stop, 1);
	for (unsigned i = 0; i < k->n; i++)
		if (k->cons[i].started) {
			pthread_join(k->cons[i].thr, NULL);
			k->cons[i].started = 0;
		}
	if (k->dlq)
		rd_kafka_flush(k->dlq, 10000);
}

void kafka_close(srv *s)
{
	kafka *k = s->kafka;
	if (!k)
		return;
	kafka_join(s);
	for (unsigned i = 0; k->cons && i < k->n; i++) {
		kcons *c = &k->cons[i];
		while (c->n_held) {
			rd_kafka_message_destroy(c->held[c->held_head++]);
			c->n_held--;
		}
		if (c->rk)
			rd_kafka_destroy(c->rk);
		if (c->commit_wait)
			rd_kafka_topic_partition_list_destroy(c->commit_wait);
		if (c->commit_next)
			rd_kafka_topic_partition_list_destroy(c->commit_next);
		rd_kafka_topic_partition_list_t **ls[] = {&c->owned, &c->handover, &c->settling};
		for (int l = 0; l < 3; l++)
			if (*ls[l])
				rd_kafka_topic_partition_list_destroy(*ls[l]);
		ingest_close(&c->in);
		free(c->buf);
		free(c->msgs);
		free(c->held);
	}
	free(k->cons);
	if (k->dlq)
		rd_kafka_destroy(k->dlq);
	if (k->topics)
		rd_kafka_topic_partition_list_destroy(k->topics);
	free(k->parts);
	pthread_cond_destroy(&k->leave_cv);
	pthread_mutex_destroy(&k->mu);
	free(k);
	s->kafka = NULL;
}

/* ---------------------------------------------------------------- stats */

#define K_COUNTERS(X)                                                                           \
	X(messages, "kafka_messages", "tally_kafka_messages_total",                             \
	  "Kafka messages written (each once, in a labelled batch).")                           \
	X(events, "kafka_events", "tally_kafka_events_total",                                   \
	  "Lines (events) of Kafka messages accepted into the store.")                          \
	X(lines_rejected, "kafka_lines_rejected", "tally_kafka_lines_rejected_total",           \
	  "Lines or JSON events of Kafka messages refused (their messages are poison).")        \
	X(key_conflicts, "kafka_key_conflicts", "tally_kafka_key_conflicts_total",              \
	  "Lines or events whose key tag was not their Kafka message's key (refused).")         \
	X(poison, "kafka_poison_messages", "tally_kafka_poison_messages_total",                 \
	  "Kafka messages with a refused line or event: logged with topic, partition, offset.") \
	X(dead_letters, "kafka_dead_letters", "tally_kafka_dead_letters_total",                 \
	  "Poison messages produced to the dead-letter topic.")                                 \
	X(dead_letter_failures, "kafka_dead_letter_failures",                                   \
	  "tally_kafka_dead_letter_failures_total",                                             \
	  "Poison messages the dead-letter topic did not take (logged).")                       \
	X(batches, "kafka_batches", "tally_kafka_batches_total",                                \
	  "Labelled batches written from Kafka (one WAL record each).")                         \
	X(duplicates, "kafka_duplicate_batches", "tally_kafka_duplicate_batches_total",         \
	  "Kafka batches the store had applied already (not written again).")                   \
	X(write_failures, "kafka_write_failures", "tally_kafka_write_failures_total",           \
	  "Kafka batch writes the store refused (full, failed) and retried.")                   \
	X(pauses, "kafka_pauses", "tally_kafka_pauses_total",                                   \
	  "Times a consumer paused its partitions until the store took its batch.")             \
	X(rebalances, "kafka_rebalances", "tally_kafka_rebalances_total",                       \
	  "Partition assignments and revocations seen by the consumers.")                       \
	X(commits, "kafka_commits", "tally_kafka_commits_total",                                \
	  "Offset commits to Kafka after durability (for monitoring and hand-over).")           \
	X(commit_failures, "kafka_commit_failures", "tally_kafka_commit_failures_total",        \
	  "Offset commits Kafka refused or that could not be made durable first.")              \
	X(errors, "kafka_errors", "tally_kafka_errors_total",                                   \
	  "Errors librdkafka reported (brokers down, timeouts); consumption resumes by itself.")

static const struct k_counter {
	size_t off;
	const char *row, *metric, *help;
} k_counters[] = {
#define X(f, row, metric, help) {offsetof(kafka, f), row, metric, help},
	K_COUNTERS(X)
#undef X
};

#define K_N (sizeof k_counters / sizeof k_counters[0])

static uint64_t k_counter(const kafka *k, size_t i)
{
	return k ? atomic_load_explicit((_Atomic uint64_t *)((char *)k + k_counters[i].off),
					memory_order_relaxed)
		 : 0;
}

void kafka_stats(srv *s, kafka_row_fn *fn, void *ctx)
{
	kafka *k = s->kafka;
	for (size_t i = 0; i < K_N; i++)
		fn(ctx, k_counters[i].row, k_counter(k, i));
	uint64_t owned = 0, lag = 0;
	if (k) {
		pthread_mutex_lock(&k->mu);
		for (size_t i = 0; i < k->n_parts; i++)
			if (k->parts[i].owner >= 0) {
				owned++;
				lag += (uint64_t)kpart_lag(&k->parts[i]);
			}
		pthread_mutex_unlock(&k->mu);
	}
	fn(ctx, "kafka_partitions", owned);
	fn(ctx, "kafka_lag", lag);
	/* per partition: kafka_lag:TOPIC/PARTITION, kafka_offset:TOPIC/PARTITION */
	if (!k)
		return;
	pthread_mutex_lock(&k->mu);
	for (size_t i = 0; i < k->n_parts; i++) {
		const kpart *p = &k->parts[i];
		if (p->owner < 0)
			continue;
		char name[KAFKA_TOPIC_MAX + 48];
		snprintf(name, sizeof name, "kafka_lag:%s/%" PRId32, p->topic, p->partition);
		fn(ctx, name, (uint64_t)kpart_lag(p));
		snprintf(name, sizeof name, "kafka_offset:%s/%" PRId32, p->topic, p->partition);
		fn(ctx, name, p->next >= 0 ? (uint64_t)p->next : 0);
	}
	pthread_mutex_unlock(&k->mu);
}

int kafka_metrics(srv *s, char **buf, size_t *len, size_t *cap)
{
	kafka *k = s->kafka;
	int rc = 0;
	for (size_t i = 0; !rc && i < K_N; i++) {
		rc = metrics_family(buf, len, cap, k_counters[i].metric, "counter",
				    k_counters[i].help);
		if (!rc)
			rc = metrics_sample(buf, len, cap, k_counters[i].metric, "",
					    (double)k_counter(k, i));
	}
	static const char *const fam[2][2] = {
		{"tally_kafka_partition_lag",
		 "Messages of a partition this node consumes that are in Kafka and not yet "
		 "written here (high watermark minus the next offset)."},
		{"tally_kafka_partition_offset",
		 "The next offset of a partition this node writes: the label its batches carry."},
	};
	for (int f = 0; !rc && f < 2; f++) {
		rc = metrics_family(buf, len, cap, fam[f][0], "gauge", fam[f][1]);
		if (!k)
			continue;
		pthread_mutex_lock(&k->mu);
		for (size_t i = 0; !rc && i < k->n_parts; i++) {
			const kpart *p = &k->parts[i];
			if (p->owner < 0)
				continue;
			char l[KAFKA_TOPIC_MAX + 64], pn[16];
			size_t n = metrics_label(l, sizeof l, "topic", p->topic);
			snprintf(pn, sizeof pn, "%" PRId32, p->partition);
			l[n++] = ',';
			metrics_label(l + n, sizeof l - n, "partition", pn);
			double v = f == 0 ? (double)kpart_lag(p)
					  : (double)(p->next >= 0 ? p->next : 0);
			rc = metrics_sample(buf, len, cap, fam[f][0], l, v);
		}
		pthread_mutex_unlock(&k->mu);
	}
	return rc;
}
