"""A real Prometheus scrapes the operator and an aggregator while a digits job runs on the
cluster, finding both through Kubernetes service discovery as it would in a cluster; its query
API then returns what the job did: the round counter, the rejected updates by reason, the
updates folded, and the operator's reconciles.

One of the three clients poisons every update it sends (a NaN weight), so each round has one
``non-finite`` rejection: a known count to read back.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.cluster.binaries import ensure
from tests.cluster.handle import ClusterHandle
from tests.fixtures.minio import MinioServer
from tests.fixtures.operator import FedJobs, OperatorInstall
from tests.fixtures.prometheus import PrometheusServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

ROUNDS = 3
JOB = "scraped"


@dataclass(frozen=True)
class Scraped:
    prometheus: PrometheusServer
    jobs: FedJobs
    status: dict[str, Any]

    def last(self, series: str) -> float | None:
        """The newest sample of ``series`` (the aggregator pod may be gone by now)."""
        return self.prometheus.value(f"last_over_time({series}[15m])")


def _lean_and_poisoned(obj: dict[str, Any]) -> None:
    spec = obj["spec"]
    spec["task"]["entrypoint"] = "tests.e2e.poison_task:task"
    spec["strategy"]["minClients"] = 2
    spec["clients"] = [dict(c, replicas=1) for c in spec["clients"]]
    spec["clients"][2]["taskConfig"] = {"poison": "nan"}


@pytest.fixture(scope="module")
def scraped(
    cluster: ClusterHandle,
    fedkube_operator: OperatorInstall,
    pod_minio: MinioServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Scraped]:
    namespace = cluster.create_namespace("scraped")
    workdir = tmp_path_factory.mktemp("prometheus")
    jobs = FedJobs(cluster, fedkube_operator, pod_minio, namespace, workdir)
    binary = ensure(("prometheus",)).path("prometheus")
    namespaces = [fedkube_operator.namespace, namespace]
    with PrometheusServer(binary, workdir / "prometheus", cluster.kubeconfig, namespaces) as prom:
        jobs.apply(jobs.example(name=JOB, rounds=ROUNDS, edit=_lean_and_poisoned))
        status = jobs.wait_for_phase(JOB, "Succeeded", "Failed", timeout=720)
        scraped = Scraped(prom, jobs, status)
        # The aggregator serves its final figures a few seconds after the last commit.
        cluster.wait_for(
            lambda: scraped.last("fedkube_aggregator_round") == ROUNDS or None,
            60,
            "Prometheus to scrape the last round",
        )
        try:
            yield scraped
        finally:
            cluster.delete_namespace(namespace)


def test_the_job_succeeded_without_the_poisoned_client(scraped: Scraped) -> None:
    history = scraped.status["history"]

    assert scraped.status["phase"] == "Succeeded", scraped.jobs.explain(JOB)
    assert [sorted(h["participants"]) for h in history[1:]] == [
        ["hospital-a", "hospital-b"]
    ] * ROUNDS


def test_prometheus_found_the_operator_and_the_aggregator(scraped: Scraped) -> None:
    pods = {t["labels"].get("pod", "") for t in scraped.prometheus.targets()}

    assert any(p.startswith(f"{JOB}-aggregator") for p in pods), pods
    assert any("fedkube" in p for p in pods), pods  # the operator's Deployment pod


def test_the_round_counter_reached_the_last_round(scraped: Scraped) -> None:
    assert scraped.last("fedkube_aggregator_round") == ROUNDS


def test_rejected_updates_are_counted_by_reason(scraped: Scraped) -> None:
    non_finite = 'fedkube_aggregator_updates_rejected_total{reason="non-finite"}'

    assert scraped.last(non_finite) == ROUNDS
    assert scraped.last('fedkube_aggregator_updates_rejected_total{reason="bad-signature"}') == 0
    assert scraped.last("fedkube_aggregator_updates_folded_total") == 2 * ROUNDS


def test_the_last_evaluation_is_exported(scraped: Scraped) -> None:
    accuracy = scraped.last('fedkube_aggregator_evaluation{metric="accuracy"}')

    assert accuracy == pytest.approx(scraped.status["lastRound"]["metrics"]["accuracy"])


def test_the_operator_counted_its_reconciles_and_the_jobs_phase(scraped: Scraped) -> None:
    ok = scraped.prometheus.value('sum(fedkube_operator_reconciles_total{outcome="ok"})')
    succeeded = scraped.prometheus.value('max(fedkube_operator_jobs{phase="Succeeded"})')

    assert ok is not None
    assert ok > ROUNDS
    assert succeeded is not None
    assert succeeded >= 1
