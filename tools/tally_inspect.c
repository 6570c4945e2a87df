/*
 * tally_inspect.c — the standalone `tally-inspect DIR` (also reachable as
 * `tally inspect DIR`).
 */
#include <stdio.h>
#include <string.h>

#include "inspect.h"

int main(int argc, char **argv)
{
	if (argc == 2 && !strcmp(argv[1], "--version")) {
		printf("tally-inspect %s\n", TALLY_VERSION_STRING);
		return 0;
	}
	return inspect_main(argc, argv);
}
