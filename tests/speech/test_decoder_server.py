"""The worker's PocketSphinx fork server, with the real decoder and model: a job's decoder is a fork of
the model the server loaded, and a job that finds no usable server still gets a decoder of its own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Iterator

import psutil
import pytest

from speech.decoder_server import DecoderServer
from speech.responder import INTENT_PHRASES
from speech.sphinx_decoder import DEFAULT_PHRASE_MARGIN, LENGTH
from speech.sphinx_stt import DECODER_SERVER_ENV, SphinxSTT, decoder_config, to_model_pcm
from tests.speech.test_sphinx_stt import transcribe
from tests.support.spoken import spoken


@pytest.fixture
def server() -> Iterator[DecoderServer]:
    server = DecoderServer.start(INTENT_PHRASES)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def parent_of(pid: int) -> int:
    return psutil.Process(pid).ppid()


async def test_a_jobs_decoder_is_forked_from_the_loaded_model(
    server: DecoderServer,
) -> None:
    frame = spoken("who are you")
    first, second = SphinxSTT(phrases=INTENT_PHRASES), SphinxSTT(phrases=INTENT_PHRASES)
    try:
        heard = await asyncio.gather(transcribe(first, frame), transcribe(second, frame))

        assert [h.text for h in heard] == ["who are you", "who are you"]
        pids = {first.decoder_pid, second.decoder_pid}
        assert None not in pids and len(pids) == 2, "each job has a decoder of its own"
        for pid in pids:
            assert pid is not None and parent_of(pid) == server.process.pid
    finally:
        await asyncio.gather(first.aclose(), second.aclose())


async def test_closing_the_stt_ends_its_forked_decoder(
    server: DecoderServer,
) -> None:
    voice = SphinxSTT(phrases=INTENT_PHRASES)
    await transcribe(voice, spoken("hello"))
    pid = voice.decoder_pid
    assert pid is not None and parent_of(pid) == server.process.pid

    await voice.aclose()

    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(pid).wait(timeout=5)  # it reads the end of its connection and exits
    assert not psutil.pid_exists(pid)


async def decodes_in_a_process_of_its_own(voice: SphinxSTT, said: str) -> None:
    try:
        result = await transcribe(voice, spoken(said))

        assert result.text == said
        assert voice.decoder_pid is not None
        assert parent_of(voice.decoder_pid) == os.getpid()
    finally:
        await voice.aclose()


async def test_other_phrases_get_a_decoder_of_their_own(
    server: DecoderServer,
) -> None:
    await decodes_in_a_process_of_its_own(SphinxSTT(phrases=["hello", "goodbye"]), "goodbye")


async def test_without_a_listening_server_the_job_starts_its_own_decoder(
    server: DecoderServer,
) -> None:
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait()
    assert os.environ[DECODER_SERVER_ENV] == str(server.socket_path)

    await decodes_in_a_process_of_its_own(SphinxSTT(phrases=INTENT_PHRASES), "help")


async def test_a_forked_decoder_that_dies_is_replaced(
    server: DecoderServer,
) -> None:
    voice = SphinxSTT(phrases=INTENT_PHRASES)
    frame = spoken("who are you")
    try:
        await transcribe(voice, frame)
        first = voice.decoder_pid
        assert first is not None
        os.kill(first, signal.SIGKILL)

        result = await transcribe(voice, frame)  # the failed attempt is retried

        assert result.text == "who are you"
        assert voice.decoder_pid not in (None, first)
        assert parent_of(voice.decoder_pid or 0) == server.process.pid
    finally:
        await voice.aclose()


async def test_the_server_ends_with_its_worker_and_a_jobs_decoder_with_its_job() -> None:
    frame = spoken("hello")
    voice = SphinxSTT(phrases=INTENT_PHRASES)
    server = DecoderServer.start(INTENT_PHRASES)
    try:
        server.wait_ready()
        await transcribe(voice, frame)
        decoder = voice.decoder_pid
        assert decoder is not None

        assert server.process.stdin is not None
        server.process.stdin.close()  # as when the worker exits or is killed
        assert server.process.wait(timeout=10) == 0
        assert not server.socket_path.exists() and not server.directory.exists()

        # The job in progress keeps its decoder until the job ends.
        assert (await transcribe(voice, frame)).text == "hello"
        assert voice.decoder_pid == decoder
    finally:
        await voice.aclose()
        server.stop()
    assert DECODER_SERVER_ENV not in os.environ


async def test_a_job_gone_mid_request_leaves_the_server_serving(
    server: DecoderServer,
) -> None:
    """A decoder whose job vanished before its reply fails to write it; that failure ends that
    decoder only (it must not run the server's cleanup, which would remove the server's socket)."""
    frame = spoken("who are you")
    pcm = to_model_pcm([frame])
    reader, writer = await asyncio.open_unix_connection(str(server.socket_path))
    writer.write(decoder_config(INTENT_PHRASES, DEFAULT_PHRASE_MARGIN).encode() + b"\n")
    ready = json.loads(await reader.readline())
    assert ready["ready"] is True
    writer.write(LENGTH.pack(len(pcm)) + pcm)
    await writer.drain()
    writer.close()  # gone before the reply
    await writer.wait_closed()
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(ready["pid"]).wait(timeout=10)

    assert server.socket_path.exists()
    voice = SphinxSTT(phrases=INTENT_PHRASES)
    try:
        assert (await transcribe(voice, frame)).text == "who are you"
        assert parent_of(voice.decoder_pid or 0) == server.process.pid
    finally:
        await voice.aclose()
