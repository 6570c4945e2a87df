/*
 * fuzz_manifest.c — libFuzzer target for the manifest reader (versions 1
 * and 2: parts, tier states, object keys, the list of objects to delete).
 *
 * The input becomes DIR/MANIFEST; manifest_load must return OK or an
 * error, never crash or read out of bounds. Byte 0 bit 0 set: the target
 * recomputes the trailing checksum, so the fuzzer gets past it to the
 * lengths and counts. A manifest that loaded must save and load again to
 * the same parts and objects.
 *
 * Build: tests/fuzz/build fuzz_manifest build-fuzz/fuzz_manifest
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "manifest.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char dir[64];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!dir[0]) {
		snprintf(dir, sizeof dir, "/tmp/fuzz-manifest-XXXXXX");
		if (!mkdtemp(dir))
			abort();
	}
	if (size < 1)
		return 0;
	int fix = data[0] & 1;
	data++, size--;
	uint8_t *buf = malloc(size + 8);
	memcpy(buf, data, size);
	size_t len = size;
	if (fix && len >= 8) {
		uint64_t h = XXH3_64bits(buf, len - 8);
		for (int i = 0; i < 8; i++)
			buf[len - 8 + i] = (uint8_t)(h >> (8 * i));
	}
	char path[128];
	snprintf(path, sizeof path, "%s/MANIFEST", dir);
	FILE *f = fopen(path, "wb");
	fwrite(buf, 1, len, f);
	fclose(f);
	free(buf);
	manifest m;
	if (manifest_load(dir, &m) == 0) {
		if (manifest_save(dir, &m) == 0) {
			manifest m2;
			if (manifest_load(dir, &m2))
				abort(); /* what we wrote must read back */
			if (m2.n_parts != m.n_parts || m2.n_gc != m.n_gc)
				abort();
			for (uint32_t i = 0; i < m.n_parts; i++)
				if (m.parts[i].tier != m2.parts[i].tier ||
				    (m.parts[i].object &&
				     strcmp(m.parts[i].object, m2.parts[i].object)))
					abort();
			manifest_free(&m2);
		}
		manifest_free(&m);
	}
	unlink(path);
	return 0;
}
