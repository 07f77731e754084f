"""A real browser for tests: Debian's headless Chromium driven by Playwright (no browser download).

Fake camera and microphone (Chromium's own test devices, permission granted without a prompt) and
autoplay allowed, so a page can join a room, publish a microphone and play the avatar's audio.
Without Chromium the fixture skips locally and fails in CI (`CI` set), saying how to install it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright

from tests.support.livekit_server import unavailable

CHROMIUM_ENV = "CHROMIUM_BIN"
INSTALL_HINT = "scripts/ensure-chromium.sh installs it (Debian: apt-get install chromium)"

CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    # The machine reaches no network but loopback: no QUIC, no background or update traffic.
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Media as a person has it, without a person: fake devices, no permission prompt, sound allowed.
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
)


def chromium_path() -> Path | None:
    """$CHROMIUM_BIN, else `chromium` on PATH (Debian's package installs /usr/bin/chromium)."""
    override = os.environ.get(CHROMIUM_ENV)
    if override:
        return Path(override)
    found = shutil.which("chromium")
    return Path(found) if found else None


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    """One headless Chromium for the session; each test opens its own context (fresh profile)."""
    binary = chromium_path()
    if binary is None or not os.access(binary, os.X_OK):
        where = f"at {binary}" if binary else "on PATH"
        unavailable(f"Chromium not found {where}; {INSTALL_HINT}")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=binary, headless=True, args=list(CHROMIUM_ARGS)
        )
        try:
            yield launched
        finally:
            await launched.close()
