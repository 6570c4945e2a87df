/*
 * backup.c — backups of a running store to a directory or an S3 bucket,
 * restore, and verification of data directories and backups.
 *
 * The one idea: every file a store needs is immutable or append-only, so
 * a consistent backup is a set of open descriptors taken at one instant.
 * Under the manifest lock and every shard's write lock (a few
 * microseconds: no write, flush, merge or tiering commit can move) the
 * backup opens the MANIFEST, each part it names and each WAL segment, and
 * notes each segment's length. Then the locks go and the copying begins,
 * while writes go on: a merge may delete a part file meanwhile, but an
 * open descriptor keeps its bytes readable (the pin costs the part set
 * nothing and leaves nothing behind after a kill -9), and bytes a WAL
 * segment gains after its noted length are simply not copied. Recovery
 * from the copy is the ordinary open: the manifest's parts, then the WAL
 * records above its flushed_seq.
 *
 * Objects are content-addressed (objects/<xxh3>-<bytes>), so a file a
 * destination holds already is not sent again, and a backup's catalog, written
 * last and atomically, is what makes it exist.
 */
#include "backup.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "db.h"
#include "err.h"
#include "fileio.h"
#include "manifest.h"
#include "mem.h"
#include "part.h"
#include "partset.h"
#include "s3.h"
#include "tier.h"

#define CATALOG_MAGIC "tally-backup"
#define CATALOG_MAX   (64u << 20)
#define NAME_MAX_B    96
#define COPY_BUF      (1u << 20)

/* ---------------------------------------------------------------- stores */

/* Where a backup's objects and catalogs live. */
typedef struct bstore {
	char *dir;     /* a local destination, or NULL */
	s3_client *s3; /* or a bucket */
	char prefix[S3_KEY_MAX / 2];
	char where[PATH_MAX];
} bstore;

/* s3's field f when the caller's struct has it, else NULL. */
#define S3_FIELD(s3, f) \
	((s3) && (s3)->size >= offsetof(tally_s3, f) + sizeof(s3)->f ? (s3)->f : NULL)

/* mkdir -p, each new directory made durable in its parent. */
static int mkdirs(const char *path)
{
	char p[PATH_MAX];
	snprintf(p, sizeof p, "%s", path);
	for (char *q = p + 1;; q++) {
		if (*q && *q != '/')
			continue;
		char c = *q;
		*q = 0;
		if (mkdir(p, 0755)) {
			if (errno != EEXIST)
				return err_sys(errno, "mkdir %s", p);
		} else {
			char *slash = strrchr(p, '/');
			int rc;
			if (slash && slash != p) {
				*slash = 0;
				rc = fio_fsync_dir(p);
				*slash = '/';
			} else
				rc = fio_fsync_dir(slash ? "/" : ".");
			if (rc)
				return rc;
		}
		*q = c;
		if (!c)
			return 0;
	}
}

/* Opens dest; an S3 one with s3's settings, or like's (the tiering
 * client) when s3 is NULL. */
static int store_open(const char *dest, int create, const tally_s3 *s3, s3_client *like, bstore *st)
{
	memset(st, 0, sizeof *st);
	if (!dest || !*dest)
		return err_set(TALLY_EINVAL, "backup: empty destination");
	snprintf(st->where, sizeof st->where, "%s", dest);
	if (strncmp(dest, "s3://", 5)) {
		size_t n = strlen(dest);
		while (n > 1 && dest[n - 1] == '/')
			n--;
		if (!(st->dir = mem_strndup(dest, n)))
			return err_set(-ENOMEM, "out of memory");
		char p[PATH_MAX];
		if (!create) {
			snprintf(p, sizeof p, "%s/objects", st->dir);
			if (access(p, F_OK))
				return err_set(TALLY_ENOTFOUND, "%s: not a backup (no objects/)",
					       dest);
			return 0;
		}
		snprintf(p, sizeof p, "%s/objects", st->dir);
		return mkdirs(p);
	}
	const char *b = dest + 5, *slash = strchr(b, '/');
	char bucket[128];
	size_t bl = slash ? (size_t)(slash - b) : strlen(b);
	if (!bl || bl >= sizeof bucket)
		return err_set(TALLY_EINVAL, "backup destination %s: no bucket name", dest);
	memcpy(bucket, b, bl);
	bucket[bl] = 0;
	const char *pre = slash ? slash + 1 : "";
	size_t pl = strlen(pre);
	if (pl + 2 > sizeof st->prefix)
		return err_set(TALLY_EINVAL, "backup destination %s: prefix too long", dest);
	/* verbatim, like tier_prefix: "site1/" is a folder, "site1-" a
	 * start of names */
	snprintf(st->prefix, sizeof st->prefix, "%s", pre);
	s3_config c = {
		.endpoint = S3_FIELD(s3, endpoint),
		.bucket = bucket,
		.region = S3_FIELD(s3, region),
		.access_key = S3_FIELD(s3, access_key),
		.secret_key = S3_FIELD(s3, secret_key),
		.session_token = S3_FIELD(s3, session_token),
		.retries = 4,
	};
	int rc = !s3 && like ? s3_open_like(like, bucket, &st->s3) : s3_open(&c, &st->s3);
	if (!rc && create)
		rc = s3_create_bucket(st->s3);
	if (rc)
		return err_prefix(rc, "backup destination %s", dest);
	return 0;
}

static void store_close(bstore *st)
{
	s3_close(st->s3);
	mem_free(st->dir);
	memset(st, 0, sizeof *st);
}

/* The object key or the local path of name in the store. */
static void store_path(const bstore *st, const char *name, char *buf, size_t cap)
{
	if (st->dir)
		snprintf(buf, cap, "%s/%s", st->dir, name);
	else
		snprintf(buf, cap, "%s%s", st->prefix, name);
}

static void object_name(uint64_t sum, uint64_t bytes, char *buf, size_t cap)
{
	snprintf(buf, cap, "objects/%016" PRIx64 "-%" PRIu64, sum, bytes);
}

/* Copies [0, bytes) of src to dst, hashing; *sum its xxh3. dst < 0: only
 * hashes. Names src_name in a short read's message. */
static int copy_hash(int src, const char *src_name, int dst, uint64_t bytes, uint64_t *sum)
{
	uint8_t *buf = mem_alloc(COPY_BUF);
	XXH3_state_t *h = XXH3_createState();
	int rc = 0;
	if (!buf || !h) {
		rc = err_set(-ENOMEM, "out of memory");
		goto out;
	}
	XXH3_64bits_reset(h);
	for (uint64_t off = 0; off < bytes && !rc;) {
		size_t n = bytes - off < COPY_BUF ? (size_t)(bytes - off) : COPY_BUF;
		if ((rc = fio_pread_full(src, buf, n, off, src_name)))
			break;
		XXH3_64bits_update(h, buf, n);
		if (dst >= 0 && (rc = fio_pwrite_full(dst, buf, n, off)))
			err_sys(-rc, "writing a copy of %s", src_name);
		off += n;
	}
	*sum = XXH3_64bits_digest(h);
out:
	XXH3_freeState(h);
	mem_free(buf);
	return rc;
}

/* Ends writing tmp (fd) as it went (rc): fsynced and renamed to path when
 * all went well, else deleted. */
static int finish_tmp(int fd, const char *tmp, const char *path, int rc)
{
	if (!rc && fsync(fd))
		rc = err_sys(errno, "fsync %s", tmp);
	close(fd);
	if (!rc && rename(tmp, path))
		rc = err_sys(errno, "rename %s", tmp);
	if (rc)
		unlink(tmp);
	return rc;
}

/* Stores [0, bytes) of fd as object name, whose xxh3 must be sum: a
 * temporary file renamed into place, or one PUT (atomic in S3). */
static int store_put_fd(bstore *st, const char *name, int fd, const char *src_name, uint64_t bytes,
			uint64_t sum)
{
	char path[PATH_MAX];
	store_path(st, name, path, sizeof path);
	if (st->s3) {
		s3_put_info info;
		int rc = s3_put_file(st->s3, path, fd, bytes, &info);
		if (!rc && info.xxh3 != sum)
			rc = err_set(TALLY_ECORRUPT, "%s changed while it was copied", src_name);
		if (!rc)
			rc = s3_verify(st->s3, path, &info);
		return rc;
	}
	char tmp[PATH_MAX + 32];
	snprintf(tmp, sizeof tmp, "%s.tmp%ld", path, (long)getpid());
	int out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (out < 0)
		return err_sys(errno, "create %s", tmp);
	uint64_t got;
	int rc = copy_hash(fd, src_name, out, bytes, &got);
	if (!rc && got != sum)
		rc = err_set(TALLY_ECORRUPT, "%s changed while it was copied", src_name);
	return finish_tmp(out, tmp, path, rc);
}

/* Fetches object name into fd (from offset 0); *bytes, *sum of it. */
static int store_get_fd(bstore *st, const char *name, int fd, uint64_t *bytes, uint64_t *sum)
{
	char path[PATH_MAX];
	store_path(st, name, path, sizeof path);
	if (st->s3)
		return s3_get_file(st->s3, path, fd, bytes, sum);
	int in = open(path, O_RDONLY | O_CLOEXEC);
	if (in < 0)
		return errno == ENOENT ? err_set(TALLY_ENOTFOUND, "%s: missing", path)
				       : err_sys(errno, "open %s", path);
	struct stat sb;
	int rc = fstat(in, &sb) ? err_sys(errno, "stat %s", path) : 0;
	if (!rc) {
		*bytes = (uint64_t)sb.st_size;
		rc = copy_hash(in, path, fd, *bytes, sum);
	}
	close(in);
	return rc;
}

/* Size of object name, or TALLY_ENOTFOUND. */
static int store_size(bstore *st, const char *name, uint64_t *bytes)
{
	char path[PATH_MAX];
	store_path(st, name, path, sizeof path);
	if (st->s3)
		return s3_head(st->s3, path, bytes, NULL, 0);
	struct stat sb;
	if (stat(path, &sb))
		return errno == ENOENT ? TALLY_ENOTFOUND : err_sys(errno, "stat %s", path);
	*bytes = (uint64_t)sb.st_size;
	return 0;
}

/* A temporary file that vanishes when closed (O_TMPFILE, or unlinked at
 * once), in dir. */
static int temp_fd(const char *dir)
{
	int fd = open(dir, O_RDWR | O_TMPFILE | O_CLOEXEC, 0600);
	if (fd >= 0)
		return fd;
	char path[PATH_MAX];
	snprintf(path, sizeof path, "%s/.tally-backup-XXXXXX", dir);
	fd = mkstemp(path);
	if (fd < 0)
		return err_sys(errno, "temporary file in %s", dir);
	unlink(path);
	return fd;
}

/* Scratch files of verify and of reading catalogs: they vanish when
 * closed (the library reads no environment, so not $TMPDIR). */
static const char *tmp_dir(void)
{
	return "/tmp";
}

/* Reads object name whole into memory (catalogs). */
static int store_get_buf(bstore *st, const char *name, char **data, size_t *len)
{
	*data = NULL;
	int fd = temp_fd(st->dir ? st->dir : tmp_dir());
	if (fd < 0)
		return fd;
	uint64_t bytes = 0, sum;
	int rc = store_get_fd(st, name, fd, &bytes, &sum);
	if (!rc && bytes > CATALOG_MAX)
		rc = err_set(TALLY_ELIMIT, "%s: %" PRIu64 " bytes, over the limit", name, bytes);
	if (!rc && !(*data = mem_alloc(bytes + 1)))
		rc = err_set(-ENOMEM, "out of memory");
	if (!rc)
		rc = fio_pread_full(fd, *data, (size_t)bytes, 0, name);
	close(fd);
	if (rc) {
		mem_free(*data);
		*data = NULL;
		return rc;
	}
	(*data)[bytes] = 0;
	*len = (size_t)bytes;
	return 0;
}

typedef struct seqs {
	uint64_t *v;
	uint32_t n, cap;
} seqs;

static int seqs_add(seqs *s, uint64_t v)
{
	if (mem_grow(&s->v, &s->cap, s->n + 1, sizeof *s->v, 16))
		return err_set(-ENOMEM, "out of memory");
	s->v[s->n++] = v;
	return 0;
}

/* "backup-00000000000000000007.catalog" -> 7, or 0 for another name. */
static uint64_t catalog_seq(const char *base)
{
	char *end;
	if (strlen(base) != 35 || strncmp(base, "backup-", 7) || strcmp(base + 27, ".catalog"))
		return 0;
	unsigned long long v = strtoull(base + 7, &end, 10);
	return end == base + 27 ? (uint64_t)v : 0;
}

static void catalog_name(uint64_t seq, char *buf, size_t cap)
{
	snprintf(buf, cap, "backup-%020" PRIu64 ".catalog", seq);
}

/* Called for each name of a store listing: its name relative to the
 * store ("objects/...", "backup-...") and its size; non-zero stops. */
typedef int store_name_fn(void *ctx, const char *name, uint64_t bytes);

typedef struct listing {
	store_name_fn *fn;
	void *ctx;
	const char *start; /* names that do not begin so are skipped */
	size_t skip;       /* the store's prefix, before each key's own name */
} listing;

static int list_key(void *ctx, const char *key, uint64_t size)
{
	listing *l = ctx;
	if (strlen(key) <= l->skip || strncmp(key + l->skip, l->start, strlen(l->start)))
		return 0;
	return l->fn(l->ctx, key + l->skip, size);
}

/* Every name of the store beginning with start ("backup-", "lease-",
 * "objects/"), in no particular order. */
static int store_list(bstore *st, const char *start, store_name_fn *fn, void *ctx)
{
	listing l = {fn, ctx, start, st->s3 ? strlen(st->prefix) : 0};
	size_t dl = strcspn(start, "/");
	if (st->s3) {
		/* without the '/' of "objects/": moto checks a listing's
		 * signature on the decoded prefix, so a '/' of ours there
		 * would fail (a '/' in the user's prefix still does) */
		char pre[S3_KEY_MAX], first[32];
		snprintf(first, sizeof first, "%.*s", (int)dl, start);
		store_path(st, first, pre, sizeof pre);
		return s3_list(st->s3, pre, list_key, &l);
	}
	char dir[PATH_MAX], name[NAME_MAX_B + 300];
	int sub = start[dl] == '/';
	if (sub)
		snprintf(dir, sizeof dir, "%s/%.*s", st->dir, (int)dl, start);
	else
		snprintf(dir, sizeof dir, "%s", st->dir);
	DIR *d = opendir(dir);
	if (!d)
		return errno == ENOENT ? 0 : err_sys(errno, "opendir %s", dir);
	struct dirent *e;
	int rc = 0;
	while (!rc && (e = readdir(d))) {
		snprintf(name, sizeof name, "%.*s%s", sub ? (int)dl + 1 : 0, start, e->d_name);
		struct stat sb;
		if (strncmp(name, start, strlen(start)) ||
		    fstatat(dirfd(d), e->d_name, &sb, AT_SYMLINK_NOFOLLOW) || !S_ISREG(sb.st_mode))
			continue;
		rc = list_key(&l, name, (uint64_t)sb.st_size);
	}
	closedir(d);
	return rc;
}

static int add_catalog(void *ctx, const char *name, uint64_t bytes)
{
	(void)bytes;
	uint64_t v = catalog_seq(name);
	return v ? seqs_add(ctx, v) : 0;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* The numbers of the store's catalogs, ascending. */
static int store_catalogs(bstore *st, seqs *out)
{
	memset(out, 0, sizeof *out);
	int rc = store_list(st, "backup-", add_catalog, out);
	if (out->n)
		qsort(out->v, out->n, sizeof *out->v, cmp_u64);
	return rc;
}

/* Deletes name from the store; a name already gone is not an error. */
static int store_delete(bstore *st, const char *name)
{
	char path[PATH_MAX];
	store_path(st, name, path, sizeof path);
	if (st->s3)
		return s3_delete(st->s3, path);
	if (unlink(path) && errno != ENOENT)
		return err_sys(errno, "delete %s", path);
	return 0;
}

/* Writes name whole and atomically (a catalog, a lease). */
static int store_put_buf(bstore *st, const char *name, const char *text, size_t len)
{
	if (st->dir)
		return fio_write_atomic(st->dir, name, text, len);
	char key[S3_KEY_MAX];
	store_path(st, name, key, sizeof key);
	s3_put_info info;
	return s3_put(st->s3, key, text, len, &info);
}

/* ---------------------------------------------------------------- catalog */

enum { BK_MANIFEST, BK_PART, BK_STUB, BK_WAL };
static const char *const kind_names[] = {"manifest", "part", "stub", "wal"};

/* One file of a backup. */
typedef struct bfile {
	char name[NAME_MAX_B]; /* its path in the data directory */
	int kind;
	uint64_t bytes, sum;
	int fd;             /* while backing up: the pinned source */
	uint64_t tiered_id; /* a tiered part still to download (0: none) */
	char *object;       /* ... its object key */
	uint64_t object_sum;
} bfile;

typedef struct catalog_t {
	uint64_t seq, generation;
	int64_t created;
	uint32_t n_shards;
	uint64_t wal_seq[MANIFEST_SHARDS_MAX];
	uint64_t flushed[MANIFEST_SHARDS_MAX]; /* backing up: the manifest's */
	bfile *files;
	uint32_t n, cap;
} bcatalog;

static void catalog_free_files(bcatalog *c)
{
	for (uint32_t i = 0; i < c->n; i++) {
		if (c->files[i].fd >= 0)
			close(c->files[i].fd);
		mem_free(c->files[i].object);
	}
	mem_free(c->files);
	c->files = NULL;
	c->n = c->cap = 0;
}

static bfile *catalog_add(bcatalog *c, int kind, const char *name)
{
	if (mem_grow(&c->files, &c->cap, c->n + 1, sizeof *c->files, 64)) {
		err_set(-ENOMEM, "out of memory");
		return NULL;
	}
	bfile *f = &c->files[c->n++];
	memset(f, 0, sizeof *f);
	f->kind = kind;
	f->fd = -1;
	snprintf(f->name, sizeof f->name, "%s", name);
	return f;
}

/* A name a catalog may hold: relative, no "..", only [A-Za-z0-9._/-]. */
static int name_ok(const char *n)
{
	return *n && *n != '/' && !strstr(n, "..") && strlen(n) < NAME_MAX_B &&
	       strspn(n, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._/-") ==
		       strlen(n);
}

/* The catalog's text; see docs/formats.md, "Backup catalog". */
static char *catalog_format(const bcatalog *c, size_t *len)
{
	size_t cap = 256 + (size_t)c->n_shards * 48 + (size_t)c->n * (NAME_MAX_B + 64);
	char *b = mem_alloc(cap);
	if (!b)
		return NULL;
	size_t n = (size_t)snprintf(b, cap,
				    CATALOG_MAGIC " 1\nseq %" PRIu64 "\ncreated %" PRId64
						  "\ngeneration %" PRIu64 "\nshards %u\n",
				    c->seq, c->created, c->generation, c->n_shards);
	for (uint32_t i = 0; i < c->n_shards; i++)
		n += (size_t)snprintf(b + n, cap - n, "wal_seq %u %" PRIu64 "\n", i, c->wal_seq[i]);
	for (uint32_t i = 0; i < c->n; i++) {
		const bfile *f = &c->files[i];
		n += (size_t)snprintf(b + n, cap - n, "file %s %016" PRIx64 " %" PRIu64 " %s\n",
				      kind_names[f->kind], f->sum, f->bytes, f->name);
	}
	n += (size_t)snprintf(b + n, cap - n, "end %016" PRIx64 "\n", XXH3_64bits(b, n));
	*len = n;
	return b;
}

/* Parses a catalog; where names it in messages (with the line). */
static int catalog_parse(char *text, size_t len, const char *where, bcatalog *c)
{
	memset(c, 0, sizeof *c);
	char *endl = NULL;
	/* the checksum line is last: find it first and check everything before */
	if (len < 22 || text[len - 1] != '\n')
		return err_set(TALLY_ECORRUPT, "%s: cut short (no end line)", where);
	text[len - 1] = 0;
	endl = strrchr(text, '\n');
	char *last = endl ? endl + 1 : text;
	unsigned long long want;
	char tail;
	if (sscanf(last, "end %16llx%c", &want, &tail) != 1 || strlen(last) != 20)
		return err_set(TALLY_ECORRUPT, "%s: cut short (no end line)", where);
	uint64_t got = XXH3_64bits(text, (size_t)(last - text));
	if (got != want)
		return err_set(TALLY_ECORRUPT,
			       "%s: checksum %016" PRIx64 ", the end line says %016llx", where, got,
			       want);
	*last = 0;
	unsigned line_no = 0;
	int rc = 0;
	for (char *line = text, *next; *line && !rc; line = next) {
		line_no++;
		next = strchr(line, '\n');
		if (next)
			*next++ = 0;
		else
			next = line + strlen(line);
		unsigned version, sh;
		unsigned long long a, b;
		long long t;
		char kind[16], name[NAME_MAX_B + 1];
		int k = -1;
		if (line_no == 1) {
			if (sscanf(line, CATALOG_MAGIC " %u", &version) != 1)
				rc = err_set(TALLY_ECORRUPT,
					     "%s line 1: not a tally backup catalog", where);
			else if (version != 1)
				rc = err_set(TALLY_EVERSION,
					     "%s line 1: catalog version %u (this tally reads 1)",
					     where, version);
		} else if (sscanf(line, "seq %llu", &a) == 1)
			c->seq = a;
		else if (sscanf(line, "created %lld", &t) == 1)
			c->created = t;
		else if (sscanf(line, "generation %llu", &a) == 1)
			c->generation = a;
		else if (sscanf(line, "shards %u", &sh) == 1 && sh <= MANIFEST_SHARDS_MAX)
			c->n_shards = sh;
		else if (sscanf(line, "wal_seq %u %llu", &sh, &a) == 2 && sh < c->n_shards)
			c->wal_seq[sh] = a;
		else if (sscanf(line, "file %15s %16llx %llu %96s", kind, &a, &b, name) == 4 &&
			 name_ok(name)) {
			for (int i = 0; i < 4; i++)
				if (!strcmp(kind, kind_names[i]))
					k = i;
			bfile *f = k < 0 ? NULL : catalog_add(c, k, name);
			if (k < 0)
				rc = err_set(TALLY_ECORRUPT, "%s line %u: unknown file kind '%s'",
					     where, line_no, kind);
			else if (!f)
				rc = -ENOMEM;
			else {
				f->sum = a;
				f->bytes = b;
			}
		} else
			rc = err_set(TALLY_ECORRUPT, "%s line %u: cannot read '%.60s'", where,
				     line_no, line);
	}
	if (rc)
		catalog_free_files(c);
	return rc;
}

static int catalog_load(bstore *st, uint64_t seq, bcatalog *c)
{
	char name[64], where[PATH_MAX + 64];
	catalog_name(seq, name, sizeof name);
	snprintf(where, sizeof where, "%s/%s", st->where, name);
	char *text;
	size_t len;
	int rc = store_get_buf(st, name, &text, &len);
	if (!rc) {
		rc = catalog_parse(text, len, where, c);
		mem_free(text);
	}
	if (!rc && c->seq != seq)
		rc = err_set(TALLY_ECORRUPT, "%s: says it is backup %" PRIu64, where, c->seq);
	return rc;
}

/* ---------------------------------------------------------------- leases */

/*
 * A backup and a prune of one destination keep out of each other's way
 * through leases: small objects "lease-backup-<ns>-<random>" and
 * "lease-prune-<ns>-<random>" beside the catalogs, <ns> the wall-clock
 * time the holder wrote it, the text naming its host and process. A
 * backup writes its lease and then waits while a live prune lease exists;
 * a prune writes its lease and then deletes no object while a live backup
 * lease exists. Each writes before it reads, so of two that start
 * together at least one sees the other: a prune never deletes an object
 * that a running backup uploaded, or found there and counts on, before
 * its catalog names it. A lease is live until its holder deletes it, or
 * for a while after it was last written (LEASE_BACKUP_NS, LEASE_PRUNE_NS;
 * holders write a fresh one every quarter of that), or until its process
 * is seen gone on this host. docs/operations.md, "Pruning old backups".
 */
#define LEASE_BACKUP_NS (3600 * INT64_C(1000000000)) /* a backup's lease lives 1 h */
#define LEASE_PRUNE_NS  (600 * INT64_C(1000000000))  /* a prune's 10 min */
#define LEASE_WAIT_NS   (1800 * INT64_C(1000000000)) /* a backup waits for a prune this long */
#define LEASE_NAME_MAX  80

static int64_t wall_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

typedef struct lease {
	char name[LEASE_NAME_MAX];
	int64_t at; /* written then, wall ns */
	const char *kind;
} lease;

/* "lease-backup-<20 digits>-<16 hex>" (or prune): its kind and time. */
static int lease_parse(const char *name, const char **kind, int64_t *at)
{
	static const char *const kinds[] = {"backup", "prune"};
	for (int k = 0; k < 2; k++) {
		char pre[32];
		size_t pl = (size_t)snprintf(pre, sizeof pre, "lease-%s-", kinds[k]);
		const char *p = name + pl;
		if (strncmp(name, pre, pl) || strlen(p) != 37 || p[20] != '-' ||
		    strspn(p, "0123456789") != 20 || strspn(p + 21, "0123456789abcdef") != 16)
			continue;
		*kind = kinds[k];
		*at = (int64_t)strtoll(p, NULL, 10);
		return 1;
	}
	return 0;
}

static int lease_put(bstore *st, const char *kind, lease *l)
{
	uint64_t r = 0;
	if (getrandom(&r, sizeof r, 0) != sizeof r)
		r = (uint64_t)wall_ns() ^ (uint64_t)getpid() << 32;
	l->kind = kind;
	l->at = wall_ns();
	snprintf(l->name, sizeof l->name, "lease-%s-%020" PRId64 "-%016" PRIx64, kind, l->at, r);
	char host[256] = "", text[400];
	gethostname(host, sizeof host - 1);
	int n = snprintf(text, sizeof text, "tally-lease 1\nhost %s\npid %ld\n", *host ? host : "-",
			 (long)getpid());
	int rc = store_put_buf(st, l->name, text, (size_t)n);
	return rc ? err_prefix(rc, "%s: writing lease %s", st->where, l->name) : 0;
}

/* Deletes l (a failure only leaves it to expire), keeping the message
 * of the error that may be ending the holder's run. */
static void lease_drop(bstore *st, lease *l)
{
	if (!l->name[0])
		return;
	char msg[ERR_MSG_MAX];
	snprintf(msg, sizeof msg, "%s", err_msg());
	store_delete(st, l->name);
	if (*msg)
		err_set(0, "%s", msg);
	else
		err_clear();
	l->name[0] = 0;
}

/* A fresh lease in place of l once a quarter of its life is gone. */
static int lease_renew(bstore *st, lease *l, int64_t life)
{
	if (wall_ns() - l->at < life / 4)
		return 0;
	lease old = *l;
	int rc = lease_put(st, l->kind, l);
	if (!rc)
		lease_drop(st, &old);
	else
		*l = old;
	return rc;
}

/* Whether lease name, of a holder's kind with this life, still holds:
 * young enough, and not of a process of this host that is gone. */
static int lease_live(bstore *st, const char *name, int64_t at, int64_t life)
{
	if (wall_ns() - at >= life)
		return 0;
	char *text = NULL, host[256] = "", them[256];
	size_t len;
	long pid = 0;
	int rc = store_get_buf(st, name, &text, &len);
	if (rc) {
		err_clear();
		return rc != TALLY_ENOTFOUND; /* unreadable: assume it holds */
	}
	gethostname(host, sizeof host - 1);
	int dead = sscanf(text, "tally-lease 1\nhost %255s\npid %ld", them, &pid) == 2 &&
		   !strcmp(them, host) && pid > 0 && kill((pid_t)pid, 0) && errno == ESRCH;
	mem_free(text);
	return !dead;
}

typedef struct lease_names {
	char (*v)[LEASE_NAME_MAX];
	uint32_t n, cap;
} lease_names;

static int add_lease(void *ctx, const char *name, uint64_t bytes)
{
	(void)bytes;
	lease_names *ln = ctx;
	const char *kind;
	int64_t at;
	if (!lease_parse(name, &kind, &at))
		return 0;
	if (mem_grow(&ln->v, &ln->cap, ln->n + 1, sizeof *ln->v, 8))
		return err_set(-ENOMEM, "out of memory");
	snprintf(ln->v[ln->n++], LEASE_NAME_MAX, "%s", name);
	return 0;
}

/*
 * Looks at the other holders of st (me excluded): *held names a live
 * lease of kind want (empty: none). With reap, leases whose holders are
 * gone are deleted (*reaped counts them).
 */
static int leases_scan(bstore *st, const lease *me, const char *want, char *held, int reap,
		       uint64_t *reaped)
{
	lease_names ln = {0};
	int rc = store_list(st, "lease-", add_lease, &ln);
	held[0] = 0;
	for (uint32_t i = 0; i < ln.n && !rc; i++) {
		const char *kind = "";
		int64_t at = 0;
		lease_parse(ln.v[i], &kind, &at);
		if (me && !strcmp(ln.v[i], me->name))
			continue;
		int64_t life = !strcmp(kind, "backup") ? LEASE_BACKUP_NS : LEASE_PRUNE_NS;
		int live = lease_live(st, ln.v[i], at, life);
		if (live && !strcmp(kind, want) && !held[0])
			snprintf(held, LEASE_NAME_MAX, "%s", ln.v[i]);
		if (!live && reap && !(rc = store_delete(st, ln.v[i])) && reaped)
			(*reaped)++;
	}
	mem_free(ln.v);
	return rc;
}

/* A backup's lease, taken once no live prune holds st: waits (polling)
 * up to LEASE_WAIT_NS for one to end. */
static int backup_lease(bstore *st, lease *me)
{
	int rc = lease_put(st, "backup", me);
	char held[LEASE_NAME_MAX];
	int64_t until = wall_ns() + LEASE_WAIT_NS;
	while (!rc && !(rc = leases_scan(st, me, "prune", held, 0, NULL)) && held[0]) {
		if (wall_ns() > until) {
			rc = err_set(TALLY_ELOCKED,
				     "%s: a prune has held it for 30 minutes (%s); try again later",
				     st->where, held);
			break;
		}
		usleep(200000); /* a prune deletes, then lets go: poll */
	}
	if (rc)
		lease_drop(st, me);
	return rc;
}

/* ---------------------------------------------------------------- backup */

/* Opens dir/name read-only into f->fd and notes its size. */
static int pin(const char *dir, bfile *f)
{
	char path[PATH_MAX];
	snprintf(path, sizeof path, "%s/%s", dir, f->name);
	f->fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat sb;
	if (f->fd < 0)
		return err_sys(errno, "backup: open %s", path);
	if (fstat(f->fd, &sb))
		return err_sys(errno, "backup: stat %s", path);
	f->bytes = (uint64_t)sb.st_size;
	return 0;
}

/* The manifest and its parts, as the committed manifest says. Caller
 * holds man_mu. */
static int pin_parts(tally_db *db, bcatalog *c)
{
	bfile *f = catalog_add(c, BK_MANIFEST, "MANIFEST");
	if (!f)
		return -ENOMEM;
	char path[PATH_MAX];
	snprintf(path, sizeof path, "%s/MANIFEST", db->dir);
	if (access(path, F_OK)) {
		c->n--; /* a store that never flushed has none: recovery is the WAL */
	} else {
		int rc = pin(db->dir, f);
		if (rc)
			return rc;
	}
	c->generation = db->man.generation;
	for (uint32_t i = 0; i < db->man.n_shards && i < MANIFEST_SHARDS_MAX; i++)
		c->flushed[i] = db->man.flushed_seq[i];
	for (uint32_t i = 0; i < db->man.n_parts; i++) {
		const manifest_part *mp = &db->man.parts[i];
		char name[64];
		manifest_part_name(mp->id, name, sizeof name);
		int remote = mp->tier == MTIER_REMOTE;
		if (!(f = catalog_add(c, BK_PART, name)))
			return -ENOMEM;
		if (remote) {
			/* the whole part is copied from the bucket below: a backup
			 * must not depend on the store's own objects, which its
			 * merges and retention delete. The object outlives this
			 * moment unless a merge retires it meanwhile; then this
			 * backup fails, naming it, and the next one copies the
			 * merged part. */
			f->tiered_id = mp->id;
			f->object_sum = f->sum = mp->object_sum;
			f->bytes = mp->bytes;
			if (!(f->object = mem_strndup(mp->object, strlen(mp->object))))
				return err_set(-ENOMEM, "out of memory");
			continue;
		}
		int rc = pin(db->dir, f);
		if (rc)
			return rc;
	}
	return 0;
}

static int is_segment(const char *n)
{
	return strlen(n) == 24 && !strcmp(n + 20, ".wal") && strspn(n, "0123456789") == 20;
}

/* Shard i's WAL segments up to what is written out now. Caller holds the
 * shard's write lock. */
static int pin_wal(tally_db *db, unsigned i, bcatalog *c, uint64_t *lsn)
{
	shard *s = db->shards[i];
	if (s->failed)
		return err_set(TALLY_EFAILED, "backup: shard %u failed earlier", i);
	int rc = wal_write_out(s->wal, lsn);
	if (rc)
		return rc;
	c->wal_seq[i] = wal_last_seq(s->wal);
	char rel[64], path[PATH_MAX];
	snprintf(rel, sizeof rel, "wal/shard-%03u", i);
	snprintf(path, sizeof path, "%s/%s", db->dir, rel);
	DIR *d = opendir(path);
	if (!d)
		return err_sys(errno, "backup: opendir %s", path);
	struct dirent *e;
	while (!rc && (e = readdir(d))) {
		if (!is_segment(e->d_name))
			continue;
		char name[NAME_MAX_B];
		/* segment names are short (is_segment): a longer one is not ours */
		if (snprintf(name, sizeof name, "%s/%s", rel, e->d_name) >= (int)sizeof name)
			continue;
		bfile *f = catalog_add(c, BK_WAL, name);
		rc = f ? pin(db->dir, f) : -ENOMEM;
	}
	closedir(d);
	return rc;
}

/* The instant of the backup: everything pinned under the locks that every
 * change of parts and every write takes. */
static int snapshot(tally_db *db, bcatalog *c, uint64_t *lsn)
{
	pthread_mutex_lock(&db->man_mu);
	int rc = pin_parts(db, c);
	unsigned locked = 0;
	c->n_shards = db->n_shards;
	for (; locked < db->n_shards && !rc; locked++) {
		pthread_rwlock_wrlock(&db->shards[locked]->lock);
		rc = pin_wal(db, locked, c, &lsn[locked]);
	}
	for (unsigned i = 0; i < locked; i++)
		pthread_rwlock_unlock(&db->shards[i]->lock);
	pthread_mutex_unlock(&db->man_mu);
	if (rc)
		return rc;
	/* and the sync point: the source's WAL durable up to the same place */
	for (unsigned i = 0; i < db->n_shards && !rc; i++)
		rc = wal_sync_to(db->shards[i]->wal, lsn[i]);
	return rc;
}

/* A tiered part, downloaded into a temporary file and checked. */
static int fetch_tiered(tally_db *db, bfile *f)
{
	int fd = temp_fd(db->dir);
	if (fd < 0)
		return fd;
	uint64_t bytes = 0, sum = 0;
	int rc = tier_get_object(db, f->object, fd, &bytes, &sum);
	if (!rc && sum != f->object_sum)
		rc = err_set(TALLY_ECORRUPT,
			     "object %s: xxh3 %016" PRIx64 ", the manifest says %016" PRIx64,
			     f->object, sum, f->object_sum);
	if (rc) {
		close(fd);
		return err_prefix(rc, "backup of tiered part %s", f->name);
	}
	f->fd = fd;
	f->bytes = bytes;
	return 0;
}

/* Whether the store holds object name whole (a stat, or a HEAD): trusted
 * rather than a catalog's word, so an object deleted by hand is sent
 * again. */
static int store_has(bstore *st, const char *name, uint64_t bytes)
{
	uint64_t there;
	int rc = store_size(st, name, &there);
	err_clear();
	return !rc && there == bytes;
}

static int write_catalog(bstore *st, const bcatalog *c)
{
	size_t len;
	char *text = catalog_format(c, &len);
	if (!text)
		return err_set(-ENOMEM, "out of memory");
	char name[64], dir[PATH_MAX];
	catalog_name(c->seq, name, sizeof name);
	int rc = 0;
	if (st->dir) {
		/* the objects first: durable before a catalog names them */
		store_path(st, "objects", dir, sizeof dir);
		rc = fio_fsync_dir(dir);
	}
	if (!rc)
		rc = store_put_buf(st, name, text, len);
	mem_free(text);
	return rc;
}

static int backup_run(tally_db *db, bstore *st, tally_backup_result *res)
{
	bcatalog c = {0};
	seqs have = {0};
	uint64_t lsn[MANIFEST_SHARDS_MAX];
	lease me = {0};
	int rc = backup_lease(st, &me);
	if (!rc)
		rc = store_catalogs(st, &have);
	c.seq = have.n ? have.v[have.n - 1] + 1 : 1;
	c.created = wall_ns();
	if (!rc)
		rc = snapshot(db, &c, lsn);
	for (uint32_t i = 0; i < c.n && !rc; i++) {
		bfile *f = &c.files[i];
		char obj[64];
		if ((rc = lease_renew(st, &me, LEASE_BACKUP_NS)))
			break;
		/* a tiered part's xxh3 and size are the manifest's: downloaded
		 * only when the destination lacks it */
		if (f->tiered_id) {
			object_name(f->sum, f->bytes, obj, sizeof obj);
			if (store_has(st, obj, f->bytes)) {
				res->files++;
				res->bytes += f->bytes;
				continue;
			}
			if ((rc = fetch_tiered(db, f)))
				break;
		}
		if ((rc = copy_hash(f->fd, f->name, -1, f->bytes, &f->sum)))
			break;
		res->files++;
		res->bytes += f->bytes;
		object_name(f->sum, f->bytes, obj, sizeof obj);
		if (store_has(st, obj, f->bytes))
			continue;
		if ((rc = store_put_fd(st, obj, f->fd, f->name, f->bytes, f->sum)))
			break;
		res->files_uploaded++;
		res->bytes_uploaded += f->bytes;
		db_crash_point(db, "backup:object");
	}
	for (unsigned i = 0; i < c.n_shards; i++)
		res->wal_records += c.wal_seq[i] - c.flushed[i];
	if (!rc) {
		db_crash_point(db, "backup:before-catalog");
		rc = write_catalog(st, &c);
	}
	if (!rc)
		res->seq = c.seq;
	lease_drop(st, &me); /* after the catalog: it names every object now */
	catalog_free_files(&c);
	mem_free(have.v);
	return rc;
}

TALLY_API int tally_db_backup(tally_db *db, const char *dest, const tally_s3 *s3,
			      tally_backup_result *out)
{
	err_clear();
	tally_backup_result res = {0};
	bstore st;
	int rc = store_open(dest, 1, s3, tier_client(db), &st);
	if (!rc)
		rc = backup_run(db, &st, &res);
	if (rc)
		err_prefix(rc, "backup to %s", dest ? dest : "");
	store_close(&st);
	if (out)
		*out = res;
	return rc;
}

/* ---------------------------------------------------------------- prune */

#ifdef TALLY_TEST_HOOKS
/* Kills the process at the n-th passing of step when TALLY_CRASH_AT is
 * "step:n" (a prune has no store open, so not db_crash_point). */
static void prune_crash_point(const char *step, uint64_t n)
{
	const char *at = getenv("TALLY_CRASH_AT");
	size_t sl = strlen(step);
	if (at && !strncmp(at, step, sl) && at[sl] == ':' && strtoull(at + sl + 1, NULL, 10) == n)
		kill(getpid(), SIGKILL);
}
#else
#define prune_crash_point(step, n) ((void)(step), (void)(n))
#endif

/* An object a catalog names: its xxh3 and size. */
typedef struct oref {
	uint64_t sum, bytes;
} oref;

typedef struct orefs {
	oref *v;
	uint32_t n, cap;
} orefs;

static int cmp_oref(const void *a, const void *b)
{
	const oref *x = a, *y = b;
	if (x->sum != y->sum)
		return x->sum < y->sum ? -1 : 1;
	return x->bytes < y->bytes ? -1 : x->bytes > y->bytes;
}

/* "objects/<16 hex>-<bytes>": 1 and *o; a backup's temporary file of one
 * ("...tmp<pid>", a directory's): 2; another name: 0 (not ours, kept). */
static int object_parse(const char *name, oref *o)
{
	const char *p = name + 8;
	if (strncmp(name, "objects/", 8) || strspn(p, "0123456789abcdef") != 16 || p[16] != '-')
		return 0;
	char *end;
	o->sum = strtoull(p, NULL, 16);
	o->bytes = strtoull(p + 17, &end, 10);
	if (end == p + 17)
		return 0;
	if (!*end)
		return 1;
	return !strncmp(end, ".tmp", 4) && end[4] &&
			       strspn(end + 4, "0123456789") == strlen(end + 4)
		       ? 2
		       : 0;
}

/* Every object the store's catalogs name, sorted. A catalog that cannot
 * be read stops the prune: what it names is unknown. */
static int referenced(bstore *st, orefs *refs)
{
	seqs have;
	int rc = store_catalogs(st, &have);
	for (uint32_t k = 0; k < have.n && !rc; k++) {
		bcatalog c;
		if ((rc = catalog_load(st, have.v[k], &c)))
			break;
		for (uint32_t i = 0; i < c.n && !rc; i++) {
			if (mem_grow(&refs->v, &refs->cap, refs->n + 1, sizeof *refs->v, 256))
				rc = err_set(-ENOMEM, "out of memory");
			else
				refs->v[refs->n++] = (oref){c.files[i].sum, c.files[i].bytes};
		}
		catalog_free_files(&c);
	}
	mem_free(have.v);
	if (refs->n)
		qsort(refs->v, refs->n, sizeof *refs->v, cmp_oref);
	return rc;
}

typedef struct objlist {
	char (*name)[NAME_MAX_B];
	uint64_t *bytes;
	uint32_t n, cap, cap2;
} objlist;

static int add_object(void *ctx, const char *name, uint64_t bytes)
{
	objlist *l = ctx;
	oref o;
	if (!object_parse(name, &o) || strlen(name) >= NAME_MAX_B)
		return 0;
	if (mem_grow(&l->name, &l->cap, l->n + 1, sizeof *l->name, 256) ||
	    mem_grow(&l->bytes, &l->cap2, l->n + 1, sizeof *l->bytes, 256))
		return err_set(-ENOMEM, "out of memory");
	snprintf(l->name[l->n], NAME_MAX_B, "%s", name);
	l->bytes[l->n++] = bytes;
	return 0;
}

/* The object phase: unless a backup holds st, deletes every object (and
 * a killed backup's temporary file) no catalog names. Checks again for a
 * backup every few seconds, and stops deleting when one appears. */
static int prune_objects(bstore *st, lease *me, backup_prune_result *res)
{
	char held[LEASE_NAME_MAX];
	orefs refs = {0};
	objlist objs = {0};
	int rc = leases_scan(st, me, "backup", held, 1, &res->leases_deleted);
	/* from this look: reading the catalogs may take long, and the first
	 * delete must come soon after a look */
	int64_t checked = wall_ns();
	if (!rc && held[0]) {
		snprintf(res->held_by, sizeof res->held_by, "%s", held);
		return 0;
	}
	/* the catalogs after the lease: any a backup wrote since are counted */
	if (!rc)
		rc = referenced(st, &refs);
	if (!rc)
		rc = store_list(st, "objects/", add_object, &objs);
	for (uint32_t i = 0; i < objs.n && !rc; i++) {
		oref o;
		int kind = object_parse(objs.name[i], &o);
		if (kind == 1 && refs.n && bsearch(&o, refs.v, refs.n, sizeof *refs.v, cmp_oref)) {
			res->objects_kept++;
			continue;
		}
		if (wall_ns() - checked > 5 * INT64_C(1000000000)) {
			/* a prune stalled past its lease may find a backup began */
			if ((rc = lease_renew(st, me, LEASE_PRUNE_NS)) ||
			    (rc = leases_scan(st, me, "backup", held, 0, NULL)))
				break;
			if (held[0]) {
				snprintf(res->held_by, sizeof res->held_by, "%s", held);
				break;
			}
			checked = wall_ns();
		}
		prune_crash_point("prune:object", res->objects_deleted + 1);
		if ((rc = store_delete(st, objs.name[i])))
			break;
		res->objects_deleted++;
		res->bytes_deleted += objs.bytes[i];
	}
	mem_free(refs.v);
	mem_free(objs.name);
	mem_free(objs.bytes);
	return rc;
}

int backup_prune(const char *dest, const tally_s3 *s3, uint64_t keep, backup_prune_result *out)
{
	err_clear();
	backup_prune_result res = {0};
	bstore st;
	seqs have = {0};
	lease me = {0};
	int rc = keep ? store_open(dest, 0, s3, NULL, &st)
		      : err_set(TALLY_EINVAL, "keep at least 1 backup (the newest stays)");
	if (!keep)
		memset(&st, 0, sizeof st);
	if (!rc)
		rc = lease_put(&st, "prune", &me);
	if (!rc)
		rc = store_catalogs(&st, &have);
	if (!rc && !have.n)
		rc = err_set(TALLY_ENOTFOUND, "%s holds no backup", st.where);
	/* catalogs first, oldest first: a kill leaves the newest intact, and
	 * every object of every catalog left */
	uint64_t drop = !rc && have.n > keep ? have.n - keep : 0;
	for (uint64_t i = 0; i < drop && !rc; i++) {
		char name[64];
		catalog_name(have.v[i], name, sizeof name);
		prune_crash_point("prune:catalog", i + 1);
		if (!(rc = store_delete(&st, name)))
			res.catalogs_deleted++;
	}
	if (!rc && have.n) {
		res.oldest_kept = have.v[have.n - (have.n > keep ? keep : have.n)];
		res.newest_kept = have.v[have.n - 1];
		res.catalogs_kept = have.n - drop;
	}
	/* durable before any object goes: a catalog must not come back,
	 * after a power loss, naming objects deleted */
	if (!rc && drop && st.dir)
		rc = fio_fsync_dir(st.dir);
	if (!rc)
		rc = prune_objects(&st, &me, &res);
	lease_drop(&st, &me);
	if (rc)
		err_prefix(rc, "prune of %s", dest ? dest : "");
	mem_free(have.v);
	store_close(&st);
	if (out)
		*out = res;
	return rc;
}

/* ---------------------------------------------------------------- restore */

/* The catalog to restore or check: seq, or the newest. */
static int pick_catalog(bstore *st, uint64_t seq, bcatalog *c)
{
	if (!seq) {
		seqs have;
		int rc = store_catalogs(st, &have);
		if (!rc && !have.n)
			rc = err_set(TALLY_ENOTFOUND, "%s holds no backup", st->where);
		if (!rc)
			seq = have.v[have.n - 1];
		mem_free(have.v);
		if (rc)
			return rc;
	}
	return catalog_load(st, seq, c);
}

/* Writes object f into root/f->name, checked against the catalog. */
static int restore_file(bstore *st, const bfile *f, const char *root)
{
	char path[PATH_MAX + NAME_MAX_B], tmp[PATH_MAX + NAME_MAX_B + 8], obj[64];
	snprintf(path, sizeof path, "%s/%s", root, f->name);
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	object_name(f->sum, f->bytes, obj, sizeof obj);
	int fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return err_sys(errno, "create %s", tmp);
	uint64_t bytes = 0, sum = 0;
	int rc = store_get_fd(st, obj, fd, &bytes, &sum);
	if (!rc && (bytes != f->bytes || sum != f->sum))
		rc = err_set(TALLY_ECORRUPT,
			     "%s (%s): %" PRIu64 " bytes, xxh3 %016" PRIx64
			     "; the catalog says %" PRIu64 " bytes, %016" PRIx64,
			     f->name, obj, bytes, sum, f->bytes, f->sum);
	return finish_tmp(fd, tmp, path, rc);
}

/* The restored store owns all its parts: tiered ones came back whole, and
 * the source's objects (those to delete included) are not this store's to
 * delete. */
static int localize_manifest(const char *root)
{
	manifest m = {0};
	int rc = manifest_load(root, &m), changed = 0;
	for (uint32_t i = 0; !rc && i < m.n_parts; i++) {
		manifest_part *mp = &m.parts[i];
		if (mp->tier != MTIER_REMOTE && !mp->object)
			continue;
		mp->tier = MTIER_LOCAL;
		mem_free(mp->object);
		mp->object = NULL;
		mp->object_sum = 0;
		mp->tiered_at = 0;
		changed = 1;
	}
	if (!rc && m.n_gc) {
		for (uint32_t i = 0; i < m.n_gc; i++)
			mem_free(m.gc[i]);
		m.n_gc = 0;
		changed = 1;
	}
	if (!rc && changed)
		rc = manifest_save(root, &m);
	manifest_free(&m);
	return rc;
}

/* dir's parent, made durable after a rename in it. */
static int fsync_parent(const char *dir)
{
	char p[PATH_MAX];
	snprintf(p, sizeof p, "%s", dir);
	char *slash = strrchr(p, '/');
	if (!slash)
		return fio_fsync_dir(".");
	if (slash == p)
		slash[1] = 0;
	else
		*slash = 0;
	return fio_fsync_dir(p);
}

static int restore_run(bstore *st, const bcatalog *c, const char *dir, const char *partial,
		       tally_backup_result *res)
{
	char p[PATH_MAX + 64];
	int rc = mkdirs(partial);
	snprintf(p, sizeof p, "%s/parts", partial);
	if (!rc)
		rc = mkdirs(p);
	for (uint32_t i = 0; i < c->n_shards && !rc; i++) {
		snprintf(p, sizeof p, "%s/wal/shard-%03u", partial, i);
		rc = mkdirs(p);
	}
	for (uint32_t i = 0; i < c->n && !rc; i++) {
		const bfile *f = &c->files[i];
		if (f->kind == BK_WAL && strncmp(f->name, "wal/shard-", 10))
			return err_set(TALLY_ECORRUPT, "%s: WAL file %s outside wal/", st->where,
				       f->name);
		if (!(rc = restore_file(st, f, partial))) {
			res->files++;
			res->bytes += f->bytes;
		}
	}
	for (uint32_t i = 0; i < c->n_shards && !rc; i++) {
		snprintf(p, sizeof p, "%s/wal/shard-%03u", partial, i);
		rc = fio_fsync_dir(p);
	}
	snprintf(p, sizeof p, "%s/parts", partial);
	if (!rc && !(rc = fio_fsync_dir(p)))
		rc = fio_fsync_dir(partial);
	if (!rc)
		rc = localize_manifest(partial);
	if (!rc && rename(partial, dir))
		rc = err_sys(errno, "rename %s to %s", partial, dir);
	if (!rc)
		rc = fsync_parent(dir);
	return rc;
}

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)ftw;
	return flag == FTW_DP ? rmdir(p) : unlink(p);
}

int backup_restore(const char *src, const tally_s3 *s3, uint64_t seq, const char *dir,
		   tally_backup_result *out)
{
	err_clear();
	tally_backup_result res = {0};
	bstore st;
	bcatalog c = {0};
	char partial[PATH_MAX];
	snprintf(partial, sizeof partial, "%s.partial", dir);
	int rc = 0;
	if (!access(partial, F_OK))
		rc = err_set(TALLY_EINVAL, "%s exists (an interrupted restore?): remove it first",
			     partial);
	/* an existing directory must be empty: it is replaced whole */
	DIR *d = rc ? NULL : opendir(dir);
	if (d) {
		struct dirent *e;
		while (!rc && (e = readdir(d)))
			if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
				rc = err_set(TALLY_EINVAL, "restore into %s: not empty", dir);
		closedir(d);
		if (!rc && rmdir(dir))
			rc = err_sys(errno, "rmdir %s", dir);
	}
	if (!rc)
		rc = store_open(src, 0, s3, NULL, &st);
	else
		memset(&st, 0, sizeof st);
	if (!rc)
		rc = pick_catalog(&st, seq, &c);
	if (!rc) {
		res.seq = c.seq;
		/* a failed restore leaves nothing behind: partial is ours */
		if ((rc = restore_run(&st, &c, dir, partial, &res)))
			nftw(partial, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
	}
	if (rc)
		err_prefix(rc, "restore of %s into %s", src, dir);
	catalog_free_files(&c);
	store_close(&st);
	if (out)
		*out = res;
	return rc;
}

/* ---------------------------------------------------------------- verify */

typedef struct vctx {
	FILE *out;
	uint64_t problems;
} vctx;

static void problem(vctx *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void problem(vctx *v, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vfprintf(v->out, fmt, ap);
	va_end(ap);
	fputc('\n', v->out);
	v->problems++;
}

/* Checks one block and its trailing xxh3. */
static void check_block(vctx *v, const part *p, const part_ref *r, const char *label, uint8_t **buf,
			size_t *cap)
{
	if (!r->len)
		return;
	size_t n = (size_t)r->len + 8;
	if (n > *cap) {
		mem_free(*buf);
		*cap = n;
		if (!(*buf = mem_alloc(n))) {
			*cap = 0;
			problem(v, "%s: out of memory checking block %u", label, r->no);
			return;
		}
	}
	if (fio_pread_full(p->fd, *buf, n, r->off, label)) {
		problem(v, "%s block %u (offset %" PRIu64 "): %s", label, r->no, r->off, err_msg());
		return;
	}
	uint64_t want = 0;
	for (int i = 7; i >= 0; i--)
		want = want << 8 | (*buf)[r->len + (size_t)i];
	if (XXH3_64bits(*buf, r->len) != want)
		problem(v, "%s block %u (offset %" PRIu64 "): checksum mismatch", label, r->no,
			r->off);
}

/* Header, index and footer (part_open_reads), then every block the file
 * holds (a stub: its rollup blocks; its column blocks are the object's).
 * check_block preads each block itself, so a map of the part would go
 * unread: it is not made. */
static void check_part(vctx *v, const char *path, const char *label)
{
	part *p;
	if (part_open_reads(path, PART_READS_PREAD, &p)) {
		problem(v, "%s: %s", label, err_msg());
		return;
	}
	uint8_t *buf = NULL;
	size_t cap = 0;
	if (!(p->flags & PART_F_STUB))
		for (uint32_t i = 0; i < p->n_refs; i++)
			check_block(v, p, &p->refs[i], label, &buf, &cap);
	for (uint32_t i = 0; i < p->n_rollups; i++)
		check_block(v, p, &p->rollups[i].ref, label, &buf, &cap);
	mem_free(buf);
	part_close(p);
}

static void verify_dir(vctx *v, const char *dir)
{
	manifest m = {0};
	if (manifest_load(dir, &m)) {
		problem(v, "%s", err_msg());
		return;
	}
	for (uint32_t i = 0; i < m.n_parts; i++) {
		const manifest_part *mp = &m.parts[i];
		char name[64], path[PATH_MAX];
		manifest_part_name(mp->id, name, sizeof name);
		if (mp->tier == MTIER_REMOTE)
			snprintf(strrchr(name, '.'), 6, ".stub");
		snprintf(path, sizeof path, "%s/%s", dir, name);
		if (access(path, F_OK))
			problem(v, "%s: missing (the manifest names it)", path);
		else
			check_part(v, path, path);
	}
	manifest_free(&m);
}

/* The manifest a backup holds, checked against the catalog: every part
 * it names must be there. fd holds the manifest's bytes. */
static void check_refs(vctx *v, const bcatalog *c, int fd, uint64_t bytes, const char *label)
{
	char tdir[PATH_MAX];
	snprintf(tdir, sizeof tdir, "%s/tally-verify-XXXXXX", tmp_dir());
	if (!mkdtemp(tdir)) {
		problem(v, "%s: cannot make a temporary directory in %s", label, tmp_dir());
		return;
	}
	char path[PATH_MAX + 16];
	snprintf(path, sizeof path, "%s/MANIFEST", tdir);
	int out = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	uint64_t sum;
	manifest m = {0};
	if (out < 0 || copy_hash(fd, label, out, bytes, &sum) || manifest_load(tdir, &m))
		problem(v, "%s: %s", label, out < 0 ? strerror(errno) : err_msg());
	else
		for (uint32_t i = 0; i < m.n_parts; i++) {
			char name[64];
			manifest_part_name(m.parts[i].id, name, sizeof name);
			int found = 0;
			for (uint32_t j = 0; j < c->n && !found; j++)
				found = !strcmp(c->files[j].name, name);
			if (!found)
				problem(v, "%s: names %s, which the backup does not hold", label,
					name);
		}
	if (out >= 0)
		close(out);
	manifest_free(&m);
	unlink(path);
	rmdir(tdir);
}

/* One object of catalog c: there, of its size and xxh3; a part's blocks. */
static void check_object(vctx *v, bstore *st, const bcatalog *c, const bfile *f)
{
	char obj[64], label[PATH_MAX + 256], path[PATH_MAX];
	object_name(f->sum, f->bytes, obj, sizeof obj);
	snprintf(label, sizeof label, "%s backup %" PRIu64 ": %s (%s)", st->where, c->seq, f->name,
		 obj);
	int fd = temp_fd(tmp_dir());
	if (fd < 0) {
		problem(v, "%s: %s", label, err_msg());
		return;
	}
	uint64_t bytes = 0, sum = 0;
	int rc = store_get_fd(st, obj, fd, &bytes, &sum);
	if (rc == TALLY_ENOTFOUND)
		problem(v, "%s: missing", label);
	else if (rc)
		problem(v, "%s: %s", label, err_msg());
	else if (bytes != f->bytes || sum != f->sum)
		problem(v,
			"%s: %" PRIu64 " bytes, xxh3 %016" PRIx64 "; the catalog says %" PRIu64
			" bytes, %016" PRIx64,
			label, bytes, sum, f->bytes, f->sum);
	if (!rc && (f->kind == BK_PART || f->kind == BK_STUB)) {
		/* the block that is damaged, by the part's own checksums */
		snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
		check_part(v, path, label);
	}
	if (!rc && f->kind == BK_MANIFEST)
		check_refs(v, c, fd, bytes, label);
	close(fd);
}

static void verify_backup(vctx *v, bstore *st)
{
	seqs have;
	if (store_catalogs(st, &have)) {
		problem(v, "%s: %s", st->where, err_msg());
		return;
	}
	if (!have.n)
		problem(v, "%s: holds no backup (no catalog)", st->where);
	/* objects are shared: each is checked once, under the first catalog
	 * naming it */
	seqs done = {0};
	for (uint32_t k = 0; k < have.n; k++) {
		bcatalog c;
		if (catalog_load(st, have.v[k], &c)) {
			problem(v, "%s", err_msg());
			continue;
		}
		for (uint32_t i = 0; i < c.n; i++) {
			const bfile *f = &c.files[i];
			int seen = 0;
			for (uint32_t j = 0; j < done.n && !seen; j++)
				seen = done.v[j] == (f->sum ^ f->bytes);
			if (seen)
				continue;
			if (f->kind != BK_MANIFEST)
				seqs_add(&done, f->sum ^ f->bytes);
			check_object(v, st, &c, f);
		}
		catalog_free_files(&c);
	}
	mem_free(done.v);
	mem_free(have.v);
}

int backup_verify(const char *path, const tally_s3 *s3, FILE *out, uint64_t *problems)
{
	err_clear();
	vctx v = {.out = out};
	char p[PATH_MAX];
	snprintf(p, sizeof p, "%s/objects", path);
	if (!strncmp(path, "s3://", 5) || !access(p, F_OK)) {
		bstore st;
		int rc = store_open(path, 0, s3, NULL, &st);
		if (rc) {
			store_close(&st);
			return rc;
		}
		verify_backup(&v, &st);
		store_close(&st);
	} else {
		snprintf(p, sizeof p, "%s/MANIFEST", path);
		char w[PATH_MAX];
		snprintf(w, sizeof w, "%s/wal", path);
		if (access(p, F_OK) && access(w, F_OK))
			return err_set(TALLY_ENOTFOUND, "%s: neither a data directory nor a backup",
				       path);
		verify_dir(&v, path);
	}
	if (problems)
		*problems = v.problems;
	err_clear();
	return v.problems ? err_set(TALLY_ECORRUPT, "%s: %" PRIu64 " problem%s", path, v.problems,
				    v.problems == 1 ? "" : "s")
			  : 0;
}
