"""One provider session against the emulators: a session it started is never lost track of."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from providers.anam.api import AnamAPI, PersonaConfig, is_hard_limit
from providers.anam.api import read_error_text as anam_error_text
from providers.anam.avatar import AnamAvatarSession
from providers.lemonslice.api import LemonSliceAgent, LemonSliceAPI
from providers.lemonslice.api import read_error_text as lemonslice_error_text
from providers.lemonslice.avatar import LemonSliceAvatarSession
from providers.retry import RetryPolicy
from providers.session import AvatarOptions, ProviderStartRequest, StopOutcome
from tests.providers.conftest import ANAM_KEY, LEMONSLICE_KEY, avatar_token, provider_http
from tests.support.emulators import (
    AnamEmulator,
    Hang,
    LemonSliceEmulator,
    StatusFault,
    SucceedSlow,
)

OPTIONS = AvatarOptions(identity="test-avatar", stop_timeout=3.0)
# Attempts long enough for a slow (but answered) create.
PATIENT = RetryPolicy(max_retries=1, base_delay=0.1, attempt_timeout=5.0, call_deadline=10.0)


def request(deadline_in: float = 10.0) -> ProviderStartRequest:
    return ProviderStartRequest(
        livekit_url="wss://example.livekit.cloud",
        livekit_token=avatar_token(),
        room_name="room-1",
        room_sid="RM_1",
        deadline=asyncio.get_running_loop().time() + deadline_in,
    )


def lemonslice_session(
    http_session: aiohttp.ClientSession,
    emulator: LemonSliceEmulator,
    options: AvatarOptions = OPTIONS,
) -> LemonSliceAvatarSession:
    api = LemonSliceAPI(
        provider_http(http_session, "lemonslice", PATIENT, read_error_text=lemonslice_error_text),
        api_key=LEMONSLICE_KEY,
        api_url=emulator.sessions_url,
    )
    return LemonSliceAvatarSession(
        api=api, agent=LemonSliceAgent(agent_id="agent-7"), identity="test-avatar", options=options
    )


async def test_a_stop_during_the_create_waits_for_its_reply_and_ends_that_session(
    http_session: aiohttp.ClientSession, lemonslice_emulator: LemonSliceEmulator
) -> None:
    lemonslice_emulator.inject("create", SucceedSlow(seconds=1.0))
    session = lemonslice_session(http_session, lemonslice_emulator)
    starting = asyncio.create_task(session.start(request()))
    async with asyncio.timeout(5):
        await lemonslice_emulator.wait_until(lambda: len(lemonslice_emulator.sessions) == 1)
    starting.cancel()  # the job ends: its start is given up, the create is not

    outcome = await session.stop()
    assert outcome.session_id == lemonslice_emulator.sessions[0].session_id
    assert outcome.unended is None
    assert lemonslice_emulator.active_sessions == ()
    assert await session.stop() == outcome  # once
    assert len(lemonslice_emulator.requests_for("control")) == 1


async def test_a_stop_before_the_billed_step_abandons_the_start(
    http_session: aiohttp.ClientSession, anam_emulator: AnamEmulator
) -> None:
    api = AnamAPI(
        provider_http(
            http_session, "anam", read_error_text=anam_error_text, is_quota_exceeded=is_hard_limit
        ),
        api_key=ANAM_KEY,
        api_url=anam_emulator.url,
    )
    session = AnamAvatarSession(
        api=api, persona=PersonaConfig(name="Cara", avatar_id="a-1"), identity="x", options=OPTIONS
    )
    anam_emulator.inject("session_token", SucceedSlow())  # the token comes only at the end
    starting = asyncio.create_task(session.start(request()))
    async with asyncio.timeout(5):
        await anam_emulator.wait_until(lambda: len(anam_emulator.requests) == 1)
    async with asyncio.timeout(3):  # no waiting for a token nobody will use
        outcome = await session.stop()
    assert outcome.session_id is None
    # the start is over (so it can ask for nothing more), and it asked for no engine session
    (result,) = await asyncio.gather(starting, return_exceptions=True)
    assert isinstance(result, asyncio.CancelledError)
    assert anam_emulator.requests_for("engine_session") == ()
    assert anam_emulator.sessions == ()


async def test_a_terminate_that_gets_no_answer_says_why_and_counts_the_session(
    http_session: aiohttp.ClientSession, lemonslice_emulator: LemonSliceEmulator
) -> None:
    session = lemonslice_session(
        http_session, lemonslice_emulator, AvatarOptions(identity="test-avatar", stop_timeout=0.6)
    )
    await session.start(request())
    lemonslice_emulator.inject("control", *[Hang()] * 4)
    started = time.monotonic()
    outcome = await session.stop()
    assert time.monotonic() - started < 0.6 + 1.0  # the stop timeout, and a loaded machine's margin
    assert outcome.unended is not None
    assert outcome.unended.startswith("ProviderTimeoutError: lemonslice terminate session")
    assert len(lemonslice_emulator.active_sessions) == 1  # it is still billing, and we say so


async def test_a_session_the_provider_had_already_ended_is_not_counted_as_unended(
    http_session: aiohttp.ClientSession, lemonslice_emulator: LemonSliceEmulator
) -> None:
    """Terminate answered 404 (its idle timeout came first): ended, not a possible orphan."""
    session = lemonslice_session(http_session, lemonslice_emulator)
    session_id = await session.start(request())
    await lemonslice_emulator.end_session(session_id, "TIMED_OUT")
    lemonslice_emulator.inject("control", StatusFault(404, "session not found"))
    outcome = await session.stop()
    assert outcome == StopOutcome(session_id, unended=None)
    assert len(lemonslice_emulator.requests_for("control")) == 1
