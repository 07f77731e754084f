#!/usr/bin/env bash
# Build, locate or run the livekit-server binary used by the tests and for local development.
#   scripts/livekit-server.sh install   build it once into $LIVEKIT_SERVER_DIR (prints the binary path)
#   scripts/livekit-server.sh path      print the binary path (it may not exist yet)
#   scripts/livekit-server.sh run ...   install if needed, then run a dev server on 127.0.0.1
#                                       (ws://127.0.0.1:7880, key devkey, secret "secret"); extra args are passed on
set -euo pipefail

VERSION="v1.13.5"
DIR="${LIVEKIT_SERVER_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/livekit-server/$VERSION}"
BIN="$DIR/server"

# The build goes to a scratch folder and is renamed into place only once `go install` succeeded, so
# "$BIN exists" always means "the build finished". The scratch folder goes on every exit: success,
# failure, Ctrl-C or kill (SIGKILL cannot be trapped: the next install sweeps what it left).
scratch=""
build_pid=""
remove_scratch() {
    # The build, also when a signal came between its start and `build_pid=$!` (jobs knows it then).
    local pids
    pids="$build_pid $(jobs -p)"
    if [[ -n "${pids// /}" ]]; then kill $pids 2>/dev/null || true; fi
    if [[ -n "$scratch" ]]; then rm -rf "$scratch"; fi
}
trap remove_scratch EXIT
trap 'remove_scratch; trap - INT; kill -INT $$' INT
trap 'remove_scratch; trap - TERM; kill -TERM $$' TERM

install_server() {
    if [[ -x "$BIN" ]]; then
        echo "$BIN"
        return
    fi
    command -v go >/dev/null || {
        echo "livekit-server.sh: go is required to build livekit-server $VERSION (https://go.dev/dl/)" >&2
        exit 1
    }
    mkdir -p "$DIR"
    # One build at a time per cache folder; a second caller waits, then finds the binary.
    exec 9<"$DIR"
    flock 9
    if [[ -x "$BIN" ]]; then
        echo "$BIN"
        return
    fi
    rm -rf "$DIR"/.build.*  # left by a build that was killed outright
    scratch="$(mktemp -d "$DIR/.build.XXXXXX")"
    echo "livekit-server.sh: building livekit-server $VERSION with go install (once; a few minutes)" >&2
    # In the background, so a signal is handled at once rather than after the build.
    CGO_ENABLED=0 GOBIN="$scratch" go install "github.com/livekit/livekit-server/cmd/server@$VERSION" >&2 &
    build_pid=$!
    if ! wait "$build_pid"; then
        build_pid=""
        echo "livekit-server.sh: go install of livekit-server $VERSION failed (see above)" >&2
        exit 1
    fi
    build_pid=""
    if [[ ! -x "$scratch/server" ]]; then
        echo "livekit-server.sh: go install finished but produced no 'server' binary" >&2
        exit 1
    fi
    mv -f "$scratch/server" "$BIN"
    echo "$BIN"
}

case "${1:-}" in
    install)
        install_server
        ;;
    path)
        echo "$BIN"
        ;;
    run)
        shift
        install_server >/dev/null
        # These variables reconfigure the server behind the flags' back.
        exec env -u LIVEKIT_KEYS -u LIVEKIT_PORT -u LIVEKIT_CONFIG "$BIN" --dev --bind 127.0.0.1 "$@"
        ;;
    *)
        echo "usage: $0 install|path|run [server args...]" >&2
        exit 2
        ;;
esac
