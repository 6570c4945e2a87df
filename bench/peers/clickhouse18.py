"""clickhouse18.py -- ClickHouse 18.16 server from Debian, as bench/run's peer.

The server runs from a config written here: its own data directory, HTTP
and native ports picked free on 127.0.0.1 (never 8123/9000/9009), logs in
the run's directory. Loading is ClickHouse's own bulk path:
`clickhouse-client --query "INSERT INTO raw FORMAT TSV" < file`, the TSV
cut in as many pieces as there are cores and sent by as many clients at
once. Queries go over HTTP with keep-alive (what applications use).

Schema, as a ClickHouse user would build this job on 18.16:
  raw    MergeTree, PARTITION BY day, ORDER BY (camera, ts), ts Int64 ms
         (18.16 has no DateTime64), speed Float64
  r5m, r1h, r1d
         AggregatingMergeTree fed by materialized views from raw:
         countState/sumState/minState/maxState per (camera, window)
Variants: "plain" (raw only), "rollups" (raw + the three views; the one
queried), "zstd" (rollups with <compression> method zstd for every part:
18.16 has no per-column CODECs, so this is its best compression).
"""
import os
import subprocess
import time

import common

CLIENT = "clickhouse-client"
SERVER = "clickhouse-server"

RAW = """CREATE TABLE raw (camera String, ts Int64, speed Float64)
ENGINE = MergeTree PARTITION BY toYYYYMMDD(toDateTime(intDiv(ts, 1000))) ORDER BY (camera, ts)"""

ROLLUP = """CREATE TABLE {t} (camera String, t Int64,
  c AggregateFunction(count), s AggregateFunction(sum, Float64),
  mn AggregateFunction(min, Float64), mx AggregateFunction(max, Float64))
ENGINE = AggregatingMergeTree PARTITION BY toYYYYMM(toDateTime(intDiv(t, 1000))) ORDER BY (camera, t)"""

VIEW = """CREATE MATERIALIZED VIEW {t}_mv TO {t} AS
SELECT camera, intDiv(ts, {w}) * {w} AS t, countState() AS c, sumState(speed) AS s,
       minState(speed) AS mn, maxState(speed) AS mx
FROM raw GROUP BY camera, t"""

LEVELS = [("r5m", 300000), ("r1h", 3600000), ("r1d", 86400000)]


def version():
    try:
        out = subprocess.run([CLIENT, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise common.PeerUnavailable("clickhouse-client not installed (apt package "
                                     "clickhouse-client): %s" % e)
    words = out.stdout.split()
    return common.deb_version("clickhouse-server") or (words[-1].rstrip(".") if words else "?")


def _config(d, http_port, tcp_port, inter_port, zstd):
    comp = ""
    if zstd:
        comp = """<compression><case><min_part_size>0</min_part_size>
<min_part_size_ratio>0</min_part_size_ratio><method>zstd</method></case></compression>"""
    cfg = """<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{d}/server.log</log><errorlog>{d}/error.log</errorlog></logger>
  <http_port>{http}</http_port>
  <tcp_port>{tcp}</tcp_port>
  <interserver_http_port>{inter}</interserver_http_port>
  <listen_host>127.0.0.1</listen_host>
  <path>{d}/data/</path>
  <tmp_path>{d}/tmp/</tmp_path>
  <user_files_path>{d}/user_files/</user_files_path>
  <format_schema_path>{d}/format_schemas/</format_schema_path>
  <users_config>{d}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>5368709120</mark_cache_size>
  <max_concurrent_queries>100</max_concurrent_queries>
  {comp}
</yandex>
""".format(d=d, http=http_port, tcp=tcp_port, inter=inter_port, comp=comp)
    users = """<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>10000000000</max_memory_usage>
    <use_uncompressed_cache>0</use_uncompressed_cache></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip></networks>
    <profile>default</profile><quota>default</quota></default></users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
    <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time>
  </interval></default></quotas>
</yandex>
"""
    with open(os.path.join(d, "config.xml"), "w") as f:
        f.write(cfg)
    with open(os.path.join(d, "users.xml"), "w") as f:
        f.write(users)


class Server:
    def __init__(self, d, zstd):
        self.d = d
        os.makedirs(d, exist_ok=True)
        self.http_port = common.free_port()
        self.tcp_port = common.free_port()
        self.inter_port = common.free_port()
        _config(d, self.http_port, self.tcp_port, self.inter_port, zstd)
        self.p = common.start("clickhouse-server", [SERVER, "--config-file=" + d + "/config.xml"],
                              os.path.join(d, "stdout.log"))
        common.wait_http(self.http_port, "/ping", timeout=90, proc=self.p, what="clickhouse-server")
        self.http = common.Http(self.http_port)

    def sql(self, q):
        st, body = self.http.request("POST", "/", body=q.encode())
        if st != 200:
            raise RuntimeError("clickhouse: %s\n-> %s" % (q[:300], body.decode(errors="replace")[:500]))
        return body.decode()

    def rows(self, q):
        out = self.sql(q + " FORMAT TabSeparated")
        return [l.split("\t") for l in out.splitlines() if l]

    def insert_files(self, paths):
        procs = []
        for path in paths:
            f = open(path, "rb")
            procs.append((subprocess.Popen([CLIENT, "--host", "127.0.0.1", "--port", str(self.tcp_port),
                                            "--query", "INSERT INTO raw FORMAT TabSeparated"],
                                           stdin=f, stdout=subprocess.PIPE, stderr=subprocess.PIPE), f))
        errs = []
        for p, f in procs:
            out, err = p.communicate()
            f.close()
            if p.returncode:
                errs.append(err.decode(errors="replace")[:500])
        if errs:
            raise RuntimeError("clickhouse-client INSERT failed: " + errs[0])

    def wait_merges(self, max_s, min_s=0.0):
        t0 = time.time()
        while time.time() - t0 < max_s:
            if self.rows("SELECT count() FROM system.merges")[0][0] == "0":
                break
            time.sleep(0.2)
        return common.settle(self.p.pid, max_s=max(1.0, max_s - (time.time() - t0)),
                             min_s=min_s) + (time.time() - t0)

    def close(self):
        self.http.close()
        common.stop(self.p)


def _series_sql(table, q):
    return ("SELECT t, countMerge(c), sumMerge(s), minMerge(mn), maxMerge(mx) FROM %s "
            "WHERE camera = '%s' AND t >= %d AND t < %d GROUP BY t ORDER BY t"
            % (table, q["camera"], q["from_ms"], q["to_ms"]))


def query_sql(q):
    k = q["kind"]
    if k in ("s5m", "s1h", "s1d"):
        return _series_sql({"s5m": "r5m", "s1h": "r1h", "s1d": "r1d"}[k], q)
    if k == "agg":
        return ("SELECT 'all', count(), sum(speed), min(speed), max(speed) FROM raw "
                "WHERE camera = '%s' AND ts >= %d AND ts < %d" % (q["camera"], q["from_ms"], q["to_ms"]))
    if k == "keys":
        # Hour-aligned by construction: the 1h rollup answers it.
        return ("SELECT camera, countMerge(c), sumMerge(s), minMerge(mn), maxMerge(mx) FROM r1h "
                "WHERE t >= %d AND t < %d GROUP BY camera ORDER BY camera" % (q["from_ms"], q["to_ms"]))
    if k == "v85":
        # quantileExact over the raw rows (common.V85_CH_LEVEL: the same rank as tally's)
        return ("SELECT 'v85', n, v, v, v FROM (SELECT count() AS n, quantileExact(%s)(speed) AS v "
                "FROM raw WHERE camera = '%s' AND ts >= %d AND ts < %d)"
                % (common.V85_CH_LEVEL, q["camera"], q["from_ms"], q["to_ms"]))
    return ("SELECT ts, 1, speed, speed, speed FROM raw WHERE camera = '%s' AND ts >= %d AND ts < %d "
            "ORDER BY ts" % (q["camera"], q["from_ms"], q["to_ms"]))


def run(ctx, variant):
    """variant: plain | rollups | zstd. Returns the result dict."""
    ver = version()
    d = os.path.join(ctx["tmp"], "ch18-" + variant)
    res = {"version": ver, "variant": variant, "notes": []}
    srv = Server(d, zstd=(variant == "zstd"))
    try:
        srv.sql(RAW)
        if variant != "plain":
            for t, w in LEVELS:
                srv.sql(ROLLUP.format(t=t))
                srv.sql(VIEW.format(t=t, w=w))
        common.log("  ClickHouse 18.16 %s: loading %d events" % (variant, ctx["ontime_events"]))
        t0 = time.perf_counter()
        srv.insert_files(ctx["ontime_tsv_parts"])
        secs = time.perf_counter() - t0
        n = int(srv.rows("SELECT count() FROM raw")[0][0])
        if n != ctx["ontime_events"]:
            raise RuntimeError("raw holds %d rows after loading %d" % (n, ctx["ontime_events"]))
        res["ingest"] = {"events": n, "seconds": secs, "clients": len(ctx["ontime_tsv_parts"])}
        srv.wait_merges(ctx["settle_s"])

        if variant == "rollups":
            check = ctx["check"]

            def seen():
                r = srv.rows("SELECT countMerge(c) FROM r1h WHERE camera = '%s' AND t >= %d AND t < %d"
                             % (check["camera"], check["from_ms"], check["to_ms"]))
                return int(r[0][0]) if r else 0

            before = seen()
            io0 = common.io_write_bytes(srv.p.pid)
            t0 = time.perf_counter()
            srv.insert_files([ctx["late_tsv"]])
            late_s = time.perf_counter() - t0
            vis = common.poll(seen, check["after"], ctx["visible_timeout_s"])
            settle_s = srv.wait_merges(ctx["settle_s"], min_s=ctx["settle_min_s"])
            io1 = common.io_write_bytes(srv.p.pid)
            res["late"] = dict(vis, events=ctx["late_events"], seconds=late_s, seen_before=before,
                               io_write_bytes=io1 - io0, settle_s=settle_s)
            res["queries"] = common.run_queries(ctx["queries"], lambda q, a: _one(srv, q, a),
                                                os.path.join(ctx["tmp"], "answers-ch18.tsv"))
            res["answers"] = os.path.join(ctx["tmp"], "answers-ch18.tsv")
        # Bytes on disk once merged: OPTIMIZE FINAL, as tally's figure is
        # after its merges.
        for t in ["raw"] + ([t for t, _ in LEVELS] if variant != "plain" else []):
            srv.sql("OPTIMIZE TABLE %s FINAL" % t)
        rows = srv.rows("SELECT table, sum(bytes_on_disk), sum(rows) FROM system.parts "
                        "WHERE active AND database = 'default' GROUP BY table")
        by = {r[0]: int(r[1]) for r in rows}
        res["disk"] = {"bytes": sum(by.values()), "raw_bytes": by.get("raw", 0),
                       "events": int(srv.rows("SELECT count() FROM raw")[0][0]),
                       "dir_bytes": common.du(os.path.join(d, "data"))}
        res["status"] = "ok"
    finally:
        srv.close()
    return res



def _one(srv, q, ans):
    rows = srv.rows(query_sql(q))
    if ans is None:
        return
    for r in rows:
        ans.row(q["qid"], r[0], r[1], r[2], r[3], r[4])
