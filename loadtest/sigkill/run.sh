#!/usr/bin/env bash
# SIGKILL mid-load, 20 times (the fault matrix's "SIGKILL mid-load" row): every restart must
# succeed, and the clicks lost must all lie in the in-memory window before each kill. See
# sigkill.py for what is checked; prints one line per run and a VERDICT.
#
#   loadtest/sigkill/run.sh                      # builds the release binary first
#   CARTLINK_BIN=/tmp/other/cartlink RUNS=5 loadtest/sigkill/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
source loadtest/lib.sh
bench_bin
WORK=$(mktemp -d /tmp/cartlink-sigkill.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
echo '{"id":"p","creator":"jane","campaign":"load","target":{"type":"url","url":"https://brand.example/p"}}' > "$WORK/links.jsonl"
export CARTLINK_SIGNING_KEYS="k1:$(head -c 32 /dev/urandom | base64 | tr -d '\n')"
CARTLINK_LINKS="$WORK/links.jsonl" "$BIN" mint p > "$WORK/url"
python3 loadtest/sigkill/sigkill.py "$BIN" "$WORK" "${PORT:-18750}"
