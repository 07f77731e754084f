"""The job's timeline: one start-up trace, lifecycle events as log records and as metrics."""

from __future__ import annotations

import logging

import pytest

from providers.lifecycle import AvatarLifecycleMetrics, JobTimeline


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_startup_trace_is_reported_once_when_the_avatar_has_settled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="avatar.lifecycle")
    clock = Clock()
    metrics: list[AvatarLifecycleMetrics] = []
    timeline = JobTimeline(room="room-1", provider="anam", received_at=999.5, clock=clock)
    timeline.add_metrics_sink(metrics.append)
    clock.now = 1000.2
    timeline.mark("provider_call_sent")
    clock.now = 1000.4
    timeline.mark("connected")
    timeline.mark("session_started")
    assert metrics == []  # the avatar is not settled yet
    clock.now = 1001.5
    timeline.mark("first_audio_to_avatar")
    timeline.mark("first_audio_to_avatar", at=1003.0)  # the first time counts
    timeline.report_startup()  # once

    (startup,) = metrics
    assert startup.event == "startup"
    assert startup.room == "room-1"
    assert startup.timings == {
        "since_job_received": 2.0,
        "job_received": 0.0,
        "provider_call_sent": 0.7,
        "connected": 0.9,
        "first_audio_to_avatar": 2.0,
        "session_started": 0.9,
    }
    (record,) = [r for r in caplog.records if getattr(r, "avatar_event", None) == "startup"]
    assert record.getMessage().startswith("job start-up: job_received 0.000s")


def failing_listener(metrics: AvatarLifecycleMetrics) -> None:
    raise RuntimeError("a listener's own bug")


def test_an_event_is_a_structured_record_and_a_metric(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="avatar.lifecycle")
    clock = Clock()
    metrics: list[AvatarLifecycleMetrics] = []
    timeline = JobTimeline(room="room-2", provider="lemonslice", received_at=990.0, clock=clock)
    timeline.add_metrics_sink(metrics.append)
    timeline.add_metrics_sink(failing_listener)  # it does not stop the others
    timeline.event(
        "left", level=logging.WARNING, provider_session_id="s-1", attempt=0, reason="gone"
    )
    (metric,) = metrics
    assert (metric.event, metric.provider_session_id, metric.reason) == ("left", "s-1", "gone")
    assert metric.type == "avatar_metrics"
    assert metric.metadata is not None and metric.metadata.model_provider == "lemonslice"
    record = next(r for r in caplog.records if getattr(r, "avatar_event", None) == "left")
    assert record.getMessage() == "avatar left: gone"
    assert record.__dict__["timings"] == {"since_job_received": 10.0}
    assert record.__dict__["provider_session_id"] == "s-1"
