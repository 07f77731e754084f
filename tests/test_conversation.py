"""End to end: the offline conversation, on a real livekit-server with the worker as a process.

No account and no model: the user speaks into a microphone track (recordings of eSpeak NG, see
tests/support/spoken.py) or types (lk.chat); the agent hears the speech with Silero VAD and PocketSphinx, the offline
responder answers, the agent speaks the answer through the avatar, and the transcripts of both sides
reach the user as lk.transcription. Speaking over a reply interrupts it at the avatar.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from livekit import rtc

from speech.responder import WHO_AM_I, reply_to
from tests.support.avatar_launcher import LocalAvatarLauncher
from tests.support.dispatch import dispatch_to_workers
from tests.support.emulators import LemonSliceEmulator
from tests.support.livekit_server import LiveKitServer, server_api
from tests.support.room_user import (
    AGENT_STATE_ATTRIBUTE,
    AUDIBLE_RMS,
    RoomUser,
    Transcript,
    job_avatar_identity,
)
from tests.support.spoken import spoken as recording
from tests.support.worker import running_worker

pytestmark = pytest.mark.e2e

# The providers' base identities; each job makes its avatar's unique (job_avatar_identity).
AVATAR = "local-avatar-agent"
LEMONSLICE_AVATAR = "lemonslice-avatar-agent"
LEMONSLICE_KEY = "ls-conversation-key-never-logged"

# Sentences PocketSphinx hears right in eSpeak NG's voice (see tests/speech/test_sphinx_stt.py).
WHO_ARE_YOU = "who are you"
HELLO_WHO_ARE_YOU = "hello, who are you?"


def spoken(text: str) -> tuple[bytes, int]:
    """`text` in eSpeak NG's en-us voice, recorded: 16-bit mono PCM and its sample rate."""
    frame = recording(text)
    return bytes(frame.data), frame.sample_rate


@asynccontextmanager
async def conversation(
    livekit_server: LiveKitServer, workdir: Path, env: Mapping[str, str], avatar: str
) -> AsyncIterator[tuple[RoomUser, rtc.RemoteParticipant]]:
    """A worker, and a user (microphone on) in a room the agent was dispatched to, after the
    greeting; the user leaves before the worker stops, which ends the job."""
    agent_name = f"e2e-talk-{uuid.uuid4().hex[:6]}"
    async with running_worker(livekit_server, agent_name, workdir, env) as worker:
        user = await RoomUser.join(livekit_server, f"room-talk-{uuid.uuid4().hex[:8]}")
        try:
            await user.start_microphone()
            async with server_api(livekit_server) as lk:
                await dispatch_to_workers(lk, agent_name, user.room.name, [worker])
            yield user, await greeted(user, avatar)
        finally:
            await user.leave()


async def greeted(user: RoomUser, avatar: str) -> rtc.RemoteParticipant:
    """Wait for the agent and its avatar, and for the greeting to end; returns the agent."""
    agent = await user.wait_for_agent(timeout=60)
    await user.wait_for_participant(identity=job_avatar_identity(avatar, agent.identity))
    # The greeting says what this is, in the transcript; then the agent listens.
    await user.wait_for_transcript(agent.identity, "offline voice", timeout=60)
    await user.wait_for_attribute(agent.identity, AGENT_STATE_ATTRIBUTE, "listening")
    return agent


async def test_spoken_and_typed_questions_get_spoken_answers_through_the_avatar(
    livekit_server: LiveKitServer, tmp_path: Path
) -> None:
    local = {"AVATAR_PROVIDER": "local"}
    async with conversation(livekit_server, tmp_path, local, AVATAR) as (user, agent):
        ear = await user.listen(job_avatar_identity(AVATAR, agent.identity))

        pcm, rate = spoken(WHO_ARE_YOU)
        said_at = await user.speak(pcm, rate)

        # What the agent heard, and what it answered, both as transcripts ...
        heard = await user.wait_for_transcript(user.room.local_participant.identity, "who")
        assert heard.text.strip().lower() == WHO_ARE_YOU
        answer = await user.wait_for_transcript(agent.identity, "avatar voice agent")
        assert answer.text.strip() == WHO_AM_I
        # ... and the answer spoken by the avatar, after the question.
        sound = await ear.first_sound_after(said_at, threshold=AUDIBLE_RMS)
        print(f"\nend of question -> first answer audio: {sound.received_at - said_at:.2f}s")
        assert all(p.kind != rtc.TrackKind.KIND_AUDIO for p in agent.track_publications.values())

        # Typing works beside speech (lk.chat): the reply is spoken by the avatar too.
        await user.wait_for_attribute(agent.identity, AGENT_STATE_ATTRIBUTE, "listening")
        typed_at = time.monotonic()
        await user.send_chat("purple elephants dance on the moon")
        await ear.first_sound_after(typed_at, threshold=AUDIBLE_RMS)
        reply = await user.wait_for_transcript(agent.identity, "purple elephants")
        assert reply.text.strip() == "You said: purple elephants dance on the moon"


async def test_speaking_over_a_reply_interrupts_it_at_the_avatar(
    livekit_server: LiveKitServer, tmp_path: Path
) -> None:
    """The avatar runs in this process (LemonSlice emulator), so what it received can be checked."""
    launcher = LocalAvatarLauncher()
    async with LemonSliceEmulator(api_key=LEMONSLICE_KEY, avatar_launcher=launcher) as emulator:
        provider = emulator.worker_settings("agent-e2e")
        talk = conversation(livekit_server, tmp_path, provider, LEMONSLICE_AVATAR)
        async with talk as (user, agent):
            avatar = launcher.launched[-1].participant
            assert avatar is not None
            ear = await user.listen(job_avatar_identity(LEMONSLICE_AVATAR, agent.identity))
            greeting_segments = avatar.stats.segments_started

            # A question with a long answer (about 8 s) ...
            pcm, rate = spoken(WHO_ARE_YOU)
            said_at = await user.speak(pcm, rate)
            # The avatar says the answer: sound from it, in a segment after the greeting's (the
            # greeting's tail can still be playing when the question ends, docs/first-word.md).
            heard_at = said_at
            async with asyncio.timeout(30):
                while avatar.stats.segments_started <= greeting_segments:
                    sound = await ear.first_sound_after(heard_at, threshold=AUDIBLE_RMS)
                    heard_at = sound.received_at
            assert avatar.stats.segments_interrupted == 0

            # ... and while the avatar says it, the user speaks again.
            pcm, rate = spoken(HELLO_WHO_ARE_YOU)
            said_again_at = await user.speak(pcm, rate)

            # The agent answers the new question; by then the avatar had been told to stop
            # (lk.clear_buffer) and had answered lk.playback_finished with interrupted=true,
            # which the agent's transcript of the cut-off answer reflects.
            def heard() -> list[str]:
                return [
                    t.text.strip().lower()
                    for t in user.transcripts
                    if t.speaker == user.room.local_participant.identity and t.final
                ]

            def answers() -> list[Transcript]:
                """The agent's final transcripts since the first question, in arrival order."""
                return [
                    t
                    for t in user.transcripts
                    if t.speaker == agent.identity and t.final and t.received_at > said_at
                ]

            def the_cut_answer() -> Transcript | None:
                return next((t for t in answers() if t.text.startswith("I am an avatar")), None)

            def answer_to_the_second_question() -> Transcript | None:
                # The next answer after the cut one. (Its words may be the same answer again:
                # PocketSphinx has heard the second question as just "who are you".)
                cut = the_cut_answer()
                if cut is None or len(heard()) < 2:
                    return None
                return next(
                    (t for t in answers() if t.received_at > max(cut.received_at, said_again_at)),
                    None,
                )

            def finals() -> list[tuple[str, str, float]]:
                """Every final transcript, by whom, and when after the second question ended."""
                return [
                    (t.speaker, t.text, round(t.received_at - said_again_at, 2))
                    for t in user.transcripts
                    if t.final
                ]

            try:
                second = await user.until(answer_to_the_second_question, timeout=60)
            except TimeoutError:
                raise AssertionError(f"no answer to the second question: {finals()}") from None
            # (the avatar's process reports its counters as they move)
            await avatar.wait_for_stats(lambda s: s.segments_interrupted >= 1, timeout=5)
            assert avatar.stats.input_sample_rates == (16000,)
            first = the_cut_answer()
            assert first is not None
            assert len(first.text.strip()) < len(WHO_AM_I), (avatar.stats, finals())
            # Speech recognised over WebRTC (Opus) is not bit-exact: PocketSphinx has heard the
            # second question as "hello hello who are you", "the pope who are", "who are you",
            # "hello" then "hello who are you", and "the ah ok" (answered at "the ah", the turn's
            # end found before its last word). The answer is the responder's answer to what was
            # heard, or to the part heard by then.
            assert heard()[0] == WHO_ARE_YOU, heard()
            answer, question = second.text.strip(), heard()[1]
            repeated = answer.removeprefix("You said: ").lower()
            # That answer can be cut in turn: the user still speaking after the recogniser's first
            # final ("hello", then "hello who are you") interrupts it; it is then its beginning.
            assert answer, finals()
            assert reply_to(question).startswith(answer) or (
                answer.startswith("You said: ") and question.startswith(repeated)
            ), (answer, heard())
