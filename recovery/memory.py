"""What a room remembers about its agent job, kept in the room's metadata under one key.

The job writes it with the worker's API credentials: which job serves the room (and its agent's
identity), whether that job ended on purpose, and every avatar session it started (provider,
session id, avatar identity). Never a key or a token: the room's metadata is sent to everyone in it.
A job that takes over reads it to end what a dead job started; the recovery watcher reads it to
tell a dead job (still `running`) from a call that ended on purpose (`ended`).

Other keys of the room's metadata are kept as they are; metadata that is not a JSON object is
never overwritten (that room is not recovered, and a warning says why).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

MEMORY_KEY = "avatar_agent"

JobState = Literal["running", "ended"]


class UnsharedMetadataError(ValueError):
    """The room's metadata is someone else's (not a JSON object): nothing is written into it."""


@dataclass(frozen=True)
class AvatarRecord:
    provider: str
    identity: str
    session_id: str | None = None  # None until the provider answered the create


@dataclass(frozen=True)
class RoomMemory:
    job_id: str
    agent_identity: str
    state: JobState = "running"
    avatars: tuple[AvatarRecord, ...] = field(default=())
    claimed_at: float = 0.0  # wall clock (time.time()) of the job's claim
    worker_health_url: str | None = None  # where the watcher can see the job's worker is alive

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "avatars": [asdict(a) for a in self.avatars]}


def read_memory(metadata: str) -> RoomMemory | None:
    """The memory in a room's metadata; None when there is none (or it is not ours to read)."""
    try:
        document = json.loads(metadata) if metadata else {}
        raw = document.get(MEMORY_KEY) if isinstance(document, dict) else None
        if not isinstance(raw, dict):
            return None
        avatars = tuple(
            AvatarRecord(
                provider=str(a["provider"]),
                identity=str(a["identity"]),
                session_id=None if a.get("session_id") is None else str(a["session_id"]),
            )
            for a in raw.get("avatars", [])
        )
        state = raw.get("state")
        return RoomMemory(
            job_id=str(raw["job_id"]),
            agent_identity=str(raw["agent_identity"]),
            state="ended" if state == "ended" else "running",
            avatars=avatars,
            claimed_at=float(raw.get("claimed_at", 0.0)),
            worker_health_url=_optional_str(raw.get("worker_health_url")),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _optional_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def write_memory(metadata: str, memory: RoomMemory | None) -> str:
    """`metadata` with the memory replaced (or removed when None), every other key kept."""
    try:
        document = json.loads(metadata) if metadata else {}
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise UnsharedMetadataError("the room's metadata is not a JSON object")
    if memory is None:
        document.pop(MEMORY_KEY, None)
    else:
        document[MEMORY_KEY] = memory.to_json()
    return json.dumps(document, separators=(",", ":"))
