"""The avatar supervisor in a real LiveKit room, against the provider emulators (whose avatars
really join): start or fall back, the watchdog and restarts, the late-join guard, and an end that
leaves no session running, whatever the fault."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from livekit import api, rtc
from livekit.agents import AgentSession, utils

from providers.lifecycle import AvatarLifecycleMetrics, JobTimeline
from providers.registry import livekit_credentials, provider_setup
from providers.status import REASON_ATTRIBUTE, STATUS_ATTRIBUTE
from providers.supervisor import AvatarSupervisor, JobRoom
from providers.warmup import provider_http_session
from tests.support.avatar_launcher import JoinLate, LocalAvatarLauncher
from tests.support.emulators import (
    AnamEmulator,
    EmulatorServer,
    Hang,
    LemonSliceEmulator,
    LoseReply,
    ProcessThenFail,
    StatusFault,
    SucceedSlow,
    SucceedWhenReleased,
)
from tests.support.livekit_server import LiveKitServer, connect_participant, server_api
from tests.support.supervisor_harness import (
    AGENT,
    KEY,
    Harness,
    connected,
    gone,
    open_harness,
    route,
    until,
)


@pytest.fixture
async def harness(
    livekit_server: LiveKitServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> AsyncIterator[Harness]:
    monkeypatch.chdir(tmp_path)  # no developer .env
    async with open_harness(livekit_server, "supervisor") as harness:
        yield harness


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
    await launcher.launched[0].participant.wait_for_closed(timeout=10)
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
    # how long it was in the room, from the moment the room told the agent it joined
    assert 0 <= harness.log.named("removed")[0].timings["in_room"] <= 10
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
    [ended] = harness.log.named("ended")
    assert ended.reason is None and "ended_in" in ended.timings  # no id came back: nothing to end
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


# The create's reply is held while the avatar joins (and leaves): the call's own timeouts must
# outlast that, the join timeout stays the harness's 10 s.
HELD_REPLY_TIMEOUTS = {"AVATAR_REQUEST_TIMEOUT": "20", "AVATAR_START_TIMEOUT": "25"}


class _SpeechWaits(logging.Handler):
    """The identities livekit-agents' data stream output began to wait for (its debug log): an
    avatar speech was routed to."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.identities: list[str] = []
        self._added = asyncio.Event()
        self._logger = logging.getLogger("livekit.agents")
        self._level = self._logger.level
        self._logger.setLevel(logging.DEBUG)
        self._logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "waiting for the remote participant":
            self.identities.append(str(getattr(record, "identity", "")))
            self._added.set()

    async def for_identity(self, identity: str) -> None:
        while identity not in self.identities:
            self._added.clear()
            await self._added.wait()

    def close(self) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._level)
        super().close()


@pytest.fixture
def speech_waits() -> Iterator[_SpeechWaits]:
    waits = _SpeechWaits()
    yield waits
    waits.close()


async def test_an_avatar_that_came_and_went_before_the_answer_is_replaced_not_waited_for(
    harness: Harness,
    lemonslice: tuple[LemonSliceEmulator, LocalAvatarLauncher],
    speech_waits: _SpeechWaits,
) -> None:
    """The provider answers only after its avatar joined, showed its video and was removed: a late
    answer, or a job loop busy while all that happened. The video came and went, so there is
    nothing to wait for: the avatar is lost and replaced, as one that drops out mid-call. No speech
    is routed to the one that went (its data stream would wait for it until the room closed)."""
    emulator, _ = lemonslice
    released = asyncio.Event()
    emulator.inject("create", SucceedWhenReleased(released))
    shown = asyncio.Event()

    def on_published(
        publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
    ) -> None:
        if (
            participant.identity == "lemonslice-avatar-agent"
            and publication.kind == rtc.TrackKind.KIND_VIDEO
        ):
            shown.set()

    harness.room.on("track_published", on_published)
    supervisor = harness.start(harness.settings("lemonslice", emulator, **HELD_REPLY_TIMEOUTS))
    await asyncio.wait_for(shown.wait(), 20)
    async with server_api(harness.server) as lk:
        await lk.room.remove_participant(
            api.RoomParticipantIdentity(room=harness.room.name, identity="lemonslice-avatar-agent")
        )
    await gone(harness.room, "lemonslice-avatar-agent")
    released.set()

    # well within the 10 s join timeout the old wait sat out before failing for good
    await harness.log.wait_for("recovered", timeout=8)
    assert harness.log.named("failed") == []
    [left] = harness.log.named("left")
    # the server unpublishes a removed participant's tracks, then removes it: either is its going
    assert left.reason in (
        "stopped its video, as it joined",
        "left the room (PARTICIPANT_REMOVED), as it joined",
    )
    assert route(supervisor) == "avatar"
    assert "lemonslice-avatar-agent-1" in harness.room.remote_participants
    assert [s.active for s in emulator.sessions] == [False, True]
    await asyncio.wait_for(speech_waits.for_identity("lemonslice-avatar-agent-1"), 10)
    assert "lemonslice-avatar-agent" not in speech_waits.identities


async def test_an_avatar_that_went_before_any_video_fails_its_start_at_once(
    harness: Harness,
) -> None:
    """The provider's avatar joins and leaves without publishing video (it crashed as it booted):
    the start fails then, and the agent speaks in its own voice, without waiting out the join
    timeout."""
    released = asyncio.Event()
    async with LemonSliceEmulator(api_key=KEY) as emulator:
        emulator.inject("create", SucceedWhenReleased(released))
        supervisor = harness.start(harness.settings("lemonslice", emulator, **HELD_REPLY_TIMEOUTS))
        await until(lambda: bool(emulator.sessions), emulator)
        # the avatar's participant, as the provider's booting avatar would join with its identity
        avatar = await connect_participant(
            harness.server, harness.room.name, "lemonslice-avatar-agent", kind="agent"
        )
        await asyncio.wait_for(
            utils.wait_for_participant(harness.room, identity="lemonslice-avatar-agent"), 10
        )
        await avatar.disconnect()
        await gone(harness.room, "lemonslice-avatar-agent")
        released.set()

        await harness.log.wait_for("failed", timeout=5)
        [failed] = harness.log.named("failed")
        assert failed.reason == (
            "AvatarLeftBeforeVideoError: lemonslice avatar 'lemonslice-avatar-agent' "
            "left the room (CLIENT_INITIATED) before publishing video"
        )
        assert route(supervisor) == "own_voice"
        await supervisor.aclose()
        assert emulator.active_sessions == ()


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
    # LemonSlice's session is terminated by the time aclose returns; Anam's ends when its avatar,
    # removed from the room by then, hears that it was (the emulator counts it gone as Anam does).
    await until(lambda: emulator.active_sessions == (), emulator, timeout=5)
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
        connect=connected,
    )
    harness.supervisors.append(supervisor)
    supervisor.start()
    await harness.log.wait_for("joined")
    emulator.inject("control", Hang(), Hang())  # the first attempt and its one retry
    await supervisor.aclose()
    ended = harness.log.named("ended")[0]
    assert ended.reason is not None and "ProviderTimeoutError" in ended.reason
    assert ended.model_dump().get("timings", {}).get("ended_in", 99) < 3


@pytest.mark.parametrize("provider", ["lemonslice", "anam"])
async def test_a_create_answered_502_after_it_made_a_session_is_not_repeated_and_its_avatar_removed(
    harness: Harness,
    lemonslice: tuple[LemonSliceEmulator, LocalAvatarLauncher],
    anam: tuple[AnamEmulator, LocalAvatarLauncher],
    provider: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A gateway's 502 after the provider made the session: the agent takes its own voice at once,
    the unknown session is counted, and its avatar is removed when it comes."""
    emulator: EmulatorServer = lemonslice[0] if provider == "lemonslice" else anam[0]
    create = "create" if provider == "lemonslice" else "engine_session"
    emulator.inject(create, ProcessThenFail(502))
    supervisor = harness.start(harness.settings(provider, emulator))
    await harness.log.wait_for("failed")
    assert route(supervisor) == "own_voice"
    assert len(emulator.requests_for(create)) == 1, "a second create is a second billed session"
    assert "possible orphan" in caplog.text
    await harness.log.wait_for("removed")  # the session it made sent its avatar anyway
    await until(lambda: emulator.active_sessions == (), emulator)
    await supervisor.aclose()
    assert len(emulator.sessions) == 1 and not harness.log.named("joined")


def _logged(caplog: pytest.LogCaptureFixture) -> str:
    """Every log line and every structured field the records carry."""
    return caplog.text + "".join(repr(vars(record)) for record in caplog.records)


@pytest.mark.parametrize(
    "fault",
    [
        StatusFault(400, echo_request="text"),
        StatusFault(400, echo_request="json"),
        ProcessThenFail(502, echo_request="text"),
    ],
    ids=["400-text", "400-json", "502-text"],
)
async def test_a_provider_error_echoing_the_request_publishes_and_logs_no_token(
    harness: Harness,
    lemonslice: tuple[LemonSliceEmulator, LocalAvatarLauncher],
    fault: StatusFault | ProcessThenFail,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`avatar.reason` is seen by everyone in the room: it says what failed in our words, never
    with the provider's text; the logs may say more, but never the avatar's join token."""
    emulator, _ = lemonslice
    emulator.inject("create", fault)
    supervisor = harness.start(harness.settings("lemonslice", emulator))
    await harness.log.wait_for("failed")
    token = emulator.requests_for("create")[0].json["properties"]["livekit_token"]
    claims, signature = token.split(".")[1:]
    status = supervisor.status.current
    assert status is not None and status[STATUS_ATTRIBUTE] == "unavailable"
    reason = status[REASON_ATTRIBUTE]
    assert str(fault.status) in reason, reason
    assert "livekit" not in reason and claims[:12] not in reason, reason
    logged = _logged(caplog)
    assert claims[:12] not in logged and signature not in logged


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_an_end_as_the_avatar_shows_its_video_never_routes_speech_again(
    harness: Harness, lemonslice: tuple[LemonSliceEmulator, LocalAvatarLauncher]
) -> None:
    """The job ends in the very loop turn the avatar's video arrives: nothing goes to that avatar,
    and its removal is no loss to recover from (no own track published after the end)."""
    emulator, _ = lemonslice
    supervisor = harness.start(harness.settings("lemonslice", emulator))
    ended: list[int] = []
    end_begun = asyncio.Event()

    def end_as_the_video_arrives(
        publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
    ) -> None:
        if (
            participant.identity == "lemonslice-avatar-agent"
            and publication.kind == rtc.TrackKind.KIND_VIDEO
            and not ended
        ):
            # Begun inside the event, not queued: the supervisor's wait may have resumed from the
            # avatar's join with this publication already in place, and would run before a queued end.
            ended.append(len(harness.log.events))
            supervisor.begin_end()
            end_begun.set()

    harness.room.on("track_published", end_as_the_video_arrives)
    try:
        await asyncio.wait_for(end_begun.wait(), 20)
        await asyncio.wait_for(supervisor.aclose(), 20)
    finally:
        harness.room.off("track_published", end_as_the_video_arrives)
    after_the_end = [e.event for e in harness.log.events[ended[0] :]]
    assert "joined" not in after_the_end and "left" not in after_the_end, after_the_end
    assert route(supervisor) == "held"
    assert not harness.room.local_participant.track_publications  # no own track left behind
    assert emulator.active_sessions == ()


@pytest.mark.parametrize("fault", ["hangs", "raises"])
async def test_an_end_whose_other_steps_fail_still_ends_every_session_and_returns(
    harness: Harness, lemonslice: tuple[LemonSliceEmulator, LocalAvatarLauncher], fault: str
) -> None:
    """Ending the provider's sessions comes first; a step of the end that hangs or raises (here
    closing the provider's HTTP pool) is cut off or reported, so the job's end returns."""
    emulator, _ = lemonslice
    settings = harness.settings("lemonslice", emulator)
    http_session = provider_http_session(None)
    reached = asyncio.Event()

    async def close_that_fails() -> None:
        reached.set()
        if fault == "raises":
            raise RuntimeError("the pool would not close")
        await asyncio.Event().wait()

    setup = dataclasses.replace(provider_setup(settings, http_session), aclose=close_that_fails)
    timeline = JobTimeline(room=harness.room.name, provider="lemonslice")
    timeline.add_metrics_sink(harness.log)
    supervisor = AvatarSupervisor(
        room=harness.room,
        job=JobRoom(harness.room.name, None, AGENT),
        provider=setup,
        livekit=livekit_credentials(settings),
        timeline=timeline,
        connect=connected,
    )
    supervisor.start()
    try:
        await harness.log.wait_for("joined")
        started = time.monotonic()
        await asyncio.wait_for(supervisor.aclose(), 15)
        assert time.monotonic() - started < 10
        assert reached.is_set()
        assert emulator.active_sessions == ()
        assert [e.event for e in harness.log.events][-1] == "ended"
    finally:
        await http_session.close()


async def test_an_avatar_we_minted_for_is_removed_when_it_comes_back_after_its_token_expired(
    harness: Harness, lemonslice: tuple[LemonSliceEmulator, LocalAvatarLauncher]
) -> None:
    """LiveKit checks a token's expiry at the first connect only: an avatar that was in the room
    can reconnect long after. The guard holds for the whole job, not the token's lifetime."""
    emulator, _ = lemonslice
    emulator.inject("create", StatusFault(402, "no active plan"))
    ttl = 2.0
    harness.start(
        harness.settings(
            "lemonslice",
            emulator,
            AVATAR_TOKEN_TTL=str(ttl),
            AVATAR_START_TIMEOUT="1",
            AVATAR_JOIN_TIMEOUT="1",
        )
    )
    await harness.log.wait_for("failed")
    await asyncio.sleep(ttl + 1.0)  # past the token's expiry: the clock, not an event
    back = await connect_participant(
        harness.server,
        harness.room.name,
        "lemonslice-avatar-agent",
        kind="agent",
        attributes={"lk.publish_on_behalf": AGENT},
    )
    try:
        await harness.log.wait_for("removed", timeout=10)
        await gone(harness.room, "lemonslice-avatar-agent")
    finally:
        await back.disconnect()


async def test_an_own_voice_that_cannot_be_published_is_reported_and_made_again(
    livekit_server: LiveKitServer,
    lemonslice: tuple[LemonSliceEmulator, LocalAvatarLauncher],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """No avatar, and the agent may not publish: each turn ends unheard (never hangs), the failure
    is a lifecycle event, and a new own voice is tried after a backoff."""
    monkeypatch.chdir(tmp_path)
    emulator, _ = lemonslice
    emulator.inject("create", StatusFault(402, "no active plan"))
    name = f"supervisor-{uuid.uuid4().hex[:8]}"
    room = await connect_participant(
        livekit_server,
        name,
        AGENT,
        kind="agent",
        grants=api.VideoGrants(room_join=True, room=name, can_publish=False),
    )
    harness = Harness(livekit_server, room)
    try:
        supervisor = harness.start(harness.settings("lemonslice", emulator))
        await harness.log.wait_for("failed")

        async def speak_until_reported(count: int) -> None:
            async with asyncio.timeout(60):
                while len(harness.log.named("voice_failed")) < count:
                    await _say(supervisor, 0.2)

        await speak_until_reported(2)  # the first own voice, then the one made again
        first, second = harness.log.named("voice_failed")[:2]
        assert (first.attempt, second.attempt) == (0, 1)
        assert first.reason is not None and "own voice" in first.reason
    finally:
        for supervisor in harness.supervisors:
            await supervisor.aclose()
        await room.disconnect()


async def _say(supervisor: AvatarSupervisor, seconds: float) -> None:
    rate = 16000
    samples = np.full(rate // 50, 3000, dtype=np.int16)
    for _ in range(round(seconds * 50)):
        await supervisor.router.capture_frame(
            rtc.AudioFrame(samples.tobytes(), rate, 1, samples.size)
        )
    supervisor.router.flush()
    await supervisor.router.wait_for_playout()  # as the session does: one utterance at a time
