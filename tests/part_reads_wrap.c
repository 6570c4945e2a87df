/*
 * part_reads_wrap.c — runs an existing test suite with its parts read by
 * pread (tally_options.part_reads) instead of mmap, unchanged.
 *
 * Linked with -Wl,--wrap=tally_db_open (tests/meson.build, the "-pread"
 * suites): every tally_db_open of the suite, the library's own included,
 * comes here first and opens with TALLY_PART_READS_PREAD where the caller
 * left the default. The suite's model and fixed answers then check the
 * pread path of every query kind, merge, delete, backup and tiering
 * against the same expectations as the mapped path.
 */
#include <string.h>

#include "tally.h"

int __real_tally_db_open(const char *dir, const tally_options *opt, tally_db **out);
int __wrap_tally_db_open(const char *dir, const tally_options *opt, tally_db **out);

int __wrap_tally_db_open(const char *dir, const tally_options *opt, tally_db **out)
{
	/* a size the library refuses (or a newer header's) goes through as
	 * it is, so tests of those refusals still see them */
	if (opt && (opt->size < TALLY_OPTIONS_SIZE_0_1 || opt->size > sizeof(tally_options)))
		return __real_tally_db_open(dir, opt, out);
	tally_options o;
	tally_options_init(&o);
	if (opt)
		memcpy(&o, opt, opt->size);
	o.size = sizeof o;
	if (o.part_reads == 0)
		o.part_reads = TALLY_PART_READS_PREAD;
	return __real_tally_db_open(dir, &o, out);
}
