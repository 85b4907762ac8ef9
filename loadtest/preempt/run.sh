#!/usr/bin/env bash
# Who takes the redirect worker's core: cartlink (full path, file sink) pinned to core 0 with
# one worker, wrk -c64 on core 1, `perf sched record` on core 0 for a window in the middle of
# the run. Prints, per run, how often the worker was preempted while runnable, for how long
# (total, p50/p90/p99/max), which threads ran in its place (in the waits over 0.3 ms too), and
# how long the busiest threads ran at a stretch. This is the figure that
# separates background-thread changes on a noisy VM, where p99 at 64 connections does not.
#
#   loadtest/preempt/run.sh                          # N=100000 links, 3 runs
#   CARTLINK_BIN=/tmp/a CARTLINK_BIN_B=/tmp/b RUNS=3 loadtest/preempt/run.sh   # A/B, alternating
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
source loadtest/lib.sh
bench_need wrk wrk
bench_need perf linux-perf
N=${N:-100000} RUNS=${RUNS:-3} WINDOW=${WINDOW:-4}
bench_bin
WORK=$(mktemp -d /tmp/cartlink-preempt.XXXXXX) PID=
trap 'kill $PID 2>/dev/null || true; rm -rf "$WORK"' EXIT
bench_links
bench_lua
bench_env 18700

measure() { # NAME BIN
  rm -rf "$WORK/clicks" "$WORK/data"
  taskset -c 0 "$2" serve > "$WORK/out" 2> "$WORK/err" & PID=$!
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:18700/healthz" && break; sleep 0.1; done
  taskset -c 1 wrk -t1 -c64 -d2s -s "$WORK/paths.lua" http://127.0.0.1:18700 > /dev/null
  (sleep 2; perf sched record -C 0 -o "$WORK/sched.data" -- sleep "$WINDOW" > /dev/null 2>&1) &
  local rec=$!
  taskset -c 1 wrk -t1 -c64 -d"$((WINDOW + 4))s" --latency -s "$WORK/paths.lua" http://127.0.0.1:18700 > "$WORK/wrk"
  wait $rec || true
  printf '%-10s p99 %-8s ' "$1" "$(awk '/ 99%/{print $2}' "$WORK/wrk")"
  perf sched script -i "$WORK/sched.data" 2> /dev/null | python3 loadtest/preempt/preempt.py "$PID"
  kill $PID; wait $PID 2> /dev/null || true; PID=
}
for _ in $(seq "$RUNS"); do
  measure cartlink "$BIN"
  [ -z "${CARTLINK_BIN_B:-}" ] || measure cartlink-b "$CARTLINK_BIN_B"
done
