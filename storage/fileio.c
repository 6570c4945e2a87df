/*
 * fileio.c — see fileio.h. Every function names the file in its error.
 *
 * Every write and sync of storage passes through fault_check(), which is
 * nothing in a normal build and, in a test build (-DTALLY_FAULTS), decides
 * from the armed fault whether this call fails: so failure injection sees
 * exactly the calls the real code makes, no more and no fewer.
 */
#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "err.h"
#include "mem.h"

#ifdef TALLY_FAULTS
#include <pthread.h>
#include <stdlib.h>

static pthread_mutex_t fault_mu = PTHREAD_MUTEX_INITIALIZER;
static unsigned fault_ops;
static int fault_err;
static uint64_t fault_skip, fault_count, fault_hits;

void fio_fault_set(unsigned ops, int err, uint64_t skip, uint64_t count)
{
	pthread_mutex_lock(&fault_mu);
	fault_ops = count ? ops : 0;
	fault_err = err;
	fault_skip = skip;
	fault_count = count;
	pthread_mutex_unlock(&fault_mu);
}

uint64_t fio_fault_hits(void)
{
	pthread_mutex_lock(&fault_mu);
	uint64_t n = fault_hits;
	pthread_mutex_unlock(&fault_mu);
	return n;
}

/* 0, or the errno this call of kind op must fail with. */
static int fault_check(unsigned op)
{
	int e = 0;
	pthread_mutex_lock(&fault_mu);
	if (fault_ops & op) {
		if (fault_skip)
			fault_skip--;
		else {
			e = fault_err;
			fault_hits++;
			if (fault_count != UINT64_MAX && --fault_count == 0)
				fault_ops = 0;
		}
	}
	pthread_mutex_unlock(&fault_mu);
	return e;
}

/* ---- power loss: what a cut would undo, kept while armed ---- */

typedef struct pl_undo {
	uint64_t off;
	size_t len;
	uint8_t *old; /* the synced bytes a write or truncation replaced */
	struct pl_undo *next;
} pl_undo;

typedef struct pl_file { /* a file written since its last fsync */
	char *path;
	uint64_t synced_len;
	pl_undo *undo; /* newest first */
	struct pl_file *next;
} pl_file;

enum { PL_CREATE, PL_RENAME, PL_UNLINK };
typedef struct pl_op { /* a directory change not yet fsynced */
	int kind;
	char *path, *from, *backup; /* backup: a link to what was replaced */
	struct pl_op *prev;
} pl_op;

#define PL_FDS 4096
static int pl_on;
static uint64_t pl_at, pl_calls, pl_seq;
static char *pl_fd_path[PL_FDS];
static pl_file *pl_files;
static pl_op *pl_ops; /* newest first */

static char *pl_strdup(const char *p)
{
	size_t n = strlen(p) + 1;
	char *c = malloc(n);
	if (c)
		memcpy(c, p, n);
	return c;
}

static pl_file *pl_file_of(const char *path, int make)
{
	for (pl_file *f = pl_files; f; f = f->next)
		if (!strcmp(f->path, path))
			return f;
	if (!make)
		return NULL;
	struct stat sb;
	pl_file *f = calloc(1, sizeof *f);
	f->path = pl_strdup(path);
	f->synced_len = stat(path, &sb) ? 0 : (uint64_t)sb.st_size; /* older bytes are durable */
	f->next = pl_files;
	pl_files = f;
	return f;
}

static void pl_file_rename(const char *from, const char *to)
{
	pl_file *f = pl_file_of(from, 0);
	if (f) {
		free(f->path);
		f->path = pl_strdup(to);
	}
	for (int i = 0; i < PL_FDS; i++)
		if (pl_fd_path[i] && !strcmp(pl_fd_path[i], from)) {
			free(pl_fd_path[i]);
			pl_fd_path[i] = pl_strdup(to);
		}
}

/* Keeps the synced bytes of path in [off, off+n) that a change replaces. */
static void pl_save(pl_file *f, int fd, uint64_t off, uint64_t n)
{
	if (off >= f->synced_len)
		return;
	if (n > f->synced_len - off)
		n = f->synced_len - off;
	pl_undo *u = calloc(1, sizeof *u);
	u->off = off;
	u->old = malloc(n ? n : 1);
	ssize_t k = pread(fd, u->old, n, (off_t)off);
	u->len = k > 0 ? (size_t)k : 0;
	u->next = f->undo;
	f->undo = u;
}

static void pl_file_synced(pl_file *f, int fd)
{
	struct stat sb;
	if (!fstat(fd, &sb))
		f->synced_len = (uint64_t)sb.st_size;
	while (f->undo) {
		pl_undo *u = f->undo;
		f->undo = u->next;
		free(u->old);
		free(u);
	}
}

static char *pl_parent(const char *path)
{
	char *d = pl_strdup(path), *sl = strrchr(d, '/');
	if (sl)
		*sl = 0;
	else
		strcpy(d, ".");
	return d;
}

/* An fsync of directory dir: its entries' changes are durable now. */
static void pl_dir_synced(const char *dir)
{
	for (pl_op **pp = &pl_ops; *pp;) {
		pl_op *o = *pp;
		char *parent = pl_parent(o->path);
		int mine = !strcmp(parent, dir);
		free(parent);
		if (!mine) {
			pp = &o->prev;
			continue;
		}
		if (o->backup) {
			pl_file *f = pl_file_of(o->backup, 0);
			if (f)
				f->path[0] = 0; /* the replaced or deleted file is gone for good */
			unlink(o->backup);
		}
		*pp = o->prev;
		free(o->path);
		free(o->from);
		free(o->backup);
		free(o);
	}
}

static void pl_op_add(int kind, const char *path, const char *from, const char *backup)
{
	pl_op *o = calloc(1, sizeof *o);
	o->kind = kind;
	o->path = pl_strdup(path);
	o->from = from ? pl_strdup(from) : NULL;
	o->backup = backup ? pl_strdup(backup) : NULL;
	o->prev = pl_ops;
	pl_ops = o;
}

/* A link to path under a fresh name beside it; NULL when path is absent. */
static char *pl_backup(const char *path)
{
	char b[PATH_MAX + 32];
	snprintf(b, sizeof b, "%s.~pl%llu", path, (unsigned long long)++pl_seq);
	return link(path, b) ? NULL : pl_strdup(b);
}

/* The power cut: undo directory changes newest first, then put every
 * file back to what its last fsync made durable; then exit. */
static _Noreturn void pl_cut(void)
{
	for (pl_op *o = pl_ops; o; o = o->prev) {
		if (o->kind == PL_CREATE) {
			unlink(o->path);
			pl_file *f = pl_file_of(o->path, 0);
			if (f)
				f->synced_len = 0, f->path[0] = 0; /* gone */
		} else if (o->kind == PL_RENAME) {
			rename(o->path, o->from);
			pl_file_rename(o->path, o->from);
			if (o->backup) {
				rename(o->backup, o->path);
				pl_file_rename(o->backup, o->path);
			}
		} else if (o->backup) {
			rename(o->backup, o->path);
			pl_file_rename(o->backup, o->path);
		}
	}
	for (pl_file *f = pl_files; f; f = f->next) {
		if (!f->path[0])
			continue;
		int fd = open(f->path, O_WRONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		for (pl_undo *u = f->undo; u; u = u->next) /* newest first: oldest wins */
			if (pwrite(fd, u->old, u->len, (off_t)u->off) < 0)
				break;
		if (ftruncate(fd, (off_t)f->synced_len))
			(void)0; /* nothing more to do in a simulated power cut */
		close(fd);
	}
	_exit(FIO_POWERLOSS_EXIT);
}

/* Called before each fsync, fdatasync and rename. */
static void pl_boundary(void)
{
	if (!pl_on)
		return;
	if (++pl_calls == pl_at)
		pl_cut();
}

void fio_powerloss_arm(uint64_t n)
{
	pl_on = 1;
	pl_at = n;
	pl_calls = 0;
}

uint64_t fio_powerloss_calls(void)
{
	return pl_calls;
}

static const char *pl_path(int fd)
{
	return pl_on && fd >= 0 && fd < PL_FDS ? pl_fd_path[fd] : NULL;
}

static void pl_opened(int fd, const char *path, int created)
{
	if (!pl_on || fd < 0 || fd >= PL_FDS)
		return;
	free(pl_fd_path[fd]);
	pl_fd_path[fd] = pl_strdup(path);
	if (created) {
		pl_file *f = pl_file_of(path, 1);
		f->synced_len = 0;
		pl_op_add(PL_CREATE, path, NULL, NULL);
	}
}

static void pl_written(int fd, uint64_t off, size_t n)
{
	const char *p = pl_path(fd);
	if (p)
		pl_save(pl_file_of(p, 1), fd, off, n);
}

static void pl_synced(int fd)
{
	const char *p = pl_path(fd);
	struct stat sb;
	if (!p || fstat(fd, &sb))
		return;
	if (S_ISDIR(sb.st_mode))
		pl_dir_synced(p);
	else
		pl_file_synced(pl_file_of(p, 1), fd);
}
#else
#define FIO_FAULT_WRITE        1
#define FIO_FAULT_SYNC         2
static inline int fault_check(unsigned op)
{
	(void)op;
	return 0;
}
#define pl_boundary()          ((void)0)
#define pl_opened(fd, p, c)    ((void)0)
#define pl_written(fd, off, n) ((void)0)
#define pl_synced(fd)          ((void)0)
#endif

int fio_open(const char *path, int flags, int mode)
{
#ifdef TALLY_FAULTS
	int created = (flags & O_CREAT) && access(path, F_OK) != 0;
#endif
	int fd = open(path, flags | O_CLOEXEC, mode);
	pl_opened(fd, path, created);
	return fd;
}

int fio_close(int fd)
{
#ifdef TALLY_FAULTS
	if (fd >= 0 && fd < PL_FDS) {
		free(pl_fd_path[fd]);
		pl_fd_path[fd] = NULL;
	}
#endif
	return close(fd);
}

int fio_rename(const char *from, const char *to)
{
	pl_boundary();
#ifdef TALLY_FAULTS
	char *backup = pl_on ? pl_backup(to) : NULL;
	int rc = rename(from, to);
	if (pl_on && !rc) {
		pl_op_add(PL_RENAME, to, from, backup);
		if (backup) /* the file replaced lives on as the backup */
			pl_file_rename(to, backup);
		pl_file_rename(from, to);
	} else if (backup) {
		unlink(backup);
	}
	free(backup);
	return rc;
#else
	return rename(from, to);
#endif
}

int fio_unlink(const char *path)
{
#ifdef TALLY_FAULTS
	char *backup = pl_on ? pl_backup(path) : NULL;
	int rc = unlink(path);
	if (backup && !rc) {
		pl_op_add(PL_UNLINK, path, NULL, backup);
		pl_file_rename(path, backup);
	} else if (backup) {
		unlink(backup);
	}
	free(backup);
	return rc;
#else
	return unlink(path);
#endif
}

int fio_ftruncate(int fd, uint64_t len)
{
#ifdef TALLY_FAULTS
	struct stat sb;
	if (pl_path(fd) && !fstat(fd, &sb) && (uint64_t)sb.st_size > len)
		pl_written(fd, len, (size_t)((uint64_t)sb.st_size - len));
#endif
	return ftruncate(fd, (off_t)len);
}

int fio_pwrite(int fd, const void *p, size_t n, uint64_t off, size_t *done)
{
	const char *c = p;
	size_t got = 0;
	int e = fault_check(FIO_FAULT_WRITE);
	size_t limit = e ? n / 2 : n; /* a failing write stops half way */
	pl_written(fd, off, limit);
	while (got < limit) {
		ssize_t k = pwrite(fd, c + got, limit - got, (off_t)(off + got));
		if (k < 0) {
			if (errno == EINTR)
				continue;
			e = errno;
			break;
		}
		if (k == 0) {
			e = EIO; /* no progress: do not spin */
			break;
		}
		got += (size_t)k;
	}
	if (done)
		*done = got;
	return got == n ? 0 : -(e ? e : EIO);
}

int fio_pwrite_full(int fd, const void *p, size_t n, uint64_t off)
{
	return fio_pwrite(fd, p, n, off, NULL);
}

int fio_fsync(int fd)
{
	pl_boundary();
	int e = fault_check(FIO_FAULT_SYNC);
	if (e)
		return -e;
	if (fsync(fd))
		return -errno;
	pl_synced(fd);
	return 0;
}

int fio_fdatasync(int fd)
{
	pl_boundary();
	int e = fault_check(FIO_FAULT_SYNC);
	if (e)
		return -e;
	if (fdatasync(fd))
		return -errno;
	pl_synced(fd);
	return 0;
}

int fio_pread_full(int fd, void *p, size_t n, uint64_t off, const char *path)
{
	char *c = p;
	while (n) {
		ssize_t k = pread(fd, c, n, (off_t)off);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			return err_sys(errno, "read %s at byte %llu", path,
				       (unsigned long long)off);
		}
		if (k == 0)
			return err_set(TALLY_ECORRUPT,
				       "%s: file ends at byte %llu, %zu bytes short", path,
				       (unsigned long long)off, n);
		c += k;
		n -= (size_t)k;
		off += (uint64_t)k;
	}
	return 0;
}

int fio_fsync_dir(const char *dir)
{
	int fd = fio_open(dir, O_RDONLY | O_DIRECTORY, 0);
	if (fd < 0)
		return err_sys(errno, "open directory %s", dir);
	int e = -fio_fsync(fd);
	int rc = e ? err_sys(e, "fsync directory %s", dir) : 0;
	fio_close(fd);
	return rc;
}

int fio_mkdir(const char *path)
{
	if (mkdir(path, 0755) != 0)
		return errno == EEXIST ? 0 : err_sys(errno, "mkdir %s", path);
	char parent[PATH_MAX];
	snprintf(parent, sizeof parent, "%s", path);
	char *slash = strrchr(parent, '/');
	if (slash == parent)
		slash[1] = 0;
	else if (slash)
		*slash = 0;
	else
		snprintf(parent, sizeof parent, ".");
	return fio_fsync_dir(parent);
}

int fio_write_atomic(const char *dir, const char *name, const void *data, size_t len)
{
	char tmp[PATH_MAX], dst[PATH_MAX];
	snprintf(tmp, sizeof tmp, "%s/%s.tmp", dir, name);
	snprintf(dst, sizeof dst, "%s/%s", dir, name);
	int fd = fio_open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		return err_sys(errno, "create %s", tmp);
	int rc = fio_pwrite_full(fd, data, len, 0);
	if (rc) {
		err_sys(-rc, "write %s", tmp);
		goto fail;
	}
	if ((rc = fio_fsync(fd))) {
		rc = err_sys(-rc, "fsync %s", tmp);
		goto fail;
	}
	fio_close(fd);
	fd = -1;
	if (fio_rename(tmp, dst)) {
		rc = err_sys(errno, "rename %s to %s", tmp, dst);
		goto fail;
	}
	return fio_fsync_dir(dir);
fail:
	if (fd >= 0)
		fio_close(fd);
	fio_unlink(tmp);
	return rc;
}

int fio_read_all(const char *path, size_t max, void **data, size_t *len)
{
	*data = NULL;
	*len = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? -ENOENT : err_sys(errno, "open %s", path);
	struct stat sb;
	int rc = 0;
	void *buf = NULL;
	if (fstat(fd, &sb)) {
		rc = err_sys(errno, "stat %s", path);
		goto out;
	}
	if ((uint64_t)sb.st_size > max) {
		rc = err_set(TALLY_ELIMIT, "%s: %lld bytes, more than the %zu allowed", path,
			     (long long)sb.st_size, max);
		goto out;
	}
	buf = mem_alloc((size_t)sb.st_size + 1);
	if (!buf) {
		rc = err_set(-ENOMEM, "out of memory reading %s", path);
		goto out;
	}
	if ((rc = fio_pread_full(fd, buf, (size_t)sb.st_size, 0, path))) {
		mem_free(buf);
		buf = NULL;
		goto out;
	}
	*data = buf;
	*len = (size_t)sb.st_size;
out:
	close(fd);
	return rc;
}
