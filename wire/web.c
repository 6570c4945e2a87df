/*
 * web.c — serves the dashboard (GET /, /ui/...) from files compiled into
 * tallyd: web/embed.py turned each into a byte array with its content
 * type, ETag and a gzip copy at build time (web/README.md).
 *
 * The one idea: everything an answer needs was decided at build time, so
 * serving a file is a lookup and two header checks, with no file system,
 * no compression and no state. The page then reads the data through the
 * JSON query API like any other client (docs/http.md, "Dashboard").
 * Answers say "Cache-Control: no-cache" with an ETag: a browser keeps its
 * copy but asks each time, so an upgraded tallyd's page is used at once,
 * and an unchanged one costs a 304.
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "web.h"

/* No script, style or image from anywhere but tallyd (uPlot sets inline
 * styles from script, which 'unsafe-inline' for styles allows). */
#define WEB_CSP                                                                           \
	"Content-Security-Policy: default-src 'self'; style-src 'self' 'unsafe-inline'; " \
	"img-src 'self' data:; frame-ancestors 'none'\r\n"

const web_asset *web_find(const char *path, size_t n)
{
	for (size_t i = 0; i < web_n_assets; i++)
		if (strlen(web_assets[i].path) == n && !memcmp(web_assets[i].path, path, n))
			return &web_assets[i];
	return NULL;
}

/* The next comma-separated element of s[*at, n), spaces trimmed. */
static http_str web_next(http_str s, size_t *at)
{
	size_t b = *at, e;
	while (b < s.n && (s.p[b] == ' ' || s.p[b] == '\t' || s.p[b] == ','))
		b++;
	for (e = b; e < s.n && s.p[e] != ','; e++)
		;
	*at = e;
	while (e > b && (s.p[e - 1] == ' ' || s.p[e - 1] == '\t'))
		e--;
	return (http_str){s.p + b, e - b};
}

/* 1 when element el of Accept-Encoding names coding (case-insensitive)
 * with a weight above 0 ("gzip", "gzip;q=0.8"; "gzip;q=0" refuses it). */
static int web_coding_ok(http_str el, const char *coding, int *named)
{
	size_t k = strlen(coding), i = k;
	if (el.n < k || strncasecmp(el.p, coding, k) ||
	    (el.n > k && el.p[k] != ';' && el.p[k] != ' '))
		return 0;
	*named = 1;
	/* q=0, q=0.0, q=0.000: refused; anything else is a positive weight. */
	while (i < el.n && el.p[i] != '=')
		i++;
	if (i == el.n)
		return 1;
	for (i++; i < el.n; i++)
		if (el.p[i] != '0' && el.p[i] != '.' && el.p[i] != ' ')
			return 1;
	return 0;
}

unsigned web_negotiate(const web_asset *a, http_str accept_encoding, http_str if_none_match)
{
	unsigned how = 0;
	int gzip = 0, gzip_named = 0, any = 0, any_named = 0;
	for (size_t at = 0; at < accept_encoding.n;) {
		http_str el = web_next(accept_encoding, &at);
		gzip |= web_coding_ok(el, "gzip", &gzip_named) ||
			web_coding_ok(el, "x-gzip", &gzip_named);
		any |= web_coding_ok(el, "*", &any_named);
	}
	if (a->gz && (gzip || (!gzip_named && any)))
		how |= WEB_GZIP;
	/* Weak comparison (RFC 9110 13.1.2): W/ is ignored; either
	 * representation's tag matches, they carry the same bytes. */
	size_t tn = strlen(a->etag);
	for (size_t at = 0; at < if_none_match.n;) {
		http_str el = web_next(if_none_match, &at);
		if (el.n == 1 && el.p[0] == '*')
			how |= WEB_FRESH;
		if (el.n > 2 && !memcmp(el.p, "W/", 2)) {
			el.p += 2;
			el.n -= 2;
		}
		if (el.n < 2 || el.p[0] != '"' || el.p[el.n - 1] != '"')
			continue;
		el.p++;
		el.n -= 2;
		if (el.n >= tn && !memcmp(el.p, a->etag, tn) &&
		    (el.n == tn || (el.n == tn + 3 && !memcmp(el.p + tn, "-gz", 3))))
			how |= WEB_FRESH;
	}
	return how;
}

int web_answer(const web_asset *a, unsigned how, char *extra, size_t cap, const void **body,
	       size_t *n)
{
	int gz = (how & WEB_GZIP) != 0;
	/* A representation's strong ETag differs by its coding. */
	snprintf(extra, cap,
		 "ETag: \"%s%s\"\r\nCache-Control: no-cache\r\n%s%sX-Content-Type-Options: "
		 "nosniff\r\n" WEB_CSP,
		 a->etag, gz ? "-gz" : "", a->gz ? "Vary: Accept-Encoding\r\n" : "",
		 gz ? "Content-Encoding: gzip\r\n" : "");
	if (how & WEB_FRESH) {
		*body = NULL;
		*n = 0;
		return 304;
	}
	*body = gz ? a->gz : a->body;
	*n = gz ? a->gz_n : a->n;
	return 200;
}
