/*
 * mqtt.c — tallyd as an MQTT 5 subscriber: events from cameras that
 * publish to a broker, each acknowledged only once it is durable
 * (docs/mqtt.md).
 *
 * The one idea: a QoS 1 message is acknowledged (PUBACK) only after the
 * group commit that covers its write has returned. What tallyd did not
 * keep, the broker still holds in the session (clean start off, a fixed
 * client id) and sends again; what tallyd kept but did not acknowledge
 * comes again too, and its label tells it apart: the user property
 * "Idempotency-Key: SOURCE/SEQ" goes through the labelled batches
 * (engine/idem.c), as HTTP's header of that name does, so a redelivered
 * message is applied once.
 *
 * Why not libmosquitto: Debian 12's libmosquitto 2.0.11 sends the PUBACK
 * of a QoS 1 message as soon as it arrives, before the application's
 * callback sees it (watched in the broker's log), so a crash between the
 * two loses the message. The subscriber's side of MQTT 5 is small
 * (CONNECT, SUBSCRIBE, PUBLISH, PUBACK, PINGREQ, DISCONNECT), so this file
 * speaks it over a plain socket; the tests use libmosquitto as the
 * publisher and a real mosquitto broker.
 *
 * One thread, one session. Messages are written as they arrive; when no
 * more are waiting, one sync ticket covers all written since the last
 * one, and their PUBACKs leave together once it is served. A full store
 * stops the reading (the broker keeps the rest); a failed write drops the
 * session without acknowledging, so the broker sends again.
 */
#include "mqtt.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stddef.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ingest.h"
#include "label.h"
#include "server.h"

#define MQ_ADD(q, f, v) atomic_fetch_add_explicit(&(q)->s->mqtt_st.f, (v), memory_order_relaxed)

/* Packet types (MQTT 5.0, 2.1.2). */
enum {
	P_CONNECT = 1,
	P_CONNACK = 2,
	P_PUBLISH = 3,
	P_PUBACK = 4,
	P_SUBSCRIBE = 8,
	P_SUBACK = 9,
	P_PINGREQ = 12,
	P_PINGRESP = 13,
	P_DISCONNECT = 14,
};

#define MQ_RECEIVE_MAX 1024 /* QoS 1 messages the broker may have in flight to us */
#define MQ_LOG_EVERY   (10 * INT64_C(1000000000)) /* bad messages: one log line per 10 s */

typedef struct mq {
	srv *s;
	pthread_t thr;
	int started;
	int wake[2]; /* a byte here ends the thread's waits: stop */
	_Atomic int stop;
	int fd; /* the session's socket; -1 between sessions */

	/* Settings, checked at start. */
	char host[256];
	char port[8];
	char **topics;
	unsigned n_topics;
	unsigned key_level; /* 1-based topic level holding the key; 0: none */
	int64_t keepalive_ns;
	const char *client_id;

	ingest ing; /* the writer, the JSON decoder, the rate limit of warnings */

	/* Received, not yet handled: in[0, in_len). */
	uint8_t *in;
	size_t in_len, in_cap, max_packet;

	/* Packet ids written since the last sync: acknowledged after it. */
	uint16_t *acks;
	size_t n_acks, cap_acks;
	/* Written and durable, but the session dropped before their PUBACK:
	 * the broker sends them again, with DUP, first thing in the next
	 * session. An unlabelled one found here is not applied twice. */
	uint16_t *redo;
	size_t n_redo, cap_redo;

	int64_t ping_at, pong_due; /* monotonic ns; pong_due 0: no PINGREQ out */
} mq;

/* ---------------------------------------------------------------- encoding */

typedef struct mbuf {
	uint8_t b[1024];
	size_t n;
	int over; /* did not fit */
} mbuf;

static void put(mbuf *m, const void *p, size_t n)
{
	if (m->n + n > sizeof m->b) {
		m->over = 1;
		return;
	}
	memcpy(m->b + m->n, p, n);
	m->n += n;
}

static void put8(mbuf *m, unsigned v)
{
	uint8_t b = (uint8_t)v;
	put(m, &b, 1);
}

static void put16(mbuf *m, unsigned v)
{
	put8(m, v >> 8);
	put8(m, v & 0xff);
}

static void put32(mbuf *m, uint32_t v)
{
	put16(m, v >> 16);
	put16(m, v & 0xffff);
}

static void put_str(mbuf *m, const char *s, size_t n)
{
	put16(m, (unsigned)n);
	put(m, s, n);
}

/* Variable byte integer (1.5.5): 7 bits per byte, low first. */
static void put_vbi(mbuf *m, size_t v)
{
	do {
		unsigned b = v & 0x7f;
		v >>= 7;
		put8(m, b | (v ? 0x80 : 0));
	} while (v);
}

/* A whole packet: fixed header (type, flags, remaining length) + body. */
static int mq_send_packet(mq *q, unsigned type, unsigned flags, const mbuf *body)
{
	mbuf h = {.n = 0};
	put8(&h, type << 4 | flags);
	put_vbi(&h, body->n);
	if (body->over)
		return -EMSGSIZE;
	const uint8_t *parts[2] = {h.b, body->b};
	size_t lens[2] = {h.n, body->n};
	for (int i = 0; i < 2; i++) {
		size_t off = 0;
		while (off < lens[i]) {
			ssize_t k = send(q->fd, parts[i] + off, lens[i] - off, MSG_NOSIGNAL);
			if (k < 0 && errno == EINTR)
				continue;
			if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
				struct pollfd p = {.fd = q->fd, .events = POLLOUT};
				if (poll(&p, 1, 10000) <= 0)
					return -ETIMEDOUT; /* the broker stopped reading */
				continue;
			}
			if (k <= 0)
				return k < 0 ? -errno : -EPIPE;
			off += (size_t)k;
		}
	}
	return 0;
}

/* ---------------------------------------------------------------- decoding */

typedef struct rd {
	const uint8_t *p, *e;
	int bad;
} rd;

static unsigned get8(rd *r)
{
	if (r->p >= r->e) {
		r->bad = 1;
		return 0;
	}
	return *r->p++;
}

static unsigned get16(rd *r)
{
	unsigned hi = get8(r);
	return hi << 8 | get8(r);
}

static const uint8_t *get_bytes(rd *r, size_t n)
{
	if ((size_t)(r->e - r->p) < n) {
		r->bad = 1;
		return NULL;
	}
	const uint8_t *p = r->p;
	r->p += n;
	return p;
}

static size_t get_vbi(rd *r)
{
	size_t v = 0;
	for (int i = 0; i < 4; i++) {
		unsigned b = get8(r);
		v |= (size_t)(b & 0x7f) << (7 * i);
		if (!(b & 0x80))
			return v;
	}
	r->bad = 1;
	return 0;
}

/* Walks a property list (2.2.2), calling back for user properties; 0 or
 * -1 when malformed. */
static int props(rd *r, void (*user)(void *, const uint8_t *, size_t, const uint8_t *, size_t),
		 void *arg)
{
	size_t n = get_vbi(r);
	if (r->bad || (size_t)(r->e - r->p) < n)
		return -1;
	rd pr = {.p = r->p, .e = r->p + n};
	r->p += n;
	while (pr.p < pr.e && !pr.bad) {
		unsigned id = (unsigned)get_vbi(&pr);
		switch (id) {
		case 0x01:
		case 0x17:
		case 0x19:
		case 0x24:
		case 0x25:
		case 0x28:
		case 0x29:
		case 0x2A: get8(&pr); break;
		case 0x13:
		case 0x21:
		case 0x22:
		case 0x23: get16(&pr); break;
		case 0x02:
		case 0x11:
		case 0x18:
		case 0x27: get_bytes(&pr, 4); break;
		case 0x0B: get_vbi(&pr); break;
		case 0x03:
		case 0x08:
		case 0x09:
		case 0x12:
		case 0x15:
		case 0x16:
		case 0x1A:
		case 0x1C:
		case 0x1F: get_bytes(&pr, get16(&pr)); break;
		case 0x26: { /* user property: a name and a value */
			size_t kn = get16(&pr);
			const uint8_t *k = get_bytes(&pr, kn);
			size_t vn = get16(&pr);
			const uint8_t *v = get_bytes(&pr, vn);
			if (!pr.bad && user)
				user(arg, k, kn, v, vn);
			break;
		}
		default: return -1;
		}
	}
	return pr.bad ? -1 : 0;
}

/* ---------------------------------------------------------------- logging */

/* Problems with messages are logged at most once per MQ_LOG_EVERY, with
 * the count of those not logged (ingest_warn); all are counted in the
 * stats. */
#define mq_warn(q, ...) ingest_warn(&(q)->ing, __VA_ARGS__)

/* ---------------------------------------------------------------- the session */

static int mq_grow_ids(uint16_t **v, size_t n, size_t *cap)
{
	if (n < *cap)
		return 0;
	size_t c = *cap ? *cap * 2 : 64;
	uint16_t *p = realloc(*v, c * sizeof *p);
	if (!p)
		return -ENOMEM;
	*v = p;
	*cap = c;
	return 0;
}

/* Sleeps up to ms, or until stop; 1 when stopping. */
static int mq_nap(mq *q, int ms)
{
	struct pollfd p = {.fd = q->wake[0], .events = POLLIN};
	poll(&p, 1, ms);
	return atomic_load(&q->stop);
}

static int mq_dial(mq *q)
{
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai = NULL;
	int rc = getaddrinfo(q->host, q->port, &hints, &ai);
	if (rc) {
		mq_warn(q, "broker %s:%s: %s", q->host, q->port, gai_strerror(rc));
		return -1;
	}
	int fd = -1;
	for (struct addrinfo *a = ai; a && fd < 0; a = a->ai_next) {
		fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
		if (fd < 0)
			continue;
		if (connect(fd, a->ai_addr, a->ai_addrlen)) {
			rc = errno;
			close(fd);
			fd = -1;
		}
	}
	freeaddrinfo(ai);
	if (fd < 0) {
		mq_warn(q, "broker %s:%s: %s", q->host, q->port, strerror(rc ? rc : ECONNREFUSED));
		return -1;
	}
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	q->fd = fd;
	return 0;
}

/* Receives what is there (up to the buffer's room); 1 when bytes came, 0
 * when none were waiting, -1 when the session ended. */
static int mq_recv(mq *q)
{
	/* Room for 64 KiB more, up to one largest packet plus that: the
	 * buffer starts at a packet's start, so when it is full it holds a
	 * whole packet, which is handled before reading on. */
	size_t lim = q->max_packet + 65536;
	if (q->in_cap - q->in_len < 65536 && q->in_cap < lim) {
		size_t c = q->in_cap ? q->in_cap * 2 : 1 << 20;
		c = c > lim ? lim : c;
		uint8_t *p = realloc(q->in, c);
		if (!p)
			return -1;
		q->in = p;
		q->in_cap = c;
	}
	if (q->in_len == q->in_cap)
		return 0;
	ssize_t k = recv(q->fd, q->in + q->in_len, q->in_cap - q->in_len, 0);
	if (k > 0) {
		q->in_len += (size_t)k;
		return 1;
	}
	if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
		return 0;
	return -1;
}

/* The next whole packet in the buffer: 1 and its parts, 0 when it has not
 * all arrived, -1 when malformed or longer than max_packet. */
static int mq_packet(mq *q, unsigned *type, unsigned *flags, rd *body, size_t *total)
{
	rd h = {.p = q->in, .e = q->in + q->in_len};
	if (q->in_len < 2)
		return 0;
	unsigned b0 = get8(&h);
	size_t len = 0;
	int i = 0;
	for (;; i++) {
		if (h.p >= h.e)
			return 0;
		unsigned b = get8(&h);
		len |= (size_t)(b & 0x7f) << (7 * i);
		if (!(b & 0x80))
			break;
		if (i == 3)
			return -1;
	}
	if (len > q->max_packet)
		return -1;
	size_t head = (size_t)(h.p - q->in);
	if (q->in_len - head < len)
		return 0;
	*type = b0 >> 4;
	*flags = b0 & 15;
	body->p = h.p;
	body->e = h.p + len;
	body->bad = 0;
	*total = head + len;
	return 1;
}

/* Waits for one whole packet of type want (CONNACK, SUBACK) within
 * timeout_ms; 0 and its body (valid until the next receive), or -1. */
static int mq_await(mq *q, unsigned want, rd *body, size_t *total, int timeout_ms)
{
	int64_t end = srv_now() + (int64_t)timeout_ms * 1000000;
	for (;;) {
		unsigned type, flags;
		int r = mq_packet(q, &type, &flags, body, total);
		if (r < 0)
			return -1;
		if (r > 0) {
			if (type == want)
				return 0;
			mq_warn(q, "broker %s:%s sent packet type %u while tallyd waited for %u",
				q->host, q->port, type, want);
			return -1;
		}
		int64_t left = end - srv_now();
		if (left <= 0 || atomic_load(&q->stop))
			return -1;
		struct pollfd p[2] = {{.fd = q->fd, .events = POLLIN},
				      {.fd = q->wake[0], .events = POLLIN}};
		poll(p, 2, (int)(left / 1000000) + 1);
		if (p[1].revents)
			return -1;
		if (p[0].revents && mq_recv(q) < 0)
			return -1;
	}
}

static void mq_drop(mq *q, size_t n)
{
	memmove(q->in, q->in + n, q->in_len - n);
	q->in_len -= n;
}

/* CONNECT with clean start off and a session kept session-expiry long,
 * then CONNACK, then SUBSCRIBE to every filter with QoS 1. */
static int mq_open_session(mq *q)
{
	const srv_conf *cf = q->s->conf;
	mbuf m = {.n = 0};
	put_str(&m, "MQTT", 4);
	put8(&m, 5);
	unsigned fl = 0; /* clean start off (bit 1 clear): the broker keeps our session */
	if (cf->mqtt_username)
		fl |= 0x80;
	if (cf->mqtt_password)
		fl |= 0x40;
	put8(&m, fl);
	put16(&m, (unsigned)(q->keepalive_ns / 1000000000));
	mbuf pr = {.n = 0};
	put8(&pr, 0x11); /* session expiry interval, s */
	int64_t exp = cf->mqtt_session_expiry_ns / 1000000000;
	put32(&pr, exp > UINT32_MAX - 1 ? UINT32_MAX - 1 : (uint32_t)exp);
	put8(&pr, 0x21); /* receive maximum */
	put16(&pr, MQ_RECEIVE_MAX);
	put8(&pr, 0x27); /* maximum packet size */
	put32(&pr, (uint32_t)q->max_packet);
	put_vbi(&m, pr.n);
	put(&m, pr.b, pr.n);
	put_str(&m, q->client_id, strlen(q->client_id));
	if (cf->mqtt_username)
		put_str(&m, cf->mqtt_username, strlen(cf->mqtt_username));
	if (cf->mqtt_password)
		put_str(&m, cf->mqtt_password, strlen(cf->mqtt_password));
	int rc = mq_send_packet(q, P_CONNECT, 0, &m);
	explicit_bzero(&m, sizeof m); /* it held the password */
	if (rc)
		return -1;
	rd b;
	size_t total;
	if (mq_await(q, P_CONNACK, &b, &total, 10000)) {
		mq_warn(q, "broker %s:%s: no CONNACK within 10 s", q->host, q->port);
		return -1;
	}
	unsigned ack = get8(&b), reason = get8(&b);
	if (b.bad || reason) {
		mq_warn(q, "broker %s:%s refused the connection: reason code 0x%02x%s", q->host,
			q->port, reason,
			reason == 0x86 || reason == 0x87 ? " (bad user name or password)" : "");
		return -1;
	}
	mq_drop(q, total);
	srv_log(q->s, TALLY_LOG_INFO, "mqtt: connected to %s:%s as %s (%s session)", q->host,
		q->port, q->client_id, ack & 1 ? "resumed" : "new");

	mbuf s = {.n = 0};
	put16(&s, 1); /* packet id */
	put8(&s, 0);  /* no properties */
	for (unsigned i = 0; i < q->n_topics; i++) {
		put_str(&s, q->topics[i], strlen(q->topics[i]));
		/* QoS 1; retain handling 2: retained messages are not events
		 * of now, do not send them on subscribing */
		put8(&s, 0x01 | 2 << 4);
	}
	if (mq_send_packet(q, P_SUBSCRIBE, 2, &s))
		return -1;
	/* Messages of the resumed session may come before the SUBACK: the
	 * SUBACK is looked for among them in the main loop. */
	return 0;
}

/* ---------------------------------------------------------------- messages */

typedef struct mmsg {
	const uint8_t *topic;
	size_t topic_n;
	unsigned qos, dup;
	uint16_t id;
	char label[256];
	uint64_t seq;
	int labelled, bad_label;
	const uint8_t *payload;
	size_t payload_n;
} mmsg;

static void mq_user_prop(void *arg, const uint8_t *k, size_t kn, const uint8_t *v, size_t vn)
{
	mmsg *m = arg;
	static const char name[] = "Idempotency-Key";
	if (kn != sizeof name - 1 || strncasecmp((const char *)k, name, kn))
		return;
	if (label_parse((const char *)v, vn, m->label, sizeof m->label, &m->seq))
		m->bad_label = 1;
	else
		m->labelled = 1;
}

/* Level `level` (1-based) of the topic, or NULL. */
static const char *mq_topic_level(const mmsg *m, unsigned level, size_t *n)
{
	const char *p = (const char *)m->topic, *e = p + m->topic_n;
	for (unsigned l = 1; p <= e; l++) {
		const char *s = memchr(p, '/', (size_t)(e - p));
		if (!s)
			s = e;
		if (l == level) {
			*n = (size_t)(s - p);
			return *n ? p : NULL;
		}
		p = s + 1;
	}
	return NULL;
}

static int mq_in_redo(mq *q, uint16_t id)
{
	for (size_t i = 0; i < q->n_redo; i++)
		if (q->redo[i] == id) {
			q->redo[i] = q->redo[--q->n_redo];
			return 1;
		}
	return 0;
}

/* Writes one message. 0: done (acknowledge it when durable); 1: the store
 * is full, try again later; -1: the session must end unacknowledged. */
static int mq_apply(mq *q, const mmsg *m)
{
	int tn = (int)(m->topic_n > 200 ? 200 : m->topic_n);
	const char *topic = (const char *)m->topic;
	if (m->bad_label) {
		MQ_ADD(q, bad_messages, 1);
		mq_warn(q,
			"topic '%.*s' message %u: Idempotency-Key is not SOURCE/SEQ; not written",
			tn, topic, m->id);
		return 0;
	}
	if (!m->labelled && m->dup && mq_in_redo(q, m->id)) {
		MQ_ADD(q, duplicates, 1);
		return 0;
	}
	const char *text = (const char *)m->payload;
	size_t len = m->payload_n;
	int json = q->ing.json;
	size_t kn = 0;
	const char *key = json && q->key_level ? mq_topic_level(m, q->key_level, &kn) : NULL;
	ingest_text t;
	if (ingest_decode(&q->ing, text, len, key, kn, srv_clock_ns(), &t))
		return -1;
	if (t.rejected) {
		MQ_ADD(q, events_rejected, t.rejected);
		if (t.why[0])
			mq_warn(q,
				"topic '%.*s' message %u: %s (%" PRIu64 " of %" PRIu64
				" events refused)",
				tn, topic, m->id, t.why, t.rejected, t.events);
	}
	text = t.lp;
	len = t.len;
	if (json && !t.jr.records && !m->labelled) {
		MQ_ADD(q, bad_messages, 1);
		return 0;
	}
	tally_write_result res;
	int dup = 0, rc;
	if (m->labelled)
		rc = tally_write_lp_labelled(q->ing.w, m->label, m->seq, text, len, TALLY_PREC_NS,
					     &res, &dup);
	else
		rc = tally_write_lp(q->ing.w, text, len, TALLY_PREC_NS, &res);
	if (rc == TALLY_EFULL)
		return 1;
	if (rc == TALLY_ESTALE) {
		MQ_ADD(q, bad_messages, 1);
		mq_warn(q,
			"topic '%.*s' message %u: label %s/%" PRIu64 " is older than the "
			"label window: whether it was applied is no longer known; not written",
			tn, topic, m->id, m->label, m->seq);
		return 0;
	}
	if (rc < 0) {
		mq_warn(q,
			"topic '%.*s' message %u: not written: %s; the broker will send it again",
			tn, topic, m->id, *tally_errmsg() ? tally_errmsg() : tally_strerror(rc));
		return -1;
	}
	if (dup) {
		MQ_ADD(q, duplicates, 1);
		return 0;
	}
	if (!m->labelled && m->dup)
		MQ_ADD(q, unlabelled_redeliveries, 1);
	MQ_ADD(q, events, res.accepted);
	if (res.rejected) {
		MQ_ADD(q, events_rejected, res.rejected);
		uint64_t ev = ingest_event_of_line(&q->ing, &t, res.errors[0].line);
		mq_warn(q, "topic '%.*s' message %u: %s %" PRIu64 ": %s", tn, topic, m->id,
			json ? "event" : "line", ev, res.errors[0].reason);
	}
	if (!res.accepted && (!json || !t.jr.records))
		MQ_ADD(q, bad_messages, 1);
	return 0;
}

/* One PUBLISH; 0 done, 1 retry later (store full), -1 end the session. */
static int mq_publish(mq *q, unsigned flags, rd *b)
{
	mmsg m = {.qos = flags >> 1 & 3, .dup = flags >> 3 & 1};
	m.topic_n = get16(b);
	m.topic = get_bytes(b, m.topic_n);
	if (m.qos)
		m.id = (uint16_t)get16(b);
	if (b->bad || m.qos > 1 || props(b, mq_user_prop, &m))
		return -1; /* malformed, or QoS 2 though we asked for 1: not a broker we know */
	m.payload = b->p;
	m.payload_n = (size_t)(b->e - b->p);
	int rc = mq_apply(q, &m);
	if (rc)
		return rc;
	MQ_ADD(q, messages, 1);
	if (m.qos && (mq_grow_ids(&q->acks, q->n_acks, &q->cap_acks) == 0))
		q->acks[q->n_acks++] = m.id;
	else if (m.qos)
		return -1;
	return 0;
}

/* Makes what was written durable and acknowledges it; 0 or -1. */
static int mq_ack(mq *q)
{
	if (!q->n_acks)
		return 0;
	char msg[256];
	if (ingest_synced(&q->ing, ingest_sync_ask(&q->ing), 1, msg, sizeof msg)) {
		/* Not known durable: no PUBACK, so the broker keeps them. */
		mq_warn(q, "sync failed (%s): %zu messages stay unacknowledged", msg, q->n_acks);
		return -1;
	}
	for (size_t i = 0; i < q->n_acks; i++) {
		mbuf a = {.n = 0};
		put16(&a, q->acks[i]);
		if (mq_send_packet(q, P_PUBACK, 0, &a)) {
			/* Durable, not acknowledged: they come again with DUP. */
			memmove(q->acks, q->acks + i, (q->n_acks - i) * sizeof *q->acks);
			q->n_acks -= i;
			return -1;
		}
		MQ_ADD(q, acks, 1);
	}
	q->n_acks = 0;
	return 0;
}

/* Handles every whole packet in the buffer; 0, 1 (the store is full: the
 * packet stays for later) or -1 (end the session). */
static int mq_handle(mq *q)
{
	for (;;) {
		unsigned type, flags;
		size_t total;
		rd b;
		int r = mq_packet(q, &type, &flags, &b, &total);
		if (r <= 0)
			return r;
		switch (type) {
		case P_PUBLISH:
			if ((r = mq_publish(q, flags, &b)))
				return r;
			if (!(flags & 8))
				q->n_redo = 0; /* the redeliveries come first; they are over */
			break;
		case P_SUBACK: {
			get16(&b);
			if (props(&b, NULL, NULL))
				return -1;
			for (unsigned i = 0; b.p < b.e; i++) {
				unsigned code = get8(&b);
				if (code >= 0x80)
					srv_log(q->s, TALLY_LOG_ERROR,
						"mqtt: broker %s:%s refused the subscription to "
						"'%s': "
						"reason code 0x%02x",
						q->host, q->port,
						i < q->n_topics ? q->topics[i] : "?", code);
			}
			break;
		}
		case P_PINGRESP: q->pong_due = 0; break;
		case P_DISCONNECT: {
			unsigned reason = b.p < b.e ? get8(&b) : 0;
			mq_warn(q, "broker %s:%s ended the session: reason code 0x%02x", q->host,
				q->port, reason);
			return -1;
		}
		default: break; /* PUBACK of nothing we sent, AUTH: not asked for */
		}
		mq_drop(q, total);
	}
}

/* One session, until it fails or tallyd stops. */
static void mq_session(mq *q)
{
	if (mq_open_session(q))
		return;
	atomic_store(&q->s->mqtt_st.connected, 1);
	MQ_ADD(q, connects, 1);
	q->ping_at = srv_now() + q->keepalive_ns / 2;
	q->pong_due = 0;
	int full = 0;
	while (!atomic_load(&q->stop)) {
		int r = mq_handle(q);
		if (r < 0)
			break;
		if (r == 1 && !full) {
			full = 1;
			MQ_ADD(q, full_waits, 1);
		} else if (r == 0) {
			full = 0;
		}
		/* Nothing whole is waiting: what was written becomes durable
		 * and is acknowledged before the next wait. */
		if (mq_ack(q))
			break;
		int64_t now = srv_now();
		if (q->pong_due && now > q->pong_due) {
			mq_warn(q, "broker %s:%s did not answer PINGREQ", q->host, q->port);
			break;
		}
		if (now >= q->ping_at) {
			mbuf none = {.n = 0};
			if (mq_send_packet(q, P_PINGREQ, 0, &none))
				break;
			q->ping_at = now + q->keepalive_ns / 2;
			if (!q->pong_due)
				q->pong_due = now + q->keepalive_ns;
		}
		/* A full store: do not read on (the broker holds the rest),
		 * try again in 10 ms. */
		int wait_ms = full ? 10 : (int)((q->ping_at - now) / 1000000) + 1;
		struct pollfd p[2] = {{.fd = q->fd, .events = full ? 0 : POLLIN},
				      {.fd = q->wake[0], .events = POLLIN}};
		if (poll(p, 2, wait_ms) < 0 && errno != EINTR)
			break;
		if (p[0].revents & (POLLIN | POLLERR | POLLHUP)) {
			int k;
			while ((k = mq_recv(q)) > 0 && q->in_len < (1u << 20))
				;
			if (k < 0) {
				mq_handle(q); /* what arrived before the close */
				mq_ack(q);
				mq_warn(q, "broker %s:%s closed the connection", q->host, q->port);
				break;
			}
		}
	}
	if (atomic_load(&q->stop)) {
		/* A clean goodbye: what was written is acknowledged first. */
		if (mq_ack(q) == 0) {
			mbuf d = {.n = 0};
			put8(&d, 0); /* normal disconnection: the session stays */
			mq_send_packet(q, P_DISCONNECT, 0, &d);
		}
	}
	atomic_store(&q->s->mqtt_st.connected, 0);
}

static void *mq_main(void *arg)
{
	mq *q = arg;
	int backoff_ms = 100;
	while (!atomic_load(&q->stop)) {
		if (mq_dial(q) == 0) {
			int64_t t0 = srv_now();
			mq_session(q);
			if (srv_now() - t0 > 10 * INT64_C(1000000000))
				backoff_ms = 100; /* it ran a while: not a failing broker */
			/* Written, durable or not, and not acknowledged: the
			 * broker sends them again with DUP. Synced now, so that
			 * they are not lost meanwhile. */
			char why[256];
			if (q->n_acks)
				ingest_synced(&q->ing, ingest_sync_ask(&q->ing), 1, why,
					      sizeof why);
			for (size_t i = 0; i < q->n_acks; i++)
				if (mq_grow_ids(&q->redo, q->n_redo, &q->cap_redo) == 0)
					q->redo[q->n_redo++] = q->acks[i];
			q->n_acks = 0;
			close(q->fd);
			q->fd = -1;
			q->in_len = 0;
		} else {
			MQ_ADD(q, connect_failures, 1);
		}
		if (mq_nap(q, backoff_ms))
			break;
		backoff_ms = backoff_ms * 2 > 5000 ? 5000 : backoff_ms * 2;
	}
	return NULL;
}

/* ---------------------------------------------------------------- stats */

#define MS(f) offsetof(mqtt_stats, f)
const mqtt_stat_def mqtt_stat_defs[] = {
	{"mqtt_connected", "tally_mqtt_connected", "gauge",
	 "1 while the MQTT session with the broker is up.", MS(connected)},
	{"mqtt_connects", "tally_mqtt_connects_total", "counter",
	 "MQTT sessions opened (CONNACK accepted).", MS(connects)},
	{"mqtt_connect_failures", "tally_mqtt_connect_failures_total", "counter",
	 "Connections to the MQTT broker that failed.", MS(connect_failures)},
	{"mqtt_messages", "tally_mqtt_messages_total", "counter", "MQTT messages handled.",
	 MS(messages)},
	{"mqtt_events", "tally_mqtt_events_total", "counter",
	 "Events (lines) written from MQTT messages.", MS(events)},
	{"mqtt_events_rejected", "tally_mqtt_events_rejected_total", "counter",
	 "Events (lines) of MQTT messages refused (logged).", MS(events_rejected)},
	{"mqtt_bad_messages", "tally_mqtt_bad_messages_total", "counter",
	 "MQTT messages of which nothing was written (logged, acknowledged).", MS(bad_messages)},
	{"mqtt_duplicates", "tally_mqtt_duplicates_total", "counter",
	 "MQTT redeliveries recognised and not applied again.", MS(duplicates)},
	{"mqtt_unlabelled_redeliveries", "tally_mqtt_unlabelled_redeliveries_total", "counter",
	 "MQTT redeliveries without a label, applied again (at least once).",
	 MS(unlabelled_redeliveries)},
	{"mqtt_acks", "tally_mqtt_acks_total", "counter",
	 "PUBACKs sent, each after the sync that made its message durable.", MS(acks)},
	{"mqtt_full_waits", "tally_mqtt_full_waits_total", "counter",
	 "Times the MQTT subscriber stopped reading for a full store.", MS(full_waits)},
};
#undef MS
const size_t mqtt_n_stat_defs = sizeof mqtt_stat_defs / sizeof mqtt_stat_defs[0];

uint64_t mqtt_stat(const mqtt_stats *st, const mqtt_stat_def *d)
{
	return atomic_load_explicit((_Atomic uint64_t *)((char *)st + d->off),
				    memory_order_relaxed);
}

/* ---------------------------------------------------------------- start, stop */

static void mq_free(mq *q)
{
	for (unsigned i = 0; i < q->n_topics; i++)
		free(q->topics[i]);
	free(q->topics);
	ingest_close(&q->ing);
	free(q->in);
	free(q->acks);
	free(q->redo);
	if (q->wake[0] >= 0)
		close(q->wake[0]);
	if (q->wake[1] >= 0)
		close(q->wake[1]);
	free(q);
}

/* Splits "a/+/b,c/#" into filters; each must be a valid MQTT filter. */
static int mq_topics(mq *q, const char *spec)
{
	const char *p = spec;
	while (*p) {
		const char *e = strchr(p, ',');
		size_t n = e ? (size_t)(e - p) : strlen(p);
		while (n && (*p == ' ')) {
			p++;
			n--;
		}
		while (n && p[n - 1] == ' ')
			n--;
		if (n == 0 || n > 65535) {
			srv_log(q->s, TALLY_LOG_ERROR, "mqtt-topics '%s': an empty topic filter",
				spec);
			return -1;
		}
		for (size_t i = 0; i < n; i++) {
			int lone = (i == 0 || p[i - 1] == '/') && (i + 1 == n || p[i + 1] == '/');
			if ((p[i] == '+' && !lone) || (p[i] == '#' && (!lone || i + 1 != n))) {
				srv_log(q->s, TALLY_LOG_ERROR,
					"mqtt-topics: '%.*s': '%c' at byte %zu must fill a whole "
					"level%s",
					(int)n, p, p[i], i + 1,
					p[i] == '#' ? ", the last one" : "");
				return -1;
			}
		}
		char **v = realloc(q->topics, (q->n_topics + 1) * sizeof *v);
		if (!v)
			return -1;
		q->topics = v;
		if (!(v[q->n_topics] = strndup(p, n)))
			return -1;
		q->n_topics++;
		p += n;
		while (*p == ' ')
			p++;
		if (*p == ',')
			p++;
	}
	return q->n_topics ? 0 : -1;
}

int mqtt_start(srv *s)
{
	const srv_conf *cf = s->conf;
	if (!cf->mqtt_broker)
		return 0;
	mq *q = calloc(1, sizeof *q);
	if (!q)
		return -ENOMEM;
	q->s = s;
	q->fd = -1;
	q->wake[0] = q->wake[1] = -1;
	/* host:port, [v6]:port, or host (port 1883) */
	const char *b = cf->mqtt_broker, *colon = strrchr(b, ':');
	const char *hs = b, *he = colon && !strchr(colon, ']') ? colon : b + strlen(b);
	if (*hs == '[') {
		hs++;
		if (he > hs && he[-1] == ']')
			he--;
	}
	unsigned long port = colon && he == colon ? strtoul(colon + 1, NULL, 10) : 1883;
	if (he == hs || (size_t)(he - hs) >= sizeof q->host || port == 0 || port > 65535) {
		srv_log(s, TALLY_LOG_ERROR, "mqtt-broker '%s': not HOST:PORT", b);
		mq_free(q);
		return -EINVAL;
	}
	memcpy(q->host, hs, (size_t)(he - hs));
	snprintf(q->port, sizeof q->port, "%lu", port);
	if (mq_topics(q, cf->mqtt_topics ? cf->mqtt_topics : "cameras/+/events")) {
		mq_free(q);
		return -EINVAL;
	}
	q->key_level = cf->mqtt_key_level;
	q->keepalive_ns = cf->mqtt_keepalive_ns;
	if (q->keepalive_ns < INT64_C(1000000000) ||
	    q->keepalive_ns > 65535 * INT64_C(1000000000)) {
		srv_log(s, TALLY_LOG_ERROR, "mqtt-keepalive: 1s to 65535s");
		mq_free(q);
		return -EINVAL;
	}
	q->client_id = cf->mqtt_client_id ? cf->mqtt_client_id : "tallyd";
	if (strlen(q->client_id) > 65535 || !*q->client_id) {
		srv_log(s, TALLY_LOG_ERROR, "mqtt-client-id: 1 to 65535 bytes");
		mq_free(q);
		return -EINVAL;
	}
	if (cf->mqtt_max_message < 1024 || cf->mqtt_max_message > (256u << 20)) {
		srv_log(s, TALLY_LOG_ERROR, "mqtt-max-message-bytes: 1KiB to 256MiB");
		mq_free(q);
		return -EINVAL;
	}
	q->max_packet = cf->mqtt_max_message;
	int rc;
	const ingest_spec spec = {
		.who = "mqtt",
		.format = cf->mqtt_format ? cf->mqtt_format : "json",
		.table = cf->mqtt_table,
		.table_setting = "mqtt-table",
		.log_burst = 1,
		.log_period_ns = MQ_LOG_EVERY,
	};
	if ((rc = ingest_open(&q->ing, s, &spec))) {
		mq_free(q);
		return rc;
	}
	if (pipe2(q->wake, O_CLOEXEC | O_NONBLOCK)) {
		mq_free(q);
		return -ENOMEM;
	}
	s->mqtt = q;
	if (pthread_create(&q->thr, NULL, mq_main, q)) {
		s->mqtt = NULL;
		mq_free(q);
		return -EAGAIN;
	}
	q->started = 1;
	srv_log(s, TALLY_LOG_INFO, "mqtt: subscribing to %s at %s:%s",
		cf->mqtt_topics ? cf->mqtt_topics : "cameras/+/events", q->host, q->port);
	return 0;
}

void mqtt_stop(srv *s)
{
	mq *q = s->mqtt;
	if (!q)
		return;
	atomic_store(&q->stop, 1);
	ssize_t k = write(q->wake[1], "x", 1);
	(void)k; /* full pipe: a byte is there already */
}

void mqtt_join(srv *s)
{
	mq *q = s->mqtt;
	if (!q)
		return;
	mqtt_stop(s);
	if (q->started)
		pthread_join(q->thr, NULL);
	s->mqtt = NULL;
	mq_free(q);
}
