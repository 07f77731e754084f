"""Fixed words synthesised before the job that says them: the offline voice's greeting.

The greeting's words are the same in every call, so its audio can be made once per job process,
before any job (prewarm), and the job plays it the moment its session is up instead of waiting for
the voice's first audio (milliseconds for eSpeak, most of a second for a cloud voice). The audio
is made as the session would make it: the voice cannot stream, so the framework's stream adapter
speaks it a sentence at a time with the same sentence tokenizer, and the pauses between sentences,
where the avatar takes the greeting over (providers/speech_router.py), are the same.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from livekit import rtc
from livekit.agents import APIError, tokenize, tts

logger = logging.getLogger("avatar-agent.speech")

# The most a job process's start may spend on it; past that the greeting is synthesised in the job.
PREPARE_TIMEOUT = 5.0


@dataclass(frozen=True)
class PreparedSpeech:
    text: str
    frames: tuple[rtc.AudioFrame, ...]

    @property
    def duration(self) -> float:
        return sum(frame.duration for frame in self.frames)

    async def audio(self) -> AsyncIterator[rtc.AudioFrame]:
        for frame in self.frames:
            yield frame
            # The session takes the frames as fast as they come, and what it does with each (the
            # transcript's speaking-rate estimate) would otherwise run for the whole greeting at
            # once: 0.2 s of the job's event loop, as the first word goes out.
            await asyncio.sleep(0)


async def synthesize(voice: tts.TTS[Any], text: str) -> PreparedSpeech:
    """`text` in `voice`, frame for frame as the session's default TTS node would speak it."""
    speaker = (
        voice
        if voice.capabilities.streaming
        else tts.StreamAdapter(
            tts=voice, sentence_tokenizer=tokenize.blingfire.SentenceTokenizer(retain_format=True)
        )
    )
    frames: list[rtc.AudioFrame] = []
    async with speaker.stream() as stream:
        stream.push_text(text)
        stream.end_input()
        async for audio in stream:
            frames.append(audio.frame)
    if not frames:
        raise APIError(f"the voice gave no audio for {text!r}", retryable=False)
    return PreparedSpeech(text, tuple(frames))


def prepare(
    make_voice: Callable[[], tts.TTS[Any]], text: str, *, timeout: float = PREPARE_TIMEOUT
) -> PreparedSpeech | None:
    """Synthesise `text` now, outside any event loop (a job process's prewarm). None, with a
    warning, when the voice fails or takes longer than `timeout`: the job then synthesises it."""

    async def run() -> PreparedSpeech:
        return await asyncio.wait_for(synthesize(make_voice(), text), timeout)

    started = time.monotonic()
    try:
        prepared = _run_outside_any_loop(run())
    except Exception as error:  # a job process that cannot start would take no job at all
        logger.warning(
            "the greeting is synthesised in each job: preparing it failed: %s",
            f"{type(error).__name__}: {error}" if str(error) else type(error).__name__,
        )
        return None
    logger.debug(
        "greeting prepared",
        extra={
            "audio_seconds": round(prepared.duration, 2),
            "took_seconds": round(time.monotonic() - started, 3),
        },
    )
    return prepared


def _run_outside_any_loop(work: Coroutine[Any, Any, PreparedSpeech]) -> PreparedSpeech:
    """`asyncio.run` without its side effect: it leaves the thread with no current event loop
    (set to None), and code after it that asks for one (a `rtc.Room()`) then fails."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(work)
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()
