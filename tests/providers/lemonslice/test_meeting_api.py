"""join_meeting / leave_meeting against the strict emulator, and the broadcast token's rights."""

from __future__ import annotations

import aiohttp
import pytest
from livekit import api

from providers.errors import BadRequestError, ProviderConnectionError, ProviderStatusError
from providers.lemonslice.api import (
    JoinedMeeting,
    LemonSliceAgent,
    LemonSliceAPI,
    read_error_text,
)
from providers.lemonslice.meeting_token import BROADCAST_IDENTITY, mint_broadcast_token
from tests.providers.conftest import (
    FAST_POLICY,
    LEMONSLICE_KEY,
    LIVEKIT_API_KEY,
    LIVEKIT_API_SECRET,
    avatar_token,
    provider_http,
)
from tests.support.emulators import CloseConnection, LemonSliceEmulator, StatusFault

MEETING_URL = "https://us02web.zoom.us/j/123456789?pwd=secret-pwd"


def client(session: aiohttp.ClientSession, emulator: LemonSliceEmulator) -> LemonSliceAPI:
    http = provider_http(session, "lemonslice", FAST_POLICY, read_error_text=read_error_text)
    return LemonSliceAPI(http, api_key=LEMONSLICE_KEY, api_url=emulator.sessions_url)


async def started(lemonslice: LemonSliceAPI) -> str:
    return await lemonslice.start_agent_session(
        LemonSliceAgent(agent_id="agent-7"),
        livekit_url="wss://example.livekit.cloud",
        livekit_token=avatar_token(),
    )


def broadcast_token() -> str:
    return mint_broadcast_token("room-1", api_key=LIVEKIT_API_KEY, api_secret=LIVEKIT_API_SECRET)


async def test_join_sends_the_wire_fields_and_the_bot_is_in_the_meeting(
    http_session: aiohttp.ClientSession, lemonslice_emulator: LemonSliceEmulator
) -> None:
    lemonslice = client(http_session, lemonslice_emulator)
    session_id = await started(lemonslice)
    token = broadcast_token()

    joined = await lemonslice.join_meeting(
        session_id,
        meeting_url=MEETING_URL,
        livekit_url="wss://example.livekit.cloud",
        broadcast_token=token,
        bot_name="Ava",
    )

    request = lemonslice_emulator.requests_for("join_meeting")[0]
    assert request.path == f"/api/liveai/sessions/{session_id}/join-meeting"
    assert request.headers["X-API-Key"] == LEMONSLICE_KEY
    assert request.json == {
        "session_id": session_id,
        "meeting_url": MEETING_URL,
        "livekit_url": "wss://example.livekit.cloud",
        "broadcast_token": token,
        "bot_name": "Ava",
    }
    (meeting,) = lemonslice_emulator.meetings
    assert (meeting.meeting_bot_id, meeting.present, meeting.bot_name) == (
        joined.meeting_bot_id,
        True,
        "Ava",
    )
    assert joined.websocket_url.startswith("ws://127.0.0.1:")
    assert "websocket_url" not in repr(joined) and joined.websocket_url not in repr(joined)


async def test_bot_name_is_left_out_when_not_given(
    http_session: aiohttp.ClientSession, lemonslice_emulator: LemonSliceEmulator
) -> None:
    lemonslice = client(http_session, lemonslice_emulator)
    session_id = await started(lemonslice)
    await lemonslice.join_meeting(
        session_id,
        meeting_url="https://meet.google.com/abc-defg-hij",
        livekit_url="wss://example.livekit.cloud",
        broadcast_token=broadcast_token(),
    )
    assert "bot_name" not in lemonslice_emulator.requests_for("join_meeting")[0].json


async def test_leave_takes_the_bot_out_and_a_second_leave_is_not_an_error(
    http_session: aiohttp.ClientSession, lemonslice_emulator: LemonSliceEmulator
) -> None:
    lemonslice = client(http_session, lemonslice_emulator)
    session_id = await started(lemonslice)
    joined = await lemonslice.join_meeting(
        session_id,
        meeting_url=MEETING_URL,
        livekit_url="wss://example.livekit.cloud",
        broadcast_token=broadcast_token(),
    )

    await lemonslice.leave_meeting(session_id, joined.meeting_bot_id)
    await lemonslice.leave_meeting(session_id, joined.meeting_bot_id)  # 404: gone already

    assert [r.json for r in lemonslice_emulator.requests_for("leave_meeting")] == [
        {"meeting_bot_id": joined.meeting_bot_id}
    ] * 2
    assert [r.status for r in lemonslice_emulator.requests_for("leave_meeting")] == [200, 404]
    assert not lemonslice_emulator.meeting(joined.meeting_bot_id).present


async def test_a_meeting_url_the_provider_cannot_join_is_a_bad_request(
    http_session: aiohttp.ClientSession, lemonslice_emulator: LemonSliceEmulator
) -> None:
    lemonslice = client(http_session, lemonslice_emulator)
    session_id = await started(lemonslice)
    with pytest.raises(BadRequestError):
        await lemonslice.join_meeting(
            session_id,
            meeting_url="https://example.com/not-a-meeting",
            livekit_url="wss://example.livekit.cloud",
            broadcast_token=broadcast_token(),
        )
    assert lemonslice_emulator.meetings == ()


async def test_a_join_that_may_have_arrived_is_not_sent_twice(
    http_session: aiohttp.ClientSession, lemonslice_emulator: LemonSliceEmulator
) -> None:
    """A second join could put a second bot in the meeting."""
    lemonslice = client(http_session, lemonslice_emulator)
    session_id = await started(lemonslice)
    lemonslice_emulator.inject("join_meeting", CloseConnection())
    with pytest.raises(ProviderConnectionError):
        await lemonslice.join_meeting(
            session_id,
            meeting_url=MEETING_URL,
            livekit_url="wss://example.livekit.cloud",
            broadcast_token=broadcast_token(),
        )
    assert len(lemonslice_emulator.requests_for("join_meeting")) == 1


async def test_leave_is_retried_through_a_passing_failure(
    http_session: aiohttp.ClientSession, lemonslice_emulator: LemonSliceEmulator
) -> None:
    lemonslice = client(http_session, lemonslice_emulator)
    session_id = await started(lemonslice)
    joined = await lemonslice.join_meeting(
        session_id,
        meeting_url=MEETING_URL,
        livekit_url="wss://example.livekit.cloud",
        broadcast_token=broadcast_token(),
    )
    lemonslice_emulator.inject("leave_meeting", StatusFault(503))
    await lemonslice.leave_meeting(session_id, joined.meeting_bot_id)
    assert [r.status for r in lemonslice_emulator.requests_for("leave_meeting")] == [503, 200]
    assert not lemonslice_emulator.meeting(joined.meeting_bot_id).present


async def test_leave_with_a_wrong_key_raises(
    http_session: aiohttp.ClientSession, lemonslice_emulator: LemonSliceEmulator
) -> None:
    lemonslice = client(http_session, lemonslice_emulator)
    session_id = await started(lemonslice)
    wrong = LemonSliceAPI(
        provider_http(http_session, "lemonslice", FAST_POLICY, read_error_text=read_error_text),
        api_key="wrong",
        api_url=lemonslice_emulator.sessions_url,
    )
    with pytest.raises(ProviderStatusError) as raised:
        await wrong.leave_meeting(session_id, "bot-1")
    assert raised.value.status_code == 401


def test_the_broadcast_token_only_subscribes_in_one_room_unseen() -> None:
    claims = api.TokenVerifier(LIVEKIT_API_KEY, LIVEKIT_API_SECRET).verify(broadcast_token())
    video = claims.video
    assert video is not None
    assert (video.room_join, video.room, video.can_subscribe, video.hidden) == (
        True,
        "room-1",
        True,
        True,
    )
    assert (video.can_publish, video.can_publish_data, video.room_admin) == (False, False, False)
    assert claims.identity == BROADCAST_IDENTITY
    assert claims.attributes in (None, {})


def test_joined_meeting_repr_hides_the_relay_url() -> None:
    joined = JoinedMeeting(meeting_bot_id="bot-1", websocket_url="wss://relay?token=s3cret")
    assert "s3cret" not in repr(joined)
