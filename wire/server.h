/*
 * server.h — tallyd's shards, connections and syncer (internal to wire/).
 *
 * Ownership: a connection belongs to exactly one shard thread for its whole
 * life; only that thread touches it. Threads meet in three places only: the
 * shard mailboxes (new connections, wake-ups), the syncer's counters
 * (tickets), and relaxed atomic statistics.
 */
#ifndef TALLY_SERVER_H
#define TALLY_SERVER_H

#include <liburing.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "conf.h"
#include "metrics.h"
#include "mqtt.h"
#include "peers.h"
#include "tally.h"

typedef struct srv srv;
typedef struct wshard wshard;
typedef struct wconn wconn;

/* ---------------------------------------------------------------- protocols */

/*
 * The seam between a connection's transport and the protocol spoken on it.
 * The loops (server.c's io_uring, epoll.c) own the socket: they receive
 * into the shard's buffers, send c->out[out_head, out_tail), close, and
 * tick; they call the protocol only through this table, chosen by the
 * listener that accepted the socket. A protocol answers by appending to
 * c->out (conn_put) and pauses by making wants_recv false; it never
 * touches the socket. Another transport (TLS) goes below this table
 * without changing a protocol.
 */
typedef struct wproto {
	const char *name;
	int (*init)(wconn *c);                              /* 0, or -ENOMEM: refuse the socket */
	void (*on_data)(wconn *c, const char *p, size_t n); /* bytes received */
	/* Go on as far as possible: after a send (conn_sent), the peer's
	 * EOF (conn_eof), a wake-up (sync done, retry due). */
	void (*step)(wconn *c);
	void (*tick)(wconn *c, int64_t now); /* timers, about once a second */
	int (*wants_recv)(const wconn *c);   /* 0: stop reading (backpressure) */
	void (*begin_shutdown)(wconn *c);    /* SIGTERM: finish, say goodbye */
	void (*fini)(wconn *c);              /* free the protocol's own state */
} wproto;

enum { PROTO_LP = 0, PROTO_HTTP = 1, PROTO_N };
extern const wproto conn_lp_proto; /* conn.c: line protocol and #! commands */
extern const wproto httpd_proto;   /* httpd.c: HTTP/1.1 */

/* ---------------------------------------------------------------- stats */

/* HTTP endpoints, for per-endpoint counters (httpd.c names them). */
enum http_ep {
	HEP_WRITE_V1 = 0, /* POST /write */
	HEP_WRITE_V2,     /* POST /api/v2/write */
	HEP_EVENTS,       /* POST /api/v1/events */
	HEP_PING,
	HEP_HEALTH,
	HEP_READY,
	HEP_METRICS,
	HEP_SETTINGS, /* GET /settings: QuestDB's clients ask it for the ILP version */
	HEP_QUERY,    /* GET /api/v1/... and the cameras' route (httpq.c) */
	HEP_WEB,      /* GET /, /ui/...: the dashboard's files (wire/web.c) */
	HEP_INFLUXQL, /* GET/POST /query: InfluxQL (influxq_exec.c) */
	HEP_OTHER,    /* unknown paths, and requests refused before routing */
	HEP_N
};

/* The endpoint label of each, for /metrics ("/write", ..., "other"). */
extern const char *const http_ep_names[HEP_N];

typedef struct whttp_ep_stats {
	_Atomic uint64_t requests; /* answered */
	_Atomic uint64_t errors;   /* answered 4xx or 5xx */
	metrics_hist lat;          /* latency: head received to answer queued */
} whttp_ep_stats;

typedef struct wstats {
	_Atomic uint64_t conns_total, conns_refused, bytes_in, bytes_out, lines_accepted,
		lines_rejected, commands, queries, syncs, replies_dropped, idle_closed, full_waits;
	/* HTTP (httpd.c); lines_accepted/rejected above count every protocol */
	_Atomic uint64_t http_conns, http_lines_accepted, http_lines_rejected, http_gzip_bodies,
		http_header_timeouts, http_on_lp_port, http_body_timeouts;
	/* TLS (tls.c) */
	_Atomic uint64_t tls_handshakes, tls_failures, tls_plaintext, tls_timeouts;
	/* Authentication and admission (conn.c, httpd.c, server.c): wrong or
	 * missing tokens, connections closed unauthenticated (deadline or
	 * max-unauthenticated), connections refused by
	 * max-connections-per-address */
	_Atomic uint64_t auth_failures, auth_closed, conns_refused_peer;
	whttp_ep_stats http[HEP_N];
} wstats;

/* ---------------------------------------------------------------- connections */

enum conn_state {
	CONN_OPEN = 0, /* reading and answering */
	CONN_LINGER,   /* answering no more: flush replies, discard input, close */
	CONN_DEAD,     /* socket shut down; freed once no I/O is in flight */
};

/* What produces a waiting connection's answer: a streamed query, a
 * fan-out job (fanserv.c), an administrative command off the loop
 * (offloop.c). */
enum conn_prod { PROD_NONE = 0, PROD_SERIES, PROD_KEYS, PROD_SCAN, PROD_FANOUT, PROD_JOB };

struct wconn {
	wshard *sh;
	const wproto *proto;
	void *ps; /* the protocol's own state (HTTP's request), NULL for the line protocol */
	int fd;
	enum conn_state state;
	wconn *prev, *next; /* the shard's list */
	wconn *dirty_next;  /* the shard's list of connections to reconcile */
	unsigned dirty : 1;

	/* I/O state, owned by the loop. */
	unsigned inflight; /* operations whose completions are still due */
	unsigned recv_armed : 1, recv_cancelling : 1, send_busy : 1, wr_shut : 1, killed : 1;
	unsigned ep_events;        /* epoll: the events registered for fd */
	unsigned send_blocked : 1; /* epoll: the last send would have blocked */
	size_t send_len;           /* bytes of the send in flight */

	/* Protocol state. */
	struct wtls *tls; /* TLS below the protocol (tls.c); NULL: plain TCP */
	unsigned authed : 1, eof : 1, discard : 1;
	unsigned unauth_counted : 1, unauth_over : 1; /* in srv.n_unauth; past its cap */
	unsigned peer_counted : 1;                    /* in srv.peers, as peer */
	peer_addr peer;
	unsigned first_seen : 1; /* the first record was looked at (an HTTP request?) */
	unsigned fan_off : 1, fan_partial : 1; /* #!fanout off / partial (fanserv.c) */
	unsigned final_sync : 2;               /* shutdown: 1 asked, 2 waiting for its last sync */
	enum tally_precision prec;
	uint64_t lines; /* physical lines consumed; the next line is lines + 1 */
	uint64_t accepted, rejected;
	char *in;                       /* in[in_head, in_len): received, not yet processed; */
	size_t in_head, in_len, in_cap; /* it starts at a record start */
	char in_last;                   /* last byte received (escape context across packets) */

	/* What the connection waits for before reading on (0 / none: nothing). */
	uint64_t sync_ticket;
	int64_t retry_at;     /* a write that met a full store is retried then */
	int64_t auth_fail_at; /* a failed #!auth is answered (and closed) then */
	int64_t full_since;
	enum conn_prod prod;
	void *prod_state;

	/* Replies: out[head, tail) is unsent. out_old: the buffer a send in
	 * flight reads (the kernel holds its address until the completion),
	 * kept when out had to grow meanwhile. */
	char *out, *out_old;
	size_t out_head, out_tail, out_cap;
	uint64_t dropped_unreported;

	int64_t born;        /* monotonic ns of the accept */
	int64_t last_active; /* monotonic ns of the last complete line in, or reply out */

	/* "#!batch SOURCE SEQ" ... "#!end" (wire/conn.c, "labelled batches");
	 * NULL outside a batch */
	struct conn_lbatch *lb;
	int64_t linger_until;
};

/* ---------------------------------------------------------------- shards */

struct wshard {
	srv *srv;
	unsigned id;
	pthread_t thr;
	tally_writer *w;

	struct io_uring ring;
	int ring_ok;
	int epfd; /* epoll backend: its epoll fd, and one receive buffer */
	char *ep_buf;
	struct io_uring_buf_ring *br;
	size_t br_bytes;
	char *bufs;
	unsigned nbufs, buf_bytes;

	/* Mailbox: fds handed over by the acceptor, and wake-ups. */
	int efd;
	uint64_t efd_buf;
	pthread_mutex_t mu;
	int *mail;
	size_t n_mail, cap_mail;
	_Atomic int poke;
	_Atomic unsigned fan_ready; /* fan-out jobs of this shard's connections done */
	_Atomic unsigned job_ready; /* off-loop commands of its connections done (offloop.c) */

	wconn *conns;
	unsigned n_conns;
	_Atomic unsigned load; /* n_conns, readable by the acceptor */
	wconn *dirty;

	int listen_fd;      /* shard 0 accepts for everyone: the line protocol, */
	int http_listen_fd; /* and HTTP (-1: off) */
	unsigned accept_armed : 1, http_accept_armed : 1, eventfd_armed : 1, stopping : 1,
		hurry : 1;
	int init_rc; /* set by the thread once its ring is up (or failed) */
	int init_done;
	int64_t drain_until;
	unsigned n_sync_wait;
	int64_t next_tick;
	int64_t active_at; /* last completion reaped (busy polling) */

	char *text_buf; /* answers are formatted here (conn.c) */
	size_t text_cap;
	char *scratch; /* command arguments */
	size_t scratch_cap;
	wstats st;
};

/* ---------------------------------------------------------------- server */

struct srv {
	srv_conf *conf;
	tally_db *db;
	unsigned n_shards;
	wshard *shards;
	int listen_fd, http_listen_fd;
	unsigned port, http_port; /* bound ports; http_port 0: HTTP is off */
	_Atomic unsigned n_conns;
	peers peers;                    /* open connections per client address (peers.c) */
	_Atomic int64_t lp_http_logged; /* last log of an HTTP request on the LP port */
	_Atomic uint64_t lp_http_unlogged;
	_Atomic unsigned n_unauth;        /* line-protocol connections not yet authenticated */
	_Atomic int64_t auth_fail_logged; /* last log of a failed #!auth */
	_Atomic uint64_t auth_fail_unlogged;
	int use_epoll; /* io_uring unavailable (or --io epoll) */
	/* HTTPS (tls.c): the certificate new handshakes use, swapped under
	 * tls_mu by SIGHUP; each connection's SSL holds its own reference. */
	struct ssl_ctx_st *tls_ctx;
	pthread_mutex_t tls_mu;
	_Atomic int64_t tls_logged; /* last log of a failed handshake */
	_Atomic uint64_t tls_unlogged, tls_reloads;
	_Atomic unsigned next_shard;
	_Atomic int stopping; /* 1: stop requested; 2: hurry */
	pthread_mutex_t init_mu;
	pthread_cond_t init_cv;
	unsigned started_threads;
	_Atomic unsigned exited; /* shard threads that have returned */
	int64_t started;

	/* Syncer: tickets are handed out in order; a ticket is served by the
	 * first sync that starts after it was taken. */
	pthread_t syncer;
	pthread_mutex_t smu;
	pthread_cond_t scv;
	pthread_cond_t dcv;         /* broadcast when sync_done moves (srv_sync_wait) */
	uint64_t sync_req;          /* last ticket handed out */
	_Atomic uint64_t sync_done; /* every ticket <= this is durable */
	/* A ticket's answer: OK when a sync that succeeded covered it
	 * (ticket <= sync_ok), else the last failure (its writes are not
	 * known durable). Not sticky: a later good sync answers OK again. */
	uint64_t sync_ok;
	int sync_rc;
	char sync_msg[256];
	_Atomic int dirty; /* writes since the last sync */
	int syncer_stop;
	metrics_hist sync_seconds;     /* durations of the syncer's tally_db_sync */
	struct jsonev_maps *json_maps; /* JSON event mappings by table (jsonev.c), read-only */
	/* Queries across nodes (fanserv.c): every node, this one first; 0
	 * nodes when peers is unset. node_id tells this node apart when a
	 * list names it twice. */
	struct fan_node *fan_nodes;
	size_t n_fan_nodes;
	struct fan_pool *fan_pool; /* idle connections to them, kept between queries */
	uint64_t node_id;
	_Atomic unsigned fan_jobs;
	/* The MQTT subscriber (mqtt.c); NULL when mqtt-broker is unset. */
	struct mq *mqtt;
	mqtt_stats mqtt_st;
	struct kafka *kafka;     /* the Kafka consumer (kafka.c); NULL: off */
	struct offloop *offloop; /* the admin worker: commands off the loop (offloop.c) */
};

/* server.c */
int srv_open(srv *s, srv_conf *conf);
int srv_start(srv *s); /* shard threads and the syncer */
void srv_stop(srv *s); /* begin the graceful stop; a second call hurries it */
int srv_wait(srv *s);  /* joins the threads after the stop, syncs: 0 or error */
void srv_close(srv *s);
uint64_t srv_sync_ticket(srv *s);
int srv_sync_result(srv *s, uint64_t ticket, char *msg, size_t cap);
/* Blocks until the ticket is served (a thread of its own, not a shard's). */
void srv_sync_wait(srv *s, uint64_t ticket);
void srv_conn_dirty(wconn *c);
void srv_wake_shard(wshard *sh); /* its loop runs sh_mailbox soon */
int64_t srv_now(void);           /* monotonic ns */
int64_t srv_clock_ns(void);      /* wall clock ns since the epoch */
void srv_log(srv *s, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* server.c, for the loops: what is the same whatever the loop. */
void sh_accepted(wshard *sh, int fd, unsigned proto); /* a new socket from accept */
void sh_mailbox(wshard *sh);                          /* the eventfd was readable */
void sh_tick(wshard *sh, int64_t now);
void sh_release(wshard *sh, wconn *c); /* close and free a dead connection */
void sh_flush_dirty(wshard *sh);

/* epoll.c: the fallback loop (same connection layer). */
int ep_init(wshard *sh);
void ep_run(wshard *sh);
int ep_reconcile(wshard *sh, wconn *c);
void ep_stop_accepting(wshard *sh);
void ep_fini(wshard *sh);

/* conn.c: what every protocol shares (a connection, its reply buffer,
 * lingering), and the line protocol. */
wconn *conn_new(wshard *sh, int fd, const wproto *proto); /* NULL: out of memory */
void conn_free(wconn *c);
/* Appends one whole reply, or drops it whole when more than
 * reply-buffer-bytes are unsent (force: never drop). */
void conn_put(wconn *c, const char *s, size_t n, int force);
size_t conn_unsent(const wconn *c);
/* The loops: n bytes of out were sent; the peer shut down its side.
 * Both end in the protocol's step. */
void conn_sent(wconn *c, size_t n);
void conn_eof(wconn *c);
/* After a write returned rc: 1 when it met a full store and should be
 * retried at c->retry_at (within full-wait), else 0. */
int conn_full_wait(wconn *c, int rc);
/* Lines in p[0, n): every '\n', and a last line without one. */
uint64_t conn_count_lines(const char *p, size_t n);
/* Answers no more: flush what is queued (then msg and '\n', when msg is
 * not NULL), read and discard until the peer closes or a linger ends. */
void conn_close_with(wconn *c, const char *msg);
/* The lingering part of step and tick, whatever the protocol. */
void conn_linger_step(wconn *c);
int conn_linger_tick(wconn *c, int64_t now); /* 1: c is lingering or dead */
int conn_token_ok(const char *want, const char *got, size_t got_len);
/* A log line repeated by clients is written at most once per `secs`
 * seconds, server-wide (at: when it last was, unlogged: how many were
 * not since): 1 when this one is due (*more: how many were not written
 * since the last), 0 when it is counted instead. */
int conn_log_due(_Atomic int64_t *at, _Atomic uint64_t *unlogged, int secs, uint64_t *more);
/* A failed authentication on c (what: "a wrong token", "no token over
 * HTTP"...): counted (auth_failures), and logged with the peer's address
 * (never the token), at most one line every 10 s server-wide, which says
 * how many were not logged since the last. */
void conn_auth_log(wconn *c, const char *what);
void conn_stats_add(wshard *sh, const char *name, uint64_t v);
/* The message of the last engine error on this thread, else rc's name. */
const char *conn_errmsg(int rc);

#endif
