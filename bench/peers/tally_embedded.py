"""tally_embedded.py -- libtally in-process as bench/run's system: runs
bench_peer_tally (bench/bench_peer_tally.c) on the run's files."""
import json
import os
import subprocess

import common


def run(ctx, mode):
    """mode: lp (the line-protocol files, queried: the reference answers)
    or binary (the same events as binary batches; ingest and disk only)."""
    exe = os.path.join(ctx["build"], "bench", "bench_peer_tally")
    if not os.path.exists(exe):
        raise common.PeerUnavailable("%s is not built" % exe)
    d = os.path.join(ctx["tmp"], "tally-" + mode)
    out = os.path.join(ctx["tmp"], "tally-%s.json" % mode)
    check = ctx["check"]
    argv = [exe, "--dir", d, "--threads", str(ctx["threads"]), "--json", out,
            "--check", "%s,%d,%d,%d" % (check["camera"], check["from_ms"], check["to_ms"], check["after"])]
    if mode == "lp":
        answers = os.path.join(ctx["tmp"], "answers-tally.tsv")
        argv += ["--lp", ctx["ontime_lp"], "--late-lp", ctx["late_lp"], "--queries", ctx["queries_path"],
                 "--answers", answers]
    else:
        answers = None
        w = ctx["workload"]
        argv += ["--binary"]
        for k in ("seed", "cameras", "days", "per-day", "offline-pct", "outage-hours"):
            argv += ["--" + k, str(w[k])]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=ctx["peer_timeout_s"])
    if p.returncode:
        raise RuntimeError("bench_peer_tally failed (exit %d): %s" % (p.returncode, p.stderr[-2000:]))
    with open(out) as f:
        res = json.load(f)
    res["status"] = "ok"
    res["notes"] = []
    if answers:
        res["answers"] = answers
    res["disk"]["dir_bytes"] = res["disk"]["bytes"]
    return res
