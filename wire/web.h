/*
 * web.h — the dashboard's files compiled into tallyd, and how a request
 * for one is answered (internal to wire/; web/README.md, docs/http.md).
 */
#ifndef TALLY_WIRE_WEB_H
#define TALLY_WIRE_WEB_H

#include <stddef.h>

#include "http.h"

typedef struct web_asset {
	const char *path; /* the URL path it is served at: "/", "/ui/app.js" */
	const char *type; /* Content-Type */
	const char *etag; /* hex, of the bytes as they are in web/: the ETag, unquoted */
	const unsigned char *body;
	size_t n;
	const unsigned char *gz; /* gzip copy made at build time; NULL: not smaller */
	size_t gz_n;
} web_asset;

/* Generated from web/ by web/embed.py at build time (web/meson.build). */
extern const web_asset web_assets[];
extern const size_t web_n_assets;

/* The asset served at path[0, n) (a query string excluded), or NULL. */
const web_asset *web_find(const char *path, size_t n);

enum {
	WEB_GZIP = 1,  /* the client accepts gzip and the asset has a gzip copy */
	WEB_FRESH = 2, /* If-None-Match names the asset's ETag: 304 */
};

/* What the request's Accept-Encoding and If-None-Match ask of a: WEB_*
 * flags. Called while the request head's strings are valid. */
unsigned web_negotiate(const web_asset *a, http_str accept_encoding, http_str if_none_match);

/* The answer for a negotiated request: the status (200 or 304), the
 * headers to add (ending in CRLF, into extra[0, cap)), and the body to
 * send (*n == 0 for a 304). */
int web_answer(const web_asset *a, unsigned how, char *extra, size_t cap, const void **body,
	       size_t *n);

#endif
