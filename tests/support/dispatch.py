"""Explicit dispatch that checks a worker actually received the job.

The server does not retry a dispatch: when every worker answers "not available" (livekit-agents does
so, silently, when its CPU load is at or over the load threshold), the job is dropped and the test
would only notice when its wait for the agent times out. Failing here names the cause instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from livekit import api

from tests.support.worker import LogRecord, WorkerProcess

JOB_REQUEST_TIMEOUT_S = 30.0


def job_request_for(room: str) -> Callable[[LogRecord], bool]:
    return lambda record: (
        record.get("message") == "received job request" and record.get("room") == room
    )


async def dispatch_to_workers(
    lk: api.LiveKitAPI, agent_name: str, room: str, workers: Sequence[WorkerProcess]
) -> int:
    """Dispatch `agent_name` to `room`; returns the index of the worker that received the job."""
    await lk.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name=agent_name, room=room)
    )
    waits = [
        asyncio.create_task(w.wait_for_log(job_request_for(room), timeout=JOB_REQUEST_TIMEOUT_S))
        for w in workers
    ]
    try:
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        winner = done.pop()
        try:
            winner.result()
        except TimeoutError:
            raise AssertionError(
                f"no worker received the job for {room}: the server dropped the dispatch"
            ) from None
        return waits.index(winner)
    finally:
        for task in waits:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
