#!/usr/bin/env bash
# packaging_test.sh — `meson install` into a temporary DESTDIR installs
# what a package needs and nothing else, and the installed library works:
# the README's embedding example compiles against the installed tally.h
# and tally.pc, linked shared and static, and runs. The systemd unit passes
# systemd-analyze verify (when systemd-analyze is here) with no warning.
#
#   tests/tools/packaging_test.sh SOURCE_DIR BUILD_DIR
#
# The install directories come from the environment (meson.build passes
# them): PREFIX BINDIR SBINDIR LIBDIR INCLUDEDIR MANDIR SYSCONFDIR UNITDIR,
# and TALLY_CFLAGS (the build's sanitizer flags, which its library needs).
set -euo pipefail
src=$1 build=$2
unset LD_LIBRARY_PATH # meson test points it at the build's libtally: use the installed one
fail() { echo "FAIL: $*"; exit 1; }
command -v pkg-config >/dev/null || { echo "skipped: pkg-config is not installed"; exit 77; }
# shellcheck source=tallyd.sh
. "$(dirname "$0")/tallyd.sh"
tmp=$(mktemp -d /tmp/tally-install-XXXXXX)
trap 'tallyd_kill; rm -rf "$tmp"' EXIT
root=$tmp/root
abs() { case $1 in /*) echo "$1" ;; *) echo "$PREFIX/$1" ;; esac; }
bindir=$root$(abs "$BINDIR") sbindir=$root$(abs "$SBINDIR") libdir=$root$(abs "$LIBDIR")
incdir=$root$(abs "$INCLUDEDIR") mandir=$root$(abs "$MANDIR") etc=$root$(abs "$SYSCONFDIR")
unitdir=$root$(abs "$UNITDIR")

meson install -C "$build" --destdir "$root" --no-rebuild --quiet >"$tmp/install.log" 2>&1 ||
  { cat "$tmp/install.log"; fail "meson install failed"; }

for f in "$bindir/tally" "$bindir/tally-gen" "$bindir/tally-inspect" "$sbindir/tallyd" \
         "$libdir/libtally.a" "$libdir/libtally.so" "$incdir/tally.h" "$libdir/pkgconfig/tally.pc" \
         "$mandir/man1/tally.1" "$mandir/man1/tally-gen.1" "$mandir/man1/tally-inspect.1" \
         "$mandir/man8/tallyd.8" "$unitdir/tallyd.service" "$etc/tally/tallyd.conf"; do
  [ -e "$f" ] || fail "not installed: ${f#"$root"}"
done
for f in "$bindir/tally-demo" "$bindir/tallyd"; do
  [ ! -e "$f" ] || fail "installed but should not be: ${f#"$root"}"
done
# Only the public headers (tally.h and the tally_base.h it includes):
# internal headers are never installed.
hs=$(find "$root" -name '*.h' -printf '%f\n' | sort | tr '\n' ' ')
[ "$hs" = "tally.h tally_base.h " ] || fail "headers installed: $hs"
for p in tally tally-gen tally-inspect; do "$bindir/$p" --version >/dev/null; done
"$sbindir/tallyd" --version >/dev/null

# The README's example, against the installed header and tally.pc only.
awk '/^```c$/ {f=1; next} f && /^```/ {exit} f' "$src/README.md" >"$tmp/hello.c"
[ -s "$tmp/hello.c" ] || fail "no c example in README.md"
want="1 windows of 5 minutes; 2 events, average 88.30 km/h"
export PKG_CONFIG_PATH=$libdir/pkgconfig PKG_CONFIG_SYSROOT_DIR=$root
cflags=$(pkg-config --cflags tally)
[[ "$cflags" == *"-I$incdir"* ]] || fail "pkg-config --cflags tally: '$cflags'"
# shellcheck disable=SC2086,SC2046
cc -std=c11 -Wall -Wextra -Werror ${TALLY_CFLAGS:-} $cflags "$tmp/hello.c" \
  $(pkg-config --libs tally) -Wl,-rpath,"$libdir" -o "$tmp/hello-shared"
readelf -d "$tmp/hello-shared" | grep -q 'NEEDED.*libtally\.so' || fail "not linked to libtally.so"
# The static link line: libtally.a plus what Libs.private names (a
# dependency missing there is an undefined symbol here); no libtally.so
# needed at run time.
libs=$(pkg-config --static --libs tally)
# shellcheck disable=SC2086
cc -std=c11 -Wall -Wextra -Werror ${TALLY_CFLAGS:-} $cflags "$tmp/hello.c" \
  ${libs/-ltally/-l:libtally.a} -o "$tmp/hello-static" ||
  fail "static link with '$libs' failed"
! readelf -d "$tmp/hello-static" | grep -q 'NEEDED.*libtally' || fail "static build needs libtally.so"
for v in shared static; do
  got=$(cd "$tmp" && rm -rf data-hello && "./hello-$v")
  [ "$got" = "$want" ] || fail "hello-$v printed '$got', want '$want'"
done

# The installed config file is one tallyd accepts (the unit starts tallyd
# with it; flags win, so the store and port here are the test's).
tallyd_start "$sbindir/tallyd" "$tmp" --config "$etc/tally/tallyd.conf"
tallyd_stop

# The unit: every directive known, the binary where ExecStart says (moved
# into the DESTDIR for the check), its man page found.
unit=$unitdir/tallyd.service
grep -q "^ExecStart=$(abs "$SBINDIR")/tallyd --config $(abs "$SYSCONFDIR")/tally/tallyd.conf$" "$unit" ||
  fail "ExecStart: $(grep ExecStart= "$unit")"
if command -v systemd-analyze >/dev/null; then
  sed "s#^ExecStart=#ExecStart=$root#" "$unit" >"$tmp/tallyd.service"
  out=$(MANPATH=$mandir systemd-analyze verify "$tmp/tallyd.service" 2>&1) ||
    fail "systemd-analyze verify: $out"
  [ -z "$out" ] || fail "systemd-analyze verify warns: $out"
  echo "systemd-analyze verify: clean"
else
  echo "systemd-analyze not found: the unit's directives were not verified"
fi
echo "installed: programs, libtally (shared and static via tally.pc), header, man pages, unit"
