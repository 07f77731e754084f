"""The provider's HTTP connection, prepared before a job arrives.

livekit-agents runs `prewarm` in each job process before that process's event loop exists, and an
aiohttp connection belongs to the loop it was opened on: what prewarm can do is resolve the
provider's host name (and leave module imports and TLS defaults loaded). The job then opens its one
pooled session with those addresses, so its first request goes straight to connecting.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlparse

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

logger = logging.getLogger("avatar.providers.warmup")

# Addresses older than this are resolved again (an idle process may wait long for its job).
MAX_ADDRESS_AGE = 300.0


@dataclass(frozen=True)
class ResolvedHost:
    host: str
    port: int
    results: tuple[ResolveResult, ...]
    resolved_at: float  # time.monotonic()


def resolve_provider_host(api_url: str) -> ResolvedHost | None:
    """Resolve the host of `api_url` now (blocking; for prewarm). None if it cannot be resolved."""
    parsed = urlparse(api_url)
    host = parsed.hostname
    if not host:
        return None
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as error:
        logger.info("prewarm: could not resolve %s (%s); the job will", host, error)
        return None
    results = tuple(
        ResolveResult(
            hostname=host,
            host=str(address[0]),
            port=port,
            family=family,
            proto=proto,
            flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
        )
        for family, _, proto, _, address in infos
        if family in (socket.AF_INET, socket.AF_INET6)
    )
    return ResolvedHost(host, port, results, time.monotonic()) if results else None


class PrewarmedResolver(AbstractResolver):
    """Answers for the prewarmed host from memory; asks the system for anything else."""

    def __init__(self, resolved: ResolvedHost | None) -> None:
        self._resolved = resolved
        self._fallback: aiohttp.ThreadedResolver | None = None

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        known = self._resolved
        if (
            known is not None
            and host == known.host
            and port == known.port
            and time.monotonic() - known.resolved_at < MAX_ADDRESS_AGE
        ):
            matching = [r for r in known.results if family in (0, r["family"])]
            if matching:
                return matching
        if self._fallback is None:
            self._fallback = aiohttp.ThreadedResolver()
        return await self._fallback.resolve(host, port, family)

    async def close(self) -> None:
        if self._fallback is not None:
            await self._fallback.close()


def provider_http_session(
    resolved: ResolvedHost | None, *, on_request_sent: Callable[[], None] | None = None
) -> aiohttp.ClientSession:
    """The job's one pooled session for provider calls (call inside the job's event loop).

    `on_request_sent` is called each time a request's headers are on the wire."""
    traces = []
    if on_request_sent is not None:
        trace = aiohttp.TraceConfig()

        async def sent(*_: object) -> None:
            on_request_sent()

        trace.on_request_headers_sent.append(sent)
        traces.append(trace)
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(resolver=PrewarmedResolver(resolved)),
        trace_configs=traces,
    )
