#!/usr/bin/env bash
# 1,000 slowloris connections + 50 clients that never read, against normal keep-alive traffic;
# prints the figures and a VERDICT line (see slowloris.py for the pass rule).
#
#   loadtest/slowloris/run.sh                      # release build, header/write timeouts 5 s
#   SLOW=2000 DURATION=30 loadtest/slowloris/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
# Release profile without fat LTO: minutes less to build, same code paths.
CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 cargo build --release --quiet
WORK=$(mktemp -d /tmp/cartlink-slowloris.XXXXXX)
trap 'kill $PID 2>/dev/null || true; rm -rf "$WORK"' EXIT
export CARTLINK_SIGNING_KEYS="lt:$(head -c 32 /dev/urandom | base64 | tr -d '\n')"
export CARTLINK_LISTEN=127.0.0.1:0 CARTLINK_ADMIN_LISTEN=127.0.0.1:0 CARTLINK_WORKERS=1
export CARTLINK_SINK="file://$WORK/clicks" CARTLINK_DATA_DIR="$WORK/data"
export CARTLINK_HTTP_HEADER_READ_TIMEOUT_MS=5000 CARTLINK_HTTP_WRITE_TIMEOUT_MS=5000
PATH_=$(target/release/cartlink mint jane-kit | sed 's#^http://localhost:8080##')
ulimit -n "$(ulimit -Hn)" || true
taskset -c 0 target/release/cartlink serve > "$WORK/out" 2> "$WORK/err" &
PID=$!
for _ in $(seq 100); do grep -q listening "$WORK/out" 2>/dev/null && break; sleep 0.1; done
ADDR=$(grep -o 'public=[^ ]*' "$WORK/out" | cut -d= -f2)
taskset -c 1 python3 loadtest/slowloris/slowloris.py --addr "$ADDR" --path "$PATH_" \
  --slow "${SLOW:-1000}" --noread "${NOREAD:-50}" --duration "${DURATION:-15}" --rate "${RATE:-500}" \
  --header-timeout 5 --write-timeout 5
