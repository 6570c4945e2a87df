/*
 * distcode.h — the bit stream of kind 4 distribution blocks (internal).
 *
 * A window's distribution is a short ascending list of (value, count)
 * pairs whose steps are small and whose counts are mostly 1. This coder
 * writes all windows of a rollup block as one LSB-first bit stream of
 * adaptive Rice codes, made for exactly that: no general-purpose codec,
 * one pass each way. docs/formats.md ("dist", kind 4) has it bit by bit.
 */
#ifndef TALLY_DISTCODE_H
#define TALLY_DISTCODE_H

#include <stddef.h>
#include <stdint.h>

#include "codec.h"
#include "dist.h"

/* Appends to out the stream of the distributions of b[0, n) (each with
 * a.count >= 1 and 1..a.count pairs; sketches only where a.count > max,
 * max != 0), after a varint of their total pairs. 0, -ENOMEM, or
 * TALLY_EINVAL naming a window the format cannot hold. */
int distcode_encode(const dbucket *b, uint32_t n, uint32_t max, codec_buf *out);

/* Decodes what distcode_encode wrote, p[0, len) exactly, into b's states,
 * whose a.count must be set: n, sketch, max, v and c (borrowed from
 * arena: cap 0). Checks everything a merge relies on (values ascending
 * within ±DIST_IDX_MAX, or the sketch buckets of that; counts > 0 adding
 * up to a.count); else TALLY_ECORRUPT, and no state borrows anything. */
int distcode_decode(const uint8_t *p, size_t len, dbucket *b, uint32_t n, uint32_t max,
		    codec_buf *arena);

#endif
