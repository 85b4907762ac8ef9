#!/usr/bin/env bash
# Does cartlink hold its rate when saturated for minutes, and keep every click? The full path
# (as in side_by_side) pinned to core 0 with one worker, wrk -c64 on core 1 for DURATION
# seconds; every DURATION/WINDOWS seconds it prints the window's req/s, what the pipeline
# spilled and dropped, the kernel's Dirty and the server's RSS. VERDICT: FAIL if a click was
# dropped or the last window's rate is below 80 % of the first's.
#
#   loadtest/saturation/run.sh                        # N=100000 links, 96 s in 8 windows
#   CARTLINK_BIN=/tmp/other/cartlink DURATION=60 WINDOWS=4 loadtest/saturation/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
N=${N:-100000}
DURATION=${DURATION:-96}
WINDOWS=${WINDOWS:-8}
WORK=$(mktemp -d /tmp/cartlink-sat.XXXXXX)
PID=
trap '[ -n "$PID" ] && kill $PID 2>/dev/null; rm -rf "$WORK"' EXIT
source loadtest/lib.sh
bench_need wrk wrk
bench_bin
bench_links
bench_lua
bench_env 18750
export CARTLINK_ADMIN_LISTEN=127.0.0.1:18751
taskset -c 0 "$BIN" serve > "$WORK/out" 2> "$WORK/err" & PID=$!
for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:18750/healthz && break; sleep 0.1; done
metric() { curl -s http://127.0.0.1:18751/metrics | awk -v m="$1" '$1 == m { print $2 }'; }
taskset -c 1 wrk -t1 -c64 -d"${DURATION}s" --latency -s "$WORK/paths.lua" http://127.0.0.1:18750 > "$WORK/wrk" &
WRK=$!
step=$((DURATION / WINDOWS))
prev=0 first= last=
for i in $(seq "$WINDOWS"); do
  sleep "$step"
  acc=$(metric cartlink_clicks_accepted_total)
  rate=$(( (${acc%.*} - prev) / step )); prev=${acc%.*}
  [ -n "$first" ] || first=$rate
  last=$rate
  printf '%4ss  %7d req/s  spilled %s  dropped(queue_full) %s  Dirty %s MB  RSS %s MB\n' "$((i * step))" "$rate" \
    "$(metric cartlink_clicks_spilled_total)" "$(metric 'cartlink_clicks_dropped_total{reason="queue_full"}')" \
    "$(awk '/^Dirty:/{print int($2/1024)}' /proc/meminfo)" "$(awk '/VmRSS/{print int($2/1024)}' /proc/$PID/status)"
done
wait $WRK || true
grep -E "Requests/sec| 99%" "$WORK/wrk"
dropped=$(metric 'cartlink_clicks_dropped_total{reason="queue_full"}')
if [ "${dropped%.*}" -gt 0 ] || [ $((last * 100)) -lt $((first * 80)) ]; then
  echo "VERDICT: FAIL (dropped ${dropped%.*}; last window $last req/s against the first's $first)"
  exit 1
fi
echo "VERDICT: PASS (nothing dropped; last window $last req/s, the first $first)"
