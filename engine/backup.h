/*
 * backup.h — backups of a running store, restore and verification
 * (internal; tally_db_backup in tally.h is the public face).
 *
 * A backup destination (a directory or s3://bucket/prefix) holds
 * content-addressed objects, objects/<xxh3>-<bytes>, shared by all its
 * backups, and one catalog per backup, backup-<seq>.catalog, written
 * last: a backup exists once its catalog does. Catalog format:
 * docs/formats.md, "Backup catalog"; procedure: docs/operations.md.
 */
#ifndef TALLY_BACKUP_H
#define TALLY_BACKUP_H

#include <stdint.h>
#include <stdio.h>

#include "tally.h"

/*
 * Rebuilds a data directory dir (absent or empty) from the newest backup
 * in src, or from backup number seq when seq is not 0. Every object is
 * checked against the catalog's xxh3 as it is written; the directory
 * appears under its name only when complete (built as dir.partial, then
 * renamed). s3 reaches an s3:// src (NULL: unsigned requests to AWS).
 * out may be NULL.
 */
int backup_restore(const char *src, const tally_s3 *s3, uint64_t seq, const char *dir,
		   tally_backup_result *out);

/*
 * Checks a data directory or a backup destination: every part's header,
 * index, footer and blocks against their checksums, the manifest's
 * references (every part it names exists), and for a backup the catalog's
 * checksum and every object's size and xxh3 (in every catalog). Each
 * problem is one line on out naming the file and, for a part, the block.
 * Returns 0 when everything checks, TALLY_ECORRUPT when something did not
 * (*problems counts them; may be NULL), another code when the check
 * itself could not run.
 */
int backup_verify(const char *path, const tally_s3 *s3, FILE *out, uint64_t *problems);

/* What a prune did. */
typedef struct backup_prune_result {
	uint64_t catalogs_deleted, catalogs_kept;
	uint64_t oldest_kept, newest_kept; /* backup numbers */
	uint64_t objects_deleted, bytes_deleted;
	uint64_t objects_kept;   /* named by a catalog left */
	uint64_t leases_deleted; /* of backups or prunes whose holders are gone */
	/* a running backup's lease, when it kept the prune from deleting
	 * objects (some or all; the next prune deletes them); else empty */
	char held_by[80];
} backup_prune_result;

/*
 * Keeps the newest keep (at least 1) backups of dest and deletes the
 * older ones: their catalogs first, oldest first, then every object no
 * catalog left names. Safe against a kill at any moment (the kept
 * backups stay whole) and against a backup of dest running meanwhile:
 * while one holds its lease, no object is deleted (the leases: backup.c,
 * docs/operations.md "Pruning old backups"). out may be NULL.
 */
int backup_prune(const char *dest, const tally_s3 *s3, uint64_t keep, backup_prune_result *out);

#endif
