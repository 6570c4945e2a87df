/*
 * ingest.c — the part tallyd's stream subscribers (Kafka, MQTT) share:
 * payloads made line protocol, rate-limited warnings, and waiting for
 * durability (ingest.h).
 *
 * The one idea: a message is let go (its offset committed, its PUBACK
 * sent) only after a sync ticket taken after its write is served; the
 * ticket, not a sync of its own, so one group commit covers every
 * subscriber and connection that wrote meanwhile.
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
	g->w = NULL;
	g->dec = NULL;
}

int ingest_decode(ingest *g, const char *payload, size_t n, const char *key, size_t key_n,
		  int64_t now_ns, ingest_text *t)
{
	memset(t, 0, sizeof *t);
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
