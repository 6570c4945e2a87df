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
 *
 * Version 2 (tiering) adds per part u32 tier and, for a remote part, u16
 * object key length, the key, u64 object xxh3, i64 tiered_at; and after the
 * parts u32 n_gc then n_gc x (u16 length, key) of objects to delete. A
 * manifest without remote parts or objects to delete is still written as
 * version 1, so a store that never tiers stays readable by older builds.
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
#include "tally_base.h"

#define MAN_MAGIC     "TALLYMAN"
#define MAN_VERSION   2 /* the newest this build reads and writes */
#define MAN_MAX_BYTES (1u << 30)

void manifest_part_name(uint64_t id, char *buf, size_t cap)
{
	snprintf(buf, cap, "parts/%016llx.part", (unsigned long long)id);
}

void manifest_free(manifest *m)
{
	for (uint32_t i = 0; i < m->n_parts; i++) {
		mem_free(m->parts[i].table);
		mem_free(m->parts[i].object);
	}
	mem_free(m->parts);
	for (uint32_t i = 0; i < m->n_gc; i++)
		mem_free(m->gc[i]);
	mem_free(m->gc);
	memset(m, 0, sizeof *m);
}

int manifest_gc_add(manifest *m, const char *key)
{
	for (uint32_t i = 0; i < m->n_gc; i++)
		if (!strcmp(m->gc[i], key))
			return 0;
	if (strlen(key) > UINT16_MAX || m->n_gc >= MANIFEST_PARTS_MAX)
		return err_set(TALLY_ELIMIT, "manifest: object key or list too long");
	if (m->n_gc == m->cap_gc) {
		uint32_t nc = m->cap_gc ? m->cap_gc * 2 : 8;
		char **ng = mem_realloc(m->gc, nc * sizeof *ng);
		if (!ng)
			return err_set(-ENOMEM, "out of memory");
		m->gc = ng;
		m->cap_gc = nc;
	}
	if (!(m->gc[m->n_gc] = mem_strndup(key, strlen(key))))
		return err_set(-ENOMEM, "out of memory");
	m->n_gc++;
	return 0;
}

void manifest_gc_remove(manifest *m, const char *key)
{
	for (uint32_t i = 0; i < m->n_gc; i++)
		if (!strcmp(m->gc[i], key)) {
			mem_free(m->gc[i]);
			memmove(&m->gc[i], &m->gc[i + 1], (m->n_gc - i - 1) * sizeof *m->gc);
			m->n_gc--;
			return;
		}
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
	c.object = p->object ? mem_strndup(p->object, strlen(p->object)) : NULL;
	if (!c.table || (p->object && !c.object)) {
		mem_free(c.table);
		mem_free(c.object);
		return err_set(-ENOMEM, "out of memory");
	}
	m->parts[m->n_parts++] = c;
	return 0;
}

int manifest_remove(manifest *m, uint64_t id)
{
	for (uint32_t i = 0; i < m->n_parts; i++)
		if (m->parts[i].id == id) {
			mem_free(m->parts[i].table);
			mem_free(m->parts[i].object);
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
	dst->gc = NULL;
	dst->n_gc = dst->cap_gc = 0;
	for (uint32_t i = 0; i < src->n_parts; i++) {
		int rc = manifest_add(dst, &src->parts[i]);
		if (rc) {
			manifest_free(dst);
			return rc;
		}
	}
	for (uint32_t i = 0; i < src->n_gc; i++) {
		int rc = manifest_gc_add(dst, src->gc[i]);
		if (rc) {
			manifest_free(dst);
			return rc;
		}
	}
	return 0;
}

int manifest_save(const char *dir, manifest *m)
{
	/* version 1 unless something needs version 2 */
	uint32_t version = m->n_gc ? 2 : 1;
	size_t cap = 64 + 8 * (size_t)m->n_shards + 4 + 4;
	for (uint32_t i = 0; i < m->n_parts; i++) {
		cap += 80 + strlen(m->parts[i].table) + 4 + 2 + 16;
		if (m->parts[i].tier == MTIER_REMOTE) {
			if (!m->parts[i].object || strlen(m->parts[i].object) > UINT16_MAX)
				return err_set(TALLY_EINVAL, "manifest: remote part without a key");
			cap += strlen(m->parts[i].object);
			version = 2;
		}
	}
	for (uint32_t i = 0; i < m->n_gc; i++)
		cap += 2 + strlen(m->gc[i]);
	cap += 8;
	uint8_t *b = mem_alloc(cap), *p = b;
	if (!b)
		return err_set(-ENOMEM, "out of memory");
	m->generation++;
	memcpy(p, MAN_MAGIC, 8), p += 8;
	le_put32(p, version), p += 4;
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
		if (version < 2)
			continue;
		le_put32(p, q->tier), p += 4;
		if (q->tier == MTIER_REMOTE) {
			size_t kl = strlen(q->object);
			le_put16(p, (uint16_t)kl), p += 2;
			memcpy(p, q->object, kl), p += kl;
			le_put64(p, q->object_sum), p += 8;
			le_put64(p, (uint64_t)q->tiered_at), p += 8;
		}
	}
	if (version >= 2) {
		le_put32(p, m->n_gc), p += 4;
		for (uint32_t i = 0; i < m->n_gc; i++) {
			size_t kl = strlen(m->gc[i]);
			le_put16(p, (uint16_t)kl), p += 2;
			memcpy(p, m->gc[i], kl), p += kl;
		}
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
#define NEED(n)                                                                         \
	do {                                                                            \
		if ((size_t)(end - p) < (size_t)(n)) {                                  \
			rc = err_set(TALLY_ECORRUPT, "%s: truncated at byte %zu", path, \
				     (size_t)(p - b));                                  \
			goto fail;                                                      \
		}                                                                       \
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
	uint32_t version = le_get32(p);
	if (version < 1 || version > MAN_VERSION) {
		rc = err_set(TALLY_EVERSION, "%s: manifest version %u, this build reads 1 to %d",
			     path, version, MAN_VERSION);
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
		memset(&q, 0, sizeof q);
		char key[UINT16_MAX + 1];
		NEED(14);
		q.id = le_get64(p), p += 8;
		q.shard = le_get32(p), p += 4;
		size_t tl = le_get16(p);
		p += 2;
		NEED(tl + 8 * 6 + 4 * 2);
		char name[256];
		if (tl == 0 || tl > 255 || memchr(p, 0, tl)) {
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
		if (version >= 2) {
			NEED(4);
			q.tier = le_get32(p), p += 4;
			if (q.tier > MTIER_REMOTE) {
				rc = err_set(TALLY_ECORRUPT, "%s: part %u: unknown tier state %u",
					     path, i, q.tier);
				goto fail;
			}
			if (q.tier == MTIER_REMOTE) {
				NEED(2);
				size_t kl = le_get16(p);
				p += 2;
				NEED(kl + 16);
				if (kl == 0 || memchr(p, 0, kl)) {
					rc = err_set(TALLY_ECORRUPT, "%s: part %u: bad object key",
						     path, i);
					goto fail;
				}
				memcpy(key, p, kl), key[kl] = 0, p += kl;
				q.object = key;
				q.object_sum = le_get64(p), p += 8;
				q.tiered_at = (int64_t)le_get64(p), p += 8;
			}
		}
		if (q.shard >= m->n_shards) {
			rc = err_set(TALLY_ECORRUPT,
				     "%s: part %016llx of shard %u, manifest has %u", path,
				     (unsigned long long)q.id, q.shard, m->n_shards);
			goto fail;
		}
		if (manifest_find(m, q.id) || q.id >= m->next_part_id) {
			rc = err_set(TALLY_ECORRUPT,
				     "%s: part %016llx named twice or beyond next id", path,
				     (unsigned long long)q.id);
			goto fail;
		}
		if ((rc = manifest_add(m, &q)))
			goto fail;
	}
	if (version >= 2) {
		NEED(4);
		uint32_t ng = le_get32(p);
		p += 4;
		for (uint32_t i = 0; i < ng; i++) {
			char key[UINT16_MAX + 1];
			NEED(2);
			size_t kl = le_get16(p);
			p += 2;
			NEED(kl);
			if (!kl || memchr(p, 0, kl)) {
				rc = err_set(TALLY_ECORRUPT, "%s: bad object key to delete", path);
				goto fail;
			}
			memcpy(key, p, kl), key[kl] = 0, p += kl;
			if ((rc = manifest_gc_add(m, key))) {
				goto fail;
			}
		}
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
