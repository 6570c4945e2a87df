/*
 * manifest.c — loading and atomically saving DIR/MANIFEST.
 *
 * Layout (little-endian): "TALLYMAN", u32 version (1), u64 generation,
 * u64 next_part_id, u64 rows_accepted, u64 rows_written, u32 n_shards,
 * n_shards x u64 flushed_seq, u32 n_parts, then per part: u64 id, u32 shard, u16 table
 * length, table bytes, i64 partition_start, u64 rows, u64 bytes, u32 level,
 * u32 flags, i64 tmin, i64 tmax, u64 rows_written; finally u64 xxh3 of
 * everything before it. The whole file is read and checked before any of
 * it is believed.
 */
#include "manifest.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <xxhash.h>

#include "err.h"
#include "fileio.h"
#include "mem.h"
#include "tally.h"

#define MAN_MAGIC "TALLYMAN"
#define MAN_VERSION 1
#define MAN_MAX_BYTES (1u << 30)

void manifest_part_name(uint64_t id, char *buf, size_t cap)
{
	snprintf(buf, cap, "parts/%016llx.part", (unsigned long long)id);
}

void manifest_free(manifest *m)
{
	for (uint32_t i = 0; i < m->n_parts; i++)
		mem_free(m->parts[i].table);
	mem_free(m->parts);
	memset(m, 0, sizeof *m);
}

int manifest_add(manifest *m, const manifest_part *p)
{
	if (m->n_parts >= MANIFEST_PARTS_MAX)
		return err_set(TALLY_ELIMIT, "more than %u parts", MANIFEST_PARTS_MAX);
	if (m->n_parts == m->cap_parts) {
		uint32_t nc = m->cap_parts ? m->cap_parts * 2 : 16;
		manifest_part *np = mem_realloc(m->parts, nc * sizeof *np);
		if (!np)
			return err_set(-ENOMEM, "out of memory");
		m->parts = np;
		m->cap_parts = nc;
	}
	manifest_part c = *p;
	c.table = mem_strndup(p->table, strlen(p->table));
	if (!c.table)
		return err_set(-ENOMEM, "out of memory");
	m->parts[m->n_parts++] = c;
	return 0;
}

int manifest_remove(manifest *m, uint64_t id)
{
	for (uint32_t i = 0; i < m->n_parts; i++)
		if (m->parts[i].id == id) {
			mem_free(m->parts[i].table);
			memmove(&m->parts[i], &m->parts[i + 1],
				(m->n_parts - i - 1) * sizeof *m->parts);
			m->n_parts--;
			return 0;
		}
	return err_set(TALLY_ENOTFOUND, "manifest names no part %016llx", (unsigned long long)id);
}

const manifest_part *manifest_find(const manifest *m, uint64_t id)
{
	for (uint32_t i = 0; i < m->n_parts; i++)
		if (m->parts[i].id == id)
			return &m->parts[i];
	return NULL;
}

int manifest_copy(manifest *dst, const manifest *src)
{
	*dst = *src;
	dst->parts = NULL;
	dst->n_parts = dst->cap_parts = 0;
	for (uint32_t i = 0; i < src->n_parts; i++) {
		int rc = manifest_add(dst, &src->parts[i]);
		if (rc) {
			manifest_free(dst);
			return rc;
		}
	}
	return 0;
}

int manifest_save(const char *dir, manifest *m)
{
	size_t cap = 64 + 8 * (size_t)m->n_shards + 4;
	for (uint32_t i = 0; i < m->n_parts; i++)
		cap += 80 + strlen(m->parts[i].table);
	cap += 8;
	uint8_t *b = mem_alloc(cap), *p = b;
	if (!b)
		return err_set(-ENOMEM, "out of memory");
	m->generation++;
	memcpy(p, MAN_MAGIC, 8), p += 8;
	le_put32(p, MAN_VERSION), p += 4;
	le_put64(p, m->generation), p += 8;
	le_put64(p, m->next_part_id), p += 8;
	le_put64(p, m->rows_accepted), p += 8;
	le_put64(p, m->rows_written), p += 8;
	le_put32(p, m->n_shards), p += 4;
	for (uint32_t s = 0; s < m->n_shards; s++)
		le_put64(p, m->flushed_seq[s]), p += 8;
	le_put32(p, m->n_parts), p += 4;
	for (uint32_t i = 0; i < m->n_parts; i++) {
		const manifest_part *q = &m->parts[i];
		size_t tl = strlen(q->table);
		le_put64(p, q->id), p += 8;
		le_put32(p, q->shard), p += 4;
		le_put16(p, (uint16_t)tl), p += 2;
		memcpy(p, q->table, tl), p += tl;
		le_put64(p, (uint64_t)q->partition_start), p += 8;
		le_put64(p, q->rows), p += 8;
		le_put64(p, q->bytes), p += 8;
		le_put32(p, q->level), p += 4;
		le_put32(p, q->flags), p += 4;
		le_put64(p, (uint64_t)q->tmin), p += 8;
		le_put64(p, (uint64_t)q->tmax), p += 8;
		le_put64(p, q->rows_written), p += 8;
	}
	le_put64(p, XXH3_64bits(b, (size_t)(p - b))), p += 8;
	int rc = fio_write_atomic(dir, "MANIFEST", b, (size_t)(p - b));
	mem_free(b);
	return rc;
}

int manifest_load(const char *dir, manifest *m)
{
	memset(m, 0, sizeof *m);
	char path[PATH_MAX];
	snprintf(path, sizeof path, "%s/MANIFEST", dir);
	void *data;
	size_t len;
	int rc = fio_read_all(path, MAN_MAX_BYTES, &data, &len);
	if (rc == -ENOENT) {
		m->next_part_id = 1;
		return 0;
	}
	if (rc)
		return rc;
	const uint8_t *b = data, *p = b, *end = b + len;
#define NEED(n)                                                                                \
	do {                                                                                   \
		if ((size_t)(end - p) < (size_t)(n)) {                                         \
			rc = err_set(TALLY_ECORRUPT, "%s: truncated at byte %zu", path,        \
				     (size_t)(p - b));                                         \
			goto fail;                                                             \
		}                                                                              \
	} while (0)
	if (len < 8 + 4 + 8 || memcmp(b, MAN_MAGIC, 8)) {
		rc = err_set(TALLY_ECORRUPT, "%s: not a tally manifest", path);
		goto fail;
	}
	if (XXH3_64bits(b, len - 8) != le_get64(end - 8)) {
		rc = err_set(TALLY_ECORRUPT, "%s: checksum mismatch", path);
		goto fail;
	}
	end -= 8;
	p += 8;
	if (le_get32(p) != MAN_VERSION) {
		rc = err_set(TALLY_EVERSION, "%s: manifest version %u, this build reads %d", path,
			     le_get32(p), MAN_VERSION);
		goto fail;
	}
	p += 4;
	NEED(8 * 4 + 4);
	m->generation = le_get64(p), p += 8;
	m->next_part_id = le_get64(p), p += 8;
	m->rows_accepted = le_get64(p), p += 8;
	m->rows_written = le_get64(p), p += 8;
	m->n_shards = le_get32(p), p += 4;
	if (m->n_shards > MANIFEST_SHARDS_MAX) {
		rc = err_set(TALLY_ECORRUPT, "%s: %u shards", path, m->n_shards);
		goto fail;
	}
	NEED(8 * (size_t)m->n_shards + 4);
	for (uint32_t s = 0; s < m->n_shards; s++)
		m->flushed_seq[s] = le_get64(p), p += 8;
	uint32_t n = le_get32(p);
	p += 4;
	for (uint32_t i = 0; i < n; i++) {
		manifest_part q;
		NEED(14);
		q.id = le_get64(p), p += 8;
		q.shard = le_get32(p), p += 4;
		size_t tl = le_get16(p);
		p += 2;
		NEED(tl + 8 * 6 + 4 * 2);
		char name[256];
		if (tl == 0 || tl > 255) {
			rc = err_set(TALLY_ECORRUPT, "%s: part %u: bad table name length", path, i);
			goto fail;
		}
		memcpy(name, p, tl), name[tl] = 0, p += tl;
		q.table = name;
		q.partition_start = (int64_t)le_get64(p), p += 8;
		q.rows = le_get64(p), p += 8;
		q.bytes = le_get64(p), p += 8;
		q.level = le_get32(p), p += 4;
		q.flags = le_get32(p), p += 4;
		q.tmin = (int64_t)le_get64(p), p += 8;
		q.tmax = (int64_t)le_get64(p), p += 8;
		q.rows_written = le_get64(p), p += 8;
		if (q.shard >= m->n_shards) {
			rc = err_set(TALLY_ECORRUPT, "%s: part %016llx of shard %u, manifest has %u",
				     path, (unsigned long long)q.id, q.shard, m->n_shards);
			goto fail;
		}
		if (manifest_find(m, q.id) || q.id >= m->next_part_id) {
			rc = err_set(TALLY_ECORRUPT, "%s: part %016llx named twice or beyond next id",
				     path, (unsigned long long)q.id);
			goto fail;
		}
		if ((rc = manifest_add(m, &q)))
			goto fail;
	}
	if (p != end) {
		rc = err_set(TALLY_ECORRUPT, "%s: %zu trailing bytes", path, (size_t)(end - p));
		goto fail;
	}
	mem_free(data);
	return 0;
fail:
	mem_free(data);
	manifest_free(m);
	return rc;
#undef NEED
}
