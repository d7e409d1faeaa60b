"""The built-in digits task: the split, the client partitions, the model, and its defaults."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from fedcore.errors import TaskError
from fedcore.tasks import TaskContext
from fedcore.tasks.base import train_loader
from fedcore.tasks.digits import MIN_SHARD, partition_indices, split_indices, task


def make_ctx(config: dict[str, Any] | None = None, **overrides: Any) -> TaskContext:
    values: dict[str, Any] = {
        "config": config or {},
        "seed": 0,
        "round": 1,
        "client": "c0",
        "client_index": 0,
        "num_clients": 3,
    }
    values.update(overrides)
    return TaskContext(**values)


def labels_of(dataset: Any) -> list[int]:
    return [int(y) for y in dataset.tensors[1]]


def rows_of(dataset: Any) -> set[bytes]:
    return {row.numpy().tobytes() for row in dataset.tensors[0]}


def test_split_is_stratified_disjoint_and_fixed_by_the_seed() -> None:
    train, test = split_indices(seed=11, test_fraction=0.2)

    assert len(train) + len(test) == 1797
    assert len(test) == 360
    assert not set(train) & set(test)
    assert np.array_equal(split_indices(11, 0.2)[1], test)
    assert not np.array_equal(split_indices(12, 0.2)[1], test)


def test_pixels_are_scaled_to_unit_range() -> None:
    features = task.test_dataset(make_ctx()).tensors[0]  # type: ignore[attr-defined]

    assert features.dtype == torch.float32
    assert float(features.min()) == 0.0
    assert float(features.max()) == 1.0


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_partitions_are_disjoint_and_cover_the_training_split(scheme: Any) -> None:
    labels = np.random.default_rng(0).integers(0, 10, size=1000)

    shards = partition_indices(labels, 4, scheme=scheme, alpha=0.5, seed=1)

    joined = np.concatenate(shards)
    assert sorted(joined.tolist()) == list(range(1000))
    assert all(len(s) >= MIN_SHARD for s in shards)


def test_iid_shards_have_equal_sizes() -> None:
    shards = partition_indices(np.zeros(1000, dtype=np.int64), 3, scheme="iid", alpha=1.0, seed=1)

    assert sorted(len(s) for s in shards) == [333, 333, 334]


def test_small_dirichlet_alpha_skews_labels_between_clients() -> None:
    clients = [
        task.train_dataset(make_ctx({"partition": "dirichlet", "alpha": 0.1}, client_index=i))
        for i in range(3)
    ]
    shares = [np.bincount(labels_of(c), minlength=10) / len(labels_of(c)) for c in clients]

    # IID shards hold every class at ~10%; label skew makes some class far more frequent.
    assert max(float(s.max()) for s in shares) > 0.3


def test_every_process_cuts_the_same_shard_for_a_client() -> None:
    ctx = make_ctx({"partition": "dirichlet"}, client_index=1)

    first, again = task.train_dataset(ctx), task.train_dataset(ctx)

    assert torch.equal(first.tensors[0], again.tensors[0])  # type: ignore[attr-defined]


def test_clients_shards_and_the_test_split_do_not_overlap() -> None:
    shards = [rows_of(task.train_dataset(make_ctx(client_index=i))) for i in range(3)]
    test = rows_of(task.test_dataset(make_ctx()))
    whole = rows_of(task.train_dataset(make_ctx(client=None, client_index=None)))

    assert sum(len(s) for s in shards) == len(set().union(*shards)) == len(whole)
    assert set().union(*shards) == whole
    assert not set().union(*shards) & test


def test_model_width_follows_config_and_init_follows_the_seed() -> None:
    model = task.build_model(make_ctx({"hidden": 32}))
    same = task.build_model(make_ctx({"hidden": 32}))
    other_seed = task.build_model(make_ctx({"hidden": 32}, seed=1))

    assert [tuple(p.shape) for p in model.parameters()] == [(32, 64), (32,), (10, 32), (10,)]
    assert all(
        torch.equal(a, b) for a, b in zip(model.parameters(), same.parameters(), strict=True)
    )
    assert not torch.equal(next(model.parameters()), next(other_seed.parameters()))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"partition": "by-hospital"}, "task.config.partition: must be 'iid' or 'dirichlet'"),
        ({"partition": "dirichlet", "alpha": 0}, "task.config.alpha: must be a number > 0"),
        ({"hidden": 0}, "task.config.hidden: must be a positive integer"),
        ({"testFraction": 0.99}, "task.config.testFraction: must be between 0.05 and 0.9"),
    ],
)
def test_bad_config_is_named(config: dict[str, Any], message: str) -> None:
    def use() -> None:
        task.train_dataset(make_ctx(config))
        task.build_model(make_ctx(config))

    with pytest.raises(TaskError) as caught:
        use()

    assert message in str(caught.value)


def test_too_many_clients_for_the_data_is_refused() -> None:
    with pytest.raises(TaskError, match="cannot give 200 clients"):
        task.train_dataset(make_ctx(num_clients=200))


def fedavg_digits(config: dict[str, Any], *, seed: int, rounds: int, clients: int) -> float:
    """FedAvg as the aggregator runs it, with each client's DDP group as one process (the
    same arithmetic: see test_client_ddp); returns the final test accuracy."""
    server = make_ctx(config, seed=seed, round=0, client=None, client_index=None)
    server = TaskContext(**{**server.__dict__, "num_clients": clients})
    model = task.build_model(server)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    for r in range(1, rounds + 1):
        total = 0
        summed = {k: torch.zeros_like(v) for k, v in weights.items()}
        for c in range(clients):
            ctx = make_ctx(config, seed=seed, round=r, client=f"c{c}", client_index=c)
            ctx = TaskContext(**{**ctx.__dict__, "num_clients": clients})
            data = task.train_dataset(ctx)
            model.load_state_dict(weights)
            loader = train_loader(data, batch_size=task.batch_size(ctx), ctx=ctx, shuffle_seed=r)
            task.train(model, loader, ctx)
            n = len(data)  # type: ignore[arg-type]
            total += n
            for k, v in model.state_dict().items():
                summed[k] += n * (v - weights[k])
        weights = {k: weights[k] + summed[k] / total for k in weights}
    model.load_state_dict(weights)
    return task.evaluate(model, server)["accuracy"]


@pytest.fixture
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("seed", [0, 1])
def test_defaults_reach_095_in_ten_rounds_with_three_iid_clients(seed: int) -> None:
    accuracy = fedavg_digits({}, seed=seed, rounds=10, clients=3)

    assert accuracy >= 0.95
