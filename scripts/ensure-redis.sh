#!/usr/bin/env bash
# Prints the path of the redis-server the cluster tests run (two livekit-server nodes share it):
# $REDIS_SERVER_BIN if set, else Debian's `redis-server`, installed with apt-get when missing (as root, or
# through passwordless sudo). Exits non-zero, saying why, when it can neither find nor install one.
set -euo pipefail

if [[ -n "${REDIS_SERVER_BIN:-}" ]]; then
    if [[ ! -x "$REDIS_SERVER_BIN" ]]; then
        echo "ensure-redis.sh: REDIS_SERVER_BIN=$REDIS_SERVER_BIN is not an executable file" >&2
        exit 1
    fi
    echo "$REDIS_SERVER_BIN"
    exit 0
fi
if command -v redis-server >/dev/null 2>&1; then
    command -v redis-server
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-redis.sh: redis-server is not installed and this is not a Debian-like system (no apt-get);" \
        "install Redis and set REDIS_SERVER_BIN to its redis-server" >&2
    exit 1
fi
if [[ "$(id -u)" -eq 0 ]]; then
    as_root=(env)
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n env)
else
    echo "ensure-redis.sh: redis-server is not installed and this user cannot install it;" \
        "run: sudo apt-get install redis-server" >&2
    exit 1
fi

echo "ensure-redis.sh: installing Debian's redis-server with apt-get (once)" >&2
# The tests start their own redis-server on a free port, without persistence; the package's service is not used.
apt=("${as_root[@]}" DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 -q)
if ! "${apt[@]}" update >&2 || ! "${apt[@]}" install -y --no-install-recommends redis-server >&2; then
    echo "ensure-redis.sh: apt-get could not install redis-server (see above)" >&2
    exit 1
fi
if ! command -v redis-server >/dev/null 2>&1; then
    echo "ensure-redis.sh: apt-get installed redis-server but there is no redis-server on PATH" >&2
    exit 1
fi
command -v redis-server
