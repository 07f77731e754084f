"""Time from an explicit dispatch to the user's first decoded avatar video frame, per provider.

Real livekit-server, the worker as a process (`agent.py start`), LemonSlice and Anam through their emulators
(whose avatars really join). Prints each provider's figures and its ratio to the local avatar.

    uv run python -m bench.first_frame --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from livekit import api

from tests.support.avatar_launcher import LocalAvatarLauncher
from tests.support.dispatch import dispatch_to_workers
from tests.support.emulators import AnamEmulator, EmulatorServer, LemonSliceEmulator
from tests.support.livekit_server import LiveKitServer, server_api, server_binary_path
from tests.support.room_user import RoomUser
from tests.support.worker import LogRecord, WorkerProcess, worker_environment

IDENTITIES = {
    "local": "local-avatar-agent",
    "lemonslice": "lemonslice-avatar-agent",
    "anam": "anam-avatar-agent",
}


def _session_closed_in(room: str) -> Callable[[LogRecord], bool]:
    return lambda record: (
        record.get("room") == room
        and str(record.get("message", "")).endswith("avatar session closed")
    )


async def measure(server: LiveKitServer, provider: str, runs: int, workdir: Path) -> list[float]:
    emulator: EmulatorServer | None = None
    extra = {"AVATAR_PROVIDER": provider}
    launcher = LocalAvatarLauncher()
    if provider == "lemonslice":
        emulator = LemonSliceEmulator(api_key="bench-key", avatar_launcher=launcher)
        await emulator.start()
        extra |= {
            "LEMONSLICE_API_KEY": "bench-key",
            "LEMONSLICE_API_URL": emulator.sessions_url,
            "LEMONSLICE_AGENT_ID": "bench",
        }
    elif provider == "anam":
        emulator = AnamEmulator(api_key="bench-key", avatar_launcher=launcher)
        await emulator.start()
        extra |= {"ANAM_API_KEY": "bench-key", "ANAM_API_URL": emulator.url, "ANAM_AVATAR_ID": "b"}
    agent_name = f"bench-{provider}-{uuid.uuid4().hex[:6]}"
    worker = WorkerProcess(worker_environment(server, agent_name, extra), cwd=workdir)
    timings: list[float] = []
    try:
        await worker.start()
        async with server_api(server) as lk:
            for _ in range(runs):
                room = f"bench-{provider}-{uuid.uuid4().hex[:8]}"
                user = await RoomUser.join(server, room)
                try:
                    started = time.monotonic()
                    await dispatch_to_workers(lk, agent_name, room, [worker])
                    frame = await user.first_video_frame(IDENTITIES[provider], timeout=60)
                    timings.append(frame.received_at - started)
                    print(f"{provider} run {len(timings)}: {timings[-1]:.2f}s", flush=True)
                finally:
                    await user.leave()
                    await lk.room.delete_room(api.DeleteRoomRequest(room=room))
                await worker.wait_for_log(_session_closed_in(room), timeout=60)
    finally:
        await worker.stop()
        if emulator is not None:
            await emulator.aclose()
    return timings


async def main(runs: int) -> None:
    results: dict[str, list[float]] = {}
    tmp = tempfile.mkdtemp(prefix="bench-first-frame-")
    print("worker logs in", tmp)
    with LiveKitServer(server_binary_path()) as server:
        for provider in ("local", "lemonslice", "anam"):
            results[provider] = await measure(server, provider, runs, Path(tmp))
    baseline = statistics.median(results["local"])
    print(f"dispatch -> first avatar video frame, {runs} runs each (seconds)")
    print(f"{'provider':<11} {'median':>7} {'min':>7} {'max':>7}  ratio to local")
    for provider, timings in results.items():
        median = statistics.median(timings)
        print(
            f"{provider:<11} {median:7.2f} {min(timings):7.2f} {max(timings):7.2f}  "
            f"{median / baseline:.2f}x"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    asyncio.run(main(parser.parse_args().runs))
