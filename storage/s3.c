/*
 * s3.c — the S3 client: libcurl does HTTP and SigV4, this file does the
 * S3 protocol, retries and integrity checks.
 *
 * The one idea: every request is described by an s3_req (method, key,
 * canonical query, body, where the response goes) and goes through s3_do,
 * which signs it (CURLOPT_AWS_SIGV4 with the payload's SHA-256 given in
 * x-amz-content-sha256, so libcurl never has to guess it), sends it,
 * classifies the outcome (done, retry, fail) and retries with backoff.
 * Everything else — multipart uploads, verification, listings — is a few
 * s3_reqs in a row.
 *
 * Signing notes, learnt the hard way:
 *  - Every header we add is signed by libcurl. Never add "Expect:" to
 *    suppress 100-continue: libcurl would sign an empty Expect header it
 *    then does not send, and the server rejects the signature.
 *  - Queries are written already canonical (keys sorted, every key with
 *    "=", values URI-encoded the AWS way), so the signature is the same
 *    whether or not this libcurl re-canonicalises them.
 *  - Content-Type is always explicit: libcurl's implicit form type for
 *    POST would otherwise be sent but not signed (or the reverse).
 * MD5 and SHA-256 come from OpenSSL's libcrypto (libcurl links it anyway).
 */
#include "s3.h"

#include <curl/curl.h>
#include <errno.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "err.h"
#include "fileio.h"
#include "mem.h"

#define POOL_MAX       8
#define RESP_MAX       (8u << 20) /* XML responses (listings, errors) */
#define BACKOFF_CAP_MS 10000
#define EMPTY_SHA256   "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

struct s3_client {
	char *endpoint, *bucket, *region, *ak, *sk, *token;
	char sigv4[128];
	char where[512];
	uint32_t timeout_ms, connect_timeout_ms, backoff_ms;
	unsigned retries;
	uint64_t part_bytes;
	pthread_mutex_t mu;
	CURL *idle[POOL_MAX];
	unsigned n_idle;
	s3_stats st;
};

/* ---------------------------------------------------------------- helpers */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;
static void curl_init(void)
{
	curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static void hex(const uint8_t *p, size_t n, char *out)
{
	static const char d[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = d[p[i] >> 4];
		out[2 * i + 1] = d[p[i] & 15];
	}
	out[2 * n] = 0;
}

static void b64(const uint8_t *p, size_t n, char *out)
{
	static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t o = 0;
	for (size_t i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) |
			     (i + 2 < n ? p[i + 2] : 0);
		out[o++] = t[v >> 18 & 63];
		out[o++] = t[v >> 12 & 63];
		out[o++] = i + 1 < n ? t[v >> 6 & 63] : '=';
		out[o++] = i + 2 < n ? t[v & 63] : '=';
	}
	out[o] = 0;
}

static int digest(const EVP_MD *md, const void *p, size_t n, uint8_t *out)
{
	unsigned len = 0;
	return EVP_Digest(p, n, out, &len, md, NULL) == 1 ? 0 : -1;
}

/* AWS URI encoding: unreserved characters stay, everything else is %XX;
 * '/' stays when keep_slash (object keys in paths). */
static int uri_encode(const char *s, int keep_slash, char *out, size_t cap)
{
	static const char d[] = "0123456789ABCDEF";
	size_t o = 0;
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		int keep = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
			   (ch >= '0' && ch <= '9') || ch == '-' || ch == '_' || ch == '.' ||
			   ch == '~' || (keep_slash && ch == '/');
		if (o + 4 > cap)
			return -1;
		if (keep) {
			out[o++] = (char)ch;
		} else {
			out[o++] = '%';
			out[o++] = d[ch >> 4];
			out[o++] = d[ch & 15];
		}
	}
	out[o] = 0;
	return 0;
}

/* Finds <tag>text</tag> in xml from *pos on; copies the text with XML's
 * five entities decoded. 1 found, 0 not. */
static int xml_tag(const char *xml, size_t len, size_t *pos, const char *tag, char *out, size_t cap)
{
	char open[64], close[64];
	snprintf(open, sizeof open, "<%s>", tag);
	snprintf(close, sizeof close, "</%s>", tag);
	size_t ol = strlen(open);
	const char *end = xml + len;
	const char *a = *pos < len ? memmem(xml + *pos, len - *pos, open, ol) : NULL;
	if (!a)
		return 0;
	a += ol;
	const char *b = memmem(a, (size_t)(end - a), close, strlen(close));
	if (!b)
		return 0;
	size_t o = 0;
	for (const char *q = a; q < b && o + 1 < cap;) {
		static const struct {
			const char *ent;
			char ch;
		} ents[] = {{"&amp;", '&'},
			    {"&lt;", '<'},
			    {"&gt;", '>'},
			    {"&quot;", '"'},
			    {"&apos;", '\''}};
		int done = 0;
		if (*q == '&')
			for (size_t e = 0; e < sizeof ents / sizeof *ents; e++) {
				size_t el = strlen(ents[e].ent);
				if ((size_t)(b - q) >= el && !memcmp(q, ents[e].ent, el)) {
					out[o++] = ents[e].ch;
					q += el;
					done = 1;
					break;
				}
			}
		if (!done)
			out[o++] = *q++;
	}
	out[o] = 0;
	*pos = (size_t)(b - xml) + strlen(close);
	return 1;
}

/* Strips the quotes around an ETag. */
static void etag_clean(const char *in, size_t n, char *out, size_t cap)
{
	while (n && (*in == '"' || *in == ' '))
		in++, n--;
	while (n &&
	       (in[n - 1] == '"' || in[n - 1] == ' ' || in[n - 1] == '\r' || in[n - 1] == '\n'))
		n--;
	if (n >= cap)
		n = cap - 1;
	memcpy(out, in, n);
	out[n] = 0;
}

/* ---------------------------------------------------------------- requests */

typedef struct rbuf_dyn {
	char *p;
	size_t len, cap;
} rbuf_dyn;

typedef struct s3_req {
	const char *op;     /* for messages: "PUT", "GET range", ... */
	const char *method; /* HTTP method */
	const char *key;    /* NULL: the bucket itself */
	const char *query;  /* canonical, without '?'; NULL: none */
	const uint8_t *body;
	size_t body_len;
	int has_body;
	const char *content_type;
	int ranged;
	uint64_t range_off, range_len;
	/* where a 2xx body goes: a fixed buffer, a file, or only a hash */
	uint8_t *out;
	size_t out_cap;
	int fd;
	int hash_only;
	/* state of one attempt */
	size_t body_pos;
	size_t out_len;
	uint64_t got;
	XXH3_state_t *xs;
	rbuf_dyn resp; /* non-2xx bodies and XML answers */
	int keep_resp; /* keep a 2xx body in resp (XML answers) */
	long status;
	char etag[S3_ETAG_MAX];
	uint64_t content_length;
	int has_length;
	int sink_err;
} s3_req;

static size_t on_header(char *buf, size_t size, size_t n, void *ctx)
{
	s3_req *r = ctx;
	size_t len = size * n;
	if (len > 5 && !memcmp(buf, "HTTP/", 5)) {
		const char *sp = memchr(buf, ' ', len);
		if (sp)
			r->status = strtol(sp + 1, NULL, 10);
	} else if (len > 5 && !strncasecmp(buf, "ETag:", 5)) {
		etag_clean(buf + 5, len - 5, r->etag, sizeof r->etag);
	} else if (len > 15 && !strncasecmp(buf, "Content-Length:", 15)) {
		r->content_length = strtoull(buf + 15, NULL, 10);
		r->has_length = 1;
	}
	return len;
}

static int resp_append(rbuf_dyn *b, const char *p, size_t n)
{
	if (b->len + n + 1 > RESP_MAX)
		return -1;
	if (b->len + n + 1 > b->cap) {
		size_t nc = b->cap ? b->cap * 2 : 4096;
		while (nc < b->len + n + 1)
			nc *= 2;
		char *np = mem_realloc(b->p, nc);
		if (!np)
			return -1;
		b->p = np;
		b->cap = nc;
	}
	memcpy(b->p + b->len, p, n);
	b->len += n;
	b->p[b->len] = 0;
	return 0;
}

static size_t on_body(char *buf, size_t size, size_t n, void *ctx)
{
	s3_req *r = ctx;
	size_t len = size * n;
	if (r->status < 200 || r->status >= 300 || r->keep_resp)
		return resp_append(&r->resp, buf, len) ? 0 : len;
	if (r->out) {
		if (r->out_len + len > r->out_cap) {
			r->sink_err = 1; /* more than asked for: the server ignored Range? */
			return 0;
		}
		memcpy(r->out + r->out_len, buf, len);
		r->out_len += len;
	} else if (r->fd >= 0) {
		if (fio_pwrite_full(r->fd, buf, len, r->got)) {
			r->sink_err = 2;
			return 0;
		}
	}
	if (r->xs)
		XXH3_64bits_update(r->xs, buf, len);
	r->got += len;
	return len;
}

static size_t on_read(char *buf, size_t size, size_t n, void *ctx)
{
	s3_req *r = ctx;
	size_t want = size * n, left = r->body_len - r->body_pos;
	if (want > left)
		want = left;
	memcpy(buf, r->body + r->body_pos, want);
	r->body_pos += want;
	return want;
}

static int on_seek(void *ctx, curl_off_t off, int origin)
{
	s3_req *r = ctx;
	if (origin != SEEK_SET || off < 0 || (uint64_t)off > r->body_len)
		return CURL_SEEKFUNC_CANTSEEK;
	r->body_pos = (size_t)off;
	return CURL_SEEKFUNC_OK;
}

static CURL *handle_get(s3_client *c)
{
	pthread_mutex_lock(&c->mu);
	CURL *h = c->n_idle ? c->idle[--c->n_idle] : NULL;
	pthread_mutex_unlock(&c->mu);
	return h ? h : curl_easy_init();
}

static void handle_put(s3_client *c, CURL *h)
{
	curl_easy_reset(h); /* keeps the connection cache */
	pthread_mutex_lock(&c->mu);
	if (c->n_idle < POOL_MAX) {
		c->idle[c->n_idle++] = h;
		h = NULL;
	}
	pthread_mutex_unlock(&c->mu);
	if (h)
		curl_easy_cleanup(h);
}

static int retryable_status(long st, const char *code)
{
	if (code && !strcmp(code, "NotImplemented"))
		return 0;
	return st >= 500 || st == 408 || st == 429 ||
	       (code && (!strcmp(code, "RequestTimeout") || !strcmp(code, "SlowDown") ||
			 !strcmp(code, "InternalError")));
}

static void sleep_ms(uint32_t ms)
{
	struct timespec t = {ms / 1000, (long)(ms % 1000) * 1000000L};
	while (nanosleep(&t, &t) && errno == EINTR)
		;
}

/* The object named in messages: "bucket/key". */
static void what(const s3_client *c, const s3_req *r, char *buf, size_t cap)
{
	snprintf(buf, cap, "%s/%s", c->bucket, r->key ? r->key : "");
}

/*
 * Sends r, retrying what is worth retrying. 0 for a 2xx answer (r->resp
 * holds an XML body when keep_resp), TALLY_ENOTFOUND for 404, else
 * TALLY_EREMOTE with the status and S3 error code in the message.
 */
static int s3_do(s3_client *c, s3_req *r)
{
	char url[4096], enc[3 * S3_KEY_MAX + 1], obj[S3_KEY_MAX + 256];
	what(c, r, obj, sizeof obj);
	if (r->key && uri_encode(r->key, 1, enc, sizeof enc))
		return err_set(TALLY_EINVAL, "s3: key too long: %.80s...", r->key);
	snprintf(url, sizeof url, "%s/%s%s%s%s%s", c->endpoint, c->bucket, r->key ? "/" : "",
		 r->key ? enc : "", r->query ? "?" : "", r->query ? r->query : "");
	/* the payload hash and MD5, once for all attempts */
	char sha_hdr[128], md5_hdr[64], range_hdr[96], type_hdr[96], tok_hdr[2048];
	if (r->has_body) {
		uint8_t d[32];
		char hx[65];
		if (digest(EVP_sha256(), r->body, r->body_len, d))
			return err_set(TALLY_EREMOTE, "s3: SHA-256 failed");
		hex(d, 32, hx);
		snprintf(sha_hdr, sizeof sha_hdr, "x-amz-content-sha256: %s", hx);
		uint8_t m[16];
		char mb[32];
		if (digest(EVP_md5(), r->body, r->body_len, m))
			return err_set(TALLY_EREMOTE, "s3: MD5 failed");
		b64(m, 16, mb);
		snprintf(md5_hdr, sizeof md5_hdr, "Content-MD5: %s", mb);
	} else {
		snprintf(sha_hdr, sizeof sha_hdr, "x-amz-content-sha256: %s", EMPTY_SHA256);
	}
	int last_rc = 0;
	char why[640] = "";
	for (unsigned attempt = 0;; attempt++) {
		CURL *h = handle_get(c);
		if (!h)
			return err_set(-ENOMEM, "s3: curl_easy_init failed");
		struct curl_slist *hl = NULL, *t;
#define ADD(s)                                         \
	do {                                           \
		if (!(t = curl_slist_append(hl, (s)))) \
			goto oom;                      \
		hl = t;                                \
	} while (0)
		ADD(sha_hdr);
		if (r->has_body)
			ADD(md5_hdr);
		if (r->content_type) {
			snprintf(type_hdr, sizeof type_hdr, "Content-Type: %s", r->content_type);
			ADD(type_hdr);
		}
		if (r->ranged) {
			snprintf(range_hdr, sizeof range_hdr, "Range: bytes=%llu-%llu",
				 (unsigned long long)r->range_off,
				 (unsigned long long)(r->range_off + r->range_len - 1));
			ADD(range_hdr);
		}
		if (c->token) {
			snprintf(tok_hdr, sizeof tok_hdr, "x-amz-security-token: %s", c->token);
			ADD(tok_hdr);
		}
#undef ADD
		/* reset the attempt's state */
		r->body_pos = 0;
		r->out_len = 0;
		r->got = 0;
		r->resp.len = 0;
		r->status = 0;
		r->etag[0] = 0;
		r->has_length = 0;
		r->sink_err = 0;
		if (r->xs)
			XXH3_64bits_reset(r->xs);
		if (r->fd >= 0 && ftruncate(r->fd, 0)) {
			curl_slist_free_all(hl);
			handle_put(c, h);
			return err_sys(errno, "s3 %s %s: truncating the local copy", r->op, obj);
		}
		curl_easy_setopt(h, CURLOPT_URL, url);
		curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
		curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
		curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)c->timeout_ms);
		curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)c->connect_timeout_ms);
		curl_easy_setopt(h, CURLOPT_HTTPHEADER, hl);
		curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
		curl_easy_setopt(h, CURLOPT_HEADERDATA, r);
		curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
		curl_easy_setopt(h, CURLOPT_WRITEDATA, r);
		if (c->ak) {
			curl_easy_setopt(h, CURLOPT_AWS_SIGV4, c->sigv4);
			curl_easy_setopt(h, CURLOPT_USERNAME, c->ak);
			curl_easy_setopt(h, CURLOPT_PASSWORD, c->sk ? c->sk : "");
		}
		if (!strcmp(r->method, "HEAD")) {
			curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
		} else if (!strcmp(r->method, "PUT")) {
			curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
			curl_easy_setopt(h, CURLOPT_READFUNCTION, on_read);
			curl_easy_setopt(h, CURLOPT_READDATA, r);
			curl_easy_setopt(h, CURLOPT_SEEKFUNCTION, on_seek);
			curl_easy_setopt(h, CURLOPT_SEEKDATA, r);
			curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, (curl_off_t)r->body_len);
		} else if (!strcmp(r->method, "POST")) {
			curl_easy_setopt(h, CURLOPT_POST, 1L);
			curl_easy_setopt(h, CURLOPT_POSTFIELDS,
					 r->body ? (const char *)r->body : "");
			curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->body_len);
		} else if (strcmp(r->method, "GET")) {
			curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, r->method);
		}
		atomic_fetch_add(&c->st.requests, 1);
		if (attempt)
			atomic_fetch_add(&c->st.retries, 1);
		CURLcode cc = curl_easy_perform(h);
		curl_slist_free_all(hl);
		handle_put(c, h);
		if (r->has_body && cc == CURLE_OK)
			atomic_fetch_add(&c->st.bytes_up, r->body_len);
		atomic_fetch_add(&c->st.bytes_down, r->got + r->resp.len);
		int retry = 0;
		if (cc == CURLE_WRITE_ERROR && r->sink_err == 2)
			return err_sys(EIO, "s3 %s %s: writing the local copy", r->op, obj);
		if (cc != CURLE_OK) {
			snprintf(why, sizeof why, "%s", curl_easy_strerror(cc));
			last_rc = TALLY_EREMOTE;
			retry = 1;
		} else if (r->status >= 200 && r->status < 300) {
			return 0;
		} else {
			char code[128] = "", msg[256] = "";
			size_t pos = 0;
			if (r->resp.p) {
				xml_tag(r->resp.p, r->resp.len, &pos, "Code", code, sizeof code);
				pos = 0;
				xml_tag(r->resp.p, r->resp.len, &pos, "Message", msg, sizeof msg);
			}
			if (r->status == 404 && (!code[0] || !strcmp(code, "NoSuchKey"))) {
				return err_set(TALLY_ENOTFOUND,
					       "s3 %s %s: no such object (HTTP 404)", r->op, obj);
			}
			snprintf(why, sizeof why, "HTTP %ld%s%s%s%s", r->status, code[0] ? " " : "",
				 code, msg[0] ? ": " : "", msg);
			last_rc = r->status == 404 ? TALLY_ENOTFOUND : TALLY_EREMOTE;
			retry = retryable_status(r->status, code);
		}
		if (!retry || attempt >= c->retries)
			break;
		/* exponential backoff with jitter: base * 2^attempt * [0.5, 1.5) */
		uint64_t ms = (uint64_t)c->backoff_ms << (attempt < 16 ? attempt : 16);
		if (ms > BACKOFF_CAP_MS)
			ms = BACKOFF_CAP_MS;
		ms = ms / 2 + (uint64_t)rand() % (ms + 1);
		sleep_ms((uint32_t)ms);
		continue;
oom:
		curl_slist_free_all(hl);
		handle_put(c, h);
		return err_set(-ENOMEM, "out of memory");
	}
	atomic_fetch_add(&c->st.failures, 1);
	return err_set(last_rc, "s3 %s %s at %s: %s", r->op, obj, c->endpoint, why);
}

static void req_init(s3_req *r, const char *op, const char *method, const char *key)
{
	memset(r, 0, sizeof *r);
	r->op = op;
	r->method = method;
	r->key = key;
	r->fd = -1;
}

static void req_free(s3_req *r)
{
	mem_free(r->resp.p);
}

/* ---------------------------------------------------------------- client */

static char *dup_or_null(const char *s)
{
	return s ? mem_strndup(s, strlen(s)) : NULL;
}

int s3_open(const s3_config *cfg, s3_client **out)
{
	*out = NULL;
	pthread_once(&curl_once, curl_init);
	if (curl_init_rc != CURLE_OK)
		return err_set(TALLY_EREMOTE, "s3: curl_global_init: %s",
			       curl_easy_strerror(curl_init_rc));
	if (!cfg->bucket || !*cfg->bucket || strlen(cfg->bucket) > 63 ||
	    strspn(cfg->bucket, "abcdefghijklmnopqrstuvwxyz0123456789.-") != strlen(cfg->bucket))
		return err_set(TALLY_EINVAL, "s3: bad bucket name '%.80s' (3-63 of a-z 0-9 . -)",
			       cfg->bucket ? cfg->bucket : "");
	const char *region = cfg->region && *cfg->region ? cfg->region : "us-east-1";
	if (strlen(region) > 64 ||
	    strspn(region, "abcdefghijklmnopqrstuvwxyz0123456789-") != strlen(region))
		return err_set(TALLY_EINVAL, "s3: bad region '%.80s'", region);
	char ep[512];
	if (cfg->endpoint && *cfg->endpoint)
		snprintf(ep, sizeof ep, "%s", cfg->endpoint);
	else
		snprintf(ep, sizeof ep, "https://s3.%s.amazonaws.com", region);
	size_t el = strlen(ep);
	while (el && ep[el - 1] == '/')
		ep[--el] = 0;
	if (strncmp(ep, "http://", 7) && strncmp(ep, "https://", 8))
		return err_set(TALLY_EINVAL, "s3: endpoint '%.200s' is not http:// or https://",
			       ep);
	s3_client *c = mem_calloc(1, sizeof *c);
	if (!c)
		return err_set(-ENOMEM, "out of memory");
	pthread_mutex_init(&c->mu, NULL);
	c->endpoint = dup_or_null(ep);
	c->bucket = dup_or_null(cfg->bucket);
	c->region = dup_or_null(region);
	c->ak = cfg->access_key && *cfg->access_key ? dup_or_null(cfg->access_key) : NULL;
	c->sk = dup_or_null(cfg->secret_key);
	c->token =
		cfg->session_token && *cfg->session_token ? dup_or_null(cfg->session_token) : NULL;
	if (!c->endpoint || !c->bucket || !c->region ||
	    (cfg->access_key && *cfg->access_key && !c->ak) || (cfg->secret_key && !c->sk)) {
		s3_close(c);
		return err_set(-ENOMEM, "out of memory");
	}
	if (c->token && strlen(c->token) > 1900) {
		s3_close(c);
		return err_set(TALLY_EINVAL, "s3: session token too long");
	}
	snprintf(c->sigv4, sizeof c->sigv4, "aws:amz:%s:s3", c->region);
	snprintf(c->where, sizeof c->where, "%s/%s", c->endpoint, c->bucket);
	c->timeout_ms = cfg->timeout_ms ? cfg->timeout_ms : 30000;
	c->connect_timeout_ms = cfg->connect_timeout_ms ? cfg->connect_timeout_ms : 5000;
	c->retries = cfg->retries;
	c->backoff_ms = cfg->backoff_ms ? cfg->backoff_ms : 200;
	c->part_bytes = cfg->part_bytes ? cfg->part_bytes : UINT64_C(16) << 20;
	if (c->part_bytes < S3_PART_MIN)
		c->part_bytes = S3_PART_MIN;
	if (c->part_bytes > S3_PART_MAX)
		c->part_bytes = S3_PART_MAX;
	*out = c;
	return 0;
}

int s3_open_like(const s3_client *like, const char *bucket, s3_client **out)
{
	s3_config cfg = {
		.endpoint = like->endpoint,
		.bucket = bucket,
		.region = like->region,
		.access_key = like->ak,
		.secret_key = like->sk,
		.session_token = like->token,
		.timeout_ms = like->timeout_ms,
		.connect_timeout_ms = like->connect_timeout_ms,
		.retries = like->retries,
		.backoff_ms = like->backoff_ms,
		.part_bytes = like->part_bytes,
	};
	return s3_open(&cfg, out);
}

void s3_close(s3_client *c)
{
	if (!c)
		return;
	for (unsigned i = 0; i < c->n_idle; i++)
		curl_easy_cleanup(c->idle[i]);
	mem_free(c->endpoint);
	mem_free(c->bucket);
	mem_free(c->region);
	mem_free(c->ak);
	if (c->sk) /* do not leave the secret in freed memory */
		memset(c->sk, 0, strlen(c->sk));
	mem_free(c->sk);
	if (c->token)
		memset(c->token, 0, strlen(c->token));
	mem_free(c->token);
	pthread_mutex_destroy(&c->mu);
	mem_free(c);
}

s3_stats *s3_client_stats(s3_client *c)
{
	return &c->st;
}

const char *s3_where(const s3_client *c)
{
	return c->where;
}

/* ---------------------------------------------------------------- objects */

int s3_put(s3_client *c, const char *key, const void *data, size_t len, s3_put_info *info)
{
	s3_req r;
	req_init(&r, "PUT", "PUT", key);
	r.body = data;
	r.body_len = len;
	r.has_body = 1;
	r.content_type = "application/octet-stream";
	int rc = s3_do(c, &r);
	if (!rc && info) {
		uint8_t m[16];
		memset(info, 0, sizeof *info);
		info->bytes = len;
		info->xxh3 = XXH3_64bits(data, len);
		digest(EVP_md5(), data, len, m);
		hex(m, 16, info->want_etag);
		hex(m, 16, info->whole_md5);
		snprintf(info->etag, sizeof info->etag, "%s", r.etag);
	}
	req_free(&r);
	return rc;
}

static int mp_abort(s3_client *c, const char *key, const char *upload_id)
{
	char q[1024], enc[900];
	if (uri_encode(upload_id, 0, enc, sizeof enc))
		return TALLY_EINVAL;
	snprintf(q, sizeof q, "uploadId=%s", enc);
	s3_req r;
	req_init(&r, "AbortMultipartUpload", "DELETE", key);
	r.query = q;
	int rc = s3_do(c, &r);
	req_free(&r);
	return rc == TALLY_ENOTFOUND ? 0 : rc;
}

int s3_put_file(s3_client *c, const char *key, int fd, uint64_t size, s3_put_info *info)
{
	memset(info, 0, sizeof *info);
	uint64_t pb = c->part_bytes;
	if (size <= pb) {
		/* one PUT: small enough to hold in memory whole */
		uint8_t *buf = mem_alloc(size ? size : 1);
		if (!buf)
			return err_set(-ENOMEM, "out of memory");
		int rc = fio_pread_full(fd, buf, size, 0, key);
		if (!rc)
			rc = s3_put(c, key, buf, size, info);
		mem_free(buf);
		return rc;
	}
	if ((size + pb - 1) / pb > S3_PARTS_MAX)
		pb = (size + S3_PARTS_MAX - 1) / S3_PARTS_MAX;
	unsigned n_parts = (unsigned)((size + pb - 1) / pb);
	uint8_t *buf = mem_alloc(pb);
	uint8_t *md5s = mem_alloc((size_t)n_parts * 16);
	char *etags = mem_calloc(n_parts, S3_ETAG_MAX);
	XXH3_state_t *xs = XXH3_createState();
	EVP_MD_CTX *whole = EVP_MD_CTX_new();
	char upload_id[768] = "", enc[900], q[1024];
	int rc = 0;
	s3_req r;
	req_init(&r, "CreateMultipartUpload", "POST", key);
	if (!buf || !md5s || !etags || !xs || !whole ||
	    !EVP_DigestInit_ex(whole, EVP_md5(), NULL)) {
		rc = err_set(-ENOMEM, "out of memory");
		goto out;
	}
	XXH3_64bits_reset(xs);
	r.query = "uploads=";
	r.has_body = 1; /* empty, but hashed and typed like any body */
	r.body = (const uint8_t *)"";
	r.content_type = "application/octet-stream";
	r.keep_resp = 1;
	if ((rc = s3_do(c, &r)))
		goto out;
	size_t pos = 0;
	if (!r.resp.p ||
	    !xml_tag(r.resp.p, r.resp.len, &pos, "UploadId", upload_id, sizeof upload_id) ||
	    !upload_id[0] || uri_encode(upload_id, 0, enc, sizeof enc)) {
		rc = err_set(TALLY_EREMOTE, "s3 CreateMultipartUpload %s/%s: no usable UploadId",
			     c->bucket, key);
		goto out;
	}
	for (unsigned i = 0; i < n_parts; i++) {
		uint64_t off = (uint64_t)i * pb, len = size - off < pb ? size - off : pb;
		if ((rc = fio_pread_full(fd, buf, len, off, key)))
			goto abort;
		XXH3_64bits_update(xs, buf, len);
		EVP_DigestUpdate(whole, buf, len);
		digest(EVP_md5(), buf, len, md5s + 16 * (size_t)i);
		snprintf(q, sizeof q, "partNumber=%u&uploadId=%s", i + 1, enc);
		s3_req pr;
		req_init(&pr, "UploadPart", "PUT", key);
		pr.query = q;
		pr.body = buf;
		pr.body_len = len;
		pr.has_body = 1;
		pr.content_type = "application/octet-stream";
		rc = s3_do(c, &pr);
		snprintf(etags + (size_t)i * S3_ETAG_MAX, S3_ETAG_MAX, "%s", pr.etag);
		req_free(&pr);
		if (rc)
			goto abort;
		if (!etags[(size_t)i * S3_ETAG_MAX]) {
			rc = err_set(TALLY_EREMOTE, "s3 UploadPart %s/%s part %u: no ETag",
				     c->bucket, key, i + 1);
			goto abort;
		}
	}
	{
		/* CompleteMultipartUpload: the parts and their ETags, in order */
		size_t cap = 128 + (size_t)n_parts * (64 + S3_ETAG_MAX);
		char *xml = mem_alloc(cap);
		if (!xml) {
			rc = err_set(-ENOMEM, "out of memory");
			goto abort;
		}
		size_t o = (size_t)snprintf(xml, cap, "<CompleteMultipartUpload>");
		for (unsigned i = 0; i < n_parts; i++)
			o += (size_t)snprintf(xml + o, cap - o,
					      "<Part><PartNumber>%u</PartNumber><ETag>\"%s\"</ETag>"
					      "</Part>",
					      i + 1, etags + (size_t)i * S3_ETAG_MAX);
		o += (size_t)snprintf(xml + o, cap - o, "</CompleteMultipartUpload>");
		snprintf(q, sizeof q, "uploadId=%s", enc);
		s3_req cr;
		req_init(&cr, "CompleteMultipartUpload", "POST", key);
		cr.query = q;
		cr.body = (const uint8_t *)xml;
		cr.body_len = o;
		cr.has_body = 1;
		cr.content_type = "application/xml";
		cr.keep_resp = 1;
		rc = s3_do(c, &cr);
		/* S3 may answer 200 and put the error in the body */
		char code[128] = "", msg[256] = "", etag[S3_ETAG_MAX] = "";
		size_t p0 = 0;
		if (!rc && cr.resp.p && memmem(cr.resp.p, cr.resp.len, "<Error>", 7)) {
			xml_tag(cr.resp.p, cr.resp.len, &p0, "Code", code, sizeof code);
			p0 = 0;
			xml_tag(cr.resp.p, cr.resp.len, &p0, "Message", msg, sizeof msg);
			rc = err_set(TALLY_EREMOTE, "s3 CompleteMultipartUpload %s/%s: %s: %s",
				     c->bucket, key, code, msg);
		} else if (!rc && cr.resp.p) {
			p0 = 0;
			if (xml_tag(cr.resp.p, cr.resp.len, &p0, "ETag", etag, sizeof etag))
				etag_clean(etag, strlen(etag), info->etag, sizeof info->etag);
		}
		req_free(&cr);
		mem_free(xml);
		if (rc)
			goto abort;
	}
	{
		uint8_t m[16];
		char mh[33];
		digest(EVP_md5(), md5s, (size_t)n_parts * 16, m);
		hex(m, 16, mh);
		snprintf(info->want_etag, sizeof info->want_etag, "%s-%u", mh, n_parts);
		unsigned ml = 0;
		EVP_DigestFinal_ex(whole, m, &ml);
		hex(m, 16, info->whole_md5);
		info->bytes = size;
		info->parts = n_parts;
		info->xxh3 = XXH3_64bits_digest(xs);
	}
	goto out;
abort:
	if (upload_id[0]) {
		/* keep the first error's message: the abort is best effort */
		char keep[ERR_MSG_MAX];
		snprintf(keep, sizeof keep, "%s", err_msg());
		mp_abort(c, key, upload_id);
		err_set(rc, "%s", keep);
	}
out:
	req_free(&r);
	mem_free(buf);
	mem_free(md5s);
	mem_free(etags);
	if (xs)
		XXH3_freeState(xs);
	EVP_MD_CTX_free(whole);
	return rc;
}

int s3_head(s3_client *c, const char *key, uint64_t *size, char *etag, size_t etag_cap)
{
	s3_req r;
	req_init(&r, "HEAD", "HEAD", key);
	int rc = s3_do(c, &r);
	if (!rc && !r.has_length)
		rc = err_set(TALLY_EREMOTE, "s3 HEAD %s/%s: no Content-Length", c->bucket, key);
	if (!rc) {
		if (size)
			*size = r.content_length;
		if (etag)
			snprintf(etag, etag_cap, "%s", r.etag);
	}
	req_free(&r);
	return rc;
}

/* An ETag S3 computed as an MD5: 32 hex digits, or that and "-N" for a
 * multipart upload. Servers that encrypt with KMS answer something else. */
static int etag_is_md5(const char *e)
{
	size_t n = strspn(e, "0123456789abcdefABCDEF");
	if (n != 32)
		return 0;
	if (!e[32])
		return 1;
	return e[32] == '-' && e[33] && strspn(e + 33, "0123456789") == strlen(e + 33);
}

int s3_verify(s3_client *c, const char *key, const s3_put_info *info)
{
	uint64_t size;
	char etag[S3_ETAG_MAX];
	int rc = s3_head(c, key, &size, etag, sizeof etag);
	if (rc)
		return err_prefix(rc, "verifying the upload");
	if (size != info->bytes)
		return err_set(TALLY_EREMOTE, "s3 %s/%s: holds %llu bytes, %llu were uploaded",
			       c->bucket, key, (unsigned long long)size,
			       (unsigned long long)info->bytes);
	/* S3 gives a multipart object the MD5 of its parts' MD5s and "-N";
	 * some servers (s3rver) the MD5 of the whole object: either proves it */
	if (!strcasecmp(etag, info->want_etag) || !strcasecmp(etag, info->whole_md5))
		return 0;
	if (etag_is_md5(etag))
		return err_set(TALLY_EREMOTE, "s3 %s/%s: ETag %s, the uploaded bytes give %s",
			       c->bucket, key, etag, info->want_etag);
	/* not an MD5 ETag: read the object back and compare checksums */
	s3_req r;
	req_init(&r, "GET (verify)", "GET", key);
	r.hash_only = 1;
	r.xs = XXH3_createState();
	if (!r.xs)
		return err_set(-ENOMEM, "out of memory");
	atomic_fetch_add(&c->st.gets, 1);
	rc = s3_do(c, &r);
	uint64_t got = r.got, sum = XXH3_64bits_digest(r.xs);
	XXH3_freeState(r.xs);
	req_free(&r);
	if (rc)
		return err_prefix(rc, "verifying the upload");
	if (got != info->bytes || sum != info->xxh3)
		return err_set(TALLY_EREMOTE,
			       "s3 %s/%s: the object read back differs from the "
			       "uploaded bytes",
			       c->bucket, key);
	return 0;
}

int s3_get_range(s3_client *c, const char *key, uint64_t off, size_t len, void *buf)
{
	if (!len)
		return 0;
	s3_req r;
	req_init(&r, "GET range", "GET", key);
	r.ranged = 1;
	r.range_off = off;
	r.range_len = len;
	r.out = buf;
	r.out_cap = len;
	atomic_fetch_add(&c->st.gets, 1);
	int rc = s3_do(c, &r);
	if (!rc && (r.status != 206 || r.out_len != len))
		rc = err_set(TALLY_EREMOTE,
			     "s3 GET %s/%s bytes %llu-%llu: HTTP %ld with %zu bytes; the server "
			     "must honour ranges",
			     c->bucket, key, (unsigned long long)off,
			     (unsigned long long)(off + len - 1), r.status, r.out_len);
	req_free(&r);
	return rc;
}

int s3_get_file(s3_client *c, const char *key, int fd, uint64_t *bytes, uint64_t *xxh3)
{
	s3_req r;
	req_init(&r, "GET", "GET", key);
	r.fd = fd;
	r.xs = XXH3_createState();
	if (!r.xs)
		return err_set(-ENOMEM, "out of memory");
	atomic_fetch_add(&c->st.gets, 1);
	int rc = s3_do(c, &r);
	if (!rc && r.has_length && r.got != r.content_length)
		rc = err_set(TALLY_EREMOTE, "s3 GET %s/%s: %llu bytes of %llu", c->bucket, key,
			     (unsigned long long)r.got, (unsigned long long)r.content_length);
	if (!rc) {
		if (bytes)
			*bytes = r.got;
		if (xxh3)
			*xxh3 = XXH3_64bits_digest(r.xs);
	}
	XXH3_freeState(r.xs);
	req_free(&r);
	return rc;
}

int s3_delete(s3_client *c, const char *key)
{
	s3_req r;
	req_init(&r, "DELETE", "DELETE", key);
	int rc = s3_do(c, &r);
	req_free(&r);
	return rc == TALLY_ENOTFOUND ? 0 : rc;
}

int s3_list(s3_client *c, const char *prefix, s3_list_fn *fn, void *ctx)
{
	char token[1024] = "", etok[3200], epre[3 * S3_KEY_MAX + 1], q[8192];
	if (uri_encode(prefix ? prefix : "", 0, epre, sizeof epre))
		return err_set(TALLY_EINVAL, "s3: prefix too long");
	for (;;) {
		if (uri_encode(token, 0, etok, sizeof etok))
			return err_set(TALLY_EREMOTE, "s3 list: continuation token too long");
		/* canonical: keys in byte order */
		snprintf(q, sizeof q, "%s%s%slist-type=2&prefix=%s",
			 token[0] ? "continuation-token=" : "", token[0] ? etok : "",
			 token[0] ? "&" : "", epre);
		s3_req r;
		req_init(&r, "ListObjectsV2", "GET", NULL);
		r.query = q;
		r.keep_resp = 1;
		int rc = s3_do(c, &r);
		if (rc) {
			req_free(&r);
			return rc;
		}
		const char *x = r.resp.p ? r.resp.p : "";
		size_t len = r.resp.len, pos = 0;
		char key[S3_KEY_MAX + 1], size[32];
		/* each <Contents> holds a <Key> and a <Size> */
		for (;;) {
			size_t at = pos;
			char dummy[2];
			if (!xml_tag(x, len, &at, "Contents", dummy, sizeof dummy))
				break;
			const char *cs = memmem(x + pos, len - pos, "<Contents>", 10);
			size_t cpos = (size_t)(cs - x), kp = cpos, sp = cpos;
			if (!xml_tag(x, at, &kp, "Key", key, sizeof key) ||
			    !xml_tag(x, at, &sp, "Size", size, sizeof size)) {
				req_free(&r);
				return err_set(TALLY_EREMOTE, "s3 list: malformed answer");
			}
			pos = at;
			int stop = fn(ctx, key, strtoull(size, NULL, 10));
			if (stop) {
				req_free(&r);
				return stop;
			}
		}
		char trunc[16] = "";
		pos = 0;
		xml_tag(x, len, &pos, "IsTruncated", trunc, sizeof trunc);
		pos = 0;
		token[0] = 0;
		if (!strcmp(trunc, "true"))
			xml_tag(x, len, &pos, "NextContinuationToken", token, sizeof token);
		req_free(&r);
		if (!token[0])
			return 0;
	}
}

int s3_create_bucket(s3_client *c)
{
	s3_req r;
	req_init(&r, "CreateBucket", "PUT", NULL);
	/* outside us-east-1 the region goes in the body */
	char xml[256];
	size_t n = 0;
	if (strcmp(c->region, "us-east-1"))
		n = (size_t)snprintf(xml, sizeof xml,
				     "<CreateBucketConfiguration><LocationConstraint>%s"
				     "</LocationConstraint></CreateBucketConfiguration>",
				     c->region);
	r.body = (const uint8_t *)xml;
	r.body_len = n;
	r.has_body = 1;
	r.content_type = "application/xml";
	int rc = s3_do(c, &r);
	if (rc && (strstr(err_msg(), "BucketAlreadyOwnedByYou") ||
		   strstr(err_msg(), "BucketAlreadyExists")))
		rc = 0;
	req_free(&r);
	return rc;
}

int s3_abort_uploads(s3_client *c, const char *prefix, unsigned *n)
{
	*n = 0;
	char epre[3 * S3_KEY_MAX + 1], q[3 * S3_KEY_MAX + 64];
	if (uri_encode(prefix ? prefix : "", 0, epre, sizeof epre))
		return err_set(TALLY_EINVAL, "s3: prefix too long");
	/* one page (up to 1,000 uploads) per call is plenty: it runs at
	 * every start and after failed uploads */
	snprintf(q, sizeof q, "prefix=%s&uploads=", epre);
	s3_req r;
	req_init(&r, "ListMultipartUploads", "GET", NULL);
	r.query = q;
	r.keep_resp = 1;
	int rc = s3_do(c, &r);
	if (rc) {
		req_free(&r);
		return rc;
	}
	const char *x = r.resp.p ? r.resp.p : "";
	size_t len = r.resp.len, pos = 0;
	for (;;) {
		const char *u = pos < len ? memmem(x + pos, len - pos, "<Upload>", 8) : NULL;
		if (!u)
			break;
		const char *ue = memmem(u, len - (size_t)(u - x), "</Upload>", 9);
		if (!ue)
			break;
		size_t end = (size_t)(ue - x), kp = (size_t)(u - x), ip = kp;
		char key[S3_KEY_MAX + 1], id[768];
		if (xml_tag(x, end, &kp, "Key", key, sizeof key) &&
		    xml_tag(x, end, &ip, "UploadId", id, sizeof id) && !mp_abort(c, key, id))
			(*n)++;
		pos = end + 9;
	}
	req_free(&r);
	return 0;
}
