"""OpenTelemetry traces of the avatar's life in a job, exported over OTLP when configured.

`configure_tracing()` (in each job process) installs a tracer provider with an OTLP exporter when
the standard `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, and
nothing otherwise. It goes through `livekit.agents.telemetry.set_tracer_provider`, so the
framework's own spans (turns, LLM/TTS, RPCs) go the same way; with `allow_pii=False` the framework
strips the conversation from them. No MeterProvider is installed: LiveKit Cloud's metrics export
is skipped when one is, and the metrics are Prometheus's (observability/avatar_metrics.py).

The spans (`AvatarTracer`, a `JobTimeline` listener, and `provider_call` in providers/http.py):

    avatar.session            the avatar's whole life in the job
      avatar.start            one provider session's start: provider call and join (attempt 0)
      avatar.restart          the same, after an avatar was lost (attempt 1, 2, ...)
      avatar.provider_call    one HTTP call to the provider; each retry is an event
      avatar.join             from the provider's answer to the avatar's video in the room
      avatar.own_voice        the agent speaking in its own voice (a fallback), until an avatar is back
      avatar.end              ending every provider session of the job

Attributes are names, numbers and outcomes only: provider, attempt, HTTP status, outcome, error
type. Never a key, a token, a URL, a reason text or anything the user said.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator, Mapping

from livekit.agents.telemetry import set_tracer_provider, tracer
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Span, Status, StatusCode

from providers.lifecycle import AvatarLifecycleMetrics

from .avatar_metrics import status_class

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
SERVICE_NAME = "avatar-agent"

_installed: TracerProvider | None = None
# The avatar span of the job this process runs (a job process runs one job at a time): the parent
# of every provider call, including those made from the room's or the session's callbacks (a
# session ended as its avatar left), whose context is a framework span or none.
_job_span: Span | None = None


def otlp_configured(environ: Mapping[str, str] = os.environ) -> bool:
    return any(environ.get(name) for name in ENDPOINT_VARIABLES)


def _otlp_exporter() -> SpanExporter:
    protocol = os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
    )
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpSpanExporter,
    )

    return HttpSpanExporter()  # the endpoint, headers and timeout from the OTEL_* variables


def configure_tracing(exporter: SpanExporter | None = None) -> TracerProvider | None:
    """Install the tracer provider: to `exporter`, else over OTLP if configured, else none."""
    global _installed
    if exporter is None:
        if not otlp_configured():
            return None
        exporter = _otlp_exporter()
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    set_tracer_provider(provider, allow_pii=False)
    _installed = provider
    return provider


async def flush_traces(*_: object) -> None:
    """Send the job's spans still waiting in the batch (a job process may end right after); in a
    thread, so a slow collector never blocks the job's loop."""
    if _installed is not None:
        await asyncio.to_thread(_installed.force_flush, 5000)


# -- the provider's HTTP calls -----------------------------------------------------------------


@contextlib.contextmanager
def provider_call(provider: str, operation: str, method: str) -> Iterator[Span]:
    """A span for one call to the provider (every attempt of it), child of the job's avatar span
    (whichever task or callback makes the call), else of the current span."""
    context = trace.set_span_in_context(_job_span) if _job_span is not None else None
    with tracer.start_as_current_span(
        "avatar.provider_call",
        context=context,
        attributes={
            "avatar.provider": provider,
            "avatar.provider_call": operation,
            "http.request.method": method,
        },
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except BaseException as error:
            _set_error(span, error)
            raise
        span.set_attribute("avatar.outcome", "answered")


def note_retry(attempt: int, error: BaseException, delay: float) -> None:
    """An event on the current provider call: attempt `attempt` failed and is retried."""
    attributes: dict[str, str | int | float] = {
        "avatar.attempt": attempt,
        "error.type": type(error).__name__,
        "avatar.retry_in_seconds": round(delay, 3),
    }
    status = getattr(error, "status_code", None)
    if isinstance(status, int) and status > 0:
        attributes["http.response.status_code"] = status
    trace.get_current_span().add_event("retry", attributes)


def _set_error(span: Span, error: BaseException) -> None:
    status = getattr(error, "status_code", None)
    if isinstance(status, int) and status > 0:
        span.set_attribute("http.response.status_code", status)
    span.set_attribute("error.type", type(error).__name__)
    span.set_attribute("avatar.outcome", "failed")
    span.set_status(Status(StatusCode.ERROR))


# -- the avatar's lifecycle ---------------------------------------------------------------------


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


class AvatarTracer:
    """A `JobTimeline` listener: the avatar's life in one job as spans under `avatar.session`."""

    def __init__(self, provider: str, *, room: str) -> None:
        global _job_span
        self._provider = provider
        self.root = tracer.start_span(
            "avatar.session", attributes={"avatar.provider": provider, "avatar.room": room}
        )
        _job_span = self.root
        self._context = trace.set_span_in_context(self.root)
        self._start: Span | None = None
        self._own_voice: Span | None = None

    def __call__(self, event: AvatarLifecycleMetrics) -> None:
        handler = getattr(self, f"_on_{event.event}", None)
        if handler is not None:
            handler(event)

    def _child(self, name: str, start: float | None = None, **attributes: str | int) -> Span:
        return tracer.start_span(
            name,
            context=self._context,
            start_time=_ns(start) if start is not None else None,
            attributes={"avatar.provider": self._provider, **attributes},
        )

    def _on_starting(self, event: AvatarLifecycleMetrics) -> None:
        attempt = event.attempt or 0
        self._finish_start("superseded")
        name = "avatar.restart" if attempt else "avatar.start"
        self._start = self._child(name, event.timestamp, **{"avatar.attempt": attempt})

    def _on_joined(self, event: AvatarLifecycleMetrics) -> None:
        answered = event.timings.get("join_after_answer")
        if answered is not None:
            join = self._child(
                "avatar.join", event.timestamp - answered, **{"avatar.attempt": event.attempt or 0}
            )
            join.end(end_time=_ns(event.timestamp))
        self._finish_start("joined", at=event.timestamp)
        self._end_own_voice("avatar_back", event.timestamp)

    def _on_failed(self, event: AvatarLifecycleMetrics) -> None:
        if event.attempt is None:
            self.root.add_event("restarts_exhausted", timestamp=_ns(event.timestamp))
            return
        start = self._start
        if start is not None:
            status = event.details.get("http_status")
            if isinstance(status, int) and status > 0:
                start.set_attribute("http.response.status_code", status)
            error_type = event.details.get("error_type")
            if isinstance(error_type, str):
                start.set_attribute("error.type", error_type)
            start.set_status(Status(StatusCode.ERROR))
            refused = status_class(status) != "none"
            self._finish_start("refused" if refused else "failed", at=event.timestamp)
        if event.attempt == 0:
            self._begin_own_voice("start_failed", event.timestamp)

    def _on_left(self, event: AvatarLifecycleMetrics) -> None:
        self._begin_own_voice("avatar_left", event.timestamp)

    def _on_removed(self, event: AvatarLifecycleMetrics) -> None:
        cause = event.details.get("cause")
        self.root.add_event(
            "avatar_removed",
            {"avatar.cause": cause if isinstance(cause, str) else "session_ended"},
            timestamp=_ns(event.timestamp),
        )

    def _on_ended(self, event: AvatarLifecycleMetrics) -> None:
        took = event.timings.get("ended_in", 0.0)
        end = self._child("avatar.end", event.timestamp - took)
        for name in ("sessions", "unended", "possible_orphans"):
            value = event.details.get(name)
            if isinstance(value, int):
                end.set_attribute(f"avatar.{name}", value)
                self.root.set_attribute(f"avatar.{name}", value)
        end.end(end_time=_ns(event.timestamp))
        self._finish_start("job_ended", at=event.timestamp)
        self._end_own_voice("job_ended", event.timestamp)
        self.root.end(end_time=_ns(event.timestamp))

    def _finish_start(self, outcome: str, at: float | None = None) -> None:
        start, self._start = self._start, None
        if start is not None:
            start.set_attribute("avatar.outcome", outcome)
            start.end(end_time=_ns(at if at is not None else time.time()))

    def _begin_own_voice(self, cause: str, at: float) -> None:
        if self._own_voice is None:
            self._own_voice = self._child("avatar.own_voice", at, **{"avatar.cause": cause})

    def _end_own_voice(self, outcome: str, at: float) -> None:
        own_voice, self._own_voice = self._own_voice, None
        if own_voice is not None:
            own_voice.set_attribute("avatar.outcome", outcome)
            own_voice.end(end_time=_ns(at))
