"""End to end: the offline conversation, on a real livekit-server with the worker as a process.

No account and no model: the offline responder answers what the user types (lk.chat), the agent
speaks the answer through the avatar, and the transcript reaches the user as lk.transcription.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from livekit import rtc

from tests.support.dispatch import dispatch_to_workers
from tests.support.livekit_server import LiveKitServer, server_api
from tests.support.room_user import AGENT_STATE_ATTRIBUTE, AUDIBLE_RMS, RoomUser
from tests.support.worker import running_worker

pytestmark = pytest.mark.e2e

AVATAR = "local-avatar-agent"


async def test_a_typed_message_gets_a_spoken_reply_through_the_avatar(
    livekit_server: LiveKitServer, tmp_path: Path
) -> None:
    agent_name = f"e2e-chat-{uuid.uuid4().hex[:6]}"
    room = f"room-chat-{uuid.uuid4().hex[:8]}"
    async with running_worker(
        livekit_server, agent_name, tmp_path, {"AVATAR_PROVIDER": "local"}
    ) as worker:
        user = await RoomUser.join(livekit_server, room)
        try:
            async with server_api(livekit_server) as lk:
                await dispatch_to_workers(lk, agent_name, room, [worker])
            agent = await user.wait_for_participant(
                kind=rtc.ParticipantKind.PARTICIPANT_KIND_AGENT, not_identity=AVATAR, timeout=60
            )
            await user.wait_for_participant(identity=AVATAR)

            # The greeting says what this is, in the transcript; then the agent listens.
            await user.wait_for_transcript(agent.identity, "offline voice", timeout=60)
            await user.wait_for_attribute(agent.identity, AGENT_STATE_ATTRIBUTE, "listening")

            await user.send_chat("purple elephants dance on the moon")
            await user.wait_for_attribute(agent.identity, AGENT_STATE_ATTRIBUTE, "speaking")
            # Listening starts after the greeting ended, so what is heard is the reply, from the avatar.
            loudest = await user.loudest_audio(AVATAR, threshold=AUDIBLE_RMS, timeout=30)
            assert loudest >= AUDIBLE_RMS
            reply = await user.wait_for_transcript(agent.identity, "purple elephants")
            assert reply.text.strip() == "You said: purple elephants dance on the moon"
            assert all(
                p.kind != rtc.TrackKind.KIND_AUDIO for p in agent.track_publications.values()
            )
        finally:
            await user.leave()
