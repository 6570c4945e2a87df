/*
 * client.h — a connection to tallyd's line-protocol port, shared by the
 * tally client (tally.c) and the torture program (torture.c).
 *
 * A socket and a growable receive buffer cut into reply lines in place.
 * Every wait is bounded by poll when the caller gives a timeout; nothing
 * here exits or prints, so each program says what went wrong its own way.
 */
#ifndef TALLY_CLIENT_H
#define TALLY_CLIENT_H

#include <stddef.h>

typedef struct client_conn {
	int fd;
	char *buf; /* received: unread bytes are buf[off, len) */
	size_t off, len, cap;
	size_t max_line; /* longest reply line accepted */
	int eof;
	int file; /* fd is a file, not a socket (tally --nodes: the merged answer) */
} client_conn;

/* Connects to host:port (either resolved by getaddrinfo), retrying a
 * refused connection for wait_s seconds (a server still starting), with
 * TCP_NODELAY. 0, or -errno of the last attempt; a name that does not
 * resolve gives -EHOSTUNREACH and *why the resolver's message. Lines up
 * to max_line bytes are accepted. */
int client_connect(client_conn *c, const char *host, const char *port, double wait_s,
		   size_t max_line, const char **why);
/* Closes the socket and frees the buffer; safe on a closed connection. */
void client_close(client_conn *c);

/* Sends all n bytes; each wait for room at most timeout_ms (-1: no
 * limit). 0, or -errno (-ETIMEDOUT, -EPIPE...). */
int client_send(client_conn *c, const char *p, size_t n, int timeout_ms);

/* Receives what arrives within timeout_ms (0: only what is there, -1: no
 * limit). 1 when bytes came, 0 when none did, -1 at EOF (c->eof), -E2BIG
 * when a line outgrew max_line, -ENOMEM, or -errno. */
int client_fill(client_conn *c, int timeout_ms);
/* The next complete line with its '\n' removed, NUL-terminated in the
 * buffer, valid until the next call on c; NULL when
 * none is buffered. */
char *client_take(client_conn *c);
/* client_take, receiving as needed for up to timeout_ms in all: 1 and
 * *line, 0 when none came in time, -1 at EOF, <-1 as client_fill. */
int client_line(client_conn *c, int timeout_ms, char **line);

#endif
