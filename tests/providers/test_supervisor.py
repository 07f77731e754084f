"""The avatar supervisor in a real LiveKit room, against the provider emulators (whose avatars
really join): start or fall back, the watchdog and restarts, the late-join guard, and an end that
leaves no session running, whatever the fault."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from livekit import rtc
from livekit.agents import AgentSession

from config import Settings, load_settings
from providers.lifecycle import AvatarLifecycleMetrics, JobTimeline
from providers.registry import avatar_for_job, livekit_credentials, provider_setup
from providers.supervisor import AvatarSupervisor, JobRoom
from providers.warmup import provider_http_session
from tests.support.avatar_launcher import JoinLate, LocalAvatarLauncher
from tests.support.emulators import (
    AnamEmulator,
    EmulatorServer,
    Hang,
    LemonSliceEmulator,
    LoseReply,
    StatusFault,
    SucceedSlow,
)
from tests.support.livekit_server import LiveKitServer, connect_participant, server_api

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
        self, settings: Settings, session: AgentSession[Any] | None = None, *, job_id: str = ""
    ) -> AvatarSupervisor:
        timeline = JobTimeline(room=self.room.name, provider=settings.provider)
        timeline.add_metrics_sink(self.log)
        supervisor = avatar_for_job(
            room=self.room,
            job=JobRoom(self.room.name, None, AGENT, job_id),
            settings=settings,
            timeline=timeline,
            connect=_connected,
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


async def _connected() -> None:
    return None


@pytest.fixture
async def harness(
    livekit_server: LiveKitServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> AsyncIterator[Harness]:
    monkeypatch.chdir(tmp_path)  # no developer .env
    room = await connect_participant(
        livekit_server, f"supervisor-{uuid.uuid4().hex[:8]}", AGENT, kind="agent"
    )
    harness = Harness(livekit_server, room)
    try:
        yield harness
    finally:
        for supervisor in harness.supervisors:
            await supervisor.aclose()
        await room.disconnect()


@pytest.fixture
async def lemonslice() -> AsyncIterator[tuple[LemonSliceEmulator, LocalAvatarLauncher]]:
    launcher = LocalAvatarLauncher()
    async with LemonSliceEmulator(api_key=KEY, avatar_launcher=launcher) as emulator:
        yield emulator, launcher


@pytest.fixture
async def anam() -> AsyncIterator[tuple[AnamEmulator, LocalAvatarLauncher]]:
    launcher = LocalAvatarLauncher()
    async with AnamEmulator(api_key=KEY, avatar_launcher=launcher) as emulator:
        yield emulator, launcher


async def test_the_avatar_joins_speaks_for_the_agent_and_the_end_ends_it_once(
    harness: Harness, lemonslice: tuple[LemonSliceEmulator, LocalAvatarLauncher]
) -> None:
    emulator, launcher = lemonslice
    session: AgentSession[Any] = AgentSession()
    in_session: list[AvatarLifecycleMetrics] = []
    session.on(
        "metrics_collected",
        lambda event: (
            in_session.append(event.metrics)
            if isinstance(event.metrics, AvatarLifecycleMetrics)
            else None
        ),
    )
    supervisor = harness.start(harness.settings("lemonslice", emulator), session)
    assert session.output.audio is supervisor.router  # RoomIO will wrap it, not replace it
    await harness.log.wait_for("joined")
    assert route(supervisor) == "avatar"
    # the same events, as the session's metrics
    assert [m.event for m in in_session] == [m.event for m in harness.log.events]
    avatar = harness.room.remote_participants["lemonslice-avatar-agent"]
    assert avatar.attributes["lk.publish_on_behalf"] == AGENT
    joined = harness.log.named("joined")[0]
    assert joined.provider_session_id == emulator.sessions[0].session_id
    assert {"start_to_join", "provider_call", "since_job_received"} <= set(joined.timings)

    await supervisor.aclose()
    await supervisor.aclose()  # safe twice
    assert [r.json for r in emulator.requests_for("control")] == [{"event": "terminate"}]
    assert emulator.active_sessions == ()
    assert launcher.launched[0].participant is not None
    assert launcher.launched[0].participant.closed
    assert [e.event for e in harness.log.events][-1] == "ended"
    startup = harness.log.named("startup")[0].timings
    for phase in ("job_received", "token_minted", "provider_call_sent", "provider_answered"):
        assert phase in startup, phase


def test_an_avatar_identity_is_unique_to_its_job() -> None:
    job = JobRoom("room", None, "agent-AJ_abc123", "AJ_abc123")
    assert job.avatar_identity("lemonslice-avatar-agent") == "lemonslice-avatar-agent-abc123"
    assert JobRoom("room", None, AGENT).avatar_identity("x") == "x"  # no job: the base itself


async def test_two_jobs_in_one_room_have_their_own_avatars_and_leave_each_other_s_alone(
    harness: Harness, lemonslice: tuple[LemonSliceEmulator, LocalAvatarLauncher]
) -> None:
    """A second job in the room (a takeover, a duplicate dispatch): no identity collision, and
    neither late-join guard takes the other job's avatar, which speaks for the same agent here,
    for one of its own."""
    emulator, _ = lemonslice
    settings = harness.settings("lemonslice", emulator)
    first = harness.start(settings, job_id="AJ_first")
    await harness.log.wait_for("joined")
    second = harness.start(settings, job_id="AJ_second")
    await harness.log.wait_for("joined", count=2)
    identities = {"lemonslice-avatar-agent-first", "lemonslice-avatar-agent-second"}
    assert identities <= set(harness.room.remote_participants)
    assert route(first) == route(second) == "avatar"
    assert not harness.log.named("removed")
    assert len(emulator.active_sessions) == 2
    await second.aclose()
    await gone(harness.room, "lemonslice-avatar-agent-second")
    assert "lemonslice-avatar-agent-first" in harness.room.remote_participants
    assert len(emulator.active_sessions) == 1


async def test_a_refused_start_gives_the_agent_its_own_voice(
    harness: Harness, lemonslice: tuple[LemonSliceEmulator, LocalAvatarLauncher]
) -> None:
    emulator, _ = lemonslice
    emulator.inject("create", StatusFault(402, "no active plan"))
    supervisor = harness.start(harness.settings("lemonslice", emulator))
    await harness.log.wait_for("failed")
    assert route(supervisor) == "own_voice"
    failed = harness.log.named("failed")[0]
    assert failed.reason is not None and "402" in failed.reason
    assert emulator.sessions == ()


async def test_any_error_from_a_provider_start_falls_back_instead_of_crashing_the_job(
    harness: Harness, tmp_path: Path
) -> None:
    """The local avatar cannot reach LiveKit: rtc.ConnectError, not a provider error."""
    settings = harness.settings("local", None)
    closed_port = f"ws://127.0.0.1:{_closed_port()}"
    supervisor = harness.start(settings.model_copy(update={"livekit_url": closed_port}))
    await harness.log.wait_for("failed")
    assert route(supervisor) == "own_voice"
    assert "ConnectError" in (harness.log.named("failed")[0].reason or "")


async def test_an_avatar_that_joins_after_the_join_timeout_is_removed(
    harness: Harness, anam: tuple[AnamEmulator, LocalAvatarLauncher]
) -> None:
    emulator, launcher = anam
    launcher.script(JoinLate(3.0))
    supervisor = harness.start(harness.settings("anam", emulator, AVATAR_JOIN_TIMEOUT="1"))
    await harness.log.wait_for("failed")
    assert "did not join" in (harness.log.named("failed")[0].reason or "")
    assert route(supervisor) == "own_voice"
    await harness.log.wait_for("removed")
    await until(lambda: emulator.active_sessions == (), emulator)
    await gone(harness.room, "anam-avatar-agent")


async def test_a_create_whose_reply_was_lost_is_not_retried_and_its_avatar_is_removed(
    harness: Harness, lemonslice: tuple[LemonSliceEmulator, LocalAvatarLauncher]
) -> None:
    emulator, _ = lemonslice
    emulator.inject("create", LoseReply())
    supervisor = harness.start(harness.settings("lemonslice", emulator))
    await harness.log.wait_for("failed")
    assert len(emulator.requests_for("create")) == 1  # a retry would have been a second session
    assert harness.log.named("failed")[0].model_dump().get("reason")
    assert route(supervisor) == "own_voice"
    await harness.log.wait_for("removed")  # the session it made sent its avatar anyway
    await until(lambda: emulator.active_sessions == (), emulator)


async def test_the_start_deadline_cuts_a_create_and_counts_it_as_a_possible_orphan(
    harness: Harness,
    lemonslice: tuple[LemonSliceEmulator, LocalAvatarLauncher],
    caplog: pytest.LogCaptureFixture,
) -> None:
    emulator, _ = lemonslice
    emulator.inject("create", Hang())
    started = time.monotonic()
    harness.start(
        harness.settings(
            "lemonslice", emulator, AVATAR_START_TIMEOUT="1.5", AVATAR_REQUEST_TIMEOUT="10"
        )
    )
    await harness.log.wait_for("failed")
    assert 1.4 <= time.monotonic() - started < 3
    assert "possible orphan" in caplog.text
    await harness.supervisors[0].aclose()
    assert (harness.log.named("ended")[0].model_dump()["timings"]) is not None
    assert len(emulator.requests_for("create")) == 1


async def test_an_avatar_that_leaves_mid_call_is_replaced(
    harness: Harness, lemonslice: tuple[LemonSliceEmulator, LocalAvatarLauncher]
) -> None:
    emulator, launcher = lemonslice
    supervisor = harness.start(harness.settings("lemonslice", emulator))
    await harness.log.wait_for("joined")

    await launcher.launched[0].crash()
    await harness.log.wait_for("left")
    assert route(supervisor) == "own_voice"
    await harness.log.wait_for("recovered")
    assert route(supervisor) == "avatar"
    assert "lemonslice-avatar-agent-1" in harness.room.remote_participants
    assert harness.log.named("recovered")[0].timings["outage"] > 0
    first, second = emulator.sessions
    assert not first.active and second.active

    await supervisor.aclose()
    assert emulator.active_sessions == ()


async def test_an_avatar_that_stops_its_video_is_removed_and_replaced(
    harness: Harness, anam: tuple[AnamEmulator, LocalAvatarLauncher]
) -> None:
    emulator, launcher = anam
    supervisor = harness.start(harness.settings("anam", emulator))
    await harness.log.wait_for("joined")
    async with server_api(harness.server) as lk:
        await launcher.launched[0].stop_video(lk)
    await harness.log.wait_for("left")
    assert harness.log.named("left")[0].reason == "stopped its video"
    await harness.log.wait_for("recovered")
    # Anam has no stop: removing the old avatar is what ended its session
    await until(lambda: not emulator.sessions[0].active, emulator)
    assert route(supervisor) == "avatar"


async def test_restarts_stop_at_the_configured_number(
    harness: Harness, lemonslice: tuple[LemonSliceEmulator, LocalAvatarLauncher]
) -> None:
    emulator, launcher = lemonslice
    supervisor = harness.start(harness.settings("lemonslice", emulator, AVATAR_MAX_RESTARTS="1"))
    await harness.log.wait_for("joined")
    emulator.inject("create", StatusFault(402, "no credit left"))
    await launcher.launched[0].crash()
    await harness.log.wait_for("failed", count=2)
    assert "no restart left" in (harness.log.named("failed")[-1].reason or "")
    assert route(supervisor) == "own_voice"
    assert len(emulator.requests_for("create")) == 2


@pytest.mark.parametrize("provider", ["lemonslice", "anam"])
async def test_an_end_during_a_create_ends_the_session_that_create_made(
    harness: Harness,
    lemonslice: tuple[LemonSliceEmulator, LocalAvatarLauncher],
    anam: tuple[AnamEmulator, LocalAvatarLauncher],
    provider: str,
) -> None:
    emulator: EmulatorServer = lemonslice[0] if provider == "lemonslice" else anam[0]
    route = "create" if provider == "lemonslice" else "engine_session"
    emulator.inject(route, SucceedSlow(1.0))
    supervisor = harness.start(harness.settings(provider, emulator))
    await until(lambda: len(emulator.sessions) == 1, emulator)  # made; its reply is on its way

    ended_at = time.monotonic()
    await supervisor.aclose()
    assert emulator.active_sessions == ()
    assert time.monotonic() - ended_at < 5
    assert not harness.log.named("joined")


async def test_a_slow_terminate_is_reported_with_its_reason(
    harness: Harness, lemonslice: tuple[LemonSliceEmulator, LocalAvatarLauncher]
) -> None:
    emulator, _ = lemonslice
    settings = harness.settings("lemonslice", emulator)
    http_session = provider_http_session(None)
    setup = provider_setup(settings, http_session)
    setup = dataclasses.replace(
        setup,
        options=dataclasses.replace(setup.options, stop_timeout=0.5),
        aclose=http_session.close,
    )
    timeline = JobTimeline(room=harness.room.name, provider="lemonslice")
    timeline.add_metrics_sink(harness.log)
    supervisor = AvatarSupervisor(
        room=harness.room,
        job=JobRoom(harness.room.name, None, AGENT),
        provider=setup,
        livekit=livekit_credentials(settings),
        timeline=timeline,
        connect=_connected,
    )
    harness.supervisors.append(supervisor)
    supervisor.start()
    await harness.log.wait_for("joined")
    emulator.inject("control", Hang(), Hang())  # the first attempt and its one retry
    await supervisor.aclose()
    ended = harness.log.named("ended")[0]
    assert ended.reason is not None and "ProviderTimeoutError" in ended.reason
    assert ended.model_dump().get("timings", {}).get("ended_in", 99) < 3


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
