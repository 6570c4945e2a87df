/*
 * error.c — the public names of the error space: tally_strerror and
 * tally_errmsg.
 *
 * The codes and the thread-local message live below, in storage/ (err.c),
 * which every layer reports through; this file only gives them their
 * public face, so that storage/ exports nothing.
 */
#include <string.h>

#include "err.h"
#include "tally.h"

TALLY_API const char *tally_errmsg(void)
{
	return err_msg();
}

TALLY_API const char *tally_strerror(int err)
{
	switch (err) {
	case TALLY_OK: return "success";
	case TALLY_EINVAL: return "invalid argument";
	case TALLY_ESYNTAX: return "malformed line protocol";
	case TALLY_ETYPE: return "field type conflict";
	case TALLY_ELIMIT: return "limit exceeded";
	case TALLY_ECORRUPT: return "data corruption detected";
	case TALLY_ENOTFOUND: return "not found";
	case TALLY_EFULL: return "memory limit reached";
	case TALLY_EFAILED: return "handle failed earlier and must be reopened";
	case TALLY_ETRUNC: return "result truncated to the buffer";
	case TALLY_ELOCKED: return "database directory is locked by another process";
	case TALLY_EVERSION: return "unknown file format version";
	case TALLY_EREMOTE: return "object storage failed or unreachable";
	case TALLY_ESTALE: return "batch sequence too old to tell whether it was applied";
	case TALLY_EEXPIRED: return "range reaches data that retention dropped";
	default: break;
	}
	if (err < 0 && err > TALLY_ERR_BASE + 100)
		return strerror(-err);
	return "unknown error";
}
