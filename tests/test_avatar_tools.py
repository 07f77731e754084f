"""End to end: typed requests make the avatar move, through the tools of assistant.py.

The offline voice's responder calls a tool as a model does (a tool call the framework runs), so
each tool is tried here with no account: the local avatar draws the gesture in its video; with
LemonSlice (emulated, strict) the gesture is a control call, and a refused one is told to the user.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest
from livekit import rtc

from providers.local.gestures import WAVE
from providers.local.video import FaceRenderer
from tests.support.avatar_launcher import LocalAvatarLauncher
from tests.support.dispatch import dispatch_to_workers
from tests.support.emulators import LemonSliceEmulator
from tests.support.emulators._faults import StatusFault
from tests.support.livekit_server import LiveKitServer, server_api
from tests.support.room_user import AGENT_STATE_ATTRIBUTE, RoomUser, job_avatar_identity
from tests.support.worker import running_worker

pytestmark = pytest.mark.e2e

LOCAL_AVATAR = "local-avatar-agent"
LEMONSLICE_AVATAR = "lemonslice-avatar-agent"
LEMONSLICE_KEY = "ls-tools-key-never-logged"
SKIN = np.array([246, 201, 152], dtype=np.int16)
# Pixels within this distance of the hand's colour, after the video codec, count as the hand.
SKIN_TOLERANCE = 45
HAND_PIXELS = 800  # the drawn hand covers about 5000 pixels at 640x480


@asynccontextmanager
async def agent_in_room(
    livekit_server: LiveKitServer, workdir: Path, env: Mapping[str, str], avatar: str
) -> AsyncIterator[tuple[RoomUser, rtc.RemoteParticipant, str]]:
    """A worker and a user in a room with its agent, after the greeting: (user, agent, avatar)."""
    agent_name = f"e2e-tools-{uuid.uuid4().hex[:6]}"
    async with running_worker(livekit_server, agent_name, workdir, env) as worker:
        user = await RoomUser.join(livekit_server, f"room-tools-{uuid.uuid4().hex[:8]}")
        try:
            async with server_api(livekit_server) as lk:
                await dispatch_to_workers(lk, agent_name, user.room.name, [worker])
            agent = await user.wait_for_agent(timeout=60)
            identity = job_avatar_identity(avatar, agent.identity)
            await user.wait_for_participant(identity=identity)
            await user.wait_for_transcript(agent.identity, "offline voice", timeout=60)
            await user.wait_for_attribute(agent.identity, AGENT_STATE_ATTRIBUTE, "listening")
            yield user, agent, identity
        finally:
            await user.leave()


def hand_pixels(frame: rtc.VideoFrame) -> int:
    image = np.frombuffer(frame.convert(rtc.VideoBufferType.RGBA).data, dtype=np.uint8)
    image = image.reshape(frame.height, frame.width, 4)
    rows, cols = FaceRenderer(frame.width, frame.height).gesture_region(WAVE)
    region = image[rows, cols, :3].astype(np.int16)
    near = np.abs(region - SKIN).max(axis=2) <= SKIN_TOLERANCE
    return int(near.sum())


async def test_typing_wave_makes_the_local_avatar_wave_in_its_video(
    livekit_server: LiveKitServer, tmp_path: Path
) -> None:
    env = {"AVATAR_PROVIDER": "local"}
    async with agent_in_room(livekit_server, tmp_path, env, LOCAL_AVATAR) as (user, agent, avatar):
        track = await user.wait_for_track(avatar, rtc.TrackKind.KIND_VIDEO)
        stream = rtc.VideoStream(track)
        try:
            frames = aiter(stream)
            idle = (await anext(frames)).frame
            assert hand_pixels(idle) < HAND_PIXELS // 4, "a hand in the idle video"

            await user.send_chat("wave")
            async with asyncio.timeout(60):
                while hand_pixels((await anext(frames)).frame) < HAND_PIXELS:
                    pass
        finally:
            await stream.aclose()
        # the tool's answer, told by the responder once the framework ran the tool
        await user.wait_for_transcript(agent.identity, "gesture wave")


async def test_a_lemonslice_gesture_is_a_control_call_and_a_refused_one_is_told(
    livekit_server: LiveKitServer, tmp_path: Path
) -> None:
    launcher = LocalAvatarLauncher()
    async with LemonSliceEmulator(api_key=LEMONSLICE_KEY, avatar_launcher=launcher) as emulator:
        env = {
            **emulator.worker_settings("agent-e2e"),
            "LEMONSLICE_ACTIONS": "wave, bow",
            "AVATAR_MAX_RETRIES": "1",
        }
        talk = agent_in_room(livekit_server, tmp_path, env, LEMONSLICE_AVATAR)
        async with talk as (user, agent, _):
            session_id = emulator.sessions[-1].session_id
            await user.send_chat("please wave")
            await user.wait_for_transcript(agent.identity, "gesture wave")
            [control] = emulator.requests_for("control")
            assert control.path.endswith(f"/{session_id}/control")
            assert control.json == {"event": "pose-trigger", "pose_trigger": {"name": "wave"}}

            # A 4xx, then a 5xx on every try: each is a tool error, told, and the talk goes on.
            for faults in ([StatusFault(400, "unknown action")], [StatusFault(503)] * 2):
                await user.wait_for_attribute(agent.identity, AGENT_STATE_ATTRIBUTE, "listening")
                emulator.inject("control", *faults)
                sent_at = time.monotonic()
                await user.send_chat("wave")
                told = await user.wait_for_transcript(
                    agent.identity, "could not do that", since=sent_at
                )
                assert LEMONSLICE_KEY not in told.text
            await user.wait_for_attribute(agent.identity, AGENT_STATE_ATTRIBUTE, "listening")
            await user.send_chat("who are you")
            await user.wait_for_transcript(agent.identity, "avatar voice agent")
            assert emulator.pending_faults("control") == ()
