/*
 * ingest.c — the part tallyd's stream subscribers (Kafka, MQTT) share:
 * payloads made line protocol, the message key as a tag, rate-limited
 * warnings, and waiting for durability (ingest.h).
 *
 * A message is let go (its offset committed, its PUBACK sent) only after
 * a sync ticket taken after its write is served: a ticket, not a sync of
 * its own, so one group commit covers every subscriber and connection
 * that wrote meanwhile.
 *
 * The one idea of the key-tag pass: it edits line protocol without parsing
 * it, by the structural rules alone (where a name, a tag set, a quoted
 * string and a record end: the parser's own, engine/lp.c), and it never
 * changes how many physical lines there are: a tag is inserted inside its
 * line, and a refused record is replaced by as many newlines as it
 * spanned. So every line number the store reports afterwards is still the
 * payload's own, and a refused line is named where the producer put it.
 */
#include "ingest.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server.h"

int ingest_open(ingest *g, srv *s, const ingest_spec *spec)
{
	memset(g, 0, sizeof *g);
	g->s = s;
	snprintf(g->who, sizeof g->who, "%s", spec->who);
	g->log_burst = spec->log_burst ? spec->log_burst : 1;
	g->log_period_ns = spec->log_period_ns;
	const char *fmt = spec->format ? spec->format : "lp";
	if (!strcmp(fmt, "json")) {
		g->json = 1;
	} else if (strcmp(fmt, "lp") && strcmp(fmt, "line-protocol")) {
		srv_log(s, TALLY_LOG_ERROR, "%s-format '%s': json or lp", g->who, fmt);
		return -EINVAL;
	}
	if (g->json) {
		const char *t = spec->table ? spec->table : "traffic";
		if (!(g->map = jsonev_maps_find(s->json_maps, t, strlen(t)))) {
			srv_log(s, TALLY_LOG_ERROR,
				"%s '%s': no json-map for this table (docs/json-events.md)",
				spec->table_setting, t);
			return -EINVAL;
		}
	}
	if (spec->key_tag) {
		g->key_tag = spec->key_tag;
		g->key_tag_n = strlen(spec->key_tag);
		const char *mk = g->json ? jsonev_map_key_tag(g->map) : NULL;
		if (!g->key_tag_n || g->key_tag_n > JSONEV_NAME_MAX ||
		    strcspn(g->key_tag, "\n\r\t\\\"") != g->key_tag_n) {
			srv_log(s, TALLY_LOG_ERROR,
				"%s '%s': not a tag name (1 to 255 bytes, no control bytes, "
				"backslash or quote)",
				spec->key_setting, g->key_tag);
			return -EINVAL;
		}
		/* JSON events name their key member in the json-map: the
		 * message key can only stand for that one */
		if (g->json && (!mk || strcmp(mk, g->key_tag))) {
			srv_log(s, TALLY_LOG_ERROR,
				"%s '%s': with JSON events it must be the key tag of the "
				"json-map of '%s', which is '%s'",
				spec->key_setting, g->key_tag, jsonev_map_table(g->map),
				mk ? mk : "(none)");
			return -EINVAL;
		}
	}
	int rc = tally_writer_open(s->db, -1, &g->w);
	if (!rc && g->json)
		rc = jsonev_dec_new(NULL, &g->dec);
	return rc;
}

void ingest_close(ingest *g)
{
	if (g->w)
		tally_writer_close(g->w);
	jsonev_dec_free(g->dec);
	free(g->kt);
	g->w = NULL;
	g->dec = NULL;
	g->kt = NULL;
}

/* ---------------------------------------------------------------- the key tag */

/* Line protocol's escapes in names and tag values: a backslash before one
 * of these stands for it; before anything else it stands for itself. */
static int esc_byte(char c)
{
	return c == ',' || c == '=' || c == ' ';
}

/* Scans a name or tag value from p to the first unescaped byte of stop
 * (or a newline, or e). */
static const char *scan_to(const char *p, const char *e, const char *stop)
{
	while (p < e && *p != '\n' && !strchr(stop, *p))
		p += (*p == '\\' && p + 1 < e && esc_byte(p[1])) ? 2 : 1;
	return p;
}

/* Whether the escaped [s, t) reads as raw[0, n). */
static int same_unescaped(const char *s, const char *t, const char *raw, size_t n)
{
	size_t i = 0;
	while (s < t) {
		if (*s == '\\' && s + 1 < t && esc_byte(s[1]))
			s++;
		if (i == n || *s++ != raw[i++])
			return 0;
	}
	return i == n;
}

/* Writes raw[0, n) escaped as a tag key or value at d; its length. */
static size_t put_escaped(char *d, const char *raw, size_t n)
{
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		if (esc_byte(raw[i]))
			d[o++] = '\\';
		d[o++] = raw[i];
	}
	return o;
}

/* Where the record at p ends: at its terminating newline (or e), found by
 * the parser's own structural rules (engine/lp.c, resync): the tag
 * section ends at an unescaped space, a field key at '=', ',' or ' ', a
 * quoted value at an unescaped '"', and a newline escaped by a backslash
 * inside it does not end the record; *nl counts those. */
static const char *record_end(const char *p, const char *e, uint64_t *nl)
{
	*nl = 0;
	while (p < e && *p != '\n' && *p != ' ')
		p += (*p == '\\' && p + 1 < e && p[1] == ' ') ? 2 : 1;
	while (p < e && (*p == ' ' || *p == '\t'))
		p++;
	for (;;) { /* at a field key */
		while (p < e && *p != '\n' && *p != '=' && *p != ',' && *p != ' ')
			p += (*p == '\\' && p + 1 < e && esc_byte(p[1])) ? 2 : 1;
		if (p < e && *p == ',') {
			p++;
			continue;
		}
		if (p == e || *p != '=')
			break; /* the timestamp's space, or the end */
		if (++p < e && *p == '"') {
			for (p++; p < e && *p != '\n' && *p != '"'; p++) {
				if (*p != '\\')
					continue;
				if (p + 1 < e && (p[1] == '"' || p[1] == '\\' || p[1] == '\n')) {
					*nl += p[1] == '\n';
					p++;
				} else if (p + 2 < e && p[1] == '\r' && p[2] == '\n') {
					++*nl;
					p += 2;
				}
			}
			if (p < e && *p == '"')
				p++;
		}
		while (p < e && *p != '\n' && *p != ',' && *p != ' ' && *p != '\t')
			p++;
		if (p == e || *p != ',')
			break;
		p++;
	}
	const char *end = memchr(p, '\n', (size_t)(e - p));
	return end ? end : e;
}

static int kt_reserve(ingest *g, size_t need)
{
	if (need <= g->kt_cap)
		return 0;
	size_t cap = g->kt_cap ? g->kt_cap : 1 << 16;
	while (cap < need)
		cap *= 2;
	char *b = realloc(g->kt, cap);
	if (!b)
		return -ENOMEM;
	g->kt = b;
	g->kt_cap = cap;
	return 0;
}

/* Quotes raw[0, n) for a log line: at most 64 bytes, control bytes as '?'. */
static void quote_short(char *d, size_t cap, const char *raw, size_t n)
{
	size_t o = 0;
	for (size_t i = 0; i < n && o + 4 < cap && i < 64; i++)
		d[o++] = (unsigned char)raw[i] < 0x20 ? '?' : raw[i];
	if (n > 64 && o + 4 < cap) {
		memcpy(d + o, "...", 3);
		o += 3;
	}
	d[o] = 0;
}

static void kt_why(ingest *g, ingest_text *t, uint64_t line, const char *val, size_t vn,
		   const char *key, size_t kn)
{
	if (t->why[0])
		return;
	char v[80], k[80];
	quote_short(v, sizeof v, val, vn);
	quote_short(k, sizeof k, key, kn);
	snprintf(t->why, sizeof t->why,
		 "%s %" PRIu64 " of the message: tag '%s' is '%s', not its key '%s'",
		 g->json ? "event" : "line", ingest_event_of_line(g, t, line), g->key_tag, v, k);
}

/* The key-tag pass over t->lp (see ingest_decode). */
static int kt_pass(ingest *g, ingest_text *t, const char *key, size_t kn)
{
	const char *p = t->lp, *e = t->lp + t->len;
	/* at most one ",tag=key" per record, and records <= lines + 1 */
	size_t add = 2 + 2 * g->key_tag_n + 2 * kn;
	if (kt_reserve(g, t->len + (t->lines + 1) * add))
		return -ENOMEM;
	char *o = g->kt;
	char insert[2 + 2 * JSONEV_NAME_MAX + 2 * INGEST_KEY_MAX];
	size_t ins_n = 0;
	insert[ins_n++] = ',';
	ins_n += put_escaped(insert + ins_n, g->key_tag, g->key_tag_n);
	insert[ins_n++] = '=';
	ins_n += put_escaped(insert + ins_n, key, kn);
	uint64_t line = 1;
	while (p < e) {
		const char *r = p, *q = p;
		while (q < e && (*q == ' ' || *q == '\t'))
			q++;
		/* blank lines and comments are kept as they are */
		int skip = q == e || *q == '\n' || *q == '#' || *q == '\r';
		uint64_t nl = 0;
		const char *end = skip ? memchr(q, '\n', (size_t)(e - q)) : record_end(q, e, &nl);
		if (!end)
			end = e;
		if (end < e) { /* the record's own newline */
			end++;
			nl++;
		}
		if (skip) {
			memcpy(o, r, (size_t)(end - r));
			o += end - r;
		} else {
			const char *mend = scan_to(q, end, ", "), *a = mend;
			const char *val = NULL, *vend = NULL;
			while (a < end && *a == ',') {
				const char *k = a + 1, *kend = scan_to(k, end, "=, ");
				if (kend >= end || *kend != '=')
					break;
				const char *v = kend + 1, *ve = scan_to(v, end, ", ");
				if (!val && same_unescaped(k, kend, g->key_tag, g->key_tag_n)) {
					val = v;
					vend = ve;
				}
				a = ve;
			}
			if (!val) {
				memcpy(o, r, (size_t)(mend - r));
				o += mend - r;
				memcpy(o, insert, ins_n);
				o += ins_n;
				memcpy(o, mend, (size_t)(end - mend));
				o += end - mend;
			} else if (same_unescaped(val, vend, key, kn)) {
				memcpy(o, r, (size_t)(end - r));
				o += end - r;
			} else {
				kt_why(g, t, line, val, (size_t)(vend - val), key, kn);
				t->conflicts++;
				memset(o, '\n', nl);
				o += nl;
			}
		}
		line += nl;
		p = end;
	}
	t->lp = g->kt;
	t->len = (size_t)(o - g->kt);
	return 0;
}

/* Whether key[0, n) can be a tag value; else why not, in why. */
static int key_ok(const char *key, size_t n, char *why, size_t cap)
{
	if (n > INGEST_KEY_MAX) {
		snprintf(why, cap, "the message key (%zu bytes) is longer than %d bytes", n,
			 INGEST_KEY_MAX);
		return 0;
	}
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)key[i] < 0x20 || key[i] == 0x7f) {
			snprintf(why, cap,
				 "the message key holds a control byte at byte %zu: not a tag "
				 "value",
				 i);
			return 0;
		}
	return 1;
}

int ingest_decode(ingest *g, const char *payload, size_t n, const char *key, size_t key_n,
		  int64_t now_ns, ingest_text *t)
{
	memset(t, 0, sizeof *t);
	int keyed = g->key_tag && key && key_n;
	if (keyed && !key_ok(key, key_n, t->why, sizeof t->why)) {
		t->whole = 1;
		t->rejected = 1;
		return 0;
	}
	if (g->json) {
		jsonev_dec_default_key(g->dec, key_n ? key : NULL, key_n);
		int rc = jsonev_decode(g->dec, g->map, payload, n, now_ns, &t->jr);
		if (rc == -ENOMEM)
			return rc;
		t->events = t->jr.events;
		if (rc) { /* longer than the decoder takes */
			t->whole = 1;
			t->rejected = 1;
		} else {
			t->lp = t->jr.lp;
			t->len = t->jr.lp_len;
			t->lines = t->jr.lines;
			t->rejected = t->jr.rejected;
		}
		if (t->jr.n_errors)
			snprintf(t->why, sizeof t->why, "event %" PRIu64 " at byte %" PRIu64 ": %s",
				 t->jr.errors[0].event, t->jr.errors[0].offset,
				 t->jr.errors[0].reason);
		else if (rc)
			snprintf(t->why, sizeof t->why, "refused");
	} else {
		t->lp = payload;
		t->len = n;
		t->lines = conn_count_lines(payload, n);
		t->events = t->lines;
	}
	if (keyed && t->len) {
		if (kt_pass(g, t, key, key_n))
			return -ENOMEM;
		t->rejected += t->conflicts;
	}
	return 0;
}

uint64_t ingest_event_of_line(const ingest *g, const ingest_text *t, uint64_t line)
{
	return g->json ? jsonev_line_event(&t->jr, line) : line;
}

/* ---------------------------------------------------------------- warnings */

void ingest_warn(ingest *g, const char *fmt, ...)
{
	int64_t now = srv_now();
	if (g->log_at && now - g->log_at < g->log_period_ns && g->logged >= g->log_burst) {
		g->unlogged++;
		return;
	}
	if (!g->log_at || now - g->log_at >= g->log_period_ns) {
		g->log_at = now;
		g->logged = 0;
	}
	g->logged++;
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (g->unlogged)
		srv_log(g->s, TALLY_LOG_WARN, "%s: %s (and %" PRIu64 " more not logged)", g->who,
			msg, g->unlogged);
	else
		srv_log(g->s, TALLY_LOG_WARN, "%s: %s", g->who, msg);
	g->unlogged = 0;
}

/* ---------------------------------------------------------------- durability */

uint64_t ingest_sync_ask(ingest *g)
{
	/* the syncer skips a sync when nothing is dirty and no ticket is
	 * new; a ticket is always new, this only keeps the interval sync
	 * from skipping what the writer wrote */
	atomic_store_explicit(&g->s->dirty, 1, memory_order_relaxed);
	return srv_sync_ticket(g->s);
}

int ingest_synced(ingest *g, uint64_t ticket, int wait, char *why, size_t cap)
{
	srv *s = g->s;
	if (wait)
		srv_sync_wait(s, ticket);
	else if (atomic_load_explicit(&s->sync_done, memory_order_acquire) < ticket)
		return 1;
	return srv_sync_result(s, ticket, why, cap) ? -1 : 0;
}
