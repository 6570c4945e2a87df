/*
 * s3.h — a small client for S3-compatible object storage (internal).
 *
 * What tiering needs and no more: PUT (single or multipart, from a file),
 * ranged and whole GETs, HEAD, DELETE, ListObjectsV2, CreateBucket. Path
 * style addressing (ENDPOINT/BUCKET/KEY), so AWS S3, MinIO, s3rver, moto and
 * other endpoints all work the same way. Requests are signed by libcurl's
 * built-in AWS SigV4 (CURLOPT_AWS_SIGV4); the payload's SHA-256 travels in
 * x-amz-content-sha256 and uploads also carry Content-MD5, so the server
 * checks every byte it stores.
 *
 * Errors: TALLY_EREMOTE with a message naming the operation, the object,
 * the HTTP status and the S3 error code ("s3 PUT tally/parts/…0007.part:
 * HTTP 403 SignatureDoesNotMatch: …"); TALLY_ENOTFOUND for a missing object
 * (404) where that is an answer rather than a failure. Credentials are never
 * part of a message or a log line.
 *
 * Retries: transport errors (refused, reset, timeout), HTTP 5xx, 408, 429
 * and S3's RequestTimeout/SlowDown are retried `retries` times with
 * exponential backoff (backoff_ms, doubled each time, with jitter, at most
 * 10 s); other 4xx are not. Every request has a total timeout.
 *
 * Threading: an s3_client may be used by any number of threads at once;
 * each request takes an idle libcurl handle from the client's pool (so
 * connections are reused) and returns it.
 */
#ifndef TALLY_S3_H
#define TALLY_S3_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define S3_KEY_MAX   1024
#define S3_ETAG_MAX  128
#define S3_PART_MIN  (UINT64_C(5) << 20)   /* S3's smallest multipart part */
#define S3_PART_MAX  (UINT64_C(512) << 20) /* tally's largest part buffer */
#define S3_PARTS_MAX 10000u                /* S3's most parts per upload */

typedef struct s3_config {
	/* "http://127.0.0.1:9000" or "https://s3.eu-west-1.amazonaws.com";
	 * no trailing path. NULL: https://s3.<region>.amazonaws.com */
	const char *endpoint;
	const char *bucket; /* required */
	const char *region; /* NULL: "us-east-1" */
	/* Credentials; copied. NULL access_key: anonymous (unsigned) requests. */
	const char *access_key, *secret_key, *session_token;
	uint32_t timeout_ms;         /* whole request; 0: 30,000 */
	uint32_t connect_timeout_ms; /* 0: 5,000 */
	unsigned retries;            /* after the first try; 0 means none */
	uint32_t backoff_ms;         /* first retry's wait; 0: 200 */
	/* Uploads larger than part_bytes go multipart in parts of this size;
	 * 0: 16 MiB. Clamped to [S3_PART_MIN, S3_PART_MAX]. */
	uint64_t part_bytes;
} s3_config;

/* Counters since the client was opened; read with atomic_load. */
typedef struct s3_stats {
	_Atomic uint64_t requests;   /* HTTP requests sent, retries included */
	_Atomic uint64_t retries;    /* of which retries */
	_Atomic uint64_t failures;   /* operations that failed after retries */
	_Atomic uint64_t bytes_up;   /* request bodies sent */
	_Atomic uint64_t bytes_down; /* response bodies received */
	_Atomic uint64_t gets;       /* GET operations (ranged or whole) */
} s3_stats;

typedef struct s3_client s3_client;

/* Copies cfg. TALLY_EINVAL for a bad endpoint or bucket name. */
int s3_open(const s3_config *cfg, s3_client **out);
void s3_close(s3_client *c); /* NULL: no-op */
/* A client of another bucket with like's endpoint, region, credentials and
 * limits (backups reuse the tiering settings). */
int s3_open_like(const s3_client *like, const char *bucket, s3_client **out);
s3_stats *s3_client_stats(s3_client *c);
/* "http://127.0.0.1:9000/bucket", for messages (never credentials). */
const char *s3_where(const s3_client *c);

/* What an upload stored, for verification. */
typedef struct s3_put_info {
	uint64_t bytes;
	uint64_t xxh3;               /* of the whole object, as read from the file */
	unsigned parts;              /* 0: single PUT */
	char etag[S3_ETAG_MAX];      /* as the server returned it, quotes removed */
	char want_etag[S3_ETAG_MAX]; /* the MD5 ETag S3 computes for these bytes */
	char whole_md5[33];          /* MD5 of the whole object, hex */
} s3_put_info;

/* Uploads bytes [0, size) of fd as key: one PUT up to part_bytes, else a
 * multipart upload (aborted on failure, so no parts linger). */
int s3_put_file(s3_client *c, const char *key, int fd, uint64_t size, s3_put_info *info);
/* Uploads a buffer with one PUT. */
int s3_put(s3_client *c, const char *key, const void *data, size_t len, s3_put_info *info);

/* Checks that key holds exactly what info says was uploaded: HEAD for its
 * size and ETag; when the ETag is not an MD5 (some servers' encryption),
 * reads the object back and compares its xxh3. */
int s3_verify(s3_client *c, const char *key, const s3_put_info *info);

/* Reads bytes [off, off + len) of key into buf (exactly len bytes, else
 * TALLY_EREMOTE). */
int s3_get_range(s3_client *c, const char *key, uint64_t off, size_t len, void *buf);
/* Reads the whole object into fd at offset 0; *bytes and *xxh3 of what was
 * written (either may be NULL). */
int s3_get_file(s3_client *c, const char *key, int fd, uint64_t *bytes, uint64_t *xxh3);

/* Size and ETag (quotes removed; etag may be NULL). TALLY_ENOTFOUND. */
int s3_head(s3_client *c, const char *key, uint64_t *size, char *etag, size_t etag_cap);
/* Deletes key; deleting a missing key succeeds (S3 semantics). */
int s3_delete(s3_client *c, const char *key);

/* Calls fn for every object whose key starts with prefix, in key order;
 * fn returning non-zero stops the listing and is returned. */
typedef int s3_list_fn(void *ctx, const char *key, uint64_t size);
int s3_list(s3_client *c, const char *prefix, s3_list_fn *fn, void *ctx);

/* Creates the bucket; an existing bucket owned by us is not an error. */
int s3_create_bucket(s3_client *c);

/* Aborts every unfinished multipart upload under prefix (leftovers of a
 * crash mid-upload, which S3 would otherwise keep and bill); *n aborted. */
int s3_abort_uploads(s3_client *c, const char *prefix, unsigned *n);

#endif
