"""What an emulator remembers about each request it received."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from multidict import CIMultiDictProxy

from ._faults import Fault


@dataclass(eq=False, repr=False)
class RecordedRequest:
    """One request, in order of arrival. Headers and body may hold secrets: never printed."""

    seq: int
    method: str
    path: str
    headers: CIMultiDictProxy[str]
    arrived_at: float
    """loop.time() when the request reached the handler."""
    new_connection: bool = False
    """The first request on its connection (the one that pays `connect_latency`)."""
    route: str | None = None
    """The emulator's route name, or None for a path it does not serve."""
    body: bytes = b""
    json: Any = None
    """The body parsed as JSON; None if it is not valid JSON (see `is_json`)."""
    is_json: bool = False
    fault: Fault | None = None
    """The scripted fault this request consumed, if any."""
    status: int | None = None
    """The status the emulator answered with; None while pending or if it never answered."""
    answered_at: float | None = None
    dropped: str | None = None
    """Why the emulator gave no answer (hang released, connection closed, client gone)."""
    finished_at: float | None = None
    """loop.time() when the emulator answered or dropped the request."""

    def __repr__(self) -> str:
        return (
            f"RecordedRequest(seq={self.seq}, {self.method} {self.path}, route={self.route!r}, "
            f"status={self.status}, fault={self.fault!r}, dropped={self.dropped!r})"
        )
