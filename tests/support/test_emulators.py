"""Tests of the provider emulators themselves (plain aiohttp requests, real sockets on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from livekit import api
from yarl import URL

from tests.support import emulators
from tests.support.emulators import (
    AnamEmulator,
    AssignSessionId,
    AvatarLaunch,
    CloseConnection,
    Delay,
    Hang,
    LemonSliceEmulator,
    LoseReply,
    MalformedJson,
    MissingSuccessField,
    ProcessThenFail,
    StatusFault,
    SucceedSlow,
    SucceedWhenReleased,
)
from tests.support.emulators.anam import concurrent_session_limit, rate_limited, spend_cap_reached
from tests.support.faces import jpeg_face, png_face
from tests.support.tasks import running_tasks_from

LS_KEY = "ls-secret-key-for-tests"
ANAM_KEY = "anam-secret-key-for-tests"
LIVEKIT_URL = "ws://127.0.0.1:7880"
LIVEKIT_TOKEN = (
    api.AccessToken("devkey", "a-test-secret-that-is-at-least-32-chars")
    .with_identity("avatar")
    .with_grants(api.VideoGrants(room_join=True, room="room"))
    .to_jwt()
)
BOUND = 5.0  # upper bound for any wait in these tests


# -- helpers -------------------------------------------------------------------------------------


class FakeAvatar:
    def __init__(self) -> None:
        self.closed = asyncio.Event()

    async def aclose(self) -> None:
        self.closed.set()


class Launcher:
    """Records launches; each launch waits for `gate` so tests control when the avatar 'joins'."""

    def __init__(self, *, fail: bool = False) -> None:
        self.launches: list[AvatarLaunch] = []
        self.avatars: list[FakeAvatar] = []
        self.called = asyncio.Event()
        self.gate = asyncio.Event()
        self._fail = fail

    async def __call__(self, launch: AvatarLaunch) -> FakeAvatar:
        self.launches.append(launch)
        self.called.set()
        await self.gate.wait()
        if self._fail:
            raise RuntimeError("avatar could not join")
        avatar = FakeAvatar()
        self.avatars.append(avatar)
        return avatar


def ls_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "transport_type": "livekit",
        "properties": {"livekit_url": LIVEKIT_URL, "livekit_token": LIVEKIT_TOKEN},
        "agent_id": "agent_123",
    }
    body.update(changes)
    return body


def anam_body() -> dict[str, Any]:
    return {
        "personaConfig": {
            "type": "ephemeral",
            "name": "Cara",
            "avatarId": "30fa96d0-26c4-4e55-94a0-517025942e18",
            "llmId": "CUSTOMER_CLIENT_V1",
        },
        "environment": {"livekitUrl": LIVEKIT_URL, "livekitToken": LIVEKIT_TOKEN},
    }


def ls_headers(key: str = LS_KEY) -> dict[str, str]:
    return {"X-API-Key": key, "Content-Type": "application/json"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def lemonslice() -> AsyncIterator[LemonSliceEmulator]:
    async with LemonSliceEmulator(LS_KEY) as emulator:
        yield emulator


@pytest.fixture
async def anam() -> AsyncIterator[AnamEmulator]:
    async with AnamEmulator(ANAM_KEY) as emulator:
        yield emulator


async def ls_create(
    http: aiohttp.ClientSession, emulator: LemonSliceEmulator, body: Any = None
) -> tuple[int, Any]:
    async with http.post(
        emulator.sessions_url, headers=ls_headers(), json=ls_body() if body is None else body
    ) as response:
        return response.status, await response.json()


async def anam_token(http: aiohttp.ClientSession, emulator: AnamEmulator) -> str:
    async with http.post(
        emulator.url + "/v1/auth/session-token", headers=bearer(ANAM_KEY), json=anam_body()
    ) as response:
        assert response.status == 200
        token: str = (await response.json())["sessionToken"]
        return token


# -- LemonSlice: contract -----------------------------------------------------------------------


async def test_lemonslice_create_records_request_and_bills_a_session(
    http: aiohttp.ClientSession, lemonslice: LemonSliceEmulator
) -> None:
    body = ls_body(agent_prompt="smile", idle_timeout=-1, audio_sample_rate=24000, model="lite")
    async with http.post(
        lemonslice.sessions_url,
        headers={"x-api-key": LS_KEY, "content-type": "application/json"},
        json=body,
    ) as response:
        assert response.status == 201
        session_id = (await response.json())["session_id"]

    [record] = lemonslice.requests_for("create")
    assert (record.method, record.path, record.status) == ("POST", "/api/liveai/sessions", 201)
    assert record.headers["X-API-KEY"] == LS_KEY
    assert record.json == body and json.loads(record.body) == body
    assert record.answered_at is not None and record.answered_at >= record.arrived_at

    [session] = lemonslice.active_sessions
    assert session.session_id == session_id and session.request is record
    assert session.launch.sample_rate == 24000
    async with http.get(f"{lemonslice.sessions_url}/{session_id}", headers=ls_headers()) as r:
        assert (r.status, await r.json()) == (200, {"session_status": "ACTIVE"})


def _without(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda body: body.pop(key)


def _set(*path_and_value: Any) -> Callable[[dict[str, Any]], None]:
    *path, value = path_and_value

    def change(body: dict[str, Any]) -> None:
        target = body
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


@pytest.mark.parametrize(
    ("change", "detail_part"),
    [
        (_set("transport_type", "daily"), "transport_type"),
        (_without("properties"), "properties"),
        (_set("properties", "ws://x"), "properties"),
        (_set("properties", "livekit_url", "ftp://host"), "livekit_url"),
        (_set("properties", "livekit_url", "not a url"), "livekit_url"),
        (_set("properties", "livekit_token", ""), "livekit_token"),
        (_set("properties", "livekit_token", "not-a-jwt"), "livekit_token"),
        (_set("properties", "room", "r"), "properties.room"),
        (_set("agent_image_url", "https://example.com/a.png"), "Only one of agent_id,"),
        (_without("agent_id"), "Missing agent_id or agent_image_url"),
        (_set("agent_id", None), "agent_id"),
        (_set("extra", 1), "extra"),
        (_set("idle_timeout", 1.5), "idle_timeout"),
        (_set("idle_timeout", True), "idle_timeout"),
        (_set("agent_prompt", 3), "agent_prompt"),
        (_set("model", "ultra"), "model"),
        (_set("aspect_ratio", "16x9"), "aspect_ratio"),
        (_set("simulcast", "yes"), "simulcast"),
        (_set("audio_sample_rate", 8000), "audio_sample_rate"),
        (_set("response_done_timeout", -1), "response_done_timeout"),
    ],
)
async def test_lemonslice_rejects_invalid_bodies(
    http: aiohttp.ClientSession,
    lemonslice: LemonSliceEmulator,
    change: Callable[[dict[str, Any]], None],
    detail_part: str,
) -> None:
    body = ls_body()
    change(body)
    status, answer = await ls_create(http, lemonslice, body)
    assert status == 400
    assert detail_part in answer["detail"]
    assert LIVEKIT_TOKEN not in answer["detail"]
    assert lemonslice.sessions == ()


@pytest.mark.parametrize(
    ("headers", "raw", "status", "detail_part"),
    [
        ({"Content-Type": "application/json"}, None, 401, "X-API-Key"),
        (ls_headers("wrong-key"), None, 401, "invalid API key"),
        ({"X-API-Key": LS_KEY, "Content-Type": "text/plain"}, None, 400, "Content-Type"),
        (ls_headers(), b"{not json", 400, "not valid JSON"),
        (ls_headers(), b"[1, 2]", 400, "JSON object"),
    ],
)
async def test_lemonslice_rejects_bad_auth_and_framing(
    http: aiohttp.ClientSession,
    lemonslice: LemonSliceEmulator,
    headers: dict[str, str],
    raw: bytes | None,
    status: int,
    detail_part: str,
) -> None:
    data = raw if raw is not None else json.dumps(ls_body()).encode()
    async with http.post(lemonslice.sessions_url, headers=headers, data=data) as response:
        assert response.status == status
        detail = (await response.json())["detail"]
    assert detail_part in detail and LS_KEY not in detail
    assert lemonslice.sessions == ()


async def test_lemonslice_accepts_image_url_and_every_optional_field(
    http: aiohttp.ClientSession, lemonslice: LemonSliceEmulator
) -> None:
    body = ls_body(
        agent_image_url="https://example.com/face.png",
        agent_prompt="",
        agent_idle_prompt="wait",
        idle_timeout=60,
        response_done_timeout=2.5,
        model="pro",
        aspect_ratio="9x16",
        simulcast=False,
        audio_sample_rate=48000,
    )
    del body["agent_id"]
    body["properties"]["livekit_session_id"] = "RM_abc"
    status, _ = await ls_create(http, lemonslice, body)
    assert status == 201
    status, _ = await ls_create(http, lemonslice, ls_body())
    assert status == 201
    assert [s.launch.sample_rate for s in lemonslice.sessions] == [48000, 16000]


# -- LemonSlice: the multipart create (an uploaded face) ------------------------------------------

BOUNDARY = "face-upload-boundary-7f3a"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def form_part(
    name: str | None, data: bytes, *, filename: str | None = None, content_type: str | None = None
) -> tuple[dict[str, str], bytes]:
    disposition = "form-data" + (f'; name="{name}"' if name is not None else "")
    if filename is not None:
        disposition += f'; filename="{filename}"'
    headers = {"Content-Disposition": disposition}
    if content_type is not None:
        headers["Content-Type"] = content_type
    return headers, data


def payload_part(body: dict[str, Any] | None = None) -> tuple[dict[str, str], bytes]:
    payload = ls_body() if body is None else body
    payload.pop("agent_id", None)
    return form_part("payload", json.dumps(payload).encode(), content_type="application/json")


def image_part(
    data: bytes | None = None,
    *,
    filename: str | None = "image.png",
    content_type: str = "image/png",
) -> tuple[dict[str, str], bytes]:
    image = png_face() if data is None else data
    return form_part("image", image, filename=filename, content_type=content_type)


def multipart_body(*parts: tuple[dict[str, str], bytes]) -> bytes:
    """A multipart/form-data body written by hand, so a test can make any part wrong."""
    chunks = []
    for headers, data in parts:
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        chunks.append(f"--{BOUNDARY}\r\n{head}\r\n".encode() + data + b"\r\n")
    return b"".join(chunks) + f"--{BOUNDARY}--\r\n".encode()


async def ls_upload(
    http: aiohttp.ClientSession,
    emulator: LemonSliceEmulator,
    body: bytes,
    content_type: str = MULTIPART,
) -> tuple[int, Any]:
    headers = {"X-API-Key": LS_KEY, "Content-Type": content_type}
    async with http.post(emulator.sessions_url, headers=headers, data=body) as response:
        return response.status, await response.json()


@pytest.mark.parametrize(
    ("image", "filename", "content_type"),
    [(png_face(), "image.png", "image/png"), (jpeg_face(), "face.jpg", "image/jpeg")],
)
async def test_lemonslice_a_multipart_create_with_a_face_bills_a_session(
    http: aiohttp.ClientSession,
    lemonslice: LemonSliceEmulator,
    image: bytes,
    filename: str,
    content_type: str,
) -> None:
    body = ls_body(model="flash")
    del body["agent_id"]
    status, answer = await ls_upload(
        http,
        lemonslice,
        multipart_body(
            payload_part(dict(body)),
            image_part(image, filename=filename, content_type=content_type),
        ),
    )
    assert status == 201
    (session,) = lemonslice.sessions
    assert session.session_id == answer["session_id"]
    assert dict(session.config) == body
    assert session.image is not None
    assert (session.image.filename, session.image.content_type) == (filename, content_type)
    assert session.image.data == image


async def test_lemonslice_a_create_written_by_aiohttp_form_data_is_understood(
    http: aiohttp.ClientSession, lemonslice: LemonSliceEmulator
) -> None:
    """The parser reads what a real multipart writer sends, not only the bodies of these tests."""
    payload = ls_body()
    del payload["agent_id"]
    form = aiohttp.FormData()
    form.add_field("payload", json.dumps(payload), content_type="application/json")
    form.add_field("image", png_face(), filename="image.png", content_type="image/png")
    async with http.post(
        lemonslice.sessions_url, headers={"X-API-Key": LS_KEY}, data=form
    ) as response:
        assert response.status == 201
    (session,) = lemonslice.sessions
    assert session.image is not None and session.image.data == png_face()


@pytest.mark.parametrize(
    ("parts", "detail_part"),
    [
        ((payload_part(),), "missing required part 'image'"),
        ((image_part(),), "missing required part 'payload'"),
        (
            (payload_part(), image_part(), form_part("agent_image", b"x", filename="x.png")),
            "unexpected part 'agent_image'",
        ),
        ((payload_part(), image_part(), image_part()), "part 'image' given more than once"),
        (
            (form_part("payload", b"{}", content_type="text/plain"), image_part()),
            "part 'payload' must have Content-Type application/json",
        ),
        (
            (form_part("payload", b"{}"), image_part()),  # no Content-Type: not read as JSON
            "part 'payload' must have Content-Type application/json",
        ),
        (
            (form_part("payload", b"{not json", content_type="application/json"), image_part()),
            "part 'payload' is not valid JSON",
        ),
        (
            (form_part("payload", b"[1]", content_type="application/json"), image_part()),
            "part 'payload' must be a JSON object",
        ),
        (
            (
                form_part(
                    "payload", b"{}", filename="payload.json", content_type="application/json"
                ),
                image_part(),
            ),
            "part 'payload' must be a form field",
        ),
        ((payload_part(), image_part(filename=None)), "part 'image' must be a file"),
        (
            (payload_part(), image_part(b"GIF89a" + bytes(16), content_type="image/gif")),
            "part 'image' must have Content-Type image/png or image/jpeg",
        ),
        (
            (payload_part(), image_part(b"hello, not a picture")),
            "part 'image' is not a image/png image",
        ),
        (
            (payload_part(), image_part(png_face(), content_type="image/jpeg")),
            "part 'image' is not a image/jpeg image",
        ),
        (
            (  # the payload keeps its agent_id beside the uploaded face
                form_part(
                    "payload", json.dumps(ls_body()).encode(), content_type="application/json"
                ),
                image_part(),
            ),
            "Only one of agent_id, agent_image_url or image",
        ),
        (
            (payload_part(ls_body(agent_image_url="https://example.com/face.png")), image_part()),
            "Only one of agent_id, agent_image_url or image",
        ),
        (
            (payload_part(ls_body(extra=1)), image_part()),
            "unexpected field 'extra'",
        ),
        ((form_part(None, b"x"), payload_part(), image_part()), "without a form-data name"),
    ],
)
async def test_lemonslice_rejects_invalid_multipart_creates(
    http: aiohttp.ClientSession,
    lemonslice: LemonSliceEmulator,
    parts: tuple[tuple[dict[str, str], bytes], ...],
    detail_part: str,
) -> None:
    status, answer = await ls_upload(http, lemonslice, multipart_body(*parts))
    assert status == 400 and detail_part in answer["detail"], answer
    assert LIVEKIT_TOKEN not in answer["detail"]
    assert lemonslice.sessions == ()


@pytest.mark.parametrize(
    ("content_type", "detail_part"),
    [
        ("multipart/form-data", "malformed multipart body"),  # no boundary
        ("multipart/form-data; boundary=another-boundary", "malformed multipart body"),
        ("multipart/mixed; boundary=" + BOUNDARY, "application/json or multipart/form-data"),
        ("image/png", "application/json or multipart/form-data"),
    ],
)
async def test_lemonslice_rejects_a_multipart_create_framed_wrong(
    http: aiohttp.ClientSession,
    lemonslice: LemonSliceEmulator,
    content_type: str,
    detail_part: str,
) -> None:
    body = multipart_body(payload_part(), image_part())
    status, answer = await ls_upload(http, lemonslice, body, content_type)
    assert status == 400 and detail_part in answer["detail"]
    assert lemonslice.sessions == ()


async def test_lemonslice_control_and_status_routes(
    http: aiohttp.ClientSession, lemonslice: LemonSliceEmulator
) -> None:
    _, created = await ls_create(http, lemonslice)
    session_url = f"{lemonslice.sessions_url}/{created['session_id']}"

    async def control(url: str, body: Any, headers: dict[str, str] | None = None) -> int:
        async with http.post(url + "/control", headers=headers or ls_headers(), json=body) as r:
            return r.status

    assert await control(session_url, {"event": "terminate"}, {"X-API-Key": "nope"}) == 401
    assert await control(f"{lemonslice.sessions_url}/unknown", {"event": "terminate"}) == 404
    assert await control(session_url, {"event": "explode"}) == 400
    assert await control(session_url, {}) == 400
    assert await control(session_url, {"event": "update-agent-prompt", "agent_prompt": "x"}) == 200
    assert len(lemonslice.active_sessions) == 1

    assert await control(session_url, {"event": "terminate"}) == 200
    assert not lemonslice.active_sessions
    assert lemonslice.sessions[0].terminated
    async with http.get(session_url, headers=ls_headers()) as r:
        assert await r.json() == {"session_status": "COMPLETED"}
    async with http.get(f"{lemonslice.sessions_url}/unknown", headers=ls_headers()) as r:
        assert r.status == 404
    async with http.get(session_url) as r:
        assert r.status == 401


async def test_unknown_paths_and_methods_answer_json_and_are_recorded(
    http: aiohttp.ClientSession, lemonslice: LemonSliceEmulator
) -> None:
    async with http.post(lemonslice.url + "/api/other", headers=ls_headers(), json={}) as r:
        assert (r.status, await r.json()) == (404, {"detail": "Not Found"})
    async with http.put(lemonslice.sessions_url, headers=ls_headers(), json={}) as r:
        assert r.status == 405
        assert "POST" in r.headers["Allow"]
    assert [(q.route, q.status) for q in lemonslice.requests] == [(None, 404), (None, 405)]


# -- Anam: contract -----------------------------------------------------------------------------


async def test_anam_two_step_flow_and_single_use_token(
    http: aiohttp.ClientSession, anam: AnamEmulator
) -> None:
    token = await anam_token(http, anam)
    assert token.count(".") == 2 and ANAM_KEY not in token

    engine_url = anam.url + "/v1/engine/session"
    async with http.post(engine_url, headers=bearer(ANAM_KEY), json={}) as r:
        assert r.status == 400  # the API key starts a session only with the persona body
        assert "personaConfig" in (await r.json())["message"]
    async with http.post(engine_url, headers=bearer("a.b.c"), json={}) as r:
        assert r.status == 401
    async with http.post(engine_url, headers=bearer(token), json={"extra": 1}) as r:
        assert r.status == 400
    async with http.post(engine_url, headers=bearer(token), json={}) as r:
        assert r.status == 200
        started = await r.json()
    assert started["engineProtocol"] == "https"
    assert set(started) == {"sessionId", "engineHost", "engineProtocol", "signallingEndpoint"}
    async with http.post(engine_url, headers=bearer(token), json={}) as r:
        assert r.status == 401
        assert (await r.json())["message"] == "session token already used"

    [session] = anam.active_sessions
    assert session.session_id == started["sessionId"]
    assert session.launch.sample_rate == 24000
    assert session.launch.livekit_token == LIVEKIT_TOKEN
    assert [q.status for q in anam.requests_for("engine_session")] == [400, 401, 400, 200, 401]


async def test_anam_direct_flow_takes_the_api_key_and_the_plugin_body(
    http: aiohttp.ClientSession, anam: AnamEmulator
) -> None:
    """One call, as livekit-plugins-anam 1.8.9 makes it: director notes are an object there."""
    body = anam_body()
    body["personaConfig"] |= {
        "avatarModel": "cara-3",
        "directorNotes": {"expressivity": 0.7, "presetStyle": "warm"},
    }
    body["sessionOptions"] = {"videoWidth": 720, "videoHeight": 1280}
    engine_url = anam.url + "/v1/engine/session"
    async with http.post(engine_url, headers=bearer(ANAM_KEY), json=body) as r:
        assert r.status == 200
        started = await r.json()
    async with http.post(engine_url, headers=bearer("not-the-key"), json=body) as r:
        assert r.status == 401
    [session] = anam.active_sessions
    assert session.session_id == started["sessionId"]
    assert session.config == body
    assert session.launch.livekit_token == LIVEKIT_TOKEN
    assert anam.issued_token_count == 0


@pytest.mark.parametrize(
    ("notes", "message_part"),
    [
        ({"expressivity": 1.5}, "expressivity"),
        ({"presetStyle": "warm", "customStylePrompt": "calm"}, "mutually exclusive"),
        ({"mood": "happy"}, "directorNotes.mood"),
        ({"presetStyle": ""}, "presetStyle"),
        ({"expressivity": -0.1}, "expressivity"),
        ({"expressivity": "0.5"}, "expressivity"),
        ({"expressivity": True}, "expressivity"),
        ({"customStylePrompt": ""}, "customStylePrompt"),
        ({"customStylePrompt": 7}, "customStylePrompt"),
    ],
)
async def test_anam_direct_flow_rejects_bad_director_notes_and_starts_nothing(
    http: aiohttp.ClientSession, anam: AnamEmulator, notes: dict[str, Any], message_part: str
) -> None:
    body = anam_body()
    body["personaConfig"]["directorNotes"] = notes
    async with http.post(anam.url + "/v1/engine/session", headers=bearer(ANAM_KEY), json=body) as r:
        assert r.status == 400
        assert message_part in (await r.json())["message"]
    assert anam.sessions == ()


@pytest.mark.parametrize("cap", [0, -5, 1.5, "60", True, None])
async def test_anam_refuses_a_malformed_session_length_cap(
    http: aiohttp.ClientSession, anam: AnamEmulator, cap: Any
) -> None:
    body = anam_body()
    body["personaConfig"]["maxSessionLengthSeconds"] = cap
    async with http.post(anam.url + "/v1/engine/session", headers=bearer(ANAM_KEY), json=body) as r:
        assert r.status == 400
        assert "maxSessionLengthSeconds" in (await r.json())["message"]
    assert anam.sessions == ()


async def test_anam_ends_a_session_at_its_length_cap_and_its_avatar_leaves(
    http: aiohttp.ClientSession,
) -> None:
    launcher = Launcher()
    launcher.gate.set()
    async with AnamEmulator(ANAM_KEY, avatar_launcher=launcher) as emulator:
        capped, uncapped = anam_body(), anam_body()
        capped["personaConfig"]["maxSessionLengthSeconds"] = 1
        for body in (capped, uncapped):
            async with http.post(
                emulator.url + "/v1/engine/session", headers=bearer(ANAM_KEY), json=body
            ) as r:
                assert r.status == 200
        first, second = emulator.sessions
        async with asyncio.timeout(30):
            await emulator.wait_until(lambda: first.avatar_closed and second.avatar_launched)
        assert first.status == "TIMED_OUT" and not first.active
        assert second.active and not second.avatar_closed  # no cap asked for, none applied


async def test_latency_delays_every_answer_and_the_session_it_makes(
    http: aiohttp.ClientSession,
) -> None:
    async with LemonSliceEmulator(LS_KEY, latency=0.3) as emulator:
        status, _ = await ls_create(http, emulator)
        async with http.post(
            emulator.sessions_url, headers=ls_headers("wrong"), json=ls_body()
        ) as r:
            assert r.status == 401
    first, refused = emulator.requests
    assert status == 201
    for record in (first, refused):
        assert record.answered_at is not None
        # the latency, plus what a loaded machine adds
        assert 0.3 <= record.answered_at - record.arrived_at < 0.3 + 1.0
    [session] = emulator.sessions
    assert session.config == ls_body()


async def test_connect_latency_is_paid_once_per_connection() -> None:
    """A client that keeps its connection pays the connection cost once; one that opens a new
    connection per call pays it each time."""
    # Long enough that no stall of a loaded machine passes for it.
    async with LemonSliceEmulator(LS_KEY, connect_latency=1.0) as emulator:
        async with aiohttp.ClientSession() as pooled:
            for _ in range(2):
                await ls_create(pooled, emulator)
        async with aiohttp.ClientSession() as fresh:
            await ls_create(fresh, emulator)
    waits = [r.answered_at - r.arrived_at for r in emulator.requests if r.answered_at is not None]
    assert len(waits) == 3
    assert waits[0] >= 1.0 and waits[2] >= 1.0
    assert waits[1] < 1.0


@pytest.mark.parametrize(
    ("change", "message_part"),
    [
        (_set("personaConfig", "type", "saved"), "personaConfig.type"),
        (_set("personaConfig", "llmId", "GPT"), "personaConfig.llmId"),
        (_set("personaConfig", "name", ""), "personaConfig.name"),
        (_set("personaConfig", "voiceId", "v"), "personaConfig.voiceId"),
        (_set("personaConfig", "directorNotes", 5), "personaConfig.directorNotes"),
        (_without("environment"), "environment"),
        (_set("environment", "livekitUrl", "mailto:x@y"), "environment.livekitUrl"),
        (_set("environment", "livekitToken", "opaque"), "environment.livekitToken"),
        (_set("environment", "room", "r"), "environment.room"),
        (_set("sessionOptions", {"videoWidth": 720}), "videoHeight"),
        (_set("sessionOptions", {"videoWidth": 0, "videoHeight": 720}), "videoWidth"),
        (_set("sessionOptions", {"fps": 30}), "sessionOptions.fps"),
        (_set("sessionOptions", {"showAIAvatarDisclosure": "yes"}), "showAIAvatarDisclosure"),
        (_set("sessionOptions", {"showAIAvatarDisclosure": 1}), "showAIAvatarDisclosure"),
        (_set("sessionOptions", {"videoHeight": 1280}), "videoHeight"),
        (_set("sessionOptions", {"videoWidth": "720", "videoHeight": 1280}), "videoWidth"),
        (_set("sessionOptions", {"videoWidth": 720.5, "videoHeight": 1280}), "videoWidth"),
        (_set("sessionOptions", {"videoWidth": 720, "videoHeight": -1}), "videoHeight"),
        (_set("sessionOptions", []), "sessionOptions"),
        (_set("persona", {}), "persona"),
    ],
)
async def test_anam_rejects_invalid_token_requests(
    http: aiohttp.ClientSession,
    anam: AnamEmulator,
    change: Callable[[dict[str, Any]], None],
    message_part: str,
) -> None:
    body = anam_body()
    change(body)
    async with http.post(
        anam.url + "/v1/auth/session-token", headers=bearer(ANAM_KEY), json=body
    ) as r:
        assert r.status == 400
        answer = await r.json()
    assert answer["error"] == "Bad Request" and message_part in answer["message"]
    assert anam.issued_token_count == 0


async def test_anam_accepts_optional_fields_and_needs_the_api_key(
    http: aiohttp.ClientSession, anam: AnamEmulator
) -> None:
    body = anam_body()
    body["personaConfig"] |= {"avatarModel": "cara-3", "directorNotes": ""}
    body["sessionOptions"] = {
        "videoWidth": 720,
        "videoHeight": 1280,
        "showAIAvatarDisclosure": True,
    }
    url = anam.url + "/v1/auth/session-token"
    async with http.post(url, headers=bearer(ANAM_KEY), json=body) as r:
        assert r.status == 200
    for headers in (bearer("wrong"), {"Authorization": ANAM_KEY}, {}):
        async with http.post(url, headers=headers, json=body) as r:
            assert r.status == 401
            assert set(await r.json()) == {"error", "message"}
    assert anam.issued_token_count == 1


async def test_anam_concurrency_limit(http: aiohttp.ClientSession) -> None:
    async with AnamEmulator(ANAM_KEY, max_concurrent_sessions=1) as anam:
        answers = []
        for _ in range(2):
            token = await anam_token(http, anam)
            async with http.post(
                anam.url + "/v1/engine/session", headers=bearer(token), json={}
            ) as r:
                answers.append((r.status, (await r.json()).get("message")))
        assert answers == [(200, None), (429, "Concurrent session limit reached")]
        await anam.end_session(anam.sessions[0].session_id)
        async with http.post(anam.url + "/v1/engine/session", headers=bearer(token), json={}) as r:
            assert r.status == 200
        assert len(anam.sessions) == 2 and len(anam.active_sessions) == 1


# -- faults -------------------------------------------------------------------------------------


async def test_fault_script_is_consumed_in_order_per_route(
    http: aiohttp.ClientSession, lemonslice: LemonSliceEmulator
) -> None:
    lemonslice.inject("create", StatusFault(503), StatusFault(429, retry_after=7), Delay(0.2))
    lemonslice.inject("status", StatusFault(500, body={"oops": True}))
    assert len(lemonslice.pending_faults("create")) == 3

    async with http.post(lemonslice.sessions_url, headers=ls_headers(), json=ls_body()) as r:
        assert (r.status, await r.json()) == (503, {"detail": "Service Unavailable"})
    async with http.post(lemonslice.sessions_url, headers=ls_headers(), json=ls_body()) as r:
        assert (r.status, r.headers["Retry-After"]) == (429, "7")
    assert lemonslice.sessions == ()
    status, _ = await ls_create(http, lemonslice)
    assert status == 201
    status, _ = await ls_create(http, lemonslice)
    assert status == 201

    records = lemonslice.requests_for("create")
    assert [q.status for q in records] == [503, 429, 201, 201]
    delayed = records[2]
    assert delayed.answered_at is not None
    assert delayed.answered_at - delayed.arrived_at >= 0.2
    assert isinstance(delayed.fault, Delay) and records[3].fault is None
    assert lemonslice.pending_faults("create") == ()
    assert len(lemonslice.pending_faults("status")) == 1  # other routes keep their scripts
    with pytest.raises(ValueError, match="unknown route"):
        lemonslice.inject("crate", Hang())


async def test_anam_error_faults_have_anam_shape(
    http: aiohttp.ClientSession, anam: AnamEmulator
) -> None:
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    anam.inject(
        "session_token",
        concurrent_session_limit(),
        spend_cap_reached(),
        rate_limited(when),
        StatusFault(402),
    )
    url = anam.url + "/v1/auth/session-token"
    answers = []
    for _ in range(4):
        async with http.post(url, headers=bearer(ANAM_KEY), json=anam_body()) as r:
            answers.append((r.status, await r.json(), r.headers.get("Retry-After")))
    assert answers[0][:2] == (
        429,
        {"error": "Too Many Requests", "message": "Concurrent session limit reached"},
    )
    assert answers[1][1]["message"] == "Spend cap reached"
    assert answers[2][2] is not None and parsedate_to_datetime(answers[2][2]) == when
    assert answers[3][:2] == (402, {"error": "Payment Required", "message": "Payment Required"})
    assert anam.issued_token_count == 0


async def test_bad_success_bodies_still_bill_a_session(
    http: aiohttp.ClientSession, lemonslice: LemonSliceEmulator
) -> None:
    lemonslice.inject("create", MalformedJson(), MissingSuccessField(), MissingSuccessField(True))
    bodies = []
    for _ in range(3):
        async with http.post(lemonslice.sessions_url, headers=ls_headers(), json=ls_body()) as r:
            assert r.status == 201 and r.content_type == "application/json"
            bodies.append(await r.read())
    with pytest.raises(ValueError):
        json.loads(bodies[0])
    assert json.loads(bodies[1]) == {}
    assert json.loads(bodies[2]) == {"session_id": ""}
    assert len(lemonslice.active_sessions) == 3


async def test_a_bad_request_consumes_a_success_fault_without_billing(
    http: aiohttp.ClientSession, lemonslice: LemonSliceEmulator
) -> None:
    lemonslice.inject("create", MalformedJson())
    status, _ = await ls_create(http, lemonslice, ls_body(model="ultra"))
    assert status == 400
    assert lemonslice.pending_faults("create") == () and lemonslice.sessions == ()


async def test_close_connection_fault(
    http: aiohttp.ClientSession, lemonslice: LemonSliceEmulator
) -> None:
    lemonslice.inject("create", CloseConnection())
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await ls_create(http, lemonslice)
    [record] = lemonslice.requests
    assert record.status is None and record.dropped == "closed by fault"
    assert record.json == ls_body()  # the body was read before the connection was dropped
    assert lemonslice.sessions == ()
    status, _ = await ls_create(http, lemonslice)
    assert status == 201


async def test_hang_is_released_when_the_emulator_closes(http: aiohttp.ClientSession) -> None:
    emulator = LemonSliceEmulator(LS_KEY)
    await emulator.start()
    emulator.inject("create", Hang())
    pending = asyncio.create_task(ls_create(http, emulator))
    async with asyncio.timeout(BOUND):
        await emulator.wait_until(lambda: any(q.is_json for q in emulator.requests))
    assert not pending.done()

    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(BOUND):
        await emulator.aclose()
    # short of the 2 s the server gives requests in flight at shutdown, which a held one would use
    assert loop.time() - started < 1.5
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await asyncio.wait_for(pending, BOUND)
    assert emulator.requests[0].dropped == "hang released on close"
    assert emulator.sessions == ()


async def test_succeed_slow_bills_a_session_the_client_never_hears_about(
    http: aiohttp.ClientSession, anam: AnamEmulator
) -> None:
    token = await anam_token(http, anam)
    anam.inject("engine_session", SucceedSlow())
    with pytest.raises(TimeoutError):
        async with http.post(
            anam.url + "/v1/engine/session",
            headers=bearer(token),
            json={},
            timeout=aiohttp.ClientTimeout(total=0.3),
        ):
            pass
    async with asyncio.timeout(BOUND):
        await anam.wait_until(lambda: len(anam.sessions) == 1)
    assert len(anam.active_sessions) == 1  # an orphan the client must not duplicate blindly
    assert anam.requests_for("engine_session")[0].status is None


async def test_a_held_reply_launches_the_avatar_and_answers_when_released(
    http: aiohttp.ClientSession,
) -> None:
    launcher = Launcher()
    launcher.gate.set()
    released = asyncio.Event()
    async with LemonSliceEmulator(LS_KEY, avatar_launcher=launcher) as emulator:
        emulator.inject("create", SucceedWhenReleased(released))
        create = asyncio.ensure_future(ls_create(http, emulator, ls_body()))
        async with asyncio.timeout(BOUND):
            await emulator.wait_until(lambda: bool(launcher.avatars))
        # the avatar is up while its create is still unanswered
        assert not create.done() and emulator.requests_for("create")[0].status is None

        released.set()
        async with asyncio.timeout(BOUND):
            status, created = await create
        assert status == 201
        assert [s.session_id for s in emulator.sessions] == [created["session_id"]]


async def test_a_held_reply_is_dropped_when_the_emulator_closes(
    http: aiohttp.ClientSession,
) -> None:
    emulator = LemonSliceEmulator(LS_KEY)
    await emulator.start()
    emulator.inject("create", SucceedWhenReleased(asyncio.Event()))
    pending = asyncio.ensure_future(ls_create(http, emulator, ls_body()))
    async with asyncio.timeout(BOUND):
        await emulator.wait_until(lambda: len(emulator.sessions) == 1)
        await emulator.aclose()
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await asyncio.wait_for(pending, BOUND)
    assert emulator.requests[0].dropped == "emulator closed before the held reply"


async def test_a_lost_reply_bills_a_session_and_drops_the_connection(
    http: aiohttp.ClientSession, lemonslice: LemonSliceEmulator
) -> None:
    lemonslice.inject("create", LoseReply())
    with pytest.raises(aiohttp.ServerDisconnectedError):
        async with http.post(lemonslice.sessions_url, headers=ls_headers(), json=ls_body()):
            pass
    [record] = lemonslice.requests_for("create")
    assert record.status is None and record.dropped == "reply lost by fault"
    assert record.finished_at is not None
    assert len(lemonslice.active_sessions) == 1


@pytest.mark.parametrize("status", [500, 502, 504])
async def test_process_then_fail_bills_a_session_and_answers_an_error(
    http: aiohttp.ClientSession, lemonslice: LemonSliceEmulator, anam: AnamEmulator, status: int
) -> None:
    lemonslice.inject("create", ProcessThenFail(status))
    assert await ls_create(http, lemonslice) == (
        status,
        {"detail": HTTPStatus(status).phrase},
    )
    assert len(lemonslice.active_sessions) == 1

    # Anam: the two-step flow's engine session, and the direct flow's
    anam.inject("engine_session", ProcessThenFail(status), ProcessThenFail(status))
    token = await anam_token(http, anam)
    for headers, body in ((bearer(token), {}), (bearer(ANAM_KEY), anam_body())):
        async with http.post(anam.url + "/v1/engine/session", headers=headers, json=body) as r:
            assert r.status == status
            assert (await r.json())["error"]
    assert len(anam.active_sessions) == 2


async def test_process_then_fail_makes_nothing_of_a_request_it_rejects(
    http: aiohttp.ClientSession, lemonslice: LemonSliceEmulator
) -> None:
    lemonslice.inject("create", ProcessThenFail(502))
    status, _ = await ls_create(http, lemonslice, ls_body(model="ultra"))
    assert status == 400 and lemonslice.sessions == ()


async def test_an_echoing_error_answers_the_request_body(
    http: aiohttp.ClientSession, lemonslice: LemonSliceEmulator
) -> None:
    lemonslice.inject(
        "create",
        StatusFault(400, echo_request="text"),
        ProcessThenFail(502, echo_request="text"),
        StatusFault(400, echo_request="json"),
    )
    for status in (400, 502):
        async with http.post(lemonslice.sessions_url, headers=ls_headers(), json=ls_body()) as r:
            assert (r.status, r.content_type) == (status, "text/plain")
            assert LIVEKIT_TOKEN in await r.text()
    async with http.post(lemonslice.sessions_url, headers=ls_headers(), json=ls_body()) as r:
        assert r.status == 400
        assert LIVEKIT_TOKEN in (await r.json())["detail"]
    assert len(lemonslice.sessions) == 1  # only the one processed


async def test_assign_session_id_names_the_session_and_routes_by_it(
    http: aiohttp.ClientSession, lemonslice: LemonSliceEmulator
) -> None:
    odd = "a/b?c=d&..#e"
    lemonslice.inject("create", AssignSessionId(odd))
    assert await ls_create(http, lemonslice) == (201, {"session_id": odd})
    escaped = quote(odd, safe="")
    async with http.get(
        URL(f"{lemonslice.sessions_url}/{escaped}", encoded=True),
        headers=ls_headers(),
    ) as r:
        assert (r.status, await r.json()) == (200, {"session_status": "ACTIVE"})


async def test_a_session_records_when_it_stopped_billing(
    http: aiohttp.ClientSession, lemonslice: LemonSliceEmulator
) -> None:
    async with http.post(lemonslice.sessions_url, headers=ls_headers(), json=ls_body()) as reply:
        session_id = (await reply.json())["session_id"]
    session = lemonslice.session(session_id)
    assert session.ended_at is None
    await lemonslice.end_session(session_id, "TIMED_OUT")
    assert session.ended_at is not None and not session.active


async def test_delay_drops_the_request_if_the_client_left(
    http: aiohttp.ClientSession, lemonslice: LemonSliceEmulator
) -> None:
    lemonslice.inject("create", Delay(0.5))
    with pytest.raises(TimeoutError):
        async with http.post(
            lemonslice.sessions_url,
            headers=ls_headers(),
            json=ls_body(),
            timeout=aiohttp.ClientTimeout(total=0.1),
        ):
            pass
    [record] = lemonslice.requests
    async with asyncio.timeout(BOUND):
        await lemonslice.wait_until(lambda: record.dropped is not None)
    assert record.dropped == "client went away during delay"
    assert lemonslice.sessions == ()


# -- avatar launcher ----------------------------------------------------------------------------


async def test_launcher_runs_in_background_and_terminate_closes_the_avatar(
    http: aiohttp.ClientSession,
) -> None:
    launcher = Launcher()
    async with LemonSliceEmulator(LS_KEY, avatar_launcher=launcher) as emulator:
        status, created = await ls_create(http, emulator, ls_body(audio_sample_rate=22050))
        assert status == 201  # answered while the avatar has not joined yet
        async with asyncio.timeout(BOUND):
            await launcher.called.wait()
        [launch] = launcher.launches
        assert launch == AvatarLaunch(
            provider="lemonslice",
            session_id=created["session_id"],
            livekit_url=LIVEKIT_URL,
            livekit_token=LIVEKIT_TOKEN,
            sample_rate=22050,
        )
        assert LIVEKIT_TOKEN not in repr(launch)
        session = emulator.session(created["session_id"])
        assert emulator.session(created["session_id"]).status == "QUEUED"

        launcher.gate.set()
        async with asyncio.timeout(BOUND):
            await emulator.settle_launches()
        assert session.status == "ACTIVE" and session.avatar_launched
        [avatar] = launcher.avatars
        assert not avatar.closed.is_set()

        async with http.post(
            f"{emulator.sessions_url}/{session.session_id}/control",
            headers=ls_headers(),
            json={"event": "terminate"},
        ) as r:
            assert await r.json() == {"success": True}
        assert avatar.closed.is_set() and session.avatar_closed
        assert emulator.session(session.session_id).status == "COMPLETED"


async def test_close_cancels_pending_launches_and_closes_avatars(
    http: aiohttp.ClientSession,
) -> None:
    launcher = Launcher()
    emulator = AnamEmulator(ANAM_KEY, avatar_launcher=launcher)
    await emulator.start()

    async def start_session() -> None:
        token = await anam_token(http, emulator)
        async with http.post(emulator.url + "/v1/engine/session", headers=bearer(token), json={}):
            pass

    launcher.gate.set()
    await start_session()
    async with asyncio.timeout(BOUND):
        await emulator.settle_launches()
    launcher.gate = asyncio.Event()  # the second avatar never finishes joining
    await start_session()
    async with asyncio.timeout(BOUND):
        await emulator.wait_until(lambda: len(launcher.launches) == 2)
    first, second = emulator.sessions
    assert first.status == "ACTIVE" and second.status == "QUEUED"

    await emulator.aclose()
    assert launcher.avatars[0].closed.is_set() and first.avatar_closed
    assert len(launcher.avatars) == 1 and not second.avatar_launched
    assert len(emulator.active_sessions) == 2  # close does not pretend the provider ended them


async def test_failed_launch_marks_the_session_failed(http: aiohttp.ClientSession) -> None:
    launcher = Launcher(fail=True)
    launcher.gate.set()
    async with LemonSliceEmulator(LS_KEY, avatar_launcher=launcher) as emulator:
        await ls_create(http, emulator)
        async with asyncio.timeout(BOUND):
            await emulator.settle_launches()
        [session] = emulator.sessions
        assert session.status == "FAILED" and isinstance(session.avatar_error, RuntimeError)
        assert emulator.active_sessions == ()


# -- lifecycle and hygiene ----------------------------------------------------------------------


async def test_close_leaves_no_tasks_or_listening_socket(http: aiohttp.ClientSession) -> None:
    before = asyncio.all_tasks()
    emulator = LemonSliceEmulator(LS_KEY, avatar_launcher=Launcher())
    await emulator.start()
    emulator.inject("create", SucceedSlow(), Hang())
    held = [asyncio.create_task(ls_create(http, emulator)) for _ in range(2)]
    async with asyncio.timeout(BOUND):
        await emulator.wait_until(lambda: sum(q.is_json for q in emulator.requests) == 2)
    port = int(emulator.url.rsplit(":", 1)[1])

    await emulator.aclose()
    results = await asyncio.gather(*held, return_exceptions=True)
    assert all(isinstance(r, aiohttp.ServerDisconnectedError) for r in results)
    assert running_tasks_from(emulators, aiohttp, since=before) == []
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass
    await emulator.aclose()  # idempotent


async def test_secrets_stay_out_of_reprs(
    http: aiohttp.ClientSession, lemonslice: LemonSliceEmulator
) -> None:
    await ls_create(http, lemonslice)
    texts = [repr(lemonslice.requests[0]), repr(lemonslice.sessions[0])]
    assert all(LS_KEY not in t and LIVEKIT_TOKEN not in t for t in texts)


async def test_an_avatar_leaving_the_room_ends_its_session(http: aiohttp.ClientSession) -> None:
    launcher = Launcher()
    launcher.gate.set()
    async with AnamEmulator(ANAM_KEY, avatar_launcher=launcher) as emulator:
        token = await anam_token(http, emulator)
        async with http.post(emulator.url + "/v1/engine/session", headers=bearer(token), json={}):
            pass
        async with asyncio.timeout(BOUND):
            await emulator.settle_launches()
        assert len(emulator.active_sessions) == 1
        launcher.launches[0].avatar_left()
        assert not emulator.active_sessions
        assert emulator.sessions[0].status == "COMPLETED"
