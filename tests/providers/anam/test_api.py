"""AnamAPI against a strict emulator: the seed's two-step flow, the direct one-call flow, and every
failure cause."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import pytest

from providers.anam.api import (
    AnamAPI,
    DirectorNotes,
    PersonaConfig,
    SessionFlow,
    SessionOptions,
    is_hard_limit,
    read_error_text,
)
from providers.errors import (
    AuthenticationError,
    BadRequestError,
    PaymentRequiredError,
    ProviderConnectionError,
    ProviderProtocolError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    QuotaExceededError,
)
from providers.retry import RetryPolicy
from tests.providers.conftest import (
    ANAM_KEY,
    FAST_POLICY,
    ROUND_TRIP_HEADROOM,
    avatar_token,
    chosen_delays,
    provider_http,
)
from tests.support.emulators import (
    AnamEmulator,
    CloseConnection,
    Hang,
    MalformedJson,
    MissingSuccessField,
    ProcessThenFail,
    StatusFault,
)
from tests.support.emulators.anam import (
    concurrent_session_limit,
    rate_limited,
    spend_cap_reached,
)

PERSONA = PersonaConfig(name="Cara", avatar_id="avatar-123")


def client(
    session: aiohttp.ClientSession,
    emulator: AnamEmulator,
    policy: RetryPolicy = FAST_POLICY,
    api_url: str | None = None,
    flow: SessionFlow = "two_step",
) -> AnamAPI:
    http = provider_http(
        session, "anam", policy, read_error_text=read_error_text, is_quota_exceeded=is_hard_limit
    )
    return AnamAPI(http, api_key=ANAM_KEY, api_url=api_url or emulator.url, flow=flow)


async def start(anam: AnamAPI, persona: PersonaConfig = PERSONA) -> str:
    token = await anam.create_session_token(
        persona, livekit_url="wss://example.livekit.cloud", livekit_token=avatar_token()
    )
    return (await anam.start_engine_session(token)).session_id


async def test_two_step_flow_matches_the_seed_contract(
    http_session: aiohttp.ClientSession, anam_emulator: AnamEmulator
) -> None:
    livekit_token = avatar_token()
    anam = client(http_session, anam_emulator)
    session_token = await anam.create_session_token(
        PersonaConfig(name="Cara", avatar_id="avatar-123", avatar_model="cara-3"),
        livekit_url="wss://example.livekit.cloud",
        livekit_token=livekit_token,
    )
    engine = await anam.start_engine_session(session_token)

    token_request, engine_request = anam_emulator.requests
    assert (token_request.method, token_request.path) == ("POST", "/v1/auth/session-token")
    assert token_request.headers["Authorization"] == f"Bearer {ANAM_KEY}"
    assert token_request.headers["Content-Type"].startswith("application/json")
    assert token_request.json == {
        "personaConfig": {
            "type": "ephemeral",
            "name": "Cara",
            "avatarId": "avatar-123",
            "llmId": "CUSTOMER_CLIENT_V1",
            "avatarModel": "cara-3",
        },
        "environment": {"livekitUrl": "wss://example.livekit.cloud", "livekitToken": livekit_token},
    }
    assert (engine_request.method, engine_request.path) == ("POST", "/v1/engine/session")
    assert engine_request.headers["Authorization"] == f"Bearer {session_token}"
    assert engine_request.json == {}
    assert [s.session_id for s in anam_emulator.active_sessions] == [engine.session_id]
    assert engine.engine_host


@pytest.mark.parametrize("suffix", ["", "/", "//"])
async def test_urls_are_joined_whatever_the_slashes(
    http_session: aiohttp.ClientSession, anam_emulator: AnamEmulator, suffix: str
) -> None:
    await start(client(http_session, anam_emulator, api_url=anam_emulator.url + suffix))
    assert [r.path for r in anam_emulator.requests] == [
        "/v1/auth/session-token",
        "/v1/engine/session",
    ]


@pytest.mark.parametrize("route", ["session_token", "engine_session"])
@pytest.mark.parametrize(
    "fault", [MissingSuccessField(), MissingSuccessField(empty=True), MalformedJson()]
)
async def test_a_missing_token_or_session_id_is_a_protocol_error(
    http_session: aiohttp.ClientSession,
    anam_emulator: AnamEmulator,
    route: str,
    fault: MissingSuccessField | MalformedJson,
) -> None:
    anam_emulator.inject(route, fault)
    with pytest.raises(ProviderProtocolError):
        await start(client(http_session, anam_emulator))
    assert len(anam_emulator.requests_for(route)) == 1  # never retried


@pytest.mark.parametrize("fault", [concurrent_session_limit(), spend_cap_reached()])
async def test_hard_limits_are_not_retried(
    http_session: aiohttp.ClientSession, anam_emulator: AnamEmulator, fault: StatusFault
) -> None:
    anam_emulator.inject("engine_session", fault)
    with pytest.raises(QuotaExceededError) as caught:
        await start(client(http_session, anam_emulator))
    assert caught.value.status_code == 429
    assert len(anam_emulator.requests_for("engine_session")) == 1


async def test_a_plain_rate_limit_is_retried_after_retry_after(
    http_session: aiohttp.ClientSession,
    anam_emulator: AnamEmulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    anam_emulator.inject("session_token", rate_limited(1))
    with caplog.at_level(logging.WARNING):
        await start(client(http_session, anam_emulator))
    first, second = anam_emulator.requests_for("session_token")
    assert chosen_delays(caplog) == [1.0]
    assert 1.0 <= second.arrived_at - first.arrived_at <= 1.0 + ROUND_TRIP_HEADROOM


async def test_busy_503_is_retried_on_both_steps(
    http_session: aiohttp.ClientSession, anam_emulator: AnamEmulator
) -> None:
    anam_emulator.inject("session_token", StatusFault(503, "busy"))
    anam_emulator.inject("engine_session", StatusFault(503, "busy"), StatusFault(503, "busy"))
    await start(client(http_session, anam_emulator))
    assert [r.status for r in anam_emulator.requests] == [503, 200, 503, 503, 200]


async def test_persistent_503_gives_the_providers_text(
    http_session: aiohttp.ClientSession, anam_emulator: AnamEmulator
) -> None:
    anam_emulator.inject("session_token", *[StatusFault(503, "engine pool exhausted")] * 4)
    with pytest.raises(ProviderUnavailableError) as caught:
        await start(client(http_session, anam_emulator))
    assert "engine pool exhausted" in (caught.value.provider_message or "")


@pytest.mark.parametrize(
    ("status", "error_type"), [(401, AuthenticationError), (402, PaymentRequiredError)]
)
async def test_key_and_plan_errors_are_final(
    http_session: aiohttp.ClientSession,
    anam_emulator: AnamEmulator,
    status: int,
    error_type: type[Exception],
) -> None:
    anam_emulator.inject("session_token", StatusFault(status))
    with pytest.raises(error_type):
        await start(client(http_session, anam_emulator))
    assert len(anam_emulator.requests) == 1


async def test_a_provider_that_never_answers_ends_at_the_deadline(
    http_session: aiohttp.ClientSession, anam_emulator: AnamEmulator
) -> None:
    """The seed client only had a connect timeout: this waited forever. A session token is
    harmless to ask for again, so a silent token step is retried until the attempts run out."""
    policy = RetryPolicy(max_retries=2, base_delay=0.05, attempt_timeout=0.5, call_deadline=5)
    anam_emulator.inject("session_token", Hang(), Hang(), Hang())
    started = time.monotonic()
    with pytest.raises(ProviderTimeoutError):
        await start(client(http_session, anam_emulator, policy))
    elapsed = time.monotonic() - started
    # three attempts of 0.5 s plus two short backoffs: over when the attempts ran out, not at
    # the deadline (the margin is a loaded machine's)
    assert 1.5 <= elapsed < policy.call_deadline - 0.5, elapsed
    assert len(anam_emulator.requests_for("session_token")) == 3


async def test_an_engine_session_that_may_have_started_is_not_asked_for_twice(
    http_session: aiohttp.ClientSession, anam_emulator: AnamEmulator
) -> None:
    """No answer to the billed step: a second one would be a second session."""
    policy = RetryPolicy(max_retries=2, base_delay=0.05, attempt_timeout=0.5, call_deadline=5)
    anam_emulator.inject("engine_session", Hang())
    anam = client(http_session, anam_emulator, policy)
    with pytest.raises(ProviderTimeoutError):
        await start(anam)
    assert len(anam_emulator.requests_for("engine_session")) == 1
    assert [o.operation for o in anam._http.possible_orphans] == ["start engine session"]


@pytest.mark.parametrize("flow", ["two_step", "direct"])
@pytest.mark.parametrize("status", [500, 502, 504])
async def test_an_engine_session_whose_outcome_an_error_status_leaves_unknown_is_never_repeated(
    http_session: aiohttp.ClientSession,
    anam_emulator: AnamEmulator,
    flow: SessionFlow,
    status: int,
) -> None:
    """The engine session was made, then a 500/502/504 came back: asking again would bill twice."""
    anam_emulator.inject("engine_session", ProcessThenFail(status))
    anam = client(http_session, anam_emulator, flow=flow)
    with pytest.raises(ProviderUnavailableError) as caught:
        await anam.start_session(
            PERSONA, livekit_url="wss://example.livekit.cloud", livekit_token=avatar_token()
        )
    assert caught.value.may_have_reached
    assert len(anam_emulator.requests_for("engine_session")) == 1
    assert len(anam_emulator.sessions) == 1
    assert [o.operation for o in anam._http.possible_orphans] == ["start engine session"]


async def test_a_session_token_answered_502_is_asked_again(
    http_session: aiohttp.ClientSession, anam_emulator: AnamEmulator
) -> None:
    """A session token bills nothing: its 5xx are retried as before."""
    anam_emulator.inject("session_token", ProcessThenFail(502), StatusFault(500))
    anam = client(http_session, anam_emulator)
    await start(anam)
    assert [r.status for r in anam_emulator.requests_for("session_token")] == [502, 500, 200]
    assert len(anam_emulator.sessions) == 1 and anam._http.possible_orphans == []


def test_reprs_hold_no_key(http_session: aiohttp.ClientSession) -> None:
    anam = AnamAPI(provider_http(http_session, "anam"), api_key=ANAM_KEY)
    assert ANAM_KEY not in repr(anam)


# -- the direct flow: one call with the API key -------------------------------------------------


async def start_direct(anam: AnamAPI, persona: PersonaConfig = PERSONA) -> str:
    engine = await anam.start_session_direct(
        persona, livekit_url="wss://example.livekit.cloud", livekit_token=avatar_token()
    )
    return engine.session_id


async def test_direct_flow_is_one_call_with_the_api_key_and_the_persona_body(
    http_session: aiohttp.ClientSession, anam_emulator: AnamEmulator
) -> None:
    """The wire shape of livekit-plugins-anam 1.8.9's start_session: no session token at all."""
    livekit_token = avatar_token()
    anam = client(http_session, anam_emulator)
    engine = await anam.start_session_direct(
        PersonaConfig(name="Cara", avatar_id="avatar-123", avatar_model="cara-3"),
        livekit_url="wss://example.livekit.cloud",
        livekit_token=livekit_token,
    )

    [request] = anam_emulator.requests
    assert (request.method, request.path) == ("POST", "/v1/engine/session")
    assert request.headers["Authorization"] == f"Bearer {ANAM_KEY}"
    assert request.headers["Content-Type"].startswith("application/json")
    assert request.json == {
        "personaConfig": {
            "type": "ephemeral",
            "name": "Cara",
            "avatarId": "avatar-123",
            "llmId": "CUSTOMER_CLIENT_V1",
            "avatarModel": "cara-3",
        },
        "environment": {"livekitUrl": "wss://example.livekit.cloud", "livekitToken": livekit_token},
    }
    assert anam_emulator.issued_token_count == 0
    [session] = anam_emulator.active_sessions
    assert session.session_id == engine.session_id
    assert session.launch.livekit_token == livekit_token
    assert engine.engine_host


@pytest.mark.parametrize(
    ("flow", "paths"),
    [
        ("direct", ["/v1/engine/session"]),
        ("two_step", ["/v1/auth/session-token", "/v1/engine/session"]),
    ],
)
async def test_start_session_follows_the_clients_flow(
    http_session: aiohttp.ClientSession,
    anam_emulator: AnamEmulator,
    flow: SessionFlow,
    paths: list[str],
) -> None:
    anam = client(http_session, anam_emulator, flow=flow)
    engine = await anam.start_session(
        PERSONA, livekit_url="wss://example.livekit.cloud", livekit_token=avatar_token()
    )
    assert [r.path for r in anam_emulator.requests] == paths
    assert [s.session_id for s in anam_emulator.active_sessions] == [engine.session_id]
    assert flow in repr(anam) and ANAM_KEY not in repr(anam)


async def test_direct_flow_retries_a_busy_engine(
    http_session: aiohttp.ClientSession, anam_emulator: AnamEmulator
) -> None:
    anam_emulator.inject("engine_session", StatusFault(503, "busy"), rate_limited(0))
    await start_direct(client(http_session, anam_emulator))
    assert [r.status for r in anam_emulator.requests] == [503, 429, 200]
    assert len(anam_emulator.active_sessions) == 1


@pytest.mark.parametrize("fault", [concurrent_session_limit(), spend_cap_reached()])
async def test_direct_flow_does_not_retry_hard_limits(
    http_session: aiohttp.ClientSession, anam_emulator: AnamEmulator, fault: StatusFault
) -> None:
    anam_emulator.inject("engine_session", fault)
    with pytest.raises(QuotaExceededError):
        await start_direct(client(http_session, anam_emulator))
    assert len(anam_emulator.requests) == 1


@pytest.mark.parametrize("fault", [MissingSuccessField(), MalformedJson()])
async def test_direct_flow_never_retries_a_bad_reply_to_a_create(
    http_session: aiohttp.ClientSession,
    anam_emulator: AnamEmulator,
    fault: MissingSuccessField | MalformedJson,
) -> None:
    """The engine session exists (and bills) although its id never reached us: one call, one orphan."""
    anam = client(http_session, anam_emulator)
    anam_emulator.inject("engine_session", fault)
    with pytest.raises(ProviderProtocolError):
        await start_direct(anam)
    assert len(anam_emulator.requests) == 1
    assert len(anam_emulator.sessions) == 1
    assert [o.operation for o in anam._http.possible_orphans] == ["start engine session"]


async def test_direct_flow_does_not_retry_a_create_that_may_have_started_a_session(
    http_session: aiohttp.ClientSession, anam_emulator: AnamEmulator
) -> None:
    """The connection dropped after the request was read: a second create could be a second
    billed session, so it is recorded as a possible orphan and not sent again."""
    anam = client(http_session, anam_emulator)
    anam_emulator.inject("engine_session", CloseConnection())
    with pytest.raises(ProviderConnectionError):
        await start_direct(anam)
    assert len(anam_emulator.requests_for("engine_session")) == 1
    assert [o.attempt for o in anam._http.possible_orphans] == [1]


async def test_direct_flow_refuses_a_wrong_key_once(
    http_session: aiohttp.ClientSession, anam_emulator: AnamEmulator
) -> None:
    http = provider_http(
        http_session, "anam", read_error_text=read_error_text, is_quota_exceeded=is_hard_limit
    )
    anam = AnamAPI(http, api_key="not-the-key", api_url=anam_emulator.url)
    with pytest.raises(AuthenticationError) as caught:
        await start_direct(anam)
    assert len(anam_emulator.requests) == 1
    assert "not-the-key" not in str(caught.value)


STYLED = PersonaConfig(
    name="Cara",
    avatar_id="avatar-123",
    director_notes=DirectorNotes(expressivity=0.8, preset_style="warm"),
    session_options=SessionOptions(
        video_width=720, video_height=1280, show_ai_avatar_disclosure=True
    ),
)


@pytest.mark.parametrize("flow", ["direct", "two_step"])
async def test_director_notes_and_session_options_go_with_the_persona(
    http_session: aiohttp.ClientSession, anam_emulator: AnamEmulator, flow: SessionFlow
) -> None:
    anam = client(http_session, anam_emulator, flow=flow)
    await anam.start_session(
        STYLED, livekit_url="wss://example.livekit.cloud", livekit_token=avatar_token()
    )

    persona_request = anam_emulator.requests[0]
    assert persona_request.json["personaConfig"]["directorNotes"] == {
        "expressivity": 0.8,
        "presetStyle": "warm",
    }
    assert persona_request.json["sessionOptions"] == {
        "videoWidth": 720,
        "videoHeight": 1280,
        "showAIAvatarDisclosure": True,
    }
    assert [r.status for r in anam_emulator.requests] == [200] * len(anam_emulator.requests)
    assert len(anam_emulator.active_sessions) == 1


async def test_unset_options_are_left_out_for_the_models_defaults(
    http_session: aiohttp.ClientSession, anam_emulator: AnamEmulator
) -> None:
    persona = PersonaConfig(
        name="Cara",
        avatar_id="avatar-123",
        director_notes=DirectorNotes(custom_style_prompt="calm and slow"),
        session_options=SessionOptions(show_ai_avatar_disclosure=False),
    )
    await start_direct(client(http_session, anam_emulator), persona)

    [request] = anam_emulator.requests
    assert request.json["personaConfig"]["directorNotes"] == {"customStylePrompt": "calm and slow"}
    assert request.json["sessionOptions"] == {"showAIAvatarDisclosure": False}

    empty = PersonaConfig(
        name="Cara",
        avatar_id="avatar-123",
        director_notes=DirectorNotes(),
        session_options=SessionOptions(),
    )
    await start_direct(client(http_session, anam_emulator), empty)
    last = anam_emulator.requests[-1]
    assert "directorNotes" not in last.json["personaConfig"]
    assert "sessionOptions" not in last.json


async def test_the_session_length_cap_is_sent_in_the_persona_and_enforced(
    http_session: aiohttp.ClientSession, anam_emulator: AnamEmulator
) -> None:
    persona = PersonaConfig(name="Cara", avatar_id="avatar-123", max_session_length_seconds=1)
    await start_direct(client(http_session, anam_emulator), persona)

    [request] = anam_emulator.requests
    assert request.json["personaConfig"]["maxSessionLengthSeconds"] == 1
    [session] = anam_emulator.sessions
    async with asyncio.timeout(10):
        await anam_emulator.wait_until(lambda: session.status == "TIMED_OUT")

    await start_direct(
        client(http_session, anam_emulator), PersonaConfig(name="Cara", avatar_id="avatar-123")
    )
    assert "maxSessionLengthSeconds" not in anam_emulator.requests[-1].json["personaConfig"]


async def test_the_emulator_refuses_two_styles_and_the_client_does_not_retry(
    http_session: aiohttp.ClientSession, anam_emulator: AnamEmulator
) -> None:
    """Config validation keeps this from the wire; if it got there, Anam's 400 is final."""
    persona = PersonaConfig(
        name="Cara",
        avatar_id="avatar-123",
        director_notes=DirectorNotes(preset_style="warm", custom_style_prompt="calm"),
    )
    with pytest.raises(BadRequestError, match="mutually exclusive"):
        await start_direct(client(http_session, anam_emulator), persona)
    assert [r.status for r in anam_emulator.requests] == [400]
    assert anam_emulator.active_sessions == ()
