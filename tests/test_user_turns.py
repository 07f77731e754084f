"""End to end: nothing the user says is lost, on a real livekit-server with the worker as a process.

The agent says its greeting without letting it be cut short. A message typed or a sentence spoken
while it does is answered right after it; messages typed in a row are all answered, in order; a
message over the length limit gets an answer that states the limit. Offline voice, with the local
avatar and with the LemonSlice emulator (whose avatar runs in this process).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest

from chat import CHAT_TOPIC, MAX_MESSAGE_CHARS
from tests.support.avatar_launcher import LocalAvatarLauncher
from tests.support.dispatch import dispatch_to_workers
from tests.support.emulators import LemonSliceEmulator
from tests.support.livekit_server import LiveKitServer, server_api
from tests.support.replies import answered_in_order
from tests.support.room_user import AGENT_STATE_ATTRIBUTE, RoomUser, Transcript, job_avatar_identity
from tests.support.spoken import spoken
from tests.support.worker import WorkerProcess, worker_environment

pytestmark = pytest.mark.e2e

LEMONSLICE_KEY = "ls-user-turns-key-never-logged"
GREETING_MARK = "offline voice"  # in the greeting's transcript (speech/pipeline.py)


@dataclass
class Deployment:
    agent_name: str
    worker: WorkerProcess
    avatar: str  # the provider's base avatar identity (each job makes it its own)


@pytest.fixture(scope="module", params=["local", "lemonslice"])
async def deployment(
    request: pytest.FixtureRequest,
    livekit_server: LiveKitServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Deployment]:
    provider: str = request.param
    agent_name = f"turns-{provider}-{uuid.uuid4().hex[:6]}"
    extra = {"VOICE_MODE": "offline"}
    emulator: LemonSliceEmulator | None = None
    if provider == "lemonslice":
        emulator = LemonSliceEmulator(api_key=LEMONSLICE_KEY, avatar_launcher=LocalAvatarLauncher())
        await emulator.start()
        extra |= emulator.worker_settings("agent-turns")
        avatar = "lemonslice-avatar-agent"
    else:
        extra["AVATAR_PROVIDER"] = "local"
        avatar = "local-avatar-agent"
    worker = WorkerProcess(
        worker_environment(livekit_server, agent_name, extra),
        cwd=tmp_path_factory.mktemp(f"turns-{provider}"),
    )
    try:
        await worker.start()
        yield Deployment(agent_name, worker, avatar)
    finally:
        await worker.stop()
        if emulator is not None:
            await emulator.aclose()


@dataclass
class Call:
    user: RoomUser
    agent: str  # the agent's identity

    def said_by_agent(self) -> list[Transcript]:
        return [t for t in self.user.transcripts if t.speaker == self.agent and t.final]

    async def greeting_heard(self) -> Transcript:
        return await self.user.wait_for_transcript(self.agent, GREETING_MARK, timeout=60)

    async def listening(self) -> None:
        await self.user.wait_for_attribute(self.agent, AGENT_STATE_ATTRIBUTE, "listening")


@asynccontextmanager
async def call_during_greeting(
    livekit_server: LiveKitServer, deployment: Deployment
) -> AsyncIterator[Call]:
    """A user (microphone on) in a room the agent was dispatched to, from the moment the agent
    speaks its greeting through the avatar; the user leaves at the end, which ends the job."""
    user = await RoomUser.join(livekit_server, f"room-turns-{uuid.uuid4().hex[:8]}")
    try:
        await user.start_microphone()
        async with server_api(livekit_server) as lk:
            await dispatch_to_workers(
                lk, deployment.agent_name, user.room.name, [deployment.worker]
            )
        agent = await user.wait_for_agent(timeout=60)
        avatar = job_avatar_identity(deployment.avatar, agent.identity)
        await user.wait_for_participant(identity=avatar, timeout=60)
        await user.wait_for_attribute(agent.identity, AGENT_STATE_ATTRIBUTE, "speaking", timeout=60)
        yield Call(user, agent.identity)
    finally:
        await user.leave()


async def test_a_message_typed_during_the_greeting_is_answered_after_it(
    livekit_server: LiveKitServer, deployment: Deployment
) -> None:
    async with call_during_greeting(livekit_server, deployment) as call:
        await call.user.send_chat("purple elephants dance on the moon")
        sent_at = time.monotonic()

        greeting = await call.greeting_heard()
        assert greeting.received_at > sent_at, "the message was typed after the greeting ended"
        answer = await call.user.wait_for_transcript(call.agent, "purple elephants", timeout=90)
        assert answer.text.strip() == "You said: purple elephants dance on the moon"
        assert answer.received_at > greeting.received_at

        await call.listening()
        answers = [t for t in call.said_by_agent() if "purple elephants" in t.text]
        assert len(answers) == 1, answers


async def test_a_sentence_spoken_during_the_greeting_is_answered_after_it(
    livekit_server: LiveKitServer, deployment: Deployment
) -> None:
    async with call_during_greeting(livekit_server, deployment) as call:
        question = spoken("hello, who are you?")
        said_at = await call.user.speak(question.data.tobytes(), question.sample_rate)

        greeting = await call.greeting_heard()
        assert greeting.received_at > said_at, "the sentence ended after the greeting did"
        await call.user.wait_for_transcript(call.agent, "", since=greeting.received_at, timeout=90)
        await call.listening()
        me = call.user.room.local_participant.identity
        heard = [t.text.strip() for t in call.user.transcripts if t.speaker == me and t.final]
        answers = [t.text for t in call.said_by_agent() if t.received_at > greeting.received_at]
        # Everything heard of it (tests/support/replies.py: not always every word) is answered
        # after the greeting, once, in order.
        assert heard, "nothing of the sentence was heard"
        assert answered_in_order(heard, answers), (heard, answers)


async def test_two_messages_typed_in_a_row_are_both_answered_in_order(
    livekit_server: LiveKitServer, deployment: Deployment
) -> None:
    async with call_during_greeting(livekit_server, deployment) as call:
        await call.greeting_heard()
        await call.listening()
        await call.user.send_chat("green turtles")
        await call.user.send_chat("orange bicycles")

        second = await call.user.wait_for_transcript(call.agent, "orange bicycles", timeout=60)
        first = await call.user.wait_for_transcript(call.agent, "green turtles", timeout=5)
        assert first.text.strip() == "You said: green turtles"
        assert second.text.strip() == "You said: orange bicycles"
        said = [(t.text, t.final, t.started_at, t.received_at) for t in call.said_by_agent()]
        assert first.started_at < second.started_at, said  # the first answer began first


async def test_an_over_long_message_gets_an_answer_that_states_the_limit(
    livekit_server: LiveKitServer, deployment: Deployment
) -> None:
    async with call_during_greeting(livekit_server, deployment) as call:
        await call.greeting_heard()
        await call.listening()
        await call.user.send_chat("la " * MAX_MESSAGE_CHARS)

        answer = await call.user.wait_for_transcript(
            call.agent, f"up to {MAX_MESSAGE_CHARS} characters", timeout=60
        )
        assert "too long" in answer.text
        assert not any("You said" in t.text for t in call.said_by_agent())


async def test_a_file_sent_as_a_message_is_told_it_is_not_read(
    livekit_server: LiveKitServer, deployment: Deployment
) -> None:
    async with call_during_greeting(livekit_server, deployment) as call:
        await call.greeting_heard()
        await call.listening()
        png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
        await call.user.room.local_participant.send_bytes(
            png, topic=CHAT_TOPIC, name="picture.png", mime_type="image/png"
        )

        await call.user.wait_for_transcript(call.agent, "only read text messages", timeout=60)
