from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from livekit.agents import APIConnectOptions

from providers.retry import RetryPolicy, parse_retry_after


def test_backoff_grows_exponentially_within_equal_jitter_bounds() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=8.0)
    rng = random.Random(1)
    for retry in range(8):
        cap = min(8.0, 0.5 * 2**retry)
        samples = [policy.backoff(retry, rng) for _ in range(200)]
        assert all(cap / 2 <= s <= cap for s in samples)
        assert max(samples) - min(samples) > cap / 4  # jittered, not constant


def test_policy_comes_from_livekit_connect_options() -> None:
    policy = RetryPolicy.from_connect_options(
        APIConnectOptions(max_retry=2, retry_interval=1.5, timeout=4.0), call_deadline=20
    )
    assert (
        policy.max_attempts,
        policy.base_delay,
        policy.attempt_timeout,
        policy.call_deadline,
    ) == (
        3,
        1.5,
        4.0,
        20,
    )


def test_invalid_policies_are_refused() -> None:
    with pytest.raises(ValueError, match="max_retries"):
        RetryPolicy(max_retries=-1)
    with pytest.raises(ValueError, match="call_deadline"):
        RetryPolicy(call_deadline=0)


def test_retry_after_in_seconds() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("0") == 0.0


@pytest.mark.parametrize("value", ["-4", "nan", "NaN", "inf", "-inf"])
def test_retry_after_that_is_no_duration_is_ignored(value: str) -> None:
    assert parse_retry_after(value) is None


def test_retry_after_can_lengthen_the_backoff_never_shorten_it() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=8.0, max_retry_after=30.0)
    rng = random.Random(3)
    for retry in range(4):
        cap = min(8.0, 0.5 * 2**retry)
        assert cap / 2 <= policy.retry_delay(retry, 0.0, rng) <= cap
        assert cap / 2 <= policy.retry_delay(retry, None, rng) <= cap
    assert policy.retry_delay(0, 5.0, rng) == 5.0
    assert policy.retry_delay(0, 3600.0, rng) == 30.0  # capped


def test_retry_after_as_http_date() -> None:
    now = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)
    header = format_datetime(now + timedelta(seconds=7), usegmt=True)
    assert parse_retry_after(header, now=now) == pytest.approx(7.0)
    assert parse_retry_after(format_datetime(now - timedelta(hours=1), usegmt=True), now=now) == 0.0


def test_unreadable_retry_after_is_ignored() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
