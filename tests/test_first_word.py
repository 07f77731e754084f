"""End to end: the first word at once. The agent's own voice carries the greeting while the avatar
boots, and the avatar takes over at a sentence's end (docs/first-word.md).

A real livekit-server, the worker as a process with the offline voice, LemonSlice and Anam through
their emulators; each avatar boots until the test releases it (once the user hears the agent), so
it always arrives in the middle of the greeting, however loaded the machine is.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
from livekit import rtc

from providers.supervisor import HANDOVER_PAUSE
from speech.pipeline import OFFLINE_GREETING
from tests.support.avatar_launcher import (
    CrashAtFirstSpeech,
    JoinWhenReleased,
    LocalAvatarLauncher,
    NeverJoin,
)
from tests.support.dispatch import dispatch_to_workers
from tests.support.emulators import AnamEmulator, EmulatorServer, LemonSliceEmulator
from tests.support.livekit_server import LiveKitServer, server_api
from tests.support.replies import answered_in_order, words
from tests.support.room_user import (
    AGENT_STATE_ATTRIBUTE,
    AUDIBLE_RMS,
    Ears,
    RoomUser,
    Transcript,
    job_avatar_identity,
)
from tests.support.spoken import spoken
from tests.support.worker import LogRecord, WorkerProcess, worker_environment

pytestmark = pytest.mark.e2e

LEMONSLICE_KEY = "ls-first-word-key-never-logged"
ANAM_KEY = "anam-first-word-key-never-logged"
GREETING_MARK = "offline voice"
# Longer than the greeting (10 s): an avatar that never comes is given up on after it.
JOIN_TIMEOUT = 15.0
# The avatar starts this far before the pause's end (speech_router._HANDOVER_LEAD), at most.
LEAD = 0.1
# From the avatar's leaving to the agent's own voice heard again, at most: the room telling the
# agent, and the rest of the greeting on the own track (still up, or published again).
FAILOVER_SILENCE = 1.5


@dataclass
class Deployment:
    provider: str
    agent_name: str
    worker: WorkerProcess
    emulator: EmulatorServer
    launcher: LocalAvatarLauncher
    identity: str  # the provider's base avatar identity


@pytest.fixture(scope="module", params=["lemonslice", "anam"])
async def deployment(
    request: pytest.FixtureRequest,
    livekit_server: LiveKitServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Deployment]:
    provider: str = request.param
    launcher = LocalAvatarLauncher()
    emulator: EmulatorServer
    extra = {
        "AVATAR_PROVIDER": provider,
        "AVATAR_JOIN_TIMEOUT": str(JOIN_TIMEOUT),
        "AVATAR_MAX_RESTARTS": "0",
        "VOICE_MODE": "offline",
    }
    if provider == "lemonslice":
        emulator = LemonSliceEmulator(api_key=LEMONSLICE_KEY, avatar_launcher=launcher)
        await emulator.start()
        extra |= emulator.worker_settings("agent-first-word")
        identity = "lemonslice-avatar-agent"
    else:
        emulator = AnamEmulator(api_key=ANAM_KEY, avatar_launcher=launcher)
        await emulator.start()
        extra |= emulator.worker_settings()
        identity = "anam-avatar-agent"
    agent_name = f"first-{provider}-{uuid.uuid4().hex[:6]}"
    worker = WorkerProcess(
        worker_environment(livekit_server, agent_name, extra),
        cwd=tmp_path_factory.mktemp(f"first-word-{provider}"),
    )
    try:
        await worker.start()
        yield Deployment(provider, agent_name, worker, emulator, launcher, identity)
        assert await worker.stop() == 0, worker.output_tail()
    finally:
        await worker.stop()
        await emulator.aclose()
    for secret in (LEMONSLICE_KEY, ANAM_KEY, livekit_server.api_secret):
        assert not any(secret in line for line in worker.raw_output)


@dataclass
class Call:
    deployment: Deployment
    user: RoomUser
    ears: Ears
    agent: str  # the agent's identity
    avatar: str  # this job's avatar identity
    first_heard: float  # time.monotonic() the user first heard the agent

    def said_by_agent(self) -> list[Transcript]:
        return [t for t in self.user.transcripts if t.speaker == self.agent and t.final]

    async def greeting(self) -> Transcript:
        return await self.user.wait_for_transcript(self.agent, GREETING_MARK, timeout=60)

    async def listening(self) -> None:
        await self.user.wait_for_attribute(
            self.agent, AGENT_STATE_ATTRIBUTE, "listening", timeout=60
        )

    async def handover(self) -> LogRecord:
        room = self.user.room.name
        return await self.deployment.worker.wait_for_log(
            lambda r: r.get("room") == room and "handover_at" in r, timeout=60
        )


@asynccontextmanager
async def call_while_the_avatar_boots(
    livekit_server: LiveKitServer, deployment: Deployment, avatar_behaviour: object
) -> AsyncIterator[Call]:
    """A user in a room the agent was dispatched to, from the moment they hear the agent (its
    avatar still booting); the user leaves at the end, which ends the job."""
    deployment.launcher.script(avatar_behaviour)  # type: ignore[arg-type]
    user = await RoomUser.join(livekit_server, f"room-first-{uuid.uuid4().hex[:8]}")
    ears = user.hear_everyone(AUDIBLE_RMS)
    try:
        await user.start_microphone()
        async with server_api(livekit_server) as lk:
            await dispatch_to_workers(
                lk, deployment.agent_name, user.room.name, [deployment.worker]
            )
        agent = await user.wait_for_agent(timeout=60)
        first_heard = await ears.heard(agent.identity, after=0.0, timeout=60)
        avatar = job_avatar_identity(deployment.identity, agent.identity)
        yield Call(deployment, user, ears, agent.identity, avatar, first_heard)
    finally:
        deployment.launcher.clear_script()
        await ears.aclose()
        await user.leave()


async def test_the_greeting_starts_in_the_agents_voice_and_the_avatar_takes_over_at_a_sentence_end(
    livekit_server: LiveKitServer, deployment: Deployment
) -> None:
    released = asyncio.Event()
    behaviour = JoinWhenReleased(released)
    async with call_while_the_avatar_boots(livekit_server, deployment, behaviour) as call:
        # heard before the avatar is in the room: its boot has not even ended
        assert call.avatar not in call.user.room.remote_participants
        released.set()
        await call.user.wait_for_video(call.avatar, timeout=60)
        assert call.first_heard < call.user.joined_at[call.avatar]

        handover = await call.handover()
        # at a pause a sentence's end makes (judged whole: the own voice may be well into it),
        # never within a word
        assert handover["natural_pause"] >= HANDOVER_PAUSE, handover
        assert handover["resumed_at"] >= handover["handover_at"] - LEAD, handover
        avatar_heard = await call.ears.heard(call.avatar, after=call.first_heard, timeout=30)
        # never both voices at once: the agent's own track fell silent before the avatar spoke
        own_last = max(t for t in call.ears.audible[call.agent] if t < avatar_heard)
        assert own_last < avatar_heard
        assert call.ears.first_audible_after(call.agent, avatar_heard) is None
        # the own track goes once the avatar speaks
        await call.user.wait_without_track(call.agent, rtc.TrackKind.KIND_AUDIO, timeout=30)

        # the transcript has each word once
        greeting = await call.greeting()
        assert words(greeting.text) == words(OFFLINE_GREETING)
        await call.listening()
        assert len([t for t in call.said_by_agent() if GREETING_MARK in t.text]) == 1
        assert call.ears.first_audible_after(call.agent, avatar_heard) is None


async def test_an_avatar_that_never_comes_leaves_the_greeting_whole_in_the_agents_voice(
    livekit_server: LiveKitServer, deployment: Deployment
) -> None:
    async with call_while_the_avatar_boots(livekit_server, deployment, NeverJoin()) as call:
        greeting = await call.greeting()
        await call.listening()
        assert words(greeting.text) == words(OFFLINE_GREETING)
        assert call.avatar not in call.ears.audible
        # heard to its end in the agent's voice: its audible span is the greeting's, less the
        # silence around it (eSpeak's greeting is 10.0 s, 9.4 s from first sound to last)
        span = call.ears.audible[call.agent][-1] - call.first_heard
        assert span >= 9.0, span
        assert not [
            r
            for r in call.deployment.worker.records
            if r.get("room") == call.user.room.name and "handover_at" in r
        ]


async def test_an_avatar_lost_at_the_handover_leaves_the_rest_of_the_greeting_to_the_agents_voice(
    livekit_server: LiveKitServer, deployment: Deployment
) -> None:
    """The avatar drops out of the room as the speech is handed to it (it got the first audio,
    never said it plays): the agent goes on in its own voice, each word once, soon after."""
    released = asyncio.Event()
    launcher = deployment.launcher
    before = len(launcher.launched)
    async with call_while_the_avatar_boots(
        livekit_server, deployment, CrashAtFirstSpeech(released)
    ) as call:
        released.set()
        handover = await call.handover()  # the rest of the greeting went to the avatar
        avatar = await launcher.wait_launched(before + 1, timeout=60)
        left = await avatar.wait_gone(timeout=60)
        resumed = await call.ears.heard(call.agent, after=left, timeout=30)

        greeting = await call.greeting()
        await call.listening()
        assert words(greeting.text) == words(OFFLINE_GREETING)  # no word lost
        assert len([t for t in call.said_by_agent() if GREETING_MARK in t.text]) == 1
        assert not call.ears.audible.get(call.avatar)  # it said nothing before it went
        heard = call.ears.audible[call.agent]
        # heard to its end (eSpeak's greeting: 9.4 s from first sound to last; the router's
        # tests check that nothing is repeated)
        span = heard[-1] - call.first_heard
        assert span >= 9.0, span
        # no silence left: the own voice goes on as soon as the agent learns the avatar is gone
        assert resumed - left < FAILOVER_SILENCE, (resumed - left, handover)


async def test_a_sentence_spoken_during_the_bridged_greeting_is_answered_after_it(
    livekit_server: LiveKitServer, deployment: Deployment
) -> None:
    """The greeting cannot be interrupted, in either voice (docs/user-turns.md): what the user
    says during it is answered after it, as when the avatar speaks it whole."""
    released = asyncio.Event()
    behaviour = JoinWhenReleased(released)
    async with call_while_the_avatar_boots(livekit_server, deployment, behaviour) as call:
        question = spoken("hello, who are you?")
        said_at = await call.user.speak(question.data.tobytes(), question.sample_rate)
        released.set()  # the avatar comes while the question waits

        greeting = await call.greeting()
        assert words(greeting.text) == words(OFFLINE_GREETING)  # not cut short
        assert greeting.received_at > said_at, "the sentence ended after the greeting did"
        await call.user.wait_for_transcript(call.agent, "", since=greeting.received_at, timeout=90)
        await call.listening()
        # Everything heard of it (tests/support/replies.py) is answered after the greeting, once;
        # the avatar may take an answer over at a pause in it: one transcript segment per voice.
        me = call.user.room.local_participant.identity
        heard = [t.text.strip() for t in call.user.transcripts if t.speaker == me and t.final]
        answers = [
            t.text
            for t in sorted(call.said_by_agent(), key=lambda t: t.started_at)
            if t.received_at > greeting.received_at
        ]
        assert heard, "nothing of the sentence was heard"
        assert answered_in_order(heard, answers), (heard, answers)
