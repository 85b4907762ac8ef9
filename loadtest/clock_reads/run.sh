#!/usr/bin/env bash
# How many times a request reads the clock (glibc's clock_gettime: Instant::now, SystemTime::now)
# on cartlink's redirect worker: uprobes on clock_gettime and on send (one per answer) while
# wrk -c64 drives the full path (cartlink pinned to core 0 with one worker, wrk on core 1).
# Prints, for each thread that read a clock, its precise and its coarse reads
# (CLOCK_*_COARSE: a load from the vDSO page, no TSC read) per answer. The probes slow the
# server down; the count, not the rate, is the figure. Needs root (uprobes) and linux-perf.
#
#   loadtest/clock_reads/run.sh
#   CARTLINK_BIN=/tmp/other/cartlink loadtest/clock_reads/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
source loadtest/lib.sh
bench_need wrk wrk
bench_need perf linux-perf
N=${N:-100000}
bench_bin
WORK=$(mktemp -d /tmp/cartlink-clocks.XXXXXX) PID=
LIBC=$(ldd "$BIN" | awk '/libc\.so/ {print $3}')
trap 'kill $PID 2>/dev/null || true; perf probe -q -d "probe_libc:*" 2>/dev/null || true; rm -rf "$WORK"' EXIT
# Probes left by an earlier run would make the adds fail.
perf probe -q -d "probe_libc:*" 2>/dev/null || true
# The same function twice, so each event can keep its own filter on the clock id.
perf probe -q -x "$LIBC" --add 'precise=clock_gettime clk=%di:s32'
perf probe -q -x "$LIBC" --add 'coarse=clock_gettime clk=%di:s32'
perf probe -q -x "$LIBC" --add __send
bench_links
bench_lua
bench_env 18720
taskset -c 0 "$BIN" serve > "$WORK/out" 2>&1 & PID=$!
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:18720/healthz" && break; sleep 0.1; done
taskset -c 1 wrk -t1 -c64 -d8s -s "$WORK/paths.lua" http://127.0.0.1:18720 > /dev/null & W=$!
sleep 2
# CLOCK_REALTIME_COARSE is 5, CLOCK_MONOTONIC_COARSE 6.
perf stat -x, --per-thread -p "$PID" -o "$WORK/stat" \
  -e probe_libc:precise --filter 'clk != 5 && clk != 6' \
  -e probe_libc:coarse --filter 'clk == 5 || clk == 6' \
  -e probe_libc:__send -- sleep 3
wait $W
# Lines: thread-tid,count,,event,...
awk -F, '$2 ~ /^[0-9]+$/ { split($4, e, ":"); n[$1, e[2]] = $2; t[$1] = 1 }
  END {
    for (k in n) { split(k, p, SUBSEP); if (p[2] == "__send") sends += n[k] }
    if (sends == 0) { print "no answers counted"; exit 1 }
    printf "answers (send calls) in the window: %d\n", sends
    for (th in t) if (n[th, "precise"] + n[th, "coarse"] > 0)
      printf "%-28s precise %9d  %.2f per answer   coarse %9d  %.2f per answer\n", th,
        n[th, "precise"], n[th, "precise"] / sends, n[th, "coarse"], n[th, "coarse"] / sends
  }' "$WORK/stat"
