"""The Dockerfile built for real, and a job served from its image on a real livekit-server.

scripts/build-image.sh builds the image with podman from a copy of this checkout into which secrets are
planted (.env files, a key, a log, VCS config). The image must leave them out (.dockerignore), hold the
runtime dependencies only and no tests, run as a numeric non-root user, carry the model files the worker
loads and import every module of the app; and, its CMD started as a container runtime would start it
(tests/support/image.py), it must register with the server, serve a job with the local avatar (the user
decodes its video and hears the greeting) and, on SIGTERM, drain the job and exit 0.

Needs root (podman, chroot); the build is cached, so a second run takes seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.dispatch import dispatch_to_workers
from tests.support.image import (
    REPO_ROOT,
    ImageError,
    MountedImage,
    build_image,
    mounted_image,
    podman,
)
from tests.support.livekit_server import LiveKitServer, server_api
from tests.support.lock import normalize, runtime_distributions
from tests.support.room_user import AUDIBLE_RMS, RoomUser, job_avatar_identity
from tests.support.worker import WorkerProcess, worker_settings

pytestmark = pytest.mark.e2e

IMAGE_TAG = "localhost/avatar-agent:image-test"
WORKER_CMD = ["python", "agent.py", "start"]
AVATAR_IDENTITY = "local-avatar-agent"  # the base: each job makes it its own
PUBLISH_ON_BEHALF = "lk.publish_on_behalf"

CANARY = f"planted-secret-{secrets.token_hex(8)}"
# Files a developer's checkout holds and no image may: every one of them carries the canary.
PLANTED = {
    ".env": f"LIVEKIT_API_SECRET={CANARY}\n",
    ".env.production": f"ANAM_API_KEY={CANARY}\n",
    ".env.local": f"LEMONSLICE_API_KEY={CANARY}\n",
    "KMS/signing-key.pem": f"-----BEGIN PRIVATE KEY-----\n{CANARY}\n",
    "providers/debug.log": f"Authorization: Bearer {CANARY}\n",
    ".git/config": f'[credential]\n\thelper = "store {CANARY}"\n',
    ".venv/lib/credentials.txt": f"{CANARY}\n",
}

WHO_AM_I = (
    "import json, os; print(json.dumps([os.getuid(), os.getgid(), os.getgroups(), os.getcwd()]))"
)
LIST_DISTRIBUTIONS = (
    "import importlib.metadata as m, json; "
    "print(json.dumps(sorted({d.metadata['Name'] for d in m.distributions()})))"
)
# Imports every module of the app found in the working directory; an import error is raised, not
# skipped (walk_packages ignores them unless told otherwise).
IMPORT_EVERY_APP_MODULE = """
import importlib, json, pkgutil

def fail(name):
    raise

names = [module.name for module in pkgutil.walk_packages(["."], onerror=fail)]
for name in names:
    importlib.import_module(name)
print(json.dumps(names))
"""
MODEL_PATHS = (
    "import espeakng_loader, json, pocketsphinx; "
    "print(json.dumps([espeakng_loader.get_data_path(), pocketsphinx.get_model_path()]))"
)


def _copy_checkout(destination: Path) -> None:
    """What a clean clone of this checkout holds, with its uncommitted changes: tracked and new files."""
    git = shutil.which("git")
    if git is None:
        pytest.fail("git is needed to list the checkout's files for the build context")
    listed = subprocess.run(  # noqa: S603 - git with fixed arguments
        [git, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO_ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


@pytest.fixture(scope="module")
def built_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    if os.geteuid() != 0:
        pytest.fail("the image test needs root: podman builds and mounts the image, chroot runs it")
    context = tmp_path_factory.mktemp("build-context")
    _copy_checkout(context)
    for name, text in PLANTED.items():
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        (context / name).write_text(text)
    try:
        summary = build_image(context, IMAGE_TAG)
    except ImageError as error:
        pytest.fail(str(error))
    print(f"\n[image] {summary}")
    return IMAGE_TAG


@pytest.fixture(scope="module")
def image(built_image: str) -> Iterator[MountedImage]:
    with mounted_image(built_image) as mounted:
        yield mounted


def test_runs_as_a_numeric_non_root_user_who_owns_the_app(image: MountedImage) -> None:
    assert re.fullmatch(r"\d+:\d+", image.config.user), f"USER {image.config.user!r}"
    user = image.user
    assert user.uid != 0 and user.gid != 0
    assert image.config.workdir == user.home == "/app"
    app = image.path("/app")
    not_owned = [
        str(path.relative_to(app))
        for path in [app, *app.rglob("*")]
        if (path.lstat().st_uid, path.lstat().st_gid) != (user.uid, user.gid)
    ]
    assert not not_owned, f"in /app but not owned by {user.uid}:{user.gid}: {not_owned[:10]}"

    # and the process started in it is that user, in that directory, with no other group
    identity = json.loads(image.run(["python", "-c", WHO_AM_I]).stdout)
    assert identity == [user.uid, user.gid, [user.gid], "/app"]


def test_starts_the_worker_in_exec_form_with_its_health_check(image: MountedImage) -> None:
    assert image.config.entrypoint == []
    assert image.config.cmd == WORKER_CMD
    assert "8081/tcp" in image.config.exposed_ports
    # Docker's image format keeps HEALTHCHECK; an OCI-format build would have dropped it silently.
    assert image.config.healthcheck[:2] == ["CMD", "python"]
    # it asks the port the worker serves on (tests/test_dockerfile.py runs it against a server)
    assert "AGENT_HTTP_PORT" in image.config.healthcheck[-1]
    assert "'8081'" in image.config.healthcheck[-1]


def test_holds_the_runtime_dependencies_only(image: MountedImage) -> None:
    installed = {
        normalize(name)
        for name in json.loads(image.run(["python", "-c", LIST_DISTRIBUTIONS]).stdout)
    }
    runtime = runtime_distributions()
    assert {"livekit-agents", "livekit", "espeakng-loader", "pocketsphinx"} <= installed
    not_runtime = sorted(installed - runtime)
    assert not not_runtime, (
        f"installed but not a runtime dependency (dev or bench group?): {not_runtime}"
    )
    # the build's tools stayed in the build stage
    on_path = [
        image.path(d) / tool for d in image.config.env["PATH"].split(":") for tool in ("uv", "uvx")
    ]
    assert not [str(p) for p in on_path if p.exists()], "uv is in the image"


def test_imports_every_module_of_the_app(image: MountedImage) -> None:
    """A module agent.py (or any module of the app) imports but the Dockerfile does not copy fails here."""
    imported = json.loads(image.run(["python", "-c", IMPORT_EVERY_APP_MODULE]).stdout)
    assert "agent" in imported and "config" in imported


def test_has_the_model_files_the_worker_loads(image: MountedImage) -> None:
    espeak_data, sphinx_models = json.loads(image.run(["python", "-c", MODEL_PATHS]).stdout)
    espeak = image.path(espeak_data)
    assert (espeak / "phontab").is_file() and (espeak / "en_dict").is_file()
    en_us = image.path(sphinx_models) / "en-us"
    for model_file in ("en-us.lm.bin", "cmudict-en-us.dict", "en-us/mdef"):
        assert (en_us / model_file).is_file(), model_file


def _files_containing(root: Path, needle: bytes) -> list[Path]:
    found = []
    for directory, _, files in os.walk(root):
        for name in files:
            path = Path(directory) / name
            if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
                found.append(path)
    return found


def test_leaves_out_tests_and_every_planted_secret(image: MountedImage) -> None:
    app = image.path("/app")
    own_files = [p for p in app.rglob("*") if p.relative_to(app).parts[0] != ".venv"]
    test_files = [
        str(p.relative_to(app))
        for p in own_files
        if p.name in {"tests", "bench", "conftest.py"} or re.fullmatch(r"test_.*\.py", p.name)
    ]
    assert not test_files
    assert not [name for name in PLANTED if (app / name).exists()]
    assert not _files_containing(image.root, CANARY.encode())
    metadata = podman("image", "inspect", image.tag) + podman("history", "--no-trunc", image.tag)
    assert CANARY not in metadata


async def test_the_image_serves_a_job_and_drains_on_sigterm(
    image: MountedImage, livekit_server: LiveKitServer, tmp_path: Path
) -> None:
    agent_name = f"image-{uuid.uuid4().hex[:6]}"
    room = f"room-image-{uuid.uuid4().hex[:8]}"
    settings = worker_settings(livekit_server, agent_name, {"AVATAR_PROVIDER": "local"})
    worker = WorkerProcess(image.environment(settings), cwd=tmp_path, command=image.command())
    try:
        started = time.monotonic()
        await worker.start(register_timeout=120)
        print(f"\n[image] container start -> registered worker: {time.monotonic() - started:.2f}s")
        assert worker.pid in image.processes(session=worker.pid), (
            "the worker does not run inside the image"
        )

        user = await RoomUser.join(livekit_server, room)
        try:
            async with server_api(livekit_server) as lk:
                await dispatch_to_workers(lk, agent_name, room, [worker])
            agent = await user.wait_for_agent()
            identity = job_avatar_identity(AVATAR_IDENTITY, agent.identity)
            avatar = await user.wait_for_participant(identity=identity)
            assert avatar.attributes.get(PUBLISH_ON_BEHALF) == agent.identity
            frame = await user.first_video_frame(identity)
            assert (frame.width, frame.height) == (640, 480)
            loudest = await user.loudest_audio(identity, threshold=AUDIBLE_RMS)
            assert loudest >= AUDIBLE_RMS

            # What an orchestrator does to replace the container: the worker drains, the job goes on
            # until the user leaves, then the worker exits 0.
            worker.terminate()
            await worker.wait_for_log(lambda r: r.get("message") == "draining worker", timeout=10)
            assert agent.identity in user.room.remote_participants
            await user.leave()
            assert await worker.wait_for_exit(timeout=60) == 0, worker.output_tail()
            assert image.processes(session=worker.pid) == [], "processes of the worker outlived it"
        finally:
            await user.leave()
    finally:
        await worker.stop()
        # the worker started its own session: nothing of it is left behind, even after a failure
        for pid in image.processes(session=worker.pid) if worker.started else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert not any(livekit_server.api_secret in line for line in worker.raw_output)
