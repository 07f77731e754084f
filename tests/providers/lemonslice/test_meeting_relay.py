"""The meeting relay reader against a WebSocket server on loopback: decoding, reconnects, closing."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from livekit import rtc

from providers.lemonslice.meeting_relay import MeetingChat, MeetingRelay, decode_chat
from providers.retry import RetryPolicy

QUICK_RECONNECT = RetryPolicy(base_delay=0.01, max_delay=0.05)
STEP = 10.0  # bound on any one awaited event; never a measured timing


class RelayServer:
    """Plays LemonSlice's relay: the test scripts what each connection gets."""

    def __init__(self) -> None:
        self.refuse_next = 0  # answer this many handshakes with 503
        self.handshakes = 0
        self.sockets: asyncio.Queue[web.WebSocketResponse] = asyncio.Queue()
        self.closed: asyncio.Queue[None] = asyncio.Queue()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/relay", self._relay)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"ws://{host}:{port}/relay?key=relay-credential"

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _relay(self, request: web.Request) -> web.StreamResponse:
        self.handshakes += 1
        if self.refuse_next > 0:
            self.refuse_next -= 1
            raise web.HTTPServiceUnavailable()
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        await self.sockets.put(socket)
        async for _ in socket:
            pass
        await self.closed.put(None)
        return socket


@pytest.fixture
async def relay_server() -> AsyncIterator[RelayServer]:
    server = RelayServer()
    await server.start()
    try:
        yield server
    finally:
        await server.aclose()


def pcm_frame(sample_rate: int, channels: int, samples: int, value: int = 1000) -> bytes:
    return struct.pack("<IB", sample_rate, channels) + struct.pack("<h", value) * (
        samples * channels
    )


class Heard:
    def __init__(self) -> None:
        self.audio: asyncio.Queue[rtc.AudioFrame] = asyncio.Queue()
        self.chat: asyncio.Queue[MeetingChat] = asyncio.Queue()

    def relay(self, session: aiohttp.ClientSession, url: str) -> MeetingRelay:
        return MeetingRelay(
            session,
            url,
            on_audio=self.audio.put_nowait,
            on_chat=self.chat.put_nowait,
            policy=QUICK_RECONNECT,
        )


async def next_of(queue: asyncio.Queue[object]) -> object:
    async with asyncio.timeout(STEP):
        return await queue.get()


async def test_audio_and_chat_reach_the_agent_and_noise_is_ignored(
    http_session: aiohttp.ClientSession, relay_server: RelayServer
) -> None:
    heard = Heard()
    relay = heard.relay(http_session, relay_server.url)
    relay.start()
    try:
        socket = await next_of(relay_server.sockets)  # type: ignore[arg-type]
        assert isinstance(socket, web.WebSocketResponse)
        await socket.send_bytes(b"\x01\x02")  # shorter than a header
        await socket.send_str("not json")
        await socket.send_str(json.dumps({"type": "presence", "text": "x"}))
        await socket.send_bytes(pcm_frame(48000, 2, 480))
        await socket.send_str(json.dumps({"type": "chat", "sender": " Bo ", "text": " hi "}))

        frame = await next_of(heard.audio)  # type: ignore[arg-type]
        assert isinstance(frame, rtc.AudioFrame)
        assert (frame.sample_rate, frame.num_channels, frame.samples_per_channel) == (48000, 2, 480)
        assert await next_of(heard.chat) == MeetingChat(sender="Bo", text="hi")  # type: ignore[arg-type]
        assert heard.audio.empty() and heard.chat.empty()
    finally:
        await relay.aclose()


async def test_the_relay_reconnects_after_the_far_end_drops_it(
    http_session: aiohttp.ClientSession, relay_server: RelayServer
) -> None:
    heard = Heard()
    relay = heard.relay(http_session, relay_server.url)
    relay.start()
    try:
        first = await next_of(relay_server.sockets)  # type: ignore[arg-type]
        assert isinstance(first, web.WebSocketResponse)
        await first.close(code=1011, message=b"restarting")
        second = await next_of(relay_server.sockets)  # type: ignore[arg-type]
        assert isinstance(second, web.WebSocketResponse)
        await second.send_bytes(pcm_frame(16000, 1, 160))
        frame = await next_of(heard.audio)  # type: ignore[arg-type]
        assert isinstance(frame, rtc.AudioFrame) and frame.samples_per_channel == 160
        assert relay.connections == 2
    finally:
        await relay.aclose()


async def test_the_relay_keeps_trying_while_the_far_end_refuses(
    http_session: aiohttp.ClientSession,
    relay_server: RelayServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    relay_server.refuse_next = 3
    heard = Heard()
    relay = heard.relay(http_session, relay_server.url)
    relay.start()
    try:
        await next_of(relay_server.sockets)  # type: ignore[arg-type]
        async with asyncio.timeout(STEP):
            await relay.connected.wait()
        assert relay_server.handshakes == 4
        assert relay.connections == 1
        assert "relay-credential" not in caplog.text
    finally:
        await relay.aclose()


async def test_closing_the_relay_closes_its_socket_and_stops_reconnecting(
    http_session: aiohttp.ClientSession, relay_server: RelayServer
) -> None:
    heard = Heard()
    relay = heard.relay(http_session, relay_server.url)
    relay.start()
    await next_of(relay_server.sockets)  # type: ignore[arg-type]
    async with asyncio.timeout(STEP):
        await relay.connected.wait()
    await relay.aclose()
    await next_of(relay_server.closed)  # type: ignore[arg-type]
    assert relay_server.handshakes == 1
    assert relay.connections == 1


@pytest.mark.parametrize(
    "text",
    ['{"type": "chat", "text": "  "}', '{"type": "chat"}', "[1]", '{"type": "chat", "text": 5}'],
)
def test_chat_without_text_is_not_a_message(text: str) -> None:
    assert decode_chat(text) is None


def test_chat_names_an_unnamed_sender_and_keeps_the_recipient() -> None:
    message = decode_chat(json.dumps({"type": "chat", "text": "psst", "to": "Ava"}))
    assert message == MeetingChat(sender="Someone", text="psst", to="Ava")
