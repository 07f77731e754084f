#!/usr/bin/env bash
# Runs the whole thing on this machine with no account: a local livekit-server, the agent worker,
# the local avatar and the offline voice. Prints a URL and token to join with; Ctrl-C stops it all.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/bootstrap.sh

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

scripts/livekit-server.sh run >/tmp/avatar-agent-livekit-server.log 2>&1 &
pids+=($!)
for _ in $(seq 100); do
    curl -fsS http://127.0.0.1:7880/ >/dev/null 2>&1 && break
    sleep 0.1
done

export LIVEKIT_URL=ws://127.0.0.1:7880 LIVEKIT_API_KEY=devkey LIVEKIT_API_SECRET=secret
export AVATAR_PROVIDER="${AVATAR_PROVIDER:-local}" AGENT_NAME="${AGENT_NAME:-avatar-agent}"
export AGENT_HTTP_PORT="${AGENT_HTTP_PORT:-0}"
uv run python agent.py start &
pids+=($!)

uv run python scripts/join_local.py --agent-name "$AGENT_NAME"
echo "server log: /tmp/avatar-agent-livekit-server.log   (Ctrl-C to stop)"
wait
