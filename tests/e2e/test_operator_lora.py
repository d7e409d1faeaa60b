"""LoRA fine-tuning on the cluster: examples/causal-lm-lora-k8s.yaml, shrunk, runs under the
operator with three clients of two pods each; only adapters reach the store, and the held-out
loss falls.

Lean on purpose: the example's shape (three DDP groups of two pods, the built-in
``fedcore.tasks.causal_lm`` task) with a tiny base (2 layers, width 32) and a few rounds.
What LoRA adds to the round protocol (a model whose ``state_dict`` is its adapters, a frozen
base every pod builds alike, DDP over the adapters only) is what this file checks on pods;
the unit tests check the task's pieces.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedcore import layout
from fedcore.weights import open_weights
from tests.cluster.handle import ClusterHandle
from tests.fixtures.minio import MinioServer
from tests.fixtures.operator import FedJobs, OperatorInstall

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "causal-lm-lora-k8s.yaml"
NAME = "lora"
ROUNDS = 3
SMALL = {
    "layers": 2,
    "width": 32,
    "heads": 2,
    "context": 32,
    "rank": 4,
    "samples": 64,
    "testSamples": 32,
    "batchSize": 16,
    "lr": 0.01,
}
"""A base of ~30 k parameters: the test is about the plumbing, not the model."""
CLIENTS = ["hospital-a", "hospital-b", "hospital-c"]


@dataclass(frozen=True)
class Run:
    jobs: FedJobs
    status: dict[str, Any]


@pytest.fixture(scope="module")
def lora(
    cluster: ClusterHandle,
    fedkube_operator: OperatorInstall,
    pod_minio: MinioServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Run]:
    namespace = cluster.create_namespace("lora")
    workdir = tmp_path_factory.mktemp("lora")
    jobs = FedJobs(cluster, fedkube_operator, pod_minio, namespace, workdir)
    obj = yaml.safe_load(EXAMPLE.read_text())
    obj["metadata"]["name"] = NAME
    spec = obj["spec"]
    spec["rounds"] = ROUNDS
    spec["storage"]["endpoint"] = pod_minio.endpoint
    spec["task"]["config"].update(SMALL)
    small = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "2Gi"}}
    spec["aggregator"]["resources"] = small
    for client in spec["clients"]:
        client["resources"] = small
    manifest = workdir / f"{NAME}.yaml"
    manifest.write_text(yaml.safe_dump(obj, sort_keys=False))
    jobs.apply(manifest)
    status = jobs.wait_for_phase(NAME, "Succeeded", "Failed", timeout=780)
    try:
        yield Run(jobs, status)
    finally:
        cluster.delete_namespace(namespace)


def test_the_lora_job_succeeds_with_three_groups_of_two_pods(lora: Run) -> None:
    status = lora.status

    assert status["phase"] == "Succeeded", lora.jobs.explain(NAME)
    assert status["currentRound"] == ROUNDS
    assert all(sorted(h["participants"]) == CLIENTS for h in status["history"][1:])
    job = lora.jobs.kubectl(
        "get", "job", f"{NAME}-hospital-a", "-o", "jsonpath={.spec.parallelism}"
    )
    assert job == "2"


def test_updates_in_the_store_hold_only_adapter_tensors(lora: Run, tmp_path: Path) -> None:
    prefix = f"fedkube/{lora.jobs.namespace}/{NAME}-"
    keys = [k for k in lora.jobs.store_keys(prefix) if k.endswith(".safetensors")]
    updates = [k for k in keys if "/updates/" in k]
    s3 = lora.jobs.minio.client()

    assert len(updates) == ROUNDS * len(CLIENTS)
    for key in updates:
        path = tmp_path / "update.safetensors"
        s3.download_file(lora.jobs.minio.bucket, key, str(path))
        with open_weights(path) as reader:
            names = list(reader)
        assert names, key
        assert all(".lora_A." in n or ".lora_B." in n for n in names), (key, names[:5])
    (initial,) = [k for k in keys if k.endswith(layout.global_key(0))]
    path = tmp_path / "global.safetensors"
    s3.download_file(lora.jobs.minio.bucket, initial, str(path))
    with open_weights(path) as reader:
        assert all(".lora_A." in n or ".lora_B." in n for n in reader)


def test_the_held_out_loss_falls_over_the_rounds(lora: Run) -> None:
    losses = [h["metrics"]["loss"] for h in lora.status["history"]]

    assert len(losses) == ROUNDS + 1
    assert losses[-1] < losses[0], losses
    assert lora.status["lastRound"]["metrics"]["perplexity"] > 1.0
