from __future__ import annotations

from datetime import timedelta

import jwt
import pytest
from livekit import api

from providers.token import AvatarTokenRequest, mint_avatar_token

KEY, SECRET = "devkey", "a-secret-long-enough-for-hs256-0123456789"


def mint(ttl: timedelta = timedelta(minutes=10), room: str = "support-42") -> str:
    return mint_avatar_token(
        AvatarTokenRequest(
            room_name=room,
            avatar_identity="lemonslice-avatar-agent",
            agent_identity="agent-AJ_xyz",
            ttl=ttl,
        ),
        api_key=KEY,
        api_secret=SECRET,
    )


def test_token_is_for_one_room_and_publishes_on_behalf_of_the_agent() -> None:
    claims = api.TokenVerifier(KEY, SECRET).verify(mint())
    assert claims.identity == "lemonslice-avatar-agent"
    assert claims.kind == "agent"
    assert claims.attributes == {"lk.publish_on_behalf": "agent-AJ_xyz"}
    video = claims.video
    assert video is not None
    assert video.room_join is True and video.room == "support-42"


def test_grants_are_no_wider_than_the_avatar_needs() -> None:
    video = api.TokenVerifier(KEY, SECRET).verify(mint()).video
    assert video is not None
    assert video.can_publish is True
    assert sorted(video.can_publish_sources or []) == ["camera", "microphone"]
    assert video.can_publish_data is True  # answers the agent's RPCs
    assert video.can_subscribe is False  # speech arrives as data streams, not tracks
    for admin_grant in ("room_create", "room_list", "room_record", "room_admin", "ingress_admin"):
        assert not getattr(video, admin_grant), admin_grant
    assert not video.can_update_own_metadata
    assert not video.hidden and not video.recorder


def test_the_display_name_is_the_one_asked_for_else_the_identity() -> None:
    named = mint_avatar_token(
        AvatarTokenRequest(
            room_name="support-42",
            avatar_identity="lemonslice-avatar-agent",
            avatar_name="Ada, the avatar",
            agent_identity="agent-AJ_xyz",
            ttl=timedelta(minutes=10),
        ),
        api_key=KEY,
        api_secret=SECRET,
    )
    assert api.TokenVerifier(KEY, SECRET).verify(named).name == "Ada, the avatar"
    assert api.TokenVerifier(KEY, SECRET).verify(mint()).name == "lemonslice-avatar-agent"


def test_ttl_is_the_one_asked_for() -> None:
    token = mint(ttl=timedelta(minutes=3))
    payload = jwt.decode(token, SECRET, algorithms=["HS256"], issuer=KEY)
    # livekit-api reads the clock once for nbf and again for exp, each to the second
    assert payload["exp"] - payload["nbf"] in (180, 181)


def test_a_token_signed_with_another_secret_does_not_verify() -> None:
    with pytest.raises(Exception, match="Signature"):
        api.TokenVerifier(KEY, "another-secret-0123456789abcdef0123").verify(mint())


def test_refuses_tokens_without_a_room_or_ttl() -> None:
    with pytest.raises(ValueError, match="one room"):
        mint(room="")
    with pytest.raises(ValueError, match="ttl"):
        mint(ttl=timedelta(0))
