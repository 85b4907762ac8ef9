#!/usr/bin/env bash
# Scale check for the links table: generate N links (default 1,000,000), start cartlink on them
# and report load time (parse + validate + pre-render + index) and memory; then hot-swap a
# different N-link table with SIGHUP and report how long the swap took.
# Verdict against the README's figures, per million links (at least those of 1M): load <= 3 s
# and RSS <= 600 MiB.
#
#   loadtest/links_scale/run.sh [N]        (builds the release binary first)
set -euo pipefail
N=${1:-1000000}
cd "$(dirname "$0")/../.."
BIN=${CARTLINK_BIN:-target/release/cartlink}
[ -x "$BIN" ] && [ -z "${REBUILD:-}" ] || cargo build --release --quiet
WORK=$(mktemp -d /tmp/cartlink-scale.XXXXXX)
trap 'kill $PID 2>/dev/null || true; rm -rf "$WORK"' EXIT
python3 loadtest/links_scale/gen_links.py "$N" --version v1 > "$WORK/links.jsonl"
python3 loadtest/links_scale/gen_links.py "$N" --version v2 > "$WORK/links2.jsonl"
sync  # the generated files' writeback is not part of the load being measured
echo "links file: $N links, $(du -m "$WORK/links.jsonl" | cut -f1) MiB"

export CARTLINK_LISTEN=127.0.0.1:0 CARTLINK_ADMIN_LISTEN=127.0.0.1:0 CARTLINK_LINKS="$WORK/links.jsonl" \
  CARTLINK_SINK="file://$WORK/clicks" CARTLINK_WATCH_LINKS_MS=0 RUST_LOG=info
START=$(date +%s.%N)
"$BIN" serve >"$WORK/out" 2>"$WORK/err" &
PID=$!
until grep -q listening "$WORK/out" 2>/dev/null; do
  kill -0 $PID 2>/dev/null || { cat "$WORK/err"; exit 1; }
  sleep 0.05
done
READY=$(date +%s.%N)
ADMIN=$(sed -n 's/.*admin=\([^ ]*\).*/\1/p' "$WORK/out")
LOAD_MS=$(sed -n 's/.*links loaded.*ms=\([0-9]*\).*/\1/p' "$WORK/err" | head -1)
RSS_KB=$(awk '/VmRSS/{print $2}' /proc/$PID/status)
echo "load (parse+validate+render+index): ${LOAD_MS} ms; process start to listening: $(echo "($READY-$START)*1000/1" | bc) ms"
huge_mib() { awk '/AnonHugePages/{s+=$2} END{print int(s/1024)}' /proc/$PID/smaps; }
echo "RSS after load: $((RSS_KB/1024)) MiB, of which on huge pages: $(huge_mib) MiB"

cp "$WORK/links2.jsonl" "$WORK/links.jsonl"
T0=$(date +%s.%N)
kill -HUP $PID
until curl -s "http://$ADMIN/metrics" | grep -q '^cartlink_config_generation 2'; do sleep 0.02; done
T1=$(date +%s.%N)
SWAP_MS=$(echo "($T1-$T0)*1000/1" | bc)
RSS2_KB=$(awk '/VmRSS/{print $2}' /proc/$PID/status)
HWM_KB=$(awk '/VmHWM/{print $2}' /proc/$PID/status)
echo "hot swap of $N links via SIGHUP: ${SWAP_MS} ms; RSS after swap $((RSS2_KB/1024)) MiB, peak $((HWM_KB/1024)) MiB"
sleep 20  # the old table is freed in the background
echo "RSS 20 s after the swap: $(( $(awk '/VmRSS/{print $2}' /proc/$PID/status) / 1024 )) MiB, on huge pages: $(huge_mib) MiB"

LOAD_LIMIT=$(( N > 1000000 ? 3000 * N / 1000000 : 3000 ))
RSS_LIMIT=$(( N > 1000000 ? 600 * N / 1000000 : 600 ))
verdict=PASS
[ "$LOAD_MS" -le $LOAD_LIMIT ] || verdict=FAIL
[ $((RSS_KB/1024)) -le $RSS_LIMIT ] || verdict=FAIL
echo "verdict (load <= $LOAD_LIMIT ms, RSS <= $RSS_LIMIT MiB): $verdict"
[ $verdict = PASS ]
