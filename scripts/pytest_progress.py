"""A pytest plugin for scripts/test.sh: it survives a test process that crashes part-way.

With `PYTEST_PROGRESS_FILE` set (`python -m pytest -p scripts.pytest_progress`), every test is written
to that file as it starts and as it finishes (`started`, then `passed` or `failed`), each line on disk
at once: a process killed by a signal loses nothing written before. A later run given the same file
leaves out the tests it lists as finished, so a rerun after a crash runs only the tests that did not
finish. Without the variable the plugin does nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROGRESS_ENV = "PYTEST_PROGRESS_FILE"
STARTED, PASSED, FAILED = "started", "passed", "failed"


def read_progress(path: Path) -> dict[str, str]:
    """nodeid -> its last state in the file (a test started in one run may finish in the next)."""
    states: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            state, _, nodeid = line.partition("\t")
            if nodeid:
                states[nodeid] = state
    return states


class ProgressRecorder:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._finished = {
            nodeid for nodeid, state in read_progress(path).items() if state != STARTED
        }
        self._failed: set[str] = set()

    def _write(self, state: str, nodeid: str) -> None:
        # One write per line, unbuffered: a crash right after it cannot lose it.
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{state}\t{nodeid}\n".encode())
        finally:
            os.close(fd)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(
        self, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        done = [item for item in items if item.nodeid in self._finished]
        if done:
            items[:] = [item for item in items if item.nodeid not in self._finished]
            config.hook.pytest_deselected(items=done)

    def pytest_runtest_logstart(self, nodeid: str) -> None:
        self._write(STARTED, nodeid)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.failed:
            self._failed.add(report.nodeid)
        if report.when == "teardown":
            self._write(FAILED if report.nodeid in self._failed else PASSED, report.nodeid)


def pytest_configure(config: pytest.Config) -> None:
    path = os.environ.get(PROGRESS_ENV)
    if path:
        config.pluginmanager.register(ProgressRecorder(Path(path)), "progress-recorder")
