# Sourced by scripts/*.sh: uv (a private copy if none is on PATH), the locked environment, the livekit-server binary.
UV_BIN="$(scripts/ensure-uv.sh)"
PATH="$(dirname "$UV_BIN"):$PATH"
export PATH
uv sync --locked --quiet
LIVEKIT_SERVER_BIN="$(scripts/livekit-server.sh install)"
export LIVEKIT_SERVER_BIN
