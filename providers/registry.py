"""Builds the configured provider's setup; the one place that knows every provider."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from livekit import rtc
from livekit.agents import APIConnectOptions

from config import ProviderName, Settings

from .anam import api as anam_api
from .anam.avatar import DEFAULT_IDENTITY as ANAM_IDENTITY
from .anam.avatar import AnamAvatarSession
from .http import ProviderHttp
from .lemonslice import api as lemonslice_api
from .lemonslice.avatar import DEFAULT_IDENTITY as LEMONSLICE_IDENTITY
from .lemonslice.avatar import LemonSliceAvatarSession
from .lemonslice.meeting import MeetingPlan
from .lifecycle import JobTimeline
from .retry import RetryPolicy
from .session import AvatarOptions, LiveKitCredentials, ProviderAvatarSession
from .supervisor import AvatarStarted, AvatarSupervisor, JobRoom, ProviderSetup
from .warmup import ResolvedHost, provider_http_session

AvatarFactory = Callable[[Settings, aiohttp.ClientSession], ProviderSetup]


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


def avatar_options(
    settings: Settings, default_identity: str, *, session_length_cap: int | None = None
) -> AvatarOptions:
    return AvatarOptions(
        identity=settings.avatar_identity or default_identity,
        display_name=settings.avatar_name,
        token_ttl=settings.token_ttl,
        start_timeout=settings.avatar_start_timeout,
        join_timeout=settings.avatar_join_timeout,
        max_restarts=settings.avatar_max_restarts,
        speak_before_video=settings.avatar_speak_before_video,
        handover_settle=settings.avatar_handover_settle,
        session_length_cap=session_length_cap,
    )


def _avatar_url(settings: Settings) -> str:
    url = settings.avatar_url
    assert url is not None
    return url


def lemonslice_pass_through(settings: Settings) -> dict[str, Any]:
    """Create-body fields the plugin forwarded as its extra keyword arguments; unset ones are left out."""
    fields = {
        "model": settings.lemonslice_model,
        "response_done_timeout": settings.lemonslice_response_done_timeout,
        "aspect_ratio": settings.lemonslice_aspect_ratio,
    }
    return {key: value for key, value in fields.items() if value is not None}


def lemonslice_meeting_plan(settings: Settings) -> MeetingPlan | None:
    if settings.lemonslice_meeting_url is None:
        return None
    assert settings.livekit_api_key is not None and settings.livekit_api_secret is not None
    return MeetingPlan(
        meeting_url=settings.lemonslice_meeting_url,
        bot_name=settings.lemonslice_meeting_bot_name,
        livekit=LiveKitCredentials(
            url=_avatar_url(settings),
            api_key=settings.livekit_api_key.get_secret_value(),
            api_secret=settings.livekit_api_secret.get_secret_value(),
        ),
    )


def _lemonslice(settings: Settings, session: aiohttp.ClientSession) -> ProviderSetup:
    assert settings.lemonslice_api_key is not None
    http = ProviderHttp(
        session,
        provider=lemonslice_api.PROVIDER,
        policy=retry_policy(settings),
        read_error_text=lemonslice_api.read_error_text,
    )
    client = lemonslice_api.LemonSliceAPI(
        http,
        api_key=settings.lemonslice_api_key.get_secret_value(),
        api_url=settings.lemonslice_api_url,
    )
    agent = lemonslice_api.LemonSliceAgent(
        agent_id=settings.lemonslice_agent_id,
        agent_image_url=settings.lemonslice_agent_image_url,
        agent_image=settings.lemonslice_agent_image_path,  # the file's bytes, read with the settings
        agent_prompt=settings.lemonslice_agent_prompt,
        agent_idle_prompt=settings.lemonslice_agent_idle_prompt,
        idle_timeout=settings.lemonslice_idle_timeout,
        extra_payload=lemonslice_pass_through(settings),
    )
    plan = lemonslice_meeting_plan(settings)
    return ProviderSetup(
        name=lemonslice_api.PROVIDER,
        sample_rate=LemonSliceAvatarSession.sample_rate,
        options=avatar_options(
            settings,
            LEMONSLICE_IDENTITY,
            session_length_cap=settings.lemonslice_max_session_length_seconds,
        ),
        livekit_url=_avatar_url(settings),
        new_session=lambda identity, options: LemonSliceAvatarSession(
            api=client, agent=agent, identity=identity, options=options, meeting_plan=plan
        ),
        possible_orphans=lambda: len(http.possible_orphans),
    )


def _anam(settings: Settings, session: aiohttp.ClientSession) -> ProviderSetup:
    assert settings.anam_api_key is not None and settings.anam_avatar_id is not None
    http = ProviderHttp(
        session,
        provider=anam_api.PROVIDER,
        policy=retry_policy(settings),
        read_error_text=anam_api.read_error_text,
        is_quota_exceeded=anam_api.is_hard_limit,
        known_error_code=anam_api.hard_limit,
    )
    client = anam_api.AnamAPI(
        http,
        api_key=settings.anam_api_key.get_secret_value(),
        api_url=settings.anam_api_url,
        flow=settings.anam_session_flow,
    )
    persona = anam_api.PersonaConfig(
        name=settings.anam_persona_name,
        avatar_id=settings.anam_avatar_id,
        avatar_model=settings.anam_avatar_model,
        director_notes=anam_api.DirectorNotes(
            expressivity=settings.anam_expressivity,
            preset_style=settings.anam_preset_style,
            custom_style_prompt=settings.anam_custom_style_prompt,
        ),
        session_options=anam_api.SessionOptions(
            video_width=settings.anam_video_width,
            video_height=settings.anam_video_height,
            show_ai_avatar_disclosure=settings.anam_show_ai_avatar_disclosure,
        ),
        max_session_length_seconds=settings.anam_max_session_length_seconds,
    )
    return ProviderSetup(
        name=anam_api.PROVIDER,
        sample_rate=AnamAvatarSession.sample_rate,
        options=avatar_options(
            settings,
            ANAM_IDENTITY,
            session_length_cap=settings.anam_max_session_length_seconds,
        ),
        livekit_url=_avatar_url(settings),
        new_session=lambda identity, options: AnamAvatarSession(
            api=client, persona=persona, identity=identity, options=options
        ),
        possible_orphans=lambda: len(http.possible_orphans),
    )


def _local(settings: Settings, session: aiohttp.ClientSession) -> ProviderSetup:
    from .local.avatar import DEFAULT_IDENTITY, PROVIDER, LocalAvatarSession

    # The local avatar runs in the job's own process: it joins by the worker's own LiveKit URL.
    assert settings.livekit_url is not None
    return ProviderSetup(
        name=PROVIDER,
        sample_rate=LocalAvatarSession.sample_rate,
        options=avatar_options(settings, DEFAULT_IDENTITY),
        livekit_url=settings.livekit_url,
        new_session=lambda identity, options: LocalAvatarSession(
            identity=identity, options=options
        ),
    )


AVATAR_FACTORIES: dict[ProviderName, AvatarFactory] = {
    "lemonslice": _lemonslice,
    "anam": _anam,
    "local": _local,
}


def provider_setup(settings: Settings, http_session: aiohttp.ClientSession) -> ProviderSetup:
    """The configured provider, its clients sharing `http_session`."""
    return AVATAR_FACTORIES[settings.provider](settings, http_session)


def avatar_for_job(
    *,
    room: rtc.Room,
    job: JobRoom,
    settings: Settings,
    timeline: JobTimeline,
    connect: Callable[[], Awaitable[None]],
    prewarmed: ResolvedHost | None = None,
    on_avatar: AvatarStarted | None = None,
    on_new_avatar: Callable[[ProviderAvatarSession], None] | None = None,
) -> AvatarSupervisor:
    """The configured provider's avatar for one job, with its own pooled HTTP session."""
    # Set when the start's first provider call is on the wire (none for the local avatar).
    call_sent = asyncio.Event() if provider_api_url(settings) else None
    http_session = provider_http_session(
        prewarmed, on_request_sent=call_sent.set if call_sent else None
    )
    setup = dataclasses.replace(provider_setup(settings, http_session), aclose=http_session.close)
    return AvatarSupervisor(
        room=room,
        job=job,
        provider=setup,
        livekit=livekit_credentials(settings),
        timeline=timeline,
        connect=connect,
        on_avatar=on_avatar,
        provider_call_sent=call_sent,
        on_new_avatar=on_new_avatar,
    )


def provider_api_url(settings: Settings) -> str | None:
    """The provider's API URL, for prewarm (None for the local avatar)."""
    return {"lemonslice": settings.lemonslice_api_url, "anam": settings.anam_api_url}.get(
        settings.provider
    )
