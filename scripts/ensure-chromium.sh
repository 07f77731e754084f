#!/usr/bin/env bash
# Prints the path of the Chromium the browser test drives: $CHROMIUM_BIN if set, else Debian's `chromium`,
# installed with apt-get when missing (as root, or through passwordless sudo). No browser is downloaded
# from anywhere else. Exits non-zero, saying why, when it can neither find nor install one.
set -euo pipefail

if [[ -n "${CHROMIUM_BIN:-}" ]]; then
    if [[ ! -x "$CHROMIUM_BIN" ]]; then
        echo "ensure-chromium.sh: CHROMIUM_BIN=$CHROMIUM_BIN is not an executable file" >&2
        exit 1
    fi
    echo "$CHROMIUM_BIN"
    exit 0
fi
if command -v chromium >/dev/null 2>&1; then
    command -v chromium
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-chromium.sh: Chromium is not installed and this is not a Debian-like system (no apt-get);" \
        "install Chromium and set CHROMIUM_BIN to it" >&2
    exit 1
fi
if [[ "$(id -u)" -eq 0 ]]; then
    as_root=(env)
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n env)
else
    echo "ensure-chromium.sh: Chromium is not installed and this user cannot install it;" \
        "run: sudo apt-get install chromium" >&2
    exit 1
fi

echo "ensure-chromium.sh: installing Debian's chromium with apt-get (once)" >&2
# Another install on the machine may hold the dpkg lock for a while: wait for it rather than fail.
apt=("${as_root[@]}" DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 -q)
if ! "${apt[@]}" update >&2 || ! "${apt[@]}" install -y --no-install-recommends chromium >&2; then
    echo "ensure-chromium.sh: apt-get could not install chromium (see above)" >&2
    exit 1
fi
if ! command -v chromium >/dev/null 2>&1; then
    echo "ensure-chromium.sh: apt-get installed chromium but there is no chromium on PATH" >&2
    exit 1
fi
command -v chromium
