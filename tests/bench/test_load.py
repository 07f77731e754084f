"""The load benchmark's attribution of memory: job processes are found by the rooms they served."""

from __future__ import annotations

from bench.load import job_pids, parse_args, worker_extra
from tests.support.worker import LogRecord


def test_job_processes_are_the_pids_logged_with_the_rooms_not_the_worker() -> None:
    records: list[LogRecord] = [
        {"message": "received job request", "room": "a", "pid": 100},
        {"message": "bench voice", "room": "a", "pid": 201},
        {"message": "process exiting", "room": "b", "pid": 202},
        {"message": "process exiting", "room": "other", "pid": 203},
    ]
    assert job_pids(records, {"a", "b"}, worker_pid=100) == {201, 202}


def test_our_worker_gets_the_join_timeout_only_when_asked() -> None:
    assert "AVATAR_JOIN_TIMEOUT" not in worker_extra(parse_args([]))
    extra = worker_extra(parse_args(["--avatar-join-timeout", "60", "--sessions", "12"]))
    assert extra == {"AGENT_MAX_JOBS": "12", "AVATAR_JOIN_TIMEOUT": "60"}
