"""The agent's own audio track, published only while the agent speaks without its avatar.

While an avatar speaks for the agent, the agent publishes no audio: LiveKit's frontend components
take an agent's own microphone track over its avatar's, so a silent one would hide the avatar's
voice from visualisers. When the avatar is gone, this publishes the track RoomIO would have
(same name and source), so the frontend keeps showing the agent; when an avatar is back, it is
unpublished again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from livekit import rtc
from livekit.agents import utils

# RoomIO's own output: publishing, waiting for a subscriber, pacing, interruption and playout
# accounting are exactly what the agent's track needs; it is only published later than RoomIO would.
from livekit.agents.voice.room_io._output import _ParticipantAudioOutput

logger = logging.getLogger("avatar.own_voice")

TRACK_NAME = "roomio_audio"
SUBSCRIBER_WAIT = 3.0  # then say so: the agent's speech waits for someone to hear it


class OwnVoice:
    def __init__(self, room: rtc.Room, *, sample_rate: int) -> None:
        self._room = room
        self.output = _ParticipantAudioOutput(
            room,
            sample_rate=sample_rate,
            num_channels=1,
            track_publish_options=rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE),
            track_name=TRACK_NAME,
        )
        # Publishing waits for a subscriber; frames captured meanwhile wait in the output.
        self._publishing = asyncio.create_task(self._publish(), name="own-voice-publish")

    async def _publish(self) -> None:
        try:
            await _connected(self._room)  # the fallback can come before the agent has joined
            started = time.monotonic()
            publishing = asyncio.ensure_future(self.output.start())
            done, _ = await asyncio.wait({publishing}, timeout=SUBSCRIBER_WAIT)
            if not done:
                published = any(
                    p.name == TRACK_NAME
                    for p in self._room.local_participant.track_publications.values()
                )
                logger.warning(
                    "the agent's own audio track is %s but nobody subscribed after %.0fs",
                    "published" if published else "not published",
                    SUBSCRIBER_WAIT,
                )
            await publishing
            logger.info(
                "the agent speaks on its own audio track (subscribed after %.2fs)",
                time.monotonic() - started,
            )
        except Exception as error:
            logger.error("could not publish the agent's own audio track: %r", error)

    async def aclose(self) -> None:
        """Unpublish the track and stop the output."""
        await utils.aio.cancel_and_wait(self._publishing)
        if self._room.isconnected():
            for publication in list(self._room.local_participant.track_publications.values()):
                if publication.name == TRACK_NAME:
                    with contextlib.suppress(Exception):
                        await self._room.local_participant.unpublish_track(publication.sid)
        await self.output.aclose()


async def _connected(room: rtc.Room) -> None:
    if room.isconnected():
        return
    connected = asyncio.get_running_loop().create_future()

    def on_state(state: rtc.ConnectionState.ValueType) -> None:
        if state == rtc.ConnectionState.CONN_CONNECTED and not connected.done():
            connected.set_result(None)

    room.on("connection_state_changed", on_state)
    try:
        if not room.isconnected():
            await connected
    finally:
        room.off("connection_state_changed", on_state)
