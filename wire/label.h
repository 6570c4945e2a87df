/*
 * label.h — "SOURCE/SEQ", the label of a batch as senders write it
 * (internal to wire/): HTTP's Idempotency-Key header and MQTT's
 * Idempotency-Key user property carry it (docs/protocol.md, "Labelled
 * batches").
 */
#ifndef TALLY_LABEL_H
#define TALLY_LABEL_H

#include <stddef.h>
#include <stdint.h>

/* Parses p[0, n): the last '/' splits a source of 1 to cap - 1 bytes from
 * a decimal sequence of 1 to 20 digits that fits in 64 bits. Copies the
 * source, NUL-terminated, into src and the number into *seq. 0, or -1
 * when malformed (src and *seq are then unchanged). The engine checks the
 * source's bytes (no space, no control byte, UTF-8). */
int label_parse(const char *p, size_t n, char *src, size_t cap, uint64_t *seq);

#endif
