"""A provider session with a known length cap is renewed before it, in a real LiveKit room against
the provider emulators (whose avatars really join and speak): the successor starts beside the live
avatar, speech moves to it at a pause, the old session is ended, and nobody in the room hears or
sees a fault. The job's end during a renewal ends both sessions; a renewal that fails keeps the
old avatar speaking until its cap, where the usual recovery takes over."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from livekit import api, rtc

from config import Settings
from observability.avatar_metrics import RENEWALS, AvatarMetricsRecorder
from providers.status import STATUS_ATTRIBUTE
from providers.supervisor import AvatarState, AvatarSupervisor
from tests.support.avatar_launcher import LocalAvatarLauncher
from tests.support.emulators import (
    AnamEmulator,
    EmulatorServer,
    LemonSliceEmulator,
    StatusFault,
    SucceedSlow,
)
from tests.support.livekit_server import LiveKitServer
from tests.support.room_user import AUDIBLE_RMS, RoomUser
from tests.support.supervisor_harness import AGENT, Harness, gone, open_harness, until

# Renewal is due at cap - (start + join + 10 s) = 6 s after a session's start began.
START_TIMEOUT, JOIN_TIMEOUT, CAP = 5, 15, 36
# ... and 20 s after, where a test looks at one renewal whole: the successor's own is not due before
# the test is done with it, however slow a loaded machine makes the steps in between.
LONGER_CAP = 50
RATE = 16000


@pytest.fixture
async def harness(
    livekit_server: LiveKitServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> AsyncIterator[Harness]:
    monkeypatch.chdir(tmp_path)  # no developer .env
    # the agent may set its own attributes, as a worker's token allows: the page's status
    grants = api.VideoGrants(room_join=True, can_update_own_metadata=True)
    async with open_harness(livekit_server, "renewal", grants=grants) as harness:
        yield harness


@pytest.fixture
async def user(harness: Harness) -> AsyncIterator[RoomUser]:
    user = await RoomUser.join(harness.server, harness.room.name)
    yield user
    await user.leave()


def capped(harness: Harness, provider: str, emulator: EmulatorServer, cap: int = CAP) -> Settings:
    cap_variable = (
        "ANAM_MAX_SESSION_LENGTH_SECONDS"
        if provider == "anam"
        else "LEMONSLICE_MAX_SESSION_LENGTH_SECONDS"
    )
    return harness.settings(
        provider,
        emulator,
        AVATAR_START_TIMEOUT=str(START_TIMEOUT),
        AVATAR_JOIN_TIMEOUT=str(JOIN_TIMEOUT),
        **{cap_variable: str(cap)},
    )


class StatusSeen:
    """Every `avatar.status` of the agent a room participant sees, in order."""

    def __init__(self, room: rtc.Room) -> None:
        self.values: list[str] = []
        agent = room.remote_participants.get(AGENT)
        if agent is not None:
            self._see(agent)
        room.on("participant_attributes_changed", self._on_changed)

    def _on_changed(self, changed: object, participant: rtc.Participant) -> None:
        if participant.identity == AGENT:
            self._see(participant)

    def _see(self, agent: rtc.Participant) -> None:
        status = agent.attributes.get(STATUS_ATTRIBUTE)
        if status is not None and (not self.values or self.values[-1] != status):
            self.values.append(status)

    def since_first_joined(self) -> list[str]:
        return self.values[self.values.index("joined") :]


class TracksPublished:
    """Who published a track, as a room participant sees it, from now on."""

    def __init__(self, room: rtc.Room) -> None:
        self.identities: list[str] = []
        room.on("track_published", self._on_published)

    def _on_published(
        self, publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
    ) -> None:
        self.identities.append(participant.identity)


async def say(supervisor: AvatarSupervisor, seconds: float, *, wait: bool = True) -> None:
    """One utterance of `seconds` of loud audio; `wait`: until its playout is over, as the session
    waits between utterances (the pause a renewal's switch happens at)."""
    # A 400 Hz tone (8 whole periods a 20 ms frame): constant samples would be a DC level, which
    # the audio path filters out, so a long utterance of them goes silent after its onset.
    t = np.arange(RATE // 50) / RATE
    samples = (3000 * np.sin(2 * np.pi * 400 * t)).astype(np.int16)
    for _ in range(round(seconds * 50)):
        await supervisor.router.capture_frame(
            rtc.AudioFrame(samples.tobytes(), RATE, 1, samples.size)
        )
    supervisor.router.flush()
    if wait:
        await supervisor.router.wait_for_playout()


async def keep_talking(supervisor: AvatarSupervisor) -> None:
    while True:
        await say(supervisor, 1.0)


def renewals(harness: Harness, provider: str, outcome: str) -> float:
    """The renewals counter after the job's events so far went through a metrics recorder (as
    the worker's do)."""
    before: float = RENEWALS.labels(provider, outcome)._value.get()
    recorder = AvatarMetricsRecorder(provider)
    for event in harness.log.events:
        if event.event.startswith("renew"):
            recorder(event)
    after: float = RENEWALS.labels(provider, outcome)._value.get()
    return after - before


@pytest.mark.parametrize("provider", ["anam", "lemonslice"])
async def test_a_capped_session_is_renewed_at_a_pause_and_nobody_hears_or_sees_a_fault(
    harness: Harness,
    user: RoomUser,
    lemonslice: tuple[LemonSliceEmulator, LocalAvatarLauncher],
    anam: tuple[AnamEmulator, LocalAvatarLauncher],
    provider: str,
) -> None:
    emulator: EmulatorServer = lemonslice[0] if provider == "lemonslice" else anam[0]
    statuses = StatusSeen(user.room)
    ears = user.hear_everyone(AUDIBLE_RMS)
    supervisor = harness.start(capped(harness, provider, emulator, LONGER_CAP))
    await harness.log.wait_for("joined")
    old = supervisor.live_avatar
    assert old is not None
    await user.wait_for_video(old.identity)
    await user.wait_for_attribute(AGENT, STATUS_ATTRIBUTE, "joined", timeout=10)
    talking_since = time.monotonic()
    published = TracksPublished(user.room)
    talking = asyncio.create_task(keep_talking(supervisor))
    try:
        await harness.log.wait_for("renewed", timeout=60)
        new = supervisor.live_avatar
        assert new is not None and new.identity != old.identity
        switched_at = time.monotonic()
        # the old avatar spoke until the switch, the new one after it
        await ears.heard(old.identity, after=talking_since)
        await ears.heard(new.identity, after=switched_at)
        await gone(user.room, old.identity)
        first, second = emulator.sessions
        await until(lambda: not first.active, emulator)
    finally:
        talking.cancel()
        await asyncio.gather(talking, return_exceptions=True)

    # the successor was made, and the old session ended, before the old one's cap
    assert second.request.arrived_at < first.request.arrived_at + LONGER_CAP
    assert first.ended_at is not None and first.ended_at < first.request.arrived_at + LONGER_CAP
    assert first.status != "TIMED_OUT" and second.active
    if provider == "lemonslice":
        terminated = [r.path for r in emulator.requests_for("control")]
        assert len(terminated) == 1 and first.session_id in terminated[0]
    # never both voices at once: the old one was silent before the new one spoke (one 20 ms
    # frame of delivery jitter between two tracks allowed)
    first_new = ears.first_audible_after(new.identity, talking_since)
    last_old = ears.last_audible(old.identity)
    assert first_new is not None and last_old is not None
    assert last_old <= first_new + 0.02, (last_old, first_new)
    # no own-voice fallback, no fault on the page, no fault in the lifecycle
    assert AGENT not in published.identities  # the agent's own voice is a track of its own
    assert set(statuses.since_first_joined()) == {"joined"}
    events = [e.event for e in harness.log.events]
    assert "left" not in events and "failed" not in events and "renewal_failed" not in events
    assert supervisor.state is AvatarState.LIVE
    assert renewals(harness, provider, "renewed") == 1
    await ears.aclose()

    await supervisor.aclose()
    # Anam's session ends as its avatar is removed: the emulator hears of it a moment later
    await until(lambda: emulator.active_sessions == (), emulator)


async def test_the_switch_waits_for_the_utterance_in_flight_and_the_end_then_ends_both_sessions(
    harness: Harness, user: RoomUser, anam: tuple[AnamEmulator, LocalAvatarLauncher]
) -> None:
    emulator, _ = anam
    ears = user.hear_everyone(AUDIBLE_RMS)
    supervisor = harness.start(capped(harness, "anam", emulator))
    await harness.log.wait_for("joined")
    old = supervisor.live_avatar
    assert old is not None
    await say(supervisor, 15.0, wait=False)  # one long utterance: no pause before the cap's margin
    await harness.log.wait_for("renewing", timeout=20)
    new_identity = harness.log.named("renewing")[0].details["identity"]
    assert isinstance(new_identity, str)
    await user.wait_for_video(new_identity)
    # the successor is up, but the utterance is not over: the old avatar speaks on
    assert supervisor.state is AvatarState.RENEWING
    assert supervisor.router.speaks_through(old.identity)
    up_at = time.monotonic()
    await ears.heard(old.identity, after=up_at)
    assert ears.first_audible_after(new_identity, 0.0) is None

    await supervisor.aclose()  # the job ends mid-renewal
    await until(lambda: emulator.active_sessions == (), emulator)
    assert len(emulator.sessions) == 2
    await gone(user.room, old.identity)
    await gone(user.room, new_identity)
    await ears.aclose()


async def test_an_end_during_the_successor_s_create_ends_both_sessions(
    harness: Harness, lemonslice: tuple[LemonSliceEmulator, LocalAvatarLauncher]
) -> None:
    emulator, _ = lemonslice
    supervisor = harness.start(capped(harness, "lemonslice", emulator))
    await harness.log.wait_for("joined")
    emulator.inject("create", SucceedSlow(1.0))  # the successor's: made, its reply on its way
    await until(lambda: len(emulator.sessions) == 2, emulator)

    await supervisor.aclose()
    assert emulator.active_sessions == ()
    terminated = {r.path for r in emulator.requests_for("control")}
    assert all(any(s.session_id in path for path in terminated) for s in emulator.sessions)


async def test_a_renewal_whose_create_fails_keeps_the_old_avatar_speaking_until_its_cap(
    harness: Harness, user: RoomUser, anam: tuple[AnamEmulator, LocalAvatarLauncher]
) -> None:
    emulator, _ = anam
    statuses = StatusSeen(user.room)
    ears = user.hear_everyone(AUDIBLE_RMS)
    supervisor = harness.start(capped(harness, "anam", emulator))
    await harness.log.wait_for("joined")
    old = supervisor.live_avatar
    assert old is not None
    published = TracksPublished(user.room)
    emulator.inject("engine_session", StatusFault(403, "forbidden"))
    await harness.log.wait_for("renewal_failed", timeout=20)
    failed_at = time.monotonic()

    assert supervisor.live_avatar is old and supervisor.state is AvatarState.LIVE
    await say(supervisor, 1.0)
    await ears.heard(old.identity, after=failed_at)
    assert AGENT not in published.identities
    assert set(statuses.since_first_joined()) == {"joined"}
    assert renewals(harness, "anam", "failed") == 1

    # at the cap the provider ends it: the usual fault path (own voice, then a new avatar)
    await harness.log.wait_for("left", timeout=CAP + 10)
    assert emulator.sessions[0].status == "TIMED_OUT"
    await harness.log.wait_for("recovered", timeout=30)
    assert supervisor.live_avatar is not None and supervisor.live_avatar is not old
    await ears.aclose()
