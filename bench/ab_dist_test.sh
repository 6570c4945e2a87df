#!/usr/bin/env bash
# ab_dist_test.sh — meson test bench-ab-dist: bench/ab_dist runs a round
# on a small workload with one build as both A and B, and prints every
# figure for each turn and their medians (a number, not a blank, in each
# of the six columns: the figures bench_dist prints are what it parses).
#
#   bench/ab_dist_test.sh BUILD_DIR
set -euo pipefail
build=$1
here=$(cd "$(dirname "$0")" && pwd)
out=$(mktemp /tmp/tally-abdist-XXXXXX)
trap 'rm -f "$out"' EXIT
"$here/ab_dist" --rounds 1 --reps 50 --cameras 10 --days 2 --per-day 300 "$build" "$build" \
	>"$out" 2>&1 || { cat "$out"; exit 1; }
cat "$out"
num='[0-9]+(\.[0-9]+)?'
turns=$(grep -cE "^[AB]( $num){6}( |$)" "$out" || true)
[ "$turns" -eq 4 ] || { echo "expected 4 lines of six figures (2 turns, 2 medians), got $turns"; exit 1; }
echo "ok"
