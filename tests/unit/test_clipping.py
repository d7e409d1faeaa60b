"""Norm clipping of each update (clipNorm, clipQuantile) against a direct dense computation."""

from __future__ import annotations

import math

import pytest
import torch

from fedcore.spec import StrategySpec
from fedcore.strategies import FedAvg, FedAvgM, build_strategy
from fedcore.strategies.clipping import BOUND_KEY, quantile
from fedcore.weights import InMemoryWeights, Tensors, template_of


def run_round(strategy: FedAvg, base: Tensors, updates: list[tuple[Tensors, int]]) -> Tensors:
    strategy.begin_round(template_of(base))
    for update, n in updates:
        strategy.fold(InMemoryWeights(update), n)
    return strategy.finalize(InMemoryWeights(base))


def norm(update: Tensors) -> float:
    return math.sqrt(
        sum(float(t.double().pow(2).sum()) for t in update.values() if t.is_floating_point())
    )


def dense_clipped(base: Tensors, updates: list[tuple[Tensors, int]], bound: float) -> Tensors:
    """base + Σ n_k min(1, C/||Δ_k||) Δ_k / Σ n_k, float tensors only."""
    n = sum(k for _, k in updates)
    out = {}
    for name, b in base.items():
        acc = torch.zeros(b.shape, dtype=torch.float64)
        for d, k in updates:
            acc += d[name].double() * k * min(1.0, bound / norm(d))
        out[name] = (b.double() + acc / n).to(b.dtype)
    return out


def test_an_update_past_the_bound_is_scaled_down_to_it_and_keeps_its_weight() -> None:
    base = {"w": torch.zeros(2, 2), "b": torch.zeros(2)}
    small = {"w": torch.full((2, 2), 0.1), "b": torch.full((2,), 0.1)}
    huge = {"w": torch.full((2, 2), -1e6), "b": torch.full((2,), 1e6)}
    updates = [(small, 3), (huge, 1)]

    got = run_round(FedAvg(clip_norm=1.0), base, updates)

    expected = dense_clipped(base, updates, 1.0)
    assert all(torch.allclose(got[k], expected[k], rtol=0, atol=1e-7) for k in base)
    # By hand: huge's norm is 1e6 * sqrt(6), clipped to 1: each entry of it becomes ±1/sqrt(6).
    assert got["w"][0, 0].item() == pytest.approx((3 * 0.1 - 1 / math.sqrt(6)) / 4, abs=1e-7)


def test_updates_within_the_bound_give_plain_fedavg_to_the_bit() -> None:
    torch.manual_seed(1)
    base = {"w": torch.randn(4, 3)}
    updates = [({"w": torch.randn(4, 3) * 0.01}, k) for k in (2, 5, 7)]

    clipped = run_round(FedAvg(clip_norm=100.0), base, updates)
    plain = run_round(FedAvg(), base, updates)

    assert torch.equal(clipped["w"], plain["w"])


def test_the_norm_spans_every_float_tensor_and_integer_tensors_are_not_clipped() -> None:
    base = {"a": torch.zeros(1), "b": torch.zeros(1), "steps": torch.tensor(0)}
    update = {"a": torch.tensor([3.0]), "b": torch.tensor([4.0]), "steps": torch.tensor(7)}

    got = run_round(FedAvg(clip_norm=1.0), base, [(update, 1)])

    assert got["a"].item() == pytest.approx(0.6)  # 3/5 of the whole update's norm of 5
    assert got["b"].item() == pytest.approx(0.8)
    assert int(got["steps"]) == 7


def test_adaptive_bound_is_the_quantile_of_the_previous_rounds_norms() -> None:
    base = {"w": torch.zeros(1)}
    strategy = FedAvg(clip_norm=10.0, clip_quantile=0.5)
    round1 = [({"w": torch.tensor([x])}, 1) for x in (1.0, 2.0, 6.0)]

    run_round(strategy, base, round1)
    state = strategy.state_dict()
    got = run_round(strategy, base, [({"w": torch.tensor([8.0])}, 1)])

    assert float(state[BOUND_KEY][0]) == 2.0  # median of 1, 2, 6: round 1 clipped nothing
    assert got["w"].item() == 2.0  # round 2 clips 8 to the median


def test_a_restarted_strategy_clips_exactly_as_an_undisturbed_one() -> None:
    torch.manual_seed(2)
    base = {"w": torch.randn(5), "v": torch.randn(2, 2)}
    rounds = [
        [
            ({k: torch.randn_like(t) * s for k, t in base.items()}, n)
            for s, n in ((1, 3), (4, 1), (9, 2))
        ]
        for _ in range(3)
    ]
    undisturbed = FedAvgM(server_momentum=0.9, clip_norm=2.0, clip_quantile=0.3)
    models = [base]
    for updates in rounds:
        models.append(run_round(undisturbed, models[-1], updates))

    resumed_model = base
    state: Tensors = {}
    for updates in rounds:  # a new strategy each round, loaded from the persisted state
        strategy = FedAvgM(server_momentum=0.9, clip_norm=2.0, clip_quantile=0.3)
        strategy.load_state_dict({k: v.clone() for k, v in state.items()})
        resumed_model = run_round(strategy, resumed_model, updates)
        state = strategy.state_dict()

    assert all(torch.equal(resumed_model[k], models[-1][k]) for k in base)
    assert set(state) == {BOUND_KEY, "momentum/v", "momentum/w"}


@pytest.mark.parametrize("q", [0.1, 0.25, 0.5, 0.9, 1.0])
def test_quantile_interpolates_like_torch(q: float) -> None:
    values = [3.0, 1.0, 4.0, 1.5, 9.0, 2.6]

    assert quantile(values, q) == pytest.approx(
        float(torch.quantile(torch.tensor(values, dtype=torch.float64), q)), rel=1e-15
    )


def test_clip_quantile_without_a_first_bound_is_refused() -> None:
    with pytest.raises(ValueError, match="clip_quantile needs clip_norm"):
        FedAvg(clip_quantile=0.5)
    with pytest.raises(ValueError, match=r"clipQuantile=0\.5 needs clipNorm"):
        StrategySpec(clip_quantile=0.5)


def test_a_bound_in_the_state_of_a_strategy_without_adaptive_clipping_is_refused() -> None:
    state = {BOUND_KEY: torch.tensor([1.0], dtype=torch.float64)}

    with pytest.raises(ValueError, match="no clipQuantile"):
        FedAvg(clip_norm=1.0).load_state_dict(state)


def test_every_strategy_takes_clipping_from_the_spec() -> None:
    spec = StrategySpec(name="fedavgm", clip_norm=3.0, clip_quantile=0.5)

    strategy = build_strategy(spec)

    assert isinstance(strategy, FedAvgM)
    assert (strategy.clip_bound, strategy.clip_quantile) == (3.0, 0.5)
