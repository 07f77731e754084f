"""Listening to the meeting the current avatar session joined: one relay at a time, following the
avatar across restarts, closed with the job."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiohttp

from ..session import ProviderAvatarSession
from .api import JoinedMeeting
from .avatar import LemonSliceAvatarSession
from .meeting_audio import MeetingAudioInput
from .meeting_relay import MeetingChat, MeetingRelay

logger = logging.getLogger("avatar.providers.lemonslice.meeting")


class MeetingListener:
    """The meeting's audio into `audio`, its chat into `on_chat`, from the newest avatar session's
    relay (`follow` each session as it is made)."""

    def __init__(self, audio: MeetingAudioInput, on_chat: Callable[[MeetingChat], None]) -> None:
        self._audio = audio
        self._on_chat = on_chat
        self._http: aiohttp.ClientSession | None = None
        self._relay: MeetingRelay | None = None
        self._waiting: asyncio.Task[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"MeetingListener(relay={self._relay!r})"

    @property
    def relay(self) -> MeetingRelay | None:
        return self._relay

    def follow(self, avatar: ProviderAvatarSession) -> None:
        """`avatar` is the current avatar session: listen to its meeting once it has joined one."""
        if self._closed or not isinstance(avatar, LemonSliceAvatarSession):
            return
        if self._waiting is not None:
            self._waiting.cancel()  # an older session that never joined is no longer current
        self._waiting = asyncio.create_task(
            self._listen_when_joined(avatar.meeting_joined), name="lemonslice-meeting-follow"
        )

    async def _listen_when_joined(self, joined: asyncio.Future[JoinedMeeting]) -> None:
        try:
            meeting = await asyncio.shield(joined)
        except asyncio.CancelledError:
            if joined.cancelled():
                return  # that session never joined (its start failed, or it was stopped)
            raise
        previous, self._relay = self._relay, None
        if previous is not None:
            await previous.aclose()
        if self._closed:
            return
        if self._http is None:
            self._http = aiohttp.ClientSession()
        self._relay = MeetingRelay(
            self._http, meeting.websocket_url, on_audio=self._audio.push, on_chat=self._on_chat
        )
        self._relay.start()
        logger.info("listening to the meeting", extra={"provider": "lemonslice"})

    async def aclose(self) -> None:
        self._closed = True
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
        relay, self._relay = self._relay, None
        if relay is not None:
            await relay.aclose()
        http, self._http = self._http, None
        if http is not None:
            await http.close()
