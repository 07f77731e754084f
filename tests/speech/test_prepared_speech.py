"""The offline greeting's audio made before any job (in prewarm, outside an event loop)."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from livekit.agents import utils

from bench.voice import FirstAudioLatencyEngine
from config import Settings
from speech.espeak_tts import EspeakTTS
from speech.pipeline import OFFLINE_GREETING, CloudVoice, OfflineVoice
from speech.prepared_speech import prepare, synthesize


def test_the_offline_greeting_is_prepared_whole() -> None:
    prepared = OfflineVoice().prepare_greeting()

    assert prepared is not None
    assert prepared.text == OFFLINE_GREETING
    assert prepared.duration > 5.0  # three sentences at 175 words a minute
    assert {frame.sample_rate for frame in prepared.frames} == {EspeakTTS().sample_rate}


def test_the_cloud_greeting_is_not_prepared_its_words_come_from_the_language_model() -> None:
    assert CloudVoice(Settings.model_construct()).prepare_greeting() is None


def test_a_voice_slower_than_the_limit_leaves_the_greeting_to_the_job(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def slow_voice() -> EspeakTTS:
        return EspeakTTS(engine=FirstAudioLatencyEngine(latency=30.0))

    assert prepare(slow_voice, OFFLINE_GREETING, timeout=0.2) is None
    assert "the greeting is synthesised in each job" in caplog.text


def test_a_voice_that_cannot_start_leaves_the_greeting_to_the_job(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def missing_voice() -> EspeakTTS:
        return EspeakTTS(voice="xx-nonexistent")

    assert prepare(missing_voice, OFFLINE_GREETING) is None
    assert "xx-nonexistent" in caplog.text


async def test_playing_prepared_audio_lets_the_event_loop_run_between_frames() -> None:
    prepared = await synthesize(EspeakTTS(), "Hello there. How can I help?")
    turns = 0

    async def another_task() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    other = asyncio.create_task(another_task())
    turns_at_each_frame = [turns async for _ in prepared.audio()]
    await utils.aio.cancel_and_wait(other)

    assert len(prepared.frames) > 10
    assert all(b > a for a, b in itertools.pairwise(turns_at_each_frame))


def test_preparing_leaves_the_threads_event_loop_as_it_was() -> None:
    before = asyncio.get_event_loop_policy().get_event_loop()

    OfflineVoice().prepare_greeting()

    assert asyncio.get_event_loop_policy().get_event_loop() is before
