"""Prewarm: the provider's host is resolved before the job, and the job's session uses it."""

from __future__ import annotations

import socket

from providers.warmup import PrewarmedResolver, provider_http_session, resolve_provider_host
from tests.support.emulators import LemonSliceEmulator


def test_the_provider_host_is_resolved_with_its_port() -> None:
    resolved = resolve_provider_host("http://localhost:8123/api/liveai/sessions")
    assert resolved is not None
    assert (resolved.host, resolved.port) == ("localhost", 8123)
    assert {r["host"] for r in resolved.results} & {"127.0.0.1", "::1"}
    https = resolve_provider_host("https://127.0.0.1/x")
    assert https is not None and https.port == 443


def test_an_unresolvable_host_is_left_to_the_job() -> None:
    assert resolve_provider_host("https://no-such-host.invalid/api") is None


async def test_the_resolver_answers_from_the_prewarmed_addresses() -> None:
    resolved = resolve_provider_host("http://localhost:8123/")
    assert resolved is not None
    resolver = PrewarmedResolver(resolved)
    answer = await resolver.resolve("localhost", 8123, socket.AF_UNSPEC)
    assert answer == list(resolved.results)
    # anything else is resolved as usual
    other = await resolver.resolve("127.0.0.1", 9, socket.AF_INET)
    assert other[0]["host"] == "127.0.0.1"
    await resolver.close()


async def test_the_jobs_session_reaches_the_provider(
    lemonslice_emulator: LemonSliceEmulator,
) -> None:
    url = lemonslice_emulator.url.replace("127.0.0.1", "localhost")
    session = provider_http_session(resolve_provider_host(url))
    try:
        async with session.get(f"{url}/nowhere") as response:
            assert response.status == 404  # the emulator answered: the connection was made
    finally:
        await session.close()
