"""End to end: the worker as a process, its LemonSlice avatar sent into an external meeting (the
emulator plays the meeting). The agent hears the meeting, not the room: the meeting's chat is
answered (the bot's own messages are not), the meeting's speech makes a user turn, and the bot
leaves the meeting when the job ends. The meeting URL (with its passcode) is never logged."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import numpy as np
import pytest
from livekit import rtc

from speech.responder import HELP, WHO_AM_I
from tests.support.avatar_launcher import LocalAvatarLauncher
from tests.support.dispatch import dispatch_to_workers
from tests.support.emulators import LemonSliceEmulator
from tests.support.emulators._meetings import EmulatedMeeting
from tests.support.livekit_server import LiveKitServer, server_api
from tests.support.room_user import AGENT_STATE_ATTRIBUTE, RoomUser, job_avatar_identity
from tests.support.spoken import SAMPLE_RATE, spoken
from tests.support.worker import running_worker

pytestmark = pytest.mark.e2e

LEMONSLICE_KEY = "ls-meeting-key-never-logged"
PASSCODE = "meeting-passcode-never-logged"
MEETING_URL = f"https://zoom.us/j/8812345678?pwd={PASSCODE}"
BOT_NAME = "Ava"
LEMONSLICE_AVATAR = "lemonslice-avatar-agent"
# The meeting's audio goes out as 100 ms frames, at the pace people speak.
FRAME_SECONDS = 0.1


async def until_left(meeting: EmulatedMeeting, *, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while meeting.present or meeting.sockets:
            meeting.changed.clear()
            await meeting.changed.wait()


async def speak_into(meeting: EmulatedMeeting, sentence: str) -> None:
    """`sentence` said in the meeting, followed by a second of silence (the end of the turn)."""
    speech = np.frombuffer(spoken(sentence).data, dtype=np.int16)
    pcm = np.concatenate([speech, np.zeros(SAMPLE_RATE, dtype=np.int16)]).tobytes()
    step = int(SAMPLE_RATE * FRAME_SECONDS) * 2
    for start in range(0, len(pcm), step):
        await meeting.say(pcm[start : start + step], sample_rate=SAMPLE_RATE)
        await asyncio.sleep(FRAME_SECONDS)  # a live source's pace, not a wait for anything


async def test_the_agent_answers_the_meeting_and_its_bot_leaves_with_the_job(
    livekit_server: LiveKitServer, tmp_path: Path
) -> None:
    launcher = LocalAvatarLauncher()
    async with LemonSliceEmulator(api_key=LEMONSLICE_KEY, avatar_launcher=launcher) as emulator:
        env = emulator.worker_settings("agent-e2e") | {
            "LEMONSLICE_MEETING_URL": MEETING_URL,
            "LEMONSLICE_MEETING_BOT_NAME": BOT_NAME,
        }
        agent_name = f"e2e-meeting-{uuid.uuid4().hex[:6]}"
        async with running_worker(livekit_server, agent_name, tmp_path, env) as worker:
            user = await RoomUser.join(livekit_server, f"room-meeting-{uuid.uuid4().hex[:8]}")
            try:
                async with server_api(livekit_server) as lk:
                    await dispatch_to_workers(lk, agent_name, user.room.name, [worker])
                agent = await user.wait_for_agent(timeout=60)
                avatar_identity = job_avatar_identity(LEMONSLICE_AVATAR, agent.identity)
                await user.wait_for_video(avatar_identity, timeout=60)
                await user.wait_for_transcript(agent.identity, "offline voice", timeout=60)
                # The agent's own voice (if the greeting began in it) is taken down once speech
                # goes to the avatar: the answer below is the avatar's.
                await user.wait_without_track(agent.identity, rtc.TrackKind.KIND_AUDIO, timeout=60)
                await user.wait_for_attribute(agent.identity, AGENT_STATE_ATTRIBUTE, "listening")
                avatar = launcher.launched[-1].participant
                assert avatar is not None
                segments_before = avatar.stats.segments_started
                (meeting,) = emulator.meetings
                assert (meeting.meeting_url, meeting.bot_name) == (MEETING_URL, BOT_NAME)
                await meeting.wait_for_relay(1)

                # Chat: the bot's own message is not answered; the next one is, sender named.
                await meeting.chat(BOT_NAME, "help")
                await meeting.chat("Alice", "who are you")
                answer = await user.wait_for_transcript(
                    agent.identity, "avatar voice agent", timeout=60
                )
                assert answer.text.strip() == WHO_AM_I
                # the avatar said it (its process reports its counters as they move)
                await avatar.wait_for_stats(
                    lambda s: s.segments_started > segments_before, timeout=10
                )
                # Messages are answered in order: an answer to the bot's would have come first.
                assert not any(HELP[:20] in t.text for t in user.transcripts)

                # Speech in the meeting is a user turn, published as the room user's transcript
                # (RoomIO's linked participant); what PocketSphinx makes of it may vary.
                await user.wait_for_attribute(agent.identity, AGENT_STATE_ATTRIBUTE, "listening")
                await speak_into(meeting, "who are you")
                heard = await user.wait_for_transcript(
                    user.room.local_participant.identity, "", timeout=60
                )
                assert heard.text.strip()
                print(f"\nthe meeting's speech, as the agent heard it: {heard.text!r}")
            finally:
                await user.leave()
            # The job ends with the user: the bot leaves the meeting, the relay is closed.
            await until_left(meeting, timeout=30)
        assert [r.json for r in emulator.requests_for("leave_meeting")] == [
            {"meeting_bot_id": meeting.meeting_bot_id}
        ]
        for secret in (PASSCODE, LEMONSLICE_KEY):
            assert not any(secret in line for line in worker.raw_output)
