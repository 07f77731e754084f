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
# livekit's native client (livekit 1.1.21) has, rarely, crashed the test process with SIGSEGV in its
# event callback (ctypes.string_at in ffi_event_callback). That is no test's verdict: say so loudly,
# and run once more only the tests that did not finish (scripts/pytest_progress.py writes each test to
# $progress as it starts and finishes, and leaves out the finished ones in the next run). At most
# MAX_CRASHES crashes are survived; one more fails the run, as does a test that failed in any run. A
# crashed run stops nothing it started (workers, livekit-servers, each in a session of its own):
# scripts/reaped.py adopts them as their subreaper and stops exactly those, never a process another
# terminal runs.
MAX_CRASHES=2
progress="$(mktemp "${TMPDIR:-/tmp}/test-progress.XXXXXX")"
trap 'rm -f "$progress"' EXIT
last_state() { awk -F '\t' -v want="$1" '{ state[$2] = $1 } END { for (id in state) if (state[id] == want) print id }' "$progress"; }
crashes=0
while :; do
    status=0
    PYTEST_PROGRESS_FILE="$progress" uv run python scripts/reaped.py \
        python -m pytest -p scripts.pytest_progress "$@" || status=$?
    case "$status" in
        134 | 139) ;;
        5) # every test had finished before the crash: nothing was left to run
            [ "$crashes" -gt 0 ] && status=0
            break
            ;;
        *) break ;;
    esac
    crashes=$((crashes + 1))
    echo "test.sh: the test process crashed (exit $status: SIGABRT/SIGSEGV, faulthandler's trace above), crash $crashes; running: $(last_state started | tr '\n' ' ')" >&2
    if [ "$crashes" -gt "$MAX_CRASHES" ]; then
        echo "test.sh: $crashes crashes of the test process: failing the run" >&2
        exit "$status"
    fi
    echo "test.sh: running again the tests that did not finish ($(grep -c '^passed\|^failed' "$progress") finished)" >&2
done
failed="$(last_state failed)"
if [ "$status" = 0 ] && [ -n "$failed" ]; then
    echo "test.sh: failed before a crash: $failed" >&2
    status=1
fi
echo "test.sh: the test process crashed $crashes time(s)" >&2
exit "$status"
