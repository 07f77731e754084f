"""The agent worker as a real process (`python agent.py start`), with its JSON log lines as events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from tests.support.failure_logs import register as register_log
from tests.support.livekit_server import LiveKitServer

AGENT_SCRIPT = Path(__file__).resolve().parents[2] / "agent.py"

LogRecord = dict[str, Any]


def worker_environment(
    server: LiveKitServer, agent_name: str, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Only what the worker needs: nothing from the developer's shell or `.env` leaks in."""
    return {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/tmp"),
        **worker_settings(server, agent_name, extra),
    }


def worker_settings(
    server: LiveKitServer, agent_name: str, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The worker's own variables (LiveKit, agent name, capacity), `extra` last."""
    return {
        "LIVEKIT_URL": server.ws_url,
        "LIVEKIT_API_KEY": server.api_key,
        "LIVEKIT_API_SECRET": server.api_secret,
        "AGENT_NAME": agent_name,
        "AGENT_HTTP_PORT": "0",
        # Tests share two cores with the server, the avatars and the user. With the default CPU-based
        # load the worker reports 1.0 at times, and livekit-server then drops a dispatch outright
        # ("no servers available"): capacity by job count keeps dispatch deterministic.
        "AGENT_MAX_JOBS": "8",
        **(extra or {}),
    }


@contextlib.asynccontextmanager
async def running_worker(
    server: LiveKitServer, agent_name: str, cwd: Path, extra: Mapping[str, str] | None = None
) -> AsyncIterator[WorkerProcess]:
    """A registered worker for `agent_name`, stopped (and checked for leftovers) on exit."""
    worker = WorkerProcess(worker_environment(server, agent_name, extra), cwd=cwd)
    try:
        await worker.start()
        yield worker
    finally:
        await worker.stop()


class WorkerProcess:
    """Starts the worker, follows its log, and stops it with nothing left behind.

    The worker is `python agent.py start` from this checkout unless `command` says otherwise (the
    container image's CMD, for instance); `cwd` is where it starts and where its log is kept.
    """

    def __init__(
        self, env: Mapping[str, str], *, cwd: Path, command: Sequence[str] | None = None
    ) -> None:
        self._env = dict(env)
        self._cwd = cwd
        self._command = list(command or [sys.executable, str(AGENT_SCRIPT), "start"])
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self.records: list[LogRecord] = []
        self.raw_output: list[str] = []
        self._changed = asyncio.Condition()

    @property
    def started(self) -> bool:
        return self._process is not None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    async def start(self, *, register_timeout: float = 60.0) -> LogRecord:
        """Start and wait for the worker to register with LiveKit; returns that log record."""
        await self.launch()
        return await self.wait_for_log(
            lambda r: r.get("message") == "registered worker", timeout=register_timeout
        )

    async def launch(self) -> None:
        """Start the process and follow its output, without waiting for anything."""
        self._process = await asyncio.create_subprocess_exec(
            *self._command,
            cwd=self._cwd,
            env=self._env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        register_log(self._cwd / f"worker-{self.pid}.log")
        self._reader = asyncio.create_task(self._read_output())

    async def _read_output(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        async for raw in self._process.stdout:
            line = raw.decode(errors="replace").rstrip()
            self.raw_output.append(line)
            with (self._cwd / f"worker-{self.pid}.log").open("a") as log:
                log.write(line + "\n")
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    self.records.append(record)
            async with self._changed:
                self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()

    async def wait_for_log(
        self, predicate: Callable[[LogRecord], bool], *, timeout: float
    ) -> LogRecord:
        """The first log record that matches, waiting for new output (not polling) up to `timeout`."""
        async with asyncio.timeout(timeout), self._changed:
            while True:
                for record in self.records:
                    if predicate(record):
                        return record
                if self._process is not None and self._process.returncode is not None:
                    raise AssertionError(
                        "worker exited before the expected log line:\n" + self.output_tail()
                    )
                await self._changed.wait()

    async def wait_until(self, condition: Callable[[], bool], *, timeout: float) -> None:
        """Until `condition()` holds, re-checked on each new line of output, up to `timeout`."""
        async with asyncio.timeout(timeout), self._changed:
            while not condition():
                if self._process is not None and self._process.returncode is not None:
                    raise AssertionError(
                        "worker exited before the condition held:\n" + self.output_tail()
                    )
                await self._changed.wait()

    def logs_for_room(self, room: str) -> list[LogRecord]:
        return [r for r in self.records if r.get("room") == room]

    def output_tail(self, lines: int = 40) -> str:
        return "\n".join(line[:400] for line in self.raw_output[-lines:])

    def terminate(self) -> None:
        """SIGTERM, as an orchestrator stopping the worker sends it: the worker drains its jobs."""
        assert self._process is not None
        self._process.send_signal(signal.SIGTERM)

    async def kill(self) -> None:
        """SIGKILL to the worker and every process of its group (its job processes): what an OOM
        kill, a crashed container or a lost node does. Nothing of the worker runs any more code."""
        assert self._process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGKILL)
        await self._process.wait()

    async def wait_for_exit(self, *, timeout: float) -> int:
        """The exit code, once the worker exits by itself (no signal sent)."""
        assert self._process is not None
        return await asyncio.wait_for(self._process.wait(), timeout)

    def descendants(self) -> list[psutil.Process]:
        try:
            children: list[psutil.Process] = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        return children

    async def stop(self, *, timeout: float = 30.0) -> int:
        """SIGTERM (the worker drains), then SIGKILL of the whole group if it overstays.

        Returns the exit code. Raises if any process of the worker outlives it.
        """
        process = self._process
        if process is None:
            return 0
        if process.returncode is not None and self._reader is None:
            return process.returncode
        family = self.descendants()
        with contextlib.suppress(psutil.NoSuchProcess):
            family.append(psutil.Process(process.pid))
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        if self._reader is not None:
            await self._reader
            self._reader = None
        _, alive = psutil.wait_procs(family, timeout=10)
        for leftover in alive:
            leftover.kill()
        if alive:
            raise AssertionError(f"worker processes outlived the worker: {alive}")
        assert process.returncode is not None
        return process.returncode
