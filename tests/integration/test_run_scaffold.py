"""``fedkube run`` with ``strategy.name: scaffold`` on digits: real processes, a local store.

Three single-process clients, two selected per round, so every round leaves one out. The
paper's invariant must hold in the store at the end: the server variate ``c`` is the mean of
all the clients' own variates ``c_i`` (absent ones included). An interrupted run resumed by a
rerun must end with the undisturbed run's model, bit for bit.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from fedcore import layout
from fedcore.rounds import select_clients
from fedcore.weights import load_weights, open_weights, sha256_file
from tests.integration.test_run_local import Run, start_run, tmp, wait_for, write_job

__all__ = ["tmp"]  # the fixture, imported for the tests below

pytestmark = pytest.mark.timeout(600)

CLIENTS = [{"name": "a"}, {"name": "b"}, {"name": "c"}]
STRATEGY = {"name": "scaffold", "fractionFit": 0.5, "minClients": 2}
ROUNDS = 4


def scaffold_job(path: Path) -> Path:
    return write_job(path, clients=CLIENTS, rounds=ROUNDS, strategy=STRATEGY)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Run:
    root = tmp_path_factory.mktemp("scaffold-run")
    run = start_run(scaffold_job(root / "job.yaml"), root / "run")
    code = run.wait(300)
    assert code == 0, run.stderr()
    return run


def own_variate(run: Run, client: str, tmp: Path) -> dict[str, torch.Tensor]:
    """The client's ``c_i`` now: its slot's ``next`` if the slot's round folded its update."""
    path = tmp / f"{client}.safetensors"
    run.store.get_file(layout.client_variate_key(client), path)
    with open_weights(path) as reader:
        p = int(reader.metadata["round"])
        tensors = reader.load_all()
    record = layout.RoundRecord.model_validate_json(run.store.get_bytes(layout.round_record_key(p)))
    side = "next/" if client in record.participants else "current/"
    return {k.removeprefix(side): v for k, v in tensors.items() if k.startswith(side)}


def test_the_run_succeeds_leaving_clients_out_of_rounds_and_learns(finished: Run) -> None:
    records = [
        layout.RoundRecord.model_validate_json(finished.store.get_bytes(layout.round_record_key(r)))
        for r in range(ROUNDS + 1)
    ]

    assert all(len(rec.participants) == 2 for rec in records[1:])
    absent = {c["name"] for c in CLIENTS} - set(records[2].participants)
    assert len(absent) == 1
    assert [select_clients(finished.job.spec, r) for r in range(1, ROUNDS + 1)] == [
        rec.participants for rec in records[1:]
    ]
    assert records[-1].metrics["loss"] < records[0].metrics["loss"]
    assert records[-1].metrics["accuracy"] > 0.5
    assert not records[0].strategy_sha256  # round 0 keeps no state: c = 0
    for rec in records[1:]:
        state = finished.store.base / layout.strategy_state_key(rec.round)
        assert rec.strategy_sha256 == sha256_file(state)


def test_the_server_variate_is_the_mean_of_every_clients_own_variate(
    finished: Run, tmp_path: Path
) -> None:
    state = load_weights(finished.store.base / layout.strategy_state_key(ROUNDS))
    own = [own_variate(finished, c["name"], tmp_path) for c in CLIENTS]

    assert sorted(state) == sorted(own[0])
    for key, c in state.items():
        mean = sum(o[key].double() for o in own) / len(own)
        assert float(c.abs().max()) > 0, key
        torch.testing.assert_close(c.double(), mean, rtol=0, atol=1e-5, msg=key)


def test_an_interrupted_run_resumed_by_a_rerun_ends_with_the_same_model_bit_for_bit(
    finished: Run, tmp: Path
) -> None:
    job_file = scaffold_job(tmp / "job.yaml")
    run = start_run(job_file, tmp / "run")
    wait_for(lambda: run.store.exists(layout.round_record_key(2)), "round 2 committed", 300)

    run.proc.send_signal(signal.SIGINT)
    assert run.wait(60) == 130

    rerun = start_run(job_file, tmp / "run")
    assert rerun.wait(300) == 0, rerun.stderr()
    assert "resuming after committed round" in rerun.log("aggregator")
    assert sha256_file(rerun.final_model()) == sha256_file(finished.final_model())
    for c in CLIENTS:
        key = layout.client_variate_key(c["name"])
        assert sha256_file(rerun.store.base / key) == sha256_file(finished.store.base / key)
