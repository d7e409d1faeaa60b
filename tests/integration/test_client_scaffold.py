"""SCAFFOLD in a real client group: the correction ``c - c_i`` is added on every gloo rank, so
a 2-rank group uploads (model delta and variate delta) what one process computes, and the
client's own variate slot holds the variate before and after the round."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from fedcore import layout
from fedcore.store import LocalStore
from fedcore.tasks import TaskContext, load_task
from fedcore.variates import VARIATE_KIND
from fedcore.weights import Tensors, load_weights, save_weights, template_of
from tests.integration.test_client_ddp import CLIENT, GroupRun, run_group

pytestmark = pytest.mark.timeout(300)

SCAFFOLD = {"name": "scaffold"}


def client_variate() -> Tensors:
    """A nonzero c_i, as if the client had trained before (c is zero at round 0)."""
    task = load_task("fedcore.tasks.synthetic:task")
    ctx = TaskContext(
        config={"params": 3000}, seed=7, round=0, client=CLIENT, client_index=0, num_clients=2
    )
    model = template_of(dict(task.build_model(ctx).state_dict()))
    g = torch.Generator().manual_seed(5)
    return {f"control/{n}": torch.randn(s.shape, generator=g) * 0.05 for n, s in model.items()}


def with_variate(folder: Path) -> Callable[[LocalStore], None]:
    def prepare(store: LocalStore) -> None:
        c_i = client_variate()
        tensors = {f"current/{k}": v for k, v in c_i.items()}
        tensors.update({f"next/{k}": v + 100 for k, v in c_i.items()})  # round 0 folded none
        path = folder / "variate.safetensors"
        save_weights(path, tensors, {"kind": VARIATE_KIND, "client": CLIENT, "round": "0"})
        store.put_file(layout.client_variate_key(CLIENT), path)

    return prepare


def run(folder: Path, procs: int, *, variate: bool = True) -> GroupRun:
    folder.mkdir(parents=True, exist_ok=True)
    prepare = with_variate(folder) if variate else None
    return run_group(folder, replicas=1, procs=procs, strategy=SCAFFOLD, prepare=prepare)


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> GroupRun:
    return run(tmp_path_factory.mktemp("scaffold-single"), 1)


def test_two_rank_scaffold_group_uploads_what_one_process_computes(
    single: GroupRun, tmp_path: Path
) -> None:
    two_ranks = run(tmp_path / "two", 2)

    # Each rank adds c - c_i to its own gradient before DDP averages them, so the sums run in
    # another order than in one process: equal up to float32 rounding of the tensor's scale.
    assert sorted(two_ranks.update) == sorted(single.update)
    for name, want in single.update.items():
        scale = float(want.abs().max())
        torch.testing.assert_close(
            two_ranks.update[name], want, rtol=0, atol=1e-5 * scale, msg=name
        )
    assert any(k.startswith("control/") for k in two_ranks.update)


def test_the_update_carries_the_variate_delta_and_the_slot_both_variates(
    single: GroupRun, tmp_path: Path
) -> None:
    single.store.get_file(layout.client_variate_key(CLIENT), tmp_path / "slot.safetensors")
    slot = load_weights(tmp_path / "slot.safetensors")
    c_i = client_variate()

    for key, before in c_i.items():
        assert torch.equal(slot[f"current/{key}"], before), key
        torch.testing.assert_close(slot[f"next/{key}"] - before, single.update[key], msg=key)
    model_keys = {k for k in single.update if not k.startswith("control/")}
    assert {f"control/{k}" for k in model_keys} == {k for k in single.update if k not in model_keys}


def test_the_correction_moves_the_training(single: GroupRun, tmp_path: Path) -> None:
    uncorrected = run(tmp_path / "zero", 1, variate=False)

    differences = [
        float((single.update[k] - uncorrected.update[k]).abs().max())
        for k in single.update
        if not k.startswith("control/")
    ]
    assert max(differences) > 1e-3
