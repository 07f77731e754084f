"""The worker's readiness endpoint: 200 when it can serve jobs, 503 with the reasons when not.

livekit-agents 1.8.9 serves `/` on the worker's HTTP port (`AGENT_HTTP_PORT`), but builds that
handler inside `AgentServer.run` with no hook: it only says 503 when LiveKit could not be reached
after every retry (or its inference process is gone). So this endpoint is our own, on
`AGENT_HEALTH_PORT`, in the worker's process and event loop.

Healthy means every check passes:
- registered: the worker has registered with LiveKit (it has a worker id) and has not given up
  reconnecting;
- each service the worker's jobs depend on is alive (`watch`), e.g. the offline voice's PocketSphinx
  decoder server (speech/decoder_server.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import web
from livekit.agents import AgentServer

logger = logging.getLogger("avatar.health")

UNREGISTERED_ID = "unregistered"  # livekit-agents' worker id before registration

# name -> is it alive; the services this worker's jobs need, added by whoever starts them.
_services: dict[str, Callable[[], bool]] = {}


def watch(name: str, alive: Callable[[], bool]) -> None:
    """Count `name` in the worker's health while it runs: unhealthy once `alive()` is False."""
    _services[name] = alive


def unwatch(name: str) -> None:
    """`name` was stopped on purpose (the worker is ending): no longer part of its health."""
    _services.pop(name, None)


def problems(server: AgentServer) -> list[str]:
    """Why the worker cannot serve jobs; empty when it can."""
    found: list[str] = []
    if server.id == UNREGISTERED_ID:
        found.append("not registered with LiveKit")
    # livekit-agents keeps this only privately: set once it stopped retrying.
    if getattr(server, "_connection_failed", False):
        found.append("gave up connecting to LiveKit")
    found.extend(f"{name} is not running" for name, alive in _services.items() if not alive())
    return found


def health_app(server: AgentServer) -> web.Application:
    async def health(_: web.Request) -> web.Response:
        if reasons := problems(server):
            return web.json_response({"healthy": False, "reasons": reasons}, status=503)
        return web.json_response({"healthy": True})

    app = web.Application()
    app.router.add_get("/", health)
    return app


def serve_health(server: AgentServer, port: int | None, host: str = "0.0.0.0") -> None:  # noqa: S104
    """Serve the endpoint on `port` (0: any free port, logged) once the worker has started."""
    if port is None:
        return
    runners: list[web.AppRunner] = []  # held for the worker's life

    async def start() -> None:
        runner = web.AppRunner(health_app(server), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        runners.append(runner)
        bound = runner.addresses[0][1] if runner.addresses else port
        logger.info("health endpoint listening", extra={"health_port": bound})

    tasks: set[asyncio.Task[None]] = set()

    def on_started() -> None:
        tasks.add(asyncio.get_running_loop().create_task(start(), name="health-endpoint"))

    server.on("worker_started", on_started)
