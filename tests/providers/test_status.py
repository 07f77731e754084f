"""What a frontend is told of the avatar, event by event (the attributes themselves are checked on
a real room in tests/test_lifecycle.py and by the page in tests/web/)."""

from __future__ import annotations

import pytest
from livekit.agents.metrics.base import Metadata

from providers.lifecycle import AvatarLifecycleMetrics
from providers.status import status_of


def event(
    name: str, *, attempt: int | None = None, reason: str | None = None
) -> AvatarLifecycleMetrics:
    return AvatarLifecycleMetrics(
        timestamp=0.0,
        event=name,
        attempt=attempt,
        reason=reason,
        metadata=Metadata(model_provider="anam"),
    )


@pytest.mark.parametrize(
    ("lifecycle", "status"),
    [
        (event("starting", attempt=0), ("starting", "")),
        (event("starting", attempt=2), ("restarting", "")),
        (event("joined", attempt=0), ("joined", "")),
        (event("recovered", attempt=1), ("joined", "")),
        (
            event("failed", attempt=0, reason="PaymentRequiredError: anam failed: 402"),
            ("unavailable", "PaymentRequiredError: anam failed: 402"),
        ),
        (event("failed"), ("unavailable", "the avatar could not start")),
        (event("left", reason="stopped its video"), ("lost", "stopped its video")),
        (event("unconfirmed", reason="late"), None),
        (event("removed", reason="stray"), None),
        (event("startup"), None),
        (event("ended"), None),
    ],
)
def test_each_event_sets_the_status_a_frontend_needs(
    lifecycle: AvatarLifecycleMetrics, status: tuple[str, str] | None
) -> None:
    assert status_of(lifecycle) == status


def test_a_reason_never_carries_a_token_and_stays_short() -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhdmF0YXIifQ.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"
    failed = event("failed", reason=f"RuntimeError: could not join with {jwt} " + "x" * 500)
    status = status_of(failed)
    assert status is not None
    assert "eyJ" not in status[1] and "c2lnbmF0dXJl" not in status[1]
    assert status[1].startswith("RuntimeError: could not join with ***")
    assert len(status[1]) <= 200
