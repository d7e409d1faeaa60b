"""The aggregator's Prometheus endpoint, scraped over HTTP while it runs on a LocalStore."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fedcore.aggregator_metrics import AggregatorMetrics, metrics_port, serve
from fedcore.errors import SpecError
from fedcore.signing import SigningKey, generate_key
from tests.integration.test_aggregator import (
    Harness,
    deltas,
    harness_factory,
    make_job,
    wait_for,
)

__all__ = ["harness_factory"]  # the fixture, shared with test_aggregator


@pytest.fixture
def scrape(
    harness_factory: Callable[..., Harness],
) -> Iterator[Callable[[Harness], dict[str, Any]]]:
    servers: list[Any] = []

    def read(h: Harness) -> dict[str, Any]:
        assert h.aggregator is not None
        if not servers:
            servers.append(serve(h.aggregator.metrics, 0, addr="127.0.0.1"))
        url = f"http://127.0.0.1:{servers[0].server_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        samples: dict[str, Any] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                key = s.name + "".join(f"{{{k}={v}}}" for k, v in sorted(s.labels.items()))
                samples[key] = s.value
        return samples

    yield read
    for server in servers:
        server.shutdown()
        server.server_close()


def test_scrape_after_a_round_counts_folded_rejected_by_reason_bytes_and_evaluation(
    harness_factory: Callable[..., Harness], scrape: Callable[[Harness], dict[str, Any]]
) -> None:
    h = harness_factory(make_job(("a", "b", "c"), rounds=1, strategy={"minClients": 2}))
    h.start()
    h.send(1, "a", deltas(1.0), 5)
    h.send(1, "b", deltas(1.0), 5, key=SigningKey(generate_key().encode()))
    h.send(1, "c", deltas(2.0), 5)
    h.finish()
    r1 = h.record(1)
    sent = sum(len(h.store.get_bytes(f"rounds/000001/updates/{c}.safetensors")) for c in ("a", "c"))

    got = scrape(h)

    assert got["fedkube_aggregator_round"] == 1
    assert got["fedkube_aggregator_updates_folded_total"] == 2
    assert got["fedkube_aggregator_updates_rejected_total{reason=bad-signature}"] == 1
    assert got["fedkube_aggregator_updates_rejected_total{reason=non-finite}"] == 0
    assert got["fedkube_aggregator_updates_late_total"] == 0
    assert got["fedkube_aggregator_update_bytes_total"] == sent
    assert got["fedkube_aggregator_evaluation{metric=loss}"] == pytest.approx(r1.metrics["loss"])
    assert got["fedkube_aggregator_evaluation{metric=accuracy}"] == pytest.approx(
        r1.metrics["accuracy"]
    )
    assert got["fedkube_aggregator_round_duration_seconds_count"] == 1
    assert got["fedkube_aggregator_commit_seconds_count"] == 1
    assert got["fedkube_aggregator_fold_seconds_count"] == 3
    assert got["fedkube_aggregator_straggler_wait_seconds_count"] == 1


def test_scrape_before_any_round_closes_shows_round_zero_and_its_evaluation(
    harness_factory: Callable[..., Harness], scrape: Callable[[Harness], dict[str, Any]]
) -> None:
    h = harness_factory(make_job(("a", "b"), rounds=1))
    h.start()
    r0 = h.record(0)
    wait_for(lambda: "fedkube_aggregator_evaluation{metric=loss}" in scrape(h), "round 0 gauges")

    got = scrape(h)

    assert got["fedkube_aggregator_round"] == 0
    assert got["fedkube_aggregator_evaluation{metric=loss}"] == pytest.approx(r0.metrics["loss"])
    assert got["fedkube_aggregator_updates_folded_total"] == 0
    assert got["fedkube_aggregator_round_duration_seconds_count"] == 0


def test_evaluation_metric_names_past_the_bound_are_not_exported() -> None:
    metrics = AggregatorMetrics()

    metrics.evaluated({f"m{i:02d}": float(i) for i in range(40)})

    exported = {
        s.labels["metric"]
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == "fedkube_aggregator_evaluation"
    }
    assert len(exported) == 16
    assert "m00" in exported
    assert "m39" not in exported


@pytest.mark.parametrize("raw", ["http", "-1", "70000"])
def test_a_metrics_port_that_is_no_port_is_refused_naming_the_variable(raw: str) -> None:
    with pytest.raises(SpecError, match="FEDKUBE_METRICS_PORT"):
        metrics_port({"FEDKUBE_METRICS_PORT": raw})


def test_metrics_are_off_when_the_port_is_unset() -> None:
    assert metrics_port({}) is None
    assert metrics_port({"FEDKUBE_METRICS_PORT": "9102"}) == 9102
