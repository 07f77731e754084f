"""The test process's side of the avatar host (tests/support/avatar_process.py).

`AvatarProcess.launch` sends one emulated avatar into a room from the host process and returns the
handle the tests use: its identity, its stats as the host last reported them, its crash and its
close. One host serves every avatar; a second is kept loaded (`keep_spares`, called as the test
session starts), so that a launch never waits for an interpreter and livekit to load, not even
after the host crashed.

A host that dies by a signal (livekit's native crash: docs/native-crash.md) ends the avatars it
served, as a provider's crashed avatars end; it is counted in `crashes`, with the end of its
standard error, and the session reports them. The next launch starts in the spare.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import json
import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
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
    """A host process that died by a signal, and the avatars it took with it."""

    identities: tuple[str, ...]
    returncode: int
    stderr_tail: str


launched_count = 0
crashes: list[AvatarCrash] = []
_numbers = itertools.count(1)


@dataclass(eq=False)
class _Host:
    process: subprocess.Popen[bytes]
    stderr: IO[bytes]
    avatars: dict[int, AvatarProcess] = field(default_factory=dict)
    loop: asyncio.AbstractEventLoop | None = None
    reading: asyncio.Task[None] | None = None
    returncode: int | None = None

    @classmethod
    def spawn(cls) -> _Host:
        stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed when the host is reaped
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.avatar_process"],
            cwd=_PROJECT_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
        return cls(process, stderr)

    @property
    def usable(self) -> bool:
        """Alive, and not reading on another event loop (a bench may run several in turn)."""
        if self.returncode is not None or self.process.poll() is not None:
            return False
        return self.loop is None or self.loop is asyncio.get_running_loop()

    async def attach(self) -> None:
        if self.reading is not None:
            return
        stdout = self.process.stdout
        assert stdout is not None
        reader = asyncio.StreamReader(limit=1 << 20)
        self.loop = asyncio.get_running_loop()
        await self.loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stdout)
        self.reading = asyncio.create_task(self._read(reader), name="avatar-host")

    def send(self, message: dict[str, Any]) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        with contextlib.suppress(OSError, ValueError):  # the host is gone already
            stdin.write((json.dumps(message) + "\n").encode())
            stdin.flush()

    def stop(self) -> None:
        """Close its standard input (it then ends every avatar and exits) and wait for it."""
        assert self.process.stdin is not None
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            self.process.wait(timeout=_CLOSE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.reading is None:
            self.stderr.close()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                event = json.loads(line)
                number = event.get("avatar")
                if number is None:
                    logging.getLogger(event["name"]).log(
                        event["level"], "[avatar host] %s", event["message"]
                    )
                elif (avatar := self.avatars.get(number)) is not None:
                    avatar._on_event(event)
        finally:
            await self._reap()

    async def _reap(self) -> None:
        # Reading stopped at the host's end, or because the event loop is closing: then the host
        # is told to end (its avatars leave) by closing its standard input.
        with contextlib.suppress(OSError):
            if self.process.stdin is not None:
                self.process.stdin.close()
        self.returncode = await asyncio.to_thread(self.process.wait)
        ended = list(self.avatars.values())
        if self.returncode != 0:
            self.stderr.seek(0, 2)
            size = self.stderr.tell()
            self.stderr.seek(max(0, size - _STDERR_TAIL_BYTES))
            tail = self.stderr.read().decode(errors="replace")
            if self.returncode < 0:
                crashes.append(AvatarCrash(tuple(a.identity for a in ended), self.returncode, tail))
            logger.warning(
                "the avatar host ended with %d, taking %d avatars with it; its standard error "
                "ends:\n%s",
                self.returncode,
                len(ended),
                tail,
            )
        self.stderr.close()
        for avatar in ended:
            avatar._host_ended(self.returncode)
        self.avatars.clear()


_host: _Host | None = None
_spare: _Host | None = None


def keep_spares() -> None:
    """Have the host, and a spare to replace it, loading now: ready by the first launch (an
    interpreter with livekit takes seconds to load, more than an avatar's join timeout in tests)."""
    global _host, _spare
    if _host is None:
        _host = _Host.spawn()
    if _spare is None or _spare.process.poll() is not None:
        _spare = _Host.spawn()


def _current_host() -> _Host:
    global _host, _spare
    if _host is None or not _host.usable:
        _host, _spare = _spare, None
        if _host is None or not _host.usable:
            _host = _Host.spawn()
    keep_spares()
    return _host


def close_spares() -> None:
    """Stop the host and its spare (at exit: the test session or the bench is over)."""
    global _host, _spare
    for host in (_host, _spare):
        if host is not None and host.returncode is None:
            host.stop()
    _host = _spare = None


atexit.register(close_spares)


class AvatarProcess:
    """One emulated avatar, served by the avatar host."""

    def __init__(self, host: _Host, token: str) -> None:
        self._host = host
        self._number = next(_numbers)
        claims = _token_claims(token)
        self.identity: str = str(claims.get("sub", ""))
        video = claims.get("video")
        self.room_name: str = str(video.get("room", "")) if isinstance(video, dict) else ""
        self.stats: LocalAvatarStats = _NO_STATS
        self.joining_at: float | None = None
        self.left_at: float | None = None
        self.host_returncode: int | None = None
        """Set when the host ended while this avatar was in it."""
        self._started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._stats_changed = asyncio.Event()
        self._crashed = asyncio.Event()
        self._left = asyncio.Event()
        self._closed = asyncio.Event()

    def __repr__(self) -> str:
        return f"AvatarProcess(identity={self.identity!r}, host={self.pid})"

    @classmethod
    async def launch(
        cls, url: str, token: str, options: LocalAvatarOptions, kind: str
    ) -> AvatarProcess:
        """Send the avatar in; returns once it has joined and published, or once the room let it
        go while it was starting. Raises what its start raised."""
        global launched_count
        launched_count += 1
        host = _current_host()
        await host.attach()
        avatar = cls(host, token)
        host.avatars[avatar._number] = avatar
        launch = {"url": url, "token": token, "options": asdict(options), "kind": kind}
        host.send({"avatar": avatar._number, "launch": launch})
        try:
            await avatar._started
        except asyncio.CancelledError:
            await avatar.aclose()  # a launch given up on leaves no avatar behind
            raise
        return avatar

    @property
    def pid(self) -> int:
        """The host's process id."""
        return self._host.process.pid

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
        """time.monotonic() when its room let it go (or its host ended)."""
        await self._left.wait()
        assert self.left_at is not None
        return self.left_at

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def wait_for_closed(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            await self._closed.wait()

    async def crash(self) -> None:
        """Drop out of the room without closing: no goodbye by aclose. As the room goes, the avatar
        may still report the utterance it was playing interrupted, as a real avatar's last words
        can; the agent must carry on in its own voice either way."""
        self._send("crash")
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
        """Leave the room; safe to call any number of times."""
        if self.closed:
            return
        self._send("close")
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await self._closed.wait()
        except TimeoutError:
            logger.warning("%r did not close in %.0f s: its host is killed", self, _CLOSE_TIMEOUT_S)
            self._host.process.kill()
            await self._closed.wait()

    def _send(self, command: str) -> None:
        self._host.send({"avatar": self._number, "do": command})

    def _on_event(self, event: dict[str, Any]) -> None:
        match event["event"]:
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
                self._end()
            case other:
                raise ValueError(f"unknown event from the avatar host: {other!r}")

    def _host_ended(self, returncode: int | None) -> None:
        self.host_returncode = returncode
        self._end()

    def _end(self) -> None:
        self._host.avatars.pop(self._number, None)
        if self.left_at is None:
            self.left_at = time.monotonic()
        self._left.set()
        self._closed.set()
        if not self._started.done():
            self._started.set_result(None)  # gone before it started: the launcher counts it so
