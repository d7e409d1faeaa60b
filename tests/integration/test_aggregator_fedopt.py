"""FedOpt through the aggregator: a crash mid-job resumes from the committed moments and
gives the very bytes of an undisturbed run (LocalStore, real files)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from fedcore import layout
from fedcore.aggregator import AggregatorStopped
from fedcore.signing import SigningKey, generate_key
from fedcore.spec import FederatedJob, job_prefix
from fedcore.store import LocalStore
from fedcore.weights import load_weights, sha256_file
from tests.integration.test_aggregator import Harness, deltas, harness_factory, make_job, wait_for

__all__ = ["harness_factory"]  # the fixture, shared with test_aggregator

SENDS = {1: [("a", 1.0, 1), ("b", -2.0, 3)], 2: [("a", 0.5, 2), ("b", 3.0, 1)],
         3: [("a", -1.0, 1), ("b", 0.25, 1)]}  # fmt: skip
"""round -> (client, delta scale, num_samples)"""
OPTIONS = {
    "serverLearningRate": 0.1,
    "tau": 0.01,
    "maxWeightShare": 0.6,  # binds in rounds 1 and 2: their second pass runs across the crash
    "clipNorm": 5.0,
    "clipQuantile": 0.5,
}


def undisturbed_run(job: FederatedJob, root: Path) -> Harness:
    keys = {c.name: SigningKey(generate_key().encode()) for c in job.spec.clients}
    workdir = root / "work"
    workdir.mkdir(parents=True)
    h = Harness(job, LocalStore(root / "store", job_prefix(job)), keys, workdir)
    h.start()
    for r, sends in SENDS.items():
        for client, scale, n in sends:
            h.send(r, client, deltas(scale), n)
        h.record(r)
    h.finish()
    return h


@pytest.mark.parametrize("accumulator", ["memory", "disk"])
@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad"])
def test_resume_after_a_crash_mid_job_gives_the_undisturbed_models_bit_for_bit(
    harness_factory: Callable[..., Harness], tmp_path: Path, name: str, accumulator: str
) -> None:
    """The reference runs in memory; the crashed and resumed run keeps its sum and moments
    in memory or on disk (read back a slice at a time from the committed state file)."""
    reference = undisturbed_run(
        make_job(rounds=3, strategy={"name": name, **OPTIONS}), tmp_path / "reference"
    )
    job = make_job(
        rounds=3, strategy={"name": name, **OPTIONS}, aggregator={"accumulator": accumulator}
    )

    first = harness_factory(job)
    first.start()
    for client, scale, n in SENDS[1]:
        first.send(1, client, deltas(scale), n)
    first.record(1)
    client, scale, n = SENDS[2][0]
    first.send(2, client, deltas(scale), n)
    wait_for(lambda: first.store.exists(layout.manifest_key(2, client)), "a's update")
    first.stop()  # mid-round 2, with round 1's moments committed
    assert isinstance(first.outcome.get("error"), AggregatorStopped)
    second = Harness(job, first.store, first.keys, first.workdir.with_name("second"))
    second.workdir.mkdir()
    second.start()
    for client, scale, n in SENDS[2][1:]:
        second.send(2, client, deltas(scale), n)
    second.record(2)
    for client, scale, n in SENDS[3]:
        second.send(3, client, deltas(scale), n)
    second.finish()

    for r in (1, 2, 3):
        assert second.record(r).model_sha256 == reference.record(r).model_sha256, r
        assert second.record(r).strategy_sha256 == reference.record(r).strategy_sha256, r
    state = second.workdir / "state-2"
    second.store.get_file(layout.strategy_state_key(2), state)
    assert set(load_weights(state)) == {"clip/bound"} | {
        f"{m}/{t}" for m in ("first_moment", "second_moment") for t in ("weight", "bias")
    }
    final = second.workdir / "final"
    second.store.get_file(layout.FINAL_MODEL_KEY, final)
    assert sha256_file(final) == reference.record(3).model_sha256
