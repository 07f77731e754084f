"""What happened to a job and its avatar, and when: one mechanism for the start-up trace and the
avatar's lifecycle events.

Every record is a structured log line (logger `avatar.lifecycle`, fields `avatar_event`, `provider`,
`provider_session_id`, `attempt`, `reason`, `timings`) and the same figures as an `AvatarMetrics`
in the session's `metrics_collected` events. Times are seconds; `timings.since_job_received` places
each event on the job's clock (from the moment the worker received the job request).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Literal

from livekit.agents.metrics.base import AvatarMetrics, Metadata

logger = logging.getLogger("avatar.lifecycle")

# The phases of a job's start, in the order they usually happen (several overlap).
STARTUP_PHASES = (
    "job_received",
    "connected",
    "token_minted",
    "provider_call_sent",
    "provider_answered",
    "avatar_joined",
    "first_voice",  # the first audio of the agent's speech to a sink: its own voice or the avatar
    "first_audio_to_avatar",
    "session_started",
)

AvatarEvent = Literal[
    "startup",  # the start-up trace: every phase's time since the job was received
    "starting",  # a provider session is being started (attempt 0, or a restart)
    "joined",  # its avatar is in the room with video; speech goes to it
    "failed",  # it could not start or join: the agent speaks in its own voice
    "left",  # the avatar left mid-call or stopped its video: the agent took its voice back
    "recovered",  # a new avatar is up after one left
    "renewing",  # the live avatar's session is near its length cap: its successor is starting
    "renewed",  # speech moved to the successor at a pause; the old session is being ended
    "renewal_failed",  # the successor did not come: the live avatar speaks on until its cap
    "removed",  # an avatar that was not (or no longer) wanted joined, and was removed
    "voice_failed",  # the agent's own voice could not be published: turns end unheard meanwhile
    "unconfirmed",  # the avatar did not confirm an utterance played; the turn went on without it
    "ended",  # every provider session of the job was ended, as far as the provider allows
]


class AvatarLifecycleMetrics(AvatarMetrics):
    """`AvatarMetrics` with the lifecycle event it reports (type stays "avatar_metrics")."""

    event: str
    room: str | None = None
    provider_session_id: str | None = None
    attempt: int | None = None
    reason: str | None = None
    timings: dict[str, float] = {}  # noqa: RUF012 - pydantic copies field defaults
    # The event's other figures and names (counts, an HTTP status, an error's type), for listeners.
    details: dict[str, str | int | float] = {}  # noqa: RUF012 - pydantic copies field defaults


MetricsSink = Callable[[AvatarLifecycleMetrics], None]


class JobTimeline:
    """Clock and reporter of one job: marks start-up phases, writes lifecycle events."""

    def __init__(
        self,
        *,
        room: str,
        provider: str,
        received_at: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._room = room
        self._provider = provider
        self._clock = clock
        self._marks: dict[str, float] = {}
        self._mark("job_received", received_at or clock())
        self._metrics_sinks: list[MetricsSink] = []
        self._startup_reported = False
        self._avatar_settled = False

    @property
    def room(self) -> str:
        return self._room

    def add_metrics_sink(self, sink: MetricsSink) -> None:
        self._metrics_sinks.append(sink)

    def now(self) -> float:
        return self._clock()

    def _mark(self, phase: str, at: float) -> None:
        self._marks.setdefault(phase, at)

    def mark(self, phase: str, at: float | None = None) -> None:
        """Record the first time `phase` happened; reports the start-up once it is complete."""
        self._mark(phase, self._clock() if at is None else at)
        if phase == "first_audio_to_avatar":
            self._avatar_settled = True
        self._report_startup_if_complete()

    def avatar_settled(self) -> None:
        """The avatar's start is over either way (speaking through it, or the agent's own voice)."""
        self._avatar_settled = True
        self._report_startup_if_complete()

    def since(self, phase: str, at: float | None = None) -> float | None:
        start = self._marks.get(phase)
        if start is None:
            return None
        return round((self._clock() if at is None else at) - start, 3)

    def phases(self) -> dict[str, float]:
        received = self._marks["job_received"]
        return {
            phase: round(self._marks[phase] - received, 3)
            for phase in STARTUP_PHASES
            if phase in self._marks
        }

    def _report_startup_if_complete(self) -> None:
        if self._avatar_settled and "session_started" in self._marks:
            self.report_startup()

    def report_startup(self) -> None:
        """The start-up trace, once (at the latest when the job ends, with what is known)."""
        if self._startup_reported:
            return
        self._startup_reported = True
        phases = self.phases()
        self.event(
            "startup",
            message="job start-up: "
            + ", ".join(f"{phase} {seconds:.3f}s" for phase, seconds in phases.items()),
            timings=phases,
        )

    def event(
        self,
        event: AvatarEvent,
        *,
        message: str | None = None,
        level: int = logging.INFO,
        provider_session_id: str | None = None,
        attempt: int | None = None,
        reason: str | None = None,
        timings: dict[str, float] | None = None,
        **fields: Any,
    ) -> None:
        """Log one lifecycle event and put it in the session's metrics."""
        at = self._clock()
        all_timings = {"since_job_received": self.since("job_received", at) or 0.0}
        all_timings.update(timings or {})
        metrics = AvatarLifecycleMetrics(
            timestamp=at,
            event=event,
            room=self._room,
            provider_session_id=provider_session_id,
            attempt=attempt,
            reason=reason,
            timings=all_timings,
            details={
                name: value
                for name, value in fields.items()
                if isinstance(value, str | int | float) and not isinstance(value, bool)
            },
            metadata=Metadata(model_provider=self._provider),
        )
        if event == "joined":
            metrics.session_started_time = self._marks.get("provider_call_sent")
            metrics.avatar_joined_time = at
        # Listeners first: once the line is logged, what it reports is counted everywhere.
        for sink in self._metrics_sinks:
            try:
                sink(metrics)
            except Exception:
                logger.exception("a metrics listener failed on the avatar %s event", event)
        text = message or f"avatar {event}" + (f": {reason}" if reason else "")
        logger.log(
            level,
            text,
            extra={
                "avatar_event": event,
                "provider": self._provider,
                "provider_session_id": provider_session_id,
                "attempt": attempt,
                "reason": reason,
                "timings": all_timings,
                "room": self._room,
                **fields,
            },
        )
