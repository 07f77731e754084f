"""The speech router with the real data stream to an avatar, on a real livekit-server.

The avatar here is scripted: it takes the audio streams and answers `lk.clear_buffer`, and the test
says when it confirms a segment (`lk.playback_finished`), as a slow avatar would.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np
import pytest
from livekit import api, rtc

from providers.speech_router import SpeechRouter, avatar_output
from tests.support.livekit_server import LiveKitServer, connect_participant

RATE = 16000
FRAME_S = 0.02
HANG = 30.0  # a guard against a hung test, never a measure
AUDIO_TOPIC = "lk.audio_stream"


def frame(level: int = 3000) -> rtc.AudioFrame:
    samples = np.full(int(RATE * FRAME_S), level, dtype=np.int16)
    return rtc.AudioFrame(samples.tobytes(), RATE, 1, samples.size)


async def say(router: SpeechRouter, seconds: float) -> None:
    for _ in range(round(seconds / FRAME_S)):
        await router.capture_frame(frame())
    router.flush()


@dataclass
class ScriptedAvatar:
    room: rtc.Room
    agent_identity: str
    streams_begun: int = 0
    streams_ended: int = 0
    clears: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def start(self) -> None:
        self.room.register_byte_stream_handler(AUDIO_TOPIC, self._on_stream)
        self.room.local_participant.register_rpc_method("lk.clear_buffer", self._on_clear)

    def _on_stream(self, reader: rtc.ByteStreamReader, _: str) -> None:
        self.streams_begun += 1
        self.changed.set()
        task = asyncio.create_task(self._read(reader))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _read(self, reader: rtc.ByteStreamReader) -> None:
        async for _ in reader:
            pass
        self.streams_ended += 1
        self.changed.set()

    async def _on_clear(self, _: rtc.RpcInvocationData) -> str:
        self.clears += 1  # and no confirmation now: it comes late, when the test says
        self.changed.set()
        return "ok"

    async def until(self, condition: object) -> None:
        async with asyncio.timeout(HANG):
            while not condition():  # type: ignore[operator]
                self.changed.clear()
                await self.changed.wait()

    async def confirm(self, position: float, *, interrupted: bool) -> None:
        payload = json.dumps({"playback_position": position, "interrupted": interrupted})
        await self.room.local_participant.perform_rpc(
            destination_identity=self.agent_identity,
            method="lk.playback_finished",
            payload=payload,
        )


@pytest.fixture
async def rooms(
    livekit_server: LiveKitServer,
) -> AsyncIterator[tuple[rtc.Room, ScriptedAvatar]]:
    name = f"router-{uuid.uuid4().hex[:8]}"
    agent = await connect_participant(livekit_server, name, "agent-router", kind="agent")
    grants = api.VideoGrants(room_join=True, room=name, can_subscribe=False)
    avatar_room = await connect_participant(
        livekit_server, name, "avatar-router", kind="agent", grants=grants
    )
    avatar = ScriptedAvatar(avatar_room, agent.local_participant.identity)
    avatar.start()
    video = rtc.LocalVideoTrack.create_video_track("camera", rtc.VideoSource(16, 16))
    options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA)
    await avatar_room.local_participant.publish_track(video, options)
    try:
        yield agent, avatar
    finally:
        for task in avatar.tasks:
            task.cancel()
        await avatar_room.disconnect()
        await agent.disconnect()


async def test_an_avatars_late_answer_to_an_interruption_does_not_end_the_next_utterance(
    rooms: tuple[rtc.Room, ScriptedAvatar],
) -> None:
    agent, avatar = rooms
    router = SpeechRouter(agent, sample_rate=RATE, clear_timeout=0.5)
    try:
        router.to_avatar(avatar_output(agent, "avatar-router", sample_rate=RATE), "avatar-router")
        await say(router, 1.0)  # U
        await avatar.until(lambda: avatar.streams_ended == 1)
        router.clear_buffer()
        first = await asyncio.wait_for(router.wait_for_playout(), HANG)
        assert first.interrupted  # the router gave up on the answer after its clear timeout
        assert avatar.clears == 1

        await say(router, 3.0)  # V
        await avatar.until(lambda: avatar.streams_ended == 2)
        playout = asyncio.create_task(router.wait_for_playout())
        await avatar.confirm(0.4, interrupted=True)  # U's, late
        await avatar.confirm(2.5, interrupted=False)  # V's own
        second = await asyncio.wait_for(playout, HANG)
        assert second.playback_position == pytest.approx(2.5)
        assert second.interrupted is False
    finally:
        await router.aclose()
