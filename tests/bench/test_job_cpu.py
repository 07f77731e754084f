"""The job CPU benchmark's report: medians per phase and ours / reference for each."""

from __future__ import annotations

from typing import cast

import pytest

from bench.job_cpu import Arm, JobCpu, parse_args, report
from tests.support.worker import WorkerProcess


def arm(label: str, *jobs: tuple[float, float, float, float]) -> Arm:
    no_worker = cast(WorkerProcess, None)  # the report reads only the jobs
    return Arm(label, f"agent-{label}", no_worker, [JobCpu(*job) for job in jobs])


def test_the_report_gives_each_phases_median_and_the_ratio() -> None:
    ours = arm("ours", (0.7, 1.0, 1.1, 0.8), (0.5, 1.2, 1.3, 0.6), (0.9, 0.8, 0.9, 0.7))
    reference = arm("reference", (1.0, 2.0, 2.2, 1.4), (1.2, 1.8, 2.0, 1.2))
    text = report([ours, reference], hold=10.0, idle={"ours": 0.02, "reference": 0.03})

    [ours_row] = [line for line in text.splitlines() if line.split()[:2] == ["ours", "3"]]
    assert ours_row.split()[1:] == ["3", "0.70", "1.00", "1.10", "0.70", "0.020"]
    assert "to first frame 0.64x" in text  # 0.70 / 1.10
    assert "whole job 0.52x" in text  # 1.10 / 2.10


def test_a_worker_without_jobs_is_shown_without_figures() -> None:
    text = report(
        [arm("ours"), arm("reference", (1.0, 2.0, 2.2, 1.4))],
        hold=10.0,
        idle={"ours": 0.0, "reference": 0.0},
    )
    assert "ours / reference" not in text


@pytest.mark.parametrize("argv", [["--runs", "0"], ["--hold", "-1"]])
def test_options_are_checked(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)
