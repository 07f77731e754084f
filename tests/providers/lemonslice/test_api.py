"""LemonSliceAPI against a strict emulator: the seed's wire contract, and every failure cause."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Literal

import aiohttp
import pytest
from livekit import api

from providers.errors import (
    AuthenticationError,
    BadRequestError,
    PaymentRequiredError,
    PermissionDeniedError,
    ProviderConnectionError,
    ProviderProtocolError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RateLimitedError,
)
from providers.lemonslice.api import LemonSliceAgent, LemonSliceAPI, read_error_text
from providers.retry import RetryPolicy
from tests.providers.conftest import (
    FAST_POLICY,
    LEMONSLICE_KEY,
    LIVEKIT_API_KEY,
    LIVEKIT_API_SECRET,
    ROUND_TRIP_HEADROOM,
    avatar_token,
    chosen_delays,
    gaps,
    provider_http,
)
from tests.support.emulators import (
    AssignSessionId,
    CloseConnection,
    Hang,
    LemonSliceEmulator,
    LoseReply,
    MalformedJson,
    MissingSuccessField,
    ProcessThenFail,
    StatusFault,
    SucceedSlow,
)

AGENT = LemonSliceAgent(agent_id="agent-7", agent_prompt="smile", idle_timeout=120)


def client(
    session: aiohttp.ClientSession,
    emulator: LemonSliceEmulator,
    policy: RetryPolicy = FAST_POLICY,
    key: str = LEMONSLICE_KEY,
) -> LemonSliceAPI:
    http = provider_http(session, "lemonslice", policy, read_error_text=read_error_text)
    return LemonSliceAPI(http, api_key=key, api_url=emulator.sessions_url)


async def start(lemonslice: LemonSliceAPI, agent: LemonSliceAgent = AGENT) -> str:
    return await lemonslice.start_agent_session(
        agent,
        livekit_url="wss://example.livekit.cloud",
        livekit_token=avatar_token(),
        livekit_session_id="RM_abc123",
    )


async def test_create_matches_the_seed_contract_field_by_field(
    http_session: aiohttp.ClientSession, lemonslice_emulator: LemonSliceEmulator
) -> None:
    agent = LemonSliceAgent(
        agent_id="agent-7",
        agent_prompt="smile",
        agent_idle_prompt="look around",
        idle_timeout=120,
        extra_payload={"model": "lite"},
    )
    token = avatar_token()
    session_id = await client(http_session, lemonslice_emulator).start_agent_session(
        agent,
        livekit_url="wss://example.livekit.cloud",
        livekit_token=token,
        livekit_session_id="RM_abc123",
    )

    (request,) = lemonslice_emulator.requests
    assert (request.method, request.path) == ("POST", "/api/liveai/sessions")
    assert request.headers["X-API-Key"] == LEMONSLICE_KEY
    assert request.headers["Content-Type"].startswith("application/json")
    assert request.json == {
        "transport_type": "livekit",
        "properties": {
            "livekit_url": "wss://example.livekit.cloud",
            "livekit_token": token,
            "livekit_session_id": "RM_abc123",
        },
        "agent_id": "agent-7",
        "agent_prompt": "smile",
        "agent_idle_prompt": "look around",
        "idle_timeout": 120,
        "model": "lite",
    }
    assert [s.session_id for s in lemonslice_emulator.active_sessions] == [session_id]


async def test_image_url_is_sent_instead_of_agent_id(
    http_session: aiohttp.ClientSession, lemonslice_emulator: LemonSliceEmulator
) -> None:
    await start(
        client(http_session, lemonslice_emulator),
        LemonSliceAgent(agent_image_url="https://cdn.example.com/face.png"),
    )
    body = lemonslice_emulator.requests[0].json
    assert body["agent_image_url"] == "https://cdn.example.com/face.png"
    assert "agent_id" not in body and "agent_prompt" not in body


def test_agent_needs_exactly_one_of_id_and_image() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        LemonSliceAgent(agent_id="a", agent_image_url="https://cdn.example.com/face.png")
    with pytest.raises(ValueError, match="exactly one"):
        LemonSliceAgent()


async def test_the_token_that_reaches_the_provider_verifies(
    http_session: aiohttp.ClientSession, lemonslice_emulator: LemonSliceEmulator
) -> None:
    await start(client(http_session, lemonslice_emulator))
    sent = lemonslice_emulator.requests[0].json["properties"]["livekit_token"]
    claims = api.TokenVerifier(LIVEKIT_API_KEY, LIVEKIT_API_SECRET).verify(sent)
    assert claims.identity == "test-avatar"
    assert claims.kind == "agent"
    assert claims.attributes == {"lk.publish_on_behalf": "agent-AJ_123"}
    assert claims.video is not None and claims.video.room == "room-1"


async def test_terminate_ends_the_session(
    http_session: aiohttp.ClientSession, lemonslice_emulator: LemonSliceEmulator
) -> None:
    lemonslice = client(http_session, lemonslice_emulator)
    session_id = await start(lemonslice)
    await lemonslice.terminate(session_id)

    control = lemonslice_emulator.requests_for("control")[0]
    assert control.path == f"/api/liveai/sessions/{session_id}/control"
    assert control.json == {"event": "terminate"}
    assert control.headers["X-API-Key"] == LEMONSLICE_KEY
    assert lemonslice_emulator.active_sessions == ()
    assert await lemonslice.session_status(session_id) == "COMPLETED"


@pytest.mark.parametrize("session_id", ["a/b", "x?y=z", "../../other", "a/../b", "%2F#frag"])
async def test_a_session_id_is_one_escaped_path_segment(
    http_session: aiohttp.ClientSession, lemonslice_emulator: LemonSliceEmulator, session_id: str
) -> None:
    """The id is the provider's text: it must name the session, never another path or a query."""
    lemonslice_emulator.inject("create", AssignSessionId(session_id))
    lemonslice = client(http_session, lemonslice_emulator)
    assert await start(lemonslice) == session_id
    assert await lemonslice.session_status(session_id) == "ACTIVE"
    await lemonslice.terminate(session_id)
    [control] = lemonslice_emulator.requests_for("control")
    assert control.json == {"event": "terminate"}
    assert lemonslice_emulator.session(session_id).terminated


@pytest.mark.parametrize("session_id", ["..", ".", "a b", "line\nbreak", "x" * 300])
async def test_a_session_id_that_cannot_name_a_session_is_a_possible_orphan(
    http_session: aiohttp.ClientSession, lemonslice_emulator: LemonSliceEmulator, session_id: str
) -> None:
    lemonslice_emulator.inject("create", AssignSessionId(session_id))
    lemonslice = client(http_session, lemonslice_emulator)
    with pytest.raises(ProviderProtocolError) as caught:
        await start(lemonslice)
    assert caught.value.may_have_reached and "session_id" in caught.value.message
    assert len(lemonslice_emulator.requests_for("create")) == 1
    assert [o.operation for o in lemonslice._http.possible_orphans] == ["create session"]


async def test_a_terminate_answered_404_means_the_session_had_already_ended(
    http_session: aiohttp.ClientSession, lemonslice_emulator: LemonSliceEmulator
) -> None:
    """The provider ended it first (idle timeout, the avatar left): nothing is left running."""
    lemonslice = client(http_session, lemonslice_emulator)
    session_id = await start(lemonslice)
    lemonslice_emulator.inject("control", StatusFault(404, "session not found"))
    await lemonslice.terminate(session_id)
    assert len(lemonslice_emulator.requests_for("control")) == 1


async def test_a_busy_provider_is_retried_with_growing_jittered_backoff(
    http_session: aiohttp.ClientSession,
    lemonslice_emulator: LemonSliceEmulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    lemonslice_emulator.inject("create", *[StatusFault(503)] * 3)
    with caplog.at_level(logging.WARNING):
        await start(client(http_session, lemonslice_emulator))

    creates = lemonslice_emulator.requests_for("create")
    assert [r.status for r in creates] == [503, 503, 503, 201]
    chosen = chosen_delays(caplog)
    waits = gaps([r.arrived_at for r in creates])
    assert len(chosen) == len(waits) == 3
    # retry n waits within [cap/2, cap], cap = min(0.4, 0.1 * 2**n), and waits that long
    for n, (delay, waited) in enumerate(zip(chosen, waits, strict=True)):
        cap = min(FAST_POLICY.max_delay, FAST_POLICY.base_delay * 2**n)
        assert cap / 2 <= delay <= cap, (n, delay)
        assert delay - 0.005 <= waited <= delay + ROUND_TRIP_HEADROOM, (n, delay, waited)
    assert len(lemonslice_emulator.sessions) == 1


async def test_a_terminate_answered_500_502_or_504_is_asked_again(
    http_session: aiohttp.ClientSession, lemonslice_emulator: LemonSliceEmulator
) -> None:
    """Ending a session twice is harmless: only a create is never repeated on an unknown outcome."""
    lemonslice = client(http_session, lemonslice_emulator)
    session_id = await start(lemonslice)
    lemonslice_emulator.inject("control", StatusFault(500), StatusFault(502), StatusFault(504))
    await lemonslice.terminate(session_id)
    assert [r.status for r in lemonslice_emulator.requests_for("control")] == [500, 502, 504, 200]
    assert lemonslice_emulator.active_sessions == ()
    assert lemonslice._http.possible_orphans == []


async def test_retry_after_is_honoured(
    http_session: aiohttp.ClientSession,
    lemonslice_emulator: LemonSliceEmulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    lemonslice_emulator.inject("create", StatusFault(429, "slow down", retry_after=1))
    with caplog.at_level(logging.WARNING):
        await start(client(http_session, lemonslice_emulator))
    first, second = lemonslice_emulator.requests_for("create")
    # without Retry-After the first retry would have come after at most 0.1 s
    assert chosen_delays(caplog) == [1.0]
    assert 1.0 <= second.arrived_at - first.arrived_at <= 1.0 + ROUND_TRIP_HEADROOM


@pytest.mark.parametrize("retry_after", ["0", "-3", "nan", "inf", "Thu, 01 Jan 1970 00:00:00 GMT"])
async def test_a_retry_after_that_says_now_does_not_remove_the_backoff(
    http_session: aiohttp.ClientSession, lemonslice_emulator: LemonSliceEmulator, retry_after: str
) -> None:
    lemonslice_emulator.inject("create", *[StatusFault(503, "busy", retry_after=retry_after)] * 2)
    await start(client(http_session, lemonslice_emulator))
    waits = gaps([r.arrived_at for r in lemonslice_emulator.requests_for("create")])
    for n, waited in enumerate(waits):  # the same floor as with no Retry-After at all
        cap = min(FAST_POLICY.max_delay, FAST_POLICY.base_delay * 2**n)
        assert waited >= cap / 2, (retry_after, n, waited)


async def test_retry_after_beyond_the_deadline_fails_at_once_with_the_providers_answer(
    http_session: aiohttp.ClientSession, lemonslice_emulator: LemonSliceEmulator
) -> None:
    lemonslice_emulator.inject("create", StatusFault(429, "come back later", retry_after=60))
    started = time.monotonic()
    with pytest.raises(RateLimitedError) as caught:
        await start(client(http_session, lemonslice_emulator))
    assert time.monotonic() - started < FAST_POLICY.call_deadline / 2  # not waiting it out
    assert caught.value.retry_after == 60
    assert caught.value.provider_message == "come back later"
    assert len(lemonslice_emulator.requests) == 1


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (402, PaymentRequiredError),
        (403, PermissionDeniedError),
        (404, BadRequestError),
        (499, BadRequestError),
        (302, BadRequestError),
        (307, BadRequestError),
    ],
)
async def test_client_errors_are_not_retried(
    http_session: aiohttp.ClientSession,
    lemonslice_emulator: LemonSliceEmulator,
    status: int,
    error_type: type[Exception],
) -> None:
    lemonslice_emulator.inject("create", StatusFault(status, f"refused with {status}"))
    with pytest.raises(error_type) as caught:
        await start(client(http_session, lemonslice_emulator))
    assert len(lemonslice_emulator.requests) == 1
    error = caught.value
    assert getattr(error, "status_code", None) == status
    assert getattr(error, "provider_message", None) == f"refused with {status}"
    assert getattr(error, "retryable", None) is False


async def test_a_wrong_key_is_an_authentication_error_from_the_provider(
    http_session: aiohttp.ClientSession, lemonslice_emulator: LemonSliceEmulator
) -> None:
    with pytest.raises(AuthenticationError) as caught:
        await start(client(http_session, lemonslice_emulator, key="ls-wrong-key-never-logged"))
    assert caught.value.provider_message == "invalid API key"
    assert "ls-wrong-key-never-logged" not in str(caught.value) + repr(caught.value)


async def test_a_key_echoed_back_by_the_provider_is_not_repeated(
    http_session: aiohttp.ClientSession, lemonslice_emulator: LemonSliceEmulator
) -> None:
    lemonslice_emulator.inject("create", StatusFault(403, f"key {LEMONSLICE_KEY} is suspended"))
    with pytest.raises(PermissionDeniedError) as caught:
        await start(client(http_session, lemonslice_emulator))
    shown = str(caught.value) + repr(caught.value) + repr(caught.value.args)
    assert LEMONSLICE_KEY not in shown
    assert caught.value.provider_message == "key *** is suspended"
    # the message is ours (it may be shown to the room): no provider text at all
    assert caught.value.args[0] == "lemonslice create session failed: 403 Forbidden"


@pytest.mark.parametrize("echo", ["text", "json"])
async def test_an_error_body_echoing_the_request_keeps_no_credential(
    http_session: aiohttp.ClientSession,
    lemonslice_emulator: LemonSliceEmulator,
    echo: Literal["text", "json"],
) -> None:
    """The request carries the API key and the avatar's join token: an echo of it must lose both."""
    lemonslice_emulator.inject("create", StatusFault(400, echo_request=echo))
    token = avatar_token()
    with pytest.raises(BadRequestError) as caught:
        await client(http_session, lemonslice_emulator).start_agent_session(
            AGENT, livekit_url="wss://example.livekit.cloud", livekit_token=token
        )
    error = caught.value
    assert error.message == "lemonslice create session failed: 400 Bad Request"
    assert error.provider_message is not None and "livekit_token" in error.provider_message
    shown = str(error) + repr(error) + repr(error.args)
    for piece in token.split("."):
        assert piece[:12] not in shown


async def test_persistent_5xx_ends_with_the_last_status_and_text(
    http_session: aiohttp.ClientSession, lemonslice_emulator: LemonSliceEmulator
) -> None:
    lemonslice_emulator.inject("create", *[StatusFault(503, "overloaded")] * 4)
    with pytest.raises(ProviderUnavailableError) as caught:
        await start(client(http_session, lemonslice_emulator))
    assert caught.value.status_code == 503
    assert caught.value.provider_message == "overloaded"
    assert len(lemonslice_emulator.requests) == FAST_POLICY.max_attempts


async def test_max_retries_zero_still_makes_one_attempt(
    http_session: aiohttp.ClientSession, lemonslice_emulator: LemonSliceEmulator
) -> None:
    policy = RetryPolicy(max_retries=0, attempt_timeout=1, call_deadline=2)
    lemonslice_emulator.inject("create", StatusFault(503))
    with pytest.raises(ProviderUnavailableError):
        await start(client(http_session, lemonslice_emulator, policy))
    assert len(lemonslice_emulator.requests) == 1


@pytest.mark.parametrize(
    "fault", [MalformedJson(), MissingSuccessField(), MissingSuccessField(empty=True)]
)
async def test_a_broken_success_reply_is_never_retried(
    http_session: aiohttp.ClientSession,
    lemonslice_emulator: LemonSliceEmulator,
    fault: MalformedJson | MissingSuccessField,
) -> None:
    """The provider did create (and bills) a session: a retry would start a duplicate."""
    lemonslice_emulator.inject("create", fault)
    lemonslice = client(http_session, lemonslice_emulator)
    with pytest.raises(ProviderProtocolError) as caught:
        await start(lemonslice)
    assert caught.value.status_code == 201
    assert len(lemonslice_emulator.requests) == 1
    assert len(lemonslice_emulator.sessions) == 1
    assert [o.operation for o in lemonslice._http.possible_orphans] == ["create session"]


async def test_a_silent_terminate_is_retried_until_the_call_deadline(
    http_session: aiohttp.ClientSession, lemonslice_emulator: LemonSliceEmulator
) -> None:
    """Terminating twice is harmless: a terminate with no answer is asked again, up to the deadline."""
    lemonslice = client(http_session, lemonslice_emulator)
    session_id = await start(lemonslice)
    policy = RetryPolicy(max_retries=10, base_delay=0.05, attempt_timeout=0.4, call_deadline=1.5)
    lemonslice_emulator.inject("control", *[Hang()] * 10)
    started = time.monotonic()
    with pytest.raises(ProviderTimeoutError):
        await client(http_session, lemonslice_emulator, policy).terminate(session_id)
    elapsed = time.monotonic() - started
    # It gives up once the next wait would end past the deadline (a wait here is at most 0.4 s),
    # and well before 11 attempts of 0.4 s would have run.
    assert policy.call_deadline - 0.4 <= elapsed <= 2 * policy.call_deadline, elapsed
    assert len(lemonslice_emulator.requests_for("control")) >= 2  # each attempt timed out, retried


@pytest.mark.parametrize(
    ("fault", "error_type"),
    [
        (SucceedSlow(seconds=5), ProviderTimeoutError),  # a timeout after the request was sent
        (LoseReply(), ProviderConnectionError),  # made, and the reply lost on the way back
        (CloseConnection(), ProviderConnectionError),  # read, then dropped: it may have been made
    ],
)
async def test_a_create_that_may_have_reached_the_provider_is_not_retried(
    http_session: aiohttp.ClientSession,
    lemonslice_emulator: LemonSliceEmulator,
    fault: SucceedSlow | LoseReply | CloseConnection,
    error_type: type[Exception],
) -> None:
    """No idempotency key, no lookup by our reference: a second create would be a second session."""
    lemonslice_emulator.inject("create", fault)
    lemonslice = client(http_session, lemonslice_emulator)
    with pytest.raises(error_type) as caught:
        await start(lemonslice)
    assert getattr(caught.value, "may_have_reached", False)
    assert len(lemonslice_emulator.requests_for("create")) == 1
    assert [o.operation for o in lemonslice._http.possible_orphans] == ["create session"]


@pytest.mark.parametrize("status", [500, 502, 504])
async def test_a_create_whose_outcome_an_error_status_leaves_unknown_is_never_repeated(
    http_session: aiohttp.ClientSession, lemonslice_emulator: LemonSliceEmulator, status: int
) -> None:
    """A gateway's 502/504, or a 500 raised after the session was made: the session may exist.
    One start, one session at most; the unknown one is counted as a possible orphan."""
    lemonslice_emulator.inject("create", ProcessThenFail(status))
    lemonslice = client(http_session, lemonslice_emulator)
    with pytest.raises(ProviderUnavailableError) as caught:
        await start(lemonslice)
    assert caught.value.may_have_reached
    assert caught.value.status_code == status
    assert len(lemonslice_emulator.requests_for("create")) == 1
    assert len(lemonslice_emulator.sessions) == 1
    assert [o.operation for o in lemonslice._http.possible_orphans] == ["create session"]


async def test_a_create_cancelled_in_flight_is_counted_as_a_possible_orphan(
    http_session: aiohttp.ClientSession, lemonslice_emulator: LemonSliceEmulator
) -> None:
    lemonslice_emulator.inject("create", SucceedSlow(seconds=5))
    lemonslice = client(http_session, lemonslice_emulator)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await start(lemonslice)
    assert [o.reason for o in lemonslice._http.possible_orphans] == ["cancelled in flight"]


async def test_what_cannot_have_created_anything_is_still_retried(
    http_session: aiohttp.ClientSession, lemonslice_emulator: LemonSliceEmulator
) -> None:
    lemonslice_emulator.inject("create", StatusFault(503), StatusFault(429, "slow down"))
    lemonslice = client(http_session, lemonslice_emulator)
    await start(lemonslice)
    assert [r.status for r in lemonslice_emulator.requests_for("create")] == [503, 429, 201]
    assert lemonslice._http.possible_orphans == []


async def test_nothing_listening_is_a_connection_error_after_every_attempt(
    http_session: aiohttp.ClientSession,
) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    http = provider_http(http_session, "lemonslice")
    lemonslice = LemonSliceAPI(
        http, api_key=LEMONSLICE_KEY, api_url=f"http://127.0.0.1:{port}/api/liveai/sessions"
    )
    with pytest.raises(ProviderConnectionError) as caught:
        await start(lemonslice)
    assert "could not connect" in str(caught.value)
    assert http.possible_orphans == []  # nothing was sent, nothing can be orphaned


def test_reprs_hold_no_key(http_session: aiohttp.ClientSession) -> None:
    lemonslice = LemonSliceAPI(
        provider_http(http_session, "lemonslice"),
        api_key=LEMONSLICE_KEY,
        api_url="https://lemonslice.com/api/liveai/sessions",
    )
    assert LEMONSLICE_KEY not in repr(lemonslice)
    assert "lemonslice.com/api/liveai/sessions" in repr(lemonslice)
