"""The reaper: ends a job's provider sessions, and counts those it could not end.

Every session a job creates is handed to the reaper as it is made. Ending one is, in this order,
its end at the provider (where the provider has a way; a create still in flight is waited for, so
the session it made is ended too) and the removal of its avatar from the room. Once the job's end
has begun, a session handed over is ended at once.
"""

from __future__ import annotations

import asyncio
import logging

from .avatar_guard import AvatarGuard
from .lifecycle import JobTimeline
from .session import ProviderAvatarSession, describe

logger = logging.getLogger("avatar.reaper")

# At the job's end, how long to wait for the avatar of a session that cannot be stopped (it ends
# only when its participant is removed) and has not joined yet.
STRAGGLER_WAIT = 10.0


class SessionReaper:
    def __init__(self, *, guard: AvatarGuard, timeline: JobTimeline, join_timeout: float) -> None:
        self._guard = guard
        self._timeline = timeline
        self._join_timeout = join_timeout
        self._sessions: list[ProviderAvatarSession] = []
        self._ending: dict[ProviderAvatarSession, asyncio.Task[None]] = {}
        self._given_up: set[ProviderAvatarSession] = set()
        self._unended: list[str] = []
        self._ending_all = False

    @property
    def sessions(self) -> int:
        """How many provider sessions the job made (or tried to)."""
        return len(self._sessions)

    @property
    def unended(self) -> list[str]:
        """Why each session that may still be running (and billing) was not ended."""
        return list(self._unended)

    def add(self, session: ProviderAvatarSession) -> None:
        self._sessions.append(session)
        if self._ending_all:
            self.end_soon(session)

    def end_soon(self, session: ProviderAvatarSession, *, given_up: bool = False) -> None:
        """Begin ending `session` (once, however often asked). `given_up`: its start failed, so an
        avatar of it that is in the room came late, whoever removes it (this or the guard)."""
        if given_up:
            self._given_up.add(session)
        if session not in self._ending:
            self._ending[session] = asyncio.create_task(
                self._end(session), name="avatar-session-end"
            )

    def end_all_soon(self) -> None:
        """Begin ending every session, and every one handed over from now on."""
        self._ending_all = True
        for session in self._sessions:
            self.end_soon(session)

    async def wait_ended(self) -> None:
        """Returns when every session has been ended, as far as the provider allows; then waits
        (bounded) for the avatar of a session that only ends with its participant, if it has not
        joined yet, so the guard removes it before the job lets go of the room."""
        while pending := [task for task in self._ending.values() if not task.done()]:
            await asyncio.gather(*pending, return_exceptions=True)
        stragglers = [s.identity for s in self._sessions if s.created and not s.can_stop]
        await self._guard.wait_for_arrivals(
            stragglers, limit=min(self._join_timeout, STRAGGLER_WAIT)
        )

    async def _end(self, session: ProviderAvatarSession) -> None:
        try:
            outcome = await session.stop()
        except Exception as error:  # stop() reports what it can: anything else is a bug here
            logger.exception("ending the %s session failed", session.provider)
            self._unended.append(f"{session.provider} {session.session_id}: {describe(error)}")
        else:
            if outcome.unended:
                self._unended.append(f"{session.provider} {outcome.session_id}: {outcome.unended}")
        if await self._guard.remove(session.identity):
            self._timeline.event(
                "removed",
                provider_session_id=session.session_id,
                reason=f"{session.identity} removed as its session ended",
                identity=session.identity,
                cause="stray" if session in self._given_up else "ended",
                timings=self._guard.time_in_room(session.identity),
            )
