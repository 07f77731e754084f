"""The bench's voice: installed, it is the voice every EspeakTTS speaks with, and it holds first audio back."""

from __future__ import annotations

import time

import pytest

from bench import voice
from speech import espeak_tts
from speech.espeak_tts import EspeakTTS


@pytest.fixture(autouse=True)
def restore_default_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(espeak_tts, "default_engine", espeak_tts.default_engine)


async def test_an_installed_voice_holds_back_the_first_audio_of_every_espeak_tts() -> None:
    voice.install(0.3)
    tts = EspeakTTS()  # built as the product builds it, after the bench installed its voice
    started = time.monotonic()
    async with tts.synthesize("Hello there.") as stream:
        first = await stream.__anext__()
    assert time.monotonic() - started >= 0.3
    assert first.frame.samples_per_channel > 0


@pytest.mark.parametrize(("raw", "latency"), [(None, None), ("", None), ("0", 0.0), ("0.8", 0.8)])
def test_latency_from_environment(
    monkeypatch: pytest.MonkeyPatch, raw: str | None, latency: float | None
) -> None:
    if raw is None:
        monkeypatch.delenv(voice.FIRST_AUDIO_LATENCY_ENV, raising=False)
    else:
        monkeypatch.setenv(voice.FIRST_AUDIO_LATENCY_ENV, raw)
    assert voice.latency_from_environment() == latency


@pytest.mark.parametrize("raw", ["soon", "-1"])
def test_a_bad_latency_stops_the_worker_with_its_name(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv(voice.FIRST_AUDIO_LATENCY_ENV, raw)
    with pytest.raises(SystemExit, match=voice.FIRST_AUDIO_LATENCY_ENV):
        voice.latency_from_environment()
