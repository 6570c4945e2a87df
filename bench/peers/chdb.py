"""chdb.py -- ClickHouse 26.7 in-process (chDB) as bench/run's peer: runs
bench/peers/chdb/driver.js under node, one process per variant."""
import json
import os
import shutil
import subprocess

import common

HERE = os.path.dirname(os.path.abspath(__file__))
PKG = os.path.join(HERE, "chdb")


def available():
    if not shutil.which("node"):
        raise common.PeerUnavailable("node is not installed (apt package nodejs)")
    lib = os.path.join(PKG, "node_modules", "@chdb", "lib-linux-x64-gnu", "libchdb.so")
    if not os.path.exists(os.path.join(PKG, "node_modules", "chdb")):
        raise common.PeerUnavailable("npm package chdb not installed in bench/peers/chdb "
                                     "(tools/setup --bench runs npm install there)")
    if not os.path.exists(lib):
        raise common.PeerUnavailable("chDB's libchdb.so (npm @chdb/lib-linux-x64-gnu) is missing: "
                                     "only linux x64 glibc is provided by the package")


def run(ctx, variant):
    """variant: plain | rollups | best."""
    available()
    d = os.path.join(ctx["tmp"], "chdb-" + variant)
    os.makedirs(d, exist_ok=True)
    cfg = {
        "dir": os.path.join(d, "session"),
        "variant": variant,
        "ontime_tsv": ctx["ontime_tsv"],
        "late_tsv": ctx["late_tsv"],
        "ontime_events": ctx["ontime_events"],
        "late_events": ctx["late_events"],
        "queries": ctx["queries_path"],
        "answers": os.path.join(ctx["tmp"], "answers-chdb.tsv"),
        "check": ctx["check"],
        "settle_s": ctx["settle_s"],
        "settle_min_s": ctx["settle_min_s"],
        "visible_timeout_s": ctx["visible_timeout_s"],
        "out": os.path.join(d, "result.json"),
        "v85_level": common.V85_CH_LEVEL,
    }
    cfg_path = os.path.join(d, "config.json")
    common.write_json(cfg_path, cfg)
    log_path = os.path.join(d, "driver.log")
    with open(log_path, "w") as log:
        p = subprocess.run(["node", os.path.join(PKG, "driver.js"), cfg_path], stdout=log,
                           stderr=subprocess.STDOUT, timeout=ctx["peer_timeout_s"])
    if p.returncode:
        with open(log_path) as f:
            raise RuntimeError("chDB driver failed (exit %d):\n%s" % (p.returncode, f.read()[-2000:]))
    with open(cfg["out"]) as f:
        res = json.load(f)
    res["disk"]["dir_bytes"] = common.du(cfg["dir"])
    return res
