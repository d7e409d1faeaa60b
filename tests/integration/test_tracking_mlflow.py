"""``spec.tracking.mlflow``: a real ``fedkube run`` logs to a real MLflow tracking server
(SQLite backend), and a server that goes away mid-job neither fails nor stalls the job."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.mlflow import MlflowServer
from tests.integration.test_run_local import Run, gated_clients, start_run, wait_for, write_job

pytestmark = pytest.mark.timeout(400)

EXPERIMENT = "fedkube-tests"


def tracking(server: MlflowServer) -> dict[str, Any]:
    return {"mlflow": {"uri": server.uri, "experiment": EXPERIMENT}}


@dataclass(frozen=True)
class Tracked:
    server: MlflowServer
    run: Run
    mlflow_run: dict[str, Any]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """One server for the module (it takes a while to start); the last test stops it."""
    with MlflowServer(tmp_path_factory.mktemp("mlflow")) as server:
        yield server


@pytest.fixture(scope="module")
def tracked(server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> Tracked:
    root = tmp_path_factory.mktemp("tracked")
    run = start_run(write_job(root / "job.yaml", rounds=3, tracking=tracking(server)), root / "run")
    assert run.wait() == 0, run.stderr()
    (mlflow_run,) = server.runs(EXPERIMENT)
    return Tracked(server, run, mlflow_run)


def test_every_rounds_evaluation_is_logged_at_its_step(tracked: Tracked) -> None:
    run_id = tracked.mlflow_run["info"]["run_id"]

    accuracy = tracked.server.history(run_id, "accuracy")

    assert [step for step, _ in accuracy] == [0, 1, 2, 3]
    assert all(0.0 <= value <= 1.0 for _, value in accuracy)
    assert [s for s, _ in tracked.server.history(run_id, "round_duration_seconds")] == [1, 2, 3]


def test_each_clients_training_metrics_are_logged_per_round(tracked: Tracked) -> None:
    run_id = tracked.mlflow_run["info"]["run_id"]

    for client in ("a", "b"):
        losses = tracked.server.history(run_id, f"client.{client}.train_loss")
        assert [step for step, _ in losses] == [1, 2, 3]


def test_the_jobs_parameters_and_final_model_are_on_the_finished_run(tracked: Tracked) -> None:
    info, data = tracked.mlflow_run["info"], tracked.mlflow_run["data"]
    params = {p["key"]: p["value"] for p in data["params"]}
    tags = {t["key"]: t["value"] for t in data["tags"]}

    assert info["status"] == "FINISHED"
    assert info["run_name"] == "tiny"
    assert params["rounds"] == "3"
    assert params["strategy.name"] == "fedavg"
    assert params["clients"] == "a,b"
    assert params["task.config.hidden"] == "16"
    assert tags["fedkube.model_uri"].endswith("final/model.safetensors")
    assert len(tags["fedkube.model_sha256"]) == 64
    assert tags["fedkube.job"].endswith("/")


def test_a_tracking_server_gone_mid_job_neither_fails_nor_stalls_it(
    server: MlflowServer, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    experiment = {"mlflow": {"uri": server.uri, "experiment": "gone-mid-job"}}
    run = start_run(
        write_job(
            tmp_path / "job.yaml",
            rounds=4,
            clients=gated_clients(gate, round_=3),
            tracking=experiment,
        ),
        tmp_path / "run",
    )

    def round_two_logged() -> bool:
        runs = server.runs("gone-mid-job") if _experiment_exists(server) else []
        return bool(runs) and any(
            step == 2 for step, _ in server.history(runs[0]["info"]["run_id"], "accuracy")
        )

    wait_for(round_two_logged, "round 2 in MLflow")
    server.stop()  # the module's last test: nothing after it needs the server
    gate.touch()  # rounds 3 and 4 commit with the server gone

    assert run.wait() == 0, run.stderr()

    aggregator_log = run.log("aggregator")
    assert "cannot reach MLflow" in aggregator_log
    assert "could not log" in aggregator_log
    assert "the job itself is unaffected" in aggregator_log


def _experiment_exists(server: MlflowServer) -> bool:
    try:
        server.query("experiments/get-by-name", {"experiment_name": "gone-mid-job"})
    except OSError:
        return False
    return True
