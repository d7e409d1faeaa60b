"""``fedkube run`` end to end: real processes, real DDP groups (gloo, CPU), a local store.

The jobs are tiny (two single-process clients, a 16-unit MLP on digits, four rounds) so a
run takes seconds. A test that must hold a client at a known point uses ``GatedDigits``: the
digits task, except that a client may wait for a "gate" file before training a round (or
fail every time). Waiting changes no arithmetic, so a gated run's model must equal an
ungated one's bit for bit.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from torch import nn
from torch.utils.data import DataLoader

from fedcore import layout
from fedcore.commit_signing import CommitSigner, load_verifier
from fedcore.quantization import scales_name
from fedcore.spec import FederatedJob, job_prefix, load_job
from fedcore.store import LocalStore, ObjectStore
from fedcore.tasks.base import TaskContext
from fedcore.tasks.digits import DigitsTask
from fedcore.weights import load_weights, open_weights, save_weights, sha256_file
from tests.fixtures.minio import MinioServer

REPO = Path(__file__).resolve().parents[2]
RUN_SECONDS = 120.0
"""Upper bound for one tiny run (normally ~15 s on two cores): a hang fails, not blocks."""

pytestmark = pytest.mark.timeout(300)


class GatedDigits(DigitsTask):
    """Digits with two test hooks read from the client's task config.

    ``gateFile`` + ``gateRound``: before training any round >= gateRound, wait until the
    file exists. ``failAlways``: raise in every training pass.
    """

    def train(
        self, model: nn.Module, loader: DataLoader[Any], ctx: TaskContext
    ) -> dict[str, float]:
        if ctx.config.get("failAlways"):
            raise RuntimeError(f"client {ctx.client} is configured to fail (failAlways)")
        gate = ctx.config.get("gateFile")
        if gate and ctx.round >= int(ctx.config.get("gateRound", 1)):
            while not Path(gate).exists():
                time.sleep(0.05)
        return super().train(model, loader, ctx)


gated_task = GatedDigits()


def write_job(
    path: Path,
    *,
    clients: list[dict[str, Any]] | None = None,
    rounds: int = 4,
    **spec: Any,
) -> Path:
    obj = {
        "apiVersion": "fedkube.io/v1alpha1",
        "kind": "FederatedJob",
        "metadata": {"name": "tiny"},
        "spec": {
            "rounds": rounds,
            "seed": 3,
            "task": {
                "entrypoint": "tests.integration.test_run_local:gated_task",
                "config": {"hidden": 16, "localEpochs": 1, "batchSize": 32},
            },
            "clients": clients or [{"name": "a"}, {"name": "b"}],
            **spec,
        },
    }
    path.write_text(yaml.safe_dump(obj))
    return path


def gated_clients(gate: Path, round_: int = 2) -> list[dict[str, Any]]:
    return [
        {"name": "a"},
        {"name": "b", "taskConfig": {"gateFile": str(gate), "gateRound": round_}},
    ]


@dataclass
class Run:
    """One ``fedkube run`` process and the files it makes."""

    job_file: Path
    run_dir: Path
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path

    @property
    def job(self) -> FederatedJob:
        return load_job(self.job_file)

    @property
    def store(self) -> LocalStore:
        return LocalStore(self.run_dir / "store", job_prefix(self.job))

    def wait(self, timeout: float = RUN_SECONDS) -> int:
        return self.proc.wait(timeout)

    def wait_or_dump(self, timeout: float) -> int:
        """wait(); past ``timeout``, fail with every process's stacks (SIGUSR1, which
        fedkube's processes answer with faulthandler) and the run's output and logs."""
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            for proc in [psutil.Process(self.proc.pid), *self.descendants()]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.send_signal(signal.SIGUSR1)
            time.sleep(2)
            logs = "\n".join(
                f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
                for p in sorted((self.run_dir / "logs").glob("*.log"))
            )
            raise AssertionError(
                f"the run did not exit in {timeout} s\n--- stdout\n{self.stdout()}"
                f"\n--- stderr\n{self.stderr()}\n{logs}"
            ) from None

    def stdout(self) -> str:
        return self.out.read_text()

    def stderr(self) -> str:
        return self.err.read_text()

    def log(self, name: str) -> str:
        path = self.run_dir / "logs" / f"{name}.log"
        return path.read_text() if path.exists() else ""

    def descendants(self) -> list[psutil.Process]:
        try:
            found: list[psutil.Process] = psutil.Process(self.proc.pid).children(recursive=True)
            return found
        except psutil.NoSuchProcess:
            return []

    def final_model(self) -> Path:
        return self.run_dir / "store" / job_prefix(self.job) / layout.FINAL_MODEL_KEY


def is_aggregator(process: psutil.Process) -> bool:
    """The aggregator, started from scratch (its command line) or forked by the fork server
    (which names the process after its log, ``fedcore.zygote``)."""
    return process.name() == "aggregator" or "aggregator" in process.cmdline()


def start_run(job_file: Path, run_dir: Path, *extra: str, env: dict[str, str] | None = None) -> Run:
    out, err = run_dir.with_suffix(".out"), run_dir.with_suffix(".err")
    with open(out, "ab") as o, open(err, "ab") as e:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fedcore.cli",
                "run",
                str(job_file),
                "--store",
                str(run_dir),
                *extra,
            ],
            cwd=REPO,
            stdout=o,
            stderr=e,
            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        )
    return Run(job_file, run_dir, proc, out, err)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = RUN_SECONDS) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def leftovers(marker: str) -> list[psutil.Process]:
    """Live processes whose command line mentions ``marker`` (a test's tmp folder)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if marker in cmdline and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


@pytest.fixture
def tmp(tmp_path: Path) -> Iterator[Path]:
    """tmp_path, and afterwards: no process of the test may be left; kill any and fail."""
    yield tmp_path
    left = leftovers(str(tmp_path))
    for proc in left:
        proc.kill()
    assert not left, f"processes left behind: {[p.info['cmdline'] for p in left]}"


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One clean run of the gated job with its gate open: the reference result."""
    root = tmp_path_factory.mktemp("undisturbed")
    gate = root / "gate"
    gate.touch()
    run = start_run(write_job(root / "job.yaml", clients=gated_clients(gate)), root / "run")
    code = run.wait()
    assert code == 0, run.stderr()
    return run


# ---- a clean run ---------------------------------------------------------------------------------


def test_run_shows_every_round_and_ends_with_a_model_that_loads(undisturbed: Run) -> None:
    out = undisturbed.stdout()
    model = undisturbed.final_model()

    for r in range(1, 5):
        assert f"round {r}/4  clients 2/2  loss " in out
    assert f"model: file://{model}" in out
    assert "final metrics: accuracy" in out
    net = gated_task.build_model(_ctx(undisturbed.job))
    net.load_state_dict(load_weights(model))  # strict: every tensor present and shaped
    assert (undisturbed.run_dir / "metrics.png").stat().st_size > 0
    assert "plot:" in out


def _ctx(job: FederatedJob) -> TaskContext:
    return TaskContext.for_aggregator(job.spec, 0)


def test_run_dir_holds_job_logs_and_private_keys(undisturbed: Run) -> None:
    run_dir = undisturbed.run_dir

    assert json.loads((run_dir / "job.json").read_text())["metadata"]["name"] == "tiny"
    for name in ("aggregator", "a-0", "b-0"):
        assert (run_dir / "logs" / f"{name}.log").exists()
    for client in ("a", "b"):
        assert (run_dir / "keys" / client).stat().st_mode & 0o777 == 0o600
    assert "commit round 4:" in undisturbed.log("aggregator")


def test_rerun_of_a_finished_run_reports_it_and_changes_nothing(undisturbed: Run) -> None:
    before = undisturbed.store.list()

    again = start_run(undisturbed.job_file, undisturbed.run_dir)
    code = again.wait()

    assert code == 0
    assert "already finished" in again.stdout()
    assert undisturbed.store.list() == before


def test_status_shows_the_rounds_of_a_run(undisturbed: Run) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fedcore.cli", "status", "--store", str(undisturbed.run_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert "round 4/4  clients 2/2" in result.stdout
    assert "finished 4 rounds" in result.stdout


# ---- crashes and interruptions -------------------------------------------------------------------


def test_sigkilled_aggregator_resumes_and_the_final_model_is_bit_identical(
    undisturbed: Run, tmp: Path
) -> None:
    gate = tmp / "gate"  # closed: client b cannot send its round-2 update
    run = start_run(write_job(tmp / "job.yaml", clients=gated_clients(gate)), tmp / "run")
    try:
        wait_for(lambda: "fold round 2 a" in run.log("aggregator"), "a's round-2 update folded")
        aggregator = next(p for p in run.descendants() if is_aggregator(p))
        aggregator.send_signal(signal.SIGKILL)
        wait_for(
            lambda: run.log("aggregator").count("starting aggregator") == 2,
            "the runner restarting the aggregator",
        )
        assert not run.store.exists(layout.round_record_key(2))
        gate.touch()
        code = run.wait()
    finally:
        gate.touch()
        if run.proc.poll() is None:
            run.proc.send_signal(signal.SIGINT)  # the runner stops its children
            run.proc.wait(60)

    assert code == 0, run.stderr()
    log = run.log("aggregator")
    assert "resuming after committed round 1" in log
    for r in range(5):
        assert log.count(f"commit round {r}:") == 1, log
    assert "already committed" not in log
    assert "aggregator killed by SIGKILL; restarting it (1/3)" in run.stdout()
    assert sha256_file(run.final_model()) == sha256_file(undisturbed.final_model())
    ours, theirs = load_weights(run.final_model()), load_weights(undisturbed.final_model())
    assert all(torch.equal(ours[name], theirs[name]) for name in theirs)


def test_ctrl_c_stops_every_process_and_a_rerun_resumes_to_the_same_model(
    undisturbed: Run, tmp: Path
) -> None:
    gate = tmp / "gate"
    job_file = write_job(tmp / "job.yaml", clients=gated_clients(gate))
    run = start_run(job_file, tmp / "run")
    wait_for(lambda: run.store.exists(layout.manifest_key(2, "a")), "a's round-2 update")
    children = run.descendants()
    assert len(children) >= 3  # the aggregator and two one-process pods (each runs its rank)

    run.proc.send_signal(signal.SIGINT)
    code = run.wait(60)

    assert code == 130
    assert "interrupted; rerun the same command to resume" in run.stderr()
    assert not [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    gate.touch()
    rerun = start_run(job_file, tmp / "run")
    assert rerun.wait() == 0, rerun.stderr()
    assert "resuming after committed round 1" in rerun.log("aggregator")
    assert sha256_file(rerun.final_model()) == sha256_file(undisturbed.final_model())


# ---- failures ------------------------------------------------------------------------------------


def test_client_failing_past_its_retries_stops_the_run_naming_it_and_its_log(tmp: Path) -> None:
    clients: list[dict[str, Any]] = [
        {"name": "a"},
        {"name": "b", "taskConfig": {"failAlways": True}},
    ]
    job_file = write_job(tmp / "job.yaml", clients=clients, runPolicy={"backoffLimit": 0})

    run = start_run(job_file, tmp / "run")
    code = run.wait()

    err = run.stderr()
    assert code == 1
    assert "client 'b' failed: exit code 1 after 0 restart(s)" in err
    assert str(tmp / "run" / "logs" / "b-0.log") in err
    assert "RuntimeError: client b is configured to fail (failAlways)" in err  # the log's tail
    assert "fewer than strategy.minClients=2" in err
    assert "Traceback" not in err.split("last lines:")[0]


def test_client_failing_past_its_retries_is_excluded_while_quorum_remains(tmp: Path) -> None:
    clients: list[dict[str, Any]] = [
        {"name": "a"},
        {"name": "b"},
        {"name": "c", "taskConfig": {"failAlways": True}},
    ]
    job_file = write_job(
        tmp / "job.yaml",
        clients=clients,
        rounds=2,
        strategy={"minClients": 2},
        runPolicy={"backoffLimit": 1},
    )

    run = start_run(job_file, tmp / "run")
    code = run.wait()

    assert code == 0, run.stderr()
    assert "client c: c-0 exit code 1; restarting the group (1/1)" in run.stdout()
    assert "excluded; going on with 2 clients" in run.stdout()
    excluded = layout.ExcludedClients.model_validate_json(run.store.get_bytes(layout.EXCLUDED_KEY))
    assert list(excluded.clients) == ["c"]
    last = layout.RoundRecord.model_validate_json(run.store.get_bytes(layout.round_record_key(2)))
    assert last.participants == ["a", "b"]


def test_a_task_that_does_not_load_stops_the_run_at_once_without_restarts(tmp: Path) -> None:
    job_file = write_job(tmp / "job.yaml", runPolicy={"backoffLimit": 3})
    obj = yaml.safe_load(job_file.read_text())
    obj["spec"]["task"]["entrypoint"] = "tests.integration.test_run_local:no_such_task"
    job_file.write_text(yaml.safe_dump(obj))

    run = start_run(job_file, tmp / "run")
    code = run.wait()

    err = run.stderr()
    assert code == 1
    assert "stopped on a configuration error (exit code 2); it was not restarted" in err
    assert "has no attribute 'no_such_task'" in err  # the log's tail says what is wrong
    assert "restarting" not in run.stdout()


def test_a_client_with_a_wrong_task_config_is_excluded_at_once_and_the_run_goes_on(
    tmp: Path,
) -> None:
    clients: list[dict[str, Any]] = [
        {"name": "a"},
        {"name": "b"},
        {"name": "c", "taskConfig": {"optimizer": "sgdd"}},
    ]
    job_file = write_job(
        tmp / "job.yaml",
        clients=clients,
        rounds=2,
        strategy={"minClients": 2},
        runPolicy={"backoffLimit": 3},
    )

    run = start_run(job_file, tmp / "run")
    code = run.wait()

    out = run.stdout()
    assert code == 0, run.stderr()
    assert "client 'c' stopped on a configuration error (exit code 2)" in out
    assert "task.config.optimizer: must be one of 'sgd', 'adam', 'adamw'" in out
    assert "restarting the group" not in out
    excluded = layout.ExcludedClients.model_validate_json(run.store.get_bytes(layout.EXCLUDED_KEY))
    assert "configuration error" in excluded.clients["c"]
    last = layout.RoundRecord.model_validate_json(run.store.get_bytes(layout.round_record_key(2)))
    assert last.participants == ["a", "b"]


def test_bad_job_file_exits_2_naming_the_field_without_a_traceback(tmp: Path) -> None:
    job_file = write_job(tmp / "job.yaml", clients=[{"name": "a", "replicas": 0}])

    result = subprocess.run(
        [sys.executable, "-m", "fedcore.cli", "run", str(job_file), "--store", str(tmp / "run")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 2
    assert "spec.clients[0].replicas" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp / "run").exists()


# ---- S3 ------------------------------------------------------------------------------------------


def test_job_naming_an_s3_endpoint_runs_on_it_and_fresh_starts_over(
    undisturbed: Run, minio: MinioServer, tmp: Path
) -> None:
    gate = tmp / "gate"
    gate.touch()  # same arithmetic as the undisturbed run, which used a local store
    storage = {"endpoint": minio.endpoint, "bucket": minio.bucket, "prefix": "runs/s3-test/"}
    job_file = write_job(tmp / "job.yaml", clients=gated_clients(gate), storage=storage)

    run = start_run(job_file, tmp / "run", env=minio.env())
    code = run.wait()

    assert code == 0, run.stderr()
    key = f"runs/s3-test/{layout.FINAL_MODEL_KEY}"
    assert f"model: s3://{minio.bucket}/{key}" in run.stdout()
    assert not (tmp / "run" / "store").exists()
    model = tmp / "model.safetensors"
    model.write_bytes(minio.client().get_object(Bucket=minio.bucket, Key=key)["Body"].read())
    assert sha256_file(model) == sha256_file(undisturbed.final_model())

    gate.unlink()  # closed: the fresh run cannot finish before it is interrupted
    again = start_run(job_file, tmp / "run", "--fresh", env=minio.env())
    wait_for(lambda: "--fresh: removed" in again.stdout(), "--fresh to wipe the store")
    # The new run starts over: round 1 again, then a's round-2 update (b waits at the gate).
    a2 = f"runs/s3-test/{layout.manifest_key(2, 'a')}"
    wait_for(
        lambda: minio.client().list_objects_v2(Bucket=minio.bucket, Prefix=a2).get("KeyCount"),
        "the fresh run's round-2 update of a",
    )
    again.proc.send_signal(signal.SIGINT)
    assert again.wait_or_dump(60) == 130
    assert "finished" not in again.stdout().split("--fresh: removed")[1]
    left = minio.client().list_objects_v2(Bucket=minio.bucket, Prefix="runs/s3-test/final/")
    assert left.get("KeyCount", 0) == 0


# ---- a forged commit record ----------------------------------------------------------------------


def forge_round(store: ObjectStore, r: int, clients: list[str], folder: Path) -> None:
    """Commit round ``r`` as an insider holding the job's store credential could: their own
    model and a well-formed record selecting every client, signed with their own key."""
    forger = CommitSigner(Ed25519PrivateKey.generate())
    path = folder / "attacker.safetensors"
    save_weights(path, {"bogus": torch.zeros(3)}, {"kind": "global", "round": r})
    store.put_file(layout.global_key(r), path)
    now = layout.utcnow()
    record = layout.RoundRecord(
        round=r,
        participants=clients,
        model_key=layout.global_key(r),
        model_sha256=sha256_file(path),
        started_at=now,
        next=layout.NextRound(round=r + 1, selected=clients, deadline=now),
    )
    store.put_bytes(layout.round_record_key(r), forger.sign("round", record).to_json())


@pytest.mark.parametrize("where", ["local", "minio"])
def test_a_forged_round_is_refused_by_every_client_and_stops_the_run(
    where: str, tmp: Path, request: pytest.FixtureRequest
) -> None:
    gate = tmp / "gate"
    spec: dict[str, Any] = {"runPolicy": {"backoffLimit": 1}}
    env: dict[str, str] = {}
    if where == "minio":
        minio: MinioServer = request.getfixturevalue("minio")
        prefix = f"runs/forged-{os.getpid()}-{time.monotonic_ns()}/"
        spec["storage"] = {"endpoint": minio.endpoint, "bucket": minio.bucket, "prefix": prefix}
        env = minio.env()
    job_file = write_job(tmp / "job.yaml", clients=gated_clients(gate), **spec)
    job = load_job(job_file)
    store: ObjectStore = (
        request.getfixturevalue("make_s3_store")(prefix=job_prefix(job))
        if where == "minio"
        else LocalStore(tmp / "run" / "store", job_prefix(job))
    )
    run = start_run(job_file, tmp / "run", env=env)
    # Round 2 is open: a uploaded its update, b waits at the gate.
    wait_for(lambda: store.exists(layout.manifest_key(2, "a")), "a's round 2 update")

    forge_round(store, 2, ["a", "b"], tmp)
    wait_for(lambda: "refused commit record" in run.log("a-0"), "a to refuse the forgery")
    gate.touch()
    code = run.wait()

    fingerprint = load_verifier(tmp / "run" / "commit-key" / "public.pem").fingerprint
    assert code == 1
    for client in ("a", "b"):
        log = run.log(f"{client}-0")
        assert "refused commit record rounds/000002/round.json (bad-signature)" in log, log
        assert fingerprint in log
        # Nobody trained from the forged round: no update for round 3, b's round 2 is real.
        assert not store.exists(layout.manifest_key(3, client))
    manifest = layout.UpdateManifest.model_validate_json(
        store.get_bytes(layout.manifest_key(2, "b"))
    )
    assert manifest.base_round == 1
    assert "cannot commit round 2" in run.log("aggregator")
    assert "round 2/4  REFUSED" in run.stdout()
    assert "rounds/000002/round.json" in run.stderr()


# ---- int8 updates -------------------------------------------------------------------------------


def test_clients_uploading_int8_updates_finish_the_run_like_float32(
    undisturbed: Run, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    gate.touch()  # the reference run's gated client, gate open
    clients = gated_clients(gate)
    job = write_job(tmp_path / "job.yaml", clients=clients, strategy={"updateDtype": "int8"})
    run = start_run(job, tmp_path / "run")

    assert run.wait() == 0, run.stderr()

    store = run.store
    for r in range(1, 5):
        record = json.loads(store.get_bytes(layout.round_record_key(r)))
        assert record["participants"] == ["a", "b"]
        assert record["rejected"] == []
    manifest = json.loads(store.get_bytes(layout.manifest_key(4, "a")))
    assert manifest["dtype"] == "int8"
    update = tmp_path / "a.safetensors"
    store.get_file(layout.update_key(4, "a"), update)
    with open_weights(update) as reader:
        floats = [n for n in reader if scales_name(n) in reader]
        assert floats
        assert all(reader.spec(n).dtype == torch.int8 for n in floats)
    # The quantised run scores close to the float32 one (digits: within 5 points).
    assert _accuracy(run) > _accuracy(undisturbed) - 0.05


def _accuracy(run: Run) -> float:
    found = re.search(r"final metrics: accuracy ([0-9.]+)", run.stdout())
    assert found, run.stdout()
    return float(found.group(1))
