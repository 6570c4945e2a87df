/*
 * test_mqtt.c — tallyd's MQTT subscriber against a real mosquitto broker,
 * with libmosquitto as the cameras' publisher (MQTT 5, QoS 1).
 *
 * - steady: cameras publish JSON events (the camera id in the topic, a
 *   label on each message, late events among them, a poison message);
 *   every camera's count, sum, min and max equal brute force.
 * - held acknowledgements: a proxy between tallyd and the broker holds
 *   tallyd's bytes back once the session is up, so no PUBACK reaches the
 *   broker; tallyd is killed -9 once it has written and synced every
 *   message. The restarted tallyd gets every message again (DUP): the
 *   labelled ones are recognised, the unlabelled ones are applied a
 *   second time and counted as such (at least once, as documented).
 * - kills: tallyd is killed -9 three times while 1,200 labelled messages
 *   are published; afterwards every message is counted exactly once.
 * - line protocol payloads, and settings refused at start.
 *
 * Skipped when mosquitto is not installed (tools/setup installs it).
 */
#include <criterion/criterion.h>
#include <math.h>
#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <pthread.h>
#include <pwd.h>
#include <stdatomic.h>

#include "srvutil.h"

#define MOSQUITTO "/usr/sbin/mosquitto"

/* ---------------------------------------------------------------- the broker */

typedef struct broker {
	pid_t pid;
	unsigned port;
	char conf[200], log[200];
} broker;

static int port_open(unsigned port)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET,
				.sin_port = htons((uint16_t)port),
				.sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	int ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
	close(fd);
	return ok;
}

static void broker_start(broker *b, const tsrv *s)
{
	if (access(MOSQUITTO, X_OK))
		cr_skip_test("%s is not installed (tools/setup installs mosquitto)", MOSQUITTO);
	for (int attempt = 0; attempt < 5; attempt++) {
		b->port = su_free_port();
		snprintf(b->conf, sizeof b->conf, "%s/mosquitto.conf", s->dir);
		snprintf(b->log, sizeof b->log, "%s/mosquitto.log", s->dir);
		FILE *f = fopen(b->conf, "w");
		cr_assert_not_null(f);
		/* max_queued_messages 0: the broker keeps every message of
		 * tallyd's session while tallyd is away (its default drops
		 * past 1,000) */
		/* user: run as ourselves. Started as root, mosquitto switches to
		 * its own user, and that change of credentials clears the
		 * parent-death signal: a failed test would leave it running. */
		const struct passwd *pw = getpwuid(getuid());
		fprintf(f,
			"listener %u 127.0.0.1\nallow_anonymous true\npersistence false\n"
			"max_queued_messages 0\nmax_inflight_messages 0\nlog_dest stderr\n"
			"log_type error\nlog_type warning\nuser %s\n",
			b->port, pw ? pw->pw_name : "root");
		fclose(f);
		pid_t pid = fork();
		cr_assert(pid >= 0);
		if (pid == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			int fd = open(b->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
			dup2(fd, 1);
			dup2(fd, 2);
			execl(MOSQUITTO, MOSQUITTO, "-c", b->conf, (char *)NULL);
			_exit(127);
		}
		b->pid = pid;
		int64_t end = su_mono_ms() + 10000;
		while (su_mono_ms() < end) {
			if (port_open(b->port))
				return;
			int st;
			if (waitpid(pid, &st, WNOHANG) == pid)
				break; /* the port was taken meanwhile: try another */
			usleep(10000);
		}
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
	cr_assert_fail("mosquitto did not start; see %s", b->log);
}

static void broker_stop(broker *b)
{
	if (b->pid > 0) {
		kill(b->pid, SIGTERM);
		waitpid(b->pid, NULL, 0);
		b->pid = 0;
	}
}

/* ---------------------------------------------------------------- the cameras */

typedef struct cams {
	struct mosquitto *m;
	_Atomic int connected;
	_Atomic uint64_t acked; /* PUBACKs from the broker */
	uint64_t sent;
} cams;

static void cams_on_connect(struct mosquitto *m, void *arg, int rc)
{
	(void)m;
	cams *c = arg;
	if (rc == 0)
		atomic_store(&c->connected, 1);
}

static void cams_on_publish(struct mosquitto *m, void *arg, int mid)
{
	(void)m;
	(void)mid;
	atomic_fetch_add(&((cams *)arg)->acked, 1);
}

static void cams_open(cams *c, const broker *b)
{
	mosquitto_lib_init();
	c->m = mosquitto_new(NULL, true, c);
	cr_assert_not_null(c->m);
	mosquitto_int_option(c->m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
	mosquitto_connect_callback_set(c->m, cams_on_connect);
	mosquitto_publish_callback_set(c->m, cams_on_publish);
	cr_assert_eq(mosquitto_connect(c->m, "127.0.0.1", (int)b->port, 30), MOSQ_ERR_SUCCESS);
	cr_assert_eq(mosquitto_loop_start(c->m), MOSQ_ERR_SUCCESS);
	int64_t end = su_mono_ms() + 10000;
	while (!atomic_load(&c->connected) && su_mono_ms() < end)
		usleep(5000);
	cr_assert(atomic_load(&c->connected), "the publisher did not connect");
}

/* Publishes with QoS 1; label NULL: no Idempotency-Key. */
static void cams_pub(cams *c, const char *topic, const char *label, const char *payload)
{
	mosquitto_property *props = NULL;
	if (label)
		cr_assert_eq(mosquitto_property_add_string_pair(&props, MQTT_PROP_USER_PROPERTY,
								"Idempotency-Key", label),
			     MOSQ_ERR_SUCCESS);
	int rc;
	while ((rc = mosquitto_publish_v5(c->m, NULL, topic, (int)strlen(payload), payload, 1,
					  false, props)) == MOSQ_ERR_OVERSIZE_PACKET ||
	       rc == MOSQ_ERR_NOMEM)
		usleep(1000);
	cr_assert_eq(rc, MOSQ_ERR_SUCCESS, "publish: %s", mosquitto_strerror(rc));
	mosquitto_property_free_all(&props);
	c->sent++;
	/* Keep at most 200 unacknowledged: libmosquitto queues the rest in
	 * memory, and the broker would see them late. */
	while (c->sent - atomic_load(&c->acked) > 200)
		usleep(1000);
}

static void cams_close(cams *c)
{
	int64_t end = su_mono_ms() + 30000;
	while (atomic_load(&c->acked) < c->sent && su_mono_ms() < end)
		usleep(5000);
	cr_assert_eq(atomic_load(&c->acked), c->sent, "the broker did not take every message");
	mosquitto_disconnect(c->m);
	mosquitto_loop_stop(c->m, false);
	mosquitto_destroy(c->m);
}

/* ---------------------------------------------------------------- brute force */

#define NCAM 4

typedef struct model {
	uint64_t count[NCAM];
	double sum[NCAM], min[NCAM], max[NCAM];
} model;

static void model_add(model *m, int cam, double v)
{
	if (!m->count[cam] || v < m->min[cam])
		m->min[cam] = v;
	if (!m->count[cam] || v > m->max[cam])
		m->max[cam] = v;
	m->count[cam]++;
	m->sum[cam] += v;
}

static void rfc3339(char out[32], int64_t secs)
{
	time_t t = (time_t)secs;
	struct tm tm;
	gmtime_r(&t, &tm);
	strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* Message i of camera cam: two events a minute apart, every seventh
 * message late by three hours. Speeds at 0.1 km/h. */
static void message(char *buf, size_t cap, int cam, unsigned i, model *m)
{
	int64_t base = INT64_C(1735689600) + (int64_t)i * 120 - (i % 7 == 3 ? 3 * 3600 : 0);
	double v1 = (double)(400 + (i * 37 + (unsigned)cam * 11) % 900) / 10;
	double v2 = (double)(300 + (i * 53 + (unsigned)cam * 7) % 1100) / 10;
	char t1[32], t2[32];
	rfc3339(t1, base);
	rfc3339(t2, base + 60);
	snprintf(buf, cap,
		 "[{\"timestamp\":\"%s\",\"vehicle_speed\":%.1f},"
		 "{\"timestamp\":\"%s\",\"vehicle_speed\":%.1f}]",
		 t1, v1, t2, v2);
	if (m) {
		model_add(m, cam, v1);
		model_add(m, cam, v2);
	}
}

/* The table of every camera in tallyd equals the model (count exactly;
 * sums of decimals to 1e-9 relative). */
static void check(tcli *c, const model *m, uint64_t factor_unlabelled[NCAM])
{
	ttable t;
	tcli_query(c, &t, "#!keys traffic speed 2024-12-01T00:00:00Z 2025-02-01T00:00:00Z");
	cr_assert_null(t.err, "%s", t.err);
	size_t want = 0;
	for (int k = 0; k < NCAM; k++)
		want += m->count[k] > 0;
	cr_assert_eq(t.n - 1, want, "cameras: %zu, want %zu", t.n - 1, want);
	for (size_t r = 1; r < t.n; r++) {
		int cam = atoi(tcell(t.rows[r], 0) + 3); /* "cam3" */
		cr_assert(cam >= 0 && cam < NCAM);
		uint64_t mult = factor_unlabelled ? factor_unlabelled[cam] : 1;
		uint64_t n = strtoull(tcell(t.rows[r], 1), NULL, 10);
		double sum = strtod(tcell(t.rows[r], 2), NULL);
		double mn = strtod(tcell(t.rows[r], 3), NULL),
		       mx = strtod(tcell(t.rows[r], 4), NULL);
		cr_assert_eq(n, m->count[cam] * mult, "cam%d: count %" PRIu64 ", want %" PRIu64,
			     cam, n, m->count[cam] * mult);
		cr_assert(fabs(sum - m->sum[cam] * (double)mult) <= 1e-9 * fabs(sum) + 1e-9,
			  "cam%d: sum %.17g, want %.17g", cam, sum, m->sum[cam] * (double)mult);
		cr_assert(mn == m->min[cam] && mx == m->max[cam], "cam%d: min/max %g %g", cam, mn,
			  mx);
	}
	ttable_free(&t);
}

static void wait_stat(tcli *c, const char *name, uint64_t want)
{
	int64_t end = su_mono_ms() + 60000;
	uint64_t v = 0;
	while ((v = tstat(c, name)) < want && su_mono_ms() < end)
		usleep(20000);
	cr_assert(v >= want, "%s is %" PRIu64 ", want %" PRIu64 " within 60 s", name, v, want);
}

static void start_tallyd(tsrv *s, unsigned broker_port, const char *extra)
{
	char b[64];
	snprintf(b, sizeof b, "127.0.0.1:%u", broker_port);
	const char *args[] = {"--mqtt-broker",
			      b,
			      "--mqtt-key-level",
			      "2",
			      "--log-level",
			      "info",
			      extra ? "--mqtt-format" : NULL,
			      extra,
			      NULL};
	tsrv_spawn(s, args, 1);
}

/* ---------------------------------------------------------------- tests */

Test(mqtt, steady_stream_equals_brute_force)
{
	tsrv s;
	tdir_make(&s);
	broker b;
	broker_start(&b, &s);
	start_tallyd(&s, b.port, NULL);
	tcli *c = tcli_open(s.port);
	wait_stat(c, "mqtt_connected", 1);
	cams cm = {0};
	cams_open(&cm, &b);
	model m = {0};
	char topic[64], label[64], payload[256];
	unsigned n = 0;
	for (unsigned i = 0; i < 150; i++)
		for (int cam = 0; cam < NCAM; cam++) {
			snprintf(topic, sizeof topic, "cameras/cam%d/events", cam);
			snprintf(label, sizeof label, "cam%d/%u", cam, i + 1);
			message(payload, sizeof payload, cam, i, &m);
			cams_pub(&cm, topic, label, payload);
			n++;
		}
	/* a poison message and a half-bad one: logged, counted, never a
	 * stall; the good event of the second is kept */
	cams_pub(&cm, "cameras/cam1/events", "cam1/9999", "{\"timestamp\": oops");
	cams_pub(&cm, "cameras/cam2/events", NULL,
		 "[{\"timestamp\":\"2025-01-01T00:00:00Z\",\"vehicle_speed\":\"fast\"},"
		 "{\"timestamp\":\"2025-01-01T00:00:01Z\",\"vehicle_speed\":55.5}]");
	model_add(&m, 2, 55.5);
	/* a retry of a message already sent: the same label */
	message(payload, sizeof payload, 0, 0, NULL);
	cams_pub(&cm, "cameras/cam0/events", "cam0/1", payload);
	cams_close(&cm);
	wait_stat(c, "mqtt_messages", n + 3);
	wait_stat(c, "mqtt_acks", n + 3);
	check(c, &m, NULL);
	cr_assert_eq(tstat(c, "mqtt_duplicates"), 1);
	cr_assert_eq(tstat(c, "mqtt_events_rejected"), 2);
	cr_assert_eq(tstat(c, "mqtt_bad_messages"), 1);
	char *log = tsrv_log(&s);
	cr_assert(strstr(log, "topic 'cameras/cam1/events' message"), "%s", log);
	free(log);
	tcli_close(c);
	cr_assert_eq(tsrv_wait(&s, SIGTERM), 0);
	broker_stop(&b);
	tdir_remove(&s);
}

/* A proxy from tallyd to the broker that, once told, holds back every
 * byte tallyd sends (its PUBACKs among them) and never forwards them. */
typedef struct holdproxy {
	int lfd;
	unsigned port, up;
	_Atomic int hold, stop;
	pthread_t thr;
} holdproxy;

static void *hold_main(void *arg)
{
	holdproxy *px = arg;
	while (!atomic_load(&px->stop)) {
		struct pollfd lp = {.fd = px->lfd, .events = POLLIN};
		if (poll(&lp, 1, 100) <= 0)
			continue;
		int a = accept(px->lfd, NULL, NULL);
		if (a < 0)
			continue;
		int u = socket(AF_INET, SOCK_STREAM, 0);
		struct sockaddr_in ad = {.sin_family = AF_INET,
					 .sin_port = htons((uint16_t)px->up),
					 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
		if (connect(u, (struct sockaddr *)&ad, sizeof ad)) {
			close(a);
			close(u);
			continue;
		}
		char buf[65536];
		for (;;) {
			struct pollfd p[2] = {{.fd = a, .events = POLLIN},
					      {.fd = u, .events = POLLIN}};
			if (poll(p, 2, 100) < 0 || atomic_load(&px->stop))
				break;
			if (p[0].revents) {
				ssize_t k = read(a, buf, sizeof buf);
				if (k <= 0)
					break;
				if (!atomic_load(&px->hold) && write(u, buf, (size_t)k) != k)
					break;
			}
			if (p[1].revents) {
				ssize_t k = read(u, buf, sizeof buf);
				if (k <= 0 || write(a, buf, (size_t)k) != k)
					break;
			}
		}
		close(a);
		close(u);
	}
	return NULL;
}

static void hold_start(holdproxy *px, unsigned up)
{
	px->up = up;
	px->lfd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	cr_assert(bind(px->lfd, (struct sockaddr *)&a, sizeof a) == 0);
	cr_assert(listen(px->lfd, 8) == 0);
	socklen_t n = sizeof a;
	getsockname(px->lfd, (struct sockaddr *)&a, &n);
	px->port = ntohs(a.sin_port);
	cr_assert(pthread_create(&px->thr, NULL, hold_main, px) == 0);
}

static void hold_stop(holdproxy *px)
{
	atomic_store(&px->stop, 1);
	pthread_join(px->thr, NULL);
	close(px->lfd);
}

Test(mqtt, unacknowledged_messages_come_again_and_labels_count_them_once)
{
	tsrv s;
	tdir_make(&s);
	broker b;
	broker_start(&b, &s);
	holdproxy px = {0};
	hold_start(&px, b.port);
	start_tallyd(&s, px.port, NULL);
	tcli *c = tcli_open(s.port);
	wait_stat(c, "mqtt_connected", 1);
	usleep(300000); /* the SUBSCRIBE's way to the broker, before holding */
	atomic_store(&px.hold, 1);
	cams cm = {0};
	cams_open(&cm, &b);
	model m = {0};
	char topic[64], label[64], payload[256];
	uint64_t unl[NCAM] = {0};
	unsigned n = 0;
	for (unsigned i = 0; i < 60; i++)
		for (int cam = 0; cam < NCAM; cam++) {
			snprintf(topic, sizeof topic, "cameras/cam%d/events", cam);
			snprintf(label, sizeof label, "cam%d/%u", cam, i + 1);
			message(payload, sizeof payload, cam, i, &m);
			/* camera 3 sends no labels */
			cams_pub(&cm, topic, cam == 3 ? NULL : label, payload);
			n++;
		}
	cams_close(&cm);
	/* Written and synced: tallyd "sent" every PUBACK, the proxy kept them. */
	wait_stat(c, "mqtt_acks", n);
	check(c, &m, NULL);
	tcli_close(c);
	cr_assert_eq(tsrv_wait(&s, SIGKILL), 128 + SIGKILL);
	atomic_store(&px.hold, 0);
	start_tallyd(&s, px.port, NULL);
	c = tcli_open(s.port);
	/* The broker sends all n again, with DUP. */
	wait_stat(c, "mqtt_acks", n);
	cr_assert_eq(tstat(c, "mqtt_duplicates"), n - 60);
	cr_assert_eq(tstat(c, "mqtt_unlabelled_redeliveries"), 60);
	unl[0] = unl[1] = unl[2] = 1;
	unl[3] = 2; /* at least once: the unlabelled camera's messages twice */
	check(c, &m, unl);
	tcli_close(c);
	cr_assert_eq(tsrv_wait(&s, SIGTERM), 0);
	hold_stop(&px);
	broker_stop(&b);
	tdir_remove(&s);
}

Test(mqtt, kill_9_while_publishing_counts_every_message_once, .timeout = 240)
{
	tsrv s;
	tdir_make(&s);
	broker b;
	broker_start(&b, &s);
	start_tallyd(&s, b.port, NULL);
	tcli *c = tcli_open(s.port);
	wait_stat(c, "mqtt_connected", 1);
	tcli_close(c);
	cams cm = {0};
	cams_open(&cm, &b);
	model m = {0};
	char topic[64], label[64], payload[256];
	unsigned n = 0;
	srand(7);
	for (unsigned i = 0; i < 300; i++) {
		for (int cam = 0; cam < NCAM; cam++) {
			snprintf(topic, sizeof topic, "cameras/cam%d/events", cam);
			snprintf(label, sizeof label, "cam%d/%u", cam, i + 1);
			message(payload, sizeof payload, cam, i, &m);
			cams_pub(&cm, topic, label, payload);
			n++;
		}
		if (i % 100 == 50) { /* three times: kill -9 and restart */
			usleep((useconds_t)(rand() % 50000));
			cr_assert_eq(tsrv_wait(&s, SIGKILL), 128 + SIGKILL);
			start_tallyd(&s, b.port, NULL);
		}
	}
	cams_close(&cm);
	c = tcli_open(s.port);
	/* Every message is in: each camera's count reaches the model. */
	int64_t end = su_mono_ms() + 60000;
	for (;;) {
		ttable t;
		tcli_query(c, &t,
			   "#!agg traffic speed cam3 2024-12-01T00:00:00Z 2025-02-01T00:00:00Z");
		uint64_t got = t.err ? 0 : strtoull(tcell(t.rows[1], 0), NULL, 10);
		ttable_free(&t);
		if (got >= m.count[3] || su_mono_ms() > end)
			break;
		usleep(50000);
	}
	tcli_sendf(c, "#!sync\n");
	free(tcli_expect(c, "OK"));
	usleep(500000); /* redeliveries still on their way would show as extra counts */
	check(c, &m, NULL);
	tcli_close(c);
	cr_assert_eq(tsrv_wait(&s, SIGTERM), 0);
	broker_stop(&b);
	tdir_remove(&s);
}

Test(mqtt, line_protocol_payloads)
{
	tsrv s;
	tdir_make(&s);
	broker b;
	broker_start(&b, &s);
	start_tallyd(&s, b.port, "lp");
	tcli *c = tcli_open(s.port);
	wait_stat(c, "mqtt_connected", 1);
	cams cm = {0};
	cams_open(&cm, &b);
	cams_pub(&cm, "cameras/x/events", "gw1/1",
		 "traffic,camera=cam0 speed=50.5 1735689600000000000\n"
		 "traffic,camera=cam1 speed=60.5 1735689600000000000\n");
	cams_pub(&cm, "cameras/x/events", "gw1/1",
		 "traffic,camera=cam0 speed=50.5 1735689600000000000\n");
	cams_pub(&cm, "cameras/x/events", NULL, "traffic,camera=cam0 speed=oops 1\n");
	cams_close(&cm);
	wait_stat(c, "mqtt_messages", 3);
	model m = {0};
	model_add(&m, 0, 50.5);
	model_add(&m, 1, 60.5);
	check(c, &m, NULL);
	cr_assert_eq(tstat(c, "mqtt_duplicates"), 1);
	cr_assert_eq(tstat(c, "mqtt_events_rejected"), 1);
	tcli_close(c);
	cr_assert_eq(tsrv_wait(&s, SIGTERM), 0);
	broker_stop(&b);
	tdir_remove(&s);
}

Test(mqtt, bad_settings_stop_tallyd_at_start)
{
	static const char *const bad[][2] = {
		{"--mqtt-broker", "127.0.0.1:0"},
		{"--mqtt-topics", "cameras/+x/events"},
		{"--mqtt-format", "xml"},
		{"--mqtt-table", "nosuch"},
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		tsrv s;
		tdir_make(&s);
		const char *args[] = {
			"--port",         "0",       "--http-port", "off", "--mqtt-broker",
			"127.0.0.1:1883", bad[i][0], bad[i][1],     NULL};
		tsrv_spawn(&s, args, 0);
		int rc = tsrv_wait(&s, 0);
		cr_assert_neq(rc, 0, "%s %s was accepted", bad[i][0], bad[i][1]);
		char *log = tsrv_log(&s);
		cr_assert(strstr(log, bad[i][0] + 2), "%s %s: %s", bad[i][0], bad[i][1], log);
		free(log);
		tdir_remove(&s);
	}
}
