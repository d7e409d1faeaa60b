"""The learning benchmark's harness (``bench/learning.py``) runs one round of two strategies
and writes its report, so it cannot rot unnoticed between full runs. Its accuracies are the
benchmark's business; these tests only hold the attack and the plumbing to what it claims."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench" / "learning.py"


@pytest.fixture(scope="module")
def learning() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_learning", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    # The 2-epoch local training (read at import): the plumbing is the same, in half the time.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FEDKUBE_BENCH_LOCAL", "momentum")
        spec.loader.exec_module(module)
    return module


def rows(learning: ModuleType, *labels: str) -> list[object]:
    return [row for row in learning.ROWS if row.label in labels]


def test_a_poisoned_update_is_its_delta_flipped_and_scaled_with_a_huge_sample_count(
    learning: ModuleType,
) -> None:
    honest = learning.Update(3, {"w": torch.tensor([1.0, -2.0]), "n": torch.tensor([4])}, 57)

    bad = learning.poison(honest)

    assert torch.equal(bad.delta["w"], torch.tensor([-10.0, 20.0]))
    assert torch.equal(bad.delta["n"], torch.tensor([4]))  # counters are left alone
    assert bad.num_samples == 10**9
    assert bad.client == 3


def test_two_of_ten_clients_are_poisoned_and_which_ones_depends_on_the_seed(
    learning: ModuleType,
) -> None:
    draws = [learning.poisoned_clients(seed) for seed in range(5)]

    assert all(len(d) == 2 and d <= set(range(10)) for d in draws)
    assert len(set(draws)) > 1
    assert learning.poisoned_clients(0) == draws[0]


def test_every_row_is_a_valid_strategy_spec_and_names_a_known_flower_class(
    learning: ModuleType,
) -> None:
    from fedcore.spec import StrategySpec

    for row in learning.ROWS:
        StrategySpec.model_validate(dict(row.strategy))  # raises on a bad row
    labels = [row.label for row in learning.ROWS]
    assert len(labels) == len(set(labels))
    if learning.flower_available():  # each Flower counterpart accepts the row's settings
        initial = {"w": torch.zeros(3, 2), "b": torch.zeros(3)}
        for row in learning.ROWS:
            if row.flower:
                learning.Theirs(row, initial)


def test_one_round_of_fedavg_and_median_runs_clean_and_poisoned_and_is_reported(
    learning: ModuleType, tmp_path: Path
) -> None:
    runs = learning.plan(rows(learning, "fedavg", "median"), [0], flower=False)
    lines: list[str] = []

    results = learning.run_all(runs, rounds=1, jobs=1, log=lines.append)
    md = learning.report(
        results,
        rows(learning, "fedavg", "median"),
        seeds=[0],
        rounds=1,
        command="test",
        seconds=0.0,
        out=tmp_path,
    )

    assert {(r.row.label, r.setting) for r in results} == {
        (label, setting) for label in ("fedavg", "median") for setting in ("clean", "poisoned")
    }
    assert len(lines) == 4
    accuracy = {(r.row.label, r.setting): accs for r, accs in results.items()}
    assert all(len(accs) == 2 and 0.0 <= accs[1] <= 1.0 for accs in accuracy.values())
    # One round of FedAvg learns something, and the attack undoes it.
    assert accuracy["fedavg", "clean"][1] > accuracy["fedavg", "clean"][0] + 0.1
    assert accuracy["fedavg", "poisoned"][1] < accuracy["fedavg", "clean"][1] - 0.1
    text = md.read_text()
    assert "| fedavg |" in text
    assert "| median |" in text
    assert (tmp_path / "learning.png").stat().st_size > 0
    assert learning.replot(tmp_path).read_text() == text  # the report, rewritten from the JSON


def test_flower_gets_the_same_results_and_its_fedavg_matches_ours_after_one_round(
    learning: ModuleType,
) -> None:
    if not learning.flower_available():
        pytest.skip("Flower is not installed (the `bench` extra: make bench-deps)")
    runs = [
        r for r in learning.plan(rows(learning, "fedavg"), [0], flower=True) if r.setting == "clean"
    ]

    results = learning.run_all(runs, rounds=1, jobs=1, log=lambda _: None)

    ours, theirs = (results[r] for r in sorted(runs, key=lambda r: r.side))
    assert abs(ours[1] - theirs[1]) <= 0.01
