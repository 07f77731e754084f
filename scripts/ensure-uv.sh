#!/usr/bin/env bash
# Prints the path of a uv to use: the one on PATH if any, else a private copy installed once into
# its own virtual environment ($AVATAR_AGENT_TOOLS_DIR, default ~/.cache/avatar-agent/tools).
# Needs only python3 with venv (Debian/Ubuntu: apt install python3-venv); nothing is installed
# into the system or user Python, so PEP 668 ("externally-managed-environment") never applies.
set -euo pipefail

UV_VERSION="0.13.9"
TOOLS="${AVATAR_AGENT_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/avatar-agent/tools}"
VENV="$TOOLS/uv-$UV_VERSION"

if command -v uv >/dev/null 2>&1; then
    command -v uv
    exit 0
fi
if [[ -x "$VENV/bin/uv" ]]; then
    echo "$VENV/bin/uv"
    exit 0
fi

# Installed into a scratch folder and renamed into place, so a half-made environment never counts.
mkdir -p "$TOOLS"
scratch="$(mktemp -d "$TOOLS/.uv.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
trap 'rm -rf "$scratch"; trap - INT; kill -INT $$' INT
trap 'rm -rf "$scratch"; trap - TERM; kill -TERM $$' TERM

echo "ensure-uv.sh: uv not found; installing uv $UV_VERSION into $VENV" >&2
if ! python3 -m venv "$scratch/venv" >&2; then
    echo "ensure-uv.sh: python3 cannot create a virtual environment; install python3-venv (Debian/Ubuntu) or uv (https://docs.astral.sh/uv/)" >&2
    exit 1
fi
if ! "$scratch/venv/bin/python" -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION" >&2; then
    echo "ensure-uv.sh: pip could not install uv $UV_VERSION (see above)" >&2
    exit 1
fi
# uv is a native binary, so it runs from the moved environment (pip's own scripts would not; unused).
rm -rf "$VENV"
mv "$scratch/venv" "$VENV"
echo "$VENV/bin/uv"
