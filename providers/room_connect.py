"""One connect of the job's room for everyone who needs it connected, never cancelled half-way.

livekit's `Room.connect` cancelled half-way leaves its native side waiting for an answer it never
gets, and that takes the process down (livekit/python-sdks#813). The framework cancels a job's
entrypoint when the job is shut down, which can be during a slow connect: a waiter may give up,
the connect itself runs to its end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


def connect_once(connect: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """Wrap `connect`: the first call starts it, every call waits for that one connect (and gets
    its error, if it fails); a caller cancelled while waiting does not cancel it."""
    connecting: asyncio.Future[None] | None = None

    def retrieve(done: asyncio.Future[None]) -> None:
        if not done.cancelled():
            done.exception()  # seen by the waiters, if any are left; never "never retrieved"

    async def connected() -> None:
        nonlocal connecting
        if connecting is None:
            connecting = asyncio.ensure_future(connect())
            connecting.add_done_callback(retrieve)
        await asyncio.shield(connecting)

    return connected
