/*
 * idem.c — the per-source table of applied batch labels, and DIR/LABELS.
 *
 * The one idea: per source, a sliding bitmap anchored at the highest
 * applied sequence. A new highest shifts the bitmap by the difference;
 * an older sequence within the window sets its bit. Which sequences end up
 * set does not depend on the order they were noted in, so WAL replay (one
 * shard after another), the saved file and live writes all agree.
 */
#include "idem.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <xxhash.h>

#include "err.h"
#include "fileio.h"
#include "mem.h"

#define LABELS_MAGIC   "TALLYLBL"
#define LABELS_VERSION 1u
#define LABELS_MAX     (UINT64_C(1) << 32) /* largest file read, bytes */

void idem_init(idem *id)
{
	memset(id, 0, sizeof *id);
	pthread_mutex_init(&id->mu, NULL);
	idem_configure(id, 0, 0);
}

void idem_configure(idem *id, uint64_t window, int64_t expiry_ns)
{
	if (window == 0)
		window = IDEM_WINDOW_DEFAULT;
	if (window > IDEM_WINDOW_MAX)
		window = IDEM_WINDOW_MAX;
	id->words = (uint32_t)((window + 63) / 64);
	id->expiry_ns = expiry_ns ? expiry_ns : IDEM_EXPIRY_DEFAULT;
}

static void free_sources(strmap *m)
{
	for (uint32_t i = 0; i < m->cap; i++)
		if (m->slots[i].key)
			mem_free(m->slots[i].value);
	strmap_free(m);
}

void idem_free(idem *id)
{
	free_sources(&id->map);
	pthread_mutex_destroy(&id->mu);
}

static idem_source *find(const idem *id, const char *src, uint32_t len)
{
	return strmap_get(&id->map, src, len, strmap_hash(src, len));
}

int idem_high(const idem *id, const char *src, uint32_t len, uint64_t *high)
{
	const idem_source *s = find(id, src, len);
	*high = s ? s->high : 0;
	return s != NULL;
}

static int bit_get(const idem_source *s, uint64_t i)
{
	return (int)((s->bits[i / 64] >> (i % 64)) & 1);
}

enum idem_state idem_check(const idem *id, const char *src, uint32_t len, uint64_t seq,
			   uint64_t *high)
{
	const idem_source *s = find(id, src, len);
	*high = s ? s->high : 0;
	if (!s || seq > s->high)
		return IDEM_NEW;
	uint64_t d = s->high - seq;
	if (d >= (uint64_t)id->words * 64)
		return IDEM_OLD;
	return bit_get(s, d) ? IDEM_DUP : IDEM_NEW;
}

/* Moves the window d sequences up: bit i becomes bit i + d. */
static void shift(uint64_t *bits, uint32_t words, uint64_t d)
{
	if (d >= (uint64_t)words * 64) {
		memset(bits, 0, words * sizeof *bits);
		return;
	}
	uint32_t wd = (uint32_t)(d / 64), bd = (uint32_t)(d % 64);
	for (uint32_t i = words; i-- > 0;) {
		uint64_t v = 0;
		if (i >= wd) {
			v = bits[i - wd] << bd;
			if (bd && i > wd)
				v |= bits[i - wd - 1] >> (64 - bd);
		}
		bits[i] = v;
	}
}

static idem_source *source_new(uint32_t words, const char *src, uint32_t len)
{
	idem_source *s = mem_calloc(1, sizeof *s + words * sizeof(uint64_t) + len + 1);
	if (!s)
		return NULL;
	s->len = len;
	s->name = (char *)(s->bits + words);
	memcpy(s->name, src, len);
	return s;
}

int idem_note(idem *id, const char *src, uint32_t len, uint64_t seq, int64_t now_ns)
{
	idem_source *s = find(id, src, len);
	if (!s) {
		if (!(s = source_new(id->words, src, len)))
			return err_set(-ENOMEM, "out of memory");
		if (strmap_put(&id->map, s->name, len, strmap_hash(s->name, len), s)) {
			mem_free(s);
			return err_set(-ENOMEM, "out of memory");
		}
		s->high = seq;
		s->bits[0] = 1;
	} else if (seq > s->high) {
		shift(s->bits, id->words, seq - s->high);
		s->high = seq;
		s->bits[0] |= 1;
	} else if (s->high - seq < (uint64_t)id->words * 64) {
		uint64_t d = s->high - seq;
		s->bits[d / 64] |= UINT64_C(1) << (d % 64);
	}
	if (now_ns > s->last_ns)
		s->last_ns = now_ns;
	return 0;
}

uint64_t idem_bytes(const idem *id)
{
	uint64_t b = strmap_bytes(&id->map);
	for (uint32_t i = 0; i < id->map.cap; i++)
		if (id->map.slots[i].key)
			b += sizeof(idem_source) + id->words * 8 + id->map.slots[i].len + 1;
	return b;
}

/* ---------------------------------------------------------------- file */

/* A source's record: u16 length, name, u64 high, i64 last_ns, the window. */
static size_t record_bytes(uint32_t words, uint32_t len)
{
	return 2 + len + 16 + (size_t)words * 8;
}

static int expired(const idem *id, const idem_source *s, int64_t now_ns)
{
	return now_ns - s->last_ns > id->expiry_ns;
}

int idem_encode(idem *id, int64_t now_ns, char **out, size_t *out_len)
{
	/* expiry first: the survivors move to a fresh map (strmap has no
	 * delete), the silent ones are freed */
	if (id->expiry_ns >= 0) {
		strmap keep = {0};
		for (uint32_t i = 0; i < id->map.cap; i++) {
			const strmap_slot *sl = &id->map.slots[i];
			if (sl->key && !expired(id, sl->value, now_ns) &&
			    strmap_put(&keep, sl->key, sl->len, sl->hash, sl->value)) {
				strmap_free(&keep);
				return err_set(-ENOMEM, "out of memory expiring labels");
			}
		}
		for (uint32_t i = 0; i < id->map.cap; i++) {
			const strmap_slot *sl = &id->map.slots[i];
			if (sl->key && expired(id, sl->value, now_ns)) {
				mem_free(sl->value);
				id->expired++;
			}
		}
		strmap_free(&id->map);
		id->map = keep;
	}
	size_t len = 24 + 8;
	for (uint32_t i = 0; i < id->map.cap; i++)
		if (id->map.slots[i].key)
			len += record_bytes(id->words, id->map.slots[i].len);
	uint8_t *buf = mem_alloc(len), *p = buf;
	if (!buf)
		return err_set(-ENOMEM, "out of memory saving labels");
	memcpy(p, LABELS_MAGIC, 8);
	le_put32(p + 8, LABELS_VERSION);
	le_put32(p + 12, id->words);
	le_put64(p + 16, id->map.n);
	p += 24;
	for (uint32_t i = 0; i < id->map.cap; i++) {
		const idem_source *s = id->map.slots[i].key ? id->map.slots[i].value : NULL;
		if (!s)
			continue;
		le_put16(p, (uint16_t)s->len);
		memcpy(p + 2, s->name, s->len);
		p += 2 + s->len;
		le_put64(p, s->high);
		le_put64(p + 8, (uint64_t)s->last_ns);
		p += 16;
		for (uint32_t w = 0; w < id->words; w++, p += 8)
			le_put64(p, s->bits[w]);
	}
	le_put64(p, XXH3_64bits(buf, (size_t)(p - buf)));
	*out = (char *)buf;
	*out_len = len;
	return 0;
}

#define LOAD_FAIL(...)                                                          \
	do {                                                                    \
		rc = err_set(TALLY_ECORRUPT, "%s/" IDEM_FILE ": " __VA_ARGS__); \
		goto out;                                                       \
	} while (0)

int idem_load(idem *id, const char *dir)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/" IDEM_FILE, dir);
	void *data;
	size_t len;
	int rc = fio_read_all(path, LABELS_MAX, &data, &len);
	if (rc == -ENOENT) {
		err_clear();
		return 0;
	}
	if (rc)
		return rc;
	const uint8_t *b = data, *p = b + 24, *end = b + len - 8;
	if (len < 32 || memcmp(b, LABELS_MAGIC, 8))
		LOAD_FAIL("not a labels file", dir);
	if (le_get64(end) != XXH3_64bits(b, len - 8))
		LOAD_FAIL("checksum mismatch", dir);
	if (le_get32(b + 8) != LABELS_VERSION) {
		rc = err_set(TALLY_EVERSION, "%s/" IDEM_FILE ": version %u", dir, le_get32(b + 8));
		goto out;
	}
	uint32_t words = le_get32(b + 12);
	uint64_t n = le_get64(b + 16);
	if (words == 0 || words > IDEM_WINDOW_MAX / 64)
		LOAD_FAIL("window of %u words out of range", dir, words);
	for (uint64_t i = 0; i < n; i++) {
		if (end - p < 2)
			LOAD_FAIL("byte %zu: truncated source", dir, (size_t)(p - b));
		uint32_t sl = le_get16(p);
		if (sl == 0 || (size_t)(end - p) < record_bytes(words, sl))
			LOAD_FAIL("byte %zu: bad source record", dir, (size_t)(p - b));
		const char *name = (const char *)p + 2;
		p += 2 + sl;
		uint64_t high = le_get64(p);
		int64_t last = (int64_t)le_get64(p + 8);
		p += 16;
		if ((rc = idem_note(id, name, sl, high, last)))
			goto out;
		idem_source *s = find(id, name, sl);
		if (s->high == high && words == id->words) {
			for (uint32_t w = 0; w < words; w++)
				s->bits[w] |= le_get64(p + w * 8);
			p += (size_t)words * 8;
			continue;
		}
		/* a window saved with another size: each set bit is an applied
		 * sequence, noted one by one */
		for (uint64_t bit = 1; bit < (uint64_t)words * 64 && bit <= high; bit++)
			if ((le_get64(p + bit / 64 * 8) >> (bit % 64)) & 1)
				if ((rc = idem_note(id, name, sl, high - bit, last)))
					goto out;
		p += (size_t)words * 8;
	}
	if (p != end)
		LOAD_FAIL("byte %zu: trailing bytes", dir, (size_t)(p - b));
out:
	mem_free(data);
	return rc;
}
