"""The workers under test as processes (ours and the reference), and what their logs tell the bench:
when a job has ended, when the idle pool is ready, whether the bench's voice was in use, the
start-up trace."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from livekit import api

from bench.emulation import (
    ROOT,
    Conditions,
    Provider,
    RemoteProvider,
    conditions_from,
    provider_in_own_process,
)
from bench.voice import FIRST_AUDIO_LATENCY_ENV, LOG_MESSAGE
from tests.support.livekit_server import LiveKitServer, server_api, server_binary_path
from tests.support.worker import LogRecord, WorkerProcess, worker_environment

JOB_END_TIMEOUT = 60.0


def _bench_environment(
    server: LiveKitServer, agent_name: str, conditions: Conditions, extra: Mapping[str, str]
) -> dict[str, str]:
    return worker_environment(
        server,
        agent_name,
        {
            "PYTHONPATH": str(ROOT),
            FIRST_AUDIO_LATENCY_ENV: repr(conditions.first_audio_latency),
            **extra,
        },
    )


def our_worker(
    server: LiveKitServer,
    provider: Provider,
    settings: Mapping[str, str],
    conditions: Conditions,
    workdir: Path,
    *,
    extra: Mapping[str, str] | None = None,
) -> tuple[str, WorkerProcess]:
    """Our agent.py (through bench/our_worker.py, for the voice) for this provider."""
    agent_name = f"bench-ours-{uuid.uuid4().hex[:6]}"
    env = _bench_environment(
        server,
        agent_name,
        conditions,
        {"AVATAR_PROVIDER": provider, **settings, **(extra or {})},
    )
    return agent_name, WorkerProcess(
        env, cwd=workdir, command=[sys.executable, "-m", "bench.our_worker", "start"]
    )


def reference_worker(
    server: LiveKitServer,
    provider: Provider,
    settings: Mapping[str, str],
    conditions: Conditions,
    workdir: Path,
    *,
    extra: Mapping[str, str] | None = None,
) -> tuple[str, WorkerProcess]:
    """The reference on the official plugin for this provider."""
    agent_name = f"bench-reference-{uuid.uuid4().hex[:6]}"
    env = _bench_environment(
        server,
        agent_name,
        conditions,
        {"REFERENCE_PROVIDER": provider, **settings, **(extra or {})},
    )
    return agent_name, WorkerProcess(
        env, cwd=workdir, command=[sys.executable, "-m", "bench.reference_agent", "start"]
    )


# -- the worker's log ------------------------------------------------------------------------------


def _count(worker: WorkerProcess, message: str) -> int:
    return sum(1 for record in worker.records if record.get("message") == message)


def logged_at(worker: WorkerProcess, message: str, room: str | None = None) -> float | None:
    """Wall-clock time (time.time()) of the worker's first record with this message (and room)."""
    for record in worker.records:
        if record.get("message") != message or (room is not None and record.get("room") != room):
            continue
        stamp = record.get("timestamp")
        if isinstance(stamp, str):
            return datetime.fromisoformat(stamp).timestamp()
    return None


def pool_is_idle(worker: WorkerProcess) -> bool:
    """Every job process the worker started has finished initialising."""
    return _count(worker, "initializing process") == _count(worker, "process initialized")


def voice_uses(worker: WorkerProcess) -> int:
    """Syntheses by the bench's voice so far (proof that the voice under test is the one in use)."""
    return _count(worker, LOG_MESSAGE)


async def wait_job_ended(worker: WorkerProcess, room: str) -> None:
    """Until the job's process has exited and the worker's pool of idle processes is ready again,
    so that one run's tail does not eat into the next run's CPU."""
    await worker.wait_for_log(
        lambda r: r.get("message") == "process exiting" and r.get("room") == room,
        timeout=JOB_END_TIMEOUT,
    )
    await worker.wait_until(lambda: pool_is_idle(worker), timeout=JOB_END_TIMEOUT)


async def wait_pool_ready(worker: WorkerProcess) -> None:
    await worker.wait_until(
        lambda: _count(worker, "process initialized") > 0 and pool_is_idle(worker),
        timeout=JOB_END_TIMEOUT,
    )


def startup_trace(worker: WorkerProcess, room: str, marker: str) -> LogRecord | None:
    """The worker's start-up trace record for the job in `room`, if it logs one: a record whose
    `avatar_event` is "startup", or whose message contains `marker`."""
    marker = marker.lower()
    for record in worker.records:
        if record.get("room") != room:
            continue
        if (
            record.get("avatar_event") == "startup"
            or marker in str(record.get("message", "")).lower()
        ):
            return record
    return None


# Numbers every JSON log record carries, which say nothing about the job.
_LOG_BOOKKEEPING = frozenset({"pid", "code.line.number"})


def numeric_fields(record: LogRecord, prefix: str = "") -> dict[str, float]:
    """The record's numbers, nested objects flattened to dotted names (phase timings, whatever their shape)."""
    found: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool) or name in _LOG_BOOKKEEPING:
            continue
        if isinstance(value, int | float):
            found[name] = float(value)
        elif isinstance(value, dict):
            found.update(numeric_fields(value, prefix=f"{name}."))
    return found


# -- processes ------------------------------------------------------------------------------------


async def start_all(workers: Sequence[WorkerProcess]) -> None:
    await asyncio.gather(*(worker.start() for worker in workers))
    await asyncio.gather(*(wait_pool_ready(worker) for worker in workers))


async def stop_all(workers: Sequence[WorkerProcess]) -> None:
    results = await asyncio.gather(*(worker.stop() for worker in workers), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            print(f"warning: a worker did not stop cleanly: {result}", flush=True)


def log_to_file(path: Path) -> None:
    """The bench process's own library logs (its avatars, its user) go to a file, not between the figures."""
    logging.basicConfig(
        filename=path, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def machine_load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


@dataclass(frozen=True)
class EmulatedWorld:
    """What a worker under test runs against: a local livekit-server and the emulated provider in a
    process of its own, under `conditions`; logs go to `workdir`."""

    workdir: Path
    conditions: Conditions
    server: LiveKitServer
    provider: RemoteProvider
    lk: api.LiveKitAPI


@contextlib.asynccontextmanager
async def emulated_world(name: str, args: argparse.Namespace) -> AsyncIterator[EmulatedWorld]:
    """The world for `args.provider` under the conditions in `args` (see `add_condition_options`),
    announced on the way in and torn down on the way out."""
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    log_to_file(workdir / "bench.log")
    conditions = conditions_from(args)
    print(f"logs (workers, provider, bench) in {workdir}")
    print(f"{conditions.describe()}; machine at start: {machine_load()}", flush=True)
    with LiveKitServer(server_binary_path()) as server:
        async with (
            provider_in_own_process(args.provider, conditions, workdir) as provider,
            server_api(server) as lk,
        ):
            yield EmulatedWorld(workdir, conditions, server, provider, lk)
