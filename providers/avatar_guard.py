"""The guard against stray avatars: which avatar identities a job mints, and the removal of every
one of ours that is in the room without being the avatar the job expects.

A stray is an avatar we minted a token for (or one that publishes on behalf of this job's agent)
that is not the one we wait for or speak through: late after a fallback, the orphan of a create
whose reply was lost, an old avatar coming back. The guard holds for the whole job, not for the
tokens' lifetime: LiveKit checks a token's expiry only at the first connect, so an avatar that was
in the room can reconnect long after its token expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import aiohttp
from livekit import api, rtc

from .lifecycle import JobTimeline
from .session import AvatarOptions, LiveKitCredentials, describe
from .token import AvatarTokenRequest, mint_avatar_token

logger = logging.getLogger("avatar.guard")


class AvatarGuard:
    def __init__(
        self,
        room: rtc.Room,
        *,
        room_name: str,
        identity_base: str,
        agent_identity: str,
        options: AvatarOptions,
        livekit: LiveKitCredentials,
        timeline: JobTimeline,
    ) -> None:
        self._room = room
        self._room_name = room_name
        self._identity_base = identity_base  # unique to the job: another job's avatar is not ours
        self._agent_identity = agent_identity
        self._options = options
        self._livekit = livekit
        self._timeline = timeline
        self._minted: set[str] = set()
        # the identities whose join we wait for or have: one, or two while the avatar is renewed
        self._expected: frozenset[str] = frozenset()
        self._seen: set[str] = set()  # identities that have been in the room
        self._joined_at: dict[str, float] = {}  # the timeline's time each was last seen joining
        self._removing: set[str] = set()
        self._removed: dict[str, asyncio.Event] = {}  # set once that identity was removed
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watching = False
        self._scan: asyncio.Task[None] | None = None

    # -- identities ----------------------------------------------------------------------------

    def identity_for(self, attempt: int) -> str:
        """The avatar identity of a job's `attempt`-th provider session (0: the first)."""
        base = self._identity_base
        return base if attempt == 0 else f"{base}-{attempt}"

    def mint(self, identity: str) -> str:
        """A join token for the avatar `identity`; from now on that identity is one of ours."""
        token = mint_avatar_token(
            AvatarTokenRequest(
                room_name=self._room_name,
                avatar_identity=identity,
                avatar_name=self._options.display_name,
                agent_identity=self._agent_identity,
                ttl=self._options.token_ttl,
            ),
            api_key=self._livekit.api_key,
            api_secret=self._livekit.api_secret,
        )
        self._minted.add(identity)
        return token

    def expect(self, *identities: str) -> None:
        """The avatars allowed in the room (none given: none is). Two while the avatar is renewed:
        the one that speaks and the one that takes over from it."""
        self._expected = frozenset(identities)

    # -- watching the room ---------------------------------------------------------------------

    def watch(self, connected: Callable[[], Awaitable[None]]) -> None:
        """Remove strays as they come, and those already in the room once it is connected."""
        if self._watching:
            return
        self._watching = True
        self._room.on("participant_connected", self._on_participant_connected)
        self._room.on("participant_attributes_changed", self._on_attributes_changed)
        # Participants already in the room raise no event of their own: a stray among them too.
        self._room.on("reconnected", self._on_reconnected)
        self._scan = asyncio.create_task(self._scan_once(connected), name="avatar-guard-scan")

    async def _scan_once(self, connected: Callable[[], Awaitable[None]]) -> None:
        await connected()
        self.remove_strays()

    def _on_participant_connected(self, participant: rtc.RemoteParticipant) -> None:
        self._seen.add(participant.identity)
        self._joined_at[participant.identity] = self._timeline.now()
        self._check(participant)

    def _on_attributes_changed(self, changed: object, participant: rtc.Participant) -> None:
        if isinstance(participant, rtc.RemoteParticipant):
            self._check(participant)

    def _on_reconnected(self, *_: object) -> None:
        self.remove_strays()

    def remove_strays(self) -> None:
        for participant in list(self._room.remote_participants.values()):
            self._seen.add(participant.identity)
            self._joined_at.setdefault(participant.identity, self._timeline.now())
            self._check(participant)

    def _ours(self, participant: rtc.RemoteParticipant) -> bool:
        # Every identity this job minted, and nothing else: another job's avatar (a job taking
        # over, a duplicate dispatch) is that job's, even when it speaks for the same agent.
        return participant.identity in self._minted

    def _check(self, participant: rtc.RemoteParticipant) -> None:
        identity = participant.identity
        if not self._ours(participant) or identity in self._expected or identity in self._removing:
            return
        self._removing.add(identity)
        self._spawn(self._remove_stray(identity), f"remove-{identity}")

    async def _remove_stray(self, identity: str) -> None:
        try:
            if await self.remove(identity):
                self._timeline.event(
                    "removed",
                    level=logging.WARNING,
                    reason=f"{identity} joined after its session was given up",
                    identity=identity,
                    cause="stray",
                    timings=self.time_in_room(identity),
                )
        finally:
            self._removing.discard(identity)

    # -- removal -------------------------------------------------------------------------------

    async def remove(self, identity: str) -> bool:
        """Remove `identity` from the room with our own credentials; True if it was there."""
        try:
            async with (
                asyncio.timeout(self._options.stop_timeout),
                api.LiveKitAPI(
                    self._livekit.url, self._livekit.api_key, self._livekit.api_secret
                ) as livekit_api,
            ):
                await livekit_api.room.remove_participant(
                    api.RoomParticipantIdentity(room=self._room_name, identity=identity)
                )
        except api.TwirpError as error:
            if error.code != "not_found":
                logger.warning("could not remove the avatar %s: %s", identity, error.message)
            return False
        except (TimeoutError, OSError, aiohttp.ClientError) as error:
            logger.warning("could not remove the avatar %s: %s", identity, describe(error))
            return False
        self._removed_event(identity).set()
        return True

    def time_in_room(self, identity: str) -> dict[str, float]:
        """For a removal's record: how long `identity` was in the room, from the moment the room
        told the agent it joined (empty if it never did)."""
        joined_at = self._joined_at.get(identity)
        if joined_at is None:
            return {}
        return {"in_room": round(self._timeline.now() - joined_at, 3)}

    async def wait_for_arrivals(self, identities: Iterable[str], limit: float) -> None:
        """Wait (at most `limit`) for each of `identities` that has not been in the room yet to
        come and be removed: an avatar whose session only ends when its participant is removed."""
        self._seen.update(self._room.remote_participants)
        events = [self._removed_event(i) for i in identities if i not in self._seen]
        events = [event for event in events if not event.is_set()]
        if not events or not self._room.isconnected():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit):
                await asyncio.gather(*(event.wait() for event in events))

    def _removed_event(self, identity: str) -> asyncio.Event:
        return self._removed.setdefault(identity, asyncio.Event())

    async def aclose(self) -> None:
        """Stop watching; returns when the removals under way are done (each is bounded)."""
        if self._watching:
            self._watching = False
            self._room.off("participant_connected", self._on_participant_connected)
            self._room.off("participant_attributes_changed", self._on_attributes_changed)
            self._room.off("reconnected", self._on_reconnected)
        if self._scan is not None:
            self._scan.cancel()  # a connect it waits for is shielded: never cancelled by this
            await asyncio.gather(self._scan, return_exceptions=True)
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
