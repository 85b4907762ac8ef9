#!/usr/bin/env bash
# Contract test of the admin API against docs/openapi.yaml with schemathesis (PyPI), on a
# throw-away server with the demo links. PUT /admin/links (it would replace the table with
# generated bodies) and the planned routes are left out. Methods a path does not have get 405
# with `Allow` (schemathesis check `unsupported_method`).
#
#   bash docs/schemathesis.sh          # needs target/debug/cartlink (cargo build)
set -euo pipefail
cd "$(dirname "$0")/.."
ST=$(command -v schemathesis || true)
if [ -z "$ST" ]; then
  [ -x /tmp/cartlink-st-venv/bin/schemathesis ] || {
    python3 -m venv /tmp/cartlink-st-venv && /tmp/cartlink-st-venv/bin/pip install -q schemathesis
  }
  ST=/tmp/cartlink-st-venv/bin/schemathesis
fi
WORK=$(mktemp -d /tmp/cartlink-st.XXXXXX)
trap 'kill $PID 2>/dev/null || true; rm -rf "$WORK"' EXIT
TOKEN="st-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
CARTLINK_LISTEN=127.0.0.1:0 CARTLINK_ADMIN_LISTEN=127.0.0.1:0 CARTLINK_ADMIN_TOKEN="$TOKEN" \
  CARTLINK_LINKS=config/links.example.jsonl CARTLINK_WATCH_LINKS_MS=0 \
  CARTLINK_SINK="file://$WORK/clicks" CARTLINK_DATA_DIR="$WORK/data" \
  target/debug/cartlink serve > "$WORK/out" 2> "$WORK/err" &
PID=$!
for _ in $(seq 100); do grep -q listening "$WORK/out" 2>/dev/null && break; sleep 0.1; done
ADMIN=$(grep -o 'admin=[^ ]*' "$WORK/out" | cut -d= -f2)
"$ST" run docs/openapi.yaml --url "http://$ADMIN" -H "Authorization: Bearer $TOKEN" \
  --exclude-path-regex '^/(webhooks|admin/inventory)' --exclude-method PUT \
  -n 50 --seed 1
