"""The benchmark's reading of the worker's log: which job processes, when the pool is idle, which
record is the start-up trace and which of its fields are timings."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.harness import numeric_fields, pool_is_idle, startup_trace
from bench.load import job_pids
from bench.startup_ab import parse_args
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


def test_job_processes_are_the_pids_logged_with_the_rooms_not_the_worker() -> None:
    records: list[LogRecord] = [
        {"message": "received job request", "room": "a", "pid": 100},
        {"message": "bench voice", "room": "a", "pid": 201},
        {"message": "process exiting", "room": "b", "pid": 202},
        {"message": "process exiting", "room": "other", "pid": 203},
    ]
    assert job_pids(records, {"a", "b"}, worker_pid=100) == {201, 202}


def test_startup_ab_options() -> None:
    args = parse_args([])
    assert (args.runs, args.first_audio_latency, args.providers) == (
        20,
        [0.0, 0.8],
        ["lemonslice", "anam"],
    )
    args = parse_args(
        ["--providers", "anam", "--first-audio-latency", "0.5", "--anam-flows", "direct"]
    )
    assert (args.providers, args.first_audio_latency, args.anam_flows) == (
        ["anam"],
        [0.5],
        ["direct"],
    )
    for bad in (["--providers", "heygen"], ["--first-audio-latency", "-1"], ["--runs", "0"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
