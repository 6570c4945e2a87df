/*
 * tally_base.h — the error space and the few value types every layer of
 * tally shares: storage/ includes this and nothing of engine/, and the
 * public tally.h includes it, so an error code or a column type means the
 * same in a part file, a WAL record and a caller's program.
 *
 * Installed beside tally.h; a program includes tally.h, never this.
 */
#ifndef TALLY_BASE_H
#define TALLY_BASE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- errors */

/* tally's own codes sit far below any errno, LMDB-style. */
#define TALLY_OK        0
#define TALLY_ERR_BASE  (-30800)
#define TALLY_EINVAL    (TALLY_ERR_BASE - 0)  /* bad argument or option */
#define TALLY_ESYNTAX   (TALLY_ERR_BASE - 1)  /* malformed line protocol */
#define TALLY_ETYPE     (TALLY_ERR_BASE - 2)  /* field changes type */
#define TALLY_ELIMIT    (TALLY_ERR_BASE - 3)  /* a size or count limit */
#define TALLY_ECORRUPT  (TALLY_ERR_BASE - 4)  /* checksum or format error on disk */
#define TALLY_ENOTFOUND (TALLY_ERR_BASE - 5)  /* no such table, field or level */
#define TALLY_EFULL     (TALLY_ERR_BASE - 6)  /* memory bound reached: back off */
#define TALLY_EFAILED   (TALLY_ERR_BASE - 7)  /* handle failed earlier; reopen */
#define TALLY_ETRUNC    (TALLY_ERR_BASE - 8)  /* result did not fit the buffer */
#define TALLY_ELOCKED   (TALLY_ERR_BASE - 9)  /* directory in use by another process */
#define TALLY_EVERSION  (TALLY_ERR_BASE - 10) /* file of an unknown format version */
#define TALLY_EREMOTE   (TALLY_ERR_BASE - 11) /* object storage failed or unreachable */
#define TALLY_ESTALE    (TALLY_ERR_BASE - 12) /* labelled batch below its source's window */
#define TALLY_EEXPIRED  (TALLY_ERR_BASE - 13) /* range reaches data retention dropped */
#define TALLY_ERR_LAST  TALLY_EEXPIRED

/* ---------------------------------------------------------------- types */

/* Most rollup levels a database (and so a part file) may have. */
#define TALLY_LEVELS_MAX 8

/* A column's type; stored as one byte in WAL records and part files, so
 * the values never change. */
enum tally_type {
	TALLY_T_NONE = 0,
	TALLY_T_F64 = 1,
	TALLY_T_I64 = 2,
	TALLY_T_U64 = 3,
	TALLY_T_BOOL = 4,
	TALLY_T_STR = 5, /* string field */
	TALLY_T_TAG = 6, /* tag (string) */
};

enum tally_log_level { TALLY_LOG_ERROR = 0, TALLY_LOG_WARN = 1, TALLY_LOG_INFO = 2 };

/* A log sink: called from any thread with one line, no newline. */
typedef void tally_log_fn(void *ctx, int level, const char *msg);

#ifdef __cplusplus
}
#endif
#endif /* TALLY_BASE_H */
