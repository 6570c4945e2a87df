#!/usr/bin/env bash
# dir_safety_test.sh — bench_storage --dir names a parent directory: the
# store is a fresh directory inside it, removed at exit, and nothing else
# in the parent is touched. (It once ran rm -rf on the directory given,
# and --dir /tmp wiped /tmp.)
#
#   bench/dir_safety_test.sh BENCH_STORAGE
set -euo pipefail
bench=$1
parent=$(mktemp -d /tmp/tally-dirsafety-XXXXXX)
trap 'rm -rf "$parent"' EXIT
echo keep >"$parent/sentinel"
mkdir "$parent/other"
"$bench" --cameras 20 --days 2 --events 200 --dir "$parent" >"$parent/out.txt" 2>&1 || {
  cat "$parent/out.txt"; exit 1; }
[ "$(cat "$parent/sentinel")" = keep ] || { echo "the sentinel file is gone"; exit 1; }
[ -d "$parent/other" ] || { echo "a directory beside the store is gone"; exit 1; }
left=$(find "$parent" -maxdepth 1 -name 'tally-bench-storage-*' | wc -l)
[ "$left" -eq 0 ] || { echo "the store was left behind"; exit 1; }
grep -q "bytes/event" "$parent/out.txt" || { echo "no figures:"; cat "$parent/out.txt"; exit 1; }
echo "ok: the parent and its files survive, the store is removed"
