/*
 * fuzz_wal.c — libFuzzer target for WAL recovery (wal_open + replay).
 *
 * The input becomes one or two segment files; wal_open must return OK or an
 * error, never crash, hang or read out of bounds. Checksums would stop the
 * fuzzer at the first header, so in "fix-up" mode the target recomputes
 * them and lets the fuzzer reach lengths, flags, seqs and LZ4 decoding.
 * A log that opened must also take an append and reopen cleanly.
 *
 * Input: byte 0 = bit 0 fix up checksums, bit 1 split into two segments,
 * bits 2..7 after_seq; bytes 1..2 = split point when split; then the bytes.
 *
 * Build: clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE
 *   -Iengine -Istorage tests/fuzz/fuzz_wal.c storage/wal.c storage/err.c
 *   storage/mem.c storage/log.c -llz4 -lxxhash -lpthread -o fuzz_wal
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "wal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char root[64], dir[96];

static uint64_t get_u64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static void put_u64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void fix_checksums(uint8_t *p, size_t n)
{
	if (n < 32)
		return;
	put_u64(p + 24, XXH3_64bits(p, 24));
	for (size_t off = 32; n - off >= 40;) {
		uint32_t stored = (uint32_t)p[off + 4] | (uint32_t)p[off + 5] << 8 |
				  (uint32_t)p[off + 6] << 16 | (uint32_t)p[off + 7] << 24;
		int fits = stored <= n - off - 40;
		if (fits)
			put_u64(p + off + 24, XXH3_64bits(p + off + 40, stored));
		put_u64(p + off + 32, XXH3_64bits(p + off, 32));
		if (!fits)
			break;
		off += 40 + (size_t)stored;
	}
}

static void put_segment(const uint8_t *p, size_t n, uint64_t fallback_seq)
{
	uint64_t seq = n >= 24 ? get_u64(p + 16) : 0;
	if (seq == 0 || seq > 99999999999999999ull)
		seq = fallback_seq;
	char path[160];
	snprintf(path, sizeof path, "%s/%020llu.wal", dir, (unsigned long long)seq);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		abort();
	if (n && write(fd, p, n) != (ssize_t)n)
		abort();
	close(fd);
}

static void clear_dir(void)
{
	DIR *d = opendir(dir);
	if (!d)
		return;
	struct dirent *de;
	char path[400];
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
		unlink(path);
	}
	closedir(d);
}

static void remove_root(void)
{
	clear_dir();
	rmdir(dir);
	rmdir(root);
}

static int touch_cb(void *ctx, uint64_t seq, const void *payload, size_t len)
{
	/* Read every byte so the sanitizers see any bad pointer or length. */
	const uint8_t *p = payload;
	uint64_t *sum = ctx;
	for (size_t i = 0; i < len; i++)
		*sum += p[i];
	*sum += seq;
	return 0;
}

static void quiet(void *ctx, int level, const char *msg)
{
	(void)ctx, (void)level, (void)msg;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!root[0]) {
		/* tmpfs when there is one: fsync costs nothing there. */
		snprintf(root, sizeof root, "/dev/shm/fuzz-wal-XXXXXX");
		if (!mkdtemp(root)) {
			snprintf(root, sizeof root, "/tmp/fuzz-wal-XXXXXX");
			if (!mkdtemp(root))
				abort();
		}
		snprintf(dir, sizeof dir, "%s/wal", root);
		atexit(remove_root);
	}
	if (size < 3)
		return 0;
	unsigned mode = data[0];
	size_t split = (size_t)data[1] | (size_t)data[2] << 8;
	uint64_t after_seq = mode >> 2;
	size_t n = size - 3;
	uint8_t *p = malloc(n ? n : 1);
	memcpy(p, data + 3, n);
	split = n ? split % (n + 1) : 0;

	clear_dir();
	mkdir(dir, 0755);
	if (mode & 2) {
		if (mode & 1) {
			fix_checksums(p, split);
			fix_checksums(p + split, n - split);
		}
		put_segment(p, split, 1);
		put_segment(p + split, n - split, 2);
	} else {
		if (mode & 1)
			fix_checksums(p, n);
		put_segment(p, n, 1);
	}
	free(p);

	wal_options opt = {.segment_bytes = 4096, .buffer_bytes = 4096};
	opt.log.fn = quiet;
	uint64_t sum = 0;
	wal *w = NULL;
	if (wal_open(dir, &opt, after_seq, touch_cb, &sum, &w) == 0) {
		uint64_t before = wal_last_seq(w);
		int rc = wal_append(w, "fuzz", 4, NULL);
		wal_close(w);
		w = NULL;
		/* Recovery leaves a log that opens again as it was. */
		if (wal_open(dir, &opt, after_seq, NULL, NULL, &w) != 0)
			abort();
		if (wal_last_seq(w) != before + (rc == 0))
			abort();
		wal_close(w);
	}
	return 0;
}
