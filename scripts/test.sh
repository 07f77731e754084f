#!/usr/bin/env bash
# Runs every test, from a fresh machine: installs uv (from PyPI) if absent, the locked environment,
# and the real livekit-server the end-to-end tests run against. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v uv >/dev/null 2>&1; then
    python3 -m pip install --quiet --user "uv==0.13.9"
    export PATH="$HOME/.local/bin:$PATH"
fi
uv sync --locked --quiet
LIVEKIT_SERVER_BIN="$(scripts/livekit-server.sh install)"
export LIVEKIT_SERVER_BIN

uv run ruff check .
uv run ruff format --check .
uv run mypy .
uv run pytest "$@"
