"""A failed test's report carries the end of each worker log it made.

CI keeps only pytest's output: a worker's own log (in the test's tmp_path, or a shared world's
workdir) is gone by the time anyone reads a red run, and with it the only record of what the job
did. The last lines of each go into the failure's report, beside the captured output.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

TAIL_LINES = 60


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and report.when == "call":
        for log in worker_logs(item):
            report.sections.append((f"worker log {log.name} (last {TAIL_LINES} lines)", tail(log)))
    return report


def worker_logs(item: pytest.Item) -> list[Path]:
    """The worker logs in the directories the test's fixtures gave it."""
    found: set[Path] = set()
    for directory in _directories(getattr(item, "funcargs", {})):
        found.update(directory.glob("worker-*.log"))
    return sorted(found)


def _directories(fixtures: dict[str, object]) -> Iterator[Path]:
    for value in fixtures.values():
        if isinstance(value, Path):
            yield value
        workdir = getattr(value, "workdir", None)
        if isinstance(workdir, Path):
            yield workdir


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    with path.open(errors="replace") as file:
        return "".join(deque(file, maxlen=lines))
