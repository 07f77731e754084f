"""The agent's own voice on a real livekit-server: a track that cannot be published, a track nobody
subscribes to, and closing it while it publishes. The turn always ends; no track is left behind."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import numpy as np
import pytest
from livekit import api, rtc

from providers.own_voice import PUBLISH_SETTLE, SUBSCRIBER_WAIT, TRACK_NAME, OwnVoice
from providers.speech_router import SinkKind, SpeechRouter
from tests.support.livekit_server import LiveKitServer, connect_participant

RATE = 16000
FRAME_S = 0.02
# The native client answers a publish the server never acknowledges after 10 s.
NATIVE_PUBLISH_TIMEOUT = 10.0
HANG = 30.0  # a guard against a hung test, never a measure
CAPTURE_TIMEOUT = 1.0


def frame(level: int = 3000) -> rtc.AudioFrame:
    samples = np.full(int(RATE * FRAME_S), level, dtype=np.int16)
    return rtc.AudioFrame(samples.tobytes(), RATE, 1, samples.size)


async def say(router: SpeechRouter, seconds: float) -> None:
    for _ in range(round(seconds / FRAME_S)):
        await router.capture_frame(frame())
    router.flush()


async def agent_room(server: LiveKitServer, *, can_publish: bool = True) -> rtc.Room:
    name = f"own-voice-{uuid.uuid4().hex[:8]}"
    grants = api.VideoGrants(room_join=True, room=name, can_publish=can_publish)
    return await connect_participant(server, name, "agent-own-voice", kind="agent", grants=grants)


@pytest.fixture
async def room(livekit_server: LiveKitServer) -> AsyncIterator[rtc.Room]:
    room = await agent_room(livekit_server)
    try:
        yield room
    finally:
        await room.disconnect()


class Failures:
    def __init__(self) -> None:
        self.reported: list[tuple[SinkKind, BaseException]] = []

    def __call__(self, kind: SinkKind, error: BaseException) -> None:
        self.reported.append((kind, error))


def own_tracks(room: rtc.Room) -> list[rtc.LocalTrackPublication]:
    return [p for p in room.local_participant.track_publications.values() if p.name == TRACK_NAME]


async def test_an_own_voice_that_cannot_be_published_ends_each_turn_and_says_so(
    livekit_server: LiveKitServer,
) -> None:
    room = await agent_room(livekit_server, can_publish=False)
    failures = Failures()
    router = SpeechRouter(
        room, sample_rate=RATE, capture_timeout=CAPTURE_TIMEOUT, on_sink_failed=failures
    )
    try:
        router.to_own_voice()
        # Each turn waits for the track at most the bound, and ends unheard. Once the publish has
        # failed for good (the server never answers it), turns end at once.
        started = time.monotonic()
        turns: list[float] = []
        while not turns or turns[-1] >= CAPTURE_TIMEOUT / 2:
            assert time.monotonic() - started < HANG
            began = time.monotonic()
            await say(router, 0.2)
            event = await asyncio.wait_for(router.wait_for_playout(), HANG)
            assert (event.playback_position, event.interrupted) == (0.0, True)
            turns.append(time.monotonic() - began)
        assert turns[0] >= CAPTURE_TIMEOUT  # it waited for the track, up to the bound
        assert time.monotonic() - started >= NATIVE_PUBLISH_TIMEOUT - 0.5
        assert [kind for kind, _ in failures.reported] == ["own_voice"]  # said once
        assert own_tracks(room) == []
    finally:
        await router.aclose()
        await room.disconnect()


async def test_an_own_voice_nobody_subscribes_to_still_speaks_and_each_turn_ends(
    room: rtc.Room,
) -> None:
    failures = Failures()
    router = SpeechRouter(room, sample_rate=RATE, on_sink_failed=failures)
    try:
        router.to_own_voice()
        started = time.monotonic()
        await say(router, 0.3)
        first = await asyncio.wait_for(router.wait_for_playout(), HANG)
        # Played on the track after the wait for a listener, not dropped.
        assert time.monotonic() - started >= SUBSCRIBER_WAIT + 0.3 - 0.1
        assert first.playback_position == pytest.approx(0.3, abs=0.06)
        assert first.interrupted is False
        began = time.monotonic()
        await say(router, 0.3)
        second = await asyncio.wait_for(router.wait_for_playout(), HANG)
        assert second.playback_position == pytest.approx(0.3, abs=0.06)
        assert second.interrupted is False
        assert time.monotonic() - began < SUBSCRIBER_WAIT  # no second wait for a listener
        assert failures.reported == []
        assert len(own_tracks(room)) == 1
    finally:
        await router.aclose()
    assert own_tracks(room) == []


def running_for(voice: OwnVoice) -> list[asyncio.Task[object]]:
    """Tasks still running a method of this own voice or of its output (RoomIO's underneath).
    Only its own: other tests share the loop."""
    running = []
    for task in asyncio.all_tasks():
        frame = getattr(task.get_coro(), "cr_frame", None)
        if (
            not task.done()
            and frame is not None
            and frame.f_locals.get("self")
            in (
                voice,
                voice.output,
            )
        ):
            running.append(task)
    return running


async def test_closing_an_own_voice_while_it_publishes_leaves_no_track_and_no_task(
    room: rtc.Room,
) -> None:
    voice = OwnVoice(room, sample_rate=RATE)
    await asyncio.sleep(0)  # the publish is under way
    began = time.monotonic()
    await asyncio.wait_for(voice.aclose(), HANG)
    assert time.monotonic() - began < PUBLISH_SETTLE / 2  # it waited for the answer, not the bound
    assert running_for(voice) == []
    assert own_tracks(room) == []


async def test_closing_one_own_voice_leaves_a_newer_ones_track(room: rtc.Room) -> None:
    published = asyncio.Event()
    room.on("local_track_published", lambda *_: published.set())
    older = OwnVoice(room, sample_rate=RATE)
    await asyncio.wait_for(published.wait(), HANG)
    published.clear()
    newer = OwnVoice(room, sample_rate=RATE)
    await asyncio.wait_for(published.wait(), HANG)
    assert len(own_tracks(room)) == 2
    try:
        await older.aclose()
        assert len(own_tracks(room)) == 1
    finally:
        await newer.aclose()
    assert own_tracks(room) == []


async def test_an_interruption_while_the_track_waits_for_a_listener_does_not_break_it(
    room: rtc.Room,
) -> None:
    router = SpeechRouter(room, sample_rate=RATE)
    try:
        router.to_own_voice()
        await say(router, 1.0)
        for _ in range(50):  # the utterance's playout is now waiting for a listener
            await asyncio.sleep(0)
        router.clear_buffer()
        first = await asyncio.wait_for(router.wait_for_playout(), HANG)
        assert (first.playback_position, first.interrupted) == (0.0, True)
        await say(router, 0.3)
        second = await asyncio.wait_for(router.wait_for_playout(), HANG)
        assert second.playback_position == pytest.approx(0.3, abs=0.06)
        assert second.interrupted is False
    finally:
        await router.aclose()
