"""LemonSlice's control events that move the avatar mid-call, against the strict emulator."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from providers.errors import BadRequestError, ProviderUnavailableError
from tests.providers.conftest import LEMONSLICE_KEY
from tests.providers.lemonslice.test_api import client, start
from tests.support.emulators import LemonSliceEmulator, StatusFault


async def test_each_avatar_control_sends_its_event_as_the_schema_has_it(
    http_session: aiohttp.ClientSession, lemonslice_emulator: LemonSliceEmulator
) -> None:
    lemonslice = client(http_session, lemonslice_emulator)
    session_id = await start(lemonslice)
    await lemonslice.trigger_pose(session_id, "wave")
    await lemonslice.update_agent_prompt(session_id, "calm and smiling")
    await lemonslice.update_image(session_id, "https://example.com/face.png")

    controls = lemonslice_emulator.requests_for("control")
    assert [(r.path, r.status) for r in controls] == [
        (f"/api/liveai/sessions/{session_id}/control", 200)
    ] * 3
    assert [r.json for r in controls] == [
        {"event": "pose-trigger", "pose_trigger": {"name": "wave"}},
        {"event": "update-agent-prompt", "agent_prompt": "calm and smiling"},
        {"event": "update-image", "image_url": "https://example.com/face.png"},
    ]
    assert lemonslice_emulator.active_sessions != ()  # none of them ends the session


async def test_a_refused_control_is_a_typed_error_and_a_busy_provider_is_asked_again(
    http_session: aiohttp.ClientSession, lemonslice_emulator: LemonSliceEmulator
) -> None:
    lemonslice = client(http_session, lemonslice_emulator)
    session_id = await start(lemonslice)
    lemonslice_emulator.inject("control", StatusFault(400, "no such action"))
    with pytest.raises(BadRequestError, match="no such action"):
        await lemonslice.trigger_pose(session_id, "somersault")
    lemonslice_emulator.inject("control", StatusFault(503))
    await lemonslice.trigger_pose(session_id, "wave")  # retried, as every call is
    lemonslice_emulator.inject("control", *[StatusFault(503)] * 10)
    with pytest.raises(ProviderUnavailableError):
        await lemonslice.trigger_pose(session_id, "wave")


@pytest.mark.parametrize(
    "body",
    [
        {"event": "pose-trigger"},
        {"event": "pose-trigger", "pose_trigger": {}},
        {"event": "pose-trigger", "pose_trigger": {"name": 3}},
        {"event": "pose-trigger", "pose_trigger": {"name": "wave", "speed": 2}},
        {"event": "update-agent-prompt"},
        {"event": "update-agent-prompt", "agent_prompt": None},
        {"event": "update-image"},
        {"event": "update-image", "image_url": "ftp://example.com/a.png"},
        {"event": "update-image", "image_url": "https://a/b.png", "image_base64": "AAAA"},
        {"event": "dance"},
    ],
)
async def test_the_emulator_rejects_control_bodies_outside_the_schema(
    http_session: aiohttp.ClientSession,
    lemonslice_emulator: LemonSliceEmulator,
    body: dict[str, Any],
) -> None:
    session_id = await start(client(http_session, lemonslice_emulator))
    async with http_session.post(
        f"{lemonslice_emulator.sessions_url}/{session_id}/control",
        json=body,
        headers={"X-API-Key": LEMONSLICE_KEY},
    ) as response:
        assert response.status == 400
        assert "detail" in await response.json()
