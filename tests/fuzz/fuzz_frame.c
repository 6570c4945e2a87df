/*
 * fuzz_frame.c — libFuzzer target: the server's framing (wire/frame.c)
 * cuts a stream exactly where the engine's parser ends records.
 *
 * For any input: walking records with frame_record_end gives the same
 * boundaries as lp_next's consumption; frame_cut of every prefix is one of
 * those boundaries (and ends in '\n'); frame_find_cmd returns the first
 * record that starts with "#!". The server relies on all three to hand the
 * engine whole records only and to see commands where a user meant them.
 *
 *   tests/fuzz/build fuzz_frame build-fuzz/fuzz_frame
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../wire/frame.c"
#include "lp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                 \
	do {                     \
		if (!(c))        \
			abort(); \
	} while (0)

static lp_line line;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > 65536)
		return 0;
	/* A copy of exactly the input size, so ASan sees any overread. */
	char *buf = malloc(size ? size : 1);
	memcpy(buf, data, size);
	size_t *ends = malloc((size + 1) * sizeof *ends);
	size_t n = 0;
	/* One parser for the run (its 1 MiB scratch is costly to make). */
	static lp_parser ps;
	static int ready;
	if (!ready) {
		if (lp_parser_init(&ps, 0, TALLY_PREC_NS))
			abort();
		ready = 1;
	}
	lp_parser_reset(&ps, TALLY_PREC_NS);
	const char *cur = buf, *end = buf + size;
	while (lp_next(&ps, &cur, end, &line, NULL, NULL, 0) != LP_END)
		ends[n++] = (size_t)(cur - buf);

	/* The same records, one by one. */
	size_t pos = 0;
	for (size_t k = 0; k < n; k++) {
		size_t e = frame_record_end(buf + pos, size - pos);
		size_t next = e == size - pos ? size : pos + e + 1;
		CHECK(next == ends[k]);
		pos = next;
	}
	CHECK(pos == size);

	/* Cuts of prefixes are record ends. */
	for (size_t cut = 0; cut <= size; cut += 1 + cut / 8) {
		size_t c = frame_cut(buf, cut);
		CHECK(c <= cut);
		if (c) {
			CHECK(buf[c - 1] == '\n');
			int found = 0;
			for (size_t k = 0; k < n && !found; k++)
				found = ends[k] == c;
			CHECK(found);
		}
	}

	/* The first command record. */
	size_t cmd = frame_find_cmd(buf, size), want = size;
	for (size_t k = 0, start = 0; k < n; start = ends[k++])
		if (ends[k] - start >= 2 && buf[start] == '#' && buf[start + 1] == '!') {
			want = start;
			break;
		}
	CHECK(cmd == want);
	free(buf);
	free(ends);
	return 0;
}
