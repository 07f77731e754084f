"""Shared test servers: the real livekit-server fixture lives in tests/support."""

pytest_plugins = [
    "tests.support.livekit_server",
    "tests.support.livekit_cluster",
    "tests.support.browser",
]
