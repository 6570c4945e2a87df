#!/usr/bin/python3
"""http_test.py — tallyd's HTTP port with real clients, and its limits.

    tests/server/http_test.py TALLYD TALLY MODE

MODE curl: curl and raw sockets against the HTTP port (gzip, chunked,
pipelined, 100-continue, 431, 413, bad chunks, bad gzip, malformed request
lines, a slowloris, tokens, a client that pipelines and never reads) and
an HTTP request sent to the line-protocol port.
MODE influxdb-py: python3-influxdb's write_points through v1, and the same
client pointed at the line-protocol port (an error, nothing stored).
MODE node: @influxdata/influxdb-client through v2 with gzip, and
@questdb/nodejs-client over HTTP (tests/server/http_clients.mjs).
MODE events: JSON events through POST /api/v1/events (curl): the default
camera mapping and a json-map of the test's, arrays, NDJSON and gzip,
refused events named by index and byte offset with the rest written, an
engine refusal mapped back to its event; GET /metrics counting them.
MODE prometheus: a real Prometheus (Debian's) scrapes /metrics from a
config the test writes; its query API must give back tallyd's figures.

$TALLYD_EXTRA adds flags ("--io epoll": the same on the epoll loop).
Each starts its own tallyd on free ports of 127.0.0.1 (--port 0,
--http-port 0, port files) in a temporary directory and stops it by PID.
After each writer, tally's answers (the tally client's query agg and keys
on the line-protocol port) equal a brute-force model of what was sent.
Exits 77 (skipped) only when the mode's client is not installed.
"""
import gzip
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

TALLYD, TALLY, MODE = sys.argv[1], sys.argv[2], sys.argv[3]
HERE = os.path.dirname(os.path.abspath(__file__))
TOKEN = "http-test-token-0123"
T0 = 1699920000  # 2023-11-14T00:00:00Z
DAY = "2023-11-14"


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


START = time.monotonic()


def step(what):
    print("%6.2fs %s" % (time.monotonic() - START, what), flush=True)


def check(cond, msg):
    if not cond:
        fail(msg)


class Server:
    """tallyd on free ports, in its own directory, stopped by its PID."""

    def __init__(self, *extra, reuse=None):
        """reuse: a stopped Server whose directory (and data) this one takes."""
        self.dir = reuse.dir if reuse else tempfile.mkdtemp(prefix="tally-http-")
        for f in ("port", "http-port"):
            if os.path.exists(os.path.join(self.dir, f)):
                os.unlink(os.path.join(self.dir, f))
        self.log = os.path.join(self.dir, "tallyd.log")
        pf, hpf = os.path.join(self.dir, "port"), os.path.join(self.dir, "http-port")
        args = [TALLYD, "--data", os.path.join(self.dir, "data"), "--port", "0", "--port-file", pf,
                "--http-port", "0", "--http-port-file", hpf, "--prefault", "off", "--shards", "2",
                "--log-level", "warn", "--token", TOKEN, "--sync-interval", "1s"] + list(extra) + \
            os.environ.get("TALLYD_EXTRA", "").split()
        with open(self.log, "w") as lf:
            self.proc = subprocess.Popen(args, stdout=lf, stderr=lf, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not (os.path.exists(pf) and os.path.getsize(pf) > 0):
            if self.proc.poll() is not None:
                fail("tallyd exited at start: " + open(self.log).read())
            check(time.monotonic() < deadline, "tallyd did not start in 20 s")
            time.sleep(0.01)
        self.port = int(open(pf).read())
        self.http = int(open(hpf).read())

    def stop(self, keep=False):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                fail("tallyd did not stop within 30 s of SIGTERM")
            check(rc == 0, "tallyd exited with %d: %s" % (rc, open(self.log).read()))
        if not keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def rss_kib(self):
        for line in open("/proc/%d/status" % self.proc.pid):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def query(self, *args):
        env = dict(os.environ, TALLY_TOKEN=TOKEN)
        r = subprocess.run([TALLY, "--port", str(self.port), "--csv", "-q", "query"] + list(args),
                           capture_output=True, text=True, env=env, timeout=60)
        check(r.returncode == 0, "tally query %s: %s%s" % (args, r.stdout, r.stderr))
        return [line.split(",") for line in r.stdout.strip().split("\n")[1:] if line]

    def absent(self, table):
        """Whether the table holds nothing (or does not exist)."""
        env = dict(os.environ, TALLY_TOKEN=TOKEN)
        r = subprocess.run([TALLY, "--port", str(self.port), "--csv", "-q", "query", "keys", table, "speed",
                            "1970-01-01", "100000d"], capture_output=True, text=True, env=env, timeout=60)
        if r.returncode != 0:
            return "no table '%s'" % table in r.stdout + r.stderr
        return r.stdout.strip().count("\n") == 0

    def stats(self):
        """#!stats as a dict of integers."""
        env = dict(os.environ, TALLY_TOKEN=TOKEN)
        r = subprocess.run([TALLY, "--port", str(self.port), "--csv", "stats"], capture_output=True,
                           text=True, env=env, timeout=60)
        check(r.returncode == 0, "tally stats: %s%s" % (r.stdout, r.stderr))
        rows = [line.split(",") for line in r.stdout.strip().split("\n")[1:] if "," in line]
        return {k: int(v) for k, v in rows}

    def check_model(self, table, model, what):
        """model: key -> list of speeds; checks every key's agg and the key
        count over the day."""
        for key, vals in model.items():
            rows = self.query("agg", table, "speed", key, DAY, "1d")
            check(len(rows) == 1, "%s: agg %s/%s: %s" % (what, table, key, rows))
            count, total, lo, hi = int(rows[0][0]), float(rows[0][1]), float(rows[0][2]), float(rows[0][3])
            want = (len(vals), sum(vals), min(vals), max(vals))
            check(count == want[0] and abs(total - want[1]) <= 1e-9 * max(1, abs(want[1]))
                  and lo == want[2] and hi == want[3],
                  "%s: %s/%s: got count,sum,min,max %s, want %s" % (what, table, key, rows[0], want))
        keys = self.query("keys", table, "speed", DAY, "1d")
        check(len(keys) == len(model), "%s: %s has %d keys, want %d" % (what, table, len(keys), len(model)))


def wait_model(srv, table, model, what):
    """Writes answered 204 are durable and visible; a few retries cover
    only the clients that do not wait for the answer."""
    srv.check_model(table, model, what)


def lines_for(table, n, seed, prec_mul=1, off=0):
    """n lines over keys K0..K4 of table, one a second from T0 + off;
    returns (text, model)."""
    model, out = {}, []
    for i in range(n):
        key = "K%d" % ((i * 7 + seed) % 5)
        v = ((i * 37 + seed) % 1000) / 4
        model.setdefault(key, []).append(v)
        out.append("%s,camera=%s speed=%r,lane=%di %d" % (table, key, v, i % 3, (T0 + off + i) * prec_mul))
    return "\n".join(out) + "\n", model


def curl(srv, path, *args, data=None, token=True, port=None):
    """Runs curl; returns (status, headers+body text, stderr)."""
    url = "http://127.0.0.1:%d%s" % (port or srv.http, path)
    cmd = ["curl", "-sS", "-i", "--max-time", "60"]
    if token:
        cmd += ["-H", "Authorization: Token " + TOKEN]
    cmd += list(args) + [url]
    r = subprocess.run(cmd, input=data, capture_output=True, timeout=90)
    out = r.stdout.decode("utf-8", "replace")
    m = re.findall(r"^HTTP/1\.1 (\d{3})", out, re.M)
    return (int(m[-1]) if m else 0), out, r.stderr.decode("utf-8", "replace")


def raw(port, data, timeout=20):
    """Sends data on one connection, half-closes, reads until the server
    closes; returns what it sent back."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    got = b""
    while True:
        try:
            b = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            break
        if not b:
            break
        got += b
    s.close()
    return got


def responses(data):
    """Splits pipelined responses: list of (status, body)."""
    out, i = [], 0
    while i < len(data):
        e = data.find(b"\r\n\r\n", i)
        if e < 0:
            break
        head = data[i:e].decode()
        status = int(head.split(" ", 2)[1])
        m = re.search(r"^Content-Length: (\d+)", head, re.M | re.I)
        n = int(m.group(1)) if m else 0
        out.append((status, data[e + 4:e + 4 + n]))
        i = e + 4 + n
    return out


def post(path, body, extra=b""):
    return (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: t\r\nAuthorization: Token " + TOKEN.encode() +
            b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body)


# ---------------------------------------------------------------- curl mode

def mode_curl():
    if not shutil.which("curl"):
        print("skipped: curl is not installed")
        sys.exit(77)
    srv = Server()
    try:
        st, out, _ = curl(srv, "/ping", token=False)
        check(st == 204 and "X-Influxdb-Version:" in out, "ping: %d %s" % (st, out))
        st, out, _ = curl(srv, "/health", token=False)
        check(st == 200 and '"status":"pass"' in out, "health: %s" % out)
        st, out, _ = curl(srv, "/ready", token=False)
        check(st == 200 and '"status":"ready"' in out, "ready: %s" % out)
        st, out, _ = curl(srv, "/no/such", token=True)
        check(st == 404 and '"error"' in out, "unknown path: %s" % out)
        st, out, _ = curl(srv, "/write", "-X", "GET")
        check(st == 405, "GET /write: %s" % out)

        # gzip body through v2 (ms precision)
        text, model = lines_for("gz", 3000, 1, 1000)
        st, out, _ = curl(srv, "/api/v2/write?org=o&bucket=b&precision=ms", "-H", "Content-Encoding: gzip",
                          "--data-binary", "@-", data=gzip.compress(text.encode()))
        check(st == 204, "gzip write: %s" % out)
        wait_model(srv, "gz", model, "curl gzip")
        step("gzip")

        # chunked body through v1 (s precision)
        text, model = lines_for("ch", 2000, 2)
        st, out, _ = curl(srv, "/write?db=x&precision=s", "-H", "Transfer-Encoding: chunked",
                          "--data-binary", "@-", data=text.encode())
        check(st == 204, "chunked write: %s" % out)
        wait_model(srv, "ch", model, "curl chunked")

        # Expect: 100-continue: the interim answer, then 204
        text, model = lines_for("ex", 500, 3)
        st, out, err = curl(srv, "/write?precision=s", "-v", "-H", "Expect: 100-continue",
                            "--data-binary", "@-", data=text.encode())
        check(st == 204 and "HTTP/1.1 100 Continue" in out + err, "100-continue: %s %s" % (out, err))
        wait_model(srv, "ex", model, "curl 100-continue")

        # a pipelined pair on one connection: both answered, in order
        a, ma = lines_for("pp", 300, 4)
        b, mb = lines_for("pp", 300, 5, off=1000)
        got = responses(raw(srv.http, post("/write?precision=s", a.encode()) +
                            post("/write?precision=s", b.encode(), b"Connection: close\r\n")))
        check([r[0] for r in got] == [204, 204], "pipelined pair: %s" % got)
        for k, v in mb.items():
            ma.setdefault(k, []).extend(v)
        wait_model(srv, "pp", ma, "pipelined pair")

        # Bad lines: the good ones are written, 400 names the bad ones.
        st, out, _ = curl(srv, "/api/v2/write?precision=s", "--data-binary", "@-",
                          data=("pl,camera=A speed=1 %d\npl,camera=A speed=oops %d\npl,camera=A speed=3 %d\n"
                                % (T0, T0 + 1, T0 + 2)).encode())
        body = json.loads(out.split("\r\n\r\n", 1)[1])
        check(st == 400 and body["code"] == "invalid" and "line 2" in body["message"]
              and body["accepted"] == 2 and body["rejected"] == 1, "partial write: %s" % out)
        wait_model(srv, "pl", {"A": [1.0, 3.0]}, "partial write")
        st, out, _ = curl(srv, "/write?precision=s", "--data-binary", "@-", data=b"bad\n")
        check(st == 400 and '"error":"partial write' in out, "v1 error shape: %s" % out)

        # Tokens: wrong and missing are 401; every accepted form writes.
        st, out, _ = curl(srv, "/write", "-H", "Authorization: Token wrong", "--data-binary", "x a=1",
                          token=False)
        check(st == 401, "wrong token: %s" % out)
        st, out, _ = curl(srv, "/api/v2/write", "--data-binary", "x a=1", token=False)
        check(st == 401 and '"code":"unauthorized"' in out, "no token: %s" % out)
        # Regression: a refused request without a body was served all the
        # same once the refusal was sent (401, then /metrics' 200).
        got = raw(srv.http, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\nGET /ping HTTP/1.1\r\nHost: t\r\n\r\n")
        check([st for st, _ in responses(got)] == [401, 204],
              "a refused GET must be answered once: %r" % got[:400])
        forms = [["-H", "Authorization: Bearer " + TOKEN], ["-u", "anyone:" + TOKEN]]
        for i, f in enumerate(forms):
            st, out, _ = curl(srv, "/write?precision=s", *f, "--data-binary",
                              "tk,camera=T speed=%d %d" % (i, T0 + i), token=False)
            check(st == 204, "token form %s: %s" % (f[0], out))
        st, out, _ = curl(srv, "/write?precision=s&u=x&p=" + TOKEN, "--data-binary",
                          "tk,camera=T speed=2 %d" % (T0 + 2), token=False)
        check(st == 204, "p= token: %s" % out)
        wait_model(srv, "tk", {"T": [0.0, 1.0, 2.0]}, "token forms")
        step("pipelining, bad lines, tokens")

        # Limits and malformed input: each answered, nothing stored.
        st, out, _ = curl(srv, "/write", "-H", "X-Big: " + "a" * 20000, "--data-binary", "bad a=1")
        check(st == 431, "oversized head: %s" % out[:200])
        got = raw(srv.http, b"GARBAGE\r\n\r\n")
        check(got.startswith(b"HTTP/1.1 400") and b"malformed request line" in got, "malformed: %r" % got)
        got = raw(srv.http, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n")
        check(got.startswith(b"HTTP/1.1 414"), "long request line: %r" % got[:100])
        got = raw(srv.http, b"POST /write HTTP/1.1\r\nHost: t\r\nAuthorization: Token " + TOKEN.encode() +
                  b"\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nbad a\r\nzz\r\n=1\r\n0\r\n\r\n")
        check(got.startswith(b"HTTP/1.1 400") and b"chunk" in got, "bad chunk size: %r" % got)
        gz = gzip.compress(b"bad,camera=G speed=1 1\n" * 1000)
        st, out, _ = curl(srv, "/write", "-H", "Content-Encoding: gzip", "--data-binary", "@-",
                          data=gz[:len(gz) // 2])
        check(st == 400 and "truncated gzip" in out, "truncated gzip: %s" % out)
        bad = bytearray(gz)
        for i in range(20, 40):
            bad[i] ^= 0x55
        st, out, _ = curl(srv, "/write", "-H", "Content-Encoding: gzip", "--data-binary", "@-", data=bytes(bad))
        check(st == 400 and "gzip" in out, "corrupt gzip: %s" % out)
        check(srv.absent("bad"), "bad input stored rows")

        # An HTTP request on the line-protocol port: 400 naming the HTTP
        # port, nothing stored.
        st, out, _ = curl(srv, "/write?db=x", "--data-binary", "lpp,camera=Z speed=1", port=srv.port)
        check(st == 400 and ("port %d" % srv.http) in out, "HTTP on the TCP port: %s" % out)
        check(srv.absent("lpp"), "HTTP on the TCP port stored rows")
        check("line-protocol port" in open(srv.log).read(), "HTTP on the TCP port was not logged")
        st = srv.stats()
        check(st["http_on_line_protocol_port"] == 1 and st["http_gzip_bodies"] == 3
              and st["http_requests"] >= 20 and st["http_errors"] >= 10
              and st["http_lines_accepted"] >= 5800 and st["http_lines_rejected"] >= 2,
              "#!stats: %s" % {k: v for k, v in st.items() if k.startswith("http")})

        step("limits and malformed input")
        never_reading_client(srv)
        step("a client that pipelines and never reads")
    finally:
        srv.stop()

    # Small limits: 413 for a body too large, before and after gzip; 408
    # for a head that comes too slowly.
    srv = Server("--http-max-body-bytes", "64KiB", "--http-header-timeout", "1s")
    try:
        st, out, _ = curl(srv, "/write", "--data-binary", "@-", data=b"x a=1\n" * 20000)
        check(st == 413, "oversized body: %s" % out)
        st, out, _ = curl(srv, "/write", "-H", "Content-Encoding: gzip", "--data-binary", "@-",
                          data=gzip.compress(b"x a=1\n" * 100000))
        check(st == 413 and "decompressed" in out, "oversized gzip body: %s" % out)
        st, out, _ = curl(srv, "/write", "-H", "Transfer-Encoding: chunked", "--data-binary", "@-",
                          data=b"x a=1\n" * 20000)
        check(st == 413, "oversized chunked body: %s" % out)
        # slowloris: a head dribbled a line every 0.2 s
        s = socket.create_connection(("127.0.0.1", srv.http), timeout=30)
        s.sendall(b"POST /write HTTP/1.1\r\n")
        got, t = b"", time.monotonic()
        try:
            while time.monotonic() - t < 25:
                s.sendall(b"X-Slow: 1\r\n")
                time.sleep(0.2)
        except (BrokenPipeError, ConnectionResetError):
            pass
        s.settimeout(10)
        try:
            while True:
                b = s.recv(4096)
                if not b:
                    break
                got += b
        except (ConnectionResetError, socket.timeout):
            pass
        s.close()
        check(got.startswith(b"HTTP/1.1 408"), "slowloris: %r" % got[:200])
        step("slowloris")
        check(srv.stats()["http_header_timeouts"] == 1, "the slowloris was not counted")
        check(time.monotonic() - t < 25, "slowloris was not cut off")
    finally:
        srv.stop()
    sigterm_keeps_every_answered_write()
    step("SIGTERM during writes")
    print("curl: every check passed")


def sigterm_keeps_every_answered_write():
    """Writes stream on a keep-alive connection while tallyd gets SIGTERM:
    after a restart on the same data, every write answered 204 is there,
    and every write is there whole or not at all."""
    srv = Server()
    acked, stop = [0], [False]

    def writer():
        s = socket.create_connection(("127.0.0.1", srv.http), timeout=30)
        buf, i = b"", 0
        try:
            while not stop[0]:
                body = "".join("st,camera=S speed=1 %d\n" % (T0 + i * 100 + k) for k in range(100))
                s.sendall(post("/write?precision=s", body.encode()))
                while b"\r\n\r\n" not in buf:
                    b = s.recv(65536)
                    if not b:
                        return
                    buf += b
                head, buf = buf.split(b"\r\n\r\n", 1)
                m = re.search(rb"Content-Length: (\d+)", head)
                n = int(m.group(1)) if m else 0
                while len(buf) < n:
                    b = s.recv(65536)
                    if not b:
                        return
                    buf += b
                buf = buf[n:]
                if not head.startswith(b"HTTP/1.1 204"):
                    return
                acked[0] += 1
                i += 1
        except OSError:
            return

    th = threading.Thread(target=writer)
    th.start()
    deadline = time.monotonic() + 30
    while acked[0] < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    check(acked[0] >= 20, "writes were not answered")
    srv.proc.send_signal(signal.SIGTERM)
    th.join(60)
    stop[0] = True
    srv.stop(keep=True)
    again = Server(reuse=srv)
    try:
        rows = again.query("agg", "st", "speed", "S", DAY, "1000d")
        count = int(rows[0][0]) if rows else 0
        check(count >= 100 * acked[0] and count % 100 == 0,
              "after SIGTERM: %d rows, %d writes answered 204 (100 rows each)" % (count, acked[0]))
    finally:
        again.stop()


def never_reading_client(srv):
    """Pipelines pings without reading: the server stops reading (its
    memory stays bounded), and once the client reads, every request has
    its answer, in order."""
    req = b"GET /ping HTTP/1.1\r\nHost: t\r\n\r\n"
    s = socket.create_connection(("127.0.0.1", srv.http))
    s.setblocking(False)
    rss0 = srv.rss_kib()
    sent, stalled_since, chunk = 0, None, req * 2048
    t = time.monotonic()
    while time.monotonic() - t < 60:
        try:
            n = s.send(chunk)
            sent += n
            stalled_since = None
            rest = chunk[n:]  # the start of a request, or nothing
            chunk = rest + req * (2048 - len(rest) // len(req))
        except BlockingIOError:
            if stalled_since is None:
                stalled_since = time.monotonic()
            elif time.monotonic() - stalled_since > 2:
                break
            time.sleep(0.01)
    step("sent %d bytes of pings until the server pushed back" % sent)
    check(stalled_since is not None, "the server read %d bytes of pipelined pings without pushing back" % sent)
    grew = srv.rss_kib() - rss0
    check(grew < 64 * 1024, "tallyd grew %d KiB under a client that never reads" % grew)
    # Read every answer (in a thread: the server reads the rest only as
    # its answers are read), finish the last partial request, close.
    s.setblocking(True)
    s.settimeout(60)
    parts = []

    def reader():
        while True:
            b = s.recv(1 << 20)
            if not b:
                break
            parts.append(b)

    th = threading.Thread(target=reader)
    th.start()
    rest = sent % len(req)
    if rest:
        s.sendall(req[rest:])
        sent += len(req) - rest
    s.shutdown(socket.SHUT_WR)
    th.join(90)
    check(not th.is_alive(), "never-reading client: the answers did not end")
    got = b"".join(parts)
    s.close()
    n = got.count(b"HTTP/1.1 204 No Content\r\n")
    check(n == sent // len(req), "never-reading client: %d answers to %d requests; the last bytes: %r"
          % (n, sent // len(req), got[-300:]))


# ---------------------------------------------------------------- influxdb-py mode

def mode_influxdb_py():
    try:
        from influxdb import InfluxDBClient
        from influxdb.exceptions import InfluxDBClientError
    except ImportError:
        print("skipped: python3-influxdb is not installed")
        sys.exit(77)
    srv = Server()
    try:
        cli = InfluxDBClient(host="127.0.0.1", port=srv.http, username="tally", password=TOKEN,
                             database="ignored", timeout=30)
        check(cli.ping(), "ping returned no version")
        model, points = {}, []
        for i in range(5000):
            key = "PY%d" % (i % 7)
            v = ((i * 13) % 997) / 4
            model.setdefault(key, []).append(v)
            points.append({"measurement": "py", "tags": {"camera": key},
                           "fields": {"speed": v, "plate": "P-%d" % i}, "time": T0 + i})
        check(cli.write_points(points, time_precision="s", batch_size=1000), "write_points failed")
        wait_model(srv, "py", model, "python3-influxdb v1")
        # the same client pointed at the line-protocol port: an error,
        # nothing stored
        bad = InfluxDBClient(host="127.0.0.1", port=srv.port, username="tally", password=TOKEN,
                             database="ignored", timeout=10, retries=1)
        try:
            bad.write_points([{"measurement": "pybad", "tags": {"camera": "X"}, "fields": {"speed": 1.0},
                               "time": T0}], time_precision="s")
            fail("write_points to the line-protocol port succeeded")
        except InfluxDBClientError as e:
            check(e.code == 400 and "port %d" % srv.http in str(e.content), "error: %s" % e)
        check(srv.absent("pybad"), "the line-protocol port stored an HTTP client's rows")
    finally:
        srv.stop()
    print("python3-influxdb: every check passed")


# ---------------------------------------------------------------- node mode

def mode_node():
    nm = os.path.join(HERE, "node_modules")
    if not shutil.which("node") or not os.path.isdir(os.path.join(nm, "@influxdata/influxdb-client")) \
            or not os.path.isdir(os.path.join(nm, "@questdb/nodejs-client")):
        print("skipped: node or the client packages are not installed (run tools/setup)")
        sys.exit(77)
    srv = Server()
    try:
        for client, table, n in (("influx", "nv2", 20000), ("questdb", "qhttp", 5000)):
            r = subprocess.run(["node", os.path.join(HERE, "http_clients.mjs"), client, str(srv.http), TOKEN,
                                table, str(n)], capture_output=True, text=True, timeout=120)
            check(r.returncode == 0, "%s client: %s%s" % (client, r.stdout, r.stderr))
            model = {}
            for i in range(n):
                model.setdefault("N%d" % (i % 11), []).append(((i * 29) % 1001) / 4)
            wait_model(srv, table, model, client)
    finally:
        srv.stop()
    print("node clients: every check passed")


# ---------------------------------------------------------------- events mode

def iso(t):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def camera_events(n, seed, off=0):
    """n camera events (the default mapping's shape) over cameras C0..C3;
    returns (list of dicts, model camera -> speeds)."""
    model, evs = {}, []
    for i in range(n):
        cam = "C%d" % ((i * 3 + seed) % 4)
        v = ((i * 53 + seed) % 1300) / 10
        model.setdefault(cam, []).append(v)
        evs.append({"kvfv_id": cam, "timestamp": iso(T0 + off + i), "vehicle_speed": v,
                    "plate_number": "A%03dBC" % (i % 1000)})
    return evs, model


def merge(a, b):
    out = {k: list(v) for k, v in a.items()}
    for k, v in b.items():
        out.setdefault(k, []).extend(v)
    return out


def events_post(srv, path, body, *args):
    st, out, _ = curl(srv, path, "-H", "Content-Type: application/json", *args, "--data-binary", "@-",
                      data=body)
    answer = out.split("\r\n\r\n", 1)[-1]
    try:
        return st, json.loads(answer), out
    except ValueError:
        return st, None, out


def metric(text, name, labels=""):
    for line in text.split("\n"):
        if line.startswith(name + labels + " ") or (not labels and line.startswith(name + " ")):
            return float(line.rsplit(" ", 1)[1])
    fail("no %s%s in /metrics" % (name, labels))


def mode_events():
    if not shutil.which("curl"):
        print("skipped: curl is not installed")
        sys.exit(77)
    srv = Server("--json-map", "cams: key=id>camera, time=t, time-unit=ms, fields=v>speed, "
                               "tags=lane, unknown=reject",
                 "--json-map", "clash: key=id>camera, time=t, time-unit=s, fields=v>speed")
    try:
        # An array of camera events, the default mapping (table traffic).
        evs, model = camera_events(1000, 1)
        st, ans, out = events_post(srv, "/api/v1/events?table=traffic", json.dumps(evs).encode())
        check(st == 200 and ans == {"events": 1000, "accepted": 1000, "rejected": 0, "unwritten": 0,
                                    "errors": []}, "array: %s" % out)
        # NDJSON, gzip-compressed.
        evs2, model2 = camera_events(700, 2, off=2000)
        nd = "\n".join(json.dumps(e) for e in evs2).encode()
        st, ans, out = events_post(srv, "/api/v1/events?table=traffic", gzip.compress(nd),
                                   "-H", "Content-Encoding: gzip")
        check(st == 200 and ans["accepted"] == 700, "ndjson gzip: %s" % out)
        model = merge(model, model2)
        wait_model(srv, "traffic", model, "events array + ndjson")
        step("events: array, NDJSON, gzip")

        # Bad events in NDJSON: each refused with its index and offset,
        # the others written.
        good, gm = camera_events(6, 3, off=5000)
        lines = [json.dumps(e) for e in good]
        lines.insert(2, '{"kvfv_id":"C1","timestamp":"2023-11-14T03:00:00Z","vehicle_speed":"fast"}')
        lines.insert(4, '{"kvfv_id":"C2","vehicle_speed":50.5}')
        lines.insert(6, '{"kvfv_id":"C3","timestamp":"2023-11-14T03:00:00Z",')
        body = "\n".join(lines).encode()
        st, ans, out = events_post(srv, "/api/v1/events?table=traffic", body)
        check(st == 400 and ans["events"] == 9 and ans["accepted"] == 6 and ans["rejected"] == 3,
              "bad events: %s" % out)
        errs = ans["errors"]
        check([e["event"] for e in errs] == [2, 4, 6], "bad events' indexes: %s" % errs)
        starts = [sum(len(x) + 1 for x in lines[:i]) for i in (2, 4, 6)]
        for e, start, end in zip(errs, starts, [starts[0] + len(lines[2]), starts[1] + len(lines[4]),
                                                 len(body)]):
            check(start <= e["offset"] <= end, "error offset %d outside event [%d, %d]: %s" %
                  (e["offset"], start, end, e))
        check("number" in errs[0]["reason"] and "time" in errs[1]["reason"],
              "reasons: %s" % errs)
        model = merge(model, gm)
        wait_model(srv, "traffic", model, "events with bad ones")
        step("events: bad events named, the rest written")

        # Invalid JSON in an array ends the body; the events before it stay.
        pre, pm = camera_events(3, 4, off=8000)
        body = (json.dumps(pre)[:-1] + ', {"kvfv_id": oops}]').encode()
        st, ans, out = events_post(srv, "/api/v1/events?table=traffic", body)
        check(st == 400 and ans["accepted"] == 3 and "stopped_at" in ans and "invalid JSON" in ans["message"],
              "broken array: %s" % out)
        model = merge(model, pm)

        # The test's own mapping: epoch ms, a tag, unknown members refused;
        # an engine refusal (speed turned string) maps back to its event.
        st, ans, out = events_post(srv, "/api/v1/events?table=cams", (
            '[{"id":"X1","t":%d,"v":10.5,"lane":"2"},{"id":"X1","t":%d,"v":11.5,"extra":1},'
            '{"id":"X2","t":%d,"v":12}]' % (T0 * 1000, T0 * 1000 + 1, T0 * 1000 + 2)).encode())
        check(st == 400 and ans["accepted"] == 2 and [e["event"] for e in ans["errors"]] == [1],
              "cams mapping: %s" % out)
        srv.check_model("cams", {"X1": [10.5], "X2": [12.0]}, "cams")
        # Lines of a table whose speed is an integer: the JSON float clashes.
        st, out, _ = curl(srv, "/write?precision=s", "--data-binary", "@-",
                          data=("clash,camera=Z speed=5i %d\n" % T0).encode())
        check(st == 204, "clash setup: %s" % out)
        st, ans, out = events_post(srv, "/api/v1/events?table=clash", (
            '[{"id":"Z","t":%d,"v":1.5},{"id":"Z","t":%d,"v":2.5},{"id":"Y","t":%d,"v":3.5}]'
            % (T0 + 1, T0 + 2, T0 + 3)).encode())
        check(st == 400 and ans["accepted"] == 0 and [e["event"] for e in ans["errors"]] == [0, 1, 2]
              and all("offset" not in e and "speed" in e["reason"] for e in ans["errors"][:2]),
              "engine refusals as events: %s" % out)
        st, ans, out = events_post(srv, "/api/v1/events?table=clashes", b"[]")
        check(st == 404 and "json-map" in out, "unmapped table: %s" % out)
        st, ans, out = events_post(srv, "/api/v1/events", b"[]")
        check(st == 400 and "table=" in out, "no table=: %s" % out)
        step("events: mappings, unmapped table, no table=")

        # Idempotency-Key: SOURCE/SEQ makes a write a labelled batch,
        # applied at most once however often it is retried.
        a, ma = lines_for("idk", 200, 8)
        b, mb = lines_for("idk", 150, 9, off=500)
        for body, key, dup in ((a, "gw-1/1", False), (a, "gw-1/1", True), (b, "gw-1/2", False),
                               (a, "gw-1/1", True)):
            st, out, _ = curl(srv, "/api/v2/write?precision=s", "-H", "Idempotency-Key: " + key,
                              "--data-binary", "@-", data=body.encode())
            check(st == 204 and ("X-Tally-Duplicate: true" in out) == dup,
                  "labelled write %s (duplicate %s): %s" % (key, dup, out))
        srv.check_model("idk", merge(ma, mb), "labelled writes, retried")
        st, out, _ = curl(srv, "/write?precision=s", "-H", "Idempotency-Key: gw-1/100000",
                          "--data-binary", "@-", data=lines_for("idk2", 3, 1)[0].encode())
        check(st == 204, "far sequence: %s" % out)
        st, out, _ = curl(srv, "/write?precision=s", "-H", "Idempotency-Key: gw-1/3",
                          "--data-binary", "@-", data=lines_for("idk2", 3, 2)[0].encode())
        check(st == 409 and "too old" in out, "a sequence below the window: %s" % out)
        for bad in ("nokey", "/5", "gw/", "gw/12x", "gw/99999999999999999999"):
            st, out, _ = curl(srv, "/write?precision=s", "-H", "Idempotency-Key: " + bad,
                              "--data-binary", "@-", data=b"idk3,camera=A speed=1 1700000000\n")
            check(st == 400 and "Idempotency-Key" in out, "key %r: %s" % (bad, out))
        check(srv.absent("idk3"), "a write with a malformed key was stored")
        evs3, m3 = camera_events(40, 5, off=12000)
        for dup in (False, True):
            st, ans, out = events_post(srv, "/api/v1/events?table=traffic", json.dumps(evs3).encode(),
                                       "-H", "Idempotency-Key: cam-gw/7")
            check(st == 200 and ans.get("duplicate", False) == dup, "labelled events: %s" % out)
        model = merge(model, m3)
        wait_model(srv, "traffic", model, "labelled events, retried")
        step("Idempotency-Key: writes and events applied once")

        # /metrics counts what happened.
        st, out, _ = curl(srv, "/metrics")
        check(st == 200 and "text/plain; version=0.0.4" in out, "metrics: %s" % out[:300])
        text = out.split("\r\n\r\n", 1)[1]
        check(metric(text, "tally_http_requests_total", '{endpoint="/api/v1/events"}') >= 7,
              "events requests not counted")
        check(metric(text, "tally_http_request_errors_total", '{endpoint="/api/v1/events"}') >= 5,
              "events errors not counted")
        check(metric(text, "tally_http_request_duration_seconds_count", '{endpoint="/api/v1/events"}') >= 7,
              "events latency not observed")
        check(metric(text, "tally_wal_sync_duration_seconds_count") >= 1, "WAL syncs not timed")
        stats = srv.stats()
        check(metric(text, "tally_lines_accepted_total") == stats["lines_accepted"],
              "tally_lines_accepted_total differs from #!stats")
        step("metrics")
    finally:
        srv.stop()
    print("events: every check passed")


# ---------------------------------------------------------------- prometheus mode

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def mode_prometheus():
    prom = shutil.which("prometheus")
    if not prom or not shutil.which("curl"):
        print("skipped: prometheus (Debian package) or curl is not installed")
        sys.exit(77)
    srv = Server()
    tmp = tempfile.mkdtemp(prefix="tally-prom-")
    proc = None
    try:
        text, model = lines_for("pm", 1234, 7)
        st, out, _ = curl(srv, "/write?precision=s", "--data-binary", "@-", data=text.encode())
        check(st == 204, "write: %s" % out)
        with open(os.path.join(tmp, "prometheus.yml"), "w") as f:
            f.write("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: tally\n"
                    "    authorization:\n      type: Token\n      credentials: %s\n"
                    "    static_configs:\n      - targets: ['127.0.0.1:%d']\n" % (TOKEN, srv.http))
        port = free_port()
        with open(os.path.join(tmp, "prometheus.log"), "w") as lf:
            proc = subprocess.Popen([prom, "--config.file", os.path.join(tmp, "prometheus.yml"),
                                     "--storage.tsdb.path", os.path.join(tmp, "data"),
                                     "--web.listen-address", "127.0.0.1:%d" % port],
                                    stdout=lf, stderr=lf, stdin=subprocess.DEVNULL)
        want = srv.stats()["lines_accepted"]
        check(want >= 1234, "lines_accepted %d" % want)
        deadline, got, last = time.monotonic() + 90, None, ""
        while time.monotonic() < deadline:
            check(proc.poll() is None, "prometheus exited: %s" %
                  open(os.path.join(tmp, "prometheus.log")).read()[-2000:])
            r = subprocess.run(["curl", "-s", "--max-time", "5",
                                "http://127.0.0.1:%d/api/v1/query?query=tally_lines_accepted_total" % port],
                               capture_output=True, text=True)
            last = r.stdout
            try:
                res = json.loads(r.stdout)["data"]["result"]
                if res:
                    got = float(res[0]["value"][1])
                    if got == want:
                        break
            except (ValueError, KeyError):
                pass
            time.sleep(0.5)
        check(got == want, "Prometheus read tally_lines_accepted_total %s, tallyd says %d (%s)" %
              (got, want, last[:300]))
        r = subprocess.run(["curl", "-s", "--max-time", "5", "-G", "--data-urlencode", 'query=up{job="tally"}',
                            "http://127.0.0.1:%d/api/v1/query" % port], capture_output=True, text=True)
        check('"1"' in r.stdout, "target not up: %s" % r.stdout)
        step("prometheus scraped /metrics")
    finally:
        if proc and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
        srv.stop()
    print("prometheus: every check passed")


if __name__ == "__main__":  # https_test.py imports the helpers
    {"curl": mode_curl, "influxdb-py": mode_influxdb_py, "node": mode_node, "events": mode_events,
        "prometheus": mode_prometheus}[MODE]()
