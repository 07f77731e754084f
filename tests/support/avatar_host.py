"""The test process's side of the avatar processes (tests/support/avatar_process.py).

`AvatarProcess.launch` sends one emulated avatar into a room from a process of its own and returns
the handle the tests use: its identity, its stats as the process last reported them, its crash and
its close. Spare processes are kept loaded (`keep_spares`, called as the test session starts), so
that a launch does not wait for an interpreter and livekit to load: an avatar joins as soon as it
would in this process.

A process that dies by a signal (livekit's native crash: docs/native-crash.md) is counted in
`crashes`, with the end of its standard error; the test session reports them.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from providers.local.participant import LocalAvatarOptions, LocalAvatarStats, _token_claims
from tests.support.avatar_process import stats_from_json

logger = logging.getLogger(__name__)

_PROJECT_ROOT = Path(__file__).resolve().parents[2]
_CLOSE_TIMEOUT_S = 30.0
_STDERR_TAIL_BYTES = 4000
_NO_STATS = LocalAvatarStats(
    video_frames=0,
    segments_started=0,
    segments_finished=0,
    segments_interrupted=0,
    speech_seconds=0.0,
    input_sample_rates=(),
)


@dataclass(frozen=True)
class AvatarCrash:
    identity: str
    returncode: int
    stderr_tail: str


launched_count = 0
crashes: list[AvatarCrash] = []


@dataclass
class _Child:
    process: subprocess.Popen[bytes]
    stderr: IO[bytes]


_spare_count = 2  # enough for a restart or a renewal launched while the last spare still loads
_spares: deque[_Child] = deque()
_running: set[AvatarProcess] = set()  # until their processes end: the loop keeps tasks weakly


def _spawn() -> _Child:
    stderr = tempfile.TemporaryFile()  # noqa: SIM115 - the child's handle closes it when reaped
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.avatar_process"],
        cwd=_PROJECT_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
    )
    return _Child(process, stderr)


def keep_spares(count: int | None = None) -> None:
    """Have `count` spare processes (from now on; 2 unless set) loading, to be ready by the next
    launches (an interpreter with livekit takes seconds to load: more than an avatar's join
    timeout in tests)."""
    global _spare_count
    if count is not None:
        _spare_count = count
    while len(_spares) < _spare_count:
        _spares.append(_spawn())


def _take_child() -> _Child:
    child = None
    while _spares and child is None:
        spare = _spares.popleft()
        if spare.process.poll() is None:
            child = spare
        else:
            _stop(spare)
    keep_spares()
    return child if child is not None else _spawn()


def close_spares() -> None:
    """Stop the spare processes (each ends when its standard input closes)."""
    while _spares:
        _stop(_spares.popleft())


def _stop(child: _Child) -> None:
    assert child.process.stdin is not None
    with contextlib.suppress(OSError):
        child.process.stdin.close()
    try:
        child.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        child.process.kill()
        child.process.wait()
    child.stderr.close()


atexit.register(close_spares)


class AvatarProcess:
    """One emulated avatar in its own process."""

    def __init__(self, child: _Child, token: str) -> None:
        self._child = child
        claims = _token_claims(token)
        self.identity: str = str(claims.get("sub", ""))
        video = claims.get("video")
        self.room_name: str = str(video.get("room", "")) if isinstance(video, dict) else ""
        self.stats: LocalAvatarStats = _NO_STATS
        self.joining_at: float | None = None
        self.left_at: float | None = None
        self.returncode: int | None = None
        self._started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._stats_changed = asyncio.Event()
        self._crashed = asyncio.Event()
        self._left = asyncio.Event()
        self._closed = asyncio.Event()
        self._reading: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"AvatarProcess(identity={self.identity!r}, pid={self._child.process.pid})"

    @classmethod
    async def launch(
        cls, url: str, token: str, options: LocalAvatarOptions, kind: str
    ) -> AvatarProcess:
        """Send the avatar in; returns once it has joined and published, or once the room let it
        go while it was starting. Raises what its start raised."""
        global launched_count
        launched_count += 1
        avatar = cls(_take_child(), token)
        _running.add(avatar)
        await avatar._attach()
        avatar._send(
            {"launch": {"url": url, "token": token, "options": asdict(options), "kind": kind}}
        )
        try:
            await avatar._started
        except asyncio.CancelledError:
            await avatar.aclose()  # a launch given up on leaves no avatar behind
            raise
        return avatar

    @property
    def pid(self) -> int:
        return self._child.process.pid

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_for_stats(
        self, condition: Callable[[LocalAvatarStats], bool], timeout: float = 30.0
    ) -> LocalAvatarStats:
        async with asyncio.timeout(timeout):
            while not condition(self.stats):
                await self._stats_changed.wait()
                self._stats_changed.clear()
        return self.stats

    async def wait_left(self) -> float:
        """time.monotonic() when its room let it go (or its process ended)."""
        await self._left.wait()
        assert self.left_at is not None
        return self.left_at

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def wait_for_closed(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            await self._closed.wait()

    async def crash(self) -> None:
        """Drop out of the room as a crashed avatar does: no goodbye to the agent."""
        self._send({"do": "crash"})
        done = {
            asyncio.ensure_future(self._crashed.wait()),
            asyncio.ensure_future(self._closed.wait()),
        }
        try:
            await asyncio.wait(done, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in done:
                waiter.cancel()

    async def aclose(self) -> None:
        """Leave the room and end the process; safe to call any number of times."""
        self._send({"do": "close"})
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await self._closed.wait()
        except TimeoutError:
            logger.warning("%r did not close in %.0f s: killed", self, _CLOSE_TIMEOUT_S)
            self._child.process.kill()
            await self._closed.wait()

    def _send(self, message: dict[str, Any]) -> None:
        stdin = self._child.process.stdin
        assert stdin is not None
        with contextlib.suppress(OSError, ValueError):  # the process is gone already
            stdin.write((json.dumps(message) + "\n").encode())
            stdin.flush()

    async def _attach(self) -> None:
        stdout = self._child.process.stdout
        assert stdout is not None
        reader = asyncio.StreamReader(limit=1 << 20)
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stdout)
        self._reading = asyncio.create_task(
            self._read(reader), name=f"avatar-process:{self.identity}"
        )

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                self._on_event(json.loads(line))
        finally:
            await self._reap()

    def _on_event(self, event: dict[str, Any]) -> None:
        match event["event"]:
            case "log":
                logging.getLogger(event["name"]).log(
                    event["level"], "[avatar process %s] %s", self.identity, event["message"]
                )
            case "joining":
                self.joining_at = event["at"]
            case "started":
                if not self._started.done():
                    self._started.set_result(None)
            case "start_failed":
                if not self._started.done():
                    self._started.set_exception(RuntimeError(event["error"]))
            case "stats":
                self.stats = stats_from_json(event["stats"])
                self._stats_changed.set()
            case "crashed":
                self._crashed.set()
            case "left":
                self.left_at = event["at"]
                self._left.set()
            case "closed":
                pass
            case other:
                raise ValueError(f"unknown event from the avatar process: {other!r}")

    async def _reap(self) -> None:
        process = self._child.process
        self.returncode = await asyncio.to_thread(process.wait)
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        if self.returncode != 0:
            self._child.stderr.seek(0, 2)
            size = self._child.stderr.tell()
            self._child.stderr.seek(max(0, size - _STDERR_TAIL_BYTES))
            tail = self._child.stderr.read().decode(errors="replace")
            if self.returncode < 0:
                crashes.append(AvatarCrash(self.identity, self.returncode, tail))
            logger.warning(
                "the process of emulated avatar %s ended with %d; its standard error ends:\n%s",
                self.identity,
                self.returncode,
                tail,
            )
        self._child.stderr.close()
        if self.left_at is None:
            self.left_at = time.monotonic()
        self._left.set()
        self._closed.set()
        _running.discard(self)
        if not self._started.done():
            self._started.set_result(None)  # gone before it started: the launcher counts it so
