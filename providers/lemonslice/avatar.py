"""The LemonSlice avatar in a LiveKit room: start through the API, end it with terminate.

With a meeting plan, the session's avatar also joins an external meeting right after it starts, and
leaves it before the session ends (stop runs on every exit path: see providers/session.py).
"""

from __future__ import annotations

import asyncio
import logging

from ..session import AvatarOptions, ProviderAvatarSession, ProviderStartRequest, describe
from . import meeting
from .api import PROVIDER, JoinedMeeting, LemonSliceAgent, LemonSliceAPI

logger = logging.getLogger("avatar.providers.lemonslice")

DEFAULT_IDENTITY = "lemonslice-avatar-agent"
# The wire contract we follow sends no audio_sample_rate; LemonSlice then expects 16 kHz speech.
SAMPLE_RATE = 16000


class LemonSliceAvatarSession(ProviderAvatarSession):
    provider_name = PROVIDER
    sample_rate = SAMPLE_RATE
    can_stop = True

    def __init__(
        self,
        *,
        api: LemonSliceAPI,
        agent: LemonSliceAgent,
        identity: str,
        options: AvatarOptions,
        meeting_plan: meeting.MeetingPlan | None = None,
    ) -> None:
        super().__init__(identity=identity, options=options)
        self._api = api
        self._agent = agent
        self._meeting_plan = meeting_plan
        self.meeting: JoinedMeeting | None = None
        # Set once the avatar is in the meeting (its relay URL known), for whoever listens to it.
        self.meeting_joined: asyncio.Future[JoinedMeeting] = (
            asyncio.get_running_loop().create_future()
        )

    async def _start_provider(self, request: ProviderStartRequest) -> str:
        self._creating()
        session_id = await self._api.start_agent_session(
            self._agent,
            livekit_url=request.livekit_url,
            livekit_token=request.livekit_token,
            livekit_session_id=request.room_sid,
            deadline=request.deadline,
        )
        if self._meeting_plan is not None:
            await self._join_meeting(session_id, request)
        return session_id

    async def _join_meeting(self, session_id: str, request: ProviderStartRequest) -> None:
        assert self._meeting_plan is not None
        try:
            self.meeting = await meeting.join(
                self._api,
                self._meeting_plan,
                session_id=session_id,
                room_name=request.room_name,
                livekit_url=request.livekit_url,
                deadline=request.deadline,
            )
        except BaseException:
            self.meeting_joined.cancel()
            # The start fails, so no one else will end this session: end it here, bounded.
            await self._terminate_unreported(session_id)
            raise
        self.meeting_joined.set_result(self.meeting)

    async def _terminate_unreported(self, session_id: str) -> None:
        budget = self._options.stop_timeout
        deadline = asyncio.get_running_loop().time() + budget
        try:
            async with asyncio.timeout(budget + 1.0):
                await asyncio.shield(self._api.terminate(session_id, deadline=deadline))
        except Exception as error:
            logger.warning(
                "could not end the lemonslice session %s whose meeting join failed (%s); "
                "counted as a possible orphan",
                session_id,
                describe(error),
                extra={
                    "provider": PROVIDER,
                    "provider_session_id": session_id,
                    "possible_orphan": True,
                },
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
        self.meeting_joined.cancel()  # no-op once joined
        joined, self.meeting = self.meeting, None
        if joined is not None:
            # Half the budget at most, so the terminate that follows always gets its turn.
            loop = asyncio.get_running_loop()
            await meeting.leave(
                self._api, session_id, joined, loop.time() + (deadline - loop.time()) / 2
            )
        await self._api.terminate(session_id, deadline=deadline)
