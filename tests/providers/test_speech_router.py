"""The speech router on its own: held speech, failover with replay, bounded playouts, handover.

The sinks here stand in for the avatar's data stream and the agent's own track: they record what
they are given and answer playback events when the test says so, as a remote avatar would.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import numpy as np
import pytest
from livekit import rtc
from livekit.agents.voice.io import AudioOutput, AudioOutputCapabilities, PlaybackFinishedEvent

from providers.speech_router import SinkKind, SpeechRouter

RATE = 16000
FRAME_S = 0.02
# How long a test waits for what must happen before calling it hung. Only a guard: timings that
# matter are asserted as lower bounds (a loaded machine can only make things later).
HANG = 10.0


class Changes:
    """Wakes a test waiting on what the fake sinks saw."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()

    async def until(self, condition: Callable[[], bool], timeout: float = HANG) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                self._event.clear()
                await self._event.wait()


async def run_ready_tasks(rounds: int = 50) -> None:
    """Let every task that can make progress now do so (nothing here waits on a clock), so that
    what has not happened after this will not happen without a new cause."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def frame(level: int) -> rtc.AudioFrame:
    samples = np.full(int(RATE * FRAME_S), level, dtype=np.int16)
    return rtc.AudioFrame(samples.tobytes(), RATE, 1, samples.size)


class RecordingSink(AudioOutput):
    """Records segments; says playback started at its first frame; finishes when told."""

    def __init__(self, changes: Changes, *, started_ago: float = 0.0) -> None:
        super().__init__(label="test-sink", capabilities=AudioOutputCapabilities(pause=False))
        self._changes = changes
        self.segments: list[list[rtc.AudioFrame]] = []
        self.flushes = 0
        self.clears = 0
        self.answer_clears = True
        self.started_ago = started_ago
        self.reports_start = True  # says playback started at its first frame (else: when told)
        self.refusal: Exception | None = None  # raised by every capture, as a track not published
        self.stalled = False  # never takes a frame
        self._open = False

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        if self.refusal is not None:
            raise self.refusal
        if self.stalled:
            await asyncio.Event().wait()
        await super().capture_frame(frame)
        if not self._open:
            self._open = True
            self.segments.append([])
            if self.reports_start:
                self.on_playback_started(created_at=time.time() - self.started_ago)
        self.segments[-1].append(frame)
        self._changes.notify()

    def flush(self) -> None:
        super().flush()
        self._open = False
        self.flushes += 1
        self._changes.notify()

    def clear_buffer(self) -> None:
        self.clears += 1
        if self.answer_clears:
            self.finish(0.3, interrupted=True)

    def finish(self, position: float, *, interrupted: bool = False) -> None:
        self.on_playback_finished(playback_position=position, interrupted=interrupted)


class FakeOwnVoice:
    def __init__(self, changes: Changes) -> None:
        self._changes = changes
        self.output = RecordingSink(changes)
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True
        self._changes.notify()


class Harness:
    def __init__(
        self,
        *,
        playout_grace: float = 2.0,
        clear_timeout: float = 2.0,
        late_confirmation: float = 5.0,
        capture_timeout: float = 10.0,
        handover_pause: float | None = None,
        handover_settle: float = 0.0,
        unpublish_wait: float = 0.25,
        own_voice_on_failure: bool = False,
    ) -> None:
        self.changes = Changes()  # made in the test's loop: an Event belongs to one loop
        self.until = self.changes.until
        self.own_voices: list[FakeOwnVoice] = []
        self.unconfirmed: list[SinkKind] = []
        self.first_audio: list[SinkKind] = []
        self.lost_confirmations: list[SinkKind] = []
        self.failures: list[tuple[SinkKind, BaseException]] = []
        self.failing_own_voices = 0  # how many of the next own voices cannot publish
        # as the supervisor does: a failed avatar is lost, and the agent speaks in its own voice
        self.own_voice_on_failure = own_voice_on_failure
        self.router = SpeechRouter(
            rtc.Room(),
            sample_rate=RATE,
            own_voice=self._own_voice,
            playout_grace=playout_grace,
            clear_timeout=clear_timeout,
            late_confirmation=late_confirmation,
            capture_timeout=capture_timeout,
            on_sink_failed=self._sink_failed,
            on_confirmation_lost=self._confirmation_lost,
            on_unconfirmed=lambda kind, _: self.unconfirmed.append(kind),
            on_first_audio=self.first_audio.append,
            handover_pause=handover_pause,
            handover_settle=handover_settle,
            unpublish_wait=unpublish_wait,
        )

    def _sink_failed(self, kind: SinkKind, error: BaseException) -> None:
        self.failures.append((kind, error))
        if self.own_voice_on_failure and kind == "avatar":
            self.router.to_own_voice()

    def _confirmation_lost(self, kind: SinkKind) -> None:
        self.lost_confirmations.append(kind)
        self.changes.notify()

    def _own_voice(self) -> FakeOwnVoice:
        voice = FakeOwnVoice(self.changes)
        if self.failing_own_voices > 0:
            self.failing_own_voices -= 1
            voice.output.refusal = RuntimeError("the track could not be published")
        self.own_voices.append(voice)
        return voice

    def sink(self, *, started_ago: float = 0.0) -> RecordingSink:
        return RecordingSink(self.changes, started_ago=started_ago)

    async def say(self, levels: list[int]) -> None:
        for level in levels:
            await self.router.capture_frame(frame(level))
        self.router.flush()


def levels_of(frames: list[rtc.AudioFrame]) -> list[int]:
    return [int(np.frombuffer(f.data, dtype=np.int16)[0]) for f in frames]


async def test_speech_before_any_sink_is_held_then_played_whole() -> None:
    harness = Harness()
    router = harness.router
    await harness.say(list(range(1, 11)))
    assert router.route == "held"
    playout = asyncio.create_task(router.wait_for_playout())
    await run_ready_tasks()
    assert not playout.done()  # nothing can have played: nowhere to play it

    avatar = harness.sink()
    router.to_avatar(avatar, "avatar-1")
    await harness.until(lambda: avatar.flushes == 1)
    assert levels_of(avatar.segments[0]) == list(range(1, 11))
    assert harness.first_audio == ["avatar"]
    avatar.finish(0.2)
    event = await asyncio.wait_for(playout, HANG)
    assert event.playback_position == pytest.approx(0.2)
    assert event.interrupted is False


async def test_a_lost_avatar_hands_the_unheard_rest_to_the_agents_voice_from_a_pause() -> None:
    harness = Harness()
    router = harness.router
    # The avatar says it began 1.5 s ago: the user heard about 1.5 s of this 2 s utterance.
    avatar = harness.sink(started_ago=1.5)
    router.to_avatar(avatar, "avatar-1")
    levels = [3000] * 100
    levels[20] = 5  # a pause at 0.40 s, within the replay window before 1.5 - 1.0 = 0.5 s
    await harness.say(levels)
    await harness.until(lambda: avatar.flushes == 1)

    router.to_own_voice()
    assert router.route == "own_voice"
    own = harness.own_voices[0].output
    await harness.until(lambda: own.flushes == 1)
    assert levels_of(own.segments[0]) == levels[20:]  # replayed from the pause
    avatar.finish(2.0)  # a late answer from the old avatar is not taken for the replay's
    playout = asyncio.create_task(router.wait_for_playout())
    await run_ready_tasks()
    assert not playout.done()
    own.finish(1.6)
    event = await asyncio.wait_for(playout, HANG)
    assert event.playback_position == pytest.approx(0.4 + 1.6)
    assert not event.interrupted


async def test_a_lost_avatar_that_had_time_to_play_everything_repeats_nothing() -> None:
    harness = Harness()
    avatar = harness.sink(started_ago=5.0)
    harness.router.to_avatar(avatar, "avatar-1")
    await harness.say([3000] * 10)
    await harness.until(lambda: avatar.flushes == 1)
    harness.router.to_own_voice()
    event = await asyncio.wait_for(harness.router.wait_for_playout(), HANG)
    assert not event.interrupted
    await run_ready_tasks()
    assert harness.own_voices[0].output.segments == []


async def test_an_avatar_that_ends_an_utterance_unasked_leaves_the_rest_to_the_agents_voice() -> (
    None
):
    # An avatar going away may report the utterance interrupted as it leaves. Nobody asked it to
    # stop, so the user must still hear the rest, from a pause before where the avatar stopped.
    harness = Harness(own_voice_on_failure=True)
    router = harness.router
    avatar = harness.sink(started_ago=5.0)  # by the clock alone, all 2 s were heard
    router.to_avatar(avatar, "avatar-1")
    levels = [3000] * 100
    levels[8] = 5  # a pause at 0.16 s, in the replay window before 1.2 - 1.0 = 0.2 s
    await harness.say(levels)
    await harness.until(lambda: avatar.flushes == 1)
    playout = asyncio.create_task(router.wait_for_playout())

    avatar.finish(1.2, interrupted=True)
    await harness.until(
        lambda: bool(harness.own_voices) and harness.own_voices[0].output.flushes == 1
    )
    assert [kind for kind, _ in harness.failures] == ["avatar"]
    assert "unasked" in str(harness.failures[0][1])
    own = harness.own_voices[0].output
    assert levels_of(own.segments[0]) == levels[8:]  # from the pause before where it stopped
    assert not playout.done()
    own.finish(1.84)
    event = await asyncio.wait_for(playout, HANG)
    assert event.playback_position == pytest.approx(0.16 + 1.84)
    assert not event.interrupted


async def test_an_avatar_that_never_confirms_a_playout_cannot_wedge_the_turn() -> None:
    harness = Harness(playout_grace=0.2)
    avatar = harness.sink()
    harness.router.to_avatar(avatar, "avatar-1")
    started = time.monotonic()
    await harness.say([3000] * 5)  # 0.1 s of speech, never confirmed
    event = await asyncio.wait_for(harness.router.wait_for_playout(), HANG)
    assert time.monotonic() - started >= 0.25  # the grace, after the 0.1 s the audio lasts
    assert event.playback_position == pytest.approx(0.1)
    assert event.interrupted is False
    assert harness.unconfirmed == ["avatar"]
    # the next utterance is not held up by the missing answer
    await harness.say([3000] * 5)
    await harness.until(lambda: len(avatar.segments) == 2)


async def test_an_interruption_of_held_speech_ends_it_at_once() -> None:
    harness = Harness()
    await harness.say([3000] * 5)
    harness.router.clear_buffer()
    event = await asyncio.wait_for(harness.router.wait_for_playout(), HANG)
    assert (event.playback_position, event.interrupted) == (0.0, True)


async def test_an_interruption_waits_for_the_sinks_answer_but_not_forever() -> None:
    harness = Harness(clear_timeout=0.3)
    avatar = harness.sink()
    harness.router.to_avatar(avatar, "avatar-1")
    await harness.say([3000] * 50)
    await harness.until(lambda: avatar.flushes == 1)
    harness.router.clear_buffer()
    event = await asyncio.wait_for(harness.router.wait_for_playout(), HANG)
    assert event.playback_position == pytest.approx(0.3)
    assert event.interrupted is True

    avatar.answer_clears = False  # a lost answer to lk.clear_buffer
    await harness.say([3000] * 50)
    await harness.until(lambda: avatar.flushes == 2)
    started = time.monotonic()
    harness.router.clear_buffer()
    event = await asyncio.wait_for(harness.router.wait_for_playout(), HANG)
    assert event.interrupted
    assert time.monotonic() - started >= 0.25  # it waited for the answer up to the clear timeout


async def test_a_new_avatar_takes_over_between_utterances_and_the_agents_track_goes() -> None:
    harness = Harness()
    router = harness.router
    router.to_own_voice()  # the avatar failed to start
    await harness.say([1] * 5)
    own_voice = harness.own_voices[0]
    await harness.until(lambda: own_voice.output.flushes == 1)

    avatar = harness.sink()
    router.to_avatar(avatar, "avatar-2")  # back while the agent's own voice speaks
    assert str(router.route) == "own_voice"
    await run_ready_tasks()
    assert avatar.segments == []  # not within an utterance
    own_voice.output.finish(0.1)
    await harness.until(lambda: own_voice.closed)
    assert router.route == "avatar"

    await harness.say([2] * 5)
    await harness.until(lambda: avatar.flushes == 1)
    assert levels_of(avatar.segments[0]) == [2] * 5
    assert len(own_voice.output.segments) == 1


async def test_an_avatar_chosen_while_idle_takes_over_at_once() -> None:
    harness = Harness()
    harness.router.to_own_voice()
    avatar = harness.sink()
    harness.router.to_avatar(avatar, "avatar-2")
    assert harness.router.route == "avatar"
    await harness.until(lambda: harness.own_voices[0].closed)


async def test_speech_captured_after_an_interruption_is_not_played() -> None:
    harness = Harness()
    avatar = harness.sink()
    harness.router.to_avatar(avatar, "avatar-1")
    await harness.router.capture_frame(frame(1))
    await harness.until(lambda: len(avatar.segments) == 1)
    harness.router.clear_buffer()
    await harness.router.capture_frame(frame(2))
    harness.router.flush()
    event: PlaybackFinishedEvent = await asyncio.wait_for(harness.router.wait_for_playout(), HANG)
    assert event.interrupted
    assert levels_of(avatar.segments[0]) == [1]


# -- confirmations belong to segments, in order -----------------------------------------------


async def test_a_confirmation_that_comes_after_the_grace_does_not_end_the_next_utterance() -> None:
    harness = Harness(playout_grace=0.2)
    router = harness.router
    avatar = harness.sink()
    router.to_avatar(avatar, "avatar-1")
    await harness.say([3000] * 5)  # U: 0.1 s, its confirmation late
    await asyncio.wait_for(router.wait_for_playout(), HANG)
    assert harness.unconfirmed == ["avatar"]

    await harness.say([3000] * 100)  # V: 2 s, so its own grace is far off
    await harness.until(lambda: avatar.flushes == 2)
    playout = asyncio.create_task(router.wait_for_playout())
    avatar.finish(0.1)  # U's, late
    await run_ready_tasks()
    assert not playout.done()  # V is not over because U's answer came
    avatar.finish(1.5)  # V's own
    event = await asyncio.wait_for(playout, HANG)
    assert event.playback_position == pytest.approx(1.5)


async def test_a_late_answer_to_an_interruption_does_not_end_the_next_utterance() -> None:
    harness = Harness(clear_timeout=0.2)
    router = harness.router
    avatar = harness.sink()
    avatar.answer_clears = False  # the answer to the clear comes, but after the router gave up
    router.to_avatar(avatar, "avatar-1")
    await harness.say([3000] * 50)  # U
    await harness.until(lambda: avatar.flushes == 1)
    router.clear_buffer()
    event = await asyncio.wait_for(router.wait_for_playout(), HANG)
    assert event.interrupted

    await harness.say([3000] * 100)  # V
    await harness.until(lambda: avatar.flushes == 2)
    playout = asyncio.create_task(router.wait_for_playout())
    avatar.finish(0.4, interrupted=True)  # U's, late
    await run_ready_tasks()
    assert not playout.done()
    avatar.finish(2.0)  # V's own
    event = await asyncio.wait_for(playout, HANG)
    assert event.playback_position == pytest.approx(2.0)
    assert event.interrupted is False


async def test_a_confirmation_given_up_on_long_ago_no_longer_holds_a_place() -> None:
    """An avatar that never confirms U must not shift every later confirmation by one."""
    harness = Harness(playout_grace=0.1, late_confirmation=0.3)
    router = harness.router
    avatar = harness.sink()
    router.to_avatar(avatar, "avatar-1")
    await harness.say([3000] * 5)  # U, never confirmed
    await asyncio.wait_for(router.wait_for_playout(), HANG)
    forgotten = time.monotonic()
    await harness.until(lambda: harness.lost_confirmations == ["avatar"])
    assert time.monotonic() - forgotten >= 0.25

    await harness.say([3000] * 100)  # V
    await harness.until(lambda: avatar.flushes == 2)
    avatar.finish(0.7)  # V's
    event = await asyncio.wait_for(router.wait_for_playout(), HANG)
    assert event.playback_position == pytest.approx(0.7)
    assert event.interrupted is False


# -- after the job ---------------------------------------------------------------------------


async def test_after_close_no_sink_is_taken_and_no_own_track_is_made() -> None:
    harness = Harness()
    router = harness.router
    await router.aclose()
    router.to_own_voice()
    router.to_avatar(avatar := harness.sink(), "avatar-2")
    assert harness.own_voices == []
    assert router.route == "held"
    # speech that still comes (the session's last words) ends at once, unheard
    await harness.say([3000] * 5)
    event = await asyncio.wait_for(router.wait_for_playout(), HANG)
    assert (event.playback_position, event.interrupted) == (0.0, True)
    assert avatar.segments == []


# -- sinks that fail or stall ----------------------------------------------------------------


async def test_an_own_voice_that_fails_ends_each_turn_unheard_says_so_once_and_is_replaced() -> (
    None
):
    harness = Harness()
    harness.failing_own_voices = 1
    router = harness.router
    router.to_own_voice()
    for _ in range(2):
        await harness.say([3000] * 5)
        event = await asyncio.wait_for(router.wait_for_playout(), HANG)
        assert (event.playback_position, event.interrupted) == (0.0, True)
    assert [kind for kind, _ in harness.failures] == ["own_voice"]

    router.to_own_voice()  # try again: a new own voice, the failed one closed
    assert len(harness.own_voices) == 2
    await harness.until(lambda: harness.own_voices[0].closed)
    await harness.say([7] * 5)
    fresh = harness.own_voices[1].output
    await harness.until(lambda: fresh.flushes == 1)
    assert levels_of(fresh.segments[0]) == [7] * 5
    fresh.finish(0.1)
    event = await asyncio.wait_for(router.wait_for_playout(), HANG)
    assert event.interrupted is False


async def test_a_sink_that_takes_no_audio_ends_the_turn_after_the_capture_bound() -> None:
    harness = Harness(capture_timeout=0.3)
    router = harness.router
    avatar = harness.sink()
    avatar.stalled = True
    router.to_avatar(avatar, "avatar-1")
    started = time.monotonic()
    await harness.say([3000] * 5)
    event = await asyncio.wait_for(router.wait_for_playout(), HANG)
    assert time.monotonic() - started >= 0.3
    assert event.interrupted is True
    assert [(kind, type(error).__name__) for kind, error in harness.failures] == [
        ("avatar", "SinkStalledError")
    ]


# -- the first word at once: the avatar takes over from the own voice at a sentence's end ----

HANDOVER_PAUSE = 0.25
FIRST = [3000 + n for n in range(25)]  # 0.5 s of speech, each frame told apart by its level
COMMA = [0] * 5  # 0.1 s: too short to hand over at
PAUSE = [0] * 15  # 0.3 s: a sentence's end
SECOND = [5000 + n for n in range(25)]


def without_leading_silence(levels: list[int]) -> tuple[int, list[int]]:
    silent = next((i for i, level in enumerate(levels) if level), len(levels))
    return silent, levels[silent:]


async def test_an_avatar_takes_over_from_the_own_voice_at_the_next_sentence_end() -> None:
    harness = Harness(handover_pause=HANDOVER_PAUSE)
    router = harness.router
    router.to_own_voice()  # the greeting starts before the avatar's video is up
    spoken = FIRST[:10] + COMMA + FIRST[10:] + PAUSE + SECOND
    await harness.say(spoken)
    own = harness.own_voices[0].output
    await harness.until(lambda: len(own.segments) == 1 and len(own.segments[0]) >= 3)

    avatar = harness.sink()
    router.to_avatar(avatar, "avatar-1")  # its video is up, in the first sentence
    await harness.until(lambda: own.flushes == 1)
    heard_in_own_voice = levels_of(own.segments[0])
    assert heard_in_own_voice == FIRST[:10] + COMMA + FIRST[10:]  # up to the sentence's end
    await run_ready_tasks()
    assert avatar.segments == []  # never both voices: the avatar waits for the own voice's end

    own.finish(0.6)
    await harness.until(lambda: avatar.flushes == 1)
    # the avatar's audio goes out as soon as the own voice has played out, not after its track
    # is down; the track goes once the avatar says it plays (the own voice is silent by then)
    await harness.until(lambda: harness.own_voices[0].closed)
    lead, rest = without_leading_silence(levels_of(avatar.segments[0]))
    assert rest == SECOND  # no word cut, none repeated
    assert 0 < lead <= 3  # the pause's last 0.06 s at most: the first word starts whole
    assert router.route == "avatar"
    assert harness.first_audio == ["own_voice", "avatar"]

    avatar.finish(0.3)  # interrupted there, say
    event = await asyncio.wait_for(router.wait_for_playout(), HANG)
    resumed_at = (len(spoken) - len(SECOND) - lead) * FRAME_S
    assert event.playback_position == pytest.approx(resumed_at + 0.3)


@pytest.mark.parametrize("sent_of_the_pause", [8, len(PAUSE)], ids=["within", "just-after"])
async def test_an_avatar_up_when_the_own_voice_is_well_into_a_pause_takes_over_in_it(
    sent_of_the_pause: int,
) -> None:
    """The speech after a pause comes later (the TTS says a sentence at a time), and the avatar's
    video is up when less than the handover pause is left of it: the pause, judged whole, is
    still where it takes over (CI9: it was the next one, 3.8 s later)."""
    harness = Harness(handover_pause=HANDOVER_PAUSE)
    router = harness.router
    router.to_own_voice()
    before = FIRST + PAUSE[:sent_of_the_pause]
    for level in before:
        await router.capture_frame(frame(level))
    own = harness.own_voices[0].output
    await harness.until(lambda: len(own.segments) == 1 and len(own.segments[0]) == len(before))

    avatar = harness.sink()
    router.to_avatar(avatar, "avatar-1")
    for level in PAUSE[sent_of_the_pause:] + SECOND:
        await router.capture_frame(frame(level))
    router.flush()
    await harness.until(lambda: own.flushes == 1)
    assert levels_of(own.segments[0]) == before  # nothing more in the own voice

    own.finish(len(before) * FRAME_S)
    await harness.until(lambda: avatar.flushes == 1)
    lead, rest = without_leading_silence(levels_of(avatar.segments[0]))
    assert rest == SECOND
    assert 0 < lead <= 3
    assert router.route == "avatar"


async def test_with_a_settle_time_a_new_avatar_passes_the_pauses_before_it_is_over() -> None:
    """AVATAR_HANDOVER_SETTLE: an avatar ready just as a sentence ends lets the own voice go on
    through that pause, and takes over at the first one after its settle time."""
    settle = 1.5
    harness = Harness(handover_pause=HANDOVER_PAUSE, handover_settle=settle)
    router = harness.router
    router.to_own_voice()
    before = FIRST + PAUSE
    for level in before:
        await router.capture_frame(frame(level))
    own = harness.own_voices[0].output
    await harness.until(lambda: len(own.segments) == 1 and len(own.segments[0]) == len(before))

    avatar = harness.sink()
    ready_at = time.monotonic()
    router.to_avatar(avatar, "avatar-1")  # just after a sentence's end: it would take over here
    longer = SECOND * 4  # 2 s of speech: the settle time ends in it
    for level in longer + PAUSE + FIRST:
        await router.capture_frame(frame(level))
    router.flush()
    await harness.until(lambda: own.flushes == 1)
    assert time.monotonic() - ready_at >= settle
    assert levels_of(own.segments[0]) == before + longer  # on through the first pause

    own.finish((len(before) + len(longer)) * FRAME_S)
    await harness.until(lambda: avatar.flushes == 1)
    lead, rest = without_leading_silence(levels_of(avatar.segments[0]))
    assert rest == FIRST
    assert 0 < lead <= 3
    assert router.route == "avatar"


async def test_an_avatar_up_before_the_own_voice_spoke_takes_the_whole_utterance() -> None:
    harness = Harness(handover_pause=HANDOVER_PAUSE)
    router = harness.router
    router.to_own_voice()
    own = harness.own_voices[0].output
    own.stalled = True  # its track is not subscribed yet: nothing of the greeting was heard
    await harness.say(FIRST)
    avatar = harness.sink()
    router.to_avatar(avatar, "avatar-1")
    assert router.route == "avatar"
    await harness.until(lambda: avatar.flushes == 1)
    assert levels_of(avatar.segments[0]) == FIRST
    assert own.segments == []
    await harness.until(lambda: harness.own_voices[0].closed)


async def test_an_utterance_without_a_sentence_end_is_finished_by_the_own_voice() -> None:
    harness = Harness(handover_pause=HANDOVER_PAUSE)
    router = harness.router
    router.to_own_voice()
    await harness.say(FIRST + COMMA + FIRST + PAUSE)  # trailing silence is no place to hand over
    own = harness.own_voices[0].output
    await harness.until(lambda: len(own.segments) == 1 and len(own.segments[0]) >= 3)
    avatar = harness.sink()
    router.to_avatar(avatar, "avatar-1")
    await harness.until(lambda: own.flushes == 1)
    assert levels_of(own.segments[0]) == FIRST + COMMA + FIRST + PAUSE
    own.finish(1.3)
    await harness.until(lambda: router.route == "avatar")
    await harness.say(SECOND)  # the next utterance is the avatar's
    await harness.until(lambda: avatar.flushes == 1)
    assert levels_of(avatar.segments[0]) == SECOND
    assert len(own.segments) == 1


async def test_an_interruption_while_the_own_voice_plays_out_before_a_handover_ends_it() -> None:
    harness = Harness(handover_pause=HANDOVER_PAUSE)
    router = harness.router
    router.to_own_voice()
    await harness.say(FIRST + PAUSE + SECOND)
    own = harness.own_voices[0].output
    await harness.until(lambda: len(own.segments) == 1 and len(own.segments[0]) >= 3)
    avatar = harness.sink()
    router.to_avatar(avatar, "avatar-1")
    await harness.until(lambda: own.flushes == 1)  # handing over: waiting for the own voice
    router.clear_buffer()
    event = await asyncio.wait_for(router.wait_for_playout(), HANG)
    assert event.interrupted is True
    assert own.clears == 1
    assert avatar.segments == []  # nothing of the interrupted utterance goes to the avatar
    await harness.until(lambda: router.route == "avatar")
    await harness.say(SECOND)
    await harness.until(lambda: avatar.flushes == 1)
    assert levels_of(avatar.segments[0]) == SECOND


async def test_an_avatar_lost_while_the_own_voice_plays_out_leaves_the_rest_to_the_own_voice() -> (
    None
):
    harness = Harness(handover_pause=HANDOVER_PAUSE)
    router = harness.router
    router.to_own_voice()
    await harness.say(FIRST + PAUSE + SECOND)
    own = harness.own_voices[0].output
    await harness.until(lambda: len(own.segments) == 1 and len(own.segments[0]) >= 3)
    avatar = harness.sink()
    router.to_avatar(avatar, "avatar-1")
    await harness.until(lambda: own.flushes == 1)
    router.to_own_voice()  # the avatar left before it said a word
    own.finish(0.5)
    await harness.until(lambda: own.flushes == 2)
    assert levels_of(own.segments[1]) == PAUSE + SECOND  # on from where it stopped, nothing lost
    assert avatar.segments == []
    assert not harness.own_voices[0].closed
    own.finish(0.8)
    event = await asyncio.wait_for(router.wait_for_playout(), HANG)
    assert event.playback_position == pytest.approx(0.5 + 0.8)
    assert event.interrupted is False


async def handed_over_before_the_avatar_plays() -> tuple[Harness, RecordingSink, RecordingSink]:
    """The own voice played up to the pause, the rest went to an avatar that has not yet said it
    plays. The own-track release waits for that word alone (its bound is longer than any test)."""
    harness = Harness(handover_pause=HANDOVER_PAUSE, unpublish_wait=HANG)
    harness.router.to_own_voice()
    await harness.say(FIRST + PAUSE + SECOND)
    own = harness.own_voices[0].output
    await harness.until(lambda: len(own.segments) == 1 and len(own.segments[0]) >= 3)
    avatar = harness.sink()
    avatar.reports_start = False
    harness.router.to_avatar(avatar, "avatar-1")
    await harness.until(lambda: own.flushes == 1)
    own.finish(0.5)
    await harness.until(lambda: avatar.flushes == 1)  # its audio is out while the track is up
    return harness, own, avatar


async def test_after_a_handover_the_own_track_goes_once_the_avatar_says_it_plays() -> None:
    harness, _, avatar = await handed_over_before_the_avatar_plays()
    await run_ready_tasks()
    # what the own track still had in flight reaches the user whole: it stays up for now
    assert not harness.own_voices[0].closed
    avatar.on_playback_started(created_at=time.time())
    await harness.until(lambda: harness.own_voices[0].closed)
    assert len(harness.own_voices) == 1


async def test_an_avatar_lost_right_after_the_handover_gives_the_rest_back_to_the_own_voice() -> (
    None
):
    harness, own, _ = await handed_over_before_the_avatar_plays()
    router = harness.router
    router.to_own_voice()  # the avatar left before it said it plays
    assert router.route == "own_voice"
    await harness.until(lambda: own.flushes == 2)
    # the same track, still up: no new publish, no silence for one
    assert len(harness.own_voices) == 1 and not harness.own_voices[0].closed
    # on from where the avatar began, at the pause: nothing the own voice said is repeated,
    # nothing after it lost
    lead, rest = without_leading_silence(levels_of(own.segments[1]))
    assert rest == SECOND
    assert 0 < lead <= 3
    await run_ready_tasks()
    assert not harness.own_voices[0].closed  # the release after the handover was called off
    own.finish(len(own.segments[1]) * FRAME_S)  # played to its end
    event = await asyncio.wait_for(router.wait_for_playout(), HANG)
    assert event.interrupted is False
    assert event.playback_position == pytest.approx(len(FIRST + PAUSE + SECOND) * FRAME_S)
