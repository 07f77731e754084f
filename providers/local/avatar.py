"""The `local` avatar: the agent's own job process runs the avatar participant, no account needed."""

from __future__ import annotations

import uuid

from ..session import ProviderAvatarSession, ProviderStartRequest
from .participant import LocalAvatarOptions, LocalAvatarParticipant

PROVIDER = "local"
DEFAULT_IDENTITY = "local-avatar-agent"
SAMPLE_RATE = 24000


class LocalAvatarSession(ProviderAvatarSession):
    provider_name = PROVIDER
    sample_rate = SAMPLE_RATE
    can_stop = True

    _participant: LocalAvatarParticipant | None = None

    async def _start_provider(self, request: ProviderStartRequest) -> str:
        participant = LocalAvatarParticipant(
            request.livekit_url,
            request.livekit_token,
            options=LocalAvatarOptions(audio_sample_rate=SAMPLE_RATE),
        )
        self._participant = participant
        self._creating()
        await participant.start()
        return f"local-{uuid.uuid4().hex[:12]}"

    async def _stop_provider(self, session_id: str, deadline: float) -> None:
        if self._participant is not None:
            await self._participant.aclose()
