"""influx.py -- InfluxDB 1.6 (Debian's influxdb) as bench/run's peer.

Started from a config written here: its own meta/data/wal directories,
HTTP and RPC on free 127.0.0.1 ports, no reporting, no _internal
monitoring, no continuous queries, TSI off (inmem index, the 1.6
default), a cache large enough for the run, and
compact-full-write-cold-duration 10s so that the bytes on disk are
measured after the full compaction a real deployment gets hours later.
Fed the same line-protocol file as tally over HTTP /write (5,000-line
batches, as InfluxData recommends, on as many connections as cores).

Queries are InfluxQL over /query (epoch=ms): one query returns count,
sum, min and max, GROUP BY time(5m|1h|1d) fill(none) for series (windows
aligned to the epoch, like tally's), GROUP BY camera for all cameras.
"""
import json
import os
import subprocess
import time
import urllib.parse

import common

BIN = "influxd"
DB = "bench"


def version():
    try:
        out = subprocess.run([BIN, "version"], capture_output=True, text=True, timeout=30)
    except OSError as e:
        raise common.PeerUnavailable("influxd not installed (apt package influxdb): %s" % e)
    return common.deb_version("influxdb") or out.stdout.strip().split(" (")[0].replace("InfluxDB ", "")


def _config(d, http_port, rpc_port):
    cfg = """reporting-disabled = true
bind-address = "127.0.0.1:{rpc}"
[meta]
  dir = "{d}/meta"
[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false
  index-version = "inmem"
  cache-max-memory-size = "16g"
  compact-full-write-cold-duration = "10s"
  max-series-per-database = 0
  max-values-per-tag = 0
[retention]
  enabled = false
[monitor]
  store-enabled = false
[http]
  enabled = true
  bind-address = "127.0.0.1:{http}"
  log-enabled = false
  max-body-size = 0
  max-row-limit = 0
[continuous_queries]
  enabled = false
[subscriber]
  enabled = false
[logging]
  level = "warn"
""".format(d=d, http=http_port, rpc=rpc_port)
    path = os.path.join(d, "influxdb.conf")
    with open(path, "w") as f:
        f.write(cfg)
    return path


def _lines(path, n):
    """Yields batches of n lines."""
    with open(path, "rb") as f:
        batch = []
        for line in f:
            batch.append(line)
            if len(batch) == n:
                yield b"".join(batch)
                batch = []
        if batch:
            yield b"".join(batch)


class Influx:
    def __init__(self, d):
        self.d = d
        os.makedirs(d, exist_ok=True)
        self.port = common.free_port()
        conf = _config(d, self.port, common.free_port())
        self.p = common.start("influxd", [BIN, "-config", conf], os.path.join(d, "server.log"))
        common.wait_http(self.port, "/ping", timeout=60, proc=self.p, what="influxd")
        self.http = common.Http(self.port)
        st, body = self.http.request("POST", "/query?" + urllib.parse.urlencode({"q": "CREATE DATABASE " + DB}))
        if st != 200:
            raise RuntimeError("influxd CREATE DATABASE: HTTP %d %s" % (st, body[:200]))

    def write_file(self, path, threads):
        common.post_parallel(self.port, _lines(path, 5000), threads, "/write?db=%s&precision=ns" % DB,
                             ok=(204,))

    def query(self, q):
        st, body = self.http.get("/query", {"db": DB, "epoch": "ms", "q": q})
        if st != 200:
            raise RuntimeError("influxd query %s: HTTP %d %s" % (q, st, body[:300]))
        r = json.loads(body)
        res = r["results"][0]
        if "error" in res:
            raise RuntimeError("influxd query %s: %s" % (q, res["error"]))
        return res.get("series", [])

    def close(self):
        self.http.close()
        common.stop(self.p)


AGG = "count(speed), sum(speed), min(speed), max(speed)"


def query_text(q):
    k = q["kind"]
    rng = "time >= %dms AND time < %dms" % (q["from_ms"], q["to_ms"])
    if k in ("s5m", "s1h", "s1d"):
        g = {"s5m": "5m", "s1h": "1h", "s1d": "1d"}[k]
        return "SELECT %s FROM traffic WHERE camera = '%s' AND %s GROUP BY time(%s) fill(none)" % (
            AGG, q["camera"], rng, g)
    if k == "agg":
        return "SELECT %s FROM traffic WHERE camera = '%s' AND %s" % (AGG, q["camera"], rng)
    if k == "keys":
        return "SELECT %s FROM traffic WHERE %s GROUP BY camera" % (AGG, rng)
    return "SELECT speed FROM traffic WHERE camera = '%s' AND %s" % (q["camera"], rng)


def _one(ix, q, ans):
    series = ix.query(query_text(q))
    if ans is None:
        return
    k = q["kind"]
    for s in series:
        for v in s["values"]:
            if k == "scan":
                ans.row(q["qid"], v[0], 1, v[1], v[1], v[1])
            elif k == "keys":
                ans.row(q["qid"], s["tags"]["camera"], v[1], v[2], v[3], v[4])
            elif k == "agg":
                ans.row(q["qid"], "all", v[1], v[2], v[3], v[4])
            else:
                ans.row(q["qid"], v[0], v[1], v[2], v[3], v[4])


def run(ctx):
    ver = version()
    d = os.path.join(ctx["tmp"], "influx")
    ix = Influx(d)
    res = {"version": ver, "notes": []}
    try:
        common.log("  InfluxDB: writing %d events" % ctx["ontime_events"])
        t0 = time.perf_counter()
        ix.write_file(ctx["ontime_lp"], ctx["threads"])
        secs = time.perf_counter() - t0
        res["ingest"] = {"events": ctx["ontime_events"], "seconds": secs}
        check = ctx["check"]

        def seen():
            s = ix.query("SELECT count(speed) FROM traffic WHERE camera = '%s' AND time >= %dms AND "
                         "time < %dms GROUP BY time(1h) fill(none)" % (check["camera"], check["from_ms"],
                                                                     check["to_ms"]))
            return sum(int(v[1]) for x in s for v in x["values"])

        before = seen()
        io0 = common.io_write_bytes(ix.p.pid)
        t0 = time.perf_counter()
        ix.write_file(ctx["late_lp"], ctx["threads"])
        late_s = time.perf_counter() - t0
        vis = common.poll(seen, check["after"], ctx["visible_timeout_s"])
        settle_s = common.settle(ix.p.pid, max_s=ctx["settle_s"], min_s=ctx["settle_min_s"])
        res["late"] = dict(vis, events=ctx["late_events"], seconds=late_s, seen_before=before,
                           settle_s=settle_s, io_write_bytes=common.io_write_bytes(ix.p.pid) - io0)
        res["answers"] = os.path.join(ctx["tmp"], "answers-influx.tsv")
        res["queries"] = common.run_queries(ctx["queries"], lambda q, a: _one(ix, q, a), res["answers"])
        # Cold shards get their full compaction 10 s after the last write.
        time.sleep(min(12, ctx["settle_s"]))
        common.settle(ix.p.pid, max_s=ctx["settle_s"])
        data, wal = common.du(os.path.join(d, "data")), common.du(os.path.join(d, "wal"))
        res["disk"] = {"bytes": data + wal, "raw_bytes": data, "wal_bytes": wal,
                       "events": ctx["ontime_events"] + ctx["late_events"], "dir_bytes": data + wal}
        res["status"] = "ok"
    finally:
        ix.close()
    return res

