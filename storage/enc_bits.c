/*
 * enc_bits.c — byte-level helpers the encodings share: growable buffers,
 * varints, and the codec context's scratch slots.
 *
 * The bit writer and reader themselves are inline in enc.h; the one idea
 * there is that the reader shifts in zeros past the end of its input and
 * counts them, so a decoder can run its loops without a bounds check per
 * bit and ask once at the end whether it read past the stream.
 */
#include "enc.h"

#include <errno.h>

#include "mem.h"

int codec_buf_reserve(codec_buf *b, size_t extra)
{
	/* allocates even for 0 bytes: callers may then pass b->p to memcpy */
	if (b->p && extra <= b->cap - b->len)
		return 0;
	if (extra > SIZE_MAX / 2 - b->len)
		return -ENOMEM;
	size_t cap = b->cap ? b->cap : 256;
	while (cap - b->len < extra)
		cap *= 2;
	uint8_t *p = mem_realloc(b->p, cap);
	if (!p)
		return -ENOMEM;
	b->p = p;
	b->cap = cap;
	return 0;
}

void codec_buf_free(codec_buf *b)
{
	if (!b)
		return;
	mem_free(b->p);
	b->p = NULL;
	b->len = b->cap = 0;
}

int enc_buf_varint(codec_buf *b, uint64_t v)
{
	if (codec_buf_reserve(b, 10))
		return -ENOMEM;
	b->len += enc_varint_put(b->p + b->len, v);
	return 0;
}

int enc_buf_put(codec_buf *b, const void *p, size_t n)
{
	if (codec_buf_reserve(b, n))
		return -ENOMEM;
	if (n)
		memcpy(b->p + b->len, p, n);
	b->len += n;
	return 0;
}

int enc_varint_get(const uint8_t *p, size_t len, size_t *pos, uint64_t *v, const char *what)
{
	uint64_t x = 0;
	size_t i = *pos;
	for (unsigned shift = 0;; shift += 7) {
		if (i >= len)
			return ENC_CORRUPT("%s: truncated varint at byte %zu", what, i);
		uint8_t c = p[i++];
		if (shift == 63 && c > 1)
			return ENC_CORRUPT("%s: varint over 64 bits at byte %zu", what, i - 1);
		x |= (uint64_t)(c & 0x7f) << shift;
		if (!(c & 0x80))
			break;
	}
	*pos = i;
	*v = x;
	return 0;
}

void *enc_scratch(codec_ctx *cx, int slot, size_t bytes)
{
	if (bytes <= cx->scratch_cap[slot])
		return cx->scratch[slot];
	size_t cap = cx->scratch_cap[slot] ? cx->scratch_cap[slot] : 4096;
	while (cap < bytes)
		cap *= 2;
	void *p = mem_realloc(cx->scratch[slot], cap);
	if (!p)
		return NULL;
	cx->scratch[slot] = p;
	cx->scratch_cap[slot] = cap;
	return p;
}
