"""The worker's Prometheus endpoint, and how the job processes' metrics reach it.

livekit-agents serves `/metrics` on `AgentServer(prometheus_port=…)` and, when
`prometheus_multiproc_dir` is given, collects it with prometheus_client's multiprocess mode: every
process writes its values to files in that directory and the endpoint merges them. That is the
framework's own path for metrics made in job processes, and the one used here (no second one).

Two things it leaves to us:
- prometheus_client chooses file-backed values when it is imported, from `PROMETHEUS_MULTIPROC_DIR`
  in the environment; by then `agent.py` has imported it. The choice is made again here, before the
  worker creates any value, so the worker's own gauges (`lk_agents_*`) reach the endpoint too.
- a live gauge (`multiprocess_mode="livesum"`) counts a process until it is marked dead; nothing in
  livekit-agents does that, so a job process that died with a live session would count it forever.
  The worker marks every process it no longer has as dead (`forget_dead_processes`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import psutil
from livekit.agents import AgentServer
from prometheus_client import multiprocess, values

from config import Settings

logger = logging.getLogger("avatar.prometheus")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# How often the worker looks for job processes that are gone.
DEAD_PROCESS_SCAN = 5.0
_LIVE_GAUGE_FILE = re.compile(r"^gauge_live\w*_(\d+)\.db$")


def prometheus_options(settings: Settings) -> dict[str, Any]:
    """`AgentServer` arguments for the metrics endpoint (none when `PROMETHEUS_PORT` is unset).

    Sets up multiprocess collection for this process and the job processes it starts."""
    if settings.prometheus_port is None:
        return {}
    directory = (
        settings.prometheus_multiproc_dir
        or os.environ.get(MULTIPROC_ENV)
        # The worker empties this directory as it starts: never share a default between workers.
        or tempfile.mkdtemp(prefix="avatar-agent-prometheus-")
    )
    Path(directory).mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = directory
    # File-backed values from now on, in this process too.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return {"prometheus_port": settings.prometheus_port, "prometheus_multiproc_dir": directory}


def forget_dead_processes(directory: str) -> list[int]:
    """Mark every process that wrote a live gauge and no longer runs as dead; returns their pids."""
    dead: list[int] = []
    for name in os.listdir(directory):
        match = _LIVE_GAUGE_FILE.match(name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid not in dead and not psutil.pid_exists(pid):
            multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
            dead.append(pid)
    return dead


def watch_for_dead_processes(server: AgentServer, options: dict[str, Any]) -> None:
    """While the worker runs, forget the live gauges of job processes that have gone."""
    directory = options.get("prometheus_multiproc_dir")
    if directory is None:
        return

    async def scan() -> None:
        while True:
            await asyncio.sleep(DEAD_PROCESS_SCAN)
            try:
                forget_dead_processes(directory)
            except OSError:
                logger.warning("could not scan the Prometheus directory", exc_info=True)

    tasks: set[asyncio.Task[None]] = set()

    def start() -> None:
        task = asyncio.get_running_loop().create_task(scan(), name="prometheus-dead-processes")
        tasks.add(task)  # held for the worker's life; it ends with the worker's loop

    server.on("worker_started", start)
