"""End to end: `python agent.py dev` reloads the worker when a project file changes.

A copy of the project (so that the test can edit it) runs `dev` against the real livekit-server, with
the local avatar and the offline voice. An edit of the greeting while a job runs ends that job (its
avatar leaves) and the next job greets with the new text; a syntax error is printed and the running
worker keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import sys
import uuid
from pathlib import Path

import psutil
import pytest
from livekit import api

from tests.support.livekit_server import LiveKitServer, server_api
from tests.support.room_user import RoomUser, job_avatar_identity
from tests.support.worker import WorkerProcess, worker_environment

pytestmark = pytest.mark.e2e

PROJECT = Path(__file__).resolve().parents[1]
AVATAR = "local-avatar-agent"
GREETING_MODULE = Path("speech/pipeline.py")
OLD_GREETING = "This is the offline voice"
NEW_GREETING = "This is the reloaded voice"
START_TIMEOUT = 120.0


def copy_project(destination: Path) -> None:
    """agent.py and what it imports: the top-level modules and packages, not tests or the venv."""
    for entry in PROJECT.iterdir():
        if entry.suffix == ".py":
            shutil.copy2(entry, destination / entry.name)
        elif (entry / "__init__.py").exists() and entry.name != "tests":
            shutil.copytree(
                entry, destination / entry.name, ignore=shutil.ignore_patterns("__pycache__")
            )


def rewrite(path: Path, text: str) -> None:
    """As an editor saves: whole, at once (the watcher never sees a half-written file)."""
    draft = path.with_name(path.name + ".draft")
    draft.write_text(text)
    draft.replace(path)


def count(worker: WorkerProcess, text: str) -> int:
    return sum(text in line for line in worker.raw_output)


async def wait_for_line(worker: WorkerProcess, text: str, *, times: int = 1) -> None:
    await worker.wait_until(lambda: count(worker, text) >= times, timeout=START_TIMEOUT)


async def join_and_dispatch(server: LiveKitServer, agent_name: str) -> tuple[RoomUser, str]:
    """A user in a new room with the agent dispatched to it; returns the user and the agent's
    identity, once the agent has joined."""
    user = await RoomUser.join(server, f"room-reload-{uuid.uuid4().hex[:8]}")
    async with server_api(server) as lk:
        await lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name=agent_name, room=user.room.name)
        )
    agent = await user.wait_for_agent(timeout=60)
    return user, agent.identity


async def greeting_heard(server: LiveKitServer, agent_name: str, text: str) -> None:
    """A whole job: the user hears the greeting containing `text`, then leaves."""
    user, agent = await join_and_dispatch(server, agent_name)
    try:
        await user.wait_for_transcript(agent, text, timeout=60)
    finally:
        await user.leave()


async def test_dev_reloads_on_change_and_keeps_the_worker_on_a_syntax_error(
    livekit_server: LiveKitServer, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    copy_project(project)
    greeting_module = project / GREETING_MODULE
    agent_name = f"dev-reload-{uuid.uuid4().hex[:6]}"
    worker = WorkerProcess(
        worker_environment(livekit_server, agent_name, {"AVATAR_PROVIDER": "local"}),
        cwd=project,
        command=[sys.executable, str(project / "agent.py"), "dev"],
    )
    try:
        await worker.launch()
        await wait_for_line(worker, "registered worker")
        await wait_for_line(worker, "dev: watching")

        # A job in progress when the greeting changes: the old worker ends it, avatar and all.
        user, agent = await join_and_dispatch(livekit_server, agent_name)
        try:
            await user.wait_for_transcript(agent, OLD_GREETING, timeout=60)
            avatar = job_avatar_identity(AVATAR, agent)
            await user.wait_for_participant(identity=avatar)
            rewrite(
                greeting_module, greeting_module.read_text().replace(OLD_GREETING, NEW_GREETING)
            )
            await wait_for_line(worker, "dev: reloading:")
            await user.wait_for_visit(avatar, timeout=60)
            await user.wait_for_visit(agent, timeout=60)
        finally:
            await user.leave()

        await wait_for_line(worker, "registered worker", times=2)
        await greeting_heard(livekit_server, agent_name, NEW_GREETING)

        # A change that does not load: the error is printed, the running worker stays.
        rewrite(greeting_module, greeting_module.read_text() + "\ndef broken(:\n")
        await wait_for_line(worker, "dev: kept the running worker")
        await wait_for_line(worker, "SyntaxError")
        await greeting_heard(livekit_server, agent_name, NEW_GREETING)
        assert count(worker, "registered worker") == 2
        assert count(worker, "dev: reloading:") == 1

        assert not any("deprecated" in line for line in worker.raw_output), worker.output_tail()
    finally:
        assert await worker.stop() == 0, worker.output_tail()


async def test_the_worker_stops_when_dev_is_killed(
    livekit_server: LiveKitServer, tmp_path: Path
) -> None:
    """SIGKILL to the `dev` parent alone (it cannot pass anything on): its worker, in a process
    group of its own, sees the parent gone and stops as on SIGTERM, job processes and all."""
    project = tmp_path / "project"
    project.mkdir()
    copy_project(project)
    worker = WorkerProcess(
        worker_environment(livekit_server, f"dev-orphan-{uuid.uuid4().hex[:6]}"),
        cwd=project,
        command=[sys.executable, str(project / "agent.py"), "dev"],
    )
    child: psutil.Process | None = None
    try:
        await worker.launch()
        await wait_for_line(worker, "registered worker")
        [started] = [line for line in worker.raw_output if "dev: worker started" in line]
        match = re.search(r"pid (\d+)", started)
        assert match is not None
        child = psutil.Process(int(match.group(1)))
        family = [child, *child.children(recursive=True)]

        os.kill(worker.pid, signal.SIGKILL)

        _, alive = await asyncio.to_thread(psutil.wait_procs, family, timeout=60)
        assert not alive, worker.output_tail()
        await worker.stop()  # its output read to the end
        assert count(worker, "shutting down worker") == 1, worker.output_tail()
    finally:
        if child is not None and child.is_running():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
        await worker.stop()
