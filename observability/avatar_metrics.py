"""The avatar's metrics: what each job's lifecycle events (providers/lifecycle.py) add to them.

One `AvatarMetricsRecorder` per job listens to the job's timeline. Every metric is labelled by
provider only (and a small fixed set of outcomes), never by room or session: their number must not
grow with the traffic. Metrics made in a job process reach the worker's `/metrics` through
prometheus_client's multiprocess files (observability/prometheus.py).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from providers.lifecycle import AvatarLifecycleMetrics

SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
END_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)

SESSIONS_LIVE = Gauge(
    "avatar_sessions_live",
    "Provider sessions whose avatar is in the room carrying the agent's speech",
    ["provider"],
    multiprocess_mode="livesum",
)
SESSION_STARTS = Counter(
    "avatar_session_starts",
    "Provider session starts (first or restart), by how they ended",
    ["provider", "outcome", "status_class"],
)
FALLBACKS = Counter(
    "avatar_fallbacks",
    "Times the agent took back its own voice",
    ["provider", "cause"],
)
RESTARTS = Counter(
    "avatar_restarts", "New provider sessions after an avatar was lost", ["provider"]
)
RENEWALS = Counter(
    "avatar_renewals",
    "Planned renewals of a provider session before its length cap, by outcome",
    ["provider", "outcome"],
)
STRAYS_REMOVED = Counter(
    "avatar_late_avatars_removed",
    "Avatars removed because they joined when they were no longer wanted",
    ["provider"],
)
POSSIBLE_ORPHANS = Counter(
    "avatar_possible_orphans",
    "Creates that may have made a provider session the job cannot end (never retried)",
    ["provider"],
)
UNENDED = Counter(
    "avatar_sessions_unended",
    "Provider sessions that could not be ended when their job ended",
    ["provider"],
)
PROVIDER_ANSWER = Histogram(
    "avatar_provider_answer_seconds",
    "From a start's first provider call to the provider's answer (starts that joined)",
    ["provider"],
    buckets=SECONDS_BUCKETS,
)
JOIN = Histogram(
    "avatar_join_seconds",
    "From a start's first provider call to its avatar's video in the room",
    ["provider"],
    buckets=SECONDS_BUCKETS,
)
FIRST_AUDIO = Histogram(
    "avatar_first_audio_seconds",
    "From the job request to the first audio sent to the avatar",
    ["provider"],
    buckets=SECONDS_BUCKETS,
)
SESSION_END = Histogram(
    "avatar_session_end_seconds",
    "From the job's end to every provider session of it ended",
    ["provider"],
    buckets=END_BUCKETS,
)

# Every metric family the worker exports for avatars (the README's table, the dashboard's test).
AVATAR_METRICS = (
    SESSIONS_LIVE,
    SESSION_STARTS,
    FALLBACKS,
    RESTARTS,
    RENEWALS,
    STRAYS_REMOVED,
    POSSIBLE_ORPHANS,
    UNENDED,
    PROVIDER_ANSWER,
    JOIN,
    FIRST_AUDIO,
    SESSION_END,
)


def status_class(status: object) -> str:
    """ "4xx" or "5xx" for an HTTP error status, "none" for anything else (no answer, a timeout)."""
    if isinstance(status, int) and 400 <= status <= 599:
        return f"{status // 100}xx"
    return "none"


class AvatarMetricsRecorder:
    """A `JobTimeline` metrics sink: one job's lifecycle events, counted."""

    def __init__(self, provider: str) -> None:
        self._provider = provider
        self._live = 0  # this job's part of the live gauge
        self._orphans_counted = 0

    def __call__(self, event: AvatarLifecycleMetrics) -> None:
        handler = getattr(self, f"_on_{event.event}", None)
        if handler is not None:
            handler(event)

    def _on_starting(self, event: AvatarLifecycleMetrics) -> None:
        if event.attempt:
            RESTARTS.labels(self._provider).inc()

    def _on_joined(self, event: AvatarLifecycleMetrics) -> None:
        SESSION_STARTS.labels(self._provider, "joined", "none").inc()
        self._live += 1
        SESSIONS_LIVE.labels(self._provider).inc()
        if (answered := event.timings.get("provider_call")) is not None:
            PROVIDER_ANSWER.labels(self._provider).observe(answered)
        if (joined := event.timings.get("start_to_join")) is not None:
            JOIN.labels(self._provider).observe(joined)

    def _on_failed(self, event: AvatarLifecycleMetrics) -> None:
        if event.attempt is None:
            return  # the restarts ran out: no start of its own
        status = status_class(event.details.get("http_status"))
        outcome = "failed" if status == "none" else "refused"
        SESSION_STARTS.labels(self._provider, outcome, status).inc()
        if event.attempt == 0:
            FALLBACKS.labels(self._provider, "start_failed").inc()
        self._count_orphans(event.details.get("possible_orphans"))

    def _on_renewed(self, _: AvatarLifecycleMetrics) -> None:
        RENEWALS.labels(self._provider, "renewed").inc()  # one live session replaced another

    def _on_renewal_failed(self, event: AvatarLifecycleMetrics) -> None:
        RENEWALS.labels(self._provider, "failed").inc()
        self._count_orphans(event.details.get("possible_orphans"))

    def _on_left(self, _: AvatarLifecycleMetrics) -> None:
        FALLBACKS.labels(self._provider, "avatar_left").inc()
        self._not_live(1)

    def _on_removed(self, event: AvatarLifecycleMetrics) -> None:
        if event.details.get("cause") == "stray":
            STRAYS_REMOVED.labels(self._provider).inc()

    def _on_startup(self, event: AvatarLifecycleMetrics) -> None:
        if (first_audio := event.timings.get("first_audio_to_avatar")) is not None:
            FIRST_AUDIO.labels(self._provider).observe(first_audio)

    def _on_ended(self, event: AvatarLifecycleMetrics) -> None:
        self._not_live(self._live)
        unended = event.details.get("unended")
        unended = unended if isinstance(unended, int) else 0
        if unended:
            UNENDED.labels(self._provider).inc(unended)
        orphans = event.details.get("possible_orphans")
        if isinstance(orphans, int):
            self._count_orphans(orphans - unended)
        if (ended_in := event.timings.get("ended_in")) is not None:
            SESSION_END.labels(self._provider).observe(ended_in)

    def _not_live(self, sessions: int) -> None:
        sessions = min(sessions, self._live)
        if sessions > 0:
            self._live -= sessions
            SESSIONS_LIVE.labels(self._provider).dec(sessions)

    def _count_orphans(self, job_total: object) -> None:
        # The events carry the job's running total; the counter gets what is new.
        if isinstance(job_total, int) and job_total > self._orphans_counted:
            POSSIBLE_ORPHANS.labels(self._provider).inc(job_total - self._orphans_counted)
            self._orphans_counted = job_total
