/*
 * fuzz_batch.c — libFuzzer target for the WAL payload decoder.
 *
 * A WAL record's checksum guards its payload, but the decoder must still be
 * safe on any bytes (a checksum collision, a bug upstream): stage_batch_decode
 * returns OK or TALLY_ECORRUPT and never reads out of bounds. A payload that
 * decodes must encode and decode again to the same rows.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "batch.h"
#include "mem.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	catalog cat;
	if (catalog_init(&cat, NULL))
		abort();
	stage_batch b;
	stage_batch_init(&b);
	int rc = stage_batch_decode(&b, &cat, (const char *)data, size);
	if (rc == 0) {
		char *enc = NULL;
		size_t cap = 0, len = 0;
		if (stage_batch_encode(&b, &enc, &cap, &len))
			abort();
		stage_batch again;
		stage_batch_init(&again);
		if (stage_batch_decode(&again, &cat, enc, len) != 0 || again.rows != b.rows)
			abort();
		char *enc2 = NULL;
		size_t cap2 = 0, len2 = 0;
		if (stage_batch_encode(&again, &enc2, &cap2, &len2) || len2 != len ||
		    memcmp(enc, enc2, len))
			abort();
		mem_free(enc);
		mem_free(enc2);
		stage_batch_free(&again);
	} else if (rc != TALLY_ECORRUPT && rc != TALLY_ETYPE && rc != TALLY_EINVAL &&
		   rc != TALLY_ELIMIT && rc != -12 /* ENOMEM */) {
		abort();
	}
	stage_batch_free(&b);
	catalog_free(&cat);
	return 0;
}
