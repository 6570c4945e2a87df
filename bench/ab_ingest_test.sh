#!/usr/bin/env bash
# ab_ingest_test.sh — meson test bench-ab-ingest: bench/ab_ingest runs a
# round on a small tally-gen file with one build as both A and B, and
# prints its figures for each turn.
#
#   bench/ab_ingest_test.sh BUILD_DIR
set -euo pipefail
build=$1
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d /tmp/tally-abtest-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
"$build/tools/tally-gen" -q --cameras 20 --days 1 --per-day 200 --lp "$tmp/a.lp"
split -n l/2 "$tmp/a.lp" "$tmp/part."
"$here/ab_ingest" --rounds 1 "$build" "$build" "$tmp"/part.* -- --flush-interval 1s >"$tmp/out" 2>&1 || {
	cat "$tmp/out"; exit 1; }
cat "$tmp/out"
lines=$(grep -c "M/cpu-s | wal .* B/event" "$tmp/out" || true)
[ "$lines" -eq 2 ] || { echo "expected 2 turns of figures, got $lines"; exit 1; }
grep -q "4000 events from 2 connection(s)" "$tmp/out" || { echo "wrong event count"; exit 1; }
echo "ok"
