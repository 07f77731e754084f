"""The agent subscribes to people's audio only, on a real livekit-server: not to an avatar's media.

People and avatars (participants of kind AGENT) publish before and after the agent connects. Once
the people's audio is subscribed, the agent must get none of the avatars' tracks within
`WINDOW` seconds. The control connects the way livekit-agents does by default, subscribing to
everything, and gets the avatars' tracks: the check can fail. And should the job's room be connected
subscribed to everything after all (livekit-agents' own connect winning the race), each avatar track
is let go as it arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from livekit import rtc

from subscriptions import connect_to_people
from tests.support.livekit_server import LiveKitServer, connect_participant, mint_token

# Seconds, after the people's audio is subscribed, in which no avatar track may come. With
# livekit-agents' default, the avatars' tracks mostly came before the people's audio here, and at
# most about 4 s after it.
WINDOW = 5.0


class Publisher:
    """A participant publishing an audio track, and a video track if it is an avatar."""

    def __init__(self, room: rtc.Room) -> None:
        self.room = room
        self.track_sids: set[str] = set()

    @classmethod
    async def join(
        cls, server: LiveKitServer, room: str, identity: str, *, avatar: bool
    ) -> Publisher:
        lk_room = await connect_participant(
            server,
            room,
            identity,
            kind="agent" if avatar else None,
            room_options=rtc.RoomOptions(auto_subscribe=False),
        )
        publisher = cls(lk_room)
        audio = rtc.LocalAudioTrack.create_audio_track("audio", rtc.AudioSource(48_000, 1))
        await publisher._publish(audio, rtc.TrackSource.SOURCE_MICROPHONE)
        if avatar:
            video = rtc.LocalVideoTrack.create_video_track("video", rtc.VideoSource(64, 64))
            await publisher._publish(video, rtc.TrackSource.SOURCE_CAMERA)
        return publisher

    async def _publish(self, track: rtc.LocalTrack, source: rtc.TrackSource.ValueType) -> None:
        publication = await self.room.local_participant.publish_track(
            track, rtc.TrackPublishOptions(source=source)
        )
        self.track_sids.add(publication.sid)


class Agent:
    """The agent's side of the room: which tracks it got subscribed to, in order."""

    def __init__(self) -> None:
        self.room = rtc.Room()
        self.subscribed: list[str] = []
        self.unsubscribed: list[str] = []
        self._changed = asyncio.Event()
        self.room.on("track_subscribed", self._on_subscribed)
        self.room.on("track_unsubscribed", self._on_unsubscribed)

    def _on_unsubscribed(
        self,
        track: rtc.RemoteTrack,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        self.unsubscribed.append(publication.sid)
        self._changed.set()

    def _on_subscribed(
        self,
        track: rtc.RemoteTrack,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        self.subscribed.append(publication.sid)
        self._changed.set()

    async def wait_subscribed(self, sids: set[str], timeout: float = 15.0) -> None:
        await self._until(lambda: sids <= set(self.subscribed), timeout)

    async def wait_unsubscribed(self, sids: set[str], timeout: float = 15.0) -> None:
        await self._until(lambda: sids <= set(self.unsubscribed), timeout)

    async def wait_any_subscribed(self, sids: set[str], timeout: float) -> None:
        await self._until(lambda: bool(sids & set(self.subscribed)), timeout)

    async def _until(self, condition: Callable[[], bool], timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


@contextlib.asynccontextmanager
async def rooms(*participants: rtc.Room) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await asyncio.gather(*(room.disconnect() for room in participants))


ConnectFactory = Callable[[Agent, LiveKitServer, str], Callable[[], Awaitable[None]]]


def connect_once(
    agent: Agent, server: LiveKitServer, room: str, *, auto_subscribe: bool
) -> Callable[[], Awaitable[None]]:
    """Connect the agent's room the first time only, as `JobContext.connect` does."""
    token = mint_token(server, "agent", room, kind="agent")
    options = rtc.RoomOptions(auto_subscribe=auto_subscribe)
    connecting: list[asyncio.Future[None]] = []

    async def connect() -> None:
        if not connecting:
            connecting.append(
                asyncio.ensure_future(agent.room.connect(server.ws_url, token, options))
            )
        await connecting[0]

    return connect


def ours(agent: Agent, server: LiveKitServer, room: str) -> Callable[[], Awaitable[None]]:
    return connect_to_people(agent.room, connect_once(agent, server, room, auto_subscribe=False))


def livekits_default(
    agent: Agent, server: LiveKitServer, room: str
) -> Callable[[], Awaitable[None]]:
    return connect_once(agent, server, room, auto_subscribe=True)


def ours_after_livekits_default(
    agent: Agent, server: LiveKitServer, room: str
) -> Callable[[], Awaitable[None]]:
    """The room connected subscribed to everything (as when `AgentSession.start`'s own connect
    wins the race in a job), with our policy on it."""
    return connect_to_people(agent.room, connect_once(agent, server, room, auto_subscribe=True))


@pytest.mark.parametrize("connect_with", [ours, livekits_default], ids=["ours", "control"])
async def test_the_agent_hears_people_and_not_the_avatars_media(
    livekit_server: LiveKitServer, connect_with: ConnectFactory
) -> None:
    room = f"subscriptions-{uuid.uuid4().hex[:8]}"
    person_before = await Publisher.join(livekit_server, room, "user", avatar=False)
    avatar_before = await Publisher.join(livekit_server, room, "avatar", avatar=True)
    agent = Agent()
    async with rooms(person_before.room, avatar_before.room, agent.room):
        connect = connect_with(agent, livekit_server, room)
        await connect()
        await connect()  # the job connects from two places; the second is a no-op
        avatar_after = await Publisher.join(livekit_server, room, "avatar-1", avatar=True)
        person_after = await Publisher.join(livekit_server, room, "second-user", avatar=False)
        async with rooms(avatar_after.room, person_after.room):
            people = person_before.track_sids | person_after.track_sids
            await agent.wait_subscribed(people)

            avatars = avatar_before.track_sids | avatar_after.track_sids
            if connect_with is ours:
                with pytest.raises(TimeoutError):
                    await agent.wait_any_subscribed(avatars, timeout=WINDOW)
                assert sorted(agent.subscribed) == sorted(people), "a track subscribed twice"
            else:
                await agent.wait_subscribed(avatars)


async def test_tracks_subscribed_by_a_connect_that_took_everything_are_let_go(
    livekit_server: LiveKitServer,
) -> None:
    room = f"subscriptions-{uuid.uuid4().hex[:8]}"
    person = await Publisher.join(livekit_server, room, "user", avatar=False)
    avatar_before = await Publisher.join(livekit_server, room, "avatar", avatar=True)
    agent = Agent()
    async with rooms(person.room, avatar_before.room, agent.room):
        await ours_after_livekits_default(agent, livekit_server, room)()
        avatar_after = await Publisher.join(livekit_server, room, "avatar-1", avatar=True)
        async with rooms(avatar_after.room):
            avatars = avatar_before.track_sids | avatar_after.track_sids
            await agent.wait_unsubscribed(avatars)  # each one let go as it came
            await agent.wait_subscribed(person.track_sids)

            assert not set(agent.unsubscribed) & person.track_sids
            heard = agent.room.remote_participants["user"].track_publications.values()
            assert all(publication.subscribed for publication in heard)
            for identity in ("avatar", "avatar-1"):
                publications = agent.room.remote_participants[identity].track_publications
                assert not any(p.subscribed for p in publications.values())
