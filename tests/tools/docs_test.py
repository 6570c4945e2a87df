#!/usr/bin/env python3
"""docs_test.py -- runs the examples of README.md, the folders' README.md
files and docs/*.md as written, against a fresh build's programs and a
fresh directory.

    tests/tools/docs_test.py SOURCE_DIR BUILD_DIR

Every fenced ```sh block runs, and every ```c block is compiled against
the build's engine/tally.h and libtally and run. The blocks of a file run
in order in one bash session (set -e -o pipefail), as a reader types them
into one terminal: a server started in the background (`tallyd &`) in one
block serves the next ones, until a block stops it (`kill %1`); whatever
is left running at the end is stopped. Each file gets a new temporary
directory as its working directory. In that directory ./build holds the build's programs, with
tallyd and tally wrapped to use a free port of 127.0.0.1 (a developer's
server may hold 8427) and tallyd told not to prefault. Markers on the lines
just above a block (HTML comments, invisible when rendered):

    <!-- not run: REASON -->      the block is skipped (say why)
    <!-- expect: TEXT -->         its output (stdout and stderr) holds TEXT

A block that fails, or lacks an expected text, fails the test with its
file, line and output. Blocks that are not sh or c (line protocol, replies,
config files) are not run.

Ports: tallyd's defaults, 127.0.0.1:8427 (and the HTTP port 8429 when this
tallyd has one, i.e. its --help lists --http-port), are where the examples
say the server is; the test's tallyd listens on free ports instead, and
"127.0.0.1:8427" / "127.0.0.1:8429" in a block are read as those ports.
"""
import glob
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile

MARK = re.compile(r"^<!--\s*(not run|expect)\s*:\s*(.*?)\s*-->\s*$")


def blocks(path):
    """(line, lang, text, skip_reason, [expected]) of each fenced block."""
    out = []
    lines = open(path, encoding="utf-8").read().split("\n")
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\w*)", lines[i])
        if not m:
            i += 1
            continue
        lang, start = m.group(1), i
        skip, expect = None, []
        j = i - 1
        while j >= 0 and MARK.match(lines[j]):
            kind, text = MARK.match(lines[j]).groups()
            if kind == "not run":
                skip = text
            else:
                expect.append(text)
            j -= 1
        i += 1
        body = []
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        i += 1
        out.append((start + 1, lang, "\n".join(body) + "\n", skip, expect))
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ports(build):
    """{default port: free port} for the ports tallyd listens on."""
    p = {8427: free_port()}
    helptext = subprocess.run([os.path.join(build, "wire", "tallyd"), "--help"], capture_output=True,
                              text=True).stdout
    if "--http-port" in helptext:
        p[8429] = free_port()
    return p


def farm(tmp, build, port):
    """./build in tmp: the build's programs; tallyd and tally wrapped."""
    for sub in ("wire", "tools", "engine"):
        os.makedirs(os.path.join(tmp, "build", sub))
        for f in os.listdir(os.path.join(build, sub)):
            src = os.path.join(build, sub, f)
            if os.path.isfile(src) and os.access(src, os.X_OK) or f.startswith("libtally"):
                os.symlink(src, os.path.join(tmp, "build", sub, f))
    http = " --http-port %d" % port[8429] if 8429 in port else ""
    for sub, name, extra in (("wire", "tallyd", "--port %d%s --prefault off" % (port[8427], http)),
                             ("tools", "tally", "--port %d" % port[8427])):
        w = os.path.join(tmp, "build", sub, name)
        os.unlink(w)
        with open(w, "w") as f:
            f.write('#!/bin/sh\nexec %s %s "$@"\n' % (os.path.join(build, sub, name), extra))
        os.chmod(w, 0o755)


def block_cmd(line, lang, text, tmp, src, port):
    """The shell text that runs one block."""
    if lang == "c":
        c = os.path.join(tmp, "example-%d.c" % line)
        with open(c, "w") as f:
            f.write(text)
        exe = c[:-2]
        lib = os.path.join(tmp, "build", "engine")
        # $TALLY_CFLAGS: the build's sanitizer flags, which its libtally needs
        return "cc -std=c11 -Wall -Wextra -Werror %s -I%s -I%s %s -L%s -ltally -Wl,-rpath,%s -o %s\n%s\n" % (
            os.environ.get("TALLY_CFLAGS", ""), os.path.join(src, "engine"), os.path.join(src, "storage"), c, lib,
            os.path.dirname(os.path.realpath(os.path.join(lib, "libtally.so"))), exe, exe)
    for default, real in port.items():
        text = text.replace("127.0.0.1:%d" % default, "127.0.0.1:%d" % real)
    return text


BLOCK = "@@docs-test block %d@@"


def run_file(todo, tmp, src, port):
    """Runs the blocks [(line, lang, text, expect)] in one bash session.
    Returns [(line, ok, why, output)] for the blocks that ran."""
    script = ["set -e -o pipefail",
              # background jobs a failing block leaves behind are stopped
              "trap 'kill $(jobs -p) 2>/dev/null; wait' EXIT"]
    for line, lang, text, _ in todo:
        script.append("echo '%s'" % (BLOCK % line))
        script.append(block_cmd(line, lang, text, tmp, src, port))
    script.append("echo '%s'" % (BLOCK % 0))
    p = subprocess.Popen(["bash", "-c", "\n".join(script)], cwd=tmp, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    try:
        out, _ = p.communicate(timeout=600)
    finally:
        try:  # anything of ours still running (a server's children): its group
            os.killpg(p.pid, 15)
        except ProcessLookupError:
            pass
    parts, cur, buf = {}, None, []
    for l in out.splitlines():
        m = re.match(r"^@@docs-test block (\d+)@@$", l)
        if m:
            if cur is not None:
                parts[cur] = buf
            cur, buf = int(m.group(1)), []
        elif cur is not None:
            buf.append(l)
    if cur is not None:
        parts[cur] = buf
    res = []
    marks = [t[0] for t in todo] + [0]
    for i, (line, _, _, expect) in enumerate(todo):
        if line not in parts:
            break
        o = "\n".join(parts[line])
        finished = marks[i + 1] in parts  # the next block started: this one ended well
        missing = [e for e in expect if e not in o]
        why = "exit %d" % p.returncode if not finished else "output lacks %r" % missing if missing else ""
        res.append((line, not why, why, o))
    return res


def main():
    src, build = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    files = [os.path.join(src, "README.md")] + sorted(glob.glob(os.path.join(src, "*", "README.md"))) + \
        sorted(glob.glob(os.path.join(src, "docs", "*.md")))
    ran = skipped = 0
    failures = []
    for path in files:
        rel = os.path.relpath(path, src)
        todo = [b for b in blocks(path) if b[1] in ("sh", "bash", "c")]
        if not todo:
            continue
        tmp = tempfile.mkdtemp(prefix="tally-docs-")
        try:
            port = ports(build)
            farm(tmp, build, port)
            run = []
            for line, lang, text, skip, expect in todo:
                if skip is None:
                    run.append((line, lang, text, expect))
                    continue
                if not skip:
                    failures.append("%s:%d: 'not run' without a reason" % (rel, line))
                skipped += 1
            ran += len(run)
            for line, ok, why, out in run_file(run, tmp, src, port) if run else []:
                print("%s:%d: %s" % (rel, line, "ok" if ok else "FAILED"), flush=True)
                if not ok:
                    failures.append("%s:%d: %s\n--- output (last 40 lines):\n%s" % (
                        rel, line, why, "\n".join(out.splitlines()[-40:])))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    for f in failures:
        print("FAIL " + f)
    print("%d examples run, %d marked not run, %d failed" % (ran, skipped, len(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
