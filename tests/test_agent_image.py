"""End to end: the worker as a process, configured with a face image file (LEMONSLICE_AGENT_IMAGE_PATH).

It uploads the file's bytes in a multipart create to the strict LemonSlice emulator, whose avatar
then joins the real livekit-server and shows video; the session ends with the job. A file that is
not an image stops the worker before it registers, naming the variable.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from tests.support.avatar_launcher import LocalAvatarLauncher
from tests.support.dispatch import dispatch_to_workers
from tests.support.emulators import LemonSliceEmulator
from tests.support.faces import jpeg_face
from tests.support.livekit_server import LiveKitServer, server_api
from tests.support.room_user import RoomUser, job_avatar_identity
from tests.support.worker import WorkerProcess, running_worker, worker_environment

pytestmark = pytest.mark.e2e

LEMONSLICE_KEY = "ls-image-key-never-logged"
LEMONSLICE_AVATAR = "lemonslice-avatar-agent"
# Bounds for a loaded 2-core machine (a run here took 20 s from start to the avatar's video, 7 s
# from the user leaving to the session's end, at a load average of 13).
JOIN_TIMEOUT = 90.0
END_TIMEOUT = 60.0


async def test_the_worker_uploads_its_face_file_and_the_avatar_joins(
    livekit_server: LiveKitServer, tmp_path: Path
) -> None:
    (tmp_path / "face.jpg").write_bytes(jpeg_face())
    launcher = LocalAvatarLauncher()
    async with LemonSliceEmulator(api_key=LEMONSLICE_KEY, avatar_launcher=launcher) as emulator:
        # A relative path, as in a .env next to the project: read from the worker's directory.
        env = emulator.worker_settings(image_path="face.jpg")
        agent_name = f"e2e-image-{uuid.uuid4().hex[:6]}"
        async with running_worker(livekit_server, agent_name, tmp_path, env) as worker:
            user = await RoomUser.join(livekit_server, f"room-image-{uuid.uuid4().hex[:8]}")
            try:
                async with server_api(livekit_server) as lk:
                    await dispatch_to_workers(lk, agent_name, user.room.name, [worker])
                agent = await user.wait_for_agent(timeout=JOIN_TIMEOUT)
                avatar_identity = job_avatar_identity(LEMONSLICE_AVATAR, agent.identity)
                await user.wait_for_video(avatar_identity, timeout=JOIN_TIMEOUT)

                (create,) = emulator.requests_for("create")
                assert create.headers["Content-Type"].startswith("multipart/form-data")
                (session,) = emulator.sessions
                assert session.image is not None
                assert (session.image.content_type, session.image.data) == (
                    "image/jpeg",
                    jpeg_face(),
                )
                assert "agent_id" not in session.config
                assert "agent_image_url" not in session.config
            finally:
                await user.leave()
            # The job ends with the user: its session is terminated, its avatar gone.
            async with asyncio.timeout(END_TIMEOUT):
                await emulator.wait_until(lambda: not emulator.active_sessions)
        assert session.terminated
        tokens = [s.launch.livekit_token for s in emulator.sessions]
        for secret in (LEMONSLICE_KEY, *tokens):
            assert not any(secret in line for line in worker.raw_output)


async def test_a_face_file_that_is_not_an_image_stops_the_worker_at_start(
    livekit_server: LiveKitServer, tmp_path: Path
) -> None:
    (tmp_path / "face.png").write_text("not a picture\n")
    async with LemonSliceEmulator(api_key=LEMONSLICE_KEY) as emulator:
        env = emulator.worker_settings(image_path=str(tmp_path / "face.png"))
        worker = WorkerProcess(
            worker_environment(livekit_server, "e2e-bad-image", env), cwd=tmp_path
        )
        await worker.launch()
        try:
            assert await worker.wait_for_exit(timeout=60) == 2
        finally:
            await worker.stop()
        output = "\n".join(worker.raw_output)
        assert "LEMONSLICE_AGENT_IMAGE_PATH: not a PNG or JPEG image" in output
        assert not any(r.get("message") == "registered worker" for r in worker.records)
        assert emulator.requests == ()
