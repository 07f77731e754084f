#!/usr/bin/env bash
# Runs every test, from a fresh machine: installs uv (from PyPI) if absent, the locked environment,
# the real livekit-server the end-to-end tests run against, and for the browser test Debian's Chromium
# and the page's livekit-client (npm). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/bootstrap.sh
# The browser test's page and browser. Without them that test says why (and fails in CI).
scripts/web-deps.sh || echo "test.sh: livekit-client not installed: the browser test cannot run" >&2
CHROMIUM_BIN="$(scripts/ensure-chromium.sh)" && export CHROMIUM_BIN ||
    echo "test.sh: no Chromium: the browser test cannot run" >&2
# The cluster tests' Redis (two livekit-server nodes share it). Without it they say why (and fail in CI).
REDIS_SERVER_BIN="$(scripts/ensure-redis.sh)" && export REDIS_SERVER_BIN ||
    echo "test.sh: no redis-server: the cluster tests cannot run" >&2

uv run ruff check .
uv run ruff format --check .
uv run mypy .
# A test process that crashed stopped nothing it had started: the workers (this checkout's Python) and
# the livekit-servers its fixtures ran (now orphans, config under a livekit-server-* temp dir).
stop_leftovers() {
    local venv_python="$PWD/.venv/bin/python" proc pid cmd
    for proc in /proc/[0-9]*; do
        pid="${proc#/proc/}"
        cmd="$(tr '\0' ' ' 2>/dev/null <"$proc/cmdline")" || continue
        case "$cmd" in
            "$venv_python "* | *" --config "*"/livekit-server-"*"/config.yaml ")
                if [ "$(awk '{print $4}' "$proc/stat" 2>/dev/null)" = 1 ] || [[ "$cmd" == "$venv_python "* ]]; then
                    echo "test.sh: stopping what the crashed run left: $pid ${cmd:0:100}" >&2
                    kill "$pid" 2>/dev/null || true
                fi
                ;;
        esac
    done
}

# livekit's native client (livekit 1.1.21) has, rarely, crashed the test process with SIGSEGV in its
# event callback (ctypes.string_at in ffi_event_callback). That is no test's verdict: say so loudly,
# stop what the crashed run left running, and run the tests once more; a second crash, or any failure,
# fails the run.
status=0
uv run pytest "$@" || status=$?
case "$status" in
    134 | 139)
        echo "test.sh: the test process crashed (exit $status: SIGABRT/SIGSEGV, faulthandler's trace above); running the tests once more" >&2
        stop_leftovers
        uv run pytest "$@"
        ;;
    *) exit "$status" ;;
esac
