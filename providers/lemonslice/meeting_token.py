"""The token LemonSlice's meeting bot uses to watch the avatar in our room and show it in the meeting."""

from __future__ import annotations

from datetime import timedelta

from livekit import api

BROADCAST_IDENTITY = "lemonslice-meeting-broadcast"
# A meeting can last hours; the bot may rejoin our room (a reconnect) as long as it is in the meeting.
DEFAULT_BROADCAST_TTL = timedelta(hours=4)


def broadcast_grants(room_name: str) -> api.VideoGrants:
    """Subscribe in one room, nothing else: it publishes nothing, and no one in the room sees it."""
    return api.VideoGrants(
        room_join=True,
        room=room_name,
        can_subscribe=True,
        can_publish=False,
        can_publish_data=False,
        can_publish_sources=[],
        can_update_own_metadata=False,
        hidden=True,
        room_create=False,
        room_list=False,
        room_record=False,
        room_admin=False,
        ingress_admin=False,
        recorder=False,
        agent=False,
    )


def mint_broadcast_token(
    room_name: str, *, api_key: str, api_secret: str, ttl: timedelta = DEFAULT_BROADCAST_TTL
) -> str:
    if not room_name:
        raise ValueError("room_name is required: a broadcast token is valid for one room only")
    if ttl <= timedelta(0):
        raise ValueError("ttl must be positive")
    return (
        api.AccessToken(api_key=api_key, api_secret=api_secret)
        .with_identity(BROADCAST_IDENTITY)
        .with_name(BROADCAST_IDENTITY)
        .with_grants(broadcast_grants(room_name))
        .with_ttl(ttl)
        .to_jwt()
    )
