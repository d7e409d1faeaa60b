"""Streaming FedAvg: hand-computed values, the seed formula on trained weights, policies."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import fedcore.strategies.fedavg as fedavg_module
from fedcore.strategies import FedAvg
from fedcore.strategies.base import OutOfRange, arithmetic_threads
from fedcore.weights import (
    InMemoryWeights,
    Tensors,
    delta,
    open_weights,
    save_weights,
    template_of,
)


def fold_files(
    strategy: FedAvg, base: Tensors, updates: list[tuple[Tensors, int]], tmp_path: Path
) -> Tensors:
    """One round through safetensors files, the way the aggregator runs it."""
    base_path = tmp_path / "base.safetensors"
    save_weights(base_path, base)
    strategy.begin_round(template_of(base))
    for i, (update, n) in enumerate(updates):
        path = tmp_path / f"update-{i}.safetensors"
        save_weights(path, update)
        with open_weights(path) as reader:
            strategy.fold(reader, n)
    with open_weights(base_path) as reader:
        return strategy.finalize(reader)


def fold_memory(strategy: FedAvg, base: Tensors, updates: list[tuple[Tensors, int]]) -> Tensors:
    strategy.begin_round(template_of(base))
    for update, n in updates:
        strategy.fold(InMemoryWeights(update), n)
    return strategy.finalize(InMemoryWeights(base))


def test_result_is_the_sample_weighted_mean_of_deltas_added_to_the_base(tmp_path: Path) -> None:
    base = {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "b": torch.tensor([0.5])}
    d0 = {"w": torch.tensor([[1.0, 0.0], [0.0, 3.0]]), "b": torch.tensor([3.0])}
    d1 = {"w": torch.tensor([[4.0, 3.0], [-3.0, 0.0]]), "b": torch.tensor([-1.5])}

    result = fold_files(FedAvg(), base, [(d0, 1), (d1, 2)], tmp_path)

    for name in base:
        expected = base[name] + (d0[name] * 1 + d1[name] * 2) / 3
        assert result[name].dtype == torch.float32
        assert torch.allclose(result[name], expected, rtol=0, atol=1e-7), name


def test_one_client_result_is_its_own_model() -> None:
    base = {"w": torch.tensor([1.0, 2.0, 3.0])}
    d = {"w": torch.tensor([0.5, -0.25, 8.0])}

    result = fold_memory(FedAvg(), base, [(d, 17)])

    assert torch.equal(result["w"], base["w"] + d["w"])


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.bn = nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


def train_copy(init: Tensors, seed: int, samples: int) -> Tensors:
    """A few SGD steps from ``init`` on this client's own random data."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, 8, generator=g) + seed
    y = torch.randint(0, 3, (samples,), generator=g)
    model = TinyNet()
    model.load_state_dict(init)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(3 + seed):
        batch = slice((step * 8) % samples, (step * 8) % samples + 8)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_streaming_fedavg_matches_the_seed_formula_on_trained_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    init = {k: v.clone() for k, v in TinyNet().state_dict().items()}
    samples = [40, 64, 96]
    trained = [train_copy(init, seed, n) for seed, n in enumerate(samples)]
    total = sum(samples)

    result = fold_files(
        FedAvg(),
        init,
        [(delta(w, init), n) for w, n in zip(trained, samples, strict=True)],
        tmp_path,
    )

    for name, base in init.items():
        seed_formula = sum(
            w[name].double() * n / total for w, n in zip(trained, samples, strict=True)
        )
        assert isinstance(seed_formula, torch.Tensor)
        if base.dtype.is_floating_point:
            diff = (result[name].double() - seed_formula).abs().max().item()
            assert diff <= 1e-6, f"{name}: max abs diff {diff}"
        else:  # num_batches_tracked: sample-weighted mean step count, rounded
            assert result[name].dtype == torch.int64
            assert int(result[name]) == int(torch.floor(seed_formula + 0.5))


def random_updates(count: int) -> tuple[Tensors, list[tuple[Tensors, int]]]:
    g = torch.Generator().manual_seed(42)
    base = {"a": torch.randn(64, 33, generator=g), "b": torch.randn(7, generator=g)}
    updates = [
        ({k: torch.randn(v.shape, generator=g) * 10 ** (i % 4 - 2) for k, v in base.items()}, n)
        for i, n in enumerate([3, 1000, 17, 250_000, 9][:count])
    ]
    return base, updates


def test_folding_order_does_not_change_the_result_beyond_1e_7() -> None:
    base, updates = random_updates(5)

    forward = fold_memory(FedAvg(), base, updates)
    backward = fold_memory(FedAvg(), base, updates[::-1])

    for name in base:
        assert (forward[name] - backward[name]).abs().max().item() <= 1e-7, name


def test_same_order_gives_bit_identical_results() -> None:
    base, updates = random_updates(5)

    first = fold_memory(FedAvg(), base, updates)
    second = fold_memory(FedAvg(), base, updates)

    for name in base:
        assert torch.equal(first[name], second[name]), name


def test_small_contributions_survive_because_accumulation_is_float64() -> None:
    base = {"w": torch.zeros(4, dtype=torch.float64)}
    # float32 wire deltas: in a float32 (or narrower) sum, 2**24 + 2**-20 rounds to 2**24.
    d_big = {"w": torch.full((4,), 1.0)}
    d_small = {"w": torch.full((4,), 2.0**-20)}

    result = fold_memory(FedAvg(), base, [(d_big, 2**24), (d_small, 1)])

    expected = (2.0**24 + 2.0**-20) / (2**24 + 1)
    assert torch.equal(result["w"], torch.full((4,), expected, dtype=torch.float64))


def test_half_precision_deltas_fold_into_a_float32_model() -> None:
    base = {"w": torch.ones(3)}
    d = {"w": torch.tensor([0.5, -1.0, 3.0], dtype=torch.bfloat16)}

    result = fold_memory(FedAvg(), base, [(d, 2), (d, 5)])

    assert result["w"].dtype == torch.float32
    assert torch.equal(result["w"], torch.tensor([1.5, 0.0, 4.0]))


def test_integer_tensors_get_the_weighted_mean_delta_rounded_half_up() -> None:
    base = {"steps": torch.tensor(10), "small": torch.tensor([100, 100], dtype=torch.int16)}
    d0 = {"steps": torch.tensor(2), "small": torch.tensor([1, -3], dtype=torch.int16)}
    d1 = {"steps": torch.tensor(5), "small": torch.tensor([2, -2], dtype=torch.int16)}

    result = fold_memory(FedAvg(), base, [(d0, 1), (d1, 1)])

    # steps: (2 + 5) / 2 = 3.5 -> 4; small: 1.5 -> 2 and -2.5 -> -2 (ties toward +inf)
    assert result["steps"].dtype == torch.int64
    assert int(result["steps"]) == 14
    assert result["small"].dtype == torch.int16
    assert result["small"].tolist() == [102, 98]


def test_integer_mean_is_weighted_by_samples() -> None:
    base = {"steps": torch.tensor(10)}

    result = fold_memory(
        FedAvg(), base, [({"steps": torch.tensor(2)}, 1), ({"steps": torch.tensor(5)}, 3)]
    )

    assert int(result["steps"]) == 10 + 4  # (2 + 15) / 4 = 4.25 -> 4


def test_bool_tensors_pass_through_unchanged() -> None:
    base = {"w": torch.zeros(2), "mask": torch.tensor([True, False])}
    d = {"w": torch.ones(2), "mask": torch.tensor([False, False])}

    result = fold_memory(FedAvg(), base, [(d, 3)])

    assert torch.equal(result["mask"], base["mask"])


def test_changed_bool_delta_is_refused_before_touching_the_accumulator() -> None:
    base = {"w": torch.zeros(2), "mask": torch.tensor([True, False])}
    good = {"w": torch.ones(2), "mask": torch.tensor([False, False])}
    bad = {"w": torch.full((2,), 100.0), "mask": torch.tensor([False, True])}
    strategy = FedAvg()
    strategy.begin_round(template_of(base))
    strategy.fold(InMemoryWeights(good), 1)

    with pytest.raises(ValueError, match="bool tensor 'mask'"):
        strategy.fold(InMemoryWeights(bad), 1)
    result = strategy.finalize(InMemoryWeights(base))

    assert strategy.num_updates == 0  # finalize consumed the round
    assert torch.equal(result["w"], torch.ones(2))


@pytest.mark.parametrize(
    ("update", "message"),
    [
        pytest.param({"w": torch.zeros(2)}, r"missing \['steps'\]", id="a tensor is missing"),
        pytest.param(
            {"w": torch.zeros(2), "steps": torch.tensor(0), "x": torch.zeros(1)},
            r"unexpected \['x'\]",
            id="an unknown tensor is present",
        ),
        pytest.param(
            {"w": torch.zeros(3), "steps": torch.tensor(0)},
            r"'w' has shape \[3\]",
            id="a shape differs",
        ),
        pytest.param(
            {"w": torch.zeros(2), "steps": torch.tensor(0, dtype=torch.int32)},
            r"'steps' .* dtype int32",
            id="an integer dtype differs",
        ),
    ],
)
def test_update_with_another_structure_is_refused_and_not_counted(
    update: Tensors, message: str
) -> None:
    base = {"w": torch.zeros(2), "steps": torch.tensor(0)}
    strategy = FedAvg()
    strategy.begin_round(template_of(base))

    with pytest.raises(ValueError, match=message):
        strategy.fold(InMemoryWeights(update), 5)

    assert strategy.num_updates == 0
    assert strategy.num_samples == 0


def test_fold_before_begin_round_is_refused() -> None:
    with pytest.raises(RuntimeError, match="begin_round"):
        FedAvg().fold(InMemoryWeights({"w": torch.zeros(1)}), 1)


def test_finalize_without_any_update_is_refused() -> None:
    strategy = FedAvg()
    strategy.begin_round(template_of({"w": torch.zeros(1)}))

    with pytest.raises(ValueError, match="no update was folded"):
        strategy.finalize(InMemoryWeights({"w": torch.zeros(1)}))


@pytest.mark.parametrize("num_samples", [0, -3, True, 10**13])
def test_update_weight_must_be_a_positive_sane_int(num_samples: int) -> None:
    strategy = FedAvg()
    strategy.begin_round(template_of({"w": torch.zeros(1)}))

    with pytest.raises(ValueError, match="num_samples"):
        strategy.fold(InMemoryWeights({"w": torch.ones(1)}), num_samples)


def test_server_learning_rate_scales_the_averaged_delta() -> None:
    base = {"w": torch.tensor([1.0, 1.0])}
    d = {"w": torch.tensor([2.0, -4.0])}

    result = fold_memory(FedAvg(server_learning_rate=0.5), base, [(d, 2)])

    assert torch.equal(result["w"], torch.tensor([2.0, -1.0]))


def test_result_keeps_a_half_precision_model_dtype() -> None:
    base = {"w": torch.ones(3, dtype=torch.bfloat16)}
    d = {"w": torch.ones(3, dtype=torch.bfloat16)}

    result = fold_memory(FedAvg(), base, [(d, 1), (d, 1)])

    assert result["w"].dtype == torch.bfloat16
    assert torch.equal(result["w"], torch.full((3,), 2.0, dtype=torch.bfloat16))


def test_base_with_another_structure_is_refused_at_finalize() -> None:
    strategy = FedAvg()
    strategy.begin_round(template_of({"w": torch.zeros(2)}))
    strategy.fold(InMemoryWeights({"w": torch.ones(2)}), 1)

    with pytest.raises(ValueError, match="dtype float64"):
        strategy.finalize(InMemoryWeights({"w": torch.zeros(2, dtype=torch.float64)}))


def test_a_second_round_starts_from_a_clean_accumulator() -> None:
    base = {"w": torch.zeros(2)}
    strategy = FedAvg()
    fold_memory(strategy, base, [({"w": torch.full((2,), 9.0)}, 4)])

    result = fold_memory(strategy, base, [({"w": torch.ones(2)}, 1)])

    assert torch.equal(result["w"], torch.ones(2))


def test_chunked_add_of_a_wider_accumulator_equals_a_whole_tensor_add(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fedavg_module, "CHUNK_ELEMENTS", 7)  # slices that do not divide 5 x 9
    g = torch.Generator().manual_seed(3)
    acc = torch.randn(5, 9, generator=g, dtype=torch.float64)
    other = torch.randn(5, 9, generator=g)
    expected = acc + other.double() * 37

    fedavg_module.add_chunked_(acc, other, alpha=37)

    assert torch.equal(acc, expected)


def test_sliced_folding_gives_the_same_model(monkeypatch: pytest.MonkeyPatch) -> None:
    base, updates = random_updates(3)
    whole = fold_memory(FedAvg(), base, updates)

    monkeypatch.setattr(fedavg_module, "CHUNK_ELEMENTS", 100)
    sliced = fold_memory(FedAvg(), base, updates)

    for name in base:
        assert torch.equal(whole[name], sliced[name]), name


def test_arithmetic_runs_on_one_thread_and_restores_the_callers_setting() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with arithmetic_threads():
            inside = torch.get_num_threads()
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)

    assert (inside, after) == (1, 2)


def test_fold_refuses_an_integer_sum_past_the_exact_range_and_changes_nothing() -> None:
    base = {"w": torch.zeros(2), "steps": torch.tensor(0)}
    big = {"w": torch.ones(2), "steps": torch.tensor(2**60)}
    strategy = FedAvg()
    strategy.begin_round(template_of(base))
    strategy.fold(InMemoryWeights(big), 1)
    strategy.fold(InMemoryWeights(big), 1)

    with pytest.raises(OutOfRange, match=r"'steps'.*past the 2305843009213693952"):
        strategy.fold(InMemoryWeights(big), 1)

    assert strategy.num_updates == 2
    result = strategy.finalize(InMemoryWeights(base))
    assert int(result["steps"]) == 2**60
    assert torch.equal(result["w"], torch.ones(2))


def test_an_update_alone_is_finite_unless_the_server_step_overflows_the_model() -> None:
    base = {"w": torch.zeros(2), "steps": torch.tensor(0)}
    huge = {"w": torch.full((2,), 3e38), "steps": torch.tensor(1)}
    plain, scaled = FedAvg(), FedAvg(server_learning_rate=10.0)
    for strategy in (plain, scaled):
        strategy.begin_round(template_of(base))

    assert plain.alone_is_finite(InMemoryWeights(huge), InMemoryWeights(base))
    assert not scaled.alone_is_finite(InMemoryWeights(huge), InMemoryWeights(base))
    assert scaled.num_updates == 0
