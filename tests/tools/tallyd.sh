# tallyd.sh — sourced by the shell tests: start a tallyd of our own on a
# free port of 127.0.0.1 and stop it by its PID, nothing else.
#
#   tallyd_start TALLYD DIR [FLAG...]   data in DIR/data; sets tallyd_pid
#                                       and tallyd_port, or fails the test
#   tallyd_stop                         SIGTERM, wait; fails on a bad exit
#   tallyd_kill                         for an EXIT trap: stop, no checks
#   tallyd_wait_part DIR                waits (bounded) for a part in DIR/data
tallyd_pid= tallyd_port=

tallyd_start() {
  local bin=$1 dir=$2
  shift 2
  "$bin" --data "$dir/data" --port 0 --port-file "$dir/port" --http-port 0 --prefault off --log-level warn \
    "$@" 2>"$dir/tallyd.log" &
  tallyd_pid=$!
  # bounded: up to 30 s for a slow machine, less if tallyd exits
  for _ in $(seq 1 3000); do
    if [ -s "$dir/port" ] || ! kill -0 "$tallyd_pid" 2>/dev/null; then break; fi
    sleep 0.01
  done
  if [ ! -s "$dir/port" ]; then
    tallyd_kill
    echo "FAIL: tallyd did not start: $(cat "$dir/tallyd.log")"
    exit 1
  fi
  tallyd_port=$(cat "$dir/port")
}

tallyd_stop() {
  local st=0
  kill -TERM "$tallyd_pid"
  wait "$tallyd_pid" || st=$?
  tallyd_pid=
  [ "$st" = 0 ] || { echo "FAIL: tallyd exited $st"; exit 1; }
}

tallyd_kill() {
  if [ -n "$tallyd_pid" ]; then
    kill "$tallyd_pid" 2>/dev/null || true
    wait "$tallyd_pid" 2>/dev/null || true
    tallyd_pid=
  fi
}

tallyd_wait_part() {
  local dir=$1
  # bounded: up to 20 s for the flush interval on a slow machine
  for _ in $(seq 100); do
    [ -n "$(ls "$dir/data/parts" 2>/dev/null | grep '\.part$')" ] && return 0
    sleep 0.2
  done
  echo "FAIL: no part was flushed in $dir/data"
  exit 1
}
