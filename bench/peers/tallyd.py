"""tallyd.py -- tally's server as bench/run's system, when built.

tallyd runs on a free 127.0.0.1 port (--port 0 --port-file) with its own
data directory, one shard per core. The on-time line protocol is cut into
as many pieces as cores and streamed by as many `tally write` clients at
once; each ends with #!sync, so the time is to durable acknowledgement.
Queries are the protocol's #! commands over one kept-open connection
(system tallyd), or the HTTP query API's GETs over one keep-alive
connection, JSON answers parsed (system tallyd-http: tally over HTTP
beside VictoriaMetrics' and InfluxDB's HTTP APIs).

tallyd flushes its memtables after FLUSH_S (its default is 60 s): embedded
tally flushes and merges explicitly after the on-time events and after
the late batch, and tallyd's late figure must likewise include the late
events' parts, written within the wait that follows. Both waits last at
least one flush interval, so the on-time events' flush and merges are not
counted as the late batch's.
"""
import json
import calendar
import os
import socket
import subprocess
import time

import common

NS_PER_MS = 1000000
FLUSH_S = 5


def _ms(rfc3339):
    """'2025-06-02T08:00:04.876Z' -> ms since the epoch."""
    s = rfc3339.rstrip("Z")
    frac = 0
    if "." in s:
        s, f = s.split(".")
        frac = int((f + "000")[:3])
    t = time.strptime(s, "%Y-%m-%dT%H:%M:%S")
    return calendar.timegm(t) * 1000 + frac


class Conn:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.f = self.s.makefile("rb")

    def cmd(self, line):
        self.s.sendall((line + "\n").encode())
        rows = []
        header = None
        while True:
            l = self.f.readline()
            if not l:
                raise RuntimeError("tallyd closed the connection after %s" % line)
            l = l.decode().rstrip("\n")
            if l.startswith("ERR"):
                raise RuntimeError("tallyd: %s -> %s" % (line, l))
            if l.startswith("END"):
                return header, rows
            if header is None:
                header = l.split("\t")
            else:
                rows.append(l.split("\t"))

    def close(self):
        self.f.close()
        self.s.close()


def _one(c, q, ans):
    k = q["kind"]
    frm, to = q["from_ms"] * NS_PER_MS, q["to_ms"] * NS_PER_MS
    if k in ("s5m", "s1h", "s1d"):
        step = {"s5m": "5m", "s1h": "1h", "s1d": "1d"}[k]
        _, rows = c.cmd("#!series traffic speed %s %s %d %d" % (q["camera"], step, frm, to))
        if ans:
            for r in rows:
                ans.row(q["qid"], _ms(r[0]), r[1], r[2], r[3], r[4])
    elif k == "agg":
        _, rows = c.cmd("#!agg traffic speed %s %d %d" % (q["camera"], frm, to))
        if ans:
            for r in rows:
                ans.row(q["qid"], "all", r[0], r[1], r[2], r[3])
    elif k == "keys":
        _, rows = c.cmd("#!keys traffic speed %d %d" % (frm, to))
        if ans:
            for r in rows:
                ans.row(q["qid"], r[0], r[1], r[2], r[3], r[4])
    else:
        hdr, rows = c.cmd("#!scan traffic %s %d %d" % (q["camera"], frm, to))
        if ans:
            col = hdr.index("speed")
            for r in rows:
                v = float(r[col])
                ans.row(q["qid"], _ms(r[0]), 1, v, v, v)


def _one_http(h, q, ans):
    """The same questions through /api/v1/ (docs/http.md), epoch=ms."""
    k = q["kind"]
    frm, to = q["from_ms"] * NS_PER_MS, q["to_ms"] * NS_PER_MS
    base = {"table": "traffic", "from": frm, "to": to, "epoch": "ms"}
    if k in ("s5m", "s1h", "s1d"):
        path, extra = "/api/v1/series", {"field": "speed", "key": q["camera"],
                                         "step": {"s5m": "5m", "s1h": "1h", "s1d": "1d"}[k]}
    elif k == "agg":
        path, extra = "/api/v1/agg", {"field": "speed", "key": q["camera"]}
    elif k == "keys":
        path, extra = "/api/v1/aggs", {"field": "speed"}
    else:
        path, extra = "/api/v1/scan", {"key": q["camera"], "limit": 1000000}
    st, body = h.get(path, dict(base, **extra))
    if st != 200:
        raise RuntimeError("tallyd HTTP %s: %d %s" % (path, st, body[:300]))
    d = json.loads(body)
    if not ans:
        return
    if k in ("s5m", "s1h", "s1d"):
        for t, n, _mean, mn, mx, sm in d["values"]:
            ans.row(q["qid"], t, n, sm, mn, mx)
    elif k == "agg":
        ans.row(q["qid"], "all", d["count"], d["sum"], d["min"], d["max"])
    elif k == "keys":
        for key, n, _mean, mn, mx, sm in d["values"]:
            ans.row(q["qid"], key, n, sm, mn, mx)
    else:
        col = d["columns"].index("speed")
        for r in d["values"]:
            v = float(r[col])
            ans.row(q["qid"], r[0], 1, v, v, v)


def run(ctx, tallyd, client, http=False, name=None, feed=None):
    """http: queries over the HTTP API. name: the system's key (its
    directory and answers file; default tallyd or tallyd-http). feed(paths,
    port, http_port): writes the line-protocol files and returns once they
    are durable (default: `tally write` clients over TCP, one a file)."""
    if not tallyd or not os.path.exists(tallyd) or not client or not os.path.exists(client):
        raise common.PeerUnavailable("tallyd or the tally client is not built (wire/ did not build "
                                     "in %s)" % ctx["build"])
    name = name or ("tallyd-http" if http else "tallyd")
    d = os.path.join(ctx["tmp"], name)
    os.makedirs(d, exist_ok=True)
    port_file, http_file = os.path.join(d, "port"), os.path.join(d, "http-port")
    p = common.start("tallyd", [tallyd, "--port", "0", "--port-file", port_file, "--http-port",
                                "0" if http or feed else "off", "--http-port-file", http_file, "--data",
                                os.path.join(d, "data"), "--shards", str(ctx["threads"]),
                                "--table-keys", "traffic=camera", "--memory-limit", "16GiB",
                                "--flush-interval", "%ds" % FLUSH_S,
                                "--log-level", "warn"], os.path.join(d, "server.log"))
    res = {"version": ctx["tally_version"], "notes": []}
    try:
        t0 = time.time()
        while not os.path.exists(port_file) or not open(port_file).read().strip():
            if p.poll() is not None or time.time() - t0 > 30:
                raise RuntimeError("tallyd did not start (see %s/server.log)" % d)
            time.sleep(0.05)
        port = int(open(port_file).read().strip())
        hport = None
        if http or feed:  # tallyd writes the HTTP port file first
            hport = int(open(http_file).read().strip())

        def write(paths):
            if feed:
                return feed(paths, port, hport)
            procs = [subprocess.Popen([client, "--host", "127.0.0.1", "--port", str(port), "-q", "write", f],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for f in paths]
            for pr in procs:
                _, err = pr.communicate()
                if pr.returncode:
                    raise RuntimeError("tally write failed: %s" % err.decode(errors="replace")[-500:])

        common.log("  %s: writing %d events over %s" % (name, ctx["ontime_events"], "HTTP" if feed else "TCP"))
        t0 = time.perf_counter()
        write(ctx["ontime_lp_parts"])
        res["ingest"] = {"events": ctx["ontime_events"], "seconds": time.perf_counter() - t0,
                         "clients": len(ctx["ontime_lp_parts"])}
        c = Conn(port)
        check = ctx["check"]
        wait_min = max(ctx["settle_min_s"], FLUSH_S + 3)
        common.settle(p.pid, max_s=max(ctx["settle_s"], wait_min), min_s=wait_min)

        def rows_written():
            _, rows = c.cmd("#!stats")
            return int(dict((r[0], r[1]) for r in rows)["rows_written"])

        def seen():
            _, rows = c.cmd("#!series traffic speed %s 1h %d %d" % (
                check["camera"], check["from_ms"] * NS_PER_MS, check["to_ms"] * NS_PER_MS))
            return sum(int(r[1]) for r in rows)

        before = seen()
        rows0 = rows_written()
        io0 = common.io_write_bytes(p.pid)
        t0 = time.perf_counter()
        write([ctx["late_lp"]])
        late_s = time.perf_counter() - t0
        vis = common.poll(seen, check["after"], ctx["visible_timeout_s"])
        settle_s = common.settle(p.pid, max_s=max(ctx["settle_s"], wait_min), min_s=wait_min)
        io1 = common.io_write_bytes(p.pid)
        late_rows = rows_written() - rows0
        res["late"] = dict(vis, events=ctx["late_events"], seconds=late_s, seen_before=before,
                           settle_s=settle_s, io_write_bytes=io1 - io0, rows_written=late_rows,
                           wa_rows=late_rows / max(1, ctx["late_events"]))
        res["answers"] = os.path.join(ctx["tmp"], "answers-%s.tsv" % name)
        if http:
            h = common.Http(hport)
            res["queries"] = common.run_queries(ctx["queries"], lambda q, a: _one_http(h, q, a),
                                                res["answers"])
            h.close()
            res["notes"].append(("" if feed else "ingest over TCP as tallyd's; ") +
                                "queries over HTTP (/api/v1/, JSON)")
        else:
            res["queries"] = common.run_queries(ctx["queries"], lambda q, a: _one(c, q, a), res["answers"])
        c.close()
        b = common.du(os.path.join(d, "data"))
        res["disk"] = {"bytes": b, "raw_bytes": common.du(os.path.join(d, "data", "parts")),
                       "events": ctx["ontime_events"] + ctx["late_events"], "dir_bytes": b}
        res["notes"].append("bytes on disk as the server left them (background flush and merge), "
                            "not after an explicit flush")
        res["status"] = "ok"
    finally:
        common.stop(p, timeout=30)
    return res
