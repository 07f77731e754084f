"""An offline speech-to-text for livekit-agents: PocketSphinx with the US English model in its wheel.

Each utterance is decoded against the responder's phrases first and free text as the fallback (see
speech/sphinx_decoder.py), in a decoder process of the STT's own: the PocketSphinx binding holds the GIL
while it decodes, so neither the event loop nor a thread of this process may run it. The STT does not
stream; the session cuts the user's audio into utterances with its VAD (livekit-agents' `StreamAdapter`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Never

import numpy as np
from livekit import rtc
from livekit.agents import (
    APIConnectionError,
    APIConnectOptions,
    APIError,
    APITimeoutError,
    stt,
    utils,
)
from livekit.agents.language import LanguageCode
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, NotGivenOr

from . import sphinx_decoder
from .sphinx_decoder import DEFAULT_PHRASE_MARGIN, LENGTH, SAMPLE_RATE, Recognition

# Set by the worker to its decoder server's socket (speech/decoder_server.py).
DECODER_SERVER_ENV: Final = "SPHINX_DECODER_SERVER"

LANGUAGE: Final = LanguageCode("en-US")
DECODER_SCRIPT: Final = Path(sphinx_decoder.__file__)
_START_TIMEOUT_S: Final = 30.0  # loading the model takes about a second on an idle machine
_STOP_TIMEOUT_S: Final = 2.0


def decoder_config(phrases: Iterable[str], phrase_margin: float) -> str:
    """The decoder's configuration, as its command line and the fork server's handshake carry it."""
    unique = dict.fromkeys(sphinx_decoder.normalize_phrase(p) for p in phrases)
    return json.dumps({"phrases": list(unique), "phrase_margin": phrase_margin})


@dataclass
class _Channel:
    """A running decoder: its requests and replies, and how it ends."""

    pid: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    process: asyncio.subprocess.Process | None  # None: a decoder forked by the worker's server

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.returncode is None
        return not self.writer.is_closing()

    async def gone(self) -> str:
        if self.process is not None:
            return f"the PocketSphinx process exited (code {await self.process.wait()})"
        return "the PocketSphinx decoder closed its connection"

    async def stop(self) -> None:
        self.writer.close()  # the end of its input: it exits
        if self.process is None:
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
            return
        try:
            await asyncio.wait_for(self.process.wait(), _STOP_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()


class DecoderProcess:
    """A decoder of our own, one request at a time: forked by the worker's decoder server when
    there is one (see speech/decoder_server.py), else a process started here."""

    def __init__(self, phrases: Sequence[str], phrase_margin: float) -> None:
        self._config = decoder_config(phrases, phrase_margin)
        self._channel: _Channel | None = None
        self._lock = asyncio.Lock()

    @property
    def pid(self) -> int | None:
        return self._channel.pid if self._channel is not None else None

    async def start(self) -> None:
        """Start the decoder and wait until its model is loaded. Idempotent."""
        async with self._lock:
            await self._started()

    async def _started(self) -> _Channel:
        if self._channel is not None and self._channel.alive():
            return self._channel
        self._channel = None
        try:
            async with asyncio.timeout(_START_TIMEOUT_S):
                channel = await self._from_server() or await self._own_process()
        except TimeoutError:
            raise APITimeoutError("PocketSphinx did not load its model in time") from None
        self._channel = channel
        return channel

    async def _from_server(self) -> _Channel | None:
        """A decoder forked off the worker's loaded model; None if there is no server for us."""
        path = os.environ.get(DECODER_SERVER_ENV)
        if not path:
            return None
        try:
            reader, writer = await asyncio.open_unix_connection(path)
        except OSError:
            return None  # not (yet) listening, or gone: a process of our own
        ready: dict[str, Any] | None = None
        try:
            writer.write(self._config.encode() + b"\n")
            await writer.drain()
            reply = await _read_reply(reader)
            if reply.get("ready") and isinstance(reply.get("pid"), int):
                ready = reply  # else it was loaded with other phrases
        except (OSError, APIConnectionError):
            pass  # the server went away: a process of our own
        finally:
            if ready is None:
                writer.close()
        return None if ready is None else _Channel(ready["pid"], reader, writer, process=None)

    async def _own_process(self) -> _Channel:
        # -I: only the standard library and site-packages; the script imports nothing else.
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-I",
            str(DECODER_SCRIPT),
            self._config,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert process.stdin is not None and process.stdout is not None
        channel = _Channel(process.pid, process.stdout, process.stdin, process)
        try:
            ready = await _read_reply(channel.reader)
        except BaseException:
            await channel.stop()
            raise
        if "error" in ready:
            await channel.stop()
            raise APIError(f"PocketSphinx could not start: {ready['error']}", retryable=False)
        return channel

    async def recognize(self, pcm: bytes, *, deadline_s: float) -> Recognition:
        async with self._lock:
            channel = await self._started()
            try:
                async with asyncio.timeout(deadline_s):
                    channel.writer.write(LENGTH.pack(len(pcm)) + pcm)
                    await channel.writer.drain()
                    reply = await _read_reply(channel.reader, channel)
            except TimeoutError:
                await self._stop()  # it may be stuck; the next utterance gets a fresh one
                raise APITimeoutError("PocketSphinx did not finish decoding in time") from None
            except (ConnectionError, APIConnectionError) as error:
                await self._stop()  # gone; the next attempt starts a fresh one
                if isinstance(error, APIConnectionError):
                    raise
                raise APIConnectionError(f"the PocketSphinx decoder went away: {error}") from error
        if "error" in reply:
            raise APIError(f"PocketSphinx: {reply['error']}", retryable=False)
        return Recognition(**reply)

    async def aclose(self) -> None:
        async with self._lock:
            await self._stop()

    async def _stop(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.stop()


async def _read_reply(
    reader: asyncio.StreamReader, channel: _Channel | None = None
) -> dict[str, Any]:
    line = await reader.readline()
    if not line:
        raise APIConnectionError(
            await channel.gone() if channel is not None else "the PocketSphinx decoder ended"
        )
    try:
        reply = json.loads(line)
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        raise APIConnectionError(f"unexpected output from the PocketSphinx decoder: {line[:80]!r}")
    return reply


def to_model_pcm(frames: Sequence[rtc.AudioFrame]) -> bytes:
    """The frames as one stretch of 16 kHz mono 16-bit PCM (down-mixed and resampled)."""
    if not frames:
        return b""
    merged = rtc.combine_audio_frames(list(frames))
    samples = np.frombuffer(merged.data, dtype=np.int16)
    if merged.num_channels > 1:
        samples = samples.reshape(-1, merged.num_channels).mean(axis=1).astype(np.int16)
    if merged.sample_rate == SAMPLE_RATE:
        return samples.tobytes()
    resampler = rtc.AudioResampler(
        input_rate=merged.sample_rate,
        output_rate=SAMPLE_RATE,
        num_channels=1,
        quality=rtc.AudioResamplerQuality.HIGH,
    )
    mono = rtc.AudioFrame(samples.tobytes(), merged.sample_rate, 1, samples.size)
    pieces = [bytes(frame.data) for frame in resampler.push(mono)]
    pieces += [bytes(frame.data) for frame in resampler.flush()]
    return b"".join(pieces)


class SphinxSTT(stt.STT[Never]):  # emits only the base events
    """US English speech-to-text with PocketSphinx, fully offline.

    `phrases` are decoded first (see speech/sphinx_decoder.py); every word must be in PocketSphinx's
    dictionary. With no phrases, everything is free text. The decoder process starts when the session
    prewarms the STT or at the first utterance (about a second); a phrase with unknown words fails
    there, as a non-retryable `APIError` naming the words.
    """

    def __init__(
        self,
        *,
        phrases: Iterable[str] = (),
        phrase_margin: float = DEFAULT_PHRASE_MARGIN,
    ) -> None:
        super().__init__(capabilities=stt.STTCapabilities(streaming=False, interim_results=False))
        if phrase_margin < 0:
            raise ValueError(f"phrase_margin must not be negative, got {phrase_margin}")
        self._phrases = tuple(dict.fromkeys(sphinx_decoder.normalize_phrase(p) for p in phrases))
        self._decoder = DecoderProcess(self._phrases, phrase_margin)
        self._prewarm_task: asyncio.Task[None] | None = None

    @property
    def model(self) -> str:
        return "pocketsphinx en-us"

    @property
    def provider(self) -> str:
        return "PocketSphinx"

    @property
    def phrases(self) -> tuple[str, ...]:
        return self._phrases

    @property
    def decoder_pid(self) -> int | None:
        return self._decoder.pid

    def prewarm(self) -> None:
        """Start the decoder process in the background (the session calls this as it starts)."""
        if self._prewarm_task is None:
            self._prewarm_task = asyncio.get_running_loop().create_task(self._prewarm())

    async def _prewarm(self) -> None:
        # A failure here comes back, raised, with the first utterance.
        with contextlib.suppress(APIError, OSError):
            await self._decoder.start()

    async def recognize_pcm(self, pcm: bytes, *, deadline_s: float) -> Recognition:
        """Decode 16 kHz mono 16-bit PCM in the decoder process, within `deadline_s` seconds."""
        return await self._decoder.recognize(pcm, deadline_s=deadline_s)

    async def _recognize_impl(
        self,
        buffer: utils.AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> stt.SpeechEvent:
        if utils.is_given(language) and not language.lower().startswith("en"):
            raise APIError(
                f"PocketSphinx has only a US English model; {language!r} was requested",
                retryable=False,
            )
        frames = buffer if isinstance(buffer, list) else [buffer]
        # Resampling a long utterance takes a while; the loop has other work.
        pcm = await asyncio.to_thread(to_model_pcm, frames)
        seconds = len(pcm) / 2 / SAMPLE_RATE
        # Decoding takes about half the audio's length on a busy machine; the connection
        # timeout covers starting the process.
        recognition = await self.recognize_pcm(pcm, deadline_s=conn_options.timeout + seconds)
        return stt.SpeechEvent(
            type=stt.SpeechEventType.FINAL_TRANSCRIPT,
            request_id=utils.shortuuid("sphinx_"),
            alternatives=[
                stt.SpeechData(
                    language=LANGUAGE,
                    text=recognition.text,
                    end_time=seconds,
                    metadata={
                        "source": recognition.source,
                        "phrase_text": recognition.phrase_text,
                        "free_text": recognition.free_text,
                        "margin": recognition.margin,
                    },
                )
            ],
        )

    async def aclose(self) -> None:
        if self._prewarm_task is not None:
            await utils.aio.cancel_and_wait(self._prewarm_task)
        await self._decoder.aclose()
        await super().aclose()
