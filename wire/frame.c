/*
 * frame.c — cutting a line-protocol byte stream into whole records.
 *
 * The one idea: a '\n' that follows neither a backslash nor "\\\r" always
 * ends a record (a raw newline ends even an unterminated string), so the
 * common case needs no scan at all: memrchr finds the last '\n', one look
 * at the byte before it proves it is a record end. Only when that byte is
 * a backslash (a string may continue past an escaped newline) do we walk
 * the records from the start with the parser's structural rules, which
 * this file mirrors from engine/lp.c (resync): the measurement and tag
 * section ends at an unescaped ' ', a field key at '=', ',' or ' ', a
 * quoted value at an unescaped '"', an unquoted value at ',', ' ' or '\t';
 * comments and blank lines end at their first '\n'. tests/fuzz/fuzz_frame.c
 * checks these boundaries against the parser's own on random input.
 */
#include "frame.h"

#include <string.h>

/* Escapable bytes of keys (tag keys, tag values, field keys). */
static int frame_key_esc(char c)
{
	return c == ' ' || c == ',' || c == '=';
}

size_t frame_record_end(const char *buf, size_t len)
{
	const char *p = buf, *end = buf + len;
	while (p < end && (*p == ' ' || *p == '\t' || *p == '\r'))
		p++;
	if (p == end || *p == '\n' || *p == '#') {
		const char *nl = p < end ? memchr(p, '\n', (size_t)(end - p)) : NULL;
		return nl ? (size_t)(nl - buf) : len;
	}
	/* Measurement and tags: up to an unescaped ' '. */
	for (;;) {
		if (p == end)
			return len;
		if (*p == '\n')
			return (size_t)(p - buf);
		if (*p == ' ')
			break;
		p += (*p == '\\' && p + 1 < end && p[1] == ' ') ? 2 : 1;
	}
	while (p < end && (*p == ' ' || *p == '\t'))
		p++;
	/* Fields: key=value[,key=value...]. */
	for (;;) {
		for (;;) {
			if (p == end)
				return len;
			char c = *p;
			if (c == '\n')
				return (size_t)(p - buf);
			if (c == '=' || c == ',' || c == ' ')
				break;
			p += (c == '\\' && p + 1 < end && frame_key_esc(p[1])) ? 2 : 1;
		}
		if (*p == ',') {
			p++;
			continue;
		}
		if (*p == ' ')
			break;
		p++; /* '=' */
		if (p < end && *p == '"') {
			for (p++;;) {
				if (p == end)
					return len;
				char c = *p;
				if (c == '\n')
					return (size_t)(p - buf);
				if (c == '"') {
					p++;
					break;
				}
				if (c == '\\' && p + 1 < end) {
					if (p[1] == '"' || p[1] == '\\' || p[1] == '\n') {
						p += 2;
						continue;
					}
					if (p[1] == '\r' && p + 2 < end && p[2] == '\n') {
						p += 3;
						continue;
					}
				}
				p++;
			}
		}
		for (;;) { /* the rest of the value */
			if (p == end)
				return len;
			char c = *p;
			if (c == '\n')
				return (size_t)(p - buf);
			if (c == ',' || c == ' ' || c == '\t')
				break;
			p++;
		}
		if (*p != ',')
			break;
		p++;
	}
	const char *nl = memchr(p, '\n', (size_t)(end - p));
	return nl ? (size_t)(nl - buf) : len;
}

int frame_nl_certain(const char *buf, size_t i, char prev)
{
	char b1 = i >= 1 ? buf[i - 1] : prev;
	if (b1 == '\\')
		return 0;
	if (b1 == '\r') {
		char b2 = i >= 2   ? buf[i - 2]
			  : i == 1 ? prev
				   : '\\'; /* unknown: assume the worst */
		if (b2 == '\\')
			return 0;
	}
	return 1;
}

/* The slow path: walk whole records from the start. */
static size_t frame_walk(const char *buf, size_t len)
{
	size_t pos = 0;
	while (pos < len) {
		size_t e = frame_record_end(buf + pos, len - pos);
		if (e == len - pos)
			break;
		pos += e + 1;
	}
	return pos;
}

size_t frame_cut(const char *buf, size_t len)
{
	const char *nl = len ? memrchr(buf, '\n', len) : NULL;
	if (!nl)
		return 0;
	size_t i = (size_t)(nl - buf);
	if (frame_nl_certain(buf, i, 0))
		return i + 1;
	return frame_walk(buf, len);
}

/* 1 when offset q (buf[q-1] == '\n') starts a record. */
static int frame_is_record_start(const char *buf, size_t len, size_t q)
{
	if (frame_nl_certain(buf, q - 1, 0))
		return 1;
	/* Rare: walk the records up to q and see whether one starts there. */
	size_t pos = 0;
	while (pos < q) {
		size_t e = frame_record_end(buf + pos, len - pos);
		if (e == len - pos)
			return 0;
		pos += e + 1;
	}
	return pos == q;
}

size_t frame_find_cmd(const char *buf, size_t len)
{
	size_t q = 0;
	while (q < len) {
		const char *h = memchr(buf + q, '#', len - q);
		if (!h)
			return len;
		q = (size_t)(h - buf);
		if (q + 1 < len && buf[q + 1] == '!' &&
		    (q == 0 || (buf[q - 1] == '\n' && frame_is_record_start(buf, len, q))))
			return q;
		q++;
	}
	return len;
}
