#!/usr/bin/env bash
# Runs the whole thing on this machine with no account: a local livekit-server, the agent worker,
# the local avatar, the offline voice, and a web page to talk to it. Prints the page's URL (and a token
# for the LiveKit Agents Playground); Ctrl-C stops it all.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/bootstrap.sh
scripts/web-deps.sh

WEB_PORT="${WEB_PORT:-8000}"
LOGS="${TMPDIR:-/tmp}"

pids=()        # worker and web server
server_pid=""  # livekit-server, stopped last
stop() {  # stop SECONDS PID...: TERM, then KILL whatever is still running after SECONDS
    local seconds=$1 pid running
    shift
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq "$((seconds * 10))"); do
        running=""
        for pid in "$@"; do kill -0 "$pid" 2>/dev/null && running=1; done
        if [[ -z "$running" ]]; then return 0; fi
        sleep 0.1
    done
    for pid in "$@"; do kill -KILL "$pid" 2>/dev/null || true; done
}
cleanup() {
    trap - EXIT INT TERM
    # The worker ends its jobs (their avatars leave) before the server goes; the local server has
    # nothing to drain, so it gets a short grace.
    if ((${#pids[@]})); then stop 10 "${pids[@]}"; fi
    if [[ -n "$server_pid" ]]; then stop 2 "$server_pid"; fi
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

scripts/livekit-server.sh run >"$LOGS/avatar-agent-livekit-server.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do
    curl -fsS http://127.0.0.1:7880/ >/dev/null 2>&1 && break
    sleep 0.1
done

export LIVEKIT_URL=ws://127.0.0.1:7880 LIVEKIT_API_KEY=devkey LIVEKIT_API_SECRET=secret
export AVATAR_PROVIDER="${AVATAR_PROVIDER:-local}" AGENT_NAME="${AGENT_NAME:-avatar-agent}"
export AGENT_HTTP_PORT="${AGENT_HTTP_PORT:-0}"
# Capacity by job count, not CPU: on a laptop the browser, the avatar and the server share the CPU, and a
# CPU-loaded worker turns a dispatch down, which livekit-server never offers again (the page then sits in
# an empty room). Four jobs is four open pages at once, plenty for one developer; each ends when its
# page leaves.
export AGENT_MAX_JOBS="${AGENT_MAX_JOBS:-4}"
uv run python agent.py start >"$LOGS/avatar-agent-worker.log" 2>&1 &
worker_pid=$!
pids+=("$worker_pid")

uv run python -m web.server --port "$WEB_PORT" >"$LOGS/avatar-agent-web.log" 2>&1 &
web_pid=$!
pids+=("$web_pid")
until curl -fsS "http://127.0.0.1:$WEB_PORT/" >/dev/null 2>&1; do
    if ! kill -0 "$web_pid" 2>/dev/null; then
        echo "run-local.sh: the web page's server did not start (WEB_PORT=$WEB_PORT to pick another port):" >&2
        cat "$LOGS/avatar-agent-web.log" >&2
        exit 1
    fi
    sleep 0.1
done

# The page is useful once the worker has registered: a dispatch made before that is lost.
until grep -q '"registered worker"' "$LOGS/avatar-agent-worker.log" 2>/dev/null; do
    if ! kill -0 "$worker_pid" 2>/dev/null; then
        echo "run-local.sh: the agent worker stopped before it registered:" >&2
        tail -n 30 "$LOGS/avatar-agent-worker.log" >&2
        exit 1
    fi
    sleep 0.2
done

uv run python -m scripts.join_local --agent-name "$AGENT_NAME"
cat <<MESSAGE
Or open the local page and press Start (allow the microphone):

  http://127.0.0.1:$WEB_PORT/

logs in $LOGS: avatar-agent-worker.log, avatar-agent-web.log, avatar-agent-livekit-server.log
(Ctrl-C to stop)
MESSAGE
wait
