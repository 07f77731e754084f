"""A failed test's report shows the end of the worker logs in its directories; a passing one's
does not (a real pytest run, in a process of its own)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.support.failure_logs import TAIL_LINES

REPO = Path(__file__).resolve().parents[2]

INNER_TESTS = f"""
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class World:
    workdir: Path


@pytest.fixture
def world(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("world")
    (workdir / "worker-2.log").write_text("the shared world's worker\\n")
    return World(workdir)


def write_log(directory: Path) -> None:
    lines = [f"record {{n}}" for n in range({TAIL_LINES} + 5)]
    (directory / "worker-1.log").write_text("\\n".join(lines) + "\\n")


def test_fails(tmp_path, world):
    write_log(tmp_path)
    assert False, "the test's own failure"


def test_passes(tmp_path):
    write_log(tmp_path)
"""


def test_a_failed_test_reports_the_end_of_its_worker_logs(tmp_path: Path) -> None:
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

    assert run.returncode == 1, out + run.stderr
    assert "1 failed, 1 passed" in out
    assert f"worker log worker-1.log (last {TAIL_LINES} lines)" in out
    assert f"record {TAIL_LINES + 4}" in out  # the last record
    assert "record 4\n" not in out  # one before the tail
    assert out.count("worker log worker-1.log") == 1  # the passing test adds nothing
    assert "the shared world's worker" in out  # a fixture's workdir is looked in too
