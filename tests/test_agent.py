"""The worker process: a bad configuration stops it before it ever contacts LiveKit; what it runs
beside its jobs ends with it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest
from livekit import rtc

from providers.room_connect import connect_once
from tests.support.held_door import HeldDoor
from tests.support.livekit_server import LiveKitServer, mint_token

AGENT = Path(__file__).resolve().parent.parent / "agent.py"
SECRET = "livekit-secret-value-that-must-not-leak"


class ConnectionRecorder:
    """A loopback TCP listener standing where LiveKit would be; it records who knocks."""

    def __init__(self) -> None:
        self.connected = asyncio.Event()
        self.count = 0
        self._server: asyncio.Server | None = None

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.count += 1
        self.connected.set()
        writer.close()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}"

    async def __aenter__(self) -> ConnectionRecorder:
        self._server = await asyncio.start_server(self._on_connect, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


@pytest.fixture
async def livekit_stand_in() -> AsyncIterator[ConnectionRecorder]:
    async with ConnectionRecorder() as recorder:
        yield recorder


async def start_worker(env: dict[str, str], cwd: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(AGENT),
        "start",
        cwd=cwd,
        env={"PATH": os.environ["PATH"], "HOME": str(cwd), "AGENT_HTTP_PORT": "0", **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )


def good_configuration(livekit: ConnectionRecorder) -> dict[str, str]:
    return {"LIVEKIT_URL": livekit.url, "LIVEKIT_API_KEY": "devkey", "LIVEKIT_API_SECRET": SECRET}


async def stop_worker(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):  # the whole group may be gone already
            os.killpg(process.pid, signal.SIGKILL)
    await process.communicate()


async def test_bad_configuration_stops_the_worker_before_it_registers(
    livekit_stand_in: ConnectionRecorder, tmp_path: Path
) -> None:
    process = await start_worker(
        {
            "LIVEKIT_URL": livekit_stand_in.url,
            "LIVEKIT_API_KEY": "devkey",
            "LIVEKIT_API_SECRET": SECRET,
            "AVATAR_PROVIDER": "lemonslice",
            "LEMONSLICE_API_KEY": "ls-secret-key-0001",
            "LEMONSLICE_AGENT_ID": "agent-7",
            "LEMONSLICE_AGENT_IMAGE_URL": "https://cdn.example.com/face.png",
            "AVATAR_TOKEN_TTL": "-1",
        },
        tmp_path,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    finally:
        await stop_worker(process)
    output = (stdout + stderr).decode()
    assert process.returncode == 2, output
    assert "LEMONSLICE_AGENT_ID and LEMONSLICE_AGENT_IMAGE_URL: both set" in output
    assert "AVATAR_TOKEN_TTL" in output
    assert SECRET not in output and "ls-secret-key-0001" not in output
    assert livekit_stand_in.count == 0


async def test_good_configuration_does_contact_livekit(
    livekit_stand_in: ConnectionRecorder, tmp_path: Path
) -> None:
    """The control for the test above: the same worker, well configured, knocks on LiveKit's door."""
    process = await start_worker(good_configuration(livekit_stand_in), tmp_path)
    try:
        await asyncio.wait_for(livekit_stand_in.connected.wait(), timeout=60)
    finally:
        await stop_worker(process)
    assert livekit_stand_in.count >= 1


def test_the_load_threshold_is_livekits_own_unless_configured(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`dev` takes jobs at any load and LiveKit Cloud does not warn, unless a threshold is set."""
    from livekit.agents.worker import _default_load_threshold

    from agent import create_server
    from config import load_settings

    monkeypatch.chdir(tmp_path)  # no .env
    for variable in ("AGENT_MAX_JOBS", "AGENT_LOAD_THRESHOLD"):  # nor the caller's own settings
        monkeypatch.delenv(variable, raising=False)
    base = {"livekit_url": "ws://127.0.0.1:7880", "livekit_api_key": "k", "livekit_api_secret": "s"}
    assert create_server(load_settings(**base))._load_threshold is _default_load_threshold
    assert create_server(load_settings(**base, agent_load_threshold="0.5"))._load_threshold == 0.5
    by_jobs = create_server(load_settings(**base, agent_max_jobs="4"))
    assert by_jobs._load_threshold == 1.0


async def test_the_worker_loads_the_speech_model_once_and_takes_it_along_when_killed(
    livekit_stand_in: ConnectionRecorder, tmp_path: Path
) -> None:
    """The offline voice's decoder server runs beside the worker (speech/decoder_server.py) and
    ends with it, even when the worker is killed and cannot clean up."""
    process = await start_worker(good_configuration(livekit_stand_in), tmp_path)
    try:
        await asyncio.wait_for(livekit_stand_in.connected.wait(), timeout=60)
        [decoder_server] = [
            child
            for child in psutil.Process(process.pid).children()
            if "--fork-server" in child.cmdline()
        ]

        os.kill(process.pid, signal.SIGKILL)

        decoder_server.wait(timeout=15)  # raises if it is still running by then
        assert not decoder_server.is_running()
    finally:
        await stop_worker(process)


async def test_a_job_given_up_during_a_slow_connect_never_cancels_the_connect(
    livekit_server: LiveKitServer,
) -> None:
    """The framework cancels a job's entrypoint while the room is still connecting: the job stops
    waiting, the connect itself runs to its end (python-sdks #813: a connect cancelled half-way
    takes the process down). The job and its avatar share that one connect."""
    room = rtc.Room()
    token = mint_token(livekit_server, "agent-slow-connect", f"slow-{uuid.uuid4().hex[:8]}")
    async with HeldDoor(livekit_server.http_port) as door:
        connect = connect_once(lambda: room.connect(door.ws_url, token))
        job = asyncio.ensure_future(asyncio.gather(connect(), connect()))  # the job, its avatar
        try:
            await asyncio.wait_for(door.knocked.wait(), 20)
            job.cancel()  # the job is shut down mid-connect
            with pytest.raises(asyncio.CancelledError):
                await job
            assert not room.isconnected()

            door.open()
            await asyncio.wait_for(connect(), 20)  # the connect that was under way, not a new one
            assert room.isconnected()
            assert door.connections == 1
        finally:
            await room.disconnect()
