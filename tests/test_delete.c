/*
 * test_delete.c — corrections (engine/delete.c): dropping a table, and
 * deleting the events of a key (or of every key) in a range.
 *
 * Two tables, events in parts (merged and sealed) and in the memtable and
 * WAL; dropping one leaves no event of it in any query, at once and after
 * reopening (the WAL must not bring it back), while the other answers
 * exactly as before; the dropped table written again starts empty. A
 * kill -9 before and after the drop's manifest change leaves the table
 * either whole or gone, the other table exact.
 *
 * Deletes: a randomised model interleaves deletes of one key or of every
 * key over random ranges with late writes, flushes, merges (sealing) and
 * reopening, on two shards with a distribution field; after every delete
 * each rollup level's series, exact aggregates over unaligned ranges, the
 * all-keys query, scans and distributions equal brute force over what
 * remains, and the answer counts exactly the events removed. The same
 * with tiered partitions (s3rver). A delete needing raw events retention
 * dropped is refused, naming table, key and range, and changes nothing. A
 * kill -9 at each step of a delete leaves every shard all rewritten or
 * all as it was, and the delete run again finishes it.
 *
 * What a delete copies: the new part's blocks of the keys it did not
 * touch, and of the touched key's stripes outside the range, are the old
 * part's bytes with their checksums (compared through the part reader);
 * a byte flipped in a copied block is caught by that checksum, naming
 * file and block, and a block damaged before a delete fails the delete,
 * changing nothing. Version 1 parts, whose rollup blocks cannot be
 * copied, are written again whole.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <sys/wait.h>

#include "s3util.h"
#include "testutil.h"

#define T0   INT64_C(1699920000000000000)
#define KEYS 4
#define N    3000

/* N events per table over three days, value (i % 100), key i % KEYS;
 * the last third stays in the memtable and WAL. */
static void fill(tally_db *db)
{
	char *buf = malloc((size_t)N * 64), *p = buf;
	for (int round = 0; round < 3; round++) {
		p = buf;
		for (int i = round * N / 3; i < (round + 1) * N / 3; i++)
			for (int t = 0; t < 2; t++)
				p += sprintf(p, "%s,k=key%d v=%d %lld\n", t ? "keep" : "gone",
					     i % KEYS, i % 100,
					     (long long)(T0 + (int64_t)i * 86 * TALLY_NS_PER_SEC));
		cr_assert_eq(tu_write_synced(db, buf, (size_t)(p - buf)), 2 * (N / 3), "%s",
			     tally_errmsg());
		if (round < 2) {
			cr_assert_eq(tally_db_flush(db), 0);
			cr_assert_eq(tally_db_merge(db), 0);
		}
	}
	free(buf);
}

/* Every key of table: count by the exact aggregate, a scan and a daily
 * series. A dropped table is unknown after a reopen (nothing names it):
 * that counts 0. */
static uint64_t count_table(tally_db *db, const char *table)
{
	uint64_t total = 0;
	tally_agg any;
	if (tally_query_agg(db, table, "v", "key0", INT64_MIN, INT64_MAX, &any) ==
		    TALLY_ENOTFOUND &&
	    !strcmp(table, "gone"))
		return 0;
	for (int k = 0; k < KEYS; k++) {
		char key[16];
		sprintf(key, "key%d", k);
		uint64_t agg = 0, rows = 0;
		cr_assert_eq(tu_count_key(db, table, "v", key, &agg, &rows), 0, "%s %s: %s", table,
			     key, tally_errmsg());
		cr_assert_eq(agg, rows, "%s %s: %llu by rollups, %llu rows", table, key,
			     (unsigned long long)agg, (unsigned long long)rows);
		tally_bucket b[8];
		size_t n;
		cr_assert_eq(tally_query_series(db, table, "v", key, TALLY_1D, INT64_MIN, INT64_MAX,
						b, 8, &n),
			     0);
		uint64_t series = 0;
		for (size_t i = 0; i < n; i++)
			series += b[i].agg.count;
		cr_assert_eq(series, agg, "%s %s: series %llu, agg %llu", table, key,
			     (unsigned long long)series, (unsigned long long)agg);
		total += agg;
	}
	return total;
}

Test(delete, drop_table_leaves_nothing_and_the_other_table_whole)
{
	char *dir = tu_tmpdir();
	tally_options o = tu_quiet_opts();
	tally_db *db;
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	fill(db);
	cr_assert_eq(count_table(db, "gone"), N);
	cr_assert_eq(tally_db_drop_table(db, "nope"), TALLY_ENOTFOUND);
	cr_assert_eq(tally_db_drop_table(db, "gone"), 0, "%s", tally_errmsg());
	cr_assert_eq(count_table(db, "gone"), 0);
	cr_assert_eq(count_table(db, "keep"), N);
	tally_db_close(db);
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	cr_assert_eq(count_table(db, "gone"), 0, "the WAL brought the dropped table back");
	cr_assert_eq(count_table(db, "keep"), N);
	/* written again, it starts empty */
	char line[128];
	int len = sprintf(line, "gone,k=key1 v=7 %lld\n", (long long)T0);
	cr_assert_eq(tu_write_synced(db, line, (size_t)len), 1);
	cr_assert_eq(count_table(db, "gone"), 1);
	/* a drop of what only the memtable holds */
	cr_assert_eq(tally_db_drop_table(db, "gone"), 0, "%s", tally_errmsg());
	cr_assert_eq(count_table(db, "gone"), 0);
	cr_assert_eq(count_table(db, "keep"), N);
	tally_db_close(db);
	tu_rmrf(dir);
	free(dir);
}

/* Opens dir in a child that kills itself at step (TALLY_CRASH_AT) while
 * act runs, and checks that it did. */
static void crash_at(const char *dir, const tally_options *o, const char *step,
		     void (*act)(tally_db *))
{
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		tally_db *db;
		setenv("TALLY_CRASH_AT", step, 1);
		if (tally_db_open(dir, o, &db))
			_exit(3);
		act(db);
		_exit(4);
	}
	int status;
	waitpid(pid, &status, 0);
	cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "%s: status %d", step,
		  status);
}

static void drop_gone(tally_db *db)
{
	tally_db_drop_table(db, "gone");
}

Test(delete, kill9_during_drop, .timeout = 120)
{
	const char *steps[] = {"drop:before-manifest", "drop:after-manifest"};
	for (int s = 0; s < 2; s++) {
		char *dir = tu_tmpdir();
		tally_options o = tu_quiet_opts();
		tally_db *db;
		cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
		fill(db);
		tally_db_close(db);
		crash_at(dir, &o, steps[s], drop_gone);
		cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
		uint64_t left = count_table(db, "gone");
		/* one shard, one commit: all or nothing */
		cr_assert(s == 0 ? left == N : left == 0, "%s: %llu events of the dropped table",
			  steps[s], (unsigned long long)left);
		cr_assert_eq(count_table(db, "keep"), N);
		/* after the manifest change nothing names the table any more */
		cr_assert_eq(tally_db_drop_table(db, "gone"), s == 0 ? 0 : TALLY_ENOTFOUND, "%s",
			     tally_errmsg());
		cr_assert_eq(count_table(db, "gone"), 0);
		tally_db_close(db);
		tu_rmrf(dir);
		free(dir);
	}
}

/* ---------------------------------------------------------------- deletes */

#define MK     5 /* keys of the model's table */
#define MDAYS  4
#define MMAXEV 60000

typedef struct mev {
	int k;
	int64_t ts;
	int v;
} mev;

typedef struct model {
	mev *e;
	size_t n;
	tu_rng r;
	tally_db *db;
	char *dir;
	tally_options o;
} model;

static tally_options model_opts(void)
{
	tally_options o = tu_quiet_opts();
	o.shards = 2;
	o.distributions = "m.v:1";
	o.seal_grace = TALLY_1D; /* a partition a day behind the newest event seals */
	return o;
}

/* n events of random keys at random times over the model's days: every
 * batch is late for some partition. */
static void m_write(model *m, int n)
{
	char *buf = malloc((size_t)n * 64), *p = buf;
	for (int i = 0; i < n && m->n < MMAXEV; i++) {
		mev *e = &m->e[m->n++];
		e->k = (int)tu_below(&m->r, MK);
		e->ts = T0 + (int64_t)tu_below(&m->r, (uint64_t)(MDAYS * TALLY_1D));
		e->v = (int)tu_below(&m->r, 120);
		p += sprintf(p, "m,k=key%d v=%d %lld\n", e->k, e->v, (long long)e->ts);
	}
	cr_assert_geq(tu_write_synced(m->db, buf, (size_t)(p - buf)), 0, "%s", tally_errmsg());
	free(buf);
}

static tally_agg m_brute(const model *m, int k, int64_t from, int64_t to)
{
	tally_agg a = TU_AGG_EMPTY;
	for (size_t i = 0; i < m->n; i++)
		if (m->e[i].k == k && m->e[i].ts >= from && m->e[i].ts < to)
			tu_agg_add(&a, m->e[i].v);
	return a;
}

static void m_same(const tally_agg *got, const tally_agg *want, const char *what, int k,
		   int64_t from, int64_t to)
{
	cr_assert(got->count == want->count && got->sum == want->sum &&
			  (!want->count || (got->min == want->min && got->max == want->max)),
		  "%s key%d [%lld, %lld): count %llu sum %g min %g max %g, brute force %llu %g "
		  "%g %g",
		  what, k, (long long)from, (long long)to, (unsigned long long)got->count, got->sum,
		  got->min, got->max, (unsigned long long)want->count, want->sum, want->min,
		  want->max);
}

/* A random range inside the model's days: unaligned, or whole windows. */
static void m_range(model *m, int64_t *from, int64_t *to)
{
	static const int64_t widths[] = {TALLY_5M, TALLY_1H, TALLY_1D};
	int64_t span = MDAYS * TALLY_1D;
	int64_t a = T0 + (int64_t)tu_below(&m->r, (uint64_t)span);
	int64_t len = 1 + (int64_t)tu_below(&m->r, (uint64_t)(span / (1 + tu_below(&m->r, 40))));
	if (tu_below(&m->r, 2)) {
		int64_t w = widths[tu_below(&m->r, 3)];
		a = a / w * w;
		len = (len / w + 1) * w;
	}
	*from = a;
	*to = a + len;
}

static void m_check(model *m, const char *when)
{
	static const int64_t steps[] = {TALLY_5M, TALLY_1H, TALLY_1D};
	size_t cap = (size_t)(MDAYS * TALLY_1D / TALLY_5M) + 2;
	tally_bucket *b = malloc(cap * sizeof *b);
	for (int k = 0; k < MK; k++) {
		char key[16];
		sprintf(key, "key%d", k);
		/* every window of every level */
		for (int l = 0; l < 3; l++) {
			size_t n;
			cr_assert_eq(tally_query_series(m->db, "m", "v", key, steps[l], T0,
							T0 + MDAYS * TALLY_1D, b, cap, &n),
				     0, "%s", tally_errmsg());
			size_t j = 0;
			for (int64_t w = T0; w < T0 + MDAYS * TALLY_1D; w += steps[l]) {
				tally_agg want = m_brute(m, k, w, w + steps[l]);
				if (!want.count)
					continue;
				cr_assert(j < n && b[j].start == w,
					  "%s: level %lld key%d: window %lld missing", when,
					  (long long)steps[l], k, (long long)w);
				m_same(&b[j].agg, &want, when, k, w, w + steps[l]);
				j++;
			}
			cr_assert_eq(j, n, "%s: level %lld key%d: %zu windows, brute force %zu",
				     when, (long long)steps[l], k, n, j);
		}
		/* exact aggregates, a scan and a distribution over random ranges */
		for (int q = 0; q < 4; q++) {
			int64_t from, to;
			m_range(m, &from, &to);
			tally_agg a, want = m_brute(m, k, from, to);
			cr_assert_eq(tally_query_agg(m->db, "m", "v", key, from, to, &a), 0, "%s",
				     tally_errmsg());
			m_same(&a, &want, when, k, from, to);
			if (q)
				continue;
			tally_scan *sc;
			cr_assert_eq(tally_scan_open(m->db, "m", key, from, to, &sc), 0, "%s",
				     tally_errmsg());
			tally_row row;
			tally_agg got = TU_AGG_EMPTY;
			int rc;
			while ((rc = tally_scan_next(sc, &row)) == 1)
				tu_agg_add(&got, row.values[0].v.f64);
			cr_assert_eq(rc, 0, "%s", tally_errmsg());
			tally_scan_close(sc);
			m_same(&got, &want, "scan", k, from, to);
			tally_dist *d;
			cr_assert_eq(tally_query_dist(m->db, "m", "v", key, from, to, &d), 0, "%s",
				     tally_errmsg());
			uint64_t below = 0;
			for (size_t i = 0; i < m->n; i++)
				below += m->e[i].k == k && m->e[i].ts >= from && m->e[i].ts < to &&
					 m->e[i].v < 60;
			cr_assert_eq(tally_dist_count(d), want.count, "%s: dist key%d", when, k);
			cr_assert_eq(tally_dist_count_below(d, 60), below,
				     "%s: dist key%d below 60", when, k);
			tally_dist_free(d);
		}
	}
	/* every key at once */
	int64_t from, to;
	m_range(m, &from, &to);
	tally_keys_iter *it;
	cr_assert_eq(tally_query_keys(m->db, "m", "v", from, to, &it), 0, "%s", tally_errmsg());
	const char *key;
	tally_agg a;
	int rc, seen = 0;
	while ((rc = tally_keys_next(it, &key, &a)) == 1) {
		int k = atoi(key + 3);
		tally_agg want = m_brute(m, k, from, to);
		if (!want.count && !a.count)
			continue;
		m_same(&a, &want, "all keys", k, from, to);
		seen |= 1 << k;
	}
	cr_assert_eq(rc, 0, "%s", tally_errmsg());
	tally_keys_close(it);
	for (int k = 0; k < MK; k++)
		cr_assert(((seen >> k) & 1) || !m_brute(m, k, from, to).count,
			  "%s: all keys left out key%d", when, k);
	free(b);
}

/* Removes key k's (-1: every key's) events in [from, to) from the model;
 * returns how many. */
static uint64_t m_forget(model *m, int k, int64_t from, int64_t to)
{
	uint64_t gone = 0;
	size_t j = 0;
	for (size_t i = 0; i < m->n; i++) {
		mev *e = &m->e[i];
		if ((k < 0 || e->k == k) && e->ts >= from && e->ts < to) {
			gone++;
			continue;
		}
		m->e[j++] = *e;
	}
	m->n = j;
	return gone;
}

/* Deletes key k (-1: every key) in [from, to) from the store and the
 * model; the answer must count exactly what the model lost. */
static void m_delete(model *m, int k, int64_t from, int64_t to)
{
	char key[16];
	sprintf(key, "key%d", k);
	tally_delete_result r = {.size = sizeof r};
	cr_assert_eq(tally_db_delete(m->db, "m", k < 0 ? NULL : key, from, to, &r), 0, "%s",
		     tally_errmsg());
	uint64_t gone = m_forget(m, k, from, to);
	cr_assert_eq(r.size, sizeof r);
	cr_assert_eq(r.rows, gone, "delete key%d [%lld, %lld): %llu rows, the model lost %llu", k,
		     (long long)from, (long long)to, (unsigned long long)r.rows,
		     (unsigned long long)gone);
	cr_assert(!gone || (r.parts_rewritten + r.parts_removed > 0 && r.bytes_read > 0));
	cr_assert(!r.parts_rewritten || r.bytes_written > 0);
}

static void m_reopen(model *m)
{
	tally_db_close(m->db);
	cr_assert_eq(tally_db_open(m->dir, &m->o, &m->db), 0, "%s", tally_errmsg());
}

/* The model's steps, n_ops of them; tier: tier sealed partitions too. */
static void m_run(model *m, int n_ops, int tier)
{
	for (int op = 0; op < n_ops; op++) {
		char when[96];
		switch (tu_below(&m->r, 8)) {
		case 0:
		case 1: m_write(m, 300); break;
		case 2: cr_assert_eq(tally_db_flush(m->db), 0, "%s", tally_errmsg()); break;
		case 3:
			cr_assert_eq(tally_db_merge(m->db), 0, "%s", tally_errmsg());
			if (tier)
				cr_assert_eq(tally_db_tier(m->db), 0, "%s", tally_errmsg());
			break;
		case 4: m_reopen(m); break;
		default: {
			int k = tu_below(&m->r, 4) ? (int)tu_below(&m->r, MK) : -1;
			int64_t from, to;
			m_range(m, &from, &to);
			m_delete(m, k, from, to);
			snprintf(when, sizeof when, "step %d, after deleting key%d [%lld, %lld)",
				 op, k, (long long)from, (long long)to);
			m_check(m, when);
		}
		}
	}
	m_reopen(m);
	m_check(m, "at the end, reopened");
}

static void m_start(model *m, const char *name, const tally_options *o)
{
	m->e = malloc(MMAXEV * sizeof *m->e);
	m->n = 0;
	m->r.s = tu_seed(name);
	m->dir = tu_tmpdir();
	m->o = *o;
	cr_assert_eq(tally_db_open(m->dir, &m->o, &m->db), 0, "%s", tally_errmsg());
	/* a start: parts of every day, sealed ones, and a memtable */
	for (int i = 0; i < 6; i++)
		m_write(m, 400);
	cr_assert_eq(tally_db_flush(m->db), 0);
	m_write(m, 400);
	cr_assert_eq(tally_db_merge(m->db), 0);
	m_write(m, 200);
}

static void m_end(model *m)
{
	tally_stats st;
	cr_assert_eq(tally_db_stats(m->db, &st), 0);
	cr_assert(TALLY_STAT_FILLED(&st, delete_bytes_written));
	tally_db_close(m->db);
	tu_rmrf(m->dir);
	free(m->dir);
	free(m->e);
}

Test(delete, model_deletes_interleaved_with_late_writes_flushes_merges, .timeout = 600)
{
	model m;
	tally_options o = model_opts();
	m_start(&m, "delete_model", &o);
	m_run(&m, 60, 0);
	tally_stats st;
	cr_assert_eq(tally_db_stats(m.db, &st), 0);
	m_end(&m);
}

Test(delete, whole_partition_of_every_key_and_what_is_not_there)
{
	model m;
	tally_options o = model_opts();
	m_start(&m, "delete_whole", &o);
	tally_delete_result r = {.size = sizeof r};
	/* a table that is not there, an empty range, an empty key */
	cr_assert_eq(tally_db_delete(m.db, "nope", NULL, T0, T0 + 1, &r), TALLY_ENOTFOUND);
	cr_assert_eq(tally_db_delete(m.db, "m", NULL, T0, T0, &r), TALLY_EINVAL);
	cr_assert_eq(tally_db_delete(m.db, "m", "", T0, T0 + 1, &r), TALLY_EINVAL);
	/* a key nobody wrote: nothing deleted, nothing rewritten */
	cr_assert_eq(tally_db_delete(m.db, "m", "key99", T0, T0 + MDAYS * TALLY_1D, &r), 0);
	cr_assert(r.rows == 0 && r.parts_rewritten == 0 && r.bytes_written == 0);
	tally_stats before, after;
	cr_assert_eq(tally_db_stats(m.db, &before), 0);
	/* the first day of every key: its parts leave unread */
	m_delete(&m, -1, T0, T0 + TALLY_1D);
	m_check(&m, "after the first day of every key");
	cr_assert_eq(tally_db_stats(m.db, &after), 0);
	cr_assert_eq(after.deletes, before.deletes + 1);
	cr_assert(after.delete_rows > before.delete_rows);
	/* one key's second day: its partition's parts are rewritten */
	m_delete(&m, 2, T0 + TALLY_1D, T0 + 2 * TALLY_1D);
	m_check(&m, "after key2's second day");
	cr_assert_eq(tally_db_stats(m.db, &after), 0);
	cr_assert_eq(after.deletes, before.deletes + 2);
	cr_assert_gt(after.delete_bytes_written, before.delete_bytes_written);
	/* a result struct of an older, shorter layout: filled up to its size,
	 * not a byte past it; one too short for its size field is refused */
	struct {
		tally_delete_result r;
		uint64_t guard[8];
	} old;
	memset(&old, 0xab, sizeof old);
	old.r.size = offsetof(tally_delete_result, parts_rewritten);
	int64_t a = T0 + 3 * TALLY_1D, z = a + 6 * TALLY_1H;
	cr_assert_eq(tally_db_delete(m.db, "m", "key3", a, z, &old.r), 0, "%s", tally_errmsg());
	cr_assert_eq(old.r.size, offsetof(tally_delete_result, parts_rewritten));
	cr_assert_eq(old.r.rows, m_forget(&m, 3, a, z));
	cr_assert_eq(old.r.parts_rewritten, 0xababababababababull, "wrote past its size");
	m_check(&m, "after a delete with a short result");
	old.r.size = 3;
	cr_assert_eq(tally_db_delete(m.db, "m", "key3", a, z, &old.r), TALLY_EINVAL);
	/* the same again: nothing left to delete */
	cr_assert_eq(tally_db_delete(m.db, "m", "key2", T0 + TALLY_1D, T0 + 2 * TALLY_1D, &r), 0);
	cr_assert(r.rows == 0 && r.parts_rewritten == 0 && r.parts_removed == 0);
	m_reopen(&m);
	m_check(&m, "reopened");
	m_end(&m);
}

Test(delete, model_with_tiered_partitions, .timeout = 600)
{
	if (!s3srv_available("s3rver"))
		cr_skip_test("s3rver is not installed (tools/setup)");
	s3srv srv;
	cr_assert_eq(s3srv_start(&srv, "s3rver"), 0, "s3rver did not start");
	char endpoint[160];
	snprintf(endpoint, sizeof endpoint, "%s", srv.endpoint);
	model m;
	tally_options o = model_opts();
	o.tier_bucket = srv.bucket;
	o.tier_endpoint = endpoint;
	o.tier_region = srv.region;
	o.tier_access_key = srv.access_key;
	o.tier_secret_key = srv.secret_key;
	o.tier_prefix = "del";
	o.tier_after = 1; /* every sealed partition is due */
	o.tier_retries = 1;
	o.tier_timeout_ms = 5000;
	m_start(&m, "delete_tiered", &o);
	cr_assert_eq(tally_db_tier(m.db), 0, "%s", tally_errmsg());
	tally_stats st;
	cr_assert_eq(tally_db_stats(m.db, &st), 0);
	cr_assert_gt(st.tiered_parts, 0, "nothing was tiered");
	m_run(&m, 40, 1);
	m_end(&m);
	s3srv_stop(&srv);
}

/* Events 60 days old, their raw events expired by retention (30 days):
 * deleting among them is refused and changes nothing. */
Test(delete, refused_where_raw_events_expired)
{
	char *dir = tu_tmpdir();
	tally_options o = tu_quiet_opts();
	o.retention = "m:raw=30d";
	tally_db *db;
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	int64_t day = ((int64_t)now.tv_sec / 86400 - 60) * TALLY_1D;
	char buf[64 * 200], *p = buf;
	for (int i = 0; i < 200; i++)
		p += sprintf(p, "m,k=key%d v=%d %lld\n", i % 2, i,
			     (long long)(day + (int64_t)i * 400 * TALLY_NS_PER_SEC));
	cr_assert_eq(tu_write_synced(db, buf, (size_t)(p - buf)), 200);
	cr_assert_eq(tally_db_flush(db), 0);
	cr_assert_eq(tally_db_retain(db), 0, "%s", tally_errmsg());
	tally_stats st;
	cr_assert_eq(tally_db_stats(db, &st), 0);
	cr_assert_gt(st.retention_parts_raw_gone, 0, "the raw events did not expire");
	tally_delete_result r = {.size = sizeof r};
	int rc = tally_db_delete(db, "m", "key1", day + TALLY_1H, day + 2 * TALLY_1H, &r);
	cr_assert_eq(rc, TALLY_EEXPIRED, "rc %d: %s", rc, tally_errmsg());
	char range[96];
	sprintf(range, "[%lld, %lld)", (long long)(day + TALLY_1H),
		(long long)(day + 2 * TALLY_1H));
	cr_assert(strstr(tally_errmsg(), "table 'm'") && strstr(tally_errmsg(), "key 'key1'") &&
			  strstr(tally_errmsg(), range) && strstr(tally_errmsg(), "expired"),
		  "%s", tally_errmsg());
	cr_assert_eq(r.rows, 0);
	/* nothing changed: the day's rollups still count every event */
	tally_bucket b[4];
	size_t n;
	cr_assert_eq(
		tally_query_series(db, "m", "v", "key1", TALLY_1D, day, day + TALLY_1D, b, 4, &n),
		0, "%s", tally_errmsg());
	cr_assert(n == 1 && b[0].agg.count == 100, "%zu windows", n);
	/* a range past the expired day is fine */
	cr_assert_eq(tally_db_delete(db, "m", "key1", day + 5 * TALLY_1D, day + 6 * TALLY_1D, &r),
		     0, "%s", tally_errmsg());
	tally_db_close(db);
	tu_rmrf(dir);
	free(dir);
}

/* key0's events over the three days of fill(), counted by rollups and by
 * a scan, which must agree (a half-rewritten part would not). */
static uint64_t count_key0(tally_db *db)
{
	uint64_t agg = 0, rows = 0;
	cr_assert_eq(tu_count_key(db, "keep", "v", "key0", &agg, &rows), 0, "%s", tally_errmsg());
	cr_assert_eq(agg, rows, "rollups say %llu, a scan %llu", (unsigned long long)agg,
		     (unsigned long long)rows);
	return agg;
}

static void delete_key0(tally_db *db)
{
	tally_db_delete(db, "keep", "key0", T0, T0 + 3 * TALLY_1D, NULL);
}

Test(delete, kill9_during_delete, .timeout = 300)
{
	const char *steps[] = {"merge:before-part-rename", "delete:before-manifest",
			       "delete:after-manifest"};
	for (int s = 0; s < 3; s++) {
		char *dir = tu_tmpdir();
		tally_options o = tu_quiet_opts();
		o.shards = 2;
		tally_db *db;
		cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
		fill(db); /* three batches per round: both shards hold key0 */
		uint64_t all = count_key0(db), others = count_table(db, "keep") - all;
		tally_db_close(db);
		crash_at(dir, &o, steps[s], delete_key0);
		cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
		uint64_t left = count_key0(db);
		/* before any manifest change: all there; after the first
		 * shard's, that shard's are gone, the other's all there */
		if (s < 2)
			cr_assert_eq(left, all, "%s: %llu of %llu left", steps[s],
				     (unsigned long long)left, (unsigned long long)all);
		else
			cr_assert(left < all, "%s: %llu of %llu left", steps[s],
				  (unsigned long long)left, (unsigned long long)all);
		cr_assert_eq(count_table(db, "keep") - left, others, "%s: other keys changed",
			     steps[s]);
		tally_delete_result r = {.size = sizeof r};
		cr_assert_eq(tally_db_delete(db, "keep", "key0", T0, T0 + 3 * TALLY_1D, &r), 0,
			     "%s", tally_errmsg());
		cr_assert_eq(r.rows, left);
		cr_assert_eq(count_key0(db), 0);
		cr_assert_eq(count_table(db, "keep"), others);
		tally_db_close(db);
		cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
		cr_assert_eq(count_key0(db), 0);
		cr_assert_eq(count_table(db, "keep"), others);
		tally_db_close(db);
		tu_rmrf(dir);
		free(dir);
	}
}

/* ------------------------------------------------- what a delete copies */

#include <fcntl.h>

#include "part.h"

#define CK   4    /* keys */
#define CROW 3000 /* rows per key in one day: three stripes each */

/* One shard, one day of CK keys (a value, a string and a distribution
 * field), flushed and merged into one part; its path goes to path. */
static tally_db *copy_fill(const char *dir, char *path, size_t cap)
{
	tally_options o = tu_quiet_opts();
	o.shards = 1;
	o.distributions = "c.d:1";
	tally_db *db;
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	char *buf = malloc((size_t)CK * CROW * 80), *p = buf;
	for (int i = 0; i < CROW; i++)
		for (int k = 0; k < CK; k++)
			p += sprintf(p, "c,k=key%d v=%d,d=%d.%d,s=\"lane%d\" %lld\n", k,
				     (i * 7 + k) % 130, i % 90, i % 10, i % 3,
				     (long long)(T0 + (int64_t)i * 28 * TALLY_NS_PER_SEC + k));
	cr_assert_eq(tu_write_synced(db, buf, (size_t)(p - buf)), CK * CROW, "%s", tally_errmsg());
	free(buf);
	cr_assert_eq(tally_db_flush(db), 0, "%s", tally_errmsg());
	cr_assert_eq(tally_db_merge(db), 0, "%s", tally_errmsg());
	char parts[4096];
	snprintf(parts, sizeof parts, "%s/parts", dir);
	cr_assert_eq(tu_find_files(parts, ".part", path, cap), 1, "one part");
	return db;
}

/* Block ref of p with its checksum, as the file holds it. */
static uint8_t *block_bytes(const part *p, const part_ref *ref)
{
	uint8_t *b = malloc((size_t)ref->len + 8);
	cr_assert_eq(pread(p->fd, b, (size_t)ref->len + 8, (off_t)ref->off), (ssize_t)ref->len + 8);
	return b;
}

/* 1 when the blocks are the same bytes, checksum included. */
static int same_block(const part *a, const part_ref *ra, const part *b, const part_ref *rb)
{
	if (ra->len != rb->len)
		return 0;
	if (!ra->len)
		return 1;
	uint8_t *x = block_bytes(a, ra), *y = block_bytes(b, rb);
	int same = !memcmp(x, y, (size_t)ra->len + 8);
	free(x);
	free(y);
	return same;
}

/* 1 when stripe sa of a and sb of b have the same rows and blocks. */
static int same_stripe(const part *a, const part_stripe *sa, const part *b, const part_stripe *sb)
{
	if (sa->n_rows != sb->n_rows || sa->tmin != sb->tmin || sa->tmax != sb->tmax)
		return 0;
	for (uint32_t c = 0; c <= a->info.n_cols; c++)
		if (!same_block(a, &a->refs[sa->first_ref + c], b, &b->refs[sb->first_ref + c]))
			return 0;
	return 1;
}

static const part_key *key_of(const part *p, int k)
{
	char key[16];
	sprintf(key, "key%d", k);
	return part_find_key(p, key, (uint32_t)strlen(key));
}

/* Every key but the deleted one keeps its stripes, rollup blocks and
 * distribution blocks byte for byte with their checksums; the deleted
 * key's stripes outside the range are the old ones too, only the stripe
 * the range cuts into is new, and the answer counts the copied bytes. */
Test(delete, rewrite_copies_untouched_blocks_byte_for_byte)
{
	char *dir = tu_tmpdir(), path[4096], aside[4200];
	tally_db *db = copy_fill(dir, path, sizeof path);
	snprintf(aside, sizeof aside, "%s.before", dir);
	char cmd[8500];
	snprintf(cmd, sizeof cmd, "cp '%s' '%s'", path, aside);
	cr_assert_eq(system(cmd), 0);
	part *old;
	cr_assert_eq(part_open(aside, &old), 0, "%s", tally_errmsg());
	const part_key *ok1 = key_of(old, 1);
	cr_assert_eq(ok1->n_stripes, 3, "key1 has %u stripes", ok1->n_stripes);
	/* from the middle of key1's second stripe to past its end */
	const part_stripe *s1 = &old->stripes[ok1->first_stripe + 1];
	int64_t from = s1->tmin + (s1->tmax - s1->tmin) / 2, to = s1->tmax + 1;
	tally_delete_result r = {.size = sizeof r};
	cr_assert_eq(tally_db_delete(db, "c", "key1", from, to, &r), 0, "%s", tally_errmsg());
	cr_assert_gt(r.rows, 0);
	cr_assert_lt(r.rows, s1->n_rows);
	cr_assert_eq(r.parts_rewritten, 1);
	cr_assert_gt(r.bytes_copied, r.bytes_written * 3 / 4,
		     "%llu of %llu bytes copied: the other keys' blocks were encoded again",
		     (unsigned long long)r.bytes_copied, (unsigned long long)r.bytes_written);
	cr_assert_lt(r.bytes_copied, r.bytes_written);
	char parts[4096];
	snprintf(parts, sizeof parts, "%s/parts", dir);
	cr_assert_eq(tu_find_files(parts, ".part", path, sizeof path), 1, "one part");
	part *nw;
	cr_assert_eq(part_open(path, &nw), 0, "%s", tally_errmsg());
	cr_assert_eq(nw->n_keys, CK);
	uint32_t nr = old->info.n_num * old->info.n_levels;
	for (int k = 0; k < CK; k++) {
		const part_key *a = key_of(old, k), *b = key_of(nw, k);
		cr_assert(a && b);
		if (k != 1) {
			cr_assert_eq(a->n_stripes, b->n_stripes);
			for (uint32_t s = 0; s < a->n_stripes; s++)
				cr_assert(same_stripe(old, &old->stripes[a->first_stripe + s], nw,
						      &nw->stripes[b->first_stripe + s]),
					  "key%d stripe %u differs", k, s);
		}
		uint32_t same = 0;
		for (uint32_t i = 0; i < nr; i++)
			same += same_block(old, &old->rollups[a->first_rollup + i].ref, nw,
					   &nw->rollups[b->first_rollup + i].ref);
		/* key1's windows around the range changed at every level */
		cr_assert_eq(same, k == 1 ? 0 : nr, "key%d: %u of %u rollup blocks the same", k,
			     same, nr);
	}
	/* key1: stripe 0 and 2 copied, stripe 1 its first half, encoded */
	const part_key *nk1 = key_of(nw, 1);
	cr_assert_eq(nk1->n_stripes, 3);
	cr_assert(same_stripe(old, &old->stripes[ok1->first_stripe], nw,
			      &nw->stripes[nk1->first_stripe]));
	cr_assert(same_stripe(old, &old->stripes[ok1->first_stripe + 2], nw,
			      &nw->stripes[nk1->first_stripe + 2]));
	const part_stripe *n1 = &nw->stripes[nk1->first_stripe + 1];
	cr_assert_eq(n1->n_rows, s1->n_rows - r.rows);
	cr_assert_lt(n1->tmax, from);
	/* and every level still answers like a scan */
	uint64_t agg, rows;
	for (int k = 0; k < CK; k++) {
		char key[16];
		sprintf(key, "key%d", k);
		cr_assert_eq(tu_count_key(db, "c", "v", key, &agg, &rows), 0, "%s", tally_errmsg());
		cr_assert_eq(agg, rows);
		cr_assert_eq(rows, k == 1 ? CROW - r.rows : CROW);
	}
	part_close(old);
	part_close(nw);
	tally_db_close(db);
	unlink(aside);
	tu_rmrf(dir);
	free(dir);
}

/* Flips one byte of block ref in the file at path. */
static void flip(const char *path, const part_ref *ref)
{
	int fd = open(path, O_RDWR);
	cr_assert_geq(fd, 0);
	uint8_t c;
	off_t at = (off_t)(ref->off + ref->len / 2);
	cr_assert_eq(pread(fd, &c, 1, at), 1);
	c ^= 0x10;
	cr_assert_eq(pwrite(fd, &c, 1, at), 1);
	close(fd);
}

/* A byte flipped in a copied block of the new part is caught by the
 * checksum the block brought along, naming file and block; and a block
 * damaged before the delete is not copied on: the delete fails naming
 * it, and nothing changes. */
Test(delete, copied_blocks_keep_their_checksums)
{
	char *dir = tu_tmpdir(), path[4096];
	tally_db *db = copy_fill(dir, path, sizeof path);
	tally_delete_result r = {.size = sizeof r};
	cr_assert_eq(tally_db_delete(db, "c", "key1", T0, T0 + TALLY_1H, &r), 0, "%s",
		     tally_errmsg());
	cr_assert_gt(r.bytes_copied, 0);
	tally_db_close(db);
	char parts[4096];
	snprintf(parts, sizeof parts, "%s/parts", dir);
	cr_assert_eq(tu_find_files(parts, ".part", path, sizeof path), 1);
	part *p;
	cr_assert_eq(part_open(path, &p), 0, "%s", tally_errmsg());
	const part_key *k2 = key_of(p, 2);
	const part_stripe *st = &p->stripes[k2->first_stripe + 1];
	part_ref col = p->refs[st->first_ref + 1], roll = p->rollups[k2->first_rollup].ref;
	part_close(p);
	flip(path, &col);
	flip(path, &roll);
	cr_assert_eq(part_open(path, &p), 0, "%s", tally_errmsg());
	k2 = key_of(p, 2);
	st = &p->stripes[k2->first_stripe + 1];
	part_scratch s = {0};
	int64_t vals[PART_STRIPE_MAX];
	uint64_t pres[PART_STRIPE_MAX / 64];
	int absent;
	cr_assert_eq(part_read_col(p, st, 0, &s, vals, pres, &absent), TALLY_ECORRUPT);
	char want[4200];
	snprintf(want, sizeof want, "%s block %u", path, col.no);
	cr_assert(strstr(tally_errmsg(), want) && strstr(tally_errmsg(), "checksum mismatch"), "%s",
		  tally_errmsg());
	part_rblock rb;
	cr_assert_eq(part_read_rollup(p, k2, 0, 0, &s, &rb), TALLY_ECORRUPT);
	snprintf(want, sizeof want, "%s block %u", path, roll.no);
	cr_assert(strstr(tally_errmsg(), want), "%s", tally_errmsg());
	part_scratch_free(&s);
	part_close(p);

	/* the damaged part is the source of the next delete: refused */
	tally_options o = tu_quiet_opts();
	o.shards = 1;
	o.distributions = "c.d:1";
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	cr_assert_eq(tally_db_delete(db, "c", "key3", T0, T0 + TALLY_1H, &r), TALLY_ECORRUPT);
	cr_assert(strstr(tally_errmsg(), "checksum mismatch"), "%s", tally_errmsg());
	cr_assert_eq(tu_find_files(parts, ".part", path, sizeof path), 1, "nothing changed");
	uint64_t agg, rows;
	cr_assert_eq(tu_count_key(db, "c", "v", "key3", &agg, &rows), 0, "%s", tally_errmsg());
	cr_assert_eq(rows, CROW);
	tally_db_close(db);
	tu_rmrf(dir);
	free(dir);
}

/* Version 1 parts (tests/data/agg-v1) have rollup blocks without a kind
 * header: a delete cannot copy them into a version 2 part, so it writes
 * the parts it touches again whole, and they answer exactly; the next
 * delete in those parts, now version 2, copies. */
Test(delete, version1_parts_are_written_again_whole_then_copied)
{
	char *dir = tu_tmpdir(), cmd[9000];
	snprintf(cmd, sizeof cmd, "cp -r %s/tests/data/agg-v1/. %s/ && rm %s/ANSWERS",
		 TALLY_SOURCE_DIR, dir, dir);
	cr_assert_eq(system(cmd), 0);
	tally_options o = tu_quiet_opts();
	tally_db *db;
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	const int64_t from = INT64_C(1700006400000000000), to = from + TALLY_1H;
	uint64_t before[2], agg = 0, rows = 0;
	const char *keys[2] = {"C0", "C1"};
	for (int k = 0; k < 2; k++) {
		cr_assert_eq(tu_count_key(db, "traffic", "speed", keys[k], &agg, &rows), 0, "%s",
			     tally_errmsg());
		before[k] = rows;
	}
	for (int k = 0; k < 2; k++) {
		tally_delete_result r = {.size = sizeof r};
		cr_assert_eq(tally_db_delete(db, "traffic", keys[k], from, to, &r), 0, "%s",
			     tally_errmsg());
		cr_assert_gt(r.rows, 0);
		cr_assert_gt(r.parts_rewritten, 0);
		if (k == 0)
			cr_assert_eq(r.bytes_copied, 0, "a version 1 block was copied");
		else
			cr_assert_gt(r.bytes_copied, r.bytes_written / 2);
		cr_assert_eq(tu_count_key(db, "traffic", "speed", keys[k], &agg, &rows), 0, "%s",
			     tally_errmsg());
		cr_assert_eq(agg, rows);
		cr_assert_eq(rows, before[k] - r.rows);
		tally_agg a;
		cr_assert_eq(tally_query_agg(db, "traffic", "speed", keys[k], from, to, &a), 0);
		cr_assert_eq(a.count, 0);
	}
	tally_db_close(db);
	tu_rmrf(dir);
	free(dir);
}
