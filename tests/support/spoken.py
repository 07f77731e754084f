"""Recorded speech for the tests: sentences eSpeak NG's en-us voice said once, kept as WAV files.

eSpeak NG does not say a text the same way twice in one process: its pitch "flutter" (wavegen.c,
`AdvanceParameters`) reads a table at an index that is a static and runs on from one synthesis to the
next, never reset. So the waveform of a sentence depends on how much the process said before it:
identical in every fresh process, different for each later call, and in a test run, different with
the tests that ran before. No API pins it (the random seed, `espeak_ng_SetRandSeed`, only feeds
breath noise and Klatt voices, which en-us does not use). PocketSphinx mishears a few of those
variants ("what is the weather like today" as "what does that weather like to"; "hello" as "oh").

A second, smaller variation comes on top: livekit's resampler (soxr, as `to_model_pcm` uses it) adds
a random dither of +-2 steps to 16-bit output, so even the same audio reaches PocketSphinx a little
different each time unless it is already at the decoder's 16 kHz.

Tests that decode speech therefore read it from tests/speech/fixtures/: sentences said once and
stored at 16 kHz, which PocketSphinx decodes the same way every time. To add a sentence, add it to
SENTENCES and run, from the project root:

    uv run python -m tests.support.spoken                  # writes every tests/speech/fixtures/*.wav
    uv run python -m tests.support.spoken "how are you"    # only that one

Then run tests/speech, which asserts what each recording decodes to. Regenerated files are never
quite the bytes they replace (the dither), so commit only the ones you meant to change.
"""

from __future__ import annotations

import asyncio
import io
import re
import sys
import wave
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
from livekit import rtc

FIXTURES: Final = Path(__file__).resolve().parents[1] / "speech" / "fixtures"
SAMPLE_RATE: Final = 16_000
VOICE: Final = "en-us"
WORDS_PER_MINUTE: Final = 175

# Synthesised in this order, in one fresh process: the order is part of what pins the bytes.
SENTENCES: Final = (
    "hi",
    "hello",
    "help",
    "who are you",
    "hello, who are you?",
    "what time is it",
    "how are you",
    "where are you",
    "yes",
    "goodbye",
    "what is the weather like today",
)


def fixture_path(sentence: str) -> Path:
    name = "-".join(re.findall(r"[a-z]+", sentence.lower()))
    return FIXTURES / f"{name}.wav"


def spoken(sentence: str) -> rtc.AudioFrame:
    """The recording of `sentence`: one 16 kHz mono frame."""
    if sentence not in SENTENCES:
        raise KeyError(f"no recording of {sentence!r}; add it to SENTENCES and regenerate")
    path = fixture_path(sentence)
    with wave.open(str(path), "rb") as wav:
        if (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) != (1, 2, SAMPLE_RATE):
            raise ValueError(f"{path} is not 16-bit mono {SAMPLE_RATE} Hz: regenerate it")
        data = wav.readframes(wav.getnframes())
    return rtc.AudioFrame(data, SAMPLE_RATE, 1, len(data) // 2)


def spoken_at(sentence: str, sample_rate: int) -> npt.NDArray[np.int16]:
    """The recording of `sentence` at `sample_rate` (resampled, with dither, unless 16 kHz)."""
    frame = spoken(sentence)
    if sample_rate == SAMPLE_RATE:
        return np.frombuffer(frame.data, dtype=np.int16).copy()
    resampler = rtc.AudioResampler(SAMPLE_RATE, sample_rate, num_channels=1)
    frames = [*resampler.push(frame), *resampler.flush()]
    return np.concatenate([np.frombuffer(f.data, dtype=np.int16) for f in frames])


async def synthesize() -> dict[Path, bytes]:
    """Every sentence as eSpeak NG says it in this process, as WAV file contents by path."""
    from speech.espeak_tts import default_engine
    from speech.sphinx_stt import to_model_pcm

    engine = default_engine()
    files: dict[Path, bytes] = {}
    for sentence in SENTENCES:
        pcm = await engine.render(sentence, voice=VOICE, words_per_minute=WORDS_PER_MINUTE)
        frame = rtc.AudioFrame(pcm, engine.sample_rate, 1, len(pcm) // 2)
        files[fixture_path(sentence)] = _wav_bytes(to_model_pcm([frame]))
    return files


def _wav_bytes(pcm: bytes) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(pcm)
    return buffer.getvalue()


def main(argv: list[str]) -> int:
    wanted = set(argv) or set(SENTENCES)
    unknown = wanted - set(SENTENCES)
    if unknown:
        print(f"not in SENTENCES: {sorted(unknown)}", file=sys.stderr)
        return 2
    # Every sentence is synthesised, in order, so each one is said as in any other regeneration.
    files = asyncio.run(synthesize())
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for sentence in SENTENCES:
        if sentence in wanted:
            path = fixture_path(sentence)
            path.write_bytes(files[path])
            print(f"{path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
