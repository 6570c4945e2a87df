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
 */
#include <criterion/criterion.h>

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
