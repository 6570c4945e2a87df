/*
 * fileio.h — whole-buffer reads and writes, and atomic file replacement.
 *
 * The small POSIX chores every on-disk format needs, done once: loops that
 * survive EINTR and short transfers, directory fsync (a new or renamed
 * name is durable only once its directory is), and write-temp-then-rename.
 *
 * This is storage's one entry point for writes and syncs: every pwrite,
 * fsync and fdatasync of the WAL, parts and manifest goes through here, so
 * that a test build (compiled with -DTALLY_FAULTS, never tallyd or
 * libtally) can make them fail on demand with fio_fault_set().
 */
#ifndef TALLY_FILEIO_H
#define TALLY_FILEIO_H

#include <stddef.h>
#include <stdint.h>

/* 0 or -errno. */
int fio_pwrite_full(int fd, const void *p, size_t n, uint64_t off);
/* Like fio_pwrite_full, and *done gets the bytes that reached the file
 * before an error (a short write: ENOSPC part way). */
int fio_pwrite(int fd, const void *p, size_t n, uint64_t off, size_t *done);
/* fsync / fdatasync: 0 or -errno (no message; the caller names the file). */
int fio_fsync(int fd);
int fio_fdatasync(int fd);
/* open, rename, unlink, ftruncate and close for files storage writes:
 * the system calls (errno set, -1 on failure), seen by the power-loss
 * simulation of test builds. */
int fio_open(const char *path, int flags, int mode);
int fio_rename(const char *from, const char *to);
int fio_unlink(const char *path);
int fio_ftruncate(int fd, uint64_t len);
int fio_close(int fd);
/* 0, -errno, or TALLY_ECORRUPT ("...: file ends at byte ...") when the file
 * is shorter than off + n; path names the file in the message. */
int fio_pread_full(int fd, void *p, size_t n, uint64_t off, const char *path);
/* fsyncs the directory; 0 or -errno with a message. */
int fio_fsync_dir(const char *dir);
/* Creates directory path if missing; a new one is made durable by
 * fsyncing its parent, or a power cut could lose the name and all below
 * it. 0 (also when it existed) or -errno with a message. */
int fio_mkdir(const char *path);
/* Writes data to dir/name atomically: dir/name.tmp, fsync, rename, fsync
 * of dir. 0 or -errno with a message naming the file. */
int fio_write_atomic(const char *dir, const char *name, const void *data, size_t len);
/* Reads a whole file into a new buffer (mem_free it). -ENOENT when absent;
 * TALLY_ELIMIT beyond max bytes. */
int fio_read_all(const char *path, size_t max, void **data, size_t *len);

#ifdef TALLY_FAULTS
/* Test builds only. After `skip` more calls of the kinds in ops succeed,
 * the next `count` of them fail with err (UINT64_MAX: all of them); a
 * failing write first writes half of its bytes, as a disk filling up part
 * way through does. fio_fault_set(0, 0, 0, 0) turns injection off.
 * fio_fault_hits() counts the calls failed so far. */
enum { FIO_FAULT_WRITE = 1, FIO_FAULT_SYNC = 2 };
void fio_fault_set(unsigned ops, int err, uint64_t skip, uint64_t count);
uint64_t fio_fault_hits(void);

/* Power loss (test builds only). fio_powerloss_arm(n) starts recording
 * what a power cut would undo, and makes the n-th fsync, fdatasync or
 * rename from now (1-based; 0: never) a power cut instead: before that
 * call runs, every byte written to a file since its last fsync is dropped
 * (overwritten synced bytes come back), every create, rename and unlink
 * in a directory not fsynced since is undone, and the process exits with
 * FIO_POWERLOSS_EXIT. fio_powerloss_calls() counts the boundaries seen. */
#define FIO_POWERLOSS_EXIT 99
void fio_powerloss_arm(uint64_t n);
uint64_t fio_powerloss_calls(void);
#endif

/* Little-endian helpers for every format. */
static inline void le_put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}
static inline void le_put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}
static inline void le_put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}
static inline uint16_t le_get16(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}
static inline uint32_t le_get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t le_get64(const uint8_t *p)
{
	return (uint64_t)le_get32(p) | (uint64_t)le_get32(p + 4) << 32;
}

#endif
