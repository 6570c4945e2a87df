#!/usr/bin/env python3
"""docs_test.py -- runs the examples of README.md, the folders' README.md
files and docs/*.md as written, against a fresh build's programs and a
fresh directory.

    tests/tools/docs_test.py SOURCE_DIR BUILD_DIR

Every fenced ```sh block runs (bash -e -o pipefail), and every ```c block
is compiled against the build's engine/tally.h and libtally and run, in a
new temporary directory per file (the blocks of a file run in order and
share it). In that directory ./build holds the build's programs, with
tallyd and tally wrapped to use a free port of 127.0.0.1 (a developer's
server may hold 8427) and tallyd told not to prefault. Markers on the lines
just above a block (HTML comments, invisible when rendered):

    <!-- not run: REASON -->      the block is skipped (say why)
    <!-- expect: TEXT -->         its output (stdout and stderr) holds TEXT

A block that fails, or lacks an expected text, fails the test with its
file, line and output. Blocks that are not sh or c (line protocol, replies,
config files) are not run.
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


def farm(tmp, build, port):
    """./build in tmp: the build's programs; tallyd and tally wrapped."""
    for sub in ("wire", "tools", "engine"):
        os.makedirs(os.path.join(tmp, "build", sub))
        for f in os.listdir(os.path.join(build, sub)):
            src = os.path.join(build, sub, f)
            if os.path.isfile(src) and os.access(src, os.X_OK) or f.startswith("libtally"):
                os.symlink(src, os.path.join(tmp, "build", sub, f))
    for sub, name, extra in (("wire", "tallyd", "--port %d --prefault off" % port),
                             ("tools", "tally", "--port %d" % port)):
        w = os.path.join(tmp, "build", sub, name)
        os.unlink(w)
        with open(w, "w") as f:
            f.write('#!/bin/sh\nexec %s %s "$@"\n' % (os.path.join(build, sub, name), extra))
        os.chmod(w, 0o755)


def run_block(path, line, lang, text, tmp, src):
    if lang == "c":
        c = os.path.join(tmp, "example-%d.c" % line)
        with open(c, "w") as f:
            f.write(text)
        exe = c[:-2]
        lib = os.path.join(tmp, "build", "engine")
        # $TALLY_CFLAGS: the build's sanitizer flags, which its libtally needs
        cmd = "cc -std=c11 -Wall -Wextra -Werror %s -I%s %s -L%s -ltally -Wl,-rpath,%s -o %s && %s" % (
            os.environ.get("TALLY_CFLAGS", ""), os.path.join(src, "engine"), c, lib,
            os.path.dirname(os.path.realpath(os.path.join(lib, "libtally.so"))), exe, exe)
    else:
        cmd = text
    return subprocess.run(["bash", "-e", "-o", "pipefail", "-c", cmd], cwd=tmp, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)


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
            farm(tmp, build, free_port())
            for line, lang, text, skip, expect in todo:
                if skip is not None:
                    if not skip:
                        failures.append("%s:%d: 'not run' without a reason" % (rel, line))
                    skipped += 1
                    continue
                ran += 1
                r = run_block(path, line, lang, text, tmp, src)
                missing = [e for e in expect if e not in r.stdout]
                if r.returncode or missing:
                    failures.append("%s:%d: %s\n--- output (last 40 lines):\n%s" % (
                        rel, line, "exit %d" % r.returncode if r.returncode else
                        "output lacks %r" % missing, "\n".join(r.stdout.splitlines()[-40:])))
                print("%s:%d %s: %s" % (rel, line, lang, "FAILED" if failures and failures[-1].startswith(
                    "%s:%d:" % (rel, line)) else "ok"), flush=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    for f in failures:
        print("FAIL " + f)
    print("%d examples run, %d marked not run, %d failed" % (ran, skipped, len(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
