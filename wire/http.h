/*
 * http.h — a small strict HTTP/1.1 request parser, chunked and gzip body
 * decoding, query strings (internal to wire/; docs/http.md).
 *
 * Nothing here allocates except http_gunzip, and nothing keeps state
 * between calls except http_chunked: httpd.c owns the buffers.
 */
#ifndef TALLY_HTTP_H
#define TALLY_HTTP_H

#include <stddef.h>
#include <stdint.h>

#define HTTP_MAX_HEADERS   64   /* more: 431 */
#define HTTP_MAX_REQ_LINE  8192 /* a longer request line: 414 */
#define HTTP_MAX_CHUNK_HEX 15   /* hex digits of a chunk size (< 2^60) */

typedef struct http_str {
	const char *p;
	size_t n;
} http_str;

typedef struct http_req {
	http_str method, target, path, query; /* query: after '?', without it */
	unsigned minor;                       /* HTTP/1.minor: 0 or 1 */
	unsigned n_headers;
	http_str name[HTTP_MAX_HEADERS], value[HTTP_MAX_HEADERS];
	/* What the headers say, checked. */
	int64_t content_length; /* -1: none */
	unsigned chunked : 1, keep_alive : 1, expect_continue : 1, gzip : 1;
	http_str authorization; /* n == 0: none */
} http_req;

/*
 * The length of the head at the start of buf[0, n), through its blank
 * line ("\r\n\r\n"); 0 while incomplete; or minus an HTTP status when a
 * limit is already passed: -414 (request line longer than
 * HTTP_MAX_REQ_LINE), -431 (head longer than max_head).
 */
long http_head_len(const char *buf, size_t n, size_t max_head);

/*
 * Parses a complete head buf[0, n) (as http_head_len measured it). Returns
 * 0, or the HTTP status to answer (400, 431, 501 for a transfer coding
 * other than chunked, 505 for a version other than 1.0 and 1.1) with *why
 * a static message. The strings in *r point into buf.
 */
int http_parse_head(const char *buf, size_t n, http_req *r, const char **why);

/* The value of header name (case-insensitive), or {NULL, 0}. */
http_str http_header(const http_req *r, const char *name);

/* Chunked transfer coding, decoded incrementally and in place. */
typedef struct http_chunked {
	int state;
	uint64_t left; /* data bytes left in the current chunk */
	unsigned digits;
	size_t line; /* bytes of the current size or trailer line */
} http_chunked;

/*
 * Decodes buf[from, n): the data is moved down to buf[*out, ...) (*out
 * grows; *out <= from, and decoding never writes past what it has read,
 * so the body is decoded in place). Returns where reading stopped (n
 * unless the body ended there), or -1 with *why set on a malformed chunk.
 * *done is set at the end of the body (the bytes after it are the next
 * request's).
 */
long http_chunked_feed(http_chunked *ck, char *buf, size_t from, size_t n, size_t *out, int *done,
		       const char **why);

/*
 * Decompresses the gzip data in[0, n) (one or more members) into *out
 * (malloc'ed, grown as needed; *out_n bytes; *cap its capacity; a buffer
 * passed in is reused). Returns 0, 413 when the result would pass max
 * bytes, or 400 for corrupt or truncated data (*why says which).
 */
int http_gunzip(const char *in, size_t n, size_t max, char **out, size_t *out_n, size_t *cap,
		const char **why);

/*
 * The query parameter name, %-decoded ('+' is a space) into out[0, cap)
 * and NUL-terminated. Returns its length, -1 when absent, -2 when it is
 * malformed or longer than cap - 1.
 */
long http_query_get(http_str query, const char *name, char *out, size_t cap);

/* Base64 (RFC 4648, padded) into out[0, cap); returns the length or -1. */
long http_base64_decode(const char *in, size_t n, char *out, size_t cap);

#endif
