"""tallyd_http.py -- tallyd written to over HTTP, as bench/run's system
tallyd-http-write.

The same server, settings and phases as system tallyd (peers/tallyd.py),
fed the way VictoriaMetrics and InfluxDB are fed here: the same
line-protocol file (the on-time events, then the late batch) POSTed to
InfluxDB v2's write endpoint, /api/v2/write?org=bench&bucket=traffic&
precision=ns, in line-aligned bodies of BODY_BYTES on as many keep-alive
connections as cores (Python's http.client, one request at a time per
connection). tallyd answers 204 only once a body's lines are in the WAL
and fsynced (http-durable, its default), so the ingest time is to durable
acknowledgement, as for tallyd over TCP. Queries go through the HTTP
query API (/api/v1/, JSON), so the system is HTTP end to end, like the
HTTP peers, and its answers are checked against embedded tally's.
"""
import itertools

import common
import tallyd as peer_tallyd

# VictoriaMetrics' body size here: one fsynced group commit a body.
BODY_BYTES = 4 << 20
URL = "/api/v2/write?org=bench&bucket=traffic&precision=ns"


def _feed(threads):
    def feed(paths, port, http_port):
        bodies = itertools.chain.from_iterable(common.line_chunks(p, BODY_BYTES) for p in paths)
        common.post_parallel(http_port, bodies, threads, URL, ok=(204,))
    return feed


def run(ctx, tallyd, client):
    res = peer_tallyd.run(ctx, tallyd, client, http=True, name="tallyd-http-write",
                          feed=_feed(ctx["threads"]))
    res["notes"].insert(0, "POST /api/v2/write, %d MiB bodies on %d connections" % (
        BODY_BYTES >> 20, ctx["threads"]))
    return res
