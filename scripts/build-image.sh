#!/usr/bin/env bash
# Builds the worker's container image from the Dockerfile with podman, as `docker build .` would (the
# same Dockerfile, build context and .dockerignore), and prints its size and build time.
#
#   scripts/build-image.sh [--context DIR] [--tag NAME]     defaults: this repository, avatar-agent:latest
#
# Needs root; installs podman and debootstrap with apt-get when they are missing (scripts/ensure-podman.sh).
# The Dockerfile starts FROM python:3.11-slim. A python:3.11-slim already in podman's storage (pulled by
# you) is used as it is; nothing is pulled. Otherwise a stand-in is made once from Debian packages
# (debootstrap of bookworm with python3.11, from this machine's apt mirror) and kept in podman's storage
# under that name, labelled with a version key: later builds reuse it and podman's layer cache, and
# take seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

CONTEXT="$PWD"
TAG="avatar-agent:latest"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --context) CONTEXT="$(cd "$2" && pwd)"; shift 2 ;;
        --tag) TAG="$2"; shift 2 ;;
        *) echo "usage: $0 [--context DIR] [--tag NAME]" >&2; exit 2 ;;
    esac
done

BASE="docker.io/library/python:3.11-slim"
STANDIN_LABEL="avatar-agent.standin-base"
SUITE="bookworm"
STANDIN_PACKAGES="python3.11,python3-pip,passwd,ca-certificates"
# Bump STANDIN_RECIPE when the stand-in's recipe below changes; the machine's CA bundle is part of the
# key because the stand-in carries it (uv and pip inside the build verify the package index with it).
STANDIN_RECIPE="1"
CA_BUNDLE="/etc/ssl/certs/ca-certificates.crt"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/avatar-agent"

say() { echo "build-image.sh: $*" >&2; }

if [[ "$(id -u)" != 0 ]]; then
    say "needs root: podman builds here as root (rootless podman needs subuid ranges this script does not set up)"
    exit 1
fi
scripts/ensure-podman.sh

# Where debootstrap fetches from: this machine's own Debian mirror (DEBIAN_MIRROR overrides it).
debian_mirror() {
    if [[ -n "${DEBIAN_MIRROR:-}" ]]; then echo "$DEBIAN_MIRROR"; return; fi
    local uri
    uri="$(grep -hs -E '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v -e security -m1 || true)"
    if [[ -z "$uri" ]]; then
        uri="$(grep -hs -E '^deb ' /etc/apt/sources.list | awk '{print $2}' | grep -v -e security -m1 || true)"
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

standin_key() {
    local ca="none"
    if [[ -r "$CA_BUNDLE" ]]; then ca="$(sha256sum "$CA_BUNDLE" | cut -c1-16)"; fi
    echo "recipe-$STANDIN_RECIPE/$SUITE/$STANDIN_PACKAGES/ca-$ca"
}

# Unmounts everything below a folder (debootstrap mounts /proc and /sys in its target), then removes it
# without ever crossing into a mount.
remove_tree() {
    local target
    while read -r target; do umount -l "$target" 2>/dev/null || true; done < <(
        awk -v root="$1/" 'index($2, root) == 1 {print $2}' /proc/self/mounts | sort -r
    )
    rm -rf --one-file-system "$1"
}

# debootstrap's scratch folder, and the long command running in the background: both ended on every
# exit (success, failure, Ctrl-C, kill; a folder left by SIGKILL is swept by the next stand-in build).
scratch=""
child=""
cleanup() {
    if [[ -n "$child" ]]; then
        kill -TERM -- "-$child" 2>/dev/null || true
        wait "$child" 2>/dev/null || true
        child=""
    fi
    if [[ -n "$scratch" ]]; then
        remove_tree "$scratch"
        scratch=""
    fi
}
trap cleanup EXIT
trap 'cleanup; trap - INT; kill -INT $$' INT
trap 'cleanup; trap - TERM; kill -TERM $$' TERM

# Runs a command in the background, as a process group of its own, and waits for it: a signal is then
# handled at once, and ends the command with everything it started.
run() {
    local status=0
    setsid "$@" &
    child=$!
    wait "$child" || status=$?
    child=""
    return "$status"
}

make_standin() {
    local key="$1" mirror rootfs started
    mirror="$(debian_mirror)"
    started=$SECONDS
    local stale
    for stale in "$CACHE"/standin.build.*; do
        if [[ -e "$stale" ]]; then remove_tree "$stale"; fi
    done
    scratch="$(mktemp -d "$CACHE/standin.build.XXXXXX")"
    rootfs="$scratch/rootfs"
    say "no $BASE in podman's storage (nothing is pulled): making a stand-in with debootstrap ($SUITE from $mirror; once, a minute or two)"
    if ! run debootstrap --variant=minbase --include="$STANDIN_PACKAGES" "$SUITE" "$rootfs" "$mirror" >"$scratch/debootstrap.log" 2>&1; then
        tail -n 30 "$scratch/debootstrap.log" >&2
        say "debootstrap failed (log above)"
        exit 1
    fi
    # Like the official image: `python` on PATH in /usr/local/bin, pip allowed to install (no
    # EXTERNALLY-MANAGED marker), no package caches, docs or locales.
    ln -sf /usr/bin/python3.11 "$rootfs/usr/local/bin/python"
    ln -sf /usr/bin/python3.11 "$rootfs/usr/local/bin/python3"
    rm -f "$rootfs"/usr/lib/python3.*/EXTERNALLY-MANAGED
    rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
    # The machine's CA bundle (it may hold a local CA the package index is served through).
    if [[ -r "$CA_BUNDLE" ]]; then cp "$CA_BUNDLE" "$rootfs/etc/ssl/certs/ca-certificates.crt"; fi
    tar --numeric-owner --one-file-system -C "$rootfs" -c . | podman import \
        --change "ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin" \
        --change "ENV LANG=C.UTF-8" \
        --change "ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" \
        --change "LABEL $STANDIN_LABEL=$key" \
        --change 'CMD ["python3"]' \
        - "$BASE" >/dev/null
    cleanup
    say "stand-in $BASE made in $((SECONDS - started)) s"
}

ensure_base() {
    local key found
    key="$(standin_key)"
    if found="$(podman image inspect --format "{{ index .Labels \"$STANDIN_LABEL\" }}" "$BASE" 2>/dev/null)"; then
        if [[ "$found" == "$key" ]]; then return; fi
        if [[ -z "$found" || "$found" == "<no value>" ]]; then
            say "using the $BASE in podman's storage"
            return
        fi
        say "the stand-in $BASE is out of date ($found); making it again"
    fi
    # One stand-in at a time per machine; a second caller waits, then finds it made.
    mkdir -p "$CACHE"
    exec 8>"$CACHE/standin-base.lock"
    flock 8
    found="$(podman image inspect --format "{{ index .Labels \"$STANDIN_LABEL\" }}" "$BASE" 2>/dev/null || true)"
    if [[ "$found" != "$key" ]]; then make_standin "$key"; fi
    flock -u 8
}

ensure_base

started="$(date +%s.%N)"
# --format=docker: Docker's image format, which keeps HEALTHCHECK (the OCI format drops it).
# --isolation=chroot: the default (a container per RUN) needs a cgroup setup CI machines may not have.
# --pull=never: the base is the one in podman's storage, never fetched.
run podman build --format=docker --isolation=chroot --network=host --pull=never --layers \
    --tag "$TAG" --file "$CONTEXT/Dockerfile" "$CONTEXT" >&2
elapsed="$(echo "$(date +%s.%N) $started" | awk '{print $1 - $2}')"

size="$(podman image inspect --format '{{.Size}}' "$TAG")"
base_size="$(podman image inspect --format '{{.Size}}' "$BASE")"
awk -v tag="$TAG" -v size="$size" -v base="$base_size" -v took="$elapsed" 'BEGIN {
    printf "%s: %.0f MB (%.0f MB base python:3.11-slim, %.0f MB from the Dockerfile), built in %.1f s\n",
        tag, size / 1e6, base / 1e6, (size - base) / 1e6, took
}'
