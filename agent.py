"""A LiveKit voice agent with a video avatar. The assistant itself (its instructions and tools)
is in assistant.py: start there to make it yours.

    python agent.py dev             # local development: debug logs, no CPU load limit
    python agent.py start           # production worker (LiveKit Cloud or self-hosted)
    python agent.py console         # talk to the agent in this terminal (no room, no avatar)
    python -m livekit.agents download-files  # fetch model files ahead of time (Docker build)

`dev` restarts the worker when a .py file or .env changes, once the change loads (dev_reload.py):
livekit-agents 1.8.9 removed that from its Python CLI.

Every room job: the avatar's start and the conversation begin together, the agent's speech waits
for the avatar's video (or goes out in the agent's own voice when there is no avatar), and the job,
with every avatar session it started, ends when the conversation does.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from livekit.agents import AgentServer, AutoSubscribe, JobContext, JobProcess, cli, room_io, utils

import dev_reload
from assistant import Assistant
from chat import TypedMessages, announce_message_limit
from config import ConfigError, Settings, get_settings
from held_turns import HeldTurns
from meeting_chat import MeetingChatReplies
from observability.avatar_metrics import AvatarMetricsRecorder
from observability.health import serve_health
from observability.prometheus import prometheus_options, watch_for_dead_processes
from observability.tracing import AvatarTracer, configure_tracing, flush_traces
from providers.avatar_controls import AvatarControls, avatar_abilities
from providers.lemonslice.meeting_audio import MeetingAudioInput
from providers.lemonslice.meeting_listener import MeetingListener
from providers.lifecycle import JobTimeline
from providers.registry import avatar_for_job, livekit_credentials, provider_api_url
from providers.room_connect import connect_once
from providers.supervisor import AvatarSupervisor, JobRoom
from providers.warmup import ResolvedHost, resolve_provider_host
from recovery.job import claim_room, end_job_memory
from recovery.worker_watch import remove_agents_of_dead_jobs
from speech.pipeline import VoicePipeline, build_voice
from speech.prepared_speech import PreparedSpeech
from subscriptions import connect_to_people

logger = logging.getLogger("avatar-agent")

PROJECT_DIR = Path(__file__).resolve().parent

# Commands that connect to LiveKit and so need a complete configuration before anything starts.
COMMANDS_NEEDING_CONFIG = frozenset({"dev", "start", "connect"})
# What one job process keeps between prewarm, the job and its end (`JobProcess.userdata`).
PREWARMED_PROVIDER = "prewarmed_provider_host"
PREPARED_GREETING = "prepared_greeting"
JOB_AVATAR = "job_avatar"
JOB_MEETING = "job_meeting"
# The avatar's provider call goes out before the session's set-up takes the event loop, for at most
# this long (a new TLS connection to the provider; the call itself is not waited for).
PROVIDER_CALL_HEAD_START = 0.15


async def run_job(ctx: JobContext, settings: Settings, voice: VoicePipeline) -> None:
    """The story of one room job."""
    room_name = ctx.job.room.name
    timeline = JobTimeline(room=room_name, provider=settings.provider, received_at=_received(ctx))
    timeline.add_metrics_sink(AvatarMetricsRecorder(settings.provider))
    avatar_trace = AvatarTracer(settings.provider, room=room_name)
    timeline.add_metrics_sink(avatar_trace)
    ctx.log_context_fields = {"room": room_name, "avatar_provider": settings.provider}
    session = voice.create_session()
    # Nothing the user says is dropped: speech during the greeting (or any speech the agent will
    # not cut short) is answered after it, typed messages one by one, in order.
    held_turns = HeldTurns(session)
    typed = TypedMessages(held_turns)
    ctx.add_shutdown_callback(held_turns.aclose)
    ctx.add_shutdown_callback(typed.aclose)
    # Typed messages are ours (chat.py), in the order sent; the framework's handler can reorder them.
    room_options = room_io.RoomOptions(text_input=False)
    # In an external meeting the agent hears the meeting, through the avatar's relay, not the room.
    meeting: MeetingListener | None = None
    meeting_chat: MeetingChatReplies | None = None
    if settings.lemonslice_meeting_url is not None and not ctx.is_fake_job():
        meeting_audio = MeetingAudioInput()
        session.input.audio = meeting_audio
        room_options.audio_input = False
        meeting_chat = MeetingChatReplies(typed, bot_name=settings.lemonslice_meeting_bot_name)
        meeting = MeetingListener(meeting_audio, meeting_chat.on_chat)
        ctx.proc.userdata[JOB_MEETING] = meeting  # closed by end_of_session, before the bot leaves
        ctx.add_shutdown_callback(meeting.aclose)
    # The agent hears the people in the room; the avatar's media is for them, not for the agent.
    # One connect for the job and the avatar; the entrypoint cancelled during it (the job shut
    # down) stops waiting for it, never cancels it half-way (providers/room_connect.py).
    connect_room = connect_once(
        connect_to_people(
            ctx.room, functools.partial(ctx.connect, auto_subscribe=AutoSubscribe.SUBSCRIBE_NONE)
        )
    )

    # The avatar's provider call needs the room's name and SID and the agent's identity, all in
    # the job: it starts now, beside the room connection. Speech waits for the avatar's video; if
    # the avatar cannot start, join or stay, the agent speaks in its own voice. (`console` has no
    # LiveKit room, so no avatar either.)
    avatar: AvatarSupervisor | None = None
    controls: AvatarControls | None = None
    if not ctx.is_fake_job():
        # The room remembers its job and avatars; what a dead job left in it is ended first.
        if (memory := await claim_room(ctx, settings)) is None:
            return  # this room's agent is alive: this dispatch is refused
        avatar = avatar_for_job(
            room=ctx.room,
            job=JobRoom(
                room_name, ctx.job.room.sid or None, ctx.local_participant_identity, ctx.job.id
            ),
            settings=settings,
            timeline=timeline,
            connect=connect_room,
            prewarmed=ctx.proc.userdata.get(PREWARMED_PROVIDER),
            on_avatar=memory.record,
            on_new_avatar=meeting.follow if meeting is not None else None,
        )
        avatar.attach(session)
        ctx.proc.userdata[JOB_AVATAR] = avatar  # ended by end_of_session, before the room is left
        ctx.add_shutdown_callback(avatar.aclose)
        avatar.start()
        controls = AvatarControls(ctx.room, avatar, avatar_abilities(settings))
        await avatar.until_provider_called(PROVIDER_CALL_HEAD_START)
    ctx.add_shutdown_callback(flush_traces)

    # When the conversation is over (the user left, the room went away), the job is over.
    session.on("close", lambda event: ctx.shutdown(reason=f"session closed: {event.reason}"))

    async def connect() -> None:
        await connect_room()
        timeline.mark("connected")
        await announce_message_limit(ctx.room)

    await asyncio.gather(
        connect(),
        session.start(
            agent=Assistant(
                instructions=settings.agent_instructions,
                greeting=settings.agent_greeting,
                avatar=controls,
            ),
            room=ctx.room,
            room_options=room_options,
        ),
    )
    typed.listen(session, ctx.room)
    if meeting_chat is not None:
        meeting_chat.start(session)
    timeline.mark("session_started")
    if avatar is None:
        timeline.avatar_settled()

    # The greeting starts now, in the agent's own voice while the avatar boots, from audio made
    # in prewarm when its words are fixed. It is not awaited: nothing in the job waits on speech,
    # so the job can end at any moment.
    prepared = ctx.proc.userdata.get(PREPARED_GREETING)
    greeting = voice.greet(session, prepared if isinstance(prepared, PreparedSpeech) else None)
    _in_background(ctx, greeting, "greeting")


async def end_of_session(ctx: JobContext) -> None:
    """The session is over and the room not yet left: end the avatar's provider sessions now,
    while the room's events can still show an avatar that is on its way in."""
    meeting = ctx.proc.userdata.get(JOB_MEETING)
    if isinstance(meeting, MeetingListener):
        await meeting.aclose()  # not listening to a relay the bot's leaving closes
    avatar = ctx.proc.userdata.get(JOB_AVATAR)
    if isinstance(avatar, AvatarSupervisor):
        await avatar.aclose()
    await end_job_memory(ctx)  # no recovery for a job that ends by itself


async def entrypoint(ctx: JobContext) -> None:
    try:
        settings = get_settings()
    except ConfigError:
        if not ctx.is_fake_job():
            raise
        settings = Settings.model_construct()  # console: voice only, no LiveKit room to configure
    await run_job(ctx, settings, build_voice(settings))


def prewarm(proc: JobProcess) -> None:
    """Before any job, in each job process: resolve the provider's host (see providers/warmup.py),
    synthesise a greeting whose words are fixed (speech/prepared_speech.py), and send traces where
    OTEL_EXPORTER_OTLP_* says (nowhere unless it is set)."""
    configure_tracing()
    try:
        settings = get_settings()
    except ConfigError:
        return
    api_url = provider_api_url(settings)
    resolved: ResolvedHost | None = resolve_provider_host(api_url) if api_url else None
    proc.userdata[PREWARMED_PROVIDER] = resolved
    proc.userdata[PREPARED_GREETING] = build_voice(settings).prepare_greeting()


def _received(ctx: JobContext) -> float | None:
    # When the worker received the job request (livekit-agents keeps it on the job's info only).
    info = getattr(ctx, "_info", None)
    received = getattr(info, "received_at", 0.0)
    return received if isinstance(received, float) and received > 0 else None


def _in_background(ctx: JobContext, work: Coroutine[Any, Any, None], name: str) -> None:
    task = asyncio.create_task(work, name=name)

    def report(done: asyncio.Task[None]) -> None:
        if not done.cancelled() and (error := done.exception()) is not None:
            logger.error("%s failed", name, exc_info=error)

    async def cancel() -> None:
        await utils.aio.cancel_and_wait(task)

    task.add_done_callback(report)
    ctx.add_shutdown_callback(cancel)


def job_count_load(server: AgentServer, *, max_jobs: int) -> float:
    """Load as the share of job slots in use (LiveKit stops sending jobs at 1.0)."""
    return min(1.0, len(server.active_jobs) / max_jobs)


def preloaded_modules(settings: Settings) -> list[str]:
    """This application's modules, imported once in livekit-agents' forkserver: every job process
    is forked with them loaded instead of importing them itself, which a burst of jobs would pay
    once per new process."""
    modules = [
        "assistant",
        "chat",
        "config",
        "held_turns",
        "providers.registry",
        "speech.pipeline",
        "subscriptions",
    ]
    if settings.provider == "local":
        modules.append("providers.local.avatar")  # imported by the job only when it is used
    return modules


def create_server(settings: Settings, **options: Any) -> AgentServer:
    """The worker; `options` are more `AgentServer` arguments (a test's thread executor)."""
    capacity: dict[str, Any] = {}
    if settings.agent_max_jobs is not None:
        capacity["load_fnc"] = functools.partial(job_count_load, max_jobs=settings.agent_max_jobs)
        capacity["load_threshold"] = 1.0
    elif settings.agent_load_threshold is not None:
        capacity["load_threshold"] = settings.agent_load_threshold
    # Otherwise livekit-agents' own default: 0.7 in `start`, no limit in `dev`, and no warning on
    # LiveKit Cloud (which ignores a custom threshold).
    metrics = prometheus_options(settings)
    server = AgentServer(
        preload_modules=preloaded_modules(settings),
        ws_url=settings.livekit_url,
        port=settings.agent_http_port,
        api_key=settings.livekit_api_key.get_secret_value() if settings.livekit_api_key else None,
        api_secret=(
            settings.livekit_api_secret.get_secret_value() if settings.livekit_api_secret else None
        ),
        **capacity,
        **metrics,
        **options,
    )
    watch_for_dead_processes(server, metrics)
    serve_health(server, settings.agent_health_port)
    server.setup_fnc = prewarm
    if settings.livekit_url and settings.livekit_api_key and settings.livekit_api_secret:
        remove_agents_of_dead_jobs(server, livekit_credentials(settings))  # speeds up recovery
    server.rtc_session(entrypoint, agent_name=settings.agent_name, on_session_end=end_of_session)
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
    dev_reload.quiet_framework_deprecations()
    if command == "dev" and dev_reload.is_dev_worker():
        dev_reload.watch_parent()
    elif command == "dev" and "--help" not in argv:
        raise SystemExit(dev_reload.run(PROJECT_DIR, argv))  # runs the worker, reloads it
    if command not in COMMANDS_NEEDING_CONFIG:
        cli.run_app(create_server(settings))
        return
    with build_voice(settings).worker_services():
        cli.run_app(create_server(settings))


if __name__ == "__main__":
    main(sys.argv)
