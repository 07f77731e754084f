"""One provider session: the part every provider shares, once.

A provider only says how to start its session and, if it can, how to stop it (`_start_provider`,
`_stop_provider`). This class makes sure a session it started is never lost track of: a create still
in flight when the job ends is waited for (bounded) so the session it made can be ended, and a stop
that fails is reported as a session that may still be billing. What happens around a session (the
token, the join, speech routing, fallback, restarts) is the supervisor's (providers/supervisor.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import timedelta
from typing import ClassVar

logger = logging.getLogger("avatar.providers")

# A session with a length cap is renewed this long, plus a whole start and join, before its cap:
# time for the new avatar to take over at a pause in speech.
RENEWAL_MARGIN = 10.0


@dataclass(frozen=True)
class LiveKitCredentials:
    url: str
    api_key: str = field(repr=False)
    api_secret: str = field(repr=False)


@dataclass(frozen=True)
class AvatarOptions:
    """Provider-independent knobs of the avatar participant and its lifecycle."""

    identity: str
    # The avatar participant's display name in the room (None: its identity).
    display_name: str | None = None
    token_ttl: timedelta = timedelta(minutes=10)
    start_timeout: float = 30.0
    join_timeout: float = 30.0
    # Ending one session: terminate at the provider and remove the participant, each bounded by this.
    stop_timeout: float = 3.0
    # Finite, so a lost lk.playback_finished after an interruption cannot wedge the turn.
    clear_buffer_timeout: float = 2.0
    # How long past the end of an utterance the avatar may take to confirm it played.
    playout_grace: float = 2.0
    # New sessions after the avatar left mid-call.
    max_restarts: int = 2
    # The agent speaks in its own voice from the start; the avatar takes over at a sentence's end
    # once its video is up (docs/first-word.md). False: speech waits for the avatar's video.
    speak_before_video: bool = True
    # Seconds the avatar's video must have been up before it takes over within an utterance.
    handover_settle: float = 0.0
    # How long the provider lets one session live (None: no known cap). The avatar is renewed
    # `renew_after` seconds after its session's start began (docs/lifecycle.md).
    session_length_cap: float | None = None

    @property
    def renew_after(self) -> float | None:
        """Seconds from a session's start to its planned renewal (None: it is never renewed)."""
        if self.session_length_cap is None:
            return None
        lead = self.start_timeout + self.join_timeout + RENEWAL_MARGIN
        return max(0.0, self.session_length_cap - lead)


@dataclass(frozen=True)
class ProviderStartRequest:
    """What a provider needs to send its avatar into the room."""

    livekit_url: str
    livekit_token: str = field(repr=False)
    room_name: str
    room_sid: str | None
    deadline: float  # event-loop time by which the provider call must be done


@dataclass(frozen=True)
class StopOutcome:
    """How ending a session went: `unended` names why a session may still be running, if it may."""

    session_id: str | None
    unended: str | None = None


def describe(error: BaseException) -> str:
    """A log-safe, never-empty description (a bare TimeoutError has no text of its own)."""
    message = getattr(error, "message", None)  # livekit's API errors: the text without the fields
    text = message if isinstance(message, str) and message else str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class ProviderAvatarSession(ABC):
    """One session at a provider, whose avatar joins the room as `identity`."""

    provider_name: ClassVar[str]
    sample_rate: ClassVar[int]
    # Whether the provider has a way to end a session (else removing its participant ends it).
    can_stop: ClassVar[bool] = False

    def __init__(self, *, identity: str, options: AvatarOptions) -> None:
        self.identity = identity
        self._options = options
        self.session_id: str | None = None
        self._starting: asyncio.Task[str] | None = None
        self._stopped: asyncio.Task[StopOutcome] | None = None
        self._stop_requested = False
        self._create_sent = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(identity={self.identity!r}, session_id={self.session_id!r})"

    @property
    def provider(self) -> str:
        return self.provider_name

    @property
    def options(self) -> AvatarOptions:
        return self._options

    @property
    def created(self) -> bool:
        """The provider answered the create: there is a session to end."""
        return self.session_id is not None

    @property
    def start_in_flight(self) -> bool:
        return self._starting is not None and not self._starting.done()

    @abstractmethod
    async def _start_provider(self, request: ProviderStartRequest) -> str:
        """Start the provider's session; returns its session id."""

    async def _stop_provider(self, session_id: str, deadline: float) -> None:  # noqa: B027
        """End the provider's session by `deadline` (loop time), where the provider has a way to."""

    def _creating(self) -> None:
        """`_start_provider` calls this right before the request that may start a billed session.

        A session asked to stop before then never sends it (nothing can have been made so far, and
        the start is simply abandoned); after it, `stop` waits for its reply to end what it made.
        """
        if self._stop_requested:
            raise asyncio.CancelledError("the session was stopped before its create was sent")
        self._create_sent = True

    async def start(self, request: ProviderStartRequest) -> str:
        """Start the session; returns the provider's session id.

        The provider call runs in a task of its own: a caller that gives up (a deadline, the job
        ending) does not abandon a create the provider may be acting on; `stop` waits for it.
        """
        if self._starting is not None:
            raise RuntimeError("a provider session is started once")
        self._starting = asyncio.create_task(
            self._start_provider(request), name=f"{self.provider_name}-start"
        )
        self._starting.add_done_callback(self._remember_session_id)
        return await asyncio.shield(self._starting)

    def _remember_session_id(self, task: asyncio.Task[str]) -> None:
        if not task.cancelled() and task.exception() is None:
            self.session_id = task.result()

    async def stop(self) -> StopOutcome:
        """End the session at the provider, where the provider can; safe to call more than once."""
        if self._stopped is None:
            self._stopped = asyncio.create_task(self._stop(), name=f"{self.provider_name}-stop")
        return await asyncio.shield(self._stopped)

    async def _stop(self) -> StopOutcome:
        loop = asyncio.get_running_loop()
        budget = self._options.stop_timeout
        self._stop_requested = True
        starting = self._starting
        if starting is not None and not starting.done():
            if not self._create_sent:
                starting.cancel()  # nothing billed was asked for yet
            # The create's reply is the only way to learn the id of the session it made; the start
            # is bounded by its own deadline, this only backs that up.
            await asyncio.wait({starting}, timeout=self._options.start_timeout)
            if not starting.done():
                starting.cancel()  # the HTTP layer counts a create cut off in flight
                await asyncio.wait({starting})
        if starting is not None and starting.done() and not starting.cancelled():
            with contextlib.suppress(Exception):
                starting.result()  # retrieved here; the starter saw and reported it
        if self.session_id is None or not self.can_stop:
            return StopOutcome(self.session_id)
        # The provider call has its own deadline inside this one, so a slow stop says why it failed.
        deadline = loop.time() + budget
        try:
            async with asyncio.timeout(budget + 1.0):
                await self._stop_provider(self.session_id, deadline)
        except Exception as error:
            reason = describe(error)
            logger.warning(
                "could not end the %s session %s (%s): it may keep running until the provider "
                "ends it; counted as a possible orphan",
                self.provider_name,
                self.session_id,
                reason,
                extra={
                    "provider": self.provider_name,
                    "provider_session_id": self.session_id,
                    "possible_orphan": True,
                },
            )
            return StopOutcome(self.session_id, unended=reason)
        return StopOutcome(self.session_id)
