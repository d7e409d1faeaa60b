"""The aggregator against hostile store content: it keeps running, commits the honest clients.

One test per way the store used to stop a job for good or produce records nobody could read
(NaN metrics in a manifest, integer deltas that overflow, a diverging model, huge finite
updates, server learning rates that overflow, multi-MB manifests, oversized updates), plus
garbage in the drop list and among late updates, and unexpected errors while handling one
update. Each test plays the clients by writing their files into a LocalStore, runs an
in-process Aggregator to the end of the job, and checks that:

* the run ends with a final record (the process would have kept running);
* the bad update is rejected with its reason code and the honest ones are folded exactly
  (compared to a hand-computed FedAvg);
* every reader of the records accepts them (``fedkube status``, the clients' round watcher,
  the operator's store view), and no committed model holds NaN or inf.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from fedcore import layout
from fedcore.aggregator import Aggregator, QuorumUnreachable
from fedcore.commit_signing import load_signer
from fedcore.folding import MAX_STRANGERS_RECORDED
from fedcore.records import MAX_MANIFEST_BYTES
from fedcore.round_watch import RoundWatcher
from fedcore.runner import (
    RunDir,
    commit_verifier,
    read_final,
    read_records,
    show_status,
    write_commit_key,
)
from fedcore.signing import SigningKey, generate_key, sign_manifest
from fedcore.spec import FederatedJob, job_prefix, parse_job
from fedcore.store import LocalStore
from fedcore.strategies import fedavg as fedavg_module
from fedcore.tasks.base import TaskContext, seeded
from fedcore.validation import REJECT_REASONS
from fedcore.weights import Tensors, load_weights, save_weights, sha256_file, update_metadata
from fedop.store_view import StoreView
from tests.fixtures.fedjobs import make_job as make_operator_job

STEPS_START = 2**31 - 100
"""The int32 step counter's initial value: close to the top, so an overflow is one delta away."""


class CounterNet(nn.Module):
    """A 4 -> 2 linear layer with an int32 step counter, an int64 total and a float64 scale
    (buffers)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.register_buffer("steps", torch.tensor(STEPS_START, dtype=torch.int32))
        self.register_buffer("total", torch.tensor(0, dtype=torch.int64))
        self.register_buffer("scale", torch.zeros(2, dtype=torch.float64))


class CounterTask:
    """Evaluation in float32, as a real task's would be: weights of 1e30 make it NaN."""

    def build_model(self, ctx: TaskContext) -> nn.Module:
        with seeded(ctx.derive_seed("counter")):
            return CounterNet()

    def train_dataset(self, ctx: TaskContext) -> Any:
        raise NotImplementedError

    def train(self, model: nn.Module, loader: Any, ctx: TaskContext) -> dict[str, float]:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, ctx: TaskContext) -> dict[str, float]:
        square = sum(p.detach().float().pow(2).sum() for p in model.parameters())
        assert isinstance(square, torch.Tensor)
        loss = square - square + square  # inf - inf: a diverged model's loss is NaN
        return {"loss": float(loss), "accuracy": float(1.0 / (1.0 + square))}


task = CounterTask()


def make_job(
    clients: tuple[str, ...],
    rounds: int = 1,
    strategy: dict[str, Any] | None = None,
    aggregator: dict[str, Any] | None = None,
) -> FederatedJob:
    """A job whose rounds close with 2 honest clients (``minClients: 2``) unless told."""
    return parse_job(
        {
            "apiVersion": "fedkube.io/v1alpha1",
            "kind": "FederatedJob",
            "metadata": {"name": "hostile"},
            "spec": {
                "rounds": rounds,
                "task": {"entrypoint": "tests.integration.test_aggregator_hostile:task"},
                "clients": [{"name": c} for c in clients],
                "strategy": {"minClients": min(2, len(clients)), **(strategy or {})},
                "aggregator": aggregator or {},
            },
        }
    )


class CountingStore(LocalStore):
    """A LocalStore that remembers every key whose bytes were read."""

    def __init__(self, root: Path, prefix: str) -> None:
        super().__init__(root, prefix)
        self.read: list[str] = []
        self.fail: dict[str, BaseException] = {}

    def get_bytes(self, key: str) -> bytes:
        self.read.append(key)
        return super().get_bytes(key)

    def get_file(self, key: str, path: Path) -> str:
        self.read.append(key)
        if key in self.fail:
            raise self.fail[key]
        return super().get_file(key, path)


class Scene:
    """A run directory, its store, the clients' keys and an aggregator that committed round 0."""

    def __init__(self, tmp_path: Path, job: FederatedJob) -> None:
        self.job = job
        self.run = RunDir(tmp_path / "run")
        self.run.root.mkdir()
        self.run.job_file.write_text(json.dumps(job.to_object()))
        write_commit_key(self.run)
        self.commit_key = load_signer(self.run.commit_key)
        self.verifier = commit_verifier(self.run)
        self.store = CountingStore(self.run.store_root, job_prefix(job))
        self.keys = {c.name: SigningKey(generate_key().encode()) for c in job.spec.clients}
        self.workdir = tmp_path / "work"
        self.workdir.mkdir()
        self.aggregator = self.new_aggregator()
        self.aggregator.check_job_record()
        self.r0 = self.aggregator.commit_initial()
        self.w0 = self.global_model(0)

    def new_aggregator(self) -> Aggregator:
        return Aggregator(
            self.job,
            self.store,
            self.keys,
            self.workdir,
            commit_key=self.commit_key,
            poll_seconds=0.01,
            task=task,
        )

    def global_model(self, r: int) -> Tensors:
        path = self.workdir / f"read-global-{r}.safetensors"
        self.store.get_file(layout.global_key(r), path)
        return load_weights(path)

    def record(self, r: int) -> layout.RoundRecord:
        return layout.RoundRecord.model_validate_json(
            self.store.get_bytes(layout.round_record_key(r))
        )

    def send(
        self,
        client: str,
        delta: Mapping[str, torch.Tensor],
        num_samples: int,
        *,
        r: int = 1,
        base_sha256: str | None = None,
        manifest_json: bytes | None = None,
    ) -> None:
        """A signed update (weights, then manifest); ``manifest_json`` replaces the manifest."""
        path = self.workdir / f"send-{client}.safetensors"
        save_weights(path, delta, update_metadata(r, client))
        manifest = layout.UpdateManifest(
            client=client,
            round=r,
            base_round=r - 1,
            base_sha256=base_sha256 or self.record(r - 1).model_sha256,
            num_samples=num_samples,
            metrics={"train_loss": 0.5},
            update_sha256=sha256_file(path),
            update_bytes=path.stat().st_size,
            dtype="float32",
        )
        signed = sign_manifest(manifest, self.keys[client])
        self.store.put_file(layout.update_key(r, client), path)
        self.store.put_bytes(layout.manifest_key(r, client), manifest_json or signed.to_json())

    def finish(self) -> layout.FinalRecord:
        """Run the job to its end in a fresh aggregator (a restarted one, as after a crash)."""
        return self.new_aggregator().run()

    def reasons(self, r: int = 1) -> dict[str, str]:
        return {x.client: x.reason for x in self.record(r).rejected}


def delta(weight: float, *, steps: int = 1, total: int = 0, scale: float = 0.0) -> Tensors:
    return {
        "fc.weight": torch.full((2, 4), weight, dtype=torch.float32),
        "fc.bias": torch.full((2,), -weight, dtype=torch.float32),
        "steps": torch.tensor(steps, dtype=torch.int32),
        "total": torch.tensor(total, dtype=torch.int64),
        "scale": torch.full((2,), scale, dtype=torch.float64),
    }


def fedavg(base: Tensors, updates: list[tuple[Tensors, int]], lr: float = 1.0) -> Tensors:
    """The expected model, by hand: float64 sums, ints rounded half up (as the docstring says)."""
    n = sum(k for _, k in updates)
    out: Tensors = {}
    for name, b in base.items():
        if b.dtype.is_floating_point:
            acc = sum((d[name].double() * k for d, k in updates), torch.zeros(b.shape).double())
            out[name] = (acc / n * lr + b.double()).to(b.dtype)
        else:
            acc_int = sum(int(d[name]) * k for d, k in updates)
            out[name] = torch.tensor(int(b) + (2 * acc_int + n) // (2 * n), dtype=b.dtype)
    return out


def assert_model(got: Tensors, expected: Tensors) -> None:
    assert set(got) == set(expected)
    for name in expected:
        assert torch.equal(got[name], expected[name]), (name, got[name], expected[name])


def assert_every_reader_accepts(scene: Scene, tmp_path: Path) -> None:
    """``fedkube status``, the round watcher and the operator read every record; every
    committed model is finite."""
    records = read_records(scene.store, scene.verifier)
    final = read_final(scene.store, scene.verifier)
    assert final is not None
    for record in records:
        assert all(math.isfinite(v) for v in record.metrics.values())
        assert all(r.reason in REJECT_REASONS for r in record.rejected)
        model = scene.global_model(record.round)
        assert all(bool(torch.isfinite(t).all()) for t in model.values() if t.is_floating_point())

    out = io.StringIO()
    assert show_status(run_dir=scene.run.root, job_path=None, out=out) == 0
    assert f"round {records[-1].round}/" in out.getvalue()

    # The clients' watcher reads the records while no final record exists.
    copy = LocalStore(tmp_path / "copy", "")
    for record in records:
        key = layout.round_record_key(record.round)
        copy.put_bytes(key, scene.store.get_bytes(key))
    watcher = RoundWatcher(copy, scene.job.spec.clients[0].name, scene.verifier)
    watcher.poll()

    snapshot = StoreView(lambda storage, prefix, creds: scene.store).snapshot(
        make_operator_job(), None, 0, scene.verifier
    )
    assert snapshot.available, snapshot.problem
    assert [r.round for r in snapshot.rounds] == [r.round for r in records]
    assert snapshot.final is not None


# ---- store content that used to stop the job --------------------------------------------------


@pytest.mark.parametrize("value", [b"NaN", b"1e999", b"-Infinity"])
def test_manifest_with_a_non_finite_metric_is_rejected_and_the_round_commits(
    tmp_path: Path, value: bytes
) -> None:
    scene = Scene(tmp_path, make_job(("a", "b", "m")))
    scene.send("a", delta(1.0), 1)
    scene.send("b", delta(2.0), 3)
    honest = scene.workdir / "m.json"
    scene.send("m", delta(9.0), 5)
    text = scene.store.get_bytes(layout.manifest_key(1, "m"))
    honest.write_bytes(text)
    scene.store.put_bytes(layout.manifest_key(1, "m"), text.replace(b"0.5", value))

    scene.finish()

    assert scene.reasons() == {"m": "bad-manifest"}
    assert "metrics.train_loss" in scene.record(1).rejected[0].detail
    assert_model(scene.global_model(1), fedavg(scene.w0, [(delta(1.0), 1), (delta(2.0), 3)]))
    assert_every_reader_accepts(scene, tmp_path)


def test_a_rejection_in_a_local_store_says_its_writer_is_unknown(tmp_path: Path) -> None:
    scene = Scene(tmp_path, make_job(("a", "b", "m")))
    scene.send("a", delta(1.0), 1)
    scene.send("b", delta(2.0), 3)
    scene.send("m", delta(float("nan")), 5)

    scene.finish()

    (rejected,) = scene.record(1).rejected
    assert rejected.reason == "non-finite"
    assert rejected.writer.startswith("who wrote rounds/000001/updates/m.* is unknown")


def test_int32_counter_delta_that_overflows_is_rejected_at_validation(tmp_path: Path) -> None:
    scene = Scene(tmp_path, make_job(("a", "b", "m")))
    scene.send("a", delta(1.0, steps=10), 1)
    scene.send("b", delta(2.0, steps=20), 1)
    scene.send("m", delta(0.0, steps=2**31 - 1), 1)  # a valid int32, but not once added

    scene.finish()

    assert scene.reasons() == {"m": "out-of-range"}
    assert "'steps': base + delta leaves int32" in scene.record(1).rejected[0].detail
    expected = fedavg(scene.w0, [(delta(1.0, steps=10), 1), (delta(2.0, steps=20), 1)])
    assert int(expected["steps"]) == STEPS_START + 15
    assert_model(scene.global_model(1), expected)
    assert_every_reader_accepts(scene, tmp_path)


def test_int64_deltas_whose_sum_would_wrap_are_rejected_not_wrapped(tmp_path: Path) -> None:
    scene = Scene(tmp_path, make_job(("a", "b", "m")))
    scene.send("a", delta(1.0, total=2**60), 1)
    scene.send("b", delta(1.0, total=2**60), 1)
    # Alone it fits (2**60 <= 2**61); with a and b folded first the exact sum would not.
    scene.send("m", delta(1.0, total=2**60), 1)

    scene.finish()

    assert scene.reasons() == {"m": "out-of-range"}
    expected = fedavg(scene.w0, [(delta(1.0, total=2**60), 1), (delta(1.0, total=2**60), 1)])
    assert int(expected["total"]) == 2**60
    assert_model(scene.global_model(1), expected)
    assert_every_reader_accepts(scene, tmp_path)


def test_diverging_model_with_nan_loss_commits_a_readable_record(tmp_path: Path) -> None:
    scene = Scene(tmp_path, make_job(("a", "b")))
    scene.send("a", delta(1e30), 1)  # finite, but its square is inf in float32
    scene.send("b", delta(1e30), 1)

    final = scene.finish()

    record = scene.record(1)
    assert record.participants == ["a", "b"]
    assert "loss" not in record.metrics
    assert record.dropped_metrics == {"loss": "nan"}
    assert final.dropped_metrics == {}
    assert "loss" not in final.metrics
    assert_model(scene.global_model(1), fedavg(scene.w0, [(delta(1e30), 1), (delta(1e30), 1)]))
    assert_every_reader_accepts(scene, tmp_path)


@pytest.mark.parametrize("accumulator", ["memory", "disk"])
def test_finite_update_that_overflows_with_the_server_learning_rate_is_not_committed(
    tmp_path: Path, accumulator: str
) -> None:
    job = make_job(
        ("a", "b", "m"),
        strategy={"name": "fedavgm", "serverLearningRate": 10, "serverMomentum": 0.9},
        aggregator={"accumulator": accumulator},
    )
    scene = Scene(tmp_path, job)
    scene.send("a", delta(0.01), 1)
    scene.send("b", delta(0.02), 1)
    scene.send("m", delta(3e38), 1)  # finite float32; times 10 it is not

    scene.finish()

    assert scene.reasons() == {"m": "non-finite-aggregate"}
    assert scene.record(1).participants == ["a", "b"]
    expected = fedavg(scene.w0, [(delta(0.01), 1), (delta(0.02), 1)], lr=10)
    assert_model(scene.global_model(1), expected)
    state = load_weights(_fetch(scene, layout.strategy_state_key(1)))
    assert all(bool(torch.isfinite(t).all()) for t in state.values())
    assert_every_reader_accepts(scene, tmp_path)


def test_updates_that_overflow_only_together_lose_the_largest_one(tmp_path: Path) -> None:
    scene = Scene(tmp_path, make_job(("a", "b", "m")))
    # Each float64 delta is finite and so is the model it makes alone, but their float64
    # sum overflows: a weighted mean can only be computed from a sum.
    scene.send("a", delta(0.5, scale=1.0), 1)
    scene.send("b", delta(0.5, scale=1.5e308), 1)
    scene.send("m", delta(0.5, scale=1.7e308), 1)

    scene.finish()

    assert scene.reasons() == {"m": "non-finite-aggregate"}
    assert "largest values (1.7e+308)" in scene.record(1).rejected[0].detail
    expected = fedavg(scene.w0, [(delta(0.5, scale=1.0), 1), (delta(0.5, scale=1.5e308), 1)])
    assert_model(scene.global_model(1), expected)
    assert_every_reader_accepts(scene, tmp_path)


def test_round_where_every_update_overflows_fails_as_unreachable(tmp_path: Path) -> None:
    job = make_job(("a", "b"), strategy={"serverLearningRate": 10})
    scene = Scene(tmp_path, job)
    scene.send("a", delta(3e38), 1)
    scene.send("b", delta(3e38), 1)

    with pytest.raises(QuorumUnreachable, match=r"a \(non-finite-aggregate"):
        scene.finish()

    assert not scene.store.exists(layout.round_record_key(1))


def test_multi_megabyte_manifest_is_rejected_without_being_read(tmp_path: Path) -> None:
    scene = Scene(tmp_path, make_job(("a", "b", "m")))
    scene.send("a", delta(1.0), 1)
    scene.send("b", delta(2.0), 1)
    metrics = {f"metric-{i:06d}": 1.0 for i in range(200_000)}
    scene.send("m", delta(1.0), 1, manifest_json=json.dumps({"metrics": metrics}).encode())
    assert scene.store.size(layout.manifest_key(1, "m")) > 4 * MAX_MANIFEST_BYTES

    scene.finish()

    assert scene.reasons() == {"m": "bad-manifest"}
    assert "nothing was downloaded" in scene.record(1).rejected[0].detail
    assert layout.manifest_key(1, "m") not in scene.store.read
    assert layout.update_key(1, "m") not in scene.store.read
    assert len(scene.store.get_bytes(layout.round_record_key(1))) < MAX_MANIFEST_BYTES
    assert_model(scene.global_model(1), fedavg(scene.w0, [(delta(1.0), 1), (delta(2.0), 1)]))
    assert_every_reader_accepts(scene, tmp_path)


def test_oversized_update_is_rejected_from_its_size_before_any_download(tmp_path: Path) -> None:
    scene = Scene(tmp_path, make_job(("a", "b", "m")))
    scene.send("a", delta(1.0), 1)
    scene.send("b", delta(2.0), 1)
    scene.send("m", delta(1.0), 1)
    scene.store.put_bytes(layout.update_key(1, "m"), b"\0" * (3 << 20))  # > model + 1 MiB

    scene.finish()

    assert scene.reasons() == {"m": "too-large"}
    assert "nothing was downloaded" in scene.record(1).rejected[0].detail
    assert layout.update_key(1, "m") not in scene.store.read
    assert_every_reader_accepts(scene, tmp_path)


# ---- unexpected errors, garbage control files and listings ---------------------------------------


def test_unexpected_error_reading_one_update_rejects_it_as_internal_error(
    tmp_path: Path,
) -> None:
    scene = Scene(tmp_path, make_job(("a", "b", "m")))
    scene.send("a", delta(1.0), 1)
    scene.send("b", delta(2.0), 1)
    scene.send("m", delta(3.0), 1)
    scene.store.fail[layout.update_key(1, "m")] = RuntimeError("disk controller on fire")

    scene.finish()

    rejected = scene.record(1).rejected
    assert [(x.client, x.reason) for x in rejected] == [("m", "internal-error")]
    assert rejected[0].detail == "RuntimeError: disk controller on fire"
    assert_model(scene.global_model(1), fedavg(scene.w0, [(delta(1.0), 1), (delta(2.0), 1)]))
    assert_every_reader_accepts(scene, tmp_path)


def test_fold_that_fails_half_way_is_undone_and_the_round_recomputed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scene = Scene(tmp_path, make_job(("a", "b", "m")))
    scene.send("a", delta(1.0), 1)
    scene.send("m", delta(5.0), 7)
    scene.send("b", delta(2.0), 3)
    real_add = fedavg_module.add_chunked_

    def failing_add(acc: torch.Tensor, other: torch.Tensor, alpha: float = 1) -> None:
        real_add(acc, other, alpha=alpha)  # m's first tensor lands in the accumulator...
        if alpha == 7:
            raise MemoryError("out of memory half-way")  # ...and then the fold breaks

    monkeypatch.setattr(fedavg_module, "add_chunked_", failing_add)

    scene.finish()

    assert scene.reasons() == {"m": "internal-error"}
    assert "MemoryError" in scene.record(1).rejected[0].detail
    assert_model(scene.global_model(1), fedavg(scene.w0, [(delta(1.0), 1), (delta(2.0), 3)]))


@pytest.mark.parametrize(
    "garbage",
    [b"\xff\xfe not json", b'{"clients": {"b": NaN}}', b"[]", b'{"clients": {"a": 1}}'],
    ids=["binary", "nan", "a list", "wrong types"],
)
def test_garbage_drop_list_keeps_the_last_good_one_and_the_round_commits(
    tmp_path: Path, garbage: bytes
) -> None:
    scene = Scene(tmp_path, make_job(("a", "b")))
    scene.store.put_bytes(layout.EXCLUDED_KEY, garbage)
    scene.send("a", delta(1.0), 1)
    scene.send("b", delta(2.0), 1)

    scene.finish()

    assert scene.record(1).participants == ["a", "b"]
    # The operator writes this file and reports garbage in it as a store problem of its own.
    scene.store.delete(layout.EXCLUDED_KEY)
    assert_every_reader_accepts(scene, tmp_path)


def test_junk_among_the_previous_rounds_updates_is_not_taken_for_late_updates(
    tmp_path: Path,
) -> None:
    scene = Scene(tmp_path, make_job(("a", "b"), rounds=2))
    scene.send("a", delta(1.0), 1)
    scene.send("b", delta(2.0), 1)
    aggregator = scene.new_aggregator()
    r1 = aggregator.run_round(1, scene.r0)
    prefix = layout.updates_prefix(1)
    for junk in ("nested/a.json", "stranger.json", "x" * 200 + ".json", "a.json.bak", "é€.json"):
        scene.store.put_bytes(prefix + junk, b"\x00garbage")
    scene.send("b", delta(9.0), 1, r=1, base_sha256=scene.r0.model_sha256)  # b again: late?
    scene.send("a", delta(1.0), 1, r=2)
    scene.send("b", delta(1.0), 1, r=2)

    aggregator.run_round(2, r1)

    assert scene.record(2).late == []  # b answered round 1; the rest are not clients
    assert scene.record(2).participants == ["a", "b"]


def test_junk_manifests_of_strangers_are_recorded_up_to_a_bound(tmp_path: Path) -> None:
    scene = Scene(tmp_path, make_job(("a", "b")))
    for i in range(MAX_STRANGERS_RECORDED + 10):
        scene.store.put_bytes(layout.manifest_key(1, f"stranger-{i:03d}"), b"junk")
    scene.send("a", delta(1.0), 1)
    scene.send("b", delta(2.0), 1)

    scene.finish()

    reasons = scene.reasons()
    assert len(reasons) == MAX_STRANGERS_RECORDED
    assert set(reasons.values()) == {"not-selected"}
    assert scene.record(1).participants == ["a", "b"]


def _fetch(scene: Scene, key: str) -> Path:
    path = scene.workdir / key.replace("/", "_")
    scene.store.get_file(key, path)
    return path


def variate_delta(value: float) -> Tensors:
    """A SCAFFOLD variate delta for CounterNet (float tensors only, float64 stays float64)."""
    return {
        "control/fc.weight": torch.full((2, 4), value),
        "control/fc.bias": torch.full((2,), value),
        "control/scale": torch.full((2,), value, dtype=torch.float64),
    }


def test_scaffold_updates_with_a_bad_or_missing_variate_delta_are_rejected(
    tmp_path: Path,
) -> None:
    scene = Scene(tmp_path, make_job(("a", "b", "nan", "none"), strategy={"name": "scaffold"}))
    scene.send("a", {**delta(1.0), **variate_delta(0.5)}, 1)
    scene.send("b", {**delta(2.0), **variate_delta(1.0)}, 3)
    scene.send("nan", {**delta(3.0), **variate_delta(float("nan"))}, 5)
    scene.send("none", delta(4.0), 5)

    scene.finish()

    assert scene.reasons() == {"nan": "non-finite", "none": "missing-tensor"}
    assert "control/" in " ".join(x.detail for x in scene.record(1).rejected)
    assert_model(scene.global_model(1), fedavg(scene.w0, [(delta(1.0), 1), (delta(2.0), 3)]))
    record = scene.record(1)
    path = tmp_path / "state.safetensors"
    scene.store.get_file(layout.strategy_state_key(1), path)
    assert record.strategy_sha256 == sha256_file(path)
    state = load_weights(path)
    assert sorted(state) == sorted(variate_delta(0.0))
    for key, c in state.items():
        assert torch.equal(c, ((variate_delta(0.5)[key].double() + 1.0) / 4).to(c.dtype)), key
    assert_every_reader_accepts(scene, tmp_path)
