/*
 * frame.h — where line-protocol records end in a byte stream (internal).
 *
 * A record is one line of line protocol, a comment, a blank line or a
 * command ("#!..."). Records end at a '\n', except a "\<newline>" inside a
 * quoted string field, which continues the record on the next physical
 * line. The rules here are the structural rules of the engine's parser
 * (engine/lp.c, resync()), so the server cuts a stream exactly where the
 * parser would, and never hands it half a record.
 *
 * Every function takes a buffer that starts at a record start.
 */
#ifndef TALLY_FRAME_H
#define TALLY_FRAME_H

#include <stddef.h>

/* Offset of the '\n' that ends the record starting at buf, or len when the
 * record does not end within buf. A comment or blank line ends at its
 * first '\n'. */
size_t frame_record_end(const char *buf, size_t len);

/* Length of the longest prefix of buf that holds only whole records (each
 * with its '\n'); 0 when the first record is incomplete. Costs one memrchr
 * unless the last '\n' follows a backslash (then one structural scan). */
size_t frame_cut(const char *buf, size_t len);

/* Offset of the first record in buf[0, len) that starts with "#!" (a
 * command), or len when there is none. len must be a cut (whole records),
 * or the end of the stream. */
size_t frame_find_cmd(const char *buf, size_t len);

/* 1 when the '\n' at buf[i] ends a record for sure whatever came before
 * buf: it follows neither '\' nor "\\\r". prev is the byte before buf[0]
 * (0 when none). */
int frame_nl_certain(const char *buf, size_t i, char prev);

#endif
