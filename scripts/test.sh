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

uv run ruff check .
uv run ruff format --check .
uv run mypy .
# livekit's native client (livekit 1.1.21) has, rarely, crashed the test process with SIGSEGV in its
# event callback (ctypes.string_at in ffi_event_callback). That is no test's verdict: say so loudly,
# and run the tests once more; a second crash, or any failure, fails the run. A crashed run stops
# nothing it started (workers, livekit-servers, each in a session of its own): scripts/reaped.py adopts
# them as their subreaper and stops exactly those, never a process another terminal runs.
status=0
uv run python scripts/reaped.py pytest "$@" || status=$?
case "$status" in
    134 | 139)
        echo "test.sh: the test process crashed (exit $status: SIGABRT/SIGSEGV, faulthandler's trace above); running the tests once more" >&2
        uv run python scripts/reaped.py pytest "$@"
        ;;
    *) exit "$status" ;;
esac
