"""A real livekit-server for tests: started on free loopback ports, stopped afterwards.

Media never leaves the machine: the server advertises 127.0.0.1 as its node IP and offers
loopback ICE candidates. libwebrtc clients skip the loopback interface when gathering their
own candidates, so the host needs some other interface up (any address, no connectivity);
in a network namespace with only `lo`, clients cannot connect.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Literal, NoReturn

import pytest
from livekit import api, rtc

SERVER_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "livekit-server.sh"
SERVER_BIN_ENV = "LIVEKIT_SERVER_BIN"
# Variables the server reads as configuration: they must not leak in from the test runner.
_SERVER_CONFIG_ENV = ("LIVEKIT_KEYS", "LIVEKIT_PORT", "LIVEKIT_CONFIG")
_LOOPBACK = "127.0.0.1"

ParticipantKind = Literal["standard", "egress", "ingress", "sip", "agent"]


class LiveKitServerError(RuntimeError):
    pass


def server_binary_path() -> Path:
    """Where the server binary is (or would be): $LIVEKIT_SERVER_BIN, else the install script's path."""
    override = os.environ.get(SERVER_BIN_ENV)
    if override:
        return Path(override)
    result = subprocess.run(  # noqa: S603 - fixed script path, no shell
        [str(SERVER_SCRIPT), "path"], check=True, capture_output=True, text=True
    )
    return Path(result.stdout.strip())


def _ephemeral_port_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(kind: socket.SocketKind, taken: set[int]) -> int:
    """A port nothing is bound to, preferably outside the ephemeral range.

    Ports from bind(0) come from the range outgoing connections use too, so one can be
    taken again before the server binds it; a random port below that range rarely is.
    """
    ephemeral_low, _ = _ephemeral_port_range()
    candidates = [random.randrange(10000, ephemeral_low) for _ in range(20)]
    for port in [*candidates, 0]:
        if port in taken:
            continue
        # The server binds its RTC TCP mux on all interfaces, so probe the wildcard address.
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind(("", port))
            except OSError:
                continue
            chosen: int = sock.getsockname()[1]
        if chosen not in taken:
            taken.add(chosen)
            return chosen
    raise LiveKitServerError("no free port found")


def _config_yaml(
    *, http_port: int, tcp_port: int, udp_port: int, key: str, secret: str, extra: str = ""
) -> str:
    return extra + "\n".join(
        [
            f"port: {http_port}",
            f'bind_addresses: ["{_LOOPBACK}"]',
            "development: true",
            "rtc:",
            f"  tcp_port: {tcp_port}",
            f"  udp_port: {udp_port}",
            f'  node_ip: "{_LOOPBACK}"',
            "  use_external_ip: false",
            "  enable_loopback_candidate: true",
            "keys:",
            f'  "{key}": "{secret}"',
            "logging:",
            "  level: info",
            "",
        ]
    )


class LiveKitServer:
    """One livekit-server process on free loopback ports.

    Use as a context manager, or call start() and stop() (stop() is idempotent).
    """

    def __init__(
        self,
        binary: Path,
        *,
        api_key: str = "devkey",
        api_secret: str | None = None,
        extra_config: str = "",
        startup_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        """`api_secret` is shared by the nodes of a cluster; `extra_config` is YAML put before the
        config's own keys (a cluster's `redis:` and `webhook:` sections)."""
        self.binary = binary
        self.api_key = api_key
        self.api_secret = api_secret or secrets.token_urlsafe(32)
        self.extra_config = extra_config
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.http_port = self.rtc_tcp_port = self.rtc_udp_port = 0
        self._workdir: Path | None = None
        self._log_file: int | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"LiveKitServer(ws_url={self.ws_url!r}, api_key={self.api_key!r})"

    @property
    def ws_url(self) -> str:
        return f"ws://{_LOOPBACK}:{self.http_port}"

    @property
    def http_url(self) -> str:
        return f"http://{_LOOPBACK}:{self.http_port}"

    @property
    def log_path(self) -> Path | None:
        return None if self._workdir is None else self._workdir / "server.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, *, attempts: int = 3) -> None:
        """Start the server and wait until it answers; retried on a port clash."""
        if self._process is not None:
            raise LiveKitServerError("server already started")
        if not os.access(self.binary, os.X_OK):
            raise LiveKitServerError(f"livekit-server binary not found at {self.binary}")
        for attempt in range(1, attempts + 1):
            try:
                self._launch()
                return
            except LiveKitServerError as error:
                # Another process can take a port between our probe and the server's bind.
                if attempt == attempts or "address already in use" not in str(error):
                    raise
            except BaseException:
                self.stop()
                raise

    def _launch(self) -> None:
        taken: set[int] = set()
        self.http_port = free_port(socket.SOCK_STREAM, taken)
        self.rtc_tcp_port = free_port(socket.SOCK_STREAM, taken)
        self.rtc_udp_port = free_port(socket.SOCK_DGRAM, taken)
        self._workdir = Path(tempfile.mkdtemp(prefix="livekit-server-"))
        config_path = self._workdir / "config.yaml"
        config_path.touch(mode=0o600)
        config_path.write_text(
            _config_yaml(
                http_port=self.http_port,
                tcp_port=self.rtc_tcp_port,
                udp_port=self.rtc_udp_port,
                key=self.api_key,
                secret=self.api_secret,
                extra=self.extra_config,
            )
        )
        env = {k: v for k, v in os.environ.items() if k not in _SERVER_CONFIG_ENV}
        assert self.log_path is not None
        self._log_file = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._process = subprocess.Popen(  # noqa: S603 - our own binary, no shell
            [str(self.binary), "--config", str(config_path)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        atexit.register(self.stop)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                raise LiveKitServerError(
                    f"livekit-server exited with {self._process.returncode} during startup:\n"
                    f"{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.http_url}/", timeout=1.0) as response:  # noqa: S310
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise LiveKitServerError(
                    f"livekit-server not healthy after {self.startup_timeout:.0f}s:\n"
                    f"{self.log_tail()}"
                )
            # Nothing to wait on but the port itself: poll at a short interval until the deadline.
            time.sleep(0.05)

    def log_tail(self, lines: int = 30) -> str:
        path = self.log_path
        if path is None or not path.exists():
            return "(no log)"
        text = path.read_text(errors="replace").replace(self.api_secret, "***")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            atexit.unregister(self.stop)
            # The first SIGTERM drains: it waits for participants to leave, and is ignored
            # in the server's first 100 ms. A second one forces the shutdown.
            for signum, timeout in ((signal.SIGTERM, 0.5), (signal.SIGTERM, self.stop_timeout)):
                if process.poll() is not None:
                    break
                process.send_signal(signum)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=timeout)
            if process.poll() is None:
                process.kill()
                process.wait()
        if self._log_file is not None:
            os.close(self._log_file)
            self._log_file = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> LiveKitServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def unavailable(reason: str) -> NoReturn:
    """A tool a test needs is missing: a failure in CI, a skip (with the reason) locally."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def livekit_server() -> Iterator[LiveKitServer]:
    binary = server_binary_path()
    if not os.access(binary, os.X_OK):
        reason = (
            f"livekit-server binary not found at {binary}; run scripts/livekit-server.sh install"
        )
        unavailable(reason)
    with LiveKitServer(binary) as server:
        yield server


def mint_token(
    server: LiveKitServer,
    identity: str,
    room: str,
    *,
    kind: ParticipantKind | None = None,
    attributes: dict[str, str] | None = None,
    grants: api.VideoGrants | None = None,
    name: str | None = None,
    ttl: timedelta = timedelta(minutes=15),
) -> str:
    """A JWT for `identity` in `room`; `grants` default to joining that room."""
    if grants is None:
        grants = api.VideoGrants(room_join=True, room=room)
    elif not grants.room:
        grants = dataclasses.replace(grants, room=room)
    token = (
        api.AccessToken(server.api_key, server.api_secret)
        .with_identity(identity)
        .with_grants(grants)
        .with_ttl(ttl)
    )
    if kind is not None:
        token.with_kind(kind)
    if attributes:
        token.with_attributes(attributes)
    if name is not None:
        token.with_name(name)
    return token.to_jwt()


async def connect_participant(
    server: LiveKitServer,
    room: str,
    identity: str,
    *,
    room_options: rtc.RoomOptions | None = None,
    kind: ParticipantKind | None = None,
    attributes: dict[str, str] | None = None,
    grants: api.VideoGrants | None = None,
    name: str | None = None,
    ttl: timedelta = timedelta(minutes=15),
) -> rtc.Room:
    """Join `room` as `identity`; the caller disconnects the returned room."""
    token = mint_token(
        server,
        identity,
        room,
        kind=kind,
        attributes=attributes,
        grants=grants,
        name=name,
        ttl=ttl,
    )
    lk_room = rtc.Room()
    await lk_room.connect(server.ws_url, token, room_options or rtc.RoomOptions())
    return lk_room


@contextlib.asynccontextmanager
async def server_api(server: LiveKitServer) -> AsyncIterator[api.LiveKitAPI]:
    """A LiveKitAPI client (RoomService, AgentDispatch, ...) for the server, closed on exit."""
    client = api.LiveKitAPI(server.http_url, server.api_key, server.api_secret)
    try:
        yield client
    finally:
        await client.aclose()
