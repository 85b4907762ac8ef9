#!/usr/bin/env bash
# Where a request's server CPU goes: user and system time per request, per thread, for
# cartlink (full path: signature, cookie, client IP from X-Forwarded-For, geo, bots, unique
# filter, file sink) and for the bare-hyper floor of ../shared/bench, on the same links and
# paths. Each server is pinned to core 0 with one worker, wrk -c64 on core 1; the runs
# alternate, ROUNDS times each. Read from /proc/PID/task/*/stat before and after each run.
# For cartlink also the request handler's mean time (`cartlink_http_request_duration_seconds`,
# sum over count, scraped from the admin listener around the run): it covers only what the
# handler does, so on these noisy VMs it separates builds some 50 ns apart, which CPU per
# request does not.
#
#   loadtest/cpu_split/run.sh                  # N=100000 links, 3 rounds of 8 s
#   CARTLINK_BIN=/tmp/other/cartlink ROUNDS=5 loadtest/cpu_split/run.sh
#   CARTLINK_BIN=/tmp/a CARTLINK_BIN_B=/tmp/b ROUNDS=5 loadtest/cpu_split/run.sh   # A/B, alternating
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
N=${N:-100000}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)"; exit 2; }
BIN=${CARTLINK_BIN:-target/release/cartlink}
[ -n "${CARTLINK_BIN:-}" ] || cargo build --release --quiet
WORK=$(mktemp -d /tmp/cartlink-split.XXXXXX)
trap 'kill $PID 2>/dev/null || true; rm -rf "$WORK"' EXIT
PID=
source loadtest/lib.sh
bench_floor
bench_links
bench_lua
bench_env 18600
export CARTLINK_ADMIN_LISTEN=127.0.0.1:18602

# name utime stime (clock ticks) of every thread
threads() { for t in /proc/$1/task/*; do echo "$(cat "$t/comm" | tr ' ' _) $(cut -d' ' -f14,15 < "$t/stat")"; done; }
# "sum count" of cartlink's handler-duration histogram; "0 0" for the floor (no admin listener)
handler() {
  { curl -s http://127.0.0.1:18602/metrics 2>/dev/null || true; } | awk '
    /^cartlink_http_request_duration_seconds_sum/ {s = $2}
    /^cartlink_http_request_duration_seconds_count/ {c = $2}
    END {print s + 0, c + 0}'
}
measure() { # NAME PORT: warm up, then one measured run; prints per-thread user/sys µs per request
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$2/healthz" && break; sleep 0.1; done
  taskset -c 1 wrk -t1 -c64 -d2s -s "$WORK/paths.lua" "http://127.0.0.1:$2" > /dev/null
  local h0 h1 reqs tck
  h0=$(handler); threads $PID > "$WORK/a"
  taskset -c 1 wrk -t1 -c64 -d"${DURATION}s" --latency -s "$WORK/paths.lua" "http://127.0.0.1:$2" > "$WORK/wrk"
  h1=$(handler); threads $PID > "$WORK/b"
  reqs=$(awk '/requests in/{print $1}' "$WORK/wrk")
  tck=$(getconf CLK_TCK)
  paste "$WORK/a" "$WORK/b" | awk -v r="$reqs" -v t="$tck" -v n="$1" -v p99="$(awk '/ 99%/{print $2}' "$WORK/wrk")" \
    -v h0="$h0" -v h1="$h1" '
    { u = ($5 - $2) * 1e6 / t / r; s = ($6 - $3) * 1e6 / t / r; U += u; S += s
      if (u + s >= 0.01) part = part sprintf(" %s %.2f+%.2f", $1, u, s) }
    END { split(h0, a, " "); split(h1, b, " ")
          hd = b[2] > a[2] ? sprintf("  handler %.0f ns", (b[1] - a[1]) / (b[2] - a[2]) * 1e9) : ""
          printf "%-8s user %.2f  sys %.2f  total %.2f µs/request%s  (p99 %s;%s)\n", n, U, S, U + S, hd, p99, part }'
  kill $PID; wait $PID 2>/dev/null || true; PID=
}
for _ in $(seq "$ROUNDS"); do
  rm -rf "$WORK/clicks" "$WORK/data"
  taskset -c 0 "$BIN" serve > "$WORK/out" 2> "$WORK/err" & PID=$!
  measure cartlink 18600
  if [ -n "${CARTLINK_BIN_B:-}" ]; then
    rm -rf "$WORK/clicks" "$WORK/data"
    taskset -c 0 "$CARTLINK_BIN_B" serve > "$WORK/out" 2> "$WORK/err" & PID=$!
    measure cartlink-b 18600
  fi
  taskset -c 0 /tmp/floor-target/release/redirect-floor 18601 "$WORK/links.tsv" > /dev/null 2>&1 & PID=$!
  measure floor 18601
done
