/*
 * test_web.c — wire/web.c: the dashboard's compiled-in files are all there
 * with their types, gzip copies that inflate to the same bytes, and what
 * Accept-Encoding and If-None-Match ask of them (weights, wildcards, weak
 * and -gz tags, lists). The page itself is tested in a browser by
 * tests/server/dashboard_test.mjs.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "web.h"

static http_str S(const char *s)
{
	return (http_str){s, strlen(s)};
}

static const web_asset *get(const char *path)
{
	const web_asset *a = web_find(path, strlen(path));
	cr_assert(a, "%s is not compiled in", path);
	return a;
}

Test(web, every_file_is_there_with_its_type)
{
	static const struct {
		const char *path, *type;
	} want[] = {
		{"/", "text/html; charset=utf-8"},
		{"/ui/app.js", "text/javascript; charset=utf-8"},
		{"/ui/app.css", "text/css; charset=utf-8"},
		{"/ui/uplot.min.js", "text/javascript; charset=utf-8"},
		{"/ui/uplot.min.css", "text/css; charset=utf-8"},
	};
	cr_assert_eq(web_n_assets, sizeof want / sizeof want[0]);
	for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
		cr_assert_str_eq(get(want[i].path)->type, want[i].type, "%s", want[i].path);
	cr_assert_null(web_find("/ui/app.j", 9));
	cr_assert_null(web_find("/ui/app.jsx", 11));
	cr_assert_null(web_find("", 0));
	/* A path is compared by its length, not up to a NUL. */
	cr_assert_eq(web_find("/ui/app.js?x=1", 10), get("/ui/app.js"));
	const web_asset *u = get("/ui/uplot.min.js");
	cr_assert(u->n > 40000 &&
		  !memcmp(u->body, "/*! https://github.com/leeoniya/uPlot (v1.6.32) */", 50));
	cr_assert(memmem(get("/")->body, get("/")->n, "/ui/uplot.min.js", 16));
}

Test(web, gzip_copies_inflate_to_the_same_bytes)
{
	for (size_t i = 0; i < web_n_assets; i++) {
		const web_asset *a = &web_assets[i];
		cr_assert_eq(strlen(a->etag), 16, "%s: etag %s", a->path, a->etag);
		if (!a->gz)
			continue;
		cr_assert_lt(a->gz_n, a->n, "%s", a->path);
		unsigned char *out = malloc(a->n + 1);
		z_stream z = {0};
		cr_assert_eq(inflateInit2(&z, 16 + MAX_WBITS), Z_OK);
		z.next_in = (unsigned char *)a->gz;
		z.avail_in = (unsigned)a->gz_n;
		z.next_out = out;
		z.avail_out = (unsigned)a->n + 1;
		cr_assert_eq(inflate(&z, Z_FINISH), Z_STREAM_END, "%s", a->path);
		cr_assert_eq(z.total_out, a->n, "%s", a->path);
		cr_assert(!memcmp(out, a->body, a->n), "%s", a->path);
		inflateEnd(&z);
		free(out);
	}
	cr_assert(get("/ui/uplot.min.js")->gz, "uPlot has no gzip copy");
}

Test(web, accept_encoding_weights_and_wildcards)
{
	const web_asset *a = get("/ui/uplot.min.js");
	http_str none = {0};
	static const struct {
		const char *ae;
		unsigned gz;
	} cases[] = {
		{"", 0},
		{"gzip", WEB_GZIP},
		{"GZip", WEB_GZIP},
		{"deflate, gzip;q=0.5, br", WEB_GZIP},
		{"x-gzip", WEB_GZIP},
		{"gzip;q=0", 0},
		{"gzip; q=0.000", 0},
		{"gzip;q=0.001", WEB_GZIP},
		{"*", WEB_GZIP},
		{"gzip;q=0, *", 0}, /* named and refused: the wildcard does not bring it back */
		{"*;q=0", 0},
		{"identity", 0},
		{"gzipx, deflate", 0},
		{"br,  gzip  ", WEB_GZIP},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
		cr_assert_eq(web_negotiate(a, S(cases[i].ae), none) & WEB_GZIP, cases[i].gz,
			     "Accept-Encoding: %s", cases[i].ae);
	/* A file without a gzip copy is never sent as gzip. */
	for (size_t i = 0; i < web_n_assets; i++)
		if (!web_assets[i].gz)
			cr_assert_eq(web_negotiate(&web_assets[i], S("gzip"), none), 0);
}

Test(web, if_none_match_finds_either_tag)
{
	const web_asset *a = get("/ui/app.js");
	char tag[64], gz[64], weak[64], list[160], other[64];
	snprintf(tag, sizeof tag, "\"%s\"", a->etag);
	snprintf(gz, sizeof gz, "\"%s-gz\"", a->etag);
	snprintf(weak, sizeof weak, "W/\"%s\"", a->etag);
	snprintf(list, sizeof list, "\"0000000000000000\", %s", gz);
	snprintf(other, sizeof other, "\"%.15s\"", a->etag);
	http_str none = {0};
	cr_assert_eq(web_negotiate(a, none, S(tag)), WEB_FRESH);
	cr_assert_eq(web_negotiate(a, none, S(gz)), WEB_FRESH);
	cr_assert_eq(web_negotiate(a, none, S(weak)), WEB_FRESH);
	cr_assert_eq(web_negotiate(a, none, S(list)), WEB_FRESH);
	cr_assert_eq(web_negotiate(a, none, S("*")), WEB_FRESH);
	cr_assert_eq(web_negotiate(a, none, S(other)), 0);
	cr_assert_eq(web_negotiate(a, none, S(a->etag)), 0, "an unquoted tag is not a tag");
	cr_assert_eq(web_negotiate(a, none, S("\"\"")), 0);
}

Test(web, answers_carry_their_headers)
{
	const web_asset *a = get("/ui/uplot.min.js");
	char extra[512];
	const void *body;
	size_t n;
	cr_assert_eq(web_answer(a, WEB_GZIP, extra, sizeof extra, &body, &n), 200);
	cr_assert(body == a->gz && n == a->gz_n);
	cr_assert(strstr(extra, "Content-Encoding: gzip\r\n") && strstr(extra, "-gz\"\r\n") &&
		  strstr(extra, "Vary: Accept-Encoding\r\n") &&
		  strstr(extra, "Content-Security-Policy: "));
	cr_assert_eq(web_answer(a, 0, extra, sizeof extra, &body, &n), 200);
	cr_assert(body == a->body && n == a->n && !strstr(extra, "Content-Encoding"));
	cr_assert_eq(web_answer(a, WEB_FRESH | WEB_GZIP, extra, sizeof extra, &body, &n), 304);
	cr_assert_eq(n, 0);
	size_t len = strlen(extra);
	cr_assert(len > 0 && len < sizeof extra - 1 && !strcmp(extra + len - 2, "\r\n"));
}
