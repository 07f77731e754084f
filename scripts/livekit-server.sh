#!/usr/bin/env bash
# Build, locate or run the livekit-server binary used by the tests and for local development.
#   scripts/livekit-server.sh install   build it once into $LIVEKIT_SERVER_DIR (prints the binary path)
#   scripts/livekit-server.sh path      print the binary path (it may not exist yet)
#   scripts/livekit-server.sh run ...   install if needed, then run a dev server on 127.0.0.1
#                                       (ws://127.0.0.1:7880, key devkey, secret "secret"); extra args are passed on
set -euo pipefail

VERSION="v1.13.5"
DIR="${LIVEKIT_SERVER_DIR:-$HOME/.cache/livekit-server/$VERSION}"
BIN="$DIR/server"

install_server() {
    if [[ -x "$BIN" ]]; then
        echo "$BIN"
        return
    fi
    command -v go >/dev/null || { echo "go is required to build livekit-server" >&2; exit 1; }
    mkdir -p "$DIR"
    # Build into a scratch GOBIN and rename, so "$BIN exists" always means "the build finished".
    local scratch
    scratch="$(mktemp -d "$DIR/.build.XXXXXX")"
    trap 'rm -rf "$scratch"' EXIT
    CGO_ENABLED=0 GOBIN="$scratch" go install "github.com/livekit/livekit-server/cmd/server@$VERSION" >&2
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
