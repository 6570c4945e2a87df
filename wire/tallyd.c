/*
 * tallyd.c — the tally server's main: settings, signals, start, stop.
 *
 * Signals are blocked in every thread and taken here with sigtimedwait, so
 * no handler ever runs inside the engine or a ring: the first SIGTERM or
 * SIGINT starts the graceful stop (no new connections, buffered input
 * finished, a last sync), a second one hurries it (connections closed at
 * once; the last sync still runs, so nothing accepted is lost). SIGHUP
 * rereads the HTTPS certificate and key: new handshakes use them, open
 * connections keep theirs; and the retention rules from the config file,
 * unless --retention was given as a flag (a flag wins over the file).
 */
#include <errno.h>
#include <limits.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "conf.h"
#include "server.h"
#include "tls.h"

/* The config file named by --config / -c, and whether --retention was a
 * flag: what a SIGHUP may reread. */
static const char *config_path(int argc, char **argv, int *retention_flag)
{
	const char *path = NULL;
	*retention_flag = 0;
	for (int i = 1; i < argc; i++) {
		if ((!strcmp(argv[i], "--config") || !strcmp(argv[i], "-c")) && i + 1 < argc)
			path = argv[++i];
		else if (!strncmp(argv[i], "--retention", 11))
			*retention_flag = 1;
	}
	return path;
}

/* SIGHUP: the config file's retention rules replace the running ones
 * (none there: keep everything); a file or rule that does not check out
 * changes nothing and is logged. */
static void reload_retention(srv *s, const char *path)
{
	srv_conf fresh;
	conf_init(&fresh);
	if (conf_load_file(&fresh, path)) {
		srv_log(s, TALLY_LOG_ERROR, "SIGHUP: %s does not load (above); retention unchanged",
			path);
	} else if (tally_db_set_retention(s->db, fresh.retention)) {
		srv_log(s, TALLY_LOG_ERROR, "SIGHUP: %s: %s; retention unchanged", path,
			tally_errmsg());
	} else {
		srv_log(s, TALLY_LOG_INFO, "SIGHUP: retention from %s: %s", path,
			fresh.retention ? fresh.retention : "none (keep everything)");
	}
	conf_free(&fresh);
}

/* Before any thread starts: glibc gives each thread that meets a locked
 * arena a new one (up to 8 per core) and keeps what is freed in it for
 * that arena alone. tallyd's flush, merge and query buffers are large,
 * short-lived and freed by whichever thread runs next, so each arena holds
 * its own high-water mark and RSS climbs in steps for hours. One shared
 * arena reuses one pool: a one-hour soak's anonymous memory levels off
 * (docs/operations.md). The hot paths take their memory from the
 * memtables' blocks, not malloc, so the shared arena's lock costs no
 * ingest rate (bench/results/soak-2026-12-07.md). */
static void limit_arenas(unsigned n)
{
#ifdef M_ARENA_MAX
	if (n)
		mallopt(M_ARENA_MAX, n > INT_MAX ? INT_MAX : (int)n);
#else
	(void)n;
#endif
}

int main(int argc, char **argv)
{
	srv_conf conf;
	conf_init(&conf);
	int rc = conf_parse_args(&conf, argc, argv);
	if (rc) {
		conf_free(&conf);
		return rc > 0 ? 0 : 2;
	}
	limit_arenas(conf.malloc_arenas);
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGPIPE);
	sigaddset(&set, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &set, NULL);

	int retention_flag;
	const char *conf_path = config_path(argc, argv, &retention_flag);
	srv s;
	if (srv_open(&s, &conf)) {
		conf_free(&conf);
		return 1;
	}
	int exit_code = 0;
	if (srv_start(&s)) {
		exit_code = 1;
	} else {
		/* Wait for a signal; SIGPIPE is blocked and simply ignored. */
		for (;;) {
			int sig = sigwaitinfo(&set, NULL);
			if (sig == SIGTERM || sig == SIGINT)
				break;
			if (sig == SIGHUP) {
				tls_srv_reload(&s);
				if (conf_path && !retention_flag)
					reload_retention(&s, conf_path);
			}
		}
		srv_stop(&s);
	}
	/* Until the shard threads are done, a second signal hurries them. */
	struct timespec tick = {0, 100 * 1000 * 1000};
	while (atomic_load(&s.exited) < s.started_threads) {
		int sig = sigtimedwait(&set, NULL, &tick);
		if (sig == SIGTERM || sig == SIGINT)
			srv_stop(&s);
	}
	if (srv_wait(&s))
		exit_code = 1;
	srv_close(&s);
	conf_free(&conf);
	return exit_code;
}
