/*
 * test_wal.c — the write-ahead log against a reference model.
 *
 * Every test writes through the API, keeps the payloads it wrote (the
 * model) and checks that replay hands back exactly those, in order, after
 * reopen, rolls, trims, torn tails and deliberate corruption. The record
 * walker below reads segment files by the byte layout of docs/formats.md,
 * so the tests also pin the format.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <xxhash.h>

#include "err.h"
#include "mem.h"
#include "wal.h"

/* ------------------------------------------------------------ fsync fault */

/* The WAL is linked statically into this program, so this definition
 * takes the place of libc's for its calls: the one way to make a real
 * fsync fail on demand. */
static atomic_int fail_fdatasync;

int fdatasync(int fd)
{
	if (atomic_load(&fail_fdatasync)) {
		errno = EIO;
		return -1;
	}
	return (int)syscall(SYS_fdatasync, fd);
}

/* ------------------------------------------------------------ helpers */

#define PBUF 1024

static char tmp_root[256];
static char wal_dir[300];

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb, (void)flag, (void)ftw;
	return remove(p);
}

static void setup_dir(void)
{
	snprintf(tmp_root, sizeof tmp_root, "/tmp/tally-wal-XXXXXX");
	cr_assert_not_null(mkdtemp(tmp_root));
	snprintf(wal_dir, sizeof wal_dir, "%s/wal", tmp_root);
}

static void teardown_dir(void)
{
	mem_fail_after(0);
	atomic_store(&fail_fdatasync, 0);
	nftw(tmp_root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

TestSuite(wal, .init = setup_dir, .fini = teardown_dir, .timeout = 240);

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng(void)
{
	/* splitmix64: reproducible across runs */
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Bytes that look like a binary column batch: timestamps with small
 * jittered deltas, then values that are small decimals. Compresses ~2-4x. */
static void fill_columnar(uint8_t *p, size_t n, uint64_t seed)
{
	uint64_t ts = 1700000000000000000ull + seed * 1000000000ull;
	size_t i = 0;
	while (i + 8 <= n && i < n / 2) {
		ts += 1000000000ull + (rng() % 1000);
		memcpy(p + i, &ts, 8);
		i += 8;
	}
	while (i + 8 <= n) {
		double v = (double)(rng() % 2000) / 10.0;
		memcpy(p + i, &v, 8);
		i += 8;
	}
	for (; i < n; i++)
		p[i] = (uint8_t)rng();
}

static void fill_random(uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)rng();
}

/* The model: what was written, payload i having seq base + i. */
typedef struct model {
	uint8_t **p;
	size_t *len;
	size_t n, cap;
	uint64_t base;
} model;

static void model_add(model *m, const void *p, size_t len)
{
	if (m->n == m->cap) {
		m->cap = m->cap ? m->cap * 2 : 64;
		m->p = realloc(m->p, m->cap * sizeof *m->p);
		m->len = realloc(m->len, m->cap * sizeof *m->len);
	}
	m->p[m->n] = malloc(len ? len : 1);
	if (len)
		memcpy(m->p[m->n], p, len);
	m->len[m->n++] = len;
}

static void model_free(model *m)
{
	for (size_t i = 0; i < m->n; i++)
		free(m->p[i]);
	free(m->p);
	free(m->len);
	memset(m, 0, sizeof *m);
}

/* Payload kinds the round trip cycles through. */
static size_t make_payload(uint8_t *buf, size_t cap, unsigned kind)
{
	size_t n;
	switch (kind % 8) {
	case 0: return 0;
	case 1: buf[0] = (uint8_t)rng(); return 1;
	case 2:
		n = 1 + rng() % 4096;
		fill_columnar(buf, n, rng());
		return n;
	case 3:
		n = 1 + rng() % 4096;
		fill_random(buf, n);
		return n;
	case 4:
		n = 70000 + rng() % 100000;
		fill_columnar(buf, n, rng());
		return n; /* > buffer */
	case 5:
		n = 70000 + rng() % 100000;
		fill_random(buf, n);
		return n;
	case 6:
		n = 1 + rng() % 200;
		memset(buf, 'a', n);
		return n;
	default:
		n = rng() % 3 == 0 ? (1u << 20) + rng() % (2u << 20) : 100 + rng() % 60000;
		if (n > cap)
			n = cap;
		fill_columnar(buf, n, rng());
		return n;
	}
}

static void append_model(wal *w, model *m, const void *p, size_t len)
{
	uint64_t seq = 0;
	cr_assert_eq(wal_append(w, p, len, &seq), 0, "append: %s", err_msg());
	cr_assert_eq(seq, m->base + m->n, "seq %llu, expected %llu", (unsigned long long)seq,
		     (unsigned long long)(m->base + m->n));
	model_add(m, p, len);
}

/* Appends n payloads of mixed kinds to the model and the log. */
static void append_mixed(wal *w, model *m, size_t n)
{
	size_t cap = 4u << 20;
	uint8_t *buf = malloc(cap);
	for (size_t i = 0; i < n; i++) {
		size_t len = make_payload(buf, cap, (unsigned)(m->n + i));
		append_model(w, m, buf, len);
		if (rng() % 4 == 0)
			cr_assert_eq(wal_write_out(w, NULL), 0, "%s", err_msg());
	}
	free(buf);
}

/* Replay checker: records must come in order, equal to the model. */
typedef struct replay_check {
	const model *m;
	uint64_t next; /* seq expected next */
	uint64_t count;
	int bad;
	char why[200];
} replay_check;

static int check_cb(void *ctx, uint64_t seq, const void *p, size_t len)
{
	replay_check *c = ctx;
	c->count++;
	if (c->bad)
		return 0;
	if (seq != c->next) {
		c->bad = 1;
		snprintf(c->why, sizeof c->why, "seq %llu, expected %llu", (unsigned long long)seq,
			 (unsigned long long)c->next);
		return 0;
	}
	uint64_t i = seq - c->m->base;
	if (seq < c->m->base || i >= c->m->n || c->m->len[i] != len ||
	    (len && memcmp(c->m->p[i], p, len) != 0)) {
		c->bad = 1;
		snprintf(c->why, sizeof c->why, "payload of seq %llu differs (len %zu)",
			 (unsigned long long)seq, len);
		return 0;
	}
	c->next++;
	return 0;
}

/* Opens with after_seq and checks that exactly the model's records above
 * after_seq, up to expect_last, are replayed. */
static wal *open_check(const wal_options *opt, const model *m, uint64_t after_seq,
		       uint64_t expect_last)
{
	replay_check c = {.m = m, .next = after_seq + 1};
	wal *w = NULL;
	int rc = wal_open(wal_dir, opt, after_seq, check_cb, &c, &w);
	cr_assert_eq(rc, 0, "open: %d %s", rc, err_msg());
	cr_assert_eq(c.bad, 0, "%s", c.why);
	cr_assert_eq(c.next, expect_last + 1, "replayed up to %llu, expected %llu",
		     (unsigned long long)(c.next - 1), (unsigned long long)expect_last);
	return w;
}

static int open_quiet(const wal_options *opt, uint64_t after_seq, wal **w)
{
	return wal_open(wal_dir, opt, after_seq, NULL, NULL, w);
}

/* Segment files of wal_dir, sorted; returns how many. */
static size_t list_segs(char names[][32], size_t max)
{
	DIR *d = opendir(wal_dir);
	cr_assert_not_null(d);
	size_t n = 0;
	struct dirent *de;
	while ((de = readdir(d)) != NULL)
		if (strlen(de->d_name) == 24 && strstr(de->d_name, ".wal") && n < max)
			memcpy(names[n++], de->d_name, 25); /* 24 bytes + NUL, checked above */
	closedir(d);
	qsort(names, n, 32, (int (*)(const void *, const void *))strcmp);
	return n;
}

static void seg_file(char *out, size_t cap, const char *name)
{
	snprintf(out, cap, "%s/%s", wal_dir, name);
}

static uint64_t file_size(const char *path)
{
	struct stat sb;
	cr_assert_eq(stat(path, &sb), 0, "stat %s", path);
	return (uint64_t)sb.st_size;
}

static uint64_t dir_bytes(void)
{
	char names[512][32], path[PBUF];
	size_t n = list_segs(names, 512);
	uint64_t sum = 0;
	for (size_t i = 0; i < n; i++) {
		seg_file(path, sizeof path, names[i]);
		sum += file_size(path);
	}
	return sum;
}

static uint8_t *read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	cr_assert_not_null(f, "open %s", path);
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	uint8_t *p = malloc(n > 0 ? (size_t)n : 1);
	cr_assert_eq(fread(p, 1, (size_t)n, f), (size_t)n);
	fclose(f);
	*len = (size_t)n;
	return p;
}

static void write_file(const char *path, const void *p, size_t len)
{
	FILE *f = fopen(path, "wb");
	cr_assert_not_null(f, "create %s", path);
	cr_assert_eq(fwrite(p, 1, len, f), len);
	cr_assert_eq(fclose(f), 0);
}

static void poke(const char *path, uint64_t off, uint8_t xor_mask)
{
	int fd = open(path, O_RDWR);
	cr_assert_geq(fd, 0);
	uint8_t b;
	cr_assert_eq(pread(fd, &b, 1, (off_t)off), 1);
	b ^= xor_mask;
	cr_assert_eq(pwrite(fd, &b, 1, (off_t)off), 1);
	close(fd);
}

/* Writes wal_dir/SYNCED by its documented layout (docs/formats.md): what a
 * process that synced only up to seq leaves, so that the records after it
 * count as a tail no fsync covered. */
static void set_synced(uint64_t seq)
{
	uint8_t b[24];
	char path[PBUF];
	memcpy(b, "TALLYSYN", 8);
	for (int i = 0; i < 8; i++)
		b[8 + i] = (uint8_t)(seq >> (8 * i));
	uint64_t h = XXH3_64bits(b, 16);
	for (int i = 0; i < 8; i++)
		b[16 + i] = (uint8_t)(h >> (8 * i));
	snprintf(path, sizeof path, "%s/SYNCED", wal_dir);
	write_file(path, b, sizeof b);
}

/* Record starts in a segment file, by the documented layout. */
typedef struct rec_pos {
	uint64_t off, stored, seq;
} rec_pos;

static size_t walk_records(const char *path, rec_pos *out, size_t max)
{
	size_t len, n = 0;
	uint8_t *p = read_file(path, &len);
	cr_assert_geq(len, 32);
	cr_assert_eq(memcmp(p, "TALLYWAL", 8), 0);
	for (size_t off = 32; off + 40 <= len && n < max;) {
		uint32_t stored;
		uint64_t seq;
		memcpy(&stored, p + off + 4, 4); /* test hosts are little-endian */
		memcpy(&seq, p + off + 16, 8);
		out[n++] = (rec_pos){off, stored, seq};
		off += 40 + stored;
	}
	free(p);
	return n;
}

/* Log capture for torn-tail notices. */
static char last_log[1024];
static int log_count;

static void log_capture(void *ctx, int level, const char *msg)
{
	(void)ctx, (void)level;
	snprintf(last_log, sizeof last_log, "%s", msg);
	log_count++;
}

static wal_options small_opts(uint64_t segment_bytes)
{
	wal_options o = {.segment_bytes = segment_bytes, .buffer_bytes = 64 * 1024};
	o.log.fn = log_capture;
	o.log.level = TALLY_LOG_INFO;
	return o;
}

/* Writes n mixed small records in segments of about seg bytes; closes. */
static void build_log(model *m, size_t n, uint64_t seg, size_t max_len)
{
	wal_options o = small_opts(seg);
	wal *w = NULL;
	cr_assert_eq(wal_open(wal_dir, &o, 0, NULL, NULL, &w), 0, "%s", err_msg());
	m->base = 1;
	uint8_t *buf = malloc(max_len + 1);
	for (size_t i = 0; i < n; i++) {
		size_t len = 1 + rng() % max_len;
		if (i % 2)
			fill_columnar(buf, len, i);
		else
			fill_random(buf, len);
		append_model(w, m, buf, len);
	}
	free(buf);
	wal_close(w);
}

/* Builds a segment by hand from the documented layout. */
static size_t hand_record(uint8_t *p, uint64_t seq, const char *payload)
{
	uint32_t n = (uint32_t)strlen(payload), magic = 0x43455257u, flags = 0;
	memcpy(p, &magic, 4);
	memcpy(p + 4, &n, 4);
	memcpy(p + 8, &n, 4);
	memcpy(p + 12, &flags, 4);
	memcpy(p + 16, &seq, 8);
	memcpy(p + 40, payload, n);
	uint64_t h = XXH3_64bits(p + 40, n);
	memcpy(p + 24, &h, 8);
	h = XXH3_64bits(p, 32);
	memcpy(p + 32, &h, 8);
	return 40 + n;
}

static size_t hand_segment(uint8_t *p, uint64_t first_seq, uint32_t version)
{
	uint32_t hsize = 32;
	memcpy(p, "TALLYWAL", 8);
	memcpy(p + 8, &version, 4);
	memcpy(p + 12, &hsize, 4);
	memcpy(p + 16, &first_seq, 8);
	uint64_t h = XXH3_64bits(p, 24);
	memcpy(p + 24, &h, 8);
	return 32;
}

/* ------------------------------------------------------------ round trips */

Test(wal, round_trip_mixed_sizes_across_rolls)
{
	wal_options o = small_opts(256 * 1024);
	model m = {.base = 1};
	wal *w = NULL;
	cr_assert_eq(wal_open(wal_dir, &o, 0, NULL, NULL, &w), 0, "%s", err_msg());
	cr_assert_eq(wal_last_seq(w), 0);
	append_mixed(w, &m, 400);
	uint64_t lsn;
	cr_assert_eq(wal_write_out(w, &lsn), 0);
	cr_assert_eq(wal_sync_to(w, lsn), 0);
	cr_assert_eq(wal_last_seq(w), m.n);
	cr_assert_eq(wal_disk_bytes(w), dir_bytes(), "disk bytes %llu vs %llu",
		     (unsigned long long)wal_disk_bytes(w), (unsigned long long)dir_bytes());
	wal_close(w);

	char names[512][32];
	size_t segs = list_segs(names, 512);
	cr_assert_gt(segs, 10, "only %zu segments", segs);
	cr_assert_str_eq(names[0], "00000000000000000001.wal");

	w = open_check(&o, &m, 0, m.n);
	cr_assert_eq(wal_last_seq(w), m.n);
	cr_assert_eq(wal_disk_bytes(w), dir_bytes());
	cr_assert_eq(log_count, 0, "unexpected log: %s", last_log);
	wal_close(w);
	model_free(&m);
}

Test(wal, empty_log_reopens_empty)
{
	wal *w = NULL;
	cr_assert_eq(open_quiet(NULL, 0, &w), 0, "%s", err_msg());
	cr_assert_eq(wal_disk_bytes(w), 32);
	wal_close(w);
	model m = {.base = 1};
	w = open_check(NULL, &m, 0, 0);
	cr_assert_eq(wal_last_seq(w), 0);
	wal_close(w);
}

Test(wal, after_seq_skips_records_already_held)
{
	model m = {0};
	build_log(&m, 60, 4096, 500);
	wal_options o = small_opts(4096);
	wal *w = open_check(&o, &m, 25, 60);
	wal_close(w);
	w = open_check(&o, &m, 60, 60);
	wal_close(w);
	model_free(&m);
}

Test(wal, append_after_reopen_continues_sequence)
{
	model m = {0};
	build_log(&m, 10, 1 << 20, 300);
	wal_options o = small_opts(1 << 20);
	wal *w = open_check(&o, &m, 0, 10);
	uint8_t p[100];
	for (int i = 0; i < 5; i++) {
		fill_random(p, sizeof p);
		append_model(w, &m, p, sizeof p);
	}
	cr_assert_eq(wal_last_seq(w), 15);
	wal_close(w);
	w = open_check(&o, &m, 0, 15);
	wal_close(w);
	model_free(&m);
}

Test(wal, fresh_log_numbers_from_after_seq)
{
	model m = {.base = 1001};
	wal *w = NULL;
	cr_assert_eq(open_quiet(NULL, 1000, &w), 0, "%s", err_msg());
	cr_assert_eq(wal_last_seq(w), 1000);
	append_model(w, &m, "x", 1);
	wal_close(w);
	char names[4][32];
	cr_assert_eq(list_segs(names, 4), 1);
	cr_assert_str_eq(names[0], "00000000000000001001.wal");
	w = open_check(NULL, &m, 1000, 1001);
	wal_close(w);
	model_free(&m);
}

/* The log lost its unsynced tail but the records had reached parts: the
 * numbering must go on above after_seq, or the next replay would skip the
 * new records as already held. */
Test(wal, log_behind_after_seq_numbers_above_it)
{
	model m = {0};
	build_log(&m, 10, 1 << 20, 100);
	wal *w = NULL;
	cr_assert_eq(open_quiet(NULL, 20, &w), 0, "%s", err_msg());
	uint64_t seq;
	cr_assert_eq(wal_append(w, "new", 3, &seq), 0);
	cr_assert_eq(seq, 21);
	wal_close(w);

	model m2 = {.base = 21};
	model_add(&m2, "new", 3);
	w = open_check(NULL, &m2, 20, 21);
	wal_close(w);
	/* A caller that holds only up to 15 is missing 16..20: corrupt. */
	cr_assert_eq(open_quiet(NULL, 15, &w), TALLY_ECORRUPT);
	cr_assert_null(w);
	cr_assert(strstr(err_msg(), "00000000000000000021.wal offset 0: records 11..20 missing"),
		  "%s", err_msg());
	model_free(&m);
	model_free(&m2);
}

Test(wal, record_over_limit_is_refused)
{
	wal *w = NULL;
	cr_assert_eq(open_quiet(NULL, 0, &w), 0);
	static const char one[1] = "x";
	cr_assert_eq(wal_append(w, one, (size_t)WAL_RECORD_MAX + 1, NULL), TALLY_ELIMIT);
	cr_assert_eq(wal_append(w, NULL, 5, NULL), TALLY_EINVAL);
	cr_assert_eq(wal_append(w, NULL, 0, NULL), 0);
	cr_assert_eq(wal_last_seq(w), 1);
	wal_close(w);
}

Test(wal, sync_to_counts_and_limits)
{
	wal *w = NULL;
	cr_assert_eq(open_quiet(NULL, 0, &w), 0);
	cr_assert_eq(wal_sync_to(w, 0), 0);
	cr_assert_eq(wal_syncs(w), 0);
	uint64_t lsn;
	cr_assert_eq(wal_append(w, "abc", 3, NULL), 0);
	cr_assert_eq(wal_write_out(w, &lsn), 0);
	cr_assert_eq(lsn, 43);
	cr_assert_eq(wal_sync_to(w, lsn + 1), TALLY_EINVAL);
	cr_assert_eq(wal_sync_to(w, lsn), 0);
	cr_assert_eq(wal_sync_to(w, lsn), 0);
	cr_assert_eq(wal_syncs(w), 1);
	wal_close(w);
}

/* ------------------------------------------------------------ trim */

Test(wal, trim_deletes_whole_segments_only)
{
	model m = {0};
	build_log(&m, 100, 2048, 300);
	wal_options o = small_opts(2048);
	wal *w = open_check(&o, &m, 0, 100);
	char before[512][32], after[512][32];
	size_t nb = list_segs(before, 512);
	cr_assert_gt(nb, 5);

	uint64_t upto = 57;
	cr_assert_eq(wal_trim(w, upto), 0, "%s", err_msg());
	size_t na = list_segs(after, 512);
	cr_assert_lt(na, nb);
	/* Deleted: exactly the segments whose successor starts at <= upto+1. */
	for (size_t i = 0; i < nb; i++) {
		uint64_t next_first = i + 1 < nb ? strtoull(before[i + 1], NULL, 10) : UINT64_MAX;
		int gone = i < nb - na;
		cr_assert_eq(gone, next_first != UINT64_MAX && next_first - 1 <= upto, "segment %s",
			     before[i]);
	}
	cr_assert_leq(strtoull(after[0], NULL, 10), upto + 1);
	cr_assert_eq(wal_disk_bytes(w), dir_bytes());

	/* Trimming everything keeps the current segment. */
	cr_assert_eq(wal_trim(w, UINT64_MAX - 1), 0);
	cr_assert_eq(list_segs(after, 512), 1);
	cr_assert_str_eq(after[0], before[nb - 1]);
	wal_close(w);

	uint64_t first = strtoull(after[0], NULL, 10);
	w = open_check(&o, &m, first - 1, 100);
	uint64_t seq;
	cr_assert_eq(wal_append(w, "z", 1, &seq), 0);
	cr_assert_eq(seq, 101);
	wal_close(w);
	/* Records the caller does not hold were trimmed away: corrupt. */
	cr_assert_eq(open_quiet(&o, first - 2, &w), TALLY_ECORRUPT);
	cr_assert(strstr(err_msg(), "segments missing"), "%s", err_msg());
	model_free(&m);
}

/* ------------------------------------------------------------ torn tails */

Test(wal, torn_tail_at_every_offset_of_last_record)
{
	model m = {0};
	build_log(&m, 12, 800, 400);
	char names[64][32], path[PBUF];
	size_t ns = list_segs(names, 64);
	cr_assert_gt(ns, 2);
	seg_file(path, sizeof path, names[ns - 1]);
	rec_pos r[64];
	size_t nr = walk_records(path, r, 64);
	cr_assert_gt(nr, 0);
	size_t len;
	uint8_t *orig = read_file(path, &len);
	uint64_t start = r[nr - 1].off, end = start + 40 + r[nr - 1].stored;
	cr_assert_eq(end, len);
	cr_assert_eq(r[nr - 1].seq, 12);

	wal_options o = small_opts(800);
	model m2 = m;
	for (uint64_t cut = start; cut < end; cut++) {
		write_file(path, orig, cut);
		set_synced(11); /* record 12 was never synced: a torn tail */
		log_count = 0;
		m2.n = m.n - 1;
		wal *w = open_check(&o, &m2, 0, 11);
		cr_assert_eq(file_size(path), start, "cut %llu", (unsigned long long)cut);
		if (cut > start) {
			char want[2 * PBUF];
			snprintf(want, sizeof want, "%s offset %llu: torn tail", path,
				 (unsigned long long)start);
			cr_assert_eq(log_count, 1);
			cr_assert(strstr(last_log, want), "cut %llu: %s", (unsigned long long)cut,
				  last_log);
		}
		uint64_t seq;
		cr_assert_eq(wal_append(w, "again", 5, &seq), 0);
		cr_assert_eq(seq, 12);
		wal_close(w);
		/* The replacement record replays where the torn one was. */
		replay_check c = {.next = 1};
		model m3 = {.base = 1};
		for (size_t i = 0; i < 11; i++)
			model_add(&m3, m.p[i], m.len[i]);
		model_add(&m3, "again", 5);
		c.m = &m3;
		cr_assert_eq(wal_open(wal_dir, &o, 0, check_cb, &c, &w), 0, "%s", err_msg());
		cr_assert_eq(c.bad, 0, "%s", c.why);
		cr_assert_eq(c.next, 13);
		wal_close(w);
		model_free(&m3);
	}
	free(orig);
	model_free(&m);
}

Test(wal, garbage_after_last_record_is_torn)
{
	model m = {0};
	build_log(&m, 8, 1 << 20, 300);
	char names[4][32], path[PBUF];
	cr_assert_eq(list_segs(names, 4), 1);
	seg_file(path, sizeof path, names[0]);
	size_t len;
	uint8_t *orig = read_file(path, &len);
	uint8_t *junk = malloc(len + 5000);
	memcpy(junk, orig, len);
	wal_options o = small_opts(1 << 20);

	for (int kind = 0; kind < 4; kind++) {
		size_t extra = kind == 0 ? 4096 : kind == 1 ? 7 : 300;
		if (kind == 0 || kind == 1)
			memset(junk + len, 0, extra);
		else
			fill_random(junk + len, extra);
		if (kind == 3) /* starts like a record but does not check out */
			memcpy(junk + len, "WREC", 4);
		write_file(path, junk, len + extra);
		log_count = 0;
		wal *w = open_check(&o, &m, 0, 8);
		cr_assert_eq(file_size(path), len);
		cr_assert_eq(log_count, 1);
		cr_assert(strstr(last_log, "torn tail"), "%s", last_log);
		wal_close(w);
	}
	free(junk);
	free(orig);
	model_free(&m);
}

Test(wal, empty_or_short_last_segment_is_torn)
{
	model m = {0};
	build_log(&m, 5, 1 << 20, 100);
	char path[PBUF];
	/* A crash right after creating the next segment. */
	seg_file(path, sizeof path, "00000000000000000006.wal");
	write_file(path, "TALLYW", 6);
	wal_options o = small_opts(1 << 20);
	wal *w = open_check(&o, &m, 0, 5);
	cr_assert_eq(file_size(path), 32);
	cr_assert(strstr(last_log, "00000000000000000006.wal offset 0: torn tail"), "%s", last_log);
	append_model(w, &m, "six", 3);
	wal_close(w);
	cr_assert_eq(file_size(path), 32 + 40 + 3);
	w = open_check(&o, &m, 0, 6);
	wal_close(w);
	model_free(&m);
}

Test(wal, empty_trailing_segment_is_fine)
{
	model m = {0};
	build_log(&m, 5, 1 << 20, 100);
	/* A valid empty segment 6 (what a roll leaves before any append). */
	uint8_t h[32];
	char path[PBUF];
	seg_file(path, sizeof path, "00000000000000000006.wal");
	write_file(path, h, hand_segment(h, 6, 1));
	char names[4][32];
	cr_assert_eq(list_segs(names, 4), 2);
	cr_assert_str_eq(names[1], "00000000000000000006.wal");
	log_count = 0;
	wal_options o = small_opts(1 << 20);
	wal *w = open_check(&o, &m, 0, 5);
	cr_assert_eq(log_count, 0);
	append_model(w, &m, "six", 3);
	wal_close(w);
	w = open_check(&o, &m, 0, 6);
	wal_close(w);
	model_free(&m);
}

/* ------------------------------------------------------------ corruption */

/* Flips one byte at rec.off + delta in segment seg_idx and expects open to
 * fail with a message naming file, offset and what is wrong. */
static void expect_corrupt_at(size_t seg_idx, size_t rec_idx, uint64_t delta, const char *what)
{
	char names[512][32], path[PBUF], want[2 * PBUF];
	size_t ns = list_segs(names, 512);
	cr_assert_lt(seg_idx, ns);
	seg_file(path, sizeof path, names[seg_idx]);
	rec_pos r[256];
	size_t nr = walk_records(path, r, 256);
	cr_assert_lt(rec_idx, nr);
	size_t len;
	uint8_t *orig = read_file(path, &len);
	poke(path, r[rec_idx].off + delta, 0x40);
	wal *w = NULL;
	int rc = wal_open(wal_dir, NULL, 0, NULL, NULL, &w);
	cr_assert_eq(rc, TALLY_ECORRUPT, "rc %d: %s", rc, err_msg());
	cr_assert_null(w);
	snprintf(want, sizeof want, "%s offset %llu: %s", path, (unsigned long long)r[rec_idx].off,
		 what);
	cr_assert(strstr(err_msg(), want), "message '%s' lacks '%s'", err_msg(), want);
	cr_assert_eq(file_size(path), len, "a corrupt log must not be modified");
	write_file(path, orig, len);
	free(orig);
}

Test(wal, flipped_byte_in_middle_record_is_corrupt)
{
	model m = {0};
	build_log(&m, 40, 2048, 300);
	/* Middle segment, middle record: payload, header field, magic, header sum. */
	expect_corrupt_at(1, 1, 45, "payload checksum mismatch (record seq");
	expect_corrupt_at(1, 1, 17, "record header checksum mismatch");
	expect_corrupt_at(1, 1, 0, "bad record magic");
	expect_corrupt_at(1, 0, 35, "record header checksum mismatch");
	expect_corrupt_at(1, 1, 24, "record header checksum mismatch"); /* the payload sum */
	/* Last segment but a valid record follows: still corruption. */
	char names[64][32];
	size_t ns = list_segs(names, 64);
	char path[PBUF];
	seg_file(path, sizeof path, names[ns - 1]);
	rec_pos r[64];
	size_t nr = walk_records(path, r, 64);
	cr_assert_geq(nr, 2, "need two records in the last segment");
	expect_corrupt_at(ns - 1, nr - 2, 50, "payload checksum mismatch");
	expect_corrupt_at(ns - 1, nr - 2, 2, "bad record magic");
	/* Untouched again: it opens. */
	wal *w = open_check(NULL, &m, 0, 40);
	wal_close(w);
	model_free(&m);
}

Test(wal, payload_checksum_message_names_seq)
{
	model m = {0};
	build_log(&m, 40, 2048, 300);
	char names[64][32], path[PBUF], want[2 * PBUF];
	list_segs(names, 64);
	seg_file(path, sizeof path, names[1]);
	rec_pos r[64];
	walk_records(path, r, 64);
	poke(path, r[0].off + 40, 1);
	wal *w = NULL;
	cr_assert_eq(open_quiet(NULL, 0, &w), TALLY_ECORRUPT);
	snprintf(want, sizeof want, "%s offset %llu: payload checksum mismatch (record seq %llu)",
		 path, (unsigned long long)r[0].off, (unsigned long long)r[0].seq);
	cr_assert_str_eq(err_msg(), want);
	model_free(&m);
}

/* Issue 12 item 7: a flipped byte in the last record, which an fsync
 * covered, was taken for a torn tail and cut away with a warning. */
Test(wal, flipped_byte_in_last_synced_record_is_refused_and_kept)
{
	model m = {0};
	build_log(&m, 40, 2048, 300);
	char names[64][32], path[PBUF], want[2 * PBUF];
	size_t ns = list_segs(names, 64);
	seg_file(path, sizeof path, names[ns - 1]);
	rec_pos r[64];
	size_t nr = walk_records(path, r, 64);
	uint64_t size = file_size(path);
	poke(path, r[nr - 1].off + 40 + r[nr - 1].stored / 2, 0x10);
	wal_options o = small_opts(2048);
	wal *w = NULL;
	cr_assert_eq(wal_open(wal_dir, &o, 0, NULL, NULL, &w), TALLY_ECORRUPT);
	cr_assert_null(w);
	snprintf(want, sizeof want,
		 "%s offset %llu: payload checksum mismatch where record seq 40 belongs, but "
		 "records up to seq 40 were synced",
		 path, (unsigned long long)r[nr - 1].off);
	cr_assert(strstr(err_msg(), want), "%s", err_msg());
	cr_assert_eq(file_size(path), size, "the damaged segment must be kept whole");
	/* and refused again: nothing was changed by the first try */
	cr_assert_eq(wal_open(wal_dir, &o, 0, NULL, NULL, &w), TALLY_ECORRUPT);
	model_free(&m);
}

Test(wal, flipped_byte_in_last_unsynced_record_is_torn)
{
	model m = {0};
	build_log(&m, 40, 2048, 300);
	char names[64][32], path[PBUF];
	size_t ns = list_segs(names, 64);
	seg_file(path, sizeof path, names[ns - 1]);
	rec_pos r[64];
	size_t nr = walk_records(path, r, 64);
	poke(path, r[nr - 1].off + 40 + r[nr - 1].stored / 2, 0x10);
	set_synced(39);
	wal_options o = small_opts(2048);
	log_count = 0;
	wal *w = open_check(&o, &m, 0, 39);
	cr_assert_eq(log_count, 1);
	cr_assert(strstr(last_log, "payload checksum mismatch"), "%s", last_log);
	cr_assert_eq(file_size(path), r[nr - 1].off);
	wal_close(w);
	model_free(&m);
}

Test(wal, truncated_middle_segment_is_corrupt)
{
	model m = {0};
	build_log(&m, 40, 2048, 300);
	char names[64][32], path[PBUF];
	list_segs(names, 64);
	seg_file(path, sizeof path, names[1]);
	size_t len;
	uint8_t *p = read_file(path, &len);
	write_file(path, p, len - 3);
	free(p);
	wal *w = NULL;
	cr_assert_eq(open_quiet(NULL, 0, &w), TALLY_ECORRUPT);
	cr_assert(strstr(err_msg(), path), "%s", err_msg());
	cr_assert(strstr(err_msg(), "record length past end of file"), "%s", err_msg());
	/* A short header in a middle segment too. */
	write_file(path, "TALLYWAL", 8);
	cr_assert_eq(open_quiet(NULL, 0, &w), TALLY_ECORRUPT);
	cr_assert(strstr(err_msg(), "offset 0: short segment header"), "%s", err_msg());
	model_free(&m);
}

Test(wal, missing_segment_is_corrupt)
{
	model m = {0};
	build_log(&m, 40, 2048, 300);
	char names[64][32], path[PBUF];
	size_t ns = list_segs(names, 64);
	cr_assert_gt(ns, 3);
	seg_file(path, sizeof path, names[2]);
	cr_assert_eq(unlink(path), 0);
	wal *w = NULL;
	cr_assert_eq(open_quiet(NULL, 0, &w), TALLY_ECORRUPT);
	cr_assert(strstr(err_msg(), names[3]), "%s", err_msg());
	cr_assert(strstr(err_msg(), "missing"), "%s", err_msg());
	/* The first one missing, with nothing held: corrupt as well. */
	seg_file(path, sizeof path, names[0]);
	cr_assert_eq(unlink(path), 0);
	cr_assert_eq(open_quiet(NULL, 0, &w), TALLY_ECORRUPT);
	cr_assert(strstr(err_msg(), "segments missing"), "%s", err_msg());
	model_free(&m);
}

Test(wal, bad_segment_header_in_middle_is_corrupt)
{
	model m = {0};
	build_log(&m, 40, 2048, 300);
	char names[64][32], path[PBUF];
	list_segs(names, 64);
	seg_file(path, sizeof path, names[1]);
	poke(path, 17, 1); /* first_seq */
	wal *w = NULL;
	cr_assert_eq(open_quiet(NULL, 0, &w), TALLY_ECORRUPT);
	char want[2 * PBUF];
	snprintf(want, sizeof want, "%s offset 0: segment header checksum mismatch", path);
	cr_assert_str_eq(err_msg(), want);
	poke(path, 17, 1);
	/* In the last segment too, when valid records follow the header. */
	size_t ns = list_segs(names, 64);
	seg_file(path, sizeof path, names[ns - 1]);
	rec_pos r[64];
	cr_assert_gt(walk_records(path, r, 64), 0);
	poke(path, 3, 0x20);
	cr_assert_eq(open_quiet(NULL, 0, &w), TALLY_ECORRUPT);
	snprintf(want, sizeof want, "%s offset 0: bad segment magic", path);
	cr_assert_str_eq(err_msg(), want);
	model_free(&m);
}

Test(wal, hand_built_segment_follows_documented_format)
{
	uint8_t seg[512];
	size_t n = hand_segment(seg, 7, 1);
	n += hand_record(seg + n, 7, "hello");
	n += hand_record(seg + n, 8, "");
	n += hand_record(seg + n, 9, "world");
	mkdir(wal_dir, 0755);
	char path[PBUF];
	seg_file(path, sizeof path, "00000000000000000007.wal");
	write_file(path, seg, n);
	model m = {.base = 7};
	model_add(&m, "hello", 5);
	model_add(&m, "", 0);
	model_add(&m, "world", 5);
	wal *w = open_check(NULL, &m, 6, 9);
	wal_close(w);

	/* A repeated seq with valid checksums is corruption, never torn. */
	n = hand_segment(seg, 7, 1);
	n += hand_record(seg + n, 7, "hello");
	size_t at = n;
	n += hand_record(seg + n, 7, "again");
	write_file(path, seg, n);
	cr_assert_eq(open_quiet(NULL, 6, &w), TALLY_ECORRUPT);
	char want[2 * PBUF];
	snprintf(want, sizeof want, "%s offset %zu: record seq 7, expected 8", path, at);
	cr_assert_str_eq(err_msg(), want);

	/* A file name that disagrees with the header. */
	seg_file(path, sizeof path, "00000000000000000006.wal");
	n = hand_segment(seg, 5, 1);
	write_file(path, seg, n);
	cr_assert_eq(open_quiet(NULL, 4, &w), TALLY_ECORRUPT);
	cr_assert(strstr(err_msg(), "differs from the file name"), "%s", err_msg());

	/* A newer format version is refused as such. */
	n = hand_segment(seg, 6, 2);
	write_file(path, seg, n);
	cr_assert_eq(open_quiet(NULL, 5, &w), TALLY_EVERSION);
	cr_assert(strstr(err_msg(), "format version 2"), "%s", err_msg());
	model_free(&m);
}

/* Replays the model's prefix 1..k, then the record "tail" as k + 1. */
typedef struct tail_check {
	replay_check base;
	uint64_t k;
	int tail_seen;
} tail_check;

static int tail_cb(void *ctx, uint64_t seq, const void *p, size_t len)
{
	tail_check *t = ctx;
	if (seq == t->k + 1 && t->base.next == seq) {
		t->tail_seen = len == 4 && memcmp(p, "tail", 4) == 0;
		return 0;
	}
	return check_cb(&t->base, seq, p, len);
}

/* Random damage: open either fails with TALLY_ECORRUPT or replays a prefix
 * of what was written, never a wrong payload. */
Test(wal, random_corruption_never_replays_wrong_data)
{
	model m = {0};
	build_log(&m, 60, 3000, 400);
	char names[64][32], path[PBUF];
	size_t ns = list_segs(names, 64);
	uint8_t *files[64];
	size_t lens[64];
	for (size_t i = 0; i < ns; i++) {
		seg_file(path, sizeof path, names[i]);
		files[i] = read_file(path, &lens[i]);
	}
	wal_options o = small_opts(3000);
	int n_ok = 0, n_corrupt = 0;
	for (int iter = 0; iter < 1500; iter++) {
		/* restore the pristine log */
		DIR *d = opendir(wal_dir);
		struct dirent *de;
		while ((de = readdir(d)) != NULL)
			if (de->d_name[0] != '.') {
				seg_file(path, sizeof path, de->d_name);
				unlink(path);
			}
		closedir(d);
		for (size_t i = 0; i < ns; i++) {
			seg_file(path, sizeof path, names[i]);
			write_file(path, files[i], lens[i]);
		}
		int damage = 1 + (int)(rng() % 3);
		for (int k = 0; k < damage; k++) {
			size_t s = rng() % ns;
			seg_file(path, sizeof path, names[s]);
			uint64_t size = file_size(path);
			switch (rng() % 6) {
			case 0: /* truncate */
				cr_assert_eq(truncate(path, (off_t)(rng() % (size + 1))), 0);
				break;
			case 1: { /* zero a range */
				if (!size)
					break;
				uint64_t off = rng() % size, n = 1 + rng() % 64;
				for (uint64_t b = off; b < off + n && b < size; b++) {
					int fd = open(path, O_RDWR);
					uint8_t z = 0;
					cr_assert_eq(pwrite(fd, &z, 1, (off_t)b), 1);
					close(fd);
				}
				break;
			}
			default: /* flip a bit */
				if (size)
					poke(path, rng() % size, (uint8_t)(1u << (rng() % 8)));
				break;
			}
		}
		replay_check c = {.m = &m, .next = 1};
		wal *w = NULL;
		int rc = wal_open(wal_dir, &o, 0, check_cb, &c, &w);
		cr_assert_eq(c.bad, 0, "iter %d: %s", iter, c.why);
		if (rc == 0) {
			/* What recovery left must take an append and replay it
			 * after the surviving prefix. */
			n_ok++;
			uint64_t k = c.next - 1;
			cr_assert_eq(wal_last_seq(w), k);
			uint64_t seq;
			cr_assert_eq(wal_append(w, "tail", 4, &seq), 0, "%s", err_msg());
			cr_assert_eq(seq, k + 1);
			wal_close(w);
			tail_check t = {.base = {.m = &m, .next = 1}, .k = k};
			cr_assert_eq(wal_open(wal_dir, &o, 0, tail_cb, &t, &w), 0, "%s", err_msg());
			cr_assert_eq(t.base.bad, 0, "%s", t.base.why);
			cr_assert(t.tail_seen, "iter %d: appended record not replayed after %llu",
				  iter, (unsigned long long)k);
			cr_assert_eq(wal_last_seq(w), k + 1);
			wal_close(w);
		} else {
			n_corrupt++;
			cr_assert_eq(rc, TALLY_ECORRUPT, "iter %d: rc %d %s", iter, rc, err_msg());
			cr_assert(strstr(err_msg(), wal_dir), "%s", err_msg());
		}
	}
	cr_assert_gt(n_ok, 10);
	cr_assert_gt(n_corrupt, 10);
	for (size_t i = 0; i < ns; i++)
		free(files[i]);
	model_free(&m);
}

/* ------------------------------------------------------------ failures */

Test(wal, fsync_failure_fails_the_log_for_good)
{
	wal_options o = small_opts(0);
	wal *w = NULL;
	cr_assert_eq(open_quiet(&o, 0, &w), 0);
	uint64_t lsn;
	cr_assert_eq(wal_append(w, "abc", 3, NULL), 0);
	cr_assert_eq(wal_write_out(w, &lsn), 0);
	atomic_store(&fail_fdatasync, 1);
	cr_assert_eq(wal_sync_to(w, lsn), TALLY_EFAILED);
	cr_assert(strstr(err_msg(), "Input/output error"), "%s", err_msg());
	atomic_store(&fail_fdatasync, 0);
	cr_assert_eq(wal_sync_to(w, lsn), TALLY_EFAILED);
	cr_assert(strstr(err_msg(), "fdatasync"), "%s", err_msg());
	cr_assert(strstr(err_msg(), "Input/output error"), "%s", err_msg());
	cr_assert_eq(wal_append(w, "d", 1, NULL), TALLY_EFAILED);
	/* that first serialised call cut what the failed fsync covered */
	cr_assert(strstr(last_log, "offset 32: cut 43 bytes written after the last good fsync"),
		  "%s", last_log);
	cr_assert_eq(wal_write_out(w, NULL), TALLY_EFAILED);
	cr_assert_eq(wal_trim(w, 1), TALLY_EFAILED);
	wal_close(w);
	/* "abc" was never durable and its writer was told: it must not come
	 * back as a ghost at the next open */
	replay_check c = {.m = &(model){.base = 1}, .next = 1};
	cr_assert_eq(wal_open(wal_dir, &o, 0, check_cb, &c, &w), 0, "%s", err_msg());
	cr_assert_eq(c.count, 0);
	cr_assert_eq(wal_last_seq(w), 0);
	wal_close(w);
}

/* Issue 12 item 7: deleting the only segment that held synced records
 * lost them without a word. */
Test(wal, synced_records_gone_missing_are_refused)
{
	model m = {0};
	build_log(&m, 5, 1 << 20, 100); /* one segment, closed: 1..5 synced */
	char names[4][32], path[PBUF];
	cr_assert_eq(list_segs(names, 4), 1);
	seg_file(path, sizeof path, names[0]);
	cr_assert_eq(unlink(path), 0);
	wal *w = NULL;
	cr_assert_eq(open_quiet(NULL, 0, &w), TALLY_ECORRUPT);
	char want[2 * PBUF];
	snprintf(want, sizeof want,
		 "%s: records 1..5 were synced (%s/SYNCED) but are missing: the log has no "
		 "segment; refusing to open",
		 wal_dir, wal_dir);
	cr_assert_str_eq(err_msg(), want);
	/* records up to after_seq are in parts: nothing is missing then */
	cr_assert_eq(open_quiet(NULL, 5, &w), 0, "%s", err_msg());
	cr_assert_eq(wal_last_seq(w), 5);
	wal_close(w);
	model_free(&m);
}

/* A log cut short after its last synced record lost synced records too. */
Test(wal, synced_tail_cut_away_is_refused)
{
	model m = {0};
	build_log(&m, 5, 1 << 20, 100);
	char names[4][32], path[PBUF];
	list_segs(names, 4);
	seg_file(path, sizeof path, names[0]);
	rec_pos r[8];
	size_t nr = walk_records(path, r, 8);
	cr_assert_eq(nr, 5);
	cr_assert_eq(truncate(path, (off_t)r[4].off), 0);
	wal *w = NULL;
	cr_assert_eq(open_quiet(NULL, 0, &w), TALLY_ECORRUPT);
	cr_assert(strstr(err_msg(), "records 5..5 were synced"), "%s", err_msg());
	cr_assert(strstr(err_msg(), "the log ends before them"), "%s", err_msg());
	/* SYNCED that does not check out: a warning, and the old rules */
	char sp[PBUF];
	snprintf(sp, sizeof sp, "%s/SYNCED", wal_dir);
	poke(sp, 9, 1);
	log_count = 0;
	m.n = 4;
	wal_options o = small_opts(1 << 20);
	w = open_check(&o, &m, 0, 4);
	cr_assert(strstr(last_log, "SYNCED: unreadable"), "%s", last_log);
	wal_close(w);
	model_free(&m);
}

Test(wal, fsync_failure_during_roll_fails_the_log)
{
	wal_options o = small_opts(100);
	wal *w = NULL;
	cr_assert_eq(open_quiet(&o, 0, &w), 0);
	uint8_t p[200];
	fill_random(p, sizeof p);
	cr_assert_eq(wal_append(w, p, sizeof p, NULL), 0);
	atomic_store(&fail_fdatasync, 1);
	cr_assert_eq(wal_append(w, p, sizeof p, NULL), TALLY_EFAILED);
	atomic_store(&fail_fdatasync, 0);
	cr_assert_eq(wal_append(w, p, sizeof p, NULL), TALLY_EFAILED);
	wal_close(w);
}

Test(wal, allocation_failures_unwind_cleanly)
{
	model m = {0};
	build_log(&m, 30, 2048, 300);
	wal_options o = small_opts(2048);
	int succeeded = 0;
	for (uint64_t n = 1; n < 200 && !succeeded; n++) {
		replay_check c = {.m = &m, .next = 1};
		wal *w = NULL;
		mem_fail_after(n);
		int rc = wal_open(wal_dir, &o, 0, check_cb, &c, &w);
		if (rc == 0) {
			uint8_t big[100000];
			fill_columnar(big, sizeof big, n);
			rc = wal_append(w, big, sizeof big, NULL);
			cr_assert(rc == 0 || rc == -ENOMEM, "rc %d", rc);
			succeeded = rc == 0;
			mem_fail_after(0);
			wal_close(w);
			if (succeeded)
				model_add(&m, big, sizeof big);
		} else {
			mem_fail_after(0);
			cr_assert_eq(rc, -ENOMEM, "n %llu rc %d: %s", (unsigned long long)n, rc,
				     err_msg());
			cr_assert_null(w);
		}
	}
	cr_assert(succeeded);
	wal *w = open_check(&o, &m, 0, 31);
	wal_close(w);
	model_free(&m);
}

Test(wal, bad_arguments)
{
	wal *w = (wal *)1;
	cr_assert_eq(wal_open("", NULL, 0, NULL, NULL, &w), TALLY_EINVAL);
	cr_assert_null(w);
	cr_assert_eq(wal_open(wal_dir, NULL, UINT64_MAX, NULL, NULL, &w), TALLY_EINVAL);
	char deep[PBUF];
	snprintf(deep, sizeof deep, "%s/no/such", tmp_root);
	cr_assert_eq(wal_open(deep, NULL, 0, NULL, NULL, &w), -ENOENT);
	cr_assert(strstr(err_msg(), "mkdir"), "%s", err_msg());
	wal_close(NULL);
}

static int stop_cb(void *ctx, uint64_t seq, const void *p, size_t len)
{
	(void)p, (void)len;
	*(uint64_t *)ctx = seq;
	return seq == 3 ? -42 : 0;
}

Test(wal, replay_error_aborts_open)
{
	model m = {0};
	build_log(&m, 5, 1 << 20, 50);
	uint64_t last = 0;
	wal *w = NULL;
	cr_assert_eq(wal_open(wal_dir, NULL, 0, stop_cb, &last, &w), -42);
	cr_assert_null(w);
	cr_assert_eq(last, 3);
	model_free(&m);
}

/* ------------------------------------------------------------ concurrency */

typedef struct conc {
	wal *w;
	pthread_mutex_t lock; /* the caller's (shard) lock */
	model m;              /* under lock */
	atomic_ullong calls;
	atomic_int errors;
} conc;

/* One writer: append + write_out under the lock, then wait for its own
 * LSN outside it, as the engine does. Criterion asserts stay on the main
 * thread; failures are counted. */
static void *committer(void *arg)
{
	conc *c = arg;
	uint8_t buf[3000];
	uint64_t x = (uint64_t)(uintptr_t)&buf;
	for (int i = 0; i < 200; i++) {
		x = x * 6364136223846793005ull + 1442695040888963407ull;
		size_t len = 1 + (x >> 33) % sizeof buf;
		for (size_t k = 0; k < len; k++)
			buf[k] = (uint8_t)((x >> 40) + k / 16);
		uint64_t lsn = 0, seq = 0;
		pthread_mutex_lock(&c->lock);
		int rc = wal_append(c->w, buf, len, &seq);
		if (!rc && seq != c->m.base + c->m.n)
			rc = -1;
		if (!rc) {
			model_add(&c->m, buf, len);
			rc = wal_write_out(c->w, &lsn);
		}
		if (!rc && seq % 300 == 0)
			rc = wal_trim(c->w, seq / 2);
		pthread_mutex_unlock(&c->lock);
		if (!rc)
			rc = wal_sync_to(c->w, lsn);
		atomic_fetch_add(&c->calls, 1);
		if (rc)
			atomic_fetch_add(&c->errors, 1);
	}
	return NULL;
}

Test(wal, concurrent_sync_to_shares_fsyncs)
{
	wal_options o = {.segment_bytes = 64 * 1024, .buffer_bytes = 16 * 1024};
	conc c = {.lock = PTHREAD_MUTEX_INITIALIZER, .m = {.base = 1}};
	cr_assert_eq(open_quiet(&o, 0, &c.w), 0);
	pthread_t t[8];
	for (int i = 0; i < 8; i++)
		pthread_create(&t[i], NULL, committer, &c);
	for (int i = 0; i < 8; i++)
		pthread_join(t[i], NULL);
	cr_assert_eq(atomic_load(&c.errors), 0);
	uint64_t syncs = wal_syncs(c.w), calls = atomic_load(&c.calls);
	cr_log_info("%llu fsyncs (rolls included) for %llu sync calls", (unsigned long long)syncs,
		    (unsigned long long)calls);
	cr_assert_lt(syncs, calls);
	cr_assert_gt(syncs, 0);
	cr_assert_eq(wal_last_seq(c.w), 1600);
	wal_close(c.w);
	char names[512][32];
	list_segs(names, 512);
	uint64_t first = strtoull(names[0], NULL, 10);
	cr_assert_gt(first, 1, "trim deleted nothing");
	wal *w = open_check(NULL, &c.m, first - 1, 1600);
	wal_close(w);
	model_free(&c.m);
}
