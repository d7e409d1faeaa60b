"""Median, trimmed mean and Krum against a direct dense computation on the stacked updates,
through safetensors files and several slices per tensor, the way the aggregator runs them."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

import fedcore.strategies.spool as spool_module
from fedcore.errors import SpecError
from fedcore.spec import StrategySpec, parse_job
from fedcore.strategies import Krum, Median, Strategy, TrimmedMean, build_strategy
from fedcore.strategies.weighting import FoldWeight
from fedcore.weights import (
    InMemoryWeights,
    Tensors,
    WeightsReader,
    open_weights,
    save_weights,
    template_of,
)

N_ELEMENTS = 5000
"""Elements of the big tensor: several slices once ``SLICE_BYTES`` is lowered."""


@pytest.fixture(autouse=True)
def small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_module, "SLICE_BYTES", 8 * 1024)  # 1024 elements per slice


def model(seed: int, scale: float = 1.0) -> Tensors:
    g = torch.Generator().manual_seed(seed)
    return {
        "big": torch.randn(N_ELEMENTS, generator=g) * scale,
        "weight": (torch.randn(3, 4, generator=g) * scale).to(torch.float64),
        "steps": torch.randint(-5, 6, (4,), generator=g, dtype=torch.int64),
        "mask": torch.zeros(2, dtype=torch.bool),
    }


def poisoned() -> Tensors:
    bad = model(99, scale=1e6)
    bad["steps"] = torch.full((4,), 1000, dtype=torch.int64)
    return bad


def run(
    strategy: Strategy, base: Tensors, updates: list[tuple[Tensors, int]], tmp_path: Path
) -> Tensors:
    base_path = tmp_path / "base.safetensors"
    save_weights(base_path, base)
    strategy.begin_round(template_of(base))
    for i, (update, n) in enumerate(updates):
        path = tmp_path / f"update-{i}.safetensors"
        save_weights(path, update)
        with open_weights(path) as reader:
            strategy.fold(reader, n)
        path.unlink()  # the aggregator deletes its download: the strategy kept its own copy
    with open_weights(base_path) as reader:
        return strategy.finalize(reader)


def dense(base: Tensors, updates: list[Tensors], name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(base as float64, stacked updates as float64) of tensor ``name``."""
    return base[name].double(), torch.stack([u[name].double() for u in updates])


def updates_with_poison(n_honest: int) -> list[Tensors]:
    return [model(i) for i in range(n_honest)] + [poisoned()]


@pytest.mark.parametrize("n_honest", [4, 3])  # 5 updates (odd) and 4 (even)
def test_median_is_the_dense_coordinate_wise_median_and_ignores_a_far_client(
    tmp_path: Path, n_honest: int
) -> None:
    base, updates = model(100), updates_with_poison(n_honest)

    got = run(Median(), base, [(u, 1 + i) for i, u in enumerate(updates)], tmp_path)

    for name in ("big", "weight"):
        b, stacked = dense(base, updates, name)
        expected = (b + torch.quantile(stacked, 0.5, dim=0)).to(base[name].dtype)
        assert torch.equal(got[name], expected), name
        assert float(got[name].double().abs().max()) < 10  # the 1e6 client moved nothing
    ints = torch.stack([u["steps"] for u in updates]).sort(dim=0).values
    n = len(updates)
    middle = ints[n // 2] if n % 2 else torch.div(ints[n // 2 - 1] + ints[n // 2] + 1, 2,
                                                  rounding_mode="floor")  # fmt: skip
    assert torch.equal(got["steps"], base["steps"] + middle)
    assert torch.equal(got["mask"], base["mask"])


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.45])
def test_trimmed_mean_is_the_dense_trimmed_mean(tmp_path: Path, fraction: float) -> None:
    base, updates = model(100), updates_with_poison(5)  # 6 updates: k = 0, 1, 2
    k = int(fraction * len(updates))

    got = run(TrimmedMean(trim_fraction=fraction), base, [(u, 7) for u in updates], tmp_path)

    for name in ("big", "weight"):
        b, stacked = dense(base, updates, name)
        kept = stacked.sort(dim=0).values[k : len(updates) - k]
        expected = (b + kept.sum(dim=0) / kept.shape[0]).to(base[name].dtype)
        assert torch.allclose(got[name].double(), expected.double(), rtol=1e-6, atol=1e-6)
    ints = torch.stack([u["steps"] for u in updates]).sort(dim=0).values[k : len(updates) - k]
    m = ints.shape[0]
    rounded = torch.div(2 * ints.sum(dim=0) + m, 2 * m, rounding_mode="floor")
    assert torch.equal(got["steps"], base["steps"] + rounded)


def test_trimmed_mean_trims_the_poisoned_client_away(tmp_path: Path) -> None:
    base, updates = model(100), updates_with_poison(4)

    got = run(TrimmedMean(trim_fraction=0.2), base, [(u, 1) for u in updates], tmp_path)

    assert float(got["big"].abs().max()) < 10


def dense_krum(updates: list[Tensors], f: int, m: int) -> list[int]:
    flat = torch.stack(
        [torch.cat([u["big"].double(), u["weight"].double().reshape(-1)]) for u in updates]
    )
    dist = torch.cdist(flat, flat) ** 2
    n = len(updates)
    scores = [
        float(torch.cat([dist[i, :i], dist[i, i + 1 :]]).sort().values[: n - f - 2].sum())
        for i in range(n)
    ]
    return sorted(sorted(range(n), key=lambda i: scores[i])[:m])


@pytest.mark.parametrize("select", [1, 3])
def test_krum_keeps_the_dense_selection_and_averages_it_by_samples(
    tmp_path: Path, select: int
) -> None:
    base = model(100)
    updates = [model(i, scale=0.1 * (i + 1)) for i in range(5)] + [poisoned()]
    counts = [3, 1, 4, 1, 5, 10**6]
    chosen = dense_krum(updates, f=1, m=select)

    strategy = Krum(byzantine_clients=1, krum_select=select)
    got = run(strategy, base, list(zip(updates, counts, strict=True)), tmp_path)

    assert 5 not in chosen
    total = sum(counts[i] for i in chosen)
    for name in ("big", "weight"):
        mean = sum(updates[i][name].double() * counts[i] for i in chosen) / total
        expected = (base[name].double() + mean).to(base[name].dtype)
        assert torch.allclose(got[name].double(), expected.double(), rtol=1e-6, atol=1e-9)
    assert len(strategy.selected) == select


def test_krum_refuses_a_round_too_small_for_its_byzantine_clients(tmp_path: Path) -> None:
    base, updates = model(100), [model(i) for i in range(4)]

    with pytest.raises(ValueError, match=r"needs at least 5 updates \(N > 2f \+ 2\)"):
        run(Krum(byzantine_clients=1), base, [(u, 1) for u in updates], tmp_path)


@pytest.mark.parametrize(
    "make", [Median, lambda: TrimmedMean(trim_fraction=0.2), lambda: Krum(byzantine_clients=1)]
)
def test_arrival_order_does_not_change_a_single_byte(tmp_path: Path, make: type) -> None:
    base = model(100)
    updates = [(model(i), i + 1) for i in range(5)] + [(poisoned(), 3)]
    shuffled = updates[:]
    random.Random(0).shuffle(shuffled)

    first = run(make(), base, updates, tmp_path)
    second = run(make(), base, shuffled, tmp_path)

    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("make", [Median, Krum])
def test_robust_strategies_refuse_capped_weights(make: type) -> None:
    strategy = make()
    strategy.begin_round(template_of(model(0)))

    with pytest.raises(ValueError, match="maxWeightShare"):
        strategy.fold(InMemoryWeights(model(1)), 5, weight=FoldWeight(5, 2.0, 2))


def test_a_changed_bool_tensor_is_refused_before_it_is_kept() -> None:
    strategy = Median()
    strategy.begin_round(template_of(model(0)))
    bad = model(1)
    bad["mask"] = torch.ones(2, dtype=torch.bool)

    with pytest.raises(ValueError, match="bool tensor 'mask'"):
        strategy.fold(InMemoryWeights(bad), 5)
    assert strategy.num_updates == 0


def test_spec_builds_each_robust_strategy_with_its_options() -> None:
    trimmed = build_strategy(StrategySpec(name="trimmedmean", trim_fraction=0.3))
    krum = build_strategy(StrategySpec(name="krum", byzantine_clients=2, krum_select=3))

    assert isinstance(build_strategy(StrategySpec(name="median")), Median)
    assert isinstance(trimmed, TrimmedMean)
    assert trimmed.trim_fraction == 0.3
    assert isinstance(krum, Krum)
    assert (krum.byzantine_clients, krum.krum_select) == (2, 3)
    default = build_strategy(StrategySpec(name="trimmedmean"))
    assert isinstance(default, TrimmedMean)
    assert default.trim_fraction == 0.2


@pytest.mark.parametrize(
    ("strategy", "message"),
    [
        ({"name": "fedavg", "trimFraction": 0.1}, "trimFraction=0.1 applies to trimmedmean"),
        ({"name": "median", "byzantineClients": 1}, "byzantineClients=1 applies to krum"),
        ({"name": "trimmedmean", "krumSelect": 2}, "krumSelect=2 applies to krum"),
        ({"name": "median", "maxWeightShare": 0.5}, "maxWeightShare=0.5 does not apply"),
        ({"name": "krum", "clipNorm": 1.0}, "clipNorm=1.0 does not apply"),
        ({"name": "trimmedmean", "serverLearningRate": 0.5}, "serverLearningRate=0.5"),
        ({"name": "trimmedmean", "trimFraction": 0.5}, "trimFraction"),
        ({"name": "krum", "byzantineClients": 1}, "needs a quorum of at least 5"),
        ({"name": "krum", "minClients": 2}, "needs a quorum of at least 3"),
        ({"name": "krum", "krumSelect": 5}, "krumSelect: 5 is more than the quorum"),
    ],
)
def test_spec_refuses_robust_options_that_do_not_fit(
    strategy: dict[str, object], message: str
) -> None:
    clients = [{"name": c} for c in ("a", "b", "c", "d")]
    job = {
        "apiVersion": "fedkube.io/v1alpha1",
        "kind": "FederatedJob",
        "metadata": {"name": "robust"},
        "spec": {
            "rounds": 1,
            "task": {"entrypoint": "m:t"},
            "clients": clients,
            "strategy": strategy,
        },
    }

    with pytest.raises(SpecError, match=message):
        parse_job(job)


def test_flat_slices_read_exactly_the_asked_elements(tmp_path: Path) -> None:
    tensors = model(3)
    path = tmp_path / "m.safetensors"
    save_weights(path, tensors)

    with open_weights(path) as reader:
        assert torch.equal(reader.get_flat_slice("big", 1000, 3001), tensors["big"][1000:3001])
        assert torch.equal(
            reader.get_flat_slice("weight", 5, 7), tensors["weight"].reshape(-1)[5:7]
        )
        assert reader.get_flat_slice("big", 4, 4).numel() == 0
        with pytest.raises(ValueError, match="outside"):
            reader.get_flat_slice("big", 0, N_ELEMENTS + 1)


@pytest.mark.parametrize(
    "make", [Median, lambda: TrimmedMean(trim_fraction=0.2), lambda: Krum(byzantine_clients=1)]
)
def test_kept_updates_are_read_back_slice_by_slice_never_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make: type
) -> None:
    base, updates = model(100), [(model(i), 1) for i in range(6)]
    widest: list[int] = []
    read_slice = WeightsReader.get_flat_slice

    def spy(self: WeightsReader, name: str, start: int, stop: int) -> torch.Tensor:
        widest.append(stop - start)
        return read_slice(self, name, start, stop)

    monkeypatch.setattr(WeightsReader, "get_flat_slice", spy)

    run(make(), base, updates, tmp_path)  # (Krum's FedAvg then reads its selection whole)

    assert max(widest) == spool_module.slice_elements(len(updates)) < N_ELEMENTS
