"""A human-like user in a real LiveKit room: sees who joins, subscribes, decodes video, measures sound."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import numpy as np
from livekit import rtc

from tests.support.livekit_server import LiveKitServer, connect_participant

TRANSCRIPTION_TOPIC = "lk.transcription"
CHAT_TOPIC = "lk.chat"
AGENT_STATE_ATTRIBUTE = "lk.agent.state"


@dataclass(frozen=True)
class Transcript:
    """One finished `lk.transcription` text stream: a segment of what `speaker` said."""

    speaker: str
    text: str
    final: bool


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
        self.transcripts: list[Transcript] = []
        self._readers: set[asyncio.Task[None]] = set()
        room.register_text_stream_handler(TRANSCRIPTION_TOPIC, self._on_transcription)

    def _on_transcription(self, reader: rtc.TextStreamReader, speaker: str) -> None:
        async def read() -> None:
            text = await reader.read_all()
            final = (reader.info.attributes or {}).get("lk.transcription_final") == "true"
            self.transcripts.append(Transcript(speaker, text, final))
            self._changed.set()

        task = asyncio.create_task(read())
        self._readers.add(task)
        task.add_done_callback(self._readers.discard)

    @classmethod
    async def join(cls, server: LiveKitServer, room_name: str, identity: str = "user") -> RoomUser:
        room = await connect_participant(server, room_name, identity)
        return cls(room)

    async def leave(self) -> None:
        for reader in list(self._readers):
            reader.cancel()
        await self.room.disconnect()

    async def send_chat(self, text: str) -> None:
        """Type a message to the agent, as a frontend's chat box does."""
        await self.room.local_participant.send_text(text, topic=CHAT_TOPIC)

    async def wait_for_transcript(
        self, speaker: str, contains: str, *, timeout: float = 30.0
    ) -> Transcript:
        """The first final transcript segment from `speaker` whose text contains `contains`."""

        def find() -> Transcript | None:
            for transcript in self.transcripts:
                if (
                    transcript.speaker == speaker
                    and transcript.final
                    and contains.lower() in transcript.text.lower()
                ):
                    return transcript
            return None

        found = await self._until(find, timeout)
        assert isinstance(found, Transcript)
        return found

    async def wait_for_attribute(
        self, identity: str, key: str, value: str, *, timeout: float = 30.0
    ) -> None:
        def matches() -> bool:
            participant = self.room.remote_participants.get(identity)
            return participant is not None and participant.attributes.get(key) == value

        await self._until(matches, timeout)

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

    async def first_voiced_audio(
        self, identity: str, *, threshold: float, timeout: float = 60.0
    ) -> float:
        """time.monotonic() of the first audio frame from the participant whose RMS (int16 units)
        reaches `threshold`: the moment the user starts hearing speech, not silence."""
        track = await self.wait_for_track(identity, rtc.TrackKind.KIND_AUDIO, timeout)
        stream = rtc.AudioStream(track)
        try:
            async with asyncio.timeout(timeout):
                async for event in stream:
                    if _rms(event.frame) >= threshold:
                        return time.monotonic()
        finally:
            await stream.aclose()
        raise AssertionError("audio stream ended before any voiced frame")

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
                        loudest = max(loudest, _rms(event.frame))
                        if loudest >= threshold:
                            break
        finally:
            await stream.aclose()
        return loudest


def _rms(frame: rtc.AudioFrame) -> float:
    samples = np.frombuffer(frame.data, dtype=np.int16).astype(np.float64)
    return float(np.sqrt(np.mean(samples**2))) if samples.size else 0.0
