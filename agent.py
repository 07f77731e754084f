"""A LiveKit voice agent with a video avatar.

    python agent.py dev             # local development, reloads on change
    python agent.py start           # production worker (LiveKit Cloud or self-hosted)
    python agent.py console         # talk to the agent in this terminal (no room, no avatar)
    python agent.py download-files  # fetch model files ahead of time (Docker build)

Every room job: connect -> build the voice -> send the avatar in -> start the conversation -> greet.
"""

from __future__ import annotations

import functools
import logging
import sys

from livekit.agents import AgentServer, JobContext, cli
from livekit.agents.utils import http_context

from config import ConfigError, Settings, get_settings
from providers.registry import create_avatar_session
from speech.pipeline import VoicePipeline, build_voice

logger = logging.getLogger("avatar-agent")

# Commands that connect to LiveKit and so need a complete configuration before anything starts.
COMMANDS_NEEDING_CONFIG = frozenset({"dev", "start", "connect"})


async def run_job(ctx: JobContext, settings: Settings, voice: VoicePipeline) -> None:
    """The story of one room job."""
    ctx.log_context_fields = {"room": ctx.room.name, "avatar_provider": settings.provider}
    await ctx.connect()

    session = voice.create_session()

    # The avatar joins with a token minted for this room only and speaks for the agent.
    # If it cannot start or join in time, the agent keeps its own voice: the user is never left in silence.
    # (`console` has no LiveKit room, so no avatar either.)
    if ctx.room.isconnected():
        avatar = create_avatar_session(settings, http_context.http_session())
        ctx.add_shutdown_callback(avatar.aclose)
        avatar_joined = await avatar.start_or_fall_back(session, ctx.room)
        logger.info(
            "avatar %s",
            "joined" if avatar_joined else "unavailable: the agent speaks without it",
            extra={"provider": settings.provider, "voice": voice.mode},
        )

    # When the conversation is over (the user left), the job is over: the avatar leaves with it.
    session.on("close", lambda event: ctx.shutdown(reason=f"session closed: {event.reason}"))
    await session.start(agent=voice.create_agent(), room=ctx.room)
    await voice.greet(session)


async def entrypoint(ctx: JobContext) -> None:
    try:
        settings = get_settings()
    except ConfigError:
        if not ctx.is_fake_job():
            raise
        settings = Settings.model_construct()  # console: voice only, no LiveKit room to configure
    await run_job(ctx, settings, build_voice(settings))


def job_count_load(server: AgentServer, *, max_jobs: int) -> float:
    """Load as the share of job slots in use (LiveKit stops sending jobs at 1.0)."""
    return min(1.0, len(server.active_jobs) / max_jobs)


def create_server(settings: Settings) -> AgentServer:
    by_job_count = settings.agent_max_jobs is not None
    server = AgentServer(
        ws_url=settings.livekit_url,
        port=settings.agent_http_port,
        load_threshold=1.0 if by_job_count else settings.agent_load_threshold,
        load_fnc=(
            functools.partial(job_count_load, max_jobs=settings.agent_max_jobs)
            if settings.agent_max_jobs is not None
            else None
        ),
        api_key=settings.livekit_api_key.get_secret_value() if settings.livekit_api_key else None,
        api_secret=(
            settings.livekit_api_secret.get_secret_value() if settings.livekit_api_secret else None
        ),
    )
    server.rtc_session(entrypoint, agent_name=settings.agent_name)
    return server


def main(argv: list[str]) -> None:
    command = argv[1] if len(argv) > 1 else ""
    try:
        settings = get_settings()
    except ConfigError as error:
        if command in COMMANDS_NEEDING_CONFIG:
            # Stop here, before the worker registers with LiveKit and takes jobs it cannot serve.
            print(f"agent.py {command}: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        settings = Settings.model_construct()
    cli.run_app(create_server(settings))


if __name__ == "__main__":
    main(sys.argv)
