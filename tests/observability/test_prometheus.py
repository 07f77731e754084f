"""The Prometheus endpoint's setup, and the live gauge of a job process that died."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest, multiprocess, values
from prometheus_client.parser import text_string_to_metric_families

from config import Settings
from observability.prometheus import MULTIPROC_ENV, forget_dead_processes, prometheus_options

ROOT = Path(__file__).resolve().parents[2]

# A job process: one live session, one restart, then it waits to be killed.
JOB_PROCESS = """
import sys
from observability.avatar_metrics import RESTARTS, SESSIONS_LIVE
SESSIONS_LIVE.labels("anam").inc()
RESTARTS.labels("anam").inc()
print("counted", flush=True)
sys.stdin.read()
"""


def collected(directory: Path) -> dict[str, float]:
    """What the worker's endpoint would answer, by sample name (labels summed)."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def test_a_job_process_that_died_with_a_live_session_stops_counting_it(tmp_path: Path) -> None:
    env = {**os.environ, MULTIPROC_ENV: str(tmp_path), "PYTHONPATH": str(ROOT)}
    job = subprocess.Popen(  # noqa: S603 - this interpreter, our own script
        [sys.executable, "-c", JOB_PROCESS],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert job.stdout is not None and job.stdout.readline().strip() == "counted"
        assert collected(tmp_path)["avatar_sessions_live"] == 1
        assert forget_dead_processes(str(tmp_path)) == []  # it is alive: it still counts
        assert collected(tmp_path)["avatar_sessions_live"] == 1
    finally:
        job.kill()
        job.wait()
    assert collected(tmp_path)["avatar_sessions_live"] == 1  # dead, and still counted...
    assert forget_dead_processes(str(tmp_path)) == [job.pid]
    after = collected(tmp_path)
    assert after.get("avatar_sessions_live", 0) == 0  # ...until the worker forgets it
    assert after["avatar_restarts_total"] == 1  # what it counted stays counted


def test_no_port_no_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    assert prometheus_options(Settings.model_construct(prometheus_port=None)) == {}
    assert MULTIPROC_ENV not in os.environ


def test_a_port_sets_up_multiprocess_collection_in_the_given_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    monkeypatch.setattr(values, "ValueClass", values.ValueClass)  # restored after the test
    directory = tmp_path / "metrics"
    settings = Settings.model_construct(
        prometheus_port=9464, prometheus_multiproc_dir=str(directory)
    )
    options = prometheus_options(settings)
    assert options == {"prometheus_port": 9464, "prometheus_multiproc_dir": str(directory)}
    assert os.environ[MULTIPROC_ENV] == str(directory) and directory.is_dir()
    assert values.ValueClass is not values.MutexValue  # this process writes its values there too


def test_without_a_directory_each_worker_gets_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    monkeypatch.setattr(values, "ValueClass", values.ValueClass)
    settings = Settings.model_construct(prometheus_port=9464, prometheus_multiproc_dir=None)
    first = prometheus_options(settings)["prometheus_multiproc_dir"]
    monkeypatch.delenv(MULTIPROC_ENV)
    second = prometheus_options(settings)["prometheus_multiproc_dir"]
    assert first != second  # the worker empties it as it starts: never one shared by default
    os.rmdir(first)
    os.rmdir(second)
