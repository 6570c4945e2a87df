/*
 * tally_demo.c — one synthetic day of speed-camera traffic through libtally.
 *
 * A thousand cameras report a day of vehicle speeds; a tenth of them are
 * offline for a few hours and flush their backlog after everyone else's day
 * is in. The day goes in through the binary batch API, one writer thread per
 * shard; the backlog goes in as line protocol text. The demo then asks the
 * questions tally exists for and shows that the late events landed in the
 * windows they belong to, exactly.
 *
 * The one idea: all data is generated before the clock starts (each
 * camera from its own seeded generator, so the data does not depend on the
 * number of threads), so the rates printed are the store's, not the
 * generator's.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tally.h"

#define TABLE "traffic"
#define KEY_TAG "camera"
#define FIELD "speed"
#define NS_PER_MS INT64_C(1000000)
#define LP_CHUNK (256u << 10) /* line protocol is sent in pieces of about this size */
#define TOTAL_EVENTS_MAX UINT64_C(200000000)

/* ---------------------------------------------------------------- options */

typedef struct demo_opts {
	const char *dir;
	unsigned cameras;
	unsigned events; /* per camera */
	unsigned shards;
	unsigned offline_pct;
	unsigned outage_hours;
	uint64_t seed;
} demo_opts;

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: tally-demo [OPTIONS]\n"
		"\n"
		"Ingests one synthetic day of speed-camera traffic into a local tally\n"
		"store through the embedded API, then queries it: rollups per day, hour\n"
		"and 5 minutes, an exact average over an unaligned range, and the\n"
		"fastest cameras of an hour. A share of the cameras is offline for a\n"
		"few hours and sends its backlog last, as line protocol: the output\n"
		"shows those late events landing in the windows they belong to.\n"
		"\n"
		"Options:\n"
		"  --dir DIR                data directory (default ./data/demo). Emptied\n"
		"                           first if it holds a previous tally store; any\n"
		"                           other non-empty directory is refused.\n"
		"  --cameras N              number of cameras (default 1000)\n"
		"  --events-per-camera N    events per camera over the day (default 10000)\n"
		"  --shards N               shards, one writer thread each (default: cores)\n"
		"  --offline-pct P          percentage of cameras that go offline (default 10)\n"
		"  --outage-hours H         length of each outage, 1 to 12 (default 3)\n"
		"  --seed N                 seed of the generated data (default 1)\n"
		"  -h, --help               this text\n"
		"\n"
		"Example: ./build/tools/tally-demo --events-per-camera 2000\n");
}

static int parse_uint(const char *flag, const char *s, unsigned long long lo,
		      unsigned long long hi, unsigned long long *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s || *end || *s == '-' || v < lo || v > hi) {
		fprintf(stderr, "tally-demo: %s: '%s' is not a number in [%llu, %llu]\n", flag, s,
			lo, hi);
		return -1;
	}
	*out = v;
	return 0;
}

static int parse_args(int argc, char **argv, demo_opts *o)
{
	enum { O_DIR = 1, O_CAMERAS, O_EVENTS, O_SHARDS, O_OFFLINE, O_OUTAGE, O_SEED };
	static const struct option longopts[] = {
		{"dir", required_argument, NULL, O_DIR},
		{"cameras", required_argument, NULL, O_CAMERAS},
		{"events-per-camera", required_argument, NULL, O_EVENTS},
		{"shards", required_argument, NULL, O_SHARDS},
		{"offline-pct", required_argument, NULL, O_OFFLINE},
		{"outage-hours", required_argument, NULL, O_OUTAGE},
		{"seed", required_argument, NULL, O_SEED},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	*o = (demo_opts){.dir = "./data/demo",
			 .cameras = 1000,
			 .events = 10000,
			 .shards = ncpu > 0 ? (unsigned)(ncpu < 256 ? ncpu : 256) : 1,
			 .offline_pct = 10,
			 .outage_hours = 3,
			 .seed = 1};
	int c;
	unsigned long long v;
	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (c) {
		case 'h': usage(stdout); exit(0);
		case O_DIR: o->dir = optarg; break;
		case O_CAMERAS:
			if (parse_uint("--cameras", optarg, 1, 99999, &v))
				return -1;
			o->cameras = (unsigned)v;
			break;
		case O_EVENTS:
			if (parse_uint("--events-per-camera", optarg, 1, 10000000, &v))
				return -1;
			o->events = (unsigned)v;
			break;
		case O_SHARDS:
			if (parse_uint("--shards", optarg, 1, 256, &v))
				return -1;
			o->shards = (unsigned)v;
			break;
		case O_OFFLINE:
			if (parse_uint("--offline-pct", optarg, 0, 100, &v))
				return -1;
			o->offline_pct = (unsigned)v;
			break;
		case O_OUTAGE:
			if (parse_uint("--outage-hours", optarg, 1, 12, &v))
				return -1;
			o->outage_hours = (unsigned)v;
			break;
		case O_SEED:
			if (parse_uint("--seed", optarg, 0, UINT64_MAX, &v))
				return -1;
			o->seed = v;
			break;
		default: usage(stderr); return -1;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "tally-demo: unexpected argument '%s' (see --help)\n", argv[optind]);
		return -1;
	}
	if ((uint64_t)o->cameras * o->events > TOTAL_EVENTS_MAX) {
		fprintf(stderr, "tally-demo: %u cameras x %u events is more than %" PRIu64 " events\n",
			o->cameras, o->events, TOTAL_EVENTS_MAX);
		return -1;
	}
	return 0;
}

/* ---------------------------------------------------------------- data dir */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	if (ftw->level == 0)
		return 0; /* keep the directory itself */
	if (remove(path) != 0) {
		fprintf(stderr, "tally-demo: cannot remove %s: %s\n", path, strerror(errno));
		return -1;
	}
	return 0;
}

static int is_empty_dir(const char *dir)
{
	DIR *d = opendir(dir);
	if (!d)
		return 0;
	int empty = 1;
	struct dirent *e;
	while (empty && (e = readdir(d)))
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
			empty = 0;
	closedir(d);
	return empty;
}

/* Makes dir an empty directory: creates it (and its parents), or empties
 * it when it holds a tally store that no process has open. Anything else
 * there is left alone and refused. */
static int prepare_dir(const char *dir)
{
	char path[PATH_MAX];
	if (strlen(dir) + 8 >= sizeof path) {
		fprintf(stderr, "tally-demo: --dir: path too long\n");
		return -1;
	}
	/* mkdir -p */
	snprintf(path, sizeof path, "%s", dir);
	for (char *p = path + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		if (mkdir(path, 0755) != 0 && errno != EEXIST) {
			fprintf(stderr, "tally-demo: mkdir %s: %s\n", path, strerror(errno));
			return -1;
		}
		*p = '/';
	}
	if (mkdir(dir, 0755) == 0)
		return 0;
	if (errno != EEXIST) {
		fprintf(stderr, "tally-demo: mkdir %s: %s\n", dir, strerror(errno));
		return -1;
	}
	struct stat st;
	if (lstat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
		fprintf(stderr, "tally-demo: %s exists and is not a directory\n", dir);
		return -1;
	}
	snprintf(path, sizeof path, "%s/wal", dir);
	int has_wal = lstat(path, &st) == 0 && S_ISDIR(st.st_mode);
	snprintf(path, sizeof path, "%s/LOCK", dir);
	int has_lock = lstat(path, &st) == 0 && S_ISREG(st.st_mode);
	if (!has_wal || !has_lock) {
		if (is_empty_dir(dir))
			return 0;
		fprintf(stderr,
			"tally-demo: %s is not empty and does not look like a tally store "
			"(no LOCK and wal/); refusing to touch it. Pick another --dir.\n",
			dir);
		return -1;
	}
	/* A store some process has open must not vanish under it. */
	int fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0 || flock(fd, LOCK_EX | LOCK_NB) != 0) {
		fprintf(stderr, "tally-demo: %s is in use by another process\n", dir);
		if (fd >= 0)
			close(fd);
		return -1;
	}
	int rc = nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	close(fd);
	return rc == 0 ? 0 : -1;
}
