"""The avatar participant's LiveKit access token: one room, short-lived, no more rights than it uses."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from livekit import api
from livekit.agents.voice.room_io import ATTRIBUTE_PUBLISH_ON_BEHALF

# The avatar publishes a camera and a microphone track, and answers the agent's RPCs (data packets).
# It receives the agent's speech as data streams, so it subscribes to no media track.
AVATAR_PUBLISH_SOURCES = ("camera", "microphone")


@dataclass(frozen=True)
class AvatarTokenRequest:
    room_name: str
    avatar_identity: str
    agent_identity: str
    ttl: timedelta
    avatar_name: str | None = None


def avatar_grants(room_name: str) -> api.VideoGrants:
    return api.VideoGrants(
        room_join=True,
        room=room_name,
        can_publish=True,
        can_publish_sources=list(AVATAR_PUBLISH_SOURCES),
        can_publish_data=True,
        can_subscribe=False,
        can_update_own_metadata=False,
        room_create=False,
        room_list=False,
        room_record=False,
        room_admin=False,
        ingress_admin=False,
        hidden=False,
        recorder=False,
        agent=False,
    )


def mint_avatar_token(request: AvatarTokenRequest, *, api_key: str, api_secret: str) -> str:
    """A JWT of kind `agent` for exactly one room that publishes on behalf of the agent."""
    if not request.room_name:
        raise ValueError("room_name is required: an avatar token is valid for one room only")
    if request.ttl <= timedelta(0):
        raise ValueError("ttl must be positive")
    return (
        api.AccessToken(api_key=api_key, api_secret=api_secret)
        .with_kind("agent")
        .with_identity(request.avatar_identity)
        .with_name(request.avatar_name or request.avatar_identity)
        .with_grants(avatar_grants(request.room_name))
        .with_attributes({ATTRIBUTE_PUBLISH_ON_BEHALF: request.agent_identity})
        .with_ttl(request.ttl)
        .to_jwt()
    )
