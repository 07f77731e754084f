"""The emulated avatars in the avatar host, on a real livekit-server: one joins and publishes for
the agent, leaves when closed, and a native crash of the host is the avatars', not the test's."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

from providers.local.participant import LocalAvatarOptions
from tests.support import avatar_host
from tests.support.avatar_host import AvatarProcess
from tests.support.avatar_process import NORMAL
from tests.support.livekit_server import LiveKitServer, connect_participant, mint_token
from tests.support.room_user import RoomUser

AGENT = "agent-host-test"
AGENT_KIND: Final = "agent"
OPTIONS = LocalAvatarOptions(
    video_width=160, video_height=120, video_fps=12, audio_sample_rate=16000
)


def _avatar_token(server: LiveKitServer, room: str, identity: str) -> str:
    return mint_token(
        server,
        identity,
        room,
        kind=AGENT_KIND,
        attributes={"lk.publish_on_behalf": AGENT},
    )


async def _launch(server: LiveKitServer, room: str) -> AvatarProcess:
    identity = f"avatar-{uuid.uuid4().hex[:6]}"
    return await AvatarProcess.launch(
        server.ws_url, _avatar_token(server, room, identity), OPTIONS, NORMAL
    )


@asynccontextmanager
async def _room_with_agent_and_user(server: LiveKitServer) -> AsyncIterator[tuple[str, RoomUser]]:
    room = f"host-{uuid.uuid4().hex[:8]}"
    agent = await connect_participant(server, room, AGENT, kind=AGENT_KIND)
    user = await RoomUser.join(server, room)
    try:
        yield room, user
    finally:
        await user.leave()
        await agent.disconnect()


async def test_an_avatar_in_the_host_publishes_for_the_agent_and_leaves_when_closed(
    livekit_server: LiveKitServer,
) -> None:
    async with _room_with_agent_and_user(livekit_server) as (room, user):
        avatar = await _launch(livekit_server, room)
        try:
            await user.wait_for_video(avatar.identity, timeout=20)
            assert avatar.joining_at is not None and not avatar.closed
            await avatar.aclose()
            await user.wait_until_gone(avatar.identity, timeout=20)
            assert avatar.closed and avatar.host_returncode is None  # it left; its host goes on
            assert avatar.left_at is not None
        finally:
            await avatar.aclose()


async def test_a_native_crash_of_the_avatar_host_ends_its_avatars_not_the_test_process(
    livekit_server: LiveKitServer,
) -> None:
    async with _room_with_agent_and_user(livekit_server) as (room, user):
        crashes_before = len(avatar_host.crashes)
        avatar = await _launch(livekit_server, room)
        replacement: AvatarProcess | None = None
        try:
            await user.wait_for_video(avatar.identity, timeout=20)
            os.kill(avatar.pid, signal.SIGSEGV)  # as livekit's native client does now and then

            await avatar.wait_for_closed(timeout=20)
            assert avatar.left_at is not None  # the provider learns its avatar is gone
            assert avatar.host_returncode == -signal.SIGSEGV
            [crash] = avatar_host.crashes[crashes_before:]
            assert avatar.identity in crash.identities and crash.returncode == -signal.SIGSEGV
            assert "Segmentation fault" in crash.stderr_tail  # faulthandler's report is kept
            del avatar_host.crashes[crashes_before:]  # deliberate: not one for the session's count

            # This process goes on: the next avatar joins the same room from it, served by the spare
            # host.
            replacement = await _launch(livekit_server, room)
            await user.wait_for_video(replacement.identity, timeout=20)
            assert replacement.pid != avatar.pid
        finally:
            if replacement is not None:
                await replacement.aclose()
            await avatar.aclose()
