/*
 * tagkey.c — series keyed by one tag, several tags or all tags.
 *
 * The one idea: whatever the table's key, a series is still named by one
 * byte string. Several tags become their "name=value" pairs in one
 * canonical order (sorted by name, escaped), so everything below the
 * write path (memtables, parts, the WAL, the key set) is unchanged, and a
 * table keyed by one tag keeps the very keys it always had. Subset and
 * grouped queries read the pairs back out of the string.
 */
#include "tagkey.h"

#include <errno.h>
#include <string.h>

#include "err.h"
#include "mem.h"

void tkbuf_free(tkbuf *b)
{
	mem_free(b->p);
	memset(b, 0, sizeof *b);
}

static int tk_put(tkbuf *b, const char *s, uint32_t n)
{
	if (b->n + (uint64_t)n > TAGKEY_MAX_BYTES)
		return err_set(TALLY_EINVAL, "key longer than %d bytes", TAGKEY_MAX_BYTES);
	if (b->n + n + 1 > b->cap) {
		uint32_t cap = b->cap ? b->cap : 64;
		while (cap < b->n + n + 1)
			cap *= 2;
		char *p = mem_realloc(b->p, cap);
		if (!p)
			return err_set(-ENOMEM, "out of memory building a key");
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->n, s, n);
	b->n += n;
	b->p[b->n] = 0;
	return 0;
}

/* Empties b, keeping its memory; its bytes read "" until the next put. */
static void tk_reset(tkbuf *b)
{
	b->n = 0;
	if (b->p)
		b->p[0] = 0;
}

static int tk_special(char c)
{
	return c == '\\' || c == ',' || c == '=';
}

/* Appends s[0, n) with '\', ',' and '=' escaped. */
static int tk_put_esc(tkbuf *b, const char *s, uint32_t n)
{
	uint32_t run = 0;
	for (uint32_t i = 0; i < n; i++) {
		if (!tk_special(s[i]))
			continue;
		int rc = tk_put(b, s + run, i - run);
		if (!rc)
			rc = tk_put(b, "\\", 1);
		if (rc)
			return rc;
		run = i;
	}
	return tk_put(b, s + run, n - run);
}

/* Appends ",name=value" (no comma first), both escaped. */
static int tk_put_pair(tkbuf *b, const char *name, uint32_t nl, const char *value, uint32_t vl)
{
	int rc = 0;
	if (b->n)
		rc = tk_put(b, ",", 1);
	if (!rc)
		rc = tk_put_esc(b, name, nl);
	if (!rc)
		rc = tk_put(b, "=", 1);
	if (!rc)
		rc = tk_put_esc(b, value, vl);
	return rc;
}

/* Bytewise order of names, shorter first on a tie: the keys' pair order. */
static int name_cmp(const char *a, uint32_t al, const char *b, uint32_t bl)
{
	int c = memcmp(a, b, al < bl ? al : bl);
	return c ? c : (al > bl) - (al < bl);
}

/* ---------------------------------------------------------------- specs */

static void sort_names(const char **v, uint32_t *l, uint32_t n)
{
	for (uint32_t i = 1; i < n; i++)
		for (uint32_t j = i; j > 0 && name_cmp(v[j - 1], l[j - 1], v[j], l[j]) > 0; j--) {
			const char *x = v[j];
			uint32_t y = l[j];
			v[j] = v[j - 1];
			l[j] = l[j - 1];
			v[j - 1] = x;
			l[j - 1] = y;
		}
}

#define SPEC_TAGS_MAX 64 /* tags a configured key may list */

int tagkey_conf_spec(const char *table, const char *conf, char **spec)
{
	*spec = NULL;
	size_t n = strlen(conf);
	if (!strcmp(conf, "*")) {
		*spec = mem_strndup("\xff*", 2);
		return *spec ? 0 : err_set(-ENOMEM, "out of memory");
	}
	const char *v[SPEC_TAGS_MAX];
	uint32_t l[SPEC_TAGS_MAX], k = 0;
	for (const char *p = conf;;) {
		const char *plus = strchr(p, '+');
		uint32_t len = (uint32_t)(plus ? (size_t)(plus - p) : strlen(p));
		if (len == 0 || (len == 1 && *p == '*'))
			return err_set(
				TALLY_EINVAL,
				"table_keys: table '%s': '%s' is not a tag, tags joined by '+' "
				"or '*'",
				table, conf);
		if (k == SPEC_TAGS_MAX)
			return err_set(TALLY_EINVAL,
				       "table_keys: table '%s': more than %d key tags", table,
				       SPEC_TAGS_MAX);
		v[k] = p;
		l[k++] = len;
		if (!plus)
			break;
		p = plus + 1;
	}
	sort_names(v, l, k);
	for (uint32_t i = 1; i < k; i++)
		if (!name_cmp(v[i - 1], l[i - 1], v[i], l[i]))
			return err_set(TALLY_EINVAL,
				       "table_keys: table '%s': tag '%.*s' named twice", table,
				       (int)l[i], v[i]);
	if (k == 1) {
		*spec = mem_strndup(conf, n);
		return *spec ? 0 : err_set(-ENOMEM, "out of memory");
	}
	char *s = mem_alloc(n + 2), *w = s;
	if (!s)
		return err_set(-ENOMEM, "out of memory");
	for (uint32_t i = 0; i < k; i++) {
		*w++ = KEY_SPEC_MARK;
		memcpy(w, v[i], l[i]);
		w += l[i];
	}
	*w = 0;
	*spec = s;
	return 0;
}

void tagkey_table_free(table_def *t)
{
	if (t->key_mode == KEY_LIST)
		for (uint32_t i = 0; i < t->n_ktags; i++)
			mem_free(t->ktags[i]);
	mem_free(t->ktags);
	mem_free(t->ktag_len);
	if (t->key_spec != t->key_tag)
		mem_free(t->key_spec);
	mem_free(t->key_tag);
	t->ktags = NULL;
	t->ktag_len = NULL;
	t->key_spec = t->key_tag = NULL;
}

int tagkey_table_init(table_def *t, const char *spec, uint32_t len)
{
	t->key_mode = KEY_NONE;
	if (!spec)
		return 0;
	if (len == 0 || spec[0] != KEY_SPEC_MARK) {
		t->key_mode = KEY_ONE;
		t->key_spec = t->key_tag = mem_strndup(spec, len);
		t->ktags = mem_alloc(sizeof *t->ktags);
		t->ktag_len = mem_alloc(sizeof *t->ktag_len);
		if (!t->key_tag || !t->ktags || !t->ktag_len)
			goto nomem;
		t->key_len = t->key_spec_len = t->ktag_len[0] = len;
		t->ktags[0] = t->key_tag;
		t->n_ktags = 1;
		return 0;
	}
	t->key_spec = mem_strndup(spec, len);
	if (!t->key_spec)
		goto nomem;
	t->key_spec_len = len;
	if (len == 2 && spec[1] == '*') {
		t->key_mode = KEY_ALL;
		if (!(t->key_tag = mem_strndup("*", 1)))
			goto nomem;
		t->key_len = 1;
		return 0;
	}
	uint32_t k = 0;
	for (uint32_t i = 0; i < len; i++)
		k += spec[i] == KEY_SPEC_MARK;
	t->ktags = mem_calloc(k, sizeof *t->ktags);
	t->ktag_len = mem_calloc(k, sizeof *t->ktag_len);
	t->key_tag = mem_alloc(len);
	if (!t->ktags || !t->ktag_len || !t->key_tag)
		goto nomem;
	t->key_mode = KEY_LIST;
	for (uint32_t i = 1, s = 1; i <= len; i++) {
		if (i < len && spec[i] != KEY_SPEC_MARK)
			continue;
		uint32_t n = i - s;
		if (n == 0 ||
		    (t->n_ktags && name_cmp(t->ktags[t->n_ktags - 1], t->ktag_len[t->n_ktags - 1],
					    spec + s, n) >= 0))
			return err_set(TALLY_ECORRUPT, "table '%s': malformed key spec", t->name);
		if (!(t->ktags[t->n_ktags] = mem_strndup(spec + s, n)))
			goto nomem;
		t->ktag_len[t->n_ktags++] = n;
		s = i + 1;
	}
	if (t->n_ktags < 2)
		return err_set(TALLY_ECORRUPT, "table '%s': malformed key spec", t->name);
	/* shown as the config spells it: camera+lane */
	char *w = t->key_tag;
	for (uint32_t i = 0; i < t->n_ktags; i++) {
		if (i)
			*w++ = '+';
		memcpy(w, t->ktags[i], t->ktag_len[i]);
		w += t->ktag_len[i];
	}
	*w = 0;
	t->key_len = (uint32_t)(w - t->key_tag);
	return 0;
nomem:
	return err_set(-ENOMEM, "out of memory creating table");
}

/* ---------------------------------------------------------------- ingest */

int tagkey_build(const table_def *t, const lp_tag *tags, uint32_t n, uint8_t *in_key, tkbuf *out)
{
	int rc = 0;
	tk_reset(out);
	if (t->key_mode == KEY_LIST) {
		for (uint32_t k = 0; k < t->n_ktags && !rc; k++) {
			uint32_t i = 0;
			while (i < n && (tags[i].key.n != t->ktag_len[k] ||
					 memcmp(tags[i].key.p, t->ktags[k], t->ktag_len[k])))
				i++;
			if (i == n)
				return err_set(TALLY_EINVAL, "missing key tag '%s' of table '%s'",
					       t->ktags[k], t->name);
			in_key[i] = 1;
			rc = tk_put_pair(out, tags[i].key.p, tags[i].key.n, tags[i].value.p,
					 tags[i].value.n);
		}
	} else {
		/* every tag, in name order: a short insertion sort of indexes */
		uint16_t ix[LP_TAGS_MAX];
		for (uint32_t i = 0; i < n; i++) {
			uint32_t j = i;
			for (; j > 0 && name_cmp(tags[ix[j - 1]].key.p, tags[ix[j - 1]].key.n,
						 tags[i].key.p, tags[i].key.n) > 0;
			     j--)
				ix[j] = ix[j - 1];
			ix[j] = (uint16_t)i;
			in_key[i] = 1;
		}
		for (uint32_t i = 0; i < n && !rc; i++)
			rc = tk_put_pair(out, tags[ix[i]].key.p, tags[ix[i]].key.n,
					 tags[ix[i]].value.p, tags[ix[i]].value.n);
	}
	if (!rc && !out->p)
		rc = tk_put(out, "", 0); /* an empty key still has its bytes */
	return rc ? err_prefix(rc, "table '%s'", t->name) : 0;
}

/* ---------------------------------------------------------------- reading keys */

/* The next "name=value" pair of an escaped key at *p (before end): its
 * escaped name and value. 0 at the end. */
static int next_pair(const char **p, const char *end, tkpair *out)
{
	const char *s = *p;
	if (s >= end)
		return 0;
	const char *eq = NULL, *q = s;
	for (; q < end && *q != ','; q++) {
		if (*q == '\\' && q + 1 < end)
			q++;
		else if (*q == '=' && !eq)
			eq = q;
	}
	if (!eq)
		eq = q;
	out->name = s;
	out->nl = (uint32_t)(eq - s);
	out->value = eq < q ? eq + 1 : q;
	out->vl = (uint32_t)(q - out->value);
	*p = q < end ? q + 1 : q;
	return 1;
}

/* 1 when the escaped esc[0, en) reads raw[0, rn). */
static int esc_eq(const char *esc, uint32_t en, const char *raw, uint32_t rn)
{
	uint32_t j = 0;
	for (uint32_t i = 0; i < en; i++, j++) {
		if (esc[i] == '\\' && i + 1 < en)
			i++;
		if (j >= rn || esc[i] != raw[j])
			return 0;
	}
	return j == rn;
}

/* The escaped value of tag name (raw) in key, or NULL. */
static const char *key_value(const char *key, uint32_t len, const char *name, uint32_t nl,
			     uint32_t *vl)
{
	const char *p = key, *end = key + len;
	tkpair kp;
	while (next_pair(&p, end, &kp))
		if (esc_eq(kp.name, kp.nl, name, nl)) {
			*vl = kp.vl;
			return kp.value;
		}
	return NULL;
}

int tagkey_value(const char *key, uint32_t len, const char *name, tkbuf *out)
{
	uint32_t vl;
	const char *v = key_value(key, len, name, (uint32_t)strlen(name), &vl);
	tk_reset(out);
	int rc = tk_put(out, "", 0);
	for (uint32_t i = 0; v && i < vl && !rc; i++) {
		if (v[i] == '\\' && i + 1 < vl)
			i++;
		rc = tk_put(out, v + i, 1);
	}
	return rc ? rc : v != NULL;
}

/* ---------------------------------------------------------------- filters */

/* Splits text on unescaped ',' into items, each unescaped into buf; with
 * values (filters) each item splits at its first unescaped '='. */
static int parse_items(const char *what, const char *text, int values, tkpair **kv, uint32_t *n,
		       char **buf)
{
	size_t len = strlen(text);
	*n = 0;
	*kv = NULL;
	*buf = mem_alloc(len + 1);
	uint32_t cap = 1;
	for (size_t i = 0; i < len; i++)
		cap += text[i] == ',';
	*kv = mem_calloc(cap, sizeof **kv);
	if (!*buf || !*kv)
		return err_set(-ENOMEM, "out of memory");
	if (!len)
		return 0;
	char *w = *buf;
	tkpair *cur = &(*kv)[0];
	cur->name = w;
	int in_value = 0;
	for (size_t i = 0; i <= len; i++) {
		char c = i < len ? text[i] : ',';
		if (c == '\\' && i + 1 < len) {
			*w++ = text[++i];
			continue;
		}
		if (c == '=' && values && !in_value) {
			cur->nl = (uint32_t)(w - cur->name);
			cur->value = w;
			in_value = 1;
			continue;
		}
		if (c != ',') {
			*w++ = c;
			continue;
		}
		if (values && in_value)
			cur->vl = (uint32_t)(w - cur->value);
		else
			cur->nl = (uint32_t)(w - cur->name);
		if (!cur->nl || (values && (!in_value || !cur->vl)))
			return err_set(TALLY_EINVAL,
				       "%s '%s': item %u is not %s (escape ',' '=' '\\' with '\\')",
				       what, text, *n + 1, values ? "tag=value" : "a tag name");
		for (uint32_t k = 0; k < *n; k++)
			if ((*kv)[k].nl == cur->nl && !memcmp((*kv)[k].name, cur->name, cur->nl))
				return err_set(TALLY_EINVAL, "%s '%s': tag '%.*s' named twice",
					       what, text, (int)cur->nl, cur->name);
		if (++*n == cap)
			break; /* the last item: cap counted every ',' */
		cur = &(*kv)[*n];
		cur->name = w;
		in_value = 0;
	}
	return 0;
}

/* Index of tag name in t's key tags, -1 when it is not one. */
static int key_tag_index(const table_def *t, const char *name, uint32_t nl)
{
	for (uint32_t i = 0; i < t->n_ktags; i++)
		if (t->ktag_len[i] == nl && !memcmp(t->ktags[i], name, nl))
			return (int)i;
	return -1;
}

/* TALLY_EINVAL unless every name of kv is one of a KEY_ONE or KEY_LIST
 * table's key tags (KEY_ALL: any tag; KEY_NONE: none). */
static int check_names(const table_def *t, const char *what, const tkpair *kv, uint32_t n)
{
	for (uint32_t i = 0; i < n && t->key_mode != KEY_ALL; i++)
		if (key_tag_index(t, kv[i].name, kv[i].nl) < 0)
			return err_set(TALLY_EINVAL,
				       "%s: tag '%.*s' is not in table '%s''s key (%s)", what,
				       (int)kv[i].nl, kv[i].name, t->name,
				       t->key_tag ? t->key_tag : "no key tag");
	return 0;
}

static int has_unescaped_eq(const char *s)
{
	for (; *s; s++) {
		if (*s == '\\' && s[1])
			s++;
		else if (*s == '=')
			return 1;
	}
	return 0;
}

/* A key as it is stored, when text names one: a table keyed by one tag
 * (or none) takes a bare value as before, also one holding a '=' when
 * the table has such a key. */
static int one_key(table_def *t, const char *text)
{
	if (t->key_mode != KEY_ONE && t->key_mode != KEY_NONE)
		return 0;
	if (!has_unescaped_eq(text))
		return 1;
	uint32_t len = (uint32_t)strlen(text);
	pthread_mutex_lock(&t->keys_mu);
	int known = strmap_get(&t->keys, text, len, strmap_hash(text, len)) != NULL;
	pthread_mutex_unlock(&t->keys_mu);
	return known;
}

int tagkey_filter(const table_def *t, const char *text, tkfilter *f)
{
	memset(f, 0, sizeof *f);
	int rc;
	if (one_key((table_def *)t, text)) {
		f->exact = 1;
		return tk_put(&f->key, text, (uint32_t)strlen(text));
	}
	if ((rc = parse_items("key", text, 1, &f->kv, &f->n, &f->buf)) ||
	    (rc = check_names(t, "key", f->kv, f->n)))
		return rc;
	if (t->key_mode == KEY_NONE ||
	    (f->n == t->n_ktags && (t->key_mode == KEY_ONE || t->key_mode == KEY_LIST))) {
		/* every key tag named: one key, built as the write path does */
		f->exact = 1;
		if (t->key_mode == KEY_ONE)
			return tk_put(&f->key, f->kv[0].value, f->kv[0].vl);
		rc = tk_put(&f->key, "", 0);
		for (uint32_t k = 0; k < t->n_ktags && !rc; k++)
			for (uint32_t i = 0; i < f->n && !rc; i++)
				if (f->kv[i].nl == t->ktag_len[k] &&
				    !memcmp(f->kv[i].name, t->ktags[k], f->kv[i].nl))
					rc = tk_put_pair(&f->key, f->kv[i].name, f->kv[i].nl,
							 f->kv[i].value, f->kv[i].vl);
	}
	return rc;
}

void tagkey_filter_free(tkfilter *f)
{
	mem_free(f->kv);
	mem_free(f->buf);
	tkbuf_free(&f->key);
	memset(f, 0, sizeof *f);
}

int tagkey_match(const table_def *t, const char *key, uint32_t len, const tkfilter *f)
{
	if (f->exact)
		return len == f->key.n && !memcmp(key, f->key.p, len);
	for (uint32_t i = 0; i < f->n; i++) {
		const char *v;
		uint32_t vl;
		if (t->key_mode == KEY_ONE) {
			v = key;
			vl = len;
			if (vl != f->kv[i].vl || memcmp(v, f->kv[i].value, vl))
				return 0;
			continue;
		}
		if (!(v = key_value(key, len, f->kv[i].name, f->kv[i].nl, &vl)) ||
		    !esc_eq(v, vl, f->kv[i].value, f->kv[i].vl))
			return 0;
	}
	return 1;
}

int tagkey_canon(const table_def *t, const char *text, tkbuf *out)
{
	tkpair *kv;
	uint32_t n;
	char *buf;
	tk_reset(out);
	int rc = parse_items("key", text, 1, &kv, &n, &buf);
	if (!rc)
		rc = check_names(t, "key", kv, n);
	if (!rc && t->key_mode == KEY_LIST && n != t->n_ktags)
		rc = err_set(TALLY_EINVAL, "key '%s' of table '%s' must name every key tag (%s)",
			     text, t->name, t->key_tag);
	for (uint32_t i = 1; !rc && i < n; i++) /* into name order */
		for (uint32_t j = i;
		     j > 0 && name_cmp(kv[j - 1].name, kv[j - 1].nl, kv[j].name, kv[j].nl) > 0;
		     j--) {
			tkpair x = kv[j];
			kv[j] = kv[j - 1];
			kv[j - 1] = x;
		}
	for (uint32_t i = 0; !rc && i < n; i++)
		rc = tk_put_pair(out, kv[i].name, kv[i].nl, kv[i].value, kv[i].vl);
	if (!rc && !out->p)
		rc = tk_put(out, "", 0);
	mem_free(kv);
	mem_free(buf);
	return rc;
}

/* ---------------------------------------------------------------- keys asked */

/* The stored keys a query's key text names (tagkey.h): the one key it
 * names whole, or every key of the table holding its pairs, found in the
 * table's key set (whose copies live until close). A subset costs one
 * pass over the set; the matching keys' partial rollups merge exactly. */
void tkkeys_free(tkkeys *q)
{
	if (q->k != q->one) {
		mem_free(q->k);
		mem_free(q->l);
	}
	tagkey_filter_free(&q->f);
	memset(q, 0, sizeof *q);
}

int tkkeys_resolve(table_def *t, const char *text, tkkeys *q)
{
	memset(q, 0, sizeof *q);
	if (!text)
		return err_set(TALLY_EINVAL, "key is required");
	int rc = tagkey_filter(t, text, &q->f);
	if (rc)
		return rc;
	if (q->f.exact) {
		q->one[0] = q->f.key.p;
		q->one_len[0] = q->f.key.n;
		q->k = q->one;
		q->l = q->one_len;
		q->n = 1;
		return 0;
	}
	pthread_mutex_lock(&t->keys_mu);
	uint32_t cap = t->keys.n ? t->keys.n : 1;
	q->k = mem_alloc(cap * sizeof *q->k);
	q->l = mem_alloc(cap * sizeof *q->l);
	if (q->k && q->l)
		for (uint32_t i = 0; i < t->keys.cap; i++) {
			const strmap_slot *sl = &t->keys.slots[i];
			if (sl->key && tagkey_match(t, sl->key, sl->len, &q->f)) {
				q->k[q->n] = sl->key;
				q->l[q->n++] = sl->len;
			}
		}
	pthread_mutex_unlock(&t->keys_mu);
	if (!q->k || !q->l) {
		tkkeys_free(q);
		return err_set(-ENOMEM, "out of memory");
	}
	return 0;
}

/* ---------------------------------------------------------------- groups */

int tagkey_group(const table_def *t, const char *text, tkgroup *g)
{
	memset(g, 0, sizeof *g);
	int rc = parse_items("group", text ? text : "", 0, &g->by, &g->n, &g->buf);
	return rc ? rc : check_names(t, "group", g->by, g->n);
}

void tagkey_group_free(tkgroup *g)
{
	mem_free(g->by);
	mem_free(g->buf);
	memset(g, 0, sizeof *g);
}

int tagkey_group_key(const table_def *t, const char *key, uint32_t len, const tkgroup *g,
		     tkbuf *out)
{
	int rc = 0;
	tk_reset(out);
	for (uint32_t i = 0; i < g->n && !rc; i++) {
		const tkpair *b = &g->by[i];
		if (out->n)
			rc = tk_put(out, ",", 1);
		if (!rc)
			rc = tk_put_esc(out, b->name, b->nl);
		if (!rc)
			rc = tk_put(out, "=", 1);
		if (rc)
			break;
		if (t->key_mode == KEY_ONE) {
			rc = tk_put_esc(out, key, len); /* the one tag: check_names saw to it */
			continue;
		}
		uint32_t vl;
		const char *v = key_value(key, len, b->name, b->nl, &vl);
		if (v) /* already escaped */
			rc = tk_put(out, v, vl);
	}
	if (!rc && !out->p)
		rc = tk_put(out, "", 0);
	return rc;
}
