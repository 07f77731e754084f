"""An avatar's arrival in the room, followed from before its provider is called.

When the job's loop is busy (or the provider answers late), an avatar can join, publish its video
and leave again before the supervisor starts waiting for it. Waiting from then on (the participant
to be active, then its video) would miss all of it and sit until the join timeout. Listening to the
room from before the call misses nothing: the wait ends with the video shown, and says if the
avatar went again meanwhile, or fails at once when it went before any video.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from livekit import rtc

from .errors import AvatarJoinTimeoutError, AvatarLeftBeforeVideoError


class AvatarArrival:
    """Follows one avatar identity's video and departure while its session starts.

    Use as a context manager around the provider's start and `video()`.
    """

    def __init__(self, room: rtc.Room, *, provider: str, identity: str) -> None:
        self._room = room
        self._provider = provider
        self._identity = identity
        self._shown = False
        self._gone: str | None = None
        self._room_closed = False
        self._changed = asyncio.Event()

    def __enter__(self) -> AvatarArrival:
        self._listen(True)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._listen(False)

    async def video(self, limit: float) -> str | None:
        """Until the avatar's video is published; returns why it went again (it left, or stopped
        its video) if it did before this returned, else None."""
        try:
            async with asyncio.timeout(limit):
                while True:
                    if self._shown or self._shows_video_now():
                        return self._gone
                    if self._gone is not None:
                        raise AvatarLeftBeforeVideoError(self._provider, self._identity, self._gone)
                    if self._room_closed:
                        raise RuntimeError("the room disconnected while the avatar was joining")
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AvatarJoinTimeoutError(self._provider, self._identity, limit) from None

    def _shows_video_now(self) -> bool:
        """An avatar already in the room when the agent connected has no publish event."""
        participant = self._room.remote_participants.get(self._identity)
        return participant is not None and any(
            publication.kind == rtc.TrackKind.KIND_VIDEO
            for publication in participant.track_publications.values()
        )

    def _listen(self, on: bool) -> None:
        method = self._room.on if on else self._room.off
        method("participant_connected", self._on_connected)
        method("track_published", self._on_published)
        method("track_unpublished", self._on_unpublished)
        method("participant_disconnected", self._on_disconnected)
        method("disconnected", self._on_room_disconnected)

    def _on_connected(self, participant: rtc.RemoteParticipant) -> None:
        if participant.identity == self._identity:
            # The same identity again (a reconnect): this participant's own arrival counts.
            self._shown, self._gone = False, None
            self._changed.set()

    def _on_published(
        self, publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
    ) -> None:
        if participant.identity == self._identity and publication.kind == rtc.TrackKind.KIND_VIDEO:
            self._shown, self._gone = True, None  # a video back after it stopped: shown again
            self._changed.set()

    def _on_unpublished(
        self, publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
    ) -> None:
        if participant.identity == self._identity and publication.kind == rtc.TrackKind.KIND_VIDEO:
            self._went("stopped its video")

    def _on_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        if participant.identity == self._identity:
            reason = rtc.DisconnectReason.Name(
                participant.disconnect_reason or rtc.DisconnectReason.UNKNOWN_REASON
            )
            self._went(f"left the room ({reason})")

    def _went(self, reason: str) -> None:
        if self._gone is None:
            self._gone = reason
        self._changed.set()

    def _on_room_disconnected(self, *_: object) -> None:
        self._room_closed = True
        self._changed.set()
