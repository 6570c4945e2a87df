/*
 * numfmt.h — how tallyd writes numbers and times (internal): RFC 3339
 * times, durations, integers, shortest round-tripping doubles and the
 * cells of aggregate rows. Split from cmd.h, which includes it, so the
 * command parser and the formatter can be read apart; the names keep
 * their cmd_ prefix.
 */
#ifndef TALLY_NUMFMT_H
#define TALLY_NUMFMT_H

#include <stddef.h>
#include <stdint.h>

#include "tally.h"

/* RFC 3339 UTC with as many fraction digits as needed (0, 3, 6 or 9).
 * buf needs 40 bytes; returns the length. */
size_t cmd_format_time(int64_t ns, char *buf);

/* A duration in the largest unit that divides it ("5m", "90s"). buf needs
 * 32 bytes. */
size_t cmd_format_duration(int64_t ns, char *buf);

/* v in decimal, NUL-terminated; buf needs 21 bytes. Returns the length. */
size_t cmd_format_u64(uint64_t v, char *buf);

/* The shortest decimal that reads back as the same double (the nearest
 * such when there are several), NUL-terminated. buf needs 32 bytes;
 * returns the length. */
size_t cmd_format_double(double v, char *buf);

/* A double cell at p: cmd_format_double's decimal, "inf" or "-inf", or
 * nothing for NaN (a missing value, or an empty aggregate's min, max,
 * avg). Returns the end; at most 31 bytes, no NUL counted. */
char *cmd_put_f64(char *p, double v);

/* The header lines of the answers whose rows are cmd_put_agg's cells
 * (docs/protocol.md): written by a node answering a client, by a node's
 * own part of a fan-out and by the fan-out's merged answer alike. */
#define CMD_HEAD_AGG    "count\tsum\tmin\tmax\tavg\n"
#define CMD_HEAD_SERIES "start\t" CMD_HEAD_AGG
#define CMD_HEAD_KEYS   "key\t" CMD_HEAD_AGG
/* The length of one of them, a literal. */
#define CMD_HEAD_LEN(h) (sizeof(h) - 1)

/* An aggregate's cells "count\tsum\tmin\tmax\tavg\n" at p (min, max and
 * avg empty when count is 0; a sum past the largest double "inf" or
 * "-inf", one that overflowed both ways "nan", never empty); at most
 * CMD_AGG_MAX bytes. Returns the end; no NUL. */
#define CMD_AGG_MAX 170
char *cmd_put_agg(char *p, const tally_agg *a);

/* A series row: the window start, a tab, then cmd_put_agg's cells; at
 * most 40 + CMD_AGG_MAX bytes. */
char *cmd_put_bucket(char *p, const tally_bucket *b);

/* The civil date (proleptic Gregorian) of day z since 1970-01-01. */
void cmd_civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d);

#endif
