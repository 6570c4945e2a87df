/*
 * metrics.c — tallyd's figures in the Prometheus text format (0.0.4), and a
 * latency histogram cheap enough for every request.
 *
 * One table names every figure once: its metric name (units and _total
 * by Prometheus's conventions), its type, its help line and where its value
 * lives (a tally_stats field, or a server counter summed over the shards).
 * The renderer walks the table, so a metric cannot be written without its
 * HELP and TYPE, nor twice. The server's counters are relaxed atomics that
 * shard threads bump; reading them from the rendering thread is a relaxed
 * load each, the same as #!stats does.
 *
 * The histogram's one idea: bucket bounds are powers of two of a
 * microsecond, so an observation finds its bucket with one count-leading-
 * zeros instead of a search, and needs no lock (two relaxed adds).
 */
#include "metrics.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "server.h"

/* ---------------------------------------------------------------- histogram */

void metrics_hist_observe(metrics_hist *h, int64_t ns)
{
	uint64_t v = ns > 0 ? (uint64_t)ns : 0, us = (v + 999) / 1000; /* rounded up */
	/* bucket i holds (2^(i+2), 2^(i+3)] us; bucket 0 everything up to 8 us */
	unsigned i = us <= 8 ? 0 : (unsigned)(64 - __builtin_clzll(us - 1)) - 3;
	if (i > METRICS_HIST_BOUNDS)
		i = METRICS_HIST_BOUNDS;
	atomic_fetch_add_explicit(&h->bucket[i], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&h->sum_ns, v, memory_order_relaxed);
}

double metrics_hist_bound(unsigned i)
{
	return ldexp(1.0, (int)i + 3) / 1e6;
}

/* ---------------------------------------------------------------- writing */

static int put(char **buf, size_t *len, size_t *cap, const char *s, size_t n)
{
	if (*len + n + 1 > *cap) {
		size_t c = *cap ? *cap : 4096;
		while (c < *len + n + 1)
			c *= 2;
		char *p = realloc(*buf, c);
		if (!p)
			return -ENOMEM;
		*buf = p;
		*cap = c;
	}
	memcpy(*buf + *len, s, n);
	*len += n;
	(*buf)[*len] = 0;
	return 0;
}

__attribute__((format(printf, 4, 5))) static int putf(char **buf, size_t *len, size_t *cap,
						      const char *f, ...)
{
	char t[512];
	va_list ap;
	va_start(ap, f);
	int n = vsnprintf(t, sizeof t, f, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof t)
		return -EINVAL; /* callers' names and labels are far shorter */
	return put(buf, len, cap, t, (size_t)n);
}

int metrics_family(char **buf, size_t *len, size_t *cap, const char *name, const char *type,
		   const char *help)
{
	/* HELP escapes '\' and newline; ours hold neither, but a caller's may */
	int rc = putf(buf, len, cap, "# HELP %s ", name);
	for (const char *p = help; !rc && *p; p++)
		rc = *p == '\\'   ? put(buf, len, cap, "\\\\", 2)
		     : *p == '\n' ? put(buf, len, cap, "\\n", 2)
				  : put(buf, len, cap, p, 1);
	return rc ? rc : putf(buf, len, cap, "\n# TYPE %s %s\n", name, type);
}

/* A float as Prometheus reads it: the shortest decimal that reads back. */
static void fmt_value(char out[40], double v)
{
	if (isnan(v))
		strcpy(out, "NaN");
	else if (isinf(v))
		strcpy(out, v > 0 ? "+Inf" : "-Inf");
	else
		cmd_format_double(v, out);
}

int metrics_sample(char **buf, size_t *len, size_t *cap, const char *name, const char *labels,
		   double value)
{
	char v[40];
	fmt_value(v, value);
	return labels && *labels ? putf(buf, len, cap, "%s{%s} %s\n", name, labels, v)
				 : putf(buf, len, cap, "%s %s\n", name, v);
}

int metrics_hist_put(char **buf, size_t *len, size_t *cap, const char *name, const char *labels,
		     const metrics_hist *h)
{
	const char *sep = labels && *labels ? "," : "";
	labels = labels ? labels : "";
	/* _count is the buckets' total as read, so +Inf and _count agree
	 * whatever observations run meanwhile */
	uint64_t cum = 0;
	int rc = 0;
	for (unsigned i = 0; i <= METRICS_HIST_BOUNDS && !rc; i++) {
		cum += atomic_load_explicit(&h->bucket[i], memory_order_relaxed);
		if (i == METRICS_HIST_BOUNDS)
			rc = putf(buf, len, cap, "%s_bucket{%s%sle=\"+Inf\"} %" PRIu64 "\n", name,
				  labels, sep, cum);
		else
			rc = putf(buf, len, cap, "%s_bucket{%s%sle=\"%.9g\"} %" PRIu64 "\n", name,
				  labels, sep, metrics_hist_bound(i), cum);
	}
	double sum = (double)atomic_load_explicit(&h->sum_ns, memory_order_relaxed) / 1e9;
	char v[40];
	fmt_value(v, sum);
	if (!rc)
		rc = *labels ? putf(buf, len, cap, "%s_sum{%s} %s\n%s_count{%s} %" PRIu64 "\n",
				    name, labels, v, name, labels, cum)
			     : putf(buf, len, cap, "%s_sum %s\n%s_count %" PRIu64 "\n", name, v,
				    name, cum);
	return rc;
}

size_t metrics_label(char *dst, size_t cap, const char *name, const char *value)
{
	size_t o = 0, nl = strlen(name);
	if (nl + 3 >= cap)
		return 0;
	memcpy(dst, name, nl);
	o = nl;
	dst[o++] = '=';
	dst[o++] = '"';
	for (const char *p = value; *p; p++) {
		const char *e = *p == '\\'   ? "\\\\"
				: *p == '"'  ? "\\\""
				: *p == '\n' ? "\\n"
					     : NULL;
		size_t k = e ? 2 : 1;
		if (o + k + 2 > cap)
			return 0;
		memcpy(dst + o, e ? e : p, k);
		o += k;
	}
	dst[o++] = '"';
	dst[o] = 0;
	return o;
}

/* ---------------------------------------------------------------- tallyd */

/* Engine figures: a uint64_t field of tally_stats each. */
static const struct stat_metric {
	const char *name, *type, *help;
	size_t off;
} engine_metrics[] = {
#define F(field) offsetof(tally_stats, field)
	{"tally_events_total", "counter",
	 "Events accepted since the store was created (replayed WAL included).", F(events)},
	{"tally_late_events_total", "counter",
	 "Accepted events older than their key's newest by more than the late threshold.",
	 F(late_events)},
	{"tally_rejected_lines_total", "counter",
	 "Line-protocol lines the engine refused since open.", F(rejected_lines)},
	{"tally_keys", "gauge", "Distinct (table, key) series.", F(keys)},
	{"tally_tables", "gauge", "Tables.", F(tables)},
	{"tally_memtable_bytes", "gauge", "Raw rows held in memtables.", F(memtable_bytes)},
	{"tally_rollup_bytes", "gauge", "Rollup buckets held in memory.", F(rollup_bytes)},
	{"tally_index_bytes", "gauge", "Part indexes held in memory.", F(index_bytes)},
	{"tally_cache_bytes", "gauge", "Decoded rollup blocks cached.", F(cache_bytes)},
	{"tally_cache_mapped_bytes", "gauge",
	 "Memory the decoded-rollup cache has mapped: its ring's blocks and those made ready.",
	 F(cache_mapped_bytes)},
	{"tally_cache_hits_total", "counter", "Rollup blocks read from the cache since open.",
	 F(cache_hits)},
	{"tally_cache_misses_total", "counter", "Rollup blocks decoded from parts since open.",
	 F(cache_misses)},
	{"tally_memory_limit_bytes", "gauge",
	 "Bound for memtables and rollups; writes past it wait, then fail.", F(memory_limit)},
	{"tally_prefault_pending_bytes", "gauge", "Memtable memory still to fault in at start.",
	 F(prefault_pending)},
	{"tally_wal_bytes", "gauge", "Bytes of WAL on disk.", F(wal_bytes)},
	{"tally_wal_syncs_total", "counter", "WAL fsyncs since open.", F(wal_syncs)},
	{"tally_shards", "gauge", "Write shards.", F(shards)},
	{"tally_parts", "gauge", "Live part files.", F(parts)},
	{"tally_part_bytes", "gauge", "Bytes of live parts on disk.", F(part_bytes)},
	{"tally_part_rows", "gauge", "Rows in live parts.", F(part_rows)},
	{"tally_flushes_total", "counter", "Memtables flushed into parts since open.", F(flushes)},
	{"tally_merges_total", "counter", "Merges since open.", F(merges)},
	{"tally_sealed_parts", "gauge", "Parts that are sealed segments.", F(sealed_parts)},
	{"tally_partitions", "gauge", "(shard, table, partition) groups of parts.", F(partitions)},
	{"tally_max_parts_per_partition", "gauge", "Most parts in one partition.",
	 F(max_parts_per_partition)},
	{"tally_merge_backlog", "gauge", "Partitions with enough unsealed parts to merge.",
	 F(merge_backlog)},
	{"tally_tiered_parts", "gauge", "Parts whose raw columns are in object storage.",
	 F(tiered_parts)},
	{"tally_remote_bytes", "gauge", "Bytes of those parts' objects.", F(remote_bytes)},
	{"tally_tier_due_parts", "gauge", "Sealed parts due for upload, not uploaded yet.",
	 F(tier_due)},
	{"tally_tier_uploads_total", "counter", "Parts uploaded and committed since open.",
	 F(tier_uploads)},
	{"tally_tier_upload_bytes_total", "counter", "Bytes uploaded since open.",
	 F(tier_upload_bytes)},
	{"tally_tier_failures_total", "counter", "Tiering passes that failed since open.",
	 F(tier_failures)},
	{"tally_tier_deletes_total", "counter", "Retired objects deleted since open.",
	 F(tier_deletes)},
	{"tally_tier_gc_pending_objects", "gauge", "Retired objects waiting to be deleted.",
	 F(tier_gc_pending)},
	{"tally_cold_reads_total", "counter", "Ranged GETs of cold raw blocks since open.",
	 F(cold_reads)},
	{"tally_cold_read_bytes_total", "counter", "Bytes of those GETs.", F(cold_read_bytes)},
	{"tally_cold_cache_hits_total", "counter", "Cold blocks found in memory since open.",
	 F(cold_cache_hits)},
	{"tally_cold_cache_misses_total", "counter", "Cold blocks fetched since open.",
	 F(cold_cache_misses)},
	{"tally_cold_cache_bytes", "gauge", "Cold blocks held in memory.", F(cold_cache_bytes)},
	{"tally_s3_requests_total", "counter", "Object store requests since open.", F(s3_requests)},
	{"tally_s3_retries_total", "counter", "Object store requests retried since open.",
	 F(s3_retries)},
	{"tally_s3_errors_total", "counter", "Object store requests that failed since open.",
	 F(s3_errors)},
	{"tally_wal_write_errors_total", "counter",
	 "Writes refused since open because their WAL write failed (disk full, I/O error).",
	 F(wal_write_errors)},
	{"tally_failed_shards", "gauge",
	 "Shards failed for good (a WAL fsync failed): writes refused until tallyd restarts.",
	 F(failed_shards)},
	{"tally_key_bytes", "gauge",
	 "Per-key structures that outlive memtables (key sets, key states), under memory-limit.",
	 F(key_bytes)},
	{"tally_query_bytes", "gauge", "All-keys answers being built or held, under memory-limit.",
	 F(query_bytes)},
	{"tally_label_sources", "gauge", "Labelled-batch sources whose applied sequences are kept.",
	 F(label_sources)},
	{"tally_label_bytes", "gauge", "Memory those sources' applied sequences hold.",
	 F(label_bytes)},
	{"tally_label_duplicates_total", "counter",
	 "Labelled batches answered as duplicates (already applied) since open.",
	 F(label_duplicates)},
	{"tally_label_too_old_total", "counter",
	 "Labelled batches refused as below their source's window since open.", F(label_too_old)},
	{"tally_label_expired_total", "counter",
	 "Sources forgotten after label-expiry of silence since open.", F(label_expired)},
	{"tally_scan_rows_total", "counter",
	 "Rows raw scans decoded from parts and memtables since open.", F(scan_rows)},
	{"tally_retention_passes_total", "counter", "Retention passes run since open.",
	 F(retention_passes)},
	{"tally_retention_parts_dropped_total", "counter",
	 "Parts dropped whole by retention (every class expired) since open.",
	 F(retention_parts_dropped)},
	{"tally_retention_parts_raw_gone_total", "counter",
	 "Parts cut to their rollups by retention (raw events expired) since open.",
	 F(retention_parts_raw_gone)},
	{"tally_retention_freed_bytes_total", "counter",
	 "Local part bytes retention freed since open.", F(retention_bytes_freed)},
	{"tally_retention_rows_dropped_total", "counter",
	 "Raw events retention dropped since open.", F(retention_rows_dropped)},
#undef F
};

/* Server counters: a wstats field each, summed over the shards. */
static const struct stat_metric server_metrics[] = {
#define W(field) offsetof(wstats, field)
	{"tally_connections_accepted_total", "counter", "Connections accepted.", W(conns_total)},
	{"tally_connections_refused_total", "counter",
	 "Connections refused (max-connections reached).", W(conns_refused)},
	{"tally_received_bytes_total", "counter", "Bytes received from clients.", W(bytes_in)},
	{"tally_sent_bytes_total", "counter", "Bytes sent to clients.", W(bytes_out)},
	{"tally_lines_accepted_total", "counter", "Line-protocol lines written for clients.",
	 W(lines_accepted)},
	{"tally_lines_rejected_total", "counter", "Line-protocol lines refused to clients.",
	 W(lines_rejected)},
	{"tally_commands_total", "counter", "#! commands run.", W(commands)},
	{"tally_queries_total", "counter", "Queries answered.", W(queries)},
	{"tally_syncs_total", "counter", "#!sync requests.", W(syncs)},
	{"tally_replies_dropped_total", "counter",
	 "Small replies dropped because a client did not read them.", W(replies_dropped)},
	{"tally_idle_closed_total", "counter", "Connections closed for idleness.", W(idle_closed)},
	{"tally_full_waits_total", "counter", "Writes that waited for memory (store full).",
	 W(full_waits)},
	{"tally_auth_failures_total", "counter",
	 "Failed authentications: wrong #!auth tokens, HTTP requests without a valid token.",
	 W(auth_failures)},
	{"tally_auth_closed_total", "counter",
	 "Line-protocol connections closed unauthenticated (auth-timeout, max-unauthenticated).",
	 W(auth_closed)},
	{"tally_connections_refused_per_address_total", "counter",
	 "Connections refused at max-connections-per-address.", W(conns_refused_peer)},
	{"tally_http_connections_accepted_total", "counter",
	 "Connections accepted on the HTTP port.", W(http_conns)},
	{"tally_http_lines_accepted_total", "counter",
	 "Line-protocol lines (and JSON events) written for HTTP clients.", W(http_lines_accepted)},
	{"tally_http_lines_rejected_total", "counter",
	 "Line-protocol lines (and JSON events) refused to HTTP clients.", W(http_lines_rejected)},
	{"tally_http_gzip_bodies_total", "counter", "HTTP request bodies sent gzip-compressed.",
	 W(http_gzip_bodies)},
	{"tally_http_header_timeouts_total", "counter",
	 "HTTP requests whose head did not arrive in http-header-timeout (408).",
	 W(http_header_timeouts)},
	{"tally_http_on_lp_port_total", "counter",
	 "HTTP requests sent to the line-protocol port (refused with 400).", W(http_on_lp_port)},
	{"tally_tls_handshakes_total", "counter", "TLS handshakes completed.", W(tls_handshakes)},
	{"tally_tls_handshake_failures_total", "counter", "TLS handshakes that failed (closed).",
	 W(tls_failures)},
	{"tally_tls_plaintext_refused_total", "counter",
	 "Connections that sent plaintext to a TLS port (closed).", W(tls_plaintext)},
	{"tally_tls_handshake_timeouts_total", "counter",
	 "TLS handshakes unfinished within tls-handshake-timeout (closed).", W(tls_timeouts)},
#undef W
};

#define N_SERVER (sizeof server_metrics / sizeof server_metrics[0])

static uint64_t wstat(const wstats *w, size_t off)
{
	return atomic_load_explicit((_Atomic uint64_t *)((char *)w + off), memory_order_relaxed);
}

/* A family of one unlabelled sample. */
static int single(char **buf, size_t *len, size_t *cap, const char *name, const char *type,
		  const char *help, double v)
{
	int rc = metrics_family(buf, len, cap, name, type, help);
	return rc ? rc : metrics_sample(buf, len, cap, name, "", v);
}

/* A family with one sample per shard, labelled shard="N". */
static int per_shard(char **buf, size_t *len, size_t *cap, const srv *s, const char *name,
		     const char *type, const char *help, uint64_t (*get)(const wshard *))
{
	int rc = metrics_family(buf, len, cap, name, type, help);
	for (unsigned sh = 0; !rc && sh < s->n_shards; sh++) {
		char l[32];
		snprintf(l, sizeof l, "shard=\"%u\"", sh);
		rc = metrics_sample(buf, len, cap, name, l, (double)get(&s->shards[sh]));
	}
	return rc;
}

static uint64_t shard_conns(const wshard *sh)
{
	return atomic_load_explicit(&sh->load, memory_order_relaxed);
}

static uint64_t shard_lines(const wshard *sh)
{
	return wstat(&sh->st, offsetof(wstats, lines_accepted));
}

/* Per HTTP endpoint, summed over the shards: requests, errors, latency. */
static int http_endpoints(char **buf, size_t *len, size_t *cap, const srv *s)
{
	static const struct {
		const char *name, *type, *help;
	} fam[] = {
		{"tally_http_requests_total", "counter", "HTTP requests answered, by endpoint."},
		{"tally_http_request_errors_total", "counter",
		 "HTTP requests answered 4xx or 5xx, by endpoint."},
		{"tally_http_request_duration_seconds", "histogram",
		 "HTTP request latency, from its head received to its answer queued (a write's "
		 "includes its sync), by endpoint."},
	};
	int rc = 0;
	for (unsigned f = 0; !rc && f < 3; f++) {
		rc = metrics_family(buf, len, cap, fam[f].name, fam[f].type, fam[f].help);
		for (unsigned e = 0; !rc && e < HEP_N; e++) {
			char l[64];
			metrics_label(l, sizeof l, "endpoint", http_ep_names[e]);
			uint64_t n = 0;
			metrics_hist sum;
			memset(&sum, 0, sizeof sum);
			for (unsigned sh = 0; sh < s->n_shards; sh++) {
				const whttp_ep_stats *st = &s->shards[sh].st.http[e];
				const _Atomic uint64_t *v = f == 0 ? &st->requests : &st->errors;
				n += atomic_load_explicit(v, memory_order_relaxed);
				for (unsigned b = 0; f == 2 && b <= METRICS_HIST_BOUNDS; b++)
					atomic_fetch_add_explicit(
						&sum.bucket[b],
						atomic_load_explicit(&st->lat.bucket[b],
								     memory_order_relaxed),
						memory_order_relaxed);
				if (f == 2)
					atomic_fetch_add_explicit(
						&sum.sum_ns,
						atomic_load_explicit(&st->lat.sum_ns,
								     memory_order_relaxed),
						memory_order_relaxed);
			}
			rc = f == 2 ? metrics_hist_put(buf, len, cap, fam[f].name, l, &sum)
				    : metrics_sample(buf, len, cap, fam[f].name, l, (double)n);
		}
	}
	return rc;
}

int metrics_render(srv *s, char **buf, size_t *len, size_t *cap)
{
	tally_stats es;
	int rc = tally_db_stats(s->db, &es);
	if (rc)
		return rc;
	for (size_t i = 0; !rc && i < sizeof engine_metrics / sizeof engine_metrics[0]; i++) {
		const struct stat_metric *m = &engine_metrics[i];
		uint64_t v;
		memcpy(&v, (const char *)&es + m->off, sizeof v);
		rc = single(buf, len, cap, m->name, m->type, m->help, (double)v);
	}
	if (!rc)
		rc = single(buf, len, cap, "tally_write_amplification", "gauge",
			    "Rows written into parts by flushes and merges per row accepted into "
			    "parts (1: each written once).",
			    es.write_amplification);
	if (!rc)
		rc = single(buf, len, cap, "tally_retention_last_drop_seconds", "gauge",
			    "Unix time of the last retention pass that dropped data (0: none).",
			    (double)es.retention_last_drop / 1e9);
	if (!rc)
		rc = metrics_family(buf, len, cap, "tally_tier_state", "gauge",
				    "Tiering to object storage: 1 for the current state (off, "
				    "healthy, or failing and retrying), 0 for the others.");
	static const char *const states[] = {"off", "healthy", "failing"};
	for (int i = 0; !rc && i < 3; i++) {
		char l[32];
		metrics_label(l, sizeof l, "state", states[i]);
		rc = metrics_sample(buf, len, cap, "tally_tier_state", l, es.tier_state == i);
	}

	uint64_t sum[N_SERVER] = {0};
	for (unsigned sh = 0; sh < s->n_shards; sh++)
		for (size_t k = 0; k < N_SERVER; k++)
			sum[k] += wstat(&s->shards[sh].st, server_metrics[k].off);
	for (size_t k = 0; !rc && k < N_SERVER; k++)
		rc = single(buf, len, cap, server_metrics[k].name, server_metrics[k].type,
			    server_metrics[k].help, (double)sum[k]);
	/* Per shard, where the balance between shards matters. */
	if (!rc)
		rc = per_shard(buf, len, cap, s, "tally_shard_connections", "gauge",
			       "Open connections of one shard thread.", shard_conns);
	if (!rc)
		rc = per_shard(buf, len, cap, s, "tally_shard_lines_accepted_total", "counter",
			       "Line-protocol lines written by one shard thread.", shard_lines);
	if (!rc)
		rc = single(buf, len, cap, "tally_connections", "gauge", "Open connections.",
			    atomic_load_explicit(&s->n_conns, memory_order_relaxed));
	if (!rc)
		rc = single(buf, len, cap, "tally_syncs_done_total", "counter",
			    "Sync tickets made durable by the group commit.",
			    (double)atomic_load(&s->sync_done));
	if (!rc)
		rc = metrics_family(buf, len, cap, "tally_wal_sync_duration_seconds", "histogram",
				    "Time of the group commit's tally_db_sync (WAL fsyncs).");
	if (!rc)
		rc = metrics_hist_put(buf, len, cap, "tally_wal_sync_duration_seconds", "",
				      &s->sync_seconds);
	if (!rc)
		rc = single(buf, len, cap, "tally_tls_reloads_total", "counter",
			    "HTTPS certificates loaded by SIGHUP.",
			    (double)atomic_load(&s->tls_reloads));
	if (!rc)
		rc = http_endpoints(buf, len, cap, s);
	for (size_t k = 0; !rc && k < mqtt_n_stat_defs; k++) {
		const mqtt_stat_def *d = &mqtt_stat_defs[k];
		rc = single(buf, len, cap, d->metric, d->type, d->help,
			    (double)mqtt_stat(&s->mqtt_st, d));
	}
	if (!rc)
		rc = single(buf, len, cap, "tally_uptime_seconds", "gauge",
			    "Seconds since tallyd started.",
			    (double)(srv_now() - s->started) / 1e9);
	return rc;
}
