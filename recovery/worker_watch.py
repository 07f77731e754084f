"""In the worker's main process: a job process that dies takes its agent out of the room at once.

livekit-server drops a participant whose process died only when its ICE times out (about 20 s, fixed
in the server). The worker sees its job process die at once: it removes that job's agent participant
through RoomService, the server sends `participant_left` within milliseconds, and the recovery watcher
dispatches the agent again. Only for a job process that failed (killed, crashed): a job that ended by
itself has already left, and said so in the room's memory.

livekit-agents 1.8.9 has no public event for a job process's end: this listens on the worker's process
pool (`AgentServer._proc_pool`, "process_closed"); without it, it says so once and recovery falls back to
the server's own, slower, detection (tests/test_recovery.py measures both).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
from livekit import api
from livekit.agents import AgentServer
from livekit.agents.ipc.job_executor import JobExecutor, JobStatus

from providers.session import LiveKitCredentials

logger = logging.getLogger("avatar-agent.recovery")

REMOVE_TIMEOUT = 5.0


def remove_agents_of_dead_jobs(server: AgentServer, livekit: LiveKitCredentials) -> None:
    """Once the worker runs, remove the agent participant of each job process that dies."""
    tasks: set[asyncio.Task[None]] = set()

    def on_closed(process: JobExecutor) -> None:
        job = process.running_job
        if job is None or job.fake_job or process.status != JobStatus.FAILED:
            return
        task = asyncio.create_task(
            _remove(livekit, job.job.room.name, job.accept_arguments.identity, job.job.id)
        )
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def attach(*_: Any) -> None:
        pool = getattr(server, "_proc_pool", None)
        if pool is None:
            logger.warning(
                "no process pool to watch: a dead job process's agent is dropped only when the "
                "server's ICE timeout ends (about 20 s)"
            )
            return
        pool.on("process_closed", on_closed)

    server.on("worker_started", attach)


async def _remove(livekit: LiveKitCredentials, room: str, identity: str, job_id: str) -> None:
    try:
        async with (
            asyncio.timeout(REMOVE_TIMEOUT),
            api.LiveKitAPI(livekit.url, livekit.api_key, livekit.api_secret) as lk,
        ):
            await lk.room.remove_participant(
                api.RoomParticipantIdentity(room=room, identity=identity)
            )
    except api.TwirpError as error:
        if error.code != "not_found":
            logger.warning("could not remove the agent of dead job %s: %s", job_id, error.message)
        return
    except (TimeoutError, OSError, aiohttp.ClientError) as error:
        logger.warning("could not remove the agent of dead job %s: %s", job_id, error)
        return
    logger.warning(
        "job %s died: its agent %s removed from %s",
        job_id,
        identity,
        room,
        extra={"room": room, "recovery": "dead_job_agent_removed", "job_id": job_id},
    )
