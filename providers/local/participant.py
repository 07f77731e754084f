"""The `local` avatar: a LiveKit participant that speaks the agent's audio with a drawn face.

It implements the avatar side of the livekit-agents data-stream protocol: speech arrives as
byte streams on `lk.audio_stream`, interruptions as the `lk.clear_buffer` RPC, and it answers
with `lk.playback_started` / `lk.playback_finished`. It publishes a camera track (video
frames at a steady rate, idle or talking) and a microphone track (the speech, resampled to a
fixed rate), both from the moment it joins.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from livekit import rtc
from livekit.agents import utils
from livekit.agents.voice.avatar import AudioSegmentEnd, DataStreamAudioReceiver
from livekit.agents.voice.io import PlaybackFinishedEvent

from .gestures import LOCAL_GESTURES, RPC_PLAY_GESTURE, Gesture
from .speech_start import SpeechStart, plan_speech_start
from .video import FaceRenderer, speech_level

logger = logging.getLogger(__name__)

PUBLISH_ON_BEHALF_ATTRIBUTE = "lk.publish_on_behalf"
RPC_CLEAR_BUFFER = "lk.clear_buffer"
RPC_PLAYBACK_STARTED = "lk.playback_started"
RPC_PLAYBACK_FINISHED = "lk.playback_finished"

# Speech is queued this far ahead of playout so the audio never runs dry between video
# frames; the face is drawn for the audio being heard, not the audio being queued.
_AUDIO_LEAD_S = 0.08
_AUDIO_QUEUE_MS = 300
# Speech is handed on from the data stream in frames this long (the library's default, 100 ms,
# holds the first words back until 100 ms of them has arrived).
_RECEIVE_FRAME_MS = 20
_NOTIFY_ATTEMPTS = 3
_RETRYABLE_RPC_ERRORS = frozenset(
    {
        rtc.RpcError.ErrorCode.CONNECTION_TIMEOUT,
        rtc.RpcError.ErrorCode.RESPONSE_TIMEOUT,
        rtc.RpcError.ErrorCode.SEND_FAILED,
    }
)
_GOODBYE_NOTIFY_TIMEOUT_S = 2.0

Samples = npt.NDArray[np.int16]


@dataclass(frozen=True)
class LocalAvatarOptions:
    video_width: int = 640
    video_height: int = 480
    video_fps: float = 24.0
    audio_sample_rate: int = 24000


@dataclass(frozen=True)
class LocalAvatarStats:
    video_frames: int
    segments_started: int
    segments_finished: int
    segments_interrupted: int
    speech_seconds: float
    input_sample_rates: tuple[int, ...]


@dataclass(frozen=True)
class _PlaybackStarted:
    pass


@dataclass(frozen=True)
class _PlaybackFinished:
    playback_position: float
    interrupted: bool


_PlaybackEvent = _PlaybackStarted | _PlaybackFinished


class _SpeechSegment:
    """One utterance: mono int16 chunks at the output rate, in arrival order."""

    def __init__(self, output_rate: int) -> None:
        self._output_rate = output_rate
        self._chunks: deque[Samples] = deque()
        self._resampler: rtc.AudioResampler | None = None
        self._input_rate: int | None = None
        self.buffered = 0
        self.played = 0
        self.started = False
        self.input_done = False

    def push(self, frame: rtc.AudioFrame) -> None:
        samples = np.frombuffer(frame.data, dtype=np.int16)
        if frame.num_channels > 1:
            samples = samples.reshape(-1, frame.num_channels).mean(axis=1).astype(np.int16)
        if frame.sample_rate != self._input_rate:
            self._flush_resampler()
            self._input_rate = frame.sample_rate
            if frame.sample_rate != self._output_rate:
                self._resampler = rtc.AudioResampler(
                    input_rate=frame.sample_rate, output_rate=self._output_rate, num_channels=1
                )
        if self._resampler is None:
            self._append(samples)
            return
        mono = rtc.AudioFrame(samples.tobytes(), frame.sample_rate, 1, samples.size)
        for resampled in self._resampler.push(mono):
            self._append(np.frombuffer(resampled.data, dtype=np.int16))

    def end_input(self) -> None:
        self._flush_resampler()
        self.input_done = True

    def _flush_resampler(self) -> None:
        if self._resampler is not None:
            for resampled in self._resampler.flush():
                self._append(np.frombuffer(resampled.data, dtype=np.int16))
            self._resampler = None

    def _append(self, samples: Samples) -> None:
        if samples.size:
            self._chunks.append(samples.copy())
            self.buffered += samples.size

    def read_into(self, out: Samples) -> int:
        written = 0
        while written < out.size and self._chunks:
            chunk = self._chunks[0]
            n = min(chunk.size, out.size - written)
            out[written : written + n] = chunk[:n]
            if n == chunk.size:
                self._chunks.popleft()
            else:
                self._chunks[0] = chunk[n:]
            written += n
        self.buffered -= written
        self.played += written
        return written

    @property
    def played_seconds(self) -> float:
        return self.played / self._output_rate


class _SpeechQueue:
    """Received speech waiting to be played, split into segments as the agent sent them."""

    def __init__(self, output_rate: int) -> None:
        self._output_rate = output_rate
        self._segments: deque[_SpeechSegment] = deque()

    def push(self, item: rtc.AudioFrame | AudioSegmentEnd) -> None:
        open_segment = self._segments[-1] if self._segments else None
        if open_segment is not None and open_segment.input_done:
            open_segment = None
        if isinstance(item, AudioSegmentEnd):
            # An end with no open segment belongs to a segment clear() already dropped.
            if open_segment is not None:
                open_segment.end_input()
            return
        if open_segment is None:
            open_segment = _SpeechSegment(self._output_rate)
            self._segments.append(open_segment)
        open_segment.push(item)

    def ready_to_start(self) -> int:
        """Samples waiting in a segment that has not begun to play (0 while one plays)."""
        if not self._segments or self._segments[0].started:
            return 0
        return self._segments[0].buffered

    def first_complete(self) -> bool:
        """The first segment has arrived whole."""
        return bool(self._segments) and self._segments[0].input_done

    def take(self, out: Samples) -> tuple[int, list[_PlaybackEvent]]:
        """Fill `out` with speech (the rest stays silent); returns samples filled and events."""
        filled = 0
        events: list[_PlaybackEvent] = []
        while self._segments:
            segment = self._segments[0]
            if (
                not segment.started
                and filled
                and segment.buffered < out.size - filled
                and not segment.input_done
            ):
                break  # a segment still arriving starts on a frame of its own (plan_speech_start)
            if filled < out.size and segment.buffered:
                if not segment.started:
                    segment.started = True
                    events.append(_PlaybackStarted())
                filled += segment.read_into(out[filled:])
            if segment.buffered or not segment.input_done:
                break
            self._segments.popleft()
            events.append(_PlaybackFinished(segment.played_seconds, interrupted=False))
        return filled, events

    def clear(self, unheard_seconds: float = 0.0) -> list[_PlaybackFinished]:
        """Drop all pending speech; each dropped segment finishes as interrupted.

        `unheard_seconds` of the current segment were handed to the audio track but are
        dropped with it, so they do not count as played.
        """
        events = [
            _PlaybackFinished(
                max(0.0, s.played_seconds - (unheard_seconds if i == 0 else 0.0)),
                interrupted=True,
            )
            for i, s in enumerate(self._segments)
        ]
        self._segments.clear()
        return events


class _PlaybackNotifier:
    """Sends playback RPCs to the agent in order, without blocking the media loop."""

    def __init__(self, room: rtc.Room, destination_identity: str) -> None:
        self._room = room
        self._destination = destination_identity
        self._queue: asyncio.Queue[_PlaybackEvent | None] = asyncio.Queue()
        self._send_started = True

    def send(self, event: _PlaybackEvent) -> None:
        self._queue.put_nowait(event)

    def finish(self) -> None:
        """Stop run() once everything queued so far has been sent."""
        self._queue.put_nowait(None)

    async def run(self) -> None:
        while (event := await self._queue.get()) is not None:
            if isinstance(event, _PlaybackStarted):
                if self._send_started:
                    await self._call(RPC_PLAYBACK_STARTED, "")
            else:
                payload = PlaybackFinishedEvent(
                    playback_position=event.playback_position, interrupted=event.interrupted
                )
                await self._call(RPC_PLAYBACK_FINISHED, json.dumps(asdict(payload)))

    async def _call(self, method: str, payload: str) -> None:
        for attempt in range(1, _NOTIFY_ATTEMPTS + 1):
            try:
                await self._room.local_participant.perform_rpc(
                    destination_identity=self._destination, method=method, payload=payload
                )
                return
            except rtc.RpcError as error:
                if method == RPC_PLAYBACK_STARTED and (
                    error.code == rtc.RpcError.ErrorCode.UNSUPPORTED_METHOD
                ):
                    # The agent only listens for it with wait_playback_start=True.
                    self._send_started = False
                    return
                if error.code not in _RETRYABLE_RPC_ERRORS or attempt == _NOTIFY_ATTEMPTS:
                    logger.warning(
                        "%s to %s failed: %s (code %s)",
                        method,
                        self._destination,
                        error.message,
                        error.code,
                    )
                    return
            await asyncio.sleep(0.1 * attempt)


class _RoomScopedAudioReceiver(DataStreamAudioReceiver):
    # The library keeps clear_buffer handlers in one process-wide table keyed by the
    # caller's identity, so two avatars serving same-named agents in different rooms of one
    # process would steal each other's interruptions. Bind the handler to this room only.
    @classmethod
    def _register_clear_buffer_rpc(
        cls,
        room: rtc.Room,
        *,
        caller_identity: str,
        handler: Callable[[rtc.RpcInvocationData], str],
    ) -> None:
        room.local_participant.register_rpc_method(RPC_CLEAR_BUFFER, handler)


def _token_claims(token: str) -> dict[str, Any]:
    """The (unverified) claims of a JWT; the server verifies it, we only read our identity."""
    try:
        payload = token.split(".")[1]
        decoded = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        claims = json.loads(decoded)
    except (IndexError, ValueError, binascii.Error):
        raise ValueError("the avatar token is not a JWT") from None
    if not isinstance(claims, dict):
        raise ValueError("the avatar token is not a JWT")
    return claims


@dataclass
class _Counters:
    video_frames: int = 0
    segments_started: int = 0
    segments_finished: int = 0
    segments_interrupted: int = 0
    speech_samples: int = 0
    input_sample_rates: list[int] = field(default_factory=list)
    level_timeline: deque[tuple[float, float]] = field(default_factory=deque)


class LocalAvatarParticipant:
    """Joins a room as the agent's avatar and plays the agent's speech with a drawn face."""

    def __init__(
        self,
        livekit_url: str,
        token: str,
        *,
        options: LocalAvatarOptions = LocalAvatarOptions(),
    ) -> None:
        if options.video_fps <= 0 or options.audio_sample_rate <= 0:
            raise ValueError("video_fps and audio_sample_rate must be positive")
        self._url = livekit_url
        self._token = token
        self._options = options
        claims = _token_claims(token)
        self._identity = str(claims.get("sub", ""))
        attributes = claims.get("attributes")
        self._token_sender = (
            attributes.get(PUBLISH_ON_BEHALF_ATTRIBUTE) if isinstance(attributes, dict) else None
        )
        self._renderer = FaceRenderer(options.video_width, options.video_height)
        self._speech = _SpeechQueue(options.audio_sample_rate)
        self._counters = _Counters()
        self._room: rtc.Room | None = None
        self._audio_source: rtc.AudioSource | None = None
        self._video_source: rtc.VideoSource | None = None
        self._receiver: _RoomScopedAudioReceiver | None = None
        self._notifier: _PlaybackNotifier | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._close_task: asyncio.Task[None] | None = None
        self._close_requested = asyncio.Event()
        self._started = False
        self._listening = asyncio.Event()
        self._clear_generation = 0
        self._frame_rendered = asyncio.Event()  # replaced by a new one after each frame
        self._speech_arrived = asyncio.Event()  # set as each frame of speech arrives
        self._requested_gesture: str | None = None  # drawn from the next frame on

    def __repr__(self) -> str:
        return f"LocalAvatarParticipant(identity={self._identity!r}, url={self._url!r})"

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def options(self) -> LocalAvatarOptions:
        return self._options

    @property
    def room(self) -> rtc.Room | None:
        return self._room

    @property
    def playback_count(self) -> int:
        """Speech segments whose playback ended, played out or interrupted."""
        return self._counters.segments_finished + self._counters.segments_interrupted

    @property
    def stats(self) -> LocalAvatarStats:
        c = self._counters
        return LocalAvatarStats(
            video_frames=c.video_frames,
            segments_started=c.segments_started,
            segments_finished=c.segments_finished,
            segments_interrupted=c.segments_interrupted,
            speech_seconds=c.speech_samples / self._options.audio_sample_rate,
            input_sample_rates=tuple(c.input_sample_rates),
        )

    async def wait_for_stats(
        self, condition: Callable[[LocalAvatarStats], bool]
    ) -> LocalAvatarStats:
        """The stats once `condition` holds for them, checked after every rendered frame (the
        counters move as frames are made). Waits forever on an avatar that stopped: bound it."""
        while not condition(stats := self.stats):
            await self._frame_rendered.wait()
        return stats

    @property
    def closed(self) -> bool:
        return self._close_task is not None and self._close_task.done()

    async def start(self) -> None:
        """Join the room and publish video and audio at once; speech is served from then on."""
        if self._started or self._close_requested.is_set():
            raise RuntimeError("a LocalAvatarParticipant can only be started once")
        self._started = True
        room = rtc.Room()
        self._room = room
        room.on("disconnected", self._on_disconnected)
        try:
            await _connect_uncancelled(
                room, self._url, self._token, rtc.RoomOptions(auto_subscribe=False)
            )
            self._identity = room.local_participant.identity
            room.local_participant.register_rpc_method(RPC_PLAY_GESTURE, self._on_gesture_rpc)
            self._audio_source = rtc.AudioSource(
                self._options.audio_sample_rate, 1, queue_size_ms=_AUDIO_QUEUE_MS
            )
            self._video_source = rtc.VideoSource(
                self._options.video_width, self._options.video_height
            )
            self._spawn(self._render_loop(), "render")
            # Listen for speech before the video is out: the agent starts talking on seeing it.
            # (The avatar may be in the room before the agent is: its first words must not arrive
            # before the handler for them is registered, so the video waits for the listener.)
            self._spawn(self._serve_speech(room), "speech")
            await self._wait_listening()
            await self._publish_tracks(room)
        except BaseException:
            await self.aclose()
            raise
        logger.info("local avatar %s joined room %s", self._identity, room.name)

    async def _wait_listening(self) -> None:
        # The speech task can also end (the room closing): do not wait on it then.
        listening = asyncio.ensure_future(self._listening.wait())
        closing = asyncio.ensure_future(self._close_requested.wait())
        try:
            await asyncio.wait({listening, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            listening.cancel()
            closing.cancel()
        if not self._listening.is_set():
            raise RuntimeError("the local avatar closed before it could listen for speech")

    async def _publish_tracks(self, room: rtc.Room) -> None:
        assert self._audio_source is not None and self._video_source is not None
        # Audio first: once the agent sees our video it starts talking, so be ready for it.
        # Without DTX: the track is silent between utterances, and after a silence sent as DTX
        # (a packet every 400 ms) the user's first words came up to 0.3 s later (bench.startup_ab).
        await room.local_participant.publish_track(
            rtc.LocalAudioTrack.create_audio_track("avatar_audio", self._audio_source),
            rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE, dtx=False),
        )
        await room.local_participant.publish_track(
            rtc.LocalVideoTrack.create_video_track("avatar_video", self._video_source),
            rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA, simulcast=False),
        )

    async def wait_closed(self) -> None:
        """Return once the avatar has left the room and stopped all its work."""
        await self._close_requested.wait()
        assert self._close_task is not None
        await asyncio.shield(self._close_task)

    async def aclose(self) -> None:
        """Leave the room and stop; safe to call any number of times."""
        self._request_close()
        await self.wait_closed()

    def _request_close(self) -> None:
        if self._close_task is None:
            self._close_task = asyncio.create_task(
                self._shutdown(), name=f"local-avatar:{self._identity}:close"
            )
            self._close_requested.set()

    def _on_disconnected(self, reason: rtc.DisconnectReason.ValueType) -> None:
        logger.info(
            "local avatar %s left the room (%s)",
            self._identity,
            rtc.DisconnectReason.Name(reason),
        )
        self._request_close()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(
            coro, name=f"local-avatar:{self._identity}:{name}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._on_task_done)

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or (error := task.exception()) is None:
            return
        if self._room is not None and not self._room.isconnected():
            # Waits on the room fail once it is gone; leaving is handled by _on_disconnected.
            logger.debug("local avatar task %s ended with the room: %r", task.get_name(), error)
        else:
            logger.error("local avatar task %s failed", task.get_name(), exc_info=error)
        self._request_close()

    async def _shutdown(self) -> None:
        notifier_task = next((t for t in self._tasks if t.get_name().endswith(":notify")), None)
        await utils.aio.cancel_and_wait(*(t for t in self._tasks if t is not notifier_task))
        room = self._room
        if notifier_task is not None and self._notifier is not None:
            if room is not None and room.isconnected():
                # Tell the agent about speech we will never finish, or it waits for it forever.
                unheard = self._audio_source.queued_duration if self._audio_source else 0.0
                self._notify(self._speech.clear(unheard))
                self._notifier.finish()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(notifier_task), _GOODBYE_NOTIFY_TIMEOUT_S)
            await utils.aio.cancel_and_wait(notifier_task)
        if self._receiver is not None:
            await self._receiver.aclose()
        if room is not None:
            room.off("disconnected", self._on_disconnected)
            await room.disconnect()
            await _wait_room_listener_done(room)
        if self._audio_source is not None:
            await self._audio_source.aclose()
        if self._video_source is not None:
            await self._video_source.aclose()

    async def _serve_speech(self, room: rtc.Room) -> None:
        sender = await self._find_sender(room)
        logger.info("local avatar %s serves speech from %s", self._identity, sender)
        self._notifier = _PlaybackNotifier(room, sender)
        self._spawn(self._notifier.run(), "notify")
        receiver = _RoomScopedAudioReceiver(
            room, sender_identity=sender, frame_size_ms=_RECEIVE_FRAME_MS
        )
        self._receiver = receiver
        receiver.on("clear_buffer", self._on_clear_buffer)
        await receiver.start()
        self._listening.set()
        async for item in receiver:
            if isinstance(item, rtc.AudioFrame) and item.sample_rate not in (
                rates := self._counters.input_sample_rates
            ):
                rates.append(item.sample_rate)
                logger.info(
                    "local avatar %s receives speech at %d Hz", self._identity, item.sample_rate
                )
            self._speech.push(item)
            self._speech_arrived.set()

    async def _find_sender(self, room: rtc.Room) -> str:
        on_behalf = (
            room.local_participant.attributes.get(PUBLISH_ON_BEHALF_ATTRIBUTE) or self._token_sender
        )
        if on_behalf:
            return on_behalf
        agent = await utils.wait_for_participant(
            room, kind=rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
        )
        return agent.identity

    def _on_gesture_rpc(self, data: rtc.RpcInvocationData) -> str:
        if data.payload not in LOCAL_GESTURES:
            raise rtc.RpcError(
                rtc.RpcError.ErrorCode.APPLICATION_ERROR,
                f"unknown gesture; this avatar plays {', '.join(LOCAL_GESTURES)}",
            )
        self._requested_gesture = data.payload
        return "playing"

    def _on_clear_buffer(self) -> None:
        self._clear_generation += 1
        unheard = 0.0
        if self._audio_source is not None:
            unheard = self._audio_source.queued_duration
            self._audio_source.clear_queue()
        interrupted = self._speech.clear(unheard)
        self._counters.level_timeline.clear()
        self._notify(interrupted)

    def _notify(self, events: Sequence[_PlaybackEvent]) -> None:
        for event in events:
            if isinstance(event, _PlaybackStarted):
                self._counters.segments_started += 1
            elif event.interrupted:
                self._counters.segments_interrupted += 1
            else:
                self._counters.segments_finished += 1
            if self._notifier is not None:
                self._notifier.send(event)

    async def _render_loop(self) -> None:
        assert self._audio_source is not None and self._video_source is not None
        audio_source, video_source = self._audio_source, self._video_source
        loop = asyncio.get_running_loop()
        fps, rate = self._options.video_fps, self._options.audio_sample_rate
        timeline = self._counters.level_timeline
        clock_start = animation_start = loop.time()
        tick = 0
        samples_sent = 0
        shown_level = 0.0
        gesture: Gesture | None = None
        speech_until = 0.0  # loop time by which the speech queued so far has played
        waiting_since: float | None = None  # since when a segment has waited to start
        seen_generation = self._clear_generation
        while True:
            queued = audio_source.queued_duration
            if queued < _AUDIO_LEAD_S / 2:
                lead = np.zeros(round((_AUDIO_LEAD_S - queued) * rate), dtype=np.int16)
                await audio_source.capture_frame(rtc.AudioFrame(lead.tobytes(), rate, 1, lead.size))
                queued = audio_source.queued_duration

            # From taking speech to queueing it there is a single await, and a clear_buffer
            # arriving during it is caught by `_queue_audio`.
            now = loop.time()
            samples_due = round((tick + 1) * rate / fps)
            size = samples_due - samples_sent
            samples_sent = samples_due
            if self._clear_generation != seen_generation:
                seen_generation, speech_until = self._clear_generation, 0.0
            chunk = np.zeros(size, dtype=np.int16)
            plan = SpeechStart()
            arrived = self._speech.ready_to_start()
            if not arrived:
                waiting_since = None
            else:
                waiting_since = now if waiting_since is None else waiting_since
                plan = plan_speech_start(
                    arrived=arrived,
                    queued=round(queued * rate),
                    queued_is_silence=now >= speech_until,
                    frame=size,
                    arrived_whole=self._speech.first_complete(),
                    waited=round((now - waiting_since) * rate),
                )
            ahead = 0  # samples of silence in this chunk before its speech
            if plan.lead is not None:
                audio_source.clear_queue()
                chunk = np.zeros(round(queued * rate) + size, dtype=np.int16)
                ahead, queued = plan.lead, 0.0
            speech_samples, events = (0, []) if plan.wait else self._speech.take(chunk[ahead:])
            if speech_samples:
                speech_until = now + queued + chunk.size / rate
            self._counters.speech_samples += speech_samples
            self._notify(events)
            timeline.append((now + queued + ahead / rate, speech_level(chunk[ahead:])))
            await self._queue_audio(chunk)

            heard_level = 0.0
            while timeline and timeline[0][0] <= now:
                heard_level = timeline.popleft()[1]
            # Open the mouth at once, close it gradually.
            shown_level = max(heard_level, 0.6 * shown_level)
            t = now - animation_start
            if self._requested_gesture is not None:
                gesture, self._requested_gesture = Gesture(self._requested_gesture, t), None
            video_source.capture_frame(self._renderer.render(shown_level, t, gesture))
            self._counters.video_frames += 1
            rendered, self._frame_rendered = self._frame_rendered, asyncio.Event()
            rendered.set()

            tick += 1
            delay = clock_start + tick / fps - loop.time()
            if delay < -1.0 / fps:
                # Late by a whole frame: restart the clock rather than burst frames out. The
                # speech waits in its queue, so none of it is lost.
                clock_start, tick, samples_sent = loop.time(), 0, 0
                continue
            # Frame pacing: the next frame is due at a fixed point on the clock.
            if delay > 0:
                next_frame = round((tick + 1) * rate / fps) - samples_sent
                speech_until = await self._until_next_frame(delay, speech_until, next_frame)

    async def _until_next_frame(self, delay: float, speech_until: float, next_frame: int) -> float:
        """Wait `delay` seconds for the next video frame. Speech that arrives after silence meanwhile
        starts at once in the queued silence's place, not on the next frame (up to a frame sooner).
        Returns the loop time by which the speech queued so far has played."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        while (remaining := deadline - loop.time()) > 0:
            playing_for = speech_until - loop.time()
            if playing_for > 0:
                # Speech is queued: what follows it goes on at the frames' pace.
                await asyncio.sleep(min(remaining, playing_for))
                continue
            if self._speech.ready_to_start():
                started_until = await self._start_speech_between_frames(next_frame)
                if started_until is not None:
                    speech_until = started_until
                    continue
            self._speech_arrived.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._speech_arrived.wait()
            except TimeoutError:
                break
        return speech_until

    async def _start_speech_between_frames(self, next_frame: int) -> float | None:
        """Put the waiting segment in place of the queued silence now, if enough of it is here to
        fill that and the next frame; returns the loop time by which it has played (None: not yet)."""
        audio_source = self._audio_source
        assert audio_source is not None
        rate = self._options.audio_sample_rate
        now = asyncio.get_running_loop().time()
        queued = round(audio_source.queued_duration * rate)
        plan = plan_speech_start(
            arrived=self._speech.ready_to_start(),
            queued=queued,
            queued_is_silence=True,
            frame=next_frame,
            arrived_whole=self._speech.first_complete(),
            waited=0,
        )
        if plan.wait or plan.lead is None:
            return None
        audio_source.clear_queue()
        chunk = np.zeros(queued, dtype=np.int16)
        speech_samples, events = self._speech.take(chunk[plan.lead :])
        self._counters.speech_samples += speech_samples
        self._notify(events)
        timeline = self._counters.level_timeline
        while timeline and timeline[-1][0] > now:
            timeline.pop()  # the dropped silence's levels
        timeline.append((now + plan.lead / rate, speech_level(chunk[plan.lead :])))
        await self._queue_audio(chunk)
        return now + chunk.size / rate

    async def _queue_audio(self, chunk: Samples) -> None:
        """Put `chunk` on the audio track; a clear_buffer that arrives during the capture drops it."""
        audio_source = self._audio_source
        assert audio_source is not None
        rate = self._options.audio_sample_rate
        generation = self._clear_generation
        await audio_source.capture_frame(rtc.AudioFrame(chunk.tobytes(), rate, 1, chunk.size))
        if generation != self._clear_generation:
            audio_source.clear_queue()


async def _wait_room_listener_done(room: rtc.Room) -> None:
    # rtc.Room ends its event-listener task shortly after a disconnect; wait for it so that
    # a closed avatar leaves no task behind (there is no public handle for it).
    listener: asyncio.Task[None] | None = getattr(room, "_task", None)
    if listener is not None and not listener.done():
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(listener), 5.0)


async def _connect_uncancelled(
    room: rtc.Room, url: str, token: str, options: rtc.RoomOptions
) -> None:
    """`room.connect`, never cancelled half-way: livekit's native side then waits for an answer it
    never gets, and takes the process down. A cancelled caller waits for the connect to end (it is
    bounded by livekit's own timeouts), then is cancelled; the caller leaves the room."""
    connecting = asyncio.ensure_future(room.connect(url, token, options))
    try:
        await asyncio.shield(connecting)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await connecting
        raise
