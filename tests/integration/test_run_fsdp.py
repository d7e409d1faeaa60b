"""An FSDP client end to end: ``fedkube run``, four gloo ranks, the aggregator, a local store.

The same job runs twice, once with ``parallelism.mode: fsdp`` and once with ``ddp``, on the
synthetic task (a 64M-parameter, 256 MB float32 MLP of 36 layers, as deep as a 7B
transformer's 32 blocks plus embeddings; plain SGD, one round).
FSDP shards each parameter over the four ranks, so each rank holds a quarter of the model;
the rounds' arithmetic is the same (gradients averaged over the same samples), so the two
aggregated models must agree to float tolerance.

Memory is each rank's peak RSS minus its RSS before the model was built
(``tests.fixtures.rank_memory`` says why). Each rank steps its parameters' optimizer in
backward (``fedcore.tasks.base.StepsInBackward``) and writes its shard a tensor at a time, so
what it holds is its quarter of the parameters plus a few gathered layers: under half the
model, and a fraction of what a DDP rank holds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from fedcore import layout
from fedcore.weights import load_weights
from tests.fixtures.rank_memory import model_bytes
from tests.integration.test_run_local import Run, start_run

pytestmark = pytest.mark.timeout(900)

RANKS = 4
CONFIG: dict[str, Any] = {
    "params": 64_000_000,
    "depth": 36,
    "samples": 64,
    "batchSize": 16,
    "localEpochs": 1,
    "lr": 0.05,
    "momentum": 0.0,
}
ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
"""The allocator setting ``fedcore.sharding`` makes for itself, given to both runs alike so
DDP's figure is not inflated by freed blocks glibc keeps."""


def run_job(tmp: Path, mode: str) -> tuple[Run, list[dict[str, int]]]:
    reports = tmp / f"memory-{mode}"
    reports.mkdir()
    job = {
        "apiVersion": "fedkube.io/v1alpha1",
        "kind": "FederatedJob",
        "metadata": {"name": f"sharded-{mode}"},
        "spec": {
            "rounds": 1,
            "seed": 5,
            "task": {
                "entrypoint": "tests.fixtures.rank_memory:task",
                "config": {**CONFIG, "memoryReport": str(reports)},
            },
            "strategy": {"minClients": 1},
            "clients": [{"name": "alpha", "procsPerReplica": RANKS, "parallelism": {"mode": mode}}],
        },
    }
    job_file = tmp / f"{mode}.yaml"
    job_file.write_text(yaml.safe_dump(job))
    run = start_run(job_file, tmp / f"run-{mode}", env=ALLOCATOR)
    assert run.wait(600) == 0, run.stderr() + run.log("alpha-0") + run.log("aggregator")
    got = [json.loads(p.read_text()) for p in sorted(reports.glob("alpha-rank*.json"))]
    assert len(got) == RANKS, f"memory reports: {got}"
    return run, got


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Run, list[dict[str, int]]]]:
    tmp = tmp_path_factory.mktemp("fsdp")
    return {mode: run_job(tmp, mode) for mode in ("fsdp", "ddp")}


def test_fsdp_ranks_upload_signed_shards_that_the_aggregator_folds(runs: Any) -> None:
    run, _ = runs["fsdp"]
    store = run.store

    manifest = layout.UpdateManifest.model_validate_json(
        store.get_bytes(layout.manifest_key(1, "alpha"))
    )

    assert len(manifest.shards) == RANKS
    assert manifest.signature
    assert not store.exists(layout.update_key(1, "alpha"))
    for i in range(RANKS):
        assert store.exists(layout.shard_key(1, "alpha", i, RANKS))
    record = layout.RoundRecord.model_validate_json(store.get_bytes(layout.round_record_key(1)))
    assert record.participants == ["alpha"]
    assert not record.rejected


def test_fsdp_model_equals_ddp_model_of_the_same_seeds(runs: Any) -> None:
    fsdp = load_weights(runs["fsdp"][0].final_model())
    ddp = load_weights(runs["ddp"][0].final_model())
    base = load_weights(runs["ddp"][0].final_model().parents[1] / layout.global_key(0))

    assert fsdp.keys() == ddp.keys()
    for name in ddp:
        torch.testing.assert_close(fsdp[name], ddp[name], rtol=1e-5, atol=1e-6)
    # Not two untrained models: one round moves most tensors (the first layers' gradients of
    # a 36-layer MLP can be too small to move a float32 value) and every deep layer.
    trained = [name for name in ddp if not torch.equal(ddp[name], base[name])]
    assert len(trained) > len(ddp) // 2, f"only {trained} trained"
    deepest = sorted(ddp, key=lambda n: int(n.split(".")[0]))[-4:]
    assert set(deepest) <= set(trained), f"the last layers {deepest} did not all train"


def test_no_fsdp_rank_holds_the_model_and_each_holds_a_fraction_of_a_ddp_rank(
    runs: Any,
) -> None:
    model = model_bytes(CONFIG)
    fsdp = [r["peak_bytes"] - r["baseline_bytes"] for r in runs["fsdp"][1]]
    ddp = [r["peak_bytes"] - r["baseline_bytes"] for r in runs["ddp"][1]]

    # A quarter of the parameters, a few gathered layers and their gradients in flight.
    assert max(fsdp) < 0.5 * model, f"FSDP ranks' peaks {fsdp} vs a model of {model} bytes"
    # A DDP rank holds the model, its gradients and DDP's gradient buckets: 3x or more.
    assert min(ddp) > 2.5 * model, f"DDP ranks' peaks {ddp} vs a model of {model} bytes"
    assert max(fsdp) < min(ddp) / 3
