"""The avatar supervisor under test in a real room: the settings it is given against an emulator,
the lifecycle events it reports, and every supervisor a test started closed at its end."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from livekit import api, rtc
from livekit.agents import AgentSession

from config import Settings, load_settings
from providers.lifecycle import AvatarLifecycleMetrics, JobTimeline
from providers.registry import avatar_for_job
from providers.session import ProviderAvatarSession
from providers.supervisor import AvatarSupervisor, JobRoom
from tests.support.emulators import AnamEmulator, EmulatorServer, LemonSliceEmulator
from tests.support.livekit_server import LiveKitServer, connect_participant

KEY = "supervisor-test-key-never-logged"
AGENT = "agent-under-test"


class EventLog:
    """The lifecycle events the supervisor reported, to wait on."""

    def __init__(self) -> None:
        self.events: list[AvatarLifecycleMetrics] = []
        self._changed = asyncio.Event()

    def __call__(self, metrics: AvatarLifecycleMetrics) -> None:
        self.events.append(metrics)
        self._changed.set()

    def named(self, name: str) -> list[AvatarLifecycleMetrics]:
        return [e for e in self.events if e.event == name]

    async def wait_for(self, name: str, *, count: int = 1, timeout: float = 20) -> None:
        async with asyncio.timeout(timeout):
            while len(self.named(name)) < count:
                self._changed.clear()
                await self._changed.wait()


async def until(check: Callable[[], bool], emulator: EmulatorServer, timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        await emulator.wait_until(check)


class Harness:
    def __init__(self, server: LiveKitServer, room: rtc.Room) -> None:
        self.server = server
        self.room = room
        self.log = EventLog()
        self.supervisors: list[AvatarSupervisor] = []

    def settings(self, provider: str, emulator: EmulatorServer | None, **extra: str) -> Settings:
        values: dict[str, Any] = {
            "livekit_url": self.server.ws_url,
            "livekit_api_key": self.server.api_key,
            "livekit_api_secret": self.server.api_secret,
            "avatar_provider": provider,
            "avatar_max_retries": "1",
            "avatar_request_timeout": "2",
            "avatar_join_timeout": "10",
            "avatar_start_timeout": "10",
        }
        if isinstance(emulator, LemonSliceEmulator):
            values |= {
                "lemonslice_api_key": KEY,
                "lemonslice_api_url": emulator.sessions_url,
                "lemonslice_agent_id": "agent-7",
            }
        elif isinstance(emulator, AnamEmulator):
            values |= {"anam_api_key": KEY, "anam_api_url": emulator.url, "anam_avatar_id": "av-1"}
        values |= {name.lower(): value for name, value in extra.items()}
        return load_settings(**values)

    def start(
        self,
        settings: Settings,
        session: AgentSession[Any] | None = None,
        *,
        job_id: str = "",
        on_new_avatar: Callable[[ProviderAvatarSession], None] | None = None,
    ) -> AvatarSupervisor:
        timeline = JobTimeline(room=self.room.name, provider=settings.provider)
        timeline.add_metrics_sink(self.log)
        supervisor = avatar_for_job(
            room=self.room,
            job=JobRoom(self.room.name, None, AGENT, job_id),
            settings=settings,
            timeline=timeline,
            connect=connected,
            on_new_avatar=on_new_avatar,
        )
        if session is not None:
            supervisor.attach(session)
        self.supervisors.append(supervisor)
        supervisor.start()
        return supervisor


def route(supervisor: AvatarSupervisor) -> str:
    return supervisor.router.route


async def gone(room: rtc.Room, identity: str, timeout: float = 10) -> None:
    left = asyncio.Event()

    def on_left(participant: rtc.RemoteParticipant) -> None:
        if participant.identity == identity:
            left.set()

    room.on("participant_disconnected", on_left)
    try:
        if identity in room.remote_participants:
            await asyncio.wait_for(left.wait(), timeout)
    finally:
        room.off("participant_disconnected", on_left)


async def connected() -> None:
    """The room is already connected: the harness joined it."""
    return None


@contextlib.asynccontextmanager
async def open_harness(
    server: LiveKitServer, room_prefix: str, *, grants: api.VideoGrants | None = None
) -> AsyncIterator[Harness]:
    """The agent in a new room; every supervisor started through the harness closed at the end.
    `grants`: the agent's (e.g. to update its own attributes, as a worker's token allows)."""
    room = await connect_participant(
        server, f"{room_prefix}-{uuid.uuid4().hex[:8]}", AGENT, kind="agent", grants=grants
    )
    harness = Harness(server, room)
    try:
        yield harness
    finally:
        for supervisor in harness.supervisors:
            await supervisor.aclose()
        await room.disconnect()
