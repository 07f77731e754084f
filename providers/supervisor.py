"""The avatar's whole life in one job, under faults: start or fall back, watch, recover, end.

- Start: the provider call needs the room's name and SID and the agent's identity, not a connected
  room, so it begins as soon as the job arrives. Speech meanwhile waits in the speech router.
  Any failure to start or to join in time (whatever the error) gives the agent its own voice.
- Watch: the avatar leaving the room, stopping its video, or its speech stream failing moves the
  agent's speech to its own track at once (the utterance in flight is replayed there); then new
  provider sessions are started with backoff, up to `max_restarts`, and speech goes back to the
  avatar when its video is up.
- Guard: an avatar we minted a token for that is not the one we expect (late after a fallback, the
  orphan of a create whose reply was lost, an old one coming back) is removed when it joins, for
  as long as the tokens we minted live.
- End: on every exit path (the room going away, the session closing, the job shutting down) every
  session is ended where the provider can, and every avatar participant removed. A create still in
  flight is waited for, so the session it made is ended too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from livekit import api, rtc
from livekit.agents import AgentSession, utils
from livekit.agents.voice.avatar import DataStreamAudioOutput
from livekit.agents.voice.events import MetricsCollectedEvent
from livekit.agents.voice.room_io.types import DEFAULT_CLOSE_ON_DISCONNECT_REASONS

from .errors import AvatarJoinTimeoutError
from .lifecycle import AvatarLifecycleMetrics, JobTimeline
from .retry import RetryPolicy
from .session import (
    AvatarOptions,
    LiveKitCredentials,
    ProviderAvatarSession,
    ProviderStartRequest,
    describe,
)
from .speech_router import SinkKind, SpeechRouter
from .status import AvatarStatusAttributes
from .token import AvatarTokenRequest, mint_avatar_token

logger = logging.getLogger("avatar.supervisor")

# Restarts wait 0.25-0.5 s, then 0.5-1 s, ... (equal jitter), at most 8 s.
RESTART_BACKOFF = RetryPolicy(base_delay=0.5, max_delay=8.0)
# At the job's end, how long to wait for the avatar of a session that cannot be stopped (it ends
# only when its participant is removed) and has not joined yet.
STRAGGLER_WAIT = 10.0


@dataclass(frozen=True)
class ProviderSetup:
    """What the supervisor needs from the configured provider."""

    name: str
    sample_rate: int
    options: AvatarOptions
    livekit_url: str  # where the provider's avatar joins LiveKit
    # (identity, options) -> a session not yet started
    new_session: Callable[[str, AvatarOptions], ProviderAvatarSession]
    possible_orphans: Callable[[], int] = lambda: 0
    aclose: Callable[[], Awaitable[None]] | None = None


# (provider, avatar identity, provider session id or None before the provider answered)
AvatarStarted = Callable[[str, str, str | None], None]


@dataclass(frozen=True)
class JobRoom:
    """The job's room and agent, as known when the job arrives (before connecting)."""

    name: str
    sid: str | None
    agent_identity: str
    job_id: str = ""

    def avatar_identity(self, base: str) -> str:
        """`base` made unique to this job: another job in the same room (one that takes over from
        a dead one, a duplicate dispatch) never collides with our avatar, nor removes it."""
        tag = self.job_id.removeprefix("AJ_")
        return f"{base}-{tag}" if tag else base


class AvatarSupervisor:
    def __init__(
        self,
        *,
        room: rtc.Room,
        job: JobRoom,
        provider: ProviderSetup,
        livekit: LiveKitCredentials,
        timeline: JobTimeline,
        connect: Callable[[], Awaitable[None]],
        rng: random.Random | None = None,
        on_avatar: AvatarStarted | None = None,
    ) -> None:
        self._room = room
        self._on_avatar = on_avatar  # told of every avatar we mint a token for, then of its session
        self._job = job
        self._provider = provider
        self._options = provider.options
        self._livekit = livekit
        self._timeline = timeline
        self._connect = connect
        self._connecting: asyncio.Future[None] | None = None
        self._rng = rng or random.Random()
        self.router = SpeechRouter(
            room,
            sample_rate=provider.sample_rate,
            playout_grace=self._options.playout_grace,
            clear_timeout=self._options.clear_buffer_timeout,
            on_sink_failed=self._on_sink_failed,
            on_unconfirmed=self._on_unconfirmed,
            on_first_audio=self._on_first_audio,
        )
        self._sessions: list[ProviderAvatarSession] = []
        self._ending_sessions: dict[ProviderAvatarSession, asyncio.Task[None]] = {}
        self._live: ProviderAvatarSession | None = None  # joined, speech goes to it
        self._expected: str | None = None  # the identity whose join we wait for or have
        self._minted: set[str] = set()
        self._guard_until = 0.0  # loop time: when the last token we minted expires
        self._removed: dict[str, asyncio.Event] = {}  # set once that identity was removed
        self._seen: set[str] = set()  # identities that have been in the room
        self._removing: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lost = asyncio.Event()
        self._left_at: float | None = None
        self._run_task: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self._unended: list[str] = []
        self._listening = False
        self._session: AgentSession[Any] | None = None
        self._scan: asyncio.Task[None] | None = None
        self.status = AvatarStatusAttributes(room, self._connected)
        timeline.add_metrics_sink(self.status)

    # -- the job's side ------------------------------------------------------------------------

    def attach(self, session: AgentSession[Any]) -> None:
        """Make the router the end of the session's audio, and the session the metrics' home.

        Call before `session.start`: RoomIO then wraps the router instead of making its own output.
        """
        session.output.audio = self.router
        self._session = session

        def to_session_metrics(metrics: AvatarLifecycleMetrics) -> None:
            session.emit("metrics_collected", MetricsCollectedEvent(metrics=metrics))

        self._timeline.add_metrics_sink(to_session_metrics)
        session.on("close", lambda _: self.begin_end())

    def start(self) -> None:
        """Begin the avatar's start (or fall-back) beside the rest of the job."""
        if self._run_task is not None:
            raise RuntimeError("the avatar supervisor starts once")
        self._listen(True)
        self._run_task = asyncio.create_task(self._run(), name="avatar-supervisor")

    def begin_end(self) -> None:
        """Start ending every provider session now (the room or the session is going away)."""
        if self._closing is None:
            # From now on nothing is "the avatar": its departure is no loss to recover from.
            self._live = None
            self._expected = None
            self._closing = asyncio.create_task(self._end_all(), name="avatar-end")

    async def aclose(self) -> None:
        """End every provider session and remove every avatar; returns when that is done."""
        self.begin_end()
        assert self._closing is not None
        await asyncio.shield(self._closing)

    # -- start, watch, recover -----------------------------------------------------------------

    async def _run(self) -> None:
        self._scan = asyncio.create_task(self._scan_once_connected(), name="avatar-guard-scan")
        if not await self._attempt(0):
            return
        restarts = 0
        while True:
            await self._lost.wait()
            self._lost.clear()
            while True:
                if restarts >= self._options.max_restarts:
                    self._timeline.event(
                        "failed",
                        level=logging.ERROR,
                        reason=f"no restart left ({self._options.max_restarts} allowed)",
                        timings=self._outage(),
                    )
                    return
                await asyncio.sleep(RESTART_BACKOFF.backoff(restarts, self._rng))
                if self._closing is not None or not self._room.isconnected():
                    return  # the avatar went with the room (deleted, or the agent disconnected)
                restarts += 1
                if await self._attempt(restarts):
                    self._timeline.event(
                        "recovered",
                        attempt=restarts,
                        provider_session_id=self._live.session_id if self._live else None,
                        timings=self._outage(),
                    )
                    break

    def _outage(self) -> dict[str, float]:
        if self._left_at is None:
            return {}
        return {"outage": round(self._timeline.now() - self._left_at, 3)}

    def _identity(self, attempt: int) -> str:
        base = self._job.avatar_identity(self._options.identity)
        return base if attempt == 0 else f"{base}-{attempt}"

    async def _attempt(self, attempt: int) -> bool:
        """Start one provider session and wait for its avatar's video; True when speech goes to it."""
        identity = self._identity(attempt)
        session = self._provider.new_session(identity, self._options)
        self._sessions.append(session)
        self._expected = identity
        first = attempt == 0
        started_at = self._timeline.now()
        self._timeline.event("starting", attempt=attempt, identity=identity)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._options.start_timeout
        try:
            token = self._mint(identity)
            if self._on_avatar is not None:
                self._on_avatar(self._provider.name, identity, None)
            if first:
                self._timeline.mark("token_minted")
            request = ProviderStartRequest(
                livekit_url=self._provider.livekit_url,
                livekit_token=token,
                room_name=self._job.name,
                room_sid=self._job.sid,
                deadline=deadline,
            )
            if first:
                self._timeline.mark("provider_call_sent")
            # The HTTP layer ends the call at the deadline with a typed error; this only backs it up.
            async with asyncio.timeout_at(deadline + 1.0):
                await session.start(request)
            if self._on_avatar is not None:
                self._on_avatar(self._provider.name, identity, session.session_id)
            answered_at = self._timeline.now()
            if first:
                self._timeline.mark("provider_answered")
            await self._connected()
            await self._wait_for_video(identity)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self._give_up(session, attempt, error, started_at)
            return False
        if identity not in self._room.remote_participants:
            # It left between showing its video and now: that is a failure of this start.
            self._give_up(session, attempt, RuntimeError("left right after joining"), started_at)
            return False
        self._live = session
        self._seen.add(identity)
        self.router.to_avatar(
            DataStreamAudioOutput(
                self._room,
                destination_identity=identity,
                sample_rate=session.sample_rate,
                wait_remote_track=rtc.TrackKind.KIND_VIDEO,
                clear_buffer_timeout=self._options.clear_buffer_timeout,
            ),
            identity,
        )
        if first:
            self._timeline.mark("avatar_joined")
        now = self._timeline.now()
        self._timeline.event(
            "joined",
            attempt=attempt,
            provider_session_id=session.session_id,
            identity=identity,
            timings={
                "start_to_join": round(now - started_at, 3),
                "provider_call": round(answered_at - started_at, 3),
                "join_after_answer": round(now - answered_at, 3),
            },
        )
        return True

    def _mint(self, identity: str) -> str:
        token = mint_avatar_token(
            AvatarTokenRequest(
                room_name=self._job.name,
                avatar_identity=identity,
                agent_identity=self._job.agent_identity,
                ttl=self._options.token_ttl,
            ),
            api_key=self._livekit.api_key,
            api_secret=self._livekit.api_secret,
        )
        self._minted.add(identity)
        expires = asyncio.get_running_loop().time() + self._options.token_ttl.total_seconds()
        self._guard_until = max(self._guard_until, expires)
        return token

    async def _wait_for_video(self, identity: str) -> None:
        limit = self._options.join_timeout
        try:
            async with asyncio.timeout(limit):
                await utils.wait_for_participant(self._room, identity=identity)
                await utils.wait_for_track_publication(
                    self._room, identity=identity, kind=rtc.TrackKind.KIND_VIDEO
                )
        except TimeoutError:
            raise AvatarJoinTimeoutError(self._provider.name, identity, limit) from None

    def _give_up(
        self, session: ProviderAvatarSession, attempt: int, error: Exception, started_at: float
    ) -> None:
        """This start failed: speak without it, end what it may have started, guard its identity."""
        self._expected = None
        if attempt == 0:
            self.router.to_own_voice()
            self._timeline.avatar_settled()
        self._timeline.event(
            "failed",
            level=logging.ERROR,
            attempt=attempt,
            provider_session_id=session.session_id,
            reason=describe(error),
            error_type=type(error).__name__,
            possible_orphans=self._provider.possible_orphans(),
            timings={"after": round(self._timeline.now() - started_at, 3)},
        )
        self._end_soon(session)
        self._remove_strays()

    # -- watchdog ------------------------------------------------------------------------------

    def _listen(self, on: bool) -> None:
        if on == self._listening:
            return
        self._listening = on
        method = self._room.on if on else self._room.off
        method("participant_connected", self._on_participant_connected)
        method("participant_attributes_changed", self._on_attributes_changed)
        method("participant_disconnected", self._on_participant_disconnected)
        method("track_unpublished", self._on_track_unpublished)
        method("disconnected", self._on_room_disconnected)
        method("reconnected", self._on_room_connected)

    def _on_participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        if self._ends_the_conversation(participant):
            # The session closes on this too, but only after its own teardown: do not wait for it.
            self.begin_end()
            return
        if self._live is not None and participant.identity == self._live.identity:
            reason = rtc.DisconnectReason.Name(
                participant.disconnect_reason or rtc.DisconnectReason.UNKNOWN_REASON
            )
            self._avatar_lost(f"left the room ({reason})")

    def _on_track_unpublished(
        self, publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
    ) -> None:
        if (
            self._live is not None
            and participant.identity == self._live.identity
            and publication.kind == rtc.TrackKind.KIND_VIDEO
        ):
            self._avatar_lost("stopped its video")

    def _on_sink_failed(self, kind: SinkKind, error: BaseException) -> None:
        if kind == "avatar" and self._live is not None:
            self._avatar_lost(f"speech to it failed ({describe(error)})")

    def _on_unconfirmed(self, kind: SinkKind, duration: float) -> None:
        self._timeline.event(
            "unconfirmed",
            level=logging.WARNING,
            provider_session_id=self._live.session_id if self._live else None,
            reason=f"the {kind} did not confirm an utterance of {duration:.1f}s",
        )

    def _on_first_audio(self, kind: SinkKind) -> None:
        if kind == "avatar":
            self._timeline.mark("first_audio_to_avatar")

    def _on_room_disconnected(self, *_: object) -> None:
        self.begin_end()

    def _on_room_connected(self, *_: object) -> None:
        # Participants already in the room raise no event of their own: a stray among them too.
        self._remove_strays()

    async def _connected(self) -> None:
        """Wait for the room to be connected. A waiter that gives up (the job ending) never cancels
        the connect itself: livekit's Room.connect cancelled half-way leaves its native side waiting
        for an answer it never gets, and that takes the process down."""
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        await asyncio.shield(self._connecting)

    async def _scan_once_connected(self) -> None:
        await self._connected()
        self._remove_strays()

    def _ends_the_conversation(self, participant: rtc.RemoteParticipant) -> bool:
        """The user RoomIO talks with left for good: the session will close (as RoomIO does)."""
        if self._session is None:
            return False
        try:
            linked = self._session.room_io.linked_participant
        except RuntimeError:  # the session has no RoomIO (yet)
            return False
        return (
            linked is not None
            and linked.identity == participant.identity
            and participant.disconnect_reason in DEFAULT_CLOSE_ON_DISCONNECT_REASONS
        )

    def _avatar_lost(self, reason: str) -> None:
        session, self._live = self._live, None
        self._expected = None
        self.router.to_own_voice()  # first: the user must not wait on anything else
        self._left_at = self._timeline.now()
        self._timeline.event(
            "left",
            level=logging.WARNING,
            provider_session_id=session.session_id if session else None,
            reason=reason,
        )
        if session is not None:
            self._end_soon(session)
        self._lost.set()

    # -- guard: no avatar we gave up on stays ---------------------------------------------------

    def _on_participant_connected(self, participant: rtc.RemoteParticipant) -> None:
        self._seen.add(participant.identity)
        self._check_stray(participant)

    def _on_attributes_changed(self, changed: dict[str, str], participant: rtc.Participant) -> None:
        if isinstance(participant, rtc.RemoteParticipant):
            self._check_stray(participant)

    def _remove_strays(self) -> None:
        for participant in list(self._room.remote_participants.values()):
            self._seen.add(participant.identity)
            self._check_stray(participant)

    def _check_stray(self, participant: rtc.RemoteParticipant) -> None:
        identity = participant.identity
        # Every identity this job minted, and nothing else: another job's avatar is that job's.
        if identity not in self._minted or identity == self._expected or identity in self._removing:
            return
        if asyncio.get_running_loop().time() > self._guard_until:
            return  # no token of ours can still let it in: not one of ours
        self._removing.add(identity)
        self._spawn(self._remove_stray(identity), f"remove-{identity}")

    async def _remove_stray(self, identity: str) -> None:
        try:
            if await self._remove_participant(identity):
                self._timeline.event(
                    "removed",
                    level=logging.WARNING,
                    reason=f"{identity} joined after its session was given up",
                    identity=identity,
                )
        finally:
            self._removing.discard(identity)

    # -- ending sessions -----------------------------------------------------------------------

    def _end_soon(self, session: ProviderAvatarSession) -> None:
        if session not in self._ending_sessions:
            self._ending_sessions[session] = self._spawn(self._end(session), "avatar-session-end")

    async def _end(self, session: ProviderAvatarSession) -> None:
        outcome = await session.stop()
        if outcome.unended:
            self._unended.append(f"{session.provider} {outcome.session_id}: {outcome.unended}")
        if await self._remove_participant(session.identity):
            self._timeline.event(
                "removed",
                provider_session_id=session.session_id,
                reason=f"{session.identity} removed as its session ended",
                identity=session.identity,
            )

    async def _end_all(self) -> None:
        started = self._timeline.now()
        if self._run_task is not None:
            await utils.aio.cancel_and_wait(self._run_task)
        if self._scan is not None:
            await utils.aio.cancel_and_wait(self._scan)
        # The conversation is over: no more speech to any avatar (the session's own teardown
        # would otherwise clear an avatar that is being removed) and no agent track.
        await self.router.aclose()
        for session in self._sessions:
            self._end_soon(session)
        await asyncio.gather(*self._ending_sessions.values(), return_exceptions=True)
        await self._wait_for_stragglers()
        self._listen(False)
        await asyncio.gather(*self._tasks, return_exceptions=True)  # removals under way
        await self.status.aclose()
        if self._provider.aclose is not None:
            await self._provider.aclose()
        self._timeline.report_startup()
        self._timeline.event(
            "ended",
            level=logging.WARNING if self._unended else logging.INFO,
            reason="; ".join(self._unended) or None,
            sessions=len(self._sessions),
            possible_orphans=self._provider.possible_orphans() + len(self._unended),
            timings={"ended_in": round(self._timeline.now() - started, 3)},
        )
        logger.info(
            "%s avatar session closed",
            self._provider.name,
            extra={"provider": self._provider.name, "sessions": len(self._sessions)},
        )

    async def _wait_for_stragglers(self) -> None:
        """A session that only ends with its participant, whose avatar has not joined yet: wait
        (bounded) for it to join, so the guard can remove it before the job lets go of the room."""
        self._seen.update(self._room.remote_participants)
        events = [
            self._removed_event(s.identity)
            for s in self._sessions
            if s.created and not s.can_stop and s.identity not in self._seen
        ]
        events = [event for event in events if not event.is_set()]
        if not events or not self._room.isconnected():
            return
        limit = min(self._options.join_timeout, STRAGGLER_WAIT)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit):
                await asyncio.gather(*(event.wait() for event in events))

    async def _remove_participant(self, identity: str) -> bool:
        """Remove `identity` from the room with our own credentials; True if it was there."""
        try:
            async with (
                asyncio.timeout(self._options.stop_timeout),
                api.LiveKitAPI(
                    self._livekit.url, self._livekit.api_key, self._livekit.api_secret
                ) as livekit_api,
            ):
                await livekit_api.room.remove_participant(
                    api.RoomParticipantIdentity(room=self._job.name, identity=identity)
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

    def _removed_event(self, identity: str) -> asyncio.Event:
        return self._removed.setdefault(identity, asyncio.Event())

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
