"""A LiveKit cluster for tests: two livekit-server nodes sharing one Redis, all on loopback.

Redis is Debian's `redis-server` (scripts/ensure-redis.sh installs it), started on a free port with
no persistence and stopped afterwards. Both nodes share the API key and secret, and send their
webhooks to the same URLs (`webhook_urls`): the ports are chosen here, before the nodes start, so a
test can start its webhook receivers on them later (a receiver that is not up yet is a webhook lost,
which livekit-server only logs).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest

from tests.support.livekit_server import (
    LiveKitServer,
    LiveKitServerError,
    free_port,
    server_binary_path,
    unavailable,
)

REDIS_BIN_ENV = "REDIS_SERVER_BIN"
_LOOPBACK = "127.0.0.1"
WEBHOOK_PATH = "/webhook"


def redis_binary_path() -> Path | None:
    """$REDIS_SERVER_BIN (as scripts/test.sh sets it), else `redis-server` on PATH."""
    override = os.environ.get(REDIS_BIN_ENV)
    if override:
        return Path(override)
    found = shutil.which("redis-server")
    return Path(found) if found else None


class RedisServer:
    """One redis-server on a free loopback port, in memory only (no RDB snapshot, no AOF)."""

    def __init__(self, binary: Path, *, startup_timeout: float = 10.0) -> None:
        self.binary = binary
        self.startup_timeout = startup_timeout
        self.port = 0
        self._workdir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{_LOOPBACK}:{self.port}"

    def start(self) -> None:
        if self._process is not None:
            raise LiveKitServerError("redis-server already started")
        self.port = free_port(socket.SOCK_STREAM, set())
        self._workdir = Path(tempfile.mkdtemp(prefix="redis-server-"))
        log = self._workdir / "redis.log"
        self._process = subprocess.Popen(  # noqa: S603 - the configured binary, no shell
            [
                str(self.binary),
                "--port",
                str(self.port),
                "--bind",
                _LOOPBACK,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self._workdir),
                "--logfile",
                str(log),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        atexit.register(self.stop)
        try:
            self._wait_ready(log)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, log: Path) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                text = log.read_text(errors="replace") if log.exists() else "(no log)"
                raise LiveKitServerError(f"redis-server exited during startup:\n{text[-2000:]}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection((_LOOPBACK, self.port), timeout=1.0) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
            if time.monotonic() > deadline:
                raise LiveKitServerError(f"redis-server not ready after {self.startup_timeout}s")
            time.sleep(0.05)  # nothing to wait on but the port itself

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            atexit.unregister(self.stop)
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None


class LiveKitCluster:
    """Redis and `size` livekit-server nodes using it; `nodes[i]` is one node's own server."""

    def __init__(
        self, server_binary: Path, redis_binary: Path, *, size: int = 2, webhook_receivers: int = 2
    ) -> None:
        self.redis = RedisServer(redis_binary)
        self.api_key = "devkey"
        self.api_secret = secrets.token_urlsafe(32)
        taken: set[int] = set()
        self.webhook_ports = [
            free_port(socket.SOCK_STREAM, taken) for _ in range(webhook_receivers)
        ]
        self._server_binary = server_binary
        self._size = size
        self.nodes: list[LiveKitServer] = []

    @property
    def webhook_urls(self) -> list[str]:
        return [f"http://{_LOOPBACK}:{port}{WEBHOOK_PATH}" for port in self.webhook_ports]

    def _node_config(self) -> str:
        urls = "".join(f'    - "{url}"\n' for url in self.webhook_urls)
        return (
            f'redis:\n  address: "{self.redis.address}"\n'
            f'webhook:\n  api_key: "{self.api_key}"\n  urls:\n{urls}'
        )

    def start(self) -> None:
        try:
            self.redis.start()
            for _ in range(self._size):
                node = LiveKitServer(
                    self._server_binary,
                    api_key=self.api_key,
                    api_secret=self.api_secret,
                    extra_config=self._node_config(),
                )
                self.nodes.append(node)
                node.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.nodes.clear()
        self.redis.stop()

    def __enter__(self) -> LiveKitCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@pytest.fixture(scope="module")
def livekit_cluster() -> Iterator[LiveKitCluster]:
    """Two nodes and their Redis, for one test module (each module starts its own)."""
    server = server_binary_path()
    if not os.access(server, os.X_OK):
        unavailable(
            f"livekit-server binary not found at {server}; run scripts/livekit-server.sh install"
        )
    redis = redis_binary_path()
    if redis is None or not os.access(redis, os.X_OK):
        unavailable(
            "redis-server not found; run scripts/ensure-redis.sh (installs Debian's redis-server)"
        )
    assert redis is not None
    with LiveKitCluster(server, redis) as cluster:
        yield cluster
