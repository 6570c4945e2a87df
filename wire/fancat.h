/*
 * fancat.h — the catalog as text (#!tables, #!keylist), so that a node
 * with `peers` can ask every node for theirs and answer their union
 * (internal to wire/; docs/protocol.md, docs/cluster.md).
 */
#ifndef TALLY_FANCAT_H
#define TALLY_FANCAT_H

#include <stddef.h>

#include "cmd.h"
#include "tally.h"

/* #!tables ("table\tkey\tcolumn\ttype" rows, one per column of every
 * table, sorted) or #!keylist ("table\tkey" rows of a table, sorted, those
 * starting with r->key when set), "END n" last, into a malloc'ed *text.
 * 0 or an engine error code (its message set). */
int cat_reply(tally_db *db, const cmd_req *r, char **text, size_t *len);

#endif
