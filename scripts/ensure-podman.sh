#!/usr/bin/env bash
# Makes sure the tools that build and inspect the container image are installed: podman (builds the
# Dockerfile), debootstrap (makes a stand-in base image where no image registry is reachable), and the
# util-linux/coreutils commands the image test runs the worker with (unshare, mount, chroot).
# Installs what is missing with apt-get (Debian/Ubuntu, as root, non-interactive); anywhere else it
# stops with a message naming what is missing. Quiet when everything is there.
set -euo pipefail

# command -> the Debian package that provides it
declare -A PACKAGE_OF=(
    [podman]=podman
    [debootstrap]=debootstrap
    [unshare]=util-linux
    [mount]=mount
    [chroot]=coreutils
    [flock]=util-linux
)

missing=()
for command in "${!PACKAGE_OF[@]}"; do
    if ! command -v "$command" >/dev/null 2>&1; then missing+=("$command"); fi
done
if [[ ${#missing[@]} -eq 0 ]]; then exit 0; fi

packages=()
for command in "${missing[@]}"; do packages+=("${PACKAGE_OF[$command]}"); done
mapfile -t packages < <(printf '%s\n' "${packages[@]}" | sort -u)

fail() {
    echo "ensure-podman.sh: ${missing[*]} not found and cannot be installed here: $1" >&2
    echo "ensure-podman.sh: install the Debian packages ${packages[*]} (or their equivalents) and retry" >&2
    exit 1
}
command -v apt-get >/dev/null 2>&1 || fail "no apt-get on this machine"
[[ "$(id -u)" == 0 ]] || fail "apt-get needs root (run as root, or install them first)"

echo "ensure-podman.sh: installing ${packages[*]} with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
apt_get() { apt-get -y -q -o Dpkg::Use-Pty=0 "$@" >&2; }
# A fresh machine may have no package lists yet, or stale ones: refresh them when the install fails.
if ! apt_get install "${packages[@]}"; then
    apt_get update || fail "apt-get update failed (see above)"
    apt_get install "${packages[@]}" || fail "apt-get install failed (see above)"
fi
for command in "${missing[@]}"; do
    command -v "$command" >/dev/null 2>&1 || fail "apt-get installed ${packages[*]} but $command is still missing"
done
