#!/usr/bin/env bash
# delete_cli_test.sh — deleting a key's events on a running tallyd:
# `tally delete` (refused without a terminal or --yes, then the events go
# and every level's answer with them), `#!delete` of every key, and
# POST /api/v1/delete (GET refused, a bad parameter named in a 400).
#
#   tests/delete_cli_test.sh TALLYD TALLY
set -euo pipefail
tallyd=$1 tally=$2
tmp=$(mktemp -d /tmp/tally-delete-cli-XXXXXX)
pid=
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; exit 1; }

"$tallyd" --data "$tmp/data" --port 0 --port-file "$tmp/port" --http-port 0 \
  --http-port-file "$tmp/hport" --log-level warn 2>"$tmp/log" &
pid=$!
for _ in $(seq 1 2000); do [ -s "$tmp/port" ] && [ -s "$tmp/hport" ] && break; sleep 0.01; done
[ -s "$tmp/hport" ] || { echo "tallyd did not start:"; cat "$tmp/log"; exit 1; }
t() { "$tally" --port "$(cat "$tmp/port")" "$@"; }
http="http://127.0.0.1:$(cat "$tmp/hport")"

# two days, 4 cameras, one event a minute each day; 2023-11-14 and -15
for i in $(seq 0 2879); do
  echo "traffic,camera=KV$((i % 4)) speed=$((i % 50)) $((1699920000 + i * 60))000000000"
done > "$tmp/a.lp"
t -q write "$tmp/a.lp" >/dev/null
count() { t --csv query agg traffic speed "$1" "$2" "$3" | tail -1 | cut -d, -f1; }
[ "$(count KV1 2023-11-14 2d)" = 720 ] || fail "before: $(count KV1 2023-11-14 2d)"

# refused without a terminal or --yes; nothing goes
if t delete traffic KV1 2023-11-14 1d </dev/null 2>"$tmp/err" >/dev/null; then
  fail "delete without --yes on no terminal deleted"
fi
grep -q -- "--yes" "$tmp/err" || fail "no hint of --yes: $(cat "$tmp/err")"
[ "$(count KV1 2023-11-14 2d)" = 720 ] || fail "a refused delete deleted"

out=$(t delete traffic KV1 2023-11-14T06:00:00Z 2023-11-14T12:00:00Z --yes)
[[ $out == "OK delete rows 90 parts_rewritten "* ]] || fail "delete said: $out"
# the other cameras' blocks, and KV1's outside the range, were copied as they were
[[ $out =~ bytes_written\ ([0-9]+)\ bytes_copied\ ([0-9]+)$ ]] || fail "no bytes_copied: $out"
(( BASH_REMATCH[2] > 0 && BASH_REMATCH[2] < BASH_REMATCH[1] )) || fail "copied: $out"
[ "$(count KV1 2023-11-14 2d)" = 630 ] || fail "after: $(count KV1 2023-11-14 2d)"
[ "$(count KV1 2023-11-14T06:00:00Z 6h)" = 0 ] || fail "the range still counts"
[ "$(count KV2 2023-11-14 2d)" = 720 ] || fail "another camera changed"
series=$(t --csv query series traffic speed KV1 1h 2023-11-14 1d | tail -n +2 | wc -l)
[ "$series" = 18 ] || fail "hourly series has $series windows, want 18"
stats=$(t --csv stats)
grep -q '^delete_rows,90$' <<<"$stats" || fail "stats: $(grep delete <<<"$stats")"
grep -q '^delete_bytes_written,[1-9]' <<<"$stats" || fail "no bytes written in stats"

# #!delete of every key on the second day, by the protocol
out=$(t delete traffic '*' 2023-11-15 1d --yes)
[[ $out == "OK delete rows 1440 "* ]] || fail "delete * said: $out"
[ "$(count KV3 2023-11-15 1d)" = 0 ] || fail "every key's day still counts"
[ "$(count KV3 2023-11-14 1d)" = 360 ] || fail "the first day changed"

# HTTP: POST only, parameters checked by name
code=$(curl -s -o "$tmp/body" -w '%{http_code}' "$http/api/v1/delete?table=traffic&key=KV0&from=2023-11-14&to=2023-11-15")
[ "$code" = 405 ] || fail "GET delete answered $code"
code=$(curl -s -o "$tmp/body" -w '%{http_code}' -X POST "$http/api/v1/delete?table=traffic&from=2023-11-14&to=2023-11-15")
[ "$code" = 400 ] && grep -q '"key' "$tmp/body" || fail "no key: $code $(cat "$tmp/body")"
code=$(curl -s -o "$tmp/body" -w '%{http_code}' -X POST "$http/api/v1/delete?table=traffic&key=KV0&from=yesterday-ish&to=2023-11-15")
[ "$code" = 400 ] && grep -q 'from' "$tmp/body" || fail "bad from: $code $(cat "$tmp/body")"
code=$(curl -s -o "$tmp/body" -w '%{http_code}' -X POST "$http/api/v1/delete?table=nope&key=KV0&from=2023-11-14&to=2023-11-15")
[ "$code" = 404 ] || fail "missing table: $code $(cat "$tmp/body")"
code=$(curl -s -o "$tmp/body" -w '%{http_code}' -X POST "$http/api/v1/delete?table=traffic&key=KV0&from=2023-11-14&to=2023-11-14T01:00:00Z")
[ "$code" = 200 ] || fail "delete over HTTP: $code $(cat "$tmp/body")"
grep -q '"rows":15,' "$tmp/body" || fail "HTTP answer: $(cat "$tmp/body")"
grep -q '"bytes_copied":[1-9][0-9]*}' "$tmp/body" || fail "HTTP bytes_copied: $(cat "$tmp/body")"
[ "$(count KV0 2023-11-14 1d)" = 345 ] || fail "after HTTP: $(count KV0 2023-11-14 1d)"

# the same after a restart
kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
rm -f "$tmp/port" "$tmp/hport"
"$tallyd" --data "$tmp/data" --port 0 --port-file "$tmp/port" --http-port off --log-level warn 2>"$tmp/log" &
pid=$!
for _ in $(seq 1 2000); do [ -s "$tmp/port" ] && break; sleep 0.01; done
[ -s "$tmp/port" ] || { echo "tallyd did not restart:"; cat "$tmp/log"; exit 1; }
[ "$(count KV1 2023-11-14 2d)" = 270 ] || fail "restarted: KV1 $(count KV1 2023-11-14 2d)"
[ "$(count KV0 2023-11-14 2d)" = 345 ] || fail "restarted: KV0 $(count KV0 2023-11-14 2d)"
echo ok
