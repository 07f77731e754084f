"""A human-like user in a real LiveKit room: sees who joins, subscribes, decodes video, measures sound,
speaks into a microphone track and types."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar, cast

import numpy as np
import numpy.typing as npt
from livekit import rtc
from livekit.agents.voice.room_io import ATTRIBUTE_PUBLISH_ON_BEHALF as PUBLISH_ON_BEHALF

from providers.supervisor import JobRoom
from tests.support.livekit_server import LiveKitServer, connect_participant

TRANSCRIPTION_TOPIC = "lk.transcription"
CHAT_TOPIC = "lk.chat"
AGENT_STATE_ATTRIBUTE = "lk.agent.state"


_Found = TypeVar("_Found")


@dataclass(frozen=True)
class Transcript:
    """One finished `lk.transcription` text stream: a segment of what `speaker` said."""

    speaker: str
    text: str
    final: bool
    received_at: float = field(default_factory=time.monotonic, compare=False)
    # When its stream opened: when the speaker began saying it. The stream ends with the segment's
    # playout, so a slow playout confirmation can end an earlier segment after a later one begins.
    started_at: float = field(default_factory=time.monotonic, compare=False)


# The RMS (int16 units) above which a track is speaking: eSpeak's speech is in the thousands, silence 0.
AUDIBLE_RMS = 300.0


@dataclass(frozen=True)
class FirstFrame:
    width: int
    height: int
    received_at: float  # time.monotonic()


MICROPHONE_RATE = 48_000
_MIC_FRAME_SAMPLES = MICROPHONE_RATE // 100  # 10 ms, as WebRTC sends it
_MIC_QUEUE_MS = 50  # how far the microphone's feed runs ahead of real time


def resample(pcm: bytes, sample_rate: int, output_rate: int) -> npt.NDArray[np.int16]:
    """16-bit mono PCM at `output_rate`."""
    frame = rtc.AudioFrame(pcm, sample_rate, 1, len(pcm) // 2)
    if sample_rate == output_rate:
        return np.frombuffer(pcm, dtype=np.int16).copy()
    resampler = rtc.AudioResampler(sample_rate, output_rate, num_channels=1)
    frames = [*resampler.push(frame), *resampler.flush()]
    return np.concatenate([np.frombuffer(f.data, dtype=np.int16) for f in frames])


class Microphone:
    """A published microphone track that is always on: silence, except while `say` plays speech.

    The feed is paced by the audio source's queue, so speech goes out in real time, as from a
    person; a real microphone never goes quiet either, and the agent's VAD sees the silence that
    ends an utterance.
    """

    def __init__(self, room: rtc.Room) -> None:
        self._room = room
        self._source = rtc.AudioSource(MICROPHONE_RATE, 1, queue_size_ms=_MIC_QUEUE_MS)
        self._utterances: deque[tuple[npt.NDArray[np.int16], asyncio.Future[float]]] = deque()
        self._feed: asyncio.Task[None] | None = None
        self._stopping = False
        self.publication: rtc.LocalTrackPublication | None = None

    async def start(self) -> None:
        track = rtc.LocalAudioTrack.create_audio_track("microphone", self._source)
        self.publication = await self._room.local_participant.publish_track(
            track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        )
        self._feed = asyncio.create_task(self._run())

    async def say(self, pcm: bytes, sample_rate: int, *, timeout: float = 30.0) -> float:
        """Speak 16-bit mono PCM once someone listens to the track; returns (time.monotonic())
        when its last sample went out."""
        assert self.publication is not None, "start() the microphone first"
        async with asyncio.timeout(timeout):
            await self.publication.wait_for_subscription()
        done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._utterances.append((resample(pcm, sample_rate, MICROPHONE_RATE), done))
        return await done

    async def _run(self) -> None:
        silence = np.zeros(_MIC_FRAME_SAMPLES, dtype=np.int16)
        while not self._stopping:
            if not self._utterances:
                await self._capture(silence)
                continue
            speech, done = self._utterances.popleft()
            for start in range(0, speech.size, _MIC_FRAME_SAMPLES):
                if self._stopping:
                    done.cancel()  # cut off: it never ended
                    return
                chunk = speech[start : start + _MIC_FRAME_SAMPLES]
                if chunk.size < _MIC_FRAME_SAMPLES:
                    chunk = np.concatenate([chunk, silence[chunk.size :]])
                await self._capture(chunk)
            if not done.done():
                # What is queued still has to play out before the last sample has gone.
                done.set_result(time.monotonic() + self._source.queued_duration)

    async def _capture(self, samples: npt.NDArray[np.int16]) -> None:
        frame = rtc.AudioFrame(samples.tobytes(), MICROPHONE_RATE, 1, samples.size)
        await self._source.capture_frame(frame)

    async def stop(self) -> None:
        """Stop feeding the track (after the frame being captured: a capture is not cut off
        in the native layer)."""
        self._stopping = True
        while self._utterances:
            self._utterances.popleft()[1].cancel()
        if self._feed is not None:
            await self._feed
            self._feed = None

    async def aclose(self) -> None:
        await self.stop()
        await self._source.aclose()


@dataclass(frozen=True)
class Sound:
    """One received audio frame's loudness."""

    received_at: float  # time.monotonic()
    rms: float  # int16 units


class Ear:
    """Listens to one participant's audio track from now on, keeping each frame's loudness."""

    def __init__(self, track: rtc.RemoteAudioTrack) -> None:
        self._stream = rtc.AudioStream(track)
        self.timeline: list[Sound] = []
        self._heard = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for event in self._stream:
            samples = np.frombuffer(event.frame.data, dtype=np.int16).astype(np.float64)
            rms = float(np.sqrt(np.mean(samples**2))) if samples.size else 0.0
            self.timeline.append(Sound(time.monotonic(), rms))
            self._heard.set()

    async def first_sound_after(
        self, after: float, *, threshold: float, timeout: float = 30.0
    ) -> Sound:
        """The first frame received after `after` (time.monotonic()) louder than `threshold`."""
        async with asyncio.timeout(timeout):
            while True:
                for sound in self.timeline:
                    if sound.received_at > after and sound.rms >= threshold:
                        return sound
                self._heard.clear()
                await self._heard.wait()

    async def aclose(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._stream.aclose()


def job_avatar_identity(base: str, agent_identity: str) -> str:
    """The identity of the avatar the job of `agent_identity` (`agent-<job id>`) mints first
    (restarts add `-1`, `-2`, ...): `base` made unique to the job."""
    job = JobRoom("", None, agent_identity, agent_identity.removeprefix("agent-"))
    return job.avatar_identity(base)


class RoomUser:
    def __init__(self, room: rtc.Room) -> None:
        self.room = room
        self._changed = asyncio.Event()
        # time.monotonic() of each participant's last arrival and departure, as this user saw them
        self.joined_at: dict[str, float] = {
            identity: time.monotonic() for identity in room.remote_participants
        }
        self.left_at: dict[str, float] = {}
        self.video_at: dict[str, float] = {}  # when each participant's video track was subscribed
        room.on("participant_connected", self._on_joined)
        room.on("participant_disconnected", self._on_left)
        room.on("track_subscribed", self._on_track_subscribed)
        room.on("track_unpublished", lambda *_: self._changed.set())
        room.on("participant_attributes_changed", lambda *_: self._changed.set())
        self.transcripts: list[Transcript] = []
        self._readers: set[asyncio.Task[None]] = set()
        room.register_text_stream_handler(TRANSCRIPTION_TOPIC, self._on_transcription)
        self._microphone: Microphone | None = None
        self._ears: list[Ear] = []

    def _on_joined(self, participant: rtc.RemoteParticipant) -> None:
        self.joined_at[participant.identity] = time.monotonic()
        self._changed.set()

    def _on_track_subscribed(
        self,
        track: rtc.Track,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        if track.kind == rtc.TrackKind.KIND_VIDEO:
            self.video_at.setdefault(participant.identity, time.monotonic())
        self._changed.set()

    async def wait_for_video(self, identity: str, *, timeout: float = 30.0) -> float:
        """When this user got `identity`'s video track, waiting for it up to `timeout`."""
        found = await self._until(lambda: self.video_at.get(identity), timeout)
        assert isinstance(found, float)
        return found

    async def wait_for_visit(self, identity: str, *, timeout: float = 30.0) -> tuple[float, float]:
        """When `identity` came and when it left again (however brief its stay)."""
        await self._until(lambda: identity in self.joined_at and identity in self.left_at, timeout)
        return self.joined_at[identity], self.left_at[identity]

    def _on_left(self, participant: rtc.RemoteParticipant) -> None:
        self.left_at[participant.identity] = time.monotonic()
        self._changed.set()

    def hear_everyone(self, threshold: float) -> Ears:
        """Hear every audio track from now on, and remember when each participant was audible."""
        return Ears(self, threshold)

    def _on_transcription(self, reader: rtc.TextStreamReader, speaker: str) -> None:
        opened = time.monotonic()

        async def read() -> None:
            text = await reader.read_all()
            final = (reader.info.attributes or {}).get("lk.transcription_final") == "true"
            self.transcripts.append(Transcript(speaker, text, final, started_at=opened))
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
        for ear in self._ears:
            await ear.aclose()
        self._ears.clear()
        microphone, self._microphone = self._microphone, None
        if microphone is not None:
            await microphone.stop()
        await self.room.disconnect()
        if microphone is not None:
            await microphone.aclose()

    async def start_microphone(self) -> Microphone:
        """Publish the user's microphone track (always on) if it is not yet."""
        if self._microphone is None:
            self._microphone = Microphone(self.room)
            await self._microphone.start()
        return self._microphone

    async def speak(self, pcm: bytes, sample_rate: int) -> float:
        """Say 16-bit mono PCM into the user's microphone, once the agent listens to it.
        Returns time.monotonic() at the end of the speech."""
        microphone = await self.start_microphone()
        return await microphone.say(pcm, sample_rate)

    async def listen(self, identity: str, timeout: float = 30.0) -> Ear:
        """Start keeping the loudness of everything `identity` says from now on."""
        track = await self.wait_for_track(identity, rtc.TrackKind.KIND_AUDIO, timeout)
        assert isinstance(track, rtc.RemoteAudioTrack)
        ear = Ear(track)
        self._ears.append(ear)
        return ear

    async def send_chat(self, text: str) -> None:
        """Type a message to the agent, as a frontend's chat box does."""
        await self.room.local_participant.send_text(text, topic=CHAT_TOPIC)

    async def wait_for_transcript(
        self, speaker: str, contains: str, *, timeout: float = 30.0, since: float | None = None
    ) -> Transcript:
        """The first final transcript segment from `speaker` whose text contains `contains`
        (received after `since`, a time.monotonic(), if given)."""

        def find() -> Transcript | None:
            for transcript in self.transcripts:
                if (
                    transcript.speaker == speaker
                    and transcript.final
                    and contains.lower() in transcript.text.lower()
                    and (since is None or transcript.received_at > since)
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

    async def until(self, check: Callable[[], _Found | None], timeout: float) -> _Found:
        """The first result of `check` that is not None, checked again whenever the user hears
        something new."""
        return cast("_Found", await self._until(check, timeout))

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

    async def wait_for_agent(
        self, *, not_identity: str | None = None, timeout: float = 30.0
    ) -> rtc.RemoteParticipant:
        """An agent participant that is not an avatar (an avatar publishes on an agent's behalf)."""

        def find() -> rtc.RemoteParticipant | None:
            for participant in self.room.remote_participants.values():
                if (
                    participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
                    and PUBLISH_ON_BEHALF not in participant.attributes
                    and participant.identity != not_identity
                ):
                    return participant
            return None

        found = await self._until(find, timeout)
        assert isinstance(found, rtc.RemoteParticipant)
        return found

    async def wait_for_avatar(self, *, timeout: float = 30.0) -> rtc.RemoteParticipant:
        """A participant that speaks for an agent (an avatar), once one is in the room."""

        def find() -> rtc.RemoteParticipant | None:
            for participant in self.room.remote_participants.values():
                if PUBLISH_ON_BEHALF in participant.attributes:
                    return participant
            return None

        found = await self._until(find, timeout)
        assert isinstance(found, rtc.RemoteParticipant)
        return found

    async def wait_until_gone(self, identity: str, timeout: float = 30.0) -> None:
        await self._until(lambda: identity not in self.room.remote_participants, timeout)

    async def wait_without_track(
        self, identity: str, kind: rtc.TrackKind.ValueType, timeout: float = 10.0
    ) -> None:
        """Until the participant is in the room with no track of `kind` published."""

        def without() -> bool:
            participant = self.room.remote_participants.get(identity)
            return participant is not None and all(
                publication.kind != kind for publication in participant.track_publications.values()
            )

        await self._until(without, timeout)

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


class Ears:
    """A user's hearing: every audio track in the room, subscribed or to come, frame by frame.

    Times are time.monotonic() at the frame's arrival; a frame counts as audible at or above
    `threshold` RMS (int16 units).
    """

    def __init__(self, user: RoomUser, threshold: float) -> None:
        self._user = user
        self._threshold = threshold
        self.audible: dict[str, list[float]] = {}
        self._streams: dict[str, asyncio.Task[None]] = {}
        user.room.on("track_subscribed", self._on_track)
        for participant in user.room.remote_participants.values():
            for publication in participant.track_publications.values():
                if publication.track is not None:
                    self._on_track(publication.track, publication, participant)

    def _on_track(
        self,
        track: rtc.Track,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        if track.kind != rtc.TrackKind.KIND_AUDIO or track.sid in self._streams:
            return
        self._streams[track.sid] = asyncio.create_task(self._hear(track, participant.identity))

    async def _hear(self, track: rtc.Track, identity: str) -> None:
        stream = rtc.AudioStream(track)
        try:
            async for event in stream:
                if _rms(event.frame) >= self._threshold:
                    self.audible.setdefault(identity, []).append(time.monotonic())
                    self._user._changed.set()
        finally:
            await stream.aclose()

    def first_audible_after(self, identity: str, after: float) -> float | None:
        return next((t for t in self.audible.get(identity, []) if t >= after), None)

    def last_audible(self, identity: str) -> float | None:
        heard = self.audible.get(identity)
        return heard[-1] if heard else None

    async def heard(self, identity: str, *, after: float, timeout: float = 30.0) -> float:
        """When `identity` was first audible at or after `after`, waiting for it up to `timeout`."""
        found = await self._user._until(lambda: self.first_audible_after(identity, after), timeout)
        assert isinstance(found, float)
        return found

    async def aclose(self) -> None:
        self._user.room.off("track_subscribed", self._on_track)
        for task in self._streams.values():
            task.cancel()
        await asyncio.gather(*self._streams.values(), return_exceptions=True)


def _rms(frame: rtc.AudioFrame) -> float:
    samples = np.frombuffer(frame.data, dtype=np.int16).astype(np.float64)
    return float(np.sqrt(np.mean(samples**2))) if samples.size else 0.0
