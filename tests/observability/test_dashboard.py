"""The Grafana dashboard asks only for metrics the worker exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from livekit.agents.telemetry import metrics as framework_metrics
from prometheus_client.metrics import MetricWrapperBase

from observability.avatar_metrics import AVATAR_METRICS

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboards" / "avatar-agent.json"
METRIC_NAME = re.compile(r"\b(?:avatar|lk_agents)_[a-z_]+\b")
SAMPLE_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
}


def exported_sample_names() -> set[str]:
    """Every sample name the worker's endpoint can answer: ours and livekit-agents' own."""
    framework = [m for m in vars(framework_metrics).values() if isinstance(m, MetricWrapperBase)]
    names: set[str] = set()
    for metric in (*AVATAR_METRICS, *framework):
        for family in metric.describe():
            names.update(family.name + suffix for suffix in SAMPLE_SUFFIXES[family.type])
    return names


def test_every_query_names_only_metrics_the_worker_exports() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert len(expressions) > 10
    exported = exported_sample_names()
    asked = {name for expr in expressions for name in METRIC_NAME.findall(expr)}
    assert asked, "no query names a metric"
    assert asked <= exported, sorted(asked - exported)


def test_every_avatar_metric_is_on_the_dashboard() -> None:
    text = DASHBOARD.read_text()
    families = [family.name for metric in AVATAR_METRICS for family in metric.describe()]
    missing = [name for name in families if name not in text]
    assert not missing


def test_the_exported_names_are_the_ones_a_scrape_shows() -> None:
    # a counter's samples end in _total, a histogram's in _bucket/_sum/_count (checked end to end
    # in tests/test_observability.py); this guards the table above against a renamed family
    assert "avatar_session_starts_total" in exported_sample_names()
    assert "avatar_join_seconds_bucket" in exported_sample_names()
    assert "lk_agents_active_job_count" in exported_sample_names()
