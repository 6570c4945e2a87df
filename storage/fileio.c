/*
 * fileio.c — see fileio.h. Every function names the file in its error.
 */
#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "err.h"
#include "mem.h"

int fio_pwrite_full(int fd, const void *p, size_t n, uint64_t off)
{
	const char *c = p;
	while (n) {
		ssize_t k = pwrite(fd, c, n, (off_t)off);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		c += k;
		n -= (size_t)k;
		off += (uint64_t)k;
	}
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
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return err_sys(errno, "open directory %s", dir);
	int rc = fsync(fd) ? err_sys(errno, "fsync directory %s", dir) : 0;
	close(fd);
	return rc;
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
	if (fsync(fd)) {
		rc = err_sys(errno, "fsync %s", tmp);
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
