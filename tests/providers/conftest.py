from __future__ import annotations

import itertools
import random
import re
from collections.abc import AsyncIterator
from datetime import timedelta

import aiohttp
import pytest

from providers.http import ProviderHttp
from providers.retry import RetryPolicy
from providers.token import AvatarTokenRequest, mint_avatar_token
from tests.support.avatar_launcher import LocalAvatarLauncher
from tests.support.emulators import AnamEmulator, LemonSliceEmulator
from tests.support.supervisor_harness import KEY

LIVEKIT_API_KEY = "devkey"
LIVEKIT_API_SECRET = "livekit-secret-for-tests-0123456789abcdef"
LEMONSLICE_KEY = "ls-live-key-never-logged-4242"
ANAM_KEY = "anam-live-key-never-logged-4343"

# Small delays so fault tests run in about a second, with the same shape as production. The
# per-attempt timeout has room for a loaded machine's stalls (0.5 s ran out on a loopback round
# trip at load average 30); the slow faults hold their reply longer (2 s and more), and as they
# run on the test's own event loop, the timeout's timer always fires first.
FAST_POLICY = RetryPolicy(
    max_retries=3, base_delay=0.1, max_delay=0.4, attempt_timeout=1.5, call_deadline=6.0
)


@pytest.fixture
async def http_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def lemonslice_emulator() -> AsyncIterator[LemonSliceEmulator]:
    async with LemonSliceEmulator(api_key=LEMONSLICE_KEY) as emulator:
        yield emulator


@pytest.fixture
async def anam_emulator() -> AsyncIterator[AnamEmulator]:
    async with AnamEmulator(api_key=ANAM_KEY) as emulator:
        yield emulator


def provider_http(
    session: aiohttp.ClientSession,
    provider: str,
    policy: RetryPolicy = FAST_POLICY,
    **kwargs: object,
) -> ProviderHttp:
    return ProviderHttp(session, provider=provider, policy=policy, rng=random.Random(7), **kwargs)  # type: ignore[arg-type]


def avatar_token(room: str = "room-1", ttl: timedelta = timedelta(minutes=10)) -> str:
    return mint_avatar_token(
        AvatarTokenRequest(
            room_name=room,
            avatar_identity="test-avatar",
            agent_identity="agent-AJ_123",
            ttl=ttl,
        ),
        api_key=LIVEKIT_API_KEY,
        api_secret=LIVEKIT_API_SECRET,
    )


def gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(times)]


def chosen_delays(caplog: pytest.LogCaptureFixture) -> list[float]:
    """The waits before each retry, as the client logged them (to 0.01 s)."""
    return [float(m) for m in re.findall(r"retrying in ([0-9.]+)s", caplog.text)]


# The time between two requests is the client's wait plus a round trip and the loop's wake-up; on a
# loaded machine that can take this long on top.
ROUND_TRIP_HEADROOM = 1.0


# Emulated providers whose avatars really join: the supervisor's and the renewal's tests.
@pytest.fixture
async def lemonslice() -> AsyncIterator[tuple[LemonSliceEmulator, LocalAvatarLauncher]]:
    launcher = LocalAvatarLauncher()
    async with LemonSliceEmulator(api_key=KEY, avatar_launcher=launcher) as emulator:
        yield emulator, launcher


@pytest.fixture
async def anam() -> AsyncIterator[tuple[AnamEmulator, LocalAvatarLauncher]]:
    launcher = LocalAvatarLauncher()
    async with AnamEmulator(api_key=KEY, avatar_launcher=launcher) as emulator:
        yield emulator, launcher
