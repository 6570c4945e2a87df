#!/usr/bin/python3
"""httpq_test.py — the HTTP query API and the cameras' route against a model.

    tests/server/httpq_test.py TALLYD TALLY [SEED]

Starts a tallyd (free ports, its own directory, stopped by PID) with a
small reply-buffer-bytes, writes random camera events over two days through
POST /write, then late events (older than each camera's newest) in a second
batch, and after each batch checks every endpoint through Python's
http.client (keep-alive, chunked decoding) against brute force over the
events sent: series, agg, aggs (by key, and ranked by mean and count),
keys (prefix, limit), scan paged by its cursor (every event exactly once,
also with equal times), the cameras' route, tables and fields; CSV by
format= and by Accept; epoch=; errors (400 naming the parameter, 404, 405);
a series of a year of 5-minute windows (about 7 MB of JSON) streamed
chunked to a client that stalls, with tallyd's RSS bounded meanwhile.
speed is kept as an exact distribution (--distributions traffic.speed:0.1,
the events' one decimal), so /api/v1/dist's quantiles, threshold counts
and histograms, over a range and per window, must equal the sorted values.
"""
import csv
import http.client
import io
import json
import math
import os
import random
import re
import socket
import sys
import time
from datetime import datetime, timezone
from fractions import Fraction

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.argv = sys.argv[:3] + ["query"] + sys.argv[3:]  # http_test reads MODE
import http_test as H  # noqa: E402  (its Server, check and step)

SEED = int(sys.argv[4]) if len(sys.argv) > 4 else random.randrange(1 << 30)
print("httpq_test: seed %d (replay: httpq_test.py TALLYD TALLY %d)" % (SEED, SEED), flush=True)
rng = random.Random(SEED)
NS = 10**9
T0 = 1748822400 * NS  # 2025-06-02T00:00:00Z
DAY = 86400 * NS
KEYS = ["KV%03d" % i for i in range(12)] + ["X%d" % i for i in range(3)]
check, step = H.check, H.step


def iso(ns):
    s = datetime.fromtimestamp(ns // NS, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    frac = ns % NS
    if frac:
        f = "%09d" % frac
        while f.endswith("000"):
            f = f[:-3]
        s += "." + f
    return s + "Z"


class Client:
    """One keep-alive connection, as a dashboard holds."""

    def __init__(self, srv):
        self.srv = srv
        self.conn = http.client.HTTPConnection("127.0.0.1", srv.http, timeout=60)

    def get(self, path, headers=None, method="GET"):
        h = {"Authorization": "Token " + H.TOKEN}
        h.update(headers or {})
        self.conn.request(method, path, headers=h)
        r = self.conn.getresponse()
        return r.status, dict((k.lower(), v) for k, v in r.getheaders()), r.read()

    def json(self, path, want=200):
        st, hd, body = self.get(path)
        check(st == want, "%s: %d, wanted %d: %s" % (path, st, want, body[:300]))
        check(hd.get("content-type", "").startswith("application/json"), "%s: %s" % (path, hd))
        return json.loads(body)


def close(a, b):
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def agg(vals):
    if not vals:
        return [0, None, None, None, 0]
    return [len(vals), sum(vals) / len(vals), min(vals), max(vals), sum(vals)]


def same_row(got, want, what):
    check(len(got) == len(want), "%s: %r != %r" % (what, got, want))
    for g, w in zip(got, want):
        if isinstance(w, float) or isinstance(g, float):
            check(close(g, w), "%s: %r != %r" % (what, got, want))
        else:
            check(g == w, "%s: %r != %r" % (what, got, want))


class Model:
    def __init__(self):
        self.ev = {}  # key -> [(t, speed, arrival)]
        self.n = 0

    def add(self, key, t, v):
        self.ev.setdefault(key, []).append((t, v, self.n))
        self.n += 1

    def values(self, key, lo, hi):
        return [v for t, v, _ in self.ev.get(key, []) if lo <= t < hi]

    def series(self, key, stepns, frm, to):
        start = frm - frm % stepns
        win = {}
        for t, v, _ in self.ev.get(key, []):
            ws = t - t % stepns
            if start <= ws < to:
                win.setdefault(ws, []).append(v)
        return [[ws] + agg(win[ws]) for ws in sorted(win)]


def make_events(model, n, late):
    """n events; late: each older than its camera's newest so far."""
    lines = []
    for _ in range(n):
        key = rng.choice(KEYS)
        if late and model.ev.get(key):
            newest = max(t for t, _, _ in model.ev[key])
            t = newest - rng.randrange(1, 20 * 3600) * NS
        else:
            t = T0 + rng.randrange(0, 2 * DAY // NS) * NS + rng.choice([0, 0, 500 * 10**6])
        if model.ev.get(key) and rng.random() < 0.05:
            t = rng.choice(model.ev[key])[0]  # an equal time: scan ties
        v = round(rng.uniform(20, 160), 1)
        model.add(key, t, v)
        lines.append("traffic,camera=%s,lane=%d speed=%r %d" % (key, rng.randrange(1, 4), v, t))
    return "\n".join(lines) + "\n"


def write(c, text):
    c.conn.request("POST", "/write?precision=ns", body=text.encode(),
                   headers={"Authorization": "Token " + H.TOKEN})
    r = c.conn.getresponse()
    body = r.read()
    check(r.status == 204, "write: %d %s" % (r.status, body))


def rand_range():
    a = T0 - 3600 * NS + rng.randrange(0, 50 * 3600) * NS + rng.choice([0, 7 * NS, 123456789])
    b = a + rng.randrange(1, 30 * 3600) * NS
    return a, b


def check_series(c, m):
    for _ in range(25):
        key = rng.choice(KEYS + ["NOPE"])
        stp = rng.choice(["5m", "15m", "1h", "1d"])
        stepns = {"5m": 300, "15m": 900, "1h": 3600, "1d": 86400}[stp] * NS
        frm, to = rand_range()
        fs = rng.choice([iso(frm), str(frm), "%dms" % (frm // 10**6) if frm % 10**6 == 0 else str(frm)])
        d = c.json("/api/v1/series?table=traffic&field=speed&key=%s&step=%s&from=%s&to=%s"
                   % (key, stp, fs, iso(to)))
        want = m.series(key, stepns, frm, to)
        check(d["step"] == stp and d["key"] == key and d["columns"] ==
              ["time", "count", "mean", "min", "max", "sum"], "series head: %r" % {k: d[k] for k in d if k != "values"})
        check(len(d["values"]) == len(want), "series %s %s: %d windows, model %d"
              % (key, stp, len(d["values"]), len(want)))
        for g, w in zip(d["values"], want):
            same_row(g, [iso(w[0])] + w[1:], "series %s %s" % (key, stp))
        # the cameras' route: the same windows, as objects
        d2 = c.json("/kvfv/%s/avg-speed?from=%s&to=%s&interval=%s" % (key, iso(frm), iso(to), stp))
        check(d2["id"] == key and d2["interval"] == stp, "camera head %r" % d2.keys())
        got = [[x["start"], x["count"], x["avg"], x["min"], x["max"]] for x in d2["windows"]]
        same_row([len(got)], [len(want)], "camera windows")
        for g, w in zip(got, want):
            same_row(g, [iso(w[0])] + w[1:5], "camera %s %s" % (key, stp))
        # epoch=ms: integer times
        d3 = c.json("/api/v1/series?table=traffic&field=speed&key=%s&step=%s&from=%s&to=%s&epoch=ms"
                    % (key, stp, frm, to))
        check([r[0] for r in d3["values"]] == [w[0] // 10**6 for w in want], "epoch=ms times")


def check_aggs(c, m):
    for _ in range(15):
        frm, to = rand_range()
        key = rng.choice(KEYS)
        d = c.json("/api/v1/agg?table=traffic&field=speed&key=%s&from=%d&to=%d" % (key, frm, to))
        w = agg(m.values(key, frm, to))
        same_row([d["count"], d["mean"], d["min"], d["max"], d["sum"]], w, "agg %s" % key)
        check(d["from"] == iso(frm) and d["to"] == iso(to), "agg range %r" % d)
        rows = [[k] + agg(m.values(k, frm, to)) for k in sorted(m.ev)]
        rows = [r for r in rows if r[1]]
        d = c.json("/api/v1/aggs?table=traffic&field=speed&from=%d&to=%d" % (frm, to))
        check(d["columns"] == ["key", "count", "mean", "min", "max", "sum"], "aggs columns")
        check(len(d["values"]) == len(rows) and not d["truncated"], "aggs: %d rows, model %d" % (len(d["values"]), len(rows)))
        for g, w in zip(d["values"], rows):
            same_row(g, w, "aggs")
        for sort, idx in (("mean", 2), ("count", 1)):
            order = rng.choice(["asc", "desc"])
            lim = rng.randrange(1, 8)
            d = c.json("/api/v1/aggs?table=traffic&field=speed&from=%d&to=%d&sort=%s&order=%s&limit=%d"
                       % (frm, to, sort, order, lim))
            ranked = sorted(rows, key=lambda r: r[0])
            ranked.sort(key=lambda r: r[idx], reverse=(order == "desc"))
            # ties by key ascending whatever the order
            ranked = sorted(ranked, key=lambda r: ((-r[idx] if order == "desc" else r[idx]), r[0]))
            check(d["truncated"] == (len(rows) > lim), "aggs truncated flag")
            check(len(d["values"]) == min(lim, len(rows)), "aggs sorted: %d rows" % len(d["values"]))
            for g, w in zip(d["values"], ranked):
                same_row(g, w, "aggs sort=%s order=%s" % (sort, order))


def quantile(vals, q):
    """Nearest rank: the value at rank ceil(q * N) (at least 1) of the
    sorted values, q * N exact for the double q; None when empty."""
    if not vals:
        return None
    s = sorted(vals)
    return s[max(1, math.ceil(Fraction(q) * len(s))) - 1]


def dist_row(vals, qs, above, below, edges):
    row = [len(vals)] + [quantile(vals, q) for q in qs]
    row += [sum(1 for v in vals if v > x) for x in above]
    row += [sum(1 for v in vals if v < x) for x in below]
    row += [sum(1 for v in vals if a <= v < b) for a, b in zip(edges, edges[1:])]
    return row


def check_dist(c, m):
    qs, above, below = [0.5, 0.85, 0.05, 1.0], [100.0, 150.5], [50.0]
    edges = [0.0, 40.0, 80.5, 120.0, 200.0]
    stats = "q=0.5,0.85,0.05,1&above=100,150.5&below=50&edges=0,40,80.5,120,200"
    for _ in range(20):
        key = rng.choice(KEYS + ["NOPE"])
        frm, to = rand_range()
        base = "/api/v1/dist?table=traffic&field=speed&key=%s&from=%d&to=%d" % (key, frm, to)
        d = c.json(base + "&" + stats)
        check(d["columns"] == ["time", "count", "q=0.5", "q=0.85", "q=0.05", "q=1", "above=100",
                               "above=150.5", "below=50", "[0,40)", "[40,80.5)", "[80.5,120)",
                               "[120,200)"] and d["resolution"] == 0.1 and d["step"] is None,
              "dist head: %r" % {k: d[k] for k in d if k != "values"})
        want = dist_row(m.values(key, frm, to), qs, above, below, edges)
        check(d["values"] == [[iso(frm)] + want], "dist %s [%d, %d): %r, model %r"
              % (key, frm, to, d["values"], want))
        # per window: exact on the cut first and last windows too
        stp = rng.choice(["5m", "1h", "1d", "25m"])
        stepns = {"5m": 300, "1h": 3600, "1d": 86400, "25m": 1500}[stp] * NS
        d = c.json(base + "&step=" + stp + "&q=0.85&above=130&epoch=ms")
        rows, ws = [], frm - frm % stepns
        while ws < to:
            vals = m.values(key, max(ws, frm), min(ws + stepns, to))
            if vals:
                rows.append([ws // 10**6] + dist_row(vals, [0.85], [130.0], [], []))
            ws += stepns
        check(d["step"] == stp and d["values"] == rows, "dist %s step %s: %d rows, model %d: %r"
              % (key, stp, len(d["values"]), len(rows), d["values"][:3]))
    # nothing asked: the median and V85
    key = max(m.ev, key=lambda k: len(m.ev[k]))
    d = c.json("/api/v1/dist?table=traffic&field=speed&key=%s&from=%d&to=%d" % (key, T0, T0 + 2 * DAY))
    vals = m.values(key, T0, T0 + 2 * DAY)
    check(d["columns"] == ["time", "count", "q=0.5", "q=0.85"] and
          d["values"] == [[iso(T0), len(vals), quantile(vals, 0.5), quantile(vals, 0.85)]],
          "dist with no statistic named: %r" % d)
    st, hd, body = c.get("/api/v1/dist?table=traffic&field=speed&key=%s&from=%d&to=%d&q=0.85"
                         "&edges=0,100,300&format=csv&step=1d" % (key, T0, T0 + 2 * DAY))
    rows = list(csv.reader(io.StringIO(body.decode())))
    rows[1:] = [[r[0]] + [float(x) for x in r[1:]] for r in rows[1:]]
    # CSV rows end with their error bound (0: exact), as JSON ends with "error"
    want = [["time", "count", "q=0.85", "[0,100)", "[100,300)", "error"]]
    for day in (T0, T0 + DAY):
        v = m.values(key, day, day + DAY)
        want.append([iso(day)] + dist_row(v, [0.85], [], [], [0.0, 100.0, 300.0]) + [0.0])
    check(st == 200 and hd["content-type"].startswith("text/csv") and rows == want,
          "dist csv: %r, model %r" % (rows, want))


def check_catalog(c, m):
    d = c.json("/api/v1/tables")
    t = [x for x in d["tables"] if x["name"] == "traffic"]
    check(len(t) == 1 and t[0]["key"] == "camera" and {"name": "speed", "type": "float"} in t[0]["fields"],
          "tables: %r" % d)
    d = c.json("/api/v1/fields?table=traffic")
    check(d == {"table": "traffic", "key": "camera", "fields": [{"name": "speed", "type": "float"}],
                "tags": ["lane"]}, "fields: %r" % d)
    keys = sorted(m.ev)
    for prefix in ("", "KV", "KV00", "X", "Q"):
        for lim in (None, 1, 3, 100):
            url = "/api/v1/keys?table=traffic&prefix=%s" % prefix + ("&limit=%d" % lim if lim else "")
            d = c.json(url)
            want = [k for k in keys if k.startswith(prefix)]
            check(d["keys"] == want[:lim] if lim else d["keys"] == want, "%s: %r" % (url, d))
            check(d["truncated"] == (lim is not None and len(want) > lim), "%s truncated" % url)
    # Regression: on a kept-open connection, a request without prefix= used
    # the previous request's prefix.
    c.json("/api/v1/keys?table=traffic&prefix=X")
    d = c.json("/api/v1/keys?table=traffic")
    check(d["keys"] == keys, "keys without prefix= after one with it: %r" % d["keys"][:5])


def check_scan(c, m):
    for _ in range(8):
        key = rng.choice(KEYS)
        frm, to = rand_range()
        if rng.random() < 0.5:
            frm, to = T0 - DAY, T0 + 3 * DAY
        want = sorted((t, v) for t, v, _ in m.ev.get(key, []) if frm <= t < to)
        got, cursor, pages = [], None, 0
        lim = rng.choice([1, 2, 5, 50])
        while True:
            url = "/api/v1/scan?table=traffic&key=%s&from=%d&to=%d&limit=%d&epoch=ns" % (key, frm, to, lim)
            if cursor:
                url += "&cursor=" + cursor
            d = c.json(url)
            check(d["columns"][0] == "time" and "speed" in d["columns"], "scan columns %r" % d["columns"])
            si = d["columns"].index("speed")
            check(len(d["values"]) <= lim, "scan page longer than its limit")
            got += [(r[0], r[si]) for r in d["values"]]
            pages += 1
            cursor = d["cursor"]
            if cursor is None:
                break
            check(pages <= len(want) + 1, "scan pages never end")
        check(sorted(got) == want, "scan %s limit %d: %d events, model %d" % (key, lim, len(got), len(want)))
        check([g[0] for g in got] == sorted(g[0] for g in got), "scan out of time order")


def check_csv(c, m):
    key = max(m.ev, key=lambda k: len(m.ev[k]))
    frm, to = T0, T0 + 2 * DAY
    want = m.series(key, 3600 * NS, frm, to)
    for how in ("format", "accept"):
        path = "/api/v1/series?table=traffic&field=speed&key=%s&step=1h&from=%d&to=%d" % (key, frm, to)
        hdr = {}
        if how == "format":
            path += "&format=csv"
        else:
            hdr = {"Accept": "text/csv"}
        st, hd, body = c.get(path, hdr)
        check(st == 200 and hd["content-type"].startswith("text/csv"), "csv %s: %d %r" % (how, st, hd))
        rows = list(csv.reader(io.StringIO(body.decode())))
        check(rows[0] == ["time", "count", "mean", "min", "max", "sum"], "csv header %r" % rows[0])
        check(len(rows) - 1 == len(want), "csv rows %d, model %d" % (len(rows) - 1, len(want)))
        for g, w in zip(rows[1:], want):
            same_row([g[0], int(g[1])] + [float(x) for x in g[2:]], [iso(w[0])] + w[1:], "csv")
    st, hd, body = c.get("/api/v1/aggs?table=traffic&field=speed&from=%d&to=%d&format=csv" % (frm, to))
    rows = list(csv.reader(io.StringIO(body.decode())))
    check(st == 200 and rows[0][0] == "key" and len(rows) == 1 + len(m.ev), "aggs csv: %r" % rows[:3])


def check_errors(c):
    base = "/api/v1/series?table=traffic&field=speed&key=KV001&from=2025-06-02"
    cases = [
        ("/api/v1/series?table=nope&field=speed&key=K&from=2025-06-02", 404, "table"),
        ("/api/v1/series?table=traffic&field=nope&key=K&from=2025-06-02", 404, "field"),
        ("/api/v1/series?table=traffic&field=lane&key=K&from=2025-06-02", 400, "field"),
        ("/api/v1/series?field=speed&key=K&from=2025-06-02", 400, "table"),
        (base.replace("2025-06-02", "yesterday"), 400, "from"),
        (base + "&to=2025-06-01", 400, "to"),
        (base + "&step=7x", 400, "step"),
        (base + "&step=7s", 400, "step"),
        (base + "&format=xml", 400, "format"),
        (base + "&epoch=h", 400, "epoch"),
        ("/api/v1/agg?table=traffic&field=speed&from=2025-06-02", 400, "key"),
        ("/api/v1/keys?table=traffic&limit=0", 400, "limit"),
        ("/api/v1/keys?table=nope", 404, "table"),
        ("/api/v1/fields?table=nope", 404, "table"),
        ("/api/v1/aggs?table=traffic&field=speed&from=2025-06-02&sort=speed", 400, "sort"),
        ("/api/v1/aggs?table=traffic&field=speed&from=2025-06-02&order=up", 400, "order"),
        ("/api/v1/scan?table=traffic&key=KV001&from=2025-06-02&cursor=zz", 400, "cursor"),
        ("/api/v1/scan?table=traffic&key=KV001&from=2025-06-02&limit=-3", 400, "limit"),
        ("/api/v1/series?table=traffic&field=speed&key=%ZZ&from=2025-06-02", 400, "key"),
        ("/kvfv/KV001/avg-speed?from=2025-06-02&interval=2x", 400, "interval"),
        ("/api/v1/nope", 404, None),
        ("/api/v1/dist?table=traffic&field=speed&key=K&from=2025-06-02&q=0.5,1.5", 400, "q"),
        ("/api/v1/dist?table=traffic&field=speed&key=K&from=2025-06-02&q=", 400, "q"),
        ("/api/v1/dist?table=traffic&field=speed&key=K&from=2025-06-02&above=fast", 400, "above"),
        ("/api/v1/dist?table=traffic&field=speed&key=K&from=2025-06-02&below=1,,2", 400, "below"),
        ("/api/v1/dist?table=traffic&field=speed&key=K&from=2025-06-02&edges=50,30", 400, "edges"),
        ("/api/v1/dist?table=traffic&field=speed&key=K&from=2025-06-02&edges=50", 400, "edges"),
        ("/api/v1/dist?table=traffic&field=speed&key=K&from=2025-06-02&step=0s", 400, "step"),
        ("/api/v1/dist?table=traffic&field=speed&key=K&from=2025-06-02&to=2025-06-05&step=1s",
         400, "step"),
        ("/api/v1/dist?table=traffic&field=lane&key=K&from=2025-06-02", 400, "field"),
        ("/api/v1/dist?table=traffic&field=nope&key=K&from=2025-06-02", 404, "field"),
        ("/api/v1/dist?table=traffic&field=speed&from=2025-06-02", 400, "key"),
        ("/api/v1/dist?table=roads&field=gap&key=M1&from=2025-06-02", 400, "field"),
    ]
    write(c, "roads,road=M1 gap=3.5 %d\n" % T0)  # a field without a distribution
    for path, want, param in cases:
        st, hd, body = c.get(path)
        check(st == want, "%s: %d, wanted %d: %s" % (path, st, want, body))
        d = json.loads(body)
        check("error" in d and d.get("param") == param, "%s: %r (wanted param %r)" % (path, d, param))
    st, hd, body = c.get("/api/v1/tables", method="DELETE")
    check(st == 405 and "GET" in hd.get("allow", ""), "DELETE: %d %r" % (st, hd))
    st, hd, body = c.get("/kvfv/a/b/avg-speed?from=2025-06-02")
    check(st == 404, "a route with a '/' in its id: %d" % st)
    st, hd, body = c.get("/api/v1/dist?table=roads&field=gap&key=M1&from=2025-06-02")
    check("field 'gap' of table 'roads' is not a distribution (mark it with distributions = "
          "roads.gap:RESOLUTION)" in json.loads(body)["error"], "dist of an unmarked field: %s" % body)
    # the connection is still good after all of them
    c.json("/api/v1/tables")


def check_stream(srv):
    """A year of 5-minute windows streamed to a reader that stalls."""
    c = Client(srv)
    t1 = T0 + 400 * DAY
    n = 365 * 288
    lines = "".join("traffic,camera=LONG speed=%d %d\n" % (i % 97, t1 + i * 300 * NS) for i in range(n))
    write(c, lines)
    path = "/api/v1/series?table=traffic&field=speed&key=LONG&from=%d&to=%d" % (t1, t1 + 365 * DAY)
    # warm: the same answer once on each of a few connections, so that what
    # the engine keeps (decoded rollups, query buffers) and what each shard
    # thread allocates for its first answer (connections go to the shards
    # in turn) is in RSS before the stalled one
    c.get(path)
    warm = [Client(srv) for _ in range(4)]  # kept open: each new one goes to a shard with fewer
    for w in warm:
        w.get(path)
    rss0 = srv.rss_kib()
    s = socket.create_connection(("127.0.0.1", srv.http), timeout=60)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    s.sendall(("GET %s HTTP/1.1\r\nHost: t\r\nAuthorization: Token %s\r\n\r\n" % (path, H.TOKEN)).encode())
    got = s.recv(8192)
    check(b"Transfer-Encoding: chunked" in got, "a long series is not chunked: %r" % got[:300])
    time.sleep(1.5)  # the client stalls; tallyd must stop producing, not buffer
    rss1 = srv.rss_kib()
    check(rss1 - rss0 < 4096, "RSS grew %d KiB while a client stalled on a ~7 MB answer" % (rss1 - rss0))
    for w in warm:
        w.conn.close()
    data = bytearray(got)
    s.settimeout(60)
    while not data.endswith(b"\r\n0\r\n\r\n"):
        b = s.recv(65536)
        check(b, "the stream ended before its last chunk")
        data += b
    s.close()
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    out, i = bytearray(), 0
    while True:
        j = body.index(b"\r\n", i)
        size = int(body[i:j], 16)
        if size == 0:
            break
        out += body[j + 2:j + 2 + size]
        i = j + 2 + size + 2
    d = json.loads(bytes(out))
    check(len(d["values"]) == n, "streamed series: %d windows, wanted %d" % (len(d["values"]), n))
    check(d["values"][-1] == [iso(t1 + (n - 1) * 300 * NS), 1, (n - 1) % 97, (n - 1) % 97, (n - 1) % 97,
                              (n - 1) % 97], "last window %r" % d["values"][-1])
    rss2 = srv.rss_kib()
    step("streamed %d windows (%d bytes) chunked; RSS %d -> %d (stalled) -> %d KiB"
         % (n, len(out), rss0, rss1, rss2))
    # the same connection serves on after a streamed answer (keep-alive)
    d = c.json(path + "&step=1d")
    check(len(d["values"]) == 365, "daily windows of the long key: %d" % len(d["values"]))
    # HTTP/1.0 has no chunks: the long answer goes unframed, ended by the close
    got = H.raw(srv.http, ("GET %s HTTP/1.0\r\nAuthorization: Token %s\r\n\r\n" % (path, H.TOKEN)).encode(),
                timeout=60)
    head, _, body = got.partition(b"\r\n\r\n")
    check(head.startswith(b"HTTP/1.1 200") and b"chunked" not in head and b"Content-Length" not in head,
          "HTTP/1.0 head: %r" % head)
    check(len(json.loads(body)["values"]) == n, "HTTP/1.0 streamed series incomplete")
    # HEAD: the head alone, and the connection goes on
    st, hd, body = c.get(path, method="HEAD")
    check(st == 200 and body == b"", "HEAD of a long series: %d %r" % (st, body[:100]))
    c.json("/api/v1/tables")


def main():
    # Small receive buffers: the pool (recv-buffers x recv-buffer-bytes per
    # shard, 8 MiB at the 256 KiB default) faults in as traffic comes, and
    # its growth would hide, or fake, an answer being buffered.
    # And a small rollup cache: it keeps decoded rollup blocks in 2 MiB
    # blocks up to its own budget (256 MiB by default), growth that is
    # bounded but is not the answer's.
    srv = H.Server("--reply-buffer-bytes", "16384", "--recv-buffer-bytes", "64KiB",
                   "--rollup-cache-bytes", "2MiB", "--distributions", "traffic.speed:0.1")
    try:
        c = Client(srv)
        m = Model()
        write(c, make_events(m, 3000, late=False))
        step("3000 events written")
        for rnd in ("in order", "with late events"):
            check_catalog(c, m)
            check_series(c, m)
            check_aggs(c, m)
            check_scan(c, m)
            check_csv(c, m)
            check_dist(c, m)
            step("every endpoint equals the model (%s)" % rnd)
            if rnd == "in order":
                write(c, make_events(m, 1500, late=True))
        check_errors(c)
        step("errors name their parameter")
        st, _, body = c.get("/metrics")
        m = re.search(r'^tally_http_requests_total\{endpoint="/api/v1/\*"\} (\d+)', body.decode(), re.M)
        check(st == 200 and m and int(m.group(1)) > 100, "the query API's requests in /metrics: %s" % (
            m.group(0) if m else "none"))
        check_stream(srv)
    finally:
        srv.stop()
    print("httpq: every check passed")


if __name__ == "__main__":
    main()
