"""The Anam avatar in a LiveKit room. Anam has no stop endpoint: removing its participant ends the session."""

from __future__ import annotations

from ..session import AvatarOptions, LiveKitCredentials, ProviderAvatarSession, ProviderStartRequest
from .api import PROVIDER, AnamAPI, PersonaConfig, SessionFlow

DEFAULT_IDENTITY = "anam-avatar-agent"
SAMPLE_RATE = 24000


class AnamAvatarSession(ProviderAvatarSession):
    provider_name = PROVIDER
    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        *,
        api: AnamAPI,
        persona: PersonaConfig,
        livekit: LiveKitCredentials,
        options: AvatarOptions,
        flow: SessionFlow = "two_step",
    ) -> None:
        super().__init__(livekit=livekit, options=options)
        self._api = api
        self._persona = persona
        self._flow = flow

    async def _start_provider(self, request: ProviderStartRequest) -> str:
        if self._flow == "direct":
            engine = await self._api.start_session_direct(
                self._persona,
                livekit_url=request.livekit_url,
                livekit_token=request.livekit_token,
                deadline=request.deadline,
            )
            return engine.session_id
        session_token = await self._api.create_session_token(
            self._persona,
            livekit_url=request.livekit_url,
            livekit_token=request.livekit_token,
            deadline=request.deadline,
        )
        engine = await self._api.start_engine_session(session_token, deadline=request.deadline)
        return engine.session_id
