/*
 * http.c — a small strict HTTP/1.1 request parser: the head, chunked
 * bodies, gzip bodies, query strings, base64.
 *
 * The one idea: refuse rather than guess. Every place where two readers
 * of a request could disagree about where it ends (the smuggling family:
 * Content-Length beside Transfer-Encoding, two different Content-Lengths,
 * a bare LF, a folded header line, whitespace before the colon, a chunk
 * size with junk) is a 400, so tally never reads a body differently from
 * a proxy in front of it. Lengths from the network are checked against a
 * limit before they are used: the head against max_head, the request line
 * against HTTP_MAX_REQ_LINE, a chunk size against HTTP_MAX_CHUNK_HEX
 * digits (the caller bounds the body), a gzip result against max.
 *
 * Request head, byte by byte (RFC 9112):
 *   METHOD SP target SP "HTTP/1." DIGIT CRLF
 *   *( name ":" OWS value OWS CRLF )
 *   CRLF
 * METHOD is upper-case letters; target starts with '/' and holds no
 * control byte, space or '#'; name is an RFC 9110 token; value holds
 * visible bytes, spaces and tabs. Chunked body: hex size [";" ext] CRLF,
 * data, CRLF, ..., "0" CRLF, trailer lines, CRLF.
 */
#include "http.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>

long http_head_len(const char *buf, size_t n, size_t max_head)
{
	const char *e = memmem(buf, n, "\r\n\r\n", 4);
	if (e) {
		size_t len = (size_t)(e - buf) + 4;
		const char *nl = memchr(buf, '\n', len);
		if (nl && (size_t)(nl - buf) > HTTP_MAX_REQ_LINE + 1)
			return -414;
		return len > max_head ? -431 : (long)len;
	}
	size_t k = n < HTTP_MAX_REQ_LINE + 2 ? n : HTTP_MAX_REQ_LINE + 2;
	if (n > HTTP_MAX_REQ_LINE + 1 && !memchr(buf, '\n', k))
		return -414;
	return n > max_head ? -431 : 0;
}

static int http_tchar(unsigned char c)
{
	/* RFC 9110 token: visible ASCII but delimiters */
	return c > 32 && c < 127 && !strchr("\"(),/:;<=>?@[\\]{}", c);
}

static int http_eq(http_str s, const char *lit)
{
	size_t n = strlen(lit);
	return s.n == n && !strncasecmp(s.p, lit, n);
}

http_str http_header(const http_req *r, const char *name)
{
	for (unsigned i = 0; i < r->n_headers; i++)
		if (http_eq(r->name[i], name))
			return r->value[i];
	return (http_str){NULL, 0};
}

/* Whether a comma-separated header value lists lit (case-insensitive). */
static int http_list_has(http_str v, const char *lit)
{
	size_t i = 0;
	while (i < v.n) {
		size_t j = i;
		while (j < v.n && v.p[j] != ',')
			j++;
		size_t a = i, b = j;
		while (a < b && (v.p[a] == ' ' || v.p[a] == '\t'))
			a++;
		while (b > a && (v.p[b - 1] == ' ' || v.p[b - 1] == '\t'))
			b--;
		if (http_eq((http_str){v.p + a, b - a}, lit))
			return 1;
		i = j + 1;
	}
	return 0;
}

static int http_fail(const char **why, const char *msg, int status)
{
	*why = msg;
	return status;
}

/* The request line buf[0, n) (CRLF excluded). */
static int http_request_line(const char *buf, size_t n, http_req *r, const char **why)
{
	size_t i = 0;
	while (i < n && buf[i] >= 'A' && buf[i] <= 'Z')
		i++;
	if (i == 0 || i > 16 || i >= n || buf[i] != ' ')
		return http_fail(why,
				 "malformed request line: expected METHOD SP target SP "
				 "HTTP/1.x",
				 400);
	r->method = (http_str){buf, i};
	size_t t = ++i;
	while (i < n && buf[i] != ' ') {
		unsigned char c = (unsigned char)buf[i];
		if (c <= 32 || c == 127 || c == '#')
			return http_fail(why, "malformed request target", 400);
		i++;
	}
	if (i == t || buf[t] != '/' || i >= n)
		return http_fail(why, "malformed request line: the target must start with '/'",
				 400);
	r->target = (http_str){buf + t, i - t};
	const char *q = memchr(r->target.p, '?', r->target.n);
	r->path = (http_str){r->target.p, q ? (size_t)(q - r->target.p) : r->target.n};
	r->query = q ? (http_str){q + 1, r->target.n - r->path.n - 1} : (http_str){NULL, 0};
	i++;
	if (n - i != 8 || memcmp(buf + i, "HTTP/", 5) || buf[i + 6] != '.' || buf[i + 5] < '0' ||
	    buf[i + 5] > '9' || buf[i + 7] < '0' || buf[i + 7] > '9')
		return http_fail(why, "malformed request line: expected HTTP/1.x at its end", 400);
	if (buf[i + 5] != '1' || buf[i + 7] > '1')
		return http_fail(why, "HTTP version not supported (1.0 and 1.1 are)", 505);
	r->minor = (unsigned)(buf[i + 7] - '0');
	return 0;
}

/* Digits only, at most 18 of them: fits int64_t. */
static int64_t http_content_length(http_str v)
{
	if (v.n == 0 || v.n > 18)
		return -1;
	int64_t x = 0;
	for (size_t i = 0; i < v.n; i++) {
		if (v.p[i] < '0' || v.p[i] > '9')
			return -1;
		x = x * 10 + (v.p[i] - '0');
	}
	return x;
}

/* What the headers say about the body and the connection. */
static int http_semantics(http_req *r, const char **why)
{
	int has_te = 0, host = 0;
	r->content_length = -1;
	r->keep_alive = r->minor >= 1;
	for (unsigned i = 0; i < r->n_headers; i++) {
		http_str k = r->name[i], v = r->value[i];
		if (http_eq(k, "content-length")) {
			int64_t x = http_content_length(v);
			if (x < 0)
				return http_fail(why, "Content-Length is not a number", 400);
			if (r->content_length >= 0 && r->content_length != x)
				return http_fail(why, "two different Content-Lengths", 400);
			r->content_length = x;
		} else if (http_eq(k, "transfer-encoding")) {
			if (has_te || !http_eq(v, "chunked"))
				return http_fail(why, "Transfer-Encoding other than chunked", 501);
			has_te = 1;
		} else if (http_eq(k, "connection")) {
			if (http_list_has(v, "close"))
				r->keep_alive = 0;
			else if (http_list_has(v, "keep-alive"))
				r->keep_alive = 1;
		} else if (http_eq(k, "expect")) {
			if (!http_eq(v, "100-continue"))
				return http_fail(why, "Expect other than 100-continue", 417);
			r->expect_continue = 1;
		} else if (http_eq(k, "content-encoding")) {
			if (http_eq(v, "gzip") || http_eq(v, "x-gzip"))
				r->gzip = 1;
			else if (!http_eq(v, "identity"))
				return http_fail(
					why, "Content-Encoding other than gzip or identity", 415);
		} else if (http_eq(k, "authorization")) {
			r->authorization = v;
		} else if (http_eq(k, "host")) {
			if (host)
				return http_fail(why, "two Host headers", 400);
			host = 1;
		}
	}
	if (has_te && r->content_length >= 0)
		return http_fail(why, "both Content-Length and Transfer-Encoding", 400);
	if (has_te && r->minor == 0)
		return http_fail(why, "Transfer-Encoding in an HTTP/1.0 request", 400);
	if (!host && r->minor >= 1)
		return http_fail(why, "HTTP/1.1 request without Host", 400);
	r->chunked = (unsigned)has_te;
	return 0;
}

int http_parse_head(const char *buf, size_t n, http_req *r, const char **why)
{
	memset(r, 0, sizeof *r);
	if (n < 4 || memcmp(buf + n - 4, "\r\n\r\n", 4))
		return http_fail(why, "incomplete head", 400);
	const char *e = buf + n - 2; /* the final CRLF */
	const char *nl = memchr(buf, '\n', n);
	if (!nl || nl == buf || nl[-1] != '\r')
		return http_fail(why, "lines must end with CRLF", 400);
	int rc = http_request_line(buf, (size_t)(nl - buf) - 1, r, why);
	if (rc)
		return rc;
	for (const char *p = nl + 1; p < e;) {
		const char *end = memchr(p, '\n', (size_t)(e - p) + 1);
		if (!end || end[-1] != '\r' || end - 1 < p)
			return http_fail(why, "header lines must end with CRLF", 400);
		const char *le = end - 1; /* the CR */
		if (*p == ' ' || *p == '\t')
			return http_fail(why, "folded header line (obsolete line folding)", 400);
		const char *c = p;
		while (c < le && http_tchar((unsigned char)*c))
			c++;
		if (c == p || c == le || *c != ':')
			return http_fail(why, "malformed header line: expected name: value", 400);
		if (r->n_headers == HTTP_MAX_HEADERS)
			return http_fail(why, "too many header lines", 431);
		const char *v = c + 1, *ve = le;
		while (v < ve && (*v == ' ' || *v == '\t'))
			v++;
		while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
			ve--;
		for (const char *q = v; q < ve; q++) {
			unsigned char ch = (unsigned char)*q;
			if ((ch < 32 && ch != '\t') || ch == 127)
				return http_fail(why, "control byte in a header value", 400);
		}
		r->name[r->n_headers] = (http_str){p, (size_t)(c - p)};
		r->value[r->n_headers] = (http_str){v, (size_t)(ve - v)};
		r->n_headers++;
		p = end + 1;
	}
	return http_semantics(r, why);
}

/* ---------------------------------------------------------------- chunked */

enum {
	CK_SIZE = 0, /* hex digits of a chunk size */
	CK_EXT,      /* after ';': an extension, ignored up to CR */
	CK_SIZE_LF,  /* CR seen after the size line */
	CK_DATA,
	CK_DATA_CR, /* CRLF after the data */
	CK_DATA_LF,
	CK_TRAILER,    /* start of a trailer line, or the final CRLF */
	CK_TRAILER_IN, /* inside a trailer line */
	CK_TRAILER_LF, /* CR seen ending a trailer line */
	CK_END_LF,     /* CR seen on the blank line that ends the body */
	CK_DONE,
};

static int ck_hex(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

long http_chunked_feed(http_chunked *ck, char *buf, size_t from, size_t n, size_t *out, int *done,
		       const char **why)
{
	size_t i = from;
	*done = 0;
	while (i < n) {
		char c = buf[i];
		switch (ck->state) {
		case CK_SIZE: {
			int h = ck_hex(c);
			if (h >= 0) {
				if (++ck->digits > HTTP_MAX_CHUNK_HEX) {
					*why = "chunk size too large";
					return -1;
				}
				ck->left = ck->left * 16 + (uint64_t)h;
				i++;
				break;
			}
			if (ck->digits == 0 || (c != '\r' && c != ';')) {
				*why = "malformed chunk size";
				return -1;
			}
			ck->state = c == ';' ? CK_EXT : CK_SIZE_LF;
			ck->line = 0;
			i++;
			break;
		}
		case CK_EXT:
			if (c == '\r')
				ck->state = CK_SIZE_LF;
			else if (c == '\n' || ++ck->line > 1024) {
				*why = "malformed chunk extension";
				return -1;
			}
			i++;
			break;
		case CK_SIZE_LF:
			if (c != '\n') {
				*why = "chunk size line must end with CRLF";
				return -1;
			}
			i++;
			ck->digits = 0;
			ck->state = ck->left ? CK_DATA : CK_TRAILER;
			break;
		case CK_DATA: {
			size_t k = n - i;
			if (k > ck->left)
				k = (size_t)ck->left;
			memmove(buf + *out, buf + i, k);
			*out += k;
			i += k;
			ck->left -= k;
			if (!ck->left)
				ck->state = CK_DATA_CR;
			break;
		}
		case CK_DATA_CR:
		case CK_DATA_LF:
			if (c != (ck->state == CK_DATA_CR ? '\r' : '\n')) {
				*why = "chunk data must be followed by CRLF";
				return -1;
			}
			ck->state = ck->state == CK_DATA_CR ? CK_DATA_LF : CK_SIZE;
			i++;
			break;
		case CK_TRAILER:
			ck->line = 0;
			ck->state = c == '\r' ? CK_END_LF : CK_TRAILER_IN;
			if (c == '\n') {
				*why = "trailer lines must end with CRLF";
				return -1;
			}
			i++;
			break;
		case CK_TRAILER_IN:
			if (c == '\r')
				ck->state = CK_TRAILER_LF;
			else if (c == '\n' || ++ck->line > 8192) {
				*why = "malformed trailer line";
				return -1;
			}
			i++;
			break;
		case CK_TRAILER_LF:
		case CK_END_LF:
			if (c != '\n') {
				*why = "trailer lines must end with CRLF";
				return -1;
			}
			i++;
			if (ck->state == CK_END_LF) {
				ck->state = CK_DONE;
				*done = 1;
				return (long)i;
			}
			ck->state = CK_TRAILER;
			break;
		default: *done = 1; return (long)i;
		}
	}
	return (long)i;
}

/* ---------------------------------------------------------------- gzip */

int http_gunzip(const char *in, size_t n, size_t max, char **out, size_t *out_n, size_t *cap,
		const char **why)
{
	z_stream z;
	memset(&z, 0, sizeof z);
	if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK) {
		*why = "out of memory";
		return 500;
	}
	z.next_in = (Bytef *)(uintptr_t)in;
	z.avail_in = 0;
	size_t left = n, done = 0;
	int rc = Z_OK, status = 0;
	for (;;) {
		if (z.avail_in == 0 && left) {
			uInt k = left > (1u << 30) ? (1u << 30) : (uInt)left;
			z.avail_in = k;
			left -= k;
		}
		if (done == *cap) {
			if (*cap >= max + 1) {
				status = 413;
				*why = "body larger than http-max-body-bytes once decompressed";
				break;
			}
			size_t nc = *cap ? *cap * 2 : n * 4 + 4096;
			if (nc > max + 1)
				nc = max + 1;
			char *p = realloc(*out, nc);
			if (!p) {
				status = 500;
				*why = "out of memory";
				break;
			}
			*out = p;
			*cap = nc;
		}
		size_t room = *cap - done;
		z.next_out = (Bytef *)*out + done;
		z.avail_out = room > (1u << 30) ? (1u << 30) : (uInt)room;
		uInt before = z.avail_out;
		rc = inflate(&z, Z_NO_FLUSH);
		done += before - z.avail_out;
		if (done > max) {
			status = 413;
			*why = "body larger than http-max-body-bytes once decompressed";
			break;
		}
		if (rc == Z_STREAM_END) {
			/* Another member may follow (concatenated gzip files). */
			if (z.avail_in == 0 && left == 0)
				break;
			if (inflateReset(&z) != Z_OK) {
				status = 400;
				*why = "corrupt gzip body";
				break;
			}
			continue;
		}
		if (rc == Z_BUF_ERROR && z.avail_in == 0 && left == 0) {
			status = 400;
			*why = "truncated gzip body";
			break;
		}
		if (rc != Z_OK && rc != Z_BUF_ERROR) {
			status = 400;
			*why = rc == Z_MEM_ERROR ? "out of memory" : "corrupt gzip body";
			if (rc == Z_MEM_ERROR)
				status = 500;
			break;
		}
	}
	inflateEnd(&z);
	*out_n = done;
	return status;
}

/* ---------------------------------------------------------------- query, base64 */

long http_query_get(http_str query, const char *name, char *out, size_t cap)
{
	size_t nl = strlen(name), i = 0;
	while (i < query.n) {
		size_t j = i;
		while (j < query.n && query.p[j] != '&')
			j++;
		const char *eq = memchr(query.p + i, '=', j - i);
		size_t kl = eq ? (size_t)(eq - (query.p + i)) : j - i;
		if (kl == nl && !memcmp(query.p + i, name, nl)) {
			size_t v = eq ? (size_t)(eq - query.p) + 1 : j, o = 0;
			while (v < j) {
				char c = query.p[v];
				if (c == '%') {
					if (j - v < 3)
						return -2;
					int a = ck_hex(query.p[v + 1]), b = ck_hex(query.p[v + 2]);
					if (a < 0 || b < 0)
						return -2;
					c = (char)(a * 16 + b);
					v += 3;
				} else {
					if (c == '+')
						c = ' ';
					v++;
				}
				if (o + 1 >= cap)
					return -2;
				out[o++] = c;
			}
			out[o] = 0;
			return (long)o;
		}
		i = j + 1;
	}
	return -1;
}

static int b64_val(char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

long http_base64_decode(const char *in, size_t n, char *out, size_t cap)
{
	if (n % 4)
		return -1;
	size_t o = 0;
	for (size_t i = 0; i < n; i += 4) {
		int v[4], pad = 0;
		for (int k = 0; k < 4; k++) {
			if (in[i + k] == '=' && i + 4 == n && k >= 2) {
				v[k] = 0;
				pad++;
			} else if (pad || (v[k] = b64_val(in[i + k])) < 0) {
				return -1;
			}
		}
		uint32_t x = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 |
			     (uint32_t)v[3];
		char b[3] = {(char)(x >> 16), (char)(x >> 8), (char)x};
		for (int k = 0; k < 3 - pad; k++) {
			if (o >= cap)
				return -1;
			out[o++] = b[k];
		}
	}
	return (long)o;
}
