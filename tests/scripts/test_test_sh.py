"""scripts/test.sh after a crashed test process: it reruns only the tests that did not finish, and
stops what the crashed run left, and nothing else.

Run on a copy of test.sh, scripts/reaped.py and scripts/pytest_progress.py, with stubs for what test.sh
sets up first (bootstrap, the page's packages, Chromium, `uv`, the linters), and the real pytest on a
small suite whose middle test starts a detached process, as the fixtures start workers and
livekit-servers, then dies of SIGSEGV. Meanwhile a process of the same venv's Python runs from "another
terminal" (a `scripts/run-local.sh` worker): it must survive.
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
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SLEEPER = "import time; time.sleep(120)"


SUITE = """
import atexit, os, signal, subprocess, sys
from pathlib import Path

RUNS = Path(os.environ["RUNS"])


def ran(name):
    with RUNS.open("a") as runs:
        runs.write(name + "\\n")
    return RUNS.read_text().split().count(name)


def crash_at_exit():
    # livekit 1.1.21's native threads can crash the interpreter as it exits, after the last test.
    with open(os.environ["EXITS"], "a") as exits:
        exits.write("exit\\n")
    if open(os.environ["EXITS"]).read().split().count("exit") <= int(os.environ["EXIT_CRASHES"]):
        os.kill(os.getpid(), signal.SIGSEGV)


atexit.register(crash_at_exit)


def test_a():
    ran("a")
    assert os.environ.get("A_FAILS") != "1"


def test_b():
    if ran("b") <= int(os.environ["B_CRASHES"]):
        # What a fixture leaves: a detached process of the venv's Python, in a session of its own.
        leftover = subprocess.Popen(
            [sys.executable, "-c", os.environ["SLEEPER"]], start_new_session=True
        )
        with open(os.environ["LEFTOVER"], "a") as pids:
            pids.write(f"{leftover.pid}\\n")
        os.kill(os.getpid(), signal.SIGSEGV)


def test_c():
    ran("c")
"""


def write_stub(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/bash\n{body}\n")
    path.chmod(0o755)


def project_copy(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "scripts").mkdir(parents=True)
    for name in ("test.sh", "reaped.py", "pytest_progress.py", "__init__.py"):
        shutil.copy2(REPO_ROOT / "scripts" / name, root / "scripts")
    (root / "scripts" / "bootstrap.sh").write_text("# stub: the environment is ready\n")
    write_stub(root / "scripts" / "web-deps.sh", "exit 0")
    write_stub(root / "scripts" / "ensure-chromium.sh", "echo /usr/bin/chromium")
    # The venv's Python (with pytest) under the copy's .venv, as `uv run python` finds it.
    write_stub(root / ".venv" / "bin" / "python", f'exec "{sys.executable}" "$@"')
    (root / "suite").mkdir()
    (root / "suite" / "test_suite.py").write_text(SUITE)
    return root


def tools(tmp_path: Path, root: Path) -> Path:
    """`uv run X` runs X with the venv first on PATH; ruff and mypy pass."""
    bin_dir = tmp_path / "bin"
    write_stub(
        bin_dir / "uv",
        '[ "$1" = run ] || exit 64\nshift\ncase "$1" in ruff | mypy) exit 0 ;; esac\n'
        f'PATH="{root}/.venv/bin:$PATH" exec "$@"',
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


@dataclass
class SuiteRun:
    result: subprocess.CompletedProcess[str]
    runs: list[str]
    leftovers: list[int]


@contextlib.contextmanager
def run_test_sh(
    tmp_path: Path, *, b_crashes: int, a_fails: bool = False, exit_crashes: int = 0
) -> Iterator[SuiteRun]:
    """test.sh on the fake suite: test_b crashes its process `b_crashes` times, then passes; the
    process crashes as it exits `exit_crashes` times."""
    root = project_copy(tmp_path)
    runs, leftover_file = tmp_path / "runs", tmp_path / "leftovers"
    runs.touch()
    leftover_file.touch()
    result = subprocess.run(  # noqa: S603 - our own script
        ["/bin/bash", str(root / "scripts" / "test.sh"), "-p", "no:cacheprovider", "suite"],
        cwd=root,
        env={
            "PATH": f"{tools(tmp_path, root)}:/usr/bin:/bin",
            "HOME": str(tmp_path),
            "TMPDIR": str(tmp_path),
            "RUNS": str(runs),
            "LEFTOVER": str(leftover_file),
            "B_CRASHES": str(b_crashes),
            "A_FAILS": "1" if a_fails else "0",
            "SLEEPER": SLEEPER,
            "EXITS": str(tmp_path / "exits"),
            "EXIT_CRASHES": str(exit_crashes),
        },
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    leftovers = [int(pid) for pid in leftover_file.read_text().split()]
    try:
        yield SuiteRun(result, runs.read_text().split(), leftovers)
    finally:
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")


def test_a_crash_reruns_only_the_unfinished_tests_and_stops_only_what_it_started(
    tmp_path: Path,
) -> None:
    with (
        another_terminals_worker(project_copy(tmp_path / "other")) as other,
        run_test_sh(tmp_path, b_crashes=1) as run,
    ):
        assert run.result.returncode == 0, run.result.stderr
        # test_a finished before the crash: it is not run again; test_b, running then, is.
        assert run.runs == ["a", "b", "b", "c"]
        stderr = run.result.stderr
        assert "crash 1; running: suite/test_suite.py::test_b" in stderr
        assert "the test process crashed 1 time(s)" in stderr
        (leftover,) = run.leftovers
        assert not alive(leftover), "the crashed run's own process is still running"
        assert f"stopping what the crashed run left: {leftover}" in stderr
        assert other.poll() is None, "a process the run did not start was stopped"
        assert str(other.pid) not in stderr


def test_a_failure_before_the_crash_still_fails_the_run(tmp_path: Path) -> None:
    with run_test_sh(tmp_path, b_crashes=1, a_fails=True) as run:
        assert run.result.returncode == 1, run.result.stderr
        assert run.runs == ["a", "b", "b", "c"]
        assert "failed before a crash: suite/test_suite.py::test_a" in run.result.stderr


def test_a_crash_after_the_last_test_reruns_nothing_and_passes(tmp_path: Path) -> None:
    with run_test_sh(tmp_path, b_crashes=0, exit_crashes=1) as run:
        assert run.result.returncode == 0, run.result.stderr
        assert run.runs == ["a", "b", "c"]
        assert "the test process crashed 1 time(s)" in run.result.stderr


def test_one_crash_more_than_allowed_fails_the_run(tmp_path: Path) -> None:
    with run_test_sh(tmp_path, b_crashes=3) as run:
        assert run.result.returncode == 139, run.result.stderr
        assert run.runs == ["a", "b", "b", "b"]
        assert "3 crashes of the test process: failing the run" in run.result.stderr
        assert not any(alive(pid) for pid in run.leftovers)


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


STARTS_A_SESSION_AND_WAITS = """
import subprocess, sys, time
sleeper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], start_new_session=True)
print(sleeper.pid, flush=True)
time.sleep(120)
"""


def test_a_run_stopped_with_sigterm_stops_what_it_started() -> None:
    """A CI runner cancelling the run sends SIGTERM: the command gets it, and what it left (a
    worker in a session of its own, say) is stopped too."""
    run = subprocess.Popen(  # noqa: S603 - our own script
        [
            sys.executable,
            str(REPO_ROOT / "scripts" / "reaped.py"),
            sys.executable,
            "-c",
            STARTS_A_SESSION_AND_WAITS,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    sleeper = 0
    try:
        assert run.stdout is not None
        sleeper = int(run.stdout.readline())
        run.send_signal(signal.SIGTERM)
        _, stderr = run.communicate(timeout=30)
        assert run.returncode == 128 + signal.SIGTERM, stderr
        assert not alive(sleeper), "the run's own process is still running"
        assert f"stopping what the crashed run left: {sleeper}" in stderr
    finally:
        run.kill()
        run.wait()
        if sleeper and alive(sleeper):
            os.kill(sleeper, signal.SIGKILL)
