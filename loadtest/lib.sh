# Shared set-up for the scripts that put cartlink's full redirect path next to the other servers
# (side_by_side, cpu_split, callgrind). Source it from the repo root after setting WORK, N and
# BIN (the cartlink binary).
#
#   bench_links       N links in $WORK/links.jsonl, their paths in $WORK/paths.txt, and the
#                     same paths with a Location of the same shape and size in $WORK/links.tsv
#                     (for nginx and the floor); exports CARTLINK_LINKS and the signing key
#   bench_lua         $WORK/paths.lua: wrk picks a random path and sends BENCH_UA and BENCH_XFF
#   bench_floor       builds the bare-hyper floor of $BENCH (../shared/bench by default) into
#                     /tmp/floor-target/release/redirect-floor
#   bench_env PORT    exports the full-path environment: one worker on 127.0.0.1:PORT, file
#                     sink and data under $WORK, geo fixture, 127.0.0.1 trusted as the CDN
#   bench_need CMD PACKAGE   exits 2 with the package to install if CMD is missing
#   bench_bin         BIN = $CARTLINK_BIN, or the release build (built first)

# An in-app browser behind a CDN: the human path, with the client address forwarded.
BENCH_UA='Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 Instagram 305.0.0.0'
BENCH_XFF='203.0.113.77'

bench_links() {
  python3 loadtest/links_scale/gen_links.py "$N" > "$WORK/links.jsonl"
  export CARTLINK_LINKS="$WORK/links.jsonl" CARTLINK_PUBLIC_BASE_URL=http://127.0.0.1
  export CARTLINK_SIGNING_KEYS="bench:$(head -c 32 /dev/urandom | base64 | tr -d '\n')"
  "$BIN" mint --all | cut -f2 | sed 's#^http://127.0.0.1##' > "$WORK/paths.txt"
  awk '{printf "%s\thttps://brand.example/cart/9007199254740993:1,40000000002:2?discount=CODE1&ref=creator1&utm_source=instagram&attributes%%5Bcl_click%%5D=0192f3a1-7c2e-7b3d-9f00-5a1b2c3d4e5f\n", $1}' \
    "$WORK/paths.txt" > "$WORK/links.tsv"
}

bench_lua() {
  cat > "$WORK/paths.lua" <<LUA
local paths = {}
for line in io.lines("$WORK/paths.txt") do paths[#paths+1] = line end
request = function()
  return wrk.format("GET", paths[math.random(#paths)], {["User-Agent"]="$BENCH_UA", ["X-Forwarded-For"]="$BENCH_XFF"})
end
LUA
}

BENCH=${BENCH:-$ROOT/../shared/bench}

bench_floor() {
  cargo build --release --quiet --manifest-path "$BENCH/floor/Cargo.toml" --target-dir /tmp/floor-target
}

bench_env() {
  export CARTLINK_WORKERS=1 CARTLINK_LISTEN=127.0.0.1:$1 CARTLINK_ADMIN_LISTEN=127.0.0.1:0
  export CARTLINK_SINK=file://$WORK/clicks CARTLINK_DATA_DIR=$WORK/data CARTLINK_WATCH_LINKS_MS=0
  export CARTLINK_GEOIP=$ROOT/tests/fixtures/geo-geolite2.mmdb CARTLINK_TRUSTED_PROXIES=127.0.0.1/32 RUST_LOG=warn
}

bench_need() {
  command -v "$1" >/dev/null || { echo "needs $1 (apt-get install $2)"; exit 2; }
}

bench_bin() {
  BIN=${CARTLINK_BIN:-$ROOT/target/release/cartlink}
  [ -n "${CARTLINK_BIN:-}" ] || cargo build --release --quiet
}
