#!/usr/bin/env bash
# Checks the SRE pack: alert rules (syntax + unit tests) and every dashboard query (parsed by
# promtool as a recording rule). Needs promtool (Debian package `prometheus`).
set -euo pipefail
cd "$(dirname "$0")"
promtool check rules alerts.yml
promtool test rules alerts.test.yml
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - "$tmp/dashboard-rules.yml" <<'PY'
import json, sys
d = json.load(open("grafana-dashboard.json"))
out = ["groups:", "  - name: dashboard", "    rules:"]
n = 0
for p in d["panels"]:
    for t in p["targets"]:
        e = t["expr"].replace("$__rate_interval", "5m").replace("$instance", ".*")
        n += 1
        out.append(f"      - record: dashboard:q{n}")
        out.append("        expr: " + json.dumps(e))
open(sys.argv[1], "w").write("\n".join(out) + "\n")
print(f"dashboard: {len(d['panels'])} panels, {n} queries")
PY
promtool check rules "$tmp/dashboard-rules.yml"
