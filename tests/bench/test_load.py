"""The load benchmark's attribution of memory: job processes are found by the rooms they served."""

from __future__ import annotations

from bench.load import job_pids
from tests.support.worker import LogRecord


def test_job_processes_are_the_pids_logged_with_the_rooms_not_the_worker() -> None:
    records: list[LogRecord] = [
        {"message": "received job request", "room": "a", "pid": 100},
        {"message": "bench voice", "room": "a", "pid": 201},
        {"message": "process exiting", "room": "b", "pid": 202},
        {"message": "process exiting", "room": "other", "pid": 203},
    ]
    assert job_pids(records, {"a", "b"}, worker_pid=100) == {201, 202}
