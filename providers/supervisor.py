"""The avatar's whole life in one job, under faults: start or fall back, watch, recover, end.

- Start: the provider call needs the room's name and SID and the agent's identity, not a connected
  room, so it begins as soon as the job arrives. Speech meanwhile goes out in the agent's own voice
  and moves to the avatar at a sentence's end once its video is up (`speak_before_video`, the
  default), or waits in the speech router.
  Any failure to start or to join in time (whatever the error) gives the agent its own voice.
- Watch: the avatar leaving the room, stopping its video, or its speech stream failing moves the
  agent's speech to its own track at once (the utterance in flight is replayed there); then new
  provider sessions are started with backoff, up to `max_restarts`, and speech goes back to the
  avatar when its video is up.
- Renew: a provider session with a known length cap (`AvatarOptions.session_length_cap`) is
  renewed before it: a whole start and join plus `RENEWAL_MARGIN` before the cap, the next session
  starts beside the live one (a new identity), and speech moves to it at a pause in speech, as
  between two utterances; then the old one is ended. The page keeps seeing `joined`. A renewal
  that fails keeps the old avatar until its cap; the loss at the cap is then recovered as any other.
- Guard: an avatar we minted a token for that is not the one we expect (late after a fallback, the
  orphan of a create whose reply was lost, an old one coming back) is removed when it joins, for
  the whole job (providers/avatar_guard.py).
- End: on every exit path (the room going away, the session closing, the job shutting down) every
  session is ended where the provider can, and every avatar participant removed
  (providers/reaper.py). That comes first; what else the end does is bounded in time.

Its state is one value (`AvatarState`); once it is `ending`, nothing routes speech, recovers or
restarts: every callback does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from livekit import rtc
from livekit.agents import AgentSession, utils
from livekit.agents.voice.events import MetricsCollectedEvent
from livekit.agents.voice.room_io.types import DEFAULT_CLOSE_ON_DISCONNECT_REASONS

from .avatar_arrival import AvatarArrival
from .avatar_guard import AvatarGuard
from .lifecycle import AvatarLifecycleMetrics, JobTimeline
from .reaper import SessionReaper
from .retry import RetryPolicy
from .room_connect import connect_once
from .session import (
    AvatarOptions,
    LiveKitCredentials,
    ProviderAvatarSession,
    ProviderStartRequest,
    describe,
)
from .speech_router import SinkKind, SpeechRouter, avatar_output
from .status import AvatarStatusAttributes

logger = logging.getLogger("avatar.supervisor")

# Restarts wait 0.25-0.5 s, then 0.5-1 s, ... (equal jitter), at most 8 s.
RESTART_BACKOFF = RetryPolicy(base_delay=0.5, max_delay=8.0)
# How many times a new own voice is made after one could not be published.
OWN_VOICE_RETRIES = 3
# An avatar takes over from the agent's own voice at a pause at least this long: a sentence's end.
# Synthesised speech pauses 0.3-0.6 s between sentences, 0.1-0.25 s at a comma or colon (eSpeak's
# offline greeting: 0.31-0.35 s, and 0.10-0.21 s).
HANDOVER_PAUSE = 0.25


class AvatarState(enum.Enum):
    STARTING = "starting"  # the first provider session is starting; own voice (or speech held)
    LIVE = "live"  # an avatar is in the room with video; speech goes to it
    LOST = "lost"  # no avatar (it failed or left); the agent speaks in its own voice
    RESTARTING = "restarting"  # a new provider session is starting; the agent speaks meanwhile
    # the live avatar speaks on while its successor starts beside it (its session's cap is near)
    RENEWING = "renewing"
    ENDING = "ending"  # the job is ending: nothing routes, recovers or restarts any more


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
        provider_call_sent: asyncio.Event | None = None,
        on_new_avatar: Callable[[ProviderAvatarSession], None] | None = None,
    ) -> None:
        self._room = room
        self._on_new_avatar = on_new_avatar  # told of each provider session as it becomes current
        self._provider_call_sent = provider_call_sent
        self._on_avatar = on_avatar  # told of every avatar we mint a token for, then of its session
        self._job = job
        self._provider = provider
        self._options = provider.options
        self._timeline = timeline
        self._connected = connect_once(connect)
        self._rng = rng or random.Random()
        self.router = SpeechRouter(
            room,
            sample_rate=provider.sample_rate,
            playout_grace=self._options.playout_grace,
            clear_timeout=self._options.clear_buffer_timeout,
            on_sink_failed=self._on_sink_failed,
            on_unconfirmed=self._on_unconfirmed,
            on_first_audio=self._on_first_audio,
            handover_pause=HANDOVER_PAUSE if self._options.speak_before_video else None,
            handover_settle=self._options.handover_settle,
        )
        self.guard = AvatarGuard(
            room,
            room_name=job.name,
            identity_base=job.avatar_identity(provider.options.identity),
            agent_identity=job.agent_identity,
            options=self._options,
            livekit=livekit,
            timeline=timeline,
        )
        self._reaper = SessionReaper(
            guard=self.guard, timeline=timeline, join_timeout=self._options.join_timeout
        )
        self._state = AvatarState.STARTING
        self._own_voice_retries = 0
        self._voice_retries: set[asyncio.Task[None]] = set()
        self._state_changed = asyncio.Event()
        self._avatar: ProviderAvatarSession | None = None  # starting, or live (speech goes to it)
        self._renewal: ProviderAvatarSession | None = None  # the live one's successor, starting
        self._renewal_lost: str | None = None  # why the successor went before speech moved to it
        self._renew_at: float | None = None  # loop time the live avatar's renewal is due
        self._sessions_made = 0
        self._left_at: float | None = None
        self._run_task: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self._listening = False
        self._session: AgentSession[Any] | None = None
        self.status = AvatarStatusAttributes(room, self._connected)
        timeline.add_metrics_sink(self.status)

    @property
    def state(self) -> AvatarState:
        return self._state

    def _enter(self, state: AvatarState) -> None:
        if self._state is AvatarState.ENDING:
            return  # the end is final
        self._state = state
        self._state_changed.set()

    async def _until(self, state: AvatarState) -> None:
        while self._state is not state:
            self._state_changed.clear()
            await self._state_changed.wait()

    def _in(self, *states: AvatarState) -> bool:
        """The state is one of `states` (a call: the state changes across awaits and callbacks)."""
        return self._state in states

    @property
    def _ending(self) -> bool:
        return self._state is AvatarState.ENDING

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
        self.guard.watch(self._connected)
        self._run_task = asyncio.create_task(self._run(), name="avatar-supervisor")
        if self._options.speak_before_video:
            # The first word at once: the agent's own voice carries speech until the avatar's
            # video is up (its track is published as soon as the room is connected).
            self.router.to_own_voice()

    async def until_provider_called(self, limit: float) -> None:
        """Until the start's first provider call is on the wire, the start is over, or `limit`
        seconds: the job's own start (the session's set-up holds the event loop for tens of
        milliseconds) then cannot delay the call that the avatar's boot waits on."""
        sent, run = self._provider_call_sent, self._run_task
        if sent is None or run is None or sent.is_set():
            return
        waiting = asyncio.ensure_future(sent.wait())
        try:
            await asyncio.wait({waiting, run}, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()

    def begin_end(self) -> None:
        """Start ending every provider session now (the room or the session is going away)."""
        if self._closing is not None:
            return
        # From now on nothing is "the avatar": its departure is no loss to recover from, and no
        # avatar is wanted in the room.
        self._enter(AvatarState.ENDING)
        self._avatar = self._renewal = None
        self.guard.expect()
        # First, whatever happens next: every provider session is being ended (and any the start
        # still makes will be, at once).
        self._reaper.end_all_soon()
        if self._run_task is not None:
            self._run_task.cancel()
        self._closing = asyncio.create_task(self._end_all(), name="avatar-end")

    async def aclose(self) -> None:
        """End every provider session and remove every avatar; returns when that is done."""
        self.begin_end()
        assert self._closing is not None
        await asyncio.shield(self._closing)

    # -- start, watch, recover -----------------------------------------------------------------

    async def _run(self) -> None:
        if not await self._attempt(0):
            return
        restarts = 0
        while True:
            if await self._live_until_renewal():
                await self._renew()
                continue
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
                if self._ending or not self._room.isconnected():
                    return  # the avatar went with the room (deleted, or the agent disconnected)
                restarts += 1
                if await self._attempt(restarts):
                    self._timeline.event(
                        "recovered",
                        attempt=restarts,
                        provider_session_id=self._avatar.session_id if self._avatar else None,
                        timings=self._outage(),
                    )
                    break

    async def _live_until_renewal(self) -> bool:
        """Until the avatar is lost (False) or its session's renewal is due (True)."""
        renew_at = self._renew_at
        if renew_at is None:
            await self._until(AvatarState.LOST)
            return False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(renew_at):
                await self._until(AvatarState.LOST)
                return False
        return self._state is AvatarState.LIVE

    def _plan_renewal(self, begun: float) -> None:
        """The live avatar's session began starting at `begun` (loop time): renew it in time."""
        renew_after = self._options.renew_after
        self._renew_at = None if renew_after is None else begun + renew_after

    def _next_identity(self) -> str:
        """A fresh avatar identity for each provider session of the job (restart or renewal)."""
        identity = self.guard.identity_for(self._sessions_made)
        self._sessions_made += 1
        return identity

    def _outage(self) -> dict[str, float]:
        if self._left_at is None:
            return {}
        return {"outage": round(self._timeline.now() - self._left_at, 3)}

    async def _attempt(self, attempt: int) -> bool:
        """Start one provider session and wait for its avatar's video; True when speech goes to it."""
        if self._ending:
            return False
        first = attempt == 0
        identity = self._next_identity()
        started_at = self._timeline.now()
        self._enter(AvatarState.STARTING if first else AvatarState.RESTARTING)
        self.guard.expect(identity)
        self._timeline.event("starting", attempt=attempt, identity=identity)
        session: ProviderAvatarSession | None = None
        begun = asyncio.get_running_loop().time()
        try:
            session = self._new_session(identity)
            self._avatar = session
            if self._on_new_avatar is not None:
                self._on_new_avatar(session)
            answered_at, gone = await self._bring_up(session, first=first)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self._give_up(session, attempt, error, started_at)
            return False
        if self._ending:
            # The job's end began while this avatar's video was on its way: it is not to be used.
            return False
        self._enter(AvatarState.LIVE)
        self._plan_renewal(begun)
        if gone is None:
            # (An avatar already gone gets no speech: the data stream to it would wait for its
            # return until the room closes.)
            self.router.to_avatar(
                avatar_output(self._room, identity, sample_rate=session.sample_rate), identity
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
        if gone is not None:
            # It showed its video and went before this ran (a busy loop or a late answer makes
            # that window wide): the provider did start it, so it is lost and recovered as any
            # avatar that drops out.
            self._avatar_lost(f"{gone}, as it joined")
        return True

    def _new_session(self, identity: str) -> ProviderAvatarSession:
        session = self._provider.new_session(identity, self._options)
        self._reaper.add(session)  # from now on, the job's end ends it, whatever else happens
        return session

    async def _bring_up(
        self, session: ProviderAvatarSession, *, first: bool
    ) -> tuple[float, str | None]:
        """Start `session` at the provider and wait for its avatar's video in the room; returns
        the timeline's time the provider answered, and why the avatar went again if it did
        (AvatarArrival) before this returned."""
        identity = session.identity
        deadline = asyncio.get_running_loop().time() + self._options.start_timeout
        token = self.guard.mint(identity)
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
        with AvatarArrival(self._room, provider=self._provider.name, identity=identity) as arrival:
            # The HTTP layer ends the call at the deadline with a typed error; this backs it up.
            async with asyncio.timeout_at(deadline + 1.0):
                await session.start(request)
            if self._on_avatar is not None:
                self._on_avatar(self._provider.name, identity, session.session_id)
            answered_at = self._timeline.now()
            if first:
                self._timeline.mark("provider_answered")
            await self._connected()
            return answered_at, await arrival.video(self._options.join_timeout)

    # -- renewal before a session's length cap ------------------------------------------------

    async def _renew(self) -> None:
        """Start the live avatar's successor beside it; speech moves to it at a pause in speech,
        then the old session is ended. Neither the user nor the page sees a fault."""
        old = self._avatar
        if old is None or self._state is not AvatarState.LIVE:
            return
        self._enter(AvatarState.RENEWING)
        identity = self._next_identity()
        self.guard.expect(old.identity, identity)
        started_at = self._timeline.now()
        begun = asyncio.get_running_loop().time()
        self._renewal_lost = None
        self._timeline.event(
            "renewing",
            provider_session_id=old.session_id,
            identity=identity,
            reason=f"its session's length cap ({self._options.session_length_cap:g}s) is near",
        )
        session: ProviderAvatarSession | None = None
        try:
            session = self._new_session(identity)
            self._renewal = session
            _, gone = await self._bring_up(session, first=False)
            if self._renewal_lost is not None or gone is not None:
                raise RuntimeError(self._renewal_lost or f"{gone}, as it joined")
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self._renewal_failed(session, error, started_at)
            return
        if self._ending:
            return
        if self._in(AvatarState.RENEWING):
            self.router.to_avatar(
                avatar_output(self._room, identity, sample_rate=session.sample_rate), identity
            )
            await self._until_switched(identity)
            if self._ending:
                return
            if self._renewal_lost is not None:
                self.router.drop_avatar(identity)
                self._renewal_failed(session, RuntimeError(self._renewal_lost), started_at)
                return
        self._renewal = None
        self._avatar = session
        self.guard.expect(identity)
        self._plan_renewal(begun)
        if self._on_new_avatar is not None:
            self._on_new_avatar(session)
        timings = {"start_to_switch": round(self._timeline.now() - started_at, 3)}
        if self._in(AvatarState.RENEWING):
            self._enter(AvatarState.LIVE)
            self._timeline.event(
                "renewed",
                provider_session_id=session.session_id,
                identity=identity,
                reason=f"speech moved from {old.identity} at a pause; its session is ended",
                timings=timings,
            )
            self._reaper.end_soon(old)
            return
        # The old avatar went first (its cap came before a pause, or a fault): this one recovers.
        self._enter(AvatarState.LIVE)
        self.router.to_avatar(
            avatar_output(self._room, identity, sample_rate=session.sample_rate), identity
        )
        self._timeline.event(
            "joined",
            provider_session_id=session.session_id,
            identity=identity,
            timings={"start_to_join": round(self._timeline.now() - started_at, 3)},
        )
        self._timeline.event(
            "recovered",
            provider_session_id=session.session_id,
            identity=identity,
            timings={**timings, **self._outage()},
        )

    async def _until_switched(self, identity: str) -> None:
        """Until speech goes to the avatar `identity`, or the renewal ends otherwise (the old
        avatar or the new one gone, the job ending)."""
        switched = asyncio.ensure_future(self.router.until_speaking_through(identity))
        try:
            while not switched.done():
                if self._state is not AvatarState.RENEWING or self._renewal_lost is not None:
                    return
                self._state_changed.clear()
                changed = asyncio.ensure_future(self._state_changed.wait())
                try:
                    await asyncio.wait({switched, changed}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    changed.cancel()
        finally:
            switched.cancel()

    def _renewal_failed(
        self, session: ProviderAvatarSession | None, error: Exception, started_at: float
    ) -> None:
        """The successor did not come: the live avatar speaks on until its cap (a loss there is
        recovered as any other). Not a fault the page sees."""
        if self._ending:
            return
        self._renewal = None
        self._renew_at = None  # one renewal per session: a second would have no time left
        live = self._avatar if self._state is AvatarState.RENEWING else None
        if live is not None:
            self._enter(AvatarState.LIVE)
            self.guard.expect(live.identity)
        else:
            self.guard.expect()
        self._timeline.event(
            "renewal_failed", level=logging.WARNING, **self._failure(session, error, started_at)
        )
        self._drop_started(session)

    def _renewal_gone(self, reason: str) -> None:
        """The successor left or stopped its video before speech moved to it."""
        if self._renewal_lost is None:
            self._renewal_lost = reason
            self._state_changed.set()  # wakes `_until_switched`

    def _give_up(
        self,
        session: ProviderAvatarSession | None,
        attempt: int,
        error: Exception,
        started_at: float,
    ) -> None:
        """This start failed: speak without it, end what it may have started, guard its identity."""
        if self._ending:
            return  # the end takes care of the session; nothing is routed any more
        self._avatar = None
        self.guard.expect()
        self._enter(AvatarState.LOST)
        if attempt == 0:
            self.router.to_own_voice()
            self._timeline.avatar_settled()
        self._timeline.event(
            "failed",
            level=logging.ERROR,
            attempt=attempt,
            **self._failure(session, error, started_at),
        )
        self._drop_started(session)

    def _failure(
        self, session: ProviderAvatarSession | None, error: Exception, started_at: float
    ) -> dict[str, Any]:
        """What a lifecycle event says of a start that failed."""
        return {
            "provider_session_id": session.session_id if session else None,
            "reason": describe(error),
            "error_type": type(error).__name__,
            "http_status": getattr(error, "status_code", None),
            "possible_orphans": self._provider.possible_orphans(),
            "timings": {"after": round(self._timeline.now() - started_at, 3)},
        }

    def _drop_started(self, session: ProviderAvatarSession | None) -> None:
        """End what a failed start may have started, and remove its avatar if it comes."""
        if session is not None:
            self._reaper.end_soon(session, given_up=True)
        self.guard.remove_strays()

    # -- watchdog ------------------------------------------------------------------------------

    def _listen(self, on: bool) -> None:
        if on == self._listening:
            return
        self._listening = on
        method = self._room.on if on else self._room.off
        method("participant_disconnected", self._on_participant_disconnected)
        method("track_unpublished", self._on_track_unpublished)
        method("disconnected", self._on_room_disconnected)

    @property
    def live_avatar(self) -> ProviderAvatarSession | None:
        """The provider session whose avatar is in the room now (speech goes to it), if any."""
        return self._avatar if self._live_identity() is not None else None

    def _live_identity(self) -> str | None:
        if self._state in (AvatarState.LIVE, AvatarState.RENEWING) and self._avatar is not None:
            return self._avatar.identity
        return None

    def _renewal_identity(self) -> str | None:
        return self._renewal.identity if self._renewal is not None else None

    def _on_participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        if self._ending:
            return
        if self._ends_the_conversation(participant):
            # The session closes on this too, but only after its own teardown: do not wait for it.
            self.begin_end()
            return
        if participant.identity in (self._live_identity(), self._renewal_identity()):
            reason = rtc.DisconnectReason.Name(
                participant.disconnect_reason or rtc.DisconnectReason.UNKNOWN_REASON
            )
            self._gone(participant.identity, f"left the room ({reason})")

    def _on_track_unpublished(
        self, publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
    ) -> None:
        if publication.kind == rtc.TrackKind.KIND_VIDEO and participant.identity in (
            self._live_identity(),
            self._renewal_identity(),
        ):
            self._gone(participant.identity, "stopped its video")

    def _gone(self, identity: str, reason: str) -> None:
        if identity == self._live_identity():
            self._avatar_lost(reason)
        else:
            self._renewal_gone(reason)

    def _on_sink_failed(self, kind: SinkKind, error: BaseException) -> None:
        if kind == "avatar" and self._live_identity() is not None:
            self._avatar_lost(f"speech to it failed ({describe(error)})")
        elif kind == "own_voice" and not self._ending:
            self._own_voice_failed(error)

    def _own_voice_failed(self, error: BaseException) -> None:
        """The agent's own track could not be published: its turns end unheard (never hang). Say
        so, and make a new own voice after a backoff, a bounded number of times."""
        attempt = self._own_voice_retries
        self._timeline.event(
            "voice_failed",
            level=logging.ERROR,
            reason=f"the agent's own voice failed ({describe(error)})",
            attempt=attempt,
        )
        if attempt >= OWN_VOICE_RETRIES:
            return
        self._own_voice_retries += 1
        self._spawn_retry(RESTART_BACKOFF.backoff(attempt, self._rng))

    def _spawn_retry(self, delay: float) -> None:
        async def retry() -> None:
            await asyncio.sleep(delay)
            if self._state not in (AvatarState.ENDING, AvatarState.LIVE, AvatarState.RENEWING):
                self.router.to_own_voice()

        task = asyncio.ensure_future(retry())
        self._voice_retries.add(task)
        task.add_done_callback(self._voice_retries.discard)

    def _on_unconfirmed(self, kind: SinkKind, duration: float) -> None:
        if self._ending:
            return
        self._timeline.event(
            "unconfirmed",
            level=logging.WARNING,
            provider_session_id=self._avatar.session_id if self._avatar else None,
            reason=f"the {kind} did not confirm an utterance of {duration:.1f}s",
        )

    def _on_first_audio(self, kind: SinkKind) -> None:
        if self._ending:
            return
        self._timeline.mark("first_voice")
        if kind == "avatar":
            self._timeline.mark("first_audio_to_avatar")

    def _on_room_disconnected(self, *_: object) -> None:
        self.begin_end()

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
        if self._state not in (AvatarState.LIVE, AvatarState.RENEWING):
            return  # only a live avatar can be lost (and nothing is, once the job is ending)
        session, self._avatar = self._avatar, None
        # A successor on its way stays welcome: it takes over when its video is up.
        successor = self._renewal_identity()
        self.guard.expect(*([successor] if successor else []))
        self._enter(AvatarState.LOST)
        self.router.to_own_voice()  # first: the user must not wait on anything else
        self._left_at = self._timeline.now()
        self._timeline.event(
            "left",
            level=logging.WARNING,
            provider_session_id=session.session_id if session else None,
            reason=reason,
        )
        if session is not None:
            self._reaper.end_soon(session)

    # -- the end -------------------------------------------------------------------------------

    async def _end_all(self) -> None:
        started = self._timeline.now()
        try:
            # The conversation is over: no more speech to any avatar and no agent track. Bounded:
            # unpublishing goes through the native client, which has no timeout of its own.
            await asyncio.gather(
                self._bounded("the avatar's start", self._stopped_running()),
                self._bounded("the speech router", self.router.aclose()),
            )
        finally:
            await self._reaper.wait_ended()
            self._listen(False)
            await self.guard.aclose()  # the removals under way (each bounded)
            await self._bounded("the avatar status", self.status.aclose())
            if self._provider.aclose is not None:
                await self._bounded("the provider's HTTP session", self._provider.aclose())
            self._report_end(started)

    async def _stopped_running(self) -> None:
        if self._run_task is not None:
            await utils.aio.cancel_and_wait(self._run_task)
        await utils.aio.cancel_and_wait(*self._voice_retries)

    async def _bounded(self, what: str, work: Awaitable[None]) -> None:
        """A step of the end that is not ending a session: it may fail or hang, never hold it up."""
        limit = self._options.stop_timeout
        try:
            async with asyncio.timeout(limit):
                await work
        except TimeoutError:
            logger.warning("closing %s took over %.1fs: left behind", what, limit)
        except Exception:
            logger.exception("closing %s failed", what)

    def _report_end(self, started: float) -> None:
        unended = self._reaper.unended
        self._timeline.report_startup()
        self._timeline.event(
            "ended",
            level=logging.WARNING if unended else logging.INFO,
            reason="; ".join(unended) or None,
            sessions=self._reaper.sessions,
            unended=len(unended),
            possible_orphans=self._provider.possible_orphans() + len(unended),
            timings={"ended_in": round(self._timeline.now() - started, 3)},
        )
        logger.info(
            "%s avatar session closed",
            self._provider.name,
            extra={"provider": self._provider.name, "sessions": self._reaper.sessions},
        )
