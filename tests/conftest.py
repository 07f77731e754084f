"""Shared test servers: the real livekit-server fixture lives in tests/support."""

import pytest

from tests.support import avatar_host

pytest_plugins = [
    "tests.support.livekit_server",
    "tests.support.livekit_cluster",
    "tests.support.browser",
]


def pytest_sessionstart(session: pytest.Session) -> None:
    avatar_host.keep_spares()  # loaded by the time a provider emulator sends an avatar in


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """How many emulated avatars ran in processes of their own, and how many of those crashed."""
    if not avatar_host.launched_count:
        return
    terminalreporter.write_line(
        f"emulated avatars: {avatar_host.launched_count} processes, "
        f"{len(avatar_host.crashes)} ended by a signal"
    )
    for crash in avatar_host.crashes:
        terminalreporter.write_line(f"  {crash.identity}: signal {-crash.returncode}")
