/*
 * fuzz_http.c — libFuzzer target: tallyd's HTTP request parser
 * (wire/http.c): heads, chunked bodies, gzip bodies, query strings,
 * base64.
 *
 * For any input: http_head_len never claims more than it was given and
 * its errors are the documented statuses; a head it measured parses to 0
 * or an HTTP status, with every string inside the head; chunked decoding
 * gives the same body and end whether the bytes arrive at once or in two
 * pieces cut anywhere, and never writes past what it read; gunzip stays
 * within its bound; query values and base64 stay within their buffers.
 *
 *   tests/fuzz/build fuzz_http build-fuzz/fuzz_http
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../wire/http.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                 \
	do {                     \
		if (!(c))        \
			abort(); \
	} while (0)

static int inside(http_str s, const char *buf, size_t n)
{
	return s.n == 0 || (s.p >= buf && s.p + s.n <= buf + n);
}

static void fuzz_head(const char *buf, size_t n)
{
	long hl = http_head_len(buf, n, 4096);
	CHECK(hl == 0 || hl == -414 || hl == -431 || (hl >= 4 && (size_t)hl <= n));
	if (hl <= 0)
		return;
	http_req r;
	const char *why = NULL;
	int st = http_parse_head(buf, (size_t)hl, &r, &why);
	CHECK(st == 0 || (st >= 400 && st < 600 && why));
	if (st)
		return;
	CHECK(inside(r.method, buf, (size_t)hl) && inside(r.target, buf, (size_t)hl));
	CHECK(inside(r.path, buf, (size_t)hl) && inside(r.query, buf, (size_t)hl));
	CHECK(r.n_headers <= HTTP_MAX_HEADERS && r.minor <= 1);
	CHECK(!(r.chunked && r.content_length >= 0));
	for (unsigned i = 0; i < r.n_headers; i++)
		CHECK(inside(r.name[i], buf, (size_t)hl) && inside(r.value[i], buf, (size_t)hl));
	char v[64];
	long k = http_query_get(r.query, "precision", v, sizeof v);
	CHECK(k >= -2 && k < (long)sizeof v);
	if (r.authorization.n > 6) {
		char dec[256];
		long d = http_base64_decode(r.authorization.p + 6, r.authorization.n - 6, dec,
					    sizeof dec);
		CHECK(d >= -1 && d <= (long)sizeof dec);
	}
}

/* Decodes in[0, n) as a chunked body, fed in two pieces cut at `cut`.
 * Returns the end (or -1) and the decoded body in out. */
static long fuzz_chunked(const char *in, size_t n, size_t cut, char *work, size_t *out_n, int *done)
{
	http_chunked ck;
	memset(&ck, 0, sizeof ck);
	memcpy(work, in, n);
	const char *why = NULL;
	size_t out = 0;
	*done = 0;
	long at = http_chunked_feed(&ck, work, 0, cut, &out, done, &why);
	if (at < 0 || *done) {
		*out_n = out;
		return at;
	}
	CHECK((size_t)at == cut && out <= cut);
	at = http_chunked_feed(&ck, work, cut, n, &out, done, &why);
	CHECK(at < 0 || out <= (size_t)at);
	*out_n = out;
	return at;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2)
		return 0;
	unsigned mode = data[0] % 3;
	size_t cut_hint = data[1];
	const char *in = (const char *)data + 2;
	size_t n = size - 2;
	if (mode == 0) {
		fuzz_head(in, n);
		return 0;
	}
	if (mode == 1) {
		char *a = malloc(n + 1), *b = malloc(n + 1);
		size_t an = 0, bn = 0;
		int ad = 0, bd = 0;
		long ea = fuzz_chunked(in, n, n, a, &an, &ad);
		size_t cut = n ? cut_hint % (n + 1) : 0;
		long eb = fuzz_chunked(in, n, cut, b, &bn, &bd);
		/* The same body and end whatever the split (an error may be
		 * seen in either piece, but it is an error in both). */
		CHECK((ea < 0) == (eb < 0));
		if (ea >= 0) {
			CHECK(ea == eb && ad == bd && an == bn && !memcmp(a, b, an));
		}
		free(a);
		free(b);
		return 0;
	}
	char *out = NULL;
	size_t out_n = 0, cap = 0;
	const char *why = NULL;
	size_t max = 1 + cut_hint * 64;
	int st = http_gunzip(in, n, max, &out, &out_n, &cap, &why);
	CHECK(st == 0 || st == 400 || st == 413 || st == 500);
	CHECK(out_n <= max || st == 413);
	CHECK(out_n <= cap);
	free(out);
	return 0;
}
