"""The reference: an avatar agent written the way LiveKit's examples use livekit-plugins-lemonslice and
livekit-plugins-anam 1.8.9 (examples/avatar_agents/{lemonslice,anam}/agent_worker.py), for the benchmark.

    REFERENCE_PROVIDER=lemonslice python -m bench.reference_agent start

The avatar part is the examples' own: an AgentSession, the plugin's `AvatarSession.start(session,
room=ctx.room)` before `session.start`, then the greeting, not awaited. What differs is only what the
comparison needs to be fair: the plugin is pointed at the provider emulator through `api_url`; the voice
is our offline voice (eSpeak NG and the offline responder from speech/, with the bench's first-audio
latency); dispatch is explicit by AGENT_NAME, with capacity by job count (AGENT_MAX_JOBS) as our
worker has under the benchmark.

Environment: LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET, AGENT_NAME, AGENT_MAX_JOBS,
REFERENCE_PROVIDER; LEMONSLICE_API_KEY, LEMONSLICE_API_URL, LEMONSLICE_AGENT_ID (lemonslice) or
ANAM_API_KEY, ANAM_API_URL, ANAM_AVATAR_ID (anam); BENCH_FIRST_AUDIO_LATENCY.
"""

from __future__ import annotations

import os
from typing import Any

from livekit.agents import AgentServer, JobContext, cli
from livekit.agents.voice.avatar import AvatarSession
from livekit.plugins import anam, lemonslice

from assistant import Assistant
from bench.voice import install_from_environment
from speech.pipeline import OfflineVoice

# At import, so that it also runs in every job process (see bench/voice.py).
install_from_environment()

PROVIDERS = ("lemonslice", "anam")


def _avatar(provider: str) -> AvatarSession[Any]:
    avatar: AvatarSession[Any]
    if provider == "lemonslice":
        avatar = lemonslice.AvatarSession(
            agent_id=os.environ["LEMONSLICE_AGENT_ID"],
            api_url=os.environ["LEMONSLICE_API_URL"],
            api_key=os.environ["LEMONSLICE_API_KEY"],
        )
    else:
        avatar = anam.AvatarSession(
            persona_config=anam.PersonaConfig(
                name="Assistant", avatarId=os.environ["ANAM_AVATAR_ID"]
            ),
            api_url=os.environ["ANAM_API_URL"],
            api_key=os.environ["ANAM_API_KEY"],
        )
    return avatar


def _job_count_load(server: AgentServer) -> float:
    return min(1.0, len(server.active_jobs) / int(os.environ.get("AGENT_MAX_JOBS", "8")))


server = AgentServer(port=0, load_threshold=1.0, load_fnc=_job_count_load)


@server.rtc_session(agent_name=os.environ.get("AGENT_NAME", "reference-agent"))
async def entrypoint(ctx: JobContext) -> None:
    voice = OfflineVoice()
    session = voice.create_session()

    avatar = _avatar(os.environ.get("REFERENCE_PROVIDER", ""))
    await avatar.start(session, room=ctx.room)

    await session.start(agent=Assistant(), room=ctx.room)
    session.say(voice.greeting, allow_interruptions=False)


if __name__ == "__main__":
    if os.environ.get("REFERENCE_PROVIDER") not in PROVIDERS:
        raise SystemExit(f"REFERENCE_PROVIDER must be one of {', '.join(PROVIDERS)}")
    cli.run_app(server)
