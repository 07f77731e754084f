"""The avatar's face uploaded as an image file: the multipart create, through the strict emulator."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from providers.errors import AvatarProviderError, BadRequestError
from providers.image_file import ImageFile, read_image_file
from providers.lemonslice.api import LemonSliceAgent, LemonSliceAPI, read_error_text
from providers.retry import RetryPolicy
from tests.providers.conftest import FAST_POLICY, LEMONSLICE_KEY, avatar_token, provider_http
from tests.support.emulators import (
    CloseConnection,
    LemonSliceEmulator,
    LoseReply,
    ProcessThenFail,
    StatusFault,
    SucceedSlow,
)
from tests.support.faces import jpeg_face, png_face

# Short waits between attempts, and room for a slow answer on a loaded machine: a create timed
# out here would be a possible orphan, never retried, and these tests are not about timeouts.
PATIENT_POLICY = RetryPolicy(
    max_retries=3, base_delay=0.1, max_delay=0.4, attempt_timeout=10.0, call_deadline=30.0
)


def client(
    session: aiohttp.ClientSession,
    emulator: LemonSliceEmulator,
    policy: RetryPolicy = PATIENT_POLICY,
) -> LemonSliceAPI:
    http = provider_http(session, "lemonslice", policy, read_error_text=read_error_text)
    return LemonSliceAPI(http, api_key=LEMONSLICE_KEY, api_url=emulator.sessions_url)


def face_file(tmp_path: Path, data: bytes, name: str = "face.png") -> ImageFile:
    (tmp_path / name).write_bytes(data)
    return read_image_file(tmp_path / name)


async def start(lemonslice: LemonSliceAPI, agent: LemonSliceAgent, token: str = "") -> str:
    return await lemonslice.start_agent_session(
        agent,
        livekit_url="wss://example.livekit.cloud",
        livekit_token=token or avatar_token(),
        livekit_session_id="RM_abc123",
    )


@pytest.mark.parametrize(
    ("data", "filename", "content_type"),
    [(png_face(), "image.png", "image/png"), (jpeg_face(), "image.jpg", "image/jpeg")],
)
async def test_the_face_goes_as_an_image_part_beside_the_json_payload(
    http_session: aiohttp.ClientSession,
    lemonslice_emulator: LemonSliceEmulator,
    tmp_path: Path,
    data: bytes,
    filename: str,
    content_type: str,
) -> None:
    agent = LemonSliceAgent(
        agent_image=face_file(tmp_path, data),
        agent_prompt="smile",
        idle_timeout=120,
        extra_payload={"model": "lite", "response_done_timeout": 1.5},
    )
    token = avatar_token()
    session_id = await start(client(http_session, lemonslice_emulator), agent, token)

    (request,) = lemonslice_emulator.requests
    assert (request.method, request.path, request.status) == ("POST", "/api/liveai/sessions", 201)
    assert request.headers["X-API-Key"] == LEMONSLICE_KEY
    assert request.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    (session,) = lemonslice_emulator.active_sessions
    assert session.session_id == session_id
    assert dict(session.config) == {
        "transport_type": "livekit",
        "properties": {
            "livekit_url": "wss://example.livekit.cloud",
            "livekit_token": token,
            "livekit_session_id": "RM_abc123",
        },
        "agent_prompt": "smile",
        "idle_timeout": 120,
        "model": "lite",
        "response_done_timeout": 1.5,
    }
    assert session.image is not None
    assert (session.image.filename, session.image.content_type) == (filename, content_type)
    assert session.image.data == data


async def test_every_attempt_sends_the_bytes_read_at_start(
    http_session: aiohttp.ClientSession, lemonslice_emulator: LemonSliceEmulator, tmp_path: Path
) -> None:
    """Refusals are retried with a new form each time, from memory: a file changed meanwhile is not read."""
    agent = LemonSliceAgent(agent_image=face_file(tmp_path, png_face()))
    (tmp_path / "face.png").write_bytes(jpeg_face())  # edited after start
    lemonslice_emulator.inject("create", StatusFault(503), StatusFault(429, "slow down"))
    lemonslice = client(http_session, lemonslice_emulator)

    await start(lemonslice, agent)

    creates = lemonslice_emulator.requests_for("create")
    assert [r.status for r in creates] == [503, 429, 201]
    assert all(png_face() in r.body and jpeg_face() not in r.body for r in creates)
    (session,) = lemonslice_emulator.sessions
    assert session.image is not None and session.image.data == png_face()
    assert lemonslice._http.possible_orphans == []


@pytest.mark.parametrize(
    "fault",
    [SucceedSlow(seconds=5), LoseReply(), CloseConnection(), ProcessThenFail(502)],
)
async def test_an_upload_that_may_have_reached_the_provider_is_never_sent_again(
    http_session: aiohttp.ClientSession,
    lemonslice_emulator: LemonSliceEmulator,
    tmp_path: Path,
    fault: SucceedSlow | LoseReply | CloseConnection | ProcessThenFail,
) -> None:
    lemonslice_emulator.inject("create", fault)
    # a reply slower than the attempt's timeout is the fault under test: the short timeout for it
    policy = FAST_POLICY if isinstance(fault, SucceedSlow) else PATIENT_POLICY
    lemonslice = client(http_session, lemonslice_emulator, policy)
    with pytest.raises(AvatarProviderError) as caught:
        await start(lemonslice, LemonSliceAgent(agent_image=face_file(tmp_path, png_face())))
    assert getattr(caught.value, "may_have_reached", False)
    assert len(lemonslice_emulator.requests_for("create")) == 1
    assert [o.operation for o in lemonslice._http.possible_orphans] == ["create session"]


async def test_credentials_echoed_back_for_an_upload_are_not_repeated(
    http_session: aiohttp.ClientSession, lemonslice_emulator: LemonSliceEmulator, tmp_path: Path
) -> None:
    """The join token travels inside the payload part: the provider's words lose it, and the key."""
    token = avatar_token()
    lemonslice_emulator.inject(
        "create", StatusFault(400, f"token {token} rejected for key {LEMONSLICE_KEY}")
    )
    agent = LemonSliceAgent(agent_image=face_file(tmp_path, png_face()))
    with pytest.raises(BadRequestError) as caught:
        await start(client(http_session, lemonslice_emulator), agent, token)
    error = caught.value
    assert error.provider_message == "token *** rejected for key ***"
    assert error.args[0] == "lemonslice create session failed: 400 Bad Request"


def test_an_agent_shows_one_face(tmp_path: Path) -> None:
    image = face_file(tmp_path, png_face())
    for faces in (
        {"agent_id": "agent-7", "agent_image": image},
        {"agent_image_url": "https://cdn.example.com/face.png", "agent_image": image},
        {},
    ):
        with pytest.raises(
            ValueError, match="exactly one of agent_id, agent_image_url or agent_image"
        ):
            LemonSliceAgent(**faces)  # type: ignore[arg-type]
    assert str(png_face()[8:20]) not in repr(LemonSliceAgent(agent_image=image))
