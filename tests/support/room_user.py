"""A human-like user in a real LiveKit room: sees who joins, subscribes, decodes video, measures sound."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import numpy as np
from livekit import rtc

from tests.support.livekit_server import LiveKitServer, connect_participant

# The RMS (int16 units) above which a track is speaking: eSpeak's speech is in the thousands, silence 0.
AUDIBLE_RMS = 300.0


@dataclass(frozen=True)
class FirstFrame:
    width: int
    height: int
    received_at: float  # time.monotonic()


class RoomUser:
    def __init__(self, room: rtc.Room) -> None:
        self.room = room
        self._changed = asyncio.Event()
        room.on("participant_connected", lambda *_: self._changed.set())
        room.on("participant_disconnected", lambda *_: self._changed.set())
        room.on("track_subscribed", lambda *_: self._changed.set())
        room.on("participant_attributes_changed", lambda *_: self._changed.set())

    @classmethod
    async def join(cls, server: LiveKitServer, room_name: str, identity: str = "user") -> RoomUser:
        room = await connect_participant(server, room_name, identity)
        return cls(room)

    async def leave(self) -> None:
        await self.room.disconnect()

    async def _until(self, check: object, timeout: float) -> object:
        async with asyncio.timeout(timeout):
            while True:
                self._changed.clear()
                result = check() if callable(check) else None
                if result:
                    return result
                await self._changed.wait()

    async def wait_for_participant(
        self,
        *,
        identity: str | None = None,
        kind: int | None = None,
        not_identity: str | None = None,
        timeout: float = 30.0,
    ) -> rtc.RemoteParticipant:
        def find() -> rtc.RemoteParticipant | None:
            for participant in self.room.remote_participants.values():
                if identity is not None and participant.identity != identity:
                    continue
                if not_identity is not None and participant.identity == not_identity:
                    continue
                if kind is not None and participant.kind != kind:
                    continue
                return participant
            return None

        found = await self._until(find, timeout)
        assert isinstance(found, rtc.RemoteParticipant)
        return found

    async def wait_until_gone(self, identity: str, timeout: float = 30.0) -> None:
        await self._until(lambda: identity not in self.room.remote_participants, timeout)

    async def wait_for_track(
        self, identity: str, kind: rtc.TrackKind.ValueType, timeout: float = 30.0
    ) -> rtc.RemoteTrack:
        def find() -> rtc.RemoteTrack | None:
            participant = self.room.remote_participants.get(identity)
            if participant is None:
                return None
            for publication in participant.track_publications.values():
                if publication.kind == kind and publication.track is not None:
                    return publication.track
            return None

        track = await self._until(find, timeout)
        assert isinstance(track, rtc.RemoteVideoTrack | rtc.RemoteAudioTrack)
        return track

    async def first_video_frame(self, identity: str, timeout: float = 30.0) -> FirstFrame:
        track = await self.wait_for_track(identity, rtc.TrackKind.KIND_VIDEO, timeout)
        stream = rtc.VideoStream(track)
        try:
            async with asyncio.timeout(timeout):
                async for event in stream:
                    return FirstFrame(event.frame.width, event.frame.height, time.monotonic())
        finally:
            await stream.aclose()
        raise AssertionError("video stream ended before a frame")

    async def loudest_audio(
        self, identity: str, *, threshold: float, timeout: float = 60.0
    ) -> float:
        """Listen to the participant's audio until its RMS (int16 units) passes `threshold`."""
        track = await self.wait_for_track(identity, rtc.TrackKind.KIND_AUDIO, timeout)
        stream = rtc.AudioStream(track)
        loudest = 0.0
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    async for event in stream:
                        samples = np.frombuffer(event.frame.data, dtype=np.int16).astype(np.float64)
                        if samples.size:
                            loudest = max(loudest, float(np.sqrt(np.mean(samples**2))))
                        if loudest >= threshold:
                            break
        finally:
            await stream.aclose()
        return loudest
