"""Who is who in a room, as RoomService lists it."""

from __future__ import annotations

from livekit import api
from livekit.agents.voice.room_io import ATTRIBUTE_PUBLISH_ON_BEHALF


def is_live_agent(participant: api.ParticipantInfo) -> bool:
    """An agent participant that is not an avatar (an avatar publishes on an agent's behalf)."""
    return (
        participant.kind == api.ParticipantInfo.Kind.AGENT
        and ATTRIBUTE_PUBLISH_ON_BEHALF not in participant.attributes
    )


def is_person(participant: api.ParticipantInfo) -> bool:
    return participant.kind == api.ParticipantInfo.Kind.STANDARD
