"""The LemonSlice avatar in a LiveKit room: start through the API, end it with terminate."""

from __future__ import annotations

from ..session import AvatarOptions, ProviderAvatarSession, ProviderStartRequest
from .api import PROVIDER, LemonSliceAgent, LemonSliceAPI

DEFAULT_IDENTITY = "lemonslice-avatar-agent"
# The wire contract we follow sends no audio_sample_rate; LemonSlice then expects 16 kHz speech.
SAMPLE_RATE = 16000


class LemonSliceAvatarSession(ProviderAvatarSession):
    provider_name = PROVIDER
    sample_rate = SAMPLE_RATE
    can_stop = True

    def __init__(
        self, *, api: LemonSliceAPI, agent: LemonSliceAgent, identity: str, options: AvatarOptions
    ) -> None:
        super().__init__(identity=identity, options=options)
        self._api = api
        self._agent = agent

    async def _start_provider(self, request: ProviderStartRequest) -> str:
        self._creating()
        return await self._api.start_agent_session(
            self._agent,
            livekit_url=request.livekit_url,
            livekit_token=request.livekit_token,
            livekit_session_id=request.room_sid,
            deadline=request.deadline,
        )

    async def play_gesture(self, action: str) -> None:
        await self._api.trigger_pose(self._live_session_id(), action)

    async def change_manner(self, prompt: str) -> None:
        await self._api.update_agent_prompt(self._live_session_id(), prompt)

    async def change_face(self, image_url: str) -> None:
        await self._api.update_image(self._live_session_id(), image_url)

    def _live_session_id(self) -> str:
        if self.session_id is None:
            raise RuntimeError("the lemonslice session has not started")
        return self.session_id

    async def _stop_provider(self, session_id: str, deadline: float) -> None:
        await self._api.terminate(session_id, deadline=deadline)
