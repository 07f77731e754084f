"""Shared test servers: the real livekit-server fixture lives in tests/support."""

import pytest

from tests.support import avatar_host

pytest_plugins = [
    "tests.support.livekit_server",
    "tests.support.livekit_cluster",
    "tests.support.browser",
    "tests.support.failure_logs",
]


def pytest_sessionstart(session: pytest.Session) -> None:
    avatar_host.keep_spares()  # loaded by the time a provider emulator sends an avatar in


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """How many emulated avatars ran in the avatar host, and how often the host crashed."""
    if not avatar_host.launched_count:
        return
    terminalreporter.write_line(
        f"emulated avatars: {avatar_host.launched_count} in the avatar host, which crashed "
        f"{len(avatar_host.crashes)} time(s)"
    )
    for crash in avatar_host.crashes:
        terminalreporter.write_line(
            f"  signal {-crash.returncode}, taking {len(crash.identities)} avatar(s) with it"
        )
