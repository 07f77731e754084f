"""The fault model shared by the provider emulators.

A test scripts faults per route; each request to that route consumes the next fault in order
(first in, first out). When a route's script is empty, the emulator behaves normally.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

EchoFormat = Literal["text", "json"]


@dataclass(frozen=True)
class StatusFault:
    """Answer with `status` without processing the request.

    `body` replaces the provider's error body entirely; otherwise the body is the provider's
    error shape carrying `message` (default: the status's reason phrase).
    `retry_after` becomes a Retry-After header: seconds, or an HTTP-date for a datetime.
    """

    status: int
    message: str | None = None
    body: Mapping[str, Any] | None = None
    retry_after: int | float | datetime | str | None = None
    echo_request: EchoFormat | None = None
    """Answer with the request's own body, as some servers and gateways do: whatever secret the
    request carried is in the error body. "text": a plain-text sentence (not JSON) quoting the body;
    "json": the provider's JSON error shape with the body as its message."""


@dataclass(frozen=True)
class Delay:
    """Wait `seconds` before looking at the request, then behave normally.

    If the client has gone away by then, the request is dropped unprocessed (no session made).
    """

    seconds: float


@dataclass(frozen=True)
class Hang:
    """Read the request and never answer; the connection is dropped when the emulator closes."""


@dataclass(frozen=True)
class CloseConnection:
    """Read the request, then close the connection without answering."""


@dataclass(frozen=True)
class MalformedJson:
    """Process the request normally; if it succeeds, answer its 2xx status with broken JSON.

    The work is done (a create does make a billed session); only the reply is unreadable.
    """

    body: bytes | None = None


@dataclass(frozen=True)
class MissingSuccessField:
    """Process normally; if it succeeds, leave the success field out (or set it to "" if `empty`).

    The success field is session_id / sessionToken / sessionId, depending on the route.
    """

    empty: bool = False


@dataclass(frozen=True)
class SucceedSlow:
    """Process normally (a create makes a real, billed session), then hold the reply.

    `seconds=None` holds it until the emulator closes, at which point the connection is dropped.
    """

    seconds: float | None = None


@dataclass(frozen=True)
class SucceedWhenReleased:
    """Process normally (a create makes a real session and launches its avatar), then hold the
    reply until the test sets `released` (an event of the test's loop): an answer that comes
    after the avatar has already joined, or come and gone."""

    released: asyncio.Event


@dataclass(frozen=True)
class LoseReply:
    """Process normally (a create makes a real, billed session), then close the connection
    without answering: the reply is lost on the way back."""


@dataclass(frozen=True)
class ProcessThenFail:
    """Process normally (a create makes a real, billed session), then answer `status` anyway:
    a gateway's 502 or 504 after the provider behind it acted, or a 500 raised after the session
    was made. The client cannot tell from the answer whether anything was created.

    `echo_request` answers with the request's body, as `StatusFault` does.
    """

    status: int = 502
    message: str | None = None
    echo_request: EchoFormat | None = None


@dataclass(frozen=True)
class AssignSessionId:
    """Process normally, but the provider names the session it makes `session_id` (any text:
    a test of how a client treats an id it did not expect)."""

    session_id: str


Fault = (
    StatusFault
    | ProcessThenFail
    | AssignSessionId
    | Delay
    | Hang
    | CloseConnection
    | MalformedJson
    | MissingSuccessField
    | SucceedSlow
    | SucceedWhenReleased
    | LoseReply
)


class FaultScript:
    """Per-route FIFO queues of faults."""

    def __init__(self, routes: Iterable[str]) -> None:
        self._queues: dict[str, deque[Fault]] = {route: deque() for route in routes}

    @property
    def routes(self) -> tuple[str, ...]:
        return tuple(self._queues)

    def add(self, route: str, faults: Iterable[Fault]) -> None:
        self._queue(route).extend(faults)

    def pop(self, route: str) -> Fault | None:
        queue = self._queue(route)
        return queue.popleft() if queue else None

    def pending(self, route: str) -> tuple[Fault, ...]:
        return tuple(self._queue(route))

    def clear(self) -> None:
        for queue in self._queues.values():
            queue.clear()

    def _queue(self, route: str) -> deque[Fault]:
        try:
            return self._queues[route]
        except KeyError:
            raise ValueError(f"unknown route {route!r}; known: {', '.join(self._queues)}") from None
