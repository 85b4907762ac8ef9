#!/usr/bin/env bash
# A post goes viral while the click sink is slow: fixed-rate traffic at BASE/s for 20 s, then a
# 10x step (10 x BASE/s) for SPIKE seconds, against an HTTP sink that answers every batch
# DELAY_MS late. The server is pinned to core 0 (one worker), oha (open loop, latency
# corrected) to the last core.
# VERDICT: no errors and every answer a redirect in both phases; spike p99 <= P99_MS (default
# 10); once the sink has caught up, every redirect's record delivered (none dropped); the
# server's peak RSS <= RSS_CAP_MB (default 256, loadtest/rss.sh).
#
#   loadtest/spike/run.sh                     # 1,000/s then 10,000/s for 60 s, sink 300 ms slow
#   BASE=2000 SPIKE=30 DELAY_MS=1000 loadtest/spike/run.sh
# Needs oha (cargo install oha --locked) and python3.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
BASE=${BASE:-1000}
SPIKE=${SPIKE:-60}
DELAY_MS=${DELAY_MS:-300}
P99_MS=${P99_MS:-10}
N=${N:-100000}
command -v oha >/dev/null || { echo "needs oha (cargo install oha --locked)"; exit 2; }
BIN=${CARTLINK_BIN:-}
if [ -z "$BIN" ]; then cargo build --release --quiet; BIN=$ROOT/target/release/cartlink; fi
LAST=$(( $(nproc) - 1 ))
WORK=$(mktemp -d /tmp/cartlink-spike.XXXXXX)
trap 'kill $PID $COLLECTOR 2>/dev/null || true; rm -rf "$WORK"' EXIT
python3 loadtest/links_scale/gen_links.py "$N" > "$WORK/links.jsonl"
export CARTLINK_LINKS="$WORK/links.jsonl" CARTLINK_PUBLIC_BASE_URL=http://127.0.0.1:18130
export CARTLINK_SIGNING_KEYS="lt:$(head -c 32 /dev/urandom | base64 | tr -d '\n')"
"$BIN" mint --all | cut -f2 > "$WORK/urls.txt"
python3 loadtest/sink_outage/collector.py 18133 "$WORK/delivered.jsonl" "$DELAY_MS" &
COLLECTOR=$!
CARTLINK_WORKERS=1 CARTLINK_LISTEN=127.0.0.1:18130 CARTLINK_ADMIN_LISTEN=127.0.0.1:18131 \
  CARTLINK_SINK=http://127.0.0.1:18133/ingest CARTLINK_DATA_DIR="$WORK/data" CARTLINK_WATCH_LINKS_MS=0 \
  CARTLINK_GEOIP="$ROOT/tests/fixtures/geo-geolite2.mmdb" RUST_LOG=warn \
  taskset -c 0 "$BIN" serve > "$WORK/out" 2> "$WORK/err" &
PID=$!
for _ in $(seq 300); do grep -q listening "$WORK/out" 2>/dev/null && break; sleep 0.1; done
metric() { curl -s 127.0.0.1:18131/metrics | awk -v n="$1" '$1 ~ "^"n"({|$)" {s += $2} END {printf "%d", s}'; }
UA='User-Agent: Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 Instagram 305.0.0.0'
drive() { # rate seconds out
  taskset -c "$LAST" oha --no-tui --output-format json -z "$2s" -q "$1" --latency-correction -c 64 \
    --urls-from-file "$WORK/urls.txt" -H "$UA" --redirect 0 > "$3"
}
summary() { python3 loadtest/oha_summary.py "$1"; }
drive "$BASE" 20 "$WORK/base.json"
drive $((BASE * 10)) "$SPIKE" "$WORK/spike.json" &
OHA=$!
sleep $((SPIKE / 2))
echo "mid-spike: queue $(metric cartlink_clicks_queue_depth), spilled $(metric cartlink_clicks_spilled_total), spill $(metric cartlink_spill_bytes) bytes, delivered $(metric cartlink_clicks_delivered_total)"
wait $OHA
read -r bn b302 berr bp50 bp99 bp999 <<<"$(summary "$WORK/base.json")"
read -r sn s302 serr sp50 sp99 sp999 <<<"$(summary "$WORK/spike.json")"
# Let the slow sink catch up: everything accepted is delivered or dropped.
t0=$(date +%s)
for _ in $(seq 1200); do
  [ "$(metric cartlink_clicks_accepted_total)" = "$(( $(metric cartlink_clicks_delivered_total) + $(metric cartlink_clicks_dropped_total) ))" ] && break
  sleep 0.25
done
caught_up=$(( $(date +%s) - t0 ))
accepted=$(metric cartlink_clicks_accepted_total); delivered=$(metric cartlink_clicks_delivered_total)
dropped=$(metric cartlink_clicks_dropped_total); spilled=$(metric cartlink_clicks_spilled_total)
source loadtest/rss.sh
RSS_LINE=$(rss_check $PID) || FAIL_RSS=1
kill -TERM $PID; wait $PID || true
lines=$(wc -l < "$WORK/delivered.jsonl")
printf '%-16s %9s %8s %8s %8s %8s\n' phase answers errors p50_ms p99_ms p999_ms
printf '%-16s %9s %8s %8s %8s %8s\n' "base $BASE/s" "$bn" "$berr" "$bp50" "$bp99" "$bp999"
printf '%-16s %9s %8s %8s %8s %8s\n' "spike $((BASE * 10))/s" "$sn" "$serr" "$sp50" "$sp99" "$sp999"
echo "sink ${DELAY_MS} ms per batch: accepted $accepted, spilled $spilled, dropped $dropped, delivered $delivered (collector holds $lines lines), caught up ${caught_up} s after the spike"
echo "$RSS_LINE"
FAIL=()
[ -z "${FAIL_RSS:-}" ] || FAIL+=("$RSS_LINE")
[ "$berr" = 0 ] && [ "$serr" = 0 ] || FAIL+=("errors: base $berr, spike $serr")
[ "$b302" = "$bn" ] && [ "$s302" = "$sn" ] || FAIL+=("non-redirects")
python3 -c "import sys; sys.exit(0 if $sp99 <= $P99_MS else 1)" || FAIL+=("spike p99 $sp99 ms > $P99_MS ms")
[ "$dropped" = 0 ] && [ "$lines" -ge $((b302 + s302)) ] || FAIL+=("records: $lines delivered for $((b302 + s302)) redirects, $dropped dropped")
if [ ${#FAIL[@]} -eq 0 ]; then echo "VERDICT: PASS"; else printf 'VERDICT: FAIL (%s)\n' "$(IFS=';'; echo "${FAIL[*]}")"; exit 1; fi
