"""Brings the agent back to a room whose job died, and only there.

A room gets one new dispatch when all of these hold, checked against LiveKit itself (RoomService,
AgentDispatchService) at the moment of deciding, never against what the watcher remembers:
- the room exists and its memory (recovery/memory.py) says its job is `running`: a job that ended
  by itself (the user left, the room went, a SIGTERM drain, an error it handled) says `ended`;
- no agent is in the room (an agent that is alive, even a new one, is left alone), and the job's
  agent is gone: seen leaving (the `participant_left` webhook), or absent long after its claim;
- a person is still in the room;
- no dispatch recovering that job exists yet, unless it got no job for `dispatch_grace` (no worker
  was there to take it: it is deleted and made again, so a worker that comes back gets the room).

Several watchers can run (and should: the loss of one must not stop recovery). Each room has a first
watcher (by a hash of its name); the others check it `failover_delay` later per rank, find the
dispatch the first one made, and do nothing. Watchers that check at the same moment all the same (a
failover delay of 0, a slow first watcher) are settled by a claim in the cluster's Redis
(recovery/claim.py): one dispatch per death; without Redis, each dispatches as if alone. A duplicated webhook is one check (one per room at a
time), a delayed one is a late check, a lost one is found by the sweep over every room.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import zlib
from dataclasses import dataclass

import aiohttp
from livekit import api

from .claim import DispatchClaims
from .memory import RoomMemory, read_memory
from .room import is_live_agent, is_person

logger = logging.getLogger("avatar-agent.recovery")

RECOVERS_KEY = "recovers"  # in a recovery dispatch's metadata: the job it replaces


@dataclass(frozen=True)
class WatcherOptions:
    agent_name: str
    index: int = 0  # this watcher's place among `watchers`
    watchers: int = 1
    failover_delay: float = 3.0
    sweep_interval: float = 5.0
    dispatch_grace: float = 10.0
    # A job claims the room before its agent joins: absent this long after its claim, it died.
    join_grace: float = 30.0
    # A worker whose health endpoint cannot be reached this many sweeps in a row is dead.
    probe_failures: int = 2
    probe_timeout: float = 2.0
    # How long after a room's creation its first dispatch is watched for a worker that never took it.
    first_job_window: float = 300.0
    # How long a watcher's claim on one death holds (a watcher that dies between its claim and its
    # dispatch delays the room's recovery by at most this).
    claim_ttl: float = 10.0


def recovery_metadata(job_id: str) -> str:
    return json.dumps({RECOVERS_KEY: job_id})


def recovered_job(dispatch: api.AgentDispatch) -> str | None:
    try:
        document = json.loads(dispatch.metadata) if dispatch.metadata else None
    except ValueError:
        return None
    value = document.get(RECOVERS_KEY) if isinstance(document, dict) else None
    return value if isinstance(value, str) else None


class RecoveryWatcher:
    def __init__(
        self, livekit: api.LiveKitAPI, options: WatcherOptions, claims: DispatchClaims | None = None
    ) -> None:
        self._lk = livekit
        self._options = options
        self._claims = claims or DispatchClaims(None, ttl=0, timeout=0)
        self._checks: dict[str, asyncio.Task[str]] = {}
        self._left: dict[str, str] = {}  # room -> identity of an agent seen leaving it
        self.dispatched: list[tuple[str, str]] = []  # (room, job recovered), in order
        self.outcomes: list[tuple[str, str]] = []  # (room, what a check decided), in order
        self.checked = asyncio.Event()  # set after every check
        self._unreachable: dict[str, int] = {}  # worker health URL -> failed probes in a row
        self._http: aiohttp.ClientSession | None = None

    # -- what starts a check -------------------------------------------------------------------

    def on_webhook(self, event: api.WebhookEvent) -> None:
        room = event.room.name
        if event.event in ("participant_left", "participant_connection_aborted") and (
            is_live_agent(event.participant)
        ):
            self._left[room] = event.participant.identity
            self.check_soon(room, reason=f"{event.event} {event.participant.identity}")
        elif event.event == "room_finished":
            self._left.pop(room, None)

    async def sweep(self) -> None:
        """Check every room whose memory says its job is running (lost webhooks, a restart), and
        probe the workers of those jobs: a worker that is gone has its rooms recovered now, not
        when livekit-server's ICE timeout drops its agents (about 20 s)."""
        rooms = await self._lk.room.list_rooms(api.ListRoomsRequest())
        running = [
            (room.name, memory)
            for room in rooms.rooms
            if (memory := read_memory(room.metadata)) is not None and memory.state == "running"
        ]
        # A room no job has claimed yet, lately made: its first dispatch may have found no worker.
        now = time.time()
        for room in rooms.rooms:
            unclaimed = not room.metadata or read_memory(room.metadata) is None
            if unclaimed and now - room.creation_time < self._options.first_job_window:
                self.check_soon(room.name, reason="sweep: no job yet")
        urls = sorted({m.worker_health_url for _, m in running if m.worker_health_url})
        reachable = await asyncio.gather(*(self._probe(url) for url in urls))
        dead = {url for url, ok in zip(urls, reachable, strict=True) if not ok}
        for name, memory in running:
            dead_job = memory.job_id if memory.worker_health_url in dead else None
            self.check_soon(name, reason="sweep", dead_job=dead_job)

    async def _probe(self, url: str) -> bool:
        """False once `url` could not be reached `probe_failures` times in a row. Any answer,
        even an error status, means the worker's process is there."""
        if self._http is None:
            self._http = aiohttp.ClientSession()
        try:
            async with self._http.get(
                url, timeout=aiohttp.ClientTimeout(total=self._options.probe_timeout)
            ):
                self._unreachable.pop(url, None)
                return True
        except (aiohttp.ClientError, OSError, TimeoutError):
            failures = self._unreachable.get(url, 0) + 1
            self._unreachable[url] = failures
            return failures < self._options.probe_failures

    async def run_sweeps(self) -> None:
        while True:
            try:
                await self.sweep()
            except (api.TwirpError, OSError, TimeoutError) as error:
                logger.warning("recovery sweep failed: %s", error)
            await asyncio.sleep(self._options.sweep_interval)

    def check_soon(self, room: str, *, reason: str, dead_job: str | None = None) -> None:
        running = self._checks.get(room)
        if running is not None and not running.done():
            return  # one check per room at a time: duplicates of an event are one check
        task = asyncio.create_task(
            self._delayed_check(room, reason, dead_job), name=f"recover-{room}"
        )
        self._checks[room] = task
        task.add_done_callback(lambda _: self._forget(room, task))

    def _forget(self, room: str, task: asyncio.Task[str]) -> None:
        if self._checks.get(room) is task:
            del self._checks[room]
        if not task.cancelled() and (error := task.exception()) is not None:
            logger.warning("recovery check of %s failed: %s", room, error)

    def rank(self, room: str) -> int:
        """0 for the room's first watcher, 1 for the next, ..."""
        first = zlib.crc32(room.encode()) % self._options.watchers
        return (self._options.index - first) % self._options.watchers

    async def _delayed_check(self, room: str, reason: str, dead_job: str | None) -> str:
        await asyncio.sleep(self.rank(room) * self._options.failover_delay)
        outcome = await self.check(room, dead_job=dead_job)
        self.outcomes.append((room, outcome))
        self.checked.set()
        logger.info(
            "recovery check of %s (%s): %s",
            room,
            reason,
            outcome,
            extra={"room": room, "recovery_outcome": outcome},
        )
        return outcome

    async def aclose(self) -> None:
        for task in list(self._checks.values()):
            task.cancel()
        await asyncio.gather(*self._checks.values(), return_exceptions=True)
        if self._http is not None:
            await self._http.close()

    # -- the decision --------------------------------------------------------------------------

    async def check(self, room: str, *, dead_job: str | None = None) -> str:
        """Dispatch the agent again if the room's job died; returns what was decided.

        `dead_job`: that job's worker cannot be reached: if it still serves the room (a new job may
        have taken over since), its agent, listed until the server's ICE timeout, is removed first
        (a job that is in fact alive then ends itself)."""
        rooms = await self._lk.room.list_rooms(api.ListRoomsRequest(names=[room]))
        if not rooms.rooms:
            self._left.pop(room, None)
            return "room gone"
        memory = read_memory(rooms.rooms[0].metadata)
        if memory is None:
            return await self._rescue_lost_dispatch(room)
        if memory.state == "ended":
            return "ended on purpose"
        listed = await self._lk.room.list_participants(api.ListParticipantsRequest(room=room))
        participants = list(listed.participants)
        if memory.job_id == dead_job and any(
            p.identity == memory.agent_identity for p in participants
        ):
            await self._remove_dead_agent(room, memory)
            participants = [p for p in participants if p.identity != memory.agent_identity]
        if any(is_live_agent(p) for p in participants):
            return "agent alive"
        if not any(is_person(p) for p in participants):
            return "nobody left"
        if not self._gone(room, memory):
            return "agent not joined yet"
        return await self._dispatch_once(room, memory)

    async def _rescue_lost_dispatch(self, room: str) -> str:
        """A room with no job yet: its dispatch is made again if no worker took it (every worker
        answered "not available", or none was registered: livekit-server drops such a job)."""
        dispatches = [
            d
            for d in await self._lk.agent_dispatch.list_dispatch(room_name=room)
            if d.agent_name == self._options.agent_name
        ]
        if not dispatches:
            return "no dispatch"
        if any(d.state.jobs for d in dispatches):
            return "no job remembered"  # a worker took it: the job is on its way, or ended
        newest = max(d.state.created_at for d in dispatches)
        if (time.time_ns() - newest) / 1e9 < self._options.dispatch_grace:
            return "dispatch pending"
        listed = await self._lk.room.list_participants(api.ListParticipantsRequest(room=room))
        if any(is_live_agent(p) for p in listed.participants):
            return "agent alive"
        if not any(is_person(p) for p in listed.participants):
            return "nobody left"
        claim = f"{self._options.agent_name}:{room}:no-job:" + ",".join(
            sorted(d.id for d in dispatches)
        )
        if await self._claims.claim(claim) is False:
            return "claimed by another watcher"
        for dispatch in dispatches:
            await self._lk.agent_dispatch.delete_dispatch(dispatch.id, room)
        await self._lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(
                agent_name=self._options.agent_name, room=room, metadata=dispatches[0].metadata
            )
        )
        self.dispatched.append((room, ""))
        logger.warning(
            "no worker took the dispatch of %s: dispatched again",
            room,
            extra={"room": room, "recovery": "lost_dispatch_made_again"},
        )
        return "lost dispatch made again"

    async def _remove_dead_agent(self, room: str, memory: RoomMemory) -> None:
        try:
            await self._lk.room.remove_participant(
                api.RoomParticipantIdentity(room=room, identity=memory.agent_identity)
            )
        except api.TwirpError as error:
            if error.code != "not_found":
                raise
        self._left[room] = memory.agent_identity
        logger.warning(
            "the worker of job %s cannot be reached: its agent %s removed from %s",
            memory.job_id,
            memory.agent_identity,
            room,
            extra={"room": room, "recovery": "dead_worker_agent_removed"},
        )

    def _gone(self, room: str, memory: RoomMemory) -> bool:
        if self._left.get(room) == memory.agent_identity:
            return True
        return time.time() - memory.claimed_at > self._options.join_grace

    async def _dispatch_once(self, room: str, memory: RoomMemory) -> str:
        stale = await self._unserved_recoveries(room, memory.job_id)
        if stale is None:
            return "already dispatched"
        # The death, and which dispatches no worker took: a redo after `dispatch_grace` is a claim
        # of its own, won once too.
        claim = f"{self._options.agent_name}:{room}:{memory.job_id}:" + (
            ",".join(sorted(d.id for d in stale)) or "first"
        )
        won = await self._claims.claim(claim)
        if won is False:
            return "claimed by another watcher"
        if won:
            # Read again after the claim: what was listed before it may be older than a dispatch
            # another watcher made under a claim that has since expired.
            stale = await self._unserved_recoveries(room, memory.job_id)
            if stale is None:
                return "already dispatched"
        try:
            for dispatch in stale:
                await self._lk.agent_dispatch.delete_dispatch(dispatch.id, room)
            await self._lk.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(
                    agent_name=self._options.agent_name,
                    room=room,
                    metadata=recovery_metadata(memory.job_id),
                )
            )
        except BaseException:
            if won:
                await self._claims.release(claim)
            raise
        self.dispatched.append((room, memory.job_id))
        logger.warning(
            "the agent of %s died (job %s): dispatched again",
            room,
            memory.job_id,
            extra={"room": room, "recovery": "dispatched", "recovered_job": memory.job_id},
        )
        return "dispatched"

    async def _unserved_recoveries(self, room: str, job_id: str) -> list[api.AgentDispatch] | None:
        """None when a dispatch recovering `job_id` has its job or may still get one; else those
        that no worker took within `dispatch_grace` (to be made again)."""
        stale: list[api.AgentDispatch] = []
        now_ns = time.time_ns()
        for dispatch in await self._lk.agent_dispatch.list_dispatch(room_name=room):
            if dispatch.agent_name != self._options.agent_name:
                continue
            if recovered_job(dispatch) != job_id:
                continue
            age = (now_ns - dispatch.state.created_at) / 1e9
            if dispatch.state.jobs or age < self._options.dispatch_grace:
                return None
            stale.append(dispatch)
        return stale
