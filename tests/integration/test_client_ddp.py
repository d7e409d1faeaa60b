"""A client's DDP group for real: launcher processes, gloo ranks, a LocalStore.

Each test plays the aggregator by hand: it commits a round 0 (global model + record
selecting client ``alpha``), starts the group the way a pod does (``launch_client_group``
under the operator's ``PET_*`` variables), waits for the update's manifest, then writes
``final/round.json`` so the group exits. A one-process group over the same data is the
reference: DDP must give the update a single process computes.

The synthetic task is used with 256 samples and a batch of 32, so two ranks split every
batch exactly and the comparison needs no slack for padding.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcore import layout
from fedcore.commit_signing import CommitSigner
from fedcore.signing import generate_key, load_key, verify
from fedcore.spec import FederatedJob, job_prefix, load_job
from fedcore.store import LocalStore
from fedcore.tasks import TaskContext, load_task
from fedcore.weights import load_weights, save_weights, sha256_file

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
CLIENT = "alpha"
WAIT_SECONDS = 120.0
"""Upper bound for a group to start and train one tiny round (normally a few seconds)."""

COMMIT_KEY = CommitSigner(Ed25519PrivateKey.generate())
"""The aggregator's key this test commits with; pods get its public half."""

TASK_CONFIG: dict[str, Any] = {
    "params": 3000,
    "samples": 256,
    "batchSize": 32,
    "localEpochs": 2,
    "lr": 0.05,
}


@dataclass
class GroupRun:
    """What one client group left behind after training round 1."""

    store: LocalStore
    job: FederatedJob
    manifest: layout.UpdateManifest
    update: dict[str, torch.Tensor]
    key_path: Path
    logs: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write_job(
    folder: Path,
    *,
    replicas: int,
    procs: int,
    entrypoint: str,
    strategy: dict[str, Any] | None = None,
    **config: Any,
) -> Path:
    job: dict[str, Any] = {
        "apiVersion": "fedkube.io/v1alpha1",
        "kind": "FederatedJob",
        "metadata": {"name": "ddp-test"},
        "spec": {
            "rounds": 1,
            "seed": 7,
            "task": {"entrypoint": entrypoint, "config": {**TASK_CONFIG, **config}},
            "clients": [
                {"name": CLIENT, "replicas": replicas, "procsPerReplica": procs},
                {"name": "beta"},
            ],
        },
    }
    if strategy is not None:
        job["spec"]["strategy"] = strategy
    path = folder / "job.json"
    path.write_text(json.dumps(job))
    return path


def commit_round_zero(
    job: FederatedJob, store: LocalStore, folder: Path, *, entrypoint: str | None = None
) -> layout.RoundRecord:
    """What the aggregator's first commit looks like: the initial model, alpha selected."""
    task = load_task(entrypoint or job.spec.task.entrypoint)
    ctx = TaskContext.for_aggregator(job.spec, 0)
    tensors = dict(task.build_model(ctx).state_dict())
    path = folder / "global-0.safetensors"
    save_weights(path, tensors, {"kind": "global", "round": 0})
    store.put_file(layout.global_key(0), path)
    now = layout.utcnow()
    record = layout.RoundRecord(
        round=0,
        model_key=layout.global_key(0),
        model_sha256=sha256_file(path),
        started_at=now,
        next=layout.NextRound(round=1, selected=[CLIENT], deadline=now + timedelta(hours=1)),
        closed_by="initial",
    )
    record = COMMIT_KEY.sign("round", record)
    store.put_bytes(layout.round_record_key(0), record.to_json())
    return record


def finish_job(store: LocalStore) -> None:
    final = COMMIT_KEY.sign("final", layout.FinalRecord(rounds=1, model_sha256="0" * 64))
    store.put_bytes(layout.FINAL_RECORD_KEY, final.to_json())


def start_pod(
    folder: Path,
    job_path: Path,
    *,
    nnodes: int,
    node_rank: int,
    nproc: int,
    port: int,
    extra_path: Path | None = None,
) -> tuple[subprocess.Popen[bytes], Path]:
    """One pod: ``launch_client_group`` in a fresh interpreter with the operator's env."""
    key_path = folder / "key"
    if not key_path.exists():
        key_path.write_text(generate_key())
    public_path = folder / "commit-public.pem"
    public_path.write_bytes(COMMIT_KEY.public.public_pem())
    python_path = [str(REPO), *([str(extra_path)] if extra_path else [])]
    outer = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "PYTHONPATH")
    env = {
        **{k: v for k, v in os.environ.items() if k not in outer and not k.startswith("PET_")},
        "PYTHONPATH": os.pathsep.join(python_path),
        "FEDKUBE_STORE_DIR": str(folder / "store"),
        "FEDKUBE_SIGNING_KEY_FILE": str(key_path),
        "FEDKUBE_COMMIT_PUBLIC_KEY_FILE": str(public_path),
        "PET_NNODES": str(nnodes),
        "PET_NODE_RANK": str(node_rank),
        "PET_NPROC_PER_NODE": str(nproc),
        "PET_MASTER_ADDR": "127.0.0.1",
        "PET_MASTER_PORT": str(port),
    }
    log_path = folder / f"pod-{node_rank}.log"
    code = (
        "import sys; from fedcore.client import launch_client_group as launch; "
        "sys.exit(launch(*sys.argv[1:]))"
    )
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(job_path), CLIENT],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return proc, log_path


def wait_until(predicate: Any, pods: list[tuple[subprocess.Popen[bytes], Path]], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not predicate():
        for proc, log_path in pods:
            if proc.poll() is not None:
                pytest.fail(
                    f"a pod exited ({proc.returncode}) before {what}:\n{log_path.read_text()}"
                )
        if time.monotonic() > deadline:
            pytest.fail(
                f"no {what} after {WAIT_SECONDS} s:\n" + "\n".join(p.read_text() for _, p in pods)
            )
        time.sleep(0.1)


def wait_exit(pods: list[tuple[subprocess.Popen[bytes], Path]]) -> list[int]:
    codes = []
    for proc, _ in pods:
        try:
            codes.append(proc.wait(timeout=WAIT_SECONDS))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            codes.append(-9)
    return codes


def run_group(
    folder: Path,
    *,
    replicas: int,
    procs: int,
    entrypoint: str = "fedcore.tasks.synthetic:task",
    strategy: dict[str, Any] | None = None,
    prepare: Callable[[LocalStore], None] | None = None,
) -> GroupRun:
    """Commit round 0 (then ``prepare`` the store), run the group until its update is in,
    finish the job, collect."""
    folder.mkdir(parents=True, exist_ok=True)
    job_path = write_job(
        folder, replicas=replicas, procs=procs, entrypoint=entrypoint, strategy=strategy
    )
    job = load_job(job_path)
    store = LocalStore(folder / "store", job_prefix(job))
    commit_round_zero(job, store, folder)
    if prepare is not None:
        prepare(store)
    port = free_port()
    pods = [
        start_pod(folder, job_path, nnodes=replicas, node_rank=i, nproc=procs, port=port)
        for i in range(replicas)
    ]
    try:
        wait_until(lambda: store.exists(layout.manifest_key(1, CLIENT)), pods, "update manifest")
        finish_job(store)
        codes = wait_exit(pods)
    finally:
        for proc, _ in pods:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    logs = "\n".join(path.read_text() for _, path in pods)
    assert codes == [0] * replicas, logs
    manifest = layout.UpdateManifest.model_validate_json(
        store.get_bytes(layout.manifest_key(1, CLIENT))
    )
    store.get_file(layout.update_key(1, CLIENT), folder / "update.safetensors")
    return GroupRun(
        store, job, manifest, load_weights(folder / "update.safetensors"), folder / "key", logs
    )


def parameter_digests(logs: str) -> list[str]:
    return re.findall(r"round 1 trained; parameters sha256 ([0-9a-f]+)", logs)


@pytest.fixture(scope="module")
def single_process(tmp_path_factory: pytest.TempPathFactory) -> GroupRun:
    return run_group(tmp_path_factory.mktemp("single"), replicas=1, procs=1)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> GroupRun:
    return run_group(tmp_path_factory.mktemp("two-ranks"), replicas=1, procs=2)


def assert_same_update(got: GroupRun, want: GroupRun) -> None:
    assert sorted(got.update) == sorted(want.update)
    for name, tensor in want.update.items():
        torch.testing.assert_close(got.update[name], tensor, rtol=1e-4, atol=1e-6, msg=name)


def test_two_rank_group_uploads_what_one_process_computes(
    two_ranks: GroupRun, single_process: GroupRun
) -> None:
    assert_same_update(two_ranks, single_process)
    assert any(t.abs().sum() > 0 for t in two_ranks.update.values()), "training changed nothing"


def test_manifest_counts_the_whole_groups_samples_and_verifies(two_ranks: GroupRun) -> None:
    m = two_ranks.manifest
    assert m.num_samples == TASK_CONFIG["samples"]
    assert m.metrics["samples"] == TASK_CONFIG["samples"]
    assert (m.client, m.round, m.base_round) == (CLIENT, 1, 0)
    assert (
        m.base_sha256
        == layout.RoundRecord.model_validate_json(
            two_ranks.store.get_bytes(layout.round_record_key(0))
        ).model_sha256
    )
    assert m.dtype == "float32"
    assert verify(m, load_key(two_ranks.key_path))
    assert m.update_sha256 == sha256_file(two_ranks.store.base / layout.update_key(1, CLIENT))
    assert {"train_loss", "train_accuracy", "train_seconds"} <= set(m.metrics)


def test_both_ranks_end_the_round_with_identical_weights(two_ranks: GroupRun) -> None:
    digests = parameter_digests(two_ranks.logs)
    assert len(digests) == 2, two_ranks.logs
    assert digests[0] == digests[1]


def test_two_pods_of_one_process_form_one_group(
    tmp_path: Path, two_ranks: GroupRun, single_process: GroupRun
) -> None:
    pods = run_group(tmp_path, replicas=2, procs=1)

    assert pods.manifest.num_samples == TASK_CONFIG["samples"]
    assert len(parameter_digests(pods.logs)) == 2
    assert_same_update(pods, single_process)
    # Same world size, seeds and data as the two-rank group: a rerun gives the same values.
    for name, tensor in two_ranks.update.items():
        assert torch.equal(pods.update[name], tensor), name


def test_restarted_group_does_not_train_a_round_it_already_uploaded(tmp_path: Path) -> None:
    job_path = write_job(tmp_path, replicas=1, procs=2, entrypoint="fedcore.tasks.synthetic:task")
    job = load_job(job_path)
    store = LocalStore(tmp_path / "store", job_prefix(job))
    commit_round_zero(job, store, tmp_path)
    store.put_bytes(layout.manifest_key(1, CLIENT), b'{"already": "uploaded"}')
    pods = [start_pod(tmp_path, job_path, nnodes=1, node_rank=0, nproc=2, port=free_port())]

    wait_until(lambda: "already in the store" in pods[0][1].read_text(), pods, "skip message")
    finish_job(store)

    assert wait_exit(pods) == [0], pods[0][1].read_text()
    assert not store.exists(layout.update_key(1, CLIENT))


FAILING_TASK = """
import torch.distributed as dist
from fedcore.tasks.synthetic import SyntheticTask

class FailsOnRankOne(SyntheticTask):
    def train(self, model, loader, ctx):
        if ctx.rank == 1:
            raise RuntimeError("rank 1 breaks on purpose")
        return super().train(model, loader, ctx)

task = FailsOnRankOne()
"""


def test_a_failing_rank_fails_the_whole_group(tmp_path: Path) -> None:
    (tmp_path / "fk_failing_task.py").write_text(FAILING_TASK)
    job_path = write_job(tmp_path, replicas=1, procs=2, entrypoint="fk_failing_task:task")
    job = load_job(job_path)
    store = LocalStore(tmp_path / "store", job_prefix(job))
    commit_round_zero(job, store, tmp_path, entrypoint="fedcore.tasks.synthetic:task")
    pods = [
        start_pod(
            tmp_path,
            job_path,
            nnodes=1,
            node_rank=0,
            nproc=2,
            port=free_port(),
            extra_path=tmp_path,
        )
    ]

    codes = wait_exit(pods)

    log = pods[0][1].read_text()
    assert codes == [1], log
    assert "rank 1 breaks on purpose" in log
    assert not store.exists(layout.manifest_key(1, CLIENT))
