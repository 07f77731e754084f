# Sourced by scripts/*.sh: uv (from PyPI if absent), the locked environment, the livekit-server binary.
if ! command -v uv >/dev/null 2>&1; then
    python3 -m pip install --quiet --user "uv==0.13.9"
    export PATH="$HOME/.local/bin:$PATH"
fi
uv sync --locked --quiet
LIVEKIT_SERVER_BIN="$(scripts/livekit-server.sh install)"
export LIVEKIT_SERVER_BIN
