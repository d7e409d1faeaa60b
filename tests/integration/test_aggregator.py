"""The aggregator's round loop against a LocalStore, with hand-written client updates.

No DDP and no client code: each test plays the clients itself by writing signed updates into
the store (weights first, manifest last, as the protocol says), and checks what the
aggregator commits. The model is a tiny linear layer so expected results are computed by
hand.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from torch import nn

from fedcore import layout
from fedcore.aggregator import Aggregator, AggregatorStopped, QuorumUnreachable
from fedcore.commit_signing import (
    CommitSigner,
    UnverifiedRecord,
    generate_key_pair,
    load_signer,
    read_final_record,
    read_round_record,
)
from fedcore.errors import RoundProtocolError
from fedcore.signing import SigningKey, generate_key, sign_manifest
from fedcore.spec import FederatedJob, job_prefix, parse_job
from fedcore.store import LocalStore
from fedcore.tasks.base import TaskContext, seeded
from fedcore.weights import Tensors, load_weights, save_weights, sha256_file, update_metadata

WAIT_SECONDS = 30.0
"""Upper bound on any wait for the aggregator; tests normally see it within milliseconds."""
COMMIT_KEY = CommitSigner(Ed25519PrivateKey.generate())
"""The job's commit signing key (the aggregator's); records are read back verified with it."""
FORGER = CommitSigner(Ed25519PrivateKey.generate())


class TinyTask:
    """A 4 -> 2 linear model; 'evaluation' is a function of the weights only."""

    def build_model(self, ctx: TaskContext) -> nn.Module:
        with seeded(ctx.derive_seed("tiny")):
            return nn.Linear(4, 2)

    def train_dataset(self, ctx: TaskContext) -> Any:
        raise NotImplementedError

    def train(self, model: nn.Module, loader: Any, ctx: TaskContext) -> dict[str, float]:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, ctx: TaskContext) -> dict[str, float]:
        norm = float(sum(p.detach().double().pow(2).sum() for p in model.parameters()))
        return {"loss": norm, "accuracy": 1.0 / (1.0 + norm)}


task = TinyTask()
"""Entry point ``tests.integration.test_aggregator:task`` for the subprocess tests."""
ENTRYPOINT = "tests.integration.test_aggregator:task"


def make_job(clients: tuple[str, ...] = ("a", "b"), rounds: int = 1, **spec: Any) -> FederatedJob:
    obj: dict[str, Any] = {
        "apiVersion": "fedkube.io/v1alpha1",
        "kind": "FederatedJob",
        "metadata": {"name": "agg-test"},
        "spec": {
            "rounds": rounds,
            "task": {"entrypoint": ENTRYPOINT},
            "clients": [{"name": c} for c in clients],
            **spec,
        },
    }
    return parse_job(obj)


@dataclass
class Harness:
    """A store, the clients' keys, and an aggregator running in a thread."""

    job: FederatedJob
    store: LocalStore
    keys: dict[str, SigningKey]
    workdir: Path
    commit_key: CommitSigner = COMMIT_KEY
    aggregator: Aggregator | None = None
    thread: threading.Thread | None = None
    outcome: dict[str, Any] = field(default_factory=dict)

    def start(self) -> None:
        self.aggregator = Aggregator(
            self.job,
            self.store,
            self.keys,
            self.workdir,
            commit_key=self.commit_key,
            poll_seconds=0.01,
            task=task,
        )

        def body() -> None:
            try:
                self.outcome["final"] = self.aggregator.run()  # type: ignore[union-attr]
            except BaseException as e:  # handed to the test thread
                self.outcome["error"] = e

        self.thread = threading.Thread(target=body, daemon=True)
        self.thread.start()

    def finish(self) -> layout.FinalRecord:
        assert self.thread is not None
        self.thread.join(WAIT_SECONDS)
        assert not self.thread.is_alive(), "the aggregator did not finish"
        if "error" in self.outcome:
            raise self.outcome["error"]
        final: layout.FinalRecord = self.outcome["final"]
        return final

    def failure(self) -> BaseException:
        assert self.thread is not None
        self.thread.join(WAIT_SECONDS)
        assert not self.thread.is_alive(), "the aggregator did not stop"
        error: BaseException = self.outcome["error"]
        return error

    def stop(self) -> None:
        if self.aggregator is not None and self.thread is not None and self.thread.is_alive():
            self.aggregator.stop()
            self.thread.join(WAIT_SECONDS)

    # -- playing the clients --

    def record(self, r: int) -> layout.RoundRecord:
        """Round ``r``'s record once committed, verified as a client reads it."""
        wait_for(lambda: self.store.exists(layout.round_record_key(r)), f"round {r} commit")
        data = self.store.get_bytes(layout.round_record_key(r))
        return read_round_record(data, r, self.commit_key.public)

    def global_model(self, r: int) -> Tensors:
        self.record(r)
        path = self.workdir / f"read-global-{r}.safetensors"
        self.store.get_file(layout.global_key(r), path)
        return load_weights(path)

    def send(
        self,
        r: int,
        client: str,
        delta: Mapping[str, torch.Tensor],
        num_samples: int,
        *,
        key: SigningKey | None = None,
        base_sha256: str | None = None,
        tamper: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """Upload a signed update for round ``r`` from ``client`` (weights, then manifest)."""
        base = base_sha256 or self.record(r - 1).model_sha256
        path = self.workdir / f"send-{client}-{r}.safetensors"
        save_weights(path, delta, update_metadata(r, client))
        manifest = layout.UpdateManifest(
            client=client,
            round=r,
            base_round=r - 1,
            base_sha256=base,
            num_samples=num_samples,
            metrics={"loss": 0.5},
            update_sha256=sha256_file(path),
            update_bytes=path.stat().st_size,
            dtype="float32",
        )
        signed = sign_manifest(manifest, key or self.keys[client])
        self.store.put_file(layout.update_key(r, client), path)
        fields = json.loads(signed.to_json())
        if tamper is not None:
            tamper(fields)
        self.store.put_bytes(layout.manifest_key(r, client), json.dumps(fields).encode())


def wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT_SECONDS) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def deltas(scale: float) -> Tensors:
    return {
        "weight": torch.full((2, 4), scale, dtype=torch.float32),
        "bias": torch.full((2,), -scale, dtype=torch.float32),
    }


def fedavg(base: Tensors, updates: list[tuple[Tensors, int]]) -> Tensors:
    n = sum(k for _, k in updates)
    out = {}
    for name, b in base.items():
        acc = torch.zeros(b.shape, dtype=torch.float64)
        for d, k in updates:
            acc += d[name].double() * k
        out[name] = (acc / n + b.double()).to(b.dtype)
    return out


@pytest.fixture
def harness_factory(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(job: FederatedJob) -> Harness:
        keys = {c.name: SigningKey(generate_key().encode()) for c in job.spec.clients}
        workdir = tmp_path / f"work{len(made)}"
        workdir.mkdir()
        h = Harness(job, LocalStore(tmp_path / "store", job_prefix(job)), keys, workdir)
        made.append(h)
        return h

    yield make
    for h in made:
        h.stop()


# ---- folding -------------------------------------------------------------------------------------


def test_round_is_the_sample_weighted_mean_of_deltas(
    harness_factory: Callable[..., Harness],
) -> None:
    h = harness_factory(make_job(rounds=1))
    h.start()
    r0 = h.record(0)
    w0 = h.global_model(0)

    h.send(1, "a", deltas(1.0), 1)
    h.send(1, "b", deltas(-2.0), 3)
    final = h.finish()

    r1 = h.record(1)
    expected = fedavg(w0, [(deltas(1.0), 1), (deltas(-2.0), 3)])
    got = h.global_model(1)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    assert r0.closed_by == "initial"
    assert r0.next is not None
    assert r0.next.selected == ["a", "b"]
    assert r1.participants == ["a", "b"]
    assert r1.num_samples == {"a": 1, "b": 3}
    assert r1.closed_by == "all-reported"
    assert r1.next is None
    assert r1.client_metrics["a"] == {"loss": 0.5}
    assert r1.metrics["loss"] == pytest.approx(
        sum(float(t.double().pow(2).sum()) for t in expected.values())
    )
    assert final.model_sha256 == r1.model_sha256
    assert sha256_file(_fetch(h, layout.FINAL_MODEL_KEY)) == r1.model_sha256


def _fetch(h: Harness, key: str) -> Path:
    path = h.workdir / key.replace("/", "_")
    h.store.get_file(key, path)
    return path


def test_rounds_chain_each_from_the_previous_global(
    harness_factory: Callable[..., Harness],
) -> None:
    h = harness_factory(make_job(rounds=2))
    h.start()
    w0 = h.global_model(0)

    for r in (1, 2):
        h.send(r, "a", deltas(0.1 * r), 2)
        h.send(r, "b", deltas(0.3 * r), 2)
    h.finish()

    w1 = fedavg(w0, [(deltas(0.1), 2), (deltas(0.3), 2)])
    w2 = fedavg(w1, [(deltas(0.2), 2), (deltas(0.6), 2)])
    got = h.global_model(2)
    assert all(torch.equal(got[n], w2[n]) for n in w2)
    assert h.record(2).started_at == h.record(1).committed_at


# ---- validation ----------------------------------------------------------------------------------


def test_rejected_updates_are_recorded_with_their_reason_and_the_round_goes_on(
    harness_factory: Callable[..., Harness],
) -> None:
    h = harness_factory(make_job(("a", "b", "c", "d", "e"), strategy={"minClients": 2}))
    h.start()
    w0 = h.global_model(0)
    bad = deltas(1.0)
    bad["weight"][0, 0] = float("nan")

    h.send(1, "a", deltas(1.0), 5)
    h.send(1, "b", bad, 5)
    h.send(1, "c", deltas(1.0), 5, key=SigningKey(generate_key().encode()))
    h.send(1, "d", deltas(3.0), 5, tamper=lambda m: m.update(num_samples=500))
    h.send(1, "e", deltas(2.0), 10)
    h.finish()

    r1 = h.record(1)
    reasons = {x.client: x.reason for x in r1.rejected}
    assert reasons == {"b": "non-finite", "c": "bad-signature", "d": "bad-signature"}
    assert all(x.detail for x in r1.rejected)
    assert r1.participants == ["a", "e"]
    assert r1.closed_by == "all-reported"
    got = h.global_model(1)
    expected = fedavg(w0, [(deltas(1.0), 5), (deltas(2.0), 10)])
    assert all(torch.equal(got[n], expected[n]) for n in expected)


def test_update_trained_from_another_model_is_rejected(
    harness_factory: Callable[..., Harness],
) -> None:
    h = harness_factory(make_job(("a", "b", "c", "d"), strategy={"minClients": 2}))
    h.start()

    h.send(1, "a", deltas(1.0), 1)
    h.send(1, "d", deltas(1.0), 1)
    h.send(1, "b", deltas(1.0), 1, base_sha256="0" * 64)
    h.send(1, "c", {"weight": torch.zeros(3, 4), "bias": torch.zeros(2)}, 1)
    h.finish()

    reasons = {x.client: x.reason for x in h.record(1).rejected}
    assert reasons == {"b": "wrong-base-model", "c": "shape-mismatch"}


def test_update_from_a_client_not_in_the_job_is_rejected(
    harness_factory: Callable[..., Harness],
) -> None:
    h = harness_factory(make_job(("a",)))
    h.keys["mallory"] = SigningKey(generate_key().encode())
    h.start()
    h.record(0)

    h.send(1, "mallory", deltas(100.0), 1000)
    h.store.put_bytes(f"{layout.updates_prefix(1)}nested/a.json", b"{}")  # not a manifest key
    h.send(1, "a", deltas(1.0), 1)
    h.finish()

    r1 = h.record(1)
    assert r1.participants == ["a"]
    assert [(x.client, x.reason) for x in r1.rejected] == [("mallory", "not-selected")]
    expected = fedavg(h.global_model(0), [(deltas(1.0), 1)])
    got = h.global_model(1)
    assert all(torch.equal(got[n], expected[n]) for n in expected)


def test_round_that_can_never_reach_quorum_fails_naming_the_clients(
    harness_factory: Callable[..., Harness],
) -> None:
    h = harness_factory(make_job(("a", "b")))
    h.start()

    h.send(1, "a", deltas(1.0), 1)
    h.send(1, "b", deltas(1.0), 1, key=SigningKey(generate_key().encode()))
    error = h.failure()

    assert isinstance(error, QuorumUnreachable)
    assert "round 1" in str(error)
    assert "b (bad-signature" in str(error)
    assert not h.store.exists(layout.round_record_key(1))


# ---- quorum, deadline, late and excluded clients -------------------------------------------------


def test_round_closes_at_the_deadline_with_a_quorum_and_late_update_is_recorded(
    harness_factory: Callable[..., Harness],
) -> None:
    job = make_job(("a", "b", "c"), rounds=2, strategy={"minClients": 2, "roundTimeoutSeconds": 1})
    h = harness_factory(job)
    h.start()
    base1 = h.record(0).model_sha256

    h.send(1, "a", deltas(1.0), 1)
    h.send(1, "b", deltas(1.0), 1)
    r1 = h.record(1)
    h.send(1, "c", deltas(9.0), 1, base_sha256=base1)  # too late for round 1
    for client in ("a", "b", "c"):
        h.send(2, client, deltas(1.0), 1)
    h.finish()

    r2 = h.record(2)
    assert r1.closed_by == "deadline"
    assert r1.participants == ["a", "b"]
    assert (r1.committed_at - r1.started_at).total_seconds() >= 1.0
    assert [(u.client, u.round) for u in r2.late] == [("c", 1)]
    assert r2.participants == ["a", "b", "c"]
    assert r2.closed_by == "all-reported"


def test_without_quorum_the_round_keeps_waiting_past_its_deadline(
    harness_factory: Callable[..., Harness],
) -> None:
    h = harness_factory(
        make_job(("a", "b", "c"), strategy={"minClients": 2, "roundTimeoutSeconds": 1})
    )
    h.start()
    h.send(1, "a", deltas(1.0), 1)
    deadline = h.record(0).next.deadline  # type: ignore[union-attr]
    wait_for(lambda: layout.utcnow() > deadline, "the deadline")
    time.sleep(0.2)

    assert not h.store.exists(layout.round_record_key(1))
    h.send(1, "b", deltas(1.0), 1)
    h.finish()
    r1 = h.record(1)
    assert r1.closed_by == "deadline"
    assert r1.participants == ["a", "b"]


def test_excluded_client_is_not_waited_for_nor_selected_again(
    harness_factory: Callable[..., Harness],
) -> None:
    h = harness_factory(make_job(("a", "b", "c"), rounds=2, strategy={"minClients": 2}))
    h.start()
    h.record(0)

    h.send(1, "a", deltas(1.0), 1)
    h.send(1, "b", deltas(1.0), 1)
    excluded = layout.ExcludedClients(clients={"c": "failed 4 times"})
    h.store.put_bytes(layout.EXCLUDED_KEY, excluded.to_json())
    r1 = h.record(1)
    h.send(2, "a", deltas(1.0), 1)
    h.send(2, "b", deltas(1.0), 1)
    h.finish()

    assert r1.closed_by == "all-reported"  # the 600 s deadline was not waited for
    assert r1.next is not None
    assert r1.next.selected == ["a", "b"]
    assert h.record(2).participants == ["a", "b"]


def test_too_many_excluded_clients_stop_the_job(harness_factory: Callable[..., Harness]) -> None:
    h = harness_factory(make_job(("a", "b", "c"), strategy={"minClients": 2}))
    h.start()
    h.record(0)

    h.send(1, "a", deltas(1.0), 1)
    excluded = layout.ExcludedClients(clients={"b": "crashed", "c": "crashed"})
    h.store.put_bytes(layout.EXCLUDED_KEY, excluded.to_json())
    error = h.failure()

    assert isinstance(error, QuorumUnreachable)
    assert "b (excluded: crashed)" in str(error)


# ---- restarts and exactly-once commits -----------------------------------------------------------


def test_restart_resumes_from_the_newest_committed_round(
    harness_factory: Callable[..., Harness],
) -> None:
    job = make_job(rounds=2)
    first = harness_factory(job)
    first.start()
    w0 = first.global_model(0)
    first.send(1, "a", deltas(1.0), 1)
    first.send(1, "b", deltas(2.0), 1)
    r1 = first.record(1)
    first.send(2, "a", deltas(3.0), 1)
    wait_for(lambda: first.store.exists(layout.manifest_key(2, "a")), "a's update")
    first.stop()  # mid-round 2, after a's update arrived
    assert isinstance(first.outcome.get("error"), AggregatorStopped)
    # A crashed attempt may leave a global model behind without its record.
    first.store.put_bytes(layout.global_key(2), b"left over by a crashed attempt")

    second = Harness(job, first.store, first.keys, first.workdir.with_name("second"))
    second.workdir.mkdir()
    second.start()
    second.send(2, "b", deltas(4.0), 1)
    second.finish()

    assert second.record(1) == r1  # not recommitted
    w1 = fedavg(w0, [(deltas(1.0), 1), (deltas(2.0), 1)])
    w2 = fedavg(w1, [(deltas(3.0), 1), (deltas(4.0), 1)])
    got = second.global_model(2)
    assert all(torch.equal(got[n], w2[n]) for n in w2)
    assert sha256_file(_fetch(second, layout.global_key(2))) == second.record(2).model_sha256


def test_restart_under_a_spec_that_trains_differently_is_refused(
    harness_factory: Callable[..., Harness],
) -> None:
    first = harness_factory(make_job(rounds=2))
    first.start()
    first.record(0)
    first.stop()

    changed = make_job(rounds=3, seed=7)
    second = Harness(changed, first.store, first.keys, first.workdir)
    second.start()
    error = second.failure()

    assert isinstance(error, RoundProtocolError)
    assert "spec.rounds" in str(error)
    assert "spec.seed" in str(error)


def test_round_committed_by_another_aggregator_is_adopted_not_rewritten(
    harness_factory: Callable[..., Harness], caplog: pytest.LogCaptureFixture
) -> None:
    h = harness_factory(make_job(rounds=1))
    agg = Aggregator(h.job, h.store, h.keys, h.workdir, commit_key=COMMIT_KEY, task=task)
    ours = agg.commit_initial()
    stamp = h.store.get_bytes(layout.round_record_key(0))

    with caplog.at_level(logging.WARNING, logger="fedcore.aggregator"):
        again = Aggregator(
            h.job, h.store, h.keys, h.workdir, commit_key=COMMIT_KEY, task=task
        ).commit_initial()

    assert again == ours
    assert h.store.get_bytes(layout.round_record_key(0)) == stamp
    assert "already committed" in caplog.text


def test_finished_job_is_not_run_again(harness_factory: Callable[..., Harness]) -> None:
    h = harness_factory(make_job(("a",)))
    h.start()
    h.send(1, "a", deltas(1.0), 1)
    final = h.finish()
    records = h.store.list(layout.ROUNDS_PREFIX)

    again = Aggregator(h.job, h.store, h.keys, h.workdir, commit_key=COMMIT_KEY, task=task).run()

    assert again == final
    assert h.store.list(layout.ROUNDS_PREFIX) == records


# ---- the real process: SIGKILL mid-round ---------------------------------------------------------


def test_sigkilled_aggregator_process_resumes_and_commits_each_round_once(
    tmp_path: Path,
) -> None:
    job = make_job(rounds=2)
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(job.to_object()))
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    keys = {}
    for name in ("a", "b"):
        secret = generate_key()
        (keys_dir / name).write_text(secret)
        keys[name] = SigningKey(secret.encode())
    private, _ = generate_key_pair()
    (tmp_path / "commit-key.pem").write_bytes(private)
    store = LocalStore(tmp_path / "store", job_prefix(job))
    h = Harness(job, store, keys, tmp_path / "work", load_signer(tmp_path / "commit-key.pem"))
    h.workdir.mkdir()
    env = {
        **os.environ,
        "FEDKUBE_STORE_DIR": str(tmp_path / "store"),
        "FEDKUBE_SIGNING_KEYS_DIR": str(keys_dir),
        "FEDKUBE_COMMIT_KEY_FILE": str(tmp_path / "commit-key.pem"),
        "OMP_NUM_THREADS": "1",
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
        h.send(1, "a", deltas(1.0), 1)
        h.send(1, "b", deltas(1.0), 1)
        h.record(1)
        h.send(2, "a", deltas(2.0), 1)
        wait_for(lambda: "fold round 2 a" in log_path.read_text(), "the fold of a's update")
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(WAIT_SECONDS) == -signal.SIGKILL
        assert not store.exists(layout.round_record_key(2))

        proc = start()
        h.send(2, "b", deltas(2.0), 1)
        assert proc.wait(WAIT_SECONDS) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    text = log_path.read_text()
    for r in (0, 1, 2):
        assert text.count(f"commit round {r}:") == 1, text
    assert "already committed" not in text
    assert "resuming after committed round 1" in text
    read_final_record(store.get_bytes(layout.FINAL_RECORD_KEY), h.commit_key.public)


# ---- signed commits ------------------------------------------------------------------------------


def forged_record(r: int, selected: list[str]) -> bytes:
    """A round record an insider writes: well-formed, pointing at their model, but signed
    with their own key."""
    now = layout.utcnow()
    record = layout.RoundRecord(
        round=r,
        participants=selected,
        model_key=layout.global_key(r),
        model_sha256="e" * 64,
        started_at=now,
        next=layout.NextRound(round=r + 1, selected=selected, deadline=now),
    )
    return FORGER.sign("round", record).to_json()


def test_every_record_and_the_final_one_are_signed_with_the_jobs_key(
    harness_factory: Callable[..., Harness],
) -> None:
    h = harness_factory(make_job(("a",), rounds=2))
    h.start()
    h.send(1, "a", deltas(1.0), 1)
    h.send(2, "a", deltas(1.0), 1)
    final = h.finish()

    records = [h.record(r) for r in (0, 1, 2)]  # verified, or UnverifiedRecord

    assert all(len(bytes.fromhex(r.signature)) == 64 for r in records)
    stored = read_final_record(h.store.get_bytes(layout.FINAL_RECORD_KEY), COMMIT_KEY.public)
    assert stored == final
    assert stored.model_sha256 == records[-1].model_sha256


def test_a_forged_record_in_the_next_rounds_slot_stops_the_aggregator_naming_round_and_key(
    harness_factory: Callable[..., Harness], caplog: pytest.LogCaptureFixture
) -> None:
    h = harness_factory(make_job(("a",), rounds=2))
    h.start()
    h.record(0)
    forged = forged_record(1, ["a"])
    h.store.put_bytes(layout.global_key(1), b"the attacker's model")
    h.store.put_bytes(layout.round_record_key(1), forged)

    with caplog.at_level(logging.ERROR, logger="fedcore.aggregator"):
        h.send(1, "a", deltas(1.0), 1, base_sha256=h.record(0).model_sha256)
        error = h.failure()

    assert isinstance(error, UnverifiedRecord)
    assert error.key == "rounds/000001/round.json"
    assert error.fingerprint == COMMIT_KEY.fingerprint
    assert "cannot commit round 1" in caplog.text
    assert COMMIT_KEY.fingerprint in caplog.text
    # Nothing was overwritten or added past the forgery.
    assert h.store.get_bytes(layout.round_record_key(1)) == forged
    assert h.store.get_bytes(layout.global_key(1)) == b"the attacker's model"
    assert not h.store.exists(layout.round_record_key(2))
    assert not h.store.exists(layout.FINAL_RECORD_KEY)


def test_resume_refuses_an_earlier_record_the_aggregator_did_not_sign(
    harness_factory: Callable[..., Harness],
) -> None:
    first = harness_factory(make_job(("a",), rounds=2))
    first.start()
    first.record(0)
    first.stop()
    first.store.put_bytes(layout.round_record_key(0), forged_record(0, ["a"]))

    second = Harness(first.job, first.store, first.keys, first.workdir)
    second.start()
    error = second.failure()

    assert isinstance(error, UnverifiedRecord)
    assert error.key == "rounds/000000/round.json"
    assert error.reason == "bad-signature"


def test_a_forged_final_record_is_refused_not_taken_as_done(
    harness_factory: Callable[..., Harness],
) -> None:
    h = harness_factory(make_job(("a",)))
    fake = FORGER.sign("final", layout.FinalRecord(rounds=1, model_sha256="e" * 64))
    h.store.put_bytes(layout.FINAL_RECORD_KEY, fake.to_json())

    h.start()
    error = h.failure()

    assert isinstance(error, UnverifiedRecord)
    assert error.key == layout.FINAL_RECORD_KEY
