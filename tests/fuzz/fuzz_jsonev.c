/*
 * fuzz_jsonev.c — libFuzzer target: JSON events to line protocol
 * (wire/jsonev.c).
 *
 * The first input byte picks one of four mappings and a nesting limit; the
 * rest is the body. For any body: no crash; the counts agree (events =
 * accepted + rejected, one record per accepted event, the first errors
 * kept in event order with offsets inside the body and printable UTF-8
 * reasons); and every record parses with the engine's own line-protocol
 * parser as one good line, of the mapping's table with its key tag first,
 * starting at the physical line the result says, which jsonev_line_event
 * maps back to the record's event.
 *
 *   tests/fuzz/build fuzz_jsonev build-fuzz/fuzz_jsonev
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../wire/cmd.c"
#include "../../wire/jsonev.c"
#include "lp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                 \
	do {                     \
		if (!(c))        \
			abort(); \
	} while (0)

static const char *const specs[4] = {
	JSONEV_DEFAULT_MAP,
	"e v,=: key=k>c=a, time=t, time-unit=ms, fields=f g>h\\i, ints=i, bools=b, tags=x>y "
	"z, strings=s, unknown=reject, missing-time=now",
	"n: key=k, time=t, time-unit=s, ints=i j, strings=s, missing-time=reject",
	"u: key=id>cam, time=t, time-unit=ns, fields=v, tags=lane, missing-time=now",
};
static const char *const key_tags[4] = {"camera", "c=a", "k", "cam"};

static jsonev_map *maps[4];
static lp_line line;

static int printable_utf8(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || !lp_utf8_valid(s, n))
		return 0;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7F)
			return 0;
	return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size == 0)
		return 0;
	if (!maps[0]) {
		char err[JSONEV_REASON_MAX];
		for (int i = 0; i < 4; i++)
			CHECK(jsonev_map_parse(specs[i], &maps[i], err, sizeof err) == 0);
	}
	unsigned mi = data[0] & 3;
	jsonev_limits lim = {.max_depth = 1 + (data[0] >> 2 & 7) * 5, .max_errors = 4};
	jsonev_dec *d;
	CHECK(jsonev_dec_new(&lim, &d) == 0);
	size_t n = size - 1;
	char *body = malloc(n ? n : 1); /* exactly the input: ASan sees any overread */
	memcpy(body, data + 1, n);
	jsonev_result res;
	CHECK(jsonev_decode(d, maps[mi], body, n, 1234567890, &res) == 0);

	CHECK(res.events == res.accepted + res.rejected);
	CHECK(res.records == res.accepted);
	CHECK(res.n_errors == (res.rejected < 4 ? res.rejected : 4));
	for (unsigned i = 0; i < res.n_errors; i++) {
		const jsonev_error *e = &res.errors[i];
		CHECK(e->offset <= n && e->event < res.events);
		CHECK(i == 0 || e->event > res.errors[i - 1].event);
		CHECK(printable_utf8(e->reason));
	}
	CHECK(!res.stopped || res.stop_offset <= n);

	lp_parser ps;
	CHECK(lp_parser_init(&ps, (uint32_t)(3 * n + 4096), TALLY_PREC_NS) == 0); /* > any record */
	const char *cur = res.lp, *end = res.lp + res.lp_len;
	const char *table = jsonev_map_table(maps[mi]);
	char reason[160];
	int code;
	for (size_t k = 0; k < res.records; k++) {
		enum lp_result r = lp_next(&ps, &cur, end, &line, &code, reason, sizeof reason);
		CHECK(r == LP_LINE);
		CHECK(ps.line_no == res.record_line[k]);
		CHECK(k == 0 || res.record_event[k] > res.record_event[k - 1]);
		CHECK(jsonev_line_event(&res, ps.line_no) == res.record_event[k]);
		CHECK(line.measurement.n == strlen(table) &&
		      !memcmp(line.measurement.p, table, line.measurement.n));
		CHECK(line.n_tags >= 1 && line.tags[0].key.n == strlen(key_tags[mi]) &&
		      !memcmp(line.tags[0].key.p, key_tags[mi], line.tags[0].key.n));
		CHECK(line.n_fields >= 1 && line.has_ts);
	}
	CHECK(lp_next(&ps, &cur, end, &line, &code, reason, sizeof reason) == LP_END);
	CHECK(ps.lines == res.lines);
	lp_parser_free(&ps);
	free(body);
	jsonev_dec_free(d);
	return 0;
}
