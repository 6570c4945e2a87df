/*
 * peers.c — open connections per peer address, capped across listeners.
 *
 * One small hash table of (address, count) under a mutex, taken once when
 * a connection is accepted and once when it is freed: connects are rare
 * beside the requests they carry. The table has twice as many slots as
 * max-connections, so it never fills (an address is in it only while it
 * holds a connection), and a removal shifts the probe run back instead of
 * leaving tombstones, so lookups stay short however long tallyd runs.
 */
#include "peers.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

int peers_init(peers *p, unsigned max_conns, unsigned cap)
{
	memset(p, 0, sizeof *p);
	pthread_mutex_init(&p->mu, NULL);
	p->cap = cap;
	if (!cap)
		return 0;
	uint32_t n = 16;
	while (n < 2 * (uint64_t)max_conns && n < (1u << 30))
		n *= 2;
	if (!(p->t = calloc(n, sizeof *p->t)))
		return -ENOMEM;
	p->mask = n - 1;
	return 0;
}

void peers_free(peers *p)
{
	free(p->t);
	p->t = NULL;
	pthread_mutex_destroy(&p->mu);
}

int peer_of(int fd, peer_addr *out)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof ss;
	memset(out, 0, sizeof *out);
	if (getpeername(fd, (struct sockaddr *)&ss, &len))
		return -1;
	if (ss.ss_family == AF_INET6) {
		memcpy(out->b, &((struct sockaddr_in6 *)&ss)->sin6_addr, 16);
		return 0;
	}
	if (ss.ss_family == AF_INET) {
		out->b[10] = out->b[11] = 0xff;
		memcpy(out->b + 12, &((struct sockaddr_in *)&ss)->sin_addr, 4);
		return 0;
	}
	return -1;
}

static uint32_t peer_hash(const peer_addr *a)
{
	uint64_t x, y;
	memcpy(&x, a->b, 8);
	memcpy(&y, a->b + 8, 8);
	uint64_t h = (x ^ (y * 0x9e3779b97f4a7c15ULL)) * 0xbf58476d1ce4e5b9ULL;
	return (uint32_t)(h >> 32);
}

/* The slot holding a, or the free slot where it would go. */
static uint32_t peer_slot(const peers *p, const peer_addr *a)
{
	uint32_t i = peer_hash(a) & p->mask;
	while (p->t[i].n && memcmp(&p->t[i].a, a, sizeof *a))
		i = (i + 1) & p->mask;
	return i;
}

int peers_take(peers *p, const peer_addr *a)
{
	if (!p->cap)
		return 0;
	pthread_mutex_lock(&p->mu);
	peer_ent *e = &p->t[peer_slot(p, a)];
	int rc = 0;
	if (e->n >= p->cap) {
		rc = -1;
	} else {
		e->a = *a;
		e->n++;
	}
	pthread_mutex_unlock(&p->mu);
	return rc;
}

void peers_drop(peers *p, const peer_addr *a)
{
	if (!p->cap)
		return;
	pthread_mutex_lock(&p->mu);
	uint32_t i = peer_slot(p, a);
	if (p->t[i].n && --p->t[i].n == 0) {
		/* backward shift: move later entries of the run into the hole
		 * when their home slot does not lie between the hole and them */
		uint32_t j = i;
		for (;;) {
			j = (j + 1) & p->mask;
			if (!p->t[j].n)
				break;
			uint32_t home = peer_hash(&p->t[j].a) & p->mask;
			if (((j - home) & p->mask) >= ((j - i) & p->mask)) {
				p->t[i] = p->t[j];
				p->t[j].n = 0;
				i = j;
			}
		}
	}
	pthread_mutex_unlock(&p->mu);
}

void peer_format(const peer_addr *a, char *out, size_t cap)
{
	static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
	char buf[INET6_ADDRSTRLEN] = "?";
	if (!memcmp(a->b, mapped, 12))
		inet_ntop(AF_INET, a->b + 12, buf, sizeof buf);
	else
		inet_ntop(AF_INET6, a->b, buf, sizeof buf);
	snprintf(out, cap, "%s", buf);
}
