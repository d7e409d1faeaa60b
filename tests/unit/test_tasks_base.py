"""The task API: loading ``module:attr``, config parsing, and SupervisedTask's loops."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from fedcore.errors import TaskError
from fedcore.tasks import SupervisedTask, TaskContext, TrainConfig, derive_seed, load_task, seeded
from fedcore.tasks.base import global_batch_size, train_loader

HERE = __name__


def make_ctx(config: dict[str, Any] | None = None, **overrides: Any) -> TaskContext:
    values: dict[str, Any] = {
        "config": config or {},
        "seed": 3,
        "round": 1,
        "client": "a",
        "client_index": 0,
        "num_clients": 1,
    }
    values.update(overrides)
    return TaskContext(**values)


class LineTask(SupervisedTask):
    """Two separable classes on a line: any working loop learns it."""

    defaults = TrainConfig(optimizer="sgd", lr=0.5, local_epochs=5, batch_size=16)

    def build_model(self, ctx: TaskContext) -> nn.Module:
        with seeded(ctx.derive_seed("line")):
            return nn.Linear(1, 2)

    def _data(self, n: int, seed: int) -> TensorDataset:
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(n, 1, generator=gen)
        return TensorDataset(x, (x[:, 0] > 0).long())

    def train_dataset(self, ctx: TaskContext) -> Dataset[Any]:
        return self._data(64, 1)

    def test_dataset(self, ctx: TaskContext) -> Dataset[Any]:
        return self._data(200, 2)


class SlopeTask(LineTask):
    """Regression: y = 3x."""

    classification = False

    def build_model(self, ctx: TaskContext) -> nn.Module:
        with seeded(0):
            return nn.Linear(1, 1)

    def _data(self, n: int, seed: int) -> TensorDataset:
        x = torch.randn(n, 1, generator=torch.Generator().manual_seed(seed))
        return TensorDataset(x, 3 * x)


line_task = LineTask()


def make_line_task() -> LineTask:
    return LineTask()


class Holder:
    task = LineTask()


class NotATask:
    def build_model(self, ctx: TaskContext) -> nn.Module:
        return nn.Linear(1, 1)


not_a_task = NotATask()


class NeedsAGpu(LineTask):
    def __init__(self) -> None:
        raise ValueError("no GPU here")


# ---- load_task ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "attr",
    ["line_task", "LineTask", "Holder.task"],
    ids=["an instance", "a class", "a dotted attribute"],
)
def test_load_task_accepts(attr: str) -> None:
    task = load_task(f"{HERE}:{attr}")

    assert isinstance(task, LineTask)


def test_load_task_finds_the_built_in_tasks() -> None:
    assert load_task("fedcore.tasks.digits:task").__class__.__name__ == "DigitsTask"
    assert load_task("fedcore.tasks.synthetic:task").__class__.__name__ == "SyntheticTask"


@pytest.mark.parametrize(
    ("entrypoint", "message"),
    [
        ("no_colon_here", "must be 'module:attribute'"),
        (":task", "must be 'module:attribute'"),
        ("fedcore_no_such_module:task", "cannot import module 'fedcore_no_such_module'"),
        (f"{HERE}:missing", "has no attribute 'missing'"),
        (f"{HERE}:Holder.missing", "(missing 'missing')"),
        (f"{HERE}:not_a_task", "lacks train_dataset, train, evaluate"),
        (f"{HERE}:NeedsAGpu", "ValueError: no GPU here"),
        (f"{HERE}:make_line_task", "lacks build_model, train_dataset, train, evaluate"),
    ],
    ids=[
        "no colon",
        "no module",
        "a module that is not installed",
        "a missing attribute",
        "a missing nested attribute",
        "an object without the task methods",
        "a class whose constructor raises",
        "a factory, which is not called (fedkube validate cannot check what it returns)",
    ],
)
def test_load_task_explains_what_is_wrong(entrypoint: str, message: str) -> None:
    with pytest.raises(TaskError) as caught:
        load_task(entrypoint)

    assert message in str(caught.value)


# ---- config ------------------------------------------------------------------------------------


def test_train_config_reads_camel_case_keys_over_the_defaults() -> None:
    defaults = TrainConfig(lr=0.1, local_epochs=3)

    cfg = TrainConfig.from_config(
        {"optimizer": "adam", "localEpochs": 2, "batchSize": 8, "weightDecay": 0}, defaults
    )

    assert cfg == TrainConfig(
        optimizer="adam", lr=0.1, local_epochs=2, batch_size=8, weight_decay=0.0
    )


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"optimizer": "rmsprop"}, "task.config.optimizer: must be one of"),
        ({"lr": 0}, "task.config.lr: must be a finite number > 0 (got 0)"),
        ({"lr": "fast"}, "task.config.lr: must be a number (got 'fast')"),
        ({"momentum": -0.5}, "task.config.momentum: must be a finite number >= 0"),
        ({"localEpochs": 0}, "task.config.localEpochs: must be a positive integer"),
        ({"batchSize": 2.5}, "task.config.batchSize: must be a positive integer"),
        ({"batchSize": True}, "task.config.batchSize: must be a positive integer"),
    ],
)
def test_train_config_names_the_bad_key_and_value(config: dict[str, Any], message: str) -> None:
    with pytest.raises(TaskError) as caught:
        TrainConfig.from_config(config)

    assert message in str(caught.value)


def test_global_batch_size_comes_from_the_task_hook_then_the_config_then_32() -> None:
    class NoHook:
        pass

    assert global_batch_size(line_task, make_ctx({"batchSize": 8})) == 8
    assert global_batch_size(line_task, make_ctx()) == 16
    assert global_batch_size(NoHook(), make_ctx({"batchSize": 4})) == 4  # type: ignore[arg-type]
    assert global_batch_size(NoHook(), make_ctx()) == 32  # type: ignore[arg-type]
    with pytest.raises(TaskError, match="batchSize"):
        global_batch_size(NoHook(), make_ctx({"batchSize": 0}))  # type: ignore[arg-type]


# ---- seeds and loaders -------------------------------------------------------------------------


def test_derive_seed_is_stable_and_separates_purposes() -> None:
    assert derive_seed(1, "train", 2, "a", 0) == derive_seed(1, "train", 2, "a", 0)
    assert derive_seed(1, "train", 2, "a", 0) != derive_seed(1, "train", 2, "a", 1)
    assert derive_seed(1, "train", 2, "a", 0) != derive_seed(2, "train", 2, "a", 0)
    assert 0 <= derive_seed("anything") < 2**63
    # Pinned: ranks on other machines and reruns must agree on it.
    assert (
        derive_seed(0)
        == int.from_bytes(
            bytes.fromhex("5feceb66ffc86f38d952786c6d696c79c2dbc239dd4e91b46729d73a27fb57e9")[:8],
            "big",
        )
        >> 1
    )


def test_seeded_builds_the_same_model_and_leaves_the_global_stream_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)

    with seeded(9):
        a = nn.Linear(3, 3)
    after = torch.rand(1)
    with seeded(9):
        b = nn.Linear(3, 3)

    assert torch.equal(a.weight, b.weight)
    assert torch.equal(after, expected_next)


def test_train_loader_gives_each_rank_a_disjoint_shard_of_the_group_batch() -> None:
    data = TensorDataset(torch.arange(40).float(), torch.arange(40))
    loaders = [
        train_loader(data, batch_size=8, ctx=make_ctx(rank=r, world_size=2), shuffle_seed=5)
        for r in range(2)
    ]
    single = train_loader(data, batch_size=8, ctx=make_ctx(), shuffle_seed=5)

    per_rank = [[batch[1].tolist() for batch in loader] for loader in loaders]
    whole = [batch[1].tolist() for batch in single]

    assert all(len(batch) == 4 for batches in per_rank for batch in batches)
    for step, batch in enumerate(whole):
        assert sorted(per_rank[0][step] + per_rank[1][step]) == sorted(batch)
    assert sorted(i for batch in per_rank[0] + per_rank[1] for i in batch) == list(range(40))


# ---- SupervisedTask ----------------------------------------------------------------------------


def test_supervised_train_learns_and_reports_loss_and_accuracy() -> None:
    ctx = make_ctx()
    model = line_task.build_model(ctx)
    before = line_task.evaluate(model, ctx)
    loader = train_loader(line_task.train_dataset(ctx), batch_size=16, ctx=ctx, shuffle_seed=1)

    metrics = line_task.train(model, loader, ctx)
    after = line_task.evaluate(model, ctx)

    assert set(metrics) == {"loss", "accuracy"}
    assert set(after) == {"loss", "accuracy"}
    assert after["loss"] < before["loss"]
    assert after["accuracy"] >= 0.9


def test_supervised_train_reshuffles_every_local_epoch() -> None:
    ctx = make_ctx({"localEpochs": 3})
    loader = train_loader(line_task.train_dataset(ctx), batch_size=16, ctx=ctx, shuffle_seed=1)
    epochs: list[int] = []
    original = loader.sampler.set_epoch  # type: ignore[attr-defined]

    def spy(epoch: int) -> None:
        epochs.append(epoch)
        original(epoch)

    loader.sampler.set_epoch = spy  # type: ignore[attr-defined]
    line_task.train(line_task.build_model(ctx), loader, ctx)

    assert epochs == [0, 1, 2]


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_every_configured_optimizer_trains(optimizer: str) -> None:
    ctx = make_ctx({"optimizer": optimizer, "lr": 0.05})
    model = line_task.build_model(ctx)
    before = [p.detach().clone() for p in model.parameters()]
    loader = train_loader(line_task.train_dataset(ctx), batch_size=16, ctx=ctx, shuffle_seed=1)

    line_task.train(model, loader, ctx)

    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_regression_task_uses_mse_and_reports_no_accuracy() -> None:
    task = SlopeTask()
    ctx = make_ctx({"lr": 0.1})
    model = task.build_model(ctx)
    before = task.evaluate(model, ctx)["loss"]
    loader: DataLoader[Any] = train_loader(
        task.train_dataset(ctx), batch_size=16, ctx=ctx, shuffle_seed=1
    )

    metrics = task.train(model, loader, ctx)
    after = task.evaluate(model, ctx)

    assert set(metrics) == {"loss"}
    assert set(after) == {"loss"}
    assert after["loss"] < before / 10


def test_a_task_without_data_says_which_method_to_override() -> None:
    class Bare(SupervisedTask):
        pass

    with pytest.raises(NotImplementedError, match="must override train_dataset"):
        Bare().train_dataset(make_ctx())


def test_the_public_task_api_is_pinned() -> None:
    import fedcore.tasks

    assert fedcore.tasks.__all__ == [
        "LocalSGD",
        "SupervisedTask",
        "Task",
        "TaskContext",
        "TrainConfig",
        "derive_seed",
        "load_task",
        "seeded",
    ]


class FrozenFirstTask(SupervisedTask):
    """A small MLP whose first layer is frozen (as a LoRA base is): only the rest trains."""

    def build_model(self, ctx: TaskContext) -> nn.Module:
        with seeded(ctx.derive_seed("mlp")):
            model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Linear(8, 3))
        model[0].requires_grad_(False)
        return model

    def train_dataset(self, ctx: TaskContext) -> Dataset[Any]:
        g = torch.Generator().manual_seed(5)
        return TensorDataset(
            torch.randn(48, 4, generator=g), torch.randint(0, 3, (48,), generator=g)
        )


@pytest.mark.parametrize(
    "config",
    [
        {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weightDecay": 0.01},
        {"optimizer": "adam", "lr": 0.01},
        {"optimizer": "adamw", "lr": 0.01, "weightDecay": 0.1},
    ],
    ids=["sgd-momentum", "adam", "adamw"],
)
def test_stepping_in_backward_trains_exactly_as_one_optimizer_does(config: dict[str, Any]) -> None:
    """What an FSDP client's ranks do (``ctx.sharded``) gives the same weights, bit for bit,
    as a classic ``optimizer.step()`` after each backward, and frees every gradient."""
    task = FrozenFirstTask()
    config = {**config, "localEpochs": 2, "batchSize": 8}
    results = {}
    for sharded in (False, True):
        ctx = make_ctx(config, sharded=sharded)
        model = task.build_model(ctx)
        loader = train_loader(task.train_dataset(ctx), batch_size=8, ctx=ctx, shuffle_seed=1)
        metrics = task.train(model, loader, ctx)
        results[sharded] = (model.state_dict(), metrics)
        if sharded:
            assert all(p.grad is None for p in model.parameters())
            # the hooks are gone: a later backward leaves gradients for a classic step
            model(torch.randn(2, 4)).sum().backward()
            assert model[3].weight.grad is not None
    (classic, classic_metrics), (in_backward, in_backward_metrics) = results[False], results[True]
    assert classic_metrics == in_backward_metrics
    for name, tensor in classic.items():
        assert torch.equal(tensor, in_backward[name]), name
    initial = FrozenFirstTask().build_model(make_ctx(config)).state_dict()
    assert torch.equal(in_backward["0.weight"], initial["0.weight"])  # frozen stays frozen
    assert not torch.equal(in_backward["3.weight"], initial["3.weight"])
