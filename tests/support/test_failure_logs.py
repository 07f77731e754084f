"""A failed test's report shows the end of the worker logs written while it ran; a passing one's
does not (a real pytest run, in a process of its own)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.support.failure_logs import TAIL_LINES

REPO = Path(__file__).resolve().parents[2]

INNER_TESTS = f"""
from pathlib import Path

import pytest

from tests.support.failure_logs import register


@pytest.fixture(scope="module")
def shared_worker_log(tmp_path_factory):
    log = tmp_path_factory.mktemp("shared") / "worker-2.log"
    log.write_text("the shared worker's first record\\n")
    register(log)
    return log


def write_log(directory: Path) -> None:
    log = directory / "worker-1.log"
    register(log)
    log.write_text("".join(f"record {{n}}\\n" for n in range({TAIL_LINES} + 5)))


def test_passes(tmp_path, shared_worker_log):
    write_log(tmp_path)


def test_fails(tmp_path, shared_worker_log):
    with shared_worker_log.open("a") as log:
        log.write("written while the failing test ran\\n")
    assert False, "the test's own failure"


def test_fails_without_writing_to_it(shared_worker_log):
    assert False, "a failure the logs took no part in"
"""


def test_a_failed_test_reports_the_end_of_the_worker_logs_written_as_it_ran(
    tmp_path: Path,
) -> None:
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(INNER_TESTS))
    run = subprocess.run(  # noqa: S603 - pytest on a file this test wrote
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.support.failure_logs",
            "-p",
            "no:cacheprovider",
            "-q",
            "--rootdir",
            str(tmp_path),
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    out = run.stdout
    failing, quiet = out.split("_ test_fails_without_writing_to_it _")

    assert run.returncode == 1, out + run.stderr
    assert "2 failed, 1 passed" in out
    # the failing test wrote only to the shared log: the passing test's log is not shown
    assert "written while the failing test ran" in failing
    assert "worker-2.log: the lines written during the test" in failing
    assert "the shared worker's first record" not in failing  # written before the test
    assert "worker-1.log" not in failing
    # a failure during which no log was written shows none
    assert "worker log" not in quiet.split("short test summary")[0]
