/*
 * tallyd.c — the tally server's main: settings, signals, start, stop.
 *
 * Signals are blocked in every thread and taken here with sigtimedwait, so
 * no handler ever runs inside the engine or a ring: the first SIGTERM or
 * SIGINT starts the graceful stop (no new connections, buffered input
 * finished, a last sync), a second one hurries it (connections closed at
 * once; the last sync still runs, so nothing accepted is lost). SIGHUP
 * rereads the HTTPS certificate and key: new handshakes use them, open
 * connections keep theirs.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "conf.h"
#include "server.h"
#include "tls.h"

int main(int argc, char **argv)
{
	srv_conf conf;
	conf_init(&conf);
	int rc = conf_parse_args(&conf, argc, argv);
	if (rc) {
		conf_free(&conf);
		return rc > 0 ? 0 : 2;
	}
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGPIPE);
	sigaddset(&set, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &set, NULL);

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
			if (sig == SIGHUP)
				tls_srv_reload(&s);
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
