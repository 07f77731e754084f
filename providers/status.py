"""The avatar's state as attributes of the agent's participant, for frontends.

A page cannot tell from the tracks alone whether the avatar is still booting, was refused, or
dropped out and is being replaced. The agent says so in two attributes it keeps current:

- `avatar.status`: `starting`, `joined`, `unavailable` (the agent speaks in its own voice), `lost`
  (the avatar left mid-call; the agent speaks in its own voice), `restarting`;
- `avatar.reason`: why, for `unavailable` and `lost`, else empty. Everyone in the room sees it: it is
  text we compose (error class, operation, HTTP status, a known error code), never a provider's own
  error text (providers/http.py keeps that out of the errors' messages). As a last guard, anything
  shaped like a token is taken out and the text is cut short here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from livekit import rtc

from .lifecycle import AvatarLifecycleMetrics
from .redact import redact

logger = logging.getLogger("avatar.status")

STATUS_ATTRIBUTE = "avatar.status"
REASON_ATTRIBUTE = "avatar.reason"
REASON_LIMIT = 200


def status_of(event: AvatarLifecycleMetrics) -> tuple[str, str] | None:
    """The (status, reason) a lifecycle event puts the avatar in; None if it changes nothing."""
    match event.event:
        case "starting":
            return ("starting" if not event.attempt else "restarting"), ""
        case "joined" | "recovered":
            return "joined", ""
        case "failed":
            return "unavailable", _public(event.reason) or "the avatar could not start"
        case "left":
            return "lost", _public(event.reason) or "the avatar left"
    return None


def _public(reason: str | None) -> str:
    return redact(reason or "")[:REASON_LIMIT]


class AvatarStatusAttributes:
    """A lifecycle metrics sink that mirrors the avatar's status onto the agent's attributes.

    Updates are coalesced: only the latest status is sent, once the room is connected.
    """

    def __init__(self, room: rtc.Room, connect: Callable[[], Awaitable[None]]) -> None:
        self._room = room
        self._connect = connect
        self._wanted: dict[str, str] | None = None
        self._sent: dict[str, str] = {}
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __call__(self, event: AvatarLifecycleMetrics) -> None:
        status = status_of(event)
        if status is None:
            return
        self._wanted = {STATUS_ATTRIBUTE: status[0], REASON_ATTRIBUTE: status[1]}
        self._changed.set()
        if self._task is None:
            self._task = asyncio.create_task(self._publish(), name="avatar-status")

    @property
    def current(self) -> dict[str, str] | None:
        return self._wanted

    async def _publish(self) -> None:
        await self._connect()
        while True:
            await self._changed.wait()
            self._changed.clear()
            wanted = self._wanted
            if wanted is None or wanted == self._sent:
                continue
            if not self._room.isconnected():
                return  # the room is gone, and nobody is left to tell
            try:
                await self._room.local_participant.set_attributes(wanted)
            except Exception as error:  # a frontend hint: never worth failing the job over
                logger.warning("could not publish the avatar status: %r", error)
                continue
            self._sent = wanted

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
