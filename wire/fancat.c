/*
 * fancat.c — the catalog as text rows (#!tables, #!keylist), the form a
 * node with `peers` asks of every node (fanout.c) to answer the union of
 * their catalogs: /api/v1/tables, /api/v1/fields and /api/v1/keys across
 * nodes (docs/cluster.md).
 *
 * The one idea: every row is a whole fact on its own (a table's column
 * with the table's key tag and the column's type; a key), so the union of
 * several nodes' catalogs is their rows sorted with equal rows once, and
 * no merge needs to know what the rows mean.
 */
#include "fancat.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CAT_TABLES_MAX 65536
#define CAT_COLS_MAX   4096
#define CAT_KEYS_PAGE  4096

/* A cell with the protocol's escapes (\\ \t \n \r), then sep. */
static void put_cell(FILE *f, const char *s, char sep)
{
	static const char pairs[] = "\\\\\tt\nn\rr"; /* a byte, then its escape's letter */
	for (; *s; s++) {
		const char *esc = strchr(pairs, *s);
		if (esc && (esc - pairs) % 2 == 0) {
			putc('\\', f);
			putc(esc[1], f);
		} else {
			putc(*s, f);
		}
	}
	putc(sep, f);
}

static int cat_tables(tally_db *db, FILE *f, size_t *rows)
{
	size_t n, nc;
	const char **names = malloc(CAT_TABLES_MAX * sizeof *names);
	const char **keys = malloc(CAT_TABLES_MAX * sizeof *keys);
	const char **cols = malloc(CAT_COLS_MAX * sizeof *cols);
	enum tally_type *types = malloc(CAT_COLS_MAX * sizeof *types);
	int rc = names && keys && cols && types
			 ? tally_catalog_tables(db, names, keys, CAT_TABLES_MAX, &n)
			 : -ENOMEM;
	if (rc == TALLY_ETRUNC)
		rc = 0, n = CAT_TABLES_MAX;
	if (!rc)
		fputs("table\tkey\tcolumn\ttype\n", f);
	for (size_t i = 0; !rc && i < n; i++) {
		int r = tally_catalog_fields(db, names[i], cols, types, CAT_COLS_MAX, &nc);
		if (r && r != TALLY_ETRUNC)
			continue; /* dropped meanwhile */
		if (nc > CAT_COLS_MAX)
			nc = CAT_COLS_MAX;
		for (size_t j = 0; j < nc; j++, (*rows)++) {
			put_cell(f, names[i], '\t');
			put_cell(f, keys[i] ? keys[i] : "", '\t');
			put_cell(f, cols[j], '\t');
			put_cell(f, tally_type_name(types[j]), '\n');
		}
	}
	free(names);
	free(keys);
	free(cols);
	free(types);
	return rc;
}

static int cat_keys(tally_db *db, const cmd_req *r, FILE *f, size_t *rows)
{
	const char **page = malloc(CAT_KEYS_PAGE * sizeof *page);
	const char *after = NULL;
	int rc = page ? 0 : -ENOMEM;
	size_t total = 0;
	for (int first = 1; !rc; first = 0) {
		rc = tally_catalog_keys(db, r->table, r->key ? r->key : "", after, page,
					CAT_KEYS_PAGE, &total);
		if (rc && rc != TALLY_ETRUNC)
			break;
		if (first) /* rows of two cells: a fan-out's rows and header hold a tab */
			fputs("table\tkey\n", f);
		size_t k = total < CAT_KEYS_PAGE ? total : CAT_KEYS_PAGE;
		for (size_t i = 0; i < k; i++, (*rows)++) {
			put_cell(f, r->table, '\t');
			put_cell(f, page[i], '\n');
		}
		if (rc == 0 || !k)
			break; /* the last page */
		after = page[k - 1];
		rc = 0;
	}
	free(page);
	return rc == TALLY_ETRUNC ? 0 : rc;
}

int cat_reply(tally_db *db, const cmd_req *r, char **text, size_t *len)
{
	char *p = NULL;
	size_t n = 0, rows = 0;
	FILE *f = open_memstream(&p, &n);
	if (!f)
		return -ENOMEM;
	int rc = r->kind == CMD_TABLES ? cat_tables(db, f, &rows) : cat_keys(db, r, f, &rows);
	fprintf(f, "END %zu\n", rows);
	if (fclose(f) && !rc)
		rc = -ENOMEM;
	if (rc) {
		free(p);
		return rc;
	}
	*text = p;
	*len = n;
	return 0;
}
