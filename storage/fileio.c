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
#else
#define FIO_FAULT_WRITE 1
#define FIO_FAULT_SYNC  2
static inline int fault_check(unsigned op)
{
	(void)op;
	return 0;
}
#endif

int fio_pwrite(int fd, const void *p, size_t n, uint64_t off, size_t *done)
{
	const char *c = p;
	size_t got = 0;
	int e = fault_check(FIO_FAULT_WRITE);
	size_t limit = e ? n / 2 : n; /* a failing write stops half way */
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
	int e = fault_check(FIO_FAULT_SYNC);
	if (e)
		return -e;
	return fsync(fd) ? -errno : 0;
}

int fio_fdatasync(int fd)
{
	int e = fault_check(FIO_FAULT_SYNC);
	if (e)
		return -e;
	return fdatasync(fd) ? -errno : 0;
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
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return err_sys(errno, "open directory %s", dir);
	int e = -fio_fsync(fd);
	int rc = e ? err_sys(e, "fsync directory %s", dir) : 0;
	close(fd);
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
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
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
	close(fd);
	fd = -1;
	if (rename(tmp, dst)) {
		rc = err_sys(errno, "rename %s to %s", tmp, dst);
		goto fail;
	}
	return fio_fsync_dir(dir);
fail:
	if (fd >= 0)
		close(fd);
	unlink(tmp);
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
