"""victoria.py -- VictoriaMetrics (Debian's victoria-metrics) as bench/run's peer.

Started with its own -storageDataPath and a free 127.0.0.1 port,
-retentionPeriod=100y (the workload's days lie in the past; the default of
one month would drop them). Fed the same line-protocol file as tally over
HTTP /write (Influx line protocol), in 4 MB pieces on as many connections
as cores. A line `traffic,camera=X speed=85.2 T` becomes the series
traffic_speed{camera="X"}.

Queries are MetricsQL over /api/v1/query_range and /api/v1/query. VM's
windows are (t - w, t], so every query carries `offset 1ms`: at the
evaluation time t = window end the window is [start, end) in whole
milliseconds, like tally's. The timed query asks for what the question
asks (avg_over_time); the answers for the correctness check come from
count/sum/min/max_over_time, four queries.
"""
import json
import os
import shutil
import subprocess
import time

import common

BIN = "victoria-metrics"
METRIC = "traffic_speed"


def version():
    if not shutil.which(BIN):
        raise common.PeerUnavailable("victoria-metrics not installed (apt package victoria-metrics)")
    return common.deb_version("victoria-metrics")


def _post_file(port, path, threads, url):
    """Sends a line-protocol file in 4 MB pieces over `threads` connections."""
    common.post_parallel(port, common.line_chunks(path, 4 << 20), threads, url)


class VM:
    def __init__(self, d):
        self.d = d
        os.makedirs(d, exist_ok=True)
        self.port = common.free_port()
        self.p = common.start("victoria-metrics", [
            BIN, "-storageDataPath=" + os.path.join(d, "data"),
            "-httpListenAddr=127.0.0.1:%d" % self.port, "-retentionPeriod=100y",
            "-loggerLevel=ERROR", "-search.maxPointsPerTimeseries=1000000",
            "-search.maxUniqueTimeseries=10000000"], os.path.join(d, "server.log"))
        common.wait_http(self.port, "/health", timeout=60, proc=self.p, what="victoria-metrics")
        self.http = common.Http(self.port)

    def get_json(self, path, params):
        st, body = self.http.get(path, params)
        if st != 200:
            raise RuntimeError("victoria-metrics %s %s: HTTP %d %s" % (path, params, st, body[:300]))
        return json.loads(body)

    def series(self, fn, q):
        """fn over windows of q's step, one series: [(start_ms, value)]."""
        step = q["step_ms"]
        expr = '%s(%s{camera="%s"}[%dms] offset 1ms)' % (fn, METRIC, q["camera"], step)
        r = self.get_json("/api/v1/query_range", {
            "query": expr, "start": "%.3f" % ((q["from_ms"] + step) / 1000.0),
            "end": "%.3f" % (q["to_ms"] / 1000.0), "step": "%dms" % step})
        out = []
        for s in r["data"]["result"]:
            for t, v in s["values"]:
                out.append((int(round(float(t) * 1000)) - step, float(v)))
        return out

    def instant(self, fn, selector, from_ms, to_ms):
        """fn over [from, to) at time `to`: {camera: value}."""
        expr = "%s(%s[%dms] offset 1ms)" % (fn, selector, to_ms - from_ms)
        r = self.get_json("/api/v1/query", {"query": expr, "time": "%.3f" % (to_ms / 1000.0)})
        return {s["metric"].get("camera", ""): float(s["value"][1]) for s in r["data"]["result"]}

    def export(self, camera, from_ms, to_ms):
        st, body = self.http.get("/api/v1/export", {
            "match[]": '%s{camera="%s"}' % (METRIC, camera),
            "start": "%.3f" % (from_ms / 1000.0), "end": "%.3f" % ((to_ms - 1) / 1000.0)})
        if st != 200:
            raise RuntimeError("victoria-metrics export: HTTP %d" % st)
        rows = []
        for line in body.splitlines():
            if line.strip():
                o = json.loads(line)
                rows += zip(o["timestamps"], o["values"])
        return sorted(rows)

    def close(self):
        self.http.close()
        common.stop(self.p)


def _one(vm, q, ans):
    k = q["kind"]
    sel = '%s{camera="%s"}' % (METRIC, q["camera"])
    if ans is None:  # the timed query: the average the question asks for
        if k in ("s5m", "s1h", "s1d"):
            vm.series("avg_over_time", q)
        elif k == "agg":
            vm.instant("avg_over_time", sel, q["from_ms"], q["to_ms"])
        elif k == "keys":
            vm.instant("avg_over_time", METRIC, q["from_ms"], q["to_ms"])
        else:
            vm.export(q["camera"], q["from_ms"], q["to_ms"])
        return
    fns = ["count_over_time", "sum_over_time", "min_over_time", "max_over_time"]
    if k in ("s5m", "s1h", "s1d"):
        cols = [dict(vm.series(fn, q)) for fn in fns]
        for t in sorted(cols[0]):
            ans.row(q["qid"], t, cols[0][t], cols[1][t], cols[2][t], cols[3][t])
    elif k in ("agg", "keys"):
        cols = [vm.instant(fn, sel if k == "agg" else METRIC, q["from_ms"], q["to_ms"]) for fn in fns]
        for cam in sorted(cols[0]):
            ans.row(q["qid"], "all" if k == "agg" else cam, cols[0][cam], cols[1][cam], cols[2][cam],
                    cols[3][cam])
    else:
        for t, v in vm.export(q["camera"], q["from_ms"], q["to_ms"]):
            ans.row(q["qid"], t, 1, v, v, v)


def run(ctx):
    ver = version()
    d = os.path.join(ctx["tmp"], "victoria")
    vm = VM(d)
    res = {"version": ver, "notes": []}
    try:
        common.log("  VictoriaMetrics: writing %d events" % ctx["ontime_events"])
        t0 = time.perf_counter()
        _post_file(vm.port, ctx["ontime_lp"], ctx["threads"], "/write")
        secs = time.perf_counter() - t0
        res["ingest"] = {"events": ctx["ontime_events"], "seconds": secs,
                         "note": "acknowledged when buffered in memory; searchable after a flush"}
        vm.http.request("GET", "/internal/force_flush")
        check = ctx["check"]
        q = {"camera": check["camera"], "step_ms": 3600000, "from_ms": check["from_ms"],
             "to_ms": check["to_ms"]}

        def seen():
            return int(round(sum(v for _, v in vm.series("count_over_time", q))))

        # A dashboard's query over the day that is about to get its backlog.
        before = seen()
        io0 = common.io_write_bytes(vm.p.pid)
        t0 = time.perf_counter()
        _post_file(vm.port, ctx["late_lp"], ctx["threads"], "/write")
        late_s = time.perf_counter() - t0
        vis = common.poll(seen, check["after"], ctx["visible_timeout_s"])
        late = dict(vis, events=ctx["late_events"], seconds=late_s, seen_before=before)
        if vis["visible_after_s"] is None:
            # VictoriaMetrics caches range-query results for times older
            # than -search.cacheTimestampOffset (5m): backfilled data can
            # stay invisible to the same query until the cache is reset.
            vm.http.request("GET", "/internal/resetRollupResultCache")
            vis2 = common.poll(seen, check["after"], ctx["visible_timeout_s"])["visible_after_s"]
            late["visible_after_cache_reset_s"] = vis2
            res["notes"].append("late events not visible to a repeated range query within %.0f s "
                                "(rollup result cache); visible %s after "
                                "/internal/resetRollupResultCache" % (
                                    ctx["visible_timeout_s"],
                                    "%.3f s" % vis2 if vis2 is not None else "never"))
        vm.http.request("GET", "/internal/force_flush")
        late["settle_s"] = common.settle(vm.p.pid, max_s=ctx["settle_s"], min_s=ctx["settle_min_s"])
        late["io_write_bytes"] = common.io_write_bytes(vm.p.pid) - io0
        res["late"] = late
        res["answers"] = os.path.join(ctx["tmp"], "answers-victoria.tsv")
        res["queries"] = common.run_queries(ctx["queries"], lambda qq, a: _one(vm, qq, a), res["answers"])
        vm.http.request("GET", "/internal/force_merge")
        common.settle(vm.p.pid, max_s=ctx["settle_s"])
        b = common.du(os.path.join(d, "data"))
        res["disk"] = {"bytes": b, "raw_bytes": b, "events": ctx["ontime_events"] + ctx["late_events"],
                       "dir_bytes": b}
        res["status"] = "ok"
    finally:
        vm.close()
    return res

