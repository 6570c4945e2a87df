#!/usr/bin/env bash
# retention_cli_test.sh — retention on a running tallyd: the --retention
# setting, queries over expired ranges refused with a message naming the
# horizon (never a smaller answer), whole days of a raw-expired range still
# answered from their rollups, `tally retain` cutting parts, `tally
# retention` replacing the rules (bad rules refused, the old ones kept),
# `tally retained` and the figures in `tally stats`.
#
#   tests/retention_cli_test.sh TALLYD TALLY
set -euo pipefail
tallyd=$1 tally=$2
tmp=$(mktemp -d /tmp/tally-retention-cli-XXXXXX)
pid=
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; exit 1; }

"$tallyd" --data "$tmp/data" --port 0 --port-file "$tmp/port" --http-port off \
  --flush-interval 100ms --retention 'traffic:raw=30d;*:raw=1d,5m=1d,1h=1d,1d=1d' \
  --log-level warn 2>"$tmp/log" &
pid=$!
for _ in $(seq 1 2000); do [ -s "$tmp/port" ] && break; sleep 0.01; done
[ -s "$tmp/port" ] || { echo "tallyd did not start:"; cat "$tmp/log"; exit 1; }
t() { "$tally" --port "$(cat "$tmp/port")" "$@"; }

now=$(date +%s)
old=$(( (now - 60 * 86400) / 86400 * 86400 ))   # a UTC midnight 60 days back
for i in $(seq 0 99); do
  echo "traffic,camera=KV$((i % 2)) speed=$((i % 50)) $((old + i * 600))000000000"
  echo "traffic,camera=KV$((i % 2)) speed=$((i % 50)) $((now - 86400 + i * 60))000000000"
done > "$tmp/a.lp"
t -q write "$tmp/a.lp" >/dev/null
day=$(date -u -d "@$old" +%Y-%m-%d)
want_old=$(t --csv query agg traffic speed KV1 "$day" 1d | tail -1)

# the flusher puts the events into parts (two day partitions at least)
for _ in $(seq 1 600); do
  parts=$(t --csv stats | awk -F, '$1 == "parts" { print $2 }')
  [ "${parts:-0}" -ge 2 ] && break
  sleep 0.1
done
[ "${parts:-0}" -ge 2 ] || fail "no parts after 60 s: ${parts:-none}"

# reaching before the raw horizon: an error that says so
if t query agg traffic speed KV1 now-70d now 2>"$tmp/err" >/dev/null; then
  fail "an aggregate over an expired range answered"
fi
grep -q "expired" "$tmp/err" || fail "no 'expired' in: $(cat "$tmp/err")"
out=$(t retained traffic)
[[ $out == "OK retained traffic from "* ]] || fail "retained said: $out"
from=${out##* }
out=$(t retained traffic 1h)
[ "$out" = "OK retained traffic all" ] || fail "retained 1h said: $out"

out=$(t retain)
[[ $out == "OK retain parts_dropped 0 parts_raw_gone "* ]] || fail "retain said: $out"
# (the background's pass may have cut the old day already: stats below)
# the raw-expired day still answers from its rollups, whole days only
got=$(t --csv query agg traffic speed KV1 "$day" 1d | tail -1)
[ "$got" = "$want_old" ] || fail "old day after retain: $got, before: $want_old"
if t query scan traffic KV1 "$day" 1d 2>"$tmp/err" >/dev/null; then
  fail "a scan of raw-expired events answered"
fi
grep -q "expired" "$tmp/err" || fail "no 'expired' in: $(cat "$tmp/err")"
# from the horizon on, everything answers
t query agg traffic speed KV1 "${from}ns" now >/dev/null || fail "agg from the horizon failed"

# bad rules are refused and the rules in force stay
if t retention 'traffic:raw=30d,5m=1d' 2>"$tmp/err" >/dev/null; then
  fail "rules with 5m shorter than raw were taken"
fi
grep -q "ERR line .*retention rule 1" "$tmp/err" || fail "no ERR: $(cat "$tmp/err")"
[[ $(t retained traffic) == "OK retained traffic from $from" ]] || fail "rules changed"
out=$(t retention none)
[ "$out" = "OK retention none" ] || fail "retention none said: $out"
[ "$(t retained traffic)" = "OK retained traffic all" ] || fail "rules still in force"
# raw events that are gone stay gone: still an error, never a smaller answer
if t query scan traffic KV1 "$day" 1d 2>"$tmp/err" >/dev/null; then
  fail "a scan of cut parts answered after the rules went"
fi
grep -q "expired" "$tmp/err" || fail "no 'expired' in: $(cat "$tmp/err")"

stats=$(t --csv stats)
grep -q '^retention_passes,[1-9]' <<<"$stats" || fail "no retention_passes in stats"
grep -q '^retention_parts_raw_gone,[1-9]' <<<"$stats" || fail "no parts_raw_gone in stats"
grep -q '^retention_last_drop_ns,[1-9]' <<<"$stats" || fail "no last drop in stats"

# drop-table: refused without a terminal or --yes, then every event goes
if t drop-table traffic </dev/null 2>"$tmp/err" >/dev/null; then
  fail "drop-table without --yes on no terminal dropped"
fi
grep -q -- "--yes" "$tmp/err" || fail "no hint of --yes: $(cat "$tmp/err")"
if t drop traffic 2>/dev/null >/dev/null; then fail "'tally drop' skipped the confirmation"; fi
out=$(t drop-table traffic --yes)
[ "$out" = "OK drop traffic" ] || fail "drop-table said: $out"
got=$(t --csv query agg traffic speed KV1 "${from}ns" now | tail -1)
[[ $got == 0,* ]] || fail "after the drop: $got"
if t drop-table nope --yes 2>"$tmp/err" >/dev/null; then fail "dropped a missing table"; fi
grep -q "no table 'nope'" "$tmp/err" || fail "no 'no table': $(cat "$tmp/err")"
kill "$pid"; wait "$pid" 2>/dev/null || true; pid=

# SIGHUP rereads the config file's rules; bad ones change nothing
printf 'retention = "traffic:raw=30d"\n' > "$tmp/conf"
rm -f "$tmp/port"
"$tallyd" --config "$tmp/conf" --data "$tmp/data2" --port 0 --port-file "$tmp/port" \
  --http-port off --log-level info 2>"$tmp/log" &
pid=$!
for _ in $(seq 1 2000); do [ -s "$tmp/port" ] && break; sleep 0.01; done
[ -s "$tmp/port" ] || { echo "tallyd did not start:"; cat "$tmp/log"; exit 1; }
echo "traffic,camera=KV1 speed=1 $(( now - 3600 ))000000000" | t -q write >/dev/null
first=$(t retained traffic)
[[ $first == "OK retained traffic from "* ]] || fail "retained with the file's rules: $first"
printf 'retention = "traffic:raw=10d"\n' > "$tmp/conf"
kill -HUP "$pid"
for _ in $(seq 1 600); do
  [ "$(t retained traffic)" != "$first" ] && break
  sleep 0.1
done
second=$(t retained traffic)
[ "${second##* }" -gt "${first##* }" ] || fail "SIGHUP did not shorten raw: $first, then $second"
printf 'retention = "traffic:raw=bad"\n' > "$tmp/conf"
kill -HUP "$pid"
for _ in $(seq 1 600); do grep -q "retention unchanged" "$tmp/log" && break; sleep 0.1; done
grep -q "retention unchanged" "$tmp/log" || fail "no 'retention unchanged' in the log"
[ "$(t retained traffic)" = "$second" ] || fail "bad rules in the file changed the rules"
echo ok
