"""The emulator plays a meeting: its audio and chat reach the agent over the relay, a dropped relay
is reconnected, and leaving the meeting is what ends the stream."""

from __future__ import annotations

import asyncio
import struct

import aiohttp

from providers.lemonslice.api import LemonSliceAgent, LemonSliceAPI
from providers.lemonslice.meeting_audio import INPUT_SAMPLE_RATE, MeetingAudioInput
from providers.lemonslice.meeting_relay import MeetingChat, MeetingRelay
from providers.lemonslice.meeting_token import mint_broadcast_token
from providers.retry import RetryPolicy
from tests.providers.conftest import (
    FAST_POLICY,
    LEMONSLICE_KEY,
    LIVEKIT_API_KEY,
    LIVEKIT_API_SECRET,
    avatar_token,
    provider_http,
)
from tests.support.emulators import LemonSliceEmulator

STEP = 10.0  # bound on one awaited event, never a measured timing


async def test_the_meeting_is_heard_through_drops_until_the_bot_leaves(
    http_session: aiohttp.ClientSession, lemonslice_emulator: LemonSliceEmulator
) -> None:
    http = provider_http(http_session, "lemonslice", FAST_POLICY)
    lemonslice = LemonSliceAPI(
        http, api_key=LEMONSLICE_KEY, api_url=lemonslice_emulator.sessions_url
    )
    session_id = await lemonslice.start_agent_session(
        LemonSliceAgent(agent_id="agent-7"),
        livekit_url="wss://example.livekit.cloud",
        livekit_token=avatar_token(),
    )
    joined = await lemonslice.join_meeting(
        session_id,
        meeting_url="https://acme.webex.com/meet/room",
        livekit_url="wss://example.livekit.cloud",
        broadcast_token=mint_broadcast_token(
            "room-1", api_key=LIVEKIT_API_KEY, api_secret=LIVEKIT_API_SECRET
        ),
    )
    meeting = lemonslice_emulator.meeting(joined.meeting_bot_id)
    heard = MeetingAudioInput()
    chats: asyncio.Queue[MeetingChat] = asyncio.Queue()
    relay = MeetingRelay(
        http_session,
        joined.websocket_url,
        on_audio=heard.push,
        on_chat=chats.put_nowait,
        policy=RetryPolicy(base_delay=0.01, max_delay=0.05),
    )
    relay.start()
    try:
        async with asyncio.timeout(STEP):
            await meeting.wait_for_relay(1)
            # 100 ms of 48 kHz stereo speech (the resampler holds back its first few frames): the
            # agent hears it mono at its own rate
            for _ in range(10):
                await meeting.say(struct.pack("<hh", 300, 100) * 480, sample_rate=48000, channels=2)
            await meeting.chat("Bo", "can you hear me?")
            assert await chats.get() == MeetingChat(sender="Bo", text="can you hear me?")
            frame = await anext(heard)
        assert (frame.sample_rate, frame.num_channels) == (INPUT_SAMPLE_RATE, 1)

        await meeting.drop_relay()
        async with asyncio.timeout(STEP):
            await meeting.wait_for_relay(2)
            await meeting.chat("Bo", "still there?")
            assert (await chats.get()).text == "still there?"

        await lemonslice.leave_meeting(session_id, joined.meeting_bot_id)
        assert not meeting.present
    finally:
        await relay.aclose()
