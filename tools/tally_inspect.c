/*
 * tally_inspect.c — the standalone `tally-inspect DIR` (also reachable as
 * `tally inspect DIR`).
 */
#include "inspect.h"

int main(int argc, char **argv)
{
	return inspect_main(argc, argv);
}
