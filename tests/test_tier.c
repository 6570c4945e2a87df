/*
 * test_tier.c — tiering sealed partitions to object storage, against real
 * S3-compatible servers on free loopback ports (moto with signatures
 * checked, s3rver), with awscli as an independent witness and a fault
 * proxy for a store that is down, hangs or fails mid-upload.
 *
 * Every test keeps a brute-force model of what it wrote and checks every
 * query kind against it: rollup queries with the store stopped, raw scans
 * through ranged GETs (counting the bytes), late data into a tiered
 * partition, kill -9 at each step of an upload and mid-upload, and a store
 * failing mid-upload — nothing lost, nothing counted twice, nothing left
 * behind in the bucket.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "aggkind.h"
#include "err.h"
#include "manifest.h"
#include "part.h"
#include "s3.h"
#include "s3util.h"
#include "testutil.h"

#define T0      INT64_C(1699920000000000000) /* a UTC day boundary */
#define DAYS    3
#define KEYS    6
#define STEP    (30 * TALLY_NS_PER_SEC) /* one event per key every 30 s */
#define PER_DAY ((int)(TALLY_1D / STEP))

static s3srv srv_s3rver, srv_moto;

static s3srv *server(const char *kind)
{
	s3srv *s = !strcmp(kind, "moto") ? &srv_moto : &srv_s3rver;
	if (!s->up)
		s3srv_import(s, !strcmp(kind, "moto") ? "TALLY_TEST_MOTO" : "TALLY_TEST_S3RVER");
	if (!s->up)
		cr_skip_test("%s is not available here", kind);
	return s;
}

/* any server: moto preferred (it checks signatures) */
static s3srv *any_server(void)
{
	s3srv *s = &srv_moto;
	if (!s->up)
		s3srv_import(s, "TALLY_TEST_MOTO");
	if (s->up)
		return s;
	return server("s3rver");
}

/* ---------------------------------------------------------------- model */

typedef struct model {
	int64_t *ts[KEYS];
	double *v[KEYS];
	size_t n[KEYS], cap[KEYS];
} model;

static void model_add(model *m, int k, int64_t ts, double v)
{
	if (m->n[k] == m->cap[k]) {
		m->cap[k] = m->cap[k] ? m->cap[k] * 2 : 4096;
		m->ts[k] = realloc(m->ts[k], m->cap[k] * sizeof *m->ts[k]);
		m->v[k] = realloc(m->v[k], m->cap[k] * sizeof *m->v[k]);
	}
	m->ts[k][m->n[k]] = ts;
	m->v[k][m->n[k]++] = v;
}

static void model_free(model *m)
{
	for (int k = 0; k < KEYS; k++) {
		free(m->ts[k]);
		free(m->v[k]);
	}
	memset(m, 0, sizeof *m);
}

static tally_agg model_agg(const model *m, int k, int64_t from, int64_t to)
{
	tally_agg a = {0, 0, NAN, NAN, NAN};
	for (size_t i = 0; i < m->n[k]; i++) {
		int64_t t = m->ts[k][i];
		if (t < from || t >= to)
			continue;
		double v = m->v[k][i];
		if (!a.count || v < a.min)
			a.min = v;
		if (!a.count || v > a.max)
			a.max = v;
		a.count++;
		a.sum += v;
	}
	a.avg = a.count ? a.sum / (double)a.count : NAN;
	return a;
}

static void key_name(int k, char *buf)
{
	sprintf(buf, "cam%03d", k);
}

/* Writes events of every key in [from, to), one each STEP, offset by
 * phase (ns), values multiples of 1/4 so sums are exact. */
static void write_range(tally_db *db, model *m, int64_t from, int64_t to, int64_t phase)
{
	tally_writer *w;
	cr_assert_eq(tally_writer_open(db, 0, &w), 0);
	size_t cap = 1 << 20, len = 0;
	char *buf = malloc(cap);
	for (int64_t t = from + phase; t < to; t += STEP)
		for (int k = 0; k < KEYS; k++) {
			char key[16];
			key_name(k, key);
			double v = (double)((t / STEP * 7 + k * 13) % 400) / 4.0;
			if (cap - len < 256) {
				tally_write_result r;
				cr_assert_eq(tally_write_lp(w, buf, len, TALLY_PREC_NS, &r), 0,
					     "%s", tally_errmsg());
				cr_assert_eq(r.rejected, 0);
				len = 0;
			}
			len += (size_t)snprintf(buf + len, cap - len,
						"traffic,camera=%s,lane=%d speed=%.2f %lld\n", key,
						(int)(t / STEP % 3), v, (long long)t);
			model_add(m, k, t, v);
		}
	tally_write_result r;
	cr_assert_eq(tally_write_lp(w, buf, len, TALLY_PREC_NS, &r), 0, "%s", tally_errmsg());
	cr_assert_eq(r.rejected, 0);
	cr_assert_eq(tally_db_sync(db), 0);
	tally_writer_close(w);
	free(buf);
}

static void agg_eq(tally_agg got, tally_agg want, const char *what)
{
	cr_assert_eq(got.count, want.count, "%s: count %llu, want %llu", what,
		     (unsigned long long)got.count, (unsigned long long)want.count);
	cr_assert_eq(got.sum, want.sum, "%s: sum %.17g, want %.17g", what, got.sum, want.sum);
	if (want.count) {
		cr_assert_eq(got.min, want.min, "%s: min", what);
		cr_assert_eq(got.max, want.max, "%s: max", what);
	}
}

/* Every rollup query kind over aligned ranges: answers from rollup blocks
 * and memtables only, never from raw column blocks. */
static void check_rollups(tally_db *db, const model *m)
{
	int64_t end = T0 + (DAYS + 1) * TALLY_1D;
	for (int k = 0; k < KEYS; k++) {
		char key[16], what[64];
		key_name(k, key);
		tally_agg a;
		cr_assert_eq(tally_query_agg(db, "traffic", "speed", key, T0 - TALLY_1D, end, &a),
			     0, "agg %s: %s", key, tally_errmsg());
		agg_eq(a, model_agg(m, k, T0 - TALLY_1D, end), key);
		/* an hour-aligned range inside the first day */
		int64_t f = T0 + 5 * TALLY_1H, t = T0 + 20 * TALLY_1H + 35 * 60 * TALLY_NS_PER_SEC;
		cr_assert_eq(tally_query_agg(db, "traffic", "speed", key, f, t, &a), 0, "%s",
			     tally_errmsg());
		agg_eq(a, model_agg(m, k, f, t), "aligned agg");
		int64_t steps[3] = {TALLY_5M, TALLY_1H, TALLY_1D};
		for (int s = 0; s < 3; s++) {
			static tally_bucket b[2048];
			size_t n;
			int64_t from = T0 - TALLY_1D, to = T0 + (s == 0 ? 2 : DAYS + 1) * TALLY_1D;
			if (s == 0)
				from = T0 + TALLY_1D - 3 * TALLY_1H;
			cr_assert_eq(tally_query_series(db, "traffic", "speed", key, steps[s], from,
							to, b, 2048, &n),
				     0, "series %s step %d: %s", key, s, tally_errmsg());
			size_t want_n = 0;
			for (int64_t w = from; w < to; w += steps[s]) {
				tally_agg x = model_agg(m, k, w, w + steps[s]);
				if (!x.count)
					continue;
				cr_assert_lt(want_n, n, "series %s: too few buckets", key);
				cr_assert_eq(b[want_n].start, w);
				snprintf(what, sizeof what, "series %s step %d at %lld", key, s,
					 (long long)w);
				agg_eq(b[want_n].agg, x, what);
				want_n++;
			}
			cr_assert_eq(n, want_n, "series %s step %d: %zu buckets, want %zu", key, s,
				     n, want_n);
		}
	}
	tally_keys_iter *it;
	cr_assert_eq(tally_query_keys(db, "traffic", "speed", T0, end, &it), 0, "%s",
		     tally_errmsg());
	const char *key;
	tally_agg a;
	int k = 0;
	while (tally_keys_next(it, &key, &a) == 1) {
		char want[16];
		key_name(k, want);
		cr_assert_str_eq(key, want);
		agg_eq(a, model_agg(m, k, T0, end), "keys");
		k++;
	}
	tally_keys_close(it);
	cr_assert_eq(k, KEYS);
}

/* Raw reads: full scans, a narrow scan, and exact aggregates over
 * unaligned ranges (raw rows at the edges). */
static void check_raw(tally_db *db, const model *m)
{
	for (int k = 0; k < KEYS; k++) {
		char key[16];
		key_name(k, key);
		tally_scan *sc;
		cr_assert_eq(tally_scan_open(db, "traffic", key, INT64_MIN, INT64_MAX, &sc), 0,
			     "scan %s: %s", key, tally_errmsg());
		tally_row row;
		size_t n = 0;
		double sum = 0;
		int64_t prev = INT64_MIN;
		while (tally_scan_next(sc, &row) == 1) {
			cr_assert_geq(row.ts, prev);
			prev = row.ts;
			for (size_t c = 0; c < row.n_values; c++)
				if (row.values[c].type == TALLY_T_F64)
					sum += row.values[c].v.f64;
			n++;
		}
		tally_scan_close(sc);
		tally_agg want = model_agg(m, k, INT64_MIN, INT64_MAX);
		cr_assert_eq(n, want.count, "scan %s: %zu rows, want %llu", key, n,
			     (unsigned long long)want.count);
		cr_assert_eq(sum, want.sum, "scan %s: sum", key);
		int64_t f = T0 + 3 * TALLY_1H + 1234567891,
			t = T0 + TALLY_1D + 7 * TALLY_1H + 77777;
		tally_agg a;
		cr_assert_eq(tally_query_agg(db, "traffic", "speed", key, f, t, &a), 0, "%s",
			     tally_errmsg());
		agg_eq(a, model_agg(m, k, f, t), "unaligned agg");
	}
}

/* ---------------------------------------------------------------- fixture */

typedef struct fixture {
	char *dir;
	s3srv *srv;
	s3proxy px;
	int proxied;
	char endpoint[128];
	char prefix[64];
	tally_options o;
	model m;
} fixture;

static void fx_init(fixture *f, s3srv *s, int proxied)
{
	memset(f, 0, sizeof *f);
	f->srv = s;
	f->dir = tu_tmpdir();
	f->proxied = proxied;
	if (proxied) {
		cr_assert_eq(s3proxy_start(&f->px, s->port), 0);
		snprintf(f->endpoint, sizeof f->endpoint, "http://127.0.0.1:%d", f->px.port);
	} else {
		snprintf(f->endpoint, sizeof f->endpoint, "%s", s->endpoint);
	}
	/* no '/' in the prefix: see test_s3.c on moto and %2F */
	snprintf(f->prefix, sizeof f->prefix, "run%d-%ld-", getpid(), (long)random() % 100000);
	tally_options_init(&f->o);
	f->o.log_fn = tu_quiet_log;
	f->o.no_background = 1;
	f->o.tier_bucket = s->bucket;
	f->o.tier_endpoint = f->endpoint;
	f->o.tier_region = s->region;
	f->o.tier_access_key = s->access_key;
	f->o.tier_secret_key = s->secret_key;
	f->o.tier_prefix = f->prefix;
	f->o.tier_after = 1; /* every sealed partition is due */
	f->o.tier_retries = 1;
	f->o.tier_timeout_ms = 3000;
}

static tally_db *fx_open(fixture *f)
{
	tally_db *db;
	cr_assert_eq(tally_db_open(f->dir, &f->o, &db), 0, "%s", tally_errmsg());
	return db;
}

static void fx_free(fixture *f)
{
	if (f->proxied)
		s3proxy_stop(&f->px);
	tu_rmrf(f->dir);
	free(f->dir);
	model_free(&f->m);
}

/* Days 0..DAYS-1, flushed, merged (the first DAYS-1 days seal), tiered. */
static void fill_and_tier(fixture *f, tally_db *db)
{
	write_range(db, &f->m, T0, T0 + DAYS * TALLY_1D, 0);
	cr_assert_eq(tally_db_flush(db), 0, "%s", tally_errmsg());
	cr_assert_eq(tally_db_merge(db), 0, "%s", tally_errmsg());
	cr_assert_eq(tally_db_tier(db), 0, "%s", tally_errmsg());
}

static int count_suffix(const char *dir, const char *suffix)
{
	char p[4200];
	snprintf(p, sizeof p, "%s/parts", dir);
	DIR *d = opendir(p);
	int n = 0;
	struct dirent *e;
	size_t sl = strlen(suffix);
	while (d && (e = readdir(d))) {
		size_t l = strlen(e->d_name);
		if (l > sl && !strcmp(e->d_name + l - sl, suffix))
			n++;
	}
	if (d)
		closedir(d);
	return n;
}

/* The bucket holds exactly the objects the manifest names as remote:
 * nothing lost, nothing leaked (awscli lists). */
static void bucket_matches_manifest(fixture *f)
{
	manifest man;
	cr_assert_eq(manifest_load(f->dir, &man), 0, "%s", tally_errmsg());
	char out[65536];
	cr_assert_eq(s3srv_aws(f->srv, out, sizeof out,
			       "s3api list-objects-v2 --bucket %s --prefix %s --query "
			       "'Contents[].[Key,Size]' --output text",
			       f->srv->bucket, f->prefix),
		     0);
	int listed = 0;
	for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
		char key[512];
		unsigned long long size;
		if (sscanf(line, "%511s %llu", key, &size) != 2)
			continue; /* "None" for an empty listing */
		listed++;
		int found = 0;
		for (uint32_t i = 0; i < man.n_parts; i++)
			if (man.parts[i].object && !strcmp(man.parts[i].object, key)) {
				found = 1;
				cr_assert_eq(size, man.parts[i].bytes,
					     "%s: %llu bytes in the bucket, "
					     "%llu in the manifest",
					     key, size, (unsigned long long)man.parts[i].bytes);
			}
		cr_assert(found, "object %s is in the bucket but no part names it", key);
	}
	int remote = 0;
	for (uint32_t i = 0; i < man.n_parts; i++)
		remote += man.parts[i].tier == MTIER_REMOTE;
	cr_assert_eq(listed, remote, "%d objects listed, %d remote parts", listed, remote);
	cr_assert_eq(man.n_gc, 0, "objects still waiting for deletion");
	manifest_free(&man);
}

/* ---------------------------------------------------------------- tests */

Test(tier, sealed_partitions_go_to_the_store_and_rollups_answer_without_it, .timeout = 240)
{
	/* s3rver: it keeps its objects across a kill and a restart */
	s3srv mine;
	cr_assert_eq(s3srv_start(&mine, "s3rver"), 0, "s3rver did not start");
	fixture f;
	fx_init(&f, &mine, 0);
	tally_db *db = fx_open(&f);
	fill_and_tier(&f, db);
	tally_stats st;
	cr_assert_eq(tally_db_stats(db, &st), 0);
	cr_assert_eq(st.tiered_parts, DAYS - 1, "%llu tiered", (unsigned long long)st.tiered_parts);
	cr_assert_eq(st.tier_uploads, DAYS - 1);
	cr_assert_eq(st.tier_state, 1);
	cr_assert_eq(st.tier_due, 0);
	cr_assert_eq(count_suffix(f.dir, ".stub"), DAYS - 1);
	cr_assert_eq(count_suffix(f.dir, ".part"), 1, "only the open day stays whole");
	/* the manifest says where, awscli confirms each object is a whole,
	 * valid part with the manifest's size and checksum */
	manifest man;
	cr_assert_eq(manifest_load(f.dir, &man), 0);
	for (uint32_t i = 0; i < man.n_parts; i++) {
		if (man.parts[i].tier != MTIER_REMOTE)
			continue;
		char path[4200];
		snprintf(path, sizeof path, "%s/check.part", f.dir);
		cr_assert_eq(s3srv_aws(f.srv, NULL, 0, "s3api get-object --bucket %s --key %s %s",
				       f.srv->bucket, man.parts[i].object, path),
			     0);
		part *p;
		cr_assert_eq(part_open(path, &p), 0, "%s", tally_errmsg());
		cr_assert_eq(p->file_bytes, man.parts[i].bytes);
		cr_assert_eq(p->info.n_rows, man.parts[i].rows);
		cr_assert_eq(p->flags, 0, "the object is the whole part");
		part_close(p);
		unlink(path);
	}
	manifest_free(&man);
	bucket_matches_manifest(&f);
	check_rollups(db, &f.m);
	check_raw(db, &f.m);
	/* the store dies: every rollup query still answers, exactly */
	s3srv_stop(&mine);
	tally_db_close(db);
	db = fx_open(&f); /* a fresh open, cold caches, no store */
	check_rollups(db, &f.m);
	/* raw reads of tiered data fail cleanly, naming the store; the open
	 * day's raw rows still read */
	char key[16];
	key_name(1, key);
	tally_scan *sc;
	tally_row row;
	/* a scan is a cursor: it opens, and fails when it reaches them */
	cr_assert_eq(tally_scan_open(db, "traffic", key, T0, T0 + TALLY_1D, &sc), 0, "%s",
		     tally_errmsg());
	int rc = tally_scan_next(sc, &row);
	cr_assert_eq(rc, TALLY_EREMOTE, "rc %d: %s", rc, tally_errmsg());
	cr_assert(strstr(tally_errmsg(), "127.0.0.1"), "%s", tally_errmsg());
	cr_assert(!strstr(tally_errmsg(), "S3RVER"), "a credential in a message: %s",
		  tally_errmsg());
	tally_scan_close(sc);
	cr_assert_eq(
		tally_scan_open(db, "traffic", key, T0 + (DAYS - 1) * TALLY_1D, INT64_MAX, &sc), 0,
		"%s", tally_errmsg());
	tally_scan_close(sc);
	/* writes and flushes go on */
	write_range(db, &f.m, T0 + DAYS * TALLY_1D, T0 + DAYS * TALLY_1D + TALLY_1H, 0);
	cr_assert_eq(tally_db_flush(db), 0, "%s", tally_errmsg());
	check_rollups(db, &f.m);
	cr_assert_eq(tally_db_stats(db, &st), 0);
	/* back up: raw reads work again */
	cr_assert_eq(s3srv_restart(&mine), 0);
	usleep(1100000); /* past the cold reads' fail-fast second */
	check_raw(db, &f.m);
	tally_db_close(db);
	fx_free(&f);
	s3srv_destroy(&mine);
}

/* The bytes a scan of key over [from, to) must read: each overlapping
 * stripe's timestamp block and every column block it has, checksums
 * included. */
static uint64_t needed_bytes(const char *dir, const char *key, int64_t from, int64_t to,
			     uint64_t *blocks)
{
	manifest man;
	cr_assert_eq(manifest_load(dir, &man), 0);
	uint64_t need = 0;
	*blocks = 0;
	for (uint32_t i = 0; i < man.n_parts; i++) {
		if (man.parts[i].tier != MTIER_REMOTE)
			continue;
		char path[4200];
		snprintf(path, sizeof path, "%s/parts/%016llx.stub", dir,
			 (unsigned long long)man.parts[i].id);
		part *p;
		cr_assert_eq(part_open(path, &p), 0, "%s", tally_errmsg());
		cr_assert(p->flags & PART_F_STUB);
		const part_key *pk = part_find_key(p, key, (uint32_t)strlen(key));
		for (uint32_t s = 0; pk && s < pk->n_stripes; s++) {
			const part_stripe *st = &p->stripes[pk->first_stripe + s];
			if (st->tmax < from || st->tmin >= to)
				continue;
			for (uint32_t c = 0; c <= p->info.n_cols; c++)
				if (p->refs[st->first_ref + c].len) {
					need += p->refs[st->first_ref + c].len + 8;
					(*blocks)++;
				}
		}
		part_close(p);
	}
	manifest_free(&man);
	return need;
}

Test(tier, cold_scan_fetches_only_the_blocks_it_needs, .timeout = 240)
{
	fixture f;
	fx_init(&f, any_server(), 1);
	tally_db *db = fx_open(&f);
	fill_and_tier(&f, db);
	tally_db_close(db);
	db = fx_open(&f); /* cold */
	char key[16];
	key_name(3, key);
	/* 2.5 hours inside the first (tiered) day */
	int64_t from = T0 + 10 * TALLY_1H + 17 * TALLY_NS_PER_SEC, to = from + 5 * TALLY_1H / 2;
	uint64_t blocks;
	uint64_t need = needed_bytes(f.dir, key, from, to, &blocks);
	cr_assert_gt(need, 0);
	tally_stats a, b;
	cr_assert_eq(tally_db_stats(db, &a), 0);
	uint64_t down0 = atomic_load(&f.px.bytes_down);
	tally_scan *sc;
	cr_assert_eq(tally_scan_open(db, "traffic", key, from, to, &sc), 0, "%s", tally_errmsg());
	tally_row row;
	uint64_t n = 0;
	while (tally_scan_next(sc, &row) == 1)
		n++;
	tally_scan_close(sc);
	cr_assert_eq(n, model_agg(&f.m, 3, from, to).count);
	cr_assert_eq(tally_db_stats(db, &b), 0);
	uint64_t got = b.cold_read_bytes - a.cold_read_bytes;
	uint64_t down = atomic_load(&f.px.bytes_down) - down0;
	fprintf(stderr,
		"cold scan: %llu rows, %llu blocks, %llu bytes needed, %llu fetched in %llu "
		"GETs, %llu bytes on the wire\n",
		(unsigned long long)n, (unsigned long long)blocks, (unsigned long long)need,
		(unsigned long long)got, (unsigned long long)(b.cold_reads - a.cold_reads),
		(unsigned long long)down);
	cr_assert_eq(got, need, "fetched %llu bytes, the blocks hold %llu", (unsigned long long)got,
		     (unsigned long long)need);
	/* one ranged GET per stripe: its blocks lie side by side */
	cr_assert_leq(b.cold_reads - a.cold_reads, blocks);
	/* the wire carries those bytes plus HTTP headers, nothing more */
	cr_assert_geq(down, need);
	cr_assert_lt(down, need + blocks * 1024, "%llu bytes came down the wire",
		     (unsigned long long)down);
	/* the same scan again: all from the cache (a scan is a cursor: its
	 * blocks are read as its rows are) */
	cr_assert_eq(tally_scan_open(db, "traffic", key, from, to, &sc), 0, "%s", tally_errmsg());
	while (tally_scan_next(sc, &row) == 1)
		;
	tally_scan_close(sc);
	tally_stats c;
	cr_assert_eq(tally_db_stats(db, &c), 0);
	cr_assert_eq(c.cold_read_bytes, b.cold_read_bytes);
	cr_assert_geq(c.cold_cache_hits - b.cold_cache_hits, blocks);
	cr_assert_gt(c.cold_cache_bytes, 0);
	/* an unaligned aggregate reads only timestamps and the one column at
	 * its edges */
	tally_agg ag;
	uint64_t before = c.cold_read_bytes;
	int64_t f2 = T0 + TALLY_1D + 3 * TALLY_1H + 12345, t2 = T0 + TALLY_1D + 9 * TALLY_1H + 999;
	cr_assert_eq(tally_query_agg(db, "traffic", "speed", key, f2, t2, &ag), 0, "%s",
		     tally_errmsg());
	agg_eq(ag, model_agg(&f.m, 3, f2, t2), "cold unaligned agg");
	cr_assert_eq(tally_db_stats(db, &c), 0);
	uint64_t blocks2, need2 = needed_bytes(f.dir, key, f2, t2, &blocks2);
	cr_assert_gt(c.cold_read_bytes, before);
	cr_assert_lt(c.cold_read_bytes - before, need2,
		     "edges only: %llu bytes, a scan of the range needs %llu",
		     (unsigned long long)(c.cold_read_bytes - before), (unsigned long long)need2);
	check_raw(db, &f.m);
	tally_db_close(db);
	fx_free(&f);
}

Test(tier, late_data_into_a_tiered_partition, .timeout = 240)
{
	fixture f;
	fx_init(&f, any_server(), 0);
	tally_db *db = fx_open(&f);
	fill_and_tier(&f, db);
	manifest man;
	cr_assert_eq(manifest_load(f.dir, &man), 0);
	char old_key[512] = "";
	for (uint32_t i = 0; i < man.n_parts; i++)
		if (man.parts[i].tier == MTIER_REMOTE && man.parts[i].partition_start == T0)
			snprintf(old_key, sizeof old_key, "%s", man.parts[i].object);
	manifest_free(&man);
	cr_assert(old_key[0]);
	/* late events for day 0, hours late: visible at once, exactly */
	write_range(db, &f.m, T0, T0 + TALLY_1D, 7 * TALLY_NS_PER_SEC);
	check_rollups(db, &f.m);
	check_raw(db, &f.m);
	/* flushed: a small local late part beside the tiered segment */
	cr_assert_eq(tally_db_flush(db), 0, "%s", tally_errmsg());
	check_rollups(db, &f.m);
	check_raw(db, &f.m);
	/* merged: the late rows (as many as the segment's) fold into a new
	 * local segment; the old object is marked for deletion in that commit */
	cr_assert_eq(tally_db_merge(db), 0, "%s", tally_errmsg());
	cr_assert_eq(manifest_load(f.dir, &man), 0);
	int found_gc = 0;
	for (uint32_t i = 0; i < man.n_gc; i++)
		found_gc |= !strcmp(man.gc[i], old_key);
	cr_assert(found_gc, "the replaced object waits for deletion");
	manifest_free(&man);
	cr_assert_eq(s3srv_aws(f.srv, NULL, 0, "s3api head-object --bucket %s --key %s",
			       f.srv->bucket, old_key),
		     0, "the old object stays until the manifest no longer names it");
	check_rollups(db, &f.m);
	check_raw(db, &f.m);
	/* tiering: deletes the old object, uploads the new segment */
	cr_assert_eq(tally_db_tier(db), 0, "%s", tally_errmsg());
	cr_assert_neq(s3srv_aws(f.srv, NULL, 0, "s3api head-object --bucket %s --key %s",
				f.srv->bucket, old_key),
		      0, "the old object is gone");
	tally_stats st;
	cr_assert_eq(tally_db_stats(db, &st), 0);
	cr_assert_eq(st.tiered_parts, DAYS - 1);
	cr_assert_eq(st.tier_deletes, 1);
	bucket_matches_manifest(&f);
	check_rollups(db, &f.m);
	check_raw(db, &f.m);
	tally_db_close(db);
	db = fx_open(&f);
	check_rollups(db, &f.m);
	check_raw(db, &f.m);
	tally_db_close(db);
	fx_free(&f);
}

Test(tier, store_down_loses_nothing_and_says_so, .timeout = 240)
{
	fixture f;
	fx_init(&f, any_server(), 1);
	tally_db *db = fx_open(&f);
	write_range(db, &f.m, T0, T0 + DAYS * TALLY_1D, 0);
	cr_assert_eq(tally_db_flush(db), 0);
	cr_assert_eq(tally_db_merge(db), 0);
	atomic_store(&f.px.mode, PX_REFUSE);
	int rc = tally_db_tier(db);
	cr_assert_eq(rc, TALLY_EREMOTE, "rc %d %s", rc, tally_errmsg());
	tally_stats st;
	cr_assert_eq(tally_db_stats(db, &st), 0);
	cr_assert_eq(st.tier_state, 2, "stats say the store is failing");
	cr_assert_eq(st.tier_failures, 1);
	cr_assert_eq(st.tier_due, DAYS - 1);
	cr_assert_eq(st.tiered_parts, 0);
	cr_assert_eq(count_suffix(f.dir, ".part"), DAYS, "everything stays local");
	check_rollups(db, &f.m);
	check_raw(db, &f.m);
	/* a store that hangs: the upload times out, nothing changes */
	atomic_store(&f.px.mode, PX_HANG);
	cr_assert_eq(tally_db_tier(db), TALLY_EREMOTE);
	check_raw(db, &f.m);
	/* a reopen in between changes nothing either */
	tally_db_close(db);
	db = fx_open(&f);
	check_raw(db, &f.m);
	atomic_store(&f.px.mode, PX_PASS);
	cr_assert_eq(tally_db_tier(db), 0, "%s", tally_errmsg());
	cr_assert_eq(tally_db_stats(db, &st), 0);
	cr_assert_eq(st.tier_state, 1);
	cr_assert_eq(st.tiered_parts, DAYS - 1);
	bucket_matches_manifest(&f);
	check_rollups(db, &f.m);
	check_raw(db, &f.m);
	tally_db_close(db);
	fx_free(&f);
}

Test(tier, store_failing_mid_upload_loses_nothing, .timeout = 240)
{
	fixture f;
	fx_init(&f, any_server(), 1);
	tally_db *db = fx_open(&f);
	write_range(db, &f.m, T0, T0 + DAYS * TALLY_1D, 0);
	cr_assert_eq(tally_db_flush(db), 0);
	cr_assert_eq(tally_db_merge(db), 0);
	/* the connection drops 5 KB into the first upload, and stays down */
	atomic_store(&f.px.cut_after, 5000);
	atomic_store(&f.px.mode, PX_CUT);
	cr_assert_eq(tally_db_tier(db), TALLY_EREMOTE);
	cr_assert_geq(atomic_load(&f.px.cuts), 1);
	check_rollups(db, &f.m);
	check_raw(db, &f.m);
	tally_db_close(db);
	db = fx_open(&f);
	check_raw(db, &f.m);
	atomic_store(&f.px.mode, PX_PASS);
	cr_assert_eq(tally_db_tier(db), 0, "%s", tally_errmsg());
	bucket_matches_manifest(&f);
	check_rollups(db, &f.m);
	check_raw(db, &f.m);
	tally_db_close(db);
	fx_free(&f);
}

/* kill -9 at each step of an upload (TALLY_CRASH_AT), then recovery: every
 * event exactly once, and after the next pass the bucket holds exactly
 * what the manifest names. */
static void crash_at(const char *step)
{
	fixture f;
	fx_init(&f, any_server(), 0);
	tally_db *db = fx_open(&f);
	write_range(db, &f.m, T0, T0 + DAYS * TALLY_1D, 0);
	cr_assert_eq(tally_db_flush(db), 0);
	cr_assert_eq(tally_db_merge(db), 0);
	tally_db_close(db);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		setenv("TALLY_CRASH_AT", step, 1);
		if (tally_db_open(f.dir, &f.o, &db))
			_exit(3);
		tally_db_tier(db);
		_exit(4);
	}
	int status;
	waitpid(pid, &status, 0);
	cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "%s: child status %d", step,
		  status);
	db = fx_open(&f);
	check_rollups(db, &f.m);
	check_raw(db, &f.m);
	cr_assert_eq(count_suffix(f.dir, ".tmp"), 0);
	cr_assert_eq(tally_db_tier(db), 0, "%s: %s", step, tally_errmsg());
	tally_stats st;
	cr_assert_eq(tally_db_stats(db, &st), 0);
	cr_assert_eq(st.tiered_parts, DAYS - 1, "%s", step);
	cr_assert_eq(st.events, (uint64_t)KEYS * PER_DAY * DAYS, "%s", step);
	bucket_matches_manifest(&f);
	check_rollups(db, &f.m);
	check_raw(db, &f.m);
	tally_db_close(db);
	db = fx_open(&f);
	cr_assert_eq(count_suffix(f.dir, ".stub"), DAYS - 1, "%s", step);
	cr_assert_eq(count_suffix(f.dir, ".part"), 1, "%s: leftovers", step);
	check_raw(db, &f.m);
	tally_db_close(db);
	fx_free(&f);
}

Test(tier, kill9_after_intent, .timeout = 240)
{
	crash_at("tier:after-intent");
}
Test(tier, kill9_after_upload, .timeout = 240)
{
	crash_at("tier:after-upload");
}
Test(tier, kill9_after_stub, .timeout = 240)
{
	crash_at("tier:after-stub");
}
Test(tier, kill9_after_manifest, .timeout = 240)
{
	crash_at("tier:after-manifest");
}

/* kill -9 in the middle of a multipart upload, watched on the wire. */
Test(tier, kill9_mid_multipart_upload, .timeout = 300)
{
	fixture f;
	fx_init(&f, any_server(), 1);
	f.o.tier_part_bytes = S3_PART_MIN;
	tally_db *db = fx_open(&f);
	/* incompressible values make a part of over 5 MiB: multipart */
	tally_writer *w;
	cr_assert_eq(tally_writer_open(db, 0, &w), 0);
	tu_rng r = {42};
	size_t cap = 1 << 20, len = 0;
	char *buf = malloc(cap);
	for (int i = 0; i < 900000; i++) {
		int k = i % KEYS;
		int64_t t = T0 + (int64_t)(i / KEYS) * 550000000LL;
		double v = (double)(tu_next(&r) >> 11) / 9007199254740992.0;
		if (cap - len < 256) {
			cr_assert_eq(tally_write_lp(w, buf, len, TALLY_PREC_NS, NULL), 0);
			len = 0;
		}
		char key[16];
		key_name(k, key);
		len += (size_t)snprintf(buf + len, cap - len,
					"traffic,camera=%s speed=%.17g %lld\n", key, v,
					(long long)t);
		model_add(&f.m, k, t, v);
	}
	cr_assert_eq(tally_write_lp(w, buf, len, TALLY_PREC_NS, NULL), 0);
	free(buf);
	tally_writer_close(w);
	/* and a later day so the first seals */
	write_range(db, &f.m, T0 + 2 * TALLY_1D, T0 + 2 * TALLY_1D + TALLY_1H, 0);
	cr_assert_eq(tally_db_flush(db), 0);
	cr_assert_eq(tally_db_merge(db), 0);
	tally_db_close(db);
	manifest man;
	cr_assert_eq(manifest_load(f.dir, &man), 0);
	cr_assert_gt(man.parts[0].bytes, S3_PART_MIN, "%llu bytes: not multipart",
		     (unsigned long long)man.parts[0].bytes);
	manifest_free(&man);
	uint64_t up0 = atomic_load(&f.px.bytes_up);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		if (tally_db_open(f.dir, &f.o, &db))
			_exit(3);
		tally_db_tier(db);
		_exit(4);
	}
	/* kill once 1 MiB went up: the multipart upload is under way */
	for (int i = 0; i < 30000 && atomic_load(&f.px.bytes_up) - up0 < (1u << 20); i++)
		usleep(1000);
	kill(pid, SIGKILL);
	int status;
	waitpid(pid, &status, 0);
	cr_assert(WIFSIGNALED(status), "the child finished before it could be killed");
	cr_assert_eq(manifest_load(f.dir, &man), 0);
	cr_assert_geq(man.n_gc, 1, "the upload under way is on the list to delete");
	for (uint32_t i = 0; i < man.n_parts; i++)
		cr_assert_eq(man.parts[i].tier, MTIER_LOCAL);
	manifest_free(&man);
	db = fx_open(&f);
	/* everything is there, exactly once */
	for (int k = 0; k < KEYS; k++) {
		char key[16];
		key_name(k, key);
		tally_agg a;
		cr_assert_eq(tally_query_agg(db, "traffic", "speed", key, INT64_MIN, INT64_MAX, &a),
			     0);
		/* random doubles: the sum depends on the order of additions */
		tally_agg want = model_agg(&f.m, k, INT64_MIN, INT64_MAX);
		cr_assert_eq(a.count, want.count);
		cr_assert_float_eq(a.sum, want.sum, 1e-6 * want.sum);
	}
	cr_assert_eq(tally_db_tier(db), 0, "%s", tally_errmsg());
	bucket_matches_manifest(&f);
	if (!strcmp(f.srv->kind, "moto")) { /* s3rver does not list uploads */
		char out[4096];
		cr_assert_eq(s3srv_aws(f.srv, out, sizeof out,
				       "s3api list-multipart-uploads --bucket %s --prefix %s "
				       "--query 'Uploads[].Key' --output text",
				       f.srv->bucket, f.prefix),
			     0);
		cr_assert(!strstr(out, "parts"), "an upload cut by the kill lingers: %s", out);
	}
	tally_db_close(db);
	db = fx_open(&f);
	for (int k = 0; k < KEYS; k++) {
		char key[16];
		key_name(k, key);
		tally_scan *sc;
		cr_assert_eq(tally_scan_open(db, "traffic", key, INT64_MIN, INT64_MAX, &sc), 0,
			     "%s", tally_errmsg());
		tally_row row;
		size_t n = 0;
		double sum = 0;
		while (tally_scan_next(sc, &row) == 1) {
			n++;
			sum += row.values[0].type == TALLY_T_F64 ? row.values[0].v.f64 : 0;
		}
		tally_scan_close(sc);
		tally_agg want = model_agg(&f.m, k, INT64_MIN, INT64_MAX);
		cr_assert_eq(n, want.count);
		cr_assert_float_eq(sum, want.sum, 1e-6 * want.sum);
	}
	tally_db_close(db);
	fx_free(&f);
}

/* With the background threads on: flush, merge and tiering happen by
 * themselves, and a store that goes down and comes back is caught up. */
Test(tier, background_thread_tiers_by_itself, .timeout = 240)
{
	fixture f;
	fx_init(&f, any_server(), 1);
	f.o.no_background = 0;
	f.o.flush_interval_ms = 100;
	tally_db *db = fx_open(&f);
	atomic_store(&f.px.mode, PX_REFUSE); /* down at first */
	write_range(db, &f.m, T0, T0 + DAYS * TALLY_1D, 0);
	tally_stats st = {0};
	for (int i = 0; i < 300 && st.tier_failures == 0; i++) {
		usleep(100000);
		cr_assert_eq(tally_db_stats(db, &st), 0);
	}
	cr_assert_gt(st.tier_failures, 0, "the failing store shows in stats");
	cr_assert_eq(st.tier_state, 2);
	cr_assert_eq(st.tiered_parts, 0);
	check_rollups(db, &f.m);
	check_raw(db, &f.m);
	atomic_store(&f.px.mode, PX_PASS);
	/* the state turns healthy when the pass that uploads ends, a moment
	 * after its last upload shows in tiered_parts: wait for both */
	for (int i = 0; i < 600 && (st.tiered_parts < DAYS - 1 || st.tier_state != 1); i++) {
		usleep(100000);
		cr_assert_eq(tally_db_stats(db, &st), 0);
	}
	cr_assert_eq(st.tiered_parts, DAYS - 1, "the thread caught up");
	cr_assert_eq(st.tier_state, 1);
	check_rollups(db, &f.m);
	check_raw(db, &f.m);
	tally_db_close(db);
	bucket_matches_manifest(&f);
	fx_free(&f);
}

/* Manifest versions: a store that never tiered still writes version 1; a
 * tiered one writes 2 and opens without tiering configured, answering
 * rollups and refusing raw reads of tiered data with a clear message.
 * The library reads no environment: $TALLY_S3_BUCKET naming a working
 * bucket does not turn tiering on (only tallyd's settings read it). */
Test(tier, manifest_versions_and_open_without_tiering, .timeout = 240)
{
	fixture f;
	fx_init(&f, any_server(), 0);
	tally_options plain = f.o;
	plain.tier_bucket = NULL;
	tally_db *db;
	setenv("TALLY_S3_BUCKET", f.o.tier_bucket, 1);
	setenv("TALLY_S3_ENDPOINT", f.o.tier_endpoint, 1);
	cr_assert_eq(tally_db_open(f.dir, &plain, &db), 0);
	write_range(db, &f.m, T0, T0 + DAYS * TALLY_1D, 0);
	cr_assert_eq(tally_db_flush(db), 0);
	cr_assert_eq(tally_db_merge(db), 0);
	cr_assert_eq(tally_db_tier(db), TALLY_EINVAL, "no bucket option, no tiering");
	unsetenv("TALLY_S3_BUCKET");
	unsetenv("TALLY_S3_ENDPOINT");
	tally_db_close(db);
	char path[4200];
	snprintf(path, sizeof path, "%s/MANIFEST", f.dir);
	FILE *mf = fopen(path, "rb");
	uint8_t hdr[12];
	cr_assert_eq(fread(hdr, 1, 12, mf), 12);
	fclose(mf);
	cr_assert_eq(hdr[8], 1, "never tiered: manifest version 1");
	db = fx_open(&f);
	cr_assert_eq(tally_db_tier(db), 0, "%s", tally_errmsg());
	tally_db_close(db);
	mf = fopen(path, "rb");
	cr_assert_eq(fread(hdr, 1, 12, mf), 12);
	fclose(mf);
	cr_assert_eq(hdr[8], 2, "tiered: manifest version 2");
	cr_assert_eq(tally_db_open(f.dir, &plain, &db), 0, "%s", tally_errmsg());
	check_rollups(db, &f.m);
	char key[16];
	key_name(0, key);
	tally_scan *sc;
	tally_row row;
	/* a scan is a cursor: it fails when it reaches the tiered stripes */
	cr_assert_eq(tally_scan_open(db, "traffic", key, T0, T0 + TALLY_1D, &sc), 0);
	cr_assert_eq(tally_scan_next(sc, &row), TALLY_EREMOTE);
	cr_assert(strstr(tally_errmsg(), "not configured"), "%s", tally_errmsg());
	tally_scan_close(sc);
	tally_db_close(db);
	fx_free(&f);
}

/* ---------------------------------------------------------------- retention */

/* Each day's totals by a 1d series: from rollups only. */
static void check_days(tally_db *db, const model *m)
{
	for (int k = 0; k < KEYS; k++) {
		char key[16];
		key_name(k, key);
		tally_bucket b[DAYS + 1];
		size_t n;
		cr_assert_eq(tally_query_series(db, "traffic", "speed", key, TALLY_1D, T0,
						T0 + DAYS * TALLY_1D, b, DAYS + 1, &n),
			     0, "%s", tally_errmsg());
		cr_assert_eq(n, DAYS);
		for (size_t d = 0; d < n; d++)
			agg_eq(b[d].agg, model_agg(m, k, b[d].start, b[d].start + TALLY_1D), "day");
	}
}

/* Tiered partitions past their raw retention keep their rollups in local
 * rollup-only parts and their objects leave the bucket; past every class,
 * the parts leave too. The bucket always holds exactly what the manifest
 * names. */
Test(tier, retention_cuts_and_drops_tiered_partitions, .timeout = 240)
{
	fixture f;
	fx_init(&f, any_server(), 0);
	tally_db *db = fx_open(&f);
	fill_and_tier(&f, db);
	tally_stats st;
	cr_assert_eq(tally_db_stats(db, &st), 0);
	cr_assert_gt(st.tiered_parts, 0);
	cr_assert_eq(tally_db_set_retention(db, "traffic:raw=30d"), 0, "%s", tally_errmsg());
	cr_assert_eq(tally_db_retain(db), 0, "%s", tally_errmsg());
	cr_assert_eq(tally_db_stats(db, &st), 0);
	cr_assert_eq(st.tiered_parts, 0);
	cr_assert_gt(st.retention_parts_raw_gone, 0);
	cr_assert_gt(st.tier_gc_pending, 0, "the cut parts' objects wait for deletion");
	cr_assert_eq(tally_db_tier(db), 0, "%s", tally_errmsg());
	bucket_matches_manifest(&f);
	check_days(db, &f.m);
	char key[16];
	key_name(0, key);
	tally_scan *sc;
	cr_assert_eq(tally_scan_open(db, "traffic", key, T0, T0 + TALLY_1D, &sc), TALLY_EEXPIRED);
	tally_db_close(db);
	db = fx_open(&f); /* the rules are the caller's: none now */
	check_days(db, &f.m);
	cr_assert_eq(tally_db_set_retention(db, "*:raw=30d,5m=30d,1h=30d,1d=30d"), 0);
	cr_assert_eq(tally_db_retain(db), 0, "%s", tally_errmsg());
	cr_assert_eq(tally_db_stats(db, &st), 0);
	cr_assert_eq(st.parts, 0, "%llu parts left", (unsigned long long)st.parts);
	cr_assert_eq(count_suffix(f.dir, ".part") + count_suffix(f.dir, ".stub"), 0);
	tally_db_close(db);
	fx_free(&f);
}

/* Tiered parts past every class leave in one manifest change per shard;
 * their objects are deleted by the next tiering pass, their stubs at once. */
Test(tier, retention_drops_tiered_partitions_and_their_objects, .timeout = 240)
{
	fixture f;
	fx_init(&f, any_server(), 0);
	tally_db *db = fx_open(&f);
	fill_and_tier(&f, db);
	tally_stats st;
	cr_assert_eq(tally_db_stats(db, &st), 0);
	uint64_t tiered = st.tiered_parts;
	cr_assert_gt(tiered, 0);
	cr_assert_eq(tally_db_set_retention(db, "traffic:raw=1d,5m=1d,1h=1d,1d=1d"), 0);
	cr_assert_eq(tally_db_retain(db), 0, "%s", tally_errmsg());
	cr_assert_eq(tally_db_stats(db, &st), 0);
	cr_assert_eq(st.parts, 0);
	cr_assert_eq(st.tier_gc_pending, tiered);
	cr_assert_eq(count_suffix(f.dir, ".stub"), 0);
	cr_assert_eq(tally_db_tier(db), 0, "%s", tally_errmsg());
	bucket_matches_manifest(&f);
	tally_agg a;
	cr_assert_eq(tally_query_agg(db, "traffic", "speed", "cam000", T0, T0 + TALLY_1D, &a),
		     TALLY_EEXPIRED);
	tally_db_close(db);
	fx_free(&f);
}

S3U_MAIN(int argc, char **argv)
{
	return s3srv_main(argc, argv, "test_tier", &srv_s3rver, &srv_moto);
}

/* ---------------------------------------------------------------- distributions */

static int cmp_dbl(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* tally_query_dist of every key over [a, b) equals the model's sorted
 * values: count, median, V85, maximum, values above 50. */
static void check_dist(tally_db *db, const model *m, int64_t a, int64_t b)
{
	for (int k = 0; k < KEYS; k++) {
		double *v = malloc((m->n[k] + 1) * sizeof *v);
		size_t n = 0;
		uint64_t above = 0;
		for (size_t i = 0; i < m->n[k]; i++)
			if (m->ts[k][i] >= a && m->ts[k][i] < b) {
				above += m->v[k][i] > 50;
				v[n++] = m->v[k][i];
			}
		qsort(v, n, sizeof *v, cmp_dbl);
		char key[16];
		key_name(k, key);
		tally_dist *d;
		cr_assert_eq(tally_query_dist(db, "traffic", "speed", key, a, b, &d), 0,
			     "[%lld, %lld) %s", (long long)a, (long long)b, tally_errmsg());
		cr_assert_eq(tally_dist_count(d), n);
		double q;
		cr_assert_eq(tally_dist_quantile(d, 0.5, &q), 0);
		cr_assert_eq(q, v[(n + 1) / 2 - 1], "median");
		cr_assert_eq(tally_dist_quantile(d, 0.85, &q), 0);
		cr_assert_eq(q, v[(size_t)ceil(0.85 * (double)n) - 1], "V85");
		cr_assert_eq(tally_dist_quantile(d, 1, &q), 0);
		cr_assert_eq(q, v[n - 1]);
		cr_assert_eq(tally_dist_count_above(d, 50), above);
		tally_dist_free(d);
		free(v);
	}
}

Test(tier, distributions_answer_from_stubs_without_the_store, .timeout = 240)
{
	s3srv mine;
	cr_assert_eq(s3srv_start(&mine, "s3rver"), 0, "s3rver did not start");
	fixture f;
	fx_init(&f, &mine, 0);
	f.o.distributions = "traffic.speed:0.01"; /* the values are quarters */
	tally_db *db = fx_open(&f);
	fill_and_tier(&f, db);
	cr_assert_eq(count_suffix(f.dir, ".stub"), DAYS - 1);
	check_dist(db, &f.m, T0, T0 + DAYS * TALLY_1D);
	/* unaligned: raw edges from the store */
	check_dist(db, &f.m, T0 + 1234 * TALLY_NS_PER_SEC, T0 + TALLY_1D + 777 * TALLY_NS_PER_SEC);
	s3srv_stop(&mine);
	tally_db_close(db);
	db = fx_open(&f); /* cold, no store: whole windows answer from the stubs */
	check_dist(db, &f.m, T0, T0 + DAYS * TALLY_1D);
	check_dist(db, &f.m, T0 + TALLY_1D + 7 * TALLY_1H, T0 + TALLY_1D + 9 * TALLY_1H);
	char key[16];
	key_name(0, key);
	tally_dist *d;
	cr_assert_eq(tally_query_dist(db, "traffic", "speed", key, T0 + 1, T0 + TALLY_1D, &d),
		     TALLY_EREMOTE, "an edge in a tiered partition needs the store: %s",
		     tally_errmsg());
	tally_db_close(db);
	fx_free(&f);
}

Test(tier, dist_finest_windows_of_tiered_parts_answer_without_the_store, .timeout = 240)
{
	/* the parts derive their 5-minute distributions from their raw
	 * events; what is uploaded and stubbed has them written, so with the
	 * store gone the stubs still answer every 5-minute window */
	s3srv mine;
	cr_assert_eq(s3srv_start(&mine, "s3rver"), 0, "s3rver did not start");
	fixture f;
	fx_init(&f, &mine, 0);
	f.o.distributions = "traffic.speed:0.01";
	tally_db *db = fx_open(&f);
	fill_and_tier(&f, db);
	cr_assert_eq(count_suffix(f.dir, ".stub"), DAYS - 1);
	/* every stub's 5-minute blocks are distributions (the kind flushes
	 * write), the open day's part's basic ones */
	char path[4200];
	snprintf(path, sizeof path, "%s/parts", f.dir);
	DIR *dd = opendir(path);
	cr_assert(dd);
	struct dirent *de;
	part_scratch ps = {0};
	unsigned seen[2] = {0, 0};
	while ((de = readdir(dd))) {
		size_t l = strlen(de->d_name);
		int stub = l > 5 && !strcmp(de->d_name + l - 5, ".stub");
		if (!stub && (l < 5 || strcmp(de->d_name + l - 5, ".part")))
			continue;
		snprintf(path, sizeof path, "%s/parts/%s", f.dir, de->d_name);
		part *p;
		cr_assert_eq(part_open(path, &p), 0, "%s", tally_errmsg());
		for (uint32_t k = 0; k < p->n_keys; k++) {
			part_rblock rb;
			cr_assert_eq(part_read_rollup(p, &p->keys[k], 0, 0, &ps, &rb), 0);
			cr_assert_eq(rb.kind, stub ? (unsigned)AGG_DIST_BITS : (unsigned)AGG_BASIC,
				     "%s key %u", de->d_name, k);
		}
		seen[stub]++;
		part_close(p);
	}
	closedir(dd);
	part_scratch_free(&ps);
	cr_assert(seen[0] == 1 && seen[1] == DAYS - 1);
	s3srv_stop(&mine);
	tally_db_close(db);
	db = fx_open(&f); /* cold, no store */
	tu_rng r = {tu_seed("tier-dist")};
	for (int i = 0; i < 20; i++) {
		int64_t w = T0 + (int64_t)tu_below(&r, (DAYS - 1) * 288) * TALLY_5M;
		check_dist(db, &f.m, w, w + TALLY_5M);
		check_dist(db, &f.m, w, w + 13 * TALLY_5M);
	}
	check_dist(db, &f.m, T0 + 25 * TALLY_5M, T0 + TALLY_1D + 7 * TALLY_5M);
	tally_db_close(db);
	fx_free(&f);
	s3srv_destroy(&mine);
}
