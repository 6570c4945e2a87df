#!/usr/bin/python3
"""https_test.py — tallyd's HTTP port over TLS with real clients.

    tests/server/https_test.py TALLYD TALLY MODE

The test makes a CA and two server certificates (serials 1001 and 2002)
with the openssl CLI in a temporary directory, and starts tallyd with
--http-tls-cert/--http-tls-key on the first.
MODE curl: curl --cacert writes line protocol (plain, gzip, chunked) and a
keep-alive pipelined pair over one TLS connection; plaintext HTTP to the
TLS port, a garbage handshake and a stalled handshake are closed and
counted (the server goes on); a certificate swap + SIGHUP: a connection
opened before keeps working on the old certificate, a new one (openssl
s_client) sees the new serial; a bad certificate on SIGHUP keeps the last
good one.
MODE lp: tls-line-protocol, the line-protocol port over TLS; a bad
certificate or key stops the start, naming the file.
MODE node: @influxdata/influxdb-client and @questdb/nodejs-client over
HTTPS with the CA (tests/server/http_clients.mjs, $TALLY_TLS_CA).
After each writer, tally's answers equal a model of what was sent.
$TALLYD_EXTRA adds flags ("--io epoll": the same on the epoll loop).
"""
import gzip
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

sys.argv = sys.argv[:3] + ["https-" + sys.argv[3]]
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import http_test as H  # noqa: E402  (the Server, the model, the helpers)

MODE = sys.argv[3][len("https-"):]
step, check, fail = H.step, H.check, H.fail


def sh(*cmd):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    check(r.returncode == 0, "%s: %s%s" % (" ".join(cmd), r.stdout, r.stderr))
    return r.stdout


def make_pki(d):
    """ca.pem, and server certificates a.pem/a.key (serial 1001) and
    b.pem/b.key (serial 2002) for 127.0.0.1 signed by it."""
    sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", d + "/ca.key", "-out",
       d + "/ca.pem", "-days", "2", "-subj", "/CN=tally test CA")
    with open(d + "/ext", "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, serial in (("a", 1001), ("b", 2002)):
        sh("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "%s/%s.key" % (d, name), "-out",
           "%s/%s.csr" % (d, name), "-subj", "/CN=localhost")
        sh("openssl", "x509", "-req", "-in", "%s/%s.csr" % (d, name), "-CA", d + "/ca.pem", "-CAkey",
           d + "/ca.key", "-set_serial", str(serial), "-days", "2", "-extfile", d + "/ext", "-out",
           "%s/%s.pem" % (d, name))


def install(d, name):
    """Puts certificate name where tallyd reads it (atomically, like an
    operator's deploy)."""
    for ext in ("pem", "key"):
        shutil.copy("%s/%s.%s" % (d, name, ext), "%s/cur.%s.tmp" % (d, ext))
        os.rename("%s/cur.%s.tmp" % (d, ext), "%s/cur.%s" % (d, ext))


def curl(srv, ca, path, *args, data=None):
    cmd = ["curl", "-sS", "-i", "--max-time", "60", "--cacert", ca, "-H", "Authorization: Token " + H.TOKEN]
    cmd += list(args) + ["https://127.0.0.1:%d%s" % (srv.http, path)]
    r = subprocess.run(cmd, input=data, capture_output=True, timeout=90)
    out = r.stdout.decode("utf-8", "replace")
    m = re.findall(r"^HTTP/1\.1 (\d{3})", out, re.M)
    return (int(m[-1]) if m else 0), out + r.stderr.decode("utf-8", "replace")


def served_serial(srv, ca):
    """The serial of the certificate a new connection is served, by openssl s_client."""
    r = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % srv.http, "-CAfile", ca,
                        "-verify_return_error"], input="", capture_output=True, text=True, timeout=60)
    check(r.returncode == 0, "s_client: %s%s" % (r.stdout, r.stderr))
    x = subprocess.run(["openssl", "x509", "-noout", "-serial"], input=r.stdout, capture_output=True,
                       text=True, timeout=60)
    return int(x.stdout.strip().split("=")[1], 16)


def tls_conn(srv, ca):
    ctx = ssl.create_default_context(cafile=ca)
    s = socket.create_connection(("127.0.0.1", srv.http), timeout=60)
    return ctx.wrap_socket(s, server_hostname="127.0.0.1")


def read_responses(s, n):
    """Reads until n whole responses arrived on s."""
    got = b""
    while len(H.responses(got)) < n:
        b = s.recv(65536)
        check(b, "the server closed before %d answers: %r" % (n, got))
        got += b
    return H.responses(got)


def closed_without_answer(srv, data, what):
    """Sends data (or nothing) and waits, bounded, for the server to close."""
    s = socket.create_connection(("127.0.0.1", srv.http), timeout=60)
    if data:
        s.sendall(data)
    got = b""
    try:
        while True:
            b = s.recv(4096)
            if not b:
                break
            got += b
    except ConnectionResetError:
        pass
    except socket.timeout:
        fail("%s: the server did not close the connection within 60 s" % what)
    s.close()
    check(b"HTTP/1.1" not in got, "%s: got a plaintext answer %r" % (what, got))


def wait_stat(srv, name, at_least):
    deadline = time.monotonic() + 60
    while srv.stats().get(name, 0) < at_least:
        check(time.monotonic() < deadline, "#!stats %s stayed below %d" % (name, at_least))
        time.sleep(0.05)


def never_reading_tls_client(srv, ca):
    """Pipelines pings over TLS without reading: the server stops reading
    (TCP pushes back) with its memory bounded, and many idle TLS
    connections cost a bounded amount each."""
    req = b"GET /ping HTTP/1.1\r\nHost: t\r\n\r\n"
    s = tls_conn(srv, ca)
    rss0 = srv.rss_kib()
    s.settimeout(3)  # a send blocked this long: the server pushed back
    sent, pushed_back, t = 0, False, time.monotonic()
    while time.monotonic() - t < 60:
        try:
            s.sendall(req * 512)
            sent += 512
        except socket.timeout:
            pushed_back = True
            break
    step("sent %d pings over TLS until the server pushed back" % sent)
    check(pushed_back, "the server read %d pipelined pings over TLS without pushing back" % sent)
    grew = srv.rss_kib() - rss0
    check(grew < 64 * 1024, "tallyd grew %d KiB under a TLS client that never reads" % grew)
    s.close()
    rss0 = srv.rss_kib()
    idle = [tls_conn(srv, ca) for _ in range(200)]
    grew = srv.rss_kib() - rss0
    step("200 idle TLS connections: %d KiB" % grew)
    # A sanitizer's quarantine keeps what the handshakes freed.
    per = 1024 if b"__asan_init" in open(H.TALLYD, "rb").read() else 160
    check(grew < 200 * per, "200 idle TLS connections took %d KiB" % grew)
    for c in idle:
        c.close()


def mode_curl(d, ca):
    srv = H.Server("--http-tls-cert", d + "/cur.pem", "--http-tls-key", d + "/cur.key",
                   "--tls-handshake-timeout", "2s")
    try:
        step("plain body")
        text, model = H.lines_for("tp", 3000, 1)
        st, out = curl(srv, ca, "/api/v2/write?bucket=b&precision=s", "--data-binary", "@-",
                       data=text.encode())
        check(st == 204, "plain write over https: %s" % out)
        srv.check_model("tp", model, "https plain")

        step("gzip body")
        text, model = H.lines_for("tg", 5000, 2)
        st, out = curl(srv, ca, "/write?db=x&precision=s", "-H", "Content-Encoding: gzip", "--data-binary",
                       "@-", data=gzip.compress(text.encode()))
        check(st == 204, "gzip write over https: %s" % out)
        srv.check_model("tg", model, "https gzip")

        step("chunked body")
        text, model = H.lines_for("tc", 4000, 3)
        st, out = curl(srv, ca, "/write?db=x&precision=s", "-H", "Transfer-Encoding: chunked",
                       "--data-binary", "@-", data=text.encode())
        check(st == 204, "chunked write over https: %s" % out)
        srv.check_model("tc", model, "https chunked")

        step("keep-alive pipelined pair on one TLS connection")
        t1, m1 = H.lines_for("tk", 500, 4)
        t2, m2 = H.lines_for("tk", 500, 5, off=500)
        early = tls_conn(srv, ca)
        early.sendall(H.post("/write?db=x&precision=s", t1.encode()) +
                      H.post("/write?db=x&precision=s", t2.encode()))
        got = read_responses(early, 2)
        check([g[0] for g in got] == [204, 204], "pipelined pair: %s" % got)
        for k, v in m2.items():
            m1.setdefault(k, []).extend(v)
        srv.check_model("tk", m1, "https pipelined")

        step("a TLS client that never reads")
        never_reading_tls_client(srv, ca)

        step("plaintext HTTP to the TLS port is closed")
        closed_without_answer(srv, b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n", "plaintext")
        wait_stat(srv, "tls_plaintext_refused", 1)
        step("a garbage handshake is closed")
        closed_without_answer(srv, b"\x16\x03\x01\x00\x08notahello" + b"\0" * 64, "garbage handshake")
        wait_stat(srv, "tls_handshake_failures", 1)
        step("a stalled handshake times out")
        closed_without_answer(srv, b"", "stalled handshake")
        wait_stat(srv, "tls_handshake_timeouts", 1)
        st, out = curl(srv, ca, "/ping")
        check(st == 204, "ping after the refusals: %s" % out)

        step("certificate swap + SIGHUP")
        check(served_serial(srv, ca) == 1001, "the first certificate is not served")
        install(d, "b")
        srv.proc.send_signal(signal.SIGHUP)
        wait_stat(srv, "tls_reloads", 1)
        check(served_serial(srv, ca) == 2002, "a new connection after SIGHUP does not see the new serial")
        t3, m3 = H.lines_for("tk", 500, 6, off=1000)
        early.sendall(H.post("/write?db=x&precision=s", t3.encode()))
        got = read_responses(early, 1)
        check(got[0][0] == 204, "the connection opened before the reload: %s" % got)
        old = ssl.DER_cert_to_PEM_cert(early.getpeercert(binary_form=True))
        check(old.split() == open(d + "/a.pem").read().split(),
              "the early connection's certificate changed under it")
        for k, v in m3.items():
            m1.setdefault(k, []).extend(v)
        srv.check_model("tk", m1, "https after reload")
        early.close()

        step("a bad certificate on SIGHUP keeps the last good one")
        with open(d + "/cur.pem", "w") as f:
            f.write("not a certificate\n")
        srv.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while "not reloaded" not in open(srv.log).read():
            check(time.monotonic() < deadline, "no log line for the failed reload")
            time.sleep(0.05)
        check(srv.stats()["tls_reloads"] == 1, "a failed reload was counted as done")
        check(served_serial(srv, ca) == 2002, "a failed reload changed the served certificate")
        check(srv.stats()["tls_handshakes"] >= 8, "handshakes not counted: %s" % srv.stats())
        st, out = curl(srv, ca, "/metrics")
        check(st == 200 and re.search(r"^tally_tls_reloads_total 1$", out, re.M)
              and re.search(r"^tally_tls_handshake_timeouts_total [1-9]", out, re.M),
              "/metrics over https lacks the TLS counters: %s" % out[-2000:])
    finally:
        srv.stop()
    step("curl over https: every check passed")


def bad_certificate_stops_the_start(d):
    """A missing certificate, or a key of another certificate: tallyd
    does not start, and says which file."""
    for cert, key, want in ((d + "/none.pem", d + "/a.key", d + "/none.pem"),
                            (d + "/a.pem", d + "/b.key", d + "/b.key")):
        r = subprocess.run([H.TALLYD, "--data", d + "/never", "--port", "0", "--http-port", "0",
                            "--http-tls-cert", cert, "--http-tls-key", key], capture_output=True,
                           text=True, timeout=60)
        check(r.returncode != 0 and want in r.stderr,
              "tallyd with %s and %s: exit %d, %s" % (cert, key, r.returncode, r.stderr))
        check(not os.path.exists(d + "/never"), "a refused start created the data directory")


def mode_lp(d, ca):
    """tls-line-protocol: the line-protocol port over TLS; a plaintext
    client there is closed; a plain server on the same data then answers
    the model."""
    srv = H.Server("--http-tls-cert", d + "/cur.pem", "--http-tls-key", d + "/cur.key",
                   "--tls-line-protocol", "on")
    try:
        step("line protocol over TLS")
        text, model = H.lines_for("tl", 3000, 7)
        ctx = ssl.create_default_context(cafile=ca)
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", srv.port), timeout=60),
                            server_hostname="127.0.0.1")
        s.sendall(("#!auth %s\n#!precision s\n" % H.TOKEN).encode() + text.encode() + b"#!sync\n")
        got = b""
        while b"OK sync" not in got:
            b = s.recv(65536)
            check(b, "the TLS line-protocol connection closed: %r" % got)
            got += b
        check(b"OK sync accepted=3000 rejected=0" in got, "line protocol over TLS: %r" % got)
        s.close()
        step("plaintext to the TLS line-protocol port is closed")
        p = socket.create_connection(("127.0.0.1", srv.port), timeout=60)
        p.sendall(b"#!ping\n")
        check(p.recv(4096) == b"", "plaintext on the TLS line-protocol port was answered")
        p.close()
    finally:
        srv.stop(keep=True)
    plain = H.Server(reuse=srv)
    try:
        plain.check_model("tl", model, "line protocol over TLS")
        check(plain.stats()["tls_handshakes"] == 0, "TLS counted without TLS")
    finally:
        plain.stop()
    step("a bad certificate stops the start")
    bad_certificate_stops_the_start(d)
    step("line protocol over TLS: every check passed")


def mode_node(d, ca):
    nm = os.path.join(H.HERE, "node_modules")
    if not shutil.which("node") or not os.path.isdir(os.path.join(nm, "@influxdata/influxdb-client")) \
            or not os.path.isdir(os.path.join(nm, "@questdb/nodejs-client")):
        print("skipped: node or the client packages are not installed (run tools/setup)")
        sys.exit(77)
    srv = H.Server("--http-tls-cert", d + "/cur.pem", "--http-tls-key", d + "/cur.key")
    try:
        for client, table, n in (("influx", "nv2s", 20000), ("questdb", "qhttps", 5000)):
            r = subprocess.run(["node", os.path.join(H.HERE, "http_clients.mjs"), client, str(srv.http), H.TOKEN,
                                table, str(n)], capture_output=True, text=True, timeout=120,
                               env=dict(os.environ, TALLY_TLS_CA=ca))
            check(r.returncode == 0, "%s client over https: %s%s" % (client, r.stdout, r.stderr))
            model = {}
            for i in range(n):
                model.setdefault("N%d" % (i % 11), []).append(((i * 29) % 1001) / 4)
            srv.check_model(table, model, client + " over https")
        check(srv.stats()["tls_handshakes"] >= 2, "the node clients did not use TLS")
    finally:
        srv.stop()
    print("node clients over https: every check passed")


if not shutil.which("openssl") or not shutil.which("curl"):
    print("skipped: the openssl or curl command is not installed")
    sys.exit(77)
D = tempfile.mkdtemp(prefix="tally-https-")
try:
    make_pki(D)
    install(D, "a")
    {"curl": mode_curl, "node": mode_node, "lp": mode_lp}[MODE](D, D + "/ca.pem")
finally:
    shutil.rmtree(D, ignore_errors=True)
