/*
 * test_idem.c — labelled batches: exactly once under retries.
 *
 * The model test sends random batches from several sources, each labelled
 * (source, sequence), with random duplicates, retries out of order and
 * retries too old to tell, through writers on random shards, as line
 * protocol and as binary batches, with reopens (WAL replay), flushes
 * (labels saved, WAL trimmed) and merges between them. Every answer
 * (applied, duplicate, too old) and every count and sum must equal brute
 * force over the distinct batches. Batches repeat each other's events on
 * purpose (same key, time and value): those are real events and count
 * once per batch.
 *
 * TALLY_SEED=n replays a run.
 */
#include <criterion/criterion.h>
#include <pthread.h>

#include "batch.h"
#include "testutil.h"

#ifndef TALLY_SOURCE_DIR
#define TALLY_SOURCE_DIR "."
#endif

#define NSRC   4
#define NKEY   3
#define MAXSEQ 400
#define ROWS   4
#define WINDOW 64
#define T0     INT64_C(1700000000000000000)

/* Batch (src, seq)'s events: a pure function of the label, so a retry
 * sends exactly the same bytes. Keys, times and values repeat across
 * batches. */
static void batch_event(int src, uint64_t seq, int r, int *key, int64_t *ts, int64_t *v)
{
	uint64_t h = (uint64_t)src * 1000003u + seq * 7919u + (uint64_t)r * 104729u;
	*key = (int)(h % NKEY);
	*ts = T0 + (int64_t)(h % 5) * TALLY_NS_PER_SEC; /* few distinct times */
	*v = (int64_t)(h % 3);                          /* few distinct values */
}

static size_t batch_lp(int src, uint64_t seq, char *buf, size_t cap)
{
	size_t n = 0;
	for (int r = 0; r < ROWS; r++) {
		int key;
		int64_t ts, v;
		batch_event(src, seq, r, &key, &ts, &v);
		n += (size_t)snprintf(buf + n, cap - n, "cars,cam=c%d v=%lldi %lld\n", key,
				      (long long)v, (long long)ts);
	}
	return n;
}

typedef struct model {
	int applied[NSRC][MAXSEQ + 1];
	uint64_t high[NSRC];
	uint64_t count[NKEY];
	int64_t sum[NKEY];
	uint64_t dups, old;
} model;

static void model_apply(model *m, int src, uint64_t seq)
{
	m->applied[src][seq] = 1;
	if (seq > m->high[src])
		m->high[src] = seq;
	for (int r = 0; r < ROWS; r++) {
		int key;
		int64_t ts, v;
		batch_event(src, seq, r, &key, &ts, &v);
		m->count[key]++;
		m->sum[key] += v;
	}
}

/* 0 applied, 1 duplicate, 2 too old */
static int model_expect(const model *m, int src, uint64_t seq)
{
	if (m->applied[src][seq])
		return m->high[src] - seq < WINDOW ? 1 : 2;
	if (m->high[src] >= seq && m->high[src] - seq >= WINDOW)
		return 2;
	return 0;
}

static int send(tally_db *db, tu_rng *rng, int src, uint64_t seq, int *dup)
{
	tally_writer *w;
	cr_assert_eq(tally_writer_open(db, (int)tu_below(rng, 3), &w), 0);
	char name[16];
	snprintf(name, sizeof name, "cam-%d", src);
	int rc;
	if (tu_below(rng, 2)) {
		char buf[1024];
		size_t n = batch_lp(src, seq, buf, sizeof buf);
		tally_write_result res;
		rc = tally_write_lp_labelled(w, name, seq, buf, n, TALLY_PREC_NS, &res, dup);
		if (!rc && !*dup)
			cr_assert_eq(res.accepted, ROWS);
		if (!rc && *dup)
			cr_assert_eq(res.accepted, 0, "a duplicate reports nothing written");
	} else {
		/* binary: a call holds one key, so a batch whose rows share
		 * their key goes binary, any other as line protocol */
		int k0, same = 1;
		int64_t ts[ROWS], v[ROWS];
		for (int r = 0; r < ROWS; r++) {
			int key;
			batch_event(src, seq, r, &key, &ts[r], &v[r]);
			if (r == 0)
				k0 = key;
			same &= key == k0;
		}
		if (same) {
			char key[8];
			snprintf(key, sizeof key, "c%d", k0);
			tally_column col = {.name = "v", .type = TALLY_T_I64, .values = v};
			tally_batch b = {.table = "cars",
					 .key = key,
					 .key_tag = "cam",
					 .n_rows = ROWS,
					 .ts = ts,
					 .n_columns = 1,
					 .columns = &col};
			rc = tally_write_batch_labelled(w, name, seq, &b, dup);
		} else {
			char buf[1024];
			size_t n = batch_lp(src, seq, buf, sizeof buf);
			rc = tally_write_lp_labelled(w, name, seq, buf, n, TALLY_PREC_NS, NULL,
						     dup);
		}
	}
	tally_writer_close(w);
	return rc;
}

static void check_counts(tally_db *db, const model *m)
{
	for (int k = 0; k < NKEY; k++) {
		char key[8];
		snprintf(key, sizeof key, "c%d", k);
		tally_agg a;
		int rc = tally_query_agg(db, "cars", "v", key, INT64_MIN, INT64_MAX, &a);
		if (m->count[k] == 0)
			continue;
		cr_assert_eq(rc, 0, "%s", tally_errmsg());
		cr_assert_eq(a.count, m->count[k], "key %d: %llu events, model %llu", k,
			     (unsigned long long)a.count, (unsigned long long)m->count[k]);
		cr_assert_eq((int64_t)a.sum, m->sum[k]);
		uint64_t agg, rows;
		cr_assert_eq(tu_count_key(db, "cars", "v", key, &agg, &rows), 0);
		cr_assert_eq(rows, m->count[k], "raw rows agree");
	}
}

static tally_options idem_opts(void)
{
	tally_options o = tu_quiet_opts();
	o.shards = 3;
	o.label_window = WINDOW;
	o.sync_mode = TALLY_SYNC_EACH_WRITE;
	o.label_expiry = -1;
	return o;
}

Test(idem, model_retries_reopens_flushes_merges)
{
	tu_rng rng = {tu_seed("idem.model")};
	char *dir = tu_tmpdir();
	tally_options o = idem_opts();
	tally_db *db;
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	static model m;
	memset(&m, 0, sizeof m);
	uint64_t next[NSRC];
	for (int s = 0; s < NSRC; s++)
		next[s] = 1;
	for (int step = 0; step < 3000; step++) {
		uint64_t op = tu_below(&rng, 100);
		if (op < 2) {
			tally_db_close(db);
			cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
			check_counts(db, &m);
			continue;
		}
		if (op < 4) {
			cr_assert_eq(tally_db_flush(db), 0, "%s", tally_errmsg());
			continue;
		}
		if (op < 5) {
			cr_assert_eq(tally_db_merge(db), 0, "%s", tally_errmsg());
			continue;
		}
		int src = (int)tu_below(&rng, NSRC);
		uint64_t seq;
		if (op < 60 && next[src] <= MAXSEQ) {
			/* a new batch, sometimes skipping ahead (its gap is
			 * filled later, out of order) */
			seq = next[src];
			next[src] += 1 + (tu_below(&rng, 8) == 0 ? tu_below(&rng, 5) : 0);
			if (next[src] > MAXSEQ + 1)
				next[src] = MAXSEQ + 1;
		} else if (op < 90) {
			/* a retry of something recent, or a gap being filled */
			uint64_t back = 1 + tu_below(&rng, WINDOW + 8);
			seq = next[src] > back ? next[src] - back : 1;
		} else {
			/* a very late retry, maybe below the window */
			seq = 1 + tu_below(&rng, next[src]);
		}
		if (seq > MAXSEQ)
			seq = MAXSEQ;
		int want = model_expect(&m, src, seq), dup = -1;
		int rc = send(db, &rng, src, seq, &dup);
		if (want == 2) {
			cr_assert_eq(rc, TALLY_ESTALE, "source %d seq %llu (high %llu): rc %d", src,
				     (unsigned long long)seq, (unsigned long long)m.high[src], rc);
			m.old++;
			continue;
		}
		cr_assert_eq(rc, 0, "%s", tally_errmsg());
		cr_assert_eq(dup, want, "source %d seq %llu: duplicate %d, model %d", src,
			     (unsigned long long)seq, dup, want);
		if (want == 0)
			model_apply(&m, src, seq);
		else
			m.dups++;
		if (step % 500 == 0)
			check_counts(db, &m);
	}
	check_counts(db, &m);
	tally_stats st;
	cr_assert_eq(tally_db_stats(db, &st), 0);
	cr_assert_eq(st.label_sources, NSRC);
	cr_assert_gt(st.label_bytes, 0);
	tally_db_close(db);
	/* and once more from disk only */
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	check_counts(db, &m);
	tally_db_close(db);
	cr_assert_gt(m.dups, 100, "the run made duplicates");
	cr_assert_gt(m.old, 0, "the run made too-old retries");
	tu_rmrf(dir);
	free(dir);
}

/* A fresh database (idem_opts but for o) with a writer on one shard. */
typedef struct fx {
	char *dir;
	tally_options o;
	tally_db *db;
	tally_writer *w;
} fx;

static void fx_open(fx *f, tally_options o, int shard)
{
	if (!f->dir)
		f->dir = tu_tmpdir();
	f->o = o;
	cr_assert_eq(tally_db_open(f->dir, &f->o, &f->db), 0, "%s", tally_errmsg());
	cr_assert_eq(tally_writer_open(f->db, shard, &f->w), 0);
}

static void fx_reopen(fx *f, int shard)
{
	tally_writer_close(f->w);
	tally_db_close(f->db);
	fx_open(f, f->o, shard);
}

static void fx_close(fx *f)
{
	tally_writer_close(f->w);
	tally_db_close(f->db);
	tu_rmrf(f->dir);
	free(f->dir);
}

/* A labelled line-protocol write that must succeed: its duplicate flag. */
static int fx_lp(fx *f, const char *src, uint64_t seq, const char *lp, tally_write_result *r)
{
	int dup = -1;
	cr_assert_eq(
		tally_write_lp_labelled(f->w, src, seq, lp, strlen(lp), TALLY_PREC_NS, r, &dup), 0,
		"%s", tally_errmsg());
	return dup;
}

static tally_stats fx_stats(fx *f)
{
	tally_stats st;
	cr_assert_eq(tally_db_stats(f->db, &st), 0);
	return st;
}

static const char *one_car = "cars,cam=x v=1i 1700000000000000000\n";

/* Two events with the same key, time and value in two batches are two
 * cars: both count. Only the label makes a batch a duplicate. */
Test(idem, identical_events_in_two_batches_both_count)
{
	fx f = {0};
	fx_open(&f, idem_opts(), 0);
	cr_assert_eq(fx_lp(&f, "gw", 1, one_car, NULL), 0);
	cr_assert_eq(fx_lp(&f, "gw", 2, one_car, NULL), 0);
	cr_assert_eq(fx_lp(&f, "gw", 2, one_car, NULL), 1);
	/* unlabelled writes are never deduplicated */
	cr_assert_eq(tally_write_lp(f.w, one_car, strlen(one_car), TALLY_PREC_NS, NULL), 0);
	tally_agg a;
	cr_assert_eq(tally_query_agg(f.db, "cars", "v", "x", INT64_MIN, INT64_MAX, &a), 0);
	cr_assert_eq(a.count, 3);
	cr_assert_eq(fx_stats(&f).label_duplicates, 1);
	fx_close(&f);
}

Test(idem, bad_labels_are_refused_naming_the_byte)
{
	fx f = {0};
	fx_open(&f, idem_opts(), 0);
	size_t n = strlen(one_car);
	cr_assert_eq(tally_write_lp_labelled(f.w, "", 1, one_car, n, TALLY_PREC_NS, NULL, NULL),
		     TALLY_EINVAL);
	cr_assert_eq(tally_write_lp_labelled(f.w, "a b", 1, one_car, n, TALLY_PREC_NS, NULL, NULL),
		     TALLY_EINVAL);
	cr_assert(strstr(tally_errmsg(), "byte 1"), "%s", tally_errmsg());
	/* the writer is not left labelled: this write is a plain one */
	cr_assert_eq(tally_write_lp(f.w, one_car, n, TALLY_PREC_NS, NULL), 0);
	cr_assert_eq(fx_stats(&f).label_sources, 0);
	fx_close(&f);
}

/* A batch whose lines were all rejected still records its label: the
 * retry is a duplicate and the sender stops. */
Test(idem, rejected_batch_records_its_label)
{
	fx f = {0};
	fx_open(&f, idem_opts(), 1);
	const char *bad = "cars,cam=x v=oops 1700000000000000000\n";
	tally_write_result r;
	cr_assert_eq(fx_lp(&f, "gw", 5, bad, &r), 0);
	cr_assert_eq(r.rejected, 1);
	fx_reopen(&f, 2);
	cr_assert_eq(fx_lp(&f, "gw", 5, bad, &r), 1, "the label came back from the WAL");
	fx_close(&f);
}

/* Silent sources are forgotten at a flush; what it risks: a retry after
 * that is applied again. */
Test(idem, expiry_forgets_silent_sources)
{
	fx f = {0};
	tally_options o = idem_opts();
	o.label_expiry = 1; /* 1 ns: every source is silent by the flush */
	fx_open(&f, o, 0);
	cr_assert_eq(fx_lp(&f, "gw", 1, one_car, NULL), 0);
	cr_assert_eq(fx_stats(&f).label_sources, 1);
	cr_assert_eq(tally_db_flush(f.db), 0, "%s", tally_errmsg());
	tally_stats st = fx_stats(&f);
	cr_assert_eq(st.label_sources, 0);
	cr_assert_eq(st.label_expired, 1);
	cr_assert_eq(fx_lp(&f, "gw", 1, one_car, NULL), 0, "forgotten: applied again");
	fx_close(&f);
}

/* ---------------------------------------------------------------- concurrency */

typedef struct racer {
	tally_db *db;
	int shard;
	int applied;
} racer;

static void *race(void *arg)
{
	racer *r = arg;
	tally_writer *w;
	cr_assert_eq(tally_writer_open(r->db, r->shard, &w), 0);
	const char *lp = "cars,cam=x v=1i 1700000000000000000\n";
	for (uint64_t seq = 1; seq <= 300; seq++) {
		int dup;
		int rc = tally_write_lp_labelled(w, "one-source", seq, lp, strlen(lp),
						 TALLY_PREC_NS, NULL, &dup);
		cr_assert_eq(rc, 0, "%s", tally_errmsg());
		r->applied += !dup;
	}
	tally_writer_close(w);
	return NULL;
}

/* Writers of one source on different shards send the same batches at once:
 * each is applied exactly once. */
Test(idem, one_source_on_many_shards_applies_each_batch_once)
{
	char *dir = tu_tmpdir();
	tally_options o = idem_opts();
	o.sync_mode = TALLY_SYNC_ON_REQUEST;
	o.label_window = 512; /* a thread may lag the others by all 300 */
	tally_db *db;
	cr_assert_eq(tally_db_open(dir, &o, &db), 0);
	racer r[3];
	pthread_t t[3];
	for (int i = 0; i < 3; i++) {
		r[i] = (racer){db, i, 0};
		pthread_create(&t[i], NULL, race, &r[i]);
	}
	for (int i = 0; i < 3; i++)
		pthread_join(t[i], NULL);
	cr_assert_eq(r[0].applied + r[1].applied + r[2].applied, 300);
	tally_agg a;
	cr_assert_eq(tally_query_agg(db, "cars", "v", "x", INT64_MIN, INT64_MAX, &a), 0);
	cr_assert_eq(a.count, 300);
	tally_db_close(db);
	tu_rmrf(dir);
	free(dir);
}

/* ---------------------------------------------------------------- old WAL */

/*
 * tests/data/wal-v1/ is the WAL of a database written before labels
 * existed (payload version 1, two shards, nothing flushed): it must replay
 * as it did, and take labelled batches after it.
 */
Test(idem, wal_without_labels_still_replays)
{
	char *dir = tu_tmpdir();
	char cmd[8192];
	snprintf(cmd, sizeof cmd, "cp -r %s/tests/data/wal-v1/. %s/", TALLY_SOURCE_DIR, dir);
	cr_assert_eq(system(cmd), 0);
	tally_options o = idem_opts();
	o.shards = 2;
	tally_db *db;
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	/* what the fixture's writer wrote: per shard s, rows i = 0..19 of
	 * camera KV((i+s)%3) with speed 60+i+0.5 */
	for (int cam = 0; cam < 3; cam++) {
		uint64_t n = 0;
		double sum = 0;
		for (int s = 0; s < 2; s++)
			for (int i = 0; i < 20; i++)
				if ((i + s) % 3 == cam) {
					n++;
					sum += 60 + i + 0.5;
				}
		char key[8];
		snprintf(key, sizeof key, "KV%d", cam);
		tally_agg a;
		cr_assert_eq(tally_query_agg(db, "traffic", "speed", key, INT64_MIN, INT64_MAX, &a),
			     0, "%s", tally_errmsg());
		cr_assert_eq(a.count, n);
		cr_assert_eq(a.sum, sum);
	}
	tally_agg a;
	cr_assert_eq(tally_query_agg(db, "weather", "temp", "S1", INT64_MIN, INT64_MAX, &a), 0);
	cr_assert_eq(a.count, 1);
	cr_assert_eq(a.sum, -3);
	/* version 1 and version 2 records side by side in one WAL */
	tally_writer *w;
	cr_assert_eq(tally_writer_open(db, 0, &w), 0);
	const char *lp = "weather,station=S1 temp=4i 1700000000000000000\n";
	int dup;
	cr_assert_eq(tally_write_lp_labelled(w, "st", 9, lp, strlen(lp), TALLY_PREC_NS, NULL, &dup),
		     0);
	tally_writer_close(w);
	tally_db_close(db);
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	cr_assert_eq(tally_writer_open(db, 1, &w), 0);
	cr_assert_eq(tally_write_lp_labelled(w, "st", 9, lp, strlen(lp), TALLY_PREC_NS, NULL, &dup),
		     0);
	cr_assert_eq(dup, 1);
	tally_writer_close(w);
	cr_assert_eq(tally_query_agg(db, "weather", "temp", "S1", INT64_MIN, INT64_MAX, &a), 0);
	cr_assert_eq(a.count, 2);
	cr_assert_eq(a.sum, 1);
	tally_db_close(db);
	tu_rmrf(dir);
	free(dir);
}

/* ---------------------------------------------------------------- payload */

/* Decodes p into b (emptied first): it must hold rows rows. */
static void payload_decode(stage_batch *b, catalog *cat, const void *p, size_t len, uint64_t rows)
{
	stage_batch_reset(b);
	cr_assert_eq(stage_batch_decode(b, cat, (const char *)p, len), 0, "%s", tally_errmsg());
	cr_assert_eq(b->rows, rows);
}

/* The label of the documented labelled batch. */
static void label_is_cam7_42(const stage_batch *b)
{
	cr_assert_eq(b->labelled, 1);
	cr_assert_str_eq(b->source, "cam-7");
	cr_assert_eq(b->seq, 42);
}

/* docs/formats.md, "WAL payload": the worked example of a labelled batch
 * (version 2, as releases before version 4 wrote it) still decodes. */
Test(idem, labelled_payload_of_version_2_still_decodes)
{
	static const unsigned char doc[] = {
		0x02, 0x05, 0x00, 0x63, 0x61, 0x6d, 0x2d, 0x37, 0x2a, 0x00, 0x00, 0x00, 0x00, 0x00,
		0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x07, 0x00, 0x74, 0x72, 0x61, 0x66, 0x66, 0x69,
		0x63, 0x06, 0x00, 0x63, 0x61, 0x6d, 0x65, 0x72, 0x61, 0x01, 0x00, 0x00, 0x00, 0x01,
		0x00, 0x00, 0x00, 0x03, 0x00, 0x4b, 0x56, 0x31, 0x00, 0x00, 0x2a, 0x36, 0xfe, 0x9c,
		0x97, 0x17, 0x01, 0x00, 0x00, 0x00, 0x05, 0x00, 0x73, 0x70, 0x65, 0x65, 0x64, 0x01,
		0x01, 0xcd, 0xcc, 0xcc, 0xcc, 0xcc, 0x4c, 0x55, 0x40};
	catalog cat;
	cr_assert_eq(catalog_init(&cat, NULL), 0);
	stage_batch b;
	stage_batch_init(&b);
	payload_decode(&b, &cat, doc, sizeof doc, 1);
	label_is_cam7_42(&b);
	/* written again it is version 4, the same label and row */
	char *buf = NULL;
	size_t cap = 0, len = 0;
	cr_assert_eq(stage_batch_encode(&b, &buf, &cap, &len), 0);
	cr_assert_eq(buf[0], 4);
	payload_decode(&b, &cat, buf, len, 1);
	label_is_cam7_42(&b);
	cr_assert_eq(b.tb[0]->ts[0], INT64_C(1700000000000000000));
	/* a label cut short is refused with its byte position */
	stage_batch_reset(&b);
	cr_assert_eq(stage_batch_decode(&b, &cat, (const char *)doc, 10), TALLY_ECORRUPT);
	cr_assert(strstr(tally_errmsg(), "bad batch label"), "%s", tally_errmsg());
	free(buf);
	stage_batch_free(&b);
	catalog_free(&cat);
}

/* docs/formats.md, "WAL payload": the worked example in version 1 (what
 * releases before the codecs wrote) decodes, and the same batch encodes
 * to the documented version 3 bytes, which decode back to it. */
Test(idem, coded_payload_matches_the_documented_bytes)
{
	static const unsigned char v1[] = {
		0x01, 0x01, 0x00, 0x00, 0x00, 0x07, 0x00, 0x74, 0x72, 0x61, 0x66, 0x66, 0x69, 0x63,
		0x06, 0x00, 0x63, 0x61, 0x6d, 0x65, 0x72, 0x61, 0x02, 0x00, 0x00, 0x00, 0x01, 0x00,
		0x00, 0x00, 0x03, 0x00, 0x4b, 0x56, 0x31, 0x00, 0x00, 0x2a, 0x36, 0xfe, 0x9c, 0x97,
		0x17, 0x00, 0xca, 0x9a, 0x3b, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x05,
		0x00, 0x73, 0x70, 0x65, 0x65, 0x64, 0x01, 0x01, 0xcd, 0xcc, 0xcc, 0xcc, 0xcc, 0x4c,
		0x55, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00, 0xa0, 0x56, 0x40, 0x04, 0x00, 0x6c, 0x61,
		0x6e, 0x65, 0x06, 0x00, 0x01, 0x01, 0x00, 0x32};
	static const unsigned char v3[] = {
		0x03, 0x01, 0x00, 0x00, 0x00, 0x07, 0x00, 0x74, 0x72, 0x61, 0x66, 0x66, 0x69, 0x63,
		0x06, 0x00, 0x63, 0x61, 0x6d, 0x65, 0x72, 0x61, 0x02, 0x00, 0x00, 0x00, 0x01, 0x00,
		0x00, 0x00, 0x0b, 0x00, 0x00, 0x00, 0x06, 0x06, 0x00, 0x01, 0x03, 0x0d, 0x01, 0x06,
		0x4b, 0x56, 0x31, 0x14, 0x00, 0x00, 0x00, 0x01, 0x01, 0x00, 0x02, 0x00, 0x00, 0x2a,
		0x36, 0xfe, 0x9c, 0x97, 0x17, 0x00, 0xca, 0xc4, 0x71, 0xfe, 0x9c, 0x97, 0x17, 0x02,
		0x00, 0x00, 0x00, 0x05, 0x00, 0x73, 0x70, 0x65, 0x65, 0x64, 0x01, 0x0d, 0x00, 0x00,
		0x00, 0x03, 0x04, 0x00, 0x02, 0x01, 0x00, 0x0d, 0x35, 0xa8, 0x0d, 0x00, 0x02, 0x01,
		0x04, 0x00, 0x6c, 0x61, 0x6e, 0x65, 0x06, 0x0c, 0x00, 0x00, 0x00, 0x06, 0x06, 0x02,
		0x02, 0x01, 0x00, 0x01, 0x03, 0x0d, 0x01, 0x02, 0x32};
	catalog cat;
	cr_assert_eq(catalog_init(&cat, NULL), 0);
	stage_batch b;
	stage_batch_init(&b);
	payload_decode(&b, &cat, v1, sizeof v1, 2);
	char *buf = NULL;
	size_t cap = 0, len = 0;
	cr_assert_eq(stage_batch_encode(&b, &buf, &cap, &len), 0);
	cr_assert_eq(len, sizeof v3, "%zu bytes", len);
	cr_assert_eq(memcmp(buf, v3, len), 0);
	/* the coded bytes decode to the same batch: encoding them again
	 * gives the same bytes */
	payload_decode(&b, &cat, v3, sizeof v3, 2);
	tbatch *tb = b.tb[0];
	cr_assert_eq(tb->ts[1], INT64_C(1700000001000000000));
	size_t len2 = 0;
	cr_assert_eq(stage_batch_encode(&b, &buf, &cap, &len2), 0);
	cr_assert_eq(len2, len);
	cr_assert_eq(memcmp(buf, v3, len), 0);
	/* a block cut short names itself and its byte */
	stage_batch_reset(&b);
	cr_assert_eq(stage_batch_decode(&b, &cat, (const char *)v3, sizeof v3 - 1), TALLY_ECORRUPT);
	cr_assert(strstr(tally_errmsg(), "WAL payload byte"), "%s", tally_errmsg());
	free(buf);
	stage_batch_free(&b);
	catalog_free(&cat);
}

/* A coded payload of more rows than a codec block holds is cut into
 * blocks of 65,536 rows, each with its own presence: a batch of 70,000
 * rows of three keys, a float on every row, a tag on every third and a
 * bool on every fifth, comes back row for row. */
Test(idem, coded_payload_splits_columns_into_blocks)
{
	enum { N = 70000 };
	catalog cat;
	cr_assert_eq(catalog_init(&cat, NULL), 0);
	table_def *t;
	cr_assert_eq(catalog_table(&cat, "big", 3, strmap_hash("big", 3), "k", 1, &t), 0);
	col_def *f, *tag, *flag;
	cr_assert_eq(catalog_column(&cat, t, "v", 1, strmap_hash("v", 1), TALLY_T_F64, &f), 0);
	cr_assert_eq(catalog_column(&cat, t, "lane", 4, strmap_hash("lane", 4), TALLY_T_TAG, &tag),
		     0);
	cr_assert_eq(catalog_column(&cat, t, "ok", 2, strmap_hash("ok", 2), TALLY_T_BOOL, &flag),
		     0);
	stage_batch b;
	stage_batch_init(&b);
	tbatch *tb;
	cr_assert_eq(stage_batch_table(&b, t, &tb), 0);
	static const char *const keys[] = {"KV1", "KV22", "KV333"};
	for (uint32_t r = 0; r < N; r++) {
		cr_assert_eq(tbatch_row_begin(tb, INT64_C(1700000000000000000) + r * INT64_C(997)),
			     0);
		cr_assert_eq(tbatch_set(tb, f, (bval){.f64 = (double)(r % 1000) / 10}), 0);
		char lane[16];
		int ll = snprintf(lane, sizeof lane, "L%u", r % 7);
		if (r % 3 == 0)
			cr_assert_eq(tbatch_set_str(tb, tag, lane, (uint32_t)ll), 0);
		if (r % 5 == 0)
			cr_assert_eq(tbatch_set(tb, flag, (bval){.u64 = r % 2}), 0);
		const char *k = keys[r % 3];
		cr_assert_eq(tbatch_row_commit(&b, tb, k, (uint32_t)strlen(k)), 0);
	}
	char *buf = NULL;
	size_t cap = 0, len = 0;
	cr_assert_eq(stage_batch_encode(&b, &buf, &cap, &len), 0, "%s", tally_errmsg());
	stage_batch d;
	stage_batch_init(&d);
	payload_decode(&d, &cat, buf, len, N);
	tbatch *db = d.tb[0];
	cr_assert_eq(db->n_keys, 3);
	for (uint32_t r = 0; r < N; r++) {
		cr_assert_eq(db->ts[r], tb->ts[r], "row %u", r);
		uint32_t kl;
		const char *k = tbatch_key(db, db->key[r], &kl);
		cr_assert(kl == strlen(keys[r % 3]) && !memcmp(k, keys[r % 3], kl), "row %u", r);
	}
	for (uint32_t c = 0; c < db->n_cols; c++) {
		const bcol *dc = &db->cols[c];
		const bcol *sc = &tb->cols[tb->slot_of[dc->def->id]];
		for (uint32_t r = 0; r < N; r++) {
			cr_assert_eq(bcol_has(dc, r), bcol_has(sc, r), "%s row %u", dc->def->name,
				     r);
			if (!bcol_has(dc, r))
				continue;
			if (dc->def->type == TALLY_T_TAG) {
				uint32_t l1, l2;
				const char *s1 = tbatch_str(db, dc->vals[r].ref, &l1);
				const char *s2 = tbatch_str(tb, sc->vals[r].ref, &l2);
				cr_assert(l1 == l2 && !memcmp(s1, s2, l1), "tag row %u", r);
			} else {
				cr_assert_eq(dc->vals[r].u64, sc->vals[r].u64, "%s row %u",
					     dc->def->name, r);
			}
		}
	}
	free(buf);
	stage_batch_free(&d);
	stage_batch_free(&b);
	catalog_free(&cat);
}
