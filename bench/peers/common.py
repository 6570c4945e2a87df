"""common.py -- what every peer of bench/run shares: its own processes
(started in their own session, stopped by PID only), free ports on
127.0.0.1, HTTP with keep-alive, disk and I/O accounting, latency figures
and the common answer format.

Answer rows, one per bucket / key / raw row, tab-separated:
    qid  label  count  sum  min  max
label is the bucket start in ms, the camera id, "all" for an exact
aggregate, or the event time in ms for a raw row (count 1, sum = min = max
= speed). Rows with count 0 are not written.
"""
import http.client
import json
import os
import signal
import socket
import subprocess
import time
import urllib.parse

# Ports a developer's own ClickHouse may hold: never used, never touched.
RESERVED_PORTS = {8123, 9000, 9009, 9004, 9005, 8443, 9440, 8086, 8088, 8428}

_procs = []  # (Popen, name) started by this run


class PeerUnavailable(Exception):
    """The peer cannot run here; the message says why."""


def log(msg):
    print("bench/run: " + msg, flush=True)


def deb_version(pkg):
    """The installed Debian package's version, or ""."""
    try:
        return subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True,
                              text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def free_port():
    """A port nothing listens on now (bound once by us on 127.0.0.1)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in RESERVED_PORTS:
            return port
    raise RuntimeError("no free port found")


def start(name, argv, log_path, env=None, cwd=None):
    """Starts a server process in its own session; output to log_path."""
    out = open(log_path, "ab")
    try:
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, env=env, cwd=cwd)
    except FileNotFoundError as e:
        out.close()
        raise PeerUnavailable("%s: %s not found" % (name, argv[0])) from e
    out.close()
    _procs.append((p, name))
    return p


def stop(p, timeout=20.0):
    """Stops one process we started: SIGTERM, then SIGKILL after timeout.
    Only that PID is signalled."""
    if p is None or p.poll() is not None:
        return
    try:
        os.kill(p.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(timeout=10)
    for i, (q, _) in enumerate(_procs):
        if q is p:
            del _procs[i]
            break


def stop_all():
    for p, _ in list(_procs):
        stop(p, timeout=10)


def wait_http(port, path, ok=(200, 204), timeout=60.0, proc=None, what="server"):
    t0 = time.time()
    last = None
    while time.time() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("%s exited with %s during start-up" % (what, proc.returncode))
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            c.close()
            if r.status in ok:
                return time.time() - t0
            last = "HTTP %d" % r.status
        except OSError as e:
            last = str(e)
        time.sleep(0.1)
    raise RuntimeError("%s did not answer on port %d within %.0f s (%s)" % (what, port, timeout, last))


class Http:
    """One keep-alive connection to 127.0.0.1:port."""

    def __init__(self, port, timeout=600):
        self.port = port
        self.timeout = timeout
        self.c = None

    def request(self, method, path, body=None, headers=None):
        for attempt in (0, 1):
            if self.c is None:
                self.c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                self.c.request(method, path, body=body, headers=headers or {})
                r = self.c.getresponse()
                data = r.read()
                return r.status, data
            except (http.client.HTTPException, ConnectionError, BrokenPipeError):
                self.c.close()
                self.c = None
                if attempt:
                    raise
        raise RuntimeError("unreachable")

    def get(self, path, params=None):
        if params:
            path += "?" + urllib.parse.urlencode(params)
        return self.request("GET", path)

    def close(self):
        if self.c:
            self.c.close()
            self.c = None


def io_write_bytes(pid):
    """Bytes the process caused to be written to storage (/proc/PID/io)."""
    try:
        with open("/proc/%d/io" % pid) as f:
            for line in f:
                if line.startswith("write_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def du(path):
    """Bytes allocated on disk below path (like du -s --block-size=1)."""
    total = 0
    for root, dirs, files in os.walk(path):
        for name in files + dirs:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if not os.path.isdir(os.path.join(root, name)) or os.path.islink(os.path.join(root, name)):
                total += st.st_blocks * 512
    return total


def settle(pid, quiet_s=1.5, max_s=30.0, poll_s=0.5, min_s=0.0):
    """Waits until process pid has written nothing for quiet_s (background
    merges and compactions done), at least min_s and at most max_s.
    Returns seconds waited."""
    t0 = time.time()
    last = io_write_bytes(pid)
    still = 0.0
    while time.time() - t0 < max_s:
        time.sleep(poll_s)
        now = io_write_bytes(pid)
        if now == last:
            still += poll_s
            if still >= quiet_s and time.time() - t0 >= min_s:
                break
        else:
            still = 0.0
            last = now
    return time.time() - t0


def poll(seen, want, timeout):
    """Asks seen() until it returns want: {"visible_after_s": seconds from
    the call to the answer that matched (None: not within timeout),
    "polls": queries asked}."""
    t0 = time.perf_counter()
    n = 0
    while True:
        n += 1
        if seen() == want:
            return {"visible_after_s": time.perf_counter() - t0, "polls": n}
        if time.perf_counter() - t0 > timeout:
            return {"visible_after_s": None, "polls": n}
        time.sleep(0.005)


def latency_stats(samples_s):
    """p50/p99/mean in microseconds of a list of seconds."""
    if not samples_s:
        return None
    v = sorted(samples_s)
    n = len(v)
    i99 = max(0, -(-99 * n // 100) - 1)
    return {"n": n, "p50_us": v[(n - 1) // 2] * 1e6, "p99_us": v[i99] * 1e6,
            "mean_us": sum(v) / n * 1e6}


def read_queries(path):
    qs = []
    with open(path) as f:
        for line in f:
            if not line.strip() or line.startswith("#"):
                continue
            qid, kind, cam, step, frm, to = line.split()
            qs.append({"qid": qid, "kind": kind, "camera": cam, "step_ms": int(step),
                       "from_ms": int(frm), "to_ms": int(to)})
    return qs


KINDS = ["s5m", "s1h", "s1d", "agg", "keys", "scan", "v85"]
# V85 of a camera-day (kind v85): the value at rank ceil(0.85 N) of its N
# speeds. Answered by the systems in V85_SYSTEMS (bench/run) as the row
#     qid  v85  N  V85  V85  V85
# tally by tally_query_dist's nearest rank at q = 0.85; ClickHouse's
# quantileExact(q) takes the value at 0-based position floor(q N) (q N in
# float64), which is the same rank for every N below 5e7 at the level
# V85_CH_LEVEL = 0.85 - 1e-9: where 0.85 N is a whole number K, q N is
# K - 1e-9 N, so floor gives K - 1 (rank K); elsewhere 0.85 N is at least
# 0.05 from a whole number, and 1e-9 N moves it by less.
V85_CH_LEVEL = "0.849999999"


class Answers:
    """Writes the common answer format."""

    def __init__(self, path):
        self.f = open(path, "w")

    def row(self, qid, label, count, s, mn, mx):
        if int(count) == 0:
            return
        self.f.write("%s\t%s\t%d\t%.17g\t%.17g\t%.17g\n" % (qid, label, int(count), float(s),
                                                           float(mn), float(mx)))

    def close(self):
        self.f.close()


def run_queries(qs, run_one, answers_path):
    """run_one(q, answers_or_None) runs one query. Pass 1 writes the
    answers (and warms caches), pass 2 is timed per query."""
    ans = Answers(answers_path)
    for q in qs:
        run_one(q, ans)
    ans.close()
    lat = {k: [] for k in KINDS}
    for q in qs:
        t = time.perf_counter()
        run_one(q, None)
        lat[q["kind"]].append(time.perf_counter() - t)
    return {k: latency_stats(v) for k, v in lat.items() if v}


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)


def split_file(path, parts, out_prefix):
    """Cuts a text file into `parts` line-aligned pieces; returns paths."""
    size = os.path.getsize(path)
    paths = []
    with open(path, "rb") as f:
        start = 0
        for i in range(parts):
            end = size if i == parts - 1 else size * (i + 1) // parts
            if end < size:
                f.seek(end)
                f.readline()
                end = f.tell()
            f.seek(start)
            p = "%s.%d" % (out_prefix, i)
            with open(p, "wb") as o:
                left = end - start
                while left > 0:
                    b = f.read(min(left, 1 << 24))
                    if not b:
                        break
                    o.write(b)
                    left -= len(b)
            paths.append(p)
            start = end
    return paths


def post_parallel(port, bodies, threads, url, ok=(200, 204)):
    """POSTs every body of the iterator `bodies` to url, on `threads`
    keep-alive connections at once; raises on the first refusal."""
    import threading
    lock = threading.Lock()
    errors = []

    def work():
        h = Http(port)
        while not errors:
            with lock:
                try:
                    b = next(bodies)
                except StopIteration:
                    break
            st, body = h.request("POST", url, body=b)
            if st not in ok:
                errors.append("HTTP %d: %s" % (st, body[:300]))
        h.close()

    ts = [threading.Thread(target=work) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise RuntimeError("POST %s failed: %s" % (url, errors[0]))


def line_chunks(path, chunk_bytes):
    """Yields line-aligned pieces of a file of about chunk_bytes each."""
    with open(path, "rb") as f:
        rest = b""
        while True:
            b = f.read(chunk_bytes)
            if not b:
                if rest:
                    yield rest
                return
            b = rest + b
            cut = b.rfind(b"\n") + 1
            if cut == 0:
                rest = b
                continue
            rest = b[cut:]
            yield b[:cut]
