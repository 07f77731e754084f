"""The meeting listener with the supervisor, a real LiveKit room and the emulator: it listens to the
current avatar session's meeting relay, follows the new session's relay after a restart (the old
one closed), and closes its relay when closed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from livekit import rtc

from providers.lemonslice.meeting_audio import INPUT_SAMPLE_RATE, MeetingAudioInput
from providers.lemonslice.meeting_listener import MeetingListener
from providers.lemonslice.meeting_relay import MeetingChat
from tests.providers.lemonslice.test_meeting_session import MEETING
from tests.support.avatar_launcher import LocalAvatarLauncher
from tests.support.emulators import LemonSliceEmulator
from tests.support.emulators._meetings import EmulatedMeeting
from tests.support.livekit_server import LiveKitServer
from tests.support.supervisor_harness import KEY, Harness, open_harness

TIMEOUT = 20.0


@pytest.fixture
async def harness(
    livekit_server: LiveKitServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> AsyncIterator[Harness]:
    monkeypatch.chdir(tmp_path)  # no developer .env
    async with open_harness(livekit_server, "listen") as harness:
        yield harness


async def until(meeting: EmulatedMeeting, check: Callable[[], bool]) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not check():
            meeting.changed.clear()
            await meeting.changed.wait()


async def test_the_relay_follows_the_current_avatar_and_closes_with_the_listener(
    harness: Harness,
) -> None:
    launcher = LocalAvatarLauncher()
    async with LemonSliceEmulator(api_key=KEY, avatar_launcher=launcher) as emulator:
        audio = MeetingAudioInput()
        chats: asyncio.Queue[MeetingChat] = asyncio.Queue()
        listener = MeetingListener(audio, chats.put_nowait)
        try:
            settings = harness.settings("lemonslice", emulator, **MEETING)
            supervisor = harness.start(settings, on_new_avatar=listener.follow)
            await harness.log.wait_for("joined")
            (first,) = emulator.meetings
            await first.wait_for_relay(1)

            await first.chat("Bob", "hello from the first meeting")
            async with asyncio.timeout(TIMEOUT):
                heard = await chats.get()
            assert (heard.sender, heard.text) == ("Bob", "hello from the first meeting")
            # stereo 16 kHz in, mono 24 kHz out (what RoomIO would give the agent)
            await first.say(bytes(2 * 2 * 1600), sample_rate=16000, channels=2)
            async with asyncio.timeout(TIMEOUT):
                frame: rtc.AudioFrame = await anext(audio)
            assert (frame.sample_rate, frame.num_channels) == (INPUT_SAMPLE_RATE, 1)

            # The avatar is lost and restarted: its new session joins again, the relay follows.
            await launcher.launched[0].crash()
            await harness.log.wait_for("recovered")
            _, second = emulator.meetings
            await second.wait_for_relay(1)
            await until(first, lambda: not first.present and not first.sockets)
            await second.chat("Carol", "hello from the second meeting")
            async with asyncio.timeout(TIMEOUT):
                heard = await chats.get()
            assert (heard.sender, heard.text) == ("Carol", "hello from the second meeting")
            assert first.relay_connections == 1
        finally:
            await listener.aclose()
        assert listener.relay is None
        await until(second, lambda: not second.sockets)
        assert second.present  # closing the listener is not leaving: the avatar session does that
        await supervisor.aclose()
        assert not second.present
