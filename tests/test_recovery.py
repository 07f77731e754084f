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

import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from livekit import api, rtc
from livekit.agents.voice.room_io import ATTRIBUTE_PUBLISH_ON_BEHALF

from recovery.memory import read_memory
from recovery.service import WatcherService
from recovery.watcher import WatcherOptions
from tests.support.avatar_launcher import LocalAvatarLauncher
from tests.support.dispatch import dispatch_to_workers
from tests.support.emulators import (
    AnamEmulator,
    EmulatedSession,
    EmulatorServer,
    LemonSliceEmulator,
)
from tests.support.livekit_cluster import LiveKitCluster
from tests.support.livekit_server import LiveKitServer, server_api
from tests.support.room_user import Ears, RoomUser
from tests.support.worker import WorkerProcess, worker_environment

pytestmark = pytest.mark.e2e

AUDIBLE_RMS = 300.0
AGENT = rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
# livekit-server drops a participant whose process died only when its ICE times out: 10 s to
# "disconnected" and 5 s more to "failed", constants of the server (pkg/rtc/transport.go), not
# settings. The agent cannot be back sooner than that plus a job's start.
AGENT_BACK_WITHIN = 45.0
SWEEP_INTERVAL = 2.0

MEASURED: list[dict[str, str]] = []


@dataclass
class World:
    cluster: LiveKitCluster
    provider: str
    agent_name: str
    emulator: EmulatorServer
    launcher: LocalAvatarLauncher
    env: dict[str, str]
    workdir: Path
    workers: list[WorkerProcess | None] = field(default_factory=list)
    watchers: list[WatcherService | None] = field(default_factory=list)

    def node(self, index: int) -> LiveKitServer:
        return self.cluster.nodes[index]

    async def start_worker(self, index: int) -> WorkerProcess:
        worker = WorkerProcess(
            worker_environment(self.node(index), self.agent_name, self.env),
            cwd=self.workdir,
        )
        await worker.start()
        self.workers[index] = worker
        return worker

    async def start_watcher(self, index: int) -> WatcherService:
        node = self.node(index)
        service = WatcherService(
            livekit_url=node.http_url,
            api_key=node.api_key,
            api_secret=node.api_secret,
            options=WatcherOptions(
                agent_name=self.agent_name,
                index=index,
                watchers=len(self.cluster.webhook_ports),
                sweep_interval=SWEEP_INTERVAL,
                failover_delay=2.0,
                dispatch_grace=8.0,
            ),
            port=self.cluster.webhook_ports[index],
        )
        await service.start()
        self.watchers[index] = service
        return service

    async def stop_watcher(self, index: int) -> None:
        service, self.watchers[index] = self.watchers[index], None
        if service is not None:
            await service.stop()

    def live_workers(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w is not None]

    def dispatches(self) -> list[tuple[str, str]]:
        return [d for s in self.watchers if s and s.watcher for d in s.watcher.dispatched]


@pytest.fixture(scope="module", params=["lemonslice", "anam"])
async def world(
    request: pytest.FixtureRequest,
    livekit_cluster: LiveKitCluster,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[World]:
    provider: str = request.param
    launcher = LocalAvatarLauncher()
    emulator: EmulatorServer
    env = {
        "AVATAR_JOIN_TIMEOUT": "10",
        "AVATAR_START_TIMEOUT": "10",
        "AVATAR_MAX_RESTARTS": "2",
        "VOICE_MODE": "offline",
    }
    if provider == "lemonslice":
        emulator = LemonSliceEmulator(api_key="ls-recovery-key", avatar_launcher=launcher)
        await emulator.start()
        env |= emulator.worker_settings("agent-recovery")
    else:
        emulator = AnamEmulator(api_key="anam-recovery-key", avatar_launcher=launcher)
        await emulator.start()
        env |= emulator.worker_settings()
    this = World(
        livekit_cluster,
        provider,
        f"recover-{provider}-{uuid.uuid4().hex[:6]}",
        emulator,
        launcher,
        env,
        tmp_path_factory.mktemp(f"recovery-{provider}"),
        workers=[None, None],
        watchers=[None, None],
    )
    try:
        for index in (0, 1):
            await this.start_worker(index)
            await this.start_watcher(index)
        yield this
    finally:
        for index in (0, 1):
            await this.stop_watcher(index)
        for worker in this.live_workers():
            await worker.stop()
        await emulator.aclose()


@dataclass
class Call:
    world: World
    room: str
    user: RoomUser
    ears: Ears
    first_session: int
    worker_index: int = -1

    @property
    def worker(self) -> WorkerProcess:
        worker = self.world.workers[self.worker_index]
        assert worker is not None
        return worker

    async def dispatch(self) -> None:
        async with server_api(self.world.node(0)) as lk:
            self.worker_index = await dispatch_to_workers(
                lk, self.world.agent_name, self.room, self.world.live_workers()
            )

    async def agent(self, *, not_identity: str | None = None, timeout: float = 30) -> str:
        def find() -> str | None:
            for p in self.user.room.remote_participants.values():
                if _is_agent(p) and p.identity != not_identity:
                    return p.identity
            return None

        found = await self.user._until(find, timeout)
        assert isinstance(found, str)
        return found

    async def avatar_of(self, agent: str, *, timeout: float = 30) -> str:
        """The avatar that speaks for `agent`, once its video is up."""

        def find() -> str | None:
            for p in self.user.room.remote_participants.values():
                if p.attributes.get(ATTRIBUTE_PUBLISH_ON_BEHALF) == agent:
                    return p.identity if p.identity in self.user.video_at else None
            return None

        found = await self.user._until(find, timeout)
        assert isinstance(found, str)
        return found

    def sessions(self) -> list[EmulatedSession]:
        """The provider sessions of this call (one call at a time runs in a world)."""
        return list(self.world.emulator.sessions[self.first_session :])

    async def greeted(self) -> tuple[str, str]:
        """The agent and its avatar, once the user heard the greeting from the avatar."""
        agent = await self.agent()
        avatar = await self.avatar_of(agent)
        await self.ears.heard(avatar, after=0)
        return agent, avatar

    async def memory_job(self) -> str | None:
        async with server_api(self.world.node(1)) as lk:
            rooms = await lk.room.list_rooms(api.ListRoomsRequest(names=[self.room]))
        memory = read_memory(rooms.rooms[0].metadata) if rooms.rooms else None
        return memory.job_id if memory else None


@pytest.fixture
async def call(world: World) -> AsyncIterator[Call]:
    room = f"rec-{world.provider}-{uuid.uuid4().hex[:8]}"
    # The user joins through node 1; the first worker is registered on node 0.
    user = await RoomUser.join(world.node(1), room)
    this = Call(world, room, user, user.hear_everyone(AUDIBLE_RMS), len(world.emulator.sessions))
    try:
        yield this
    finally:
        await this.ears.aclose()
        if user.room.isconnected():
            await user.leave()


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


def _is_agent(participant: rtc.RemoteParticipant) -> bool:
    return participant.kind == AGENT and ATTRIBUTE_PUBLISH_ON_BEHALF not in participant.attributes


async def _assert_recovered(
    call: Call, killed_at: float, old_agent: str, old_avatar: str, killed: str
) -> None:
    old_sessions = call.sessions()
    assert old_sessions
    agent = await call.agent(not_identity=old_agent, timeout=AGENT_BACK_WITHIN)
    agent_back = time.monotonic() - killed_at
    await call.user.wait_until_gone(old_avatar, timeout=15)
    gone = call.user.left_at[old_avatar] - killed_at
    await call.world.emulator.wait_until(lambda: all(not s.active for s in old_sessions))
    ended = max(s.ended_at or 0.0 for s in old_sessions) - killed_at
    avatar = await call.avatar_of(agent, timeout=30)
    avatar_up = call.user.video_at[avatar] - killed_at
    greeted = await call.ears.heard(avatar, after=killed_at + agent_back, timeout=30) - killed_at
    assert old_agent not in call.user.room.remote_participants
    assert [
        p
        for p in call.user.room.remote_participants.values()
        if p.kind == AGENT and ATTRIBUTE_PUBLISH_ON_BEHALF not in p.attributes
    ] != []
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
    victim = call.worker_index
    dispatched_before = len(world.dispatches())

    killed_at = time.monotonic()
    await call.worker.kill()
    world.workers[victim] = None
    try:
        await _assert_recovered(call, killed_at, old_agent, old_avatar, "worker")
        assert len(world.dispatches()) == dispatched_before + 1  # one dispatch, two watchers
    finally:
        await world.start_worker(victim)


async def test_a_single_killed_job_process_is_recovered_like_a_dead_worker(
    world: World, call: Call
) -> None:
    await call.dispatch()
    old_agent, old_avatar = await call.greeted()
    job_pid = _job_process(call.worker, old_agent)
    dispatched_before = len(world.dispatches())

    killed_at = time.monotonic()
    os.kill(job_pid, signal.SIGKILL)
    await _assert_recovered(call, killed_at, old_agent, old_avatar, "one job process")
    assert len(world.dispatches()) == dispatched_before + 1


def _job_process(worker: WorkerProcess, agent_identity: str) -> int:
    """The pid of the job process that runs `agent_identity`'s job (from the worker's log)."""
    job_id = "AJ_" + agent_identity.removeprefix("agent-AJ_")
    for record in worker.records:
        if record.get("job_id") == job_id and isinstance(record.get("pid"), int):
            pid = int(record["pid"])
            if pid != worker.pid and psutil.pid_exists(pid):
                return pid
    raise AssertionError(f"no job process found for {job_id}: {worker.output_tail()}")
