#!/usr/bin/env bash
# Runs every test, from a fresh machine: installs uv (from PyPI) if absent, the locked environment,
# and the real livekit-server the end-to-end tests run against. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/bootstrap.sh

uv run ruff check .
uv run ruff format --check .
uv run mypy .
uv run pytest "$@"
