/*
 * tls.h — TLS below the protocol table (internal to wire/).
 *
 * A connection on a TLS listener has c->tls; the loops hand received bytes
 * to tls_recv and send what tls_tx gives them, so a protocol never knows
 * whether its bytes were encrypted. Without c->tls both pass straight
 * through to the protocol and c->out.
 */
#ifndef TALLY_TLS_H
#define TALLY_TLS_H

#include <stddef.h>
#include <stdint.h>

#include "server.h"

/* The server's certificate: loaded at srv_open (0, or -1 after naming the
 * file that failed on stderr), swapped by tls_srv_reload (SIGHUP: 0, or -1
 * with the old one kept), freed by tls_srv_fini. */
int tls_srv_init(srv *s);
int tls_srv_reload(srv *s);
void tls_srv_fini(srv *s);

/* A new connection on a TLS listener: 0, or -ENOMEM. */
int tls_conn_start(wconn *c);
void tls_conn_free(wconn *c);

/* The loops: n bytes arrived (decrypted for the protocol when TLS). */
void tls_recv(wconn *c, const char *p, size_t n);
/* The bytes to send next (*p, return value; 0: nothing). With TLS, it
 * first encrypts what the protocol queued, once the last span is sent;
 * never call it while a send is in flight. */
size_t tls_tx(wconn *c, const char **p);
/* n bytes of what tls_tx gave were sent. */
void tls_sent(wconn *c, size_t n);
/* Encrypted bytes waiting to be sent (0 without TLS). */
size_t tls_pending(const wconn *c);
/* A handshake past tls-handshake-timeout is closed. */
void tls_tick(wconn *c, int64_t now);

/* #!stats rows: handshakes, failures, plaintext, timeouts (summed over
 * shards), and reloads. */
uint64_t tls_stat(srv *s, int which);
enum { TLS_ST_HANDSHAKES, TLS_ST_FAILURES, TLS_ST_PLAINTEXT, TLS_ST_TIMEOUTS, TLS_ST_RELOADS };

#endif
