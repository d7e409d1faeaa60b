"""FedAvgM: server momentum by hand, FedAvg as its special case, bit-identical resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedcore.strategies import FedAvg, FedAvgM
from fedcore.strategies.base import Strategy
from fedcore.weights import InMemoryWeights, Tensors, load_weights, save_weights, template_of


def one_round(strategy: Strategy, base: Tensors, updates: list[tuple[Tensors, int]]) -> Tensors:
    strategy.begin_round(template_of(base))
    for update, n in updates:
        strategy.fold(InMemoryWeights(update), n)
    return strategy.finalize(InMemoryWeights(base))


def round_updates(r: int) -> list[tuple[Tensors, int]]:
    g = torch.Generator().manual_seed(100 + r)
    return [
        (
            {
                "w": torch.randn(5, 3, generator=g) * 0.1,
                "b": torch.randn(3, generator=g).to(torch.bfloat16),
                "steps": torch.tensor(r + i),
            },
            n,
        )
        for i, n in enumerate([10, 30, 7])
    ]


def initial_model() -> Tensors:
    g = torch.Generator().manual_seed(7)
    return {
        "w": torch.randn(5, 3, generator=g),
        "b": torch.zeros(3, dtype=torch.bfloat16),
        "steps": torch.tensor(0),
    }


def test_momentum_follows_the_server_sgd_rule_by_hand() -> None:
    base = {"w": torch.tensor([1.0, 2.0])}
    strategy = FedAvgM(server_learning_rate=0.5, server_momentum=0.9)

    w1 = one_round(
        strategy,
        base,
        [({"w": torch.tensor([2.0, 0.0])}, 1), ({"w": torch.tensor([-1.0, 3.0])}, 2)],
    )
    w2 = one_round(strategy, w1, [({"w": torch.tensor([1.0, 1.0])}, 4)])

    m1 = (torch.tensor([2.0, 0.0]) * 1 + torch.tensor([-1.0, 3.0]) * 2) / 3  # [0, 2]
    assert torch.allclose(w1["w"], base["w"] + 0.5 * m1, rtol=0, atol=1e-7)
    m2 = 0.9 * m1 + torch.tensor([1.0, 1.0])  # [1, 2.8]
    assert torch.allclose(w2["w"], w1["w"] + 0.5 * m2, rtol=0, atol=1e-6)
    assert torch.allclose(strategy.state_dict()["momentum/w"], m2, rtol=0, atol=1e-7)


def test_zero_momentum_and_unit_rate_is_fedavg_bit_for_bit() -> None:
    fedavg, fedavgm = FedAvg(), FedAvgM(server_learning_rate=1.0, server_momentum=0.0)
    a = b = initial_model()

    for r in range(1, 4):
        a = one_round(fedavg, a, round_updates(r))
        b = one_round(fedavgm, b, round_updates(r))

    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_restarted_aggregator_resumes_bit_identically_from_persisted_state(
    tmp_path: Path,
) -> None:
    uninterrupted = FedAvgM(server_learning_rate=1.0, server_momentum=0.9)
    model = initial_model()
    for r in range(1, 4):
        model = one_round(uninterrupted, model, round_updates(r))

    first = FedAvgM(server_learning_rate=1.0, server_momentum=0.9)
    resumed_model = initial_model()
    for r in range(1, 3):
        resumed_model = one_round(first, resumed_model, round_updates(r))
    save_weights(tmp_path / "state.safetensors", first.state_dict(), {"kind": "state", "round": 2})
    save_weights(tmp_path / "global.safetensors", resumed_model)
    del first
    second = FedAvgM(server_learning_rate=1.0, server_momentum=0.9)
    second.load_state_dict(load_weights(tmp_path / "state.safetensors"))
    resumed_model = one_round(
        second, load_weights(tmp_path / "global.safetensors"), round_updates(3)
    )

    for name in model:
        assert torch.equal(model[name], resumed_model[name]), name
    for key, value in uninterrupted.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key


def test_momentum_is_kept_only_for_float_tensors_in_at_least_float32() -> None:
    strategy = FedAvgM(server_momentum=0.5)

    one_round(strategy, initial_model(), round_updates(1))

    state = strategy.state_dict()
    assert sorted(state) == ["momentum/b", "momentum/w"]
    assert state["momentum/b"].dtype == torch.float32
    assert state["momentum/w"].dtype == torch.float32


def test_state_of_another_model_is_refused_when_the_round_begins() -> None:
    strategy = FedAvgM(server_momentum=0.9)
    strategy.load_state_dict({"momentum/w": torch.zeros(4, 3)})

    with pytest.raises(ValueError, match=r"momentum of 'w'.*another model"):
        strategy.begin_round(template_of(initial_model()))


def test_state_of_another_strategy_is_refused() -> None:
    with pytest.raises(ValueError, match="not a fedavgm state key"):
        FedAvgM().load_state_dict({"w": torch.zeros(1)})
    with pytest.raises(ValueError, match="keeps no state"):
        FedAvg().load_state_dict({"momentum/w": torch.zeros(1)})


@pytest.mark.parametrize("momentum", [-0.1, 1.0, float("nan")])
def test_momentum_outside_zero_to_one_is_refused(momentum: float) -> None:
    with pytest.raises(ValueError, match="server_momentum"):
        FedAvgM(server_momentum=momentum)


def test_an_update_alone_is_not_finite_when_the_momentum_it_leaves_would_overflow() -> None:
    base = {"w": torch.zeros(2)}
    half_max = {"w": torch.full((2,), 2e38)}
    strategy = FedAvgM(server_learning_rate=0.01, server_momentum=0.9)
    one_round(strategy, base, [(half_max, 1)])  # momentum 2e38 kept, model 2e36: finite
    strategy.begin_round(template_of(base))

    # 0.9 * 2e38 + 2e38 = 3.8e38 > float32 max: the model would stay finite (x 0.01), the
    # momentum kept for the next round would not.
    assert not strategy.alone_is_finite(InMemoryWeights(half_max), InMemoryWeights(base))
    assert strategy.alone_is_finite(InMemoryWeights(base), InMemoryWeights(base))
