#!/usr/bin/env bash
# Local stand-ins for the Dockerfile's base images, for a machine whose Docker daemon cannot
# reach Docker Hub: `debian:bookworm-slim` from debootstrap (minbase), and `rust:1-bookworm`
# from debootstrap plus gcc, make, git and this machine's stable Rust toolchain. Both get this
# machine's CA bundle, so cargo and apt work behind an intercepting proxy. Not the official
# images (the slim one is larger, the Rust one has no rustup), but the same names, Debian
# release and tools the Dockerfile relies on. Needs root, debootstrap and a Debian mirror.
#
#   scripts/docker-base-images.sh && scripts/docker-check.sh
set -euo pipefail
command -v debootstrap >/dev/null || { echo "needs debootstrap (apt-get install debootstrap)"; exit 2; }
toolchain=$(rustc --print sysroot)
# A distribution's rustc has /usr as its sysroot: that is not a toolchain to copy.
[ "$toolchain" != /usr ] && [ -x "$toolchain/bin/cargo" ] || { echo "needs a rustup toolchain (sysroot: $toolchain)"; exit 2; }
mirror=${MIRROR:-http://deb.debian.org/debian}
work=$(mktemp -d /tmp/cartlink-base-images.XXXXXX)
trap 'rm -rf "$work"' EXIT

rootfs() { # DIR [extra packages]
  debootstrap --variant=minbase ${2:+--include=$2} bookworm "$1" "$mirror" >/dev/null
  rm -f "$1"/var/cache/apt/archives/*.deb
  mkdir -p "$1/etc/ssl/certs" "$1/usr/local/share/ca-certificates"
  cp /etc/ssl/certs/ca-certificates.crt "$1/etc/ssl/certs/"
  cp /usr/local/share/ca-certificates/*.crt "$1/usr/local/share/ca-certificates/" 2>/dev/null || true
}

rootfs "$work/slim"
tar -C "$work/slim" -c . | docker import --change 'CMD ["bash"]' - debian:bookworm-slim >/dev/null

rootfs "$work/rust" gcc,libc6-dev,make,ca-certificates,git,curl,pkg-config,perl
cp -a "$toolchain" "$work/rust/usr/local/rust"
rm -rf "$work/rust/usr/local/rust/share/doc"
tar -C "$work/rust" -c . | docker import \
  --change 'ENV PATH=/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV CARGO_HOME=/usr/local/cargo' --change 'CMD ["bash"]' - rust:1-bookworm >/dev/null
docker images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^(debian:bookworm-slim|rust:1-bookworm) '
