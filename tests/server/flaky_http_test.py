#!/usr/bin/python3
"""flaky_http_test.py — exactly once over HTTP on bad links (issue 15).

    tests/server/flaky_http_test.py TALLYD TALLY [BATCHES]

Several clients at once send batches with `Idempotency-Key: SOURCE/SEQ`,
each through curl (a new connection a try), and retry every batch until
tallyd acknowledges it (204, or 200 for JSON events; a duplicate is an
acknowledgement too). Half of them write line protocol to /api/v2/write,
half the cameras' JSON events to /api/v1/events. Between them and tallyd
a proxy in this test misbehaves per connection: it forwards faithfully,
slowly (a few bytes at a time), cuts the request in the middle of its
body, cuts the connection once the request is through (before tallyd can
answer, or once its answer starts arriving: the batch is applied and the
client cannot know), or forwards only part of the answer. tallyd is
killed with SIGKILL twice while the clients write, restarted on the same
data, and the proxy follows it to its new port.

At the end every batch must be applied exactly once: every batch writes
its events into an hour of its own, so the 1-hour series of every key
equals a brute-force model of the distinct batches window by window, and
every batch also writes one event identical in key, time and value to
every other batch's (an event two sources may really send): that window
must count one per batch. Every kind of fault must have happened, some
retries must have been answered as duplicates, and tallyd must stop
cleanly at the end. BATCHES (default 100) is per client; there are eight.
$TALLYD_EXTRA adds tallyd flags ("--io epoll").
"""
import calendar
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

sys.argv = sys.argv[:3] + ["flaky"] + sys.argv[3:]
import http_test as H  # noqa: E402  (the Server, check/fail/step)

BATCHES = int(sys.argv[4]) if len(sys.argv) > 4 else 100
# Eight at once: each answer waits for an fsync (0.1-0.3 s on the shared
# VM), and the syncer's group commit serves all the clients waiting.
CLIENTS = 8  # even: line protocol, odd: JSON events
KEYS = 5
T0 = 1699920000  # 2023-11-14T00:00:00Z: batch (k, seq) writes hour k * BATCHES + seq
SHARED_T = T0 - 1800  # every batch's identical event: key S, this time, speed 42.5
BATCH_S = 180  # a batch must be acknowledged within this (tallyd restarts included)
# what the proxy does to a connection, and how often (weights)
FAULTS = {"faithful": 4, "slow": 1, "cut-body": 1, "cut-after-request": 1, "lose-answer": 1,
          "cut-answer": 1}


def batch_events(k, seq):
    """Batch (k, seq)'s events: [(key, unix seconds, speed)]. A pair of
    identical events inside the batch, and the shared event."""
    r = random.Random(k * 100003 + seq)
    hour = T0 + (k * BATCHES + seq) * 3600
    ev = []
    for j in range(r.randrange(2, 9)):
        ev.append(("K%d" % r.randrange(KEYS), hour + r.randrange(3600), r.randrange(200, 1600) / 10))
    ev.append(ev[0])
    ev.append(("S", SHARED_T, 42.5))
    return ev


def table_of(k):
    return "traffic" if k % 2 else "flaky"


def rfc3339(t):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def unix(rfc):
    """A window start as tallyd writes it ("2023-11-14T05:00:00Z")."""
    return calendar.timegm(time.strptime(rfc.split(".")[0].rstrip("Z"), "%Y-%m-%dT%H:%M:%S"))


def body_of(k, seq):
    """(path, body, status meaning acknowledged)."""
    ev = batch_events(k, seq)
    if k % 2:  # the cameras' JSON, table traffic's default mapping
        return ("/api/v1/events?table=traffic", "".join(
            '{"kvfv_id":"%s","timestamp":"%s","vehicle_speed":%r}\n' % (key, rfc3339(t), v)
            for key, t, v in ev).encode(), 200)
    return ("/api/v2/write?org=o&bucket=b&precision=s", "".join(
        "flaky,camera=%s speed=%r %d\n" % (key, v, t) for key, t, v in ev).encode(), 204)


# ---------------------------------------------------------------- the link

def read_message(sock, buf):
    """One HTTP message (head + Content-Length body) from sock after the
    bytes in buf: (message, rest), or (None, b"") at EOF before it ends."""
    while True:
        e = buf.find(b"\r\n\r\n")
        if e >= 0:
            m = re.search(rb"\r\ncontent-length:\s*(\d+)", buf[:e + 2], re.I)
            n = e + 4 + (int(m.group(1)) if m else 0)
            if len(buf) >= n:
                return buf[:n], buf[n:]
        try:
            b = sock.recv(65536)
        except OSError:
            b = b""
        if not b:
            return None, b""
        buf += b


class Proxy:
    """127.0.0.1:port -> tallyd's HTTP port, a fault drawn per connection
    from a seeded generator. upstream follows tallyd's restarts."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.rng = random.Random(15)
        self.lock = threading.Lock()
        self.counts = {f: 0 for f in FAULTS}
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(64)
        self.port = self.ls.getsockname()[1]
        self.stopping = False
        self.th = threading.Thread(target=self.accept_loop, daemon=True)
        self.th.start()

    def accept_loop(self):
        self.ls.settimeout(0.2)
        while not self.stopping:
            try:
                c, _ = self.ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                fault = self.rng.choices(list(FAULTS), list(FAULTS.values()))[0]
                cut = self.rng.random()
            threading.Thread(target=self.link, args=(c, fault, cut), daemon=True).start()

    def link(self, c, fault, cut):
        u = None
        try:
            c.settimeout(60)
            req, _ = read_message(c, b"")
            if req is None:
                return
            try:
                u = socket.create_connection(("127.0.0.1", self.upstream), timeout=60)
            except OSError:
                return  # tallyd is down: the client sees the connection close
            head = req.index(b"\r\n\r\n") + 4
            with self.lock:
                self.counts[fault] += 1
            if fault == "cut-body":  # the head and part of the body, then gone
                u.sendall(req[:head + int(cut * (len(req) - head))])
                return
            if fault == "slow":
                for i in range(0, len(req), 97):
                    u.sendall(req[i:i + 97])
                    time.sleep(0.001)
            else:
                u.sendall(req)
            if fault == "cut-after-request":
                return
            if fault == "lose-answer":
                u.recv(1)  # the answer starts: the batch is durable, its answer lost
                return
            ans, _ = read_message(u, b"")
            if ans is None:
                return
            if fault == "cut-answer":
                c.sendall(ans[:1 + int(cut * (len(ans) - 2))])
                return
            c.sendall(ans)
        except OSError:
            pass
        finally:
            for s in (c, u):
                if s is None:
                    continue
                if fault != "faithful" and cut < 0.5:  # a reset, as a dropped link gives
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()

    def stop(self):
        self.stopping = True
        self.ls.close()
        self.th.join(10)


# ---------------------------------------------------------------- clients

def complete(out):
    """Whether curl -i's output is a whole answer: its head ended and as
    many body bytes as its Content-Length. (curl exits 0 on an answer cut
    inside its head: a careful client takes only a whole answer as one.)"""
    e = out.rfind(b"HTTP/1.1 ")
    e = out.find(b"\r\n\r\n", e)
    if e < 0:
        return False
    m = re.search(rb"\r\ncontent-length:\s*(\d+)", out[:e + 2], re.I)
    return len(out) - e - 4 == (int(m.group(1)) if m else 0)

class Client(threading.Thread):
    def __init__(self, k, run):
        super().__init__(daemon=True)
        self.k, self.run_ = k, run
        self.source = "gw-%d" % k
        self.tries = self.acked = self.duplicates = self.unavailable = 0
        self.error = None

    def attempt(self, seq):
        """One try: 'ack', 'dup' or None (no acknowledgement)."""
        path, body, ok = body_of(self.k, seq)
        r = subprocess.run(["curl", "-sS", "-i", "--max-time", "60", "-H", "Expect:",
                            "-H", "Authorization: Token " + H.TOKEN,
                            "-H", "Idempotency-Key: %s/%d" % (self.source, seq),
                            "--data-binary", "@-", "http://127.0.0.1:%d%s" % (self.run_.proxy.port, path)],
                           input=body, capture_output=True, timeout=120)
        out = r.stdout.decode("utf-8", "replace")
        if r.returncode != 0 or not complete(r.stdout):
            return None  # the link failed: try again
        st = int(re.findall(r"^HTTP/1\.1 (\d{3})", out, re.M)[-1])
        if st == 503:
            self.unavailable += 1  # a connection slot freeing, or tallyd stopping
            return None
        H.check(st == ok, "%s/%d: answered %d: %s" % (self.source, seq, st, out[-500:]))
        dup = "X-Tally-Duplicate: true" in out or '"duplicate":true' in out
        if ok == 200:  # JSON events: every event accepted (or a duplicate)
            H.check(dup or '"rejected":0' in out, "%s/%d: %s" % (self.source, seq, out[-500:]))
        return "dup" if dup else "ack"

    def run(self):
        rng = random.Random(self.k)
        try:
            for seq in range(1, BATCHES + 1):
                until = time.monotonic() + BATCH_S
                while True:
                    self.tries += 1
                    got = self.attempt(seq)
                    if got:
                        break
                    H.check(time.monotonic() < until, "%s/%d not acknowledged within %d s" % (
                        self.source, seq, BATCH_S))
                    time.sleep(rng.uniform(0.005, 0.05))  # back off a little
                self.acked += 1
                self.duplicates += got == "dup"
                self.run_.progress()
        except BaseException as e:  # noqa: B902  (reported by the main thread)
            self.error = e
            self.run_.progress()


class Run:
    def __init__(self):
        self.srv = H.Server()
        self.proxy = Proxy(self.srv.http)
        self.cv = threading.Condition()
        self.clients = [Client(k, self) for k in range(CLIENTS)]
        self.kills = 0

    def progress(self):
        with self.cv:
            self.cv.notify_all()

    def acked(self):
        return sum(c.acked for c in self.clients)

    def kill_and_restart(self):
        """SIGKILL by PID while the clients write, then the same data on
        new ports; the proxy follows."""
        self.srv.proc.send_signal(signal.SIGKILL)
        self.srv.proc.wait()
        time.sleep(random.Random(self.kills).uniform(0, 0.3))
        self.srv = H.Server(reuse=self.srv)
        self.proxy.upstream = self.srv.http
        self.kills += 1
        H.step("kill -9 %d at %d acknowledged batches; restarted" % (self.kills, self.acked()))

    def go(self):
        total = CLIENTS * BATCHES
        for c in self.clients:
            c.start()
        deadline = time.monotonic() + 840  # meson's timeout is 900 s
        for at in (total // 3, 2 * total // 3):
            with self.cv:
                while self.acked() < at and not any(c.error for c in self.clients):
                    H.check(time.monotonic() < deadline, "stuck at %d batches" % self.acked())
                    self.cv.wait(1)
            if any(c.error for c in self.clients):
                break
            self.kill_and_restart()
        for c in self.clients:
            c.join(max(1, deadline - time.monotonic()))
            if c.error:
                raise c.error
            H.check(not c.is_alive(), "%s still sending at the deadline" % c.source)
        H.step("%d batches acknowledged in %d tries (%d answered as duplicates, %d 503s); "
               "faults per connection: %s" % (
                   self.acked(), sum(c.tries for c in self.clients),
                   sum(c.duplicates for c in self.clients), sum(c.unavailable for c in self.clients),
                   ", ".join("%s %d" % kv for kv in self.proxy.counts.items())))

    def check(self):
        H.check(self.kills == 2, "tallyd was killed %d times, want 2" % self.kills)
        for f, n in self.proxy.counts.items():
            H.check(n > 0, "the proxy never did %s" % f)
        H.check(sum(c.duplicates for c in self.clients) > 0, "no retry was answered as a duplicate")
        H.check(sum(c.tries for c in self.clients) > self.acked(), "no try failed: the link was not flaky")
        # brute force over the distinct batches: (table, key) -> hour -> [count, sum]
        model = {}
        for k in range(CLIENTS):
            for seq in range(1, BATCHES + 1):
                for key, t, v in batch_events(k, seq):
                    w = model.setdefault((table_of(k), key), {}).setdefault(t - t % 3600, [0, 0.0])
                    w[0] += 1
                    w[1] += v
        frm, to = "%ds" % (SHARED_T - SHARED_T % 3600), "%ds" % (T0 + (CLIENTS * BATCHES + 2) * 3600)
        for (table, key), want in sorted(model.items()):
            rows = self.srv.query("series", table, "speed", key, "1h", frm, to)
            got = {}
            for r in rows:
                got[unix(r[0])] = (int(r[1]), float(r[2]))
            H.check(set(got) == set(want), "%s/%s: windows %d, want %d (extra %s, missing %s)" % (
                table, key, len(got), len(want), sorted(set(got) - set(want))[:5],
                sorted(set(want) - set(got))[:5]))
            for w, (n, s) in want.items():
                H.check(got[w][0] == n and abs(got[w][1] - s) <= 1e-9 * max(1.0, abs(s)),
                        "%s/%s hour %s: count, sum %s, want %d, %r" % (table, key, rfc3339(w), got[w], n, s))
        shared = model[("flaky", "S")][SHARED_T - SHARED_T % 3600][0]
        H.check(shared == CLIENTS // 2 * BATCHES, "model: the shared event %d times" % shared)
        st = self.srv.stats()
        H.check(st.get("label_sources") == CLIENTS, "label_sources %s, want %d" % (
            st.get("label_sources"), CLIENTS))
        H.step("every batch applied exactly once: %d windows of %d keys equal brute force" % (
            sum(len(w) for w in model.values()), len(model)))


def main():
    if not shutil.which("curl"):
        print("skipped: curl is not installed")
        sys.exit(77)
    run = Run()
    ok = False
    try:
        run.go()
        run.check()
        ok = True
    finally:
        run.proxy.stop()
        if not ok:  # stop only our tallyd, by its PID; keep its data and log
            run.srv.proc.send_signal(signal.SIGKILL)
            run.srv.proc.wait()
            print("tallyd's data and log kept in %s" % run.srv.dir)
    run.srv.stop()
    print("flaky links: every check passed")


if __name__ == "__main__":
    main()
