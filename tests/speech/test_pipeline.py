"""The offline voice as a whole, in this process: a microphone in, a loudspeaker out, no room.

The session hears speech with Silero VAD and PocketSphinx, answers with the offline responder and
speaks with eSpeak NG; speaking over a reply interrupts it. The user's speech is recorded (see
tests/support/spoken.py), so what PocketSphinx hears does not vary from run to run.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import psutil
import pytest
from livekit import rtc
from livekit.agents import AgentSession, llm
from livekit.agents.voice import io
from livekit.agents.voice.events import ConversationItemAddedEvent

from assistant import Assistant
from config import Settings
from speech.espeak_tts import EspeakTTS
from speech.pipeline import OFFLINE_GREETING, OfflineVoice, build_voice
from speech.prepared_speech import synthesize
from speech.responder import WHO_AM_I
from speech.sphinx_stt import DECODER_SERVER_ENV, SphinxSTT
from tests.support.spoken import spoken_at

RATE = 16_000  # the recordings' and the decoder's rate: the audio reaches PocketSphinx unchanged
FRAME = RATE // 100


class Microphone(io.AudioInput):
    """10 ms frames in real time: silence, or what `say` was given."""

    def __init__(self) -> None:
        super().__init__(label="test-microphone")
        self._pending: deque[npt.NDArray[np.int16]] = deque()
        self._started_at: float | None = None
        self._sent = 0
        self.said_until = 0.0  # time.monotonic() at the end of the last speech

    def say(self, samples: npt.NDArray[np.int16]) -> None:
        self._pending.extend(np.array_split(samples, max(1, samples.size // FRAME)))

    async def __anext__(self) -> rtc.AudioFrame:
        if self._started_at is None:
            self._started_at = time.monotonic()
        # A microphone delivers a frame every 10 ms, no faster.
        await asyncio.sleep(max(0.0, self._started_at + self._sent / RATE - time.monotonic()))
        if self._pending:
            chunk = self._pending.popleft()
            if not self._pending:
                self.said_until = time.monotonic()
        else:
            chunk = np.zeros(FRAME, dtype=np.int16)
        self._sent += chunk.size
        return rtc.AudioFrame(chunk.tobytes(), RATE, 1, chunk.size)


class Loudspeaker(io.AudioOutput):
    """Plays in real time, as an avatar does: a reply lasts as long as its audio, and a
    clear_buffer stops it there, reported as interrupted."""

    def __init__(self) -> None:
        super().__init__(
            label="test-loudspeaker", capabilities=io.AudioOutputCapabilities(pause=False)
        )
        self.frames: list[rtc.AudioFrame] = []
        self.playing = asyncio.Event()
        self.cleared = asyncio.Event()
        self._segment_started: float | None = None
        self._segment_seconds = 0.0
        self._finish: asyncio.TimerHandle | None = None

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        if self._segment_started is None:
            self._segment_started = time.monotonic()
            self.on_playback_started(created_at=time.time())
        self.frames.append(frame)
        self.playing.set()
        self._segment_seconds += frame.duration

    def flush(self) -> None:
        super().flush()
        if self._segment_started is None:
            return
        remaining = self._segment_started + self._segment_seconds - time.monotonic()
        self._finish = asyncio.get_running_loop().call_later(
            max(0.0, remaining), self._finished, self._segment_seconds, False
        )

    def clear_buffer(self) -> None:
        self.cleared.set()
        if self._segment_started is None:
            return
        if self._finish is not None:
            self._finish.cancel()
        played = min(self._segment_seconds, time.monotonic() - self._segment_started)
        self._finished(played, True)

    def _finished(self, position: float, interrupted: bool) -> None:
        self._segment_started, self._segment_seconds, self._finish = None, 0.0, None
        self.on_playback_finished(playback_position=position, interrupted=interrupted)


class Conversation:
    def __init__(self, session: AgentSession[None], microphone: Microphone) -> None:
        self.session = session
        self.microphone = microphone
        self.items: list[llm.ChatMessage] = []
        self._added = asyncio.Event()
        self._taken: set[str] = set()
        session.on("conversation_item_added", self._on_item)

    def _on_item(self, event: ConversationItemAddedEvent) -> None:
        if isinstance(event.item, llm.ChatMessage):
            self.items.append(event.item)
            self._added.set()

    async def next_message(self, role: str, *, timeout: float = 30.0) -> llm.ChatMessage:
        """The earliest message of `role` added to the conversation and not yet taken."""
        async with asyncio.timeout(timeout):
            while True:
                for item in self.items:
                    if item.role == role and item.id not in self._taken:
                        self._taken.add(item.id)
                        return item
                self._added.clear()
                await self._added.wait()


@pytest.fixture
async def conversation() -> AsyncIterator[Conversation]:
    voice = OfflineVoice()
    session = voice.create_session()
    microphone, loudspeaker = Microphone(), Loudspeaker()
    session.input.audio = microphone
    session.output.audio = loudspeaker
    talk = Conversation(session, microphone)
    await session.start(agent=Assistant())
    try:
        yield talk
    finally:
        await session.aclose()
        assert isinstance(session.stt, SphinxSTT)
        await session.stt.aclose()


def test_auto_is_the_offline_voice_off_livekit_cloud() -> None:
    settings = Settings.model_construct(voice_mode="auto", livekit_url="ws://127.0.0.1:7880")
    voice = build_voice(settings)
    assert isinstance(voice, OfflineVoice)


async def test_a_spoken_question_is_heard_and_answered_aloud(conversation: Conversation) -> None:
    conversation.microphone.say(spoken_at("who are you", RATE))

    question = await conversation.next_message("user")
    answer = await conversation.next_message("assistant")

    assert question.text_content == "who are you"
    assert answer.text_content == WHO_AM_I
    session_output = conversation.session.output.audio
    assert isinstance(session_output, Loudspeaker)
    assert sum(f.duration for f in session_output.frames) > 3.0


async def test_speaking_over_a_reply_interrupts_it(conversation: Conversation) -> None:
    loudspeaker = conversation.session.output.audio
    assert isinstance(loudspeaker, Loudspeaker)
    # As in a room: the greeting first. Interruptions are off while the session's first speech
    # plays (the library's echo-cancellation warm-up), and the greeting cannot be interrupted.
    await OfflineVoice().greet(conversation.session, None)
    greeting = await conversation.next_message("assistant")
    assert greeting.text_content == OFFLINE_GREETING
    loudspeaker.playing.clear()
    conversation.microphone.say(spoken_at("who are you", RATE))
    first = await conversation.next_message("user")
    assert first.text_content == "who are you"
    await asyncio.wait_for(loudspeaker.playing.wait(), 30)

    conversation.microphone.say(spoken_at("hello, who are you?", RATE))
    await asyncio.wait_for(loudspeaker.cleared.wait(), 30)

    cut = await conversation.next_message("assistant")
    assert cut.interrupted
    assert cut.text_content == WHO_AM_I  # with no transcript output, the text is not cut
    second = await conversation.next_message("user")
    assert second.text_content == "hello who are you"
    answer = await conversation.next_message("assistant")
    assert answer.text_content == f"Hello! {WHO_AM_I}"


async def test_a_prepared_greeting_plays_the_voices_own_audio_without_synthesising_it(
    conversation: Conversation,
) -> None:
    loudspeaker = conversation.session.output.audio
    assert isinstance(loudspeaker, Loudspeaker)
    voice = OfflineVoice(greeting="Hello there. How can I help?")  # two sentences, a pause between
    syntheses: list[object] = []
    assert conversation.session.tts is not None
    conversation.session.tts.on("metrics_collected", syntheses.append)

    await voice.greet(conversation.session, None)
    live = await conversation.next_message("assistant")
    live_seconds = sum(f.duration for f in loudspeaker.frames)
    assert syntheses, "the greeting without prepared audio is synthesised in the session"
    syntheses.clear()
    loudspeaker.frames.clear()

    prepared = await synthesize(EspeakTTS(), voice.greeting)
    await voice.greet(conversation.session, prepared)
    replayed = await conversation.next_message("assistant")

    assert syntheses == []
    assert np.array_equal(samples_of(loudspeaker.frames), samples_of(list(prepared.frames)))
    # the same speech the session makes: eSpeak varies by a few samples from one call to the next
    assert abs(prepared.duration - live_seconds) < 0.01
    assert replayed.text_content == live.text_content == voice.greeting


async def test_audio_prepared_for_other_words_is_not_played(conversation: Conversation) -> None:
    loudspeaker = conversation.session.output.audio
    assert isinstance(loudspeaker, Loudspeaker)
    voice = OfflineVoice(greeting="Hello there.")
    other = await synthesize(EspeakTTS(), "Goodbye, and thank you for calling.")

    await voice.greet(conversation.session, other)
    said = await conversation.next_message("assistant")

    assert said.text_content == "Hello there."
    assert sum(f.duration for f in loudspeaker.frames) < other.duration


def samples_of(frames: list[rtc.AudioFrame]) -> npt.NDArray[np.int16]:
    return np.concatenate([np.frombuffer(f.data, dtype=np.int16) for f in frames])


def test_the_offline_voice_runs_the_decoder_server_for_the_worker_while_it_runs() -> None:
    with OfflineVoice().worker_services():
        socket_path = os.environ[DECODER_SERVER_ENV]
        [server] = [
            child
            for child in psutil.Process().children()
            if "--fork-server" in child.cmdline() and socket_path in child.cmdline()
        ]
    assert DECODER_SERVER_ENV not in os.environ
    assert not server.is_running()


def test_a_decoder_server_that_cannot_start_leaves_the_worker_running(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "not-there"))
    with OfflineVoice().worker_services():
        assert DECODER_SERVER_ENV not in os.environ  # jobs start decoders of their own
    assert "each job loads the speech model itself" in caplog.text
