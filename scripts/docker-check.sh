#!/usr/bin/env bash
# Builds the Dockerfile and runs the image as a user would: the HEALTHCHECK turns healthy, the
# process runs as the non-root user, a demo link (minted by the image itself) answers 302 with
# the click ID in the cart, a forged one 404, the click reaches the file sink, and `docker stop`
# (SIGTERM) drains and exits 0. Needs a Docker daemon and ports 8080 and 9090 free (the image's
# defaults and its HEALTHCHECK's port; the container uses the host's network, so it works
# without a bridge too).
#
#   scripts/docker-check.sh
#
# Exits 0 with SKIP when no daemon answers, a base image can be neither found nor pulled within
# 10 minutes (machines without Docker Hub: scripts/docker-base-images.sh makes local stand-ins),
# or port 8080 or 9090 is taken.
set -euo pipefail
cd "$(dirname "$0")/.."
docker info >/dev/null 2>&1 || { echo "SKIP: no Docker daemon"; exit 0; }
for base in $(awk '/^FROM/ {print $2}' Dockerfile); do
  docker image inspect "$base" >/dev/null 2>&1 && continue
  pulled=0
  timeout 600 docker pull -q "$base" >/dev/null 2>&1 || pulled=$?
  case $pulled in
    0) ;;
    124) echo "SKIP: pulling base image $base timed out after 600 s"; exit 0 ;;
    *) echo "SKIP: base image $base neither local nor pullable (see scripts/docker-base-images.sh)"; exit 0 ;;
  esac
done
command -v ss >/dev/null || { echo "SKIP: needs ss (iproute2) to check ports 8080 and 9090"; exit 0; }
for port in 8080 9090; do
  if [ -n "$(ss -ltnH "sport = :$port")" ]; then echo "SKIP: port $port is taken"; exit 0; fi
done

image=cartlink-check
name=cartlink-check-$$
fail() { echo "FAIL: $*"; docker logs "$name" 2>&1 | tail -20; exit 1; }
trap 'docker rm -f "$name" >/dev/null 2>&1 || true' EXIT

started=$(date +%s)
docker build --network=host -t "$image" . >"${TMPDIR:-/tmp}/$name.build.log" 2>&1 \
  || { tail -30 "${TMPDIR:-/tmp}/$name.build.log"; echo "FAIL: docker build"; exit 1; }
rm -f "${TMPDIR:-/tmp}/$name.build.log"
echo "built $image in $(($(date +%s) - started)) s, $(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1 / 1e6}')"
docker run -d --name "$name" --network=host "$image" >/dev/null

for _ in $(seq 60); do
  health=$(docker inspect -f '{{.State.Health.Status}}' "$name")
  [ "$health" = healthy ] && break
  [ "$(docker inspect -f '{{.State.Running}}' "$name")" = true ] || fail "the container exited"
  sleep 1
done
[ "$health" = healthy ] || fail "HEALTHCHECK still $health after 60 s"
[ "$(docker exec "$name" id -u)" = 10001 ] || fail "not running as uid 10001"

url=$(docker exec "$name" cartlink mint jane-kit 2>/dev/null | tail -1) || fail "cartlink mint in the container"
path=/${url#*://*/}
ua='Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 Instagram 305.0.0.0'
answer=$(curl -s -m 10 -o /dev/null -w '%{http_code} %{redirect_url}' -A "$ua" "http://127.0.0.1:8080$path" || true)
case "$answer" in
  "302 https://"*cl_click*) ;;
  *) fail "minted link $path answered: $answer" ;;
esac
# The click ID is the 36 characters after the key; forwarded query pairs may follow it.
click=${answer##*cl_click%5D=}
click=${click:0:36}
[[ $click =~ ^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}$ ]] || fail "no UUIDv7 click ID in $answer"
# One signature character flipped.
last=${path: -1}
forged=$(curl -s -m 10 -o /dev/null -w '%{http_code}' -A "$ua" "http://127.0.0.1:8080${path%?}$([ "$last" = A ] && echo B || echo A)" || true)
[ "$forged" = 404 ] || fail "forged link answered $forged"

docker stop -t 20 "$name" >/dev/null
[ "$(docker inspect -f '{{.State.ExitCode}}' "$name")" = 0 ] || fail "exit code $(docker inspect -f '{{.State.ExitCode}}' "$name") after SIGTERM"
docker logs "$name" 2>&1 | grep -qE ' stopped$' || fail "no 'stopped' line after SIGTERM"
docker cp "$name:/var/lib/cartlink/clicks" - | tar -xO | grep -q "\"click_id\":\"$click\"" \
  || fail "click $click not in the file sink"
echo "PASS: healthy as uid 10001; 302 with cl_click $click; forged 404; click written; SIGTERM exit 0"
