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
import contextlib
import logging
from collections.abc import Awaitable, Callable

from livekit import rtc

from .lifecycle import AvatarLifecycleMetrics
from .redact import redact
from .retry import RetryPolicy

logger = logging.getLogger("avatar.status")

STATUS_ATTRIBUTE = "avatar.status"
REASON_ATTRIBUTE = "avatar.reason"
REASON_LIMIT = 200

# `set_attributes` returns before the server has answered, and a refused update is only dropped:
# an update counts as sent when the server has echoed it back (milliseconds on a healthy link).
CONFIRM_TIMEOUT = 3.0
# A status the server did not take is sent again 0.25-0.5 s later, then 0.5-1 s, ... up to 5 times;
# a newer status is sent at once instead.
RETRY = RetryPolicy(max_retries=5, base_delay=0.5, max_delay=8.0)


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

    Updates are coalesced: only the latest status is sent, once the room is connected. One the
    server did not take is sent again with backoff (bounded); a newer status wins over it.
    """

    def __init__(self, room: rtc.Room, connect: Callable[[], Awaitable[None]]) -> None:
        self._room = room
        self._connect = connect
        self._wanted: dict[str, str] | None = None
        self._sent: dict[str, str] = {}
        self._given_up: dict[str, str] | None = None
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
        failures = 0
        while True:
            wanted = self._wanted
            if wanted is None or wanted == self._sent or wanted == self._given_up:
                self._changed.clear()
                await self._changed.wait()
                failures = 0
                continue
            if not self._room.isconnected():
                return  # the room is gone, and nobody is left to tell
            self._changed.clear()
            if await self._send(wanted):
                self._sent, failures = wanted, 0
                continue
            if failures >= RETRY.max_retries:
                logger.error(
                    "gave up publishing the avatar status %r after %d attempts",
                    wanted[STATUS_ATTRIBUTE],
                    failures + 1,
                )
                self._given_up, failures = wanted, 0
                continue
            # Back off, unless a newer status comes meanwhile: that one is sent at once.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RETRY.backoff(failures)):
                    await self._changed.wait()
            failures = 0 if self._wanted != wanted else failures + 1

    async def _send(self, wanted: dict[str, str]) -> bool:
        """Set the attributes and wait for the server to echo them; False if it did not."""
        local = self._room.local_participant
        taken = asyncio.Event()

        def shows_wanted() -> bool:
            # LiveKit deletes an attribute set to "": absent reads as "".
            return all(local.attributes.get(key, "") == value for key, value in wanted.items())

        def on_changed(changed: object, participant: rtc.Participant) -> None:
            if participant.identity == local.identity and shows_wanted():
                taken.set()

        self._room.on("participant_attributes_changed", on_changed)
        try:
            async with asyncio.timeout(CONFIRM_TIMEOUT):
                await local.set_attributes(wanted)
                if not shows_wanted():
                    await taken.wait()
        except Exception as error:  # a frontend hint: never worth failing the job over
            reason = "no answer" if isinstance(error, TimeoutError) else repr(error)
            logger.warning("could not publish the avatar status (%s): trying again", reason)
            return False
        finally:
            self._room.off("participant_attributes_changed", on_changed)
        return True

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
