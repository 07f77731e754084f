"""What the benchmark commands share: the emulated providers, the workers as processes, and measuring
a start-up from the user's side (the first decoded avatar frame, the first voiced audio).

Nothing here asks the worker for a figure: the user in the room is the clock. The worker's own log
is only read to know when a job has ended (and, where it logs one, its start-up trace).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

import aiohttp
from livekit import api, rtc
from livekit.agents import utils

from bench.voice import FIRST_AUDIO_LATENCY_ENV, LOG_MESSAGE, FirstAudioLatencyEngine
from providers.anam.api import AnamAPI, PersonaConfig
from providers.anam.api import is_hard_limit as anam_is_hard_limit
from providers.anam.api import read_error_text as anam_error_text
from providers.http import ProviderHttp
from providers.lemonslice.api import LemonSliceAgent, LemonSliceAPI
from providers.lemonslice.api import read_error_text as lemonslice_error_text
from providers.local.participant import LocalAvatarOptions
from providers.token import AvatarTokenRequest, mint_avatar_token
from tests.support.avatar_launcher import LocalAvatarLauncher
from tests.support.dispatch import dispatch_to_workers
from tests.support.emulators import AnamEmulator, EmulatorServer, LemonSliceEmulator
from tests.support.livekit_server import LiveKitServer, connect_participant
from tests.support.room_user import RoomUser
from tests.support.worker import LogRecord, WorkerProcess, worker_environment

ROOT = Path(__file__).resolve().parents[1]
Provider = Literal["local", "lemonslice", "anam"]
PROVIDERS: tuple[Provider, ...] = ("local", "lemonslice", "anam")
IDENTITIES: dict[Provider, str] = {
    "local": "local-avatar-agent",
    "lemonslice": "lemonslice-avatar-agent",
    "anam": "anam-avatar-agent",
}
PROVIDER_KEY = "bench-provider-key"
# int16 RMS of a 10 ms frame: eSpeak's speech is in the thousands, the avatar's idle audio is 0.
VOICED_RMS = 300.0
RUN_TIMEOUT = 60.0
JOB_END_TIMEOUT = 60.0
# The lower bound's greeting: the first sentence both workers' greeting starts with.
BOUND_GREETING = "Hello!"
BOUND_AGENT_IDENTITY = "bound-agent"
AUDIO_STREAM_TOPIC = "lk.audio_stream"


@dataclass(frozen=True)
class Conditions:
    """The world the start-ups run in."""

    api_latency: float = 0.3  # per provider API call
    avatar_boot: float = 1.0  # from the provider's create to the avatar starting to join
    first_audio_latency: float = 0.0  # the voice's time to first audio
    avatar_video: LocalAvatarOptions = field(default_factory=LocalAvatarOptions)

    def describe(self) -> str:
        video = self.avatar_video
        return (
            f"API latency {self.api_latency * 1000:.0f} ms per call, avatar boot "
            f"{self.avatar_boot * 1000:.0f} ms, voice first audio {self.first_audio_latency * 1000:.0f} ms, "
            f"avatar video {video.video_width}x{video.video_height}@{video.video_fps:g}"
        )


class ProviderEmulation:
    """One provider as the workers see it: its emulator (none for `local`), whose avatars really join."""

    def __init__(self, provider: Provider, conditions: Conditions) -> None:
        self.provider = provider
        self.identity = IDENTITIES[provider]
        self.launcher = LocalAvatarLauncher(
            boot_delay=conditions.avatar_boot, options=conditions.avatar_video
        )
        self.emulator: EmulatorServer | None = None
        if provider == "lemonslice":
            self.emulator = LemonSliceEmulator(
                PROVIDER_KEY, avatar_launcher=self.launcher, latency=conditions.api_latency
            )
        elif provider == "anam":
            self.emulator = AnamEmulator(
                PROVIDER_KEY, avatar_launcher=self.launcher, latency=conditions.api_latency
            )

    async def __aenter__(self) -> Self:
        if self.emulator is not None:
            await self.emulator.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.emulator is not None:
            await self.emulator.aclose()

    @property
    def has_reference(self) -> bool:
        return self.provider != "local"

    def settings(self) -> dict[str, str]:
        """The provider's variables, for our worker and the reference alike."""
        emulator = self.emulator
        if isinstance(emulator, LemonSliceEmulator):
            return {
                "LEMONSLICE_API_KEY": PROVIDER_KEY,
                "LEMONSLICE_API_URL": emulator.sessions_url,
                "LEMONSLICE_AGENT_ID": "bench-agent",
            }
        if isinstance(emulator, AnamEmulator):
            return {
                "ANAM_API_KEY": PROVIDER_KEY,
                "ANAM_API_URL": emulator.url,
                "ANAM_AVATAR_ID": "bench-avatar",
            }
        return {}

    async def wait_sessions_ended(self) -> None:
        emulator = self.emulator
        if emulator is not None:
            async with asyncio.timeout(JOB_END_TIMEOUT):
                await emulator.wait_until(lambda: emulator.active_sessions == ())


def _bench_environment(
    server: LiveKitServer, agent_name: str, conditions: Conditions, extra: Mapping[str, str]
) -> dict[str, str]:
    return worker_environment(
        server,
        agent_name,
        {
            "PYTHONPATH": str(ROOT),
            FIRST_AUDIO_LATENCY_ENV: repr(conditions.first_audio_latency),
            **extra,
        },
    )


def our_worker(
    server: LiveKitServer,
    provider: Provider,
    settings: Mapping[str, str],
    conditions: Conditions,
    workdir: Path,
    *,
    extra: Mapping[str, str] | None = None,
) -> tuple[str, WorkerProcess]:
    """Our agent.py (through bench/our_worker.py, for the voice) for this provider."""
    agent_name = f"bench-ours-{uuid.uuid4().hex[:6]}"
    env = _bench_environment(
        server,
        agent_name,
        conditions,
        {"AVATAR_PROVIDER": provider, **settings, **(extra or {})},
    )
    return agent_name, WorkerProcess(env, cwd=workdir, program=["-m", "bench.our_worker"])


def reference_worker(
    server: LiveKitServer,
    provider: Provider,
    settings: Mapping[str, str],
    conditions: Conditions,
    workdir: Path,
) -> tuple[str, WorkerProcess]:
    """The reference on the official plugin for this provider."""
    agent_name = f"bench-reference-{uuid.uuid4().hex[:6]}"
    env = _bench_environment(
        server, agent_name, conditions, {"REFERENCE_PROVIDER": provider, **settings}
    )
    return agent_name, WorkerProcess(env, cwd=workdir, program=["-m", "bench.reference_agent"])


@dataclass(frozen=True)
class RemoteProvider:
    pid: int
    settings: dict[str, str]


@contextlib.asynccontextmanager
async def provider_in_own_process(
    provider: Provider, conditions: Conditions, workdir: Path
) -> AsyncIterator[RemoteProvider]:
    """The provider's emulator and avatars in a child process (bench/provider_process.py), with the
    provider variables for the worker. The process ends when this exits."""
    video = conditions.avatar_video
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.provider_process",
        f"--provider={provider}",
        f"--api-latency={conditions.api_latency}",
        f"--avatar-boot={conditions.avatar_boot}",
        f"--avatar-video={video.video_width}x{video.video_height}@{video.video_fps:g}",
        f"--log={workdir / f'provider-{provider}.log'}",
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        async with asyncio.timeout(60):
            line = await process.stdout.readline()
        if not line:
            raise RuntimeError("the provider process exited before it was ready")
        settings: dict[str, str] = json.loads(line)["settings"]
        yield RemoteProvider(process.pid, settings)
    finally:
        process.stdin.close()
        try:
            async with asyncio.timeout(30):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()


def avatar_video(text: str) -> LocalAvatarOptions:
    """WIDTHxHEIGHT@FPS, e.g. 320x240@12."""
    try:
        size, fps = text.split("@")
        width, height = size.lower().split("x")
        return LocalAvatarOptions(
            video_width=int(width), video_height=int(height), video_fps=float(fps)
        )
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT@FPS, got {text!r}") from None


# -- the worker's log ------------------------------------------------------------------------------


def _count(worker: WorkerProcess, message: str) -> int:
    return sum(1 for record in worker.records if record.get("message") == message)


def logged_at(worker: WorkerProcess, message: str, room: str | None = None) -> float | None:
    """Wall-clock time (time.time()) of the worker's first record with this message (and room)."""
    for record in worker.records:
        if record.get("message") != message or (room is not None and record.get("room") != room):
            continue
        stamp = record.get("timestamp")
        if isinstance(stamp, str):
            return datetime.fromisoformat(stamp).timestamp()
    return None


def pool_is_idle(worker: WorkerProcess) -> bool:
    """Every job process the worker started has finished initialising."""
    return _count(worker, "initializing process") == _count(worker, "process initialized")


def voice_uses(worker: WorkerProcess) -> int:
    """Syntheses by the bench's voice so far (proof that the voice under test is the one in use)."""
    return _count(worker, LOG_MESSAGE)


async def wait_job_ended(worker: WorkerProcess, room: str) -> None:
    """Until the job's process has exited and the worker's pool of idle processes is ready again,
    so that one run's tail does not eat into the next run's CPU."""
    await worker.wait_for_log(
        lambda r: r.get("message") == "process exiting" and r.get("room") == room,
        timeout=JOB_END_TIMEOUT,
    )
    await worker.wait_until(lambda: pool_is_idle(worker), timeout=JOB_END_TIMEOUT)


async def wait_pool_ready(worker: WorkerProcess) -> None:
    await worker.wait_until(
        lambda: _count(worker, "process initialized") > 0 and pool_is_idle(worker),
        timeout=JOB_END_TIMEOUT,
    )


def startup_trace(worker: WorkerProcess, room: str, marker: str) -> LogRecord | None:
    """The worker's start-up trace record for the job in `room`, if it logs one: a record whose
    `avatar_event` is "startup", or whose message contains `marker`."""
    marker = marker.lower()
    for record in worker.records:
        if record.get("room") != room:
            continue
        if (
            record.get("avatar_event") == "startup"
            or marker in str(record.get("message", "")).lower()
        ):
            return record
    return None


# Numbers every JSON log record carries, which say nothing about the job.
_LOG_BOOKKEEPING = frozenset({"pid", "code.line.number"})


def numeric_fields(record: LogRecord, prefix: str = "") -> dict[str, float]:
    """The record's numbers, nested objects flattened to dotted names (phase timings, whatever their shape)."""
    found: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool) or name in _LOG_BOOKKEEPING:
            continue
        if isinstance(value, int | float):
            found[name] = float(value)
        elif isinstance(value, dict):
            found.update(numeric_fields(value, prefix=f"{name}."))
    return found


# -- measuring from the user's side --------------------------------------------------------------


@dataclass
class Measurement:
    room: str
    first_frame: float | None = None
    first_word: float | None = None
    # Dispatch -> the worker logs the job request: the part no agent code can shorten.
    job_received: float | None = None
    error: str | None = None


@contextlib.asynccontextmanager
async def user_in_new_room(
    server: LiveKitServer, lk: api.LiveKitAPI, prefix: str
) -> AsyncIterator[RoomUser]:
    """A user alone in a fresh room; on exit the user leaves and the room is deleted (which ends
    every participant's stay, the avatar's included)."""
    room = f"{prefix}-{uuid.uuid4().hex[:8]}"
    user = await RoomUser.join(server, room)
    try:
        yield user
    finally:
        await user.leave()
        with contextlib.suppress(api.TwirpError):
            await lk.room.delete_room(api.DeleteRoomRequest(room=room))


class UserClock:
    """Starts listening before the start-up begins; `until_seen` returns seconds since `started`."""

    def __init__(self, user: RoomUser, identity: str, *, want_word: bool) -> None:
        self._frame = asyncio.create_task(user.first_video_frame(identity, RUN_TIMEOUT))
        self._word: asyncio.Task[float] | None = None
        if want_word:
            self._word = asyncio.create_task(
                user.first_voiced_audio(identity, threshold=VOICED_RMS, timeout=RUN_TIMEOUT)
            )
        self.started = time.monotonic()

    async def until_seen(self, measurement: Measurement) -> None:
        try:
            frame = await self._frame
            measurement.first_frame = frame.received_at - self.started
            if self._word is not None:
                measurement.first_word = await self._word - self.started
        except (TimeoutError, AssertionError) as error:
            measurement.error = describe_error(error)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        tasks = [t for t in (self._frame, self._word) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def measure_dispatch(
    server: LiveKitServer,
    lk: api.LiveKitAPI,
    worker: WorkerProcess,
    agent_name: str,
    identity: str,
    *,
    want_word: bool = True,
) -> Measurement:
    """Dispatch the agent to a fresh room with a user in it; time the avatar from the user's side."""
    async with user_in_new_room(server, lk, "bench") as user:
        measurement = Measurement(user.room.name)
        clock = UserClock(user, identity, want_word=want_word)
        dispatched_at = time.time()
        try:
            await dispatch_to_workers(lk, agent_name, user.room.name, [worker])
        except AssertionError as dropped:  # the server dropped the dispatch: no job to wait for
            await clock.aclose()
            measurement.error = describe_error(dropped)
            return measurement
        except BaseException:
            await clock.aclose()
            raise
        await clock.until_seen(measurement)
    received = logged_at(worker, "received job request", measurement.room)
    if received is not None:
        measurement.job_received = received - dispatched_at
    await wait_job_ended(worker, measurement.room)
    return measurement


# -- the lower bound: the provider's API chain and the avatar's boot, no pipeline ---------------


class LowerBound:
    """Starts the avatar straight from the bench process: one provider call (the shortest chain the
    provider offers), with the greeting made meanwhile and streamed the moment the avatar's video is up.
    What remains is what no agent can avoid: API latency, the avatar's boot and join, and the media path.
    """

    def __init__(
        self,
        server: LiveKitServer,
        emulation: ProviderEmulation,
        conditions: Conditions,
        http: aiohttp.ClientSession,
    ) -> None:
        self._server = server
        self._emulation = emulation
        self._voice = FirstAudioLatencyEngine(conditions.first_audio_latency)
        emulator = emulation.emulator
        self._lemonslice: LemonSliceAPI | None = None
        self._anam: AnamAPI | None = None
        if isinstance(emulator, LemonSliceEmulator):
            self._lemonslice = LemonSliceAPI(
                ProviderHttp(http, "lemonslice", read_error_text=lemonslice_error_text),
                api_key=PROVIDER_KEY,
                api_url=emulator.sessions_url,
            )
        elif isinstance(emulator, AnamEmulator):
            self._anam = AnamAPI(
                ProviderHttp(
                    http,
                    "anam",
                    read_error_text=anam_error_text,
                    is_quota_exceeded=anam_is_hard_limit,
                ),
                api_key=PROVIDER_KEY,
                api_url=emulator.url,
            )
        else:
            raise ValueError(f"no lower bound for the {emulation.provider} avatar")

    async def measure(self, lk: api.LiveKitAPI) -> Measurement:
        identity = self._emulation.identity
        async with user_in_new_room(self._server, lk, "bound") as user:
            room = user.room.name
            measurement = Measurement(room)
            clock = UserClock(user, identity, want_word=True)
            speech = asyncio.create_task(
                self._voice.render(BOUND_GREETING, voice="en-us", words_per_minute=175)
            )
            agent = asyncio.create_task(
                connect_participant(self._server, room, BOUND_AGENT_IDENTITY, kind="agent")
            )
            try:
                await self._provider_call(self._avatar_token(room, identity))
                agent_room = await agent
                for method in ("lk.playback_started", "lk.playback_finished"):
                    agent_room.local_participant.register_rpc_method(method, _acknowledge)
                pcm = await speech
                await utils.wait_for_track_publication(
                    room=agent_room, identity=identity, kind=rtc.TrackKind.KIND_VIDEO
                )
                writer = await agent_room.local_participant.stream_bytes(
                    name=f"AUDIO_{uuid.uuid4().hex[:8]}",
                    topic=AUDIO_STREAM_TOPIC,
                    destination_identities=[identity],
                    attributes={"sample_rate": str(self._voice.sample_rate), "num_channels": "1"},
                )
                await writer.write(pcm)
                await writer.aclose()
                await clock.until_seen(measurement)
            except Exception as error:
                measurement.error = describe_error(error)
            finally:
                await clock.aclose()
                for task in (speech, agent):
                    task.cancel()
                await asyncio.gather(speech, agent, return_exceptions=True)
                if agent.done() and not agent.cancelled() and agent.exception() is None:
                    await agent.result().disconnect()
        await self._emulation.wait_sessions_ended()
        return measurement

    def _avatar_token(self, room: str, identity: str) -> str:
        return mint_avatar_token(
            AvatarTokenRequest(
                room_name=room,
                avatar_identity=identity,
                agent_identity=BOUND_AGENT_IDENTITY,
                ttl=timedelta(minutes=10),
            ),
            api_key=self._server.api_key,
            api_secret=self._server.api_secret,
        )

    async def _provider_call(self, token: str) -> None:
        livekit_url = self._server.ws_url
        if self._lemonslice is not None:
            await self._lemonslice.start_agent_session(
                LemonSliceAgent(agent_id="bench-agent"),
                livekit_url=livekit_url,
                livekit_token=token,
            )
        elif self._anam is not None:
            await self._anam.start_session_direct(
                PersonaConfig(name="Assistant", avatar_id="bench-avatar"),
                livekit_url=livekit_url,
                livekit_token=token,
            )


def _acknowledge(_: rtc.RpcInvocationData) -> str:
    return "ok"


# -- processes ------------------------------------------------------------------------------------


async def start_all(workers: Sequence[WorkerProcess]) -> None:
    await asyncio.gather(*(worker.start() for worker in workers))
    await asyncio.gather(*(wait_pool_ready(worker) for worker in workers))


async def stop_all(workers: Sequence[WorkerProcess]) -> None:
    results = await asyncio.gather(*(worker.stop() for worker in workers), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            print(f"warning: a worker did not stop cleanly: {result}", flush=True)


def log_to_file(path: Path) -> None:
    """The bench process's own library logs (its avatars, its user) go to a file, not between the figures."""
    logging.basicConfig(
        filename=path, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def machine_load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def describe_error(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
