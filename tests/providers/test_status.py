"""What a frontend is told of the avatar, event by event (the attributes themselves are checked on
a real room in tests/test_lifecycle.py and by the page in tests/web/)."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
from livekit import api, rtc
from livekit.agents.metrics.base import Metadata

from providers.lifecycle import AvatarLifecycleMetrics
from providers.status import (
    REASON_ATTRIBUTE,
    STATUS_ATTRIBUTE,
    AvatarStatusAttributes,
    status_of,
)
from tests.support.livekit_server import LiveKitServer, connect_participant, server_api


def event(
    name: str, *, attempt: int | None = None, reason: str | None = None
) -> AvatarLifecycleMetrics:
    return AvatarLifecycleMetrics(
        timestamp=0.0,
        event=name,
        attempt=attempt,
        reason=reason,
        metadata=Metadata(model_provider="anam"),
    )


@pytest.mark.parametrize(
    ("lifecycle", "status"),
    [
        (event("starting", attempt=0), ("starting", "")),
        (event("starting", attempt=2), ("restarting", "")),
        (event("joined", attempt=0), ("joined", "")),
        (event("recovered", attempt=1), ("joined", "")),
        (
            event("failed", attempt=0, reason="PaymentRequiredError: anam failed: 402"),
            ("unavailable", "PaymentRequiredError: anam failed: 402"),
        ),
        (event("failed"), ("unavailable", "the avatar could not start")),
        (event("left", reason="stopped its video"), ("lost", "stopped its video")),
        (event("unconfirmed", reason="late"), None),
        (event("removed", reason="stray"), None),
        # a planned renewal is no fault: the page keeps showing the avatar joined
        (event("renewing", reason="cap near"), None),
        (event("renewed"), None),
        (event("renewal_failed", reason="PaymentRequiredError: 402"), None),
        (event("startup"), None),
        (event("ended"), None),
    ],
)
def test_each_event_sets_the_status_a_frontend_needs(
    lifecycle: AvatarLifecycleMetrics, status: tuple[str, str] | None
) -> None:
    assert status_of(lifecycle) == status


def test_a_reason_never_carries_a_token_and_stays_short() -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhdmF0YXIifQ.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"
    failed = event("failed", reason=f"RuntimeError: could not join with {jwt} " + "x" * 500)
    status = status_of(failed)
    assert status is not None
    assert "eyJ" not in status[1] and "c2lnbmF0dXJl" not in status[1]
    assert status[1].startswith("RuntimeError: could not join with ***")
    assert len(status[1]) <= 200


@pytest.mark.parametrize("changed_meanwhile", [False, True], ids=["same", "newer"])
async def test_a_status_the_server_refused_is_sent_again_until_it_is_taken(
    livekit_server: LiveKitServer, changed_meanwhile: bool
) -> None:
    """A failed `set_attributes` is retried, not left until the next change; when the status
    changed meanwhile, the latest one is what is sent."""
    room_name = f"status-{uuid.uuid4().hex[:8]}"
    agent = await connect_participant(
        livekit_server,
        room_name,
        "status-agent",
        kind="agent",
        grants=api.VideoGrants(room_join=True, can_update_own_metadata=True),
    )
    user = await connect_participant(livekit_server, room_name, "status-user")
    status = AvatarStatusAttributes(agent, _connected)
    expected = ("lost", "stopped its video") if changed_meanwhile else ("unavailable", "no plan")
    seen = asyncio.Event()
    refusals = Refusals()
    logging.getLogger("avatar.status").addHandler(refusals)

    def on_attributes(changed: dict[str, str], participant: rtc.Participant) -> None:
        if participant.attributes.get(STATUS_ATTRIBUTE) == expected[0]:
            seen.set()

    user.on("participant_attributes_changed", on_attributes)
    try:
        async with server_api(livekit_server) as lk:
            refused = api.ParticipantPermission(
                can_subscribe=True, can_publish=True, can_publish_data=True
            )
            await lk.room.update_participant(
                api.UpdateParticipantRequest(
                    room=room_name, identity="status-agent", permission=refused
                )
            )
            await _permission_arrived(agent, can_update_metadata=False)
            status(event("starting", attempt=0))
            status(event("failed", attempt=0, reason="no plan"))
            await asyncio.wait_for(refusals.first.wait(), 10)  # the server refused it once
            if changed_meanwhile:
                status(event("left", reason="stopped its video"))
            assert not seen.is_set()
            allowed = api.ParticipantPermission(
                can_subscribe=True,
                can_publish=True,
                can_publish_data=True,
                can_update_metadata=True,
            )
            await lk.room.update_participant(
                api.UpdateParticipantRequest(
                    room=room_name, identity="status-agent", permission=allowed
                )
            )
        await asyncio.wait_for(seen.wait(), 15)
        attributes = user.remote_participants["status-agent"].attributes
        assert attributes[REASON_ATTRIBUTE] == expected[1]
    finally:
        logging.getLogger("avatar.status").removeHandler(refusals)
        user.off("participant_attributes_changed", on_attributes)
        await status.aclose()
        await user.disconnect()
        await agent.disconnect()


class Refusals(logging.Handler):
    """The status publisher's warnings: each one a refused `set_attributes`."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.first = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.first.set()


async def _connected() -> None:
    return None


async def _permission_arrived(room: rtc.Room, *, can_update_metadata: bool) -> None:
    arrived = asyncio.Event()

    def on_changed(*_: object) -> None:
        permissions = room.local_participant.permissions
        if permissions is not None and permissions.can_update_metadata == can_update_metadata:
            arrived.set()

    room.on("participant_permissions_changed", on_changed)
    try:
        on_changed()
        await asyncio.wait_for(arrived.wait(), 10)
    finally:
        room.off("participant_permissions_changed", on_changed)
