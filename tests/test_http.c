/*
 * test_http.c — wire/http.c, the HTTP request parser, unit by unit: heads
 * and their parts, the shapes of request smuggling it must refuse, its
 * limits, chunked bodies decoded in place whatever the packet cuts, gzip
 * bodies (several members, truncated, corrupt, too large), query strings
 * and base64. The server around it is tested with real clients by
 * tests/server/http_test.py; tests/fuzz/fuzz_http.c fuzzes the same code.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "http.h"

static int parse(const char *head, http_req *r, const char **why)
{
	size_t n = strlen(head);
	long hl = http_head_len(head, n, 16384);
	cr_assert_eq(hl, (long)n, "head length of %s", head);
	return http_parse_head(head, n, r, why);
}

static int str_is(http_str s, const char *lit)
{
	return s.n == strlen(lit) && !memcmp(s.p, lit, s.n);
}

Test(http, heads_parse_into_their_parts)
{
	http_req r;
	const char *why = NULL;
	cr_assert_eq(parse("POST /api/v2/write?bucket=b&precision=ms HTTP/1.1\r\n"
			   "Host: t\r\nContent-Length:  12 \r\nContent-Encoding: gzip\r\n"
			   "Authorization: Token abc\r\nExpect: 100-continue\r\n\r\n",
			   &r, &why),
		     0, "%s", why);
	cr_assert(str_is(r.method, "POST") && str_is(r.path, "/api/v2/write"));
	cr_assert(str_is(r.query, "bucket=b&precision=ms"));
	cr_assert(r.minor == 1 && r.keep_alive && r.gzip && r.expect_continue && !r.chunked);
	cr_assert_eq(r.content_length, 12);
	cr_assert(str_is(r.authorization, "Token abc"));
	cr_assert(str_is(http_header(&r, "content-length"), "12"));
	cr_assert_eq(parse("GET /ping HTTP/1.0\r\n\r\n", &r, &why), 0, "%s", why);
	cr_assert(!r.keep_alive && r.content_length == -1, "1.0 closes unless asked");
	cr_assert_eq(
		parse("GET /ping HTTP/1.1\r\nHost: t\r\nConnection: x, close\r\n\r\n", &r, &why),
		0);
	cr_assert(!r.keep_alive);
	cr_assert_eq(parse("POST /write HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n",
			   &r, &why),
		     0);
	cr_assert(r.chunked && r.content_length == -1);
}

Test(http, request_smuggling_shapes_are_refused)
{
	static const struct {
		const char *head;
		int status;
	} bad[] = {
		{"POST /w HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: "
		 "chunked\r\n\r\n",
		 400},
		{"POST /w HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
		 400},
		{"POST /w HTTP/1.1\r\nHost: t\r\nContent-Length: 3x\r\n\r\n", 400},
		{"POST /w HTTP/1.1\r\nHost: t\r\nContent-Length: -3\r\n\r\n", 400},
		{"POST /w HTTP/1.1\r\nHost: t\r\nContent-Length : 3\r\n\r\n", 400},
		{"POST /w HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n folded\r\n\r\n", 400},
		{"POST /w HTTP/1.1\nHost: t\r\n\r\n", 400},
		{"POST /w HTTP/1.1\r\nHost: t\nX: y\r\n\r\n", 400},
		{"POST /w HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
		{"POST /w HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501},
		{"POST /w HTTP/1.1\r\nContent-Length: 3\r\n\r\n", 400},
		{"POST /w HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400},
		{"GET /a b HTTP/1.1\r\nHost: t\r\n\r\n", 400},
		{"GET http://x/ HTTP/1.1\r\nHost: t\r\n\r\n", 400},
		{"get / HTTP/1.1\r\nHost: t\r\n\r\n", 400},
		{"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505},
		{"GET / HTTP/1.1\r\nHost: t\r\nX: a\x01b\r\n\r\n", 400},
		{"GET / HTTP/1.1\r\nHost: t\r\nExpect: 200-ok\r\n\r\n", 417},
		{"GET / HTTP/1.1\r\nHost: t\r\nContent-Encoding: br\r\n\r\n", 415},
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		http_req r;
		const char *why = NULL;
		size_t n = strlen(bad[i].head);
		long hl = http_head_len(bad[i].head, n, 16384);
		int st = hl > 0 ? http_parse_head(bad[i].head, (size_t)hl, &r, &why) : 400;
		cr_assert_eq(st, bad[i].status, "%s: got %d (%s)", bad[i].head, st, why);
		cr_assert(hl <= 0 || why, "a refusal says why");
	}
}

Test(http, limits_on_the_request_line_head_and_header_count)
{
	char *big = malloc(40000);
	memset(big, 'a', 40000);
	memcpy(big, "GET /", 5);
	cr_assert_eq(http_head_len(big, 9000, 16384), -414, "a long line, no end yet");
	cr_assert_eq(http_head_len(big, 100, 16384), 0, "incomplete, within limits");
	memcpy(big, "GET / HTTP/1.1\r\nX: ", 19);
	cr_assert_eq(http_head_len(big, 20000, 16384), -431, "a head past its limit");
	free(big);
	char head[8192];
	size_t n = (size_t)snprintf(head, sizeof head, "GET / HTTP/1.1\r\nHost: t\r\n");
	for (int i = 0; i < HTTP_MAX_HEADERS; i++)
		n += (size_t)snprintf(head + n, sizeof head - n, "X-%d: v\r\n", i);
	n += (size_t)snprintf(head + n, sizeof head - n, "\r\n");
	http_req r;
	const char *why = NULL;
	cr_assert_eq(http_head_len(head, n, 16384), (long)n);
	cr_assert_eq(http_parse_head(head, n, &r, &why), 431, "65 header lines");
}

/* Decodes a chunked body fed in pieces cut at `cuts` (ascending, < n). */
static long chunked(const char *in, size_t n, const size_t *cuts, size_t n_cuts, char *body,
		    size_t *body_n)
{
	char *work = malloc(n + 1);
	memcpy(work, in, n);
	http_chunked ck;
	memset(&ck, 0, sizeof ck);
	size_t out = 0, from = 0;
	int done = 0;
	const char *why = NULL;
	long at = 0;
	for (size_t i = 0; i <= n_cuts && !done; i++) {
		size_t to = i < n_cuts ? cuts[i] : n;
		at = http_chunked_feed(&ck, work, from, to, &out, &done, &why);
		if (at < 0)
			break;
		from = (size_t)at;
	}
	memcpy(body, work, out);
	*body_n = out;
	free(work);
	return done ? at : -1;
}

Test(http, chunked_bodies_decode_in_place_whatever_the_cuts)
{
	const char *in = "5\r\nhello\r\n1A;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n"
			 "Trailer: x\r\n\r\nNEXT";
	size_t n = strlen(in), end = n - 4;
	char body[128];
	size_t bn;
	cr_assert_eq(chunked(in, n, NULL, 0, body, &bn), (long)end);
	cr_assert_eq(bn, 31);
	cr_assert(!memcmp(body, "helloabcdefghijklmnopqrstuvwxyz", 31));
	for (size_t a = 1; a < end; a++) {
		for (size_t b = a; b < end; b += 7) {
			size_t cuts[2] = {a, b};
			size_t bn2;
			char body2[128];
			cr_assert_eq(chunked(in, n, cuts, 2, body2, &bn2), (long)end,
				     "cuts %zu %zu", a, b);
			cr_assert(bn2 == bn && !memcmp(body2, body, bn), "cuts %zu %zu", a, b);
		}
	}
	static const char *const bad[] = {"zz\r\n", "5\r\nhelloXX", "5\nhello\r\n",
					  "1234567890123456\r\n", "\r\n"};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		http_chunked ck;
		memset(&ck, 0, sizeof ck);
		char w[64];
		size_t out = 0;
		int done = 0;
		const char *why = NULL;
		strcpy(w, bad[i]);
		cr_assert_eq(http_chunked_feed(&ck, w, 0, strlen(w), &out, &done, &why), -1, "%s",
			     bad[i]);
		cr_assert_not_null(why);
	}
}

static size_t gz(const char *s, size_t n, char *out, size_t cap)
{
	z_stream z;
	memset(&z, 0, sizeof z);
	cr_assert_eq(deflateInit2(&z, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY), Z_OK);
	z.next_in = (Bytef *)(uintptr_t)s;
	z.avail_in = (uInt)n;
	z.next_out = (Bytef *)out;
	z.avail_out = (uInt)cap;
	cr_assert_eq(deflate(&z, Z_FINISH), Z_STREAM_END);
	size_t k = cap - z.avail_out;
	deflateEnd(&z);
	return k;
}

Test(http, gzip_bodies_members_truncation_corruption_and_bound)
{
	static char in[1 << 16], zipped[1 << 17];
	for (size_t i = 0; i < sizeof in; i++)
		in[i] = (char)('a' + (i * 7) % 26);
	size_t a = gz(in, sizeof in, zipped, sizeof zipped);
	size_t b = gz("tail\n", 5, zipped + a, sizeof zipped - a);
	char *out = NULL;
	size_t out_n = 0, cap = 0;
	const char *why = NULL;
	cr_assert_eq(http_gunzip(zipped, a + b, 1 << 20, &out, &out_n, &cap, &why), 0, "%s", why);
	cr_assert_eq(out_n, sizeof in + 5, "two members are one body");
	cr_assert(!memcmp(out, in, sizeof in) && !memcmp(out + sizeof in, "tail\n", 5));
	cr_assert_eq(http_gunzip(zipped, a / 2, 1 << 20, &out, &out_n, &cap, &why), 400);
	cr_assert_str_eq(why, "truncated gzip body");
	zipped[a / 2] ^= 0x5a;
	zipped[a / 2 + 1] ^= 0x5a;
	int st = http_gunzip(zipped, a, 1 << 20, &out, &out_n, &cap, &why);
	cr_assert_eq(st, 400, "corrupt: %d", st);
	zipped[a / 2] ^= 0x5a;
	zipped[a / 2 + 1] ^= 0x5a;
	free(out);
	out = NULL;
	cap = 0; /* a fresh buffer: the bound holds what is allocated too */
	cr_assert_eq(http_gunzip(zipped, a, 1000, &out, &out_n, &cap, &why), 413);
	cr_assert_leq(cap, 1001, "the bound holds the buffer, not only the answer");
	free(out);
}

Test(http, query_values_and_base64)
{
	http_str q = {"db=x&precision=ms&p=a%20b%2Bc+d&bad=%4&empty=&flag", 0};
	q.n = strlen(q.p);
	char v[32];
	cr_assert_eq(http_query_get(q, "precision", v, sizeof v), 2);
	cr_assert_str_eq(v, "ms");
	cr_assert_eq(http_query_get(q, "p", v, sizeof v), 7);
	cr_assert_str_eq(v, "a b+c d");
	cr_assert_eq(http_query_get(q, "bad", v, sizeof v), -2);
	cr_assert_eq(http_query_get(q, "empty", v, sizeof v), 0);
	cr_assert_eq(http_query_get(q, "flag", v, sizeof v), 0);
	cr_assert_eq(http_query_get(q, "rp", v, sizeof v), -1);
	cr_assert_eq(http_query_get(q, "precision", v, 2), -2, "longer than the buffer");
	char d[32];
	long n = http_base64_decode("dXNlcjpzM2NyZXQ=", 16, d, sizeof d);
	cr_assert_eq(n, 11);
	cr_assert(!memcmp(d, "user:s3cret", 11));
	cr_assert_eq(http_base64_decode("dXNlcjpzM2NyZXQ", 15, d, sizeof d), -1);
	cr_assert_eq(http_base64_decode("dX=lcjpz", 8, d, sizeof d), -1);
	cr_assert_eq(http_base64_decode("dXNlcjpzM2NyZXQ=", 16, d, 4), -1);
}
