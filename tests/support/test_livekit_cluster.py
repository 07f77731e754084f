"""The cluster fixture itself: two real livekit-server nodes that share one Redis are one LiveKit."""

from __future__ import annotations

import uuid

import pytest
from livekit import api

from tests.support.livekit_cluster import LiveKitCluster
from tests.support.livekit_server import server_api
from tests.support.room_user import RoomUser

pytestmark = pytest.mark.e2e


async def test_a_room_created_on_one_node_is_seen_from_the_other(
    livekit_cluster: LiveKitCluster,
) -> None:
    first, second = livekit_cluster.nodes
    room = f"cluster-{uuid.uuid4().hex[:8]}"
    async with server_api(first) as lk_first, server_api(second) as lk_second:
        await lk_first.room.create_room(api.CreateRoomRequest(name=room, empty_timeout=30))
        try:
            seen = await lk_second.room.list_rooms(api.ListRoomsRequest(names=[room]))
            assert [r.name for r in seen.rooms] == [room]
        finally:
            await lk_second.room.delete_room(api.DeleteRoomRequest(room=room))
        assert not (await lk_first.room.list_rooms(api.ListRoomsRequest(names=[room]))).rooms


async def test_a_participant_on_each_node_sees_the_other(livekit_cluster: LiveKitCluster) -> None:
    first, second = livekit_cluster.nodes
    room = f"cluster-{uuid.uuid4().hex[:8]}"
    alice = await RoomUser.join(first, room, identity="alice")
    try:
        bob = await RoomUser.join(second, room, identity="bob")
        try:
            await alice.wait_for_participant(identity="bob", timeout=15)
            await bob.wait_for_participant(identity="alice", timeout=15)
            async with server_api(second) as lk:
                listed = await lk.room.list_participants(api.ListParticipantsRequest(room=room))
            assert sorted(p.identity for p in listed.participants) == ["alice", "bob"]
        finally:
            await bob.leave()
        await alice.wait_until_gone("bob", timeout=15)
    finally:
        await alice.leave()
