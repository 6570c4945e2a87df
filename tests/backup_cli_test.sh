#!/usr/bin/env bash
# backup_cli_test.sh — `tally backup --server` (tallyd's #!backup),
# `tally backup-prune`, `tally restore` and `tally verify` end to end: a
# running server backs itself up (the second time sends nothing), a prune
# keeps the newest two of three, the restore answers the same query, and
# verify names the file and block of a flipped byte.
#
#   tests/backup_cli_test.sh TALLYD TALLY
set -euo pipefail
tallyd=$1 tally=$2
tmp=$(mktemp -d /tmp/tally-backup-cli-XXXXXX)
pid=
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; exit 1; }

"$tallyd" --data "$tmp/data" --port 0 --port-file "$tmp/port" --http-port 0 --log-level warn 2>"$tmp/log" &
pid=$!
for _ in $(seq 1 2000); do [ -s "$tmp/port" ] && break; sleep 0.01; done
[ -s "$tmp/port" ] || { echo "tallyd did not start:"; cat "$tmp/log"; exit 1; }
port=$(cat "$tmp/port")

for i in $(seq 0 199); do
  echo "traffic,camera=KV$((i % 4)) speed=$((i % 50)).5 $((1700000000 + i * 60))000000000"
done > "$tmp/a.lp"
"$tally" --port "$port" -q write "$tmp/a.lp" >/dev/null
want=$("$tally" --port "$port" --csv query agg traffic speed KV1 2023-11-14 1d | tail -1)

out=$("$tally" backup --server "127.0.0.1:$port" "$tmp/bk")
[[ $out == "OK backup 1 files "* ]] || fail "first backup said: $out"
out=$("$tally" backup --server "127.0.0.1:$port" "$tmp/bk")
[[ $out == "OK backup 2 "*" new_files 0 new_bytes 0" ]] || fail "second backup said: $out"
# a destination the server cannot write is an error, not an OK
touch "$tmp/file"
if "$tally" backup --server "127.0.0.1:$port" "$tmp/file/bk" 2>"$tmp/err"; then
  fail "a backup into a file succeeded"
fi
grep -q "ERR line .*backup" "$tmp/err" || fail "no ERR: $(cat "$tmp/err")"

# a third backup after writes to another camera (KV1's answer stays),
# then keep the newest two (local: no server); backups 1 and 2 are equal,
# so no object is only backup 1's
for i in $(seq 0 49); do
  echo "traffic,camera=KV9 speed=$((i % 50)).5 $((1700000000 + i * 60))000000000"
done > "$tmp/b.lp"
"$tally" --port "$port" -q write "$tmp/b.lp" >/dev/null
out=$("$tally" backup --server "127.0.0.1:$port" "$tmp/bk")
[[ $out == "OK backup 3 "* ]] || fail "third backup said: $out"
if "$tally" backup-prune "$tmp/bk" 2>/dev/null; then fail "backup-prune without --keep ran"; fi
if "$tally" backup-prune "$tmp/bk" --keep 0 2>/dev/null; then fail "backup-prune --keep 0 ran"; fi
out=$("$tally" backup-prune "$tmp/bk" --keep 2)
[[ $out == "$tmp/bk: kept backups 2 to 3 (2), deleted 1 catalogs and 0 objects"* ]] ||
  fail "backup-prune said: $out"
[ ! -e "$tmp/bk/backup-00000000000000000001.catalog" ] || fail "catalog 1 is still there"
ls "$tmp"/bk/lease-* >/dev/null 2>&1 && fail "a prune left its lease"

kill "$pid"; wait "$pid" 2>/dev/null || true; pid=

"$tally" verify "$tmp/bk" >/dev/null || fail "verify of a good backup failed"
"$tally" restore "$tmp/bk" "$tmp/restored" >/dev/null
"$tally" verify "$tmp/restored" >/dev/null || fail "verify of the restored directory failed"
if "$tally" restore "$tmp/bk" "$tmp/restored" 2>"$tmp/err"; then
  fail "a restore into a non-empty directory succeeded"
fi
grep -q "not empty" "$tmp/err" || fail "no 'not empty': $(cat "$tmp/err")"

"$tallyd" --data "$tmp/restored" --port 0 --port-file "$tmp/port2" --http-port 0 --log-level warn 2>"$tmp/log2" &
pid=$!
for _ in $(seq 1 2000); do [ -s "$tmp/port2" ] && break; sleep 0.01; done
[ -s "$tmp/port2" ] || { echo "tallyd did not start on the restore:"; cat "$tmp/log2"; exit 1; }
got=$("$tally" --port "$(cat "$tmp/port2")" --csv query agg traffic speed KV1 2023-11-14 1d | tail -1)
[ "$got" = "$want" ] || fail "restored answer $got, original $want"
kill "$pid"; wait "$pid" 2>/dev/null || true; pid=

# one flipped byte in the WAL object: verify names the file
obj=$(awk '$1 == "file" && $2 == "wal" { print $3 "-" $4; exit }' "$tmp"/bk/backup-*02.catalog)
name=$(awk '$1 == "file" && $2 == "wal" { print $5; exit }' "$tmp"/bk/backup-*02.catalog)
printf 'X' | dd of="$tmp/bk/objects/$obj" bs=1 seek=40 conv=notrunc status=none
if "$tally" verify "$tmp/bk" >"$tmp/v" 2>&1; then fail "verify missed a flipped byte"; fi
grep -q "$name (objects/$obj): .*xxh3" "$tmp/v" || fail "verify said: $(cat "$tmp/v")"
echo "ok"
