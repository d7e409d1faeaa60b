"""The disk accumulator in the real aggregator, on the test MinIO: a process SIGKILLed in the
middle of a fold resumes and commits the very bytes an uninterrupted run with the in-memory
accumulator commits.

The model is large enough (8 M parameters: a 32 MiB update, a 64 MiB accumulator) that a
fold takes many slices; the kill is sent once the process has written part of the
accumulator after downloading the update (``/proc/<pid>/io``), and only after the process,
stopped there, is seen not to have written all of it.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from fedcore import layout
from fedcore.aggregator import Aggregator
from fedcore.commit_signing import CommitSigner, generate_key_pair, load_signer, read_round_record
from fedcore.signing import SigningKey, generate_key, sign_manifest
from fedcore.spec import FederatedJob, job_prefix, parse_job
from fedcore.store import ObjectStore
from fedcore.store.s3 import S3Config, S3Store
from fedcore.tasks.base import TaskContext, seeded
from fedcore.weights import save_weights, sha256_file, update_metadata
from tests.fixtures.minio import MinioServer
from tests.integration.test_aggregator import WAIT_SECONDS, wait_for

IN, OUT = 4096, 2048
UPDATE_BYTES = 4 * (IN * OUT + OUT)
ACCUMULATOR_BYTES = 2 * UPDATE_BYTES
ENTRYPOINT = "tests.integration.test_aggregator_disk_accumulator:task"


class WideTask:
    """One 4096 -> 2048 linear layer; 'evaluation' is a function of the weights only."""

    def build_model(self, ctx: TaskContext) -> nn.Module:
        with seeded(ctx.derive_seed("wide")):
            return nn.Linear(IN, OUT)

    def train_dataset(self, ctx: TaskContext) -> Any:
        raise NotImplementedError

    def train(self, model: nn.Module, loader: Any, ctx: TaskContext) -> dict[str, float]:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, ctx: TaskContext) -> dict[str, float]:
        return {"loss": float(model.weight.detach().double().abs().mean())}


task = WideTask()


def make_job(minio: MinioServer, accumulator: str) -> FederatedJob:
    return parse_job(
        {
            "apiVersion": "fedkube.io/v1alpha1",
            "kind": "FederatedJob",
            "metadata": {"name": "disk-acc"},
            "spec": {
                "rounds": 1,
                "task": {"entrypoint": ENTRYPOINT},
                "clients": [{"name": "a"}, {"name": "b"}],
                "strategy": {"name": "fedavg", "serverLearningRate": 0.7},
                "aggregator": {"accumulator": accumulator},
                "storage": {
                    "endpoint": minio.endpoint,
                    "bucket": minio.bucket,
                    "prefix": f"test-{secrets.token_hex(6)}/",
                    "credentials": "shared",
                },
            },
        }
    )


def store_of(minio: MinioServer, job: FederatedJob) -> S3Store:
    config = S3Config(endpoint=minio.endpoint, bucket=minio.bucket, prefix=job_prefix(job))
    return S3Store(config, session=minio.session())


def record(store: ObjectStore, r: int, commit: CommitSigner) -> layout.RoundRecord:
    wait_for(lambda: store.exists(layout.round_record_key(r)), f"round {r} commit", 120)
    return read_round_record(store.get_bytes(layout.round_record_key(r)), r, commit.public)


def send(store: ObjectStore, client: str, key: SigningKey, base_sha256: str, work: Path) -> None:
    """Client ``client``'s round-1 update: a fixed random delta, signed."""
    generator = torch.Generator().manual_seed(ord(client))
    delta = {
        "weight": torch.randn(OUT, IN, generator=generator) * 1e-3,
        "bias": torch.randn(OUT, generator=generator) * 1e-3,
    }
    path = work / f"send-{client}.safetensors"
    save_weights(path, delta, update_metadata(1, client))
    manifest = layout.UpdateManifest(
        client=client,
        round=1,
        base_round=0,
        base_sha256=base_sha256,
        num_samples=3 if client == "a" else 5,
        metrics={"loss": 0.5},
        update_sha256=sha256_file(path),
        update_bytes=path.stat().st_size,
        dtype="float32",
    )
    store.put_file(layout.update_key(1, client), path)
    store.put_bytes(layout.manifest_key(1, client), sign_manifest(manifest, key).to_json())
    path.unlink()


def written_bytes(pid: int) -> int:
    """Bytes the process has passed to write calls so far (``wchar``: pwrite included)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError(f"no wchar in /proc/{pid}/io")


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/<pid>/io")
def test_sigkill_mid_fold_with_the_disk_accumulator_commits_the_in_memory_bytes(
    minio: MinioServer, tmp_path: Path
) -> None:
    secrets_ = {name: generate_key() for name in ("a", "b")}
    keys = {name: SigningKey(secret.encode()) for name, secret in secrets_.items()}
    private, _ = generate_key_pair()
    (tmp_path / "commit-key.pem").write_bytes(private)
    commit = load_signer(tmp_path / "commit-key.pem")
    work = tmp_path / "work"
    work.mkdir()

    # Reference: the in-memory accumulator, in this process, never interrupted.
    memory_job = make_job(minio, "memory")
    memory_store = store_of(minio, memory_job)
    aggregator = Aggregator(
        memory_job, memory_store, keys, work, commit_key=commit, poll_seconds=0.01, task=task
    )
    thread = threading.Thread(target=aggregator.run, daemon=True)
    thread.start()
    base = record(memory_store, 0, commit).model_sha256
    for client in ("a", "b"):
        send(memory_store, client, keys[client], base, work)
    thread.join(120)
    assert not thread.is_alive()
    expected = record(memory_store, 1, commit)

    # The disk accumulator in a real aggregator process, killed half-way through a fold.
    disk_job = make_job(minio, "disk")
    disk_store = store_of(minio, disk_job)
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(disk_job.to_object()))
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    for name, secret in secrets_.items():
        (keys_dir / name).write_text(secret)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {
        **os.environ,
        **minio.env(),
        "FEDKUBE_SIGNING_KEYS_DIR": str(keys_dir),
        "FEDKUBE_COMMIT_KEY_FILE": str(tmp_path / "commit-key.pem"),
        "OMP_NUM_THREADS": "1",
        "TMPDIR": str(scratch),
    }
    log_path = tmp_path / "aggregator.log"

    def start() -> subprocess.Popen[bytes]:
        with open(log_path, "ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "fedcore.cli", "aggregator", "--job", str(job_file)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    proc = start()
    try:
        assert record(disk_store, 0, commit).model_sha256 == base
        wait_for(lambda: "round 1 open" in log_path.read_text(), "round 1 to open", 120)
        before = written_bytes(proc.pid)
        send(disk_store, "a", keys["a"], base, work)
        # Downloading the update writes UPDATE_BYTES; the fold then writes the accumulator.
        mid_fold = before + UPDATE_BYTES + ACCUMULATOR_BYTES // 8
        deadline = time.monotonic() + 120
        while written_bytes(proc.pid) < mid_fold:
            assert time.monotonic() < deadline, "timed out waiting for the fold to begin"
            time.sleep(0.001)
        proc.send_signal(signal.SIGSTOP)  # frozen where it is, to check it is mid-fold
        assert written_bytes(proc.pid) < before + UPDATE_BYTES + ACCUMULATOR_BYTES
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(WAIT_SECONDS) == -signal.SIGKILL
        assert "fold round 1 a" not in log_path.read_text()
        assert not [p for p in scratch.rglob("*") if "accumulator" in p.name]

        proc = start()
        send(disk_store, "b", keys["b"], base, work)
        assert proc.wait(120) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    got = record(disk_store, 1, commit)
    assert got.model_sha256 == expected.model_sha256
    assert got.participants == expected.participants == ["a", "b"]
    assert got.metrics == expected.metrics
    assert log_path.read_text().count("commit round 1:") == 1
