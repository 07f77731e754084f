"""The user's LiveKit access token: joining its room dispatches the agent (the token's room configuration)."""

from __future__ import annotations

from datetime import timedelta

from livekit import api


def user_token(
    *,
    api_key: str,
    api_secret: str,
    room: str,
    agent_name: str,
    identity: str,
    name: str | None = None,
    ttl: timedelta = timedelta(hours=2),
) -> str:
    """A JWT to join `room` as `identity`; the server dispatches `agent_name` when the room is created."""
    token = (
        api.AccessToken(api_key, api_secret)
        .with_identity(identity)
        .with_grants(api.VideoGrants(room_join=True, room=room))
        .with_room_config(
            api.RoomConfiguration(agents=[api.RoomAgentDispatch(agent_name=agent_name)])
        )
        .with_ttl(ttl)
    )
    if name is not None:
        token.with_name(name)
    return token.to_jwt()
