/*
 * test_catalog.c — the catalog API (tally_catalog_*): tables with their key
 * tags, columns with their types, and sorted, filtered, paged keys, checked
 * against a sorted model of what was written, also after a reopen (keys
 * then come from parts) and with writes of new keys between pages.
 */
#include <criterion/criterion.h>

#include "testutil.h"

#define T0 INT64_C(1700000000000000000)

static char *dir;
static tally_db *db;

static void setup(void)
{
	dir = tu_tmpdir();
	tally_options o = tu_quiet_opts();
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "open: %s", tally_errmsg());
}

static void teardown(void)
{
	tally_db_close(db);
	tu_rmrf(dir);
	free(dir);
}

static void put(const char *text)
{
	cr_assert_eq(tu_write_synced(db, text, strlen(text)) >= 0, 1, "write: %s", tally_errmsg());
}

TestSuite(catalog, .init = setup, .fini = teardown);

Test(catalog, tables_sorted_with_key_tags)
{
	size_t n;
	const char *names[4], *tags[4];
	cr_assert_eq(tally_catalog_tables(db, names, tags, 4, &n), 0);
	cr_assert_eq(n, 0);
	put("traffic,camera=KV1,lane=2 speed=80.5,plate=\"AB\" 1700000000000000000\n"
	    "air,station=S1 pm10=12i,ok=true 1700000000000000000\n"
	    "bare value=1u 1700000000000000000\n");
	cr_assert_eq(tally_catalog_tables(db, names, tags, 4, &n), 0, "%s", tally_errmsg());
	cr_assert_eq(n, 3);
	cr_assert_str_eq(names[0], "air");
	cr_assert_str_eq(tags[0], "station");
	cr_assert_str_eq(names[1], "bare");
	cr_assert_null(tags[1]);
	cr_assert_str_eq(names[2], "traffic");
	cr_assert_str_eq(tags[2], "camera");
	/* a short array: the first in order, and the count of all */
	cr_assert_eq(tally_catalog_tables(db, names, NULL, 2, &n), TALLY_ETRUNC);
	cr_assert_eq(n, 3);
	cr_assert_str_eq(names[1], "bare");
	const char *tag;
	cr_assert_eq(tally_catalog_key_tag(db, "traffic", &tag), 0);
	cr_assert_str_eq(tag, "camera");
	cr_assert_eq(tally_catalog_key_tag(db, "nope", &tag), TALLY_ENOTFOUND);
	cr_assert(strstr(tally_errmsg(), "nope"), "%s", tally_errmsg());
}

Test(catalog, fields_with_types)
{
	put("traffic,camera=KV1,lane=2 speed=80.5,plate=\"AB\",n=3i,u=4u,ok=t "
	    "1700000000000000000\n");
	const char *names[8];
	enum tally_type types[8];
	size_t n;
	cr_assert_eq(tally_catalog_fields(db, "traffic", names, types, 8, &n), 0, "%s",
		     tally_errmsg());
	cr_assert_eq(n, 6);
	const char *want[] = {"lane", "n", "ok", "plate", "speed", "u"};
	const char *wtype[] = {"tag", "integer", "boolean", "string", "float", "unsigned"};
	for (size_t i = 0; i < 6; i++) {
		cr_assert_str_eq(names[i], want[i]);
		cr_assert_str_eq(tally_type_name(types[i]), wtype[i], "%s", names[i]);
	}
	cr_assert_eq(tally_catalog_fields(db, "traffic", names, NULL, 1, &n), TALLY_ETRUNC);
	cr_assert_str_eq(names[0], "lane");
	cr_assert_eq(tally_catalog_fields(db, "nope", names, types, 8, &n), TALLY_ENOTFOUND);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* model[0..n) sorted: the matches of prefix past after */
static size_t model_page(char **model, size_t n, const char *prefix, const char *after, char **out)
{
	size_t m = 0;
	for (size_t i = 0; i < n; i++)
		if (!strncmp(model[i], prefix, strlen(prefix)) &&
		    (!after || strcmp(model[i], after) > 0))
			out[m++] = model[i];
	return m;
}

static void check_keys(char **model, size_t n, tu_rng *rng)
{
	static const char *prefixes[] = {"", "K", "KV1", "KV12", "X", "KV9999"};
	char **want = malloc(n * sizeof *want);
	const char **got = malloc((n + 1) * sizeof *got);
	for (int round = 0; round < 40; round++) {
		const char *prefix = prefixes[tu_below(rng, 6)];
		size_t cap = 1 + tu_below(rng, 40);
		/* page through every match: each exactly once, in order */
		const char *after = NULL;
		char last[64] = "";
		size_t seen = 0, all = model_page(model, n, prefix, NULL, want);
		for (;;) {
			size_t total;
			int rc = tally_catalog_keys(db, "traffic", prefix, after, got, cap, &total);
			cr_assert(rc == 0 || rc == TALLY_ETRUNC, "%s", tally_errmsg());
			cr_assert_eq(total, all - seen, "prefix '%s' after '%s'", prefix, last);
			cr_assert_eq(rc == TALLY_ETRUNC, total > cap);
			size_t page = total < cap ? total : cap;
			for (size_t i = 0; i < page; i++)
				cr_assert_str_eq(got[i], want[seen + i], "prefix '%s' #%zu", prefix,
						 seen + i);
			seen += page;
			if (!page || rc == 0)
				break;
			snprintf(last, sizeof last, "%s", got[page - 1]);
			after = last;
		}
		cr_assert_eq(seen, all);
	}
	free(want);
	free(got);
}

Test(catalog, keys_sorted_filtered_paged)
{
	tu_rng rng = {tu_seed("keys_sorted_filtered_paged")};
	size_t n = 0, cap = 3000;
	char **model = malloc(cap * sizeof *model);
	char *lp = malloc(cap * 64);
	size_t len = 0;
	for (size_t i = 0; i < 2000; i++) {
		char key[32];
		snprintf(key, sizeof key, "KV%llu", (unsigned long long)(tu_below(&rng, 5000)));
		int dup = 0;
		for (size_t j = 0; j < n && !dup; j++)
			dup = !strcmp(model[j], key);
		if (!dup)
			model[n++] = strdup(key);
		len += (size_t)sprintf(lp + len, "traffic,camera=%s speed=1 %lld\n", key,
				       (long long)(T0 + (int64_t)i));
	}
	put(lp);
	qsort(model, n, sizeof *model, cmp_str);
	check_keys(model, n, &rng);
	/* after a flush and reopen the keys come from the parts' indexes */
	cr_assert_eq(tally_db_flush(db), 0);
	tally_db_close(db);
	tally_options o = tu_quiet_opts();
	cr_assert_eq(tally_db_open(dir, &o, &db), 0, "%s", tally_errmsg());
	check_keys(model, n, &rng);
	size_t total;
	cr_assert_eq(tally_catalog_keys(db, "traffic", "zz", NULL, NULL, 0, &total), 0);
	cr_assert_eq(total, 0);
	cr_assert_eq(tally_catalog_keys(db, "traffic", NULL, NULL, NULL, 0, &total), TALLY_ETRUNC);
	cr_assert_eq(total, n);
	cr_assert_eq(tally_catalog_keys(db, "nope", NULL, NULL, NULL, 0, &total), TALLY_ENOTFOUND);
	for (size_t i = 0; i < n; i++)
		free(model[i]);
	free(model);
	free(lp);
}
