#!/usr/bin/env bash
# Installs the local page's one dependency, LiveKit's browser SDK (livekit-client, pinned in
# web/package.json and web/package-lock.json), into web/node_modules with `npm ci`, unless exactly the
# pinned version is already there. Needs Node.js with npm (Debian: apt-get install npm).
set -euo pipefail
cd "$(dirname "$0")/../web"

# read_json FILE EXPRESSION: prints manifest[EXPRESSION...], or nothing if FILE does not exist.
read_json() {
    python3 -c 'import json, sys
try:
    value = json.load(open(sys.argv[1]))
except FileNotFoundError:
    sys.exit(0)
for key in sys.argv[2:]:
    value = value[key]
print(value)' "$@"
}

pinned="$(read_json package.json dependencies livekit-client)"
if [[ "$(read_json node_modules/livekit-client/package.json version)" == "$pinned" ]]; then
    exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
    echo "web-deps.sh: npm is needed to install livekit-client $pinned for the local page;" \
        "install Node.js with npm (Debian: apt-get install npm)" >&2
    exit 1
fi
echo "web-deps.sh: installing livekit-client $pinned into web/node_modules (npm ci)" >&2
if ! npm ci --no-audit --no-fund --loglevel=error >&2; then
    echo "web-deps.sh: npm ci failed (see above)" >&2
    exit 1
fi
