/*
 * httpq.h — the HTTP query API (/api/v1/tables, fields, keys, series, agg,
 * aggs, scan) and the cameras' route (/kvfv/{id}/avg-speed), internal to
 * wire/; docs/http.md describes what they answer.
 *
 * httpd.c routes a request here (httpq_route), hands over what the answer
 * needs before the request's bytes are dropped (httpq_begin), then starts
 * the answer (httpq_serve) and, while it is not complete, produces more of
 * it each time the connection's unsent replies fall below half of
 * reply-buffer-bytes (httpq_pump).
 */
#ifndef TALLY_HTTPQ_H
#define TALLY_HTTPQ_H

#include "conf.h"
#include "http.h"
#include "server.h"

typedef struct httpq httpq;

/* One per connection, made at its first query; NULL-safe free. */
int httpq_new(httpq **out);
void httpq_free(httpq *q);

/* 1 when path is the query API's (/api/v1/ but not /api/v1/events) or
 * matches the cameras' route. */
int httpq_route(const srv_conf *cf, http_str path);

/* 1 when path changes data (/api/v1/delete): POST only, never GET. */
int httpq_wants_post(http_str path);

/* Copies the request's path, query and Accept header: r's strings die
 * with the request's bytes. 0 or -ENOMEM. */
int httpq_begin(httpq *q, const http_req *r);

/* Starts the answer: queues its head and as much of its body as half of
 * reply-buffer-bytes holds. Returns the HTTP status; *more is 1 while the
 * answer goes on (chunked), to be completed by httpq_pump. keep_alive 0:
 * the answer says Connection: close (the caller closes after it).
 * Returns 0 (and *more 1) when the query asks every node (`peers`):
 * nothing is sent until they answered; httpq_status then gives the
 * status, once httpq_pump has started the answer. */
int httpq_serve(httpq *q, wconn *c, int keep_alive, int head_only, int *more);

/* Produces more of an answer that goes on; 1 once it is complete (or was
 * cut short by an error, after which the connection is closing). */
int httpq_pump(httpq *q, wconn *c);

/* The status of an answer that waited for the nodes, once; 0 otherwise. */
int httpq_status(httpq *q);

/* The defaults of the cameras' route (tallyd settings camera-route*). */
#define HTTPQ_CAMERA_ROUTE "/kvfv/{id}/avg-speed"
#define HTTPQ_CAMERA_TABLE "traffic"
#define HTTPQ_CAMERA_FIELD "speed"
#define HTTPQ_CAMERA_KEY   "camera"

#endif
