#!/usr/bin/env bash
# dist_cli_test.sh — exact distributions through tallyd: `#!dist` by way of
# `tally query dist`, against answers worked out by hand, before and after
# a flush (tallyd --distributions; docs/protocol.md).
#
#   tests/tools/dist_cli_test.sh BUILD_DIR
set -euo pipefail
build=$1
tally=$build/tools/tally tallyd=$build/wire/tallyd
fail() { echo "FAIL: $*"; exit 1; }

# shellcheck source=tallyd.sh
. "$(dirname "$0")/tallyd.sh"
tmp=$(mktemp -d /tmp/tally-dist-XXXXXX)
trap 'tallyd_kill; rm -rf "$tmp"' EXIT

tallyd_start "$tallyd" "$tmp" --shards 2 --distributions traffic.speed:0.1 --flush-interval 1s
port=$tallyd_port
# ten speeds of KV1 on 2025-01-01, one a minute: sorted 41.2 48.0 50.5 52.3
# 55.0 55.0 57.3 61.9 64.4 72.8
t=1735689600
for v in 55.0 41.2 61.9 57.3 48.0 72.8 55.0 50.5 64.4 52.3; do
  echo "traffic,camera=KV1 speed=$v ${t}000000000"
  t=$((t + 60))
done >"$tmp/ev.lp"
"$tally" --port "$port" -q write "$tmp/ev.lp" 2>/dev/null

check() {
  local want=$1; shift
  local got
  got=$("$tally" --port "$port" --csv query dist traffic speed KV1 "$@" | tr '\n' ' ')
  [ "$got" = "$want" ] || fail "query dist $*: '$got', want '$want'"
}
# nearest rank: V85 is the ceil(8.5) = 9th value, the median the 5th
for pass in memtable parts; do
  check "stat,value count,10 q=0.5,55 q=0.85,64.4 " 2025-01-01 1d
  check "stat,value count,10 above=55,4 below=50.5,2 \"[40,50)\",2 \"[50,60)\",5 \"[60,80)\",3 " \
    2025-01-01 1d above=55 below=50.5 hist=40,50,60,80
  # an unaligned range: the 2nd to the 7th reading (41.2 61.9 57.3 48.0 72.8 55.0)
  check "stat,value count,6 q=0.5,55 q=1,72.8 q=0,41.2 " 1735689660s 1735690020s q=0.5 q=1 q=0
  if [ $pass = memtable ]; then
    # wait for the flush (1 s interval): the parts must answer the same
    for _ in $(seq 100); do
      [ -n "$(ls "$tmp/data/parts" 2>/dev/null | grep '\.part$')" ] && break
      sleep 0.2
    done
    [ -n "$(ls "$tmp/data/parts" | grep '\.part$')" ] || fail "no flush"
  fi
done
st=0; out=$("$tally" --port "$port" query dist traffic speed KV1 2025-01-01 1d q=2 2>&1) || st=$?
[ "$st" != 0 ] && [[ "$out" == *"'q=2' is not q=Q"* ]] || fail "q=2 accepted: $out"
tallyd_stop

# Past a bound: with traffic.speed:0.1:4 the two 5-minute windows (5
# distinct speeds each) are kept as sketches once flushed, and the answer
# says so in an error row, its median within 1/128 of 55 (before the
# flush, if a query gets there first, the memtable's rows answer exactly,
# without one).
mkdir "$tmp/b"
tallyd_start "$tallyd" "$tmp/b" --shards 1 --distributions traffic.speed:0.1:4 --flush-interval 1s \
  --http-port-file "$tmp/b/http"
port=$tallyd_port
for _ in $(seq 1 3000); do [ -s "$tmp/b/http" ] && break; sleep 0.01; done
http=$(cat "$tmp/b/http")
"$tally" --port "$port" -q write "$tmp/ev.lp" 2>/dev/null
# the flush (1 s interval) is done when the parts answer: bounded wait
for _ in $(seq 300); do
  got=$("$tally" --port "$port" --csv query dist traffic speed KV1 2025-01-01 1d q=0.5 | tr '\n' ' ')
  [[ "$got" == *error* ]] && break
  [ "$got" = "stat,value count,10 q=0.5,55 " ] || fail "before the flush: '$got'"
  sleep 0.2
done
[[ "$got" == "stat,value count,10 error,0.0078125 q=0.5,"* ]] || fail "sketch: '$got'"
med=${got##*q=0.5,}
awk -v m="$med" 'BEGIN { d = m - 55; if (d < 0) d = -d; exit !(d <= 55 / 128) }' ||
  fail "sketch median $med not within 1/128 of 55"
# the same sketch over HTTP says so too: the JSON answer's "error", and
# InfluxQL's median a warning in its statement's messages
got=$(curl -sf "http://127.0.0.1:$http/api/v1/dist?table=traffic&field=speed&key=KV1&from=2025-01-01&to=2025-01-02&q=0.5")
[[ "$got" == *'],"error":0.0078125}' ]] || fail "/api/v1/dist of a sketch: '$got'"
# CSV has no end to say it at: each row's last column, error, does
got=$(curl -sf "http://127.0.0.1:$http/api/v1/dist?table=traffic&field=speed&key=KV1&from=2025-01-01&to=2025-01-02&q=0.5&above=60&format=csv" | tr '\n' ' ')
[[ "$got" == 'time,count,q=0.5,above=60,error 2025-01-01T00:00:00Z,10,'*',0.0078125 ' ]] ||
  fail "/api/v1/dist?format=csv of a sketch: '$got'"
# per 5-minute window: the part derives those from its raw events, so
# they are exact past the bound (error 0): 41.2 48.0 55.0 57.3 61.9 and
# 50.5 52.3 55.0 64.4 72.8, nearest rank
got=$(curl -sf "http://127.0.0.1:$http/api/v1/dist?table=traffic&field=speed&key=KV1&from=2025-01-01&to=2025-01-02&step=5m&format=csv" | tr '\n' ' ')
[[ "$got" == 'time,count,q=0.5,q=0.85,error 2025-01-01T00:00:00Z,5,55,61.9,0 2025-01-01T00:05:00Z,5,55,72.8,0 ' ]] ||
  fail "/api/v1/dist?format=csv&step=5m past the bound: '$got'"
got=$(curl -sfG "http://127.0.0.1:$http/query" --data-urlencode db=tally --data-urlencode \
  "q=SELECT median(speed) FROM traffic WHERE camera = 'KV1' AND time >= '2025-01-01T00:00:00Z' AND time < '2025-01-02T00:00:00Z'")
[[ "$got" == *'"messages":[{"level":"warning","text":"approximate: '*'relative error 0.0078125"}]'* ]] ||
  fail "InfluxQL median of a sketch: '$got'"
tallyd_stop
echo "#!dist quantiles, thresholds and histograms, memtable and parts, sketches past a bound: ok"
