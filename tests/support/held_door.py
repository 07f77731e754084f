"""A loopback TCP proxy that holds each connection at the door until the test lets it through:
a connect that is slow for as long as the test wants, with no timing guesswork."""

from __future__ import annotations

import asyncio
import contextlib

_LOOPBACK = "127.0.0.1"


class HeldDoor:
    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self.knocked = asyncio.Event()  # a client is at the door
        self.connections = 0
        self._open = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def ws_url(self) -> str:
        assert self._server is not None
        return f"ws://{_LOOPBACK}:{self._server.sockets[0].getsockname()[1]}"

    def open(self) -> None:
        """Let every held connection, and every later one, through."""
        self._open.set()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        self.knocked.set()
        try:
            await self._open.wait()
            up_reader, up_writer = await asyncio.open_connection(_LOOPBACK, self._target_port)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except asyncio.CancelledError:
            pass  # the door closes (asyncio's server logs a handler that ends cancelled)
        finally:
            writer.close()
            self._tasks.discard(task)

    async def __aenter__(self) -> HeldDoor:
        self._server = await asyncio.start_server(self._on_client, _LOOPBACK, 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()
