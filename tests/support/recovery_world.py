"""A LiveKit cluster with our workers, recovery watchers and a provider's emulator, and calls in it.

Two livekit-server nodes (tests/support/livekit_cluster.py); worker `i` registers on node `i` and
watcher `i` is given node `i`'s API (both receive every webhook of both nodes). Users join through
node 1, so a call on worker 0 spans both nodes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from google.protobuf.json_format import MessageToJson
from livekit import api, rtc
from livekit.agents.voice.room_io import ATTRIBUTE_PUBLISH_ON_BEHALF

from recovery.claim import RedisAddress
from recovery.memory import read_memory
from recovery.service import WatcherService
from recovery.watcher import WatcherOptions, recovered_job
from tests.support.avatar_launcher import LocalAvatarLauncher
from tests.support.dispatch import dispatch_to_workers
from tests.support.emulators import (
    AnamEmulator,
    EmulatedSession,
    EmulatorServer,
    LemonSliceEmulator,
)
from tests.support.livekit_cluster import LiveKitCluster
from tests.support.livekit_server import LiveKitServer, free_port, server_api
from tests.support.room_user import AUDIBLE_RMS, Ears, RoomUser
from tests.support.worker import WorkerProcess, worker_environment

AGENT = rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
SWEEP_INTERVAL = 2.0
# A recovery dispatch no worker took (none registered) is made again after this.
DISPATCH_GRACE = 6.0
# With no webhook seen, a job whose agent is absent this long after its claim is taken for dead.
JOIN_GRACE = 10.0


def is_agent(participant: rtc.RemoteParticipant) -> bool:
    """An agent that is not an avatar."""
    return participant.kind == AGENT and ATTRIBUTE_PUBLISH_ON_BEHALF not in participant.attributes


def signed_webhook(node: LiveKitServer, event: api.WebhookEvent) -> tuple[str, str]:
    """`event` as livekit-server sends it: the JSON body, and its Authorization token."""
    body = MessageToJson(event)
    digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
    return body, api.AccessToken(node.api_key, node.api_secret).with_sha256(digest).to_jwt()


async def until_watchers_checked(
    services: Sequence[WatcherService | None], check: Callable[[], bool], *, timeout: float
) -> None:
    """Until `check()` holds, looked at again after each check of any watcher."""
    async with asyncio.timeout(timeout):
        while True:
            events = [s.watcher.checked for s in services if s and s.watcher]
            for event in events:
                event.clear()
            if check():
                return
            waits = [asyncio.create_task(event.wait()) for event in events]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in waits:
                    task.cancel()


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
    failover_delay: float = 2.0
    # The watchers' claim store (the cluster's Redis), when the world uses one.
    claim_store: RedisAddress | None = None

    def node(self, index: int) -> LiveKitServer:
        return self.cluster.nodes[index]

    async def start_worker(self, index: int) -> WorkerProcess:
        # A fixed health port, so the job can tell the watchers where its worker is.
        port = free_port(socket.SOCK_STREAM, set())
        health = {"AGENT_HTTP_PORT": str(port), "AGENT_HEALTH_URL": f"http://127.0.0.1:{port}/"}
        worker = WorkerProcess(
            worker_environment(self.node(index), self.agent_name, self.env | health),
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
                failover_delay=self.failover_delay,
                dispatch_grace=DISPATCH_GRACE,
                join_grace=JOIN_GRACE,
            ),
            port=self.cluster.webhook_ports[index],
            claim_store=self.claim_store,
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
        """Every recovery dispatch of the watchers running now (a stopped one forgets its own)."""
        return [d for s in self.watchers if s and s.watcher for d in s.watcher.dispatched]

    async def until(self, check: Callable[[], bool], *, timeout: float) -> None:
        """Until `check()` holds, looked at again after each check of any watcher."""
        await until_watchers_checked(self.watchers, check, timeout=timeout)

    def job_process(self, agent_identity: str) -> int:
        """The pid of the job process that runs `agent_identity`'s job, on whichever worker."""
        job_id = "AJ_" + agent_identity.removeprefix("agent-AJ_")
        for worker in self.live_workers():
            for record in worker.records:
                if record.get("job_id") == job_id and isinstance(record.get("pid"), int):
                    pid = int(record["pid"])
                    if pid != worker.pid and psutil.pid_exists(pid):
                        return pid
        raise AssertionError(f"no job process found for {job_id}")

    def outcomes(self, room: str) -> list[str]:
        return [
            outcome
            for s in self.watchers
            if s and s.watcher
            for checked, outcome in s.watcher.outcomes
            if checked == room
        ]


@contextlib.asynccontextmanager
async def open_world(
    cluster: LiveKitCluster,
    provider: str,
    workdir: Path,
    *,
    failover_delay: float = 2.0,
    claims: bool = False,
) -> AsyncIterator[World]:
    """Two workers and two watchers for `provider` (lemonslice or anam), stopped on exit; with
    `claims`, the watchers claim each death in the cluster's Redis."""
    launcher = LocalAvatarLauncher()
    emulator: EmulatorServer
    env = {
        "AVATAR_JOIN_TIMEOUT": "30",  # the app's default: emulated avatars join slowly under load
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
        cluster,
        provider,
        f"recover-{provider}-{uuid.uuid4().hex[:6]}",
        emulator,
        launcher,
        env,
        workdir,
        workers=[None, None],
        watchers=[None, None],
        failover_delay=failover_delay,
        claim_store=RedisAddress("127.0.0.1", cluster.redis.port) if claims else None,
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
                if is_agent(p) and p.identity != not_identity:
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

    async def greeted(self, *, timeout: float = 30) -> tuple[str, str]:
        """The agent and its avatar, once the user heard the greeting from the avatar."""
        agent = await self.agent(timeout=timeout)
        avatar = await self.avatar_of(agent, timeout=timeout)
        await self.ears.heard(avatar, after=0, timeout=timeout)
        return agent, avatar

    async def recovery_dispatches(self) -> list[api.AgentDispatch]:
        """The recovery dispatches the room has, as the server lists them (any watcher's)."""
        async with server_api(self.world.node(0)) as lk:
            dispatches = await lk.agent_dispatch.list_dispatch(room_name=self.room)
        return [d for d in dispatches if recovered_job(d) is not None]

    async def memory_job(self) -> str | None:
        async with server_api(self.world.node(1)) as lk:
            rooms = await lk.room.list_rooms(api.ListRoomsRequest(names=[self.room]))
        memory = read_memory(rooms.rooms[0].metadata) if rooms.rooms else None
        return memory.job_id if memory else None


@contextlib.asynccontextmanager
async def open_call(world: World) -> AsyncIterator[Call]:
    """A user in a new room (through node 1), who hears everyone; leaves on exit."""
    room = f"rec-{world.provider}-{uuid.uuid4().hex[:8]}"
    user = await RoomUser.join(world.node(1), room)
    this = Call(world, room, user, user.hear_everyone(AUDIBLE_RMS), len(world.emulator.sessions))
    try:
        yield this
    finally:
        await this.ears.aclose()
        if user.room.isconnected():
            await user.leave()
