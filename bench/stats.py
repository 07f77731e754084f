"""Summary figures of the benchmark: percentiles, ratios, targets, and a plain text table."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), interpolating linearly between the closest ranks.

    The same definition as numpy's default: with few runs the p95 lies between the two
    slowest, rather than being the slowest run itself.
    """
    if not values:
        raise ValueError("no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Summary:
    count: int
    median: float
    p95: float
    minimum: float
    maximum: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary | None:
        if not values:
            return None
        return cls(
            count=len(values),
            median=percentile(values, 50),
            p95=percentile(values, 95),
            minimum=min(values),
            maximum=max(values),
        )


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


@dataclass(frozen=True)
class Target:
    """A figure the benchmark prints against its goal (`value` <= `limit`); not a test."""

    description: str
    value: float | None
    limit: float
    note: str | None = None

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "n/a"
        return "PASS" if self.value <= self.limit else "MISS"

    def line(self) -> str:
        shown = "    -" if self.value is None else f"{self.value:5.3f}"
        line = f"  [{self.verdict:4}] {self.description}: {shown} (target <= {self.limit:.2f})"
        return line + (f"\n         {self.note}" if self.note else "")


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell; the first column left-aligned, the others right."""
    widths = [len(header) for header in headers]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row has {len(row)} cells, expected {len(headers)}")
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]

    def render(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    lines = [render(headers), render(["-" * width for width in widths])]
    lines += [render(row) for row in rows]
    return "\n".join(lines)
