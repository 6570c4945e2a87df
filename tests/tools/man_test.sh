#!/usr/bin/env bash
# man_test.sh — the man pages render without a warning (groff -ww and
# man --warnings at 80 columns), carry their NAME, and describe every
# option their program's --help lists, so a new flag cannot go
# undocumented.
#
#   tests/tools/man_test.sh SOURCE_DIR BUILD_DIR VERSION
#
# VERSION is meson's project version; each page's title line names it.
set -euo pipefail
src=$1 build=$2 version=$3
fail() { echo "FAIL: $*"; exit 1; }
command -v groff >/dev/null || { echo "skipped: groff is not installed"; exit 77; }
command -v man >/dev/null || { echo "skipped: man is not installed"; exit 77; }

for page in tally.1 tally-gen.1 tallyd.8; do
  f=$src/man/$page
  [ -f "$f" ] || fail "$page is missing"
  grep -q "^\.TH .* \"tally $version\"" "$f" || fail "$page's .TH line does not say \"tally $version\""
  w=$(groff -man -ww -z "$f" 2>&1) || fail "groff failed on $page: $w"
  [ -z "$w" ] || fail "groff warns on $page: $w"
  w=$(MANWIDTH=80 man --warnings -l "$f" 2>&1 >/dev/null) || fail "man -l failed on $page: $w"
  [ -z "$w" ] || fail "man warns on $page: $w"
  text=$(MANWIDTH=80 man -l "$f" 2>/dev/null)
  name=${page%.*}
  grep -q "^NAME" <<<"$text" || fail "$page has no NAME section"
  grep -q "^       $name" <<<"$text" || fail "$page's NAME does not start with $name"
done

# Every --option in a program's --help appears in its page (--name is
# tallyd's placeholder for "any setting").
check_opts() {
  local prog=$1 page=$2 opt
  for opt in $("$prog" --help | grep -oE -- '--[a-z][a-z0-9-]*' | sort -u | grep -vx -- --name); do
    grep -qF -- "${opt//-/\\-}" "$src/man/$page" ||
      fail "$page does not describe $opt (in $(basename "$prog") --help)"
  done
}
check_opts "$build/wire/tallyd" tallyd.8
check_opts "$build/tools/tally" tally.1
check_opts "$build/tools/tally-gen" tally-gen.1
echo "man pages: tally(1), tally-gen(1), tallyd(8) render cleanly and cover every option"
