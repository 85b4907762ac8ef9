#!/usr/bin/env bash
# cartlink against nginx (302 from an in-memory map) and the bare-hyper floor, side by side on
# this machine, with ../shared/bench/side-by-side: each server pinned to core 0 and given one
# worker, wrk on the other core, the same random signed paths for all three.
# cartlink runs its full path: signature, cookie, geo (fixture database), bots, unique filter,
# client IP from X-Forwarded-For behind a trusted proxy, and the file sink.
#
#   loadtest/side_by_side/run.sh            # N=100000 links, 3 rounds of 8 s
#   N=1000000 ROUNDS=5 loadtest/side_by_side/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
BENCH=${BENCH:-$ROOT/../shared/bench}
N=${N:-100000}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)"; exit 2; }
command -v nginx >/dev/null || { echo "needs nginx (apt-get install nginx-light)"; exit 2; }
cargo build --release --quiet
cargo build --release --quiet --manifest-path "$BENCH/floor/Cargo.toml" --target-dir /tmp/floor-target
WORK=$(mktemp -d /tmp/cartlink-sbs.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
python3 loadtest/links_scale/gen_links.py "$N" > "$WORK/links.jsonl"
export CARTLINK_LINKS="$WORK/links.jsonl" CARTLINK_PUBLIC_BASE_URL=http://127.0.0.1
export CARTLINK_SIGNING_KEYS="bench:$(head -c 32 /dev/urandom | base64 | tr -d '\n')"
target/release/cartlink mint --all | cut -f2 | sed 's#^http://127.0.0.1##' > "$WORK/paths.txt"
# nginx and the floor answer the same paths with a Location of the same shape and size.
awk '{printf "%s\thttps://brand.example/cart/9007199254740993:1,40000000002:2?discount=CODE1&ref=creator1&utm_source=instagram&attributes%%5Bcl_click%%5D=0192f3a1-7c2e-7b3d-9f00-5a1b2c3d4e5f\n", $1}' "$WORK/paths.txt" > "$WORK/links.tsv"
cat > "$WORK/cartlink.sh" <<SH
#!/usr/bin/env bash
export CARTLINK_WORKERS=1 CARTLINK_LISTEN=127.0.0.1:\$1 CARTLINK_ADMIN_LISTEN=127.0.0.1:0
export CARTLINK_SINK=file://$WORK/clicks CARTLINK_DATA_DIR=$WORK/data CARTLINK_WATCH_LINKS_MS=0
export CARTLINK_GEOIP=$ROOT/tests/fixtures/geo-geolite2.mmdb CARTLINK_TRUSTED_PROXIES=127.0.0.1/32 RUST_LOG=warn
exec $ROOT/target/release/cartlink serve
SH
chmod +x "$WORK/cartlink.sh"
python3 "$BENCH/side-by-side" --paths "$WORK/paths.txt" --rounds "$ROUNDS" --duration "$DURATION" \
  --header 'User-Agent: Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 Instagram 305.0.0.0' \
  --header 'X-Forwarded-For: 203.0.113.77' \
  --json "${JSON:-/tmp/cartlink-side-by-side.json}" \
  --target cartlink 18100 "$WORK/cartlink.sh 18100" \
  --target nginx 18101 "$BENCH/nginx-baseline 18101 $WORK/links.tsv" \
  --target floor 18102 "/tmp/floor-target/release/redirect-floor 18102 $WORK/links.tsv"
echo "click records written: $(cat "$WORK"/clicks/*.jsonl 2>/dev/null | wc -l)"
