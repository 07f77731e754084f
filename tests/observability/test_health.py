"""The worker's readiness endpoint, end to end: `python agent.py start` as a process registered with
a real livekit-server, with the offline voice (its PocketSphinx decoder server), and
`AGENT_HEALTH_PORT` set. Healthy it answers 200; once its decoder server is killed (SIGKILL to that
real process), 503 with the reason."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import psutil
import pytest

from speech.pipeline import DECODER_SERVER_HEALTH
from tests.support.livekit_server import LiveKitServer
from tests.support.worker import running_worker

pytestmark = pytest.mark.e2e

EXIT_WITHIN = 30.0


async def probe(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, object]]:
    async with http.get(url) as response:
        return response.status, await response.json()


@contextlib.contextmanager
def os_pidfd(pid: int) -> Iterator[int]:
    pidfd = os.pidfd_open(pid)
    try:
        yield pidfd
    finally:
        os.close(pidfd)


async def terminated(pidfd: int) -> None:
    """Until the process has exited (a pidfd is readable then, for any process, not only children):
    the worker's next probe of it finds it gone."""
    loop = asyncio.get_running_loop()
    exited = asyncio.Event()
    loop.add_reader(pidfd, exited.set)
    try:
        await exited.wait()
    finally:
        loop.remove_reader(pidfd)


def decoder_server(worker_pid: int) -> psutil.Process:
    children = psutil.Process(worker_pid).children(recursive=True)
    servers = [child for child in children if "--fork-server" in child.cmdline()]
    assert len(servers) == 1, [child.cmdline() for child in children]
    return servers[0]


async def test_a_worker_without_its_decoder_server_says_it_cannot_serve(
    livekit_server: LiveKitServer, tmp_path: Path
) -> None:
    extra = {"VOICE_MODE": "offline", "AGENT_HEALTH_PORT": "0"}
    agent_name = f"health-{uuid.uuid4().hex[:6]}"
    async with (
        running_worker(livekit_server, agent_name, tmp_path, extra) as worker,
        aiohttp.ClientSession() as http,
    ):
        listening = await worker.wait_for_log(
            lambda r: r.get("message") == "health endpoint listening", timeout=30
        )
        url = f"http://127.0.0.1:{listening['health_port']}/"
        assert await probe(http, url) == (200, {"healthy": True})

        server = decoder_server(worker.pid)
        with os_pidfd(server.pid) as pidfd:
            server.send_signal(signal.SIGKILL)
            await asyncio.wait_for(terminated(pidfd), EXIT_WITHIN)

        status, body = await probe(http, url)
        assert status == 503
        assert body == {"healthy": False, "reasons": [f"{DECODER_SERVER_HEALTH} is not running"]}
