#!/usr/bin/python3
"""influxql_test.py — InfluxQL on tallyd's /query, with real clients.

    tests/server/influxql_test.py TALLYD MODE

Every mode starts its own tallyd (--http-port 0, a temporary directory,
stopped by PID) and loads the same generated day of camera events, late
ones included (written after newer ones), through /write.

MODE influxdb: a real InfluxDB 1.6 (/usr/bin/influxd) started on free
ports with its own directories from a config the test writes, loaded with
the same lines; every statement must give the same JSON from both, up to
float formatting (numbers compare within 1e-9 relative), and equal the
test's brute-force model of the events where it has one.
MODE cli: the `influx` CLI (-execute ... -format json) against tallyd,
compared with the model.
MODE py: python3-influxdb's InfluxDBClient.query(), compared with the
model; GET and POST, epoch= and get_points().
With $TALLYD_EXTRA="--flush-interval 100ms" each batch is flushed into
parts before the next, so the rollups answer from parts (the late events
from a later part than the events they are late to).
MODE errors: malformed and unsupported statements answered 400 with the
position; unknown names as InfluxDB answers them; the window limit;
median and percentile of a field without a distribution.
tallyd keeps speed as an exact distribution at 0.01 (the data's two
decimals), so PERCENTILE and MEDIAN answer from it and must equal
InfluxDB's, which sorts the raw points.
Exits 77 (skipped) only when the mode's program is not installed.
"""
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import urllib.error

TALLYD, MODE = sys.argv[1], sys.argv[2]
T0 = 1699920000  # 2023-11-14T00:00:00Z
NS = 1000000000
CAMERAS = ["KV1", "KV2", "KV3", "KV4", "KV5"]
START = time.monotonic()


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def step(what):
    print("%6.2fs %s" % (time.monotonic() - START, what), flush=True)


def check(cond, msg):
    if not cond:
        fail(msg)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_for(what, cond, proc, log, limit=60):
    deadline = time.monotonic() + limit
    while not cond():
        if proc.poll() is not None:
            fail("%s exited at start: %s" % (what, open(log).read()[-3000:]))
        check(time.monotonic() < deadline, "%s did not start in %d s" % (what, limit))
        time.sleep(0.05)


def stop(proc, what):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            fail(what + " did not stop within 30 s of SIGTERM")


def http(port, path, data=None, params=None):
    """(status, body text) of GET (data None) or POST."""
    url = "http://127.0.0.1:%d%s" % (port, path)
    if params:
        url += "?" + urllib.parse.urlencode(params)
    req = urllib.request.Request(url, data=data)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class Tally:
    def __init__(self, tmp):
        self.dir = os.path.join(tmp, "tally")
        os.makedirs(self.dir)
        hpf = os.path.join(self.dir, "http-port")
        self.log = os.path.join(self.dir, "tallyd.log")
        args = [TALLYD, "--data", os.path.join(self.dir, "data"), "--port", "0", "--http-port",
                "0", "--http-port-file", hpf, "--prefault", "off", "--shards", "2",
                "--log-level", "warn", "--distributions", "traffic.speed:0.01"] + os.environ.get("TALLYD_EXTRA", "").split()
        if MODE == "tags":
            args += ["--table-keys", "road=camera+lane,hosts=*"]
        with open(self.log, "w") as lf:
            self.proc = subprocess.Popen(args, stdout=lf, stderr=lf, stdin=subprocess.DEVNULL)
        wait_for("tallyd", lambda: os.path.exists(hpf) and os.path.getsize(hpf) > 0, self.proc,
                 self.log)
        self.port = int(open(hpf).read())

    def stop(self):
        stop(self.proc, "tallyd")
        check(self.proc.returncode == 0, "tallyd exited with %d: %s" %
              (self.proc.returncode, open(self.log).read()[-4000:]))


class Influx:
    """A real InfluxDB 1.6 on free ports, its directories in tmp."""

    def __init__(self, tmp):
        self.dir = os.path.join(tmp, "influxdb")
        os.makedirs(self.dir)
        self.port = free_port()
        conf = os.path.join(self.dir, "influxdb.conf")
        d = self.dir
        with open(conf, "w") as f:
            f.write("""reporting-disabled = true
bind-address = "127.0.0.1:%d"
[meta]
  dir = "%s/meta"
  logging-enabled = false
[data]
  dir = "%s/data"
  wal-dir = "%s/wal"
  query-log-enabled = false
[monitor]
  store-enabled = false
[http]
  bind-address = "127.0.0.1:%d"
  log-enabled = false
[logging]
  level = "error"
[continuous_queries]
  enabled = false
[retention]
  enabled = false
[subscriber]
  enabled = false
""" % (free_port(), d, d, d, self.port))
        self.log = os.path.join(self.dir, "influxd.log")
        with open(self.log, "w") as lf:
            self.proc = subprocess.Popen(["/usr/bin/influxd", "-config", conf], stdout=lf,
                                         stderr=lf, stdin=subprocess.DEVNULL)

        def up():
            try:
                return http(self.port, "/ping")[0] == 204
            except OSError:
                return False
        wait_for("influxd", up, self.proc, self.log, 120)
        st, body = http(self.port, "/query", b"q=CREATE+DATABASE+tally")
        check(st == 200, "CREATE DATABASE: %d %s" % (st, body))

    def stop(self):
        stop(self.proc, "influxd")


# ---------------------------------------------------------------- the data

def generate():
    """(events, lp batches): events are (camera, ns, speed, lanes); each
    camera's times are distinct (InfluxDB keeps one point per series and
    time). The second batch holds late events, older than the first's."""
    rnd = random.Random(16)
    events, seen = [], set()
    for cam in CAMERAS:
        for _ in range(rnd.randint(250, 400)):
            while True:
                # ms precision, some on a window's first instant
                t = T0 * NS + rnd.randrange(0, 86400 * 1000) * 1000000
                if rnd.random() < 0.05:
                    t -= t % (300 * NS)
                if (cam, t) not in seen:
                    break
            seen.add((cam, t))
            events.append((cam, t, round(rnd.uniform(20, 140), 2), rnd.randint(1, 4)))
    late = [e for e in events if rnd.random() < 0.15]
    first = sorted((e for e in events if e not in late), key=lambda e: e[1])
    lines = lambda es: "".join("traffic,camera=%s speed=%s,lanes=%di %d\n" % (c, v, n, t)
                               for c, t, v, n in es)
    return events, [lines(first), lines(late)]


def load(port, batches, parts=False):
    """parts: wait after each batch until tallyd has flushed it into parts
    (run with --flush-interval), so answers come from parts' rollups and
    the late events from a later part."""
    for b in batches:
        st, body = http(port, "/write?db=tally", b.encode())
        check(st == 204, "write: %d %s" % (st, body))
        want = parts_now(port) + 1 if parts else 0
        deadline = time.monotonic() + 60
        while parts and parts_now(port) < want:
            check(time.monotonic() < deadline, "no flush into parts within 60 s")
            time.sleep(0.05)


def parts_now(port):
    st, body = http(port, "/metrics")
    for line in body.split("\n"):
        if line.startswith("tally_parts "):
            return int(float(line.split()[1]))
    fail("no tally_parts in /metrics")


# ---------------------------------------------------------------- the model

def fmt_time(ns, epoch):
    if epoch:
        unit = {"ns": 1, "u": 1000, "ms": 1000000, "s": NS, "m": 60 * NS, "h": 3600 * NS}[epoch]
        return ns // unit
    s = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // NS))
    frac = ns % NS
    if frac:
        s += ("." + "%09d" % frac).rstrip("0")
    return s + "Z"


def percentile(vals, p):
    """InfluxDB 1.x's PERCENTILE: the point at 1-based rank
    floor(N * p / 100 + 0.5) of the sorted points, none outside 1..N."""
    s = sorted(vals)
    r = math.floor(len(s) * p / 100.0 + 0.5)
    return s[r - 1] if 1 <= r <= len(s) else None


def median(vals):
    """InfluxDB 1.x's MEDIAN: the middle point, or lo + (hi - lo) / 2."""
    s, n = sorted(vals), len(vals)
    if n % 2:
        return s[n // 2]
    lo, hi = s[n // 2 - 1], s[n // 2]
    return lo + (hi - lo) / 2


def agg(fn, vals):
    if fn == "count":
        return len(vals)
    if not vals:
        return None
    if fn.startswith("percentile:"):
        return percentile(vals, float(fn.split(":")[1]))
    return {"mean": lambda v: sum(v) / len(v), "sum": sum, "min": min, "max": max,
            "median": median}[fn](vals)


def model(events, aggs, keys, lo, hi, stepns=0, by_key=False, fill="null", desc=False,
          limit=0, epoch=None):
    """The series InfluxDB answers: aggs [(fn, field, column)], keys the
    cameras the condition keeps, [lo, hi) the range (lo None: none)."""
    field = {"speed": 2, "lanes": 3}
    inrange = [e for e in events if e[0] in keys and (lo is None or e[1] >= lo) and
               (hi is None or e[1] < hi)]
    groups = sorted({e[0] for e in inrange}) if by_key else [None]
    out = []
    for g in groups:
        es = [e for e in inrange if g is None or e[0] == g]
        if not es:
            continue
        rows = []
        if stepns:
            w0 = lo - lo % stepns
            w = w0
            while w < hi:
                we = w + stepns
                win = [e for e in es if w <= e[1] < we]
                if win or fill != "none":
                    row = [fmt_time(w, epoch)]
                    for fn, f, _ in aggs:
                        v = agg(fn, [e[field[f]] for e in win])
                        if v is None:  # InfluxDB counts an empty window 0
                            v = 0 if fill == "0" else None
                        row.append(v)
                    rows.append(row)
                w = we
        else:
            rows.append([fmt_time(lo or 0, epoch)] +
                        [agg(fn, [e[field[f]] for e in es]) for fn, f, _ in aggs])
        if desc:
            rows.reverse()
        if limit:
            rows = rows[:limit]
        s = {"name": "traffic", "columns": ["time"] + [c for _, _, c in aggs], "values": rows}
        if g is not None:
            s["tags"] = {"camera": g}
        out.append(s)
    return out


def norm(v):
    """Floats to 10 significant digits; InfluxDB and tally format them
    differently and add in different orders."""
    if isinstance(v, dict):
        return {k: norm(x) for k, x in v.items()}
    if isinstance(v, list):
        return [norm(x) for x in v]
    if isinstance(v, float) or isinstance(v, int) and not isinstance(v, bool) and abs(v) < 2**53:
        return float("%.10g" % v)
    return v


def same(a, b, what):
    if norm(a) != norm(b):
        fail("%s:\n  tally: %s\n  want:  %s" % (what, json.dumps(a)[:3000], json.dumps(b)[:3000]))


# ---------------------------------------------------------------- statements

def iso(ns):
    return fmt_time(ns, None)


DAY_END = (T0 + 86400) * NS
ODD_LO = T0 * NS + 3 * 3600 * NS + 7 * 60 * NS + 13 * NS + 500000000  # 03:07:13.5
ODD_HI = T0 * NS + 17 * 3600 * NS + 53 * 60 * NS + 2 * NS             # 17:53:02


def statements():
    """(InfluxQL, model arguments or None, epoch)."""
    A = lambda *fs: [(fn, f, c) for fn, f, c in fs]
    mean_s = A(("mean", "speed", "mean"))
    five = A(("mean", "speed", "mean"), ("count", "speed", "count"), ("sum", "speed", "sum"),
             ("min", "speed", "min"), ("max", "speed", "max"))
    return [
        # What Grafana's panel editor sends: $timeFilter in ms, fill(null)
        ("SELECT mean(\"speed\") FROM \"traffic\" WHERE (\"camera\" = 'KV1') AND time >= %dms "
         "and time <= %dms GROUP BY time(5m) fill(null)" % (T0 * 1000, T0 * 1000 + 6 * 3600000),
         dict(aggs=mean_s, keys={"KV1"}, lo=T0 * NS, hi=T0 * NS + 6 * 3600 * NS + 1000000,
              stepns=300 * NS), "ms"),
        ("SELECT mean(speed), count(speed), sum(speed), min(speed), max(speed) FROM traffic "
         "WHERE time >= '%s' AND time < '%s' GROUP BY time(1h), camera fill(none)"
         % (iso(T0 * NS), iso(DAY_END)),
         dict(aggs=five, keys=set(CAMERAS), lo=T0 * NS, hi=DAY_END, stepns=3600 * NS,
              by_key=True, fill="none"), None),
        # edges cut inside windows: rollups inside, exact raw edges
        ("SELECT count(speed), mean(speed) FROM traffic WHERE time >= '%s' AND time < '%s' "
         "GROUP BY time(15m) fill(0)" % (iso(ODD_LO), iso(ODD_HI)),
         dict(aggs=A(("count", "speed", "count"), ("mean", "speed", "mean")),
              keys=set(CAMERAS), lo=ODD_LO, hi=ODD_HI, stepns=900 * NS, fill="0"), None),
        ("SELECT max(speed) FROM traffic WHERE camera =~ /^(KV1|KV3)$/ AND time >= '%s' AND "
         "time < '%s' GROUP BY time(30m), \"camera\"" % (iso(ODD_LO), iso(DAY_END)),
         dict(aggs=A(("max", "speed", "max")), keys={"KV1", "KV3"}, lo=ODD_LO, hi=DAY_END,
              stepns=1800 * NS, by_key=True), None),
        ("SELECT sum(lanes), min(lanes), max(lanes) FROM traffic WHERE (camera = 'KV2' OR "
         "camera = 'KV4') AND time >= %d AND time < %d" % (ODD_LO, ODD_HI),
         dict(aggs=A(("sum", "lanes", "sum"), ("min", "lanes", "min"), ("max", "lanes", "max")),
              keys={"KV2", "KV4"}, lo=ODD_LO, hi=ODD_HI), "s"),
        ("SELECT mean(speed) AS avg FROM \"tally\".\"autogen\".\"traffic\" WHERE camera = 'KV5' "
         "AND time >= '%s' AND time < '%s' GROUP BY time(1h) fill(none) ORDER BY time DESC LIMIT 5"
         % (iso(T0 * NS), iso(DAY_END)),
         dict(aggs=A(("mean", "speed", "avg")), keys={"KV5"}, lo=T0 * NS, hi=DAY_END,
              stepns=3600 * NS, fill="none", desc=True, limit=5), None),
        # 7m is not a multiple of the finest level: window by window
        ("SELECT count(speed) FROM traffic WHERE camera != 'KV2' AND time >= '%s' AND time < '%s' "
         "GROUP BY time(7m) fill(none)" % (iso(ODD_LO), iso(ODD_LO + 5 * 3600 * NS)),
         dict(aggs=A(("count", "speed", "count")), keys=set(CAMERAS) - {"KV2"}, lo=ODD_LO,
              hi=ODD_LO + 5 * 3600 * NS, stepns=420 * NS, fill="none"), "ns"),
        ("SELECT count(speed), max(speed) FROM traffic GROUP BY camera",
         dict(aggs=A(("count", "speed", "count"), ("max", "speed", "max")), keys=set(CAMERAS),
              lo=None, hi=None, by_key=True), None),
        ("SELECT count(speed), min(speed) FROM traffic WHERE (camera = 'KV9' OR camera = 'KV3') "
         "AND time >= '%s' AND time < '%s' GROUP BY time(10m)" % (iso(ODD_LO), iso(ODD_HI)),
         dict(aggs=A(("count", "speed", "count"), ("min", "speed", "min")), keys={"KV3"},
              lo=ODD_LO, hi=ODD_HI, stepns=600 * NS), None),
        ("SELECT mean(speed) FROM traffic WHERE time > now() - 1h GROUP BY time(5m)",
         dict(aggs=mean_s, keys=set(CAMERAS), lo=None, hi=None, stepns=300 * NS), None),
        # exact distributions (--distributions traffic.speed:0.01): V85 and
        # the median per camera and hour, from rollups plus raw edges
        ("SELECT percentile(\"speed\", 85), median(\"speed\") FROM traffic WHERE time >= '%s' "
         "AND time < '%s' GROUP BY time(1h), camera fill(none)" % (iso(T0 * NS), iso(DAY_END)),
         dict(aggs=A(("percentile:85", "speed", "percentile"), ("median", "speed", "median")),
              keys=set(CAMERAS), lo=T0 * NS, hi=DAY_END, stepns=3600 * NS, by_key=True,
              fill="none"), None),
        # cut windows, every camera merged into one series per window;
        # 84% of N is not the nearest rank (ceil) but InfluxDB's rounding
        ("SELECT percentile(speed, 84) AS v84, median(speed), count(speed), percentile(speed, 99.5) "
         "FROM traffic WHERE camera != 'KV4' AND time >= '%s' AND time < '%s' GROUP BY time(45m)"
         % (iso(ODD_LO), iso(ODD_HI)),
         dict(aggs=A(("percentile:84", "speed", "v84"), ("median", "speed", "median"),
                     ("count", "speed", "count"), ("percentile:99.5", "speed", "percentile")),
              keys=set(CAMERAS) - {"KV4"}, lo=ODD_LO, hi=ODD_HI, stepns=2700 * NS), None),
        # a low percentile of few points has no rank: null, as InfluxDB
        ("SELECT percentile(speed, 5), count(speed) FROM traffic WHERE camera = 'KV2' AND "
         "time >= '%s' AND time < '%s' GROUP BY time(30m) fill(null)" % (iso(ODD_LO), iso(ODD_HI)),
         dict(aggs=A(("percentile:5", "speed", "percentile"), ("count", "speed", "count")),
              keys={"KV2"}, lo=ODD_LO, hi=ODD_HI, stepns=1800 * NS), "ms"),
        # the whole range, no GROUP BY time: windows of 1h, 5m and raw edges
        ("SELECT median(speed), percentile(speed, 50), percentile(speed, 100), count(speed) FROM "
         "traffic WHERE time >= %d AND time < %d GROUP BY camera" % (ODD_LO, ODD_HI),
         dict(aggs=A(("median", "speed", "median"), ("percentile:50", "speed", "percentile"),
                     ("percentile:100", "speed", "percentile_1"), ("count", "speed", "count")),
              keys=set(CAMERAS), lo=ODD_LO, hi=ODD_HI, by_key=True), "s"),
    ]


# What Grafana asks for its menus (tally lists every database's content
# under any name, so SHOW DATABASES is left to the errors mode).
SHOWS = ["SHOW MEASUREMENTS", "SHOW MEASUREMENTS WITH MEASUREMENT =~ /traf/ LIMIT 100",
         "SHOW MEASUREMENTS WITH MEASUREMENT = \"nothere\"",
         "SHOW TAG KEYS", "SHOW TAG KEYS FROM \"traffic\"", "SHOW TAG KEYS FROM nothere",
         "SHOW TAG VALUES WITH KEY = \"camera\"",
         "SHOW TAG VALUES FROM \"traffic\" WITH KEY = \"camera\" WHERE camera =~ /[135]/",
         "SHOW TAG VALUES FROM traffic WITH KEY = \"camera\" LIMIT 2 OFFSET 1",
         "SHOW TAG VALUES FROM traffic WITH KEY = \"nothere\"",
         "SHOW TAG VALUES FROM traffic WITH KEY = \"camera\" WHERE time > now() - 1h",
         "SHOW FIELD KEYS", "SHOW FIELD KEYS FROM traffic", "SHOW RETENTION POLICIES ON tally",
         "SHOW MEASUREMENTS; SHOW FIELD KEYS"]


def model_answer(events, m, epoch):
    if m["lo"] is None and m.get("stepns"):
        return []
    return model(events, epoch=epoch, **m)


def series_of(answer, i=0):
    r = answer["results"][i]
    check("error" not in r, "statement %d failed: %s" % (i, r.get("error")))
    return r.get("series", [])


def query(port, q, epoch=None, post=False, **extra):
    params = {"db": "tally", "q": q}
    if epoch:
        params["epoch"] = epoch
    params.update(extra)
    if post:
        return http(port, "/query", urllib.parse.urlencode(params).encode())
    return http(port, "/query", params=params)


# ---------------------------------------------------------------- modes

def mode_influxdb(tmp, tally, events, batches):
    if not os.access("/usr/bin/influxd", os.X_OK):
        print("SKIP: influxd (Debian influxdb) is not installed")
        sys.exit(77)
    step("starting influxd")
    ref = Influx(tmp)
    try:
        load(ref.port, batches)
        stmts = statements()
        for i, (q, m, epoch) in enumerate(stmts):
            st1, a = query(tally.port, q, epoch)
            st2, b = query(ref.port, q, epoch)
            check(st1 == st2 == 200, "%s: tally %d %s, influxdb %d %s" % (q, st1, a, st2, b))
            a, b = json.loads(a), json.loads(b)
            same(a, b, "statement %d against InfluxDB: %s" % (i, q))
            same(series_of(a), model_answer(events, m, epoch), "statement %d against the model" % i)
        step("%d statements equal InfluxDB's answers and the model" % len(stmts))
        # several statements in one query, as InfluxDB numbers them
        q = ";".join(s[0] for s in stmts[:3])
        a, b = query(tally.port, q, post=True)[1], query(ref.port, q, post=True)[1]
        same(json.loads(a), json.loads(b), "three statements in one POST")
        # pretty=true is InfluxDB's indentation, to the byte where numbers agree
        q = "SELECT count(speed) FROM traffic WHERE time >= '%s' GROUP BY camera" % iso(T0 * NS)
        a, b = query(tally.port, q, pretty="true")[1], query(ref.port, q, pretty="true")[1]
        check(a.strip() == b.strip(), "pretty:\n%s\n%s" % (a, b))
        # unknown names: InfluxDB's empty answers
        for q in ["SELECT mean(speed) FROM nothere WHERE time >= '%s'" % iso(T0 * NS),
                  "SELECT mean(nofield) FROM traffic WHERE time >= '%s'" % iso(T0 * NS),
                  "SELECT mean(speed) FROM traffic WHERE camera = 'NOPE' AND time >= '%s' "
                  "GROUP BY time(1h)" % iso(T0 * NS),
                  "SELECT mean(speed) FROM traffic WHERE time >= '%s' AND time < '%s'"
                  % (iso(DAY_END), iso(DAY_END + NS))]:
            a, b = query(tally.port, q), query(ref.port, q)
            check(a[0] == b[0], "%s: status %d, InfluxDB %d" % (q, a[0], b[0]))
            same(json.loads(a[1]), json.loads(b[1]), "unknown names: " + q)
        step("unknown names answered as InfluxDB answers them")
        for q in SHOWS:
            a, b = query(tally.port, q), query(ref.port, q)
            check(a[0] == b[0] == 200, "%s: status %d, InfluxDB %d" % (q, a[0], b[0]))
            same(json.loads(a[1]), json.loads(b[1]), q)
        step("%d SHOW statements equal InfluxDB's answers" % len(SHOWS))
    finally:
        ref.stop()


def mode_cli(tmp, tally, events, batches):
    if not shutil.which("influx"):
        print("SKIP: influx (Debian influxdb-client) is not installed")
        sys.exit(77)
    for i, (q, m, epoch) in enumerate(statements()):
        args = ["influx", "-host", "127.0.0.1", "-port", str(tally.port), "-database", "tally",
                "-format", "json", "-execute", q]
        args[1:1] = ["-precision", epoch or "rfc3339"]
        r = subprocess.run(args, capture_output=True, text=True, timeout=60)
        check(r.returncode == 0, "influx -execute %s: %s%s" % (q, r.stdout, r.stderr))
        got = json.loads(r.stdout)
        same(series_of(got), model_answer(events, m, epoch), "influx CLI, statement %d" % i)
    step("the influx CLI's answers equal the model")
    r = subprocess.run(["influx", "-host", "127.0.0.1", "-port", str(tally.port), "-database",
                        "tally", "-execute", "SELECT stddev(speed) FROM traffic"],
                       capture_output=True, text=True, timeout=60)
    check(r.returncode != 0 and "stddev" in r.stdout + r.stderr and "char 8" in r.stdout + r.stderr,
          "influx CLI on an unsupported function: %s%s" % (r.stdout, r.stderr))


def mode_py(tmp, tally, events, batches):
    try:
        from influxdb import InfluxDBClient
    except ImportError:
        print("SKIP: python3-influxdb is not installed")
        sys.exit(77)
    for method in ("GET", "POST"):
        cl = InfluxDBClient(host="127.0.0.1", port=tally.port, database="tally")
        for i, (q, m, epoch) in enumerate(statements()):
            rs = cl.query(q, epoch=epoch, method=method)
            same(rs.raw.get("series", []), model_answer(events, m, epoch),
                 "python3-influxdb %s, statement %d" % (method, i))
    step("python3-influxdb's query() equals the model, GET and POST")
    cl = InfluxDBClient(host="127.0.0.1", port=tally.port, database="tally")
    rs = cl.query("SELECT count(speed) FROM traffic WHERE time >= '%s' GROUP BY camera"
                  % iso(T0 * NS))
    for cam in CAMERAS:
        pts = list(rs.get_points(tags={"camera": cam}))
        want = sum(1 for e in events if e[0] == cam)
        check(len(pts) == 1 and pts[0]["count"] == want, "get_points %s: %s" % (cam, pts))
    try:
        cl.query("SELECT speed FROM traffic")
        fail("a raw SELECT was answered")
    except Exception as e:
        check("raw fields" in str(e) and "char 8" in str(e), "raw SELECT: %s" % e)
    step("get_points and errors through python3-influxdb")


def mode_errors(tmp, tally, events, batches):
    cases = [
        ("SELECT mean(speed) FORM traffic", "found FORM, expected FROM at line 1, char 20"),
        ("SELECT stddev(speed) FROM traffic", "stddev() (only mean, count, sum, min, max, median "
         "or percentile) is not supported by tally at line 1, char 8"),
        ("SELECT percentile(speed) FROM traffic", "percentile() needs two arguments: a field and "
         "a number at line 1, char 24"),
        ("SELECT percentile(speed, '85') FROM traffic", "found '85', expected a number (the "
         "percentile) at line 1, char 26"),
        ("SELECT median(speed, 2) FROM traffic", "a second argument to an aggregate is not "
         "supported by tally at line 1, char 20"),
        ("SELECT mean(speed) FROM traffic WHERE speed > 5", "a condition on a field is not "
         "supported by tally at line 1, char 39"),
        ("SELECT mean(speed) FROM traffic WHERE time >= now() - 1h OR camera = 'A'",
         "a time condition inside OR is not supported by tally at line 1, char 39"),
        ("SELECT mean(speed) FROM traffic\nGROUP BY time(5m, 1m)",
         "an offset in GROUP BY time() is not supported by tally at line 2, char 17"),
        ("SELECT mean(speed) FROM traffic WHERE camera =~ /KV(/",
         "invalid regex"),
        ("SELECT mean(speed) FROM traffic WHERE time > 'yesterday'",
         "unable to parse time 'yesterday'"),
        ("DROP DATABASE tally", "the statement DROP is not supported by tally at line 1, char 1"),
        ("SELECT mean(speed) FROM traffic fill(linear)", "fill(linear) is not supported"),
    ]
    for q, want in cases:
        st, body = query(tally.port, q)
        check(st == 400, "%s: status %d %s" % (q, st, body))
        err = json.loads(body).get("error", "")
        check(want in err and err.startswith("error parsing query: "),
              "%s: %s, want %s" % (q, err, want))
    st, body = http(tally.port, "/query", params={"db": "tally"})
    check(st == 400 and "missing required parameter" in body, "no q: %d %s" % (st, body))
    st, body = query(tally.port, "SELECT count(speed) FROM traffic", epoch="fortnight")
    check(st == 400 and "epoch" in body, "bad epoch: %d %s" % (st, body))
    step("malformed and unsupported statements are named with their position")
    # a statement's failure is its own; the ones after it are not executed
    q = ("SELECT count(speed) FROM traffic; SELECT mean(speed) FROM traffic GROUP BY lane; "
         "SELECT max(speed) FROM traffic")
    st, body = query(tally.port, q)
    r = json.loads(body)["results"]
    check(st == 200 and len(r) == 3 and "series" in r[0], "three statements: %s" % body)
    check("key tag \"camera\", not by \"lane\"" in r[1]["error"], "lane: %s" % r[1])
    check(r[2] == {"statement_id": 2, "error": "not executed"}, "after an error: %s" % r[2])
    st, body = http(tally.port, "/query", params={"q": "SELECT count(speed) FROM traffic"})
    check(json.loads(body)["results"][0].get("error") == "database name required", body)
    # the window limit: 1s over 30 days is 2.6 million windows
    st, body = query(tally.port, "SELECT count(speed) FROM traffic WHERE time >= '2023-10-01T00:00:00Z'"
                     " AND time < '2023-10-31T00:00:00Z' GROUP BY time(1s)")
    err = json.loads(body)["results"][0].get("error", "")
    check("2592000 windows x 1 aggregates" in err and "max-select-buckets" in err,
          "window limit: %s" % body)
    # 200,000 windows are fine alone, not as 6 aggregates
    q = ("SELECT %s FROM traffic WHERE time >= '2023-11-14T00:00:00Z' AND time < "
         "'2023-11-16T07:33:20Z' GROUP BY time(1s) fill(none)")
    st, body = query(tally.port, q % "count(speed)")
    vals = json.loads(body)["results"][0]["series"][0]["values"]
    secs = {}
    for e in events:
        secs[e[1] // NS] = secs.get(e[1] // NS, 0) + 1
    check(sorted(vals) == sorted([fmt_time(t * NS, None), n] for t, n in secs.items()),
          "200,000 windows of 1s, window by window: %d rows, want %d" % (len(vals), len(secs)))
    st, body = query(tally.port, q % ",".join(["count(speed)"] * 6))
    err = json.loads(body)["results"][0].get("error", "")
    check("200000 windows x 6 aggregates" in err, "6 aggregates: %s" % body[:300])
    st, body = query(tally.port, "SELECT count(speed) FROM traffic GROUP BY time(5m)")
    err = json.loads(body)["results"][0].get("error", "")
    check("lower bound on time" in err, "no lower bound: %s" % body)
    # median and percentile need the field's distribution: an error
    # naming the field and how to mark it, never a scan of raw points
    st, body = query(tally.port, "SELECT count(lanes), percentile(lanes, 50) FROM traffic "
                     "WHERE time >= '2023-11-14T00:00:00Z' GROUP BY camera")
    err = json.loads(body)["results"][0].get("error", "")
    check(st == 200 and err.startswith("percentile(\"lanes\"): field 'lanes' of table "
                                       "'traffic' is not a distribution (mark it with "
                                       "distributions = traffic.lanes:RESOLUTION)"),
          "percentile of a field without a distribution: %s" % body)
    # 64,800 windows of 1m x 5 cameras: past the bound on distributions
    st, body = query(tally.port, "SELECT median(speed) FROM traffic WHERE time >= "
                     "'2023-10-01T00:00:00Z' AND time < '2023-11-15T00:00:00Z' GROUP BY time(1m)")
    err = json.loads(body)["results"][0].get("error", "")
    check("64800 windows x 5 keys x 1 fields" in err and "200000 distributions" in err,
          "the distribution bound: %s" % body)
    step("statement errors, not executed, database required, window limit, distributions")
    st, body = query(tally.port, "SHOW DATABASES")
    check(json.loads(body)["results"][0]["series"] ==
          [{"name": "databases", "columns": ["name"], "values": [["tally"]]}], body)
    load(tally.port, ["roads,road=M1,lane=2 speed=70 %d\n" % (T0 * NS)])
    st, body = query(tally.port, "SHOW TAG VALUES FROM roads WITH KEY = \"lane\"")
    err = json.loads(body)["results"][0].get("error", "")
    check("key tag \"road\" only, not of \"lane\"" in err, "a tag not the key: %s" % body)
    st, body = query(tally.port, "SHOW TAG KEYS FROM roads")
    check(json.loads(body)["results"][0]["series"][0]["values"] == [["lane"], ["road"]], body)
    step("SHOW DATABASES, and the values of a tag that is not the key tag")
    # with a time range: the keys with events in it (InfluxDB answers by
    # whole shards of 7 days, so this is checked against the model)
    lo, hi = T0 * NS + 3 * 3600 * NS, T0 * NS + 3 * 3600 * NS + 240 * NS
    st, body = query(tally.port, "SHOW TAG VALUES FROM traffic WITH KEY = \"camera\" WHERE "
                     "time >= %d AND time < %d" % (lo, hi))
    want = sorted({e[0] for e in events if lo <= e[1] < hi})
    check(0 < len(want) < len(CAMERAS), "the range should hold some cameras: %s" % want)
    got = json.loads(body)["results"][0]["series"][0]["values"]
    check(got == [["camera", k] for k in want], "SHOW TAG VALUES in a range: %s, want %s" % (got, want))


def tag_lines():
    """(lines, model) for tables keyed by several tags: road by camera+lane
    (dir a tag kept only in the raw events), hosts by every tag. model maps
    each table to a list of (tags dict, ns)."""
    rnd = random.Random(19)
    lines, m = [], {"road": [], "hosts": []}
    pairs = [("KV1", "1"), ("KV1", "2"), ("KV1", "3"), ("KV2", "2"), ("KV3", "1"),
             ("KV3", "3"), ("KV4", "1"), ("K,V=5", "2")]
    for i in range(300):
        cam, lane = rnd.choice(pairs)
        t = T0 * NS + rnd.randrange(0, 86400) * NS + i
        d = rnd.choice("ns")
        lines.append("road,camera=%s,lane=%s,dir=%s speed=%d %d" %
                     (cam.replace(",", "\\,").replace("=", "\\="), lane, d, rnd.randint(30, 130), t))
        m["road"].append(({"camera": cam, "lane": lane}, t))
    for i in range(60):
        tags = {"host": "h%d" % rnd.randint(1, 4), "dc": rnd.choice(["eu", "us"])}
        if rnd.random() < 0.3:
            tags["rack"] = "r%d" % rnd.randint(1, 2)
        t = T0 * NS + rnd.randrange(0, 86400) * NS
        lines.append("hosts,%s usage=%d %d" % (",".join("%s=%s" % kv for kv in sorted(tags.items())),
                                               rnd.randint(0, 100), t))
        m["hosts"].append((tags, t))
    # past a page of the catalog (1024 keys): the last keys' values too
    for i in range(1100):
        tags = {"host": "b%04d" % i, "dc": "zz" if i == 1099 else "eu"}
        t = T0 * NS + i * NS
        lines.append("hosts,dc=%s,host=%s usage=1 %d" % (tags["dc"], tags["host"], t))
        m["hosts"].append((tags, t))
    return "\n".join(lines) + "\n", m


def tag_values_model(m, table, keys, where=lambda tags: True, lo=None, hi=None):
    """SHOW TAG VALUES' rows: (tag, value) of every selected tag, sorted."""
    out = set()
    for tags, t in m[table]:
        if where(tags) and (lo is None or lo <= t < hi):
            out |= {(k, v) for k, v in tags.items() if k in keys}
    return [list(kv) for kv in sorted(out)]


def mode_tags(tmp, tally, events, batches):
    """SHOW TAG VALUES of tables keyed by several tags (road=camera+lane)
    and by every tag (hosts=*): each key tag's distinct values, as a real
    InfluxDB 1.6 lists them and as the model says."""
    if not os.access("/usr/bin/influxd", os.X_OK):
        print("SKIP: influxd (Debian influxdb) is not installed")
        sys.exit(77)
    text, m = tag_lines()
    st, body = http(tally.port, "/write?db=tally", text.encode())
    check(st == 204, "write: %d %s" % (st, body))
    step("starting influxd")
    ref = Influx(tmp)
    try:
        load(ref.port, [text])
        cases = [
            ("SHOW TAG VALUES FROM road WITH KEY = \"lane\"", "road", {"lane"}, None),
            ("SHOW TAG VALUES FROM road WITH KEY IN (\"camera\", \"lane\")", "road",
             {"camera", "lane"}, None),
            ("SHOW TAG VALUES FROM \"road\" WITH KEY =~ /^(camera|lane)$/", "road",
             {"camera", "lane"}, None),
            ("SHOW TAG VALUES FROM road WITH KEY = \"lane\" WHERE camera = 'KV3'", "road",
             {"lane"}, lambda g: g["camera"] == "KV3"),
            ("SHOW TAG VALUES FROM road WITH KEY = \"camera\" WHERE lane = '1' OR lane = '2'",
             "road", {"camera"}, lambda g: g["lane"] in ("1", "2")),
            ("SHOW TAG VALUES FROM road WITH KEY IN (camera, \"lane\") WHERE camera =~ /^KV[12]$/ "
             "AND lane != '1'", "road", {"camera", "lane"},
             lambda g: g["camera"] in ("KV1", "KV2") and g["lane"] != "1"),
            ("SHOW TAG VALUES FROM road WITH KEY IN (\"lane\", \"camera\", \"nothere\") "
             "LIMIT 3 OFFSET 2", "road", {"camera", "lane"}, None),
            ("SHOW TAG VALUES FROM road WITH KEY = \"nothere\"", "road", set(), None),
            ("SHOW TAG VALUES FROM hosts WITH KEY = \"dc\"", "hosts", {"dc"}, None),
            ("SHOW TAG VALUES FROM hosts WITH KEY != \"dc\"", "hosts", {"host", "rack"}, None),
            ("SHOW TAG VALUES FROM hosts WITH KEY !~ /^(dc|host)$/", "hosts", {"rack"}, None),
            ("SHOW TAG VALUES FROM hosts WITH KEY = \"rack\" WHERE host = 'h2'", "hosts",
             {"rack"}, lambda g: g["host"] == "h2"),
            ("SHOW TAG VALUES WITH KEY = \"lane\"", "road", {"lane"}, None),
        ]
        for q, table, keys, where in cases:
            a, b = query(tally.port, q), query(ref.port, q)
            check(a[0] == b[0] == 200, "%s: status %d, InfluxDB %d" % (q, a[0], b[0]))
            same(json.loads(a[1]), json.loads(b[1]), q)
            want = tag_values_model(m, table, keys, where or (lambda g: True))
            if "LIMIT 3 OFFSET 2" in q:
                want = want[2:5]
            got = series_of(json.loads(a[1]))
            check(got == ([{"name": table, "columns": ["key", "value"], "values": want}]
                          if want else []), "%s: %s, model %s" % (q, got, want))
        step("%d SHOW TAG VALUES of keys of several tags equal InfluxDB's and the model"
             % len(cases))
    finally:
        ref.stop()
    # a time range: the values in the keys with events in it (InfluxDB
    # answers by whole shards of 7 days, so against the model only)
    lo, hi = T0 * NS + 6 * 3600 * NS, T0 * NS + 6 * 3600 * NS + 1200 * NS
    q = ("SHOW TAG VALUES FROM road WITH KEY IN (\"camera\", \"lane\") WHERE time >= %d AND "
         "time < %d" % (lo, hi))
    got = series_of(json.loads(query(tally.port, q)[1]))
    want = tag_values_model(m, "road", {"camera", "lane"}, lo=lo, hi=hi)
    full = tag_values_model(m, "road", {"camera", "lane"})
    check(want and len(want) < len(full), "the 20 minutes should hold some keys: %s" % want)
    check(got == [{"name": "road", "columns": ["key", "value"], "values": want}],
          "%s: %s, model %s" % (q, got, want))
    # dir is a tag of the raw events only: refused by name, not guessed
    st, body = query(tally.port, "SHOW TAG VALUES FROM road WITH KEY IN (\"lane\", \"dir\")")
    err = json.loads(body)["results"][0].get("error", "")
    check("\"road\"'s key tag \"camera+lane\" only, not of \"dir\"" in err,
          "a tag outside the key: %s" % body)
    step("SHOW TAG VALUES in a time range, and a tag outside the key refused")


def main():
    tmp = tempfile.mkdtemp(prefix="tally-influxql-")
    tally = None
    try:
        events, batches = generate()
        tally = Tally(tmp)
        load(tally.port, batches, "--flush-interval" in os.environ.get("TALLYD_EXTRA", ""))
        step("tallyd holds %d events (%d late)" % (len(events), batches[1].count("\n")))
        {"influxdb": mode_influxdb, "cli": mode_cli, "py": mode_py,
         "errors": mode_errors, "tags": mode_tags}[MODE](tmp, tally, events, batches)
    finally:
        if tally:
            tally.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print("PASS")


if __name__ == "__main__":
    main()
