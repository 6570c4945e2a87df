/*
 * peers.h — open connections per peer address, capped (internal).
 *
 * Both listeners (line protocol and HTTP) count into one table, so
 * max-connections-per-address bounds what one address holds across them.
 */
#ifndef TALLY_PEERS_H
#define TALLY_PEERS_H

#include <pthread.h>
#include <stdint.h>

/* An address as 16 bytes: IPv6, or IPv4 mapped (::ffff:a.b.c.d). */
typedef struct peer_addr {
	uint8_t b[16];
} peer_addr;

typedef struct peer_ent {
	peer_addr a;
	uint32_t n; /* 0: a free slot */
} peer_ent;

typedef struct peers {
	pthread_mutex_t mu;
	peer_ent *t; /* open addressing, linear probing, no tombstones */
	uint32_t mask;
	unsigned cap; /* most connections per address; 0: no cap, no table */
} peers;

/* A table for max_conns connections at most, each address holding at
 * most cap of them (0: no cap; then every call is a no-op). -ENOMEM. */
int peers_init(peers *p, unsigned max_conns, unsigned cap);
void peers_free(peers *p);

/* The peer address of a connected socket; -1 when it has none (a Unix
 * socket), which is never capped. */
int peer_of(int fd, peer_addr *out);

/* Counts one more connection of a; 0, or -1 when a holds cap already. */
int peers_take(peers *p, const peer_addr *a);
/* One connection of a is gone. */
void peers_drop(peers *p, const peer_addr *a);

/* a as text, for log lines and refusals. */
void peer_format(const peer_addr *a, char *out, size_t cap);

#endif
