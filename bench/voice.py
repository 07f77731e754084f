"""The benchmark's voice: the product's eSpeak NG voice, with a configurable first-audio latency.

eSpeak answers in milliseconds; a cloud TTS answers after its time to first audio. Holding each
synthesis back by `latency` seconds models that, so the benchmark can show whether the greeting is
made while the avatar boots. The same voice goes into our worker and the reference worker.

A bench entrypoint calls `install_from_environment()` at import time: in the worker process, and in
each job process (multiprocessing prepares a job process by importing the parent's main module).
Every synthesis logs a `bench voice` record, so the benchmark can check the voice really was in use.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

from speech import espeak_tts

FIRST_AUDIO_LATENCY_ENV = "BENCH_FIRST_AUDIO_LATENCY"
LOG_MESSAGE = "bench voice"

logger = logging.getLogger("bench.voice")


class FirstAudioLatencyEngine(espeak_tts.EspeakEngine):
    """An eSpeak NG engine whose every synthesis starts `latency` seconds after it is asked for."""

    def __init__(self, latency: float) -> None:
        if latency < 0:
            raise ValueError("latency must be >= 0")
        super().__init__()
        self.latency = latency

    async def speak(
        self,
        text: str,
        *,
        voice: str,
        words_per_minute: int,
        on_pcm: Callable[[bytes], None],
    ) -> None:
        logger.info(LOG_MESSAGE, extra={"first_audio_latency": self.latency})
        await asyncio.sleep(self.latency)
        await super().speak(text, voice=voice, words_per_minute=words_per_minute, on_pcm=on_pcm)


def install(latency: float) -> FirstAudioLatencyEngine:
    """Make every EspeakTTS built from now on in this process speak through the bench's engine."""
    if not callable(getattr(espeak_tts, "default_engine", None)):
        raise RuntimeError(
            "speech.espeak_tts.default_engine is gone: the bench voice cannot be installed"
        )
    engine = FirstAudioLatencyEngine(latency)
    # EspeakTTS() takes the process-wide engine from this function at construction; the product
    # offers no other hook for the voice, and the bench must not add one to its configuration.
    setattr(espeak_tts, "default_engine", lambda: engine)  # noqa: B010
    return engine


def latency_from_environment() -> float | None:
    raw = os.environ.get(FIRST_AUDIO_LATENCY_ENV)
    if raw is None or not raw.strip():
        return None
    try:
        latency = float(raw)
    except ValueError:
        raise SystemExit(f"{FIRST_AUDIO_LATENCY_ENV}: not a number of seconds: {raw!r}") from None
    if latency < 0:
        raise SystemExit(f"{FIRST_AUDIO_LATENCY_ENV}: must be >= 0, got {latency}")
    return latency


def install_from_environment() -> None:
    latency = latency_from_environment()
    if latency is not None:
        install(latency)
