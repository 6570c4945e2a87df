#!/usr/bin/env bash
# tags_cli_test.sh — series keyed by several tags through tallyd: subset
# keys in `tally query agg` / `#!agg`, `#!keys ... key=... by=...`, the
# JSON API's aggs key= and by=, and InfluxQL's WHERE and GROUP BY on a
# key tag, against answers worked out by hand, before and after a flush
# (tallyd --table-keys traffic=camera+lane; docs/architecture.md, "Series
# keys"). Also `#!stats` merged_lines for the tag outside the key.
#
#   tests/tools/tags_cli_test.sh BUILD_DIR
set -euo pipefail
build=$1
tally=$build/tools/tally tallyd=$build/wire/tallyd
fail() { echo "FAIL: $*"; exit 1; }
command -v curl >/dev/null || { echo "skipped: curl is not installed"; exit 77; }

# shellcheck source=tallyd.sh
. "$(dirname "$0")/tallyd.sh"
tmp=$(mktemp -d /tmp/tally-tags-XXXXXX)
trap 'tallyd_kill; rm -rf "$tmp"' EXIT

tallyd_start "$tallyd" "$tmp" --shards 2 --table-keys traffic=camera+lane \
  --http-port-file "$tmp/http" --flush-interval 1s
port=$tallyd_port
for _ in $(seq 1 3000); do [ -s "$tmp/http" ] && break; sleep 0.01; done
http=$(cat "$tmp/http")
# KV1 lane 1: 50 70; KV1 lane 2: 90; KV2 lane 1: 30; KV2 lane 2: 100 20
# (dir is outside the key: merged, counted)
t=1735689600
{
  echo "traffic,camera=KV1,lane=1,dir=N speed=50 ${t}000000000"
  echo "traffic,lane=1,camera=KV1 speed=70 $((t + 60))000000000"
  echo "traffic,camera=KV1,lane=2 speed=90 $((t + 120))000000000"
  echo "traffic,camera=KV2,lane=1 speed=30 $((t + 180))000000000"
  echo "traffic,camera=KV2,lane=2 speed=100 $((t + 240))000000000"
  echo "traffic,camera=KV2,lane=2 speed=20 $((t + 300))000000000"
} >"$tmp/ev.lp"
"$tally" --port "$port" -q write "$tmp/ev.lp" 2>/dev/null

q() { "$tally" --port "$port" --csv query "$@" | tr '\n' ' '; }
check() {
  local want=$1; shift
  local got
  got=$(q "$@")
  [ "$got" = "$want" ] || fail "query $*: '$got', want '$want'"
}
iql() {
  curl -sS -G "http://127.0.0.1:$http/query" --data-urlencode "db=x" --data-urlencode "q=$1"
}
for pass in memtable parts; do
  check "count,sum,min,max,avg 3,210,50,90,70 " agg traffic speed camera=KV1 2025-01-01 1d
  check "count,sum,min,max,avg 3,150,30,70,50 " agg traffic speed lane=1 2025-01-01 1d
  check "count,sum,min,max,avg 2,120,20,100,60 " agg traffic speed lane=2,camera=KV2 2025-01-01 1d
  check "key,count,sum,min,max,avg lane=1,3,150,30,70,50 lane=2,3,210,20,100,70 " \
    keys traffic speed 2025-01-01 1d by=lane
  check "key,count,sum,min,max,avg camera=KV2,3,150,20,100,50 " \
    keys traffic speed 2025-01-01 1d by=camera key=camera=KV2
  check 'key,count,sum,min,max,avg "camera=KV1,lane=2",1,90,90,90,90 "camera=KV2,lane=2",2,120,20,100,60 ' \
    keys traffic speed 2025-01-01 1d key=lane=2
  got=$(curl -sS "http://127.0.0.1:$http/api/v1/aggs?table=traffic&field=speed&from=2025-01-01&to=2025-01-02&by=lane")
  [[ "$got" == *'"values":[["lane=1",3,50,30,70,150],["lane=2",3,70,20,100,210]]'* ]] ||
    fail "aggs by=lane: $got"
  got=$(iql "SELECT mean(speed), count(speed) FROM traffic WHERE time >= '2025-01-01T00:00:00Z' AND time < '2025-01-02T00:00:00Z' GROUP BY \"lane\"")
  [[ "$got" == *'"tags":{"lane":"1"},"columns":["time","mean","count"],"values":[["2025-01-01T00:00:00Z",50,3]]'* &&
     "$got" == *'"tags":{"lane":"2"},"columns":["time","mean","count"],"values":[["2025-01-01T00:00:00Z",70,3]]'* ]] ||
    fail "InfluxQL GROUP BY lane: $got"
  got=$(iql "SELECT sum(speed) FROM traffic WHERE \"lane\" = '2' AND camera = 'KV2' AND time >= '2025-01-01T00:00:00Z' AND time < '2025-01-02T00:00:00Z'")
  [[ "$got" == *'"values":[["2025-01-01T00:00:00Z",120]]'* ]] || fail "InfluxQL WHERE lane: $got"
  [ $pass = parts ] || tallyd_wait_part "$tmp"
done
got=$(iql 'SHOW TAG KEYS FROM traffic')
[[ "$got" == *'"values":[["camera"],["dir"],["lane"]]'* ]] || fail "SHOW TAG KEYS: $got"
st=0; out=$("$tally" --port "$port" query keys traffic speed 2025-01-01 1d by=dir 2>&1) || st=$?
[ "$st" != 0 ] && [[ "$out" == *"tag 'dir' is not in table 'traffic''s key (camera+lane)"* ]] ||
  fail "by=dir accepted: $out"
"$tally" --port "$port" --csv stats | grep -qx 'merged_lines,1' || fail "merged_lines is not 1"
tallyd_stop
echo "subset keys, #!keys by=, aggs by=, InfluxQL on key tags, memtable and parts: ok"
