#!/usr/bin/env bash
# Instructions per request on the redirect path, counted by valgrind's callgrind: a figure that
# does not move with the machine's load, unlike CPU time. cartlink runs the side-by-side set-up
# (100k links, signature, cookie, client IP from X-Forwarded-For, geo, bots, unique filter, file
# sink) under callgrind; wrk sends 10 s of requests after a warm-up; the counters are zeroed
# before and dumped after, and the total is divided by the requests wrk completed.
# Valgrind's CPU has no SHA extensions, so SHA-256 is counted in its AVX form (about 10k
# instructions per request here, a few hundred nanoseconds natively); it is printed apart.
#
#   loadtest/callgrind/run.sh            # builds the release binary first
#   CARTLINK_BIN=/tmp/other/cartlink loadtest/callgrind/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
N=${N:-100000}
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)"; exit 2; }
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)"; exit 2; }
BIN=${CARTLINK_BIN:-target/release/cartlink}
[ -n "${CARTLINK_BIN:-}" ] || cargo build --release --quiet
WORK=$(mktemp -d /tmp/cartlink-cg.XXXXXX)
trap 'kill $VPID 2>/dev/null || true; rm -rf "$WORK"' EXIT
source loadtest/lib.sh
bench_links
bench_lua
bench_env 18400
valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out" "$BIN" serve > "$WORK/out" 2> "$WORK/err" &
VPID=$!
for _ in $(seq 600); do curl -s -o /dev/null http://127.0.0.1:18400/healthz && break; sleep 0.5; done
wrk -t1 -c8 -d3s -s "$WORK/paths.lua" http://127.0.0.1:18400 > /dev/null
callgrind_control -z $VPID > /dev/null 2>&1
REQS=$(wrk -t1 -c8 -d10s -s "$WORK/paths.lua" http://127.0.0.1:18400 | awk '/requests in/{print $1}')
callgrind_control -d $VPID > /dev/null 2>&1
sleep 1
kill $VPID; wait $VPID 2>/dev/null || true
TOTAL=$(callgrind_annotate "$WORK/cg.out.1" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1}')
SHA=$(callgrind_annotate --inclusive=no --auto=no --threshold=100 "$WORK/cg.out.1" 2>/dev/null \
  | awk '/sha256_block_data_order/{gsub(",","",$1); s+=$1} END {print s+0}')
echo "requests: $REQS"
echo "instructions per request: $((TOTAL / REQS)) (SHA-256 blocks in valgrind's AVX form: $((SHA / REQS)); the rest: $(((TOTAL - SHA) / REQS)))"
