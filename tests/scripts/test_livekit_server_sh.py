"""scripts/livekit-server.sh install, as a fresh machine runs it: a stub `go` on PATH, an empty cache folder.

A build that finishes leaves exactly the binary; a build that fails or is interrupted leaves nothing that
looks finished, and no scratch folder, in the cache.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "livekit-server.sh"
SYSTEM_PATH = "/usr/bin:/bin"


def stub_go(bin_dir: Path, body: str) -> Path:
    """A `go` whose `install` runs `body` (GOBIN is where a real build puts `server`)."""
    bin_dir.mkdir(exist_ok=True)
    go = bin_dir / "go"
    go.write_text(f'#!/bin/bash\nset -eu\n[[ "$1" == install ]] || exit 64\n{body}\n')
    go.chmod(0o755)
    return go


BUILDS = 'printf "#!/bin/sh\\necho livekit-server\\n" > "$GOBIN/server"; chmod +x "$GOBIN/server"'


def run_install(
    cache: Path, bin_dir: Path, *, path: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own script
        [str(SCRIPT), "install"],
        env={
            "PATH": path or f"{bin_dir}:{SYSTEM_PATH}",
            "HOME": str(cache.parent),
            "LIVEKIT_SERVER_DIR": str(cache),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_first_build_leaves_the_binary_and_nothing_else(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    stub_go(tmp_path / "bin", BUILDS)

    result = run_install(cache, tmp_path / "bin")

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(cache / "server")
    assert sorted(p.name for p in cache.iterdir()) == ["server"]
    assert (
        subprocess.run(  # noqa: S603
            [str(cache / "server")], capture_output=True, text=True, check=True
        ).stdout
        == "livekit-server\n"
    )


def test_an_installed_binary_is_used_without_building(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    stub_go(tmp_path / "bin", BUILDS)
    assert run_install(cache, tmp_path / "bin").returncode == 0
    stub_go(tmp_path / "bin", 'echo "go must not run again" >&2; exit 1')

    result = run_install(cache, tmp_path / "bin")

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(cache / "server")


def test_a_failing_build_leaves_nothing_and_shows_the_build_error(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    stub_go(tmp_path / "bin", 'echo "go: module lookup disabled: boom-1234" >&2; exit 1')

    result = run_install(cache, tmp_path / "bin")

    assert result.returncode != 0
    assert "boom-1234" in result.stderr
    assert "go install of livekit-server" in result.stderr
    assert result.stdout == ""
    assert list(cache.iterdir()) == []


def test_a_build_that_makes_no_binary_is_a_failure(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    stub_go(tmp_path / "bin", "true")

    result = run_install(cache, tmp_path / "bin")

    assert result.returncode != 0
    assert "produced no 'server' binary" in result.stderr
    assert list(cache.iterdir()) == []


def test_without_go_it_says_what_is_missing(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (tmp_path / "bin").mkdir()

    result = run_install(cache, tmp_path / "bin")

    assert result.returncode != 0
    assert "go is required" in result.stderr
    assert not (cache / "server").exists()


def test_scratch_left_by_a_killed_build_is_swept_by_the_next_one(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    leftover = cache / ".build.AbC123"
    leftover.mkdir(parents=True)
    (leftover / "server").write_text("half a binary")
    stub_go(tmp_path / "bin", BUILDS)

    result = run_install(cache, tmp_path / "bin")

    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in cache.iterdir()) == ["server"]


def read_line(fifo: Path, process: subprocess.Popen[str], *, timeout: float) -> str:
    """A line from `fifo`, failing (rather than blocking for ever) if `process` ends first."""
    descriptor = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # no waiting for a writer
    try:
        data = b""
        deadline = time.monotonic() + timeout
        while b"\n" not in data:
            if process.poll() is not None:
                raise AssertionError(f"the script ended ({process.returncode}) before {data!r}")
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing on {fifo} in {timeout} s")
            readable, _, _ = select.select([descriptor], [], [], 0.1)
            if readable:
                data += os.read(descriptor, 4096)
        return data.decode().split("\n", 1)[0]
    finally:
        os.close(descriptor)


# Ctrl-C as at a terminal. A process started in the background by a non-interactive shell (a CI
# runner's, say) has SIGINT ignored, and so has everything it starts: bash cannot trap a signal
# ignored when it started, and the script would never see the interrupt.
WITH_DEFAULT_SIGINT = [
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])",
]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_build_leaves_no_binary_and_no_scratch(
    tmp_path: Path, sig: signal.Signals
) -> None:
    cache = tmp_path / "cache"
    started = tmp_path / "started"
    marker = f"stub-go-build-{uuid.uuid4().hex}"  # names this run's build process
    os.mkfifo(started)
    # Half a binary is written, then the build goes on until it is stopped.
    stub_go(
        tmp_path / "bin",
        f'echo partial > "$GOBIN/server"; chmod +x "$GOBIN/server"\n'
        f'echo building > "{started}"\nexec -a "{marker}" sleep 60',
    )
    install = subprocess.Popen(  # noqa: S603
        [*WITH_DEFAULT_SIGINT, str(SCRIPT), "install"],
        env={
            "PATH": f"{tmp_path / 'bin'}:{SYSTEM_PATH}",
            "HOME": str(tmp_path),
            "LIVEKIT_SERVER_DIR": str(cache),
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert read_line(started, install, timeout=60) == "building"  # the stub is half-way
        install.send_signal(sig)
        _, stderr = install.communicate(timeout=10)
    finally:
        if install.poll() is None:
            install.kill()
            install.wait()

    assert install.returncode == -sig, stderr
    assert not (cache / "server").exists()
    assert list(cache.iterdir()) == []
    # the build itself was stopped too, not left running
    assert not [p for p in psutil.process_iter(["cmdline"]) if marker in (p.info["cmdline"] or [])]
