"""The shared avatar session glue against a real LiveKit room and the LemonSlice emulator:
speech routing, fallback to the agent's own voice, deadlines, and a teardown that ends what it started."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from livekit import rtc
from livekit.agents import AgentSession
from livekit.agents.voice.avatar import DataStreamAudioOutput

from config import Settings, load_settings
from providers.registry import create_avatar_session
from providers.session import ProviderAvatarSession
from tests.support.avatar_launcher import LocalAvatarLauncher
from tests.support.emulators import Hang, LemonSliceEmulator, StatusFault
from tests.support.livekit_server import LiveKitServer, connect_participant

KEY = "ls-session-test-key"


@pytest.fixture
async def agent_room(livekit_server: LiveKitServer) -> AsyncIterator[rtc.Room]:
    room = await connect_participant(
        livekit_server,
        f"session-{uuid.uuid4().hex[:8]}",
        "agent-under-test",
        kind="agent",
    )
    yield room
    await room.disconnect()


@pytest.fixture
async def http_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def settings_for(
    server: LiveKitServer,
    emulator: LemonSliceEmulator,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    **extra: str,
) -> Settings:
    monkeypatch.chdir(tmp_path)  # no developer .env
    return load_settings(
        livekit_url=server.ws_url,
        livekit_api_key=server.api_key,
        livekit_api_secret=server.api_secret,
        avatar_provider="lemonslice",
        lemonslice_api_key=KEY,
        lemonslice_api_url=emulator.sessions_url,
        lemonslice_agent_id="agent-7",
        avatar_max_retries="1",
        avatar_request_timeout="1",
        **extra,
    )


async def run(
    settings: Settings, http_session: aiohttp.ClientSession, room: rtc.Room
) -> tuple[ProviderAvatarSession, AgentSession[Any], bool]:
    agent_session: AgentSession[Any] = AgentSession()
    avatar = create_avatar_session(settings, http_session)
    joined = await avatar.start_or_fall_back(agent_session, room)
    return avatar, agent_session, joined


async def test_avatar_joins_for_the_agent_and_teardown_ends_everything_once(
    livekit_server: LiveKitServer,
    agent_room: rtc.Room,
    http_session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    launcher = LocalAvatarLauncher()
    async with LemonSliceEmulator(api_key=KEY, avatar_launcher=launcher) as emulator:
        settings = settings_for(livekit_server, emulator, monkeypatch, tmp_path)
        avatar, agent_session, joined = await run(settings, http_session, agent_room)
        assert joined
        output = agent_session.output.audio
        assert isinstance(output, DataStreamAudioOutput)
        assert output.sample_rate == 16000
        remote = agent_room.remote_participants["lemonslice-avatar-agent"]
        assert remote.attributes["lk.publish_on_behalf"] == "agent-under-test"
        assert avatar.session_id == emulator.sessions[0].session_id

        await avatar.aclose()
        await avatar.aclose()  # safe twice
        assert [r.json for r in emulator.requests_for("control")] == [{"event": "terminate"}]
        assert emulator.active_sessions == ()
        assert launcher.launched[0].participant.closed


async def test_a_refused_start_gives_the_agent_its_voice_back(
    livekit_server: LiveKitServer,
    agent_room: rtc.Room,
    http_session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    async with LemonSliceEmulator(api_key=KEY) as emulator:
        emulator.inject("create", StatusFault(402, "no active plan"))
        settings = settings_for(livekit_server, emulator, monkeypatch, tmp_path)
        _, agent_session, joined = await run(settings, http_session, agent_room)
        assert not joined
        assert agent_session.output.audio is None  # RoomIO will publish the agent's own track
        assert emulator.sessions == ()


async def test_an_avatar_that_never_shows_up_is_ended_not_left_billing(
    livekit_server: LiveKitServer,
    agent_room: rtc.Room,
    http_session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    async with LemonSliceEmulator(api_key=KEY) as emulator:  # accepts, but no avatar ever joins
        settings = settings_for(
            livekit_server, emulator, monkeypatch, tmp_path, avatar_join_timeout="1.5"
        )
        started = time.monotonic()
        _, agent_session, joined = await run(settings, http_session, agent_room)
        assert not joined
        assert 1.5 <= time.monotonic() - started < 4
        assert agent_session.output.audio is None
        assert [r.json for r in emulator.requests_for("control")] == [{"event": "terminate"}]
        assert emulator.active_sessions == ()


async def test_the_start_deadline_bounds_a_provider_that_never_answers(
    livekit_server: LiveKitServer,
    agent_room: rtc.Room,
    http_session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    async with LemonSliceEmulator(api_key=KEY) as emulator:
        emulator.inject("create", Hang(), Hang(), Hang())
        settings = settings_for(
            livekit_server, emulator, monkeypatch, tmp_path, avatar_start_timeout="2"
        )
        started = time.monotonic()
        _, agent_session, joined = await run(settings, http_session, agent_room)
        assert not joined
        assert 1.9 <= time.monotonic() - started < 3
        assert agent_session.output.audio is None
