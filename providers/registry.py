"""Builds the configured provider's avatar session; the one place that knows every provider."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp
from livekit.agents import APIConnectOptions

from config import ProviderName, Settings

from .anam import api as anam_api
from .anam.avatar import DEFAULT_IDENTITY as ANAM_IDENTITY
from .anam.avatar import AnamAvatarSession
from .http import ProviderHttp
from .lemonslice import api as lemonslice_api
from .lemonslice.avatar import DEFAULT_IDENTITY as LEMONSLICE_IDENTITY
from .lemonslice.avatar import LemonSliceAvatarSession
from .retry import RetryPolicy
from .session import AvatarOptions, LiveKitCredentials, ProviderAvatarSession

AvatarFactory = Callable[[Settings, aiohttp.ClientSession], ProviderAvatarSession]


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy.from_connect_options(
        APIConnectOptions(
            max_retry=settings.avatar_max_retries,
            retry_interval=0.5,
            timeout=settings.avatar_request_timeout,
        ),
        call_deadline=settings.avatar_start_timeout,
    )


def livekit_credentials(settings: Settings) -> LiveKitCredentials:
    assert settings.livekit_url and settings.livekit_api_key and settings.livekit_api_secret
    return LiveKitCredentials(
        url=settings.livekit_url,
        api_key=settings.livekit_api_key.get_secret_value(),
        api_secret=settings.livekit_api_secret.get_secret_value(),
    )


def avatar_options(settings: Settings, default_identity: str) -> AvatarOptions:
    return AvatarOptions(
        identity=settings.avatar_identity or default_identity,
        token_ttl=settings.token_ttl,
        start_timeout=settings.avatar_start_timeout,
        join_timeout=settings.avatar_join_timeout,
    )


def _lemonslice(settings: Settings, session: aiohttp.ClientSession) -> ProviderAvatarSession:
    assert settings.lemonslice_api_key is not None
    return LemonSliceAvatarSession(
        api=lemonslice_api.LemonSliceAPI(
            ProviderHttp(
                session,
                provider=lemonslice_api.PROVIDER,
                policy=retry_policy(settings),
                read_error_text=lemonslice_api.read_error_text,
            ),
            api_key=settings.lemonslice_api_key.get_secret_value(),
            api_url=settings.lemonslice_api_url,
        ),
        agent=lemonslice_api.LemonSliceAgent(
            agent_id=settings.lemonslice_agent_id,
            agent_image_url=settings.lemonslice_agent_image_url,
            agent_prompt=settings.lemonslice_agent_prompt,
            agent_idle_prompt=settings.lemonslice_agent_idle_prompt,
            idle_timeout=settings.lemonslice_idle_timeout,
        ),
        livekit=livekit_credentials(settings),
        options=avatar_options(settings, LEMONSLICE_IDENTITY),
    )


def _anam(settings: Settings, session: aiohttp.ClientSession) -> ProviderAvatarSession:
    assert settings.anam_api_key is not None and settings.anam_avatar_id is not None
    return AnamAvatarSession(
        api=anam_api.AnamAPI(
            ProviderHttp(
                session,
                provider=anam_api.PROVIDER,
                policy=retry_policy(settings),
                read_error_text=anam_api.read_error_text,
                is_quota_exceeded=anam_api.is_hard_limit,
            ),
            api_key=settings.anam_api_key.get_secret_value(),
            api_url=settings.anam_api_url,
            flow=settings.anam_session_flow,
        ),
        persona=anam_api.PersonaConfig(
            name=settings.anam_persona_name,
            avatar_id=settings.anam_avatar_id,
            avatar_model=settings.anam_avatar_model,
        ),
        livekit=livekit_credentials(settings),
        options=avatar_options(settings, ANAM_IDENTITY),
    )


def _local(settings: Settings, session: aiohttp.ClientSession) -> ProviderAvatarSession:
    from .local.avatar import DEFAULT_IDENTITY, LocalAvatarSession

    return LocalAvatarSession(
        livekit=livekit_credentials(settings), options=avatar_options(settings, DEFAULT_IDENTITY)
    )


AVATAR_FACTORIES: dict[ProviderName, AvatarFactory] = {
    "lemonslice": _lemonslice,
    "anam": _anam,
    "local": _local,
}


def create_avatar_session(
    settings: Settings, http_session: aiohttp.ClientSession
) -> ProviderAvatarSession:
    return AVATAR_FACTORIES[settings.provider](settings, http_session)
