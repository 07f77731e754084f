"""The benchmark's reading of the worker's log: when the pool is idle, which record is the start-up
trace and which of its fields are timings."""

from __future__ import annotations

from pathlib import Path

from bench.workers import numeric_fields, pool_is_idle, startup_trace
from tests.support.worker import LogRecord, WorkerProcess


def worker_with(records: list[LogRecord], tmp_path: Path) -> WorkerProcess:
    worker = WorkerProcess({}, cwd=tmp_path)
    worker.records.extend(records)
    return worker


def test_the_pool_is_idle_once_every_started_process_is_initialised(tmp_path: Path) -> None:
    worker = worker_with([{"message": "initializing process", "pid": 11}], tmp_path)
    assert not pool_is_idle(worker)
    worker.records.append({"message": "process initialized", "pid": 11})
    assert pool_is_idle(worker)


def test_the_start_up_trace_is_the_rooms_record_that_names_it(tmp_path: Path) -> None:
    trace = {"message": "Start-up trace", "room": "r1", "connected": 0.2}
    worker = worker_with(
        [
            {"message": "start-up trace", "room": "r0", "connected": 9.0},
            {"message": "avatar joined", "room": "r1"},
            trace,
        ],
        tmp_path,
    )
    assert startup_trace(worker, "r1", "start-up trace") is trace
    assert startup_trace(worker, "r2", "start-up trace") is None
    structured = {"message": "job began", "room": "r2", "avatar_event": "startup"}
    worker.records.append(structured)
    assert startup_trace(worker, "r2", "start-up trace") is structured


def test_numeric_fields_flatten_phases_and_skip_log_bookkeeping() -> None:
    record: LogRecord = {
        "message": "start-up trace",
        "pid": 4242,
        "code.line.number": 17,
        "total": 2.5,
        "ok": True,
        "phases": {"connected": 0.25, "avatar": {"joined": 1.5}, "label": "x"},
    }
    assert numeric_fields(record) == {
        "total": 2.5,
        "phases.connected": 0.25,
        "phases.avatar.joined": 1.5,
    }
