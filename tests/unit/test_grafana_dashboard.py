"""The Grafana dashboard the chart ships (charts/fedkube/dashboards/fedkube.json) queries only
series fedkube exports: a renamed metric must fail here, not on a platform team's screen."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from fedcore.aggregator_metrics import AggregatorMetrics
from fedop.metrics import OperatorMetrics

DASHBOARD = Path(__file__).parents[2] / "charts" / "fedkube" / "dashboards" / "fedkube.json"
METRIC = re.compile(r"\bfedkube_[a-z_]+\b")


def exported_series() -> set[str]:
    """Every series name the two registries expose (``_total``, ``_bucket``, ... included)."""
    names: set[str] = set()
    for registry in (AggregatorMetrics().registry, OperatorMetrics().registry):
        assert isinstance(registry, CollectorRegistry)
        for family in registry.collect():
            names.update(sample.name for sample in family.samples)
            names.add(family.name)
    return names


def queries(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        query = node.get("query")
        if isinstance(query, dict) and isinstance(query.get("query"), str):
            found.append(query["query"])
        return found + [q for v in node.values() for q in queries(v)]
    if isinstance(node, list):
        return [q for v in node for q in queries(v)]
    return []


def test_every_series_the_dashboard_queries_is_exported() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = queries(dashboard)
    exported = exported_series()

    used = {name for expr in exprs for name in METRIC.findall(expr)}

    assert len(exprs) >= 15
    assert used - exported == set()


def test_the_dashboard_shows_rounds_rejections_and_the_operator() -> None:
    used = {n for e in queries(json.loads(DASHBOARD.read_text())) for n in METRIC.findall(e)}

    assert {
        "fedkube_aggregator_round",
        "fedkube_aggregator_updates_rejected_total",
        "fedkube_aggregator_evaluation",
        "fedkube_operator_jobs",
        "fedkube_operator_client_drops_total",
    } <= used


def test_panels_do_not_overlap_and_fit_the_grid() -> None:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    cells: set[tuple[int, int]] = set()

    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])}  # fmt: skip
        assert not mine & cells, panel["title"]
        cells |= mine
