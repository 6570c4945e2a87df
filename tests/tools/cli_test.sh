#!/usr/bin/env bash
# cli_test.sh — what a new user trips on first, through the programs as
# installed: --version everywhere, `tally inspect` of a directory that is
# not a store, and a query given Unix seconds.
#
#   tests/tools/cli_test.sh VERSION BUILD_DIR
#
# VERSION is meson's project version: every program must print it (tallyd
# takes it from engine/tally.h, the others from the build).
set -euo pipefail
version=$1 build=$2
tally=$build/tools/tally tallyd=$build/wire/tallyd
fail() { echo "FAIL: $*"; exit 1; }

for p in tools/tally tools/tally-gen tools/tally-inspect wire/tallyd; do
  name=$(basename "$p")
  got=$("$build/$p" --version)
  [ "$got" = "$name $version" ] || fail "$name --version printed '$got', want '$name $version'"
done

# shellcheck source=tallyd.sh
. "$(dirname "$0")/tallyd.sh"
tmp=$(mktemp -d /tmp/tally-cli-XXXXXX)
trap 'tallyd_kill; rm -rf "$tmp"' EXIT

# inspect_missing_dir_fails: it used to print an empty report and exit 0.
for inspect in "$tally inspect" "$build/tools/tally-inspect"; do
  st=0; out=$($inspect "$tmp/no/such/dir" 2>&1) || st=$?
  [ "$st" = 1 ] || fail "$inspect of a missing directory exited $st: $out"
  [[ "$out" == *"no/such/dir: No such file or directory"* ]] || fail "message: $out"
  mkdir -p "$tmp/empty"
  st=0; out=$($inspect "$tmp/empty" 2>&1) || st=$?
  [ "$st" = 1 ] || fail "$inspect of an empty directory exited $st: $out"
  [[ "$out" == *"not a tally data directory"* ]] || fail "message: $out"
done

tallyd_start "$tallyd" "$tmp" --shards 1
port=$tallyd_port
printf 'traffic,camera=KV1 speed=80 1735689600000000000\ntraffic,camera=KV1 speed=90 1735689660000000000\n' \
  >"$tmp/ev.lp"
"$tally" --port "$port" -q write "$tmp/ev.lp" 2>/dev/null

# query_with_unix_seconds: refused with the reading it meant, not 0 rows.
st=0; out=$("$tally" --port "$port" --csv query agg traffic speed KV1 1735689600 1d 2>&1) || st=$?
[ "$st" = 1 ] || fail "Unix seconds accepted (exit $st): $out"
[[ "$out" == *"write 1735689600s (2025-01-01T00:00:00Z)"* ]] || fail "no hint: $out"
for range in "1735689600s 1d" "1735689600000ms 1735776000000ms" "1735689600000000us 2025-01-02"; do
  # shellcheck disable=SC2086
  got=$("$tally" --port "$port" --csv query agg traffic speed KV1 $range | tail -1)
  [ "$got" = "2,170,80,90,85" ] || fail "agg over $range: '$got'"
done
# a fresh store inspects cleanly
"$tally" inspect "$tmp/data" >/dev/null || fail "inspect of a store failed"
tallyd_stop
echo "versions, inspect of non-stores, Unix seconds in queries: ok"
