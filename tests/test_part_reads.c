/*
 * test_part_reads.c — parts read by pread (tally_options.part_reads) give
 * the answers mapped parts give, keep the parts' pages out of the
 * process's RSS, and reuse bounded buffers.
 *
 * One store is written (several flushes, late events, a merge, a delete),
 * then read whole both ways and every answer compared as text. The RSS
 * check reads /proc/self/smaps: with pread no part file is mapped, so
 * none of its pages can count in RSS however much is read; with mmap the
 * same reads leave pages of the mapped parts resident, which is what
 * made the hour's soak climb and shows the check can see them. The
 * rest of the suites run under pread too (the "-pread" tests,
 * part_reads_wrap.c).
 */
#include <criterion/criterion.h>
#include <inttypes.h>

#include "part.h"
#include "testutil.h"

#define NKEYS 40
#define NROWS 1500 /* per key and round */
#define T0    INT64_C(1700000000000000000)

static tally_options opts(uint64_t reads)
{
	tally_options o = tu_quiet_opts();
	o.part_reads = reads;
	o.table_keys = "m=cam";
	return o;
}

/* Three rounds of events, each flushed into parts: values of many
 * digits (so blocks are big and compress little), a string field,
 * some events hours late; then a merge and the delete of one key's
 * range, which rewrites parts. */
static char *build_store(uint64_t reads)
{
	char *dir = tu_tmpdir();
	tally_options o = opts(reads);
	tally_db *db;
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	tu_rng rng = {.s = 12345};
	size_t cap = (size_t)NKEYS * NROWS * 96;
	char *lp = malloc(cap);
	for (int round = 0; round < 3; round++) {
		size_t len = 0;
		for (int i = 0; i < NROWS; i++)
			for (int k = 0; k < NKEYS; k++) {
				int64_t ts = T0 +
					     (int64_t)(round * NROWS + i) * 7 * TALLY_NS_PER_SEC +
					     k;
				if (tu_below(&rng, 20) == 0)
					ts -= (int64_t)(1 + tu_below(&rng, 5)) * TALLY_1H;
				len += (size_t)snprintf(
					lp + len, cap - len,
					"m,cam=c%02d v=%" PRIu64 ".%04u,n=%" PRIu64
					"i,s=\"s%u\" %" PRId64 "\n",
					k, tu_below(&rng, 1000000), (unsigned)tu_below(&rng, 10000),
					tu_next(&rng) >> 20, (unsigned)tu_below(&rng, 50), ts);
			}
		cr_assert_eq(tu_write_synced(db, lp, len), NKEYS * NROWS, "%s", tally_errmsg());
		cr_assert_eq(tally_db_flush(db), 0, "%s", tally_errmsg());
	}
	free(lp);
	cr_assert_eq(tally_db_merge(db), 0, "%s", tally_errmsg());
	tally_delete_result dr = {.size = sizeof dr};
	cr_assert_eq(tally_db_delete(db, "m", "c07", T0 + TALLY_1H, T0 + 3 * TALLY_1H, &dr), 0,
		     "%s", tally_errmsg());
	cr_assert_gt(dr.rows, 0);
	tally_db_close(db);
	return dir;
}

typedef struct text {
	char *p;
	size_t len, cap;
} text;

static void put(text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(text *t, const char *fmt, ...)
{
	va_list ap;
	for (;;) {
		va_start(ap, fmt);
		int n = vsnprintf(t->p + t->len, t->cap - t->len, fmt, ap);
		va_end(ap);
		if ((size_t)n < t->cap - t->len) {
			t->len += (size_t)n;
			return;
		}
		t->cap = t->cap * 2 + (size_t)n + 1;
		t->p = realloc(t->p, t->cap);
	}
}

static void put_agg(text *t, const tally_agg *a)
{
	put(t, " %" PRIu64 " %.17g %.17g %.17g\n", a->count, a->sum, a->min, a->max);
}

/* Every answer the store gives, as text: per key a series at each
 * level and a step between, exact aggregates over unaligned ranges and
 * a raw scan; every key at once; a group of all. */
static text read_all(tally_db *db)
{
	text t = {0};
	static const int64_t steps[] = {TALLY_5M, 15 * TALLY_5M, TALLY_1H, TALLY_1D};
	const int64_t lo = T0 - TALLY_1D, hi = T0 + 2 * TALLY_1D;
	tally_bucket *b = calloc(4096, sizeof *b);
	for (int k = 0; k < NKEYS; k++) {
		char key[16];
		snprintf(key, sizeof key, "c%02d", k);
		for (size_t s = 0; s < sizeof steps / sizeof *steps; s++) {
			size_t n;
			cr_assert_eq(tally_query_series(db, "m", "v", key, steps[s], lo, hi, b,
							4096, &n),
				     0, "%s", tally_errmsg());
			put(&t, "series %s %" PRId64 " %zu\n", key, steps[s], n);
			for (size_t i = 0; i < n; i++) {
				put(&t, "%" PRId64, b[i].start);
				put_agg(&t, &b[i].agg);
			}
		}
		tally_agg a;
		for (int64_t from = T0 - 7 * TALLY_NS_PER_SEC; from < T0 + 9 * TALLY_1H;
		     from += 77 * 60 * TALLY_NS_PER_SEC + 13) {
			cr_assert_eq(tally_query_agg(db, "m", "n", key, from,
						     from + 3 * TALLY_1H + 5, &a),
				     0, "%s", tally_errmsg());
			put(&t, "agg %s %" PRId64, key, from);
			put_agg(&t, &a);
		}
		tally_scan *sc;
		cr_assert_eq(tally_scan_open(db, "m", key, INT64_MIN, INT64_MAX, &sc), 0, "%s",
			     tally_errmsg());
		tally_row row;
		int rc;
		while ((rc = tally_scan_next(sc, &row)) == 1) {
			put(&t, "row %s %" PRId64, key, row.ts);
			for (size_t c = 0; c < row.n_values; c++) {
				const tally_value *v = &row.values[c];
				if (v->type == TALLY_T_F64)
					put(&t, " %.17g", v->v.f64);
				else if (v->type == TALLY_T_I64)
					put(&t, " %" PRId64, v->v.i64);
				else if (v->type == TALLY_T_STR || v->type == TALLY_T_TAG)
					put(&t, " %.*s", (int)v->v.str.len, v->v.str.ptr);
				else
					put(&t, " type%d", (int)v->type);
			}
			put(&t, "\n");
		}
		cr_assert_eq(rc, 0, "%s", tally_errmsg());
		tally_scan_close(sc);
	}
	free(b);
	tally_keys_iter *it;
	const char *kk;
	tally_agg ka;
	cr_assert_eq(tally_query_keys(db, "m", "v", T0 + 13, T0 + TALLY_1D, &it), 0, "%s",
		     tally_errmsg());
	while (tally_keys_next(it, &kk, &ka) == 1) {
		put(&t, "keys %s", kk);
		put_agg(&t, &ka);
	}
	tally_keys_close(it);
	cr_assert_eq(tally_query_group(db, "m", "n", NULL, "", INT64_MIN, INT64_MAX, &it), 0, "%s",
		     tally_errmsg());
	while (tally_keys_next(it, &kk, &ka) == 1) {
		put(&t, "group %s", kk);
		put_agg(&t, &ka);
	}
	tally_keys_close(it);
	return t;
}

/* Resident KiB and count of the mappings of part files in smaps. */
static uint64_t part_pages_kib(int *mappings)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	cr_assert(f, "cannot read /proc/self/smaps");
	char line[4096];
	int in_part = 0;
	uint64_t kib = 0, v;
	*mappings = 0;
	while (fgets(line, sizeof line, f)) {
		size_t n = strlen(line);
		uint64_t lo, hi;
		if (sscanf(line, "%" SCNx64 "-%" SCNx64 " ", &lo, &hi) == 2) {
			/* a mapping's first line: range perms offset dev inode path */
			in_part = n > 6 && !strcmp(line + n - 6, ".part\n");
			*mappings += in_part;
		} else if (in_part && sscanf(line, "Rss: %" SCNu64 " kB", &v) == 1) {
			kib += v;
		}
	}
	fclose(f);
	return kib;
}

static uint64_t parts_bytes(const char *dir)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/parts", dir);
	DIR *d = opendir(path);
	cr_assert(d);
	struct dirent *e;
	uint64_t sum = 0;
	while ((e = readdir(d))) {
		struct stat sb;
		char p[8192];
		snprintf(p, sizeof p, "%s/%s", path, e->d_name);
		if (strstr(e->d_name, ".part") && !stat(p, &sb))
			sum += (uint64_t)sb.st_size;
	}
	closedir(d);
	return sum;
}

Test(part_reads, same_answers_mapped_and_pread)
{
	/* written (flushes, merge, delete) with pread, read back both ways */
	char *dir = build_store(TALLY_PART_READS_PREAD);
	text got[2];
	static const uint64_t modes[2] = {TALLY_PART_READS_MMAP, TALLY_PART_READS_PREAD};
	for (int i = 0; i < 2; i++) {
		tally_options o = opts(modes[i]);
		tally_db *db;
		cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
		tally_stats st;
		cr_assert_eq(tally_db_stats(db, &st), 0);
		cr_assert_eq(st.memtable_bytes, 0, "every answer must come from parts");
		got[i] = read_all(db);
		tally_db_close(db);
	}
	cr_assert_gt(got[0].len, (size_t)NKEYS * NROWS * 3 * 20, "too little read: %zu bytes",
		     got[0].len);
	size_t at = 0;
	while (at < got[0].len && at < got[1].len && got[0].p[at] == got[1].p[at])
		at++;
	cr_assert(got[0].len == got[1].len && at == got[0].len,
		  "answers differ at byte %zu: mmap '%.80s', pread '%.80s'", at, got[0].p + at,
		  got[1].p + at);
	free(got[0].p);
	free(got[1].p);
	tu_rmrf(dir);
	free(dir);
}

Test(part_reads, pread_maps_no_part_pages_into_rss)
{
	char *dir = build_store(TALLY_PART_READS_MMAP);
	uint64_t on_disk = parts_bytes(dir);
	cr_assert_gt(on_disk, 1 << 20, "parts of %" PRIu64 " bytes are too small to tell", on_disk);
	static const uint64_t modes[2] = {TALLY_PART_READS_MMAP, TALLY_PART_READS_PREAD};
	uint64_t kib[2];
	for (int i = 0; i < 2; i++) {
		tally_options o = opts(modes[i]);
		tally_db *db;
		cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
		text t = read_all(db);
		free(t.p);
		int maps;
		kib[i] = part_pages_kib(&maps);
		if (modes[i] == TALLY_PART_READS_PREAD)
			cr_assert_eq(maps, 0, "pread: %d part files mapped", maps);
		else
			cr_assert_gt(maps, 0, "mmap: no part file mapped (is smaps read right?)");
		tally_db_close(db);
	}
	/* mapped, the pages read are resident in this process; read by
	 * pread, the same reads leave none */
	cr_assert_gt(kib[0], 0, "mmap: reading every part left no page resident");
	cr_assert_eq(kib[1], 0, "pread: %" PRIu64 " KiB of part pages in RSS", kib[1]);
	tu_rmrf(dir);
	free(dir);
}

/* The scratch a reader reuses grows to the largest block it read, once:
 * reading every block again, many times, does not make it grow. */
Test(part_reads, pread_scratch_is_reused_and_bounded)
{
	char *dir = build_store(TALLY_PART_READS_PREAD);
	char path[4096];
	char parts[4096];
	snprintf(parts, sizeof parts, "%s/parts", dir);
	cr_assert_gt(tu_find_files(parts, ".part", path, sizeof path), 0);
	part *p;
	cr_assert_eq(part_open_reads(path, PART_READS_PREAD, &p), 0, "%s", tally_errmsg());
	cr_assert_null(p->map);
	uint32_t max_rows = 1, max_block = 0;
	for (uint32_t i = 0; i < p->n_stripes; i++)
		max_rows = p->stripes[i].n_rows > max_rows ? p->stripes[i].n_rows : max_rows;
	for (uint32_t i = 0; i < p->n_refs; i++)
		max_block = p->refs[i].len > max_block ? p->refs[i].len : max_block;
	void *vals = malloc((size_t)max_rows * 16);
	uint64_t *present = malloc(((size_t)max_rows + 63) / 64 * 8);
	part_scratch s = {0};
	size_t cap_after_first = 0;
	for (int pass = 0; pass < 5; pass++) {
		for (uint32_t i = 0; i < p->n_stripes; i++)
			for (int c = -1; c < (int)p->info.n_cols; c++) {
				int absent;
				cr_assert_eq(part_read_col(p, &p->stripes[i], c, &s, vals, present,
							   &absent),
					     0, "%s", tally_errmsg());
			}
		for (uint32_t k = 0; k < p->n_keys; k++)
			for (uint32_t num = 0; num < p->info.n_num; num++)
				for (unsigned l = 0; l < p->info.n_levels; l++) {
					part_rblock rb;
					cr_assert_eq(
						part_read_rollup(p, &p->keys[k], num, l, &s, &rb),
						0, "%s", tally_errmsg());
				}
		if (pass == 0)
			cap_after_first = s.raw.cap;
		cr_assert_eq(s.raw.cap, cap_after_first, "pass %d: the read buffer grew to %zu",
			     pass, s.raw.cap);
	}
	cr_assert_geq(cap_after_first, (size_t)max_block + 8);
	/* the buffer doubles from 256 bytes: at most twice what one block
	 * needs (it was 16 KiB here while each read reserved its block past
	 * the one the last read left in the buffer) */
	cr_assert_leq(cap_after_first, 2 * ((size_t)max_block + 8),
		      "a read buffer of %zu bytes for blocks of at most %u", cap_after_first,
		      max_block);
	part_scratch_free(&s);
	free(vals);
	free(present);
	part_close(p);
	tu_rmrf(dir);
	free(dir);
}

Test(part_reads, unknown_mode_is_refused)
{
	char *dir = tu_tmpdir();
	tally_options o = opts(3);
	tally_db *db = NULL;
	cr_assert_eq(tally_db_open(dir, &o, &db), TALLY_EINVAL);
	cr_assert_null(db);
	cr_assert(strstr(tally_errmsg(), "part_reads"), "%s", tally_errmsg());
	tu_rmrf(dir);
	free(dir);
}
