#!/usr/bin/env bash
# How long each server thread ran and how long it waited runnable (another thread had its core)
# during a wrk -c64 run, from /proc/PID/task/*/schedstat: cartlink (full path, file sink) and the
# bare-hyper floor, each pinned to core 0 with one worker, wrk on core 1, ROUNDS alternating runs.
# A worker that waits longer than the floor's is kept from its core by something; cartlink's own
# threads (cartlink-clicks, cartlink-sync-*) are listed beside it.
#
#   loadtest/sched_wait/run.sh                 # N=100000 links, 2 rounds of 8 s
#   CARTLINK_BIN=/tmp/other/cartlink ROUNDS=3 loadtest/sched_wait/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
N=${N:-100000}
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-8}
source loadtest/lib.sh
bench_need wrk wrk
bench_bin
WORK=$(mktemp -d /tmp/cartlink-sched.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
bench_floor
bench_links
bench_lua
( bench_env 18650; exec taskset -c 0 "$BIN" serve ) > "$WORK/cartlink.log" 2>&1 &
taskset -c 0 /tmp/floor-target/release/redirect-floor 18651 "$WORK/links.tsv" > /dev/null 2>&1 &
stats() { for t in /proc/$1/task/*; do echo "$(tr ' ' _ < "$t/comm") $(cat "$t/schedstat")"; done; }
one() { # NAME PORT
  local pid out reqs
  pid=$(ss -ltnpH "sport = :$2" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)
  taskset -c 1 wrk -t1 -c64 -d2s -s "$WORK/paths.lua" "http://127.0.0.1:$2/" > /dev/null
  stats "$pid" > "$WORK/a"
  out=$(taskset -c 1 wrk -t1 -c64 -d"${DURATION}s" --latency -s "$WORK/paths.lua" "http://127.0.0.1:$2/")
  stats "$pid" > "$WORK/b"
  reqs=$(echo "$out" | awk '/requests in/{print $1}')
  echo "$1: $reqs requests, p99 $(echo "$out" | awk '/ 99%/{print $2}')"
  paste "$WORK/a" "$WORK/b" | awk -v r="$reqs" '{run=($6-$2)/1e6; w=($7-$3)/1e6; n=$8-$4;
    if (run > 1 || w > 1) printf "  %-16s ran %7.1f ms (%.3f us/request)  waited runnable %6.1f ms  pieces %6d\n", $1, run, run*1000/r, w, n}'
}
for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:18650/healthz && break; sleep 0.2; done
for _ in $(seq "$ROUNDS"); do
  one cartlink 18650
  one floor 18651
done
