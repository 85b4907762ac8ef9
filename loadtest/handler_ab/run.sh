#!/usr/bin/env bash
# The request handler's mean time, build against build: the side-by-side set-up (N links, full
# path, file sink, one worker pinned to core 0, wrk -c64 on core 1), each build in turn, ROUNDS
# times. The handler's time is `cartlink_http_request_duration_seconds` (sum over count) scraped
# from the admin listener before and after each run, so it covers exactly what the handler does
# and not the kernel's TCP or the other servers; process CPU per request and wrk's p99 are
# printed beside it. On these noisy VMs this separates changes of some 50 ns, which CPU per
# request does not. No verdict: it compares builds.
#
#   loadtest/handler_ab/run.sh /tmp/a/cartlink /tmp/b/cartlink       # 3 rounds of 8 s
#   ROUNDS=5 DURATION=10 loadtest/handler_ab/run.sh A B C
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
N=${N:-100000}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
[ $# -ge 1 ] || { echo "usage: $0 CARTLINK_BIN [CARTLINK_BIN...]"; exit 2; }
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)"; exit 2; }
BIN=$1
WORK=$(mktemp -d /tmp/cartlink-hab.XXXXXX)
trap 'kill $PID 2>/dev/null || true; rm -rf "$WORK"' EXIT
PID=
source loadtest/lib.sh
bench_links
bench_lua
bench_env 18650
export CARTLINK_ADMIN_LISTEN=127.0.0.1:18651

# "sum count" of the handler's duration histogram
scrape() {
  curl -s http://127.0.0.1:18651/metrics | awk '
    /^cartlink_http_request_duration_seconds_sum/ {s = $2}
    /^cartlink_http_request_duration_seconds_count/ {c = $2}
    END {print s, c}'
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
measure() { # BIN
  rm -rf "$WORK/clicks" "$WORK/data"
  taskset -c 0 "$1" serve > "$WORK/out" 2> "$WORK/err" & PID=$!
  for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:18650/healthz && break; sleep 0.1; done
  taskset -c 1 wrk -t1 -c64 -d2s -s "$WORK/paths.lua" http://127.0.0.1:18650 > /dev/null
  local before after t0 t1
  before=$(scrape); t0=$(cpu_ticks)
  taskset -c 1 wrk -t1 -c64 -d"${DURATION}s" --latency -s "$WORK/paths.lua" http://127.0.0.1:18650 > "$WORK/wrk"
  after=$(scrape); t1=$(cpu_ticks)
  kill $PID; wait $PID 2>/dev/null || true; PID=
  awk -v name="$1" -v b="$before" -v a="$after" -v ticks=$((t1 - t0)) -v tck="$(getconf CLK_TCK)" \
    -v reqs="$(awk '/requests in/{print $1}' "$WORK/wrk")" -v p99="$(awk '/ 99%/{print $2}' "$WORK/wrk")" '
    BEGIN {
      split(b, x, " "); split(a, y, " ")
      printf "%-40s handler %5.0f ns  cpu %.2f us/request  p99 %s  requests %d\n",
        name, (y[1] - x[1]) / (y[2] - x[2]) * 1e9, ticks * 1e6 / tck / reqs, p99, reqs
    }'
}
for _ in $(seq "$ROUNDS"); do
  for bin in "$@"; do measure "$bin"; done
done
