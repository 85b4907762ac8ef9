#!/usr/bin/env bash
# Instructions per request on the redirect path, counted by valgrind's callgrind: a figure that
# does not move with the machine's load, unlike CPU time. cartlink runs the side-by-side set-up
# (100k links, signature, cookie, client IP from X-Forwarded-For, geo, bots, unique filter, file
# sink) under callgrind; wrk sends 10 s of requests after a warm-up; the counters are zeroed
# before and dumped after, and the total is divided by the requests wrk completed.
# Valgrind's CPU has no SHA extensions, so SHA-256 is counted in a software form (ring's AVX
# code for link signatures, the sha2 crate's portable code for the cookie's HMAC: about 10k
# instructions per request here, ~100 ns natively with SHA extensions); it is printed apart.
#
# The bare-hyper floor of ../shared/bench is counted the same way on the same paths (FLOOR=0
# skips it), so the two compare instruction for instruction; cartlink's request handler
# (`Public::call`, inclusive, SHA-256 apart) is printed too, since the rest is hyper and tokio.
#
#   loadtest/callgrind/run.sh            # builds the release binary first
#   CARTLINK_BIN=/tmp/other/cartlink loadtest/callgrind/run.sh
#   KEEP=/tmp/cg loadtest/callgrind/run.sh   # keeps the profiles there for callgrind_annotate
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
N=${N:-100000}
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)"; exit 2; }
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)"; exit 2; }
BIN=${CARTLINK_BIN:-target/release/cartlink}
[ -n "${CARTLINK_BIN:-}" ] || cargo build --release --quiet
WORK=$(mktemp -d /tmp/cartlink-cg.XXXXXX)
trap 'kill $VPID 2>/dev/null || true; [ -z "${KEEP:-}" ] || { mkdir -p "$KEEP"; cp "$WORK"/*.out.1 "$WORK"/*.reqs "$KEEP"/ 2>/dev/null; }; rm -rf "$WORK"' EXIT
VPID=
source loadtest/lib.sh
bench_links
bench_lua
bench_env 18400
# count NAME PORT CMD...: instructions per request of CMD under wrk (warm-up not counted);
# leaves the profile in $WORK/NAME.out.1 and the request count in $WORK/NAME.reqs
count() {
  local name=$1 port=$2; shift 2
  valgrind --tool=callgrind --callgrind-out-file="$WORK/$name.out" "$@" > "$WORK/$name.log" 2>&1 &
  VPID=$!
  for _ in $(seq 600); do curl -s -o /dev/null "http://127.0.0.1:$port/healthz" && break; sleep 0.5; done
  wrk -t1 -c8 -d3s -s "$WORK/paths.lua" "http://127.0.0.1:$port" > /dev/null
  callgrind_control -z $VPID > /dev/null 2>&1
  wrk -t1 -c8 -d10s -s "$WORK/paths.lua" "http://127.0.0.1:$port" | awk '/requests in/{print $1}' > "$WORK/$name.reqs"
  callgrind_control -d $VPID > /dev/null 2>&1
  sleep 1
  kill $VPID; wait $VPID 2>/dev/null || true
}
total() { callgrind_annotate "$WORK/$1.out.1" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1}'; }
sha() {
  callgrind_annotate --inclusive=no --auto=no --threshold=100 "$WORK/$1.out.1" 2>/dev/null \
    | awk '/sha256_block_data_order|sha2::sha256/{gsub(",","",$1); s+=$1} END {print s+0}'
}
count cartlink 18400 "$BIN" serve
REQS=$(cat "$WORK/cartlink.reqs"); TOTAL=$(total cartlink); SHA=$(sha cartlink)
# The handler: the largest inclusive count among the (inlined) lines of Public::call.
HANDLER=$(callgrind_annotate --inclusive=yes --auto=no --threshold=100 "$WORK/cartlink.out.1" 2>/dev/null \
  | awk '/cartlink::server::Public as hyper::service::service::Service/{gsub(",","",$1); if ($1+0>m) m=$1+0} END {print m+0}')
echo "requests: $REQS"
echo "instructions per request: $((TOTAL / REQS)) (SHA-256 blocks in software form: $((SHA / REQS)); the rest: $(((TOTAL - SHA) / REQS)))"
echo "  of which the request handler (Public::call, inclusive) without SHA-256: $(((HANDLER - SHA) / REQS))"
if [ "${FLOOR:-1}" = 1 ]; then
  bench_floor
  count floor 18401 /tmp/floor-target/release/redirect-floor 18401 "$WORK/links.tsv"
  FREQS=$(cat "$WORK/floor.reqs"); FTOTAL=$(total floor)
  echo "floor (bare hyper, same paths): $((FTOTAL / FREQS)) instructions per request ($FREQS requests)"
fi
