#!/usr/bin/env bash
# Refreshes the vendored crawler-user-agents list (MIT, github.com/monperrus/crawler-user-agents)
# from its npm package: patterns into src/audience/bot_patterns.txt (one regex per line, used by
# the server), the full file (with sample user agents) into tests/fixtures/ for the bot tests.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent crawler-user-agents >/dev/null && tar xzf crawler-user-agents-*.tgz)
cp "$tmp/package/crawler-user-agents.json" tests/fixtures/crawler-user-agents.json
cp "$tmp/package/LICENSE" tests/fixtures/crawler-user-agents.LICENSE
cp "$tmp/package/LICENSE" src/audience/bot_patterns.LICENSE
python3 - <<'PY'
import json
pats = [e["pattern"] for e in json.load(open("tests/fixtures/crawler-user-agents.json"))]
with open("src/audience/bot_patterns.txt", "w") as f:
    f.write("# crawler-user-agents (MIT, see bot_patterns.LICENSE); regenerate with scripts/update-bot-patterns.sh\n")
    for p in pats:
        assert "\n" not in p
        f.write(p + "\n")
PY
echo "$(grep -vc '^#' src/audience/bot_patterns.txt) patterns"
