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

typedef struct cbuf {
	char *p;
	size_t n, cap, rows;
	int oom;
} cbuf;

static char *cb_room(cbuf *b, size_t n)
{
	if (b->oom)
		return NULL;
	if (b->n + n + 1 > b->cap) {
		size_t c = b->cap ? b->cap * 2 : 4096;
		while (c < b->n + n + 1)
			c *= 2;
		char *q = realloc(b->p, c);
		if (!q) {
			b->oom = 1;
			return NULL;
		}
		b->p = q;
		b->cap = c;
	}
	return b->p + b->n;
}

static void cb_put(cbuf *b, const char *s, size_t n)
{
	char *o = cb_room(b, n);
	if (o) {
		memcpy(o, s, n);
		b->n += n;
	}
}

/* A cell with the protocol's escapes (\\ \t \n \r), then sep. */
static void cb_cell(cbuf *b, const char *s, char sep)
{
	size_t n = strlen(s);
	char *o = cb_room(b, 2 * n + 1);
	if (!o)
		return;
	static const char pairs[] = "\\\\\tt\nn\rr"; /* a byte, then its escape's letter */
	for (size_t i = 0; i < n; i++) {
		const char *esc = s[i] ? strchr(pairs, s[i]) : NULL;
		if (esc && (esc - pairs) % 2 == 0) {
			*o++ = '\\';
			*o++ = esc[1];
		} else {
			*o++ = s[i];
		}
	}
	*o++ = sep;
	b->n = (size_t)(o - b->p);
}

static int cat_tables(tally_db *db, cbuf *b)
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
		cb_put(b, "table\tkey\tcolumn\ttype\n", 22);
	for (size_t i = 0; !rc && i < n; i++) {
		int r = tally_catalog_fields(db, names[i], cols, types, CAT_COLS_MAX, &nc);
		if (r && r != TALLY_ETRUNC)
			continue; /* dropped meanwhile */
		if (nc > CAT_COLS_MAX)
			nc = CAT_COLS_MAX;
		for (size_t j = 0; j < nc; j++, b->rows++) {
			cb_cell(b, names[i], '\t');
			cb_cell(b, keys[i] ? keys[i] : "", '\t');
			cb_cell(b, cols[j], '\t');
			cb_cell(b, tally_type_name(types[j]), '\n');
		}
	}
	free(names);
	free(keys);
	free(cols);
	free(types);
	return rc;
}

static int cat_keys(tally_db *db, const cmd_req *r, cbuf *b)
{
	const char **page = malloc(CAT_KEYS_PAGE * sizeof *page);
	const char *after = NULL;
	int rc = page ? 0 : -ENOMEM;
	size_t total = 0;
	for (int first = 1; !rc && !b->oom; first = 0) {
		rc = tally_catalog_keys(db, r->table, r->key ? r->key : "", after, page,
					CAT_KEYS_PAGE, &total);
		if (rc && rc != TALLY_ETRUNC)
			break;
		if (first) /* rows of two cells: a fan-out's rows and header hold a tab */
			cb_put(b, "table\tkey\n", 10);
		size_t k = total < CAT_KEYS_PAGE ? total : CAT_KEYS_PAGE;
		for (size_t i = 0; i < k; i++, b->rows++) {
			cb_cell(b, r->table, '\t');
			cb_cell(b, page[i], '\n');
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
	cbuf b = {0};
	int rc = r->kind == CMD_TABLES ? cat_tables(db, &b) : cat_keys(db, r, &b);
	char end[48];
	int k = snprintf(end, sizeof end, "END %zu\n", b.rows);
	if (!rc)
		cb_put(&b, end, (size_t)k);
	if (!rc && b.oom)
		rc = -ENOMEM;
	if (rc) {
		free(b.p);
		return rc;
	}
	*text = b.p;
	*len = b.n;
	return 0;
}
