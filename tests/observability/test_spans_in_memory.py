"""The avatar's spans of a real job, collected with the OpenTelemetry SDK's InMemorySpanExporter.

The worker is `agent.create_server` run in this test's process with livekit-agents' thread job
executor, so the job (entrypoint, prewarm, the supervisor, the job's shutdown and its trace flush)
runs here, where the exporter is: registered with a real livekit-server, dispatched to a real room
with a user in it, the avatar's provider (LemonSlice) through its emulator, whose avatar joins.
`configure_tracing(exporter)` installs it the way the job installs an OTLP exporter.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from livekit import api
from livekit.agents import JobExecutorType
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agent import create_server
from config import get_settings
from observability.tracing import configure_tracing
from tests.support.avatar_launcher import LocalAvatarLauncher
from tests.support.emulators import LemonSliceEmulator
from tests.support.livekit_server import LiveKitServer, server_api
from tests.support.room_user import AGENT_STATE_ATTRIBUTE, RoomUser
from tests.support.worker import worker_settings

pytestmark = pytest.mark.e2e

LEMONSLICE_KEY = "ls-in-memory-key-never-exported"
PROVIDER = "lemonslice"
USER_WORDS = "my secret word is marmalade"
REGISTER_TIMEOUT = 60.0
JOB_TIMEOUT = 90.0


class NotifyingExporter(InMemorySpanExporter):
    """Keeps the spans, and wakes the test's loop when a batch arrives (from the SDK's thread)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._loop = loop
        self.exported = asyncio.Condition()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = super().export(spans)
        self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._notify()))
        return result

    async def _notify(self) -> None:
        async with self.exported:
            self.exported.notify_all()

    async def wait_for(self, name: str, room: str) -> ReadableSpan:
        def found() -> ReadableSpan | None:
            for span in self.get_finished_spans():
                if span.name == name and (span.attributes or {}).get("avatar.room") == room:
                    return span
            return None

        async with self.exported:
            await self.exported.wait_for(lambda: found() is not None)
        span = found()
        assert span is not None
        return span


@pytest.fixture
async def in_process_worker(
    livekit_server: LiveKitServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[str]:
    """The agent name of a registered in-process worker, stopped after the test."""
    launcher = LocalAvatarLauncher()
    emulator = LemonSliceEmulator(api_key=LEMONSLICE_KEY, avatar_launcher=launcher)
    await emulator.start()
    agent_name = f"inmem-{uuid.uuid4().hex[:6]}"
    monkeypatch.chdir(tmp_path)  # no developer's `.env`
    for name, value in worker_settings(
        livekit_server,
        agent_name,
        {**emulator.worker_settings("agent-inmem"), "VOICE_MODE": "offline"},
    ).items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    server = create_server(get_settings(), job_executor_type=JobExecutorType.THREAD)
    registered = asyncio.Event()
    server.on("worker_registered", lambda *_: registered.set())
    running = asyncio.create_task(server.run(devmode=True))
    try:
        await asyncio.wait_for(registered.wait(), REGISTER_TIMEOUT)
        yield agent_name
    finally:
        await server.aclose()
        await running
        await emulator.aclose()
        get_settings.cache_clear()


async def test_a_real_jobs_avatar_spans_form_one_tree_without_secrets_or_user_words(
    in_process_worker: str, livekit_server: LiveKitServer
) -> None:
    agent_name = in_process_worker
    exporter = NotifyingExporter(asyncio.get_running_loop())
    provider = configure_tracing(exporter)
    assert provider is not None
    try:
        await _run_job(livekit_server, agent_name, exporter)
    finally:
        provider.shutdown()  # nothing exported to this test's loop once it is closed


async def _run_job(
    livekit_server: LiveKitServer, agent_name: str, exporter: NotifyingExporter
) -> None:
    room = f"inmem-{uuid.uuid4().hex[:8]}"
    user = await RoomUser.join(livekit_server, room)
    try:
        async with server_api(livekit_server) as lk:
            await lk.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(agent_name=agent_name, room=room)
            )
        agent = await user.wait_for_agent(timeout=JOB_TIMEOUT)
        await user.wait_for_attribute(
            agent.identity, AGENT_STATE_ATTRIBUTE, "listening", timeout=JOB_TIMEOUT
        )
        await user.send_chat(USER_WORDS)
        await user.wait_for_transcript(agent.identity, "marmalade", timeout=JOB_TIMEOUT)
    finally:
        await user.leave()

    root = await asyncio.wait_for(exporter.wait_for("avatar.session", room), JOB_TIMEOUT)
    spans = exporter.get_finished_spans()
    children = [
        s for s in spans if s.parent is not None and s.parent.span_id == root.context.span_id
    ]
    names = sorted(s.name for s in children)
    assert names.count("avatar.start") == 1, names
    assert names.count("avatar.join") == 1 and names.count("avatar.end") == 1, names
    calls = sorted(
        str((s.attributes or {})["avatar.provider_call"])
        for s in children
        if s.name == "avatar.provider_call"
    )
    assert calls == ["create session", "terminate session"], calls
    (start,) = [s for s in children if s.name == "avatar.start"]
    attributes = dict(start.attributes or {})
    assert attributes["avatar.provider"] == PROVIDER
    assert attributes["avatar.attempt"] == 0
    assert attributes["avatar.outcome"] == "joined"
    for call in (s for s in children if s.name == "avatar.provider_call"):
        assert (call.attributes or {})["avatar.outcome"] == "answered", call
    assert (root.attributes or {})["avatar.sessions"] == 1
    assert (root.attributes or {})["avatar.unended"] == 0
    assert root.end_time is not None
    assert all(s.end_time is not None and s.end_time <= root.end_time for s in children)

    text = " ".join(
        str(value)
        for span in spans
        for value in [
            *(span.attributes or {}).values(),
            *(v for event in span.events for v in (event.attributes or {}).values()),
        ]
    )
    secrets = {LEMONSLICE_KEY, livekit_server.api_secret}
    assert not [secret[:6] for secret in secrets if secret in text]
    assert "marmalade" not in text.lower()
