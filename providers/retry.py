"""The retry policy shared by every provider client: which failures to retry and how long to wait."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from livekit.agents import APIConnectOptions

# 408 and 429 may pass; 5xx are the provider's own trouble. Everything else in 4xx is final.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Answers that do not say whether the request was acted on: a 500 can come after the work was done,
# and a gateway's 502 or 504 says nothing of what the server behind it did. A create answered so
# may have made a session (503 and 429 are refusals: nothing was made).
OUTCOME_UNKNOWN_STATUSES = frozenset({500, 502, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts, backoff and deadlines for one provider call.

    The n-th retry (n = 0, 1, ...) waits a random time in [cap/2, cap], cap = min(max_delay, base_delay * 2**n)
    ("equal jitter": spread out, yet never a near-zero hammer). A provider's Retry-After can only lengthen
    that wait (up to `max_retry_after`), never shorten it: "Retry-After: 0" is no licence to hammer.
    """

    max_retries: int = 3
    base_delay: float = 0.5
    max_delay: float = 8.0
    attempt_timeout: float = 10.0
    call_deadline: float = 30.0
    max_retry_after: float = 30.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if min(self.base_delay, self.max_delay) < 0:
            raise ValueError("delays must be >= 0")
        if self.attempt_timeout <= 0 or self.call_deadline <= 0:
            raise ValueError("attempt_timeout and call_deadline must be > 0")

    @classmethod
    def from_connect_options(
        cls, options: APIConnectOptions, *, call_deadline: float, max_delay: float = 8.0
    ) -> RetryPolicy:
        return cls(
            max_retries=options.max_retry,
            base_delay=options.retry_interval,
            max_delay=max_delay,
            attempt_timeout=options.timeout,
            call_deadline=call_deadline,
        )

    @property
    def max_attempts(self) -> int:
        return self.max_retries + 1

    def backoff(self, retry_index: int, rng: random.Random | None = None) -> float:
        cap = min(self.max_delay, self.base_delay * (2**retry_index))
        return (rng or random).uniform(cap / 2, cap)

    def retry_delay(
        self, retry_index: int, retry_after: float | None, rng: random.Random | None = None
    ) -> float:
        """The wait before retry `retry_index`: the backoff, or the provider's longer Retry-After."""
        delay = self.backoff(retry_index, rng)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_retry_after))
        return delay


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date).

    None if absent or unreadable, including negative, NaN and infinite values; a date in the past is 0.
    """
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
