"""External meetings (Zoom, Meet, Teams, Webex) that LemonSlice's emulated bot joins.

A meeting streams its audio (binary PCM frames, "<IB" header: sample rate, channels) and its chat
(JSON text) to the agent over the relay WebSocket; tests play the meeting's side through it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web
from yarl import URL

from ._checks import Rejected, check_keys, check_str, check_token, check_url

MEETING_HOSTS: Final = (
    "zoom.us",
    "meet.google.com",
    "teams.microsoft.com",
    "teams.live.com",
    "webex.com",
)
RELAY_FRAME_HEADER: Final = struct.Struct("<IB")


@dataclass(eq=False)
class EmulatedMeeting:
    """The bot's stay in one meeting, and the relay sockets the agent holds open to it."""

    meeting_bot_id: str
    session_id: str
    meeting_url: str
    bot_name: str | None
    livekit_url: str
    broadcast_grants: dict[str, Any] = field(repr=False)
    present: bool = True
    relay_connections: int = 0
    sockets: list[web.WebSocketResponse] = field(default_factory=list, repr=False)
    changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    async def say(self, pcm: bytes, *, sample_rate: int = 16000, channels: int = 1) -> None:
        """Someone in the meeting speaks: one PCM frame to every open relay socket."""
        frame = RELAY_FRAME_HEADER.pack(sample_rate, channels) + pcm
        for socket in list(self.sockets):
            await socket.send_bytes(frame)

    async def chat(self, sender: str, text: str, *, to: str | None = None) -> None:
        message: dict[str, Any] = {"type": "chat", "sender": sender, "text": text}
        if to is not None:
            message["to"] = to
        for socket in list(self.sockets):
            await socket.send_str(json.dumps(message))

    async def drop_relay(self) -> None:
        """The relay connection breaks (the agent should reconnect)."""
        for socket in list(self.sockets):
            await socket.close(code=1011, message=b"relay restarting")

    async def wait_for_relay(self, connections: int) -> None:
        """Until the agent has opened `connections` relay sockets in all and one is open."""
        while not (self.relay_connections >= connections and self.sockets):
            self.changed.clear()
            await self.changed.wait()

    def notify(self) -> None:
        self.changed.set()


def validate_join(body: dict[str, Any], path_session_id: str, *, require_jwt: bool) -> None:
    check_keys(
        body,
        where="",
        required=("session_id", "meeting_url", "livekit_url", "broadcast_token"),
        optional=("bot_name",),
    )
    if check_str(body, "session_id", where="") != path_session_id:
        raise Rejected(400, "'session_id' does not match the session in the path")
    check_url(body, "meeting_url", ("https",), where="")
    host = URL(body["meeting_url"]).host or ""
    if not any(host == known or host.endswith("." + known) for known in MEETING_HOSTS):
        raise Rejected(400, "'meeting_url' is not a Zoom, Google Meet, Teams or Webex meeting")
    check_url(body, "livekit_url", ("ws", "wss", "http", "https"), where="")
    check_token(body, "broadcast_token", where="", require_jwt=require_jwt)
    if "bot_name" in body:
        check_str(body, "bot_name", where="")


def broadcast_grants(token: str) -> dict[str, Any]:
    """The token's video grant; the bot only ever subscribes, so more than that is refused."""
    try:
        claims_part = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(claims_part + "=" * (-len(claims_part) % 4)))
        video = claims["video"]
    except (IndexError, KeyError, TypeError, ValueError):
        raise Rejected(400, "'broadcast_token' carries no video grant") from None
    if not isinstance(video, dict) or not video.get("roomJoin") or not video.get("room"):
        raise Rejected(400, "'broadcast_token' must grant joining one room")
    if video.get("canSubscribe") is False:
        raise Rejected(400, "'broadcast_token' must allow subscribing")
    return video
