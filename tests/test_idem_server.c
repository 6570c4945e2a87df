/*
 * test_idem_server.c — "#!batch SOURCE SEQ" ... "#!end" over TCP, on a bad
 * link.
 *
 * Retrying clients send labelled batches to tallyd and keep resending each
 * one until it is acknowledged (applied or duplicate). The link misbehaves
 * on purpose: a connection is cut before "#!end" (nothing may be written),
 * or after it without reading the answer (the answer is lost: the retry
 * must be a duplicate), and tallyd is killed with SIGKILL and restarted
 * twice in the middle. Every batch holds two identical events (same key,
 * time and value), and batches repeat each other's events: afterwards
 * every event is counted exactly once per batch.
 *
 * The second test puts a TCP proxy between the clients and tallyd
 * (flaky_proxy_...): a connection in eight is delayed, one is cut after a
 * random number of the client's bytes, one loses tallyd's reply; tallyd
 * is killed -9 twice and the proxy follows it to its new port. The clients
 * take turns, each retrying its batch on a new connection until
 * acknowledged.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>

#include "srvutil.h"

#define NSRC   3
#define NBATCH 300 /* per source */
#define PER    2   /* events per batch */

static void start(tsrv *s)
{
	const char *args[] = {"--shards", "2", "--log-level", "warn", NULL};
	tsrv_spawn(s, args, 1);
}

/* Sends batch (src, seq) once over c, misbehaving as told: 0 cut before
 * #!end, 1 cut before reading the answer, 2 read the answer. Returns 1
 * when acknowledged. */
static int send_batch(tcli *c, int src, unsigned seq, int how)
{
	tcli_sendf(c, "#!batch gw-%d %u\n", src, seq);
	for (int i = 0; i < PER; i++)
		tcli_sendf(c, "cars,cam=c%u v=%ui 1700000000000000000\n", seq % 4, seq % 3);
	if (how == 0)
		return 0;
	tcli_sendf(c, "#!end\n");
	if (how == 1)
		return 0;
	char *l = tcli_line(c, 30000);
	if (!l)
		return 0; /* the server died meanwhile */
	char want[64];
	snprintf(want, sizeof want, "OK batch gw-%d %u ", src, seq);
	int ok = strncmp(l, want, strlen(want)) == 0;
	cr_assert(ok, "batch gw-%d %u: '%s'", src, seq, l);
	free(l);
	return 1;
}

Test(idem_server, retrying_clients_count_every_event_once_across_kills)
{
	tsrv s;
	tdir_make(&s);
	start(&s);
	unsigned next[NSRC] = {0};
	uint64_t rng = 0x1234567;
	unsigned sent = 0, kills = 0;
	tcli *c = NULL;
	while (1) {
		int src = -1;
		for (int k = 0; k < NSRC; k++)
			if (next[k] < NBATCH && (src < 0 || next[k] < next[src]))
				src = k;
		if (src < 0)
			break;
		unsigned seq = next[src] + 1;
		for (int attempt = 0;; attempt++) {
			cr_assert_lt(attempt, 50, "batch gw-%d %u never acknowledged", src, seq);
			if (!c)
				c = tcli_open(s.port);
			rng = rng * 6364136223846793005u + 1442695040888963407u;
			int how = (rng >> 33) % 10 == 0 ? 0 : (rng >> 33) % 10 == 1 ? 1 : 2;
			int acked = send_batch(c, src, seq, how);
			if (!acked) {
				tcli_close(c);
				c = NULL;
			}
			/* a kill -9 in the middle, twice */
			if (++sent % (NSRC * NBATCH / 3) == 0 && kills < 2) {
				if (c) {
					tcli_close(c);
					c = NULL;
				}
				tsrv_wait(&s, SIGKILL);
				kills++;
				start(&s);
			}
			if (acked)
				break;
		}
		next[src] = seq;
	}
	if (!c)
		c = tcli_open(s.port);
	cr_assert_eq(kills, 2);
	/* brute force over the distinct batches */
	uint64_t count[4] = {0}, sum[4] = {0};
	for (int k = 0; k < NSRC; k++)
		for (unsigned q = 1; q <= NBATCH; q++) {
			count[q % 4] += PER;
			sum[q % 4] += PER * (q % 3);
		}
	for (int key = 0; key < 4; key++) {
		ttable t;
		tcli_query(c, &t, "#!agg cars v c%d 0 1800000000000000000", key);
		cr_assert_null(t.err, "%s", t.err);
		cr_assert_eq(t.n, 2);
		cr_assert_eq(strtoull(tcell(t.rows[1], 0), NULL, 10), count[key], "count of c%d",
			     key);
		cr_assert_eq(strtod(tcell(t.rows[1], 1), NULL), (double)sum[key]);
		ttable_free(&t);
	}
	cr_assert_eq(tstat(c, "label_sources"), NSRC);
	tcli_close(c);
	cr_assert_eq(tsrv_wait(&s, SIGTERM), 0);
	tdir_remove(&s);
}

Test(idem_server, batch_answers_errors_and_framing)
{
	tsrv s;
	tdir_make(&s);
	start(&s);
	tcli *c = tcli_open(s.port);
	tcli_sendf(c, "#!batch cam-1 7\ncars,cam=a v=1i 1700000000000000000\n"
		      "cars,cam=a v=bad 1700000000000000000\n#!end\n");
	free(tcli_expect(c, "ERR line 3: "));
	free(tcli_expect(c, "OK batch cam-1 7 applied accepted=1 rejected=1"));
	tcli_sendf(c, "#!batch cam-1 7\ncars,cam=a v=1i 1700000000000000000\n#!end\n");
	free(tcli_expect(c, "OK batch cam-1 7 duplicate"));
	/* a command inside a batch drops it */
	tcli_sendf(c, "#!batch cam-1 8\ncars,cam=a v=1i 1700000000000000000\n#!ping\n#!end\n");
	free(tcli_expect(c, "ERR line 10: only #!end ends batch cam-1 8"));
	free(tcli_expect(c, "ERR line 11: "));
	tcli_sendf(c, "#!batch cam-1 -3\n");
	free(tcli_expect(c, "ERR line 12: usage: #!batch SOURCE SEQ"));
	tcli_sendf(c, "#!batch cam-1 1000\n#!end\n#!batch cam-1 2\n#!end\n");
	free(tcli_expect(c, "OK batch cam-1 1000 applied accepted=0"));
	free(tcli_expect(c, "ERR batch cam-1 2: source 'cam-1' sequence 2"));
	ttable t;
	tcli_query(c, &t, "#!agg cars v a 0 1800000000000000000");
	cr_assert_null(t.err, "%s", t.err);
	cr_assert_eq(strtoull(tcell(t.rows[1], 0), NULL, 10), 1);
	ttable_free(&t);
	cr_assert_eq(tstat(c, "label_duplicates"), 1);
	cr_assert_eq(tstat(c, "label_too_old"), 1);
	tcli_close(c);
	cr_assert_eq(tsrv_wait(&s, SIGTERM), 0);
	tdir_remove(&s);
}

/* ---------------------------------------------------------------- a flaky link */

/*
 * A TCP proxy between the clients and tallyd that misbehaves per
 * connection: forwards faithfully, delays every chunk, cuts the connection
 * after a random number of the client's bytes (mid-batch), or cuts it when
 * tallyd's first reply arrives (the reply is dropped: the batch may be
 * applied, the client cannot know). The upstream port follows tallyd's
 * restarts.
 */
typedef struct proxy {
	int lfd;
	unsigned port;
	_Atomic unsigned upstream;
	_Atomic int stop;
	_Atomic unsigned seed;
	pthread_t th;
} proxy;

typedef struct plink {
	proxy *px;
	int cfd;
	unsigned mode; /* 0 faithful, 1 delays, 2 cut after cut_at client bytes, 3 drop replies */
	size_t cut_at;
} plink;

static void *link_main(void *arg)
{
	plink *l = arg;
	struct sockaddr_in a = {.sin_family = AF_INET,
				.sin_port = htons((uint16_t)atomic_load(&l->px->upstream)),
				.sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	int sfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	size_t up = 0;
	if (sfd >= 0 && connect(sfd, (struct sockaddr *)&a, sizeof a) == 0) {
		char buf[8192];
		for (;;) {
			struct pollfd pf[2] = {{.fd = l->cfd, .events = POLLIN},
					       {.fd = sfd, .events = POLLIN}};
			if (poll(pf, 2, 200) < 0 || atomic_load(&l->px->stop))
				break;
			int from = pf[0].revents ? 0 : pf[1].revents ? 1 : -1;
			if (from < 0)
				continue;
			ssize_t n = recv(pf[from].fd, buf, sizeof buf, 0);
			if (n <= 0)
				break;
			if (from == 1 && l->mode == 3)
				break; /* the reply is lost with the connection */
			if (from == 0 && l->mode == 2 && up + (size_t)n > l->cut_at)
				break; /* cut in the middle of what the client sent */
			if (l->mode == 1)
				usleep(1000 + (unsigned)n % 3000); /* a slow link */
			up += from == 0 ? (size_t)n : 0;
			if (send(pf[1 - from].fd, buf, (size_t)n, MSG_NOSIGNAL) != n)
				break;
		}
	}
	if (sfd >= 0)
		close(sfd);
	close(l->cfd);
	free(l);
	return NULL;
}

static void *proxy_main(void *arg)
{
	proxy *px = arg;
	while (!atomic_load(&px->stop)) {
		struct pollfd pf = {.fd = px->lfd, .events = POLLIN};
		if (poll(&pf, 1, 100) <= 0)
			continue;
		int cfd = accept4(px->lfd, NULL, NULL, SOCK_CLOEXEC);
		if (cfd < 0)
			continue;
		plink *l = calloc(1, sizeof *l);
		unsigned r = atomic_fetch_add(&px->seed, 2654435761u) * 2246822519u;
		l->px = px;
		l->cfd = cfd;
		l->mode = (r >> 8) % 8 <= 3 ? (r >> 8) % 8 : 0; /* 3 in 8 misbehave */
		l->cut_at = (r >> 16) % 400;
		pthread_t t;
		pthread_create(&t, NULL, link_main, l);
		pthread_detach(t);
	}
	return NULL;
}

static void proxy_start(proxy *px, unsigned upstream)
{
	px->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t al = sizeof a;
	cr_assert_eq(bind(px->lfd, (struct sockaddr *)&a, sizeof a), 0);
	cr_assert_eq(listen(px->lfd, 64), 0);
	getsockname(px->lfd, (struct sockaddr *)&a, &al);
	px->port = ntohs(a.sin_port);
	atomic_store(&px->upstream, upstream);
	atomic_store(&px->seed, 12345);
	pthread_create(&px->th, NULL, proxy_main, px);
}

/* One attempt at batch (src, seq) through the proxy: 1 when acknowledged. */
static int flaky_attempt(unsigned port, int src, unsigned seq)
{
	tcli *c = tcli_open(port);
	char buf[512];
	int n = snprintf(buf, sizeof buf, "#!batch gw-%d %u\n", src, seq);
	for (int i = 0; i < PER; i++)
		n += snprintf(buf + n, sizeof buf - (size_t)n,
			      "cars,cam=c%u v=%ui 1700000000000000000\n", seq % 4, seq % 3);
	n += snprintf(buf + n, sizeof buf - (size_t)n, "#!end\n");
	int acked = 0;
	if (tcli_send(c, buf, (size_t)n) == 0) {
		char *l = tcli_line(c, 30000);
		char want[64];
		snprintf(want, sizeof want, "OK batch gw-%d %u ", src, seq);
		acked = l && !strncmp(l, want, strlen(want));
		cr_assert(!l || acked, "batch gw-%d %u: '%s'", src, seq, l);
		free(l);
	}
	tcli_close(c);
	return acked;
}

Test(idem_server, flaky_proxy_and_kills_count_every_event_once)
{
	tsrv s;
	tdir_make(&s);
	start(&s);
	proxy px = {0};
	proxy_start(&px, s.port);
	unsigned next[NSRC] = {0}, tries = 0, kills = 0, lost = 0;
	/* the clients take turns, each retrying its batch until acknowledged */
	for (int done = 0; !done;) {
		done = 1;
		for (int src = 0; src < NSRC; src++) {
			if (next[src] == NBATCH)
				continue;
			done = 0;
			unsigned seq = next[src] + 1;
			for (int attempt = 0;; attempt++) {
				cr_assert_lt(attempt, 100, "batch gw-%d %u never acknowledged", src,
					     seq);
				int acked = flaky_attempt(px.port, src, seq);
				lost += !acked;
				if (++tries % 400 == 0 && kills < 2) {
					tsrv_wait(&s, SIGKILL);
					kills++;
					start(&s);
					atomic_store(&px.upstream, s.port);
				}
				if (acked)
					break;
			}
			next[src] = seq;
		}
	}
	cr_assert_eq(kills, 2);
	cr_assert_gt(lost, 100, "the link lost %u attempts: it must misbehave", lost);
	tcli *c = tcli_open(s.port);
	for (int key = 0; key < 4; key++) {
		uint64_t count = 0, sum = 0;
		for (unsigned q = 1; q <= NBATCH; q++)
			if (q % 4 == (unsigned)key) {
				count += NSRC * PER;
				sum += NSRC * PER * (q % 3);
			}
		ttable t;
		tcli_query(c, &t, "#!agg cars v c%d 0 1800000000000000000", key);
		cr_assert_null(t.err, "%s", t.err);
		cr_assert_eq(strtoull(tcell(t.rows[1], 0), NULL, 10), count, "count of c%d", key);
		cr_assert_eq(strtod(tcell(t.rows[1], 1), NULL), (double)sum);
		ttable_free(&t);
	}
	tcli_close(c);
	atomic_store(&px.stop, 1);
	pthread_join(px.th, NULL);
	close(px.lfd);
	cr_assert_eq(tsrv_wait(&s, SIGTERM), 0);
	tdir_remove(&s);
}
