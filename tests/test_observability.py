"""The worker's metrics and traces, end to end: a real livekit-server, the worker as a process with
`PROMETHEUS_PORT` and `OTEL_EXPORTER_OTLP_ENDPOINT` set, LemonSlice through its emulator (whose
avatars really join), a user in the room. After each row the worker's real `/metrics` is scraped
over HTTP and what it counts is compared with what happened. The counters are the job processes'
(they reach the worker's endpoint through prometheus_client's multiprocess files), so each row also
shows that path works. The spans are those an OTLP/HTTP receiver on loopback received.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from livekit import api, rtc
from prometheus_client.parser import text_string_to_metric_families

from tests.support.avatar_launcher import LocalAvatarLauncher
from tests.support.dispatch import dispatch_to_workers
from tests.support.emulators import LemonSliceEmulator, ProcessThenFail, StatusFault
from tests.support.livekit_server import LiveKitServer, free_port, server_api
from tests.support.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.support.room_user import AGENT_STATE_ATTRIBUTE, RoomUser, job_avatar_identity
from tests.support.worker import LogRecord, WorkerProcess, worker_environment

pytestmark = pytest.mark.e2e

LEMONSLICE_KEY = "ls-metrics-key-never-exported"
PROVIDER = "lemonslice"
IDENTITY = "lemonslice-avatar-agent"
# Typed by the user; the agent's offline responder repeats it. Neither may reach a span.
USER_WORDS = "my secret word is marmalade"


class Scrape:
    """One `/metrics` answer: every sample by name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: list[tuple[str, dict[str, str], float]] = [
            (sample.name, dict(sample.labels), sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]

    def value(self, name: str, **labels: str) -> float:
        """The sum of `name`'s samples whose labels include `labels` (0 when there is none)."""
        return sum(
            value
            for sample, sample_labels, value in self.samples
            if sample == name and labels.items() <= sample_labels.items()
        )

    def names(self) -> set[str]:
        return {name for name, _, _ in self.samples}

    def lines(self, *prefixes: str) -> str:
        return "\n".join(
            line
            for line in self.text.splitlines()
            if line.startswith(prefixes) and not line.startswith("#")
        )


@dataclass
class Metered:
    worker: WorkerProcess
    emulator: LemonSliceEmulator
    receiver: OtlpReceiver
    agent_name: str
    port: int
    directory: Path

    async def scrape(self) -> Scrape:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{self.port}/metrics") as response,
        ):
            assert response.status == 200
            return Scrape(await response.text())


@pytest.fixture(scope="module")
async def metered(
    livekit_server: LiveKitServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Metered]:
    launcher = LocalAvatarLauncher()
    emulator = LemonSliceEmulator(api_key=LEMONSLICE_KEY, avatar_launcher=launcher)
    await emulator.start()
    receiver = OtlpReceiver()
    await receiver.start()
    port = free_port(socket.SOCK_STREAM, set())
    cwd = tmp_path_factory.mktemp("worker-metrics")
    directory = cwd / "prometheus"
    agent_name = f"metrics-{uuid.uuid4().hex[:6]}"
    extra = {
        **emulator.worker_settings("agent-metrics"),
        "AVATAR_JOIN_TIMEOUT": "4",
        "AVATAR_START_TIMEOUT": "8",
        "AVATAR_REQUEST_TIMEOUT": "5",
        "AVATAR_MAX_RESTARTS": "2",
        "VOICE_MODE": "offline",
        "PROMETHEUS_PORT": str(port),
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
    }
    # In `.env`, not the environment: prometheus_client, imported before the settings are read,
    # does not see it, and the worker must still have its own gauges collected from files.
    (cwd / ".env").write_text(f"PROMETHEUS_MULTIPROC_DIR={directory}\n")
    worker = WorkerProcess(worker_environment(livekit_server, agent_name, extra), cwd=cwd)
    try:
        await worker.start()
        yield Metered(worker, emulator, receiver, agent_name, port, directory)
        assert await worker.stop() == 0, worker.output_tail()
    finally:
        await worker.stop()
        await emulator.aclose()
        await receiver.aclose()


@dataclass
class Job:
    metered: Metered
    server: LiveKitServer
    room: str
    user: RoomUser

    async def dispatch(self) -> None:
        async with server_api(self.server) as lk:
            await dispatch_to_workers(lk, self.metered.agent_name, self.room, [self.metered.worker])

    async def event(self, name: str, *, timeout: float = 30) -> LogRecord:
        room = self.room
        return await self.metered.worker.wait_for_log(
            lambda r: r.get("room") == room and r.get("avatar_event") == name, timeout=timeout
        )

    async def agent(self) -> rtc.RemoteParticipant:
        return await self.user.wait_for_agent(timeout=30)

    async def end(self) -> None:
        """The user leaves; returns once the job reported every session ended."""
        await self.user.leave()
        await self.event("ended", timeout=30)


@pytest.fixture
async def job(metered: Metered, livekit_server: LiveKitServer) -> AsyncIterator[Job]:
    room = f"metrics-{uuid.uuid4().hex[:8]}"
    user = await RoomUser.join(livekit_server, room)
    this = Job(metered, livekit_server, room, user)
    try:
        yield this
    finally:
        if user.room.isconnected():
            await this.end()
        metered.emulator.clear_faults()


async def test_the_endpoint_answers_before_any_job_with_nothing_live(metered: Metered) -> None:
    scrape = await metered.scrape()
    assert scrape.value("avatar_sessions_live") == 0
    assert scrape.value("avatar_session_starts_total") == 0


async def test_a_refused_start_is_one_fallback_and_leaves_nothing_live(job: Job) -> None:
    before = await job.metered.scrape()
    job.metered.emulator.inject("create", StatusFault(402, "no active plan"))
    await job.dispatch()
    await job.agent()
    await job.event("failed")
    during = await job.metered.scrape()
    # the framework's own gauge, kept by the worker process (not the job's): both reach the endpoint
    assert during.value("lk_agents_active_job_count") == 1
    await job.end()
    after = await job.metered.scrape()

    def delta(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    labels = {"provider": PROVIDER}
    refused = {"outcome": "refused", "status_class": "4xx"}
    assert delta("avatar_session_starts_total", **labels, **refused) == 1
    assert delta("avatar_session_starts_total", **labels) == 1  # no other start
    assert delta("avatar_fallbacks_total", **labels, cause="start_failed") == 1
    assert delta("avatar_fallbacks_total", **labels) == 1  # counted once, not again at the end
    assert delta("avatar_restarts_total") == 0
    assert delta("avatar_possible_orphans_total") == 0  # a 402 made nothing
    assert delta("avatar_session_end_seconds_count", **labels) == 1
    assert after.value("avatar_sessions_live") == 0


async def test_an_avatar_lost_mid_call_is_a_fallback_and_a_restart_and_nothing_stays_live(
    job: Job, tmp_path_factory: pytest.TempPathFactory
) -> None:
    before = await job.metered.scrape()
    await job.dispatch()
    agent = (await job.agent()).identity
    await job.event("joined")
    await job.event("startup", timeout=60)  # the first audio reached the avatar
    live = await job.metered.scrape()
    assert live.value("avatar_sessions_live", provider=PROVIDER) == 1  # from the job's process

    async with server_api(job.server) as lk:  # an admin, or the provider's idle timeout
        await lk.room.remove_participant(
            api.RoomParticipantIdentity(
                room=job.room, identity=job_avatar_identity(IDENTITY, agent)
            )
        )
    await job.event("left")
    await job.event("recovered", timeout=40)
    restarted = await job.metered.scrape()
    assert restarted.value("avatar_sessions_live", provider=PROVIDER) == 1  # the new one only
    await job.user.wait_for_attribute(agent, AGENT_STATE_ATTRIBUTE, "listening", timeout=60)
    await job.user.send_chat(USER_WORDS)
    await job.user.wait_for_transcript(agent, "marmalade", timeout=30)  # it was heard, and said
    await job.end()
    after = await job.metered.scrape()

    def delta(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    labels = {"provider": PROVIDER}
    joined = {"outcome": "joined", "status_class": "none"}
    assert delta("avatar_session_starts_total", **labels, **joined) == 2
    assert delta("avatar_session_starts_total", **labels) == 2
    assert delta("avatar_fallbacks_total", **labels, cause="avatar_left") == 1
    assert delta("avatar_fallbacks_total", **labels) == 1
    assert delta("avatar_restarts_total", **labels) == 1
    assert delta("avatar_provider_answer_seconds_count", **labels) == 2
    assert delta("avatar_join_seconds_count", **labels) == 2
    assert delta("avatar_first_audio_seconds_count", **labels) == 1
    assert delta("avatar_session_end_seconds_count", **labels) == 1
    assert delta("avatar_sessions_unended_total") == 0
    assert after.value("avatar_sessions_live") == 0
    (tmp_path_factory.getbasetemp() / "metrics-after-restart.txt").write_text(after.text)

    # The same story as spans, received over OTLP.
    receiver = job.metered.receiver
    root = await receiver.wait_for(
        lambda s: s.name == "avatar.session" and s.attributes.get("avatar.room") == job.room,
        timeout=30,
    )
    children = [s for s in receiver.spans if s.parent_span_id == root.span_id]
    names = sorted(s.name for s in children)
    assert names.count("avatar.start") == 1 and names.count("avatar.restart") == 1, names
    assert names.count("avatar.join") == 2 and names.count("avatar.end") == 1, names
    calls = [
        s.attributes["avatar.provider_call"] for s in children if s.name == "avatar.provider_call"
    ]
    assert sorted(calls) == ["create session"] * 2 + ["terminate session"] * 2, calls
    (own_voice,) = [s for s in children if s.name == "avatar.own_voice"]
    assert own_voice.attributes["avatar.cause"] == "avatar_left"
    assert own_voice.attributes["avatar.outcome"] == "avatar_back"
    (restart,) = [s for s in children if s.name == "avatar.restart"]
    assert restart.attributes["avatar.provider"] == PROVIDER
    assert restart.attributes["avatar.attempt"] == 1
    assert restart.attributes["avatar.outcome"] == "joined"
    assert own_voice.start_ns <= restart.start_ns <= restart.end_ns <= own_voice.end_ns
    for call in (s for s in children if s.name == "avatar.provider_call"):
        assert call.attributes["avatar.outcome"] == "answered", call
    assert root.attributes["avatar.sessions"] == 2
    assert root.attributes["avatar.unended"] == 0
    assert root.end_ns >= max(s.end_ns for s in children)


async def test_a_create_answered_502_after_it_made_the_session_counts_one_possible_orphan(
    job: Job,
) -> None:
    before = await job.metered.scrape()
    job.metered.emulator.inject("create", ProcessThenFail(502))
    await job.dispatch()
    await job.agent()
    await job.event("failed")
    await job.event("removed", timeout=20)  # its avatar came anyway: the guard removed it
    await job.end()
    after = await job.metered.scrape()

    def delta(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    labels = {"provider": PROVIDER}
    refused = {"outcome": "refused", "status_class": "5xx"}
    assert delta("avatar_session_starts_total", **labels, **refused) == 1
    assert delta("avatar_possible_orphans_total", **labels) == 1
    assert delta("avatar_late_avatars_removed_total", **labels) == 1
    assert delta("avatar_fallbacks_total", **labels, cause="start_failed") == 1
    assert delta("avatar_restarts_total") == 0
    assert after.value("avatar_sessions_live") == 0


async def test_no_metric_is_labelled_with_a_room_or_carries_a_secret(metered: Metered) -> None:
    scrape = await metered.scrape()
    ours = [labels for name, labels, _ in scrape.samples if name.startswith("avatar_")]
    assert ours, "no avatar metric exported yet"
    allowed = {"provider", "outcome", "status_class", "cause", "le"}
    assert {key for labels in ours for key in labels} <= allowed
    assert LEMONSLICE_KEY not in scrape.text and "metrics-" not in scrape.text


def _attribute_text(span: ReceivedSpan) -> str:
    values = [*span.attributes.values()]
    for _, attributes in span.events:
        values += attributes.values()
    return " ".join(str(v) for v in values)


async def test_a_refused_start_is_a_failed_start_span_with_its_status_and_a_fallback(
    job: Job,
) -> None:
    job.metered.emulator.inject("create", StatusFault(503, "busy"), StatusFault(402, "no plan"))
    await job.dispatch()
    await job.agent()
    await job.event("failed")
    await job.end()
    receiver = job.metered.receiver
    root = await receiver.wait_for(
        lambda s: s.name == "avatar.session" and s.attributes.get("avatar.room") == job.room,
        timeout=30,
    )
    children = {s.name: s for s in receiver.spans if s.parent_span_id == root.span_id}
    start, call = children["avatar.start"], children["avatar.provider_call"]
    assert start.attributes["avatar.outcome"] == "refused"
    assert start.attributes["http.response.status_code"] == 402
    assert start.status_code == 2  # error
    # the 503 was retried: one call, the retry an event on it, the 402 its end
    assert [name for name, _ in call.events] == ["retry"]
    assert call.events[0][1]["http.response.status_code"] == 503
    assert call.events[0][1]["avatar.attempt"] == 1
    assert call.attributes["http.response.status_code"] == 402
    assert children["avatar.own_voice"].attributes["avatar.cause"] == "start_failed"
    assert "avatar.join" not in children


async def test_no_span_carries_a_key_a_token_or_the_users_words(
    metered: Metered, livekit_server: LiveKitServer
) -> None:
    spans = metered.receiver.spans
    assert {s.name for s in spans} >= {"avatar.session", "avatar.provider_call"}
    assert len({s.name for s in spans}) > 8  # the framework's spans came the same way
    secrets = {LEMONSLICE_KEY, livekit_server.api_secret}
    for request in metered.emulator.requests:
        body = request.json if isinstance(request.json, dict) else {}
        properties = body.get("properties")
        if isinstance(properties, dict) and properties.get("livekit_token"):
            secrets.add(properties["livekit_token"])
    assert len(secrets) > 2  # tokens were collected, so the scan means something
    text = "\n".join(_attribute_text(s) for s in spans)
    assert not [secret[:6] for secret in secrets if secret in text]
    assert "marmalade" not in text.lower()
