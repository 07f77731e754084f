"""The agent's own audio track, published only while the agent speaks without its avatar.

While an avatar speaks for the agent, the agent publishes no audio: LiveKit's frontend components
take an agent's own microphone track over its avatar's, so a silent one would hide the avatar's
voice from visualisers. When the avatar is gone, this publishes the track RoomIO would have
(same name and source), so the frontend keeps showing the agent; when an avatar is back, it is
unpublished again.

Nothing here waits forever. RoomIO's output holds every frame until someone subscribes; here it
holds them `SUBSCRIBER_WAIT` seconds at most, then the agent speaks on its track whether anyone
listens yet or not (as an avatar does). A track that cannot be published makes every frame fail
at once with `OwnVoiceUnavailable`, which the speech router reports.
"""

from __future__ import annotations

import asyncio
import logging
import time

from livekit import rtc
from livekit.agents import utils

# RoomIO's own output: publishing, waiting for a subscriber, pacing, interruption and playout
# accounting are exactly what the agent's track needs; it is only published later than RoomIO would.
from livekit.agents.voice.room_io._output import _ParticipantAudioOutput

logger = logging.getLogger("avatar.own_voice")

TRACK_NAME = "roomio_audio"
SUBSCRIBER_WAIT = 3.0  # then speak anyway: a listener who subscribes later hears from then on
# A close waits this long for a publish in flight (the native client gives up on one the server
# never answers after 10 s), and an unpublish this long.
PUBLISH_SETTLE = 12.0
UNPUBLISH_TIMEOUT = 5.0


class OwnVoiceUnavailable(RuntimeError):
    """The agent's own track could not be published (or is closed): nothing said on it is heard."""


class _OwnTrackOutput(_ParticipantAudioOutput):
    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        # RoomIO's output awaits its subscription future bare: a capture given up on (an
        # interruption, the router's bound) would cancel the future itself, and every later frame
        # would fail. Shielded, only this wait ends.
        await asyncio.shield(self.subscribed)
        await super().capture_frame(frame)


class OwnVoice:
    def __init__(
        self, room: rtc.Room, *, sample_rate: int, subscriber_wait: float = SUBSCRIBER_WAIT
    ) -> None:
        self._room = room
        self._subscriber_wait = subscriber_wait
        self.output = _OwnTrackOutput(
            room,
            sample_rate=sample_rate,
            num_channels=1,
            track_publish_options=rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE),
            track_name=TRACK_NAME,
        )
        # Set while the native publish call is under way: it is never cancelled half-way (the
        # track would go up with nobody left to take it down), only waited for.
        self._publish_in_flight = False
        self._publish_answered = asyncio.Event()
        self._starting: asyncio.Future[None] | None = None  # the output's publish + subscriber wait
        room.on("local_track_published", self._on_local_track_published)
        self._publishing = asyncio.create_task(self._publish(), name="own-voice-publish")

    @property
    def _publication(self) -> rtc.LocalTrackPublication | None:
        return self.output._publication

    def _on_local_track_published(self, publication: rtc.LocalTrackPublication, *_: object) -> None:
        # RoomIO's output has stored its publication by the time the room announces it.
        if self._publication is not None and publication.sid == self._publication.sid:
            self._publish_answered.set()

    async def _publish(self) -> None:
        await _connected(self._room)  # the fallback can come before the agent has joined
        started = time.monotonic()
        self._publish_in_flight = True
        self._starting = starting = asyncio.ensure_future(self.output.start())
        starting.add_done_callback(lambda _: self._publish_answered.set())
        try:
            try:
                async with asyncio.timeout(PUBLISH_SETTLE):
                    await self._publish_answered.wait()
            except TimeoutError:
                if self._publication is None:
                    raise OwnVoiceUnavailable(
                        f"no answer to the publish after {PUBLISH_SETTLE:.0f}s"
                    ) from None
            self._publish_in_flight = False
            if starting.done() and not starting.cancelled() and starting.exception() is not None:
                await starting  # the publish failed: raise its error
            done, _ = await asyncio.wait({starting}, timeout=self._subscriber_wait)
            if not done:
                logger.warning(
                    "nobody subscribed to the agent's own audio track after %.0fs; "
                    "it speaks on it anyway",
                    self._subscriber_wait,
                )
                self._open(None)
                await starting
            logger.info(
                "the agent speaks on its own audio track (subscribed after %.2fs)",
                time.monotonic() - started,
            )
        except asyncio.CancelledError:
            raise
        except Exception as error:
            logger.error("could not publish the agent's own audio track: %r", error)
            self._open(
                OwnVoiceUnavailable(f"the agent's own audio track was not published: {error}")
            )

    def _open(self, error: BaseException | None) -> None:
        """Let frames through (to the track), or make each one fail with `error`."""
        subscribed = self.output.subscribed
        if subscribed.done():
            return
        if error is None:
            subscribed.set_result(None)
        else:
            subscribed.set_exception(error)
            subscribed.exception()  # a failure nobody captured since is not worth a GC warning

    async def aclose(self) -> None:
        """Unpublish the track (after a publish in flight has answered, bounded) and stop."""
        if self._publish_in_flight and self._room.isconnected():
            try:
                async with asyncio.timeout(PUBLISH_SETTLE):
                    await self._publish_answered.wait()
            except TimeoutError:
                logger.error(
                    "a publish of the agent's own track had no answer after %.0fs; "
                    "the track may stay up until the agent leaves",
                    PUBLISH_SETTLE,
                )
        self._room.off("local_track_published", self._on_local_track_published)
        await utils.aio.cancel_and_wait(self._publishing)
        if self._starting is not None:
            # past the native call now (or given up on): what is left is the subscriber wait
            await utils.aio.cancel_and_wait(self._starting)
        self._open(OwnVoiceUnavailable("the agent's own audio track is closed"))
        publication = self._publication
        if publication is not None and self._room.isconnected():
            try:
                async with asyncio.timeout(UNPUBLISH_TIMEOUT):
                    await self._room.local_participant.unpublish_track(publication.sid)
            except Exception as error:
                logger.warning("could not unpublish the agent's own audio track: %r", error)
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
