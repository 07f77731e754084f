"""The worker's container image: built with podman (scripts/build-image.sh), run without a container runtime.

`podman run` cannot work on the CI machine (crun cannot set RLIMIT_NOFILE / RLIMIT_NPROC there), so the
image is used the way a runtime uses it, by hand: its filesystem mounted read-only (`podman image mount`)
and a command started in it with chroot, as the image's user, in its working directory, with its
environment. Inside, the process gets what a container gives it: /proc, a read-only /sys, /dev, a private
/dev/shm and /tmp, mounted in a mount namespace of its own that disappears with it (nothing to unmount,
even after a SIGKILL). It shares the host's network (as `--network=host`), so it reaches a livekit-server
on 127.0.0.1. Needs root: podman image mount, mount namespaces and chroot all do.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-image.sh"
BUILD_TIMEOUT_S = 30 * 60

# Runs as root on the host, in the new mount namespace: mounts what a runtime mounts, then becomes the
# image's user in the image's root and working directory, and execs the command (one process all along,
# so a signal sent to it reaches the command itself).
_LAUNCHER = """
set -eu
mount=$1 chroot=$2 root=$3 user=$4 workdir=$5
shift 5
"$mount" -t proc -o nosuid,nodev,noexec proc "$root/proc"
"$mount" -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys"
"$mount" --rbind /dev "$root/dev"
"$mount" -t tmpfs -o nosuid,nodev,mode=1777 shm "$root/dev/shm"
"$mount" -t tmpfs -o nosuid,nodev,mode=1777 tmp "$root/tmp"
exec "$chroot" --userspec="$user" "$root" env -C "$workdir" -- "$@"
"""


class ImageError(RuntimeError):
    pass


def _host_tool(name: str) -> str:
    path = shutil.which(name, path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    if path is None:
        raise ImageError(f"{name} not found on this machine (scripts/ensure-podman.sh installs it)")
    return path


def podman(*args: str, timeout: float = 120) -> str:
    result = subprocess.run(  # noqa: S603 - podman with fixed arguments, no shell
        [_host_tool("podman"), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise ImageError(f"podman {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result.stdout


def build_image(context: Path, tag: str) -> str:
    """Build `context`'s Dockerfile with scripts/build-image.sh; returns its summary line."""
    with subprocess.Popen(  # noqa: S603 - our own script, no shell
        [str(BUILD_SCRIPT), "--context", str(context), "--tag", tag],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            # SIGTERM first: the script then ends debootstrap or podman and removes what they left.
            process.terminate()
            try:
                process.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()
            raise ImageError(f"{BUILD_SCRIPT.name} did not finish in {BUILD_TIMEOUT_S} s") from None
    if process.returncode != 0:
        tail = "\n".join(stderr.splitlines()[-40:])
        raise ImageError(f"{BUILD_SCRIPT.name} failed ({process.returncode}):\n{tail}")
    return stdout.strip().splitlines()[-1]


@dataclass(frozen=True)
class ImageConfig:
    """The parts of the image's configuration a runtime acts on."""

    user: str
    workdir: str
    env: dict[str, str]
    cmd: list[str]
    entrypoint: list[str]
    exposed_ports: list[str]
    healthcheck: list[str]

    @classmethod
    def of(cls, inspected: Mapping[str, Any]) -> ImageConfig:
        config = inspected.get("Config") or {}
        health = inspected.get("Healthcheck") or config.get("Healthcheck") or {}
        return cls(
            user=config.get("User") or "",
            workdir=config.get("WorkingDir") or "/",
            env=dict(item.split("=", 1) for item in config.get("Env") or []),
            cmd=list(config.get("Cmd") or []),
            entrypoint=list(config.get("Entrypoint") or []),
            exposed_ports=sorted(config.get("ExposedPorts") or {}),
            healthcheck=list(health.get("Test") or []),
        )


@dataclass(frozen=True)
class ImageUser:
    uid: int
    gid: int
    home: str


class MountedImage:
    """An image's filesystem, mounted read-only at `root`, and a way to run commands in it."""

    def __init__(self, tag: str, root: Path, config: ImageConfig) -> None:
        self.tag = tag
        self.root = root
        self.config = config

    def path(self, inside: str) -> Path:
        """The host path of a path inside the image."""
        return self.root / inside.lstrip("/")

    def passwd(self) -> list[list[str]]:
        lines = self.path("/etc/passwd").read_text(encoding="utf-8").splitlines()
        return [line.split(":") for line in lines if line and not line.startswith("#")]

    @property
    def user(self) -> ImageUser:
        """USER resolved as a runtime does it: a name or uid, looked up in the image's /etc/passwd."""
        name, _, group = self.config.user.partition(":")
        name = name or "root"
        entry = next((e for e in self.passwd() if name in (e[0], e[2])), None)
        if entry is None:
            if not name.isdigit():
                raise ImageError(f"USER {name} is not in the image's /etc/passwd")
            return ImageUser(int(name), int(group or 0), "/")
        return ImageUser(int(entry[2]), int(group or entry[3]), entry[5])

    def environment(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The image's Env, HOME from the user's passwd entry (as Docker sets it), `extra` last."""
        return {"HOME": self.user.home, **self.config.env, **(extra or {})}

    def command(self, argv: Sequence[str] | None = None) -> list[str]:
        """Host argv that runs `argv` (default: ENTRYPOINT + CMD) inside the image, as its user."""
        argv = list(argv) if argv is not None else [*self.config.entrypoint, *self.config.cmd]
        user = self.user
        return [
            _host_tool("unshare"),
            "--mount",
            "--propagation",
            "private",
            _host_tool("sh"),
            "-c",
            _LAUNCHER,
            "launch-in-image",
            _host_tool("mount"),
            _host_tool("chroot"),
            str(self.root),
            f"{user.uid}:{user.gid}",
            self.config.workdir,
            *argv,
        ]

    def processes(self, *, session: int) -> list[int]:
        """The processes of one session (a command and what it started) running inside the image."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    pid = int(entry.name)
                    if os.getsid(pid) == session and os.readlink(entry / "root") == str(self.root):
                        found.append(pid)
        return found

    def run(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run a command to completion inside the image; raises if it fails."""
        result = subprocess.run(  # noqa: S603 - fixed launcher, argv as a list, no shell of ours
            self.command(argv),
            env=self.environment(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            command = " ".join(argv)[:100]
            raise ImageError(
                f"`{command}` failed in {self.tag} ({result.returncode}):\n{result.stderr[-4000:]}"
            )
        return result


@contextlib.contextmanager
def mounted_image(tag: str) -> Iterator[MountedImage]:
    """Mount the image read-only for the duration of the block."""
    if os.geteuid() != 0:
        raise ImageError("mounting an image and running in it needs root")
    inspected = json.loads(podman("image", "inspect", tag))[0]
    root = Path(podman("image", "mount", tag).strip())
    try:
        yield MountedImage(tag, root, ImageConfig.of(inspected))
    finally:
        podman("image", "unmount", tag)
