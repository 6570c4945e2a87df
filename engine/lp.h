/*
 * lp.h — InfluxDB line protocol parser (internal).
 *
 * Parses one line at a time from a caller's buffer, in place: names and
 * values point into the input when they hold no escapes, and into the
 * parser's scratch buffer when they had to be unescaped. Nothing is
 * allocated per line. A bad line yields a reason and the parser resumes at
 * the next line, so good lines around a bad one are kept.
 *
 * Syntax (https://docs.influxdata.com/influxdb/v1/write_protocols/line_protocol_reference/):
 *
 *   measurement[,tagk=tagv...] fieldk=fieldv[,fieldk=fieldv...] [timestamp]
 *
 *   measurement   escapes "\," and "\ "
 *   tag keys, tag values, field keys   escape "\,", "\=" and "\ "
 *   a backslash before any other character is literal; a backslash at the
 *   end of a line is an error ("bad escape at end of line")
 *   field values  float 1, -1.5, 1e10, .5, 1. (no NaN/Inf, no leading '+')
 *                 int 12i, uint 12u, bool t T true True TRUE f F false
 *                 False FALSE, string "..." with escapes \" and \\ (any
 *                 other backslash is literal; "\<newline>" is a newline
 *                 inside the string; a raw newline ends the line, so an
 *                 unterminated string is an error for its own line only)
 *   timestamp     optional signed integer, scaled by the precision to ns
 *   lines starting with '#' (after optional whitespace) are comments;
 *   blank lines are skipped; a "\r" before "\n" is ignored.
 */
#ifndef TALLY_LP_H
#define TALLY_LP_H

#include <stddef.h>
#include <stdint.h>

#include "tally.h"

#define LP_NAME_MAX   255   /* measurement, tag key, field key: bytes */
#define LP_VALUE_MAX  65535 /* tag value, string field: bytes */
#define LP_TAGS_MAX   256   /* per line */
#define LP_FIELDS_MAX 1024  /* per line */
#define LP_SHAPE_MAX  64    /* bytes of a line's shape kept for the next */
/* Timestamps must lie in [LP_TS_MIN, LP_TS_MAX] ns (InfluxDB's range). */
#define LP_TS_MIN (-INT64_C(9223372036854775806))
#define LP_TS_MAX INT64_C(9223372036854775806)

typedef struct lp_str {
	const char *p;
	uint32_t n;
} lp_str;

typedef struct lp_tag {
	lp_str key;
	lp_str value;
} lp_tag;

typedef struct lp_field {
	lp_str key;
	enum tally_type type; /* TALLY_T_F64, _I64, _U64, _BOOL or _STR */
	union {
		double f64;
		int64_t i64;
		uint64_t u64;
		int b;
		lp_str str;
	} v;
} lp_field;

typedef struct lp_line {
	lp_str measurement;
	uint32_t n_tags;
	uint32_t n_fields;
	int has_ts;
	int64_t ts; /* ns, valid when has_ts */
	lp_tag tags[LP_TAGS_MAX];
	lp_field fields[LP_FIELDS_MAX];
} lp_line;

/*
 * Line numbers count physical lines: every '\n'-terminated line and a final
 * unterminated one, blank lines, comments and the continuation lines of a
 * string with an escaped newline ("\<newline>") included. A record that
 * spans several physical lines is numbered by its first one, the line where
 * a user sees it start; the numbering of the records after it stays that of
 * the file. The limit max_line applies to a whole record (continuation
 * lines included, the '\n' and a "\r" before it excluded).
 */
typedef struct lp_parser {
	enum tally_precision prec;
	uint32_t max_line; /* longest line accepted, bytes */
	uint64_t line_no;  /* first physical line of the record last returned,
			    * 1-based; after LP_END, equal to lines */
	uint64_t lines;    /* physical lines consumed so far */
	char *scratch;     /* unescaped names and strings; max_line + 1 bytes */
	/* The shape of the last good line, for the next one, which is
	 * usually of the same table: its head up to the first tag value
	 * ("traffic,camera="), and its first field key with '=' ("speed=").
	 * Bytes equal to these parse to the same names, so they are compared
	 * instead of scanned. Only unescaped names are kept; 0: none. */
	uint8_t head_n, head_meas, fkey_n;
	char head[LP_SHAPE_MAX], fkey[LP_SHAPE_MAX];
} lp_parser;

/* Sets up a parser; max_line 0 means 1 MiB. Returns 0, -ENOMEM, or
 * TALLY_EINVAL for an unknown precision. lp_parser_free undoes it (also
 * after a failed init). */
int lp_parser_init(lp_parser *ps, uint32_t max_line, enum tally_precision prec);
void lp_parser_free(lp_parser *ps);
/* Restarts line numbering (each write call counts from 1). */
void lp_parser_reset(lp_parser *ps, enum tally_precision prec);

enum lp_result {
	LP_END = 0,   /* no more input */
	LP_LINE = 1,  /* *out holds a line */
	LP_SKIP = 2,  /* blank line or comment */
	LP_ERROR = 3, /* *out is garbage; *code and reason say why */
};

/*
 * Parses the line starting at *cur (cur < end; cur == end gives LP_END) and
 * advances *cur past its newline (for a bad line too). ps->line_no is the
 * number of the (first physical) line just consumed. On LP_ERROR, *code is
 * TALLY_ELIMIT for a length or count limit (line, name or value length,
 * tag/field count), else TALLY_ESYNTAX (bad values and out-of-range numbers
 * and timestamps included); reason (NUL-ended, at most reason_cap bytes,
 * always printable ASCII or valid UTF-8: quoted input is cut to ~40 chars
 * and bytes that are not printable show as \xNN) names the offending part,
 * e.g.
 *   "field 'speed': invalid number '8x.2'"
 *   "tag 'lane': empty value"
 *   "measurement: invalid UTF-8"
 *   "line longer than 1048576 bytes"
 * Checks done here: syntax, number ranges, name/value lengths, UTF-8 of
 * names, tag values and string fields, duplicate tag or field keys within a
 * line, the tag/field counts above, timestamp range after scaling, no NUL
 * byte in names and tag values (the engine keeps those as C strings; string
 * fields may hold NULs). A tag and a field of the same name are not refused
 * here. Whitespace-only lines and comments are LP_SKIP whatever their
 * length; separators between the sections are runs of spaces and tabs.
 * code and reason may be NULL. Strings in *out stay valid until the next
 * call and while the input does. One parser per thread.
 */
enum lp_result lp_next(lp_parser *ps, const char **cur, const char *end, lp_line *out, int *code,
		       char *reason, size_t reason_cap);

/* 1 when [p, p+n) is valid UTF-8 (no overlongs, no surrogates). */
int lp_utf8_valid(const char *p, size_t n);
/* Length of the valid UTF-8 sequence at s (n > 0 bytes left), 0 if none:
 * no overlongs, no surrogates, nothing above U+10FFFF. */
size_t lp_utf8_one(const unsigned char *s, size_t n);

#define LP_QUOTE_MAX 40                 /* output characters of one excerpt */
#define LP_QUOTE_BUF (LP_QUOTE_MAX + 4) /* dst bytes lp_quote needs: + "..." + NUL */
/* Writes into dst an excerpt of src[0, n) for an error's reason (the line
 * parser's and the JSON event decoder's): printable ASCII and valid UTF-8
 * as they are, control bytes, C1 controls and bytes of invalid sequences as
 * \xNN, cut with "..." at LP_QUOTE_MAX output characters. Returns dst. */
const char *lp_quote(char *dst, const char *src, size_t n);

#endif
