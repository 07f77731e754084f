"""What a real provider does after a successful create: send an avatar into the room with the token.

The emulators use our own local avatar for that, so the LemonSlice and Anam code paths run against a
real LiveKit server with a participant that really joins, publishes and plays the agent's speech. The
avatars run in the avatar host, a process of their own (tests/support/avatar_process.py): livekit's
native client can crash the process that hosts them, and that must not be the test process.

A test can script how the next avatars behave (`LocalAvatarLauncher.script`), as a provider's
avatars do on a bad day: join late, never join, or never confirm a playout; and it can make a
running avatar crash or stop its video.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import deque
from dataclasses import dataclass

from livekit import api

from providers.local.participant import LocalAvatarOptions
from tests.support.avatar_host import AvatarProcess
from tests.support.avatar_process import CRASH_AT_FIRST_SPEECH, NORMAL, UNCONFIRMING
from tests.support.emulators import AvatarLaunch


@dataclass(frozen=True)
class JoinLate:
    """The avatar joins `seconds` after the provider accepted the session."""

    seconds: float


@dataclass(frozen=True)
class NeverJoin:
    """The provider accepts the session, and its avatar never comes."""


@dataclass(frozen=True)
class NoPlaybackConfirmation:
    """The avatar plays the agent's speech but never answers lk.playback_finished."""


@dataclass(frozen=True)
class JoinWhenReleased:
    """The avatar boots until the test sets `released` (an event of the test's loop), then joins."""

    released: asyncio.Event


@dataclass(frozen=True)
class CrashAtFirstSpeech:
    """The avatar joins when the test sets `released`, and drops out of the room (no goodbye, no
    playback confirmation) the moment it begins to play the first speech the agent sends it."""

    released: asyncio.Event


AvatarBehaviour = (
    JoinLate | NeverJoin | NoPlaybackConfirmation | JoinWhenReleased | CrashAtFirstSpeech
)


class LaunchedAvatar:
    """One avatar the provider sent in. `arrived_at` is when it began to join the room and `left_at`
    when the room let go of it (time.monotonic()); it sees its own visit even when it is removed
    before the room shows it to anyone else. `participant` is its process (None: it never came)."""

    def __init__(self, launch: AvatarLaunch, participant: AvatarProcess | None) -> None:
        self.launch = launch
        self.participant = participant
        self.arrived_at = participant.joining_at if participant is not None else None
        self.left_at: float | None = None
        self._left = asyncio.Event()
        self._watch = asyncio.create_task(self._report_when_gone())

    async def wait_gone(self, timeout: float = 30.0) -> float:
        """time.monotonic() when the room let go of it."""
        async with asyncio.timeout(timeout):
            await self._left.wait()
        assert self.left_at is not None
        return self.left_at

    async def _report_when_gone(self) -> None:
        participant = self.participant
        if participant is None:
            return
        # A provider learns its avatar is out of the room when the room lets go of it, not when
        # the avatar process has finished shutting down.
        self.left_at = await participant.wait_left()
        self._left.set()
        self.launch.avatar_left()
        await participant.wait_closed()

    @property
    def identity(self) -> str | None:
        return self.participant.identity if self.participant is not None else None

    async def crash(self) -> None:
        """Drop out of the room without closing: no goodbye by aclose. As the room goes, the avatar
        may still report the utterance it was playing interrupted, as a real avatar's last words
        can; the agent must carry on in its own voice either way."""
        assert self.participant is not None
        await self.participant.crash()

    async def stop_video(self, server: api.LiveKitAPI) -> None:
        """The avatar's tracks are unpublished and it stays in the room: here, as when a policy
        revokes its right to publish (the server unpublishes them). An avatar unpublishing its own
        track is the same event for the agent; the SDK's own unpublish can stall in a long test run."""
        assert self.participant is not None
        await server.room.update_participant(
            api.UpdateParticipantRequest(
                room=self.participant.room_name,
                identity=self.participant.identity,
                permission=api.ParticipantPermission(
                    can_publish=False, can_subscribe=False, can_publish_data=True
                ),
            )
        )

    async def aclose(self) -> None:
        if self.participant is not None:
            await self.participant.aclose()
        await self._watch


class LocalAvatarLauncher:
    """An `AvatarLauncher` that remembers every avatar it sent in.

    `boot_delay` (seconds) passes between the provider's create and the avatar starting to join, as a
    real provider's avatar boots; `options` sets its video (the audio rate is the provider's).
    """

    def __init__(
        self, *, boot_delay: float = 0.0, options: LocalAvatarOptions | None = None
    ) -> None:
        if boot_delay < 0:
            raise ValueError("boot_delay must be >= 0")
        self.boot_delay = boot_delay
        self.options = options or LocalAvatarOptions()
        self.launched: list[LaunchedAvatar] = []
        self._launched_more = asyncio.Event()
        self._script: deque[AvatarBehaviour] = deque()

    async def wait_launched(self, count: int, timeout: float = 30.0) -> LaunchedAvatar:
        """The `count`-th avatar sent in (1 for the first), once it has joined or been turned away."""
        async with asyncio.timeout(timeout):
            while len(self.launched) < count:
                self._launched_more.clear()
                await self._launched_more.wait()
        return self.launched[count - 1]

    def _add(self, avatar: LaunchedAvatar) -> LaunchedAvatar:
        self.launched.append(avatar)
        self._launched_more.set()
        return avatar

    def script(self, *behaviours: AvatarBehaviour) -> None:
        """How the next launches behave, one each, in order; then avatars behave normally."""
        self._script.extend(behaviours)

    def clear_script(self) -> None:
        self._script.clear()

    async def __call__(self, launch: AvatarLaunch) -> LaunchedAvatar:
        behaviour = self._script.popleft() if self._script else None
        if isinstance(behaviour, NeverJoin):
            return self._add(LaunchedAvatar(launch, None))
        if isinstance(behaviour, JoinWhenReleased | CrashAtFirstSpeech):
            await behaviour.released.wait()
        boot = behaviour.seconds if isinstance(behaviour, JoinLate) else self.boot_delay
        if boot:
            await asyncio.sleep(boot)  # the provider's avatar boots
        kind = NORMAL
        if isinstance(behaviour, NoPlaybackConfirmation):
            kind = UNCONFIRMING
        elif isinstance(behaviour, CrashAtFirstSpeech):
            kind = CRASH_AT_FIRST_SPEECH
        options = dataclasses.replace(self.options, audio_sample_rate=launch.sample_rate)
        participant = await AvatarProcess.launch(
            launch.livekit_url, launch.livekit_token, options, kind
        )
        return self._add(LaunchedAvatar(launch, participant))
