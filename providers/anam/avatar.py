"""The Anam avatar in a LiveKit room. Anam has no stop endpoint: removing its participant ends the session."""

from __future__ import annotations

from ..session import AvatarOptions, ProviderAvatarSession, ProviderStartRequest
from .api import PROVIDER, AnamAPI, PersonaConfig

DEFAULT_IDENTITY = "anam-avatar-agent"
SAMPLE_RATE = 24000


class AnamAvatarSession(ProviderAvatarSession):
    provider_name = PROVIDER
    sample_rate = SAMPLE_RATE
    can_stop = False

    def __init__(
        self, *, api: AnamAPI, persona: PersonaConfig, identity: str, options: AvatarOptions
    ) -> None:
        super().__init__(identity=identity, options=options)
        self._api = api
        self._persona = persona

    async def _start_provider(self, request: ProviderStartRequest) -> str:
        engine = await self._api.start_session(
            self._persona,
            livekit_url=request.livekit_url,
            livekit_token=request.livekit_token,
            deadline=request.deadline,
            before_create=self._creating,  # the engine session is the billed one
        )
        return engine.session_id
