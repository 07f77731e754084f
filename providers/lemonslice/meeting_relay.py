"""The meeting relay: LemonSlice streams an external meeting's audio (binary PCM) and chat (JSON text)
to us over one WebSocket. We keep it open, reconnecting with backoff, until told to stop."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from livekit import rtc

from ..retry import RetryPolicy

logger = logging.getLogger("avatar.providers.lemonslice.meeting")

# Each binary frame: uint32 sample rate, uint8 channel count (little-endian), then int16 PCM.
FRAME_HEADER = struct.Struct("<IB")
DEFAULT_SAMPLE_RATE = 16000
RECONNECT_POLICY = RetryPolicy(base_delay=1.0, max_delay=30.0)


@dataclass(frozen=True)
class MeetingChat:
    sender: str
    text: str
    to: str | None = None


def decode_audio(payload: bytes) -> rtc.AudioFrame | None:
    """A relay audio frame, or None if it carries no whole sample."""
    if len(payload) < FRAME_HEADER.size:
        return None
    sample_rate, channels = FRAME_HEADER.unpack_from(payload)
    channels = channels or 1
    samples = (len(payload) - FRAME_HEADER.size) // (2 * channels)
    if samples <= 0:
        return None
    start = FRAME_HEADER.size
    return rtc.AudioFrame(
        data=payload[start : start + samples * channels * 2],
        sample_rate=sample_rate or DEFAULT_SAMPLE_RATE,
        num_channels=channels,
        samples_per_channel=samples,
    )


def encode_audio(frame: rtc.AudioFrame) -> bytes:
    return FRAME_HEADER.pack(frame.sample_rate, frame.num_channels) + bytes(frame.data)


def decode_chat(text: str) -> MeetingChat | None:
    """A chat message ({"type": "chat", "sender", "text", "to"?}), or None for anything else."""
    try:
        message = json.loads(text)
    except ValueError:
        return None
    if not isinstance(message, dict) or message.get("type") != "chat":
        return None
    body = message.get("text")
    if not isinstance(body, str) or not body.strip():
        return None
    sender, to = message.get("sender"), message.get("to")
    return MeetingChat(
        sender=sender.strip() if isinstance(sender, str) and sender.strip() else "Someone",
        text=body.strip(),
        to=to.strip() if isinstance(to, str) and to.strip() else None,
    )


class MeetingRelay:
    """Reads the relay socket into `on_audio` / `on_chat` until `aclose()`; reconnects on every drop."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        websocket_url: str,
        *,
        on_audio: Callable[[rtc.AudioFrame], None],
        on_chat: Callable[[MeetingChat], None] | None = None,
        policy: RetryPolicy = RECONNECT_POLICY,
        rng: random.Random | None = None,
    ) -> None:
        self._session = session
        self._url = websocket_url
        self._on_audio = on_audio
        self._on_chat = on_chat
        self._policy = policy
        self._rng = rng or random.Random()
        self._task: asyncio.Task[None] | None = None
        self.connections = 0
        self.connected = asyncio.Event()

    def __repr__(self) -> str:
        return f"MeetingRelay(connections={self.connections})"

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="lemonslice-meeting-relay")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                async with self._session.ws_connect(self._url, heartbeat=20.0) as socket:
                    self.connections += 1
                    failures = 0
                    self.connected.set()
                    await self._read(socket)
                    logger.warning("meeting relay closed by the far end; reconnecting")
            except (aiohttp.ClientError, OSError, TimeoutError) as error:
                # The URL is not logged: it may carry the relay's credential.
                logger.warning("meeting relay unreachable (%s); reconnecting", type(error).__name__)
            finally:
                self.connected.clear()
            await asyncio.sleep(self._policy.backoff(failures, self._rng))
            failures += 1

    async def _read(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        async for message in socket:
            if message.type == aiohttp.WSMsgType.BINARY:
                if (frame := decode_audio(message.data)) is not None:
                    self._on_audio(frame)
            elif message.type == aiohttp.WSMsgType.TEXT and self._on_chat is not None:
                if (chat := decode_chat(message.data)) is not None:
                    self._on_chat(chat)
            elif message.type == aiohttp.WSMsgType.ERROR:
                return
