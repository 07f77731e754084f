"""The shared avatar session glue against a real LiveKit room and the LemonSlice emulator:
speech routing, fallback to the agent's own voice, deadlines, and a teardown that ends what it started."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from livekit import rtc
from livekit.agents import AgentSession
from livekit.agents.voice.avatar import DataStreamAudioOutput

from config import load_settings
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


@dataclass
class Harness:
    """An agent connected to a real room, about to start a LemonSlice avatar through the registry."""

    server: LiveKitServer
    room: rtc.Room
    http_session: aiohttp.ClientSession

    async def start_avatar(
        self, emulator: LemonSliceEmulator, **settings: str
    ) -> tuple[ProviderAvatarSession, AgentSession[Any], bool]:
        config = load_settings(
            livekit_url=self.server.ws_url,
            livekit_api_key=self.server.api_key,
            livekit_api_secret=self.server.api_secret,
            avatar_provider="lemonslice",
            lemonslice_api_key=KEY,
            lemonslice_api_url=emulator.sessions_url,
            lemonslice_agent_id="agent-7",
            avatar_max_retries="1",
            avatar_request_timeout="1",
            **settings,
        )
        agent_session: AgentSession[Any] = AgentSession()
        avatar = create_avatar_session(config, self.http_session)
        joined = await avatar.start_or_fall_back(agent_session, self.room)
        return avatar, agent_session, joined


@pytest.fixture
def harness(
    livekit_server: LiveKitServer,
    agent_room: rtc.Room,
    http_session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Harness:
    monkeypatch.chdir(tmp_path)  # no developer .env
    return Harness(livekit_server, agent_room, http_session)


async def test_avatar_joins_for_the_agent_and_teardown_ends_everything_once(
    harness: Harness,
) -> None:
    launcher = LocalAvatarLauncher()
    async with LemonSliceEmulator(api_key=KEY, avatar_launcher=launcher) as emulator:
        avatar, agent_session, joined = await harness.start_avatar(emulator)
        assert joined
        output = agent_session.output.audio
        assert isinstance(output, DataStreamAudioOutput)
        assert output.sample_rate == 16000
        remote = harness.room.remote_participants["lemonslice-avatar-agent"]
        assert remote.attributes["lk.publish_on_behalf"] == "agent-under-test"
        assert avatar.session_id == emulator.sessions[0].session_id

        await avatar.aclose()
        await avatar.aclose()  # safe twice
        assert [r.json for r in emulator.requests_for("control")] == [{"event": "terminate"}]
        assert emulator.active_sessions == ()
        assert launcher.launched[0].participant.closed


async def test_a_refused_start_gives_the_agent_its_voice_back(harness: Harness) -> None:
    async with LemonSliceEmulator(api_key=KEY) as emulator:
        emulator.inject("create", StatusFault(402, "no active plan"))
        _, agent_session, joined = await harness.start_avatar(emulator)
        assert not joined
        assert agent_session.output.audio is None  # RoomIO will publish the agent's own track
        assert emulator.sessions == ()


async def test_an_avatar_that_never_shows_up_is_ended_not_left_billing(harness: Harness) -> None:
    async with LemonSliceEmulator(api_key=KEY) as emulator:  # accepts, but no avatar ever joins
        started = time.monotonic()
        _, agent_session, joined = await harness.start_avatar(emulator, avatar_join_timeout="1.5")
        assert not joined
        assert 1.5 <= time.monotonic() - started < 4
        assert agent_session.output.audio is None
        assert [r.json for r in emulator.requests_for("control")] == [{"event": "terminate"}]
        assert emulator.active_sessions == ()


async def test_the_start_deadline_bounds_a_provider_that_never_answers(harness: Harness) -> None:
    async with LemonSliceEmulator(api_key=KEY) as emulator:
        emulator.inject("create", Hang(), Hang(), Hang())
        started = time.monotonic()
        _, agent_session, joined = await harness.start_avatar(emulator, avatar_start_timeout="2")
        assert not joined
        assert 1.9 <= time.monotonic() - started < 3
        assert agent_session.output.audio is None
