"""What the agent's job subscribes to: the audio of the people in the room, nothing else.

livekit-agents subscribes to every track by default. The avatar's video and audio would then be
received and decoded in the agent's process for the whole call, though nothing there uses them (the
user gets them from the room; the avatar's supervisor watches publications, not media). Measured with
`bench.job_cpu`: subscribed to people only, a job process used 0.77 instead of 1.30 CPU-seconds over
the dispatch and 10 s of call (the avatar's video at 640x480, 24 fps). Avatars and other agents join
as participants of kind AGENT; everyone else is a person the agent may hear.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from livekit import rtc


def is_heard(participant: rtc.RemoteParticipant, publication: rtc.RemoteTrackPublication) -> bool:
    return (
        publication.kind == rtc.TrackKind.KIND_AUDIO
        and participant.kind != rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
    )


def connect_to_people(
    room: rtc.Room, connect_unsubscribed: Callable[[], Awaitable[None]]
) -> Callable[[], Awaitable[None]]:
    """Wrap a connect of `room` that subscribes to nothing (in a job:
    `ctx.connect(auto_subscribe=AutoSubscribe.SUBSCRIBE_NONE)`) into one that subscribes to each
    person's audio, present or published later. Call before connecting; the returned connect may
    be awaited more than once.

    Should the room be connected by someone else first, subscribed to everything (livekit-agents'
    `AgentSession.start` connects the job's room with its default when it gets there first), each
    track that is not a person's audio is unsubscribed as it arrives."""

    def subscribe(
        publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
    ) -> None:
        if is_heard(participant, publication) and not publication.subscribed:
            publication.set_subscribed(True)

    def unsubscribe_unheard(
        track: rtc.RemoteTrack,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        if not is_heard(participant, publication):
            publication.set_subscribed(False)

    room.on("track_published", subscribe)
    room.on("track_subscribed", unsubscribe_unheard)

    async def connect() -> None:
        await connect_unsubscribed()
        # Tracks published before the connect arrive with the room's state, not as events.
        for participant in list(room.remote_participants.values()):
            for publication in list(participant.track_publications.values()):
                subscribe(publication, participant)

    return connect
