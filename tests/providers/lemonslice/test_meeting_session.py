"""The avatar joins an external meeting through the supervisor, in a real LiveKit room against the
emulator: joined after the start, left before the terminate on every end, and a failed join ends
the session it started and gives the agent its own voice."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from livekit import api

from providers.supervisor import AvatarSupervisor
from tests.support.avatar_launcher import LocalAvatarLauncher
from tests.support.emulators import LemonSliceEmulator, StatusFault
from tests.support.livekit_server import LiveKitServer
from tests.support.supervisor_harness import KEY, Harness, open_harness, route, until

MEETING = {
    "LEMONSLICE_MEETING_URL": "https://meet.google.com/abc-defg-hij",
    "LEMONSLICE_MEETING_BOT_NAME": "Ava",
}


@pytest.fixture
async def harness(
    livekit_server: LiveKitServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> AsyncIterator[Harness]:
    monkeypatch.chdir(tmp_path)  # no developer .env
    async with open_harness(livekit_server, "meeting") as harness:
        yield harness


@pytest.fixture
async def emulator() -> AsyncIterator[LemonSliceEmulator]:
    async with LemonSliceEmulator(api_key=KEY, avatar_launcher=LocalAvatarLauncher()) as emulator:
        yield emulator


def start(harness: Harness, emulator: LemonSliceEmulator) -> AvatarSupervisor:
    return harness.start(harness.settings("lemonslice", emulator, **MEETING))


async def test_the_avatar_joins_the_meeting_and_leaves_it_before_the_session_ends(
    harness: Harness, emulator: LemonSliceEmulator
) -> None:
    supervisor = start(harness, emulator)
    await harness.log.wait_for("joined")
    assert route(supervisor) == "avatar"

    (meeting,) = emulator.meetings
    (session,) = emulator.sessions
    assert (meeting.session_id, meeting.bot_name, meeting.present) == (
        session.session_id,
        "Ava",
        True,
    )
    assert meeting.meeting_url == MEETING["LEMONSLICE_MEETING_URL"]
    assert meeting.livekit_url == harness.server.ws_url
    # the bot may watch our room, and do nothing else in it
    assert meeting.broadcast_grants["room"] == harness.room.name
    assert meeting.broadcast_grants.get("canPublish") is False
    assert meeting.broadcast_grants.get("canPublishData") is False
    assert meeting.broadcast_grants.get("hidden") is True
    token = emulator.requests_for("join_meeting")[0].json["broadcast_token"]
    claims = api.TokenVerifier(harness.server.api_key, harness.server.api_secret).verify(token)
    assert claims.video is not None and claims.video.room == harness.room.name

    await supervisor.aclose()
    assert not meeting.present
    # the leave comes before the terminate: the bot never stays in a meeting on its own
    order = [r.route for r in emulator.requests if r.route in ("leave_meeting", "control")]
    assert order == ["leave_meeting", "control"]
    assert emulator.active_sessions == ()


async def test_a_refused_join_ends_the_session_and_the_agent_keeps_its_voice(
    harness: Harness, emulator: LemonSliceEmulator
) -> None:
    emulator.inject("join_meeting", StatusFault(403, "meetings are not on your plan"))
    supervisor = start(harness, emulator)
    await harness.log.wait_for("failed")
    assert route(supervisor) == "own_voice"
    assert "403" in (harness.log.named("failed")[0].reason or "")
    await until(lambda: emulator.active_sessions == (), emulator)
    assert [r.json for r in emulator.requests_for("control")] == [{"event": "terminate"}]
    assert emulator.meetings == ()


async def test_a_failed_leave_still_ends_the_session(
    harness: Harness, emulator: LemonSliceEmulator
) -> None:
    emulator.inject("leave_meeting", StatusFault(400, "no"))
    supervisor = start(harness, emulator)
    await harness.log.wait_for("joined")
    await supervisor.aclose()
    assert [r.status for r in emulator.requests_for("leave_meeting")] == [400]
    assert [r.json for r in emulator.requests_for("control")] == [{"event": "terminate"}]
    assert emulator.active_sessions == ()


async def test_without_a_meeting_url_no_meeting_is_joined(
    harness: Harness, emulator: LemonSliceEmulator
) -> None:
    supervisor = harness.start(
        harness.settings(
            "lemonslice", emulator, LEMONSLICE_MODEL="pro", LEMONSLICE_RESPONSE_DONE_TIMEOUT="1.5"
        )
    )
    await harness.log.wait_for("joined")
    await supervisor.aclose()
    assert emulator.requests_for("join_meeting") == ()
    body = emulator.requests_for("create")[0].json
    assert (body["model"], body["response_done_timeout"]) == ("pro", 1.5)
    assert "aspect_ratio" not in body
