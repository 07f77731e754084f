"""The room's memory in its metadata: read back as written, other keys kept, nobody else's overwritten."""

from __future__ import annotations

import json

import pytest

from recovery.memory import (
    MEMORY_KEY,
    AvatarRecord,
    RoomMemory,
    UnsharedMetadataError,
    read_memory,
    write_memory,
)
from recovery.watcher import RecoveryWatcher, WatcherOptions, recovered_job, recovery_metadata

MEMORY = RoomMemory(
    job_id="AJ_1",
    agent_identity="agent-AJ_1",
    avatars=(AvatarRecord("lemonslice", "lemonslice-avatar-agent-1", "sess-9"),),
    claimed_at=1700000000.5,
    worker_health_url="http://10.0.0.5:8081/",
)


def test_the_memory_reads_back_as_written_and_other_keys_are_kept() -> None:
    metadata = write_memory(json.dumps({"theme": "dark"}), MEMORY)
    assert read_memory(metadata) == MEMORY
    assert json.loads(metadata)["theme"] == "dark"
    ended = write_memory(metadata, RoomMemory("AJ_1", "agent-AJ_1", "ended"))
    assert read_memory(ended) == RoomMemory("AJ_1", "agent-AJ_1", "ended")
    assert MEMORY_KEY not in json.loads(write_memory(ended, None))


def test_it_holds_no_secret_only_what_identifies_a_session() -> None:
    document = json.loads(write_memory("", MEMORY))[MEMORY_KEY]
    assert set(document) == {
        "job_id",
        "agent_identity",
        "state",
        "avatars",
        "claimed_at",
        "worker_health_url",
    }
    assert set(document["avatars"][0]) == {"provider", "identity", "session_id"}


@pytest.mark.parametrize("metadata", ["plain text", "[1, 2]", '"a string"'])
def test_someone_else_s_metadata_is_never_overwritten(metadata: str) -> None:
    assert read_memory(metadata) is None
    with pytest.raises(UnsharedMetadataError, match="not a JSON object"):
        write_memory(metadata, MEMORY)


@pytest.mark.parametrize(
    "metadata",
    ["", "{}", '{"avatar_agent": 3}', '{"avatar_agent": {"job_id": "AJ_1"}}', "{broken"],
)
def test_no_memory_or_a_malformed_one_reads_as_none(metadata: str) -> None:
    assert read_memory(metadata) is None


def test_a_recovery_dispatch_names_the_job_it_replaces() -> None:
    from livekit import api

    dispatch = api.AgentDispatch(metadata=recovery_metadata("AJ_7"))
    assert recovered_job(dispatch) == "AJ_7"
    assert recovered_job(api.AgentDispatch(metadata="")) is None
    assert recovered_job(api.AgentDispatch(metadata="not json")) is None


def test_every_room_has_exactly_one_first_watcher() -> None:
    watchers = [
        RecoveryWatcher(None, WatcherOptions("a", index=i, watchers=3))  # type: ignore[arg-type]
        for i in range(3)
    ]
    for room in (f"room-{n}" for n in range(50)):
        ranks = sorted(w.rank(room) for w in watchers)
        assert ranks == [0, 1, 2], room
