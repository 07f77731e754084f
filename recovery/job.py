"""The job's side of recovery: claim the room, end what a dead job started, remember, say goodbye.

- `take_over()`, before the job's own avatar starts: a room whose agent is alive (another agent
  participant that is not an avatar) refuses this job: it must not answer beside it. Otherwise the
  room's memory names this job, and every avatar session a previous job left is ended (LemonSlice
  terminate through our own client; the avatar participant removed) before ours starts, so the
  user never sees two faces and a restarted identity never meets a stale one.
- `record()`: the supervisor's hook, called for every avatar it mints a token for, then again with
  the provider's session id; written to the room's memory in order, in the background.
- `end()`: the job ends by itself (the user left, the room went, a drain, an error we handled): the
  memory says so, and the watcher leaves the room alone. A job that cannot say so has died.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
from livekit import api
from livekit.agents import JobContext

from config import Settings
from providers.registry import livekit_credentials, provider_setup
from providers.session import describe
from providers.warmup import provider_http_session

from .memory import AvatarRecord, RoomMemory, UnsharedMetadataError, read_memory, write_memory
from .room import is_live_agent

logger = logging.getLogger("avatar-agent.recovery")

API_TIMEOUT = 5.0


class RoomMemoryKeeper:
    def __init__(self, *, settings: Settings, room: str, job_id: str, agent_identity: str) -> None:
        self._settings = settings
        self._room = room
        self._job_id = job_id
        self._agent_identity = agent_identity
        self._lock = asyncio.Lock()
        self._avatars: dict[str, AvatarRecord] = {}  # ours, by identity
        self._claimed = False
        self._writes: set[asyncio.Future[object]] = set()
        self._api: api.LiveKitAPI | None = None

    def _livekit(self) -> api.LiveKitAPI:
        if self._api is None:
            credentials = livekit_credentials(self._settings)
            self._api = api.LiveKitAPI(credentials.url, credentials.api_key, credentials.api_secret)
        return self._api

    # -- start ---------------------------------------------------------------------------------

    async def take_over(self) -> bool:
        """Claim the room for this job; False when its agent is alive (this job must not answer)."""
        try:
            async with asyncio.timeout(API_TIMEOUT):
                participants = await self._livekit().room.list_participants(
                    api.ListParticipantsRequest(room=self._room)
                )
        except (api.TwirpError, TimeoutError, OSError, aiohttp.ClientError) as error:
            logger.warning("could not list the room's participants: %s", describe(error))
            participants = None
        if participants is not None:
            alive = [
                p.identity
                for p in participants.participants
                if is_live_agent(p) and p.identity != self._agent_identity
            ]
            if alive:
                logger.warning(
                    "this room's agent is alive (%s): this dispatch is refused",
                    ", ".join(alive),
                    extra={"recovery": "refused", "alive_agents": alive},
                )
                return False
        previous = await self._update(self._claim)
        self._claimed = True
        # A job that ended on purpose ended its own sessions; one still "running" died with them.
        stale = (
            previous.avatars
            if previous is not None
            and previous.job_id != self._job_id
            and previous.state == "running"
            else ()
        )
        if previous is not None and previous.job_id != self._job_id:
            logger.info(
                "taking over the room from job %s (%s)",
                previous.job_id,
                previous.state,
                extra={"recovery": "takeover", "previous_job": previous.job_id},
            )
        if stale:
            await self._end_stale(stale)
            await self._update(lambda memory: self._without(memory, stale))
        return True

    def _claim(self, memory: RoomMemory | None) -> RoomMemory:
        kept = memory.avatars if memory is not None and memory.job_id != self._job_id else ()
        return RoomMemory(
            self._job_id,
            self._agent_identity,
            "running",
            kept,
            time.time(),
            self._settings.agent_health_url,
        )

    def _without(
        self, memory: RoomMemory | None, ended: tuple[AvatarRecord, ...]
    ) -> RoomMemory | None:
        if memory is None or memory.job_id != self._job_id:
            return memory
        gone = {a.identity for a in ended}
        return dataclasses.replace(
            memory, avatars=tuple(a for a in memory.avatars if a.identity not in gone)
        )

    async def _end_stale(self, stale: tuple[AvatarRecord, ...]) -> None:
        """End each session a dead job started, then remove its avatar from the room."""
        http = provider_http_session(None)
        try:
            setup = provider_setup(self._settings, http)
            for record in stale:
                if record.session_id is not None and record.provider == setup.name:
                    session = setup.new_session(record.identity, setup.options)
                    session.session_id = record.session_id  # the session the dead job created
                    outcome = await session.stop()
                    logger.info(
                        "ended %s session %s of a previous job%s",
                        record.provider,
                        record.session_id,
                        f" (could not: {outcome.unended})" if outcome.unended else "",
                        extra={
                            "recovery": "stale_session_ended",
                            "provider_session_id": record.session_id,
                        },
                    )
                await self._remove(record.identity)
        finally:
            await http.close()

    async def _remove(self, identity: str) -> None:
        try:
            async with asyncio.timeout(API_TIMEOUT):
                await self._livekit().room.remove_participant(
                    api.RoomParticipantIdentity(room=self._room, identity=identity)
                )
            logger.info(
                "removed %s, the avatar of a previous job",
                identity,
                extra={"recovery": "stale_avatar_removed", "identity": identity},
            )
        except api.TwirpError as error:
            if error.code != "not_found":
                logger.warning("could not remove the stale avatar %s: %s", identity, error.message)
        except (TimeoutError, OSError, aiohttp.ClientError) as error:
            logger.warning("could not remove the stale avatar %s: %s", identity, describe(error))

    # -- during the job ------------------------------------------------------------------------

    def record(self, provider: str, identity: str, session_id: str | None) -> None:
        """The supervisor minted a token for `identity` (or its provider answered with a session)."""
        self._avatars[identity] = AvatarRecord(provider, identity, session_id)
        self._in_background(self._update(self._with_ours))

    def _with_ours(self, memory: RoomMemory | None) -> RoomMemory | None:
        if memory is None or memory.job_id != self._job_id:
            return memory  # another job owns the room now: leave its memory alone
        others = tuple(a for a in memory.avatars if a.identity not in self._avatars)
        return dataclasses.replace(memory, avatars=others + tuple(self._avatars.values()))

    # -- end -----------------------------------------------------------------------------------

    async def end(self) -> None:
        """This job ends by itself: the room's memory says so (no recovery for it). Call it before
        the job leaves the room, so the watcher never sees the agent gone and the job running."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        if self._claimed:
            await self._update(self._ended)

    async def aclose(self) -> None:
        try:
            await self.end()
        finally:
            if self._api is not None:
                await self._api.aclose()
                self._api = None

    def _ended(self, memory: RoomMemory | None) -> RoomMemory | None:
        if memory is None or memory.job_id != self._job_id:
            return memory
        return dataclasses.replace(memory, state="ended")

    # -- the room's metadata ---------------------------------------------------------------------

    async def _update(
        self, change: Callable[[RoomMemory | None], RoomMemory | None]
    ) -> RoomMemory | None:
        """Read the room's memory, write `change(memory)`; returns the memory as it was read."""
        async with self._lock:
            try:
                async with asyncio.timeout(API_TIMEOUT):
                    rooms = await self._livekit().room.list_rooms(
                        api.ListRoomsRequest(names=[self._room])
                    )
                    if not rooms.rooms:
                        return None  # the room is gone
                    metadata = rooms.rooms[0].metadata
                    before = read_memory(metadata)
                    after = change(before)
                    if after != before:
                        await self._livekit().room.update_room_metadata(
                            api.UpdateRoomMetadataRequest(
                                room=self._room, metadata=write_memory(metadata, after)
                            )
                        )
                    return before
            except UnsharedMetadataError as error:
                logger.warning("the room cannot remember its job (no recovery for it): %s", error)
            except api.TwirpError as error:
                logger.warning("could not update the room's memory: %s", error.message)
            except (TimeoutError, OSError, aiohttp.ClientError) as error:
                logger.warning("could not update the room's memory: %s", describe(error))
            return None

    def _in_background(self, work: Coroutine[Any, Any, object]) -> None:
        task = asyncio.ensure_future(work)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)


JOB_MEMORY = "job_room_memory"  # in `JobProcess.userdata`


async def claim_room(ctx: JobContext, settings: Settings) -> RoomMemoryKeeper | None:
    """The job's room memory, once the room is claimed and a dead job's avatars ended; None when the
    room's agent is alive and this job must not answer (the job is then shut down)."""
    keeper = RoomMemoryKeeper(
        settings=settings,
        room=ctx.job.room.name,
        job_id=ctx.job.id,
        agent_identity=ctx.local_participant_identity,
    )
    ctx.add_shutdown_callback(keeper.aclose)
    if not await keeper.take_over():
        ctx.shutdown(reason="refused: this room's agent is alive")
        return None
    ctx.proc.userdata[JOB_MEMORY] = keeper
    return keeper


async def end_job_memory(ctx: JobContext) -> None:
    """The job ends by itself (called before it leaves the room): the room's memory says so."""
    keeper = ctx.proc.userdata.get(JOB_MEMORY)
    if isinstance(keeper, RoomMemoryKeeper):
        await keeper.end()
