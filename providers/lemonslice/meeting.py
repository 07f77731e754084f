"""Sending a LemonSlice avatar session into an external meeting, and taking it out again."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import timedelta

from ..session import LiveKitCredentials, describe
from .api import JoinedMeeting, LemonSliceAPI
from .meeting_token import DEFAULT_BROADCAST_TTL, mint_broadcast_token

logger = logging.getLogger("avatar.providers.lemonslice.meeting")


@dataclass(frozen=True)
class MeetingPlan:
    """Which meeting the avatar joins, under what name, and the LiveKit keys for its broadcast token."""

    meeting_url: str = field(repr=False)  # a meeting URL may carry its passcode
    livekit: LiveKitCredentials
    bot_name: str | None = None
    broadcast_ttl: timedelta = DEFAULT_BROADCAST_TTL


async def join(
    api: LemonSliceAPI,
    plan: MeetingPlan,
    *,
    session_id: str,
    room_name: str,
    livekit_url: str,
    deadline: float | None,
) -> JoinedMeeting:
    token = mint_broadcast_token(
        room_name,
        api_key=plan.livekit.api_key,
        api_secret=plan.livekit.api_secret,
        ttl=plan.broadcast_ttl,
    )
    return await api.join_meeting(
        session_id,
        meeting_url=plan.meeting_url,
        livekit_url=livekit_url,
        broadcast_token=token,
        bot_name=plan.bot_name,
        deadline=deadline,
    )


async def leave(
    api: LemonSliceAPI, session_id: str, meeting: JoinedMeeting, deadline: float
) -> None:
    """Leave, logging a failure: terminating the session after this still removes the bot."""
    try:
        await api.leave_meeting(session_id, meeting.meeting_bot_id, deadline=deadline)
    except (Exception, asyncio.CancelledError) as error:
        logger.warning(
            "could not take the lemonslice bot of session %s out of its meeting (%s); "
            "ending the session instead",
            session_id,
            describe(error),
            extra={"provider": "lemonslice", "provider_session_id": session_id},
        )
        if isinstance(error, asyncio.CancelledError):
            raise
