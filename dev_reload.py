"""`python agent.py dev` that restarts the worker when a project file changes.

livekit-agents 1.8.9 dropped the Python CLI's reload (it points to `lk agent dev`, a Go CLI). Here
`dev` is a parent that runs the worker (`agent.py dev`, marked by DEV_WORKER_ENV) as its child and
watches the project's .py files and .env. On a change, the project is first checked in a fresh
interpreter (the changed files compile, `import agent` works): if it fails, the error is printed and
the running worker kept; otherwise the old worker gets SIGTERM (it ends its jobs, their avatars'
provider sessions with them, see agent.end_of_session) and, once it has exited, a new one starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import warnings
from pathlib import Path

import watchfiles

# Set in the worker's environment: that process runs the framework's `dev`, not this parent.
DEV_WORKER_ENV = "AVATAR_AGENT_DEV_WORKER"
IGNORED_DIRS = ("build", "tests")
# The framework greets every start with these; `dev` is ours now and does reload.
FRAMEWORK_DEPRECATIONS = (
    "dev mode is deprecated",
    "in-process auto-reload has been removed",
)
CLI_DEPRECATION = "the built-in Python CLI is deprecated"
# Run by a fresh interpreter in the project: the changed files compile, and the agent imports.
CHECK_SCRIPT = """
import sys
for path in sys.argv[1:]:
    with open(path, "rb") as source:
        compile(source.read(), path, "exec")
import agent
"""


def is_dev_worker() -> bool:
    return os.environ.get(DEV_WORKER_ENV) == "1"


def quiet_framework_deprecations() -> None:
    warnings.filterwarnings("ignore", message=CLI_DEPRECATION, category=DeprecationWarning)
    logging.getLogger("livekit.agents").addFilter(_drop_deprecation_notices)


def _drop_deprecation_notices(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(FRAMEWORK_DEPRECATIONS)


class ProjectFiles(watchfiles.DefaultFilter):
    """The project's .py files and its .env; not the venv, build output, tests or caches."""

    ignore_dirs = (*watchfiles.DefaultFilter.ignore_dirs, *IGNORED_DIRS)

    def __call__(self, change: watchfiles.Change, path: str) -> bool:
        name = Path(path).name
        return (name.endswith(".py") or name == ".env") and super().__call__(change, path)


def run(project: Path, argv: list[str]) -> int:
    """Run the worker and reload it on changes until SIGINT/SIGTERM; the exit code."""
    return asyncio.run(DevSupervisor(project, argv).run())


def watch_parent() -> None:
    """In the worker: stop as on SIGTERM (ending its jobs) once the parent is gone, so that a
    parent killed outright leaves no worker behind. The parent holds the other end of stdin."""

    def wait_for_parent() -> None:
        # os.read, not sys.stdin: a daemon thread blocked in a buffered read holds its lock, and
        # the interpreter aborts when it cannot take that lock at exit.
        with contextlib.suppress(OSError):
            while os.read(stdin, 1 << 16):
                pass
        os.kill(os.getpid(), signal.SIGTERM)

    stdin = sys.stdin.fileno()

    threading.Thread(target=wait_for_parent, name="dev-parent-watch", daemon=True).start()


def relative_names(paths: list[Path], project: Path) -> str:
    return ", ".join(os.path.relpath(path, project) for path in paths)


def say(message: str) -> None:
    print(f"dev: {message}", file=sys.stderr, flush=True)


class DevSupervisor:
    def __init__(self, project: Path, argv: list[str]) -> None:
        self._project = project
        self._command = [sys.executable, str(project / "agent.py"), *argv[1:]]
        self._stopping = asyncio.Event()
        self._worker: asyncio.subprocess.Process | None = None
        self._ending: asyncio.subprocess.Process | None = None  # sent SIGTERM, not yet exited
        self._exit_reports: set[asyncio.Task[None]] = set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_stop_signal)
        await self._start_worker()
        say(f"watching {self._project} for changes (.py files, .env)")
        async for changes in watchfiles.awatch(
            self._project, watch_filter=ProjectFiles(), stop_event=self._stopping
        ):
            changed = sorted({Path(path) for _, path in changes})
            names = relative_names(changed, self._project)
            error = await self._check(changed)
            if error is not None:
                say(f"kept the running worker: the change to {names} does not load:\n{error}")
                continue
            say(f"reloading: {names} changed")
            await self._stop_worker()
            if self._stopping.is_set():
                break
            await self._start_worker()
        return await self._stop_worker()

    def _on_stop_signal(self) -> None:
        if self._stopping.is_set() and self._ending is not None:
            say("stopping the worker now, without waiting for its jobs")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._ending.pid, signal.SIGKILL)
        self._stopping.set()

    async def _check(self, changed: list[Path]) -> str | None:
        """None if the project loads with the change; else what the interpreter printed."""
        sources = [str(path) for path in changed if path.suffix == ".py" and path.exists()]
        check = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CHECK_SCRIPT,
            *sources,
            cwd=self._project,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await check.communicate()
        return None if check.returncode == 0 else output.decode(errors="replace").rstrip()

    async def _start_worker(self) -> None:
        # Its own process group: a Ctrl-C in the terminal reaches only this parent, which passes
        # one SIGTERM on (a second signal would make the framework exit without ending its jobs).
        self._worker = await asyncio.create_subprocess_exec(
            *self._command,
            cwd=self._project,
            env={**os.environ, DEV_WORKER_ENV: "1"},
            stdin=asyncio.subprocess.PIPE,  # its end of the line to this parent (watch_parent)
            process_group=0,
        )
        say(f"worker started (pid {self._worker.pid})")
        report = asyncio.create_task(self._report_unexpected_exit(self._worker))
        self._exit_reports.add(report)
        report.add_done_callback(self._exit_reports.discard)

    async def _report_unexpected_exit(self, worker: asyncio.subprocess.Process) -> None:
        code = await worker.wait()
        if self._worker is worker and not self._stopping.is_set():
            say(f"the worker exited ({code}); it starts again on the next change")

    async def _stop_worker(self) -> int:
        """SIGTERM the worker (it ends its jobs) and wait for it to exit; its exit code."""
        worker = self._worker
        if worker is None:
            return 0
        self._worker, self._ending = None, worker  # an exit from now on is expected
        if worker.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                worker.send_signal(signal.SIGTERM)
        code = await worker.wait()
        self._ending = None
        say(f"worker {worker.pid} exited ({code})")
        return code if code >= 0 else 128 - code  # killed by a signal: as a shell reports it
