/*
 * test_s3.c — the S3 client against real S3-compatible servers started on
 * free loopback ports: s3rver (npm) and moto_server (when python3 has
 * moto), both checking SigV4 signatures. awscli confirms independently
 * what the client stored. Exits 77 (skipped) only when neither server can
 * run here.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <sys/time.h>
#include <sys/wait.h>

#include "err.h"
#include "s3.h"
#include "s3util.h"
#include "testutil.h"

static s3srv srv_s3rver, srv_moto;

static s3srv *server(const char *kind)
{
	s3srv *s = !strcmp(kind, "moto") ? &srv_moto : &srv_s3rver;
	if (!s->up) /* a test worker: the servers come in the environment */
		s3srv_import(s, !strcmp(kind, "moto") ? "TALLY_TEST_MOTO" : "TALLY_TEST_S3RVER");
	if (!s->up)
		cr_skip_test("%s is not available here", kind);
	return s;
}

static s3_client *client_for(const s3srv *s, const char *endpoint, s3_config *over)
{
	s3_config c = {0};
	if (over)
		c = *over;
	c.endpoint = endpoint ? endpoint : s->endpoint;
	c.bucket = s->bucket;
	c.region = s->region;
	c.access_key = s->access_key;
	c.secret_key = c.secret_key ? c.secret_key : s->secret_key;
	if (!c.timeout_ms)
		c.timeout_ms = 10000;
	s3_client *cl;
	cr_assert_eq(s3_open(&c, &cl), 0, "%s", tally_errmsg());
	return cl;
}

static void fill(uint8_t *p, size_t n, uint64_t seed)
{
	tu_rng r = {seed};
	for (size_t i = 0; i < n; i += 8) {
		uint64_t v = tu_next(&r);
		memcpy(p + i, &v, n - i < 8 ? n - i : 8);
	}
}

static int tmpfile_with(const uint8_t *p, size_t n, char *path)
{
	strcpy(path, "/tmp/tally-s3-obj-XXXXXX");
	int fd = mkstemp(path);
	cr_assert_geq(fd, 0);
	cr_assert_eq((size_t)write(fd, p, n), n);
	return fd;
}

/* awscli's view of an object: its bytes, fetched into a file, compared. */
static void aws_confirms(const s3srv *s, const char *key, const uint8_t *want, size_t n)
{
	char path[64] = "/tmp/tally-s3-aws-XXXXXX";
	int fd = mkstemp(path);
	close(fd);
	cr_assert_eq(s3srv_aws(s, NULL, 0, "s3api get-object --bucket %s --key %s %s", s->bucket,
			       key, path),
		     0, "awscli could not read %s back", key);
	FILE *f = fopen(path, "rb");
	uint8_t *got = malloc(n + 1);
	size_t k = fread(got, 1, n + 1, f);
	fclose(f);
	unlink(path);
	cr_assert_eq(k, n, "awscli read %zu bytes of %s, want %zu", k, key, n);
	cr_assert(!memcmp(got, want, n), "awscli read other bytes for %s", key);
	free(got);
}

static void put_get_head_delete(const char *kind)
{
	s3srv *s = server(kind);
	s3_client *c = client_for(s, NULL, NULL);
	size_t n = 300000;
	uint8_t *data = malloc(n);
	fill(data, n, 1);
	char key[128];
	snprintf(key, sizeof key, "t1/%s/obj.part", kind);
	s3_put_info pi;
	cr_assert_eq(s3_put(c, key, data, n, &pi), 0, "%s", tally_errmsg());
	cr_assert_eq(s3_verify(c, key, &pi), 0, "%s", tally_errmsg());
	uint64_t size;
	char etag[S3_ETAG_MAX];
	cr_assert_eq(s3_head(c, key, &size, etag, sizeof etag), 0, "%s", tally_errmsg());
	cr_assert_eq(size, n);
	cr_assert_str_eq(etag, pi.want_etag);
	/* ranges: first bytes, middle, last */
	uint8_t buf[5000];
	uint64_t offs[] = {0, 123457, n - 5000};
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(s3_get_range(c, key, offs[i], 5000, buf), 0, "%s", tally_errmsg());
		cr_assert(!memcmp(buf, data + offs[i], 5000), "range at %llu differs",
			  (unsigned long long)offs[i]);
	}
	/* whole object into a file */
	char path[64];
	int fd = tmpfile_with((const uint8_t *)"", 0, path);
	uint64_t got, sum;
	cr_assert_eq(s3_get_file(c, key, fd, &got, &sum), 0, "%s", tally_errmsg());
	cr_assert_eq(got, n);
	cr_assert_eq(sum, pi.xxh3);
	close(fd);
	unlink(path);
	aws_confirms(s, key, data, n);
	cr_assert_eq(s3_delete(c, key), 0, "%s", tally_errmsg());
	cr_assert_eq(s3_head(c, key, &size, NULL, 0), TALLY_ENOTFOUND);
	cr_assert_eq(s3_delete(c, key), 0, "deleting twice is fine");
	cr_assert_neq(
		s3srv_aws(s, NULL, 0, "s3api head-object --bucket %s --key %s", s->bucket, key), 0,
		"awscli still sees the deleted object");
	s3_stats *st = s3_client_stats(c);
	cr_assert_geq(atomic_load(&st->bytes_up), n);
	s3_close(c);
	free(data);
}

Test(s3, put_get_head_delete_s3rver)
{
	put_get_head_delete("s3rver");
}
Test(s3, put_get_head_delete_moto)
{
	put_get_head_delete("moto");
}

static void multipart(const char *kind)
{
	s3srv *s = server(kind);
	s3_config o = {.part_bytes = S3_PART_MIN};
	s3_client *c = client_for(s, NULL, &o);
	size_t n = 2 * S3_PART_MIN + 777777; /* 3 parts, the last short */
	uint8_t *data = malloc(n);
	fill(data, n, 2);
	char path[64];
	int fd = tmpfile_with(data, n, path);
	char key[128];
	snprintf(key, sizeof key, "t2/%s/big.part", kind);
	s3_put_info pi;
	cr_assert_eq(s3_put_file(c, key, fd, n, &pi), 0, "%s", tally_errmsg());
	cr_assert_eq(pi.parts, 3);
	cr_assert_eq(s3_verify(c, key, &pi), 0, "%s", tally_errmsg());
	/* a range across the boundary of parts 1 and 2 */
	uint8_t buf[4096];
	cr_assert_eq(s3_get_range(c, key, S3_PART_MIN - 2048, 4096, buf), 0, "%s", tally_errmsg());
	cr_assert(!memcmp(buf, data + S3_PART_MIN - 2048, 4096));
	aws_confirms(s, key, data, n);
	/* no multipart upload is left behind */
	char out[4096];
	if (!strcmp(kind, "moto")) {
		cr_assert_eq(s3srv_aws(s, out, sizeof out,
				       "s3api list-multipart-uploads --bucket %s --output text",
				       s->bucket),
			     0);
		cr_assert(!strstr(out, "big.part"), "an upload lingers: %s", out);
	}
	close(fd);
	unlink(path);
	s3_close(c);
	free(data);
}

Test(s3, multipart_upload_s3rver, .timeout = 120)
{
	multipart("s3rver");
}
Test(s3, multipart_upload_moto, .timeout = 120)
{
	multipart("moto");
}

/* moto checks SigV4 signatures: a wrong secret is SignatureDoesNotMatch.
 * s3rver checks only the access key id (it does not verify SigV4):
 * a wrong key is InvalidAccessKeyId. */
static void bad_signature(const char *kind)
{
	s3srv *s = server(kind);
	int moto = !strcmp(kind, "moto");
	s3_config o = {.secret_key = "definitely-not-the-secret-xyzzy"};
	s3srv wrong = *s;
	if (!moto)
		snprintf(wrong.access_key, sizeof wrong.access_key, "AKIANOSUCHKEY");
	s3_client *c = client_for(&wrong, NULL, &o);
	uint8_t data[100] = {1, 2, 3};
	int rc = s3_put(c, "t3/denied", data, sizeof data, NULL);
	cr_assert_eq(rc, TALLY_EREMOTE, "a wrong signature must be refused (rc %d)", rc);
	const char *m = tally_errmsg();
	cr_assert(strstr(m, "403"), "status in the message: %s", m);
	cr_assert(strstr(m, moto ? "SignatureDoesNotMatch" : "InvalidAccessKeyId"),
		  "S3 code in the message: %s", m);
	cr_assert(!strstr(m, "xyzzy"), "the secret leaked into the message: %s", m);
	cr_assert(!strstr(m, s->secret_key), "the secret leaked into the message: %s", m);
	/* a 403 is not retried */
	cr_assert_eq(atomic_load(&s3_client_stats(c)->retries), 0);
	s3_close(c);
	/* and the right secret signs every kind of request correctly */
	c = client_for(s, NULL, NULL);
	cr_assert_eq(s3_put(c, "t3/ok", data, sizeof data, NULL), 0, "%s", tally_errmsg());
	cr_assert_eq(s3_head(c, "t3/ok", NULL, NULL, 0), 0, "%s", tally_errmsg());
	cr_assert_eq(s3_delete(c, "t3/ok"), 0, "%s", tally_errmsg());
	s3_close(c);
}

Test(s3, wrong_secret_is_refused_and_never_shown_s3rver)
{
	bad_signature("s3rver");
}
Test(s3, wrong_secret_is_refused_and_never_shown_moto)
{
	bad_signature("moto");
}

typedef struct listed {
	int n;
	char keys[16][64];
	uint64_t sizes[16];
} listed;

static int on_list(void *ctx, const char *key, uint64_t size)
{
	listed *l = ctx;
	if (l->n < 16) {
		snprintf(l->keys[l->n], sizeof l->keys[0], "%s", key);
		l->sizes[l->n] = size;
	}
	l->n++;
	return 0;
}

static void list_objects(const char *kind)
{
	s3srv *s = server(kind);
	s3_client *c = client_for(s, NULL, NULL);
	uint8_t data[1000];
	fill(data, sizeof data, 3);
	for (int i = 4; i >= 0; i--) {
		char key[64];
		snprintf(key, sizeof key, "t4.%s.k%d", kind, i);
		cr_assert_eq(s3_put(c, key, data, 100 + (size_t)i, NULL), 0, "%s", tally_errmsg());
	}
	char other[64];
	snprintf(other, sizeof other, "t4.%s-other.x", kind);
	cr_assert_eq(s3_put(c, other, data, 10, NULL), 0);
	char prefix[64];
	/* no '/' in the prefix: moto decodes the query before checking the
	 * signature, so a correctly encoded %2F fails there (AWS wants it) */
	snprintf(prefix, sizeof prefix, "t4.%s.", kind);
	listed l = {0};
	cr_assert_eq(s3_list(c, prefix, on_list, &l), 0, "%s", tally_errmsg());
	cr_assert_eq(l.n, 5);
	for (int i = 0; i < 5; i++) {
		char want[64];
		snprintf(want, sizeof want, "t4.%s.k%d", kind, i);
		cr_assert_str_eq(l.keys[i], want);
		cr_assert_eq(l.sizes[i], 100 + (uint64_t)i);
	}
	char out[4096];
	cr_assert_eq(s3srv_aws(s, out, sizeof out,
			       "s3api list-objects-v2 --bucket %s --prefix %s --query "
			       "'Contents[].Key' --output text",
			       s->bucket, prefix),
		     0);
	int words = 0;
	for (char *p = strtok(out, " \t\n"); p; p = strtok(NULL, " \t\n"))
		words++;
	cr_assert_eq(words, 5, "awscli lists %d keys", words);
	s3_close(c);
}

Test(s3, list_s3rver)
{
	list_objects("s3rver");
}
Test(s3, list_moto)
{
	list_objects("moto");
}

static double now_s(void)
{
	struct timeval t;
	gettimeofday(&t, NULL);
	return (double)t.tv_sec + (double)t.tv_usec / 1e6;
}

/* Down: connections refused, retried with backoff, then a clear error. */
Test(s3, store_down_is_retried_then_reported)
{
	s3srv *s = server("s3rver");
	s3proxy px;
	cr_assert_eq(s3proxy_start(&px, s->port), 0);
	char ep[64];
	snprintf(ep, sizeof ep, "http://127.0.0.1:%d", px.port);
	s3_config o = {.retries = 3, .backoff_ms = 50, .timeout_ms = 2000};
	s3_client *c = client_for(s, ep, &o);
	uint8_t data[64] = {0};
	cr_assert_eq(s3_put(c, "t5/through-proxy", data, sizeof data, NULL), 0, "%s",
		     tally_errmsg());
	atomic_store(&px.mode, PX_REFUSE);
	double t0 = now_s();
	int rc = s3_put(c, "t5/down", data, sizeof data, NULL);
	double dt = now_s() - t0;
	cr_assert_eq(rc, TALLY_EREMOTE);
	cr_assert(strstr(tally_errmsg(), "t5/down"), "%s", tally_errmsg());
	s3_stats *st = s3_client_stats(c);
	cr_assert_eq(atomic_load(&st->retries), 3, "retries %llu",
		     (unsigned long long)atomic_load(&st->retries));
	/* backoff 50, 100, 200 ms, each with jitter in [0.5, 1.5) */
	cr_assert(dt >= 0.15 && dt < 2.0, "took %.3f s", dt);
	/* a hanging store: every try ends at the request timeout */
	s3_close(c);
	s3_config h = {.retries = 1, .backoff_ms = 10, .timeout_ms = 300};
	c = client_for(s, ep, &h);
	atomic_store(&px.mode, PX_HANG);
	t0 = now_s();
	rc = s3_head(c, "t5/through-proxy", NULL, NULL, 0);
	dt = now_s() - t0;
	cr_assert_eq(rc, TALLY_EREMOTE);
	cr_assert(strstr(tally_errmsg(), "imeout") || strstr(tally_errmsg(), "timed out"), "%s",
		  tally_errmsg());
	cr_assert(dt >= 0.6 && dt < 3.0, "took %.3f s", dt);
	/* back up: works again */
	atomic_store(&px.mode, PX_PASS);
	cr_assert_eq(s3_head(c, "t5/through-proxy", NULL, NULL, 0), 0, "%s", tally_errmsg());
	s3_close(c);
	s3proxy_stop(&px);
}

/* Heals the proxy as soon as it has cut one connection. */
typedef struct healer {
	s3proxy *px;
	uint64_t cuts0;
} healer;

static void *heal_after_cut(void *x)
{
	healer *h = x;
	for (int i = 0; i < 5000 && atomic_load(&h->px->cuts) == h->cuts0; i++)
		usleep(1000);
	atomic_store(&h->px->mode, PX_PASS);
	return NULL;
}

/* A connection cut in the middle of a multipart upload: when the store
 * stays unreachable the upload fails cleanly and leaves no object; when it
 * comes back, the retried part completes a whole, verified object. */
Test(s3, upload_cut_midway_retries_or_fails_cleanly, .timeout = 120)
{
	s3srv *s = server("moto");
	s3proxy px;
	cr_assert_eq(s3proxy_start(&px, s->port), 0);
	char ep[64];
	snprintf(ep, sizeof ep, "http://127.0.0.1:%d", px.port);
	s3_config o = {.retries = 2, .backoff_ms = 20, .part_bytes = S3_PART_MIN};
	s3_client *c = client_for(s, ep, &o);
	size_t n = S3_PART_MIN + S3_PART_MIN / 2;
	uint8_t *data = malloc(n);
	fill(data, n, 5);
	char path[64];
	int fd = tmpfile_with(data, n, path);
	/* cut 1 MiB into the upload, and refuse every reconnection */
	atomic_store(&px.cut_after, 1 << 20);
	atomic_store(&px.mode, PX_CUT);
	s3_put_info pi;
	int rc = s3_put_file(c, "t6/cut", fd, n, &pi);
	cr_assert_eq(rc, TALLY_EREMOTE, "rc %d %s", rc, tally_errmsg());
	cr_assert_geq(atomic_load(&px.cuts), 1);
	atomic_store(&px.mode, PX_PASS);
	cr_assert_eq(s3_head(c, "t6/cut", NULL, NULL, 0), TALLY_ENOTFOUND,
		     "a failed upload must not leave an object");
	s3_close(c);
	/* one cut, then the store is back: the retry completes the object */
	s3_config o2 = {.retries = 4, .backoff_ms = 100, .part_bytes = S3_PART_MIN};
	c = client_for(s, ep, &o2);
	healer h = {&px, atomic_load(&px.cuts)};
	atomic_store(&px.cut_after, 1 << 20);
	atomic_store(&px.mode, PX_CUT);
	pthread_t ht;
	pthread_create(&ht, NULL, heal_after_cut, &h);
	rc = s3_put_file(c, "t6/mended", fd, n, &pi);
	pthread_join(ht, NULL);
	cr_assert_eq(rc, 0, "%s", tally_errmsg());
	cr_assert_geq(atomic_load(&s3_client_stats(c)->retries), 1);
	cr_assert_eq(s3_verify(c, "t6/mended", &pi), 0, "%s", tally_errmsg());
	aws_confirms(s, "t6/mended", data, n);
	s3_close(c);
	s3proxy_stop(&px);
	close(fd);
	unlink(path);
	free(data);
}

Test(s3, bad_config_is_refused)
{
	s3_client *c;
	s3_config o = {.bucket = "Bad_Bucket"};
	cr_assert_eq(s3_open(&o, &c), TALLY_EINVAL);
	s3_config e = {.bucket = "ok", .endpoint = "ftp://x"};
	cr_assert_eq(s3_open(&e, &c), TALLY_EINVAL);
	s3_config d = {.bucket = "ok"};
	cr_assert_eq(s3_open(&d, &c), 0);
	cr_assert_str_eq(s3_where(c), "https://s3.us-east-1.amazonaws.com/ok");
	s3_close(c);
	s3_close(NULL);
}

S3U_MAIN(int argc, char **argv)
{
	return s3srv_main(argc, argv, "test_s3", &srv_s3rver, &srv_moto);
}
