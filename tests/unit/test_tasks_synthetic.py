"""The built-in synthetic task: models of a requested size, learnable and reproducible data."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from fedcore.errors import TaskError
from fedcore.tasks import TaskContext
from fedcore.tasks.base import train_loader
from fedcore.tasks.synthetic import SyntheticConfig, task


def make_ctx(config: dict[str, Any] | None = None, **overrides: Any) -> TaskContext:
    values: dict[str, Any] = {
        "config": config or {},
        "seed": 0,
        "round": 1,
        "client": "c0",
        "client_index": 0,
        "num_clients": 2,
    }
    values.update(overrides)
    return TaskContext(**values)


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "config",
    [
        {"params": 5_000},
        {"params": 200_000},
        {"params": 200_000, "depth": 2},
        {"params": 50_000, "depth": 5, "features": 10, "classes": 3},
        {"params": 20_000, "kind": "regression"},
    ],
)
def test_built_model_has_about_the_requested_parameter_count(config: dict[str, Any]) -> None:
    cfg = SyntheticConfig.from_config(config)

    model = task.build_model(make_ctx(config))

    assert count(model) == cfg.count(cfg.hidden())
    assert abs(count(model) - config["params"]) / config["params"] < 0.02


def test_a_hundred_million_parameter_model_is_sized_without_building_it() -> None:
    cfg = SyntheticConfig.from_config({"params": 100_000_000})

    assert abs(cfg.count(cfg.hidden()) - 100_000_000) < 2 * cfg.hidden()


def test_tiny_targets_still_build_a_model() -> None:
    model = task.build_model(make_ctx({"params": 1}))

    assert count(model) > 0


def test_init_is_reproducible_from_the_seed() -> None:
    a, b = task.build_model(make_ctx()), task.build_model(make_ctx())
    c = task.build_model(make_ctx(seed=5))

    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(next(a.parameters()), next(c.parameters()))


def test_each_client_gets_its_own_samples_of_one_shared_problem() -> None:
    mine = task.train_dataset(make_ctx({"samples": 64}))
    again = task.train_dataset(make_ctx({"samples": 64}))
    theirs = task.train_dataset(make_ctx({"samples": 64}, client="c1", client_index=1))
    test_here = task.test_dataset(make_ctx())
    test_there = task.test_dataset(make_ctx(client="c1", client_index=1))

    assert len(mine) == 64  # type: ignore[arg-type]
    assert torch.equal(mine.tensors[0], again.tensors[0])  # type: ignore[attr-defined]
    assert not torch.equal(mine.tensors[0], theirs.tensors[0])  # type: ignore[attr-defined]
    assert torch.equal(test_here.tensors[1], test_there.tensors[1])  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_local_training_improves_the_held_out_loss(kind: str) -> None:
    config = {"params": 5_000, "kind": kind, "samples": 512, "localEpochs": 3}
    ctx = make_ctx(config)
    model = task.build_model(ctx)
    before = task.evaluate(model, ctx)
    loader = train_loader(task.train_dataset(ctx), batch_size=32, ctx=ctx, shuffle_seed=0)

    task.train(model, loader, ctx)
    after = task.evaluate(model, ctx)

    assert after["loss"] < before["loss"]
    if kind == "classification":
        assert after["accuracy"] > 0.2  # ten classes: chance is 0.1
    else:
        assert "accuracy" not in after


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"params": 0}, "task.config.params: must be an integer >= 1"),
        ({"depth": 1}, "task.config.depth: must be an integer >= 2"),
        ({"classes": 1}, "task.config.classes: must be an integer >= 2"),
        ({"kind": "ranking"}, "task.config.kind: must be 'classification' or 'regression'"),
        ({"noise": -1}, "task.config.noise: must be a number >= 0"),
        ({"samples": "many"}, "task.config.samples: must be an integer >= 1"),
    ],
)
def test_bad_config_is_named(config: dict[str, Any], message: str) -> None:
    with pytest.raises(TaskError) as caught:
        task.build_model(make_ctx(config))

    assert message in str(caught.value)
