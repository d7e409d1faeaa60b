"""Robust aggregation through the aggregator: 5 clients, 2 of them poisoned (a huge delta and
a sign-flipped, scaled one). Median, trimmed mean and Krum commit a model near the honest
clients' mean while FedAvg is pulled far away; a crash mid-round resumes to the very bytes of
an undisturbed run (LocalStore, real files)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fedcore import layout
from fedcore.aggregator import AggregatorStopped
from fedcore.signing import SigningKey, generate_key
from fedcore.spec import FederatedJob, job_prefix
from fedcore.store import LocalStore
from fedcore.weights import Tensors, sha256_file
from tests.integration.test_aggregator import Harness, deltas, harness_factory, make_job, wait_for

__all__ = ["harness_factory"]  # the fixture, shared with test_aggregator

CLIENTS = ("a", "b", "c", "evil-big", "evil-flip")
SENDS = [("a", 1.0, 10), ("b", 1.1, 20), ("c", 0.9, 30), ("evil-big", 1e4, 1000),
         ("evil-flip", -50.0, 1000)]  # fmt: skip
"""(client, delta scale, num_samples); the honest clients' unweighted mean scale is 1.0."""
ROBUST: dict[str, dict[str, Any]] = {
    "median": {"name": "median"},
    "trimmedmean": {"name": "trimmedmean", "trimFraction": 0.4},
    "krum": {"name": "krum", "byzantineClients": 1},
    "multikrum": {"name": "krum", "byzantineClients": 1, "krumSelect": 2},
}


def moved(h: Harness) -> Tensors:
    before, after = h.global_model(0), h.global_model(1)
    return {name: after[name].double() - before[name].double() for name in before}


def distance_from_honest_mean(step: Tensors) -> float:
    honest = deltas(1.0)
    return max(float((step[n] - honest[n].double()).abs().max()) for n in honest)


@pytest.mark.parametrize("strategy", list(ROBUST))
def test_robust_strategy_commits_near_the_honest_mean_despite_two_poisoned_clients(
    harness_factory: Callable[..., Harness], strategy: str
) -> None:
    h = harness_factory(make_job(clients=CLIENTS, strategy=ROBUST[strategy]))
    h.start()
    for client, scale, n in SENDS:
        h.send(1, client, deltas(scale), n)
    h.finish()

    assert distance_from_honest_mean(moved(h)) <= 0.11


def test_fedavg_is_pulled_far_away_by_the_same_poisoned_clients(
    harness_factory: Callable[..., Harness],
) -> None:
    h = harness_factory(make_job(clients=CLIENTS))
    h.start()
    for client, scale, n in SENDS:
        h.send(1, client, deltas(scale), n)
    h.finish()

    assert distance_from_honest_mean(moved(h)) > 1000


def undisturbed_run(job: FederatedJob, root: Path) -> Harness:
    keys = {c.name: SigningKey(generate_key().encode()) for c in job.spec.clients}
    workdir = root / "work"
    workdir.mkdir(parents=True)
    h = Harness(job, LocalStore(root / "store", job_prefix(job)), keys, workdir)
    h.start()
    for client, scale, n in SENDS:
        h.send(1, client, deltas(scale), n)
    h.finish()
    return h


@pytest.mark.parametrize("strategy", list(ROBUST))
def test_resume_after_a_crash_mid_round_gives_the_undisturbed_model_bit_for_bit(
    harness_factory: Callable[..., Harness], tmp_path: Path, strategy: str
) -> None:
    job = make_job(clients=CLIENTS, strategy=ROBUST[strategy])
    reference = undisturbed_run(job, tmp_path / "reference")
    first = harness_factory(job)
    first.start()
    for client, scale, n in reversed(SENDS[2:]):  # another arrival order than the reference
        first.send(1, client, deltas(scale), n)
    wait_for(lambda: first.store.exists(layout.manifest_key(1, "c")), "c's update")

    first.stop()  # mid-round 1, three updates kept on the first aggregator's disk
    assert list(first.workdir.glob("robust-round-*"))  # what a killed process leaves
    second = Harness(job, first.store, first.keys, first.workdir)  # the same pod's workdir
    second.start()
    for client, scale, n in SENDS[:2]:
        second.send(1, client, deltas(scale), n)
    second.finish()

    assert isinstance(first.outcome.get("error"), AggregatorStopped)
    assert second.record(1).model_sha256 == reference.record(1).model_sha256
    final = second.workdir / "final"
    second.store.get_file(layout.FINAL_MODEL_KEY, final)
    assert sha256_file(final) == reference.record(1).model_sha256
    assert not list(second.workdir.glob("robust-round-*"))
