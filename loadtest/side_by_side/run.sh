#!/usr/bin/env bash
# cartlink against nginx (302 from an in-memory map) and the bare-hyper floor, side by side on
# this machine, with ../shared/bench/side-by-side: each server pinned to core 0 and given one
# worker, wrk on the other core, the same random signed paths for all three.
# cartlink runs its full path: signature, cookie, geo (fixture database), bots, unique filter,
# client IP from X-Forwarded-For behind a trusted proxy, and the file sink. A run in which a
# cartlink dropped clicks (its queue full) is marked INVALID and exits 1.
#
#   loadtest/side_by_side/run.sh            # N=100000 links, 3 rounds of 8 s
#   N=1000000 ROUNDS=5 loadtest/side_by_side/run.sh
#   CARTLINK_BIN=/tmp/other/cartlink loadtest/side_by_side/run.sh   # that binary, no build
#   CARTLINK_BIN_B=/tmp/base/cartlink loadtest/side_by_side/run.sh  # A/B: a second cartlink,
#                                   # measured in the same rounds (right after the first)
#   NGINX_LOG=1 loadtest/side_by_side/run.sh   # adds nginx-log: the same nginx writing a JSON
#                                   # access-log line per request shaped like cartlink's click
#                                   # record (423 bytes, buffered 256 KiB), to the same disk
#   NGINX_AA=1 loadtest/side_by_side/run.sh   # adds nginx-aa: a second, identical nginx, the
#                                   # A/A control: how often the same server "wins" a round
#                                   # against itself, which is what a per-round count of
#                                   # cartlink against nginx should be read against
#   RATE=20000 loadtest/side_by_side/run.sh    # open loop: oha at 20,000 req/s with latency
#                                   # correction in place of wrk's closed loop (tails.py), same
#                                   # core, connections and paths; needs oha (cargo install oha).
#                                   # CPU per request at a rate below saturation is its figure:
#                                   # on a 2-core box oha's own delays (its 1 ms timer) set the
#                                   # tails, the floor's p99 included (3.9 ms at 5,000 req/s)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
N=${N:-100000}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)"; exit 2; }
command -v nginx >/dev/null || { echo "needs nginx (apt-get install nginx-light)"; exit 2; }
[ -z "${RATE:-}" ] || command -v oha >/dev/null || { echo "RATE needs oha (cargo install oha --locked)"; exit 2; }
JSON=${JSON:-/tmp/cartlink-side-by-side${RATE:+-$RATE}.json}
BIN=${CARTLINK_BIN:-$ROOT/target/release/cartlink}
[ -n "${CARTLINK_BIN:-}" ] || cargo build --release --quiet
WORK=$(mktemp -d /tmp/cartlink-sbs.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
source loadtest/lib.sh
bench_floor
bench_links
# nginx-log: the shared nginx-baseline with its access log on, one JSON line per request with
# the click record's fields (its own request ID, time, path and address in them).
if [ -n "${NGINX_LOG:-}" ]; then
  fields='"v":1,"type":"click","click_id":"\\$request_id","ts":"\\$time_iso8601","link_id":"\\$uri","creator":"creator0000","campaign":"camp0000","sub":null,"country":"FR","device":"ios","bot":false,"unique":true,"app":"instagram","referer_host":"\\$http_referer","ip":"\\$remote_addr","target_type":"url","served":"target","variant":null,"oos":[],"status":\\$status,"attributed_to":null,"edge":"edge-1"'
  sed "s|^  access_log off;|  log_format click escape=json '{$fields}';\n  access_log $WORK/nginx-access.log click buffer=256k flush=1s;|" \
    "$BENCH/nginx-baseline" > "$WORK/nginx-logging"
  grep -q "access_log $WORK/nginx-access.log" "$WORK/nginx-logging" || { echo "nginx-baseline changed: cannot turn its access log on"; exit 2; }
  chmod +x "$WORK/nginx-logging"
fi
cat > "$WORK/cartlink.sh" <<SH
#!/usr/bin/env bash
cd $ROOT && ROOT=$ROOT WORK=$WORK && source loadtest/lib.sh && bench_env "\$1"
[ "\$1" = 18100 ] || export CARTLINK_SINK=file://$WORK/clicks-\$1 CARTLINK_DATA_DIR=$WORK/data-\$1
exec "\$2" serve
SH
chmod +x "$WORK/cartlink.sh"
# Logs of an earlier run (with a cartlink-b this one may not have) must not be read below.
rm -f /tmp/side-by-side-cartlink*.log
status=0
python3 loadtest/side_by_side/tails.py "$BENCH/side-by-side" ${RATE:+--fixed-rate "$RATE"} --paths "$WORK/paths.txt" --rounds "$ROUNDS" --duration "$DURATION" \
  --header "User-Agent: $BENCH_UA" --header "X-Forwarded-For: $BENCH_XFF" \
  --json "$JSON" \
  --target cartlink 18100 "$WORK/cartlink.sh 18100 $BIN" \
  ${CARTLINK_BIN_B:+--target cartlink-b 18103 "$WORK/cartlink.sh 18103 $CARTLINK_BIN_B"} \
  --target nginx 18101 "$BENCH/nginx-baseline 18101 $WORK/links.tsv" \
  ${NGINX_LOG:+--target nginx-log 18104 "$WORK/nginx-logging 18104 $WORK/links.tsv"} \
  ${NGINX_AA:+--target nginx-aa 18105 "$BENCH/nginx-baseline 18105 $WORK/links.tsv"} \
  --target floor 18102 "/tmp/floor-target/release/redirect-floor 18102 $WORK/links.tsv" || status=$?
# tails.py is the harness itself plus wrk's whole latency distribution in the JSON.
# The medians above hide how often each comparison held; these are the per-round counts.
python3 loadtest/side_by_side/rounds.py "$JSON" || true
echo "click records written: $(cat "$WORK"/clicks/*.jsonl 2>/dev/null | wc -l)"
# A cartlink that drops clicks is cheaper than one that keeps them: such a run does not count.
for log in /tmp/side-by-side-cartlink*.log; do
  if grep -q "dropping clicks" "$log"; then
    echo "INVALID: $(basename "$log" .log | sed 's/side-by-side-//') dropped clicks (queue full) in this run: $(grep -c "dropping clicks" "$log") second(s) with drops"
    status=1
  fi
done
exit $status
