"""What a real provider does after a successful create: send an avatar into the room with the token.

The emulators use our own local avatar for that, so the LemonSlice and Anam code paths run against a
real LiveKit server with a participant that really joins, publishes and plays the agent's speech.
"""

from __future__ import annotations

import asyncio
import dataclasses

from providers.local.participant import LocalAvatarOptions, LocalAvatarParticipant
from tests.support.emulators import AvatarLaunch


class LaunchedAvatar:
    def __init__(self, launch: AvatarLaunch, participant: LocalAvatarParticipant) -> None:
        self.launch = launch
        self.participant = participant
        self._watch = asyncio.create_task(self._report_when_gone())

    async def _report_when_gone(self) -> None:
        await self.participant.wait_closed()
        self.launch.avatar_left()

    async def aclose(self) -> None:
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

    async def __call__(self, launch: AvatarLaunch) -> LaunchedAvatar:
        if self.boot_delay:
            await asyncio.sleep(self.boot_delay)
        participant = LocalAvatarParticipant(
            launch.livekit_url,
            launch.livekit_token,
            options=dataclasses.replace(self.options, audio_sample_rate=launch.sample_rate),
        )
        await participant.start()
        avatar = LaunchedAvatar(launch, participant)
        self.launched.append(avatar)
        return avatar
