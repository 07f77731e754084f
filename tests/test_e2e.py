"""End to end: a real livekit-server, the worker as a real process, a user in the room.

For each provider (local, and LemonSlice / Anam through their emulators, whose avatars really join),
the avatar must join with the identity, kind and publish-on-behalf attribute we minted, show video the
user decodes, speak the agent's greeting the user hears, and leave with the job.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from livekit import api, rtc

from tests.support.avatar_launcher import LocalAvatarLauncher
from tests.support.dispatch import dispatch_to_workers
from tests.support.emulators import AnamEmulator, EmulatorServer, LemonSliceEmulator
from tests.support.livekit_server import LiveKitServer, connect_participant, server_api
from tests.support.room_user import AUDIBLE_RMS, RoomUser, job_avatar_identity
from tests.support.worker import LogRecord, WorkerProcess, running_worker, worker_environment
from web.token import user_token

pytestmark = pytest.mark.e2e

LEMONSLICE_KEY = "ls-e2e-key-never-logged"
ANAM_KEY = "anam-e2e-key-never-logged"
PUBLISH_ON_BEHALF = "lk.publish_on_behalf"
AVATAR_NAME = "Ada, the avatar"


@dataclass
class Deployment:
    """One worker configured for one provider, and the provider's emulator if it has one."""

    provider: str
    agent_name: str
    worker: WorkerProcess
    avatar_identity: str
    sample_rate: int
    emulator: EmulatorServer | None
    launcher: LocalAvatarLauncher | None


@pytest.fixture(params=["local", "lemonslice", "anam"])
async def deployment(
    request: pytest.FixtureRequest, livekit_server: LiveKitServer, tmp_path: Path
) -> AsyncIterator[Deployment]:
    provider: str = request.param
    agent_name = f"e2e-{provider}-{uuid.uuid4().hex[:6]}"
    launcher = LocalAvatarLauncher() if provider != "local" else None
    emulator: EmulatorServer | None = None
    extra: dict[str, str] = {"AVATAR_PROVIDER": provider, "AVATAR_NAME": AVATAR_NAME}
    if provider == "lemonslice":
        emulator = LemonSliceEmulator(api_key=LEMONSLICE_KEY, avatar_launcher=launcher)
        await emulator.start()
        extra |= emulator.worker_settings("agent-e2e")
        identity, rate = "lemonslice-avatar-agent", 16000
    elif provider == "anam":
        emulator = AnamEmulator(api_key=ANAM_KEY, avatar_launcher=launcher)
        await emulator.start()
        extra |= emulator.worker_settings()
        identity, rate = "anam-avatar-agent", 24000
    else:
        identity, rate = "local-avatar-agent", 24000
    worker = WorkerProcess(worker_environment(livekit_server, agent_name, extra), cwd=tmp_path)
    try:
        await worker.start()
        yield Deployment(provider, agent_name, worker, identity, rate, emulator, launcher)
        assert await worker.stop() == 0, worker.output_tail()
    finally:
        await worker.stop()
        if emulator is not None:
            await emulator.aclose()
    secrets = [LEMONSLICE_KEY, ANAM_KEY, livekit_server.api_secret]
    if emulator is not None:  # the avatar JWTs the worker minted and sent
        secrets += [session.launch.livekit_token for session in emulator.sessions]
    for secret in secrets:
        assert not any(secret in line for line in worker.raw_output)


def _logged_in(room: str, message: str) -> Callable[[LogRecord], bool]:
    return lambda record: record.get("message") == message and record.get("room") == room


async def twirp_status(server: LiveKitServer, token: str, method: str, body: dict[str, str]) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{server.http_url}/twirp/livekit.RoomService/{method}",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        ) as response,
    ):
        return response.status


async def test_avatar_joins_shows_video_speaks_and_leaves_with_the_job(
    deployment: Deployment,
    livekit_server: LiveKitServer,
) -> None:
    room = f"room-{deployment.provider}-{uuid.uuid4().hex[:8]}"
    observer = RoomUser(
        await connect_participant(
            livekit_server,
            room,
            "observer",
            grants=api.VideoGrants(room_join=True, room=room, hidden=True, can_publish=False),
        )
    )
    user = await RoomUser.join(livekit_server, room)
    try:
        dispatched_at = time.monotonic()
        async with server_api(livekit_server) as lk:
            await dispatch_to_workers(lk, deployment.agent_name, room, [deployment.worker])

        # the agent, then its avatar: kind agent, speaking for the agent
        agent = await user.wait_for_agent()
        # the avatar's identity is the provider's, made unique to this job
        deployment.avatar_identity = job_avatar_identity(deployment.avatar_identity, agent.identity)
        avatar = await user.wait_for_participant(identity=deployment.avatar_identity)
        assert avatar.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
        assert avatar.attributes.get(PUBLISH_ON_BEHALF) == agent.identity
        assert avatar.name == AVATAR_NAME

        # video the user decodes, and the greeting the user hears from the avatar
        frame = await user.first_video_frame(deployment.avatar_identity)
        assert (frame.width, frame.height) == (640, 480)
        print(
            f"\n[{deployment.provider}] dispatch -> first avatar video frame: "
            f"{frame.received_at - dispatched_at:.2f}s"
        )
        loudest = await user.loudest_audio(deployment.avatar_identity, threshold=AUDIBLE_RMS)
        assert loudest >= AUDIBLE_RMS
        # the agent's speech goes to the avatar: the agent's own track (its voice while the avatar
        # booted, docs/first-word.md) is taken down once the avatar speaks
        await user.wait_without_track(agent.identity, rtc.TrackKind.KIND_AUDIO, timeout=15)

        # the application's modules were imported once, in the worker's forkserver, not per job
        [preload] = [
            r for r in deployment.worker.records if r.get("message") == "preloading plugins"
        ]
        ours = {"config", "providers.registry", "speech.pipeline", "subscriptions"}
        if deployment.provider == "local":
            ours.add("providers.local.avatar")
        assert ours <= set(preload["packages"])

        # the greeting reached the avatar over lk.audio_stream at the provider's sample rate
        if deployment.launcher is not None:
            launched = deployment.launcher.launched[-1].participant
            assert launched is not None
            stats = await launched.wait_for_stats(lambda s: s.segments_started >= 1, timeout=10)
            assert stats.input_sample_rates == (deployment.sample_rate,)
            await _check_token_is_narrow(livekit_server, deployment, room)
        else:  # the local avatar runs inside the job: it says so in the worker's log
            await deployment.worker.wait_for_log(
                _logged_in(
                    room,
                    f"local avatar {deployment.avatar_identity} receives speech at "
                    f"{deployment.sample_rate} Hz",
                ),
                timeout=5,
            )

        # the user leaves: the job ends, the avatar leaves, the provider session is ended
        await user.leave()
        await observer.wait_until_gone(deployment.avatar_identity, timeout=30)
        await observer.wait_until_gone(agent.identity, timeout=30)
        if isinstance(deployment.emulator, LemonSliceEmulator):
            terminate = deployment.emulator.requests_for("control")
            assert [r.json for r in terminate] == [{"event": "terminate"}]
        emulator = deployment.emulator
        if emulator is not None:
            # Anam ends a session once its avatar, removed from the room, hears it was: that can
            # come just after the room shows it gone.
            async with asyncio.timeout(10):
                await emulator.wait_until(lambda: emulator.active_sessions == ())
            assert len(emulator.sessions) == 1  # no duplicate, billed session
        if deployment.launcher is not None:
            launched_avatar = deployment.launcher.launched[-1].participant
            assert launched_avatar is not None
            await launched_avatar.wait_for_closed(timeout=10)
            await _check_token_publishes_only_camera_and_microphone(livekit_server, deployment)
    finally:
        await user.leave()
        await observer.leave()


async def _check_token_is_narrow(server: LiveKitServer, deployment: Deployment, room: str) -> None:
    """The token the provider received: one room, no admin rights (the server itself refuses them)."""
    assert deployment.emulator is not None
    token = deployment.emulator.sessions[-1].launch.livekit_token
    claims = api.TokenVerifier(server.api_key, server.api_secret).verify(token)
    assert claims.video is not None and claims.video.room == room
    assert claims.identity == deployment.avatar_identity
    for method, body in (
        ("ListRooms", {}),
        ("CreateRoom", {"name": "not-yours"}),
        ("ListParticipants", {"room": room}),
        ("RemoveParticipant", {"room": room, "identity": "user"}),
    ):
        assert await twirp_status(server, token, method, body) in (401, 403), method


async def _check_token_publishes_only_camera_and_microphone(
    server: LiveKitServer, deployment: Deployment
) -> None:
    """Rejoin with the avatar's own token (the avatar is gone): the server lets it publish a camera
    track, and refuses a screen share."""
    assert deployment.emulator is not None
    token = deployment.emulator.sessions[-1].launch.livekit_token
    room = rtc.Room()
    await room.connect(server.ws_url, token, rtc.RoomOptions(auto_subscribe=False))
    try:
        source = rtc.VideoSource(64, 64)
        camera = rtc.LocalVideoTrack.create_video_track("camera", source)
        await room.local_participant.publish_track(
            camera, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA)
        )
        screen = rtc.LocalVideoTrack.create_video_track("screen", source)
        # livekit-server v1.13.5 does not answer a publication the token forbids: the client times out
        with pytest.raises(Exception, match=r"(?i)timed out|permission|not allowed|denied"):
            await room.local_participant.publish_track(
                screen, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_SCREENSHARE)
            )
        async with server_api(server) as lk:
            seen = await lk.room.get_participant(
                api.RoomParticipantIdentity(room=room.name, identity=deployment.avatar_identity)
            )
        assert [track.source for track in seen.tracks] == [api.TrackSource.CAMERA]
    finally:
        await room.disconnect()


async def test_the_quick_start_token_dispatches_the_agent_on_join(
    livekit_server: LiveKitServer, tmp_path: Path
) -> None:
    """scripts/run-local.sh prints a token from scripts/join_local.py: joining with it brings the agent."""
    agent_name = f"e2e-quick-{uuid.uuid4().hex[:6]}"
    room_name = f"room-quick-{uuid.uuid4().hex[:8]}"
    token = user_token(
        api_key=livekit_server.api_key,
        api_secret=livekit_server.api_secret,
        room=room_name,
        agent_name=agent_name,
        identity="you",
    )
    async with running_worker(livekit_server, agent_name, tmp_path):
        room = rtc.Room()
        await room.connect(livekit_server.ws_url, token)
        user = RoomUser(room)
        try:
            agent = await user.wait_for_agent(timeout=60)
            avatar = job_avatar_identity("local-avatar-agent", agent.identity)
            await user.wait_for_participant(identity=avatar, timeout=60)
            frame = await user.first_video_frame(avatar)
            assert frame.width > 0
        finally:
            await user.leave()


async def test_a_failing_provider_leaves_the_agent_speaking_in_its_own_voice(
    livekit_server: LiveKitServer,
    tmp_path: Path,
) -> None:
    """livekit/agents#7276: the avatar fails (here: the provider refuses the key); the user still hears the agent."""
    async with LemonSliceEmulator(api_key="the-right-key") as emulator:
        agent_name = f"e2e-fallback-{uuid.uuid4().hex[:6]}"
        provider = {
            "AVATAR_PROVIDER": "lemonslice",
            "LEMONSLICE_API_KEY": LEMONSLICE_KEY,
            "LEMONSLICE_API_URL": emulator.sessions_url,
            "LEMONSLICE_AGENT_ID": "agent-e2e",
        }
        async with running_worker(livekit_server, agent_name, tmp_path, provider) as worker:
            room = f"room-fallback-{uuid.uuid4().hex[:8]}"
            user = await RoomUser.join(livekit_server, room)
            try:
                async with server_api(livekit_server) as lk:
                    await dispatch_to_workers(lk, agent_name, room, [worker])
                agent = await user.wait_for_agent()
                loudest = await user.loudest_audio(agent.identity, threshold=AUDIBLE_RMS)
                assert loudest >= AUDIBLE_RMS
                assert [r.status for r in emulator.requests] == [401]
                avatar = job_avatar_identity("lemonslice-avatar-agent", agent.identity)
                assert avatar not in user.room.remote_participants
                await worker.wait_for_log(
                    lambda r: "AuthenticationError" in str(r.get("error_type")), timeout=5
                )
            finally:
                await user.leave()


FULL = "worker is at full capacity, marking as unavailable"
AVAILABLE = "worker is below capacity, marking as available"


def _times_logged(worker: WorkerProcess, message: str) -> int:
    return sum(1 for record in worker.records if record.get("message") == message)


async def _logs_again(worker: WorkerProcess, message: str, times_before: int) -> None:
    await worker.wait_until(lambda: _times_logged(worker, message) > times_before, timeout=30)


async def test_two_workers_share_ten_dispatches(
    livekit_server: LiveKitServer,
    tmp_path: Path,
) -> None:
    """Each worker takes one job at a time (AGENT_MAX_JOBS=1): while one is busy, the next job
    goes to the other. Which worker takes a job when both are free is the server's random pick, so
    the jobs go in pairs, the second sent once the first's worker has told the server it is full."""
    agent_name = f"e2e-pair-{uuid.uuid4().hex[:6]}"
    env = worker_environment(
        livekit_server, agent_name, {"AVATAR_PROVIDER": "local", "AGENT_MAX_JOBS": "1"}
    )
    workers = [WorkerProcess(env, cwd=tmp_path) for _ in range(2)]
    try:
        await asyncio.gather(*(w.start() for w in workers))
        served: list[int] = []
        async with server_api(livekit_server) as lk:
            for pair in range(5):
                rooms = [f"room-pair-{pair}-{n}-{uuid.uuid4().hex[:6]}" for n in range(2)]
                takers: list[int] = []
                for room in rooms:
                    full_before = [_times_logged(w, FULL) for w in workers]
                    taker = await dispatch_to_workers(lk, agent_name, room, workers)
                    await workers[taker].wait_for_log(_logged_in(room, "avatar joined"), timeout=60)
                    await _logs_again(workers[taker], FULL, full_before[taker])
                    takers.append(taker)
                assert takers[1] != takers[0], "a worker at capacity was given a second job"
                served += takers
                available_before = [_times_logged(w, AVAILABLE) for w in workers]
                for room, taker in zip(rooms, takers, strict=True):
                    await lk.room.delete_room(api.DeleteRoomRequest(room=room))
                    await workers[taker].wait_for_log(
                        _logged_in(room, "local avatar session closed"), timeout=60
                    )
                # Both free again, as the server knows, before the next pair.
                for worker, before in zip(workers, available_before, strict=True):
                    await _logs_again(worker, AVAILABLE, before)
        per_worker = [served.count(i) for i in range(2)]
        print(f"\ndispatches per worker: {per_worker}")
        assert per_worker == [5, 5]
    finally:
        for worker in workers:
            await worker.stop()
