"""scripts/test.sh after a crashed test process: it stops what that run left, and nothing else.

Run on a copy of test.sh and scripts/reaped.py, with stubs for what test.sh sets up first (bootstrap,
the page's packages, Chromium, `uv`, the linters) and a `pytest` that starts a detached process, as the
test fixtures start workers and livekit-servers, then dies of SIGSEGV. Meanwhile a process of the same
venv's Python runs from "another terminal" (a `scripts/run-local.sh` worker): it must survive.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SLEEPER = "import time; time.sleep(120)"


def write_stub(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/bash\n{body}\n")
    path.chmod(0o755)


def project_copy(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "scripts").mkdir(parents=True)
    for name in ("test.sh", "reaped.py"):
        shutil.copy2(REPO_ROOT / "scripts" / name, root / "scripts")
    (root / "scripts" / "bootstrap.sh").write_text("# stub: the environment is ready\n")
    write_stub(root / "scripts" / "web-deps.sh", "exit 0")
    write_stub(root / "scripts" / "ensure-chromium.sh", "echo /usr/bin/chromium")
    (root / ".venv" / "bin").mkdir(parents=True)
    os.symlink(sys.executable, root / ".venv" / "bin" / "python")
    return root


def tools(tmp_path: Path, root: Path) -> Path:
    """`uv run X` runs X with the venv first on PATH (ruff and mypy pass); `pytest` crashes once."""
    bin_dir = tmp_path / "bin"
    write_stub(
        bin_dir / "uv",
        '[ "$1" = run ] || exit 64\nshift\ncase "$1" in ruff | mypy) exit 0 ;; esac\n'
        f'PATH="{root}/.venv/bin:$PATH" exec "$@"',
    )
    # The first run leaves a detached process of the venv's Python (in a session of its own, as the
    # fixtures start workers), then dies of SIGSEGV; the second passes.
    write_stub(
        bin_dir / "pytest",
        'echo run >> "$RUNS"\n'
        'if [ "$(wc -l < "$RUNS")" = 1 ]; then\n'
        f'  python -c \'import os, subprocess, sys; p = subprocess.Popen([sys.executable, "-c", "{SLEEPER}"],'
        ' start_new_session=True); open(os.environ["LEFTOVER"], "w").write(str(p.pid))\'\n'
        "  kill -SEGV $$\n"
        "fi\n"
        "exit 0",
    )
    return bin_dir


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@contextlib.contextmanager
def another_terminals_worker(root: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process of the same venv Python, started outside the test run (and stopped by us)."""
    process = subprocess.Popen(  # noqa: S603 - our own interpreter
        [str(root / ".venv" / "bin" / "python"), "-c", SLEEPER], start_new_session=True
    )
    try:
        yield process
    finally:
        process.kill()
        process.wait()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_a_crashed_run_stops_what_it_started_and_nothing_else(tmp_path: Path) -> None:
    root = project_copy(tmp_path)
    bin_dir = tools(tmp_path, root)
    leftover_file, runs = tmp_path / "leftover.pid", tmp_path / "runs"
    with another_terminals_worker(root) as other:
        result = subprocess.run(  # noqa: S603 - our own script
            ["/bin/bash", str(root / "scripts" / "test.sh")],
            env={
                "PATH": f"{bin_dir}:/usr/bin:/bin",
                "HOME": str(tmp_path),
                "LEFTOVER": str(leftover_file),
                "RUNS": str(runs),
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        leftover = int(leftover_file.read_text())
        try:
            assert result.returncode == 0, result.stderr
            assert "crashed" in result.stderr and len(runs.read_text().split()) == 2
            assert not alive(leftover), "the crashed run's own process is still running"
            assert f"stopping what the crashed run left: {leftover}" in result.stderr
            assert other.poll() is None, "a process the run did not start was stopped"
            assert str(other.pid) not in result.stderr
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(leftover, signal.SIGKILL)


def test_reaped_passes_the_commands_status_on(tmp_path: Path) -> None:
    def run(*command: str) -> int:
        return subprocess.run(  # noqa: S603 - our own script
            [sys.executable, str(REPO_ROOT / "scripts" / "reaped.py"), *command],
            capture_output=True,
            timeout=30,
            check=False,
        ).returncode

    assert run("/bin/sh", "-c", "exit 3") == 3
    assert run("/bin/sh", "-c", "kill -ABRT $$") == 134
    started = time.monotonic()
    assert run("/bin/sh", "-c", "exit 0") == 0
    assert time.monotonic() - started < 10


ORPHAN_CHECK = """
import os, subprocess, sys, time
launcher = 'import subprocess, sys; print(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"], start_new_session=True).pid)'
orphan = int(subprocess.run([sys.executable, '-c', launcher], capture_output=True, text=True).stdout)
deadline = time.monotonic() + 20
while os.path.exists(f'/proc/{orphan}') and time.monotonic() < deadline:
    time.sleep(0.05)
sys.exit(0 if not os.path.exists(f'/proc/{orphan}') else 1)
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_an_orphan_that_ends_during_the_run_is_reaped_at_once() -> None:
    """Adopted processes that exit are collected while the command runs: a test waiting for a
    killed worker's helper to be gone must not see a zombie of ours."""
    result = subprocess.run(  # noqa: S603 - our own script
        [
            sys.executable,
            str(REPO_ROOT / "scripts" / "reaped.py"),
            sys.executable,
            "-c",
            ORPHAN_CHECK,
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
