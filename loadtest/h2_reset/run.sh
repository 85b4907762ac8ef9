#!/usr/bin/env bash
# HTTP/2 rapid reset: 10 attacker connections (HEADERS + RST_STREAM CANCEL in a loop,
# reconnecting after each GOAWAY) against legit HTTP/1.1 traffic; prints a VERDICT line.
# Needs Python h2 (PyPI): a venv is made under /tmp if `import h2` fails.
#
#   loadtest/h2_reset/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=python3
if ! $PY -c 'import h2' 2>/dev/null; then
  [ -x /tmp/cartlink-h2-venv/bin/python ] || { python3 -m venv /tmp/cartlink-h2-venv && /tmp/cartlink-h2-venv/bin/pip install -q h2; }
  PY=/tmp/cartlink-h2-venv/bin/python
fi
CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 cargo build --release --quiet
WORK=$(mktemp -d /tmp/cartlink-h2reset.XXXXXX)
trap 'kill $PID 2>/dev/null || true; rm -rf "$WORK"' EXIT
export CARTLINK_SIGNING_KEYS="lt:$(head -c 32 /dev/urandom | base64 | tr -d '\n')"
export CARTLINK_LISTEN=127.0.0.1:0 CARTLINK_ADMIN_LISTEN=127.0.0.1:0 CARTLINK_WORKERS=1
export CARTLINK_SINK="file://$WORK/clicks" CARTLINK_DATA_DIR="$WORK/data"
PATH_=$(target/release/cartlink mint jane-kit | sed 's#^http://localhost:8080##')
taskset -c 0 target/release/cartlink serve > "$WORK/out" 2> "$WORK/err" &
PID=$!
for _ in $(seq 100); do grep -q listening "$WORK/out" 2>/dev/null && break; sleep 0.1; done
ADDR=$(grep -o 'public=[^ ]*' "$WORK/out" | cut -d= -f2)
taskset -c 1 $PY loadtest/h2_reset/h2_reset.py --addr "$ADDR" --path "$PATH_" \
  --attackers "${ATTACKERS:-10}" --duration "${DURATION:-15}" --rate "${RATE:-500}"
kill -0 $PID && echo "server alive after the attack"
