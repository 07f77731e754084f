"""Provider sessions the emulators create, and the hook that puts an avatar in the room for them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ._records import RecordedRequest

Provider = Literal["lemonslice", "anam"]
SessionStatus = Literal["QUEUED", "ACTIVE", "COMPLETED", "TIMED_OUT", "FAILED"]
LIVE_STATUSES: frozenset[SessionStatus] = frozenset({"QUEUED", "ACTIVE"})


@dataclass(frozen=True)
class AvatarLaunch:
    """What a real provider would use to send its avatar into the LiveKit room."""

    provider: Provider
    session_id: str
    livekit_url: str
    livekit_token: str = field(repr=False)
    sample_rate: int
    avatar_left: Callable[[], None] = field(default=lambda: None, repr=False, compare=False)
    """Call when the avatar participant left the room on its own or was removed: like the real
    provider, the emulator then counts the session as ended (COMPLETED)."""


@dataclass(frozen=True)
class UploadedImage:
    """A face image uploaded with a create (LemonSlice's multipart create)."""

    filename: str
    content_type: str
    data: bytes = field(repr=False)


class AvatarHandle(Protocol):
    async def aclose(self) -> None: ...


AvatarLauncher = Callable[[AvatarLaunch], Awaitable[AvatarHandle]]


@dataclass(eq=False, repr=False)
class EmulatedSession:
    """A session the provider created, and would bill for while it is active."""

    session_id: str
    provider: Provider
    request: RecordedRequest
    """The request that created the session."""
    config: Mapping[str, Any] = field(repr=False)
    """The validated body that configured it (LemonSlice: the create body; Anam: the session-token
    body, or the engine-session body of the one-call flow)."""
    launch: AvatarLaunch
    image: UploadedImage | None = None
    """The face uploaded with the create, if it was a multipart create with an image."""
    status: SessionStatus = "QUEUED"
    terminated: bool = False
    """True once a client asked the provider to end the session."""
    avatar: AvatarHandle | None = None
    """The handle the launcher returned, until it is closed."""
    avatar_launched: bool = False
    avatar_closed: bool = False
    avatar_error: BaseException | None = None
    ended_at: float | None = None
    """loop.time() when the session stopped being active (terminated, its avatar gone, failed)."""

    @property
    def active(self) -> bool:
        return not self.terminated and self.status in LIVE_STATUSES

    def __repr__(self) -> str:
        return (
            f"EmulatedSession({self.provider} {self.session_id}, status={self.status}, "
            f"terminated={self.terminated}, avatar_launched={self.avatar_launched}, "
            f"avatar_closed={self.avatar_closed})"
        )
