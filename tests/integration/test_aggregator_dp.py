"""dpfedavg through the aggregator (LocalStore, real files): the secret noise key and the
fixed denominator as committed, epsilon in the signed records, the privacy budget ending the
job, and a crash mid-job resuming to the same bytes."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from fedcore import layout
from fedcore.aggregator import AggregatorStopped
from fedcore.aggregator_privacy import NOISE_PURPOSE
from fedcore.commit_signing import UnverifiedRecord, read_round_record
from fedcore.privacy import epsilon
from fedcore.signing import SigningKey
from fedcore.spec import FederatedJob, job_prefix
from fedcore.store import LocalStore
from fedcore.strategies.dp_noise import NoiseKey
from tests.integration.test_aggregator import (
    COMMIT_KEY,
    Harness,
    deltas,
    harness_factory,
    make_job,
    wait_for,
)

__all__ = ["harness_factory"]  # the fixture, shared with test_aggregator

DP = {"noiseMultiplier": 0.8, "clipNorm": 2.0, "delta": 1e-5}
ADAPTIVE = {**DP, "adaptiveClipping": {"clippedCountStddev": 1.0}}


def dp_job(
    rounds: int, dp: dict[str, object], clients: tuple[str, ...] = ("a", "b"), **strategy: object
) -> FederatedJob:
    return make_job(
        clients=clients, rounds=rounds, strategy={"name": "dpfedavg", "dp": dp, **strategy}
    )


def round_key(store: LocalStore, r: int, clients: list[str]) -> NoiseKey:
    """The round's noise key, computed as only the holder of the commit key can."""
    pairs = []
    for client in clients:
        manifest = layout.UpdateManifest.model_validate_json(
            store.get_bytes(layout.manifest_key(r, client))
        )
        pairs.append((client, manifest.update_sha256))
    return NoiseKey(COMMIT_KEY.derive_secret(NOISE_PURPOSE)).for_round(r, pairs)


def test_round_is_the_clipped_sum_plus_the_secret_keyed_noise_over_the_selected_count(
    harness_factory: Callable[..., Harness],
) -> None:
    job = dp_job(1, DP, clients=("a", "b", "c"), minClients=2, roundTimeoutSeconds=1)
    h = harness_factory(job)
    h.start()
    w0 = h.global_model(0)
    h.send(1, "a", deltas(0.1), 5)  # norm sqrt(10) / 10: within the bound
    h.send(1, "b", deltas(3.0), 10**9)  # clipped to 2; its sample count buys nothing
    h.finish()  # c never reports: the round closes at its deadline, and still divides by 3
    got = h.global_model(1)

    key = round_key(h.store, 1, ["a", "b"])
    for name, b in w0.items():
        total = deltas(0.1)[name].double() + deltas(3.0)[name].double() * (
            2.0 / (3 * math.sqrt(10))
        )
        total += key.stream(name).normals(b.numel()).view(b.shape) * (0.8 * 2.0)
        want = (total / 3 + b.double()).to(b.dtype)
        torch.testing.assert_close(got[name], want, rtol=1e-6, atol=1e-6)


def test_records_carry_signed_epsilon_and_no_client_declared_numbers(
    harness_factory: Callable[..., Harness],
) -> None:
    h = harness_factory(dp_job(2, DP))
    h.start()
    for r in (1, 2):
        h.record(r - 1)
        h.send(r, "a", deltas(0.5), 100)
        h.send(r, "b", deltas(1.0), 200)
    final = h.finish()

    records = [h.record(r) for r in (0, 1, 2)]
    assert [r.privacy.epsilon for r in records if r.privacy] == [
        0.0,
        epsilon(0.8, 1, 1e-5),
        epsilon(0.8, 2, 1e-5),
    ]
    assert all(r.num_samples == {} and r.client_metrics == {} for r in records)
    assert records[1].participants == ["a", "b"]
    assert final.privacy == records[2].privacy
    assert final.rounds == 2
    assert not final.privacy.budget_reached
    # epsilon is covered by the record's signature
    raw = json.loads(h.store.get_bytes(layout.round_record_key(2)))
    raw["privacy"]["epsilon"] = 0.01
    with pytest.raises(UnverifiedRecord):
        read_round_record(json.dumps(raw).encode(), 2, COMMIT_KEY.public)


def test_the_privacy_budget_ends_the_job_with_the_last_committed_model(
    harness_factory: Callable[..., Harness],
) -> None:
    target = (epsilon(0.8, 2, 1e-5) + epsilon(0.8, 3, 1e-5)) / 2
    h = harness_factory(dp_job(5, {**DP, "targetEpsilon": target}))
    h.start()
    for r in (1, 2):
        h.record(r - 1)
        h.send(r, "a", deltas(0.5), 1)
        h.send(r, "b", deltas(1.0), 1)
    final = h.finish()

    last = h.record(2)
    assert last.next is None  # no client is asked to train round 3
    assert final.rounds == 2
    assert final.model_sha256 == last.model_sha256
    assert final.privacy is not None
    assert final.privacy.budget_reached
    assert final.privacy.epsilon <= target < (final.privacy.next_epsilon or 0)
    assert not h.store.exists(layout.round_record_key(3))


def run_uninterrupted(
    job: FederatedJob, root: Path, keys: dict[str, SigningKey], rounds: int
) -> list[str]:
    h = Harness(job, LocalStore(root / "store", job_prefix(job)), keys, root / "work")
    h.workdir.mkdir(parents=True)
    h.start()
    for r in range(1, rounds + 1):
        h.record(r - 1)
        h.send(r, "a", deltas(0.5 * r), 1)
        h.send(r, "b", deltas(-2.0 * r), 1)
    h.finish()
    return [h.record(r).model_sha256 for r in range(rounds + 1)]


@pytest.mark.parametrize("accumulator", ["memory", "disk"])
def test_a_crash_mid_job_resumes_to_the_same_bytes(
    harness_factory: Callable[..., Harness], tmp_path: Path, accumulator: str
) -> None:
    """The resumed run keeps its sum in memory or on disk; the uninterrupted one in memory."""
    job = make_job(
        clients=("a", "b"),
        rounds=3,
        strategy={"name": "dpfedavg", "dp": ADAPTIVE},
        aggregator={"accumulator": accumulator},
    )
    first = harness_factory(job)
    first.start()
    first.record(0)
    first.send(1, "a", deltas(0.5), 1)
    first.send(1, "b", deltas(-2.0), 1)
    first.record(1)
    first.send(2, "a", deltas(1.0), 1)
    wait_for(lambda: first.store.exists(layout.manifest_key(2, "a")), "a's update")
    first.stop()  # mid-round 2
    assert isinstance(first.outcome.get("error"), AggregatorStopped)
    second = Harness(job, first.store, first.keys, first.workdir.with_name("second"))
    second.workdir.mkdir()
    second.start()
    second.send(2, "b", deltas(-4.0), 1)
    second.record(2)
    second.send(3, "a", deltas(1.5), 1)
    second.send(3, "b", deltas(-6.0), 1)
    second.finish()

    resumed = [second.record(r).model_sha256 for r in range(4)]
    assert resumed == run_uninterrupted(dp_job(3, ADAPTIVE), tmp_path / "again", first.keys, 3)
    bounds = [second.record(r).privacy.clip_norm for r in (1, 2, 3)]  # type: ignore[union-attr]
    assert bounds[0] == 2.0
    assert len(set(bounds)) == 3
