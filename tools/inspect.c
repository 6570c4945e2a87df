/*
 * inspect.c — `tally inspect DIR`: what a data directory holds, read
 * straight from its files (manifest, parts, WAL) without opening the
 * database, so it works beside a running server and on a copy.
 *
 * For each partition: its parts, rows, bytes and state; for each column:
 * the encodings its blocks use, raw versus stored bytes and bytes per row;
 * and the totals that matter for sizing: bytes per event for raw columns
 * and for the whole directory, and the write amplification of merges.
 * Tiered parts (docs/operations.md) show where their raw columns are and
 * their local and remote bytes; their column blocks are not read (they
 * are in object storage), so their encodings are not listed.
 */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "codec.h"
#include "fileio.h"
#include "inspect.h"
#include "manifest.h"
#include "part.h"
#include "tally.h"

typedef struct colsum {
	char name[256];
	uint8_t type;
	uint64_t blocks, values, present, stored;
	uint64_t enc_blocks[CODEC_ENC_MAX + 1];
} colsum;

static uint64_t dir_bytes(const char *path)
{
	struct stat sb;
	if (lstat(path, &sb))
		return 0;
	if (!S_ISDIR(sb.st_mode))
		return (uint64_t)sb.st_size;
	uint64_t n = 0;
	DIR *d = opendir(path);
	struct dirent *e;
	while (d && (e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		char sub[PATH_MAX];
		snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
		n += dir_bytes(sub);
	}
	if (d)
		closedir(d);
	return n;
}

static void fmt_time(int64_t ns, char *buf, size_t cap)
{
	time_t s = (time_t)(ns / 1000000000);
	if (ns < 0 && ns % 1000000000)
		s--;
	struct tm tm;
	gmtime_r(&s, &tm);
	strftime(buf, cap, "%Y-%m-%dT%H:%MZ", &tm);
}

static const char *type_str(uint8_t t)
{
	static const char *names[] = {"?", "float", "int", "uint", "bool", "string", "tag"};
	return t < 7 ? names[t] : "?";
}

static colsum *col_for(colsum **cols, size_t *n, const char *name, uint8_t type)
{
	for (size_t i = 0; i < *n; i++)
		if (!strcmp((*cols)[i].name, name))
			return &(*cols)[i];
	colsum *nc = realloc(*cols, (*n + 1) * sizeof *nc);
	if (!nc)
		return NULL;
	*cols = nc;
	colsum *c = &nc[(*n)++];
	memset(c, 0, sizeof *c);
	snprintf(c->name, sizeof c->name, "%s", name);
	c->type = type;
	return c;
}

/* Adds the part's column blocks to the summaries. */
static int scan_blocks(const part *p, colsum **cols, size_t *n_cols, uint64_t *rollup_bytes)
{
	uint8_t hdr[64];
	/* a stub's column blocks are in object storage: sizes only, below */
	for (uint32_t s = 0; !(p->flags & PART_F_STUB) && s < p->n_stripes; s++) {
		const part_stripe *st = &p->stripes[s];
		for (uint32_t c = 0; c <= p->info.n_cols; c++) {
			const part_ref *ref = &p->refs[st->first_ref + c];
			if (!ref->len)
				continue;
			const char *name = c ? p->info.cols[c - 1].name : "(time)";
			colsum *cs = col_for(cols, n_cols, name, c ? p->info.cols[c - 1].type : 2);
			if (!cs)
				return -ENOMEM;
			size_t len = ref->len < sizeof hdr ? ref->len : sizeof hdr;
			codec_block_info bi;
			if (fio_pread_full(p->fd, hdr, len, ref->off, p->path) == 0 &&
			    codec_block_info_get(hdr, len, &bi) == 0 && bi.enc <= CODEC_ENC_MAX)
				cs->enc_blocks[bi.enc]++;
			cs->blocks++;
			cs->values += st->n_rows;
			cs->stored += ref->len + 8;
			if (c == 0)
				cs->present += st->n_rows;
			else if (fio_pread_full(p->fd, hdr, len, ref->off, p->path) == 0 &&
				 codec_block_info_get(hdr, len, &bi) == 0)
				cs->present += bi.n_present;
		}
	}
	for (uint32_t r = 0; r < p->n_rollups; r++)
		*rollup_bytes += p->rollups[r].ref.len ? p->rollups[r].ref.len + 8 : 0;
	return 0;
}

int inspect_main(int argc, char **argv)
{
	if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		fprintf(argc < 2 ? stderr : stdout,
			"usage: tally inspect DIR\n"
			"  Shows the partitions, parts, rows and sizes of a tally data directory,\n"
			"  per-column encodings and compression, bytes per event and write\n"
			"  amplification. Reads the files only; safe beside a running tallyd.\n");
		return argc < 2 ? 2 : 0;
	}
	const char *dir = argv[1];
	/* manifest_load reads a missing MANIFEST as a fresh store's empty one:
	 * first make sure DIR is a data directory at all, or a typo would
	 * print an empty report and succeed. */
	struct stat st;
	char path[PATH_MAX];
	if (stat(dir, &st)) {
		fprintf(stderr, "tally inspect: %s: %s\n", dir, strerror(errno));
		return 1;
	}
	if (!S_ISDIR(st.st_mode)) {
		fprintf(stderr, "tally inspect: %s: not a directory\n", dir);
		return 1;
	}
	snprintf(path, sizeof path, "%s/MANIFEST", dir);
	int has_manifest = !access(path, F_OK);
	snprintf(path, sizeof path, "%s/wal", dir);
	if (!has_manifest && access(path, F_OK)) {
		fprintf(stderr,
			"tally inspect: %s: not a tally data directory (no MANIFEST, no wal/)\n",
			dir);
		return 1;
	}
	manifest m;
	int rc = manifest_load(dir, &m);
	if (rc) {
		fprintf(stderr, "tally inspect: %s: %s\n", dir, tally_errmsg());
		return 1;
	}
	uint64_t wal = dir_bytes(path), total = dir_bytes(dir);
	printf("%s\n", dir);
	printf("  manifest generation %llu, %u parts, %u shards\n",
	       (unsigned long long)m.generation, m.n_parts, m.n_shards);
	for (uint32_t s = 0; s < m.n_shards; s++)
		printf("  shard %u: events up to WAL seq %llu are in parts\n", s,
		       (unsigned long long)m.flushed_seq[s]);
	printf("  WAL on disk: %llu bytes\n", (unsigned long long)wal);

	colsum *cols = NULL;
	size_t n_cols = 0;
	uint64_t rows = 0, part_bytes = 0, rollup_bytes = 0, index_bytes = 0;
	int bad = 0;
	printf("\n  %-16s %-18s %5s %6s %12s %12s %9s  %s\n", "table", "partition", "shard",
	       "level", "rows", "bytes", "bytes/row", "state, tier");
	uint64_t local_total = 0, remote_total = 0;
	unsigned tiered = 0;
	for (uint32_t i = 0; i < m.n_parts; i++) {
		const manifest_part *mp = &m.parts[i];
		char name[64], when[32];
		manifest_part_name(mp->id, name, sizeof name);
		snprintf(path, sizeof path, "%s/%s", dir, name);
		fmt_time(mp->partition_start, when, sizeof when);
		int remote = mp->tier == MTIER_REMOTE;
		if (remote) {
			/* the local file is the stub (or, briefly, the whole part) */
			snprintf(path, sizeof path, "%s/parts/%016llx.stub", dir,
				 (unsigned long long)mp->id);
			if (access(path, F_OK))
				snprintf(path, sizeof path, "%s/%s", dir, name);
		}
		printf("  %-16s %-18s %5u %6u %12llu %12llu %9.2f  %s, %s\n", mp->table, when,
		       mp->shard, mp->level, (unsigned long long)mp->rows,
		       (unsigned long long)mp->bytes,
		       mp->rows ? (double)mp->bytes / (double)mp->rows : 0.0,
		       mp->flags & MPART_SEALED ? "sealed" : "open", remote ? "remote" : "local");
		rows += mp->rows;
		part_bytes += mp->bytes;
		part *p;
		if (part_open(path, &p)) {
			printf("    ! %s\n", tally_errmsg());
			bad = 1;
			continue;
		}
		uint64_t before = rollup_bytes;
		if (scan_blocks(p, &cols, &n_cols, &rollup_bytes)) {
			fprintf(stderr, "tally inspect: out of memory\n");
			part_close(p);
			break;
		}
		uint64_t blocks_end = p->index_bytes;
		index_bytes += p->file_bytes - blocks_end;
		char shown[64]; /* the file the part opened from */
		snprintf(shown, sizeof shown, "parts/%s", strrchr(path, '/') + 1);
		printf("    %s: %u keys, %u stripes, rollups %llu bytes, index %llu bytes\n", shown,
		       p->n_keys, p->n_stripes, (unsigned long long)(rollup_bytes - before),
		       (unsigned long long)(p->file_bytes - blocks_end));
		local_total += p->file_bytes;
		if (remote) {
			char when2[32];
			fmt_time(mp->tiered_at, when2, sizeof when2);
			remote_total += mp->bytes;
			tiered++;
			printf("    tier: remote since %s, object %s (%llu bytes, xxh3 %016llx); "
			       "local %llu bytes (%s)\n",
			       when2, mp->object, (unsigned long long)mp->bytes,
			       (unsigned long long)mp->object_sum,
			       (unsigned long long)p->file_bytes,
			       p->flags & PART_F_STUB ? "stub: rollups and index" : "whole part");
		} else {
			printf("    tier: local %llu bytes\n", (unsigned long long)p->file_bytes);
		}
		part_close(p);
	}
	uint64_t raw_col_bytes = 0;
	if (n_cols) {
		printf("\n  %-16s %-7s %-22s %10s %12s %8s %9s\n", "column", "type", "encodings",
		       "values", "stored", "ratio", "bytes/row");
		for (size_t c = 0; c < n_cols; c++) {
			const colsum *cs = &cols[c];
			char encs[64] = "";
			for (unsigned e = 0; e <= CODEC_ENC_MAX; e++)
				if (cs->enc_blocks[e]) {
					size_t l = strlen(encs);
					snprintf(encs + l, sizeof encs - l, "%s%s:%llu",
						 l ? " " : "", codec_name(e),
						 (unsigned long long)cs->enc_blocks[e]);
				}
			/* numbers are 8 bytes in memory; strings are counted by rows */
			double raw = (double)cs->present * (cs->type == 4 ? 1 : 8);
			printf("  %-16s %-7s %-22s %10llu %12llu %7.1fx %9.3f\n", cs->name,
			       type_str(cs->type), encs, (unsigned long long)cs->present,
			       (unsigned long long)cs->stored,
			       cs->stored ? raw / (double)cs->stored : 0,
			       rows ? (double)cs->stored / (double)rows : 0.0);
			raw_col_bytes += cs->stored;
		}
	}
	printf("\n  rows in parts:              %llu\n", (unsigned long long)rows);
	if (rows) {
		if (tiered) /* remote parts' columns are not read: their sizes are remote_total */
			printf("  bytes/event, raw columns:   %.3f locally (columns of remote "
			       "parts "
			       "are in object storage)\n",
			       (double)raw_col_bytes / (double)rows);
		else
			printf("  bytes/event, raw columns:   %.3f\n",
			       (double)raw_col_bytes / (double)rows);
		printf("  bytes/event, rollups:       %.3f\n", (double)rollup_bytes / (double)rows);
		printf("  bytes/event, indexes:       %.3f\n", (double)index_bytes / (double)rows);
		printf("  bytes/event, whole dir:     %.3f (%llu bytes, WAL included)\n",
		       (double)total / (double)rows, (unsigned long long)total);
	}
	printf("  tiering:                    %u of %u parts remote; parts' bytes local %llu, "
	       "remote %llu; %u objects waiting for deletion\n",
	       tiered, m.n_parts, (unsigned long long)local_total, (unsigned long long)remote_total,
	       m.n_gc);
	printf("  write amplification:        %.2f (rows written %llu / rows accepted %llu)\n",
	       m.rows_accepted ? (double)m.rows_written / (double)m.rows_accepted : 1.0,
	       (unsigned long long)m.rows_written, (unsigned long long)m.rows_accepted);
	free(cols);
	manifest_free(&m);
	return bad ? 1 : 0;
}
