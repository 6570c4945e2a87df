#!/usr/bin/env bash
# api_surface.sh — libtally.so exports exactly the public API, and the
# layers see only what they may.
#
#   tests/api_surface.sh LIBTALLY_SO TALLY_H LIBTALLY_MAP COMPILE_COMMANDS TEST_BINARY
#
# 1. The dynamic symbols libtally.so defines (nm -D --defined-only) are
#    exactly the functions tally.h declares with TALLY_API, and exactly the
#    global names of the version script, each at a version of it: a new
#    public function must be added to both (docs/api.md).
# 2. libtally.so holds no test hook: no db_crash_point symbol (local ones
#    included) and no "TALLY_CRASH_AT" string, while TEST_BINARY, built
#    on the tests' engine, holds both (so the check can see them).
# 3. libtally.so reads no S3 environment variable (tallyd's settings do,
#    wire/conf.c): none of their names is in it.
# 4. storage/ is compiled with no include path into engine/ (tally.h is
#    out of its reach; it shares only storage/tally_base.h).
set -euo pipefail
so=$1 header=$2 map=$3 ccdb=$4 testbin=$5
fail=0
tmp=$(mktemp -d /tmp/tally-api-XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# TALLY_API declarations, comments and preprocessor lines left out.
python3 - "$header" <<'PY' | sort -u >"$tmp/header"
import re, sys
src = re.sub(r'/\*.*?\*/', ' ', open(sys.argv[1]).read(), flags=re.S)
src = '\n'.join(l for l in src.splitlines() if not l.lstrip().startswith('#'))
for m in re.finditer(r'\bTALLY_API\b[^;{(]*?(\w+)\s*\(', src):
    print(m.group(1))
PY
nm -D --defined-only "$so" | awk '$2 != "A" { print $3 }' >"$tmp/dynsym"
sed 's/@.*//' "$tmp/dynsym" | sort -u >"$tmp/exported"
sed -e 's|/\*.*\*/||' "$map" | tr -d ' \t' | grep -E '^[A-Za-z_][A-Za-z0-9_]*;$' |
  tr -d ';' | sort -u >"$tmp/map"

if [ ! -s "$tmp/header" ] || [ ! -s "$tmp/exported" ]; then
  echo "no declarations or no exports read: header $(wc -l <"$tmp/header"), exports $(wc -l <"$tmp/exported")"
  exit 1
fi
if ! diff -u --label "TALLY_API in $header" --label "exported by $so" "$tmp/header" "$tmp/exported"; then
  echo "FAIL: libtally.so's exports differ from tally.h's TALLY_API functions"
  fail=1
fi
if ! diff -u --label "TALLY_API in $header" --label "global in $map" "$tmp/header" "$tmp/map"; then
  echo "FAIL: the version script differs from tally.h's TALLY_API functions"
  fail=1
fi
if grep -v '@@\?TALLY_' "$tmp/dynsym"; then
  echo "FAIL: exports above carry no TALLY_ version (is the version script linked?)"
  fail=1
fi

# Test hooks: in the tests' engine only.
hooks() { # FILE: prints what of the crash hook FILE holds
  { nm "$1" 2>/dev/null; nm -D "$1" 2>/dev/null; } | grep -ow 'db_crash_point' | head -1 || true
  grep -aoF 'TALLY_CRASH_AT' "$1" | head -1 || true
}
if [ -n "$(hooks "$so")" ]; then
  echo "FAIL: $so holds test hooks: $(hooks "$so" | tr '\n' ' ')"
  fail=1
fi
if [ "$(hooks "$testbin" | wc -l)" != 2 ]; then
  echo "FAIL: $testbin should hold db_crash_point and TALLY_CRASH_AT; holds: $(hooks "$testbin" | tr '\n' ' ')"
  fail=1
fi

# The environment is tallyd's business, not the library's.
for v in TALLY_S3_BUCKET TALLY_S3_ENDPOINT TALLY_S3_PREFIX AWS_REGION AWS_DEFAULT_REGION \
  AWS_ENDPOINT_URL AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN; do
  if grep -qaF "$v" "$so"; then
    echo "FAIL: $so names the environment variable $v"
    fail=1
  fi
done

# compile_commands.json: one object per translation unit; storage/'s must
# name no include directory ending in engine.
python3 - "$ccdb" <<'PY' || fail=1
import json, shlex, sys
bad = 0
units = [u for u in json.load(open(sys.argv[1])) if '/storage/' in u['file'] or u['file'].startswith('../storage/')]
if not units:
    print('FAIL: no storage/ unit in', sys.argv[1]); sys.exit(1)
for u in units:
    args = u.get('arguments') or shlex.split(u['command'])
    incs = [a[2:] for a in args if a.startswith('-I')] + [args[i + 1] for i, a in enumerate(args[:-1]) if a in ('-I', '-isystem', '-iquote')]
    for d in incs:
        if d.rstrip('/').split('/')[-1] == 'engine':
            print('FAIL: %s is compiled with -I%s' % (u['file'], d)); bad = 1
sys.exit(bad)
PY
[ "$fail" = 0 ] && echo "ok: $(wc -l <"$tmp/exported") exported functions, all in tally.h and $(basename "$map")"
exit "$fail"
