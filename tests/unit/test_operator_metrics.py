"""The operator's Prometheus metrics, scraped over HTTP from a served registry."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import kopf
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fedcore import spec as fs
from fedop.errors import SettingsError
from fedop.metrics import METRICS, OperatorMetrics, metrics_port, serve
from tests.unit.test_handlers_credentials import no_sts, one_pass, unreachable


@pytest.fixture
def served() -> Iterator[tuple[OperatorMetrics, Callable[[], dict[str, float]]]]:
    metrics = OperatorMetrics()
    server = serve(metrics, 0, addr="127.0.0.1")

    def scrape() -> dict[str, float]:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        return {
            s.name + "".join(f"{{{k}={v}}}" for k, v in sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    yield metrics, scrape
    server.shutdown()
    server.server_close()


def status(phase: str = "Running", **clients: Any) -> fs.FederatedJobStatus:
    return fs.FederatedJobStatus.model_validate(
        {"phase": phase, "clients": {c: dict(v) for c, v in clients.items()}}
    )


def test_passes_are_counted_by_outcome_and_timed(served: Any) -> None:
    metrics, scrape = served

    with metrics.reconciling():
        pass
    with pytest.raises(kopf.TemporaryError), metrics.reconciling():
        raise kopf.TemporaryError("store down")
    with pytest.raises(kopf.PermanentError), metrics.reconciling():
        raise kopf.PermanentError("bad spec")
    with pytest.raises(RuntimeError), metrics.reconciling():
        raise RuntimeError("bug")

    got = scrape()
    for outcome in ("ok", "temporary-error", "permanent-error", "crash"):
        assert got[f"fedkube_operator_reconciles_total{{outcome={outcome}}}"] == 1
    assert got["fedkube_operator_reconcile_duration_seconds_count"] == 4


def test_jobs_by_phase_restarts_and_drops_follow_the_planned_statuses(served: Any) -> None:
    metrics, scrape = served
    running = status(a={"phase": "Running"}, b={"phase": "Running"})
    restarted = status(a={"phase": "Restarting", "restarts": 2}, b={"phase": "Running"})
    dropped = status(a={"phase": "Dropped", "restarts": 3}, b={"phase": "Running"})

    metrics.observed("ns", "one", status("Pending"), running)
    metrics.observed("ns", "one", running, restarted)
    metrics.observed("ns", "one", restarted, dropped)
    metrics.observed("ns", "one", dropped, dropped)
    metrics.observed("ns", "two", status("Pending"), status("Succeeded"))
    metrics.observed("other", "three", status("Pending"), status("Running"))
    metrics.forget("other", "three")

    got = scrape()
    assert got["fedkube_operator_client_restarts_total"] == 3
    assert got["fedkube_operator_client_drops_total"] == 1
    assert got["fedkube_operator_jobs{phase=Running}"] == 1
    assert got["fedkube_operator_jobs{phase=Succeeded}"] == 1
    assert got["fedkube_operator_jobs{phase=Failed}"] == 0


@pytest.mark.parametrize("raw", ["metrics", "-1", "99999"])
def test_a_metrics_port_that_is_no_port_is_refused_naming_the_variable(raw: str) -> None:
    with pytest.raises(SettingsError, match="FEDKUBE_OPERATOR_METRICS_PORT"):
        metrics_port({"FEDKUBE_OPERATOR_METRICS_PORT": raw})


def test_operator_metrics_are_off_when_the_port_is_unset() -> None:
    assert metrics_port({}) is None
    assert metrics_port({"FEDKUBE_OPERATOR_METRICS_PORT": "9101"}) == 9101


def passes(outcome: str) -> float:
    value = METRICS.registry.get_sample_value(
        "fedkube_operator_reconciles_total", {"outcome": outcome}
    )
    assert value is not None
    return value


def test_each_reconcile_pass_of_the_handler_is_counted_by_how_it_ended() -> None:
    permanent, temporary = passes("permanent-error"), passes("temporary-error")

    one_pass(no_sts)
    one_pass(unreachable)

    assert passes("permanent-error") == permanent + 1
    assert passes("temporary-error") == temporary + 1
