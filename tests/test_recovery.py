"""A worker's death is not the call's death, end to end on a LiveKit cluster.

Two livekit-server nodes share a Redis; one worker is registered on each node, a recovery watcher
receives each node's webhooks (two watchers, as in production: the loss of one stops nothing), and
the user joins through the other node than the one their worker uses. LemonSlice and Anam run
through their emulators, whose avatars really join the room.

Each kill row measures, from the SIGKILL: the agent back in the room, the dead job's avatar gone,
its provider session ended, the new avatar up and the user greeted again. The figures are written
to `recovery-times.md` in pytest's base temp directory.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support.emulators import EmulatedSession
from tests.support.livekit_cluster import LiveKitCluster
from tests.support.recovery_world import Call, World, is_agent, open_call, open_world

pytestmark = pytest.mark.e2e

# livekit-server drops a participant whose process died only when its ICE times out: 10 s to
# "disconnected" and 5 s more to "failed", constants of the server (pkg/rtc/transport.go), not
# settings. Recovery does not wait for it (the worker removes a dead job process's agent, the
# watchers a dead worker's); these bounds leave room for a loaded machine.
AGENT_BACK_WITHIN = 45.0
SERVER_ICE_TIMEOUT = 15.0

MEASURED: list[dict[str, str]] = []


@pytest.fixture(scope="module", params=["lemonslice", "anam"])
async def world(
    request: pytest.FixtureRequest,
    livekit_cluster: LiveKitCluster,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[World]:
    provider: str = request.param
    async with open_world(
        livekit_cluster, provider, tmp_path_factory.mktemp(f"recovery-{provider}")
    ) as world:
        yield world


@pytest.fixture
async def call(world: World) -> AsyncIterator[Call]:
    async with open_call(world) as this:
        yield this


@pytest.fixture(scope="module", autouse=True)
def times_report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield
    if not MEASURED:
        return
    columns = [
        "provider",
        "killed",
        "agent back",
        "stale avatar gone",
        "provider session ended",
        "new avatar up",
        "greeted again",
    ]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in MEASURED:
        lines.append("| " + " | ".join(row.get(c, "") for c in columns) + " |")
    report = Path(tmp_path_factory.getbasetemp()) / "recovery-times.md"
    report.write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))


async def _assert_recovered(
    call: Call,
    killed_at: float,
    old_agent: str,
    old_avatar: str,
    killed: str,
    old_sessions: list[EmulatedSession],
) -> None:
    assert old_sessions
    agent = await call.agent(not_identity=old_agent, timeout=AGENT_BACK_WITHIN)
    agent_back = time.monotonic() - killed_at
    await call.user.wait_until_gone(old_avatar, timeout=15)
    gone = call.user.left_at[old_avatar] - killed_at
    async with asyncio.timeout(30):
        await call.world.emulator.wait_until(lambda: all(not s.active for s in old_sessions))
    ended = max(s.ended_at or 0.0 for s in old_sessions) - killed_at
    avatar = await call.avatar_of(agent, timeout=30)
    avatar_up = call.user.video_at[avatar] - killed_at
    greeted = await call.ears.heard(avatar, after=killed_at + agent_back, timeout=30) - killed_at
    assert old_agent not in call.user.room.remote_participants
    agents = [p.identity for p in call.user.room.remote_participants.values() if is_agent(p)]
    assert agents == [agent], agents  # one agent answers: the new one
    assert avatar != old_avatar  # its own identity: no collision with the stale one
    MEASURED.append(
        {
            "provider": call.world.provider,
            "killed": killed,
            "agent back": f"{agent_back:.1f} s",
            "stale avatar gone": f"{gone:.1f} s",
            "provider session ended": f"{ended:.1f} s",
            "new avatar up": f"{avatar_up:.1f} s",
            "greeted again": f"{greeted:.1f} s",
        }
    )


async def test_a_sigkilled_worker_s_call_gets_its_agent_and_a_new_avatar_back(
    world: World, call: Call
) -> None:
    await call.dispatch()
    old_agent, old_avatar = await call.greeted()
    old_sessions = call.sessions()  # the dead job's, before any new job starts one
    victim = call.worker_index

    killed_at = time.monotonic()
    await call.worker.kill()
    world.workers[victim] = None
    try:
        # The watchers found the worker unreachable and took its agent out: the server's own
        # detection (its ICE timeout, 15 s at the least) is not waited for.
        await call.user.wait_until_gone(old_agent, timeout=AGENT_BACK_WITHIN)
        assert call.user.left_at[old_agent] - killed_at < SERVER_ICE_TIMEOUT
        await _assert_recovered(call, killed_at, old_agent, old_avatar, "worker", old_sessions)
        assert len(await call.recovery_dispatches()) == 1  # one dispatch, two watchers
    finally:
        await world.start_worker(victim)


async def test_a_single_killed_job_process_is_recovered_like_a_dead_worker(
    world: World, call: Call
) -> None:
    await call.dispatch()
    old_agent, old_avatar = await call.greeted()
    old_sessions = call.sessions()  # the dead job's, before any new job starts one
    job_pid = world.job_process(old_agent)

    killed_at = time.monotonic()
    os.kill(job_pid, signal.SIGKILL)
    # The worker saw its job process die and took the agent out of the room: the server's own
    # detection (its ICE timeout, 15 s at the least) is not waited for.
    await call.worker.wait_for_log(
        lambda r: r.get("recovery") == "dead_job_agent_removed" and r.get("room") == call.room,
        timeout=15,
    )
    await call.user.wait_until_gone(old_agent, timeout=15)
    assert call.user.left_at[old_agent] - killed_at < SERVER_ICE_TIMEOUT
    await _assert_recovered(call, killed_at, old_agent, old_avatar, "one job process", old_sessions)
    assert len(await call.recovery_dispatches()) == 1
