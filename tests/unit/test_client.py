"""The client's round loop in one process (a DDP group of one) against a LocalStore.

The test plays the aggregator: it commits (signed) rounds and the final record by hand, and
checks what the client reads and uploads. The store raises if the client lists it: a client's
credential has no ListBucket. Multi-rank groups are in tests/integration/test_client_ddp.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcore import client as client_module
from fedcore import distributed, layout
from fedcore.client import (
    POLL_MAX_SECONDS,
    Backoff,
    ClientOptions,
    PodEnv,
    RoundWatcher,
    Work,
    _mean_metrics,
    group_exit_code,
    run_client,
)
from fedcore.commit_signing import CommitSigner
from fedcore.distributed import LaunchError, shutdown_distributed
from fedcore.errors import TaskError
from fedcore.signing import SigningKey, generate_key, verify
from fedcore.spec import FederatedJob, parse_job
from fedcore.store import LocalStore
from fedcore.tasks import TaskContext, load_task
from fedcore.weights import apply, load_weights, save_weights, sha256_file

WAIT_SECONDS = 60.0
CONFIG = {"params": 2000, "samples": 64, "batchSize": 16}
COMMIT_KEY = CommitSigner(Ed25519PrivateKey.generate())
"""The job's aggregator key: records this test commits are signed with it."""
VERIFIER = COMMIT_KEY.public
FORGER = CommitSigner(Ed25519PrivateKey.generate())
"""Someone else's key: an insider holding a credential that may write records."""


class UnlistableStore(LocalStore):
    """A client's view of the store: probes and reads, but no listing (no ListBucket)."""

    def list(self, prefix: str = "") -> list[str]:
        raise AssertionError(f"a client listed the store (prefix {prefix!r})")


def make_job(clients: tuple[str, ...] = ("a", "b"), rounds: int = 2, **config: Any) -> FederatedJob:
    return parse_job(
        {
            "metadata": {"name": "client-test"},
            "spec": {
                "rounds": rounds,
                "seed": 4,
                "task": {
                    "entrypoint": "fedcore.tasks.synthetic:task",
                    "config": {**CONFIG, **config},
                },
                "clients": [{"name": c} for c in clients],
            },
        }
    )


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return UnlistableStore(tmp_path / "store", "jobs/client-test/")


def commit(
    store: LocalStore,
    job: FederatedJob,
    r: int,
    tensors: dict[str, torch.Tensor],
    selected: list[str] | None,
    folder: Path,
    *,
    signer: CommitSigner = COMMIT_KEY,
) -> layout.RoundRecord:
    """Write round r's global model and signed record the way the aggregator does
    (``signer``: another key, to play a forger)."""
    path = folder / f"global-{r}.safetensors"
    save_weights(path, tensors, {"kind": "global", "round": r})
    store.put_file(layout.global_key(r), path)
    now = layout.utcnow()
    record = layout.RoundRecord(
        round=r,
        model_key=layout.global_key(r),
        model_sha256=sha256_file(path),
        started_at=now,
        next=None
        if selected is None
        else layout.NextRound(round=r + 1, selected=selected, deadline=now + timedelta(hours=1)),
        closed_by="initial" if r == 0 else "all-reported",
    )
    record = signer.sign("round", record)
    store.put_bytes(layout.round_record_key(r), record.to_json())
    return record


def initial_weights(job: FederatedJob) -> dict[str, torch.Tensor]:
    task = load_task(job.spec.task.entrypoint)
    ctx = TaskContext.for_aggregator(job.spec, 0)
    return dict(task.build_model(ctx).state_dict())


def finish(store: LocalStore, signer: CommitSigner = COMMIT_KEY) -> None:
    record = signer.sign("final", layout.FinalRecord(rounds=1, model_sha256="0" * 64))
    store.put_bytes(layout.FINAL_RECORD_KEY, record.to_json())


def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.05)


# ---- what rank 0 decides -----------------------------------------------------------------------


def test_watcher_waits_until_round_zero_is_committed(store: LocalStore, tmp_path: Path) -> None:
    watcher = RoundWatcher(store, "a", VERIFIER)

    assert watcher.poll().kind == "wait"


def test_watcher_trains_from_the_newest_round_that_selects_the_client(
    store: LocalStore, tmp_path: Path
) -> None:
    job = make_job()
    weights = initial_weights(job)
    commit(store, job, 0, weights, ["a", "b"], tmp_path)
    watcher = RoundWatcher(store, "a", VERIFIER)
    assert watcher.poll() == Work("train", 0, sha256_file(tmp_path / "global-0.safetensors"))

    # The client uploads; then the aggregator commits round 1 and selects it again.
    store.put_bytes(layout.manifest_key(1, "a"), b"{}")
    assert watcher.poll().kind == "wait"
    record = commit(store, job, 1, weights, ["a"], tmp_path)

    assert watcher.poll() == Work("train", 1, record.model_sha256)


def test_watcher_waits_when_not_selected(store: LocalStore, tmp_path: Path) -> None:
    job = make_job()
    commit(store, job, 0, initial_weights(job), ["b"], tmp_path)

    assert RoundWatcher(store, "a", VERIFIER).poll().kind == "wait"


def test_watcher_skips_an_update_already_in_the_store(store: LocalStore, tmp_path: Path) -> None:
    job = make_job()
    commit(store, job, 0, initial_weights(job), ["a"], tmp_path)
    store.put_bytes(layout.manifest_key(1, "a"), b"{}")

    assert RoundWatcher(store, "a", VERIFIER).poll().kind == "wait"


def test_watcher_finishes_when_the_final_record_exists(store: LocalStore, tmp_path: Path) -> None:
    job = make_job()
    commit(store, job, 0, initial_weights(job), ["a"], tmp_path)
    finish(store)

    assert RoundWatcher(store, "a", VERIFIER).poll().kind == "finish"


def test_watcher_waits_after_the_last_round_until_the_final_record(
    store: LocalStore, tmp_path: Path
) -> None:
    job = make_job()
    commit(store, job, 0, initial_weights(job), None, tmp_path)

    assert RoundWatcher(store, "a", VERIFIER).poll().kind == "wait"


class CountingStore(UnlistableStore):
    exists_calls = 0

    def exists(self, key: str) -> bool:
        self.exists_calls += 1
        return super().exists(key)


def commit_record_only(
    store: LocalStore, r: int, selected: list[str], signer: CommitSigner = COMMIT_KEY
) -> layout.RoundRecord:
    """A signed record without its model (the watcher reads records only)."""
    now = layout.utcnow()
    record = signer.sign(
        "round",
        layout.RoundRecord(
            round=r,
            model_key=layout.global_key(r),
            model_sha256=f"{r:064x}",
            started_at=now,
            next=layout.NextRound(round=r + 1, selected=selected, deadline=now),
        ),
    )
    store.put_bytes(layout.round_record_key(r), record.to_json())
    return record


def test_watcher_finds_the_newest_of_many_rounds_in_few_probes(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "store", "jobs/client-test/")
    for r in range(38):
        commit_record_only(store, r, ["a"])
    watcher = RoundWatcher(store, "a", VERIFIER)

    work = watcher.poll()
    first_probes = store.exists_calls
    commit_record_only(store, 38, ["a"])
    store.exists_calls = 0
    later = watcher.poll()

    assert work == Work("train", 37, f"{37:064x}")
    assert first_probes <= 2 * 6 + 2  # exponential then binary search over 38 rounds
    assert later == Work("train", 38, f"{38:064x}")
    assert store.exists_calls <= 4  # from the known round: r+1, r+2, then the manifest


def test_watcher_never_lists_the_store(store: LocalStore, tmp_path: Path) -> None:
    for r in range(5):
        commit_record_only(store, r, ["a"])

    assert RoundWatcher(store, "a", VERIFIER).poll() == Work("train", 4, f"{4:064x}")


def forge_with_another_key(store: LocalStore) -> None:
    commit_record_only(store, 1, ["a"], signer=FORGER)


def forge_unsigned(store: LocalStore) -> None:
    record = layout.RoundRecord(
        round=1, model_key=layout.global_key(1), model_sha256="e" * 64, started_at=layout.utcnow()
    )
    store.put_bytes(layout.round_record_key(1), record.to_json())


def replay_round_zero(store: LocalStore) -> None:
    store.put_bytes(layout.round_record_key(1), store.get_bytes(layout.round_record_key(0)))


def tamper_with_a_signed_record(store: LocalStore) -> None:
    signed = commit_record_only(store, 1, ["a"])
    tampered = signed.model_copy(update={"model_sha256": "e" * 64})
    store.put_bytes(layout.round_record_key(1), tampered.to_json())


def write_garbage(store: LocalStore) -> None:
    store.put_bytes(layout.round_record_key(1), b"\x00not json")


@pytest.mark.parametrize(
    ("forge", "reason"),
    [
        pytest.param(forge_with_another_key, "bad-signature", id="signed by another key"),
        pytest.param(forge_unsigned, "unsigned", id="not signed at all"),
        pytest.param(replay_round_zero, "wrong-round", id="a genuine record replayed"),
        pytest.param(tamper_with_a_signed_record, "bad-signature", id="a signed record edited"),
        pytest.param(write_garbage, "malformed", id="not even JSON"),
    ],
)
def test_watcher_refuses_a_record_the_aggregator_did_not_sign_and_waits_for_a_valid_one(
    store: LocalStore,
    caplog: pytest.LogCaptureFixture,
    forge: Callable[[LocalStore], None],
    reason: str,
) -> None:
    commit_record_only(store, 0, ["a"])
    store.put_bytes(layout.manifest_key(1, "a"), b"{}")  # trained round 1 already
    watcher = RoundWatcher(store, "a", VERIFIER)
    forge(store)

    with caplog.at_level("ERROR", logger="fedcore.client"):
        first, second = watcher.poll(), watcher.poll()
    trusted = watcher.newest
    store.delete(layout.round_record_key(1))
    commit_record_only(store, 1, ["a"])
    after = watcher.poll()

    assert first == second == Work("wait")
    assert trusted is not None
    assert trusted.round == 0
    refusals = [r.getMessage() for r in caplog.records]
    assert len(refusals) == 1  # once, not on every poll
    assert f"refused commit record rounds/000001/round.json ({reason})" in refusals[0]
    assert VERIFIER.fingerprint in refusals[0]
    assert after == Work("train", 1, f"{1:064x}")


def test_watcher_starts_from_the_newest_valid_round_below_forged_ones(store: LocalStore) -> None:
    for r in range(3):
        commit_record_only(store, r, ["a"])
    for r in range(3, 9):
        commit_record_only(store, r, ["a"], signer=FORGER)

    work = RoundWatcher(store, "a", VERIFIER).poll()

    assert work == Work("train", 2, f"{2:064x}")


def test_watcher_does_not_finish_on_a_forged_final_record(store: LocalStore) -> None:
    commit_record_only(store, 0, ["a"])
    finish(store, signer=FORGER)

    assert RoundWatcher(store, "a", VERIFIER).poll() == Work("train", 0, f"{0:064x}")


def test_backoff_grows_to_its_cap_and_resets() -> None:
    backoff = Backoff()

    waits = [backoff.next() for _ in range(12)]
    backoff.reset()

    assert waits[0] == pytest.approx(0.2)
    assert waits == sorted(waits)
    assert waits[-1] == POLL_MAX_SECONDS
    assert backoff.next() == pytest.approx(0.2)


# ---- options and environment -------------------------------------------------------------------


def test_client_options_read_threads_and_the_jobs_wire_dtype() -> None:
    options = ClientOptions.from_config({"numThreads": 3}, "bfloat16")

    assert options.num_threads == 3
    assert options.wire_dtype == torch.bfloat16
    assert ClientOptions.from_config({}).wire_dtype is None
    assert ClientOptions.from_config({}, "float32").wire_dtype is None
    assert ClientOptions.from_config({}, "int8").wire_dtype == torch.int8


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"numThreads": 0}, "task.config.numThreads: must be a positive integer"),
        ({"deterministic": "yes"}, "task.config.deterministic: must be true or false"),
        (
            {"updateDtype": "int8"},
            "task.config.updateDtype moved to spec.strategy.updateDtype",
        ),
    ],
)
def test_bad_client_options_are_named(config: dict[str, Any], message: str) -> None:
    with pytest.raises(TaskError, match=message):
        ClientOptions.from_config(config)


@pytest.mark.parametrize("wire", ["int4", "uint8", "float64"])
def test_an_update_dtype_outside_the_wire_formats_is_named(wire: str) -> None:
    with pytest.raises(TaskError, match=r"strategy\.updateDtype: must be one of"):
        ClientOptions.from_config({}, wire)


def pod_spec(replicas: int = 2, procs: int = 4) -> Any:
    job = parse_job(
        {
            "spec": {
                "rounds": 1,
                "task": {"entrypoint": "fedcore.tasks.digits:task"},
                "clients": [{"name": "a", "replicas": replicas, "procsPerReplica": procs}],
            }
        }
    )
    return job.spec.clients[0]


def test_pod_env_reads_the_operators_variables() -> None:
    env = {
        "PET_NNODES": "2",
        "PET_NPROC_PER_NODE": "4",
        "PET_NODE_RANK": "1",
        "PET_MASTER_ADDR": "job-a-0.job-a",
        "PET_MASTER_PORT": "29500",
    }

    assert PodEnv.from_environ(env, pod_spec()) == PodEnv(2, 4, 1, "job-a-0.job-a", 29500)


def test_a_single_pod_needs_no_variables() -> None:
    pod = PodEnv.from_environ({}, pod_spec(replicas=1, procs=2))

    assert (pod.nnodes, pod.nproc_per_node, pod.node_rank, pod.master_addr) == (
        1,
        2,
        0,
        "127.0.0.1",
    )
    assert 0 < pod.master_port < 65536


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PET_NODE_RANK": "0", "PET_MASTER_PORT": "29500"}, "PET_MASTER_ADDR is not set"),
        ({"PET_NODE_RANK": "0", "PET_MASTER_ADDR": "h"}, "PET_MASTER_PORT is not set"),
        ({"PET_MASTER_ADDR": "h", "PET_MASTER_PORT": "1"}, "PET_NODE_RANK is not set"),
        ({"PET_NNODES": "3"}, "PET_NNODES=3 x PET_NPROC_PER_NODE=4 disagrees with client 'a'"),
        ({"PET_NODE_RANK": "2"}, "PET_NODE_RANK=2 is not below PET_NNODES=2"),
        ({"PET_NNODES": "two"}, "PET_NNODES='two' is not an integer"),
    ],
)
def test_pod_env_problems_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(LaunchError, match=message):
        PodEnv.from_environ(env, pod_spec())


def test_rendezvous_host_must_resolve() -> None:
    client_module._wait_for_host("localhost", timeout=0)

    with pytest.raises(
        LaunchError, match=r"PET_MASTER_ADDR='no-such-pod\.invalid' did not resolve"
    ):
        client_module._wait_for_host("no-such-pod.invalid", timeout=0)


def test_group_metrics_are_means_over_ranks_without_non_finite_values() -> None:
    per_rank = [
        {"train_loss": 1.0, "train_accuracy": 0.5, "only_here": 1.0},
        {"train_loss": 3.0, "train_accuracy": float("nan")},
    ]

    assert _mean_metrics(per_rank) == {"train_loss": 2.0}


# ---- the loop, in this process -----------------------------------------------------------------


@pytest.fixture
def one_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No launcher variables; torch's process-wide settings restored afterwards."""
    for name in (*distributed.REQUIRED_VARS, "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(client_module, "POLL_MAX_SECONDS", 0.2)
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    yield
    shutdown_distributed()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


def play_aggregator(store: LocalStore, job: FederatedJob, folder: Path, rounds: int) -> None:
    """Commit each round from the client's update (FedAvg of one), then the final record."""
    weights = initial_weights(job)
    for r in range(1, rounds + 1):
        wait_for(lambda r=r: store.exists(layout.manifest_key(r, "a")))  # type: ignore[misc]
        store.get_file(layout.update_key(r, "a"), folder / "update.safetensors")
        weights = apply(weights, load_weights(folder / "update.safetensors"))
        commit(store, job, r, weights, ["a"] if r < rounds else None, folder)
    finish(store)


@pytest.mark.usefixtures("one_process")
def test_client_trains_every_round_it_is_selected_for_and_exits_when_final(
    store: LocalStore, tmp_path: Path
) -> None:
    job = make_job(clients=("a", "b"), rounds=2)
    commit(store, job, 0, initial_weights(job), ["a"], tmp_path)
    key = SigningKey(generate_key().encode())
    aggregator = threading.Thread(target=play_aggregator, args=(store, job, tmp_path, 2))
    aggregator.start()

    trained = run_client(job, "a", store, key, VERIFIER)
    aggregator.join(timeout=WAIT_SECONDS)

    assert trained == 2
    for r in (1, 2):
        manifest = layout.UpdateManifest.model_validate_json(
            store.get_bytes(layout.manifest_key(r, "a"))
        )
        assert (manifest.round, manifest.base_round, manifest.num_samples) == (r, r - 1, 64)
        assert verify(manifest, key)
        assert (
            manifest.base_sha256
            == layout.RoundRecord.model_validate_json(
                store.get_bytes(layout.round_record_key(r - 1))
            ).model_sha256
        )


@pytest.mark.usefixtures("one_process")
def test_rerunning_a_round_uploads_the_same_values(store: LocalStore, tmp_path: Path) -> None:
    job = make_job(clients=("a",), rounds=1)
    commit(store, job, 0, initial_weights(job), ["a"], tmp_path)
    updates = []

    def finish_after_upload() -> None:
        wait_for(lambda: store.exists(layout.manifest_key(1, "a")))
        finish(store)

    for attempt in range(2):
        finisher = threading.Thread(target=finish_after_upload)
        finisher.start()
        run_client(job, "a", store, None, VERIFIER)
        finisher.join(timeout=WAIT_SECONDS)
        store.get_file(layout.update_key(1, "a"), tmp_path / f"update-{attempt}.safetensors")
        updates.append(load_weights(tmp_path / f"update-{attempt}.safetensors"))
        # Forget the round as if the group crashed before the aggregator saw it.
        for key in (
            layout.manifest_key(1, "a"),
            layout.update_key(1, "a"),
            layout.FINAL_RECORD_KEY,
        ):
            store.delete(key)

    assert updates[0].keys() == updates[1].keys()
    assert all(torch.equal(updates[0][k], updates[1][k]) for k in updates[0])


@pytest.mark.usefixtures("one_process")
def test_a_global_model_that_does_not_fit_the_task_is_a_task_error(
    store: LocalStore, tmp_path: Path
) -> None:
    job = make_job(clients=("a",), rounds=1)
    commit(store, job, 0, {"unexpected.weight": torch.zeros(2, 2)}, ["a"], tmp_path)

    with pytest.raises(TaskError, match="does not fit the model"):
        run_client(job, "a", store, None, VERIFIER)


@pytest.mark.parametrize(
    ("failures", "code"),
    [
        pytest.param([2], 2, id="a configuration error is the pod's exit code"),
        pytest.param([2, -15], 2, id="a rank stopped by the launcher does not hide it"),
        pytest.param([1], 1, id="a failure at run time may be retried"),
        pytest.param([-9, 1], 1, id="a killed rank may be retried"),
        pytest.param([], 1, id="no codes at all is a failure"),
    ],
)
def test_the_group_exits_with_a_configuration_error_when_a_rank_did(
    failures: list[int], code: int
) -> None:
    assert group_exit_code(failures) == code
