#!/usr/bin/env bash
# A hot swap of the whole links table under steady traffic: N links (1M by default), oha at a
# fixed RATE with latency correction for DURATION seconds, twice — once steady, once with the
# links file replaced (every link changed) and SIGHUP sent a third of the way in. The server is
# pinned to core 0 (one worker), so the parse of the new table competes with serving for that
# core; oha runs on the last core.
# VERDICT: the swap happened (generation moved), no errors, every answer a redirect, and p99
# during the swap <= 2x the steady p99.
#
#   loadtest/reload_under_load/run.sh
#   N=100000 RATE=5000 DURATION=20 loadtest/reload_under_load/run.sh
# Needs oha (cargo install oha --locked).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
N=${N:-1000000}
RATE=${RATE:-5000}
DURATION=${DURATION:-30}
command -v oha >/dev/null || { echo "needs oha (cargo install oha --locked)"; exit 2; }
BIN=${CARTLINK_BIN:-}
if [ -z "$BIN" ]; then cargo build --release --quiet; BIN=$ROOT/target/release/cartlink; fi
LAST=$(( $(nproc) - 1 ))
WORK=$(mktemp -d /tmp/cartlink-rul.XXXXXX)
trap 'kill $PID 2>/dev/null || true; rm -rf "$WORK"' EXIT
python3 loadtest/links_scale/gen_links.py "$N" > "$WORK/links.jsonl"
# Same ids, every link changed (campaign, and with it the UTM parameters of every URL).
sed 's/"camp\([0-9]*\)"/"camp\1b"/g' "$WORK/links.jsonl" > "$WORK/links-b.jsonl"
export CARTLINK_LINKS="$WORK/links.jsonl" CARTLINK_PUBLIC_BASE_URL=http://127.0.0.1:18120
export CARTLINK_SIGNING_KEYS="lt:$(head -c 32 /dev/urandom | base64 | tr -d '\n')"
"$BIN" mint --all | cut -f2 | shuf -n 200000 > "$WORK/urls.txt"
CARTLINK_WORKERS=1 CARTLINK_LISTEN=127.0.0.1:18120 CARTLINK_ADMIN_LISTEN=127.0.0.1:18121 \
  CARTLINK_SINK="file://$WORK/clicks" CARTLINK_DATA_DIR="$WORK/data" CARTLINK_WATCH_LINKS_MS=0 RUST_LOG=warn \
  taskset -c 0 "$BIN" serve > "$WORK/out" 2> "$WORK/err" &
PID=$!
for _ in $(seq 600); do grep -q listening "$WORK/out" 2>/dev/null && break; sleep 0.1; done
generation() { curl -s 127.0.0.1:18121/metrics | awk '/^cartlink_config_generation / {print $2}'; }
UA='User-Agent: Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 Instagram 305.0.0.0'
drive() {
  taskset -c "$LAST" oha --no-tui --output-format json -z "${DURATION}s" -q "$RATE" --latency-correction \
    -c 32 --urls-from-file "$WORK/urls.txt" -H "$UA" --redirect 0 > "$1"
}
summary() { python3 loadtest/oha_summary.py "$1"; }
taskset -c "$LAST" oha --no-tui -z 3s -q "$RATE" -c 32 --urls-from-file "$WORK/urls.txt" -H "$UA" --redirect 0 >/dev/null
drive "$WORK/steady.json"
g0=$(generation)
drive "$WORK/swap.json" &
OHA=$!
sleep $(( DURATION / 3 ))
mv "$WORK/links-b.jsonl" "$WORK/links.jsonl"
t0=$(date +%s.%N)
kill -HUP $PID
while [ "$(generation)" = "$g0" ]; do sleep 0.05; done
t1=$(date +%s.%N)
wait $OHA
read -r sn s302 serr sp50 sp99 sp999 <<<"$(summary "$WORK/steady.json")"
read -r wn w302 werr wp50 wp99 wp999 <<<"$(summary "$WORK/swap.json")"
printf '%-8s %9s %8s %8s %8s %8s\n' run answers errors p50_ms p99_ms p999_ms
printf '%-8s %9s %8s %8s %8s %8s\n' steady "$sn" "$serr" "$sp50" "$sp99" "$sp999"
printf '%-8s %9s %8s %8s %8s %8s\n' swap "$wn" "$werr" "$wp50" "$wp99" "$wp999"
echo "links=$N rate=$RATE/s swap took $(python3 -c "print(f'{$t1 - $t0:.2f}')") s (SIGHUP to new generation $(generation))"
FAIL=()
[ "$serr" = 0 ] && [ "$werr" = 0 ] || FAIL+=("errors: steady $serr, swap $werr")
[ "$s302" = "$sn" ] && [ "$w302" = "$wn" ] || FAIL+=("non-redirects: steady $((sn - s302)), swap $((wn - w302))")
python3 -c "import sys; sys.exit(0 if $wp99 <= 2 * $sp99 else 1)" || FAIL+=("p99 during the swap $wp99 ms > 2 x steady $sp99 ms")
kill -TERM $PID; wait $PID || true
if [ ${#FAIL[@]} -eq 0 ]; then echo "VERDICT: PASS"; else printf 'VERDICT: FAIL (%s)\n' "$(IFS=';'; echo "${FAIL[*]}")"; exit 1; fi
