"""FedProx's proximal term: its value and gradient by hand, and its pull toward the global."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from fedcore.errors import TaskError
from fedcore.spec import StrategySpec
from fedcore.strategies import FedAvg, FedProx, build_strategy
from fedcore.tasks.base import train_loader
from fedcore.tasks.proximal import ProximalTerm
from tests.unit.test_tasks_base import SlopeTask, make_ctx


def distance(a: nn.Module, b: nn.Module) -> float:
    return math.sqrt(
        sum(
            float((p - q).detach().pow(2).sum())
            for p, q in zip(a.parameters(), b.parameters(), strict=True)
        )
    )


def test_term_and_gradient_are_mu_over_two_squared_distance_and_mu_times_the_difference() -> None:
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
        model.bias.fill_(0.5)
    term = ProximalTerm.snapshot(model, mu=0.4)
    with torch.no_grad():
        model.weight.add_(torch.tensor([[3.0, -1.0]]))
        model.bias.add_(2.0)

    value = term(model)
    value.backward()  # type: ignore[no-untyped-call]

    assert value.item() == pytest.approx(0.4 / 2 * (9 + 1 + 4))
    assert model.weight.grad is not None
    assert model.weight.grad[0].tolist() == pytest.approx([0.4 * 3.0, 0.4 * -1.0])
    assert model.bias.grad is not None
    assert model.bias.grad.tolist() == pytest.approx([0.4 * 2.0])


def test_the_term_is_zero_at_the_global_model_and_anchors_are_detached_copies() -> None:
    model = nn.Linear(3, 2)
    term = ProximalTerm.snapshot(model, mu=5.0)

    assert term(model).item() == 0.0
    assert all(not a.requires_grad for a in term.anchors)
    assert all(
        a.data_ptr() != p.data_ptr() for a, p in zip(term.anchors, model.parameters(), strict=True)
    )


def train_from_global(mu: float) -> float:
    """Distance from the global model after one local training pass of SlopeTask."""
    task = SlopeTask()
    ctx = make_ctx({"localEpochs": 5, "lr": 0.1})
    model = task.build_model(ctx)
    global_model = copy.deepcopy(model)
    if mu:
        ctx = replace(ctx, proximal=ProximalTerm.snapshot(model, mu))
    loader = train_loader(task.train_dataset(ctx), batch_size=16, ctx=ctx, shuffle_seed=1)
    task.train(model, loader, ctx)
    return distance(model, global_model)


def test_a_large_mu_keeps_the_local_model_closer_to_the_global_than_no_term() -> None:
    free = train_from_global(0.0)
    held = train_from_global(5.0)

    assert free > 1.0  # the slope moves from its init toward 3
    assert held < 0.5 * free


def test_a_model_with_other_parameters_is_refused() -> None:
    term = ProximalTerm.snapshot(nn.Linear(2, 2), mu=1.0)

    with pytest.raises(ValueError, match="anchored on 2"):
        term(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)))


def test_fedprox_aggregates_like_fedavg_and_needs_mu() -> None:
    strategy = build_strategy(StrategySpec(name="fedprox", proximal_mu=0.1))

    assert isinstance(strategy, FedProx)
    assert isinstance(strategy, FedAvg)
    with pytest.raises(ValueError, match="fedprox needs proximalMu"):
        StrategySpec(name="fedprox")
    with pytest.raises(ValueError, match="mu must be a finite number"):
        ProximalTerm.snapshot(nn.Linear(1, 1), mu=-1.0)


def test_a_task_that_never_adds_the_term_is_caught_not_silently_trained_without_it() -> None:
    model = nn.Linear(2, 1)
    term = ProximalTerm.snapshot(model, mu=0.1)

    with pytest.raises(TaskError, match=r"never added ctx\.proximal\(model\)"):
        term.require_used("my.task:task")
    term(model)
    term.require_used("my.task:task")  # used: no error
