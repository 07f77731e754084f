"""A failed test's report carries the end of each worker log written while it ran.

CI keeps only pytest's output: a worker's own log (in a test's tmp_path, or the directory of a
worker shared by a module) is gone by the time anyone reads a red run, and with it the only record
of what the job did. Every worker log is registered as it is opened (`register`); when a test
fails, the lines each one got while it ran (the last of them) go into the failure's report,
beside the captured output.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator
from pathlib import Path

import pytest

TAIL_LINES = 200

_logs: set[Path] = set()
_sizes_before = pytest.StashKey[dict[Path, int]]()


def register(log: Path) -> None:
    """`log` is a worker's log: shown with any test that fails while it is written to."""
    _logs.add(log)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_sizes_before] = sizes()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and report.when == "call":
        before = item.stash.get(_sizes_before, {})
        for log in grown_since(before):
            report.sections.append(
                (
                    f"worker log {log}: the lines written during the test (at most the last "
                    f"{TAIL_LINES})",
                    tail(log, start=before.get(log, 0)),
                )
            )
    return report


def sizes() -> dict[Path, int]:
    return {log: log.stat().st_size for log in _logs if log.exists()}


def grown_since(before: dict[Path, int]) -> list[Path]:
    """The registered logs written to since `before` was taken (sizes, not times: a file's time
    comes from a coarse clock, and a write a moment after the test began can look older)."""
    return sorted(log for log, size in sizes().items() if size > before.get(log, 0))


def tail(path: Path, *, start: int = 0, lines: int = TAIL_LINES) -> str:
    """The last `lines` lines of `path` from byte `start` on."""
    with path.open("rb") as file:
        file.seek(start)
        return "".join(deque(file.read().decode(errors="replace").splitlines(True), maxlen=lines))
