"""Where the agent's speech goes: to the avatar, to the agent's own track, or held until one is ready.

The router is the end of the session's audio chain for the whole job (RoomIO's transcript
synchroniser wraps it). It keeps each utterance until its playout is over, which gives it three
things the plain data-stream output cannot do:

- speech that comes before the avatar's video waits here, and plays wherever it is sent first;
- when the avatar goes away mid-utterance, or ends one as interrupted though nobody asked it to
  stop (a goodbye as it leaves), the rest of the utterance (from a little before the point the user
  had heard, at a pause) is played on the agent's own track at once;
- an avatar that never confirms a playout cannot wedge the conversation: the utterance is over
  `playout_grace` seconds after it should have ended, and the next one goes on;
- with `handover_pause` set, an avatar whose video comes up while the agent speaks in its own voice
  takes over within the utterance, at its next pause of that length (a sentence's end): the own
  voice plays up to the pause, the avatar goes on from just before the next word once the own voice
  has played out. No word is cut or repeated, and the two voices never overlap (docs/first-word.md).
  With `handover_settle`, only at a pause that long after the avatar was ready: a newly joined
  avatar's audio reaches the user later for its first seconds.

A sink (the avatar's `DataStreamAudioOutput`, the agent's `OwnVoice`) plays one utterance at a time,
in order. Without `handover_pause`, a new avatar takes over from the agent's own voice between
utterances, never within one.

No wait on a sink is unbounded. A sink that takes no audio for `capture_timeout` seconds, or fails,
is reported once (`on_sink_failed`) and the utterance ends where the user was; a later one goes on.

A confirmation (`playback_finished`) carries no segment id, so confirmations are matched to
segments by count: a sink confirms the segments it was given in order, one each. A segment the
router stopped waiting for keeps its place for `late_confirmation` seconds, so its late answer is
not taken for the next one's; after that it is presumed lost (`on_confirmation_lost`). The window is
short on purpose: while a lost answer's place is kept, each later answer is taken for the one before
it, and that ends only when a place expires (at the latest in the next pause between turns).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
from livekit import rtc
from livekit.agents.voice.avatar import DataStreamAudioOutput
from livekit.agents.voice.io import (
    AudioOutput,
    AudioOutputCapabilities,
    PlaybackFinishedEvent,
    PlaybackStartedEvent,
    _CaptureCancelledEvent,
)

from .own_voice import OwnVoice

logger = logging.getLogger("avatar.speech")

SinkKind = Literal["avatar", "own_voice"]
Route = Literal["held", "avatar", "own_voice"]

# On a failover, replay from this far before the point the user is estimated to have heard
# (an avatar's playout lags what it was sent), then back to the quietest moment within
# `_PAUSE_SEARCH` before that, so the replay starts between words.
_REPLAY_OVERLAP = 1.0
_PAUSE_SEARCH = 0.6
# Speech is kept in frames of at most this length, so a pause is found to within one frame.
_FRAME_SECONDS = 0.02
# Below this mean absolute level (int16 units) a frame is silence: synthesised speech is in the
# thousands, the silence between its sentences at or near 0.
_SILENT_LEVEL = 80.0
# How far ahead of its playout the own voice is fed while an avatar may take over from it: enough
# that a late wake-up of a loaded machine cannot starve the track.
_OWN_VOICE_AHEAD = 0.4
# At a handover, the avatar starts this far before the pause's end, so its first word is whole.
_HANDOVER_LEAD = 0.06
# At a handover, the avatar's first audio goes out this long after the own voice's playout
# confirmation: the own track's audio in flight lands first even when the avatar's path is short.
_HANDOVER_MARGIN = 0.1


def avatar_output(room: rtc.Room, identity: str, *, sample_rate: int) -> DataStreamAudioOutput:
    """The data stream to an avatar that has joined (with its video), as the router needs it.

    `clear_buffer_timeout=None`: the router bounds the wait for an interruption's answer itself.
    With a timeout, the framework invents a confirmation when the avatar is slow to answer, and the
    avatar's real one, when it comes, is one too many: it would be counted for the next segment.
    """
    return DataStreamAudioOutput(
        room,
        destination_identity=identity,
        sample_rate=sample_rate,
        wait_remote_track=rtc.TrackKind.KIND_VIDEO,
        clear_buffer_timeout=None,
    )


class OwnVoiceOutput(Protocol):
    """The agent's own track, made when first needed and closed when an avatar is back."""

    @property
    def output(self) -> AudioOutput: ...

    async def aclose(self) -> None: ...


class SinkStalledError(RuntimeError):
    """A sink took no audio for the router's capture bound."""


class AvatarStoppedSpeechError(RuntimeError):
    """An avatar ended an utterance as interrupted though nobody asked it to stop."""


class _Sink:
    """An audio output the router sends whole utterances to, one at a time."""

    def __init__(
        self,
        output: AudioOutput,
        kind: SinkKind,
        name: str,
        *,
        late_confirmation: float,
        on_confirmation_lost: Callable[[SinkKind], None] | None,
    ) -> None:
        self.output = output
        self.kind = kind
        self.name = name
        self.failed = False  # reported once; a failed own voice is replaced by `to_own_voice`
        self.on_started: Callable[[float], None] | None = None
        self.reported_start = asyncio.Event()  # the output said it began to play a segment
        self._late_confirmation = late_confirmation
        self._on_confirmation_lost = on_confirmation_lost
        self._segments = output.captured_playout_segments
        self._awaiting: deque[asyncio.Future[PlaybackFinishedEvent]] = deque()
        output.on("playback_finished", self._on_finished)
        output.on("playback_started", self._on_started)

    def opened_segment(self) -> bool:
        """The output opened a segment not yet claimed (a frame of it is on its way out)."""
        return self.output.captured_playout_segments > self._segments

    def claim_segment(self) -> asyncio.Future[PlaybackFinishedEvent] | None:
        """The confirmation of the segment the output opened since the last claim, if it did."""
        opened = self.output.captured_playout_segments - self._segments
        if opened <= 0:
            return None
        self._segments += opened
        loop = asyncio.get_running_loop()
        confirmations = [loop.create_future() for _ in range(opened)]
        self._awaiting.extend(confirmations)
        for unclaimed in confirmations[:-1]:  # never happens with one utterance at a time
            self.give_up(unclaimed)
        return confirmations[-1]

    def give_up(self, confirmation: asyncio.Future[PlaybackFinishedEvent]) -> None:
        """The router no longer waits for it; a late answer still takes its place, for a while."""
        if confirmation.done():
            return
        forget = asyncio.get_running_loop().call_later(
            self._late_confirmation, self._forget, confirmation
        )
        confirmation.add_done_callback(lambda _: forget.cancel())

    def _forget(self, confirmation: asyncio.Future[PlaybackFinishedEvent]) -> None:
        if confirmation.done():
            return
        with contextlib.suppress(ValueError):
            self._awaiting.remove(confirmation)
        confirmation.cancel()
        logger.warning(
            "the %s never confirmed a segment; later confirmations count without it",
            self.kind,
            extra={"sink": self.name},
        )
        if self._on_confirmation_lost is not None:
            self._on_confirmation_lost(self.kind)

    def _on_finished(self, event: PlaybackFinishedEvent) -> None:
        if isinstance(event, _CaptureCancelledEvent):
            return  # the end of a capture cut off before the output counted its segment
        if self._awaiting:
            self._awaiting.popleft().set_result(event)  # the oldest segment not yet confirmed
        else:
            logger.debug("a confirmation for no segment is dropped", extra={"sink": self.name})

    def _on_started(self, event: PlaybackStartedEvent) -> None:
        self.reported_start.set()
        if self.on_started is not None:
            self.on_started(event.created_at)

    def detach(self) -> None:
        self.output.off("playback_finished", self._on_finished)
        self.output.off("playback_started", self._on_started)
        while self._awaiting:
            self._awaiting.popleft().cancel()


@dataclass(eq=False)
class _Utterance:
    """One segment of the agent's speech, kept until its playout is over."""

    frames: list[rtc.AudioFrame] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)  # end time of each frame in the utterance
    levels: list[float] = field(default_factory=list)  # loudness of each frame
    flushed: bool = False
    cleared: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)
    more: asyncio.Event = field(default_factory=asyncio.Event)
    reported_start: bool = False
    sink: _Sink | None = None
    first_index: int = 0  # where the current sink began in `frames`
    sent: int = 0  # frames handed to the current sink (absolute index)
    sink_flushed: bool = False
    sink_started_at: float | None = None  # time.time() the current sink began to play it
    stopped_at: float | None = None  # where the current sink said it stopped, unasked
    confirmation: asyncio.Future[PlaybackFinishedEvent] | None = None  # of its segment on the sink
    task: asyncio.Task[None] | None = None

    @property
    def duration(self) -> float:
        return self.ends[-1] if self.ends else 0.0

    def offset_of(self, index: int) -> float:
        return self.ends[index - 1] if index > 0 else 0.0

    @property
    def offset(self) -> float:
        return self.offset_of(self.first_index)

    def append(self, frame: rtc.AudioFrame) -> None:
        for piece in _split(frame):
            self.frames.append(piece)
            self.ends.append(self.duration + piece.duration)
            self.levels.append(_loudness(piece))
        self.more.set()

    def pause_around(self, index: int, *, floor: int) -> tuple[int, int]:
        """The silence frame `index` is in or just follows (captured so far): its first frame (not
        before `floor`) and the frame after its last. Equal when there is none."""
        start = index
        while start > floor and self.levels[start - 1] < _SILENT_LEVEL:
            start -= 1
        end = index
        while end < len(self.frames) and self.levels[end] < _SILENT_LEVEL:
            end += 1
        return start, end

    def pause_length(self, index: int, *, floor: int) -> float:
        """How long the silence around frame `index` lasts, from its start (in what is captured so far)."""
        start, end = self.pause_around(index, floor=floor)
        return self.offset_of(end) - self.offset_of(start)

    def pause_at(self, index: int, *, at_least: float, floor: int) -> int | None:
        """If frame `index` is in a pause of `at_least` seconds or just after one, counted from
        the pause's start (it may have begun before `index`, but not before `floor`), and speech
        follows it (or may yet): the frame a new sink should start from, `_HANDOVER_LEAD` before
        the pause's end. A pause is judged whole: a sink that reached it late still switches in it."""
        start, end = self.pause_around(index, floor=floor)
        if end == len(self.frames) and self.flushed:
            return None  # the utterance's trailing silence: it ends here, nothing to hand over
        if self.offset_of(end) - self.offset_of(start) < at_least:
            return None
        resume = end
        while resume > start and self.offset_of(end) - self.offset_of(resume - 1) <= _HANDOVER_LEAD:
            resume -= 1
        return resume

    def heard(self, now: float) -> float:
        """Where the user is, at best, in this utterance on its current sink."""
        if self.sink_started_at is None:
            return self.offset
        playing = max(0.0, now - self.sink_started_at)
        heard = min(self.offset_of(self.sent), self.offset + playing)
        return heard if self.stopped_at is None else min(heard, self.stopped_at)

    def replay_index(self, heard: float) -> int:
        """The frame to replay from: a pause a little before `heard`."""
        target = max(0.0, heard - _REPLAY_OVERLAP)
        index = int(np.searchsorted(np.asarray(self.ends), target, side="right"))
        earliest = int(np.searchsorted(np.asarray(self.ends), target - _PAUSE_SEARCH, "right"))
        candidates = range(max(earliest, 0), min(index, len(self.frames) - 1) + 1)
        if not candidates:
            return min(index, len(self.frames))
        return min(candidates, key=lambda i: self.levels[i])


def _split(frame: rtc.AudioFrame) -> list[rtc.AudioFrame]:
    step = max(1, int(frame.sample_rate * _FRAME_SECONDS))
    if frame.samples_per_channel <= step:
        return [frame]
    samples = np.frombuffer(frame.data, dtype=np.int16)
    width = step * frame.num_channels
    return [
        rtc.AudioFrame(
            samples[start : start + width].tobytes(),
            frame.sample_rate,
            frame.num_channels,
            len(samples[start : start + width]) // frame.num_channels,
        )
        for start in range(0, len(samples), width)
    ]


def _loudness(frame: rtc.AudioFrame) -> float:
    samples = np.frombuffer(frame.data, dtype=np.int16)
    return float(np.mean(np.abs(samples.astype(np.int32)))) if samples.size else 0.0


class SpeechRouter(AudioOutput):
    """The sink at the end of the agent's audio chain; see the module's docstring."""

    def __init__(
        self,
        room: rtc.Room,
        *,
        sample_rate: int,
        own_voice: Callable[[], OwnVoiceOutput] | None = None,
        playout_grace: float = 2.0,
        clear_timeout: float = 2.0,
        late_confirmation: float = 5.0,
        capture_timeout: float = 10.0,
        on_confirmation_lost: Callable[[SinkKind], None] | None = None,
        on_sink_failed: Callable[[SinkKind, BaseException], None] | None = None,
        on_unconfirmed: Callable[[SinkKind, float], None] | None = None,
        on_first_audio: Callable[[SinkKind], None] | None = None,
        handover_pause: float | None = None,
        handover_settle: float = 0.0,
        unpublish_wait: float = 0.25,
    ) -> None:
        super().__init__(
            label="AvatarSpeechRouter",
            capabilities=AudioOutputCapabilities(pause=False),
            sample_rate=sample_rate,
        )
        self._new_own_voice = own_voice or (lambda: OwnVoice(room, sample_rate=sample_rate))
        self._playout_grace = playout_grace
        self._clear_timeout = clear_timeout
        self._late_confirmation = late_confirmation
        self._capture_timeout = capture_timeout
        self._on_confirmation_lost = on_confirmation_lost
        self._on_sink_failed = on_sink_failed
        self._on_unconfirmed = on_unconfirmed
        self._on_first_audio = on_first_audio
        self._handover_pause = handover_pause
        self._handover_settle = handover_settle
        # at a handover, the own track stays up until the avatar's output says it plays (the
        # data stream says so as it sends the first frame), at most this long after it was sent
        self._unpublish_wait = unpublish_wait
        self._release_after_handover: asyncio.Task[None] | None = None
        self._current: _Sink | None = None  # None: hold speech until a sink is chosen
        self._sink_changed = asyncio.Event()
        self._next_avatar: _Sink | None = None  # takes over at the next utterance
        self._next_avatar_since = 0.0  # time.monotonic() it was given
        self._own_voice: OwnVoiceOutput | None = None
        self._utterances: deque[_Utterance] = deque()
        self._capturing: _Utterance | None = None
        self._first_audio_reported: set[SinkKind] = set()
        self._closing_own_voice: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def _sink(self) -> _Sink | None:
        """Where speech goes now."""
        return self._current

    @_sink.setter
    def _sink(self, sink: _Sink | None) -> None:
        self._current = sink
        self._sink_changed.set()

    def _new_sink(self, output: AudioOutput, kind: SinkKind, name: str) -> _Sink:
        return _Sink(
            output,
            kind,
            name,
            late_confirmation=self._late_confirmation,
            on_confirmation_lost=self._on_confirmation_lost,
        )

    # -- where speech goes ---------------------------------------------------------------------

    @property
    def route(self) -> Route:
        return "held" if self._sink is None else self._sink.kind

    def to_avatar(self, output: AudioOutput, identity: str) -> None:
        """Send speech to this avatar: now if nothing is playing, else from the next utterance."""
        if self._closed:
            return
        sink = self._new_sink(output, "avatar", identity)
        if self._next_avatar is not None:
            self._next_avatar.detach()
        self._next_avatar = sink
        self._next_avatar_since = time.monotonic()
        if (
            self._sink is None
            or not self._playing_on(self._sink)
            or self._own_voice_unheard(self._sink)
        ):
            self._take_next_avatar()

    def speaks_through(self, identity: str) -> bool:
        """Speech goes to the avatar `identity` (every earlier sink has played out)."""
        sink = self._sink
        return sink is not None and sink.kind == "avatar" and sink.name == identity

    async def until_speaking_through(self, identity: str) -> None:
        """Until speech goes to the avatar `identity` (after `to_avatar`, at a pause in speech)."""
        while not self.speaks_through(identity):
            self._sink_changed.clear()
            await self._sink_changed.wait()

    def drop_avatar(self, identity: str) -> None:
        """The avatar `identity`, waiting to take over, is gone: speech stays where it is."""
        if self._next_avatar is not None and self._next_avatar.name == identity:
            self._next_avatar.detach()
            self._next_avatar = None

    def to_own_voice(self) -> None:
        """Speak in the agent's own track from now on; what the avatar had not played is replayed.

        An own voice that failed (its track could not be published) is replaced by a new one."""
        if self._closed:
            return
        if self._next_avatar is not None:
            self._next_avatar.detach()
            self._next_avatar = None
        if self._sink is not None and self._sink.kind == "own_voice":
            if not self._sink.failed:
                return
            self._release_own_voice()
        self._keep_own_voice()
        old = self._sink
        if self._own_voice is None:
            self._own_voice = self._new_own_voice()
        self._sink = self._new_sink(self._own_voice.output, "own_voice", "agent")
        now = time.time()
        for utterance in self._pending():
            if utterance.cleared:
                if utterance.task is not None:
                    utterance.task.cancel()
                self._finish(utterance, utterance.heard(now), interrupted=True)
            elif utterance.sink is old and old is not None:
                self._move(utterance, now)
            elif utterance.sink is None:
                self._play(utterance, self._sink, first_index=0)
        if old is not None:
            old.detach()

    def _playing_on(self, sink: _Sink) -> bool:
        return any(u.sink is sink for u in self._pending())

    def _pending(self) -> list[_Utterance]:
        return [u for u in self._utterances if not u.done.is_set()]

    def _own_voice_unheard(self, sink: _Sink) -> bool:
        """The own voice has been given speech it has not begun (its track is still being
        published, or nobody has subscribed yet): an avatar can take all of it now."""
        return (
            self._handover_pause is not None
            and sink.kind == "own_voice"
            and not sink.opened_segment()
            and all(u.sent == u.first_index for u in self._pending() if u.sink is sink)
        )

    def _take_next_avatar(self) -> None:
        sink, self._next_avatar = self._next_avatar, None
        if sink is None:
            return
        old = self._sink
        self._sink = sink
        for utterance in self._pending():
            if (
                utterance.sink is old
                and old is not None
                and utterance.sent == utterance.first_index
            ):
                if utterance.task is not None:
                    utterance.task.cancel()  # it waits for the own voice: nothing of it was heard
                self._play(utterance, sink, first_index=utterance.first_index)
            elif utterance.sink is None:
                self._play(utterance, sink, first_index=0)
        if old is not None:
            old.detach()
            if old.kind == "own_voice":
                self._release_own_voice()

    def _release_own_voice(self) -> asyncio.Task[None] | None:
        self._keep_own_voice()
        own, self._own_voice = self._own_voice, None
        if own is None:
            return None
        task = asyncio.create_task(own.aclose(), name="own-voice-close")
        self._closing_own_voice.add(task)
        task.add_done_callback(self._closing_own_voice.discard)
        return task

    def _release_own_voice_once_avatar_plays(self, avatar: _Sink) -> None:
        """After a handover: the own track goes once the avatar's output says it plays (or after
        `_unpublish_wait`); the own voice has played out by then. Until it goes, a lost avatar
        gives the speech back to it at once."""
        if self._own_voice is None:
            return

        async def release() -> None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._unpublish_wait):
                    await avatar.reported_start.wait()
            self._release_after_handover = None
            self._release_own_voice()

        self._keep_own_voice()
        self._release_after_handover = asyncio.create_task(release(), name="own-voice-release")

    def _keep_own_voice(self) -> None:
        """The own voice is wanted again (or closed now): no release after a handover."""
        pending, self._release_after_handover = self._release_after_handover, None
        if pending is not None and pending is not asyncio.current_task():
            pending.cancel()

    def _move(self, utterance: _Utterance, now: float) -> None:
        """Re-route an utterance from a sink that is gone to the current one."""
        assert self._sink is not None
        if utterance.task is not None:
            utterance.task.cancel()
        played_for = now - utterance.sink_started_at if utterance.sink_started_at else 0.0
        if (
            utterance.flushed
            and utterance.sent == len(utterance.frames)
            and utterance.sink_started_at is not None
            and utterance.stopped_at is None
            and played_for >= utterance.duration - utterance.offset
        ):
            # The old sink had the time to play all of it: nothing to repeat.
            self._finish(utterance, utterance.duration, interrupted=False)
            return
        # Never before where the lost sink began: what came before was played by the one before
        # it, to the end (an avatar that took over from the own voice at a pause, say).
        replay = max(utterance.first_index, utterance.replay_index(utterance.heard(now)))
        self._play(utterance, self._sink, first_index=replay)

    # -- the AudioOutput interface -------------------------------------------------------------

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        utterance = self._capturing
        if utterance is None:
            utterance = _Utterance()
            self._capturing = utterance
            self._utterances.append(utterance)
            if self._next_avatar is not None and (
                self._sink is None or not self._playing_on(self._sink)
            ):
                self._take_next_avatar()
            if self._sink is not None:
                self._play(utterance, self._sink, first_index=0)
        if not utterance.cleared:
            utterance.append(frame)

    def flush(self) -> None:
        super().flush()
        utterance, self._capturing = self._capturing, None
        if utterance is not None:
            utterance.flushed = True
            utterance.more.set()
            if self._closed:  # the job is over: nowhere to play it
                self._finish(utterance, 0.0, interrupted=True)

    def clear_buffer(self) -> None:
        for utterance in self._pending():
            if utterance.cleared:
                continue
            utterance.cleared = True
            utterance.more.set()
            if utterance.task is not None:
                utterance.task.cancel()
            utterance.task = asyncio.create_task(self._clear(utterance), name="speech-clear")

    async def aclose(self) -> None:
        """Stop every playout and unpublish the agent's own track if it is up. Afterwards no sink
        is taken again and speech still captured ends at once, unheard."""
        self._closed = True
        for utterance in self._pending():
            if utterance.task is not None:
                utterance.task.cancel()
            self._finish(utterance, utterance.heard(time.time()), interrupted=True)
        for sink in (self._sink, self._next_avatar):
            if sink is not None:
                sink.detach()
        self._sink = self._next_avatar = None
        self._keep_own_voice()
        if self._own_voice is not None:
            await self._own_voice.aclose()
            self._own_voice = None
        await asyncio.gather(*self._closing_own_voice, return_exceptions=True)

    # -- playing one utterance on one sink -----------------------------------------------------

    def _play(self, utterance: _Utterance, sink: _Sink, *, first_index: int) -> None:
        utterance.sink = sink
        utterance.first_index = utterance.sent = first_index
        utterance.sink_started_at = None
        utterance.stopped_at = None
        utterance.sink_flushed = False
        utterance.confirmation = None
        previous = self._previous(utterance)
        utterance.task = asyncio.create_task(
            self._playout(utterance, sink, previous), name=f"speech-to-{sink.kind}"
        )

    def _previous(self, utterance: _Utterance) -> _Utterance | None:
        earlier = None
        for other in self._utterances:
            if other is utterance:
                return earlier
            if not other.done.is_set():
                earlier = other
        return earlier

    async def _playout(
        self, utterance: _Utterance, sink: _Sink, previous: _Utterance | None
    ) -> None:
        if previous is not None:
            await previous.done.wait()  # one utterance at a time per sink, in order
        sink.on_started = lambda at: self._sink_started(utterance, sink, at)
        try:
            while True:
                while utterance.sent < len(utterance.frames):
                    resume = self._handover_point(utterance, sink)
                    if resume is not None:
                        await self._hand_over(utterance, sink, resume)
                        return
                    await self._keep_pace(utterance, sink)
                    frame = utterance.frames[utterance.sent]
                    await self._capture(sink, frame)
                    if utterance.sent == utterance.first_index:
                        utterance.confirmation = sink.claim_segment()
                        self._first_audio(sink)
                        if utterance.sink_started_at is None:
                            self._sink_started(utterance, sink, time.time())
                    utterance.sent += 1
                if utterance.flushed:
                    break
                utterance.more.clear()
                await utterance.more.wait()
            if utterance.sent == utterance.first_index:
                self._finish(utterance, utterance.duration, interrupted=False)
                return
            sink.output.flush()
            utterance.sink_flushed = True
            confirmation = utterance.confirmation
            started = utterance.sink_started_at or time.time()
            due = started + (utterance.duration - utterance.offset) - time.time()
            # a sink that counts no segment cannot confirm one: it has the same time to play it
            awaited = confirmation or asyncio.get_running_loop().create_future()
            try:
                event = await asyncio.wait_for(
                    asyncio.shield(awaited), max(0.0, due) + self._playout_grace
                )
            except TimeoutError:
                if confirmation is not None:
                    sink.give_up(confirmation)
                logger.warning(
                    "the %s did not confirm the end of an utterance %.1fs after it was due; "
                    "the conversation goes on",
                    sink.kind,
                    self._playout_grace,
                    extra={"sink": sink.name},
                )
                if self._on_unconfirmed is not None:
                    self._on_unconfirmed(sink.kind, utterance.duration)
                self._finish(utterance, utterance.duration, interrupted=False)
                return
            position = utterance.offset + event.playback_position
            if event.interrupted and sink.kind == "avatar" and not utterance.cleared:
                # An avatar going away may say so as it leaves (a goodbye before its room closes):
                # the rest is not lost, it goes to the agent's own voice like any avatar failure.
                utterance.stopped_at = position
                raise AvatarStoppedSpeechError(
                    f"the avatar stopped at {position:.2f}s of the utterance, unasked"
                )
            self._finish(utterance, position, interrupted=event.interrupted)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            first_failure, sink.failed = not sink.failed, True
            logger.log(
                logging.ERROR if first_failure else logging.DEBUG,
                "speech to the %s failed: %r",
                sink.kind,
                error,
                extra={"sink": sink.name},
            )
            if self._on_sink_failed is not None and sink is self._sink and first_failure:
                self._on_sink_failed(sink.kind, error)  # may move this utterance elsewhere
            if utterance.sink is sink:
                self._finish(utterance, utterance.heard(time.time()), interrupted=True)

    def _handover_point(self, utterance: _Utterance, sink: _Sink) -> int | None:
        """Where an avatar waiting to take over from the own voice goes on in this utterance, if
        it can now: at its start (nothing of it played yet), or in (or just after) a long enough
        pause once the avatar has been ready `handover_settle` seconds."""
        if (
            self._handover_pause is None
            or self._next_avatar is None
            or sink is not self._sink
            or sink.kind != "own_voice"
            or utterance.cleared
        ):
            return None
        if utterance.sent == utterance.first_index:
            return utterance.sent
        if time.monotonic() - self._next_avatar_since < self._handover_settle:
            return None
        return utterance.pause_at(
            utterance.sent, at_least=self._handover_pause, floor=utterance.first_index
        )

    async def _keep_pace(self, utterance: _Utterance, sink: _Sink) -> None:
        """The own voice takes speech faster than real time and queues it; an avatar can only take
        over from what is not queued yet. So it is fed `_OWN_VOICE_AHEAD` ahead of its playout."""
        if self._handover_pause is None or sink.kind != "own_voice":
            return
        if utterance.sink_started_at is None:
            return
        played = time.time() - utterance.sink_started_at
        ahead = utterance.offset_of(utterance.sent) - utterance.offset - played
        if ahead > _OWN_VOICE_AHEAD:
            await asyncio.sleep(ahead - _OWN_VOICE_AHEAD)  # real-time pacing of audio

    async def _hand_over(self, utterance: _Utterance, own: _Sink, resume: int) -> None:
        """End the own voice's part of the utterance here, let it play out, then go on from
        `resume` on the avatar and take the own voice's track down."""
        confirmation = utterance.confirmation
        flushed_at = time.monotonic()
        if utterance.sent > utterance.first_index:
            own.output.flush()
            utterance.sink_flushed = True
        if confirmation is not None:
            # The avatar's first word must not play over the own voice's last one.
            started = utterance.sink_started_at or time.time()
            due = started + (utterance.offset_of(utterance.sent) - utterance.offset) - time.time()
            try:
                await asyncio.wait_for(
                    asyncio.shield(confirmation), max(0.0, due) + self._playout_grace
                )
            except TimeoutError:
                own.give_up(confirmation)
        played_at = time.monotonic()
        if confirmation is not None:
            # The own voice's last audio is still on its way to the user (its latency grows with
            # load: 0.33 s was seen against an avatar path of 0.30 s, which overlapped).
            await asyncio.sleep(_HANDOVER_MARGIN)  # a timed hold of audio, not a wait for an event
        if self._closed:
            return
        if self._next_avatar is None or self._sink is not own:
            # The avatar went away meanwhile: the agent's own voice goes on where it stopped.
            self._own_voice_again(utterance, own)
            return
        avatar, self._next_avatar = self._next_avatar, None
        self._sink = avatar
        logger.info(
            "the avatar takes over from the agent's own voice at %.2fs of the utterance",
            utterance.offset_of(utterance.sent),
            extra={
                "sink": avatar.name,
                "handover_at": round(utterance.offset_of(utterance.sent), 3),
                "resumed_at": round(utterance.offset_of(resume), 3),
                # the silence the speech itself has there (what a handover gap is measured against)
                "natural_pause": round(
                    utterance.pause_length(utterance.sent, floor=utterance.first_index), 3
                ),
                # time.monotonic() of each step (the bench sets them against what the user heard)
                "handover_clock": {
                    "own_flushed": flushed_at,
                    "own_played": played_at,
                    "avatar_sent": time.monotonic(),
                },
            },
        )
        self._play(utterance, avatar, first_index=resume)
        self._move_waiting(utterance, own, avatar)
        own.detach()
        # A frontend plays the agent's own track rather than its avatar's while it is up (as
        # LiveKit's components do): it goes while the avatar's first audio (the pause's last
        # 60 ms, then the next word) is on its way; waiting for the unpublish before sending it
        # added the unpublish's time to the silence at the switch.
        self._release_own_voice_once_avatar_plays(avatar)

    def _move_waiting(self, playing: _Utterance, old: _Sink, new: _Sink) -> None:
        """Utterances queued on `old` behind `playing` (none of them begun) go to `new`."""
        for waiting in self._pending():
            if waiting is not playing and waiting.sink is old:
                if waiting.task is not None:
                    waiting.task.cancel()
                self._play(waiting, new, first_index=waiting.first_index)

    def _own_voice_again(self, utterance: _Utterance, own: _Sink) -> None:
        """A handover that did not happen: the utterance goes on in the agent's own voice from
        where it stopped, on a new track if the old one was already being taken down."""
        if self._sink is own and self._own_voice is not None:
            self._play(utterance, own, first_index=utterance.sent)
            return
        if self._own_voice is None:
            self._own_voice = self._new_own_voice()
        sink = self._new_sink(self._own_voice.output, "own_voice", "agent")
        if self._sink is own:
            self._sink = sink
        own.detach()
        self._play(utterance, sink, first_index=utterance.sent)
        self._move_waiting(utterance, own, sink)

    async def _capture(self, sink: _Sink, frame: rtc.AudioFrame) -> None:
        try:
            async with asyncio.timeout(self._capture_timeout):
                await sink.output.capture_frame(frame)
        except TimeoutError:
            raise SinkStalledError(
                f"the {sink.kind} took no audio for {self._capture_timeout:.0f}s"
            ) from None

    def _sink_started(self, utterance: _Utterance, sink: _Sink, at: float) -> None:
        if utterance.sink is not sink or utterance.sink_started_at is not None:
            return
        utterance.sink_started_at = at
        if not utterance.reported_start:
            utterance.reported_start = True
            self.on_playback_started(created_at=at)

    def _first_audio(self, sink: _Sink) -> None:
        if sink.kind not in self._first_audio_reported:
            self._first_audio_reported.add(sink.kind)
            if self._on_first_audio is not None:
                self._on_first_audio(sink.kind)

    async def _clear(self, utterance: _Utterance) -> None:
        sink = utterance.sink
        confirmation = utterance.confirmation
        if sink is not None and confirmation is None:
            # cut off in the middle of its first frame: the sink may have opened the segment
            confirmation = utterance.confirmation = sink.claim_segment()
        if sink is None or confirmation is None:
            self._finish(utterance, utterance.offset, interrupted=True)
            return
        try:
            if not utterance.sink_flushed:
                utterance.sink_flushed = True
                sink.output.flush()  # a sink ends a segment on flush; the clear then interrupts it
            sink.output.clear_buffer()
        except Exception as error:
            logger.warning("clearing the %s failed: %r", sink.kind, error)
        position = utterance.heard(time.time())
        try:
            event = await asyncio.wait_for(asyncio.shield(confirmation), self._clear_timeout)
            position = utterance.offset + event.playback_position
        except (TimeoutError, asyncio.CancelledError):
            sink.give_up(confirmation)
        self._finish(utterance, position, interrupted=True)

    def _finish(self, utterance: _Utterance, position: float, *, interrupted: bool) -> None:
        if utterance.done.is_set():
            return
        utterance.done.set()
        with contextlib.suppress(ValueError):
            self._utterances.remove(utterance)
        self.on_playback_finished(
            playback_position=min(max(position, 0.0), utterance.duration), interrupted=interrupted
        )
        if (
            self._next_avatar is not None
            and self._sink is not None
            and not self._playing_on(self._sink)
        ):
            self._take_next_avatar()
