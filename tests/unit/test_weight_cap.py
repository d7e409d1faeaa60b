"""maxWeightShare: capped weights against hand-computed and brute-force values, and FedAvg
folding with them against a direct dense computation."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest
import torch

from fedcore.spec import StrategySpec
from fedcore.strategies import FedAvg, FedAvgM, build_strategy
from fedcore.strategies.weighting import FoldWeight, capped_weights, shares
from fedcore.weights import InMemoryWeights, Tensors, template_of


def test_a_client_over_the_cap_gets_the_cap_and_the_others_share_the_excess_pro_rata() -> None:
    weights = capped_weights({"big": 100, "a": 1, "b": 3}, 0.5)

    assert weights is not None
    # T = 0.5 * (1 + 3) / (1 - 0.5) = 4: big weighs 4 of 8, a 1 of 8, b 3 of 8.
    assert {c: w.value for c, w in weights.items()} == {"big": 4.0, "a": 1.0, "b": 3.0}
    assert shares({c: w.value for c, w in weights.items()}) == {
        "big": 0.5,
        "a": 0.125,
        "b": 0.375,
    }


def test_a_cap_that_does_not_bind_leaves_the_plain_counts() -> None:
    assert capped_weights({"a": 2, "b": 3, "c": 5}, 0.5) is None
    assert capped_weights({"a": 1, "b": 1}, 0.5) is None  # exactly at the cap
    assert capped_weights({"a": 2, "b": 3}, None) is None


def test_too_few_clients_for_the_cap_get_equal_shares_at_the_smallest_count() -> None:
    weights = capped_weights({"a": 10, "b": 1000}, 0.25)  # 2 clients cannot stay under 1/4

    assert weights == {"a": FoldWeight(10.0, 10, 10), "b": FoldWeight(10.0, 10, 1000)}


def test_too_few_clients_with_equal_counts_keep_the_plain_fold() -> None:
    assert capped_weights({"a": 7, "b": 7}, 0.25) is None
    assert capped_weights({"alone": 10**12}, 0.1) is None


def test_exactly_enough_clients_for_the_cap_get_equal_shares() -> None:
    weights = capped_weights({"a": 1, "b": 2, "c": 3, "d": 10**12}, 0.25)

    assert weights is not None
    assert {w.value for w in weights.values()} == {1.0}


def test_a_huge_declared_count_no_longer_sets_the_model() -> None:
    counts = {f"c{i}": 100 for i in range(9)} | {"attacker": 10**12}

    weights = capped_weights(counts, 0.2)

    assert weights is not None
    got = shares({c: w.value for c, w in weights.items()})
    assert got["attacker"] == pytest.approx(0.2, rel=1e-15)
    assert all(got[f"c{i}"] == pytest.approx(0.8 / 9, rel=1e-15) for i in range(9))


def brute_force_threshold(counts: list[int], cap: Fraction) -> Fraction:
    """The T with max_k min(n_k, T) / Σ min(n_j, T) = cap, by bisection on exact rationals."""
    low, high = Fraction(0), Fraction(max(counts))
    for _ in range(200):
        mid = (low + high) / 2
        if mid / sum(min(Fraction(n), mid) for n in counts) <= cap:
            low = mid
        else:
            high = mid
    return low


@pytest.mark.parametrize("seed", range(40))
def test_capped_weights_match_a_brute_force_water_filling(seed: int) -> None:
    rng = random.Random(seed)
    counts = {f"c{i}": rng.choice([1, 2, 7, 100, 10**6, 10**12]) for i in range(rng.randint(2, 12))}
    cap = rng.choice([0.1, 0.15, 0.25, 0.3, 0.5, 0.9])

    weights = capped_weights(counts, cap)

    n = list(counts.values())
    if max(n) / sum(n) <= cap or (len(n) * Fraction(cap) <= 1 and len(set(n)) == 1):
        assert weights is None  # the cap does not bind, or equal counts are equal shares
        return
    assert weights is not None
    if len(n) * Fraction(cap) <= 1:
        assert {w.value for w in weights.values()} == {float(min(n))}
        return
    threshold = brute_force_threshold(n, Fraction(cap))
    for client, w in weights.items():
        assert w.value == pytest.approx(float(min(Fraction(counts[client]), threshold)), rel=1e-9)
        assert 1 <= w.integer <= counts[client]
    got = shares({c: w.value for c, w in weights.items()})
    assert max(got.values()) == pytest.approx(cap, rel=1e-12)
    integer_total = sum(w.integer for w in weights.values())
    assert max(w.integer for w in weights.values()) / integer_total <= cap + 1e-12


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, float("nan"), float("inf")])
def test_a_cap_outside_zero_to_one_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="max_weight_share must be in"):
        FedAvg(max_weight_share=bad)


def fold(
    strategy: FedAvg, base: Tensors, updates: list[tuple[Tensors, int, FoldWeight | None]]
) -> Tensors:
    strategy.begin_round(template_of(base))
    for update, n, weight in updates:
        strategy.fold(InMemoryWeights(update), n, weight=weight)
    return strategy.finalize(InMemoryWeights(base))


def test_folding_with_capped_weights_is_the_dense_weighted_mean() -> None:
    torch.manual_seed(0)
    base = {"w": torch.randn(3, 5), "steps": torch.tensor(40, dtype=torch.int64)}
    counts = {"a": 3, "b": 5, "big": 10**12}
    deltas = {
        c: {"w": torch.randn(3, 5), "steps": torch.tensor(s, dtype=torch.int64)}
        for c, s in zip(counts, (3, 6, 1000), strict=True)
    }
    weights = capped_weights(counts, 0.4)
    assert weights is not None

    got = fold(FedAvg(), base, [(deltas[c], counts[c], weights[c]) for c in counts])

    # By hand: T = 0.4 * 8 / 0.6 = 16/3; weights 3, 5, 16/3 (floats), 3, 5, 5 (integers).
    w = {"a": 3.0, "b": 5.0, "big": 16 / 3}
    dense = sum(deltas[c]["w"].double() * w[c] for c in counts) / sum(w.values())
    assert torch.allclose(got["w"].double(), (base["w"].double() + dense), rtol=0, atol=1e-6)
    assert torch.equal(got["w"], (base["w"].double() + dense).float())
    # steps: (3*3 + 6*5 + 1000*5) / 13 = 387.6 -> 388, plus 40.
    assert int(got["steps"]) == 40 + 388


def test_plain_fold_is_unchanged_by_a_cap_that_did_not_bind() -> None:
    base = {"w": torch.tensor([1.0, 2.0])}
    d0, d1 = {"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([0.0, 3.0])}

    capped = fold(FedAvg(max_weight_share=0.9), base, [(d0, 1, None), (d1, 2, None)])
    plain = fold(FedAvg(), base, [(d0, 1, None), (d1, 2, None)])

    assert torch.equal(capped["w"], plain["w"])


def test_a_weight_computed_for_another_count_is_refused_before_folding() -> None:
    base = {"w": torch.tensor([1.0, 2.0])}
    strategy = FedAvg()
    strategy.begin_round(template_of(base))

    with pytest.raises(ValueError, match="computed for num_samples=5"):
        strategy.fold(InMemoryWeights(base), 6, weight=FoldWeight(2.0, 2, 5))
    assert strategy.num_updates == 0


def test_every_strategy_takes_the_cap_from_the_spec() -> None:
    for name, cls in (("fedavg", FedAvg), ("fedavgm", FedAvgM)):
        strategy = build_strategy(StrategySpec(name=name, max_weight_share=0.3))  # type: ignore[arg-type]

        assert isinstance(strategy, cls)
        assert strategy.max_weight_share == 0.3
