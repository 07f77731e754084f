"""What the shared HTTP layer writes to logs and exceptions: never a key or a token."""

from __future__ import annotations

import logging

import aiohttp
import pytest

from providers.anam.api import AnamAPI, PersonaConfig, is_hard_limit
from providers.anam.api import read_error_text as anam_error_text
from providers.errors import AuthenticationError, ProviderProtocolError, ProviderTimeoutError
from providers.lemonslice.api import LemonSliceAgent, LemonSliceAPI
from providers.lemonslice.api import read_error_text as lemonslice_error_text
from tests.providers.conftest import ANAM_KEY, LEMONSLICE_KEY, avatar_token, provider_http
from tests.support.emulators import (
    AnamEmulator,
    CloseConnection,
    Hang,
    LemonSliceEmulator,
    MissingSuccessField,
    StatusFault,
    SucceedSlow,
)


def everything_logged(caplog: pytest.LogCaptureFixture) -> str:
    parts = []
    for record in caplog.records:
        parts.append(record.getMessage())
        parts.append(repr(record.__dict__))
        if record.exc_info:
            parts.append(logging.Formatter().formatException(record.exc_info))
    return "\n".join(parts)


async def test_no_key_or_token_in_any_log_record_or_error(
    caplog: pytest.LogCaptureFixture,
    http_session: aiohttp.ClientSession,
    lemonslice_emulator: LemonSliceEmulator,
    anam_emulator: AnamEmulator,
) -> None:
    caplog.set_level(logging.DEBUG)
    livekit_token = avatar_token()
    errors: list[Exception] = []

    lemonslice = LemonSliceAPI(
        provider_http(http_session, "lemonslice", read_error_text=lemonslice_error_text),
        api_key=LEMONSLICE_KEY,
        api_url=lemonslice_emulator.sessions_url,
    )
    agent = LemonSliceAgent(agent_id="agent-7")
    # a start with retries (5xx, a closed connection before the request got anywhere), a
    # terminate retried after a lost reply, then a create whose reply is lost (a possible orphan)
    lemonslice_emulator.inject("create", StatusFault(503))
    session_id = await lemonslice.start_agent_session(
        agent, livekit_url="wss://x.livekit.cloud", livekit_token=livekit_token
    )
    lemonslice_emulator.inject("control", SucceedSlow(seconds=2), CloseConnection())
    await lemonslice.terminate(session_id)
    lemonslice_emulator.inject("create", SucceedSlow(seconds=2))
    with pytest.raises(ProviderTimeoutError) as lost_error:
        await lemonslice.start_agent_session(
            agent, livekit_url="wss://x.livekit.cloud", livekit_token=livekit_token
        )
    errors.append(lost_error.value)
    # a failure
    lemonslice_emulator.inject("create", MissingSuccessField())
    with pytest.raises(ProviderProtocolError) as protocol_error:
        await lemonslice.start_agent_session(
            agent, livekit_url="wss://x.livekit.cloud", livekit_token=livekit_token
        )
    errors.append(protocol_error.value)

    anam = AnamAPI(
        provider_http(
            http_session, "anam", read_error_text=anam_error_text, is_quota_exceeded=is_hard_limit
        ),
        api_key=ANAM_KEY,
        api_url=anam_emulator.url,
    )
    anam_emulator.inject("session_token", Hang())
    anam_emulator.inject("engine_session", StatusFault(503))
    session_token = await anam.create_session_token(
        PersonaConfig(name="Cara", avatar_id="a-1"),
        livekit_url="wss://x.livekit.cloud",
        livekit_token=livekit_token,
    )
    await anam.start_engine_session(session_token)
    wrong_key = AnamAPI(
        provider_http(http_session, "anam", read_error_text=anam_error_text),
        api_key="anam-wrong-key-never-logged",
        api_url=anam_emulator.url,
    )
    with pytest.raises(AuthenticationError) as auth_error:
        await wrong_key.create_session_token(
            PersonaConfig(name="Cara", avatar_id="a-1"),
            livekit_url="wss://x.livekit.cloud",
            livekit_token=livekit_token,
        )
    errors.append(auth_error.value)

    logged = everything_logged(caplog)
    assert "retrying" in logged and "possible orphan" in logged  # the records we looked at exist
    shown = logged + "".join(str(e) + repr(e) + repr(e.__dict__) for e in errors)
    for secret in (
        LEMONSLICE_KEY,
        ANAM_KEY,
        "anam-wrong-key-never-logged",
        livekit_token,
        session_token,
    ):
        assert secret not in shown
    # the JWT's signature alone must not appear either
    assert livekit_token.rsplit(".", 1)[1] not in shown
