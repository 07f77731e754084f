"""Measuring a start-up from the user's side: a user alone in a fresh room is the clock, from the
dispatch (or, for the lower bound, the provider call) to the first decoded avatar video frame and the
first voiced audio from the avatar. Nothing here asks the worker for a figure."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta

import aiohttp
from livekit import api, rtc
from livekit.agents import utils

from bench.emulation import PROVIDER_KEY, Conditions, ProviderEmulation
from bench.voice import FirstAudioLatencyEngine
from bench.workers import logged_at, wait_job_ended
from providers.anam.api import AnamAPI, PersonaConfig
from providers.anam.api import is_hard_limit as anam_is_hard_limit
from providers.anam.api import read_error_text as anam_error_text
from providers.http import ProviderHttp
from providers.lemonslice.api import LemonSliceAgent, LemonSliceAPI
from providers.lemonslice.api import read_error_text as lemonslice_error_text
from providers.token import AvatarTokenRequest, mint_avatar_token
from tests.support.dispatch import dispatch_to_workers
from tests.support.emulators import AnamEmulator, EmulatorServer, LemonSliceEmulator
from tests.support.livekit_server import LiveKitServer, connect_participant
from tests.support.room_user import FirstFrame, RoomUser
from tests.support.worker import WorkerProcess

# int16 RMS of a 10 ms frame: eSpeak's speech is in the thousands, the avatar's idle audio is 0.
VOICED_RMS = 300.0
RUN_TIMEOUT = 60.0
# The lower bound's greeting: the first sentence both workers' greeting starts with.
BOUND_GREETING = "Hello!"
BOUND_AGENT_IDENTITY = "bound-agent"
AUDIO_STREAM_TOPIC = "lk.audio_stream"


# -- measuring from the user's side --------------------------------------------------------------


@dataclass
class Measurement:
    room: str
    first_frame: float | None = None
    first_word: float | None = None
    # Dispatch -> the worker logs the job request: the part no agent code can shorten.
    job_received: float | None = None
    # Dispatch -> the provider emulator received the first API call of the start.
    provider_call: float | None = None
    # Dispatch -> the avatar participant joined the room, as the user saw it.
    avatar_joined: float | None = None
    # Dispatch -> the first voiced audio from the agent's own track or the avatar, whichever first.
    first_voice: float | None = None
    # The agent's own voice's last voiced audio, and the avatar's first, heard by one listener
    # (seconds; None when the own voice did not speak before the avatar).
    own_voice_last: float | None = None
    avatar_voice_first: float | None = None
    # The silence the speech itself has at the handover (the worker's log): what the user should hear.
    natural_pause: float | None = None
    # time.monotonic() of the handover's steps in the worker (its log) and of what the user heard:
    # where the silence at the switch comes from (`handover_breakdown`)
    handover_clock: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    def handover_breakdown(self) -> dict[str, float]:
        """Seconds between the handover's steps, from the own voice's flush to the avatar's first
        voiced audio heard (empty without a handover)."""
        clock = self.handover_clock
        steps = ("own_flushed", "own_played", "avatar_sent", "avatar_heard")
        if not all(step in clock for step in steps):
            return {}
        found = {
            "own playout after flush": clock["own_played"] - clock["own_flushed"],
            "own played -> avatar sent": clock["avatar_sent"] - clock["own_played"],
            "avatar sent -> its first voice heard": clock["avatar_heard"] - clock["avatar_sent"],
        }
        if "own_heard_last" in clock:
            found["own played -> its last voice heard"] = (
                clock["own_heard_last"] - clock["own_played"]
            )
        return found

    @property
    def handover_gap(self) -> float | None:
        """Silence heard at the switch beyond the speech's own pause (seconds; < 0: a shorter pause
        than the speech has, never an overlap), or None when there was no switch."""
        if self.own_voice_last is None or self.avatar_voice_first is None:
            return None
        if self.natural_pause is None:
            return None
        return self.avatar_voice_first - self.own_voice_last - self.natural_pause

    @property
    def handover_overlap(self) -> float | None:
        """How long the own voice was still heard after the avatar's first voiced audio (seconds)."""
        if self.own_voice_last is None or self.avatar_voice_first is None:
            return None
        return max(0.0, self.own_voice_last - self.avatar_voice_first)


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

    def __init__(
        self, user: RoomUser, identity: str, *, want_word: bool, of_job: bool = False
    ) -> None:
        """`of_job`: the avatar is a worker's job's, whose identity the job chooses (ours makes the
        provider's unique to the job): it is the participant that speaks for an agent."""
        self._user = user
        self._identity = identity
        self._resolved: asyncio.Task[str] = asyncio.create_task(self._resolve(of_job))
        self._frame = asyncio.create_task(self._first_frame())
        self._word: asyncio.Task[float] | None = None
        if want_word:
            self._word = asyncio.create_task(self._first_word())
        # Every voice in the room, the agent's own track included (ours speaks before its avatar).
        self._ears = user.hear_everyone(VOICED_RMS)
        self.started = time.monotonic()

    async def _resolve(self, of_job: bool) -> str:
        if of_job:
            self._identity = (await self._user.wait_for_avatar(timeout=RUN_TIMEOUT)).identity
        return self._identity

    async def _first_frame(self) -> FirstFrame:
        return await self._user.first_video_frame(await self._resolved, RUN_TIMEOUT)

    async def _first_word(self) -> float:
        identity = await self._resolved
        return await self._user.first_voiced_audio(
            identity, threshold=VOICED_RMS, timeout=RUN_TIMEOUT
        )

    async def until_seen(self, measurement: Measurement) -> None:
        try:
            frame = await self._frame
            measurement.first_frame = frame.received_at - self.started
            joined = self._user.joined_at.get(self._identity)
            measurement.avatar_joined = joined - self.started if joined is not None else None
            if self._word is not None:
                word = await self._word
                measurement.first_word = word - self.started
                await self._hear_voices(measurement, word)
        except (TimeoutError, AssertionError) as error:
            measurement.error = describe_error(error)
        finally:
            await self.aclose()

    async def _hear_voices(self, measurement: Measurement, avatar_word: float) -> None:
        firsts = [heard[0] for heard in self._ears.audible.values() if heard]
        measurement.first_voice = min([avatar_word, *firsts]) - self.started
        agents = [identity for identity in self._ears.audible if identity != self._identity]
        if not agents:
            return  # the avatar spoke first: no handover
        # Everything the own track sent has arrived once it is unpublished; what was heard from it
        # after the avatar's first voiced audio is overlap.
        with contextlib.suppress(TimeoutError):
            await self._user.wait_without_track(agents[0], rtc.TrackKind.KIND_AUDIO, timeout=10)
        own = [t for identity in agents for t in self._ears.audible[identity]]
        measurement.own_voice_last = max(own) - self.started
        avatar = self._ears.audible.get(self._identity)
        measurement.avatar_voice_first = (avatar[0] if avatar else avatar_word) - self.started
        measurement.handover_clock["own_heard_last"] = max(own)
        measurement.handover_clock["avatar_heard"] = avatar[0] if avatar else avatar_word

    async def aclose(self) -> None:
        tasks = [t for t in (self._resolved, self._frame, self._word) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._ears.aclose()


async def measure_dispatch(
    server: LiveKitServer,
    lk: api.LiveKitAPI,
    worker: WorkerProcess,
    agent_name: str,
    identity: str,
    *,
    emulator: EmulatorServer | None = None,
    want_word: bool = True,
) -> Measurement:
    """Dispatch the agent to a fresh room with a user in it; time the avatar from the user's side
    (and, given the provider's emulator in this process, when the provider got the first call)."""
    async with user_in_new_room(server, lk, "bench") as user:
        measurement = Measurement(user.room.name)
        calls_before = len(emulator.requests) if emulator is not None else 0
        clock = UserClock(user, identity, want_word=want_word, of_job=True)
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
        if emulator is not None and len(emulator.requests) > calls_before:
            first_call = emulator.requests[calls_before].arrived_at  # loop time: monotonic
            measurement.provider_call = first_call - clock.started
    received = logged_at(worker, "received job request", measurement.room)
    if received is not None:
        measurement.job_received = received - dispatched_at
    await wait_job_ended(worker, measurement.room)
    measurement.natural_pause = _natural_pause(worker, measurement.room)
    measurement.handover_clock.update(_handover_clock(worker, measurement.room))
    return measurement


def _natural_pause(worker: WorkerProcess, room: str) -> float | None:
    for record in worker.records:
        if record.get("room") == room and isinstance(pause := record.get("natural_pause"), float):
            return pause
    return None


def _handover_clock(worker: WorkerProcess, room: str) -> dict[str, float]:
    for record in worker.records:
        clock = record.get("handover_clock")
        if record.get("room") == room and isinstance(clock, dict):
            return {k: float(v) for k, v in clock.items() if isinstance(v, int | float)}
    return {}


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
            emulator = self._emulation.emulator
            calls_before = len(emulator.requests) if emulator is not None else 0
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
                if emulator is not None and len(emulator.requests) > calls_before:
                    first_call = emulator.requests[calls_before].arrived_at
                    measurement.provider_call = first_call - clock.started
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


def describe_error(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
