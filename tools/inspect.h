/*
 * inspect.h — `tally inspect DIR`, shared by the tally client and the
 * standalone tally-inspect.
 */
#ifndef TALLY_INSPECT_H
#define TALLY_INSPECT_H

/* argv[1] is the directory. Returns the process exit code. */
int inspect_main(int argc, char **argv);

#endif
