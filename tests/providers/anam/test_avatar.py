"""The Anam avatar session as the registry builds it, on a real LiveKit room: ANAM_SESSION_FLOW picks
the wire flow, and either one brings the avatar in for the agent."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from livekit import api, rtc

from config import load_settings
from providers.registry import provider_setup
from providers.session import ProviderStartRequest
from providers.token import AvatarTokenRequest, mint_avatar_token
from tests.providers.conftest import ANAM_KEY
from tests.support.avatar_launcher import LocalAvatarLauncher
from tests.support.emulators import AnamEmulator
from tests.support.livekit_server import LiveKitServer, connect_participant, server_api


@pytest.fixture
async def agent_room(livekit_server: LiveKitServer) -> AsyncIterator[rtc.Room]:
    room = await connect_participant(
        livekit_server, f"anam-{uuid.uuid4().hex[:8]}", "agent-under-test", kind="agent"
    )
    yield room
    await room.disconnect()


@pytest.mark.parametrize(
    ("flow", "paths"),
    [
        ("direct", ["/v1/engine/session"]),
        ("two_step", ["/v1/auth/session-token", "/v1/engine/session"]),
    ],
)
async def test_the_configured_flow_starts_the_avatar(
    livekit_server: LiveKitServer,
    agent_room: rtc.Room,
    http_session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    flow: str,
    paths: list[str],
) -> None:
    monkeypatch.chdir(tmp_path)  # no developer .env
    launcher = LocalAvatarLauncher()
    async with AnamEmulator(api_key=ANAM_KEY, avatar_launcher=launcher) as emulator:
        settings = load_settings(
            livekit_url=livekit_server.ws_url,
            livekit_api_key=livekit_server.api_key,
            livekit_api_secret=livekit_server.api_secret,
            avatar_provider="anam",
            anam_api_key=ANAM_KEY,
            anam_api_url=emulator.url,
            anam_avatar_id="avatar-1",
            anam_session_flow=flow,
        )
        setup = provider_setup(settings, http_session)
        avatar = setup.new_session(setup.options.identity, setup.options)
        token = mint_avatar_token(
            AvatarTokenRequest(
                room_name=agent_room.name,
                avatar_identity=avatar.identity,
                agent_identity=agent_room.local_participant.identity,
                ttl=setup.options.token_ttl,
            ),
            api_key=livekit_server.api_key,
            api_secret=livekit_server.api_secret,
        )
        joined = asyncio.Event()
        agent_room.on("participant_connected", lambda _: joined.set())
        loop = asyncio.get_running_loop()
        session_id = await avatar.start(
            ProviderStartRequest(
                livekit_url=setup.livekit_url,
                livekit_token=token,
                room_name=agent_room.name,
                room_sid=None,
                deadline=loop.time() + 10,
            )
        )
        assert [r.path for r in emulator.requests] == paths
        assert [r.status for r in emulator.requests] == [200] * len(paths)
        assert session_id == emulator.sessions[0].session_id
        async with asyncio.timeout(10):
            await joined.wait()
        remote = agent_room.remote_participants["anam-avatar-agent"]
        assert remote.attributes["lk.publish_on_behalf"] == "agent-under-test"
        assert (await avatar.stop()).unended is None
        # No stop endpoint: removing its participant is what ends an Anam session.
        async with server_api(livekit_server) as lk:
            await lk.room.remove_participant(
                api.RoomParticipantIdentity(room=agent_room.name, identity=avatar.identity)
            )
        async with asyncio.timeout(10):
            await emulator.wait_until(lambda: emulator.active_sessions == ())


async def test_configured_director_notes_and_session_options_reach_anam(
    livekit_server: LiveKitServer,
    agent_room: rtc.Room,
    http_session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """From the environment's variables, through the registry, to the strict emulator's request."""
    monkeypatch.chdir(tmp_path)  # no developer .env
    launcher = LocalAvatarLauncher()
    async with AnamEmulator(api_key=ANAM_KEY, avatar_launcher=launcher) as emulator:
        settings = load_settings(
            livekit_url=livekit_server.ws_url,
            livekit_api_key=livekit_server.api_key,
            livekit_api_secret=livekit_server.api_secret,
            avatar_provider="anam",
            anam_api_key=ANAM_KEY,
            anam_api_url=emulator.url,
            anam_avatar_id="avatar-1",
            anam_expressivity="0.3",
            anam_custom_style_prompt="calm and slow",
            anam_video_width="720",
            anam_video_height="1280",
            anam_show_ai_avatar_disclosure="true",
        )
        setup = provider_setup(settings, http_session)
        avatar = setup.new_session(setup.options.identity, setup.options)
        token = mint_avatar_token(
            AvatarTokenRequest(
                room_name=agent_room.name,
                avatar_identity=avatar.identity,
                agent_identity=agent_room.local_participant.identity,
                ttl=setup.options.token_ttl,
            ),
            api_key=livekit_server.api_key,
            api_secret=livekit_server.api_secret,
        )
        joined = asyncio.Event()
        agent_room.on("participant_connected", lambda _: joined.set())
        loop = asyncio.get_running_loop()
        await avatar.start(
            ProviderStartRequest(
                livekit_url=setup.livekit_url,
                livekit_token=token,
                room_name=agent_room.name,
                room_sid=None,
                deadline=loop.time() + 10,
            )
        )
        [request] = emulator.requests
        assert request.status == 200
        assert request.json["personaConfig"]["directorNotes"] == {
            "expressivity": 0.3,
            "customStylePrompt": "calm and slow",
        }
        assert request.json["sessionOptions"] == {
            "videoWidth": 720,
            "videoHeight": 1280,
            "showAIAvatarDisclosure": True,
        }
        async with asyncio.timeout(10):
            await joined.wait()
        assert avatar.identity in agent_room.remote_participants
        assert (await avatar.stop()).unended is None
        async with server_api(livekit_server) as lk:
            await lk.room.remove_participant(
                api.RoomParticipantIdentity(room=agent_room.name, identity=avatar.identity)
            )
        async with asyncio.timeout(10):
            await emulator.wait_until(lambda: emulator.active_sessions == ())
