/*
 * jsonev.h — JSON events to line protocol (internal to wire/): the decoder
 * behind POST /api/v1/events?table=T.
 *
 * A body is a JSON array of event objects, or newline-delimited objects
 * (NDJSON). A mapping (jsonev_map, parsed from a setting string, syntax in
 * docs/json-events.md) says which member is the key tag, which the
 * event time, which become fields, tags and string fields. Each accepted
 * event becomes one line-protocol record for tally_write_lp; each refused
 * one an error with its index, byte offset and reason.
 *
 * Ownership: a jsonev_map is immutable once parsed and may be shared by
 * threads. A jsonev_dec holds the reusable buffers of one thread (one per
 * shard): nothing is allocated per event once they have grown.
 */
#ifndef TALLY_JSONEV_H
#define TALLY_JSONEV_H

#include <stddef.h>
#include <stdint.h>

#define JSONEV_REASON_MAX  160
#define JSONEV_MEMBERS_MAX 64  /* mapped members of one mapping */
#define JSONEV_NAME_MAX    255 /* table, tag and field names, JSON member names in a mapping */

/* The mapping used for a table no json-map names: the camera event
 * {"kvfv_id":"KV12345","timestamp":"2025-04-05T10:15:30Z",
 *  "vehicle_speed":85.2,"plate_number":"A123BV68"} as it is, into
 * traffic,camera=KV12345 speed=85.2,plate="A123BV68" 1743848130000000000 */
#define JSONEV_DEFAULT_MAP                                                          \
	"traffic: key=kvfv_id>camera, time=timestamp, fields=vehicle_speed>speed, " \
	"strings=plate_number>plate, unknown=ignore, missing-time=reject"

/* ---------------------------------------------------------------- mappings */

typedef struct jsonev_map jsonev_map;

/* Parses spec into a new mapping in *out. On failure returns TALLY_EINVAL
 * (or -ENOMEM), *out is NULL and err (cap bytes) says what and where:
 * "json-map 'traffic': fields: 'speed>' has no name after '>'". */
int jsonev_map_parse(const char *spec, jsonev_map **out, char *err, size_t cap);
void jsonev_map_free(jsonev_map *m);
/* The table the mapping writes to; borrowed for the mapping's life. */
const char *jsonev_map_table(const jsonev_map *m);
/* The tag the mapping's key member becomes ("camera"); borrowed likewise. */
const char *jsonev_map_key_tag(const jsonev_map *m);

/* A set of mappings by table: the default one plus every json-map. */
typedef struct jsonev_maps jsonev_maps;

/* A set holding JSONEV_DEFAULT_MAP. */
int jsonev_maps_new(jsonev_maps **out);
/* Parses spec and adds it; a mapping for the same table replaces the one
 * there (so a json-map for traffic overrides the default). Errors as
 * jsonev_map_parse; the set is unchanged then. */
int jsonev_maps_add(jsonev_maps *set, const char *spec, char *err, size_t cap);
/* The mapping for table [table, table + n), or NULL. Borrowed until the
 * set is freed. */
const jsonev_map *jsonev_maps_find(const jsonev_maps *set, const char *table, size_t n);
void jsonev_maps_free(jsonev_maps *set);

/* ---------------------------------------------------------------- decoding */

typedef struct jsonev_limits {
	size_t max_body;     /* longer bodies are refused whole; 0: 64 MiB */
	unsigned max_depth;  /* nesting of arrays and objects; 0: 32 */
	unsigned max_errors; /* errors kept (all are counted); 0: 16 */
} jsonev_limits;

typedef struct jsonev_error {
	uint64_t event;  /* 0-based index of the event in the body */
	uint64_t offset; /* byte offset in the body where the problem is */
	int syntax;      /* 1: invalid JSON (not only this event's content) */
	char reason[JSONEV_REASON_MAX];
} jsonev_error;

typedef struct jsonev_result {
	/* Line protocol, one record per accepted event, ns timestamps. A
	 * string field holding a newline continues its record on the next
	 * physical line (escaped), so use jsonev_line_event for line numbers. */
	const char *lp;
	size_t lp_len;
	size_t records;
	uint64_t lines;               /* physical lines in lp */
	const uint64_t *record_event; /* event index of each record */
	const uint64_t *record_line;  /* its first physical line, 1-based */
	uint64_t events;              /* events seen = accepted + rejected */
	uint64_t accepted;            /* events turned into records */
	uint64_t rejected;            /* events refused (syntax errors included) */
	int stopped;                  /* invalid JSON in an array ended the decode */
	uint64_t stop_offset;         /* where (when stopped) */
	unsigned n_errors;            /* min(rejected, max_errors) */
	const jsonev_error *errors;   /* in body order */
} jsonev_result;

typedef struct jsonev_dec jsonev_dec;

/* lim NULL: the defaults. */
int jsonev_dec_new(const jsonev_limits *lim, jsonev_dec **out);
void jsonev_dec_free(jsonev_dec *d);

/* Decodes body[0, len) with mapping m. now_ns (wall clock) is the time of
 * events without one where the mapping allows it. Returns 0 when the body
 * was decoded (some events may be refused: see *res), TALLY_ELIMIT when
 * it is longer than max_body (nothing decoded; res->errors[0] says so), or
 * -ENOMEM. Everything in *res is borrowed from d until its next decode. */
int jsonev_decode(jsonev_dec *d, const jsonev_map *m, const char *body, size_t len, int64_t now_ns,
		  jsonev_result *res);

/* Events that name no key member take key[0, n) as their key (the
 * camera id from an MQTT topic level), until called again; key NULL: an
 * event without a key is refused, the default. key is borrowed: it must
 * live through the decodes that use it. The key is at most 64 KiB. */
void jsonev_dec_default_key(jsonev_dec *d, const char *key, size_t n);

/* The event index of the record on physical line `line` (1-based, as in
 * tally_line_error.line after tally_write_lp of res->lp whole), or
 * UINT64_MAX when no record starts or continues there. */
uint64_t jsonev_line_event(const jsonev_result *res, uint64_t line);

#endif
