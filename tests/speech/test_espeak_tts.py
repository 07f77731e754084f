"""EspeakTTS against the real eSpeak NG library shipped by espeakng-loader."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from livekit import rtc
from livekit.agents import Agent, AgentSession
from livekit.agents.voice import io

from speech import EspeakEngine, EspeakError, EspeakTTS, EspeakVoiceError, default_engine

TWENTY_WORDS = (
    "The quick brown fox jumps over the lazy dog while twenty curious children "
    "watch from the old wooden fence nearby."
)
NINE_WORDS = "Please configure your LiveKit Cloud credentials to continue talking."
ESPEAK_RATE_HZ = 22_050
PROJECT_ROOT = Path(__file__).resolve().parents[2]


async def synthesize_frames(voice: EspeakTTS, text: str) -> list[rtc.AudioFrame]:
    async with voice.synthesize(text) as stream:
        return [event.frame async for event in stream]


def samples_of(frames: list[rtc.AudioFrame]) -> npt.NDArray[np.int16]:
    return np.concatenate([np.frombuffer(frame.data, dtype=np.int16) for frame in frames])


def loudness_envelope(samples: npt.NDArray[np.int16]) -> npt.NDArray[np.float64]:
    window = ESPEAK_RATE_HZ // 50  # 20 ms
    count = len(samples) // window
    blocks = samples[: count * window].astype(np.float64).reshape(count, window)
    envelope: npt.NDArray[np.float64] = np.sqrt((blocks**2).mean(axis=1))
    return envelope


def same_speech(a: npt.NDArray[np.int16], b: npt.NDArray[np.int16]) -> float:
    """Correlation of two recordings' loudness over time: ~1.0 for the same utterance."""
    envelope_a, envelope_b = loudness_envelope(a), loudness_envelope(b)
    length = min(len(envelope_a), len(envelope_b))
    return float(np.corrcoef(envelope_a[:length], envelope_b[:length])[0, 1])


def duration_of(samples: npt.NDArray[np.int16]) -> float:
    return len(samples) / ESPEAK_RATE_HZ


async def test_a_sentence_becomes_audible_speech_of_plausible_length() -> None:
    voice = EspeakTTS()
    assert voice.sample_rate == ESPEAK_RATE_HZ
    assert voice.num_channels == 1
    assert not voice.capabilities.streaming

    frames = await synthesize_frames(voice, TWENTY_WORDS)

    assert frames
    assert {frame.sample_rate for frame in frames} == {voice.sample_rate}
    assert {frame.num_channels for frame in frames} == {1}
    samples = samples_of(frames)
    nominal_seconds = 20 / 175 * 60  # 6.9 s at 175 words per minute
    assert 0.6 * nominal_seconds < duration_of(samples) < 1.5 * nominal_seconds
    rms = float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))
    assert rms > 1000  # about -30 dBFS; silence is 0
    assert np.mean(loudness_envelope(samples) > 300) > 0.5  # voiced most of the time


async def test_words_per_minute_sets_the_pace() -> None:
    normal = duration_of(samples_of(await synthesize_frames(EspeakTTS(), TWENTY_WORDS)))
    fast_voice = EspeakTTS(words_per_minute=350)
    fast = duration_of(samples_of(await synthesize_frames(fast_voice, TWENTY_WORDS)))

    assert fast < 0.7 * normal


async def test_concurrent_syntheses_each_get_their_own_complete_audio() -> None:
    slow_american = EspeakTTS(voice="en-us", words_per_minute=140)
    fast_british = EspeakTTS(voice="en-gb", words_per_minute=300)
    alone_long = samples_of(await synthesize_frames(slow_american, TWENTY_WORDS))
    alone_short = samples_of(await synthesize_frames(fast_british, NINE_WORDS))

    together = await asyncio.gather(
        synthesize_frames(slow_american, TWENTY_WORDS),
        synthesize_frames(fast_british, NINE_WORDS),
        synthesize_frames(slow_american, TWENTY_WORDS),
        synthesize_frames(fast_british, NINE_WORDS),
    )

    # eSpeak NG is not bit-exact from run to run (lengths vary by up to ~10 ms, which moves
    # the loudness envelopes a little), so compare length and loudness over time. It hands
    # audio over in 60 ms chunks: one lost or taken from another request moves the length by
    # at least that much.
    for frames, alone in zip(together, [alone_long, alone_short] * 2, strict=True):
        samples = samples_of(frames)
        assert duration_of(samples) == pytest.approx(duration_of(alone), abs=0.03)
        assert same_speech(samples, alone) > 0.9
    assert same_speech(alone_long, alone_short) < 0.5  # the check can tell utterances apart


async def test_an_unknown_voice_is_a_clear_error() -> None:
    with pytest.raises(EspeakVoiceError, match="no voice or language named 'xx-nonexistent'"):
        EspeakTTS(voice="xx-nonexistent")
    with pytest.raises(EspeakVoiceError, match="invalid"):
        EspeakTTS(voice="")


def test_a_rate_outside_espeak_limits_is_rejected() -> None:
    with pytest.raises(ValueError, match="words_per_minute"):
        EspeakTTS(words_per_minute=20)
    with pytest.raises(ValueError, match="words_per_minute"):
        EspeakTTS(words_per_minute=1000)


def test_a_missing_library_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "libespeak-ng.so"
    engine = EspeakEngine(library_path=str(missing))

    with pytest.raises(EspeakError, match="could not load the eSpeak NG library") as caught:
        EspeakTTS(engine=engine)
    assert str(missing) in str(caught.value)


def test_missing_voice_data_is_a_clear_error(tmp_path: Path) -> None:
    # Initialising with bad data changes the library's process-wide state, so this runs in a
    # process of its own.
    probe = (
        "import sys\n"
        "from speech import EspeakEngine, EspeakError, EspeakTTS\n"
        "try:\n"
        f"    EspeakTTS(engine=EspeakEngine(data_path={str(tmp_path)!r}))\n"
        "except EspeakError as error:\n"
        "    print(error)\n"
        "    sys.exit(3)\n"
    )
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-c", probe],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 3, result.stderr
    assert f"could not initialise with its data at {str(tmp_path)!r}" in result.stdout


async def test_the_event_loop_keeps_running_during_a_long_synthesis() -> None:
    voice = EspeakTTS()
    long_text = " ".join([TWENTY_WORDS] * 50)  # 1,000 words, about 6 minutes of speech
    tick_seconds = 0.005
    ticks = 0
    lags: list[float] = []
    ticks_at_batch: list[int] = []
    audio = bytearray()
    finished = asyncio.Event()

    async def tick() -> None:
        nonlocal ticks
        while not finished.is_set():
            started = time.perf_counter()
            await asyncio.sleep(tick_seconds)
            lags.append(time.perf_counter() - started - tick_seconds)
            ticks += 1

    def on_pcm(pcm: bytes) -> None:
        ticks_at_batch.append(ticks)
        audio.extend(pcm)

    ticker = asyncio.create_task(tick())
    started = time.perf_counter()
    try:
        await voice.speak(long_text, on_pcm=on_pcm)
    finally:
        finished.set()
        await ticker
    elapsed = time.perf_counter() - started
    print(
        f"synthesis {elapsed:.2f}s, {len(ticks_at_batch)} batches, "
        f"longest loop lag {max(lags, default=0):.3f}s"
    )

    assert duration_of(np.frombuffer(bytes(audio), dtype=np.int16)) > 300
    # Audio reaches the loop in batches while the synthesis runs, and the loop keeps ticking
    # between them. Synthesis on the loop's thread (or holding the GIL) would deliver every batch
    # at the end, with no tick in between. Counting ticks, rather than bounding the longest lag,
    # holds however long the machine stalls the loop now and then.
    assert len(ticks_at_batch) > 100
    assert ticks_at_batch[-1] - ticks_at_batch[0] > 10


async def test_cancelling_a_long_synthesis_frees_the_engine_at_once() -> None:
    engine = default_engine()
    long_text = " ".join([TWENTY_WORDS] * 100)
    first_audio = asyncio.Event()

    def on_pcm(_pcm: bytes) -> None:
        first_audio.set()

    started = time.perf_counter()
    await engine.render(long_text, voice="en-us", words_per_minute=175)
    full_synthesis = time.perf_counter() - started

    long_speech = asyncio.create_task(
        engine.speak(long_text, voice="en-us", words_per_minute=175, on_pcm=on_pcm)
    )
    await first_audio.wait()
    long_speech.cancel()
    started = time.perf_counter()
    short = await engine.render(NINE_WORDS, voice="en-us", words_per_minute=175)
    waited = time.perf_counter() - started

    assert long_speech.cancelled()
    assert duration_of(np.frombuffer(short, dtype=np.int16)) > 2
    assert waited < full_synthesis / 4


def test_the_engine_stops_when_the_consumer_declines_more_audio() -> None:
    engine = default_engine()
    chunks: list[bytes] = []

    def take_one(chunk: bytes) -> bool:
        chunks.append(chunk)
        return False

    engine.synthesize(TWENTY_WORDS, voice="en-us", words_per_minute=175, on_audio=take_one)
    assert len(chunks) == 1

    complete: list[bytes] = []

    def take_all(chunk: bytes) -> bool:
        complete.append(chunk)
        return True

    engine.synthesize(TWENTY_WORDS, voice="en-us", words_per_minute=175, on_audio=take_all)
    assert len(complete) > 50  # the aborted text left nothing behind to cut this one short


async def test_blank_text_gives_no_audio_and_no_error() -> None:
    assert await synthesize_frames(EspeakTTS(), "  \n ") == []


class CapturedAudio(io.AudioOutput):
    """An audio sink that keeps what the session plays and reports it played at once."""

    def __init__(self) -> None:
        super().__init__(label="captured", capabilities=io.AudioOutputCapabilities(pause=False))
        self.frames: list[rtc.AudioFrame] = []
        self._segment_seconds = 0.0

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        self.frames.append(frame)
        self._segment_seconds += frame.duration

    def flush(self) -> None:
        super().flush()
        self.on_playback_finished(playback_position=self._segment_seconds, interrupted=False)
        self._segment_seconds = 0.0

    def clear_buffer(self) -> None:
        pass


async def test_an_agent_session_speaks_through_it() -> None:
    session: AgentSession[None] = AgentSession(tts=EspeakTTS())
    sink = CapturedAudio()
    session.output.audio = sink
    await session.start(Agent(instructions="Greet the user."))
    try:
        await session.say(f"Hello. {TWENTY_WORDS} {NINE_WORDS}")
    finally:
        await session.aclose()

    samples = samples_of(sink.frames)
    assert {frame.sample_rate for frame in sink.frames} == {ESPEAK_RATE_HZ}
    assert 29 / 175 * 60 * 0.6 < duration_of(samples) < 29 / 175 * 60 * 1.5


async def test_a_twenty_word_sentence_is_many_times_faster_than_real_time() -> None:
    voice = EspeakTTS()
    await synthesize_frames(voice, TWENTY_WORDS)  # first use loads the voice files
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        frames = await synthesize_frames(voice, TWENTY_WORDS)
        timings.append(time.perf_counter() - started)
    seconds = sorted(timings)[len(timings) // 2]
    audio_seconds = duration_of(samples_of(frames))
    real_time_factor = seconds / audio_seconds
    print(
        f"20 words: synthesis {seconds * 1000:.1f} ms for {audio_seconds:.2f} s of audio, "
        f"real-time factor {real_time_factor:.4f}"
    )
    assert real_time_factor < 0.2
