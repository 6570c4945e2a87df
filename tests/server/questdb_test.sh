#!/usr/bin/env bash
# questdb_test.sh — QuestDB's official Node.js client writes to tallyd over
# TCP unchanged, and the rows answer queries exactly.
#
#   tests/server/questdb_test.sh TALLYD TALLY
#
# Exits 77 (skipped) when Node.js or the client package is missing
# (tools/setup installs the package into tests/server/node_modules).
set -euo pipefail
tallyd=$1 tally=$2
here=$(cd "$(dirname "$0")" && pwd)
if ! command -v node >/dev/null; then
  echo "skipped: node is not installed"; exit 77
fi
if [ ! -d "$here/node_modules/@questdb/nodejs-client" ]; then
  echo "skipped: @questdb/nodejs-client is not installed (run tools/setup)"; exit 77
fi
tmp=$(mktemp -d /tmp/tally-questdb-XXXXXX)
pid=
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
"$tallyd" --data "$tmp/data" --port 0 --port-file "$tmp/port" --http-port off --log-level warn 2>"$tmp/log" &
pid=$!
for _ in $(seq 1 2000); do [ -s "$tmp/port" ] && break; sleep 0.01; done
[ -s "$tmp/port" ] || { echo "tallyd did not start:"; cat "$tmp/log"; exit 1; }
port=$(cat "$tmp/port")

node "$here/questdb_client.mjs" "$port" 1000

# The client has closed; its rows become visible as the server finishes
# reading them. Camera QD3 has rows i = 3, 13, ..., 993: speed i/4.
want="100,12450,0.75,248.25,124.5"
got=
for _ in $(seq 1 1000); do
  got=$("$tally" --port "$port" --csv query agg qdb speed QD3 2023-11-14 1d 2>&1 | tail -1) || true
  [ "$got" = "$want" ] && break
  sleep 0.01
done
if [ "$got" != "$want" ]; then
  echo "agg of QD3: got '$got', want '$want'"; exit 1
fi
# Every column type came through: tag, float, int, string, bool.
first=$("$tally" --port "$port" --csv query scan qdb QD3 2023-11-14 1d 1 | tail -1)
if [ "$first" != "2023-11-14T00:00:03Z,0.75,0,P-3,false" ]; then
  echo "first row of QD3: got '$first'"; exit 1
fi
keys=$("$tally" --port "$port" --csv query keys qdb speed 2023-11-14 1d | tail -n +2 | wc -l)
[ "$keys" = 10 ] || { echo "keys: got $keys, want 10"; exit 1; }

kill -TERM "$pid"
status=0; wait "$pid" || status=$?
pid=
[ "$status" = 0 ] || { echo "tallyd exited with $status"; cat "$tmp/log"; exit 1; }
echo "QuestDB Node.js client: 1000 rows written and queried"
