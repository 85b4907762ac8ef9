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
python3 loadtest/links_scale/gen_links.py "$N" > "$WORK/links.jsonl"
export CARTLINK_LINKS="$WORK/links.jsonl" CARTLINK_PUBLIC_BASE_URL=http://127.0.0.1
export CARTLINK_SIGNING_KEYS="bench:$(head -c 32 /dev/urandom | base64 | tr -d '\n')"
"$BIN" mint --all | cut -f2 | sed 's#^http://127.0.0.1##' > "$WORK/paths.txt"
cat > "$WORK/paths.lua" <<LUA
local paths = {}
for line in io.lines("$WORK/paths.txt") do paths[#paths+1] = line end
request = function()
  return wrk.format("GET", paths[math.random(#paths)], {["User-Agent"]="Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 Instagram 305.0.0.0", ["X-Forwarded-For"]="203.0.113.77"})
end
LUA
export CARTLINK_WORKERS=1 CARTLINK_LISTEN=127.0.0.1:18400 CARTLINK_ADMIN_LISTEN=127.0.0.1:0
export CARTLINK_SINK=file://$WORK/clicks CARTLINK_DATA_DIR=$WORK/data CARTLINK_WATCH_LINKS_MS=0
export CARTLINK_GEOIP=$ROOT/tests/fixtures/geo-geolite2.mmdb CARTLINK_TRUSTED_PROXIES=127.0.0.1/32 RUST_LOG=warn
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
