#!/usr/bin/env bash
# Prints the path of a uv to use: the one on PATH if any, else a private copy installed once into its
# own virtual environment under $AVATAR_AGENT_TOOLS_DIR (default ~/.cache/avatar-agent/tools).
# Needs only python3 with venv (Debian/Ubuntu: apt install python3-venv); nothing is installed into the
# system or user Python, so PEP 668 ("externally-managed-environment") never applies.
set -euo pipefail

UV_VERSION="0.13.9"
TOOLS="${AVATAR_AGENT_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/avatar-agent/tools}"
VENV="$TOOLS/uv-$UV_VERSION"
# Only uv is linked here (not the environment's python or pip), so this folder is safe to put on PATH.
LINK="$TOOLS/bin/uv"

if command -v uv >/dev/null 2>&1; then
    command -v uv
    exit 0
fi
if [[ -x "$LINK" ]]; then
    echo "$LINK"
    exit 0
fi

# The link is made last: until then the environment is unfinished, and it is removed on any failure.
finished=""
discard_unfinished() {
    if [[ -z "$finished" ]]; then rm -rf "$VENV" "$LINK.tmp"; fi
}
trap discard_unfinished EXIT
trap 'discard_unfinished; trap - INT; kill -INT $$' INT
trap 'discard_unfinished; trap - TERM; kill -TERM $$' TERM

mkdir -p "$TOOLS/bin"
rm -rf "$VENV"
echo "ensure-uv.sh: uv not found; installing uv $UV_VERSION into $VENV" >&2
if ! python3 -m venv "$VENV" >&2; then
    echo "ensure-uv.sh: python3 cannot create a virtual environment; install python3-venv (Debian/Ubuntu) or uv (https://docs.astral.sh/uv/)" >&2
    exit 1
fi
if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION" >&2; then
    echo "ensure-uv.sh: pip could not install uv $UV_VERSION (see above)" >&2
    exit 1
fi
if [[ ! -x "$VENV/bin/uv" ]]; then
    echo "ensure-uv.sh: pip finished but installed no uv" >&2
    exit 1
fi
ln -sfn "$VENV/bin/uv" "$LINK.tmp"
mv -fT "$LINK.tmp" "$LINK"
finished=1
echo "$LINK"
