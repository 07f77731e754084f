"""The benchmark's summary arithmetic: wrong here, and every printed figure would be silently wrong."""

from __future__ import annotations

import pytest

from bench.stats import Summary, Target, percentile, ratio, table


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([3.0], 95, 3.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
        ([4.0, 1.0, 3.0, 2.0], 50, 2.5),  # order of the runs does not matter
        ([1.0, 2.0, 3.0], 0, 1.0),
        ([1.0, 2.0, 3.0], 100, 3.0),
        ([float(n) for n in range(1, 21)], 95, 19.05),  # 20 runs: between the two slowest
        ([1.0, 1.0, 10.0], 95, 9.1),
    ],
)
def test_percentile_interpolates_between_closest_ranks(
    values: list[float], q: float, expected: float
) -> None:
    assert percentile(values, q) == pytest.approx(expected)


@pytest.mark.parametrize(("values", "q"), [([], 50), ([1.0], -1), ([1.0], 101)])
def test_percentile_refuses_what_it_cannot_answer(values: list[float], q: float) -> None:
    with pytest.raises(ValueError):
        percentile(values, q)


def test_summary_of_runs() -> None:
    summary = Summary.of([2.0, 1.0, 4.0, 3.0, 100.0])
    assert summary is not None
    assert (summary.count, summary.median, summary.minimum, summary.maximum) == (5, 3.0, 1.0, 100.0)
    assert summary.p95 == pytest.approx(80.8)
    assert Summary.of([]) is None


def test_ratio_needs_both_figures() -> None:
    assert ratio(1.8, 2.0) == pytest.approx(0.9)
    assert ratio(None, 2.0) is None
    assert ratio(1.0, None) is None
    assert ratio(1.0, 0.0) is None


@pytest.mark.parametrize(
    ("value", "verdict"), [(0.9, "PASS"), (0.89, "PASS"), (0.91, "MISS"), (None, "n/a")]
)
def test_target_verdict(value: float | None, verdict: str) -> None:
    target = Target("first frame ours/reference", value, 0.90)
    assert target.verdict == verdict
    assert verdict in target.line()


def test_table_aligns_columns() -> None:
    text = table(["arm", "median"], [["ours", "1.20"], ["reference", "10.50"]])
    assert text.splitlines() == [
        "arm        median",
        "---------  ------",
        "ours         1.20",
        "reference   10.50",
    ]
    with pytest.raises(ValueError):
        table(["a", "b"], [["only one"]])
