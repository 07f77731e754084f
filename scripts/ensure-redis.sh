#!/usr/bin/env bash
# Prints the path of the redis-server the cluster tests run (two livekit-server nodes share it):
# $REDIS_SERVER_BIN if set, else Debian's `redis-server`, installed with apt-get when missing
# (scripts/ensure-debian-tool.sh). The tests start their own redis-server on a free port, without
# persistence; the package's service is not used.
set -euo pipefail
source "${BASH_SOURCE[0]%/*}/ensure-debian-tool.sh"
ensure_debian_tool ensure-redis.sh redis-server redis-server REDIS_SERVER_BIN
